//! The configuration in force, as one generation that a reload replaces whole.
//!
//! A [`Generation`] is what a request runs on: the validated [`Config`], the
//! [`Dispatcher`] built from it (its catalog of deployments, their health and the
//! pooled clients), and handles to the long-lived services (governance with its
//! key store, limiter and budget counters; the ledger sink). A handler loads the
//! current generation once, at its start, and keeps its `Arc` to the end, a long
//! stream included; a reload builds the next generation beside it and swaps it in
//! atomically, so new requests see the new configuration and running ones finish on
//! theirs.
//!
//! What lives longer than a generation is built once by `server/mod.rs` and handed to
//! every generation ([`Services`]); a deployment that keeps its name keeps its health
//! (see [`crate::routing::Health::carried_over`]); pooled clients are reused while the
//! pool settings are the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;

use super::error::ApiError;
use crate::cache::ResponseCache;
use crate::config::{ApiKey, Config, ConfigWarning, Deployment, LogicalModel, Provider};
use crate::dispatch::Dispatcher;
use crate::governance::check::{check_config_file_against, CheckError};
use crate::governance::store::StoreError;
use crate::governance::{Governance, Principal};
use crate::ledger::LedgerSink;
use crate::telemetry::Telemetry;

/// What outlives a reload: built once at start and handed to every generation.
/// Other long-lived state (a shared limiter, a database pool) belongs here too, or
/// inside one of these, never in what a generation builds.
#[derive(Clone)]
pub struct Services {
    /// Keys, teams, policies, the one limiter and the budget counters. A reload puts
    /// the new file's rules in it ([`Governance::prepare_reconfigure`]).
    pub governance: Arc<Governance>,
    pub ledger: LedgerSink,
    /// Metrics and the trace exporter; the ledger sink reports every request to it.
    pub telemetry: Arc<Telemetry>,
    /// The response cache: what it holds survives reloads.
    pub cache: Arc<ResponseCache>,
}

/// One configuration in force, and the long-lived services it runs on.
pub struct Generation {
    /// 1 at start; each accepted reload adds one.
    pub id: u64,
    pub config: Arc<Config>,
    pub dispatcher: Dispatcher,
    pub governance: Arc<Governance>,
    pub ledger: LedgerSink,
    pub cache: Arc<ResponseCache>,
    /// Unix seconds when the gateway started; the `created` of listed models.
    pub(super) started_at: i64,
}

impl Generation {
    pub fn new(
        id: u64,
        config: Arc<Config>,
        dispatcher: Dispatcher,
        services: &Services,
        started_at: i64,
    ) -> Generation {
        Generation {
            id,
            config,
            dispatcher,
            governance: services.governance.clone(),
            ledger: services.ledger.clone(),
            cache: services.cache.clone(),
            started_at,
        }
    }

    /// The caller presenting `Authorization: Bearer …`: a key of the config file or a
    /// virtual key from the store (revoked and expired ones are refused).
    pub(super) fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
        self.governance
            .authenticate(headers)
            .map_err(ApiError::from)
    }
}

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The gateway was not started from a file (the demo, tests): nothing to re-read.
    #[error("this gateway was not started from a configuration file; there is nothing to reload")]
    NoSource,
    /// The file failed `config check`'s validation.
    #[error(transparent)]
    Invalid(#[from] CheckError),
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] crate::providers::upstream::ClientError),
    #[error("cannot read the key store: {0}")]
    Store(#[from] StoreError),
}

