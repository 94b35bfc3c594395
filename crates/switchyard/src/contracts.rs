//! Contract burn at run time: what each contract (`[contracts.NAME]`) has consumed in
//! its current period, what requests in flight hold against its cap, and whether its
//! commitment is still unburned (routing treats such deployments as free at the
//! margin).
//!
//! Caps are reserve-then-settle, like budgets: a call on a covered deployment first
//! reserves an upper bound of its cost (at the contracted price) and is skipped when
//! `spent + reserved + bound` would pass the cap; the call's actual cost then replaces
//! the reservation. Concurrent requests therefore never spend more than the cap. A
//! hold dropped unsettled (a request cancelled before its call) gives its reservation
//! back.
//!
//! The daily budgets of shadow evaluation ([`ShadowBudgets`]) work the same way.
//!
//! One book per gateway, kept across reloads (counters are by contract name) and
//! seeded from the ledger at start, so a restart does not forget the period's burn.
//! With shared state (`[state]`), the counters that decide are in Redis
//! ([`shared::SharedBurns`]): a cap holds across every replica, and a hold is a lease
//! that lapses if its replica dies. The book then mirrors the figures Redis last
//! returned, for routing's "unburned commitment" preference and the reports, and
//! decides on its own only while Redis is unreachable (`on_unavailable = "local"`;
//! `"closed"` skips capped deployments instead).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::config::OnUnavailable;
use crate::config::{Commitment, Contract, Deployment};
pub use crate::ledger::stats::contracts::Burn;
use crate::ledger::stats::contracts::{burn_between, ContractState};
use crate::storage::redis::Redis;
use crate::storage::Database;
use crate::types::time::now_ms;
use crate::types::Price;
use crate::types::Usage;

/// Why a covered deployment was skipped: its contract's cap has no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapReached {
    pub contract: String,
    pub cap_nano_usd: i64,
    pub spent_nano_usd: i64,
    pub reserved_nano_usd: i64,
}

pub mod shared;

/// Why a call on a covered deployment may not be made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The contract's cap has no room for the call.
    Cap(CapReached),
    /// The cap is kept in shared state, which is unreachable, and
    /// `state.on_unavailable = "closed"`: room cannot be known.
    StateUnavailable { contract: String },
}

#[derive(Debug, Default)]
pub struct ContractBook {
    /// The counters, or with shared state the figures Redis last returned plus what
    /// was held here while it was unreachable.
    burns: Mutex<HashMap<String, Burn>>,
    /// Per contract, the period start and which warnings were logged in it.
    warned: Mutex<HashMap<String, (i64, u8)>>,
    /// The counters in Redis, when replicas share state.
    shared: OnceLock<shared::SharedBurns>,
}

