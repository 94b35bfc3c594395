//! Policies and budgets as stored and as the admin API and config file write them, and
//! the effective policy of a key (its own policy combined with its team's).
//!
//! Combining never loosens: a key can only narrow what its team allows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A policy for a team or a key. Every field is optional; absent means "no restriction
/// from this level".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Logical models that may be used. A trailing `*` matches a prefix (`support-*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Most output tokens one request may ask for (`max_tokens`/`max_completion_tokens`).
    /// Requests that set none get this as their `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Regions requests may be served from, e.g. `["eu-west", "eu-central"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_regions: Option<Vec<String>>,
    /// Data tags every serving deployment must carry, e.g. `["zero-retention"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_tags: Vec<String>,
    /// Whether prompt and response content may be kept in the ledger (only when
    /// `governance.log_content` is on at all). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_content: Option<bool>,
    /// PII guardrail on prompts: `off`, `log`, `redact` or `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiMode>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute; charged with an estimate up front and
    /// settled with the actual usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Limits per logical model, on top of `rpm`/`tpm`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_limits: BTreeMap<String, RateLimits>,
}

/// Requests and tokens per minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

/// What the PII guardrail does with what it finds, from the mildest.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// No scanning.
    #[default]
    Off,
    /// Scan; record what was found (types and counts, never values) in the ledger and log.
    Log,
    /// Replace each finding by a typed placeholder (`[EMAIL_1]`) before the provider sees it.
    Redact,
    /// Refuse the request with 400.
    Block,
}

impl PiiMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiMode::Off => "off",
            PiiMode::Log => "log",
            PiiMode::Redact => "redact",
            PiiMode::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<PiiMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Some(PiiMode::Off),
            "log" => Some(PiiMode::Log),
            "redact" => Some(PiiMode::Redact),
            "block" => Some(PiiMode::Block),
            _ => None,
        }
    }
}

/// A calendar period for a budget, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
    Total,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        match s.trim().to_ascii_lowercase().as_str() {
            "day" | "daily" => Some(Period::Day),
            "month" | "monthly" => Some(Period::Month),
            "total" => Some(Period::Total),
            _ => None,
        }
    }

    /// Start (unix ms, UTC) of the period containing `now_ms`, and of the next one
    /// (`None` for `total`).
    pub fn bounds(self, now_ms: i64) -> (i64, Option<i64>) {
        use super::time::{civil_from_days, days_from_civil, DAY_MS};
        let day = now_ms.div_euclid(DAY_MS);
        match self {
            Period::Day => (day * DAY_MS, Some((day + 1) * DAY_MS)),
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                let start = days_from_civil(y, m, 1) * DAY_MS;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, Some(days_from_civil(ny, nm, 1) * DAY_MS))
            }
            Period::Total => (i64::MIN, None),
        }
    }
}

/// A spend cap for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub period: Period,
    /// The cap in nano-USD (1e-9 USD).
    pub limit_nano_usd: i64,
    /// Percentages of the cap at which a warning is logged and counted once per period.
    /// Default 50, 80 and 100.
    #[serde(default = "default_warn_at")]
    pub warn_at_percent: Vec<u8>,
}

pub fn default_warn_at() -> Vec<u8> {
    vec![50, 80, 100]
}

/// A budget as written in the config file or the admin API: the cap in USD, as a number
/// or a decimal string (`"25.00"`), converted exactly to nano-USD.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    /// `day`, `month` or `total` (UTC calendar periods).
    pub period: String,
    /// The cap in USD, e.g. `25` or `"25.00"`.
    pub limit_usd: UsdAmount,
    /// Percentages of the cap at which to warn. Default `[50, 80, 100]`.
    #[serde(default)]
    pub warn_at_percent: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UsdAmount {
    Number(f64),
    Text(String),
}

