//! `POST /v1/messages` (the Anthropic Messages ingress) end to end over HTTP, against
//! the simulator's OpenAI and Azure backends.

mod common;

use common::{Harness, KEY};
use serde_json::{json, Value};
use switchyard_sim::Fault;

const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// A request as the `anthropic` SDK sends it: `x-api-key` and `anthropic-version`.
fn messages(h: &Harness, body: &Value) -> reqwest::RequestBuilder {
    h.client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
}

async fn send(h: &Harness, body: Value) -> (u16, http::HeaderMap, Value) {
    let res = messages(h, &body).send().await.expect("send");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, v)
}

/// The (event name, data) pairs of an Anthropic SSE body, checking the framing.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e
                .split_once('\n')
                .unwrap_or_else(|| panic!("bad event {e:?}"));
            let name = name.strip_prefix("event: ").expect("event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                .expect("json");
            assert_eq!(data["type"], name, "{e}");
            (name.to_owned(), data)
        })
        .collect()
}

async fn stream(h: &Harness, body: Value) -> (http::HeaderMap, Vec<(String, Value)>) {
    let res = messages(h, &body).send().await.expect("send");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    (headers, events(&text))
}

fn assert_anthropic_error(body: &Value, kind: &str) {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn last_upstream_body(h: &Harness, instance: &str) -> Value {
    h.sim
        .sim
        .requests(instance)
        .last()
        .expect("a recorded request")
        .body
        .clone()
}

/// The text of a message's text blocks.
fn text_of(message: &Value) -> String {
    message["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect()
}

#[tokio::test]
async fn plain_message_against_openai_and_azure() {
    let mut h = Harness::start().await;
    for (model, instance, deployment) in [
        ("gpt-4o-mini", "", "oa-mini"),
        ("azure-classic", "azure", "az-mini"),
        ("azure-v1", "azurev1", "az1-mini"),
    ] {
        let (status, headers, msg) = send(
            &h,
            json!({
                "model": model,
                "max_tokens": 200,
                "system": "Be brief.",
                "messages": [{"role": "user", "content": "[[echo]] hello from claude land"}],
            }),
        )
        .await;
        assert_eq!(status, 200, "{msg}");
        assert_eq!(headers["x-switchyard-deployment"], deployment);
        assert!(headers.contains_key("request-id"));
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["role"], "assistant");
        // The model that served, as the OpenAI ingress shows it.
        assert!(
            msg["model"].as_str().is_some_and(|m| !m.is_empty()),
            "{msg}"
        );
        assert!(
            msg["id"].as_str().is_some_and(|id| id.starts_with("msg_")),
            "{msg}"
        );
        assert_eq!(msg["stop_reason"], "end_turn");
        assert!(msg["stop_sequence"].is_null());
        assert!(text_of(&msg).contains("hello from claude land"), "{msg}");
        let usage = &msg["usage"];
        assert!(
            usage["input_tokens"].as_u64().is_some_and(|n| n > 0),
            "{msg}"
        );
        assert!(
            usage["output_tokens"].as_u64().is_some_and(|n| n > 0),
            "{msg}"
        );
        // The upstream got an OpenAI request: system first, max_tokens kept.
        let up = last_upstream_body(&h, instance);
        assert_eq!(
            up["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(up["messages"][1]["role"], "user");
        assert_eq!(up["max_tokens"], 200);
    }
    // Bearer auth works too.
    let res = h
        .post("/v1/messages")
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);

    let db = h.finish().await;
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT endpoint, key_name, status, prompt_tokens, completion_tokens FROM requests",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|(e, k, s, p, c)| e == "messages"
        && k == "app"
        && *s == 200
        && *p > 0
        && *c > 0));
}

