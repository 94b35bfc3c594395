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
//! snapshot, reloaded when the store changes: on SQLite when its change counter moves
//! (polled every `governance.refresh_ms`), on PostgreSQL when a change is announced on
//! [`store::CHANGES_CHANNEL`] (LISTEN/NOTIFY), and at once after a change made through
//! this gateway's admin API.

pub mod budget;
pub mod check;
pub mod output;
pub mod pii;
pub mod policy;
mod refusal;
pub mod session;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use crate::config::policy::{Budget, Period, PiiMode, Policy, RateLimits};
use crate::config::{Config, GovernanceSettings};
use crate::ledger::tracker::{RequestTracker, Settle};
use crate::limits::{self, Claim, InProcessLimiter, Limiter, Reservation, TokenEstimate};
use crate::storage::redis::Redis;
use crate::storage::{Database, Storage, StorageError};
use crate::types::chat::{ChatRequest, EmbeddingsRequest, MessageContent};
use crate::types::time;
use crate::types::Price;
use crate::types::Usage;
use budget::{Applied, BudgetBook, Budgets, Denied, Hold, Scope};
pub use policy::{DataPolicy, EffectivePolicy};
pub use refusal::Refusal;
use store::{KeyRow, Store, StoreError, TeamRow};

/// The stable id of a key of the config file: `cfg:` and its name. It cannot be a
/// virtual key's id (`vk_…`, no colon), so the two kinds never share counters or
/// spend whatever their names. The ledger's migration 0004 builds the same ids.
pub fn config_key_id(name: &str) -> String {
    format!("cfg:{name}")
}

/// A caller, as authentication found it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's stable id (`vk_…` for virtual keys, [`config_key_id`] for keys of
    /// the config file): what rate limits, budgets and the ledger's spend are keyed by.
    pub id: Arc<str>,
    /// The key's name, for display: the ledger's `key_name`, reports, messages.
    pub name: Arc<str>,
    pub team: Option<Arc<str>>,
    pub policy: EffectivePolicy,
    /// The key's and its team's own rate limits, each counted in its own windows.
    limits: Vec<Limited>,
    budgets: Vec<Applied>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
}

/// One level's rate limits: whose (scope and id), its policy, and its windows, whose
/// keys and labels are built once here rather than for every request.
#[derive(Debug, Clone)]
struct Limited {
    scope: Scope,
    id: Arc<str>,
    /// The level's own windows.
    windows: Windows,
    /// Windows of the level's per-model limits, by model.
    by_model: HashMap<String, Windows>,
}

impl Limited {
    fn new(scope: Scope, id: Arc<str>, name: &str, policy: &Policy) -> Limited {
        let own = RateLimits {
            rpm: policy.rpm,
            tpm: policy.tpm,
        };
        Limited {
            windows: Windows::of(scope, &id, name, None, own),
            by_model: policy
                .model_limits
                .iter()
                .map(|(m, l)| (m.clone(), Windows::of(scope, &id, name, Some(m), *l)))
                .collect(),
            scope,
            id,
        }
    }
}

/// A level's request and token windows (either may be unlimited).
#[derive(Debug, Clone, Default)]
struct Windows {
    rpm: Option<WindowSpec>,
    tpm: Option<WindowSpec>,
}

#[derive(Debug, Clone)]
struct WindowSpec {
    /// The limiter's key: by id, stable across renames.
    key: Arc<str>,
    /// What refusals show: by name, e.g. `key app rpm`, `team research model gpt-4o tpm`.
    label: Arc<str>,
    limit: u64,
}

impl Windows {
    fn of(scope: Scope, id: &str, name: &str, model: Option<&str>, limits: RateLimits) -> Windows {
        let spec = |unit: &str, limit: Option<u64>| {
            limit.map(|limit| WindowSpec {
                key: Arc::from(window_key(scope, id, model, unit)),
                label: Arc::from(match model {
                    Some(m) => format!("{} {name} model {m} {unit}", scope.as_str()),
                    None => format!("{} {name} {unit}", scope.as_str()),
                }),
                limit,
            })
        };
        Windows {
            rpm: spec("rpm", limits.rpm),
            tpm: spec("tpm", limits.tpm),
        }
    }
}

/// The limiter key of a level's `unit` (`rpm`, `tpm`) window, for one model or all.
fn window_key(scope: Scope, id: &str, model: Option<&str>, unit: &str) -> String {
    match model {
        Some(m) => format!("rl:{}:{id}:model:{m}:{unit}", scope.as_str()),
        None => format!("rl:{}:{id}:{unit}", scope.as_str()),
    }
}

