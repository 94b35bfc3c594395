//! The Anthropic Messages API over HTTP.

use serde_json::{json, Value};
use switchyard_sim::schema_check::validate;
use switchyard_sim::{Fault, SimOptions};

use crate::{read, read_until_error, start, start_with, Env, Got};

const VERSION: &str = "2023-06-01";
const MODEL: &str = "claude-sonnet-4-5";

fn body(text: &str) -> Value {
    json!({"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": text}]})
}

fn weather_tool() -> Value {
    json!({
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city", "unit"]
        }
    })
}

async fn messages(env: &Env, path: &str, body: &Value) -> Got {
    let resp = env
        .client
        .post(env.url(path))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", VERSION)
        .json(body)
        .send()
        .await
        .expect("send");
    read(resp).await
}

async fn ok(env: &Env, body: &Value) -> Value {
    let got = messages(env, "/v1/messages", body).await;
    assert_eq!(got.status, 200, "{}", got.text);
    got.json()
}

/// Parses a named-event SSE body strictly: every event is `event: NAME`, `data: JSON`
/// and a blank line, and the JSON's `type` is the event name.
fn events(text: &str) -> Vec<(String, Value)> {
    assert!(
        text.ends_with("\n\n"),
        "must end with a blank line: {text:?}"
    );
    text[..text.len() - 2]
        .split("\n\n")
        .map(|event| {
            let mut lines = event.lines();
            let name = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .unwrap_or_else(|| panic!("no event line: {event:?}"));
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data line: {event:?}"));
            assert!(lines.next().is_none(), "two lines per event: {event:?}");
            let json: Value = serde_json::from_str(data).expect("data is JSON");
            assert_eq!(json["type"], name, "type equals the event name");
            (name.to_string(), json)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn plain_message_has_the_documented_shape() {
    let env = start().await;
    let got = messages(&env, "/v1/messages", &body("Hello there")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(got
        .header("request-id")
        .is_some_and(|r| r.starts_with("req_")));
    assert!(got.header("anthropic-ratelimit-requests-limit").is_some());
    let m = got.json();
    assert!(m["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], MODEL);
    assert_eq!(m["content"][0]["type"], "text");
    assert!(m["content"][0]["text"]
        .as_str()
        .is_some_and(|t| t.ends_with('.')));
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["stop_sequence"], Value::Null);
    for key in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert!(m["usage"][key].is_u64(), "usage.{key}: {}", m["usage"]);
    }
    // Deterministic: the same request gets the same answer.
    assert_eq!(
        ok(&env, &body("Hello there")).await["content"],
        m["content"]
    );
}

#[tokio::test]
async fn auth_and_version_headers() {
    let env = start_with(SimOptions {
        api_key: Some("sk-ant-right".into()),
        ..SimOptions::default()
    })
    .await;
    let send = |key: Option<&str>, version: Option<&str>| {
        let mut req = env.client.post(env.url("/v1/messages")).json(&body("x"));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if let Some(v) = version {
            req = req.header("anthropic-version", v);
        }
        async move { read(req.send().await.expect("send")).await }
    };
    let got = send(None, Some(VERSION)).await;
    assert_eq!(got.status, 401);
    let e = got.json();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "authentication_error");
    assert!(e["error"]["message"].is_string());
    assert_eq!(send(Some("sk-ant-wrong"), Some(VERSION)).await.status, 401);
    let got = send(Some("sk-ant-right"), None).await;
    assert_eq!(got.status, 400);
    assert_eq!(
        got.json()["error"]["message"],
        "anthropic-version: header is required"
    );
    assert_eq!(send(Some("sk-ant-right"), Some(VERSION)).await.status, 200);
    // A bearer token works as the key too.
    let got = env
        .client
        .post(env.url("/v1/messages"))
        .bearer_auth("sk-ant-right")
        .header("anthropic-version", VERSION)
        .json(&body("x"))
        .send()
        .await
        .expect("send");
    assert_eq!(got.status(), 200);
}

#[tokio::test]
async fn invalid_requests_are_400_invalid_request_error() {
    let env = start().await;
    let cases = [
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens: Field required",
        ),
        (
            json!({"model": MODEL, "max_tokens": 5, "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "x"}]}),
            "messages.0.role: Unexpected role \"system\"",
        ),
        (
            json!({"model": MODEL, "max_tokens": 5, "messages": [
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}]}),
            "unexpected `tool_use_id`",
        ),
    ];
    for (body, expected) in cases {
        let got = messages(&env, "/v1/messages", &body).await;
        assert_eq!(got.status, 400, "{body}");
        let e = got.json();
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn stream_events_come_in_order_and_match_the_plain_answer() {
    let env = start().await;
    let plain = ok(&env, &body("Tell me a story")).await;
    let mut streaming = body("Tell me a story");
    streaming["stream"] = json!(true);
    let got = messages(&env, "/v1/messages", &streaming).await;
    assert_eq!(got.status, 200);
    assert!(got
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let evs = events(&got.text);
    let n = names(&evs);
    assert_eq!(
        &n[..3],
        ["message_start", "content_block_start", "ping"],
        "{n:?}"
    );
    assert_eq!(
        &n[n.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(n[3..n.len() - 3]
        .iter()
        .all(|e| *e == "content_block_delta"));
    let start = &evs[0].1["message"];
    assert_eq!(start["id"], plain["id"]);
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        start["usage"]["input_tokens"],
        plain["usage"]["input_tokens"]
    );
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, e)| {
            assert_eq!(e["delta"]["type"], "text_delta");
            assert_eq!(e["index"], 0);
            e["delta"]["text"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        text,
        plain["content"][0]["text"].as_str().unwrap_or_default()
    );
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    // output_tokens in message_delta is the cumulative total.
    assert_eq!(
        delta["usage"]["output_tokens"],
        plain["usage"]["output_tokens"]
    );
}

#[tokio::test]
async fn tools_plain_and_streamed() {
    let env = start().await;
    let mut req = body("What is the weather in Paris? Use get_weather.");
    req["tools"] = json!([weather_tool()]);
    let m = ok(&env, &req).await;
    assert_eq!(m["stop_reason"], "tool_use");
    // With tool_choice auto a short text comes first, so the tool use is block 1.
    assert_eq!(m["content"][0]["type"], "text");
    let call = &m["content"][1];
    assert_eq!(call["type"], "tool_use");
    assert!(call["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("toolu_")));
    assert_eq!(call["name"], "get_weather");
    validate(&weather_tool()["input_schema"], &call["input"]).expect("input valid");

    // Forced with tool_choice any: only the tool use.
    req["tool_choice"] = json!({"type": "any"});
    req["messages"][0]["content"] = json!("Nothing named here.");
    let forced = ok(&env, &req).await;
    assert_eq!(forced["content"].as_array().map(Vec::len), Some(1));
    assert_eq!(forced["content"][0]["name"], "get_weather");

    req["stream"] = json!(true);
    let got = messages(&env, "/v1/messages", &req).await;
    let evs = events(&got.text);
    let start = evs
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .map(|(_, e)| e.clone())
        .expect("block start");
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["input"], json!({}));
    assert_eq!(start["content_block"]["id"], forced["content"][0]["id"]);
    let partials: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, e)| {
            assert_eq!(e["delta"]["type"], "input_json_delta");
            e["delta"]["partial_json"].as_str().unwrap_or_default()
        })
        .collect();
    assert!(partials.len() >= 3, "{partials:?}");
    assert_eq!(partials[0], "");
    let input: Value = serde_json::from_str(&partials.concat()).expect("partials join to JSON");
    assert_eq!(input, forced["content"][0]["input"]);
    assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "tool_use");

    // The round trip: a tool_result answers the tool use, and the answer is text.
    let round_trip = json!({"model": MODEL, "max_tokens": 100, "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "Weather in Paris? get_weather"},
            {"role": "assistant", "content": m["content"]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call["id"], "content": "18 degrees"}]}]});
    let answer = ok(&env, &round_trip).await;
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(answer["content"][0]["type"], "text");
}

#[tokio::test]
async fn stop_sequences_limits_images_system_and_cache() {
    let env = start().await;
    let mut req = body("[[echo]] alpha STOP beta");
    req["stop_sequences"] = json!(["STOP"]);
    let m = ok(&env, &req).await;
    assert_eq!(m["content"][0]["text"], "alpha ");
    assert_eq!(m["stop_reason"], "stop_sequence");
    assert_eq!(m["stop_sequence"], "STOP");

    let mut req = body("[[len:10]] go");
    req["max_tokens"] = json!(3);
    let m = ok(&env, &req).await;
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["usage"]["output_tokens"], 3);

    let req = json!({"model": MODEL, "max_tokens": 50,
        "system": [{"type": "text", "text": "You are terse. [[cached]]"}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}]});
    let m = ok(&env, &req).await;
    let usage = &m["usage"];
    let cached = usage["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let input = usage["input_tokens"].as_u64().unwrap_or(0);
    assert!(cached > 0);
    // input_tokens leaves the cached part out: the total prompt is their sum.
    assert_eq!(cached, (input + cached) / 2);
    assert!(input + cached > 170, "two images cost 85 each: {usage}");

    let counted = messages(
        &env,
        "/v1/messages/count_tokens",
        &json!({"model": MODEL, "system": req["system"], "messages": req["messages"]}),
    )
    .await;
    assert_eq!(counted.status, 200, "{}", counted.text);
    assert_eq!(
        counted.json()["input_tokens"].as_u64(),
        Some(input + cached)
    );
}

#[tokio::test]
async fn faults_in_anthropic_format() {
    let env = start().await;
    env.sim().set_fault("", MODEL, Fault::error(529).times(1));
    let got = messages(&env, "/v1/messages", &body("x")).await;
    assert_eq!(got.status, 529);
    assert_eq!(
        got.json()["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );
    assert_eq!(messages(&env, "/v1/messages", &body("x")).await.status, 200);

    env.sim().set_fault("", "*", Fault::error(429).times(1));
    let got = messages(&env, "/v1/messages", &body("x")).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(got.json()["error"]["type"], "rate_limit_error");

    // Per instance: the primary fails, the default instance does not.
    env.sim().set_fault("primary", "*", Fault::error(500));
    assert_eq!(
        messages(&env, "/primary/v1/messages", &body("x"))
            .await
            .status,
        500
    );
    assert_eq!(messages(&env, "/v1/messages", &body("x")).await.status, 200);
    assert_eq!(env.sim().requests("primary").len(), 1);
    assert_eq!(
        env.sim().requests("primary")[0].path,
        "/primary/v1/messages"
    );
}

#[tokio::test]
async fn stream_faults_mid_stream_error_and_cut() {
    let env = start().await;
    let mut streaming = body("Tell me more");
    streaming["stream"] = json!(true);
    env.sim()
        .set_fault("", "*", Fault::error(529).mid_stream(3).times(1));
    let got = messages(&env, "/v1/messages", &streaming).await;
    assert_eq!(got.status, 200);
    let evs = events(&got.text);
    assert_eq!(
        names(&evs),
        ["message_start", "content_block_start", "ping", "error"]
    );
    assert_eq!(evs[3].1["error"]["type"], "overloaded_error");

    env.sim().set_fault("", "*", Fault::cut(2).times(1));
    let resp = env
        .client
        .post(env.url("/v1/messages"))
        .header("x-api-key", "k")
        .header("anthropic-version", VERSION)
        .json(&streaming)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let (text, failed) = read_until_error(resp).await;
    assert!(failed, "the transfer must break off");
    assert!(text.starts_with("event: message_start"));
    assert!(!text.contains("message_stop"));

    env.sim().set_fault("", "*", Fault::malformed().times(1));
    let got = messages(&env, "/v1/messages", &streaming).await;
    assert!(got.text.contains("\"text\":\"broken\n\n"));
}

fn thinking_body(text: &str) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [weather_tool()],
        "messages": [{"role": "user", "content": text}],
    })
}

