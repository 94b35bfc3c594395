//! Streams that survive their deployment (`[models.NAME] stream_recovery =
//! "continue"`).
//!
//! While a stream is relayed, [`Recovery`] keeps what the client was shown of the
//! answer: its text (the one thing a relay keeps beyond the event in hand, and only
//! on models with recovery on), whether a tool-call delta or a finish reason went by,
//! and the chunks' identity (`id`, `model`, `created`). When the upstream breaks off
//! after text was relayed, the relay asks the model's next eligible deployment (the
//! plan without the broken one, the same constraints and gates, within the model's
//! remaining attempts, once per request) to continue that text:
//!
//! - Anthropic, and Claude on Bedrock: the text as a final assistant message, which
//!   they continue (a prefill; trailing whitespace, which Anthropic refuses there,
//!   is left out, and left out of the continuation's start as well);
//! - Mistral: the same with `prefix: true` on that message;
//! - every other kind: the text as an assistant message, then a user message asking
//!   to continue exactly where it stopped.
//!
//! The continuation is relayed through a [`Splice`]: its chunks get the first
//! stream's identity, lose their role delta and reasoning (the text is what
//! continues), and its usage chunk counts both attempts. Both attempts are billed
//! and recorded; the broken one with the usage it was relayed (estimated) and class
//! `stream_cut`. A stream that carried a tool call, or had finished, is not
//! continued: it ends with its error event as without recovery.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Generation;
use crate::config::{Constraints, Deployment, LogicalModel, ProviderKind};
use crate::dispatch::{DispatchError, Job, Rendered, Served};
use crate::ledger::tracker::RequestTracker;
use crate::providers::{adapter, Endpoint};
use crate::routing::Needs;
use crate::types::chat::{ChatMessage, ChatRequest, MessageContent, Role};
use crate::types::Usage;

/// What the continuation is asked, for upstreams that cannot take a prefix.
pub const CONTINUE_INSTRUCTION: &str = "Continue your previous answer exactly where it \
stopped, without repeating anything already written. Reply with the continuation only.";

/// A stream's means of recovery, and what it has seen of the answer.
pub struct Recovery {
    generation: Arc<Generation>,
    model: Arc<LogicalModel>,
    /// The request as admitted, before any deployment rendered it.
    request: ChatRequest,
    caller: Constraints,
    needs: Needs,
    /// A chunk with choices was relayed.
    seen: bool,
    /// The text relayed so far.
    text: String,
    /// A tool-call delta was relayed: such a stream is not continued.
    tool_calls: bool,
    /// A finish reason was relayed: the answer was complete.
    finished: bool,
    /// `id`, `model`, `created`, `system_fingerprint` of the first chunk.
    identity: Option<Map<String, Value>>,
}

/// How a deployment is asked to continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// A final assistant message it continues.
    Prefill,
    /// Mistral's `prefix: true` on a final assistant message.
    Prefix,
    /// An assistant message and a user message asking for the rest.
    Instruction,
}

fn style_of(d: &Deployment) -> Style {
    match &d.provider.kind {
        ProviderKind::Anthropic { .. } => Style::Prefill,
        ProviderKind::Bedrock { .. } => {
            let m = d.upstream_model.to_ascii_lowercase();
            if m.contains("anthropic") || m.contains("claude") {
                Style::Prefill
            } else {
                Style::Instruction
            }
        }
        ProviderKind::Mistral { .. } => Style::Prefix,
        _ => Style::Instruction,
    }
}

#[derive(Deserialize)]
struct Seen {
    #[serde(default)]
    choices: Vec<SeenChoice>,
}

#[derive(Deserialize)]
struct SeenChoice {
    #[serde(default)]
    delta: Option<SeenDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct SeenDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

const IDENTITY: [&str; 4] = ["id", "model", "created", "system_fingerprint"];

impl Recovery {
    pub(super) fn new(
        generation: Arc<Generation>,
        model: Arc<LogicalModel>,
        request: ChatRequest,
        caller: Constraints,
        needs: Needs,
    ) -> Self {
        Recovery {
            generation,
            model,
            request,
            caller,
            needs,
            seen: false,
            text: String::new(),
            tool_calls: false,
            finished: false,
            identity: None,
        }
    }

