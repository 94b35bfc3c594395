//! Responses request → the canonical OpenAI Chat Completions request.
//!
//! - `instructions` becomes the first message (role `system`).
//! - `input` as a string is one user message; as items: `message` items (user,
//!   system, developer, assistant; `input_text`, `input_image`, `output_text` and
//!   `refusal` parts) become messages; a run of `reasoning`, assistant `message` and
//!   `function_call` items becomes one assistant message (text, `tool_calls`, and the
//!   signed thinking of the reasoning items as `thinking_blocks`); each
//!   `function_call_output` becomes a `tool` message.
//! - A `function_call`'s `call_id` is the tool-call id the gateway returned, reasoning
//!   state and all; `types::reasoning::extract` takes the state off it like any id.
//! - Function tools `{type, name, parameters, strict}` → `{type, function: {…}}`;
//!   `tool_choice` `{type: "function", name}` → `{type, function: {name}}`.
//! - `text.format` → `response_format`; `max_output_tokens` → `max_tokens`;
//!   `reasoning.effort` → `reasoning_effort`; `temperature`, `top_p`, `user` and
//!   `parallel_tool_calls` as they are. `metadata` stays with the response.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::wire::{canonical_effort, ResponsesRequest};
use crate::api::error::ApiError;
use crate::api::wire::{
    ChatMessage, ChatRequest, ContentPart, FunctionCall, FunctionDef, ImageUrl, JsonSchemaFormat,
    MessageContent, ResponseFormat, Role, Tool, ToolCall,
};

/// What marks the gateway's own `encrypted_content`: signed thinking blocks as JSON,
/// base64url. Anything else there (another service's state) is not read.
const BLOCKS_MARK: &str = "sy1.";

/// The `encrypted_content` of a reasoning item for signed thinking blocks.
pub fn encode_blocks(blocks: &[Value]) -> String {
    let json = serde_json::to_vec(blocks).unwrap_or_default();
    format!("{BLOCKS_MARK}{}", URL_SAFE_NO_PAD.encode(json))
}

/// The thinking blocks of an `encrypted_content`: `Ok(None)` for content that is not
/// the gateway's, an error for the gateway's mark followed by something unreadable.
pub fn decode_blocks(content: &str) -> Result<Option<Vec<Value>>, ()> {
    let Some(payload) = content.strip_prefix(BLOCKS_MARK) else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| ())?;
    let blocks: Vec<Value> = serde_json::from_slice(&bytes).map_err(|_| ())?;
    // Only the two block kinds and their documented fields go on.
    Ok(Some(
        blocks
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str)? {
                "thinking" => Some(json!({
                    "type": "thinking",
                    "thinking": b.get("thinking")?.as_str()?,
                    "signature": b.get("signature")?.as_str()?,
                })),
                "redacted_thinking" => Some(json!({
                    "type": "redacted_thinking",
                    "data": b.get("data")?.as_str()?,
                })),
                _ => None,
            })
            .collect(),
    ))
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(Some(param.to_owned()), message)
}

fn missing(param: &str) -> ApiError {
    invalid(param, format!("Missing required parameter: '{param}'."))
}

/// `v` as an object, or the 400 naming `at` when it is anything else.
fn object_at<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, ApiError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(invalid(
            at,
            format!("Invalid type for '{at}': expected an object."),
        )),
    }
}

fn string_at<'a>(item: &'a Map<String, Value>, field: &str, at: &str) -> Result<&'a str, ApiError> {
    match item.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(missing(&format!("{at}.{field}"))),
        Some(_) => Err(invalid(
            &format!("{at}.{field}"),
            format!("Invalid type for '{at}.{field}': expected a string."),
        )),
    }
}

/// The assistant turn being put together from consecutive output items.
#[derive(Default)]
struct Turn {
    text: String,
    calls: Vec<ToolCall>,
    blocks: Vec<Value>,
    reasoning: String,
    open: bool,
}

impl Turn {
    fn flush(&mut self, out: &mut Vec<ChatMessage>) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let turn = std::mem::take(self);
        let mut extra = Map::new();
        if !turn.blocks.is_empty() {
            extra.insert("thinking_blocks".into(), Value::Array(turn.blocks));
        }
        if !turn.reasoning.is_empty() {
            extra.insert("reasoning_content".into(), Value::String(turn.reasoning));
        }
        let content = if turn.text.is_empty() && !turn.calls.is_empty() {
            None
        } else {
            Some(MessageContent::Text(turn.text))
        };
        out.push(ChatMessage {
            role: Role::Assistant,
            content,
            name: None,
            tool_calls: (!turn.calls.is_empty()).then_some(turn.calls),
            tool_call_id: None,
            extra,
        });
    }
}