impl BudgetInput {
    /// Validates into a [`Budget`]; errors name the field (relative to the budget).
    pub fn validate(&self) -> Result<Budget, (&'static str, String)> {
        let period = Period::parse(&self.period).ok_or((
            "period",
            format!(
                "unknown period `{}`; expected day, month or total",
                self.period
            ),
        ))?;
        let limit = match &self.limit_usd {
            UsdAmount::Number(n) => usd_f64_to_nano(*n),
            UsdAmount::Text(s) => parse_usd(s),
        }
        .ok_or((
            "limit_usd",
            "must be a non-negative amount of USD, e.g. 25 or \"25.00\"".to_owned(),
        ))?;
        let warn = self.warn_at_percent.clone().unwrap_or_else(default_warn_at);
        if let Some(bad) = warn.iter().find(|p| **p == 0 || **p > 100) {
            return Err((
                "warn_at_percent",
                format!("{bad} is not a percentage between 1 and 100"),
            ));
        }
        Ok(Budget {
            period,
            limit_nano_usd: limit,
            warn_at_percent: warn,
        })
    }
}

/// `25`, `25.5`, `"0.000000001"` → nano-USD; at most nine decimals, never negative.
pub fn parse_usd(s: &str) -> Option<i64> {
    let s = s.trim().trim_start_matches('$');
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac_nano: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    whole.checked_mul(1_000_000_000)?.checked_add(frac_nano)
}

fn usd_f64_to_nano(usd: f64) -> Option<i64> {
    if !usd.is_finite() || !(0.0..=9e9).contains(&usd) {
        return None;
    }
    // A decimal with at most nine places survives the f64 round trip once rounded.
    Some((usd * 1e9).round() as i64)
}

/// Nano-USD as a plain decimal string with nine places: `25000000000` → `"25.000000000"`.
pub fn nano_to_usd_string(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let abs = nano.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

impl Policy {
    /// Checks values serde cannot; errors name the field (relative to the policy).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let positive = |name: &str, v: Option<u64>| match v {
            Some(0) => Err((
                name.to_owned(),
                "must be greater than 0 (omit it for no limit)".to_owned(),
            )),
            _ => Ok(()),
        };
        positive("rpm", self.rpm)?;
        positive("tpm", self.tpm)?;
        positive("max_tokens", self.max_tokens.map(u64::from))?;
        for (model, l) in &self.model_limits {
            positive(&format!("model_limits.{model}.rpm"), l.rpm)?;
            positive(&format!("model_limits.{model}.tpm"), l.tpm)?;
        }
        for (field, list) in [
            ("models", self.models.as_deref().unwrap_or_default()),
            (
                "allowed_regions",
                self.allowed_regions.as_deref().unwrap_or_default(),
            ),
            ("required_tags", self.required_tags.as_slice()),
        ] {
            if let Some(i) = list.iter().position(|s| s.trim().is_empty()) {
                return Err((format!("{field}[{i}]"), "must not be empty".to_owned()));
            }
        }
        Ok(())
    }
}

/// Whether `model` matches a policy entry (`name`, or `prefix*`).
fn model_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

/// Where a request may be served: handed to routing, which filters deployments by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataPolicy {
    /// `None`: any region. `Some(empty)`: none (the team's and key's lists do not meet).
    pub allowed_regions: Option<Vec<String>>,
    pub required_tags: Vec<String>,
    /// Whether prompt and response may be kept in the ledger.
    pub log_content: bool,
}

/// A key's policy combined with its team's and the gateway's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectivePolicy {
    /// Each level's model list; a model must be allowed by every one.
    pub model_lists: Vec<Vec<String>>,
    pub max_tokens: Option<u32>,
    pub data: DataPolicy,
    pub pii: PiiMode,
}

