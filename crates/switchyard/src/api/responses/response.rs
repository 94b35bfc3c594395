//! OpenAI `chat.completion` → a Responses API `response` object, and the pieces the
//! stream shares: the request's echo, output items, usage and status.
//!
//! Output items, in order: a `reasoning` item when the model's thinking came back
//! (its text as `summary`, its signed blocks as `encrypted_content`, to be sent back
//! in the next turn), a `message` item with `output_text` (or `refusal`) content, and
//! one `function_call` item per tool call, whose `call_id` is the tool-call id with
//! the reasoning state it carries.

use serde_json::{json, Value};

use super::request::encode_blocks;
use super::wire::ResponsesRequest;
use crate::api::openai_read::Completion;
use crate::types::Usage;

/// What a response repeats of its request.
#[derive(Debug, Clone)]
pub struct Echo {
    pub model: String,
    instructions: Option<String>,
    tools: Value,
    tool_choice: Value,
    temperature: Option<f64>,
    top_p: Option<f64>,
    metadata: Value,
    parallel_tool_calls: bool,
    max_output_tokens: Option<u32>,
    text: Value,
    reasoning: Value,
    pub store: bool,
    previous_response_id: Option<String>,
    user: Option<String>,
}

impl Echo {
    pub fn of(req: &ResponsesRequest, store: bool) -> Echo {
        let format = req
            .text
            .as_ref()
            .and_then(|t| t.format.clone())
            .unwrap_or_else(|| json!({"type": "text"}));
        let reasoning = req.reasoning.as_ref().map_or_else(
            || json!({"effort": null, "summary": null}),
            |r| json!({"effort": r.effort, "summary": r.summary}),
        );
        Echo {
            model: req.model.clone(),
            instructions: req.instructions.clone(),
            tools: Value::Array(req.tools.iter().flatten().map(echo_tool).collect()),
            tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            temperature: req.temperature,
            top_p: req.top_p,
            metadata: Value::Object(req.metadata.clone().unwrap_or_default()),
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            max_output_tokens: req.max_output_tokens,
            text: json!({"format": format}),
            reasoning,
            store,
            previous_response_id: req.previous_response_id.clone(),
            user: req.user.clone(),
        }
    }

    /// The response object with these fields; `output` and `usage` as given.
    pub fn response(&self, r: &Shape<'_>) -> Value {
        let mut out = json!({
            "id": r.id,
            "object": "response",
            "created_at": r.created_at,
            "status": r.status.as_str(),
            "completed_at": if r.status == Status::InProgress { None } else { Some(r.completed_at) },
            "error": r.error,
            "incomplete_details": r.status.incomplete_reason().map(|reason| json!({"reason": reason})),
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": r.model,
            "output": r.output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": self.reasoning,
            "store": self.store,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "metadata": self.metadata,
        });
        if let Some(o) = out.as_object_mut() {
            // OpenAI's schema has no null usage: absent until there is one.
            if let Some(u) = r.usage {
                o.insert("usage".into(), usage_json(u));
            }
            if let Some(user) = &self.user {
                o.insert("user".into(), json!(user));
            }
        }
        out
    }
}

/// A function tool as OpenAI's response shows it: `parameters` and `strict` always
/// there (null when the request left them out).
fn echo_tool(tool: &Value) -> Value {
    let mut out = json!({
        "type": "function",
        "name": tool.get("name").cloned().unwrap_or(Value::Null),
        "parameters": tool.get("parameters").cloned().unwrap_or(Value::Null),
        "strict": tool.get("strict").cloned().unwrap_or(Value::Null),
    });
    if let (Some(d), Some(o)) = (tool.get("description"), out.as_object_mut()) {
        o.insert("description".into(), d.clone());
    }
    out
}

