//! The admin API under `/admin`: teams, virtual keys, budgets and spend, as JSON,
//! described in `docs/admin-openapi.yaml`.
//!
//! Authentication: `Authorization: Bearer <admin token>` (`[admin] token`). One
//! exception keeps spend reporting simple and safe for tenants: a *virtual key that
//! belongs to a team* may read `GET /admin/spend` (and its alias `GET /v1/spend`), and
//! then always and only its own team's spend; asking for another team is 403.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::generation::Changes;
use crate::api::{AppState, ReloadReport};
use crate::config::policy::{Budget, BudgetInput};
use crate::config::{ConfigWarning, MetricsAuth};
use crate::governance::budget::Scope;
use crate::governance::session::{AdminAccess, CSRF_HEADER};
use crate::governance::store::{KeyRow, NewKey, StoreError, TeamRow, Update};
use crate::governance::Policy;
use crate::ledger::stats::contracts::ContractState;
use crate::ledger::{spend_query, SpendGroup, SpendQuery, SpendRow};
use crate::telemetry::{
    BudgetState, DeploymentState, LimitState, Snapshot, PROMETHEUS_CONTENT_TYPE,
};
use crate::types::money::format_usd;
use crate::types::money::nano_to_usd_string;
use crate::types::time;

mod stats;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/metrics", get(metrics_main))
        .merge(stats::routes())
        .route("/admin/teams", get(list_teams).post(create_team))
        .route("/admin/teams/{name}", get(get_team).patch(update_team))
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}", get(get_key).patch(update_key))
        .route("/admin/keys/{id}/revoke", post(revoke_key))
        .route("/admin/spend", get(spend))
        .route("/admin/health", get(health))
        .route("/admin/reload", post(reload_config))
        .route("/v1/spend", get(spend))
}

fn error(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> ApiError {
    ApiError {
        status,
        kind,
        code,
        param: None,
        message,
        retry_after: None,
    }
}

/// Only the admin token, or a dashboard session, passes (reads).
fn admin_only(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    admin_access(state, headers, false)
}

/// As [`admin_only`], for a change: a session must send its CSRF token too.
fn admin_write(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    admin_access(state, headers, true)
}

fn admin_access(state: &AppState, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
    let (code, message) = match state
        .governance
        .admin_access(headers, write, time::now_ms())
    {
        AdminAccess::Granted => return Ok(()),
        AdminAccess::Disabled => {
            return Err(error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "admin_disabled",
                "The admin API is disabled: set [admin] token in the configuration.".into(),
            ))
        }
        AdminAccess::CsrfMissing => {
            return Err(error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "csrf_token_missing",
                format!("A change made with the dashboard's session needs its `{CSRF_HEADER}` header."),
            ))
        }
        AdminAccess::Missing => ("missing_admin_token", "The admin API needs `Authorization: Bearer <admin token>`."),
        AdminAccess::Invalid => ("invalid_admin_token", "The admin API needs `Authorization: Bearer <admin token>` or an open dashboard session."),
    };
    Err(error(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        code,
        message.into(),
    ))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            m,
        ),
        StoreError::Conflict(m) => {
            error(StatusCode::CONFLICT, "invalid_request_error", "conflict", m)
        }
        StoreError::Invalid(m) => ApiError::invalid_request(None, m),
        other => {
            tracing::error!(error = %other, "admin API store failure");
            ApiError::internal("The key store failed; see the gateway log.")
        }
    }
}

fn no_store() -> ApiError {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "no_store",
        "This gateway has no key store (no ledger and no governance.store).".into(),
    )
}

/// Parses a JSON body into `T`, naming the offending field.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::api::wire::parse_body(bytes)
}

fn budgets_of(inputs: &[BudgetInput]) -> Result<Vec<Budget>, ApiError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            b.validate().map_err(|(field, m)| {
                ApiError::invalid_request(
                    Some(format!("budgets[{i}].{field}")),
                    format!("budgets[{i}].{field}: {m}"),
                )
            })
        })
        .collect()
}

