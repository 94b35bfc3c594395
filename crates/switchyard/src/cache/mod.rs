//! The exact-match response cache: answers to requests that are the same byte for
//! byte once canonicalised, from the same tenant, kept for a TTL and bounded by bytes.
//! The ingress decides what may be cached, renders hits and assembles streamed
//! answers; this module only keys, keeps and expires.
//!
//! Two backends, chosen once at start: in process (moka, bounded by bytes) by default,
//! and Redis ([`redis`]) when `[state]` is configured, so that every replica answers
//! what any one of them stored. One cache per gateway, built with the long-lived
//! services, so that a reload keeps what it holds.

mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::storage::redis::Redis;
use crate::types::ChatRequest;

/// SHA-256 of the scope and the canonical request.
pub type CacheKey = [u8; 32];

/// Bytes an entry costs beyond its body (the key, the expiry bookkeeping), so that
/// many tiny answers cannot exceed the budget by much.
const ENTRY_OVERHEAD: usize = 96;

/// What an entry of `len` body bytes counts against a `max_bytes` budget.
fn weight(len: usize) -> u64 {
    u64::try_from(len.saturating_add(ENTRY_OVERHEAD)).unwrap_or(u64::MAX)
}

/// Whether a body of `len` bytes may be kept under a per-entry budget of `max_bytes`.
pub fn fits(len: usize, max_bytes: u64) -> bool {
    weight(len) <= max_bytes
}

/// Stored answers by key, in this process or in Redis.
pub struct ResponseCache {
    backend: Backend,
}

enum Backend {
    Local(Local),
    Shared(redis::SharedCache),
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Local(l) => f
                .debug_struct("ResponseCache")
                .field("entries", &l.entries.entry_count())
                .field("bytes", &l.entries.weighted_size())
                .finish(),
            Backend::Shared(s) => f.debug_tuple("ResponseCache").field(s).finish(),
        }
    }
}

impl ResponseCache {
    /// An in-process cache holding at most `max_bytes` of answers (least recently used
    /// go first).
    pub fn new(max_bytes: u64) -> ResponseCache {
        ResponseCache {
            backend: Backend::Local(Local::new(max_bytes)),
        }
    }

    /// A cache in Redis, shared by every replica using the same prefix.
    pub fn shared(redis: Arc<Redis>) -> ResponseCache {
        ResponseCache {
            backend: Backend::Shared(redis::SharedCache::new(redis)),
        }
    }

    /// Where answers are kept: `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "memory",
            Backend::Shared(_) => "redis",
        }
    }

    /// The answer stored under `key`, unless it is older than `ttl` (the requester's
    /// TTL, which may be shorter than the one it was stored with). Redis being
    /// unreachable, or answering with an error, is a miss.
    pub async fn get(&self, key: &CacheKey, ttl: Duration) -> Option<Bytes> {
        match &self.backend {
            Backend::Local(l) => l.get(key, ttl),
            Backend::Shared(s) => s.get(key, ttl).await,
        }
    }

    /// Keeps `body` under `key` for `ttl`, unless it would take more than `max_bytes`
    /// (the entry's budget). Returns whether it was kept.
    pub async fn insert(&self, key: CacheKey, body: Bytes, ttl: Duration, max_bytes: u64) -> bool {
        if !fits(body.len(), max_bytes) {
            return false;
        }
        match &self.backend {
            Backend::Local(l) => l.insert(key, body, ttl),
            Backend::Shared(s) => s.insert(&key, &body, ttl).await,
        }
    }
}

#[derive(Clone)]
struct Entry {
    body: Bytes,
    stored: Instant,
    ttl: Duration,
}

/// Each entry expires after its own TTL, the one in force when it was stored.
struct ByTtl;

impl moka::Expiry<CacheKey, Entry> for ByTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The in-process backend: answers by key, bounded by the bytes they hold.
struct Local {
    entries: Cache<CacheKey, Entry>,
}

