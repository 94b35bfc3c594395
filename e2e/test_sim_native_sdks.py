"""The official native SDKs straight against `switchyard sim`: Anthropic (`anthropic`),
AWS Bedrock Runtime (`boto3`, SigV4-signed with the simulator's default test credentials)
and Google Gemini / Vertex AI (`google-genai`); plus the OpenAI SDK on the Mistral route.
Proof that the simulator speaks the native protocols, so gateway tests against it mean
something.

Vertex AI: the SDK wants Google credentials, so the test hands it
`google.oauth2.credentials.Credentials(token=SIM_KEY)`, a static access token that needs
no refresh; the SDK sends it as `Authorization: Bearer SIM_KEY`, which the simulator
(started with `--api-key SIM_KEY`) accepts.
"""

from __future__ import annotations

import json

import anthropic
import boto3
import google.oauth2.credentials
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from openai import OpenAI

from conftest import SIM_KEY, Sim

CLAUDE = "claude-haiku-4-5"
# A Bedrock model id with a ':' (percent-encoded in the path, double-encoded when signed).
BEDROCK_MODEL = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
GEMINI = "gemini-2.5-flash"
# The simulator's default AWS test credentials (SimOptions defaults).
AWS_ACCESS_KEY_ID = "AKIDSIMULATOR"
AWS_SECRET_ACCESS_KEY = "sim-secret-key"

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}


# ---------------------------------------------------------------------------------------
# Anthropic


def claude(sim: Sim, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key=SIM_KEY, max_retries=0, timeout=30, **kw)


CLAUDE_TOOL = {"name": "get_weather", "description": "Weather for a city.", "input_schema": WEATHER_SCHEMA}


def test_anthropic_messages_create(sim: Sim):
    msg = claude(sim).messages.create(
        model=CLAUDE,
        max_tokens=200,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say something nice."}],
    )
    assert msg.id.startswith("msg_")
    assert msg.type == "message" and msg.role == "assistant" and msg.model == CLAUDE
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and msg.content[0].text.endswith(".")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert msg.usage.cache_read_input_tokens == 0
    recorded = sim.control.requests()[-1]
    headers = dict(recorded["headers"])
    assert recorded["path"] == "/v1/messages"
    # Older SDKs send `x-api-key`, newer ones `Authorization: Bearer`; both are accepted.
    assert headers.get("x-api-key") == SIM_KEY or headers.get("authorization") == f"Bearer {SIM_KEY}"
    assert headers["anthropic-version"]


def test_anthropic_stream_helper_and_raw_stream(sim: Sim):
    client = claude(sim)
    request = dict(model=CLAUDE, max_tokens=300, messages=[{"role": "user", "content": "Tell me a story."}])
    plain = client.messages.create(**request)
    with client.messages.stream(**request) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == plain.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens

    kinds = [event.type for event in client.messages.create(**request, stream=True)]
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}  # the SDK drops `ping`


def test_anthropic_tool_use_round_trip(sim: Sim):
    client = claude(sim)
    question = {"role": "user", "content": "What is the weather in Paris? Use get_weather."}
    msg = client.messages.create(model=CLAUDE, max_tokens=300, tools=[CLAUDE_TOOL], messages=[question])
    assert msg.stop_reason == "tool_use"
    [call] = [b for b in msg.content if b.type == "tool_use"]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert isinstance(call.input["city"], str) and call.input["unit"] in ("celsius", "fahrenheit")

    with client.messages.stream(
        model=CLAUDE,
        max_tokens=300,
        tools=[CLAUDE_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Anything."}],
    ) as stream:
        final = stream.get_final_message()
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    assert streamed.name == "get_weather" and set(streamed.input) == {"city", "unit"}

    answer = client.messages.create(
        model=CLAUDE,
        max_tokens=300,
        tools=[CLAUDE_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": msg.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}]},
        ],
    )
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"


def test_anthropic_errors(sim: Sim):
    sim.control.set_fault(model=CLAUDE, kind="error", status=529, count=1)
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude(sim).messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 529
    assert raised.value.body["error"]["type"] == "overloaded_error"

    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=sim.url, api_key="wrong", max_retries=0).messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        claude(sim).messages.create(model=CLAUDE, max_tokens=10, messages=[])

    # An error after the stream started arrives as `event: error`; the SDK raises on it.
    sim.control.set_fault(kind="error", status=529, cut_after_chunks=2, count=1)
    with pytest.raises(anthropic.APIStatusError) as raised:
        with claude(sim).messages.stream(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            for _ in stream:
                pass
    assert "Overloaded" in str(raised.value)


# ---------------------------------------------------------------------------------------
# AWS Bedrock Runtime (boto3)


def bedrock(sim: Sim, secret: str = AWS_SECRET_ACCESS_KEY, endpoint: str | None = None):
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=endpoint or sim.url,
        region_name="us-east-1",
        aws_access_key_id=AWS_ACCESS_KEY_ID,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=30),
    )