/// The canonical messages for a list of items. `at` names the list in errors
/// (`input`).
pub fn items_to_messages(
    items: &[Value],
    at: &str,
    out: &mut Vec<ChatMessage>,
) -> Result<(), ApiError> {
    let mut turn = Turn::default();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let item = object_at(item, &here)?;
        let kind = match item.get("type") {
            Some(Value::String(t)) => t.as_str(),
            None | Some(Value::Null) if item.contains_key("role") => "message",
            None | Some(Value::Null) => return Err(missing(&format!("{here}.type"))),
            Some(_) => {
                return Err(invalid(
                    &format!("{here}.type"),
                    format!("Invalid type for '{here}.type': expected a string."),
                ))
            }
        };
        match kind {
            "message" => {
                let role = string_at(item, "role", &here)?;
                if role == "assistant" {
                    turn.open = true;
                    assistant_text(item, &here, &mut turn.text)?;
                    continue;
                }
                turn.flush(out);
                let role = match role {
                    "user" => Role::User,
                    "system" => Role::System,
                    "developer" => Role::Developer,
                    other => {
                        return Err(invalid(
                            &format!("{here}.role"),
                            format!("Invalid value for '{here}.role': `{other}`; expected user, assistant, system or developer."),
                        ))
                    }
                };
                out.push(ChatMessage::new(role, input_content(item, &here)?));
            }
            "function_call" => {
                turn.open = true;
                let call_id = string_at(item, "call_id", &here)?;
                if call_id.is_empty() {
                    return Err(invalid(
                        &format!("{here}.call_id"),
                        format!("'{here}.call_id' must not be empty."),
                    ));
                }
                let name = string_at(item, "name", &here)?;
                let arguments = match item.get("arguments") {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => {
                        return Err(invalid(
                            &format!("{here}.arguments"),
                            format!("Invalid type for '{here}.arguments': expected a string of JSON."),
                        ))
                    }
                };
                turn.calls.push(ToolCall {
                    id: call_id.to_owned(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.to_owned(),
                        arguments,
                    },
                });
            }
            "function_call_output" => {
                turn.flush(out);
                let call_id = string_at(item, "call_id", &here)?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        parts_text(parts, &format!("{here}.output"))?
                    }
                    None | Some(Value::Null) => return Err(missing(&format!("{here}.output"))),
                    Some(_) => {
                        return Err(invalid(
                            &format!("{here}.output"),
                            format!("Invalid type for '{here}.output': expected a string or an array of content parts."),
                        ))
                    }
                };
                out.push(ChatMessage {
                    role: Role::Tool,
                    content: Some(MessageContent::Text(output)),
                    name: None,
                    tool_calls: None,
                    tool_call_id: Some(call_id.to_owned()),
                    extra: Map::new(),
                });
            }
            "reasoning" => {
                turn.open = true;
                reasoning_item(item, &here, &mut turn)?;
            }
            "item_reference" => {
                return Err(invalid(
                    &format!("{here}.type"),
                    format!("'{here}': item references are not supported; send the item itself, or use 'previous_response_id'."),
                ))
            }
            other => {
                return Err(invalid(
                    &format!("{here}.type"),
                    format!("Invalid value for '{here}.type': `{other}` is not supported; expected message, function_call, function_call_output or reasoning."),
                ))
            }
        }
    }
    turn.flush(out);
    Ok(())
}

/// The text of an assistant message item (`output_text`, `refusal` or plain text).
fn assistant_text(item: &Map<String, Value>, at: &str, text: &mut String) -> Result<(), ApiError> {
    match item.get("content") {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(parts)) => text.push_str(&parts_text(parts, &format!("{at}.content"))?),
        None | Some(Value::Null) => return Err(missing(&format!("{at}.content"))),
        Some(_) => {
            return Err(invalid(
                &format!("{at}.content"),
                format!(
                "Invalid type for '{at}.content': expected a string or an array of content parts."
            ),
            ))
        }
    }
    Ok(())
}

