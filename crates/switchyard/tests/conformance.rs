//! One conformance suite, stamped onto every provider kind by `conformance!`: the
//! gateway's OpenAI ingress in front of the simulator speaking that provider's own
//! protocol. Every provider must give OpenAI clients the same outcomes: statuses,
//! finish reasons, tool calls with JSON arguments, usage equal to what the upstream
//! reported (in responses, streams and the ledger), and upstream failures mapped
//! the same way.

mod common;
#[path = "conformance/ingress.rs"]
mod ingress;

use common::{sse_data, user, Harness, PATIENT_BREAKER};
use serde_json::{json, Value};
use sqlx::Row;
use switchyard_sim::schema_check;
use switchyard_sim::Fault;

use ingress::Ingress;

/// One provider under test: the logical model that reaches it, and how its
/// protocol says "overloaded"; and the ingress the client uses.
#[derive(Clone, Copy)]
struct Spec {
    ingress: Ingress,
    model: &'static str,
    /// The simulator instance the provider's base URL names (faults are per instance).
    instance: &'static str,
    overloaded_status: u16,
    /// Whether the simulator's protocol can fail inside a started stream.
    mid_stream_errors: bool,
    /// Where the upstream call must land: its path ends so, with this auth header.
    path_suffix: &'static str,
    auth_header: &'static str,
}

/// Providers, deployments and models for every kind, each model with a single
/// deployment and a single attempt, so failures surface as they are mapped.
fn extra_config(sim: &str) -> String {
    format!(
        r#"
{PATIENT_BREAKER}

[providers.c-anthropic]
kind = "anthropic"
base_url = "{sim}"
api_key = "sk-ant-sim"

[providers.c-bedrock]
kind = "bedrock"
base_url = "{sim}"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[providers.c-gemini]
kind = "gemini"
base_url = "{sim}"
api_key = "gemini-sim-key"

[providers.c-vertex]
kind = "vertex"
base_url = "{sim}"
project = "sim-project"
location = "us-central1"
api_key = "vertex-sim-token"

[providers.c-mistral]
kind = "mistral"
base_url = "{sim}/mistral/v1"
api_key = "mistral-sim-key"

[deployments.c-openai]
provider = "oa"
model = "gpt-4o-mini"

[deployments.c-azure]
provider = "az"
model = "mini-prod"

[deployments.c-anthropic]
provider = "c-anthropic"
model = "claude-haiku-4-5"

[deployments.c-bedrock]
provider = "c-bedrock"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"

[deployments.c-gemini]
provider = "c-gemini"
model = "gemini-2.5-flash"

[deployments.c-vertex]
provider = "c-vertex"
model = "gemini-2.5-pro"

[deployments.c-mistral]
provider = "c-mistral"
model = "mistral-small-latest"

[models.conf-openai]
deployments = ["c-openai"]
retry = {{ max_attempts = 1 }}

[models.conf-azure]
deployments = ["c-azure"]
retry = {{ max_attempts = 1 }}

[models.conf-anthropic]
deployments = ["c-anthropic"]
retry = {{ max_attempts = 1 }}

[models.conf-bedrock]
deployments = ["c-bedrock"]
retry = {{ max_attempts = 1 }}

[models.conf-gemini]
deployments = ["c-gemini"]
retry = {{ max_attempts = 1 }}

[models.conf-vertex]
deployments = ["c-vertex"]
retry = {{ max_attempts = 1 }}

[models.conf-mistral]
deployments = ["c-mistral"]
retry = {{ max_attempts = 1 }}
"#
    )
}

async fn start() -> Harness {
    Harness::start_with_sim(extra_config).await
}

async fn json_of(res: reqwest::Response) -> Value {
    let text = res.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]}
        }, "required": ["city"]}
    }})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {
            "timezone": {"type": "string"}
        }, "required": ["timezone"]}
    }})
}

fn schema_of(tool: &Value) -> &Value {
    &tool["function"]["parameters"]
}

