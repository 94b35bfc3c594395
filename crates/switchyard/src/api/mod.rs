//! Ingress: the HTTP API applications call.
//!
//! Handlers stay thin: authenticate, read and validate the body, hand over to
//! [`crate::dispatch`], render the answer. Each request carries a
//! [`crate::ledger::tracker::RequestTracker`] that becomes its ledger row.

pub mod anthropic;
mod cache;
mod channel;
pub mod chat;
pub mod error;
pub mod generation;
mod openai_read;
mod panics;
mod recovery;
mod relay;
pub mod responses;
pub mod shadow;

pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::governance::Governance;
use crate::ledger::LedgerSink;
use crate::storage::redis::StateStatus;
use error::ApiError;
pub use generation::{Generation, ReloadError, ReloadReport, Services};

/// Everything a request handler needs, shared by all of them: the long-lived
/// services, and the configuration in force as a swappable [`Generation`].
pub struct AppState {
    /// Keys, teams, policies, limits and budgets; lives as long as the gateway.
    pub governance: Arc<Governance>,
    pub ledger: LedgerSink,
    services: Services,
    generation: ArcSwap<Generation>,
    /// The file the configuration came from; `None` when it was given as a value.
    source: Option<PathBuf>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Set on shutdown: `/readyz` fails so load balancers stop sending.
    pub draining: AtomicBool,
}

impl AppState {
    /// The state for the first generation: `config` and its dispatcher, on the
    /// long-lived `services`.
    pub fn new(config: Arc<Config>, dispatcher: Dispatcher, services: Services) -> Self {
        let started_at = crate::types::time::now_ms() / 1000;
        let first = Generation::new(1, config, dispatcher, &services, started_at);
        AppState {
            governance: services.governance.clone(),
            ledger: services.ledger.clone(),
            services,
            generation: ArcSwap::from_pointee(first),
            source: None,
            reloading: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
        }
    }

    /// Remembers the file the configuration came from, so that it can be reloaded.
    pub fn with_source(mut self, path: PathBuf) -> Self {
        self.source = Some(path);
        self
    }

    /// Metrics and traces.
    pub fn telemetry(&self) -> &Arc<crate::telemetry::Telemetry> {
        &self.services.telemetry
    }

    /// The generation in force. A request loads it once and keeps it to its end.
    pub fn current(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Re-reads the configuration file, validates it as `switchyard config check`
    /// does and, when it is valid, puts it in force for new requests. On error the
    /// running configuration stays. Logs the outcome either way.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.reloading.lock().await;
        let Some(source) = &self.source else {
            return Err(ReloadError::NoSource);
        };
        let current = self.current();
        let result = generation::reload(source, &current, &self.services, &self.generation).await;
        match &result {
            Ok(r) => generation::log_report(r),
            Err(e) => tracing::error!(
                file = %source.display(),
                generation = current.id,
                "configuration reload refused, the running configuration stays: {e}"
            ),
        }
        result
    }
}

/// Every ingress route, with `more` (the admin API, which sits above the ingress and
/// is mounted by the server) merged in under the same fallbacks.
pub fn router(state: Arc<AppState>, more: Router<Arc<AppState>>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/responses/{id}/input_items", get(responses::list_items))
        .route(
            "/v1/messages/count_tokens",
            post(anthropic::count_tokens::count_tokens),
        )
        .route("/v1/embeddings", post(chat::embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(more)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(panics::catch_panics))
        .with_state(state)
}

/// Reads the body up to the configured limit. A body that came in one frame is
/// returned as it came; one in several is copied once, into a buffer of its total
/// length (`Collected::to_bytes`).
async fn read_body(body: Body, limit: usize, headers: &HeaderMap) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(limit))
        }
        Err(e) => Err(ApiError::invalid_request(
            None,
            format!("The request body could not be read: {e}."),
        )),
    }
}

/// `req_` and 24 hex digits: the arrival time in unix milliseconds (48 bits), then 48
/// random bits. Ids sort by arrival, so the ledger's primary-key index grows at its end
/// instead of taking each new row on a random page; 48 random bits per millisecond
/// keep them unique and unguessable.
fn new_request_id() -> String {
    let ms = u64::try_from(crate::types::time::now_ms()).unwrap_or(0);
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&rand::random::<[u8; 6]>());
    format!("req_{}", hex::encode(bytes))
}

