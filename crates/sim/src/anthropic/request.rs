//! Messages request validation, with Anthropic's error messages (the field path, then
//! what is wrong), reduced to a protocol-neutral [`Conversation`].

use serde_json::{json, Value};

use super::AnthropicError;
use crate::conversation::{
    cached_tokens, digest_without, valid_tool_name, Choice, Conversation, OutFormat, Tally,
    ToolSpec,
};
use crate::reasoning::{self, Kind, Thinking, MARKER_REDACTED};

/// A validated Messages request.
#[derive(Debug)]
pub(super) struct MessagesRequest {
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) conv: Conversation,
    /// The whole prompt, cached part included.
    pub(super) prompt_tokens: u64,
    pub(super) cached_tokens: u64,
    /// The requested thinking (checked against the model's rules).
    pub(super) thinking: Thinking,
    /// `[[redacted_thinking]]`: a thinking answer also carries a `redacted_thinking` block.
    pub(super) redacted: bool,
}

const MEDIA_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

fn bad(message: impl Into<String>) -> AnthropicError {
    AnthropicError::invalid(message)
}

fn present<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// Parses a Messages (or count_tokens) body; `count_only` does not need `max_tokens`.
pub(super) fn parse(body: &Value, count_only: bool) -> Result<MessagesRequest, AnthropicError> {
    if !body.is_object() {
        return Err(bad(
            "The request body is not valid JSON: expected an object.",
        ));
    }
    let model = match present(body, "model") {
        None => return Err(bad("model: Field required")),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => {
            return Err(bad("model: String should have at least 1 character"))
        }
        Some(_) => return Err(bad("model: Input should be a valid string")),
    };
    let limit = match present(body, "max_tokens") {
        None if count_only => None,
        None => return Err(bad("max_tokens: Field required")),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(_) => {
                return Err(bad(
                    "max_tokens: Input should be greater than or equal to 1",
                ))
            }
            None => return Err(bad("max_tokens: Input should be a valid integer")),
        },
    };
    let stream = match present(body, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream: Input should be a valid boolean")),
    };
    if let Some(t) = present(body, "temperature") {
        match t.as_f64() {
            Some(x) if x < 0.0 => {
                return Err(bad(
                    "temperature: Input should be greater than or equal to 0",
                ))
            }
            Some(x) if x > 1.0 => {
                return Err(bad("temperature: Input should be less than or equal to 1"))
            }
            Some(_) => {}
            None => return Err(bad("temperature: Input should be a valid number")),
        }
    }
    let stop = match present(body, "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, s) in items.iter().enumerate() {
                match s.as_str() {
                    Some(s) if s.trim().is_empty() => {
                        return Err(bad(
                            "stop_sequences: each stop sequence must contain non-whitespace",
                        ))
                    }
                    Some(s) => out.push(s.to_string()),
                    None => {
                        return Err(bad(format!(
                            "stop_sequences.{i}: Input should be a valid string"
                        )))
                    }
                }
            }
            out
        }
        Some(_) => return Err(bad("stop_sequences: Input should be a valid list")),
    };

    let mut tally = Tally::new();
    let mut all_text = String::new();
    match present(body, "system") {
        None => {}
        Some(Value::String(s)) => {
            tally.message();
            tally.text(s);
            all_text.push_str(s);
        }
        Some(Value::Array(blocks)) => {
            tally.message();
            for (j, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(format!("system.{j}.type: Input should be 'text'")));
                }
                let Some(text) = b.get("text").and_then(Value::as_str) else {
                    return Err(bad(format!("system.{j}.text: Field required")));
                };
                tally.text(text);
                all_text.push_str(text);
                all_text.push('\n');
            }
        }
        Some(_) => return Err(bad("system: Input should be a valid string")),
    }

    let messages = match present(body, "messages") {
        None => return Err(bad("messages: Field required")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(bad(
                "messages: List should have at least 1 item after validation, not 0",
            ))
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(bad("messages: Input should be a valid list")),
    };
    let walk = walk_messages(messages, &mut tally, &mut all_text)?;

    let (tools, choice, parallel) = parse_tools(body, &mut tally)?;
    let forced = matches!(choice, Choice::Any | Choice::Named(_));
    let thinking = reasoning::claude_thinking(
        present(body, "thinking"),
        &model,
        limit.map(|l| l as u64),
        forced,
    )
    .map_err(bad)?;
    check_thinking_history(messages, &model, thinking)?;
    let format = match present(body, "output_config")
        .and_then(|c| present(c, "format"))
        .or_else(|| present(body, "output_format"))
    {
        None => OutFormat::Text,
        Some(f) if f.get("type").and_then(Value::as_str) == Some("json_schema") => {
            match present(f, "schema") {
                Some(schema @ Value::Object(_)) => OutFormat::JsonSchema(schema.clone()),
                _ => return Err(bad("output_config.format.schema: Field required")),
            }
        }
        Some(_) => {
            return Err(bad(
                "output_config.format.type: Input should be 'json_schema'",
            ))
        }
    };

    let prompt_tokens = tally.finish();
    let cached = cached_tokens(&all_text, prompt_tokens);
    let redacted = all_text.contains(MARKER_REDACTED);
    let digest = digest_without(
        body,
        &[&["stream"], &["max_tokens"], &["stop_sequences"]],
        "",
    );
    Ok(MessagesRequest {
        model,
        stream,
        conv: Conversation {
            digest,
            all_text,
            last_user_text: walk.last_user_text,
            ends_with_tool_result: walk.ends_with_tool_result,
            tools,
            choice,
            parallel,
            preamble: true,
            limit,
            stop,
            format,
        },
        prompt_tokens,
        cached_tokens: cached,
        thinking,
        redacted,
    })
}

