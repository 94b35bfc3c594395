//! The [`Limiter`] in Redis, for replicas that share their limits: the same sliding
//! log as [`InProcessLimiter`], kept in Redis and decided by one Lua script per call.
//!
//! A window `KEY` is two Redis keys: `PREFIX win:KEY:log`, a sorted set of the
//! window's slices scored by the time of their latest reservation (µs since the
//! epoch, Redis's `TIME`), and `PREFIX win:KEY:amt`, a hash of each slice's amount plus
//! the running `total`. A slice is 1/4096 of the period (at least 1 µs), named by its
//! number since the epoch (`floor(TIME / width)`): every reservation made within it
//! adds to it, as in the in-process window, so a window holds at most about 4,097
//! members whatever the rate (one member per request held 300,000 for a key sending
//! 5,000 requests a second against a per-minute limit). A call first drops the slices
//! older than the period (`ZRANGEBYSCORE` + `HDEL` + `ZREMRANGEBYSCORE`, subtracting
//! them from the total), then checks every claim and only then adds to all of them, so
//! a reservation is all or none, atomically, across every replica. A slice's number is
//! never used again once its time has passed, so `settle` finds the slice it reserved
//! in, or knows it has left the window, even after the window's keys expired. Every
//! append sets both keys to expire after the period: a window that stops receiving
//! traffic leaves nothing behind. The slice's score only moves forward (`ZADD GT`,
//! Redis 6.2 or later).
//!
//! Amounts and limits are exact up to 2^53 (Lua's numbers are doubles); larger ones
//! are clamped there, which no real limit reaches.
//!
//! While Redis is unreachable the limiter counts in its in-process fallback
//! (`on_unavailable = "local"`) or refuses with `state_unavailable` (`closed`); what was
//! reserved in one place is settled in the same place.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::Script;

use super::{Claim, InProcessLimiter, Limiter, Refusal, Reservation, Slot};
use crate::config::OnUnavailable;
use crate::storage::redis::{Redis, StateError};

/// Largest count the scripts handle exactly (Lua numbers are doubles).
const EXACT: u64 = 1 << 53;

