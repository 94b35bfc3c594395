//! Mistral's chat API at `/mistral/v1/chat/completions` (base URL `…/mistral/v1`, as
//! `https://api.mistral.ai/v1`): OpenAI-shaped, with Mistral's differences:
//! - tool-call ids are 9 alphanumerics, and ids in the conversation must be too (400
//!   `invalid_function_call` otherwise, as Mistral answers);
//! - `tool_choice` also takes `"any"` (same as `"required"`);
//! - the last message must be `user` or `tool` (or `assistant` with `prefix: true`);
//! - streamed tool calls arrive whole, and the last chunk always carries `usage`;
//! - errors are `{"object":"error","message","type","param","code"}`, 422 for missing
//!   fields, 401 `{"detail":"Unauthorized"}`, 429 `{"message":"Requests rate limit exceeded"}`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::conversation::{
    self, cached_tokens, group_tokens, Answer, Choice, Conversation, Finish, OutFormat, ToolSpec,
};
use crate::generate::{self, alnum, message_text};
use crate::openai::{parse_chat, ChatRequest, Format, ToolChoice};
use crate::plumbing::{
    fault_and_latency, header_text, is_mid_stream_error, plain_body, plain_wait, response,
    stall_of, stream_events, timed_body, unique_hex, unix_now,
};
use crate::routes::NativeRequest;
use crate::{Fault, FaultKind, Shared};

struct MistralError {
    status: StatusCode,
    body: Value,
    retry_after_s: Option<u64>,
}

impl MistralError {
    fn new(
        status: StatusCode,
        kind: &str,
        message: impl Into<String>,
        code: Option<&str>,
    ) -> MistralError {
        MistralError {
            status,
            body: json!({
                "object": "error",
                "message": message.into(),
                "type": kind,
                "param": null,
                "code": code,
            }),
            retry_after_s: None,
        }
    }

    fn invalid(message: impl Into<String>) -> MistralError {
        MistralError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
            None,
        )
    }

    /// A missing required field: 422 with the validation detail.
    fn missing(field: &str, input: &Value) -> MistralError {
        MistralError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({
                "object": "error",
                "message": {"detail": [{
                    "type": "missing",
                    "loc": ["body", field],
                    "msg": "Field required",
                    "input": input,
                }]},
                "type": "invalid_request_error",
                "param": null,
                "code": null,
            }),
            retry_after_s: None,
        }
    }

    fn response(self, request_id: &str) -> Response {
        let mut headers = common_headers(request_id);
        if let Some(secs) = self.retry_after_s {
            headers.push(("retry-after", secs.to_string()));
        }
        response(
            self.status,
            "application/json",
            Body::from(self.body.to_string()),
            &headers,
        )
    }
}

fn common_headers(request_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("mistral-correlation-id", request_id.to_string()),
        ("x-ratelimit-limit-req-minute", "720".into()),
        ("x-ratelimit-remaining-req-minute", "719".into()),
        ("x-ratelimit-limit-tokens-minute", "5000000".into()),
        ("x-ratelimit-remaining-tokens-minute", "4999000".into()),
    ]
}

fn fault_error(fault: &Fault, model: &str) -> MistralError {
    let code = fault.status.unwrap_or(500);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut err = match code {
        429 => MistralError {
            status,
            body: json!({"message": "Requests rate limit exceeded"}),
            retry_after_s: None,
        },
        401 => MistralError {
            status,
            body: json!({"detail": "Unauthorized"}),
            retry_after_s: None,
        },
        404 => MistralError::new(
            status,
            "invalid_model",
            format!("Invalid model: {model}"),
            Some("1500"),
        ),
        400 => MistralError::invalid("Simulated bad request."),
        c if c >= 500 => MistralError::new(
            status,
            "internal_server_error",
            "Internal server error (simulated).",
            None,
        ),
        _ => MistralError::new(status, "invalid_request_error", "Simulated error.", None),
    };
    if let Some(kind) = &fault.error_type {
        err.body["type"] = json!(kind);
    }
    err.retry_after_s = fault.retry_after_s;
    err
}

fn check_auth(shared: &Shared, req: &NativeRequest) -> Result<(), MistralError> {
    let key = header_text(&req.parts.headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(|k| k.trim().to_string()))
        .filter(|k| !k.is_empty());
    let ok = match (key, shared.opts.api_key.as_deref()) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(given), Some(expected)) => given == expected,
    };
    if ok {
        Ok(())
    } else {
        Err(MistralError {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"detail": "Unauthorized"}),
            retry_after_s: None,
        })
    }
}

fn valid_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn bad_id(id: &str) -> MistralError {
    MistralError {
        body: json!({
            "object": "error",
            "message": format!("Tool call id was {id} but must be a-z, A-Z, 0-9, with a length of 9."),
            "type": "invalid_function_call",
            "param": null,
            "code": "3280",
            "raw_status_code": 400,
        }),
        ..MistralError::invalid("")
    }
}

