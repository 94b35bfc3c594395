//! `POST /v1/chat/completions` and `POST /v1/embeddings`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::error::ApiError;
use super::relay::{Encoder, OpenAiFrames, Relay};
use super::wire::{parse_body, ChatRequest, EmbeddingsRequest};
use super::{new_request_id, read_body, with_request_id, AppState, Generation};
use crate::config::{Constraints, Deployment, LogicalModel, StreamRecovery};
use crate::dispatch::{Job, Opened, Rendered};
use crate::ledger::tracker::RequestTracker;
use crate::providers::{adapter, Endpoint};
use crate::routing::Needs;
use crate::types::Usage;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (state, request_id, mut tracker) =
        begin(&state, &headers, Endpoint::ChatCompletions.label());
    let mut limit_headers = HeaderMap::new();
    let outcome = chat(&state, &headers, body, &mut tracker, &mut limit_headers).await;
    let res = answer(outcome, tracker, ApiError::into_response).await;
    with_request_id(with_limit_headers(res, limit_headers), &request_id)
}

/// The start of every chat-shaped request: the configuration in force now (the
/// request runs on it to its end), a new request id, and the tracker of its ledger
/// row under `endpoint`, continuing the caller's trace.
pub(super) fn begin(
    state: &AppState,
    headers: &HeaderMap,
    endpoint: &'static str,
) -> (Arc<Generation>, String, RequestTracker) {
    let state = state.current();
    let request_id = new_request_id();
    let mut tracker = RequestTracker::new(state.ledger.clone(), request_id.clone(), endpoint);
    tracker.continue_trace(traceparent(headers));
    (state, request_id, tracker)
}

/// What a chat-shaped handler's work ends in: a whole response, or a stream to relay
/// with the encoder that shapes what the client sees.
pub(super) enum Reply<E> {
    Full(Response),
    Stream(Box<Relay>, E),
}

/// The response to a request's `outcome`. A whole response, or an error (shaped by
/// `render` in the ingress's protocol), finishes the ledger row here; a stream's
/// tracker moves into the relay, which finishes it with the stream.
pub(super) async fn answer<E: Encoder>(
    outcome: Result<Reply<E>, ApiError>,
    tracker: RequestTracker,
    render: impl FnOnce(ApiError) -> Response,
) -> Response {
    match outcome {
        Ok(Reply::Full(res)) => {
            tracker.finish(res.status().as_u16(), None).await;
            res
        }
        Ok(Reply::Stream(relay, encoder)) => (*relay).into_response(tracker, encoder),
        Err(e) => {
            tracker.finish(e.status.as_u16(), Some(e.code)).await;
            render(e)
        }
    }
}

/// The first choice's `finish_reason` of an OpenAI-shaped completion, found by a scan
/// rather than a parse: the span wants one string and parsing the whole answer again
/// cost more than the rest of the request's tracing. The first `"finish_reason":` in the
/// body is the first choice's: inside a JSON string every `"` is escaped, so the
/// pattern's closing quote and colon can only end a key, and no key before the first
/// choice's own (`id`, `object`, `created`, `model`, the message's fields) has that name.
fn first_finish_reason(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"finish_reason\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = body.get(at + KEY.len()..)?;
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let value = rest.strip_prefix(b"\"")?;
    let end = value.iter().position(|&b| b == b'"' || b == b'\\')?;
    // A reason is a plain word; one with an escape is not one the gateway knows.
    (value.get(end) == Some(&b'"'))
        .then(|| {
            std::str::from_utf8(value.get(..end)?)
                .ok()
                .map(str::to_owned)
        })
        .flatten()
}

/// The caller's W3C `traceparent` header, if it sent one.
pub(super) fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers.get("traceparent").and_then(|v| v.to_str().ok())
}

/// Adds the caller's `x-ratelimit-*` headers (set by admission) to any response.
pub(super) fn with_limit_headers(mut res: Response, limit_headers: HeaderMap) -> Response {
    res.headers_mut().extend(limit_headers);
    res
}

