//! Deployment health shared between replicas through Redis.
//!
//! Only two facts travel, both of the form "deployment D is out for the next N ms":
//! - **exhausted**: its provider answered 429 with `retry-after` (or said its
//!   `x-ratelimit-remaining-*` is 0): the other replicas skip it too instead of each
//!   paying a 429 to learn the same thing;
//! - **breaker open**: its breaker opened here: the others open theirs for the same time.
//!
//! Everything else (latency estimates, calls in flight, failure counts, the half-open
//! probe) stays per replica, and the hot path never waits on Redis: a replica acts on
//! its local state, and facts arrive in the background.
//!
//! When a replica learns a fact first-hand, it queues it (never waiting; a full queue
//! drops it). A task runs one script per fact that sets `PREFIX health:KIND:NAME`
//! with `PX` = the duration, unless the key already lives longer, and then publishes
//! `KIND MS REPLICA NAME` on `PREFIX health`. Every replica subscribes; a message from
//! another replica is applied to the local state (`mark_exhausted`, the breaker forced
//! open until the same time). Durations travel rather than instants, so replicas
//! with skewed clocks agree (up to the message's delivery time). Messages published
//! while a replica was not subscribed are not lost for good: each time its
//! subscription is (re)established it reads every deployment's keys and their
//! remaining `PTTL`.
//!
//! Every duration is clamped to [`MAX_FACT_MS`], whatever a provider (a `retry-after`
//! of 1e300) or a message (anyone can publish on the channel) says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::mpsc;

use super::{DeploymentHealth, Health, Registry};
use crate::storage::redis::{Delivery, Redis};

/// The longest a shared fact keeps a deployment out: an hour. A provider that needs
/// longer says so again on the next probe.
pub const MAX_FACT_MS: i64 = 3_600_000;

/// Facts queued for publication before new ones are dropped.
const OUTBOX: usize = 1024;

/// What a fact says of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactKind {
    /// Its provider said it has no capacity.
    Exhausted,
    /// Its breaker opened.
    BreakerOpen,
}

/// A fact this replica learned first-hand, for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub kind: FactKind,
    /// The deployment's name: facts travel by name, so replicas whose configs list
    /// deployments in another order (or reload them) agree.
    pub name: Arc<str>,
    pub for_ms: i64,
}

/// A duration in ms, within 0..=[`MAX_FACT_MS`].
pub fn clamp_ms(ms: i64) -> i64 {
    ms.clamp(0, MAX_FACT_MS)
}

const EXHAUSTED: &str = "exhausted";
const OPEN: &str = "open";

/// KEYS: the fact's key. ARGV: duration (ms), channel, message. Extends the key only
/// when the new duration outlasts it; publishes only then.
const PUBLISH: &str = r#"
local left = redis.call('PTTL', KEYS[1])
if left >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// KEYS: fact keys. Returns each one's `PTTL` (negative: none).
const READ: &str = r#"
local out = {}
for i = 1, #KEYS do out[i] = redis.call('PTTL', KEYS[i]) end
return out
"#;

impl Health {
    /// Starts sharing exhaustion and breaker openings with the other replicas on
    /// `redis`. `names` are the deployments' names by index (the config's order): facts
    /// travel by name, so replicas whose configs list deployments differently agree.
    /// Calling it twice does nothing the second time. The tasks end when the health
    /// table is dropped.
    pub fn share(&self, names: Vec<Arc<str>>, redis: Arc<Redis>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        if self.outbox.set(tx).is_err() {
            return;
        }
        for (h, name) in self.deployments.iter().zip(names) {
            let _ = h.name.set(name);
        }
        let replica = format!("{:016x}", rand::random::<u64>());
        let channel = redis.key("health");
        tokio::spawn(publisher(
            rx,
            redis.clone(),
            channel.clone(),
            replica.clone(),
        ));
        let deliveries = redis.subscribe(channel, OUTBOX);
        tokio::spawn(subscriber(
            deliveries,
            redis,
            Arc::downgrade(&self.registry),
            replica,
        ));
    }
}

fn fact_key(redis: &Redis, kind: &str, name: &str) -> String {
    redis.key(&format!("health:{kind}:{name}"))
}

