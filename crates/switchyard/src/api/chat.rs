//! `POST /v1/chat/completions` and `POST /v1/embeddings`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::cache::capture::Capture;
use super::error::ApiError;
use super::relay::{Encoder, OpenAiFrames, Relay};
use super::wire::{parse_body, ChatRequest, EmbeddingsRequest};
use super::{new_request_id, read_body, with_request_id, AppState, Generation};
use crate::config::{Constraints, Deployment, LogicalModel, StreamRecovery};
use crate::dispatch::{Job, Opened, Rendered};
use crate::governance::LimitHeaders;
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
    let mut limit_headers = LimitHeaders::default();
    let mut cache_status = None;
    // Boxed: the router's layers each move this handler's future into a box of
    // their own, so a handler future that held the whole request's state inline
    // was copied whole several times per request.
    let outcome = Box::pin(chat(
        &state,
        &headers,
        body,
        &mut tracker,
        &mut limit_headers,
        &mut cache_status,
    ))
    .await;
    let mut res = Box::pin(answer(outcome, tracker, ApiError::into_response)).await;
    if let Some(status) = cache_status {
        res.headers_mut()
            .insert(super::cache::CACHE_HEADER, HeaderValue::from_static(status));
    }
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
pub(super) fn with_limit_headers(mut res: Response, limit_headers: LimitHeaders) -> Response {
    limit_headers.write_into(res.headers_mut());
    res
}

/// The data policy of the caller, as the routing constraint it is.
fn caller_constraints(admission: &crate::governance::Admission) -> Constraints {
    Constraints {
        allowed_regions: admission.data_policy.allowed_regions.clone(),
        required_tags: admission.data_policy.required_tags.clone(),
    }
}

