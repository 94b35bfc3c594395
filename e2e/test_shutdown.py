"""SIGTERM under load: `switchyard serve` fails `/readyz` first while it still accepts
(for `server.drain_grace_ms`), then stops accepting, lets every request it had accepted
finish, writes every one of them to the ledger, and exits 0.

How each request is judged, without relying on timing: every request carries a unique
tag in its prompt, and the simulator records what reached it. A request that reached the
simulator was accepted by the gateway, so it must complete; one that did not must have
failed at the connection level (refused or closed without a response), never with an
HTTP error, and never before the signal was sent.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Optional

import httpx

from conftest import gateway_config

WORKERS = 16
MAX_REQUESTS_PER_WORKER = 60  # bound, in case the gateway never stops
KEY = "sy-e2e-key-0123456789"
DRAIN_TIMEOUT_MS = 10_000
# Short enough that the slow stream (~3 s) is still draining when the listener closes.
DRAIN_GRACE_MS = 1_000
LOAD_BEFORE_SIGNAL_S = 1.0


@dataclass
class Outcome:
    tag: str
    streamed: bool
    started: float
    ended: float = 0.0
    kind: str = "pending"  # ok | conn_error | bad
    request_id: Optional[str] = None
    status: Optional[int] = None
    detail: str = ""
    headers_at: Optional[float] = None  # when the response headers arrived


CONNECTION_ERRORS = (
    httpx.ConnectError,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.CloseError,
)


def config_with_slow_model(port: int, ledger, sim_url: str) -> str:
    return (
        gateway_config(
            port, ledger, sim_url, key=KEY, drain_timeout_ms=DRAIN_TIMEOUT_MS, drain_grace_ms=DRAIN_GRACE_MS
        )
        + """
[deployments.sim-slow]
provider = "sim"
model = "gpt-4o"
price = { input = 2.5, output = 10.0 }

