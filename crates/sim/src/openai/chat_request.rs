//! Chat request validation: OpenAI's required fields and shapes, with errors that name
//! the offending parameter.

use serde_json::{json, Value};

use super::{field, invalid_type, invalid_value, missing, ApiError};
use crate::generate::{chat_digest, Digest32};

#[derive(Clone, Debug)]
pub(crate) struct Tool {
    pub(crate) name: String,
    pub(crate) parameters: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ToolChoice {
    Auto,
    Never,
    Required,
    Named(String),
}

#[derive(Clone, Debug)]
pub(crate) enum Format {
    Text,
    JsonObject,
    JsonSchema(Value),
}

/// A validated chat request, reduced to what the simulator acts on.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    /// The name matched against faults and echoed as `model` (Azure classic: deployment).
    pub(crate) model: String,
    pub(crate) messages: Vec<Value>,
    pub(crate) tools: Vec<Tool>,
    /// Every tool definition as sent, for the prompt-token estimate.
    pub(crate) tool_values: Vec<Value>,
    pub(crate) tool_choice: ToolChoice,
    pub(crate) parallel_tool_calls: bool,
    pub(crate) n: usize,
    pub(crate) limit: Option<usize>,
    pub(crate) stop: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) format: Format,
    pub(crate) digest: Digest32,
}

pub(crate) fn parse_chat(
    body: &Value,
    deployment: Option<String>,
) -> Result<ChatRequest, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid(
            "The request body is not a valid JSON object.",
            None,
            None,
        ));
    }
    let model = match (deployment, field(body, "model")) {
        (Some(d), _) => d,
        (None, Some(Value::String(m))) if !m.is_empty() => m.clone(),
        (None, Some(Value::String(_))) | (None, None) => {
            return Err(ApiError::invalid(
                "You must provide a model parameter.",
                Some("model"),
                Some("missing_required_parameter"),
            ))
        }
        (None, Some(other)) => return Err(invalid_type("model", "a string", other)),
    };
    let messages = match field(body, "messages") {
        None => return Err(missing("messages")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(ApiError::invalid(
                "Invalid 'messages': empty array. Expected an array with at least 1 item.",
                Some("messages"),
                Some("empty_array"),
            ))
        }
        Some(Value::Array(m)) => m.clone(),
        Some(other) => return Err(invalid_type("messages", "an array of objects", other)),
    };
    validate_messages(&messages)?;

    let (tools, tool_values) = parse_tools(body)?;
    let tool_choice = parse_tool_choice(body, &tools, &tool_values)?;
    let parallel_tool_calls = match field(body, "parallel_tool_calls") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(invalid_type("parallel_tool_calls", "a boolean", other)),
    };
    let n = match field(body, "n") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=128) => n as usize,
            _ => {
                return Err(invalid_value(
                    "n",
                    format!("Invalid value for 'n': {v}. Expected an integer from 1 to 128."),
                ))
            }
        },
    };
    let mut limit: Option<usize> = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = field(body, key) {
            match v.as_u64() {
                Some(m) if m >= 1 => {
                    let m = usize::try_from(m).unwrap_or(usize::MAX);
                    limit = Some(limit.map_or(m, |l| l.min(m)));
                }
                _ => {
                    return Err(invalid_value(
                        key,
                        format!("Invalid '{key}': {v}. Expected an integer of at least 1."),
                    ))
                }
            }
        }
    }
    let stop = match field(body, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 4 => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str() {
                    Some(s) => out.push(s.to_string()),
                    None => return Err(invalid_type("stop", "a string or array of strings", item)),
                }
            }
            out
        }
        Some(Value::Array(_)) => {
            return Err(invalid_value(
                "stop",
                "Invalid 'stop': at most 4 stop sequences are allowed.",
            ))
        }
        Some(other) => return Err(invalid_type("stop", "a string or array of strings", other)),
    };
    let stream = match field(body, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    };
    let include_usage = match field(body, "stream_options") {
        None => false,
        Some(_) if !stream => {
            return Err(invalid_value(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            ))
        }
        Some(opts @ Value::Object(_)) => {
            opts.get("include_usage").and_then(Value::as_bool) == Some(true)
        }
        Some(other) => return Err(invalid_type("stream_options", "an object", other)),
    };
    let format = parse_response_format(body)?;
    Ok(ChatRequest {
        model,
        messages,
        tools,
        tool_values,
        tool_choice,
        parallel_tool_calls,
        n,
        limit,
        stop,
        stream,
        include_usage,
        format,
        digest: chat_digest(body),
    })
}