/// Removes the entries of window (`z`, `h`) scored at or before `cutoff` and takes
/// their amounts off its total. `int` writes a number as Redis expects an integer.
const COMMON: &str = r#"
local function int(x) return string.format('%.0f', x) end
local function trim(z, h, cutoff)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', int(cutoff))
  if #old == 0 then return end
  local freed = 0
  for i = 1, #old do
    freed = freed + tonumber(redis.call('HGET', h, old[i]) or '0')
  end
  for i = 1, #old, 1000 do
    redis.call('HDEL', h, unpack(old, i, math.min(i + 999, #old)))
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', int(cutoff))
  redis.call('HINCRBY', h, 'total', int(-freed))
end
local function append(z, h, now, period, amount)
  local slice = math.floor(now / math.max(1, math.floor(period / 4096)))
  redis.call('ZADD', z, 'GT', int(now), int(slice))
  redis.call('HINCRBY', h, int(slice), int(amount))
  redis.call('HINCRBY', h, 'total', int(amount))
  local ms = int(math.ceil(period / 1000))
  redis.call('PEXPIRE', z, ms)
  redis.call('PEXPIRE', h, ms)
  return slice
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"#;

/// KEYS: per claim its log and amounts. ARGV: per claim limit, period (µs), amount.
/// Returns `{1, slice…, total…}` (per claim the number of the slice it was added to,
/// then per claim its window's total once all are in), or `{0, i,
/// total, retry_us}` for the first claim `i` (1-based) that does not fit, `total`
/// counting this call's own earlier claims on the same window.
const RESERVE: &str = r#"
local n = #KEYS / 2
local pending = {}
for i = 1, n do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local limit = tonumber(ARGV[3 * i - 2])
  local period = tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  trim(z, h, now - period)
  local total = tonumber(redis.call('HGET', h, 'total') or '0') + (pending[z] or 0)
  if total + amount > limit then
    local retry = period
    if amount <= limit then
      local needed = total + amount - limit
      local freed = 0
      local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + tonumber(redis.call('HGET', h, entries[j]) or '0')
        if freed >= needed then
          retry = math.max(0, tonumber(entries[j + 1]) + period - now)
          break
        end
      end
    end
    return {0, i, total, retry}
  end
  pending[z] = (pending[z] or 0) + amount
end
local out = {1}
for i = 1, n do
  out[i + 1] = append(KEYS[2 * i - 1], KEYS[2 * i], now,
    tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]))
end
for i = 1, n do
  out[n + i + 1] = tonumber(redis.call('HGET', KEYS[2 * i], 'total') or '0')
end
return out
"#;

/// KEYS: per slot its log and amounts. ARGV: per slot period (µs), slice, reserved,
/// actual. The slice's amount moves by the difference (other reservations share it).
const SETTLE: &str = r#"
local n = #KEYS / 2
for i = 1, n do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local period = tonumber(ARGV[4 * i - 3])
  local slice = ARGV[4 * i - 2]
  local reserved = tonumber(ARGV[4 * i - 1])
  local actual = tonumber(ARGV[4 * i])
  trim(z, h, now - period)
  local cur = redis.call('HGET', h, slice)
  if cur then
    -- Never below zero, whatever a replica of another version left in the slice.
    local change = math.max(actual - reserved, -tonumber(cur))
    redis.call('HINCRBY', h, slice, int(change))
    redis.call('HINCRBY', h, 'total', int(change))
  elseif actual > reserved then
    -- The slice left the window (a request longer than the period): charge the
    -- excess now rather than never.
    append(z, h, now, period, actual - reserved)
  end
end
return 1
"#;

/// KEYS: log, amounts. ARGV: period (µs). Returns `{-1, 0}` for a window that does not
/// exist, else `{total, reset_us}`.
const REMAINING: &str = r#"
local z, h = KEYS[1], KEYS[2]
if redis.call('EXISTS', h) == 0 then return {-1, 0} end
local period = tonumber(ARGV[1])
trim(z, h, now - period)
local total = tonumber(redis.call('HGET', h, 'total') or '0')
local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
local reset = 0
if #last == 2 then reset = math.max(0, tonumber(last[2]) + period - now) end
return {total, reset}
"#;

/// The shared [`Limiter`]: windows in Redis, exact across replicas.
pub struct RedisLimiter {
    redis: Arc<Redis>,
    /// Counts while Redis is unreachable in `local` mode.
    fallback: InProcessLimiter,
    reserve: Script,
    settle: Script,
    remaining: Script,
}

impl RedisLimiter {
    pub fn new(redis: Arc<Redis>) -> RedisLimiter {
        RedisLimiter {
            reserve: Script::new(&format!("{COMMON}{RESERVE}")),
            settle: Script::new(&format!("{COMMON}{SETTLE}")),
            remaining: Script::new(&format!("{COMMON}{REMAINING}")),
            fallback: InProcessLimiter::new(),
            redis,
        }
    }

    /// The Redis handle (for its status).
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    fn log_key(&self, key: &str) -> String {
        self.redis.key(&format!("win:{key}:log"))
    }

    fn amounts_key(&self, key: &str) -> String {
        self.redis.key(&format!("win:{key}:amt"))
    }

    /// What happens to a reservation while Redis cannot be asked.
    fn without_redis(&self, claims: &[Claim]) -> Result<Reservation, Refusal> {
        match self.redis.mode() {
            OnUnavailable::Local => self.fallback.reserve_now(claims),
            OnUnavailable::Closed => Err(Refusal {
                key: claims
                    .first()
                    .map_or_else(|| Arc::from("state"), |c| c.key.clone()),
                limit: 0,
                remaining: 0,
                retry_after: Duration::from_secs(1),
                state_unavailable: true,
            }),
        }
    }

    async fn reserve_remote(
        &self,
        claims: &[Claim],
    ) -> Result<Result<Reservation, Refusal>, StateError> {
        let mut inv = self.reserve.prepare_invoke();
        for c in claims {
            inv.key(self.log_key(&c.key)).key(self.amounts_key(&c.key));
            inv.arg(c.limit.min(EXACT))
                .arg(period_us(c.period))
                .arg(c.amount.min(EXACT));
        }
        let reply: Vec<i64> = self.redis.run(&inv).await?;
        let bad = || StateError::Redis("unexpected reply from the reserve script".into());
        match reply.split_first() {
            Some((1, rest)) if rest.len() == 2 * claims.len() => {
                let (seqs, totals) = rest.split_at(claims.len());
                Ok(Ok(Reservation {
                    slots: claims
                        .iter()
                        .zip(seqs.iter().zip(totals))
                        .map(|(c, (&seq, &total))| Slot {
                            key: c.key.clone(),
                            period: c.period,
                            seq: u64::try_from(seq).unwrap_or(0),
                            amount: c.amount,
                            remaining: c.limit.saturating_sub(u64::try_from(total).unwrap_or(0)),
                        })
                        .collect(),
                    remote: true,
                }))
            }
            Some((0, [index, total, retry_us])) => {
                let claim = usize::try_from(*index)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| claims.get(i))
                    .ok_or_else(bad)?;
                let total = u64::try_from(*total).unwrap_or(0);
                let retry_after = if claim.amount > claim.limit {
                    claim.period
                } else {
                    Duration::from_micros(u64::try_from(*retry_us).unwrap_or(0)).min(claim.period)
                };
                Ok(Err(Refusal {
                    key: claim.key.clone(),
                    limit: claim.limit,
                    remaining: claim.limit.saturating_sub(total),
                    retry_after,
                    state_unavailable: false,
                }))
            }
            _ => Err(bad()),
        }
    }

    async fn settle_remote(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> Result<(), StateError> {
        let mut inv = self.settle.prepare_invoke();
        let mut any = false;
        for (slot, &actual) in reservation.slots.iter().zip(actual) {
            any = true;
            inv.key(self.log_key(&slot.key))
                .key(self.amounts_key(&slot.key));
            inv.arg(period_us(slot.period))
                .arg(slot.seq)
                .arg(slot.amount.min(EXACT))
                .arg(actual.min(EXACT));
        }
        if !any {
            return Ok(());
        }
        self.redis.run::<i64>(&inv).await.map(|_| ())
    }

    async fn remaining_remote(
        &self,
        key: &str,
        limit: u64,
        period: Duration,
    ) -> Result<(u64, Duration), StateError> {
        let mut inv = self.remaining.prepare_invoke();
        inv.key(self.log_key(key))
            .key(self.amounts_key(key))
            .arg(period_us(period));
        let reply: Vec<i64> = self.redis.run(&inv).await?;
        match reply.as_slice() {
            [-1, _] => Ok((limit, Duration::ZERO)),
            [total, reset_us] => Ok((
                limit.saturating_sub(u64::try_from(*total).unwrap_or(0)),
                Duration::from_micros(u64::try_from(*reset_us).unwrap_or(0)).min(period),
            )),
            _ => Err(StateError::Redis(
                "unexpected reply from the remaining script".into(),
            )),
        }
    }
}

/// A period in whole µs (at least 1, at most [`EXACT`]).
fn period_us(period: Duration) -> u64 {
    u64::try_from(period.as_micros())
        .unwrap_or(EXACT)
        .clamp(1, EXACT)
}

impl Limiter for RedisLimiter {
    fn try_reserve<'a>(
        &'a self,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<Reservation, Refusal>> {
        async move {
            if claims.is_empty() {
                return Ok(Reservation::none());
            }
            if !self.redis.is_available() {
                return self.without_redis(claims);
            }
            match self.reserve_remote(claims).await {
                Ok(decision) => decision,
                Err(StateError::Unavailable) => self.without_redis(claims),
                Err(e) => {
                    tracing::warn!(error = %e, "rate-limit script failed");
                    self.without_redis(claims)
                }
            }
        }
        .boxed()
    }

    fn settle<'a>(&'a self, reservation: Reservation, actual: &'a [u64]) -> BoxFuture<'a, ()> {
        async move {
            if reservation.slots.is_empty() {
                return;
            }
            if !reservation.remote {
                self.fallback.settle_now(reservation, actual);
                return;
            }
            // Unreachable: the estimate stands in Redis until it leaves the window.
            if self.redis.is_available() {
                if let Err(e) = self.settle_remote(&reservation, actual).await {
                    tracing::debug!(error = %e, "settling a shared rate-limit reservation failed");
                }
            }
        }
        .boxed()
    }

    fn remaining<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        period: Duration,
    ) -> BoxFuture<'a, (u64, Duration)> {
        async move {
            if self.redis.is_available() {
                if let Ok(r) = self.remaining_remote(key, limit, period).await {
                    return r;
                }
            }
            self.fallback.remaining_now(key, limit, period)
        }
        .boxed()
    }
}
