//! The ledger's rows as column values, and their insert statements, in one place for
//! both writers: PostgreSQL's (sqlx, multi-row statements) and SQLite's (rusqlite, on
//! its own thread) bind the same cells in the same order, so a column added here
//! reaches both.

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

use super::{to_sql_int, AttemptRecord, RequestRecord};

/// The `requests` columns, in the order of [`request_cells`].
pub(super) const REQUEST_COLUMNS: [&str; 37] = [
    "request_id",
    "started_at_ms",
    "key_id",
    "endpoint",
    "logical_model",
    "deployment",
    "provider",
    "upstream_model",
    "status",
    "error_code",
    "streamed",
    "client_disconnected",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "usage_estimated",
    "cost_nano_usd",
    "latency_us",
    "ttft_us",
    "attempt_count",
    "team_id",
    "policy_decision",
    "redactions",
    "reasoning_tokens",
    "cache_write_tokens",
    "key_name",
    "channel",
    "turn_start",
    "cache_hit",
    "needs",
    "max_tokens",
    "allowed_regions",
    "required_tags",
    "list_cost_nano_usd",
    "kind",
    "shadow_of",
    "agreement",
];

/// The `attempts` columns, in the order of [`attempt_cells`].
pub(super) const ATTEMPT_COLUMNS: [&str; 17] = [
    "request_id",
    "attempt",
    "started_at_ms",
    "deployment",
    "provider",
    "upstream_model",
    "status",
    "error_class",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "usage_estimated",
    "cost_nano_usd",
    "latency_us",
    "reasoning_tokens",
    "cache_write_tokens",
    "list_cost_nano_usd",
];

/// `INSERT INTO table (cols) VALUES ($1, …), … <tail>` for `rows` rows. Numbered
/// placeholders are the one syntax both engines take.
pub(super) fn insert_sql(table: &str, cols: &[&str], rows: usize, tail: &str) -> String {
    let tuples: Vec<String> = (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=cols.len())
                .map(|c| format!("${}", row * cols.len() + c))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES {} {tail}",
        cols.join(", "),
        tuples.join(", ")
    )
}

/// One column's value, borrowed from its record; `None` is SQL NULL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cell<'a> {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<&'a str>),
}

impl From<i64> for Cell<'_> {
    fn from(v: i64) -> Self {
        Cell::Int(Some(v))
    }
}

impl From<Option<i64>> for Cell<'_> {
    fn from(v: Option<i64>) -> Self {
        Cell::Int(v)
    }
}

impl From<bool> for Cell<'_> {
    fn from(v: bool) -> Self {
        Cell::Int(Some(i64::from(v)))
    }
}

impl From<u64> for Cell<'_> {
    fn from(v: u64) -> Self {
        Cell::Int(Some(to_sql_int(v)))
    }
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(v: &'a str) -> Self {
        Cell::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Cell<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Cell::Text(v)
    }
}

/// A request row, column by column as [`REQUEST_COLUMNS`] names them.
pub(super) fn request_cells(r: &RequestRecord) -> [Cell<'_>; REQUEST_COLUMNS.len()] {
    let replay = r.replay.as_ref();
    let shadow = r.shadow.as_ref();
    [
        r.request_id.as_str().into(),
        r.started_at_ms.into(),
        r.key_id.as_deref().into(),
        r.endpoint.into(),
        r.logical_model.as_deref().into(),
        r.deployment.as_deref().into(),
        r.provider.as_deref().into(),
        r.upstream_model.as_deref().into(),
        i64::from(r.status).into(),
        r.error_code.as_deref().into(),
        r.streamed.into(),
        r.client_disconnected.into(),
        r.usage.prompt_tokens.into(),
        r.usage.completion_tokens.into(),
        r.usage.cached_tokens.into(),
        r.usage.estimated.into(),
        r.cost_nano_usd.into(),
        r.latency_us.into(),
        r.ttft_us.into(),
        (r.attempts.len() as u64).into(),
        r.team_id.as_deref().into(),
        r.policy_decision.as_deref().into(),
        r.redactions.as_deref().into(),
        r.usage.reasoning_tokens.into(),
        r.usage.cache_write_tokens.into(),
        r.key_name.as_deref().into(),
        r.channel.as_deref().into(),
        r.turn_start.into(),
        r.cache_hit.into(),
        replay.map(|p| p.needs.as_str()).into(),
        replay.and_then(|p| p.max_tokens).map(to_sql_int).into(),
        replay.and_then(|p| p.allowed_regions.as_deref()).into(),
        replay.map(|p| p.required_tags.as_str()).into(),
        r.list_cost_nano_usd.into(),
        shadow.map(|_| "shadow").into(),
        shadow.map(|s| s.of.as_str()).into(),
        Cell::Real(shadow.and_then(|s| s.agreement)),
    ]
}

