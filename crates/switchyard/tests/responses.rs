//! `POST /v1/responses` (the OpenAI Responses ingress) end to end over HTTP, against
//! the simulator: answers and stream events validated against OpenAI's own schema,
//! tools, structured output, errors naming the field, reasoning tool loops on every
//! reasoning provider kind (and across a failover), and stored responses.

mod common;

use common::{Harness, KEY, OTHER_KEY, PATIENT_BREAKER};
use serde_json::{json, Value};
use switchyard_sim::{schema_check, Fault, RecordedRequest};

const NOLOG_KEY: &str = "sy-test-key-nolog-4242424242";
const REDACTOR_KEY: &str = "sy-test-key-redactor-31313131";
const ADMIN: &str = "sy-admin-test-token-0123456789";

fn extra_config(sim: &str) -> String {
    format!(
        r#"
{PATIENT_BREAKER}

[providers.r-anthropic]
kind = "anthropic"
base_url = "{sim}"
api_key = "sk-ant-sim"

[providers.r-bedrock]
kind = "bedrock"
base_url = "{sim}"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[providers.r-gemini]
kind = "gemini"
base_url = "{sim}"
api_key = "gemini-sim-key"

[providers.r-vertex]
kind = "vertex"
base_url = "{sim}"
project = "sim-project"
location = "us-central1"
api_key = "vertex-sim-token"

[deployments.g3-pro]
provider = "r-gemini"
model = "gemini-3-pro-preview"

[deployments.g3-flash]
provider = "r-gemini"
model = "gemini-3-flash-preview"

[deployments.vertex-g3]
provider = "r-vertex"
model = "gemini-3-pro-preview"

[deployments.claude-45]
provider = "r-anthropic"
model = "claude-sonnet-4-5"

[deployments.claude-47]
provider = "r-anthropic"
model = "claude-opus-4-7"

[deployments.bedrock-claude]
provider = "r-bedrock"
model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

[models.r-gemini]
deployments = ["g3-pro"]

[models.r-vertex]
deployments = ["vertex-g3"]

[models.r-bedrock]
deployments = ["bedrock-claude"]

[models.r-claude]
deployments = ["claude-45"]

[models.r-claude-adaptive]
deployments = ["claude-47"]

[models.r-gemini-then-claude]
deployments = ["g3-pro", "claude-45"]

[models.r-claude-then-gemini]
deployments = ["claude-45", "g3-flash"]

[models.r-claude-then-bedrock]
deployments = ["claude-45", "bedrock-claude"]

[providers.r-aznew]
kind = "azure"
endpoint = "{sim}/aznew"
api_version = "2025-04-01-preview"
api_key = "azure-upstream-secret"

[deployments.aznew-mini]
provider = "r-aznew"
model = "mini-new"
price = {{ input = 0.165, output = 0.66 }}

[deployments.oa-o4]
provider = "oa"
model = "o4-mini"
price = {{ input = 1.10, output = 4.40, cached_input = 0.275 }}

[models.r-azure-responses]
deployments = ["aznew-mini"]

[providers.r-compat]
kind = "openai"
base_url = "{sim}/compat/v1"
api_key = "sk-upstream-secret"
responses_api = false

[deployments.compat-mini]
provider = "r-compat"
model = "gpt-4o-mini"

[models.r-compat]
deployments = ["compat-mini"]

[models.r-o4]
deployments = ["oa-o4"]

[models.r-openai-then-claude]
deployments = ["primary-mini", "claude-45"]

[models.r-claude-then-openai]
deployments = ["claude-45", "oa-mini"]

[[keys]]
name = "nolog"
key = "{NOLOG_KEY}"
policy = {{ log_content = false }}

[admin]
token = "{ADMIN}"

[[keys]]
name = "redactor"
key = "{REDACTOR_KEY}"
policy = {{ pii = "redact" }}
"#
    )
}

async fn start() -> Harness {
    Harness::start_with_sim(extra_config).await
}

fn schemas() -> Value {
    serde_json::from_str(include_str!("fixtures/openai-responses-schemas.json")).expect("schemas")
}

/// Validates `value` against OpenAI's schema `name`.
fn check_schema(name: &str, value: &Value) {
    let mut root = schemas();
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    schema_check::validate(&root, value)
        .unwrap_or_else(|e| panic!("not a valid {name}: {e}\n{value:#}"));
}

/// The schema of a stream event, by its `type`: the branch of `ResponseStreamEvent`
/// whose `type` enum names it.
fn event_schema(kind: &str) -> String {
    let root = schemas();
    let branches = root["components"]["schemas"]["ResponseStreamEvent"]["anyOf"]
        .as_array()
        .expect("anyOf")
        .clone();
    for b in branches {
        let name = b["$ref"]
            .as_str()
            .and_then(|r| r.rsplit('/').next())
            .expect("ref")
            .to_owned();
        if root["components"]["schemas"][&name]["properties"]["type"]["enum"][0] == kind {
            return name;
        }
    }
    panic!("no schema for event type {kind}")
}

fn post(h: &Harness, key: &str, body: &Value) -> reqwest::RequestBuilder {
    h.client
        .post(format!("{}/v1/responses", h.base))
        .bearer_auth(key)
        .json(body)
}

async fn send(h: &Harness, body: Value) -> (u16, http::HeaderMap, Value) {
    send_as(h, KEY, body).await
}

async fn send_as(h: &Harness, key: &str, body: Value) -> (u16, http::HeaderMap, Value) {
    let res = post(h, key, &body).send().await.expect("send");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, v)
}

/// A created response, checked against the schema.
async fn create(h: &Harness, body: Value) -> Value {
    let (status, _, v) = send(h, body).await;
    assert_eq!(status, 200, "{v}");
    check_schema("Response", &v);
    v
}

/// The (event name, data) pairs of a Responses SSE body: framing checked, every
/// event valid against its schema, sequence numbers 0, 1, 2…
fn events(body: &str) -> Vec<Value> {
    let out: Vec<Value> = body
        .split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e
                .split_once('\n')
                .unwrap_or_else(|| panic!("bad event {e:?}"));
            let name = name.strip_prefix("event: ").expect("event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                .expect("json");
            assert_eq!(data["type"], name, "{e}");
            check_schema(&event_schema(name), &data);
            data
        })
        .collect();
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{e}");
    }
    out
}

async fn stream(h: &Harness, body: Value) -> Vec<Value> {
    let res = post(h, KEY, &body).send().await.expect("send");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = res.text().await.expect("body");
    events(&text)
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

/// The final response of a stream (`response.completed` or `.incomplete`).
fn final_response(events: &[Value]) -> Value {
    let last = events.last().expect("events");
    assert!(
        matches!(
            last["type"].as_str(),
            Some("response.completed" | "response.incomplete")
        ),
        "{last}"
    );
    last["response"].clone()
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["type"] == "output_text")
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect()
}

fn calls(response: &Value) -> Vec<Value> {
    response["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|i| i["type"] == "function_call")
        .cloned()
        .collect()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": false}, "strict": true}])
}

fn recorded(h: &Harness, keep: impl Fn(&RecordedRequest) -> bool) -> Vec<Value> {
    h.sim
        .sim
        .requests("")
        .into_iter()
        .filter(|r| keep(r))
        .map(|r| r.body)
        .collect()
}

/// The chat completions the simulator's OpenAI endpoint and Azure classic
/// deployments (`api_version` before the Responses API) received.
fn chat_bodies(h: &Harness) -> Vec<Value> {
    ["", "azure"]
        .into_iter()
        .flat_map(|instance| h.sim.sim.requests(instance))
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.body)
        .collect()
}

/// The Responses requests the simulator's OpenAI endpoint received.
fn responses_bodies(h: &Harness) -> Vec<Value> {
    responses_bodies_at(h, "")
}

/// The Responses requests a simulator instance received.
fn responses_bodies_at(h: &Harness, instance: &str) -> Vec<Value> {
    h.sim
        .sim
        .requests(instance)
        .into_iter()
        .filter(|r| r.path.ends_with("/responses"))
        .map(|r| r.body)
        .collect()
}

