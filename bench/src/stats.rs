//! Percentiles over recorded durations.
//!
//! Requests that never completed within a step count as infinitely slow: they sit
//! above every recorded value, so a step that lost more than 1% of its requests has an
//! infinite p99, which is what it deserves.

use serde::Serialize;

/// Percentiles of one set of durations, in microseconds. Infinite values (lost
/// requests) serialize as `null`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub lost: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Summary {
    /// `values_ns` is sorted in place. `lost` values count as +infinity.
    pub fn of(values_ns: &mut [u64], lost: usize) -> Summary {
        values_ns.sort_unstable();
        let n = values_ns.len() + lost;
        if n == 0 {
            return Summary {
                mean_us: f64::NAN,
                p50_us: f64::NAN,
                p90_us: f64::NAN,
                p99_us: f64::NAN,
                p999_us: f64::NAN,
                max_us: f64::NAN,
                ..Summary::default()
            };
        }
        let at = |q: f64| -> f64 {
            // Nearest-rank percentile: the smallest value with at least q·n values
            // at or below it.
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            match values_ns.get(rank - 1) {
                Some(&v) => v as f64 / 1000.0,
                None => f64::INFINITY,
            }
        };
        let mean = if lost > 0 || values_ns.is_empty() {
            f64::INFINITY
        } else {
            values_ns.iter().map(|&v| v as f64).sum::<f64>() / values_ns.len() as f64 / 1000.0
        };
        Summary {
            count: values_ns.len(),
            lost,
            mean_us: mean,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().map(|x| x * 1000).collect();
        let s = Summary::of(&mut v, 0);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.max_us, 100.0);
        assert_eq!(s.mean_us, 50.5);
    }

    #[test]
    fn lost_requests_are_infinitely_slow() {
        let mut v: Vec<u64> = (1..=98).map(|x| x * 1000).collect();
        let s = Summary::of(&mut v, 2);
        assert_eq!(s.p50_us, 50.0);
        assert!(s.p99_us.is_infinite());
        let mut v: Vec<u64> = (1..=999).map(|x| x * 1000).collect();
        let s = Summary::of(&mut v, 1);
        assert_eq!(s.p99_us, 990.0);
        assert!(s.max_us.is_infinite());
    }

    #[test]
    fn empty_is_nan() {
        let s = Summary::of(&mut [], 0);
        assert!(s.p50_us.is_nan());
    }
}
