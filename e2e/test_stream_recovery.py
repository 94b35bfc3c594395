"""`stream_recovery = "continue"` seen by the official OpenAI SDK: a stream whose
primary breaks off mid-answer goes on from the backup, and the SDK reads one stream."""

from __future__ import annotations

import json

from openai import OpenAI

KEY = "sy-e2e-recovery-0123456789"
STORY = "Tell me a long story about railways please"


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

[providers.primary]
kind = "openai"
base_url = "{sim_url}/primary/v1"
api_key = "sk-sim"

[providers.backup]
kind = "openai"
base_url = "{sim_url}/backup/v1"
api_key = "sk-sim"

[deployments.primary-mini]
provider = "primary"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[deployments.backup-mini]
provider = "backup"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[models.chat]
deployments = ["primary-mini", "backup-mini"]
stream_recovery = "continue"

[models.whole]
deployments = ["backup-mini"]
"""


def test_the_sdk_reads_one_stream_through_a_recovery(serve, sim_factory, tmp_path):
    sim = sim_factory()
    gw = serve(lambda port: config(port, tmp_path / "ledger.db", sim.url))
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    whole = client.chat.completions.create(
        model="whole", messages=[{"role": "user", "content": STORY}]
    ).choices[0].message.content
    sim.control.clear_requests()
    sim.control.set_fault(instance="primary", kind="cut", cut_after_chunks=5)

    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": STORY}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert len({c.id for c in chunks}) == 1
    assert len({c.model for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None
    assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens
    # The backup was asked to continue the text the primary had relayed.
    asked = sim.control.requests("backup")
    assert len(asked) == 1
    messages = asked[0]["body"]["messages"]
    assert messages[1]["role"] == "assistant" and whole.startswith(messages[1]["content"])
    assert messages[2]["role"] == "user" and messages[2]["content"].startswith("Continue")

    # The raw stream carries the marker before [DONE]; the SDK ignored it.
    sim.control.clear_requests()
    with client.chat.completions.with_streaming_response.create(
        model="chat", messages=[{"role": "user", "content": STORY}], stream=True
    ) as res:
        raw = "".join(res.iter_text())
    assert raw.endswith(": switchyard recovered from primary-mini\n\ndata: [DONE]\n\n"), raw[-200:]