#[tokio::test]
async fn stream_events_come_in_anthropic_order() {
    let mut h = Harness::start().await;
    for model in ["gpt-4o-mini", "azure-classic"] {
        let (headers, evs) = stream(
            &h,
            json!({
                "model": model,
                "max_tokens": 300,
                "stream": true,
                "messages": [{"role": "user", "content": "Tell me about the sea [[cached]]"}],
            }),
        )
        .await;
        assert!(headers.contains_key("x-switchyard-deployment"));
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "message_start");
        assert_eq!(names[1], "ping");
        assert_eq!(names[2], "content_block_start");
        let n = names.len();
        assert_eq!(names[n - 3], "content_block_stop");
        assert_eq!(names[n - 2], "message_delta");
        assert_eq!(names[n - 1], "message_stop");
        assert!(
            names[3..n - 3].iter().all(|e| *e == "content_block_delta"),
            "{names:?}"
        );
        assert!(n > 7, "several deltas: {names:?}");

        let start = &evs[0].1["message"];
        assert_eq!(start["role"], "assistant");
        assert!(
            start["model"].as_str().is_some_and(|m| !m.is_empty()),
            "{start}"
        );
        assert_eq!(start["content"], json!([]));
        assert!(start["stop_reason"].is_null());
        assert_eq!(
            evs[2].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        let mut text = String::new();
        for (_, d) in &evs[3..n - 3] {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            text.push_str(d["delta"]["text"].as_str().expect("text"));
        }
        assert!(!text.is_empty());
        assert_eq!(evs[n - 3].1["index"], 0);
        let delta = &evs[n - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert!(
            delta["usage"]["output_tokens"]
                .as_u64()
                .is_some_and(|t| t > 0),
            "{delta}"
        );
        assert!(
            delta["usage"]["input_tokens"]
                .as_u64()
                .is_some_and(|t| t > 0),
            "{delta}"
        );
        if model == "gpt-4o-mini" {
            assert!(
                delta["usage"]["cache_read_input_tokens"]
                    .as_u64()
                    .is_some_and(|t| t > 0),
                "{delta}"
            );
        }
    }
    let db = h.finish().await;
    let rows: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT streamed, usage_estimated, completion_tokens FROM requests")
            .fetch_all(&db)
            .await
            .expect("rows");
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|(s, e, c)| *s == 1 && *e == 0 && *c > 0),
        "{rows:?}"
    );
}

fn weather_tool() -> Value {
    json!({
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    })
}

