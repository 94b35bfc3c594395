//! Google's generateContent protocol, for the Gemini API (`x-goog-api-key`) and
//! Vertex AI (bearer token; project, location and model in the URL):
//! `:generateContent` and `:streamGenerateContent?alt=sse`.
//!
//! The mapping follows `shared/reference/provider-protocols.md` §5 and §6. Gemini
//! has no tool-call ids and no tool finish reason: the translator makes up `call_…`
//! ids, answers `tool_calls` when a candidate calls functions, and finds a tool
//! result's function name through the earlier assistant call with the same id.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::canonical::{self, ChunkWriter};
use super::{Adapter, Endpoint, StreamDecoder, Translated};
use crate::config::{Deployment, ProviderKind};
use crate::types::chat::{ChatMessage, ChatRequest, EmbeddingsRequest, Role};
use crate::types::reasoning::{self, Carried};
use crate::types::ProviderError;
use crate::types::Usage;

pub struct GeminiAdapter;

/// Upper bound for one stream event, as for SSE.
const MAX_EVENT_BYTES: usize = super::sse::MAX_EVENT_BYTES;

// ---------------------------------------------------------------- request

/// The deployment a body is rendered for, as far as reasoning state goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The upstream model (its generation decides the thinking configuration).
    pub model: &'a str,
    /// This deployment's issuer tag (`types::reasoning::issuer_tag`).
    pub issuer: &'a str,
}

