//! Converse request validation, with Bedrock's ValidationException messages, reduced to a
//! protocol-neutral [`Conversation`].

use serde_json::Value;

use crate::conversation::{
    cached_tokens, digest_without, valid_tool_name, Choice, Conversation, OutFormat, Tally,
    ToolSpec,
};
use crate::reasoning::{self, Family, Kind, Thinking, MARKER_REDACTED};

/// A validated Converse request.
#[derive(Debug)]
pub(super) struct ConverseRequest {
    pub(super) conv: Conversation,
    pub(super) prompt_tokens: u64,
    pub(super) cached_tokens: u64,
    /// `additionalModelResponseFieldPaths` asked for `/stop_sequence`.
    pub(super) wants_stop_sequence: bool,
    /// Claude's thinking, from `additionalModelRequestFields.thinking`.
    pub(super) thinking: Thinking,
    /// `[[redacted_thinking]]`: a thinking answer also carries `redactedContent`.
    pub(super) redacted: bool,
}

const CONTENT_KEYS: &[&str] = &[
    "text",
    "image",
    "document",
    "video",
    "audio",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
    "searchResult",
];
const IMAGE_FORMATS: &[&str] = &["png", "jpeg", "gif", "webp"];

/// A ValidationException message.
pub(super) struct Invalid(pub(super) String);

fn bad(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// The Smithy constraint message, with 1-based list indexes as AWS prints them.
fn constraint(value: &Value, at: &str, rule: &str) -> Invalid {
    let shown = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    bad(format!(
        "1 validation error detected: Value '{shown}' at '{at}' failed to satisfy constraint: {rule}"
    ))
}

fn present<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

pub(super) fn parse(body: &Value, model: &str) -> Result<ConverseRequest, Invalid> {
    if !body.is_object() {
        return Err(bad("The request body must be a JSON object."));
    }
    let mut tally = Tally::new();
    let mut all_text = String::new();
    if let Some(system) = present(body, "system") {
        let Value::Array(blocks) = system else {
            return Err(bad("Expected list or null for the system field."));
        };
        tally.message();
        for (j, block) in blocks.iter().enumerate() {
            match block_kind(block) {
                Some("text") => {
                    let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                    if text.trim().is_empty() {
                        return Err(bad(format!(
                            "The text field in the SystemContentBlock object at system.{j} is \
                             blank. Add text to the text field, and try again."
                        )));
                    }
                    tally.text(text);
                    all_text.push_str(text);
                    all_text.push('\n');
                }
                Some("cachePoint" | "guardContent") => {}
                _ => {
                    return Err(bad(format!(
                        "The SystemContentBlock at system.{j} must set exactly one of text, \
                         guardContent or cachePoint."
                    )))
                }
            }
        }
    }

    let messages = match present(body, "messages") {
        None => &Vec::new(),
        Some(Value::Array(m)) => m,
        Some(_) => return Err(bad("Expected list or null for the messages field.")),
    };
    let tool_config = present(body, "toolConfig");
    let walk = walk_messages(messages, tool_config.is_some(), &mut tally, &mut all_text)?;

    let (tools, choice) = match tool_config {
        None => (Vec::new(), Choice::Auto),
        Some(config) => parse_tool_config(config, &mut tally)?,
    };

    let mut limit = None;
    let mut stop = Vec::new();
    if let Some(config) = present(body, "inferenceConfig") {
        if let Some(v) = present(config, "maxTokens") {
            match v.as_i64() {
                Some(n) if n >= 1 => limit = Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => {
                    return Err(constraint(
                        v,
                        "inferenceConfig.maxTokens",
                        "Member must have value greater than or equal to 1",
                    ))
                }
            }
        }
        for key in ["temperature", "topP"] {
            if let Some(v) = present(config, key) {
                match v.as_f64() {
                    Some(x) if x < 0.0 => {
                        return Err(constraint(
                            v,
                            &format!("inferenceConfig.{key}"),
                            "Member must have value greater than or equal to 0",
                        ))
                    }
                    Some(x) if x > 1.0 => {
                        return Err(constraint(
                            v,
                            &format!("inferenceConfig.{key}"),
                            "Member must have value less than or equal to 1",
                        ))
                    }
                    Some(_) => {}
                    None => return Err(bad(format!("Expected number for inferenceConfig.{key}."))),
                }
            }
        }
        if let Some(v) = present(config, "stopSequences") {
            let Value::Array(items) = v else {
                return Err(bad("Expected list for inferenceConfig.stopSequences."));
            };
            for (k, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if !s.is_empty() => stop.push(s.to_string()),
                    _ => {
                        return Err(constraint(
                            item,
                            &format!("inferenceConfig.stopSequences.{}.member", k + 1),
                            "Member must have length greater than or equal to 1",
                        ))
                    }
                }
            }
        }
    }

    let format =
        match present(body, "outputConfig").and_then(|c| present(c, "textFormat")) {
            None => OutFormat::Text,
            Some(tf) => {
                let schema = tf
                    .get("structure")
                    .and_then(|s| s.get("jsonSchema"))
                    .and_then(|j| j.get("schema"));
                match schema {
                    Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                        Ok(schema) => OutFormat::JsonSchema(schema),
                        Err(e) => {
                            return Err(bad(format!(
                        "The JSON schema in outputConfig.textFormat.structure.jsonSchema.schema \
                             is not valid JSON: {e}"
                    )))
                        }
                    },
                    Some(_) => return Err(bad(
                        "Expected string for outputConfig.textFormat.structure.jsonSchema.schema.",
                    )),
                    None => {
                        return Err(bad(
                            "outputConfig.textFormat.structure.jsonSchema.schema is required.",
                        ))
                    }
                }
            }
        };

    let wants_stop_sequence = match present(body, "additionalModelResponseFieldPaths") {
        Some(Value::Array(paths)) => paths.iter().any(|p| p.as_str() == Some("/stop_sequence")),
        _ => false,
    };

    let forced = matches!(choice, Choice::Any | Choice::Named(_));
    let thinking = if reasoning::family(model) == Family::Claude {
        let requested = present(body, "additionalModelRequestFields")
            .and_then(|fields| present(fields, "thinking"));
        reasoning::claude_thinking(requested, model, limit.map(|l| l as u64), forced)
            .map_err(model_error)?
    } else {
        Thinking::Off
    };
    check_reasoning_history(messages, model, thinking)?;

    let prompt_tokens = tally.finish();
    let cached = cached_tokens(&all_text, prompt_tokens);
    let redacted = all_text.contains(MARKER_REDACTED);
    Ok(ConverseRequest {
        conv: Conversation {
            digest: digest_without(
                body,
                &[
                    &["inferenceConfig", "maxTokens"],
                    &["inferenceConfig", "stopSequences"],
                ],
                model,
            ),
            all_text,
            last_user_text: walk.last_user_text,
            ends_with_tool_result: walk.ends_with_tool_result,
            tools,
            choice,
            parallel: true,
            preamble: true,
            limit,
            stop,
            format,
        },
        prompt_tokens,
        cached_tokens: cached,
        wants_stop_sequence,
        thinking,
        redacted,
    })
}

