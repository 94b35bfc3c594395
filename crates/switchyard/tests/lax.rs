//! Lax OpenAI-compatible upstreams: a small server written for these tests plays what
//! self-hosted servers (vLLM, llama.cpp, Ollama, TGI, in-house ones) do differently
//! from OpenAI, chosen by the model name it is asked for. The gateway must still give
//! clients OpenAI's schema (checked against OpenAI's OpenAPI document: the extract in
//! `tests/fixtures/openai-chat-schemas.json`), usage in streams that asked for it, and
//! the ledger estimated rows with non-zero completion tokens and cost.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use common::Harness;
use serde_json::{json, Value};
use sqlx::Row;
use switchyard::limits::{estimate_chat, text_tokens};
use switchyard::types::chat::ChatRequest;
use switchyard_sim::schema_check;
use tokio::net::TcpListener;

const PROMPT: &str = "Say hello to a lax server.";
const TEXT: [&str; 3] = ["", "Hello from", " a lax server."];
const REASONING: &str = "The user greets me.";
const TOOL_ARGS: &str = r#"{"city":"Paris","unit":"celsius"}"#;

/// The requests the lax server received, as JSON.
type Seen = Arc<Mutex<Vec<Value>>>;

async fn start_lax() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(lax_chat))
        .with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind lax");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("lax server");
    });
    (format!("http://{addr}/v1"), seen)
}

fn reply(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body.into())
        .expect("response")
}

