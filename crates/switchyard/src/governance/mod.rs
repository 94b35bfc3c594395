//! Governance: who may call (keys and teams), what they may use (policies), how much
//! (rate limits and budgets), under which data rules (data policy, PII guardrail), and the
//! audit of it all in the ledger.
//!
//! Admission runs before dispatch, in this order: authenticate → policy (models, max
//! tokens) → PII guardrail → rate limits → budget reservation. Whatever it reserves is
//! held by the request's tracker, which settles it with the actual usage and cost exactly
//! once, when the request ends (or is dropped).
//!
//! The hot path never touches the database: keys and teams live in an in-memory
//! snapshot, reloaded when the store's change counter moves (polled every
//! `governance.refresh_ms`) or at once after a change made through this gateway's
//! admin API.

pub mod budget;
pub mod pii;
pub mod policy;
pub mod store;
pub mod time;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;
use crate::api::tracker::RequestTracker;
use crate::api::wire::{ChatRequest, EmbeddingsRequest, MessageContent};
use crate::config::{Config, Price};
use crate::ledger::Usage;
use crate::limits::{self, Claim, InProcessLimiter, Limiter, Reservation, TokenEstimate};
use budget::{Applied, BudgetBook, Hold, Scope};
pub use policy::{Budget, DataPolicy, EffectivePolicy, Period, PiiMode, Policy, RateLimits};
use store::{KeyRow, SpendScope, Store, StoreError, TeamRow};

/// Settings from the `[governance]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The store's SQLite file; `None` when neither `governance.store` nor a ledger is set
    /// (then only the config file's `[[keys]]` exist).
    pub store: Option<PathBuf>,
    /// Whether content may be logged at all; policies can only narrow it.
    pub log_content: bool,
    /// PII mode for keys whose policies set none.
    pub pii: PiiMode,
    /// Custom PII patterns: (label, regex).
    pub pii_patterns: Vec<(String, String)>,
    /// Output tokens assumed when a request sets no maximum (for limits and budgets).
    pub default_max_output_tokens: u64,
    /// How often the store's change counter is polled.
    pub refresh: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            store: None,
            log_content: false,
            pii: PiiMode::Off,
            pii_patterns: Vec::new(),
            default_max_output_tokens: limits::DEFAULT_OUTPUT_TOKENS,
            refresh: Duration::from_millis(250),
        }
    }
}

/// A caller, as authentication found it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's name: what the ledger records as `key_id`.
    pub name: Arc<str>,
    /// `vk_…` for virtual keys; `None` for keys from the config file.
    pub id: Option<String>,
    pub team: Option<Arc<str>>,
    pub policy: EffectivePolicy,
    /// The key's and its team's own rate limits, each counted in its own windows.
    limits: Vec<(Scope, Arc<str>, Policy)>,
    budgets: Vec<Applied>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
}

impl Principal {
    fn new(
        name: &str,
        id: Option<String>,
        key_policy: &Policy,
        key_budgets: &[Budget],
        team: Option<&TeamRow>,
        default_pii: PiiMode,
    ) -> Principal {
        let name: Arc<str> = Arc::from(name);
        let team_name: Option<Arc<str>> = team.map(|t| Arc::from(t.name.as_str()));
        let mut levels = Vec::new();
        let mut limits = Vec::new();
        let mut budgets = Vec::new();
        if let (Some(t), Some(tn)) = (team, &team_name) {
            levels.push(&t.policy);
            limits.push((Scope::Team, tn.clone(), t.policy.clone()));
            budgets.extend(t.budgets.iter().map(|b| Applied {
                scope: Scope::Team,
                name: tn.clone(),
                budget: b.clone(),
            }));
        }
        levels.push(key_policy);
        limits.push((Scope::Key, name.clone(), key_policy.clone()));
        budgets.extend(key_budgets.iter().map(|b| Applied {
            scope: Scope::Key,
            name: name.clone(),
            budget: b.clone(),
        }));
        Principal {
            policy: EffectivePolicy::combine(&levels, default_pii),
            name,
            id,
            team: team_name,
            limits,
            budgets,
            expires_at_ms: None,
            revoked: false,
        }
    }
}