const WARNED_SHORTFALL: u8 = 1;
const WARNED_OVERAGE: u8 = 2;
/// Share of a period that must have passed before its projection is trusted enough to
/// warn about (a projection from the first hours is mostly noise).
const WARN_AFTER_PERCENT: i64 = 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ContractBook {
    pub fn new() -> Arc<ContractBook> {
        Arc::new(ContractBook::default())
    }

    /// Keeps the counters in `redis` from now on, seeding missing ones from `ledger`.
    /// Set once per gateway (the book outlives reloads, and so does `[state]`).
    pub fn share(&self, redis: Arc<Redis>, ledger: Option<Database>) {
        let _ = self.shared.set(shared::SharedBurns::new(redis, ledger));
    }

    /// Sets the mirror of `c` to figures read from shared state, unless they are of an
    /// older period than the mirror's.
    fn mirror(&self, c: &Contract, burn: Burn) {
        let mut burns = lock(&self.burns);
        let b = burns.entry(c.name.clone()).or_default();
        if burn.period_start_ms >= b.period_start_ms {
            *b = burn;
        }
    }

    /// Re-reads the shared counters of `contracts` (a counter missing in Redis is
    /// seeded from the ledger), so that a report made on a replica that served
    /// nothing lately is current. Whether every one was read: false without shared
    /// state or while Redis cannot be asked.
    pub async fn refresh(&self, contracts: &[Arc<Contract>]) -> bool {
        let Some(shared) = self.shared.get() else {
            return false;
        };
        if !shared.redis().is_available() {
            return false;
        }
        let now = now_ms();
        for c in contracts {
            let Some((start_ms, end_ms)) = c.period.bounds(now) else {
                continue;
            };
            let period = shared::Period {
                contract: c,
                start_ms,
                end_ms,
            };
            match shared.load(period, now).await {
                Ok(burn) => self.mirror(c, burn),
                Err(e) => {
                    tracing::warn!(contract = %c.name, error = %e, "cannot read a shared contract counter");
                    return false;
                }
            }
        }
        true
    }

    /// The counter of `c` for the period that contains `now_ms`, started afresh when
    /// the period has turned. `None` outside a fixed term.
    fn current<'a>(
        burns: &'a mut HashMap<String, Burn>,
        c: &Contract,
        now_ms: i64,
    ) -> Option<&'a mut Burn> {
        let (start, _) = c.period.bounds(now_ms)?;
        // The name is copied only the first time a contract is counted.
        if !burns.contains_key(&c.name) {
            burns.insert(c.name.clone(), Burn::default());
        }
        let b = burns.get_mut(&c.name)?;
        if b.period_start_ms != start {
            *b = Burn {
                period_start_ms: start,
                ..Burn::default()
            };
        }
        Some(b)
    }

    /// Whether the counter of `c` runs in the period that starts at `start`.
    fn is_running(&self, c: &Contract, start: i64) -> bool {
        lock(&self.burns)
            .get(&c.name)
            .is_some_and(|b| b.period_start_ms == start)
    }

    /// Sets the period's burn from the ledger, unless the counter already runs (its
    /// figures are newer than the batched ledger's).
    pub fn seed(&self, c: &Contract, seeded: Burn) {
        let mut burns = lock(&self.burns);
        let b = burns.entry(c.name.clone()).or_default();
        let idle = b.spent_nano_usd == 0 && b.reserved_nano_usd == 0 && b.tokens == 0;
        if b.period_start_ms != seeded.period_start_ms || idle {
            *b = Burn {
                reserved_nano_usd: 0,
                ..seeded
            };
        }
    }

    /// The burn of `c` now (zero figures outside a fixed term).
    pub fn burn(&self, c: &Contract, now_ms: i64) -> Burn {
        let mut burns = lock(&self.burns);
        ContractBook::current(&mut burns, c, now_ms)
            .map(|b| *b)
            .unwrap_or_default()
    }

    /// Whether `c` has a commitment that the period's traffic has not used up yet: a
    /// call under it costs nothing at the margin. A provisioned commitment is paid by
    /// the hour, so it always is.
    pub fn unburned(&self, c: &Contract, now_ms: i64) -> bool {
        let Some(commitment) = c.commitment else {
            return false;
        };
        if c.period.bounds(now_ms).is_none() {
            return false;
        }
        let b = self.burn(c, now_ms);
        match commitment {
            Commitment::Spend { nano_usd } => b.spent_nano_usd < nano_usd,
            Commitment::Tokens { tokens } => b.tokens < tokens,
            Commitment::Provisioned { .. } => true,
        }
    }

    /// A hold for one call on `d` expected to use `usage`, under the contract covering
    /// it (`None` when none does), taken in shared state when there is one. `lease` is
    /// the longest the call can run: a shared hold not settled by then (plus
    /// [`shared::LEASE_MARGIN`]) lapses, so a replica that dies does not keep cap room.
    pub async fn hold_for_call(
        self: &Arc<Self>,
        d: &Deployment,
        usage: &Usage,
        lease: Duration,
        now_ms: i64,
    ) -> Result<Option<ContractHold>, Refused> {
        let Some(c) = &d.contract else {
            return Ok(None);
        };
        let Some(shared) = self.shared.get() else {
            return self.hold(d, usage, now_ms).map_err(Refused::Cap);
        };
        let Some((start_ms, end_ms)) = c.period.bounds(now_ms) else {
            return Ok(Some(ContractHold::none()));
        };
        let prices = (d.effective_price, d.price);
        let remote = |id: String, amount: i64| {
            Some(ContractHold {
                held: Some(Held {
                    book: self.clone(),
                    contract: c.clone(),
                    period_start_ms: start_ms,
                    amount,
                    effective: prices.0,
                    list: prices.1,
                    shared: Some(SharedHold { id, end_ms }),
                }),
            })
        };
        let Some(cap) = c.cap_nano_usd else {
            // Nothing to reserve: the cost is counted in Redis when the call settles.
            return Ok(remote(String::new(), 0));
        };
        let fallback = || match shared.redis().mode() {
            OnUnavailable::Local => self.hold(d, usage, now_ms).map_err(Refused::Cap),
            OnUnavailable::Closed => Err(Refused::StateUnavailable {
                contract: c.name.clone(),
            }),
        };
        if !shared.redis().is_available() {
            return fallback();
        }
        let bound = d.effective_price.cost(usage).max(0);
        let id = format!("{:016x}", rand::random::<u64>());
        let lease_ms = i64::try_from(lease.saturating_add(shared::LEASE_MARGIN).as_millis())
            .unwrap_or(i64::MAX);
        let period = shared::Period {
            contract: c,
            start_ms,
            end_ms,
        };
        match shared
            .reserve(
                period,
                cap,
                bound,
                &id,
                now_ms.saturating_add(lease_ms),
                now_ms,
            )
            .await
        {
            Ok(shared::Reserved::Granted(burn)) => {
                self.mirror(c, burn);
                Ok(remote(id, bound))
            }
            Ok(shared::Reserved::Full(burn)) => {
                self.mirror(c, burn);
                Err(Refused::Cap(CapReached {
                    contract: c.name.clone(),
                    cap_nano_usd: cap,
                    spent_nano_usd: burn.spent_nano_usd,
                    reserved_nano_usd: burn.reserved_nano_usd,
                }))
            }
            Err(e) => {
                tracing::warn!(contract = %c.name, error = %e, "shared contract counter unavailable");
                fallback()
            }
        }
    }

    /// A hold for one call on `d` expected to use `usage` (its cost bound at `d`'s
    /// effective price), under the contract covering it; `None` when none does. In
    /// process only: what-if replays and the fallback of shared state use it.
    pub fn hold(
        self: &Arc<Self>,
        d: &Deployment,
        usage: &Usage,
        now_ms: i64,
    ) -> Result<Option<ContractHold>, CapReached> {
        let Some(c) = &d.contract else {
            return Ok(None);
        };
        let bound = d.effective_price.cost(usage);
        self.reserve(c, (d.effective_price, d.price), bound, now_ms)
            .map(Some)
    }

    /// Takes a hold for one call on `deployment` under `c`, whose cost is at most
    /// `bound` at the contracted price: refused when it would pass the cap. Without a
    /// cap the hold reserves nothing and only records the call's cost when settled.
    pub fn reserve(
        self: &Arc<Self>,
        c: &Arc<Contract>,
        prices: (Price, Price),
        bound: i64,
        now_ms: i64,
    ) -> Result<ContractHold, CapReached> {
        let bound = bound.max(0);
        let mut burns = lock(&self.burns);
        let Some(b) = ContractBook::current(&mut burns, c, now_ms) else {
            // Outside its term the contract sets no terms: list prices, no cap.
            return Ok(ContractHold::none());
        };
        let amount = match c.cap_nano_usd {
            Some(cap) => {
                let committed = b.spent_nano_usd.saturating_add(b.reserved_nano_usd);
                if committed.saturating_add(bound) > cap {
                    return Err(CapReached {
                        contract: c.name.clone(),
                        cap_nano_usd: cap,
                        spent_nano_usd: b.spent_nano_usd,
                        reserved_nano_usd: b.reserved_nano_usd,
                    });
                }
                b.reserved_nano_usd = b.reserved_nano_usd.saturating_add(bound);
                bound
            }
            None => 0,
        };
        Ok(ContractHold {
            held: Some(Held {
                book: self.clone(),
                contract: c.clone(),
                period_start_ms: b.period_start_ms,
                amount,
                effective: prices.0,
                list: prices.1,
                shared: None,
            }),
        })
    }

    fn settle(&self, h: Held, spent: i64, list: i64, tokens: u64) {
        if let Some(remote) = &h.shared {
            if remote.id.is_empty() && spent <= 0 && list <= 0 && tokens == 0 {
                return; // nothing was reserved and nothing was spent
            }
            // Settling awaits Redis, which a drop cannot; outside a runtime (only at
            // teardown) the hold lapses with its lease instead.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(settle_shared(h.book.clone(), h, spent, list, tokens));
                }
                Err(_) => tracing::debug!(contract = %h.contract.name,
                    "contract hold left to lapse: no runtime to settle it"),
            }
            return;
        }
        let burn = {
            let mut burns = lock(&self.burns);
            let Some(b) = burns.get_mut(&h.contract.name) else {
                return;
            };
            // A call that started in a period that has ended belongs to that period,
            // whose counter is gone (the ledger keeps its cost).
            if b.period_start_ms != h.period_start_ms {
                return;
            }
            b.reserved_nano_usd = b.reserved_nano_usd.saturating_sub(h.amount).max(0);
            b.spent_nano_usd = b.spent_nano_usd.saturating_add(spent.max(0));
            b.list_nano_usd = b.list_nano_usd.saturating_add(list.max(0));
            b.tokens = b.tokens.saturating_add(tokens);
            *b
        };
        if spent > 0 || tokens > 0 {
            self.warn(&h.contract, burn, now_ms());
        }
    }

    /// Logs, once per period each, a commitment projected to go partly unused and a
    /// cap projected to be crossed, once enough of the period has passed to project.
    fn warn(&self, c: &Contract, burn: Burn, now_ms: i64) {
        let Some((start, end)) = c.period.bounds(now_ms) else {
            return;
        };
        if (now_ms - start).saturating_mul(100) < (end - start).saturating_mul(WARN_AFTER_PERCENT) {
            return;
        }
        let state = ContractState::of(c, burn, now_ms);
        let p = state.projection();
        let mut warned = lock(&self.warned);
        let entry = warned.entry(c.name.clone()).or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        if p.shortfall.is_some_and(|s| s > 0) && entry.1 & WARNED_SHORTFALL == 0 {
            entry.1 |= WARNED_SHORTFALL;
            tracing::warn!(
                contract = %c.name,
                committed = ?p.committed_nano_usd,
                projected = p.projected,
                shortfall = ?p.shortfall,
                "contract projected to fall short of its commitment"
            );
        }
        if p.overage_nano_usd.is_some_and(|o| o > 0) && entry.1 & WARNED_OVERAGE == 0 {
            entry.1 |= WARNED_OVERAGE;
            tracing::warn!(
                contract = %c.name,
                cap_nano_usd = ?c.cap_nano_usd,
                spent_nano_usd = burn.spent_nano_usd,
                overage_nano_usd = ?p.overage_nano_usd,
                "contract projected to cross its cap (requests will skip its deployments)"
            );
        }
    }
}

