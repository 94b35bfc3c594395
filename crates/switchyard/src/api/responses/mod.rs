//! `POST /v1/responses`: OpenAI's Responses API, in front of any backend.
//!
//! A request is translated into the canonical OpenAI Chat Completions request
//! ([`request`]) and then takes the same path as `/v1/chat/completions`: the same
//! authentication, admission, dispatch, ledger row (`endpoint = responses`) and
//! headers ([`crate::api::chat::serve_chat`]). The answer is translated back: a
//! complete `chat.completion` into a `response` object ([`response`]), a stream into
//! Responses events by an encoder the relay drives ([`stream`]). Errors are OpenAI's
//! JSON errors.
//!
//! OpenAI and Azure OpenAI deployments speak the Responses API themselves: they are
//! sent the client's request as it is ([`native`]; the gateway's own fields resolved
//! first) and their answers come back as they are, with the same admission, dispatch
//! and ledger row. A model's other deployments, tried in its routing order like any,
//! get the translation.
//!
//! Reasoning state needs no session: a `function_call`'s `call_id` is the tool-call id
//! the chat path returns (signatures and issuer encoded in it), and Claude's signed
//! thinking rides in a `reasoning` item's `encrypted_content`; the client sends both
//! back as input items.
//!
//! `store` keeps the conversation and the response ([`store`], in the ledger's
//! database) for `previous_response_id`, `GET`/`DELETE /v1/responses/{id}` and `GET
//! /v1/responses/{id}/input_items` ([`items`]); it is
//! on by default, as OpenAI has it, except for keys whose policy forbids keeping
//! content (`log_content = false`), for which asking for it is a 400.

mod items;
mod native;
pub(crate) mod request;
pub(crate) mod response;
mod store;
pub(crate) mod stream;
pub mod wire;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::chat::{
    answer, authenticate, begin, json_response, serve_chat, with_limit_headers, ChatServed, Reply,
};
use super::error::ApiError;
use super::relay::Encoder;
use super::wire::parse_body;
use super::{new_request_id, read_body, with_request_id, AppState, Generation};
use crate::governance::LimitHeaders;
use crate::ledger::tracker::RequestTracker;
use crate::types::{ProviderError, Usage};
use bytes::Bytes;
use response::{Echo, ItemIds, Shape};
use store::{Owner, ResponseStore};
use stream::ResponseEvents;
use wire::ResponsesRequest;

/// The ledger's `endpoint` for this route.
const ENDPOINT: &str = "responses";

pub async fn create(
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
    let res = answer(outcome, tracker, ApiError::into_response).await;
    with_request_id(with_limit_headers(res, limit_headers), &request_id)
}

