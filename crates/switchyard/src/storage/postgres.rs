//! PostgreSQL: the pool, its migrations, and the listener for change notifications.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::StorageError;
use crate::config::PostgresConfig;

/// The schema migrations, embedded in the binary (`migrations/postgres/`). Append only.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "responses",
        include_str!("../../migrations/postgres/0002_responses.sql"),
    ),
    (
        3,
        "channels",
        include_str!("../../migrations/postgres/0003_channels.sql"),
    ),
    (
        4,
        "cache",
        include_str!("../../migrations/postgres/0004_cache.sql"),
    ),
    (
        5,
        "replay",
        include_str!("../../migrations/postgres/0005_replay.sql"),
    ),
    (
        6,
        "contracts",
        include_str!("../../migrations/postgres/0006_contracts.sql"),
    ),
    (
        7,
        "shadow",
        include_str!("../../migrations/postgres/0007_shadow.sql"),
    ),
    (
        8,
        "ledger_write_indexes",
        include_str!("../../migrations/postgres/0008_ledger_write_indexes.sql"),
    ),
];

/// A pool of connections to the database of `[storage] kind = "postgres"`. Cheap to
/// clone (the pool is shared).
#[derive(Clone)]
pub struct Postgres {
    pool: PgPool,
    /// `postgres://user@host:port/db`: what messages name (never the password).
    target: Arc<str>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Postgres").field(&self.target).finish()
    }
}

/// `postgres://user@host:port/db` of `opts`, without the password.
fn target_of(opts: &PgConnectOptions) -> String {
    let host = match opts.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => opts.get_host().to_owned(),
    };
    format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        host,
        opts.get_port(),
        opts.get_database().unwrap_or(opts.get_username())
    )
}

impl Postgres {
    /// Connects (the pool opens its first connection at once, so an unreachable server
    /// or a wrong password fails here, naming the server and the database) and brings
    /// the schema up to date.
    pub async fn connect(cfg: &PostgresConfig) -> Result<Postgres, StorageError> {
        let pg = Postgres::connect_unmigrated(cfg).await?;
        pg.migrate().await?;
        Ok(pg)
    }

    /// Connects as [`Postgres::connect`] does, but leaves the schema as it is: for
    /// reading a database without changing it (`config check`).
    pub async fn connect_unmigrated(cfg: &PostgresConfig) -> Result<Postgres, StorageError> {
        let opts = PgConnectOptions::from_str(cfg.url.expose())
            .map_err(|e| StorageError::Url {
                reason: e.to_string(),
            })?
            .application_name("switchyard")
            // The migrator's `CREATE … IF NOT EXISTS` would log a NOTICE at every start.
            .options([("client_min_messages", "warning")]);
        let target: Arc<str> = target_of(&opts).into();
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.connect_timeout)
            .connect_with(opts)
            .await
            .map_err(|source| StorageError::Connect {
                target: target.to_string(),
                source,
            })?;
        Ok(Postgres { pool, target })
    }

    /// Applies pending migrations. sqlx's migrator takes an advisory lock, so several
    /// replicas starting at once migrate one after the other.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|&(version, description, sql)| {
                        Migration::new(
                            version,
                            Cow::Borrowed(description),
                            MigrationType::Simple,
                            Cow::Borrowed(sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| StorageError::Migrate {
                target: self.target.to_string(),
                source,
            })
    }

    /// The pool, for the stores' queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `postgres://user@host:port/db`, without the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A listener on `channel`, on a connection of its own.
    /// When its connection drops, `try_recv` reconnects, listens again and returns
    /// `Ok(None)` once: notifications sent meanwhile are lost, so the caller reloads.
    pub async fn listen(&self, channel: &str) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(channel).await?;
        Ok(listener)
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
#[path = "../../tests/common/postgres.rs"]
mod test_db;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;

    fn config(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: Secret::new(url),
            max_connections: 2,
            connect_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn a_failed_connection_names_server_and_database_but_not_the_password() {
        let server = test_db::server_url();
        let opts = PgConnectOptions::from_str(&server).expect("test URL");
        let url = format!(
            "postgres://{}:not-the-password@{}:{}/sw_does_not_exist",
            opts.get_username(),
            opts.get_host(),
            opts.get_port()
        );
        let err = Postgres::connect(&config(&url))
            .await
            .expect_err("no such database");
        let text = err.to_string();
        assert!(matches!(err, StorageError::Connect { .. }), "{err:?}");
        assert!(
            text.contains(&format!(
                "{}:{}/sw_does_not_exist",
                opts.get_host(),
                opts.get_port()
            )),
            "{text}"
        );
        assert!(!text.contains("not-the-password"), "{text}");
    }

    #[tokio::test]
    async fn migrations_apply_once_and_again_is_a_no_op() {
        let db = test_db::TestDb::create().await;
        let pg = Postgres::connect(&config(&db.url)).await.expect("connect");
        pg.migrate().await.expect("second run");
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(pg.pool())
            .await
            .expect("migrations table");
        assert_eq!(applied, MIGRATIONS.len() as i64);
        let version: i64 = sqlx::query_scalar("SELECT version FROM governance_version")
            .fetch_one(pg.pool())
            .await
            .expect("counter");
        assert_eq!(version, 0);
        pg.close().await;
    }
}
