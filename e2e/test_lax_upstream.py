"""The official OpenAI SDK and a schema-validating client against `switchyard serve` in
front of a lax OpenAI-compatible server (`lax_upstream.py`): answers, streams and
errors must come out in OpenAI's schema (the extract of OpenAI's OpenAPI document in
crates/switchyard/tests/fixtures/openai-chat-schemas.json), streams with the usage the
client asked for, and the ledger with estimated, non-zero completion tokens and cost."""

from __future__ import annotations

import json
import math
import sqlite3

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from conftest import REPO_ROOT
from lax_upstream import REASONING, TEXT, TOOL_ARGS, LaxUpstream

KEY = "sy-e2e-lax-key-0123456789"
SCHEMAS = json.loads((REPO_ROOT / "crates/switchyard/tests/fixtures/openai-chat-schemas.json").read_text())
PROMPT = "Say hello to a lax server."


def check(name: str, value: dict) -> None:
    root = dict(SCHEMAS, **{"$ref": f"#/components/schemas/{name}"})
    jsonschema.Draft202012Validator(root).validate(value)


def tokens(text: str) -> int:
    """The gateway's estimator: about four characters a token."""
    return math.ceil(len(text) / 4)


def config(port: int, ledger, lax_url: str) -> str:
    models = ""
    for name in ["bare", "bare-cut", "anon", "partial", "tools", "detail", "html-502"]:
        models += f"""
[deployments.lax-{name}]
provider = "lax"
model = "{name}"
price = {{ input = 1.0, output = 2.0 }}

[models.lax-{name}]
deployments = ["lax-{name}"]
"""
    return f"""\
[server]
listen = "127.0.0.1:{port}"
drain_grace_ms = 0

[ledger]
path = {json.dumps(str(ledger))}

[[keys]]
name = "e2e"
key = "{KEY}"

[providers.lax]
kind = "openai"
base_url = "{lax_url}"
{models}"""


@pytest.fixture()
def lax_gateway(serve, tmp_path):
    lax = LaxUpstream()
    ledger = tmp_path / "ledger.db"
    gw = serve(lambda port: config(port, ledger, lax.base_url))
    try:
        yield gw, lax, ledger
    finally:
        lax.stop()


def ledger_rows(gw, ledger) -> list[dict]:
    assert gw.proc.stop() == 0, gw.proc.describe()
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY started_at_ms")]
    finally:
        con.close()


def raw_stream(gw, body: dict) -> list:
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as client:
        res = client.post(f"{gw.base_url}/chat/completions", json=body)
    assert res.status_code == 200, res.text
    events = [e for e in res.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] if e == "data: [DONE]" else json.loads(e[len("data: "):]) for e in events]


def test_sdk_sees_a_complete_answer_with_usage(lax_gateway):
    gw, _, ledger = lax_gateway
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="lax-bare", messages=[{"role": "user", "content": PROMPT}])
    check("CreateChatCompletionResponse", json.loads(raw.text))
    answer = raw.parse()
    assert answer.id.startswith("chatcmpl-") and answer.created > 0 and answer.model == "bare"
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == "".join(TEXT)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.model_extra["reasoning_content"] == REASONING
    completion = tokens("".join(TEXT) + REASONING)
    assert answer.usage is not None and answer.usage.completion_tokens == completion
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + completion
    (row,) = ledger_rows(gw, ledger)
    assert row["usage_estimated"] == 1 and row["completion_tokens"] == completion
    assert row["cost_nano_usd"] == row["prompt_tokens"] * 1000 + completion * 2000


def test_sdk_stream_gets_the_usage_chunk_it_asked_for(lax_gateway):
    gw, lax, ledger = lax_gateway
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="lax-bare", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": PROMPT}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(TEXT)
    assert any(c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning_content") == REASONING
               for c in chunks)
    usage = chunks[-1].usage
    assert usage is not None, "the SDK saw no usage"
    assert chunks[-1].choices == []
    completion = tokens("".join(TEXT) + REASONING)
    assert usage.completion_tokens == completion
    assert lax.seen[-1]["stream_options"]["include_usage"] is True
    (row,) = ledger_rows(gw, ledger)
    assert row["usage_estimated"] == 1 and row["completion_tokens"] == completion
    assert row["error_code"] is None, "a complete stream, though the upstream sent no [DONE]"
    assert row["cost_nano_usd"] > 0


