//! The Anthropic Messages API: `POST /v1/messages` (plain and SSE with named events) and
//! `POST /v1/messages/count_tokens`, with Anthropic's auth headers, error shapes and
//! usage semantics (`input_tokens` excludes the cached part).

mod request;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::conversation::{self, fragments, group_tokens, Answer, Continue, Finish};
use crate::generate::{alnum, derive_seed};
use crate::plumbing::{
    fault_and_latency, header_text, is_mid_stream_error, plain_body, plain_wait, response, rfc3339,
    stall_of, stream_events, timed_body, unique_hex, unix_now,
};
use crate::reasoning::{self, Kind};
use crate::routes::NativeRequest;
use crate::{Fault, FaultKind, Shared};

/// An error in Anthropic's shape: `{"type":"error","error":{"type","message"},"request_id"}`.
#[derive(Debug)]
pub(crate) struct AnthropicError {
    status: StatusCode,
    kind: String,
    message: String,
    retry_after_s: Option<u64>,
}

impl AnthropicError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> AnthropicError {
        AnthropicError {
            status,
            kind: kind.to_string(),
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> AnthropicError {
        AnthropicError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn body(&self, request_id: &str) -> Value {
        json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
            "request_id": request_id,
        })
    }
}

/// The error type and message Anthropic uses for an HTTP status.
fn kind_for_status(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "Simulated invalid request."),
        401 => ("authentication_error", "invalid x-api-key"),
        402 => (
            "billing_error",
            "Your credit balance is too low (simulated).",
        ),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource (simulated).",
        ),
        404 => (
            "not_found_error",
            "The requested resource could not be found (simulated).",
        ),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed size (simulated).",
        ),
        429 => (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization (simulated). Please \
             try again later.",
        ),
        504 => ("timeout_error", "Request timed out (simulated)."),
        529 => ("overloaded_error", "Overloaded"),
        s if s >= 500 => ("api_error", "Internal server error"),
        _ => ("invalid_request_error", "Simulated error."),
    }
}

/// The status of an error type (for faults that give only `error_type`).
fn status_for_kind(kind: &str) -> Option<u16> {
    Some(match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => return None,
    })
}

fn fault_error(fault: &Fault) -> AnthropicError {
    let code = fault
        .status
        .or_else(|| fault.error_type.as_deref().and_then(status_for_kind))
        .unwrap_or(500);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, message) = kind_for_status(code);
    AnthropicError {
        status,
        kind: fault.error_type.clone().unwrap_or_else(|| kind.to_string()),
        message: message.to_string(),
        retry_after_s: fault.retry_after_s.or((code == 429).then_some(1)),
    }
}

/// Per-request context: the request id.
struct Ctx {
    request_id: String,
}

impl Ctx {
    fn headers(&self) -> Vec<(&'static str, String)> {
        let reset = rfc3339(unix_now() + 1);
        vec![
            ("request-id", self.request_id.clone()),
            (
                "anthropic-organization-id",
                "00000000-0000-4000-8000-00000000516d".into(),
            ),
            ("anthropic-ratelimit-requests-limit", "4000".into()),
            ("anthropic-ratelimit-requests-remaining", "3999".into()),
            ("anthropic-ratelimit-requests-reset", reset.clone()),
            ("anthropic-ratelimit-tokens-limit", "2000000".into()),
            ("anthropic-ratelimit-tokens-remaining", "1999000".into()),
            ("anthropic-ratelimit-tokens-reset", reset.clone()),
            ("anthropic-ratelimit-input-tokens-limit", "1600000".into()),
            (
                "anthropic-ratelimit-input-tokens-remaining",
                "1599000".into(),
            ),
            ("anthropic-ratelimit-input-tokens-reset", reset.clone()),
            ("anthropic-ratelimit-output-tokens-limit", "400000".into()),
            (
                "anthropic-ratelimit-output-tokens-remaining",
                "399000".into(),
            ),
            ("anthropic-ratelimit-output-tokens-reset", reset),
        ]
    }

    fn json(&self, status: StatusCode, body: Body) -> Response {
        response(status, "application/json", body, &self.headers())
    }

