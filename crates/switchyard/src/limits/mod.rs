//! The one limiter: callers' rate limits (requests and tokens per minute per key, team
//! and model) and deployments' capacity (RPM/TPM per deployment) both count through it,
//! with one token estimator ([`estimate_chat`]).
//!
//! # The window: a sliding log
//!
//! A window is identified by its `key` and has a `limit` and a `period`. It admits an
//! amount when the amounts admitted during the last `period` (ending now), plus this one,
//! stay within `limit`. Admitted amounts are kept as entries `(time, amount)`; entries
//! older than `period` fall out. Reservations made within 1/4096 of a period of each
//! other share one entry, timed by the latest of them: an amount stays counted for at
//! least a period after it was admitted and at most 1/4096 of a period more (15 ms of
//! a minute), so the window stays exact in the direction that matters (never more than
//! `limit` in any interval of length `period`) while its size is bounded whatever the
//! rate.
//!
//! Why a log and not a fixed window or GCRA:
//! - It is exact in the strongest sense: *no* interval of length `period` ever admits
//!   more than `limit` (plus the overrun of settled actuals over their estimates). A fixed
//!   UTC-minute window lets up to twice the limit through around the minute boundary, and
//!   GCRA/token buckets let a full burst through right after a refill; both also make a
//!   test of "exactly N of 100 concurrent requests pass" depend on when it runs.
//! - Reserve-then-settle needs to correct an earlier amount in place, which a log does
//!   naturally (the entry holding a reservation is found by its sequence number).
//! - The state is at most about 4,096 entries per window. One entry per admitted
//!   request held 300,000 entries (9.6 MB) for a key sending 5,000 requests a second
//!   against a per-minute limit, and each doubling of that buffer stalled the requests
//!   behind the lock for milliseconds.
//!
//! Time is UTC (unix time, read through a monotonic clock so that a wall-clock step does
//! not open or close windows). Sliding windows have no calendar alignment; calendar
//! periods (a UTC day or month) are the budgets' business, not the limiter's.
//!
//! # Concurrency
//!
//! [`InProcessLimiter`] keeps every window behind one mutex. A reservation checks and
//! appends to all of its windows while holding it, so it is all-or-nothing and exact
//! under any concurrency; the critical section is a few comparisons per claim and never
//! awaits. A Redis implementation does the same inside one Lua script per call: a sorted
//! set per window (member = slice, score = its latest reservation's time) plus a hash of
//! the slices' amounts and a running total, trimmed with `ZREMRANGEBYSCORE`, checked and
//! added to for every claim before the script returns; `settle` moves the slices it
//! reserved in by the difference. That is [`redis::RedisLimiter`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::{BoxFuture, FutureExt};

use crate::types::chat::{ChatRequest, MessageContent};

/// One window to charge: `amount` against at most `limit` per sliding `period`.
///
/// The key identifies the window; a caller that uses one subject with two periods (or
/// two units, requests and tokens) puts that in the key, e.g. `key:app:rpm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: Arc<str>,
    pub limit: u64,
    pub period: Duration,
    pub amount: u64,
}

/// What [`Limiter::try_reserve`] reserved, and where: hand it back to
/// [`Limiter::settle`] once the actual amounts are known. Dropping it keeps the
/// reserved amounts charged (the estimate stands).
#[derive(Debug, Default)]
pub struct Reservation {
    slots: Vec<Slot>,
    /// Taken in shared state ([`redis::RedisLimiter`]) rather than in process: settled
    /// where it was taken.
    remote: bool,
}

#[derive(Debug)]
struct Slot {
    key: Arc<str>,
    period: Duration,
    /// Where the reservation sits in its window: its sequence number in process (the
    /// slice holding it is found by it), the number of its slice in Redis.
    seq: u64,
    amount: u64,
    /// What the window had left right after this reservation (for `x-ratelimit-*`).
    remaining: u64,
}

