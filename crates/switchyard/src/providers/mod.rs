//! Providers: how to reach each kind of upstream and how to read what it answers.
//!
//! Providers only translate and call. They know nothing of keys, budgets, retries or
//! storage; [`crate::dispatch`] decides what to call and what to do when it fails.

pub mod anthropic;
pub mod bedrock;
pub mod canonical;
pub mod gemini;
pub mod mistral;
pub mod openai;
pub mod sse;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::api::wire::{ChatRequest, EmbeddingsRequest};
use crate::config::{Deployment, ProviderKind};
use crate::ledger::Usage;

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

    /// URL, auth and headers around a rendered body.
    fn request(
        &self,
        client: &reqwest::Client,
        deployment: &Deployment,
        endpoint: Endpoint,
        stream: bool,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, ProviderError>;

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

/// Which API an attempt calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    /// The path below an OpenAI-style base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    /// The label used in the ledger.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// Why an upstream call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// No answer within the deadline; `phase` says which one.
    #[error("timed out waiting for the {phase}")]
    Timeout { phase: &'static str },
    /// The connection could not be made or broke before a response arrived.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The upstream answered with something that is not its protocol.
    #[error("unreadable response: {0}")]
    Protocol(String),
    /// The request uses something this provider cannot do (found while translating);
    /// another deployment may be able to.
    #[error("unsupported by this provider: {0}")]
    Unsupported(String),
    /// The upstream does not know what the deployment names (its model or deployment
    /// name, its path) or answered with a redirect: the gateway's configuration is
    /// wrong, not the client's request, and another deployment may serve it. `detail`
    /// (the provider's message) is for the log only.
    #[error("misconfigured deployment: the upstream answered {status}: {detail}")]
    Misconfigured { status: StatusCode, detail: String },
    /// The upstream answered with an error status.
    #[error("status {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<HeaderValue>,
        /// The provider's own explanation, passed on for client errors.
        message: Option<String>,
        param: Option<String>,
    },
}

impl ProviderError {
    /// Whether another attempt (elsewhere) may succeed. A 4xx the client caused never is.
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Timeout { .. }
            | ProviderError::Connect(_)
            | ProviderError::Protocol(_)
            | ProviderError::Unsupported(_)
            | ProviderError::Misconfigured { .. } => true,
            ProviderError::Status { status, .. } => {
                // 401/403 are our credential's fault at this deployment; another
                // deployment has its own credential.
                matches!(status.as_u16(), 401 | 403 | 408 | 409 | 429) || status.is_server_error()
            }
        }
    }

    /// A low-cardinality label for the ledger and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::Timeout { .. } => "timeout",
            ProviderError::Connect(_) => "connect",
            ProviderError::Protocol(_) => "bad_response",
            ProviderError::Unsupported(_) => "unsupported",
            ProviderError::Misconfigured { .. } => "misconfigured",
            ProviderError::Status { status, .. } => match status.as_u16() {
                429 => "rate_limited",
                401 | 403 => "upstream_auth",
                503 | 529 => "overloaded",
                s if s >= 500 => "upstream_5xx",
                _ => "upstream_4xx",
            },
        }
    }

    /// Whether going round the deployments again within this request may help: not
    /// for a request a provider cannot translate, nor for a deployment the upstream
    /// does not know; neither changes in a few seconds.
    pub fn may_pass(&self) -> bool {
        self.retryable()
            && !matches!(
                self,
                ProviderError::Unsupported(_) | ProviderError::Misconfigured { .. }
            )
    }

    /// The misconfiguration error for `status` when the status alone says the
    /// deployment is wrong: 404 (the upstream has no such model, deployment or path)
    /// or a redirect (never followed: it would carry the credential to another URL).
    /// Each provider's classification calls it, after its own error codes.
    pub fn misconfigured_status(status: StatusCode, detail: Option<&str>) -> Option<Self> {
        (status == StatusCode::NOT_FOUND || status.is_redirection())
            .then(|| ProviderError::misconfigured(status, detail))
    }

    /// A misconfiguration the provider named with its own error code.
    pub fn misconfigured(status: StatusCode, detail: Option<&str>) -> Self {
        ProviderError::Misconfigured {
            status,
            detail: detail.unwrap_or("no explanation").to_owned(),
        }
    }
}