/// Checks roles, required keys, content shapes, and that tool results answer the tool
/// calls of the assistant message before them (OpenAI rejects conversations that do not).
fn validate_messages(messages: &[Value]) -> Result<(), ApiError> {
    // Tool-call ids of the latest assistant message that still await their results.
    let mut pending: Vec<String> = Vec::new();
    let mut pending_from: Option<usize> = None;
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        if !m.is_object() {
            return Err(invalid_type(&at, "an object", m));
        }
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(other) => return Err(invalid_type(&format!("{at}.role"), "a string", other)),
            None => return Err(missing(&format!("{at}.role"))),
        };
        if role != "tool" {
            if let Some(from) = pending_from.filter(|_| !pending.is_empty()) {
                return Err(invalid_value(
                    &format!("messages[{from}]"),
                    format!(
                        "An assistant message with 'tool_calls' must be followed by tool messages \
                         answering each 'tool_call_id'. Missing: {}.",
                        pending.join(", ")
                    ),
                ));
            }
            pending.clear();
            pending_from = None;
        }
        let content = m.get("content").filter(|c| !c.is_null());
        match role {
            "system" | "developer" | "user" | "function" => {
                let Some(content) = content else {
                    return Err(missing(&format!("{at}.content")));
                };
                validate_content(content, &at, role == "user")?;
            }
            "assistant" => {
                let calls = m.get("tool_calls").filter(|c| !c.is_null());
                match (content, calls) {
                    (None, None) if m.get("function_call").is_none() => {
                        return Err(missing(&format!("{at}.content")))
                    }
                    (Some(c), _) => validate_content(c, &at, false)?,
                    _ => {}
                }
                if let Some(calls) = calls {
                    let Value::Array(calls) = calls else {
                        return Err(invalid_type(&format!("{at}.tool_calls"), "an array", calls));
                    };
                    for (j, call) in calls.iter().enumerate() {
                        let Some(id) = call.get("id").and_then(Value::as_str) else {
                            return Err(missing(&format!("{at}.tool_calls[{j}].id")));
                        };
                        if call
                            .get("function")
                            .and_then(|f| f.get("name"))
                            .and_then(Value::as_str)
                            .is_none()
                        {
                            return Err(missing(&format!("{at}.tool_calls[{j}].function.name")));
                        }
                        pending.push(id.to_string());
                    }
                    if !pending.is_empty() {
                        pending_from = Some(i);
                    }
                }
            }
            "tool" => {
                let Some(id) = m.get("tool_call_id").and_then(Value::as_str) else {
                    return Err(missing(&format!("{at}.tool_call_id")));
                };
                let Some(content) = content else {
                    return Err(missing(&format!("{at}.content")));
                };
                validate_content(content, &at, false)?;
                match pending.iter().position(|p| p == id) {
                    Some(pos) => {
                        pending.remove(pos);
                    }
                    None => {
                        return Err(invalid_value(
                            &format!("{at}.role"),
                            format!(
                                "A message with role 'tool' must answer a 'tool_call_id' of the \
                                 preceding assistant message's 'tool_calls'; '{id}' does not."
                            ),
                        ))
                    }
                }
            }
            other => {
                return Err(invalid_value(
                    &format!("{at}.role"),
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'system', 'developer', \
                         'user', 'assistant', 'tool' and 'function'."
                    ),
                ))
            }
        }
    }
    if let Some(from) = pending_from.filter(|_| !pending.is_empty()) {
        return Err(invalid_value(
            &format!("messages[{from}]"),
            format!(
                "An assistant message with 'tool_calls' must be followed by tool messages \
                 answering each 'tool_call_id'. Missing: {}.",
                pending.join(", ")
            ),
        ));
    }
    Ok(())
}

