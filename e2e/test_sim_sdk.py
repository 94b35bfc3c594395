"""The official OpenAI Python SDK straight against `switchyard sim`, in the OpenAI, Azure
classic (deployments + api-version) and Azure v1 (`/openai/v1/`) dialects: proof that the
simulator speaks the real protocols, so gateway tests against it mean something."""

from __future__ import annotations

import json
import math

import openai
import pytest
from openai import AzureOpenAI, OpenAI

from conftest import SIM_KEY, Sim

API_VERSION = "2024-10-21"
DEPLOYMENT = "my-gpt4o-mini-deployment"
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look an order up.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "include_items": {"type": "boolean"},
            },
            "required": ["order_id", "include_items"],
        },
    },
}
HELLO = [{"role": "user", "content": "Say something nice."}]


def openai_client(sim: Sim, **kw) -> OpenAI:
    return OpenAI(base_url=f"{sim.url}/v1", api_key=SIM_KEY, max_retries=0, timeout=30, **kw)


def azure_client(sim: Sim, **kw) -> AzureOpenAI:
    return AzureOpenAI(
        azure_endpoint=sim.url, api_key=SIM_KEY, api_version=API_VERSION, max_retries=0, timeout=30, **kw
    )


def azure_v1_client(sim: Sim) -> OpenAI:
    # Azure's v1 API is used with the plain OpenAI client (as Azure documents it).
    return OpenAI(base_url=f"{sim.url}/openai/v1/", api_key=SIM_KEY, max_retries=0, timeout=30)


def azure_v1_client_api_key_header(sim: Sim) -> OpenAI:
    return OpenAI(
        base_url=f"{sim.url}/openai/v1/",
        api_key="not-used",
        default_headers={"api-key": SIM_KEY},
        max_retries=0,
        timeout=30,
    )


CLIENTS = {
    "openai": (openai_client, "gpt-4o-mini"),
    "azure": (azure_client, DEPLOYMENT),
    "azure-v1": (azure_v1_client, "gpt-4o-mini"),
    "azure-v1-api-key": (azure_v1_client_api_key_header, "gpt-4o-mini"),
}


@pytest.fixture(params=list(CLIENTS))
def dialect(request, sim: Sim):
    make, model = CLIENTS[request.param]
    return request.param, make(sim), model


def test_chat_plain(dialect, sim: Sim):
    name, client, model = dialect
    res = client.chat.completions.create(model=model, messages=HELLO)
    assert res.object == "chat.completion"
    assert res.model == model
    assert res.choices[0].message.role == "assistant"
    assert res.choices[0].message.content.strip()
    assert res.choices[0].finish_reason == "stop"
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens > 0

    (req,) = sim.control.requests("")
    assert req["method"] == "POST"
    headers = dict(req["headers"])
    if name == "azure":
        assert req["path"] == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
        assert f"api-version={API_VERSION}" in req["query"]
        assert headers["api-key"] == SIM_KEY
    elif name.startswith("azure-v1"):
        assert req["path"] == "/openai/v1/chat/completions"
    else:
        assert req["path"] == "/v1/chat/completions"
        assert headers["authorization"] == f"Bearer {SIM_KEY}"
    assert req["body"]["messages"] == HELLO


def test_chat_stream(dialect):
    _, client, model = dialect
    chunks = list(
        client.chat.completions.create(
            model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = [c for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1] is usage[0] and chunks[-1].choices == []
    assert usage[0].usage.total_tokens == usage[0].usage.prompt_tokens + usage[0].usage.completion_tokens
    plain = client.chat.completions.create(model=model, messages=HELLO)
    assert plain.choices[0].message.content == text


def test_chat_stream_without_usage(dialect):
    name, client, model = dialect
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, stream=True))
    assert all(c.usage is None for c in chunks)
    if name == "openai":
        # Azure sends a first chunk with empty choices (prompt filter results); OpenAI never.
        assert all(c.choices for c in chunks)


def test_forced_tool_call_plain_and_streamed(dialect):
    _, client, model = dialect
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": "Where is my parcel?"}],
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "lookup_order"}},
    )
    res = client.chat.completions.create(**kwargs)
    assert res.choices[0].finish_reason == "tool_calls"
    (call,) = res.choices[0].message.tool_calls
    assert call.function.name == "lookup_order"
    args = json.loads(call.function.arguments)
    assert isinstance(args["order_id"], str) and isinstance(args["include_items"], bool)

    calls: dict[int, dict] = {}
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "arguments": "", "id": None})
                entry["id"] = tc.id or entry["id"]
                if tc.function:
                    entry["name"] += tc.function.name or ""
                    entry["arguments"] += tc.function.arguments or ""
    assert list(calls) == [0]
    assert calls[0]["name"] == "lookup_order" and calls[0]["id"] == call.id
    assert json.loads(calls[0]["arguments"]) == args


