//! The shadow report (`switchyard shadow report MODEL`, `GET /admin/shadow`): a
//! model's mirrored requests side by side with the client's requests they mirror.
//!
//! Only pairs count: the client's side is the requests that were mirrored (not all of
//! the model's traffic), so both columns describe the same prompts. A plain answer's
//! time to first token is its whole latency, as in the channel report.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{fetch, Arg};
use crate::ledger::{Database, LedgerError};
use crate::types::money::format_usd;
use crate::types::time::format_rfc3339;

/// One side's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    /// The deployments that served this side, with their request counts.
    pub deployments: Vec<(String, u64)>,
    pub requests: u64,
    pub errors: u64,
    pub latency_p50_us: Option<i64>,
    pub latency_p99_us: Option<i64>,
    pub ttft_p50_us: Option<i64>,
    pub ttft_p99_us: Option<i64>,
    pub cost_nano_usd: i64,
}

impl Side {
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.requests)
    }

    /// Cost per 1,000 requests, nano-USD.
    pub fn cost_per_1000(&self) -> Option<i64> {
        (self.requests > 0).then(|| {
            let total = i128::from(self.cost_nano_usd) * 1000 / i128::from(self.requests);
            i64::try_from(total).unwrap_or(i64::MAX)
        })
    }
}

/// A pair whose answers disagreed, where both callers' policies allowed keeping
/// content.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub request_id: String,
    pub agreement: f64,
    pub prompt: Option<String>,
    pub primary: Option<String>,
    pub candidate: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowReport {
    pub model: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub primary: Side,
    pub candidate: Side,
    /// Pairs whose answers were compared (both answered in OpenAI's shape).
    pub compared: u64,
    pub mean_agreement: Option<f64>,
    /// Compared pairs at or above `agree_at`.
    pub agreed: u64,
    pub agree_at: f64,
    pub disagreements: Vec<Example>,
    /// Embeddings calls made to compare text answers (`shadow.embeddings`), and their
    /// cost: what the evaluation itself cost beyond the candidate's calls.
    pub similarity_calls: u64,
    pub similarity_cost_nano_usd: i64,
}

