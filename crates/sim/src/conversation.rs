//! Protocol-neutral answers for the native wire APIs (Anthropic, Bedrock, Gemini): each
//! protocol validates its own request, reduces it to a [`Conversation`], and renders the
//! [`Answer`] in its own wire shape. Built on `generate` like the OpenAI chat, with the
//! same markers and the same prompt-token formula.

use serde_json::Value;

use crate::generate::{
    self, canonical_json, derive_seed, fixed_tokens, prose_tokens, text_tokens, word_tokens,
    Digest32, Rng, IMAGE_TOKENS, MESSAGE_OVERHEAD, PROMPT_OVERHEAD, TOOL_OVERHEAD,
};

/// Magic markers (see the README): text anywhere in the prompt that steers the answer.
pub(crate) const MARKER_ECHO: &str = "[[echo]]";
pub(crate) const MARKER_CACHED: &str = "[[cached]]";
pub(crate) const MARKER_LEN: &str = "[[len:";
/// Gemini: the prompt is blocked (`promptFeedback.blockReason: SAFETY`, no candidates).
pub(crate) const MARKER_BLOCKED: &str = "[[blocked]]";

/// A tool the model may call: its name and the JSON Schema of its input.
#[derive(Clone, Debug)]
pub(crate) struct ToolSpec {
    pub(crate) name: String,
    pub(crate) schema: Value,
}

/// Which tools the request allows or forces.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Choice {
    /// Call the tools the last user message names; text when it names none.
    Auto,
    /// Never call a tool.
    Never,
    /// Call one tool: the first one named in the last user message, else the first tool.
    Any,
    /// Call this tool.
    Named(String),
}

#[derive(Clone, Debug)]
pub(crate) enum OutFormat {
    Text,
    /// Some JSON object (e.g. Gemini's `responseMimeType: application/json` alone).
    JsonObject,
    /// An instance of this schema.
    JsonSchema(Value),
}

/// What the answer depends on, taken from a native request.
#[derive(Clone, Debug)]
pub(crate) struct Conversation {
    /// Drives every random choice; excludes delivery-only fields (stream, limits, stops).
    pub(crate) digest: Digest32,
    /// Every text of the prompt (system included), for the markers.
    pub(crate) all_text: String,
    /// The text of the last user turn (not counting tool results), for tool names and echo.
    pub(crate) last_user_text: String,
    /// The conversation ends with tool results: the round trip ends with text.
    pub(crate) ends_with_tool_result: bool,
    pub(crate) tools: Vec<ToolSpec>,
    pub(crate) choice: Choice,
    /// More than one tool call per answer allowed.
    pub(crate) parallel: bool,
    /// A short text block comes before the tool calls of an `Auto` answer (as Claude does).
    pub(crate) preamble: bool,
    pub(crate) limit: Option<usize>,
    pub(crate) stop: Vec<String>,
    pub(crate) format: OutFormat,
}

/// Why the answer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The model finished its turn.
    Done,
    /// The token limit cut the text.
    Length,
    /// This stop sequence cut the text.
    Stop(String),
    /// The answer calls tools.
    Tools,
}

/// One tool call: the tool, its input, and a seed for the protocol's call id.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Call {
    pub(crate) name: String,
    pub(crate) input: Value,
    pub(crate) seed: u64,
}

/// A planned answer: text tokens (maybe empty), then tool calls (maybe none).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Answer {
    pub(crate) text: Vec<String>,
    pub(crate) calls: Vec<Call>,
    pub(crate) finish: Finish,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        self.text.concat()
    }

    /// Output tokens: one per text token; per call ceil(name/4) + ceil(input JSON/4) + 3.
    pub(crate) fn output_tokens(&self) -> u64 {
        self.text.len() as u64
            + self
                .calls
                .iter()
                .map(|c| text_tokens(&c.name) + text_tokens(&c.input.to_string()) + 3)
                .sum::<u64>()
    }
}

