//! Entry points for the fuzz targets (`fuzz/`) and their regression tests
//! (`tests/fuzz_regressions.rs`): one harness per target, so that a crashing input
//! kept as a file replays exactly what the fuzzer ran. Not part of the gateway's API.
//!
//! Each function takes arbitrary bytes, must never panic, and checks the invariants
//! the gateway relies on (a decoder's output is bounded by its input; a stream split
//! at any point decodes as the whole).
//!
//! Byte-level mutation seldom turns a well-formed document into one whose values
//! have the wrong type, a huge or negative number, or another script's digits, yet
//! that is what broke decoders and parsers before. So the JSON harnesses also run
//! every input that is JSON (or an SSE stream of JSON events) once more with one
//! value swapped for such an odd one ([`retyped`]), chosen by the input itself.

// The `expect`s here are the harness's oracles ("rendered bodies are JSON"): a fuzz
// harness reports a bug by panicking, so these must panic. The two on the fuzzing
// config are on a constant that the regression tests load on every run.
#![allow(clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::api::wire::{parse_body, ChatRequest};
use crate::config::{Config, Deployment};
use crate::providers::sse::SseDecoder;
use crate::providers::{adapter, Endpoint, Translated};

/// One deployment per provider kind, in [`crate::providers::KINDS`] order.
pub fn deployments() -> &'static [Arc<Deployment>] {
    static DEPLOYMENTS: OnceLock<Vec<Arc<Deployment>>> = OnceLock::new();
    DEPLOYMENTS.get_or_init(|| {
        let config = Config::parse(CONFIG, |_| None).expect("the fuzzing config is valid");
        crate::providers::KINDS
            .iter()
            .map(|kind| {
                config
                    .deployments
                    .iter()
                    .find(|d| d.name == format!("d-{kind}"))
                    .cloned()
                    .expect("a deployment per kind")
            })
            .collect()
    })
}

const CONFIG: &str = r#"
[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[providers.azure]
kind = "azure"
endpoint = "http://127.0.0.1:9"
api_key = "azure-key"
[providers.anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:9"
api_key = "sk-ant"
[providers.bedrock]
kind = "bedrock"
base_url = "http://127.0.0.1:9"
region = "us-east-1"
access_key_id = "AKIDFUZZ"
secret_access_key = "fuzz-secret"
[providers.gemini]
kind = "gemini"
base_url = "http://127.0.0.1:9"
api_key = "gemini-key"
[providers.vertex]
kind = "vertex"
base_url = "http://127.0.0.1:9"
project = "p"
location = "us-central1"
api_key = "vertex-token"
[providers.mistral]
kind = "mistral"
base_url = "http://127.0.0.1:9/v1"
api_key = "mistral-key"
[deployments.d-openai]
provider = "openai"
model = "gpt-4o-mini"
[deployments.d-azure]
provider = "azure"
model = "mini"
[deployments.d-anthropic]
provider = "anthropic"
model = "claude-haiku-4-5"
[deployments.d-bedrock]
provider = "bedrock"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
[deployments.d-gemini]
provider = "gemini"
model = "gemini-2.5-flash"
[deployments.d-vertex]
provider = "vertex"
model = "gemini-2.5-pro"
[deployments.d-mistral]
provider = "mistral"
model = "mistral-small-latest"
"#;

/// Splits `data` into chunks whose sizes come from `sizes` (cycled; 0 means 1).
fn chunks<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .map_or(rest.len(), |&s| usize::from(s).max(1))
            .min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// Values that untrusted JSON carries where others are expected: numbers no integer
/// type holds, negative and fractional counts, other scripts' digits (one byte is not
/// one digit), and every JSON type in place of another.
const ODD_VALUES: &[&str] = &[
    "1e300",
    "-1",
    "1.5",
    "99999999999999999999",
    "18446744073709551616",
    "-9223372036854775809",
    r#""١٢٣٤٥٦٧٨٩""#,
    r#""DE1٠12345678901234567""#,
    r#""1e300""#,
    r#""""#,
    "null",
    "true",
    "0",
    "[]",
    "{}",
    r#"[1,"x",null,[],{}]"#,
    r#"{"type":null,"id":[],"index":-1}"#,
];

/// `doc` with its `selector`-th value (depth first, the root included) replaced by
/// one of [`ODD_VALUES`] (also picked by `selector`), or `None` when `doc` is not JSON.
pub fn retyped(doc: &[u8], selector: usize) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    let nodes = count_nodes(&v);
    let mut target = selector % nodes.max(1);
    let odd = ODD_VALUES
        .get((selector / nodes.max(1)) % ODD_VALUES.len())
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or(serde_json::Value::Null);
    replace_node(&mut v, &mut target, odd);
    serde_json::to_vec(&v).ok()
}

fn count_nodes(v: &serde_json::Value) -> usize {
    1 + match v {
        serde_json::Value::Array(items) => items.iter().map(count_nodes).sum(),
        serde_json::Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Replaces the `target`-th node; returns whether it was reached.
fn replace_node(v: &mut serde_json::Value, target: &mut usize, odd: serde_json::Value) -> bool {
    if *target == 0 {
        *v = odd;
        return true;
    }
    *target -= 1;
    let children: Vec<&mut serde_json::Value> = match v {
        serde_json::Value::Array(items) => items.iter_mut().collect(),
        serde_json::Value::Object(o) => o.values_mut().collect(),
        _ => return false,
    };
    let mut odd = Some(odd);
    for child in children {
        let n = count_nodes(child);
        if *target < n {
            return odd
                .take()
                .is_some_and(|odd| replace_node(child, target, odd));
        }
        *target -= n;
    }
    false
}

/// A selector from the input's own bytes, so that the fuzzer steers the swap.
fn selector_of(input: &[u8]) -> usize {
    input.iter().fold(0usize, |acc, &b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(b))
    })
}

/// An SSE stream with the JSON of its `data:` lines retyped (each with its own
/// selector), or `None` when no line was JSON.
fn retyped_stream(data: &[u8], selector: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut any = false;
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if !out.is_empty() {
            out.push(b'\n');
        }
        let json = line
            .strip_prefix(b"data: ")
            .and_then(|j| retyped(j.strip_suffix(b"\r").unwrap_or(j), selector.wrapping_add(i)));
        match json {
            Some(j) => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&j);
                any = true;
            }
            None => out.extend_from_slice(line),
        }
    }
    any.then_some(out)
}

