//! Switchyard's provider simulator: a deterministic fake of the OpenAI and Azure OpenAI
//! HTTP APIs with per-(instance, model) latency and fault injection and a request recorder.
//!
//! The simulator deliberately shares no code with the gateway crate: it is the independent
//! judge of the wire protocols, so a misreading of a protocol cannot hide on both sides.
//!
//! An *instance* is an optional first path segment before the API path
//! (`http://host/primary/v1/chat/completions` is instance `primary`, no prefix is the default
//! instance `""`), so one process can play a failing primary and a healthy fallback.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use switchyard_sim::{Fault, SimOptions, Simulator};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let handle = Simulator::new(SimOptions::default()).spawn(listener).await?;
//! handle.sim.set_fault("primary", "*", Fault::error(429).times(2));
//! let primary_base = format!("{}/v1", handle.url("primary"));
//! # let _ = primary_base;
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

mod control;
mod generate;
mod openai;
pub mod schema_check;
mod state;

use state::SimState;

/// How the simulator is configured at start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimOptions {
    /// The only API key accepted. `None` accepts any non-empty key.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Faults and latencies installed at start (a reset clears them like any other).
    #[serde(default)]
    pub scenario: Scenario,
}

/// A set of faults and latencies, e.g. loaded from a JSON file by the CLI.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scenario {
    #[serde(default)]
    pub faults: Vec<ScenarioFault>,
    #[serde(default)]
    pub latencies: Vec<ScenarioLatency>,
}

/// One fault of a [`Scenario`]: where it applies plus the flattened [`Fault`] fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioFault {
    /// Instance name; `""` (the default) is the instance without a path prefix.
    #[serde(default)]
    pub instance: String,
    /// Model (or Azure deployment) name; `"*"` (the default) matches every model.
    #[serde(default = "any_model")]
    pub model: String,
    #[serde(flatten)]
    pub fault: Fault,
}

/// One latency of a [`Scenario`]: where it applies plus the flattened [`Latency`] fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioLatency {
    #[serde(default)]
    pub instance: String,
    #[serde(default = "any_model")]
    pub model: String,
    #[serde(flatten)]
    pub latency: Latency,
}

pub(crate) fn any_model() -> String {
    "*".to_string()
}

/// Timing of responses. Streams wait `ttft_ms` before their first event and
/// `chunk_delay_ms` before each later one; a non-streaming answer waits as long as its
/// stream would have (`ttft_ms + chunk_delay_ms × content chunks`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    #[serde(default)]
    pub ttft_ms: u64,
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// How many content chunks a streamed text answer is split into; default one word
    /// (or punctuation mark) per chunk.
    #[serde(default)]
    pub chunks: Option<u32>,
}

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// An HTTP error status with the provider's error body.
    Error,
    /// A pause: before the headers (non-stream) or after the first event (stream).
    Stall,
    /// The body is aborted part-way: the client sees an incomplete transfer.
    Cut,
    /// HTTP 200 whose body (or one SSE `data:` line) is not valid JSON.
    Malformed,
}

/// A fault injected into matching requests (chat completions and embeddings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// For `error`: the HTTP status (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For `error`: sent as the `retry-after` header (default 1 for 429, none otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// For `stall`: how long to pause (default 1000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<u64>,
    /// For `cut` on streams: how many `data:` events are sent before the abort (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_after_chunks: Option<u32>,
    /// Apply to the next N matching requests only; `None` = until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

impl Fault {
    fn of_kind(kind: FaultKind) -> Fault {
        Fault {
            kind,
            status: None,
            retry_after_s: None,
            stall_ms: None,
            cut_after_chunks: None,
            count: None,
        }
    }

    /// An HTTP error with this status.
    pub fn error(status: u16) -> Fault {
        Fault {
            status: Some(status),
            ..Fault::of_kind(FaultKind::Error)
        }
    }

    /// A pause of `ms` milliseconds.
    pub fn stall(ms: u64) -> Fault {
        Fault {
            stall_ms: Some(ms),
            ..Fault::of_kind(FaultKind::Stall)
        }
    }

