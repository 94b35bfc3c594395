//! What the gateway has learned about each deployment at run time: its recent
//! latency, its circuit breaker, and whether its provider said it is out of capacity.
//! One entry per deployment, shared by every logical model that uses it.
//!
//! The state is always local (the hot path reads atomics and one mutex, never the
//! network). With `[state]`, two facts also travel between replicas: a provider's
//! exhaustion and a breaker's opening; see [`shared`].

pub mod shared;

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{BreakerConfig, Config, Deployment};
use crate::resilience::{Admission, Breaker, BreakerState, ProbeTicket};

/// Weight of a new sample that is below the estimate. Samples above it replace it
/// at once (peak-EWMA): a deployment that slows down is noticed immediately, one
/// that recovers is trusted gradually.
const EWMA_DECAY: f64 = 0.3;

/// Time-to-first-token samples kept per deployment for its p90.
const TTFT_WINDOW: usize = 64;
/// Samples older than this do not count: a deployment tried last because it was slow
/// gets few new samples, and must not be judged on an old episode forever.
const TTFT_MAX_AGE_MS: i64 = 300_000;
/// Fewer recent samples than this give no p90 (the deployment is not judged).
const TTFT_MIN_SAMPLES: usize = 5;

pub struct DeploymentHealth {
    /// Peak-EWMA of time to first byte, in µs, as f64 bits; 0 = never measured.
    latency_us: AtomicU64,
    /// The last [`TTFT_WINDOW`] times to first token (a stream's first event, a
    /// plain answer's body), each `unix seconds << 32 | ms`; 0 = empty slot.
    recent_ttft: [AtomicU64; TTFT_WINDOW],
    /// Where the next sample goes (modulo the window).
    ttft_next: AtomicUsize,
    in_flight: AtomicU32,
    /// Unix ms until which the provider said this deployment has no capacity.
    exhausted_until_ms: AtomicI64,
    breaker: Mutex<Breaker>,
    /// This deployment's name, as the facts sent to other replicas say it; set when
    /// sharing starts (or when a reload creates the entry). A name outlives reloads:
    /// entries are carried over by name.
    name: OnceLock<Arc<str>>,
    /// Where facts for the other replicas go, once sharing is on.
    outbox: Arc<OnceLock<mpsc::Sender<shared::Fact>>>,
}

impl DeploymentHealth {
    fn new(config: BreakerConfig) -> Self {
        DeploymentHealth::with_outbox(config, Arc::new(OnceLock::new()))
    }

    fn with_outbox(
        config: BreakerConfig,
        outbox: Arc<OnceLock<mpsc::Sender<shared::Fact>>>,
    ) -> Self {
        DeploymentHealth {
            latency_us: AtomicU64::new(0f64.to_bits()),
            recent_ttft: std::array::from_fn(|_| AtomicU64::new(0)),
            ttft_next: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
            exhausted_until_ms: AtomicI64::new(0),
            breaker: Mutex::new(Breaker::new(config)),
            name: OnceLock::new(),
            outbox,
        }
    }

    /// Tells the other replicas, if sharing is on. Never waits: a full queue drops
    /// the fact (each replica still acts on what it sees itself).
    fn publish(&self, kind: shared::FactKind, for_ms: i64) {
        if let (Some(tx), Some(name)) = (self.outbox.get(), self.name.get()) {
            let _ = tx.try_send(shared::Fact {
                kind,
                name: name.clone(),
                for_ms,
            });
        }
    }

