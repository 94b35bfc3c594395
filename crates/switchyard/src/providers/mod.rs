//! Providers: how to reach each kind of upstream and how to read what it answers.
//!
//! Providers only translate and call. They know nothing of keys, budgets, retries or
//! storage; [`crate::dispatch`] decides what to call and what to do when it fails.

pub mod anthropic;
pub mod auth;
pub mod bedrock;
pub mod canonical;
pub mod gemini;
pub mod lax;
pub mod mistral;
pub mod openai;
pub mod sse;
pub mod upstream;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::config::{Deployment, ProviderKind};
use crate::types::chat::{ChatRequest, EmbeddingsRequest};
use crate::types::ProviderError;
use crate::types::Usage;

/// One provider protocol: how to render a request for it, call it, and read its
/// answers back into OpenAI's shapes (the gateway's canonical form).
pub trait Adapter: Send + Sync {
    /// The upstream body for a chat call. `req` may be changed in place (the
    /// OpenAI adapter only swaps the model name, to avoid a copy).
    fn chat_body(
        &self,
        req: &mut ChatRequest,
        deployment: &Deployment,
        stream: bool,
    ) -> Result<Vec<u8>, ProviderError>;

    /// The upstream body for an embeddings call.
    fn embeddings_body(
        &self,
        req: &mut EmbeddingsRequest,
        deployment: &Deployment,
    ) -> Result<Vec<u8>, ProviderError>;

    /// URL, auth and headers around a rendered body. `credential` is the run-time
    /// credential of the provider ([`auth`]), when it has one instead of a static key.
    fn request(
        &self,
        client: &upstream::Client,
        deployment: &Deployment,
        endpoint: Endpoint,
        stream: bool,
        body: Bytes,
        credential: Option<&auth::Credential>,
    ) -> Result<upstream::RequestBuilder, ProviderError>;

    /// Classifies an error answer (`body` is bounded).
    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError;

    /// A complete success body, as an OpenAI response body, and its usage.
    fn response(
        &self,
        endpoint: Endpoint,
        deployment: &Deployment,
        body: Bytes,
    ) -> Result<(Bytes, Option<Usage>), ProviderError>;

    /// Whether a success answer to a stream request is this protocol's stream.
    fn is_stream(&self, headers: &HeaderMap) -> bool;

    /// A decoder for one stream from `deployment`.
    fn stream_decoder(&self, deployment: &Deployment) -> Box<dyn StreamDecoder>;

    /// Whether this protocol takes images only as bytes, so that the gateway must
    /// fetch http(s) image URLs before rendering (see [`crate::images`]).
    fn needs_image_bytes(&self) -> bool {
        false
    }
}

/// Turns an upstream stream's bytes into OpenAI chunks, as they arrive.
pub trait StreamDecoder: Send {
    fn push(&mut self, bytes: &[u8]);
    /// The next translated item the bytes pushed so far complete.
    fn next(&mut self) -> Result<Option<Translated>, ProviderError>;
    /// Whether bytes of an unfinished event remain (a stream ending here was cut).
    fn has_partial(&self) -> bool;
    /// What the stream relayed so far, when this decoder keeps track (OpenAI-style
    /// streams: their upstreams may send no usage and no `[DONE]`).
    fn progress(&self) -> Option<&StreamProgress> {
        None
    }
    /// The usage chunk (`choices: []`) for `usage`, in this stream's identity, for a
    /// stream whose upstream sent none; `None` when the protocol has no such chunk.
    fn usage_chunk(&self, _usage: &Usage) -> Option<Bytes> {
        None
    }
    /// The chunk `data`, whose usage lacked counts ([`StreamProgress::partial_usage`]),
    /// with the missing ones taken from `estimate` (what the upstream sent stays), and
    /// the usage to bill; `None` when the protocol has no such chunk.
    fn fill_usage(&self, _data: &Bytes, _estimate: &Usage) -> Option<(Bytes, Usage)> {
        None
    }
}

/// What an OpenAI-style stream relayed so far, read as its chunks pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamProgress {
    /// Characters of generated output (text, refusal, reasoning, tool-call names and
    /// arguments), the basis of the completion estimate when no usage comes.
    pub output_chars: u64,
    /// Choices (distinct indexes) that sent something but not yet their finish reason.
    pub open_choices: u64,
    /// Choices (distinct indexes) that sent their finish reason.
    pub finished_choices: u64,
    /// Whether the last chunk read carried a `usage` without `prompt_tokens` or
    /// `completion_tokens`: the relay estimates what is missing.
    pub partial_usage: bool,
}

