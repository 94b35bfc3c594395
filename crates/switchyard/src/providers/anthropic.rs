//! Anthropic Messages (`POST /v1/messages`): OpenAI chat requests in, Messages
//! requests out; Messages responses, named-event streams and errors back into
//! OpenAI's shapes.
//!
//! The mapping follows `shared/reference/provider-protocols.md` §3 and §6: system
//! and developer messages are hoisted into `system`; tool results become
//! `tool_result` blocks at the front of one user turn; the stream's block indexes
//! (which count text blocks too) are mapped to OpenAI tool-call indexes.

use std::collections::HashMap;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::canonical::{self, ChunkWriter};
use super::sse::SseDecoder;
use super::{Adapter, Endpoint, StreamDecoder, Translated};
use crate::config::{Deployment, ProviderKind};
use crate::types::chat::{ChatMessage, ChatRequest, EmbeddingsRequest, Role};
use crate::types::reasoning::{self, Carried};
use crate::types::ProviderError;
use crate::types::Usage;

/// Output limit sent when the client sets none: Anthropic requires one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

pub struct AnthropicAdapter;

// ---------------------------------------------------------------- request

/// The thinking budget for OpenAI's `reasoning_effort`, in tokens (Anthropic's
/// minimum is 1,024); `None` for efforts that mean no thinking.
fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16_384),
        "xhigh" => Some(32_768),
        _ => None, // "none", "minimal", anything unknown
    }
}

/// The generation in a Claude model name (`claude-sonnet-4-6` → (4, 6),
/// `claude-3-7-sonnet-20250219` → (3, 7), `anthropic.claude-opus-4-20250514-v1:0` →
/// (4, 0)): the first number after `claude-`, and the next when it is a minor version
/// rather than a date.
pub(crate) fn claude_generation(model: &str) -> Option<(u32, u32)> {
    let lower = model.to_ascii_lowercase();
    let (_, rest) = lower.split_once("claude-")?;
    let mut numbers = rest.split(['-', '@', ':', '.']).filter_map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = numbers.next()?;
    let minor = numbers.next().filter(|n| *n < 100).unwrap_or(0);
    Some((major, minor))
}

/// How a Claude model takes a thinking effort: adaptive thinking with an effort level
/// from generation 4.6 on (the newest refuse a manual budget), a manual token budget
/// before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaudeThinking {
    Adaptive(&'static str),
    Budget(u32),
}

/// OpenAI's `reasoning_effort` in a Claude model's terms; `None` for no thinking.
pub(crate) fn claude_thinking(effort: &str, model: &str) -> Option<ClaudeThinking> {
    let budget = thinking_budget(effort)?;
    if claude_generation(model).is_some_and(|g| g >= (4, 6)) {
        let level = match effort {
            "low" => "low",
            "medium" => "medium",
            _ => "high",
        };
        return Some(ClaudeThinking::Adaptive(level));
    }
    Some(ClaudeThinking::Budget(budget))
}

/// Whether the assistant turn at `index` may carry its thinking blocks to this
/// deployment: blocks are signed by the model that wrote them, so those another
/// deployment issued are dropped; blocks of unknown origin (a client's own history)
/// are sent as they are.
pub(crate) fn own_turn(carried: Option<&Carried>, index: usize, issuer: &str) -> bool {
    carried
        .and_then(|c| c.turn_issuer(index))
        .is_none_or(|t| t == issuer)
}

/// The signed blocks of an assistant message (`thinking_blocks`), as Anthropic
/// content blocks; only the two block types and their documented fields.
fn thinking_blocks(m: &ChatMessage) -> Vec<Value> {
    let Some(Value::Array(blocks)) = m.extra.get("thinking_blocks") else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter_map(|b| match b.get("type").and_then(Value::as_str)? {
            "thinking" => Some(json!({
                "type": "thinking",
                "thinking": b.get("thinking").and_then(Value::as_str).unwrap_or(""),
                "signature": b.get("signature")?.as_str()?,
            })),
            "redacted_thinking" => Some(json!({
                "type": "redacted_thinking",
                "data": b.get("data")?.as_str()?,
            })),
            _ => None,
        })
        .collect()
}

/// Whether the request continues a tool loop: it ends with the results of the last
/// assistant turn's calls. Returns that turn's index.
fn continued_turn(req: &ChatRequest) -> Option<usize> {
    let last = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)?;
    let calls = req.messages.get(last)?.tool_calls.as_ref()?;
    let after = req.messages.get(last + 1..)?;
    (!calls.is_empty() && !after.is_empty() && after.iter().all(|m| m.role == Role::Tool))
        .then_some(last)
}

