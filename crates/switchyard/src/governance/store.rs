//! The key and team store (tables `teams`, `virtual_keys`, `admin_events` and the change
//! counter `governance_version`): in an SQLite file (the ledger's by default, created by
//! its migration 0002) or in the PostgreSQL database. [`Store`] dispatches on the
//! engine; the SQL text is the same for both.
//!
//! Every change bumps `governance_version` in the same transaction. On SQLite a running
//! gateway polls that one integer and reloads when it moves; on PostgreSQL the
//! transaction also sends a notification on [`CHANGES_CHANNEL`], which every replica
//! listens to. That is how a key revoked from the CLI or another replica stops working
//! within a second without a restart. Keys are stored as the SHA-256 of the secret
//! only; the secret is returned once, by [`Store::create_key`].

use std::path::Path;

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::config::policy::{Budget, Policy};
use crate::ledger::{prepare, LedgerError};
use crate::storage::sqlite::BUSY_TIMEOUT;
use crate::storage::Database;

/// The PostgreSQL channel on which every change to keys and teams is announced, in
/// the transaction that makes it.
pub const CHANGES_CHANNEL: &str = "switchyard_keys";

/// Virtual keys start with this, so they are recognisable in logs and secret scanners.
pub const KEY_PREFIX: &str = "sy-";
/// Random characters after the prefix: 43 base62 characters carry 256 bits.
const KEY_RANDOM_CHARS: usize = 43;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("governance store {database}: {source}")]
    Sql {
        /// The file, or the server and database without credentials.
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRow {
    pub name: String,
    pub policy: Policy,
    pub budgets: Vec<Budget>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub team: Option<String>,
    /// The first characters of the secret (`sy-AbC123`), to recognise it in lists.
    pub prefix: String,
    pub key_hash: [u8; 32],
    pub policy: Policy,
    pub budgets: Vec<Budget>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// What a new key should be.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub team: Option<String>,
    pub policy: Policy,
    pub budgets: Vec<Budget>,
    pub expires_at_ms: Option<i64>,
}

/// A change to a team or key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub policy: Option<Policy>,
    pub budgets: Option<Vec<Budget>>,
}

pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn generate_secret() -> String {
    let mut s = String::with_capacity(KEY_PREFIX.len() + KEY_RANDOM_CHARS);
    s.push_str(KEY_PREFIX);
    s.push_str(&Alphanumeric.sample_string(&mut rand::rng(), KEY_RANDOM_CHARS));
    s
}

/// Names of keys and teams: what the ledger and reports show.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The key store, on either engine.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    database: Database,
}

/// Runs `$body` with `$p` bound to the engine's pool and `$pg` to whether it is
/// PostgreSQL. A macro, not a generic function, so that one query text serves both
/// engines' connection, transaction and row types.
macro_rules! with_pool {
    ($self:expr, |$p:ident, $pg:ident| $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($p) => {
                let $pg = false;
                $body
            }
            Pool::Postgres($p) => {
                let $pg = true;
                $body
            }
        }
    };
}

