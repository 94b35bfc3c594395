//! A circuit breaker per deployment.
//!
//! Closed: calls flow; the breaker opens after `consecutive_failures` failures in a
//! row, or when the failure ratio over the last `window` calls reaches
//! `failure_ratio`. Open: calls are refused until `open_for` has passed. Half-open:
//! one probe call at a time is let through; its success closes the breaker, its
//! failure opens it again.
//!
//! The probe slot is a lease, identified by a [`ProbeTicket`]. The call that holds it
//! either reports its outcome ([`Breaker::record`] with the ticket) or gives it back
//! ([`Breaker::release_probe`]); `routing::health::CallPermit` does the latter when the
//! call is dropped for any reason (cancelled, never made, a panic). As a last resort a
//! lease also expires: it is granted for as long as the holder's call can last (the
//! attempt's total timeout), so a slot still held after that belongs to no live call,
//! and the next caller gets a new probe. Without the expiry one lost slot would keep
//! the breaker half-open and refusing forever. The ticket keeps a stale holder from
//! giving back, or deciding with, a newer probe's slot.

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

/// Identifies one grant of the half-open probe slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTicket(u64);

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the half-open probe; its outcome decides the state.
    Probe(ProbeTicket),
    Refused,
}

/// The probe slot while a probe holds it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    ticket: ProbeTicket,
    expires: Instant,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    /// The last `window` outcomes, true = failure.
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe: Option<Lease>,
    /// The number of the next probe ticket.
    next_ticket: u64,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            recent: VecDeque::with_capacity(config.window as usize),
            opened_at: None,
            probe: None,
            next_ticket: 0,
        }
    }

    /// Takes new thresholds (a reloaded configuration) and keeps the state: an open
    /// breaker stays open, the recent outcomes stay counted (the oldest dropped when
    /// the window shrank, so the window never holds more than it says).
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        self.config = config;
        while self.recent.len() > config.window as usize {
            self.recent.pop_front();
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

    /// Whether a call may go ahead now. `lease` is the longest the call can last: a
    /// probe slot not given back by then is taken to be lost and granted again.
    pub fn admit(&mut self, now: Instant, lease: Duration) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open if self.cooled_down(now) => {
                self.state = BreakerState::HalfOpen;
                self.grant_probe(now, lease)
            }
            BreakerState::Open => Admission::Refused,
            BreakerState::HalfOpen => match self.probe {
                Some(held) if now < held.expires => Admission::Refused,
                _ => self.grant_probe(now, lease),
            },
        }
    }

    fn grant_probe(&mut self, now: Instant, lease: Duration) -> Admission {
        let ticket = ProbeTicket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.probe = Some(Lease {
            ticket,
            // An unrepresentable expiry (a lease of centuries) falls back to the open
            // period, which is always representable in practice.
            expires: now
                .checked_add(lease)
                .or_else(|| now.checked_add(self.config.open_for))
                .unwrap_or(now),
        });
        Admission::Probe(ticket)
    }

    /// Whether `ticket` holds the probe slot now.
    fn holds(&self, ticket: ProbeTicket) -> bool {
        self.probe.is_some_and(|lease| lease.ticket == ticket)
    }

    /// A probe that ended without an outcome that says anything about the deployment
    /// (never made, cancelled, a client's fault) gives its turn back.
    pub fn release_probe(&mut self, ticket: ProbeTicket) {
        if self.holds(ticket) {
            self.probe = None;
        }
    }

    /// Records a call's outcome. `probe` is the ticket the call was admitted with, if
    /// it was the half-open probe: only the probe decides a half-open breaker.
    pub fn record(&mut self, success: bool, probe: Option<ProbeTicket>, now: Instant) {
        match self.state {
            BreakerState::HalfOpen | BreakerState::Open => {
                // A call admitted before the breaker opened, or a probe whose lease
                // expired and was granted again, ends late: the current probe decides.
                if probe.is_some_and(|t| self.holds(t)) {
                    self.probe = None;
                    if success {
                        self.close();
                    } else {
                        self.open(now);
                    }
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

    /// Opens the breaker until `now + for_` because another replica's breaker for the
    /// same deployment opened; a breaker already open for longer stays as it is. The
    /// local counts are kept: they are this replica's own evidence.
    pub fn force_open(&mut self, now: Instant, for_: Duration) {
        if self.state == BreakerState::Open && self.reopens_in(now).is_some_and(|r| r >= for_) {
            return;
        }
        // Opened at `now + for_ - open_for`, so that it cools down at `now + for_`.
        let opened_at = now
            .checked_add(for_)
            .and_then(|until| until.checked_sub(self.config.open_for))
            .unwrap_or(now);
        self.state = BreakerState::Open;
        self.opened_at = Some(opened_at);
        self.probe = None;
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.probe = None;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
        self.consecutive_failures = 0;
        self.recent.clear();
        self.probe = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(2);

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn reconfigured_keeps_its_state_and_fits_the_new_window() {
        let (mut b, t0) = opened();
        b.reconfigure(BreakerConfig {
            open_for: Duration::from_secs(60),
            ..config()
        });
        // Still open, now for the new period.
        assert_eq!(b.state(t0 + Duration::from_secs(10)), BreakerState::Open);
        assert_eq!(
            b.reopens_in(t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(50))
        );

        // A closed breaker with ten outcomes counted, then a window of four: only the
        // last four are kept, and the ratio is judged on them.
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 100,
            failure_ratio: 0.5,
            window: 10,
            open_for: Duration::from_secs(5),
        });
        let now = Instant::now();
        for success in [
            false, false, false, false, true, true, true, true, true, true,
        ] {
            b.record(success, None, now);
        }
        b.reconfigure(BreakerConfig {
            consecutive_failures: 100,
            failure_ratio: 0.5,
            window: 4,
            open_for: Duration::from_secs(5),
        });
        assert_eq!(b.recent.len(), 4);
        b.record(false, None, now);
        assert_eq!(b.recent.len(), 4, "the window never grows past its size");
        assert_eq!(b.state(now), BreakerState::Closed, "1 failure in 4");
        b.record(false, None, now);
        assert_eq!(b.state(now), BreakerState::Open, "2 failures in 4");
    }

    fn probe(admission: Admission) -> ProbeTicket {
        match admission {
            Admission::Probe(t) => t,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    /// A breaker opened at the returned instant.
    fn opened() -> (Breaker, Instant) {
        let mut b = Breaker::new(config());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, None, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        (b, t0)
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_cooldown() {
        let mut b = Breaker::new(config());
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t0, LEASE), Admission::Allowed);
            b.record(false, None, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record(false, None, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1), LEASE),
            Admission::Refused
        );
        assert_eq!(
            b.reopens_in(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(4))
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        let first = probe(b.admit(later, LEASE));
        // Only one probe at a time.
        assert_eq!(b.admit(later, LEASE), Admission::Refused);
        b.record(false, Some(first), later);
        assert_eq!(b.state(later), BreakerState::Open);
        let again = later + Duration::from_secs(5);
        let second = probe(b.admit(again, LEASE));
        b.record(true, Some(second), again);
        assert_eq!(b.state(again), BreakerState::Closed);
        assert_eq!(b.admit(again, LEASE), Admission::Allowed);
    }

    #[test]
    fn opens_on_failure_ratio_over_a_full_window() {
        let mut b = Breaker::new(config());
        let t = Instant::now();
        // Alternate: never 3 in a row, but 50% of a full window of 10.
        for i in 0..9 {
            b.record(i % 2 == 1, None, t);
        }
        assert_eq!(b.state(t), BreakerState::Closed, "window not full yet");
        b.record(false, None, t);
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn successes_reset_the_streak() {
        let mut b = Breaker::new(config());
        let t = Instant::now();
        for _ in 0..10 {
            b.record(false, None, t);
            b.record(false, None, t);
            b.record(true, None, t);
            b.record(true, None, t);
            b.record(true, None, t);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn an_unused_probe_gives_its_turn_back() {
        let (mut b, t0) = opened();
        let later = t0 + Duration::from_secs(6);
        let ticket = probe(b.admit(later, LEASE));
        b.release_probe(ticket);
        probe(b.admit(later, LEASE));
    }

    #[test]
    fn a_probe_that_never_reports_expires_after_its_lease() {
        let (mut b, t0) = opened();
        let half_open = t0 + Duration::from_secs(5);
        let lost = probe(b.admit(half_open, LEASE));
        // Held: refused until the lease has run out, then granted again.
        assert_eq!(
            b.admit(half_open + LEASE - Duration::from_millis(1), LEASE),
            Admission::Refused
        );
        let renewed = probe(b.admit(half_open + LEASE, LEASE));
        assert_ne!(lost, renewed);
        // The lost holder, turning up late, neither frees nor decides the new probe.
        b.release_probe(lost);
        assert_eq!(b.admit(half_open + LEASE, LEASE), Admission::Refused);
        b.record(true, Some(lost), half_open + LEASE);
        assert_eq!(b.state(half_open + LEASE), BreakerState::HalfOpen);
        b.record(true, Some(renewed), half_open + LEASE);
        assert_eq!(b.state(half_open + LEASE), BreakerState::Closed);
    }

    #[test]
    fn a_call_admitted_before_the_breaker_opened_does_not_decide_it() {
        let (mut b, t0) = opened();
        // A straggler that was admitted while closed succeeds while open: still open.
        b.record(true, None, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        let half_open = t0 + Duration::from_secs(5);
        let ticket = probe(b.admit(half_open, LEASE));
        // Another straggler fails while the probe is out: the probe keeps its slot.
        b.record(false, None, half_open);
        assert_eq!(b.admit(half_open, LEASE), Admission::Refused);
        b.record(true, Some(ticket), half_open);
        assert_eq!(b.state(half_open), BreakerState::Closed);
    }
}
