//! OTLP traces: one server span per request and one client span per upstream attempt,
//! built from the request's record when it ends, with the ids the request carried
//! (so the `traceparent` sent upstream names the attempt's span), and exported over
//! OTLP/HTTP (protobuf) in batches by a thread of their own.
//!
//! The spans are built straight as OTLP's protobuf messages (the `opentelemetry-proto`
//! types, encoded by prost) rather than through the SDK's tracer and batch processor:
//! every span here is finished when it is made, with times and ids the ledger's record
//! already holds, so the SDK's live-span machinery, its per-span conversion to the wire
//! types and its per-batch regrouping by resource and scope were all cost and no use
//! (about 70,000 instructions a request; see bench/README.md, "Telemetry").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message as _;

use super::{operation_name, TelemetryError};
use crate::ledger::{AttemptRecord, RequestRecord, TraceIds};

/// Spans sent in one export request at most.
const MAX_BATCH: usize = 512;
/// Finished requests waiting for the exporter at most; beyond, their spans are
/// dropped (and counted) rather than held: tracing never slows or grows the gateway.
const QUEUE: usize = 4096;
/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The W3C trace flag `sampled`, as OTLP's span `flags` carry it.
const FLAG_SAMPLED: u32 = 1;

enum Job {
    /// One request's spans: its own and its attempts'.
    Spans(Vec<Span>),
    /// Send what is queued, then stop.
    Stop,
}

pub(super) struct Traces {
    queue: SyncSender<Job>,
    exporter: Mutex<Option<JoinHandle<()>>>,
    sampling_ratio: f64,
    dropped: AtomicU64,
}

/// The one header the propagator reads.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

fn nonzero_u64() -> u64 {
    rand::random::<u64>() | 1
}

impl Traces {
    pub(super) fn start(
        endpoint: &str,
        service_name: &str,
        sampling_ratio: f64,
        export_interval: Duration,
    ) -> Result<Traces, TelemetryError> {
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        let exporter = Exporter {
            endpoint: endpoint.to_owned(),
            resource: Resource {
                attributes: vec![string("service.name", service_name.to_owned())],
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: "switchyard".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..InstrumentationScope::default()
            },
        };
        let handle = std::thread::Builder::new()
            .name("otlp-exporter".to_owned())
            .spawn(move || {
                // The blocking client runs a runtime of its own, which may be neither
                // made nor dropped on one of the gateway's.
                match reqwest::blocking::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                {
                    Ok(client) => exporter.run(&client, jobs, export_interval),
                    Err(e) => tracing::error!(error = %e, "no OTLP exporter: spans are dropped"),
                }
            })
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Ok(Traces {
            queue,
            exporter: Mutex::new(Some(handle)),
            sampling_ratio,
            dropped: AtomicU64::new(0),
        })
    }

    /// Sends what is queued and stops the exporter's thread (blocking).
    pub(super) fn shutdown(&self) {
        let handle = match self.exporter.lock() {
            Ok(mut h) => h.take(),
            Err(_) => None,
        };
        let Some(handle) = handle else { return };
        // A full queue still takes `Stop` once the thread makes room.
        if self.queue.send(Job::Stop).is_err() || handle.join().is_err() {
            tracing::warn!("trace exporter did not shut down cleanly");
        }
    }

    /// Requests whose spans were dropped because the exporter was behind.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A caller's sampled `traceparent` is continued and its unsampled one respected;
    /// without one, a new trace is sampled at `sampling_ratio`.
    pub(super) fn continue_trace(&self, traceparent: Option<&str>) -> Option<TraceIds> {
        if let Some(header) = traceparent {
            let cx = TraceContextPropagator::new().extract(&Traceparent(header));
            let span = cx.span();
            let parent = span.span_context();
            if parent.is_valid() {
                return parent.is_sampled().then(|| TraceIds {
                    trace_id: u128::from_be_bytes(parent.trace_id().to_bytes()),
                    parent_span_id: u64::from_be_bytes(parent.span_id().to_bytes()),
                    span_id: nonzero_u64(),
                });
            }
        }
        let sampled = self.sampling_ratio >= 1.0
            || (self.sampling_ratio > 0.0 && rand::random::<f64>() < self.sampling_ratio);
        sampled.then(|| TraceIds {
            trace_id: rand::random::<u128>() | 1,
            parent_span_id: 0,
            span_id: nonzero_u64(),
        })
    }