/// Thinking blocks in the history must carry a signature (a `redacted_thinking` block:
/// `data`) this simulator issued for this model, whether or not thinking is on now. With
/// thinking on, a conversation that ends with tool results needs the assistant turn that
/// made the calls to start with its thinking block.
fn check_thinking_history(
    messages: &[Value],
    model: &str,
    thinking: Thinking,
) -> Result<(), AnthropicError> {
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        let Some(Value::Array(blocks)) = m.get("content") else {
            continue;
        };
        for (j, block) in blocks.iter().enumerate() {
            let here = format!("messages.{i}.content.{j}");
            match block.get("type").and_then(Value::as_str) {
                Some("thinking") => {
                    let Some(text) = block.get("thinking").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.thinking.thinking: Field required")));
                    };
                    let Some(signature) = block.get("signature").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.thinking.signature: Field required")));
                    };
                    if !reasoning::verify(signature, Kind::Anthropic, model, text) {
                        return Err(bad(format!(
                            "{here}: Invalid `signature` in `thinking` block"
                        )));
                    }
                }
                Some("redacted_thinking") => {
                    let Some(data) = block.get("data").and_then(Value::as_str) else {
                        return Err(bad(format!(
                            "{here}.redacted_thinking.data: Field required"
                        )));
                    };
                    if !reasoning::verify(data, Kind::Anthropic, model, reasoning::REDACTED_CONTENT)
                    {
                        return Err(bad(format!(
                            "{here}: Invalid `data` in `redacted_thinking` block"
                        )));
                    }
                }
                _ => {}
            }
        }
    }
    if !thinking.on() || messages.len() < 2 {
        return Ok(());
    }
    let n = messages.len();
    let ends_with_results = messages.get(n - 1).is_some_and(|m| {
        m.get("role").and_then(Value::as_str) == Some("user")
            && matches!(m.get("content"), Some(Value::Array(blocks))
                if blocks.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result")))
    });
    let Some(assistant) = messages.get(n - 2).filter(|_| ends_with_results) else {
        return Ok(());
    };
    let first = match assistant.get("content") {
        Some(Value::Array(blocks)) => blocks
            .first()
            .and_then(|b| b.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("text"),
        _ => "text",
    };
    if first == "thinking" || first == "redacted_thinking" {
        return Ok(());
    }
    Err(bad(reasoning::missing_thinking_message(
        &format!("messages.{}.content.0.type", n - 2),
        first,
    )))
}

struct Walk {
    last_user_text: String,
    ends_with_tool_result: bool,
}

/// The content of message `i` as blocks (a string is one text block).
fn blocks_of(m: &Value, at: &str) -> Result<Vec<Value>, AnthropicError> {
    match present(m, "content") {
        None => Err(bad(format!("{at}.content: Field required"))),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(blocks)) => Ok(blocks.clone()),
        Some(_) => Err(bad(format!("{at}.content: Input should be a valid list"))),
    }
}