/// The paths a simulator instance was called on.
fn paths_at(h: &Harness, instance: &str) -> Vec<String> {
    h.sim
        .sim
        .requests(instance)
        .into_iter()
        .map(|r| match r.query {
            Some(q) => format!("{}?{q}", r.path),
            None => r.path,
        })
        .collect()
}

#[tokio::test]
async fn plain_text_on_every_kind_is_a_valid_response() {
    let mut h = start().await;
    for model in [
        "gpt-4o-mini",
        "r-claude",
        "r-gemini",
        "r-bedrock",
        "r-vertex",
        "azure-v1",
    ] {
        let r = create(
            &h,
            json!({"model": model, "input": "Say hello.", "instructions": "Be brief.",
                "max_output_tokens": 200, "temperature": 0.5, "metadata": {"run": "t1"}}),
        )
        .await;
        assert!(
            r["id"].as_str().is_some_and(|id| id.starts_with("resp_")),
            "{r}"
        );
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed", "{model}: {r}");
        assert_eq!(r["metadata"], json!({"run": "t1"}));
        assert_eq!(r["instructions"], "Be brief.");
        assert_eq!(r["max_output_tokens"], 200);
        assert!(!output_text(&r).is_empty(), "{model}: {r}");
        let message = r["output"]
            .as_array()
            .expect("output")
            .iter()
            .find(|i| i["type"] == "message")
            .expect("message")
            .clone();
        assert!(message["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_")));
        assert_eq!(message["role"], "assistant");
        let u = &r["usage"];
        let (input, output) = (
            u["input_tokens"].as_u64().expect("input"),
            u["output_tokens"].as_u64().expect("output"),
        );
        assert!(input > 0 && output > 0, "{u}");
        assert_eq!(u["total_tokens"], input + output);
    }
    // The OpenAI and Azure upstreams got the Responses request itself, not a chat
    // completion; the others got their own protocols.
    let openai_api = |p: &String| p.ends_with("/responses") || p.ends_with("/completions");
    let paths: Vec<String> = paths_at(&h, "").into_iter().filter(openai_api).collect();
    assert_eq!(paths, ["/v1/responses"]);
    assert_eq!(paths_at(&h, "azurev1"), ["/azurev1/openai/v1/responses"]);
    let mut bodies = responses_bodies(&h);
    bodies.extend(responses_bodies_at(&h, "azurev1"));
    for (body, model) in bodies.iter().zip(["gpt-4o-mini", "mini-v1"]) {
        assert_eq!(body["model"], model);
        assert_eq!(body["input"], "Say hello.");
        assert_eq!(body["instructions"], "Be brief.");
        assert_eq!(body["max_output_tokens"], 200);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["metadata"], json!({"run": "t1"}));
        assert_eq!(body["store"], false);
    }
    // One ledger row per request, on its own endpoint.
    let db = h.finish().await;
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT endpoint, status, prompt_tokens FROM requests")
            .fetch_all(&db)
            .await
            .expect("rows");
    assert_eq!(rows.len(), 6);
    for (endpoint, status, prompt) in rows {
        assert_eq!((endpoint.as_str(), status), ("responses", 200));
        assert!(prompt > 0);
    }
}

#[tokio::test]
async fn message_items_with_text_and_images() {
    let h = start().await;
    let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    create(
        &h,
        json!({"model": "azure-classic", "input": [
            {"role": "developer", "content": "Answer in one word."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is in this picture?"},
                {"type": "input_image", "image_url": png, "detail": "low"}]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "A pixel.", "annotations": []}]},
            {"role": "user", "content": "And its colour?"}]}),
    )
    .await;
    let body = chat_bodies(&h)[0].clone();
    assert_eq!(body["messages"][0]["role"], "developer");
    assert_eq!(
        body["messages"][1]["content"][1],
        json!({"type": "image_url", "image_url": {"url": png, "detail": "low"}})
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "assistant", "content": "A pixel."})
    );
    assert_eq!(body["messages"][3]["content"], "And its colour?");
}

#[tokio::test]
async fn function_tools_round_trip_through_call_ids() {
    let h = start().await;
    for model in ["gpt-4o-mini", "r-claude", "r-gemini"] {
        h.sim.sim.clear_requests();
        let first = create(
            &h,
            json!({"model": model, "input": "Call get_weather for Paris, please.",
                "tools": weather_tool(), "tool_choice": "auto", "parallel_tool_calls": false}),
        )
        .await;
        let calls = calls(&first);
        assert_eq!(calls.len(), 1, "{model}: {first}");
        let call = &calls[0];
        assert_eq!(call["name"], "get_weather");
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("fc_")));
        let args: Value =
            serde_json::from_str(call["arguments"].as_str().expect("arguments")).expect("json");
        assert!(args["city"].is_string(), "{args}");
        assert_eq!(first["tools"][0]["name"], "get_weather");
        // The SDK's loop: the output back as input, with the call's result.
        let mut input = first["output"].as_array().expect("output").clone();
        input.push(
            json!({"type": "function_call_output", "call_id": call["call_id"],
            "output": "{\"temperature\": 18}"}),
        );
        let mut history =
            vec![json!({"role": "user", "content": "Call get_weather for Paris, please."})];
        history.extend(input);
        let second = create(
            &h,
            json!({"model": model, "input": history, "tools": weather_tool()}),
        )
        .await;
        assert!(calls_of(&second).is_empty(), "{second}");
        assert!(!output_text(&second).is_empty(), "{second}");
    }
}

fn calls_of(r: &Value) -> Vec<Value> {
    calls(r)
}

#[tokio::test]
async fn chat_upstreams_get_chat_shaped_tools_and_results() {
    let h = start().await;
    // Azure's classic API before 2025-03-01 has no Responses API: the translation.
    let first = create(
        &h,
        json!({"model": "azure-classic", "input": "Call get_weather for Paris, please.",
            "tools": weather_tool(), "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": false}),
    )
    .await;
    let call = calls(&first)[0].clone();
    let body = chat_bodies(&h)[0].clone();
    assert_eq!(
        body["tools"][0],
        json!({"type": "function", "function": {"name": "get_weather",
            "description": "Weather for a city.",
            "parameters": weather_tool()[0]["parameters"], "strict": true}})
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(body["parallel_tool_calls"], false);
    let mut input = vec![json!({"role": "user", "content": "Call get_weather for Paris, please."})];
    input.extend(first["output"].as_array().expect("output").clone());
    input
        .push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}));
    create(
        &h,
        json!({"model": "azure-classic", "input": input, "tools": weather_tool()}),
    )
    .await;
    let body = chat_bodies(&h)[1].clone();
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["id"], call["call_id"]);
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": call["call_id"], "content": "18C"})
    );
}

#[tokio::test]
async fn text_format_json_schema_and_json_object() {
    let h = start().await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"},
        "lumens": {"type": "integer"}}, "required": ["name", "lumens"], "additionalProperties": false});
    for model in ["azure-classic", "gpt-4o-mini", "r-claude", "r-gemini"] {
        let r = create(
            &h,
            json!({"model": model, "input": "Describe a lantern.",
                "text": {"format": {"type": "json_schema", "name": "lantern", "schema": schema,
                    "strict": true}}}),
        )
        .await;
        let v: Value = serde_json::from_str(&output_text(&r)).expect("JSON answer");
        schema_check::validate(&schema, &v).unwrap_or_else(|e| panic!("{model}: {e}: {v}"));
        assert_eq!(r["text"]["format"]["type"], "json_schema");
    }
    let r = create(
        &h,
        json!({"model": "azure-classic", "input": "Describe a lantern in JSON.",
            "text": {"format": {"type": "json_object"}}}),
    )
    .await;
    let v: Value = serde_json::from_str(&output_text(&r)).expect("JSON answer");
    assert!(v.is_object());
    let bodies = chat_bodies(&h);
    assert_eq!(
        bodies[0]["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "lantern", "schema": schema, "strict": true}})
    );
    assert_eq!(bodies[1]["response_format"], json!({"type": "json_object"}));
    // OpenAI got `text.format` as the client sent it.
    assert_eq!(
        responses_bodies(&h)[0]["text"],
        json!({"format": {"type": "json_schema", "name": "lantern", "schema": schema, "strict": true}})
    );
}