/// The value Google documents for a function call whose thought signature the caller
/// cannot provide (a tool loop begun on another model): it skips the validation.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// The major version of a Gemini model name (`gemini-3-pro-preview` → 3), if it
/// has one.
fn generation(model: &str) -> Option<u32> {
    let rest = model.rsplit('/').next()?.strip_prefix("gemini-")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether the model refuses a tool loop whose function calls lack their thought
/// signatures (Gemini 3 and later).
pub fn requires_signatures(model: &str) -> bool {
    generation(model).is_some_and(|g| g >= 3)
}

/// OpenAI's `reasoning_effort` in Gemini's terms: `thinkingLevel` from Gemini 3 on
/// (two levels every Gemini 3 model takes), a `thinkingBudget` in tokens before it
/// (0 turns thinking off where a model allows it; Pro models need at least 128).
fn thinking_config(effort: &str, model: &str) -> Option<Value> {
    if requires_signatures(model) {
        let level = match effort {
            "none" | "minimal" | "low" => "low",
            "medium" | "high" | "xhigh" => "high",
            _ => return None,
        };
        return Some(json!({"thinkingLevel": level}));
    }
    let pro = model.contains("-pro");
    let budget = match effort {
        "none" | "minimal" if pro => 128,
        "none" | "minimal" => 0,
        "low" => 1024,
        "medium" => 8192,
        "high" | "xhigh" if pro => 32768,
        "high" | "xhigh" => 24576,
        _ => return None,
    };
    Some(json!({"thinkingBudget": budget}))
}

/// The generateContent body for `req` (the model is in the URL). `n > 1` becomes
/// `candidateCount` for plain calls; a stream carries one choice.
pub fn request_body(req: &ChatRequest, stream: bool) -> Result<Value, ProviderError> {
    request_body_for(
        req,
        stream,
        Target {
            model: &req.model,
            issuer: "",
        },
    )
}

/// [`request_body`] for a deployment: its thought signatures restored on the function
/// calls that carried them, the documented skip value where a Gemini 3 model needs a
/// signature it never issued, `reasoning_effort` as its thinking configuration.
pub fn request_body_for(
    req: &ChatRequest,
    stream: bool,
    target: Target<'_>,
) -> Result<Value, ProviderError> {
    if stream {
        canonical::single_choice(req)?;
    }
    // OpenAI tool messages carry only the call id; Gemini wants the function name.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for m in &req.messages {
        for call in m.tool_calls.iter().flatten() {
            names.insert(&call.id, &call.function.name);
        }
    }
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for m in &req.messages {
        match m.role {
            Role::System | Role::Developer => {
                let text = canonical::text_of(m.content.as_ref());
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            Role::User => canonical::push_turn(&mut contents, "user", "parts", user_parts(m)?),
            Role::Assistant => {
                let parts = model_parts(m, req.carried.as_deref(), target);
                canonical::push_turn(&mut contents, "model", "parts", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let Some(name) = names.get(id) else {
                    return Err(ProviderError::Unsupported(format!(
                        "a tool result for `{id}`, which no assistant message called"
                    )));
                };
                let text = canonical::text_of(m.content.as_ref());
                // The convention is {"output": …}; JSON output stays structured.
                let output = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                let part =
                    json!({"functionResponse": {"name": name, "response": {"output": output}}});
                canonical::push_turn(&mut contents, "user", "parts", vec![part]);
            }
            Role::Function => {
                return Err(ProviderError::Unsupported(
                    "the deprecated `function` role".into(),
                ))
            }
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut generation = Map::new();
    if let Some(max) = canonical::max_output(req) {
        generation.insert("maxOutputTokens".into(), json!(max));
    }
    for (openai, google) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = req.extra.get(openai).filter(|v| !v.is_null()) {
            generation.insert(google.into(), v.clone());
        }
    }
    if let Some(stop) = canonical::stop_sequences(req.stop.as_ref()) {
        generation.insert("stopSequences".into(), json!(stop));
    }
    if let Some(n) = req.n.filter(|&n| n > 1) {
        generation.insert("candidateCount".into(), json!(n));
    }
    if let Some(rf) = &req.response_format {
        match rf.kind.as_str() {
            "json_object" => {
                generation.insert("responseMimeType".into(), json!("application/json"));
            }
            "json_schema" => {
                generation.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = rf.json_schema.as_ref().and_then(|s| s.extra.get("schema")) {
                    generation.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {}
        }
    }
    if let Some(thinking) = req
        .extra
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .and_then(|effort| thinking_config(effort, target.model))
    {
        generation.insert("thinkingConfig".into(), thinking);
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let declarations: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.function.as_ref())
            .map(|f| {
                let mut decl = Map::new();
                decl.insert("name".into(), json!(f.name));
                if let Some(d) = &f.description {
                    decl.insert("description".into(), json!(d));
                }
                if let Some(p) = &f.parameters {
                    // `parameters` takes only an OpenAPI subset; this takes JSON Schema.
                    decl.insert("parametersJsonSchema".into(), p.clone());
                }
                Value::Object(decl)
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        let config = match &req.tool_choice {
            Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
            Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
            Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
            Some(Value::Object(o)) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(|name| json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            _ => None,
        };
        if let Some(c) = config {
            body.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
        }
    }
    Ok(Value::Object(body))
}

/// The image type a URL's extension suggests.
fn mime_of_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    }
}

fn user_parts(m: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut parts = Vec::new();
    for part in canonical::parts_of(m) {
        match part.kind.as_str() {
            "text" => {
                let text = part.text.unwrap_or_default();
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
            }
            "image_url" => {
                let Some(image) = part.image_url else {
                    continue;
                };
                parts.push(match canonical::data_url(&image.url) {
                    Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
                    None => json!({"fileData": {"mimeType": mime_of_url(&image.url), "fileUri": image.url}}),
                });
            }
            other => {
                return Err(ProviderError::Unsupported(format!(
                    "content parts of type `{other}`"
                )))
            }
        }
    }
    Ok(parts)
}

fn model_parts(m: &ChatMessage, carried: Option<&Carried>, target: Target<'_>) -> Vec<Value> {
    let mut parts = Vec::new();
    let text = canonical::text_of(m.content.as_ref());
    if !text.is_empty() {
        parts.push(json!({"text": text}));
    }
    let mut signed_first = None;
    for call in m.tool_calls.iter().flatten() {
        let mut part = json!({"functionCall": {
            "name": call.function.name,
            "args": canonical::arguments_object(&call.function.arguments),
        }});
        // Only this deployment's own signatures: another model's fail validation.
        let own = carried.and_then(|c| c.signature(&call.id, target.issuer));
        if let (Some(sig), Some(p)) = (own, part.as_object_mut()) {
            p.insert("thoughtSignature".into(), json!(sig));
        }
        signed_first.get_or_insert(own.is_some());
        parts.push(part);
    }
    // The first call of a turn must be signed for Gemini 3; a loop begun elsewhere
    // has no signature from this model, so it gets the documented skip value.
    if signed_first == Some(false) && requires_signatures(target.model) {
        if let Some(first) = parts
            .iter_mut()
            .find(|p| p.get("functionCall").is_some())
            .and_then(Value::as_object_mut)
        {
            first.insert("thoughtSignature".into(), json!(SKIP_SIGNATURE));
        }
    }
    parts
}

/// The URL of a generate call at this deployment.
pub fn url(kind: &ProviderKind, model: &str, stream: bool) -> Option<String> {
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    match kind {
        ProviderKind::Gemini {
            base_url,
            api_version,
        } => Some(format!("{base_url}/{api_version}/models/{model}:{method}")),
        ProviderKind::Vertex {
            base_url,
            api_version,
            project,
            location,
        } => Some(format!(
            "{base_url}/{api_version}/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}"
        )),
        _ => None,
    }
}

// ---------------------------------------------------------------- response

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    fn to_usage(self) -> Usage {
        Usage {
            // `promptTokenCount` already includes the cached tokens.
            prompt_tokens: self
                .prompt_token_count
                .saturating_add(self.tool_use_prompt_token_count),
            completion_tokens: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count),
            cached_tokens: self.cached_content_token_count,
            reasoning_tokens: self.thoughts_token_count,
            cache_write_tokens: 0,
            estimated: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<FunctionCall>,
    #[serde(default)]
    thought_signature: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    name: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// `finishReason` → OpenAI `finish_reason`; a candidate that calls functions
/// finishes with `tool_calls` (Gemini says `STOP`).
pub fn finish_reason(reason: &str, called_functions: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "LANGUAGE"
        | "OTHER"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "IMAGE_OTHER"
        | "NO_IMAGE" => "content_filter",
        _ if called_functions => "tool_calls",
        _ => "stop",
    }
}

/// A made-up tool-call id (Gemini's calls usually have none).
fn new_call_id() -> String {
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// The text and calls of a candidate's parts; thought parts are left out. When the
/// calls are signed, every call id of the candidate carries `issuer` (and its
/// signature, if it has one), so the next turn can give them back to this model.
fn read_parts(
    parts: Vec<Part>,
    issuer: &str,
    make_id: &mut dyn FnMut() -> String,
) -> (String, Vec<(String, String, String)>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let signed = !issuer.is_empty()
        && parts
            .iter()
            .any(|p| p.function_call.is_some() && p.thought_signature.is_some());
    for part in parts {
        if part.thought == Some(true) {
            continue;
        }
        if let Some(t) = part.text {
            text.push_str(&t);
        }
        if let Some(call) = part.function_call {
            let mut id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(&mut *make_id);
            if signed {
                id = reasoning::encode_call_id(&id, issuer, part.thought_signature.as_deref());
            }
            let args = call
                .args
                .as_ref()
                .map_or_else(|| "{}".into(), Value::to_string);
            calls.push((id, call.name, args));
        }
    }
    (text, calls)
}

/// A generateContent response → an OpenAI `chat.completion` body and its usage.
pub fn translate_response(
    body: &[u8],
    model: &str,
    issuer: &str,
    make_id: &mut dyn FnMut() -> String,
) -> Result<(Bytes, Usage), ProviderError> {
    let res: GenerateResponse = serde_json::from_slice(body)
        .map_err(|e| canonical::protocol("generateContent response", e))?;
    let usage = res.usage_metadata.unwrap_or_default().to_usage();
    let id = format!("chatcmpl-{}", res.response_id.unwrap_or_else(&mut *make_id));
    let model = res.model_version.as_deref().unwrap_or(model);
    if res.candidates.is_empty() {
        // The prompt was blocked: no candidates, a block reason.
        let finish = if res.prompt_feedback.and_then(|f| f.block_reason).is_some() {
            "content_filter"
        } else {
            "stop"
        };
        let body =
            canonical::completion(&id, model, Some(String::new()), Vec::new(), finish, &usage)?;
        return Ok((body, usage));
    }
    let mut candidates = res.candidates;
    candidates.sort_by_key(|c| c.index);
    let choices = candidates
        .into_iter()
        .map(|candidate| {
            let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
            let (text, calls) = read_parts(parts, issuer, make_id);
            let finish_reason = finish_reason(
                candidate.finish_reason.as_deref().unwrap_or("STOP"),
                !calls.is_empty(),
            );
            let has_text = !text.is_empty() || calls.is_empty();
            canonical::Choice {
                text: has_text.then_some(text),
                tool_calls: calls
                    .into_iter()
                    .map(|(id, name, args)| canonical::tool_call(&id, &name, args))
                    .collect(),
                finish_reason,
                reasoning: canonical::Reasoning::default(),
            }
        })
        .collect();
    let body = canonical::completion_choices(&id, model, choices, &usage)?;
    Ok((body, usage))
}

// ---------------------------------------------------------------- stream

/// Translates one `streamGenerateContent?alt=sse` stream into OpenAI chunks. Events
/// are `data: {GenerateContentResponse}`; an error arrives as raw JSON without a
/// `data:` prefix, which is why this reads the bytes itself rather than through the
/// SSE decoder (which would skip lines that are not fields).
pub struct GeminiStream {
    buf: BytesMut,
    out: ChunkWriter,
    usage: UsageMetadata,
    called_functions: bool,
    done: bool,
    issuer: String,
    make_id: Box<dyn FnMut() -> String + Send>,
}

impl GeminiStream {
    pub fn new(model: &str, issuer: String) -> Self {
        let mut stream = Self::with_ids(model, Box::new(new_call_id));
        stream.issuer = issuer;
        stream
    }

    /// A stream whose made-up ids come from `make_id` (tests use fixed ones).
    pub fn with_ids(model: &str, make_id: Box<dyn FnMut() -> String + Send>) -> Self {
        let mut out = ChunkWriter::new();
        model.clone_into(&mut out.model);
        GeminiStream {
            buf: BytesMut::new(),
            out,
            usage: UsageMetadata::default(),
            called_functions: false,
            done: false,
            issuer: String::new(),
            make_id,
        }
    }

    /// The next complete item in the buffer: a `data:` payload, or a raw JSON
    /// document (an error).
    fn next_raw(&mut self) -> Result<Option<(bool, Bytes)>, ProviderError> {
        let skip = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        self.buf.advance(skip);
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(ProviderError::Protocol(
                "a stream event is too large".into(),
            ));
        }
        if self.buf.len() < 5 && b"data:".starts_with(&self.buf) {
            return Ok(None); // the start of a `data:` line
        }
        if self.buf.starts_with(b"data:") {
            // An event ends at a blank line (LF LF, or CRLF CRLF as Google sends it).
            let end = find(&self.buf, b"\n\n")
                .map(|i| (i, 2))
                .into_iter()
                .chain(find(&self.buf, b"\r\n\r\n").map(|i| (i, 4)))
                .min();
            let Some((at, len)) = end else {
                return Ok(None);
            };
            let event = self.buf.split_to(at).freeze();
            self.buf.advance(len);
            let mut data = Vec::with_capacity(event.len());
            for line in event.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(v) = line.strip_prefix(b"data:") {
                    if !data.is_empty() {
                        data.push(b'\n');
                    }
                    data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
                }
            }
            return Ok(Some((false, Bytes::from(data))));
        }
        if self.buf.starts_with(b"{") || self.buf.starts_with(b"[") {
            let Some(end) = json_end(&self.buf) else {
                return Ok(None);
            };
            return Ok(Some((true, self.buf.split_to(end).freeze())));
        }
        if self.buf.starts_with(b":") {
            // An SSE comment line.
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                return Ok(None);
            };
            self.buf.advance(nl + 1);
            return self.next_raw();
        }
        Err(ProviderError::Protocol(
            "unexpected bytes in the stream".into(),
        ))
    }

    fn on_chunk(&mut self, data: &[u8]) -> Result<(), ProviderError> {
        let chunk: GenerateResponse =
            serde_json::from_slice(data).map_err(|e| canonical::protocol("stream chunk", e))?;
        if let Some(id) = chunk.response_id {
            self.out.id = format!("chatcmpl-{id}");
        } else if self.out.id.is_empty() {
            self.out.id = format!("chatcmpl-{}", (self.make_id)());
        }
        if let Some(u) = chunk.usage_metadata {
            self.usage = u;
        }
        self.out.role();
        let Some(candidate) = chunk.candidates.into_iter().next() else {
            if chunk.prompt_feedback.and_then(|f| f.block_reason).is_some() {
                self.out.finish("content_filter");
                self.out.usage_and_done(self.usage.to_usage());
                self.done = true;
            }
            return Ok(());
        };
        let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
        let (text, calls) = read_parts(parts, &self.issuer, &mut *self.make_id);
        self.out.content(&text);
        for (id, name, args) in calls {
            self.called_functions = true;
            // Gemini sends a call whole: one delta with id, name and all arguments.
            self.out.tool_start(&id, &name, &args);
        }
        if let Some(reason) = candidate.finish_reason {
            self.out
                .finish(finish_reason(&reason, self.called_functions));
            self.out.usage_and_done(self.usage.to_usage());
            self.done = true;
        }
        Ok(())
    }

    fn on_error(&mut self, raw: &[u8]) {
        let error = serde_json::from_slice::<ErrorEnvelope>(raw)
            .map(|e| e.error)
            .unwrap_or_default();
        let (kind, code) = match error.status.as_str() {
            "RESOURCE_EXHAUSTED" => ("rate_limit_error", "rate_limit_exceeded"),
            "UNAVAILABLE" => ("server_error", "upstream_overloaded"),
            "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => {
                ("invalid_request_error", "upstream_rejected")
            }
            _ => ("server_error", "upstream_error"),
        };
        self.out.error(kind, code, &error.message);
        self.done = true;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where the JSON value at the start of `bytes` ends, when it is complete.
fn json_end(bytes: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

impl StreamDecoder for GeminiStream {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Result<Option<Translated>, ProviderError> {
        loop {
            if let Some(item) = self.out.queue.pop_front() {
                return Ok(Some(item));
            }
            if self.done {
                return Ok(None);
            }
            match self.next_raw()? {
                None => return Ok(None),
                Some((false, data)) => self.on_chunk(&data)?,
                Some((true, raw)) => self.on_error(&raw),
            }
        }
    }

    fn has_partial(&self) -> bool {
        !self.done && self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }
}

// ---------------------------------------------------------------- errors

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: WireError,
}

#[derive(Debug, Default, Deserialize)]
struct WireError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// A Google error answer. A refused API key (400 `API_KEY_INVALID`) is our
/// credential's fault, so it counts as 401; `NOT_FOUND`, a 404 or a redirect is the
/// deployment's misconfiguration; `RetryInfo.retryDelay` becomes
/// `retry-after` when the header is missing.
pub fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let error = serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let reason = |r: &str| error.details.iter().any(|d| d["reason"] == r);
    // NOT_FOUND: no such model, or no such project or location on Vertex AI.
    let message = (!error.message.is_empty()).then_some(error.message.as_str());
    if error.status == "NOT_FOUND" {
        return ProviderError::misconfigured(status, message);
    }
    if let Some(e) = ProviderError::misconfigured_status(status, message) {
        return e;
    }
    let status = match error.status.as_str() {
        _ if reason("API_KEY_INVALID") => StatusCode::UNAUTHORIZED,
        "RESOURCE_EXHAUSTED" => StatusCode::TOO_MANY_REQUESTS,
        "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "PERMISSION_DENIED" => StatusCode::FORBIDDEN,
        _ => status,
    };
    let retry_after = headers.get(RETRY_AFTER).cloned().or_else(|| {
        error.details.iter().find_map(|d| {
            // Read by the one parser of provider durations, which refuses what a
            // `Duration` cannot hold (`1e300s`, `NaNs`, other scripts' digits).
            let wait = crate::types::time::parse_duration(d.get("retryDelay")?.as_str()?)?;
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Some(HeaderValue::from(secs.max(1)))
        })
    });
    ProviderError::Status {
        status,
        retry_after,
        message: (!error.message.is_empty()).then_some(error.message),
        param: None,
    }
}

// ---------------------------------------------------------------- adapter

/// The issuer tag of a Gemini or Vertex deployment's signatures.
fn issuer_of(deployment: &Deployment) -> &str {
    super::issuer_of(deployment).unwrap_or_default()
}

impl Adapter for GeminiAdapter {
    fn chat_body(
        &self,
        req: &mut ChatRequest,
        deployment: &Deployment,
        stream: bool,
    ) -> Result<Vec<u8>, ProviderError> {
        let issuer = issuer_of(deployment);
        let target = Target {
            model: &deployment.upstream_model,
            issuer,
        };
        canonical::to_body(&request_body_for(req, stream, target)?)
    }

    fn embeddings_body(
        &self,
        _req: &mut EmbeddingsRequest,
        _deployment: &Deployment,
    ) -> Result<Vec<u8>, ProviderError> {
        Err(ProviderError::Unsupported(
            "embeddings (not through generateContent)".into(),
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
        let kind = &deployment.provider.kind;
        let Some(url) = url(kind, &deployment.upstream_model, stream) else {
            return Err(ProviderError::Unsupported(
                "not a Gemini or Vertex provider".into(),
            ));
        };
        let mut req = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        // A service account's or ADC's access token: OAuth2 for Vertex and Gemini alike.
        if let Some(super::auth::Credential::Bearer(token)) = credential {
            return Ok(req.bearer_auth(token.expose()));
        }
        if let Some(key) = &deployment.provider.api_key {
            req = match kind {
                ProviderKind::Vertex { .. } => req.bearer_auth(key.expose()),
                _ => req.header("x-goog-api-key", key.expose()),
            };
        }
        Ok(req)
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
        let (body, usage) = translate_response(
            &body,
            &deployment.upstream_model,
            issuer_of(deployment),
            &mut new_call_id,
        )?;
        Ok((body, Some(usage)))
    }

    fn is_stream(&self, headers: &HeaderMap) -> bool {
        super::openai::OpenAiAdapter.is_stream(headers)
    }

    fn stream_decoder(&self, deployment: &Deployment) -> Box<dyn StreamDecoder> {
        Box::new(GeminiStream::new(
            &deployment.upstream_model,
            issuer_of(deployment).to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::canonical::golden;

    fn counter() -> Box<dyn FnMut() -> String + Send> {
        let mut n = 0;
        Box::new(move || {
            n += 1;
            format!("call_test{n}")
        })
    }

    #[test]
    fn golden_requests() {
        for (name, case) in golden::fixtures("gemini", "request_") {
            let req: ChatRequest =
                serde_json::from_value(case["openai"].clone()).expect("openai request");
            let stream = case["stream"].as_bool().unwrap_or(false);
            assert_eq!(
                request_body(&req, stream).expect("translates"),
                case["native"],
                "{name}"
            );
        }
    }

    #[test]
    fn golden_responses() {
        for (name, case) in golden::fixtures("gemini", "response_") {
            let body = serde_json::to_vec(&case["native"]).expect("bytes");
            let (out, _) = translate_response(&body, "m", "", &mut counter()).expect("translates");
            let out: Value = serde_json::from_slice(&out).expect("json");
            assert_eq!(golden::without_created(out), case["openai"], "{name}");
        }
    }

    #[test]
    fn golden_streams() {
        for (name, case) in golden::fixtures("gemini", "stream_") {
            let text = case["native"].as_str().expect("native stream text");
            let items = golden::decode_every_way(
                &|| Box::new(GeminiStream::with_ids("m", counter())),
                text.as_bytes(),
            );
            assert_eq!(Value::Array(items), case["openai"], "{name}");
        }
    }

    #[test]
    fn urls_and_auth_per_kind() {
        let gemini = golden::deployment(
            ProviderKind::Gemini {
                base_url: "http://h".into(),
                api_version: "v1beta".into(),
            },
            "gemini-2.5-flash",
        );
        let vertex = golden::deployment(
            ProviderKind::Vertex {
                base_url: "http://v".into(),
                api_version: "v1".into(),
                project: "p".into(),
                location: "us-central1".into(),
            },
            "gemini-2.5-pro",
        );
        let client = crate::providers::upstream::test_client();
        let req = GeminiAdapter
            .request(
                &client,
                &gemini,
                Endpoint::ChatCompletions,
                true,
                Bytes::new(),
                None,
            )
            .expect("request")
            .build()
            .expect("built");
        assert_eq!(
            req.uri().to_string(),
            "http://h/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(req.headers()["x-goog-api-key"], "k-123");
        assert!(!req.headers().contains_key("authorization"));
        let req = GeminiAdapter
            .request(
                &client,
                &vertex,
                Endpoint::ChatCompletions,
                false,
                Bytes::new(),
                None,
            )
            .expect("request")
            .build()
            .expect("built");
        assert_eq!(
            req.uri().to_string(),
            "http://v/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(req.headers()["authorization"], "Bearer k-123");
    }

    #[test]
    fn unknown_models_and_redirects_are_misconfigurations() {
        let h = HeaderMap::new();
        let cases = [
            ("NOT_FOUND", status_error(StatusCode::NOT_FOUND, &h, br#"{"error":{"code":404,"message":"models/gemini-9 is not found","status":"NOT_FOUND"}}"#)),
            ("bare 404", status_error(StatusCode::NOT_FOUND, &h, b"")),
            ("redirect", status_error(StatusCode::MOVED_PERMANENTLY, &h, b"")),
        ];
        for (what, e) in &cases {
            assert_eq!(e.class(), "misconfigured", "{what}: {e:?}");
            assert!(e.retryable(), "{what}: another deployment may serve it");
            assert!(!e.may_pass(), "{what}: no second round");
        }
    }

    #[test]
    fn errors_map_status_and_retry_delay() {
        let exhausted = status_error(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2.5s"}]}}"#,
        );
        assert!(exhausted.retryable());
        assert_eq!(exhausted.class(), "rate_limited");
        assert!(
            matches!(&exhausted, ProviderError::Status { retry_after: Some(v), .. } if v == "3")
        );
        // Delays no `Duration` holds are dropped, not passed on as a header.
        for delay in [
            "1e300s",
            "NaNs",
            "infs",
            "-5s",
            "٣s",
            "99999999999999999999999s",
        ] {
            let body = format!(
                r#"{{"error":{{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{{"retryDelay":"{delay}"}}]}}}}"#
            );
            let e = status_error(
                StatusCode::TOO_MANY_REQUESTS,
                &HeaderMap::new(),
                body.as_bytes(),
            );
            assert!(
                matches!(
                    &e,
                    ProviderError::Status {
                        retry_after: None,
                        ..
                    }
                ),
                "{delay}: {e:?}"
            );
        }
        let bad_key = status_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#,
        );
        assert_eq!(bad_key.class(), "upstream_auth");
        let invalid = status_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":{"code":400,"message":"* GenerateContentRequest.contents: contents is not specified","status":"INVALID_ARGUMENT"}}"#,
        );
        assert!(!invalid.retryable());
        assert_eq!(
            status_error(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"{}").class(),
            "overloaded"
        );
    }

    #[test]
    fn a_tool_result_without_its_call_is_refused() {
        let req: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "call_x", "content": "1"}
        ]}))
        .expect("request");
        assert!(matches!(
            request_body(&req, false),
            Err(ProviderError::Unsupported(_))
        ));
    }

    #[test]
    fn several_choices_only_without_streaming() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3
        }))
        .expect("request");
        let body = request_body(&req, false).expect("plain");
        assert_eq!(body["generationConfig"]["candidateCount"], 3);
        assert!(matches!(
            request_body(&req, true),
            Err(ProviderError::Unsupported(_))
        ));
    }

    /// A two-call answer of a Gemini 3 model: the first call signed, as Google does
    /// for parallel calls.
    fn signed_answer() -> Vec<u8> {
        serde_json::to_vec(&json!({"candidates": [{"index": 0, "finishReason": "STOP",
            "content": {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
                 "thoughtSignature": "c2lnLW9uZQ=="},
                {"functionCall": {"name": "time", "args": {"zone": "CET"}}}
            ]}}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3,
                "thoughtsTokenCount": 7}}))
        .expect("json")
    }

    /// The follow-up request of a client that sends the calls back as it got them.
    fn follow_up(calls: &Value, effort: Option<&str>) -> ChatRequest {
        let ids: Vec<&str> = calls
            .as_array()
            .expect("calls")
            .iter()
            .map(|c| c["id"].as_str().expect("id"))
            .collect();
        let mut body = json!({"model": "m", "messages": [
            {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": ids[0], "content": "sunny"},
            {"role": "tool", "tool_call_id": ids[1], "content": "noon"}
        ]});
        if let Some(e) = effort {
            body["reasoning_effort"] = json!(e);
        }
        let mut req: ChatRequest = serde_json::from_value(body).expect("request");
        reasoning::extract(&mut req);
        req
    }

    #[test]
    fn thought_signatures_ride_in_the_ids_and_come_back_to_their_model_only() {
        let issuer = reasoning::issuer_tag("gemini", "gemini-3-pro-preview");
        let (out, usage) = translate_response(
            &signed_answer(),
            "gemini-3-pro-preview",
            &issuer,
            &mut counter(),
        )
        .expect("translates");
        assert_eq!(usage.reasoning_tokens, 7);
        let out: Value = serde_json::from_slice(&out).expect("json");
        let calls = &out["choices"][0]["message"]["tool_calls"];
        let first = calls[0]["id"].as_str().expect("id");
        assert_eq!(
            reasoning::decode_call_id(first),
            Some((
                "call_test2",
                issuer.as_str(),
                Some("c2lnLW9uZQ==".to_owned())
            ))
        );
        // The unsigned call names the issuer too, with no signature.
        let second = calls[1]["id"].as_str().expect("id");
        assert_eq!(
            reasoning::decode_call_id(second),
            Some(("call_test3", issuer.as_str(), None))
        );

        let req = follow_up(calls, None);
        // Back to the model that signed: the signature in place, plain ids and names.
        let own = Target {
            model: "gemini-3-pro-preview",
            issuer: &issuer,
        };
        let body = request_body_for(&req, false, own).expect("renders");
        let parts = &body["contents"][1]["parts"];
        assert_eq!(parts[0]["thoughtSignature"], "c2lnLW9uZQ==");
        assert!(parts[1].get("thoughtSignature").is_none());
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"]["name"],
            "weather"
        );
        assert_eq!(
            body["contents"][2]["parts"][1]["functionResponse"]["name"],
            "time"
        );
        assert!(!body.to_string().contains(".sy1."));

        // Another Gemini 3 model: the foreign signature stays out and the documented
        // skip value stands in for it on the first call.
        let other = reasoning::issuer_tag("gemini", "gemini-3-flash-preview");
        let body = request_body_for(
            &req,
            false,
            Target {
                model: "gemini-3-flash-preview",
                issuer: &other,
            },
        )
        .expect("renders");
        let parts = &body["contents"][1]["parts"];
        assert_eq!(parts[0]["thoughtSignature"], SKIP_SIGNATURE);
        assert!(parts[1].get("thoughtSignature").is_none());
        assert!(!body.to_string().contains("c2lnLW9uZQ=="));

        // A model before Gemini 3 needs none and gets none.
        let old = reasoning::issuer_tag("gemini", "gemini-2.5-flash");
        let body = request_body_for(
            &req,
            false,
            Target {
                model: "gemini-2.5-flash",
                issuer: &old,
            },
        )
        .expect("renders");
        assert!(!body.to_string().contains("thoughtSignature"));
    }

    #[test]
    fn a_stream_carries_the_signature_in_the_call_id() {
        let issuer = reasoning::issuer_tag("vertex", "gemini-3-pro");
        let event = json!({"candidates": [{"index": 0, "finishReason": "STOP",
            "content": {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {}}, "thoughtSignature": "c2ln"}]}}]});
        let mut stream = GeminiStream::with_ids("gemini-3-pro", counter());
        stream.issuer = issuer.clone();
        stream.push(format!("data: {event}\r\n\r\n").as_bytes());
        let mut id = None;
        while let Some(item) = stream.next().expect("decodes") {
            if let Translated::Chunk { data, .. } = item {
                let chunk: Value = serde_json::from_slice(&data).expect("json");
                if let Some(i) = chunk["choices"][0]["delta"]["tool_calls"][0]["id"].as_str() {
                    id = Some(i.to_owned());
                }
            }
        }
        let id = id.expect("a tool call");
        assert_eq!(
            reasoning::decode_call_id(&id),
            Some(("call_test2", issuer.as_str(), Some("c2ln".to_owned())))
        );
    }

    fn with_effort(effort: Option<&str>) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let Some(e) = effort {
            body["reasoning_effort"] = json!(e);
        }
        serde_json::from_value(body).expect("request")
    }

    #[test]
    fn reasoning_effort_becomes_the_thinking_configuration_of_the_generation() {
        let req = with_effort(Some("medium"));
        let config = |model: &str| {
            request_body_for(&req, false, Target { model, issuer: "" }).expect("renders")
                ["generationConfig"]["thinkingConfig"]
                .clone()
        };
        assert_eq!(
            config("gemini-3-pro-preview"),
            json!({"thinkingLevel": "high"})
        );
        assert_eq!(config("gemini-2.5-flash"), json!({"thinkingBudget": 8192}));
        let low = with_effort(Some("minimal"));
        let render = |model: &str| {
            request_body_for(&low, false, Target { model, issuer: "" }).expect("renders")
                ["generationConfig"]["thinkingConfig"]
                .clone()
        };
        assert_eq!(render("gemini-3-flash"), json!({"thinkingLevel": "low"}));
        assert_eq!(render("gemini-2.5-flash"), json!({"thinkingBudget": 0}));
        assert_eq!(render("gemini-2.5-pro"), json!({"thinkingBudget": 128}));
        // No effort, no thinking configuration: the model's default stands.
        let plain = with_effort(None);
        let body = request_body_for(
            &plain,
            false,
            Target {
                model: "gemini-3-pro",
                issuer: "",
            },
        )
        .expect("renders");
        assert!(body.get("generationConfig").is_none());
    }
}