/// `[[len:N]]` → N (1 to 4096).
pub(crate) fn len_marker(text: &str) -> Option<usize> {
    let start = text.find(MARKER_LEN)? + MARKER_LEN.len();
    let rest = &text[start..];
    let end = rest.find("]]")?;
    rest[..end]
        .trim()
        .parse::<usize>()
        .ok()
        .map(|n| n.clamp(1, 4096))
}

/// `text` with every marker taken out, trimmed.
pub(crate) fn strip_markers(text: &str) -> String {
    let mut text = text
        .replace(MARKER_ECHO, "")
        .replace(MARKER_CACHED, "")
        .replace(MARKER_BLOCKED, "")
        .replace(crate::reasoning::MARKER_REDACTED, "");
    while let Some(start) = text.find(MARKER_LEN) {
        match text[start..].find("]]") {
            Some(end) => text.replace_range(start..start + end + 2, ""),
            None => break,
        }
    }
    text.trim().to_string()
}

/// Cached prompt tokens: half the prompt with `[[cached]]`, else none.
pub(crate) fn cached_tokens(all_text: &str, prompt_tokens: u64) -> u64 {
    if all_text.contains(MARKER_CACHED) {
        prompt_tokens / 2
    } else {
        0
    }
}

/// Where `name` first occurs in `text` as a whole identifier, if it does.
fn find_name(text: &str, name: &str) -> Option<usize> {
    if name.is_empty() {
        return None;
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut from = 0;
    while let Some(pos) = text[from..].find(name) {
        let start = from + pos;
        let end = start + name.len();
        let before_ok = !text[..start].chars().next_back().is_some_and(is_ident);
        let after_ok = !text[end..].chars().next().is_some_and(is_ident);
        if before_ok && after_ok {
            return Some(start);
        }
        from = end;
    }
    None
}

/// The tools to call, in order (empty = answer with text).
fn select_tools(conv: &Conversation) -> Vec<&ToolSpec> {
    if conv.tools.is_empty() || conv.ends_with_tool_result {
        return Vec::new();
    }
    pick_tools(
        &conv.tools,
        |t| &t.name,
        &conv.last_user_text,
        &conv.choice,
        conv.parallel,
    )
}

/// Which of `tools` to call under `choice`: those the last user message names, in the
/// order it names them (one unless `parallel`); `Any` falls back to the first tool.
/// Every protocol's planner uses this one rule, so all of them call the same tools.
pub(crate) fn pick_tools<'a, T>(
    tools: &'a [T],
    name_of: impl Fn(&T) -> &str,
    last_user_text: &str,
    choice: &Choice,
    parallel: bool,
) -> Vec<&'a T> {
    let mut named: Vec<(usize, &T)> = tools
        .iter()
        .filter_map(|t| find_name(last_user_text, name_of(t)).map(|pos| (pos, t)))
        .collect();
    named.sort_by_key(|(pos, _)| *pos);
    let named: Vec<&T> = named.into_iter().map(|(_, t)| t).collect();
    match choice {
        Choice::Never => Vec::new(),
        Choice::Named(name) => tools
            .iter()
            .filter(|t| name_of(t) == name)
            .take(1)
            .collect(),
        Choice::Any => named
            .first()
            .copied()
            .or_else(|| tools.first())
            .into_iter()
            .collect(),
        Choice::Auto if parallel => named,
        Choice::Auto => named.into_iter().take(1).collect(),
    }
}

/// Cuts `tokens` before the earliest stop sequence, then to at most `limit` tokens.
pub(crate) fn limit_tokens(
    tokens: Vec<String>,
    stop: &[String],
    limit: Option<usize>,
) -> (Vec<String>, Finish) {
    let text: String = tokens.concat();
    let cut = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|pos| (pos, s)))
        .min_by_key(|(pos, _)| *pos);
    let (mut kept, mut finish) = match cut {
        None => (tokens, Finish::Done),
        Some((cut, sequence)) => {
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
            (kept, Finish::Stop(sequence.clone()))
        }
    };
    if let Some(limit) = limit {
        if kept.len() > limit {
            kept.truncate(limit);
            finish = Finish::Length;
        }
    }
    (kept, finish)
}