/// The thinking a Claude `model` gets for `req`, on Anthropic's API and on Bedrock
/// alike: its `reasoning_effort` in the model's terms, but none with a forced tool
/// (refused together), and none for a tool loop continued without the turn's own
/// signed blocks (`kept` holds the assistant turns whose blocks go along): a loop begun
/// on another deployment goes on without thinking rather than fail.
pub(crate) fn thinking_for(
    req: &ChatRequest,
    model: &str,
    kept: &std::collections::HashSet<usize>,
) -> Option<ClaudeThinking> {
    let forced_tool = matches!(&req.tool_choice, Some(Value::Object(_)))
        || req.tool_choice.as_ref().and_then(Value::as_str) == Some("required");
    if forced_tool {
        return None;
    }
    let effort = req.extra.get("reasoning_effort").and_then(Value::as_str)?;
    let thinking = claude_thinking(effort, model)?;
    continued_turn(req)
        .is_none_or(|turn| kept.contains(&turn))
        .then_some(thinking)
}

/// The Messages request body for `req` at `deployment`.
pub fn request_body(
    req: &ChatRequest,
    deployment: &Deployment,
    stream: bool,
) -> Result<Value, ProviderError> {
    canonical::single_choice(req)?;
    let issuer = super::issuer_of(deployment).unwrap_or_default();
    let carried = req.carried.as_deref();
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut kept_thinking = std::collections::HashSet::new();
    for (index, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => system.push(canonical::text_of(m.content.as_ref())),
            Role::User => canonical::push_turn(&mut messages, "user", "content", user_blocks(m)?),
            Role::Assistant => {
                let mut blocks = if own_turn(carried, index, issuer) {
                    thinking_blocks(m)
                } else {
                    Vec::new()
                };
                if !blocks.is_empty() {
                    kept_thinking.insert(index);
                }
                blocks.extend(assistant_blocks(m));
                canonical::push_turn(&mut messages, "assistant", "content", blocks)
            }
            Role::Tool => {
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": canonical::text_of(m.content.as_ref()),
                });
                canonical::push_turn(&mut messages, "user", "content", vec![block]);
            }
            Role::Function => {
                return Err(ProviderError::Unsupported(
                    "the deprecated `function` role".into(),
                ))
            }
        }
    }
    let thinking = thinking_for(req, &deployment.upstream_model, &kept_thinking);
    let budget = match thinking {
        Some(ClaudeThinking::Budget(b)) => Some(b),
        _ => None,
    };
    let output = canonical::max_output(req).unwrap_or(DEFAULT_MAX_TOKENS);
    let mut body = Map::new();
    body.insert("model".into(), json!(deployment.upstream_model));
    // `max_tokens` counts the thinking too and must exceed its budget.
    body.insert(
        "max_tokens".into(),
        json!(output.saturating_add(budget.unwrap_or(0))),
    );
    let mut output_config = Map::new();
    match thinking {
        Some(ClaudeThinking::Budget(b)) => {
            body.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": b}),
            );
        }
        Some(ClaudeThinking::Adaptive(level)) => {
            body.insert("thinking".into(), json!({"type": "adaptive"}));
            output_config.insert("effort".into(), json!(level));
        }
        None => {}
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(stop) = canonical::stop_sequences(req.stop.as_ref()) {
        body.insert("stop_sequences".into(), json!(stop));
    }
    // Thinking takes neither a temperature nor a narrowed top_p.
    if let Some(t) = req.extra.get("temperature").and_then(Value::as_f64) {
        if thinking.is_none() {
            // OpenAI allows 0–2, Anthropic 0–1.
            body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
    }
    if let Some(p) = req.extra.get("top_p").filter(|_| thinking.is_none()) {
        body.insert("top_p".into(), p.clone());
    }
    if let Some(user) = req.extra.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.function.as_ref())
            .map(|f| {
                let mut tool = json!({
                    "name": f.name,
                    "input_schema": f.parameters.clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let (Some(d), Some(fields)) = (&f.description, tool.as_object_mut()) {
                    fields.insert("description".into(), json!(d));
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let no_parallel = req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let mut choice = match &req.tool_choice {
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| json!({"type": "tool", "name": name})),
        _ => None,
    };
    if no_parallel && has_tools {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = json!(true);
        }
    }
    if let Some(c) = choice.filter(|_| has_tools) {
        body.insert("tool_choice".into(), c);
    }
    if let Some(rf) = &req.response_format {
        let schema = match rf.kind.as_str() {
            "json_schema" => Some(
                rf.json_schema
                    .as_ref()
                    .and_then(|s| s.extra.get("schema").cloned())
                    .unwrap_or_else(|| json!({"type": "object"})),
            ),
            // JSON mode only promises an object; a schema that says so is the
            // closest native equivalent.
            "json_object" => Some(json!({"type": "object"})),
            _ => None,
        };
        if let Some(schema) = schema {
            output_config.insert(
                "format".into(),
                json!({"type": "json_schema", "schema": schema}),
            );
        }
    }
    if !output_config.is_empty() {
        body.insert("output_config".into(), Value::Object(output_config));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

fn user_blocks(m: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = Vec::new();
    for part in canonical::parts_of(m) {
        match part.kind.as_str() {
            "text" => {
                let text = part.text.unwrap_or_default();
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
            }
            "image_url" => {
                let Some(image) = part.image_url else {
                    continue;
                };
                let source = match canonical::data_url(&image.url) {
                    Some((mime, data)) => {
                        json!({"type": "base64", "media_type": mime, "data": data})
                    }
                    None => json!({"type": "url", "url": image.url}),
                };
                blocks.push(json!({"type": "image", "source": source}));
            }
            other => {
                return Err(ProviderError::Unsupported(format!(
                    "content parts of type `{other}`"
                )))
            }
        }
    }
    Ok(blocks)
}

fn assistant_blocks(m: &ChatMessage) -> Vec<Value> {
    let mut blocks = Vec::new();
    let text = canonical::text_of(m.content.as_ref());
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in m.tool_calls.iter().flatten() {
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.function.name,
            "input": canonical::arguments_object(&call.function.arguments),
        }));
    }
    blocks
}

// ---------------------------------------------------------------- response

/// Anthropic's usage object; also read by the `/v1/messages` pass-through path.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Later counts (a stream's `message_delta`) replace earlier ones field by field.
    pub(crate) fn merge(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    pub(crate) fn to_usage(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            // `input_tokens` leaves the cached parts out; OpenAI's prompt includes them.
            // Counts come from the upstream: a huge one saturates rather than overflows.
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: 0,
            estimated: false,
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

impl WireBlock {
    /// A thinking or redacted-thinking block as a `thinking_blocks` entry.
    fn as_thinking_block(&self) -> Option<Value> {
        match self.kind.as_str() {
            "thinking" => Some(json!({
                "type": "thinking",
                "thinking": self.thinking.as_deref().unwrap_or(""),
                "signature": self.signature.as_deref().unwrap_or(""),
            })),
            "redacted_thinking" => Some(json!({
                "type": "redacted_thinking",
                "data": self.data.as_deref().unwrap_or(""),
            })),
            _ => None,
        }
    }
}

/// A tool call id as the client sees it: after thinking, it names the deployment
/// whose signatures the turn's blocks carry (see `types::reasoning`).
fn call_id(id: &str, issuer: &str, thought: bool) -> String {
    if thought && !issuer.is_empty() {
        reasoning::encode_call_id(id, issuer, None)
    } else {
        id.to_owned()
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// A Messages response → an OpenAI `chat.completion` body and its usage. Thinking
/// becomes `reasoning_content` and `thinking_blocks`; `issuer` is the deployment's
/// tag for the tool-call ids of a turn that thought.
pub fn translate_response(body: &[u8], issuer: &str) -> Result<(Bytes, Usage), ProviderError> {
    let msg: WireMessage =
        serde_json::from_slice(body).map_err(|e| canonical::protocol("message", e))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thought = canonical::Reasoning::default();
    for block in &msg.content {
        if let Some(b) = block.as_thinking_block() {
            thought
                .text
                .push_str(block.thinking.as_deref().unwrap_or(""));
            thought.blocks.push(b);
        }
    }
    let signed = !thought.blocks.is_empty();
    for block in &msg.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => calls.push(canonical::tool_call(
                &call_id(block.id.as_deref().unwrap_or(""), issuer, signed),
                block.name.as_deref().unwrap_or(""),
                block
                    .input
                    .as_ref()
                    .map_or_else(|| "{}".into(), Value::to_string),
            )),
            _ => {} // server-tool blocks have no OpenAI equivalent
        }
    }
    let usage = msg.usage.to_usage();
    let has_text = !text.is_empty() || calls.is_empty();
    let choice = canonical::Choice {
        text: has_text.then_some(text),
        tool_calls: calls,
        finish_reason: finish_reason(msg.stop_reason.as_deref()),
        reasoning: thought,
    };
    let body = canonical::completion_choices(&msg.id, &msg.model, vec![choice], &usage)?;
    Ok((body, usage))
}

// ---------------------------------------------------------------- stream

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: Delta,
    },
    ContentBlockStop {
        #[serde(default)]
        index: usize,
    },
    MessageDelta {
        delta: MessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: WireError,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: String },
    #[serde(rename = "signature_delta")]
    Signature { signature: String },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// Translates one Anthropic stream into OpenAI chunks.
pub struct AnthropicStream {
    sse: SseDecoder,
    out: ChunkWriter,
    usage: WireUsage,
    /// Content-block index → OpenAI tool-call index.
    tools: HashMap<usize, usize>,
    finished: bool,
    /// The thinking block being streamed: its index, text and signature, sent whole
    /// as a `thinking_blocks` delta when it stops (its text went out as
    /// `reasoning_content` deltas meanwhile). Bounded by the thinking budget.
    thinking: Option<(usize, String, String)>,
    /// Whether this turn thought (its tool-call ids then name the issuer).
    thought: bool,
    issuer: String,
}

impl AnthropicStream {
    pub fn new() -> Self {
        Self::for_issuer(String::new())
    }

    /// A stream whose tool-call ids after thinking carry `issuer`.
    pub fn for_issuer(issuer: String) -> Self {
        AnthropicStream {
            sse: SseDecoder::new(),
            out: ChunkWriter::new(),
            usage: WireUsage::default(),
            tools: HashMap::new(),
            finished: false,
            thinking: None,
            thought: false,
            issuer,
        }
    }

    fn on_event(&mut self, data: &[u8]) -> Result<(), ProviderError> {
        let event: Event =
            serde_json::from_slice(data).map_err(|e| canonical::protocol("stream event", e))?;
        match event {
            Event::MessageStart { message } => {
                self.out.id = message.id;
                self.out.model = message.model;
                self.usage.merge(message.usage);
                self.out.role();
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block.kind.as_str() {
                "tool_use" => {
                    let id = call_id(
                        content_block.id.as_deref().unwrap_or(""),
                        &self.issuer,
                        self.thought,
                    );
                    let tool =
                        self.out
                            .tool_start(&id, content_block.name.as_deref().unwrap_or(""), "");
                    self.tools.insert(index, tool);
                }
                "thinking" => {
                    self.thought = true;
                    let text = content_block.thinking.unwrap_or_default();
                    self.out.reasoning(&text);
                    let signature = content_block.signature.unwrap_or_default();
                    self.thinking = Some((index, text, signature));
                }
                "redacted_thinking" => {
                    self.thought = true;
                    if let Some(block) = content_block.as_thinking_block() {
                        self.out.thinking_block(block);
                    }
                }
                "text" => {
                    if let Some(t) = content_block.text.as_deref() {
                        self.out.content(t);
                    }
                }
                _ => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                Delta::Text { text } => self.out.content(&text),
                Delta::InputJson { partial_json } => {
                    if let Some(&tool) = self.tools.get(&index) {
                        self.out.tool_arguments(tool, &partial_json);
                    }
                }
                Delta::Thinking { thinking } => {
                    self.out.reasoning(&thinking);
                    if let Some((_, text, _)) = self.thinking.as_mut() {
                        text.push_str(&thinking);
                    }
                }
                Delta::Signature { signature } => {
                    if let Some((_, _, sig)) = self.thinking.as_mut() {
                        sig.push_str(&signature);
                    }
                }
                Delta::Other => {}
            },
            Event::ContentBlockStop { index } => {
                if let Some((at, text, signature)) = self.thinking.take() {
                    if at == index {
                        self.out.thinking_block(json!({
                            "type": "thinking", "thinking": text, "signature": signature,
                        }));
                    } else {
                        self.thinking = Some((at, text, signature));
                    }
                }
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.merge(u);
                }
                self.out.finish(finish_reason(delta.stop_reason.as_deref()));
                self.finished = true;
            }
            Event::MessageStop {} => {
                if !self.finished {
                    self.out.finish("stop");
                }
                self.out.usage_and_done(self.usage.to_usage());
            }
            Event::Error { error } => {
                let (kind, code) = stream_error_kind(&error.kind);
                self.out.error(kind, code, &error.message);
            }
            Event::Ping {} | Event::Unknown => {}
        }
        Ok(())
    }
}

impl Default for AnthropicStream {
    fn default() -> Self {
        Self::new()
    }
}

fn stream_error_kind(anthropic_type: &str) -> (&'static str, &'static str) {
    match anthropic_type {
        "overloaded_error" => ("server_error", "upstream_overloaded"),
        "rate_limit_error" => ("rate_limit_error", "rate_limit_exceeded"),
        "invalid_request_error" => ("invalid_request_error", "upstream_rejected"),
        _ => ("server_error", "upstream_error"),
    }
}

impl StreamDecoder for AnthropicStream {
    fn push(&mut self, bytes: &[u8]) {
        self.sse.push(bytes);
    }

    fn next(&mut self) -> Result<Option<Translated>, ProviderError> {
        loop {
            if let Some(item) = self.out.queue.pop_front() {
                return Ok(Some(item));
            }
            match self.sse.next_event() {
                Ok(Some(event)) => self.on_event(&event.data)?,
                Ok(None) => return Ok(None),
                Err(e) => return Err(ProviderError::Protocol(e.to_string())),
            }
        }
    }

    fn has_partial(&self) -> bool {
        self.sse.has_partial()
    }
}

// ---------------------------------------------------------------- errors

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: WireError,
}

/// An Anthropic error answer. 529 (overloaded, for everyone) becomes 503, which the
/// gateway retries elsewhere and reports as overloaded.
pub fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let error = serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    // `not_found_error`: no such model (or path) at this endpoint.
    let message = (!error.message.is_empty()).then_some(error.message);
    if error.kind == "not_found_error" {
        return ProviderError::misconfigured(status, message.as_deref());
    }
    if let Some(e) = ProviderError::misconfigured_status(status, message.as_deref()) {
        return e;
    }
    let status = if status.as_u16() == 529 || error.kind == "overloaded_error" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    };
    ProviderError::Status {
        status,
        retry_after: headers.get(RETRY_AFTER).cloned(),
        message,
        param: None,
    }
}