/// A policy's own checks, and that the channels it names are configured.
fn check_policy(p: &Policy, config: &crate::config::Config) -> Result<(), ApiError> {
    p.validate().map_err(|(field, m)| {
        ApiError::invalid_request(
            Some(format!("policy.{field}")),
            format!("policy.{field}: {m}"),
        )
    })?;
    match p.unknown_channel(|c| config.channel(c).is_some()) {
        None => Ok(()),
        Some((field, name)) => Err(ApiError::invalid_request(
            Some(format!("policy.{field}")),
            format!("policy.{field}: `{name}` is not a configured channel ([channels.NAME])"),
        )),
    }
}

/// A budget's state; `id` is the key's id, or the team's name.
async fn budget_json(state: &AppState, scope: Scope, id: &str, b: &Budget) -> Value {
    let now = time::now_ms();
    let s = state
        .governance
        .budgets()
        .status(scope, id, b.period, now)
        .await;
    let (_, next) = b.period.bounds(now);
    json!({
        "period": b.period.as_str(),
        "limit_usd": nano_to_usd_string(b.limit_nano_usd),
        "limit_nano_usd": b.limit_nano_usd,
        "warn_at_percent": b.warn_at_percent,
        "spent_nano_usd": s.spent_nano_usd,
        "reserved_nano_usd": s.reserved_nano_usd,
        "resets_at": next.map(time::format_rfc3339),
    })
}

/// Every budget's state, in order (they may live in Redis: one read each).
async fn budgets_json(state: &AppState, scope: Scope, id: &str, budgets: &[Budget]) -> Vec<Value> {
    let mut out = Vec::with_capacity(budgets.len());
    for b in budgets {
        out.push(budget_json(state, scope, id, b).await);
    }
    out
}

async fn team_json(state: &AppState, t: &TeamRow) -> Value {
    let budgets = budgets_json(state, Scope::Team, &t.name, &t.budgets).await;
    json!({
        "name": t.name,
        "policy": t.policy,
        "budgets": budgets,
        "created_at": time::format_rfc3339(t.created_at_ms),
    })
}

async fn key_json(state: &AppState, k: &KeyRow) -> Value {
    let budgets = budgets_json(state, Scope::Key, &k.id, &k.budgets).await;
    let now = time::now_ms();
    let status = if k.revoked_at_ms.is_some() {
        "revoked"
    } else if k.expires_at_ms.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": k.id,
        "name": k.name,
        "team": k.team,
        "prefix": k.prefix,
        "status": status,
        "policy": k.policy,
        "budgets": budgets,
        "created_at": time::format_rfc3339(k.created_at_ms),
        "expires_at": k.expires_at_ms.map(time::format_rfc3339),
        "revoked_at": k.revoked_at_ms.map(time::format_rfc3339),
    })
}

macro_rules! try_api {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return ApiError::into_response(e),
        }
    };
}

