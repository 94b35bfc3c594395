//! Budgets: spend caps per key and team per UTC day, month or in total, enforced with
//! reserve-then-settle.
//!
//! Before dispatch a request reserves an upper bound of its cost (its prompt estimate and
//! its maximum output at the dearest deployment that may serve it) in every budget that
//! applies; it is admitted only if, in each, `spent + reserved + its bound <= limit`. After
//! the response the reservation is replaced by the actual cost. Concurrent requests
//! therefore never spend more than the limit, unless a request costs more than its bound
//! (which a bound from `max_tokens` rules out), and then only by that excess.
//!
//! Counters live behind the [`Budgets`] trait: in memory ([`BudgetBook`], one mutex,
//! never held across an await) or in Redis ([`redis::RedisBudgets`], shared by
//! replicas). Either is seeded from the ledger when a budget is first seen, so a
//! restart does not forget what was spent; a Redis counter also when it went missing
//! (Redis restarted empty, an eviction).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{BoxFuture, FutureExt};

use crate::config::policy::{Budget, Period};
use crate::ledger::{SpendReader, SpentBy};
use crate::storage::Database;
use crate::types::money::nano_to_usd_string;

pub mod redis;

/// Whose budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Key,
    Team,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Team => "team",
        }
    }
}

/// A budget that applies to a request: scope, the key's or team's id (what the
/// counter is keyed by), its name (what messages show), and the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub scope: Scope,
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub budget: Budget,
}

type CounterKey = (Scope, Arc<str>, Period);

#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    period_start: i64,
    spent: i64,
    reserved: i64,
    /// Highest warning threshold (percent) already reported this period.
    warned: u8,
}

/// Amounts held by one request, to be settled once.
#[derive(Debug, Default)]
pub struct Hold {
    entries: Vec<HoldEntry>,
    /// Held in shared state ([`redis::RedisBudgets`]) rather than in process: settled
    /// where it was taken.
    remote: bool,
}

#[derive(Debug)]
struct HoldEntry {
    key: CounterKey,
    /// The key's or team's name, for the warning.
    name: Arc<str>,
    period_start: i64,
    amount: i64,
    limit: i64,
    warn_at: Vec<u8>,
}

impl Hold {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a request was refused: the first budget it did not fit in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub scope: Scope,
    pub name: Arc<str>,
    pub period: Period,
    pub limit_nano_usd: i64,
    pub spent_nano_usd: i64,
    pub reserved_nano_usd: i64,
    /// Unix ms of the next period's start (none for `total`).
    pub resets_at_ms: Option<i64>,
}

impl Exceeded {
    pub fn message(&self) -> String {
        format!(
            "The {} budget of {} `{}` is exhausted: {} USD spent (and {} USD reserved by requests in flight) of {} USD.",
            match self.period {
                Period::Day => "daily",
                Period::Month => "monthly",
                Period::Total => "total",
            },
            self.scope.as_str(),
            self.name,
            nano_to_usd_string(self.spent_nano_usd),
            nano_to_usd_string(self.reserved_nano_usd),
            nano_to_usd_string(self.limit_nano_usd),
        )
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A budget has no room.
    Exceeded(Exceeded),
    /// The shared counters are unreachable and `state.on_unavailable = "closed"`.
    StateUnavailable,
}

/// Where budget counters live. Every implementation reserves all or none across the
/// applied budgets and is exact under concurrency (for [`redis::RedisBudgets`]: across
/// replicas).
pub trait Budgets: Send + Sync + 'static {
    /// Whether this budget's counter for the current period does not exist yet (it
    /// needs seeding from the ledger).
    fn needs_seed<'a>(
        &'a self,
        scope: Scope,
        id: &'a Arc<str>,
        period: Period,
        now_ms: i64,
    ) -> BoxFuture<'a, bool>;
    /// Sets the spend of a period from the ledger, unless the counter already runs.
    fn seed<'a>(
        &'a self,
        scope: Scope,
        id: &'a Arc<str>,
        period: Period,
        period_start: i64,
        spent: i64,
    ) -> BoxFuture<'a, ()>;
    /// Reserves `amount` nano-USD in every applied budget, all or none.
    fn reserve<'a>(
        &'a self,
        applied: &'a [Applied],
        amount: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Hold, Denied>>;
    /// Replaces a hold by the actual cost.
    fn settle(&self, hold: Hold, actual: i64) -> BoxFuture<'_, ()>;
    /// The state of a budget of the key with this id (or of the team of this name).
    fn status<'a>(
        &'a self,
        scope: Scope,
        id: &'a str,
        period: Period,
        now_ms: i64,
    ) -> BoxFuture<'a, Status>;
    /// Warnings reported so far (thresholds crossed).
    fn warnings(&self) -> u64;
    /// Requests refused for budget so far.
    fn refusals(&self) -> u64;
}