async fn run(
    state: &Arc<Generation>,
    headers: &HeaderMap,
    body: Body,
    tracker: &mut RequestTracker,
    limit_headers: &mut LimitHeaders,
    request_id: &str,
) -> Result<Reply<Events>, ApiError> {
    // Read before the key is answered, as in `chat`: answering while a body is unread
    // makes HTTP/1.1 close the connection the SDK wants to reuse.
    let key = authenticate(state, headers, tracker);
    let bytes = read_body(body, state.config.server.max_body_bytes, headers).await?;
    let key = key?;
    let mut req: ResponsesRequest = parse_body(&bytes)?;
    req.validate()?;
    // The PII guardrail reads the client's own texts first, since they may be stored
    // as they are: a `block` refuses here, a `redact` rewrites them.
    state
        .governance
        .guard_texts(&key, tracker, |f| visit_texts(&mut req, f))?;
    let suffix = request_id.trim_start_matches("req_").to_owned();
    let id = format!("resp_{suffix}");
    let owner = owner_of(&key);
    let db = response_store(state);
    let store = store_decision(&req, &key, db.is_some())?;
    let history = match &req.previous_response_id {
        Some(previous) => previous_conversation(db.as_ref(), previous, &owner).await?,
        None => Vec::new(),
    };
    let echo = Echo::of(&req, store);
    let chat = request::to_chat(&req, &history)?;
    // The conversation so far, this input included: what a stored response keeps,
    // and the input a Responses upstream is sent.
    let mut conversation = history;
    conversation.extend(input_items(&req));
    let useful = native::useful_for(state.config.model(&req.model).map(|m| &**m));
    // Without a stored conversation the client's input goes as it came.
    let upstream_input = match (&req.previous_response_id, &req.input) {
        (None, Some(input)) => input.clone(),
        _ => Value::Array(conversation.clone()),
    };
    let mut native = native::Native::new(
        &bytes,
        upstream_input,
        &conversation,
        req.instructions.as_deref(),
        &chat,
        useful,
    );
    let own = native::Own {
        id: id.clone(),
        store,
        previous_response_id: req.previous_response_id.clone(),
    };
    let kept = match (store, db) {
        (true, Some(db)) => Some((db, owner, conversation)),
        _ => None,
    };
    let created_at = crate::types::time::now_ms() / 1000;
    let passed = |admitted: &_, d: &_| native.body(admitted, d);
    match serve_chat(state, &key, headers, chat, tracker, limit_headers, passed).await? {
        ChatServed::Full {
            body,
            deployment,
            attempts,
            route,
            ..
        } if native.passed_to(&deployment) => {
            // The upstream's own response, with the gateway's fields.
            let mut object: Value = serde_json::from_slice(&body).map_err(|e| {
                ApiError::from_provider(
                    &ProviderError::Protocol(format!("response is not readable: {e}")),
                    &deployment.name,
                )
            })?;
            own.write(&mut object);
            if let Some((db, owner, items)) = kept {
                keep(db, id.clone(), owner, items, object.clone()).await;
            }
            Ok(Reply::Full(json_response(
                serde_json::to_vec(&object).unwrap_or_default(),
                &deployment,
                attempts,
                &route,
            )))
        }
        ChatServed::Full {
            body,
            usage,
            deployment,
            attempts,
            route,
        } => {
            let ids = ItemIds { suffix: &suffix };
            let (output, status, model) = response::output_of(&body, &ids).map_err(|why| {
                ApiError::from_provider(&ProviderError::Protocol(why), &deployment.name)
            })?;
            let model = model.unwrap_or_else(|| req.model.clone());
            let object = echo.response(&Shape {
                id: &id,
                created_at,
                completed_at: crate::types::time::now_ms() / 1000,
                status,
                model: &model,
                output: &output,
                usage: Some(&usage),
                error: Value::Null,
            });
            if let Some((db, owner, items)) = kept {
                keep(db, id.clone(), owner, items, object.clone()).await;
            }
            let body = serde_json::to_vec(&object).unwrap_or_default();
            Ok(Reply::Full(json_response(
                body,
                &deployment,
                attempts,
                &route,
            )))
        }
        ChatServed::Stream(relay) => {
            let finished: Option<stream::Finished> = kept.map(|(db, owner, items)| {
                let id = id.clone();
                Box::new(
                    move |object: Value| -> futures_util::future::BoxFuture<'static, ()> {
                        Box::pin(keep(db, id, owner, items, object))
                    },
                ) as stream::Finished
            });
            let events = if native.passed_to(&relay.deployment) {
                Events::Native(native::NativeEvents::new(own, finished))
            } else {
                Events::Translated(Box::new(ResponseEvents::new(id, suffix, echo, finished)))
            };
            Ok(Reply::Stream(relay, events))
        }
    }
}

/// What a stream is made of: a Responses upstream's own events, or chat chunks
/// translated.
enum Events {
    Native(native::NativeEvents),
    Translated(Box<ResponseEvents>),
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

    fn persist(&mut self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        match self {
            Events::Native(e) => e.persist(),
            Events::Translated(e) => e.persist(),
        }
    }
}