/// The text of content parts (any text-bearing kind), joined.
fn parts_text(parts: &[Value], at: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}[{j}]");
        let part = object_at(part, &here)?;
        let kind = string_at(part, "type", &here)?;
        match kind {
            "input_text" | "output_text" | "text" => text.push_str(string_at(part, "text", &here)?),
            "refusal" => text.push_str(string_at(part, "refusal", &here)?),
            other => {
                return Err(invalid(
                    &format!("{here}.type"),
                    format!("Invalid value for '{here}.type': `{other}` is not supported here; expected input_text or output_text."),
                ))
            }
        }
    }
    Ok(text)
}

/// The content of a user, system or developer message item.
fn input_content(item: &Map<String, Value>, at: &str) -> Result<MessageContent, ApiError> {
    let parts = match item.get("content") {
        Some(Value::String(s)) => return Ok(MessageContent::Text(s.clone())),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Err(missing(&format!("{at}.content"))),
        Some(_) => {
            return Err(invalid(
                &format!("{at}.content"),
                format!(
                "Invalid type for '{at}.content': expected a string or an array of content parts."
            ),
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        let part = object_at(part, &here)?;
        match string_at(part, "type", &here)? {
            "input_text" | "output_text" | "text" => out.push(ContentPart {
                kind: "text".into(),
                text: Some(string_at(part, "text", &here)?.to_owned()),
                image_url: None,
                extra: Map::new(),
            }),
            "input_image" => {
                if part.get("file_id").is_some_and(|f| !f.is_null()) {
                    return Err(invalid(
                        &format!("{here}.file_id"),
                        format!("'{here}.file_id': uploaded files are not supported; send 'image_url' (an https or data: URL)."),
                    ));
                }
                let url = string_at(part, "image_url", &here)?;
                let detail = match part.get("detail") {
                    Some(Value::String(d)) if matches!(d.as_str(), "low" | "high" | "auto") => {
                        Some(d.clone())
                    }
                    None | Some(Value::Null) => None,
                    Some(Value::String(_)) => None,
                    Some(_) => {
                        return Err(invalid(
                            &format!("{here}.detail"),
                            format!("Invalid type for '{here}.detail': expected a string."),
                        ))
                    }
                };
                out.push(ContentPart {
                    kind: "image_url".into(),
                    text: None,
                    image_url: Some(ImageUrl {
                        url: url.to_owned(),
                        detail,
                    }),
                    extra: Map::new(),
                });
            }
            other => {
                return Err(invalid(
                    &format!("{here}.type"),
                    format!("Invalid value for '{here}.type': `{other}` is not supported; expected input_text or input_image."),
                ))
            }
        }
    }
    Ok(MessageContent::Parts(out))
}

/// A reasoning item: its text (summary or content) and its signed blocks.
fn reasoning_item(item: &Map<String, Value>, at: &str, turn: &mut Turn) -> Result<(), ApiError> {
    for field in ["summary", "content"] {
        match item.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let here = format!("{at}.{field}[{j}]");
                    let part = object_at(part, &here)?;
                    turn.reasoning.push_str(string_at(part, "text", &here)?);
                }
            }
            Some(_) => {
                return Err(invalid(
                    &format!("{at}.{field}"),
                    format!("Invalid type for '{at}.{field}': expected an array."),
                ))
            }
        }
    }
    match item.get("encrypted_content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match decode_blocks(s) {
            Ok(Some(blocks)) => turn.blocks.extend(blocks),
            Ok(None) => {}
            Err(()) => {
                return Err(invalid(
                    &format!("{at}.encrypted_content"),
                    format!("'{at}.encrypted_content' is not the value this gateway returned; send reasoning items back unchanged."),
                ))
            }
        },
        Some(_) => {
            return Err(invalid(
                &format!("{at}.encrypted_content"),
                format!("Invalid type for '{at}.encrypted_content': expected a string."),
            ))
        }
    }
    Ok(())
}