#[tokio::test]
async fn max_output_tokens_makes_an_incomplete_response() {
    let h = start().await;
    for model in ["gpt-4o-mini", "r-claude"] {
        let r = create(
            &h,
            json!({"model": model, "input": "[[len:200]] Tell a long story.", "max_output_tokens": 20}),
        )
        .await;
        assert_eq!(r["status"], "incomplete", "{model}: {r}");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }
}

#[tokio::test]
async fn streamed_text_events_are_in_order_and_valid() {
    let mut h = start().await;
    for model in ["gpt-4o-mini", "r-claude", "r-gemini", "r-bedrock"] {
        let events = stream(
            &h,
            json!({"model": model, "input": "Say hello.", "stream": true}),
        )
        .await;
        let kinds = types(&events);
        assert_eq!(
            kinds[..2],
            ["response.created", "response.in_progress"],
            "{kinds:?}"
        );
        assert_eq!(events[0]["response"]["status"], "in_progress");
        assert_eq!(events[0]["response"]["output"], json!([]));
        let text_at = kinds
            .iter()
            .position(|k| *k == "response.output_item.added")
            .expect("item added");
        assert_eq!(kinds[text_at + 1], "response.content_part.added");
        assert_eq!(kinds[text_at + 2], "response.output_text.delta");
        let tail = &kinds[kinds.len() - 4..];
        assert_eq!(
            tail,
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ],
            "{model}: {kinds:?}"
        );
        let deltas: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .filter_map(|e| e["delta"].as_str())
            .collect();
        let done = events
            .iter()
            .find(|e| e["type"] == "response.output_text.done")
            .expect("done");
        assert_eq!(done["text"], deltas.as_str());
        let last = final_response(&events);
        check_schema("Response", &last);
        assert_eq!(last["status"], "completed");
        assert_eq!(output_text(&last), deltas);
        assert_eq!(last["id"], events[0]["response"]["id"]);
        assert!(
            last["usage"]["output_tokens"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{last}"
        );
    }
    let db = h.finish().await;
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT endpoint, streamed FROM requests")
        .fetch_all(&db)
        .await
        .expect("rows");
    assert_eq!(rows, vec![("responses".to_owned(), 1); 4]);
}

#[tokio::test]
async fn streamed_function_calls() {
    let h = start().await;
    for model in ["gpt-4o-mini", "r-claude", "r-gemini", "r-bedrock"] {
        let events = stream(
            &h,
            json!({"model": model, "input": "Call get_weather for Paris, please.",
                "tools": weather_tool(), "stream": true}),
        )
        .await;
        let added = events
            .iter()
            .find(|e| {
                e["type"] == "response.output_item.added" && e["item"]["type"] == "function_call"
            })
            .unwrap_or_else(|| panic!("{model}: {:?}", types(&events)));
        let index = added["output_index"].clone();
        let item_id = added["item"]["id"].clone();
        let deltas: String = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .inspect(|e| {
                assert_eq!(e["item_id"], item_id);
                assert_eq!(e["output_index"], index);
            })
            .filter_map(|e| e["delta"].as_str())
            .collect();
        let done = events
            .iter()
            .find(|e| e["type"] == "response.function_call_arguments.done")
            .expect("arguments done");
        assert_eq!(done["arguments"], deltas.as_str());
        assert_eq!(done["name"], "get_weather");
        let last = final_response(&events);
        let call = &calls(&last)[0];
        assert_eq!(call["arguments"], deltas.as_str());
        assert_eq!(call["call_id"], added["item"]["call_id"]);
        serde_json::from_str::<Value>(&deltas).expect("arguments are JSON");
    }
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_error_and_response_failed() {
    let mut h = start().await;
    h.sim.sim.set_fault("", "*", Fault::cut(3));
    let res = post(
        &h,
        KEY,
        &json!({"model": "gpt-4o-mini", "input": "[[len:50]] Tell a story.", "stream": true}),
    )
    .send()
    .await
    .expect("send");
    assert_eq!(res.status(), 200);
    let events = events(&res.text().await.expect("body"));
    let kinds = types(&events);
    assert_eq!(kinds[0], "response.created");
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["error", "response.failed"],
        "{kinds:?}"
    );
    let failed = &events[events.len() - 1]["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    assert_eq!(events[events.len() - 2]["code"], "stream_cut");
    let db = h.finish().await;
    let (code,): (Option<String>,) = sqlx::query_as("SELECT error_code FROM requests")
        .fetch_one(&db)
        .await
        .expect("row");
    assert_eq!(code.as_deref(), Some("stream_cut"));
}

#[tokio::test]
async fn upstream_failures_fail_over_and_errors_are_openai_shaped() {
    let h = start().await;
    h.sim.sim.set_fault("primary", "*", Fault::error(503));
    let (status, headers, r) = send(&h, json!({"model": "failover", "input": "Hi"})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(headers["x-switchyard-deployment"], "backup-mini");
    check_schema("Response", &r);
    let (status, _, e) = send(&h, json!({"model": "primary-only", "input": "Hi"})).await;
    assert_eq!(status, 503, "{e}");
    check_schema("ErrorResponse", &e);
    let (status, _, e) = send(&h, json!({"model": "no-such-model", "input": "Hi"})).await;
    assert_eq!(status, 404);
    check_schema("ErrorResponse", &e);
    let res = h
        .client
        .post(format!("{}/v1/responses", h.base))
        .bearer_auth("sy-wrong")
        .json(&json!({"model": "gpt-4o-mini", "input": "Hi"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field() {
    let h = start().await;
    let cases = [
        (json!({"model": "gpt-4o-mini"}), "input"),
        (json!({"model": "gpt-4o-mini", "input": 7}), "input"),
        (
            json!({"model": "gpt-4o-mini", "input": {"role": "user"}}),
            "input",
        ),
        (json!({"model": "gpt-4o-mini", "input": []}), "input"),
        (json!({"model": "gpt-4o-mini", "input": ["hi"]}), "input[0]"),
        (
            json!({"model": "gpt-4o-mini", "input": [{"content": "x"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"type": "web_search_call", "id": "x"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"type": "message", "role": "robot", "content": "x"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": 5}]}),
            "input[0].content",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
            "input[0].content[0].text",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}),
            "input[0].content[0].file_id",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
            "input[0].call_id",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}),
            "input[0].arguments",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"type": "function_call_output", "call_id": "c"}]}),
            "input[0].output",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "sy1.%%%"}]}),
            "input[0].encrypted_content",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "function"}]}),
            "tools[0].name",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": "x"}]}),
            "tools[0].parameters",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "tools": weather_tool(), "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "yaml"}}}),
            "text.format.type",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}),
            "text.format.schema",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 1e30}),
            "max_output_tokens",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": "10"}),
            "max_output_tokens",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "temperature": 9}),
            "temperature",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "reasoning": {"effort": "extreme"}}),
            "reasoning.effort",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "metadata": {"k": 1}}),
            "metadata.k",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "stream": "yes"}),
            "stream",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "store": 1}),
            "store",
        ),
        (json!({"model": 5, "input": "hi"}), "model"),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "previous_response_id": ""}),
            "previous_response_id",
        ),
    ];
    for (body, param) in cases {
        let (status, _, e) = send(&h, body.clone()).await;
        assert_eq!(status, 400, "{body}: {e}");
        check_schema("ErrorResponse", &e);
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    // Not JSON, and non-ASCII text, are handled too.
    let res = h
        .client
        .post(format!("{}/v1/responses", h.base))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    let r = create(
        &h,
        json!({"model": "gpt-4o-mini", "input": "Grüße, 日本語 ٣٣"}),
    )
    .await;
    assert_eq!(r["status"], "completed");
    // A function_call_output whose call matches nothing is passed on as it is.
    let (status, _, _) = send(
        &h,
        json!({"model": "azure-classic", "input": [{"role": "user", "content": "hi"},
            {"type": "function_call_output", "call_id": "call_unknown", "output": "x"}]}),
    )
    .await;
    assert_ne!(status, 500);
    let sent = chat_bodies(&h);
    let last = &sent[sent.len() - 1]["messages"];
    assert_eq!(
        last[1],
        json!({"role": "tool", "tool_call_id": "call_unknown", "content": "x"})
    );
}