/// Every text of a request the PII guardrail must see: instructions, a string input,
/// and in input items message content, call arguments and call outputs.
fn visit_texts(req: &mut ResponsesRequest, f: &mut dyn FnMut(&mut String)) {
    if let Some(s) = req.instructions.as_mut() {
        f(s);
    }
    let items = match req.input.as_mut() {
        Some(Value::String(s)) => return f(s),
        Some(Value::Array(items)) => items,
        _ => return,
    };
    let mut text = |v: &mut Value| {
        if let Value::String(s) = v {
            f(s);
        }
    };
    for item in items.iter_mut().filter_map(Value::as_object_mut) {
        for field in ["arguments", "output"] {
            if let Some(v) = item.get_mut(field) {
                text(v);
            }
        }
        match item.get_mut("content") {
            Some(v @ Value::String(_)) => text(v),
            Some(Value::Array(parts)) => {
                for part in parts.iter_mut().filter_map(Value::as_object_mut) {
                    for field in ["text", "refusal"] {
                        if let Some(v) = part.get_mut(field) {
                            text(v);
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(Value::Array(parts)) = item.get_mut("output") {
            for part in parts.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(v) = part.get_mut("text") {
                    text(v);
                }
            }
        }
    }
}

/// The stored responses, when there is a ledger's database to keep them in; rows
/// written through it are kept `ledger.responses_ttl_days` of the configuration in
/// force.
fn response_store(state: &Generation) -> Option<ResponseStore> {
    let ttl_days = state.config.ledger.responses_ttl_days;
    state
        .governance
        .ledger()
        .cloned()
        .map(|db| ResponseStore::new(db, ttl_days))
}

fn owner_of(key: &crate::governance::Principal) -> Owner {
    Owner {
        key_id: key.id.to_string(),
        team: key.team.as_deref().map(str::to_owned),
    }
}

/// Whether this response is stored: as asked, by default when the key may keep
/// content and there is a database; asking for it otherwise is a 400 naming `store`.
fn store_decision(
    req: &ResponsesRequest,
    key: &crate::governance::Principal,
    have_db: bool,
) -> Result<bool, ApiError> {
    let may = key.policy.data.log_content;
    match req.store {
        Some(true) if !may => Err(ApiError::invalid_request(
            Some("store".into()),
            "This key's policy forbids keeping request content, so its responses cannot be stored; send 'store': false.",
        )),
        Some(true) if !have_db => Err(ApiError::invalid_request(
            Some("store".into()),
            "This gateway keeps no database (the ledger is off), so responses cannot be stored; send 'store': false.",
        )),
        Some(s) => Ok(s),
        None => Ok(may && have_db),
    }
}

/// The input items of `req` as they are stored: a string input as a user message.
fn input_items(req: &ResponsesRequest) -> Vec<Value> {
    match &req.input {
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": s}]})],
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

fn response_not_found(id: &str, param: Option<&str>) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: "response_not_found",
        param: param.map(str::to_owned),
        message: format!("No response with id '{id}' was found."),
        retry_after: None,
    }
}

fn store_unavailable(e: &sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "the response store failed");
    ApiError::internal("The response store could not be read.")
}

/// The stored conversation `previous` continues: its items and its output.
async fn previous_conversation(
    db: Option<&ResponseStore>,
    previous: &str,
    owner: &Owner,
) -> Result<Vec<Value>, ApiError> {
    let Some(db) = db else {
        return Err(response_not_found(previous, Some("previous_response_id")));
    };
    match db.get(previous, owner).await {
        Ok(Some(stored)) => Ok(stored.conversation()),
        Ok(None) => Err(response_not_found(previous, Some("previous_response_id"))),
        Err(e) => Err(store_unavailable(&e)),
    }
}

/// Writes a response to the store; a failure is logged (the client has its answer).
async fn keep(db: ResponseStore, id: String, owner: Owner, items: Vec<Value>, object: Value) {
    if let Err(e) = db.put(&id, &owner, &items, &object).await {
        tracing::error!(error = %e, response = %id, "a response could not be stored");
    }
}

/// `GET /v1/responses/{id}`: a stored response, to the key (or team) that made it.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    lookup_reply(&state, &headers, &id, false).await
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    lookup_reply(&state, &headers, &id, true).await
}

/// The answer to a retrieval (or, with `delete`, a deletion) of response `id`.
async fn lookup_reply(state: &AppState, headers: &HeaderMap, id: &str, delete: bool) -> Response {
    let state = state.current();
    let request_id = new_request_id();
    let res = match lookup(&state, headers, id, delete).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    with_request_id(res, &request_id)
}

async fn lookup(
    state: &Generation,
    headers: &HeaderMap,
    id: &str,
    delete: bool,
) -> Result<Value, ApiError> {
    let key = state.authenticate(headers)?;
    let owner = owner_of(&key);
    let Some(db) = response_store(state) else {
        return Err(response_not_found(id, None));
    };
    if delete {
        return match db.delete(id, &owner).await {
            Ok(true) => Ok(json!({"id": id, "object": "response.deleted", "deleted": true})),
            Ok(false) => Err(response_not_found(id, None)),
            Err(e) => Err(store_unavailable(&e)),
        };
    }
    match db.get(id, &owner).await {
        Ok(Some(stored)) => Ok(stored.response),
        Ok(None) => Err(response_not_found(id, None)),
        Err(e) => Err(store_unavailable(&e)),
    }
}

/// `GET /v1/responses/{id}/input_items`: the input items of a stored response, paged
/// ([`items`]), to whoever may `GET` it; anyone else is told it does not exist.
pub async fn list_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let state = state.current();
    let request_id = new_request_id();
    let res = match list_input_items(&state, &headers, &id, query.as_deref()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    with_request_id(res, &request_id)
}

async fn list_input_items(
    state: &Generation,
    headers: &HeaderMap,
    id: &str,
    query: Option<&str>,
) -> Result<Value, ApiError> {
    let key = state.authenticate(headers)?;
    // The query is checked before the store is read, so that a bad parameter is the
    // same 400 whether or not the response exists.
    let query = items::ListQuery::parse(query)?;
    let Some(db) = response_store(state) else {
        return Err(response_not_found(id, None));
    };
    match db.get(id, &owner_of(&key)).await {
        Ok(Some(stored)) => items::page(items::listed(id, &stored.items), &query),
        Ok(None) => Err(response_not_found(id, None)),
        Err(e) => Err(store_unavailable(&e)),
    }
}