#[tokio::test]
async fn tools_round_trip() {
    let h = Harness::start().await;
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    let (status, _, msg) = send(
        &h,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 200,
            "tools": [weather_tool()],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [question],
        }),
    )
    .await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(msg["stop_reason"], "tool_use");
    let call = msg["content"]
        .as_array()
        .expect("content")
        .iter()
        .find(|b| b["type"] == "tool_use")
        .cloned()
        .expect("a tool_use block");
    assert_eq!(call["name"], "get_weather");
    assert!(
        call["input"]["city"].is_string(),
        "input is a parsed object: {call}"
    );
    let up = last_upstream_body(&h, "");
    assert_eq!(
        up["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(
        up["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );

    // The tool result goes back; the upstream sees the assistant's tool_calls and
    // then a tool message answering it, in that order.
    let id = call["id"].as_str().expect("id");
    let (status, _, answer) = send(
        &h,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 200,
            "tools": [weather_tool()],
            "messages": [
                question,
                {"role": "assistant", "content": msg["content"]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": id, "content": "18C and cloudy"},
                    {"type": "text", "text": "Thanks, summarise it."}
                ]},
            ],
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stop_reason"], "end_turn");
    assert!(!text_of(&answer).is_empty());
    let up = last_upstream_body(&h, "");
    let roles: Vec<&str> = up["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "user"]);
    assert_eq!(up["messages"][1]["tool_calls"][0]["id"], id);
    assert_eq!(up["messages"][2]["tool_call_id"], id);
    assert_eq!(up["messages"][2]["content"], "18C and cloudy");
}

#[tokio::test]
async fn stream_with_tool_use() {
    let h = Harness::start().await;
    for model in ["gpt-4o-mini", "azure-v1"] {
        let (_, evs) = stream(
            &h,
            json!({
                "model": model,
                "max_tokens": 200,
                "stream": true,
                "tools": [weather_tool()],
                "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            }),
        )
        .await;
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[..2], ["message_start", "ping"]);
        assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
        let starts: Vec<&Value> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert!(!starts.is_empty());
        // Block indexes count up from 0, each block closed before the next opens.
        let mut open: Option<u64> = None;
        let mut next = 0;
        let mut json_by_block: Vec<String> = Vec::new();
        for (name, d) in &evs {
            match name.as_str() {
                "content_block_start" => {
                    assert!(open.is_none(), "{names:?}");
                    assert_eq!(d["index"], next);
                    open = Some(next);
                    next += 1;
                    json_by_block.push(String::new());
                }
                "content_block_delta" => {
                    assert_eq!(d["index"].as_u64(), open);
                    if d["delta"]["type"] == "input_json_delta" {
                        let s = d["delta"]["partial_json"].as_str().expect("partial_json");
                        json_by_block.last_mut().expect("block").push_str(s);
                    }
                }
                "content_block_stop" => {
                    assert_eq!(d["index"].as_u64(), open);
                    open = None;
                }
                _ => {}
            }
        }
        let tool = starts
            .iter()
            .position(|s| s["content_block"]["type"] == "tool_use")
            .expect("a tool_use block");
        let block = &starts[tool]["content_block"];
        assert_eq!(block["name"], "get_weather");
        assert!(block["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(block["input"], json!({}));
        let input: Value =
            serde_json::from_str(&json_by_block[tool]).expect("the fragments make JSON");
        assert!(input["city"].is_string(), "{input}");
        assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "tool_use");
    }
}

#[tokio::test]
async fn image_blocks_become_image_parts() {
    let h = Harness::start().await;
    let (status, _, msg) = send(
        &h,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {"type": "text", "text": "Describe these."}
            ]}],
        }),
    )
    .await;
    assert_eq!(status, 200, "{msg}");
    let up = last_upstream_body(&h, "");
    let parts = &up["messages"][0]["content"];
    assert_eq!(parts[0]["type"], "image_url");
    assert_eq!(
        parts[0]["image_url"]["url"],
        format!("data:image/png;base64,{PNG_1X1}")
    );
    assert_eq!(parts[1]["image_url"]["url"], "https://example.com/cat.png");
    assert_eq!(parts[2], json!({"type": "text", "text": "Describe these."}));
}