/// The function tools, in Chat Completions' shape.
fn tools(req: &ResponsesRequest) -> Result<Option<Vec<Tool>>, ApiError> {
    let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let here = format!("tools[{i}]");
        let tool = object_at(tool, &here)?;
        let kind = string_at(tool, "type", &here)?;
        if kind != "function" {
            return Err(invalid(
                &format!("{here}.type"),
                format!(
                    "Invalid value for '{here}.type': `{kind}`; only function tools are supported."
                ),
            ));
        }
        let name = string_at(tool, "name", &here)?;
        if name.is_empty() {
            return Err(invalid(
                &format!("{here}.name"),
                format!("'{here}.name' must not be empty."),
            ));
        }
        let description = match tool.get("description") {
            Some(Value::String(d)) => Some(d.clone()),
            None | Some(Value::Null) => None,
            Some(_) => {
                return Err(invalid(
                    &format!("{here}.description"),
                    format!("Invalid type for '{here}.description': expected a string."),
                ))
            }
        };
        let parameters = match tool.get("parameters") {
            Some(p @ Value::Object(_)) => Some(p.clone()),
            None | Some(Value::Null) => None,
            Some(_) => {
                return Err(invalid(
                    &format!("{here}.parameters"),
                    format!("Invalid type for '{here}.parameters': expected a JSON Schema object."),
                ))
            }
        };
        let strict = match tool.get("strict") {
            Some(Value::Bool(b)) => Some(*b),
            None | Some(Value::Null) => None,
            Some(_) => {
                return Err(invalid(
                    &format!("{here}.strict"),
                    format!("Invalid type for '{here}.strict': expected a boolean."),
                ))
            }
        };
        out.push(Tool {
            kind: "function".into(),
            function: Some(FunctionDef {
                name: name.to_owned(),
                description,
                parameters,
                strict,
            }),
            extra: Map::new(),
        });
    }
    Ok(Some(out))
}

fn tool_choice(choice: &Value) -> Result<Value, ApiError> {
    let bad = || {
        invalid(
            "tool_choice",
            "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": …}.",
        )
    };
    match choice {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = string_at(o, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad()),
    }
}

fn response_format(format: &Value) -> Result<Option<ResponseFormat>, ApiError> {
    let f = object_at(format, "text.format")?;
    match string_at(f, "type", "text.format")? {
        "text" => Ok(None),
        "json_object" => Ok(Some(ResponseFormat {
            kind: "json_object".into(),
            json_schema: None,
        })),
        "json_schema" => {
            let name = string_at(f, "name", "text.format")?;
            let mut extra = Map::new();
            match f.get("schema") {
                Some(s @ Value::Object(_)) => {
                    extra.insert("schema".into(), s.clone());
                }
                None | Some(Value::Null) => return Err(missing("text.format.schema")),
                Some(_) => {
                    return Err(invalid(
                        "text.format.schema",
                        "Invalid type for 'text.format.schema': expected a JSON Schema object.",
                    ))
                }
            }
            for field in ["strict", "description"] {
                if let Some(v) = f.get(field).filter(|v| !v.is_null()) {
                    extra.insert(field.into(), v.clone());
                }
            }
            Ok(Some(ResponseFormat {
                kind: "json_schema".into(),
                json_schema: Some(JsonSchemaFormat {
                    name: name.to_owned(),
                    extra,
                }),
            }))
        }
        other => Err(invalid(
            "text.format.type",
            format!("Invalid value for 'text.format.type': `{other}`; expected text, json_object or json_schema."),
        )),
    }
}

