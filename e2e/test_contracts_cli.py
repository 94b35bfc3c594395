"""Contracts seen from outside: the OpenAI SDK's requests burn a committed Azure
contract first under the `cost` strategy, contracted prices show in the ledger, a
cap with no room is a 429 the SDK raises as a rate limit, and `switchyard contracts`
reports the burn (text and JSON) from the ledger."""

from __future__ import annotations

import json
import subprocess

import openai
import pytest
from openai import OpenAI

KEY = "sy-e2e-contracts-0123456789"


def config(port: int, ledger, sim_url: str) -> str:
    return f"""\
[server]
listen = "127.0.0.1:{port}"
drain_grace_ms = 0

[ledger]
path = {json.dumps(str(ledger))}

[[keys]]
name = "e2e"
key = "{KEY}"

[providers.sim]
kind = "openai"
base_url = "{sim_url}/v1"
api_key = "sk-sim"

[providers.sim-azure]
kind = "openai"
base_url = "{sim_url}/azure/v1"
api_key = "sk-sim"

[providers.sim-capped]
kind = "openai"
base_url = "{sim_url}/capped/v1"
api_key = "sk-sim"

[deployments.openai-mini]
provider = "sim"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[deployments.azure-mini]
provider = "sim-azure"
model = "gpt-4o-mini"
price = {{ input = 0.165, output = 0.66 }}

[deployments.capped-mini]
provider = "sim-capped"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[contracts.azure-commit]
provider = "sim-azure"
commitment_usd = "1000"
[contracts.azure-commit.prices.azure-mini]
input = 0.12
output = 0.48

[contracts.closed]
deployments = ["capped-mini"]
cap_usd = "0.000001"

[models.cheapest]
strategy = "cost"
deployments = ["openai-mini", "azure-mini"]

[models.capped]
deployments = ["capped-mini"]
"""


@pytest.fixture()
def setup(serve, sim_factory, tmp_path):
    sim = sim_factory()
    ledger = tmp_path / "ledger.db"
    gw = serve(lambda port: config(port, ledger, sim.url))
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    return sim, gw, client, ledger


def contracts(bin_path, cfg, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_path), "--config", str(cfg), "contracts", *extra],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def test_a_commitment_is_burned_first_and_reported(setup, bin_path, tmp_path):
    sim, gw, client, ledger = setup
    served = []
    for i in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="cheapest", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=30
        )
        served.append(raw.headers["x-switchyard-deployment"])
        assert "unburned commitment of contract azure-commit" in raw.headers["x-switchyard-route"]
        assert raw.parse().choices[0].message.content
    # $1,000 committed is far from burned: every request went to Azure, though its
    # list price is above OpenAI's.
    assert served == ["azure-mini"] * 5
    assert len(sim.control.requests("azure")) == 5 and not sim.control.requests("")

    # A contract whose cap has no room: the SDK sees a rate limit with retry-after.
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="capped", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "contract_cap_reached"
    assert int(e.value.response.headers["retry-after"]) > 0
    assert not sim.control.requests("capped")

    gw.proc.stop()  # the ledger is flushed on shutdown
    cfg = tmp_path / "report.toml"
    cfg.write_text(config(1, ledger, sim.url))
    res = contracts(bin_path, cfg, "--json")
    assert res.returncode == 0, res.stderr
    report = {c["contract"]: c for c in json.loads(res.stdout)["data"]}
    azure = report["azure-commit"]
    assert azure["commitment"] == "spend" and azure["committed"] == 1_000_000_000_000
    assert azure["deployments"] == ["azure-mini"]
    # Consumption is the contracted cost; the list value is above it (0.165 vs 0.12).
    assert 0 < azure["spent_nano_usd"] < azure["list_nano_usd"]
    assert azure["consumed"] == azure["spent_nano_usd"]
    assert azure["left"] == azure["committed"] - azure["consumed"]
    assert azure["shortfall"] > 0
    assert any("fall short" in w for w in azure["warnings"])
    closed = report["closed"]
    assert closed["cap_nano_usd"] == 1_000 and closed["consumed"] == 0

    text = contracts(bin_path, cfg)
    assert text.returncode == 0, text.stderr
    assert "contract azure-commit (azure-mini)" in text.stdout
    assert "warning: projected to fall short of its commitment" in text.stdout

    bad = contracts(bin_path, cfg, "--at", "next tuesday")
    assert bad.returncode != 0 and "--at" in bad.stderr
