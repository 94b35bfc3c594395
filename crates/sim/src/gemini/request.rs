//! GenerateContentRequest validation, with Google's INVALID_ARGUMENT messages, reduced
//! to a protocol-neutral [`Conversation`].

use serde_json::{Map, Value};

use crate::conversation::{
    cached_tokens, digest_without, Choice, Conversation, OutFormat, Tally, ToolSpec, MARKER_BLOCKED,
};
use crate::reasoning::{self, Family, Kind};

/// A validated generateContent request.
#[derive(Debug)]
pub(super) struct GenerateRequest {
    pub(super) conv: Conversation,
    pub(super) candidates: usize,
    pub(super) prompt_tokens: u64,
    pub(super) cached_tokens: u64,
    /// `[[blocked]]`: the prompt is refused (`promptFeedback.blockReason`).
    pub(super) blocked: bool,
    /// `responseMimeType: text/x.enum`: the answer is one enum value, unquoted.
    pub(super) enum_text: bool,
    /// The model thinks (Gemini 3 always; 2.5 with a non-zero `thinkingBudget`).
    pub(super) thinking: bool,
    /// `thinkingConfig.includeThoughts`: a thought summary part comes first.
    pub(super) include_thoughts: bool,
}

/// Reads `generationConfig.thinkingConfig` under the model's rules: `thinkingLevel`
/// (MINIMAL, LOW, MEDIUM, HIGH) only for Gemini 3; `thinkingBudget` (-1 dynamic, 0 off,
/// 1 to 32768) for 2.5 (and accepted by Gemini 3, which cannot turn thinking off);
/// both at once is refused. Returns (thinking, includeThoughts).
fn thinking_config(config: Option<&Value>, model: &str) -> Result<(bool, bool), String> {
    let family = reasoning::family(model);
    let Some(tc) = config.and_then(|c| present(c, "thinkingConfig")) else {
        return Ok((family == Family::Gemini3, false));
    };
    let field = "generation_config.thinking_config";
    let include = match present(tc, "includeThoughts") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                &format!("{field}.include_thoughts"),
                "Expected a boolean.",
            ))
        }
    };
    let level = present(tc, "thinkingLevel");
    let budget = present(tc, "thinkingBudget");
    if level.is_some() && budget.is_some() {
        return Err(bad(
            field,
            "thinking_budget and thinking_level cannot both be set; use thinking_level for \
             Gemini 3 models and thinking_budget for earlier ones.",
        ));
    }
    if let Some(level) = level {
        if family != Family::Gemini3 {
            return Err(bad(
                &format!("{field}.thinking_level"),
                "Thinking level is not supported for this model.",
            ));
        }
        let name = level.as_str().unwrap_or("").to_ascii_uppercase();
        if !matches!(
            name.as_str(),
            "MINIMAL" | "LOW" | "MEDIUM" | "HIGH" | "THINKING_LEVEL_UNSPECIFIED"
        ) {
            return Err(bad(
                &format!("{field}.thinking_level"),
                &format!("Invalid value {level}; expected MINIMAL, LOW, MEDIUM or HIGH."),
            ));
        }
        return Ok((true, include));
    }
    let Some(budget) = budget else {
        return Ok((family == Family::Gemini3, include));
    };
    let Some(n) = budget.as_i64().filter(|n| (-1..=32768).contains(n)) else {
        return Err(bad(
            &format!("{field}.thinking_budget"),
            "thinking_budget must be -1 (dynamic), 0 (off) or between 1 and 32768.",
        ));
    };
    match family {
        Family::Gemini3 => Ok((true, include)),
        Family::Gemini25 => Ok((n != 0, include)),
        _ if n == 0 => Ok((false, include)),
        _ => Err(bad(
            &format!("{field}.thinking_budget"),
            "Thinking is not supported for this model.",
        )),
    }
}

