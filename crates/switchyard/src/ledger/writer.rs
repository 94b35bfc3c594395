//! The background task that turns queued [`RequestRecord`]s into rows.
//!
//! The task owns the queue's receiving end on both engines: it takes a batch, lingers
//! for it to fill, and commits it in one transaction, retrying and counting losses.
//! PostgreSQL's inserts go through sqlx's pool from the task itself; SQLite's are
//! handed to a thread of their own that owns a `rusqlite` connection
//! (`sqlite_writer.rs`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rows::{
    attempt_cells, bind_all, insert_sql, request_cells, ATTEMPT_COLUMNS, REQUEST_COLUMNS,
};
use super::sqlite_writer::{SqliteThread, ThreadError};
use super::{AttemptRecord, DropReason, RequestRecord, Shared};

/// The writer's way to the database: SQLite's writer thread with its one connection
/// (SQLite has a single writer anyway), or the PostgreSQL pool, from which each batch
/// takes a connection.
pub(super) enum WriterConn {
    Sqlite(SqliteThread),
    Postgres(PgPool),
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Sqlite(#[from] ThreadError),
    #[error(transparent)]
    Postgres(#[from] sqlx::Error),
}

/// Everything the writer task owns.
pub(super) struct WriterCtx {
    pub conn: WriterConn,
    pub rx: mpsc::Receiver<RequestRecord>,
    pub cancel: CancellationToken,
    pub shared: Arc<Shared>,
    pub batch_max: usize,
    /// The database, for logs (the file, or the server without credentials).
    pub label: String,
}

/// Delays before re-trying a failed batch. BUSY is already waited out by the
/// connection's busy timeout, so these only cover brief hiccups; persistent
/// failures (disk full, read-only file) lose the batch rather than stall the
/// queue forever.
const RETRY_BACKOFF: &[Duration] = &[Duration::from_millis(50), Duration::from_millis(500)];

/// Rows per INSERT statement on PostgreSQL. Every statement is a round trip to the
/// server, which costs more than the insert itself, so rows are sent in multi-row
/// statements. 32 rows × 37 columns (`rows::REQUEST_COLUMNS`) keeps well under the
/// bind-parameter limit and bounds the distinct statement texts (one per chunk length,
/// 1..=32 per table) so all stay in the prepared-statement cache.
const ROWS_PER_STATEMENT: usize = 32;

/// Statement texts indexed by row count (index 0 unused), built once per writer.
struct Statements {
    requests: Vec<String>,
    attempts: Vec<String>,
}

impl Statements {
    fn new() -> Self {
        // `ON CONFLICT … DO NOTHING` (not `OR IGNORE`) tolerates only a
        // duplicate key, so one bad request id cannot fail the other rows of
        // its batch; `RETURNING` tells which requests were really inserted so
        // a duplicate's attempts are not attached to the original.
        let requests = (0..=ROWS_PER_STATEMENT)
            .map(|n| {
                insert_sql(
                    "requests",
                    &REQUEST_COLUMNS,
                    n,
                    "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                )
            })
            .collect();
        let attempts = (0..=ROWS_PER_STATEMENT)
            .map(|n| {
                insert_sql(
                    "attempts",
                    &ATTEMPT_COLUMNS,
                    n,
                    "ON CONFLICT (request_id, attempt) DO NOTHING",
                )
            })
            .collect();
        Self { requests, attempts }
    }
}

/// The insert of `rows` rows from `table`. Chunks never exceed `ROWS_PER_STATEMENT`,
/// which the tables cover, so the error is for a table built wrong, not for data.
fn statement(table: &[String], rows: usize) -> Result<&str, sqlx::Error> {
    table
        .get(rows)
        .map(String::as_str)
        .ok_or_else(|| sqlx::Error::Protocol(format!("no insert prepared for {rows} rows")))
}

/// Runs until cancelled (or every sender is gone), then drains the queue and
/// closes the connection. Returns the number of request rows written.
/// How long the writer waits for a batch to fill before it commits what it has.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

pub(super) async fn run(ctx: WriterCtx) -> u64 {
    let WriterCtx {
        mut conn,
        mut rx,
        cancel,
        shared,
        batch_max,
        label,
    } = ctx;
    let stmts = Statements::new();
    let mut batch = Vec::with_capacity(batch_max);
    let mut written = 0u64;
    // Set while the database is failing: retrying every batch against a dead
    // disk would only make the queue (and the drop count) grow faster.
    let mut failing = false;

    loop {
        let n = tokio::select! {
            // Prefer queued work over the stop signal; the drain below catches
            // records that race with it.
            biased;
            n = rx.recv_many(&mut batch, batch_max) => n,
            () = cancel.cancelled() => break,
        };
        if n == 0 {
            break; // every sender dropped
        }
        // A transaction per record would cost more than the rows themselves (BEGIN
        // and COMMIT measured about 38k instructions per request in the benchmark's
        // profile). Linger briefly to let a batch form; the ledger is never on the
        // request path, so only its staleness grows, by at most LINGER.
        let linger_until = tokio::time::Instant::now() + LINGER;
        while batch.len() < batch_max && !cancel.is_cancelled() {
            let room = batch_max - batch.len();
            match tokio::time::timeout_at(linger_until, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let done = commit_batch(&mut conn, &stmts, &mut batch, &shared, &label, !failing).await;
        failing = done.is_none();
        written += done.unwrap_or(0);
    }

    // Closing the receiver makes every later `try_send` fail, so a record is
    // either in the queue now (and written below) or counted as dropped:
    // nothing can slip in after the drain.
    rx.close();
    while rx.recv_many(&mut batch, batch_max).await > 0 {
        match commit_batch(&mut conn, &stmts, &mut batch, &shared, &label, !failing).await {
            Some(w) => {
                failing = false;
                written += w;
            }
            None => {
                // Shutdown must finish within the process's grace period; a
                // database that just failed its retries will not recover in
                // time, so count the rest as lost instead of failing batch
                // after batch.
                let mut rest = 0u64;
                while rx.recv_many(&mut batch, batch_max).await > 0 {
                    rest += batch.len() as u64;
                    batch.clear();
                }
                if rest > 0 {
                    tracing::error!(database = %label, rows = rest,
                        "usage ledger failing at shutdown; discarding queued records");
                    shared.note_dropped(rest, DropReason::WriteFailed);
                }
                break;
            }
        }
    }

    // Closing the last connection checkpoints the WAL into the main file; the
    // thread answers once its connection is closed. The PostgreSQL pool is shared
    // with the key store and closes with it.
    if let WriterConn::Sqlite(thread) = conn {
        if let Err(e) = thread.close().await {
            tracing::warn!(database = %label, error = %e, "closing usage ledger failed");
        }
    }
    tracing::debug!(database = %label, written, "usage ledger writer stopped");
    written
}

/// Inserts and clears `batch`, retrying a failed transaction a couple of times
/// when `retry` is set. Returns the rows written, or `None` when the batch was
/// lost; lost and duplicate records are added to the dropped counter.
async fn commit_batch(
    conn: &mut WriterConn,
    stmts: &Statements,
    batch: &mut Vec<RequestRecord>,
    shared: &Shared,
    label: &str,
    retry: bool,
) -> Option<u64> {
    let total = batch.len() as u64;
    let mut retries = RETRY_BACKOFF.iter().filter(|_| retry);
    let written = loop {
        let e = match insert_batch(conn, stmts, batch).await {
            Ok(w) => break Some(w),
            Err(e) => e,
        };
        shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        // A writer thread that died took its batch with it: nothing left to retry.
        let retry = if batch.is_empty() {
            None
        } else {
            retries.next()
        };
        match retry {
            Some(delay) => {
                tracing::warn!(database = %label, error = %e, rows = total,
                    "usage ledger batch failed; retrying");
                tokio::time::sleep(*delay).await;
            }
            None => {
                tracing::error!(database = %label, error = %e, rows = total,
                    "usage ledger batch failed; records lost");
                break None;
            }
        }
    };
    batch.clear();
    match written {
        // Rows not inserted from a committed batch had a request id already written.
        Some(w) if w < total => shared.note_dropped(total - w, DropReason::Duplicate),
        Some(_) => {}
        None => shared.note_dropped(total, DropReason::WriteFailed),
    }
    shared
        .counters
        .written
        .fetch_add(written.unwrap_or(0), Ordering::Relaxed);
    written
}

/// The inserts of one batch inside the open PostgreSQL transaction `$tx`, evaluating
/// to the request rows written.
async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    stmts: &Statements,
    batch: &[RequestRecord],
) -> Result<u64, sqlx::Error> {
    let mut written = 0u64;
    let mut attempts: Vec<(&str, &AttemptRecord)> = Vec::new();
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::query(statement(&stmts.requests, chunk.len())?);
        for r in chunk {
            q = bind_all(q, &request_cells(r));
        }
        let inserted = q.fetch_all(&mut *tx).await?;
        written += inserted.len() as u64;
        if inserted.len() == chunk.len() {
            attempts.extend(chunk.iter().flat_map(attempts_of));
        } else {
            // Duplicate request id(s): the first occurrence was inserted (rows
            // go in order), later ones and ids already in the table were not.
            // Attach attempts only to the row that was really inserted.
            let mut ids = inserted
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<HashSet<_>, _>>()?;
            attempts.extend(
                chunk
                    .iter()
                    .filter(|r| ids.remove(&r.request_id))
                    .flat_map(attempts_of),
            );
        }
    }
    for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::query(statement(&stmts.attempts, chunk.len())?);
        for &(request_id, a) in chunk {
            q = bind_all(q, &attempt_cells(request_id, a));
        }
        q.execute(&mut *tx).await?;
    }
    // Content only exists for requests whose policy allows logging it: rare enough
    // for one statement each.
    for r in batch
        .iter()
        .filter(|r| r.content_prompt.is_some() || r.content_response.is_some())
    {
        sqlx::query(
            "INSERT INTO request_content (request_id, prompt, response) \
             SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM requests WHERE request_id = $1) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&r.request_id)
        .bind(r.content_prompt.as_deref())
        .bind(r.content_response.as_deref())
        .execute(&mut *tx)
        .await?;
    }
    Ok(written)
}

/// One transaction for the whole batch: in SQLite's WAL mode with
/// `synchronous=NORMAL`, as on PostgreSQL, the commit is the expensive part, so
/// amortising it is what makes the ledger keep up. SQLite's batch goes to the writer
/// thread and comes back (written or not) for the caller to clear or retry; if the
/// thread died with it, it comes back empty.
async fn insert_batch(
    conn: &mut WriterConn,
    stmts: &Statements,
    batch: &mut Vec<RequestRecord>,
) -> Result<u64, WriteError> {
    match conn {
        WriterConn::Sqlite(thread) => {
            let (back, result) = thread.write(std::mem::take(batch)).await;
            *batch = back;
            Ok(result?)
        }
        WriterConn::Postgres(pool) => Ok(insert_postgres(pool, stmts, batch).await?),
    }
}

async fn insert_postgres(
    pool: &PgPool,
    stmts: &Statements,
    batch: &[RequestRecord],
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let written = insert_rows(&mut tx, stmts, batch).await?;
    tx.commit().await?;
    Ok(written)
}

fn attempts_of(r: &RequestRecord) -> impl Iterator<Item = (&str, &AttemptRecord)> {
    r.attempts.iter().map(move |a| (r.request_id.as_str(), a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_have_one_placeholder_per_value() {
        let s = Statements::new();
        for n in 1..=ROWS_PER_STATEMENT {
            assert_eq!(
                s.requests[n].matches('$').count(),
                n * REQUEST_COLUMNS.len()
            );
            assert_eq!(
                s.attempts[n].matches('$').count(),
                n * ATTEMPT_COLUMNS.len()
            );
            // The last placeholder is the number of values.
            let last = format!("${})", n * REQUEST_COLUMNS.len());
            assert!(s.requests[n].contains(&last), "{}", s.requests[n]);
        }
        assert!(s.requests[1].starts_with("INSERT INTO requests (request_id, started_at_ms,"));
        assert!(s.requests[1].contains("VALUES ($1, $2, "));
        assert!(s.requests[2].contains(&format!("), (${}, ", REQUEST_COLUMNS.len() + 1)));
        assert!(s.requests[1].ends_with("DO NOTHING RETURNING request_id"));
    }
}
