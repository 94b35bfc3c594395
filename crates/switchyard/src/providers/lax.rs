//! What OpenAI-compatible servers (vLLM, llama.cpp, Ollama, TGI, in-house servers)
//! leave out of OpenAI's protocol, and how the OpenAI adapter makes up for it, so that
//! strict clients see OpenAI's schema whatever answered:
//!
//! - answers and stream chunks get the fields the schema requires when the upstream
//!   left them out (`id`, `object`, `created`, `model`; a choice's `index`,
//!   `finish_reason`, `logprobs`, `delta`; a message's `role`, `content`, `refusal`),
//!   never replacing what the upstream sent; a body that lacks nothing is forwarded
//!   byte for byte;
//! - a stream reader ([`ChunkReader`]) keeps what the gateway needs when the upstream
//!   ignores `stream_options.include_usage`: the characters of output relayed (for
//!   the estimate) and whether every choice finished (a stream without `[DONE]` after
//!   its finish reasons is complete), and writes the usage chunk in the stream's
//!   identity;
//! - error bodies in other shapes (FastAPI's `{"detail": …}`, a bare `{"error": "…"}`,
//!   plain text, a proxy's HTML page) give a short message with host names removed.
//!
//! Each chunk is read once, with lenient readers that neither allocate for what they
//! skip nor fail on a field of an unexpected JSON type (the bytes are the upstream's
//! and are passed on untouched when nothing is missing).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};

use super::{StreamProgress, Translated};
use crate::types::{ProviderError, Usage};

/// One scalar field as the upstream sent it.
#[derive(Debug, Default)]
enum Field<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    /// Any other JSON value (skipped without being kept).
    Other,
}

impl Field<'_> {
    /// Absent or null: what the schema's required fields may not be.
    fn missing(&self) -> bool {
        matches!(self, Field::Absent | Field::Null)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }

    fn chars(&self) -> u64 {
        self.as_str().map_or(0, |s| s.chars().count() as u64)
    }
}

struct FieldVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
    type Value = Field<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'a>, E> {
        Ok(Field::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'a>, E> {
        Ok(i64::try_from(v).map_or(Field::Other, Field::Int))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Field<'a>, E> {
        Ok(Field::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Field<'a>, E> {
        Ok(Field::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Field<'a>, D::Error> {
        d.deserialize_any(FieldVisitor(std::marker::PhantomData))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor(std::marker::PhantomData))
    }
}

/// An object read as `T`, or `Absent`/`NotObject` (null and other JSON types are kept
/// apart from an object, and skipped).
#[derive(Debug, Default)]
enum Obj<T> {
    #[default]
    Absent,
    /// Null, or a value of another JSON type.
    NotObject,
    Is(T),
}

impl<T> Obj<T> {
    fn get(&self) -> Option<&T> {
        match self {
            Obj::Is(t) => Some(t),
            _ => None,
        }
    }
}