/// The PII detector and redactor on arbitrary text (invalid UTF-8 is read lossily):
/// findings are in order, inside the text and on character boundaries, and a
/// redaction removes every finding's value.
pub fn pii(input: &[u8]) {
    static DETECTOR: OnceLock<crate::governance::pii::PiiDetector> = OnceLock::new();
    let d = DETECTOR.get_or_init(crate::governance::pii::PiiDetector::builtin);
    let text = String::from_utf8_lossy(input);
    let findings = d.find(&text);
    let mut at = 0;
    for f in &findings {
        assert!(at <= f.start && f.start < f.end && f.end <= text.len());
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        at = f.end;
    }
    let mut r = crate::governance::pii::Redactor::new(d);
    assert_eq!(r.redact(&text).is_some(), !findings.is_empty());
}

/// Provider duration headers (`retry-after`, rate-limit resets) and the adapters'
/// error readers that take them, on arbitrary header values: never a panic.
pub fn durations(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = crate::types::time::parse_duration(&text);
    let Ok(value) = http::HeaderValue::from_bytes(input) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, value);
    // Gemini also reads a delay from its error body.
    let body = serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "details": [{"retryDelay": text}]}})
    .to_string();
    for d in deployments() {
        let e = adapter(&d.provider.kind).error(
            http::StatusCode::TOO_MANY_REQUESTS,
            &headers,
            body.as_bytes(),
        );
        if let crate::types::ProviderError::Status {
            retry_after: Some(v),
            ..
        } = e
        {
            let _ = v.to_str().ok().and_then(crate::types::time::parse_duration);
        }
    }
}

/// The SSE decoder: fed in chunks (sizes from the first byte's count of leading
/// bytes), it yields the same events as when fed whole, never more than one per
/// two input bytes.
pub fn sse(input: &[u8]) {
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let (sizes, data) = rest.split_at(usize::from(n % 8).min(rest.len()));
    let whole = sse_events(&[data]);
    let split = sse_events(&chunks(data, sizes));
    assert_eq!(whole, split, "splitting changed the events");
    assert!(whole.len() <= data.len() / 2 + 1, "more events than input");
}