impl Reservation {
    /// A reservation of nothing (no claims); settling it does nothing.
    pub fn none() -> Reservation {
        Reservation::default()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The amounts reserved, in the order of the claims.
    pub fn amounts(&self) -> Vec<u64> {
        self.slots.iter().map(|s| s.amount).collect()
    }

    /// What claim `i`'s window had left right after the reservation, and when it will
    /// be empty (a period after the entry just appended): what
    /// [`Limiter::remaining`] would have answered then, without asking again.
    pub fn headroom(&self, i: usize) -> Option<(u64, Duration)> {
        self.slots.get(i).map(|s| (s.remaining, s.period))
    }
}

/// Why a reservation was refused: the first claim (in the caller's order) that did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: Arc<str>,
    pub limit: u64,
    /// What is left in that window now.
    pub remaining: u64,
    /// When the claim would fit, if nothing else is admitted meanwhile. For an amount
    /// larger than the limit (it never fits) this is the window's period.
    pub retry_after: Duration,
    /// Not a full window: the shared state that holds it is unreachable and the
    /// configuration says to refuse rather than count locally (`on_unavailable = "closed"`).
    pub state_unavailable: bool,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.state_unavailable {
            return write!(f, "the shared state holding `{}` is unavailable", self.key);
        }
        write!(
            f,
            "limit {} of `{}` reached ({} left; retry after {:?})",
            self.limit, self.key, self.remaining, self.retry_after
        )
    }
}

/// Counts amounts in sliding windows. Implementations must be exact under concurrency.
pub trait Limiter: Send + Sync + 'static {
    /// Reserves `amount` in every claim's window, atomically: all or none.
    fn try_reserve<'a>(
        &'a self,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<Reservation, Refusal>>;
    /// Corrects a reservation with actual amounts (same order as the claims; may be larger
    /// or smaller). Missing actuals leave their reservation as it is.
    fn settle<'a>(&'a self, reservation: Reservation, actual: &'a [u64]) -> BoxFuture<'a, ()>;
    /// Remaining capacity and time to reset of one window (for x-ratelimit-* headers and
    /// `routes explain`). The reset is when the window will be empty again.
    fn remaining<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        period: Duration,
    ) -> BoxFuture<'a, (u64, Duration)>;
}

/// A source of UTC time. Injectable so tests can move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Time since the unix epoch (UTC). Must never go backwards.
    fn now(&self) -> Duration;
}

