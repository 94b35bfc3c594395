//! Reasoning state that must travel with a conversation: Gemini's thought signatures
//! and the issuer of Claude's signed thinking blocks.
//!
//! An OpenAI-shaped client has no field for a thought signature, and the gateway keeps
//! no session (replicas share nothing per conversation), so the state rides in the
//! tool-call ids the gateway returns and the client sends back unchanged:
//!
//! ```text
//! call_Xq3…  .sy1.  gemini-1a2b3c4d  .  c2lnbmF0dXJl…
//! base id     mark   issuer            signature, base64url (may be empty)
//! ```
//!
//! The issuer is the provider kind and upstream model that made the signature
//! (signatures are valid only there). [`extract`] takes the encoding off every id of
//! a request once, before any deployment renders it, so each upstream sees the plain
//! ids (OpenAI refuses ids over 40 characters; Anthropic refuses dots), and each
//! translator then asks [`Carried`] for the signatures its own deployment issued.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::chat::{ChatRequest, Role};

/// What separates a base id from the carried state. Chosen so that no provider's own
/// id contains it (their ids are `[A-Za-z0-9_-]`).
const MARK: &str = ".sy1.";

/// The tag of the deployment that issues reasoning state: provider kind and upstream
/// model, hashed to a short stable string (the same on every replica and release).
pub fn issuer_tag(kind: &str, upstream_model: &str) -> String {
    // FNV-1a, 32 bits: stable across builds and platforms, unlike std's hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for b in kind.bytes().chain([b'/']).chain(upstream_model.bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{kind}-{hash:08x}")
}

/// A tool-call id carrying its issuer and, when there is one, its signature.
pub fn encode_call_id(base: &str, issuer: &str, signature: Option<&str>) -> String {
    let payload = signature.map_or_else(String::new, |s| URL_SAFE_NO_PAD.encode(s));
    format!("{base}{MARK}{issuer}.{payload}")
}

/// The parts of an id made by [`encode_call_id`]: base id, issuer, signature.
/// `None` for any other id (a provider's own, a client's) and for a malformed one.
pub fn decode_call_id(id: &str) -> Option<(&str, &str, Option<String>)> {
    let (base, rest) = id.split_once(MARK)?;
    let (issuer, payload) = rest.split_once('.')?;
    if base.is_empty() || issuer.is_empty() {
        return None;
    }
    let signature = if payload.is_empty() {
        None
    } else {
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        Some(String::from_utf8(bytes).ok()?)
    };
    Some((base, issuer, signature))
}

/// The state one tool call carried back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallState {
    pub issuer: String,
    pub signature: Option<String>,
}

/// The reasoning state a request carried in its tool-call ids, by base id, and the
/// issuer of its latest assistant turn (routing prefers that deployment for the rest
/// of the tool loop).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    calls: HashMap<String, CallState>,
    /// Issuer of each assistant message that had encoded calls, by message index.
    turns: HashMap<usize, String>,
    latest: Option<String>,
}

impl Carried {
    /// The signature `issuer` made for the call `base_id`, if it made one.
    pub fn signature(&self, base_id: &str, issuer: &str) -> Option<&str> {
        self.calls
            .get(base_id)
            .filter(|c| c.issuer == issuer)
            .and_then(|c| c.signature.as_deref())
    }

    /// Who issued the assistant message at `index` (by its calls), if known.
    pub fn turn_issuer(&self, index: usize) -> Option<&str> {
        self.turns.get(&index).map(String::as_str)
    }

    /// The issuer of the latest assistant turn with carried state.
    pub fn latest_issuer(&self) -> Option<&str> {
        self.latest.as_deref()
    }
}

