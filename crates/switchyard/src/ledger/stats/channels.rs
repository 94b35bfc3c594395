//! The channel report (`switchyard channels report`, `GET /admin/channels`): per
//! channel profile over a time range, time to first token and latency percentiles
//! against the channel's objectives, the share of answers that met each objective,
//! the share of each provider, and the cost per conversation turn.
//!
//! "First token" is a stream's first content chunk and a plain answer's whole body
//! (that is when a plain client sees its first token). Percentiles and attainment
//! count answered requests (status below 400, no error code); errors are counted
//! apart. A turn is a request whose last message was the user's (the ledger's
//! `turn_start`): tool-call round trips belong to the turn they serve, so cost per
//! turn is what one customer message cost, however many calls it took.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::{count, fetch, Arg};
use crate::ledger::{Database, LedgerError};
use crate::types::money::format_usd;
use crate::types::time::format_rfc3339;

/// A channel's objectives, as configured now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Objectives {
    pub ttft: Option<Duration>,
    pub total: Option<Duration>,
}

/// Nearest-rank percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spread {
    pub p50_us: Option<i64>,
    pub p90_us: Option<i64>,
    pub p99_us: Option<i64>,
}

/// One channel's figures over the range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelStats {
    pub channel: String,
    /// `None` for a channel found in the ledger but no longer configured.
    pub objectives: Option<Objectives>,
    pub requests: u64,
    /// Answered: status below 400 and no error code.
    pub answered: u64,
    pub errors: u64,
    pub turns: u64,
    pub cost_nano_usd: i64,
    pub first_token: Spread,
    pub latency: Spread,
    /// Answered requests whose first token / whole answer met the objective (`None`
    /// without that objective).
    pub ttft_met: Option<u64>,
    pub total_met: Option<u64>,
    /// Answered requests per provider that served them.
    pub providers: BTreeMap<String, u64>,
}

impl ChannelStats {
    /// Share of answered requests that met the first-token objective, in %.
    pub fn ttft_attainment(&self) -> Option<f64> {
        self.ttft_met.map(|m| percent(m, self.answered))
    }

    pub fn total_attainment(&self) -> Option<f64> {
        self.total_met.map(|m| percent(m, self.answered))
    }