impl StreamProgress {
    /// Whether the answer is complete for a request of `choices` choices (its `n`):
    /// that many sent their finish reason and none is still open, so the stream is
    /// complete even if `[DONE]` never comes.
    pub fn complete(&self, choices: u64) -> bool {
        self.open_choices == 0 && self.finished_choices >= choices.max(1)
    }
}

/// One item of a stream, in OpenAI's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    /// A `chat.completion.chunk` JSON document.
    Chunk {
        data: Bytes,
        /// False for chunks without choices: the usage chunk, Azure's prompt filter.
        has_choices: bool,
        usage: Option<Usage>,
    },
    /// The upstream reported an error inside the stream (OpenAI error JSON).
    Error(Bytes),
    /// The stream is complete.
    Done,
}

/// Every provider kind with an adapter, as `ProviderKind::label` names it.
pub const KINDS: &[&str] = &[
    "openai",
    "azure",
    "anthropic",
    "bedrock",
    "gemini",
    "vertex",
    "mistral",
];

/// The adapter for a provider kind.
pub fn adapter(kind: &ProviderKind) -> &'static dyn Adapter {
    match kind {
        ProviderKind::OpenAi { .. } | ProviderKind::Azure { .. } => &openai::OpenAiAdapter,
        ProviderKind::Anthropic { .. } => &anthropic::AnthropicAdapter,
        ProviderKind::Bedrock { .. } => &bedrock::BedrockAdapter,
        ProviderKind::Gemini { .. } | ProviderKind::Vertex { .. } => &gemini::GeminiAdapter,
        ProviderKind::Mistral { .. } => &mistral::MistralAdapter,
    }
}

/// The issuer tag of the reasoning state a deployment signs (thought signatures,
/// thinking blocks): `None` for kinds that return none the client must send back.
pub fn issuer_of(deployment: &Deployment) -> Option<&str> {
    deployment.reasoning_issuer.as_deref()
}

/// Which API an attempt calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    /// OpenAI's Responses API, called only with a client's own Responses request on
    /// deployments that speak it (OpenAI, Azure OpenAI).
    Responses,
}

impl Endpoint {
    /// The path below an OpenAI-style base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }

    /// The label used in the ledger.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }
}

/// The failure a stream's error event stands for when it comes before anything
/// was relayed to the client: the status the provider answers the same error with
/// outside a stream, so that it is retried, classed and reported like that status.
/// `data` is OpenAI's error JSON (`{"error":{"type","code","message"}}`, what every
/// stream translator emits) or Anthropic's (`{"type":"error","error":{"type",
/// "message"}}`, passed through unchanged); both name the kind in `error.type`.
pub fn stream_error(data: &[u8]) -> ProviderError {
    let doc: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    let error = doc.get("error");
    let text = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(serde_json::Value::as_str)
    };
    let status = match (text("type").unwrap_or(""), text("code").unwrap_or("")) {
        ("rate_limit_error", _) | (_, "rate_limit_exceeded") => StatusCode::TOO_MANY_REQUESTS,
        ("overloaded_error", _) | (_, "upstream_overloaded") => StatusCode::SERVICE_UNAVAILABLE,
        ("authentication_error", _) => StatusCode::UNAUTHORIZED,
        ("permission_error", _) => StatusCode::FORBIDDEN,
        ("not_found_error", _) => StatusCode::NOT_FOUND,
        ("invalid_request_error", _) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = text("message");
    if let Some(misconfigured) = ProviderError::misconfigured_status(status, message) {
        return misconfigured;
    }
    ProviderError::Status {
        status,
        retry_after: None,
        message: message.map(str::to_owned),
        param: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_error_event_stands_for_its_status() {
        let cases: [(&[u8], u16, &str); 5] = [
            (
                br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
                429,
                "rate_limited",
            ),
            (
                br#"{"error":{"message":"busy","type":"server_error","code":"upstream_overloaded"}}"#,
                503,
                "overloaded",
            ),
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                503,
                "overloaded",
            ),
            (
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
                400,
                "upstream_4xx",
            ),
            (b"not json", 500, "upstream_5xx"),
        ];
        for (data, status, class) in cases {
            let e = stream_error(data);
            assert_eq!(e.class(), class, "{}", String::from_utf8_lossy(data));
            match e {
                ProviderError::Status { status: s, .. } => assert_eq!(s.as_u16(), status),
                other => panic!("{other:?}"),
            }
        }
        // A client-caused error is passed on, with the provider's message; the others
        // fail over.
        let bad = stream_error(
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
        );
        assert!(!bad.retryable());
        assert!(matches!(bad, ProviderError::Status { message: Some(ref m), .. } if m == "bad"));
        assert!(stream_error(b"{}").retryable());
    }
}