[models.slow]
deployments = ["sim-slow"]
"""
    )


def send(client: httpx.Client, base: str, tag: str, streamed: bool, model: str = "gpt-4o-mini") -> Outcome:
    out = Outcome(tag=tag, streamed=streamed, started=time.monotonic())
    body = {"model": model, "messages": [{"role": "user", "content": f"[{tag}] Tell me about trains. [[len:60]]"}]}
    if streamed:
        body["stream"] = True
    try:
        with client.stream("POST", f"{base}/chat/completions", json=body) as res:
            out.headers_at = time.monotonic()
            out.status = res.status_code
            out.request_id = res.headers.get("x-request-id")
            try:
                if res.status_code != 200:
                    out.kind = "bad"
                    out.detail = f"HTTP {res.status_code}: {res.read()[:300]!r}"
                elif streamed:
                    data = [
                        line[len("data:"):].strip() for line in res.iter_lines() if line.startswith("data:")
                    ]
                    if not data or data[-1] != "[DONE]":
                        out.kind = "bad"
                        out.detail = f"stream ended without [DONE] after {len(data)} events"
                    else:
                        for payload in data[:-1]:
                            json.loads(payload)
                        out.kind = "ok"
                else:
                    doc = json.loads(res.read())
                    if doc.get("choices") and doc.get("usage"):
                        out.kind = "ok"
                    else:
                        out.kind = "bad"
                        out.detail = f"incomplete JSON answer: {doc}"
            except (httpx.HTTPError, ValueError) as e:
                # Anything going wrong after the headers means an accepted request was cut.
                out.kind = "bad"
                out.detail = f"after headers: {type(e).__name__}: {e}"
    except CONNECTION_ERRORS as e:
        out.kind = "conn_error"
        out.detail = f"{type(e).__name__}: {e}"
    except httpx.HTTPError as e:
        out.kind = "bad"
        out.detail = f"{type(e).__name__}: {e}"
    out.ended = time.monotonic()
    return out


def test_sigterm_under_load_drains_and_records_everything(sim_factory, serve, tmp_path):
    sim = sim_factory()
    # Ordinary requests take about 0.45 s (stream or not); the slow model's ~3 s.
    # ([[len:N]] in a prompt makes the simulator answer with N tokens.)
    sim.control.set_latency(instance="", model="gpt-4o-mini", ttft_ms=0, chunk_delay_ms=20, chunks=20)
    sim.control.set_latency(instance="", model="gpt-4o", ttft_ms=0, chunk_delay_ms=100, chunks=30)
    ledger = tmp_path / "ledger.db"
    gw = serve(lambda port: config_with_slow_model(port, ledger, sim.url))
    proc = gw.proc

    with httpx.Client(timeout=5) as probe:
        ready = probe.get(f"{gw.root_url}/readyz")
        assert ready.status_code == 200, ready.text

    outcomes: list[Outcome] = []
    lock = threading.Lock()
    signalled = threading.Event()
    signal_at = [0.0]
    headers = {"authorization": f"Bearer {KEY}"}

    def worker(w: int) -> None:
        with httpx.Client(headers=headers, timeout=30) as client:
            for i in range(MAX_REQUESTS_PER_WORKER):
                if proc.popen.poll() is not None:
                    break
                out = send(client, gw.base_url, f"w{w}-{i}", streamed=(w + i) % 2 == 0)
                with lock:
                    outcomes.append(out)
                if out.kind != "ok" and signalled.is_set():
                    break  # refused after the signal: this worker is done

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(WORKERS)]
    for t in threads:
        t.start()

    # One long stream that is certainly in flight when the signal arrives: its headers
    # are in before the signal is sent.
    slow_result: list[Outcome] = []
    slow_headers = threading.Event()

    def slow_stream() -> None:
        with httpx.Client(headers=headers, timeout=30) as client:
            out = Outcome(tag="slow", streamed=True, started=time.monotonic())
            body = {
                "model": "slow",
                "messages": [{"role": "user", "content": "[slow] Tell me a long story. [[len:200]]"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            try:
                with client.stream("POST", f"{gw.base_url}/chat/completions", json=body) as res:
                    out.headers_at = time.monotonic()
                    out.status = res.status_code
                    out.request_id = res.headers.get("x-request-id")
                    slow_headers.set()
                    data = [line[5:].strip() for line in res.iter_lines() if line.startswith("data:")]
                    out.kind = "ok" if res.status_code == 200 and data and data[-1] == "[DONE]" else "bad"
                    out.detail = f"{len(data)} events, last {data[-1:]!r}"
            except httpx.HTTPError as e:
                out.kind = "bad"
                out.detail = f"{type(e).__name__}: {e}"
            finally:
                slow_headers.set()
            out.ended = time.monotonic()
            slow_result.append(out)

    time.sleep(LOAD_BEFORE_SIGNAL_S)
    slow = threading.Thread(target=slow_stream, daemon=True)
    slow.start()
    assert slow_headers.wait(15), "the slow stream got no response headers"

    signal_at[0] = time.monotonic()
    signalled.set()
    proc.signal(signal.SIGTERM)

    # First /readyz fails while new connections are still accepted and answered (the
    # grace), so that a load balancer stops sending before anything is refused.
    readyz_seen: list = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.popen.poll() is None:
        try:
            with httpx.Client(timeout=2) as fresh:
                status = fresh.get(f"{gw.root_url}/readyz").status_code
        except httpx.HTTPError as e:
            readyz_seen.append(type(e).__name__)
            break
        readyz_seen.append(status)
        if status == 503:
            break
        time.sleep(0.01)
    assert readyz_seen and readyz_seen[-1] == 503, (
        f"/readyz did not answer 503 before the listener closed: {readyz_seen}"
    )

    # While the slow stream still drains, a new connection must be refused.
    refused_while_draining = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.popen.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                s.settimeout(2)
                reply = s.recv(64)
            if not reply:  # accepted by the kernel, closed unanswered: refused too
                refused_while_draining = not slow_result
                break
        except OSError:
            refused_while_draining = not slow_result
            break
        time.sleep(0.01)

    try:
        rc = proc.popen.wait(timeout=DRAIN_TIMEOUT_MS / 1000 + 15)
    except Exception:
        raise AssertionError(f"gateway did not exit after SIGTERM:\n{proc.describe()}")
    for t in threads + [slow]:
        t.join(timeout=40)
        assert not t.is_alive(), "a client thread did not finish"
    stderr = proc.stderr()
    assert rc == 0, f"exit code {rc}:\n{proc.describe()}"

    t_signal = signal_at[0]
    (slow_out,) = slow_result
    assert slow_out.kind == "ok", f"the stream in flight at SIGTERM was not drained: {slow_out}\n{stderr[-4000:]}"
    assert slow_out.ended > t_signal
    assert refused_while_draining, (
        "no new connection was refused while an accepted stream was still draining "
        f"(refused_while_draining={refused_while_draining})"
    )

    # What reached the simulator = what the gateway accepted.
    reached = set()
    for r in sim.control.requests(""):
        for m in (r.get("body") or {}).get("messages", []):
            found = re.match(r"\[(w\d+-\d+|slow)\]", str(m.get("content", "")))
            if found:
                reached.add(found.group(1))

    ok = [o for o in outcomes if o.kind == "ok"]
    bad = [o for o in outcomes if o.kind == "bad"]
    refused = [o for o in outcomes if o.kind == "conn_error"]
    print(
        f"load: {len(outcomes)} requests, {len(ok)} completed "
        f"({sum(o.started < t_signal < o.ended for o in ok)} in flight at SIGTERM), "
        f"{len(refused)} refused ({sorted({o.detail.split(':')[0] for o in refused})}), {len(bad)} bad; "
        f"slow stream ended {slow_out.ended - t_signal:.2f} s after the signal"
    )
    assert not bad, "requests failed other than by a refused connection:\n" + "\n".join(
        f"{o.tag} stream={o.streamed} status={o.status} {o.detail}" for o in bad[:10]
    )
    assert len(ok) >= WORKERS, f"too little load before the signal: {len(ok)} completed"
    in_flight_at_signal = [o for o in ok if o.started < t_signal < o.ended]
    assert in_flight_at_signal, "no worker request was in flight at SIGTERM"
    for o in refused:
        assert o.ended >= t_signal, f"{o.tag} was refused before the signal: {o.detail}"
        assert o.tag not in reached, f"{o.tag} reached the provider but the client got no answer: {o.detail}"
    for o in ok:
        assert o.tag in reached, f"{o.tag} completed without reaching the provider?"
        assert o.request_id and o.request_id.startswith("req_"), o

    # The ledger, read after exit: one row per completed request, status 200, with usage.
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    rows = {r["request_id"]: dict(r) for r in con.execute("SELECT * FROM requests")}
    con.close()
    completed = {o.request_id: o for o in ok + [slow_out]}
    missing = [rid for rid in completed if rid not in rows]
    assert not missing, f"{len(missing)} of {len(completed)} completed requests have no ledger row, e.g. {missing[:3]}"
    for rid, o in completed.items():
        row = rows[rid]
        assert row["status"] == 200, row
        assert row["streamed"] == int(o.streamed), row
        assert row["client_disconnected"] == 0, row
        assert row["key_id"] == "cfg:e2e" and row["key_name"] == "e2e", row
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, row
        assert row["cost_nano_usd"] > 0, row
    assert rows[slow_out.request_id]["logical_model"] == "slow"
    assert rows[slow_out.request_id]["deployment"] == "sim-slow"
    extra = set(rows) - set(completed)
    assert not extra, f"ledger rows for requests no client saw complete: {[rows[r] for r in list(extra)[:3]]}"

    m = re.search(r"dropped=(\d+)", stderr)
    if m:
        assert m.group(1) == "0", stderr[-2000:]
