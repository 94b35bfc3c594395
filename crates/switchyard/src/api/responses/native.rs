//! Responses requests to deployments that speak the Responses API themselves (OpenAI
//! and Azure OpenAI): the client's request goes upstream as it is, and the answer
//! comes back as the upstream sent it.
//!
//! What the gateway does itself is resolved first. `previous_response_id` names a
//! response in the gateway's own store, so the stored conversation is written into
//! `input` and the field is not sent; `store` is always `false` upstream, since the
//! gateway keeps what is to be kept; `model` becomes the deployment's. The texts the
//! PII guardrail read (`instructions`, `input`) go as the guardrail left them.
//!
//! Reasoning state the gateway encoded for other providers (tool-call ids with
//! `.sy1.`, `encrypted_content` of signed thinking) must not reach an upstream and
//! means nothing to OpenAI: a request carrying any goes through the canonical
//! translation instead, on every deployment, where that state is read and stripped.
//! Admission works on the translated request; if it changed anything, the client's
//! body is no longer what may be sent, and the translation goes instead, as for
//! Anthropic's pass-through.
//!
//! The answer keeps the upstream's shape; only the fields that are the gateway's are
//! written over: the response `id` (so that it names the stored response), `store`
//! and `previous_response_id`. Usage is read for the ledger.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::error::ApiError;
use crate::api::relay::Encoder;
use crate::api::wire::ChatRequest;
use crate::config::{AzureApi, Deployment, LogicalModel, ProviderKind};
use crate::dispatch::{NativeAnswer, Rendered};
use crate::providers::sse::SseDecoder;
use crate::providers::{Endpoint, StreamDecoder, Translated};
use crate::types::ProviderError;
use crate::types::Usage;

/// The first `api-version` of Azure's classic API with the Responses API.
const AZURE_RESPONSES_SINCE: &str = "2025-03-01";

/// Whether `d` takes Responses requests as they are: OpenAI, Azure's v1 API, and
/// Azure's classic API from the `api-version` that has it, unless the provider says
/// `responses_api = false` (an OpenAI-compatible server without `/responses`).
pub fn speaks_responses(d: &Deployment) -> bool {
    if !d.provider.responses_api {
        return false;
    }
    match &d.provider.kind {
        ProviderKind::OpenAi { .. } => true,
        ProviderKind::Azure { api, .. } => match api {
            AzureApi::V1 => true,
            AzureApi::Deployments { api_version } => api_version.as_str() >= AZURE_RESPONSES_SINCE,
        },
        _ => false,
    }
}

/// With `store: false` upstream, a reasoning model's `reasoning` item can be sent back
/// in the next turn only with its encrypted content, which comes back only when asked
/// for in `include` (a client's own `include` is kept, and one that is not a list is
/// left for the upstream to refuse).
fn ask_for_encrypted_reasoning(body: &mut Map<String, Value>) {
    const ENCRYPTED: &str = "reasoning.encrypted_content";
    let include = body
        .entry("include")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = include {
        if !items.iter().any(|v| v == ENCRYPTED) {
            items.push(Value::String(ENCRYPTED.to_owned()));
        }
    }
}

/// Whether any deployment of `model` speaks the Responses API.
pub fn useful_for(model: Option<&LogicalModel>) -> bool {
    model.is_some_and(|m| m.targets.iter().any(|t| speaks_responses(&t.deployment)))
}

/// Whether `items` carry reasoning state the gateway encoded for another provider.
pub fn carries_gateway_state(items: &[Value]) -> bool {
    items.iter().any(|item| {
        let call_id = item.get("call_id").and_then(Value::as_str);
        let encrypted = item.get("encrypted_content").and_then(Value::as_str);
        call_id.is_some_and(|c| c.contains(".sy1."))
            || encrypted.is_some_and(|e| e.starts_with("sy1."))
    })
}

pub struct Native {
    /// The upstream body but for `model`; `None` when no deployment gets it.
    body: Option<Map<String, Value>>,
    before: Option<Value>,
    unchanged: Option<bool>,
}

impl Native {
    /// `raw` is the client's body; `input` what to send as `input` (the client's, or
    /// with a stored conversation the whole of it, as items), `conversation` its items;
    /// `instructions` as the guardrail left them.
    pub fn new(
        raw: &[u8],
        input: Value,
        conversation: &[Value],
        instructions: Option<&str>,
        translated: &ChatRequest,
        useful: bool,
    ) -> Self {
        let none = Native {
            body: None,
            before: None,
            unchanged: None,
        };
        if !useful || carries_gateway_state(conversation) {
            return none;
        }
        let Ok(mut body) = serde_json::from_slice::<Map<String, Value>>(raw) else {
            return none;
        };
        body.insert("input".into(), input);
        if let Some(text) = instructions {
            body.insert("instructions".into(), Value::String(text.to_owned()));
        }
        body.remove("previous_response_id");
        body.insert("store".into(), Value::Bool(false));
        Native {
            body: Some(body),
            before: serde_json::to_value(translated).ok(),
            unchanged: None,
        }
    }

