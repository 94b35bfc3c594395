//! OpenAI `chat.completion` → Anthropic `message`, and the pieces the stream shares:
//! stop reasons and usage.

use serde_json::{json, Map, Value};

use crate::api::openai_read::Completion;
use crate::types::Usage;

/// A `thinking_blocks` entry as an Anthropic content block (the two block types and
/// their documented fields only).
pub fn thinking_content_block(b: &Value) -> Option<Value> {
    match b.get("type").and_then(Value::as_str)? {
        "thinking" => Some(json!({
            "type": "thinking",
            "thinking": b.get("thinking").and_then(Value::as_str).unwrap_or(""),
            "signature": b.get("signature").and_then(Value::as_str).unwrap_or(""),
        })),
        "redacted_thinking" => Some(json!({
            "type": "redacted_thinking",
            "data": b.get("data").and_then(Value::as_str).unwrap_or(""),
        })),
        _ => None,
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`. OpenAI does not say whether a
/// `stop` came from a stop sequence, so it is `end_turn`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage object. Its `input_tokens` leaves out the cached parts, which
/// OpenAI's `prompt_tokens` (and [`Usage`]) include.
pub fn usage_json(u: &Usage) -> Value {
    let cached = u.cached_tokens.saturating_add(u.cache_write_tokens);
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    })
}

/// The tool input object from OpenAI's `arguments` string: `""` and invalid JSON
/// become `{}`, since Anthropic's `input` is always an object.
pub fn parse_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

/// The Anthropic message for an OpenAI completion body. `id` is the message id;
/// `model` is the upstream's, as the OpenAI ingress shows it, or else `requested`.
pub fn to_message(body: &[u8], id: &str, requested: &str, usage: &Usage) -> Result<Value, String> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| format!("the completion is not readable: {e}"))?;
    let model = completion.model.unwrap_or_else(|| requested.to_owned());
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| "the completion has no choices".to_owned())?;
    let mut content = Vec::new();
    if let Some(m) = choice.message {
        content.extend(
            m.thinking_blocks
                .iter()
                .flatten()
                .filter_map(thinking_content_block),
        );
        let text = m.content.or(m.refusal).unwrap_or_default();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in m.tool_calls.unwrap_or_default() {
            content.push(json!({
                "type": "tool_use",
                "id": call.id.unwrap_or_default(),
                "name": call.function.name.unwrap_or_default(),
                "input": parse_input(call.function.arguments.as_deref().unwrap_or_default()),
            }));
        }
    }
    Ok(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.finish_reason.as_deref()),
        "stop_sequence": null,
        "usage": usage_json(usage),
    }))
}
