//! `[contracts.NAME]`: what a company has agreed with a provider. A contract covers
//! some deployments for a period and sets terms: a commitment (spend, tokens or
//! provisioned hours paid whether used or not), a cap (spend never to be exceeded) and
//! contracted prices that replace the list prices of the deployments it covers.

use std::collections::BTreeMap;

use super::policy::UsdAmount;
use super::{err, list, path_key, raw, validate_price, ConfigError};
use crate::types::money::{parse_usd, usd_f64_to_nano};
use crate::types::time::{civil_from_days, days_from_civil, parse_utc, DAY_MS};
use crate::types::Price;

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub name: String,
    /// The deployments it covers, by name, in name order.
    pub deployments: Vec<String>,
    pub period: ContractPeriod,
    pub commitment: Option<Commitment>,
    /// Spend (at contracted prices) that must never be exceeded in a period.
    pub cap_nano_usd: Option<i64>,
    /// Contracted prices by deployment name; a covered deployment without one pays
    /// its list price (a provisioned one pays nothing at the margin).
    pub prices: BTreeMap<String, Price>,
}

/// When a contract's terms run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractPeriod {
    /// Each calendar month (UTC), the terms renewed at every month's start.
    Month,
    /// One term, `[start_ms, end_ms)`.
    Fixed { start_ms: i64, end_ms: i64 },
}

impl ContractPeriod {
    /// The period that contains `now_ms`, as `[start, end)`; `None` outside a fixed term.
    pub fn bounds(self, now_ms: i64) -> Option<(i64, i64)> {
        match self {
            ContractPeriod::Month => {
                let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some((
                    days_from_civil(y, m, 1) * DAY_MS,
                    days_from_civil(ny, nm, 1) * DAY_MS,
                ))
            }
            ContractPeriod::Fixed { start_ms, end_ms } => {
                (start_ms <= now_ms && now_ms < end_ms).then_some((start_ms, end_ms))
            }
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ContractPeriod::Month => "month",
            ContractPeriod::Fixed { .. } => "term",
        }
    }
}

/// What is paid whether used or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commitment {
    /// Committed spend per period, at contracted prices.
    Spend { nano_usd: i64 },
    /// Committed tokens (prompt and completion) per period.
    Tokens { tokens: u64 },
    /// Provisioned throughput (Azure PTU, Bedrock provisioned throughput): a fixed
    /// cost per hour, and a marginal price of zero for what it serves.
    Provisioned { nano_usd_per_hour: i64 },
}

impl Commitment {
    /// The commitment of a period `[start, end)` in nano-USD (`None` for tokens).
    pub fn committed_nano_usd(self, start_ms: i64, end_ms: i64) -> Option<i64> {
        match self {
            Commitment::Spend { nano_usd } => Some(nano_usd),
            Commitment::Tokens { .. } => None,
            Commitment::Provisioned { nano_usd_per_hour } => {
                let ms = i128::from(end_ms.saturating_sub(start_ms).max(0));
                let total = i128::from(nano_usd_per_hour) * ms / i128::from(HOUR_MS);
                Some(i64::try_from(total).unwrap_or(i64::MAX))
            }
        }
    }
}

impl Contract {
    /// The price the gateway pays for a call on `deployment` under this contract, when
    /// the contract sets one.
    pub fn price_of(&self, deployment: &str) -> Option<Price> {
        if let Some(p) = self.prices.get(deployment) {
            return Some(*p);
        }
        matches!(self.commitment, Some(Commitment::Provisioned { .. })).then(Price::default)
    }
}

fn usd(v: &UsdAmount, at: &str) -> Result<i64, ConfigError> {
    match v {
        UsdAmount::Number(n) => usd_f64_to_nano(*n),
        UsdAmount::Text(s) => parse_usd(s),
    }
    .ok_or_else(|| {
        err(
            at,
            "must be a non-negative amount of USD, e.g. 5000 or \"5000.00\"",
        )
    })
}

/// A UTC date (`2027-01-01`) or time, as Unix ms.
fn instant(v: &str, at: &str) -> Result<i64, ConfigError> {
    parse_utc(v).ok_or_else(|| {
        err(
            at,
            format!("`{v}` is not a UTC date or time (e.g. \"2027-01-01\")"),
        )
    })
}

