//! Budget counters in Redis, shared by replicas: the same reserve-then-settle as
//! [`BudgetBook`], one Lua script per decision.
//!
//! A counter is a hash `PREFIX budget:SCOPE:ID:PERIOD:PERIOD_START` with `spent`,
//! `reserved` and `warned` (the highest warning threshold already reported). Its name
//! carries the period's start, so a new day or month is a new counter and nothing has
//! to be reset; day and month counters expire a day after their period ends (a late
//! settle still finds them), `total` ones never.
//!
//! - reserve: for every applied budget, `spent < limit` and `spent + reserved + amount
//!   <= limit` (this call's earlier claims on the same counter included), checked for
//!   all before `reserved` grows in any: all or none, atomically across replicas.
//! - settle: `reserved -= hold` (never below 0), `spent += actual`, and the thresholds
//!   crossed are decided inside the script, so one warning is logged per threshold
//!   whichever replica crosses it.
//! - seed: writes the ledger's spend only when the counter does not exist yet, so a
//!   replica starting later never overwrites what the others counted since.
//!
//! A counter can vanish while the gateway runs: Redis restarted without persistence,
//! an eviction, a replica that started during an outage. Neither script then counts
//! from 0. Reserve creates nothing and names the missing counters; the replica seeds
//! them from the ledger (set-if-absent, so replicas racing agree on the first figure)
//! and reserves again, once. Settle skips a missing counter and says so; the replica
//! seeds it and settles into it. The ledger is batched, so a seeded figure lacks at
//! most the requests of the replicas' unflushed batches (see the README on replicas).
//!
//! Amounts are exact up to 2^53 nano-USD (about 9 million USD; Lua's numbers are
//! doubles). While Redis is unreachable, holds are taken in the in-process fallback
//! (`local`, seeded like the shared counters) or refused (`closed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use redis::Script;

use super::{Applied, BudgetBook, Budgets, Denied, Exceeded, Hold, HoldEntry, Scope, Status};
use crate::config::policy::Period;
use crate::config::OnUnavailable;
use crate::storage::redis::{Redis, StateError};
use crate::storage::Database;
use crate::types::money::nano_to_usd_string;
use crate::types::time::DAY_MS;

/// KEYS: counters. ARGV: amount, then per counter its limit and the unix ms at which
/// it expires (0: never). Returns `{1}`, `{0, i, spent, reserved}` for the first
/// counter `i` (1-based) without room, or `{2, i…}` naming (1-based) the counters that
/// do not exist, having changed nothing.
const RESERVE: &str = r#"
local missing = {2}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
local amount = tonumber(ARGV[1])
local mine = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local limit = tonumber(ARGV[2 * i])
  local v = redis.call('HMGET', k, 'spent', 'reserved')
  local spent = tonumber(v[1] or '0')
  local reserved = tonumber(v[2] or '0')
  local m = mine[k] or 0
  if spent >= limit or spent + reserved + m + amount > limit then
    return {0, i, spent, reserved}
  end
  mine[k] = m + amount
end
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[1])
  if ARGV[2 * i + 1] ~= '0' then redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i + 1]) end
end
return {1}
"#;

/// KEYS: counters. ARGV: actual cost, then per counter the negated hold, its limit and
/// its thresholds (ascending, comma-separated). Returns per counter `{spent,
/// crossed…}`, or `{-1}` for a counter that no longer exists.
const SETTLE: &str = r#"
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  if redis.call('EXISTS', k) == 1 then
    if redis.call('HINCRBY', k, 'reserved', ARGV[3 * i - 1]) < 0 then
      redis.call('HSET', k, 'reserved', 0)
    end
    local spent = redis.call('HINCRBY', k, 'spent', ARGV[1])
    local limit = tonumber(ARGV[3 * i])
    local row = {spent}
    if limit > 0 then
      local warned = tonumber(redis.call('HGET', k, 'warned') or '0')
      local percent = math.floor(spent * 100 / limit)
      local before = warned
      for t in string.gmatch(ARGV[3 * i + 1], '%d+') do
        local n = tonumber(t)
        if n > warned and n <= percent then
          row[#row + 1] = n
          warned = n
        end
      end
      if warned ~= before then redis.call('HSET', k, 'warned', warned) end
    end
    out[i] = row
  else
    out[i] = {-1}
  end
end
return out
"#;

/// KEYS: the counter. ARGV: spent, expiry (unix ms, 0: never). Writes only a counter
/// that does not exist; returns 1 if it wrote.
const SEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0, 'warned', 0)
if ARGV[2] ~= '0' then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
return 1
"#;