fn validate_content(content: &Value, at: &str, user: bool) -> Result<(), ApiError> {
    let parts = match content {
        Value::String(_) => return Ok(()),
        Value::Array(parts) => parts,
        other => {
            return Err(invalid_type(
                &format!("{at}.content"),
                "a string or array of parts",
                other,
            ))
        }
    };
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        let Some(kind) = part.get("type").and_then(Value::as_str) else {
            return Err(missing(&format!("{here}.type")));
        };
        match kind {
            "text" => {
                if part.get("text").and_then(Value::as_str).is_none() {
                    return Err(missing(&format!("{here}.text")));
                }
            }
            "refusal" if !user => {}
            "image_url" | "input_audio" | "file" if user => {
                if kind == "image_url" {
                    let url = part
                        .get("image_url")
                        .and_then(|i| i.get("url"))
                        .and_then(Value::as_str);
                    let Some(url) = url else {
                        return Err(missing(&format!("{here}.image_url.url")));
                    };
                    let ok = url.starts_with("https://")
                        || url.starts_with("http://")
                        || url.starts_with("data:");
                    if !ok {
                        return Err(invalid_value(
                            &format!("{here}.image_url.url"),
                            "Invalid image URL: expected an http(s) URL or a base64 data URL.",
                        ));
                    }
                }
            }
            other => {
                return Err(invalid_value(
                    &format!("{here}.type"),
                    format!("Invalid content part type '{other}' for this message role."),
                ))
            }
        }
    }
    Ok(())
}

/// True when `name` is a valid function name (letters, digits, `_`, `-`; 1 to 64).
fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_tools(body: &Value) -> Result<(Vec<Tool>, Vec<Value>), ApiError> {
    let raw = match field(body, "tools") {
        None => return Ok((Vec::new(), Vec::new())),
        Some(Value::Array(t)) => t,
        Some(other) => return Err(invalid_type("tools", "an array", other)),
    };
    let mut tools = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let Some(f) = t.get("function").filter(|f| f.is_object()) else {
                    return Err(missing(&format!("tools[{i}].function")));
                };
                let Some(name) = f.get("name").and_then(Value::as_str) else {
                    return Err(missing(&format!("tools[{i}].function.name")));
                };
                if !valid_function_name(name) {
                    return Err(invalid_value(
                        &format!("tools[{i}].function.name"),
                        format!(
                            "Invalid function name '{name}': use letters, digits, '_' or '-' \
                             (at most 64)."
                        ),
                    ));
                }
                let parameters = field(f, "parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                tools.push(Tool {
                    name: name.to_string(),
                    parameters,
                });
            }
            // Custom tools are accepted (and counted) but never called by the simulator.
            Some("custom") => {}
            _ => {
                return Err(invalid_value(
                    &format!("tools[{i}].type"),
                    "Invalid tool type: expected 'function' or 'custom'.",
                ))
            }
        }
    }
    Ok((tools, raw.clone()))
}