/// Gemini 3's rule for the current tool loop (the model turns after the last user turn
/// with text): the first `functionCall` part of each such turn must carry a
/// `thoughtSignature`, and every signature on a `functionCall` part there must be one this
/// simulator issued (`kind`, this model, this function name) or the documented skip value
/// (as is or base64-encoded).
/// Earlier turns are not checked.
pub(super) fn check_signatures(body: &Value, model: &str, kind: Kind) -> Result<(), String> {
    if reasoning::family(model) != Family::Gemini3 {
        return Ok(());
    }
    let Some(Value::Array(contents)) = present(body, "contents") else {
        return Ok(());
    };
    let role_of = |c: &Value| {
        c.get("role")
            .and_then(Value::as_str)
            .unwrap_or("user")
            .to_string()
    };
    let parts_of = |c: &Value| match c.get("parts") {
        Some(Value::Array(p)) => p.clone(),
        _ => Vec::new(),
    };
    let loop_start = contents
        .iter()
        .rposition(|c| {
            role_of(c) != "model" && parts_of(c).iter().any(|p| present(p, "text").is_some())
        })
        .map_or(0, |i| i + 1);
    for (i, content) in contents.iter().enumerate().skip(loop_start) {
        if role_of(content) != "model" {
            continue;
        }
        let mut first = true;
        for part in parts_of(content) {
            let Some(call) = present(&part, "functionCall") else {
                continue;
            };
            let name = call.get("name").and_then(Value::as_str).unwrap_or("");
            match part.get("thoughtSignature").and_then(Value::as_str) {
                None | Some("") if first => {
                    return Err(missing_signature(kind, name, i + 1));
                }
                None | Some("") => {}
                Some(sig) if reasoning::is_gemini_skip(sig) => {}
                Some(sig) => {
                    if !reasoning::verify(sig, kind, model, name) {
                        return Err("Invalid thought signature.".to_string());
                    }
                }
            }
            first = false;
        }
    }
    Ok(())
}

/// Google's message for a missing signature (the Gemini API's and Vertex AI's wording);
/// `position` is the 1-based index of the content.
fn missing_signature(kind: Kind, name: &str, position: usize) -> String {
    if kind == Kind::Vertex {
        format!(
            "Unable to submit request because function call `{name}` in the {position}. content \
             block is missing a `thought_signature`."
        )
    } else {
        format!(
            "Function call is missing a thought_signature in functionCall parts. This is \
             required for tools to work correctly, and missing thought_signature may lead to \
             degraded model performance. Additional data, function call `default_api:{name}` , \
             position {position}."
        )
    }
}

const DATA_FIELDS: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];

fn bad(field: &str, message: &str) -> String {
    format!("* GenerateContentRequest.{field}: {message}")
}

fn present<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// The schema with OpenAPI-style upper-case types (`OBJECT`, `STRING`, as the SDK sends
/// them) turned into JSON Schema's lower-case ones; `nullable` is dropped.
pub(super) fn normalize_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("type", Value::String(t)) => {
                        out.insert(k.clone(), Value::String(t.to_ascii_lowercase()));
                    }
                    ("nullable" | "propertyOrdering", _) => {}
                    ("properties" | "$defs" | "definitions", Value::Object(props)) => {
                        let props = props
                            .iter()
                            .map(|(name, s)| (name.clone(), normalize_schema(s)))
                            .collect();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    // Enum and const values are data, not schemas.
                    ("enum" | "const" | "required" | "example" | "default", _) => {
                        out.insert(k.clone(), v.clone());
                    }
                    _ => {
                        out.insert(k.clone(), normalize_schema(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize_schema).collect()),
        other => other.clone(),
    }
}

/// True when `name` is a valid function name: a letter or `_` first, then letters,
/// digits, `_`, `.`, `:` or `-`, 64 characters at most.
fn valid_function_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The part's data field, when it has exactly one.
fn data_field(part: &Value) -> Option<&'static str> {
    let mut found = DATA_FIELDS
        .iter()
        .copied()
        .filter(|f| present(part, f).is_some());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

