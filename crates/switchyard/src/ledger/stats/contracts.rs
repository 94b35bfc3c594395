//! The contract report (`switchyard contracts`, `GET /admin/contracts`): for each
//! contract at a moment, its current period's commitment, what the covered
//! deployments consumed so far, the run rate, the projection to the period's end and
//! what it means: a shortfall (committed money paid for nothing) or an overage, and the
//! days until the cap is reached.
//!
//! Consumption is read from the ledger's attempts on the covered deployments (every
//! call is billed, failover and hedges included), at the effective (contracted) price;
//! a provisioned contract's consumption is the list-price value of what it served,
//! against the fixed fee of its hours. The projection is linear: consumption so far
//! per elapsed ms, carried to the period's end.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{count, fetch, Arg};
use crate::config::{Commitment, Contract};
use crate::ledger::{Database, LedgerError};
use crate::types::money::format_usd;
use crate::types::time::{format_rfc3339, DAY_MS};

/// What a contract has consumed in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Burn {
    pub period_start_ms: i64,
    /// Spent at effective (contracted) prices.
    pub spent_nano_usd: i64,
    /// The same usage at list prices.
    pub list_nano_usd: i64,
    /// Prompt and completion tokens.
    pub tokens: u64,
    /// Held by calls in flight against the cap.
    pub reserved_nano_usd: i64,
}

/// One contract's state at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractState {
    pub name: String,
    /// `None` outside a fixed term (then every figure is zero).
    pub period: Option<(i64, i64)>,
    pub at_ms: i64,
    pub deployments: Vec<String>,
    pub commitment: Option<Commitment>,
    pub cap_nano_usd: Option<i64>,
    /// Effective spend, list-price value and tokens in `[period start, at)`.
    pub burn: Burn,
}

/// What a state projects.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Projection {
    /// The commitment of the period in nano-USD (spend or provisioned hours).
    pub committed_nano_usd: Option<i64>,
    /// What counts against the commitment so far: effective spend, tokens, or for a
    /// provisioned contract the list-price value of its traffic.
    pub consumed: i64,
    /// `committed - consumed`, at least 0.
    pub left: Option<i64>,
    /// Consumption per day so far.
    pub run_rate_per_day: f64,
    /// Consumption projected to the period's end.
    pub projected: i64,
    /// Committed but projected unused (money or tokens paid for nothing).
    pub shortfall: Option<i64>,
    /// Projected spend beyond the cap.
    pub overage_nano_usd: Option<i64>,
    /// Days from `at` until spend reaches the cap at the run rate; `None` without a
    /// cap or without spend; 0 when reached.
    pub days_to_cap: Option<f64>,
}

impl ContractState {
    /// The state of `c` at `at_ms`, given what its current period has burned.
    pub fn of(c: &Contract, burn: Burn, at_ms: i64) -> ContractState {
        ContractState {
            name: c.name.clone(),
            period: c.period.bounds(at_ms),
            at_ms,
            deployments: c.deployments.clone(),
            commitment: c.commitment,
            cap_nano_usd: c.cap_nano_usd,
            burn,
        }
    }

    /// Whether consumption counts tokens rather than money.
    pub fn in_tokens(&self) -> bool {
        matches!(self.commitment, Some(Commitment::Tokens { .. }))
    }

    pub fn projection(&self) -> Projection {
        let Some((start, end)) = self.period else {
            return Projection::default();
        };
        let b = &self.burn;
        let consumed = match self.commitment {
            Some(Commitment::Tokens { .. }) => i64::try_from(b.tokens).unwrap_or(i64::MAX),
            Some(Commitment::Provisioned { .. }) => b.list_nano_usd,
            _ => b.spent_nano_usd,
        };
        let elapsed = (self.at_ms - start).max(1) as f64;
        let length = (end - start).max(1) as f64;
        let scale = length / elapsed;
        let project = |v: i64| (v as f64 * scale).round().min(i64::MAX as f64) as i64;
        let committed_nano_usd = self
            .commitment
            .and_then(|c| c.committed_nano_usd(start, end));
        let committed = match self.commitment {
            Some(Commitment::Tokens { tokens }) => Some(i64::try_from(tokens).unwrap_or(i64::MAX)),
            _ => committed_nano_usd,
        };
        let projected = project(consumed);
        let spend_projected = project(b.spent_nano_usd);
        let rate_per_day = b.spent_nano_usd as f64 / elapsed * DAY_MS as f64;
        let days_to_cap = self.cap_nano_usd.and_then(|cap| {
            if b.spent_nano_usd >= cap {
                Some(0.0)
            } else if rate_per_day > 0.0 {
                Some((cap - b.spent_nano_usd) as f64 / rate_per_day)
            } else {
                None
            }
        });
        Projection {
            committed_nano_usd,
            consumed,
            left: committed.map(|c| (c - consumed).max(0)),
            run_rate_per_day: consumed as f64 / elapsed * DAY_MS as f64,
            projected,
            shortfall: committed.map(|c| (c - projected).max(0)),
            overage_nano_usd: self.cap_nano_usd.map(|cap| (spend_projected - cap).max(0)),
            days_to_cap,
        }
    }