    /// The request's span and its attempts' spans, queued for the exporter.
    pub(super) fn export(&self, r: &RequestRecord, ids: TraceIds) {
        let trace_id = ids.trace_id.to_be_bytes();
        let operation = operation_name(r.endpoint);
        let model = r.logical_model.as_deref().unwrap_or("none");
        let start = nanos_at_ms(r.started_at_ms);

        // Few attributes: each is encoded into every export (see bench/README.md,
        // "Telemetry"); what a span lacks, its children or the ledger row (by time
        // and deployment) have.
        let mut attrs = Vec::with_capacity(10);
        attrs.push(string("gen_ai.operation.name", operation.to_owned()));
        attrs.push(string("gen_ai.request.model", model.to_owned()));
        attrs.push(int("gen_ai.usage.input_tokens", r.usage.prompt_tokens));
        attrs.push(int("gen_ai.usage.output_tokens", r.usage.completion_tokens));
        attrs.push(double("switchyard.cost_usd", r.cost_nano_usd as f64 / 1e9));
        if let Some(serving) = r.attempts.last() {
            attrs.push(string(
                "gen_ai.provider.name",
                serving.provider_kind.to_owned(),
            ));
            attrs.push(string(
                "gen_ai.response.model",
                serving.upstream_model.clone(),
            ));
            attrs.push(string("switchyard.deployment", serving.deployment.clone()));
        }
        if let Some(reason) = &r.finish_reason {
            attrs.push(KeyValue {
                key: "gen_ai.response.finish_reasons".to_owned(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::StringValue(reason.clone())),
                        }],
                    })),
                }),
            });
        }
        if let Some(e) = &r.error_code {
            attrs.push(string("error.type", e.clone()));
        }

        let mut spans = Vec::with_capacity(1 + r.attempts.len());
        spans.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: ids.span_id.to_be_bytes().to_vec(),
            parent_span_id: match ids.parent_span_id {
                0 => Vec::new(),
                parent => parent.to_be_bytes().to_vec(),
            },
            flags: FLAG_SAMPLED,
            name: format!("{operation} {model}"),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(nanos_of_us(r.latency_us)),
            attributes: attrs,
            status: r.error_code.as_deref().map(error_status),
            ..Span::default()
        });
        for a in r.attempts.iter().filter(|a| a.span_id != 0) {
            spans.push(attempt_span(a, operation, &trace_id, ids.span_id));
        }
        match self.queue.try_send(Job::Spans(spans)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An upstream call's client span, a child of its request's span.
fn attempt_span(a: &AttemptRecord, operation: &str, trace_id: &[u8], parent: u64) -> Span {
    let start = nanos_at_ms(a.started_at_ms);
    let mut attrs = Vec::with_capacity(9);
    attrs.push(string("gen_ai.operation.name", operation.to_owned()));
    attrs.push(string("gen_ai.provider.name", a.provider_kind.to_owned()));
    attrs.push(string("gen_ai.request.model", a.upstream_model.clone()));
    attrs.push(string("switchyard.deployment", a.deployment.clone()));
    attrs.push(int("gen_ai.usage.input_tokens", a.usage.prompt_tokens));
    attrs.push(int("gen_ai.usage.output_tokens", a.usage.completion_tokens));
    attrs.push(double("switchyard.cost_usd", a.cost_nano_usd as f64 / 1e9));
    if let Some(status) = a.status {
        attrs.push(int("http.response.status_code", u64::from(status)));
    }
    match &a.error_class {
        Some(e) => attrs.push(string("error.type", e.clone())),
        None => attrs.push(string("gen_ai.response.model", a.upstream_model.clone())),
    }
    Span {
        trace_id: trace_id.to_vec(),
        span_id: a.span_id.to_be_bytes().to_vec(),
        parent_span_id: parent.to_be_bytes().to_vec(),
        flags: FLAG_SAMPLED,
        name: format!("{operation} {}", a.upstream_model),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(nanos_of_us(a.latency_us)),
        attributes: attrs,
        status: a.error_class.as_deref().map(error_status),
        ..Span::default()
    }
}

/// The exporter's thread: batches requests' spans and posts them, when a batch is
/// full or the interval has passed, whichever comes first.
struct Exporter {
    endpoint: String,
    resource: Resource,
    scope: InstrumentationScope,
}

impl Exporter {
    fn run(self, client: &reqwest::blocking::Client, jobs: Receiver<Job>, interval: Duration) {
        let mut batch: Vec<Span> = Vec::with_capacity(MAX_BATCH);
        let mut due = Instant::now() + interval;
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(wait) {
                Ok(Job::Spans(spans)) => {
                    batch.extend(spans);
                    if batch.len() >= MAX_BATCH {
                        self.send(client, &mut batch);
                        due = Instant::now() + interval;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.send(client, &mut batch);
                    due = Instant::now() + interval;
                }
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // What was queued before `Stop` has been received; send it all.
                    while let Ok(Job::Spans(spans)) = jobs.try_recv() {
                        batch.extend(spans);
                    }
                    self.send(client, &mut batch);
                    return;
                }
            }
        }
    }

    fn send(&self, client: &reqwest::blocking::Client, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let spans = batch.len();
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans: std::mem::replace(batch, Vec::with_capacity(MAX_BATCH)),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec();
        let result = client
            .post(&self.endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send();
        match result {
            Ok(res) if res.status().is_success() => {}
            Ok(res) => tracing::warn!(status = %res.status(), spans, "OTLP export refused"),
            Err(e) => tracing::warn!(error = %e, spans, "OTLP export failed"),
        }
    }
}

fn string(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

fn int(key: &str, value: u64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(
                i64::try_from(value).unwrap_or(i64::MAX),
            )),
        }),
    }
}