/// The second request of a tool loop: the first answer's content (maybe edited) as the
/// assistant turn, then a tool result for each of its tool uses.
fn continuation(first_request: &Value, assistant_content: Value) -> Value {
    let results: Vec<Value> = assistant_content
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| json!({"type": "tool_result", "tool_use_id": b["id"], "content": "sunny"}))
        .collect();
    let mut next = first_request.clone();
    let messages = next["messages"].as_array_mut().expect("messages");
    messages.push(json!({"role": "assistant", "content": assistant_content}));
    messages.push(json!({"role": "user", "content": results}));
    next
}

#[tokio::test]
async fn thinking_blocks_signed_and_required_back_in_a_tool_loop() {
    let env = start().await;
    let first = thinking_body("Use get_weather for Paris");
    let answer = ok(&env, &first).await;
    let content = answer["content"].as_array().expect("content").clone();
    assert_eq!(content[0]["type"], "thinking");
    assert!(!content[0]["thinking"].as_str().unwrap_or("").is_empty());
    assert!(content[0]["signature"]
        .as_str()
        .is_some_and(|s| s.len() > 20));
    assert!(content.iter().any(|b| b["type"] == "tool_use"));
    assert_eq!(answer["stop_reason"], "tool_use");
    // Thinking counts as output: more than the same answer without thinking.
    let mut plain = first.clone();
    plain.as_object_mut().map(|o| o.remove("thinking"));
    let without = ok(&env, &plain).await;
    assert_eq!(without["content"][0]["type"], "text");
    assert!(answer["usage"]["output_tokens"].as_u64() > without["usage"]["output_tokens"].as_u64());

    // Sent back verbatim: the loop goes on.
    let next = continuation(&first, json!(content));
    let done = ok(&env, &next).await;
    assert_eq!(done["stop_reason"], "end_turn");
    assert_eq!(done["content"][0]["type"], "thinking");

    // Without the thinking block: refused.
    let stripped: Vec<Value> = content
        .iter()
        .filter(|b| b["type"] != "thinking")
        .cloned()
        .collect();
    let got = messages(&env, "/v1/messages", &continuation(&first, json!(stripped))).await;
    assert_eq!(got.status, 400, "{}", got.text);
    let err = got.json();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    let message = err["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`."),
        "{message}"
    );

    // Edited thinking text: the signature no longer verifies.
    let mut edited = content.clone();
    edited[0]["thinking"] = json!("I changed my mind.");
    let got = messages(&env, "/v1/messages", &continuation(&first, json!(edited))).await;
    assert_eq!(got.status, 400);
    assert_eq!(
        got.json()["error"]["message"],
        "messages.1.content.0: Invalid `signature` in `thinking` block"
    );

    // A block signed for another model is refused by this one.
    let mut other = first.clone();
    other["model"] = json!("claude-haiku-4-5");
    let foreign = continuation(&other, json!(content));
    let got = messages(&env, "/v1/messages", &foreign).await;
    assert_eq!(got.status, 400);
    assert!(got.text.contains("Invalid `signature` in `thinking` block"));
}

