//! The OpenAI ingress's side of the request types: parsing a body with the offending
//! field named as OpenAI's `param`, and the checks types alone cannot make.
//!
//! The types themselves are the canonical ones (`crate::types::chat`, in OpenAI's
//! shape); they are re-exported here because they are also this ingress's wire types.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
pub use crate::types::chat::{
    ChatMessage, ChatRequest, ContentPart, EmbeddingsRequest, FunctionCall, FunctionDef, ImageUrl,
    JsonSchemaFormat, MessageContent, ResponseFormat, Role, Stop, StreamOptions, Tool, ToolCall,
};

/// Parses a JSON body into `T`, naming the offending field on failure.
pub fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // The common case parses once, without tracking the path; only a body that fails
    // is parsed again to name where.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(v) => {
            de.end().map_err(|e| {
                ApiError::invalid_json(format!("The request body is not valid JSON: {e}."))
            })?;
            Ok(v)
        }
        Err(e) => {
            let inner = e.inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::invalid_json(format!(
                    "The request body is not valid JSON: {inner}."
                )));
            }
            let path = e.path().to_string();
            let raw = inner.to_string();
            // serde reports a missing field at the parent's path; name the field itself.
            if let Some(field) = raw
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
            {
                let param = if path == "." {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                return Err(ApiError::invalid_request(
                    Some(param.clone()),
                    format!("Missing required parameter: '{param}'."),
                ));
            }
            let param = if path == "." { None } else { Some(path) };
            let detail = strip_position(&raw);
            let message = match &param {
                Some(p) => format!("Invalid value for '{p}': {detail}."),
                None => format!("Invalid request body: {detail}."),
            };
            Err(ApiError::invalid_request(param, message))
        }
    }
}

fn strip_position(msg: &str) -> &str {
    msg.split_once(" at line ").map_or(msg, |(head, _)| head)
}