/// The canonical request for `req`; `history` is a stored conversation's items
/// (`previous_response_id`), put before the input.
pub fn to_chat(req: &ResponsesRequest, history: &[Value]) -> Result<ChatRequest, ApiError> {
    let mut messages = Vec::new();
    if let Some(instructions) = req.instructions.as_ref().filter(|s| !s.is_empty()) {
        messages.push(ChatMessage::new(
            Role::System,
            MessageContent::Text(instructions.clone()),
        ));
    }
    items_to_messages(history, "previous_response_id", &mut messages)?;
    match &req.input {
        Some(Value::String(s)) => messages.push(ChatMessage::new(
            Role::User,
            MessageContent::Text(s.clone()),
        )),
        Some(Value::Array(items)) => items_to_messages(items, "input", &mut messages)?,
        _ => {}
    }
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err(invalid("input", "'input' must contain at least one item."));
    }
    let tools = tools(req)?;
    let tool_choice = match &req.tool_choice {
        Some(c) => Some(tool_choice(c)?),
        None => None,
    }
    // OpenAI-style upstreams refuse a tool_choice without tools.
    .filter(|_| tools.is_some());
    let response_format = match req.text.as_ref().and_then(|t| t.format.as_ref()) {
        Some(f) => response_format(f)?,
        None => None,
    };
    let mut extra = Map::new();
    if let Some(t) = req.temperature {
        extra.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        extra.insert("top_p".into(), json!(p));
    }
    if let Some(user) = &req.user {
        extra.insert("user".into(), json!(user));
    }
    if let (Some(p), Some(_)) = (req.parallel_tool_calls, &tools) {
        extra.insert("parallel_tool_calls".into(), json!(p));
    }
    if let Some(effort) = req
        .reasoning
        .as_ref()
        .and_then(|r| r.effort.as_deref())
        .and_then(canonical_effort)
    {
        extra.insert("reasoning_effort".into(), json!(effort));
    }
    Ok(ChatRequest {
        model: req.model.clone(),
        messages: messages.into(),
        stream: req.stream.filter(|s| *s),
        stream_options: None,
        tools,
        tool_choice,
        response_format,
        n: None,
        stop: None,
        max_tokens: req.max_output_tokens,
        max_completion_tokens: None,
        extra,
        carried: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::parse_body;

    fn chat_of(body: &Value) -> ChatRequest {
        let req: ResponsesRequest = serde_json::from_value(body.clone()).expect("request");
        req.validate().expect("valid");
        to_chat(&req, &[]).expect("translates")
    }

    #[test]
    fn an_echoed_turn_becomes_one_assistant_message_and_its_results_tool_messages() {
        let blocks = vec![json!({"type": "thinking", "thinking": "hm", "signature": "s1"})];
        let chat = chat_of(
            &json!({"model": "m", "instructions": "Be brief.", "input": [
                {"role": "user", "content": "go"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}],
                    "encrypted_content": encode_blocks(&blocks)},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}
            ]}),
        );
        let v = serde_json::to_value(&chat).expect("json");
        let m = v["messages"].as_array().expect("messages");
        assert_eq!(m.len(), 5, "{v}");
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[2]["role"], "assistant");
        assert_eq!(m[2]["content"], "Calling.");
        assert_eq!(m[2]["tool_calls"][1]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(m[2]["thinking_blocks"], json!(blocks));
        assert_eq!(m[2]["reasoning_content"], "hm");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "one"})
        );
        assert_eq!(m[4]["content"], "two");
    }

    #[test]
    fn encrypted_content_is_read_only_when_it_is_ours() {
        let blocks = vec![
            json!({"type": "thinking", "thinking": "t", "signature": "s", "extra": 1}),
            json!({"type": "redacted_thinking", "data": "d"}),
            json!({"type": "thinking", "thinking": 7, "signature": "s"}),
            json!({"type": "tool_use"}),
        ];
        let decoded = decode_blocks(&encode_blocks(&blocks)).expect("ours");
        assert_eq!(
            decoded,
            Some(vec![
                json!({"type": "thinking", "thinking": "t", "signature": "s"}),
                json!({"type": "redacted_thinking", "data": "d"}),
            ])
        );
        assert_eq!(decode_blocks("gAAAAABo-openai-state"), Ok(None));
        assert_eq!(decode_blocks("sy1.%%%"), Err(()));
        assert_eq!(decode_blocks("sy1.bm90IGpzb24"), Err(()));
    }

    #[test]
    fn call_ids_keep_the_reasoning_state_for_extract() {
        let id = crate::types::reasoning::encode_call_id("call_1", "gemini-aa", Some("sig"));
        let mut chat = chat_of(&json!({"model": "m", "input": [
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": id, "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": id, "output": "x"}
        ], "reasoning": {"effort": "xhigh"}}));
        assert_eq!(chat.extra["reasoning_effort"], "high");
        crate::types::reasoning::extract(&mut chat);
        let carried = chat.carried.as_deref().expect("carried");
        assert_eq!(carried.signature("call_1", "gemini-aa"), Some("sig"));
        let v = serde_json::to_value(&chat).expect("json");
        assert_eq!(v["messages"][1]["tool_calls"][0]["id"], "call_1");
        assert_eq!(v["messages"][2]["tool_call_id"], "call_1");
    }

    #[test]
    fn hostile_values_are_400s_naming_the_field() {
        for (body, param) in [
            (
                r#"{"model":"m","input":"x","max_output_tokens":1e999}"#,
                None,
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":-1}"#,
                Some("max_output_tokens"),
            ),
            (
                r#"{"model":"m","input":"x","temperature":"hot"}"#,
                Some("temperature"),
            ),
            (r#"{"model":"m","input":"x","tools":"all"}"#, Some("tools")),
            (
                r#"{"model":"m","input":"x","reasoning":[]}"#,
                Some("reasoning"),
            ),
        ] {
            let err = parse_body::<ResponsesRequest>(body.as_bytes()).expect_err(body);
            if let Some(p) = param {
                assert_eq!(err.param.as_deref(), Some(p), "{body}");
            }
            assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
        }
    }
}
