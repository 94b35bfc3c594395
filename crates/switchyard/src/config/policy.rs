//! Policies and budgets as stored and as the admin API and config file write them.
//! How a key's and its team's combine is governance's (`governance::policy`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::money::{parse_usd, usd_f64_to_nano};

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
    /// The channel profile (`[channels.NAME]`) this key's requests get when they name
    /// none. A key's setting wins over its team's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Channels a request may choose with the `x-switchyard-channel` header (besides
    /// `channel`). Absent: none. A key and its team must both allow a channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Opts this key's or team's requests into the response cache, whatever their
    /// model says: `{ ttl_s = 600 }`. With `log_content = false`, only this opt-in
    /// lets their answers be kept and reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PolicyCache>,
}

/// A policy's response-cache opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCache {
    /// How long an answer is reused, in seconds: 1 to 2592000 (30 days).
    pub ttl_s: u64,
    /// Also reuse answers to requests whose `temperature` is not 0. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_temperature: bool,
}

/// The longest a cached answer may be reused: 30 days, in seconds.
pub const MAX_CACHE_TTL_S: u64 = 2_592_000;

/// Checks a cache `ttl_s`; the message completes "<field> …".
pub fn check_cache_ttl(ttl_s: u64) -> Result<(), String> {
    if (1..=MAX_CACHE_TTL_S).contains(&ttl_s) {
        Ok(())
    } else {
        Err(format!(
            "must be between 1 and {MAX_CACHE_TTL_S} seconds (30 days), not {ttl_s}"
        ))
    }
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
        use crate::types::time::{civil_from_days, days_from_civil, DAY_MS};
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

/// An amount of USD as written: a number (`25`, `25.5`) or a string (`"25.00"`).
#[derive(Debug, Clone)]
pub enum UsdAmount {
    Number(f64),
    Text(String),
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum buffers the value and
/// loses the field's path in its error, so a `true` where an amount belongs would be
/// reported without naming the field.
impl<'de> Deserialize<'de> for UsdAmount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UsdAmount, D::Error> {
        struct Amount;
        impl serde::de::Visitor<'_> for Amount {
            type Value = UsdAmount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an amount of USD, e.g. 25 or \"25.00\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<UsdAmount, E> {
                Ok(UsdAmount::Number(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<UsdAmount, E> {
                Ok(UsdAmount::Number(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<UsdAmount, E> {
                Ok(UsdAmount::Number(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UsdAmount, E> {
                Ok(UsdAmount::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Amount)
    }
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
            ("channels", self.channels.as_deref().unwrap_or_default()),
        ] {
            if let Some(i) = list.iter().position(|s| s.trim().is_empty()) {
                return Err((format!("{field}[{i}]"), "must not be empty".to_owned()));
            }
        }
        if self.channel.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(("channel".to_owned(), "must not be empty".to_owned()));
        }
        if let Some(c) = &self.cache {
            check_cache_ttl(c.ttl_s).map_err(|m| ("cache.ttl_s".to_owned(), m))?;
        }
        Ok(())
    }

    /// The first channel this policy names that `known` does not know, with its field
    /// (relative to the policy): a policy may name only configured channels.
    pub fn unknown_channel(&self, known: impl Fn(&str) -> bool) -> Option<(String, String)> {
        if let Some(c) = self.channel.as_deref().filter(|c| !known(c)) {
            return Some(("channel".to_owned(), c.to_owned()));
        }
        self.channels
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .find(|(_, c)| !known(c))
            .map(|(i, c)| (format!("channels[{i}]"), c.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_policys_cache_ttl_is_bounded() {
        let with = |ttl_s| Policy {
            cache: Some(PolicyCache {
                ttl_s,
                any_temperature: false,
            }),
            ..Policy::default()
        };
        assert!(with(1).validate().is_ok());
        assert!(with(MAX_CACHE_TTL_S).validate().is_ok());
        for bad in [0, MAX_CACHE_TTL_S + 1] {
            assert_eq!(with(bad).validate().expect_err("bounded").0, "cache.ttl_s");
        }
        let parsed: Policy = serde_json::from_str(r#"{"cache":{"ttl_s":60}}"#).expect("json");
        assert_eq!(parsed, with(60));
        assert!(serde_json::from_str::<Policy>(r#"{"cache":{"ttl":60}}"#).is_err());
    }
}