async fn publisher(
    mut rx: mpsc::Receiver<Fact>,
    redis: Arc<Redis>,
    channel: String,
    replica: String,
) {
    let script = Script::new(PUBLISH);
    while let Some(fact) = rx.recv().await {
        let kind = match fact.kind {
            FactKind::Exhausted => EXHAUSTED,
            FactKind::BreakerOpen => OPEN,
        };
        let (name, for_ms) = (&*fact.name, fact.for_ms);
        if for_ms <= 0 || !redis.is_available() {
            continue;
        }
        let mut inv = script.prepare_invoke();
        inv.key(fact_key(&redis, kind, name))
            .arg(for_ms)
            .arg(&channel)
            .arg(format!("{kind} {for_ms} {replica} {name}"));
        if let Err(e) = redis.run::<i64>(&inv).await {
            tracing::debug!(error = %e, deployment = %name, "cannot share a deployment's health");
        }
    }
}

/// A message as published: `KIND MS REPLICA NAME` (the name last: it may hold spaces).
fn parse(message: &str) -> Option<(&str, i64, &str, &str)> {
    let mut parts = message.splitn(4, ' ');
    let kind = parts.next()?;
    // Hostile input: any number at all, clamped; not a number, ignored.
    let ms = parts.next()?.parse::<f64>().ok().filter(|v| !v.is_nan())?;
    let ms = if ms >= MAX_FACT_MS as f64 {
        MAX_FACT_MS
    } else if ms <= 0.0 {
        0
    } else {
        ms as i64
    };
    let replica = parts.next()?;
    let name = parts.next()?;
    Some((kind, ms, replica, name))
}

fn apply(health: &DeploymentHealth, kind: &str, ms: i64) {
    let ms = clamp_ms(ms);
    if ms == 0 {
        return;
    }
    match kind {
        EXHAUSTED => {
            let until = crate::types::time::now_ms().saturating_add(ms);
            // Not `mark_exhausted`: a fact from elsewhere is not published again.
            health
                .exhausted_until_ms
                .fetch_max(until, std::sync::atomic::Ordering::Relaxed);
        }
        OPEN => {
            let for_ = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            health.breaker().force_open(Instant::now(), for_);
        }
        _ => {}
    }
}

async fn subscriber(
    mut deliveries: mpsc::Receiver<Delivery>,
    redis: Arc<Redis>,
    registry: std::sync::Weak<Registry>,
    replica: String,
) {
    let read = Script::new(READ);
    while let Some(delivery) = deliveries.recv().await {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        // The table in force now (a reload may have replaced it); no lock is held
        // across an await.
        let table: Vec<Arc<DeploymentHealth>> =
            registry.read().unwrap_or_else(|p| p.into_inner()).clone();
        drop(registry);
        let names: Vec<&str> = table.iter().filter_map(|h| h.shared_name()).collect();
        match delivery {
            Delivery::Subscribed => {
                // Whatever was published while we were not listening.
                let mut inv = read.prepare_invoke();
                for name in &names {
                    inv.key(fact_key(&redis, EXHAUSTED, name))
                        .key(fact_key(&redis, OPEN, name));
                }
                if names.is_empty() {
                    continue;
                }
                let Ok(ttls) = redis.run::<Vec<i64>>(&inv).await else {
                    continue;
                };
                let named = table.iter().filter(|h| h.shared_name().is_some());
                for (h, pair) in named.zip(ttls.chunks(2)) {
                    if let Some(&ms) = pair.first() {
                        apply(h, EXHAUSTED, ms);
                    }
                    if let Some(&ms) = pair.get(1) {
                        apply(h, OPEN, ms);
                    }
                }
            }
            Delivery::Message(text) => {
                let Some((kind, ms, from, name)) = parse(&text) else {
                    continue;
                };
                if from == replica {
                    continue;
                }
                if let Some(h) = table.iter().find(|h| h.shared_name() == Some(name)) {
                    apply(h, kind, ms);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_messages_are_clamped_or_ignored() {
        assert_eq!(
            parse("exhausted 1e300 r1 oa mini"),
            Some(("exhausted", MAX_FACT_MS, "r1", "oa mini"))
        );
        assert_eq!(parse("open -5 r1 d"), Some(("open", 0, "r1", "d")));
        assert_eq!(parse("open 250 r1 d"), Some(("open", 250, "r1", "d")));
        assert_eq!(parse("open NaN r1 d"), None);
        assert_eq!(parse("open inf r1 d").map(|p| p.1), Some(MAX_FACT_MS));
        assert_eq!(parse("open 5 r1"), None);
        assert_eq!(parse(""), None);
        assert_eq!(clamp_ms(i64::MAX), MAX_FACT_MS);
        assert_eq!(clamp_ms(i64::MIN), 0);
    }
}