/// Bedrock passes a Claude model's own refusals on in this wrapper.
fn model_error(message: String) -> Invalid {
    bad(format!(
        "The model returned the following errors: {message}"
    ))
}

/// `reasoningContent` blocks of assistant turns must carry what this simulator issued
/// (Bedrock, this model): `reasoningText.signature` over the text, or `redactedContent`.
/// With thinking on, a conversation ending in tool results needs the assistant turn that
/// made the calls to start with its `reasoningContent`.
fn check_reasoning_history(
    messages: &[Value],
    model: &str,
    thinking: Thinking,
) -> Result<(), Invalid> {
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        let Some(Value::Array(blocks)) = m.get("content") else {
            continue;
        };
        for (j, block) in blocks.iter().enumerate() {
            let Some(reasoning_block) = present(block, "reasoningContent") else {
                continue;
            };
            let here = format!("messages.{i}.content.{j}");
            if let Some(text_block) = present(reasoning_block, "reasoningText") {
                let text = text_block.get("text").and_then(Value::as_str).unwrap_or("");
                let signature = text_block.get("signature").and_then(Value::as_str);
                let ok =
                    signature.is_some_and(|s| reasoning::verify(s, Kind::Bedrock, model, text));
                if !ok {
                    return Err(model_error(format!(
                        "{here}: Invalid `signature` in `thinking` block"
                    )));
                }
            } else if let Some(data) = present(reasoning_block, "redactedContent") {
                let ok = data.as_str().is_some_and(|d| {
                    reasoning::verify(d, Kind::Bedrock, model, reasoning::REDACTED_CONTENT)
                });
                if !ok {
                    return Err(model_error(format!(
                        "{here}: Invalid `data` in `redacted_thinking` block"
                    )));
                }
            } else {
                return Err(bad(format!(
                    "The ReasoningContentBlock at {here} must set exactly one of reasoningText or \
                     redactedContent."
                )));
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
                if blocks.iter().any(|b| present(b, "toolResult").is_some()))
    });
    let Some(assistant) = messages.get(n - 2).filter(|_| ends_with_results) else {
        return Ok(());
    };
    let first = match assistant.get("content") {
        Some(Value::Array(blocks)) => blocks.first().and_then(block_kind).unwrap_or("text"),
        _ => "text",
    };
    let found = match first {
        "reasoningContent" => return Ok(()),
        "toolUse" => "tool_use",
        "text" => "text",
        other => other,
    };
    Err(model_error(reasoning::missing_thinking_message(
        &format!("messages.{}.content.0.type", n - 2),
        found,
    )))
}

