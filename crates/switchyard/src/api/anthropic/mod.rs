//! `POST /v1/messages`: the Anthropic Messages API, in front of any backend.
//!
//! A request is translated into the canonical OpenAI Chat Completions request
//! ([`request`]) and then takes the same path as `/v1/chat/completions`: the same
//! authentication, admission, dispatch, ledger row and headers
//! ([`crate::api::chat::serve_chat`]). The answer is translated back: a complete
//! `chat.completion` into a `message` ([`response`]), a stream into Anthropic events
//! by an encoder the relay drives ([`stream`]). Errors are Anthropic-shaped
//! ([`error`]), with the status [`ApiError`] maps. A deployment that speaks Anthropic
//! itself gets the client's own body ([`passthrough`]), and its answer goes back as
//! it came ([`native`]).

pub(crate) mod count_tokens;
mod error;
mod native;
mod passthrough;
pub(crate) mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;
pub mod wire;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue};

use super::chat::{
    answer, authenticate, begin, json_response, serve_chat, with_limit_headers, ChatServed, Reply,
};
use super::error::ApiError;
use super::relay::Encoder;
use super::wire::parse_body;
use super::{read_body, with_request_id, AppState, Generation};
use crate::governance::LimitHeaders;
use crate::ledger::tracker::RequestTracker;
use crate::types::ProviderError;
use crate::types::Usage;
use bytes::Bytes;
use native::NativeEvents;
use stream::AnthropicEvents;
use wire::MessagesRequest;

/// The ledger's `endpoint` for this route.
const ENDPOINT: &str = "messages";

pub async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (state, request_id, mut tracker) = begin(&state, &headers, ENDPOINT);
    let mut limit_headers = LimitHeaders::default();
    let outcome = run(
        &state,
        &headers,
        body,
        &mut tracker,
        &mut limit_headers,
        &request_id,
    )
    .await;
    let res = answer(outcome, tracker, |e| error::error_response(&e, &request_id)).await;
    let mut res = with_request_id(with_limit_headers(res, limit_headers), &request_id);
    // Anthropic's SDKs read the request id from `request-id`.
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("request-id", v);
    }
    res
}

/// The Anthropic error body for `e`, for a failure outside this ingress's handler
/// (a panic caught by [`crate::api::panics`]).
pub(crate) fn error_json(e: &ApiError) -> serde_json::Value {
    error::error_json(e, None)
}

/// A missing key's error, naming the header Anthropic clients send it in.
fn missing_key_named(e: ApiError) -> ApiError {
    if e.code == "missing_api_key" {
        ApiError {
            message: "x-api-key header is required (or Authorization: Bearer KEY).".into(),
            ..e
        }
    } else {
        e
    }
}

/// Anthropic clients send their key as `x-api-key`; authentication reads
/// `Authorization: Bearer`, which is used as it is when both are present.
fn with_bearer(headers: &HeaderMap) -> std::borrow::Cow<'_, HeaderMap> {
    let Some(key) = headers.get("x-api-key") else {
        return std::borrow::Cow::Borrowed(headers);
    };
    if headers.contains_key(header::AUTHORIZATION) {
        return std::borrow::Cow::Borrowed(headers);
    }
    let mut owned = headers.clone();
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(key.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&bearer) {
        owned.insert(header::AUTHORIZATION, v);
    }
    std::borrow::Cow::Owned(owned)
}

