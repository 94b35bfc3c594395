"""Fixtures for Switchyard's end-to-end tests.

Every process is started from the real `switchyard` binary on free loopback ports,
waited for through its health endpoint, and always stopped afterwards.

The binary comes from the SWITCHYARD_BIN environment variable (default:
`target/debug/switchyard` under the repository root; a relative value is taken
relative to the repository root).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

# Names the demo serves (see crates/switchyard/src/demo.rs).
DEMO_MODELS = {"gpt-4o-mini", "azure-gpt-4o-mini", "support-chat", "text-embedding-3-small"}
DEMO_KEY = "sy-e2e-demo-key-0123456789abcdef"
# The key the stand-alone simulator fixture accepts (started with --api-key).
SIM_KEY = "sk-sim-e2e-0123456789"


# Loopback only: never send the tests' traffic through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
os.environ["NO_PROXY"] = ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get("NO_PROXY")]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]


def switchyard_bin() -> Path:
    raw = os.environ.get("SWITCHYARD_BIN", "target/debug/switchyard")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (bind port 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A small JSON HTTP call (stdlib only): returns (status, parsed JSON or text)."""
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Proc:
    """A `switchyard` child process whose output goes to files (no pipe can fill up)."""

    def __init__(self, args: list[str], workdir: Path, name: str):
        self.args = [str(a) for a in args]
        self.name = name
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        binary = Path(self.args[0])
        if not binary.exists():
            pytest.fail(
                f"switchyard binary not found at {binary}; build it with "
                "`cargo build -p switchyard-cli` or set SWITCHYARD_BIN"
            )
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.setdefault("SWITCHYARD_LOG", "info")
        env.setdefault("NO_COLOR", "1")  # plain logs in failure messages
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            cwd=workdir,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        rc = self.popen.poll()
        state = "running" if rc is None else f"exited with code {rc}"
        return (
            f"{self.name} ({' '.join(self.args)}) {state}\n"
            f"--- stdout ---\n{self.stdout()[-4000:]}\n"
            f"--- stderr ---\n{self.stderr()[-8000:]}"
        )

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited before {what}:\n{self.describe()}")
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name}: no {what} within {timeout:.0f} s:\n{self.describe()}")
            time.sleep(0.05)

    def wait_http_ok(self, url: str, timeout: float = START_TIMEOUT_S) -> None:
        def ok() -> bool:
            with _OPENER.open(url, timeout=2) as res:
                return res.status == 200

        self.wait_until(ok, f"answer from {url}", timeout)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        for f in (self._out, self._err):
            if not f.closed:
                f.close()
        return self.popen.returncode


class SimControl:
    """The simulator's control endpoint (`/_sim/…`)."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        status, data = http(method, f"{self.base_url}{path}", body)
        assert status == 200, f"{method} {path} → {status}: {data}"
        return data

    def set_fault(self, instance: str = "", model: str = "*", kind: str = "error", **fields: Any) -> None:
        self._call("POST", "/_sim/faults", {"instance": instance, "model": model, "kind": kind, **fields})

    def clear_faults(self, instance: Optional[str] = None) -> None:
        query = "" if instance is None else "?instance=" + urllib.parse.quote(instance)
        self._call("DELETE", "/_sim/faults" + query)

    def faults(self) -> list[dict]:
        return self._call("GET", "/_sim/faults")["faults"]

    def set_latency(self, instance: str = "", model: str = "*", **fields: Any) -> None:
        self._call("POST", "/_sim/latency", {"instance": instance, "model": model, **fields})

    def requests(self, instance: str = "") -> list[dict]:
        return self._call("GET", "/_sim/requests?instance=" + urllib.parse.quote(instance))["requests"]

    def clear_requests(self) -> None:
        self._call("DELETE", "/_sim/requests")

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")


@dataclass
class Sim:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    key: str
    proc: Proc
    control: SimControl


@dataclass
class Demo:
    base_url: str  # http://127.0.0.1:PORT/v1
    key: str
    sim_url: str
    ledger: Path
    proc: Proc
    control: SimControl

    @property
    def root_url(self) -> str:
        return self.base_url[: -len("/v1")]


@dataclass
class Gateway:
    base_url: str  # http://127.0.0.1:PORT/v1
    root_url: str
    port: int
    config_path: Path
    ledger: Path
    proc: Proc


def spawn_listening(workdir: Path, name: str, args_for: Callable[[int], list], health_path: str,
                    attempts: int = 3) -> tuple[Proc, int]:
    """Starts a server on a free port and waits for `health_path` to answer 200. The port
    was free when picked; should another process take it first, a new one is tried."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        proc = Proc(args_for(port), workdir, name if attempt == 1 else f"{name}-{attempt}")
        url = f"http://127.0.0.1:{port}{health_path}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.popen.poll() is None and time.monotonic() < deadline:
            try:
                with _OPENER.open(url, timeout=2) as res:
                    if res.status == 200:
                        return proc, port
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.05)
        if proc.popen.poll() is not None and "in use" in proc.stderr() and attempt < attempts:
            proc.stop()
            continue
        detail = proc.describe()
        proc.stop()
        pytest.fail(f"{name}: {url} did not answer within {START_TIMEOUT_S:.0f} s:\n{detail}")
    raise AssertionError("unreachable")


