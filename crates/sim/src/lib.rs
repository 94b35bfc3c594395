//! Switchyard's provider simulator: a deterministic fake of the providers' HTTP APIs
//! (OpenAI, Azure OpenAI, Anthropic Messages, AWS Bedrock Converse with SigV4, Google
//! Gemini and Vertex AI, Mistral) with per-(instance, model) latency and fault injection
//! and a request recorder.
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

mod anthropic;
mod auth;
mod bedrock;
mod control;
mod conversation;
mod gemini;
mod generate;
mod mistral;
mod openai;
mod plumbing;
mod reasoning;
mod routes;
pub mod schema_check;
mod state;

pub use auth::TokensIssued;
use state::SimState;

/// The AWS access key id Bedrock requests must be signed with unless configured.
pub const DEFAULT_AWS_ACCESS_KEY_ID: &str = "AKIDSIMULATOR";
/// The AWS secret access key Bedrock requests must be signed with unless configured.
pub const DEFAULT_AWS_SECRET_ACCESS_KEY: &str = "sim-secret-key";

/// How the simulator is configured at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimOptions {
    /// The only API key accepted (OpenAI, Azure, Anthropic, Gemini, Mistral; the Vertex
    /// bearer token; a Bedrock API key). `None` accepts any non-empty key.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Faults and latencies installed at start (a reset clears them like any other).
    #[serde(default)]
    pub scenario: Scenario,
    /// The access key id Bedrock requests must be SigV4-signed with.
    #[serde(default = "default_aws_access_key_id")]
    pub aws_access_key_id: String,
    /// The secret key that goes with `aws_access_key_id`.
    #[serde(default = "default_aws_secret_access_key")]
    pub aws_secret_access_key: String,
    /// When set, signed Bedrock requests must carry this `x-amz-security-token`
    /// (temporary credentials); when `None` any token, or none, is accepted.
    #[serde(default)]
    pub aws_session_token: Option<String>,
}

fn default_aws_access_key_id() -> String {
    DEFAULT_AWS_ACCESS_KEY_ID.to_string()
}

fn default_aws_secret_access_key() -> String {
    DEFAULT_AWS_SECRET_ACCESS_KEY.to_string()
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            api_key: None,
            scenario: Scenario::default(),
            aws_access_key_id: default_aws_access_key_id(),
            aws_secret_access_key: default_aws_secret_access_key(),
            aws_session_token: None,
        }
    }
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
    /// For `cut` on streams: how many events are sent before the abort (default 2). For
    /// `error` on a stream of a native protocol (Anthropic, Bedrock, Gemini, Mistral): the
    /// stream starts and this many events come before the error, in-stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_after_chunks: Option<u32>,
    /// Apply to the next N matching requests only; `None` = until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// For `error`: the provider's error type to send instead of the one the status
    /// implies, e.g. `ModelNotReadyException` (Bedrock), `overloaded_error` (Anthropic),
    /// `FAILED_PRECONDITION` (Gemini); OpenAI-shaped errors carry it as `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
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
            error_type: None,
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

    /// Send the provider's error type `name` with the error (see [`Fault::error_type`]).
    pub fn with_type(mut self, name: &str) -> Fault {
        self.error_type = Some(name.to_string());
        self
    }

    /// For an `error` on a stream: send `events` events first, then the error inside
    /// the started stream (HTTP 200) in the provider's in-stream error format.
    pub fn mid_stream(mut self, events: u32) -> Fault {
        self.cut_after_chunks = Some(events);
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
    /// Token endpoints' state: what was issued, to whom, until when.
    pub(crate) auth: Mutex<auth::Authority>,
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
                auth: Mutex::new(auth::Authority::default()),
                request_counter: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Every route: the provider APIs (with and without an instance prefix) and `/_sim/…`.
    pub fn router(&self) -> axum::Router {
        control::routes()
            .merge(auth::routes())
            .fallback(routes::dispatch)
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