/// The answer for candidate `index` (0 unless a protocol asks for several).
pub(crate) fn answer(conv: &Conversation, index: usize) -> Answer {
    let mut rng = Rng::new(derive_seed(&conv.digest, "choice", index as u64));
    let tools = select_tools(conv);
    if !tools.is_empty() {
        let calls: Vec<Call> = tools
            .iter()
            .enumerate()
            .map(|(k, tool)| Call {
                name: tool.name.clone(),
                input: generate::value_for_schema(&tool.schema, &mut rng),
                seed: derive_seed(&conv.digest, "call", (index as u64) << 16 | k as u64),
            })
            .collect();
        let text = if conv.preamble && conv.choice == Choice::Auto {
            let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
            word_tokens(&format!(
                "I will use {} to answer that.",
                names.join(" and ")
            ))
        } else {
            Vec::new()
        };
        return Answer {
            text,
            calls,
            finish: Finish::Tools,
        };
    }
    let tokens = match &conv.format {
        OutFormat::JsonSchema(schema) => {
            fixed_tokens(&generate::value_for_schema(schema, &mut rng).to_string())
        }
        OutFormat::JsonObject => fixed_tokens(&generate::json_object_answer(&mut rng).to_string()),
        OutFormat::Text if conv.all_text.contains(MARKER_ECHO) => {
            let echoed = word_tokens(&strip_markers(&conv.last_user_text));
            if echoed.is_empty() {
                vec!["(empty)".to_string()]
            } else {
                echoed
            }
        }
        OutFormat::Text => {
            let len = len_marker(&conv.all_text).unwrap_or_else(|| 8 + rng.below(33) as usize);
            prose_tokens(&mut rng, len)
        }
    };
    let (text, finish) = limit_tokens(tokens, &conv.stop, conv.limit);
    Answer {
        text,
        calls: Vec::new(),
        finish,
    }
}

/// The prompt-token estimate, message by message, with the OpenAI chat's formula:
/// 3 per prompt; per message ceil(chars/4) + 4, plus 85 per image and ceil(JSON/4) for
/// any other part; per tool definition 8 + ceil(chars of its JSON / 4).
pub(crate) struct Tally {
    total: u64,
    chars: u64,
    extra: u64,
    open: bool,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            total: PROMPT_OVERHEAD,
            chars: 0,
            extra: 0,
            open: false,
        }
    }

    fn close(&mut self) {
        if self.open {
            self.total += self.chars.div_ceil(4) + MESSAGE_OVERHEAD + self.extra;
        }
        self.chars = 0;
        self.extra = 0;
        self.open = false;
    }

    /// Starts a new message (the system prompt counts as one).
    pub(crate) fn message(&mut self) {
        self.close();
        self.open = true;
    }

    pub(crate) fn text(&mut self, text: &str) {
        self.chars += text.chars().count() as u64;
    }

    pub(crate) fn image(&mut self) {
        self.extra += IMAGE_TOKENS;
    }

    /// Any other part (tool calls, tool results, documents): by the size of its JSON.
    pub(crate) fn json(&mut self, value: &Value) {
        self.extra += text_tokens(&canonical_json(value));
    }

    pub(crate) fn tool(&mut self, definition: &Value) {
        self.total += TOOL_OVERHEAD + text_tokens(&canonical_json(definition));
    }

    pub(crate) fn finish(mut self) -> u64 {
        self.close();
        self.total
    }
}

