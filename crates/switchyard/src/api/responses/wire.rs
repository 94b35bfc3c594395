//! The Responses API request, as the `openai` SDKs send it (`client.responses.create`).
//!
//! The top level is typed (serde names a wrong type's field as `param`); `input`,
//! `tools`, `tool_choice` and `text.format` are read by hand in [`super::request`],
//! so that each error names the exact item (`input[2].call_id`).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::error::ApiError;

#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or a list of items.
    #[serde(default)]
    pub input: Option<Value>,
    /// A system (developer) message placed before the input.
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub text: Option<TextParam>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub reasoning: Option<ReasoningParam>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// What the gateway does not act on (`include`, `truncation`, `service_tier`,
    /// `stream_options`, `prompt_cache_key`…): accepted and ignored.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TextParam {
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReasoningParam {
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The efforts the canonical request knows (`reasoning_effort`); OpenAI's larger
/// ones are the canonical `high`.
pub fn canonical_effort(effort: &str) -> Option<&'static str> {
    Some(match effort {
        "none" => "none",
        "minimal" => "minimal",
        "low" => "low",
        "medium" => "medium",
        "high" | "xhigh" | "max" => "high",
        _ => return None,
    })
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(Some(param.to_owned()), message)
}

impl ResponsesRequest {
    /// Checks what the types alone cannot, naming the param.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.model.is_empty() {
            return Err(invalid("model", "'model' must not be empty."));
        }
        match &self.input {
            None if self.previous_response_id.is_none() => {
                return Err(invalid("input", "Missing required parameter: 'input'."))
            }
            None | Some(Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(invalid(
                    "input",
                    "Invalid type for 'input': expected a string or an array of input items.",
                ))
            }
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(invalid(
                    "temperature",
                    "'temperature' must be between 0 and 2.",
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid("top_p", "'top_p' must be between 0 and 1."));
            }
        }
        if self.max_output_tokens == Some(0) {
            return Err(invalid(
                "max_output_tokens",
                "'max_output_tokens' must be at least 1.",
            ));
        }
        if let Some(effort) = self.reasoning.as_ref().and_then(|r| r.effort.as_deref()) {
            if canonical_effort(effort).is_none() {
                return Err(invalid(
                    "reasoning.effort",
                    format!("Invalid value for 'reasoning.effort': `{effort}`; expected none, minimal, low, medium or high."),
                ));
            }
        }
        if let Some(summary) = self.reasoning.as_ref().and_then(|r| r.summary.as_deref()) {
            if !matches!(summary, "auto" | "concise" | "detailed") {
                return Err(invalid(
                    "reasoning.summary",
                    format!("Invalid value for 'reasoning.summary': `{summary}`; expected auto, concise or detailed."),
                ));
            }
        }
        if let Some(metadata) = &self.metadata {
            if metadata.len() > 16 {
                return Err(invalid("metadata", "'metadata' may have at most 16 keys."));
            }
            for (k, v) in metadata {
                if !v.is_string() {
                    return Err(invalid(
                        &format!("metadata.{k}"),
                        format!("Invalid type for 'metadata.{k}': expected a string."),
                    ));
                }
            }
        }
        if let Some(id) = &self.previous_response_id {
            if id.is_empty() {
                return Err(invalid(
                    "previous_response_id",
                    "'previous_response_id' must not be empty.",
                ));
            }
        }
        Ok(())
    }
}