pub(super) fn parse(body: &Value, model: &str) -> Result<GenerateRequest, String> {
    if !body.is_object() {
        return Err("Invalid JSON payload received. Expected an object.".to_string());
    }
    let mut tally = Tally::new();
    let mut all_text = String::new();
    if let Some(system) = present(body, "systemInstruction") {
        let Some(Value::Array(parts)) = present(system, "parts") else {
            return Err(bad("system_instruction.parts", "parts must not be empty."));
        };
        tally.message();
        for part in parts {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                tally.text(text);
                all_text.push_str(text);
                all_text.push('\n');
            }
        }
    }
    let contents = match present(body, "contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => return Err(bad("contents", "contents is not specified")),
    };
    let mut last_user_text = String::new();
    let mut ends_with_tool_result = false;
    let mut previous_calls = 0usize;
    let mut previous_role = "";
    for (i, content) in contents.iter().enumerate() {
        let role = match present(content, "role") {
            None => "user",
            Some(Value::String(r)) if r.is_empty() => "user",
            Some(Value::String(r)) if r == "user" || r == "model" || r == "function" => r.as_str(),
            Some(_) => return Err("Please use a valid role: user, model.".to_string()),
        };
        let parts = match present(content, "parts") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            _ => {
                return Err(bad(
                    &format!("contents[{i}].parts"),
                    "contents.parts must not be empty.",
                ))
            }
        };
        tally.message();
        let mut texts = Vec::new();
        let mut calls = 0usize;
        let mut responses = 0usize;
        for (j, part) in parts.iter().enumerate() {
            let here = format!("contents[{i}].parts[{j}]");
            let Some(field) = data_field(part) else {
                return Err(bad(
                    &format!("{here}.data"),
                    "required oneof field 'data' must have one initialized field",
                ));
            };
            match field {
                "text" => {
                    let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                    tally.text(text);
                    texts.push(text.to_string());
                }
                "inlineData" => {
                    let data = &part["inlineData"];
                    if data.get("mimeType").and_then(Value::as_str).is_none() {
                        return Err(bad(
                            &format!("{here}.inline_data.mime_type"),
                            "mime_type is required.",
                        ));
                    }
                    if data
                        .get("data")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        return Err(bad(
                            &format!("{here}.inline_data.data"),
                            "data is required.",
                        ));
                    }
                    tally.image();
                }
                "fileData" => {
                    if part["fileData"]
                        .get("fileUri")
                        .and_then(Value::as_str)
                        .is_none()
                    {
                        return Err(bad(
                            &format!("{here}.file_data.file_uri"),
                            "file_uri is required.",
                        ));
                    }
                    tally.image();
                }
                "functionCall" => {
                    if role != "model" {
                        return Err(bad(
                            &format!("{here}.function_call"),
                            "function_call is only allowed in a model turn.",
                        ));
                    }
                    let call = &part["functionCall"];
                    let Some(name) = call.get("name").and_then(Value::as_str) else {
                        return Err(bad(
                            &format!("{here}.function_call.name"),
                            "name is required.",
                        ));
                    };
                    tally.text(name);
                    tally.json(call.get("args").unwrap_or(&Value::Null));
                    calls += 1;
                }
                "functionResponse" => {
                    let response = &part["functionResponse"];
                    if response.get("name").and_then(Value::as_str).is_none() {
                        return Err(bad(
                            &format!("{here}.function_response.name"),
                            "name is required.",
                        ));
                    }
                    tally.json(response.get("response").unwrap_or(&Value::Null));
                    responses += 1;
                }
                _ => tally.json(part),
            }
        }
        if calls > 0
            && !(previous_role.is_empty() || previous_role == "user" || previous_role == "function")
        {
            return Err(
                "Please ensure that function call turn comes immediately after a user \
                        turn or after a function response turn."
                    .to_string(),
            );
        }
        if responses > 0 && responses != previous_calls {
            return Err(
                "Please ensure that the number of function response parts is equal to \
                        the number of function call parts of the function call turn."
                    .to_string(),
            );
        }
        all_text.push_str(&texts.join("\n"));
        all_text.push('\n');
        if role == "model" {
            ends_with_tool_result = false;
        } else {
            if !texts.is_empty() {
                last_user_text = texts.join("\n");
            }
            ends_with_tool_result = responses > 0;
        }
        previous_calls = calls;
        previous_role = role;
    }

    let mut tools = Vec::new();
    if let Some(defs) = present(body, "tools") {
        let Value::Array(defs) = defs else {
            return Err(bad("tools", "Expected a list of tools."));
        };
        for (i, tool) in defs.iter().enumerate() {
            tally.tool(tool);
            let Some(decls) = present(tool, "functionDeclarations") else {
                // googleSearch, codeExecution, …: accepted, never called.
                continue;
            };
            let Value::Array(decls) = decls else {
                return Err(bad(
                    &format!("tools[{i}].function_declarations"),
                    "Expected a list.",
                ));
            };
            for (j, decl) in decls.iter().enumerate() {
                let name = decl.get("name").and_then(Value::as_str).unwrap_or("");
                if !valid_function_name(name) {
                    return Err(bad(
                        &format!("tools[{i}].function_declarations[{j}].name"),
                        "Invalid function name. Must start with a letter or an underscore. Must \
                         be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or \
                         dashes (-), with a maximum length of 64.",
                    ));
                }
                let schema = present(decl, "parametersJsonSchema")
                    .cloned()
                    .or_else(|| present(decl, "parameters").map(normalize_schema))
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
                tools.push(ToolSpec {
                    name: name.to_string(),
                    schema,
                });
            }
        }
    }

    let mut choice = Choice::Auto;
    if let Some(config) =
        present(body, "toolConfig").and_then(|c| present(c, "functionCallingConfig"))
    {
        let mode = config.get("mode").and_then(Value::as_str).unwrap_or("AUTO");
        let allowed: Vec<String> = match present(config, "allowedFunctionNames") {
            None => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(_) => {
                return Err(bad(
                    "tool_config.function_calling_config.allowed_function_names",
                    "Expected a list of strings.",
                ))
            }
        };
        choice = match mode {
            "AUTO" | "MODE_UNSPECIFIED" | "VALIDATED" | "NONE"
                if !allowed.is_empty() && mode != "VALIDATED" =>
            {
                return Err(bad(
                    "tool_config.function_calling_config.allowed_function_names",
                    "allowed_function_names should only be set when the mode is ANY or VALIDATED.",
                ))
            }
            "AUTO" | "MODE_UNSPECIFIED" | "VALIDATED" => Choice::Auto,
            "NONE" => Choice::Never,
            "ANY" => Choice::Any,
            other => {
                return Err(bad(
                    "tool_config.function_calling_config.mode",
                    &format!("Invalid value \"{other}\"; expected AUTO, ANY, NONE or VALIDATED."),
                ))
            }
        };
        if !allowed.is_empty() {
            if let Some(unknown) = allowed
                .iter()
                .find(|a| !tools.iter().any(|t| &t.name == *a))
            {
                return Err(bad(
                    "tool_config.function_calling_config.allowed_function_names",
                    &format!("Function '{unknown}' is not declared in tools."),
                ));
            }
            tools.retain(|t| allowed.contains(&t.name));
        }
    }

    let config = present(body, "generationConfig");
    let get = |key: &str| config.and_then(|c| present(c, key));
    let limit = match get("maxOutputTokens") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => {
                return Err(bad(
                    "generation_config.max_output_tokens",
                    "max_output_tokens must be positive.",
                ))
            }
        },
    };
    let candidates = match get("candidateCount") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=8) => n as usize,
            _ => {
                return Err(bad(
                    "generation_config.candidate_count",
                    "candidate_count must be in [1, 8].",
                ))
            }
        },
    };
    if let Some(t) = get("temperature") {
        if !t.as_f64().is_some_and(|x| (0.0..=2.0).contains(&x)) {
            return Err(bad(
                "generation_config.temperature",
                "temperature must be in [0.0, 2.0].",
            ));
        }
    }
    let stop: Vec<String> = match get("stopSequences") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 5 => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(_) => {
            return Err(bad(
                "generation_config.stop_sequences",
                "at most 5 stop sequences are allowed.",
            ))
        }
    };
    let mime = get("responseMimeType")
        .and_then(Value::as_str)
        .unwrap_or("text/plain");
    let schema = get("responseJsonSchema")
        .cloned()
        .or_else(|| get("responseSchema").map(normalize_schema));
    let (format, enum_text) = match (mime, schema) {
        ("application/json", Some(s)) => (OutFormat::JsonSchema(s), false),
        ("application/json", None) => (OutFormat::JsonObject, false),
        ("text/x.enum", Some(s)) => (OutFormat::JsonSchema(s), true),
        ("text/plain" | "text/x.enum", None) => (OutFormat::Text, false),
        (_, Some(_)) => {
            return Err(bad(
                "generation_config.response_mime_type",
                "response_mime_type must be one of ['application/json', 'text/x.enum'] when \
                 response_schema is set.",
            ))
        }
        (other, None) => {
            return Err(bad(
                "generation_config.response_mime_type",
                &format!(
                    "allowed mimetypes are `text/plain`, `application/json`, `text/x.enum`; got \
                     `{other}`."
                ),
            ))
        }
    };

    let (thinking, include_thoughts) = thinking_config(config, model)?;

    let prompt_tokens = tally.finish();
    let cached = cached_tokens(&all_text, prompt_tokens);
    let blocked = all_text.contains(MARKER_BLOCKED);
    Ok(GenerateRequest {
        conv: Conversation {
            digest: digest_without(
                body,
                &[
                    &["generationConfig", "maxOutputTokens"],
                    &["generationConfig", "stopSequences"],
                    &["generationConfig", "candidateCount"],
                ],
                model,
            ),
            all_text,
            last_user_text,
            ends_with_tool_result,
            tools,
            choice,
            parallel: true,
            preamble: false,
            limit,
            stop,
            format,
        },
        candidates,
        prompt_tokens,
        cached_tokens: cached,
        blocked,
        enum_text,
        thinking,
        include_thoughts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: Value) -> String {
        match parse(&body, "m") {
            Ok(_) => panic!("expected an error for {body}"),
            Err(e) => e,
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "parts": [{"text": text}]})
    }

    #[test]
    fn validation() {
        assert!(err(json!({})).contains("contents is not specified"));
        assert!(
            err(json!({"contents":[{"role":"assistant","parts":[{"text":"x"}]}]}))
                .contains("valid role")
        );
        assert!(err(json!({"contents":[{"role":"user","parts":[]}]})).contains("must not be empty"));
        assert!(
            err(json!({"contents":[{"role":"user","parts":[{}]}]})).contains("oneof field 'data'")
        );
        assert!(
            err(json!({"contents":[user("x")],"generationConfig":{"candidateCount":9}}))
                .contains("candidate_count")
        );
        assert!(err(
            json!({"contents":[user("x")],"generationConfig":{"responseSchema":{"type":"STRING"}}})
        )
        .contains("response_mime_type"));
        let call = json!({"role":"model","parts":[{"functionCall":{"name":"f","args":{}}},{"functionCall":{"name":"f","args":{}}}]});
        let one_response = json!({"role":"user","parts":[{"functionResponse":{"name":"f","response":{"output":1}}}]});
        let tools = json!([{"functionDeclarations":[{"name":"f"}]}]);
        assert!(
            err(json!({"contents":[user("x"), call, one_response],"tools":tools}))
                .contains("number of function response parts")
        );
    }

    #[test]
    fn schemas_and_tools() {
        let s = normalize_schema(
            &json!({"type":"OBJECT","properties":{"a":{"type":"STRING","nullable":true,"enum":["X"]}},"required":["a"]}),
        );
        assert_eq!(
            s,
            json!({"type":"object","properties":{"a":{"type":"string","enum":["X"]}},"required":["a"]})
        );
        let r = parse(
            &json!({"contents":[user("call g")],
                "tools":[{"functionDeclarations":[{"name":"f"},{"name":"g","parameters":{"type":"OBJECT"}}]}],
                "toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["g"]}}}),
            "m",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.conv.choice, Choice::Any);
        assert_eq!(r.conv.tools.len(), 1);
        assert_eq!(r.conv.tools[0].schema, json!({"type":"object"}));
        assert!(!valid_function_name("1abc"));
        assert!(valid_function_name("ns.get_weather:v1"));
    }
}
