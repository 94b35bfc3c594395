//! The PII guardrail for answers: checks the text a model sends back (content,
//! refusals, tool-call arguments) in OpenAI Chat Completions JSON, whole or streamed,
//! and redacts what it finds (`[EMAIL_1]`) or blocks the choice (`content_filter`).
//!
//! A streamed answer arrives in fragments, and a value may be split between two of
//! them. So each choice's text is held back and released only up to a safe point:
//! 64 bytes before the end of what has arrived, never inside a run of non-whitespace
//! characters (an email or a card written without spaces is one such run) nor inside a
//! finding of the detector. The detector runs over the held text and a little of the
//! text already released (for the left context some patterns need, such as "SSN is"),
//! so its cost stays bounded however long the answer grows. Because the release point
//! never splits a finding or a token, redacting piece by piece gives the same text as
//! redacting the whole answer at once, with the same placeholder numbers.
//!
//! The guarantee rests on the built-in patterns: a value that contains whitespace
//! (a phone number or IBAN written in groups) is shorter than the 64 bytes held back,
//! so it is whole in view before any of it is released. A custom pattern matching
//! longer text with spaces in it may be split.
//!
//! Tool-call arguments are JSON text. They are scanned with the JSON escapes inside
//! strings blanked out (same length, so positions hold), so that `\n4111…` is still
//! seen as a card; a value found outside a string (a bare number) is replaced by a
//! quoted placeholder, so the arguments stay a JSON document.
//!
//! Bytes that are not JSON of the expected shape pass through untouched: the guard
//! only rewrites what it understands, and never fails the stream.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::pii::{Finding, PiiDetector, Redactor};

/// Bytes of text always held back at the end of a streamed text: no finding of the
/// built-in detectors that may still grow is longer once whitespace-free runs are
/// kept whole.
const HOLD: usize = 64;
/// Bytes of already released text the detector sees before the held text.
const CONTEXT: usize = 64;
/// A non-whitespace run longer than this may be split, so that held text stays bounded.
const MAX_RUN: usize = 1024;

/// What to do with PII found in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputAction {
    /// Replace each value with a numbered placeholder.
    Redact,
    /// Stop the choice: nothing more of it is sent, and it finishes with
    /// `content_filter`.
    Block,
}

impl From<crate::config::PiiOutput> for OutputAction {
    fn from(mode: crate::config::PiiOutput) -> OutputAction {
        match mode {
            crate::config::PiiOutput::Redact => OutputAction::Redact,
            crate::config::PiiOutput::Block => OutputAction::Block,
        }
    }
}

impl OutputAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputAction::Redact => "redact",
            OutputAction::Block => "block",
        }
    }
}

/// What to send for one stream chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardedChunk {
    /// The chunk as it came.
    Unchanged,
    /// This instead.
    Rewritten(Bytes),
    /// Nothing: all it carried is held back (or blocked).
    Withheld,
}

/// Checks one answer: a whole completion, or the chunks of one stream in order.
pub struct OutputGuard {
    redactor: Redactor<Arc<PiiDetector>>,
    action: OutputAction,
    choices: BTreeMap<u64, ChoiceState>,
    /// `id`, `object`, `created`, `model`, `system_fingerprint` of the last chunk seen,
    /// for the chunk [`OutputGuard::flush`] makes.
    head: Vec<(String, Json)>,
    blocked: bool,
}

impl fmt::Debug for OutputGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputGuard")
            .field("action", &self.action)
            .field("choices", &self.choices.len())
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

struct ChoiceState {
    content: Channel,
    refusal: Channel,
    tools: BTreeMap<u64, Channel>,
    /// The arguments of a legacy `function_call`.
    function: Channel,
    blocked: bool,
    finished: bool,
}

impl Default for ChoiceState {
    fn default() -> ChoiceState {
        ChoiceState {
            content: Channel::default(),
            refusal: Channel::default(),
            tools: BTreeMap::new(),
            function: Channel::json(),
            blocked: false,
            finished: false,
        }
    }
}

impl ChoiceState {
    fn clear(&mut self) {
        self.content = Channel::default();
        self.refusal = Channel::default();
        self.tools.clear();
        self.function = Channel::json();
    }