/// The final response of a request, plain or streamed.
async fn respond(h: &Harness, body: Value) -> Value {
    if body["stream"] == true {
        final_response(&stream(h, body).await)
    } else {
        create(h, body).await
    }
}

/// A tool loop of `turns` questions, as the SDK's loop pattern sends it: each
/// response's `output` back in the input, with a `function_call_output` per call.
/// `between(round)` runs before each request. Returns the input items and the
/// responses.
async fn tool_loop(
    h: &Harness,
    model: &str,
    stream: bool,
    turns: usize,
    effort: Option<&str>,
    between: impl Fn(usize),
) -> (Vec<Value>, Vec<Value>) {
    let mut input: Vec<Value> = Vec::new();
    let mut responses = Vec::new();
    let mut round = 0;
    for turn in 0..turns {
        input.push(json!({"role": "user",
            "content": format!("Question {turn}: call get_weather for Paris, please.")}));
        for step in 0..2 {
            between(round);
            round += 1;
            let mut body = json!({"model": model, "input": input, "tools": weather_tool(),
                "stream": stream, "max_output_tokens": 300});
            if let Some(e) = effort {
                body["reasoning"] = json!({"effort": e});
            }
            let r = respond(h, body).await;
            assert_eq!(r["status"], "completed", "turn {turn}: {r}");
            input.extend(r["output"].as_array().expect("output").iter().cloned());
            let calls = calls(&r);
            if step == 0 {
                assert!(!calls.is_empty(), "turn {turn}: {r}");
                for call in calls {
                    input.push(
                        json!({"type": "function_call_output", "call_id": call["call_id"],
                        "output": "{\"temperature\": 18}"}),
                    );
                }
            } else {
                assert!(calls.is_empty(), "turn {turn}: {r}");
                assert!(!output_text(&r).is_empty(), "turn {turn}: {r}");
            }
            responses.push(r);
        }
    }
    (input, responses)
}

fn gemini_bodies(h: &Harness, model: &str) -> Vec<Value> {
    recorded(h, |r| r.path.contains(&format!("/models/{model}:")))
}

fn anthropic_bodies(h: &Harness, model: &str) -> Vec<Value> {
    recorded(h, |r| {
        r.path.ends_with("/v1/messages") && r.body["model"] == model
    })
}

/// The `thoughtSignature` of each model turn's first function call in a body.
fn signatures(body: &Value) -> Vec<Option<String>> {
    body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["role"] == "model")
        .filter_map(|c| {
            c["parts"]
                .as_array()?
                .iter()
                .find(|p| p.get("functionCall").is_some())
                .map(|p| p["thoughtSignature"].as_str().map(str::to_owned))
        })
        .collect()
}

fn reasoning_items(responses: &[Value]) -> Vec<Value> {
    responses
        .iter()
        .flat_map(|r| r["output"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["type"] == "reasoning")
        .collect()
}

#[tokio::test]
async fn gemini_3_tool_loops_keep_their_thought_signatures_in_call_ids() {
    for (model, upstream, kind) in [
        ("r-gemini", "gemini-3-pro-preview", "gemini"),
        ("r-vertex", "gemini-3-pro-preview", "vertex"),
    ] {
        for stream in [false, true] {
            let turns = if stream { 2 } else { 3 };
            let h = start().await;
            let (input, _) = tool_loop(&h, model, stream, turns, None, |_| {}).await;
            let bodies = gemini_bodies(&h, upstream);
            assert_eq!(bodies.len(), 2 * turns);
            for body in &bodies {
                assert!(!body.to_string().contains(".sy1."), "{body}");
            }
            let sigs = signatures(bodies.last().expect("a request"));
            assert_eq!(sigs.len(), turns, "{model} stream={stream}");
            for sig in &sigs {
                let sig = sig.as_deref().expect("signed");
                assert_ne!(sig, "skip_thought_signature_validator");
            }
            let ids: Vec<&str> = input
                .iter()
                .filter(|i| i["type"] == "function_call")
                .filter_map(|i| i["call_id"].as_str())
                .collect();
            assert_eq!(ids.len(), turns);
            let mark = format!(".sy1.{kind}-");
            assert!(ids.iter().all(|id| id.contains(&mark)), "{ids:?}");
        }
    }
}

#[tokio::test]
async fn claude_thinking_rides_in_reasoning_items() {
    for (model, upstream) in [
        ("r-claude", "claude-sonnet-4-5"),
        ("r-claude-adaptive", "claude-opus-4-7"),
    ] {
        for stream in [false, true] {
            let h = start().await;
            let (_, responses) = tool_loop(&h, model, stream, 2, Some("medium"), |_| {}).await;
            let items = reasoning_items(&responses);
            assert!(!items.is_empty(), "{model}");
            let first = &items[0];
            assert!(first["id"].as_str().is_some_and(|id| id.starts_with("rs_")));
            assert!(first["encrypted_content"]
                .as_str()
                .is_some_and(|c| c.starts_with("sy1.")));
            assert!(
                !first["summary"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{first}"
            );
            let bodies = anthropic_bodies(&h, upstream);
            assert_eq!(bodies.len(), 4);
            if upstream == "claude-opus-4-7" {
                assert_eq!(bodies[0]["thinking"], json!({"type": "adaptive"}));
                assert_eq!(bodies[0]["output_config"]["effort"], "medium");
            } else {
                assert_eq!(bodies[0]["thinking"]["budget_tokens"], 4096);
            }
            // The continuation starts its assistant turn with the block as issued.
            let answer = decode_blocks(first)[0].clone();
            let turn = &bodies[1]["messages"][1]["content"];
            assert_eq!(turn[0]["type"], "thinking", "{}", bodies[1]);
            assert_eq!(turn[0]["signature"], answer["signature"]);
            assert_eq!(turn[0]["thinking"], answer["thinking"]);
            assert!(bodies[1].get("thinking").is_some(), "thinking stays on");
            assert!(responses[0]["usage"]["output_tokens_details"]["reasoning_tokens"].is_u64());
        }
    }
}

/// The signed blocks a reasoning item carries (`sy1.` + base64url of their JSON).
fn decode_blocks(item: &Value) -> Vec<Value> {
    use base64::Engine as _;
    let content = item["encrypted_content"]
        .as_str()
        .expect("encrypted_content");
    let payload = content.strip_prefix("sy1.").expect("the gateway's mark");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("blocks")
}

#[tokio::test]
async fn bedrock_claude_reasoning_goes_back_signed() {
    for stream in [false, true] {
        let h = start().await;
        let (input, responses) =
            tool_loop(&h, "r-bedrock", stream, 2, Some("medium"), |_| {}).await;
        assert!(!reasoning_items(&responses).is_empty());
        assert!(input
            .iter()
            .filter(|i| i["type"] == "function_call")
            .all(|i| i["call_id"]
                .as_str()
                .is_some_and(|id| id.contains(".sy1.bedrock-"))));
        let bodies = recorded(&h, |r| r.path.contains("/converse"));
        assert_eq!(bodies.len(), 4);
        assert_eq!(
            bodies[0]["additionalModelRequestFields"]["thinking"],
            json!({"type": "enabled", "budget_tokens": 4096})
        );
        let turn = &bodies[1]["messages"][1]["content"];
        assert!(
            turn[0]["reasoningContent"]["reasoningText"]["signature"].is_string(),
            "{}",
            bodies[1]
        );
        assert!(!bodies[1].to_string().contains(".sy1."));
    }
}

#[tokio::test]
async fn loops_survive_a_failover_to_another_provider_kind() {
    for stream in [false, true] {
        // Gemini 3 → Claude: Claude never sees Gemini's signatures and goes on without thinking.
        let h = start().await;
        let sim = h.sim.sim.clone();
        tool_loop(
            &h,
            "r-gemini-then-claude",
            stream,
            1,
            Some("high"),
            move |round| {
                if round == 1 {
                    sim.set_fault("", "gemini-3-pro-preview", Fault::error(503));
                }
            },
        )
        .await;
        let claude = anthropic_bodies(&h, "claude-sonnet-4-5");
        assert_eq!(claude.len(), 1, "the continuation went to Claude");
        let body = claude[0].to_string();
        assert!(
            !body.contains(".sy1.") && !body.contains("thoughtSignature"),
            "{body}"
        );
        assert!(claude[0].get("thinking").is_none(), "{body}");

        // Claude → Gemini 3: the skip value on the foreign turn, Claude's blocks dropped.
        let h = start().await;
        let sim = h.sim.sim.clone();
        tool_loop(
            &h,
            "r-claude-then-gemini",
            stream,
            1,
            Some("low"),
            move |round| {
                if round == 1 {
                    sim.set_fault("", "claude-sonnet-4-5", Fault::error(529));
                }
            },
        )
        .await;
        let gemini = gemini_bodies(&h, "gemini-3-flash-preview");
        assert_eq!(gemini.len(), 1);
        assert_eq!(
            signatures(&gemini[0]),
            [Some("skip_thought_signature_validator".to_owned())]
        );
        assert!(
            !gemini[0].to_string().contains("signature\":\"sim"),
            "{}",
            gemini[0]
        );

        // Claude → Claude on Bedrock, mid-loop over two turns: Anthropic's blocks never
        // reach Bedrock; the loop finishes there.
        let h = start().await;
        let sim = h.sim.sim.clone();
        let (_, responses) = tool_loop(
            &h,
            "r-claude-then-bedrock",
            stream,
            2,
            Some("medium"),
            move |round| {
                if round == 1 {
                    sim.set_fault("", "claude-sonnet-4-5", Fault::error(503));
                }
            },
        )
        .await;
        assert_eq!(responses.len(), 4);
        let bedrock = recorded(&h, |r| r.path.contains("/converse"));
        assert_eq!(bedrock.len(), 3);
        assert!(
            !bedrock[0].to_string().contains("reasoningContent"),
            "{}",
            bedrock[0]
        );
    }
}

#[tokio::test]
async fn stored_responses_continue_and_belong_to_their_key() {
    let h = start().await;
    let first = create(
        &h,
        json!({"model": "r-gemini", "input": "Call get_weather for Paris, please.",
            "tools": weather_tool(), "instructions": "Be brief."}),
    )
    .await;
    assert_eq!(first["store"], true);
    let id = first["id"].as_str().expect("id").to_owned();
    // Retrieved as it was created, by its key only.
    let get = |key: &'static str, id: String| {
        let h = &h;
        async move {
            let res = h
                .client
                .get(format!("{}/v1/responses/{id}", h.base))
                .bearer_auth(key)
                .send()
                .await
                .expect("send");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        }
    };
    let (status, got) = get(KEY, id.clone()).await;
    assert_eq!(status, 200);
    check_schema("Response", &got);
    assert_eq!(got, first);
    let (status, e) = get(OTHER_KEY, id.clone()).await;
    assert_eq!(status, 404, "{e}");
    check_schema("ErrorResponse", &e);
    // The next turn names it: the stored conversation goes first, signatures and all.
    let call = calls(&first)[0].clone();
    let second = create(
        &h,
        json!({"model": "r-gemini", "previous_response_id": id, "tools": weather_tool(),
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}]}),
    )
    .await;
    assert_eq!(second["previous_response_id"], id.as_str());
    assert!(!output_text(&second).is_empty(), "{second}");
    let bodies = gemini_bodies(&h, "gemini-3-pro-preview");
    let last = bodies.last().expect("body");
    assert_eq!(
        last["contents"][0]["parts"][0]["text"],
        "Call get_weather for Paris, please."
    );
    assert!(signatures(last)[0]
        .as_deref()
        .is_some_and(|s| s != "skip_thought_signature_validator"));
    // A third turn chains on the second.
    let third = create(
        &h,
        json!({"model": "r-gemini", "previous_response_id": second["id"], "input": "Thanks!"}),
    )
    .await;
    assert_eq!(third["status"], "completed");
    let last = gemini_bodies(&h, "gemini-3-pro-preview")
        .pop()
        .expect("body");
    assert_eq!(
        last["contents"].as_array().expect("contents").len(),
        5,
        "{last}"
    );
    // Another key can neither continue it nor delete it.
    let (status, _, e) = send_as(
        &h,
        OTHER_KEY,
        json!({"model": "r-gemini", "previous_response_id": id, "input": "hi"}),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["param"], "previous_response_id");
    let delete = |key: &'static str, id: String| {
        let h = &h;
        async move {
            let res = h
                .client
                .delete(format!("{}/v1/responses/{id}", h.base))
                .bearer_auth(key)
                .send()
                .await
                .expect("send");
            (
                res.status().as_u16(),
                res.json::<Value>().await.expect("json"),
            )
        }
    };
    assert_eq!(delete(OTHER_KEY, id.clone()).await.0, 404);
    let (status, deleted) = delete(KEY, id.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted,
        json!({"id": id, "object": "response.deleted", "deleted": true})
    );
    assert_eq!(get(KEY, id.clone()).await.0, 404);
    assert_eq!(delete(KEY, id.clone()).await.0, 404);
}