    /// Cost per conversation turn, nano-USD; `None` without turns.
    pub fn cost_per_turn_nano_usd(&self) -> Option<i64> {
        let turns = i64::try_from(self.turns).ok().filter(|&t| t > 0)?;
        Some(self.cost_nano_usd / turns)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

const RANGE: &str = "started_at_ms >= $1 AND started_at_ms < $2 AND channel IS NOT NULL";
const ANSWERED: &str = "status < 400 AND error_code IS NULL";
/// A plain answer's first token is its whole body.
const FIRST_TOKEN: &str = "COALESCE(ttft_us, latency_us)";

type SpreadRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// The report over `[since_ms, until_ms)` for every channel that has requests in it
/// or is configured (`configured`: name and objectives), in name order.
pub async fn channel_report(
    db: &Database,
    since_ms: i64,
    until_ms: i64,
    configured: &[(String, Objectives)],
) -> Result<Vec<ChannelStats>, LedgerError> {
    let range = [Arg::Int(since_ms), Arg::Int(until_ms)];
    let mut out: BTreeMap<String, ChannelStats> = configured
        .iter()
        .map(|(name, o)| {
            (
                name.clone(),
                ChannelStats {
                    channel: name.clone(),
                    objectives: Some(o.clone()),
                    ..ChannelStats::default()
                },
            )
        })
        .collect();
    let totals: Vec<(String, i64, i64, i64, i64)> = fetch(
        db,
        &format!(
            "SELECT channel, COUNT(*), \
                    CAST(COALESCE(SUM(CASE WHEN {ANSWERED} THEN 1 ELSE 0 END), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(turn_start), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) \
             FROM requests WHERE {RANGE} GROUP BY 1"
        ),
        &range,
    )
    .await?;
    for (channel, requests, answered, turns, cost) in totals {
        let entry = out.entry(channel.clone()).or_insert_with(|| ChannelStats {
            channel,
            ..ChannelStats::default()
        });
        entry.requests = count(requests);
        entry.answered = count(answered);
        entry.errors = entry.requests.saturating_sub(entry.answered);
        entry.turns = count(turns);
        entry.cost_nano_usd = cost;
    }
    // Nearest rank: the value at rank ceil(p × n / 100), in integer arithmetic.
    let rank = |p: u32, order: &str| {
        format!("MAX(CASE WHEN r{order} = ({p} * n + 99) / 100 THEN {order} END)")
    };
    let spreads: Vec<SpreadRow> = fetch(
        db,
        &format!(
            "SELECT channel, {}, {}, {}, {}, {}, {} \
             FROM (SELECT channel, {FIRST_TOKEN} AS ft, latency_us AS lat, \
                          ROW_NUMBER() OVER (PARTITION BY channel ORDER BY {FIRST_TOKEN}) AS rft, \
                          ROW_NUMBER() OVER (PARTITION BY channel ORDER BY latency_us) AS rlat, \
                          COUNT(*) OVER (PARTITION BY channel) AS n \
                   FROM requests WHERE {RANGE} AND {ANSWERED}) ranked \
             GROUP BY channel",
            rank(50, "ft"),
            rank(90, "ft"),
            rank(99, "ft"),
            rank(50, "lat"),
            rank(90, "lat"),
            rank(99, "lat"),
        ),
        &range,
    )
    .await?;
    for (channel, f50, f90, f99, l50, l90, l99) in spreads {
        if let Some(c) = out.get_mut(&channel) {
            c.first_token = Spread {
                p50_us: f50,
                p90_us: f90,
                p99_us: f99,
            };
            c.latency = Spread {
                p50_us: l50,
                p90_us: l90,
                p99_us: l99,
            };
        }
    }
    let shares: Vec<(String, String, i64)> = fetch(
        db,
        &format!(
            "SELECT channel, COALESCE(provider, '(none)'), COUNT(*) \
             FROM requests WHERE {RANGE} AND {ANSWERED} GROUP BY 1, 2"
        ),
        &range,
    )
    .await?;
    for (channel, provider, n) in shares {
        if let Some(c) = out.get_mut(&channel) {
            c.providers.insert(provider, count(n));
        }
    }
    // Attainment per configured channel, against its own objectives.
    for c in out.values_mut() {
        let Some(o) = c.objectives.clone() else {
            continue;
        };
        let micros = |d: Option<Duration>| {
            d.map_or(-1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        };
        let met: Vec<(i64, i64)> = fetch(
            db,
            &format!(
                "SELECT CAST(COALESCE(SUM(CASE WHEN {FIRST_TOKEN} <= $4 THEN 1 ELSE 0 END), 0) AS BIGINT), \
                        CAST(COALESCE(SUM(CASE WHEN latency_us <= $5 THEN 1 ELSE 0 END), 0) AS BIGINT) \
                 FROM requests WHERE {RANGE} AND {ANSWERED} AND channel = $3"
            ),
            &[
                Arg::Int(since_ms),
                Arg::Int(until_ms),
                Arg::Text(c.channel.clone()),
                Arg::Int(micros(o.ttft)),
                Arg::Int(micros(o.total)),
            ],
        )
        .await?;
        let (ttft_met, total_met) = met.first().copied().unwrap_or_default();
        c.ttft_met = o.ttft.map(|_| count(ttft_met));
        c.total_met = o.total.map(|_| count(total_met));
    }
    Ok(out.into_values().collect())
}

fn ms(us: Option<i64>) -> String {
    us.map_or_else(|| "-".to_owned(), |v| format!("{}", v / 1000))
}

fn slo_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string())
}

fn attainment(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%"))
}

/// The report as the CLI prints it: one block per channel.
pub fn render_channel_report(since_ms: i64, until_ms: i64, rows: &[ChannelStats]) -> String {
    let mut out = format!(
        "Channels from {} to {}\n",
        format_rfc3339(since_ms),
        format_rfc3339(until_ms)
    );
    if rows.is_empty() {
        out.push_str("(no channels configured and none in the ledger)\n");
        return out;
    }
    for c in rows {
        let o = c.objectives.clone();
        let _ = writeln!(
            out,
            "\n{}{}\n  requests {}  answered {}  errors {}  turns {}  cost {}  cost/turn {}",
            c.channel,
            if o.is_none() { " (not configured)" } else { "" },
            c.requests,
            c.answered,
            c.errors,
            c.turns,
            format_usd(c.cost_nano_usd),
            c.cost_per_turn_nano_usd()
                .map_or_else(|| "-".to_owned(), format_usd),
        );
        let _ = writeln!(
            out,
            "  first token ms  p50 {}  p90 {}  p99 {}  objective {}  met {}",
            ms(c.first_token.p50_us),
            ms(c.first_token.p90_us),
            ms(c.first_token.p99_us),
            slo_ms(o.as_ref().and_then(|o| o.ttft)),
            attainment(c.ttft_attainment()),
        );
        let _ = writeln!(
            out,
            "  latency ms      p50 {}  p90 {}  p99 {}  objective {}  met {}",
            ms(c.latency.p50_us),
            ms(c.latency.p90_us),
            ms(c.latency.p99_us),
            slo_ms(o.as_ref().and_then(|o| o.total)),
            attainment(c.total_attainment()),
        );
        let shares = c
            .providers
            .iter()
            .map(|(p, n)| format!("{p} {:.1}%", percent(*n, c.answered)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "  providers       {}",
            if shares.is_empty() { "-" } else { &shares }
        );
    }
    out
}

fn spread_json(s: &Spread) -> Value {
    json!({"p50": s.p50_us, "p90": s.p90_us, "p99": s.p99_us})
}

/// The report as `GET /admin/channels` and `--json` give it.
pub fn channel_report_json(since_ms: i64, until_ms: i64, rows: &[ChannelStats]) -> Value {
    let channels: Vec<Value> = rows
        .iter()
        .map(|c| {
            let o = c.objectives.as_ref();
            let duration_ms =
                |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let providers: serde_json::Map<String, Value> = c
                .providers
                .iter()
                .map(|(p, n)| {
                    (
                        p.clone(),
                        json!({"requests": n, "share": percent(*n, c.answered) / 100.0}),
                    )
                })
                .collect();
            json!({
                "channel": c.channel,
                "configured": o.is_some(),
                "ttft_slo_ms": duration_ms(o.and_then(|o| o.ttft)),
                "total_slo_ms": duration_ms(o.and_then(|o| o.total)),
                "requests": c.requests,
                "answered": c.answered,
                "errors": c.errors,
                "turns": c.turns,
                "cost_nano_usd": c.cost_nano_usd,
                "cost_usd": format_usd(c.cost_nano_usd),
                "cost_per_turn_nano_usd": c.cost_per_turn_nano_usd(),
                "cost_per_turn_usd": c.cost_per_turn_nano_usd().map(format_usd),
                "first_token_us": spread_json(&c.first_token),
                "latency_us": spread_json(&c.latency),
                "ttft_met": c.ttft_met,
                "total_met": c.total_met,
                "ttft_attainment_percent": c.ttft_attainment(),
                "total_attainment_percent": c.total_attainment(),
                "providers": providers,
            })
        })
        .collect();
    json!({
        "since_ms": since_ms,
        "until_ms": until_ms,
        "since": format_rfc3339(since_ms),
        "until": format_rfc3339(until_ms),
        "channels": channels,
    })
}
