//! A circuit breaker per deployment.
//!
//! Closed: calls flow; the breaker opens after `consecutive_failures` failures in a
//! row, or when the failure ratio over the last `window` calls reaches
//! `failure_ratio`. Open: calls are refused until `open_for` has passed. Half-open:
//! one probe call at a time is let through; its success closes the breaker, its
//! failure opens it again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the half-open probe; its outcome decides the state.
    Probe,
    Refused,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    /// The last `window` outcomes, true = failure.
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            recent: VecDeque::with_capacity(config.window as usize),
            opened_at: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if self.cooled_down(now) => BreakerState::HalfOpen,
            s => s,
        }
    }

    fn cooled_down(&self, now: Instant) -> bool {
        self.opened_at
            .is_some_and(|at| now.duration_since(at) >= self.config.open_for)
    }

    /// Time until an open breaker lets a probe through.
    pub fn reopens_in(&self, now: Instant) -> Option<Duration> {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) => {
                Some(self.config.open_for.saturating_sub(now.duration_since(at)))
            }
            _ => None,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open if self.cooled_down(now) => {
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                Admission::Probe
            }
            BreakerState::Open => Admission::Refused,
            BreakerState::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                Admission::Probe
            }
            BreakerState::HalfOpen => Admission::Refused,
        }
    }

    /// A probe that was admitted but never made its call (e.g. no capacity) gives its
    /// turn back.
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }

    pub fn record(&mut self, success: bool, now: Instant) {
        match self.state {
            BreakerState::HalfOpen | BreakerState::Open => {
                self.probe_in_flight = false;
                if success {
                    self.close();
                } else {
                    self.open(now);
                }
                return;
            }
            BreakerState::Closed => {}
        }
        if self.recent.len() == self.config.window as usize {
            self.recent.pop_front();
        }
        self.recent.push_back(!success);
        if success {
            self.consecutive_failures = 0;
            return;
        }
        self.consecutive_failures += 1;
        let failures = self.recent.iter().filter(|f| **f).count();
        let full = self.recent.len() == self.config.window as usize;
        let ratio_tripped =
            full && failures as f64 / self.recent.len() as f64 >= self.config.failure_ratio;
        if self.consecutive_failures >= self.config.consecutive_failures || ratio_tripped {
            self.open(now);
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
        self.consecutive_failures = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_cooldown() {
        let mut b = Breaker::new(config());
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Allowed);
            b.record(false, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record(false, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), Admission::Refused);
        assert_eq!(
            b.reopens_in(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(4))
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(later), Admission::Refused);
        b.record(false, later);
        assert_eq!(b.state(later), BreakerState::Open);
        let again = later + Duration::from_secs(5);
        assert_eq!(b.admit(again), Admission::Probe);
        b.record(true, again);
        assert_eq!(b.state(again), BreakerState::Closed);
        assert_eq!(b.admit(again), Admission::Allowed);
    }

    #[test]
    fn opens_on_failure_ratio_over_a_full_window() {
        let mut b = Breaker::new(config());
        let t = Instant::now();
        // Alternate: never 3 in a row, but 50% of a full window of 10.
        for i in 0..9 {
            b.record(i % 2 == 1, t);
        }
        assert_eq!(b.state(t), BreakerState::Closed, "window not full yet");
        b.record(false, t);
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn successes_reset_the_streak() {
        let mut b = Breaker::new(config());
        let t = Instant::now();
        for _ in 0..10 {
            b.record(false, t);
            b.record(false, t);
            b.record(true, t);
            b.record(true, t);
            b.record(true, t);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn an_unused_probe_gives_its_turn_back() {
        let mut b = Breaker::new(config());
        let t = Instant::now();
        for _ in 0..3 {
            b.record(false, t);
        }
        let later = t + Duration::from_secs(6);
        assert_eq!(b.admit(later), Admission::Probe);
        b.release_probe();
        assert_eq!(b.admit(later), Admission::Probe);
    }
}
