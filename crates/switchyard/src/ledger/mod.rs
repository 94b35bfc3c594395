//! Usage ledger: one SQLite row per client request and one per upstream attempt.
//!
//! The request path never touches the database. It hands a [`RequestRecord`] to a
//! [`LedgerSink`], which does a non-blocking `try_send` into a bounded channel; a
//! background writer task owned by [`Ledger`] drains that channel in batches and
//! inserts each batch in one transaction (on SQLite through a thread of its own that
//! owns a `rusqlite` connection; on PostgreSQL through sqlx's pool). The ledger is the audit of who spent
//! what, so a row is not given up lightly: when the channel is full (the database
//! is slower than the traffic, or locked by another process), a finishing request
//! waits for room, for at most `ledger.max_wait_ms` (`on_overload = "block"`, the
//! default), or gives its row up at once (`"drop"`). Every lost row is counted by
//! reason in [`LedgerCounters`] and reported at shutdown. Budgets are charged in
//! memory before the row is submitted, so a lost row never un-spends anything.
//!
//! Money is integer nano-USD (1e-9 USD) everywhere, never a float, so sums are
//! exact. Times are UTC.
//!
//! [`spend_report`] and [`render_spend_table`] back the `switchyard spend` CLI.

pub mod retention;
mod rows;
mod spend;
mod sqlite_writer;
pub mod stats;
pub mod tracker;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;
use tokio::sync::mpsc;

use crate::storage::sqlite::{self, user_version, SCHEMA_VERSION};
pub use crate::storage::Database;

use crate::types::Usage;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};

pub use crate::config::{OnOverload, DEFAULT_LEDGER_MAX_WAIT_MS};

pub use spend::{
    render_spend_table, spend_query, spend_report, SpendGroup, SpendQuery, SpendReader, SpendRow,
    SpentBy,
};

/// One client request, as the gateway saw it.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    /// `req_…`, unique per request; the `requests` primary key.
    pub request_id: String,
    /// When the request arrived, unix milliseconds (UTC).
    pub started_at_ms: i64,
    /// The caller's key id (`vk_…` for virtual keys, `cfg:<name>` for keys of the
    /// config file): what spend is attributed to. `None` when authentication failed.
    pub key_id: Option<String>,
    /// The caller's key name, for reports.
    pub key_name: Option<String>,
    /// `"chat.completions"` or `"embeddings"`.
    pub endpoint: &'static str,
    /// The model name the client asked for.
    pub logical_model: Option<String>,
    /// The deployment that finally served (or was tried last).
    pub deployment: Option<String>,
    /// Provider of `deployment`.
    pub provider: Option<String>,
    /// Provider-side model name of `deployment`.
    pub upstream_model: Option<String>,
    /// HTTP status sent to the client (200 even if the stream later failed).
    pub status: u16,
    /// Low-cardinality error label, e.g. `"upstream_timeout"`, `"stream_cut"`.
    pub error_code: Option<String>,
    /// Whether the response was streamed (SSE).
    pub streamed: bool,
    /// Whether the client went away before the response was complete.
    pub client_disconnected: bool,
    /// Usage billed for the request (normally that of the serving attempt).
    pub usage: Usage,
    /// Cost of the request in nano-USD: what was paid (contracted prices where a
    /// contract sets them).
    pub cost_nano_usd: i64,
    /// The same usage at list prices.
    pub list_cost_nano_usd: i64,
    /// Microseconds until the last byte was sent (or the error).
    pub latency_us: i64,
    /// Microseconds to the first content chunk for streams; `None` otherwise.
    pub ttft_us: Option<i64>,
    /// Upstream calls made for this request, in order; empty when refused
    /// before dispatch.
    pub attempts: Vec<AttemptRecord>,
    /// The caller's team, when its key belongs to one.
    pub team_id: Option<String>,
    /// What governance decided: `allowed` or `denied:<reason>`.
    pub policy_decision: Option<String>,
    /// What the PII guardrail found and did, e.g. `redact:EMAIL=2` (never values).
    pub redactions: Option<String>,
    /// Prompt content (after redaction), only when the caller's policy allows logging it.
    pub content_prompt: Option<String>,
    /// Response content, under the same condition.
    pub content_response: Option<String>,
    /// The request's trace, when it is traced (not a column: the exporter's).
    pub trace: Option<TraceIds>,
    /// The serving answer's finish reason, when one was seen (not a column).
    pub finish_reason: Option<String>,
    /// The channel profile the request ran under.
    pub channel: Option<String>,
    /// Whether the request began a conversation turn (its last message the user's).
    pub turn_start: bool,
    /// Whether the answer came from the response cache (no upstream call, cost 0).
    pub cache_hit: bool,
    /// Whether the request could have been answered from the cache and was not (not a
    /// column: the metrics').
    pub cache_missed: bool,
    /// What a what-if replay needs to route the request again (no content); `None`
    /// when it never reached routing.
    pub replay: Option<ReplayFacts>,
    /// Set on a shadow row (`kind = 'shadow'`): a client's request mirrored to its
    /// model's shadow candidate.
    pub shadow: Option<ShadowFacts>,
}