impl EffectivePolicy {
    /// Combines policies from the widest (team) to the narrowest (key).
    pub fn combine(levels: &[&Policy], default_pii: PiiMode) -> EffectivePolicy {
        let mut out = EffectivePolicy {
            pii: default_pii,
            data: DataPolicy {
                log_content: true,
                ..DataPolicy::default()
            },
            ..EffectivePolicy::default()
        };
        for p in levels {
            if let Some(models) = &p.models {
                out.model_lists.push(models.clone());
            }
            out.max_tokens = match (out.max_tokens, p.max_tokens) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(regions) = &p.allowed_regions {
                out.data.allowed_regions = Some(match out.data.allowed_regions.take() {
                    None => regions.clone(),
                    Some(prev) => prev.into_iter().filter(|r| regions.contains(r)).collect(),
                });
            }
            for tag in &p.required_tags {
                if !out.data.required_tags.contains(tag) {
                    out.data.required_tags.push(tag.clone());
                }
            }
            if p.log_content == Some(false) {
                out.data.log_content = false;
            }
            if let Some(mode) = p.pii {
                out.pii = out.pii.max(mode);
            }
        }
        out
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.model_lists
            .iter()
            .all(|list| list.iter().any(|p| model_matches(p, model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_parses_exactly() {
        assert_eq!(parse_usd("25"), Some(25_000_000_000));
        assert_eq!(parse_usd("25.00"), Some(25_000_000_000));
        assert_eq!(parse_usd("$0.15"), Some(150_000_000));
        assert_eq!(parse_usd("0.000000001"), Some(1));
        assert_eq!(parse_usd(".5"), Some(500_000_000));
        assert_eq!(parse_usd("0.0000000001"), None);
        assert_eq!(parse_usd("-1"), None);
        assert_eq!(parse_usd("1e3"), None);
        assert_eq!(parse_usd(""), None);
        assert_eq!(usd_f64_to_nano(0.15), Some(150_000_000));
        assert_eq!(nano_to_usd_string(25_000_000_001), "25.000000001");
    }

    #[test]
    fn combining_only_narrows() {
        let team = Policy {
            models: Some(vec!["support-*".into(), "gpt-4o-mini".into()]),
            max_tokens: Some(1000),
            allowed_regions: Some(vec!["eu-west".into(), "us-east".into()]),
            required_tags: vec!["no-training".into()],
            pii: Some(PiiMode::Redact),
            ..Policy::default()
        };
        let key = Policy {
            models: Some(vec!["support-chat".into(), "gpt-4o".into()]),
            max_tokens: Some(5000),
            allowed_regions: Some(vec!["eu-west".into()]),
            required_tags: vec!["zero-retention".into()],
            log_content: Some(false),
            pii: Some(PiiMode::Log),
            ..Policy::default()
        };
        let e = EffectivePolicy::combine(&[&team, &key], PiiMode::Off);
        assert!(e.allows_model("support-chat"));
        assert!(!e.allows_model("gpt-4o")); // the team does not allow it
        assert!(!e.allows_model("gpt-4o-mini")); // the key does not list it
        assert_eq!(e.max_tokens, Some(1000));
        assert_eq!(e.data.allowed_regions, Some(vec!["eu-west".to_owned()]));
        assert_eq!(e.data.required_tags, vec!["no-training", "zero-retention"]);
        assert!(!e.data.log_content);
        assert_eq!(e.pii, PiiMode::Redact); // the stricter of the two

        let open = EffectivePolicy::combine(&[], PiiMode::Log);
        assert!(open.allows_model("anything"));
        assert!(open.data.log_content);
        assert_eq!(open.data.allowed_regions, None);
        assert_eq!(open.pii, PiiMode::Log);
    }

    #[test]
    fn periods_are_utc_calendar_periods() {
        // 2024-02-29T13:00:00Z (a leap day).
        let t = 1_709_211_600_000;
        assert_eq!(
            Period::Day.bounds(t),
            (1_709_164_800_000, Some(1_709_251_200_000))
        );
        // February 2024 → March 2024.
        assert_eq!(
            Period::Month.bounds(t),
            (1_706_745_600_000, Some(1_709_251_200_000))
        );
        // December rolls into January.
        let dec = 1_703_980_800_000; // 2023-12-31T00:00:00Z
        assert_eq!(Period::Month.bounds(dec).1, Some(1_704_067_200_000));
        assert_eq!(Period::Total.bounds(t), (i64::MIN, None));
    }

    #[test]
    fn budget_input_validates() {
        let b = BudgetInput {
            period: "month".into(),
            limit_usd: UsdAmount::Text("10.50".into()),
            warn_at_percent: None,
        }
        .validate()
        .expect("valid");
        assert_eq!(b.limit_nano_usd, 10_500_000_000);
        assert_eq!(b.warn_at_percent, vec![50, 80, 100]);
        let bad = BudgetInput {
            period: "week".into(),
            limit_usd: UsdAmount::Number(1.0),
            warn_at_percent: None,
        };
        assert_eq!(bad.validate().expect_err("week").0, "period");
    }
}
