//! AWS Bedrock Runtime, Converse and ConverseStream
//! (`POST /model/{modelId}/converse[-stream]`): OpenAI chat requests in, Converse
//! requests out, signed with SigV4 (`aws-sigv4`, service `bedrock`); Converse
//! responses, binary event streams (`aws-smithy-eventstream`) and exceptions back
//! into OpenAI's shapes.
//!
//! The mapping follows `shared/reference/provider-protocols.md` §4 and §6. Bedrock
//! takes images only as bytes: data URLs are passed on. The gateway fetches http(s)
//! image URLs before dispatch when a deployment like this one may serve the request
//! (`needs_image_bytes`, [`crate::images`]); one that still arrives here is refused
//! as unsupported (another deployment may take it).

use std::collections::HashMap;
use std::time::SystemTime;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::anthropic::ClaudeThinking;
use super::canonical::{self, ChunkWriter};
use super::{Adapter, Endpoint, StreamDecoder, Translated};
use crate::config::{AwsCredentials, Deployment, ProviderKind};
use crate::types::chat::{ChatMessage, ChatRequest, EmbeddingsRequest, Role};
use crate::types::reasoning;
use crate::types::ProviderError;
use crate::types::Usage;

pub struct BedrockAdapter;

/// The SigV4 signing name (the endpoint prefix is `bedrock-runtime`).
const SIGNING_NAME: &str = "bedrock";

/// Largest event-stream message accepted: botocore's payload cap (24 MiB) plus its
/// header cap (128 KiB).
const MAX_MESSAGE_BYTES: usize = 24 * 1024 * 1024 + 128 * 1024 + 16;

// ---------------------------------------------------------------- request

/// The Converse request body for `req` (the model is in the URL, not the body).
pub fn request_body(req: &ChatRequest) -> Result<Value, ProviderError> {
    request_body_for(req, "", "")
}

/// A signed thinking block (`thinking_blocks`) as a Converse `reasoningContent` block.
fn reasoning_block(b: &Value) -> Option<Value> {
    match b.get("type").and_then(Value::as_str)? {
        "thinking" => Some(json!({"reasoningContent": {"reasoningText": {
            "text": b.get("thinking").and_then(Value::as_str).unwrap_or(""),
            "signature": b.get("signature")?.as_str()?,
        }}})),
        "redacted_thinking" => Some(json!({"reasoningContent": {
            "redactedContent": b.get("data")?.as_str()?,
        }})),
        _ => None,
    }
}

