//! Lifecycle tests: open/migrate, round trip, drain on shutdown, dropping.

use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use super::*;
use crate::storage::sqlite::MIGRATIONS;

pub(super) async fn open_ledger(path: &Path, capacity: usize) -> Ledger {
    open_with(path, |o| LedgerOptions {
        queue_capacity: capacity,
        ..o
    })
    .await
}

/// Opens a ledger at `path` with the defaults changed by `options`.
pub(super) async fn open_with(
    path: &Path,
    options: impl FnOnce(LedgerOptions) -> LedgerOptions,
) -> Ledger {
    Ledger::open(options(LedgerOptions::new(path)))
        .await
        .expect("open ledger")
}

/// (written, dropped) of a ledger's stats.
fn totals(s: LedgerStats) -> (u64, u64) {
    (s.written, s.dropped)
}

/// Room left in a sink's queue.
fn room(sink: &LedgerSink) -> usize {
    sink.inner.as_ref().map_or(0, |i| i.tx.capacity())
}

/// A served request `id` with `n_attempts` attempts (all but the last failed).
pub(super) fn rec(id: &str, n_attempts: u32) -> RequestRecord {
    let attempts = (1..=n_attempts)
        .map(|i| {
            let last = i == n_attempts;
            AttemptRecord {
                attempt: i,
                started_at_ms: 1_700_000_000_000 + i64::from(i),
                deployment: format!("dep-{i}"),
                provider: "openai".into(),
                upstream_model: "gpt-4o-2024-08-06".into(),
                status: if last { Some(200) } else { None },
                error_class: if last { None } else { Some("timeout".into()) },
                usage: Usage {
                    prompt_tokens: if last { 10 } else { 0 },
                    completion_tokens: if last { 5 } else { 0 },
                    cached_tokens: 0,
                    estimated: false,
                    ..Usage::default()
                },
                cost_nano_usd: if last { 1_000 } else { 0 },
                latency_us: 1_000,
                ..AttemptRecord::default()
            }
        })
        .collect();
    RequestRecord {
        request_id: id.to_owned(),
        started_at_ms: 1_700_000_000_000,
        key_id: Some("cfg:team-a".into()),
        key_name: Some("team-a".into()),
        endpoint: "chat.completions",
        logical_model: Some("gpt".into()),
        deployment: Some(format!("dep-{n_attempts}")),
        provider: Some("openai".into()),
        upstream_model: Some("gpt-4o-2024-08-06".into()),
        status: 200,
        streamed: true,
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 2,
            estimated: false,
            ..Usage::default()
        },
        cost_nano_usd: 1_000,
        latency_us: 5_000,
        ttft_us: Some(700),
        attempts,
        ..RequestRecord::default()
    }
}

async fn raw(path: &Path) -> SqliteConnection {
    connect(path, false).await.expect("raw connect")
}

async fn scalar(conn: &mut SqliteConnection, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(conn)
        .await
        .expect(sql)
}

#[tokio::test]
async fn open_creates_file_tables_and_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/deeper/ledger.db");
    let ledger = open_ledger(&path, 16).await;
    assert!(path.exists());
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(stats, LedgerStats::default());

    let mut c = raw(&path).await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut c)
            .await
            .expect("tables");
    assert_eq!(
        tables,
        [
            "admin_events",
            "attempts",
            "governance_version",
            "request_content",
            "requests",
            "responses",
            "teams",
            "virtual_keys"
        ]
    );
    assert_eq!(scalar(&mut c, "PRAGMA user_version").await, SCHEMA_VERSION);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut c)
        .await
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    c.close().await.expect("close");

    // Reopen: migrations must be a no-op and existing rows survive.
    let ledger = open_ledger(&path, 16).await;
    ledger.sink().record(rec("req_1", 1));
    assert_eq!(ledger.shutdown().await.expect("shutdown").written, 1);
    let ledger = open_ledger(&path, 16).await;
    ledger.sink().record(rec("req_2", 2));
    assert_eq!(ledger.shutdown().await.expect("shutdown").written, 1);
    let mut c = raw(&path).await;
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM requests").await, 2);
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM attempts").await, 3);
    assert_eq!(scalar(&mut c, "PRAGMA user_version").await, SCHEMA_VERSION);
}