// ---------------------------------------------------------------- count_tokens

/// `POST /v1/messages/count_tokens` on an Anthropic deployment's provider, with
/// `body` (a Messages body whose `model` is the deployment's) as it is.
pub fn count_tokens_request(
    client: &super::upstream::Client,
    deployment: &Deployment,
    body: Bytes,
) -> Result<super::upstream::RequestBuilder, ProviderError> {
    post(client, deployment, "/v1/messages/count_tokens", body).ok_or_else(|| {
        ProviderError::Unsupported("token counting (not an Anthropic provider)".into())
    })
}

/// A JSON `POST` of `body` to `path` on the deployment's Anthropic API, with its version
/// and key headers; `None` when the deployment's provider is not Anthropic.
fn post(
    client: &super::upstream::Client,
    deployment: &Deployment,
    path: &str,
    body: Bytes,
) -> Option<super::upstream::RequestBuilder> {
    let ProviderKind::Anthropic { base_url, version } = &deployment.provider.kind else {
        return None;
    };
    let mut req = client
        .post(format!("{base_url}{path}"))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("anthropic-version", version.as_str())
        .body(body);
    if let Some(key) = &deployment.provider.api_key {
        req = req.header("x-api-key", key.expose());
    }
    Some(req)
}

/// The `input_tokens` of a count_tokens answer (`{"input_tokens": N}`).
pub fn counted_tokens(body: &[u8]) -> Result<u64, ProviderError> {
    #[derive(Deserialize)]
    struct Counted {
        input_tokens: u64,
    }
    serde_json::from_slice::<Counted>(body)
        .map(|c| c.input_tokens)
        .map_err(|e| ProviderError::Protocol(format!("unreadable token count: {e}")))
}