async fn run(
    state: &std::sync::Arc<Generation>,
    headers: &HeaderMap,
    body: Body,
    tracker: &mut RequestTracker,
    limit_headers: &mut LimitHeaders,
    request_id: &str,
) -> Result<Reply<Events>, ApiError> {
    // The body is read before the key is checked, as in `chat`: answering while a
    // body is unread makes HTTP/1.1 close the connection the SDK wants to reuse.
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let key = authenticate(state, &with_bearer(headers), tracker).map_err(missing_key_named)?;
    let req: MessagesRequest = parse_body(&bytes)?;
    req.validate()?;
    let message_id = format!("msg_{}", request_id.trim_start_matches("req_"));
    let useful = passthrough::useful_for(state.config.model(&req.model).map(|m| &**m));
    let (req, bytes) = if useful && key.policy.allows_model(&req.model) {
        guard_body(state, &key, tracker, req, bytes)?
    } else {
        (req, bytes)
    };
    let chat = request::to_openai(&req);
    let mut native = passthrough::Passthrough::new(&bytes, &chat, useful);
    let passed = |admitted: &_, d: &_| native.body(admitted, d);
    match serve_chat(state, &key, headers, chat, tracker, limit_headers, passed).await? {
        ChatServed::Full {
            body,
            usage,
            deployment,
            attempts,
            route,
        } => {
            let body = if native.passed_to(&deployment) {
                // Anthropic's own message, as it came.
                body.to_vec()
            } else {
                let message = response::to_message(&body, &message_id, &req.model, &usage)
                    .map_err(|why| {
                        ApiError::from_provider(&ProviderError::Protocol(why), &deployment.name)
                    })?;
                serde_json::to_vec(&message).unwrap_or_default()
            };
            Ok(Reply::Full(json_response(
                body,
                &deployment,
                attempts,
                &route,
            )))
        }
        ChatServed::Stream(mut relay) => {
            let events = if native.passed_to(&relay.deployment) {
                // The upstream's own events go through as they are: a continuation
                // (OpenAI chunks) could not be spliced into them.
                relay.recovery = None;
                Events::Native(NativeEvents)
            } else {
                Events::Translated(AnthropicEvents::new(message_id, req.model.clone()))
            };
            Ok(Reply::Stream(relay, events))
        }
    }
}

/// Runs the PII guardrail over the client's whole body, which may go upstream as it
/// is ([`passthrough`]): a `block` refuses here, a `redact` rewrites the body, and the
/// request is read again from what remains.
fn guard_body(
    state: &Generation,
    key: &crate::governance::Principal,
    tracker: &mut RequestTracker,
    req: MessagesRequest,
    bytes: Bytes,
) -> Result<(MessagesRequest, Bytes), ApiError> {
    let Ok(mut raw) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
    else {
        return Ok((req, bytes));
    };
    let mut changed = false;
    state.governance.guard_texts(key, tracker, |f| {
        passthrough::visit_texts(&mut raw, &mut |s: &mut String| {
            let before = s.clone();
            f(s);
            changed |= *s != before;
        });
    })?;
    if !changed {
        return Ok((req, bytes));
    }
    let body = serde_json::Value::Object(raw);
    let redacted: MessagesRequest = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::internal(format!("the redacted request is unreadable: {e}")))?;
    let bytes = serde_json::to_vec(&body)
        .map_err(|e| ApiError::internal(format!("the redacted request is unwritable: {e}")))?;
    Ok((redacted, Bytes::from(bytes)))
}

/// What the client's stream is made of: the upstream's own Anthropic events, or
/// OpenAI chunks translated.
enum Events {
    Native(NativeEvents),
    Translated(AnthropicEvents),
}

impl Encoder for Events {
    fn chunk(&mut self, data: &Bytes, has_choices: bool, usage: Option<&Usage>) -> Option<Bytes> {
        match self {
            Events::Native(e) => e.chunk(data, has_choices, usage),
            Events::Translated(e) => e.chunk(data, has_choices, usage),
        }
    }

    fn upstream_error(&mut self, data: &Bytes) -> Bytes {
        match self {
            Events::Native(e) => e.upstream_error(data),
            Events::Translated(e) => e.upstream_error(data),
        }
    }

    fn done(&mut self) -> Bytes {
        match self {
            Events::Native(e) => e.done(),
            Events::Translated(e) => e.done(),
        }
    }

    fn failed(&mut self, error: &ApiError) -> Bytes {
        match self {
            Events::Native(e) => e.failed(error),
            Events::Translated(e) => e.failed(error),
        }
    }
}