#[tokio::test]
async fn open_refuses_newer_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("future.db");
    open_ledger(&path, 4)
        .await
        .shutdown()
        .await
        .expect("shutdown");
    let mut c = raw(&path).await;
    sqlx::raw_sql("PRAGMA user_version = 99")
        .execute(&mut c)
        .await
        .expect("bump");
    c.close().await.expect("close");
    let err = Ledger::open(LedgerOptions::new(&path))
        .await
        .expect_err("newer schema");
    assert!(
        matches!(err, LedgerError::Schema { found: 99, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("future.db"), "{err}");
}

#[tokio::test]
async fn open_error_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The "parent directory" is a regular file, so it cannot be created.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").expect("write");
    let path = blocker.join("ledger.db");
    let err = Ledger::open(LedgerOptions::new(&path))
        .await
        .expect_err("cannot create");
    assert!(matches!(err, LedgerError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_with_attempts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, DEFAULT_QUEUE_CAPACITY).await;
    let sink = ledger.sink();
    const N: u32 = 1_000;
    for i in 0..N {
        let mut r = rec(&format!("req_{i:05}"), i % 3); // 0, 1 or 2 attempts
        r.cost_nano_usd = i64::from(i) * 7;
        r.usage.prompt_tokens = u64::from(i);
        if i % 10 == 0 {
            // Refused before dispatch.
            r.key_id = None;
            r.status = 401;
            r.error_code = Some("invalid_api_key".into());
            r.ttft_us = None;
        }
        sink.record(r);
        if i % 100 == 0 {
            // Interleave with the writer so several batches are committed.
            tokio::task::yield_now().await;
        }
    }
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (u64::from(N), 0));
    assert_eq!(sink.dropped(), 0);

    let mut c = raw(&path).await;
    let n = i64::from(N);
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM requests").await, n);
    // attempts per request cycle 0,1,2 → 333*0 + 334*1... computed directly:
    let expected_attempts: i64 = (0..n).map(|i| i % 3).sum();
    assert_eq!(
        scalar(&mut c, "SELECT COUNT(*) FROM attempts").await,
        expected_attempts
    );
    assert_eq!(
        scalar(&mut c, "SELECT SUM(attempt_count) FROM requests").await,
        expected_attempts
    );
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cost_nano_usd) FROM requests").await,
        (0..n).map(|i| i * 7).sum::<i64>()
    );
    assert_eq!(
        scalar(&mut c, "SELECT SUM(prompt_tokens) FROM requests").await,
        (0..n).sum::<i64>()
    );
    assert_eq!(
        scalar(&mut c, "SELECT SUM(completion_tokens) FROM requests").await,
        5 * n
    );
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cached_tokens) FROM requests").await,
        2 * n
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT COUNT(*) FROM requests WHERE key_id IS NULL AND status = 401"
        )
        .await,
        n / 10
    );
    // Per-attempt cost: only the final attempt of each request costs 1_000.
    let with_attempts = (0..n).filter(|i| i % 3 != 0).count() as i64;
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cost_nano_usd) FROM attempts").await,
        1_000 * with_attempts
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT COUNT(*) FROM attempts WHERE status IS NULL AND error_class = 'timeout'"
        )
        .await,
        (0..n).filter(|i| i % 3 == 2).count() as i64
    );

    // One row in full, to catch swapped columns.
    let row = sqlx::query("SELECT * FROM requests WHERE request_id = 'req_00002'")
        .fetch_one(&mut c)
        .await
        .expect("row");
    assert_eq!(row.get::<i64, _>("started_at_ms"), 1_700_000_000_000);
    assert_eq!(
        row.get::<Option<String>, _>("key_id").as_deref(),
        Some("cfg:team-a")
    );
    assert_eq!(
        row.get::<Option<String>, _>("key_name").as_deref(),
        Some("team-a")
    );
    assert_eq!(row.get::<String, _>("endpoint"), "chat.completions");
    assert_eq!(
        row.get::<Option<String>, _>("logical_model").as_deref(),
        Some("gpt")
    );
    assert_eq!(
        row.get::<Option<String>, _>("deployment").as_deref(),
        Some("dep-2")
    );
    assert_eq!(
        row.get::<Option<String>, _>("provider").as_deref(),
        Some("openai")
    );
    assert_eq!(
        row.get::<Option<String>, _>("upstream_model").as_deref(),
        Some("gpt-4o-2024-08-06")
    );
    assert_eq!(row.get::<i64, _>("status"), 200);
    assert_eq!(row.get::<Option<String>, _>("error_code"), None);
    assert_eq!(row.get::<i64, _>("streamed"), 1);
    assert_eq!(row.get::<i64, _>("client_disconnected"), 0);
    assert_eq!(row.get::<i64, _>("prompt_tokens"), 2);
    assert_eq!(row.get::<i64, _>("completion_tokens"), 5);
    assert_eq!(row.get::<i64, _>("cached_tokens"), 2);
    assert_eq!(row.get::<i64, _>("usage_estimated"), 0);
    assert_eq!(row.get::<i64, _>("cost_nano_usd"), 14);
    assert_eq!(row.get::<i64, _>("latency_us"), 5_000);
    assert_eq!(row.get::<Option<i64>, _>("ttft_us"), Some(700));
    assert_eq!(row.get::<i64, _>("attempt_count"), 2);

    let a = sqlx::query("SELECT * FROM attempts WHERE request_id = 'req_00002' ORDER BY attempt")
        .fetch_all(&mut c)
        .await
        .expect("attempts");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].get::<i64, _>("attempt"), 1);
    assert_eq!(a[0].get::<Option<i64>, _>("status"), None);
    assert_eq!(
        a[0].get::<Option<String>, _>("error_class").as_deref(),
        Some("timeout")
    );
    assert_eq!(a[0].get::<String, _>("deployment"), "dep-1");
    assert_eq!(a[1].get::<i64, _>("attempt"), 2);
    assert_eq!(a[1].get::<Option<i64>, _>("status"), Some(200));
    assert_eq!(a[1].get::<i64, _>("prompt_tokens"), 10);
    assert_eq!(a[1].get::<i64, _>("completion_tokens"), 5);
    assert_eq!(a[1].get::<i64, _>("cost_nano_usd"), 1_000);
    assert_eq!(a[1].get::<i64, _>("latency_us"), 1_000);
    assert_eq!(a[1].get::<i64, _>("started_at_ms"), 1_700_000_000_002);
}

