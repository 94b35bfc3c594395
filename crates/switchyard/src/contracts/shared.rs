//! Contract counters in Redis, shared by replicas: the same reserve-then-settle as the
//! in-process book, one Lua script per decision, so a cap holds across every replica.
//!
//! Per contract and period (the key carries the period's start, so a new month is a
//! new counter and nothing is reset):
//! - `PREFIX contract:NAME:START`, a hash: `spent` and `list` (nano-USD at contracted
//!   and list prices), `tokens`, and `reserved` (held by calls in flight);
//! - `…:holds`, a hash from hold id to the amount it reserved;
//! - `…:leases`, a sorted set of hold ids by the unix ms at which they lapse.
//!
//! A hold is a lease: it lapses when its call's total timeout (no attempt outlives it)
//! and a margin have passed. A replica that dies with calls in flight therefore cannot
//! hold cap room for the rest of the period: the next reservation on that counter gives
//! lapsed holds back first. Settling removes the hold (once: a hold already lapsed or
//! settled gives nothing back twice) and adds the call's cost.
//!
//! A counter missing (Redis restarted empty, an eviction, the first call of a period)
//! is seeded from the ledger, set-if-absent so replicas racing agree on one figure,
//! and the decision taken again, once. The ledger is batched, so a seeded figure lacks
//! at most the rows of the replicas' unflushed batches. Counters expire a day after
//! their period ends. Amounts are exact up to 2^53 nano-USD (about 9 million USD:
//! Lua's numbers are doubles).

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::Burn;
use crate::config::Contract;
use crate::ledger::stats::contracts::burn_between;
use crate::storage::redis::{Redis, StateError};
use crate::storage::Database;
use crate::types::time::DAY_MS;

/// How long after its call's total timeout a hold lapses: settling is spawned off the
/// request path and may lag its call a little.
pub const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// Lapsed holds given back per reservation, to bound a script's work; the rest go at
/// the next ones.
const LAPSED_PER_CALL: u32 = 64;

/// KEYS: counter, holds, leases. ARGV: amount, cap, hold id, lease end (unix ms), now
/// (unix ms), counter expiry (unix ms), most lapsed holds to give back. Returns `{2}` when the counter does not exist
/// (nothing changed), else `{granted (1 or 0), spent, reserved, list, tokens}`, the
/// figures after the decision.
const RESERVE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[5], 'LIMIT', 0, ARGV[7])
for _, id in ipairs(lapsed) do
  local held = redis.call('HGET', KEYS[2], id)
  if held then
    redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
local v = redis.call('HMGET', KEYS[1], 'spent', 'reserved', 'list', 'tokens')
local spent = tonumber(v[1] or '0')
local reserved = tonumber(v[2] or '0')
if reserved < 0 then
  redis.call('HSET', KEYS[1], 'reserved', 0)
  reserved = 0
end
local list = tonumber(v[3] or '0')
local tokens = tonumber(v[4] or '0')
local amount = tonumber(ARGV[1])
if spent + reserved + amount > tonumber(ARGV[2]) then
  return {0, spent, reserved, list, tokens}
end
if amount > 0 then
  reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
  for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], ARGV[6]) end
end
return {1, spent, reserved, list, tokens}
"#;

/// KEYS: counter, holds, leases. ARGV: hold id ('' for none), spent, list, tokens.
/// Returns `{-1}` when the counter does not exist (nothing changed), else `{1, spent,
/// reserved, list, tokens}` after settling.
const SETTLE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if ARGV[1] ~= '' then
  local held = redis.call('HGET', KEYS[2], ARGV[1])
  if held then
    redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
end
local spent = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
local list = redis.call('HINCRBY', KEYS[1], 'list', ARGV[3])
local tokens = redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[4])
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if reserved < 0 then
  redis.call('HSET', KEYS[1], 'reserved', 0)
  reserved = 0
end
return {1, spent, reserved, list, tokens}
"#;

/// KEYS: counter. ARGV: spent, list, tokens, expiry (unix ms). Writes only a counter
/// that does not exist; returns its figures `{spent, reserved, list, tokens}` either
/// way.
const SEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0, 'list', ARGV[2], 'tokens', ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
local v = redis.call('HMGET', KEYS[1], 'spent', 'reserved', 'list', 'tokens')
return {tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0'), tonumber(v[4] or '0')}
"#;

/// One counter's place: the contract and the start and end of its period.
#[derive(Debug, Clone, Copy)]
pub struct Period<'a> {
    pub contract: &'a Contract,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// What a reservation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Granted(Burn),
    Full(Burn),
}

/// The contract counters in Redis.
pub struct SharedBurns {
    redis: Arc<Redis>,
    /// Where a missing counter is seeded from.
    ledger: Option<Database>,
    reserve: Script,
    settle: Script,
    seed: Script,
}