/// The member a union block sets, when it sets exactly one known member.
fn block_kind(block: &Value) -> Option<&str> {
    let map = block.as_object()?;
    let mut set = map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, _)| k.as_str());
    let first = set.next()?;
    if set.next().is_some() {
        return None;
    }
    Some(first)
}

struct Walk {
    last_user_text: String,
    ends_with_tool_result: bool,
}

fn walk_messages(
    messages: &[Value],
    has_tool_config: bool,
    tally: &mut Tally,
    all_text: &mut String,
) -> Result<Walk, Invalid> {
    let start_with_user =
        || {
            bad("A conversation must start with a user message. Try again with a conversation that \
             starts with a user message.")
        };
    if messages.is_empty() {
        return Err(start_with_user());
    }
    let mut last_user_text = String::new();
    let mut ends_with_tool_result = false;
    let mut previous_role: Option<&str> = None;
    let mut pending: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = match present(m, "role") {
            Some(Value::String(r)) if r == "user" || r == "assistant" => r.as_str(),
            Some(other) => {
                return Err(constraint(
                    other,
                    &format!("messages.{}.member.role", i + 1),
                    "Member must satisfy enum value set: [user, assistant]",
                ))
            }
            None => return Err(bad(format!("messages.{i}.role is required."))),
        };
        if i == 0 && role != "user" {
            return Err(start_with_user());
        }
        if previous_role == Some(role) {
            return Err(bad(
                "A conversation must alternate between user and assistant roles. Make sure the \
                 conversation alternates between user and assistant roles and try again.",
            ));
        }
        previous_role = Some(role);
        let blocks = match present(m, "content") {
            Some(Value::Array(b)) => b,
            Some(_) => return Err(bad(format!("Expected list for messages.{i}.content."))),
            None => return Err(bad(format!("messages.{i}.content is required."))),
        };
        if blocks.is_empty() {
            return Err(bad(format!(
                "The content field in the Message object at messages.{i} is empty. Add a \
                 ContentBlock object to the content field and try again."
            )));
        }
        tally.message();
        let mut texts = Vec::new();
        let mut uses = Vec::new();
        let mut results = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let here = format!("messages.{i}.content.{j}");
            let Some(kind) = block_kind(block).filter(|k| CONTENT_KEYS.contains(k)) else {
                return Err(bad(format!(
                    "The ContentBlock at {here} must set exactly one of {}.",
                    CONTENT_KEYS.join(", ")
                )));
            };
            match kind {
                "text" => {
                    let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                    if text.trim().is_empty() {
                        return Err(bad(format!(
                            "The text field in the ContentBlock object at {here} is blank. Add \
                             text to the text field, and try again."
                        )));
                    }
                    tally.text(text);
                    texts.push(text.to_string());
                }
                "image" | "document" | "video" | "audio" if role != "user" => {
                    return Err(bad(format!(
                        "The model does not support {kind} content in assistant messages \
                         ({here})."
                    )))
                }
                "image" => {
                    let image = &block["image"];
                    let format = image.get("format").and_then(Value::as_str).unwrap_or("");
                    if !IMAGE_FORMATS.contains(&format) {
                        return Err(constraint(
                            &image["format"],
                            &format!(
                                "messages.{}.member.content.{}.member.image.format",
                                i + 1,
                                j + 1
                            ),
                            "Member must satisfy enum value set: [gif, jpeg, png, webp]",
                        ));
                    }
                    let source = image.get("source");
                    let has_bytes = source
                        .and_then(|s| s.get("bytes"))
                        .and_then(Value::as_str)
                        .is_some_and(|b| !b.is_empty());
                    let has_s3 = source.and_then(|s| s.get("s3Location")).is_some();
                    if !has_bytes && !has_s3 {
                        return Err(bad(format!(
                            "The image source at {here} must set bytes or s3Location."
                        )));
                    }
                    tally.image();
                }
                "toolUse" if role == "assistant" => {
                    let tool_use = &block["toolUse"];
                    let Some(id) = tool_use.get("toolUseId").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.toolUse.toolUseId is required.")));
                    };
                    let Some(name) = tool_use.get("name").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.toolUse.name is required.")));
                    };
                    let Some(input) = present(tool_use, "input") else {
                        return Err(bad(format!("{here}.toolUse.input is required.")));
                    };
                    tally.text(name);
                    tally.json(input);
                    uses.push(id.to_string());
                }
                "toolResult" if role == "user" => {
                    let result = &block["toolResult"];
                    let Some(id) = result.get("toolUseId").and_then(Value::as_str) else {
                        return Err(bad(format!("{here}.toolResult.toolUseId is required.")));
                    };
                    let Some(Value::Array(parts)) = present(result, "content") else {
                        return Err(bad(format!("{here}.toolResult.content is required.")));
                    };
                    for part in parts {
                        match block_kind(part) {
                            Some("text") => {
                                let t = part.get("text").and_then(Value::as_str).unwrap_or("");
                                tally.text(t);
                                all_text.push_str(t);
                                all_text.push('\n');
                            }
                            Some("image") => tally.image(),
                            _ => tally.json(part),
                        }
                    }
                    if let Some(status) = present(result, "status") {
                        if !matches!(status.as_str(), Some("success" | "error")) {
                            return Err(constraint(
                                status,
                                &format!(
                                    "messages.{}.member.content.{}.member.toolResult.status",
                                    i + 1,
                                    j + 1
                                ),
                                "Member must satisfy enum value set: [success, error]",
                            ));
                        }
                    }
                    results.push(id.to_string());
                }
                "toolUse" | "toolResult" => {
                    return Err(bad(format!(
                        "A {kind} block is not allowed in a {role} message ({here})."
                    )))
                }
                _ => tally.json(block),
            }
        }
        if (!uses.is_empty() || !results.is_empty()) && !has_tool_config {
            return Err(bad(
                "The toolConfig field must be defined when using toolUse and toolResult content \
                 blocks.",
            ));
        }
        if results.len() > pending.len() || results.iter().any(|r| !pending.contains(r)) {
            return Err(bad(format!(
                "The number of toolResult blocks at messages.{i}.content exceeds the number of \
                 toolUse blocks of previous turn."
            )));
        }
        let missing: Vec<&str> = pending
            .iter()
            .filter(|p| !results.contains(p))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(bad(format!(
                "Expected toolResult blocks at messages.{i}.content for the following Ids: {}",
                missing.join(", ")
            )));
        }
        all_text.push_str(&texts.join("\n"));
        all_text.push('\n');
        if role == "user" {
            if !texts.is_empty() {
                last_user_text = texts.join("\n");
            }
            ends_with_tool_result = !results.is_empty();
        } else {
            ends_with_tool_result = false;
        }
        pending = uses;
    }
    if !pending.is_empty() {
        return Err(bad(format!(
            "Expected toolResult blocks at messages.{}.content for the following Ids: {}",
            messages.len(),
            pending.join(", ")
        )));
    }
    Ok(Walk {
        last_user_text,
        ends_with_tool_result,
    })
}

