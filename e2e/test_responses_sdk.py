"""The Responses API (`POST /v1/responses`) with the official `openai` SDK against
`switchyard serve` and `switchyard sim`: create and stream, function tools, the SDK's
tool-loop pattern (`input=previous.output + [function_call_output]`) on every reasoning
provider kind (the simulator refuses a turn whose reasoning state did not come back, as
the providers do), a loop that fails over to another provider kind mid-way, stored
responses (`previous_response_id`, retrieve, delete, input items), and errors naming the field.
OpenAI and Azure deployments get the Responses request natively (the simulator plays the
Responses API for them; its recorded requests show which API each upstream was called
with), every other kind the translation."""

from __future__ import annotations

import json
import sqlite3

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from conftest import REPO_ROOT, start_gateway, start_sim

SCHEMAS = json.loads((REPO_ROOT / "crates/switchyard/tests/fixtures/openai-responses-schemas.json").read_text())

KEY = "sy-e2e-responses-0123456789"
OTHER_KEY = "sy-e2e-responses-other-0000"
NOLOG_KEY = "sy-e2e-responses-nolog-1111"

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def config(port: int, ledger, sim: str) -> str:
    return f"""\
[server]
listen = "127.0.0.1:{port}"
drain_grace_ms = 0

[breaker]
consecutive_failures = 1000
window = 1000

[ledger]
path = {json.dumps(str(ledger))}

[[keys]]
name = "app"
key = "{KEY}"

[[keys]]
name = "other"
key = "{OTHER_KEY}"

[[keys]]
name = "nolog"
key = "{NOLOG_KEY}"
policy = {{ log_content = false }}

[providers.openai]
kind = "openai"
base_url = "{sim}/v1"
api_key = "sk-sim"

[providers.openai-primary]
kind = "openai"
base_url = "{sim}/primary/v1"
api_key = "sk-sim"

[providers.azure-v1]
kind = "azure"
endpoint = "{sim}/azv1"
api_key = "azure-sim-key"

[providers.azure-classic]
kind = "azure"
endpoint = "{sim}/azclassic"
api_version = "2025-04-01-preview"
api_key = "azure-sim-key"

[providers.anthropic]
kind = "anthropic"
base_url = "{sim}"
api_key = "sk-ant-sim"

[providers.bedrock]
kind = "bedrock"
base_url = "{sim}"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[providers.gemini]
kind = "gemini"
base_url = "{sim}"
api_key = "gemini-sim-key"

[providers.vertex]
kind = "vertex"
base_url = "{sim}"
project = "sim-project"
location = "us-central1"
api_key = "vertex-sim-token"

[deployments.mini]
provider = "openai"
model = "gpt-4o-mini"

[deployments.mini-primary]
provider = "openai-primary"
model = "gpt-4o-mini"

[deployments.az-v1]
provider = "azure-v1"
model = "mini-v1"

[deployments.az-classic]
provider = "azure-classic"
model = "mini-classic"

[deployments.o4]
provider = "openai"
model = "o4-mini"

[deployments.g3]
provider = "gemini"
model = "gemini-3-pro-preview"

[deployments.vertex-g3]
provider = "vertex"
model = "gemini-3-flash-preview"

[deployments.claude]
provider = "anthropic"
model = "claude-opus-4-7"

[deployments.bedrock-claude]
provider = "bedrock"
model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

[models.gpt-4o-mini]
deployments = ["mini"]

[models.gemini-3]
deployments = ["g3"]

[models.azure-v1]
deployments = ["az-v1"]

[models.azure-classic]
deployments = ["az-classic"]

[models.o4-mini]
deployments = ["o4"]

[models.openai-then-claude]
deployments = ["mini-primary", "claude"]

[models.vertex-gemini-3]
deployments = ["vertex-g3"]

[models.claude]
deployments = ["claude"]

[models.bedrock-claude]
deployments = ["bedrock-claude"]

[models.claude-then-gemini]
deployments = ["claude", "g3"]

[models.gemini-then-bedrock]
deployments = ["g3", "bedrock-claude"]

[models.claude-then-bedrock]
deployments = ["claude", "bedrock-claude"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, bin_path):
    workdir = tmp_path_factory.mktemp("responses")
    sim = start_sim(workdir)
    ledger = workdir / "ledger.db"
    gw = start_gateway(workdir, lambda port: config(port, ledger, sim.url))
    try:
        yield gw, sim
    finally:
        gw.proc.stop()
        sim.proc.stop()


@pytest.fixture()
def gw(stack):
    gateway, sim = stack
    sim.control.reset()
    yield gateway, sim.control
    sim.control.reset()


def client_for(gw, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=gw[0].base_url, api_key=key, max_retries=0, timeout=30)


def ask(client: OpenAI, stream: bool, **kwargs):
    """One turn: the final Response, plain or through `responses.stream`."""
    if not stream:
        return client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as s:
        kinds = [event.type for event in s]
        final = s.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] == "response.completed", kinds
    return final


def tool_loop(client: OpenAI, model: str, stream: bool, turns: int, effort: str | None = None, between=None):
    """The SDK's loop: previous output back as input, one function_call_output per call."""
    extra = {"reasoning": {"effort": effort}} if effort else {}
    items: list = []
    responses = []
    for turn in range(turns):
        items.append({"role": "user", "content": f"Question {turn}: call get_weather for Paris, please."})
        first = ask(client, stream, model=model, input=items, tools=[WEATHER_TOOL], max_output_tokens=300, **extra)
        calls = [o for o in first.output if o.type == "function_call"]
        assert calls, first
        items += first.output
        for call in calls:
            assert json.loads(call.arguments)["city"]
            items.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 18}'})
        if between:
            between()
        second = ask(client, stream, model=model, input=items, tools=[WEATHER_TOOL], max_output_tokens=300, **extra)
        assert second.status == "completed", second
        assert second.output_text, second
        assert not [o for o in second.output if o.type == "function_call"]
        items += second.output
        responses += [first, second]
    return items, responses


