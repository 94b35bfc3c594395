//! OTLP traces: one server span per request and one client span per upstream attempt,
//! built from the request's record when it ends, with the ids the request carried
//! (so the `traceparent` sent upstream names the attempt's span), and exported over
//! OTLP/HTTP (protobuf) in batches by a thread of their own.
//!
//! The spans are encoded straight into OTLP's protobuf ([`super::otlp`]) when the
//! request ends, rather than made through the SDK's tracer and batch processor: every
//! span here is finished when it is made, with times and ids the ledger's record
//! already holds, so the SDK's live-span machinery, its per-span conversion to the
//! wire types and its per-batch regrouping by resource and scope were all cost and no
//! use (see bench/README.md, "Telemetry"). The SDK's propagator still reads the
//! caller's `traceparent`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message as _;

use super::otlp::{self, Attr, SpanFields, KIND_CLIENT, KIND_SERVER};
use super::{operation_name, TelemetryError};
use crate::ledger::{AttemptRecord, RequestRecord, TraceIds};

/// Spans sent in one export request at most.
const MAX_BATCH: usize = 512;
/// Finished requests waiting for the exporter at most; beyond, their spans are
/// dropped (and counted) rather than held: tracing never slows or grows the gateway.
const QUEUE: usize = 4096;
/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

enum Job {
    /// One request's spans, its own and its attempts', encoded ([`otlp::put_span`]),
    /// and how many there are.
    Spans(Vec<u8>, usize),
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
                attributes: vec![KeyValue {
                    key: "service.name".to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service_name.to_owned())),
                    }),
                }],
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
        let finish_reason = r.finish_reason.as_deref();
        let serving = r.attempts.last();

        // Few attributes: each is encoded into every export (see bench/README.md,
        // "Telemetry"); what a span lacks, its children or the ledger row (by time
        // and deployment) have.
        let mut attrs: Vec<(&str, Attr)> = Vec::with_capacity(10);
        attrs.push(("gen_ai.operation.name", Attr::Str(operation)));
        attrs.push(("gen_ai.request.model", Attr::Str(model)));
        attrs.push((
            "gen_ai.usage.input_tokens",
            Attr::Int(r.usage.prompt_tokens),
        ));
        attrs.push((
            "gen_ai.usage.output_tokens",
            Attr::Int(r.usage.completion_tokens),
        ));
        attrs.push((
            "switchyard.cost_usd",
            Attr::Double(r.cost_nano_usd as f64 / 1e9),
        ));
        if let Some(serving) = serving {
            attrs.push(("gen_ai.provider.name", Attr::Str(serving.provider_kind)));
            attrs.push(("gen_ai.response.model", Attr::Str(&serving.upstream_model)));
            attrs.push(("switchyard.deployment", Attr::Str(&serving.deployment)));
        }
        if let Some(reason) = finish_reason {
            attrs.push(("gen_ai.response.finish_reasons", Attr::OneStr(reason)));
        }
        if let Some(e) = &r.error_code {
            attrs.push(("error.type", Attr::Str(e)));
        }

        let mut spans = Vec::with_capacity(512 * (1 + r.attempts.len()));
        let mut scratch = Vec::with_capacity(512);
        otlp::put_span(
            &SpanFields {
                trace_id,
                span_id: ids.span_id,
                parent_span_id: ids.parent_span_id,
                name: (operation, model),
                kind: KIND_SERVER,
                start_unix_nano: start,
                end_unix_nano: start.saturating_add(nanos_of_us(r.latency_us)),
                error: r.error_code.as_deref(),
            },
            &attrs,
            &mut scratch,
            &mut spans,
        );
        let mut count = 1;
        for a in r.attempts.iter().filter(|a| a.span_id != 0) {
            put_attempt_span(
                a,
                operation,
                trace_id,
                ids.span_id,
                &mut scratch,
                &mut spans,
            );
            count += 1;
        }
        match self.queue.try_send(Job::Spans(spans, count)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An upstream call's client span, a child of its request's span.
fn put_attempt_span(
    a: &AttemptRecord,
    operation: &str,
    trace_id: [u8; 16],
    parent: u64,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let start = nanos_at_ms(a.started_at_ms);
    let mut attrs: Vec<(&str, Attr)> = Vec::with_capacity(9);
    attrs.extend([
        ("gen_ai.operation.name", Attr::Str(operation)),
        ("gen_ai.provider.name", Attr::Str(a.provider_kind)),
        ("gen_ai.request.model", Attr::Str(&a.upstream_model)),
        ("switchyard.deployment", Attr::Str(&a.deployment)),
        (
            "gen_ai.usage.input_tokens",
            Attr::Int(a.usage.prompt_tokens),
        ),
        (
            "gen_ai.usage.output_tokens",
            Attr::Int(a.usage.completion_tokens),
        ),
        (
            "switchyard.cost_usd",
            Attr::Double(a.cost_nano_usd as f64 / 1e9),
        ),
    ]);
    if let Some(status) = a.status {
        attrs.push(("http.response.status_code", Attr::Int(u64::from(status))));
    }
    attrs.push(match &a.error_class {
        Some(e) => ("error.type", Attr::Str(e)),
        None => ("gen_ai.response.model", Attr::Str(&a.upstream_model)),
    });
    otlp::put_span(
        &SpanFields {
            trace_id,
            span_id: a.span_id,
            parent_span_id: parent,
            name: (operation, &a.upstream_model),
            kind: KIND_CLIENT,
            start_unix_nano: start,
            end_unix_nano: start.saturating_add(nanos_of_us(a.latency_us)),
            error: a.error_class.as_deref(),
        },
        &attrs,
        scratch,
        out,
    );
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
        let resource = self.resource.encode_to_vec();
        let scope = self.scope.encode_to_vec();
        let send = |batch: &mut Vec<u8>, spans: &mut usize| {
            if *spans > 0 {
                let body = otlp::export_request(&resource, &scope, batch);
                self.send(client, body, *spans);
            }
            batch.clear();
            *spans = 0;
        };
        let mut batch: Vec<u8> = Vec::new();
        let mut spans = 0;
        let mut due = Instant::now() + interval;
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(wait) {
                Ok(Job::Spans(encoded, n)) => {
                    batch.extend_from_slice(&encoded);
                    spans += n;
                    if spans >= MAX_BATCH {
                        send(&mut batch, &mut spans);
                        due = Instant::now() + interval;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    send(&mut batch, &mut spans);
                    due = Instant::now() + interval;
                }
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // What was queued before `Stop` has been received; send it all.
                    while let Ok(Job::Spans(encoded, n)) = jobs.try_recv() {
                        batch.extend_from_slice(&encoded);
                        spans += n;
                    }
                    send(&mut batch, &mut spans);
                    return;
                }
            }
        }
    }

    fn send(&self, client: &reqwest::blocking::Client, body: Vec<u8>, spans: usize) {
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
