//! The Responses API (`POST /v1/responses`; Azure: `/openai/v1/responses` and
//! `/openai/responses?api-version=…`): the request's items are read as a chat
//! conversation and answered by the chat generator, then rendered as a `response`
//! object or its typed stream events (each with its `sequence_number`).
//!
//! The simulator keeps no responses: `previous_response_id` is refused as an unknown
//! response, and `store` is accepted and ignored.

use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::chat::{plan_chat, reasoning_tokens, ChatPlan, Output};
use super::{
    fault_error, field, invalid_type, missing, parse_chat, timed_answer, unix_now, ApiError, Ctx,
    Event, Payload, ABORT_GRACE,
};
use crate::conversation::{fragments, group_tokens};
use crate::generate::{alnum, derive_seed};
use crate::{Fault, FaultKind, Latency};

/// The text of a message item's content: a string, or its text parts joined.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The Chat Completions body the request stands for.
fn chat_body(body: &Value) -> Result<Value, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(
            "The request body is not a valid JSON object.",
            None,
            None,
        ));
    };
    if let Some(prev) = field(body, "previous_response_id") {
        return Err(ApiError::invalid(
            format!(
                "Previous response with id '{}' not found.",
                prev.as_str().unwrap_or("")
            ),
            Some("previous_response_id"),
            Some("previous_response_not_found"),
        ));
    }
    let mut messages = Vec::new();
    match field(body, "instructions") {
        None => {}
        Some(Value::String(s)) => messages.push(json!({"role": "developer", "content": s})),
        Some(other) => return Err(invalid_type("instructions", "a string", other)),
    }
    match field(body, "input") {
        None => return Err(missing("input")),
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let kind = item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message");
                match kind {
                    "message" => {
                        let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                        let text = item.get("content").map(content_text).unwrap_or_default();
                        messages.push(json!({"role": role, "content": text}));
                    }
                    "function_call" => {
                        let call = json!({
                            "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {
                                "name": item.get("name").cloned().unwrap_or(Value::Null),
                                "arguments": item.get("arguments").cloned().unwrap_or(json!("{}")),
                            },
                        });
                        // Calls in a row are one assistant turn.
                        match messages.last_mut() {
                            Some(m)
                                if m["role"] == "assistant" && m["tool_calls"].is_array() =>
                            {
                                if let Some(calls) = m["tool_calls"].as_array_mut() {
                                    calls.push(call);
                                }
                            }
                            _ => messages.push(
                                json!({"role": "assistant", "content": null, "tool_calls": [call]}),
                            ),
                        }
                    }
                    "function_call_output" => messages.push(json!({
                        "role": "tool",
                        "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                        "content": item.get("output").map(content_text).unwrap_or_default(),
                    })),
                    "reasoning" => {}
                    other => {
                        return Err(ApiError::invalid(
                            format!("Invalid value: '{other}'. Supported item types are 'message', 'function_call', 'function_call_output' and 'reasoning'."),
                            Some(format!("input[{i}].type").as_str()),
                            Some("invalid_value"),
                        ))
                    }
                }
            }
        }
        Some(other) => return Err(invalid_type("input", "a string or an array", other)),
    }
    let mut chat = Map::new();
    chat.insert(
        "model".into(),
        obj.get("model").cloned().unwrap_or(Value::Null),
    );
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(Value::Array(tools)) = field(body, "tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
            .map(|t| {
                let mut f = Map::new();
                for k in ["name", "description", "parameters"] {
                    if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                        f.insert(k.into(), v.clone());
                    }
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    match field(body, "tool_choice") {
        Some(Value::Object(c)) if c.get("type").and_then(Value::as_str) == Some("function") => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": c.get("name")}}),
            );
        }
        Some(v @ Value::String(_)) => {
            chat.insert("tool_choice".into(), v.clone());
        }
        _ => {}
    }
    for (from, to) in [
        ("max_output_tokens", "max_completion_tokens"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("stream", "stream"),
    ] {
        if let Some(v) = field(body, from) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(effort) = body.get("reasoning").and_then(|r| r.get("effort")) {
        if !effort.is_null() {
            chat.insert("reasoning_effort".into(), effort.clone());
        }
    }
    if let Some(format) = body.get("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {
                        "name": format.get("name").cloned().unwrap_or(json!("answer")),
                        "schema": format.get("schema").cloned().unwrap_or(json!({})),
                    }}),
                );
            }
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    Ok(Value::Object(chat))
}