impl Budgets for BudgetBook {
    fn needs_seed<'a>(
        &'a self,
        scope: Scope,
        id: &'a Arc<str>,
        period: Period,
        now_ms: i64,
    ) -> BoxFuture<'a, bool> {
        futures_util::future::ready(!self.is_seeded(scope, id, period, now_ms)).boxed()
    }

    fn seed<'a>(
        &'a self,
        scope: Scope,
        id: &'a Arc<str>,
        period: Period,
        period_start: i64,
        spent: i64,
    ) -> BoxFuture<'a, ()> {
        BudgetBook::seed(self, scope, id, period, period_start, spent);
        futures_util::future::ready(()).boxed()
    }

    fn reserve<'a>(
        &'a self,
        applied: &'a [Applied],
        amount: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Hold, Denied>> {
        let r = BudgetBook::reserve(self, applied, amount, now_ms).map_err(Denied::Exceeded);
        futures_util::future::ready(r).boxed()
    }

    fn settle(&self, hold: Hold, actual: i64) -> BoxFuture<'_, ()> {
        BudgetBook::settle(self, hold, actual);
        futures_util::future::ready(()).boxed()
    }

    fn status<'a>(
        &'a self,
        scope: Scope,
        id: &'a str,
        period: Period,
        now_ms: i64,
    ) -> BoxFuture<'a, Status> {
        futures_util::future::ready(BudgetBook::status(self, scope, id, period, now_ms)).boxed()
    }

    fn warnings(&self) -> u64 {
        BudgetBook::warnings(self)
    }

    fn refusals(&self) -> u64 {
        BudgetBook::refusals(self)
    }
}

/// What the ledger in `db` records as spent by each `(scope, id, period start)` of
/// `wanted`, in order: the figure a counter is seeded with. 0 where there is no ledger
/// or it cannot be read (said in the log): the ledger is the only record of spend.
pub(crate) async fn spent_in_ledger(
    db: Option<&Database>,
    wanted: &[(Scope, &str, i64)],
) -> Vec<i64> {
    let mut reader = match db {
        Some(db) => match SpendReader::open(db.clone()).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read spend for budgets; starting from 0");
                None
            }
        },
        None => None,
    };
    let mut out = Vec::with_capacity(wanted.len());
    for &(scope, id, since) in wanted {
        let by = match scope {
            Scope::Key => SpentBy::Key(id),
            Scope::Team => SpentBy::Team(id),
        };
        let spent = match reader.as_mut() {
            Some(r) => r.spent_since(by, since).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, id, "cannot read spend for a budget; starting from 0");
                0
            }),
            None => 0,
        };
        out.push(spent);
    }
    if let Some(r) = reader {
        r.close().await;
    }
    out
}

/// The state of one budget, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub period_start_ms: i64,
    pub spent_nano_usd: i64,
    pub reserved_nano_usd: i64,
}