/// A response's changing parts.
pub struct Shape<'a> {
    pub id: &'a str,
    pub created_at: i64,
    pub completed_at: i64,
    pub status: Status,
    pub model: &'a str,
    pub output: &'a [Value],
    pub usage: Option<&'a Usage>,
    pub error: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    /// Stopped by `max_output_tokens`.
    Truncated,
    /// Stopped by a content filter.
    Filtered,
    Failed,
}

impl Status {
    pub fn of_finish(finish_reason: Option<&str>) -> Status {
        match finish_reason {
            Some("length") => Status::Truncated,
            Some("content_filter") => Status::Filtered,
            _ => Status::Completed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Truncated | Status::Filtered => "incomplete",
            Status::Failed => "failed",
        }
    }

    fn incomplete_reason(self) -> Option<&'static str> {
        match self {
            Status::Truncated => Some("max_output_tokens"),
            Status::Filtered => Some("content_filter"),
            _ => None,
        }
    }

    /// The status of the message item the answer's text is in.
    pub fn item_status(self) -> &'static str {
        match self {
            Status::Truncated | Status::Filtered => "incomplete",
            _ => "completed",
        }
    }
}

/// The Responses usage object.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": u.cached_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}

/// A reasoning output item.
pub fn reasoning_item(id: &str, text: &str, blocks: &[Value], status: &str) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    let encrypted = (!blocks.is_empty()).then(|| encode_blocks(blocks));
    json!({
        "id": id,
        "type": "reasoning",
        "summary": summary,
        "encrypted_content": encrypted,
        "status": status,
    })
}

pub fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// An assistant message output item.
pub fn message_item(id: &str, content: Vec<Value>, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    })
}

pub fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// Item ids for one response: `suffix` is the response id's random part.
pub struct ItemIds<'a> {
    pub suffix: &'a str,
}

impl ItemIds<'_> {
    pub fn reasoning(&self, n: usize) -> String {
        format!("rs_{}{n:02}", self.suffix)
    }
    pub fn message(&self, n: usize) -> String {
        format!("msg_{}{n:02}", self.suffix)
    }
    pub fn call(&self, n: usize) -> String {
        format!("fc_{}{n:02}", self.suffix)
    }
}

/// The output items and status of an OpenAI completion body, and the model it names.
pub fn output_of(
    body: &[u8],
    ids: &ItemIds<'_>,
) -> Result<(Vec<Value>, Status, Option<String>), String> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| format!("the completion is not readable: {e}"))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| "the completion has no choices".to_owned())?;
    let status = Status::of_finish(choice.finish_reason.as_deref());
    let mut output = Vec::new();
    if let Some(m) = choice.message {
        let reasoning = m.reasoning_content.unwrap_or_default();
        let blocks = m.thinking_blocks.unwrap_or_default();
        if !reasoning.is_empty() || !blocks.is_empty() {
            output.push(reasoning_item(
                &ids.reasoning(0),
                &reasoning,
                &blocks,
                "completed",
            ));
        }
        let content = match (m.content.filter(|c| !c.is_empty()), m.refusal) {
            (Some(text), _) => Some(output_text(&text)),
            (None, Some(refusal)) if !refusal.is_empty() => {
                Some(json!({"type": "refusal", "refusal": refusal}))
            }
            _ => None,
        };
        if let Some(content) = content {
            output.push(message_item(
                &ids.message(0),
                vec![content],
                status.item_status(),
            ));
        }
        for (n, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
            output.push(call_item(
                &ids.call(n),
                call.id.as_deref().unwrap_or_default(),
                call.function.name.as_deref().unwrap_or_default(),
                call.function.arguments.as_deref().unwrap_or_default(),
                "completed",
            ));
        }
    }
    Ok((output, status, completion.model))
}

/// The `error` object of a failed response: Responses' codes are few, so the
/// gateway's is said in the message.
pub fn failure(code: &str, message: &str, rate_limited: bool) -> Value {
    let code_value = if rate_limited {
        "rate_limit_exceeded"
    } else {
        "server_error"
    };
    json!({"code": code_value, "message": format!("{message} ({code})")})
}
