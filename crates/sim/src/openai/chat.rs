//! Chat completions: deterministic answers (text, structured output, tool calls), the
//! plain and streamed wire shapes, and the fault handling of streams.

use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{json, Value};

use super::chat_request::{parse_chat, ChatRequest, Format, Tool, ToolChoice};
use super::{
    fault_error, invalid_value, timed_answer, unix_now, ApiError, Ctx, Dialect, Event, Payload,
    ABORT_GRACE,
};
use crate::conversation::{fragments, group_tokens, pick_tools, Choice, Continue};
use crate::generate::{
    self, alnum, derive_seed, fixed_tokens, message_text, prose_tokens, text_tokens, word_tokens,
    Rng,
};
use crate::reasoning::{self, Family, EFFORTS};
use crate::{Fault, FaultKind, Latency};

#[derive(Clone, Debug, PartialEq)]
pub(super) struct ToolCall {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) arguments: String,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Output {
    Text {
        tokens: Vec<String>,
        finish: &'static str,
    },
    Tools(Vec<ToolCall>),
}

impl Output {
    fn completion_tokens(&self) -> u64 {
        match self {
            Output::Text { tokens, .. } => tokens.len() as u64,
            // A call costs its name, its arguments and a little framing.
            Output::Tools(calls) => calls
                .iter()
                .map(|c| text_tokens(&c.name) + text_tokens(&c.arguments) + 3)
                .sum(),
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Output::Text { finish, .. } => finish,
            Output::Tools(_) => "tool_calls",
        }
    }
}

/// Magic markers: text in any message that steers the answer (see the README).
pub(crate) const MARKER_ECHO: &str = "[[echo]]";
pub(crate) const MARKER_CACHED: &str = "[[cached]]";
pub(crate) const MARKER_LEN: &str = "[[len:";