/// Every budget counter of the gateway.
#[derive(Debug, Default)]
pub struct BudgetBook {
    counters: Mutex<HashMap<CounterKey, Counter>>,
    warnings: AtomicU64,
    refusals: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BudgetBook {
    pub fn new() -> BudgetBook {
        BudgetBook::default()
    }

    /// Warnings reported so far (thresholds crossed).
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    /// Requests refused for budget so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Whether the counter for this budget's current period exists (else it needs
    /// seeding). `id` is the key's id or the team's name.
    pub fn is_seeded(&self, scope: Scope, id: &Arc<str>, period: Period, now_ms: i64) -> bool {
        let (start, _) = period.bounds(now_ms);
        lock(&self.counters)
            .get(&(scope, id.clone(), period))
            .is_some_and(|c| c.period_start == start)
    }

    /// Sets the spend of a period from the ledger, unless the counter already runs (its
    /// in-memory figure is newer than the batched ledger's).
    pub fn seed(&self, scope: Scope, id: &Arc<str>, period: Period, period_start: i64, spent: i64) {
        let mut counters = lock(&self.counters);
        let c = counters.entry((scope, id.clone(), period)).or_default();
        if c.period_start != period_start || (c.spent == 0 && c.reserved == 0) {
            *c = Counter {
                period_start,
                spent,
                reserved: 0,
                warned: 0,
            };
        }
    }

    /// Reserves `amount` nano-USD in every applied budget, all or none.
    pub fn reserve(&self, applied: &[Applied], amount: i64, now_ms: i64) -> Result<Hold, Exceeded> {
        if applied.is_empty() {
            return Ok(Hold::default());
        }
        let amount = amount.max(0);
        let mut counters = lock(&self.counters);
        let mut keys = Vec::with_capacity(applied.len());
        for a in applied {
            let (start, next) = a.budget.period.bounds(now_ms);
            let key = (a.scope, a.id.clone(), a.budget.period);
            let c = counters.entry(key.clone()).or_default();
            if c.period_start != start {
                // A new period: nothing spent in it yet.
                *c = Counter {
                    period_start: start,
                    ..Counter::default()
                };
            }
            // Reservations already taken by this call for the same counter count too.
            let mine: i64 = keys.iter().filter(|(k, _)| *k == key).map(|_| amount).sum();
            let limit = a.budget.limit_nano_usd;
            let committed = c.spent.saturating_add(c.reserved).saturating_add(mine);
            if c.spent >= limit || committed.saturating_add(amount) > limit {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return Err(Exceeded {
                    scope: a.scope,
                    name: a.name.clone(),
                    period: a.budget.period,
                    limit_nano_usd: limit,
                    spent_nano_usd: c.spent,
                    reserved_nano_usd: c.reserved,
                    resets_at_ms: next,
                });
            }
            keys.push((key, start));
        }
        let mut hold = Hold::default();
        for ((key, start), a) in keys.into_iter().zip(applied) {
            if let Some(c) = counters.get_mut(&key) {
                c.reserved += amount;
            }
            hold.entries.push(HoldEntry {
                key,
                name: a.name.clone(),
                period_start: start,
                amount,
                limit: a.budget.limit_nano_usd,
                warn_at: a.budget.warn_at_percent.clone(),
            });
        }
        Ok(hold)
    }

    /// Replaces a hold by the actual cost.
    pub fn settle(&self, hold: Hold, actual: i64) {
        if hold.entries.is_empty() {
            return;
        }
        let actual = actual.max(0);
        let mut counters = lock(&self.counters);
        for e in hold.entries {
            let Some(c) = counters.get_mut(&e.key) else {
                continue;
            };
            // A request that started in a period that has ended belongs to that period,
            // whose counter is gone; the ledger still has its cost.
            if c.period_start != e.period_start {
                continue;
            }
            c.reserved = (c.reserved - e.amount).max(0);
            c.spent = c.spent.saturating_add(actual);
            self.warn(&e, c);
        }
    }

    fn warn(&self, e: &HoldEntry, c: &mut Counter) {
        if e.limit <= 0 {
            return;
        }
        let percent = i128::from(c.spent) * 100 / i128::from(e.limit);
        let mut thresholds = e.warn_at.clone();
        thresholds.sort_unstable();
        for t in thresholds {
            if t > c.warned && i128::from(t) <= percent {
                c.warned = t;
                self.warnings.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    scope = e.key.0.as_str(),
                    id = %e.key.1,
                    name = %e.name,
                    period = e.key.2.as_str(),
                    threshold_percent = t,
                    spent_usd = %nano_to_usd_string(c.spent),
                    limit_usd = %nano_to_usd_string(e.limit),
                    "budget threshold reached"
                );
            }
        }
    }

