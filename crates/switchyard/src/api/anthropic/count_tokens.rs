//! `POST /v1/messages/count_tokens`: how many input tokens a Messages request would
//! take, in Anthropic's shape (`{"input_tokens": N}`).
//!
//! The model is routed as `/v1/messages` routes it (the caller's policy, its data
//! constraints, the model's order; a deployment whose breaker is open is passed
//! over). When the deployment chosen speaks Anthropic, the client's body goes to its
//! own `count_tokens` (only `model` swapped, after the PII guardrail) and the count is
//! exact; any other deployment's count is the gateway's estimate, the one admission
//! and routing use (about four characters a token plus per-message framing; tools by
//! the size of their JSON). `x-switchyard-token-count` says which: `exact` or
//! `estimated`. An Anthropic upstream that cannot be reached (a retryable failure)
//! gets the estimate too, marked so; a request it refuses is refused.
//!
//! Counting is free: the key must be valid and the model allowed by its policy, but
//! no rate-limit window, budget or deployment quota is taken, and no ledger row is
//! written (nothing is billed).

use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value};

use super::wire::MessagesRequest;
use super::{error, guard_body, missing_key_named, request, with_bearer};
use crate::api::error::ApiError;
use crate::api::wire::parse_body;
use crate::api::{new_request_id, read_body, with_request_id, AppState, Generation};
use crate::config::{Constraints, Deployment, ProviderKind};
use crate::governance::Refusal;
use crate::ledger::tracker::RequestTracker;
use crate::ledger::LedgerSink;
use crate::resilience::BreakerState;
use crate::routing::{self, Needs};

/// The header that says whether the count is the provider's own or an estimate.
pub const COUNT_HEADER: &str = "x-switchyard-token-count";

pub async fn count_tokens(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let state = state.current();
    let request_id = new_request_id();
    let res = match count(&state, &headers, body, &request_id).await {
        Ok(res) => res,
        Err(e) => error::error_response(&e, &request_id),
    };
    let mut res = with_request_id(res, &request_id);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("request-id", v);
    }
    res
}

/// A count, and where it came from.
struct Counted {
    tokens: u64,
    exact: bool,
    deployment: std::sync::Arc<Deployment>,
}

async fn count(
    state: &Generation,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<Response, ApiError> {
    // Read before the key is checked, as `/v1/messages` does (connection reuse).
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let key = state
        .authenticate(&with_bearer(headers))
        .map_err(missing_key_named)?;
    let (bytes, added_max_tokens) = with_max_tokens(bytes);
    let req: MessagesRequest = parse_body(&bytes)?;
    req.validate()?;
    let model = state
        .config
        .model(&req.model)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(&req.model))?;
    if !key.policy.allows_model(&req.model) {
        return Err(ApiError::from_refusal(&Refusal::ModelNotAllowed {
            model: req.model.clone(),
        }));
    }
    // A tracker that records nothing: the guardrail notes its findings in it.
    let mut tracker = RequestTracker::new(
        LedgerSink::disabled(),
        request_id.to_owned(),
        "messages.count_tokens",
    );
    let (req, bytes) = guard_body(state, &key, &mut tracker, req, bytes)?;
    // A channel's system prompt is part of what the request would send.
    let prompt =
        crate::api::channel::resolve(state, &key, headers)?.and_then(|c| c.system_prompt.clone());
    let mut chat = request::to_openai(&req);
    if let Some(p) = &prompt {
        crate::api::channel::prepend_system_prompt(&mut chat, p);
    }
    let estimate = crate::limits::estimate_chat(&chat, 0);
    let needs = Needs::of_chat(&chat, estimate);
    let caller = Constraints {
        allowed_regions: key.policy.data.allowed_regions.clone(),
        required_tags: key.policy.data.required_tags.clone(),
    };
    let health = &state.dispatcher.health;
    let plan = routing::plan(&model, &needs, &caller, Some(health));
    let now = Instant::now();
    let chosen = plan
        .candidates
        .iter()
        .find(|c| health.of(&c.deployment).breaker_state(now) != BreakerState::Open)
        .or(plan.candidates.first())
        .map(|c| c.deployment.clone())
        .ok_or_else(|| ApiError::no_eligible_deployment(&model.name, &plan.exclusions()))?;
    let counted = if matches!(chosen.provider.kind, ProviderKind::Anthropic { .. }) {
        let upstream = upstream_body(&bytes, &chosen, added_max_tokens, prompt.as_deref())?;
        match state
            .dispatcher
            .count_tokens(&model, &chosen, upstream)
            .await
        {
            Ok(tokens) => Counted {
                tokens,
                exact: true,
                deployment: chosen,
            },
            Err(e) if e.retryable() => {
                tracing::warn!(
                    request_id,
                    deployment = %chosen.name,
                    error = %e,
                    "token count failed upstream; answering with the estimate"
                );
                Counted {
                    tokens: estimate.prompt,
                    exact: false,
                    deployment: chosen,
                }
            }
            Err(e) => return Err(ApiError::from_provider(&e, &chosen.name)),
        }
    } else {
        Counted {
            tokens: estimate.prompt,
            exact: false,
            deployment: chosen,
        }
    };
    Ok(render(&counted))
}

/// The body with `max_tokens: 1` when it has none (count_tokens does not need it,
/// the Messages request type does), and whether it was added.
fn with_max_tokens(bytes: Bytes) -> (Bytes, bool) {
    let Ok(mut raw) = serde_json::from_slice::<Map<String, Value>>(&bytes) else {
        // Not an object: parsing reports it.
        return (bytes, false);
    };
    if raw.contains_key("max_tokens") {
        return (bytes, false);
    }
    raw.insert("max_tokens".into(), Value::from(1));
    match serde_json::to_vec(&raw) {
        Ok(v) => (Bytes::from(v), true),
        Err(_) => (bytes, false),
    }
}

/// The client's (guarded) body for `d`'s count_tokens: its `model` swapped, without
/// the `max_tokens` the gateway added, and with the channel's system prompt first.
fn upstream_body(
    bytes: &[u8],
    d: &Deployment,
    added_max_tokens: bool,
    channel_prompt: Option<&str>,
) -> Result<Vec<u8>, ApiError> {
    let mut raw: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("the request is unreadable: {e}")))?;
    if added_max_tokens {
        raw.remove("max_tokens");
    }
    if let Some(prompt) = channel_prompt {
        let first = serde_json::json!({"type": "text", "text": prompt});
        let system = match raw.remove("system") {
            None => Value::String(prompt.to_owned()),
            Some(Value::String(own)) => Value::Array(vec![
                first,
                serde_json::json!({"type": "text", "text": own}),
            ]),
            Some(Value::Array(mut blocks)) => {
                blocks.insert(0, first);
                Value::Array(blocks)
            }
            // Anything else was refused by validation; left as it came.
            Some(other) => other,
        };
        raw.insert("system".into(), system);
    }
    raw.insert("model".into(), Value::String(d.upstream_model.clone()));
    serde_json::to_vec(&raw).map_err(|e| ApiError::internal(format!("unwritable: {e}")))
}

fn render(c: &Counted) -> Response {
    let body = serde_json::json!({"input_tokens": c.tokens}).to_string();
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        COUNT_HEADER,
        HeaderValue::from_static(if c.exact { "exact" } else { "estimated" }),
    );
    if let Ok(v) = HeaderValue::from_str(&c.deployment.name) {
        h.insert("x-switchyard-deployment", v);
    }
    if let Ok(v) = HeaderValue::from_str(&c.deployment.provider.name) {
        h.insert("x-switchyard-provider", v);
    }
    res
}