/// Asserts a tool call is well formed and its arguments valid against the tool.
fn assert_call(call: &Value, tool: &Value) {
    assert_eq!(call["type"], "function", "{call}");
    assert!(
        call["id"].as_str().is_some_and(|id| !id.is_empty()),
        "tool call without id: {call}"
    );
    assert_eq!(call["function"]["name"], tool["function"]["name"], "{call}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("string"))
        .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {call}"));
    schema_check::validate(schema_of(tool), &args)
        .unwrap_or_else(|e| panic!("arguments do not fit the schema ({e}): {call}"));
}

fn usage_numbers(u: &Value) -> (i64, i64, i64) {
    let p = u["prompt_tokens"].as_i64().expect("prompt_tokens");
    let c = u["completion_tokens"].as_i64().expect("completion_tokens");
    let t = u["total_tokens"].as_i64().expect("total_tokens");
    assert_eq!(p + c, t, "total = prompt + completion: {u}");
    assert!(p > 0, "prompt tokens reported: {u}");
    (p, c, t)
}

/// A stream's chunks (JSON), checking it ends with `[DONE]`.
async fn stream_chunks(res: reqwest::Response) -> Vec<Value> {
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let text = res.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk not JSON ({e}): {d}")))
        .collect()
}

/// Content, finish reasons and tool calls (rebuilt from their deltas) of a stream.
struct Assembled {
    content: String,
    finish_reasons: Vec<String>,
    tool_calls: Vec<Value>,
    usage: Option<Value>,
}

fn assemble(chunks: &[Value]) -> Assembled {
    let mut out = Assembled {
        content: String::new(),
        finish_reasons: Vec::new(),
        tool_calls: Vec::new(),
        usage: None,
    };
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(
        first["role"], "assistant",
        "role comes first: {}",
        chunks[0]
    );
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        let choices = chunk["choices"].as_array().expect("choices");
        if choices.is_empty() {
            assert!(
                chunk["usage"].is_object(),
                "choice-less chunk is usage: {chunk}"
            );
            assert_eq!(i, chunks.len() - 1, "usage chunk comes last");
            out.usage = Some(chunk["usage"].clone());
            continue;
        }
        assert!(
            out.finish_reasons.is_empty(),
            "nothing after the finish reason but usage: {chunk}"
        );
        let choice = &choices[0];
        if let Some(text) = choice["delta"]["content"].as_str() {
            out.content.push_str(text);
        }
        for delta in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = delta["index"]
                .as_u64()
                .expect("tool call delta has an index") as usize;
            if index == out.tool_calls.len() {
                assert!(
                    delta["id"].is_string(),
                    "first fragment has the id: {delta}"
                );
                assert!(
                    delta["function"]["name"].is_string(),
                    "first fragment has the name: {delta}"
                );
                out.tool_calls.push(json!({
                    "id": delta["id"], "type": "function",
                    "function": {"name": delta["function"]["name"], "arguments": ""}
                }));
            }
            assert!(
                index < out.tool_calls.len(),
                "indexes count up from 0: {delta}"
            );
            if let Some(fragment) = delta["function"]["arguments"].as_str() {
                let args = &mut out.tool_calls[index]["function"]["arguments"];
                let joined = format!("{}{fragment}", args.as_str().unwrap_or(""));
                *args = Value::String(joined);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            out.finish_reasons.push(reason.to_owned());
        }
    }
    out
}

async fn plain(spec: Spec) {
    let h = start().await;
    let res = spec
        .ingress
        .chat(
            &h,
            json!({"model": spec.model, "messages": user("Hello there, how are you?")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    assert_eq!(body["object"], "chat.completion", "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(
        choice["message"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    assert_eq!(choice["finish_reason"], "stop");
    usage_numbers(&body["usage"]);
    // The call went out in the provider's own protocol.
    let seen = h.sim.sim.requests(spec.instance);
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].path.ends_with(spec.path_suffix),
        "{} does not end with {}",
        seen[0].path,
        spec.path_suffix
    );
    assert!(
        seen[0].header(spec.auth_header).is_some(),
        "no {} header",
        spec.auth_header
    );
}

async fn stream(spec: Spec) {
    let h = start().await;
    let messages = user("Tell me about the river");
    let plain = json_of(
        spec.ingress
            .chat(&h, json!({"model": spec.model, "messages": messages}))
            .await,
    )
    .await;
    let res = spec
        .ingress
        .chat(
            &h,
            json!({"model": spec.model, "messages": messages, "stream": true}),
        )
        .await;
    let chunks = stream_chunks(res).await;
    let s = assemble(&chunks);
    assert_eq!(s.finish_reasons, ["stop"]);
    assert!(s.usage.is_none(), "usage only when asked");
    assert_eq!(
        s.content,
        plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("text"),
        "the simulator streams the same answer"
    );
}

async fn tool_call(spec: Spec) {
    let h = start().await;
    let tool = weather_tool();
    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": user("What should I wear in Oslo today?"),
                "tools": [tool, time_tool()],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
            }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1, "{body}");
    assert_call(&calls[0], &tool);
    usage_numbers(&body["usage"]);
}

async fn parallel_tool_calls(spec: Spec) {
    let h = start().await;
    let (weather, time) = (weather_tool(), time_tool());
    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": user("Use get_weather for Oslo and get_time for Europe/Oslo"),
                "tools": [weather, time],
                "tool_choice": "auto"
            }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 2, "{body}");
    assert_call(&calls[0], &weather);
    assert_call(&calls[1], &time);
    assert_ne!(calls[0]["id"], calls[1]["id"]);
}