/// A connection's task can end (and the server count as drained) a moment before it
/// drops the request it was serving; shutdown waits for that request's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_request_still_being_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, DEFAULT_QUEUE_CAPACITY).await;
    let tracker =
        tracker::RequestTracker::new(ledger.sink(), "req_late".into(), "chat.completions");
    let (started, waiting) = tokio::sync::oneshot::channel::<()>();
    let late = tokio::spawn(async move {
        // Dropped only once shutdown has begun to wait: abandoned, as by a client
        // that hung up.
        let _ = waiting.await;
        drop(tracker);
    });
    {
        let wait = ledger.wait_for_requests(Duration::from_secs(30));
        tokio::pin!(wait);
        // Polled once, it is waiting for the tracker.
        assert!(
            (&mut wait).now_or_never().is_none(),
            "returned with a tracker alive"
        );
        started.send(()).expect("tracker task alive");
        assert!(
            wait.await,
            "the tracker was dropped, yet the wait timed out"
        );
    }
    late.await.expect("dropping task");
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (1, 0));
    let mut c = raw(&path).await;
    assert_eq!(
        scalar(
            &mut c,
            "SELECT client_disconnected FROM requests WHERE request_id = 'req_late'"
        )
        .await,
        1
    );
}

/// A tracker that never ends does not hold shutdown beyond the limit.
#[tokio::test]
async fn waiting_for_requests_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, DEFAULT_QUEUE_CAPACITY).await;
    let stuck = tracker::RequestTracker::new(ledger.sink(), "req_stuck".into(), "chat.completions");
    assert!(!ledger.wait_for_requests(Duration::from_millis(20)).await);
    std::mem::forget(stuck);
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_burst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, DEFAULT_QUEUE_CAPACITY).await;
    let sink = ledger.sink();
    for i in 0..5_000 {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (5_000, 0));
    let mut c = raw(&path).await;
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM requests").await, 5_000);
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM attempts").await, 5_000);
}

