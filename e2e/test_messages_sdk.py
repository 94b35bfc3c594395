"""The official Anthropic Python SDK against `switchyard demo`'s `/v1/messages`:
an application written for Claude, served by whatever backend the model routes to."""

from __future__ import annotations

import json

import anthropic
import pytest

from conftest import Demo

MODEL = "gpt-4o-mini"
# One demo model per provider kind: the same Anthropic client reaches each of them.
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
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}


@pytest.fixture(scope="module")
def client(demo: Demo) -> anthropic.Anthropic:
    # No SDK retries: a failure must show as it happened. The SDK adds /v1/messages.
    return anthropic.Anthropic(base_url=demo.root_url, api_key=demo.key, max_retries=0)


@pytest.mark.parametrize("model", EVERY_KIND + ["support-chat"])
def test_create_plain(client: anthropic.Anthropic, model: str) -> None:
    msg = client.messages.create(
        model=model,
        max_tokens=200,
        system="You are terse.",
        messages=[{"role": "user", "content": "Hello! How are you today?"}],
    )
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.model  # the model that served, as upstream named it
    assert msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn"
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert msg._request_id


def test_create_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "[[len:30]] go"}]
    )
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 4


@pytest.mark.parametrize("model", EVERY_KIND)
def test_stream_text(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(
        model=model,
        max_tokens=300,
        messages=[{"role": "user", "content": "Tell me about rivers."}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text" and len(final.content[0].text) > 10
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


@pytest.mark.parametrize("model", EVERY_KIND)
def test_stream_tool_use(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(
        model=model,
        max_tokens=300,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "What's the weather in Lisbon?"}],
    ) as stream:
        partial = "".join(e.partial_json for e in stream if e.type == "input_json")
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool_uses = [b for b in final.content if b.type == "tool_use"]
    assert len(tool_uses) == 1
    assert tool_uses[0].name == "get_weather"
    assert isinstance(tool_uses[0].input, dict)
    assert tool_uses[0].input["unit"] in ("celsius", "fahrenheit")
    assert json.loads(partial) == tool_uses[0].input


@pytest.mark.parametrize("model", EVERY_KIND)
def test_tool_result_round_trip(client: anthropic.Anthropic, model: str) -> None:
    question = {"role": "user", "content": "What's the weather in Lisbon?"}
    first = client.messages.create(
        model=model,
        max_tokens=300,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=[question],
    )
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.input["city"]
    second = client.messages.create(
        model=model,
        max_tokens=300,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "21C and sunny"},
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text


def test_errors_raise_the_sdk_exceptions(demo: Demo, client: anthropic.Anthropic) -> None:
    bad = anthropic.Anthropic(base_url=demo.root_url, api_key="sy-wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.body["error"]["type"] == "authentication_error"

    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.body["error"]["type"] == "not_found_error"

    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}],
        )
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0].source.url" in e.value.body["error"]["message"]


@pytest.mark.parametrize(
    "model,how",
    [("anthropic-claude-haiku", "exact"), ("gpt-4o-mini", "estimated"), ("gemini-flash", "estimated")],
)
def test_count_tokens(client: anthropic.Anthropic, model: str, how: str) -> None:
    request = dict(
        model=model,
        system="You are terse.",
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Lisbon?"}],
    )
    counted = client.messages.count_tokens(**request)
    assert counted.input_tokens > 0
    raw = client.messages.with_raw_response.count_tokens(**request)
    assert raw.headers.get("x-switchyard-token-count") == how
    assert raw.parse().input_tokens == counted.input_tokens
    if how == "exact":
        # The count is what the same prompt is billed for.
        msg = client.messages.create(max_tokens=20, **request)
        assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == counted.input_tokens


def test_count_tokens_errors_raise_the_sdk_exceptions(demo: Demo, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model=MODEL, messages=[])
    stranger = anthropic.Anthropic(base_url=demo.root_url, api_key="sy-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        stranger.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
