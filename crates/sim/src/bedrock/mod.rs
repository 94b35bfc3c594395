//! AWS Bedrock Runtime Converse: `POST /model/{modelId}/converse` (JSON) and
//! `/converse-stream` (binary event stream), authenticated with SigV4 (verified as AWS
//! does) or a Bedrock API key, with Bedrock's exception names and error shapes.

mod eventstream;
mod request;
mod sigv4;

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::conversation::{self, fragments, group_tokens, Finish};
use crate::generate::alnum;
use crate::generate::derive_seed;
use crate::plumbing::{
    fault_and_latency, is_mid_stream_error, plain_body, plain_wait, response, stall_of,
    stream_events, timed_body, unique_hex, unix_now,
};
use crate::reasoning::{self, Kind};
use crate::routes::NativeRequest;
use crate::{Fault, FaultKind, Shared};

const ERROR_NAMESPACE: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";
const AUTH_NAMESPACE: &str = "http://internal.amazon.com/coral/com.amazon.coral.service/";

/// A Bedrock error: the status, the exception name (`x-amzn-ErrorType`) and the message.
#[derive(Debug)]
struct BedrockError {
    status: StatusCode,
    name: String,
    message: String,
    namespace: &'static str,
    retry_after_s: Option<u64>,
}

impl BedrockError {
    fn new(status: StatusCode, name: &str, message: impl Into<String>) -> BedrockError {
        BedrockError {
            status,
            name: name.to_string(),
            message: message.into(),
            namespace: ERROR_NAMESPACE,
            retry_after_s: None,
        }
    }

    fn validation(message: impl Into<String>) -> BedrockError {
        BedrockError::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }
}

/// The exception Bedrock sends for a status, with its usual message.
fn exception_for_status(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("ValidationException", "Simulated validation error."),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
        ),
        424 => (
            "ModelErrorException",
            "The model returned an error (simulated).",
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        s if s >= 500 => (
            "InternalServerException",
            "The system encountered an unexpected error during processing. Try your request again.",
        ),
        _ => ("ValidationException", "Simulated validation error."),
    }
}

/// The status of a named exception (for faults that give only `error_type`).
fn status_for_exception(name: &str) -> Option<u16> {
    Some(match name {
        "ValidationException" | "ServiceQuotaExceededException" | "ConflictException" => 400,
        "AccessDeniedException" => 403,
        "ResourceNotFoundException" => 404,
        "ModelTimeoutException" => 408,
        "ModelErrorException" | "ModelStreamErrorException" => 424,
        "ThrottlingException" | "ModelNotReadyException" => 429,
        "InternalServerException" => 500,
        "ServiceUnavailableException" => 503,
        _ => return None,
    })
}

fn fault_error(fault: &Fault) -> BedrockError {
    let code = fault
        .status
        .or_else(|| fault.error_type.as_deref().and_then(status_for_exception))
        .unwrap_or(500);
    let (default_name, default_message) = exception_for_status(code);
    let name = fault.error_type.as_deref().unwrap_or(default_name);
    let message = match name {
        "ModelNotReadyException" => {
            "Model is not ready for inference. Wait and try your request again."
        }
        n if n == default_name => default_message,
        _ => "Simulated error.",
    };
    BedrockError {
        retry_after_s: fault.retry_after_s,
        ..BedrockError::new(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            name,
            message,
        )
    }
}

/// The in-stream exception frame for a fault: the member name is the exception's name
/// with a lower-case first letter (`throttlingException`).
fn exception_frame(fault: &Fault) -> Bytes {
    let err = fault_error(fault);
    let mut chars = err.name.chars();
    let member: String = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    };
    let mut payload = json!({"message": err.message});
    if member == "modelStreamErrorException" || member == "modelErrorException" {
        payload["originalStatusCode"] = json!(500);
        payload["originalMessage"] = json!("The model stream failed (simulated).");
    }
    eventstream::exception(&member, &payload)
}

struct Ctx {
    request_id: String,
}

