//! A streamed miss, kept: while the relay forwards a cacheable stream chunk by chunk,
//! a [`Capture`] reads each chunk the client is shown and assembles the equivalent
//! `chat.completion` (identity, each choice's content, refusal, reasoning text, tool
//! calls and finish reason, the usage). The stream itself is never held: only the
//! answer's parts, as the client would put them together.
//!
//! The completion is stored when the stream completes normally; a stream that is cut,
//! ends in an error, loses its client, or whose parts grow past the entry's
//! `max_bytes` is not (the capture is dropped as soon as it is over, so it never holds
//! more than that). A stream the completion cannot represent (log probabilities, a
//! choice without a finish reason, an unreadable chunk) is not stored either.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::Plan;
use crate::cache::ResponseCache;

/// What is read of a chunk (OpenAI `chat.completion.chunk`).
#[derive(Deserialize)]
struct ChunkIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    system_fingerprint: Option<String>,
    #[serde(default)]
    choices: Vec<ChoiceIn>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<DeltaIn>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Deserialize)]
struct DeltaIn {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<CallIn>>,
}

#[derive(Deserialize)]
struct CallIn {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionIn>,
}

#[derive(Deserialize)]
struct FunctionIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// One choice as assembled so far.
#[derive(Default)]
struct ChoiceSoFar {
    index: u32,
    content: String,
    refusal: Option<String>,
    reasoning: String,
    calls: Vec<CallSoFar>,
    finish_reason: Option<String>,
}

#[derive(Default)]
struct CallSoFar {
    index: u32,
    id: Option<String>,
    name: String,
    arguments: String,
}

/// The completion a stream amounts to, as far as it went.
#[derive(Default)]
struct Assembly {
    id: Option<String>,
    created: Option<Value>,
    model: Option<String>,
    system_fingerprint: Option<String>,
    choices: Vec<ChoiceSoFar>,
    usage: Option<Value>,
    /// The text held so far (content, refusals, reasoning, tool calls, usage), which
    /// bounds what the capture keeps.
    bytes: usize,
}

/// What a choice or a tool call costs the budget beyond its text (its JSON frame).
const PART_OVERHEAD: usize = 64;

/// Appends `more` to `text`, counting it.
fn append(text: &mut String, more: &str, bytes: &mut usize) {
    text.push_str(more);
    *bytes = bytes.saturating_add(more.len());
}

impl Assembly {
    /// Adds one chunk. False when the stream cannot be stored: the chunk is
    /// unreadable or carries log probabilities.
    fn add(&mut self, data: &[u8]) -> bool {
        let Ok(chunk) = serde_json::from_slice::<ChunkIn>(data) else {
            return false;
        };
        // The first chunk that names them; a chunk without choices may leave them
        // empty (Azure's prompt-filter results come first, with an empty id and model).
        if self.id.is_none() {
            self.id = chunk.id.filter(|id| !id.is_empty());
        }
        if self.created.is_none() {
            self.created = chunk
                .created
                .filter(|c| c.as_u64().is_some_and(|secs| secs > 0));
        }
        if self.model.is_none() {
            self.model = chunk.model.filter(|m| !m.is_empty());
        }
        if self.system_fingerprint.is_none() {
            self.system_fingerprint = chunk.system_fingerprint;
        }
        if let Some(usage) = chunk.usage.filter(Value::is_object) {
            self.bytes = self.bytes.saturating_add(usage.to_string().len());
            self.usage = Some(usage);
        }
        for c in chunk.choices {
            if c.logprobs.as_ref().is_some_and(|l| !l.is_null()) {
                return false;
            }
            let Some(choice) = self.choice(c.index) else {
                return false;
            };
            if let Some(reason) = c.finish_reason {
                choice.finish_reason = Some(reason);
            }
            let Some(delta) = c.delta else { continue };
            let mut bytes = 0;
            if let Some(text) = delta.content {
                append(&mut choice.content, &text, &mut bytes);
            }
            if let Some(text) = delta.reasoning_content {
                append(&mut choice.reasoning, &text, &mut bytes);
            }
            if let Some(text) = delta.refusal {
                append(
                    choice.refusal.get_or_insert_with(String::new),
                    &text,
                    &mut bytes,
                );
            }
            for call in delta.tool_calls.unwrap_or_default() {
                // The relay gives every call delta an index; one without continues the
                // last call.
                let index = call
                    .index
                    .or_else(|| choice.calls.last().map(|c| c.index))
                    .unwrap_or(0);
                if !choice.calls.iter().any(|c| c.index == index) {
                    bytes = bytes.saturating_add(PART_OVERHEAD);
                    choice.calls.push(CallSoFar {
                        index,
                        ..CallSoFar::default()
                    });
                }
                let Some(so_far) = choice.calls.iter_mut().find(|c| c.index == index) else {
                    continue;
                };
                if so_far.id.is_none() {
                    if let Some(id) = call.id {
                        bytes = bytes.saturating_add(id.len());
                        so_far.id = Some(id);
                    }
                }
                if let Some(f) = call.function {
                    if let Some(name) = f.name {
                        append(&mut so_far.name, &name, &mut bytes);
                    }
                    if let Some(args) = f.arguments {
                        append(&mut so_far.arguments, &args, &mut bytes);
                    }
                }
            }
            self.bytes = self.bytes.saturating_add(bytes);
        }
        true
    }

    /// The choice with `index`, made when it is new (counted against the budget).
    fn choice(&mut self, index: u32) -> Option<&mut ChoiceSoFar> {
        if !self.choices.iter().any(|c| c.index == index) {
            self.bytes = self.bytes.saturating_add(PART_OVERHEAD);
            self.choices.push(ChoiceSoFar {
                index,
                ..ChoiceSoFar::default()
            });
        }
        self.choices.iter_mut().find(|c| c.index == index)
    }

