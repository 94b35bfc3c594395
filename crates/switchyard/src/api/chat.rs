//! `POST /v1/chat/completions` and `POST /v1/embeddings`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;

use super::error::ApiError;
use super::relay::Relay;
use super::tracker::RequestTracker;
use super::wire::{parse_body, ChatRequest, EmbeddingsRequest, StreamOptions};
use super::{new_request_id, read_body, with_request_id, AppState};
use crate::config::{Constraints, Deployment, LogicalModel};
use crate::dispatch::{Job, Opened};
use crate::ledger::Usage;
use crate::providers::Endpoint;
use crate::routing::Needs;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = new_request_id();
    let mut tracker = RequestTracker::new(
        state.ledger.clone(),
        request_id.clone(),
        Endpoint::ChatCompletions.label(),
    );
    let res = match chat(&state, &headers, body, &mut tracker).await {
        Ok(Reply::Full(res)) => {
            tracker.finish(res.status().as_u16(), None);
            res
        }
        // The tracker moves into the relay, which finishes it with the stream.
        Ok(Reply::Stream(relay)) => relay.into_response(tracker),
        Err(e) => {
            tracker.finish(e.status.as_u16(), Some(e.code));
            e.into_response()
        }
    };
    with_request_id(res, &request_id)
}

enum Reply {
    Full(Response),
    Stream(Relay),
}

async fn chat(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    tracker: &mut RequestTracker,
) -> Result<Reply, ApiError> {
    let key = state.authenticate(headers)?;
    tracker.set_key(&key);
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let mut req: ChatRequest = parse_body(&bytes)?;
    req.validate()?;
    let streamed = req.stream == Some(true);
    tracker.set_model(&req.model, streamed);
    let model = resolve_model(state, &req.model)?;

    let client_wants_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if streamed {
        // Always ask for usage, so the ledger is right even when the client did not.
        let options = req.stream_options.get_or_insert_with(|| StreamOptions {
            include_usage: None,
            extra: Default::default(),
        });
        options.include_usage = Some(true);
    }
    let needs = Needs::of_chat(&req);
    let job = Job {
        model: &model,
        endpoint: Endpoint::ChatCompletions,
        stream: streamed,
        needs,
        caller: &NO_CONSTRAINTS,
    };
    let served = state
        .dispatcher
        .dispatch(job, tracker, |d| render_for(&mut req, d))
        .await?;
    let attempts = tracker.attempts();
    match served.opened {
        Opened::Full { body, usage } => {
            let usage = usage.unwrap_or_else(|| estimate(needs.prompt_tokens, 0));
            tracker.settle(
                served.attempt,
                &served.deployment,
                usage,
                served.attempt_started,
            );
            if let Some(capacity) = served.capacity {
                capacity.settle(&usage);
            }
            Ok(Reply::Full(json_response(
                body,
                &served.deployment,
                attempts,
                &served.route,
            )))
        }
        Opened::Stream { stream, first } => Ok(Reply::Stream(Relay {
            deployment: served.deployment,
            attempt: served.attempt,
            attempt_started: served.attempt_started,
            attempts,
            route: served.route,
            capacity: served.capacity,
            upstream: stream,
            first,
            client_wants_usage,
            prompt_estimate: needs.prompt_tokens,
        })),
    }
}

/// The request body for one deployment: its upstream model name in `model`.
fn render_for<T: Serialize + HasModel>(
    req: &mut T,
    deployment: &Deployment,
) -> Result<Vec<u8>, ApiError> {
    req.set_model(&deployment.upstream_model);
    serde_json::to_vec(req)
        .map_err(|e| ApiError::internal(format!("could not encode the request: {e}")))
}

trait HasModel {
    fn set_model(&mut self, model: &str);
}

impl HasModel for ChatRequest {
    fn set_model(&mut self, model: &str) {
        model.clone_into(&mut self.model);
    }
}

impl HasModel for EmbeddingsRequest {
    fn set_model(&mut self, model: &str) {
        model.clone_into(&mut self.model);
    }
}

fn resolve_model(state: &AppState, name: &str) -> Result<Arc<LogicalModel>, ApiError> {
    state
        .config
        .model(name)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(name))
}

/// Usage for when the provider reported none, from the routing estimate.
pub(super) fn estimate(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        cached_tokens: 0,
        estimated: true,
    }
}

/// Callers bring no data policy of their own yet; the model's constraints apply.
static NO_CONSTRAINTS: Constraints = Constraints {
    allowed_regions: None,
    required_tags: Vec::new(),
};

pub(super) fn served_headers(
    h: &mut HeaderMap,
    deployment: &Deployment,
    attempts: usize,
    route: &str,
) {
    if let Ok(v) = HeaderValue::from_str(&deployment.name) {
        h.insert("x-switchyard-deployment", v);
    }
    if let Ok(v) = HeaderValue::from_str(&deployment.provider.name) {
        h.insert("x-switchyard-provider", v);
    }
    h.insert("x-switchyard-attempts", HeaderValue::from(attempts));
    if let Ok(v) = HeaderValue::from_str(route) {
        h.insert("x-switchyard-route", v);
    }
}

fn json_response(
    body: bytes::Bytes,
    deployment: &Deployment,
    attempts: usize,
    route: &str,
) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    served_headers(h, deployment, attempts, route);
    res
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = new_request_id();
    let mut tracker = RequestTracker::new(
        state.ledger.clone(),
        request_id.clone(),
        Endpoint::Embeddings.label(),
    );
    let res = match embed(&state, &headers, body, &mut tracker).await {
        Ok(res) => {
            tracker.finish(res.status().as_u16(), None);
            res
        }
        Err(e) => {
            tracker.finish(e.status.as_u16(), Some(e.code));
            e.into_response()
        }
    };
    with_request_id(res, &request_id)
}

async fn embed(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    tracker: &mut RequestTracker,
) -> Result<Response, ApiError> {
    let key = state.authenticate(headers)?;
    tracker.set_key(&key);
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let mut req: EmbeddingsRequest = parse_body(&bytes)?;
    req.validate()?;
    tracker.set_model(&req.model, false);
    let model = resolve_model(state, &req.model)?;
    let needs = Needs::of_embeddings(&req.input);
    let job = Job {
        model: &model,
        endpoint: Endpoint::Embeddings,
        stream: false,
        needs,
        caller: &NO_CONSTRAINTS,
    };
    let served = state
        .dispatcher
        .dispatch(job, tracker, |d| render_for(&mut req, d))
        .await?;
    let Opened::Full { body, usage } = served.opened else {
        return Err(ApiError::internal("an embeddings call produced a stream"));
    };
    let usage = usage.unwrap_or_else(|| estimate(needs.prompt_tokens, 0));
    tracker.settle(
        served.attempt,
        &served.deployment,
        usage,
        served.attempt_started,
    );
    if let Some(capacity) = served.capacity {
        capacity.settle(&usage);
    }
    Ok(json_response(
        body,
        &served.deployment,
        tracker.attempts(),
        &served.route,
    ))
}
