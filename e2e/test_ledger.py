"""The ledger as `switchyard serve` leaves it, read with sqlite3 after the process exits."""

from __future__ import annotations

import sqlite3

import httpx
from openai import OpenAI

from conftest import gateway_config

KEY = "sy-e2e-key-0123456789"


def rows(ledger, table: str = "requests") -> list[dict]:
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM {table}")]
    finally:
        con.close()


def test_client_disconnect_mid_stream_is_recorded(sim_factory, serve, tmp_path):
    sim = sim_factory()
    # 100 content chunks, 50 ms apart: the client leaves long before the end.
    sim.control.set_latency(instance="", model="*", ttft_ms=0, chunk_delay_ms=50, chunks=100)
    ledger = tmp_path / "ledger.db"
    gw = serve(lambda port: gateway_config(port, ledger, sim.url, key=KEY))
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me everything. [[len:100]]"}],
    }
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as client:
        with client.stream("POST", f"{gw.base_url}/chat/completions", json=body) as res:
            assert res.status_code == 200
            request_id = res.headers["x-request-id"]
            lines = res.iter_lines()
            got = [line for line in (next(lines) for _ in range(4)) if line.startswith("data:")]
            assert got
        # Leaving the block closes the connection mid-stream.
    assert gw.proc.stop() == 0, gw.proc.describe()

    (row,) = [r for r in rows(ledger) if r["request_id"] == request_id]
    assert row["streamed"] == 1
    assert row["client_disconnected"] == 1, row
    assert row["logical_model"] == "gpt-4o-mini"
    assert row["deployment"] == "sim-mini"
    assert row["prompt_tokens"] > 0
    assert row["completion_tokens"] < 100, "counted the whole answer although the client left early"
    attempts = [a for a in rows(ledger, "attempts") if a["request_id"] == request_id]
    assert len(attempts) == 1 and attempts[0]["deployment"] == "sim-mini"


def test_every_request_kind_gets_one_row(sim_factory, serve, tmp_path):
    sim = sim_factory()
    ledger = tmp_path / "ledger.db"
    gw = serve(lambda port: gateway_config(port, ledger, sim.url, key=KEY))
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    hello = [{"role": "user", "content": "Hello"}]
    ids = {}
    ids["plain"] = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=hello).headers[
        "x-request-id"
    ]
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=hello, stream=True, stream_options={"include_usage": True}
    ) as res:
        ids["stream"] = res.headers["x-request-id"]
        for _ in res.iter_lines():
            pass
    try:
        client.chat.completions.create(model="unknown-model", messages=hello)
    except Exception as e:  # NotFoundError
        ids["not_found"] = e.response.headers["x-request-id"]
    sim.control.set_fault(instance="", model="*", kind="error", status=429, retry_after_s=1)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=hello)
    except Exception as e:  # RateLimitError
        ids["rate_limited"] = e.response.headers["x-request-id"]
    sim.control.clear_faults()
    assert gw.proc.stop() == 0, gw.proc.describe()

    by_id = {r["request_id"]: r for r in rows(ledger)}
    assert set(ids.values()) <= set(by_id), (ids, list(by_id))
    assert len(by_id) == len(ids), by_id
    plain, stream = by_id[ids["plain"]], by_id[ids["stream"]]
    assert (plain["status"], plain["streamed"]) == (200, 0)
    assert (stream["status"], stream["streamed"]) == (200, 1)
    for r in (plain, stream):
        assert r["cost_nano_usd"] == r["prompt_tokens"] * 150 + r["completion_tokens"] * 600, r
        assert r["attempt_count"] == 1
    assert by_id[ids["not_found"]]["status"] == 404
    assert by_id[ids["not_found"]]["attempt_count"] == 0
    limited = by_id[ids["rate_limited"]]
    assert limited["status"] == 429
    assert limited["cost_nano_usd"] == 0
    assert limited["attempt_count"] >= 1