struct ObjVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
    type Value = Obj<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj::Is)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Obj<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Obj::NotObject)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Obj<T>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_none<E: de::Error>(self) -> Result<Obj<T>, E> {
        Ok(Obj::NotObject)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Obj<T>, E> {
        Ok(Obj::NotObject)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Obj<T>, E> {
        Ok(Obj::NotObject)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Obj<T>, E> {
        Ok(Obj::NotObject)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Obj<T>, E> {
        Ok(Obj::NotObject)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Obj<T>, E> {
        Ok(Obj::NotObject)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Obj<T>, E> {
        Ok(Obj::NotObject)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjVisitor(std::marker::PhantomData))
    }
}

/// An array whose items are read leniently (as `Obj`s, usually); `None` when it is
/// not an array.
#[derive(Debug)]
struct Seq<I>(Option<Vec<I>>);

impl<I> Default for Seq<I> {
    fn default() -> Self {
        Seq(None)
    }
}

impl<I> Seq<I> {
    fn items(&self) -> impl Iterator<Item = &I> {
        self.0.iter().flatten()
    }
}

struct SeqVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
    type Value = Seq<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            items.push(item);
        }
        Ok(Seq(Some(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seq<T>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Seq(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Seq<T>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_none<E: de::Error>(self) -> Result<Seq<T>, E> {
        Ok(Seq(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Seq<T>, E> {
        Ok(Seq(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Seq<T>, E> {
        Ok(Seq(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Seq<T>, E> {
        Ok(Seq(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Seq<T>, E> {
        Ok(Seq(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Seq<T>, E> {
        Ok(Seq(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Seq<T>, E> {
        Ok(Seq(None))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SeqVisitor(std::marker::PhantomData))
    }
}

/// A value and where it starts in the document it was read from (the address of its
/// first byte; 0 when absent), so that the document's own bytes can be patched there
/// instead of the whole document being parsed into a tree and written again. Only for
/// documents read by `serde_json` from a borrowed buffer.
#[derive(Debug, Default)]
struct Placed<T> {
    at: usize,
    value: T,
}

impl<T> std::ops::Deref for Placed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Placed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de serde_json::value::RawValue>::deserialize(d)?;
        let value = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
        Ok(Placed {
            at: raw.get().as_ptr() as usize,
            value,
        })
    }
}

/// Generated output in a message or a delta: text, refusal, reasoning (vLLM's
/// `reasoning_content`, others' `reasoning`) and tool calls.
#[derive(Debug, Default, serde::Deserialize)]
struct Output<'a> {
    #[serde(default, borrow)]
    role: Field<'a>,
    #[serde(default, borrow)]
    content: Field<'a>,
    #[serde(default, borrow)]
    refusal: Field<'a>,
    #[serde(default, borrow)]
    reasoning_content: Field<'a>,
    #[serde(default, borrow)]
    reasoning: Field<'a>,
    #[serde(default, borrow)]
    tool_calls: Seq<Obj<ToolCall<'a>>>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ToolCall<'a> {
    /// Required in stream deltas (a call's position), absent in complete answers.
    #[serde(default, borrow)]
    index: Field<'a>,
    #[serde(default, borrow)]
    id: Field<'a>,
    #[serde(default, borrow, rename = "type")]
    kind: Field<'a>,
    #[serde(default, borrow)]
    function: Obj<Function<'a>>,
}

impl ToolCall<'_> {
    /// Whether this delta starts a call (it names the call or its function) rather
    /// than continue one's arguments.
    fn starts_call(&self) -> bool {
        !self.id.missing() || self.function.get().is_some_and(|f| !f.name.missing())
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct Function<'a> {
    #[serde(default, borrow)]
    name: Field<'a>,
    #[serde(default, borrow)]
    arguments: Field<'a>,
}

impl Output<'_> {
    /// Characters of generated output, the basis of an estimate.
    fn chars(&self) -> u64 {
        let calls: u64 = self
            .tool_calls
            .items()
            .filter_map(|c| c.get()?.function.get())
            .map(|f| f.name.chars().saturating_add(f.arguments.chars()))
            .sum();
        [
            &self.content,
            &self.refusal,
            &self.reasoning_content,
            &self.reasoning,
        ]
        .iter()
        .map(|f| f.chars())
        .sum::<u64>()
        .saturating_add(calls)
    }
}

/// The characters of generated output in a complete `chat.completion` body (every
/// choice's text, refusal, reasoning and tool calls); 0 for a body that is not one.
pub fn answer_output_chars(body: &[u8]) -> u64 {
    serde_json::from_slice::<Answer>(body).map_or(0, |a| {
        a.choices
            .items()
            .filter_map(|c| c.get()?.message.get())
            .map(Output::chars)
            .sum()
    })
}

/// The top level of an answer or a chunk.
#[derive(Debug, serde::Deserialize)]
struct Answer<'a> {
    #[serde(default, borrow)]
    id: Field<'a>,
    #[serde(default, borrow)]
    object: Field<'a>,
    #[serde(default, borrow)]
    created: Field<'a>,
    #[serde(default, borrow)]
    model: Field<'a>,
    #[serde(default, borrow)]
    choices: Seq<Placed<Obj<AnswerChoice<'a>>>>,
    #[serde(default)]
    usage: Option<super::openai::WireUsage>,
}

#[derive(Debug, serde::Deserialize)]
struct AnswerChoice<'a> {
    #[serde(default, borrow)]
    index: Field<'a>,
    #[serde(default, borrow)]
    finish_reason: Field<'a>,
    #[serde(default, borrow)]
    logprobs: Field<'a>,
    #[serde(default, borrow)]
    message: Placed<Obj<Output<'a>>>,
}

/// A new completion id, in OpenAI's form.
pub fn new_id() -> String {
    format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32)
}

/// A new tool-call id, in OpenAI's form (96 random bits: unique within an answer).
pub fn new_call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// Whether a `usage` lacks a count the gateway bills (`prompt_tokens` or
/// `completion_tokens`): the missing ones are estimated.
fn partial(u: &super::openai::WireUsage) -> bool {
    u.prompt_tokens.is_none() || u.completion_tokens.is_none()
}

/// `usage.total_tokens`, when the usage has both counts but not their sum.
fn fill_total(top: &mut Map<String, Value>) {
    let Some(Value::Object(u)) = top.get_mut("usage") else {
        return;
    };
    let count = |k: &str| u.get(k).and_then(Value::as_u64);
    if let (Some(p), Some(c)) = (count("prompt_tokens"), count("completion_tokens")) {
        fill(u, "total_tokens", || json!(p.saturating_add(c)));
    }
}

/// Completes the `usage` of an answer or chunk (`top`) that lacks counts: the ones
/// the upstream sent stay, the missing ones come from `estimate`, `total_tokens` is
/// their sum when absent; a missing `usage` becomes `estimate`. Returns the usage to
/// bill, marked estimated when a count was made up.
pub fn merge_usage(top: &mut Map<String, Value>, estimate: &Usage) -> Usage {
    let Some(Value::Object(u)) = top.get_mut("usage") else {
        top.insert("usage".into(), usage_json(estimate));
        return Usage {
            estimated: true,
            ..*estimate
        };
    };
    let count = |k: &str| u.get(k).and_then(Value::as_u64);
    let (sent_prompt, sent_completion) = (count("prompt_tokens"), count("completion_tokens"));
    let prompt = sent_prompt.unwrap_or(estimate.prompt_tokens);
    let completion = sent_completion.unwrap_or(estimate.completion_tokens);
    fill(u, "prompt_tokens", || json!(prompt));
    fill(u, "completion_tokens", || json!(completion));
    fill(u, "total_tokens", || {
        json!(prompt.saturating_add(completion))
    });
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        estimated: sent_prompt.is_none() || sent_completion.is_none(),
        ..Usage::default()
    }
}

/// A stream chunk whose usage lacked counts, completed by [`merge_usage`]; `None`
/// when it is not a JSON object.
pub fn chunk_with_usage(data: &[u8], estimate: &Usage) -> Option<(Bytes, Usage)> {
    let mut doc: Value = serde_json::from_slice(data).ok()?;
    let usage = merge_usage(doc.as_object_mut()?, estimate);
    let data = serde_json::to_vec(&doc).ok()?;
    Some((Bytes::from(data), usage))
}

/// A complete `chat.completion` from an OpenAI-style upstream, with what the schema
/// requires and the upstream left out filled in (`model` is the deployment's upstream
/// model), and its usage. The body is forwarded unchanged when nothing is missing.
pub fn complete_answer(
    body: Bytes,
    upstream_model: &str,
) -> Result<(Bytes, Option<Usage>), ProviderError> {
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|e| ProviderError::Protocol(format!("response is not JSON: {e}")))?;
    // A usage without both counts is not billed as sent: the caller estimates what
    // is missing (see `merge_usage`).
    let lacks_total = answer
        .usage
        .as_ref()
        .is_some_and(|u| !partial(u) && u.total_tokens.is_none());
    let usage = answer.usage.filter(|u| !partial(u)).map(Usage::from);
    let call_lacks =
        |c: &Obj<ToolCall>| c.get().is_some_and(|c| c.id.missing() || c.kind.missing());
    // What only a null would fill (`logprobs`, `refusal`) is inserted into the
    // upstream's bytes where its object opens; anything else missing needs the tree.
    let mut nulls: Vec<(usize, &'static [u8])> = Vec::new();
    let mut choice_needs_tree = |c: &Placed<Obj<AnswerChoice>>| {
        let Some(choice) = c.get() else {
            return false;
        };
        let Obj::Is(m) = &*choice.message else {
            return true;
        };
        if choice.index.missing()
            || choice.finish_reason.missing()
            || m.role.missing()
            || matches!(m.content, Field::Absent)
            || m.tool_calls.items().any(call_lacks)
        {
            return true;
        }
        if matches!(choice.logprobs, Field::Absent) {
            nulls.push((c.at, b"\"logprobs\":null,"));
        }
        if matches!(m.refusal, Field::Absent) {
            nulls.push((choice.message.at, b"\"refusal\":null,"));
        }
        false
    };
    let needs_tree = lacks_total
        || answer.id.missing()
        || answer.object.missing()
        || answer.created.missing()
        || answer.model.missing()
        || answer.choices.items().any(&mut choice_needs_tree);
    if !needs_tree {
        if nulls.is_empty() {
            return Ok((body, usage));
        }
        if let Some(patched) = insert_after_braces(&body, &mut nulls) {
            return Ok((patched, usage));
        }
    }
    let mut doc: Value = serde_json::from_slice(&body)
        .map_err(|e| ProviderError::Protocol(format!("response is not JSON: {e}")))?;
    let Some(top) = doc.as_object_mut() else {
        return Ok((body, usage));
    };
    fill(top, "id", || json!(new_id()));
    fill(top, "object", || json!("chat.completion"));
    fill(top, "created", || json!(super::canonical::now_secs()));
    fill(top, "model", || json!(upstream_model));
    fill_total(top);
    let choices = top.get_mut("choices").and_then(Value::as_array_mut);
    for (i, choice) in choices.into_iter().flatten().enumerate() {
        let Some(choice) = choice.as_object_mut() else {
            continue;
        };
        fill(choice, "index", || json!(i));
        fill(choice, "message", || json!({}));
        let calls = choice
            .get_mut("message")
            .and_then(|m| m.get_mut("tool_calls"))
            .and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten().filter_map(Value::as_object_mut) {
            fill(call, "id", || json!(new_call_id()));
            fill(call, "type", || json!("function"));
        }
        let has_calls = choice
            .get("message")
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        fill(choice, "finish_reason", || {
            json!(if has_calls { "tool_calls" } else { "stop" })
        });
        choice.entry("logprobs").or_insert(Value::Null);
        if let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut) {
            fill(message, "role", || json!("assistant"));
            message.entry("content").or_insert(Value::Null);
            message.entry("refusal").or_insert(Value::Null);
        }
    }
    let body = serde_json::to_vec(&doc).map_err(|e| ProviderError::Protocol(e.to_string()))?;
    Ok((Bytes::from(body), usage))
}

/// `body` with each `(address, text)`'s text inserted just after the `{` at that
/// address (see [`Placed`]); `None` when an address is not an opening brace of `body`
/// (then the caller takes the slow, safe way).
fn insert_after_braces(body: &Bytes, inserts: &mut [(usize, &[u8])]) -> Option<Bytes> {
    inserts.sort_unstable_by_key(|(at, _)| *at);
    let base = body.as_ptr() as usize;
    let extra: usize = inserts.iter().map(|(_, text)| text.len()).sum();
    let mut out = Vec::with_capacity(body.len().checked_add(extra)?);
    let mut copied = 0;
    for (at, text) in inserts.iter() {
        let brace = at.checked_sub(base)?;
        if brace < copied || body.get(brace) != Some(&b'{') {
            return None;
        }
        out.extend_from_slice(body.get(copied..=brace)?);
        out.extend_from_slice(text);
        copied = brace + 1;
    }
    out.extend_from_slice(body.get(copied..)?);
    Some(Bytes::from(out))
}

/// Sets `key` when it is absent or null; a value the upstream sent stays.
fn fill(o: &mut Map<String, Value>, key: &str, value: impl FnOnce() -> Value) {
    if o.get(key).is_none_or(Value::is_null) {
        o.insert(key.to_owned(), value());
    }
}

/// The top level of a stream chunk.
#[derive(Debug, serde::Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Field<'a>,
    #[serde(default, borrow)]
    object: Field<'a>,
    #[serde(default, borrow)]
    created: Field<'a>,
    #[serde(default, borrow)]
    model: Field<'a>,
    #[serde(default, borrow)]
    choices: Seq<Obj<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Option<super::openai::WireUsage>,
    #[serde(default, borrow)]
    error: Field<'a>,
}

#[derive(Debug, serde::Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default, borrow)]
    index: Field<'a>,
    #[serde(default, borrow)]
    finish_reason: Field<'a>,
    #[serde(default, borrow)]
    delta: Obj<Output<'a>>,
}

/// What every chunk of one stream shares, taken from its first chunk (or made up, when
/// the upstream sent none).
#[derive(Debug, Clone)]
struct Identity {
    id: String,
    model: String,
    created: i64,
}

/// Reads one OpenAI-style stream's `data:` payloads, keeping what the relay needs
/// ([`StreamProgress`]) and filling what the schema requires in each chunk.
#[derive(Debug)]
pub struct ChunkReader {
    upstream_model: String,
    identity: Option<Identity>,
    progress: StreamProgress,
    /// Every choice that sent something, by index, and whether it finished.
    choices: BTreeMap<i64, bool>,
    /// The tool calls (their indexes) each choice started.
    calls: BTreeMap<i64, BTreeSet<i64>>,
}

/// What a tool-call delta lacks, to fill in: its `index`, and on the first delta of
/// a call its `id` and `type`.
#[derive(Debug)]
struct CallFill {
    /// Positions of the choice in `choices` and of the call in `delta.tool_calls`.
    choice: usize,
    call: usize,
    index: Option<i64>,
    id: Option<String>,
    kind: bool,
}

impl ChunkReader {
    /// `upstream_model` names the model in chunks that name none.
    pub fn new(upstream_model: &str) -> Self {
        ChunkReader {
            upstream_model: upstream_model.to_owned(),
            identity: None,
            progress: StreamProgress::default(),
            choices: BTreeMap::new(),
            calls: BTreeMap::new(),
        }
    }

    /// Notes that choice `index` sent something, and whether it finished.
    fn track_choice(&mut self, index: i64, finishes: bool) {
        let p = &mut self.progress;
        let done = self.choices.entry(index).or_insert_with(|| {
            p.open_choices = p.open_choices.saturating_add(1);
            false
        });
        if finishes && !*done {
            *done = true;
            p.open_choices = p.open_choices.saturating_sub(1);
            p.finished_choices = p.finished_choices.saturating_add(1);
        }
    }

    pub fn progress(&self) -> &StreamProgress {
        &self.progress
    }

    /// One `data:` payload as a stream item.
    pub fn read(&mut self, data: Bytes) -> Result<Translated, ProviderError> {
        if data.as_ref() == b"[DONE]" {
            return Ok(Translated::Done);
        }
        let c: Chunk = serde_json::from_slice(&data)
            .map_err(|e| ProviderError::Protocol(format!("stream chunk is not JSON: {e}")))?;
        match &c.error {
            Field::Absent | Field::Null => {}
            // OpenAI's shape: passed on as it is.
            Field::Other
                if serde_json::from_slice::<ErrorDoc>(&data).is_ok_and(|d| d.is_openai()) =>
            {
                return Ok(Translated::Error(data));
            }
            // `{"error": "text"}` and the like: OpenAI's shape, the text sanitized.
            other => {
                let message = other
                    .as_str()
                    .and_then(sanitized_excerpt)
                    .unwrap_or_else(|| "The upstream reported an error in the stream.".into());
                return Ok(Translated::Error(super::canonical::error_event(
                    "server_error",
                    "upstream_error",
                    &message,
                )));
            }
        }
        if self.identity.is_none() {
            self.identity = Some(Identity {
                id: c.id.as_str().map_or_else(new_id, str::to_owned),
                model: c
                    .model
                    .as_str()
                    .map_or_else(|| self.upstream_model.clone(), str::to_owned),
                created: match &c.created {
                    Field::Int(t) => *t,
                    _ => i64::try_from(super::canonical::now_secs()).unwrap_or(0),
                },
            });
        }
        let mut lacks =
            c.id.missing() || c.object.missing() || c.created.missing() || c.model.missing();
        let mut has_choices = false;
        let mut call_fills = Vec::new();
        for (position, choice) in c.choices.items().enumerate() {
            has_choices = true;
            let Some(choice) = choice.get() else { continue };
            lacks |= choice.index.missing()
                || matches!(choice.finish_reason, Field::Absent)
                || !matches!(choice.delta, Obj::Is(_));
            let index = match choice.index {
                Field::Int(i) => i,
                _ => i64::try_from(position).unwrap_or(i64::MAX),
            };
            self.track_choice(index, !choice.finish_reason.missing());
            let Some(delta) = choice.delta.get() else {
                continue;
            };
            self.progress.output_chars = self.progress.output_chars.saturating_add(delta.chars());
            let calls = self.calls.entry(index).or_default();
            for (call_position, call) in delta.tool_calls.items().enumerate() {
                let Some(call) = call.get() else { continue };
                let sent = match call.index {
                    Field::Int(i) => Some(i),
                    _ => None,
                };
                // Without an index, a delta that names a call starts the next one
                // (servers that send whole calls send one per array position), and
                // one that does not continues the last.
                let call_index = sent.unwrap_or_else(|| match calls.last() {
                    Some(&last) if call.starts_call() => last.saturating_add(1),
                    Some(&last) => last,
                    None => 0,
                });
                let first = calls.insert(call_index);
                let fill = CallFill {
                    choice: position,
                    call: call_position,
                    index: call.index.missing().then_some(call_index),
                    id: (first && call.id.missing()).then(new_call_id),
                    kind: first && call.kind.missing(),
                };
                if fill.index.is_some() || fill.id.is_some() || fill.kind {
                    lacks = true;
                    call_fills.push(fill);
                }
            }
        }
        self.progress.partial_usage = c.usage.as_ref().is_some_and(partial);
        lacks |= c
            .usage
            .as_ref()
            .is_some_and(|u| !partial(u) && u.total_tokens.is_none());
        let usage = c.usage.map(Usage::from);
        let data = if lacks {
            self.completed(&data, call_fills)?
        } else {
            data
        };
        Ok(Translated::Chunk {
            has_choices,
            usage,
            data,
        })
    }

    /// `data` with what the schema requires of a chunk filled in from the stream's
    /// identity (only the missing fields: the upstream's own stay).
    fn completed(&self, data: &[u8], call_fills: Vec<CallFill>) -> Result<Bytes, ProviderError> {
        let mut doc: Value = serde_json::from_slice(data)
            .map_err(|e| ProviderError::Protocol(format!("stream chunk is not JSON: {e}")))?;
        let Some(top) = doc.as_object_mut() else {
            return Ok(Bytes::copy_from_slice(data));
        };
        let identity = self.identity.clone().unwrap_or_else(|| Identity {
            id: new_id(),
            model: self.upstream_model.clone(),
            created: 0,
        });
        fill(top, "id", || json!(identity.id));
        fill(top, "object", || json!("chat.completion.chunk"));
        fill(top, "created", || json!(identity.created));
        fill(top, "model", || json!(identity.model));
        fill_total(top);
        let choices = top.get_mut("choices").and_then(Value::as_array_mut);
        let mut choices: Vec<&mut Value> = choices.into_iter().flatten().collect();
        for f in call_fills {
            let call = choices
                .get_mut(f.choice)
                .and_then(|c| c.get_mut("delta"))
                .and_then(|d| d.get_mut("tool_calls"))
                .and_then(Value::as_array_mut)
                .and_then(|calls| calls.get_mut(f.call))
                .and_then(Value::as_object_mut);
            let Some(call) = call else { continue };
            if let Some(index) = f.index {
                fill(call, "index", || json!(index));
            }
            if let Some(id) = f.id {
                fill(call, "id", || json!(id));
            }
            if f.kind {
                fill(call, "type", || json!("function"));
            }
        }
        for (i, choice) in choices.into_iter().enumerate() {
            let Some(choice) = choice.as_object_mut() else {
                continue;
            };
            fill(choice, "index", || json!(i));
            fill(choice, "delta", || json!({}));
            choice.entry("finish_reason").or_insert(Value::Null);
        }
        serde_json::to_vec(&doc)
            .map(Bytes::from)
            .map_err(|e| ProviderError::Protocol(e.to_string()))
    }

    /// The usage chunk (`choices: []`) for `usage`, in this stream's identity: the one
    /// the client asked for when the upstream did not send it.
    pub fn usage_chunk(&self, usage: &Usage) -> Bytes {
        let (id, model, created) = match &self.identity {
            Some(i) => (i.id.clone(), i.model.clone(), i.created),
            None => (
                new_id(),
                self.upstream_model.clone(),
                i64::try_from(super::canonical::now_secs()).unwrap_or(0),
            ),
        };
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage_json(usage),
        });
        Bytes::from(chunk.to_string())
    }
}

/// OpenAI's `usage` object with the counts the schema requires (what an estimate
/// knows; no details it would have to make up).
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}

/// An error document: OpenAI's `{"error": {"message", …}}`, or another server's.
#[derive(Debug, serde::Deserialize)]
struct ErrorDoc {
    #[serde(default)]
    error: Option<Value>,
    /// FastAPI: a string, or a list of validation errors with `loc` and `msg`.
    #[serde(default)]
    detail: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

impl ErrorDoc {
    fn is_openai(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|e| e.get("message").is_some_and(Value::is_string))
    }
}

/// What an error answer says, in the parts OpenAI's error has.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorParts {
    pub message: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Reads an error body in any of the shapes OpenAI-compatible servers and the proxies
/// in front of them answer with. OpenAI's own `{"error": {…}}` is taken as it is; from
/// other shapes comes a short message with host names and addresses removed, and from
/// an HTML page nothing (the status says enough).
pub fn error_parts(content_type: Option<&str>, body: &[u8]) -> ErrorParts {
    let html = content_type.is_some_and(|t| t.to_ascii_lowercase().contains("html"));
    if html {
        return ErrorParts::default();
    }
    let Ok(doc) = serde_json::from_slice::<ErrorDoc>(body) else {
        // Plain text (or a body that is not an object).
        let text = String::from_utf8_lossy(body.get(..4096).unwrap_or(body));
        return ErrorParts {
            message: sanitized_excerpt(&text),
            ..ErrorParts::default()
        };
    };
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    if let Some(Value::Object(e)) = &doc.error {
        let code = match e.get("code") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        return ErrorParts {
            message: str_of(e.get("message")),
            param: str_of(e.get("param")),
            code,
        };
    }
    let message = match (&doc.error, &doc.detail, &doc.message) {
        (Some(Value::String(s)), _, _) | (_, Some(Value::String(s)), _) => sanitized_excerpt(s),
        (_, Some(Value::Array(items)), _) => validation_message(items),
        (_, _, Some(Value::String(s))) => sanitized_excerpt(s),
        _ => None,
    };
    ErrorParts {
        message,
        ..ErrorParts::default()
    }
}

/// FastAPI's validation errors (`[{"loc": ["body", "messages"], "msg": "Field
/// required"}]`) as one line: `messages: Field required; …` (at most three).
fn validation_message(items: &[Value]) -> Option<String> {
    let parts: Vec<String> = items
        .iter()
        .take(3)
        .filter_map(|item| {
            let msg = sanitized_excerpt(item.get("msg")?.as_str()?)?;
            let loc: Vec<String> = item
                .get("loc")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| p.as_str() != Some("body"))
                .map(|p| match p {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            Some(if loc.is_empty() {
                msg
            } else {
                format!("{}: {msg}", loc.join("."))
            })
        })
        .collect();
    // The locations are the request's own field names; the messages were sanitized.
    let joined = parts.join("; ");
    (!joined.is_empty()).then(|| truncated(&joined))
}

fn truncated(text: &str) -> String {
    let mut excerpt: String = text.chars().take(MAX_EXCERPT_CHARS).collect();
    if text.chars().count() > MAX_EXCERPT_CHARS {
        excerpt.push('…');
    }
    excerpt
}

/// The longest excerpt of an upstream's text passed on to a client.
pub const MAX_EXCERPT_CHARS: usize = 200;

/// A short, single-line excerpt of an upstream's text, safe to show a client: markup
/// means an error page (nothing to show); URLs, host names, IP addresses and
/// `host:port` pairs become `[host]`; control characters go; at most
/// [`MAX_EXCERPT_CHARS`] characters. `None` when nothing useful is left.
pub fn sanitized_excerpt(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let lower = line.to_ascii_lowercase();
    if lower.starts_with('<') || lower.contains("<html") || lower.contains("<!doctype") {
        return None;
    }
    let mut out = String::new();
    for word in line.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        // Punctuation around a word stays (quotes, a colon ending a clause).
        let core = word.trim_matches(|c: char| "\"'`()[]{}<>,;!?".contains(c));
        let core = core.strip_suffix(['.', ':']).unwrap_or(core);
        if !core.is_empty() && is_host_like(core) {
            out.push_str(&word.replacen(core, "[host]", 1));
        } else {
            out.extend(word.chars().filter(|c| !c.is_control()));
        }
    }
    (!out.is_empty()).then(|| truncated(&out))
}

/// Whether a word names a place on a network: a URL, an IPv4 address, `localhost`,
/// a `name:port`, or a dotted host name (labels of letters, digits and hyphens, the
/// last one letters only, as `vllm-3.gpu.internal`).
fn is_host_like(word: &str) -> bool {
    if word.contains("://") {
        return true;
    }
    let (host, port) = match word.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, true),
        _ => (word, false),
    };
    let host = host.trim_start_matches('@');
    let numeric = |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit());
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok =
        |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let ipv4 = labels.len() == 4
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()));
    if ipv4 {
        return true;
    }
    if port && !host.is_empty() && labels.iter().all(label_ok) && !labels.iter().all(numeric) {
        return true;
    }
    labels.len() >= 2
        && labels.iter().all(label_ok)
        && !labels.iter().any(numeric)
        && labels
            .last()
            .is_some_and(|l| l.len() >= 2 && l.bytes().all(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("JSON")
    }

    #[test]
    fn a_complete_answer_is_forwarded_byte_for_byte() {
        let body = Bytes::from_static(
            br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
        );
        let (out, usage) = complete_answer(body.clone(), "up").expect("ok");
        assert_eq!(out, body);
        assert_eq!(usage.map(|u| u.completion_tokens), Some(1));
    }

    #[test]
    fn missing_nulls_are_inserted_into_the_upstreams_own_bytes() {
        // Pretty-printed, two choices, braces and escapes inside strings, non-ASCII
        // text: only `logprobs` (both choices) and `refusal` (the second) are missing.
        let body = Bytes::from(
            concat!(
                "{\n  \"id\": \"x\", \"object\": \"chat.completion\", \"created\": 1, \"model\": \"m\",\n",
                "  \"choices\": [\n",
                "    { \"index\": 0, \"finish_reason\": \"stop\",\n",
                "      \"message\": {\"role\": \"assistant\", \"content\": \"{\\\"a\\\": \\\"}\\\"} \u{e9}\u{1f600}\", \"refusal\": null} },\n",
                "    {\"index\":1,\"finish_reason\":\"length\",\"message\":  {\"role\":\"assistant\",\"content\":\"{\"}}\n",
                "  ],\n",
                "  \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 2, \"total_tokens\": 5}\n}"
            )
            .as_bytes()
            .to_vec(),
        );
        let (out, usage) = complete_answer(body.clone(), "up").expect("ok");
        assert_eq!(usage.map(|u| u.completion_tokens), Some(2));
        // The upstream's bytes, in its order and spacing, with three insertions.
        let expected = std::str::from_utf8(&body)
            .expect("utf-8")
            .replacen("{ \"index\": 0", "{\"logprobs\":null, \"index\": 0", 1)
            .replacen("{\"index\":1", "{\"logprobs\":null,\"index\":1", 1)
            .replacen(
                "{\"role\":\"assistant\",\"content\":\"{\"}",
                "{\"refusal\":null,\"role\":\"assistant\",\"content\":\"{\"}",
                1,
            );
        assert_eq!(std::str::from_utf8(&out).expect("utf-8"), expected);
        let a = v(&out);
        assert_eq!(
            a["choices"][0]["message"]["content"],
            "{\"a\": \"}\"} \u{e9}\u{1f600}"
        );
        for c in 0..2 {
            assert_eq!(a["choices"][c].get("logprobs"), Some(&Value::Null));
            assert_eq!(
                a["choices"][c]["message"].get("refusal"),
                Some(&Value::Null)
            );
        }
    }

    #[test]
    fn a_place_that_is_no_opening_brace_is_not_patched() {
        let body = Bytes::from_static(br#"{"a":1}"#);
        let base = body.as_ptr() as usize;
        let text: &[u8] = br#""x":null,"#;
        assert_eq!(
            insert_after_braces(&body, &mut [(base, text)]).as_deref(),
            Some(&br#"{"x":null,"a":1}"#[..])
        );
        // Inside the object, before the document, past its end.
        assert_eq!(insert_after_braces(&body, &mut [(base + 1, text)]), None);
        assert_eq!(
            insert_after_braces(&body, &mut [(base.wrapping_sub(1), text)]),
            None
        );
        assert_eq!(insert_after_braces(&body, &mut [(base + 100, text)]), None);
        // The same place twice.
        assert_eq!(
            insert_after_braces(&body, &mut [(base, text), (base, text)]),
            None
        );
    }

    #[test]
    fn a_bare_answer_gets_what_the_schema_requires_and_keeps_the_rest() {
        let body = Bytes::from_static(
            br#"{"choices":[{"message":{"content":"hello there","reasoning_content":"think"},"stop_reason":7}],"system_fingerprint":"fp"}"#,
        );
        let (out, usage) = complete_answer(body, "llama-3").expect("ok");
        assert_eq!(usage, None);
        let a = v(&out);
        assert!(
            a["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")),
            "{a}"
        );
        assert_eq!(a["object"], "chat.completion");
        assert!(a["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
        assert_eq!(a["model"], "llama-3");
        assert_eq!(a["system_fingerprint"], "fp");
        let c = &a["choices"][0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["finish_reason"], "stop");
        assert_eq!(c["logprobs"], Value::Null);
        assert_eq!(c["stop_reason"], 7, "extra fields pass");
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(c["message"]["content"], "hello there");
        assert_eq!(c["message"]["refusal"], Value::Null);
        assert_eq!(c["message"]["reasoning_content"], "think");
        assert_eq!(answer_output_chars(&out), 16);
    }

    #[test]
    fn what_the_upstream_sent_is_never_replaced() {
        let body = Bytes::from_static(
            br#"{"id":"mine","created":5,"model":"theirs","choices":[{"index":3,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
        );
        let (out, _) = complete_answer(body, "up").expect("ok");
        let a = v(&out);
        assert_eq!(a["id"], "mine");
        assert_eq!(a["created"], 5);
        assert_eq!(a["model"], "theirs");
        assert_eq!(a["object"], "chat.completion");
        assert_eq!(a["choices"][0]["index"], 3);
        assert_eq!(a["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(answer_output_chars(&out), 1 + 7);
    }

    #[test]
    fn odd_json_types_are_passed_on_not_refused() {
        for body in [
            &br#"{"choices":[7,"x",null,{"message":"text"}]}"#[..],
            br#"{"choices":{"a":1},"id":[1],"model":{"x":[]}}"#,
            br#"[1,2]"#,
            br#"{"choices":[{"message":{"content":["a"],"tool_calls":[3,{"function":7}]}}]}"#,
        ] {
            let (out, _) = complete_answer(Bytes::copy_from_slice(body), "m").expect("no failure");
            let _ = v(&out);
        }
        assert!(complete_answer(Bytes::from_static(b"<html>"), "m").is_err());
    }

    fn chunk(reader: &mut ChunkReader, s: &str) -> (Value, bool) {
        match reader.read(Bytes::from(s.to_owned())).expect("read") {
            Translated::Chunk {
                data, has_choices, ..
            } => (v(&data), has_choices),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunks_are_counted_and_completed() {
        let mut r = ChunkReader::new("up");
        let full = r#"{"id":"c1","object":"chat.completion.chunk","created":9,"model":"m","choices":[{"index":0,"delta":{"content":"héllo"},"finish_reason":null}]}"#;
        match r.read(Bytes::from_static(full.as_bytes())).expect("ok") {
            Translated::Chunk { data, .. } => assert_eq!(data.as_ref(), full.as_bytes()),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.progress().output_chars, 5);
        assert!(!r.progress().complete(1));
        let (c, has) = chunk(
            &mut r,
            r#"{"choices":[{"delta":{"reasoning_content":"ab","tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
        );
        assert!(has);
        assert_eq!(c["id"], "c1");
        assert_eq!(c["created"], 9);
        assert_eq!(c["model"], "m");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["index"], 0);
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(c["choices"][0]["delta"]["reasoning_content"], "ab");
        assert_eq!(r.progress().output_chars, 9);
        let (c, _) = chunk(
            &mut r,
            r#"{"id":"c1","choices":[{"index":0,"finish_reason":"stop","stop_reason":null}]}"#,
        );
        assert_eq!(c["choices"][0]["delta"], json!({}));
        assert_eq!(c["choices"][0]["stop_reason"], Value::Null);
        assert!(r.progress().complete(1));
        let u = r.usage_chunk(&Usage {
            prompt_tokens: 4,
            completion_tokens: 3,
            ..Usage::default()
        });
        assert_eq!(
            v(&u),
            json!({"id":"c1","object":"chat.completion.chunk","created":9,"model":"m","choices":[],
                "usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}})
        );
    }

    #[test]
    fn a_stream_finishes_when_every_choice_did() {
        let mut r = ChunkReader::new("up");
        chunk(
            &mut r,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
        );
        chunk(
            &mut r,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        );
        assert!(!r.progress().complete(2), "choice 1 is still open");
        assert!(!r.progress().complete(1), "choice 1 is still open");
        chunk(
            &mut r,
            r#"{"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#,
        );
        assert!(r.progress().complete(2));
        assert_eq!(
            (r.progress().open_choices, r.progress().finished_choices),
            (0, 2)
        );
        // Content after a finish reason, or a second finish reason, counts once.
        chunk(
            &mut r,
            r#"{"choices":[{"index":1,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
        );
        assert_eq!(
            (r.progress().open_choices, r.progress().finished_choices),
            (0, 2)
        );
    }

    #[test]
    fn a_stream_asked_for_two_choices_is_not_complete_with_one() {
        let mut r = ChunkReader::new("up");
        chunk(
            &mut r,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#,
        );
        chunk(
            &mut r,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        );
        assert!(r.progress().complete(1));
        assert!(!r.progress().complete(2), "choice 1 never came");
        assert!(
            !ChunkReader::new("up").progress().complete(0),
            "nothing came"
        );
    }

    #[test]
    fn any_choice_index_is_tracked() {
        for (a, b) in [(63, 64), (64, 99), (1_000_000, i64::MAX), (-1, 0)] {
            let mut r = ChunkReader::new("up");
            chunk(
                &mut r,
                &format!(
                    r#"{{"choices":[{{"index":{a},"delta":{{"content":"x"}}}},{{"index":{b},"delta":{{"content":"y"}}}}]}}"#
                ),
            );
            chunk(
                &mut r,
                &format!(r#"{{"choices":[{{"index":{b},"delta":{{}},"finish_reason":"stop"}}]}}"#),
            );
            assert!(!r.progress().complete(1), "{a} is open");
            assert_eq!(r.progress().open_choices, 1, "{a}, {b}");
            chunk(
                &mut r,
                &format!(r#"{{"choices":[{{"index":{a},"delta":{{}},"finish_reason":"stop"}}]}}"#),
            );
            assert!(r.progress().complete(2), "{a}, {b}");
            assert!(!r.progress().complete(3));
        }
    }

    #[test]
    fn tool_calls_in_an_answer_get_an_id_and_a_type() {
        let body = Bytes::from_static(
            br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,"tool_calls":[{"function":{"name":"f","arguments":"{}"}},{"id":"mine","function":{"name":"g","arguments":"{}"}},{"type":"function","function":{"name":"h","arguments":"{}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
        );
        let (out, _) = complete_answer(body, "up").expect("ok");
        let a = v(&out);
        let calls = a["choices"][0]["message"]["tool_calls"]
            .as_array()
            .expect("calls");
        let ids: Vec<&str> = calls.iter().filter_map(|c| c["id"].as_str()).collect();
        assert_eq!(ids.len(), 3);
        assert!(
            ids[0].starts_with("call_") && ids[2].starts_with("call_"),
            "{ids:?}"
        );
        assert_eq!(ids[1], "mine");
        assert_ne!(ids[0], ids[2]);
        assert!(calls.iter().all(|c| c["type"] == "function"));
        assert_eq!(calls[0]["function"]["name"], "f");
    }

    #[test]
    fn streamed_tool_calls_get_an_index_and_on_their_first_delta_an_id() {
        let mut r = ChunkReader::new("up");
        // Two whole calls in one chunk, without index, id or type.
        let (c, _) = chunk(
            &mut r,
            r#"{"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"finish_reason":null,"delta":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}},{"function":{"name":"g","arguments":"{"}}]}}]}"#,
        );
        let calls = &c["choices"][0]["delta"]["tool_calls"];
        assert_eq!(
            (calls[0]["index"].clone(), calls[1]["index"].clone()),
            (json!(0), json!(1))
        );
        assert_eq!(calls[0]["type"], "function");
        let (id0, id1) = (calls[0]["id"].clone(), calls[1]["id"].clone());
        assert!(id0.as_str().is_some_and(|i| i.starts_with("call_")));
        assert!(id1.as_str().is_some() && id0 != id1);
        // A continuation without index goes on the last call and gets no new id.
        let (c, _) = chunk(
            &mut r,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"}"}}]}}]}"#,
        );
        let call = &c["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["index"], 1);
        assert!(
            call.get("id").is_none() && call.get("type").is_none(),
            "{call}"
        );
        // A third call, in a chunk of its own: the next index.
        let (c, _) = chunk(
            &mut r,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"theirs","function":{"name":"h","arguments":""}}]}}]}"#,
        );
        let call = &c["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (call["index"].clone(), call["id"].clone()),
            (json!(2), json!("theirs"))
        );
        assert_eq!(call["type"], "function");
        // An upstream that sends them all passes byte for byte, also on later deltas.
        let mut r = ChunkReader::new("up");
        for full in [
            r#"{"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"finish_reason":null,"delta":{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"finish_reason":null,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
        ] {
            match r.read(Bytes::from_static(full.as_bytes())).expect("ok") {
                Translated::Chunk { data, .. } => assert_eq!(data.as_ref(), full.as_bytes()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_partial_usage_is_not_billed_as_sent() {
        let answer = |usage: &str| {
            Bytes::from(format!(
                r#"{{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
            ))
        };
        for partial in [
            r#"{"prompt_tokens":3}"#,
            r#"{"completion_tokens":2,"total_tokens":9}"#,
            r#"{"prompt_tokens":3,"completion_tokens":null}"#,
            r#"{}"#,
        ] {
            let body = answer(partial);
            let (out, usage) = complete_answer(body.clone(), "up").expect("ok");
            assert_eq!(usage, None, "{partial}: estimated by the caller");
            assert_eq!(out, body);
        }
        // Both counts but no total: billed as sent, the total filled.
        let (out, usage) =
            complete_answer(answer(r#"{"prompt_tokens":3,"completion_tokens":2}"#), "up")
                .expect("ok");
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.estimated)),
            Some((3, 2, false))
        );
        assert_eq!(
            v(&out)["usage"],
            json!({"prompt_tokens":3,"completion_tokens":2,"total_tokens":5})
        );
        let estimate = Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
            ..Usage::default()
        };
        let mut doc = json!({"usage": {"prompt_tokens": 3, "extra": 1}});
        let billed = merge_usage(doc.as_object_mut().expect("object"), &estimate);
        assert_eq!(
            (
                billed.prompt_tokens,
                billed.completion_tokens,
                billed.estimated
            ),
            (3, 20, true)
        );
        assert_eq!(
            doc["usage"],
            json!({"prompt_tokens":3,"completion_tokens":20,"total_tokens":23,"extra":1})
        );
        let mut doc = json!({"usage": {"completion_tokens": 4, "total_tokens": 99}});
        let billed = merge_usage(doc.as_object_mut().expect("object"), &estimate);
        assert_eq!((billed.prompt_tokens, billed.completion_tokens), (10, 4));
        assert_eq!(doc["usage"]["total_tokens"], 99, "what was sent stays");
        let mut doc = json!({"usage": null});
        let billed = merge_usage(doc.as_object_mut().expect("object"), &estimate);
        assert_eq!((billed.prompt_tokens, billed.estimated), (10, true));
        assert_eq!(doc["usage"]["total_tokens"], 30);
    }

    #[test]
    fn a_chunk_with_a_partial_usage_is_flagged_and_completed() {
        let mut r = ChunkReader::new("up");
        let full = r#"{"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":7}}"#;
        match r.read(Bytes::from_static(full.as_bytes())).expect("ok") {
            Translated::Chunk { data, usage, .. } => {
                assert_eq!(data.as_ref(), full.as_bytes());
                assert!(usage.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(r.progress().partial_usage);
        let estimate = Usage {
            prompt_tokens: 1,
            completion_tokens: 5,
            ..Usage::default()
        };
        let (data, billed) = chunk_with_usage(full.as_bytes(), &estimate).expect("object");
        assert_eq!((billed.prompt_tokens, billed.completion_tokens), (7, 5));
        assert_eq!(
            v(&data)["usage"],
            json!({"prompt_tokens":7,"completion_tokens":5,"total_tokens":12})
        );
        let (c, _) = chunk(
            &mut r,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5}}"#,
        );
        assert!(!r.progress().partial_usage);
        assert_eq!(c["usage"]["total_tokens"], 12);
    }

    #[test]
    fn error_events_in_other_shapes_become_openai_errors() {
        let mut r = ChunkReader::new("up");
        let own = Bytes::from_static(br#"{"error":{"message":"boom","type":"server_error"}}"#);
        assert_eq!(r.read(own.clone()).expect("ok"), Translated::Error(own));
        let Translated::Error(e) = r
            .read(Bytes::from_static(
                br#"{"error":"CUDA out of memory on gpu-3.cluster.internal"}"#,
            ))
            .expect("ok")
        else {
            panic!("an error");
        };
        let e = v(&e);
        assert_eq!(e["error"]["message"], "CUDA out of memory on [host]");
        assert_eq!(e["error"]["type"], "server_error");
    }

    #[test]
    fn error_bodies_in_every_shape() {
        let parts = |ct: Option<&str>, b: &str| error_parts(ct, b.as_bytes()).message;
        assert_eq!(
            parts(None, r#"{"detail":"Model llama-3.1-8b is loading"}"#).as_deref(),
            Some("Model llama-3.1-8b is loading")
        );
        assert_eq!(
            parts(None, r#"{"detail":[{"loc":["body","messages",0,"role"],"msg":"Input should be 'user'","type":"literal_error"}]}"#).as_deref(),
            Some("messages.0.role: Input should be 'user'")
        );
        assert_eq!(
            parts(
                Some("text/plain"),
                "upstream connect error: connection refused to 10.2.3.4:8000\nmore"
            )
            .as_deref(),
            Some("upstream connect error: connection refused to [host]")
        );
        assert_eq!(
            parts(
                None,
                "Bad Gateway from http://vllm-7.gpu.internal:8000/v1 (nginx.corp)"
            )
            .as_deref(),
            Some("Bad Gateway from [host] ([host])")
        );
        assert_eq!(
            parts(Some("text/html; charset=utf-8"), "<h1>gpu-1.internal</h1>"),
            None
        );
        assert_eq!(
            parts(
                None,
                "<!DOCTYPE html><html><title>502 from lb.internal</title></html>"
            ),
            None
        );
        assert_eq!(
            parts(None, r#"{"error":"bad things at db.local"}"#).as_deref(),
            Some("bad things at [host]")
        );
        assert_eq!(
            error_parts(None, br#"{"error":{"message":"m","param":"p","code":404}}"#),
            ErrorParts {
                message: Some("m".into()),
                param: Some("p".into()),
                code: Some("404".into()),
            }
        );
        let long = "x ".repeat(500);
        let m = parts(None, &long).expect("excerpt");
        assert_eq!(m.chars().count(), MAX_EXCERPT_CHARS + 1);
        assert_eq!(parts(None, "   \n\n"), None);
        assert_eq!(
            parts(None, "at localhost:9000, try again."),
            Some("at [host], try again.".into())
        );
    }

    #[test]
    fn words_that_are_not_hosts_stay() {
        for w in [
            "gpt-4.1",
            "llama-3.1-8b",
            "response_format.type",
            "1.5",
            "e.g",
            "max_tokens",
            "v1",
        ] {
            assert!(!is_host_like(w), "{w}");
        }
        for w in [
            "a.internal",
            "10.0.0.1",
            "h:80",
            "https://x",
            "LOCALHOST",
            "vllm-3.gpu.svc",
        ] {
            assert!(is_host_like(w), "{w}");
        }
    }
}