#[tokio::test]
async fn records_after_shutdown_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, 16).await;
    let sink = ledger.sink();
    sink.record(rec("req_before", 0));
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (1, 0));
    sink.record(rec("req_after", 0));
    sink.submit(rec("req_after_2", 0)).await;
    assert_eq!(sink.dropped(), 2);
    let after = sink.counters().expect("enabled").snapshot();
    assert_eq!(after.dropped_shutting_down, 2);
    let mut c = raw(&path).await;
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM requests").await, 1);
}

/// Current-thread runtime: the writer task cannot run while this test calls
/// `record` in a loop without awaiting, so exactly `capacity` records fit.
#[tokio::test(flavor = "current_thread")]
async fn full_queue_in_drop_mode_drops_and_counts_without_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 4,
        on_overload: OnOverload::Drop,
        ..o
    })
    .await;
    let sink = ledger.sink();
    for i in 0..99 {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    // The request path's submission is ready at once: it never waits in this mode.
    assert!(sink.submit(rec("req_99", 1)).now_or_never().is_some());
    assert_eq!(sink.dropped(), 96);
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (4, 96));
    assert_eq!(stats.dropped_queue_full, 96);
    assert_eq!(stats.waited, 0);
}

/// The default: a request that finds the queue full waits for room instead of
/// losing its row. Current-thread runtime, so the writer runs only when the test
/// awaits.
#[tokio::test(flavor = "current_thread")]
async fn full_queue_in_block_mode_waits_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 4,
        max_wait: Duration::from_secs(60),
        ..o
    })
    .await;
    assert_eq!(LedgerOptions::new(&path).on_overload, OnOverload::Block);
    let sink = ledger.sink();
    for i in 0..4 {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    assert_eq!(room(&sink), 0);
    let mut fifth = Box::pin(sink.submit(rec("req_4", 1)));
    // Full: the submission waits (the writer has not run yet)…
    assert!((&mut fifth).now_or_never().is_none(), "did not wait");
    // …and gets in once the writer makes room.
    fifth.await;
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (5, 0));
    assert_eq!(stats.waited, 1);
    let mut c = raw(&path).await;
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM requests").await, 5);
}

/// A submission dropped while it waits (its request was cancelled) still gets its
/// row in: the wait moves to a task of its own.
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_wait_still_writes_the_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 2,
        max_wait: Duration::from_secs(60),
        ..o
    })
    .await;
    let sink = ledger.sink();
    sink.record(rec("req_0", 1));
    sink.record(rec("req_1", 1));
    let mut third = Box::pin(sink.submit(rec("req_2", 1)));
    assert!((&mut third).now_or_never().is_none(), "did not wait");
    drop(third);
    // Never polled at all: queued or waiting all the same.
    drop(sink.submit(rec("req_3", 1)));
    // Let the writer and the background waits run until every row is in.
    let mut c = raw(&path).await;
    for _ in 0..500 {
        if scalar(&mut c, "SELECT COUNT(*) FROM requests").await == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (4, 0));
    assert_eq!(stats.waited, 2);
}