/// A response object's parts that do not change while it streams.
struct Answer {
    id: String,
    created_at: u64,
    model: String,
    /// The output items, complete.
    items: Vec<Value>,
    /// For each item, the text or arguments pieces it streams in.
    pieces: Vec<Vec<String>>,
    incomplete: bool,
    usage: Value,
    echo: Map<String, Value>,
}

fn answer_of(body: &Value, plan: &ChatPlan, chunks: Option<u32>) -> Answer {
    let seed = |label: &str, i: u64| {
        alnum(
            derive_seed(&crate::generate::chat_digest(body), label, i),
            24,
        )
    };
    let mut items = Vec::new();
    let mut pieces = Vec::new();
    if plan.usage.reasoning > 0 {
        items.push(
            json!({"type": "reasoning", "id": format!("rs_{}", seed("rs", 0)), "summary": []}),
        );
        pieces.push(Vec::new());
    }
    let mut incomplete = false;
    match plan.outputs.first() {
        Some(Output::Text { tokens, finish }) => {
            incomplete = *finish == "length";
            items.push(json!({
                "type": "message",
                "id": format!("msg_{}", seed("msg", 0)),
                "status": if incomplete { "incomplete" } else { "completed" },
                "role": "assistant",
                "content": [{"type": "output_text", "text": tokens.concat(), "annotations": [], "logprobs": []}],
            }));
            pieces.push(group_tokens(tokens, chunks));
        }
        Some(Output::Tools(calls)) => {
            for (k, c) in calls.iter().enumerate() {
                items.push(json!({
                    "type": "function_call",
                    "id": format!("fc_{}", seed("fc", k as u64)),
                    "call_id": c.id,
                    "name": c.name,
                    "arguments": c.arguments,
                    "status": "completed",
                }));
                pieces.push(fragments(&c.arguments));
            }
        }
        None => {}
    }
    let u = &plan.usage;
    let usage = json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached, "cache_write_tokens": 0},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.prompt + u.completion,
    });
    let mut echo = Map::new();
    for (k, default) in [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("metadata", json!({})),
        ("parallel_tool_calls", json!(true)),
        ("previous_response_id", Value::Null),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("store", json!(true)),
        ("temperature", json!(1.0)),
        ("text", json!({"format": {"type": "text"}})),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("top_p", json!(1.0)),
        ("truncation", json!("disabled")),
    ] {
        echo.insert(k.into(), field(body, k).cloned().unwrap_or(default));
    }
    // Function tools are shown with `parameters` and `strict` always there.
    if let Some(Value::Array(tools)) = field(body, "tools") {
        let shown: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut t = t.clone();
                if let Some(o) = t
                    .as_object_mut()
                    .filter(|o| o.get("type").and_then(Value::as_str) == Some("function"))
                {
                    for k in ["parameters", "strict"] {
                        o.entry(k).or_insert(Value::Null);
                    }
                }
                t
            })
            .collect();
        echo.insert("tools".into(), Value::Array(shown));
    }
    Answer {
        id: format!("resp_{}", seed("resp", 0)),
        created_at: unix_now(),
        model: plan.model.clone(),
        items,
        pieces,
        incomplete,
        usage,
        echo,
    }
}

