//! Spend reports over the ledger (`switchyard spend`).

use crate::types::money::format_usd;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use sqlx::Connection;

use super::{connect, user_version, Database, LedgerError, SCHEMA_VERSION};
use crate::storage::Postgres;

/// What [`spend_report`] groups requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpendGroup {
    /// The model name the client asked for.
    Model,
    /// The caller's key; requests without one (failed auth) show as `(none)`.
    Key,
    /// The deployment that served (or was tried last).
    Deployment,
    /// UTC calendar day of `started_at_ms`, `YYYY-MM-DD`.
    Day,
    /// The caller's team; keys without one show as `(none)`.
    Team,
    /// The provider of the deployment that served.
    Provider,
}

impl SpendGroup {
    /// Every variant, for CLI help.
    pub const ALL: [SpendGroup; 6] = [
        Self::Model,
        Self::Key,
        Self::Deployment,
        Self::Day,
        Self::Team,
        Self::Provider,
    ];

    /// Lower-case name as accepted by [`FromStr`]: `model`, `key`, `deployment`, `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Key => "key",
            Self::Deployment => "deployment",
            Self::Day => "day",
            Self::Team => "team",
            Self::Provider => "provider",
        }
    }

    /// SQL expression for the group label. Only ever one of these constants is
    /// spliced into the query, never user input. The calendar day is the one label
    /// whose SQL differs between the engines.
    fn sql_expr(self, postgres: bool) -> &'static str {
        match self {
            Self::Model => "COALESCE(logical_model, '(none)')",
            Self::Key => "COALESCE(key_id, '(none)')",
            Self::Deployment => "COALESCE(deployment, '(none)')",
            Self::Day if postgres => {
                "to_char(to_timestamp(started_at_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            }
            Self::Day => "date(started_at_ms / 1000, 'unixepoch')",
            Self::Team => "COALESCE(team_id, '(none)')",
            Self::Provider => "COALESCE(provider, '(none)')",
        }
    }
}

impl fmt::Display for SpendGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpendGroup {
    type Err = String;

    /// Parses `model`, `key`, `deployment` or `day` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|g| g.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown spend grouping {s:?}; expected model, key, deployment, day, team or provider"
                )
            })
    }
}

/// One line of a spend report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendRow {
    /// Group label (model, key, deployment or `YYYY-MM-DD`); `(none)` when unset.
    pub group: String,
    /// Requests in the group.
    pub requests: u64,
    /// Requests that failed: HTTP status >= 400, or an `error_code` was set
    /// (which also catches streams cut after a 200 was sent).
    pub errors: u64,
    /// Sum of prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of completion tokens.
    pub completion_tokens: u64,
    /// Sum of cached prompt tokens.
    pub cached_tokens: u64,
    /// Sum of request cost, nano-USD.
    pub cost_nano_usd: i64,
}

/// Sums the `requests` table of the ledger in `db` (an SQLite file or the
/// PostgreSQL database), grouped by `by`, over requests started at or after
/// `since_ms` (unix ms) when given. Rows are sorted by cost descending, then group
/// ascending (by bytes, whatever the database's collation).
///
/// Opens an existing SQLite file without creating it or changing its schema, so it
/// is safe to run against the file of a live gateway (WAL allows concurrent
/// readers).
pub async fn spend_report(
    db: impl Into<Database>,
    by: SpendGroup,
    since_ms: Option<i64>,
) -> Result<Vec<SpendRow>, LedgerError> {
    spend_query(
        db,
        &SpendQuery {
            by,
            since_ms,
            team: None,
        },
    )
    .await
}

/// What to report: the one query behind `switchyard spend` and `GET /admin/spend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendQuery {
    pub by: SpendGroup,
    /// Only requests started at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// Only this team's requests (a team-scoped caller sees no other).
    pub team: Option<String>,
}