impl Ctx {
    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![("x-amzn-requestid", self.request_id.clone())]
    }

    fn error(&self, err: BedrockError) -> Response {
        let mut headers = self.headers();
        headers.push((
            "x-amzn-errortype",
            format!("{}:{}", err.name, err.namespace),
        ));
        if let Some(secs) = err.retry_after_s {
            headers.push(("retry-after", secs.to_string()));
        }
        response(
            err.status,
            "application/json",
            Body::from(json!({"message": err.message}).to_string()),
            &headers,
        )
    }
}

use crate::auth::AwsKey;

/// SigV4 with the configured credentials (or temporary ones the simulator issued), or
/// a Bedrock API key as a bearer token.
fn check_auth(shared: &Shared, req: &NativeRequest) -> Result<(), BedrockError> {
    let headers: Vec<(String, String)> = req
        .parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let authorization = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.trim().to_string());
    if let Some(token) = authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        let ok = match shared.opts.api_key.as_deref() {
            Some(expected) => token.trim() == expected,
            None => !token.trim().is_empty(),
        };
        return if ok {
            Ok(())
        } else {
            Err(BedrockError {
                namespace: AUTH_NAMESPACE,
                ..BedrockError::new(
                    StatusCode::FORBIDDEN,
                    "UnrecognizedClientException",
                    "Invalid API Key format: Must start with pre-defined prefix",
                )
            })
        };
    }
    let host = req
        .parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.parts.uri.authority().map(|a| a.as_str().to_string()));
    let signed = sigv4::SignedRequest {
        method: req.parts.method.as_str(),
        raw_path: req.parts.uri.path(),
        raw_query: req.parts.uri.query(),
        headers,
        host,
        body: &req.bytes,
    };
    let auth_error = |name: &str, message: &str| BedrockError {
        namespace: AUTH_NAMESPACE,
        ..BedrockError::new(StatusCode::FORBIDDEN, name, message)
    };
    // Temporary credentials issued by the simulated STS or container endpoint.
    let key_id = signed
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .and_then(|(_, v)| sigv4::parse_authorization(v).ok())
        .map(|a| a.access_key_id);
    let issued = key_id.map(|id| (shared.authority().aws_secret(&id), id));
    let (access_key_id, secret_access_key, session_token) = match issued {
        Some((
            AwsKey::Valid {
                secret,
                session_token,
            },
            id,
        )) => (id, secret, Some(session_token)),
        Some((AwsKey::Expired, _)) => {
            return Err(auth_error(
                "ExpiredTokenException",
                "The security token included in the request is expired",
            ))
        }
        Some((AwsKey::Invalid, _)) => {
            return Err(auth_error(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ))
        }
        Some((AwsKey::NotOurs, _)) | None => (
            shared.opts.aws_access_key_id.clone(),
            shared.opts.aws_secret_access_key.clone(),
            shared.opts.aws_session_token.clone(),
        ),
    };
    let creds = sigv4::Credentials {
        access_key_id: &access_key_id,
        secret_access_key: &secret_access_key,
        session_token: session_token.as_deref(),
    };
    sigv4::verify(&signed, &creds, unix_now()).map_err(|e| {
        let (name, message) = e.describe();
        BedrockError {
            namespace: AUTH_NAMESPACE,
            ..BedrockError::new(StatusCode::FORBIDDEN, name, message)
        }
    })
}

