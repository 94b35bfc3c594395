//! Anthropic Messages requests to Anthropic deployments: the client's own body goes
//! upstream (only `model` is swapped for the deployment's), so what the translation
//! to OpenAI's shape cannot carry (cache_control, thinking, top_k, citations,
//! service_tier…) reaches the provider.
//!
//! The client's body carries texts the translation drops (document blocks, tool
//! results' other blocks…), so before anything is translated the PII guardrail reads
//! the whole body ([`visit_texts`]), and a redaction is made in the body itself.
//! Admission then works on the translation of that body; if it changed anything
//! (the whole translated request is compared), the client's body is no longer what
//! may be sent, and the translation of the admitted request goes instead.
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
            endpoint: None,
        })
    }

    /// Whether `d` was sent the client's body (so its answer is Anthropic's own).
    pub fn passed_to(&self, d: &Deployment) -> bool {
        speaks_anthropic(d) && self.raw.is_some() && self.unchanged == Some(true)
    }
}

/// Hands every text of an Anthropic Messages body that goes upstream to `f`: the
/// system prompt, and each message's content with every block in it (text, tool
/// results and their blocks, documents, `tool_use.input` values…). Left out: what is
/// not prose (block types, ids, tool names, media types, cache control), image and
/// base64 bytes, and thinking blocks, which the upstream signed (a changed one is
/// refused) and which are the model's own output coming back to it.
pub fn visit_texts(body: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    if let Some(system) = body.get_mut("system") {
        visit_content(system, f);
    }
    let messages = body.get_mut("messages").and_then(Value::as_array_mut);
    for m in messages.into_iter().flatten() {
        if let Some(content) = m.get_mut("content") {
            visit_content(content, f);
        }
    }
}

fn visit_content(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => {
            for item in items {
                visit_content(item, f);
            }
        }
        Value::Object(block) => visit_block(block, f),
        Value::Number(_) | Value::Bool(_) | Value::Null => {}
    }
}

fn visit_block(block: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    match block.get("type").and_then(Value::as_str) {
        Some("image" | "thinking" | "redacted_thinking" | "base64") => return,
        // The tool's input is the model's JSON: every value of it is text to guard,
        // as the translation's `arguments` are.
        Some("tool_use" | "server_tool_use") => {
            if let Some(input) = block.get_mut("input") {
                crate::governance::visit_json_texts(input, f);
            }
            return;
        }
        _ => {}
    }
    for (key, v) in block.iter_mut() {
        if !matches!(
            key.as_str(),
            "type" | "id" | "tool_use_id" | "name" | "media_type" | "cache_control" | "signature"
        ) {
            visit_content(v, f);
        }
    }
}