def test_schema_validating_client_accepts_every_chunk(lax_gateway):
    gw, _, _ = lax_gateway
    for model in ["lax-bare", "lax-tools"]:
        events = raw_stream(gw, {"model": model, "stream": True, "stream_options": {"include_usage": True},
                                 "messages": [{"role": "user", "content": PROMPT}]})
        assert events[-1] == "[DONE]", events
        for c in events[:-1]:
            check("CreateChatCompletionStreamResponse", c)
        assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0
    args = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                   for c in events[:-2] if c["choices"] and c["choices"][0]["delta"].get("tool_calls"))
    assert args == TOOL_ARGS
    assert events[-2]["usage"]["completion_tokens"] == tokens("get_weather" + TOOL_ARGS)


def test_errors_in_other_shapes(lax_gateway):
    gw, _, _ = lax_gateway
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="lax-detail", messages=[{"role": "user", "content": PROMPT}])
    check("ErrorResponse", bad.value.response.json())
    assert bad.value.body["message"] == "max_tokens must be at most 4096 on worker [host]"
    with pytest.raises(openai.InternalServerError) as proxy:
        client.chat.completions.create(model="lax-html-502", messages=[{"role": "user", "content": PROMPT}])
    assert proxy.value.status_code == 502
    body = proxy.value.response.text
    check("ErrorResponse", json.loads(body))
    assert "internal" not in body and "<" not in body and "nginx" not in body, body


def test_a_stream_without_a_finish_reason_is_cut(lax_gateway):
    gw, _, ledger = lax_gateway
    events = raw_stream(gw, {"model": "lax-bare-cut", "stream": True, "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": PROMPT}]})
    assert "[DONE]" not in events, events
    assert events[-1]["error"]["code"] == "stream_cut", events
    check("ErrorResponse", events[-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1])
    assert text == "".join(TEXT)
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="lax-bare-cut", stream=True,
                                            messages=[{"role": "user", "content": PROMPT}]))
    rows = ledger_rows(gw, ledger)
    assert len(rows) == 2
    for row in rows:
        assert row["error_code"] == "stream_cut" and row["usage_estimated"] == 1


def test_tool_calls_without_id_or_type_get_them(lax_gateway):
    gw, _, _ = lax_gateway
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="lax-anon", messages=[{"role": "user", "content": PROMPT}])
    check("CreateChatCompletionResponse", json.loads(raw.text))
    calls = raw.parse().choices[0].message.tool_calls
    assert [c.type for c in calls] == ["function", "function"]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert calls[0].function.arguments == TOOL_ARGS
    events = raw_stream(gw, {"model": "lax-anon", "stream": True, "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": PROMPT}]})
    assert events[-1] == "[DONE]", events
    for c in events[:-1]:
        check("CreateChatCompletionStreamResponse", c)
    assert len({c["id"] for c in events[:-1]}) == 1, "one id across the stream"
    deltas = [d for c in events[:-1] if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [d["index"] for d in deltas] == [0, 1]
    assert all(d["type"] == "function" and d["id"].startswith("call_") for d in deltas)
    stream = client.chat.completions.create(model="lax-anon", stream=True,
                                            messages=[{"role": "user", "content": PROMPT}])
    sdk = [d for c in stream if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name) for d in sdk] == [(0, "get_weather"), (1, "get_time")]


def test_a_partial_usage_is_completed_not_trusted(lax_gateway):
    gw, _, ledger = lax_gateway
    client = OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=30)
    completion = tokens("".join(TEXT))
    raw = client.chat.completions.with_raw_response.create(
        model="lax-partial", messages=[{"role": "user", "content": PROMPT}])
    check("CreateChatCompletionResponse", json.loads(raw.text))
    usage = raw.parse().usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, completion, 11 + completion)
    events = raw_stream(gw, {"model": "lax-partial", "stream": True, "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": PROMPT}]})
    for c in events[:-1]:
        check("CreateChatCompletionStreamResponse", c)
    assert events[-2]["usage"] == {"prompt_tokens": 11, "completion_tokens": completion,
                                   "total_tokens": 11 + completion}
    rows = ledger_rows(gw, ledger)
    assert len(rows) == 2
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (11, completion, 1)
        assert row["cost_nano_usd"] == 11 * 1000 + completion * 2000