/// [`spend_report`] with every filter.
pub async fn spend_query(
    db: impl Into<Database>,
    q: &SpendQuery,
) -> Result<Vec<SpendRow>, LedgerError> {
    let mut rows = match db.into() {
        Database::Sqlite(path) => spend_sqlite(&path, q).await?,
        Database::Postgres(pg) => {
            let sql = spend_sql(q, SCHEMA_VERSION, true);
            let mut query =
                sqlx::query_as::<_, SpendTuple>(&sql).bind(q.since_ms.unwrap_or(i64::MIN));
            if let Some(team) = &q.team {
                query = query.bind(team);
            }
            query
                .fetch_all(pg.pool())
                .await
                .map_err(|source| pg_err(&pg, source))?
                .into_iter()
                .map(spend_row)
                .collect()
        }
    };
    // Sorted here, not by the database: PostgreSQL would order the labels by its
    // collation, SQLite by bytes, and the report must not depend on the engine.
    rows.sort_by(|a, b| {
        b.cost_nano_usd
            .cmp(&a.cost_nano_usd)
            .then_with(|| a.group.as_bytes().cmp(b.group.as_bytes()))
    });
    Ok(rows)
}

/// A report line as the query returns it: group, requests, errors, prompt,
/// completion and cached tokens, cost.
type SpendTuple = (Option<String>, i64, i64, i64, i64, i64, i64);

fn spend_row(t: SpendTuple) -> SpendRow {
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    let (group, requests, errors, prompt, completion, cached, cost) = t;
    SpendRow {
        // Only `date()` of an out-of-range timestamp yields NULL.
        group: group.unwrap_or_else(|| "(invalid)".to_owned()),
        requests: count(requests),
        errors: count(errors),
        prompt_tokens: count(prompt),
        completion_tokens: count(completion),
        cached_tokens: count(cached),
        cost_nano_usd: cost,
    }
}

fn pg_err(pg: &Postgres, source: sqlx::Error) -> LedgerError {
    LedgerError::Postgres {
        target: pg.target().to_owned(),
        source,
    }
}

/// The report's query for a schema `version` (SQLite files before 4 lack columns;
/// PostgreSQL has them all). Sums are cast to BIGINT: PostgreSQL's SUM of a BIGINT
/// is NUMERIC, and SQLite's CAST keeps its integer.
fn spend_sql(q: &SpendQuery, version: i64, postgres: bool) -> String {
    // Files of schema 1 have no team column: nobody has a team there.
    let has_teams = version >= 2;
    // Keys are grouped by id and shown by name; files before schema 4 hold the
    // name in `key_id`.
    let (grp, group_by) = match q.by {
        SpendGroup::Team if !has_teams => ("'(none)'", "grp"),
        SpendGroup::Key if version >= 4 => ("COALESCE(MAX(key_name), key_id, '(none)')", "key_id"),
        by => (by.sql_expr(postgres), "grp"),
    };
    let team_filter = if q.team.is_some() {
        "AND team_id = $2"
    } else {
        ""
    };
    format!(
        "SELECT {grp} AS grp, \
                COUNT(*) AS requests, \
                CAST(COALESCE(SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
                CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
                CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
                CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached_tokens, \
                CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) AS cost \
         FROM requests \
         WHERE started_at_ms >= $1 {team_filter} \
         GROUP BY {group_by}"
    )
}

