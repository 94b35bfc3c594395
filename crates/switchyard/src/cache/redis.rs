//! The response cache in Redis, for replicas that share state (`[state]`): one string
//! per answer at `{prefix}cache:{hex of the key}`, written with `SET … PX` so that
//! Redis expires it after the TTL in force when it was stored.
//!
//! The value is a version byte, the TTL it was stored with (milliseconds, big-endian
//! `u64`), then the stored `chat.completion` as the client got it. A lookup reads the
//! value and its remaining `PTTL` in one script, so an entry's age comes from Redis's
//! own clock (stored TTL minus what is left), and a requester whose TTL is shorter than
//! that age misses, as in process.
//!
//! Redis never fails a request here: while the handle marks it unavailable, lookups
//! and stores are skipped (a miss, nothing kept); a call that times out is a miss and
//! the handle logs the transition; an answer that is an error is a miss too, logged
//! once until a call succeeds again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Script;

use super::CacheKey;
use crate::storage::redis::{Redis, StateError};

/// The layout of a stored value; another version is a miss.
const VERSION: u8 = 1;

/// The version byte and the stored TTL.
const HEADER: usize = 9;

/// The value and the milliseconds it has left, or nothing.
const LOOKUP: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
";

pub(crate) struct SharedCache {
    redis: Arc<Redis>,
    lookup: Script,
    /// Set while calls get error answers (not an outage, which the handle reports),
    /// so that they are logged once per transition.
    failing: AtomicBool,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl SharedCache {
    pub(crate) fn new(redis: Arc<Redis>) -> SharedCache {
        SharedCache {
            redis,
            lookup: Script::new(LOOKUP),
            failing: AtomicBool::new(false),
        }
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        let mut rest = String::with_capacity(6 + 64);
        rest.push_str("cache:");
        rest.push_str(&hex::encode(key));
        self.redis.key(&rest)
    }

    pub(crate) async fn get(&self, key: &CacheKey, ttl: Duration) -> Option<Bytes> {
        if !self.redis.is_available() {
            return None;
        }
        let mut inv = self.lookup.prepare_invoke();
        inv.key(self.entry_key(key));
        let reply = self.redis.run::<Option<(Vec<u8>, i64)>>(&inv).await;
        let (value, left_ms) = self.conclude(reply)??;
        decode(value, left_ms, ttl)
    }

    pub(crate) async fn insert(&self, key: &CacheKey, body: &[u8], ttl: Duration) -> bool {
        if !self.redis.is_available() {
            return false;
        }
        let ttl_ms = millis(ttl).max(1);
        let mut value = Vec::with_capacity(HEADER + body.len());
        value.push(VERSION);
        value.extend_from_slice(&ttl_ms.to_be_bytes());
        value.extend_from_slice(body);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.entry_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms);
        let reply = self.redis.query::<()>(&cmd).await;
        self.conclude(reply).is_some()
    }

    /// The reply's value, or `None` (logged once per transition when Redis answered
    /// with an error; an outage is the handle's to report).
    fn conclude<T>(&self, reply: Result<T, StateError>) -> Option<T> {
        match reply {
            Ok(v) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("response cache: Redis answers again");
                }
                Some(v)
            }
            Err(StateError::Redis(e)) => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "response cache: Redis answered with an error; requests are served as misses until it does not");
                }
                None
            }
            Err(_) => None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The stored body, when the value is ours and younger than the requester's `ttl`.
fn decode(value: Vec<u8>, left_ms: i64, ttl: Duration) -> Option<Bytes> {
    let (&version, rest) = value.split_first()?;
    let stored_ttl = u64::from_be_bytes(rest.get(..HEADER - 1)?.try_into().ok()?);
    // Every entry is written with an expiry: one without (-1) or gone (-2) is not ours.
    let left = u64::try_from(left_ms).ok()?;
    if version != VERSION || stored_ttl.saturating_sub(left) >= millis(ttl) {
        return None;
    }
    Some(Bytes::from(value).slice(HEADER..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(ttl_ms: u64, body: &[u8]) -> Vec<u8> {
        let mut v = vec![VERSION];
        v.extend_from_slice(&ttl_ms.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_value_is_read_back_unless_older_than_the_requesters_ttl() {
        let body = b"{\"object\":\"chat.completion\"}";
        let minute = Duration::from_secs(60);
        // Stored for 60 s, 50 s left: 10 s old.
        let got = decode(value(60_000, body), 50_000, minute);
        assert_eq!(got.as_deref(), Some(&body[..]));
        assert_eq!(
            decode(value(60_000, body), 50_000, Duration::from_secs(11)).as_deref(),
            Some(&body[..])
        );
        assert_eq!(
            decode(value(60_000, body), 50_000, Duration::from_secs(10)),
            None
        );
        // No expiry, gone, another version, a short value: misses.
        assert_eq!(decode(value(60_000, body), -1, minute), None);
        assert_eq!(decode(value(60_000, body), -2, minute), None);
        let mut other = value(60_000, body);
        other[0] = 2;
        assert_eq!(decode(other, 50_000, minute), None);
        assert_eq!(decode(vec![VERSION, 0, 0], 50_000, minute), None);
        // An empty body is still a value.
        assert_eq!(
            decode(value(1_000, b""), 900, minute).as_deref(),
            Some(&b""[..])
        );
    }
}