/// Real concurrency: another connection holds the write lock, so the writer is
/// stuck inside a batch while request handlers keep submitting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_database_drops_then_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    // Batches of at most 4: the writer lingers to fill a batch, so what it can hold
    // while stuck is one batch plus the queue.
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 4,
        batch_max: 4,
        on_overload: OnOverload::Drop,
        ..o
    })
    .await;
    let sink = ledger.sink();

    let mut locker = raw(&path).await;
    let lock = locker.begin_with("BEGIN IMMEDIATE").await.expect("lock");

    for i in 0..1_000 {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    // At most one batch in flight plus a full queue can be accepted.
    let dropped = sink.dropped();
    assert!(dropped >= 1_000 - 8, "dropped only {dropped}");

    // Release within the busy timeout: the stalled batch must commit.
    lock.rollback().await.expect("unlock");
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(stats.written + stats.dropped, 1_000);
    assert_eq!(stats.dropped, stats.dropped_queue_full);
    assert!(stats.written >= 1);
    assert_eq!(
        scalar(&mut locker, "SELECT COUNT(*) FROM requests").await,
        i64::try_from(stats.written).expect("fits")
    );
}

/// Waits (up to about a second) until the writer has taken every queued record, so
/// that a writer that then meets a held lock is known to be inside its batch.
async fn wait_until_taken(sink: &LedgerSink, capacity: usize) {
    for _ in 0..1_000 {
        if room(sink) == capacity {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the writer did not take the first record");
}

/// Block mode has a bound: a queue that stays full (the database locked by another
/// process) costs the row after `max_wait`, counted as such.
#[tokio::test(flavor = "current_thread")]
async fn block_mode_gives_up_after_max_wait_and_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 2,
        batch_max: 1,
        max_wait: Duration::from_millis(20),
        ..o
    })
    .await;
    let sink = ledger.sink();
    let mut locker = raw(&path).await;
    let lock = locker.begin_with("BEGIN IMMEDIATE").await.expect("lock");
    // The writer takes the first record and waits for the lock inside its batch.
    sink.record(rec("req_0", 1));
    wait_until_taken(&sink, 2).await;
    sink.record(rec("req_1", 1));
    sink.record(rec("req_2", 1));
    sink.submit(rec("req_3", 1)).await;
    let during = sink.counters().expect("enabled").snapshot();
    assert_eq!((during.waited, during.dropped_queue_full), (1, 1));
    lock.rollback().await.expect("unlock");
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (3, 1));
    assert_eq!(stats.dropped_queue_full, 1);
}

#[tokio::test]
async fn duplicate_request_id_keeps_first_and_rest_of_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, 16).await;
    let sink = ledger.sink();
    sink.record(rec("req_a", 1));
    let mut dup = rec("req_a", 2);
    dup.cost_nano_usd = 999_999;
    sink.record(dup);
    sink.record(rec("req_b", 1));
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (2, 1));
    assert_eq!(stats.dropped_duplicate, 1);
    let mut c = raw(&path).await;
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cost_nano_usd) FROM requests").await,
        2_000
    );
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM attempts").await, 2);
    c.close().await.expect("close");

    // A duplicate of a row committed by an earlier batch (another run).
    let ledger = open_ledger(&path, 16).await;
    ledger.sink().record(rec("req_b", 3));
    ledger.sink().record(rec("req_c", 1));
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (1, 1));
    assert_eq!(stats.dropped_duplicate, 1);
    let mut c = raw(&path).await;
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cost_nano_usd) FROM requests").await,
        3_000
    );
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM attempts").await, 3);
    assert_eq!(
        scalar(
            &mut c,
            "SELECT COUNT(*) FROM attempts WHERE request_id = 'req_b'"
        )
        .await,
        1
    );
}

