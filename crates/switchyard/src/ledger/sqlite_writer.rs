//! The SQLite ledger's writes, on an OS thread of their own.
//!
//! The writer task (`writer.rs`) still owns the queue: it takes batches from the
//! bounded channel exactly as for PostgreSQL, lingers for a batch to fill, retries and
//! counts. Only the inserts move here: each batch is handed to this thread, which owns
//! one `rusqlite` connection to the file and inserts the batch in one transaction with
//! statements prepared once and kept in the connection's cache. There is no async
//! driver in between (no worker thread per connection, no per-query futures, no
//! statement text to look up), so a row costs what SQLite itself spends on it.
//!
//! The task waits for each batch's answer before it takes the next one from the queue,
//! so there is never more than one batch in flight and the queue's bound means what it
//! did: a slow or locked database fills the queue, and `ledger.on_overload` decides.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use rusqlite::{params, params_from_iter, Connection};
use tokio::sync::oneshot;

use super::rows::{attempt_cells, insert_sql, request_cells, ATTEMPT_COLUMNS, REQUEST_COLUMNS};
use super::{AttemptRecord, RequestRecord};
use crate::storage::sqlite::open_writer;

/// The lengths of the multi-row inserts besides the one-row one. One statement for many
/// rows opens the table's and every index's cursor once and halts once, and each row
/// after the first lands beside the one before without a seek from the root (ids and
/// times grow): at 25 rows a batch, SQLite spends about a third less per row than with
/// one statement per row, and bench/profile's one-at-a-time requests (batches of about
/// 5) spend 174,925 -> 166,695 instructions per request. A batch of n rows goes as
/// chunks of these lengths (32s, then the binary digits of the rest), so only six
/// statement texts per table are ever prepared and kept.
const MULTI_ROW_LENGTHS: [usize; 5] = [32, 16, 8, 4, 2];

/// One table's inserts.
struct Inserts {
    /// With [`MULTI_ROW_LENGTHS`] rows each.
    many: [(usize, String); MULTI_ROW_LENGTHS.len()],
    one: String,
}

impl Inserts {
    fn new(table: &str, cols: &[&str], tail: &str) -> Inserts {
        Inserts {
            many: MULTI_ROW_LENGTHS.map(|rows| (rows, insert_sql(table, cols, rows, tail))),
            one: insert_sql(table, cols, 1, tail),
        }
    }

    /// Every statement text, one-row insert included.
    fn all(&self) -> impl Iterator<Item = &str> {
        let many = self.many.iter().map(|(_, sql)| sql.as_str());
        many.chain(std::iter::once(self.one.as_str()))
    }

    /// The longest insert of at most `n` rows, and its length (`None` for no rows).
    fn longest(&self, n: usize) -> Option<(usize, &str)> {
        if n == 0 {
            return None;
        }
        let many = self.many.iter().find(|(rows, _)| *rows <= n);
        Some(many.map_or((1, self.one.as_str()), |(rows, sql)| (*rows, sql.as_str())))
    }
}

struct Sql {
    requests: Inserts,
    attempts: Inserts,
}

impl Sql {
    fn new() -> Sql {
        Sql {
            requests: Inserts::new(
                "requests",
                &REQUEST_COLUMNS,
                "ON CONFLICT (request_id) DO NOTHING",
            ),
            attempts: Inserts::new(
                "attempts",
                &ATTEMPT_COLUMNS,
                "ON CONFLICT (request_id, attempt) DO NOTHING",
            ),
        }
    }
}

/// Content is stored only for the request rows this batch really inserted.
const CONTENT_INSERT: &str = "INSERT INTO request_content (request_id, prompt, response) \
                              VALUES ($1, $2, $3) ON CONFLICT (request_id) DO NOTHING";

/// Why the thread could not start: it could not be spawned, or could not open the
/// file.
pub(super) type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub(super) enum ThreadError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// The thread is gone (it panicked); the batch it held went with it.
    #[error("the ledger's SQLite writer thread stopped")]
    Gone,
}

