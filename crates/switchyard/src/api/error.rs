//! Errors as the OpenAI ingress renders them: `{"error":{"message","type","param","code"}}`.
//!
//! Every failure a client can see becomes an [`ApiError`] exactly once; its status
//! mapping lives here and nowhere else.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use super::generation::ReloadError;
use crate::dispatch::DispatchError;
use crate::governance::Refusal;
use crate::types::ProviderError;

/// An error as the client will see it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `rate_limit_error`…
    pub kind: &'static str,
    /// OpenAI's `code`, and the low-cardinality label used in the ledger and metrics.
    pub code: &'static str,
    pub param: Option<String>,
    pub message: String,
    /// Seconds, passed on from an upstream 429.
    pub retry_after: Option<HeaderValue>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            code,
            param: None,
            message,
            retry_after: None,
        }
    }

    /// A request naming a channel its key's policy does not allow (403).
    pub fn channel_not_allowed(header: &str, channel: &str) -> Self {
        ApiError {
            param: Some(header.to_owned()),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "channel_not_allowed",
                format!("This API key is not allowed to use the channel `{channel}`."),
            )
        }
    }

    pub fn invalid_request(param: Option<String>, message: impl Into<String>) -> Self {
        ApiError {
            param,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                message.into(),
            )
        }
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            message.into(),
        )
    }

    pub fn invalid_key() -> Self {
        Self::from_refusal(&Refusal::InvalidKey)
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds the limit of {limit} bytes."),
        )
    }

    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {path}."),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "This method is not allowed on this URL.".into(),
        )
    }

    /// Every deployment of the model was excluded by a constraint the request or the
    /// caller brings (capabilities, regions, data tags): retrying cannot help.
    pub fn no_eligible_deployment(model: &str, exclusions: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "no_eligible_deployment",
            format!("No deployment of model `{model}` can serve this request: {exclusions}."),
        )
    }

    /// Every deployment is at its quota: like a provider's 429, with when to retry.
    pub fn capacity_exhausted(model: &str, retry_after: std::time::Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after_header(retry_after)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "capacity_exhausted",
                format!("Every deployment of model `{model}` is at capacity; retry later."),
            )
        }
    }

    /// Every deployment left is covered by a contract whose spending cap has no room.
    pub fn contract_cap_reached(
        model: &str,
        contracts: &[String],
        retry_after: std::time::Duration,
    ) -> Self {
        ApiError {
            retry_after: Some(retry_after_header(retry_after)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "contract_cap_reached",
                format!(
                    "Every deployment of model `{model}` that could serve this request is covered by a contract whose spending cap is reached ({}).",
                    contracts.join(", ")
                ),
            )
        }
    }

    /// Every deployment is unavailable (circuit open).
    pub fn no_healthy_deployment(model: &str, retry_after: std::time::Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after_header(retry_after)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "no_healthy_deployment",
                format!("Every deployment of model `{model}` is failing; retry later."),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message.into(),
        )
    }

    /// The one mapping from a governance refusal to what the client sees.
    pub fn from_refusal(r: &Refusal) -> Self {
        let (status, kind, code, param) = match r {
            Refusal::MissingKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_api_key",
                None,
            ),
            Refusal::InvalidKey | Refusal::RevokedKey | Refusal::ExpiredKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                None,
            ),
            Refusal::ModelNotAllowed { .. } => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_allowed",
                Some("model".to_owned()),
            ),
            Refusal::MaxTokens { param, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                Some((*param).to_owned()),
            ),
            Refusal::PiiBlocked { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "pii_detected",
                Some("messages".to_owned()),
            ),
            Refusal::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                None,
            ),
            Refusal::BudgetExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "budget_exceeded",
                None,
            ),
            Refusal::StateUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "state_unavailable",
                None,
            ),
        };
        ApiError {
            param,
            retry_after: r.retry_after_secs().map(HeaderValue::from),
            ..Self::new(status, kind, code, r.message())
        }
    }

    /// The one mapping from an upstream failure to what the client sees.
    pub fn from_provider(e: &ProviderError, deployment: &str) -> Self {
        use ProviderError as P;
        match e {
            P::Timeout { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "upstream_timeout",
                format!("The upstream deployment `{deployment}` did not answer in time."),
            ),
            P::Connect(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_unreachable",
                format!("The upstream deployment `{deployment}` could not be reached."),
            ),
            P::Protocol(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_bad_response",
                format!("The upstream deployment `{deployment}` sent a response that could not be read."),
            ),
            P::Unsupported(what) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_by_deployment",
                format!("Deployment `{deployment}` cannot serve this request: {what}."),
            ),
            // Neither the provider's message nor its URL: they describe the gateway's
            // setup, which is for its operator (the log has them), not its clients.
            P::Misconfigured { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "deployment_misconfigured",
                format!(
                    "Deployment `{deployment}` is misconfigured: its provider does not serve the model or deployment it names."
                ),
            ),
            P::Status {
                status,
                retry_after,
                message,
                param,
                ..
            } => match status.as_u16() {
                429 => ApiError {
                    retry_after: retry_after.clone(),
                    ..Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        "rate_limit_exceeded",
                        format!("The upstream deployment `{deployment}` is rate limited; retry later."),
                    )
                },
                401 | 403 => Self::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "upstream_auth_failed",
                    format!(
                        "The gateway's credential for deployment `{deployment}` was refused by the provider."
                    ),
                ),
                503 | 529 => Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "upstream_overloaded",
                    format!("The upstream deployment `{deployment}` is overloaded; retry later."),
                ),
                s if s >= 500 => Self::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "upstream_error",
                    format!("The upstream deployment `{deployment}` failed (status {s})."),
                ),
                // A 4xx the client caused: pass the provider's own explanation on, since
                // it names what to fix.
                s => ApiError {
                    param: param.clone(),
                    ..Self::new(
                        StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
                        "invalid_request_error",
                        "upstream_rejected",
                        message
                            .clone()
                            .unwrap_or_else(|| format!("The upstream rejected the request (status {s}).")),
                    )
                },
            },
        }
    }

    /// The body, as bytes; also used for the error event of a failed stream.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: &'a str,
        }
        serde_json::to_vec(&Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

/// Whole seconds, rounded up, at least 1: what `retry-after` carries.
fn retry_after_header(wait: std::time::Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

impl From<&ReloadError> for ApiError {
    /// A refused file is the caller's to fix: 400 naming the field (as `param`) and,
    /// in the message, the file, line and field as `switchyard config check` prints
    /// them. The running configuration stays in force either way.
    fn from(e: &ReloadError) -> Self {
        match e {
            ReloadError::Invalid(check) if check.is_invalid_file() => ApiError {
                param: check.field().map(str::to_owned),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_config",
                    format!("The configuration was not reloaded: {check}"),
                )
            },
            ReloadError::NoSource => ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "no_config_file",
                format!("The configuration was not reloaded: {e}."),
            ),
            ReloadError::Invalid(_) | ReloadError::Store(_) | ReloadError::Client(_) => {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "reload_failed",
                    "The configuration was not reloaded (the key store or the HTTP client \
                     failed); see the gateway log. The running configuration stays."
                        .into(),
                )
            }
        }
    }
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> Self {
        match &e {
            DispatchError::NoEligibleDeployment { model, exclusions } => {
                ApiError::no_eligible_deployment(model, exclusions)
            }
            DispatchError::CapacityExhausted { model, retry_after } => {
                ApiError::capacity_exhausted(model, *retry_after)
            }
            DispatchError::NoHealthyDeployment { model, retry_after } => {
                ApiError::no_healthy_deployment(model, *retry_after)
            }
            DispatchError::ContractCapReached {
                model,
                contracts,
                retry_after,
            } => ApiError::contract_cap_reached(model, contracts, *retry_after),
            DispatchError::Upstream { error, deployment } => {
                ApiError::from_provider(error, deployment)
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::from_refusal(&r)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.to_json()).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(v) = &self.retry_after {
            headers.insert(header::RETRY_AFTER, v.clone());
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is never read, so the connection cannot be reused:
            // say so, rather than let the client's next request fail on it.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}
