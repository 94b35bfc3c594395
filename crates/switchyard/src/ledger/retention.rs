//! Ledger retention (`ledger.retention_days`): requests older than the limit are
//! deleted, with their attempts and content (the foreign keys cascade), in small
//! batches.
//!
//! Each batch is one short statement of its own (its own transaction) deleting at most
//! [`Retention::batch_rows`] requests, and batches are separated by a pause, so the
//! writer never waits long for a lock: on SQLite a batch holds the single write lock
//! for a few milliseconds, on PostgreSQL it touches only old rows the writer never
//! inserts. It runs when the ledger opens and then every [`Retention::every`].

use std::time::Duration;

use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::{connect, Database, LedgerError};

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// How old rows are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rows whose `started_at_ms` is older than this (ms before now) are deleted.
    pub max_age_ms: i64,
    /// Most requests deleted by one statement.
    pub batch_rows: i64,
    /// Pause between two batches, which lets the writer's commits through.
    pub pause: Duration,
    /// Time between two runs.
    pub every: Duration,
}

impl Retention {
    /// `ledger.retention_days = days`: 500 requests per batch, 50 ms apart, hourly.
    pub fn days(days: u32) -> Retention {
        Retention {
            max_age_ms: i64::from(days).saturating_mul(DAY_MS),
            batch_rows: 500,
            pause: Duration::from_millis(50),
            every: Duration::from_secs(3600),
        }
    }
}

/// The one statement of a batch, the same on both engines: the subquery bounds the
/// rows, the index on `started_at_ms` finds them.
const DELETE_BATCH: &str = "DELETE FROM requests WHERE request_id IN \
     (SELECT request_id FROM requests WHERE started_at_ms < $1 LIMIT $2)";

/// Deletes the requests that started before `cutoff_ms` (and their attempts and
/// content), `r.batch_rows` at a time with `r.pause` between batches, until none is
/// left or `cancel` fires. Returns the requests deleted.
pub async fn prune(
    db: &Database,
    cutoff_ms: i64,
    r: &Retention,
    cancel: &CancellationToken,
) -> Result<u64, LedgerError> {
    let limit = r.batch_rows.max(1);
    let mut deleted = 0u64;
    match db {
        Database::Sqlite(path) => {
            let mut conn = connect(path, false).await?;
            let sql_err = |source| LedgerError::Sql {
                path: path.clone(),
                source,
            };
            loop {
                let n = sqlx::query(DELETE_BATCH)
                    .bind(cutoff_ms)
                    .bind(limit)
                    .execute(&mut conn)
                    .await
                    .map_err(sql_err)?
                    .rows_affected();
                deleted += n;
                if n < limit.unsigned_abs() || !pause(r.pause, cancel).await {
                    break;
                }
            }
            let _ = conn.close().await;
        }
        Database::Postgres(pg) => loop {
            let n = sqlx::query(DELETE_BATCH)
                .bind(cutoff_ms)
                .bind(limit)
                .execute(pg.pool())
                .await
                .map_err(|source| LedgerError::Postgres {
                    target: pg.target().to_owned(),
                    source,
                })?
                .rows_affected();
            deleted += n;
            if n < limit.unsigned_abs() || !pause(r.pause, cancel).await {
                break;
            }
        },
    }
    Ok(deleted)
}

/// Waits `d`; false when cancelled meanwhile.
async fn pause(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = cancel.cancelled() => false,
    }
}

/// The background task: prunes at once, then every `r.every`, until `cancel` fires
/// (the ledger shuts down).
pub(super) async fn run(db: Database, r: Retention, cancel: CancellationToken) {
    loop {
        let cutoff = crate::types::time::now_ms().saturating_sub(r.max_age_ms);
        match prune(&db, cutoff, &r, &cancel).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(database = %db, deleted = n, "ledger retention deleted old requests")
            }
            Err(e) => {
                tracing::warn!(error = %e, "ledger retention failed; retrying at the next run")
            }
        }
        if !pause(r.every, &cancel).await {
            return;
        }
    }
}