fn walk_messages(
    messages: &[Value],
    tally: &mut Tally,
    all_text: &mut String,
) -> Result<Walk, AnthropicError> {
    let mut last_user_text = String::new();
    let mut ends_with_tool_result = false;
    // Tool-use ids of the previous assistant message, awaiting their results.
    let mut pending: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        if !m.is_object() {
            return Err(bad(format!("{at}: Input should be a valid dictionary")));
        }
        let role = match present(m, "role") {
            None => return Err(bad(format!("{at}.role: Field required"))),
            Some(Value::String(r)) => r.as_str(),
            Some(_) => {
                return Err(bad(format!(
                    "{at}.role: Input should be 'user' or 'assistant'"
                )))
            }
        };
        match role {
            "user" | "assistant" => {}
            "system" => {
                return Err(bad(format!(
                    "{at}.role: Unexpected role \"system\". The Messages API accepts a top-level \
                     `system` parameter, not \"system\" as an input message role."
                )))
            }
            _ => {
                return Err(bad(format!(
                    "{at}.role: Input should be 'user' or 'assistant'"
                )))
            }
        }
        let blocks = blocks_of(m, &at)?;
        let is_last = i + 1 == messages.len();
        let empty_string = matches!(present(m, "content"), Some(Value::String(s)) if s.is_empty());
        if (blocks.is_empty() || empty_string) && !(is_last && role == "assistant") {
            return Err(bad(format!(
                "{at}: all messages must have non-empty content except for the optional final \
                 assistant message"
            )));
        }
        tally.message();
        let mut texts: Vec<String> = Vec::new();
        let mut tool_uses: Vec<String> = Vec::new();
        let mut results: Vec<(usize, String)> = Vec::new();
        let mut first_non_result: Option<usize> = None;
        for (j, block) in blocks.iter().enumerate() {
            let here = format!("{at}.content.{j}");
            let Some(kind) = block.get("type").and_then(Value::as_str) else {
                return Err(bad(format!("{here}.type: Field required")));
            };
            if kind != "tool_result" && first_non_result.is_none() {
                first_non_result = Some(j);
            }
            match (role, kind) {
                (_, "text") => {
                    let Some(text) = block.get("text").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.text: Field required")));
                    };
                    if text.is_empty() && !empty_string {
                        return Err(bad("messages: text content blocks must be non-empty"));
                    }
                    tally.text(text);
                    texts.push(text.to_string());
                }
                ("user", "image") => {
                    check_image(block, &here)?;
                    tally.image();
                }
                ("user", "document" | "search_result") => tally.json(block),
                ("user", "tool_result") => {
                    let Some(id) = block.get("tool_use_id").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.tool_use_id: Field required")));
                    };
                    match present(block, "content") {
                        None => {}
                        Some(Value::String(s)) => {
                            tally.text(s);
                            all_text.push_str(s);
                            all_text.push('\n');
                        }
                        Some(Value::Array(parts)) => {
                            for (k, part) in parts.iter().enumerate() {
                                match part.get("type").and_then(Value::as_str) {
                                    Some("text") => {
                                        let text =
                                            part.get("text").and_then(Value::as_str).unwrap_or("");
                                        tally.text(text);
                                        all_text.push_str(text);
                                        all_text.push('\n');
                                    }
                                    Some("image") => {
                                        check_image(part, &format!("{here}.content.{k}"))?;
                                        tally.image();
                                    }
                                    Some("document" | "search_result") => tally.json(part),
                                    _ => {
                                        return Err(bad(format!(
                                            "{here}.content.{k}.type: Input should be 'text', \
                                             'image', 'search_result' or 'document'"
                                        )))
                                    }
                                }
                            }
                        }
                        Some(_) => {
                            return Err(bad(format!(
                                "{here}.content: Input should be a valid list"
                            )))
                        }
                    }
                    if let Some(e) = present(block, "is_error") {
                        if !e.is_boolean() {
                            return Err(bad(format!(
                                "{here}.is_error: Input should be a valid boolean"
                            )));
                        }
                    }
                    results.push((j, id.to_string()));
                }
                ("assistant", "tool_use") => {
                    let Some(id) = block.get("id").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.id: Field required")));
                    };
                    let Some(name) = block.get("name").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.name: Field required")));
                    };
                    match present(block, "input") {
                        Some(input @ Value::Object(_)) => tally.json(input),
                        Some(_) => {
                            return Err(bad(format!(
                                "{here}.input: Input should be a valid dictionary"
                            )))
                        }
                        None => return Err(bad(format!("{here}.input: Field required"))),
                    }
                    tally.text(name);
                    tool_uses.push(id.to_string());
                }
                (
                    "assistant",
                    "thinking" | "redacted_thinking" | "server_tool_use" | "web_search_tool_result",
                ) => tally.json(block),
                ("user", other) => {
                    return Err(bad(format!(
                        "{here}: Input tag '{other}' found using 'type' does not match any of the \
                         expected tags: 'text', 'image', 'document', 'search_result', 'tool_result'"
                    )))
                }
                (_, other) => {
                    return Err(bad(format!(
                        "{here}: Input tag '{other}' found using 'type' does not match any of the \
                         expected tags: 'text', 'tool_use', 'thinking', 'redacted_thinking', \
                         'server_tool_use', 'web_search_tool_result'"
                    )))
                }
            }
        }
        all_text.push_str(&texts.join("\n"));
        all_text.push('\n');

        // Tool results must answer the previous assistant message's tool uses, and come
        // first in the message.
        for (j, id) in &results {
            if !pending.contains(id) {
                return Err(bad(format!(
                    "{at}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: \
                     {id}. Each `tool_result` block must have a corresponding `tool_use` block in \
                     the previous message."
                )));
            }
        }
        if !pending.is_empty() {
            let answered: Vec<&String> = pending
                .iter()
                .filter(|p| results.iter().any(|(_, id)| id == *p))
                .collect();
            if role != "user" || answered.len() < pending.len() {
                let missing: Vec<&str> = pending
                    .iter()
                    .filter(|p| !answered.contains(p))
                    .map(String::as_str)
                    .collect();
                return Err(bad(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks \
                     immediately after: {}. Each `tool_use` block must have a corresponding \
                     `tool_result` block in the next message.",
                    i - 1,
                    missing.join(", ")
                )));
            }
            let leading = first_non_result.unwrap_or(blocks.len());
            if results.iter().any(|(j, _)| *j >= leading) {
                return Err(bad(format!(
                    "{at}: Did not find {} `tool_result` block(s) at the beginning of this \
                     message. Messages following `tool_use` blocks must begin with a matching \
                     number of `tool_result` blocks.",
                    pending.len()
                )));
            }
        }
        if is_last && !tool_uses.is_empty() {
            return Err(bad(format!(
                "{at}: `tool_use` ids were found without `tool_result` blocks immediately after: \
                 {}. Each `tool_use` block must have a corresponding `tool_result` block in the \
                 next message.",
                tool_uses.join(", ")
            )));
        }
        pending = tool_uses;
        if role == "user" {
            if !texts.is_empty() {
                last_user_text = texts.join("\n");
            }
            ends_with_tool_result = !results.is_empty();
        } else {
            ends_with_tool_result = false;
        }
    }
    Ok(Walk {
        last_user_text,
        ends_with_tool_result,
    })
}