    fn holds_text(&self) -> bool {
        !self.content.held.is_empty()
            || !self.refusal.held.is_empty()
            || !self.function.held.is_empty()
            || self.tools.values().any(|c| !c.held.is_empty())
    }
}

/// One streamed text: a choice's content or refusal, or one tool call's (or legacy
/// function call's) arguments.
#[derive(Default)]
struct Channel {
    /// Arrived, not yet released.
    held: String,
    /// The end of the released text, unredacted, for the detector's left context.
    ctx: String,
    /// Whether this is JSON text (tool-call arguments).
    json: bool,
    /// The JSON lexer's state at the start of `ctx`, and at the end of the released text.
    ctx_lex: Lex,
    lex: Lex,
}

/// What one release step found.
enum Step {
    /// This text (redacted) may be sent.
    Release(String),
    /// PII, in block mode: its labels.
    Found(Vec<String>),
}

impl Channel {
    fn json() -> Channel {
        Channel {
            json: true,
            ..Channel::default()
        }
    }

    /// Releases what is safe of the held text (all of it when `finish`).
    fn step(
        &mut self,
        redactor: &mut Redactor<Arc<PiiDetector>>,
        block: bool,
        finish: bool,
    ) -> Step {
        if self.held.is_empty() {
            return Step::Release(String::new());
        }
        let base = self.ctx.len();
        let window = format!("{}{}", self.ctx, self.held);
        let scanned = if self.json {
            Cow::Owned(blank_escapes(&window, self.ctx_lex))
        } else {
            Cow::Borrowed(window.as_str())
        };
        let detector = redactor.detector();
        // Findings that reach into the held text; those wholly in the context were
        // dealt with when it was released.
        let findings: Vec<Finding> = detector
            .find(&scanned)
            .into_iter()
            .filter(|f| f.end > base)
            .collect();
        if block && !findings.is_empty() {
            let labels = findings
                .iter()
                .map(|f| detector.label_of(f).to_owned())
                .collect();
            return Step::Found(labels);
        }
        let held_scan = scanned.get(base..).unwrap_or_default();
        let mut cut = if finish {
            self.held.len()
        } else {
            safe_cut(held_scan)
        };
        // Never inside a finding: one starting in the context (which should not
        // happen, as its start would have been released inside it) holds all.
        for f in &findings {
            let start = f.start.saturating_sub(base);
            let end = f.end - base;
            if start < cut && cut < end {
                cut = start;
            }
        }
        let Some(prefix) = self.held.get(..cut) else {
            return Step::Release(String::new());
        };
        let mut out = String::with_capacity(prefix.len());
        let mut at = 0;
        let mut lex = self.lex;
        for f in &findings {
            let start = f.start.saturating_sub(base);
            let end = f.end - base;
            if end > cut {
                break;
            }
            let (Some(before), Some(value)) = (prefix.get(at..start), window.get(f.start..f.end))
            else {
                continue;
            };
            lex.feed_str(before);
            let placeholder = redactor.placeholder(f, value);
            out.push_str(before);
            if self.json && !lex.in_string {
                // A bare number: quoted, so the arguments stay JSON.
                out.push('"');
                out.push_str(&placeholder);
                out.push('"');
            } else {
                out.push_str(&placeholder);
            }
            if let Some(v) = prefix.get(start..end) {
                lex.feed_str(v);
            }
            at = end;
        }
        let rest = prefix.get(at..).unwrap_or_default();
        out.push_str(rest);
        let prefix = prefix.to_owned();
        self.lex.feed_str(&prefix);
        self.ctx.push_str(&prefix);
        self.trim_context();
        self.held = self.held.get(cut..).unwrap_or_default().to_owned();
        Step::Release(out)
    }

    /// Keeps the last [`CONTEXT`] bytes of released text, from the start of a token
    /// where there is one (a pattern anchored on `\b` must not start mid-token).
    fn trim_context(&mut self) {
        if self.ctx.len() <= CONTEXT {
            return;
        }
        let mut from = floor_boundary(&self.ctx, self.ctx.len() - CONTEXT);
        if let Some(tail) = self.ctx.get(from..) {
            if let Some((i, c)) = tail.char_indices().find(|(_, c)| c.is_whitespace()) {
                from += i + c.len_utf8();
            }
        }
        if let Some(dropped) = self.ctx.get(..from) {
            self.ctx_lex.feed_str(dropped);
        }
        self.ctx = self.ctx.get(from..).unwrap_or_default().to_owned();
    }
}