    /// Notes what a relayed chunk (an OpenAI `chat.completion.chunk`) showed.
    pub fn observe(&mut self, data: &[u8]) {
        self.seen = true;
        if self.identity.is_none() {
            if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(data) {
                let kept: Map<String, Value> = IDENTITY
                    .iter()
                    .filter_map(|k| o.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect();
                self.identity = Some(kept);
            }
        }
        let Ok(seen) = serde_json::from_slice::<Seen>(data) else {
            return;
        };
        for choice in seen.choices {
            self.finished |= choice.finish_reason.is_some();
            let Some(delta) = choice.delta else {
                continue;
            };
            if let Some(text) = delta.content {
                self.text.push_str(&text);
            }
            self.tool_calls |= delta.tool_calls.is_some_and(|c| !c.is_null());
        }
    }

    /// Whether the stream, broken now, may be continued: something went out (text,
    /// reasoning, or only the role: then the continuation is a whole answer), no tool
    /// call, no finish.
    pub fn eligible(&self) -> bool {
        self.seen && !self.tool_calls && !self.finished
    }

    /// The prompt estimate of the continuation: the request's and the relayed text.
    pub fn prompt_estimate(&self) -> u64 {
        self.needs
            .prompt_tokens
            .saturating_add(crate::limits::text_tokens(self.text.chars().count() as u64))
    }

    /// Dispatches the continuation after `broken`'s stream broke off, within the
    /// model's remaining attempts. On success, the stream to relay and how.
    pub async fn resume(
        self,
        broken: &str,
        prior: Usage,
        tracker: &mut RequestTracker,
    ) -> Result<(Served, Splice), DispatchError> {
        let used = u32::try_from(tracker.attempts()).unwrap_or(u32::MAX);
        let remaining = self.model.retry.max_attempts.saturating_sub(used);
        if remaining == 0 {
            return Err(DispatchError::NoEligibleDeployment {
                model: self.model.name.clone(),
                exclusions: "the model's retry.max_attempts are used up".into(),
            });
        }
        let mut needs = self.needs;
        needs.prompt_tokens = self.prompt_estimate();
        let job = Job {
            model: &self.model,
            endpoint: Endpoint::ChatCompletions,
            stream: true,
            needs,
            caller: &self.caller,
            affinity: None,
            ttft_slo: None,
        };
        let (request, text) = (&self.request, self.text.as_str());
        let served = self
            .generation
            .dispatcher
            .dispatch_continuation(job, broken, remaining, tracker, |d| {
                let mut req = continuation_request(request, text, d);
                adapter(&d.provider.kind)
                    .chat_body(&mut req, d, true)
                    .map(Rendered::from)
            })
            .await?;
        let skip_space = style_of(&served.deployment) == Style::Prefill
            && text.trim_end().len() != text.len()
            && !text.trim_end().is_empty();
        let splice = Splice {
            identity: self.identity.unwrap_or_default(),
            prior,
            skip_space,
            from: broken.to_owned(),
        };
        Ok((served, splice))
    }
}

/// The request that asks `d` to continue `text`, the answer so far to `base`.
fn continuation_request(base: &ChatRequest, text: &str, d: &Deployment) -> ChatRequest {
    let mut req = base.clone();
    // The text continues, not the reasoning (Claude also refuses a prefill while
    // thinking).
    req.extra.remove("reasoning_effort");
    if text.is_empty() {
        // No text went out (reasoning, or only the role): the answer starts afresh.
        return req;
    }
    // What was written counts against the client's output limit.
    let written =
        u32::try_from(crate::limits::text_tokens(text.chars().count() as u64)).unwrap_or(u32::MAX);
    for n in [&mut req.max_tokens, &mut req.max_completion_tokens]
        .into_iter()
        .flatten()
    {
        *n = n.saturating_sub(written).max(1);
    }
    let assistant = |text: &str| ChatMessage {
        role: Role::Assistant,
        content: Some(MessageContent::Text(text.to_owned())),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: Map::new(),
    };
    match style_of(d) {
        Style::Prefill => {
            let kept = text.trim_end();
            if kept.is_empty() {
                return req;
            }
            req.messages.push(assistant(kept));
        }
        Style::Prefix => {
            let mut m = assistant(text);
            m.extra.insert("prefix".into(), Value::Bool(true));
            req.messages.push(m);
        }
        Style::Instruction => {
            req.messages.push(assistant(text));
            req.messages.push(ChatMessage {
                role: Role::User,
                content: Some(MessageContent::Text(CONTINUE_INSTRUCTION.to_owned())),
                ..assistant("")
            });
        }
    }
    req
}

/// How a continuation's chunks are shown: as more of the first stream.
pub struct Splice {
    identity: Map<String, Value>,
    /// The usage of the attempts before, added to the continuation's usage chunk.
    prior: Usage,
    /// The prefix lost its trailing whitespace; the continuation loses its leading.
    skip_space: bool,
    /// The deployment whose stream broke.
    pub from: String,
}

fn add(a: &Usage, b: &Usage) -> Usage {
    Usage {
        prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
        completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
        cached_tokens: a.cached_tokens.saturating_add(b.cached_tokens),
        reasoning_tokens: a.reasoning_tokens.saturating_add(b.reasoning_tokens),
        cache_write_tokens: a.cache_write_tokens.saturating_add(b.cache_write_tokens),
        estimated: a.estimated || b.estimated,
    }
}

/// Adds `n` to the number at `path` in `o`, where there is one.
fn add_at(o: &mut Map<String, Value>, path: &[&str], n: u64) {
    let (Some(last), parents) = (path.last(), path.split_last().map_or(&[][..], |p| p.1)) else {
        return;
    };
    let mut at = o;
    for p in parents {
        match at.get_mut(*p).and_then(Value::as_object_mut) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(v) = at.get_mut(*last) {
        if let Some(x) = v.as_u64() {
            *v = Value::from(x.saturating_add(n));
        }
    }
}

impl Splice {
    /// A continuation chunk as the client sees it, with the usage to show (both
    /// attempts'); `None` for a chunk that has nothing left to show (its role delta).
    pub fn rewrite(
        &mut self,
        data: &Bytes,
        usage: Option<&Usage>,
    ) -> Option<(Bytes, Option<Usage>)> {
        let shown = usage.map(|u| add(&self.prior, u));
        let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(data) else {
            return Some((data.clone(), shown));
        };
        for k in IDENTITY {
            match self.identity.get(k) {
                Some(v) => o.insert(k.to_owned(), v.clone()),
                None => o.remove(k),
            };
        }
        let mut nothing_left = false;
        if let Some(choices) = o.get_mut("choices").and_then(Value::as_array_mut) {
            let mut empty = !choices.is_empty();
            for c in choices.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(delta) = c.get_mut("delta").and_then(Value::as_object_mut) {
                    delta.remove("role");
                    delta.remove("reasoning_content");
                    delta.remove("thinking_blocks");
                    if self.skip_space {
                        if let Some(Value::String(t)) = delta.get_mut("content") {
                            let trimmed = t.trim_start();
                            if !trimmed.is_empty() {
                                self.skip_space = false;
                            }
                            *t = trimmed.to_owned();
                        }
                    }
                    let shows = delta.iter().any(|(k, v)| match (k.as_str(), v) {
                        ("content", Value::String(s)) => !s.is_empty(),
                        (_, Value::Null) => false,
                        _ => true,
                    });
                    empty &= !shows;
                }
                empty &= c.get("finish_reason").is_none_or(Value::is_null);
            }
            nothing_left = empty;
        }
        if nothing_left {
            return None;
        }
        if let Some(u) = o.get_mut("usage").and_then(Value::as_object_mut) {
            let p = &self.prior;
            add_at(u, &["prompt_tokens"], p.prompt_tokens);
            add_at(u, &["completion_tokens"], p.completion_tokens);
            add_at(
                u,
                &["total_tokens"],
                p.prompt_tokens.saturating_add(p.completion_tokens),
            );
            add_at(
                u,
                &["prompt_tokens_details", "cached_tokens"],
                p.cached_tokens,
            );
            add_at(
                u,
                &["completion_tokens_details", "reasoning_tokens"],
                p.reasoning_tokens,
            );
        }
        let bytes =
            serde_json::to_vec(&Value::Object(o)).map_or_else(|_| data.clone(), Bytes::from);
        Some((bytes, shown))
    }

    /// The SSE comment that ends a recovered stream, before its end event.
    pub fn comment(&self) -> Bytes {
        Bytes::from(format!(": switchyard recovered from {}\n\n", self.from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn splice(skip_space: bool) -> Splice {
        let mut identity = Map::new();
        identity.insert("id".into(), json!("chatcmpl-first"));
        identity.insert("model".into(), json!("gpt-4o-mini"));
        identity.insert("created".into(), json!(7));
        Splice {
            identity,
            prior: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                estimated: true,
                ..Usage::default()
            },
            skip_space,
            from: "primary".into(),
        }
    }

    fn rewritten(s: &mut Splice, chunk: Value, usage: Option<&Usage>) -> Option<Value> {
        let data = Bytes::from(chunk.to_string());
        s.rewrite(&data, usage)
            .map(|(b, _)| serde_json::from_slice(&b).expect("json"))
    }

    #[test]
    fn continuation_chunks_take_the_first_streams_identity() {
        let mut s = splice(false);
        let role = json!({"id": "other", "model": "claude", "created": 9, "system_fingerprint": "fp",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
        assert_eq!(rewritten(&mut s, role, None), None, "nothing left to show");
        let text = json!({"id": "other", "model": "claude", "created": 9,
            "choices": [{"index": 0, "delta": {"content": " more", "reasoning_content": "hm"}, "finish_reason": null}]});
        let out = rewritten(&mut s, text, None).expect("shown");
        assert_eq!(out["id"], "chatcmpl-first");
        assert_eq!(out["model"], "gpt-4o-mini");
        assert_eq!(out["created"], 7);
        assert!(out.get("system_fingerprint").is_none());
        assert_eq!(out["choices"][0]["delta"], json!({"content": " more"}));
        let finish =
            json!({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let out = rewritten(&mut s, finish, None).expect("the finish reason shows");
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn the_usage_chunk_counts_both_attempts() {
        let mut s = splice(false);
        let own = Usage {
            prompt_tokens: 20,
            completion_tokens: 3,
            ..Usage::default()
        };
        let chunk = json!({"id": "x", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 3,
            "total_tokens": 23, "prompt_tokens_details": {"cached_tokens": 0}}});
        let data = Bytes::from(chunk.to_string());
        let (bytes, shown) = s.rewrite(&data, Some(&own)).expect("shown");
        let out: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(out["usage"]["prompt_tokens"], 30);
        assert_eq!(out["usage"]["completion_tokens"], 8);
        assert_eq!(out["usage"]["total_tokens"], 38);
        let shown = shown.expect("usage");
        assert_eq!((shown.prompt_tokens, shown.completion_tokens), (30, 8));
        assert!(shown.estimated, "the broken attempt's share was estimated");
    }

    #[test]
    fn a_trimmed_prefix_drops_the_continuations_leading_space() {
        let mut s = splice(true);
        let chunk = |t: &str| json!({"choices": [{"index": 0, "delta": {"content": t}}]});
        assert_eq!(rewritten(&mut s, chunk("  "), None), None);
        let out = rewritten(&mut s, chunk(" fox jumps"), None).expect("shown");
        assert_eq!(out["choices"][0]["delta"]["content"], "fox jumps");
        let out = rewritten(&mut s, chunk(" over"), None).expect("shown");
        assert_eq!(out["choices"][0]["delta"]["content"], " over");
    }

    #[test]
    fn hostile_chunks_pass_or_are_kept_as_they_are() {
        let mut s = splice(false);
        for raw in [
            "not json",
            "[1,2]",
            "{\"choices\": 7}",
            "{\"usage\": {\"prompt_tokens\": -1}}",
        ] {
            let data = Bytes::from_static(raw.as_bytes());
            assert!(s.rewrite(&data, None).is_some(), "{raw}");
        }
    }
}