/// The shared [`Budgets`].
pub struct RedisBudgets {
    redis: Arc<Redis>,
    /// Where a counter that is missing is seeded from.
    ledger: Option<Database>,
    /// Counts while Redis is unreachable in `local` mode; seeded like the shared ones.
    fallback: BudgetBook,
    reserve: Script,
    settle: Script,
    seed: Script,
    warnings: AtomicU64,
    refusals: AtomicU64,
}

impl RedisBudgets {
    /// Counters in `redis`, seeded from the ledger in `ledger` (from 0 without one).
    pub fn new(redis: Arc<Redis>, ledger: Option<Database>) -> RedisBudgets {
        RedisBudgets {
            redis,
            ledger,
            fallback: BudgetBook::new(),
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            seed: Script::new(SEED),
            warnings: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    fn counter_key(&self, scope: Scope, id: &str, period: Period, period_start: i64) -> String {
        self.redis.key(&format!(
            "budget:{}:{id}:{}:{period_start}",
            scope.as_str(),
            period.as_str()
        ))
    }

    fn without_redis(&self, applied: &[Applied], amount: i64, now_ms: i64) -> Result<Hold, Denied> {
        match self.redis.mode() {
            OnUnavailable::Local => {
                let r = self.fallback.reserve(applied, amount, now_ms);
                if r.is_err() {
                    self.refusals.fetch_add(1, Ordering::Relaxed);
                }
                r.map_err(Denied::Exceeded)
            }
            OnUnavailable::Closed => Err(Denied::StateUnavailable),
        }
    }

    /// Reserves in Redis; counters found missing are seeded from the ledger and the
    /// reservation tried again, once.
    async fn reserve_remote(
        &self,
        applied: &[Applied],
        amount: i64,
        now_ms: i64,
    ) -> Result<Result<Hold, Denied>, StateError> {
        match self.reserve_once(applied, amount, now_ms).await? {
            Reserved::Decided(d) => Ok(d),
            Reserved::Missing(missing) => {
                let wanted: Vec<(Scope, &str, Period, i64)> = missing
                    .iter()
                    .filter_map(|&i| applied.get(i))
                    .map(|a| {
                        let period = a.budget.period;
                        (a.scope, &*a.id, period, period.bounds(now_ms).0)
                    })
                    .collect();
                self.reseed(&wanted).await?;
                match self.reserve_once(applied, amount, now_ms).await? {
                    Reserved::Decided(d) => Ok(d),
                    Reserved::Missing(_) => Err(StateError::Redis(
                        "budget counters vanished again right after seeding".into(),
                    )),
                }
            }
        }
    }

    /// Seeds counters that went missing from what the ledger records.
    async fn reseed(&self, wanted: &[(Scope, &str, Period, i64)]) -> Result<(), StateError> {
        let ids: Vec<(Scope, &str, i64)> = wanted
            .iter()
            .map(|&(s, id, _, start)| (s, id, start))
            .collect();
        let spent = super::spent_in_ledger(self.ledger.as_ref(), &ids).await;
        for (&(scope, id, period, start), spent) in wanted.iter().zip(spent) {
            tracing::info!(scope = scope.as_str(), id, period = period.as_str(),
                spent_usd = %nano_to_usd_string(spent),
                "a shared budget counter was missing; seeded it from the ledger");
            self.seed_remote(scope, id, period, start, spent).await?;
        }
        Ok(())
    }

    /// Creates the counter with `spent` unless it exists.
    async fn seed_remote(
        &self,
        scope: Scope,
        id: &str,
        period: Period,
        period_start: i64,
        spent: i64,
    ) -> Result<(), StateError> {
        let (_, next) = period.bounds(period_start.max(0));
        let next = if period == Period::Total { None } else { next };
        let mut inv = self.seed.prepare_invoke();
        inv.key(self.counter_key(scope, id, period, period_start))
            .arg(spent)
            .arg(expiry(next));
        self.redis.run::<i64>(&inv).await.map(drop)
    }

    async fn reserve_once(
        &self,
        applied: &[Applied],
        amount: i64,
        now_ms: i64,
    ) -> Result<Reserved, StateError> {
        let amount = amount.max(0);
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(amount);
        let mut hold = Hold {
            entries: Vec::with_capacity(applied.len()),
            remote: true,
        };
        for a in applied {
            let period = a.budget.period;
            let (start, next) = period.bounds(now_ms);
            inv.key(self.counter_key(a.scope, &a.id, period, start));
            inv.arg(a.budget.limit_nano_usd).arg(expiry(next));
            hold.entries.push(HoldEntry {
                key: (a.scope, a.id.clone(), period),
                name: a.name.clone(),
                period_start: start,
                amount,
                limit: a.budget.limit_nano_usd,
                warn_at: a.budget.warn_at_percent.clone(),
            });
        }
        let reply: Vec<i64> = self.redis.run(&inv).await?;
        match reply.as_slice() {
            [1] => Ok(Reserved::Decided(Ok(hold))),
            [2, missing @ ..] if !missing.is_empty() => Ok(Reserved::Missing(
                missing
                    .iter()
                    .filter_map(|&i| usize::try_from(i).ok()?.checked_sub(1))
                    .collect(),
            )),
            [0, index, spent, reserved] => {
                let a = usize::try_from(*index)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| applied.get(i))
                    .ok_or_else(|| StateError::Redis("unexpected budget reply".into()))?;
                self.refusals.fetch_add(1, Ordering::Relaxed);
                Ok(Reserved::Decided(Err(Denied::Exceeded(Exceeded {
                    scope: a.scope,
                    name: a.name.clone(),
                    period: a.budget.period,
                    limit_nano_usd: a.budget.limit_nano_usd,
                    spent_nano_usd: *spent,
                    reserved_nano_usd: *reserved,
                    resets_at_ms: a.budget.period.bounds(now_ms).1,
                }))))
            }
            _ => Err(StateError::Redis("unexpected budget reply".into())),
        }
    }

    /// Settles in Redis; a counter found missing is seeded from the ledger and the
    /// cost settled into it, so that no spend is lost.
    async fn settle_remote(&self, hold: &Hold, actual: i64) -> Result<(), StateError> {
        let all: Vec<&HoldEntry> = hold.entries.iter().collect();
        let missing = self.settle_once(&all, actual).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let wanted: Vec<(Scope, &str, Period, i64)> = missing
            .iter()
            .map(|e| (e.key.0, &*e.key.1, e.key.2, e.period_start))
            .collect();
        self.reseed(&wanted).await?;
        let still = self.settle_once(&missing, actual).await?;
        if !still.is_empty() {
            return Err(StateError::Redis(
                "budget counters vanished again right after seeding".into(),
            ));
        }
        Ok(())
    }

    /// Runs SETTLE over `entries`; returns those whose counter does not exist.
    async fn settle_once<'h>(
        &self,
        entries: &[&'h HoldEntry],
        actual: i64,
    ) -> Result<Vec<&'h HoldEntry>, StateError> {
        let mut inv = self.settle.prepare_invoke();
        inv.arg(actual.max(0));
        for e in entries {
            let (scope, id, period) = &e.key;
            inv.key(self.counter_key(*scope, id, *period, e.period_start));
            let mut thresholds = e.warn_at.clone();
            thresholds.sort_unstable();
            let list = thresholds
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(",");
            inv.arg(-e.amount).arg(e.limit).arg(list);
        }
        let rows: Vec<Vec<i64>> = self.redis.run(&inv).await?;
        let mut missing = Vec::new();
        for (&e, row) in entries.iter().zip(rows) {
            let Some((&spent, crossed)) = row.split_first() else {
                continue;
            };
            if spent < 0 {
                missing.push(e);
                continue;
            }
            for &t in crossed {
                self.warnings.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    scope = e.key.0.as_str(),
                    id = %e.key.1,
                    name = %e.name,
                    period = e.key.2.as_str(),
                    threshold_percent = t,
                    spent_usd = %nano_to_usd_string(spent),
                    limit_usd = %nano_to_usd_string(e.limit),
                    "budget threshold reached"
                );
            }
        }
        Ok(missing)
    }
}

