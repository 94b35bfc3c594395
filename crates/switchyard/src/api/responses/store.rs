//! Stored responses (`store: true`): the table `responses` in the ledger's database
//! (the SQLite file, or PostgreSQL), one query text for both engines.
//!
//! A row keeps the conversation's input items up to the response and the response
//! object itself, for `previous_response_id` and `GET`/`DELETE /v1/responses/{id}`.
//! Rows belong to the key that created them, and to its team: any other caller is
//! told the response does not exist. A row expires `ledger.responses_ttl_days` after it
//! was written (the value in force then: a later change leaves existing rows as they
//! are); expired rows are never read, and are deleted (a bounded batch at a time)
//! whenever a row is written.

use serde_json::Value;

use crate::storage::Database;

/// One day, in ms.
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Expired rows deleted per write, at most.
const PURGE_BATCH: i64 = 100;

/// Who is asking: a key, and its team.
#[derive(Debug, Clone)]
pub struct Owner {
    pub key_id: String,
    pub team: Option<String>,
}

/// One stored response.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The input items that led to the response.
    pub items: Vec<Value>,
    /// The response object.
    pub response: Value,
}

impl Stored {
    /// The conversation the next turn continues: these items, then the output.
    pub fn conversation(&self) -> Vec<Value> {
        let mut all = self.items.clone();
        all.extend(
            self.response
                .get("output")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        all
    }
}

const SELECT: &str = "SELECT items, response FROM responses \
     WHERE id = $1 AND expires_at_ms > $2 AND (key_id = $3 OR (team IS NOT NULL AND team = $4))";
const DELETE: &str = "DELETE FROM responses \
     WHERE id = $1 AND expires_at_ms > $2 AND (key_id = $3 OR (team IS NOT NULL AND team = $4))";
const INSERT: &str = "INSERT INTO responses \
     (id, key_id, team, created_at_ms, expires_at_ms, items, response) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const PURGE: &str = "DELETE FROM responses WHERE id IN \
     (SELECT id FROM responses WHERE expires_at_ms <= $1 LIMIT $2)";

/// The store on the ledger's database.
#[derive(Debug, Clone)]
pub struct ResponseStore {
    db: Database,
    /// How long a row written now is kept, in ms.
    ttl_ms: i64,
}

impl ResponseStore {
    /// The store on `db`, whose new rows are kept `ttl_days` days.
    pub fn new(db: Database, ttl_days: u32) -> Self {
        ResponseStore {
            db,
            ttl_ms: i64::from(ttl_days).saturating_mul(DAY_MS),
        }
    }

    pub async fn put(
        &self,
        id: &str,
        owner: &Owner,
        items: &[Value],
        response: &Value,
    ) -> Result<(), sqlx::Error> {
        let now = crate::types::time::now_ms();
        let items = serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
        let response = response.to_string();
        macro_rules! run {
            ($conn:expr) => {{
                sqlx::query(INSERT)
                    .bind(id)
                    .bind(&owner.key_id)
                    .bind(owner.team.as_deref())
                    .bind(now)
                    .bind(now.saturating_add(self.ttl_ms))
                    .bind(&items)
                    .bind(&response)
                    .execute($conn)
                    .await?;
                sqlx::query(PURGE)
                    .bind(now)
                    .bind(PURGE_BATCH)
                    .execute($conn)
                    .await?;
            }};
        }
        match &self.db {
            Database::Sqlite(path) => {
                let mut conn = crate::storage::sqlite::connect(path, false).await?;
                run!(&mut conn);
            }
            Database::Postgres(pg) => run!(pg.pool()),
        }
        Ok(())
    }

    /// The response `id` if `owner` may see it and it has not expired.
    pub async fn get(&self, id: &str, owner: &Owner) -> Result<Option<Stored>, sqlx::Error> {
        let now = crate::types::time::now_ms();
        let team = owner.team.clone().unwrap_or_default();
        macro_rules! run {
            ($conn:expr) => {
                sqlx::query_as::<_, (String, String)>(SELECT)
                    .bind(id)
                    .bind(now)
                    .bind(&owner.key_id)
                    .bind(&team)
                    .fetch_optional($conn)
                    .await?
            };
        }
        let row = match &self.db {
            Database::Sqlite(path) => {
                let mut conn = crate::storage::sqlite::connect(path, false).await?;
                run!(&mut conn)
            }
            Database::Postgres(pg) => run!(pg.pool()),
        };
        Ok(row.map(|(items, response)| Stored {
            items: serde_json::from_str(&items).unwrap_or_default(),
            response: serde_json::from_str(&response).unwrap_or_default(),
        }))
    }

    /// Deletes the response `id` if `owner` may; whether there was one.
    pub async fn delete(&self, id: &str, owner: &Owner) -> Result<bool, sqlx::Error> {
        let now = crate::types::time::now_ms();
        let team = owner.team.clone().unwrap_or_default();
        macro_rules! run {
            ($conn:expr) => {
                sqlx::query(DELETE)
                    .bind(id)
                    .bind(now)
                    .bind(&owner.key_id)
                    .bind(&team)
                    .execute($conn)
                    .await?
                    .rows_affected()
            };
        }
        let done = match &self.db {
            Database::Sqlite(path) => {
                let mut conn = crate::storage::sqlite::connect(path, false).await?;
                run!(&mut conn)
            }
            Database::Postgres(pg) => run!(pg.pool()),
        };
        Ok(done > 0)
    }
}