/// One SSE event as the lax server frames it: `data:` without a space, CRLF line ends.
fn event(out: &mut String, chunk: &Value) {
    out.push_str("data:");
    out.push_str(&chunk.to_string());
    out.push_str("\r\n\r\n");
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "lax-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "lax-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

async fn lax_chat(State(seen): State<Seen>, body: String) -> Response {
    let req: Value = serde_json::from_str(&body).unwrap_or_default();
    seen.lock().expect("lock").push(req.clone());
    let stream = req["stream"] == true;
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    match (model.as_str(), stream) {
        // No id, object, created, model, usage, index, logprobs, finish reason or
        // refusal; extra fields.
        ("bare", false) => reply(
            200,
            "application/json",
            json!({"choices": [{"message": {"content": TEXT.concat(), "reasoning_content": REASONING},
                "stop_reason": null}]})
            .to_string(),
        ),
        // Every stream quirk at once: keep-alive comments, `data:` without a space,
        // CRLF, reasoning_content, a finish-reason chunk without content carrying
        // vLLM's stop_reason, no usage (include_usage ignored) and no [DONE].
        ("bare", true) => {
            let mut out = String::from(": keep-alive\r\n\r\n");
            event(&mut out, &chunk(json!({"role": "assistant", "content": TEXT[0]}), None));
            out.push_str(": keep-alive\r\n\r\n");
            event(
                &mut out,
                &chunk(json!({"content": TEXT[1], "reasoning_content": REASONING}), None),
            );
            event(&mut out, &chunk(json!({"content": TEXT[2]}), None));
            let mut last = chunk(json!({}), Some("stop"));
            last["choices"][0]["stop_reason"] = Value::Null;
            event(&mut out, &last);
            reply(200, "text/event-stream", out)
        }
        // Complete answers with usage of their own, which must be kept as sent.
        ("counted", false) => reply(
            200,
            "application/json",
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
            .to_string(),
        ),
        ("counted", true) => {
            let mut out = String::new();
            event(&mut out, &chunk(json!({"role": "assistant", "content": "hi"}), None));
            event(&mut out, &chunk(json!({}), Some("stop")));
            let mut usage = chunk(json!({}), None);
            usage["choices"] = json!([]);
            usage["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
            event(&mut out, &usage);
            out.push_str("data: [DONE]\r\n\r\n");
            reply(200, "text/event-stream", out)
        }
        ("tools", false) => reply(
            200,
            "application/json",
            json!({"id": "lax-t", "object": "chat.completion", "created": 1_700_000_000, "model": "lax-model",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": TOOL_ARGS}}]}}]})
            .to_string(),
        ),
        ("tools", true) => {
            let mut out = String::new();
            event(
                &mut out,
                &chunk(
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}]}),
                    None,
                ),
            );
            let (a, b) = TOOL_ARGS.split_at(10);
            for part in [a, b] {
                event(
                    &mut out,
                    &chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}), None),
                );
            }
            event(&mut out, &chunk(json!({}), Some("tool_calls")));
            out.push_str("data: [DONE]\n\n");
            reply(200, "text/event-stream", out)
        }
        // Content, then the body ends cleanly: no finish reason, no [DONE].
        ("bare-cut", true) => {
            let mut out = String::new();
            event(&mut out, &chunk(json!({"role": "assistant", "content": TEXT[1]}), None));
            event(&mut out, &chunk(json!({"content": TEXT[2]}), None));
            reply(200, "text/event-stream", out)
        }
        // Tool calls without id or type (and, streamed, without index), in chunks
        // without id, object, created, model, choices[].index or finish_reason.
        ("anon", false) => reply(
            200,
            "application/json",
            json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"function": {"name": "get_weather", "arguments": TOOL_ARGS}},
                {"function": {"name": "get_time", "arguments": "{}"}}]}}]})
            .to_string(),
        ),
        ("anon", true) => {
            let mut out = String::new();
            event(&mut out, &json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]}));
            event(
                &mut out,
                &json!({"choices": [{"delta": {"tool_calls": [
                    {"function": {"name": "get_weather", "arguments": TOOL_ARGS}},
                    {"function": {"name": "get_time", "arguments": "{}"}}]}}]}),
            );
            event(&mut out, &json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}));
            out.push_str("data: [DONE]\n\n");
            reply(200, "text/event-stream", out)
        }
        // Usage with prompt_tokens only.
        ("partial", false) => reply(
            200,
            "application/json",
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT.concat()},
                "finish_reason": "stop"}], "usage": {"prompt_tokens": 11}})
            .to_string(),
        ),
        ("partial", true) => {
            let mut out = String::new();
            event(&mut out, &chunk(json!({"role": "assistant", "content": TEXT.concat()}), None));
            event(&mut out, &chunk(json!({}), Some("stop")));
            let mut usage = chunk(json!({}), None);
            usage["choices"] = json!([]);
            usage["usage"] = json!({"prompt_tokens": 11});
            event(&mut out, &usage);
            out.push_str("data: [DONE]\n\n");
            reply(200, "text/event-stream", out)
        }
        // Errors in the shapes such servers and their proxies use.
        ("detail", _) => reply(
            400,
            "application/json",
            r#"{"detail":"max_tokens must be at most 4096 on worker vllm-2.gpu.internal"}"#,
        ),
        ("detail-list", _) => reply(
            422,
            "application/json",
            r#"{"detail":[{"loc":["body","messages",0,"role"],"msg":"Input should be 'user' or 'assistant'","type":"literal_error"}]}"#,
        ),
        ("text-400", _) => reply(
            400,
            "text/plain",
            "Invalid request: prompt too long for worker at 10.1.2.3:8000\nTraceback: ...",
        ),
        ("html-400", _) => reply(
            400,
            "text/html",
            "<html><body><h1>400 Bad Request</h1><p>ingress-3.corp.internal</p></body></html>",
        ),
        ("html-502", _) => reply(
            502,
            "text/html",
            "<html><head><title>502 Bad Gateway</title></head><body><center>nginx at lb-7.corp.internal</center></body></html>",
        ),
        ("text-503", _) => reply(
            503,
            "text/plain; charset=utf-8",
            "no healthy upstream: vllm-1.gpu.internal:8000",
        ),
        _ => reply(404, "application/json", r#"{"detail":"Not Found"}"#),
    }
}

