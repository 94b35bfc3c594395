"""Channel profiles seen by the official OpenAI SDK: the channel chosen with the
`x-switchyard-channel` header, its system prompt on chat and Responses requests, PII
redacted or blocked in answers (streamed in chunks that split the values), a
refused channel, and `switchyard channels report`."""

from __future__ import annotations

import json
import subprocess

import openai
import pytest
from openai import OpenAI

KEY = "sy-e2e-channels-0123456789"
VOICE_PROMPT = "You are Ada, the voice assistant. Be brief."
LEAKY = "[[echo]] Write to jane.doe@example.com or call +44 20 7946 0958 before Friday"
EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"


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
policy = {{ channels = ["voice", "support", "secure"] }}

[channels.voice]
ttft_slo_ms = 1000
total_slo_ms = 5000
system_prompt = "{VOICE_PROMPT}"
max_output_tokens = 100

[channels.support]
pii_output = "redact"

[channels.secure]
pii_output = "block"

[channels.email]

[providers.sim]
kind = "openai"
base_url = "{sim_url}/v1"
api_key = "sk-sim"

[deployments.sim-mini]
provider = "sim"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[models.chat]
deployments = ["sim-mini"]
"""


@pytest.fixture()
def setup(serve, sim_factory, tmp_path):
    sim = sim_factory()
    ledger = tmp_path / "ledger.db"
    gw = serve(lambda port: config(port, ledger, sim.url))
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    return sim, gw, client, ledger


def channel(name: str) -> dict:
    return {"x-switchyard-channel": name}


def test_the_channel_prompt_reaches_the_upstream_on_chat_and_responses(setup):
    sim, _, client, _ = setup
    client.chat.completions.create(
        model="chat",
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}],
        max_tokens=1000,
        extra_headers=channel("voice"),
    )
    sent = sim.control.requests("")[-1]["body"]
    assert sent["messages"][0] == {"role": "system", "content": VOICE_PROMPT}
    assert sent["messages"][1]["content"] == "Answer in French."
    assert sent["max_tokens"] == 100

    # The Responses API: the channel's prompt comes before the request's instructions.
    res = client.responses.create(
        model="chat", instructions="Answer in German.", input="hi", extra_headers=channel("voice")
    )
    assert res.status == "completed"
    sent = sim.control.requests("")[-1]["body"]
    text = json.dumps(sent)
    assert VOICE_PROMPT in text and "Answer in German." in text
    assert text.index(VOICE_PROMPT) < text.index("Answer in German.")


@pytest.mark.parametrize("chunks", [2, 5, 9, 16])
def test_pii_in_a_streamed_answer_is_redacted_across_chunks(setup, chunks):
    sim, _, client, _ = setup
    said = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": LEAKY}]
    ).choices[0].message.content
    assert EMAIL in said and PHONE in said
    sim.control.set_latency(instance="", chunks=chunks)
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": LEAKY}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=channel("support"),
    )
    got = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    assert text == said.replace(EMAIL, "[EMAIL_1]").replace(PHONE, "[PHONE_1]")
    assert [c.choices[0].finish_reason for c in got if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert got[-1].usage is not None and got[-1].usage.completion_tokens > 0


def test_a_blocked_answer_ends_with_content_filter(setup):
    sim, _, client, _ = setup
    whole = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": LEAKY}], extra_headers=channel("secure")
    )
    assert whole.choices[0].finish_reason == "content_filter"
    assert whole.choices[0].message.content is None
    sim.control.set_latency(instance="", chunks=6)
    got = list(
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": LEAKY}], stream=True, extra_headers=channel("secure")
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    assert "jane" not in text and "7946" not in text
    assert got[-1].choices[0].finish_reason == "content_filter"


def test_a_channel_the_policy_does_not_allow_is_refused(setup):
    _, _, client, _ = setup
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], extra_headers=channel("email")
        )
    assert e.value.body["code"] == "channel_not_allowed"
    assert e.value.body["param"] == "x-switchyard-channel"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], extra_headers=channel("no-such")
        )


def test_channels_report(setup, bin_path, tmp_path):
    sim, gw, client, ledger = setup
    for _ in range(3):
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], extra_headers=channel("voice")
        )
    gw.proc.stop()  # the ledger is flushed on shutdown
    cfg = tmp_path / "report.toml"
    cfg.write_text(config(1, ledger, sim.url))
    res = subprocess.run(
        [str(bin_path), "--config", str(cfg), "channels", "report", "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    voice = next(c for c in report["channels"] if c["channel"] == "voice")
    assert voice["requests"] == 3 and voice["turns"] == 3
    assert voice["ttft_slo_ms"] == 1000
    assert voice["ttft_attainment_percent"] == 100.0
    assert voice["providers"]["sim"]["share"] == 1.0
    assert voice["cost_per_turn_nano_usd"] * 3 <= voice["cost_nano_usd"] < (voice["cost_per_turn_nano_usd"] + 1) * 3
    text = subprocess.run(
        [str(bin_path), "--config", str(cfg), "channels", "report"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert text.returncode == 0, text.stderr
    assert "voice" in text.stdout and "objective 1000" in text.stdout
    assert "sim 100.0%" in text.stdout