impl Principal {
    fn new(
        name: &str,
        id: &str,
        key_policy: &Policy,
        key_budgets: &[Budget],
        team: Option<&TeamRow>,
        default_pii: PiiMode,
    ) -> Principal {
        let name: Arc<str> = Arc::from(name);
        let id: Arc<str> = Arc::from(id);
        let team_name: Option<Arc<str>> = team.map(|t| Arc::from(t.name.as_str()));
        let mut levels = Vec::new();
        let mut limits = Vec::new();
        let mut budgets = Vec::new();
        // A team's name is its identity: team names are unique in the key store.
        if let (Some(t), Some(tn)) = (team, &team_name) {
            levels.push(&t.policy);
            limits.push(Limited::new(Scope::Team, tn.clone(), tn, &t.policy));
            budgets.extend(t.budgets.iter().map(|b| Applied {
                scope: Scope::Team,
                id: tn.clone(),
                name: tn.clone(),
                budget: b.clone(),
            }));
        }
        levels.push(key_policy);
        limits.push(Limited::new(Scope::Key, id.clone(), &name, key_policy));
        budgets.extend(key_budgets.iter().map(|b| Applied {
            scope: Scope::Key,
            id: id.clone(),
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

/// What governance takes from the configuration file: replaced as a whole when the
/// configuration is reloaded ([`Governance::prepare_reconfigure`]).
pub struct Rules {
    pub settings: GovernanceSettings,
    detector: Arc<pii::PiiDetector>,
    /// Keys from the config file, always present.
    static_keys: Vec<([u8; 32], Arc<Principal>)>,
    /// SHA-256 of the admin token.
    admin_token: Option<[u8; 32]>,
}

impl Rules {
    fn of(config: &Config) -> Rules {
        let settings = config.governance.clone();
        // Validation compiled the custom patterns already; this cannot fall back.
        let detector = Arc::new(
            pii::PiiDetector::new(&settings.pii_patterns)
                .unwrap_or_else(|_| pii::PiiDetector::builtin()),
        );
        let static_keys = config
            .keys
            .iter()
            .map(|k| {
                let p = Principal::new(
                    &k.name,
                    &config_key_id(&k.name),
                    &k.policy,
                    &k.budgets,
                    None,
                    settings.pii,
                );
                (sha256(k.key.expose()), Arc::new(p))
            })
            .collect::<Vec<_>>();
        Rules {
            detector,
            static_keys,
            admin_token: config.admin.token.as_ref().map(|t| sha256(t.expose())),
            settings,
        }
    }
}

/// The governance runtime shared by every request. It lives as long as the gateway:
/// a reloaded configuration replaces its [`Rules`] and rebuilds the snapshot, while
/// the store, the limiter, the budget counters and the poller stay.
pub struct Governance {
    rules: ArcSwap<Rules>,
    limiter: Arc<dyn Limiter>,
    budgets: Arc<dyn Budgets>,
    /// Shared run-time state (`[state]`), whose `closed` mode refuses requests while
    /// Redis is unreachable.
    shared: Option<Arc<Redis>>,
    store: Option<Store>,
    /// The ledger's database, where budgets read the spend so far; with SQLite it
    /// need not be the store's file (`governance.store`). `None` when no ledger is kept.
    ledger: Option<Database>,
    snapshot: RwLock<Arc<Snapshot>>,
    loaded_version: AtomicI64,
    /// Serialises reloads (the poller and the admin API).
    reload_lock: tokio::sync::Mutex<()>,
    /// Stops the change listener when the governance is dropped.
    stop: CancellationToken,
    /// The dashboard's logins (`session.rs`).
    sessions: session::AdminSessions,
}

impl Drop for Governance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("settings", &self.rules.load().settings)
            .field("store", &self.store.as_ref().map(Store::database))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A key of the config file has the name of a virtual key in the store. Names are
    /// what people read in reports and the admin API; two keys sharing one would be
    /// told apart by nobody.
    #[error(
        "{field}: `{name}` is also the name of the virtual key {id} in the key store {store}; \
         rename the key in the config file (names are never reused, revoked keys included)"
    )]
    NameCollision {
        /// The config file's field, `keys[N].name`.
        field: String,
        name: String,
        /// The virtual key's id.
        id: String,
        /// The store's file, or its database without credentials.
        store: String,
    },
    /// A stored policy names a channel the configuration does not define: its
    /// requests would all be refused.
    #[error(
        "channels: the policy of {who} in the key store names the channel `{channel}` \
         ({field}), which this configuration does not define; keep [channels.{channel}] \
         or change that policy first"
    )]
    ChannelInUse {
        /// `team NAME`, or `key NAME (ID)`.
        who: String,
        /// The policy's field, `channel` or `channels[N]`.
        field: String,
        channel: String,
    },
}

