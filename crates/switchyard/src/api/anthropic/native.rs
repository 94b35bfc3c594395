//! Answers of Anthropic deployments to passed-through requests, kept as the upstream
//! sent them: the body of a message as it is, and each stream event re-framed
//! unchanged (`event:` line and the upstream's own `data:` bytes). Only usage is read,
//! for the ledger.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use crate::api::error::ApiError;
use crate::api::relay::Encoder;
use crate::dispatch::NativeAnswer;
use crate::providers::anthropic::WireUsage;
use crate::providers::sse::SseDecoder;
use crate::providers::{StreamDecoder, Translated};
use crate::types::ProviderError;
use crate::types::Usage;

/// The [`NativeAnswer`] for Anthropic Messages.
pub struct AnthropicNative;

pub static ANTHROPIC_NATIVE: AnthropicNative = AnthropicNative;

#[derive(Deserialize)]
struct MessageSummary {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct EventSummary {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<MessageSummary>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    delta: Option<DeltaSummary>,
}

/// The generated output a `content_block_delta` carries, whichever kind it is.
#[derive(Deserialize)]
struct DeltaSummary {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
}

impl NativeAnswer for AnthropicNative {
    fn usage(&self, body: &[u8]) -> Result<Option<Usage>, ProviderError> {
        let m: MessageSummary = serde_json::from_slice(body)
            .map_err(|e| ProviderError::Protocol(format!("message is not readable: {e}")))?;
        if m.kind != "message" {
            return Err(ProviderError::Protocol(format!(
                "expected a message, got `{}`",
                m.kind
            )));
        }
        Ok(m.usage.map(WireUsage::to_usage))
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(NativeStream {
            sse: SseDecoder::new(),
            usage: WireUsage::default(),
            output_chars: 0,
            has_usage: false,
            final_usage: false,
        })
    }
}

/// Anthropic events as items: each one's bytes re-framed as they came.
///
/// The usage it reports is the upstream's final count once `message_delta` carried
/// it. Before that, `message_start`'s usage has the prompt but only a token or so of
/// output, so the usage reported is an estimate: the output is at least what the
/// deltas so far hold. A stream cut before `message_delta` is billed from that.
struct NativeStream {
    sse: SseDecoder,
    usage: WireUsage,
    /// Characters of generated output (text, tool input JSON, thinking) decoded.
    output_chars: u64,
    /// Whether any event carried usage yet.
    has_usage: bool,
    /// Whether `message_delta` brought the final usage.
    final_usage: bool,
}

impl NativeStream {
    fn usage_so_far(&self) -> Usage {
        let mut usage = self.usage.to_usage();
        if !self.final_usage {
            usage.estimated = true;
            usage.completion_tokens = usage
                .completion_tokens
                .max(crate::limits::text_tokens(self.output_chars));
        }
        usage
    }
}

fn reframe(name: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + data.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\n");
    // A multi-line `data` (joined with `\n` by the decoder) goes out line by line.
    for line in data.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_slice(b"\n");
    }
    out.put_slice(b"\n");
    out.freeze()
}

impl StreamDecoder for NativeStream {
    fn push(&mut self, bytes: &[u8]) {
        self.sse.push(bytes);
    }

    fn next(&mut self) -> Result<Option<Translated>, ProviderError> {
        let Some(event) = self
            .sse
            .next_event()
            .map_err(|_| ProviderError::Protocol("a stream event is too large".into()))?
        else {
            return Ok(None);
        };
        let summary: EventSummary = serde_json::from_slice(&event.data)
            .map_err(|e| ProviderError::Protocol(format!("stream event is not JSON: {e}")))?;
        let mut usage = None;
        let reported = summary.message.and_then(|m| m.usage).or(summary.usage);
        if summary.kind == "message_delta" && reported.is_some() {
            self.final_usage = true;
        }
        if let Some(u) = reported {
            self.has_usage = true;
            self.usage.merge(u);
            usage = Some(self.usage_so_far());
        }
        if let Some(d) = summary
            .delta
            .filter(|_| summary.kind == "content_block_delta")
        {
            let chars = [d.text, d.partial_json, d.thinking]
                .iter()
                .flatten()
                .map(|s| s.chars().count() as u64)
                .sum::<u64>();
            self.output_chars = self.output_chars.saturating_add(chars);
            // Only once a usage is known: before, the relay's own estimate applies.
            if self.has_usage {
                usage = Some(self.usage_so_far());
            }
        }
        Ok(Some(match summary.kind.as_str() {
            // The encoder writes it: its data is always `{"type":"message_stop"}`.
            "message_stop" => Translated::Done,
            "error" => Translated::Error(event.data),
            kind => Translated::Chunk {
                has_choices: kind == "content_block_delta",
                usage,
                data: reframe(kind, &event.data),
            },
        }))
    }

    fn has_partial(&self) -> bool {
        self.sse.has_partial()
    }
}

/// The relay's encoder for a passed-through stream: events go out as they came.
pub struct NativeEvents;

impl Encoder for NativeEvents {
    fn chunk(&mut self, data: &Bytes, _has_choices: bool, _usage: Option<&Usage>) -> Option<Bytes> {
        Some(data.clone())
    }

    fn upstream_error(&mut self, data: &Bytes) -> Bytes {
        reframe("error", data)
    }

    fn done(&mut self) -> Bytes {
        reframe("message_stop", br#"{"type":"message_stop"}"#)
    }

    fn failed(&mut self, error: &ApiError) -> Bytes {
        let data = serde_json::to_vec(&super::error::error_json(error, None)).unwrap_or_default();
        reframe("error", &data)
    }
}