def test_embeddings(dialect, sim: Sim):
    name, client, _ = dialect
    model = DEPLOYMENT if name == "azure" else "text-embedding-3-small"
    res = client.embeddings.create(model=model, input=["alpha", "beta"])
    # The SDK's default call asks for base64 and decodes it itself.
    (req,) = sim.control.requests("")
    assert req["body"].get("encoding_format") == "base64", req["body"]
    assert len(res.data) == 2
    a, b = (d.embedding for d in res.data)
    assert len(a) == len(b) > 0
    assert abs(math.sqrt(sum(x * x for x in a)) - 1) < 1e-3
    flt = client.embeddings.create(model=model, input=["alpha", "beta"], encoding_format="float")
    assert max(abs(p - q) for p, q in zip(a, flt.data[0].embedding)) < 1e-6


def test_models(dialect):
    _, client, _ = dialect
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "text-embedding-3-small"} <= ids
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_bad_key(sim: Sim):
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{sim.url}/v1", api_key="sk-wrong", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO
        )
    with pytest.raises(openai.AuthenticationError):
        AzureOpenAI(
            azure_endpoint=sim.url, api_key="wrong", api_version=API_VERSION, max_retries=0
        ).chat.completions.create(model=DEPLOYMENT, messages=HELLO)


def test_bad_request_names_param(sim: Sim):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client(sim).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": 42}])
    assert "messages[0]" in e.value.body["param"]


def test_azure_classic_needs_api_version(sim: Sim):
    # Without api-version Azure answers 404 and with a malformed one 400; the SDK always
    # sends it, so this goes around the SDK.
    from conftest import http

    status, _ = http("POST", f"{sim.url}/openai/deployments/{DEPLOYMENT}/chat/completions", {"messages": HELLO})
    assert status == 404


def test_instance_prefix(sim: Sim):
    client = OpenAI(base_url=f"{sim.url}/primary/v1", api_key=SIM_KEY, max_retries=0)
    sim.control.set_fault(instance="", model="*", kind="error", status=500)
    # The default instance fails; the prefixed one is independent.
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    assert [r["path"] for r in sim.control.requests("primary")] == ["/primary/v1/chat/completions"]
    assert sim.control.requests("") == []


@pytest.mark.parametrize(
    "status,exc",
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("which", ["openai", "azure"])
def test_error_faults_raise_matching_exception(sim: Sim, which: str, status: int, exc):
    make, model = CLIENTS[which]
    client = make(sim)
    sim.control.set_fault(instance="", model=model, kind="error", status=status, count=1)
    with pytest.raises(exc) as e:
        client.chat.completions.create(model=model, messages=HELLO)
    assert e.value.status_code == status
    assert isinstance(e.value.body, dict) and e.value.body.get("message")
    if status == 429:
        assert e.value.response.headers.get("retry-after")
    # count=1: the next call succeeds.
    assert client.chat.completions.create(model=model, messages=HELLO).choices


def test_rate_limit_retry_after_is_honoured_by_sdk_retries(sim: Sim):
    # The SDK retries a 429 after `retry-after`; one fault then success = one retry.
    sim.control.set_fault(instance="", model="gpt-4o-mini", kind="error", status=429, retry_after_s=0, count=1)
    client = OpenAI(base_url=f"{sim.url}/v1", api_key=SIM_KEY, max_retries=2, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert raw.retries_taken == 1
    assert len(sim.control.requests("")) == 2


def test_latency_and_chunking(sim: Sim):
    sim.control.set_latency(instance="", model="gpt-4o-mini", ttft_ms=0, chunk_delay_ms=0, chunks=5)
    chunks = list(openai_client(sim).chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 5


def test_stream_cut_fault_surfaces_as_error(sim: Sim):
    sim.control.set_fault(instance="", model="gpt-4o-mini", kind="cut", cut_after_chunks=2, count=1)
    # The body ends without [DONE] and without a clean close: a transport error (the SDK
    # wraps it in APIConnectionError, or lets the HTTP library's error through mid-stream).
    with pytest.raises(Exception) as e:
        list(openai_client(sim).chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    assert isinstance(e.value, openai.APIConnectionError) or type(e.value).__name__ in (
        "RemoteProtocolError",
        "ReadError",
    ), repr(e.value)
    # count=1: the next stream is whole.
    chunks = list(openai_client(sim).chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