    /// The upstream body for `d`, or `None` to send the translation.
    pub fn body(&mut self, admitted: &ChatRequest, d: &Deployment) -> Option<Rendered> {
        if !speaks_responses(d) {
            return None;
        }
        let raw = self.body.as_ref()?;
        let before = &self.before;
        let unchanged = *self
            .unchanged
            .get_or_insert_with(|| serde_json::to_value(admitted).ok() == *before);
        if !unchanged {
            return None;
        }
        let mut body = raw.clone();
        body.insert("model".into(), Value::String(d.upstream_model.clone()));
        if crate::providers::openai::is_reasoning_model(&d.upstream_model) {
            ask_for_encrypted_reasoning(&mut body);
        }
        Some(Rendered {
            body: serde_json::to_vec(&body).ok()?,
            native: Some(&RESPONSES_NATIVE),
            endpoint: Some(Endpoint::Responses),
        })
    }

    /// Whether `d` was sent the Responses request (so its answer is a `response`).
    pub fn passed_to(&self, d: &Deployment) -> bool {
        speaks_responses(d) && self.body.is_some() && self.unchanged == Some(true)
    }
}

/// The gateway's own fields of a response object.
#[derive(Clone)]
pub struct Own {
    pub id: String,
    pub store: bool,
    pub previous_response_id: Option<String>,
}

impl Own {
    pub fn write(&self, response: &mut Value) {
        if let Some(o) = response.as_object_mut() {
            o.insert("id".into(), Value::String(self.id.clone()));
            o.insert("store".into(), Value::Bool(self.store));
            o.insert(
                "previous_response_id".into(),
                self.previous_response_id
                    .clone()
                    .map_or(Value::Null, Value::String),
            );
        }
    }
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize, Default)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    fn to_usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: self
                .input_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: self
                .output_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            ..Usage::default()
        }
    }

    fn complete(&self) -> bool {
        self.input_tokens.is_some() && self.output_tokens.is_some()
    }
}

#[derive(Deserialize)]
struct ResponseSummary {
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// The [`NativeAnswer`] for the Responses API.
pub struct ResponsesNative;

pub static RESPONSES_NATIVE: ResponsesNative = ResponsesNative;

impl NativeAnswer for ResponsesNative {
    fn usage(&self, body: &[u8]) -> Result<Option<Usage>, ProviderError> {
        let r: ResponseSummary = serde_json::from_slice(body)
            .map_err(|e| ProviderError::Protocol(format!("response is not readable: {e}")))?;
        if r.object.as_deref() != Some("response") {
            return Err(ProviderError::Protocol("expected a response object".into()));
        }
        // A usage without both counts is estimated by the caller.
        Ok(r.usage.filter(WireUsage::complete).map(|u| u.to_usage()))
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(NativeStream {
            sse: SseDecoder::new(),
            ended: false,
        })
    }
}

#[derive(Deserialize)]
struct EventSummary {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    response: Option<ResponseSummary>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
}

/// Responses events as items, each with its bytes as they came. The terminal event
/// (`response.completed`, `.incomplete`, `.failed`) carries the usage and ends it.
struct NativeStream {
    sse: SseDecoder,
    /// The terminal event was read: the next item is the end.
    ended: bool,
}

/// Events whose output the relay counts as generated (about a token each).
fn is_output(kind: &str) -> bool {
    kind.ends_with(".delta")
}

impl StreamDecoder for NativeStream {
    fn push(&mut self, bytes: &[u8]) {
        self.sse.push(bytes);
    }

    fn next(&mut self) -> Result<Option<Translated>, ProviderError> {
        if self.ended {
            self.ended = false;
            return Ok(Some(Translated::Done));
        }
        let Some(event) = self
            .sse
            .next_event()
            .map_err(|_| ProviderError::Protocol("a stream event is too large".into()))?
        else {
            return Ok(None);
        };
        let summary: EventSummary = serde_json::from_slice(&event.data)
            .map_err(|e| ProviderError::Protocol(format!("stream event is not JSON: {e}")))?;
        if summary.kind == "error" {
            // In OpenAI's error JSON, which failover and the relay read.
            let code = match summary.code {
                Some(Value::String(s)) => s,
                _ => "server_error".to_owned(),
            };
            let kind = if code.contains("rate_limit") {
                "rate_limit_error"
            } else {
                "server_error"
            };
            let error = json!({"error": {
                "type": kind,
                "code": code,
                "message": summary.message.unwrap_or_default(),
            }});
            return Ok(Some(Translated::Error(Bytes::from(error.to_string()))));
        }
        let terminal = matches!(
            summary.kind.as_str(),
            "response.completed" | "response.incomplete" | "response.failed"
        );
        let usage = summary
            .response
            .and_then(|r| r.usage)
            .filter(|u| terminal && u.complete())
            .map(|u| u.to_usage());
        self.ended = terminal;
        Ok(Some(Translated::Chunk {
            has_choices: is_output(&summary.kind),
            usage,
            data: event.data,
        }))
    }