fn check_image(block: &Value, here: &str) -> Result<(), AnthropicError> {
    let Some(source) = present(block, "source") else {
        return Err(bad(format!("{here}.source: Field required")));
    };
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            if !media.is_some_and(|m| MEDIA_TYPES.contains(&m)) {
                return Err(bad(format!(
                    "{here}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', \
                     'image/gif' or 'image/webp'"
                )));
            }
            if source
                .get("data")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(bad(format!("{here}.source.base64.data: Field required")));
            }
            Ok(())
        }
        Some("url") => match source.get("url").and_then(Value::as_str) {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(()),
            Some(_) => Err(bad(format!(
                "{here}.source.url.url: Input should be a valid URL"
            ))),
            None => Err(bad(format!("{here}.source.url.url: Field required"))),
        },
        Some("file") => Ok(()),
        _ => Err(bad(format!(
            "{here}.source: Input tag found using 'type' does not match any of the expected \
             tags: 'base64', 'url', 'file'"
        ))),
    }
}

fn parse_tools(
    body: &Value,
    tally: &mut Tally,
) -> Result<(Vec<ToolSpec>, Choice, bool), AnthropicError> {
    let mut tools = Vec::new();
    let mut declared = 0usize;
    match present(body, "tools") {
        None => {}
        Some(Value::Array(defs)) => {
            for (i, t) in defs.iter().enumerate() {
                if !t.is_object() {
                    return Err(bad(format!(
                        "tools.{i}: Input should be a valid dictionary"
                    )));
                }
                declared += 1;
                tally.tool(t);
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    return Err(bad(format!("tools.{i}.name: Field required")));
                };
                match t.get("type").and_then(Value::as_str) {
                    // Server tools (`web_search_20250305`, `bash_20250124`, …) are accepted
                    // and counted but never called by the simulator.
                    Some(kind) if kind != "custom" => continue,
                    _ => {}
                }
                if !valid_tool_name(name, 64) {
                    return Err(bad(format!(
                        "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                    )));
                }
                let schema = match present(t, "input_schema") {
                    None => {
                        return Err(bad(format!(
                            "tools.{i}.custom.input_schema: Field required"
                        )))
                    }
                    Some(s @ Value::Object(_)) => s.clone(),
                    Some(_) => {
                        return Err(bad(format!(
                            "tools.{i}.custom.input_schema: Input should be a valid dictionary"
                        )))
                    }
                };
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    return Err(bad(format!(
                        "tools.{i}.custom.input_schema.type: Input should be 'object'"
                    )));
                }
                if tools.iter().any(|t: &ToolSpec| t.name == name) {
                    return Err(bad("tools: Tool names must be unique."));
                }
                tools.push(ToolSpec {
                    name: name.to_string(),
                    schema,
                });
            }
        }
        Some(_) => return Err(bad("tools: Input should be a valid list")),
    }
    let Some(choice) = present(body, "tool_choice") else {
        return Ok((tools, Choice::Auto, true));
    };
    if !choice.is_object() {
        return Err(bad("tool_choice: Input should be a valid dictionary"));
    }
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        != Some(true);
    let parsed = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Choice::Auto,
        Some("none") => Choice::Never,
        Some("any") => Choice::Any,
        Some("tool") => {
            let Some(name) = choice.get("name").and_then(Value::as_str) else {
                return Err(bad("tool_choice.tool.name: Field required"));
            };
            if declared > 0 && !tools.iter().any(|t| t.name == name) {
                return Err(bad(format!(
                    "tool_choice.tool.name: Tool '{name}' not found in the provided tools"
                )));
            }
            Choice::Named(name.to_string())
        }
        Some(other) => {
            return Err(bad(format!(
                "tool_choice: Input tag '{other}' found using 'type' does not match any of the \
                 expected tags: 'auto', 'any', 'tool', 'none'"
            )))
        }
        None => return Err(bad("tool_choice.type: Field required")),
    };
    if matches!(parsed, Choice::Any | Choice::Named(_)) && declared == 0 {
        return Err(bad(
            "tool_choice: tool_choice may only be specified while providing tools",
        ));
    }
    Ok((tools, parsed, parallel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: Value) -> String {
        match parse(&body, false) {
            Ok(_) => panic!("expected an error for {body}"),
            Err(e) => e.message,
        }
    }

    fn ok(body: Value) -> MessagesRequest {
        match parse(&body, false) {
            Ok(r) => r,
            Err(e) => panic!("unexpected error: {}", e.message),
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn required_fields_and_roles() {
        assert_eq!(
            err(json!({"model":"m","messages":[user("hi")]})),
            "max_tokens: Field required"
        );
        assert_eq!(
            err(json!({"max_tokens":5,"messages":[user("hi")]})),
            "model: Field required"
        );
        assert!(err(json!({"model":"m","max_tokens":5,"messages":[
            {"role":"system","content":"x"}]}))
        .contains("Unexpected role \"system\""));
        assert!(
            err(json!({"model":"m","max_tokens":5,"messages":[user("")]}))
                .contains("non-empty content")
        );
        assert!(
            err(json!({"model":"m","max_tokens":5,"temperature":1.5,"messages":[user("x")]}))
                .starts_with("temperature")
        );
        // count_tokens needs no max_tokens.
        assert!(parse(&json!({"model":"m","messages":[user("hi")]}), true).is_ok());
        // A final assistant message (prefill) may be empty.
        ok(json!({"model":"m","max_tokens":5,"messages":[user("hi"),
            {"role":"assistant","content":""}]}));
    }

    #[test]
    fn tool_pairing_rules() {
        let tools = json!([{"name":"f","input_schema":{"type":"object"}}]);
        let use_block = json!({"role":"assistant","content":[
            {"type":"text","text":"ok"},
            {"type":"tool_use","id":"toolu_1","name":"f","input":{}}]});
        let result = |id: &str| json!({"type":"tool_result","tool_use_id":id,"content":"42"});
        let r = ok(json!({"model":"m","max_tokens":5,"tools":tools,"messages":[
            user("call f"), use_block, {"role":"user","content":[result("toolu_1")]}]}));
        assert!(r.conv.ends_with_tool_result);
        assert_eq!(r.conv.last_user_text, "call f");
        assert!(
            err(json!({"model":"m","max_tokens":5,"tools":tools,"messages":[
            user("call f"), use_block, user("no result")]}))
            .contains("without `tool_result` blocks immediately after: toolu_1")
        );
        assert!(
            err(json!({"model":"m","max_tokens":5,"tools":tools,"messages":[
            user("x"), {"role":"user","content":[result("toolu_9")]}]}))
            .contains("unexpected `tool_use_id`")
        );
        assert!(
            err(json!({"model":"m","max_tokens":5,"tools":tools,"messages":[
            user("call f"), use_block,
            {"role":"user","content":[{"type":"text","text":"first"}, result("toolu_1")]}]}))
            .contains("at the beginning of this message")
        );
    }

    #[test]
    fn tools_and_choice() {
        assert!(
            err(json!({"model":"m","max_tokens":5,"messages":[user("x")],
            "tools":[{"name":"f"}]}))
            .contains("input_schema: Field required")
        );
        assert!(
            err(json!({"model":"m","max_tokens":5,"messages":[user("x")],
            "tool_choice":{"type":"any"}}))
            .contains("only be specified while providing tools")
        );
        let r = ok(json!({"model":"m","max_tokens":5,"messages":[user("x")],
            "tools":[{"name":"f","input_schema":{"type":"object"}},
                     {"type":"web_search_20250305","name":"web_search"}],
            "tool_choice":{"type":"tool","name":"f","disable_parallel_tool_use":true}}));
        assert_eq!(r.conv.choice, Choice::Named("f".into()));
        assert!(!r.conv.parallel);
        assert_eq!(r.conv.tools.len(), 1);
    }

    #[test]
    fn images_and_usage() {
        let r = ok(
            json!({"model":"m","max_tokens":5,"system":"sys [[cached]]","messages":[
            {"role":"user","content":[
                {"type":"text","text":"look"},
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}},
                {"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}]}),
        );
        // 3 + (ceil(14/4) + 4) + (1 + 4 + 2×85)
        assert_eq!(r.prompt_tokens, 3 + 8 + 5 + 170);
        assert_eq!(r.cached_tokens, r.prompt_tokens / 2);
        assert!(err(
            json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/bmp","data":"AA"}}]}]})
        )
        .contains("media_type"));
    }
}