impl Answer {
    /// The response object: in progress (no output, no usage) or finished.
    fn object(&self, finished: bool) -> Value {
        let status = match (finished, self.incomplete) {
            (false, _) => "in_progress",
            (true, false) => "completed",
            (true, true) => "incomplete",
        };
        let mut o = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": if finished && self.incomplete {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "model": self.model,
            "output": if finished { json!(self.items) } else { json!([]) },
        });
        if let Some(obj) = o.as_object_mut() {
            obj.extend(self.echo.clone());
            if finished {
                obj.insert("usage".into(), self.usage.clone());
            }
        }
        o
    }

    /// The stream's events in order, without sequence numbers.
    fn events(&self) -> Vec<Value> {
        let mut out = vec![
            json!({"type": "response.created", "response": self.object(false)}),
            json!({"type": "response.in_progress", "response": self.object(false)}),
        ];
        for (i, (item, pieces)) in self.items.iter().zip(&self.pieces).enumerate() {
            let id = item["id"].clone();
            let mut added = item.clone();
            match item["type"].as_str() {
                Some("message") => {
                    added["content"] = json!([]);
                    added["status"] = json!("in_progress");
                    out.push(json!({"type": "response.output_item.added", "output_index": i, "item": added}));
                    let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                    out.push(json!({"type": "response.content_part.added", "item_id": id, "output_index": i, "content_index": 0, "part": part}));
                    for p in pieces {
                        out.push(json!({"type": "response.output_text.delta", "item_id": id, "output_index": i, "content_index": 0, "delta": p, "logprobs": []}));
                    }
                    let text = item["content"][0]["text"].clone();
                    out.push(json!({"type": "response.output_text.done", "item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": []}));
                    out.push(json!({"type": "response.content_part.done", "item_id": id, "output_index": i, "content_index": 0, "part": item["content"][0]}));
                }
                Some("function_call") => {
                    added["arguments"] = json!("");
                    added["status"] = json!("in_progress");
                    out.push(json!({"type": "response.output_item.added", "output_index": i, "item": added}));
                    for p in pieces {
                        out.push(json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": i, "delta": p}));
                    }
                    out.push(json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": i, "name": item["name"], "arguments": item["arguments"]}));
                }
                _ => {
                    out.push(json!({"type": "response.output_item.added", "output_index": i, "item": added}));
                }
            }
            out.push(json!({"type": "response.output_item.done", "output_index": i, "item": item}));
        }
        let last = if self.incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(json!({"type": last, "response": self.object(true)}));
        for (n, e) in out.iter_mut().enumerate() {
            e["sequence_number"] = json!(n);
        }
        out
    }
}

fn sse(event: &Value) -> Bytes {
    let kind = event["type"].as_str().unwrap_or("message");
    Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
}

/// The timed events of a stream, with the fault (stall, cut, malformed) worked in.
fn stream_events(payloads: &[Value], latency: &Latency, fault: Option<&Fault>) -> Vec<Event> {
    let mut events: Vec<Event> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Event {
            delay: Duration::from_millis(if i == 0 {
                latency.ttft_ms
            } else {
                latency.chunk_delay_ms
            }),
            payload: Payload::Data(sse(p)),
        })
        .collect();
    let Some(fault) = fault else { return events };
    match fault.kind {
        FaultKind::Stall => {
            if let Some(second) = events.get_mut(1) {
                second.delay += Duration::from_millis(fault.stall_ms.unwrap_or(1000));
            }
        }
        FaultKind::Cut => {
            // Never the terminal event.
            let keep = (fault.cut_after_chunks.unwrap_or(2) as usize)
                .min(payloads.len().saturating_sub(1));
            events.truncate(keep);
            events.push(Event {
                delay: ABORT_GRACE,
                payload: Payload::Abort,
            });
        }
        FaultKind::Malformed => {
            events.insert(
                1.min(events.len()),
                Event {
                    delay: Duration::ZERO,
                    payload: Payload::Data(Bytes::from_static(
                        b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"broken\n\n",
                    )),
                },
            );
        }
        FaultKind::Error => {}
    }
    events
}