    /// A stream aborted after `chunks` `data:` events (non-stream: mid-JSON).
    pub fn cut(chunks: u32) -> Fault {
        Fault {
            cut_after_chunks: Some(chunks),
            ..Fault::of_kind(FaultKind::Cut)
        }
    }

    /// A 200 whose body is not valid JSON.
    pub fn malformed() -> Fault {
        Fault::of_kind(FaultKind::Malformed)
    }

    /// Only the next `n` matching requests get this fault.
    pub fn times(mut self, n: u32) -> Fault {
        self.count = Some(n);
        self
    }

    /// Send `retry-after: secs` with the error.
    pub fn retry_after(mut self, secs: u64) -> Fault {
        self.retry_after_s = Some(secs);
        self
    }
}

/// One request as the simulator received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// The full path as received, instance prefix included.
    pub path: String,
    pub query: Option<String>,
    /// Every header, names lower-cased, nothing redacted.
    pub headers: Vec<(String, String)>,
    /// The JSON body; a body that is not JSON is kept as a string, an empty one as null.
    pub body: serde_json::Value,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Shared state behind every clone of a [`Simulator`].
pub(crate) struct Shared {
    pub(crate) opts: SimOptions,
    pub(crate) state: Mutex<SimState>,
    pub(crate) request_counter: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The state lock. A panic while holding it cannot leave the maps half-updated in a
    /// way that matters to a test fake, so a poisoned lock is simply taken over.
    pub(crate) fn state(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The simulator. Cheap to clone; clones share faults, latencies and recordings.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    pub fn new(opts: SimOptions) -> Simulator {
        let mut state = SimState::default();
        state.apply_scenario(&opts.scenario);
        Simulator {
            shared: Arc::new(Shared {
                opts,
                state: Mutex::new(state),
                request_counter: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Every route: the provider APIs (with and without an instance prefix) and `/_sim/…`.
    pub fn router(&self) -> axum::Router {
        control::routes()
            .fallback(openai::dispatch)
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` in a background tokio task. Dropping the handle does not stop
    /// the server; [`SimHandle::shutdown`] does.
    pub async fn spawn(self, listener: tokio::net::TcpListener) -> std::io::Result<SimHandle> {
        let addr = listener.local_addr()?;
        let router = self.router();
        let task = tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(SimHandle {
            addr,
            sim: self,
            task,
        })
    }

    /// Installs `fault` for `instance` (`""` = default) and `model` (`"*"` = every model),
    /// replacing the one there. `count: Some(0)` removes it.
    pub fn set_fault(&self, instance: &str, model: &str, fault: Fault) {
        self.shared.state().set_fault(instance, model, fault);
    }

    /// Installs `latency` for `instance` and `model` (`"*"` = every model).
    pub fn set_latency(&self, instance: &str, model: &str, latency: Latency) {
        self.shared.state().set_latency(instance, model, latency);
    }

    /// Clears all faults and latencies, and the recorded requests.
    pub fn clear(&self) {
        self.shared.state().clear_all();
    }

    /// Clears faults only (all instances).
    pub fn clear_faults(&self) {
        self.shared.state().clear_faults(None);
    }

    /// Clears recorded requests only (all instances).
    pub fn clear_requests(&self) {
        self.shared.state().clear_requests();
    }

    /// The requests recorded for `instance`, oldest first (the last 10,000 at most).
    pub fn requests(&self, instance: &str) -> Vec<RecordedRequest> {
        self.shared.state().requests(instance)
    }
}

/// A running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Simulator,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT` (a wildcard listen address is shown as loopback).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The base URL of `instance`: the base URL itself for `""`, else `base/instance`.
    pub fn url(&self, instance: &str) -> String {
        if instance.is_empty() {
            self.base_url()
        } else {
            format!("{}/{}", self.base_url(), instance)
        }
    }

    /// Stops accepting connections (connections already open may finish).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    /// Waits until the server stops (it normally runs until [`SimHandle::shutdown`]).
    pub async fn join(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
