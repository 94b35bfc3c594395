//! The OTLP trace export body, written field by field with prost's wire primitives.
//!
//! A request's spans are encoded once, when the request ends, straight from its record:
//! no message structs, no owned strings, one buffer. Building `opentelemetry-proto`'s
//! structs instead cost an allocation and a free per attribute key and value, and
//! prost's nested length computation walks every attribute once per level of nesting;
//! together about three quarters of what tracing cost per request (see
//! bench/README.md, "Telemetry"). The resource and scope, the same for every export,
//! are still encoded by prost from `opentelemetry-proto`'s types, and the tests decode
//! what is written here with those types.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto` and
//! `common/v1/common.proto`.

use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

/// One attribute's value.
pub(super) enum Attr<'a> {
    Str(&'a str),
    Int(u64),
    Double(f64),
    /// An array holding one string (`gen_ai.response.finish_reasons`).
    OneStr(&'a str),
}

/// A span's own fields (its attributes are passed beside it).
pub(super) struct SpanFields<'a> {
    pub trace_id: [u8; 16],
    pub span_id: u64,
    /// 0: a root span.
    pub parent_span_id: u64,
    /// The name's two words, joined by a space (`chat gpt-4o`).
    pub name: (&'a str, &'a str),
    /// `SpanKind`: 2 server, 3 client.
    pub kind: u64,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// The error, for a span whose status is `ERROR`.
    pub error: Option<&'a str>,
}

pub(super) const KIND_SERVER: u64 = 2;
pub(super) const KIND_CLIENT: u64 = 3;
/// The W3C trace flag `sampled`, as the span's `flags` carry it.
const FLAG_SAMPLED: u32 = 1;
const STATUS_CODE_ERROR: u64 = 2;

fn len_field(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_len_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

/// The encoded length of an `AnyValue` message.
fn any_value_len(value: &Attr) -> usize {
    match value {
        Attr::Str(s) => len_field(s.len()),
        Attr::Int(n) => 1 + encoded_len_varint(clamp(*n)),
        Attr::Double(_) => 1 + 8,
        // AnyValue{array_value: ArrayValue{values: [AnyValue{string_value}]}}
        Attr::OneStr(s) => len_field(len_field(len_field(s.len()))),
    }
}

fn put_any_value(value: &Attr, out: &mut Vec<u8>) {
    match value {
        Attr::Str(s) => put_len_field(1, s.as_bytes(), out),
        Attr::Int(n) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(clamp(*n), out);
        }
        Attr::Double(x) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.put_f64_le(*x);
        }
        Attr::OneStr(s) => {
            let string_value = len_field(s.len());
            let array = len_field(string_value);
            encode_key(5, WireType::LengthDelimited, out);
            encode_varint(array as u64, out);
            encode_key(1, WireType::LengthDelimited, out);
            encode_varint(string_value as u64, out);
            put_len_field(1, s.as_bytes(), out);
        }
    }
}

/// `int64` as protobuf writes it: the two's complement bits, as a varint.
fn clamp(n: u64) -> u64 {
    n.min(i64::MAX as u64)
}

/// Appends one span to `out` as a `ScopeSpans.spans` entry (field 2), ready to be
/// placed in a `ScopeSpans` message. `scratch` is working room, left empty.
pub(super) fn put_span(
    span: &SpanFields,
    attrs: &[(&str, Attr)],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    // The attributes first, as repeated field 9, to know their length.
    scratch.clear();
    for (key, value) in attrs {
        let value_len = any_value_len(value);
        let kv_len = len_field(key.len()) + len_field(value_len);
        encode_key(9, WireType::LengthDelimited, scratch);
        encode_varint(kv_len as u64, scratch);
        put_len_field(1, key.as_bytes(), scratch);
        encode_key(2, WireType::LengthDelimited, scratch);
        encode_varint(value_len as u64, scratch);
        put_any_value(value, scratch);
    }
    let name_len = span.name.0.len() + 1 + span.name.1.len();
    let status_len = span
        .error
        .map(|e| len_field(e.len()) + 1 + encoded_len_varint(STATUS_CODE_ERROR));
    let len = len_field(16)
        + len_field(8)
        + if span.parent_span_id == 0 { 0 } else { len_field(8) }
        + len_field(name_len)
        + 1
        + encoded_len_varint(span.kind)
        + 2 * (1 + 8)
        + scratch.len()
        + status_len.map_or(0, len_field)
        // flags: field 16 takes a two-byte key.
        + 2
        + 4;

    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    put_len_field(1, &span.trace_id, out);
    put_len_field(2, &span.span_id.to_be_bytes(), out);
    if span.parent_span_id != 0 {
        put_len_field(4, &span.parent_span_id.to_be_bytes(), out);
    }
    encode_key(5, WireType::LengthDelimited, out);
    encode_varint(name_len as u64, out);
    out.put_slice(span.name.0.as_bytes());
    out.put_u8(b' ');
    out.put_slice(span.name.1.as_bytes());
    encode_key(6, WireType::Varint, out);
    encode_varint(span.kind, out);
    encode_key(7, WireType::SixtyFourBit, out);
    out.put_u64_le(span.start_unix_nano);
    encode_key(8, WireType::SixtyFourBit, out);
    out.put_u64_le(span.end_unix_nano);
    out.put_slice(scratch);
    if let (Some(error), Some(status_len)) = (span.error, status_len) {
        encode_key(15, WireType::LengthDelimited, out);
        encode_varint(status_len as u64, out);
        put_len_field(2, error.as_bytes(), out);
        encode_key(3, WireType::Varint, out);
        encode_varint(STATUS_CODE_ERROR, out);
    }
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.put_u32_le(FLAG_SAMPLED);
    scratch.clear();
}