async fn list_teams(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    try_api!(admin_only(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let teams = try_api!(store.teams().await.map_err(store_error));
    let mut data: Vec<Value> = Vec::with_capacity(teams.len());
    for t in &teams {
        data.push(team_json(&state, t).await);
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTeam {
    name: String,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    budgets: Vec<BudgetInput>,
}

async fn create_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    try_api!(admin_write(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let req: CreateTeam = try_api!(body(&bytes));
    try_api!(check_policy(&req.policy, &state.current().config));
    let budgets = try_api!(budgets_of(&req.budgets));
    let team = try_api!(store
        .create_team(&req.name, &req.policy, &budgets, "admin-api")
        .await
        .map_err(store_error));
    reload(&state).await;
    (StatusCode::CREATED, Json(team_json(&state, &team).await)).into_response()
}

async fn get_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    try_api!(admin_only(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let team = try_api!(store.team(&name).await.map_err(store_error));
    Json(team_json(&state, &team).await).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    budgets: Option<Vec<BudgetInput>>,
}

impl Change {
    fn into_update(self, config: &crate::config::Config) -> Result<Update, ApiError> {
        if let Some(p) = &self.policy {
            check_policy(p, config)?;
        }
        Ok(Update {
            budgets: self.budgets.as_deref().map(budgets_of).transpose()?,
            policy: self.policy,
        })
    }
}

async fn update_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    try_api!(admin_write(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let change: Change = try_api!(body(&bytes));
    let update = try_api!(change.into_update(&state.current().config));
    let team = try_api!(store
        .update_team(&name, &update, "admin-api")
        .await
        .map_err(store_error));
    reload(&state).await;
    Json(team_json(&state, &team).await).into_response()
}

#[derive(Deserialize)]
struct KeyFilter {
    team: Option<String>,
}

async fn list_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(f): Query<KeyFilter>,
) -> Response {
    try_api!(admin_only(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let keys = try_api!(store.keys(f.team.as_deref()).await.map_err(store_error));
    let mut data: Vec<Value> = Vec::with_capacity(keys.len());
    for k in &keys {
        data.push(key_json(&state, k).await);
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    budgets: Vec<BudgetInput>,
    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC).
    #[serde(default)]
    expires_at: Option<String>,
    /// Alternative to `expires_at`: this many seconds from now.
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    try_api!(admin_write(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let req: CreateKey = try_api!(body(&bytes));
    try_api!(check_policy(&req.policy, &state.current().config));
    let budgets = try_api!(budgets_of(&req.budgets));
    if state.governance.is_static_key_name(&req.name) {
        return ApiError::into_response(error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
            format!(
                "`{}` is the name of a key in the configuration file",
                req.name
            ),
        ));
    }
    let expires_at_ms = match (&req.expires_at, req.expires_in_seconds) {
        (Some(_), Some(_)) => {
            return ApiError::into_response(ApiError::invalid_request(
                Some("expires_at".into()),
                "Give either 'expires_at' or 'expires_in_seconds', not both.",
            ))
        }
        (Some(at), None) => Some(try_api!(time::parse_utc(at).ok_or_else(|| {
            ApiError::invalid_request(
                Some("expires_at".into()),
                format!("'expires_at' `{at}` is not a UTC time like 2026-12-31 or 2026-12-31T23:59:59Z."),
            )
        }))),
        (None, Some(secs)) => Some(time::now_ms().saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))),
        (None, None) => None,
    };
    let new = NewKey {
        name: req.name,
        team: req.team,
        policy: req.policy,
        budgets,
        expires_at_ms,
    };
    let (row, secret) = try_api!(store
        .create_key(&new, "admin-api")
        .await
        .map_err(store_error));
    reload(&state).await;
    let mut out = key_json(&state, &row).await;
    // Shown once: only its hash is kept.
    if let Some(fields) = out.as_object_mut() {
        fields.insert("key".into(), Value::String(secret));
    }
    (StatusCode::CREATED, Json(out)).into_response()
}

async fn get_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    try_api!(admin_only(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let key = try_api!(store.key(&id).await.map_err(store_error));
    Json(key_json(&state, &key).await).into_response()
}

async fn update_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    try_api!(admin_write(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let change: Change = try_api!(body(&bytes));
    let update = try_api!(change.into_update(&state.current().config));
    let key = try_api!(store
        .update_key(&id, &update, "admin-api")
        .await
        .map_err(store_error));
    reload(&state).await;
    Json(key_json(&state, &key).await).into_response()
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    try_api!(admin_write(&state, &headers));
    let store = try_api!(state.governance.store().ok_or_else(no_store));
    let key = try_api!(store
        .revoke_key(&id, "admin-api")
        .await
        .map_err(store_error));
    reload(&state).await;
    Json(key_json(&state, &key).await).into_response()
}

/// A change made here takes effect at once in this gateway (others poll the store).
async fn reload(state: &AppState) {
    if let Err(e) = state.governance.reload().await {
        tracing::warn!(error = %e, "reloading keys after an admin change failed");
    }
}

/// `POST /admin/reload`: re-reads the configuration file, as SIGHUP does. 200 with
/// what changed; a refused file answers 400 naming the field, and the running
/// configuration stays.
async fn reload_config(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    try_api!(admin_write(&state, &headers));
    match state.reload().await {
        Ok(report) => Json(reload_json(&report)).into_response(),
        Err(e) => ApiError::from(&e).into_response(),
    }
}

fn reload_json(r: &ReloadReport) -> Value {
    let changes =
        |c: &Changes| json!({"added": c.added, "removed": c.removed, "changed": c.changed});
    let warnings = |ws: &[ConfigWarning]| {
        ws.iter()
            .map(|w| json!({"field": w.path, "message": w.message}))
            .collect::<Vec<_>>()
    };
    json!({
        "object": "config.reload",
        "generation": r.generation,
        "file": r.file.display().to_string(),
        "unchanged": r.unchanged(),
        "models": changes(&r.models),
        "deployments": changes(&r.deployments),
        "providers": changes(&r.providers),
        "keys": changes(&r.keys),
        "settings": r.settings,
        "restart_needed": warnings(&r.restart_needed),
        "warnings": warnings(&r.warnings),
    })
}

#[derive(Deserialize)]
struct SpendParams {
    by: Option<String>,
    since: Option<String>,
    team: Option<String>,
}

/// The router of the separate `/metrics` listener (`telemetry.metrics_listen`).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_separate))
        .with_state(state)
}

/// `GET /metrics` on the main listener: 404 when metrics are off or served on their
/// own address.
async fn metrics_main(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.current().config.telemetry.metrics_listen.is_some() {
        return StatusCode::NOT_FOUND.into_response();
    }
    metrics(&state, &headers).await
}

async fn metrics_separate(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    metrics(&state, &headers).await
}

/// The Prometheus text: the request metrics, and the gauges of state read now.
async fn metrics(state: &AppState, headers: &HeaderMap) -> Response {
    let current = state.current();
    let telemetry = state.telemetry();
    if !telemetry.metrics_enabled() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if current.config.telemetry.metrics_auth == MetricsAuth::Admin {
        try_api!(admin_only(state, headers));
    }
    // Gauges of contracts read the shared counters, when replicas share them.
    current
        .dispatcher
        .contracts
        .refresh(&current.config.contract_list())
        .await;
    let now = std::time::Instant::now();
    let now_ms = time::now_ms();
    let snapshot = Snapshot {
        deployments: current
            .config
            .deployments
            .iter()
            .map(|d| {
                let h = current.dispatcher.health.of(d);
                DeploymentState {
                    deployment: d.name.clone(),
                    provider: d.provider.name.clone(),
                    breaker: h.breaker_state(now).label(),
                    exhausted_for_ms: h.exhausted_for_ms(now_ms),
                    calls_in_flight: h.calls_in_flight(),
                }
            })
            .collect(),
        budgets: budget_states(state, now_ms).await,
        limits: limit_states(state, &current).await,
        ledger: state.ledger.stats(),
        ledger_queue_depth: state.ledger.queue_depth(),
        contracts: current
            .config
            .contracts
            .values()
            .map(|c| {
                let burn = current.dispatcher.contracts.burn(c, now_ms);
                ContractState::of(c, burn, now_ms)
            })
            .collect(),
    };
    let Some(text) = telemetry.render(&snapshot) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [(http::header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        text,
    )
        .into_response()
}

/// Headroom of the callers' rate limits and the deployments' quotas.
async fn limit_states(
    state: &AppState,
    current: &crate::api::generation::Generation,
) -> Vec<LimitState> {
    let mut out: Vec<LimitState> = state
        .governance
        .limit_headroom()
        .await
        .into_iter()
        .map(|(scope, id, limit, remaining, capacity)| LimitState {
            scope: scope.as_str(),
            id: id.to_string(),
            limit,
            remaining,
            capacity,
        })
        .collect();
    for d in &current.config.deployments {
        let quota = current.dispatcher.quota_headroom(d).await;
        for (limit, headroom) in [("rpm", quota.requests), ("tpm", quota.tokens)] {
            if let Some(h) = headroom {
                out.push(LimitState {
                    scope: "deployment",
                    id: d.name.clone(),
                    limit,
                    remaining: h.remaining,
                    capacity: h.limit,
                });
            }
        }
    }
    out
}

/// Spend and limit of every budget in force (with shared state, one Redis read each).
async fn budget_states(state: &AppState, now_ms: i64) -> Vec<BudgetState> {
    let applied = state.governance.budgets_in_force();
    let mut out = Vec::with_capacity(applied.len());
    for a in applied {
        let s = state
            .governance
            .budgets()
            .status(a.scope, &a.id, a.budget.period, now_ms)
            .await;
        out.push(BudgetState {
            scope: a.scope.as_str(),
            id: a.id.to_string(),
            period: a.budget.period.as_str(),
            spent_nano_usd: s.spent_nano_usd,
            limit_nano_usd: a.budget.limit_nano_usd,
        });
    }
    out
}

/// `GET /admin/health`: what this replica knows of each deployment right now: breaker
/// state, provider-reported exhaustion (its own or shared by other replicas), calls in
/// flight and the latency estimate routing uses.
async fn health(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    try_api!(admin_only(&state, &headers));
    Json(json!({"object": "list", "deployments": health_json(&state).await})).into_response()
}

/// The health snapshot of every deployment (also the dashboard's Health page).
pub(crate) async fn health_json(state: &AppState) -> Vec<Value> {
    let now = std::time::Instant::now();
    let now_ms = time::now_ms();
    let current = state.current();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let room = |h: Option<crate::dispatch::Headroom>| {
        h.map(|h| json!({"limit": h.limit, "remaining": h.remaining, "resets_in_ms": ms(h.resets_in)}))
    };
    let mut data = Vec::with_capacity(current.config.deployments.len());
    for d in &current.config.deployments {
        let h = current.dispatcher.health.of(d);
        let exhausted = h.exhausted_for_ms(now_ms);
        let quota = current.dispatcher.quota_headroom(d).await;
        data.push(json!({
            "name": d.name,
            "provider": d.provider.name,
            "breaker": h.breaker_state(now).label(),
            "breaker_reopens_in_ms": h.reopens_in(now).map(ms),
            "exhausted_for_ms": exhausted,
            "exhausted_until": exhausted.map(|f| time::format_rfc3339(now_ms.saturating_add(f))),
            "calls_in_flight": h.calls_in_flight(),
            "latency_ms": h.latency_us().map(|us| us / 1000.0),
            "quota": {"requests": room(quota.requests), "tokens": room(quota.tokens)},
        }));
    }
    data
}

/// `GET /admin/spend` and `GET /v1/spend`: the admin sees everything (optionally one
/// team); a team's virtual key sees its team only.
async fn spend(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<SpendParams>,
) -> Response {
    let admin = state
        .governance
        .admin_access(&headers, false, time::now_ms())
        == AdminAccess::Granted;
    let team = if admin {
        q.team.clone()
    } else {
        let caller = match state.governance.authenticate(&headers) {
            Ok(p) => p,
            Err(e) => return ApiError::from(e).into_response(),
        };
        let Some(own) = caller.team.clone() else {
            return error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "spend_not_allowed",
                "Only the admin token or a key that belongs to a team can read spend.".into(),
            )
            .into_response();
        };
        if q.team.as_deref().is_some_and(|t| t != &*own) {
            return error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "spend_not_allowed",
                "A team's key can only read its own team's spend.".into(),
            )
            .into_response();
        }
        Some(own.to_string())
    };
    let by: SpendGroup = match q.by.as_deref().unwrap_or("model").parse() {
        Ok(g) => g,
        Err(m) => return ApiError::invalid_request(Some("by".into()), m).into_response(),
    };
    let since_ms = match q.since.as_deref().map(time::parse_utc) {
        Some(None) => {
            return ApiError::invalid_request(
                Some("since".into()),
                "'since' must be a UTC date like 2026-03-01.",
            )
            .into_response()
        }
        Some(Some(ms)) => Some(ms),
        None => None,
    };
    let Some(db) = state.governance.ledger() else {
        return no_store().into_response();
    };
    let query = SpendQuery {
        by,
        since_ms,
        team: team.clone(),
    };
    let rows = match spend_query(db, &query).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "spend report failed");
            return ApiError::internal("The spend report failed; see the gateway log.")
                .into_response();
        }
    };
    Json(spend_json(&query, &rows)).into_response()
}

pub fn spend_json(q: &SpendQuery, rows: &[SpendRow]) -> Value {
    let total: i64 = rows.iter().map(|r| r.cost_nano_usd).sum();
    json!({
        "object": "spend",
        "by": q.by.as_str(),
        "since": q.since_ms.map(time::format_rfc3339),
        "team": q.team,
        "total_cost_nano_usd": total,
        "total_cost_usd": format_usd(total),
        "data": rows.iter().map(|r| json!({
            "group": r.group,
            "requests": r.requests,
            "errors": r.errors,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cached_tokens": r.cached_tokens,
            "cost_nano_usd": r.cost_nano_usd,
            "cost_usd": format_usd(r.cost_nano_usd),
        })).collect::<Vec<_>>(),
    })
}