def test_create_plain_text(gw):
    client = client_for(gw)
    res = client.responses.create(model="gpt-4o-mini", input="Say hello.", instructions="Be brief.",
                                  max_output_tokens=100, metadata={"suite": "e2e"})
    assert res.id.startswith("resp_")
    assert res.object == "response"
    assert res.status == "completed"
    assert res.output_text
    assert res.metadata == {"suite": "e2e"}
    assert res.usage.input_tokens > 0 and res.usage.output_tokens > 0
    assert res.usage.total_tokens == res.usage.input_tokens + res.usage.output_tokens
    assert res.usage.input_tokens_details.cached_tokens == 0
    assert res.usage.output_tokens_details.reasoning_tokens == 0
    sent = gw[1].requests("")[-1]
    assert sent["path"] == "/v1/responses"
    body = sent["body"]
    assert body["instructions"] == "Be brief."
    assert body["max_output_tokens"] == 100
    assert body["store"] is False


def test_stream_text_events(gw):
    client = client_for(gw)
    stream = client.responses.create(model="gpt-4o-mini", input="Say hello.", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], kinds
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens > 0


def check(name: str, value: dict) -> None:
    """Validates `value` against OpenAI's schema `name` (jsonschema, not the Rust checker)."""
    root = dict(SCHEMAS, **{"$ref": f"#/components/schemas/{name}"})
    jsonschema.Draft202012Validator(root).validate(value)


def event_schema(kind: str) -> str:
    schemas = SCHEMAS["components"]["schemas"]
    for branch in schemas["ResponseStreamEvent"]["anyOf"]:
        name = branch["$ref"].rsplit("/", 1)[-1]
        if schemas[name]["properties"]["type"]["enum"][0] == kind:
            return name
    raise AssertionError(f"no schema for {kind}")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude", "gemini-3", "bedrock-claude"])
def test_raw_answers_and_events_fit_openai_schema(gw, model: str):
    base, body = gw[0].base_url, {"model": model, "input": "Call get_weather for Paris, please.",
                                  "tools": [WEATHER_TOOL]}
    if model != "gpt-4o-mini":  # a model that does not reason refuses an effort
        body["reasoning"] = {"effort": "low"}
    with httpx.Client(timeout=30) as http:
        res = http.post(f"{base}/responses", json=body, headers={"authorization": f"Bearer {KEY}"})
        assert res.status_code == 200, res.text
        check("Response", res.json())
        res = http.post(f"{base}/responses", json=dict(body, stream=True), headers={"authorization": f"Bearer {KEY}"})
        assert res.status_code == 200
        events = [json.loads(line[len("data: "):]) for line in res.text.splitlines() if line.startswith("data: ")]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        for e in events:
            check(event_schema(e["type"]), e)
        assert events[-1]["type"] == "response.completed"
        res = http.post(f"{base}/responses", json={"model": model, "input": 7},
                        headers={"authorization": f"Bearer {KEY}"})
        assert res.status_code == 400
        check("ErrorResponse", res.json())


