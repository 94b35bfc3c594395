//! OpenAI chunks → Anthropic Messages stream events, as they arrive.
//!
//! The order is Anthropic's: `message_start`, `ping`, then per content block
//! `content_block_start`, its deltas, `content_block_stop`, then `message_delta`
//! (stop reason and usage) and `message_stop`. Blocks get increasing indexes whatever
//! OpenAI's tool-call `index` says: a delta carrying a new tool-call id opens a new
//! block, even when some upstream restarts its index at 0. OpenAI sends the finish
//! reason before the usage chunk, so `message_delta` waits for the end of the stream.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::error::error_json;
use super::response::{stop_reason, usage_json};
use crate::api::error::ApiError;
use crate::api::openai_read::{Chunk, ToolCallDelta};
use crate::api::relay::Encoder;
use crate::types::Usage;

#[derive(Debug, PartialEq, Eq)]
enum Open {
    Text,
    /// A thinking block, open while its `reasoning_content` arrives.
    Thinking,
    /// A tool_use block, with the tool-call id it belongs to.
    Tool(String),
}

/// The Anthropic event encoder for one stream.
pub struct AnthropicEvents {
    id: String,
    model: String,
    started: bool,
    /// The open block and its index.
    open: Option<(u32, Open)>,
    next_index: u32,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
}

fn event(out: &mut BytesMut, name: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

impl AnthropicEvents {
    /// `id` is the message id; `model` the model the client asked for, shown until
    /// the upstream names its own (as the OpenAI ingress shows it).
    pub fn new(id: String, model: String) -> Self {
        AnthropicEvents {
            id,
            model,
            started: false,
            open: None,
            next_index: 0,
            stop_reason: None,
            usage: None,
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        // OpenAI reports the prompt's tokens only at the end; `message_delta` carries them.
        let message = json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        });
        event(out, "message_start", &message);
        event(out, "ping", &json!({"type": "ping"}));
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open(&mut self, out: &mut BytesMut, block: Open, content_block: Value) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        );
        self.open = Some((index, block));
        index
    }

    fn delta(out: &mut BytesMut, index: u32, delta: Value) {
        event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn text(&mut self, out: &mut BytesMut, text: &str) {
        let index = match &self.open {
            Some((index, Open::Text)) => *index,
            _ => self.open(out, Open::Text, json!({"type": "text", "text": ""})),
        };
        Self::delta(out, index, json!({"type": "text_delta", "text": text}));
    }

    fn thinking_text(&mut self, out: &mut BytesMut, text: &str) {
        let index = match &self.open {
            Some((index, Open::Thinking)) => *index,
            _ => self.open(
                out,
                Open::Thinking,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
            ),
        };
        Self::delta(
            out,
            index,
            json!({"type": "thinking_delta", "thinking": text}),
        );
    }

    /// A complete signed block (`thinking_blocks`): it ends the thinking block its
    /// text opened with the signature, or stands as a block of its own.
    fn thinking_block(&mut self, out: &mut BytesMut, block: &Value) {
        match block.get("type").and_then(Value::as_str) {
            Some("thinking") => {
                if !matches!(self.open, Some((_, Open::Thinking))) {
                    let text = block.get("thinking").and_then(Value::as_str).unwrap_or("");
                    self.thinking_text(out, text);
                }
                if let Some((index, Open::Thinking)) = self.open {
                    let signature = block.get("signature").and_then(Value::as_str).unwrap_or("");
                    Self::delta(
                        out,
                        index,
                        json!({"type": "signature_delta", "signature": signature}),
                    );
                }
                self.close(out);
            }
            Some("redacted_thinking") => {
                let data = block.get("data").and_then(Value::as_str).unwrap_or("");
                self.open(
                    out,
                    Open::Thinking,
                    json!({"type": "redacted_thinking", "data": data}),
                );
                self.close(out);
            }
            _ => {}
        }
    }

    fn tool(&mut self, out: &mut BytesMut, call: ToolCallDelta) {
        let (name, arguments) = match call.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let index = match (&self.open, call.id) {
            (Some((index, Open::Tool(open_id))), Some(id)) if *open_id == id => *index,
            (_, Some(id)) => self.open(
                out,
                Open::Tool(id.clone()),
                json!({"type": "tool_use", "id": id, "name": name.unwrap_or_default(), "input": {}}),
            ),
            (Some((index, Open::Tool(_))), None) => *index,
            (_, None) => {
                tracing::warn!("a tool-call delta without an id and no open tool call; dropped");
                return;
            }
        };
        if let Some(args) = arguments.filter(|a| !a.is_empty()) {
            Self::delta(
                out,
                index,
                json!({"type": "input_json_delta", "partial_json": args}),
            );
        }
    }
}

/// Anthropic's error type for an OpenAI error object met inside a stream (a native
/// upstream's own error event comes this way, translated by its adapter).
fn stream_error_type(error: &Value) -> &'static str {
    let kind = error["type"].as_str().unwrap_or_default();
    let code = error["code"].as_str().unwrap_or_default();
    if code.contains("overloaded") || kind.contains("overloaded") {
        "overloaded_error"
    } else if kind == "rate_limit_error" || code.contains("rate_limit") {
        "rate_limit_error"
    } else if kind == "invalid_request_error" {
        "invalid_request_error"
    } else {
        "api_error"
    }
}

impl Encoder for AnthropicEvents {
    fn chunk(&mut self, data: &Bytes, _has_choices: bool, usage: Option<&Usage>) -> Option<Bytes> {
        if let Some(u) = usage {
            self.usage = Some(*u);
        }
        let chunk = Chunk::read(data)?;
        if let Some(model) = chunk.model.filter(|m| !self.started && !m.is_empty()) {
            self.model = model;
        }
        let mut out = BytesMut::new();
        // Anthropic has one answer per request: the first choice.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.start(&mut out);
            let delta = choice.delta.unwrap_or_default();
            if let Some(text) = delta.reasoning_content.filter(|t| !t.is_empty()) {
                self.thinking_text(&mut out, &text);
            }
            for block in delta.thinking_blocks.iter().flatten() {
                self.thinking_block(&mut out, block);
            }
            if let Some(text) = delta.content.or(delta.refusal).filter(|t| !t.is_empty()) {
                self.text(&mut out, &text);
            }
            for call in delta.tool_calls.unwrap_or_default() {
                self.tool(&mut out, call);
            }
            if let Some(reason) = choice.finish_reason {
                self.stop_reason = Some(stop_reason(Some(&reason)));
                self.close(&mut out);
            }
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    fn upstream_error(&mut self, data: &Bytes) -> Bytes {
        let error = serde_json::from_slice::<Value>(data).unwrap_or_default();
        let error = error.get("error").unwrap_or(&Value::Null);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("The upstream reported an error in the stream.");
        let mut out = BytesMut::new();
        event(
            &mut out,
            "error",
            &json!({"type": "error", "error": {"type": stream_error_type(error), "message": message}}),
        );
        out.freeze()
    }

    fn done(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        self.start(&mut out);
        self.close(&mut out);
        let usage = self
            .usage
            .map_or_else(|| json!({"output_tokens": 0}), |u| usage_json(&u));
        event(
            &mut out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage,
            }),
        );
        event(&mut out, "message_stop", &json!({"type": "message_stop"}));
        out.freeze()
    }

    fn failed(&mut self, error: &ApiError) -> Bytes {
        let mut out = BytesMut::new();
        event(&mut out, "error", &error_json(error, None));
        out.freeze()
    }
}