/// Wall-clock UTC, advanced by a monotonic clock after start so that a system clock step
/// cannot reopen or close windows.
pub struct SystemClock {
    base: Duration,
    started: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            base: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            started: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.base + self.started.elapsed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    pub fn new(start: Duration) -> ManualClock {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    pub fn advance(&self, by: Duration) {
        *lock(&self.now) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *lock(&self.now)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a window half-updated in a way that
    // matters more than refusing all traffic would, so keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The reservations of one slice of a window's period (see [`Window::push`]).
#[derive(Debug)]
struct Entry {
    /// When the slice's latest reservation was made: the slice leaves the window one
    /// period after it, so no reservation leaves before its own time.
    at: Duration,
    /// When the slice's first reservation was made.
    opened: Duration,
    /// The first reservation's number; the slice holds the numbers from it up to the
    /// next slice's first.
    seq: u64,
    amount: u64,
}

/// A window keeps at most about this many slices per period, whatever the rate: a
/// log of one entry per reservation held 300,000 entries (9.6 MB) for a key sending
/// 5,000 requests a second against a per-minute limit, and each doubling of its
/// buffer stalled every request behind the lock for milliseconds.
const SLICES_PER_PERIOD: u32 = 4096;

#[derive(Debug, Default)]
struct Window {
    /// Oldest first; `at`, `opened` and `seq` all increase along the deque.
    entries: VecDeque<Entry>,
    total: u64,
    next_seq: u64,
    /// The period last used with this window, for the background sweep.
    period: Duration,
}

impl Window {
    fn prune(&mut self, now: Duration, period: Duration) {
        self.period = period;
        while let Some(e) = self.entries.front() {
            if e.at + period > now {
                break;
            }
            self.total -= e.amount;
            self.entries.pop_front();
        }
    }

    /// Adds a reservation made at `at` and gives its number. A reservation made
    /// within 1/[`SLICES_PER_PERIOD`] of a period after the last slice opened joins that
    /// slice, whose departure moves to one period after `at`: a reservation may stay
    /// counted up to that long (0.025% of the period; 15 ms of a minute) after its
    /// own time, never less.
    fn push(&mut self, at: Duration, amount: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.total += amount;
        let slice = self.period / SLICES_PER_PERIOD;
        match self.entries.back_mut() {
            Some(last) if at < last.opened + slice => {
                last.at = last.at.max(at);
                last.amount += amount;
            }
            _ => self.entries.push_back(Entry {
                at,
                opened: at,
                seq,
                amount,
            }),
        }
        seq
    }

    /// Takes back reservation `seq` of `amount`, the newest of this window (a refused
    /// call undoing what it added).
    fn pop(&mut self, seq: u64, amount: u64) {
        let Some(last) = self.entries.back_mut() else {
            return;
        };
        if last.seq > seq {
            return;
        }
        self.total = self.total.saturating_sub(amount);
        last.amount = last.amount.saturating_sub(amount);
        if last.seq == seq {
            // The slice was opened by this reservation: nothing else is in it yet.
            self.entries.pop_back();
        }
    }

    /// How long until `needed` more units have fallen out of the window.
    fn time_to_free(&self, needed: u64, now: Duration, period: Duration) -> Duration {
        let mut freed = 0u64;
        for e in &self.entries {
            freed += e.amount;
            if freed >= needed {
                return (e.at + period).saturating_sub(now);
            }
        }
        period
    }

    /// The slice that holds reservation `seq`, while it is in the window.
    fn find(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = match self.entries.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => i,
            Err(0) => return None,
            Err(after) => after - 1,
        };
        self.entries.get_mut(i)
    }
}

#[derive(Default)]
struct State {
    windows: HashMap<Arc<str>, Window>,
    /// Operations since the last sweep of idle windows.
    ops: u32,
}

/// Operations between sweeps that drop windows with nothing left in them.
const SWEEP_EVERY: u32 = 4096;

/// The in-process [`Limiter`]: exact under concurrency (one lock), windows in UTC.
pub struct InProcessLimiter {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

impl Default for InProcessLimiter {
    fn default() -> Self {
        InProcessLimiter::new()
    }
}

impl InProcessLimiter {
    pub fn new() -> InProcessLimiter {
        InProcessLimiter::with_clock(Arc::new(SystemClock::new()))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> InProcessLimiter {
        InProcessLimiter {
            state: Mutex::new(State::default()),
            clock,
        }
    }

    /// Windows currently held (tests check that idle ones are swept).
    pub fn window_count(&self) -> usize {
        lock(&self.state).windows.len()
    }

    fn reserve_now(&self, claims: &[Claim]) -> Result<Reservation, Refusal> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.tick(now);
        let mut slots: Vec<Slot> = Vec::with_capacity(claims.len());
        for claim in claims {
            let window = state.windows.entry(claim.key.clone()).or_default();
            window.prune(now, claim.period);
            let fits = window
                .total
                .checked_add(claim.amount)
                .is_some_and(|t| t <= claim.limit);
            if !fits {
                let remaining = claim.limit.saturating_sub(window.total);
                let retry_after = if claim.amount > claim.limit {
                    claim.period
                } else {
                    let needed = window.total + claim.amount - claim.limit;
                    window.time_to_free(needed, now, claim.period)
                };
                let refusal = Refusal {
                    key: claim.key.clone(),
                    limit: claim.limit,
                    remaining,
                    retry_after,
                    state_unavailable: false,
                };
                // Undo what this call added (newest last, so in reverse).
                for slot in slots.iter().rev() {
                    if let Some(w) = state.windows.get_mut(&slot.key) {
                        w.pop(slot.seq, slot.amount);
                    }
                }
                return Err(refusal);
            }
            let seq = window.push(now, claim.amount);
            slots.push(Slot {
                key: claim.key.clone(),
                period: claim.period,
                seq,
                amount: claim.amount,
                remaining: 0,
            });
        }
        // Read once every claim is in, so that two claims on one window both see it whole.
        for (slot, claim) in slots.iter_mut().zip(claims) {
            let total = state.windows.get(&slot.key).map_or(0, |w| w.total);
            slot.remaining = claim.limit.saturating_sub(total);
        }
        Ok(Reservation {
            slots,
            remote: false,
        })
    }

    fn settle_now(&self, reservation: Reservation, actual: &[u64]) {
        if reservation.slots.is_empty() {
            return;
        }
        let now = self.clock.now();
        let mut state = lock(&self.state);
        for (i, slot) in reservation.slots.into_iter().enumerate() {
            let Some(&actual) = actual.get(i) else {
                continue;
            };
            let window = state.windows.entry(slot.key.clone()).or_default();
            window.prune(now, slot.period);
            match window.find(slot.seq) {
                Some(entry) => {
                    // The slice holds this reservation's amount among others'.
                    let old = entry.amount;
                    let new = old.saturating_sub(slot.amount) + actual;
                    entry.amount = new;
                    window.total = window.total - old + new;
                }
                // The entry has already left the window (a request longer than the
                // period): what was reserved was counted for a whole period; charge any
                // excess now rather than never.
                None if actual > slot.amount => {
                    window.push(now, actual - slot.amount);
                }
                None => {}
            }
        }
    }

    fn remaining_now(&self, key: &str, limit: u64, period: Duration) -> (u64, Duration) {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let Some(window) = state.windows.get_mut(key) else {
            return (limit, Duration::ZERO);
        };
        window.prune(now, period);
        let reset = window
            .entries
            .back()
            .map_or(Duration::ZERO, |e| (e.at + period).saturating_sub(now));
        (limit.saturating_sub(window.total), reset)
    }
}

impl State {
    /// Every [`SWEEP_EVERY`] operations, drops the windows that have emptied, so keys
    /// that stopped sending do not hold memory.
    fn tick(&mut self, now: Duration) {
        self.ops += 1;
        if self.ops < SWEEP_EVERY {
            return;
        }
        self.ops = 0;
        self.windows.retain(|_, w| {
            let period = w.period;
            w.prune(now, period);
            !w.entries.is_empty()
        });
    }
}

impl Limiter for InProcessLimiter {
    fn try_reserve<'a>(
        &'a self,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<Reservation, Refusal>> {
        futures_util::future::ready(self.reserve_now(claims)).boxed()
    }

    fn settle<'a>(&'a self, reservation: Reservation, actual: &'a [u64]) -> BoxFuture<'a, ()> {
        self.settle_now(reservation, actual);
        futures_util::future::ready(()).boxed()
    }

    fn remaining<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        period: Duration,
    ) -> BoxFuture<'a, (u64, Duration)> {
        futures_util::future::ready(self.remaining_now(key, limit, period)).boxed()
    }
}