def start_sim(workdir: Path, api_key: Optional[str] = None, name: str = "sim") -> Sim:
    def args(port: int) -> list:
        a = [switchyard_bin(), "sim", "--listen", f"127.0.0.1:{port}"]
        return a + ["--api-key", api_key] if api_key else a

    proc, port = spawn_listening(workdir, name, args, "/_sim/health")
    url = f"http://127.0.0.1:{port}"
    return Sim(url=url, key=api_key or "sk-any", proc=proc, control=SimControl(url))


def gateway_config(port: int, ledger: Path, sim_url: str, key: str = "sy-e2e-key-0123456789",
                   drain_timeout_ms: int = 10000, drain_grace_ms: int = 0) -> str:
    """A minimal gateway configuration: one logical model on one simulator deployment.
    No readiness grace by default: no load balancer sits in front of these tests."""
    return f"""\
[server]
listen = "127.0.0.1:{port}"
drain_grace_ms = {drain_grace_ms}
drain_timeout_ms = {drain_timeout_ms}

[ledger]
path = {json.dumps(str(ledger))}

[[keys]]
name = "e2e"
key = "{key}"

[providers.sim]
kind = "openai"
base_url = "{sim_url}/v1"
api_key = "sk-sim"

[deployments.sim-mini]
provider = "sim"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[models.gpt-4o-mini]
deployments = ["sim-mini"]
"""


def start_gateway(workdir: Path, config_text: Callable[[int], str] | str, name: str = "serve") -> Gateway:
    """`switchyard serve --config FILE`; config_text is the TOML or a function of the port
    (a fixed text must then name a port of its own in server.listen)."""
    config_path = workdir / f"{name}.toml"
    used: dict[str, Any] = {}

    def args(port: int) -> list:
        text = config_text(port) if callable(config_text) else config_text
        config_path.write_text(text)
        used["text"] = text
        return [switchyard_bin(), "serve", "--config", config_path]

    if callable(config_text):
        proc, port = spawn_listening(workdir, name, args, "/healthz")
    else:
        m = re.search(r'^listen\s*=\s*"127\.0\.0\.1:(\d+)"', config_text, re.M)
        assert m, "a fixed configuration text must listen on 127.0.0.1:PORT"
        port = int(m.group(1))
        proc = Proc(args(port), workdir, name)
        proc.wait_http_ok(f"http://127.0.0.1:{port}/healthz")
    m = re.search(r'^path\s*=\s*"(.*)"\s*$', used["text"], re.M)
    ledger = Path(json.loads(f'"{m.group(1)}"')) if m else workdir / "switchyard.db"
    root = f"http://127.0.0.1:{port}"
    return Gateway(base_url=f"{root}/v1", root_url=root, port=port, config_path=config_path,
                   ledger=ledger, proc=proc)


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def bin_path() -> Path:
    path = switchyard_bin()
    if not path.exists():
        pytest.fail(f"switchyard binary not found at {path}; build it or set SWITCHYARD_BIN")
    return path