fn all_text(messages: &[Value]) -> String {
    messages
        .iter()
        .map(message_text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `[[len:N]]` → N (1 to 4096).
fn len_marker(text: &str) -> Option<usize> {
    let start = text.find(MARKER_LEN)? + MARKER_LEN.len();
    let rest = &text[start..];
    let end = rest.find("]]")?;
    rest[..end]
        .trim()
        .parse::<usize>()
        .ok()
        .map(|n| n.clamp(1, 4096))
}

/// The last user message's text with the markers taken out.
fn echo_text(messages: &[Value]) -> String {
    let text = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let mut text = text.replace(MARKER_ECHO, "").replace(MARKER_CACHED, "");
    while let Some(start) = text.find(MARKER_LEN) {
        match text[start..].find("]]") {
            Some(end) => text.replace_range(start..start + end + 2, ""),
            None => break,
        }
    }
    text.trim().to_string()
}

/// The tools to call for this request, in order (empty = answer with text).
fn select_tools(req: &ChatRequest) -> Vec<&Tool> {
    let last_is_tool_result = req
        .messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    if req.tools.is_empty() || last_is_tool_result {
        return Vec::new();
    }
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let choice = match &req.tool_choice {
        ToolChoice::Auto => Choice::Auto,
        ToolChoice::Never => Choice::Never,
        ToolChoice::Required => Choice::Any,
        ToolChoice::Named(name) => Choice::Named(name.clone()),
    };
    pick_tools(
        &req.tools,
        |t| &t.name,
        &last_user,
        &choice,
        req.parallel_tool_calls,
    )
}

/// Cuts `tokens` before the first stop sequence and to at most `limit` tokens.
fn apply_limits(tokens: Vec<String>, stop: &[String], limit: Option<usize>) -> Output {
    let text: String = tokens.concat();
    let cut = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    let mut kept = match cut {
        None => tokens,
        Some(cut) => {
            let mut kept = Vec::new();
            let mut offset = 0;
            for t in tokens {
                if offset >= cut {
                    break;
                }
                let end = offset + t.len();
                if end <= cut {
                    kept.push(t);
                } else {
                    kept.push(t[..cut - offset].to_string());
                }
                offset = end;
            }
            kept
        }
    };
    if let Some(limit) = limit {
        if kept.len() > limit {
            kept.truncate(limit);
            return Output::Text {
                tokens: kept,
                finish: "length",
            };
        }
    }
    Output::Text {
        tokens: kept,
        finish: "stop",
    }
}

/// The answer for choice `index`.
fn answer(req: &ChatRequest, index: usize) -> Output {
    let mut rng = Rng::new(derive_seed(&req.digest, "choice", index as u64));
    let calls = select_tools(req);
    if !calls.is_empty() {
        let calls = calls
            .into_iter()
            .enumerate()
            .map(|(k, tool)| {
                let id_seed = derive_seed(&req.digest, "call", (index as u64) << 16 | k as u64);
                let args = generate::value_for_schema(&tool.parameters, &mut rng);
                ToolCall {
                    id: format!("call_{}", alnum(id_seed, 24)),
                    name: tool.name.clone(),
                    arguments: args.to_string(),
                }
            })
            .collect();
        return Output::Tools(calls);
    }
    let prompt = all_text(&req.messages);
    let tokens = match &req.format {
        Format::JsonSchema(schema) => {
            fixed_tokens(&generate::value_for_schema(schema, &mut rng).to_string())
        }
        Format::JsonObject => fixed_tokens(&generate::json_object_answer(&mut rng).to_string()),
        Format::Text if prompt.contains(MARKER_ECHO) => word_tokens(&echo_text(&req.messages)),
        Format::Text => {
            let len = len_marker(&prompt).unwrap_or_else(|| 8 + rng.below(33) as usize);
            prose_tokens(&mut rng, len)
        }
    };
    apply_limits(tokens, &req.stop, req.limit)
}

pub(super) struct Usage {
    pub(super) prompt: u64,
    /// Output tokens, reasoning tokens included.
    pub(super) completion: u64,
    pub(super) cached: u64,
    pub(super) reasoning: u64,
}

/// Reasoning tokens per choice: reasoning families (o1, o3, o4, gpt-5…) always reason
/// (`reasoning_effort` minimal 8, low 64, medium (the default) 192, high 512 tokens);
/// other models refuse `reasoning_effort` as OpenAI does.
pub(super) fn reasoning_tokens(model: &str, body: &Value) -> Result<u64, ApiError> {
    let reasons = reasoning::family(model) == Family::OpenAiReasoning;
    match body.get("reasoning_effort").filter(|v| !v.is_null()) {
        None if reasons => Ok(reasoning::openai_reasoning_tokens("medium")),
        None => Ok(0),
        Some(_) if !reasons => Err(ApiError::invalid(
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            Some("reasoning_effort"),
            Some("unsupported_parameter"),
        )),
        Some(Value::String(e)) if EFFORTS.contains(&e.as_str()) => {
            Ok(reasoning::openai_reasoning_tokens(e))
        }
        Some(v) => Err(invalid_value(
            "reasoning_effort",
            format!(
                "Invalid value: {v}. Supported values are: 'minimal', 'low', 'medium', and 'high'."
            ),
        )),
    }
}

impl Usage {
    fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }
}

/// Everything needed to render the answer, plain or streamed.
pub(super) struct ChatPlan {
    id: String,
    created: u64,
    pub(super) model: String,
    pub(super) outputs: Vec<Output>,
    pub(super) usage: Usage,
}

/// The rest of the answer `base` gets, after `so_far` (a continuation request, see
/// [`crate::conversation::continuation`]), cut by `req`'s own limits; `None` when that
/// answer is not text or does not start with `so_far`.
fn continued_answer(
    req: &ChatRequest,
    base: &ChatRequest,
    so_far: &str,
    index: usize,
) -> Option<Output> {
    let Output::Text { tokens, .. } = answer(base, index) else {
        return None;
    };
    let rest = crate::conversation::after_prefix(&tokens, so_far)?;
    Some(apply_limits(rest, &req.stop, req.limit))
}

pub(super) fn plan_chat(
    req: &ChatRequest,
    reasoning_per_choice: u64,
    continued: Option<&(ChatRequest, String)>,
) -> ChatPlan {
    let outputs: Vec<Output> = (0..req.n)
        .map(|i| {
            continued
                .and_then(|(base, so_far)| continued_answer(req, base, so_far, i))
                .unwrap_or_else(|| answer(req, i))
        })
        .collect();
    let prompt = generate::prompt_tokens(&req.messages, &req.tool_values);
    let cached = if all_text(&req.messages).contains(MARKER_CACHED) {
        prompt / 2
    } else {
        0
    };
    ChatPlan {
        id: format!("chatcmpl-{}", alnum(derive_seed(&req.digest, "id", 0), 29)),
        created: unix_now(),
        model: req.model.clone(),
        usage: Usage {
            prompt,
            completion: outputs.iter().map(Output::completion_tokens).sum::<u64>()
                + reasoning_per_choice * outputs.len() as u64,
            cached,
            reasoning: reasoning_per_choice * outputs.len() as u64,
        },
        outputs,
    }
}

fn filter_result() -> Value {
    json!({"filtered": false, "severity": "safe"})
}

/// Azure's per-choice content-filter annotations (all clear).
fn choice_filter_results() -> Value {
    json!({
        "hate": filter_result(),
        "self_harm": filter_result(),
        "sexual": filter_result(),
        "violence": filter_result(),
        "protected_material_code": {"filtered": false, "detected": false},
        "protected_material_text": {"filtered": false, "detected": false},
    })
}

/// Azure's top-level prompt annotations (all clear).
fn prompt_filter_results() -> Value {
    json!([{
        "prompt_index": 0,
        "content_filter_results": {
            "hate": filter_result(),
            "self_harm": filter_result(),
            "sexual": filter_result(),
            "violence": filter_result(),
            "jailbreak": {"filtered": false, "detected": false},
        },
    }])
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect(),
    )
}