/// Mistral's own checks before the OpenAI-shaped validation: required fields, tool-call
/// id format, the role of the last message; `"any"` becomes `"required"`.
fn mistral_checks(body: &Value) -> Result<Value, MistralError> {
    let Some(map) = body.as_object() else {
        return Err(MistralError::invalid(
            "The request body must be a JSON object.",
        ));
    };
    for field in ["model", "messages"] {
        if map.get(field).is_none_or(Value::is_null) {
            return Err(MistralError::missing(field, body));
        }
    }
    let mut body = body.clone();
    if body.get("tool_choice").and_then(Value::as_str) == Some("any") {
        body["tool_choice"] = json!("required");
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    for m in &messages {
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            for call in calls {
                let id = call.get("id").and_then(Value::as_str).unwrap_or("null");
                if !valid_id(id) {
                    return Err(bad_id(id));
                }
            }
        }
        if m.get("role").and_then(Value::as_str) == Some("tool") {
            let id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or("null");
            if !valid_id(id) {
                return Err(bad_id(id));
            }
        }
    }
    if let Some(last) = messages.last() {
        let role = last.get("role").and_then(Value::as_str).unwrap_or("");
        let prefix = last.get("prefix").and_then(Value::as_bool) == Some(true);
        let ok = role == "user" || role == "tool" || (role == "assistant" && prefix);
        if !ok {
            return Err(MistralError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_message_order",
                format!(
                    "Expected last role User or Tool (or Assistant with prefix True) for serving \
                     but got {role}"
                ),
                Some("3230"),
            ));
        }
    }
    Ok(body)
}

/// The OpenAI-shaped request as a protocol-neutral conversation.
fn conversation(req: &ChatRequest) -> Conversation {
    let all_text: String = req
        .messages
        .iter()
        .map(message_text)
        .collect::<Vec<_>>()
        .join("\n");
    let last_user_text = req
        .messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let ends_with_tool_result = req
        .messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    Conversation {
        digest: req.digest,
        all_text,
        last_user_text,
        ends_with_tool_result,
        tools: req
            .tools
            .iter()
            .map(|t| ToolSpec {
                name: t.name.clone(),
                schema: t.parameters.clone(),
            })
            .collect(),
        choice: match &req.tool_choice {
            ToolChoice::Auto => Choice::Auto,
            ToolChoice::Never => Choice::Never,
            ToolChoice::Required => Choice::Any,
            ToolChoice::Named(n) => Choice::Named(n.clone()),
        },
        parallel: req.parallel_tool_calls,
        preamble: false,
        limit: req.limit,
        stop: req.stop.clone(),
        format: match &req.format {
            Format::Text => OutFormat::Text,
            Format::JsonObject => OutFormat::JsonObject,
            Format::JsonSchema(s) => OutFormat::JsonSchema(s.clone()),
        },
    }
}

pub(crate) async fn handle(req: NativeRequest) -> Response {
    let request_id = unique_hex(&req.shared);
    if req.parts.method != Method::POST {
        return MistralError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "Method Not Allowed",
            None,
        )
        .response(&request_id);
    }
    if let Err(e) = check_auth(&req.shared, &req) {
        return e.response(&request_id);
    }
    let body = match mistral_checks(&req.body) {
        Ok(b) => b,
        Err(e) => return e.response(&request_id),
    };
    let chat = match parse_chat(&body, None) {
        Ok(c) => c,
        Err(e) => {
            let mut err = MistralError::invalid(e.message());
            err.status = e.status();
            return err.response(&request_id);
        }
    };
    let (fault, latency) = fault_and_latency(&req.shared, &req.instance, &chat.model);
    if let Some(f) = fault
        .as_ref()
        .filter(|f| f.kind == FaultKind::Error && !is_mid_stream_error(f, chat.stream))
    {
        return fault_error(f, &chat.model).response(&request_id);
    }
    let conv = conversation(&chat);
    // `prefix: true` on a final assistant message: the answer goes on from it.
    let continued = conversation::continuation(&body, conversation::Continue::Prefix).and_then(
        |(mut base, so_far)| {
            if let Some(o) = base.as_object_mut() {
                o.remove("max_tokens");
            }
            let base = parse_chat(&base, None).ok()?;
            Some((conversation(&base), so_far))
        },
    );
    let answers: Vec<Answer> = (0..chat.n)
        .map(|i| {
            continued
                .as_ref()
                .and_then(|(base, so_far)| {
                    let whole = conversation::answer(base, i);
                    if !whole.calls.is_empty() {
                        return None;
                    }
                    let rest = conversation::after_prefix(&whole.text, so_far)?;
                    let (text, finish) = conversation::limit_tokens(rest, &conv.stop, conv.limit);
                    Some(Answer {
                        text,
                        calls: Vec::new(),
                        finish,
                    })
                })
                .unwrap_or_else(|| conversation::answer(&conv, i))
        })
        .collect();
    let prompt = generate::prompt_tokens(&chat.messages, &chat.tool_values);
    let plan = Plan {
        id: request_id.clone(),
        created: unix_now(),
        model: chat.model.clone(),
        answers,
        prompt,
        cached: cached_tokens(&conv.all_text, prompt),
    };
    let chunks = plan.chunks(latency.chunks);
    if chat.stream {
        let frames: Vec<Bytes> = chunks
            .iter()
            .map(|c| Bytes::from(format!("data: {c}\n\n")))
            .collect();
        let malformed = Bytes::from(format!(
            "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"broken\n\n",
            plan.id
        ));
        let error_frame = fault.as_ref().map(|f| {
            let e = fault_error(f, &chat.model);
            Bytes::from(format!("data: {}\n\n", e.body))
        });
        let events = stream_events(
            frames,
            Some(Bytes::from_static(b"data: [DONE]\n\n")),
            &latency,
            fault.as_ref(),
            malformed,
            error_frame,
        );
        let mut headers = common_headers(&request_id);
        headers.push(("cache-control", "no-cache".into()));
        return response(
            StatusCode::OK,
            "text/event-stream",
            timed_body(events),
            &headers,
        );
    }
    let wait: Duration = plain_wait(chunks.len(), &latency) + stall_of(fault.as_ref());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    response(
        StatusCode::OK,
        "application/json",
        plain_body(plan.completion().to_string(), fault.as_ref()),
        &common_headers(&request_id),
    )
}