/// Where held text may be cut: [`HOLD`] bytes before its end, moved back to the start
/// of the non-whitespace run it falls in (unless that run is longer than [`MAX_RUN`]).
fn safe_cut(held: &str) -> usize {
    if held.len() <= HOLD {
        return 0;
    }
    let cut = floor_boundary(held, held.len() - HOLD);
    let (Some(before), Some(after)) = (held.get(..cut), held.get(cut..)) else {
        return 0;
    };
    let splits_run = before
        .chars()
        .next_back()
        .is_some_and(|c| !c.is_whitespace())
        && after.chars().next().is_some_and(|c| !c.is_whitespace());
    if !splits_run {
        return cut;
    }
    let run_start = before
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    if cut - run_start > MAX_RUN {
        cut
    } else {
        run_start
    }
}

/// The largest char boundary of `s` at or before `i`.
fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The state of a JSON lexer, enough to tell strings and their escapes apart.
#[derive(Debug, Clone, Copy, Default)]
struct Lex {
    in_string: bool,
    /// Characters of an escape still to come.
    escape_left: u8,
    /// The next character is the one right after the backslash.
    after_backslash: bool,
}

impl Lex {
    /// Advances over `c`; true when `c` belongs to an escape sequence.
    fn feed(&mut self, c: char) -> bool {
        if !self.in_string {
            if c == '"' {
                self.in_string = true;
            }
            return false;
        }
        if self.escape_left > 0 {
            self.escape_left -= 1;
            if self.after_backslash && c == 'u' {
                self.escape_left = 4;
            }
            self.after_backslash = false;
            return true;
        }
        match c {
            '\\' => {
                self.escape_left = 1;
                self.after_backslash = true;
                true
            }
            '"' => {
                self.in_string = false;
                false
            }
            _ => false,
        }
    }

    fn feed_str(&mut self, s: &str) {
        for c in s.chars() {
            self.feed(c);
        }
    }
}

/// `text` (JSON starting in state `lex`) with the escapes inside strings replaced by
/// spaces of the same length, so that positions match the original.
fn blank_escapes(text: &str, mut lex: Lex) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if lex.feed(c) && c.is_ascii() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

impl OutputGuard {
    pub fn new(detector: Arc<PiiDetector>, action: OutputAction) -> OutputGuard {
        OutputGuard {
            redactor: Redactor::new(detector),
            action,
            choices: BTreeMap::new(),
            head: Vec::new(),
            blocked: false,
        }
    }

    fn block(&self) -> bool {
        self.action == OutputAction::Block
    }

