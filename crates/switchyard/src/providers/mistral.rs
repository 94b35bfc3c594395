//! Mistral's chat API: OpenAI's wire protocol (the URL, auth, usage and SSE reading
//! are the OpenAI adapter's), with Mistral's differences translated here:
//! - `tool_choice: "required"` is `"any"`;
//! - tool-call ids are 9 alphanumerics, and ids sent back must be too: other ids are
//!   mapped to 9 characters, the same id always to the same characters;
//! - `seed` is `random_seed`, `max_completion_tokens` is `max_tokens`, and
//!   OpenAI-only fields Mistral refuses (`stream_options`, `user`…) are left out;
//! - a stream sends each tool call whole and puts `usage` on its last chunk (the one
//!   with the finish reason); the translator numbers the calls and moves the usage
//!   into a `choices: []` chunk of its own, as OpenAI streams do.

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::openai::{self, OpenAiAdapter};
use super::sse::SseDecoder;
use super::{Adapter, Endpoint, StreamDecoder, Translated};
use crate::config::Deployment;
use crate::types::chat::{ChatRequest, EmbeddingsRequest};
use crate::types::ProviderError;
use crate::types::Usage;

pub struct MistralAdapter;

/// OpenAI request fields Mistral's API does not take.
const DROPPED: &[&str] = &[
    "stream_options",
    "user",
    "store",
    "metadata",
    "service_tier",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "modalities",
    "audio",
    "reasoning_effort",
    "safety_identifier",
    "prompt_cache_key",
];

/// A tool-call id as Mistral accepts it: 9 characters of `[a-zA-Z0-9]`.
pub fn tool_call_id(id: &str) -> String {
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return id.to_owned();
    }
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    Sha256::digest(id.as_bytes())
        .iter()
        .take(9)
        .filter_map(|b| ALPHABET.get(usize::from(*b) % ALPHABET.len()))
        .map(|&c| char::from(c))
        .collect()
}

/// The Mistral request body for `req`.
pub fn request_body(req: &ChatRequest, model: &str) -> Result<Value, ProviderError> {
    let mut body = serde_json::to_value(req).map_err(|e| ProviderError::Protocol(e.to_string()))?;
    let Some(o) = body.as_object_mut() else {
        return Err(ProviderError::Protocol("request is not an object".into()));
    };
    o.insert("model".into(), json!(model));
    for field in DROPPED {
        o.remove(*field);
    }
    if let Some(seed) = o.remove("seed") {
        o.insert("random_seed".into(), seed);
    }
    if let Some(max) = o.remove("max_completion_tokens") {
        o.insert("max_tokens".into(), max);
    }
    if o.get("tool_choice").and_then(Value::as_str) == Some("required") {
        o.insert("tool_choice".into(), json!("any"));
    }
    let messages = o.get_mut("messages").and_then(Value::as_array_mut);
    for m in messages
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        // Other providers' reasoning state (see `types::reasoning`) is not Mistral's.
        m.remove("thinking_blocks");
        m.remove("reasoning_content");
        remap_id(m, "tool_call_id");
        let calls = m.get_mut("tool_calls").and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten().filter_map(Value::as_object_mut) {
            remap_id(call, "id");
        }
    }
    Ok(body)
}

/// Replaces the string id under `field` by its Mistral form ([`tool_call_id`]).
fn remap_id(o: &mut serde_json::Map<String, Value>, field: &str) {
    if let Some(id) = o.get_mut(field) {
        if let Some(s) = id.as_str() {
            *id = json!(tool_call_id(s));
        }
    }
}

/// Translates a Mistral stream into OpenAI chunks.
pub struct MistralStream {
    sse: SseDecoder,
    /// Tool calls seen so far; the next one gets this `index`.
    tool_calls: u64,
    pending: std::collections::VecDeque<Translated>,
}

impl MistralStream {
    pub fn new() -> Self {
        MistralStream {
            sse: SseDecoder::new(),
            tool_calls: 0,
            pending: std::collections::VecDeque::new(),
        }
    }