fn parse_tool_config(
    config: &Value,
    tally: &mut Tally,
) -> Result<(Vec<ToolSpec>, Choice), Invalid> {
    let tools = match present(config, "tools") {
        Some(Value::Array(t)) if !t.is_empty() => t,
        Some(v @ Value::Array(_)) => {
            return Err(constraint(
                v,
                "toolConfig.tools",
                "Member must have length greater than or equal to 1",
            ))
        }
        _ => return Err(bad("toolConfig.tools is required.")),
    };
    let mut specs = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        match block_kind(t) {
            Some("toolSpec") => {}
            Some("cachePoint") => continue,
            _ => {
                return Err(bad(format!(
                    "The Tool at toolConfig.tools.{i} must set exactly one of toolSpec or \
                     cachePoint."
                )))
            }
        }
        let spec = &t["toolSpec"];
        tally.tool(spec);
        let Some(name) = spec.get("name").and_then(Value::as_str) else {
            return Err(bad(format!(
                "toolConfig.tools.{i}.toolSpec.name is required."
            )));
        };
        if !valid_tool_name(name, 64) {
            return Err(constraint(
                &spec["name"],
                &format!("toolConfig.tools.{}.member.toolSpec.name", i + 1),
                "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
            ));
        }
        let Some(schema) = spec.get("inputSchema").and_then(|s| present(s, "json")) else {
            return Err(bad(format!(
                "toolConfig.tools.{i}.toolSpec.inputSchema.json is required."
            )));
        };
        if specs.iter().any(|s: &ToolSpec| s.name == name) {
            return Err(bad(format!(
                "The tool name {name} is used more than once in toolConfig.tools."
            )));
        }
        specs.push(ToolSpec {
            name: name.to_string(),
            schema: schema.clone(),
        });
    }
    let choice = match present(config, "toolChoice") {
        None => Choice::Auto,
        Some(c) => match block_kind(c) {
            Some("auto") => Choice::Auto,
            Some("any") => Choice::Any,
            Some("tool") => {
                let Some(name) = c["tool"].get("name").and_then(Value::as_str) else {
                    return Err(bad("toolConfig.toolChoice.tool.name is required."));
                };
                if !specs.iter().any(|s| s.name == name) {
                    return Err(bad(format!(
                        "The tool {name} in toolConfig.toolChoice is not in toolConfig.tools."
                    )));
                }
                Choice::Named(name.to_string())
            }
            _ => {
                return Err(bad(
                    "toolConfig.toolChoice must set exactly one of auto, any or tool.",
                ))
            }
        },
    };
    Ok((specs, choice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: Value) -> String {
        match parse(&body, "m") {
            Ok(_) => panic!("expected an error for {body}"),
            Err(e) => e.0,
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": [{"text": text}]})
    }

    #[test]
    fn conversation_shape() {
        assert!(err(json!({"messages": []})).starts_with("A conversation must start with a user"));
        assert!(
            err(json!({"messages": [{"role":"assistant","content":[{"text":"x"}]}]}))
                .starts_with("A conversation must start with a user")
        );
        assert!(err(json!({"messages": [user("a"), user("b")]})).contains("alternate"));
        assert!(err(json!({"messages": [{"role":"user","content":[]}]})).contains("is empty"));
        assert!(
            err(json!({"messages": [{"role":"user","content":[{"text":" "}]}]})).contains("blank")
        );
        assert!(
            err(json!({"messages": [{"role":"system","content":[{"text":"x"}]}]}))
                .contains("at 'messages.1.member.role'")
        );
        assert!(
            err(json!({"messages":[user("x")],"inferenceConfig":{"maxTokens":0}}))
                .contains("inferenceConfig.maxTokens")
        );
    }

    #[test]
    fn tools_need_config_and_results() {
        let tool_use = json!({"role":"assistant","content":[
            {"toolUse":{"toolUseId":"t1","name":"f","input":{}}}]});
        let result = json!({"role":"user","content":[
            {"toolResult":{"toolUseId":"t1","content":[{"text":"42"}]}}]});
        let config =
            json!({"tools":[{"toolSpec":{"name":"f","inputSchema":{"json":{"type":"object"}}}}]});
        assert!(err(json!({"messages":[user("x"), tool_use, result]}))
            .contains("toolConfig field must be defined"));
        assert!(
            err(json!({"messages":[user("x"), tool_use, user("y")],"toolConfig":config})).contains(
                "Expected toolResult blocks at messages.2.content for the following Ids: t1"
            )
        );
        let ok = parse(
            &json!({"messages":[user("x"), tool_use, result],"toolConfig":config}),
            "m",
        )
        .unwrap_or_else(|e| panic!("{}", e.0));
        assert!(ok.conv.ends_with_tool_result);
        assert!(
            err(json!({"messages":[user("x")],"toolConfig":{"tools":[]}}))
                .contains("toolConfig.tools")
        );
        let named = parse(
            &json!({"messages":[user("x")],"toolConfig":{"tools":config["tools"],"toolChoice":{"tool":{"name":"f"}}}}),
            "m",
        )
        .unwrap_or_else(|e| panic!("{}", e.0));
        assert_eq!(named.conv.choice, Choice::Named("f".into()));
    }
}