pub(super) async fn responses(ctx: &Ctx, body: &Value) -> Response {
    let chat = match chat_body(body) {
        Ok(c) => c,
        Err(e) => return ctx.error(e),
    };
    let req = match parse_chat(&chat, None) {
        Ok(r) => r,
        Err(e) => return ctx.error(e),
    };
    let (fault, latency) = {
        let mut state = ctx.shared.state();
        (
            state.take_fault(&ctx.instance, &req.model),
            state.latency(&ctx.instance, &req.model),
        )
    };
    if let Some(f) = fault.as_ref().filter(|f| f.kind == FaultKind::Error) {
        return ctx.error(fault_error(ctx.dialect, f, &req.model));
    }
    let reasoning = match reasoning_tokens(&req.model, &chat) {
        Ok(r) => r,
        Err(mut e) => {
            if e.body["error"]["param"] == "reasoning_effort" {
                e.body["error"]["param"] = json!("reasoning.effort");
            }
            return ctx.error(e);
        }
    };
    let plan = plan_chat(&req, reasoning, None);
    let answer = answer_of(body, &plan, latency.chunks);
    let payloads = answer.events();
    timed_answer(
        ctx,
        req.stream,
        fault.as_ref(),
        |f| stream_events(&payloads, &latency, f),
        || answer.object(true).to_string(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn plan(body: &Value) -> (Value, Answer) {
        let chat = chat_body(body).expect("chat body");
        let req = parse_chat(&chat, None).expect("parses");
        let reasoning = reasoning_tokens(&req.model, &chat).expect("effort");
        let p = plan_chat(&req, reasoning, None);
        let a = answer_of(body, &p, None);
        (chat, a)
    }

    #[test]
    fn items_become_a_chat_conversation() {
        let body = json!({"model": "gpt-4o", "instructions": "be brief", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "dry"}]},
        ], "max_output_tokens": 5});
        let (chat, _) = plan(&body);
        let m = chat["messages"].as_array().expect("messages");
        assert_eq!(m.len(), 5);
        assert_eq!(m[0]["role"], "developer");
        assert_eq!(m[1]["content"], "weather?");
        assert_eq!(m[2]["tool_calls"].as_array().map(Vec::len), Some(2));
        assert_eq!(m[3]["tool_call_id"], "c1");
        assert_eq!(m[4]["content"], "dry");
        assert_eq!(chat["max_completion_tokens"], 5);
    }

    #[test]
    fn reasoning_models_report_reasoning_tokens_and_items() {
        let body = json!({"model": "o4-mini", "input": "hi", "reasoning": {"effort": "low"}});
        let (_, a) = plan(&body);
        assert_eq!(a.items[0]["type"], "reasoning");
        assert_eq!(a.usage["output_tokens_details"]["reasoning_tokens"], 64);
        let body = json!({"model": "gpt-4o", "input": "hi", "reasoning": {"effort": "low"}});
        let chat = chat_body(&body).expect("chat");
        assert!(reasoning_tokens("gpt-4o", &chat).is_err());
    }

    #[test]
    fn stream_events_are_numbered_and_end_completed() {
        let body = json!({"model": "gpt-4o", "input": "[[len:3]] hi", "stream": true});
        let (_, a) = plan(&body);
        let events = a.events();
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], n);
        }
        assert_eq!(events[0]["type"], "response.created");
        let last = events.last().expect("events");
        assert_eq!(last["type"], "response.completed");
        assert_eq!(last["response"]["usage"]["output_tokens"], 3);
        let deltas = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .count();
        assert_eq!(deltas, 3);
    }

    #[test]
    fn previous_response_ids_and_bad_items_are_refused() {
        let e = chat_body(&json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}))
            .expect_err("unknown");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.body["error"]["param"], "previous_response_id");
        let e = chat_body(&json!({"model": "m", "input": [{"type": "nope"}]})).expect_err("type");
        assert_eq!(e.body["error"]["param"], "input[0].type");
        let e = chat_body(&json!({"model": "m", "input": 3})).expect_err("input");
        assert_eq!(e.body["error"]["param"], "input");
    }
}