fn parse_tool_choice(
    body: &Value,
    tools: &[Tool],
    tool_values: &[Value],
) -> Result<ToolChoice, ApiError> {
    let choice = match field(body, "tool_choice") {
        None => return Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::Never,
            "required" => ToolChoice::Required,
            other => {
                return Err(invalid_value(
                    "tool_choice",
                    format!(
                        "Invalid value for 'tool_choice': '{other}'. Expected 'none', 'auto', \
                         'required' or an object."
                    ),
                ))
            }
        },
        Some(obj @ Value::Object(_)) => {
            match obj.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let name = obj
                        .get("function")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| missing("tool_choice.function.name"))?;
                    if !tool_values.is_empty() && !tools.iter().any(|t| t.name == name) {
                        return Err(invalid_value(
                            "tool_choice",
                            format!(
                                "Invalid value for 'tool_choice': function '{name}' is not \
                                 among the 'tools'."
                            ),
                        ));
                    }
                    ToolChoice::Named(name.to_string())
                }
                // allowed_tools / custom: treated as "auto" over the declared tools.
                _ => ToolChoice::Auto,
            }
        }
        Some(other) => return Err(invalid_type("tool_choice", "a string or object", other)),
    };
    let needs_tools = matches!(choice, ToolChoice::Required | ToolChoice::Named(_));
    if needs_tools && tool_values.is_empty() {
        return Err(invalid_value(
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are \
             specified.",
        ));
    }
    Ok(choice)
}

fn parse_response_format(body: &Value) -> Result<Format, ApiError> {
    let Some(rf) = field(body, "response_format") else {
        return Ok(Format::Text);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => {
            let Some(js) = rf.get("json_schema").filter(|j| j.is_object()) else {
                return Err(missing("response_format.json_schema"));
            };
            if js.get("name").and_then(Value::as_str).is_none() {
                return Err(missing("response_format.json_schema.name"));
            }
            Ok(Format::JsonSchema(
                field(js, "schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            ))
        }
        _ => Err(invalid_value(
            "response_format.type",
            "Invalid 'response_format.type': expected 'text', 'json_object' or 'json_schema'.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn req(body: Value) -> ChatRequest {
        match parse_chat(&body, None) {
            Ok(r) => r,
            Err(e) => panic!("unexpected error {:?}", e.body),
        }
    }

    fn err_param(body: Value) -> Value {
        match parse_chat(&body, None) {
            Ok(_) => panic!("expected an error for {body}"),
            Err(e) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST);
                e.body["error"]["param"].clone()
            }
        }
    }

    #[test]
    fn validation_names_the_param() {
        assert_eq!(
            err_param(json!({"messages": [{"role":"user","content":"x"}]})),
            "model"
        );
        assert_eq!(err_param(json!({"model": "m"})), "messages");
        assert_eq!(err_param(json!({"model": "m", "messages": []})), "messages");
        assert_eq!(
            err_param(json!({"model": "m", "messages": [{"role":"robot","content":"x"}]})),
            "messages[0].role"
        );
        assert_eq!(
            err_param(json!({"model":"m","messages":[{"role":"user","content":"x"}],"n":0})),
            "n"
        );
        assert_eq!(
            err_param(
                json!({"model":"m","messages":[{"role":"user","content":"x"}],
                "stream_options":{"include_usage":true}})
            ),
            "stream_options"
        );
        assert_eq!(
            err_param(
                json!({"model":"m","messages":[{"role":"user","content":"x"}],
                "tool_choice":"required"})
            ),
            "tool_choice"
        );
        // A tool result must answer a preceding tool call.
        assert_eq!(
            err_param(json!({"model":"m","messages":[
                {"role":"user","content":"x"},
                {"role":"tool","tool_call_id":"call_1","content":"42"}]})),
            "messages[1].role"
        );
        // And every tool call needs its result before the conversation goes on.
        assert_eq!(
            err_param(json!({"model":"m","messages":[
                {"role":"user","content":"x"},
                {"role":"assistant","content":null,"tool_calls":[
                    {"id":"a","type":"function","function":{"name":"f","arguments":"{}"}},
                    {"id":"b","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"a","content":"1"},
                {"role":"user","content":"next"}]})),
            "messages[1]"
        );
        // Unknown fields are fine.
        let r = req(
            json!({"model":"m","messages":[{"role":"user","content":"x"}],
            "frobnicate": {"a": 1}, "temperature": 0.2}),
        );
        assert_eq!(r.n, 1);
    }
}
