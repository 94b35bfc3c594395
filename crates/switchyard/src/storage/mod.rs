//! The engines under the gateway's stores, in one place: SQLite (the zero-setup
//! default) and PostgreSQL for the key store and the ledger, and Redis for the run-time
//! state that replicas share (rate limits, budgets, provider exhaustion, breakers).
//!
//! This module owns connections, pools, migrations and the Redis connection with its
//! script loading; the concerns above it (ledger, limits, governance, routing) keep
//! their own queries and scripts and reach the engines through it.
//!
//! A [`Database`] is where one store lives: an SQLite file, or the PostgreSQL pool.
//! [`Storage::open`] turns the configuration into the ledger's and the key store's
//! databases: two files (often the same one) with SQLite, one pool for both with
//! PostgreSQL. The schema is the same on both engines (integers as 64-bit, money in
//! nano-USD, times in unix ms, the same table and column names), so the stores'
//! queries differ only where the SQL dialects do.

pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, StorageConfig};

pub use postgres::Postgres;

/// Where a store lives.
#[derive(Clone)]
pub enum Database {
    /// An SQLite file (created with its schema when a store opens it).
    Sqlite(PathBuf),
    /// The PostgreSQL database (already migrated by [`Postgres::connect`]).
    Postgres(Postgres),
}

impl Database {
    /// The engine's name: `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// The SQLite file, when it is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }
}

/// The file's path, or the server and database without credentials.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(pg) => f.write_str(pg.target()),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Database({}: {self})", self.kind())
    }
}

impl From<PathBuf> for Database {
    fn from(p: PathBuf) -> Self {
        Database::Sqlite(p)
    }
}

impl From<&Path> for Database {
    fn from(p: &Path) -> Self {
        Database::Sqlite(p.to_owned())
    }
}

impl From<&PathBuf> for Database {
    fn from(p: &PathBuf) -> Self {
        Database::Sqlite(p.clone())
    }
}

impl From<&Database> for Database {
    fn from(d: &Database) -> Self {
        d.clone()
    }
}

impl From<Postgres> for Database {
    fn from(pg: Postgres) -> Self {
        Database::Postgres(pg)
    }
}

/// Errors connecting to or migrating an engine. Messages name the server and database
/// (never the password) or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// `storage.url` is not a URL the PostgreSQL driver accepts.
    #[error("storage.url: not a valid PostgreSQL URL: {reason}")]
    Url {
        /// What the driver said (it never repeats the URL).
        reason: String,
    },
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// `postgres://user@host:port/db`, without the password.
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("{target}: migrating the schema failed: {source}")]
    Migrate {
        /// The database, without credentials.
        target: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// The databases of one gateway: the ledger's and the key store's.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// `None`: no ledger is kept.
    pub ledger: Option<Database>,
    /// `None`: no key store (only the config file's keys).
    pub store: Option<Database>,
}

impl Storage {
    /// The configuration's databases. With PostgreSQL this connects and brings the
    /// schema up to date; SQLite files are opened (and migrated) by the stores.
    pub async fn open(config: &Config) -> Result<Storage, StorageError> {
        match &config.storage {
            StorageConfig::Sqlite => Ok(Storage {
                ledger: config.ledger.path.clone().map(Database::Sqlite),
                store: config.governance.store.clone().map(Database::Sqlite),
            }),
            StorageConfig::Postgres(pg) => {
                let pg = Database::Postgres(Postgres::connect(pg).await?);
                Ok(Storage {
                    ledger: config.ledger.enabled.then(|| pg.clone()),
                    store: Some(pg),
                })
            }
        }
    }
}
