//! OTLP traces: one server span per request and one client span per upstream attempt,
//! built from the request's record when it ends, with the ids the request carried
//! (so the `traceparent` sent upstream names the attempt's span), and exported in
//! batches by the SDK's background thread.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use super::{operation_name, TelemetryError};
use crate::ledger::{AttemptRecord, RequestRecord, TraceIds};

pub(super) struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sampling_ratio: f64,
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
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(export_interval)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // Sampling is decided when the request starts (see `continue_trace`);
            // what gets here is exported.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("switchyard");
        Ok(Traces {
            provider,
            tracer,
            sampling_ratio,
        })
    }

    pub(super) fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
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
        let trace_id = TraceId::from_bytes(ids.trace_id.to_be_bytes());
        let parent = if ids.parent_span_id == 0 {
            Context::new()
        } else {
            remote(trace_id, ids.parent_span_id)
        };
        let operation = operation_name(r.endpoint);
        let model = r.logical_model.as_deref().unwrap_or("none");
        let start = at_ms(r.started_at_ms);
        let end = start + micros(r.latency_us);

        // Few attributes: the exporter's conversion and encoding cost grows with each
        // (see bench/README.md, "Telemetry"); what a span lacks, its children or the
        // ledger row (by time and deployment) have.
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.request.model", model.to_owned()),
            KeyValue::new("gen_ai.usage.input_tokens", clamp(r.usage.prompt_tokens)),
            KeyValue::new(
                "gen_ai.usage.output_tokens",
                clamp(r.usage.completion_tokens),
            ),
            KeyValue::new("switchyard.cost_usd", r.cost_nano_usd as f64 / 1e9),
        ];
        if let Some(serving) = r.attempts.last() {
            attrs.push(KeyValue::new("gen_ai.provider.name", serving.provider_kind));
            attrs.push(KeyValue::new(
                "gen_ai.response.model",
                serving.upstream_model.clone(),
            ));
            attrs.push(KeyValue::new(
                "switchyard.deployment",
                serving.deployment.clone(),
            ));
        }
        if let Some(reason) = &r.finish_reason {
            attrs.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(vec![opentelemetry::StringValue::from(reason.clone())].into()),
            ));
        }
        if let Some(e) = &r.error_code {
            attrs.push(KeyValue::new("error.type", e.clone()));
        }
        let mut span = self
            .tracer
            .span_builder(format!("{operation} {model}"))
            .with_kind(SpanKind::Server)
            .with_trace_id(trace_id)
            .with_span_id(SpanId::from_bytes(ids.span_id.to_be_bytes()))
            .with_start_time(start)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        if let Some(e) = &r.error_code {
            span.set_status(Status::error(e.clone()));
        }
        let request_cx = remote(trace_id, ids.span_id);
        for a in &r.attempts {
            self.export_attempt(a, operation, &request_cx, trace_id);
        }
        span.end_with_timestamp(end);
    }

    fn export_attempt(
        &self,
        a: &AttemptRecord,
        operation: &'static str,
        parent: &Context,
        trace_id: TraceId,
    ) {
        if a.span_id == 0 {
            return;
        }
        let start = at_ms(a.started_at_ms);
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.provider.name", a.provider_kind),
            KeyValue::new("gen_ai.request.model", a.upstream_model.clone()),
            KeyValue::new("switchyard.deployment", a.deployment.clone()),
            KeyValue::new("gen_ai.usage.input_tokens", clamp(a.usage.prompt_tokens)),
            KeyValue::new(
                "gen_ai.usage.output_tokens",
                clamp(a.usage.completion_tokens),
            ),
            KeyValue::new("switchyard.cost_usd", a.cost_nano_usd as f64 / 1e9),
        ];
        if let Some(status) = a.status {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        match &a.error_class {
            Some(e) => attrs.push(KeyValue::new("error.type", e.clone())),
            None => attrs.push(KeyValue::new(
                "gen_ai.response.model",
                a.upstream_model.clone(),
            )),
        }
        let mut span = self
            .tracer
            .span_builder(format!("{operation} {}", a.upstream_model))
            .with_kind(SpanKind::Client)
            .with_trace_id(trace_id)
            .with_span_id(SpanId::from_bytes(a.span_id.to_be_bytes()))
            .with_start_time(start)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        if let Some(e) = &a.error_class {
            span.set_status(Status::error(e.clone()));
        }
        span.end_with_timestamp(start + micros(a.latency_us));
    }
}

/// A context whose current span is `span_id` of `trace_id` (the caller's, or the
/// request's for its attempts), so that a span started in it is its child.
fn remote(trace_id: TraceId, span_id: u64) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from_bytes(span_id.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

fn at_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