#[tokio::test]
async fn stop_sequences_and_max_tokens() {
    let h = Harness::start().await;
    let (status, _, msg) = send(
        &h,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 200,
            "stop_sequences": ["STOPHERE"],
            "messages": [{"role": "user", "content": "[[echo]] alpha beta STOPHERE gamma delta"}],
        }),
    )
    .await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(last_upstream_body(&h, "")["stop"], json!(["STOPHERE"]));
    let text = text_of(&msg);
    assert!(text.contains("alpha beta"), "{text}");
    assert!(
        !text.contains("STOPHERE") && !text.contains("gamma"),
        "{text}"
    );

    let (status, _, msg) = send(
        &h,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "[[len:40]] go on"}],
        }),
    )
    .await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(msg["stop_reason"], "max_tokens");
    assert_eq!(msg["usage"]["output_tokens"], 5);

    let (_, evs) = stream(
        &h,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "stream": true,
            "messages": [{"role": "user", "content": "[[len:40]] go on"}],
        }),
    )
    .await;
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn client_errors_are_anthropic_shaped() {
    let mut h = Harness::start().await;
    let ok = json!({"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});

    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", "sy-wrong")
        .json(&ok)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    assert_anthropic_error(&res.json().await.expect("json"), "authentication_error");

    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .json(&ok)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.expect("json");
    assert_anthropic_error(&body, "authentication_error");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("x-api-key"));

    let (status, headers, body) = send(
        &h,
        json!({"model": "no-such-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 404);
    assert_anthropic_error(&body, "not_found_error");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("no-such-model"));
    assert_eq!(
        body["request_id"].as_str(),
        headers["request-id"].to_str().ok(),
        "the body names the request"
    );

    let (status, _, body) = send(
        &h,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_anthropic_error(&body, "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("max_tokens"),
        "{body}"
    );

    let (status, _, body) = send(
        &h,
        json!({"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_anthropic_error(&body, "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("messages[0].content[0].source.data"),
        "{body}"
    );

    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    assert_anthropic_error(&res.json().await.expect("json"), "invalid_request_error");

    // Every refusal still has its ledger row.
    let db = h.finish().await;
    let statuses: Vec<i64> = sqlx::query_scalar(
        "SELECT status FROM requests WHERE endpoint = 'messages' ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(statuses.len(), 6);
}

#[tokio::test]
async fn upstream_failures_are_anthropic_shaped() {
    let h = Harness::start_with(common::PATIENT_BREAKER).await;
    let body = json!({"model": "primary-only", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});

    h.sim.sim.set_fault("primary", "*", Fault::error(503));
    let (status, _, err) = send(&h, body.clone()).await;
    assert_eq!(status, 503);
    assert_anthropic_error(&err, "overloaded_error");

    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    let (status, _, err) = send(&h, body.clone()).await;
    assert_eq!(status, 502);
    assert_anthropic_error(&err, "api_error");
    assert!(!err.to_string().contains("sk-upstream-secret"));

    h.sim
        .sim
        .set_fault("primary", "*", Fault::error(429).retry_after(7));
    let (status, headers, err) = send(&h, body.clone()).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "7");
    assert_anthropic_error(&err, "rate_limit_error");
}

#[tokio::test]
async fn a_cut_stream_ends_with_one_error_event() {
    let mut h = Harness::start().await;
    h.sim.sim.set_fault("", "*", Fault::cut(3));
    let (_, evs) = stream(
        &h,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 300,
            "stream": true,
            "messages": [{"role": "user", "content": "Tell me a long story please"}],
        }),
    )
    .await;
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..2], ["message_start", "ping"]);
    assert!(
        names.contains(&"content_block_delta"),
        "content came first: {names:?}"
    );
    assert_eq!(names.last(), Some(&"error"));
    assert_eq!(names.iter().filter(|n| **n == "error").count(), 1);
    assert!(!names.contains(&"message_stop"));
    assert_anthropic_error(&evs[evs.len() - 1].1, "api_error");
    let db = h.finish().await;
    let code: String = sqlx::query_scalar("SELECT error_code FROM requests")
        .fetch_one(&db)
        .await
        .expect("row");
    assert_eq!(code, "stream_cut");
}

const REDACTOR_KEY: &str = "sy-test-key-redactor-0001";
const BLOCKER_KEY: &str = "sy-test-key-blocker-0001";

/// An Anthropic deployment (simulator instance `ant`) and a key whose policy redacts PII.
async fn with_anthropic() -> Harness {
    Harness::start_with_sim(|sim| {
        format!(
            r#"
[providers.ant]
kind = "anthropic"
base_url = "{sim}/ant"
api_key = "sk-ant-upstream-secret"

[deployments.ant-haiku]
provider = "ant"
model = "claude-haiku-4-5"
price = {{ input = 1.0, output = 5.0 }}

[models.claude]
deployments = ["ant-haiku"]

[[keys]]
name = "redactor"
key = "{REDACTOR_KEY}"
policy = {{ pii = "redact" }}

[[keys]]
name = "blocker"
key = "{BLOCKER_KEY}"
policy = {{ pii = "block" }}
"#
        )
    })
    .await
}

#[tokio::test]
async fn anthropic_requests_to_an_anthropic_deployment_pass_through() {
    let mut h = with_anthropic().await;
    let request = json!({
        "model": "claude",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "top_k": 5,
        "metadata": {"user_id": "u-7"},
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello there", "cache_control": {"type": "ephemeral"}}
        ]}],
    });
    let (status, headers, msg) = send(&h, request.clone()).await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(headers["x-switchyard-deployment"], "ant-haiku");
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["stop_reason"], "end_turn");
    assert!(!text_of(&msg).is_empty());
    // The upstream got the client's own body, with only the model swapped: the
    // fields OpenAI's shape has no room for arrived.
    let seen = h.sim.sim.requests("ant");
    let last = seen.last().expect("a recorded request");
    assert!(last.path.ends_with("/v1/messages"), "{}", last.path);
    let mut want = request;
    want["model"] = json!("claude-haiku-4-5");
    assert_eq!(last.body, want);
    // And the client got the upstream's own answer: the same as asking it directly
    // (the simulator answers the same request the same way).
    let direct = |body: &Value| {
        h.client
            .post(format!("{}/ant/v1/messages", h.sim.base_url()))
            .header("x-api-key", "sk-ant-upstream-secret")
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
    };
    let mut upstream: Value = direct(&want)
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let mut got = msg.clone();
    // Message ids are made up per call.
    upstream["id"] = Value::Null;
    got["id"] = Value::Null;
    assert_eq!(got, upstream);

    // Streams too: the upstream's events, as they came.
    let mut streamed = want.clone();
    streamed["stream"] = json!(true);
    let upstream = direct(&streamed)
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    streamed["model"] = json!("claude");
    let (_, evs) = stream(&h, streamed).await;
    let strip_ids = |evs: Vec<(String, Value)>| -> Vec<(String, Value)> {
        evs.into_iter()
            .map(|(n, mut d)| {
                if n == "message_start" {
                    d["message"]["id"] = Value::Null;
                }
                (n, d)
            })
            .collect()
    };
    assert_eq!(strip_ids(evs), strip_ids(events(&upstream)));

    // When the PII guardrail rewrote the request, the client's body is not sent: the
    // rewritten request is, translated.
    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", REDACTOR_KEY)
        .json(&json!({
            "model": "claude",
            "max_tokens": 50,
            "top_k": 5,
            "messages": [{"role": "user", "content": "Mail jane@example.com please"}],
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let sent = last_upstream_body(&h, "ant").to_string();
    assert!(!sent.contains("jane@example.com"), "{sent}");
    assert!(sent.contains("[EMAIL_1]"), "{sent}");

    // Passed-through answers are billed from the upstream's own usage.
    let db = h.finish().await;
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT streamed, usage_estimated, prompt_tokens, completion_tokens FROM requests ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|(_, e, p, c)| *e == 0 && *p > 0 && *c > 0),
        "{rows:?}"
    );
    assert_eq!(rows[1].0, 1, "the second was streamed");
}