    /// What the operator should hear about: a commitment projected to go unused, a
    /// cap projected to be crossed (or reached).
    pub fn warnings(&self) -> Vec<String> {
        let p = self.projection();
        let mut out = Vec::new();
        if let Some(short) = p.shortfall.filter(|s| *s > 0) {
            out.push(format!(
                "projected to fall short of its commitment by {}",
                self.amount(short)
            ));
        }
        if let Some(over) = p.overage_nano_usd.filter(|o| *o > 0) {
            out.push(format!(
                "projected to cross its cap by {}",
                format_usd(over)
            ));
        } else if p.days_to_cap == Some(0.0) {
            out.push("its cap is reached".to_owned());
        }
        out
    }

    fn amount(&self, v: i64) -> String {
        if self.in_tokens() {
            format!("{v} tokens")
        } else {
            format_usd(v)
        }
    }
}

/// What the covered deployments of `c` consumed in `[since_ms, until_ms)`.
pub async fn burn_between(
    db: &Database,
    c: &Contract,
    since_ms: i64,
    until_ms: i64,
) -> Result<Burn, LedgerError> {
    let mut args = vec![Arg::Int(since_ms), Arg::Int(until_ms)];
    let mut marks = Vec::with_capacity(c.deployments.len());
    for (i, d) in c.deployments.iter().enumerate() {
        marks.push(format!("${}", i + 3));
        args.push(Arg::Text(d.clone()));
    }
    let rows: Vec<(i64, i64, i64)> = fetch(
        db,
        &format!(
            "SELECT CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(COALESCE(list_cost_nano_usd, cost_nano_usd)), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) \
             FROM attempts WHERE started_at_ms >= $1 AND started_at_ms < $2 \
             AND deployment IN ({})",
            marks.join(", ")
        ),
        &args,
    )
    .await?;
    let (spent, list, tokens) = rows.first().copied().unwrap_or_default();
    Ok(Burn {
        period_start_ms: since_ms,
        spent_nano_usd: spent,
        list_nano_usd: list,
        tokens: count(tokens),
        reserved_nano_usd: 0,
    })
}

/// Every contract's state at `at_ms`, in name order.
pub async fn contract_report(
    db: &Database,
    contracts: &[Arc<Contract>],
    at_ms: i64,
) -> Result<Vec<ContractState>, LedgerError> {
    let mut out = Vec::new();
    for c in contracts {
        let burn = match c.period.bounds(at_ms) {
            Some((start, _)) => burn_between(db, c, start, at_ms.saturating_add(1)).await?,
            None => Burn::default(),
        };
        out.push(ContractState::of(c, burn, at_ms));
    }
    Ok(out)
}

fn commitment_label(c: Option<Commitment>) -> String {
    match c {
        None => "none".to_owned(),
        Some(Commitment::Spend { nano_usd }) => format!("{} spend", format_usd(nano_usd)),
        Some(Commitment::Tokens { tokens }) => format!("{tokens} tokens"),
        Some(Commitment::Provisioned { nano_usd_per_hour }) => {
            format!("provisioned, {}/hour", format_usd(nano_usd_per_hour))
        }
    }
}

/// The report as text, one block per contract.
pub fn render_contract_report(rows: &[ContractState]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no contracts configured ([contracts.NAME])\n");
        return out;
    }
    for s in rows {
        let p = s.projection();
        let _ = writeln!(out, "contract {} ({})", s.name, s.deployments.join(", "));
        let Some((start, end)) = s.period else {
            let _ = writeln!(out, "  not in force at {}\n", format_rfc3339(s.at_ms));
            continue;
        };
        let _ = writeln!(
            out,
            "  period     {} to {} (at {})",
            format_rfc3339(start),
            format_rfc3339(end),
            format_rfc3339(s.at_ms)
        );
        let _ = writeln!(out, "  commitment {}", commitment_label(s.commitment));
        let amount = |v: i64| s.amount(v);
        if let Some(committed) = p.committed_nano_usd {
            let _ = writeln!(out, "  committed  {}", format_usd(committed));
        }
        let _ = writeln!(
            out,
            "  consumed   {}{}",
            amount(p.consumed),
            if matches!(s.commitment, Some(Commitment::Provisioned { .. })) {
                " (list-price value of the traffic served)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  spent      {} effective, {} at list prices, {} tokens",
            format_usd(s.burn.spent_nano_usd),
            format_usd(s.burn.list_nano_usd),
            s.burn.tokens
        );
        if let Some(left) = p.left {
            let _ = writeln!(out, "  left       {}", amount(left));
        }
        let rate = if s.in_tokens() {
            format!("{:.0} tokens", p.run_rate_per_day)
        } else {
            format_usd(p.run_rate_per_day.round() as i64)
        };
        let _ = writeln!(out, "  run rate   {rate} per day");
        let _ = writeln!(
            out,
            "  projected  {} by the period's end",
            amount(p.projected)
        );
        if let Some(short) = p.shortfall {
            let _ = writeln!(out, "  shortfall  {}", amount(short));
        }
        if let Some(cap) = s.cap_nano_usd {
            let days = match p.days_to_cap {
                Some(d) if d <= 0.0 => "reached".to_owned(),
                Some(d) => format!("{d:.1} days to go at the run rate"),
                None => "no spend yet".to_owned(),
            };
            let _ = writeln!(
                out,
                "  cap        {} ({}; projected overage {})",
                format_usd(cap),
                days,
                format_usd(p.overage_nano_usd.unwrap_or(0))
            );
        }
        for w in s.warnings() {
            let _ = writeln!(out, "  warning: {w}");
        }
        out.push('\n');
    }
    out
}