/// Attempt `a` of request `request_id`, column by column as [`ATTEMPT_COLUMNS`] names
/// them.
pub(super) fn attempt_cells<'a>(
    request_id: &'a str,
    a: &'a AttemptRecord,
) -> [Cell<'a>; ATTEMPT_COLUMNS.len()] {
    [
        request_id.into(),
        i64::from(a.attempt).into(),
        a.started_at_ms.into(),
        a.deployment.as_str().into(),
        a.provider.as_str().into(),
        a.upstream_model.as_str().into(),
        a.status.map(i64::from).into(),
        a.error_class.as_deref().into(),
        a.usage.prompt_tokens.into(),
        a.usage.completion_tokens.into(),
        a.usage.cached_tokens.into(),
        a.usage.estimated.into(),
        a.cost_nano_usd.into(),
        a.latency_us.into(),
        a.usage.reasoning_tokens.into(),
        a.usage.cache_write_tokens.into(),
        a.list_cost_nano_usd.into(),
    ]
}

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Cell::Int(Some(v)) => ValueRef::Integer(v),
            Cell::Real(Some(v)) => ValueRef::Real(v),
            Cell::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Cell::Int(None) | Cell::Real(None) | Cell::Text(None) => ValueRef::Null,
        }))
    }
}

/// Binds `cells` to the next placeholders of a PostgreSQL statement.
pub(super) fn bind_all<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    cells: &[Cell<'q>],
) -> Query<'q, Postgres, PgArguments> {
    for cell in cells {
        q = match *cell {
            Cell::Int(v) => q.bind(v),
            Cell::Real(v) => q.bind(v),
            Cell::Text(v) => q.bind(v),
        };
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_column_gets_the_value_of_its_name() {
        let mut r = RequestRecord {
            request_id: "req_1".into(),
            started_at_ms: 7,
            endpoint: "chat",
            key_id: Some("k".into()),
            status: 429,
            streamed: true,
            ..RequestRecord::default()
        };
        r.usage.prompt_tokens = u64::MAX;
        let cells = request_cells(&r);
        let at = |name: &str| {
            let i = REQUEST_COLUMNS.iter().position(|c| *c == name).expect(name);
            cells[i]
        };
        assert_eq!(at("request_id"), Cell::Text(Some("req_1")));
        assert_eq!(at("started_at_ms"), Cell::Int(Some(7)));
        assert_eq!(at("endpoint"), Cell::Text(Some("chat")));
        assert_eq!(at("key_id"), Cell::Text(Some("k")));
        assert_eq!(at("status"), Cell::Int(Some(429)));
        assert_eq!(at("streamed"), Cell::Int(Some(1)));
        assert_eq!(at("client_disconnected"), Cell::Int(Some(0)));
        // Counts beyond SQL's integers are stored at its largest.
        assert_eq!(at("prompt_tokens"), Cell::Int(Some(i64::MAX)));
        assert_eq!(at("ttft_us"), Cell::Int(None));
        assert_eq!(at("kind"), Cell::Text(None));
        assert_eq!(at("agreement"), Cell::Real(None));
    }
}