/// Keys and teams as of one version of the store.
#[derive(Debug, Default)]
struct Snapshot {
    keys: HashMap<[u8; 32], Arc<Principal>>,
    teams: HashMap<String, TeamRow>,
}

/// The governance runtime shared by every request.
pub struct Governance {
    settings: Settings,
    detector: pii::PiiDetector,
    limiter: Arc<dyn Limiter>,
    budgets: Arc<BudgetBook>,
    store: Option<Store>,
    /// Keys from the config file, always present.
    static_keys: Vec<([u8; 32], Arc<Principal>)>,
    snapshot: RwLock<Arc<Snapshot>>,
    loaded_version: AtomicI64,
    /// SHA-256 of the admin token.
    admin_token: Option<[u8; 32]>,
    /// Serialises reloads (the poller and the admin API).
    reload_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("settings", &self.settings)
            .field("store", &self.store.as_ref().map(Store::path))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Governance {
    /// Governance from the config file alone: its `[[keys]]`, no store.
    pub fn from_config(config: &Config) -> Governance {
        Governance::build(config, None, Arc::new(InProcessLimiter::new()))
    }

    fn build(config: &Config, store: Option<Store>, limiter: Arc<dyn Limiter>) -> Governance {
        let settings = config.governance.clone();
        // Validation compiled the custom patterns already; this cannot fall back.
        let detector = pii::PiiDetector::new(&settings.pii_patterns)
            .unwrap_or_else(|_| pii::PiiDetector::builtin());
        let static_keys = config
            .keys
            .iter()
            .map(|k| {
                let p = Principal::new(&k.name, None, &k.policy, &k.budgets, None, settings.pii);
                (sha256(k.key.expose()), Arc::new(p))
            })
            .collect::<Vec<_>>();
        let snapshot = Snapshot {
            keys: static_keys.iter().cloned().collect(),
            teams: HashMap::new(),
        };
        Governance {
            detector,
            limiter,
            budgets: Arc::new(BudgetBook::new()),
            store,
            static_keys,
            snapshot: RwLock::new(Arc::new(snapshot)),
            loaded_version: AtomicI64::new(-1),
            admin_token: config.admin.token.as_ref().map(|t| sha256(t.expose())),
            reload_lock: tokio::sync::Mutex::new(()),
            settings,
        }
    }

    /// Opens the store (when there is one), loads keys and teams, seeds the budgets from
    /// the ledger and starts polling for changes. The poller stops when the returned
    /// `Arc` is dropped. `limiter` is the gateway's one limiter, which routing also
    /// uses for deployment capacity.
    pub async fn open(
        config: &Config,
        limiter: Arc<dyn Limiter>,
    ) -> Result<Arc<Governance>, GovernanceError> {
        let store = match &config.governance.store {
            Some(path) => Some(Store::open(path).await?),
            None => None,
        };
        let has_store = store.is_some();
        let gov = Arc::new(Governance::build(config, store, limiter));
        if has_store {
            gov.reload().await?;
            let weak = Arc::downgrade(&gov);
            tokio::spawn(poll(weak, config.governance.refresh));
        } else {
            gov.seed_budgets(&gov.snapshot()).await;
        }
        Ok(gov)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The limiter, shared with routing for deployment capacity.
    pub fn limiter(&self) -> Arc<dyn Limiter> {
        self.limiter.clone()
    }

    pub fn budgets(&self) -> &BudgetBook {
        &self.budgets
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub fn detector(&self) -> &pii::PiiDetector {
        &self.detector
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether a name is taken by a key of the config file.
    pub fn is_static_key_name(&self, name: &str) -> bool {
        self.static_keys.iter().any(|(_, p)| &*p.name == name)
    }

    /// Reloads keys and teams from the store now.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _guard = self.reload_lock.lock().await;
        let version = store.version().await?;
        let teams: HashMap<String, TeamRow> = store
            .teams()
            .await?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut keys: HashMap<[u8; 32], Arc<Principal>> =
            self.static_keys.iter().cloned().collect();
        for row in store.keys(None).await? {
            keys.insert(row.key_hash, Arc::new(self.principal_of(&row, &teams)));
        }
        let snapshot = Arc::new(Snapshot { keys, teams });
        self.seed_budgets(&snapshot).await;
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
        self.loaded_version.store(version, Ordering::Release);
        Ok(())
    }

    fn principal_of(&self, row: &KeyRow, teams: &HashMap<String, TeamRow>) -> Principal {
        let team = row.team.as_ref().and_then(|t| teams.get(t));
        let mut p = Principal::new(
            &row.name,
            Some(row.id.clone()),
            &row.policy,
            &row.budgets,
            team,
            self.settings.pii,
        );
        p.expires_at_ms = row.expires_at_ms;
        p.revoked = row.revoked_at_ms.is_some();
        p
    }

    /// Gives every budget of the current period that has no counter yet its spend so far,
    /// from the ledger.
    async fn seed_budgets(&self, snapshot: &Snapshot) {
        let now = time::now_ms();
        let mut seen = std::collections::HashSet::new();
        for p in snapshot.keys.values().filter(|p| !p.revoked) {
            for a in &p.budgets {
                let period = a.budget.period;
                if !seen.insert((a.scope, a.name.clone(), period))
                    || self.budgets.is_seeded(a.scope, &a.name, period, now)
                {
                    continue;
                }
                let (start, _) = period.bounds(now);
                let spent = match &self.store {
                    Some(store) => {
                        let scope = match a.scope {
                            Scope::Key => SpendScope::Key,
                            Scope::Team => SpendScope::Team,
                        };
                        match store.spent_since(scope, &a.name, start).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(error = %e, name = %a.name, "cannot read spend for a budget; starting from 0");
                                0
                            }
                        }
                    }
                    None => 0,
                };
                self.budgets.seed(a.scope, &a.name, period, start, spent);
            }
        }
    }

    /// The caller of `Authorization: Bearer …`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
        let token = bearer(headers).ok_or_else(ApiError::missing_key)?;
        let snapshot = self.snapshot();
        let p = snapshot
            .keys
            .get(&sha256(token))
            .cloned()
            .ok_or_else(ApiError::invalid_key)?;
        if p.revoked {
            return Err(ApiError {
                message: "This API key has been revoked.".into(),
                ..ApiError::invalid_key()
            });
        }
        if p.expires_at_ms.is_some_and(|at| at <= time::now_ms()) {
            return Err(ApiError {
                message: "This API key has expired.".into(),
                ..ApiError::invalid_key()
            });
        }
        Ok(p)
    }