/// Seeds the book with what the ledger in `db` holds of each contract's current
/// period (a counter already running keeps its figures). A ledger that cannot be read
/// leaves the counters at 0, said in the log: caps then count from now.
pub async fn seed_from_ledger(
    book: &ContractBook,
    db: Option<&Database>,
    contracts: &[Arc<Contract>],
) {
    // With shared state the counters other replicas keep are read, and a missing one
    // is seeded from the ledger there (set-if-absent); only without Redis does this
    // replica seed its own.
    if book.refresh(contracts).await {
        return;
    }
    let now = now_ms();
    let Some(db) = db else { return };
    for c in contracts {
        let Some((start, _)) = c.period.bounds(now) else {
            continue;
        };
        if book.is_running(c, start) {
            continue;
        }
        match burn_between(db, c, start, now.saturating_add(1)).await {
            Ok(burn) => book.seed(c, burn),
            Err(e) => tracing::warn!(
                contract = %c.name,
                error = %e,
                "cannot read the contract's burn from the ledger; counting from 0"
            ),
        }
    }
}

struct Held {
    book: Arc<ContractBook>,
    contract: Arc<Contract>,
    period_start_ms: i64,
    amount: i64,
    /// The deployment's effective and list prices: what a settled usage costs.
    effective: Price,
    list: Price,
    /// Where the hold is kept when it is in shared state.
    shared: Option<SharedHold>,
}