/// [`request_body`] for a deployment of `model` whose reasoning state is `issuer`'s:
/// Claude's signed thinking goes back first in its own assistant turns only, and
/// `reasoning_effort` becomes `additionalModelRequestFields.thinking` (as Anthropic's
/// own API takes it, see `anthropic::claude_thinking`).
pub fn request_body_for(
    req: &ChatRequest,
    model: &str,
    issuer: &str,
) -> Result<Value, ProviderError> {
    canonical::single_choice(req)?;
    let carried = req.carried.as_deref();
    let mut kept_thinking = std::collections::HashSet::new();
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut history_has_tools = false;
    for (index, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                let text = canonical::text_of(m.content.as_ref());
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            Role::User => canonical::push_turn(&mut messages, "user", "content", user_blocks(m)?),
            Role::Assistant => {
                let own = super::anthropic::own_turn(carried, index, issuer);
                let mut blocks: Vec<Value> = match m.extra.get("thinking_blocks") {
                    Some(Value::Array(b)) if own => b.iter().filter_map(reasoning_block).collect(),
                    _ => Vec::new(),
                };
                if !blocks.is_empty() {
                    kept_thinking.insert(index);
                }
                blocks.extend(assistant_blocks(m));
                history_has_tools |= m.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
                canonical::push_turn(&mut messages, "assistant", "content", blocks);
            }
            Role::Tool => {
                history_has_tools = true;
                let text = canonical::text_of(m.content.as_ref());
                let block = json!({"toolResult": {
                    "toolUseId": tool_use_id(m.tool_call_id.as_deref().unwrap_or("")),
                    // Bedrock refuses blank text blocks.
                    "content": [{"text": if text.is_empty() { " ".to_owned() } else { text }}],
                }});
                canonical::push_turn(&mut messages, "user", "content", vec![block]);
            }
            Role::Function => {
                return Err(ProviderError::Unsupported(
                    "the deprecated `function` role".into(),
                ))
            }
        }
    }
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    // Claude's thinking on Bedrock follows Anthropic's own rules.
    let thinking = if model.contains("anthropic.claude") {
        super::anthropic::thinking_for(req, model, &kept_thinking)
    } else {
        None
    };
    let mut inference = Map::new();
    let budget = match thinking {
        Some(ClaudeThinking::Budget(b)) => Some(b),
        _ => None,
    };
    match (canonical::max_output(req), budget) {
        (Some(max), b) => {
            inference.insert(
                "maxTokens".into(),
                json!(max.saturating_add(b.unwrap_or(0))),
            );
        }
        (None, Some(b)) => {
            let max = super::anthropic::DEFAULT_MAX_TOKENS.saturating_add(b);
            inference.insert("maxTokens".into(), json!(max));
        }
        (None, None) => {}
    }
    if let Some(t) = req.extra.get("temperature").and_then(Value::as_f64) {
        if thinking.is_none() {
            inference.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
    }
    if let Some(p) = req.extra.get("top_p").filter(|_| thinking.is_none()) {
        inference.insert("topP".into(), p.clone());
    }
    match thinking {
        Some(ClaudeThinking::Budget(b)) => {
            body.insert(
                "additionalModelRequestFields".into(),
                json!({"thinking": {"type": "enabled", "budget_tokens": b}}),
            );
        }
        Some(ClaudeThinking::Adaptive(level)) => {
            body.insert(
                "additionalModelRequestFields".into(),
                json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": level}}),
            );
        }
        None => {}
    }
    if let Some(stop) = canonical::stop_sequences(req.stop.as_ref()) {
        inference.insert("stopSequences".into(), json!(stop));
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let none = matches!(&req.tool_choice, Some(Value::String(s)) if s == "none");
        // `none` has no Converse equivalent: leave the tools out, unless the history
        // holds tool calls, which Converse only accepts with a toolConfig.
        if !none || history_has_tools {
            let specs: Vec<Value> = tools
                .iter()
                .filter_map(|t| t.function.as_ref())
                .map(|f| {
                    let mut spec = json!({
                        "name": f.name,
                        "inputSchema": {"json": f.parameters.clone()
                            .unwrap_or_else(|| json!({"type": "object", "properties": {}}))},
                    });
                    if let (Some(d), Some(fields)) = (&f.description, spec.as_object_mut()) {
                        fields.insert("description".into(), json!(d));
                    }
                    json!({"toolSpec": spec})
                })
                .collect();
            let mut config = json!({"tools": specs});
            let choice = match &req.tool_choice {
                Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
                Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
                Some(Value::Object(o)) => o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .map(|name| json!({"tool": {"name": name}})),
                _ => None,
            };
            if let (Some(c), Some(fields)) = (choice.filter(|_| !none), config.as_object_mut()) {
                fields.insert("toolChoice".into(), c);
            }
            body.insert("toolConfig".into(), config);
        }
    }
    if let Some(rf) = &req.response_format {
        let schema = match rf.kind.as_str() {
            "json_schema" => rf.json_schema.as_ref().map(|s| {
                (
                    s.name.clone(),
                    s.extra
                        .get("schema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                )
            }),
            // JSON mode only promises an object.
            "json_object" => Some(("json_object".to_owned(), json!({"type": "object"}))),
            _ => None,
        };
        if let Some((name, schema)) = schema {
            body.insert(
                "outputConfig".into(),
                json!({"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
                    "name": name,
                    // Converse takes the schema as a JSON string.
                    "schema": schema.to_string(),
                }}}}),
            );
        }
    }
    if let Some(user) = req.extra.get("user").and_then(Value::as_str) {
        body.insert("requestMetadata".into(), json!({"user": user}));
    }
    Ok(Value::Object(body))
}

/// Tool-use ids are 1–64 characters of `[a-zA-Z0-9_-]`.
fn tool_use_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        "tool".to_owned()
    } else {
        clean
    }
}

