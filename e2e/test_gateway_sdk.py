"""The official OpenAI Python SDK against `switchyard demo`: what an application sees."""

from __future__ import annotations

import json
import math
import sqlite3
import time

import openai
import pytest
from openai import OpenAI

from conftest import DEMO_MODELS, Demo, wait_serving

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": ["tz"],
        },
    },
}
HELLO = [{"role": "user", "content": "Hello! How are you today?"}]


@pytest.fixture(scope="module")
def client(demo: Demo) -> OpenAI:
    # No SDK retries: a failure must show as it happened, not be papered over.
    return OpenAI(base_url=demo.base_url, api_key=demo.key, max_retries=0, timeout=30)


def check_usage(usage) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# ---------------------------------------------------------------------------------------
# Chat


def test_chat_plain(client: OpenAI):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-switchyard-deployment"] == "openai-gpt-4o-mini"
    assert raw.headers["x-switchyard-provider"] == "sim-openai"
    assert raw.headers["x-switchyard-attempts"] == "1"
    res = raw.parse()
    assert res.object == "chat.completion"
    assert len(res.choices) == 1
    choice = res.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert not choice.message.tool_calls
    assert choice.finish_reason == "stop"
    check_usage(res.usage)


def test_chat_is_deterministic(client: OpenAI):
    a = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    b = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.total_tokens == b.usage.total_tokens


def test_chat_request_ids_are_unique(client: OpenAI):
    ids = {
        client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO).headers[
            "x-request-id"
        ]
        for _ in range(3)
    }
    assert len(ids) == 3


def test_chat_via_azure_deployment(client: OpenAI, demo: Demo, demo_faults):
    raw = client.chat.completions.with_raw_response.create(model="azure-gpt-4o-mini", messages=HELLO)
    assert raw.headers["x-switchyard-deployment"] == "azure-gpt-4o-mini"
    assert raw.headers["x-switchyard-provider"] == "sim-azure"
    res = raw.parse()
    assert res.choices[0].message.content.strip()
    assert res.choices[0].finish_reason == "stop"
    check_usage(res.usage)
    # The gateway spoke Azure's classic protocol upstream: deployment in the path,
    # api-version in the query, the key in the api-key header.
    seen = [r for r in demo_faults.requests("") if "/openai/deployments/" in r["path"]]
    assert seen, demo_faults.requests("")
    req = seen[-1]
    assert req["path"] == "/openai/deployments/gpt-4o-mini-prod/chat/completions"
    assert "api-version=2024-10-21" in (req["query"] or "")
    headers = {k: v for k, v in req["headers"]}
    assert headers.get("api-key") == "sim-azure-key"
    assert demo.key not in json.dumps(req), "the client's gateway key leaked upstream"


def test_stream_with_usage(client: OpenAI):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "empty stream"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, [c.model_dump() for c in usage_chunks]
    last = chunks[-1]
    assert last is usage_chunks[0], "the usage chunk must come last"
    assert last.choices == []
    check_usage(last.usage)
    # The same request unstreamed gives the same text and the same usage.
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert plain.choices[0].message.content == text
    assert plain.usage.total_tokens == last.usage.total_tokens


def test_stream_without_usage(client: OpenAI):
    # The gateway asks upstream for usage anyway (for its ledger); the client, which did
    # not, must not see it.
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    assert chunks
    assert all(c.choices for c in chunks), "a chunk with empty choices reached a client that did not ask for usage"
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_raw_has_done_and_headers(client: OpenAI):
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    ) as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        assert res.headers["x-request-id"].startswith("req_")
        assert res.headers["x-switchyard-deployment"] == "openai-gpt-4o-mini"
        lines = [line for line in res.iter_lines() if line.strip()]
    data = [line[len("data:"):].strip() for line in lines if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    for payload in data[:-1]:
        json.loads(payload)


# ---------------------------------------------------------------------------------------
# Tools


def test_forced_tool_call(client: OpenAI):
    res = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What should I wear in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")
    assert set(args) <= {"city", "unit", "days"}
    check_usage(res.usage)


def test_forced_tool_call_streamed(client: OpenAI):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What should I wear in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict] = {}
    finish = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish.append(choice.finish_reason)
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
    assert finish == ["tool_calls"]
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"]
    assert call["name"] == "get_weather"
    args = json.loads(call["arguments"])
    assert {"city", "unit"} <= set(args)
    check_usage(usage)
    # Streamed and plain answers to the same request agree.
    plain = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What should I wear in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert json.loads(plain.choices[0].message.tool_calls[0].function.arguments) == args


def test_tool_choice_required(client: OpenAI):
    res = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Help me plan the afternoon."}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
    )
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name in ("get_weather", "get_time")
        json.loads(call.function.arguments)