/// What a shadow row records beyond a request's columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowFacts {
    /// The client's request it mirrors.
    pub of: String,
    /// Agreement with the client's answer, 0 to 1; `None` when not compared.
    pub agreement: Option<f64>,
}

/// What routing was given for a request, kept so that another configuration's
/// routing can be asked the same question later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayFacts {
    /// `tools`, `vision`, `json_schema`, comma-separated; empty for none.
    pub needs: String,
    /// The output bound the request was routed with.
    pub max_tokens: Option<u64>,
    /// The caller's allowed regions as a JSON array; `None`: any.
    pub allowed_regions: Option<String>,
    /// The caller's required data tags as a JSON array.
    pub required_tags: String,
}

/// A traced request's ids (W3C trace context): the trace, the caller's span it
/// continues (0 when it started here) and the request's own span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: u128,
    pub parent_span_id: u64,
    pub span_id: u64,
}

/// What watches every request the ledger sees, whatever becomes of its row (the
/// ledger may be off): metrics and traces. The ledger only calls it, so it needs
/// nothing of the layer that implements it.
pub trait Observer: Send + Sync + 'static {
    /// A request began (it is now in flight).
    fn started(&self);
    /// Whether to trace a request that came with this `traceparent` header (or none),
    /// and its ids if so.
    fn continue_trace(&self, traceparent: Option<&str>) -> Option<TraceIds>;
    /// The request is over: its complete record, just before it is queued.
    fn finished(&self, record: &RequestRecord);
}

/// One upstream call made on behalf of a request.
#[derive(Debug, Clone, Default)]
pub struct AttemptRecord {
    /// 1-based attempt number within the request.
    pub attempt: u32,
    /// When the upstream call started, unix milliseconds (UTC).
    pub started_at_ms: i64,
    /// Deployment called.
    pub deployment: String,
    /// Provider of the deployment.
    pub provider: String,
    /// Provider-side model name.
    pub upstream_model: String,
    /// Upstream HTTP status; `None` when no response arrived (connect error, timeout).
    pub status: Option<u16>,
    /// Failure class: `"timeout"`, `"connect"`, `"rate_limited"`, `"upstream_5xx"`, …
    pub error_class: Option<String>,
    /// Usage reported (or estimated) for this call.
    pub usage: Usage,
    /// Cost of this call in nano-USD, at the effective (contracted) price.
    pub cost_nano_usd: i64,
    /// The same usage at the deployment's list price.
    pub list_cost_nano_usd: i64,
    /// Duration of this call in microseconds.
    pub latency_us: i64,
    /// The provider's `gen_ai.provider.name` (not a column).
    pub provider_kind: &'static str,
    /// This call's span, when the request is traced (not a column).
    pub span_id: u64,
}

