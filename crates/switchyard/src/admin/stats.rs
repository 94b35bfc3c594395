//! The dashboard's JSON: `GET /admin/stats/overview`, `/admin/stats/errors`,
//! `/admin/requests` and `/admin/requests/{id}`. They read the ledger's database
//! through `ledger::stats` (never the request path) and, for health, the same
//! snapshot `GET /admin/health` serves.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{admin_only, error, no_store};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::ledger::stats::{
    self, AttemptRow, Percentiles, RequestFilter, RequestRow, StatusFilter, Window,
};
use crate::types::money::format_usd;
use crate::types::time;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/stats/overview", get(overview))
        .route("/admin/stats/errors", get(errors))
        .route("/admin/requests", get(requests))
        .route("/admin/requests/{id}", get(request))
        .route("/admin/channels", get(channels))
        .route("/admin/contracts", get(contracts))
        .route("/admin/shadow", get(shadow))
}

/// The windows the dashboard offers: length and bucket, in ms.
fn window_of(name: &str) -> Option<(i64, i64)> {
    match name {
        "15m" => Some((15 * 60_000, 15_000)),
        "1h" => Some((3_600_000, 60_000)),
        "24h" => Some((86_400_000, 15 * 60_000)),
        _ => None,
    }
}

#[derive(Deserialize)]
struct WindowParams {
    window: Option<String>,
    /// The end of the window, unix ms (default: now); for reproducible reports.
    end: Option<i64>,
}

fn window(p: &WindowParams) -> Result<(String, Window), ApiError> {
    let name = p.window.clone().unwrap_or_else(|| "1h".to_owned());
    let Some((len, bucket)) = window_of(&name) else {
        return Err(ApiError::invalid_request(
            Some("window".into()),
            format!("'window' `{name}` is not one of 15m, 1h, 24h."),
        ));
    };
    let end = p.end.unwrap_or_else(time::now_ms);
    Ok((name, Window::ending_at(end, len, bucket)))
}

fn ledger_failed(e: crate::ledger::LedgerError) -> ApiError {
    tracing::error!(error = %e, "dashboard query failed");
    ApiError::internal("The ledger query failed; see the gateway log.")
}

macro_rules! try_api {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return ApiError::into_response(e),
        }
    };
}