/// Bumps the change counter, records the change in `admin_events` and, on
/// PostgreSQL, announces it on [`CHANGES_CHANNEL`], all in the transaction `$tx`.
macro_rules! changed {
    ($tx:ident, $pg:expr, $actor:expr, $action:expr, $target:expr, $detail:expr) => {{
        async {
            sqlx::query("UPDATE governance_version SET version = version + 1 WHERE id = 1")
                .execute(&mut *$tx)
                .await?;
            sqlx::query(
                "INSERT INTO admin_events (at_ms, actor, action, target, detail) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(crate::types::time::now_ms())
            .bind($actor)
            .bind($action)
            .bind($target)
            .bind($detail)
            .execute(&mut *$tx)
            .await?;
            if $pg {
                // Delivered to the listeners when (and only if) the transaction commits.
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANGES_CHANNEL)
                    .bind($action)
                    .execute(&mut *$tx)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await
    }};
}

const TEAM_COLUMNS: &str = "name, policy, budgets, created_at_ms";
type TeamTuple = (String, String, String, i64);

const KEY_COLUMNS: &str = "id, name, team, key_hash, prefix, policy, budgets, created_at_ms, \
     expires_at_ms, revoked_at_ms";
type KeyTuple = (
    String,
    String,
    Option<String>,
    Vec<u8>,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

impl Store {
    /// Opens the SQLite store at `path`, creating the file and its tables if needed.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        prepare(path).await?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Sql {
                database: path.display().to_string(),
                source,
            })?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            database: Database::Sqlite(path.to_owned()),
        })
    }

    /// Opens the store in `db`: an SQLite file as [`Store::open`] does, or the
    /// PostgreSQL database (already migrated when it connected).
    pub async fn open_on(db: &Database) -> Result<Store, StoreError> {
        match db {
            Database::Sqlite(path) => Store::open(path).await,
            Database::Postgres(pg) => Ok(Store {
                pool: Pool::Postgres(pg.pool().clone()),
                database: db.clone(),
            }),
        }
    }

    /// Whether the store's tables exist: a PostgreSQL database opened without
    /// migrating ([`crate::storage::Postgres::connect_unmigrated`]) may have none yet.
    /// An SQLite store is migrated when it opens.
    pub async fn has_schema(&self) -> bool {
        match &self.pool {
            Pool::Sqlite(_) => true,
            Pool::Postgres(p) => {
                sqlx::query_scalar::<_, bool>("SELECT to_regclass('keys') IS NOT NULL")
                    .fetch_one(p)
                    .await
                    .unwrap_or(false)
            }
        }
    }

    /// Where the store lives.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Closes the store's connections (with PostgreSQL, those of the pool it shares).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    fn sql(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        |source| StoreError::Sql {
            database: self.database.to_string(),
            source,
        }
    }

    /// The change counter; it moves on every change to teams or keys.
    pub async fn version(&self) -> Result<i64, StoreError> {
        with_pool!(self, |p, _pg| sqlx::query_scalar(
            "SELECT version FROM governance_version WHERE id = 1"
        )
        .fetch_one(p)
        .await)
        .map_err(self.sql())
    }

    pub async fn teams(&self) -> Result<Vec<TeamRow>, StoreError> {
        let sql = format!("SELECT {TEAM_COLUMNS} FROM teams ORDER BY name");
        let rows: Vec<TeamTuple> =
            with_pool!(self, |p, _pg| sqlx::query_as(&sql).fetch_all(p).await)
                .map_err(self.sql())?;
        let mut teams = rows
            .into_iter()
            .map(team_row)
            .collect::<Result<Vec<_>, _>>()?;
        // By bytes, whatever PostgreSQL's collation: both engines list alike.
        teams.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(teams)
    }

    pub async fn team(&self, name: &str) -> Result<TeamRow, StoreError> {
        let sql = format!("SELECT {TEAM_COLUMNS} FROM teams WHERE name = $1");
        let row: Option<TeamTuple> = with_pool!(self, |p, _pg| sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(p)
            .await)
        .map_err(self.sql())?;
        team_row(row.ok_or_else(|| StoreError::NotFound(format!("no team `{name}`")))?)
    }

    /// Keys, all or one team's, newest first.
    pub async fn keys(&self, team: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        let filter = if team.is_some() {
            "WHERE team = $1"
        } else {
            ""
        };
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys {filter}");
        let rows: Vec<KeyTuple> = with_pool!(self, |p, _pg| {
            let mut q = sqlx::query_as(&sql);
            if let Some(t) = team {
                q = q.bind(t);
            }
            q.fetch_all(p).await
        })
        .map_err(self.sql())?;
        let mut keys = rows
            .into_iter()
            .map(key_row)
            .collect::<Result<Vec<_>, _>>()?;
        // Newest first, then by name in bytes, on both engines alike.
        keys.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.name.as_bytes().cmp(b.name.as_bytes()))
        });
        Ok(keys)
    }

    /// A key by id or name.
    pub async fn key(&self, id_or_name: &str) -> Result<KeyRow, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE id = $1 OR name = $1");
        let row: Option<KeyTuple> = with_pool!(self, |p, _pg| sqlx::query_as(&sql)
            .bind(id_or_name)
            .fetch_optional(p)
            .await)
        .map_err(self.sql())?;
        key_row(row.ok_or_else(|| StoreError::NotFound(format!("no key `{id_or_name}`")))?)
    }

    pub async fn create_team(
        &self,
        name: &str,
        policy: &Policy,
        budgets: &[Budget],
        actor: &str,
    ) -> Result<TeamRow, StoreError> {
        if !valid_name(name) {
            return Err(invalid_name("team", name));
        }
        let now = crate::types::time::now_ms();
        let inserted = with_pool!(self, |p, pg| async {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "INSERT INTO teams (name, policy, budgets, created_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(to_json(policy))
            .bind(to_json(budgets))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(false); // `tx` rolls back on drop
            }
            changed!(tx, pg, actor, "team.create", name, to_json(policy))?;
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await)
        .map_err(self.sql())?;
        if !inserted {
            return Err(StoreError::Conflict(format!(
                "team `{name}` already exists"
            )));
        }
        self.team(name).await
    }

    pub async fn update_team(
        &self,
        name: &str,
        u: &Update,
        actor: &str,
    ) -> Result<TeamRow, StoreError> {
        let current = self.team(name).await?;
        let policy = u.policy.as_ref().unwrap_or(&current.policy);
        let budgets = u.budgets.as_deref().unwrap_or(&current.budgets);
        with_pool!(self, |p, pg| async {
            let mut tx = p.begin().await?;
            sqlx::query("UPDATE teams SET policy = $1, budgets = $2 WHERE name = $3")
                .bind(to_json(policy))
                .bind(to_json(budgets))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            changed!(tx, pg, actor, "team.update", name, to_json(policy))?;
            tx.commit().await
        }
        .await)
        .map_err(self.sql())?;
        self.team(name).await
    }

    /// Creates a key; returns its row and the secret, which is not kept anywhere.
    pub async fn create_key(
        &self,
        new: &NewKey,
        actor: &str,
    ) -> Result<(KeyRow, String), StoreError> {
        if !valid_name(&new.name) {
            return Err(invalid_name("key", &new.name));
        }
        if let Some(team) = &new.team {
            self.team(team).await?;
        }
        let secret = generate_secret();
        let id = format!("vk_{}", hex::encode(rand::random::<[u8; 8]>()));
        let prefix: String = secret.chars().take(KEY_PREFIX.len() + 6).collect();
        let now = crate::types::time::now_ms();
        let hash = hash_key(&secret);
        let inserted = with_pool!(self, |p, pg| async {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "INSERT INTO virtual_keys (id, name, team, key_hash, prefix, policy, budgets, created_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&id)
            .bind(&new.name)
            .bind(new.team.as_deref())
            .bind(hash.as_slice())
            .bind(&prefix)
            .bind(to_json(&new.policy))
            .bind(to_json(&new.budgets))
            .bind(now)
            .bind(new.expires_at_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            changed!(tx, pg, actor, "key.create", &new.name, &id)?;
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await)
        .map_err(self.sql())?;
        if !inserted {
            return Err(StoreError::Conflict(format!(
                "a key named `{}` already exists (names are never reused, revoked keys included)",
                new.name
            )));
        }
        Ok((self.key(&id).await?, secret))
    }

    pub async fn update_key(
        &self,
        id_or_name: &str,
        u: &Update,
        actor: &str,
    ) -> Result<KeyRow, StoreError> {
        let current = self.key(id_or_name).await?;
        let policy = u.policy.as_ref().unwrap_or(&current.policy);
        let budgets = u.budgets.as_deref().unwrap_or(&current.budgets);
        with_pool!(self, |p, pg| async {
            let mut tx = p.begin().await?;
            sqlx::query("UPDATE virtual_keys SET policy = $1, budgets = $2 WHERE id = $3")
                .bind(to_json(policy))
                .bind(to_json(budgets))
                .bind(&current.id)
                .execute(&mut *tx)
                .await?;
            changed!(tx, pg, actor, "key.update", &current.name, to_json(policy))?;
            tx.commit().await
        }
        .await)
        .map_err(self.sql())?;
        self.key(&current.id).await
    }

    /// Revokes a key (idempotent: revoking twice keeps the first time).
    pub async fn revoke_key(&self, id_or_name: &str, actor: &str) -> Result<KeyRow, StoreError> {
        let current = self.key(id_or_name).await?;
        let now = crate::types::time::now_ms();
        with_pool!(self, |p, pg| async {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE virtual_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2",
            )
            .bind(now)
            .bind(&current.id)
            .execute(&mut *tx)
            .await?;
            changed!(tx, pg, actor, "key.revoke", &current.name, &current.id)?;
            tx.commit().await
        }
        .await)
        .map_err(self.sql())?;
        self.key(&current.id).await
    }
}