fn lax_config(lax: &str) -> String {
    let mut out = format!("[providers.lax]\nkind = \"openai\"\nbase_url = \"{lax}\"\n\n");
    for name in [
        "bare",
        "bare-cut",
        "anon",
        "partial",
        "counted",
        "tools",
        "detail",
        "detail-list",
        "text-400",
        "html-400",
        "html-502",
        "text-503",
    ] {
        out.push_str(&format!(
            "[deployments.lax-{name}]\nprovider = \"lax\"\nmodel = \"{name}\"\nprice = {{ input = 1.0, output = 2.0 }}\n\n[models.lax-{name}]\ndeployments = [\"lax-{name}\"]\n\n"
        ));
    }
    out.push_str("[models.lax-fallback]\ndeployments = [\"lax-text-503\", \"lax-bare\"]\n");
    out
}

async fn start() -> (Harness, Seen) {
    let (lax, seen) = start_lax().await;
    let h = Harness::start_with(&format!("{}{}", common::PATIENT_BREAKER, lax_config(&lax))).await;
    (h, seen)
}

fn schemas() -> Value {
    serde_json::from_str(include_str!("fixtures/openai-chat-schemas.json")).expect("schemas")
}

/// Validates `value` against OpenAI's schema `name`.
fn check_schema(name: &str, value: &Value) {
    let mut root = schemas();
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    schema_check::validate(&root, value)
        .unwrap_or_else(|e| panic!("not a valid {name}: {e}\n{value:#}"));
}

fn request(model: &str, stream: bool, include_usage: bool) -> Value {
    let mut req = json!({"model": model, "messages": [{"role": "user", "content": PROMPT}]});
    if stream {
        req["stream"] = json!(true);
        if include_usage {
            req["stream_options"] = json!({"include_usage": true});
        }
    }
    req
}

fn prompt_estimate(req: &Value) -> u64 {
    let parsed: ChatRequest = serde_json::from_value(req.clone()).expect("request");
    estimate_chat(&parsed, 0).prompt
}

fn chars(s: &str) -> u64 {
    s.chars().count() as u64
}

/// A stream's `data:` payloads, in order (`[DONE]` as a string).
async fn stream_events(res: reqwest::Response) -> Vec<Value> {
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("frame {e:?}"));
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
        })
        .collect()
}

struct LedgerRow {
    prompt: i64,
    completion: i64,
    estimated: i64,
    cost: i64,
    error: Option<String>,
}

async fn ledger_rows(h: &mut Harness) -> Vec<LedgerRow> {
    let db = h.finish().await;
    sqlx::query(
        "SELECT prompt_tokens, completion_tokens, usage_estimated, cost_nano_usd, error_code FROM requests ORDER BY started_at_ms, rowid",
    )
    .fetch_all(&db)
    .await
    .expect("rows")
    .iter()
    .map(|r| LedgerRow {
        prompt: r.get(0),
        completion: r.get(1),
        estimated: r.get(2),
        cost: r.get(3),
        error: r.get(4),
    })
    .collect()
}

/// Price of the lax deployments: $1 in, $2 out per million tokens.
fn cost(prompt: u64, completion: u64) -> i64 {
    i64::try_from(prompt * 1_000 + completion * 2_000).expect("fits")
}

#[tokio::test]
async fn a_bare_answer_is_completed_and_its_usage_estimated() {
    let (mut h, _) = start().await;
    let req = request("lax-bare", false, false);
    let res = h.chat(req.clone()).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    check_schema("CreateChatCompletionResponse", &body);
    assert!(body["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(
        body["model"], "bare",
        "the upstream model, as the upstream did not name one"
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["content"], TEXT.concat());
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        choice["message"]["reasoning_content"], REASONING,
        "extra fields pass"
    );
    assert!(
        choice.get("stop_reason").is_some(),
        "extra fields pass: {choice}"
    );
    let prompt = prompt_estimate(&req);
    let completion = text_tokens(chars(&TEXT.concat()) + chars(REASONING));
    assert!(completion > 0);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    );
    let rows = ledger_rows(&mut h).await;
    let [row] = rows.as_slice() else {
        panic!("one row");
    };
    assert_eq!(
        (row.prompt, row.completion, row.estimated),
        (prompt as i64, completion as i64, 1)
    );
    assert_eq!(row.cost, cost(prompt, completion));
    assert!(row.cost > 0);
}