/// `xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx` from 32 hex characters.
fn uuid_like(hex: &str) -> String {
    let h = format!("{hex:0<32}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub(crate) async fn handle(req: NativeRequest, model: String, stream: bool) -> Response {
    let ctx = Ctx {
        request_id: uuid_like(&unique_hex(&req.shared)),
    };
    if req.parts.method != Method::POST {
        return ctx.error(BedrockError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!(
                "Unknown operation {} {}",
                req.parts.method,
                req.parts.uri.path()
            ),
        ));
    }
    if let Err(e) = check_auth(&req.shared, &req) {
        return ctx.error(e);
    }
    if !req.body.is_object() {
        return ctx.error(BedrockError::new(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "The request body could not be parsed as a JSON object.",
        ));
    }
    let parsed = match request::parse(&req.body, &model) {
        Ok(p) => p,
        Err(e) => return ctx.error(BedrockError::validation(e.0)),
    };
    let (fault, latency) = fault_and_latency(&req.shared, &req.instance, &model);
    if let Some(f) = fault
        .as_ref()
        .filter(|f| f.kind == FaultKind::Error && !is_mid_stream_error(f, stream))
    {
        return ctx.error(fault_error(f));
    }
    let answer = continued_answer(&req.body, &parsed, &model)
        .unwrap_or_else(|| conversation::answer(&parsed.conv, 0));
    let plan = Plan::new(&parsed, &model, &latency, answer);
    let frames = plan.frames(latency.chunks);
    if stream {
        let malformed = eventstream::event_raw(
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"broken"#,
        );
        let error_frame = fault.as_ref().map(exception_frame);
        let events = stream_events(
            frames,
            None,
            &latency,
            fault.as_ref(),
            malformed,
            error_frame,
        );
        return response(
            StatusCode::OK,
            "application/vnd.amazon.eventstream",
            timed_body(events),
            &ctx.headers(),
        );
    }
    let wait = plain_wait(frames.len(), &latency) + stall_of(fault.as_ref());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    response(
        StatusCode::OK,
        "application/json",
        plain_body(plan.converse_json().to_string(), fault.as_ref()),
        &ctx.headers(),
    )
}

enum Block {
    /// `reasoningContent.reasoningText`: the text and its signature.
    Reasoning {
        tokens: Vec<String>,
        signature: String,
    },
    /// `reasoningContent.redactedContent` (base64).
    Redacted(String),
    Text(Vec<String>),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

struct Plan {
    blocks: Vec<Block>,
    stop_reason: &'static str,
    /// `additionalModelResponseFields`, when the request asked for `/stop_sequence`.
    extra_fields: Option<Value>,
    usage: Value,
    latency_ms: u64,
}

/// The answer to a request whose final assistant message is a prefill (Claude on
/// Bedrock continues it): the rest, after it, of the text answer the request without
/// it gets, cut by `req`'s own limits; `None` when there is no such text.
fn continued_answer(
    body: &Value,
    req: &request::ConverseRequest,
    model: &str,
) -> Option<conversation::Answer> {
    let (mut base, so_far) = conversation::continuation(body, conversation::Continue::Prefill)?;
    if let Some(config) = base
        .get_mut("inferenceConfig")
        .and_then(Value::as_object_mut)
    {
        config.remove("maxTokens");
    }
    let base = request::parse(&base, model).ok()?;
    let whole = conversation::answer(&base.conv, 0);
    if !whole.calls.is_empty() {
        return None;
    }
    let rest = conversation::after_prefix(&whole.text, &so_far)?;
    let (text, finish) = conversation::limit_tokens(rest, &req.conv.stop, req.conv.limit);
    Some(conversation::Answer {
        text,
        calls: Vec::new(),
        finish,
    })
}

impl Plan {
    fn new(
        req: &request::ConverseRequest,
        model: &str,
        latency: &crate::Latency,
        answer: conversation::Answer,
    ) -> Plan {
        let mut blocks = Vec::new();
        let mut thinking_tokens = 0u64;
        if req.thinking.on() {
            let tokens = reasoning::thought_tokens(&req.conv.digest);
            let signature = reasoning::sign(
                Kind::Bedrock,
                model,
                derive_seed(&req.conv.digest, "signature", 0),
                &tokens.concat(),
            );
            thinking_tokens += tokens.len() as u64;
            blocks.push(Block::Reasoning { tokens, signature });
            if req.redacted {
                blocks.push(Block::Redacted(reasoning::sign(
                    Kind::Bedrock,
                    model,
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
                id: format!("tooluse_{}", alnum(call.seed, 22)),
                name: call.name.clone(),
                input: call.input.clone(),
            });
        }
        let stop_reason = match &answer.finish {
            Finish::Done => "end_turn",
            Finish::Length => "max_tokens",
            Finish::Stop(_) => "stop_sequence",
            Finish::Tools => "tool_use",
        };
        let extra_fields = req.wants_stop_sequence.then(|| match &answer.finish {
            Finish::Stop(s) => json!({"stop_sequence": s}),
            _ => json!({"stop_sequence": null}),
        });
        let output = answer.output_tokens().max(1) + thinking_tokens;
        let mut usage = json!({
            "inputTokens": req.prompt_tokens - req.cached_tokens,
            "outputTokens": output,
            "totalTokens": req.prompt_tokens + output,
        });
        if req.cached_tokens > 0 {
            usage["cacheReadInputTokens"] = json!(req.cached_tokens);
            usage["cacheWriteInputTokens"] = json!(0);
        }
        let chunks = blocks.len() as u64 + 2;
        Plan {
            blocks,
            stop_reason,
            extra_fields,
            usage,
            latency_ms: (latency.ttft_ms + latency.chunk_delay_ms * chunks).max(1),
        }
    }

    fn converse_json(&self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .iter()
            .map(|b| match b {
                Block::Reasoning { tokens, signature } => json!({"reasoningContent": {
                    "reasoningText": {"text": tokens.concat(), "signature": signature}}}),
                Block::Redacted(data) => json!({"reasoningContent": {"redactedContent": data}}),
                Block::Text(tokens) => json!({"text": tokens.concat()}),
                Block::ToolUse { id, name, input } => {
                    json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
                }
            })
            .collect();
        let mut body = json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.stop_reason,
            "usage": self.usage,
            "metrics": {"latencyMs": self.latency_ms},
        });
        if let Some(extra) = &self.extra_fields {
            body["additionalModelResponseFields"] = extra.clone();
        }
        body
    }

