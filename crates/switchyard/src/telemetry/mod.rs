//! Metrics and traces: what every request did, as Prometheus metrics (`GET /metrics`)
//! and as OTLP spans.
//!
//! Both are fed from one place, the ledger's record of a finished request
//! ([`crate::ledger::Observer`]): it already holds the outcome, every attempt with its
//! error class, usage and cost, and the times. So nothing on the request path changes
//! shape for telemetry, and an attempt's span is the attempt the ledger counts.
//! Per-request updates are atomic increments on pre-registered families; spans are
//! built when the request ends (with the times the record kept) and handed to the
//! batch exporter's queue, whose thread does the encoding and the sending. Gauges of
//! state that lives elsewhere (breakers, exhaustion, budgets, the ledger's queue) are
//! read at scrape time from a [`Snapshot`] the caller fills.
//!
//! It sits above the ledger, whose record and observer trait it uses, and below
//! dispatch and the ingress, which carry its trace context.

mod metrics;
mod otlp;
mod series;
mod traces;

use std::sync::Arc;

use crate::config::TelemetryConfig;
use crate::ledger::stats::contracts::ContractState;
use crate::ledger::{LedgerStats, Observer, RequestRecord, TraceIds};

pub use metrics::PROMETHEUS_CONTENT_TYPE;

/// The gateway's metrics registry and trace exporter; one per gateway.
pub struct Telemetry {
    metrics: Option<metrics::Metrics>,
    traces: Option<traces::Traces>,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint: cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// One deployment's run-time state, as `GET /admin/health` shows it.
#[derive(Debug, Clone)]
pub struct DeploymentState {
    pub deployment: String,
    pub provider: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// How long the provider said the deployment is out of capacity for, if it is.
    pub exhausted_for_ms: Option<i64>,
    pub calls_in_flight: u32,
}

/// One budget's spend and limit in its current period.
#[derive(Debug, Clone)]
pub struct BudgetState {
    /// `key` or `team`.
    pub scope: &'static str,
    pub id: String,
    pub period: &'static str,
    pub spent_nano_usd: i64,
    pub limit_nano_usd: i64,
}

/// One rate limit or quota window's use.
#[derive(Debug, Clone)]
pub struct LimitState {
    /// `key` or `team` (a caller's rate limit) or `deployment` (a quota).
    pub scope: &'static str,
    pub id: String,
    /// `rpm` or `tpm`.
    pub limit: &'static str,
    pub remaining: u64,
    pub capacity: u64,
}

/// The state read at scrape time from the rest of the gateway.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub deployments: Vec<DeploymentState>,
    pub budgets: Vec<BudgetState>,
    pub limits: Vec<LimitState>,
    /// `None` when the ledger is off.
    pub ledger: Option<LedgerStats>,
    pub ledger_queue_depth: usize,
    /// Each contract's burn in its current period, as the gateway counts it.
    pub contracts: Vec<ContractState>,
}

impl Telemetry {
    /// Starts what `[telemetry]` asks for (the exporter's thread, when traces are on).
    pub fn start(config: &TelemetryConfig) -> Result<Arc<Telemetry>, TelemetryError> {
        let metrics = config.metrics.then(|| metrics::Metrics::new(config));
        let traces = match &config.otlp_endpoint {
            Some(endpoint) => Some(traces::Traces::start(
                endpoint,
                &config.service_name,
                config.sampling_ratio,
                config.export_interval,
            )?),
            None => None,
        };
        Ok(Arc::new(Telemetry { metrics, traces }))
    }

    /// Off: no metrics, no traces.
    pub fn disabled() -> Arc<Telemetry> {
        Arc::new(Telemetry {
            metrics: None,
            traces: None,
        })
    }

    pub fn metrics_enabled(&self) -> bool {
        self.metrics.is_some()
    }

    /// The Prometheus text of every metric, with `snapshot`'s gauges; `None` when
    /// metrics are off.
    pub fn render(&self, snapshot: &Snapshot) -> Option<String> {
        let traces_dropped = self.traces.as_ref().map(traces::Traces::dropped);
        self.metrics
            .as_ref()
            .map(|m| m.render(snapshot, traces_dropped))
    }

    /// Sends the spans still queued and stops the exporter (blocking: call it off the
    /// runtime's workers).
    pub fn shutdown(&self) {
        if let Some(t) = &self.traces {
            t.shutdown();
        }
    }
}

impl Observer for Telemetry {
    fn started(&self) {
        if let Some(m) = &self.metrics {
            m.started();
        }
    }

    fn continue_trace(&self, traceparent: Option<&str>) -> Option<TraceIds> {
        self.traces.as_ref()?.continue_trace(traceparent)
    }

    fn finished(&self, record: &RequestRecord) {
        if let Some(m) = &self.metrics {
            m.finished(record);
        }
        if let (Some(t), Some(ids)) = (&self.traces, record.trace) {
            t.export(record, ids);
        }
    }
}

/// `gen_ai.operation.name` of a ledger endpoint.
fn operation_name(endpoint: &str) -> &'static str {
    match endpoint {
        "embeddings" => "embeddings",
        _ => "chat",
    }
}