    /// Whether the request carries the admin token.
    pub fn is_admin(&self, headers: &HeaderMap) -> bool {
        let (Some(want), Some(token)) = (&self.admin_token, bearer(headers)) else {
            return false;
        };
        // Comparing digests: equal-length, and a timing difference reveals nothing
        // about the token itself.
        let got = sha256(token);
        got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub fn admin_enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    /// The team of a team name, from the snapshot.
    pub fn team_exists(&self, name: &str) -> bool {
        self.snapshot().teams.contains_key(name)
    }

    /// Admits a chat request: policy, PII guardrail (which may rewrite the messages), rate
    /// limits and budget. `prices` are those of the deployments that may serve it.
    pub async fn admit_chat(
        &self,
        p: &Principal,
        req: &mut ChatRequest,
        prices: &[Price],
        tracker: &mut RequestTracker,
        out_headers: &mut HeaderMap,
    ) -> Result<Admission, ApiError> {
        let model = req.model.clone();
        self.check_model(p, &model, tracker)?;
        if let Some(max) = p.policy.max_tokens {
            let asked = req.max_completion_tokens.or(req.max_tokens);
            match asked {
                Some(n) if n > max => {
                    let param = if req.max_completion_tokens.is_some() {
                        "max_completion_tokens"
                    } else {
                        "max_tokens"
                    };
                    tracker.set_policy_decision("denied:max_tokens");
                    return Err(ApiError::invalid_request(
                        Some(param.into()),
                        format!("'{param}' is {n}, above this key's policy limit of {max} tokens per request."),
                    ));
                }
                Some(_) => {}
                // Without a limit the output has no bound; the policy's maximum gives it one.
                // Each provider adapter moves it to the field its upstream takes
                // (reasoning models: `max_completion_tokens`).
                None => req.max_tokens = Some(max),
            }
        }
        self.guard_chat(p, req, tracker)?;
        let estimate = limits::estimate_chat(req, self.settings.default_max_output_tokens);
        let admission = self
            .reserve(p, &model, estimate, prices, tracker, out_headers)
            .await?;
        if self.settings.log_content && p.policy.data.log_content {
            tracker.log_content(serde_json::to_string(&req.messages).unwrap_or_default());
        }
        Ok(admission)
    }

    /// Admits an embeddings request (no output tokens; PII is checked on the input).
    pub async fn admit_embeddings(
        &self,
        p: &Principal,
        req: &mut EmbeddingsRequest,
        prices: &[Price],
        tracker: &mut RequestTracker,
        out_headers: &mut HeaderMap,
    ) -> Result<Admission, ApiError> {
        let model = req.model.clone();
        self.check_model(p, &model, tracker)?;
        self.guard_texts(p, tracker, |f| {
            visit_json_strings(&mut req.input, f);
        })?;
        let estimate = TokenEstimate {
            prompt: limits::estimate_embedding_tokens(&req.input),
            output: 0,
        };
        let admission = self
            .reserve(p, &model, estimate, prices, tracker, out_headers)
            .await?;
        if self.settings.log_content && p.policy.data.log_content {
            tracker.log_content(req.input.to_string());
        }
        Ok(admission)
    }

    fn check_model(
        &self,
        p: &Principal,
        model: &str,
        tracker: &mut RequestTracker,
    ) -> Result<(), ApiError> {
        if p.policy.allows_model(model) {
            return Ok(());
        }
        tracker.set_policy_decision("denied:model_not_allowed");
        Err(ApiError {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: "model_not_allowed",
            param: Some("model".into()),
            message: format!("This API key is not allowed to use the model `{model}`."),
            retry_after: None,
        })
    }

    fn guard_chat(
        &self,
        p: &Principal,
        req: &mut ChatRequest,
        tracker: &mut RequestTracker,
    ) -> Result<(), ApiError> {
        self.guard_texts(p, tracker, |f| {
            for m in &mut req.messages {
                match &mut m.content {
                    Some(MessageContent::Text(s)) => f(s),
                    Some(MessageContent::Parts(parts)) => {
                        for part in parts {
                            if let Some(t) = &mut part.text {
                                f(t);
                            }
                        }
                    }
                    None => {}
                }
            }
        })
    }

    /// Runs the PII guardrail over the texts `visit` hands out.
    fn guard_texts(
        &self,
        p: &Principal,
        tracker: &mut RequestTracker,
        visit: impl FnOnce(&mut dyn FnMut(&mut String)),
    ) -> Result<(), ApiError> {
        let mode = p.policy.pii;
        if mode == PiiMode::Off {
            return Ok(());
        }
        let mut r = pii::Redactor::new(&self.detector);
        visit(&mut |text: &mut String| match mode {
            PiiMode::Redact => {
                if let Some(clean) = r.redact(text) {
                    *text = clean;
                }
            }
            _ => r.scan(text),
        });
        let Some(summary) = r.summary() else {
            return Ok(());
        };
        tracker.set_redactions(&format!("{}:{summary}", mode.as_str()));
        tracing::info!(key = %p.name, mode = mode.as_str(), found = %summary, "PII guardrail");
        if mode == PiiMode::Block {
            tracker.set_policy_decision("denied:pii_blocked");
            let kinds: Vec<&str> = r.counts.iter().map(|(l, _)| l.as_str()).collect();
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                kind: "invalid_request_error",
                code: "pii_detected",
                param: Some("messages".into()),
                message: format!(
                    "The request contains personal data ({}); this key's policy does not allow sending it.",
                    kinds.join(", ")
                ),
                retry_after: None,
            });
        }
        Ok(())
    }

    /// Rate limits, then budget. On success the reservations move into the tracker.
    async fn reserve(
        &self,
        p: &Principal,
        model: &str,
        estimate: TokenEstimate,
        prices: &[Price],
        tracker: &mut RequestTracker,
        out_headers: &mut HeaderMap,
    ) -> Result<Admission, ApiError> {
        let (claims, meta) = claims_for(p, model, estimate.total());
        let reservation = match self.limiter.try_reserve(&claims).await {
            Ok(r) => r,
            Err(refusal) => {
                let m = claims
                    .iter()
                    .position(|c| c.key == refusal.key)
                    .and_then(|i| meta.get(i));
                let (unit, what) =
                    m.map_or((Unit::Requests, "rate"), |m| (m.unit, m.label.as_str()));
                tracker.set_policy_decision(&format!("denied:rate_limited:{what}"));
                set_limit_headers(
                    out_headers,
                    unit,
                    refusal.limit,
                    refusal.remaining,
                    refusal.retry_after,
                );
                let secs = refusal.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                return Err(ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    kind: "rate_limit_error",
                    code: "rate_limit_exceeded",
                    param: None,
                    message: format!(
                        "Rate limit reached for {} per minute ({what}): limit {}, remaining {}. Please try again in {}.",
                        unit.as_str(),
                        refusal.limit,
                        refusal.remaining,
                        format_reset(refusal.retry_after)
                    ),
                    retry_after: Some(HeaderValue::from(secs)),
                });
            }
        };
        let bound = upper_bound_cost(estimate, prices);
        let hold = match self.budgets.reserve(&p.budgets, bound, time::now_ms()) {
            Ok(h) => h,
            Err(exceeded) => {
                // Refused requests do not count against the rate limits.
                let zeros = vec![0; claims.len()];
                self.limiter.settle(reservation, &zeros).await;
                tracker.set_policy_decision(&format!(
                    "denied:budget:{}:{}:{}",
                    exceeded.scope.as_str(),
                    exceeded.name,
                    exceeded.period.as_str()
                ));
                let retry_after = exceeded.resets_at_ms.map(|at| {
                    HeaderValue::from(
                        u64::try_from((at - time::now_ms()).max(0) / 1000 + 1).unwrap_or(1),
                    )
                });
                return Err(ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    kind: "insufficient_quota",
                    code: "budget_exceeded",
                    param: None,
                    message: exceeded.message(),
                    retry_after,
                });
            }
        };
        self.success_headers(&claims, &meta, out_headers).await;
        tracker.set_policy_decision("allowed");
        tracker.hold(Ticket {
            limiter: self.limiter.clone(),
            reservation,
            tokens: meta.iter().map(|m| m.unit == Unit::Tokens).collect(),
            budgets: self.budgets.clone(),
            hold,
        });
        Ok(Admission {
            data_policy: p.policy.data.clone(),
            estimate,
            reserved_nano_usd: bound,
        })
    }

    /// `x-ratelimit-*` for the tightest request window and the tightest token window.
    async fn success_headers(&self, claims: &[Claim], meta: &[ClaimMeta], out: &mut HeaderMap) {
        for unit in [Unit::Requests, Unit::Tokens] {
            let mut best: Option<(u64, u64, Duration)> = None;
            for (c, m) in claims.iter().zip(meta) {
                if m.unit != unit {
                    continue;
                }
                let (remaining, reset) = self.limiter.remaining(&c.key, c.limit, c.period).await;
                if best.is_none_or(|(_, r, _)| remaining < r) {
                    best = Some((c.limit, remaining, reset));
                }
            }
            if let Some((limit, remaining, reset)) = best {
                set_limit_headers(out, unit, limit, remaining, reset);
            }
        }
    }
}