/// The data policy of the caller, as the routing constraint it is.
fn caller_constraints(admission: &crate::governance::Admission) -> Constraints {
    Constraints {
        allowed_regions: admission.data_policy.allowed_regions.clone(),
        required_tags: admission.data_policy.required_tags.clone(),
    }
}

fn prices_of(model: &LogicalModel) -> Vec<crate::types::Price> {
    model.targets.iter().map(|t| t.deployment.price).collect()
}

async fn chat(
    state: &Arc<Generation>,
    headers: &HeaderMap,
    body: Body,
    tracker: &mut RequestTracker,
    limit_headers: &mut HeaderMap,
) -> Result<Reply<OpenAiFrames>, ApiError> {
    // A bad key is answered only after the body was read: a response sent while a
    // request body is unread forces HTTP/1.1 to close the connection, and clients
    // that reuse it (every SDK) would see their next request fail. The key is looked
    // at first so that even a too-large body's ledger row names its caller.
    let key = authenticate(state, headers, tracker);
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let key = key?;
    let req: ChatRequest = parse_body(&bytes)?;
    req.validate()?;
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(
        match serve_chat(state, &key, req, tracker, limit_headers, |_, _| None).await? {
            ChatServed::Full {
                body,
                deployment,
                attempts,
                route,
                ..
            } => Reply::Full(json_response(body, &deployment, attempts, &route)),
            ChatServed::Stream(relay) => {
                Reply::Stream(Box::new(relay), OpenAiFrames { include_usage })
            }
        },
    )
}

/// Authenticates the caller and notes who it is in the ledger row.
pub(super) fn authenticate(
    state: &Generation,
    headers: &HeaderMap,
    tracker: &mut RequestTracker,
) -> Result<Arc<crate::governance::Principal>, ApiError> {
    let key = state.authenticate(headers)?;
    tracker.set_key(&key.id, &key.name);
    tracker.set_team(key.team.as_deref());
    Ok(key)
}

/// A served chat request, before it is rendered in the ingress protocol.
pub(super) enum ChatServed {
    /// A complete OpenAI `chat.completion` body, and its usage (already settled).
    Full {
        body: bytes::Bytes,
        usage: Usage,
        deployment: Arc<Deployment>,
        attempts: usize,
        route: String,
    },
    /// A stream whose first item arrived, waiting for its encoder.
    Stream(Relay),
}