fn model_object(id: &str, created: i64) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "switchyard"})
}

async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let state = state.current();
    let caller = match state.authenticate(&headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // A key sees the models its policy lets it use.
    let data: Vec<_> = state
        .config
        .models
        .keys()
        .filter(|name| caller.policy.allows_model(name))
        .map(|name| model_object(name, state.started_at))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let state = state.current();
    if let Err(e) = state.authenticate(&headers) {
        return e.into_response();
    }
    match state.config.model(&id) {
        Some(_) => Json(model_object(&id, state.started_at)).into_response(),
        None => ApiError::model_not_found(&id).into_response(),
    }
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        let mut res = Json(json!({"status": "draining"})).into_response();
        *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return res;
    }
    // With `[state]`, the body says whether this replica's limits and budgets are
    // shared or (Redis unreachable, `local` mode) its own; in `closed` mode it cannot
    // serve then, and says so with 503.
    match state.governance.shared_state().map(|r| r.status()) {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(StateStatus::Unavailable) => {
            let mut res = Json(json!({"status": "state_unavailable", "state": "unavailable"}))
                .into_response();
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            res
        }
        Some(s) => Json(json!({"status": "ready", "state": s.as_str()})).into_response(),
    }
}

async fn route_not_found(uri: Uri) -> Response {
    ApiError::route_not_found(uri.path()).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::method_not_allowed().into_response()
}

/// Adds the request id to any response.
fn with_request_id(mut res: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::{new_request_id, read_body};
    use axum::body::Body;
    use bytes::Bytes;
    use http::{header, HeaderMap, StatusCode};

    fn frames(parts: &[&'static str]) -> Body {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Body::from_stream(futures_util::stream::iter(parts))
    }

    fn declaring(len: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, len.into());
        h
    }

    #[tokio::test]
    async fn a_body_is_read_whole_however_it_is_framed() {
        let one = Bytes::from_static(b"{\"model\":\"m\"}");
        let read = read_body(Body::from(one.clone()), 100, &HeaderMap::new())
            .await
            .expect("one frame");
        assert_eq!(read, one);
        // One frame is kept as it came, not copied.
        assert_eq!(read.as_ptr(), one.as_ptr());
        let parts = ["{\"mo", "", "del\":", "\"m\"}"];
        for headers in [HeaderMap::new(), declaring(14), declaring(3)] {
            let read = read_body(frames(&parts), 100, &headers)
                .await
                .expect("frames");
            assert_eq!(read, one, "{headers:?}");
        }
        let read = read_body(frames(&["", ""]), 100, &HeaderMap::new())
            .await
            .expect("empty frames");
        assert!(read.is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_declared_or_not() {
        let declared = read_body(frames(&["x"]), 10, &declaring(11))
            .await
            .expect_err("declared too long");
        assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Chunked, with no length declared (or a lie): counted as it arrives.
        for headers in [HeaderMap::new(), declaring(4)] {
            let e = read_body(frames(&["12345", "67890", "1"]), 10, &headers)
                .await
                .expect_err("too long");
            assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(e.code, "request_too_large");
        }
        let exact = read_body(frames(&["12345", "67890"]), 10, &HeaderMap::new())
            .await
            .expect("at the limit");
        assert_eq!(exact.as_ref(), b"1234567890");
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_a_bad_request() {
        let parts: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{\"mo")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
        ];
        let body = Body::from_stream(futures_util::stream::iter(parts));
        let e = read_body(body, 100, &HeaderMap::new())
            .await
            .expect_err("broken");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("could not be read"), "{}", e.message);
    }

    #[test]
    fn request_ids_sort_by_arrival_and_keep_their_shape() {
        let first = new_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_request_id();
        assert!(first < second, "{first} !< {second}");
        for id in [&first, &second] {
            let hex = id.strip_prefix("req_").expect("prefix");
            assert_eq!(hex.len(), 24, "{id}");
            assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        // Same millisecond, different ids.
        let ids: std::collections::HashSet<String> = (0..1_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1_000);
    }
}
