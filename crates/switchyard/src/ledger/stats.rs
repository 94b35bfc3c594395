//! The dashboard's read side of the ledger: traffic, latency and errors over a time
//! window, and the recent requests with their attempts.
//!
//! Every query here reads; none runs on the request path (the admin API calls them).
//! The SQL is one text for both engines: numbered placeholders, integer arithmetic
//! (integer division truncates alike on SQLite and PostgreSQL), window functions for
//! the percentiles (nearest rank: the value at rank `ceil(p × n / 100)`), positional
//! `GROUP BY`, and `CAST(… AS BIGINT)` around sums (PostgreSQL's `SUM` of a `BIGINT`
//! is `NUMERIC`). SQLite files are opened read-only per call, as the spend report does.

pub mod channels;
pub mod contracts;
pub mod replay;
pub mod shadow;

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Connection;

use super::{connect, Database, LedgerError};
use crate::storage::Postgres;

/// A value bound to a numbered placeholder.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Real(f64),
    Text(String),
}

/// Runs `sql` with `args` on either engine and decodes each row as `T`.
async fn fetch<T>(db: &Database, sql: &str, args: &[Arg]) -> Result<Vec<T>, LedgerError>
where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    match db {
        Database::Sqlite(path) => {
            tokio::fs::metadata(path)
                .await
                .map_err(|source| LedgerError::Io {
                    path: path.clone(),
                    source,
                })?;
            let mut conn = connect(path, false).await?;
            let mut q = sqlx::query_as::<_, T>(sql);
            for a in args {
                q = match a {
                    Arg::Int(v) => q.bind(*v),
                    Arg::Real(v) => q.bind(*v),
                    Arg::Text(v) => q.bind(v.clone()),
                };
            }
            let rows = q
                .fetch_all(&mut conn)
                .await
                .map_err(|source| LedgerError::Sql {
                    path: path.clone(),
                    source,
                })?;
            let _ = conn.close().await;
            Ok(rows)
        }
        Database::Postgres(pg) => {
            let mut q = sqlx::query_as::<_, T>(sql);
            for a in args {
                q = match a {
                    Arg::Int(v) => q.bind(*v),
                    Arg::Real(v) => q.bind(*v),
                    Arg::Text(v) => q.bind(v.clone()),
                };
            }
            q.fetch_all(pg.pool()).await.map_err(|s| pg_err(pg, s))
        }
    }
}

fn pg_err(pg: &Postgres, source: sqlx::Error) -> LedgerError {
    LedgerError::Postgres {
        target: pg.target().to_owned(),
        source,
    }
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A half-open time range `[start_ms, end_ms)` cut into `buckets` equal buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    pub bucket_ms: i64,
}

impl Window {
    /// The window of `len` ending at `end_ms`, cut into buckets of `bucket_ms`.
    /// The start is aligned down to a bucket boundary, so that consecutive polls
    /// show the same buckets.
    pub fn ending_at(end_ms: i64, len_ms: i64, bucket_ms: i64) -> Window {
        let bucket_ms = bucket_ms.max(1);
        let end_aligned = end_ms.div_euclid(bucket_ms).saturating_add(1) * bucket_ms;
        Window {
            start_ms: end_aligned.saturating_sub(len_ms),
            end_ms,
            bucket_ms,
        }
    }

    /// How many buckets the window has.
    pub fn buckets(&self) -> usize {
        let span = self.end_ms.saturating_sub(self.start_ms).max(0);
        usize::try_from((span + self.bucket_ms - 1) / self.bucket_ms).unwrap_or(0)
    }

    /// Seconds the window has covered so far (at least 1).
    pub fn seconds(&self) -> f64 {
        (self.end_ms.saturating_sub(self.start_ms).max(1000) as f64) / 1000.0
    }
}

/// Latency figures of one group, in microseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50_us: Option<i64>,
    pub p99_us: Option<i64>,
}

/// One deployment's traffic over the window (requests it served or was tried last
/// for; `(none)` for requests refused before dispatch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentStats {
    pub deployment: String,
    pub provider: String,
    pub requests: u64,
    /// Requests answered with status >= 400 or with an error code.
    pub errors: u64,
    pub cost_nano_usd: i64,
    /// Upstream calls made to it (for requests started in the window), and how many
    /// of them failed: a failed-over request counts as a failure of the deployment
    /// that failed, though the request succeeded.
    pub attempts: u64,
    pub failed_attempts: u64,
    pub latency: Percentiles,
    /// Time to first token, streams only.
    pub ttft: Percentiles,
}

