//! Why governance turned a request away. The ingress maps each case to its protocol's
//! status and error body (`api::error`); governance only says what happened and why,
//! in words a caller can act on.

use std::time::Duration;

use super::format_reset;

/// A request refused by authentication or admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    MissingKey,
    /// A key that matches no known key.
    InvalidKey,
    RevokedKey,
    ExpiredKey,
    /// The key's policy does not list the model.
    ModelNotAllowed {
        model: String,
    },
    /// The request asks for more output tokens than the policy allows.
    MaxTokens {
        param: &'static str,
        asked: u32,
        max: u32,
    },
    /// The PII guardrail is in `block` mode and found these kinds of personal data.
    PiiBlocked {
        kinds: Vec<String>,
    },
    /// A rate limit has no room. `unit` is `requests` or `tokens`; `what` names the
    /// limit (`key`, `team`, `model`…).
    RateLimited {
        unit: &'static str,
        what: String,
        limit: u64,
        remaining: u64,
        retry_after: Duration,
    },
    /// A budget would be exceeded; `retry_after_secs` is when its period resets.
    BudgetExceeded {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// Shared state (Redis) is unreachable and `state.on_unavailable = "closed"`.
    StateUnavailable,
}

impl Refusal {
    /// What the caller is told.
    pub fn message(&self) -> String {
        match self {
            Refusal::MissingKey => {
                "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.".into()
            }
            Refusal::InvalidKey => "Incorrect API key provided.".into(),
            Refusal::RevokedKey => "This API key has been revoked.".into(),
            Refusal::ExpiredKey => "This API key has expired.".into(),
            Refusal::ModelNotAllowed { model } => {
                format!("This API key is not allowed to use the model `{model}`.")
            }
            Refusal::MaxTokens { param, asked, max } => format!(
                "'{param}' is {asked}, above this key's policy limit of {max} tokens per request."
            ),
            Refusal::PiiBlocked { kinds } => format!(
                "The request contains personal data ({}); this key's policy does not allow sending it.",
                kinds.join(", ")
            ),
            Refusal::RateLimited {
                unit,
                what,
                limit,
                remaining,
                retry_after,
            } => format!(
                "Rate limit reached for {unit} per minute ({what}): limit {limit}, remaining {remaining}. Please try again in {}.",
                format_reset(*retry_after)
            ),
            Refusal::BudgetExceeded { message, .. } => message.clone(),
            Refusal::StateUnavailable => "The gateway's shared state is unavailable; limits and budgets cannot be checked. Please try again shortly.".into(),
        }
    }

    /// Whole seconds until a retry may succeed, at least 1, for `retry-after`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after, .. } => Some(
                retry_after
                    .as_secs()
                    .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
                    .max(1),
            ),
            Refusal::BudgetExceeded {
                retry_after_secs, ..
            } => *retry_after_secs,
            Refusal::StateUnavailable => Some(1),
            _ => None,
        }
    }
}
