//! The two ingresses the conformance suite runs under. Cases are written once, with
//! OpenAI-shaped requests and assertions; under `/v1/messages` the request is
//! rewritten as the equivalent Anthropic Messages request, the Anthropic answer is
//! checked for what Anthropic clients rely on (message shape, stop_reason, tool_use
//! input objects, usage, event order, error shape), and then handed to the case as
//! the OpenAI answer it is equivalent to, so the case's own assertions apply too.

use serde_json::{json, Map, Value};

use super::common::Harness;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// `POST /v1/chat/completions`
    OpenAi,
    /// `POST /v1/messages`
    Messages,
}

impl Ingress {
    /// Sends an OpenAI-shaped chat request through this ingress; the answer comes
    /// back OpenAI-shaped (status, headers and body).
    pub async fn chat(self, h: &Harness, body: Value) -> reqwest::Response {
        match self {
            Ingress::OpenAi => h.chat(body).await,
            Ingress::Messages => via_messages(h, body).await,
        }
    }
}

async fn via_messages(h: &Harness, req: Value) -> reqwest::Response {
    let stream = req["stream"] == true;
    let include_usage = req["stream_options"]["include_usage"] == true;
    let res = h
        .post("/v1/messages")
        .json(&to_messages_request(&req))
        .send()
        .await
        .expect("send");
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let body = if !status.is_success() {
        serde_json::to_vec(&error_to_openai(status.as_u16(), &text)).expect("json")
    } else if stream {
        stream_to_openai(&text, include_usage).into_bytes()
    } else {
        serde_json::to_vec(&message_to_openai(&text)).expect("json")
    };
    let mut out = http::Response::builder().status(status);
    for name in [
        "content-type",
        "retry-after",
        "x-request-id",
        "x-switchyard-deployment",
        "x-switchyard-attempts",
    ] {
        if let Some(v) = headers.get(name) {
            out = out.header(name, v);
        }
    }
    reqwest::Response::from(out.body(body).expect("response"))
}

/// OpenAI chat request → the Anthropic Messages request that asks the same.
pub fn to_messages_request(req: &Value) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in req["messages"].as_array().expect("messages") {
        let (role, blocks) = match m["role"].as_str().expect("role") {
            "system" | "developer" => {
                system.push(m["content"].as_str().expect("system text").to_owned());
                continue;
            }
            "user" => ("user", user_blocks(&m["content"])),
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(text) = m["content"].as_str().filter(|t| !t.is_empty()) {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let args = call["function"]["arguments"].as_str().expect("arguments");
                    blocks.push(json!({
                        "type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": serde_json::from_str::<Value>(args).expect("arguments are JSON"),
                    }));
                }
                ("assistant", blocks)
            }
            "tool" => (
                "user",
                vec![json!({
                    "type": "tool_result", "tool_use_id": m["tool_call_id"],
                    "content": m["content"],
                })],
            ),
            other => panic!("no Anthropic equivalent for role {other}"),
        };
        // Consecutive turns of one role are one Anthropic turn (tool results).
        match messages.last_mut() {
            Some(last) if last["role"] == role => last["content"]
                .as_array_mut()
                .expect("blocks")
                .extend(blocks),
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }
    let max_tokens = req["max_completion_tokens"]
        .as_u64()
        .or(req["max_tokens"].as_u64())
        .unwrap_or(1024);
    let mut out = json!({"model": req["model"], "max_tokens": max_tokens, "messages": messages});
    if !system.is_empty() {
        out["system"] = json!(system.join("\n"));
    }
    if req["stream"] == true {
        out["stream"] = json!(true);
    }
    match &req["stop"] {
        Value::String(s) => out["stop_sequences"] = json!([s]),
        Value::Array(a) => out["stop_sequences"] = json!(a),
        _ => {}
    }
    if let Some(tools) = req["tools"].as_array() {
        out["tools"] = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                json!({"name": f["name"], "description": f["description"], "input_schema": f["parameters"]})
            })
            .collect();
    }
    match &req["tool_choice"] {
        Value::Null => {}
        Value::String(s) if s == "auto" => out["tool_choice"] = json!({"type": "auto"}),
        Value::String(s) if s == "required" => out["tool_choice"] = json!({"type": "any"}),
        Value::String(s) if s == "none" => out["tool_choice"] = json!({"type": "none"}),
        Value::Object(o) => {
            out["tool_choice"] = json!({"type": "tool", "name": o["function"]["name"]})
        }
        other => panic!("no Anthropic equivalent for tool_choice {other}"),
    }
    assert!(
        req.get("response_format").is_none() && req.get("n").is_none(),
        "no Anthropic equivalent for {req}"
    );
    out
}