impl std::fmt::Debug for SharedBurns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBurns")
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl SharedBurns {
    pub fn new(redis: Arc<Redis>, ledger: Option<Database>) -> SharedBurns {
        SharedBurns {
            redis,
            ledger,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            seed: Script::new(SEED),
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The counter, its holds and its leases.
    fn keys(&self, p: Period<'_>) -> [String; 3] {
        let counter = self
            .redis
            .key(&format!("contract:{}:{}", p.contract.name, p.start_ms));
        let holds = format!("{counter}:holds");
        let leases = format!("{counter}:leases");
        [counter, holds, leases]
    }

    /// Runs `script` on `p`'s counter, holds and leases with the arguments `args`
    /// adds. A reply of `[missing]` (the counter does not exist, nothing changed)
    /// seeds the counter from the ledger and runs the script again, once.
    async fn run_seeding(
        &self,
        script: &Script,
        p: Period<'_>,
        now_ms: i64,
        missing: i64,
        args: impl Fn(&mut redis::ScriptInvocation<'_>),
    ) -> Result<Vec<i64>, StateError> {
        let [counter, holds, leases] = self.keys(p);
        for _ in 0..2 {
            let mut inv = script.prepare_invoke();
            inv.key(&counter).key(&holds).key(&leases);
            args(&mut inv);
            let reply: Vec<i64> = self.redis.run(&inv).await?;
            if reply != [missing] {
                return Ok(reply);
            }
            self.seed_from_ledger(p, now_ms).await?;
        }
        Err(StateError::Redis(
            "a contract counter vanished again right after seeding".into(),
        ))
    }

    /// Reserves `amount` under `cap` for the hold `id`, lapsing at `lease_end_ms`. A
    /// missing counter is seeded from the ledger and the reservation tried again, once.
    pub async fn reserve(
        &self,
        p: Period<'_>,
        cap: i64,
        amount: i64,
        id: &str,
        lease_end_ms: i64,
        now_ms: i64,
    ) -> Result<Reserved, StateError> {
        let reply = self
            .run_seeding(&self.reserve, p, now_ms, 2, |inv| {
                inv.arg(amount.max(0))
                    .arg(cap)
                    .arg(id)
                    .arg(lease_end_ms)
                    .arg(now_ms)
                    .arg(expiry(p))
                    .arg(LAPSED_PER_CALL);
            })
            .await?;
        match reply.as_slice() {
            [granted, rest @ ..] => {
                let burn = figures(p, rest)?;
                Ok(if *granted == 1 {
                    Reserved::Granted(burn)
                } else {
                    Reserved::Full(burn)
                })
            }
            [] => Err(unexpected()),
        }
    }

    /// Gives back the hold `id` (none: `""`) and adds a call's cost. A missing counter
    /// is seeded from the ledger first, so that no spend is lost.
    pub async fn settle(
        &self,
        p: Period<'_>,
        id: &str,
        spent: i64,
        list: i64,
        tokens: u64,
        now_ms: i64,
    ) -> Result<Burn, StateError> {
        let reply = self
            .run_seeding(&self.settle, p, now_ms, -1, |inv| {
                inv.arg(id)
                    .arg(spent.max(0))
                    .arg(list.max(0))
                    .arg(i64::try_from(tokens).unwrap_or(i64::MAX));
            })
            .await?;
        match reply.as_slice() {
            [1, rest @ ..] => figures(p, rest),
            _ => Err(unexpected()),
        }
    }

    /// The counter's figures, seeding it from the ledger when it does not exist.
    pub async fn load(&self, p: Period<'_>, now_ms: i64) -> Result<Burn, StateError> {
        let [counter, _, _] = self.keys(p);
        let got: Vec<Option<i64>> = self
            .redis
            .query(
                redis::cmd("HMGET")
                    .arg(&counter)
                    .arg("spent")
                    .arg("reserved")
                    .arg("list")
                    .arg("tokens"),
            )
            .await?;
        if got.iter().all(Option::is_none) {
            return self.seed_from_ledger(p, now_ms).await;
        }
        let v: Vec<i64> = got.into_iter().map(Option::unwrap_or_default).collect();
        figures(p, &v)
    }

    /// Creates the counter from what the ledger records of the period, unless another
    /// replica did first; returns the counter's figures.
    async fn seed_from_ledger(&self, p: Period<'_>, now_ms: i64) -> Result<Burn, StateError> {
        let recorded = match &self.ledger {
            Some(db) => burn_between(db, p.contract, p.start_ms, now_ms.saturating_add(1))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(contract = %p.contract.name, error = %e,
                        "cannot read the contract's burn from the ledger; its shared counter starts from 0");
                    Burn::default()
                }),
            None => Burn::default(),
        };
        let [counter, _, _] = self.keys(p);
        let mut inv = self.seed.prepare_invoke();
        inv.key(&counter)
            .arg(recorded.spent_nano_usd)
            .arg(recorded.list_nano_usd)
            .arg(i64::try_from(recorded.tokens).unwrap_or(i64::MAX))
            .arg(expiry(p));
        let v: Vec<i64> = self.redis.run(&inv).await?;
        tracing::debug!(contract = %p.contract.name, spent_nano_usd = recorded.spent_nano_usd,
            "contract counter seeded from the ledger (if no replica had)");
        figures(p, &v)
    }
}

/// `[spent, reserved, list, tokens]` as a burn of `p`'s period.
fn figures(p: Period<'_>, v: &[i64]) -> Result<Burn, StateError> {
    let [spent, reserved, list, tokens] = v else {
        return Err(unexpected());
    };
    Ok(Burn {
        period_start_ms: p.start_ms,
        spent_nano_usd: *spent,
        list_nano_usd: *list,
        tokens: u64::try_from(*tokens).unwrap_or(0),
        reserved_nano_usd: (*reserved).max(0),
    })
}

fn unexpected() -> StateError {
    StateError::Redis("unexpected reply from a contract script".into())
}

/// A counter outlives its period by a day, so a call still running at its end settles
/// into it.
fn expiry(p: Period<'_>) -> i64 {
    p.end_ms.saturating_add(DAY_MS)
}