/// What the Overview page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    pub requests: u64,
    pub errors: u64,
    pub cost_nano_usd: i64,
    pub latency: Percentiles,
    pub ttft: Percentiles,
    /// Sorted by deployment name (bytes).
    pub deployments: Vec<DeploymentStats>,
    /// Requests per bucket and provider (the provider that served; `(none)` when
    /// refused before dispatch); `traffic[i]` is bucket `i` of the window.
    pub traffic: Vec<BTreeMap<String, u64>>,
}

type GroupTuple = (String, String, i64, i64, i64);

const WHERE_WINDOW: &str = "started_at_ms >= $1 AND started_at_ms < $2";

/// Nearest-rank p50 and p99 of latency and of time to first token, grouped by
/// `group` (an SQL expression; only constants of this file are spliced in), in one
/// pass: TTFT rows are ranked among the group's rows that have one (the partition by
/// `ttft_us IS NULL` keeps the others apart).
fn percentile_sql(group: &str) -> String {
    format!(
        "SELECT g, \
                MAX(CASE WHEN rl = (50 * nl + 99) / 100 THEN lat END), \
                MAX(CASE WHEN rl = (99 * nl + 99) / 100 THEN lat END), \
                MAX(CASE WHEN ttft IS NOT NULL AND rt = (50 * nt + 99) / 100 THEN ttft END), \
                MAX(CASE WHEN ttft IS NOT NULL AND rt = (99 * nt + 99) / 100 THEN ttft END) \
         FROM (SELECT {group} AS g, latency_us AS lat, ttft_us AS ttft, \
                      ROW_NUMBER() OVER (PARTITION BY {group} ORDER BY latency_us) AS rl, \
                      COUNT(*) OVER (PARTITION BY {group}) AS nl, \
                      ROW_NUMBER() OVER (PARTITION BY {group}, ttft_us IS NULL ORDER BY ttft_us) AS rt, \
                      COUNT(ttft_us) OVER (PARTITION BY {group}) AS nt \
               FROM requests WHERE {WHERE_WINDOW}) ranked \
         GROUP BY g"
    )
}

const DEPLOYMENT: &str = "COALESCE(deployment, '(none)')";
const ALL: &str = "'*'";

type PercentileTuple = (String, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

/// Latency and TTFT percentiles per group.
async fn percentiles(
    db: &Database,
    w: &Window,
    group: &str,
) -> Result<BTreeMap<String, (Percentiles, Percentiles)>, LedgerError> {
    let rows: Vec<PercentileTuple> = fetch(
        db,
        &percentile_sql(group),
        &[Arg::Int(w.start_ms), Arg::Int(w.end_ms)],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|(g, l50, l99, t50, t99)| {
            (
                g,
                (
                    Percentiles {
                        p50_us: l50,
                        p99_us: l99,
                    },
                    Percentiles {
                        p50_us: t50,
                        p99_us: t99,
                    },
                ),
            )
        })
        .collect())
}

