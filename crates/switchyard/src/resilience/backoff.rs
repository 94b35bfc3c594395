//! Exponential backoff with full jitter, and the duration formats providers use in
//! `retry-after` and rate-limit reset headers.

use std::time::Duration;

/// A random wait in `[0, min(max, base × 2^round)]`: spreads retries of many clients
/// evenly instead of synchronising them.
pub fn full_jitter(base: Duration, max: Duration, round: u32) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(round.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// Parses `retry-after` seconds (`"7"`, `"1.5"`) and OpenAI's reset durations
/// (`"1s"`, `"6m0s"`, `"20ms"`, `"1h2m3.5s"`). HTTP dates are not accepted (callers
/// fall back to their own backoff), and neither is what no provider sends and a
/// `Duration` cannot hold: exponents, signs, `inf`/`NaN`, other scripts' digits, and
/// values beyond `Duration::MAX`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if is_decimal(text) {
        return seconds(text.parse::<f64>().ok()?);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let (number, tail) = rest.split_at_checked(number_len)?;
        if !is_decimal(number) {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at_checked(unit_len)?;
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    seconds(total)
}

/// ASCII digits with at most one `.` and at least one digit: the only number shape
/// providers write, which `f64::from_str` accepts among many others.
fn is_decimal(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1
        && text.bytes().any(|b| b.is_ascii_digit())
}

/// `secs` as a `Duration`, or `None` when it is negative, not finite or too large
/// (`Duration::from_secs_f64` panics on those).
fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_exponential_ceiling() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1_000);
        for round in 0..8 {
            let ceiling = (base * 2u32.pow(round)).min(max);
            for _ in 0..200 {
                assert!(full_jitter(base, max, round) <= ceiling);
            }
        }
        // Large rounds do not overflow.
        assert!(full_jitter(base, max, u32::MAX) <= max);
        assert_eq!(full_jitter(Duration::ZERO, max, 3), Duration::ZERO);
    }

    #[test]
    fn jitter_is_spread_out() {
        let base = Duration::from_millis(1_000);
        let samples: Vec<Duration> = (0..400).map(|_| full_jitter(base, base, 0)).collect();
        let below_half = samples.iter().filter(|d| d.as_millis() < 500).count();
        // Uniform on [0, 1000] ms: about half below 500; 400 draws keep this far from flaky.
        assert!((120..=280).contains(&below_half), "{below_half}");
    }

    #[test]
    fn durations_in_provider_formats() {
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(parse_duration("-3"), None);
        assert_eq!(parse_duration(""), None);
    }

    /// Untrusted header values that once panicked `Duration::from_secs_f64`, or that
    /// are not numbers a provider writes, are refused rather than trusted.
    #[test]
    fn durations_out_of_range_or_odd_are_refused() {
        for odd in [
            "1e300",
            "1e3",
            "99999999999999999999",
            "18446744073709551616",
            "1e300s",
            "99999999999999999999h",
            "9999999999999999999999999999999999999999m",
            "inf",
            "NaN",
            "+5",
            "-0.5",
            "1.2.3",
            "..",
            ".s",
            "٣",
            "٣s",
            "1٣s",
            "5µ",
        ] {
            assert_eq!(parse_duration(odd), None, "{odd}");
        }
        // Large values that fit are kept: the caller decides what is too long.
        assert_eq!(parse_duration("86400"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(".5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3µs"), Some(Duration::from_micros(3)));
    }
}