    /// A whole `chat.completion` body: `Some(rewritten)` when anything changed.
    pub fn completion(&mut self, body: &[u8]) -> Option<Bytes> {
        let mut doc: Json = serde_json::from_slice(body).ok()?;
        let choices = doc.as_obj_mut()?.get_mut("choices")?.as_arr_mut()?;
        let mut changed = false;
        for choice in choices.iter_mut() {
            let Some(choice) = choice.as_obj_mut() else {
                continue;
            };
            let Some(message) = choice.get_mut("message").and_then(Json::as_obj_mut) else {
                continue;
            };
            let mut found = Vec::new();
            // Content, refusal, then tool calls in order: the order a stream releases
            // them in, so both number placeholders alike.
            let mut texts: Vec<(&mut String, bool)> = Vec::new();
            let mut tool_calls = None;
            let mut function_call = None;
            for (k, v) in message.0.iter_mut() {
                match (k.as_str(), v) {
                    ("content" | "refusal", Json::Str(s)) => texts.push((s, false)),
                    ("tool_calls", v) => tool_calls = Some(v),
                    ("function_call", v) => function_call = Some(v),
                    _ => {}
                }
            }
            if let Some(calls) = tool_calls.and_then(Json::as_arr_mut) {
                for call in calls {
                    if let Some(Json::Str(args)) = call
                        .as_obj_mut()
                        .and_then(|o| o.get_mut("function"))
                        .and_then(Json::as_obj_mut)
                        .and_then(|f| f.get_mut("arguments"))
                    {
                        texts.push((args, true));
                    }
                }
            }
            if let Some(Json::Str(args)) = function_call
                .and_then(Json::as_obj_mut)
                .and_then(|o| o.get_mut("arguments"))
            {
                texts.push((args, true));
            }
            for (text, json) in texts {
                let mut channel = if json {
                    Channel::json()
                } else {
                    Channel::default()
                };
                channel.held = text.clone();
                match channel.step(&mut self.redactor, self.action == OutputAction::Block, true) {
                    Step::Release(out) => {
                        if out != *text {
                            *text = out;
                            changed = true;
                        }
                    }
                    Step::Found(labels) => found.extend(labels),
                }
            }
            if !found.is_empty() {
                for label in &found {
                    self.redactor.count(label);
                }
                self.blocked = true;
                changed = true;
                message.set("content", Json::Null);
                message.remove("tool_calls");
                message.remove("function_call");
                if message.get("refusal").is_some() {
                    message.set("refusal", Json::Null);
                }
                choice.set("finish_reason", Json::Str("content_filter".to_owned()));
            }
        }
        if !changed {
            return None;
        }
        serde_json::to_vec(&doc).ok().map(Bytes::from)
    }