    fn on_event(&mut self, data: Bytes) -> Result<(), ProviderError> {
        if let Some(error) = stream_error(&data) {
            self.pending.push_back(Translated::Error(error));
            return Ok(());
        }
        let item = openai::translate_chunk(data)?;
        let Translated::Chunk {
            data,
            has_choices: true,
            usage,
        } = item
        else {
            // [DONE], an error, or a chunk without choices: as OpenAI's.
            self.pending.push_back(item);
            return Ok(());
        };
        let mut chunk: Value = serde_json::from_slice(&data)
            .map_err(|e| ProviderError::Protocol(format!("stream chunk: {e}")))?;
        // The chunk is the upstream's: any level may be of another JSON type than
        // expected, and such levels are passed on untouched (indexing a `Value`
        // mutably panics on anything but an object).
        let choices = chunk.get_mut("choices").and_then(Value::as_array_mut);
        for choice in choices.into_iter().flatten() {
            let calls = choice
                .get_mut("delta")
                .and_then(|d| d.get_mut("tool_calls"))
                .and_then(Value::as_array_mut);
            for call in calls.into_iter().flatten().filter_map(Value::as_object_mut) {
                // Mistral sends every call whole, each with its id.
                if call.get("id").is_some_and(Value::is_string) {
                    call.insert("index".into(), json!(self.tool_calls));
                    self.tool_calls += 1;
                }
                if call.get("type").is_none_or(Value::is_null) {
                    call.insert("type".into(), json!("function"));
                }
            }
        }
        let usage_json = chunk.as_object_mut().and_then(|o| o.remove("usage"));
        self.pending.push_back(Translated::Chunk {
            data: Bytes::from(chunk.to_string()),
            has_choices: true,
            usage: None,
        });
        if let (Some(usage), Some(usage_json)) = (usage, usage_json.filter(|u| !u.is_null())) {
            let usage_chunk = json!({
                "id": chunk.get("id"),
                "object": "chat.completion.chunk",
                "created": chunk.get("created"),
                "model": chunk.get("model"),
                "choices": [],
                "usage": usage_json,
            });
            self.pending.push_back(Translated::Chunk {
                data: Bytes::from(usage_chunk.to_string()),
                has_choices: false,
                usage: Some(usage),
            });
        }
        Ok(())
    }
}

impl Default for MistralStream {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder for MistralStream {
    fn push(&mut self, bytes: &[u8]) {
        self.sse.push(bytes);
    }

    fn next(&mut self) -> Result<Option<Translated>, ProviderError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            match self.sse.next_event() {
                Ok(Some(event)) => self.on_event(event.data)?,
                Ok(None) => return Ok(None),
                Err(e) => return Err(ProviderError::Protocol(e.to_string())),
            }
        }
    }

    fn has_partial(&self) -> bool {
        self.sse.has_partial()
    }
}

/// Mistral's error body sent as a stream event (no `choices`; `"object": "error"`, or
/// only a `message`) → an OpenAI error event.
fn stream_error(data: &[u8]) -> Option<Bytes> {
    if !data.starts_with(b"{") {
        return None;
    }
    let v: Value = serde_json::from_slice(data).ok()?;
    let is_error = v.get("choices").is_none()
        && v.get("error").is_none()
        && (v.get("object").is_some_and(|o| o == "error")
            || v.get("message").is_some()
            || v.get("detail").is_some());
    if !is_error {
        return None;
    }
    let message = match v.get("message").or_else(|| v.get("detail")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "Mistral reported an error.".to_owned(),
    };
    let (kind, code) = match v.get("type").and_then(Value::as_str) {
        _ if message.contains("rate limit") => ("rate_limit_error", "rate_limit_exceeded"),
        Some("invalid_request_error") => ("invalid_request_error", "upstream_rejected"),
        _ => ("server_error", "upstream_error"),
    };
    Some(super::canonical::error_event(kind, code, &message))
}

/// A Mistral error answer: `{"object":"error","message",…}`, `{"detail":…}` (401,
/// 422) or `{"message"}` (429). A 422 (a field missing or invalid) is the client's
/// 400; a 404 or a redirect is the deployment's misconfiguration.
pub fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    let message = parsed
        .get("message")
        .and_then(text)
        .or_else(|| parsed.get("detail").and_then(text));
    if let Some(e) = ProviderError::misconfigured_status(status, message.as_deref()) {
        return e;
    }
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
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

impl Adapter for MistralAdapter {
    fn chat_body(
        &self,
        req: &mut ChatRequest,
        deployment: &Deployment,
        _stream: bool,
    ) -> Result<Vec<u8>, ProviderError> {
        super::canonical::to_body(&request_body(req, &deployment.upstream_model)?)
    }

    fn embeddings_body(
        &self,
        req: &mut EmbeddingsRequest,
        deployment: &Deployment,
    ) -> Result<Vec<u8>, ProviderError> {
        OpenAiAdapter.embeddings_body(req, deployment)
    }

    fn request(
        &self,
        client: &super::upstream::Client,
        deployment: &Deployment,
        endpoint: Endpoint,
        _stream: bool,
        body: Bytes,
        credential: Option<&super::auth::Credential>,
    ) -> Result<super::upstream::RequestBuilder, ProviderError> {
        Ok(openai::build(
            client, deployment, endpoint, body, credential,
        ))
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        status_error(status, headers, body)
    }

    fn response(
        &self,
        endpoint: Endpoint,
        deployment: &Deployment,
        body: Bytes,
    ) -> Result<(Bytes, Option<Usage>), ProviderError> {
        OpenAiAdapter.response(endpoint, deployment, body)
    }

    fn is_stream(&self, headers: &HeaderMap) -> bool {
        OpenAiAdapter.is_stream(headers)
    }

