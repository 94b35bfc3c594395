//! The Redis connection shared by every concern that keeps run-time state there
//! (limits, budgets, deployment health): one multiplexed connection that reconnects by
//! itself, the key prefix, a timeout on every call, an availability flag, and pub/sub.
//!
//! # Availability
//!
//! The flag starts from a `PING` at start and changes on every call: a call that times
//! out or fails on the connection marks Redis unavailable, an answer available; a
//! watcher also pings every [`WATCH_EVERY`], so an idle replica notices both. Each transition logs one line (lost, restored), whatever the traffic. While
//! Redis is unavailable callers do not send to it at all (they use their in-process
//! fallback, or refuse in `closed` mode), so a hung Redis costs a request nothing after
//! the first timeout.
//!
//! # Scripts
//!
//! Each decision is one Lua script (`redis::Script`), whose SHA-1 is computed once;
//! calls go by `EVALSHA`, and a server that does not know the script yet (a restart, a
//! failover) gets it loaded once and the call repeated. Scripts read the time with
//! `TIME`, so replicas whose clocks disagree still agree on the windows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};
use tokio::sync::{mpsc, watch};

use crate::config::{OnUnavailable, StateConfig};

/// How often Redis is pinged to keep the availability flag true.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Largest pub/sub message accepted; facts are a few dozen bytes, anything larger is
/// not ours.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Redis is unreachable, or did not answer within the timeout.
    #[error("shared state (Redis) is unavailable")]
    Unavailable,
    /// Redis answered with an error (a script error, a wrong type under our prefix).
    #[error("Redis error: {0}")]
    Redis(String),
    /// The URL cannot be used.
    #[error("state.redis_url: {0}")]
    Url(String),
}

/// What the shared state is doing now, for `/readyz` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateStatus {
    /// Redis answers: state is shared by the replicas.
    Shared,
    /// Redis is unreachable and `on_unavailable = "local"`: this replica counts alone.
    Local,
    /// Redis is unreachable and `on_unavailable = "closed"`: requests are refused.
    Unavailable,
}

impl StateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StateStatus::Shared => "shared",
            StateStatus::Local => "local",
            StateStatus::Unavailable => "unavailable",
        }
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The subscription is (again) in place: messages published while it was not are
    /// lost, so the subscriber should read the current facts now.
    Subscribed,
    /// One message's payload.
    Message(String),
}

/// The Redis handle: cheap to share (`Arc`), usable from every layer above storage.
pub struct Redis {
    client: redis::Client,
    manager: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    mode: OnUnavailable,
    available: AtomicBool,
    /// Bumped each time Redis comes back, so subscriptions are renewed even when their
    /// own connection did not notice the outage (a hung server).
    restored: watch::Sender<u64>,
    restorations: AtomicU64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("available", &self.is_available())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects (without failing when Redis is down: the gateway starts, and the mode
    /// decides), pings once, and starts the watcher, which stops with the last `Arc`.
    pub async fn connect(config: &StateConfig) -> Result<Arc<Redis>, StateError> {
        let client = redis::Client::open(config.redis_url.expose())
            // The error text may quote the URL, password included: say only what kind.
            .map_err(|e| StateError::Url(format!("cannot be used ({:?})", e.kind())))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // One quick retry per reconnection: the watcher, not the request, waits.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| StateError::Url(format!("cannot be used ({:?})", e.kind())))?;
        let (restored, _) = watch::channel(0);
        let redis = Arc::new(Redis {
            client,
            manager,
            prefix: Arc::from(config.prefix.as_str()),
            timeout: config.timeout,
            mode: config.on_unavailable,
            // Assumed up until the first ping says otherwise, so that its failure logs.
            available: AtomicBool::new(true),
            restored,
            restorations: AtomicU64::new(0),
        });
        if redis.ping().await.is_ok() {
            tracing::info!(prefix = %redis.prefix, "shared state in Redis");
        }
        tokio::spawn(watch_availability(Arc::downgrade(&redis)));
        Ok(redis)
    }

    /// The prefix of every key and channel.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix` + `rest`.
    pub fn key(&self, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(rest);
        k
    }

    pub fn mode(&self) -> OnUnavailable {
        self.mode
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Whether requests that need shared state must be refused now (`closed` mode
    /// while Redis is unreachable).
    pub fn refuses(&self) -> bool {
        self.mode == OnUnavailable::Closed && !self.is_available()
    }

    pub fn status(&self) -> StateStatus {
        match (self.is_available(), self.mode) {
            (true, _) => StateStatus::Shared,
            (false, OnUnavailable::Local) => StateStatus::Local,
            (false, OnUnavailable::Closed) => StateStatus::Unavailable,
        }
    }

    /// How many times Redis came back after an outage.
    pub fn restorations(&self) -> u64 {
        self.restorations.load(Ordering::Relaxed)
    }

    fn set_available(&self, up: bool) {
        if self.available.swap(up, Ordering::AcqRel) == up {
            return;
        }
        if up {
            let n = self.restorations.fetch_add(1, Ordering::Relaxed) + 1;
            self.restored.send_replace(n);
            tracing::info!(prefix = %self.prefix, "shared state restored: Redis answers again");
        } else {
            match self.mode {
                OnUnavailable::Local => tracing::warn!(
                    prefix = %self.prefix,
                    "shared state lost: Redis is unreachable; this replica counts limits and budgets on its own until it is back"
                ),
                OnUnavailable::Closed => tracing::error!(
                    prefix = %self.prefix,
                    "shared state lost: Redis is unreachable; requests get 503 state_unavailable until it is back"
                ),
            }
        }
    }

    /// Runs a script invocation within the timeout, keeping the availability flag.
    pub async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StateError> {
        let mut con = self.manager.clone();
        let result = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut con)).await;
        self.conclude(result)
    }

    /// Runs one command within the timeout, keeping the availability flag.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StateError> {
        let mut con = self.manager.clone();
        let result = tokio::time::timeout(self.timeout, cmd.query_async(&mut con)).await;
        self.conclude(result)
    }