/// Refuses a configuration that does not fit the key store: `[[keys]]` that reuse the
/// name of a virtual key, or stored policies (of teams and of keys not revoked) that
/// name a channel the configuration lacks. Used at start, by reloads and by
/// `switchyard config check`.
pub async fn check_against_store(config: &Config, store: &Store) -> Result<(), GovernanceError> {
    let stored = store.keys(None).await?;
    let known = |c: &str| config.channel(c).is_some();
    for t in store.teams().await? {
        if let Some((field, channel)) = t.policy.unknown_channel(known) {
            return Err(GovernanceError::ChannelInUse {
                who: format!("team {}", t.name),
                field,
                channel,
            });
        }
    }
    for k in stored.iter().filter(|k| k.revoked_at_ms.is_none()) {
        if let Some((field, channel)) = k.policy.unknown_channel(known) {
            return Err(GovernanceError::ChannelInUse {
                who: format!("key {} ({})", k.name, k.id),
                field,
                channel,
            });
        }
    }
    for (i, k) in config.keys.iter().enumerate() {
        if let Some(row) = stored.iter().find(|r| r.name == k.name) {
            return Err(GovernanceError::NameCollision {
                field: format!("keys[{i}].name"),
                name: k.name.clone(),
                id: row.id.clone(),
                store: store.database().to_string(),
            });
        }
    }
    Ok(())
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Governance {
    /// Governance from the config file alone: its `[[keys]]`, no store.
    pub fn from_config(config: &Config) -> Governance {
        let ledger = config.ledger.path.clone().map(Database::Sqlite);
        Governance::build(
            config,
            None,
            ledger,
            Arc::new(InProcessLimiter::new()),
            None,
        )
    }

    fn build(
        config: &Config,
        store: Option<Store>,
        ledger: Option<Database>,
        limiter: Arc<dyn Limiter>,
        shared: Option<Arc<Redis>>,
    ) -> Governance {
        let rules = Rules::of(config);
        let snapshot = Snapshot {
            keys: rules.static_keys.iter().cloned().collect(),
            teams: HashMap::new(),
        };
        Governance {
            rules: ArcSwap::from_pointee(rules),
            limiter,
            budgets: match &shared {
                Some(redis) => Arc::new(budget::redis::RedisBudgets::new(
                    redis.clone(),
                    ledger.clone(),
                )),
                None => Arc::new(BudgetBook::new()),
            },
            shared,
            store,
            ledger,
            snapshot: RwLock::new(Arc::new(snapshot)),
            loaded_version: AtomicI64::new(-1),
            reload_lock: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
            sessions: session::AdminSessions::new(),
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
        Governance::open_shared(config, limiter, None).await
    }

    /// Like [`Governance::open`], with budgets in Redis when `shared` is given (the
    /// limiter is then the Redis one too: `server/mod.rs` builds both from `[state]`).
    pub async fn open_shared(
        config: &Config,
        limiter: Arc<dyn Limiter>,
        shared: Option<Arc<Redis>>,
    ) -> Result<Arc<Governance>, GovernanceError> {
        let storage = Storage::open(config).await?;
        Governance::open_on(config, &storage, limiter, shared).await
    }

    /// [`Governance::open_shared`] on databases already open (the gateway's, which its
    /// ledger shares). With PostgreSQL, changes are picked up from notifications;
    /// with SQLite, by polling the change counter.
    pub async fn open_on(
        config: &Config,
        storage: &Storage,
        limiter: Arc<dyn Limiter>,
        shared: Option<Arc<Redis>>,
    ) -> Result<Arc<Governance>, GovernanceError> {
        let store = match &storage.store {
            Some(db) => {
                let store = Store::open_on(db).await?;
                check_against_store(config, &store).await?;
                Some(store)
            }
            None => None,
        };
        let has_store = store.is_some();
        let gov = Arc::new(Governance::build(
            config,
            store,
            storage.ledger.clone(),
            limiter,
            shared,
        ));
        if has_store {
            // Listening starts before the first load, so that no change made
            // between the two is missed.
            let listener = match &storage.store {
                Some(Database::Postgres(pg)) => {
                    Some(pg.listen(store::CHANGES_CHANNEL).await.map_err(|source| {
                        StoreError::Sql {
                            database: pg.target().to_owned(),
                            source,
                        }
                    })?)
                }
                _ => None,
            };
            gov.reload().await?;
            let weak = Arc::downgrade(&gov);
            match (listener, &storage.store) {
                (Some(listener), Some(Database::Postgres(pg))) => {
                    tokio::spawn(listen(weak, gov.stop.clone(), pg.clone(), listener));
                }
                _ => {
                    tokio::spawn(poll(weak, config.governance.refresh));
                }
            }
        } else {
            gov.seed_budgets(&gov.snapshot()).await;
        }
        Ok(gov)
    }

    /// The settings of the configuration in force.
    pub fn settings(&self) -> GovernanceSettings {
        self.rules.load().settings.clone()
    }

    /// The limiter, shared with routing for deployment capacity.
    pub fn limiter(&self) -> Arc<dyn Limiter> {
        self.limiter.clone()
    }

    pub fn budgets(&self) -> &dyn Budgets {
        &*self.budgets
    }

    /// The shared state's handle, when `[state]` is configured.
    pub fn shared_state(&self) -> Option<&Arc<Redis>> {
        self.shared.as_ref()
    }

    /// The ledger's database, when there is a ledger.
    pub fn ledger_db(&self) -> Option<&Database> {
        self.ledger.as_ref()
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The ledger's database, for spend reports; `None` when no ledger is kept.
    pub fn ledger(&self) -> Option<&Database> {
        self.ledger.as_ref()
    }

    /// What the configuration in force sets: settings, PII detector, its keys.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// A guard for one answer's text under the PII detector in force: it keeps the
    /// detector of the configuration it started with, even across a reload.
    pub fn output_guard(&self, action: output::OutputAction) -> output::OutputGuard {
        output::OutputGuard::new(self.rules.load().detector.clone(), action)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether a name is taken by a key of the config file.
    pub fn is_static_key_name(&self, name: &str) -> bool {
        self.rules
            .load()
            .static_keys
            .iter()
            .any(|(_, p)| &*p.name == name)
    }

    /// Reloads keys and teams from the store now.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _guard = self.reload_lock.lock().await;
        let rules = self.rules.load_full();
        let (snapshot, version) = self.load_snapshot(store, &rules).await?;
        self.seed_budgets(&snapshot).await;
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
        self.loaded_version.store(version, Ordering::Release);
        Ok(())
    }

    /// Prepares governance for a reloaded configuration: its rules, and the snapshot
    /// rebuilt with its keys (the store read again, budgets of new keys seeded).
    /// Nothing changes until [`Reconfigured::commit`], which is synchronous, so that
    /// the caller can switch governance and its own part of the configuration at the
    /// same moment. The store's poller waits meanwhile, so it cannot put back a
    /// snapshot built with the old rules.
    pub async fn prepare_reconfigure(
        &self,
        config: &Config,
    ) -> Result<Reconfigured<'_>, StoreError> {
        let guard = self.reload_lock.lock().await;
        let rules = Arc::new(Rules::of(config));
        let (snapshot, version) = match &self.store {
            Some(store) => {
                let (s, v) = self.load_snapshot(store, &rules).await?;
                (s, Some(v))
            }
            None => (
                Arc::new(Snapshot {
                    keys: rules.static_keys.iter().cloned().collect(),
                    teams: HashMap::new(),
                }),
                None,
            ),
        };
        self.seed_budgets(&snapshot).await;
        Ok(Reconfigured {
            gov: self,
            _guard: guard,
            rules,
            snapshot,
            version,
        })
    }

    /// Keys (the config file's and the store's) and teams, as the store has them now.
    async fn load_snapshot(
        &self,
        store: &Store,
        rules: &Rules,
    ) -> Result<(Arc<Snapshot>, i64), StoreError> {
        let version = store.version().await?;
        let teams: HashMap<String, TeamRow> = store
            .teams()
            .await?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut keys: HashMap<[u8; 32], Arc<Principal>> =
            rules.static_keys.iter().cloned().collect();
        for row in store.keys(None).await? {
            // Refused at start; a key created since by a tool that did not know the
            // config file still counts apart (by id), but reports would show one name
            // for two keys.
            if rules.static_keys.iter().any(|(_, p)| *p.name == row.name) {
                tracing::warn!(name = %row.name, id = %row.id,
                    "a virtual key has the name of a key in the configuration file");
            }
            keys.insert(row.key_hash, Arc::new(principal_of(&row, &teams, rules)));
        }
        Ok((Arc::new(Snapshot { keys, teams }), version))
    }
}

fn principal_of(row: &KeyRow, teams: &HashMap<String, TeamRow>, rules: &Rules) -> Principal {
    let team = row.team.as_ref().and_then(|t| teams.get(t));
    let mut p = Principal::new(
        &row.name,
        &row.id,
        &row.policy,
        &row.budgets,
        team,
        rules.settings.pii,
    );
    p.expires_at_ms = row.expires_at_ms;
    p.revoked = row.revoked_at_ms.is_some();
    p
}

/// Governance prepared for a reloaded configuration, waiting to be switched to.
/// Dropped without [`Reconfigured::commit`], nothing changes.
pub struct Reconfigured<'g> {
    gov: &'g Governance,
    _guard: tokio::sync::MutexGuard<'g, ()>,
    rules: Arc<Rules>,
    snapshot: Arc<Snapshot>,
    version: Option<i64>,
}

impl Reconfigured<'_> {
    /// Puts the new rules and keys in force.
    pub fn commit(self) {
        let gov = self.gov;
        gov.rules.store(self.rules);
        *gov.snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.snapshot;
        if let Some(v) = self.version {
            gov.loaded_version.store(v, Ordering::Release);
        }
    }
}

