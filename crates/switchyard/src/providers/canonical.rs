//! What native translators produce: OpenAI's response, chunk, usage and error
//! shapes (the gateway's canonical form), and the small pieces of request reading
//! every native protocol shares (text of a message, data URLs, tool-call arguments).

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::Translated;
use crate::types::chat::{ChatMessage, ContentPart, MessageContent, Stop};
use crate::types::ProviderError;
use crate::types::Usage;

/// Seconds since the epoch, for `created`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's `usage` object for `u`.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
        "prompt_tokens_details": {
            "cached_tokens": u.cached_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// One OpenAI tool call of a complete message.
pub fn tool_call(id: &str, name: &str, arguments: String) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
}

/// One choice of a complete answer: its text, tool calls and finish reason.
pub struct Choice {
    pub text: Option<String>,
    pub tool_calls: Vec<Value>,
    pub finish_reason: &'static str,
    pub reasoning: Reasoning,
}

/// What a reasoning model showed of its thinking, in the fields OpenAI-compatible
/// clients of gateways read: `reasoning_content` (the text) and `thinking_blocks`
/// (the signed blocks, which must come back verbatim in a tool loop).
#[derive(Debug, Default)]
pub struct Reasoning {
    pub text: String,
    pub blocks: Vec<Value>,
}

/// A complete `chat.completion` body with one choice.
pub fn completion(
    id: &str,
    model: &str,
    text: Option<String>,
    tool_calls: Vec<Value>,
    finish_reason: &'static str,
    usage: &Usage,
) -> Result<Bytes, ProviderError> {
    let choice = Choice {
        text,
        tool_calls,
        finish_reason,
        reasoning: Reasoning::default(),
    };
    completion_choices(id, model, vec![choice], usage)
}

/// A complete `chat.completion` body; choice `i` gets `index: i`.
pub fn completion_choices(
    id: &str,
    model: &str,
    choices: Vec<Choice>,
    usage: &Usage,
) -> Result<Bytes, ProviderError> {
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let mut message = Map::new();
            message.insert("role".into(), json!("assistant"));
            message.insert("content".into(), c.text.map_or(Value::Null, Value::String));
            message.insert("refusal".into(), Value::Null);
            if !c.tool_calls.is_empty() {
                message.insert("tool_calls".into(), Value::Array(c.tool_calls));
            }
            if !c.reasoning.text.is_empty() {
                message.insert("reasoning_content".into(), Value::String(c.reasoning.text));
            }
            if !c.reasoning.blocks.is_empty() {
                message.insert("thinking_blocks".into(), Value::Array(c.reasoning.blocks));
            }
            json!({
                "index": index,
                "message": message,
                "logprobs": null,
                "finish_reason": c.finish_reason,
            })
        })
        .collect();
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "usage": usage_json(usage),
    });
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Protocol(e.to_string()))
}

/// An OpenAI error document, as a stream's error event carries it.
pub fn error_event(kind: &str, code: &str, message: &str) -> Bytes {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    Bytes::from(body.to_string())
}

/// Builds the `chat.completion.chunk` items of one translated stream, and queues them
/// (one native event may become several chunks).
#[derive(Debug, Default)]
pub struct ChunkWriter {
    pub id: String,
    pub model: String,
    created: u64,
    role_sent: bool,
    /// Tool calls started so far; the next one gets this `index`.
    pub tool_calls: usize,
    pub queue: VecDeque<Translated>,
}

impl ChunkWriter {
    pub fn new() -> Self {
        ChunkWriter {
            created: now_secs(),
            ..Self::default()
        }
    }

