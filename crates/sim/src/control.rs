//! The control endpoint (`/_sim/…`): set and clear faults and latencies, read and clear
//! the recorded requests. No auth: the simulator only ever listens where tests run.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Scenario, ScenarioFault, ScenarioLatency, Shared};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/health", get(health))
        .route(
            "/_sim/faults",
            get(list_faults).post(set_fault).delete(clear_faults),
        )
        .route(
            "/_sim/latency",
            get(list_latencies)
                .post(set_latency)
                .delete(clear_latencies),
        )
        .route("/_sim/requests", get(list_requests).delete(clear_requests))
        .route("/_sim/scenario", post(load_scenario))
        .route("/_sim/reset", post(reset))
}

/// Optional `instance` and `model` query parameters that narrow a listing or a clear.
#[derive(Debug, Default, Deserialize)]
struct Scope {
    instance: Option<String>,
    model: Option<String>,
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "param": null,
            "code": null,
        }})),
    )
        .into_response()
}

/// Parses a JSON body with an error that says what is wrong (axum's own rejection is
/// plain text, and the control endpoint answers JSON only).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("Invalid control body: {e}")))
}

/// Parses a fault or latency body, refusing keys outside `allowed`: with flattened serde
/// structs a misspelt field (`stall`, `retry_after`) would otherwise be dropped silently and
/// a test would run without the fault it meant to set.
fn parse_strict<T: DeserializeOwned>(body: &Bytes, allowed: &[&str]) -> Result<T, Response> {
    let value: Value = parse(body)?;
    let Some(map) = value.as_object() else {
        return Err(bad_request(
            "Invalid control body: expected a JSON object".into(),
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad_request(format!(
            "Invalid control body: unknown field `{unknown}`; expected one of {allowed:?}"
        )));
    }
    serde_json::from_value(value).map_err(|e| bad_request(format!("Invalid control body: {e}")))
}

const FAULT_FIELDS: &[&str] = &[
    "instance",
    "model",
    "kind",
    "status",
    "retry_after_s",
    "stall_ms",
    "cut_after_chunks",
    "count",
    "error_type",
];
const LATENCY_FIELDS: &[&str] = &["instance", "model", "ttft_ms", "chunk_delay_ms", "chunks"];

fn ok() -> Response {
    Json(json!({"ok": true})).into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn list_faults(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({"faults": shared.state().fault_listing()}))
}

async fn set_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let f: ScenarioFault = match parse_strict(&body, FAULT_FIELDS) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(status) = f.fault.status.filter(|s| !(100..=599).contains(s)) {
        return bad_request(format!(
            "Invalid control body: status {status} is not an HTTP status (100 to 599)"
        ));
    }
    shared.state().set_fault(&f.instance, &f.model, f.fault);
    ok()
}

async fn clear_faults(State(shared): State<Arc<Shared>>, Query(scope): Query<Scope>) -> Response {
    let mut state = shared.state();
    match &scope.instance {
        None => state.clear_faults(None),
        Some(instance) => state.clear_faults(Some((instance, scope.model.as_deref()))),
    }
    ok()
}

async fn list_latencies(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({"latencies": shared.state().latency_listing()}))
}

async fn set_latency(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let l: ScenarioLatency = match parse_strict(&body, LATENCY_FIELDS) {
        Ok(l) => l,
        Err(r) => return r,
    };
    shared.state().set_latency(&l.instance, &l.model, l.latency);
    ok()
}

async fn clear_latencies(
    State(shared): State<Arc<Shared>>,
    Query(scope): Query<Scope>,
) -> Response {
    let mut state = shared.state();
    match &scope.instance {
        None => state.clear_latencies(None),
        Some(instance) => state.clear_latencies(Some((instance, scope.model.as_deref()))),
    }
    ok()
}

async fn list_requests(
    State(shared): State<Arc<Shared>>,
    Query(scope): Query<Scope>,
) -> Json<Value> {
    let instance = scope.instance.unwrap_or_default();
    Json(json!({"requests": shared.state().requests(&instance)}))
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> Response {
    shared.state().clear_requests();
    ok()
}

/// Replaces all faults and latencies with the scenario's (recordings are kept).
async fn load_scenario(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let scenario: Scenario = match parse(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut state = shared.state();
    state.clear_faults(None);
    state.clear_latencies(None);
    state.apply_scenario(&scenario);
    ok()
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.state().clear_all();
    ok()
}