BEDROCK_TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Weather for a city.",
                "inputSchema": {"json": WEATHER_SCHEMA},
            }
        }
    ]
}


def user_turn(text: str) -> dict:
    return {"role": "user", "content": [{"text": text}]}


def test_bedrock_converse(sim: Sim):
    r = bedrock(sim).converse(
        modelId=BEDROCK_MODEL,
        messages=[user_turn("Say something nice.")],
        system=[{"text": "You are terse."}],
        inferenceConfig={"maxTokens": 200, "temperature": 0.5},
    )
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert r["stopReason"] == "end_turn"
    assert r["output"]["message"]["role"] == "assistant"
    assert r["output"]["message"]["content"][0]["text"].endswith(".")
    usage = r["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    recorded = sim.control.requests()[-1]
    assert recorded["path"] == "/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"
    assert dict(recorded["headers"])["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDSIMULATOR/")


def test_bedrock_converse_stream(sim: Sim):
    client = bedrock(sim)
    request = dict(modelId=BEDROCK_MODEL, messages=[user_turn("Tell me a story.")])
    plain = client.converse(**request)
    events = list(client.converse_stream(**request)["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart"
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert set(kinds[1:-3]) == {"contentBlockDelta"}
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == plain["output"]["message"]["content"][0]["text"]
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"] == plain["usage"]


def test_bedrock_tool_use(sim: Sim):
    client = bedrock(sim)
    question = user_turn("Weather in Oslo? Use get_weather.")
    r = client.converse(modelId=BEDROCK_MODEL, messages=[question], toolConfig=BEDROCK_TOOLS)
    assert r["stopReason"] == "tool_use"
    [tool_use] = [b["toolUse"] for b in r["output"]["message"]["content"] if "toolUse" in b]
    assert tool_use["name"] == "get_weather" and set(tool_use["input"]) == {"city", "unit"}

    forced = dict(BEDROCK_TOOLS, toolChoice={"tool": {"name": "get_weather"}})
    events = list(
        client.converse_stream(modelId=BEDROCK_MODEL, messages=[user_turn("Anything.")], toolConfig=forced)["stream"]
    )
    [start] = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert start["start"]["toolUse"]["name"] == "get_weather"
    fragments = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "contentBlockDelta" in e and "toolUse" in e["contentBlockDelta"]["delta"]
    ]
    assert set(json.loads("".join(fragments))) == {"city", "unit"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"

    answer = client.converse(
        modelId=BEDROCK_MODEL,
        toolConfig=BEDROCK_TOOLS,
        messages=[
            question,
            r["output"]["message"],
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": tool_use["toolUseId"], "content": [{"json": {"temp": 3}}]}}],
            },
        ],
    )
    assert answer["stopReason"] == "end_turn"


def test_bedrock_signature_and_faults(sim: Sim):
    with pytest.raises(ClientError) as raised:
        bedrock(sim, secret="not-the-secret").converse(modelId=BEDROCK_MODEL, messages=[user_turn("x")])
    assert raised.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "signature we calculated does not match" in raised.value.response["Error"]["Message"]

    # Signing covers the instance prefix of the endpoint URL.
    primary = bedrock(sim, endpoint=f"{sim.url}/primary")
    assert primary.converse(modelId=BEDROCK_MODEL, messages=[user_turn("x")])["stopReason"] == "end_turn"

    sim.control.set_fault(instance="primary", model=BEDROCK_MODEL, kind="error", status=429, count=1)
    with pytest.raises(ClientError) as raised:
        primary.converse(modelId=BEDROCK_MODEL, messages=[user_turn("x")])
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429

    sim.control.set_fault(kind="error", error_type="ModelNotReadyException", count=1)
    with pytest.raises(ClientError) as raised:
        bedrock(sim).converse(modelId=BEDROCK_MODEL, messages=[user_turn("x")])
    assert raised.value.response["Error"]["Code"] == "ModelNotReadyException"

    with pytest.raises(ClientError) as raised:
        bedrock(sim).converse(modelId=BEDROCK_MODEL, messages=[{"role": "assistant", "content": [{"text": "x"}]}])
    assert raised.value.response["Error"]["Code"] == "ValidationException"

    # An exception inside a started stream.
    sim.control.set_fault(kind="error", status=429, cut_after_chunks=2, count=1)
    stream = bedrock(sim).converse_stream(modelId=BEDROCK_MODEL, messages=[user_turn("x")])["stream"]
    with pytest.raises(EventStreamError) as raised:
        for _ in stream:
            pass
    assert raised.value.response["Error"]["Code"] == "throttlingException"


# ---------------------------------------------------------------------------------------
# Google Gemini API and Vertex AI (google-genai)


def gemini(sim: Sim) -> genai.Client:
    return genai.Client(api_key=SIM_KEY, http_options={"base_url": sim.url, "timeout": 30_000})


WEATHER_DECLARATION = types.FunctionDeclaration(
    name="get_weather",
    description="Weather for a city.",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "city": types.Schema(type=types.Type.STRING),
            "unit": types.Schema(type=types.Type.STRING, enum=["celsius", "fahrenheit"]),
        },
        required=["city", "unit"],
    ),
)