    fn push_chunk(&mut self, choices: Value, usage: Option<Usage>) {
        let has_choices = choices.as_array().is_some_and(|c| !c.is_empty());
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(u), Some(fields)) = (&usage, body.as_object_mut()) {
            fields.insert("usage".into(), usage_json(u));
        }
        self.queue.push_back(Translated::Chunk {
            data: Bytes::from(body.to_string()),
            has_choices,
            usage,
        });
    }

    fn delta(&mut self, delta: Value, finish_reason: Option<&str>) {
        self.push_chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
        );
    }

    /// The first chunk: the assistant role. Sent once, before anything else.
    pub fn role(&mut self) {
        if !self.role_sent {
            self.role_sent = true;
            self.delta(json!({"role": "assistant", "content": ""}), None);
        }
    }

    pub fn content(&mut self, text: &str) {
        self.role();
        if !text.is_empty() {
            self.delta(json!({"content": text}), None);
        }
    }

    /// Reasoning text, as `reasoning_content` (the field OpenAI-compatible servers
    /// and gateways stream it in).
    pub fn reasoning(&mut self, text: &str) {
        self.role();
        if !text.is_empty() {
            self.delta(json!({"reasoning_content": text}), None);
        }
    }

    /// One complete signed thinking block, as a `thinking_blocks` delta: a client
    /// appends each to the assistant message it sends back.
    pub fn thinking_block(&mut self, block: Value) {
        self.role();
        self.delta(json!({"thinking_blocks": [block]}), None);
    }

    /// Starts a tool call; returns its OpenAI `index`.
    pub fn tool_start(&mut self, id: &str, name: &str, arguments: &str) -> usize {
        self.role();
        let index = self.tool_calls;
        self.tool_calls += 1;
        self.delta(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}}]}),
            None,
        );
        index
    }

    pub fn tool_arguments(&mut self, index: usize, fragment: &str) {
        if !fragment.is_empty() {
            self.delta(
                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                None,
            );
        }
    }

    pub fn finish(&mut self, reason: &str) {
        self.role();
        self.delta(json!({}), Some(reason));
    }

    /// The usage chunk (`choices: []`), then the end of the stream.
    pub fn usage_and_done(&mut self, usage: Usage) {
        self.push_chunk(json!([]), Some(usage));
        self.queue.push_back(Translated::Done);
    }

    pub fn error(&mut self, kind: &str, code: &str, message: &str) {
        self.queue
            .push_back(Translated::Error(error_event(kind, code, message)));
    }
}

/// The text of a message: a string, or its text parts joined.
pub fn text_of(content: Option<&MessageContent>) -> String {
    match content {
        None => String::new(),
        Some(MessageContent::Text(s)) => s.clone(),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join(""),
    }
}

/// The parts of a message's content (a string is one text part).
pub fn parts_of(m: &ChatMessage) -> Vec<ContentPart> {
    match &m.content {
        None => Vec::new(),
        Some(MessageContent::Text(s)) => vec![ContentPart {
            kind: "text".into(),
            text: Some(s.clone()),
            image_url: None,
            extra: Map::new(),
        }],
        Some(MessageContent::Parts(parts)) => parts.clone(),
    }
}

/// `data:<mime>;base64,<data>` → (mime, data).
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((mime, data))
}

/// A tool call's `arguments` string as a JSON object (`{}` when empty or invalid,
/// since native protocols take an object and models sometimes send nothing).
pub fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// The stop sequences of a request.
pub fn stop_sequences(stop: Option<&Stop>) -> Option<Vec<String>> {
    match stop? {
        Stop::One(s) => Some(vec![s.clone()]),
        Stop::Many(v) if v.is_empty() => None,
        Stop::Many(v) => Some(v.clone()),
    }
}

/// The output limit the client set (`max_completion_tokens` wins over `max_tokens`).
pub fn max_output(req: &crate::types::chat::ChatRequest) -> Option<u32> {
    req.max_completion_tokens.or(req.max_tokens)
}

/// Refuses `n > 1`, which the native protocols here cannot honour (Gemini aside).
pub fn single_choice(req: &crate::types::chat::ChatRequest) -> Result<(), ProviderError> {
    match req.n {
        Some(n) if n > 1 => Err(ProviderError::Unsupported(format!(
            "n = {n} (this provider returns one choice)"
        ))),
        _ => Ok(()),
    }
}

pub fn to_body(v: &impl serde::Serialize) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(v).map_err(|e| ProviderError::Protocol(e.to_string()))
}

pub fn protocol(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Protocol(format!("{what}: {e}"))
}

/// Appends a turn's blocks to a native conversation, merging into the last turn when
/// it has the same role: Anthropic, Bedrock and Gemini want roles to alternate, and
/// parallel tool results share one user turn. `key` names the turn's block list
/// (`content`, or Gemini's `parts`).
pub(crate) fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(existing) = last[key].as_array_mut() {
                existing.extend(blocks);
                return;
            }
        }
    }
    let mut turn = Map::new();
    turn.insert("role".into(), Value::from(role));
    turn.insert(key.into(), Value::Array(blocks));
    turns.push(Value::Object(turn));
}

/// Golden fixture tests shared by the native translators: each provider keeps its
/// fixtures in `providers/fixtures/<provider>/`, one JSON file per case, named
/// `request_*` (`{"openai", "model", "stream", "native"}`), `response_*`
/// (`{"native", "openai"}`) or `stream_*` (`{"native", "openai"}`, the stream's
/// items in order: chunks, `{"error_event": …}`, `"[DONE]"`).
#[cfg(test)]
pub mod golden {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::Value;