fn sse_events(parts: &[&[u8]]) -> Vec<crate::providers::sse::SseEvent> {
    let mut d = SseDecoder::new();
    let mut events = Vec::new();
    for p in parts {
        d.push(p);
        while let Ok(Some(e)) = d.next_event() {
            events.push(e);
        }
    }
    events
}

/// A provider's stream decoder (`kind` indexes [`crate::providers::KINDS`]) fed
/// arbitrary bytes in arbitrary chunks: no panic, bounded output, and every chunk
/// it emits is a JSON object.
///
/// The OpenAI-shaped protocols (openai, azure, mistral) forward the upstream's chunk
/// bytes after a structural parse, without re-encoding them; serde_json's structural
/// parse lets lone UTF-16 surrogate escapes (`"\ud800"`) through, which its full
/// parse refuses. Such chunks are the upstream's own bytes, unchanged, so they are
/// checked the way the gateway checks them (structure); the native protocols'
/// chunks are built by the gateway and must be strict JSON.
pub fn stream(kind: usize, input: &[u8]) {
    stream_once(kind, input);
    if let Some((&n, rest)) = input.split_first() {
        let (sizes, data) = rest.split_at(usize::from(n % 8).min(rest.len()));
        if let Some(odd) = retyped_stream(data, selector_of(input)) {
            let mut again = vec![n];
            again.extend_from_slice(sizes);
            again.extend_from_slice(&odd);
            stream_once(kind, &again);
        }
    }
}

fn stream_once(kind: usize, input: &[u8]) {
    let deployments = deployments();
    let kind = kind % deployments.len();
    let Some(d) = deployments.get(kind) else {
        return;
    };
    let forwards_upstream_bytes = matches!(
        crate::providers::KINDS.get(kind),
        Some(&("openai" | "azure" | "mistral"))
    );
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let (sizes, data) = rest.split_at(usize::from(n % 8).min(rest.len()));
    let mut decoder = adapter(&d.provider.kind).stream_decoder(d);
    // Items are bounded by the input: a decoder must consume bytes to produce.
    let budget = 64 + data.len() * 8;
    let mut produced = 0;
    'feed: for part in chunks(data, sizes) {
        decoder.push(part);
        loop {
            match decoder.next() {
                Ok(Some(Translated::Chunk { data, .. })) => {
                    if forwards_upstream_bytes {
                        let _: serde::de::IgnoredAny =
                            serde_json::from_slice(&data).expect("chunks are JSON");
                    } else {
                        let v: serde_json::Value =
                            serde_json::from_slice(&data).expect("chunks are JSON");
                        assert!(v.is_object(), "chunks are objects");
                    }
                }
                Ok(Some(Translated::Error(body))) => {
                    let _: serde::de::IgnoredAny =
                        serde_json::from_slice(&body).expect("errors are JSON");
                    break 'feed;
                }
                Ok(Some(Translated::Done)) | Err(_) => break 'feed,
                Ok(None) => break,
            }
            produced += 1;
            assert!(
                produced <= budget,
                "unbounded output from {} bytes",
                data.len()
            );
        }
    }
    let _ = decoder.has_partial();
}

/// Bedrock's stream translation past the frame layer: `input` is records separated
/// by `0x00`, each an event selector byte and a payload, encoded as valid
/// event-stream frames (CRCs and all) and fed to the Bedrock decoder in chunks
/// (sizes from the last record's selector byte).
pub fn bedrock_events(input: &[u8]) {
    bedrock_events_once(input, None);
    bedrock_events_once(input, Some(selector_of(input)));
}