impl ChatRequest {
    /// Checks what types alone cannot, naming the param like OpenAI does.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.model.is_empty() {
            return Err(ApiError::invalid_request(
                Some("model".into()),
                "'model' must not be empty.",
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_request(
                Some("messages".into()),
                "'messages' must contain at least one message.",
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            match m.role {
                Role::Tool if m.tool_call_id.is_none() => {
                    return Err(ApiError::invalid_request(
                        Some(format!("messages[{i}].tool_call_id")),
                        format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                    ))
                }
                Role::Assistant
                    if m.content.is_none()
                        && m.tool_calls.is_none()
                        && !m.extra.contains_key("function_call") =>
                {
                    return Err(ApiError::invalid_request(
                        Some(format!("messages[{i}].content")),
                        format!("Missing required parameter: 'messages[{i}].content'."),
                    ))
                }
                Role::Assistant => {}
                _ if m.content.is_none() => {
                    return Err(ApiError::invalid_request(
                        Some(format!("messages[{i}].content")),
                        format!("Missing required parameter: 'messages[{i}].content'."),
                    ))
                }
                _ => {}
            }
            if let Some(MessageContent::Parts(parts)) = &m.content {
                for (j, part) in parts.iter().enumerate() {
                    let at = format!("messages[{i}].content[{j}]");
                    match part.kind.as_str() {
                        "text" if part.text.is_none() => {
                            return Err(ApiError::invalid_request(
                                Some(format!("{at}.text")),
                                format!("Missing required parameter: '{at}.text'."),
                            ))
                        }
                        "image_url" if part.image_url.is_none() => {
                            return Err(ApiError::invalid_request(
                                Some(format!("{at}.image_url")),
                                format!("Missing required parameter: '{at}.image_url'."),
                            ))
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some(n) = self.n {
            if !(1..=128).contains(&n) {
                return Err(ApiError::invalid_request(
                    Some("n".into()),
                    "'n' must be between 1 and 128.",
                ));
            }
        }
        if let Some(tools) = &self.tools {
            for (i, t) in tools.iter().enumerate() {
                if t.kind == "function" && t.function.is_none() {
                    return Err(ApiError::invalid_request(
                        Some(format!("tools[{i}].function")),
                        format!("Missing required parameter: 'tools[{i}].function'."),
                    ));
                }
            }
        }
        if let Some(choice) = &self.tool_choice {
            let ok = match choice {
                Value::String(s) => matches!(s.as_str(), "none" | "auto" | "required"),
                Value::Object(o) => o.contains_key("type"),
                _ => false,
            };
            if !ok {
                return Err(ApiError::invalid_request(
                    Some("tool_choice".into()),
                    "'tool_choice' must be \"none\", \"auto\", \"required\" or an object naming a tool.",
                ));
            }
            let needs_tools = !matches!(choice, Value::String(s) if s == "none");
            if needs_tools && self.tools.as_ref().is_none_or(Vec::is_empty) {
                return Err(ApiError::invalid_request(
                    Some("tool_choice".into()),
                    "'tool_choice' is only allowed when 'tools' are specified.",
                ));
            }
        }
        if let Some(rf) = &self.response_format {
            match rf.kind.as_str() {
                "text" | "json_object" => {}
                "json_schema" if rf.json_schema.is_none() => {
                    return Err(ApiError::invalid_request(
                        Some("response_format.json_schema".into()),
                        "Missing required parameter: 'response_format.json_schema'.",
                    ))
                }
                "json_schema" => {}
                other => {
                    return Err(ApiError::invalid_request(
                        Some("response_format.type".into()),
                        format!("Invalid value for 'response_format.type': `{other}`; expected text, json_object or json_schema."),
                    ))
                }
            }
        }
        if let Some(Stop::Many(stops)) = &self.stop {
            if stops.len() > 4 {
                return Err(ApiError::invalid_request(
                    Some("stop".into()),
                    "'stop' accepts at most 4 sequences.",
                ));
            }
        }
        if self.stream_options.is_some() && self.stream != Some(true) {
            return Err(ApiError::invalid_request(
                Some("stream_options".into()),
                "'stream_options' is only allowed when 'stream' is true.",
            ));
        }
        Ok(())
    }

    /// A rough prompt-size estimate (about four bytes a token), used only when the
    /// provider reports no usage.
    pub fn estimate_prompt_tokens(body_len: usize) -> u64 {
        (body_len as u64).div_ceil(4)
    }
}

impl EmbeddingsRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.model.is_empty() {
            return Err(ApiError::invalid_request(
                Some("model".into()),
                "'model' must not be empty.",
            ));
        }
        let ok = match &self.input {
            Value::String(_) => true,
            Value::Array(items) => !items.is_empty(),
            _ => false,
        };
        if !ok {
            return Err(ApiError::invalid_request(
                Some("input".into()),
                "'input' must be a string, an array of strings or an array of token arrays, and not empty.",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> ApiError {
        match parse_body::<ChatRequest>(body.as_bytes()) {
            Ok(_) => panic!("{body} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn content_and_stop_take_either_shape() {
        let req: ChatRequest = parse_body(
            br#"{"model":"m","stop":["a","b"],"messages":[
                {"role":"user","content":"plain \u00e9"},
                {"role":"user","content":[{"type":"text","text":"part"}]}]}"#,
        )
        .expect("request");
        assert!(
            matches!(&req.messages[0].content, Some(MessageContent::Text(t)) if t == "plain é")
        );
        assert!(
            matches!(&req.messages[1].content, Some(MessageContent::Parts(p)) if p[0].text.as_deref() == Some("part"))
        );
        assert!(matches!(&req.stop, Some(Stop::Many(s)) if s.len() == 2));
        let one: ChatRequest =
            parse_body(br#"{"model":"m","stop":"x","messages":[{"role":"user","content":null}]}"#)
                .expect("request");
        assert!(matches!(&one.stop, Some(Stop::One(s)) if s == "x"));
        assert!(one.messages[0].content.is_none());
    }

    #[test]
    fn a_wrong_shape_names_what_was_expected_and_where() {
        let e = refusal(r#"{"model":"m","messages":[{"role":"user","content":42}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        assert!(
            e.message
                .contains("expected a string or an array of content parts"),
            "{}",
            e.message
        );
        // Inside the parts, the path goes on to the part and its field.
        let e = refusal(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#,
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].text"));
        let e =
            refusal(r#"{"model":"m","stop":{"a":1},"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("stop"));
        assert!(
            e.message
                .contains("expected a string or an array of strings"),
            "{}",
            e.message
        );
        let e =
            refusal(r#"{"model":"m","stop":["a",1],"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("stop[1]"));
        // Other JSON types, a number too large for any integer among them.
        for content in ["true", "1e300", "-1", "{}"] {
            let e = refusal(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":{content}}}]}}"#
            ));
            assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{content}");
            assert!(
                e.message.contains("expected a string or an array"),
                "{}",
                e.message
            );
        }
    }
}