/// The digest of a native request body with the delivery-only fields (`paths`, each a
/// list of keys into nested objects) left out, plus `extra` (e.g. a model from the path).
pub(crate) fn digest_without(body: &Value, paths: &[&[&str]], extra: &str) -> Digest32 {
    let mut body = body.clone();
    for path in paths {
        remove_path(&mut body, path);
    }
    let mut text = canonical_json(&body);
    text.push('\n');
    text.push_str(extra);
    generate::sha256(text.as_bytes())
}

fn remove_path(value: &mut Value, path: &[&str]) {
    match path {
        [] => {}
        [last] => {
            if let Value::Object(map) = value {
                map.remove(*last);
            }
        }
        [first, rest @ ..] => {
            if let Some(child) = value.get_mut(*first) {
                remove_path(child, rest);
            }
        }
    }
}

/// Groups `tokens` into `chunks` pieces (default: one token per piece).
pub(crate) fn group_tokens(tokens: &[String], chunks: Option<u32>) -> Vec<String> {
    let Some(k) = chunks.filter(|k| *k > 0) else {
        return tokens.to_vec();
    };
    let k = (k as usize).min(tokens.len()).max(1);
    let per = tokens.len() / k;
    let extra = tokens.len() % k;
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for i in 0..k {
        let take = per + usize::from(i < extra);
        if take == 0 {
            continue;
        }
        out.push(tokens[start..start + take].concat());
        start += take;
    }
    out
}

