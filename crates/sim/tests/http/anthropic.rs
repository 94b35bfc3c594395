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