    /// The name facts about this deployment travel under, once sharing is on.
    pub(crate) fn shared_name(&self) -> Option<&str> {
        self.name.get().map(|n| &**n)
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // The breaker's state stays consistent even if a holder panicked.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latency estimate in µs; None until measured.
    pub fn latency_us(&self) -> Option<f64> {
        let v = f64::from_bits(self.latency_us.load(Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }

    /// The peak-EWMA score used by the latency strategy: estimate × (in flight + 1).
    pub fn score(&self) -> f64 {
        let latency = self.latency_us().unwrap_or(0.0);
        latency * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    pub fn observe_latency(&self, sample: Duration) {
        let sample = (sample.as_secs_f64() * 1e6).max(1.0);
        // A lost race between two updates loses one sample; the estimate stays sane.
        let old = f64::from_bits(self.latency_us.load(Ordering::Relaxed));
        let new = if old == 0.0 || sample > old {
            sample
        } else {
            old + EWMA_DECAY * (sample - old)
        };
        self.latency_us.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Notes one answer's time to first token, at `now_ms` (unix ms). Lock-free: two
    /// racing writers take different slots.
    pub fn observe_first_token(&self, sample: Duration, now_ms: i64) {
        let ms = u64::try_from(sample.as_millis())
            .unwrap_or(u64::MAX)
            .min(u64::from(u32::MAX));
        let secs = u64::try_from(now_ms / 1000).unwrap_or(0) & u64::from(u32::MAX);
        let slot = self.ttft_next.fetch_add(1, Ordering::Relaxed) % TTFT_WINDOW;
        if let Some(cell) = self.recent_ttft.get(slot) {
            // A 0 ms sample is stored as 1 ms: 0 marks an empty slot.
            cell.store(secs << 32 | ms.max(1), Ordering::Relaxed);
        }
    }

    /// The nearest-rank p90 of the recent times to first token, or `None` with too
    /// few recent samples to judge.
    pub fn ttft_p90(&self, now_ms: i64) -> Option<Duration> {
        let now_secs = now_ms / 1000;
        let max_age_secs = TTFT_MAX_AGE_MS / 1000;
        let mut samples: Vec<u32> = self
            .recent_ttft
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&v| v != 0)
            .filter(|&v| now_secs - i64::try_from(v >> 32).unwrap_or(0) <= max_age_secs)
            .map(|v| u32::try_from(v & u64::from(u32::MAX)).unwrap_or(u32::MAX))
            .collect();
        if samples.len() < TTFT_MIN_SAMPLES {
            return None;
        }
        samples.sort_unstable();
        // Nearest rank: the smallest sample with at least 90% of them at or below it.
        let rank = (samples.len() * 9).div_ceil(10);
        samples
            .get(rank.saturating_sub(1))
            .map(|&ms| Duration::from_millis(u64::from(ms)))
    }

    pub fn breaker_state(&self, now: Instant) -> BreakerState {
        self.breaker().state(now)
    }

    pub fn reopens_in(&self, now: Instant) -> Option<Duration> {
        self.breaker().reopens_in(now)
    }

    /// Asks the breaker for one call; `None` when it refuses. `lease` is the longest
    /// the call can last (its total timeout), after which a half-open probe slot it
    /// still holds is granted to another caller.
    pub fn admit(&self, now: Instant, lease: Duration) -> Option<CallPermit<'_>> {
        match self.breaker().admit(now, lease) {
            Admission::Refused => None,
            Admission::Allowed => Some(CallPermit {
                health: self,
                probe: None,
            }),
            Admission::Probe(ticket) => Some(CallPermit {
                health: self,
                probe: Some(ticket),
            }),
        }
    }

    pub fn mark_exhausted(&self, until_ms: i64) {
        let before = self
            .exhausted_until_ms
            .fetch_max(until_ms, Ordering::Relaxed);
        if until_ms > before {
            let now = crate::types::time::now_ms();
            self.publish(
                shared::FactKind::Exhausted,
                shared::clamp_ms(until_ms.saturating_sub(now)),
            );
        }
    }

    /// Milliseconds until the provider-reported exhaustion ends, if it is in force.
    pub fn exhausted_for_ms(&self, now_ms: i64) -> Option<i64> {
        let until = self.exhausted_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then(|| until - now_ms)
    }

    /// Calls to this deployment under way now.
    pub fn calls_in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call in flight until the guard is dropped.
    pub fn start_call(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

/// The breaker's permission for one call. If the call is the half-open probe, the
/// permit holds the probe slot until [`CallPermit::record`] reports the outcome;
/// dropped without that (the call was never made, was cancelled with its request,
/// ended with a client's error, or its task panicked) it gives the slot back, so no
/// way out of an attempt can leave the breaker waiting for a probe that is gone.
pub struct CallPermit<'a> {
    health: &'a DeploymentHealth,
    probe: Option<ProbeTicket>,
}

impl CallPermit<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Reports the call's outcome to the breaker.
    pub fn record(mut self, success: bool, now: Instant) {
        let probe = self.probe.take();
        let opened_for = {
            let mut breaker = self.health.breaker();
            let before = breaker.state(now);
            breaker.record(success, probe, now);
            (before != BreakerState::Open && breaker.state(now) == BreakerState::Open)
                .then(|| breaker.reopens_in(now))
                .flatten()
        };
        if let Some(open_for) = opened_for {
            self.health.publish(
                shared::FactKind::BreakerOpen,
                shared::clamp_ms(i64::try_from(open_for.as_millis()).unwrap_or(i64::MAX)),
            );
        }
    }
}

impl Drop for CallPermit<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.probe.take() {
            self.health.breaker().release_probe(ticket);
        }
    }
}

pub struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The entries facts from other replicas are applied to: the table of the
/// configuration in force, replaced when a reload carries the health over.
pub(crate) type Registry = RwLock<Vec<Arc<DeploymentHealth>>>;

/// Health of every deployment, indexed by `Deployment::index`.
pub struct Health {
    /// Shared, so that a reloaded configuration's table can keep the entries of the
    /// deployments that keep their names (see [`Health::carried_over`]).
    deployments: Vec<Arc<DeploymentHealth>>,
    /// Answers for a deployment when the table is empty, so that `of` needs no panic.
    spare: DeploymentHealth,
    /// Shared by every entry (and by the tables reloads carry over): set once when
    /// sharing starts.
    outbox: Arc<OnceLock<mpsc::Sender<shared::Fact>>>,
    /// The current table, for the subscriber of facts from other replicas.
    registry: Arc<Registry>,
}

impl Health {
    pub fn new(count: usize, breaker: BreakerConfig) -> Self {
        let outbox = Arc::new(OnceLock::new());
        let deployments: Vec<_> = (0..count)
            .map(|_| Arc::new(DeploymentHealth::with_outbox(breaker, outbox.clone())))
            .collect();
        Health {
            registry: Arc::new(RwLock::new(deployments.clone())),
            deployments,
            spare: DeploymentHealth::new(breaker),
            outbox,
        }
    }

