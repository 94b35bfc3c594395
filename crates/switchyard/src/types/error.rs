//! The error classes the layers share: why an upstream call failed, whether another
//! attempt may help, and its low-cardinality label.

use http::{HeaderValue, StatusCode};

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
            | ProviderError::Unsupported(_) => true,
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