    fn error(&self, err: AnthropicError) -> Response {
        let mut headers = self.headers();
        if let Some(secs) = err.retry_after_s {
            headers.push(("retry-after", secs.to_string()));
        }
        response(
            err.status,
            "application/json",
            Body::from(err.body(&self.request_id).to_string()),
            &headers,
        )
    }
}

/// `x-api-key` (or `Authorization: Bearer`) must be present, and equal the configured key.
fn check_auth(shared: &Shared, headers: &HeaderMap) -> Result<(), AnthropicError> {
    let key = header_text(headers, "x-api-key")
        .or_else(|| {
            header_text(headers, "authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
        })
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty());
    let unauthorized =
        |m: &str| AnthropicError::new(StatusCode::UNAUTHORIZED, "authentication_error", m);
    match (key, shared.opts.api_key.as_deref()) {
        (None, _) => Err(unauthorized("x-api-key header is required")),
        (Some(given), Some(expected)) if given != expected => {
            Err(unauthorized("invalid x-api-key"))
        }
        _ => Ok(()),
    }
}

/// `anthropic-version` is required and is a date (`2023-06-01`; newer SDKs send newer ones).
fn check_version(headers: &HeaderMap) -> Result<(), AnthropicError> {
    let Some(version) = header_text(headers, "anthropic-version") else {
        return Err(AnthropicError::invalid(
            "anthropic-version: header is required",
        ));
    };
    let v = version.trim().as_bytes();
    let date_like = v.len() == 10
        && v.iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if date_like {
        Ok(())
    } else {
        Err(AnthropicError::invalid(format!(
            "anthropic-version: \"{version}\" is not a valid version"
        )))
    }
}

pub(crate) async fn handle(req: NativeRequest, count_tokens: bool) -> Response {
    let ctx = Ctx {
        request_id: format!("req_011C{}", &unique_hex(&req.shared)[..20]),
    };
    if req.parts.method != Method::POST {
        return ctx.error(AnthropicError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {} is not allowed; use POST.", req.parts.method),
        ));
    }
    if let Err(e) =
        check_auth(&req.shared, &req.parts.headers).and_then(|()| check_version(&req.parts.headers))
    {
        return ctx.error(e);
    }
    let parsed = match request::parse(&req.body, count_tokens) {
        Ok(p) => p,
        Err(e) => return ctx.error(e),
    };
    if count_tokens {
        return ctx.json(
            StatusCode::OK,
            Body::from(json!({"input_tokens": parsed.prompt_tokens}).to_string()),
        );
    }
    let (fault, latency) = fault_and_latency(&req.shared, &req.instance, &parsed.model);
    if let Some(f) = fault
        .as_ref()
        .filter(|f| f.kind == FaultKind::Error && !is_mid_stream_error(f, parsed.stream))
    {
        return ctx.error(fault_error(f));
    }
    // A prefill: the answer goes on from the final assistant message, which
    // Anthropic refuses with trailing whitespace.
    let continued = conversation::continuation(&req.body, Continue::Prefill);
    if continued
        .as_ref()
        .is_some_and(|(_, so_far)| so_far.trim_end() != so_far)
    {
        return ctx.error(AnthropicError::invalid(
            "messages: final assistant content cannot end with trailing whitespace",
        ));
    }
    let plan = continued
        .and_then(|(mut base, so_far)| {
            if let Some(o) = base.as_object_mut() {
                o.remove("max_tokens");
            }
            let base = request::parse(&base, true).ok()?;
            Plan::continued(&parsed, &base, &so_far)
        })
        .unwrap_or_else(|| Plan::new(&parsed));
    let frames = plan.stream_frames(latency.chunks);
    if parsed.stream {
        let malformed = Bytes::from_static(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"broken\n\n",
        );
        let error_frame = fault.as_ref().map(|f| {
            let e = fault_error(f);
            sse(
                "error",
                &json!({"type": "error", "error": {"type": e.kind, "message": e.message}}),
            )
        });
        let events = stream_events(
            frames,
            None,
            &latency,
            fault.as_ref(),
            malformed,
            error_frame,
        );
        let mut headers = ctx.headers();
        headers.push(("cache-control", "no-cache".into()));
        return response(
            StatusCode::OK,
            "text/event-stream; charset=utf-8",
            timed_body(events),
            &headers,
        );
    }
    let wait = plain_wait(frames.len(), &latency) + stall_of(fault.as_ref());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    ctx.json(
        StatusCode::OK,
        plain_body(plan.message_json().to_string(), fault.as_ref()),
    )
}

