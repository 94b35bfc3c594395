//! What a what-if replay reads of the ledger: each request of a time range with what
//! routing was given for it (no content), and each deployment's observed latencies.
//! The replay itself (routing the rows through another configuration) is
//! `crate::whatif`'s; this is only the query side, one SQL text for both engines.

use std::collections::BTreeMap;

use super::{fetch, Arg};
use crate::ledger::{Database, LedgerError};

/// One `requests` row, as a replay needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayRow {
    pub request_id: String,
    /// `chat.completions`, `messages`, `responses` or `embeddings`.
    pub endpoint: String,
    pub logical_model: Option<String>,
    /// The deployment that served (or was tried last).
    pub deployment: Option<String>,
    pub provider: Option<String>,
    pub team_id: Option<String>,
    /// Whether the client got an answer: status below 400 and no error code.
    pub answered: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cache_write_tokens: u64,
    /// The recorded cost, nano-USD (every billed attempt of the request), at the
    /// effective (contracted) prices it was served at.
    pub cost_nano_usd: i64,
    /// The same at list prices (rows written before contracts: the recorded cost).
    pub list_cost_nano_usd: i64,
    /// When the request started, Unix ms.
    pub started_at_ms: i64,
    pub latency_us: i64,
    pub cache_hit: bool,
    /// What routing was given; `None` when the request never reached routing (refused
    /// before it, or recorded before the ledger kept these).
    pub routed: Option<RoutedFacts>,
}

/// The routing facts of a row, as stored (see `ledger::ReplayFacts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutedFacts {
    /// `tools`, `vision`, `json_schema`, comma-separated.
    pub needs: String,
    pub max_tokens: Option<u64>,
    /// JSON array; `None`: any region.
    pub allowed_regions: Option<String>,
    /// JSON array.
    pub required_tags: Option<String>,
}

const REPLAY_COLUMNS: &str = "request_id, endpoint, logical_model, deployment, provider, team_id, \
     CAST(CASE WHEN status < 400 AND error_code IS NULL THEN 1 ELSE 0 END AS BIGINT), \
     prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cache_write_tokens, \
     cost_nano_usd, latency_us, cache_hit, needs, max_tokens, allowed_regions, required_tags, \
     COALESCE(list_cost_nano_usd, cost_nano_usd), started_at_ms";

/// More columns than sqlx decodes into a tuple, so the row is read by position here.
impl<'r, R> sqlx::FromRow<'r, R> for ReplayRow
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let text = |i: usize| row.try_get::<Option<String>, usize>(i);
        let int = |i: usize| row.try_get::<i64, usize>(i);
        let tokens = |i: usize| int(i).map(|v| u64::try_from(v).unwrap_or(0));
        let needs = text(15)?;
        let routed = match needs {
            Some(needs) => Some(RoutedFacts {
                needs,
                max_tokens: row
                    .try_get::<Option<i64>, usize>(16)?
                    .and_then(|v| u64::try_from(v).ok()),
                allowed_regions: text(17)?,
                required_tags: text(18)?,
            }),
            None => None,
        };
        Ok(ReplayRow {
            request_id: row.try_get::<String, usize>(0)?,
            endpoint: row.try_get::<String, usize>(1)?,
            logical_model: text(2)?,
            deployment: text(3)?,
            provider: text(4)?,
            team_id: text(5)?,
            answered: int(6)? == 1,
            prompt_tokens: tokens(7)?,
            completion_tokens: tokens(8)?,
            cached_tokens: tokens(9)?,
            reasoning_tokens: tokens(10)?,
            cache_write_tokens: tokens(11)?,
            cost_nano_usd: int(12)?,
            list_cost_nano_usd: int(19)?,
            started_at_ms: int(20)?,
            latency_us: int(13)?,
            cache_hit: int(14)? != 0,
            routed,
        })
    }
}

/// The requests that started in `[since_ms, until_ms)` (of `model` only, when given),
/// oldest first; ties in time are broken by request id, so the order is the same on
/// every read.
pub async fn replay_rows(
    db: &Database,
    since_ms: i64,
    until_ms: i64,
    model: Option<&str>,
) -> Result<Vec<ReplayRow>, LedgerError> {
    let mut args = vec![Arg::Int(since_ms), Arg::Int(until_ms)];
    let mut filter = String::new();
    if let Some(m) = model {
        args.push(Arg::Text(m.to_owned()));
        filter.push_str(" AND logical_model = $3");
    }
    let sql = format!(
        "SELECT {REPLAY_COLUMNS} FROM requests \
         WHERE started_at_ms >= $1 AND started_at_ms < $2 AND kind IS NULL{filter} \
         ORDER BY started_at_ms, request_id"
    );
    fetch(db, &sql, &args).await
}

/// The latencies (µs) of the successful upstream calls each deployment made in
/// `[since_ms, until_ms)`, by deployment name, each list sorted ascending.
pub async fn deployment_latencies(
    db: &Database,
    since_ms: i64,
    until_ms: i64,
) -> Result<BTreeMap<String, Vec<i64>>, LedgerError> {
    let rows: Vec<(String, i64)> = fetch(
        db,
        "SELECT deployment, latency_us FROM attempts \
         WHERE started_at_ms >= $1 AND started_at_ms < $2 \
           AND error_class IS NULL AND status < 400 \
         ORDER BY deployment, latency_us",
        &[Arg::Int(since_ms), Arg::Int(until_ms)],
    )
    .await?;
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (deployment, us) in rows {
        out.entry(deployment).or_default().push(us);
    }
    Ok(out)
}
