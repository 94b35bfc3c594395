"""HTTP-level behaviour of the gateway that SDKs rely on without saying so."""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import Demo


def read_response(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length body: (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a complete response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the body")
        body += chunk
    return status, headers, body


def test_connection_stays_usable_after_rejected_post(demo: Demo):
    key = "sy-wrong-key"
    port = int(demo.root_url.rsplit(":", 1)[1])
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Headers and body in two writes, as HTTP clients often send them.
        sock.sendall(head)
        time.sleep(0.1)
        sock.sendall(body)
        status, headers, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 401"), status
        if headers.get("connection", "").lower() == "close":
            return  # the server said it would close: a client will not reuse it
        # Otherwise the connection is kept alive and must answer the next request.
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _, _ = read_response(sock)
        except OSError as e:
            pytest.fail(f"the 401 kept the connection alive (no `connection: close`), then it was closed: {e!r}")
        assert status.startswith(b"HTTP/1.1 200"), status