/// A body with PII in every place an Anthropic request carries text: the system
/// blocks, a text block, a `tool_use` input and a `tool_result`'s blocks.
fn pii_everywhere() -> Value {
    json!({
        "model": "claude",
        "max_tokens": 50,
        "top_k": 5,
        "system": [{"type": "text", "text": "Escalate to +44 20 7946 0958.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Refund me, bob@example.org"},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "refund", "input": {"email": "jane@example.com", "card": 4111111111111111u64}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Refunded to 5555 5555 5555 4444."}]},
            ]},
        ],
    })
}

const RAW_PII: [&str; 5] = [
    "jane@example.com",
    "bob@example.org",
    "4111111111111111",
    "5555 5555 5555 4444",
    "7946",
];

#[tokio::test]
async fn the_guardrail_reads_the_whole_anthropic_body() {
    let mut h = with_anthropic().await;
    let post = |key: &'static str, body: Value| {
        h.client
            .post(format!("{}/v1/messages", h.base))
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    // Redact, to an Anthropic deployment: the client's body goes up (what only it
    // carries, `top_k` and `cache_control`, arrived), redacted wherever PII was.
    let res = post(REDACTOR_KEY, pii_everywhere()).await.expect("send");
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let sent = last_upstream_body(&h, "ant");
    let text = sent.to_string();
    for raw in RAW_PII {
        assert!(!text.contains(raw), "{raw} went upstream: {text}");
    }
    assert_eq!(sent["top_k"], 5, "{text}");
    assert_eq!(sent["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(sent["system"][0]["text"], "Escalate to [PHONE_1].");
    assert_eq!(
        sent["messages"][0]["content"][0]["text"],
        "Refund me, [EMAIL_1]"
    );
    assert_eq!(
        sent["messages"][1]["content"][0]["input"],
        json!({"email": "[EMAIL_2]", "card": "[CARD_1]"})
    );
    assert_eq!(
        sent["messages"][2]["content"][0]["content"][0]["text"],
        "Refunded to [CARD_2]."
    );

    // Redact, translated for an OpenAI deployment: the tool call's arguments too.
    let mut to_openai = pii_everywhere();
    to_openai["model"] = json!("gpt-4o-mini");
    let res = post(REDACTOR_KEY, to_openai.clone()).await.expect("send");
    assert_eq!(res.status(), 200);
    let text = last_upstream_body(&h, "").to_string();
    for raw in RAW_PII {
        assert!(!text.contains(raw), "{raw} went upstream: {text}");
    }
    assert!(text.contains("[EMAIL_1]"), "{text}");

    // Block, both ways: PII that only a tool_use input carries is refused before
    // anything goes upstream.
    let only_input = |model: &str| {
        json!({
            "model": model,
            "max_tokens": 50,
            "messages": [
                {"role": "user", "content": "Refund me"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "refund", "input": {"email": "jane@example.com"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"},
                ]},
            ],
        })
    };
    let upstream_calls = h.sim.sim.requests("ant").len() + h.sim.sim.requests("").len();
    for model in ["claude", "gpt-4o-mini"] {
        let res = post(BLOCKER_KEY, only_input(model)).await.expect("send");
        assert_eq!(res.status(), 400, "{model}");
        let err: Value = res.json().await.expect("json");
        assert_anthropic_error(&err, "invalid_request_error");
    }
    assert_eq!(
        h.sim.sim.requests("ant").len() + h.sim.sim.requests("").len(),
        upstream_calls,
        "blocked before dispatch"
    );

    let db = h.finish().await;
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT key_name, redactions FROM requests ORDER BY started_at_ms")
            .fetch_all(&db)
            .await
            .expect("rows");
    assert_eq!(
        rows,
        [
            (
                "redactor".into(),
                Some("redact:PHONE=1,EMAIL=2,CARD=2".into())
            ),
            (
                "redactor".into(),
                Some("redact:PHONE=1,EMAIL=2,CARD=2".into())
            ),
            ("blocker".into(), Some("block:EMAIL=1".into())),
            ("blocker".into(), Some("block:EMAIL=1".into())),
        ]
    );
}

/// A passed-through stream cut before `message_delta` has only `message_start`'s
/// usage (the prompt, a token of output): it is billed as an estimate, with the
/// output estimated from what was relayed.
#[tokio::test]
async fn a_cut_pass_through_stream_is_billed_as_an_estimate() {
    let mut h = with_anthropic().await;
    h.sim.sim.set_fault("ant", "*", Fault::cut(8));
    let res = messages(
        &h,
        &json!({"model": "claude", "max_tokens": 300, "stream": true,
            "messages": [{"role": "user", "content": "Tell me a long story please"}]}),
    )
    .send()
    .await
    .expect("send");
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    let evs = events(&text);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!names.contains(&"message_delta"), "cut before: {names:?}");
    assert_eq!(names.last(), Some(&"error"), "{names:?}");
    let start_usage = &evs[0].1["message"]["usage"];
    let started_output = start_usage["output_tokens"]
        .as_i64()
        .expect("output_tokens");
    let relayed: usize = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .map(|t| t.chars().count())
        .sum();
    assert!(relayed > 8, "some text was relayed: {names:?}");
    let want_output = i64::try_from(relayed.div_ceil(4)).expect("small");
    assert!(
        want_output > started_output,
        "{want_output} vs {start_usage}"
    );

    let db = h.finish().await;
    let (estimated, prompt, completion, code): (i64, i64, i64, String) = sqlx::query_as(
        "SELECT usage_estimated, prompt_tokens, completion_tokens, error_code FROM requests",
    )
    .fetch_one(&db)
    .await
    .expect("row");
    assert_eq!(code, "stream_cut");
    assert_eq!(estimated, 1, "a cut stream's usage is an estimate");
    assert_eq!(
        prompt,
        start_usage["input_tokens"].as_i64().expect("input_tokens"),
        "the prompt is the upstream's own count"
    );
    assert_eq!(completion, want_output, "the output is what was relayed");
    let attempt: (i64, i64, Option<String>) =
        sqlx::query_as("SELECT usage_estimated, completion_tokens, error_class FROM attempts")
            .fetch_one(&db)
            .await
            .expect("attempt");
    assert_eq!(attempt, (1, want_output, Some("stream_cut".into())));
}

#[tokio::test]
async fn anthropic_upstream_errors_keep_their_anthropic_type() {
    let h = with_anthropic().await;
    let body = json!({"model": "claude", "max_tokens": 300, "messages": [{"role": "user", "content": "Tell me a long story"}]});

    h.sim.sim.set_fault("ant", "*", Fault::error(529));
    let (status, _, err) = send(&h, body.clone()).await;
    assert_eq!(status, 503);
    assert_anthropic_error(&err, "overloaded_error");

    // An error event inside a started stream comes out as one Anthropic error event.
    h.sim
        .sim
        .set_fault("ant", "*", Fault::error(529).mid_stream(4));
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, evs) = stream(&h, streamed).await;
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(names.last(), Some(&"error"), "{names:?}");
    assert!(!names.contains(&"message_stop"));
    assert_anthropic_error(&evs[evs.len() - 1].1, "overloaded_error");
}