/// What routing is given for a request, as the ledger keeps it for what-if replays.
fn replay_facts(needs: &Needs, caller: &Constraints) -> crate::ledger::ReplayFacts {
    let needs_list: Vec<&str> = [
        (needs.tools, "tools"),
        (needs.vision, "vision"),
        (needs.json_schema, "json_schema"),
    ]
    .into_iter()
    .filter_map(|(needed, name)| needed.then_some(name))
    .collect();
    let json_list = |l: &[String]| serde_json::to_string(l).unwrap_or_else(|_| "[]".to_owned());
    crate::ledger::ReplayFacts {
        needs: needs_list.join(","),
        max_tokens: needs.max_output,
        allowed_regions: caller.allowed_regions.as_deref().map(json_list),
        required_tags: json_list(&caller.required_tags),
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
    limit_headers: &mut LimitHeaders,
    cache_status: &mut Option<&'static str>,
) -> Result<Reply<OpenAiFrames>, ApiError> {
    // A bad key is answered only after the body was read: a response sent while a
    // request body is unread forces HTTP/1.1 to close the connection, and clients
    // that reuse it (every SDK) would see their next request fail. The key is looked
    // at first so that even a too-large body's ledger row names its caller.
    let key = authenticate(state, headers, tracker);
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let key = key?;
    let mut req: ChatRequest = parse_body(&bytes)?;
    req.validate()?;
    // A long conversation goes upstream as the client's own bytes, unless something
    // changes it on the way.
    req.messages.keep_raw_from(&bytes);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let streamed = req.stream == Some(true);
    let served = serve(
        state,
        &key,
        headers,
        req,
        tracker,
        limit_headers,
        |_, _| None,
        true,
    )
    .await?;
    let (served, plan) = match served {
        Served::Hit(body) => {
            *cache_status = Some("hit");
            if !streamed {
                return Ok(Reply::Full(super::cache::whole(body)));
            }
            tracker.first_token();
            return super::cache::streamed(&body, include_usage)
                .map(Reply::Full)
                .ok_or_else(|| ApiError::internal("a cached answer could not be replayed"));
        }
        Served::Fresh(served, plan) => (served, plan),
    };
    if plan.is_some() {
        *cache_status = Some("miss");
        tracker.set_cache_miss();
    }
    Ok(match served {
        ChatServed::Full {
            body,
            deployment,
            attempts,
            route,
            ..
        } => {
            // Stored before the answer is sent, so that the caller's next request, on
            // any replica, finds it.
            if let Some(p) = plan.filter(|_| super::cache::storable(&body)) {
                state
                    .cache
                    .insert(p.key, body.clone(), p.ttl, p.max_bytes)
                    .await;
            }
            Reply::Full(json_response(body, &deployment, attempts, &route))
        }
        ChatServed::Stream(mut relay) => {
            // A streamed miss is assembled as it is relayed, and kept if it completes.
            relay.capture = plan.map(|p| Capture::new(state.cache.clone(), p));
            Reply::Stream(relay, OpenAiFrames { include_usage })
        }
    })
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
    Stream(Box<Relay>),
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
    headers: &HeaderMap,
    req: ChatRequest,
    tracker: &mut RequestTracker,
    limit_headers: &mut LimitHeaders,
    native: impl FnMut(&ChatRequest, &Deployment) -> Option<Rendered>,
) -> Result<ChatServed, ApiError> {
    match serve(
        state,
        key,
        headers,
        req,
        tracker,
        limit_headers,
        native,
        false,
    )
    .await?
    {
        Served::Fresh(served, _) => Ok(served),
        Served::Hit(_) => Err(ApiError::internal("a cached answer where caching is off")),
    }
}

/// A chat request served from the response cache, or by dispatch.
enum Served {
    /// The stored `chat.completion` body.
    Hit(bytes::Bytes),
    /// Served by dispatch; the cache plan when the request may be cached.
    Fresh(ChatServed, Option<super::cache::Plan>),
}

/// [`serve_chat`], with the response cache looked up after admission when `cached`
/// (the OpenAI ingress: the only one whose answer is the stored body as it is).
#[allow(clippy::too_many_arguments)]
async fn serve(
    state: &Arc<Generation>,
    key: &crate::governance::Principal,
    headers: &HeaderMap,
    mut req: ChatRequest,
    tracker: &mut RequestTracker,
    limit_headers: &mut LimitHeaders,
    mut native: impl FnMut(&ChatRequest, &Deployment) -> Option<Rendered>,
    cached: bool,
) -> Result<Served, ApiError> {
    let streamed = req.stream == Some(true);
    tracker.set_model(&req.model, streamed);
    // Reasoning state rides in tool-call ids; no upstream may see it there.
    crate::types::reasoning::extract(&mut req);
    let carried = req.carried.clone();
    let model = resolve_model(state, &req.model)?;
    tracker.set_turn(super::channel::begins_turn(&req));
    // The channel's profile shapes the request before admission judges it.
    let channel = super::channel::resolve(state, key, headers)?;
    if let Some(c) = &channel {
        tracker.set_channel(&c.name);
        super::channel::apply(c, &mut req)?;
    }
    // An answer the channel checks must come back in OpenAI's shape, which the check
    // reads: no pass-through of a native protocol then.
    let passes_through = channel.as_ref().is_none_or(|c| c.pii_output.is_none());
    let mut output_guard = channel
        .as_ref()
        .and_then(|c| c.pii_output)
        .map(|mode| state.governance.output_guard(mode.into()));
    // Governance before dispatch: policy, PII guardrail, rate limits, budget.
    let admission = state
        .governance
        .admit_chat(key, &mut req, &prices_of(&model), tracker, limit_headers)
        .await?;
    let caller = caller_constraints(&admission);
    // Keyed on the admitted request (redactions, policy and channel changes in), and
    // looked up after admission: a hit still counts against rate limits, and settles
    // its budget hold with nothing spent.
    let plan = cached
        .then(|| super::cache::plan(key, &model, channel.as_ref().map(|c| c.name.as_str()), &req))
        .flatten();
    let hit = match plan {
        Some(p) => state.cache.get(&p.key, p.ttl).await,
        None => None,
    };
    if let Some(hit) = hit {
        tracker.set_cache_hit();
        tracker.log_response(&hit);
        return Ok(Served::Hit(hit));
    }
    inline_images_if_needed(state, &model, &mut req).await?;

    let needs = Needs::of_chat(&req, admission.estimate);
    tracker.set_replay(replay_facts(&needs, &caller));
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
        ttft_slo: channel.as_ref().and_then(|c| c.ttft_slo),
    };
    let served = state
        .dispatcher
        .dispatch(job, tracker, |d| {
            // Not even asked when it may not be used: asking marks the pass-through.
            let passed = if passes_through {
                native(&req, d)
            } else {
                None
            };
            match passed {
                Some(rendered) => Ok(rendered),
                None => adapter(&d.provider.kind)
                    .chat_body(&mut req, d, streamed)
                    .map(Rendered::from),
            }
        })
        .await?;
    let attempts = tracker.attempts();
    match served.opened {
        Opened::Full { body, usage } => {
            let (body, usage) = settle_whole(
                tracker,
                served.attempt,
                &served.deployment,
                served.attempt_started,
                served.capacity,
                (body, usage),
                needs.prompt_tokens,
            );
            let body = match output_guard.as_mut() {
                None => body,
                Some(guard) => {
                    let checked = guard.completion(&body).unwrap_or(body);
                    guard.record_findings(tracker);
                    checked
                }
            };
            tracker.log_response(&body);
            // The client's answer is complete: a sampled request may now be
            // mirrored to the model's shadow candidate, on its own task.
            if let Some(mirror) =
                super::shadow::prepare(state, &model, &req, &caller, needs, tracker)
            {
                mirror.start(Some(body.clone()));
            }
            if tracker.is_traced() {
                // Read only for the span: untraced requests skip the parse.
                if let Some(reason) = first_finish_reason(&body) {
                    tracker.set_finish_reason(&reason);
                }
            }
            Ok(Served::Fresh(
                ChatServed::Full {
                    body,
                    usage,
                    deployment: served.deployment,
                    attempts,
                    route: served.route,
                },
                plan,
            ))
        }
        Opened::Stream { stream, first } => Ok(Served::Fresh(
            ChatServed::Stream(Box::new(Relay {
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
                output_guard,
                capture: None,
                // Started when the stream has been relayed to its end.
                mirror: super::shadow::prepare(state, &model, &req, &caller, needs, tracker),
            })),
            plan,
        )),
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

/// A whole answer's usage (the upstream's, or estimated where it reported none),
/// settled in the ledger row's attempt and in the deployment's capacity (quota and
/// contract hold). Returns the body (with the estimate written in, if any) and usage.
pub(super) fn settle_whole(
    tracker: &mut RequestTracker,
    attempt: usize,
    deployment: &Deployment,
    started: std::time::Instant,
    capacity: Option<crate::dispatch::Capacity>,
    (body, usage): (bytes::Bytes, Option<Usage>),
    prompt_estimate: u64,
) -> (bytes::Bytes, Usage) {
    let (body, usage) = match usage {
        Some(usage) => (body, usage),
        None => with_estimated_usage(body, prompt_estimate),
    };
    settle_usage(tracker, attempt, deployment, started, capacity, usage);
    (body, usage)
}

/// Settles a whole answer's `usage` in the ledger row's attempt and the deployment's
/// quota.
pub(super) fn settle_usage(
    tracker: &mut RequestTracker,
    attempt: usize,
    deployment: &Deployment,
    started: std::time::Instant,
    capacity: Option<crate::dispatch::Capacity>,
    usage: Usage,
) {
    tracker.settle(attempt, deployment, usage, started);
    if let Some(capacity) = capacity {
        capacity.settle(&usage);
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

// Header names as constants: a `&str` name is parsed and validated on every insert.
const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("x-switchyard-deployment");
const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-switchyard-provider");
const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-switchyard-attempts");
const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-route");

pub(super) fn served_headers(
    h: &mut HeaderMap,
    deployment: &Deployment,
    attempts: usize,
    route: &str,
) {
    if let Some(v) = &deployment.derived.deployment_header {
        h.insert(DEPLOYMENT_HEADER, v.clone());
    }
    if let Some(v) = &deployment.derived.provider_header {
        h.insert(PROVIDER_HEADER, v.clone());
    }
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    if let Ok(v) = HeaderValue::from_str(route) {
        h.insert(ROUTE_HEADER, v);
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
    let mut limit_headers = LimitHeaders::default();
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
    limit_headers: &mut LimitHeaders,
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
    tracker.set_replay(replay_facts(&needs, &caller));
    let job = Job {
        model: &model,
        endpoint: Endpoint::Embeddings,
        stream: false,
        needs,
        caller: &caller,
        affinity: None,
        ttft_slo: None,
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
    settle_usage(
        tracker,
        served.attempt,
        &served.deployment,
        served.attempt_started,
        served.capacity,
        usage,
    );
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