/// Errors opening, migrating or querying the ledger. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Filesystem error (creating the parent directory, missing file for reports).
    #[error("ledger {}: {source}", path.display())]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open the file.
    #[error("ledger {}: cannot open database: {source}", path.display())]
    Open {
        /// The ledger file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying a schema migration failed.
    #[error("ledger {}: migrating schema to version {version} failed: {source}", path.display())]
    Migrate {
        /// The ledger file.
        path: PathBuf,
        /// Schema version being applied.
        version: i64,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The file's schema version is not one this build understands.
    #[error(
        "ledger {}: schema version {found} is not supported (this build knows 1..={supported}); \
         not a Switchyard ledger, or written by a newer Switchyard",
        path.display()
    )]
    Schema {
        /// The ledger file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A query failed.
    #[error("ledger {}: {source}", path.display())]
    Sql {
        /// The ledger file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite writer thread could not start or open the file for writing.
    #[error("ledger {}: cannot open database for writing: {source}", path.display())]
    WriterOpen {
        /// The ledger file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The writer task died (panicked) instead of shutting down cleanly.
    #[error("ledger {}: writer task failed: {reason}", path.display())]
    Writer {
        /// The ledger file (or the PostgreSQL database, without credentials).
        path: PathBuf,
        /// What happened to the task.
        reason: String,
    },
    /// A query on the PostgreSQL ledger failed.
    #[error("ledger {target}: {source}")]
    Postgres {
        /// `postgres://user@host:port/db`, without the password.
        target: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Default bound of the record queue between request handlers and the writer.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;
/// Default maximum number of requests inserted per transaction.
pub const DEFAULT_BATCH_MAX: usize = 512;

/// How to open a [`Ledger`].
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Where the rows go: an SQLite file (created with its parent directory if
    /// missing) or the PostgreSQL database.
    pub database: Database,
    /// Records that may wait for the writer before the queue counts as full
    /// (values below 1 are treated as 1).
    pub queue_capacity: usize,
    /// Maximum requests per insert transaction (values below 1 are treated as 1).
    pub batch_max: usize,
    /// What a record does when the queue is full.
    pub on_overload: OnOverload,
    /// With [`OnOverload::Block`], how long a record waits for room before it is
    /// dropped and counted.
    pub max_wait: Duration,
    /// Requests older than this many days are deleted in the background.
    pub retention_days: Option<u32>,
}

impl LedgerOptions {
    /// Options for the SQLite file `path` with the default queue capacity, batch size
    /// and overload behaviour.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::on(Database::Sqlite(path.into()))
    }

    /// Options for `database` with the defaults of [`LedgerOptions::new`].
    pub fn on(database: Database) -> Self {
        Self {
            database,
            retention_days: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_max: DEFAULT_BATCH_MAX,
            on_overload: OnOverload::Block,
            max_wait: Duration::from_millis(DEFAULT_LEDGER_MAX_WAIT_MS),
        }
    }
}

/// What became of the records submitted to one ledger, as atomics: the request
/// path, the writer task and a metrics exporter read and bump them without a lock.
/// Shared by every sink clone and the writer; [`LedgerCounters::snapshot`] reads
/// them all.
#[derive(Debug, Default)]
pub struct LedgerCounters {
    written: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_write_failed: AtomicU64,
    dropped_duplicate: AtomicU64,
    dropped_shutting_down: AtomicU64,
    dropped_writer_gone: AtomicU64,
    waited: AtomicU64,
    write_errors: AtomicU64,
}

impl LedgerCounters {
    /// The counts as of now (each read on its own; they may be a moment apart).
    pub fn snapshot(&self) -> LedgerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = LedgerStats {
            written: get(&self.written),
            dropped: 0,
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_write_failed: get(&self.dropped_write_failed),
            dropped_duplicate: get(&self.dropped_duplicate),
            dropped_shutting_down: get(&self.dropped_shutting_down),
            dropped_writer_gone: get(&self.dropped_writer_gone),
            waited: get(&self.waited),
            write_errors: get(&self.write_errors),
        };
        s.dropped = s
            .dropped_queue_full
            .saturating_add(s.dropped_write_failed)
            .saturating_add(s.dropped_duplicate)
            .saturating_add(s.dropped_shutting_down)
            .saturating_add(s.dropped_writer_gone);
        s
    }

    fn counter(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::ShuttingDown => &self.dropped_shutting_down,
            DropReason::WriterGone => &self.dropped_writer_gone,
            DropReason::WriteFailed => &self.dropped_write_failed,
            DropReason::Duplicate => &self.dropped_duplicate,
        }
    }
}

/// Counters reported by [`Ledger::shutdown`] and [`Ledger::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Request rows committed to the database.
    pub written: u64,
    /// Request records lost, for any reason: the sum of the `dropped_*` counts.
    pub dropped: u64,
    /// Lost because the queue was full: at once with `on_overload = "drop"`, or
    /// after waiting `max_wait_ms` with `block`.
    pub dropped_queue_full: u64,
    /// Lost because their batch failed to commit after its retries (disk full,
    /// read-only file, a broken database).
    pub dropped_write_failed: u64,
    /// A second record with a `request_id` already written (a bug upstream).
    pub dropped_duplicate: u64,
    /// Submitted after shutdown began.
    pub dropped_shutting_down: u64,
    /// Submitted after the writer task stopped without a shutdown.
    pub dropped_writer_gone: u64,
    /// Records that found the queue full and waited for room (`on_overload =
    /// "block"`); those not written in time are also in `dropped_queue_full`.
    pub waited: u64,
    /// Insert transactions that failed, retries included.
    pub write_errors: u64,
}