#[tokio::test]
async fn a_stream_without_usage_or_done_ends_with_the_usage_chunk_asked_for() {
    let (mut h, seen) = start().await;
    let req = request("lax-bare", true, true);
    let events = stream_events(h.chat(req.clone()).await).await;
    let (last, chunks) = events.split_last().expect("events");
    assert_eq!(
        last, "[DONE]",
        "complete after the finish reason: {events:?}"
    );
    for c in chunks {
        check_schema("CreateChatCompletionStreamResponse", c);
    }
    let (usage_chunk, content) = chunks.split_last().expect("chunks");
    let text: String = content
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, TEXT.concat());
    assert!(content
        .iter()
        .any(|c| c["choices"][0]["delta"]["reasoning_content"] == REASONING));
    let finish = content.last().expect("finish chunk");
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(
        finish["choices"][0].get("stop_reason").is_some(),
        "{finish}"
    );
    let prompt = prompt_estimate(&req);
    let completion = text_tokens(chars(&TEXT.concat()) + chars(REASONING));
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["id"], "lax-1", "in the stream's identity");
    assert_eq!(usage_chunk["model"], "lax-model");
    assert_eq!(usage_chunk["created"], 1_700_000_000);
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    );
    // The gateway asked the upstream for usage; the upstream ignored it.
    let upstream = seen.lock().expect("lock").clone();
    assert_eq!(upstream[0]["stream_options"]["include_usage"], true);
    let rows = ledger_rows(&mut h).await;
    let [row] = rows.as_slice() else {
        panic!("one row");
    };
    assert_eq!(row.error, None, "not a cut stream");
    assert_eq!(
        (row.prompt, row.completion, row.estimated),
        (prompt as i64, completion as i64, 1)
    );
    assert_eq!(row.cost, cost(prompt, completion));
}

#[tokio::test]
async fn a_stream_that_did_not_ask_for_usage_gets_none_but_is_billed() {
    let (mut h, _) = start().await;
    let events = stream_events(h.chat(request("lax-bare", true, false)).await).await;
    assert_eq!(events.last().expect("events"), "[DONE]");
    assert!(
        events
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null)),
        "{events:?}"
    );
    for c in events.iter().filter(|e| e.is_object()) {
        check_schema("CreateChatCompletionStreamResponse", c);
    }
    let rows = ledger_rows(&mut h).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].estimated, 1);
    assert!(rows[0].completion > 0 && rows[0].cost > 0);
}

#[tokio::test]
async fn the_upstreams_own_usage_is_never_replaced() {
    let (mut h, _) = start().await;
    let res = h.chat(request("lax-counted", false, false)).await;
    let body: Value = res.json().await.expect("json");
    check_schema("CreateChatCompletionResponse", &body);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    let events = stream_events(h.chat(request("lax-counted", true, true)).await).await;
    let usage: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("usage").is_some_and(Value::is_object))
        .collect();
    assert_eq!(usage.len(), 1, "{events:?}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], 7);
    assert_eq!(events.last().expect("events"), "[DONE]");
    let rows = ledger_rows(&mut h).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!((row.prompt, row.completion, row.estimated), (11, 7, 0));
        assert_eq!(row.cost, cost(11, 7));
    }
}

#[tokio::test]
async fn tool_call_arguments_count_in_the_estimate() {
    let (mut h, _) = start().await;
    let req = request("lax-tools", false, false);
    let body: Value = h.chat(req.clone()).await.json().await.expect("json");
    check_schema("CreateChatCompletionResponse", &body);
    let completion = text_tokens(chars("get_weather") + chars(TOOL_ARGS));
    assert_eq!(body["usage"]["completion_tokens"], completion);
    let events = stream_events(h.chat(request("lax-tools", true, true)).await).await;
    for c in events.iter().filter(|e| e.is_object()) {
        check_schema("CreateChatCompletionStreamResponse", c);
    }
    let usage = &events[events.len() - 2];
    assert_eq!(
        usage["usage"]["completion_tokens"], completion,
        "{events:?}"
    );
    let rows = ledger_rows(&mut h).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!((row.completion, row.estimated), (completion as i64, 1));
        assert!(row.cost > 0);
    }
}

