//! The running gateway: listener, shared state, ledger, and graceful shutdown.

mod http;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, ReloadError, ReloadReport, Services};
use crate::config::{Config, ConfigError};
use crate::dispatch::Dispatcher;
use crate::ledger::{Ledger, LedgerError, LedgerOptions, LedgerSink, LedgerStats};
use crate::limits::InProcessLimiter;
use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] crate::providers::upstream::ClientError),
    #[error(transparent)]
    Governance(#[from] crate::governance::GovernanceError),
    #[error(transparent)]
    State(#[from] crate::storage::redis::StateError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// The in-process response cache's size: the largest `max_bytes` of the models that
/// cache, or the default when none sets one (a policy may opt in without a model's
/// setting). Fixed at start: a reload that raises a model's `max_bytes` keeps the
/// running size. (In Redis, `max_bytes` bounds each entry and Redis the total.)
fn cache_bytes(config: &Config) -> u64 {
    config
        .models
        .values()
        .filter_map(|m| m.cache.map(|c| c.max_bytes))
        .max()
        .unwrap_or(crate::config::DEFAULT_CACHE_MAX_BYTES)
}

/// What shutdown found.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShutdownReport {
    /// Whether every in-flight request finished within the drain timeout.
    pub drained: bool,
    /// What became of the ledger's rows: written, and dropped by reason.
    pub ledger: LedgerStats,
}

/// A gateway serving on its listener until [`Gateway::shutdown`].
pub struct Gateway {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: CancellationToken,
    serve: JoinHandle<()>,
    ledger: Option<Ledger>,
    /// Where `/metrics` is served when `telemetry.metrics_listen` is set.
    metrics_addr: Option<SocketAddr>,
    metrics_stop: CancellationToken,
    telemetry: Arc<Telemetry>,
}

impl Gateway {
    /// Binds `config.server.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Gateway::start_on(config, listener).await
    }

    /// Loads the configuration file at `path` and serves it, remembering the file:
    /// SIGHUP (see [`Gateway::wait_for_shutdown_signal`]) and `POST /admin/reload`
    /// re-read it.
    pub async fn start_from_file(path: &Path) -> Result<Gateway, StartError> {
        let config = Config::load(path)?;
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Gateway::start_inner(config, listener, Some(path)).await
    }

    /// Starts serving on a listener the caller bound (tests bind port 0).
    pub async fn start_on(config: Config, listener: TcpListener) -> Result<Gateway, StartError> {
        Gateway::start_inner(config, listener, None).await
    }

    async fn start_inner(
        config: Config,
        listener: TcpListener,
        source: Option<&Path>,
    ) -> Result<Gateway, StartError> {
        let metrics_stop = CancellationToken::new();
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
        for w in config.warnings() {
            tracing::warn!(field = %w.path, "{}", w.message);
        }
        // The ledger's and the key store's databases: SQLite files, or one
        // PostgreSQL pool for both.
        let storage = crate::storage::Storage::open(&config).await?;
        let ledger = match &storage.ledger {
            Some(db) => Some(
                Ledger::open(LedgerOptions {
                    on_overload: config.ledger.on_overload,
                    max_wait: config.ledger.max_wait,
                    retention_days: config.ledger.retention_days,
                    ..LedgerOptions::on(db.clone())
                })
                .await?,
            ),
            None => None,
        };
        let telemetry = Telemetry::start(&config.telemetry)?;
        let sink = ledger
            .as_ref()
            .map_or_else(LedgerSink::disabled, Ledger::sink)
            .with_observer(telemetry.clone());
        // Shared run-time state when `[state]` says so, else in-process.
        let shared = match &config.state {
            Some(s) => Some(crate::storage::redis::Redis::connect(s).await?),
            None => None,
        };
        // One limiter for the callers' rate limits and the deployments' capacity.
        let limiter: Arc<dyn crate::limits::Limiter> = match &shared {
            Some(redis) => Arc::new(crate::limits::redis::RedisLimiter::new(redis.clone())),
            None => Arc::new(InProcessLimiter::new()),
        };
        let dispatcher = Dispatcher::new(&config, limiter.clone())?;
        if let Some(redis) = &shared {
            let names = config
                .deployments
                .iter()
                .map(|d| Arc::from(d.name.as_str()))
                .collect();
            dispatcher.health.share(names, redis.clone());
            dispatcher
                .contracts
                .share(redis.clone(), storage.ledger.clone());
        }
        crate::contracts::seed_from_ledger(
            &dispatcher.contracts,
            storage.ledger.as_ref(),
            &config.contract_list(),
        )
        .await;
        // The response cache: in Redis when replicas share state, else in process.
        let cache = match &shared {
            Some(redis) => crate::cache::ResponseCache::shared(redis.clone()),
            None => crate::cache::ResponseCache::new(cache_bytes(&config)),
        };
        tracing::debug!(backend = cache.kind(), "response cache");
        let governance =
            crate::governance::Governance::open_on(&config, &storage, limiter, shared).await?;
        // Built once: every generation a reload makes runs on these same services.
        let services = Services {
            governance,
            ledger: sink,
            telemetry: telemetry.clone(),
            cache: Arc::new(cache),
        };
        let mut state = AppState::new(Arc::new(config), dispatcher, services);
        if let Some(path) = source {
            state = state.with_source(path.to_owned());
        }
        let state = Arc::new(state);
        let metrics_listen = state.current().config.telemetry.metrics_listen;
        let metrics_serve = match metrics_listen {
            Some(maddr) if telemetry.metrics_enabled() => {
                let listener =
                    TcpListener::bind(maddr)
                        .await
                        .map_err(|source| StartError::Bind {
                            addr: maddr,
                            source,
                        })?;
                let metrics_addr = listener.local_addr().unwrap_or(maddr);
                tracing::info!(addr = %metrics_addr, "metrics listening");
                let app = crate::admin::metrics_router(state.clone());
                let stop = metrics_stop.clone();
                Some((metrics_addr, tokio::spawn(http::serve(listener, app, stop))))
            }
            _ => None,
        };
        let app = api::router(
            state.clone(),
            crate::admin::routes().merge(crate::dashboard::routes()),
        );
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let serve = tokio::spawn(http::serve(listener, app, signal));
        tracing::info!(%addr, "gateway listening");
        Ok(Gateway {
            addr,
            state,
            stop,
            serve,
            ledger,
            metrics_addr: metrics_serve.as_ref().map(|(a, _)| *a),
            metrics_stop,
            telemetry,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A one-time link that opens a dashboard session (valid for 15 minutes, spent
    /// at its first use); `None` without an admin token.
    pub fn dashboard_login_link(&self) -> Option<String> {
        let code = self
            .state
            .governance
            .issue_login_link(crate::types::time::now_ms())?;
        Some(format!("{}/dashboard/login/{code}", self.base_url()))
    }

    /// The address of the separate `/metrics` listener (`telemetry.metrics_listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Re-reads the configuration file and puts it in force for new requests, as
    /// SIGHUP and `POST /admin/reload` do; an invalid file leaves the running
    /// configuration in force.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.state.reload().await
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.state.current().config.clone()
    }

    /// Resolves on SIGTERM or SIGINT; meanwhile every SIGHUP reloads the
    /// configuration file (an error is logged, and the gateway keeps running).
    pub async fn wait_for_shutdown_signal(&self) {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut hangups = Hangups::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                () = hangups.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged by the reload itself.
                    let _ = self.reload().await;
                }
            }
        }
    }

    /// Fails `/readyz` for `server.drain_grace_ms` while still serving, then stops
    /// accepting, lets in-flight requests finish up to the drain timeout, and flushes
    /// the ledger.
    pub async fn shutdown(self) -> Result<ShutdownReport, StartError> {
        self.state.draining.store(true, Ordering::Relaxed);
        // Load balancers only stop sending once they have seen `/readyz` fail; closing
        // the listener before that would refuse the traffic still on its way.
        let config = self.config();
        let grace = config.server.drain_grace;
        if !grace.is_zero() {
            tracing::info!(?grace, "draining: /readyz fails, still accepting");
            tokio::time::sleep(grace).await;
        }
        self.stop.cancel();
        let deadline = config.server.drain_timeout;
        let drain_started = tokio::time::Instant::now();
        let mut serve = self.serve;
        let mut drained = match tokio::time::timeout(deadline, &mut serve).await {
            Ok(_) => true,
            Err(_) => {
                tracing::warn!(?deadline, "drain timeout passed with requests in flight");
                serve.abort();
                false
            }
        };
        let ledger = match self.ledger {
            Some(l) => {
                // The last connections can end a moment before the request they were
                // serving is dropped and its row handed over (and shadow calls run
                // after the answer): wait for those rows within the same deadline.
                let left = deadline.saturating_sub(drain_started.elapsed());
                if drained && !l.wait_for_requests(left).await {
                    tracing::warn!(?deadline, "drain timeout passed with requests unrecorded");
                    drained = false;
                }
                l.shutdown().await?
            }
            None => LedgerStats::default(),
        };
        self.metrics_stop.cancel();
        // Sends the spans still queued; the SDK's shutdown blocks on its thread.
        let telemetry = self.telemetry;
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        tracing::info!(
            drained,
            written = ledger.written,
            dropped = ledger.dropped,
            waited = ledger.waited,
            "gateway stopped"
        );
        if ledger.dropped > 0 {
            tracing::warn!(
                dropped = ledger.dropped,
                queue_full = ledger.dropped_queue_full,
                write_failed = ledger.dropped_write_failed,
                duplicate = ledger.dropped_duplicate,
                shutting_down = ledger.dropped_shutting_down,
                writer_gone = ledger.dropped_writer_gone,
                write_errors = ledger.write_errors,
                "usage ledger rows were lost while running"
            );
        }
        Ok(ShutdownReport { drained, ledger })
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, the conventional "re-read your configuration" signal. Where it cannot be
/// listened for, `recv` never resolves.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn new() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        {
            Hangups {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}