/// Splits a JSON text into at least two fragments (when it has 2+ characters).
pub(crate) fn fragments(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 2 {
        return vec![text.to_string()];
    }
    let size = chars.len().div_ceil(3).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// True when `name` is a valid tool name for the strictest provider rules
/// (letters, digits, `_`, `-`; 1 to 64 characters).
pub(crate) fn valid_tool_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(last_user: &str, choice: Choice) -> Conversation {
        Conversation {
            digest: generate::sha256(last_user.as_bytes()),
            all_text: last_user.to_string(),
            last_user_text: last_user.to_string(),
            ends_with_tool_result: false,
            tools: vec![
                ToolSpec {
                    name: "get_weather".into(),
                    schema: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
                },
                ToolSpec {
                    name: "get_time".into(),
                    schema: json!({"type":"object"}),
                },
            ],
            choice,
            parallel: true,
            preamble: false,
            limit: None,
            stop: Vec::new(),
            format: OutFormat::Text,
        }
    }

    fn names(a: &Answer) -> Vec<&str> {
        a.calls.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn tool_selection_follows_the_choice() {
        let a = answer(&conv("get_time and get_weather", Choice::Auto), 0);
        assert_eq!(names(&a), ["get_time", "get_weather"]);
        assert_eq!(a.finish, Finish::Tools);
        assert!(a.text.is_empty());
        let mut c = conv("get_time and get_weather", Choice::Auto);
        c.parallel = false;
        c.preamble = true;
        let a = answer(&c, 0);
        assert_eq!(names(&a), ["get_time"]);
        assert_eq!(a.text(), "I will use get_time to answer that.");
        assert!(answer(&conv("nothing", Choice::Auto), 0).calls.is_empty());
        assert_eq!(
            names(&answer(&conv("nothing", Choice::Any), 0)),
            ["get_weather"]
        );
        assert_eq!(
            names(&answer(
                &conv("get_weather", Choice::Named("get_time".into())),
                0
            )),
            ["get_time"]
        );
        assert!(answer(&conv("get_weather", Choice::Never), 0)
            .calls
            .is_empty());
        let mut c = conv("get_weather", Choice::Any);
        c.ends_with_tool_result = true;
        assert!(answer(&c, 0).calls.is_empty());
        let a = answer(&conv("get_weather", Choice::Auto), 0);
        assert!(a.calls[0].input["city"].is_string());
    }

    #[test]
    fn stops_and_limits() {
        let tokens: Vec<String> = ["One", " two", " three", "."]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (t, f) = limit_tokens(tokens.clone(), &["hre".into(), "two".into()], None);
        assert_eq!(t.concat(), "One ");
        assert_eq!(f, Finish::Stop("two".into()));
        let (t, f) = limit_tokens(tokens.clone(), &["three".into()], Some(1));
        assert_eq!(t, ["One"]);
        assert_eq!(f, Finish::Length);
        let (t, f) = limit_tokens(tokens, &[], Some(4));
        assert_eq!(t.len(), 4);
        assert_eq!(f, Finish::Done);
    }

    #[test]
    fn markers_and_echo() {
        let mut c = conv("[[echo]] alpha [[len:3]] beta", Choice::Never);
        assert_eq!(answer(&c, 0).text(), "alpha  beta");
        c.all_text = "[[len:5]] hi".into();
        assert_eq!(answer(&c, 0).output_tokens(), 5);
        assert_eq!(cached_tokens("x [[cached]]", 41), 20);
        assert_eq!(cached_tokens("x", 41), 0);
        assert_eq!(strip_markers(" [[blocked]] a "), "a");
    }

    #[test]
    fn tally_matches_the_openai_formula() {
        let mut t = Tally::new();
        t.message();
        t.text("hello");
        assert_eq!(t.finish(), 9);
        let mut t = Tally::new();
        t.message();
        t.text("abcd");
        t.message();
        t.text("xyz");
        t.image();
        assert_eq!(t.finish(), 13 + IMAGE_TOKENS);
    }

    #[test]
    fn digest_ignores_listed_paths() {
        let a = json!({"m":1,"cfg":{"max":3,"t":0.5},"stream":true});
        let b = json!({"m":1,"cfg":{"max":9,"t":0.5}});
        let paths: &[&[&str]] = &[&["stream"], &["cfg", "max"]];
        assert_eq!(
            digest_without(&a, paths, "x"),
            digest_without(&b, paths, "x")
        );
        assert_ne!(
            digest_without(&a, paths, "x"),
            digest_without(&a, paths, "y")
        );
    }

    #[test]
    fn grouping() {
        let tokens: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
        assert_eq!(group_tokens(&tokens, Some(2)), ["t0t1t2", "t3t4"]);
        assert_eq!(group_tokens(&tokens, None).len(), 5);
        assert_eq!(fragments("{}"), ["{", "}"]);
        assert!(valid_tool_name("a_b-1", 64));
        assert!(!valid_tool_name("a b", 64));
    }
}

/// How a request asks for the rest of an answer it carries (see [`continuation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Continue {
    /// An assistant message with the answer so far, then a user message that starts
    /// with "Continue" (OpenAI-style protocols, which take no prefill).
    Instruction,
    /// A final assistant message the model continues (Anthropic, Bedrock).
    Prefill,
    /// A final assistant message with `prefix: true` (Mistral).
    Prefix,
}