    fn has_partial(&self) -> bool {
        self.sse.has_partial()
    }
}

fn reframe(name: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + data.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// The relay's encoder for a Responses stream from a Responses upstream: each event
/// as it came, the response object's own fields written over.
pub struct NativeEvents {
    own: Own,
    /// The latest response object seen, for a failure after it.
    response: Option<Value>,
    sequence: Option<u64>,
    finished: Option<super::stream::Finished>,
    persist: Option<BoxFuture<'static, ()>>,
}

impl NativeEvents {
    pub fn new(own: Own, finished: Option<super::stream::Finished>) -> Self {
        NativeEvents {
            own,
            response: None,
            sequence: None,
            finished,
            persist: None,
        }
    }

    fn next_sequence(&mut self) -> u64 {
        let n = self.sequence.map_or(0, |s| s.saturating_add(1));
        self.sequence = Some(n);
        n
    }
}

impl Encoder for NativeEvents {
    fn chunk(&mut self, data: &Bytes, _has_choices: bool, _usage: Option<&Usage>) -> Option<Bytes> {
        let Ok(mut event) = serde_json::from_slice::<Value>(data) else {
            return None;
        };
        if let Some(n) = event.get("sequence_number").and_then(Value::as_u64) {
            self.sequence = Some(n);
        }
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(response) = event.get_mut("response") {
            self.own.write(response);
            self.response = Some(response.clone());
            if matches!(kind.as_str(), "response.completed" | "response.incomplete") {
                if let Some(f) = self.finished.take() {
                    self.persist = Some(f(response.clone()));
                }
            }
            return Some(reframe(&kind, event.to_string().as_bytes()));
        }
        Some(reframe(&kind, data))
    }

    fn upstream_error(&mut self, data: &Bytes) -> Bytes {
        let doc: Value = serde_json::from_slice(data).unwrap_or_default();
        let field = |name: &str| {
            doc.get("error")
                .and_then(|e| e.get(name))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let event = json!({
            "type": "error",
            "code": field("code"),
            "message": field("message"),
            "param": null,
            "sequence_number": self.next_sequence(),
        });
        reframe("error", event.to_string().as_bytes())
    }

    fn done(&mut self) -> Bytes {
        // The terminal event was the upstream's own.
        Bytes::new()
    }

    fn failed(&mut self, error: &ApiError) -> Bytes {
        let mut out = BytesMut::new();
        let event = json!({
            "type": "error",
            "code": error.code,
            "message": error.message,
            "param": null,
            "sequence_number": self.next_sequence(),
        });
        out.put_slice(&reframe("error", event.to_string().as_bytes()));
        if let Some(mut response) = self.response.take().filter(Value::is_object) {
            if let Some(o) = response.as_object_mut() {
                o.insert("status".into(), json!("failed"));
                o.insert(
                    "error".into(),
                    json!({"code": "server_error", "message": error.message}),
                );
            }
            let event = json!({
                "type": "response.failed",
                "response": response,
                "sequence_number": self.next_sequence(),
            });
            out.put_slice(&reframe("response.failed", event.to_string().as_bytes()));
        }
        out.freeze()
    }

    fn persist(&mut self) -> Option<BoxFuture<'static, ()>> {
        self.persist.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(events: &[Value]) -> Vec<u8> {
        events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
            .collect::<String>()
            .into_bytes()
    }

    fn usage_json() -> Value {
        json!({"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens_details": {"reasoning_tokens": 3}})
    }

    #[test]
    fn usage_of_a_response_and_refusal_of_anything_else() {
        let body = json!({"object": "response", "usage": usage_json()}).to_string();
        let u = RESPONSES_NATIVE
            .usage(body.as_bytes())
            .expect("readable")
            .expect("usage");
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (11, 7, 4, 3)
        );
        assert!(!u.estimated);
        // Counts missing: left to the caller's estimate.
        let partial = json!({"object": "response", "usage": {"input_tokens": 2}}).to_string();
        assert_eq!(
            RESPONSES_NATIVE.usage(partial.as_bytes()).expect("ok"),
            None
        );
        for bad in [
            &b"{\"object\": \"chat.completion\"}"[..],
            b"[1]",
            b"not json",
            b"{\"object\": 7}",
        ] {
            assert!(RESPONSES_NATIVE.usage(bad).is_err());
        }
    }

    #[test]
    fn stream_items_carry_usage_at_the_end_then_done() {
        let mut d = RESPONSES_NATIVE.stream_decoder();
        d.push(&sse(&[
            json!({"type": "response.created", "response": {"id": "resp_up"}, "sequence_number": 0}),
            json!({"type": "response.output_text.delta", "delta": "Hé", "sequence_number": 1}),
            json!({"type": "response.completed", "response": {"id": "resp_up", "usage": usage_json()}, "sequence_number": 2}),
        ]));
        let mut seen = Vec::new();
        while let Some(item) = d.next().expect("items") {
            seen.push(item);
        }
        assert_eq!(seen.len(), 4);
        assert!(matches!(
            &seen[0],
            Translated::Chunk {
                has_choices: false,
                usage: None,
                ..
            }
        ));
        assert!(matches!(
            &seen[1],
            Translated::Chunk {
                has_choices: true,
                usage: None,
                ..
            }
        ));
        match &seen[2] {
            Translated::Chunk { usage: Some(u), .. } => {
                assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 7))
            }
            _ => panic!("the terminal event carries usage"),
        }
        assert!(matches!(seen[3], Translated::Done));
        assert!(!d.has_partial());
    }