/// Creates the file (and its directory) if needed and brings its schema up to date,
/// without starting a writer: for the governance store and the CLI, which share the
/// ledger's file.
pub async fn prepare(path: &Path) -> Result<(), LedgerError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| LedgerError::Io {
                path: path.to_owned(),
                source,
            })?;
    }
    let mut conn = connect(path, true).await?;
    migrate(&mut conn, path).await?;
    let _ = conn.close().await;
    Ok(())
}

/// Minimum spacing between "records dropped" warnings, so a saturated queue
/// does not turn into a log flood on top of the overload.
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a record was lost: which counter it goes to, and the warning's wording.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    QueueFull,
    ShuttingDown,
    WriterGone,
    WriteFailed,
    Duplicate,
}

/// State shared by every sink clone and the writer task.
#[derive(Debug)]
struct Shared {
    /// Set when shutdown begins; later records are dropped without queueing.
    closing: AtomicBool,
    counters: Arc<LedgerCounters>,
    /// Reference point for `last_warn_ms` (Instant is not atomic).
    epoch: Instant,
    /// Milliseconds since `epoch` of the last drop warning; `u64::MAX` = never.
    last_warn_ms: AtomicU64,
    /// One token per record still in the making: a request's tracker from its start
    /// until its row is queued, and a row waiting for room. Shutdown waits for them,
    /// since a connection can end (and the server report drained) a moment before
    /// the task that dropped its request has handed the row over.
    in_flight: TaskTracker,
}

impl Shared {
    fn new() -> Self {
        Self {
            closing: AtomicBool::new(false),
            counters: Arc::new(LedgerCounters::default()),
            epoch: Instant::now(),
            last_warn_ms: AtomicU64::new(u64::MAX),
            in_flight: TaskTracker::new(),
        }
    }

    /// Whether a rate-limited warning may be logged now; at most one caller
    /// wins per interval, across threads.
    fn warn_allowed(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let interval = u64::try_from(DROP_WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < interval {
            return false;
        }
        self.last_warn_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn note_dropped(&self, n: u64, reason: DropReason) {
        self.counters
            .counter(reason)
            .fetch_add(n, Ordering::Relaxed);
        if self.warn_allowed() {
            let why = match reason {
                DropReason::QueueFull => "queue full (writer cannot keep up)",
                DropReason::ShuttingDown => "ledger is shutting down",
                DropReason::WriterGone => "writer task has stopped",
                DropReason::WriteFailed => "database write failed",
                DropReason::Duplicate => "duplicate request id",
            };
            let stats = self.counters.snapshot();
            tracing::warn!(
                dropped_total = stats.dropped,
                dropped_queue_full = stats.dropped_queue_full,
                dropped_write_failed = stats.dropped_write_failed,
                "usage ledger dropped records: {why}"
            );
        }
    }

    /// The reason for a record refused by a closed channel.
    fn closed_reason(&self) -> DropReason {
        if self.closing.load(Ordering::Acquire) {
            DropReason::ShuttingDown
        } else {
            DropReason::WriterGone
        }
    }
}

#[derive(Clone)]
struct SinkInner {
    tx: mpsc::Sender<RequestRecord>,
    shared: Arc<Shared>,
    on_overload: OnOverload,
    max_wait: Duration,
}

impl SinkInner {
    /// Queues `rec` if there is room. Gives it back only when the queue is full and
    /// the record should wait for room (`on_overload = "block"`); every other
    /// failure is counted here.
    fn try_queue(&self, rec: RequestRecord) -> Option<RequestRecord> {
        if self.shared.closing.load(Ordering::Acquire) {
            self.shared.note_dropped(1, DropReason::ShuttingDown);
            return None;
        }
        match self.tx.try_send(rec) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(rec)) => match self.on_overload {
                OnOverload::Drop => {
                    self.shared.note_dropped(1, DropReason::QueueFull);
                    None
                }
                OnOverload::Block => {
                    self.shared.counters.waited.fetch_add(1, Ordering::Relaxed);
                    Some(rec)
                }
            },
            // The writer closes the receiver when shutdown begins, so this is
            // also how a record racing with shutdown ends up counted.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.note_dropped(1, self.shared.closed_reason());
                None
            }
        }
    }

    /// Waits up to `max_wait` for room, then queues the record in `slot`, or counts
    /// it lost. The record stays in `slot` while waiting, so that a caller dropped
    /// half-way can hand it on.
    async fn wait_for_room(&self, slot: &mut Option<RequestRecord>) {
        let permit = tokio::time::timeout(self.max_wait, self.tx.reserve()).await;
        let Some(rec) = slot.take() else {
            return;
        };
        match permit {
            Ok(Ok(permit)) => permit.send(rec),
            Ok(Err(_)) => self.shared.note_dropped(1, self.shared.closed_reason()),
            Err(_) => {
                tracing::error!(
                    waited_ms = u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX),
                    "usage ledger queue stayed full; a request's record is lost"
                );
                self.shared.note_dropped(1, DropReason::QueueFull);
            }
        }
    }

    /// Waits for room on a task of its own, for a record whose submitter cannot wait.
    fn wait_in_background(&self, rec: RequestRecord) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.note_dropped(1, DropReason::QueueFull);
            return;
        };
        let inner = self.clone();
        let in_flight = self.shared.in_flight.token();
        runtime.spawn(async move {
            let _in_flight = in_flight;
            let mut slot = Some(rec);
            inner.wait_for_room(&mut slot).await;
        });
    }
}