    /// The event-stream messages of ConverseStream, in order.
    fn frames(&self, chunks: Option<u32>) -> Vec<Bytes> {
        let mut frames = vec![eventstream::event(
            "messageStart",
            &json!({"role": "assistant"}),
        )];
        for (index, block) in self.blocks.iter().enumerate() {
            match block {
                Block::Reasoning { tokens, signature } => {
                    for piece in group_tokens(tokens, chunks) {
                        frames.push(eventstream::event(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece}}}),
                        ));
                    }
                    frames.push(eventstream::event(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": index, "delta": {"reasoningContent": {"signature": signature}}}),
                    ));
                }
                Block::Redacted(data) => {
                    frames.push(eventstream::event(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": index, "delta": {"reasoningContent": {"redactedContent": data}}}),
                    ));
                }
                Block::Text(tokens) => {
                    for piece in group_tokens(tokens, chunks) {
                        frames.push(eventstream::event(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": index, "delta": {"text": piece}}),
                        ));
                    }
                }
                Block::ToolUse { id, name, input } => {
                    frames.push(eventstream::event(
                        "contentBlockStart",
                        &json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                    ));
                    for piece in fragments(&input.to_string()) {
                        frames.push(eventstream::event(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
                        ));
                    }
                }
            }
            frames.push(eventstream::event(
                "contentBlockStop",
                &json!({"contentBlockIndex": index}),
            ));
        }
        let mut stop = json!({"stopReason": self.stop_reason});
        if let Some(extra) = &self.extra_fields {
            stop["additionalModelResponseFields"] = extra.clone();
        }
        frames.push(eventstream::event("messageStop", &stop));
        frames.push(eventstream::event(
            "metadata",
            &json!({"usage": self.usage, "metrics": {"latencyMs": self.latency_ms}}),
        ));
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_by_status_and_name() {
        let e = fault_error(&Fault::error(429));
        assert_eq!(
            (e.status.as_u16(), e.name.as_str()),
            (429, "ThrottlingException")
        );
        let e = fault_error(&Fault {
            status: None,
            ..Fault::error(500).with_type("ModelNotReadyException")
        });
        assert_eq!(
            (e.status.as_u16(), e.name.as_str()),
            (429, "ModelNotReadyException")
        );
        let e = fault_error(&Fault::error(503));
        assert_eq!(e.name, "ServiceUnavailableException");
        let frame = exception_frame(&Fault::error(424).with_type("ModelStreamErrorException"));
        let (headers, payload, _) = eventstream::decode(&frame).expect("frame");
        assert!(headers.contains(&(":exception-type".into(), "modelStreamErrorException".into())));
        assert!(String::from_utf8_lossy(&payload).contains("originalStatusCode"));
        assert_eq!(uuid_like("0123456789abcdef0123456789abcdef").len(), 36);
    }
}
