//! Providers: how to reach each kind of upstream and how to read what it answers.
//!
//! Providers only translate and call. They know nothing of keys, budgets, retries or
//! storage; [`crate::dispatch`] decides what to call and what to do when it fails.

pub mod openai;
pub mod sse;

use http::{HeaderValue, StatusCode};

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
            | ProviderError::Protocol(_) => true,
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
            ProviderError::Status { status, .. } => match status.as_u16() {
                429 => "rate_limited",
                401 | 403 => "upstream_auth",
                503 | 529 => "overloaded",
                s if s >= 500 => "upstream_5xx",
                _ => "upstream_4xx",
            },
        }
    }
}