    use super::super::{StreamDecoder, Translated};
    use crate::config::{
        Capabilities, Deployment, Provider, ProviderKind, Quota, Secret, Timeouts,
    };
    use crate::types::Price;

    pub fn deployment(kind: ProviderKind, model: &str) -> Deployment {
        Deployment {
            index: 0,
            name: "d".into(),
            derived: crate::config::DerivedNames::of("d", "p"),
            upstream: Default::default(),
            reasoning_issuer: crate::config::reasoning_issuer_of(&kind, model),
            provider: Arc::new(Provider {
                name: "p".into(),
                openai_itself: crate::config::is_openai_itself(&kind),
                kind,
                api_key: Some(Secret::new("k-123")),
                credentials: None,
                responses_api: false,
            }),
            upstream_model: model.into(),
            region: None,
            price: Price::default(),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                first_byte: Duration::from_secs(1),
                total: Duration::from_secs(2),
            },
            quota: Quota::default(),
            capabilities: Capabilities {
                tools: true,
                vision: true,
                json_schema: true,
                context_window: None,
                max_output: None,
            },
            data_tags: Vec::new(),
            contract: None,
            effective_price: Price::default(),
        }
    }

    /// Every fixture of `provider` whose name starts with `prefix`, with its name.
    pub fn fixtures(provider: &str, prefix: &str) -> Vec<(String, Value)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/providers/fixtures")
            .join(provider);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("fixture dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_owned();
            if name.starts_with(prefix) && name.ends_with(".json") {
                let text = std::fs::read_to_string(&path).expect("read fixture");
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
                out.push((name, v));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!out.is_empty(), "no {prefix}* fixtures for {provider}");
        out
    }

    /// `created` is the clock; everything else must match exactly.
    pub fn without_created(mut v: Value) -> Value {
        if let Some(o) = v.as_object_mut() {
            o.remove("created");
        }
        v
    }

    pub fn item_json(item: Translated) -> Value {
        match item {
            Translated::Chunk { data, .. } => {
                without_created(serde_json::from_slice(&data).expect("chunk is JSON"))
            }
            Translated::Error(data) => serde_json::json!({
                "error_event": serde_json::from_slice::<Value>(&data).expect("error is JSON")
            }),
            Translated::Done => Value::String("[DONE]".into()),
        }
    }

    /// Feeds `bytes` to a fresh decoder in pieces of `piece` bytes and collects
    /// every item.
    pub fn decode(mut decoder: Box<dyn StreamDecoder>, bytes: &[u8], piece: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            decoder.push(chunk);
            while let Some(item) = decoder.next().expect("decodes") {
                out.push(item_json(item));
            }
        }
        assert!(!decoder.has_partial(), "bytes left over");
        out
    }

    /// Arbitrary bytes never make a decoder panic; they decode or fail cleanly.
    #[test]
    fn decoders_survive_garbage() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let makers: Vec<Box<dyn Fn() -> Box<dyn StreamDecoder>>> = vec![
            Box::new(|| Box::new(super::super::anthropic::AnthropicStream::new())),
            Box::new(|| Box::new(super::super::bedrock::BedrockStream::new("m"))),
            Box::new(|| Box::new(super::super::gemini::GeminiStream::new("m", String::new()))),
            Box::new(|| Box::new(super::super::mistral::MistralStream::new())),
        ];
        let seeds: [&[u8]; 4] = [
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
            b"\x00\x00\x00\x10\x00\x00\x00\x00",
            b"data: {\"candidates\":[{}]}\r\n\r\n{\"error\":{",
            b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{}]}}]}\n\ndata: [DONE]\n\n",
        ];
        for round in 0..300 {
            for (make, seed) in makers.iter().zip(seeds) {
                let mut bytes = seed.to_vec();
                let extra: usize = rng.random_range(0..64);
                for _ in 0..extra {
                    bytes.push(rng.random());
                }
                if round % 2 == 1 {
                    let flips = rng.random_range(1..4);
                    for _ in 0..flips {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] = rng.random();
                    }
                }
                let mut d = make();
                d.push(&bytes);
                for _ in 0..100 {
                    match d.next() {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = d.has_partial();
            }
        }
    }

    /// Decodes whole, then byte by byte and in odd-sized pieces: all must agree.
    pub fn decode_every_way(make: &dyn Fn() -> Box<dyn StreamDecoder>, bytes: &[u8]) -> Vec<Value> {
        let whole = decode(make(), bytes, bytes.len());
        for piece in [1, 7, 64] {
            assert_eq!(decode(make(), bytes, piece), whole, "pieces of {piece}");
        }
        whole
    }
}
