//! `POST /v1/messages`: the Anthropic Messages API, in front of any backend.
//!
//! A request is translated into the canonical OpenAI Chat Completions request
//! ([`request`]) and then takes the same path as `/v1/chat/completions`: the same
//! authentication, admission, dispatch, ledger row and headers
//! ([`crate::api::chat::serve_chat`]). The answer is translated back: a complete
//! `chat.completion` into a `message` ([`response`]), a stream into Anthropic events
//! by an encoder the relay drives ([`stream`]). Errors are Anthropic-shaped
//! ([`error`]), with the status [`ApiError`] maps.

mod error;
mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;
pub mod wire;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::chat::{authenticate, serve_chat, served_headers, with_limit_headers, ChatServed};
use super::error::ApiError;
use super::relay::Relay;
use super::tracker::RequestTracker;
use super::wire::parse_body;
use super::{new_request_id, read_body, with_request_id, AppState};
use crate::providers::ProviderError;
use stream::AnthropicEvents;
use wire::MessagesRequest;

/// The ledger's `endpoint` for this route.
const ENDPOINT: &str = "messages";

pub async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = new_request_id();
    let mut tracker = RequestTracker::new(state.ledger.clone(), request_id.clone(), ENDPOINT);
    let mut limit_headers = HeaderMap::new();
    let res = match run(
        &state,
        &headers,
        body,
        &mut tracker,
        &mut limit_headers,
        &request_id,
    )
    .await
    {
        Ok(Reply::Full(res)) => {
            tracker.finish(res.status().as_u16(), None);
            res
        }
        // The tracker moves into the relay, which finishes it with the stream.
        Ok(Reply::Stream(relay, events)) => relay.into_response(tracker, events),
        Err(e) => {
            tracker.finish(e.status.as_u16(), Some(e.code));
            error::error_response(&e, &request_id)
        }
    };
    let mut res = with_request_id(with_limit_headers(res, limit_headers), &request_id);
    // Anthropic's SDKs read the request id from `request-id`.
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("request-id", v);
    }
    res
}

enum Reply {
    Full(Response),
    Stream(Relay, AnthropicEvents),
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
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    tracker: &mut RequestTracker,
    limit_headers: &mut HeaderMap,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let key = authenticate(state, &with_bearer(headers), tracker).map_err(|e| {
        if e.code == "missing_api_key" {
            ApiError {
                message: "x-api-key header is required (or Authorization: Bearer KEY).".into(),
                ..e
            }
        } else {
            e
        }
    })?;
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let req: MessagesRequest = parse_body(&bytes)?;
    req.validate()?;
    let message_id = format!("msg_{}", request_id.trim_start_matches("req_"));
    let chat = request::to_openai(&req);
    match serve_chat(state, &key, chat, tracker, limit_headers).await? {
        ChatServed::Full {
            body,
            usage,
            deployment,
            attempts,
            route,
        } => {
            let message =
                response::to_message(&body, &message_id, &req.model, &usage).map_err(|why| {
                    ApiError::from_provider(&ProviderError::Protocol(why), &deployment.name)
                })?;
            let mut res =
                Response::new(Body::from(serde_json::to_vec(&message).unwrap_or_default()));
            *res.status_mut() = StatusCode::OK;
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            served_headers(h, &deployment, attempts, &route);
            Ok(Reply::Full(res))
        }
        ChatServed::Stream(relay) => Ok(Reply::Stream(
            relay,
            AnthropicEvents::new(message_id, req.model.clone()),
        )),
    }
}