#[tokio::test]
async fn streamed_responses_are_stored_before_they_complete() {
    let h = start().await;
    let events = stream(
        &h,
        json!({"model": "r-claude", "input": "Call get_weather for Paris, please.",
            "tools": weather_tool(), "reasoning": {"effort": "low"}, "stream": true}),
    )
    .await;
    let done = final_response(&events);
    let res = h
        .client
        .get(format!(
            "{}/v1/responses/{}",
            h.base,
            done["id"].as_str().expect("id")
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let got: Value = res.json().await.expect("json");
    assert_eq!(got, done);
    // Continued from the store, the thinking goes back to Claude.
    let call = calls(&done)[0].clone();
    create(
        &h,
        json!({"model": "r-claude", "previous_response_id": done["id"], "tools": weather_tool(),
            "reasoning": {"effort": "low"},
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}]}),
    )
    .await;
    let bodies = anthropic_bodies(&h, "claude-sonnet-4-5");
    assert_eq!(
        bodies[1]["messages"][1]["content"][0]["type"], "thinking",
        "{}",
        bodies[1]
    );
}

#[tokio::test]
async fn store_false_and_keys_that_may_not_keep_content() {
    let h = start().await;
    let r = create(
        &h,
        json!({"model": "gpt-4o-mini", "input": "hi", "store": false}),
    )
    .await;
    assert_eq!(r["store"], false);
    let res = h
        .client
        .get(format!(
            "{}/v1/responses/{}",
            h.base,
            r["id"].as_str().expect("id")
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 404);
    let (status, _, e) = send(
        &h,
        json!({"model": "gpt-4o-mini", "input": "hi", "previous_response_id": r["id"]}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["param"], "previous_response_id");
    // A key whose policy forbids keeping content: not stored by default, 400 when asked.
    let (status, _, r) = send_as(
        &h,
        NOLOG_KEY,
        json!({"model": "gpt-4o-mini", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["store"], false);
    let (status, _, e) = send_as(
        &h,
        NOLOG_KEY,
        json!({"model": "gpt-4o-mini", "input": "hi", "store": true}),
    )
    .await;
    assert_eq!(status, 400);
    check_schema("ErrorResponse", &e);
    assert_eq!(e["error"]["param"], "store");
}

#[tokio::test]
async fn the_pii_guardrail_sees_input_items_before_they_are_stored() {
    let h = start().await;
    let (status, _, first) = send_as(
        &h,
        REDACTOR_KEY,
        json!({"model": "gpt-4o-mini", "instructions": "Reply to jane@example.com.",
            "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "Mail jane@example.com please"}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let (status, _, _) = send_as(
        &h,
        REDACTOR_KEY,
        json!({"model": "gpt-4o-mini", "previous_response_id": first["id"], "input": "Thanks"}),
    )
    .await;
    assert_eq!(status, 200);
    // Neither the first request nor the stored conversation sent again has the address.
    for body in responses_bodies(&h) {
        let text = body.to_string();
        assert!(!text.contains("jane@example.com"), "{text}");
    }
    let second = responses_bodies(&h)[1].clone();
    assert_eq!(
        second["input"][0]["content"][0]["text"], "Mail [EMAIL_1] please",
        "{second}"
    );
}

#[tokio::test]
async fn a_stored_response_belongs_to_its_team() {
    let h = start().await;
    let admin = |path: &str, body: Value| {
        h.client
            .post(format!("{}{path}", h.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    let res = admin("/admin/teams", json!({"name": "alpha"}))
        .await
        .expect("send");
    assert_eq!(res.status(), 201);
    let mut secrets = Vec::new();
    for (name, team) in [
        ("a1", Some("alpha")),
        ("a2", Some("alpha")),
        ("loner", None),
    ] {
        let mut body = json!({"name": name});
        if let Some(t) = team {
            body["team"] = json!(t);
        }
        let res = admin("/admin/keys", body).await.expect("send");
        assert_eq!(res.status(), 201);
        let key: Value = res.json().await.expect("json");
        secrets.push(key["key"].as_str().expect("secret").to_owned());
    }
    let (status, _, made) = send_as(
        &h,
        &secrets[0],
        json!({"model": "gpt-4o-mini", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let url = format!(
        "{}/v1/responses/{}",
        h.base,
        made["id"].as_str().expect("id")
    );
    let status_for = |key: String, delete: bool| {
        let req = if delete {
            h.client.delete(&url)
        } else {
            h.client.get(&url)
        };
        async move {
            req.bearer_auth(key)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    // A key of the same team reads it; a key of no team, or of the config file, cannot.
    assert_eq!(status_for(secrets[1].clone(), false).await, 200);
    assert_eq!(status_for(secrets[2].clone(), false).await, 404);
    assert_eq!(status_for(KEY.to_owned(), false).await, 404);
    assert_eq!(status_for(secrets[2].clone(), true).await, 404);
    // A teammate continues it, and may delete it.
    let (status, _, _) = send_as(
        &h,
        &secrets[1],
        json!({"model": "gpt-4o-mini", "input": "again", "previous_response_id": made["id"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(status_for(secrets[1].clone(), true).await, 200);
    assert_eq!(status_for(secrets[0].clone(), false).await, 404);
}

#[tokio::test]
async fn a_streamed_response_cut_by_max_output_tokens_is_incomplete() {
    let h = start().await;
    for model in ["gpt-4o-mini", "r-claude"] {
        let events = stream(
            &h,
            json!({"model": model, "input": "[[len:200]] Tell a long story.",
                "max_output_tokens": 20, "stream": true}),
        )
        .await;
        let last = events.last().expect("events");
        assert_eq!(last["type"], "response.incomplete", "{model}");
        assert_eq!(last["response"]["status"], "incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        let message = &last["response"]["output"][0];
        assert_eq!(message["status"], "incomplete", "{message}");
    }
}

#[tokio::test]
async fn tools_are_echoed_in_openai_s_shape() {
    let h = start().await;
    let r = create(
        &h,
        json!({"model": "gpt-4o-mini", "input": "hi",
            "tools": [{"type": "function", "name": "noop"}],
            "reasoning": {"summary": "auto"}}),
    )
    .await;
    assert_eq!(
        r["tools"],
        json!([{"type": "function", "name": "noop", "parameters": null, "strict": null}])
    );
    let (status, _, e) = send(
        &h,
        json!({"model": "gpt-4o-mini", "input": "hi", "reasoning": {"summary": "verbose"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["param"], "reasoning.summary");
}

/// `reasoning.effort` reaches each reasoning provider in its own terms, as the chat
/// route's `reasoning_effort` does.
#[tokio::test]
async fn reasoning_effort_reaches_gemini_vertex_and_bedrock_in_their_own_terms() {
    let h = start().await;
    for model in ["r-gemini", "r-vertex", "r-bedrock"] {
        let r = create(
            &h,
            json!({"model": model, "input": "hi", "reasoning": {"effort": "medium"}}),
        )
        .await;
        assert_eq!(r["status"], "completed", "{model}: {r}");
    }
    let gemini = recorded(&h, |r| {
        r.path.contains("gemini-3") && !r.path.contains("/publishers/")
    });
    let vertex = recorded(&h, |r| r.path.contains("/publishers/google/"));
    let bedrock = recorded(&h, |r| r.path.contains("/converse"));
    for (name, bodies) in [("gemini", &gemini), ("vertex", &vertex)] {
        assert_eq!(bodies.len(), 1, "{name}");
        assert_eq!(
            bodies[0]["generationConfig"]["thinkingConfig"],
            // Gemini 3 knows `low` and `high`; `medium` rounds up.
            json!({"thinkingLevel": "high"}),
            "{name}"
        );
    }
    assert_eq!(bedrock.len(), 1);
    assert_eq!(
        bedrock[0]["additionalModelRequestFields"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
}

// ---------------------------------------------------------------------------------------
// OpenAI and Azure deployments: the Responses API upstream

/// The ledger rows' (endpoint, deployment, prompt, completion, cached, cost) in order.
async fn ledger_rows(db: &sqlx::SqlitePool) -> Vec<(String, String, i64, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT endpoint, deployment, prompt_tokens, completion_tokens, cached_tokens, \
         cost_nano_usd FROM requests ORDER BY rowid",
    )
    .fetch_all(db)
    .await
    .expect("rows")
}

#[tokio::test]
async fn openai_and_azure_deployments_get_the_responses_request_plain_and_streamed() {
    let mut h = start().await;
    let cases = [
        ("gpt-4o-mini", "", "/v1/responses", "gpt-4o-mini"),
        (
            "azure-v1",
            "azurev1",
            "/azurev1/openai/v1/responses",
            "mini-v1",
        ),
        (
            "r-azure-responses",
            "aznew",
            "/aznew/openai/responses?api-version=2025-04-01-preview",
            "mini-new",
        ),
    ];
    for (model, instance, path, upstream) in cases {
        let r = create(
            &h,
            json!({"model": model, "input": "[[cached]] Say hello.", "instructions": "Be brief.",
                "tools": weather_tool(), "user": "u-1"}),
        )
        .await;
        assert!(r["id"].as_str().is_some_and(|id| id.starts_with("resp_")));
        assert_eq!(r["store"], true, "{r}");
        let u = &r["usage"];
        assert!(
            u["input_tokens_details"]["cached_tokens"].as_u64() > Some(0),
            "{u}"
        );
        let events = stream(
            &h,
            json!({"model": model, "input": "Say hello.", "stream": true}),
        )
        .await;
        let last = final_response(&events);
        check_schema("Response", &last);
        assert_eq!(last["id"], events[0]["response"]["id"]);
        assert!(!output_text(&last).is_empty());
        assert_eq!(paths_at(&h, instance), [path, path], "{model}");
        let bodies = responses_bodies_at(&h, instance);
        assert_eq!(bodies[0]["model"], upstream);
        assert_eq!(bodies[0]["input"], "[[cached]] Say hello.");
        assert_eq!(bodies[0]["instructions"], "Be brief.");
        assert_eq!(bodies[0]["tools"], weather_tool());
        assert!(bodies[0].get("include").is_none(), "not a reasoning model");
        assert_eq!(bodies[0]["user"], "u-1");
        // The gateway keeps what is stored; the upstream keeps nothing.
        assert_eq!(bodies[0]["store"], false);
        assert_eq!(bodies[1]["stream"], true);
        assert_eq!(bodies[1]["store"], false);
        h.sim.sim.clear_requests();
    }
    // Usage billed as the upstream reported it, on the responses endpoint.
    let db = h.finish().await;
    let rows = ledger_rows(&db).await;
    assert_eq!(rows.len(), 6);
    for (endpoint, _, prompt, completion, _, cost) in &rows {
        assert_eq!(endpoint, "responses");
        assert!(*prompt > 0 && *completion > 0 && *cost > 0, "{rows:?}");
    }
    assert!(
        rows.iter().any(|r| r.4 > 0),
        "cached tokens are billed: {rows:?}"
    );
    let estimated: Vec<(i64,)> = sqlx::query_as("SELECT usage_estimated FROM requests")
        .fetch_all(&db)
        .await
        .expect("rows");
    assert!(estimated.iter().all(|(e,)| *e == 0), "{estimated:?}");
}

#[tokio::test]
async fn native_usage_matches_the_ledger_and_reasoning_is_counted() {
    let mut h = start().await;
    let plain = create(
        &h,
        json!({"model": "r-o4", "input": "Think, then answer.", "reasoning": {"effort": "low"}}),
    )
    .await;
    assert_eq!(plain["output"][0]["type"], "reasoning", "{plain}");
    assert_eq!(
        plain["usage"]["output_tokens_details"]["reasoning_tokens"],
        64
    );
    let events = stream(
        &h,
        json!({"model": "r-o4", "input": "Think, then answer.", "reasoning": {"effort": "high"},
            "stream": true}),
    )
    .await;
    let streamed = final_response(&events);
    assert_eq!(
        streamed["usage"]["output_tokens_details"]["reasoning_tokens"],
        512
    );
    let bodies = responses_bodies(&h);
    assert_eq!(bodies[0]["reasoning"], json!({"effort": "low"}));
    assert_eq!(bodies[1]["reasoning"], json!({"effort": "high"}));
    // Stored nowhere upstream, the reasoning comes back encrypted to be sent back.
    for b in &bodies[..2] {
        assert_eq!(b["store"], false);
        assert_eq!(b["include"], json!(["reasoning.encrypted_content"]), "{b}");
    }
    // A reasoning effort the model does not take is the upstream's 400, in OpenAI's shape.
    let (status, _, e) = send(
        &h,
        json!({"model": "gpt-4o-mini", "input": "hi", "reasoning": {"effort": "low"}}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    check_schema("ErrorResponse", &e);
    let db = h.finish().await;
    let rows = ledger_rows(&db).await;
    for (row, r) in rows.iter().zip([&plain, &streamed]) {
        assert_eq!(row.2, r["usage"]["input_tokens"].as_i64().expect("input"));
        assert_eq!(row.3, r["usage"]["output_tokens"].as_i64().expect("output"));
    }
    // o4-mini at 1.10 / 4.40 USD per million tokens.
    let (_, _, prompt, completion, _, cost) = rows[0].clone();
    assert!(
        (cost - (prompt * 1_100 + completion * 4_400)).abs() <= 1,
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_native_attempt_fails_over_to_a_translated_kind_and_back() {
    let h = start().await;
    for stream in [false, true] {
        h.sim.sim.clear_requests();
        h.sim.sim.set_fault("primary", "*", Fault::error(503));
        let body =
            json!({"model": "r-openai-then-claude", "input": "Say hello.", "stream": stream});
        let res = post(&h, KEY, &body).send().await.expect("send");
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-switchyard-deployment"], "claude-45");
        assert_eq!(res.headers()["x-switchyard-attempts"], "2");
        let text = res.text().await.expect("body");
        let r = if stream {
            final_response(&events(&text))
        } else {
            serde_json::from_str(&text).expect("json")
        };
        check_schema("Response", &r);
        assert!(!output_text(&r).is_empty());
        // The OpenAI deployment was asked with the Responses API, Anthropic with Messages.
        assert_eq!(paths_at(&h, "primary"), ["/primary/v1/responses"]);
        assert_eq!(paths_at(&h, ""), ["/v1/messages"]);
    }
    // The other way round: Anthropic fails, OpenAI answers natively.
    h.sim.sim.clear_requests();
    h.sim
        .sim
        .set_fault("", "claude-sonnet-4-5", Fault::error(529).times(1));
    let (status, headers, r) = send(
        &h,
        json!({"model": "r-claude-then-openai", "input": "Say hello."}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(headers["x-switchyard-deployment"], "oa-mini");
    assert_eq!(paths_at(&h, ""), ["/v1/messages", "/v1/responses"]);
    // A native stream cut before its first event fails over: nothing was relayed.
    h.sim.sim.clear_requests();
    h.sim.sim.set_fault("primary", "*", Fault::cut(0));
    let events = stream(
        &h,
        json!({"model": "r-openai-then-claude", "input": "Say hello.", "stream": true}),
    )
    .await;
    assert_eq!(final_response(&events)["status"], "completed");
    assert_eq!(paths_at(&h, "primary"), ["/primary/v1/responses"]);
    assert_eq!(paths_at(&h, ""), ["/v1/messages"]);
}

#[tokio::test]
async fn stored_conversations_are_expanded_for_a_native_upstream() {
    let h = start().await;
    let first = create(
        &h,
        json!({"model": "gpt-4o-mini", "input": "My name is Ada."}),
    )
    .await;
    let second = create(
        &h,
        json!({"model": "gpt-4o-mini", "input": "What is my name?",
            "previous_response_id": first["id"]}),
    )
    .await;
    assert_eq!(second["previous_response_id"], first["id"]);
    let bodies = responses_bodies(&h);
    assert_eq!(bodies.len(), 2);
    // The simulator, like OpenAI with `store: false`, knows no earlier response: the
    // gateway sent the conversation itself.
    assert!(
        bodies[1].get("previous_response_id").is_none(),
        "{}",
        bodies[1]
    );
    let input = bodies[1]["input"].as_array().expect("items");
    assert_eq!(input.len(), 3, "{input:?}");
    assert_eq!(input[0]["content"][0]["text"], "My name is Ada.");
    assert_eq!(input[1], first["output"][0]);
    assert_eq!(input[2]["content"][0]["text"], "What is my name?");
    // The response is the gateway's: it is stored under the id the client got.
    let got: Value = h
        .client
        .get(format!(
            "{}/v1/responses/{}",
            h.base,
            second["id"].as_str().expect("id")
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(got, second);
    // A streamed continuation is stored too.
    let events = stream(
        &h,
        json!({"model": "gpt-4o-mini", "input": "And again?", "stream": true,
            "previous_response_id": second["id"]}),
    )
    .await;
    let last = final_response(&events);
    assert_eq!(last["previous_response_id"], second["id"]);
    let got: Value = h
        .client
        .get(format!(
            "{}/v1/responses/{}",
            h.base,
            last["id"].as_str().expect("id")
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(got["id"], last["id"]);
    assert_eq!(got["output"], last["output"]);
    assert_eq!(
        responses_bodies(&h)[2]["input"].as_array().map(Vec::len),
        Some(5)
    );
}

#[tokio::test]
async fn reasoning_state_of_other_providers_never_reaches_openai() {
    let h = start().await;
    // A Gemini 3 tool call: its thought signature rides in the call id.
    let first = create(
        &h,
        json!({"model": "r-gemini", "input": "Call get_weather for Paris, please.",
            "tools": weather_tool()}),
    )
    .await;
    let call = calls(&first)[0].clone();
    assert!(
        call["call_id"]
            .as_str()
            .is_some_and(|c| c.contains(".sy1.")),
        "{call}"
    );
    let mut input = vec![json!({"role": "user", "content": "Call get_weather for Paris, please."})];
    input.extend(first["output"].as_array().expect("output").clone());
    input
        .push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}));
    h.sim.sim.clear_requests();
    let second = create(
        &h,
        json!({"model": "gpt-4o-mini", "input": input, "tools": weather_tool()}),
    )
    .await;
    assert!(!output_text(&second).is_empty());
    // The OpenAI deployment got the translation, with the state stripped.
    assert!(responses_bodies(&h).is_empty());
    let sent = chat_bodies(&h);
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].to_string().contains(".sy1."), "{}", sent[0]);
}

/// An OpenAI-compatible server without `/responses` (`responses_api = false`) gets
/// Chat Completions, plain and streamed; the setting is refused on other kinds.
#[tokio::test]
async fn a_provider_without_the_responses_api_gets_chat_completions() {
    let h = start().await;
    let r = create(&h, json!({"model": "r-compat", "input": "Say hello."})).await;
    assert_eq!(r["status"], "completed", "{r}");
    let events = stream(
        &h,
        json!({"model": "r-compat", "input": "Say hello.", "stream": true}),
    )
    .await;
    assert_eq!(final_response(&events)["status"], "completed");
    assert_eq!(
        paths_at(&h, "compat"),
        ["/compat/v1/chat/completions", "/compat/v1/chat/completions"]
    );

    let bad = "[providers.p]\nkind = \"anthropic\"\napi_key = \"k\"\nresponses_api = true\n";
    let e = switchyard::Config::parse(bad, |_| None).expect_err("refused");
    assert!(e.to_string().contains("providers.p.responses_api"), "{e}");
}

/// `GET /v1/responses/{id}/input_items` as `key`, with `query`: status and body.
async fn input_items(h: &Harness, key: &str, id: &str, query: &str) -> (u16, Value) {
    let res = h
        .client
        .get(format!("{}/v1/responses/{id}/input_items{query}", h.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

fn item_ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {list}"))
        .iter()
        .map(|i| i["id"].as_str().expect("every item has an id").to_owned())
        .collect()
}

/// Follows `after` from `query` until `has_more` is false; the pages' ids.
async fn walk(h: &Harness, id: &str, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("?{query}&after={a}"),
            None => format!("?{query}"),
        };
        let (status, list) = input_items(h, KEY, id, &q).await;
        assert_eq!(status, 200, "{list}");
        let ids = item_ids(&list);
        assert_eq!(list["first_id"], json!(ids.first()), "{list}");
        assert_eq!(list["last_id"], json!(ids.last()), "{list}");
        pages.push(ids);
        if list["has_more"] != true {
            return pages;
        }
        after = list["last_id"].as_str().map(str::to_owned);
        assert!(pages.len() < 10, "no end: {pages:?}");
    }
}

#[tokio::test]
async fn input_items_are_listed_paged_both_ways_for_their_owner_only() {
    let h = start().await;
    let first = create(
        &h,
        json!({"model": "gpt-4o-mini", "input": [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "one"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}]},
        ]}),
    )
    .await;
    let first_id = first["id"].as_str().expect("id").to_owned();
    let second = create(
        &h,
        json!({"model": "gpt-4o-mini", "previous_response_id": first_id, "input": "three"}),
    )
    .await;
    let id = second["id"].as_str().expect("id").to_owned();

    // The default: everything the response was generated from, newest first, 20 a page.
    let (status, all) = input_items(&h, KEY, &id, "").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["object"], "list");
    assert_eq!(all["has_more"], false);
    let data = all["data"].as_array().expect("data").clone();
    assert_eq!(data.len(), 5, "{all}");
    assert_eq!(
        data[0]["content"],
        json!([{"type": "input_text", "text": "three"}])
    );
    assert_eq!(data[0]["type"], "message");
    assert_eq!(data[0]["role"], "user");
    // The first turn's output is part of the context, with its own id.
    assert_eq!(data[1]["id"], first["output"][0]["id"], "{all}");
    assert_eq!(
        data[3]["content"],
        json!([{"type": "input_text", "text": "one"}])
    );
    assert_eq!(data[4]["role"], "developer");
    let desc = item_ids(&all);
    let unique: std::collections::HashSet<_> = desc.iter().collect();
    assert_eq!(unique.len(), 5, "{desc:?}");
    assert_eq!(all["first_id"], json!(desc[0]));
    assert_eq!(all["last_id"], json!(desc[4]));
    // Ids are the same on every call, which is what makes cursors work.
    assert_eq!(input_items(&h, KEY, &id, "").await.1, all);
    let mut asc = desc.clone();
    asc.reverse();

    // Pages of two, following `after`, in both orders.
    let pages = walk(&h, &id, "limit=2").await;
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert_eq!(pages.concat(), desc);
    let pages = walk(&h, &id, "limit=2&order=asc").await;
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert_eq!(pages.concat(), asc);
    let pages = walk(&h, &id, "limit=5&order=asc").await;
    assert_eq!(pages, vec![asc.clone()]);

    // `before` pages back: the items nearest before the cursor, in the asked order.
    let (_, back) = input_items(
        &h,
        KEY,
        &id,
        &format!("?order=asc&limit=2&before={}", asc[4]),
    )
    .await;
    assert_eq!(item_ids(&back), asc[2..4].to_vec());
    assert_eq!(back["has_more"], true);
    let (_, back) = input_items(
        &h,
        KEY,
        &id,
        &format!("?order=asc&limit=2&before={}", asc[2]),
    )
    .await;
    assert_eq!(item_ids(&back), asc[0..2].to_vec());
    assert_eq!(back["has_more"], false);
    let (_, back) = input_items(&h, KEY, &id, &format!("?limit=1&before={}", desc[3])).await;
    assert_eq!(item_ids(&back), desc[2..3].to_vec());
    assert_eq!(back["has_more"], true);
    let (_, between) = input_items(
        &h,
        KEY,
        &id,
        &format!("?order=asc&after={}&before={}", asc[0], asc[3]),
    )
    .await;
    assert_eq!(item_ids(&between), asc[1..3].to_vec());
    assert_eq!(between["has_more"], false);

    // The first response lists its own three items.
    let (status, own) = input_items(&h, KEY, &first_id, "?order=asc").await;
    assert_eq!(status, 200);
    assert_eq!(own["data"].as_array().map(Vec::len), Some(3), "{own}");
    assert_eq!(
        own["data"][0]["content"],
        json!([{"type": "input_text", "text": "Be terse."}])
    );

    // Bad parameters are 400s naming them.
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=many", "limit"),
        ("?order=sideways", "order"),
        ("?after=msg_nope", "after"),
        ("?before=msg_nope", "before"),
    ] {
        let (status, e) = input_items(&h, KEY, &id, query).await;
        assert_eq!(status, 400, "{query}: {e}");
        check_schema("ErrorResponse", &e);
        assert_eq!(e["error"]["type"], "invalid_request_error", "{query}: {e}");
        assert_eq!(e["error"]["param"], param, "{query}: {e}");
    }
    let (status, _) = input_items(&h, KEY, &id, "?limit=100").await;
    assert_eq!(status, 200);

    // Another key, an unknown id and a deleted response: the same 404.
    let (status, theirs) = input_items(&h, OTHER_KEY, &id, "").await;
    assert_eq!(status, 404, "{theirs}");
    check_schema("ErrorResponse", &theirs);
    let (status, unknown) = input_items(&h, KEY, "resp_unknown", "").await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(theirs["error"]["code"], unknown["error"]["code"]);
    assert_eq!(
        theirs["error"]["message"],
        json!(format!("No response with id '{id}' was found."))
    );
    let res = h
        .client
        .get(format!("{}/v1/responses/{id}/input_items", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    let res = h
        .client
        .delete(format!("{}/v1/responses/{id}", h.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    assert_eq!(input_items(&h, KEY, &id, "").await.0, 404);
}

/// `(created_at_ms, expires_at_ms)` of stored response `id`.
async fn stored_times(db: &sqlx::SqlitePool, id: &str) -> (i64, i64) {
    sqlx::query_as("SELECT created_at_ms, expires_at_ms FROM responses WHERE id = ?")
        .bind(id)
        .fetch_one(db)
        .await
        .expect("row")
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[tokio::test]
async fn stored_responses_live_ledger_responses_ttl_days() {
    // The default: 30 days.
    let h = start().await;
    let made = create(&h, json!({"model": "gpt-4o-mini", "input": "hi"})).await;
    let id = made["id"].as_str().expect("id").to_owned();
    let url = format!("sqlite://{}", h.ledger.display());
    let db = sqlx::SqlitePool::connect(&url).await.expect("open ledger");
    let (created, expires) = stored_times(&db, &id).await;
    assert_eq!(expires - created, 30 * DAY_MS);
    drop(h);

    let h = Harness::start_edited(extra_config, 0, |text| {
        text.replacen("[ledger]\n", "[ledger]\nresponses_ttl_days = 2\n", 1)
    })
    .await;
    let made = create(&h, json!({"model": "gpt-4o-mini", "input": "hi"})).await;
    let id = made["id"].as_str().expect("id").to_owned();
    let url = format!("sqlite://{}", h.ledger.display());
    let db = sqlx::SqlitePool::connect(&url).await.expect("open ledger");
    let (created, expires) = stored_times(&db, &id).await;
    assert_eq!(expires - created, 2 * DAY_MS);
    assert_eq!(input_items(&h, KEY, &id, "").await.0, 200);
    // Once past its time the row is as good as gone, for every route.
    sqlx::query("UPDATE responses SET expires_at_ms = ? WHERE id = ?")
        .bind(created - 1)
        .bind(&id)
        .execute(&db)
        .await
        .expect("update");
    let (status, e) = input_items(&h, KEY, &id, "").await;
    assert_eq!(status, 404, "{e}");
    let res = h
        .client
        .get(format!("{}/v1/responses/{id}", h.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 404);
    let (status, _, e) = send(
        &h,
        json!({"model": "gpt-4o-mini", "input": "again", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 404, "{e}");
}