def test_gemini_generate_content(sim: Sim):
    client = gemini(sim)  # keep a reference: a collected client closes its connection pool
    r = client.models.generate_content(
        model=GEMINI,
        contents="Say something nice.",
        config=types.GenerateContentConfig(system_instruction="You are terse.", max_output_tokens=200),
    )
    assert r.text.endswith(".")
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    usage = r.usage_metadata
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    recorded = sim.control.requests()[-1]
    assert recorded["path"].endswith(f"/models/{GEMINI}:generateContent")
    assert dict(recorded["headers"])["x-goog-api-key"] == SIM_KEY


def test_gemini_stream_and_function_call(sim: Sim):
    client = gemini(sim)
    plain = client.models.generate_content(model=GEMINI, contents="Tell me a story.")
    chunks = list(client.models.generate_content_stream(model=GEMINI, contents="Tell me a story."))
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == plain.text
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.total_token_count == plain.usage_metadata.total_token_count
    assert sim.control.requests()[-1]["query"] == "alt=sse"

    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER_DECLARATION])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    calls = [
        call
        for chunk in client.models.generate_content_stream(model=GEMINI, contents="Weather in Lima?", config=config)
        for call in (chunk.function_calls or [])
    ]
    assert [c.name for c in calls] == ["get_weather"]
    assert set(calls[0].args) == {"city", "unit"}

    answer = client.models.generate_content(
        model=GEMINI,
        config=config.model_copy(update={"tool_config": None}),
        contents=[
            types.Content(role="user", parts=[types.Part(text="Weather in Lima?")]),
            types.Content(role="model", parts=[types.Part(function_call=calls[0])]),
            types.Content(
                role="user",
                parts=[types.Part.from_function_response(name="get_weather", response={"output": "warm"})],
            ),
        ],
    )
    assert answer.text and not answer.function_calls


def test_gemini_errors_and_blocked_prompt(sim: Sim):
    client = gemini(sim)
    sim.control.set_fault(model=GEMINI, kind="error", status=429, count=1)
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model=GEMINI, contents="x")
    assert raised.value.code == 429 and raised.value.status == "RESOURCE_EXHAUSTED"

    wrong = genai.Client(api_key="wrong-key", http_options={"base_url": sim.url})
    with pytest.raises(genai_errors.ClientError) as raised:
        wrong.models.generate_content(model=GEMINI, contents="x")
    assert raised.value.code == 400

    # A mid-stream error (raw JSON after two chunks) raises from the iteration.
    sim.control.set_fault(kind="error", status=503, cut_after_chunks=2, count=1)
    with pytest.raises(genai_errors.ServerError) as raised:
        for _ in client.models.generate_content_stream(model=GEMINI, contents="x"):
            pass
    assert raised.value.code == 503 and raised.value.status == "UNAVAILABLE"

    r = client.models.generate_content(model=GEMINI, contents="[[blocked]] something")
    assert not r.candidates
    assert r.prompt_feedback.block_reason == types.BlockedReason.SAFETY


def test_vertex_ai(sim: Sim):
    client = genai.Client(
        vertexai=True,
        project="sim-project",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token=SIM_KEY),
        http_options={"base_url": sim.url, "timeout": 30_000},
    )
    r = client.models.generate_content(model=GEMINI, contents="Say something nice.")
    assert r.text.endswith(".")
    chunks = list(client.models.generate_content_stream(model=GEMINI, contents="Say something nice."))
    assert "".join(c.text for c in chunks) == r.text
    recorded = sim.control.requests()
    assert recorded[0]["path"] == (
        f"/v1beta1/projects/sim-project/locations/us-central1/publishers/google/models/{GEMINI}:generateContent"
    )
    assert dict(recorded[0]["headers"])["authorization"] == f"Bearer {SIM_KEY}"


