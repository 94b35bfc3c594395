//! OpenAI chunks → Responses API stream events, as they arrive.
//!
//! The order is OpenAI's: `response.created`, `response.in_progress`, then per output
//! item `response.output_item.added`, its parts and deltas, `response.output_item.done`,
//! and at the end `response.completed` (or `response.incomplete`) with the whole
//! response and its usage. Every event has a `sequence_number`, counting from 0.
//! Reasoning text streams as a reasoning item's summary
//! (`response.reasoning_summary_text.delta`); its signed blocks arrive whole and go in
//! the item's `encrypted_content` when it is done. A new tool-call id starts a new
//! `function_call` item. A failure after the start is one `error` event and then
//! `response.failed`.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::response::{
    call_item, failure, message_item, output_text, reasoning_item, Echo, ItemIds, Shape, Status,
};
use crate::api::error::ApiError;
use crate::api::openai_read::{Chunk, ToolCallDelta};
use crate::api::relay::Encoder;
use crate::types::Usage;
use futures_util::future::BoxFuture;

/// The output item being streamed.
enum Open {
    Reasoning {
        id: String,
        text: String,
        blocks: Vec<Value>,
        /// Whether the summary part was announced (the first text delta does it).
        part: bool,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// What becomes of a finished stream's response: written to the store, before the
/// client gets `response.completed`.
pub type Finished = Box<dyn FnOnce(Value) -> BoxFuture<'static, ()> + Send>;

/// The Responses event encoder for one stream.
pub struct ResponseEvents {
    id: String,
    suffix: String,
    echo: Echo,
    created_at: i64,
    model: String,
    started: bool,
    sequence: u64,
    output: Vec<Value>,
    open: Option<Open>,
    reasoning_items: usize,
    message_items: usize,
    call_items: usize,
    status: Status,
    usage: Option<Usage>,
    finished: Option<Finished>,
    persist: Option<BoxFuture<'static, ()>>,
}

impl ResponseEvents {
    /// `id` is the response id (`resp_<suffix>`); `finished` gets the complete
    /// response when the stream completes.
    pub fn new(id: String, suffix: String, echo: Echo, finished: Option<Finished>) -> Self {
        let model = echo.model.clone();
        ResponseEvents {
            id,
            suffix,
            echo,
            created_at: crate::types::time::now_ms() / 1000,
            model,
            started: false,
            sequence: 0,
            output: Vec::new(),
            open: None,
            reasoning_items: 0,
            message_items: 0,
            call_items: 0,
            status: Status::Completed,
            usage: None,
            finished,
            persist: None,
        }
    }

    fn event(&mut self, out: &mut BytesMut, mut data: Value) {
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_owned();
        if let Some(o) = data.as_object_mut() {
            o.insert("sequence_number".into(), json!(self.sequence));
        }
        self.sequence += 1;
        out.put_slice(b"event: ");
        out.put_slice(kind.as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(data.to_string().as_bytes());
        out.put_slice(b"\n\n");
    }

    fn response(&self, status: Status, error: Value) -> Value {
        let now = crate::types::time::now_ms() / 1000;
        self.echo.response(&Shape {
            id: &self.id,
            created_at: self.created_at,
            completed_at: now,
            status,
            model: &self.model,
            output: &self.output,
            usage: if status == Status::InProgress {
                None
            } else {
                self.usage.as_ref()
            },
            error,
        })
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.response(Status::InProgress, Value::Null);
        self.event(
            out,
            json!({"type": "response.created", "response": response}),
        );
        self.event(
            out,
            json!({"type": "response.in_progress", "response": response}),
        );
    }

    fn ids(&self) -> ItemIds<'_> {
        ItemIds {
            suffix: &self.suffix,
        }
    }

    /// The index the open item has (or the next one gets) in `output`.
    fn index(&self) -> usize {
        self.output.len()
    }

    fn close(&mut self, out: &mut BytesMut) {
        let Some(open) = self.open.take() else {
            return;
        };
        let index = self.index();
        let item = match open {
            Open::Reasoning {
                id,
                text,
                blocks,
                part,
            } => {
                if part {
                    self.event(
                        out,
                        json!({"type": "response.reasoning_summary_text.done",
                        "item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                    );
                    self.event(
                        out,
                        json!({"type": "response.reasoning_summary_part.done",
                        "item_id": id, "output_index": index, "summary_index": 0,
                        "part": {"type": "summary_text", "text": text}}),
                    );
                }
                reasoning_item(&id, &text, &blocks, "completed")
            }
            Open::Message { id, text } => {
                let part = output_text(&text);
                self.event(
                    out,
                    json!({"type": "response.output_text.done", "item_id": id,
                    "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.event(
                    out,
                    json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": index, "content_index": 0, "part": part}),
                );
                message_item(&id, vec![part], self.status.item_status())
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                self.event(
                    out,
                    json!({"type": "response.function_call_arguments.done",
                    "item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                );
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.event(
            out,
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.output.push(item);
    }

    fn reasoning_text(&mut self, out: &mut BytesMut, delta: &str) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.open_reasoning(out);
        }
        let index = self.index();
        let Some(Open::Reasoning { id, text, part, .. }) = &mut self.open else {
            return;
        };
        let id = id.clone();
        text.push_str(delta);
        let announce = !std::mem::replace(part, true);
        if announce {
            self.event(
                out,
                json!({"type": "response.reasoning_summary_part.added",
                "item_id": id, "output_index": index, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}}),
            );
        }
        self.event(
            out,
            json!({"type": "response.reasoning_summary_text.delta",
            "item_id": id, "output_index": index, "summary_index": 0, "delta": delta}),
        );
    }

    fn open_reasoning(&mut self, out: &mut BytesMut) {
        self.close(out);
        let id = self.ids().reasoning(self.reasoning_items);
        self.reasoning_items += 1;
        let index = self.index();
        self.event(
            out,
            json!({"type": "response.output_item.added", "output_index": index,
            "item": reasoning_item(&id, "", &[], "in_progress")}),
        );
        self.open = Some(Open::Reasoning {
            id,
            text: String::new(),
            blocks: Vec::new(),
            part: false,
        });
    }

    /// A complete signed block: it belongs to the reasoning item open now, or to a
    /// new one (a redacted block comes without text).
    fn thinking_block(&mut self, out: &mut BytesMut, block: Value) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.open_reasoning(out);
        }
        if let Some(Open::Reasoning { blocks, .. }) = &mut self.open {
            blocks.push(block);
        }
    }

    fn text(&mut self, out: &mut BytesMut, delta: &str) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out);
            let id = self.ids().message(self.message_items);
            self.message_items += 1;
            let index = self.index();
            self.event(
                out,
                json!({"type": "response.output_item.added", "output_index": index,
                "item": message_item(&id, Vec::new(), "in_progress")}),
            );
            self.event(
                out,
                json!({"type": "response.content_part.added", "item_id": id,
                "output_index": index, "content_index": 0, "part": output_text("")}),
            );
            self.open = Some(Open::Message {
                id,
                text: String::new(),
            });
        }
        let index = self.index();
        let Some(Open::Message { id, text }) = &mut self.open else {
            return;
        };
        text.push_str(delta);
        let id = id.clone();
        self.event(
            out,
            json!({"type": "response.output_text.delta", "item_id": id,
            "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn tool(&mut self, out: &mut BytesMut, call: ToolCallDelta) {
        let (name, arguments) = match call.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let same = match (&self.open, &call.id) {
            (Some(Open::Call { call_id, .. }), Some(id)) => call_id == id,
            (Some(Open::Call { .. }), None) => true,
            (_, None) => {
                tracing::warn!("a tool-call delta without an id and no open tool call; dropped");
                return;
            }
            _ => false,
        };
        if !same {
            self.close(out);
            let id = self.ids().call(self.call_items);
            self.call_items += 1;
            let call_id = call.id.unwrap_or_default();
            let name = name.clone().unwrap_or_default();
            let index = self.index();
            self.event(
                out,
                json!({"type": "response.output_item.added", "output_index": index,
                "item": call_item(&id, &call_id, &name, "", "in_progress")}),
            );
            self.open = Some(Open::Call {
                id,
                call_id,
                name,
                arguments: String::new(),
            });
        }
        let index = self.index();
        let Some(Open::Call {
            id,
            arguments: all,
            name: open_name,
            ..
        }) = &mut self.open
        else {
            return;
        };
        if open_name.is_empty() {
            if let Some(n) = name {
                *open_name = n;
            }
        }
        if let Some(args) = arguments.filter(|a| !a.is_empty()) {
            all.push_str(&args);
            let id = id.clone();
            self.event(
                out,
                json!({"type": "response.function_call_arguments.delta",
                "item_id": id, "output_index": index, "delta": args}),
            );
        }
    }

    fn fail(&mut self, out: &mut BytesMut, code: &str, message: &str, rate_limited: bool) {
        self.start(out);
        self.close(out);
        self.event(
            out,
            json!({"type": "error", "code": code, "message": message, "param": null}),
        );
        let response = self.response(Status::Failed, failure(code, message, rate_limited));
        self.event(
            out,
            json!({"type": "response.failed", "response": response}),
        );
    }
}

impl Encoder for ResponseEvents {
    fn chunk(&mut self, data: &Bytes, _has_choices: bool, usage: Option<&Usage>) -> Option<Bytes> {
        if let Some(u) = usage {
            self.usage = Some(*u);
        }
        let chunk = Chunk::read(data)?;
        if let Some(model) = chunk.model.filter(|m| !self.started && !m.is_empty()) {
            self.model = model;
        }
        let mut out = BytesMut::new();
        // One answer per response: the first choice.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.start(&mut out);
            let delta = choice.delta.unwrap_or_default();
            if let Some(text) = delta.reasoning_content.filter(|t| !t.is_empty()) {
                self.reasoning_text(&mut out, &text);
            }
            for block in delta.thinking_blocks.into_iter().flatten() {
                self.thinking_block(&mut out, block);
            }
            if let Some(text) = delta.content.or(delta.refusal).filter(|t| !t.is_empty()) {
                self.text(&mut out, &text);
            }
            for call in delta.tool_calls.unwrap_or_default() {
                self.tool(&mut out, call);
            }
            if let Some(reason) = choice.finish_reason {
                self.status = Status::of_finish(Some(&reason));
            }
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    fn upstream_error(&mut self, data: &Bytes) -> Bytes {
        let error = serde_json::from_slice::<Value>(data).unwrap_or_default();
        let error = error.get("error").unwrap_or(&Value::Null);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("The upstream reported an error in the stream.");
        let code = error
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("upstream_stream_error");
        let rate_limited = error.get("type").and_then(Value::as_str) == Some("rate_limit_error")
            || code.contains("rate_limit");
        let mut out = BytesMut::new();
        self.fail(&mut out, code, message, rate_limited);
        out.freeze()
    }

    fn done(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        self.start(&mut out);
        self.close(&mut out);
        let status = self.status;
        let response = self.response(status, Value::Null);
        if let Some(finished) = self.finished.take() {
            self.persist = Some(finished(response.clone()));
        }
        let kind = if status == Status::Completed {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(&mut out, json!({"type": kind, "response": response}));
        out.freeze()
    }

    fn failed(&mut self, error: &ApiError) -> Bytes {
        let mut out = BytesMut::new();
        self.fail(&mut out, error.code, &error.message, error.status == 429);
        out.freeze()
    }

    fn persist(&mut self) -> Option<BoxFuture<'static, ()>> {
        self.persist.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::responses::wire::ResponsesRequest;

    fn encoder() -> ResponseEvents {
        let req: ResponsesRequest =
            serde_json::from_value(json!({"model": "m", "input": "hi"})).expect("request");
        ResponseEvents::new("resp_x".into(), "x".into(), Echo::of(&req, false), None)
    }

    fn events(bytes: &[Bytes]) -> Vec<Value> {
        bytes
            .iter()
            .flat_map(|b| {
                std::str::from_utf8(b)
                    .expect("utf-8")
                    .split_terminator("\n\n")
                    .map(|e| {
                        let data = e.split_once("\ndata: ").expect("data line").1;
                        serde_json::from_str::<Value>(data).expect("json")
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Bytes {
        Bytes::from(
            json!({"model": "up", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                .to_string(),
        )
    }

    #[test]
    fn items_follow_each_other_with_consistent_indexes() {
        let mut e = encoder();
        let mut out = Vec::new();
        for (delta, finish) in [
            (json!({"reasoning_content": "think"}), None),
            (
                json!({"thinking_blocks": [{"type": "thinking", "thinking": "think", "signature": "s"}]}),
                None,
            ),
            (
                json!({"thinking_blocks": [{"type": "redacted_thinking", "data": "d"}]}),
                None,
            ),
            (json!({"content": "Hi"}), None),
            (
                json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}),
                None,
            ),
            (
                json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
                None,
            ),
            (
                json!({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}),
                Some("tool_calls"),
            ),
        ] {
            out.extend(e.chunk(&chunk(delta, finish), true, None));
        }
        // A delta for no open call is dropped; an unreadable chunk too.
        out.extend(e.chunk(&Bytes::from_static(b"not json"), true, None));
        out.push(e.done());
        let all = events(&out);
        let seqs: Vec<u64> = all
            .iter()
            .filter_map(|v| v["sequence_number"].as_u64())
            .collect();
        assert_eq!(seqs, (0..all.len() as u64).collect::<Vec<_>>());
        let last = all.last().expect("events");
        assert_eq!(last["type"], "response.completed");
        let output = last["response"]["output"].as_array().expect("output");
        let kinds: Vec<&str> = output.iter().filter_map(|i| i["type"].as_str()).collect();
        assert_eq!(
            kinds,
            ["reasoning", "message", "function_call", "function_call"]
        );
        assert_eq!(output[0]["summary"][0]["text"], "think");
        let blocks = crate::api::responses::request::decode_blocks(
            output[0]["encrypted_content"].as_str().expect("blocks"),
        )
        .expect("ours")
        .expect("blocks");
        assert_eq!(blocks.len(), 2);
        assert_eq!(output[2]["arguments"], "{\"a\":1}");
        assert_eq!(output[3]["call_id"], "c2");
        assert_eq!(last["response"]["model"], "up");
        // Every item event names the index its item has in the final output.
        for ev in &all {
            if let (Some(i), Some(id)) = (ev["output_index"].as_u64(), ev["item_id"].as_str()) {
                assert_eq!(output[i as usize]["id"], id, "{ev}");
            }
        }
    }

    #[test]
    fn a_failure_before_anything_still_starts_the_response() {
        let mut e = encoder();
        let out = e.upstream_error(&Bytes::from_static(
            br#"{"error":{"type":"rate_limit_error","code":"rate_limited","message":"slow down"}}"#,
        ));
        let all = events(&[out]);
        let kinds: Vec<&str> = all.iter().filter_map(|v| v["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "error",
                "response.failed"
            ]
        );
        assert_eq!(all[3]["response"]["error"]["code"], "rate_limit_exceeded");
        assert_eq!(all[2]["message"], "slow down");
    }
}