def test_tool_named_in_message_auto(client: OpenAI):
    res = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Please use get_time for Europe/Paris."}],
        tools=[WEATHER_TOOL, TIME_TOOL],
    )
    calls = res.choices[0].message.tool_calls
    assert calls and [c.function.name for c in calls] == ["get_time"]
    assert "tz" in json.loads(calls[0].function.arguments)


def test_tool_result_round_trip(client: OpenAI):
    messages = [{"role": "user", "content": "What should I wear in Oslo?"}]
    first = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = first.choices[0].message.tool_calls[0]
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": -3, "sky": "snow"})})
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])
    choice = second.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    check_usage(second.usage)


# ---------------------------------------------------------------------------------------
# Structured output, n, limits


def test_json_schema_response_format(client: OpenAI):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "tags", "address"],
        "additionalProperties": False,
    }
    res = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": schema}},
    )
    assert res.choices[0].finish_reason == "stop"
    data = json.loads(res.choices[0].message.content)
    assert set(data) == {"name", "age", "tags", "address"}
    assert isinstance(data["name"], str)
    assert isinstance(data["age"], int) and not isinstance(data["age"], bool)
    assert isinstance(data["tags"], list) and all(isinstance(t, str) for t in data["tags"])
    assert set(data["address"]) == {"city", "zip"}


def test_n_two_choices(client: OpenAI):
    res = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, n=2)
    assert sorted(c.index for c in res.choices) == [0, 1]
    for c in res.choices:
        assert c.message.content.strip()
        assert c.finish_reason == "stop"
    check_usage(res.usage)


def test_n_two_choices_streamed(client: OpenAI):
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, n=2, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert finishes == {0: "stop", 1: "stop"}
    assert texts[0].strip() and texts[1].strip()


def test_max_tokens_gives_length(client: OpenAI):
    res = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=3,
    )
    assert res.choices[0].finish_reason == "length"
    assert 1 <= res.usage.completion_tokens <= 3
    # The simulator's cut answer is a prefix of its full one: the gateway passed it as is.
    full = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Tell me a long story."}])
    assert full.choices[0].finish_reason == "stop"
    assert full.choices[0].message.content.startswith(res.choices[0].message.content)
    assert full.usage.completion_tokens > res.usage.completion_tokens


# ---------------------------------------------------------------------------------------
# Embeddings and models


def _norm(v) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embeddings_default_encoding(client: OpenAI):
    # The SDK asks for base64 by default and decodes it; the vectors must come out right.
    res = client.embeddings.create(model="text-embedding-3-small", input=["first text", "second text"])
    assert [d.index for d in res.data] == [0, 1]
    a, b = res.data[0].embedding, res.data[1].embedding
    assert len(a) == len(b) > 0
    assert all(isinstance(x, float) for x in a[:10])
    # The simulator's vectors are unit length: a mis-decoded vector would not be.
    assert abs(_norm(a) - 1.0) < 1e-3
    assert abs(_norm(b) - 1.0) < 1e-3
    assert a != b
    assert res.usage.prompt_tokens > 0


def test_embeddings_float_matches_base64(client: OpenAI):
    b64 = client.embeddings.create(model="text-embedding-3-small", input="same text")
    flt = client.embeddings.create(model="text-embedding-3-small", input="same text", encoding_format="float")
    x, y = b64.data[0].embedding, flt.data[0].embedding
    assert len(x) == len(y) > 0
    assert max(abs(p - q) for p, q in zip(x, y)) < 1e-6


def test_embeddings_dimensions(client: OpenAI):
    res = client.embeddings.create(model="text-embedding-3-small", input="short", dimensions=64)
    assert len(res.data[0].embedding) == 64


def test_models_list(client: OpenAI):
    ids = {m.id for m in client.models.list()}
    assert DEMO_MODELS <= ids, ids
    model = client.models.retrieve("support-chat")
    assert model.id == "support-chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ---------------------------------------------------------------------------------------
# Fallback


def test_support_chat_uses_primary_when_healthy(client: OpenAI, demo_faults):
    raw = client.chat.completions.with_raw_response.create(model="support-chat", messages=HELLO)
    assert raw.headers["x-switchyard-deployment"] == "openai-primary-gpt-4o-mini"
    assert raw.headers["x-switchyard-attempts"] == "1"
    assert demo_faults.requests("primary"), "nothing reached the primary instance"