/// Everything after the body was parsed and validated, whatever the ingress protocol:
/// model resolution, admission, dispatch, and settling a complete answer's usage.
///
/// `native` may supply the upstream body for a deployment itself (the admitted
/// request in hand): an ingress whose own protocol that deployment speaks passes the
/// client's request through instead of the translation.
pub(super) async fn serve_chat(
    state: &Arc<Generation>,
    key: &crate::governance::Principal,
    mut req: ChatRequest,
    tracker: &mut RequestTracker,
    limit_headers: &mut HeaderMap,
    mut native: impl FnMut(&ChatRequest, &Deployment) -> Option<Rendered>,
) -> Result<ChatServed, ApiError> {
    let streamed = req.stream == Some(true);
    tracker.set_model(&req.model, streamed);
    // Reasoning state rides in tool-call ids; no upstream may see it there.
    crate::types::reasoning::extract(&mut req);
    let carried = req.carried.clone();
    let model = resolve_model(state, &req.model)?;
    // Governance before dispatch: policy, PII guardrail, rate limits, budget.
    let admission = state
        .governance
        .admit_chat(key, &mut req, &prices_of(&model), tracker, limit_headers)
        .await?;
    let caller = caller_constraints(&admission);
    inline_images_if_needed(state, &model, &mut req).await?;

    let needs = Needs::of_chat(&req, admission.estimate);
    let choices = req.n.unwrap_or(1);
    // A stream that may be continued elsewhere keeps the admitted request for it.
    let recovery = (streamed && choices <= 1 && model.stream_recovery == StreamRecovery::Continue)
        .then(|| {
            Box::new(super::recovery::Recovery::new(
                state.clone(),
                model.clone(),
                req.clone(),
                caller.clone(),
                needs,
            ))
        });
    let job = Job {
        model: &model,
        endpoint: Endpoint::ChatCompletions,
        stream: streamed,
        needs,
        caller: &caller,
        affinity: carried.as_deref().and_then(|c| c.latest_issuer()),
    };
    let served = state
        .dispatcher
        .dispatch(job, tracker, |d| match native(&req, d) {
            Some(rendered) => Ok(rendered),
            None => adapter(&d.provider.kind)
                .chat_body(&mut req, d, streamed)
                .map(Rendered::from),
        })
        .await?;
    let attempts = tracker.attempts();
    match served.opened {
        Opened::Full { body, usage } => {
            let (body, usage) = match usage {
                Some(usage) => (body, usage),
                None => with_estimated_usage(body, needs.prompt_tokens),
            };
            tracker.settle(
                served.attempt,
                &served.deployment,
                usage,
                served.attempt_started,
            );
            if let Some(capacity) = served.capacity {
                capacity.settle(&usage);
            }
            tracker.log_response(&body);
            if tracker.is_traced() {
                // Read only for the span: untraced requests skip the parse.
                if let Some(reason) = first_finish_reason(&body) {
                    tracker.set_finish_reason(&reason);
                }
            }
            Ok(ChatServed::Full {
                body,
                usage,
                deployment: served.deployment,
                attempts,
                route: served.route,
            })
        }
        Opened::Stream { stream, first } => Ok(ChatServed::Stream(Relay {
            deployment: served.deployment,
            attempt: served.attempt,
            attempt_started: served.attempt_started,
            attempts,
            route: served.route,
            capacity: served.capacity,
            upstream: stream,
            first,
            prompt_estimate: needs.prompt_tokens,
            choices: u64::from(choices.max(1)),
            recovery,
        })),
    }
}

/// Fetches http(s) image URLs into `data:` URLs, once, when a deployment of the
/// model takes only image bytes (Bedrock). Other deployments take data URLs too.
async fn inline_images_if_needed(
    state: &Generation,
    model: &LogicalModel,
    req: &mut ChatRequest,
) -> Result<(), ApiError> {
    if !crate::images::has_remote_images(req) {
        return Ok(());
    }
    let needed = model
        .targets
        .iter()
        .any(|t| adapter(&t.deployment.provider.kind).needs_image_bytes());
    if !needed {
        return Ok(());
    }
    crate::images::inline_images(&state.config.images, req)
        .await
        .map_err(|(param, e)| {
            ApiError::invalid_request(
                Some(param.clone()),
                format!("Could not use the image at '{param}': {e}."),
            )
        })
}

fn resolve_model(state: &Generation, name: &str) -> Result<Arc<LogicalModel>, ApiError> {
    state
        .config
        .model(name)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(name))
}

/// A complete answer whose upstream reported no usage (or one without
/// `prompt_tokens` or `completion_tokens`), with an estimate of what is missing: the
/// prompt from the request's estimate, the completion from the answer's output (text,
/// reasoning, tool calls) with the ledger's estimator; counts the upstream sent stay. An OpenAI `chat.completion`
/// gets it written into its `usage`, which strict clients expect; another body (a
/// passed-through native answer) is left as it is.
fn with_estimated_usage(body: bytes::Bytes, prompt_tokens: u64) -> (bytes::Bytes, Usage) {
    use crate::providers::lax;
    let completion = crate::limits::text_tokens(lax::answer_output_chars(&body));
    let mut usage = estimate(prompt_tokens, completion);
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (body, usage);
    };
    match doc.as_object_mut() {
        Some(o) if o.get("choices").is_some_and(serde_json::Value::is_array) => {
            usage = lax::merge_usage(o, &usage);
        }
        _ => return (body, usage),
    }
    match serde_json::to_vec(&doc) {
        Ok(filled) => (bytes::Bytes::from(filled), usage),
        Err(_) => (body, usage),
    }
}