/// The report as `GET /admin/contracts` and `--json` give it.
pub fn contract_report_json(rows: &[ContractState]) -> Value {
    let contracts: Vec<Value> = rows
        .iter()
        .map(|s| {
            let p = s.projection();
            let (kind, committed) = match s.commitment {
                None => (None, None),
                Some(Commitment::Spend { nano_usd }) => (Some("spend"), Some(nano_usd)),
                Some(Commitment::Tokens { tokens }) => (
                    Some("tokens"),
                    Some(i64::try_from(tokens).unwrap_or(i64::MAX)),
                ),
                Some(Commitment::Provisioned { .. }) => (Some("provisioned"), p.committed_nano_usd),
            };
            json!({
                "contract": s.name,
                "deployments": s.deployments,
                "in_force": s.period.is_some(),
                "period_start": s.period.map(|(a, _)| format_rfc3339(a)),
                "period_end": s.period.map(|(_, b)| format_rfc3339(b)),
                "at": format_rfc3339(s.at_ms),
                "commitment": kind,
                "unit": if s.in_tokens() { "tokens" } else { "nano_usd" },
                "committed": committed,
                "consumed": p.consumed,
                "left": p.left,
                "run_rate_per_day": p.run_rate_per_day,
                "projected": p.projected,
                "shortfall": p.shortfall,
                "cap_nano_usd": s.cap_nano_usd,
                "overage_nano_usd": p.overage_nano_usd,
                "days_to_cap": p.days_to_cap,
                "spent_nano_usd": s.burn.spent_nano_usd,
                "list_nano_usd": s.burn.list_nano_usd,
                "tokens": s.burn.tokens,
                "warnings": s.warnings(),
            })
        })
        .collect();
    json!({ "object": "list", "data": contracts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(commitment: Option<Commitment>, cap: Option<i64>, spent: i64) -> ContractState {
        ContractState {
            name: "c".into(),
            period: Some((0, 30 * DAY_MS)),
            at_ms: 10 * DAY_MS,
            deployments: vec!["d".into()],
            commitment,
            cap_nano_usd: cap,
            burn: Burn {
                spent_nano_usd: spent,
                list_nano_usd: spent * 2,
                tokens: 600,
                ..Burn::default()
            },
        }
    }

    #[test]
    fn a_third_of_the_way_in_the_projection_is_three_times_the_burn() {
        // $300 spent in 10 of 30 days against $1,200 committed: $900 projected,
        // $300 short; the $1,000 cap is 23.3 days away at $30 a day.
        let s = state(
            Some(Commitment::Spend {
                nano_usd: 1_200_000_000_000,
            }),
            Some(1_000_000_000_000),
            300_000_000_000,
        );
        let p = s.projection();
        assert_eq!(p.projected, 900_000_000_000);
        assert_eq!(p.left, Some(900_000_000_000));
        assert_eq!(p.shortfall, Some(300_000_000_000));
        assert_eq!(p.overage_nano_usd, Some(0));
        let days = p.days_to_cap.expect("spend");
        assert!((days - 700.0 / 30.0).abs() < 1e-9, "{days}");
        assert_eq!(s.warnings().len(), 1, "{:?}", s.warnings());
    }

    #[test]
    fn a_fast_burn_projects_an_overage_and_tokens_count_tokens() {
        let s = state(None, Some(500_000_000_000), 300_000_000_000);
        let p = s.projection();
        assert_eq!(p.overage_nano_usd, Some(400_000_000_000));
        assert_eq!(p.shortfall, None);
        let t = state(Some(Commitment::Tokens { tokens: 1_000 }), None, 0);
        let p = t.projection();
        assert_eq!(
            (p.consumed, p.projected, p.shortfall),
            (600, 1_800, Some(0))
        );
        // Provisioned: $1/hour for 30 days is $720; the traffic's list value counts.
        let v = state(
            Some(Commitment::Provisioned {
                nano_usd_per_hour: 1_000_000_000,
            }),
            None,
            100_000_000_000,
        );
        let p = v.projection();
        assert_eq!(p.committed_nano_usd, Some(720_000_000_000));
        assert_eq!(p.consumed, 200_000_000_000);
        assert_eq!(p.shortfall, Some(120_000_000_000));
    }
}