/// A batch long enough to go as several multi-row statements (32 + 8 + 4 + 1 request
/// rows, attempts chunked likewise) lands whole: every row under its own id with its
/// own attempts and content; a duplicate in it sends the batch the row-by-row way,
/// which still keeps the first and the rest.
#[tokio::test]
async fn a_long_batch_lands_with_every_rows_attempts_and_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let record = |i: u32| {
        let mut r = rec(&format!("req_{i:03}"), i % 4);
        r.cost_nano_usd = i64::from(i);
        if i.is_multiple_of(10) {
            r.content_prompt = Some(format!("prompt {i}"));
        }
        r
    };
    let ledger = open_ledger(&path, 256).await;
    let sink = ledger.sink();
    for i in 0..45 {
        sink.record(record(i));
    }
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (45, 0));
    let mut c = raw(&path).await;
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM requests").await, 45);
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cost_nano_usd) FROM requests").await,
        (0..45).sum::<i64>()
    );
    // Each request's attempts carry its id: i % 4 of them for req_i.
    assert_eq!(
        scalar(
            &mut c,
            "SELECT COUNT(*) FROM requests r WHERE (SELECT COUNT(*) FROM attempts a \
             WHERE a.request_id = r.request_id) != CAST(substr(r.request_id, 5) AS INTEGER) % 4"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&mut c, "SELECT COUNT(*) FROM attempts").await,
        (0..45).map(|i| i % 4).sum::<i64>()
    );
    assert_eq!(
        scalar(&mut c, "SELECT COUNT(*) FROM request_content").await,
        5
    );
    c.close().await.expect("close");

    // The same again with a duplicate of an earlier row inside the batch.
    let ledger = open_ledger(&path, 256).await;
    let sink = ledger.sink();
    for i in 45..80 {
        sink.record(record(i));
        if i == 70 {
            let mut dup = record(3);
            dup.cost_nano_usd = 1_000_000;
            sink.record(dup);
        }
    }
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (35, 1));
    assert_eq!(stats.dropped_duplicate, 1);
    let mut c = raw(&path).await;
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cost_nano_usd) FROM requests").await,
        (0..80).sum::<i64>()
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT COUNT(*) FROM attempts WHERE request_id = 'req_003'"
        )
        .await,
        3
    );
    assert_eq!(
        scalar(&mut c, "SELECT COUNT(*) FROM attempts").await,
        (0..80).map(|i| i % 4).sum::<i64>()
    );
    c.close().await.expect("close");
}

#[test]
fn disabled_sink_discards_and_counts_nothing() {
    let sink = LedgerSink::disabled();
    assert!(!sink.is_enabled());
    for i in 0..10 {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    assert_eq!(sink.dropped(), 0);
    let clone = sink.clone();
    clone.record(RequestRecord::default());
    assert_eq!(clone.dropped(), 0);
}

/// Throughput smoke check: `cargo test -p switchyard --lib ledger -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, 200_000).await;
    let sink = ledger.sink();
    const N: usize = 100_000;
    let t = std::time::Instant::now();
    for i in 0..N {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    let submit = t.elapsed();
    let stats = ledger.shutdown().await.expect("shutdown");
    let total = t.elapsed();
    assert_eq!(stats.written, N as u64);
    println!(
        "submit {N} in {submit:?} ({:.0} ns/record); written in {total:?} ({:.0} rows/s)",
        submit.as_nanos() as f64 / N as f64,
        N as f64 / total.as_secs_f64()
    );
}

/// A database that rejects writes loses records (counted) but must neither
/// wedge the writer nor stretch shutdown out batch after batch.
#[tokio::test]
async fn failing_database_counts_losses_and_shuts_down_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 64,
        batch_max: 2,
        ..o
    })
    .await;
    let mut c = raw(&path).await;
    sqlx::raw_sql("DROP TABLE attempts; DROP TABLE requests;")
        .execute(&mut c)
        .await
        .expect("sabotage");
    let sink = ledger.sink();
    for i in 0..10 {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (0, 10));
    assert_eq!(stats.dropped_write_failed, 10);
    // Five batches of two: the first with its two retries, the other four tried
    // once each while the database keeps failing (retrying all would be 15).
    assert_eq!(stats.write_errors, 3 + 4);
}