/// A content block of the answer.
enum Block {
    /// Thinking text and the signature issued for it.
    Thinking {
        tokens: Vec<String>,
        signature: String,
    },
    RedactedThinking(String),
    Text(Vec<String>),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// Everything needed to render the answer, plain or streamed.
struct Plan {
    id: String,
    model: String,
    blocks: Vec<Block>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    input_tokens: u64,
    cache_read: u64,
    output_tokens: u64,
}

impl Plan {
    fn new(req: &request::MessagesRequest) -> Plan {
        let answer: Answer = conversation::answer(&req.conv, 0);
        let mut blocks = Vec::new();
        let mut thinking_tokens = 0u64;
        if req.thinking.on() {
            let tokens = reasoning::thought_tokens(&req.conv.digest);
            let signature = reasoning::sign(
                Kind::Anthropic,
                &req.model,
                derive_seed(&req.conv.digest, "signature", 0),
                &tokens.concat(),
            );
            thinking_tokens += tokens.len() as u64;
            blocks.push(Block::Thinking { tokens, signature });
            if req.redacted {
                blocks.push(Block::RedactedThinking(reasoning::sign(
                    Kind::Anthropic,
                    &req.model,
                    derive_seed(&req.conv.digest, "redacted", 0),
                    reasoning::REDACTED_CONTENT,
                )));
                thinking_tokens += reasoning::REDACTED_TOKENS;
            }
        }
        if !answer.text.is_empty() {
            blocks.push(Block::Text(answer.text.clone()));
        }
        for call in &answer.calls {
            blocks.push(Block::ToolUse {
                id: format!("toolu_01{}", alnum(call.seed, 22)),
                name: call.name.clone(),
                input: call.input.clone(),
            });
        }
        let (stop_reason, stop_sequence) = match &answer.finish {
            Finish::Done => ("end_turn", None),
            Finish::Length => ("max_tokens", None),
            Finish::Stop(s) => ("stop_sequence", Some(s.clone())),
            Finish::Tools => ("tool_use", None),
        };
        Plan {
            id: format!(
                "msg_01{}",
                alnum(derive_seed(&req.conv.digest, "id", 0), 22)
            ),
            model: req.model.clone(),
            blocks,
            stop_reason,
            stop_sequence,
            input_tokens: req.prompt_tokens - req.cached_tokens,
            cache_read: req.cached_tokens,
            output_tokens: answer.output_tokens().max(1) + thinking_tokens,
        }
    }

    /// The answer to a prefilled `req`: the rest, after `so_far`, of the text answer
    /// `base` (the request without the prefill) gets; `None` when that answer is no
    /// such text.
    fn continued(
        req: &request::MessagesRequest,
        base: &request::MessagesRequest,
        so_far: &str,
    ) -> Option<Plan> {
        let mut plan = Plan::new(base);
        if plan
            .blocks
            .iter()
            .any(|b| matches!(b, Block::ToolUse { .. }))
        {
            return None;
        }
        let text = plan.blocks.iter_mut().find_map(|b| match b {
            Block::Text(tokens) => Some(tokens),
            _ => None,
        })?;
        let rest = conversation::after_prefix(text, so_far)?;
        let (kept, finish) = conversation::limit_tokens(rest, &req.conv.stop, req.conv.limit);
        // What the answer spent thinking stays counted.
        let thinking = plan.output_tokens.saturating_sub(text.len() as u64);
        plan.output_tokens = (kept.len() as u64).max(1) + thinking;
        *text = kept;
        (plan.stop_reason, plan.stop_sequence) = match finish {
            Finish::Length => ("max_tokens", None),
            Finish::Stop(s) => ("stop_sequence", Some(s)),
            Finish::Done | Finish::Tools => ("end_turn", None),
        };
        plan.input_tokens = req.prompt_tokens - req.cached_tokens;
        plan.cache_read = req.cached_tokens;
        Some(plan)
    }