/// Takes the carried state off every tool-call id of `req` (assistant calls and the
/// tool results that answer them) and keeps it in `req.carried`. Costs one scan of
/// the assistant messages' ids when there is nothing to take.
pub fn extract(req: &mut ChatRequest) {
    let any = req
        .messages
        .iter()
        .any(|m| m.tool_calls.iter().flatten().any(|c| c.id.contains(MARK)));
    if !any {
        return;
    }
    let mut carried = Carried::default();
    for (index, m) in req.messages.iter_mut().enumerate() {
        if m.role == Role::Tool {
            if let Some(id) = m.tool_call_id.as_mut() {
                if let Some((base, _, _)) = decode_call_id(id) {
                    *id = base.to_owned();
                }
            }
            continue;
        }
        for call in m.tool_calls.iter_mut().flatten() {
            let Some((base, issuer, signature)) = decode_call_id(&call.id) else {
                continue;
            };
            let (base, issuer) = (base.to_owned(), issuer.to_owned());
            carried.turns.insert(index, issuer.clone());
            carried.latest = Some(issuer.clone());
            carried
                .calls
                .insert(base.clone(), CallState { issuer, signature });
            call.id = base;
        }
    }
    req.carried = Some(std::sync::Arc::new(carried));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_round_trip_and_foreign_ids_are_left_alone() {
        let sig = "CiQB/+sig==";
        let id = encode_call_id("call_abc", "gemini-0011aabb", Some(sig));
        assert!(!id.contains('/') && !id.contains('+') && !id.contains('='));
        assert_eq!(
            decode_call_id(&id),
            Some(("call_abc", "gemini-0011aabb", Some(sig.to_owned())))
        );
        let bare = encode_call_id("toolu_1", "anthropic-00000001", None);
        assert_eq!(
            decode_call_id(&bare),
            Some(("toolu_1", "anthropic-00000001", None))
        );
        for other in [
            "call_abc",
            "toolu_01A",
            "",
            ".sy1.x.",
            "a.sy1..",
            "a.sy1.x.%%%",
        ] {
            assert_eq!(decode_call_id(other), None, "{other}");
        }
    }

    #[test]
    fn hostile_ids_decode_to_nothing_and_never_panic() {
        let long = format!("call_x.sy1.gemini-1.{}", "A".repeat(100_000));
        for id in [
            "call_é.sy1.gemini-١٢٣.c2ln", // non-ASCII base and issuer: kept as text
            "call_x.sy1.gemini-1.٣٣٣",    // non-ASCII digits in the payload
            "call_x.sy1.gemini-1.%%%%",   // not base64
            "call_x.sy1.gemini-1./w",     // base64 of bytes that are not UTF-8
            ".sy1..sy1..sy1.",
            &long,
        ] {
            let decoded = decode_call_id(id);
            if let Some((base, issuer, _)) = decoded {
                assert!(!base.is_empty() && !issuer.is_empty(), "{id}");
            }
        }
        assert_eq!(decode_call_id("call_x.sy1.gemini-1.%%%%"), None);
        assert_eq!(decode_call_id("call_x.sy1.gemini-1./w"), None);
        assert_eq!(
            decode_call_id("call_é.sy1.gemini-١٢٣.c2ln"),
            Some(("call_é", "gemini-١٢٣", Some("sig".to_owned())))
        );
    }

    #[test]
    fn the_tag_depends_on_kind_and_model_and_is_stable() {
        let a = issuer_tag("gemini", "gemini-3-pro");
        assert_eq!(a, issuer_tag("gemini", "gemini-3-pro"));
        assert_ne!(a, issuer_tag("vertex", "gemini-3-pro"));
        assert_ne!(a, issuer_tag("gemini", "gemini-3-flash"));
        // Fixed value: a change would break every conversation in flight.
        assert_eq!(issuer_tag("gemini", "m"), "gemini-f7a90b3a");
    }

    #[test]
    fn extract_strips_every_id_and_keeps_the_state() {
        let id = encode_call_id("call_1", "gemini-aa", Some("sig-1"));
        let id2 = encode_call_id("call_2", "gemini-aa", None);
        let mut req: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": id2, "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": id, "content": "1"},
                {"role": "tool", "tool_call_id": id2, "content": "2"}
            ]
        }))
        .expect("request");
        extract(&mut req);
        let body = serde_json::to_value(&req).expect("json");
        assert_eq!(body["messages"][1]["tool_calls"][0]["id"], "call_1");
        assert_eq!(body["messages"][1]["tool_calls"][1]["id"], "call_2");
        assert_eq!(body["messages"][2]["tool_call_id"], "call_1");
        assert_eq!(body["messages"][3]["tool_call_id"], "call_2");
        let carried = req.carried.as_deref().expect("carried");
        assert_eq!(carried.signature("call_1", "gemini-aa"), Some("sig-1"));
        assert_eq!(carried.signature("call_1", "gemini-bb"), None);
        assert_eq!(carried.signature("call_2", "gemini-aa"), None);
        assert_eq!(carried.turn_issuer(1), Some("gemini-aa"));
        assert_eq!(carried.latest_issuer(), Some("gemini-aa"));
    }

    #[test]
    fn a_request_without_state_is_untouched() {
        let mut req: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "assistant", "tool_calls": [
                {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
        }))
        .expect("request");
        extract(&mut req);
        assert!(req.carried.is_none());
    }
}