/// Traffic, errors, cost and latency over `w`, in total, per deployment and per
/// provider and bucket.
pub async fn overview(db: &Database, w: &Window) -> Result<Overview, LedgerError> {
    let window = [Arg::Int(w.start_ms), Arg::Int(w.end_ms)];
    let groups: Vec<GroupTuple> = fetch(
        db,
        &format!(
            "SELECT {DEPLOYMENT}, COALESCE(MAX(provider), '(none)'), COUNT(*), \
                    CAST(COALESCE(SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) \
             FROM requests WHERE {WHERE_WINDOW} GROUP BY 1"
        ),
        &window,
    )
    .await?;
    let mut per_deployment = percentiles(db, w, DEPLOYMENT).await?;
    let (latency, ttft) = percentiles(db, w, ALL)
        .await?
        .remove("*")
        .unwrap_or_default();

    let mut out = Overview {
        latency,
        ttft,
        ..Overview::default()
    };
    for (deployment, provider, requests, errors, cost) in groups {
        let (latency, ttft) = per_deployment.remove(&deployment).unwrap_or_default();
        out.requests += count(requests);
        out.errors += count(errors);
        out.cost_nano_usd = out.cost_nano_usd.saturating_add(cost);
        out.deployments.push(DeploymentStats {
            latency,
            ttft,
            deployment,
            provider,
            requests: count(requests),
            errors: count(errors),
            cost_nano_usd: cost,
            attempts: 0,
            failed_attempts: 0,
        });
    }
    let attempts: Vec<(String, String, i64, i64)> = fetch(
        db,
        "SELECT a.deployment, MAX(a.provider), COUNT(*), \
                CAST(COALESCE(SUM(CASE WHEN a.error_class IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM requests r JOIN attempts a ON a.request_id = r.request_id \
         WHERE r.started_at_ms >= $1 AND r.started_at_ms < $2 GROUP BY 1",
        &window,
    )
    .await?;
    for (deployment, provider, n, failed) in attempts {
        let i = match out
            .deployments
            .iter()
            .position(|d| d.deployment == deployment)
        {
            Some(i) => i,
            None => {
                // Tried, but never the one that answered.
                out.deployments.push(DeploymentStats {
                    deployment,
                    provider,
                    ..DeploymentStats::default()
                });
                out.deployments.len() - 1
            }
        };
        if let Some(d) = out.deployments.get_mut(i) {
            d.attempts = count(n);
            d.failed_attempts = count(failed);
        }
    }
    out.deployments
        .sort_by(|a, b| a.deployment.as_bytes().cmp(b.deployment.as_bytes()));

    let buckets: Vec<(i64, String, i64)> = fetch(
        db,
        &format!(
            "SELECT (started_at_ms - $1) / $3, COALESCE(provider, '(none)'), COUNT(*) \
             FROM requests WHERE {WHERE_WINDOW} GROUP BY 1, 2"
        ),
        &[
            Arg::Int(w.start_ms),
            Arg::Int(w.end_ms),
            Arg::Int(w.bucket_ms),
        ],
    )
    .await?;
    out.traffic = vec![BTreeMap::new(); w.buckets()];
    for (bucket, provider, n) in buckets {
        let slot = usize::try_from(bucket)
            .ok()
            .and_then(|i| out.traffic.get_mut(i));
        if let Some(slot) = slot {
            slot.insert(provider, count(n));
        }
    }
    Ok(out)
}

/// Failed upstream calls of one deployment and class over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorClassCount {
    pub deployment: String,
    pub error_class: String,
    pub attempts: u64,
    /// The latest such attempt, unix ms.
    pub last_at_ms: i64,
}

/// Failed attempts per deployment and error class, of requests started in `w`
/// (read through the requests' time index), sorted by deployment then class.
pub async fn errors_by_class(
    db: &Database,
    w: &Window,
) -> Result<Vec<ErrorClassCount>, LedgerError> {
    let rows: Vec<(String, String, i64, i64)> = fetch(
        db,
        "SELECT a.deployment, a.error_class, COUNT(*), MAX(a.started_at_ms) \
         FROM requests r JOIN attempts a ON a.request_id = r.request_id \
         WHERE r.started_at_ms >= $1 AND r.started_at_ms < $2 AND a.error_class IS NOT NULL \
         GROUP BY 1, 2",
        &[Arg::Int(w.start_ms), Arg::Int(w.end_ms)],
    )
    .await?;
    let mut out: Vec<ErrorClassCount> = rows
        .into_iter()
        .map(|(deployment, error_class, n, last)| ErrorClassCount {
            deployment,
            error_class,
            attempts: count(n),
            last_at_ms: last,
        })
        .collect();
    out.sort_by(|a, b| {
        (a.deployment.as_bytes(), a.error_class.as_bytes())
            .cmp(&(b.deployment.as_bytes(), b.error_class.as_bytes()))
    });
    Ok(out)
}

/// Which rows [`recent_requests`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    /// A key id (`vk_…`, `cfg:…`) or a key name.
    pub key: Option<String>,
    pub team: Option<String>,
    /// The logical model the client asked for.
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
    /// Only rows started before this (unix ms): the next page's cursor.
    pub before_ms: Option<i64>,
    /// At most this many rows (1 to 500).
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this HTTP status.
    Code(u16),
    /// Status < 400 and no error code.
    Ok,
    /// Status >= 400 or an error code.
    Error,
}

/// One `requests` row, as the Requests page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub request_id: String,
    pub started_at_ms: i64,
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub team_id: Option<String>,
    pub logical_model: Option<String>,
    pub deployment: Option<String>,
    pub provider: Option<String>,
    pub status: i64,
    pub error_code: Option<String>,
    pub streamed: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nano_usd: i64,
    pub latency_us: i64,
    pub ttft_us: Option<i64>,
}