struct SharedHold {
    /// The hold's id in the counter's holds (empty: nothing reserved, no cap).
    id: String,
    /// The end of the counter's period.
    end_ms: i64,
}

/// Settles a shared hold: gives its reservation back and counts the call's cost in
/// Redis, then mirrors the figures and warns as the in-process book would.
async fn settle_shared(book: Arc<ContractBook>, h: Held, spent: i64, list: i64, tokens: u64) {
    let (Some(shared), Some(remote)) = (book.shared.get(), &h.shared) else {
        return;
    };
    let period = shared::Period {
        contract: &h.contract,
        start_ms: h.period_start_ms,
        end_ms: remote.end_ms,
    };
    let now = now_ms();
    match shared
        .settle(period, &remote.id, spent, list, tokens, now)
        .await
    {
        Ok(burn) => {
            book.mirror(&h.contract, burn);
            if spent > 0 || tokens > 0 {
                book.warn(&h.contract, burn, now);
            }
        }
        // The reservation lapses with its lease; the cost is in the ledger, and counted
        // again when the counter is next seeded from it.
        Err(e) => tracing::warn!(contract = %h.contract.name, error = %e,
            "settling a shared contract hold failed"),
    }
}

/// One call's hold on its contract. Settled with the call's usage; dropped unsettled,
/// it gives its reservation back (the call was never made, or the caller decided the
/// reservation should stand: see [`ContractHold::keep`]).
#[derive(Default)]
pub struct ContractHold {
    held: Option<Held>,
}

