//! Money: integer nano-USD (1e-9 USD) in storage and arithmetic, never a float;
//! dollars only for display.

use super::usage::Usage;

/// Prices in integer nano-USD per million tokens, so that cost arithmetic is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_mtok: u64,
    pub output_per_mtok: u64,
    pub cached_input_per_mtok: u64,
    /// Prompt tokens written to the provider's cache; `None`: the input price.
    pub cache_write_per_mtok: Option<u64>,
    /// Reasoning tokens; `None`: the output price.
    pub reasoning_per_mtok: Option<u64>,
}

impl Price {
    /// Cost of one call in nano-USD, rounded half up once at the end; the one cost
    /// function of the gateway. Cached and cache-write tokens are subsets of the prompt
    /// tokens, reasoning tokens a subset of the completion tokens, each billed at its own
    /// rate (see [`Usage`]).
    pub fn cost(&self, usage: &Usage) -> i64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let uncached = usage.prompt_tokens - cached - written;
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let visible = usage.completion_tokens - reasoning;
        let scaled = u128::from(uncached) * u128::from(self.input_per_mtok)
            + u128::from(cached) * u128::from(self.cached_input_per_mtok)
            + u128::from(written)
                * u128::from(self.cache_write_per_mtok.unwrap_or(self.input_per_mtok))
            + u128::from(visible) * u128::from(self.output_per_mtok)
            + u128::from(reasoning)
                * u128::from(self.reasoning_per_mtok.unwrap_or(self.output_per_mtok));
        let nano = (scaled + 500_000) / 1_000_000;
        i64::try_from(nano).unwrap_or(i64::MAX)
    }
}

/// Formats nano-USD as dollars using integer math only (exact for any `i64`).
///
/// Rule: six decimals (micro-dollars), rounded half away from zero, e.g.
/// `1_234_567_890` → `$1.234568`, `-1_500` → `-$0.000002`. An amount that is
/// not zero but would round to `$0.000000` is shown exactly with nine
/// decimals instead (`150` → `$0.000000150`), so tiny costs never read as free.
pub fn format_usd(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let abs = nano.unsigned_abs(); // <= 2^63, so `+ 500` below cannot overflow
    let micros = (abs + 500) / 1_000;
    if micros == 0 && abs != 0 {
        return format!("{sign}${}", nine_decimals(abs));
    }
    format!("{sign}${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// An amount of nano-USD as dollars with all nine decimals, no sign.
fn nine_decimals(abs_nano: u64) -> String {
    format!(
        "{}.{:09}",
        abs_nano / 1_000_000_000,
        abs_nano % 1_000_000_000
    )
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

pub fn usd_f64_to_nano(usd: f64) -> Option<i64> {
    if !usd.is_finite() || !(0.0..=9e9).contains(&usd) {
        return None;
    }
    // A decimal with at most nine places survives the f64 round trip once rounded.
    Some((usd * 1e9).round() as i64)
}

/// Nano-USD as a plain decimal string with nine places: `25000000000` → `"25.000000000"`.
pub fn nano_to_usd_string(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    format!("{sign}{}", nine_decimals(nano.unsigned_abs()))
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
}