fn percentiles(p: &Percentiles) -> Value {
    json!({"p50": p.p50_us, "p99": p.p99_us})
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn window_json(name: &str, w: &Window) -> Value {
    json!({
        "name": name,
        "start_ms": w.start_ms,
        "end_ms": w.end_ms,
        "start": time::format_rfc3339(w.start_ms),
        "end": time::format_rfc3339(w.end_ms),
        "bucket_ms": w.bucket_ms,
    })
}

/// `GET /admin/stats/overview?window=1h`: requests, errors, cost and latency in the
/// window, per deployment, and the traffic per provider and bucket.
async fn overview(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<WindowParams>,
) -> Response {
    try_api!(admin_only(&state, &headers));
    let (name, w) = try_api!(window(&p));
    let db = try_api!(state.governance.ledger().ok_or_else(no_store));
    let o = try_api!(stats::overview(db, &w).await.map_err(ledger_failed));
    let secs = w.seconds();
    let deployments: Vec<Value> = o
        .deployments
        .iter()
        .map(|d| {
            json!({
                "deployment": d.deployment,
                "provider": d.provider,
                "requests": d.requests,
                "errors": d.errors,
                "error_rate": rate(d.errors, d.requests),
                "attempts": d.attempts,
                "failed_attempts": d.failed_attempts,
                "attempt_failure_rate": rate(d.failed_attempts, d.attempts),
                "requests_per_second": d.requests as f64 / secs,
                "cost_nano_usd": d.cost_nano_usd,
                "cost_usd": format_usd(d.cost_nano_usd),
                "latency_us": percentiles(&d.latency),
                "ttft_us": percentiles(&d.ttft),
            })
        })
        .collect();
    // One series per provider, a count per bucket (zeros included).
    let mut series: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (i, bucket) in o.traffic.iter().enumerate() {
        for (provider, n) in bucket {
            let s = series
                .entry(provider.as_str())
                .or_insert_with(|| vec![0; o.traffic.len()]);
            if let Some(slot) = s.get_mut(i) {
                *slot = *n;
            }
        }
    }
    let bucket_starts: Vec<i64> = (0..o.traffic.len())
        .map(|i| w.start_ms + w.bucket_ms * i64::try_from(i).unwrap_or(0))
        .collect();
    Json(json!({
        "object": "stats.overview",
        "window": window_json(&name, &w),
        "requests": o.requests,
        "errors": o.errors,
        "error_rate": rate(o.errors, o.requests),
        "requests_per_second": o.requests as f64 / secs,
        "cost_nano_usd": o.cost_nano_usd,
        "cost_usd": format_usd(o.cost_nano_usd),
        "latency_us": percentiles(&o.latency),
        "ttft_us": percentiles(&o.ttft),
        "deployments": deployments,
        "traffic": {"bucket_start_ms": bucket_starts, "providers": series},
    }))
    .into_response()
}

/// `GET /admin/stats/errors?window=1h`: failed upstream calls per deployment and
/// error class, beside the health snapshot of `GET /admin/health`.
async fn errors(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<WindowParams>,
) -> Response {
    try_api!(admin_only(&state, &headers));
    let (name, w) = try_api!(window(&p));
    let db = try_api!(state.governance.ledger().ok_or_else(no_store));
    let rows = try_api!(stats::errors_by_class(db, &w).await.map_err(ledger_failed));
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "deployment": r.deployment,
                "error_class": r.error_class,
                "attempts": r.attempts,
                "last_at": time::format_rfc3339(r.last_at_ms),
            })
        })
        .collect();
    Json(json!({
        "object": "stats.errors",
        "window": window_json(&name, &w),
        "data": data,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct RequestParams {
    key: Option<String>,
    team: Option<String>,
    model: Option<String>,
    /// An HTTP status, `ok` or `error`.
    status: Option<String>,
    /// Unix ms: only rows started before (the `next_before` of the previous page).
    before: Option<i64>,
    limit: Option<u32>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn request_json(r: &RequestRow) -> Value {
    json!({
        "request_id": r.request_id,
        "started_at_ms": r.started_at_ms,
        "started_at": time::format_rfc3339(r.started_at_ms),
        "key_id": r.key_id,
        "key_name": r.key_name,
        "team": r.team_id,
        "model": r.logical_model,
        "deployment": r.deployment,
        "provider": r.provider,
        "status": r.status,
        "error_code": r.error_code,
        "streamed": r.streamed != 0,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cost_nano_usd": r.cost_nano_usd,
        "cost_usd": format_usd(r.cost_nano_usd),
        "latency_us": r.latency_us,
        "ttft_us": r.ttft_us,
    })
}

fn attempt_json(a: &AttemptRow) -> Value {
    json!({
        "attempt": a.attempt,
        "started_at": time::format_rfc3339(a.started_at_ms),
        "deployment": a.deployment,
        "provider": a.provider,
        "upstream_model": a.upstream_model,
        "status": a.status,
        "error_class": a.error_class,
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "cost_nano_usd": a.cost_nano_usd,
        "latency_us": a.latency_us,
    })
}

/// `GET /admin/requests`: the newest ledger rows, filtered.
async fn requests(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<RequestParams>,
) -> Response {
    try_api!(admin_only(&state, &headers));
    let status = match nonempty(&p.status).as_deref() {
        None => None,
        Some("ok") => Some(StatusFilter::Ok),
        Some("error") => Some(StatusFilter::Error),
        Some(s) => match s.parse::<u16>() {
            Ok(c) => Some(StatusFilter::Code(c)),
            Err(_) => {
                return ApiError::invalid_request(
                    Some("status".into()),
                    "'status' must be an HTTP status, `ok` or `error`.",
                )
                .into_response()
            }
        },
    };
    let filter = RequestFilter {
        key: nonempty(&p.key),
        team: nonempty(&p.team),
        model: nonempty(&p.model),
        status,
        before_ms: p.before,
        limit: p.limit.unwrap_or(50).clamp(1, 500),
    };
    let db = try_api!(state.governance.ledger().ok_or_else(no_store));
    let rows = try_api!(stats::recent_requests(db, &filter)
        .await
        .map_err(ledger_failed));
    let next_before = (rows.len() == filter.limit as usize)
        .then(|| rows.last().map(|r| r.started_at_ms))
        .flatten();
    Json(json!({
        "object": "list",
        "data": rows.iter().map(request_json).collect::<Vec<_>>(),
        "next_before": next_before,
    }))
    .into_response()
}

/// `GET /admin/requests/{id}`: one row with its attempts, in order (the route taken).
async fn request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    try_api!(admin_only(&state, &headers));
    let db = try_api!(state.governance.ledger().ok_or_else(no_store));
    let found = try_api!(stats::request_detail(db, &id).await.map_err(ledger_failed));
    let Some((row, attempts)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("no request `{id}` in the ledger"),
        )
        .into_response();
    };
    let mut out = request_json(&row);
    if let Some(fields) = out.as_object_mut() {
        fields.insert(
            "attempts".into(),
            Value::Array(attempts.iter().map(attempt_json).collect()),
        );
    }
    Json(out).into_response()
}

#[derive(Deserialize)]
struct RangeParams {
    /// UTC date or time (`2026-11-01`, `2026-11-01T12:00:00Z`); default: a day before `until`.
    since: Option<String>,
    /// Default: now.
    until: Option<String>,
}

fn instant_param(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|text| {
        time::parse_utc(text).ok_or_else(|| {
            ApiError::invalid_request(
                Some(name.to_owned()),
                format!("'{name}' `{text}` is not a UTC date or time like 2026-11-01 or 2026-11-01T12:00:00Z."),
            )
        })
    })
    .transpose()
}

/// A report's `[since, until)` from its query: `until` defaults to now, `since` to a
/// day before it.
fn report_range(since: Option<&str>, until: Option<&str>) -> Result<(i64, i64), ApiError> {
    let until = instant_param("until", until)?.unwrap_or_else(time::now_ms);
    let since = instant_param("since", since)?.unwrap_or_else(|| until.saturating_sub(86_400_000));
    if since >= until {
        return Err(ApiError::invalid_request(
            Some("since".into()),
            "'since' must be before 'until'.",
        ));
    }
    Ok((since, until))
}

/// `GET /admin/channels?since=&until=`: the channel report (see
/// `ledger::stats::channels`), against the objectives configured now.
async fn channels(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<RangeParams>,
) -> Response {
    use crate::ledger::stats::channels::{channel_report, channel_report_json, Objectives};
    try_api!(admin_only(&state, &headers));
    let (since, until) = try_api!(report_range(p.since.as_deref(), p.until.as_deref()));
    let configured: Vec<(String, Objectives)> = state
        .current()
        .config
        .channel_objectives()
        .into_iter()
        .map(|(name, ttft, total)| (name, Objectives { ttft, total }))
        .collect();
    let db = try_api!(state.governance.ledger().ok_or_else(no_store));
    let rows = try_api!(channel_report(db, since, until, &configured)
        .await
        .map_err(ledger_failed));
    Json(channel_report_json(since, until, &rows)).into_response()
}

#[derive(Deserialize)]
struct AtParams {
    /// UTC date or time; default: now.
    at: Option<String>,
}

/// `GET /admin/contracts?at=`: each contract's burn, projection and warnings (see
/// `ledger::stats::contracts`), from the ledger, with what calls in flight hold
/// against each cap now.
async fn contracts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<AtParams>,
) -> Response {
    use crate::ledger::stats::contracts::{contract_report, contract_report_json};
    try_api!(admin_only(&state, &headers));
    let at = try_api!(instant_param("at", p.at.as_deref())).unwrap_or_else(time::now_ms);
    let generation = state.current();
    let db = try_api!(state.governance.ledger().ok_or_else(no_store));
    let rows = try_api!(contract_report(db, &generation.config.contract_list(), at)
        .await
        .map_err(ledger_failed));
    let mut body = contract_report_json(&rows);
    // On a replica that served none of them lately, the shared counters are newer.
    generation
        .dispatcher
        .contracts
        .refresh(&generation.config.contract_list())
        .await;
    let now = time::now_ms();
    if let Some(list) = body.get_mut("data").and_then(|d| d.as_array_mut()) {
        for (entry, c) in list.iter_mut().zip(generation.config.contracts.values()) {
            let held = generation
                .dispatcher
                .contracts
                .burn(c, now)
                .reserved_nano_usd;
            entry["reserved_now_nano_usd"] = serde_json::json!(held);
        }
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
struct ShadowParams {
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /admin/shadow?model=&since=&until=`: the model's mirrored requests beside the
/// client's (see `ledger::stats::shadow`).
async fn shadow(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Query<ShadowParams>,
) -> Response {
    use crate::ledger::stats::shadow::{shadow_report, shadow_report_json};
    try_api!(admin_only(&state, &headers));
    let Some(model) = p.model.filter(|m| !m.is_empty()) else {
        return ApiError::into_response(ApiError::invalid_request(
            Some("model".into()),
            "'model' is required: the logical model whose shadow to report.",
        ));
    };
    let (since, until) = try_api!(report_range(p.since.as_deref(), p.until.as_deref()));
    let agree_at = state
        .current()
        .config
        .model(&model)
        .and_then(|m| m.shadow.as_ref())
        .map_or(crate::config::DEFAULT_AGREE_AT, |s| s.agree_at);
    let db = try_api!(state.governance.ledger().ok_or_else(no_store));
    let report = try_api!(shadow_report(db, &model, since, until, agree_at)
        .await
        .map_err(ledger_failed));
    Json(shadow_report_json(&report)).into_response()
}
