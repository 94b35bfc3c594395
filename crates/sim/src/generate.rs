//! Deterministic content: request hashing, a small PRNG, prose, values for JSON Schemas
//! and token estimates. Everything here is a pure function of its inputs so that the same
//! request always gets the same answer.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// SplitMix64: tiny, fast and good enough to pick words; no external crate needed.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`0` when `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// In `lo..=hi` (returns `lo` when the range is empty).
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let pick = (self.next_u64() as u128) % span;
        (lo as i128 + pick as i128) as i64
    }

    /// In `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

/// Serializes `v` with object keys sorted, so hashes do not depend on key order (which
/// differs between clients and, with serde_json's `preserve_order`, between builds).
pub(crate) fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(child) = map.get(*k) {
                    write_canonical(child, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub(crate) type Digest32 = [u8; 32];

pub(crate) fn sha256(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

/// The hash that drives a chat answer. Fields that only shape *delivery* (streaming) or
/// cut the same answer short (limits, stop sequences, `n`) are left out, so that a
/// streamed answer equals the plain one and a truncated answer is a prefix of the full one.
pub(crate) fn chat_digest(body: &Value) -> Digest32 {
    const DELIVERY_ONLY: &[&str] = &[
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "n",
    ];
    let mut body = body.clone();
    if let Value::Object(map) = &mut body {
        for k in DELIVERY_ONLY {
            map.remove(*k);
        }
    }
    sha256(canonical_json(&body).as_bytes())
}

/// A seed derived from `digest` for one purpose (`label`) and position (`index`).
pub(crate) fn derive_seed(digest: &Digest32, label: &str, index: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(digest);
    h.update(label.as_bytes());
    h.update(index.to_le_bytes());
    let out: Digest32 = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_le_bytes(first)
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` alphanumeric characters drawn deterministically from `seed`.
pub(crate) fn alnum(seed: u64, len: usize) -> String {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize] as char)
        .collect()
}

/// The words prose is made of. Fixed so that tests can rely on them: every generated
/// sentence ends with `.`, and each word below can appear.
pub const VOCABULARY: &[&str] = &[
    "signal", "river", "lantern", "harbor", "meadow", "copper", "engine", "quiet", "bright",
    "orchard", "compass", "granite", "velvet", "timber", "falcon", "summit", "canvas", "ember",
    "glacier", "willow", "beacon", "circuit", "harvest", "marble", "pepper", "rocket", "saddle",
    "thunder", "violet", "window", "yellow", "anchor", "bridge", "cobalt", "feather", "garden",
    "horizon", "island", "kettle", "ladder", "mosaic", "nectar", "ocean", "pebble", "quartz",
    "ribbon", "shadow", "tundra", "valley", "walnut", "railway", "platform", "freight", "junction",
    "switch", "the", "a", "of", "and", "near", "over", "under", "with", "slowly",
];

/// Prose of exactly `len` tokens: words (each after the first with a leading space) and
/// full stops, starting with a capital and ending with `.` when `len >= 2`.
pub(crate) fn prose_tokens(rng: &mut Rng, len: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(len);
    let mut sentence_left = 0usize;
    while out.len() < len {
        let left = len - out.len();
        // The last token is always a full stop. A sentence also ends when its length runs
        // out, but only while there is room left for another word and the final stop.
        let end_sentence = if left == 1 {
            len >= 2
        } else {
            sentence_left == 0 && !out.is_empty() && left > 2
        };
        if end_sentence && out.last().is_some_and(|t| t != ".") {
            out.push(".".to_string());
            sentence_left = 0;
            continue;
        }
        if sentence_left == 0 {
            sentence_left = 4 + rng.below(7) as usize;
        }
        let word = rng.pick(VOCABULARY).copied().unwrap_or("signal");
        let starts_sentence = out.last().is_none_or(|t| t == ".");
        let word = if starts_sentence {
            capitalize(word)
        } else {
            word.to_string()
        };
        out.push(if out.is_empty() {
            word
        } else {
            format!(" {word}")
        });
        sentence_left -= 1;
    }
    out
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Splits text into word tokens that keep their leading whitespace, so that joining them
/// gives the text back.
pub(crate) fn word_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if in_word {
                out.push(std::mem::take(&mut current));
                in_word = false;
            }
        } else {
            in_word = true;
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Splits text into tokens of up to four characters (used for JSON output, which has no
/// useful word boundaries).
pub(crate) fn fixed_tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(4).map(|c| c.iter().collect()).collect()
}

/// ceil(chars / 4): the simulator's whole tokenizer.
pub(crate) fn text_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Tokens charged for each image part of a prompt.
pub(crate) const IMAGE_TOKENS: u64 = 85;
/// Overhead per message, per prompt and per tool definition.
pub(crate) const MESSAGE_OVERHEAD: u64 = 4;
pub(crate) const PROMPT_OVERHEAD: u64 = 3;
pub(crate) const TOOL_OVERHEAD: u64 = 8;

/// The prompt-token estimate: per message ceil(chars/4) + 4 (chars of the text content,
/// name and tool-call names and arguments), +85 per image part, other parts by the size
/// of their JSON; +3 per prompt; per tool definition 8 + ceil(chars of its JSON / 4).
pub(crate) fn prompt_tokens(messages: &[Value], tools: &[Value]) -> u64 {
    let mut total = PROMPT_OVERHEAD;
    for m in messages {
        let mut chars = 0u64;
        let mut extra = 0u64;
        let count = |s: &str| s.chars().count() as u64;
        match m.get("content") {
            Some(Value::String(s)) => chars += count(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            chars += part.get("text").and_then(Value::as_str).map_or(0, count);
                        }
                        Some("refusal") => {
                            chars += part.get("refusal").and_then(Value::as_str).map_or(0, count);
                        }
                        Some("image_url") => extra += IMAGE_TOKENS,
                        _ => extra += text_tokens(&canonical_json(part)),
                    }
                }
            }
            _ => {}
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            chars += count(name);
        }
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            for call in calls {
                let f = call.get("function");
                for key in ["name", "arguments"] {
                    chars += f
                        .and_then(|f| f.get(key))
                        .and_then(Value::as_str)
                        .map_or(0, count);
                }
            }
        }
        total += chars.div_ceil(4) + MESSAGE_OVERHEAD + extra;
    }
    for tool in tools {
        total += TOOL_OVERHEAD + text_tokens(&canonical_json(tool));
    }
    total
}

/// The text of a message's content: a string, or its text parts joined by newlines.
pub(crate) fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A small JSON object for `response_format: json_object`.
pub(crate) fn json_object_answer(rng: &mut Rng) -> Value {
    let words = 3 + rng.below(4) as usize;
    let answer: Vec<&str> = (0..words)
        .map(|_| rng.pick(VOCABULARY).copied().unwrap_or("signal"))
        .collect();
    json!({
        "answer": answer.join(" "),
        "confidence": (rng.below(100) as f64) / 100.0,
        "source": "switchyard-sim",
    })
}

/// Beyond this nesting depth, objects get only their required properties and arrays
/// their minimum length, so recursive schemas terminate.
const MAX_DEPTH: usize = 12;

/// A value valid against `schema` (the subset of JSON Schema that tool parameters and
/// structured outputs use: type/types, properties/required, items/prefixItems, enum,
/// const, anyOf/oneOf/allOf, $ref into the same document, string formats and length,
/// numeric bounds and multipleOf, array bounds and uniqueItems). `pattern` is not honoured.
pub(crate) fn value_for_schema(schema: &Value, rng: &mut Rng) -> Value {
    gen_value(schema, schema, rng, 0)
}

fn gen_value(schema: &Value, root: &Value, rng: &mut Rng, depth: usize) -> Value {
    let map = match schema {
        Value::Object(map) => map,
        // `true` (anything goes) or a malformed schema: a string is as good as anything.
        _ => return Value::String("value".to_string()),
    };
    if depth > MAX_DEPTH * 2 {
        // A cycle of $refs with nothing to stop it: give up on that branch.
        return Value::Null;
    }
    if let Some(target) = map
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| resolve_ref(root, r))
    {
        return gen_value(target, root, rng, depth + 1);
    }
    if let Some(c) = map.get("const") {
        return c.clone();
    }
    if let Some(Value::Array(options)) = map.get("enum") {
        if let Some(choice) = rng.pick(options) {
            return choice.clone();
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = map.get(key) {
            // Prefer a real value over null so that optional fields carry data. For oneOf
            // the first non-null branch is used; schemas whose branches overlap are rare
            // in tool parameters.
            let chosen = options
                .iter()
                .find(|o| !is_null_schema(o, root))
                .or_else(|| options.first());
            if let Some(option) = chosen {
                return gen_value(option, root, rng, depth + 1);
            }
        }
    }
    if let Some(Value::Array(parts)) = map.get("allOf") {
        let merged = merge_all_of(map, parts, root);
        return gen_value(&merged, root, rng, depth + 1);
    }

    match schema_type(map) {
        "null" => Value::Null,
        "boolean" => Value::Bool(rng.below(2) == 1),
        "integer" => gen_integer(map, rng),
        "number" => gen_number(map, rng),
        "array" => gen_array(map, root, rng, depth),
        "object" => gen_object(map, root, rng, depth),
        _ => gen_string(map, rng),
    }
}

/// The type to generate: the declared one (the first non-null of a list), else inferred.
fn schema_type(map: &Map<String, Value>) -> &str {
    match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .or_else(|| types.first().and_then(Value::as_str))
            .unwrap_or("string"),
        _ if map.contains_key("properties") || map.contains_key("additionalProperties") => "object",
        _ if map.contains_key("items") || map.contains_key("prefixItems") => "array",
        _ if map.contains_key("minimum") || map.contains_key("maximum") => "number",
        _ => "string",
    }
}

fn is_null_schema(schema: &Value, root: &Value) -> bool {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve_ref(root, r).unwrap_or(schema),
        None => schema,
    };
    schema.get("type").and_then(Value::as_str) == Some("null")
        || schema.get("const").is_some_and(Value::is_null)
}

/// Resolves a local reference (`#`, `#/$defs/Name`, `#/definitions/Name`, any JSON pointer).
pub(crate) fn resolve_ref<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

fn merge_all_of(own: &Map<String, Value>, parts: &[Value], root: &Value) -> Value {
    let mut merged = own.clone();
    merged.remove("allOf");
    let mut properties = match merged.remove("properties") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    let mut required: Vec<Value> = match merged.remove("required") {
        Some(Value::Array(r)) => r,
        _ => Vec::new(),
    };
    for part in parts {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(r) => resolve_ref(root, r).unwrap_or(part),
            None => part,
        };
        let Value::Object(part) = part else { continue };
        for (k, v) in part {
            match (k.as_str(), v) {
                ("properties", Value::Object(p)) => {
                    for (name, s) in p {
                        properties.entry(name.clone()).or_insert_with(|| s.clone());
                    }
                }
                ("required", Value::Array(r)) => {
                    for name in r {
                        if !required.contains(name) {
                            required.push(name.clone());
                        }
                    }
                }
                _ => {
                    merged.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    if !properties.is_empty() {
        merged.insert("properties".into(), Value::Object(properties));
    }
    if !required.is_empty() {
        merged.insert("required".into(), Value::Array(required));
    }
    Value::Object(merged)
}

fn gen_object(map: &Map<String, Value>, root: &Value, rng: &mut Rng, depth: usize) -> Value {
    let required: Vec<&str> = map
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Map::new();
    if let Some(Value::Object(properties)) = map.get("properties") {
        for (name, prop) in properties {
            // Every property is filled in (strict structured outputs require all of them);
            // deep inside recursive schemas only the required ones, so generation ends.
            if depth >= MAX_DEPTH && !required.contains(&name.as_str()) {
                continue;
            }
            out.insert(name.clone(), gen_value(prop, root, rng, depth + 1));
        }
    }
    // Required names without a property schema still have to be present.
    for name in &required {
        if !out.contains_key(*name) {
            out.insert((*name).to_string(), Value::String("value".into()));
        }
    }
    if out.is_empty() && depth < MAX_DEPTH {
        if let Some(extra @ Value::Object(_)) = map.get("additionalProperties") {
            out.insert("key".into(), gen_value(extra, root, rng, depth + 1));
        }
    }
    Value::Object(out)
}

fn gen_array(map: &Map<String, Value>, root: &Value, rng: &mut Rng, depth: usize) -> Value {
    let min = map.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
    let max = map
        .get("maxItems")
        .and_then(Value::as_u64)
        .map_or(min.max(3), |m| m as usize)
        .max(min);
    let len = if depth >= MAX_DEPTH {
        min
    } else {
        (1 + rng.below(3) as usize).clamp(min, max)
    };
    let prefix: &[Value] = match (map.get("prefixItems"), map.get("items")) {
        (Some(Value::Array(p)), _) => p,
        // Draft-4 tuple form: `items` as an array.
        (None, Some(Value::Array(p))) => p,
        _ => &[],
    };
    let item_schema = match map.get("items") {
        Some(s @ Value::Object(_)) | Some(s @ Value::Bool(_)) => Some(s),
        _ => None,
    };
    let unique = map.get("uniqueItems").and_then(Value::as_bool) == Some(true);
    let mut out: Vec<Value> = Vec::with_capacity(len);
    let mut attempts = 0;
    while out.len() < len.max(prefix.len().min(max)) && attempts < len * 8 + 8 {
        attempts += 1;
        let i = out.len();
        let v = match (prefix.get(i), item_schema) {
            (Some(s), _) => gen_value(s, root, rng, depth + 1),
            (None, Some(s)) => gen_value(s, root, rng, depth + 1),
            (None, None) => Value::String(
                rng.pick(VOCABULARY)
                    .copied()
                    .unwrap_or("signal")
                    .to_string(),
            ),
        };
        if unique && out.contains(&v) {
            continue;
        }
        out.push(v);
    }
    Value::Array(out)
}

fn gen_string(map: &Map<String, Value>, rng: &mut Rng) -> Value {
    let base = match map.get("format").and_then(Value::as_str) {
        Some("date-time") => format!(
            "2025-0{}-1{}T12:{:02}:00Z",
            1 + rng.below(9),
            rng.below(10),
            rng.below(60)
        ),
        Some("date") => format!("2025-0{}-1{}", 1 + rng.below(9), rng.below(10)),
        Some("time") => format!("12:{:02}:00", rng.below(60)),
        Some("email") => format!("user{}@example.com", rng.below(1000)),
        Some("uri") | Some("url") | Some("iri") => {
            format!("https://example.com/{}", rng.below(1000))
        }
        Some("hostname") => "example.com".to_string(),
        Some("ipv4") => format!("192.0.2.{}", 1 + rng.below(254)),
        Some("ipv6") => "2001:db8::1".to_string(),
        Some("uuid") => {
            let h = format!(
                "{:016x}{:016x}",
                rng.next_u64(),
                rng.next_u64() & 0x0fff_3fff_ffff_ffff
            );
            format!(
                "{}-{}-4{}-8{}-{}",
                &h[0..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            )
        }
        _ => {
            let words = 1 + rng.below(3) as usize;
            (0..words)
                .map(|_| rng.pick(VOCABULARY).copied().unwrap_or("signal"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let min = map.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
    let max = map
        .get("maxLength")
        .and_then(Value::as_u64)
        .map(|m| m as usize);
    let mut s = base;
    while s.chars().count() < min {
        s.push('x');
    }
    if let Some(max) = max {
        if s.chars().count() > max {
            s = s.chars().take(max).collect();
        }
    }
    Value::String(s)
}

/// Numeric bounds of a schema as (lower, upper, lower exclusive, upper exclusive),
/// understanding both the draft-4 boolean and the later numeric `exclusive*` forms.
fn bounds(map: &Map<String, Value>) -> (Option<f64>, Option<f64>, bool, bool) {
    let mut lo = map.get("minimum").and_then(Value::as_f64);
    let mut hi = map.get("maximum").and_then(Value::as_f64);
    let mut lo_ex = false;
    let mut hi_ex = false;
    match map.get("exclusiveMinimum") {
        Some(Value::Bool(true)) => lo_ex = true,
        Some(v) if v.is_number() => {
            let x = v.as_f64().unwrap_or(0.0);
            if lo.is_none_or(|l| x >= l) {
                lo = Some(x);
                lo_ex = true;
            }
        }
        _ => {}
    }
    match map.get("exclusiveMaximum") {
        Some(Value::Bool(true)) => hi_ex = true,
        Some(v) if v.is_number() => {
            let x = v.as_f64().unwrap_or(0.0);
            if hi.is_none_or(|h| x <= h) {
                hi = Some(x);
                hi_ex = true;
            }
        }
        _ => {}
    }
    (lo, hi, lo_ex, hi_ex)
}

fn gen_integer(map: &Map<String, Value>, rng: &mut Rng) -> Value {
    let (lo, hi, lo_ex, hi_ex) = bounds(map);
    let mut lo_i = lo.map(|l| {
        let c = l.ceil();
        if lo_ex && c == l {
            c as i64 + 1
        } else {
            c as i64
        }
    });
    let mut hi_i = hi.map(|h| {
        let f = h.floor();
        if hi_ex && f == h {
            f as i64 - 1
        } else {
            f as i64
        }
    });
    match (lo_i, hi_i) {
        (None, None) => {
            lo_i = Some(0);
            hi_i = Some(100);
        }
        (Some(l), None) => hi_i = Some(l.saturating_add(100)),
        (None, Some(h)) => lo_i = Some(h.saturating_sub(100)),
        _ => {}
    }
    let (lo_i, hi_i) = (lo_i.unwrap_or(0), hi_i.unwrap_or(100));
    let step = map
        .get("multipleOf")
        .and_then(Value::as_f64)
        .filter(|m| *m >= 1.0 && m.fract() == 0.0)
        .map(|m| m as i64);
    let value = match step {
        Some(step) => {
            let first = lo_i.div_euclid(step) + i64::from(lo_i.rem_euclid(step) != 0);
            let last = hi_i.div_euclid(step);
            rng.between(first, last.max(first)) * step
        }
        None => rng.between(lo_i, hi_i),
    };
    json!(value)
}

fn gen_number(map: &Map<String, Value>, rng: &mut Rng) -> Value {
    if let Some(step) = map
        .get("multipleOf")
        .and_then(Value::as_f64)
        .filter(|m| *m > 0.0)
    {
        // Multiples of a fractional step: choose an integer k and emit k × step.
        let (lo, hi, lo_ex, hi_ex) = bounds(map);
        let lo = lo.unwrap_or(0.0);
        let hi = hi.unwrap_or(lo + 100.0 * step);
        let mut first = (lo / step).ceil() as i64;
        if lo_ex && first as f64 * step <= lo {
            first += 1;
        }
        let mut last = (hi / step).floor() as i64;
        if hi_ex && last as f64 * step >= hi {
            last -= 1;
        }
        let k = rng.between(first, last.max(first));
        return json!(k as f64 * step);
    }
    let (lo, hi, lo_ex, hi_ex) = bounds(map);
    let (lo, hi) = match (lo, hi) {
        (None, None) => (0.0, 100.0),
        (Some(l), None) => (l, l + 100.0),
        (None, Some(h)) => (h - 100.0, h),
        (Some(l), Some(h)) => (l, h.max(l)),
    };
    // Two decimals read naturally; the clamps keep rounding inside exclusive bounds.
    let raw = lo + rng.unit() * (hi - lo);
    let mut v = (raw * 100.0).round() / 100.0;
    if v < lo || (lo_ex && v <= lo) {
        v = if lo_ex { lo + (hi - lo) / 2.0 } else { lo };
    }
    if v > hi || (hi_ex && v >= hi) {
        v = if hi_ex { lo + (hi - lo) / 2.0 } else { hi };
    }
    json!(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_check::validate;

    fn many_valid(schema: &Value) {
        for seed in 0..200 {
            let v = value_for_schema(schema, &mut Rng::new(seed));
            if let Err(e) = validate(schema, &v) {
                panic!("seed {seed}: {v} is not valid against {schema}: {e}");
            }
        }
    }

    #[test]
    fn rng_is_deterministic() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(7);
        let first = r.next_u64();
        assert_ne!(first, r.next_u64());
        for _ in 0..1000 {
            let x = r.between(-3, 3);
            assert!((-3..=3).contains(&x));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,2],"c":null}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"c":null,"d":[1,2]},"b":1}"#).expect("json");
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"d":[1,2]},"b":1}"#);
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn chat_digest_ignores_delivery_fields() {
        let plain = json!({"model":"m","messages":[{"role":"user","content":"hi"}]});
        let mut streamed = plain.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        streamed["max_tokens"] = json!(3);
        assert_eq!(chat_digest(&plain), chat_digest(&streamed));
        let mut other = plain.clone();
        other["temperature"] = json!(0.5);
        assert_ne!(chat_digest(&plain), chat_digest(&other));
    }

    #[test]
    fn prose_has_exact_length_and_shape() {
        for len in [1usize, 2, 3, 8, 17, 40] {
            for seed in 0..20 {
                let t = prose_tokens(&mut Rng::new(seed), len);
                assert_eq!(t.len(), len);
                let text: String = t.concat();
                assert!(
                    text.chars().next().is_some_and(char::is_uppercase),
                    "{text}"
                );
                if len >= 2 {
                    assert!(text.ends_with('.'), "{text}");
                }
                assert!(!text.contains(".."), "{text}");
                assert!(!text.contains("  "), "{text}");
            }
        }
    }

    #[test]
    fn word_tokens_round_trip() {
        let text = "  Hello,   wide\nworld STOPHERE tail";
        let t = word_tokens(text);
        assert_eq!(t.concat(), text);
        assert_eq!(t.len(), 5);
        assert_eq!(t[0], "  Hello,");
        assert_eq!(word_tokens(""), Vec::<String>::new());
    }

    #[test]
    fn fixed_tokens_split_on_chars() {
        let t = fixed_tokens("{\"é\":12345}");
        assert_eq!(t.concat(), "{\"é\":12345}");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn token_estimates() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        // 3 + (ceil(5/4) + 4) = 9
        let simple = vec![json!({"role":"user","content":"hello"})];
        assert_eq!(prompt_tokens(&simple, &[]), 9);
        // text parts count like strings; each image adds 85.
        let with_image = vec![json!({"role":"user","content":[
            {"type":"text","text":"hello"},
            {"type":"image_url","image_url":{"url":"https://example.com/a.png"}},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}
        ]})];
        assert_eq!(prompt_tokens(&with_image, &[]), 9 + 2 * IMAGE_TOKENS);
        // A tool definition adds 8 + ceil(len(canonical json)/4).
        let tool = json!({"type":"function","function":{"name":"f"}});
        let tool_len = canonical_json(&tool).chars().count() as u64;
        assert_eq!(
            prompt_tokens(&simple, std::slice::from_ref(&tool)),
            9 + 8 + tool_len.div_ceil(4)
        );
        // Two messages: 3 + (1+4) + (ceil(3/4)+4)
        let two = vec![
            json!({"role":"system","content":"abcd"}),
            json!({"role":"user","content":"xyz"}),
        ];
        assert_eq!(prompt_tokens(&two, &[]), 13);
    }

    #[test]
    fn schema_values_cover_common_keywords() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "even": {"type": "integer", "multipleOf": 2, "minimum": 3, "maximum": 9},
                "quarter": {"type": "number", "multipleOf": 0.25},
                "flag": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4, "uniqueItems": true},
                "when": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "format": "uuid"},
                "code": {"type": "string", "minLength": 30, "maxLength": 40},
                "short": {"type": "string", "maxLength": 2},
                "maybe": {"type": ["string", "null"]},
                "fixed": {"const": "always"},
                "nested": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                    "required": ["x", "y"],
                    "additionalProperties": false
                }
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": false
        });
        many_valid(&schema);
        let v = value_for_schema(&schema, &mut Rng::new(1));
        // All properties are present, not only the required ones.
        assert_eq!(v.as_object().map(|o| o.len()), Some(15));
        assert_eq!(v["fixed"], "always");
        assert!(v["maybe"].is_string());
    }

    #[test]
    fn schema_values_follow_refs_and_combinators() {
        // The shape pydantic emits for nested models and Optional fields.
        let schema = json!({
            "$defs": {
                "Address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "zip": {"type": "string", "minLength": 5}},
                    "required": ["street", "zip"],
                    "additionalProperties": false
                },
                "Color": {"enum": ["red", "green", "blue"], "type": "string"}
            },
            "type": "object",
            "properties": {
                "home": {"$ref": "#/$defs/Address"},
                "work": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
                "colors": {"type": "array", "items": {"$ref": "#/$defs/Color"}},
                "either": {"oneOf": [{"type": "integer", "minimum": 1000}, {"type": "string"}]},
                "both": {"allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}
                ]},
                "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "minItems": 2, "maxItems": 2}
            },
            "required": ["home", "work", "colors", "either", "both", "pair"],
            "additionalProperties": false
        });
        many_valid(&schema);
        let v = value_for_schema(&schema, &mut Rng::new(3));
        assert!(v["work"].is_object(), "optional fields carry a value: {v}");
        assert!(
            v["both"]["a"].is_i64() && v["both"]["b"].is_boolean(),
            "{v}"
        );
    }

    #[test]
    fn recursive_schema_terminates() {
        let schema = json!({
            "$defs": {"Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                },
                "required": ["name"]
            }},
            "$ref": "#/$defs/Node"
        });
        many_valid(&schema);
    }

    #[test]
    fn schema_generation_is_deterministic() {
        let schema =
            json!({"type":"object","properties":{"a":{"type":"string"},"b":{"type":"number"}}});
        assert_eq!(
            value_for_schema(&schema, &mut Rng::new(42)),
            value_for_schema(&schema, &mut Rng::new(42))
        );
        // An empty or missing schema still yields an object for tool arguments.
        assert_eq!(
            value_for_schema(&json!({"type":"object"}), &mut Rng::new(1)),
            json!({})
        );
    }
}