impl ShadowReport {
    /// Share of compared pairs that agreed, 0 to 1.
    pub fn agreement_rate(&self) -> Option<f64> {
        (self.compared > 0).then(|| ratio(self.agreed, self.compared))
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Nearest rank: the value at rank ceil(p × n / 100) of the sorted values.
fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

type Row = (String, i64, i64, i64, Option<String>, i64, Option<f64>);
/// The client's request id, the agreement, the prompt and both answers.
type ExampleRow = (String, f64, Option<String>, Option<String>, Option<String>);

fn side(rows: &[Row]) -> Side {
    let mut s = Side::default();
    let mut latency: Vec<i64> = Vec::with_capacity(rows.len());
    let mut ttft: Vec<i64> = Vec::with_capacity(rows.len());
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for (deployment, lat, first, status, error, cost, _) in rows {
        s.requests += 1;
        if *status >= 400 || error.is_some() {
            s.errors += 1;
        } else {
            latency.push(*lat);
            ttft.push(*first);
        }
        s.cost_nano_usd = s.cost_nano_usd.saturating_add(*cost);
        if !deployment.is_empty() {
            *by.entry(deployment.clone()).or_default() += 1;
        }
    }
    latency.sort_unstable();
    ttft.sort_unstable();
    s.latency_p50_us = percentile(&latency, 50);
    s.latency_p99_us = percentile(&latency, 99);
    s.ttft_p50_us = percentile(&ttft, 50);
    s.ttft_p99_us = percentile(&ttft, 99);
    s.deployments = by.into_iter().collect();
    s
}

const COLUMNS: &str = "COALESCE(deployment, ''), latency_us, COALESCE(ttft_us, latency_us), \
                       status, error_code, cost_nano_usd, agreement";

/// The report for `model` over `[since_ms, until_ms)` (by the shadow rows' start).
/// `agree_at` is the model's threshold (`config::DEFAULT_AGREE_AT` when it no longer
/// has a shadow).
pub async fn shadow_report(
    db: &Database,
    model: &str,
    since_ms: i64,
    until_ms: i64,
    agree_at: f64,
) -> Result<ShadowReport, LedgerError> {
    let args = [
        Arg::Text(model.to_owned()),
        Arg::Int(since_ms),
        Arg::Int(until_ms),
    ];
    // The candidate's calls; the embeddings calls that scored text answers are
    // counted apart.
    let scope = "kind = 'shadow' AND logical_model = $1 AND started_at_ms >= $2 \
                 AND started_at_ms < $3";
    let shadows = format!("{scope} AND endpoint <> 'embeddings'");
    let candidate: Vec<Row> = fetch(
        db,
        &format!("SELECT {COLUMNS} FROM requests WHERE {shadows}"),
        &args,
    )
    .await?;
    let primary: Vec<Row> = fetch(
        db,
        &format!(
            "SELECT {COLUMNS} FROM requests WHERE request_id IN \
             (SELECT shadow_of FROM requests WHERE {shadows})"
        ),
        &args,
    )
    .await?;
    // Read after the candidate's rows: a comparison's embeddings row is written
    // before its shadow row, so every pair counted above has its call counted here.
    let (similarity_calls, similarity_cost): (i64, i64) = fetch(
        db,
        &format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) FROM requests \
             WHERE {scope} AND endpoint = 'embeddings'"
        ),
        &args,
    )
    .await?
    .first()
    .copied()
    .unwrap_or_default();
    let scores: Vec<f64> = candidate.iter().filter_map(|r| r.6).collect();
    let compared = scores.len() as u64;
    let agreed = scores.iter().filter(|s| **s >= agree_at).count() as u64;
    let mean_agreement =
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
    let examples: Vec<ExampleRow> = fetch(
        db,
        &format!(
            "SELECT s.shadow_of, s.agreement, pc.prompt, pc.response, sc.response \
             FROM requests s \
             JOIN request_content sc ON sc.request_id = s.request_id \
             JOIN request_content pc ON pc.request_id = s.shadow_of \
             WHERE s.{} AND s.agreement < $4 \
             ORDER BY s.agreement, s.started_at_ms LIMIT 3",
            shadows.replace(" AND ", " AND s.")
        ),
        &[
            Arg::Text(model.to_owned()),
            Arg::Int(since_ms),
            Arg::Int(until_ms),
            Arg::Real(agree_at),
        ],
    )
    .await?;
    Ok(ShadowReport {
        model: model.to_owned(),
        since_ms,
        until_ms,
        primary: side(&primary),
        candidate: side(&candidate),
        compared,
        mean_agreement,
        agreed,
        agree_at,
        similarity_calls: u64::try_from(similarity_calls).unwrap_or(0),
        similarity_cost_nano_usd: similarity_cost,
        disagreements: examples
            .into_iter()
            .map(
                |(request_id, agreement, prompt, primary, candidate)| Example {
                    request_id,
                    agreement,
                    prompt,
                    primary,
                    candidate,
                },
            )
            .collect(),
    })
}

fn ms(us: Option<i64>) -> String {
    us.map_or_else(
        || "–".to_owned(),
        |v| format!("{:.1} ms", v as f64 / 1000.0),
    )
}