/// Tokens assumed per image part (OpenAI bills a low-detail image at 85 tokens and a
/// 512-px high-detail tile at 170 more; one tile is the common case).
pub const IMAGE_TOKENS: u64 = 255;
const MESSAGE_OVERHEAD: u64 = 4;
const PROMPT_OVERHEAD: u64 = 3;
const TOOL_OVERHEAD: u64 = 8;

/// A request's token estimate, split because input and output are priced differently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenEstimate {
    pub prompt: u64,
    /// The most output tokens the request may produce (all choices together).
    pub output: u64,
}

impl TokenEstimate {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.output)
    }
}

/// The prompt is about four characters a token (OpenAI's rule of thumb for English),
/// plus a few tokens of framing per message; `default_output` applies when the request
/// sets no output limit.
pub fn estimate_chat(req: &ChatRequest, default_output: u64) -> TokenEstimate {
    let count = |s: &str| s.chars().count() as u64;
    let mut prompt = PROMPT_OVERHEAD;
    for m in &req.messages {
        let mut chars = 0u64;
        let mut extra = 0u64;
        match &m.content {
            Some(MessageContent::Text(s)) => chars += count(s),
            Some(MessageContent::Parts(parts)) => {
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        (_, Some(t)) => chars += count(t),
                        ("image_url", None) => extra += IMAGE_TOKENS,
                        _ => extra += serde_json::to_string(p).map_or(0, |s| count(&s).div_ceil(4)),
                    }
                }
            }
            None => {}
        }
        if let Some(name) = &m.name {
            chars += count(name);
        }
        for call in m.tool_calls.iter().flatten() {
            chars += count(&call.function.name) + count(&call.function.arguments);
        }
        prompt += chars.div_ceil(4) + MESSAGE_OVERHEAD + extra;
    }
    for tool in req.tools.iter().flatten() {
        prompt += TOOL_OVERHEAD + serde_json::to_string(tool).map_or(0, |s| count(&s).div_ceil(4));
    }
    let per_choice = req
        .max_completion_tokens
        .or(req.max_tokens)
        .map_or(default_output, u64::from);
    let choices = u64::from(req.n.unwrap_or(1).max(1));
    TokenEstimate {
        prompt,
        output: per_choice.saturating_mul(choices),
    }
}

/// The tokens of `chars` characters of text, at about four characters a token: the
/// rule every estimate here uses, also for output that was relayed but never counted
/// by the upstream (a stream cut before its usage).
pub fn text_tokens(chars: u64) -> u64 {
    chars.div_ceil(4)
}

/// Embeddings have no output: the input at about four characters a token (token-array
/// inputs count their tokens exactly).
pub fn estimate_embedding_tokens(input: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match input {
        Value::String(s) => (s.chars().count() as u64).div_ceil(4).max(1),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(estimate_embedding_tokens).sum(),
        _ => 0,
    }
}

pub mod redis;

#[cfg(test)]
mod tests;
