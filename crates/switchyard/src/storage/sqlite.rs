//! SQLite: opening a file and bringing its schema up to date.
//!
//! The migrations (`migrations/sqlite/`) are applied in order, each in one
//! `BEGIN IMMEDIATE` transaction with its `PRAGMA user_version` bump, so existing
//! files keep the history they were written with.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

/// Schema migrations, applied in order; `PRAGMA user_version` records the last
/// one applied. Append only.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_ledger.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_governance.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_ledger_indexes.sql"),
    ),
    (4, include_str!("../../migrations/sqlite/0004_key_ids.sql")),
    (
        5,
        include_str!("../../migrations/sqlite/0005_responses.sql"),
    ),
    (6, include_str!("../../migrations/sqlite/0006_channels.sql")),
    (7, include_str!("../../migrations/sqlite/0007_cache.sql")),
    (8, include_str!("../../migrations/sqlite/0008_replay.sql")),
    (
        9,
        include_str!("../../migrations/sqlite/0009_contracts.sql"),
    ),
    (10, include_str!("../../migrations/sqlite/0010_shadow.sql")),
    (
        11,
        include_str!("../../migrations/sqlite/0011_ledger_write_indexes.sql"),
    ),
];

/// Highest schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 11;

/// How long a statement waits for another connection's write lock (e.g. a
/// second gateway process or a `sqlite3` shell) before failing with BUSY.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`migrate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Applying migration `version` failed.
    #[error("migrating schema to version {version} failed: {source}")]
    Sql {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    /// The file's schema is newer than this build (or not ours).
    #[error("schema version {found} is not supported")]
    Schema { found: i64 },
}

/// Opens one connection; with `create`, creates the file and sets the journal mode
/// a writer wants.
pub async fn connect(path: &Path, create: bool) -> Result<SqliteConnection, sqlx::Error> {
    let mut opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    if create {
        // WAL lets `switchyard spend` read while the gateway writes; NORMAL
        // sync is durable against process crashes (power loss may lose the
        // last commits), which is the right trade for usage accounting.
        // Readers leave the persistent journal mode alone.
        opts = opts
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
    }
    opts.connect().await
}

/// Opens the connection of the ledger's writer thread (`rusqlite`, blocking) to a file
/// that [`connect`] created and [`migrate`] brought up to date. The same settings as a
/// writer's [`connect`]: WAL journal, `synchronous = NORMAL` (a commit is durable
/// against a crash of the process; a power loss or OS crash may lose the last
/// commits since the WAL was last synced, never the file's consistency) and the same
/// busy timeout. Foreign keys are not checked on this connection: it only inserts, and
/// it inserts a request's attempts and content in the same transaction just after the
/// request row, and only when that row was inserted, so the check (a lookup of the
/// parent per attempt row) could never fail. Every other connection, the retention
/// task's deletes and their cascade among them, keeps them on.
pub fn open_writer(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The journal mode is the file's (persistent); asking for WAL again answers
    // with the mode now in force.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "ledger file is not in WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")?;
    Ok(conn)
}

/// The schema version recorded in the file (0 for a file that is not ours).
pub async fn user_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>("PRAGMA user_version")
        .fetch_one(conn)
        .await
}

/// Brings the schema up to [`SCHEMA_VERSION`]. Each migration and its
/// `user_version` bump commit together, so a crash leaves either the old or
/// the new version; `BEGIN IMMEDIATE` plus re-reading the version inside the
/// transaction makes two processes opening the same new file safe.
pub async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<(), MigrateError> {
    for &(version, sql) in MIGRATIONS {
        let mig_err = |source| MigrateError::Sql { version, source };
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(mig_err)?;
        let current = user_version(&mut tx).await.map_err(mig_err)?;
        if current > SCHEMA_VERSION {
            return Err(MigrateError::Schema { found: current });
        }
        if current >= version {
            continue; // `tx` rolls back on drop; nothing was written.
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(mig_err)?;
        // PRAGMA takes no bind parameters; `version` is our own constant.
        sqlx::raw_sql(&format!("PRAGMA user_version = {version}"))
            .execute(&mut *tx)
            .await
            .map_err(mig_err)?;
        tx.commit().await.map_err(mig_err)?;
        tracing::info!(path = %path.display(), version, "schema migrated");
    }
    Ok(())
}