/// The text of a message: its `content` (a string or text parts), or Gemini's `parts`.
fn turn_text(m: &Value) -> String {
    match m.get("parts").and_then(Value::as_array) {
        Some(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        None => generate::message_text(m),
    }
}

/// When `body` asks to continue an answer in `style`: the body without the turns that
/// carry it (the request whose answer it continues) and the answer so far. The turns
/// are `messages`, or Gemini's `contents` (whose assistant role is `model`).
pub(crate) fn continuation(body: &Value, style: Continue) -> Option<(Value, String)> {
    let key = if body.get("contents").is_some() {
        "contents"
    } else {
        "messages"
    };
    let messages = body.get(key)?.as_array()?;
    let role = |m: &Value| {
        m.get("role")
            .and_then(Value::as_str)
            .map(|r| if r == "model" { "assistant" } else { r }.to_owned())
    };
    let (carried, dropped) = match style {
        Continue::Instruction => {
            let [.., answer, ask] = messages.as_slice() else {
                return None;
            };
            let asks = role(ask).as_deref() == Some("user")
                && turn_text(ask)
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("continue");
            if !asks || answer.get("tool_calls").is_some_and(|c| !c.is_null()) {
                return None;
            }
            (answer, 2)
        }
        Continue::Prefill | Continue::Prefix => {
            let answer = messages.last()?;
            let marked = answer.get("prefix").and_then(Value::as_bool) == Some(true);
            if style == Continue::Prefix && !marked {
                return None;
            }
            (answer, 1)
        }
    };
    if role(carried).as_deref() != Some("assistant") {
        return None;
    }
    let text = turn_text(carried);
    if text.is_empty() {
        return None;
    }
    let mut base = body.clone();
    let kept = messages.len() - dropped;
    if kept == 0 {
        return None;
    }
    if let Some(Value::Array(m)) = base.get_mut(key) {
        m.truncate(kept);
    }
    Some((base, text))
}

/// The tokens of `tokens` after `prefix`, when their text starts with it (a token the
/// prefix ends inside is split).
pub(crate) fn after_prefix(tokens: &[String], prefix: &str) -> Option<Vec<String>> {
    if !tokens.concat().starts_with(prefix) {
        return None;
    }
    let mut out = Vec::new();
    let mut offset = 0usize;
    for t in tokens {
        let end = offset + t.len();
        if end <= prefix.len() {
            offset = end;
            continue;
        }
        if offset < prefix.len() {
            out.push(t.get(prefix.len() - offset..)?.to_string());
        } else {
            out.push(t.clone());
        }
        offset = end;
    }
    Some(out)
}

#[cfg(test)]
mod continuation_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn continuations_are_recognised_in_each_style() {
        let user = json!({"role": "user", "content": "Tell me"});
        let so_far = json!({"role": "assistant", "content": "Once upon"});
        let ask = json!({"role": "user", "content": "Continue your previous answer."});
        let body = json!({"model": "m", "messages": [user, so_far, ask]});
        let (base, text) = continuation(&body, Continue::Instruction).expect("instruction");
        assert_eq!(base["messages"], json!([user]));
        assert_eq!(text, "Once upon");
        assert!(continuation(&body, Continue::Prefill).is_none());

        let body = json!({"model": "m", "messages": [user, so_far]});
        assert!(continuation(&body, Continue::Prefill).is_some());
        assert!(
            continuation(&body, Continue::Prefix).is_none(),
            "no prefix: true"
        );
        assert!(continuation(&body, Continue::Instruction).is_none());
        let marked = json!({"role": "assistant", "content": "Once upon", "prefix": true});
        let body = json!({"model": "m", "messages": [user, marked]});
        assert!(continuation(&body, Continue::Prefix).is_some());
        // Gemini's contents, with the `model` role.
        let body = json!({"contents": [
            {"role": "user", "parts": [{"text": "Tell me"}]},
            {"role": "model", "parts": [{"text": "Once "}, {"text": "upon"}]},
            {"role": "user", "parts": [{"text": "Continue exactly there."}]}]});
        let (base, text) = continuation(&body, Continue::Instruction).expect("gemini");
        assert_eq!(text, "Once upon");
        assert_eq!(base["contents"].as_array().map(Vec::len), Some(1));
        // An ordinary conversation is not a continuation.
        let body = json!({"model": "m", "messages": [user, so_far, {"role": "user", "content": "Thanks"}]});
        assert!(continuation(&body, Continue::Instruction).is_none());
    }

    #[test]
    fn the_rest_after_a_prefix() {
        let tokens: Vec<String> = ["Once", " upon", " a", " time", "."]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        assert_eq!(
            after_prefix(&tokens, "Once upon"),
            Some(vec![" a".into(), " time".into(), ".".into()])
        );
        assert_eq!(
            after_prefix(&tokens, "Once up"),
            Some(vec!["on".into(), " a".into(), " time".into(), ".".into()])
        );
        assert_eq!(after_prefix(&tokens, "Twice"), None);
    }
}