async fn tool_round_trip(spec: Spec) {
    let h = start().await;
    let (weather, time) = (weather_tool(), time_tool());
    let mut messages = user("Use get_weather for Oslo and get_time for Europe/Oslo");
    let first = json_of(
        spec.ingress
            .chat(
                &h,
                json!({"model": spec.model, "messages": messages, "tools": [weather, time]}),
            )
            .await,
    )
    .await;
    let assistant = first["choices"][0]["message"].clone();
    let calls = assistant["tool_calls"]
        .as_array()
        .expect("tool calls")
        .clone();
    assert_eq!(calls.len(), 2, "{first}");
    let list = messages.as_array_mut().expect("array");
    list.push(assistant);
    for (call, result) in calls.iter().zip(["{\"temp_c\": 4}", "12:30"]) {
        list.push(json!({"role": "tool", "tool_call_id": call["id"], "content": result}));
    }
    let res = spec
        .ingress
        .chat(
            &h,
            json!({"model": spec.model, "messages": messages, "tools": [weather, time]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{body}");
    assert!(choice["message"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert!(choice["message"]
        .get("tool_calls")
        .is_none_or(Value::is_null));
}

/// A history written by another provider (a fallback mid-conversation): its
/// tool-call ids are in that provider's format, and must still pair up.
async fn tool_round_trip_foreign_ids(spec: Spec) {
    let h = start().await;
    let (weather, time) = (weather_tool(), time_tool());
    let messages = json!([
        {"role": "user", "content": "Use get_weather for Oslo and get_time for Europe/Oslo"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_Q2x9vB7mN4kL1pR8sT3wY6zA", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
            {"id": "toolu_01.Xy-Z", "type": "function",
             "function": {"name": "get_time", "arguments": "{\"timezone\":\"Europe/Oslo\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_Q2x9vB7mN4kL1pR8sT3wY6zA", "content": "{\"temp_c\": 4}"},
        {"role": "tool", "tool_call_id": "toolu_01.Xy-Z", "content": "12:30"}
    ]);
    let res = spec
        .ingress
        .chat(
            &h,
            json!({"model": spec.model, "messages": messages, "tools": [weather, time]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
}

/// An upstream error after the stream started: one OpenAI error event, no [DONE].
async fn stream_error_mid_stream(spec: Spec) {
    let h = start().await;
    h.sim
        .sim
        .set_fault(spec.instance, "*", Fault::error(503).mid_stream(3));
    let res = spec.ingress.chat(&h, json!({"model": spec.model, "messages": user("[[len:30]] Tell me more"), "stream": true}))
        .await;
    if !spec.mid_stream_errors {
        // OpenAI-style upstreams report the error before the stream.
        assert_eq!(res.status(), 503);
        return;
    }
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(data.last().expect("events")).expect("JSON");
    assert!(last["error"]["message"].is_string(), "{text}");
    assert!(last["error"]["type"].is_string(), "{text}");
    assert_ne!(
        last["error"]["code"], "stream_cut",
        "the upstream's own error event is translated, not lost: {text}"
    );
    let first: Value = serde_json::from_str(&data[0]).expect("JSON");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
}

async fn stream_with_tools(spec: Spec) {
    let h = start().await;
    let (weather, time) = (weather_tool(), time_tool());
    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": user("Use get_weather for Oslo and get_time for Europe/Oslo"),
                "tools": [weather, time],
                "stream": true
            }),
        )
        .await;
    let s = assemble(&stream_chunks(res).await);
    assert_eq!(s.finish_reasons, ["tool_calls"]);
    assert_eq!(s.tool_calls.len(), 2);
    assert_call(&s.tool_calls[0], &weather);
    assert_call(&s.tool_calls[1], &time);
}

/// A 1×1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

async fn image_input(spec: Spec) {
    let h = start().await;
    let text_only = json_of(
        spec.ingress
            .chat(
                &h,
                json!({"model": spec.model, "messages": user("Describe this picture")}),
            )
            .await,
    )
    .await;
    let res = spec.ingress.chat(&h, json!({"model": spec.model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this picture"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}"), "detail": "low"}}
        ]}]}))
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let (with_image, _, _) = usage_numbers(&body["usage"]);
    let (without, _, _) = usage_numbers(&text_only["usage"]);
    assert!(
        with_image > without,
        "the image reached the upstream: {with_image} vs {without}"
    );
}

async fn json_mode(spec: Spec) {
    let h = start().await;
    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": user("Give me a JSON object describing a lantern"),
                "response_format": {"type": "json_object"}
            }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    let v: Value =
        serde_json::from_str(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    assert!(v.is_object(), "{content}");

    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "lumens": {"type": "integer", "minimum": 1}
    }, "required": ["name", "lumens"], "additionalProperties": false});
    let res = spec.ingress.chat(&h, json!({
            "model": spec.model,
            "messages": user("Describe a lantern"),
            "response_format": {"type": "json_schema", "json_schema": {"name": "lantern", "schema": schema, "strict": true}}
        }))
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    let v: Value =
        serde_json::from_str(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    schema_check::validate(&schema, &v).unwrap_or_else(|e| panic!("{e}: {content}"));
}

