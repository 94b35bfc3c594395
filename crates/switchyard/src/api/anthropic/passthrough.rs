//! Anthropic Messages requests to Anthropic deployments: the client's own body goes
//! upstream (only `model` is swapped for the deployment's), so what the translation
//! to OpenAI's shape cannot carry (cache_control, thinking, top_k, citations,
//! service_tier…) reaches the provider.
//!
//! Admission (the PII guardrail) works on the translated request. If it changed that
//! request, the client's body is no longer what may be sent, and the translation of
//! the admitted request goes instead.
//!
//! The answer passes through too ([`super::native`]): the message body as it is,
//! the stream's events as they come; only usage is read, for the ledger.

use serde_json::{Map, Value};

use super::native::ANTHROPIC_NATIVE;
use crate::api::wire::ChatRequest;
use crate::config::{Deployment, LogicalModel, ProviderKind};
use crate::dispatch::Rendered;

pub struct Passthrough {
    /// The client's body; `None` when no deployment of the model speaks Anthropic.
    raw: Option<Map<String, Value>>,
    /// The translated request before admission.
    before: Option<Value>,
    /// Whether admission left the request as it was, once known.
    unchanged: Option<bool>,
}

fn speaks_anthropic(d: &Deployment) -> bool {
    matches!(d.provider.kind, ProviderKind::Anthropic { .. })
}

/// Whether any deployment of `model` speaks Anthropic (else nothing is kept).
pub fn useful_for(model: Option<&LogicalModel>) -> bool {
    model.is_some_and(|m| m.targets.iter().any(|t| speaks_anthropic(&t.deployment)))
}

impl Passthrough {
    /// `useful`: whether any deployment of the model speaks Anthropic ([`useful_for`]).
    pub fn new(body: &[u8], translated: &ChatRequest, useful: bool) -> Self {
        if !useful {
            return Passthrough {
                raw: None,
                before: None,
                unchanged: None,
            };
        }
        Passthrough {
            raw: serde_json::from_slice(body).ok(),
            before: serde_json::to_value(translated).ok(),
            unchanged: None,
        }
    }

    /// The upstream body for `d`, or `None` to send the translation.
    pub fn body(&mut self, admitted: &ChatRequest, d: &Deployment) -> Option<Rendered> {
        if !speaks_anthropic(d) {
            return None;
        }
        let raw = self.raw.as_ref()?;
        let before = &self.before;
        let unchanged = *self
            .unchanged
            .get_or_insert_with(|| serde_json::to_value(admitted).ok() == *before);
        if !unchanged {
            return None;
        }
        let mut body = raw.clone();
        body.insert("model".into(), Value::String(d.upstream_model.clone()));
        let body = serde_json::to_vec(&body).ok()?;
        Some(Rendered {
            body,
            native: Some(&ANTHROPIC_NATIVE),
        })
    }

    /// Whether `d` was sent the client's body (so its answer is Anthropic's own).
    pub fn passed_to(&self, d: &Deployment) -> bool {
        speaks_anthropic(d) && self.raw.is_some() && self.unchanged == Some(true)
    }
}