impl Governance {
    /// Gives every budget of the current period that has no counter yet its spend so far,
    /// from the ledger (wherever it is: the store may be a file of its own).
    async fn seed_budgets(&self, snapshot: &Snapshot) {
        let now = time::now_ms();
        let mut seen = std::collections::HashSet::new();
        let mut pending = Vec::new();
        for p in snapshot.keys.values().filter(|p| !p.revoked) {
            for a in &p.budgets {
                let period = a.budget.period;
                if seen.insert((a.scope, a.id.clone(), period))
                    && self.budgets.needs_seed(a.scope, &a.id, period, now).await
                {
                    pending.push(a);
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let wanted: Vec<(Scope, &str, i64)> = pending
            .iter()
            .map(|a| (a.scope, &*a.id, a.budget.period.bounds(now).0))
            .collect();
        let spent = budget::spent_in_ledger(self.ledger.as_ref(), &wanted).await;
        for (a, spent) in pending.into_iter().zip(spent) {
            let period = a.budget.period;
            let (start, _) = period.bounds(now);
            self.budgets
                .seed(a.scope, &a.id, period, start, spent)
                .await;
        }
    }

    /// The caller of `Authorization: Bearer …`.
    /// Every budget of a live key or of its team, once each (for the metrics' budget
    /// gauges), in a stable order.
    pub fn budgets_in_force(&self) -> Vec<budget::Applied> {
        let snapshot = self.snapshot();
        let mut seen = std::collections::BTreeMap::new();
        for p in snapshot.keys.values() {
            if p.revoked {
                continue;
            }
            for a in &p.budgets {
                seen.entry((a.scope.as_str(), a.id.clone(), a.budget.period.as_str()))
                    .or_insert_with(|| a.clone());
            }
        }
        seen.into_values().collect()
    }

    /// Headroom of every whole-key and whole-team rate limit in force (per-model
    /// limits are left out: their windows are as many as the models): scope, id,
    /// `rpm` or `tpm`, what is left of the window now, and the limit.
    pub async fn limit_headroom(&self) -> Vec<(Scope, Arc<str>, &'static str, u64, u64)> {
        let snapshot = self.snapshot();
        let mut windows = std::collections::BTreeMap::new();
        for p in snapshot.keys.values() {
            if p.revoked {
                continue;
            }
            for l in &p.limits {
                for (kind, spec) in [("rpm", &l.windows.rpm), ("tpm", &l.windows.tpm)] {
                    if let Some(spec) = spec {
                        windows.insert(
                            (l.scope, l.id.clone(), kind),
                            (spec.key.clone(), spec.limit),
                        );
                    }
                }
            }
        }
        let limiter = self.limiter();
        let mut out = Vec::with_capacity(windows.len());
        for ((scope, id, kind), (key, limit)) in windows {
            let (remaining, _) = limiter.remaining(&key, limit, MINUTE).await;
            out.push((scope, id, kind, remaining, limit));
        }
        out
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Refusal> {
        let token = bearer(headers).ok_or(Refusal::MissingKey)?;
        let snapshot = self.snapshot();
        let p = snapshot
            .keys
            .get(&sha256(token))
            .cloned()
            .ok_or(Refusal::InvalidKey)?;
        if p.revoked {
            return Err(Refusal::RevokedKey);
        }
        if p.expires_at_ms.is_some_and(|at| at <= time::now_ms()) {
            return Err(Refusal::ExpiredKey);
        }
        Ok(p)
    }

    /// Whether the request carries the admin token.
    pub fn is_admin(&self, headers: &HeaderMap) -> bool {
        let rules = self.rules.load();
        let (Some(want), Some(token)) = (&rules.admin_token, bearer(headers)) else {
            return false;
        };
        // Comparing digests: equal-length, and a timing difference reveals nothing
        // about the token itself.
        session::same(&sha256(token), want)
    }

    pub fn admin_enabled(&self) -> bool {
        self.rules.load().admin_token.is_some()
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
        out_headers: &mut LimitHeaders,
    ) -> Result<Admission, Refusal> {
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
                    return Err(Refusal::MaxTokens {
                        param,
                        asked: n,
                        max,
                    });
                }
                Some(_) => {}
                // Without a limit the output has no bound; the policy's maximum gives it one.
                // Each provider adapter moves it to the field its upstream takes
                // (reasoning models: `max_completion_tokens`).
                None => req.max_tokens = Some(max),
            }
        }
        self.guard_chat(p, req, tracker)?;
        let (default_max_output, log_content) = {
            let rules = self.rules.load();
            let s = &rules.settings;
            (s.default_max_output_tokens, s.log_content)
        };
        let estimate = limits::estimate_chat(req, default_max_output);
        let admission = self
            .reserve(p, &model, estimate, prices, tracker, out_headers)
            .await?;
        if log_content && p.policy.data.log_content {
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
        out_headers: &mut LimitHeaders,
    ) -> Result<Admission, Refusal> {
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
        if self.rules.load().settings.log_content && p.policy.data.log_content {
            tracker.log_content(req.input.to_string());
        }
        Ok(admission)
    }

    fn check_model(
        &self,
        p: &Principal,
        model: &str,
        tracker: &mut RequestTracker,
    ) -> Result<(), Refusal> {
        if p.policy.allows_model(model) {
            return Ok(());
        }
        tracker.set_policy_decision("denied:model_not_allowed");
        Err(Refusal::ModelNotAllowed {
            model: model.to_owned(),
        })
    }

    fn guard_chat(
        &self,
        p: &Principal,
        req: &mut ChatRequest,
        tracker: &mut RequestTracker,
    ) -> Result<(), Refusal> {
        // Every text of the request that goes upstream: system, user and tool
        // messages (tool results), content parts, and what the assistant turns carry
        // (tool-call arguments, the legacy `function_call`, a refusal).
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
                for call in m.tool_calls.iter_mut().flatten() {
                    guard_arguments(&mut call.function.arguments, f);
                }
                if let Some(legacy) = m.extra.get_mut("function_call") {
                    if let Some(serde_json::Value::String(args)) = legacy.get_mut("arguments") {
                        guard_arguments(args, f);
                    }
                }
                if let Some(serde_json::Value::String(refusal)) = m.extra.get_mut("refusal") {
                    f(refusal);
                }
            }
        })
    }

    /// Runs the PII guardrail over the texts `visit` hands out: redacts them in place
    /// (`redact`), refuses the request (`block`), or only notes what it found
    /// (`log`), in the request's ledger row. An ingress that sends a body of its own
    /// upstream (the Anthropic pass-through) runs it over that body too.
    pub(crate) fn guard_texts(
        &self,
        p: &Principal,
        tracker: &mut RequestTracker,
        visit: impl FnOnce(&mut dyn FnMut(&mut String)),
    ) -> Result<(), Refusal> {
        let mode = p.policy.pii;
        if mode == PiiMode::Off {
            return Ok(());
        }
        let rules = self.rules.load();
        let mut r = pii::Redactor::new(&*rules.detector);
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
            let kinds = r
                .counts
                .iter()
                .map(|(l, _)| l.as_str().to_owned())
                .collect();
            return Err(Refusal::PiiBlocked { kinds });
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
        out_headers: &mut LimitHeaders,
    ) -> Result<Admission, Refusal> {
        if self.shared.as_ref().is_some_and(|r| r.refuses()) {
            tracker.set_policy_decision("denied:state_unavailable");
            return Err(Refusal::StateUnavailable);
        }
        let (claims, meta) = claims_for(p, model, estimate.total());
        let reservation = match self.limiter.try_reserve(&claims).await {
            Ok(r) => r,
            Err(refusal) if refusal.state_unavailable => {
                tracker.set_policy_decision("denied:state_unavailable");
                return Err(Refusal::StateUnavailable);
            }
            Err(refusal) => {
                let m = claims
                    .iter()
                    .position(|c| c.key == refusal.key)
                    .and_then(|i| meta.get(i));
                let (unit, what) = m.map_or((Unit::Requests, "rate"), |m| (m.unit, &*m.label));
                tracker.set_policy_decision(&format!("denied:rate_limited:{what}"));
                out_headers.set(unit, refusal.limit, refusal.remaining, refusal.retry_after);
                return Err(Refusal::RateLimited {
                    unit: unit.as_str(),
                    what: what.to_owned(),
                    limit: refusal.limit,
                    remaining: refusal.remaining,
                    retry_after: refusal.retry_after,
                });
            }
        };
        let bound = upper_bound_cost(estimate, prices);
        let hold = match self
            .budgets
            .reserve(&p.budgets, bound, time::now_ms())
            .await
        {
            Ok(h) => h,
            Err(Denied::StateUnavailable) => {
                let zeros = vec![0; claims.len()];
                self.limiter.settle(reservation, &zeros).await;
                tracker.set_policy_decision("denied:state_unavailable");
                return Err(Refusal::StateUnavailable);
            }
            Err(Denied::Exceeded(exceeded)) => {
                // Refused requests do not count against the rate limits.
                let zeros = vec![0; claims.len()];
                self.limiter.settle(reservation, &zeros).await;
                tracker.set_policy_decision(&format!(
                    "denied:budget:{}:{}:{}",
                    exceeded.scope.as_str(),
                    exceeded.name,
                    exceeded.period.as_str()
                ));
                let retry_after_secs = exceeded
                    .resets_at_ms
                    .map(|at| u64::try_from((at - time::now_ms()).max(0) / 1000 + 1).unwrap_or(1));
                return Err(Refusal::BudgetExceeded {
                    message: exceeded.message(),
                    retry_after_secs,
                });
            }
        };
        success_headers(&reservation, &meta, out_headers);
        tracker.set_policy_decision("allowed");
        tracker.hold(Box::new(Ticket {
            limiter: self.limiter.clone(),
            reservation,
            tokens: meta.iter().map(|m| m.unit == Unit::Tokens).collect(),
            budgets: self.budgets.clone(),
            hold,
        }));
        Ok(Admission {
            data_policy: p.policy.data.clone(),
            estimate,
            reserved_nano_usd: bound,
        })
    }
}