def test_structured_output(gw):
    client = client_for(gw)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "lumens": {"type": "integer"}},
              "required": ["name", "lumens"], "additionalProperties": False}
    for model in ["gpt-4o-mini", "claude", "gemini-3"]:
        res = client.responses.create(model=model, input="Describe a lantern.",
                                      text={"format": {"type": "json_schema", "name": "lantern", "schema": schema,
                                                       "strict": True}})
        value = json.loads(res.output_text)
        assert isinstance(value["name"], str) and isinstance(value["lumens"], int), value


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-3", "vertex-gemini-3", "claude", "bedrock-claude"])
def test_tool_loop_on_every_kind(gw, model: str, stream: bool):
    effort = "medium" if "claude" in model else None
    turns = 3 if model in ("gemini-3", "claude") else 2
    items, responses = tool_loop(client_for(gw), model, stream, turns, effort)
    call_ids = [i.call_id for i in items if getattr(i, "type", None) == "function_call"]
    assert len(call_ids) == turns
    if model != "gpt-4o-mini":
        assert all(".sy1." in c for c in call_ids), call_ids
    if "claude" in model:
        reasoning = [o for r in responses for o in r.output if o.type == "reasoning"]
        assert reasoning and reasoning[0].encrypted_content
        assert reasoning[0].summary and reasoning[0].summary[0].text
        assert responses[0].usage.output_tokens_details.reasoning_tokens >= 0
    sent = [r["body"] for r in gw[1].requests("")]
    assert not any(".sy1." in json.dumps(b) for b in sent)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "model,failing",
    [("claude-then-gemini", "claude-opus-4-7"), ("gemini-then-bedrock", "gemini-3-pro-preview"),
     ("claude-then-bedrock", "claude-opus-4-7")],
)
def test_tool_loop_fails_over_to_another_kind(gw, model: str, failing: str, stream: bool):
    fail = lambda: gw[1].set_fault(model=failing, kind="error", status=503)  # noqa: E731
    _, responses = tool_loop(client_for(gw), model, stream, 2, effort="high", between=fail)
    assert len(responses) == 4
    served = [r["path"] for r in gw[1].requests("")]
    assert any("/converse" in p or "gemini-3-pro-preview:" in p for p in served[1:]), served


def test_store_previous_response_retrieve_delete(gw):
    client = client_for(gw)
    first = client.responses.create(model="gemini-3", input="Call get_weather for Paris, please.",
                                    tools=[WEATHER_TOOL])
    assert first.store is True
    call = next(o for o in first.output if o.type == "function_call")
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output[-1].call_id == call.call_id
    second = client.responses.create(model="gemini-3", previous_response_id=first.id, tools=[WEATHER_TOOL],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "18C"}])
    assert second.previous_response_id == first.id
    assert second.output_text
    third = client.responses.create(model="gemini-3", previous_response_id=second.id, input="Thank you!")
    assert third.status == "completed"
    # Another key sees nothing.
    other = client_for(gw, OTHER_KEY)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as e:
        other.responses.create(model="gemini-3", previous_response_id=first.id, input="hi")
    assert e.value.body["param"] == "previous_response_id"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_input_items_list(gw):
    client = client_for(gw)
    first = client.responses.create(model="gemini-3", input="Call get_weather for Paris, please.",
                                    tools=[WEATHER_TOOL])
    call = next(o for o in first.output if o.type == "function_call")
    second = client.responses.create(model="gemini-3", previous_response_id=first.id, tools=[WEATHER_TOOL],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "18C"}])
    # The whole context of the second turn, newest first: its input, the first turn's
    # output, the first turn's input.
    page = client.responses.input_items.list(second.id)
    items = page.data
    assert items[0].type == "function_call_output", items
    assert items[0].call_id == call.call_id and items[0].output == "18C"
    assert items[-1].type == "message" and items[-1].role == "user"
    assert items[-1].content[0].text == "Call get_weather for Paris, please."
    assert any(i.type == "function_call" and i.call_id == call.call_id for i in items), items
    ids = [i.id for i in items]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert page.has_more is False and page.first_id == ids[0] and page.last_id == ids[-1]
    # The SDK pages through with `after`, one item at a time, in both orders.
    assert [i.id for i in client.responses.input_items.list(second.id, limit=1)] == ids
    assert [i.id for i in client.responses.input_items.list(second.id, limit=2, order="asc")] == ids[::-1]
    one = client.responses.input_items.list(second.id, limit=1, order="asc")
    assert [i.id for i in one.data] == [ids[-1]] and one.has_more is True
    nxt = client.responses.input_items.list(second.id, limit=1, order="asc", after=ids[-1])
    assert [i.id for i in nxt.data] == [ids[-2]]
    # `before` (not a parameter of this SDK version) pages back.
    back = client.responses.input_items.list(second.id, order="asc", extra_query={"before": ids[0]})
    assert [i.id for i in back.data] == ids[:0:-1] and back.has_more is False
    # Bad parameters are 400s naming them; another key and unknown ids get 404.
    for kwargs, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "sideways"}, "order")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.input_items.list(second.id, **kwargs)
        assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.NotFoundError):
        client_for(gw, OTHER_KEY).responses.input_items.list(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_does_not_exist")


def test_stream_is_stored(gw):
    client = client_for(gw)
    with client.responses.stream(model="claude", input="Call get_weather for Paris, please.",
                                 tools=[WEATHER_TOOL], reasoning={"effort": "low"}) as s:
        final = s.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    assert client.responses.retrieve(final.id).output[-1].call_id == call.call_id
    second = client.responses.create(model="claude", previous_response_id=final.id, tools=[WEATHER_TOOL],
                                     reasoning={"effort": "low"},
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C"}])
    assert second.output_text


def test_no_store_for_keys_that_may_not_keep_content(gw):
    nolog = client_for(gw, NOLOG_KEY)
    res = nolog.responses.create(model="gpt-4o-mini", input="hi")
    assert res.store is False
    with pytest.raises(openai.BadRequestError) as e:
        nolog.responses.create(model="gpt-4o-mini", input="hi", store=True)
    assert e.value.body["param"] == "store"
    plain = client_for(gw).responses.create(model="gpt-4o-mini", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client_for(gw).responses.retrieve(plain.id)


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"input": 7}, "input"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"input": "hi", "max_output_tokens": 10**30}, "max_output_tokens"),
    ],
)
def test_errors_name_the_field(gw, kwargs: dict, param: str):
    with pytest.raises(openai.BadRequestError) as e:
        client_for(gw).responses.create(model="gpt-4o-mini", **kwargs)
    assert e.value.body["param"] == param
    assert e.value.body["type"] == "invalid_request_error"