// ---------------------------------------------------------------- adapter

impl Adapter for AnthropicAdapter {
    fn chat_body(
        &self,
        req: &mut ChatRequest,
        deployment: &Deployment,
        stream: bool,
    ) -> Result<Vec<u8>, ProviderError> {
        canonical::to_body(&request_body(req, deployment, stream)?)
    }

    fn embeddings_body(
        &self,
        _req: &mut EmbeddingsRequest,
        _deployment: &Deployment,
    ) -> Result<Vec<u8>, ProviderError> {
        Err(ProviderError::Unsupported(
            "embeddings (Anthropic has no embeddings API)".into(),
        ))
    }

    fn request(
        &self,
        client: &super::upstream::Client,
        deployment: &Deployment,
        _endpoint: Endpoint,
        _stream: bool,
        body: Bytes,
        _credential: Option<&super::auth::Credential>,
    ) -> Result<super::upstream::RequestBuilder, ProviderError> {
        post(client, deployment, "/v1/messages", body)
            .ok_or_else(|| ProviderError::Unsupported("not an Anthropic provider".into()))
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        status_error(status, headers, body)
    }

    fn response(
        &self,
        _endpoint: Endpoint,
        deployment: &Deployment,
        body: Bytes,
    ) -> Result<(Bytes, Option<Usage>), ProviderError> {
        let issuer = super::issuer_of(deployment).unwrap_or_default();
        let (body, usage) = translate_response(&body, issuer)?;
        Ok((body, Some(usage)))
    }

