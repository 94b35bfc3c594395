"""The official OpenAI Python SDK against `switchyard demo`, once per provider kind:
each demo model is served through the simulator in that provider's own protocol, and
the OpenAI client must not be able to tell them apart."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

# The OpenAI-SDK suite's client fixture, prompt, second tool and usage check.
from test_gateway_sdk import HELLO, TIME_TOOL, check_usage, client  # noqa: F401

# One demo model per provider kind (see crates/switchyard/src/demo.rs).
EVERY_KIND = [
    "gpt-4o-mini",
    "azure-gpt-4o-mini",
    "anthropic-claude-haiku",
    "bedrock-claude-haiku",
    "gemini-flash",
    "vertex-gemini-flash",
    "mistral-small",
]
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
            },
            "required": ["city", "unit"],
        },
    },
}


@pytest.mark.parametrize("model", EVERY_KIND)
def test_plain_chat(client: OpenAI, model: str):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO)
    res = raw.parse()
    assert res.object == "chat.completion"
    assert res.id
    assert len(res.choices) == 1
    choice = res.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason == "stop"
    check_usage(res.usage)
    assert raw.headers.get("x-switchyard-deployment")


@pytest.mark.parametrize("model", EVERY_KIND)
def test_stream_with_usage(client: OpenAI, model: str):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks, "empty stream"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant", "the role comes first"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert with_choices[-1].choices[0].finish_reason == "stop", "the finish reason comes last"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, [c.model_dump() for c in usage_chunks]
    assert chunks[-1] is usage_chunks[0], "the usage chunk comes last"
    assert chunks[-1].choices == []
    check_usage(chunks[-1].usage)
    plain = client.chat.completions.create(model=model, messages=HELLO)
    assert plain.choices[0].message.content == text
    assert plain.usage.total_tokens == chunks[-1].usage.total_tokens


@pytest.mark.parametrize("model", EVERY_KIND)
def test_forced_tool_call_streamed(client: OpenAI, model: str):
    request = dict(
        model=model,
        messages=[{"role": "user", "content": "What should I wear in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    calls: dict[int, dict] = {}
    finish = []
    usage = None
    for chunk in client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish.append(choice.finish_reason)
            for tc in choice.delta.tool_calls or []:
                assert tc.index is not None, "every tool-call delta has an index"
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    assert entry["id"] is None, "the id comes once"
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
    assert args["unit"] in ("celsius", "fahrenheit")
    check_usage(usage)
    plain = client.chat.completions.create(**request)
    assert plain.choices[0].finish_reason == "tool_calls"
    assert json.loads(plain.choices[0].message.tool_calls[0].function.arguments) == args