fn double(key: &str, value: f64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(value)),
        }),
    }
}

fn error_status(message: &str) -> Status {
    Status {
        message: message.to_owned(),
        code: status::StatusCode::Error as i32,
    }
}

/// Unix nanoseconds of a Unix millisecond time (0 for one before the epoch).
fn nanos_at_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

fn nanos_of_us(us: i64) -> u64 {
    u64::try_from(us).unwrap_or(0).saturating_mul(1_000)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    fn ids() -> TraceIds {
        TraceIds {
            trace_id: 7,
            parent_span_id: 0,
            span_id: 9,
        }
    }

    /// An exporter stuck on a collector that never answers holds at most `QUEUE`
    /// requests; the rest are dropped and counted, and nothing on the caller's side
    /// waits.
    #[test]
    fn a_stuck_collector_bounds_the_queue_and_counts_what_is_dropped() {
        let collector = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}/v1/traces", collector.local_addr().expect("addr"));
        let traces =
            Traces::start(&endpoint, "test", 1.0, Duration::from_millis(1)).expect("start");
        let record = RequestRecord {
            logical_model: Some("m".to_owned()),
            ..RequestRecord::default()
        };
        traces.export(&record, ids());
        // The first export is under way, and will not finish while the connection is
        // held open without an answer.
        let (mut conn, _) = collector.accept().expect("accept");
        let mut first = [0u8; 1];
        conn.read_exact(&mut first)
            .expect("the export's first byte");
        let extra = 100;
        for _ in 0..QUEUE + extra {
            traces.export(&record, ids());
        }
        assert_eq!(traces.dropped(), extra as u64);
        // Hanging up fails the stuck export; the queue drains and shutdown returns.
        drop(conn);
        drop(collector);
        traces.shutdown();
        assert_eq!(traces.dropped(), extra as u64);
    }
}