    /// The table for `new`, a reloaded configuration: a deployment that keeps its
    /// name keeps what was learned about it (breaker, latency, exhaustion, calls in
    /// flight), with `new`'s breaker thresholds; a new name starts afresh. The old
    /// table stays valid for the requests still running on `old`. Sharing with other
    /// replicas goes on, now for `new`'s deployments.
    pub fn carried_over(new: &Config, old: &Config, old_health: &Health) -> Health {
        let deployments: Vec<_> = new
            .deployments
            .iter()
            .map(|d| {
                let kept = old
                    .deployments
                    .iter()
                    .find(|o| o.name == d.name)
                    .and_then(|o| old_health.deployments.get(o.index));
                match kept {
                    Some(h) => {
                        if new.breaker != old.breaker {
                            h.breaker().reconfigure(new.breaker);
                        }
                        h.clone()
                    }
                    None => {
                        let h =
                            DeploymentHealth::with_outbox(new.breaker, old_health.outbox.clone());
                        let _ = h.name.set(Arc::from(d.name.as_str()));
                        Arc::new(h)
                    }
                }
            })
            .collect();
        *old_health
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner()) = deployments.clone();
        Health {
            deployments,
            spare: DeploymentHealth::new(new.breaker),
            outbox: old_health.outbox.clone(),
            registry: old_health.registry.clone(),
        }
    }