/// Validates `[contracts.NAME]` against the configured providers and deployments
/// (`deployments` maps each deployment name to its provider's name).
pub(super) fn validate_contract(
    name: &str,
    c: &raw::RawContract,
    deployments: &BTreeMap<String, String>,
) -> Result<Contract, ConfigError> {
    let at = format!("contracts.{}", path_key(name));
    let mut covered: Vec<String> = Vec::new();
    for (i, d) in c.deployments.iter().enumerate() {
        if !deployments.contains_key(d) {
            return Err(err(
                format!("{at}.deployments[{i}]"),
                format!(
                    "unknown deployment `{d}`; defined deployments: {}",
                    list(deployments.keys())
                ),
            ));
        }
        if covered.contains(d) {
            return Err(err(
                format!("{at}.deployments[{i}]"),
                format!("`{d}` is listed twice"),
            ));
        }
        covered.push(d.clone());
    }
    if let Some(p) = &c.provider {
        let of_provider: Vec<&String> = deployments
            .iter()
            .filter(|(_, prov)| *prov == p)
            .map(|(d, _)| d)
            .collect();
        if of_provider.is_empty() {
            return Err(err(
                format!("{at}.provider"),
                format!("no deployment of provider `{p}` is configured"),
            ));
        }
        for d in of_provider {
            if !covered.contains(d) {
                covered.push(d.clone());
            }
        }
    }
    if covered.is_empty() {
        return Err(err(
            at,
            "covers nothing: set `deployments` (names) or `provider` (all its deployments)",
        ));
    }
    covered.sort();

    let period = match (c.period.as_deref(), &c.start, &c.end) {
        (Some("month") | None, None, None) => ContractPeriod::Month,
        (None, Some(start), Some(end)) => {
            let start_ms = instant(start, &format!("{at}.start"))?;
            let end_ms = instant(end, &format!("{at}.end"))?;
            // A date alone names the whole day: the term runs to that day's end.
            let end_ms = if end.trim().len() == 10 {
                end_ms.saturating_add(DAY_MS)
            } else {
                end_ms
            };
            if end_ms <= start_ms {
                return Err(err(format!("{at}.end"), "must come after start"));
            }
            ContractPeriod::Fixed { start_ms, end_ms }
        }
        (Some(other), None, None) => {
            return Err(err(
                format!("{at}.period"),
                format!("unknown period `{other}`; expected \"month\", or start and end dates"),
            ))
        }
        (Some(_), _, _) => {
            return Err(err(
                format!("{at}.period"),
                "set either period = \"month\" or start and end, not both",
            ))
        }
        (None, Some(_), None) => {
            return Err(err(format!("{at}.end"), "a term with a start needs an end"))
        }
        (None, None, Some(_)) => {
            return Err(err(
                format!("{at}.start"),
                "a term with an end needs a start",
            ))
        }
    };

    let mut commitments = Vec::new();
    if let Some(v) = &c.commitment_usd {
        commitments.push(Commitment::Spend {
            nano_usd: usd(v, &format!("{at}.commitment_usd"))?,
        });
    }
    if let Some(tokens) = c.commitment_tokens {
        if tokens == 0 {
            return Err(err(
                format!("{at}.commitment_tokens"),
                "must be greater than 0",
            ));
        }
        commitments.push(Commitment::Tokens { tokens });
    }
    if let Some(v) = &c.provisioned_usd_per_hour {
        commitments.push(Commitment::Provisioned {
            nano_usd_per_hour: usd(v, &format!("{at}.provisioned_usd_per_hour"))?,
        });
    }
    if commitments.len() > 1 {
        return Err(err(
            at,
            "one commitment per contract: commitment_usd, commitment_tokens or provisioned_usd_per_hour",
        ));
    }
    let commitment = commitments.pop();
    let cap_nano_usd = match &c.cap_usd {
        Some(v) => Some(usd(v, &format!("{at}.cap_usd"))?),
        None => None,
    };
    if let (Some(cap), Some(Commitment::Spend { nano_usd })) = (cap_nano_usd, commitment) {
        if cap < nano_usd {
            return Err(err(
                format!("{at}.cap_usd"),
                "must not be below commitment_usd (the commitment could never be met)",
            ));
        }
    }
    if commitment.is_none() && cap_nano_usd.is_none() && c.prices.is_empty() {
        return Err(err(
            at,
            "sets no terms: give a commitment, a cap_usd or contracted prices",
        ));
    }
    let mut prices = BTreeMap::new();
    for (d, p) in &c.prices {
        let pat = format!("{at}.prices.{}", path_key(d));
        if !covered.contains(d) {
            return Err(err(
                pat,
                format!("`{d}` is not a deployment this contract covers"),
            ));
        }
        if matches!(commitment, Some(Commitment::Provisioned { .. })) {
            return Err(err(
                pat,
                "a provisioned contract has no per-token price (its marginal price is zero)",
            ));
        }
        prices.insert(d.clone(), validate_price(p, &pat)?);
    }
    Ok(Contract {
        name: name.to_owned(),
        deployments: covered,
        period,
        commitment,
        cap_nano_usd,
        prices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_runs_from_its_first_day_to_the_next_month() {
        // 2027-02-14T10:00:00Z
        let now = parse_utc("2027-02-14T10:00:00Z").expect("time");
        let (start, end) = ContractPeriod::Month.bounds(now).expect("always");
        assert_eq!(start, parse_utc("2027-02-01").expect("date"));
        assert_eq!(end, parse_utc("2027-03-01").expect("date"));
        let dec = parse_utc("2026-12-31T23:59:59Z").expect("time");
        assert_eq!(
            ContractPeriod::Month.bounds(dec).map(|b| b.1),
            parse_utc("2027-01-01")
        );
    }

    #[test]
    fn a_fixed_term_holds_only_inside_it() {
        let p = ContractPeriod::Fixed {
            start_ms: 1_000,
            end_ms: 2_000,
        };
        assert_eq!(p.bounds(999), None);
        assert_eq!(p.bounds(1_000), Some((1_000, 2_000)));
        assert_eq!(p.bounds(2_000), None);
    }

    #[test]
    fn a_provisioned_commitment_costs_its_hours() {
        let c = Commitment::Provisioned {
            nano_usd_per_hour: 2_500_000_000,
        };
        // 30 days × 24 h × $2.5 = $1,800.
        assert_eq!(
            c.committed_nano_usd(0, 30 * DAY_MS),
            Some(1_800_000_000_000)
        );
        assert_eq!(
            Commitment::Tokens { tokens: 5 }.committed_nano_usd(0, 1),
            None
        );
    }
}