/// Schema 4 attributes earlier rows to key ids: a name among the file's virtual keys
/// becomes that key's id, any other name a config key's `cfg:` id; names stay for
/// display.
#[tokio::test]
async fn migration_4_moves_spend_from_key_names_to_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let mut c = connect(&path, true).await.expect("create");
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 3) {
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .expect("old schema");
        sqlx::raw_sql(&format!("PRAGMA user_version = {version}"))
            .execute(&mut c)
            .await
            .expect("version");
    }
    sqlx::raw_sql(
        "INSERT INTO virtual_keys (id, name, key_hash, prefix, created_at_ms) \
             VALUES ('vk_0123456789abcdef', 'eu-app', x'00', 'sy-', 0); \
         INSERT INTO requests (request_id, started_at_ms, key_id, endpoint, status, streamed, \
             client_disconnected, prompt_tokens, completion_tokens, cached_tokens, \
             usage_estimated, cost_nano_usd, latency_us, attempt_count) VALUES \
             ('r1', 0, 'eu-app', 'x', 200, 0, 0, 0, 0, 0, 0, 5, 0, 0), \
             ('r2', 0, 'batch', 'x', 200, 0, 0, 0, 0, 0, 0, 7, 0, 0), \
             ('r3', 0, NULL, 'x', 401, 0, 0, 0, 0, 0, 0, 0, 0, 0);",
    )
    .execute(&mut c)
    .await
    .expect("old rows");
    c.close().await.expect("close");

    prepare(&path).await.expect("migrate");
    let mut c = raw(&path).await;
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT request_id, key_id, key_name FROM requests ORDER BY request_id")
            .fetch_all(&mut c)
            .await
            .expect("rows");
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        rows,
        vec![
            ("r1".into(), some("vk_0123456789abcdef"), some("eu-app")),
            ("r2".into(), some("cfg:batch"), some("batch")),
            ("r3".into(), None, None),
        ]
    );
    assert_eq!(
        crate::governance::config_key_id("batch"),
        "cfg:batch",
        "the migration builds the ids the gateway uses"
    );
}

/// Many request handlers submitting at once through a small queue (so that some wait
/// for room), the writer committing batch after batch: at shutdown every request has
/// its row and exactly its attempts, with their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_all_land_with_their_attempts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 8,
        batch_max: 16,
        max_wait: Duration::from_secs(60),
        ..o
    })
    .await;
    const TASKS: u32 = 8;
    const EACH: u32 = 250;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let sink = ledger.sink();
        handles.push(tokio::spawn(async move {
            for i in 0..EACH {
                let mut r = rec(&format!("req_{t}_{i:04}"), (t + i) % 4);
                r.cost_nano_usd = i64::from(t * EACH + i);
                sink.submit(r).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("submitter");
    }
    let stats = ledger.shutdown().await.expect("shutdown");
    let n = TASKS * EACH;
    assert_eq!(totals(stats), (u64::from(n), 0));

    let mut c = raw(&path).await;
    assert_eq!(
        scalar(&mut c, "SELECT COUNT(*) FROM requests").await,
        i64::from(n)
    );
    let attempts: i64 = (0..TASKS)
        .flat_map(|t| (0..EACH).map(move |i| i64::from((t + i) % 4)))
        .sum();
    assert_eq!(
        scalar(&mut c, "SELECT COUNT(*) FROM attempts").await,
        attempts
    );
    // Every attempt belongs to its own request, numbered 1..=attempt_count.
    assert_eq!(
        scalar(
            &mut c,
            "SELECT COUNT(*) FROM requests r WHERE attempt_count != \
             (SELECT COUNT(*) FROM attempts a WHERE a.request_id = r.request_id \
              AND a.attempt BETWEEN 1 AND r.attempt_count)"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&mut c, "SELECT SUM(cost_nano_usd) FROM requests").await,
        (0..i64::from(n)).sum::<i64>()
    );
}

/// Records that arrive while the writer is inside a batch (here held there by another
/// connection's write lock) wait in the queue and are written after it, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_submitted_during_a_batch_are_written_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 64,
        batch_max: 1,
        ..o
    })
    .await;
    let sink = ledger.sink();
    let mut locker = raw(&path).await;
    let lock = locker.begin_with("BEGIN IMMEDIATE").await.expect("lock");
    sink.record(rec("req_first", 1));
    // The writer has taken the first record when the queue is empty again: from then
    // on it is inside that batch, waiting for the lock.
    wait_until_taken(&sink, 64).await;
    for i in 0..20 {
        sink.submit(rec(&format!("req_during_{i}"), 2)).await;
    }
    let mut lock = lock;
    assert_eq!(
        scalar(&mut lock, "SELECT COUNT(*) FROM requests").await,
        0,
        "nothing can be committed while the lock is held"
    );
    lock.rollback().await.expect("unlock");
    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (21, 0));
    assert_eq!(
        scalar(&mut locker, "SELECT COUNT(*) FROM requests").await,
        21
    );
    assert_eq!(
        scalar(&mut locker, "SELECT COUNT(*) FROM attempts").await,
        41
    );
}