    /// One stream chunk's JSON (the `data:` payload): what to send instead.
    pub fn chunk(&mut self, data: &Bytes) -> GuardedChunk {
        let Ok(mut doc) = serde_json::from_slice::<Json>(data) else {
            return GuardedChunk::Unchanged;
        };
        let Some(top) = doc.as_obj_mut() else {
            return GuardedChunk::Unchanged;
        };
        let head: Vec<(String, Json)> = ["id", "object", "created", "model", "system_fingerprint"]
            .iter()
            .filter_map(|k| top.get(k).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        if !head.is_empty() {
            self.head = head;
        }
        let has_usage = top.get("usage").is_some_and(|u| !u.is_blank());
        let Some(choices) = top.get_mut("choices").and_then(Json::as_arr_mut) else {
            return GuardedChunk::Unchanged;
        };
        let mut changed = false;
        let mut kept = Vec::with_capacity(choices.len());
        for mut choice in std::mem::take(choices) {
            let before = choice.clone();
            let keep = match choice.as_obj_mut() {
                Some(c) => self.guard_choice(c),
                None => true,
            };
            if choice != before {
                changed = true;
                if !keep {
                    continue;
                }
            }
            kept.push(choice);
        }
        let empty = kept.is_empty();
        *choices = kept;
        if !changed {
            return GuardedChunk::Unchanged;
        }
        if empty && !has_usage {
            return GuardedChunk::Withheld;
        }
        match serde_json::to_vec(&doc) {
            Ok(v) => GuardedChunk::Rewritten(Bytes::from(v)),
            Err(_) => GuardedChunk::Unchanged,
        }
    }

    /// Guards one choice of a chunk in place; false when it is left carrying nothing.
    fn guard_choice(&mut self, c: &mut Obj) -> bool {
        let index = c.get("index").and_then(Json::as_u64).unwrap_or(0);
        let finish = c.get("finish_reason").is_some_and(|f| !f.is_blank());
        let block = self.block();
        let st = self.choices.entry(index).or_default();
        if finish {
            st.finished = true;
        }
        if c.get("delta").and_then(Json::as_obj).is_none() {
            if !finish || st.blocked || !st.holds_text() {
                if finish && st.blocked {
                    c.set("finish_reason", Json::Str("content_filter".to_owned()));
                }
                return true;
            }
            c.set("delta", Json::Obj(Obj::default()));
        }
        let Some(delta) = c.get_mut("delta").and_then(Json::as_obj_mut) else {
            return true;
        };
        let mut found = Vec::new();
        if !st.blocked {
            // Take in what arrived.
            let mut arrived_tools = Vec::new();
            if let Some(Json::Str(s)) = delta.get("content") {
                st.content.held.push_str(s);
            }
            if let Some(Json::Str(s)) = delta.get("refusal") {
                st.refusal.held.push_str(s);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Json::as_arr) {
                for (pos, call) in calls.iter().enumerate() {
                    let Some(call) = call.as_obj() else { continue };
                    let i = call
                        .get("index")
                        .and_then(Json::as_u64)
                        .unwrap_or(pos as u64);
                    let channel = st.tools.entry(i).or_insert_with(Channel::json);
                    if let Some(Json::Str(a)) = call
                        .get("function")
                        .and_then(Json::as_obj)
                        .and_then(|f| f.get("arguments"))
                    {
                        channel.held.push_str(a);
                    }
                    arrived_tools.push(i);
                }
            }
            if let Some(Json::Str(a)) = delta
                .get("function_call")
                .and_then(Json::as_obj)
                .and_then(|f| f.get("arguments"))
            {
                st.function.held.push_str(a);
            }
            // Release what is safe, content first.
            let content = st.content.step(&mut self.redactor, block, finish);
            let refusal = st.refusal.step(&mut self.redactor, block, finish);
            let mut tools = Vec::new();
            for (&i, channel) in st.tools.iter_mut() {
                if finish || arrived_tools.contains(&i) {
                    tools.push((i, channel.step(&mut self.redactor, block, finish)));
                }
            }
            let function = st.function.step(&mut self.redactor, block, finish);
            for s in [&content, &refusal, &function]
                .into_iter()
                .chain(tools.iter().map(|(_, s)| s))
            {
                if let Step::Found(labels) = s {
                    found.extend(labels.iter().cloned());
                }
            }
            if found.is_empty() {
                if let Step::Release(t) = content {
                    put_text(delta, "content", t);
                }
                if let Step::Release(t) = refusal {
                    put_text(delta, "refusal", t);
                }
                for (i, s) in tools {
                    if let Step::Release(t) = s {
                        put_arguments(delta, i, t);
                    }
                }
                tidy_tool_calls(delta);
                if let Step::Release(t) = function {
                    put_function_arguments(delta, t);
                }
            } else {
                for label in &found {
                    self.redactor.count(label);
                }
                st.blocked = true;
                self.blocked = true;
                st.clear();
            }
        }
        if st.blocked {
            strip_texts(delta);
            if finish {
                c.set("finish_reason", Json::Str("content_filter".to_owned()));
            }
        }
        let delta_blank = c
            .get("delta")
            .and_then(Json::as_obj)
            .is_none_or(|d| d.0.iter().all(|(_, v)| v.is_blank()));
        let rest_blank =
            c.0.iter()
                .filter(|(k, _)| k != "index" && k != "delta")
                .all(|(_, v)| v.is_blank());
        !(delta_blank && rest_blank)
    }

    /// The stream ended without a finish chunk for some choice: what is still held for
    /// them, as one more chunk (with the last chunk's `id`, `model`, `created`), or
    /// `None`. A choice blocked without a finish chunk finishes here with
    /// `content_filter`.
    pub fn flush(&mut self) -> Option<Bytes> {
        let block = self.block();
        let mut out = Vec::new();
        for (&index, st) in self.choices.iter_mut() {
            if st.finished {
                continue;
            }
            let mut delta = Obj::default();
            let mut found = Vec::new();
            if !st.blocked && st.holds_text() {
                let content = st.content.step(&mut self.redactor, block, true);
                let refusal = st.refusal.step(&mut self.redactor, block, true);
                let mut tools = Vec::new();
                for (&i, channel) in st.tools.iter_mut() {
                    tools.push((i, channel.step(&mut self.redactor, block, true)));
                }
                let function = match st.function.step(&mut self.redactor, block, true) {
                    Step::Release(t) => t,
                    Step::Found(l) => {
                        found.extend(l);
                        String::new()
                    }
                };
                let mut texts = Vec::new();
                for (key, s) in [("content", content), ("refusal", refusal)] {
                    match s {
                        Step::Release(t) => texts.push((key, t)),
                        Step::Found(l) => found.extend(l),
                    }
                }
                let mut args = Vec::new();
                for (i, s) in tools {
                    match s {
                        Step::Release(t) => args.push((i, t)),
                        Step::Found(l) => found.extend(l),
                    }
                }
                if found.is_empty() {
                    for (key, t) in texts {
                        if !t.is_empty() {
                            delta.set(key, Json::Str(t));
                        }
                    }
                    for (i, t) in args {
                        put_arguments(&mut delta, i, t);
                    }
                    tidy_tool_calls(&mut delta);
                    put_function_arguments(&mut delta, function);
                } else {
                    for label in &found {
                        self.redactor.count(label);
                    }
                    st.blocked = true;
                    self.blocked = true;
                    st.clear();
                }
            }
            let finish = if st.blocked {
                Json::Str("content_filter".to_owned())
            } else if delta.0.is_empty() {
                continue;
            } else {
                Json::Null
            };
            st.finished = true;
            let mut choice = Obj::default();
            choice.set("index", Json::Num(index.into()));
            choice.set("delta", Json::Obj(delta));
            choice.set("finish_reason", finish);
            out.push(Json::Obj(choice));
        }
        if out.is_empty() {
            return None;
        }
        let mut top = Obj(self.head.clone());
        top.set("object", Json::Str("chat.completion.chunk".to_owned()));
        top.set("choices", Json::Arr(out));
        serde_json::to_vec(&Json::Obj(top)).ok().map(Bytes::from)
    }

    /// What was found, `EMAIL=2,PHONE=1`, or `None`.
    pub fn summary(&self) -> Option<String> {
        self.redactor.summary()
    }

    /// Whether any choice was blocked.
    pub fn action(&self) -> OutputAction {
        self.action
    }

    /// Notes what was found in the request's ledger row (kinds and counts, never values).
    pub fn record_findings(&self, tracker: &mut crate::ledger::tracker::RequestTracker) {
        if let Some(summary) = self.summary() {
            tracker.add_output_findings(self.action.as_str(), &summary);
        }
    }

    pub fn blocked(&self) -> bool {
        self.blocked
    }
}

/// Sets a text field of a delta to what was released: kept as `""` where the field
/// was, added where it was not and there is text.
fn put_text(delta: &mut Obj, key: &str, text: String) {
    match delta.get(key) {
        Some(Json::Str(s)) if *s == text => {}
        Some(Json::Str(_)) => delta.set(key, Json::Str(text)),
        _ if !text.is_empty() => delta.set(key, Json::Str(text)),
        _ => {}
    }
}

/// Sets tool call `index`'s arguments in a delta to what was released, adding an entry
/// for the call when the delta has none and there is text.
fn put_arguments(delta: &mut Obj, index: u64, args: String) {
    if delta.get("tool_calls").and_then(Json::as_arr).is_none() {
        if args.is_empty() {
            return;
        }
        delta.set("tool_calls", Json::Arr(Vec::new()));
    }
    let Some(calls) = delta.get_mut("tool_calls").and_then(Json::as_arr_mut) else {
        return;
    };
    let mut entry = None;
    for (pos, call) in calls.iter_mut().enumerate() {
        let i = call
            .as_obj()
            .and_then(|o| o.get("index"))
            .and_then(Json::as_u64)
            .unwrap_or(pos as u64);
        if i == index {
            entry = call.as_obj_mut();
            break;
        }
    }
    let entry = match entry {
        Some(e) => e,
        None => {
            if args.is_empty() {
                return;
            }
            let mut e = Obj::default();
            e.set("index", Json::Num(index.into()));
            calls.push(Json::Obj(e));
            let Some(e) = calls.last_mut().and_then(Json::as_obj_mut) else {
                return;
            };
            e
        }
    };
    if entry.get("function").and_then(Json::as_obj).is_none() {
        if args.is_empty() {
            return;
        }
        entry.set("function", Json::Obj(Obj::default()));
    }
    if let Some(f) = entry.get_mut("function").and_then(Json::as_obj_mut) {
        set_arguments(f, args);
    }
}

/// Sets a legacy `function_call`'s arguments in a delta to what was released; a
/// `function_call` left with nothing is dropped.
fn put_function_arguments(delta: &mut Obj, args: String) {
    if delta.get("function_call").and_then(Json::as_obj).is_none() {
        if args.is_empty() {
            return;
        }
        delta.set("function_call", Json::Obj(Obj::default()));
    }
    if let Some(f) = delta.get_mut("function_call").and_then(Json::as_obj_mut) {
        set_arguments(f, args);
    }
    if delta.get("function_call").is_some_and(Json::is_blank) {
        delta.remove("function_call");
    }
}

/// Sets `arguments` of a function object: kept as `""` where it was, added where it
/// was not and there is text.
fn set_arguments(f: &mut Obj, args: String) {
    match f.get("arguments") {
        Some(Json::Str(s)) if *s == args => {}
        Some(Json::Str(_)) => f.set("arguments", Json::Str(args)),
        _ if !args.is_empty() => f.set("arguments", Json::Str(args)),
        _ => {}
    }
}

/// Drops tool-call entries left with nothing but their index, and an empty list.
fn tidy_tool_calls(delta: &mut Obj) {
    let Some(calls) = delta.get_mut("tool_calls").and_then(Json::as_arr_mut) else {
        return;
    };
    calls.retain(|call| match call.as_obj() {
        Some(o) => o.0.iter().any(|(k, v)| k != "index" && !v.is_blank()),
        None => true,
    });
    if calls.is_empty() {
        delta.remove("tool_calls");
    }
}

/// Removes all text of a blocked choice from a delta.
fn strip_texts(delta: &mut Obj) {
    delta.remove("content");
    delta.remove("refusal");
    delta.remove("tool_calls");
    delta.remove("function_call");
}

/// A JSON value that keeps its objects' key order, so that a rewritten chunk differs
/// from the original only where it was changed (serde_json's `Value` sorts keys unless
/// built with `preserve_order`). A key given twice keeps its last value, as most
/// clients' parsers do, so the value guarded is the value they read.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Json>),
    Obj(Obj),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Obj(Vec<(String, Json)>);

impl Obj {
    fn get(&self, key: &str) -> Option<&Json> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn set(&mut self, key: &str, value: Json) {
        match self.get_mut(key) {
            Some(v) => *v = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }
}

impl Json {
    fn as_obj(&self) -> Option<&Obj> {
        match self {
            Json::Obj(o) => Some(o),
            _ => None,
        }
    }