impl std::fmt::Debug for ContractHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContractHold")
            .field(
                "contract",
                &self.held.as_ref().map(|h| h.contract.name.as_str()),
            )
            .field("amount", &self.held.as_ref().map(|h| h.amount))
            .finish()
    }
}

impl ContractHold {
    fn none() -> ContractHold {
        ContractHold { held: None }
    }

    /// Replaces the reservation with the cost of `usage`.
    pub fn settle(mut self, usage: &Usage) {
        if let Some(h) = self.held.take() {
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            let (spent, list) = (h.effective.cost(usage), h.list.cost(usage));
            h.book.clone().settle(h, spent, list, tokens);
        }
    }

    /// The call was made but its cost will never be known (its answer went unread):
    /// the reservation, an upper bound of that cost, is counted as spent, so the cap
    /// stays safe.
    pub fn keep(mut self) {
        if let Some(h) = self.held.take() {
            let amount = h.amount;
            h.book.clone().settle(h, amount, amount, 0);
        }
    }
}

impl Drop for ContractHold {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            h.book.clone().settle(h, 0, 0, 0);
        }
    }
}

/// The daily budgets of shadow evaluation (`[models.NAME.shadow] budget_usd`), by
/// model: reserve-then-settle like a contract's cap, over UTC days. Kept across
/// reloads; in process (a restart forgets today's shadow spend, so it may spend up to
/// one more day's budget that day).
#[derive(Debug, Default)]
pub struct ShadowBudgets {
    days: Mutex<HashMap<String, ShadowDay>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ShadowDay {
    start_ms: i64,
    spent: i64,
    reserved: i64,
}

impl ShadowBudgets {
    pub fn new() -> Arc<ShadowBudgets> {
        Arc::new(ShadowBudgets::default())
    }