/// Names added, removed and changed in one section of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn between<T>(
        old: &BTreeMap<&str, T>,
        new: &BTreeMap<&str, T>,
        same: impl Fn(&T, &T) -> bool,
    ) -> Changes {
        let mut c = Changes::default();
        for (name, n) in new {
            match old.get(name) {
                None => c.added.push((*name).to_owned()),
                Some(o) if !same(o, n) => c.changed.push((*name).to_owned()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .map(|name| (*name).to_owned())
            .collect();
        c
    }
}

/// What an accepted reload changed.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// The generation now in force.
    pub generation: u64,
    pub file: PathBuf,
    pub models: Changes,
    pub deployments: Changes,
    pub providers: Changes,
    /// The config file's `[[keys]]`, by name.
    pub keys: Changes,
    /// Settings of other sections that changed and took effect (`server.max_body_bytes`,
    /// `breaker`, `governance`…), by field path.
    pub settings: Vec<String>,
    /// Changed fields that keep their running value until a restart.
    pub restart_needed: Vec<ConfigWarning>,
    /// What `config check` warns about in the new file.
    pub warnings: Vec<ConfigWarning>,
}

impl ReloadReport {
    /// Whether the reload changed nothing in force.
    pub fn unchanged(&self) -> bool {
        self.models.is_empty()
            && self.deployments.is_empty()
            && self.providers.is_empty()
            && self.keys.is_empty()
            && self.settings.is_empty()
    }
}

/// Re-reads `source`, validates it as `config check` does, builds the next
/// generation from it and `current`, and stores it in `slot`. Nothing is in force
/// until the end, where governance's rules and the generation are switched together,
/// with no await between.
pub(super) async fn reload(
    source: &Path,
    current: &Generation,
    services: &Services,
    slot: &ArcSwap<Generation>,
) -> Result<ReloadReport, ReloadError> {
    let checked = check_config_file_against(source, services.governance.store()).await?;
    let old = &current.config;
    let restart_needed = restart_only_changes(old, &checked);
    let config = keep_restart_only(old, checked);
    let warnings = config.warnings();
    let dispatcher = Dispatcher::next(
        &config,
        services.governance.limiter(),
        Some((old, &current.dispatcher)),
    )?;
    // A contract the book has not seen starts from what the ledger holds of its period.
    crate::contracts::seed_from_ledger(
        &dispatcher.contracts,
        services.governance.ledger_db(),
        &config.contract_list(),
    )
    .await;
    let prepared = services.governance.prepare_reconfigure(&config).await?;
    let report = ReloadReport {
        generation: current.id + 1,
        file: source.to_owned(),
        models: Changes::between(&models_of(old), &models_of(&config), same_model),
        deployments: Changes::between(&deployments_of(old), &deployments_of(&config), |a, b| {
            same_deployment(a, b)
        }),
        providers: Changes::between(&providers_of(old), &providers_of(&config), |a, b| {
            same_provider(a, b)
        }),
        keys: Changes::between(&keys_of(old), &keys_of(&config), same_key),
        settings: changed_settings(old, &config),
        restart_needed,
        warnings,
    };
    let next = Arc::new(Generation::new(
        report.generation,
        Arc::new(config),
        dispatcher,
        services,
        current.started_at,
    ));
    prepared.commit();
    slot.store(next);
    Ok(report)
}

fn models_of(c: &Config) -> BTreeMap<&str, &LogicalModel> {
    c.models.iter().map(|(k, v)| (k.as_str(), &**v)).collect()
}

fn deployments_of(c: &Config) -> BTreeMap<&str, &Deployment> {
    c.deployments
        .iter()
        .map(|d| (d.name.as_str(), &**d))
        .collect()
}

fn providers_of(c: &Config) -> BTreeMap<&str, &Provider> {
    c.providers
        .iter()
        .map(|p| (p.name.as_str(), &**p))
        .collect()
}

fn keys_of(c: &Config) -> BTreeMap<&str, &ApiKey> {
    c.keys.iter().map(|k| (k.name.as_str(), k)).collect()
}

fn same_provider(a: &Provider, b: &Provider) -> bool {
    a.name == b.name && a.kind == b.kind && a.api_key == b.api_key && a.credentials == b.credentials
}

/// Everything but the position in the list, which names no setting.
fn same_deployment(a: &Deployment, b: &Deployment) -> bool {
    a.name == b.name
        && same_provider(&a.provider, &b.provider)
        && a.upstream_model == b.upstream_model
        && a.region == b.region
        && a.price == b.price
        && a.effective_price == b.effective_price
        && a.timeouts == b.timeouts
        && a.quota == b.quota
        && a.capabilities == b.capabilities
        && a.data_tags == b.data_tags
}

/// A model's own settings; a change in one of its deployments shows under
/// `deployments`.
fn same_model(a: &&LogicalModel, b: &&LogicalModel) -> bool {
    let targets = |m: &LogicalModel| -> Vec<(String, u32, u32)> {
        m.targets
            .iter()
            .map(|t| (t.deployment.name.clone(), t.tier, t.weight))
            .collect()
    };
    a.strategy == b.strategy
        && targets(a) == targets(b)
        && a.constraints == b.constraints
        && a.first_byte_timeout == b.first_byte_timeout
        && a.total_timeout == b.total_timeout
        && a.retry == b.retry
        && a.hedge_after == b.hedge_after
        && a.stream_recovery == b.stream_recovery
        && a.prefer_commitments == b.prefer_commitments
        && a.shadow == b.shadow
}

fn same_key(a: &&ApiKey, b: &&ApiKey) -> bool {
    a.key == b.key && a.policy == b.policy && a.budgets == b.budgets
}

/// Settings outside the named sections that a reload puts in force, by field.
fn changed_settings(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |changed: bool, field: &str| {
        if changed {
            out.push(field.to_owned());
        }
    };
    note(
        old.server.max_body_bytes != new.server.max_body_bytes,
        "server.max_body_bytes",
    );
    note(
        old.server.drain_grace != new.server.drain_grace,
        "server.drain_grace_ms",
    );
    note(
        old.server.drain_timeout != new.server.drain_timeout,
        "server.drain_timeout_ms",
    );
    note(
        old.upstream.pool_idle_timeout != new.upstream.pool_idle_timeout,
        "upstream.pool_idle_timeout_ms",
    );
    note(
        old.upstream.pool_max_idle_per_host != new.upstream.pool_max_idle_per_host,
        "upstream.pool_max_idle_per_host",
    );
    note(old.breaker != new.breaker, "breaker");
    // Channel profiles, each by its path: added, removed or changed.
    let names: std::collections::BTreeSet<&String> =
        old.channels.keys().chain(new.channels.keys()).collect();
    for name in names {
        note(
            old.channels.get(name) != new.channels.get(name),
            &format!("channels.{name}"),
        );
    }
    let names: std::collections::BTreeSet<&String> =
        old.contracts.keys().chain(new.contracts.keys()).collect();
    for name in names {
        note(
            old.contracts.get(name) != new.contracts.get(name),
            &format!("contracts.{name}"),
        );
    }
    note(old.admin.token != new.admin.token, "admin.token");
    note(
        old.governance.log_content != new.governance.log_content,
        "governance.log_content",
    );
    note(old.governance.pii != new.governance.pii, "governance.pii");
    note(
        old.governance.pii_patterns != new.governance.pii_patterns,
        "governance.pii_patterns",
    );
    note(
        old.governance.default_max_output_tokens != new.governance.default_max_output_tokens,
        "governance.default_max_output_tokens",
    );
    note(
        old.images.max_bytes != new.images.max_bytes
            || old.images.max_total_bytes != new.images.max_total_bytes
            || old.images.timeout != new.images.timeout
            || old.images.allow_hosts != new.images.allow_hosts,
        "images",
    );
    out
}

/// Fields whose running value only a restart can change: the listener is bound, the
/// ledger's writer and the key store are open on their files, and the store's poller
/// runs at its interval.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let mut note = |changed: bool, path: &str| {
        if changed {
            out.push(ConfigWarning {
                path: path.to_owned(),
                message: "changed, but needs a restart; the running value stays in force".into(),
            });
        }
    };
    note(old.server.listen != new.server.listen, "server.listen");
    note(old.telemetry != new.telemetry, "telemetry");
    note(old.ledger.path != new.ledger.path, "ledger.path");
    note(
        old.ledger.on_overload != new.ledger.on_overload,
        "ledger.on_overload",
    );
    note(
        old.ledger.max_wait != new.ledger.max_wait,
        "ledger.max_wait_ms",
    );
    note(
        old.governance.store != new.governance.store,
        "governance.store",
    );
    note(
        old.governance.refresh != new.governance.refresh,
        "governance.refresh_ms",
    );
    note(old.storage != new.storage, "storage");
    note(
        old.ledger.retention_days != new.ledger.retention_days,
        "ledger.retention_days",
    );
    let state_of = |c: &Config| {
        c.state.as_ref().map(|s| {
            (
                s.redis_url.expose().to_owned(),
                s.prefix.clone(),
                s.on_unavailable,
                s.timeout,
            )
        })
    };
    note(state_of(old) != state_of(new), "state");
    out
}