/// `retype`: the selector with which each record's JSON payload is [`retyped`].
fn bedrock_events_once(input: &[u8], retype: Option<usize>) {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    const EVENTS: &[(&str, &str)] = &[
        ("event", "messageStart"),
        ("event", "contentBlockStart"),
        ("event", "contentBlockDelta"),
        ("event", "contentBlockStop"),
        ("event", "messageStop"),
        ("event", "metadata"),
        ("exception", "throttlingException"),
        ("exception", "modelStreamErrorException"),
        ("exception", "validationException"),
        ("exception", "internalServerException"),
        ("exception", "serviceUnavailableException"),
        ("error", "unknownError"),
        ("event", "somethingNew"),
    ];
    let mut frames = Vec::new();
    let mut sizes = 0u8;
    for (i, record) in input.split(|&b| b == 0).enumerate() {
        let Some((&selector, payload)) = record.split_first() else {
            continue;
        };
        let odd = retype.and_then(|r| retyped(payload, r.wrapping_add(i)));
        let payload = odd.as_deref().unwrap_or(payload);
        sizes = selector;
        let Some(&(message_type, name)) = EVENTS.get(usize::from(selector) % EVENTS.len()) else {
            continue;
        };
        let name_header = if message_type == "exception" {
            ":exception-type"
        } else if message_type == "error" {
            ":error-code"
        } else {
            ":event-type"
        };
        let headers = vec![
            Header::new(":message-type", HeaderValue::String(message_type.into())),
            Header::new(name_header, HeaderValue::String(name.into())),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
        ];
        let msg = Message::new_from_parts(headers, payload.to_vec());
        if write_message_to(&msg, &mut frames).is_err() {
            return;
        }
    }
    let mut data = vec![sizes % 8];
    data.extend(std::iter::repeat_n(sizes / 8 + 1, usize::from(sizes % 8)));
    data.extend_from_slice(&frames);
    stream_once(3, &data);
}

/// The request translators: arbitrary bytes parsed as an OpenAI chat request (and,
/// when they are one, as an Anthropic Messages request or a Responses request
/// translated to it, reasoning state taken off its ids as the ingress does), validated
/// as the ingress does, then rendered for every provider, plain and streamed. What
/// renders must be JSON.
pub fn chat(input: &[u8]) {
    chat_once(input);
    if let Some(odd) = retyped(input, selector_of(input)) {
        chat_once(&odd);
    }
}

fn chat_once(input: &[u8]) {
    if let Ok(req) = parse_body::<ChatRequest>(input) {
        render_all(req);
    }
    if let Ok(req) = parse_body::<crate::api::anthropic::wire::MessagesRequest>(input) {
        if req.validate().is_ok() {
            render_all(crate::api::anthropic::request::to_openai(&req));
        }
    }
    if let Ok(req) = parse_body::<crate::api::responses::wire::ResponsesRequest>(input) {
        if req.validate().is_ok() {
            if let Ok(mut chat) = crate::api::responses::request::to_chat(&req, &[]) {
                crate::types::reasoning::extract(&mut chat);
                render_all(chat);
            }
        }
    }
}

fn render_all(req: ChatRequest) {
    if req.validate().is_err() {
        return;
    }
    for d in deployments() {
        for stream in [false, true] {
            let mut r = req.clone();
            if let Ok(body) = adapter(&d.provider.kind).chat_body(&mut r, d, stream) {
                let _: serde_json::Value =
                    serde_json::from_slice(&body).expect("rendered bodies are JSON");
            }
        }
    }
}

/// The response translators: arbitrary bytes as a provider's complete answer
/// (`kind` indexes [`crate::providers::KINDS`]); what translates must be JSON
/// (structurally, for the protocols that forward the upstream's body).
pub fn response(kind: usize, input: &[u8]) {
    response_once(kind, input);
    if let Some(odd) = retyped(input, selector_of(input)) {
        response_once(kind, &odd);
    }
}

fn response_once(kind: usize, input: &[u8]) {
    let deployments = deployments();
    let kind = kind % deployments.len();
    let Some(d) = deployments.get(kind) else {
        return;
    };
    let a = adapter(&d.provider.kind);
    if let Ok((body, _)) = a.response(Endpoint::ChatCompletions, d, Bytes::copy_from_slice(input)) {
        // As in `stream`: OpenAI-shaped protocols forward the upstream's body.
        if matches!(
            crate::providers::KINDS.get(kind),
            Some(&("openai" | "azure" | "mistral"))
        ) {
            let _: serde::de::IgnoredAny =
                serde_json::from_slice(&body).expect("responses are JSON");
        } else {
            let _: serde_json::Value = serde_json::from_slice(&body).expect("responses are JSON");
        }
    }
    let _ = a.error(
        http::StatusCode::TOO_MANY_REQUESTS,
        &http::HeaderMap::new(),
        input,
    );
    // The Responses ingress reads the same bytes as a completion.
    let ids = crate::api::responses::response::ItemIds { suffix: "fuzz" };
    if let Ok((output, _, _)) = crate::api::responses::response::output_of(input, &ids) {
        let _ = serde_json::to_vec(&output).expect("output items are JSON");
    }
}