/// `x-ratelimit-*` for the tightest request window and the tightest token window, as
/// the reservation left them (no second look at the windows: with shared state that
/// would be a round trip to Redis per window).
fn success_headers(reservation: &Reservation, meta: &[ClaimMeta], out: &mut LimitHeaders) {
    for unit in [Unit::Requests, Unit::Tokens] {
        let mut best: Option<(u64, u64, Duration)> = None;
        for (i, m) in meta.iter().enumerate() {
            if m.unit != unit {
                continue;
            }
            let Some((remaining, reset)) = reservation.headroom(i) else {
                continue;
            };
            if best.is_none_or(|(_, r, _)| remaining < r) {
                best = Some((m.limit, remaining, reset));
            }
        }
        if let Some((limit, remaining, reset)) = best {
            out.set(unit, limit, remaining, reset);
        }
    }
}

/// Reloads on every change announced on PostgreSQL until the governance is dropped.
/// The listener re-establishes a dropped connection by itself and then reports it
/// (`Ok(None)`); notifications sent meanwhile are lost, so that is followed by a
/// reload too. Should reconnecting fail, it is retried with a growing pause, and the
/// first success reloads.
async fn listen(
    gov: Weak<Governance>,
    stop: CancellationToken,
    pg: crate::storage::Postgres,
    listener: sqlx::postgres::PgListener,
) {
    let mut listener = Some(listener);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(l) = listener.as_mut() else {
            // Reconnect after a failure.
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            match pg.listen(store::CHANGES_CHANNEL).await {
                Ok(l) => {
                    listener = Some(l);
                    backoff = Duration::from_millis(100);
                    reload_after(&gov, "the change listener reconnected").await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, database = %pg.target(),
                        "cannot listen for key changes; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        // Dropping `try_recv` half-way is only done when the governance is gone.
        let received = tokio::select! {
            r = l.try_recv() => r,
            () = stop.cancelled() => return,
        };
        match received {
            Ok(Some(_)) => {
                let Some(g) = gov.upgrade() else { return };
                // A burst of changes queues a burst of notifications; the counter
                // tells whether this one is already loaded.
                let Some(store) = g.store.as_ref() else {
                    return;
                };
                let current = store.version().await;
                if current.ok() != Some(g.loaded_version.load(Ordering::Acquire)) {
                    if let Err(e) = g.reload().await {
                        tracing::warn!(error = %e, "reloading keys and teams failed");
                    }
                }
            }
            Ok(None) => reload_after(&gov, "the change listener reconnected").await,
            Err(e) => {
                tracing::warn!(error = %e, database = %pg.target(),
                    "the key change listener failed; reconnecting");
                listener = None;
            }
        }
    }
}

async fn reload_after(gov: &Weak<Governance>, why: &str) {
    let Some(g) = gov.upgrade() else { return };
    tracing::info!("{why}; reloading keys and teams");
    if let Err(e) = g.reload().await {
        tracing::warn!(error = %e, "reloading keys and teams failed");
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
    budgets: Arc<dyn Budgets>,
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

impl Settle for Ticket {
    /// Replaces the reservations by what the request really used and cost.
    fn settle(self: Box<Self>, usage: &Usage, cost_nano_usd: i64) {
        let budgets = self.budgets;
        let hold = self.hold;
        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        let actual: Vec<u64> = self
            .tokens
            .iter()
            .map(|&t| if t { tokens } else { 1 })
            .collect();
        let limiter = self.limiter;
        let reservation = self.reservation;
        let mut fut = Box::pin(async move {
            budgets.settle(hold, cost_nano_usd).await;
            limiter.settle(reservation, &actual).await;
        });
        // In-process state is done at once; shared state finishes in the background.
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
    /// The claim's limit (the reservation keeps what is left of it).
    limit: u64,
    /// `key app rpm`, `team research model gpt-4o tpm`…
    label: Arc<str>,
}

const MINUTE: Duration = Duration::from_secs(60);

fn claims_for(p: &Principal, model: &str, tokens: u64) -> (Vec<Claim>, Vec<ClaimMeta>) {
    let mut claims = Vec::with_capacity(4);
    let mut meta = Vec::with_capacity(4);
    let mut add = |w: &Windows| {
        for (spec, unit, amount) in [(&w.rpm, Unit::Requests, 1), (&w.tpm, Unit::Tokens, tokens)] {
            if let Some(spec) = spec {
                claims.push(Claim {
                    key: spec.key.clone(),
                    limit: spec.limit,
                    period: MINUTE,
                    amount,
                });
                meta.push(ClaimMeta {
                    unit,
                    limit: spec.limit,
                    label: spec.label.clone(),
                });
            }
        }
    };
    // Narrowest first, so a refusal names the key's own limit when both are full.
    for l in p.limits.iter().rev() {
        add(&l.windows);
        if let Some(w) = l.by_model.get(model) {
            add(w);
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

/// The `x-ratelimit-*` header names, per unit: limit, remaining, reset. Built once
/// (every successful request sets them).
static LIMIT_HEADERS: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// The `x-ratelimit-*` values admission found, per unit (limit, remaining, reset),
/// written into the response once it exists: kept as numbers until then rather than
/// as a header map of their own that would be hashed into and then merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHeaders {
    /// Indexed like [`LIMIT_HEADERS`]: requests, then tokens.
    windows: [Option<(u64, u64, Duration)>; 2],
}

impl LimitHeaders {
    fn set(&mut self, unit: Unit, limit: u64, remaining: u64, reset: Duration) {
        let [requests, tokens] = &mut self.windows;
        let slot = match unit {
            Unit::Requests => requests,
            Unit::Tokens => tokens,
        };
        *slot = Some((limit, remaining, reset));
    }

    /// Sets the headers on a response's `h`.
    pub fn write_into(&self, h: &mut HeaderMap) {
        let count = self.windows.iter().flatten().count();
        if count == 0 {
            return;
        }
        h.reserve(3 * count);
        for (window, names) in self.windows.iter().zip(&LIMIT_HEADERS) {
            let Some((limit, remaining, reset)) = *window else {
                continue;
            };
            let [l, r, t] = names;
            h.insert(l.clone(), HeaderValue::from(limit));
            h.insert(r.clone(), HeaderValue::from(remaining));
            if let Ok(v) = HeaderValue::try_from(format_reset(reset)) {
                h.insert(t.clone(), v);
            }
        }
    }
}

/// OpenAI's duration format: `20ms`, `1.5s`, `6m0s` (whole milliseconds; integer
/// arithmetic, as every successful request formats two of these).
pub fn format_reset(d: Duration) -> String {
    use std::fmt::Write as _;
    let ms = d.as_millis();
    let mut out = String::with_capacity(16);
    // Writing to a String cannot fail.
    if ms < 1000 {
        let _ = write!(out, "{ms}ms");
    } else if ms < 60_000 {
        let (secs, frac) = (ms / 1000, ms % 1000);
        let _ = write!(out, "{secs}");
        if frac != 0 {
            let _ = write!(out, ".{frac:03}");
            while out.ends_with('0') {
                out.pop();
            }
        }
        out.push('s');
    } else {
        let secs = d.as_secs();
        let _ = write!(out, "{}m{}s", secs / 60, secs % 60);
    }
    out
}

/// Tool-call arguments are a JSON document in a string. Its values are guarded one by
/// one ([`visit_json_texts`]), so that a redaction leaves it a JSON document; it is
/// re-encoded only when a redaction changed it. Arguments that are not JSON are
/// guarded as the text they are.
fn guard_arguments(arguments: &mut String, f: &mut dyn FnMut(&mut String)) {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(arguments) else {
        f(arguments);
        return;
    };
    let mut changed = false;
    visit_json_texts(&mut doc, &mut |s: &mut String| {
        let before = s.clone();
        f(s);
        changed |= *s != before;
    });
    if changed {
        if let Ok(encoded) = serde_json::to_string(&doc) {
            *arguments = encoded;
        }
    }
}

/// Hands every string and number of a JSON document (values, not keys) to `f`: a
/// number may be a card or a phone number as much as a string may. A number that
/// `f` rewrites becomes the string it was rewritten to.
pub(crate) fn visit_json_texts(v: &mut serde_json::Value, f: &mut dyn FnMut(&mut String)) {
    use serde_json::Value;
    match v {
        Value::String(s) => f(s),
        Value::Number(n) => {
            let text = n.to_string();
            let mut s = text.clone();
            f(&mut s);
            if s != text {
                *v = Value::String(s);
            }
        }
        Value::Array(items) => {
            for i in items {
                visit_json_texts(i, f);
            }
        }
        Value::Object(o) => {
            for (_, i) in o.iter_mut() {
                visit_json_texts(i, f);
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
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

    /// A key of the config file and a virtual key named alike count in windows and
    /// budgets of their own: they are told apart by id, not by name.
    #[test]
    fn keys_named_alike_share_no_counters() {
        let policy = Policy {
            rpm: Some(1),
            tpm: Some(100),
            ..Policy::default()
        };
        let budget = Budget {
            period: Period::Month,
            limit_nano_usd: 1_000,
            warn_at_percent: Vec::new(),
        };
        let from_config = Principal::new(
            "app",
            &config_key_id("app"),
            &policy,
            std::slice::from_ref(&budget),
            None,
            PiiMode::Off,
        );
        let virtual_key = Principal::new(
            "app",
            "vk_0123456789abcdef",
            &policy,
            &[budget],
            None,
            PiiMode::Off,
        );
        let (a, meta) = claims_for(&from_config, "m", 10);
        let (b, _) = claims_for(&virtual_key, "m", 10);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|x| b.iter().all(|y| x.key != y.key)));
        // Refusals still name the key by its name.
        assert!(meta.iter().all(|m| m.label.starts_with("key app ")));

        let book = BudgetBook::new();
        let now = time::now_ms();
        book.reserve(&from_config.budgets, 1_000, now)
            .expect("the config key's budget");
        book.reserve(&virtual_key.budgets, 1_000, now)
            .expect("the virtual key's own budget, untouched by the other");
    }

    #[test]
    fn limit_headers_are_written_per_unit_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        LimitHeaders::default().write_into(&mut h);
        assert_eq!(h.len(), 1, "nothing set, nothing written");
        let mut limits = LimitHeaders::default();
        limits.set(Unit::Tokens, 1_000, 990, Duration::from_millis(1500));
        limits.write_into(&mut h);
        assert_eq!(h.len(), 4);
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "990");
        assert_eq!(h["x-ratelimit-reset-tokens"], "1.5s");
        assert!(!h.contains_key("x-ratelimit-limit-requests"));
        // A later window of a unit replaces the earlier one.
        limits.set(Unit::Requests, 10, 9, Duration::from_millis(20));
        limits.set(Unit::Requests, 10, 3, Duration::from_millis(40));
        limits.write_into(&mut h);
        assert_eq!(h.len(), 7);
        assert_eq!(h["x-ratelimit-remaining-requests"], "3");
        assert_eq!(h["x-ratelimit-reset-requests"], "40ms");
        assert_eq!(h["content-type"], "application/json");
        // The largest values still make valid headers.
        limits.set(Unit::Tokens, u64::MAX, u64::MAX, Duration::MAX);
        limits.write_into(&mut h);
        assert_eq!(h["x-ratelimit-limit-tokens"], u64::MAX.to_string().as_str());
        assert_eq!(h["x-ratelimit-reset-tokens"], "307445734561825860m15s");
    }

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
        assert_eq!(format_reset(Duration::from_millis(1050)), "1.05s");
        assert_eq!(format_reset(Duration::from_millis(1001)), "1.001s");
        assert_eq!(format_reset(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(format_reset(Duration::from_micros(1_999_900)), "1.999s");
        assert_eq!(format_reset(Duration::from_millis(60_000)), "1m0s");
        assert_eq!(format_reset(Duration::ZERO), "0ms");
        assert_eq!(format_reset(Duration::MAX), "307445734561825860m15s");
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