fn deployments(s: &Side) -> String {
    if s.deployments.is_empty() {
        return "–".to_owned();
    }
    s.deployments
        .iter()
        .map(|(d, n)| format!("{d} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as text: the two sides in columns, then agreement and examples.
pub fn render_shadow_report(r: &ShadowReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shadow report for model {} from {} to {}",
        r.model,
        format_rfc3339(r.since_ms),
        format_rfc3339(r.until_ms)
    );
    if r.candidate.requests == 0 {
        let _ = writeln!(out, "no mirrored requests in this range");
        return out;
    }
    let rows: [(&str, String, String); 9] = [
        ("", "client's".to_owned(), "candidate".to_owned()),
        (
            "deployments",
            deployments(&r.primary),
            deployments(&r.candidate),
        ),
        (
            "requests",
            r.primary.requests.to_string(),
            r.candidate.requests.to_string(),
        ),
        (
            "error rate",
            format!("{:.1}%", r.primary.error_rate() * 100.0),
            format!("{:.1}%", r.candidate.error_rate() * 100.0),
        ),
        (
            "latency p50",
            ms(r.primary.latency_p50_us),
            ms(r.candidate.latency_p50_us),
        ),
        (
            "latency p99",
            ms(r.primary.latency_p99_us),
            ms(r.candidate.latency_p99_us),
        ),
        (
            "first token p50",
            ms(r.primary.ttft_p50_us),
            ms(r.candidate.ttft_p50_us),
        ),
        (
            "first token p99",
            ms(r.primary.ttft_p99_us),
            ms(r.candidate.ttft_p99_us),
        ),
        (
            "cost / 1,000 req",
            r.primary.cost_per_1000().map_or("–".to_owned(), format_usd),
            r.candidate
                .cost_per_1000()
                .map_or("–".to_owned(), format_usd),
        ),
    ];
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    for (label, a, b) in &rows {
        let _ = writeln!(out, "  {label:<17} {a:<w1$}  {b}");
    }
    match r.agreement_rate() {
        Some(rate) => {
            let _ = writeln!(
                out,
                "  agreement         {:.1}% of {} compared pairs at or above {:.2} (mean {:.3})",
                rate * 100.0,
                r.compared,
                r.agree_at,
                r.mean_agreement.unwrap_or(0.0)
            );
        }
        None => {
            let _ = writeln!(out, "  agreement         no pair compared");
        }
    }
    if r.similarity_calls > 0 {
        let _ = writeln!(
            out,
            "  similarity        by embeddings: {} calls, {} in all",
            r.similarity_calls,
            format_usd(r.similarity_cost_nano_usd)
        );
    }
    for e in &r.disagreements {
        let _ = writeln!(
            out,
            "  disagreement on {} ({:.3}):",
            e.request_id, e.agreement
        );
        for (label, text) in [
            ("prompt", &e.prompt),
            ("client's", &e.primary),
            ("candidate", &e.candidate),
        ] {
            let t = text.as_deref().unwrap_or("–");
            let short: String = t.chars().take(200).collect();
            let _ = writeln!(out, "    {label:<9} {short}");
        }
    }
    out
}

fn side_json(s: &Side) -> Value {
    json!({
        "deployments": s.deployments.iter().map(|(d, n)| json!({"deployment": d, "requests": n})).collect::<Vec<_>>(),
        "requests": s.requests,
        "errors": s.errors,
        "error_rate": s.error_rate(),
        "latency_us": {"p50": s.latency_p50_us, "p99": s.latency_p99_us},
        "first_token_us": {"p50": s.ttft_p50_us, "p99": s.ttft_p99_us},
        "cost_nano_usd": s.cost_nano_usd,
        "cost_per_1000_nano_usd": s.cost_per_1000(),
        "cost_per_1000_usd": s.cost_per_1000().map(format_usd),
    })
}

/// The report as `GET /admin/shadow` and `--json` give it.
pub fn shadow_report_json(r: &ShadowReport) -> Value {
    json!({
        "object": "shadow.report",
        "model": r.model,
        "since": format_rfc3339(r.since_ms),
        "until": format_rfc3339(r.until_ms),
        "primary": side_json(&r.primary),
        "candidate": side_json(&r.candidate),
        "compared": r.compared,
        "agreed": r.agreed,
        "agree_at": r.agree_at,
        "agreement_rate": r.agreement_rate(),
        "mean_agreement": r.mean_agreement,
        "similarity_calls": r.similarity_calls,
        "similarity_cost_nano_usd": r.similarity_cost_nano_usd,
        "disagreements": r.disagreements.iter().map(|e| json!({
            "request_id": e.request_id,
            "agreement": e.agreement,
            "prompt": e.prompt,
            "primary": e.primary,
            "candidate": e.candidate,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_errors_count_apart() {
        let rows: Vec<Row> = (1..=100)
            .map(|i| ("d".to_owned(), i * 1000, i * 100, 200, None, 10, Some(1.0)))
            .chain(std::iter::once((
                "d".to_owned(),
                9_999_999,
                9_999_999,
                502,
                Some("upstream_5xx".to_owned()),
                0,
                None,
            )))
            .collect();
        let s = side(&rows);
        assert_eq!((s.requests, s.errors), (101, 1));
        assert_eq!(s.latency_p50_us, Some(50_000));
        assert_eq!(s.latency_p99_us, Some(99_000));
        assert_eq!(s.ttft_p50_us, Some(5_000));
        assert_eq!(s.cost_per_1000(), Some(1000 * 1000 / 101));
        assert_eq!(s.deployments, vec![("d".to_owned(), 101)]);
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 99), Some(7));
    }
}
