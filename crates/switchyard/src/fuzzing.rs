//! Entry points for the fuzz targets (`fuzz/`) and their regression tests
//! (`tests/fuzz_regressions.rs`): one harness per target, so that a crashing input
//! kept as a file replays exactly what the fuzzer ran. Not part of the gateway's API.
//!
//! Each function takes arbitrary bytes, must never panic, and checks the invariants
//! the gateway relies on (a decoder's output is bounded by its input; a stream split
//! at any point decodes as the whole).

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
    let deployments = deployments();
    let kind = kind % deployments.len();
    let d = &deployments[kind];
    let forwards_upstream_bytes = matches!(
        crate::providers::KINDS[kind],
        "openai" | "azure" | "mistral"
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
    for record in input.split(|&b| b == 0) {
        let Some((&selector, payload)) = record.split_first() else {
            continue;
        };
        sizes = selector;
        let (message_type, name) = EVENTS[usize::from(selector) % EVENTS.len()];
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
    stream(3, &data);
}

/// The request translators: arbitrary bytes parsed as an OpenAI chat request (and,
/// when they are one, as an Anthropic Messages request translated to it), validated
/// as the ingress does, then rendered for every provider, plain and streamed. What
/// renders must be JSON.
pub fn chat(input: &[u8]) {
    if let Ok(req) = parse_body::<ChatRequest>(input) {
        render_all(req);
    }
    if let Ok(req) = parse_body::<crate::api::anthropic::wire::MessagesRequest>(input) {
        if req.validate().is_ok() {
            render_all(crate::api::anthropic::request::to_openai(&req));
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
    let deployments = deployments();
    let kind = kind % deployments.len();
    let d = &deployments[kind];
    let a = adapter(&d.provider.kind);
    if let Ok((body, _)) = a.response(Endpoint::ChatCompletions, d, Bytes::copy_from_slice(input)) {
        // As in `stream`: OpenAI-shaped protocols forward the upstream's body.
        if matches!(
            crate::providers::KINDS[kind],
            "openai" | "azure" | "mistral"
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
}