/// An `ExportTraceServiceRequest` of one resource and one scope holding `spans`
/// (entries written by [`put_span`]); `resource` and `scope` are encoded messages.
pub(super) fn export_request(resource: &[u8], scope: &[u8], spans: &[u8]) -> Vec<u8> {
    let scope_spans = len_field(scope.len()) + spans.len();
    let resource_spans = len_field(resource.len()) + len_field(scope_spans);
    let mut out = Vec::with_capacity(len_field(resource_spans));
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(resource_spans as u64, &mut out);
    put_len_field(1, resource, &mut out);
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(scope_spans as u64, &mut out);
    put_len_field(1, scope, &mut out);
    out.put_slice(spans);
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span, status, ResourceSpans, ScopeSpans, Span, Status,
    };
    use prost::Message as _;

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    /// What is written here decodes, with the official message types, to exactly the
    /// spans prost would have encoded from them; long values need multi-byte lengths.
    #[test]
    fn spans_decode_with_the_official_types_to_what_was_meant() {
        let resource = Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue("gw".into()),
            )],
            ..Resource::default()
        };
        let scope = InstrumentationScope {
            name: "switchyard".into(),
            version: "1.2.3".into(),
            ..InstrumentationScope::default()
        };
        let long_model = "m".repeat(300);
        let mut spans = Vec::new();
        let mut scratch = Vec::new();
        put_span(
            &SpanFields {
                trace_id: [7; 16],
                span_id: 0x0102_0304_0506_0708,
                parent_span_id: 0,
                name: ("chat", &long_model),
                kind: KIND_SERVER,
                start_unix_nano: 1_700_000_000_000_000_000,
                end_unix_nano: 1_700_000_000_250_000_000,
                error: None,
            },
            &[
                ("gen_ai.request.model", Attr::Str(&long_model)),
                ("gen_ai.usage.input_tokens", Attr::Int(300)),
                ("big", Attr::Int(u64::MAX)),
                ("switchyard.cost_usd", Attr::Double(0.000125)),
                ("gen_ai.response.finish_reasons", Attr::OneStr("stop")),
                ("é", Attr::Str("ünïcödé")),
            ],
            &mut scratch,
            &mut spans,
        );
        put_span(
            &SpanFields {
                trace_id: [7; 16],
                span_id: 9,
                parent_span_id: 0x0102_0304_0506_0708,
                name: ("chat", "gpt"),
                kind: KIND_CLIENT,
                start_unix_nano: 5,
                end_unix_nano: 6,
                error: Some("upstream_5xx"),
            },
            &[("error.type", Attr::Str("upstream_5xx"))],
            &mut scratch,
            &mut spans,
        );
        let body = export_request(&resource.encode_to_vec(), &scope.encode_to_vec(), &spans);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes");
        let expected = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope),
                    spans: vec![
                        Span {
                            trace_id: vec![7; 16],
                            span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                            name: format!("chat {long_model}"),
                            kind: span::SpanKind::Server as i32,
                            start_time_unix_nano: 1_700_000_000_000_000_000,
                            end_time_unix_nano: 1_700_000_000_250_000_000,
                            attributes: vec![
                                kv(
                                    "gen_ai.request.model",
                                    any_value::Value::StringValue(long_model.clone()),
                                ),
                                kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(300)),
                                kv("big", any_value::Value::IntValue(i64::MAX)),
                                kv(
                                    "switchyard.cost_usd",
                                    any_value::Value::DoubleValue(0.000125),
                                ),
                                kv(
                                    "gen_ai.response.finish_reasons",
                                    any_value::Value::ArrayValue(ArrayValue {
                                        values: vec![AnyValue {
                                            value: Some(any_value::Value::StringValue(
                                                "stop".into(),
                                            )),
                                        }],
                                    }),
                                ),
                                kv("é", any_value::Value::StringValue("ünïcödé".into())),
                            ],
                            flags: 1,
                            ..Span::default()
                        },
                        Span {
                            trace_id: vec![7; 16],
                            span_id: 9u64.to_be_bytes().to_vec(),
                            parent_span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                            name: "chat gpt".into(),
                            kind: span::SpanKind::Client as i32,
                            start_time_unix_nano: 5,
                            end_time_unix_nano: 6,
                            attributes: vec![kv(
                                "error.type",
                                any_value::Value::StringValue("upstream_5xx".into()),
                            )],
                            status: Some(Status {
                                message: "upstream_5xx".into(),
                                code: status::StatusCode::Error as i32,
                            }),
                            flags: 1,
                            ..Span::default()
                        },
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(decoded, expected);
        assert!(scratch.is_empty());
    }
}