    #[test]
    fn error_events_become_openai_errors_and_bad_events_fail() {
        let mut d = RESPONSES_NATIVE.stream_decoder();
        d.push(&sse(&[
            json!({"type": "error", "code": "rate_limit_exceeded",
            "message": "slow down", "sequence_number": 0}),
        ]));
        match d.next().expect("item") {
            Some(Translated::Error(data)) => {
                let v: Value = serde_json::from_slice(&data).expect("json");
                assert_eq!(v["error"]["type"], "rate_limit_error");
                assert_eq!(v["error"]["message"], "slow down");
            }
            _ => panic!("an error item"),
        }
        let mut d = RESPONSES_NATIVE.stream_decoder();
        d.push(b"event: x\ndata: {not json\n\n");
        assert!(d.next().is_err());
        let mut d = RESPONSES_NATIVE.stream_decoder();
        d.push(b"data: {\"type\": 5, \"response\": []}\n\n");
        assert!(d.next().is_err());
    }

    #[test]
    fn the_encoder_writes_the_gateway_s_fields_and_ends_a_cut_stream() {
        let own = Own {
            id: "resp_gw".into(),
            store: true,
            previous_response_id: Some("resp_before".into()),
        };
        let mut e = NativeEvents::new(own, None);
        let created = json!({"type": "response.created", "sequence_number": 0,
            "response": {"id": "resp_up", "store": false, "previous_response_id": null, "status": "in_progress"}});
        let out = e
            .chunk(&Bytes::from(created.to_string()), false, None)
            .expect("frame");
        let text = String::from_utf8(out.to_vec()).expect("utf-8");
        let data: Value = serde_json::from_str(
            text.strip_prefix("event: response.created\ndata: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .expect("framing"),
        )
        .expect("json");
        assert_eq!(data["response"]["id"], "resp_gw");
        assert_eq!(data["response"]["store"], true);
        assert_eq!(data["response"]["previous_response_id"], "resp_before");
        // Events without a response pass as they came.
        let delta =
            Bytes::from_static(b"{\"type\":\"response.output_text.delta\",\"sequence_number\":1}");
        let out = e.chunk(&delta, true, None).expect("frame");
        assert!(out.ends_with(
            b"data: {\"type\":\"response.output_text.delta\",\"sequence_number\":1}\n\n"
        ));
        let error = ApiError {
            status: http::StatusCode::BAD_GATEWAY,
            kind: "server_error",
            code: "stream_cut",
            param: None,
            message: "cut".into(),
            retry_after: None,
        };
        let tail = String::from_utf8(e.failed(&error).to_vec()).expect("utf-8");
        assert!(tail.contains("\"sequence_number\":2"), "{tail}");
        assert!(tail.contains("event: response.failed"), "{tail}");
        assert!(tail.contains("\"id\":\"resp_gw\""), "{tail}");
        assert!(tail.contains("\"sequence_number\":3"), "{tail}");
    }

    #[test]
    fn gateway_reasoning_state_is_recognised() {
        assert!(carries_gateway_state(&[
            json!({"type": "function_call_output",
            "call_id": "call_1.sy1.gemini-1.c2ln", "output": "x"})
        ]));
        assert!(carries_gateway_state(&[
            json!({"type": "reasoning", "id": "rs_1",
            "summary": [], "encrypted_content": "sy1.W10"})
        ]));
        assert!(!carries_gateway_state(&[
            json!({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}),
            json!({"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"}),
            json!({"call_id": 7, "encrypted_content": ["sy1."]}),
        ]));
    }
}