@pytest.fixture(scope="session")
def session_dir():
    with tempfile.TemporaryDirectory(prefix="switchyard-e2e-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def demo(session_dir: Path, bin_path: Path):
    """`switchyard demo` on a free port, with a fixed key and a ledger in a temp dir."""
    workdir = session_dir / "demo"
    workdir.mkdir()
    ledger = workdir / "demo-ledger.db"
    proc, port = spawn_listening(
        workdir,
        "demo",
        lambda port: [bin_path, "demo", "--listen", f"127.0.0.1:{port}", "--key", DEMO_KEY, "--ledger", ledger],
        "/healthz",
    )
    try:
        root = f"http://127.0.0.1:{port}"
        # The banner is printed once both servers run; it names the simulator.
        sim_url: list[str] = []

        def banner() -> bool:
            out = proc.stdout()
            m = re.search(r"provider simulator at (http://127\.0\.0\.1:\d+)", out)
            if m and "Base URL:" in out and "API key:" in out:
                sim_url.append(m.group(1))
                return True
            return False

        proc.wait_until(banner, "the demo banner on stdout")
        out = proc.stdout()
        assert f"Base URL: {root}/v1" in out, out
        assert f"API key:  {DEMO_KEY}" in out, out
        sim = sim_url[0]
        proc.wait_http_ok(f"{sim}/_sim/health")
        yield Demo(base_url=f"{root}/v1", key=DEMO_KEY, sim_url=sim, ledger=ledger, proc=proc,
                   control=SimControl(sim))
    finally:
        proc.stop()


def wait_serving(demo: Demo, model: str, deployment: Optional[str] = None, timeout: float = 30.0) -> None:
    """Waits (bounded) until the demo answers `model` with 200, from `deployment` if given.

    After a fault is cleared the gateway may still hold the deployment back for a while,
    as it should: a 429's retry-after marks it exhausted, failures open its circuit
    breaker. Tests that inject faults wait here so the next test starts healthy."""
    import openai

    client = openai.OpenAI(base_url=demo.base_url, api_key=demo.key, max_retries=0, timeout=30)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "ping"}]
            )
            served_by = raw.headers.get("x-switchyard-deployment")
            if deployment is None or served_by == deployment:
                return
            last = f"served by {served_by}"
        except openai.APIStatusError as e:
            last = f"HTTP {e.status_code}: {e.message}"
        if time.monotonic() > deadline:
            pytest.fail(f"{model} did not recover within {timeout:.0f} s after the faults were cleared: {last}")
        time.sleep(0.2)


@pytest.fixture()
def demo_faults(demo: Demo):
    """The demo simulator's control endpoint; every fault and latency is cleared afterwards,
    and the test ends only once the demo's models are served normally again."""
    demo.control.reset()
    yield demo.control
    demo.control.reset()
    wait_serving(demo, "gpt-4o-mini", "openai-gpt-4o-mini")
    wait_serving(demo, "support-chat", "openai-primary-gpt-4o-mini")
    wait_serving(demo, "azure-gpt-4o-mini", "azure-gpt-4o-mini")
    demo.control.clear_requests()


@pytest.fixture(scope="session")
def sim_server(session_dir: Path, bin_path: Path):
    """`switchyard sim` alone, accepting only SIM_KEY."""
    workdir = session_dir / "sim"
    workdir.mkdir()
    sim = start_sim(workdir, api_key=SIM_KEY)
    try:
        yield sim
    finally:
        sim.proc.stop()


@pytest.fixture()
def sim(sim_server: Sim):
    """The stand-alone simulator, reset (no faults, latencies or recordings) around each test."""
    sim_server.control.reset()
    yield sim_server
    sim_server.control.reset()


@pytest.fixture()
def serve(tmp_path: Path, bin_path: Path):
    """A factory: serve(config_text_or_fn_of_port) starts `switchyard serve` and returns a
    Gateway; every gateway it started is stopped at the end of the test."""
    started: list[Gateway] = []

    def start(config_text: Callable[[int], str] | str, name: str = "serve") -> Gateway:
        gw = start_gateway(tmp_path, config_text, name)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.proc.stop()


@pytest.fixture()
def sim_factory(tmp_path: Path, bin_path: Path):
    """A factory for private simulators (for tests that need one to themselves)."""
    started: list[Sim] = []

    def start(api_key: Optional[str] = None, name: str = "sim") -> Sim:
        s = start_sim(tmp_path, api_key=api_key, name=name)
        started.append(s)
        return s

    yield start
    for s in started:
        s.proc.stop()
