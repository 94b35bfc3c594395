#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the providers' golden fixtures, in each target's
input format (see crates/switchyard/src/fuzzing.rs), so the fuzzers start from
well-formed streams, requests and responses. Run by scripts/fuzz; idempotent."""

import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
FIXTURES = ROOT.parent / "crates/switchyard/src/providers/fixtures"
KINDS = ["openai", "azure", "anthropic", "bedrock", "gemini", "vertex", "mistral"]
BEDROCK_EVENTS = ["messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop",
                  "messageStop", "metadata", "throttlingException", "modelStreamErrorException",
                  "validationException", "internalServerException", "serviceUnavailableException"]
CHUNKING = bytes([3, 1, 7, 2])  # the harness's chunk-size prefix: 3 sizes, 1, 7, 2


def put(target: str, data: bytes) -> None:
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


for f in sorted(FIXTURES.glob("*/*.json")):
    case = json.loads(f.read_text())
    kind = KINDS.index(f.parent.name)
    native = case.get("native")
    if f.name.startswith("request_"):
        put("chat_translators", json.dumps(case["openai"]).encode())
    elif f.name.startswith("response_"):
        put("response_translators", bytes([kind]) + json.dumps(native).encode())
    elif f.name.startswith("stream_") and isinstance(native, str):
        put("stream_decoders", bytes([kind]) + CHUNKING + native.encode())
        put("sse_decoder", CHUNKING + native.encode())
    elif f.name.startswith("stream_") and isinstance(native, list):
        records = []
        for item in native:
            h = item["headers"]
            name = h.get(":event-type") or h.get(":exception-type") or ""
            if name not in BEDROCK_EVENTS:
                continue
            payload = item["payload"]
            body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            records.append(bytes([BEDROCK_EVENTS.index(name)]) + body)
        put("bedrock_events", b"\x00".join(records))
# The OpenAI adapter's streams: an SSE stream of OpenAI chunks.
openai_stream = (
    'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}\n\n'
    'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
    "data: [DONE]\n\n"
).encode()
put("stream_decoders", bytes([0]) + CHUNKING + openai_stream)
put("stream_decoders", bytes([1]) + CHUNKING + openai_stream)
put("sse_decoder", CHUNKING + openai_stream)
# Anthropic Messages requests (the chat target parses both shapes).
put("chat_translators", json.dumps({"model": "m", "max_tokens": 64, "system": "Be brief.", "messages": [
    {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                 {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Oslo"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "4C"}]}],
    "tools": [{"name": "w", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"}}).encode())