impl Local {
    fn new(max_bytes: u64) -> Local {
        Local {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, e: &Entry| u32::try_from(weight(e.body.len())).unwrap_or(u32::MAX))
                .expire_after(ByTtl)
                .build(),
        }
    }

    fn get(&self, key: &CacheKey, ttl: Duration) -> Option<Bytes> {
        let e = self.entries.get(key)?;
        (e.stored.elapsed() < ttl.min(e.ttl)).then_some(e.body)
    }

    fn insert(&self, key: CacheKey, body: Bytes, ttl: Duration) -> bool {
        self.entries.insert(
            key,
            Entry {
                body,
                stored: Instant::now(),
                ttl,
            },
        );
        true
    }
}

/// The key of `req` (as admitted: redacted, with the policy's and channel's changes)
/// for `tenant` (a team, or a key without one) under `channel` and logical `model`.
/// How the answer is delivered (`stream`, `stream_options`) and who the end user is
/// (`user`, which providers only log) do not change the answer, so they are left out.
pub fn key_of(tenant: &str, channel: Option<&str>, model: &str, req: &ChatRequest) -> CacheKey {
    let mut doc = serde_json::to_value(req).unwrap_or(Value::Null);
    if let Some(o) = doc.as_object_mut() {
        for field in ["stream", "stream_options", "user"] {
            o.remove(field);
        }
    }
    let mut canonical = Vec::with_capacity(1024);
    write_canonical(&doc, &mut canonical);
    let mut h = Sha256::new();
    // Each part length-prefixed, so that no two different tuples hash alike.
    for part in [
        tenant.as_bytes(),
        channel.unwrap_or_default().as_bytes(),
        model.as_bytes(),
        &canonical,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// JSON with every object's keys sorted, whatever order the map kept them in (a
/// `serde_json` built with `preserve_order` keeps the client's).
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(o) => {
            let mut fields: Vec<(&String, &Value)> = o.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string or a scalar into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ChatRequest {
        serde_json::from_str(json).expect("request")
    }

    #[test]
    fn the_key_ignores_field_order_and_delivery() {
        let a = req(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"seed":1}"#,
        );
        let b = req(
            r#"{"seed":1,"temperature":0,"stream":true,"stream_options":{"include_usage":true},"user":"u1","messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        );
        assert_eq!(key_of("t", None, "m", &a), key_of("t", None, "m", &b));
        // Another tenant, channel, model or message is another key.
        let k = key_of("t", None, "m", &a);
        assert_ne!(k, key_of("u", None, "m", &a));
        assert_ne!(k, key_of("t", Some("voice"), "m", &a));
        assert_ne!(k, key_of("t", None, "n", &a));
        let c = req(
            r#"{"model":"m","messages":[{"role":"user","content":"ho"}],"temperature":0,"seed":1}"#,
        );
        assert_ne!(k, key_of("t", None, "m", &c));
        // Length prefixes: shifting bytes between parts changes the key.
        assert_ne!(key_of("ab", None, "c", &a), key_of("a", None, "bc", &a));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b":[{"z":1,"a":"x"}],"a":null}"#).expect("json");
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        assert_eq!(out, br#"{"a":null,"b":[{"a":"x","z":1}]}"#);
    }

    #[tokio::test]
    async fn entries_expire_and_respect_the_byte_budget() {
        let cache = ResponseCache::new(10_000);
        assert_eq!(cache.kind(), "memory");
        let body = Bytes::from_static(b"{\"choices\":[]}");
        let minute = Duration::from_secs(60);
        assert!(cache.insert([1; 32], body.clone(), minute, 10_000).await);
        assert_eq!(cache.get(&[1; 32], minute).await, Some(body.clone()));
        // A requester with a shorter TTL than the entry's age misses.
        assert_eq!(cache.get(&[1; 32], Duration::ZERO).await, None);
        assert_eq!(cache.get(&[2; 32], minute).await, None);
        // Larger than the entry's budget: not kept.
        assert!(!cache.insert([3; 32], body.clone(), minute, 50).await);
        assert_eq!(cache.get(&[3; 32], minute).await, None);
        assert!(fits(body.len(), weight(body.len())));
        assert!(!fits(body.len(), weight(body.len()) - 1));
        assert!(
            cache
                .insert([4; 32], body, Duration::from_millis(1), 10_000)
                .await
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get(&[4; 32], minute).await, None);
    }
}