/// `new` with the running values of the restart-only fields, so that the generation's
/// configuration says what is in force (the spend report reads the ledger the writer
/// writes, not a file named since).
fn keep_restart_only(old: &Config, mut new: Config) -> Config {
    new.server.listen = old.server.listen;
    new.ledger = old.ledger.clone();
    new.governance.store = old.governance.store.clone();
    new.governance.refresh = old.governance.refresh;
    new.storage = old.storage.clone();
    new.telemetry = old.telemetry.clone();
    new.state = old.state.clone();
    new
}

/// The log lines of an accepted reload: one summary, and one warning per field that
/// needs a restart.
pub(super) fn log_report(r: &ReloadReport) {
    for w in &r.restart_needed {
        tracing::warn!(field = %w.path, file = %r.file.display(), "configuration reload: {} needs a restart", w.path);
    }
    for w in &r.warnings {
        tracing::warn!(field = %w.path, "{}", w.message);
    }
    let list = |c: &Changes| {
        format!(
            "+[{}] -[{}] ~[{}]",
            c.added.join(","),
            c.removed.join(","),
            c.changed.join(",")
        )
    };
    tracing::info!(
        generation = r.generation,
        file = %r.file.display(),
        models = %list(&r.models),
        deployments = %list(&r.deployments),
        providers = %list(&r.providers),
        keys = %list(&r.keys),
        settings = %r.settings.join(","),
        unchanged = r.unchanged(),
        "configuration reloaded"
    );
}