    fn as_obj_mut(&mut self) -> Option<&mut Obj> {
        match self {
            Json::Obj(o) => Some(o),
            _ => None,
        }
    }

    fn as_arr(&self) -> Option<&Vec<Json>> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }

    fn as_arr_mut(&mut self) -> Option<&mut Vec<Json>> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n.as_u64(),
            _ => None,
        }
    }

    /// Carries nothing: null, `""`, `[]`, or an object of such.
    fn is_blank(&self) -> bool {
        match self {
            Json::Null => true,
            Json::Str(s) => s.is_empty(),
            Json::Arr(a) => a.is_empty(),
            Json::Obj(o) => o.0.iter().all(|(_, v)| v.is_blank()),
            Json::Bool(_) | Json::Num(_) => false,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Num(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Num(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(n)
            .map(Json::Num)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::Str(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::Str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Json>()? {
            out.push(v);
        }
        Ok(Json::Arr(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out: Vec<(String, Json)> = Vec::new();
        // Positions by key, built only for objects big enough to need it.
        let mut positions: Option<HashMap<String, usize>> = None;
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            if out.len() == 16 && positions.is_none() {
                positions = Some(
                    out.iter()
                        .enumerate()
                        .map(|(i, (k, _))| (k.clone(), i))
                        .collect(),
                );
            }
            let at = match &positions {
                Some(p) => p.get(&k).copied(),
                None => out.iter().position(|(kk, _)| *kk == k),
            };
            match at.and_then(|i| out.get_mut(i)) {
                Some(slot) => slot.1 = v,
                None => {
                    if let Some(p) = positions.as_mut() {
                        p.insert(k.clone(), out.len());
                    }
                    out.push((k, v));
                }
            }
        }
        Ok(Json::Obj(Obj(out)))
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Num(n) => n.serialize(s),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Json::Obj(o) => {
                let mut map = s.serialize_map(Some(o.0.len()))?;
                for (k, v) in &o.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests;