/// Polls the store's change counter until the governance is dropped.
async fn poll(gov: Weak<Governance>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gov) = gov.upgrade() else { return };
        let Some(store) = &gov.store else { return };
        match store.version().await {
            Ok(v) if v != gov.loaded_version.load(Ordering::Acquire) => {
                if let Err(e) = gov.reload().await {
                    tracing::warn!(error = %e, "reloading keys and teams failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "polling the governance store failed"),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// What admission found: the data policy routing must honour, and what was reserved.
#[derive(Debug, Clone)]
pub struct Admission {
    pub data_policy: DataPolicy,
    pub estimate: TokenEstimate,
    /// The upper bound of the cost reserved in the budgets.
    pub reserved_nano_usd: i64,
}

/// Reservations held by a request until it settles; see [`RequestTracker::hold`].
pub struct Ticket {
    limiter: Arc<dyn Limiter>,
    reservation: Reservation,
    /// Per claim: whether it counts tokens (else requests).
    tokens: Vec<bool>,
    budgets: Arc<BudgetBook>,
    hold: Hold,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("reservation", &self.reservation)
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// Replaces the reservations by what the request really used and cost.
    pub fn settle(self, usage: &Usage, cost_nano_usd: i64) {
        self.budgets.settle(self.hold, cost_nano_usd);
        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        let actual: Vec<u64> = self
            .tokens
            .iter()
            .map(|&t| if t { tokens } else { 1 })
            .collect();
        let limiter = self.limiter;
        let reservation = self.reservation;
        let mut fut = Box::pin(async move { limiter.settle(reservation, &actual).await });
        // The in-process limiter is done at once; a remote one finishes in the background.
        if (&mut fut).now_or_never().is_none() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(fut);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Requests,
    Tokens,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
        }
    }
}

struct ClaimMeta {
    unit: Unit,
    /// `key app rpm`, `team research model gpt-4o tpm`…
    label: String,
}

const MINUTE: Duration = Duration::from_secs(60);

fn claims_for(p: &Principal, model: &str, tokens: u64) -> (Vec<Claim>, Vec<ClaimMeta>) {
    let mut claims = Vec::new();
    let mut meta = Vec::new();
    let mut add = |scope: Scope, name: &str, model: Option<&str>, limits: RateLimits| {
        let base = match model {
            Some(m) => format!("rl:{}:{name}:model:{m}", scope.as_str()),
            None => format!("rl:{}:{name}", scope.as_str()),
        };
        let label = match model {
            Some(m) => format!("{} {name} model {m}", scope.as_str()),
            None => format!("{} {name}", scope.as_str()),
        };
        if let Some(rpm) = limits.rpm {
            claims.push(Claim {
                key: Arc::from(format!("{base}:rpm")),
                limit: rpm,
                period: MINUTE,
                amount: 1,
            });
            meta.push(ClaimMeta {
                unit: Unit::Requests,
                label: format!("{label} rpm"),
            });
        }
        if let Some(tpm) = limits.tpm {
            claims.push(Claim {
                key: Arc::from(format!("{base}:tpm")),
                limit: tpm,
                period: MINUTE,
                amount: tokens,
            });
            meta.push(ClaimMeta {
                unit: Unit::Tokens,
                label: format!("{label} tpm"),
            });
        }
    };
    // Narrowest first, so a refusal names the key's own limit when both are full.
    for (scope, name, policy) in p.limits.iter().rev() {
        add(
            *scope,
            name,
            None,
            RateLimits {
                rpm: policy.rpm,
                tpm: policy.tpm,
            },
        );
        if let Some(l) = policy.model_limits.get(model) {
            add(*scope, name, Some(model), *l);
        }
    }
    (claims, meta)
}

/// The most a request can cost: its estimate at the dearest of the prices.
pub fn upper_bound_cost(estimate: TokenEstimate, prices: &[Price]) -> i64 {
    let usage = Usage {
        prompt_tokens: estimate.prompt,
        completion_tokens: estimate.output,
        ..Usage::default()
    };
    prices.iter().map(|p| p.cost(&usage)).max().unwrap_or(0)
}

fn set_limit_headers(h: &mut HeaderMap, unit: Unit, limit: u64, remaining: u64, reset: Duration) {
    let (l, r, t) = match unit {
        Unit::Requests => (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        Unit::Tokens => (
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
    };
    h.insert(l, HeaderValue::from(limit));
    h.insert(r, HeaderValue::from(remaining));
    if let Ok(v) = HeaderValue::from_str(&format_reset(reset)) {
        h.insert(t, v);
    }
}

/// OpenAI's duration format: `20ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let secs = d.as_secs();
    format!("{}m{}s", secs / 60, secs % 60)
}

fn visit_json_strings(v: &mut serde_json::Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(items) => {
            for i in items {
                visit_json_strings(i, f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn upper_bound_uses_the_dearest_price() {
        let cheap = Price {
            input_per_mtok: 150_000_000,
            output_per_mtok: 600_000_000,
            ..Price::default()
        };
        let dear = Price {
            input_per_mtok: 300_000_000,
            output_per_mtok: 1_200_000_000,
            ..Price::default()
        };
        let e = TokenEstimate {
            prompt: 1_000,
            output: 500,
        };
        // 1000 × 300 + 500 × 1200 nano-USD
        assert_eq!(upper_bound_cost(e, &[cheap, dear]), 900_000);
        assert_eq!(upper_bound_cost(e, &[]), 0);
    }
}