/// Usage for when the provider reported none, from the routing estimate.
pub(super) fn estimate(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        cached_tokens: 0,
        estimated: true,
        ..Usage::default()
    }
}

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

/// A `200` JSON response of `body`, with the headers naming where it was served.
pub(super) fn json_response(
    body: impl Into<Body>,
    deployment: &Deployment,
    attempts: usize,
    route: &str,
) -> Response {
    let mut res = Response::new(body.into());
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
    let (state, request_id, mut tracker) = begin(&state, &headers, Endpoint::Embeddings.label());
    let mut limit_headers = HeaderMap::new();
    let outcome = embed(&state, &headers, body, &mut tracker, &mut limit_headers)
        .await
        .map(Reply::<OpenAiFrames>::Full);
    let res = answer(outcome, tracker, ApiError::into_response).await;
    with_request_id(with_limit_headers(res, limit_headers), &request_id)
}

async fn embed(
    state: &Generation,
    headers: &HeaderMap,
    body: Body,
    tracker: &mut RequestTracker,
    limit_headers: &mut HeaderMap,
) -> Result<Response, ApiError> {
    // Read first, for the same reason as in `chat`.
    let key = authenticate(state, headers, tracker);
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let key = key?;
    let mut req: EmbeddingsRequest = parse_body(&bytes)?;
    req.validate()?;
    tracker.set_model(&req.model, false);
    let model = resolve_model(state, &req.model)?;
    let admission = state
        .governance
        .admit_embeddings(&key, &mut req, &prices_of(&model), tracker, limit_headers)
        .await?;
    let caller = caller_constraints(&admission);
    let needs = Needs::of_embeddings(&req.input);
    let job = Job {
        model: &model,
        endpoint: Endpoint::Embeddings,
        stream: false,
        needs,
        caller: &caller,
        affinity: None,
    };
    let served = state
        .dispatcher
        .dispatch(job, tracker, |d| {
            adapter(&d.provider.kind)
                .embeddings_body(&mut req, d)
                .map(Rendered::from)
        })
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
    tracker.log_response(&body);
    Ok(json_response(
        body,
        &served.deployment,
        tracker.attempts(),
        &served.route,
    ))
}

#[cfg(test)]
mod tests {
    use super::first_finish_reason;

    #[test]
    fn the_first_choices_finish_reason_is_found_without_a_parse() {
        let compact = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"},{"index":1,"finish_reason":"length"}]}"#;
        assert_eq!(first_finish_reason(compact).as_deref(), Some("stop"));
        let spaced = b"{\"choices\": [ {\"finish_reason\" :\n \"tool_calls\" } ]}";
        assert_eq!(first_finish_reason(spaced).as_deref(), Some("tool_calls"));
        // The key's name inside content or tool arguments is escaped: not a key.
        let hostile = br#"{"choices":[{"message":{"content":"say \"finish_reason\": \"evil\"","tool_calls":[{"function":{"arguments":"{\"finish_reason\":\"evil\"}"}}]},"finish_reason":"stop"}]}"#;
        assert_eq!(first_finish_reason(hostile).as_deref(), Some("stop"));
        assert_eq!(
            first_finish_reason(br#"{"choices":[{"finish_reason":null}]}"#),
            None
        );
        assert_eq!(first_finish_reason(br#"{"choices":[]}"#), None);
        assert_eq!(
            first_finish_reason(br#"{"choices":[{"finish_reason":"st"#),
            None
        );
        assert_eq!(
            first_finish_reason(br#"{"choices":[{"finish_reason":"a\"b"}]}"#),
            None
        );
        assert_eq!(first_finish_reason(b"\"finish_reason\":"), None);
        assert_eq!(
            first_finish_reason("{\"finish_reason\":\"arrêt\"}".as_bytes()).as_deref(),
            Some("arrêt")
        );
    }
}