#[tokio::test]
async fn thinking_configuration_rules() {
    let env = start().await;
    let refused = |body: Value| {
        let env = &env;
        async move {
            let got = messages(env, "/v1/messages", &body).await;
            assert_eq!(got.status, 400, "{}", got.text);
            got.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string()
        }
    };
    let mut small = thinking_body("hi");
    small["thinking"]["budget_tokens"] = json!(1000);
    assert!(refused(small)
        .await
        .contains("greater than or equal to 1024"));
    let mut over = thinking_body("hi");
    over["max_tokens"] = json!(2048);
    assert!(refused(over)
        .await
        .contains("`max_tokens` must be greater than `thinking.budget_tokens`"));
    let mut forced = thinking_body("hi");
    forced["tool_choice"] = json!({"type": "any"});
    assert_eq!(
        refused(forced.clone()).await,
        "Thinking may not be enabled when tool_choice forces tool use."
    );
    forced["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    assert!(refused(forced).await.contains("forces tool use"));
    // Manual thinking is gone from generation 4.7 on; adaptive is the way there.
    let mut newest = thinking_body("hi");
    newest["model"] = json!("claude-opus-4-7");
    assert!(refused(newest.clone())
        .await
        .contains("thinking.type.enabled is not supported"));
    newest["thinking"] = json!({"type": "adaptive"});
    let answer = ok(&env, &newest).await;
    assert_eq!(answer["content"][0]["type"], "thinking");
    // Adaptive does not exist before 4.6.
    let mut older = thinking_body("hi");
    older["thinking"] = json!({"type": "adaptive"});
    assert!(refused(older).await.contains("adaptive is not supported"));
    // `disabled` and no thinking at all answer as before.
    let mut disabled = thinking_body("hi");
    disabled["thinking"] = json!({"type": "disabled"});
    assert_ne!(ok(&env, &disabled).await["content"][0]["type"], "thinking");
}

#[tokio::test]
async fn thinking_streams_and_redacted_blocks() {
    let env = start().await;
    let mut body = thinking_body("Use get_weather for Oslo [[redacted_thinking]]");
    let plain = ok(&env, &body).await;
    assert_eq!(plain["content"][0]["type"], "thinking");
    assert_eq!(plain["content"][1]["type"], "redacted_thinking");
    assert!(plain["content"][1]["data"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    body["stream"] = json!(true);
    let got = messages(&env, "/v1/messages", &body).await;
    assert_eq!(got.status, 200);
    let evs = events(&got.text);
    let start0 = evs
        .iter()
        .find(|(n, e)| n == "content_block_start" && e["index"] == 0)
        .expect("block 0");
    assert_eq!(
        start0.1["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    let thinking: String = evs
        .iter()
        .filter(|(_, e)| e["index"] == 0 && e["delta"]["type"] == "thinking_delta")
        .map(|(_, e)| e["delta"]["thinking"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        thinking,
        plain["content"][0]["thinking"].as_str().unwrap_or("-")
    );
    let sigs: Vec<&Value> = evs
        .iter()
        .filter(|(_, e)| e["delta"]["type"] == "signature_delta")
        .map(|(_, e)| &e["delta"]["signature"])
        .collect();
    assert_eq!(sigs, [&plain["content"][0]["signature"]]);
    let start1 = evs
        .iter()
        .find(|(n, e)| n == "content_block_start" && e["index"] == 1)
        .expect("block 1");
    assert_eq!(start1.1["content_block"], plain["content"][1]);
    // The streamed blocks, sent back, continue the loop; a forged redacted block does not.
    let mut first = body.clone();
    first.as_object_mut().map(|o| o.remove("stream"));
    let content = plain["content"].as_array().expect("content").clone();
    ok(&env, &continuation(&first, json!(content))).await;
    let mut forged = content.clone();
    forged[1]["data"] = json!("c2ltdWxhdG9yIGRpZCBub3QgaXNzdWUgdGhpcw==");
    let got = messages(&env, "/v1/messages", &continuation(&first, json!(forged))).await;
    assert_eq!(got.status, 400);
    assert_eq!(
        got.json()["error"]["message"],
        "messages.1.content.1: Invalid `data` in `redacted_thinking` block"
    );
}