async fn spend_sqlite(path: &Path, q: &SpendQuery) -> Result<Vec<SpendRow>, LedgerError> {
    // Check first: SQLite's own "unable to open database file" does not say why.
    tokio::fs::metadata(path)
        .await
        .map_err(|source| LedgerError::Io {
            path: path.to_owned(),
            source,
        })?;
    let mut conn = connect(path, false).await?;
    let sql_err = |source| LedgerError::Sql {
        path: path.to_owned(),
        source,
    };

    let version = user_version(&mut conn).await.map_err(sql_err)?;
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(LedgerError::Schema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if q.team.is_some() && version < 2 {
        let _ = conn.close().await;
        return Ok(Vec::new());
    }
    let sql = spend_sql(q, version, false);
    let mut query = sqlx::query_as::<_, SpendTuple>(&sql)
        // No filter = from the beginning of time; keeps one query shape.
        .bind(q.since_ms.unwrap_or(i64::MIN));
    if let Some(team) = &q.team {
        query = query.bind(team);
    }
    let rows = query.fetch_all(&mut conn).await.map_err(sql_err)?;
    // A failed close only matters for writers; the report is already read.
    let _ = conn.close().await;
    Ok(rows.into_iter().map(spend_row).collect())
}

/// Whose spend [`SpendReader::spent_since`] sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpentBy<'a> {
    /// A key, by its id (`vk_…`, `cfg:<name>`): never by name, which a key of the
    /// config file and a virtual key might share.
    Key(&'a str),
    /// A team, by name (team names are unique in the key store).
    Team(&'a str),
}

/// Reads spend from the ledger, for seeding budgets: whatever database the ledger
/// is, which need not be the key store's.
#[derive(Debug)]
pub struct SpendReader {
    inner: ReaderInner,
}

#[derive(Debug)]
enum ReaderInner {
    Sqlite {
        conn: sqlx::sqlite::SqliteConnection,
        path: std::path::PathBuf,
    },
    Postgres(Postgres),
}

impl SpendReader {
    /// Opens the ledger in `db` for reading; an SQLite file must exist with a current
    /// schema (the gateway opens, and so migrates, its ledger before it seeds budgets).
    pub async fn open(db: impl Into<Database>) -> Result<SpendReader, LedgerError> {
        let path = match db.into() {
            Database::Sqlite(path) => path,
            Database::Postgres(pg) => {
                return Ok(SpendReader {
                    inner: ReaderInner::Postgres(pg),
                })
            }
        };
        tokio::fs::metadata(&path)
            .await
            .map_err(|source| LedgerError::Io {
                path: path.clone(),
                source,
            })?;
        let mut conn = connect(&path, false).await?;
        let version = user_version(&mut conn)
            .await
            .map_err(|source| LedgerError::Sql {
                path: path.clone(),
                source,
            })?;
        if version != SCHEMA_VERSION {
            let _ = conn.close().await;
            return Err(LedgerError::Schema {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(SpendReader {
            inner: ReaderInner::Sqlite { conn, path },
        })
    }

    /// Nano-USD spent by a key or team in requests started at or after `since_ms`.
    /// Shadow rows (`kind = 'shadow'`) count in no budget: the gateway sent them, not
    /// the caller.
    pub async fn spent_since(
        &mut self,
        by: SpentBy<'_>,
        since_ms: i64,
    ) -> Result<i64, LedgerError> {
        let (sql, who) = match by {
            SpentBy::Key(id) => (
                "SELECT CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) FROM requests \
                 WHERE key_id = $1 AND started_at_ms >= $2 AND kind IS NULL",
                id,
            ),
            SpentBy::Team(name) => (
                "SELECT CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) FROM requests \
                 WHERE team_id = $1 AND started_at_ms >= $2 AND kind IS NULL",
                name,
            ),
        };
        match &mut self.inner {
            ReaderInner::Sqlite { conn, path } => sqlx::query_scalar(sql)
                .bind(who)
                .bind(since_ms)
                .fetch_one(conn)
                .await
                .map_err(|source| LedgerError::Sql {
                    path: path.clone(),
                    source,
                }),
            ReaderInner::Postgres(pg) => sqlx::query_scalar(sql)
                .bind(who)
                .bind(since_ms)
                .fetch_one(pg.pool())
                .await
                .map_err(|source| pg_err(pg, source)),
        }
    }

    pub async fn close(self) {
        if let ReaderInner::Sqlite { conn, .. } = self.inner {
            let _ = conn.close().await;
        }
    }
}

/// `1234567` → `1,234,567`: token counts get long enough to need grouping.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        // Chunks of ASCII digits are always valid UTF-8.
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    groups.reverse();
    groups.join(",")
}

/// Renders `rows` as an aligned plain-text table under `title`, followed by a
/// TOTAL line. Counts use thousands separators; cost uses [`format_usd`].
pub fn render_spend_table(title: &str, rows: &[SpendRow]) -> String {
    const HEADERS: [&str; 7] = [
        "GROUP",
        "REQUESTS",
        "ERRORS",
        "PROMPT_TOKENS",
        "COMPLETION_TOKENS",
        "CACHED_TOKENS",
        "COST",
    ];
    let cells = |r: &SpendRow| -> [String; 7] {
        [
            r.group.clone(),
            group_digits(r.requests),
            group_digits(r.errors),
            group_digits(r.prompt_tokens),
            group_digits(r.completion_tokens),
            group_digits(r.cached_tokens),
            format_usd(r.cost_nano_usd),
        ]
    };

    // Saturating: a report must render even if some sum is absurd.
    let total = rows.iter().fold(
        SpendRow {
            group: "TOTAL".to_owned(),
            ..SpendRow::default()
        },
        |mut t, r| {
            t.requests = t.requests.saturating_add(r.requests);
            t.errors = t.errors.saturating_add(r.errors);
            t.prompt_tokens = t.prompt_tokens.saturating_add(r.prompt_tokens);
            t.completion_tokens = t.completion_tokens.saturating_add(r.completion_tokens);
            t.cached_tokens = t.cached_tokens.saturating_add(r.cached_tokens);
            t.cost_nano_usd = t.cost_nano_usd.saturating_add(r.cost_nano_usd);
            t
        },
    );

    let body: Vec<[String; 7]> = rows.iter().map(cells).collect();
    let total_cells = cells(&total);
    let mut widths = HEADERS.map(|h| h.chars().count());
    for line in body.iter().chain(std::iter::once(&total_cells)) {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }

    let fmt_line = |line: &[String]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in line.iter().zip(widths).enumerate() {
            if i == 0 {
                // Group labels read left-aligned; numbers right-aligned.
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!("  {c:>w$}"));
            }
        }
        s.trim_end().to_owned()
    };
    let rule = "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1));

    let mut out = String::new();
    out.push_str(title);
    out.push('\n');
    out.push_str(&fmt_line(&HEADERS.map(str::to_owned)));
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    if rows.is_empty() {
        out.push_str("(no requests)\n");
    }
    for line in &body {
        out.push_str(&fmt_line(line));
        out.push('\n');
    }
    out.push_str(&rule);
    out.push('\n');
    out.push_str(&fmt_line(&total_cells));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open_ledger, rec};
    use super::*;
    use crate::types::Usage;

    #[test]
    fn format_usd_is_exact_with_documented_rounding() {
        assert_eq!(format_usd(0), "$0.000000");
        assert_eq!(format_usd(1_234_567_890), "$1.234568");
        assert_eq!(format_usd(1_234_567_499), "$1.234567");
        assert_eq!(format_usd(1_234_567_500), "$1.234568"); // half away from zero
        assert_eq!(format_usd(-1_500), "-$0.000002");
        assert_eq!(format_usd(123_000), "$0.000123");
        assert_eq!(format_usd(1_000_000_000), "$1.000000");
        // Sub-micro amounts keep all nine digits rather than showing as zero.
        assert_eq!(format_usd(150), "$0.000000150");
        assert_eq!(format_usd(499), "$0.000000499");
        assert_eq!(format_usd(500), "$0.000001");
        assert_eq!(format_usd(-1), "-$0.000000001");
        // Extremes: an f64 path would lose the low digits here.
        assert_eq!(format_usd(i64::MAX), "$9223372036.854776");
        assert_eq!(format_usd(i64::MIN), "-$9223372036.854776");
        assert_eq!(format_usd(9_007_199_254_740_993), "$9007199.254741");
        assert_eq!(format_usd(9_007_199_254_740_499), "$9007199.254740");
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_000), "1,000");
        assert_eq!(group_digits(123_456), "123,456");
        assert_eq!(group_digits(1_234_567), "1,234,567");
        assert_eq!(group_digits(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn spend_group_parses() {
        for g in SpendGroup::ALL {
            assert_eq!(g.as_str().parse::<SpendGroup>(), Ok(g));
        }
        assert_eq!("Model".parse::<SpendGroup>(), Ok(SpendGroup::Model));
        assert!("region".parse::<SpendGroup>().is_err());
    }

    #[test]
    fn table_is_aligned_and_totals() {
        let rows = vec![
            SpendRow {
                group: "gpt-4o".into(),
                requests: 1_200,
                errors: 3,
                prompt_tokens: 1_234_567,
                completion_tokens: 89,
                cached_tokens: 0,
                cost_nano_usd: 2_500_000_000,
            },
            SpendRow {
                group: "(none)".into(),
                requests: 4,
                errors: 4,
                cost_nano_usd: 150,
                ..SpendRow::default()
            },
        ];
        let t = render_spend_table("Spend by model", &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Spend by model");
        assert!(lines[1].starts_with("GROUP "));
        assert!(lines[3].starts_with("gpt-4o ") && lines[3].ends_with("$2.500000"));
        assert!(lines[3].contains("1,234,567"));
        assert!(lines[4].starts_with("(none) ") && lines[4].ends_with("$0.000000150"));
        assert!(lines[6].starts_with("TOTAL ") && lines[6].ends_with("$2.500000"));
        assert!(lines[6].contains("1,204"));
        // Right-aligned numeric columns: header, rows and total end together.
        let len = lines[1].len();
        for l in [lines[3], lines[4], lines[6]] {
            assert_eq!(l.len(), len, "misaligned: {l:?}");
        }
        assert_eq!(lines[2].len(), len);

        let empty = render_spend_table("Spend", &[]);
        assert!(empty.contains("(no requests)"));
        assert!(empty
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("TOTAL") && l.ends_with("$0.000000")));
    }

    /// 2024-03-01T00:00:00Z in unix ms.
    const MAR1: i64 = 1_709_251_200_000;
    const DAY: i64 = 86_400_000;

    /// id, started_at_ms, key, model, deployment, status, error_code,
    /// [prompt, completion, cached] tokens, cost nano-USD.
    type Fixture = (
        &'static str,
        i64,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        u16,
        Option<&'static str>,
        [u64; 3],
        i64,
    );

    #[rustfmt::skip]
    const FIXTURE: &[Fixture] = &[
        // Day 1, 2024-03-01 (one request refused at auth: no key, no model).
        ("a", MAR1 + 1_000,       Some("alice"), Some("gpt"),    Some("oai-east"), 200, None,                    [100, 10, 5], 1_000),
        ("b", MAR1 + 2_000,       Some("alice"), Some("claude"), Some("anth"),     200, None,                    [200, 20, 0], 5_000),
        ("c", MAR1 + 3_000,       None,          None,           None,             401, Some("invalid_api_key"), [0, 0, 0],    0),
        // Day 2, 2024-03-02, up to its very last millisecond; a 200 with a cut
        // stream counts as an error.
        ("d", MAR1 + DAY,         Some("bob"),   Some("gpt"),    Some("oai-west"), 200, Some("stream_cut"),      [300, 30, 0], 2_000),
        ("e", MAR1 + 2 * DAY - 1, Some("bob"),   Some("gpt"),    Some("oai-east"), 502, Some("upstream_5xx"),    [0, 0, 0],    0),
        // Day 3, 2024-03-03.
        ("f", MAR1 + 2 * DAY,     Some("alice"), Some("gpt"),    Some("oai-east"), 200, None,                    [400, 40, 7], 4_000),
    ];

    /// Writes [`FIXTURE`] through a real ledger and returns the file path.
    async fn fixture(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("spend.db");
        let ledger = open_ledger(&path, 1024).await;
        let sink = ledger.sink();
        for &(id, at, key, model, dep, status, err, [p, c, k], cost) in FIXTURE {
            let mut r = rec(id, 0);
            r.started_at_ms = at;
            r.key_id = key.map(|k| format!("cfg:{k}"));
            r.key_name = key.map(str::to_owned);
            r.logical_model = model.map(str::to_owned);
            r.deployment = dep.map(str::to_owned);
            r.status = status;
            r.error_code = err.map(str::to_owned);
            r.usage = Usage {
                prompt_tokens: p,
                completion_tokens: c,
                cached_tokens: k,
                estimated: false,
                ..Usage::default()
            };
            r.cost_nano_usd = cost;
            sink.record(r);
        }
        let stats = ledger.shutdown().await.expect("shutdown");
        assert_eq!(stats.written, FIXTURE.len() as u64);
        path
    }

    fn row(g: &str, req: u64, err: u64, p: u64, c: u64, k: u64, cost: i64) -> SpendRow {
        SpendRow {
            group: g.into(),
            requests: req,
            errors: err,
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: k,
            cost_nano_usd: cost,
        }
    }

    #[tokio::test]
    async fn spend_report_groups_and_filters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fixture(&dir).await;

        let by_model = spend_report(&path, SpendGroup::Model, None)
            .await
            .expect("model");
        assert_eq!(
            by_model,
            vec![
                row("gpt", 4, 2, 800, 80, 12, 7_000),
                row("claude", 1, 0, 200, 20, 0, 5_000),
                row("(none)", 1, 1, 0, 0, 0, 0),
            ]
        );

        let by_key = spend_report(&path, SpendGroup::Key, None)
            .await
            .expect("key");
        assert_eq!(
            by_key,
            vec![
                row("alice", 3, 0, 700, 70, 12, 10_000),
                row("bob", 2, 2, 300, 30, 0, 2_000),
                row("(none)", 1, 1, 0, 0, 0, 0),
            ]
        );

        let by_dep = spend_report(&path, SpendGroup::Deployment, None)
            .await
            .expect("dep");
        assert_eq!(
            by_dep,
            vec![
                row("anth", 1, 0, 200, 20, 0, 5_000),
                row("oai-east", 3, 1, 500, 50, 12, 5_000),
                row("oai-west", 1, 1, 300, 30, 0, 2_000),
                row("(none)", 1, 1, 0, 0, 0, 0),
            ]
        );

        let by_day = spend_report(&path, SpendGroup::Day, None)
            .await
            .expect("day");
        assert_eq!(
            by_day,
            vec![
                row("2024-03-01", 3, 1, 300, 30, 5, 6_000),
                row("2024-03-03", 1, 0, 400, 40, 7, 4_000),
                row("2024-03-02", 2, 2, 300, 30, 0, 2_000),
            ]
        );

        // `since_ms` is inclusive and drops day 1 entirely.
        let since = spend_report(&path, SpendGroup::Key, Some(MAR1 + DAY))
            .await
            .expect("since");
        assert_eq!(
            since,
            vec![
                row("alice", 1, 0, 400, 40, 7, 4_000),
                row("bob", 2, 2, 300, 30, 0, 2_000),
            ]
        );
        let none = spend_report(&path, SpendGroup::Model, Some(MAR1 + 3 * DAY))
            .await
            .expect("empty");
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn spend_report_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.db");
        let err = spend_report(&missing, SpendGroup::Model, None)
            .await
            .expect_err("missing");
        assert!(matches!(err, LedgerError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.db"), "{err}");
        assert!(!missing.exists(), "a report must not create the file");

        // An SQLite file that is not a ledger (schema version 0).
        let other = dir.path().join("other.db");
        let mut c = super::super::connect(&other, true).await.expect("connect");
        sqlx::raw_sql("CREATE TABLE t (x INTEGER)")
            .execute(&mut c)
            .await
            .expect("create");
        c.close().await.expect("close");
        let err = spend_report(&other, SpendGroup::Model, None)
            .await
            .expect_err("not a ledger");
        assert!(
            matches!(err, LedgerError::Schema { found: 0, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("other.db"), "{err}");
    }
}
