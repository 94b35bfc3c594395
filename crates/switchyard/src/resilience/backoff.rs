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
}