enum Job {
    /// Insert the batch; answer with it (for the caller to reuse or retry) and the
    /// request rows written.
    Write {
        batch: Vec<RequestRecord>,
        done: oneshot::Sender<(Vec<RequestRecord>, rusqlite::Result<u64>)>,
    },
    /// Close the connection (checkpointing the WAL when it is the file's last) and
    /// stop.
    Close {
        done: oneshot::Sender<rusqlite::Result<()>>,
    },
}

/// The handle the writer task holds.
pub(super) struct SqliteThread {
    jobs: mpsc::Sender<Job>,
}

impl SqliteThread {
    /// Starts the thread and opens its connection to `path` (already migrated).
    pub(super) async fn start(path: &Path) -> Result<SqliteThread, StartError> {
        let (jobs, rx) = mpsc::channel();
        let (opened, opened_rx) = oneshot::channel();
        let path: PathBuf = path.to_owned();
        thread::Builder::new()
            .name("ledger-sqlite".into())
            .spawn(move || match open_writer(&path) {
                Ok(conn) => {
                    if opened.send(Ok(())).is_ok() {
                        serve(conn, &rx);
                    }
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })?;
        match opened_rx.await {
            Ok(Ok(())) => Ok(SqliteThread { jobs }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err("the writer thread stopped while opening the file".into()),
        }
    }

    /// Inserts `batch` in one transaction. Gives the batch back (cleared or not, it
    /// is the caller's to retry) unless the thread died with it.
    pub(super) async fn write(
        &self,
        batch: Vec<RequestRecord>,
    ) -> (Vec<RequestRecord>, Result<u64, ThreadError>) {
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job::Write { batch, done }) {
            let batch = match job {
                Job::Write { batch, .. } => batch,
                Job::Close { .. } => Vec::new(),
            };
            return (batch, Err(ThreadError::Gone));
        }
        match answer.await {
            Ok((batch, result)) => (batch, result.map_err(ThreadError::from)),
            Err(_) => (Vec::new(), Err(ThreadError::Gone)),
        }
    }

    /// Closes the connection and stops the thread.
    pub(super) async fn close(self) -> Result<(), ThreadError> {
        let (done, answer) = oneshot::channel();
        if self.jobs.send(Job::Close { done }).is_err() {
            return Err(ThreadError::Gone);
        }
        match answer.await {
            Ok(result) => result.map_err(ThreadError::from),
            Err(_) => Err(ThreadError::Gone),
        }
    }
}

/// The thread's loop: one job at a time until told to close, or until the handle is
/// dropped (the writer task ended without a close: the connection closes on drop).
fn serve(mut conn: Connection, jobs: &mpsc::Receiver<Job>) {
    let sql = Sql::new();
    // Every statement above, BEGIN, COMMIT and the content insert stay prepared.
    conn.set_prepared_statement_cache_capacity(2 * (MULTI_ROW_LENGTHS.len() + 1) + 8);
    // Prepared before the first batch, not when a batch first needs a length: preparing
    // a 32-row insert costs SQLite millions of instructions, which would otherwise
    // delay whichever batch first met it. A statement that fails here fails again,
    // and is reported, when a batch uses it.
    for insert in sql.requests.all().chain(sql.attempts.all()) {
        let _ = conn.prepare_cached(insert);
    }
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Write { batch, done } => {
                let result = write_batch(&mut conn, &sql, &batch);
                let _ = done.send((batch, result));
            }
            Job::Close { done } => {
                let result = conn.close().map_err(|(_, e)| e);
                let _ = done.send(result);
                return;
            }
        }
    }
}

