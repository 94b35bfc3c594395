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

    /// The HTTP status the upstream answered with, when the failure is one.
    pub fn upstream_status(&self) -> Option<StatusCode> {
        match self {
            ProviderError::Status { status, .. } | ProviderError::Misconfigured { status, .. } => {
                Some(*status)
            }
            _ => None,
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
