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
# Odd values where well-formed ones were: every fixture's documents once more with a
# few values swapped for huge, negative or fractional numbers, other scripts' digits
# and other JSON types (the harnesses swap one more value themselves).
ODD = [1e300, -1, 1.5, 99999999999999999999, "\u0661\u0662\u0663", "DE1\u066012345678901234567",
       None, True, [], {}, [1, "x", None]]


def retyped(doc, k):
    """`doc` with its values replaced, depth first, from `ODD` in turn (every value,
    starting at the k-th)."""
    n = [k]

    def walk(v):
        n[0] += 1
        if isinstance(v, dict):
            return {key: walk(x) for key, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if n[0] % 3 == 0:
            return ODD[n[0] % len(ODD)]
        return v
    return walk(doc)


for f in sorted(FIXTURES.glob("*/*.json")):
    case = json.loads(f.read_text())
    kind = KINDS.index(f.parent.name)
    native = case.get("native")
    for k in range(3):
        if f.name.startswith("request_"):
            put("chat_translators", json.dumps(retyped(case["openai"], k)).encode())
        elif f.name.startswith("response_"):
            put("response_translators", bytes([kind]) + json.dumps(retyped(native, k)).encode())
        elif f.name.startswith("stream_") and isinstance(native, str):
            lines = []
            for line in native.split("\n"):
                if line.startswith("data: {"):
                    try:
                        line = "data: " + json.dumps(retyped(json.loads(line[6:]), k))
                    except ValueError:
                        pass
                lines.append(line)
            put("stream_decoders", bytes([kind]) + CHUNKING + "\n".join(lines).encode())
# The PII redactor: the corpus lines, and other scripts' digits in PII shapes.
corpus = ROOT.parent / "crates/switchyard/src/governance/pii_corpus.tsv"
for line in corpus.read_text().splitlines()[:200]:
    if line and not line.startswith("#") and "\t" in line:
        put("pii_redactor", line.split("\t", 1)[1].encode())
for text in ["account DE1\u066012345678901234567 ok", "SSN: \u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
             "call +\u0664\u0664 \u0662\u0660 7946 0958", "card 4111\u0661111111111111"]:
    put("pii_redactor", text.encode())
# Provider durations, well-formed and odd.
for text in ["7", "1.5", "6m0s", "20ms", "1h2m3.5s", "2.5s", "1e300", "99999999999999999999", "-3", "NaN",
             "\u0663s", "inf"]:
    put("durations", text.encode())