    fn stream_decoder(&self, _deployment: &Deployment) -> Box<dyn StreamDecoder> {
        Box::new(MistralStream::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;
    use crate::providers::canonical::golden;

    #[test]
    fn golden_requests() {
        for (name, case) in golden::fixtures("mistral", "request_") {
            let req: ChatRequest =
                serde_json::from_value(case["openai"].clone()).expect("openai request");
            let model = case["model"].as_str().expect("model");
            assert_eq!(
                request_body(&req, model).expect("translates"),
                case["native"],
                "{name}"
            );
        }
    }

    #[test]
    fn golden_streams() {
        for (name, case) in golden::fixtures("mistral", "stream_") {
            let text = case["native"].as_str().expect("native stream text");
            let items =
                golden::decode_every_way(&|| Box::new(MistralStream::new()), text.as_bytes());
            assert_eq!(Value::Array(items), case["openai"], "{name}");
        }
    }

    /// Chunks whose levels are of unexpected JSON types once panicked the translator
    /// (mutable `Value` indexing); they are passed on as they came.
    #[test]
    fn chunks_of_unexpected_shapes_pass_through() {
        for chunk in [
            r#"{"choices":[1,"x",null,[]]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[1,"x",null,[],true]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":{"id":"a"}}}]}"#,
            r#"{"choices":[{"delta":[{"tool_calls":[]}]}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"abc","type":null}]}}],"usage":7}"#,
            r#"{"id":[],"created":"x","choices":[{"delta":{}}],"usage":{"prompt_tokens":1e400}}"#,
            r#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":-1,"completion_tokens":1.5}}"#,
            r#"{"choices":[{"delta":{"content":"٣"}}],"usage":{"prompt_tokens":99999999999999999999999}}"#,
        ] {
            let mut s = MistralStream::new();
            s.push(format!("data: {chunk}\n\n").as_bytes());
            while let Ok(Some(item)) = s.next() {
                if let Translated::Chunk { data, .. } = item {
                    let _: Value = serde_json::from_slice(&data).expect("JSON");
                }
            }
        }
        let item = {
            let mut s = MistralStream::new();
            s.push(br#"data: {"choices":[{"delta":{"tool_calls":[7,{"id":"abc"}]}}]}"#);
            s.push(b"\n\n");
            s.next()
        };
        let Ok(Some(Translated::Chunk { data, .. })) = item else {
            panic!("a chunk: {item:?}");
        };
        let v: Value = serde_json::from_slice(&data).expect("JSON");
        assert_eq!(
            v["choices"][0]["delta"]["tool_calls"],
            json!([7, {"id": "abc", "index": 0, "type": "function"}])
        );
    }

    #[test]
    fn request_ids_of_unexpected_shapes_are_left_alone() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "tool", "tool_call_id": "call_1", "content": "4C"}],
        }))
        .expect("request");
        let body = request_body(&req, "mistral-small-latest").expect("body");
        assert_eq!(
            body["messages"][0]["tool_call_id"],
            json!(tool_call_id("call_1"))
        );
    }

    #[test]
    fn ids_become_nine_alphanumerics_consistently() {
        assert_eq!(tool_call_id("D681PevKs"), "D681PevKs");
        let a = tool_call_id("call_abc123def456ghi789jkl0");
        assert_eq!(a.len(), 9);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(a, tool_call_id("call_abc123def456ghi789jkl0"));
        assert_ne!(a, tool_call_id("toolu_01A"));
    }

    #[test]
    fn unknown_models_and_redirects_are_misconfigurations() {
        let h = HeaderMap::new();
        let cases = [
            (
                "404",
                status_error(StatusCode::NOT_FOUND, &h, br#"{"detail":"Not Found"}"#),
            ),
            (
                "redirect",
                status_error(StatusCode::PERMANENT_REDIRECT, &h, b""),
            ),
        ];
        for (what, e) in &cases {
            assert_eq!(e.class(), "misconfigured", "{what}: {e:?}");
            assert!(e.retryable(), "{what}: another deployment may serve it");
            assert!(!e.may_pass(), "{what}: no second round");
        }
    }

    #[test]
    fn errors_map_status() {
        let limited = status_error(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"{"message":"Requests rate limit exceeded"}"#,
        );
        assert_eq!(limited.class(), "rate_limited");
        let missing = status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            br#"{"object":"error","message":{"detail":[{"type":"missing","loc":["body","model"],"msg":"Field required"}]},"type":"invalid_request_error","param":null,"code":null}"#,
        );
        assert!(!missing.retryable());
        assert!(
            matches!(&missing, ProviderError::Status { status, message: Some(m), .. } if *status == StatusCode::BAD_REQUEST && m.contains("Field required"))
        );
        let auth = status_error(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            br#"{"detail":"Unauthorized"}"#,
        );
        assert_eq!(auth.class(), "upstream_auth");
    }

    #[test]
    fn url_and_auth_are_openai_style() {
        let d = golden::deployment(
            ProviderKind::Mistral {
                base_url: "http://h/mistral/v1".into(),
            },
            "mistral-small-latest",
        );
        let req = MistralAdapter
            .request(
                &crate::providers::upstream::test_client(),
                &d,
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
            "http://h/mistral/v1/chat/completions"
        );
        assert_eq!(req.headers()["authorization"], "Bearer k-123");
    }
}
