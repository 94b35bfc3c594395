"""Reasoning models through `switchyard demo` with the official SDKs: tool loops whose
reasoning state (Gemini 3's thought signatures, Claude's signed thinking blocks) must
come back in the next turn. The simulator refuses a turn without it, the way the
providers do, so a loop that completes shows the gateway carried it."""

from __future__ import annotations

import anthropic
import pytest
from openai import OpenAI

from conftest import Demo

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(demo: Demo) -> OpenAI:
    return OpenAI(base_url=demo.base_url, api_key=demo.key, max_retries=0, timeout=30)


def streamed_message(stream) -> tuple[dict, str]:
    """A streamed answer put together as an application does: text and reasoning
    appended, tool calls by index, signed thinking blocks in order."""
    message: dict = {"role": "assistant", "content": ""}
    calls: list[dict] = []
    finish = ""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        message["content"] += delta.content or ""
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            message["reasoning_content"] = message.get("reasoning_content", "") + extra["reasoning_content"]
        for block in extra.get("thinking_blocks") or []:
            message.setdefault("thinking_blocks", []).append(block)
        for call in delta.tool_calls or []:
            while len(calls) <= call.index:
                calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            slot = calls[call.index]
            slot["id"] = call.id or slot["id"]
            if call.function:
                slot["function"]["name"] += call.function.name or ""
                slot["function"]["arguments"] += call.function.arguments or ""
        finish = choice.finish_reason or finish
    if calls:
        message["tool_calls"] = calls
    return message, finish


def ask(client: OpenAI, model: str, messages: list, stream: bool, effort: str | None) -> tuple[dict, str]:
    extra = {"reasoning_effort": effort} if effort else {}
    if stream:
        return streamed_message(
            client.chat.completions.create(
                model=model, messages=messages, tools=[WEATHER_TOOL], max_tokens=300, stream=True, **extra
            )
        )
    res = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], max_tokens=300, **extra)
    # The message as the SDK returns it, extension fields included, sent back unchanged.
    return res.choices[0].message.model_dump(exclude_none=True), res.choices[0].finish_reason


def tool_loop(client: OpenAI, model: str, stream: bool, turns: int, effort: str | None = None, between=None) -> list:
    messages: list = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: call get_weather for Paris."})
        message, finish = ask(client, model, messages, stream, effort)
        assert finish == "tool_calls", message
        messages.append(message)
        for call in message["tool_calls"]:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 18}'})
        if between:
            between()
        message, finish = ask(client, model, messages, stream, effort)
        assert finish == "stop", message
        assert message["content"]
        messages.append(message)
    return messages


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("turns", [2, 3])
def test_gemini_3_tool_loop(client: OpenAI, demo_faults, stream: bool, turns: int) -> None:
    messages = tool_loop(client, "gemini-3-pro", stream, turns)
    ids = [m["tool_calls"][0]["id"] for m in messages if m.get("tool_calls")]
    assert len(ids) == turns and all(".sy1.gemini-" in i for i in ids)
    sent = [r for r in demo_faults.requests("") if "gemini-3-pro-preview:" in r["path"]]
    last = sent[-1]["body"]["contents"]
    signed = [p for c in last if c["role"] == "model" for p in c["parts"] if "functionCall" in p]
    assert len(signed) == turns
    assert all(p["thoughtSignature"] != "skip_thought_signature_validator" for p in signed)


@pytest.mark.parametrize("stream", [False, True])
def test_claude_thinking_tool_loop(client: OpenAI, demo_faults, stream: bool) -> None:
    messages = tool_loop(client, "anthropic-claude-opus", stream, 2, effort="high")
    first = next(m for m in messages if m.get("tool_calls"))
    assert first["reasoning_content"]
    assert first["thinking_blocks"][0]["type"] == "thinking" and first["thinking_blocks"][0]["signature"]
    sent = [r["body"] for r in demo_faults.requests("") if r["path"].endswith("/v1/messages")]
    assert sent[0]["thinking"] == {"type": "adaptive"}
    assert sent[0]["output_config"]["effort"] == "high"


def test_anthropic_sdk_thinking_round_trip_on_claude(demo: Demo) -> None:
    client = anthropic.Anthropic(base_url=demo.root_url, api_key=demo.key, max_retries=0)
    tool = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    messages: list = [{"role": "user", "content": "Call get_weather for Paris."}]
    kwargs = {"model": "anthropic-claude-opus", "max_tokens": 2000, "tools": [tool], "thinking": {"type": "adaptive"}}
    first = client.messages.create(messages=messages, **kwargs)
    assert [b.type for b in first.content][0] == "thinking"
    use = next(b for b in first.content if b.type == "tool_use")
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]})
    second = client.messages.create(messages=messages, **kwargs)
    assert second.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
def test_claude_loop_finishes_on_gemini_3_when_claude_fails(client: OpenAI, demo_faults, stream: bool) -> None:
    fail = lambda: demo_faults.set_fault(model="claude-opus-4-7", kind="error", status=529)  # noqa: E731
    tool_loop(client, "reasoning-failover", stream, 1, effort="medium", between=fail)
    gemini = [r["body"] for r in demo_faults.requests("") if "gemini-3-pro-preview:" in r["path"]]
    assert len(gemini) == 1
    parts = [p for c in gemini[0]["contents"] if c["role"] == "model" for p in c["parts"] if "functionCall" in p]
    assert parts[0]["thoughtSignature"] == "skip_thought_signature_validator"


def test_anthropic_sdk_tool_loop_on_gemini_3(demo: Demo) -> None:
    client = anthropic.Anthropic(base_url=demo.root_url, api_key=demo.key, max_retries=0)
    tool = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    messages: list = [{"role": "user", "content": "Call get_weather for Paris."}]
    first = client.messages.create(model="gemini-3-pro", max_tokens=300, tools=[tool], messages=messages)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]})
    second = client.messages.create(model="gemini-3-pro", max_tokens=300, tools=[tool], messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text