    /// The state of a budget of the key with this id (or of the team of this name).
    pub fn status(&self, scope: Scope, id: &str, period: Period, now_ms: i64) -> Status {
        let (start, _) = period.bounds(now_ms);
        let counters = lock(&self.counters);
        let c = counters
            .get(&(scope, Arc::from(id), period))
            .filter(|c| c.period_start == start)
            .copied()
            .unwrap_or_default();
        Status {
            period_start_ms: start,
            spent_nano_usd: c.spent,
            reserved_nano_usd: c.reserved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(scope: Scope, name: &str, period: Period, limit: i64) -> Applied {
        Applied {
            scope,
            id: Arc::from(name),
            name: Arc::from(name),
            budget: Budget {
                period,
                limit_nano_usd: limit,
                warn_at_percent: vec![50, 100],
            },
        }
    }

    const NOW: i64 = 1_709_211_600_000; // 2024-02-29T13:00:00Z

    #[test]
    fn reserves_until_the_cap_then_settles_to_actual() {
        let book = BudgetBook::new();
        let key = [applied(Scope::Key, "app", Period::Month, 1_000)];
        let h1 = book.reserve(&key, 400, NOW).expect("fits");
        let h2 = book.reserve(&key, 400, NOW).expect("fits");
        let refused = book.reserve(&key, 400, NOW).expect_err("1200 > 1000");
        assert_eq!(refused.reserved_nano_usd, 800);
        assert_eq!(refused.resets_at_ms, Some(1_709_251_200_000));
        book.settle(h1, 100);
        book.settle(h2, 150);
        let s = book.status(Scope::Key, "app", Period::Month, NOW);
        assert_eq!((s.spent_nano_usd, s.reserved_nano_usd), (250, 0));
        // 250 + 400 fits now; crossing 50 % warns once.
        let h3 = book.reserve(&key, 400, NOW).expect("fits");
        book.settle(h3, 400);
        assert_eq!(book.warnings(), 1);
        assert_eq!(book.refusals(), 1);
    }

    #[test]
    fn all_or_nothing_across_key_and_team() {
        let book = BudgetBook::new();
        let both = [
            applied(Scope::Key, "app", Period::Day, 1_000),
            applied(Scope::Team, "t", Period::Total, 300),
        ];
        let e = book.reserve(&both, 500, NOW).expect_err("team cap");
        assert_eq!(e.scope, Scope::Team);
        assert_eq!(
            book.status(Scope::Key, "app", Period::Day, NOW)
                .reserved_nano_usd,
            0
        );
    }

    #[test]
    fn a_new_period_starts_from_zero_and_seeds_do_not_clobber_live_counters() {
        let book = BudgetBook::new();
        let key = [applied(Scope::Key, "app", Period::Day, 1_000)];
        let name: Arc<str> = Arc::from("app");
        let (start, next) = Period::Day.bounds(NOW);
        book.seed(Scope::Key, &name, Period::Day, start, 990);
        assert!(book.reserve(&key, 20, NOW).is_err());
        let h = book.reserve(&key, 10, NOW).expect("exactly fits");
        // Seeding again (a later refresh) keeps the live figures.
        book.seed(Scope::Key, &name, Period::Day, start, 0);
        assert_eq!(
            book.status(Scope::Key, "app", Period::Day, NOW)
                .reserved_nano_usd,
            10
        );
        book.settle(h, 10);
        assert!(book.reserve(&key, 0, NOW).is_err(), "exhausted");
        let tomorrow = next.expect("day ends");
        book.reserve(&key, 500, tomorrow).expect("a new day");
    }
}
