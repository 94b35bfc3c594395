//! The ingress's part of the response cache (`crate::cache`): which requests may be
//! answered from it and under which key, and how a hit is answered: the stored
//! `chat.completion` byte for byte, or replayed as an OpenAI stream. A streamed miss
//! is assembled into its completion as it is relayed ([`capture`]) and stored when it
//! completes.

pub(super) mod capture;

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use super::wire::ChatRequest;
use crate::cache::{key_of, CacheKey};
use crate::config::{LogicalModel, DEFAULT_CACHE_MAX_BYTES};
use crate::governance::Principal;

/// The header saying whether a cacheable request was a `hit` or a `miss`.
pub(super) const CACHE_HEADER: &str = "x-switchyard-cache";

/// How a cacheable request is looked up, and its answer stored.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub key: CacheKey,
    pub ttl: Duration,
    pub max_bytes: u64,
}

/// The cache plan of an admitted request, or `None` when it may not be cached: no
/// opt-in (model or policy), an answer that may vary (a temperature other than an
/// explicit 0, unless the setting allows any; `n` above 1), a caller whose policy
/// keeps content out of the ledger without opting in itself, or reasoning state
/// carried in tool-call ids (which the key cannot see).
pub(super) fn plan(
    key: &Principal,
    model: &LogicalModel,
    channel: Option<&str>,
    req: &ChatRequest,
) -> Option<Plan> {
    let by_policy = key.policy.cache;
    let (ttl, max_bytes, any_temperature) = match (model.cache, by_policy) {
        (None, None) => return None,
        (Some(m), None) => (m.ttl, m.max_bytes, m.any_temperature),
        (None, Some(p)) => (
            Duration::from_secs(p.ttl_s),
            DEFAULT_CACHE_MAX_BYTES,
            p.any_temperature,
        ),
        // Both opt in: the shorter TTL, and other temperatures only if both allow.
        (Some(m), Some(p)) => (
            m.ttl.min(Duration::from_secs(p.ttl_s)),
            m.max_bytes,
            m.any_temperature && p.any_temperature,
        ),
    };
    if !key.policy.data.log_content && by_policy.is_none() {
        return None;
    }
    if req.n.unwrap_or(1) > 1 || req.carried.is_some() {
        return None;
    }
    let temperature_zero = req
        .extra
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t == 0.0);
    if !(temperature_zero || any_temperature) {
        return None;
    }
    // One tenant never sees another's answers: a team shares, a key without one
    // is alone.
    let tenant = match &key.team {
        Some(team) => format!("team:{team}"),
        None => format!("key:{}", key.id),
    };
    Some(Plan {
        key: key_of(&tenant, channel, &model.name, req),
        ttl,
        max_bytes,
    })
}

/// Whether `body` is a `chat.completion` a hit can be answered with, streamed too.
pub(super) fn storable(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v.get("choices").is_some_and(Value::is_array)
            && v.get("object").and_then(Value::as_str) == Some("chat.completion")
    })
}

/// A hit answered whole: the stored bytes, as the first client got them.
pub(super) fn whole(body: Bytes) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A hit answered as a stream, or `None` when the stored answer cannot be read.
pub(super) fn streamed(body: &[u8], include_usage: bool) -> Option<Response> {
    let sse = replay(body, include_usage)?;
    let mut res = Response::new(Body::from(sse));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(res)
}

/// The OpenAI stream a stored `chat.completion` would have been: per choice a role
/// chunk, its content, its tool calls, a finish chunk; then the usage chunk when
/// asked for, and `[DONE]`. Every chunk carries the completion's identity.
fn replay(body: &[u8], include_usage: bool) -> Option<Vec<u8>> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let choices = doc.get("choices")?.as_array()?;
    let mut identity = Map::new();
    identity.insert("id".into(), doc.get("id").cloned().unwrap_or(json!("")));
    identity.insert("object".into(), json!("chat.completion.chunk"));
    identity.insert(
        "created".into(),
        doc.get("created").cloned().unwrap_or(json!(0)),
    );
    identity.insert(
        "model".into(),
        doc.get("model").cloned().unwrap_or(json!("")),
    );
    if let Some(fp) = doc.get("system_fingerprint").filter(|v| v.is_string()) {
        identity.insert("system_fingerprint".into(), fp.clone());
    }
    let mut out = Vec::with_capacity(body.len() * 2);
    let mut emit = |choices: Value, usage: Option<&Value>| {
        let mut chunk = identity.clone();
        chunk.insert("choices".into(), choices);
        if let Some(u) = usage {
            chunk.insert("usage".into(), u.clone());
        }
        out.extend_from_slice(b"data: ");
        // A map of JSON values always serialises.
        let _ = serde_json::to_writer(&mut out, &Value::Object(chunk));
        out.extend_from_slice(b"\n\n");
    };
    for (position, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(position));
        let delta = |delta: Value, finish: Value| json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        emit(
            delta(json!({"role": "assistant", "content": ""}), Value::Null),
            None,
        );
        if let Some(text) = message
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            emit(delta(json!({"content": text}), Value::Null), None);
        }
        if let Some(refusal) = message.get("refusal").filter(|r| r.is_string()) {
            emit(delta(json!({"refusal": refusal}), Value::Null), None);
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            let deltas: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    json!({
                        "index": i,
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": call.get("function").cloned().unwrap_or(json!({})),
                    })
                })
                .collect();
            if !deltas.is_empty() {
                emit(delta(json!({"tool_calls": deltas}), Value::Null), None);
            }
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .filter(Value::is_string)
            .unwrap_or(json!("stop"));
        emit(delta(json!({}), finish), None);
    }
    if include_usage {
        if let Some(usage) = doc.get("usage").filter(|u| u.is_object()) {
            emit(json!([]), Some(usage));
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(sse: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(sse)
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_stored_completion_replays_as_a_stream() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        assert!(storable(body));
        let sse = replay(body, true).expect("replay");
        let frames = frames(&sse);
        assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = frames
            .iter()
            .filter(|f| *f != "[DONE]")
            .map(|f| serde_json::from_str(f).expect("chunk"))
            .collect();
        assert_eq!(chunks.len(), 5);
        for c in &chunks {
            assert_eq!(c["id"], "chatcmpl-1");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], 7);
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi there");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[4]["usage"]["total_tokens"], 5);
        // Without include_usage, no usage chunk.
        assert_eq!(frames_len(&replay(body, false).expect("replay")), 5);
        assert!(!storable(b"{\"object\":\"list\"}"));
        assert!(replay(b"not json", false).is_none());
    }

    fn frames_len(sse: &[u8]) -> usize {
        frames(sse).len()
    }
}