def test_support_chat_falls_over_when_primary_fails(client: OpenAI, demo: Demo, demo_faults):
    demo_faults.set_fault(instance="primary", model="*", kind="error", status=500)
    try:
        raw = client.chat.completions.with_raw_response.create(model="support-chat", messages=HELLO)
        assert raw.headers["x-switchyard-deployment"] == "azure-gpt-4o-mini"
        assert raw.headers["x-switchyard-provider"] == "sim-azure"
        assert int(raw.headers["x-switchyard-attempts"]) >= 2
        res = raw.parse()
        assert res.choices[0].message.content.strip()
        check_usage(res.usage)
        assert demo_faults.requests("primary"), "the primary was not tried first"
        # Streams fall over too (nothing had reached the client yet).
        chunks = list(client.chat.completions.create(model="support-chat", messages=HELLO, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    finally:
        demo_faults.clear_faults("primary")
    # Cleared: the primary serves again (once its circuit breaker, if open, lets it).
    wait_serving(demo, "support-chat", "openai-primary-gpt-4o-mini")


# ---------------------------------------------------------------------------------------
# Errors


def test_bad_key(demo: Demo):
    # A fresh client (and so a fresh connection) per call: see test_http.py for what
    # happens to a kept-alive connection after a rejected POST.
    def bad() -> OpenAI:
        return OpenAI(base_url=demo.base_url, api_key="sy-wrong-key", max_retries=0, timeout=30)

    with pytest.raises(openai.AuthenticationError) as e:
        bad().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert e.value.status_code == 401
    assert e.value.response.headers["x-request-id"].startswith("req_")
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad().models.list()
    with pytest.raises(openai.AuthenticationError):
        bad().embeddings.create(model="text-embedding-3-small", input="x")


def test_unknown_model(client: OpenAI):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert e.value.status_code == 404
    assert e.value.body["param"] == "model"
    assert "no-such-model" in e.value.message


def test_bad_request_content_type_names_param(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": 42}])
    assert e.value.status_code == 400
    assert "messages[0]" in (e.value.body.get("param") or ""), e.value.body
    assert e.value.body["type"] == "invalid_request_error"


def test_bad_request_missing_messages_names_param(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=openai.NOT_GIVEN)
    assert e.value.body.get("param") == "messages", e.value.body


def test_upstream_rate_limit(client: OpenAI, demo: Demo, demo_faults):
    demo_faults.set_fault(instance="", model="gpt-4o-mini", kind="error", status=429, retry_after_s=1)
    try:
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert e.value.status_code == 429
        assert e.value.response.headers["x-request-id"].startswith("req_")
        assert e.value.response.headers.get("retry-after"), dict(e.value.response.headers)
    finally:
        demo_faults.clear_faults("")
    # Cleared: the model serves again once the retry-after has passed.
    wait_serving(demo, "gpt-4o-mini", "openai-gpt-4o-mini")


def test_upstream_server_error(client: OpenAI, demo_faults):
    demo_faults.set_fault(instance="", model="gpt-4o-mini", kind="error", status=500)
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert e.value.status_code >= 500
        assert isinstance(e.value.body, dict) and e.value.body.get("message"), e.value.body
    finally:
        demo_faults.clear_faults("")


# ---------------------------------------------------------------------------------------
# Ledger


def _ledger_row(path, request_id: str, timeout: float = 10.0):
    """The ledger row of a request, polled for (rows are written in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            con.row_factory = sqlite3.Row
            try:
                row = con.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            except sqlite3.OperationalError:
                row = None
            finally:
                con.close()
            if row is not None:
                return dict(row)
        if time.monotonic() > deadline:
            pytest.fail(f"no ledger row for {request_id} in {path} after {timeout} s")
        time.sleep(0.1)


def test_ledger_records_usage_and_cost(client: OpenAI, demo: Demo):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    res = raw.parse()
    row = _ledger_row(demo.ledger, raw.headers["x-request-id"])
    assert row["status"] == 200
    assert row["key_id"] == "cfg:demo" and row["key_name"] == "demo"
    assert row["logical_model"] == "gpt-4o-mini"
    assert row["deployment"] == "openai-gpt-4o-mini"
    assert row["streamed"] == 0
    assert row["prompt_tokens"] == res.usage.prompt_tokens
    assert row["completion_tokens"] == res.usage.completion_tokens
    # $0.15 / $0.60 per million tokens = 150 / 600 nano-USD per token.
    expected = res.usage.prompt_tokens * 150 + res.usage.completion_tokens * 600
    assert abs(row["cost_nano_usd"] - expected) <= 1, (row, expected)


def test_ledger_records_stream_usage_client_did_not_ask_for(client: OpenAI, demo: Demo):
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    ) as res:
        request_id = res.headers["x-request-id"]
        body = "".join(res.iter_lines())
    assert "[DONE]" in body
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    row = _ledger_row(demo.ledger, request_id)
    assert row["status"] == 200
    assert row["streamed"] == 1
    assert row["client_disconnected"] == 0
    assert row["prompt_tokens"] == plain.usage.prompt_tokens
    assert row["completion_tokens"] == plain.usage.completion_tokens


def test_ledger_records_refused_request(demo: Demo):
    client = OpenAI(base_url=demo.base_url, api_key=demo.key, max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    row = _ledger_row(demo.ledger, e.value.response.headers["x-request-id"])
    assert row["status"] == 404
    assert row["cost_nano_usd"] == 0
