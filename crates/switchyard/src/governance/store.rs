//! The key and team store: SQLite, in the same file as the ledger by default (tables
//! `teams`, `virtual_keys`, `admin_events` and the change counter `governance_version`,
//! created by migration 0002).
//!
//! Every change bumps `governance_version` in the same transaction; a running gateway
//! polls that one integer and reloads when it moves, which is how a key revoked from the
//! CLI stops working within the refresh interval without a restart. Keys are stored as
//! the SHA-256 of the secret only; the secret is returned once, by [`Store::create_key`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::Row;

use crate::config::policy::{Budget, Policy};
use crate::ledger::{prepare, LedgerError};

/// Virtual keys start with this, so they are recognisable in logs and secret scanners.
pub const KEY_PREFIX: &str = "sy-";
/// Random characters after the prefix: 43 base62 characters carry 256 bits.
const KEY_RANDOM_CHARS: usize = 43;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("governance store {}: {source}", path.display())]
    Sql {
        path: PathBuf,
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
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens the store, creating the file and its tables if needed.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        prepare(path).await?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Sql {
                path: path.to_owned(),
                source,
            })?;
        Ok(Store {
            pool,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn sql(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        |source| StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// The change counter; it moves on every change to teams or keys.
    pub async fn version(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT version FROM governance_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(self.sql())
    }

    pub async fn teams(&self) -> Result<Vec<TeamRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM teams ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql())?;
        rows.iter().map(|r| self.team_row(r)).collect()
    }

    pub async fn team(&self, name: &str) -> Result<TeamRow, StoreError> {
        let row = sqlx::query("SELECT * FROM teams WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql())?
            .ok_or_else(|| StoreError::NotFound(format!("no team `{name}`")))?;
        self.team_row(&row)
    }

    /// Keys, all or one team's, newest first.
    pub async fn keys(&self, team: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        let rows =
            match team {
                Some(t) => sqlx::query(
                    "SELECT * FROM virtual_keys WHERE team = ? ORDER BY created_at_ms DESC, name",
                )
                .bind(t)
                .fetch_all(&self.pool)
                .await,
                None => {
                    sqlx::query("SELECT * FROM virtual_keys ORDER BY created_at_ms DESC, name")
                        .fetch_all(&self.pool)
                        .await
                }
            }
            .map_err(self.sql())?;
        rows.iter().map(|r| self.key_row(r)).collect()
    }

    /// A key by id or name.
    pub async fn key(&self, id_or_name: &str) -> Result<KeyRow, StoreError> {
        let row = sqlx::query("SELECT * FROM virtual_keys WHERE id = ? OR name = ?")
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql())?
            .ok_or_else(|| StoreError::NotFound(format!("no key `{id_or_name}`")))?;
        self.key_row(&row)
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
        let mut tx = self.pool.begin().await.map_err(self.sql())?;
        let inserted = sqlx::query(
            "INSERT INTO teams (name, policy, budgets, created_at_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(to_json(policy))
        .bind(to_json(budgets))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(self.sql())?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "team `{name}` already exists"
            )));
        }
        changed(&mut tx, actor, "team.create", name, &to_json(policy))
            .await
            .map_err(self.sql())?;
        tx.commit().await.map_err(self.sql())?;
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
        let mut tx = self.pool.begin().await.map_err(self.sql())?;
        sqlx::query("UPDATE teams SET policy = ?, budgets = ? WHERE name = ?")
            .bind(to_json(policy))
            .bind(to_json(budgets))
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(self.sql())?;
        changed(&mut tx, actor, "team.update", name, &to_json(policy))
            .await
            .map_err(self.sql())?;
        tx.commit().await.map_err(self.sql())?;
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
        let mut tx = self.pool.begin().await.map_err(self.sql())?;
        let inserted = sqlx::query(
            "INSERT INTO virtual_keys (id, name, team, key_hash, prefix, policy, budgets, created_at_ms, expires_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(new.team.as_deref())
        .bind(hash_key(&secret).as_slice())
        .bind(&prefix)
        .bind(to_json(&new.policy))
        .bind(to_json(&new.budgets))
        .bind(now)
        .bind(new.expires_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(self.sql())?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a key named `{}` already exists (names are never reused, revoked keys included)",
                new.name
            )));
        }
        changed(&mut tx, actor, "key.create", &new.name, &id)
            .await
            .map_err(self.sql())?;
        tx.commit().await.map_err(self.sql())?;
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
        let mut tx = self.pool.begin().await.map_err(self.sql())?;
        sqlx::query("UPDATE virtual_keys SET policy = ?, budgets = ? WHERE id = ?")
            .bind(to_json(policy))
            .bind(to_json(budgets))
            .bind(&current.id)
            .execute(&mut *tx)
            .await
            .map_err(self.sql())?;
        changed(
            &mut tx,
            actor,
            "key.update",
            &current.name,
            &to_json(policy),
        )
        .await
        .map_err(self.sql())?;
        tx.commit().await.map_err(self.sql())?;
        self.key(&current.id).await
    }

    /// Revokes a key (idempotent: revoking twice keeps the first time).
    pub async fn revoke_key(&self, id_or_name: &str, actor: &str) -> Result<KeyRow, StoreError> {
        let current = self.key(id_or_name).await?;
        let mut tx = self.pool.begin().await.map_err(self.sql())?;
        sqlx::query(
            "UPDATE virtual_keys SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE id = ?",
        )
        .bind(crate::types::time::now_ms())
        .bind(&current.id)
        .execute(&mut *tx)
        .await
        .map_err(self.sql())?;
        changed(&mut tx, actor, "key.revoke", &current.name, &current.id)
            .await
            .map_err(self.sql())?;
        tx.commit().await.map_err(self.sql())?;
        self.key(&current.id).await
    }

    fn team_row(&self, r: &SqliteRow) -> Result<TeamRow, StoreError> {
        Ok(TeamRow {
            name: r.try_get("name").map_err(self.sql())?,
            policy: from_json(&r.try_get::<String, _>("policy").map_err(self.sql())?)?,
            budgets: from_json(&r.try_get::<String, _>("budgets").map_err(self.sql())?)?,
            created_at_ms: r.try_get("created_at_ms").map_err(self.sql())?,
        })
    }

    fn key_row(&self, r: &SqliteRow) -> Result<KeyRow, StoreError> {
        let hash: Vec<u8> = r.try_get("key_hash").map_err(self.sql())?;
        Ok(KeyRow {
            id: r.try_get("id").map_err(self.sql())?,
            name: r.try_get("name").map_err(self.sql())?,
            team: r.try_get("team").map_err(self.sql())?,
            prefix: r.try_get("prefix").map_err(self.sql())?,
            key_hash: hash
                .try_into()
                .map_err(|_| StoreError::Invalid("a stored key hash is not 32 bytes".into()))?,
            policy: from_json(&r.try_get::<String, _>("policy").map_err(self.sql())?)?,
            budgets: from_json(&r.try_get::<String, _>("budgets").map_err(self.sql())?)?,
            created_at_ms: r.try_get("created_at_ms").map_err(self.sql())?,
            expires_at_ms: r.try_get("expires_at_ms").map_err(self.sql())?,
            revoked_at_ms: r.try_get("revoked_at_ms").map_err(self.sql())?,
        })
    }
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

/// Bumps the change counter and records the change in `admin_events`.
async fn changed(
    tx: &mut sqlx::SqliteConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE governance_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO admin_events (at_ms, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(crate::types::time::now_ms())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
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