async fn stop_sequence(spec: Spec) {
    let h = start().await;
    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": user("[[echo]] alpha STOP beta"),
                "stop": ["STOP"]
            }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{body}");
    let content = choice["message"]["content"].as_str().expect("text");
    assert_eq!(content.trim(), "alpha", "{body}");
}

async fn max_tokens(spec: Spec) {
    let h = start().await;
    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": user("[[len:40]] Tell me a long story"),
                "max_tokens": 5
            }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    let (_, completion, _) = usage_numbers(&body["usage"]);
    assert_eq!(completion, 5, "{body}");

    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": user("[[len:40]] Tell me a long story"),
                "max_completion_tokens": 5,
                "stream": true
            }),
        )
        .await;
    let s = assemble(&stream_chunks(res).await);
    assert_eq!(s.finish_reasons, ["length"]);
}

async fn stream_usage(spec: Spec) {
    let mut h = start().await;
    let messages = user("[[cached]] Count the lanterns by the railway");
    let plain = json_of(
        spec.ingress
            .chat(&h, json!({"model": spec.model, "messages": messages}))
            .await,
    )
    .await;
    let res = spec
        .ingress
        .chat(
            &h,
            json!({
                "model": spec.model,
                "messages": messages,
                "stream": true,
                "stream_options": {"include_usage": true}
            }),
        )
        .await;
    let request_id = res.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let s = assemble(&stream_chunks(res).await);
    let usage = s.usage.expect("a usage chunk when asked");
    let (p, c, _) = usage_numbers(&usage);
    assert_eq!(usage_numbers(&plain["usage"]), usage_numbers(&usage));
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_i64()
        .unwrap_or(0);
    assert_eq!(
        cached,
        plain["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_i64()
            .unwrap_or(0)
    );
    assert!(cached > 0, "the simulator reported cached tokens: {usage}");

    // A stream whose client did not ask for usage is billed from the upstream's too.
    let quiet = spec
        .ingress
        .chat(
            &h,
            json!({"model": spec.model, "messages": messages, "stream": true}),
        )
        .await;
    let quiet_id = quiet.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(assemble(&stream_chunks(quiet).await).usage.is_none());

    let db = h.finish().await;
    for id in [request_id, quiet_id] {
        let row = sqlx::query("SELECT * FROM requests WHERE request_id = ?")
            .bind(&id)
            .fetch_one(&db)
            .await
            .expect("ledger row");
        assert_eq!(row.get::<i64, _>("prompt_tokens"), p);
        assert_eq!(row.get::<i64, _>("completion_tokens"), c);
        assert_eq!(row.get::<i64, _>("cached_tokens"), cached);
        assert_eq!(row.get::<i64, _>("usage_estimated"), 0);
    }
}

async fn upstream_429(spec: Spec) {
    let h = start().await;
    h.sim
        .sim
        .set_fault(spec.instance, "*", Fault::error(429).retry_after(7));
    let res = spec
        .ingress
        .chat(&h, json!({"model": spec.model, "messages": user("Hello")}))
        .await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "7");
    let body = json_of(res).await;
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    // The stream is refused the same way before it starts.
    let res = spec
        .ingress
        .chat(
            &h,
            json!({"model": spec.model, "messages": user("Hello"), "stream": true}),
        )
        .await;
    assert_eq!(res.status(), 429);
}