# ---------------------------------------------------------------------------------------
# Mistral (OpenAI-shaped; the OpenAI SDK with Mistral's base URL)


def test_mistral_route_with_openai_sdk(sim: Sim):
    client = OpenAI(base_url=f"{sim.url}/mistral/v1", api_key=SIM_KEY, max_retries=0, timeout=30)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
    r = client.chat.completions.create(
        model="mistral-large-latest",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[tool],
        tool_choice="any",
    )
    [call] = r.choices[0].message.tool_calls
    assert len(call.id) == 9 and call.id.isalnum()
    assert r.choices[0].finish_reason == "tool_calls"
    stream = client.chat.completions.create(
        model="mistral-small-latest", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------
# Reasoning models: signed thinking state that must come back in a tool loop

CLAUDE_THINKING = {"type": "enabled", "budget_tokens": 2048}


def test_anthropic_thinking_tool_loop_needs_its_signed_block(sim: Sim):
    client = claude(sim)
    question = {"role": "user", "content": "What is the weather in Paris? Use get_weather."}
    kw = {"model": CLAUDE, "max_tokens": 4096, "tools": [CLAUDE_TOOL], "thinking": CLAUDE_THINKING}
    msg = client.messages.create(messages=[question], **kw)
    assert msg.stop_reason == "tool_use"
    assert msg.content[0].type == "thinking" and msg.content[0].signature and msg.content[0].thinking
    [call] = [b for b in msg.content if b.type == "tool_use"]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}]}

    # Streamed, the SDK assembles the same signed block from thinking and signature deltas.
    with client.messages.stream(messages=[question], **kw) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == msg.content[0].signature
    assert final.content[0].thinking == msg.content[0].thinking

    # Second turn with the blocks sent back as received: the loop ends.
    answer = client.messages.create(
        messages=[question, {"role": "assistant", "content": final.content}, result], **kw
    )
    assert answer.stop_reason == "end_turn"
    assert [b.type for b in answer.content] == ["thinking", "text"]

    # Without the thinking block: the documented 400.
    stripped = [b for b in msg.content if b.type != "thinking"]
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(messages=[question, {"role": "assistant", "content": stripped}, result], **kw)
    assert "Expected `thinking` or `redacted_thinking`, but found `text`" in str(raised.value)

    # Forced tool choice is refused with thinking.
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(messages=[question], tool_choice={"type": "any"}, **kw)
    assert "Thinking may not be enabled when tool_choice forces tool use." in str(raised.value)


def test_gemini3_tool_loop_needs_its_thought_signature(sim: Sim):
    client = gemini(sim)
    model = "gemini-3-pro-preview"
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER_DECLARATION])],
        thinking_config=types.ThinkingConfig(thinking_level="LOW", include_thoughts=True),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    question = types.Content(role="user", parts=[types.Part(text="Weather in Lima? Use get_weather.")])
    first = client.models.generate_content(model=model, contents=[question], config=config)
    content = first.candidates[0].content
    [call_part] = [p for p in content.parts if p.function_call]
    assert call_part.thought_signature  # bytes, decoded by the SDK
    assert first.usage_metadata.thoughts_token_count > 0
    response = types.Content(
        role="user", parts=[types.Part.from_function_response(name="get_weather", response={"output": "warm"})]
    )

    # Streamed too, the call part carries its signature.
    streamed = [
        p
        for chunk in client.models.generate_content_stream(model=model, contents=[question], config=config)
        for p in (chunk.candidates[0].content.parts or [])
        if p.function_call
    ]
    assert streamed and streamed[0].thought_signature == call_part.thought_signature

    # Second turn with the model's content as received: it answers.
    answer = client.models.generate_content(model=model, contents=[question, content, response], config=config)
    assert answer.text and not answer.function_calls

    # Signature stripped: Google's 400.
    bare = types.Content(
        role="model", parts=[p.model_copy(update={"thought_signature": None}) for p in content.parts]
    )
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model=model, contents=[question, bare, response], config=config)
    assert raised.value.code == 400
    assert "Function call is missing a thought_signature in functionCall parts" in str(raised.value)

    # The documented skip value is accepted in its place.
    skipped = types.Content(
        role="model",
        parts=[
            p.model_copy(update={"thought_signature": b"skip_thought_signature_validator"}) if p.function_call else p
            for p in content.parts
        ],
    )
    ok = client.models.generate_content(model=model, contents=[question, skipped, response], config=config)
    assert ok.text