    pub fn of(&self, deployment: &Deployment) -> &DeploymentHealth {
        // Deployment indexes come from the same config that sized this table.
        self.deployments
            .get(deployment.index)
            .or_else(|| self.deployments.last())
            .map_or(&self.spare, |h| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn health() -> DeploymentHealth {
        DeploymentHealth::new(BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            open_for: Duration::from_secs(1),
        })
    }

    #[test]
    fn the_first_token_p90_needs_recent_samples_and_forgets_old_ones() {
        let h = health();
        let now = 1_700_000_000_000;
        for ms in [100, 110, 120, 130] {
            h.observe_first_token(Duration::from_millis(ms), now);
        }
        assert_eq!(h.ttft_p90(now), None, "four samples are too few to judge");
        h.observe_first_token(Duration::from_millis(900), now);
        // Nearest rank of five: the fifth.
        assert_eq!(h.ttft_p90(now), Some(Duration::from_millis(900)));
        for _ in 0..5 {
            h.observe_first_token(Duration::from_millis(100), now);
        }
        // Ten samples: rank 9 is a 130.
        assert_eq!(h.ttft_p90(now), Some(Duration::from_millis(130)));
        // Five minutes later they no longer count.
        assert_eq!(h.ttft_p90(now + 300_000), Some(Duration::from_millis(130)));
        assert_eq!(h.ttft_p90(now + 301_000), None);
        // The window keeps the last 64: a slow past is pushed out by a fast present.
        for _ in 0..64 {
            h.observe_first_token(Duration::from_millis(20), now + 400_000);
        }
        assert_eq!(h.ttft_p90(now + 400_000), Some(Duration::from_millis(20)));
        // A sample beyond u32 ms is kept at the largest, never wrapped to a small one.
        for _ in 0..64 {
            h.observe_first_token(Duration::from_secs(u64::MAX / 4), now + 400_000);
        }
        assert_eq!(
            h.ttft_p90(now + 400_000),
            Some(Duration::from_millis(u64::from(u32::MAX)))
        );
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let h = health();
        assert_eq!(h.latency_us(), None);
        h.observe_latency(Duration::from_millis(10));
        assert_eq!(h.latency_us(), Some(10_000.0));
        h.observe_latency(Duration::from_millis(50));
        assert_eq!(
            h.latency_us(),
            Some(50_000.0),
            "a slower sample replaces the estimate"
        );
        h.observe_latency(Duration::from_millis(10));
        let after_one = h.latency_us().expect("measured");
        assert!((after_one - 38_000.0).abs() < 1.0, "{after_one}");
        for _ in 0..30 {
            h.observe_latency(Duration::from_millis(10));
        }
        assert!(h.latency_us().expect("measured") < 10_100.0);
    }

    #[test]
    fn score_grows_with_calls_in_flight() {
        let h = health();
        h.observe_latency(Duration::from_millis(10));
        let idle = h.score();
        let _a = h.start_call();
        let _b = h.start_call();
        assert_eq!(h.score(), idle * 3.0);
        drop(_a);
        assert_eq!(h.score(), idle * 2.0);
    }

    #[test]
    fn a_probe_permit_dropped_unrecorded_gives_the_slot_back() {
        let h = DeploymentHealth::new(BreakerConfig {
            consecutive_failures: 1,
            failure_ratio: 1.0,
            window: 10,
            open_for: Duration::ZERO,
        });
        let lease = Duration::from_secs(60);
        let now = Instant::now();
        h.admit(now, lease).expect("closed").record(false, now);
        let probe = h.admit(now, lease).expect("half-open");
        assert!(probe.is_probe());
        assert!(h.admit(now, lease).is_none(), "one probe at a time");
        // However the call ends without an outcome (cancelled, never made, a panic
        // unwinding through it), dropping the permit frees the slot.
        drop(probe);
        let next = h.admit(now, lease).expect("the slot is free again");
        assert!(next.is_probe());
        next.record(true, now);
        assert_eq!(h.breaker_state(now), BreakerState::Closed);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.admit(now, lease).expect("closed").record(false, now);
            let _probe = h.admit(now, lease).expect("half-open");
            panic!("the call's task panicked");
        }));
        assert!(unwound.is_err());
        assert!(h.admit(now, lease).is_some_and(|p| p.is_probe()));
    }

    #[test]
    fn an_in_flight_guard_is_released_when_its_call_is_dropped() {
        let h = health();
        let call = async {
            let _in_flight = h.start_call();
            std::future::pending::<()>().await;
        };
        let mut call = Box::pin(call);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert_eq!(h.calls_in_flight(), 1);
        drop(call);
        assert_eq!(h.calls_in_flight(), 0);
    }

    #[test]
    fn exhaustion_expires() {
        let h = health();
        h.mark_exhausted(1_000);
        assert_eq!(h.exhausted_for_ms(400), Some(600));
        assert_eq!(h.exhausted_for_ms(1_000), None);
        h.mark_exhausted(500); // an earlier deadline never shortens a later one
        assert_eq!(h.exhausted_for_ms(400), Some(600));
    }
}