fn completion_json(dialect: Dialect, plan: &ChatPlan) -> Value {
    let choices: Vec<Value> = plan
        .outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let message = match out {
                Output::Text { tokens, .. } => json!({
                    "role": "assistant",
                    "content": tokens.concat(),
                    "refusal": null,
                }),
                Output::Tools(calls) => json!({
                    "role": "assistant",
                    "content": null,
                    "refusal": null,
                    "tool_calls": tool_calls_json(calls),
                }),
            };
            let mut choice = json!({
                "index": i,
                "message": message,
                "logprobs": null,
                "finish_reason": out.finish_reason(),
            });
            if dialect.is_azure() {
                choice["content_filter_results"] = choice_filter_results();
            }
            choice
        })
        .collect();
    let mut body = json!({
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": plan.usage.to_json(),
        "system_fingerprint": "fp_sim",
    });
    if dialect.is_azure() {
        body["prompt_filter_results"] = prompt_filter_results();
    }
    body
}

// ---------------------------------------------------------------------------------------
// Chat: streaming

fn sse(json: &Value) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// The `data:` payloads of a streamed answer, in order (without `[DONE]`).
fn stream_payloads(
    dialect: Dialect,
    plan: &ChatPlan,
    include_usage: bool,
    chunks: Option<u32>,
) -> Vec<Value> {
    let azure = dialect.is_azure();
    let frame = |choices: Value| {
        let mut chunk = json!({
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": "fp_sim",
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let choice = |index: usize, delta: Value, finish: Option<&str>, filtered: bool| {
        let mut c = json!({
            "index": index,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish,
        });
        if azure {
            c["content_filter_results"] = if filtered {
                choice_filter_results()
            } else {
                json!({})
            };
        }
        c
    };

    let per_choice: Vec<Vec<Value>> = plan
        .outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let mut seq = Vec::new();
            match out {
                Output::Text { tokens, .. } => {
                    seq.push(choice(
                        i,
                        json!({"role": "assistant", "content": "", "refusal": null}),
                        None,
                        false,
                    ));
                    for piece in group_tokens(tokens, chunks) {
                        seq.push(choice(i, json!({"content": piece}), None, true));
                    }
                }
                Output::Tools(calls) => {
                    seq.push(choice(
                        i,
                        json!({"role": "assistant", "content": null, "refusal": null}),
                        None,
                        false,
                    ));
                    for (k, call) in calls.iter().enumerate() {
                        seq.push(choice(
                            i,
                            json!({"tool_calls": [{
                                "index": k,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }]}),
                            None,
                            false,
                        ));
                        for fragment in fragments(&call.arguments) {
                            seq.push(choice(
                                i,
                                json!({"tool_calls": [{
                                    "index": k,
                                    "function": {"arguments": fragment},
                                }]}),
                                None,
                                false,
                            ));
                        }
                    }
                }
            }
            seq.push(choice(i, json!({}), Some(out.finish_reason()), false));
            seq
        })
        .collect();

    let mut payloads = Vec::new();
    if azure {
        let mut first = frame(json!([]));
        first["prompt_filter_results"] = prompt_filter_results();
        payloads.push(first);
    }
    // Choices are interleaved round-robin, as the provider does with n > 1.
    let longest = per_choice.iter().map(Vec::len).max().unwrap_or(0);
    for step in 0..longest {
        for seq in &per_choice {
            if let Some(c) = seq.get(step) {
                payloads.push(frame(json!([c])));
            }
        }
    }
    if include_usage {
        let mut last = frame(json!([]));
        last["usage"] = plan.usage.to_json();
        payloads.push(last);
    }
    payloads
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
    events.push(Event {
        delay: Duration::ZERO,
        payload: Payload::Data(Bytes::from_static(b"data: [DONE]\n\n")),
    });
    let Some(fault) = fault else { return events };
    match fault.kind {
        FaultKind::Stall => {
            if let Some(second) = events.get_mut(1) {
                second.delay += Duration::from_millis(fault.stall_ms.unwrap_or(1000));
            }
        }
        FaultKind::Cut => {
            // Never past the last data event, so `[DONE]` is never sent.
            let keep = (fault.cut_after_chunks.unwrap_or(2) as usize).min(payloads.len());
            events.truncate(keep);
            events.push(Event {
                delay: ABORT_GRACE,
                payload: Payload::Abort,
            });
        }
        FaultKind::Malformed => {
            let id = payloads
                .first()
                .and_then(|p| p.get("id"))
                .cloned()
                .unwrap_or(Value::Null);
            let broken = format!(
                "data: {{\"id\":{id},\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"broken\n\n"
            );
            events.insert(
                1.min(events.len()),
                Event {
                    delay: Duration::ZERO,
                    payload: Payload::Data(Bytes::from(broken)),
                },
            );
        }
        FaultKind::Error => {}
    }
    events
}

pub(super) async fn chat(ctx: &Ctx, deployment: Option<String>, body: &Value) -> Response {
    // A request to continue an answer it carries: the answer is the rest of the one
    // the request without it gets (its whole answer, without limits, then cut).
    let continued = crate::conversation::continuation(body, Continue::Instruction).and_then(
        |(mut base, so_far)| {
            if let Some(o) = base.as_object_mut() {
                o.remove("max_tokens");
                o.remove("max_completion_tokens");
            }
            parse_chat(&base, deployment.clone())
                .ok()
                .map(|b| (b, so_far))
        },
    );
    let req = match parse_chat(body, deployment) {
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
    let reasoning = match reasoning_tokens(&req.model, body) {
        Ok(r) => r,
        Err(e) => return ctx.error(e),
    };
    let plan = plan_chat(&req, reasoning, continued.as_ref());
    let payloads = stream_payloads(ctx.dialect, &plan, req.include_usage, latency.chunks);
    timed_answer(
        ctx,
        req.stream,
        fault.as_ref(),
        |f| stream_events(&payloads, &latency, f),
        || completion_json(ctx.dialect, &plan).to_string(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> ChatRequest {
        match parse_chat(&body, None) {
            Ok(r) => r,
            Err(e) => panic!("unexpected error {:?}", e.body),
        }
    }

    #[test]
    fn limits_and_stops() {
        let tokens: Vec<String> = ["One", " two", " three", " four", "."]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = apply_limits(tokens.clone(), &[], Some(2));
        assert_eq!(
            out,
            Output::Text {
                tokens: vec!["One".into(), " two".into()],
                finish: "length"
            }
        );
        let out = apply_limits(tokens.clone(), &["hre".into()], None);
        assert_eq!(
            out,
            Output::Text {
                tokens: vec!["One".into(), " two".into(), " t".into()],
                finish: "stop"
            }
        );
        // The earliest of several stop sequences wins.
        let out = apply_limits(tokens.clone(), &["four".into(), " two".into()], None);
        assert_eq!(
            out,
            Output::Text {
                tokens: vec!["One".into()],
                finish: "stop"
            }
        );
        let out = apply_limits(tokens.clone(), &[], Some(5));
        assert_eq!(out.finish_reason(), "stop");
        assert_eq!(out.completion_tokens(), 5);
    }

    #[test]
    fn tool_selection() {
        let tools = json!([
            {"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
            {"type":"function","function":{"name":"get_time"}},
            {"type":"function","function":{"name":"weather"}}
        ]);
        let base = |text: &str, extra: Value| {
            let mut b =
                json!({"model":"m","messages":[{"role":"user","content":text}],"tools":tools});
            if let (Value::Object(b), Value::Object(e)) = (&mut b, extra) {
                b.extend(e);
            }
            req(b)
        };
        let names = |r: &ChatRequest| -> Vec<String> {
            select_tools(r).iter().map(|t| t.name.clone()).collect()
        };
        // Whole-name matches in order of appearance; "get_weather" does not also match "weather".
        let r = base("please get_time then get_weather", json!({}));
        assert_eq!(names(&r), ["get_time", "get_weather"]);
        let r = base(
            "please get_time then get_weather",
            json!({"parallel_tool_calls": false}),
        );
        assert_eq!(names(&r), ["get_time"]);
        let r = base("nothing named here", json!({}));
        assert!(names(&r).is_empty());
        let r = base("nothing named here", json!({"tool_choice":"required"}));
        assert_eq!(names(&r), ["get_weather"]);
        let r = base("use weather", json!({"tool_choice":"required"}));
        assert_eq!(names(&r), ["weather"]);
        let r = base(
            "get_time",
            json!({"tool_choice":{"type":"function","function":{"name":"weather"}}}),
        );
        assert_eq!(names(&r), ["weather"]);
        let r = base("get_time", json!({"tool_choice":"none"}));
        assert!(names(&r).is_empty());
    }

    #[test]
    fn answers_are_deterministic_and_choices_differ() {
        let body = json!({"model":"m","messages":[{"role":"user","content":"hello"}],"n":3});
        let a = plan_chat(&req(body.clone()), 0, None);
        let b = plan_chat(&req(body), 0, None);
        assert_eq!(a.outputs, b.outputs);
        assert_eq!(a.id, b.id);
        assert_ne!(a.outputs[0], a.outputs[1]);
        assert_ne!(a.outputs[1], a.outputs[2]);
        for out in &a.outputs {
            let n = out.completion_tokens();
            assert!((8..=40).contains(&n), "{n}");
        }
    }

    #[test]
    fn markers() {
        let r = req(json!({"model":"m","messages":[
            {"role":"system","content":"be brief [[len:5]]"},
            {"role":"user","content":"[[cached]] hi"}]}));
        let p = plan_chat(&r, 0, None);
        assert_eq!(p.usage.completion, 5);
        assert_eq!(p.usage.cached, p.usage.prompt / 2);
        assert!(p.usage.cached > 0);
        let r = req(json!({"model":"m","messages":[
            {"role":"user","content":"[[echo]] alpha beta STOP gamma"}]}));
        assert_eq!(echo_text(&r.messages), "alpha beta STOP gamma");
        match answer(&r, 0) {
            Output::Text { tokens, .. } => assert_eq!(tokens.concat(), "alpha beta STOP gamma"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_continuation_answers_the_rest_of_the_answer() {
        let base =
            json!({"model": "m", "messages": [{"role": "user", "content": "Tell me a story"}]});
        let Output::Text { tokens: whole, .. } = answer(&req(base.clone()), 0) else {
            panic!("a text answer");
        };
        let so_far = whole[..3].concat();
        let mut asked = base;
        if let Some(m) = asked["messages"].as_array_mut() {
            m.push(json!({"role": "assistant", "content": so_far}));
            m.push(json!({"role": "user", "content": "Continue where you stopped."}));
        }
        let continued = crate::conversation::continuation(&asked, Continue::Instruction)
            .map(|(b, text)| (req(b), text));
        assert!(continued.is_some());
        let plan = plan_chat(&req(asked.clone()), 0, continued.as_ref());
        let Output::Text { tokens: rest, .. } = &plan.outputs[0] else {
            panic!("a text answer");
        };
        assert_eq!(format!("{so_far}{}", rest.concat()), whole.concat());
        // The prompt counts what the request carries.
        assert!(
            plan.usage.prompt
                > generate::prompt_tokens(
                    &req(json!({"model": "m",
            "messages": [{"role": "user", "content": "Tell me a story"}]}))
                    .messages,
                    &[]
                )
        );
        // A prefix that is not the answer's start gets an answer of its own.
        asked["messages"][1]["content"] = json!("Something else entirely");
        let continued = crate::conversation::continuation(&asked, Continue::Instruction)
            .map(|(b, text)| (req(b), text));
        let plan = plan_chat(&req(asked.clone()), 0, continued.as_ref());
        assert_eq!(plan.outputs[0], answer(&req(asked), 0));
    }

    #[test]
    fn grouping_and_fragments() {
        let tokens: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
        assert_eq!(group_tokens(&tokens, None).len(), 7);
        let g = group_tokens(&tokens, Some(3));
        assert_eq!(g, ["t0t1t2", "t3t4", "t5t6"]);
        assert_eq!(group_tokens(&tokens, Some(50)).len(), 7);
        assert!(group_tokens(&[], Some(3)).is_empty());
        let f = fragments("{\"city\":\"Paris\"}");
        assert!(f.len() >= 2);
        assert_eq!(f.concat(), "{\"city\":\"Paris\"}");
        assert_eq!(fragments("{}"), ["{", "}"]);
    }
}