const NARROW_KEY: &str = "sy-test-key-narrow-000001";
const LIMITED_KEY: &str = "sy-test-key-limited-00001";

/// An Anthropic deployment (`ant`), a model served by it first and by OpenAI after,
/// a key allowed only `gpt-4o-mini`, and a key with one request a minute.
async fn for_counting() -> Harness {
    Harness::start_with_sim(|sim| {
        format!(
            r#"
[providers.ant]
kind = "anthropic"
base_url = "{sim}/ant"
api_key = "sk-ant-upstream-secret"

[deployments.ant-haiku]
provider = "ant"
model = "claude-haiku-4-5"
price = {{ input = 1.0, output = 5.0 }}

[models.claude]
deployments = ["ant-haiku", "oa-mini"]

[[keys]]
name = "narrow"
key = "{NARROW_KEY}"
policy = {{ models = ["gpt-4o-mini"] }}

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
policy = {{ rpm = 1 }}
"#
        )
    })
    .await
}

async fn count_tokens(h: &Harness, key: &str, body: &Value) -> (u16, http::HeaderMap, Value) {
    let res = h
        .client
        .post(format!("{}/v1/messages/count_tokens", h.base))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, v)
}

fn counting_request(model: &str) -> Value {
    json!({
        "model": model,
        "system": "You are terse.",
        "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "What is the weather in Lisbon today, roughly?"},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": [{"type": "text", "text": "Go on, please."}]},
        ],
    })
}