fn user_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("text") => json!({"type": "text", "text": p["text"]}),
                Some("image_url") => {
                    let url = p["image_url"]["url"].as_str().expect("url");
                    match url
                        .strip_prefix("data:")
                        .and_then(|r| r.split_once(";base64,"))
                    {
                        Some((media_type, data)) => json!({"type": "image", "source":
                            {"type": "base64", "media_type": media_type, "data": data}}),
                        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
                    }
                }
                other => panic!("no Anthropic equivalent for part {other:?}"),
            })
            .collect(),
        other => panic!("no Anthropic equivalent for content {other}"),
    }
}

const STOP_REASONS: &[&str] = &[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
];

fn finish_reason(stop_reason: &str) -> &'static str {
    assert!(
        STOP_REASONS.contains(&stop_reason),
        "unknown stop_reason {stop_reason}"
    );
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic usage → OpenAI usage (Anthropic's `input_tokens` leaves out the cache).
fn usage_to_openai(u: &Value) -> Value {
    let n = |k: &str| u[k].as_i64().unwrap_or(0);
    assert!(
        u["input_tokens"].is_i64() && u["output_tokens"].is_i64(),
        "usage has input and output tokens: {u}"
    );
    let read = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + read + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    })
}

fn tool_call(block: &Value, input: &Value) -> Value {
    assert!(
        block["id"].as_str().is_some_and(|id| !id.is_empty()),
        "tool_use has an id: {block}"
    );
    assert!(input.is_object(), "tool_use input is an object: {block}");
    json!({"id": block["id"], "type": "function", "function": {
        "name": block["name"], "arguments": input.to_string()}})
}

/// An Anthropic `message` → the OpenAI `chat.completion` it is equivalent to.
fn message_to_openai(text: &str) -> Value {
    let m: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("message not JSON ({e}): {text}"));
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["role"], "assistant", "{m}");
    assert!(m["id"].as_str().is_some_and(|id| !id.is_empty()), "{m}");
    let mut content = String::new();
    let mut calls = Vec::new();
    for block in m["content"].as_array().expect("content blocks") {
        match block["type"].as_str() {
            Some("text") => content.push_str(block["text"].as_str().expect("text")),
            Some("tool_use") => calls.push(tool_call(block, &block["input"])),
            other => panic!("unexpected block {other:?}: {m}"),
        }
    }
    let finish = finish_reason(m["stop_reason"].as_str().expect("stop_reason"));
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    json!({
        "object": "chat.completion", "model": m["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage_to_openai(&m["usage"]),
    })
}

/// Anthropic's error body → OpenAI's, checking Anthropic's shape and type per status.
fn error_to_openai(status: u16, text: &str) -> Value {
    let e: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("error not JSON ({e}): {text}"));
    assert_eq!(e["type"], "error", "{e}");
    let kind = e["error"]["type"].as_str().expect("error type");
    let expected = match status {
        400 => "invalid_request_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        s if s >= 500 => "api_error",
        _ => kind,
    };
    assert_eq!(kind, expected, "Anthropic error type for {status}: {e}");
    assert!(e["error"]["message"].is_string(), "{e}");
    let openai_type = match kind {
        "api_error" | "overloaded_error" | "timeout_error" => "server_error",
        other => other,
    };
    json!({"error": {"type": openai_type, "message": e["error"]["message"]}})
}

/// `event:`/`data:` pairs of an SSE body.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(
                        serde_json::from_str::<Value>(d)
                            .unwrap_or_else(|err| panic!("event data not JSON ({err}): {d}")),
                    );
                }
            }
            let name = name.unwrap_or_else(|| panic!("event without a name: {e}"));
            let data = data.unwrap_or_else(|| panic!("event without data: {e}"));
            assert_eq!(data["type"], name.as_str(), "event name = data type: {e}");
            (name, data)
        })
        .collect()
}