/// What one RESERVE said.
enum Reserved {
    Decided(Result<Hold, Denied>),
    /// These counters (indices into the applied budgets) do not exist.
    Missing(Vec<usize>),
}

/// When a counter of a period ending at `next` may go: a day after the end, so that a
/// request still running at midnight settles into its own period.
fn expiry(next: Option<i64>) -> i64 {
    next.map_or(0, |n| n.saturating_add(DAY_MS))
}

impl Budgets for RedisBudgets {
    fn needs_seed<'a>(
        &'a self,
        scope: Scope,
        id: &'a Arc<str>,
        period: Period,
        now_ms: i64,
    ) -> BoxFuture<'a, bool> {
        async move {
            let (start, _) = period.bounds(now_ms);
            let local = !self.fallback.is_seeded(scope, id, period, now_ms);
            if !self.redis.is_available() {
                return local;
            }
            let key = self.counter_key(scope, id, period, start);
            match self
                .redis
                .query::<i64>(redis::cmd("EXISTS").arg(&key))
                .await
            {
                Ok(exists) => exists == 0 || local,
                Err(_) => local,
            }
        }
        .boxed()
    }

    fn seed<'a>(
        &'a self,
        scope: Scope,
        id: &'a Arc<str>,
        period: Period,
        period_start: i64,
        spent: i64,
    ) -> BoxFuture<'a, ()> {
        async move {
            self.fallback.seed(scope, id, period, period_start, spent);
            if !self.redis.is_available() {
                return;
            }
            if let Err(e) = self
                .seed_remote(scope, id, period, period_start, spent)
                .await
            {
                tracing::warn!(error = %e, id = %id, "cannot seed a shared budget counter");
            }
        }
        .boxed()
    }

    fn reserve<'a>(
        &'a self,
        applied: &'a [Applied],
        amount: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Hold, Denied>> {
        async move {
            if applied.is_empty() {
                return Ok(Hold::default());
            }
            if !self.redis.is_available() {
                return self.without_redis(applied, amount, now_ms);
            }
            match self.reserve_remote(applied, amount, now_ms).await {
                Ok(decision) => decision,
                Err(e) => {
                    if !matches!(e, StateError::Unavailable) {
                        tracing::warn!(error = %e, "budget script failed");
                    }
                    self.without_redis(applied, amount, now_ms)
                }
            }
        }
        .boxed()
    }

    fn settle(&self, hold: Hold, actual: i64) -> BoxFuture<'_, ()> {
        async move {
            if hold.entries.is_empty() {
                return;
            }
            if !hold.remote {
                let before = self.fallback.warnings();
                self.fallback.settle(hold, actual);
                let crossed = self.fallback.warnings() - before;
                self.warnings.fetch_add(crossed, Ordering::Relaxed);
                return;
            }
            // Unreachable: the hold stays reserved in Redis (the safe side: it can only
            // refuse too early) until its counter's period ends.
            if let Err(e) = self.settle_remote(&hold, actual).await {
                tracing::warn!(error = %e, "settling a shared budget hold failed");
            }
        }
        .boxed()
    }

    fn status<'a>(
        &'a self,
        scope: Scope,
        id: &'a str,
        period: Period,
        now_ms: i64,
    ) -> BoxFuture<'a, Status> {
        async move {
            let (start, _) = period.bounds(now_ms);
            if self.redis.is_available() {
                let key = self.counter_key(scope, id, period, start);
                let got = self
                    .redis
                    .query::<Vec<Option<i64>>>(
                        redis::cmd("HMGET").arg(&key).arg("spent").arg("reserved"),
                    )
                    .await;
                if let Ok(v) = got {
                    return Status {
                        period_start_ms: start,
                        spent_nano_usd: v.first().copied().flatten().unwrap_or(0),
                        reserved_nano_usd: v.get(1).copied().flatten().unwrap_or(0),
                    };
                }
            }
            self.fallback.status(scope, id, period, now_ms)
        }
        .boxed()
    }

    fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}