#[tokio::test]
async fn count_tokens_asks_an_anthropic_deployment_for_the_exact_count() {
    let mut h = for_counting().await;
    let request = counting_request("claude");
    let (status, headers, body) = count_tokens(&h, KEY, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-token-count"], "exact");
    assert_eq!(headers["x-switchyard-deployment"], "ant-haiku");
    assert!(headers.contains_key("request-id"));
    let counted = body["input_tokens"].as_u64().expect("input_tokens");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    // The upstream got the client's body at its count_tokens, model swapped, and no
    // max_tokens the client did not send.
    let seen = h.sim.sim.requests("ant");
    let last = seen.last().expect("a recorded request");
    assert!(
        last.path.ends_with("/v1/messages/count_tokens"),
        "{}",
        last.path
    );
    let mut want = request.clone();
    want["model"] = json!("claude-haiku-4-5");
    assert_eq!(last.body, want);
    // The same count the upstream bills the same prompt with on /v1/messages.
    let mut asked = request;
    asked["max_tokens"] = json!(50);
    let (status, _, msg) = send(&h, asked).await;
    assert_eq!(status, 200, "{msg}");
    let billed = msg["usage"]["input_tokens"].as_u64().unwrap_or(0)
        + msg["usage"]["cache_read_input_tokens"]
            .as_u64()
            .unwrap_or(0);
    assert_eq!(counted, billed);
    // Counting is not a billed request: only the message has a ledger row.
    let db = h.finish().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn count_tokens_estimates_for_other_providers_and_says_so() {
    let h = for_counting().await;
    let (status, headers, body) = count_tokens(&h, KEY, &counting_request("gpt-4o-mini")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-token-count"], "estimated");
    assert_eq!(headers["x-switchyard-deployment"], "oa-mini");
    let estimated = body["input_tokens"].as_u64().expect("input_tokens");
    assert!(estimated > 20, "tools and messages count: {estimated}");
    // Nothing went upstream.
    assert!(h.sim.sim.requests("").is_empty());
    // More text, more tokens.
    let mut longer = counting_request("gpt-4o-mini");
    longer["messages"][0]["content"] =
        json!("What is the weather in Lisbon today, roughly? ".repeat(20));
    let (_, _, more) = count_tokens(&h, KEY, &longer).await;
    assert!(
        more["input_tokens"].as_u64() > Some(estimated + 100),
        "{more}"
    );
}

#[tokio::test]
async fn count_tokens_falls_back_to_the_estimate_when_anthropic_is_unreachable() {
    // A provider that does not answer at all: the model's one deployment points at a
    // closed port.
    let h = Harness::start_with_sim(|_| {
        r#"
[providers.gone]
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_key = "sk-ant-upstream-secret"

[deployments.gone-haiku]
provider = "gone"
model = "claude-haiku-4-5"

[models.claude]
deployments = ["gone-haiku"]
"#
        .to_owned()
    })
    .await;
    let (status, headers, body) = count_tokens(&h, KEY, &counting_request("claude")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-token-count"], "estimated");
    assert!(body["input_tokens"].as_u64() > Some(0));
}

#[tokio::test]
async fn count_tokens_is_governed_and_errors_are_anthropic_shaped() {
    let h = for_counting().await;
    let request = counting_request("claude");
    // No key, a wrong key.
    let res = h
        .client
        .post(format!("{}/v1/messages/count_tokens", h.base))
        .json(&request)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.expect("json");
    assert_anthropic_error(&body, "authentication_error");
    let (status, _, body) = count_tokens(&h, "sy-not-a-key", &request).await;
    assert_eq!(status, 401);
    assert_anthropic_error(&body, "authentication_error");
    // A model the key's policy does not allow; an unknown model.
    let (status, _, body) = count_tokens(&h, NARROW_KEY, &request).await;
    assert_eq!(status, 403, "{body}");
    assert_anthropic_error(&body, "permission_error");
    let (status, _, body) = count_tokens(&h, KEY, &counting_request("no-such-model")).await;
    assert_eq!(status, 404, "{body}");
    assert_anthropic_error(&body, "not_found_error");
    // Hostile bodies: 400 naming the field, never a 500.
    for (bad, field) in [
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (json!({"model": "claude", "messages": "hi"}), "messages"),
        (json!({"model": 7, "messages": []}), "model"),
        (json!({"model": "claude", "messages": []}), "messages"),
        (
            json!({"model": "claude", "max_tokens": 1e300, "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "claude", "messages": [{"role": "robot", "content": "ø"}]}),
            "role",
        ),
        (json!([1, 2]), ""),
    ] {
        let (status, _, body) = count_tokens(&h, KEY, &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_anthropic_error(&body, "invalid_request_error");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{bad}: {message}");
    }
    // Counting takes no rate-limit room: a key with one request a minute counts
    // many times, and still has its request.
    for _ in 0..3 {
        let (status, _, body) = count_tokens(&h, LIMITED_KEY, &request).await;
        assert_eq!(status, 200, "{body}");
    }
    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", LIMITED_KEY)
        .json(&json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
}
