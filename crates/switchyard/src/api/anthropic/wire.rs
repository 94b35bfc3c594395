//! Anthropic Messages request types, as clients (the `anthropic` SDKs) send them.
//!
//! Typed as deep as the translation needs; blocks are one flat struct with the field
//! of every kind optional (like OpenAI's content parts in [`crate::api::wire`]), so
//! that a missing field is reported by [`MessagesRequest::validate`] with its path.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    /// Required by Anthropic; there is no default.
    pub max_tokens: u32,
    pub messages: Vec<InputMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Everything else (thinking, service_tier, output_config…), kept for a native
    /// Anthropic upstream; an OpenAI-style upstream cannot use it.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputMessage {
    pub role: Role,
    pub content: Content,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A string, or content blocks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

/// One content block; `kind` says which of the optional fields it must have.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    /// `text`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `image`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSource>,
    /// `tool_use`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// `tool_result`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// cache_control, citations…
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSource {
    /// `base64` or `url`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// `custom` (or absent) for client tools; versioned names for server tools.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolChoice {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn missing(param: String) -> ApiError {
    ApiError::invalid_request(
        Some(param.clone()),
        format!("Missing required parameter: '{param}'."),
    )
}

fn invalid(param: String, why: &str) -> ApiError {
    ApiError::invalid_request(
        Some(param.clone()),
        format!("Invalid value for '{param}': {why}."),
    )
}

impl MessagesRequest {
    /// Checks what types alone cannot, naming the field in the same path style as
    /// [`crate::api::wire::parse_body`] (`messages[0].content[1].source`).
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.model.is_empty() {
            return Err(invalid("model".into(), "must not be empty"));
        }
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens".into(), "must be at least 1"));
        }
        if self.messages.is_empty() {
            return Err(invalid(
                "messages".into(),
                "must contain at least one message",
            ));
        }
        if let Some(Content::Blocks(blocks)) = &self.system {
            for (i, b) in blocks.iter().enumerate() {
                if b.kind != "text" {
                    return Err(invalid(
                        format!("system[{i}].type"),
                        "system blocks must be text",
                    ));
                }
                if b.text.is_none() {
                    return Err(missing(format!("system[{i}].text")));
                }
            }
        }
        for (i, m) in self.messages.iter().enumerate() {
            if let Content::Blocks(blocks) = &m.content {
                for (j, b) in blocks.iter().enumerate() {
                    b.validate(&format!("messages[{i}].content[{j}]"), m.role)?;
                }
            }
        }
        if let Some(t) = self.temperature {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid("temperature".into(), "must be between 0 and 1"));
            }
        }
        if let Some(tools) = &self.tools {
            for (i, t) in tools.iter().enumerate() {
                if t.kind.as_deref().is_some_and(|k| k != "custom") {
                    return Err(invalid(
                        format!("tools[{i}].type"),
                        "server tools are not supported by this gateway; use client tools",
                    ));
                }
                match &t.input_schema {
                    None => return Err(missing(format!("tools[{i}].input_schema"))),
                    Some(Value::Object(_)) => {}
                    Some(_) => {
                        return Err(invalid(
                            format!("tools[{i}].input_schema"),
                            "must be a JSON Schema object",
                        ))
                    }
                }
            }
        }
        if let Some(choice) = &self.tool_choice {
            match choice.kind.as_str() {
                "auto" | "any" | "none" => {}
                "tool" if choice.name.is_none() => return Err(missing("tool_choice.name".into())),
                "tool" => {}
                _ => {
                    return Err(invalid(
                        "tool_choice.type".into(),
                        "must be one of auto, any, tool, none",
                    ))
                }
            }
            let needs_tools = choice.kind != "none";
            if needs_tools && self.tools.as_ref().is_none_or(Vec::is_empty) {
                return Err(invalid(
                    "tool_choice".into(),
                    "is only allowed when tools are given",
                ));
            }
        }
        if let Some(stops) = &self.stop_sequences {
            // OpenAI-style upstreams take at most four.
            if stops.len() > 4 {
                return Err(invalid(
                    "stop_sequences".into(),
                    "at most 4 stop sequences are supported by this gateway",
                ));
            }
        }
        Ok(())
    }
}

impl Block {
    fn validate(&self, at: &str, role: Role) -> Result<(), ApiError> {
        match self.kind.as_str() {
            "text" if self.text.is_none() => Err(missing(format!("{at}.text"))),
            "text" => Ok(()),
            "image" => {
                let Some(source) = &self.source else {
                    return Err(missing(format!("{at}.source")));
                };
                match source.kind.as_str() {
                    "base64" if source.media_type.is_none() => {
                        Err(missing(format!("{at}.source.media_type")))
                    }
                    "base64" if source.data.is_none() => Err(missing(format!("{at}.source.data"))),
                    "url" if source.url.is_none() => Err(missing(format!("{at}.source.url"))),
                    "base64" | "url" => Ok(()),
                    _ => Err(invalid(
                        format!("{at}.source.type"),
                        "must be base64 or url",
                    )),
                }
            }
            "tool_use" => {
                if role != Role::Assistant {
                    return Err(invalid(
                        format!("{at}.type"),
                        "tool_use blocks belong in assistant turns",
                    ));
                }
                if self.id.is_none() {
                    return Err(missing(format!("{at}.id")));
                }
                if self.name.is_none() {
                    return Err(missing(format!("{at}.name")));
                }
                Ok(())
            }
            "tool_result" => {
                if role != Role::User {
                    return Err(invalid(
                        format!("{at}.type"),
                        "tool_result blocks belong in user turns",
                    ));
                }
                if self.tool_use_id.is_none() {
                    return Err(missing(format!("{at}.tool_use_id")));
                }
                if let Some(Content::Blocks(inner)) = &self.content {
                    for (k, b) in inner.iter().enumerate() {
                        if !matches!(b.kind.as_str(), "text" | "image") {
                            return Err(invalid(
                                format!("{at}.content[{k}].type"),
                                "tool results may hold text and image blocks",
                            ));
                        }
                        b.validate(&format!("{at}.content[{k}]"), Role::User)?;
                    }
                }
                Ok(())
            }
            // Replayed reasoning has no equivalent upstream; it is dropped.
            "thinking" | "redacted_thinking" => Ok(()),
            other => Err(invalid(
                format!("{at}.type"),
                &format!("`{other}` blocks are not supported by this gateway"),
            )),
        }
    }
}