    fn conclude<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StateError> {
        match result {
            Ok(Ok(v)) => {
                self.set_available(true);
                Ok(v)
            }
            Ok(Err(e)) if is_outage(&e) => {
                self.set_available(false);
                Err(StateError::Unavailable)
            }
            Ok(Err(e)) => Err(StateError::Redis(e.to_string())),
            Err(_) => {
                self.set_available(false);
                Err(StateError::Unavailable)
            }
        }
    }

    pub async fn ping(&self) -> Result<(), StateError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// Subscribes to `channel` (a full name: build it with [`Redis::key`]) until the
    /// receiver is dropped. The subscription has its own connection and renews itself
    /// after an outage, delivering [`Delivery::Subscribed`] each time it is in place.
    /// Messages longer than [`MAX_MESSAGE_BYTES`] or not UTF-8 are dropped; when the
    /// receiver lags by `capacity` messages, newer ones are dropped (and counted in the
    /// log) rather than held.
    pub fn subscribe(
        self: &Arc<Self>,
        channel: String,
        capacity: usize,
    ) -> mpsc::Receiver<Delivery> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(subscription(Arc::downgrade(self), channel, tx));
        rx
    }
}

/// Errors that mean Redis is not there (as opposed to an answer that is an error).
fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

async fn watch_availability(redis: Weak<Redis>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = redis.upgrade() else { return };
        // Also while available: an idle replica notices an outage (and `/readyz` says
        // so) without waiting for a request to pay the timeout. A success marks it
        // available, a failure unavailable, each logging its transition.
        let _ = r.ping().await;
    }
}

async fn subscription(redis: Weak<Redis>, channel: String, tx: mpsc::Sender<Delivery>) {
    let mut dropped = 0u64;
    loop {
        let Some(r) = redis.upgrade() else { return };
        if tx.is_closed() {
            return;
        }
        let client = r.client.clone();
        let timeout = r.timeout;
        let mut restored = r.restored.subscribe();
        drop(r);
        let connected = tokio::time::timeout(timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        if let Ok(Ok(ps)) = connected {
            if tx.send(Delivery::Subscribed).await.is_err() {
                return;
            }
            let mut messages = ps.into_on_message();
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        let bytes = msg.get_payload_bytes();
                        if bytes.len() > MAX_MESSAGE_BYTES {
                            continue;
                        }
                        let Ok(text) = std::str::from_utf8(bytes) else { continue };
                        match tx.try_send(Delivery::Message(text.to_owned())) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                dropped += 1;
                                if dropped.is_power_of_two() {
                                    tracing::warn!(%channel, dropped, "shared state messages dropped: the subscriber lags");
                                }
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                    changed = restored.changed() => {
                        // Redis came back after an outage this connection may not have
                        // seen (a hung server keeps sockets open): subscribe afresh.
                        if changed.is_err() { return; }
                        break;
                    }
                    () = tx.closed() => return,
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}