async fn upstream_5xx(spec: Spec) {
    let h = start().await;
    h.sim.sim.set_fault(spec.instance, "*", Fault::error(500));
    let res = spec
        .ingress
        .chat(&h, json!({"model": spec.model, "messages": user("Hello")}))
        .await;
    assert_eq!(res.status(), 502);
    let body = json_of(res).await;
    assert_eq!(body["error"]["type"], "server_error", "{body}");

    h.sim
        .sim
        .set_fault(spec.instance, "*", Fault::error(spec.overloaded_status));
    let res = spec
        .ingress
        .chat(
            &h,
            json!({"model": spec.model, "messages": user("Hello"), "stream": true}),
        )
        .await;
    assert_eq!(
        res.status(),
        503,
        "overloaded ({}) is 503",
        spec.overloaded_status
    );
}

/// `n` is honoured where the protocol has it (Gemini's `candidateCount`), and refused
/// with a client error where it has not.
#[tokio::test]
async fn several_choices_where_the_protocol_has_them() {
    let h = start().await;
    for model in ["conf-gemini", "conf-vertex", "conf-openai"] {
        let res = h
            .chat(json!({"model": model, "messages": user("Tell me about the river"), "n": 2}))
            .await;
        assert_eq!(res.status(), 200, "{model}");
        let body = json_of(res).await;
        let choices = body["choices"].as_array().expect("choices");
        assert_eq!(choices.len(), 2, "{model}: {body}");
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i, "{model}");
            assert!(c["message"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty()));
        }
        usage_numbers(&body["usage"]);
    }
    let res = h
        .chat(json!({"model": "conf-anthropic", "messages": user("Hi"), "n": 2}))
        .await;
    assert_eq!(res.status(), 400);
    let body = json_of(res).await;
    assert_eq!(body["error"]["code"], "unsupported_by_deployment", "{body}");
}

/// The cases, stamped with a `spec()` in scope. JSON mode is OpenAI-ingress only:
/// the Anthropic Messages request the gateway accepts has no JSON mode to express it.
macro_rules! cases {
    ($($case:ident),* $(,)?) => { $(
        #[tokio::test] async fn $case() { crate::$case(spec()).await }
    )* };
}

macro_rules! conformance {
    ($($provider:ident: $instance:expr, $overloaded:expr, $mid_stream:expr, $path:expr, $auth:expr);* $(;)?) => { $(
        mod $provider {
            use super::*;
            fn spec() -> Spec {
                Spec {
                    ingress: Ingress::OpenAi,
                    model: concat!("conf-", stringify!($provider)),
                    instance: $instance,
                    overloaded_status: $overloaded,
                    mid_stream_errors: $mid_stream,
                    path_suffix: $path,
                    auth_header: $auth,
                }
            }
            cases!(
                plain, stream, tool_call, parallel_tool_calls, tool_round_trip,
                tool_round_trip_foreign_ids, stream_with_tools, stream_error_mid_stream,
                image_input, json_mode, stop_sequence, max_tokens, stream_usage,
                upstream_429, upstream_5xx,
            );

            /// The same cases through the Anthropic ingress (`POST /v1/messages`).
            mod messages {
                use super::super::*;
                fn spec() -> Spec {
                    Spec { ingress: Ingress::Messages, ..super::spec() }
                }
                cases!(
                    plain, stream, tool_call, parallel_tool_calls, tool_round_trip,
                    tool_round_trip_foreign_ids, stream_with_tools, stream_error_mid_stream,
                    image_input, stop_sequence, max_tokens, stream_usage,
                    upstream_429, upstream_5xx,
                );
            }
        }
    )* };
}

// provider: simulator instance, the status its protocol uses for "overloaded",
// whether it can fail inside a started stream, the end of the upstream path, the
// auth header.
conformance! {
    openai: "", 503, false, "/v1/chat/completions", "authorization";
    azure: "azure", 503, false, "/openai/deployments/mini-prod/chat/completions", "api-key";
    anthropic: "", 529, true, "/v1/messages", "x-api-key";
    bedrock: "", 503, true, "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse", "x-amz-date";
    gemini: "", 503, true, "/v1beta/models/gemini-2.5-flash:generateContent", "x-goog-api-key";
    vertex: "", 503, true, "/v1/projects/sim-project/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent", "authorization";
    mistral: "", 503, true, "/mistral/v1/chat/completions", "authorization";
}