/// The error body the gateway answered with, checked against OpenAI's schema.
async fn error_of(h: &Harness, model: &str) -> (u16, Value) {
    let res = h.chat(request(model, false, false)).await;
    let status = res.status().as_u16();
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: Value = res.json().await.expect("an error is JSON");
    check_schema("ErrorResponse", &body);
    (status, body)
}

#[tokio::test]
async fn errors_in_other_shapes_keep_their_class_and_a_useful_message() {
    let (h, _) = start().await;
    let (status, e) = error_of(&h, "lax-detail").await;
    assert_eq!(status, 400);
    assert_eq!(
        e["error"]["message"],
        "max_tokens must be at most 4096 on worker [host]"
    );
    let (status, e) = error_of(&h, "lax-detail-list").await;
    assert_eq!(status, 422);
    assert_eq!(
        e["error"]["message"],
        "messages.0.role: Input should be 'user' or 'assistant'"
    );
    let (status, e) = error_of(&h, "lax-text-400").await;
    assert_eq!(status, 400);
    assert_eq!(
        e["error"]["message"],
        "Invalid request: prompt too long for worker at [host]"
    );
    let (status, e) = error_of(&h, "lax-html-400").await;
    assert_eq!(status, 400);
    assert_eq!(
        e["error"]["message"],
        "The upstream rejected the request (status 400)."
    );
    // Retryable by status, as before: a 5xx in any shape fails over.
    let (status, e) = error_of(&h, "lax-html-502").await;
    assert_eq!(status, 502);
    assert_eq!(e["error"]["code"], "upstream_error");
    let (status, e) = error_of(&h, "lax-text-503").await;
    assert_eq!(status, 503);
    assert_eq!(e["error"]["code"], "upstream_overloaded");
    let res = h.chat(request("lax-fallback", false, false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "lax-bare");
    assert_eq!(res.headers()["x-switchyard-attempts"], "2");
}

#[tokio::test]
async fn no_error_leaks_a_host_name_or_html() {
    let (h, _) = start().await;
    for model in [
        "lax-detail",
        "lax-detail-list",
        "lax-text-400",
        "lax-html-400",
        "lax-html-502",
        "lax-text-503",
    ] {
        let (_, e) = error_of(&h, model).await;
        let text = e.to_string();
        for leak in ["internal", "10.1.2.3", "8000", "<", "nginx", "Traceback"] {
            assert!(!text.contains(leak), "{model}: {leak} in {text}");
        }
    }
}

#[tokio::test]
async fn the_anthropic_ingress_gets_the_estimate_too() {
    let (mut h, _) = start().await;
    let res = h
        .post("/v1/messages")
        .json(
            &json!({"model": "lax-bare", "max_tokens": 100, "stream": true,
            "messages": [{"role": "user", "content": PROMPT}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    let delta = text
        .split("\n\n")
        .find(|e| e.starts_with("event: message_delta"))
        .unwrap_or_else(|| panic!("message_delta in {text}"));
    let data: Value =
        serde_json::from_str(delta.split_once("data: ").expect("data").1).expect("json");
    let completion = text_tokens(chars(&TEXT.concat()) + chars(REASONING));
    assert_eq!(data["usage"]["output_tokens"], completion, "{data}");
    assert!(text.contains("event: message_stop"));
    let rows = ledger_rows(&mut h).await;
    assert_eq!(
        (rows[0].completion, rows[0].estimated),
        (completion as i64, 1)
    );
}

#[tokio::test]
async fn the_simulators_answers_pass_the_same_schema_checks() {
    // The checks themselves: a faithful OpenAI answer and stream pass them.
    let (h, _) = start().await;
    let body: Value = h
        .chat(request("gpt-4o-mini", false, false))
        .await
        .json()
        .await
        .expect("json");
    check_schema("CreateChatCompletionResponse", &body);
    for c in stream_events(h.chat(request("gpt-4o-mini", true, true)).await)
        .await
        .iter()
        .filter(|e| e.is_object())
    {
        check_schema("CreateChatCompletionStreamResponse", c);
    }
    let mut broken = body.clone();
    broken.as_object_mut().expect("object").remove("created");
    let mut root = schemas();
    root["$ref"] = json!("#/components/schemas/CreateChatCompletionResponse");
    assert!(
        schema_check::validate(&root, &broken).is_err(),
        "the check can fail"
    );
}

/// The stream_cut error event: the client's last event, no `[DONE]`.
fn assert_cut(events: &[Value]) {
    let last = events.last().expect("events");
    assert_eq!(last["error"]["code"], "stream_cut", "{events:?}");
    check_schema("ErrorResponse", last);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
}

#[tokio::test]
async fn a_stream_that_ends_without_a_finish_reason_is_cut() {
    let (mut h, _) = start().await;
    let events = stream_events(h.chat(request("lax-bare-cut", true, true)).await).await;
    assert_cut(&events);
    let text: String = events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, TEXT.concat(), "the content was relayed");
    // Two choices asked for, one finished: cut too (the upstream sends no [DONE]).
    let mut two = request("lax-bare", true, true);
    two["n"] = json!(2);
    let events = stream_events(h.chat(two).await).await;
    assert_cut(&events);
    let rows = ledger_rows(&mut h).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.error.as_deref(), Some("stream_cut"));
        assert_eq!(row.estimated, 1);
        assert!(row.completion > 0);
    }
}

#[tokio::test]
async fn tool_calls_without_ids_and_chunks_without_identity_are_completed() {
    let (mut h, _) = start().await;
    let body: Value = h
        .chat(request("lax-anon", false, false))
        .await
        .json()
        .await
        .expect("json");
    check_schema("CreateChatCompletionResponse", &body);
    let calls = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .expect("calls");
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c["type"] == "function"));
    let ids: Vec<&str> = calls.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|i| i.starts_with("call_")) && ids[0] != ids[1]);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    let events = stream_events(h.chat(request("lax-anon", true, true)).await).await;
    assert_eq!(events.last().expect("events"), "[DONE]");
    let chunks: Vec<&Value> = events.iter().filter(|e| e.is_object()).collect();
    assert_eq!(chunks.len(), 4, "3 chunks and the usage: {events:?}");
    for c in &chunks {
        check_schema("CreateChatCompletionStreamResponse", c);
    }
    let id = chunks[0]["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["id"], id, "one id across the stream");
        assert_eq!(c["created"], chunks[0]["created"]);
        assert_eq!(c["model"], "anon");
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let calls = &chunks[1]["choices"][0]["delta"]["tool_calls"];
    assert_eq!(
        (calls[0]["index"].clone(), calls[1]["index"].clone()),
        (json!(0), json!(1))
    );
    assert!(calls[0]["id"].is_string() && calls[0]["id"] != calls[1]["id"]);
    assert_eq!(calls[1]["type"], "function");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[0]["choices"][0]["index"], 0);
    let rows = ledger_rows(&mut h).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.error.is_none() && r.estimated == 1));
}

#[tokio::test]
async fn a_partial_usage_gets_its_missing_counts_estimated() {
    let (mut h, _) = start().await;
    let completion = text_tokens(chars(&TEXT.concat()));
    let expected = json!({"prompt_tokens": 11, "completion_tokens": completion,
        "total_tokens": 11 + completion});
    let body: Value = h
        .chat(request("lax-partial", false, false))
        .await
        .json()
        .await
        .expect("json");
    check_schema("CreateChatCompletionResponse", &body);
    assert_eq!(body["usage"], expected);
    let events = stream_events(h.chat(request("lax-partial", true, true)).await).await;
    assert_eq!(events.last().expect("events"), "[DONE]");
    let usage: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("usage").is_some_and(Value::is_object))
        .collect();
    assert_eq!(usage.len(), 1, "{events:?}");
    assert_eq!(usage[0]["usage"], expected);
    for c in events.iter().filter(|e| e.is_object()) {
        check_schema("CreateChatCompletionStreamResponse", c);
    }
    let rows = ledger_rows(&mut h).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(
            (row.prompt, row.completion, row.estimated),
            (11, completion as i64, 1)
        );
        assert_eq!(row.cost, cost(11, completion));
    }
}