fn team_row(t: TeamTuple) -> Result<TeamRow, StoreError> {
    let (name, policy, budgets, created_at_ms) = t;
    Ok(TeamRow {
        name,
        policy: from_json(&policy)?,
        budgets: from_json(&budgets)?,
        created_at_ms,
    })
}

fn key_row(t: KeyTuple) -> Result<KeyRow, StoreError> {
    let (
        id,
        name,
        team,
        hash,
        prefix,
        policy,
        budgets,
        created_at_ms,
        expires_at_ms,
        revoked_at_ms,
    ) = t;
    Ok(KeyRow {
        id,
        name,
        team,
        prefix,
        key_hash: hash
            .try_into()
            .map_err(|_| StoreError::Invalid("a stored key hash is not 32 bytes".into()))?,
        policy: from_json(&policy)?,
        budgets: from_json(&budgets)?,
        created_at_ms,
        expires_at_ms,
        revoked_at_ms,
    })
}

fn invalid_name(what: &str, name: &str) -> StoreError {
    StoreError::Invalid(format!(
        "`{name}` is not a valid {what} name: use 1 to 64 letters, digits, `-`, `_`, `.` or `@`"
    ))
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Invalid(format!("a stored policy or budget cannot be read: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_stored_hashed_and_changes_bump_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("g.db")).await.expect("open");
        let v0 = store.version().await.expect("version");
        store
            .create_team("research", &Policy::default(), &[], "test")
            .await
            .expect("team");
        assert!(matches!(
            store
                .create_team("research", &Policy::default(), &[], "test")
                .await,
            Err(StoreError::Conflict(_))
        ));
        let (row, secret) = store
            .create_key(
                &NewKey {
                    name: "eu-app".into(),
                    team: Some("research".into()),
                    ..NewKey::default()
                },
                "test",
            )
            .await
            .expect("key");
        assert!(secret.starts_with("sy-") && secret.len() == 46, "{secret}");
        assert_eq!(row.key_hash, hash_key(&secret));
        assert!(secret.starts_with(&row.prefix));
        // The secret is nowhere in the file.
        let bytes = std::fs::read(dir.path().join("g.db")).expect("read");
        let wal = std::fs::read(dir.path().join("g.db-wal")).unwrap_or_default();
        let needle = secret.as_bytes();
        for b in [&bytes, &wal] {
            assert!(!b.windows(needle.len()).any(|w| w == needle));
        }
        let revoked = store.revoke_key("eu-app", "test").await.expect("revoke");
        assert!(revoked.revoked_at_ms.is_some());
        assert!(store.version().await.expect("version") >= v0 + 3);
        assert!(matches!(
            store
                .create_key(
                    &NewKey {
                        name: "eu-app".into(),
                        ..NewKey::default()
                    },
                    "test"
                )
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store
                .create_key(
                    &NewKey {
                        name: "x".into(),
                        team: Some("nope".into()),
                        ..NewKey::default()
                    },
                    "test"
                )
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store
                .create_team("bad name", &Policy::default(), &[], "test")
                .await,
            Err(StoreError::Invalid(_))
        ));
    }
}