/// One transaction for the batch, `BEGIN IMMEDIATE` so that waiting for another
/// writer's lock goes through the busy timeout before anything is written. Returns
/// the request rows inserted (a duplicate request id inserts nothing, nor its
/// attempts). On any error the transaction is rolled back: the batch is written
/// whole or not at all.
fn write_batch(conn: &mut Connection, sql: &Sql, batch: &[RequestRecord]) -> rusqlite::Result<u64> {
    if !conn.is_autocommit() {
        // A transaction left open by a rollback that failed last time.
        conn.execute_batch("ROLLBACK")?;
    }
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let written = match insert_chunks(conn, sql, batch) {
        Ok(Some(written)) => Ok(written),
        // A request id already written, or twice in the batch (rare): which rows are
        // new is only known row by row, so the batch is done again that way.
        Ok(None) => conn
            .execute_batch("ROLLBACK; BEGIN IMMEDIATE")
            .and_then(|()| insert_rows(conn, sql, batch)),
        Err(e) => Err(e),
    }
    .and_then(|written| conn.prepare_cached("COMMIT")?.execute([]).map(|_| written));
    if written.is_err() && !conn.is_autocommit() {
        // The error is the one to report; a rollback that fails here is tried
        // again before the next batch.
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

/// The batch in multi-row statements: every request row, then every attempt row, then
/// the content. `None` (with rows inserted, for the caller to roll back) when a
/// request id was already in the table or came twice in the batch.
fn insert_chunks(
    conn: &Connection,
    sql: &Sql,
    batch: &[RequestRecord],
) -> rusqlite::Result<Option<u64>> {
    let mut rest = batch;
    while let Some((rows, insert)) = sql.requests.longest(rest.len()) {
        let (chunk, after) = rest.split_at(rows);
        rest = after;
        let cells = chunk.iter().flat_map(request_cells);
        let inserted = conn
            .prepare_cached(insert)?
            .execute(params_from_iter(cells))?;
        if inserted != rows {
            return Ok(None);
        }
    }
    let attempts: Vec<(&str, &AttemptRecord)> = batch
        .iter()
        .flat_map(|r| r.attempts.iter().map(|a| (r.request_id.as_str(), a)))
        .collect();
    let mut rest = attempts.as_slice();
    while let Some((rows, insert)) = sql.attempts.longest(rest.len()) {
        let (chunk, after) = rest.split_at(rows);
        rest = after;
        let cells = chunk.iter().flat_map(|&(id, a)| attempt_cells(id, a));
        conn.prepare_cached(insert)?
            .execute(params_from_iter(cells))?;
    }
    for r in batch {
        insert_content(conn, r)?;
    }
    Ok(Some(batch.len() as u64))
}

/// The batch one row per statement, each request's attempts and content only when its
/// row was inserted: the way for a batch holding a request id already written.
fn insert_rows(conn: &Connection, sql: &Sql, batch: &[RequestRecord]) -> rusqlite::Result<u64> {
    let mut requests = conn.prepare_cached(&sql.requests.one)?;
    let mut attempts = conn.prepare_cached(&sql.attempts.one)?;
    let mut written = 0u64;
    for r in batch {
        let inserted = requests.execute(params_from_iter(request_cells(r)))?;
        if inserted == 0 {
            continue; // a request id already written: its attempts are not ours
        }
        written += 1;
        for a in &r.attempts {
            attempts.execute(params_from_iter(attempt_cells(&r.request_id, a)))?;
        }
        insert_content(conn, r)?;
    }
    Ok(written)
}

/// The request's content, where its policy allowed logging it (rare: one statement
/// each).
fn insert_content(conn: &Connection, r: &RequestRecord) -> rusqlite::Result<()> {
    if r.content_prompt.is_some() || r.content_response.is_some() {
        conn.prepare_cached(CONTENT_INSERT)?.execute(params![
            r.request_id,
            r.content_prompt,
            r.content_response,
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_into_the_prepared_lengths() {
        let sql = Sql::new();
        let lengths = |mut n: usize| {
            let mut out = Vec::new();
            while let Some((rows, insert)) = sql.requests.longest(n) {
                assert_eq!(insert.matches("($").count(), rows, "{insert}");
                out.push(rows);
                n -= rows;
            }
            out
        };
        assert_eq!(lengths(0), Vec::<usize>::new());
        assert_eq!(lengths(1), [1]);
        assert_eq!(lengths(5), [4, 1]);
        assert_eq!(lengths(45), [32, 8, 4, 1]);
        assert_eq!(lengths(64), [32, 32]);
        assert_eq!(lengths(95), [32, 32, 16, 8, 4, 2, 1]);
        for n in 0..200 {
            assert_eq!(lengths(n).iter().sum::<usize>(), n);
        }
    }
}