    /// Holds `bound` of today's `limit` for one mirrored call of `model`; `None` when
    /// the day's budget has no room for it.
    pub fn reserve(
        self: &Arc<Self>,
        model: &str,
        bound: i64,
        limit: i64,
        now_ms: i64,
    ) -> Option<ShadowHold> {
        let bound = bound.max(0);
        let start = day_start(now_ms);
        let mut days = lock(&self.days);
        let d = days.entry(model.to_owned()).or_default();
        if d.start_ms != start {
            *d = ShadowDay {
                start_ms: start,
                ..ShadowDay::default()
            };
        }
        if d.spent.saturating_add(d.reserved).saturating_add(bound) > limit {
            return None;
        }
        d.reserved = d.reserved.saturating_add(bound);
        Some(ShadowHold {
            book: self.clone(),
            model: model.to_owned(),
            start_ms: start,
            amount: bound,
            settled: false,
        })
    }

    /// Spent and held today by `model`'s shadow calls.
    pub fn today(&self, model: &str, now_ms: i64) -> (i64, i64) {
        let start = day_start(now_ms);
        lock(&self.days)
            .get(model)
            .filter(|d| d.start_ms == start)
            .map_or((0, 0), |d| (d.spent, d.reserved))
    }

    fn settle(&self, h: &ShadowHold, actual: i64) {
        let mut days = lock(&self.days);
        if let Some(d) = days.get_mut(&h.model).filter(|d| d.start_ms == h.start_ms) {
            d.reserved = d.reserved.saturating_sub(h.amount).max(0);
            d.spent = d.spent.saturating_add(actual.max(0));
        }
    }
}

/// The start of the UTC day of `now_ms`.
fn day_start(now_ms: i64) -> i64 {
    let day = crate::types::time::DAY_MS;
    now_ms.div_euclid(day) * day
}

/// One mirrored call's hold on its model's shadow budget: settled with the call's
/// cost, or given back when dropped unsettled (the call never went out).
pub struct ShadowHold {
    book: Arc<ShadowBudgets>,
    model: String,
    start_ms: i64,
    amount: i64,
    settled: bool,
}

impl ShadowHold {
    pub fn settle(mut self, actual: i64) {
        self.settled = true;
        self.book.settle(&self, actual);
    }
}

impl Drop for ShadowHold {
    fn drop(&mut self) {
        if !self.settled {
            self.book.settle(self, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ContractPeriod;

    const NOW: i64 = 1_796_000_000_000; // 2026-11-30

    fn contract(cap: Option<i64>, commitment: Option<Commitment>) -> Arc<Contract> {
        Arc::new(Contract {
            name: "c".into(),
            deployments: vec!["d".into()],
            period: ContractPeriod::Month,
            commitment,
            cap_nano_usd: cap,
            prices: Default::default(),
        })
    }

    fn price() -> (Price, Price) {
        let p = Price {
            input_per_mtok: 1_000_000_000, // $1 per M: 1 token = 1,000 nano-USD
            output_per_mtok: 1_000_000_000,
            cached_input_per_mtok: 1_000_000_000,
            ..Price::default()
        };
        (p, p)
    }

    fn usage(tokens: u64) -> Usage {
        Usage {
            prompt_tokens: tokens,
            ..Usage::default()
        }
    }

    #[test]
    fn the_cap_holds_reservations_and_settles_to_actual() {
        let book = ContractBook::new();
        let c = contract(Some(10_000), None);
        let h1 = book.reserve(&c, price(), 6_000, NOW).expect("fits");
        let refused = book
            .reserve(&c, price(), 6_000, NOW)
            .expect_err("12,000 > 10,000");
        assert_eq!(refused.reserved_nano_usd, 6_000);
        h1.settle(&usage(2)); // 2,000 nano-USD
        let b = book.burn(&c, NOW);
        assert_eq!(
            (b.spent_nano_usd, b.reserved_nano_usd, b.tokens),
            (2_000, 0, 2)
        );
        book.reserve(&c, price(), 8_000, NOW)
            .expect("2,000 + 8,000 fits")
            .keep();
        assert_eq!(book.burn(&c, NOW).spent_nano_usd, 10_000);
        assert!(
            book.reserve(&c, price(), 1, NOW).is_err(),
            "the cap is reached"
        );
    }

    #[test]
    fn huge_bounds_and_rates_saturate_instead_of_overflowing() {
        let book = ContractBook::new();
        let c = contract(Some(i64::MAX - 1), None);
        let h = book
            .reserve(&c, price(), i64::MAX - 1, NOW)
            .expect("fits exactly");
        assert!(book.reserve(&c, price(), i64::MAX, NOW).is_err());
        h.keep();
        assert_eq!(book.burn(&c, NOW).spent_nano_usd, i64::MAX - 1);
        let pt = Commitment::Provisioned {
            nano_usd_per_hour: i64::MAX,
        };
        assert_eq!(pt.committed_nano_usd(0, 365 * 86_400_000), Some(i64::MAX));
    }

    #[test]
    fn a_hold_dropped_unsettled_gives_its_reservation_back() {
        let book = ContractBook::new();
        let c = contract(Some(10_000), None);
        let h = book.reserve(&c, price(), 10_000, NOW).expect("fits");
        assert!(book.reserve(&c, price(), 1, NOW).is_err());
        drop(h);
        let b = book.burn(&c, NOW);
        assert_eq!((b.spent_nano_usd, b.reserved_nano_usd), (0, 0));
        book.reserve(&c, price(), 10_000, NOW).expect("room again");
    }

    #[test]
    fn a_commitment_is_unburned_until_spent_and_a_new_month_starts_afresh() {
        let book = ContractBook::new();
        let c = contract(None, Some(Commitment::Spend { nano_usd: 5_000 }));
        assert!(book.unburned(&c, NOW));
        book.reserve(&c, price(), 0, NOW)
            .expect("no cap")
            .settle(&usage(5));
        assert!(!book.unburned(&c, NOW), "5,000 of 5,000 spent");
        let next_month = NOW + 40 * 86_400_000;
        assert!(book.unburned(&c, next_month));
        let tokens = contract(None, Some(Commitment::Tokens { tokens: 10 }));
        book.reserve(&tokens, price(), 0, NOW)
            .expect("no cap")
            .settle(&usage(9));
        assert!(book.unburned(&tokens, NOW));
        assert!(
            !book.unburned(&contract(Some(1), None), NOW),
            "no commitment"
        );
    }

    #[test]
    fn a_shadow_budget_holds_a_day_and_gives_back_what_was_not_spent() {
        let book = ShadowBudgets::new();
        let h = book.reserve("m", 600, 1_000, NOW).expect("fits");
        assert!(
            book.reserve("m", 600, 1_000, NOW).is_none(),
            "1,200 > 1,000"
        );
        assert!(
            book.reserve("other", 600, 1_000, NOW).is_some(),
            "per model"
        );
        h.settle(100);
        assert_eq!(book.today("m", NOW), (100, 0));
        drop(book.reserve("m", 900, 1_000, NOW).expect("100 + 900 fits"));
        assert_eq!(book.today("m", NOW), (100, 0), "dropped: given back");
        assert!(
            book.reserve("m", 1_000, 1_000, NOW + 86_400_000).is_some(),
            "a new day"
        );
    }

    #[test]
    fn a_seed_sets_an_idle_counter_but_not_a_running_one() {
        let book = ContractBook::new();
        let c = contract(Some(100_000), None);
        let start = c.period.bounds(NOW).expect("month").0;
        let seeded = Burn {
            period_start_ms: start,
            spent_nano_usd: 40_000,
            list_nano_usd: 50_000,
            tokens: 40,
            reserved_nano_usd: 0,
        };
        book.seed(&c, seeded);
        assert_eq!(book.burn(&c, NOW), seeded);
        let _h = book.reserve(&c, price(), 1_000, NOW).expect("fits");
        book.seed(
            &c,
            Burn {
                period_start_ms: start,
                ..Burn::default()
            },
        );
        assert_eq!(book.burn(&c, NOW).spent_nano_usd, 40_000);
    }
}