/// A record waiting for room in the queue. Dropped before it got in (its request's
/// task was cancelled), it hands the record to a background wait instead of losing it.
struct Waiting {
    inner: SinkInner,
    slot: Option<RequestRecord>,
    _in_flight: TaskTrackerToken,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(rec) = self.slot.take() {
            self.inner.wait_in_background(rec);
        }
    }
}

/// Handle used by request handlers to submit records. Cheap to clone.
#[derive(Clone)]
pub struct LedgerSink {
    /// `None` for [`LedgerSink::disabled`].
    inner: Option<SinkInner>,
    /// Sees every record, written or not.
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for LedgerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSink")
            .field("enabled", &self.inner.is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl LedgerSink {
    /// Queues `rec` for the writer; the returned future waits, when the queue is
    /// full and `on_overload = "block"`, up to `max_wait` for room. The record is
    /// queued (or counted) even if the future is dropped unpolled: it then waits on
    /// a task of its own. With `drop`, or when there is room, the future is ready at
    /// once.
    pub fn submit(&self, rec: RequestRecord) -> impl std::future::Future<Output = ()> + Send {
        let waiting = self.inner.as_ref().and_then(|inner| {
            inner.try_queue(rec).map(|rec| Waiting {
                inner: inner.clone(),
                slot: Some(rec),
                _in_flight: inner.shared.in_flight.token(),
            })
        });
        async move {
            if let Some(mut w) = waiting {
                let Waiting { inner, slot, .. } = &mut w;
                inner.wait_for_room(slot).await;
            }
        }
    }

    /// Queues `rec` without waiting, for callers that cannot (a request dropped
    /// with its client). When the queue is full it is dropped and counted
    /// (`on_overload = "drop"`), or waits for room on a task of its own (`block`).
    pub fn record(&self, rec: RequestRecord) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Some(rec) = inner.try_queue(rec) {
            inner.wait_in_background(rec);
        }
    }

    /// A sink that discards every record and counts nothing ("ledger off").
    pub fn disabled() -> LedgerSink {
        LedgerSink {
            inner: None,
            observer: None,
        }
    }

    /// The same sink, with `observer` shown every request.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> LedgerSink {
        self.observer = Some(observer);
        self
    }

    pub fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.as_ref()
    }

    /// A token that keeps [`Ledger::wait_for_requests`] waiting while it lives;
    /// `None` when the ledger is off.
    pub(crate) fn in_flight(&self) -> Option<TaskTrackerToken> {
        self.inner.as_ref().map(|i| i.shared.in_flight.token())
    }

    /// Records waiting in the queue for the writer.
    pub fn queue_depth(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.tx.max_capacity() - i.tx.capacity())
    }

    /// The ledger's counters (written, dropped by reason); `None` when it is off.
    pub fn stats(&self) -> Option<LedgerStats> {
        self.inner.as_ref().map(|i| i.shared.counters.snapshot())
    }

    /// Whether records go anywhere (false for [`LedgerSink::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Records dropped so far by this ledger (shared by all clones).
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.shared.counters.snapshot().dropped)
    }

    /// The ledger's counters (shared by all clones); `None` when disabled.
    pub fn counters(&self) -> Option<Arc<LedgerCounters>> {
        self.inner.as_ref().map(|i| i.shared.counters.clone())
    }
}