/// An Anthropic event stream → the OpenAI SSE body it is equivalent to, checking
/// the event order: message_start, then per block start/deltas/stop with indexes
/// counting up, message_delta, message_stop (pings anywhere after the start); or an
/// error event that ends the stream.
fn stream_to_openai(text: &str, include_usage: bool) -> String {
    let evs = events(text);
    let mut out = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    assert_eq!(
        evs.first().map(|e| e.0.as_str()),
        Some("message_start"),
        "{text}"
    );
    let mut usage = Map::new();
    let mut open: Option<(u64, Value, String)> = None; // index, block, tool input so far
    let mut next_index = 0;
    let mut tool_index = 0;
    let mut stop_reason = None;
    let mut stopped = false;
    for (i, (name, data)) in evs.iter().enumerate() {
        assert!(!stopped, "nothing after message_stop: {text}");
        match name.as_str() {
            "message_start" => {
                assert_eq!(i, 0, "one message_start: {text}");
                let m = &data["message"];
                assert_eq!(m["role"], "assistant");
                assert!(m["content"].as_array().is_some_and(Vec::is_empty));
                usage.extend(m["usage"].as_object().expect("usage").clone());
                out.push(chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ));
            }
            "ping" => {}
            "content_block_start" => {
                assert!(open.is_none(), "blocks do not overlap: {text}");
                assert!(stop_reason.is_none(), "blocks before message_delta: {text}");
                assert_eq!(data["index"], next_index, "block indexes count up: {text}");
                let block = data["content_block"].clone();
                match block["type"].as_str() {
                    Some("text") => {}
                    Some("tool_use") => {
                        out.push(chunk(
                            json!({"tool_calls": [{"index": tool_index, "id": block["id"],
                                "type": "function",
                                "function": {"name": block["name"], "arguments": ""}}]}),
                            Value::Null,
                        ));
                    }
                    other => panic!("unexpected block {other:?}: {text}"),
                }
                open = Some((next_index, block, String::new()));
            }
            "content_block_delta" => {
                let (index, block, input) = open.as_mut().expect("a delta inside a block");
                assert_eq!(data["index"], *index, "{text}");
                let delta = &data["delta"];
                match (block["type"].as_str(), delta["type"].as_str()) {
                    (Some("text"), Some("text_delta")) => out.push(chunk(
                        json!({"content": delta["text"].as_str().expect("text")}),
                        Value::Null,
                    )),
                    (Some("tool_use"), Some("input_json_delta")) => {
                        let part = delta["partial_json"].as_str().expect("partial_json");
                        input.push_str(part);
                        out.push(chunk(
                            json!({"tool_calls": [{"index": tool_index,
                                "function": {"arguments": part}}]}),
                            Value::Null,
                        ));
                    }
                    other => panic!("delta {other:?} does not fit its block: {text}"),
                }
            }
            "content_block_stop" => {
                let (index, block, input) = open.take().expect("a stop closes a block");
                assert_eq!(data["index"], index, "{text}");
                if block["type"] == "tool_use" {
                    let input = if input.is_empty() {
                        "{}"
                    } else {
                        input.as_str()
                    };
                    let input: Value = serde_json::from_str(input)
                        .unwrap_or_else(|e| panic!("tool input not JSON ({e}): {text}"));
                    tool_call(&block, &input);
                    tool_index += 1;
                }
                next_index += 1;
            }
            "message_delta" => {
                assert!(open.is_none(), "message_delta after the blocks: {text}");
                assert!(stop_reason.is_none(), "one message_delta: {text}");
                let reason = data["delta"]["stop_reason"].as_str().expect("stop_reason");
                stop_reason = Some(finish_reason(reason));
                usage.extend(data["usage"].as_object().expect("usage").clone());
                out.push(chunk(json!({}), json!(stop_reason)));
            }
            "message_stop" => {
                assert!(stop_reason.is_some(), "message_delta before message_stop");
                stopped = true;
            }
            "error" => {
                assert_eq!(i, evs.len() - 1, "an error ends the stream: {text}");
                let e = &data["error"];
                assert!(e["type"].is_string() && e["message"].is_string(), "{text}");
                let mut frames: Vec<String> = out.iter().map(Value::to_string).collect();
                frames.push(
                    json!({"error": {"type": e["type"], "message": e["message"]}}).to_string(),
                );
                return sse(&frames);
            }
            other => panic!("unexpected event {other}: {text}"),
        }
    }
    assert!(stopped, "the stream ends with message_stop: {text}");
    if include_usage {
        out.push(json!({"object": "chat.completion.chunk", "choices": [],
            "usage": usage_to_openai(&Value::Object(usage))}));
    }
    let mut frames: Vec<String> = out.iter().map(Value::to_string).collect();
    frames.push("[DONE]".into());
    sse(&frames)
}

fn sse(frames: &[String]) -> String {
    frames.iter().map(|f| format!("data: {f}\n\n")).collect()
}