    fn is_stream(&self, headers: &HeaderMap) -> bool {
        super::openai::OpenAiAdapter.is_stream(headers)
    }

    fn stream_decoder(&self, deployment: &Deployment) -> Box<dyn StreamDecoder> {
        Box::new(AnthropicStream::for_issuer(
            super::issuer_of(deployment).unwrap_or_default().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::canonical::golden;

    fn deployment(model: &str) -> Deployment {
        golden::deployment(
            ProviderKind::Anthropic {
                base_url: "http://h".into(),
                version: "2023-06-01".into(),
            },
            model,
        )
    }

    #[test]
    fn golden_requests() {
        for (name, case) in golden::fixtures("anthropic", "request_") {
            let req: ChatRequest =
                serde_json::from_value(case["openai"].clone()).expect("openai request");
            let d = deployment(case["model"].as_str().expect("model"));
            let stream = case["stream"].as_bool().unwrap_or(false);
            let native = request_body(&req, &d, stream).expect("translates");
            assert_eq!(native, case["native"], "{name}");
        }
    }

    #[test]
    fn golden_responses() {
        for (name, case) in golden::fixtures("anthropic", "response_") {
            let body = serde_json::to_vec(&case["native"]).expect("bytes");
            let (out, usage) = translate_response(&body, "").expect("translates");
            let out: Value = serde_json::from_slice(&out).expect("json");
            assert_eq!(golden::without_created(out), case["openai"], "{name}");
            assert_eq!(
                usage.prompt_tokens, case["openai"]["usage"]["prompt_tokens"],
                "{name}"
            );
        }
    }

    #[test]
    fn golden_streams() {
        for (name, case) in golden::fixtures("anthropic", "stream_") {
            let sse = case["native"].as_str().expect("native SSE text");
            let items =
                golden::decode_every_way(&|| Box::new(AnthropicStream::new()), sse.as_bytes());
            assert_eq!(Value::Array(items), case["openai"], "{name}");
        }
    }

    #[test]
    fn unknown_models_and_redirects_are_misconfigurations() {
        let h = HeaderMap::new();
        let cases = [
            ("not_found_error", status_error(StatusCode::NOT_FOUND, &h, br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}"#)),
            ("redirect", status_error(StatusCode::TEMPORARY_REDIRECT, &h, b"")),
        ];
        for (what, e) in &cases {
            assert_eq!(e.class(), "misconfigured", "{what}: {e:?}");
            assert!(e.retryable(), "{what}: another deployment may serve it");
            assert!(!e.may_pass(), "{what}: no second round");
        }
    }

    #[test]
    fn errors_map_status_and_retryability() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        let overloaded = status_error(
            StatusCode::from_u16(529).expect("529"),
            &h,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        match &overloaded {
            ProviderError::Status {
                status,
                retry_after,
                message,
                ..
            } => {
                assert_eq!(status.as_u16(), 503);
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"3"[..]));
                assert_eq!(message.as_deref(), Some("Overloaded"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(overloaded.retryable());
        assert_eq!(overloaded.class(), "overloaded");
        let limited = status_error(StatusCode::TOO_MANY_REQUESTS, &h, b"{}");
        assert!(limited.retryable());
        assert_eq!(limited.class(), "rate_limited");
        let bad = status_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
        );
        assert!(!bad.retryable());
        assert!(
            matches!(bad, ProviderError::Status { message: Some(m), .. } if m.contains("max_tokens"))
        );
    }

    #[test]
    fn request_carries_key_and_version_headers() {
        let client = crate::providers::upstream::test_client();
        let req = AnthropicAdapter
            .request(
                &client,
                &deployment("m"),
                Endpoint::ChatCompletions,
                false,
                Bytes::new(),
                None,
            )
            .expect("request")
            .build()
            .expect("built");
        assert_eq!(req.uri().to_string(), "http://h/v1/messages");
        assert_eq!(req.headers()["x-api-key"], "k-123");
        assert_eq!(req.headers()["anthropic-version"], "2023-06-01");
    }

    #[test]
    fn n_above_one_is_unsupported() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2
        }))
        .expect("request");
        assert!(matches!(
            request_body(&req, &deployment("m"), false),
            Err(ProviderError::Unsupported(_))
        ));
    }

    fn thinking_answer() -> Vec<u8> {
        serde_json::to_vec(
            &json!({"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-x", "stop_reason": "tool_use",
            "content": [
                {"type": "thinking", "thinking": "Look it up.", "signature": "SIG-1"},
                {"type": "redacted_thinking", "data": "REDACTED"},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ],
            "usage": {"input_tokens": 10, "output_tokens": 20}}),
        )
        .expect("json")
    }

    fn follow_up(message: &Value, effort: Option<&str>, tool_choice: Option<Value>) -> ChatRequest {
        let id = message["tool_calls"][0]["id"].clone();
        let mut body = json!({"model": "m", "max_tokens": 500, "temperature": 0.2, "messages": [
            {"role": "user", "content": "weather?"},
            message,
            {"role": "tool", "tool_call_id": id, "content": "sunny"}
        ], "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]});
        if let Some(e) = effort {
            body["reasoning_effort"] = json!(e);
        }
        if let Some(c) = tool_choice {
            body["tool_choice"] = c;
        }
        let mut req: ChatRequest = serde_json::from_value(body).expect("request");
        reasoning::extract(&mut req);
        req
    }

    #[test]
    fn thinking_is_shown_and_goes_back_signed_to_its_model_only() {
        let d = deployment("claude-x");
        let issuer = super::super::issuer_of(&d).expect("issuer");
        let (out, _) = translate_response(&thinking_answer(), issuer).expect("translates");
        let out: Value = serde_json::from_slice(&out).expect("json");
        let message = out["choices"][0]["message"].clone();
        assert_eq!(message["reasoning_content"], "Look it up.");
        assert_eq!(
            message["thinking_blocks"],
            json!([{"type": "thinking", "thinking": "Look it up.", "signature": "SIG-1"},
                   {"type": "redacted_thinking", "data": "REDACTED"}])
        );
        let id = message["tool_calls"][0]["id"].as_str().expect("id");
        assert_eq!(
            reasoning::decode_call_id(id),
            Some(("toolu_1", issuer, None))
        );

        // The same deployment: blocks first in the assistant turn, verbatim; plain ids;
        // thinking on with a budget inside max_tokens and no temperature.
        let req = follow_up(&message, Some("medium"), None);
        let body = request_body(&req, &d, false).expect("renders");
        let turn = &body["messages"][1]["content"];
        assert_eq!(
            turn[0],
            json!({"type": "thinking", "thinking": "Look it up.", "signature": "SIG-1"})
        );
        assert_eq!(
            turn[1],
            json!({"type": "redacted_thinking", "data": "REDACTED"})
        );
        assert_eq!(turn[2]["id"], "toolu_1");
        assert_eq!(body["messages"][2]["content"][0]["tool_use_id"], "toolu_1");
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 4096})
        );
        assert_eq!(body["max_tokens"], 500 + 4096);
        assert!(body.get("temperature").is_none());

        // Another model: its signatures would be refused, so the blocks stay out, and
        // the loop continues without thinking rather than fail for want of them.
        let other = deployment("claude-y");
        let body = request_body(&req, &other, false).expect("renders");
        let turn = &body["messages"][1]["content"];
        assert_eq!(turn[0]["type"], "tool_use");
        assert!(body.get("thinking").is_none());
        assert!(!body.to_string().contains("SIG-1"));
        assert_eq!(body["max_tokens"], 500);

        // A forced tool never goes with thinking.
        let forced = follow_up(&message, Some("high"), Some(json!("required")));
        let body = request_body(&forced, &d, false).expect("renders");
        assert!(body.get("thinking").is_none());
        assert_eq!(body["tool_choice"]["type"], "any");
    }

