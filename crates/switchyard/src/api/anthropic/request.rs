//! Anthropic Messages request → the canonical OpenAI Chat Completions request.
//!
//! - `system` becomes the first message (role `system`).
//! - A user turn's `tool_result` blocks become `tool` messages, placed first (they
//!   answer the assistant turn just before); the turn's other blocks follow as one
//!   user message.
//! - An assistant turn's `tool_use` blocks become `tool_calls` with the input
//!   serialized as the `arguments` string; its text blocks become the content.
//! - Images: base64 → a `data:` URL; url → the URL.
//! - tool_choice auto/any/tool/none → auto/required/{function}/none;
//!   `disable_parallel_tool_use` → `parallel_tool_calls: false`.
//! - `metadata.user_id` → `user`. `top_k`, replayed thinking blocks, `cache_control`
//!   and the Anthropic-only top-level fields (`thinking`, `service_tier`…) have no
//!   equivalent and are dropped; [`super::passthrough`] keeps them for Anthropic
//!   deployments.

use serde_json::{json, Map, Value};

use super::wire::{Block, Content, ImageSource, InputMessage, MessagesRequest, Role};
use crate::api::wire::{
    ChatMessage, ChatRequest, ContentPart, FunctionCall, FunctionDef, ImageUrl, MessageContent,
    Role as OaRole, Stop, Tool, ToolCall,
};

/// The OpenAI request for `req`; `req` was validated.
pub fn to_openai(req: &MessagesRequest) -> ChatRequest {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(ChatMessage::new(
            OaRole::System,
            MessageContent::Text(plain_text(system)),
        ));
    }
    for m in &req.messages {
        push_turn(&mut messages, m);
    }
    let mut extra = Map::new();
    if let Some(t) = req.temperature {
        extra.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        extra.insert("top_p".into(), json!(p));
    }
    if let Some(user) = req.metadata.as_ref().and_then(|m| m.user_id.as_ref()) {
        extra.insert("user".into(), json!(user));
    }
    let tools = req.tools.as_ref().filter(|t| !t.is_empty()).map(|tools| {
        tools
            .iter()
            .map(|t| Tool {
                kind: "function".into(),
                function: Some(FunctionDef {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.input_schema.clone(),
                    strict: None,
                }),
                extra: Map::new(),
            })
            .collect::<Vec<_>>()
    });
    // OpenAI-style upstreams refuse a tool_choice without tools.
    let tool_choice = req
        .tool_choice
        .as_ref()
        .filter(|_| tools.is_some())
        .map(|c| match c.kind.as_str() {
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => json!({"type": "function", "function": {"name": c.name}}),
            _ => json!("auto"),
        });
    let no_parallel = req
        .tool_choice
        .as_ref()
        .and_then(|c| c.disable_parallel_tool_use)
        .unwrap_or(false);
    if no_parallel && tools.is_some() {
        extra.insert("parallel_tool_calls".into(), json!(false));
    }
    if let Some(effort) = req.extra.get("thinking").and_then(effort_of_thinking) {
        extra.insert("reasoning_effort".into(), json!(effort));
    }
    ChatRequest {
        model: req.model.clone(),
        messages: messages.into(),
        stream: req.stream.filter(|s| *s),
        stream_options: None,
        tools,
        tool_choice,
        response_format: None,
        n: None,
        stop: req
            .stop_sequences
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| Stop::Many(s.clone())),
        max_tokens: Some(req.max_tokens),
        max_completion_tokens: None,
        extra,
        carried: None,
    }
}

/// Anthropic's `thinking` configuration in OpenAI's vocabulary (`reasoning_effort`),
/// so that any deployment gets it in its own terms: a manual budget by its size,
/// adaptive thinking as the middle effort.
fn effort_of_thinking(thinking: &Value) -> Option<&'static str> {
    match thinking.get("type").and_then(Value::as_str)? {
        "enabled" => Some(
            match thinking.get("budget_tokens").and_then(Value::as_u64) {
                Some(b) if b <= 2048 => "low",
                Some(b) if b <= 8192 => "medium",
                _ => "high",
            },
        ),
        "adaptive" => Some("medium"),
        _ => None,
    }
}

