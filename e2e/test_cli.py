"""The command line around the gateway: `config check`, `spend`, and `demo`'s banner."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from openai import OpenAI

from conftest import Demo, gateway_config


def run(bin_path: Path, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_path), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for n, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in the config")


def test_config_check_good(bin_path: Path, tmp_path: Path):
    cfg = tmp_path / "good.toml"
    cfg.write_text(gateway_config(18080, tmp_path / "ledger.db", "http://127.0.0.1:9099"))
    res = run(bin_path, "config", "check", cfg)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout
    assert res.stderr.strip() == "" or "error" not in res.stderr.lower()


def test_config_check_unknown_deployment(bin_path: Path, tmp_path: Path):
    text = gateway_config(18080, tmp_path / "ledger.db", "http://127.0.0.1:9099").replace(
        'deployments = ["sim-mini"]', 'deployments = ["sim-mini", "no-such-deployment"]'
    )
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    res = run(bin_path, "config", "check", cfg)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    line = line_of(text, "no-such-deployment")
    assert f"{cfg}:{line}: models.gpt-4o-mini.deployments[1]: " in res.stderr, res.stderr
    assert "no-such-deployment" in res.stderr
    assert "sim-mini" in res.stderr, "the message should list the defined deployments"


def test_config_check_unknown_provider(bin_path: Path, tmp_path: Path):
    text = gateway_config(18080, tmp_path / "ledger.db", "http://127.0.0.1:9099").replace(
        'provider = "sim"', 'provider = "nope"'
    )
    cfg = tmp_path / "bad-provider.toml"
    cfg.write_text(text)
    res = run(bin_path, "config", "check", cfg)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    line = line_of(text, 'provider = "nope"')
    assert f"{cfg}:{line}: deployments.sim-mini.provider: " in res.stderr, res.stderr
    assert "nope" in res.stderr


def test_config_check_unknown_field_names_line(bin_path: Path, tmp_path: Path):
    text = gateway_config(18080, tmp_path / "ledger.db", "http://127.0.0.1:9099").replace(
        "drain_timeout_ms", "drain_timeout_msec"
    )
    cfg = tmp_path / "typo.toml"
    cfg.write_text(text)
    res = run(bin_path, "config", "check", cfg)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    line = line_of(text, "drain_timeout_msec")
    assert f"{cfg}:{line}: " in res.stderr, res.stderr
    assert "drain_timeout_msec" in res.stderr


def test_config_check_dotted_model_name(bin_path: Path, tmp_path: Path):
    # Model names like gpt-4.1 contain dots; the error must still name the right line.
    text = gateway_config(18080, tmp_path / "ledger.db", "http://127.0.0.1:9099") + (
        '\n[models."gpt-4.1"]\ndeployments = ["missing-dep"]\n'
    )
    cfg = tmp_path / "dotted.toml"
    cfg.write_text(text)
    res = run(bin_path, "config", "check", cfg)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "missing-dep" in res.stderr
    line = line_of(text, "missing-dep")
    assert f"{cfg}:{line}: " in res.stderr, res.stderr
    assert 'models."gpt-4.1".deployments[0]' in res.stderr, res.stderr


def test_config_check_missing_file(bin_path: Path, tmp_path: Path):
    res = run(bin_path, "config", "check", tmp_path / "absent.toml")
    assert res.returncode != 0
    assert "absent.toml" in res.stderr


def test_spend_reads_the_demo_ledger(bin_path: Path, demo: Demo):
    client = OpenAI(base_url=demo.base_url, api_key=demo.key, max_retries=0, timeout=30)
    client.chat.completions.create(model="azure-gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # The ledger writes off the request path, in batches: the row lands shortly after
    # the answer, so read until it is there (bounded).
    deadline = time.monotonic() + 30
    while True:
        res = run(bin_path, "spend", "--ledger", demo.ledger)
        assert res.returncode == 0, res.stderr
        if "gpt-4o-mini" in res.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "gpt-4o-mini" in res.stdout, res.stdout
    assert "demo" in res.stdout, res.stdout  # the key's name


def test_spend_without_ledger_fails(bin_path: Path, tmp_path: Path):
    res = run(bin_path, "spend", "--ledger", tmp_path / "nothing.db")
    assert res.returncode != 0
    assert "nothing.db" in res.stderr


def test_demo_banner(demo: Demo):
    out = demo.proc.stdout()
    assert "Switchyard demo is running" in out
    assert f"Base URL: {demo.base_url}" in out
    assert f"API key:  {demo.key}" in out