    #[test]
    fn claude_generations_and_their_thinking() {
        assert_eq!(claude_generation("claude-sonnet-4-6"), Some((4, 6)));
        assert_eq!(
            claude_generation("claude-3-7-sonnet-20250219"),
            Some((3, 7))
        );
        assert_eq!(
            claude_generation("anthropic.claude-opus-4-20250514-v1:0"),
            Some((4, 0))
        );
        assert_eq!(claude_generation("claude-haiku-4-5@20251001"), Some((4, 5)));
        assert_eq!(claude_generation("gpt-4o"), None);
        assert_eq!(
            claude_thinking("low", "claude-opus-4-7"),
            Some(ClaudeThinking::Adaptive("low"))
        );
        assert_eq!(
            claude_thinking("high", "claude-sonnet-4-5"),
            Some(ClaudeThinking::Budget(16_384))
        );
        assert_eq!(claude_thinking("minimal", "claude-opus-4-7"), None);
        // Adaptive thinking and a JSON schema share `output_config`.
        let req: ChatRequest = serde_json::from_value(json!({"model": "m",
            "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "medium",
            "response_format": {"type": "json_object"}}))
        .expect("request");
        let body = request_body(&req, &deployment("claude-opus-4-7"), false).expect("renders");
        assert_eq!(body["thinking"], json!({"type": "adaptive"}));
        assert_eq!(body["output_config"]["effort"], "medium");
        assert_eq!(body["output_config"]["format"]["type"], "json_schema");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn wrong_types_and_huge_numbers_are_ignored_not_fatal() {
        assert_eq!(
            claude_generation("claude-opus-99999999999999999999-1"),
            Some((1, 0))
        );
        assert_eq!(claude_generation("claude-sonnet-٤-٦"), None);
        let d = deployment("claude-sonnet-4-5");
        // A number for the effort, blocks that are not blocks, fields of the wrong type.
        let req: ChatRequest = serde_json::from_value(json!({"model": "m",
        "reasoning_effort": 3,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok", "thinking_blocks": [
                "text", 7, null, {"type": 1}, {"type": "thinking", "signature": 5},
                {"type": "redacted_thinking", "data": {"x": 1}},
                {"type": "thinking", "thinking": 1e300, "signature": "S"}
            ]},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "ok", "thinking_blocks": "not a list"},
            {"role": "user", "content": "more"}
        ]}))
        .expect("request");
        let body = request_body(&req, &d, false).expect("renders");
        assert!(body.get("thinking").is_none());
        // Only the block with a string signature goes up; its non-string text is empty.
        assert_eq!(
            body["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "", "signature": "S"})
        );
        assert_eq!(body["messages"][1]["content"][1]["type"], "text");
        assert_eq!(body["messages"][3]["content"][0]["type"], "text");
    }

    #[test]
    fn a_first_turn_with_effort_thinks_and_minimal_does_not() {
        let d = deployment("claude-x");
        for (effort, budget) in [
            ("low", Some(1024)),
            ("high", Some(16_384)),
            ("minimal", None),
        ] {
            let req: ChatRequest = serde_json::from_value(json!({"model": "m",
                "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}))
            .expect("request");
            let body = request_body(&req, &d, false).expect("renders");
            match budget {
                Some(b) => {
                    assert_eq!(body["thinking"]["budget_tokens"], b, "{effort}");
                    assert_eq!(body["max_tokens"], u64::from(DEFAULT_MAX_TOKENS + b));
                }
                None => assert!(body.get("thinking").is_none(), "{effort}"),
            }
            assert!(body.get("reasoning_effort").is_none());
        }
    }

    #[test]
    fn a_streamed_thinking_block_arrives_as_reasoning_and_one_signed_block() {
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Look "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "it up."}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG-1"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        let mut stream = AnthropicStream::for_issuer("anthropic-0000abcd".into());
        for e in &events {
            stream.push(format!("event: x\ndata: {e}\n\n").as_bytes());
        }
        let mut deltas = Vec::new();
        while let Some(item) = stream.next().expect("decodes") {
            if let Translated::Chunk { data, .. } = item {
                let chunk: Value = serde_json::from_slice(&data).expect("json");
                if let Some(d) = chunk["choices"][0].get("delta") {
                    deltas.push(d.clone());
                }
            }
        }
        let reasoning: String = deltas
            .iter()
            .filter_map(|d| d["reasoning_content"].as_str())
            .collect();
        assert_eq!(reasoning, "Look it up.");
        let blocks: Vec<&Value> = deltas
            .iter()
            .filter_map(|d| d.get("thinking_blocks"))
            .collect();
        assert_eq!(
            blocks,
            [&json!([{"type": "thinking", "thinking": "Look it up.", "signature": "SIG-1"}])]
        );
        let id = deltas
            .iter()
            .find_map(|d| d["tool_calls"][0]["id"].as_str())
            .expect("a call");
        assert_eq!(
            reasoning::decode_call_id(id),
            Some(("toolu_1", "anthropic-0000abcd", None))
        );
    }
}