fn user_blocks(m: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = Vec::new();
    for part in canonical::parts_of(m) {
        match part.kind.as_str() {
            "text" => {
                let text = part.text.unwrap_or_default();
                if !text.trim().is_empty() {
                    blocks.push(json!({"text": text}));
                }
            }
            "image_url" => {
                let Some(image) = part.image_url else {
                    continue;
                };
                let Some((mime, data)) = canonical::data_url(&image.url) else {
                    return Err(ProviderError::Unsupported(
                        "image URLs (Bedrock takes image bytes; send a data: URL)".into(),
                    ));
                };
                let format = match mime {
                    "image/png" => "png",
                    "image/jpeg" | "image/jpg" => "jpeg",
                    "image/gif" => "gif",
                    "image/webp" => "webp",
                    other => {
                        return Err(ProviderError::Unsupported(format!(
                            "images of type {other}"
                        )))
                    }
                };
                blocks.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
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
    if !text.trim().is_empty() {
        blocks.push(json!({"text": text}));
    }
    for call in m.tool_calls.iter().flatten() {
        blocks.push(json!({"toolUse": {
            "toolUseId": tool_use_id(&call.id),
            "name": call.function.name,
            "input": canonical::arguments_object(&call.function.arguments),
        }}));
    }
    blocks
}

/// The model id as a URI label: everything but unreserved characters
/// percent-encoded (`:` becomes `%3A`, `/` in ARNs `%2F`).
fn encode_label(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for b in label.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Converse URL of a deployment.
pub fn url(base_url: &str, model: &str, stream: bool) -> String {
    let op = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("{base_url}/model/{}/{op}", encode_label(model))
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a
/// POST of `body` to `url`.
pub fn sign(
    url: &str,
    region: &str,
    creds: &AwsCredentials,
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, ProviderError> {
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.expose(),
        creds.secret_access_key.expose(),
        creds.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "switchyard-config",
    );
    sign_with(url, region, &identity, body, time)
}

/// [`sign`] with an identity already in the SDK's form (credentials from the chain).
pub fn sign_with(
    url: &str,
    region: &str,
    creds: &aws_credential_types::Credentials,
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, ProviderError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;

    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ProviderError::Protocol(format!("SigV4 parameters: {e}")))?
        .into();
    let headers = [("content-type", "application/json")];
    let signable =
        SignableRequest::new("POST", url, headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| ProviderError::Protocol(format!("SigV4: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| ProviderError::Protocol(format!("SigV4: {e}")))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

// ---------------------------------------------------------------- response

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl WireUsage {
    fn to_usage(self) -> Usage {
        Usage {
            // `inputTokens` leaves the cached parts out; OpenAI's prompt includes them.
            prompt_tokens: self
                .input_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_write_input_tokens),
            completion_tokens: self.output_tokens,
            cached_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_write_input_tokens,
            reasoning_tokens: 0,
            estimated: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    output: Output,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
struct Output {
    message: OutputMessage,
}

#[derive(Debug, Deserialize)]
struct OutputMessage {
    #[serde(default)]
    content: Vec<OutputBlock>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUse>,
    #[serde(default)]
    reasoning_content: Option<ReasoningContent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReasoningContent {
    #[serde(default)]
    reasoning_text: Option<ReasoningText>,
    #[serde(default)]
    redacted_content: Option<String>,
    /// Streamed deltas carry these at the top level.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    signature: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ReasoningText {
    #[serde(default)]
    text: String,
    #[serde(default)]
    signature: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Option<Value>,
}

/// Converse `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

fn completion_id() -> String {
    format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32)
}

/// A Converse response → an OpenAI `chat.completion` body and its usage. Claude's
/// `reasoningContent` becomes `reasoning_content` and `thinking_blocks` (the shape the
/// Anthropic translator gives), and the tool-call ids of a turn that thought name
/// `issuer` (see `types::reasoning`).
pub fn translate_response(
    body: &[u8],
    id: &str,
    model: &str,
    issuer: &str,
) -> Result<(Bytes, Usage), ProviderError> {
    let res: ConverseResponse =
        serde_json::from_slice(body).map_err(|e| canonical::protocol("converse response", e))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thought = canonical::Reasoning::default();
    let content = res.output.message.content;
    for block in &content {
        let Some(r) = &block.reasoning_content else {
            continue;
        };
        if let Some(t) = &r.reasoning_text {
            thought.text.push_str(&t.text);
            thought
                .blocks
                .push(json!({"type": "thinking", "thinking": t.text, "signature": t.signature}));
        } else if let Some(data) = &r.redacted_content {
            thought
                .blocks
                .push(json!({"type": "redacted_thinking", "data": data}));
        }
    }
    let signed = !thought.blocks.is_empty() && !issuer.is_empty();
    for block in content {
        if let Some(t) = block.text {
            text.push_str(&t);
        }
        if let Some(tool) = block.tool_use {
            let args = tool
                .input
                .as_ref()
                .map_or_else(|| "{}".into(), Value::to_string);
            let call_id = if signed {
                reasoning::encode_call_id(&tool.tool_use_id, issuer, None)
            } else {
                tool.tool_use_id
            };
            calls.push(canonical::tool_call(&call_id, &tool.name, args));
        }
    }
    let usage = res.usage.to_usage();
    let has_text = !text.is_empty() || calls.is_empty();
    let choice = canonical::Choice {
        text: has_text.then_some(text),
        tool_calls: calls,
        finish_reason: finish_reason(res.stop_reason.as_deref()),
        reasoning: thought,
    };
    let body = canonical::completion_choices(id, model, vec![choice], &usage)?;
    Ok((body, usage))
}

// ---------------------------------------------------------------- stream

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    content_block_index: usize,
    #[serde(default)]
    start: Option<StartBody>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    #[serde(default)]
    tool_use: Option<StartToolUse>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartToolUse {
    tool_use_id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta {
    content_block_index: usize,
    delta: DeltaBody,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaBody {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<DeltaToolUse>,
    #[serde(default)]
    reasoning_content: Option<ReasoningContent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStop {
    content_block_index: usize,
}

#[derive(Debug, Deserialize)]
struct DeltaToolUse {
    #[serde(default)]
    input: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Default, Deserialize)]
struct ExceptionBody {
    #[serde(default, alias = "Message")]
    message: String,
}

/// Translates one ConverseStream event stream into OpenAI chunks.
pub struct BedrockStream {
    buf: BytesMut,
    frames: MessageFrameDecoder,
    /// The decoder holds a message's prelude it has taken from `buf`.
    in_frame: bool,
    out: ChunkWriter,
    /// Content-block index → OpenAI tool-call index.
    tools: HashMap<usize, usize>,
    /// The reasoning block being streamed (index, text, signature), sent whole as a
    /// `thinking_blocks` delta when it stops; its text goes out as it arrives.
    thinking: Option<(usize, String, String)>,
    /// Whether this turn reasoned (its tool-call ids then name the issuer).
    thought: bool,
    issuer: String,
}

impl BedrockStream {
    pub fn new(model: &str) -> Self {
        Self::with_id(model, completion_id())
    }

    /// A stream whose chunks carry `id` (Bedrock's stream has none of its own).
    pub fn with_id(model: &str, id: String) -> Self {
        let mut out = ChunkWriter::new();
        out.id = id;
        model.clone_into(&mut out.model);
        BedrockStream {
            buf: BytesMut::new(),
            frames: MessageFrameDecoder::new(),
            in_frame: false,
            out,
            tools: HashMap::new(),
            thinking: None,
            thought: false,
            issuer: String::new(),
        }
    }

    /// A stream whose tool-call ids after reasoning carry `issuer`.
    pub fn for_issuer(model: &str, issuer: String) -> Self {
        let mut stream = Self::new(model);
        stream.issuer = issuer;
        stream
    }

    fn on_message(&mut self, msg: &Message) -> Result<(), ProviderError> {
        let header = |name: &str| {
            msg.headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|s| s.as_str().to_owned())
        };
        let payload = msg.payload();
        let parse = |what: &str| -> Result<Value, ProviderError> {
            serde_json::from_slice(payload).map_err(|e| canonical::protocol(what, e))
        };
        match header(":message-type").as_deref() {
            Some("event") => {}
            Some("exception") => {
                let name = header(":exception-type").unwrap_or_default();
                let body: ExceptionBody = serde_json::from_slice(payload).unwrap_or_default();
                let (kind, code) = exception_kind(&name);
                self.out
                    .error(kind, code, &exception_message(&name, &body.message));
                return Ok(());
            }
            Some("error") => {
                let code = header(":error-code").unwrap_or_default();
                let message = header(":error-message").unwrap_or_default();
                let (kind, label) = exception_kind(&code);
                self.out
                    .error(kind, label, &exception_message(&code, &message));
                return Ok(());
            }
            other => {
                return Err(ProviderError::Protocol(format!(
                    "event-stream message of type {other:?}"
                )))
            }
        }
        let event = header(":event-type").unwrap_or_default();
        match event.as_str() {
            "messageStart" => self.out.role(),
            "contentBlockStart" => {
                let start: BlockStart = serde_json::from_value(parse("contentBlockStart")?)
                    .map_err(|e| canonical::protocol("contentBlockStart", e))?;
                if let Some(tool) = start.start.and_then(|s| s.tool_use) {
                    let id = if self.thought && !self.issuer.is_empty() {
                        reasoning::encode_call_id(&tool.tool_use_id, &self.issuer, None)
                    } else {
                        tool.tool_use_id
                    };
                    let index = self.out.tool_start(&id, &tool.name, "");
                    self.tools.insert(start.content_block_index, index);
                }
            }
            "contentBlockDelta" => {
                let delta: BlockDelta = serde_json::from_value(parse("contentBlockDelta")?)
                    .map_err(|e| canonical::protocol("contentBlockDelta", e))?;
                if let Some(text) = delta.delta.text {
                    self.out.content(&text);
                }
                if let Some(tool) = delta.delta.tool_use {
                    if let Some(&index) = self.tools.get(&delta.content_block_index) {
                        self.out.tool_arguments(index, &tool.input);
                    }
                }
                if let Some(r) = delta.delta.reasoning_content {
                    self.on_reasoning(delta.content_block_index, r);
                }
            }
            "contentBlockStop" => {
                let stop: BlockStop = serde_json::from_value(parse("contentBlockStop")?)
                    .map_err(|e| canonical::protocol("contentBlockStop", e))?;
                if let Some((at, text, signature)) = self.thinking.take() {
                    if at == stop.content_block_index {
                        self.out.thinking_block(json!({
                            "type": "thinking", "thinking": text, "signature": signature,
                        }));
                    } else {
                        self.thinking = Some((at, text, signature));
                    }
                }
            }
            "messageStop" => {
                let stop: MessageStop = serde_json::from_value(parse("messageStop")?)
                    .map_err(|e| canonical::protocol("messageStop", e))?;
                self.out.finish(finish_reason(stop.stop_reason.as_deref()));
            }
            "metadata" => {
                let meta: Metadata = serde_json::from_value(parse("metadata")?)
                    .map_err(|e| canonical::protocol("metadata", e))?;
                self.out.usage_and_done(meta.usage.to_usage());
            }
            _ => {} // events added after this was written
        }
        Ok(())
    }

    /// One `reasoningContent` delta: text as it comes, the signature kept for the
    /// block's end, redacted content as a block of its own.
    fn on_reasoning(&mut self, index: usize, r: ReasoningContent) {
        self.thought = true;
        if let Some(data) = r.redacted_content {
            self.out
                .thinking_block(json!({"type": "redacted_thinking", "data": data}));
            return;
        }
        let block = self
            .thinking
            .get_or_insert_with(|| (index, String::new(), String::new()));
        if let Some(text) = r.text {
            self.out.reasoning(&text);
            block.1.push_str(&text);
        }
        if let Some(signature) = r.signature {
            block.2.push_str(&signature);
        }
    }
}

impl StreamDecoder for BedrockStream {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Result<Option<Translated>, ProviderError> {
        loop {
            if let Some(item) = self.out.queue.pop_front() {
                return Ok(Some(item));
            }
            if self.buf.is_empty() && !self.in_frame {
                return Ok(None);
            }
            if self.buf.len() > MAX_MESSAGE_BYTES {
                // A prelude claiming a huge message must not make us buffer forever.
                return Err(ProviderError::Protocol(format!(
                    "an event-stream message is larger than {MAX_MESSAGE_BYTES} bytes"
                )));
            }
            let before = self.buf.len();
            match self.frames.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(msg)) => {
                    self.in_frame = false;
                    self.on_message(&msg)?;
                }
                Ok(DecodedFrame::Incomplete) => {
                    self.in_frame |= self.buf.len() < before;
                    return Ok(None);
                }
                Err(e) => return Err(canonical::protocol("event stream", e)),
            }
        }
    }

    fn has_partial(&self) -> bool {
        self.in_frame || !self.buf.is_empty()
    }
}

// ---------------------------------------------------------------- errors

/// An exception name (`ThrottlingException`, or the stream member
/// `throttlingException`) → OpenAI error type and code for a stream's error event.
fn exception_kind(name: &str) -> (&'static str, &'static str) {
    match name.to_ascii_lowercase().as_str() {
        "throttlingexception" | "modelnotreadyexception" => {
            ("rate_limit_error", "rate_limit_exceeded")
        }
        "validationexception" => ("invalid_request_error", "upstream_rejected"),
        "serviceunavailableexception" => ("server_error", "upstream_overloaded"),
        _ => ("server_error", "upstream_error"),
    }
}

fn exception_message(name: &str, message: &str) -> String {
    match (name.is_empty(), message.is_empty()) {
        (true, _) => message.to_owned(),
        (false, true) => name.to_owned(),
        (false, false) => format!("{name}: {message}"),
    }
}

/// The exception name of an error answer: `x-amzn-ErrorType` (cut at `:`), else the
/// body's `__type` (after `#`) or `code`.
fn exception_name(headers: &HeaderMap, body: &Value) -> String {
    let from_header = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned());
    from_header
        .or_else(|| {
            body.get("__type")
                .or_else(|| body.get("code"))
                .and_then(Value::as_str)
                .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
        })
        .unwrap_or_default()
}

/// A Bedrock error answer → status and retryability. Throttling is 429; a model
/// error (424) is the upstream's failure, 502; a model timeout is a timeout; an
/// unknown model (`ResourceNotFoundException`), a 404 or a redirect is the
/// deployment's misconfiguration; validation and other client errors stay 4xx and
/// are not retried.
pub fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let name = exception_name(headers, &parsed);
    let message = parsed
        .get("message")
        .or_else(|| parsed.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    // No such model (or inference profile) in this account and region.
    if name == "ResourceNotFoundException" {
        return ProviderError::misconfigured(status, message.as_deref());
    }
    if let Some(e) = ProviderError::misconfigured_status(status, message.as_deref()) {
        return e;
    }
    let status = match name.as_str() {
        "ThrottlingException" | "ModelNotReadyException" => StatusCode::TOO_MANY_REQUESTS,
        "ModelTimeoutException" => return ProviderError::Timeout { phase: "model" },
        "ModelErrorException" | "ModelStreamErrorException" => StatusCode::BAD_GATEWAY,
        "ServiceUnavailableException" => StatusCode::SERVICE_UNAVAILABLE,
        "ValidationException" => StatusCode::BAD_REQUEST,
        _ if status.as_u16() == 424 => StatusCode::BAD_GATEWAY,
        _ => status,
    };
    ProviderError::Status {
        status,
        retry_after: headers.get(RETRY_AFTER).cloned(),
        message: message.map(|m| {
            if name.is_empty() {
                m
            } else {
                format!("{name}: {m}")
            }
        }),
        param: None,
    }
}

// ---------------------------------------------------------------- adapter

impl Adapter for BedrockAdapter {
    fn needs_image_bytes(&self) -> bool {
        true
    }

    fn chat_body(
        &self,
        req: &mut ChatRequest,
        deployment: &Deployment,
        _stream: bool,
    ) -> Result<Vec<u8>, ProviderError> {
        let issuer = super::issuer_of(deployment).unwrap_or_default();
        canonical::to_body(&request_body_for(req, &deployment.upstream_model, issuer)?)
    }

    fn embeddings_body(
        &self,
        _req: &mut EmbeddingsRequest,
        _deployment: &Deployment,
    ) -> Result<Vec<u8>, ProviderError> {
        Err(ProviderError::Unsupported(
            "embeddings (not through Converse)".into(),
        ))
    }

    fn request(
        &self,
        client: &super::upstream::Client,
        deployment: &Deployment,
        _endpoint: Endpoint,
        stream: bool,
        body: Bytes,
        credential: Option<&super::auth::Credential>,
    ) -> Result<super::upstream::RequestBuilder, ProviderError> {
        let ProviderKind::Bedrock {
            base_url,
            region,
            credentials,
        } = &deployment.provider.kind
        else {
            return Err(ProviderError::Unsupported("not a Bedrock provider".into()));
        };
        let url = url(base_url, &deployment.upstream_model, stream);
        let mut req = client
            .post(&url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &deployment.provider.api_key {
            req = req.bearer_auth(key.expose());
        } else if let Some(creds) = credentials {
            for (name, value) in sign(&url, region, creds, &body, SystemTime::now())? {
                req = req.header(name, value);
            }
        } else if let Some(super::auth::Credential::Aws(identity)) = credential {
            // Credentials from the AWS chain, renewed by `auth`.
            for (name, value) in sign_with(&url, region, identity, &body, SystemTime::now())? {
                req = req.header(name, value);
            }
        }
        Ok(req.body(body))
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
        let (body, usage) =
            translate_response(&body, &completion_id(), &deployment.upstream_model, issuer)?;
        Ok((body, Some(usage)))
    }

    fn is_stream(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/vnd.amazon.eventstream"))
    }

    fn stream_decoder(&self, deployment: &Deployment) -> Box<dyn StreamDecoder> {
        Box::new(BedrockStream::for_issuer(
            &deployment.upstream_model,
            super::issuer_of(deployment).unwrap_or_default().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::providers::canonical::golden;
    use aws_smithy_types::event_stream::{Header, HeaderValue as FrameValue};
    use std::time::Duration;

    fn deployment(model: &str) -> Deployment {
        golden::deployment(
            ProviderKind::Bedrock {
                base_url: "http://h".into(),
                region: "us-east-1".into(),
                credentials: Some(creds()),
            },
            model,
        )
    }

    fn creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: Secret::new("AKIDEXAMPLE"),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    /// Encodes `{"headers": {name: string}, "payload": JSON or "raw text"}` items as
    /// event-stream frames.
    fn frames(items: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items.as_array().expect("frames") {
            let headers = item["headers"]
                .as_object()
                .expect("headers")
                .iter()
                .map(|(k, v)| {
                    Header::new(
                        k.clone(),
                        FrameValue::String(v.as_str().expect("string").to_owned().into()),
                    )
                })
                .collect();
            let payload = match &item["payload"] {
                Value::String(raw) => raw.clone().into_bytes(),
                v => serde_json::to_vec(v).expect("json"),
            };
            let msg = Message::new_from_parts(headers, payload);
            aws_smithy_eventstream::frame::write_message_to(&msg, &mut out).expect("encode");
        }
        out
    }

    #[test]
    fn golden_requests() {
        for (name, case) in golden::fixtures("bedrock", "request_") {
            let req: ChatRequest =
                serde_json::from_value(case["openai"].clone()).expect("openai request");
            assert_eq!(
                request_body(&req).expect("translates"),
                case["native"],
                "{name}"
            );
        }
    }

    #[test]
    fn golden_responses() {
        for (name, case) in golden::fixtures("bedrock", "response_") {
            let body = serde_json::to_vec(&case["native"]).expect("bytes");
            let (out, _) = translate_response(&body, "chatcmpl-test", "m", "").expect("translates");
            let out: Value = serde_json::from_slice(&out).expect("json");
            assert_eq!(golden::without_created(out), case["openai"], "{name}");
        }
    }

    #[test]
    fn golden_streams() {
        for (name, case) in golden::fixtures("bedrock", "stream_") {
            let bytes = frames(&case["native"]);
            let items = golden::decode_every_way(
                &|| Box::new(BedrockStream::with_id("m", "chatcmpl-test".into())),
                &bytes,
            );
            assert_eq!(Value::Array(items), case["openai"], "{name}");
        }
    }

    #[test]
    fn a_cut_frame_is_partial() {
        let bytes = frames(
            &json!([{"headers": {":message-type": "event", ":event-type": "messageStart"}, "payload": {"role": "assistant"}}]),
        );
        let mut d = BedrockStream::new("m");
        d.push(&bytes[..bytes.len() - 3]);
        assert_eq!(d.next().expect("ok"), None);
        assert!(d.has_partial());
        let mut bad = bytes.clone();
        bad[20] ^= 0xff;
        let mut d = BedrockStream::new("m");
        d.push(&bad);
        assert!(d.next().is_err(), "a CRC mismatch is an error");
    }

    #[test]
    fn model_ids_are_encoded_in_the_url() {
        assert_eq!(
            url(
                "http://h",
                "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
                true
            ),
            "http://h/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
        );
        assert_eq!(
            url(
                "http://h",
                "arn:aws:bedrock:us-east-1:1:inference-profile/x",
                false
            ),
            "http://h/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse"
        );
    }

    #[test]
    fn requests_are_signed_for_the_bedrock_service() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers: HashMap<String, String> = sign(
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse",
            "us-east-1",
            &creds(),
            b"{}",
            time,
        )
        .expect("signed")
        .into_iter()
        .collect();
        let auth = &headers["authorization"];
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, SignedHeaders="),
            "{auth}"
        );
        assert!(auth.contains("host"), "{auth}");
        assert_eq!(headers["x-amz-date"], "20231114T221320Z");
        assert!(!headers.contains_key("x-amz-security-token"));
        let with_token = AwsCredentials {
            session_token: Some(Secret::new("tok")),
            ..creds()
        };
        let headers: HashMap<String, String> = sign(
            "https://h/model/m/converse",
            "us-east-1",
            &with_token,
            b"{}",
            time,
        )
        .expect("signed")
        .into_iter()
        .collect();
        assert_eq!(headers["x-amz-security-token"], "tok");
    }

    #[test]
    fn a_bedrock_api_key_replaces_sigv4() {
        let mut d = deployment("m");
        std::sync::Arc::make_mut(&mut d.provider).api_key = None;
        let client = crate::providers::upstream::test_client();
        let signed = BedrockAdapter
            .request(
                &client,
                &d,
                Endpoint::ChatCompletions,
                false,
                Bytes::from_static(b"{}"),
                None,
            )
            .expect("request")
            .build()
            .expect("built");
        assert!(signed.headers()["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("AWS4-HMAC-SHA256"));
        std::sync::Arc::make_mut(&mut d.provider).api_key = Some(Secret::new("bedrock-key"));
        let bearer = BedrockAdapter
            .request(
                &client,
                &d,
                Endpoint::ChatCompletions,
                true,
                Bytes::from_static(b"{}"),
                None,
            )
            .expect("request")
            .build()
            .expect("built");
        assert_eq!(bearer.headers()["authorization"], "Bearer bedrock-key");
        assert_eq!(bearer.uri().path(), "/model/m/converse-stream");
    }

    #[test]
    fn unknown_models_and_redirects_are_misconfigurations() {
        let mut named = HeaderMap::new();
        named.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ResourceNotFoundException:http://internal.amazon.com/"),
        );
        let cases = [
            ("header", status_error(StatusCode::NOT_FOUND, &named, br#"{"message":"Model not found"}"#)),
            ("body", status_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), br#"{"__type":"com.amazon#ResourceNotFoundException","message":"no such profile"}"#)),
            ("redirect", status_error(StatusCode::FOUND, &HeaderMap::new(), b"")),
        ];
        for (what, e) in &cases {
            assert_eq!(e.class(), "misconfigured", "{what}: {e:?}");
            assert!(e.retryable(), "{what}: another deployment may serve it");
            assert!(!e.may_pass(), "{what}: no second round");
        }
    }

    #[test]
    fn exceptions_map_to_status_and_retryability() {
        let named = |name: &str, status: u16| {
            let mut h = HeaderMap::new();
            h.insert(
                "x-amzn-errortype",
                HeaderValue::from_str(&format!(
                    "{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
                ))
                .expect("header"),
            );
            status_error(
                StatusCode::from_u16(status).expect("status"),
                &h,
                br#"{"message":"boom"}"#,
            )
        };
        let throttled = named("ThrottlingException", 429);
        assert!(throttled.retryable());
        assert_eq!(throttled.class(), "rate_limited");
        let not_ready = named("ModelNotReadyException", 429);
        assert_eq!(not_ready.class(), "rate_limited");
        let invalid = named("ValidationException", 400);
        assert!(!invalid.retryable());
        assert!(
            matches!(&invalid, ProviderError::Status { message: Some(m), .. } if m == "ValidationException: boom")
        );
        let model_error = named("ModelStreamErrorException", 424);
        assert!(model_error.retryable());
        assert!(
            matches!(model_error, ProviderError::Status { status, .. } if status == StatusCode::BAD_GATEWAY)
        );
        assert!(matches!(
            named("ModelTimeoutException", 408),
            ProviderError::Timeout { .. }
        ));
        assert_eq!(
            named("ServiceUnavailableException", 503).class(),
            "overloaded"
        );
        let by_body = status_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"__type":"com.amazon#ValidationException","Message":"bad"}"#,
        );
        assert!(
            matches!(&by_body, ProviderError::Status { message: Some(m), .. } if m == "ValidationException: bad")
        );
    }
}