def test_ledger_rows_say_responses(stack):
    gateway, _ = stack
    OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0).responses.create(model="gpt-4o-mini", input="hi")
    db = sqlite3.connect(f"file:{gateway.ledger}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT COUNT(*) FROM requests WHERE endpoint = 'responses'").fetchone()
    finally:
        db.close()
    # Written in batches off the request path: at least the earlier tests' rows are in.
    assert rows[0] > 0


NATIVE = [
    ("gpt-4o-mini", "", "/v1/responses", "gpt-4o-mini"),
    ("azure-v1", "azv1", "/azv1/openai/v1/responses", "mini-v1"),
    ("azure-classic", "azclassic", "/azclassic/openai/responses", "mini-classic"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model,instance,path,upstream", NATIVE)
def test_openai_and_azure_get_the_responses_api_natively(gw, model, instance, path, upstream, stream):
    client = client_for(gw)
    res = ask(client, stream, model=model, input="[[cached]] Say hello.", instructions="Be brief.")
    assert res.id.startswith("resp_") and res.output_text
    assert res.usage.input_tokens_details.cached_tokens > 0
    sent = gw[1].requests(instance)
    assert [r["path"] for r in sent] == [path], sent
    assert sent[0]["body"]["model"] == upstream
    assert sent[0]["body"]["store"] is False
    assert sent[0]["body"]["input"] == "[[cached]] Say hello."
    if stream:
        assert sent[0]["body"]["stream"] is True
    # Stored by the gateway under the id the client got, continued through it.
    assert client.responses.retrieve(res.id).output_text == res.output_text
    more = ask(client, stream, model=model, input="Again.", previous_response_id=res.id)
    assert more.previous_response_id == res.id
    body = gw[1].requests(instance)[-1]["body"]
    assert "previous_response_id" not in body
    assert [i.get("role") for i in body["input"]] == ["user", "assistant", "user"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model,instance", [("azure-v1", "azv1"), ("azure-classic", "azclassic")])
def test_tool_loop_on_azure_natively(gw, model: str, instance: str, stream: bool):
    items, _ = tool_loop(client_for(gw), model, stream, 2)
    assert all(r["path"].endswith("/responses") for r in gw[1].requests(instance))
    last = gw[1].requests(instance)[-1]["body"]["input"]
    assert [i["type"] for i in last if i.get("type", "message") != "message"] == [
        "function_call", "function_call_output", "function_call", "function_call_output"]


def test_reasoning_effort_natively(gw):
    res = client_for(gw).responses.create(model="o4-mini", input="Think.", reasoning={"effort": "high"})
    assert res.usage.output_tokens_details.reasoning_tokens == 512
    assert res.output[0].type == "reasoning"
    assert gw[1].requests("")[-1]["body"]["reasoning"] == {"effort": "high"}


@pytest.mark.parametrize("stream", [False, True])
def test_native_openai_fails_over_to_claude(gw, stream: bool):
    gw[1].set_fault(instance="primary", kind="error", status=503)
    res = ask(client_for(gw), stream, model="openai-then-claude", input="Say hello.")
    assert res.output_text
    assert [r["path"] for r in gw[1].requests("primary")] == ["/primary/v1/responses"]
    assert [r["path"] for r in gw[1].requests("")] == ["/v1/messages"]