struct Plan {
    id: String,
    created: u64,
    model: String,
    answers: Vec<Answer>,
    prompt: u64,
    cached: u64,
}

fn finish_reason(finish: &Finish) -> &'static str {
    match finish {
        Finish::Length => "length",
        Finish::Tools => "tool_calls",
        Finish::Done | Finish::Stop(_) => "stop",
    }
}

impl Plan {
    fn usage(&self) -> Value {
        let completion: u64 = self.answers.iter().map(Answer::output_tokens).sum();
        let mut usage = json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": completion,
            "total_tokens": self.prompt + completion,
        });
        if self.cached > 0 {
            usage["prompt_tokens_details"] = json!({"cached_tokens": self.cached});
        }
        usage
    }

    fn tool_calls(answer: &Answer) -> Value {
        Value::Array(
            answer
                .calls
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    json!({
                        "id": alnum(c.seed, 9),
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.input.to_string()},
                        "index": k,
                    })
                })
                .collect(),
        )
    }

    fn completion(&self) -> Value {
        let choices: Vec<Value> = self
            .answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let tool_calls = if a.calls.is_empty() {
                    Value::Null
                } else {
                    Plan::tool_calls(a)
                };
                json!({
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": a.text(),
                        "tool_calls": tool_calls,
                        "prefix": false,
                    },
                    "finish_reason": finish_reason(&a.finish),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        })
    }

    fn chunks(&self, chunks: Option<u32>) -> Vec<Value> {
        let frame = |choice: Value| {
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
            })
        };
        let mut out = Vec::new();
        for (i, a) in self.answers.iter().enumerate() {
            out.push(frame(json!({
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": null,
            })));
            for piece in group_tokens(&a.text, chunks) {
                out.push(frame(json!({
                    "index": i,
                    "delta": {"content": piece},
                    "finish_reason": null,
                })));
            }
            if !a.calls.is_empty() {
                out.push(frame(json!({
                    "index": i,
                    "delta": {"tool_calls": Plan::tool_calls(a)},
                    "finish_reason": null,
                })));
            }
            out.push(frame(json!({
                "index": i,
                "delta": {"content": ""},
                "finish_reason": finish_reason(&a.finish),
            })));
        }
        if let Some(last) = out.last_mut() {
            last["usage"] = self.usage();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_checks() {
        assert!(valid_id("D681PevKs"));
        assert!(!valid_id("call_0fypS1hVX"));
        assert!(!valid_id("abc_12345"));
        let body = json!({"model":"m","messages":[
            {"role":"user","content":"x"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_123456","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"call_123456","content":"1"}]});
        match mistral_checks(&body) {
            Err(e) => assert_eq!(e.body["type"], "invalid_function_call"),
            Ok(_) => panic!("expected an error"),
        }
        let body = json!({"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]});
        match mistral_checks(&body) {
            Err(e) => assert_eq!(e.body["code"], "3230"),
            Ok(_) => panic!("expected an error"),
        }
        match mistral_checks(&json!({"model":"m"})) {
            Err(e) => assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY),
            Ok(_) => panic!("expected an error"),
        }
        let body = mistral_checks(
            &json!({"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"any"}),
        )
        .unwrap_or_else(|_| panic!("valid"));
        assert_eq!(body["tool_choice"], "required");
    }
}
