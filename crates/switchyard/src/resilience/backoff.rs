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
/// fall back to their own backoff).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
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
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
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
}