/// The text of a string or of text blocks, joined by newlines.
fn plain_text(content: &Content) -> String {
    match content {
        Content::Text(s) => s.clone(),
        Content::Blocks(blocks) => blocks
            .iter()
            .filter_map(|b| b.text.as_deref())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn text_part(text: &str) -> ContentPart {
    ContentPart {
        kind: "text".into(),
        text: Some(text.to_owned()),
        image_url: None,
        extra: Map::new(),
    }
}

fn image_part(source: &ImageSource) -> ContentPart {
    let url = match source.kind.as_str() {
        "base64" => format!(
            "data:{};base64,{}",
            source.media_type.as_deref().unwrap_or("image/png"),
            source.data.as_deref().unwrap_or_default()
        ),
        _ => source.url.clone().unwrap_or_default(),
    };
    ContentPart {
        kind: "image_url".into(),
        text: None,
        image_url: Some(ImageUrl { url, detail: None }),
        extra: Map::new(),
    }
}

/// Text and image blocks as OpenAI user content: a plain string when it is one text.
fn user_content(blocks: &[&Block]) -> MessageContent {
    if let [only] = blocks {
        if only.kind == "text" {
            return MessageContent::Text(only.text.clone().unwrap_or_default());
        }
    }
    MessageContent::Parts(
        blocks
            .iter()
            .filter_map(|b| match (b.kind.as_str(), &b.source) {
                ("text", _) => Some(text_part(b.text.as_deref().unwrap_or_default())),
                ("image", Some(source)) => Some(image_part(source)),
                _ => None,
            })
            .collect(),
    )
}

fn push_turn(out: &mut Vec<ChatMessage>, m: &InputMessage) {
    let blocks = match &m.content {
        Content::Text(text) => {
            let role = match m.role {
                Role::User => OaRole::User,
                Role::Assistant => OaRole::Assistant,
            };
            out.push(ChatMessage::new(role, MessageContent::Text(text.clone())));
            return;
        }
        Content::Blocks(blocks) => blocks,
    };
    match m.role {
        Role::User => {
            // Images inside tool results cannot go in an OpenAI tool message; they
            // follow in the user message after the results.
            let mut rest: Vec<&Block> = Vec::new();
            for b in blocks.iter().filter(|b| b.kind == "tool_result") {
                out.push(tool_message(b, &mut rest));
            }
            rest.extend(
                blocks
                    .iter()
                    .filter(|b| matches!(b.kind.as_str(), "text" | "image")),
            );
            if !rest.is_empty() {
                out.push(ChatMessage::new(OaRole::User, user_content(&rest)));
            }
        }
        Role::Assistant => {
            let text: String = blocks
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .collect();
            let calls: Vec<ToolCall> = blocks
                .iter()
                .filter(|b| b.kind == "tool_use")
                .map(|b| ToolCall {
                    id: b.id.clone().unwrap_or_default(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: b.name.clone().unwrap_or_default(),
                        arguments: b
                            .input
                            .as_ref()
                            .map_or_else(|| "{}".to_owned(), Value::to_string),
                    },
                })
                .collect();
            // Signed thinking goes along as `thinking_blocks` (the translators give
            // it back to the model that signed it, and drop it elsewhere).
            let thinking: Vec<Value> = blocks
                .iter()
                .filter(|b| matches!(b.kind.as_str(), "thinking" | "redacted_thinking"))
                .filter_map(|b| {
                    let mut v = b.extra.clone();
                    v.insert("type".into(), json!(b.kind));
                    super::response::thinking_content_block(&Value::Object(v))
                })
                .collect();
            let mut extra = Map::new();
            if !thinking.is_empty() {
                extra.insert("thinking_blocks".into(), Value::Array(thinking));
            }
            if text.is_empty() && calls.is_empty() {
                // Only replayed thinking: nothing an OpenAI upstream can read, but the
                // turn order must stay user/assistant.
                let mut m =
                    ChatMessage::new(OaRole::Assistant, MessageContent::Text(String::new()));
                m.extra = extra;
                out.push(m);
                return;
            }
            out.push(ChatMessage {
                role: OaRole::Assistant,
                content: (!text.is_empty()).then_some(MessageContent::Text(text)),
                name: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                tool_call_id: None,
                extra,
            });
        }
    }
}

/// One `tool_result` block as a `tool` message; its images go to `images`.
fn tool_message<'a>(b: &'a Block, images: &mut Vec<&'a Block>) -> ChatMessage {
    let text = match &b.content {
        None => String::new(),
        Some(Content::Text(s)) => s.clone(),
        Some(Content::Blocks(inner)) => {
            images.extend(inner.iter().filter(|i| i.kind == "image"));
            inner
                .iter()
                .filter_map(|i| i.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    // OpenAI has no error flag on tool results; say it in the content.
    let text = if b.is_error == Some(true) {
        format!("Error: {text}")
    } else {
        text
    };
    ChatMessage {
        role: OaRole::Tool,
        content: Some(MessageContent::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: b.tool_use_id.clone(),
        extra: Map::new(),
    }
}