/// An open ledger: owns the writer task (and, on SQLite, through it the writer thread
/// and its connection).
///
/// Call [`Ledger::shutdown`] on graceful shutdown so queued records are
/// committed. Dropping a `Ledger` without it still tells the writer to drain
/// and stop, but nobody waits for that to finish.
pub struct Ledger {
    database: Database,
    sink: LedgerSink,
    shared: Arc<Shared>,
    /// Cancels the writer if the `Ledger` is dropped without `shutdown`.
    stop: DropGuard,
    task: JoinHandle<u64>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("database", &self.database)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (creating if needed) the SQLite file and applies pending migrations
    /// (PostgreSQL was migrated when it connected), then starts the writer task, and
    /// the retention task when `retention_days` is set. Must be called inside a Tokio
    /// runtime.
    pub async fn open(opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        let database = opts.database.clone();
        let conn = match &database {
            Database::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|source| LedgerError::Io {
                            path: path.clone(),
                            source,
                        })?;
                }
                let mut conn = connect(path, true).await?;
                migrate(&mut conn, path).await?;
                // The writer thread opens its own connection to the migrated file.
                let _ = conn.close().await;
                let thread = sqlite_writer::SqliteThread::start(path)
                    .await
                    .map_err(|source| LedgerError::WriterOpen {
                        path: path.clone(),
                        source,
                    })?;
                writer::WriterConn::Sqlite(thread)
            }
            Database::Postgres(pg) => writer::WriterConn::Postgres(pg.pool().clone()),
        };

        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(writer::run(writer::WriterCtx {
            conn,
            rx,
            cancel: cancel.clone(),
            shared: shared.clone(),
            batch_max: opts.batch_max.max(1),
            label: database.to_string(),
        }));
        if let Some(days) = opts.retention_days {
            tokio::spawn(retention::run(
                database.clone(),
                retention::Retention::days(days),
                cancel.clone(),
            ));
        }
        Ok(Ledger {
            database,
            sink: LedgerSink {
                inner: Some(SinkInner {
                    tx,
                    shared: shared.clone(),
                    on_overload: opts.on_overload,
                    max_wait: opts.max_wait,
                }),
                observer: None,
            },
            shared,
            stop: cancel.drop_guard(),
            task,
        })
    }

    /// A handle for request handlers.
    pub fn sink(&self) -> LedgerSink {
        self.sink.clone()
    }

    /// Where this ledger writes.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Counters so far; `written` lags until batches commit.
    pub fn stats(&self) -> LedgerStats {
        self.shared.counters.snapshot()
    }

    /// The live counters, for a metrics exporter.
    pub fn counters(&self) -> Arc<LedgerCounters> {
        self.shared.counters.clone()
    }

    /// Waits up to `limit` until every request tracker of this ledger has handed its
    /// row over (and every row waiting for room has got in or been counted). Returns
    /// whether they all did. Called once the server has stopped serving, before
    /// [`Ledger::shutdown`], so that a request dropped with its connection in the
    /// last moment is written rather than counted as lost.
    pub async fn wait_for_requests(&self, limit: Duration) -> bool {
        self.shared.in_flight.close();
        tokio::time::timeout(limit, self.shared.in_flight.wait())
            .await
            .is_ok()
    }

    /// Stops accepting records, waits for the writer to commit everything
    /// already queued, and closes the database. Records submitted from now on
    /// (by surviving sink clones) are counted as dropped.
    pub async fn shutdown(self) -> Result<LedgerStats, LedgerError> {
        let Ledger {
            database,
            sink,
            shared,
            stop,
            task,
        } = self;
        shared.closing.store(true, Ordering::Release);
        drop(sink);
        stop.disarm().cancel();
        task.await.map_err(|e| LedgerError::Writer {
            path: PathBuf::from(database.to_string()),
            reason: e.to_string(),
        })?;
        Ok(shared.counters.snapshot())
    }
}

/// Opens one SQLite connection. The writer needs exactly one (SQLite has a single
/// writer anyway), and reports open their own short-lived one.
async fn connect(path: &Path, create: bool) -> Result<SqliteConnection, LedgerError> {
    sqlite::connect(path, create)
        .await
        .map_err(|source| LedgerError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Brings the file's schema up to date.
async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<(), LedgerError> {
    sqlite::migrate(conn, path).await.map_err(|e| match e {
        sqlite::MigrateError::Sql { version, source } => LedgerError::Migrate {
            path: path.to_owned(),
            version,
            source,
        },
        sqlite::MigrateError::Schema { found } => LedgerError::Schema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        },
    })
}

/// Saturating u64 → i64 for the signed 64-bit integers of both engines.
fn to_sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