    /// The completed stream as a `chat.completion`, or `None` when a choice never
    /// finished (or there was none).
    fn completion(mut self) -> Option<Bytes> {
        if self.choices.is_empty() || self.choices.iter().any(|c| c.finish_reason.is_none()) {
            return None;
        }
        self.choices.sort_by_key(|c| c.index);
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|c| {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                let no_text = c.content.is_empty() && (!c.calls.is_empty() || c.refusal.is_some());
                message.insert(
                    "content".into(),
                    if no_text {
                        Value::Null
                    } else {
                        json!(c.content)
                    },
                );
                message.insert(
                    "refusal".into(),
                    c.refusal.map_or(Value::Null, Value::String),
                );
                if !c.reasoning.is_empty() {
                    message.insert("reasoning_content".into(), json!(c.reasoning));
                }
                let mut calls = c.calls;
                calls.sort_by_key(|call| call.index);
                if !calls.is_empty() {
                    let calls: Vec<Value> = calls
                        .into_iter()
                        .map(|call| {
                            json!({
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments},
                            })
                        })
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                json!({
                    "index": c.index,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": c.finish_reason,
                })
            })
            .collect();
        let mut doc = Map::new();
        doc.insert("id".into(), json!(self.id.unwrap_or_default()));
        doc.insert("object".into(), json!("chat.completion"));
        doc.insert("created".into(), self.created.unwrap_or(json!(0)));
        doc.insert("model".into(), json!(self.model.unwrap_or_default()));
        doc.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            doc.insert("usage".into(), usage);
        }
        if let Some(fp) = self.system_fingerprint {
            doc.insert("system_fingerprint".into(), json!(fp));
        }
        serde_json::to_vec(&Value::Object(doc))
            .ok()
            .map(Bytes::from)
    }
}

/// A cacheable stream being assembled for the cache, with where it goes.
pub(in crate::api) struct Capture {
    cache: Arc<ResponseCache>,
    plan: Plan,
    assembly: Assembly,
}

impl Capture {
    pub(in crate::api) fn new(cache: Arc<ResponseCache>, plan: Plan) -> Capture {
        Capture {
            cache,
            plan,
            assembly: Assembly::default(),
        }
    }

    /// Reads one chunk the client is shown. False when the stream can no longer be
    /// stored (see the module docs): the relay then drops the capture.
    pub(in crate::api) fn chunk(&mut self, data: &[u8]) -> bool {
        self.assembly.add(data) && crate::cache::fits(self.assembly.bytes, self.plan.max_bytes)
    }

    /// The stream completed: its completion is stored, when there is one and it fits.
    pub(in crate::api) async fn store(self) {
        let Some(body) = self.assembly.completion() else {
            return;
        };
        self.cache
            .insert(self.plan.key, body, self.plan.ttl, self.plan.max_bytes)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(chunks: &[Value]) -> Option<Value> {
        let mut a = Assembly::default();
        for c in chunks {
            if !a.add(c.to_string().as_bytes()) {
                return None;
            }
        }
        serde_json::from_slice(&a.completion()?).ok()
    }

    fn chunk(choices: Value) -> Value {
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 42,
            "model": "m-1", "system_fingerprint": "fp_1", "choices": choices})
    }

    #[test]
    fn text_chunks_assemble_into_a_completion() {
        let doc = assemble(&[
            json!({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}),
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": ", world"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
            json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 42,
                "model": "m-1", "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}),
        ])
        .expect("a completion");
        assert_eq!(
            doc,
            json!({
                "id": "chatcmpl-9", "object": "chat.completion", "created": 42, "model": "m-1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world",
                    "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                "system_fingerprint": "fp_1",
            })
        );
        assert!(super::super::storable(doc.to_string().as_bytes()));
    }

    #[test]
    fn tool_call_deltas_assemble_by_index() {
        let doc = assemble(&[
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{\"city\":"}}]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "\"Chur\"}"}}]}}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
        ])
        .expect("a completion");
        let message = &doc["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"],
            json!([
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Chur\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ])
        );
        assert_eq!(doc["choices"][0]["finish_reason"], "tool_calls");
        assert!(doc.get("usage").is_none());
    }

    #[test]
    fn what_a_completion_cannot_hold_is_not_assembled() {
        // A choice that never finished.
        assert!(assemble(&[chunk(
            json!([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}])
        )])
        .is_none());
        // No choice at all.
        assert!(assemble(&[]).is_none());
        // Log probabilities, and unreadable chunks.
        assert!(
            assemble(&[chunk(json!([{"index": 0, "delta": {"content": "a"},
            "logprobs": {"content": []}, "finish_reason": "stop"}]))])
            .is_none()
        );
        let mut a = Assembly::default();
        assert!(!a.add(b"not json"));
    }

    #[test]
    fn the_capture_stops_once_over_its_budget() {
        let plan = Plan {
            key: [7; 32],
            ttl: std::time::Duration::from_secs(60),
            max_bytes: 300,
        };
        let mut c = Capture::new(Arc::new(ResponseCache::new(10_000)), plan);
        let small = chunk(json!([{"index": 0, "delta": {"content": "x".repeat(50)}}]));
        assert!(c.chunk(small.to_string().as_bytes()));
        let large = chunk(json!([{"index": 0, "delta": {"content": "x".repeat(100)}}]));
        assert!(!c.chunk(large.to_string().as_bytes()), "over 300 bytes");
    }
}