const REQUEST_COLUMNS: &str = "request_id, started_at_ms, key_id, key_name, team_id, \
     logical_model, deployment, provider, status, error_code, streamed, prompt_tokens, \
     completion_tokens, cost_nano_usd, latency_us, ttft_us";

/// [`RequestRow`] as the query returns it, in [`REQUEST_COLUMNS`]' order.
type RequestTuple = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
);

fn request_row(t: RequestTuple) -> RequestRow {
    let (
        request_id,
        started_at_ms,
        key_id,
        key_name,
        team_id,
        logical_model,
        deployment,
        provider,
        status,
        error_code,
        streamed,
        prompt_tokens,
        completion_tokens,
        cost_nano_usd,
        latency_us,
        ttft_us,
    ) = t;
    RequestRow {
        request_id,
        started_at_ms,
        key_id,
        key_name,
        team_id,
        logical_model,
        deployment,
        provider,
        status,
        error_code,
        streamed,
        prompt_tokens,
        completion_tokens,
        cost_nano_usd,
        latency_us,
        ttft_us,
    }
}

/// The newest rows matching `f`, newest first.
pub async fn recent_requests(
    db: &Database,
    f: &RequestFilter,
) -> Result<Vec<RequestRow>, LedgerError> {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut push = |clause: &str, arg: Option<Arg>| {
        if let Some(a) = arg {
            args.push(a);
            let n = args.len();
            clauses.push(clause.replace('?', &format!("${n}")));
        }
    };
    push("(key_id = ? OR key_name = ?)", f.key.clone().map(Arg::Text));
    push("team_id = ?", f.team.clone().map(Arg::Text));
    push("logical_model = ?", f.model.clone().map(Arg::Text));
    push("started_at_ms < ?", f.before_ms.map(Arg::Int));
    match f.status {
        Some(StatusFilter::Code(c)) => push("status = ?", Some(Arg::Int(i64::from(c)))),
        Some(StatusFilter::Ok) => clauses.push("status < 400 AND error_code IS NULL".into()),
        Some(StatusFilter::Error) => {
            clauses.push("(status >= 400 OR error_code IS NOT NULL)".into())
        }
        None => {}
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let limit = f.limit.clamp(1, 500);
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests {filter} \
         ORDER BY started_at_ms DESC, request_id DESC LIMIT {limit}"
    );
    let rows: Vec<RequestTuple> = fetch(db, &sql, &args).await?;
    Ok(rows.into_iter().map(request_row).collect())
}

/// One upstream call of a request, as the Requests page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub attempt: i64,
    pub started_at_ms: i64,
    pub deployment: String,
    pub provider: String,
    pub upstream_model: String,
    pub status: Option<i64>,
    pub error_class: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nano_usd: i64,
    pub latency_us: i64,
}

type AttemptTuple = (
    i64,
    i64,
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
);

/// A request's row and its attempts in order; `None` when there is no such row.
pub async fn request_detail(
    db: &Database,
    request_id: &str,
) -> Result<Option<(RequestRow, Vec<AttemptRow>)>, LedgerError> {
    let id = [Arg::Text(request_id.to_owned())];
    let row: Vec<RequestTuple> = fetch(
        db,
        &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = $1"),
        &id,
    )
    .await?;
    let Some(row) = row.into_iter().next().map(request_row) else {
        return Ok(None);
    };
    let attempts: Vec<AttemptTuple> = fetch(
        db,
        "SELECT attempt, started_at_ms, deployment, provider, upstream_model, status, \
                error_class, prompt_tokens, completion_tokens, cost_nano_usd, latency_us \
         FROM attempts WHERE request_id = $1 ORDER BY attempt",
        &id,
    )
    .await?;
    let attempts = attempts
        .into_iter()
        .map(
            |(
                attempt,
                started_at_ms,
                deployment,
                provider,
                upstream_model,
                status,
                error_class,
                prompt_tokens,
                completion_tokens,
                cost_nano_usd,
                latency_us,
            )| AttemptRow {
                attempt,
                started_at_ms,
                deployment,
                provider,
                upstream_model,
                status,
                error_class,
                prompt_tokens,
                completion_tokens,
                cost_nano_usd,
                latency_us,
            },
        )
        .collect();
    Ok(Some((row, attempts)))
}
