"""A lax OpenAI-compatible server for the end-to-end tests: it answers the way
several self-hosted servers do, not the way OpenAI does. The behaviour is chosen by the
model name it is asked for:

- `bare`: answers without id, object, created, model, usage, index, finish reason,
  logprobs or refusal, with `reasoning_content` and `stop_reason`; streams with
  `: keep-alive` comments, `data:` without a space, CRLF line ends, a finish-reason
  chunk without content, no usage (whatever `stream_options` says) and no `[DONE]`;
- `tools`: a tool call, without usage (plain and streamed);
- `bare-cut`: a stream of content that ends cleanly without a finish reason or `[DONE]`;
- `anon`: two tool calls without `id` or `type` (streamed: also without `index`, in
  chunks without id, object, created, model, choice index or finish reason);
- `partial`: usage with `prompt_tokens` only (plain and streamed);
- `detail`: 400 with FastAPI's `{"detail": "..."}`;
- `html-502`: a proxy's HTML error page naming an internal host.

It runs in a thread of the test process, on a free loopback port.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = ["", "Hello from", " a lax server."]
REASONING = "The user greets me."
TOOL_ARGS = '{"city":"Paris","unit":"celsius"}'


def chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "lax-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "lax-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def sse(chunks: list[dict], done: bool, crlf: bool) -> bytes:
    nl = "\r\n" if crlf else "\n"
    out = [f": keep-alive{nl}{nl}"]
    for c in chunks:
        out.append(f"data:{json.dumps(c)}{nl}{nl}")
    if done:
        out.append(f"data: [DONE]{nl}{nl}")
    return "".join(out).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        req = json.loads(self.rfile.read(length) or b"{}")
        self.server.seen.append(req)  # type: ignore[attr-defined]
        model, stream = req.get("model"), bool(req.get("stream"))
        if model == "bare" and not stream:
            body = {"choices": [{"message": {"content": "".join(TEXT), "reasoning_content": REASONING},
                                 "stop_reason": None}]}
            self.reply(200, "application/json", json.dumps(body).encode())
        elif model == "bare":
            last = chunk({}, "stop")
            last["choices"][0]["stop_reason"] = None
            chunks = [chunk({"role": "assistant", "content": TEXT[0]}),
                      chunk({"content": TEXT[1], "reasoning_content": REASONING}),
                      chunk({"content": TEXT[2]}), last]
            self.reply(200, "text/event-stream", sse(chunks, done=False, crlf=True))
        elif model == "tools" and not stream:
            body = {"id": "lax-t", "object": "chat.completion", "created": 1700000000, "model": "lax-model",
                    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                        "role": "assistant", "content": None, "tool_calls": [{
                            "id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": TOOL_ARGS}}]}}]}
            self.reply(200, "application/json", json.dumps(body).encode())
        elif model == "tools":
            chunks = [chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                                  "function": {"name": "get_weather",
                                                                               "arguments": ""}}]}),
                      chunk({"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGS[:10]}}]}),
                      chunk({"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGS[10:]}}]}),
                      chunk({}, "tool_calls")]
            self.reply(200, "text/event-stream", sse(chunks, done=True, crlf=False))
        elif model == "bare-cut" and stream:
            chunks = [chunk({"role": "assistant", "content": TEXT[1]}), chunk({"content": TEXT[2]})]
            self.reply(200, "text/event-stream", sse(chunks, done=False, crlf=False))
        elif model == "anon" and not stream:
            body = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
                {"function": {"name": "get_weather", "arguments": TOOL_ARGS}},
                {"function": {"name": "get_time", "arguments": "{}"}}]}}]}
            self.reply(200, "application/json", json.dumps(body).encode())
        elif model == "anon":
            chunks = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]},
                      {"choices": [{"delta": {"tool_calls": [
                          {"function": {"name": "get_weather", "arguments": TOOL_ARGS}},
                          {"function": {"name": "get_time", "arguments": "{}"}}]}}]},
                      {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}]
            self.reply(200, "text/event-stream", sse(chunks, done=True, crlf=False))
        elif model == "partial" and not stream:
            body = {"choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "".join(TEXT)}}],
                    "usage": {"prompt_tokens": 11}}
            self.reply(200, "application/json", json.dumps(body).encode())
        elif model == "partial":
            usage = chunk({})
            usage["choices"], usage["usage"] = [], {"prompt_tokens": 11}
            chunks = [chunk({"role": "assistant", "content": "".join(TEXT)}), chunk({}, "stop"), usage]
            self.reply(200, "text/event-stream", sse(chunks, done=True, crlf=False))
        elif model == "detail":
            self.reply(400, "application/json",
                       b'{"detail":"max_tokens must be at most 4096 on worker vllm-2.gpu.internal"}')
        elif model == "html-502":
            self.reply(502, "text/html",
                       b"<html><head><title>502 Bad Gateway</title></head>"
                       b"<body><center>nginx at lb-7.corp.internal</center></body></html>")
        else:
            self.reply(404, "application/json", b'{"detail":"Not Found"}')


class LaxUpstream:
    """The server, started on a free port; `base_url` ends in /v1; `seen` holds the
    request bodies it received."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.seen = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def seen(self) -> list[dict]:
        return self.server.seen  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
