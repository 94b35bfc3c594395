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
use crate::types::ProviderError;
use crate::types::Usage;

/// Output limit sent when the client sets none: Anthropic requires one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

pub struct AnthropicAdapter;

// ---------------------------------------------------------------- request

/// The Messages request body for `req` at `deployment`.
pub fn request_body(
    req: &ChatRequest,
    deployment: &Deployment,
    stream: bool,
) -> Result<Value, ProviderError> {
    canonical::single_choice(req)?;
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in &req.messages {
        match m.role {
            Role::System | Role::Developer => system.push(canonical::text_of(m.content.as_ref())),
            Role::User => canonical::push_turn(&mut messages, "user", "content", user_blocks(m)?),
            Role::Assistant => {
                canonical::push_turn(&mut messages, "assistant", "content", assistant_blocks(m))
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
    let mut body = Map::new();
    body.insert("model".into(), json!(deployment.upstream_model));
    body.insert(
        "max_tokens".into(),
        json!(canonical::max_output(req).unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(stop) = canonical::stop_sequences(req.stop.as_ref()) {
        body.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(t) = req.extra.get("temperature").and_then(Value::as_f64) {
        // OpenAI allows 0–2, Anthropic 0–1.
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.extra.get("top_p") {
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
            body.insert(
                "output_config".into(),
                json!({"format": {"type": "json_schema", "schema": schema}}),
            );
        }
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

/// A Messages response → an OpenAI `chat.completion` body and its usage.
pub fn translate_response(body: &[u8]) -> Result<(Bytes, Usage), ProviderError> {
    let msg: WireMessage =
        serde_json::from_slice(body).map_err(|e| canonical::protocol("message", e))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in &msg.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => calls.push(canonical::tool_call(
                block.id.as_deref().unwrap_or(""),
                block.name.as_deref().unwrap_or(""),
                block
                    .input
                    .as_ref()
                    .map_or_else(|| "{}".into(), Value::to_string),
            )),
            _ => {} // thinking and server-tool blocks have no OpenAI equivalent
        }
    }
    let usage = msg.usage.to_usage();
    let has_text = !text.is_empty() || calls.is_empty();
    let body = canonical::completion(
        &msg.id,
        &msg.model,
        has_text.then_some(text),
        calls,
        finish_reason(msg.stop_reason.as_deref()),
        &usage,
    )?;
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
    ContentBlockStop {},
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
}

impl AnthropicStream {
    pub fn new() -> Self {
        AnthropicStream {
            sse: SseDecoder::new(),
            out: ChunkWriter::new(),
            usage: WireUsage::default(),
            tools: HashMap::new(),
            finished: false,
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
                    let tool = self.out.tool_start(
                        content_block.id.as_deref().unwrap_or(""),
                        content_block.name.as_deref().unwrap_or(""),
                        "",
                    );
                    self.tools.insert(index, tool);
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
                Delta::Other => {}
            },
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
            Event::ContentBlockStop {} | Event::Ping {} | Event::Unknown => {}
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
        client: &reqwest::Client,
        deployment: &Deployment,
        _endpoint: Endpoint,
        _stream: bool,
        body: Bytes,
        _credential: Option<&super::auth::Credential>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let ProviderKind::Anthropic { base_url, version } = &deployment.provider.kind else {
            return Err(ProviderError::Unsupported(
                "not an Anthropic provider".into(),
            ));
        };
        let mut req = client
            .post(format!("{base_url}/v1/messages"))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("anthropic-version", version.as_str())
            .body(body);
        if let Some(key) = &deployment.provider.api_key {
            req = req.header("x-api-key", key.expose());
        }
        Ok(req)
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        status_error(status, headers, body)
    }

    fn response(
        &self,
        _endpoint: Endpoint,
        _deployment: &Deployment,
        body: Bytes,
    ) -> Result<(Bytes, Option<Usage>), ProviderError> {
        let (body, usage) = translate_response(&body)?;
        Ok((body, Some(usage)))
    }

    fn is_stream(&self, headers: &HeaderMap) -> bool {
        super::openai::OpenAiAdapter.is_stream(headers)
    }

    fn stream_decoder(&self, _deployment: &Deployment) -> Box<dyn StreamDecoder> {
        Box::new(AnthropicStream::new())
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
            let (out, usage) = translate_response(&body).expect("translates");
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
        let client = reqwest::Client::new();
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
        assert_eq!(req.url().as_str(), "http://h/v1/messages");
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
}