    fn message_json(&self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .iter()
            .map(|b| match b {
                Block::Thinking { tokens, signature } => {
                    json!({"type": "thinking", "thinking": tokens.concat(), "signature": signature})
                }
                Block::RedactedThinking(data) => json!({"type": "redacted_thinking", "data": data}),
                Block::Text(tokens) => json!({"type": "text", "text": tokens.concat()}),
                Block::ToolUse { id, name, input } => {
                    json!({"type": "tool_use", "id": id, "name": name, "input": input})
                }
            })
            .collect();
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": self.cache_read,
                "output_tokens": self.output_tokens,
                "service_tier": "standard",
            },
        })
    }

    /// The SSE events of the streamed answer, in order.
    fn stream_frames(&self, chunks: Option<u32>) -> Vec<Bytes> {
        let mut frames = vec![sse(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": self.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": self.cache_read,
                    "output_tokens": 1,
                    "service_tier": "standard",
                },
            }}),
        )];
        let ping = || sse("ping", &json!({"type": "ping"}));
        if self.blocks.is_empty() {
            frames.push(ping());
        }
        for (index, block) in self.blocks.iter().enumerate() {
            let start = match block {
                Block::Thinking { .. } => {
                    json!({"type": "thinking", "thinking": "", "signature": ""})
                }
                Block::RedactedThinking(data) => json!({"type": "redacted_thinking", "data": data}),
                Block::Text(_) => json!({"type": "text", "text": ""}),
                Block::ToolUse { id, name, .. } => {
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}})
                }
            };
            frames.push(sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            if index == 0 {
                frames.push(ping());
            }
            let deltas: Vec<Value> = match block {
                Block::Thinking { tokens, signature } => group_tokens(tokens, chunks)
                    .into_iter()
                    .map(|piece| json!({"type": "thinking_delta", "thinking": piece}))
                    .chain(std::iter::once(
                        json!({"type": "signature_delta", "signature": signature}),
                    ))
                    .collect(),
                Block::RedactedThinking(_) => Vec::new(),
                Block::Text(tokens) => group_tokens(tokens, chunks)
                    .into_iter()
                    .map(|piece| json!({"type": "text_delta", "text": piece}))
                    .collect(),
                Block::ToolUse { input, .. } => std::iter::once(String::new())
                    .chain(fragments(&input.to_string()))
                    .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                    .collect(),
            };
            for delta in deltas {
                frames.push(sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            frames.push(sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
        frames.push(sse(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                "usage": {"output_tokens": self.output_tokens},
            }),
        ));
        frames.push(sse("message_stop", &json!({"type": "message_stop"})));
        frames
    }
}

fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_kinds() {
        assert_eq!(kind_for_status(529).0, "overloaded_error");
        assert_eq!(kind_for_status(429).0, "rate_limit_error");
        assert_eq!(kind_for_status(503).0, "api_error");
        let e = fault_error(&Fault::error(429));
        assert_eq!(e.retry_after_s, Some(1));
        let e = fault_error(&Fault::error(500).with_type("overloaded_error"));
        assert_eq!(e.kind, "overloaded_error");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let e = fault_error(&Fault {
            status: None,
            ..Fault::error(500).with_type("overloaded_error")
        });
        assert_eq!(e.status.as_u16(), 529);
    }

    #[test]
    fn stream_event_order() {
        let body = json!({"model":"m","max_tokens":50,"messages":[{"role":"user","content":"use f"}],
            "tools":[{"name":"f","input_schema":{"type":"object","properties":{"a":{"type":"string"}}}}]});
        let parsed = match request::parse(&body, false) {
            Ok(p) => p,
            Err(e) => panic!("{}", e.message),
        };
        let plan = Plan::new(&parsed);
        let names: Vec<String> = plan
            .stream_frames(None)
            .iter()
            .map(|f| {
                let text = String::from_utf8_lossy(f).into_owned();
                text.lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("event: ")
                    .to_string()
            })
            .collect();
        assert_eq!(names[0], "message_start");
        assert_eq!(names[1], "content_block_start");
        assert_eq!(names[2], "ping");
        assert_eq!(names[names.len() - 2], "message_delta");
        assert_eq!(names[names.len() - 1], "message_stop");
        assert_eq!(plan.stop_reason, "tool_use");
        // A preamble text block (index 0) comes before the tool use (index 1).
        assert!(matches!(plan.blocks[0], Block::Text(_)));
        assert!(matches!(plan.blocks[1], Block::ToolUse { .. }));
    }
}