/// The writer's connection is an ordinary one: another connection (a report, the
/// `sqlite3` shell) sees each batch once it is committed, while the ledger runs; at
/// shutdown the connection is closed, so the write-ahead log is folded into the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_connection_sees_committed_rows_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_ledger(&path, 1_024).await;
    let sink = ledger.sink();
    for i in 0..100 {
        sink.record(rec(&format!("req_{i}"), 1));
    }
    let mut c = raw(&path).await;
    let mut seen = 0;
    for _ in 0..1_000 {
        seen = scalar(&mut c, "SELECT COUNT(*) FROM requests").await;
        if seen == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen, 100, "rows not visible to another connection");
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM attempts").await, 100);
    c.close().await.expect("close");

    let stats = ledger.shutdown().await.expect("shutdown");
    assert_eq!(totals(stats), (100, 0));
    let wal = dir.path().join("ledger.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).expect("wal").len() == 0,
        "the writer's connection was not closed at shutdown"
    );
    let mut c = raw(&path).await;
    assert_eq!(scalar(&mut c, "SELECT COUNT(*) FROM requests").await, 100);
}

/// `on_overload = "drop"` with submitters racing the writer thread: whatever the
/// timing, every record is either written (with its attempts) or counted as dropped
/// for a full queue, never both and never neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_mode_under_concurrency_accounts_for_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = open_with(&path, |o| LedgerOptions {
        queue_capacity: 4,
        batch_max: 4,
        on_overload: OnOverload::Drop,
        ..o
    })
    .await;
    // A held lock makes sure the queue does fill.
    let mut locker = raw(&path).await;
    let lock = locker.begin_with("BEGIN IMMEDIATE").await.expect("lock");
    let mut handles = Vec::new();
    for t in 0..4 {
        let sink = ledger.sink();
        handles.push(tokio::spawn(async move {
            for i in 0..500 {
                sink.submit(rec(&format!("req_{t}_{i}"), 1 + i % 2)).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("submitter");
    }
    lock.rollback().await.expect("unlock");
    let stats = ledger.shutdown().await.expect("shutdown");
    assert!(stats.dropped_queue_full > 0, "{stats:?}");
    assert_eq!(stats.dropped, stats.dropped_queue_full);
    assert_eq!(stats.written + stats.dropped, 2_000);
    assert_eq!(stats.waited, 0);
    let written = i64::try_from(stats.written).expect("fits");
    assert_eq!(
        scalar(&mut locker, "SELECT COUNT(*) FROM requests").await,
        written
    );
    assert_eq!(
        scalar(&mut locker, "SELECT COUNT(*) FROM attempts").await,
        scalar(&mut locker, "SELECT SUM(attempt_count) FROM requests").await
    );
}
