//! Reasoning models: which simulated models think, the signatures they hand out for their
//! reasoning state, and the checks that make a client send that state back.
//!
//! # Model rules (one table: [`RULES`])
//!
//! | name pattern | family | what the simulator does |
//! |---|---|---|
//! | `gemini-3*` | [`Family::Gemini3`] | always thinks; `thoughtSignature` on the first `functionCall` part of each answer; requires it back in the current tool loop; `thinkingLevel` (or `thinkingBudget`) |
//! | `gemini-2.5*` | [`Family::Gemini25`] | thinks only with `thinkingConfig.thinkingBudget` ≠ 0; no signatures; `thinkingLevel` refused |
//! | `*claude*` | [`Family::Claude`] | thinks only with `thinking` (Anthropic) or `additionalModelRequestFields.thinking` (Bedrock); generation from the name (see [`claude_generation`]) |
//! | `o1*`, `o3*`, `o4*`, `gpt-5*` | [`Family::OpenAiReasoning`] | always reasons; `reasoning_effort` accepted |
//!
//! Every other name is [`Family::Plain`]: it never thinks, and OpenAI/Azure refuse
//! `reasoning_effort` for it.
//!
//! # Signatures
//!
//! A signature is standard base64 (with padding) of
//! `"sy" | 1 | kind | len(model) | model | nonce (8 bytes) | MAC (16 bytes)`, where the MAC
//! is the first 16 bytes of HMAC-SHA256 under a secret drawn once per process over
//! `kind | model | 0 | nonce | content`. `kind` is the issuing protocol ([`Kind`]), so a
//! signature only verifies for the same protocol, the same model name and the same
//! content (Anthropic and Bedrock: the thinking text, verbatim; Gemini: the function
//! name). The URL-safe alphabet and missing padding are accepted when verifying (SDKs
//! re-encode bytes fields).

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::generate::{derive_seed, prose_tokens, sha256, Digest32, Rng};

/// The value Google documents for a `thoughtSignature` the client cannot supply (a tool
/// loop begun by another model): Gemini 3 skips validation for it.
pub(crate) const GEMINI_SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// True for the skip value, sent as is or base64-encoded (an SDK that holds the
/// signature as bytes encodes `b"skip_thought_signature_validator"`).
pub(crate) fn is_gemini_skip(signature: &str) -> bool {
    signature == GEMINI_SKIP_SIGNATURE
        || decode(signature).is_some_and(|raw| raw == GEMINI_SKIP_SIGNATURE.as_bytes())
}

/// Prompt marker: a Claude answer with thinking also carries a `redacted_thinking` block
/// (Bedrock: `reasoningContent.redactedContent`).
pub(crate) const MARKER_REDACTED: &str = "[[redacted_thinking]]";

/// What a model name says about its reasoning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Gemini3,
    Gemini25,
    Claude,
    OpenAiReasoning,
    Plain,
}

/// One row of the model table: a pattern with `*` at either end (or none).
pub(crate) struct Rule {
    pub(crate) pattern: &'static str,
    pub(crate) family: Family,
}

/// The model table, first match wins.
pub(crate) const RULES: &[Rule] = &[
    Rule {
        pattern: "gemini-3*",
        family: Family::Gemini3,
    },
    Rule {
        pattern: "gemini-2.5*",
        family: Family::Gemini25,
    },
    Rule {
        pattern: "*claude*",
        family: Family::Claude,
    },
    Rule {
        pattern: "o1*",
        family: Family::OpenAiReasoning,
    },
    Rule {
        pattern: "o3*",
        family: Family::OpenAiReasoning,
    },
    Rule {
        pattern: "o4*",
        family: Family::OpenAiReasoning,
    },
    Rule {
        pattern: "gpt-5*",
        family: Family::OpenAiReasoning,
    },
];

fn matches(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(rest), _) if rest.ends_with('*') => {
            name.contains(rest.strip_suffix('*').unwrap_or(rest))
        }
        (Some(rest), _) => name.ends_with(rest),
        (None, Some(prefix)) => name.starts_with(prefix),
        (None, None) => name == pattern,
    }
}

/// The family of `model` (case-insensitive).
pub(crate) fn family(model: &str) -> Family {
    let name = model.to_ascii_lowercase();
    RULES
        .iter()
        .find(|r| matches(r.pattern, &name))
        .map_or(Family::Plain, |r| r.family)
}

/// The Claude generation in a model name: the first number after `claude-` and the next
/// one when it is below 100 (`claude-opus-4-7` → (4, 7), `claude-3-7-sonnet-20250219` →
/// (3, 7), `anthropic.claude-opus-4-20250514-v1:0` → (4, 0),
/// `claude-haiku-4-5@20251001` → (4, 5)). `None` for names without one.
pub(crate) fn claude_generation(model: &str) -> Option<(u32, u32)> {
    let lower = model.to_ascii_lowercase();
    let start = lower.find("claude-")? + "claude-".len();
    let rest = lower.get(start..)?;
    let numbers: Vec<u64> = rest
        .split('-')
        .filter_map(|segment| {
            let digits: String = segment.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .collect();
    let major = u32::try_from(*numbers.first()?).ok()?;
    let minor = numbers
        .get(1)
        .filter(|n| **n < 100)
        .map_or(0, |n| u32::try_from(*n).unwrap_or(0));
    Some((major, minor))
}

/// The protocol that issued a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Anthropic,
    Bedrock,
    Gemini,
    Vertex,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Anthropic => b'a',
            Kind::Bedrock => b'b',
            Kind::Gemini => b'g',
            Kind::Vertex => b'v',
        }
    }
}

const MAGIC: &[u8] = b"sy\x01";
const MAC_LEN: usize = 16;

fn secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let marker = 0u8;
        let seed = format!(
            "{now}:{}:{:p}",
            std::process::id(),
            std::ptr::addr_of!(marker)
        );
        sha256(seed.as_bytes())
    })
}

fn mac(kind: Kind, model: &str, nonce: &[u8], content: &[u8]) -> Vec<u8> {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret()) else {
        return Vec::new();
    };
    m.update(&[kind.byte()]);
    m.update(model.as_bytes());
    m.update(&[0]);
    m.update(nonce);
    m.update(content);
    let out = m.finalize().into_bytes();
    out.iter().take(MAC_LEN).copied().collect()
}

/// A signature for `content`, issued by `kind` for `model`; `seed` makes it unique.
pub(crate) fn sign(kind: Kind, model: &str, seed: u64, content: &str) -> String {
    let nonce = seed.to_le_bytes();
    let model_bytes: &[u8] = model.as_bytes();
    let model_bytes = model_bytes.get(..model_bytes.len().min(255)).unwrap_or(&[]);
    let mut raw = Vec::with_capacity(MAGIC.len() + 2 + model_bytes.len() + 8 + MAC_LEN);
    raw.extend_from_slice(MAGIC);
    raw.push(kind.byte());
    raw.push(model_bytes.len() as u8);
    raw.extend_from_slice(model_bytes);
    raw.extend_from_slice(&nonce);
    let model_text = String::from_utf8_lossy(model_bytes);
    raw.extend(mac(kind, &model_text, &nonce, content.as_bytes()));
    STANDARD.encode(raw)
}

fn decode(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim();
    STANDARD.decode(trimmed).ok().or_else(|| {
        let unpadded = trimmed
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_");
        URL_SAFE_NO_PAD.decode(unpadded).ok()
    })
}

/// True when `signature` was issued by this process, by `kind`, for `model` and `content`.
pub(crate) fn verify(signature: &str, kind: Kind, model: &str, content: &str) -> bool {
    let Some(raw) = decode(signature) else {
        return false;
    };
    let Some(rest) = raw.strip_prefix(MAGIC) else {
        return false;
    };
    let (Some(&k), Some(&len)) = (rest.first(), rest.get(1)) else {
        return false;
    };
    let len = usize::from(len);
    let (Some(name), Some(nonce), Some(tag)) = (
        rest.get(2..2 + len),
        rest.get(2 + len..2 + len + 8),
        rest.get(2 + len + 8..),
    ) else {
        return false;
    };
    k == kind.byte()
        && name == model.as_bytes()
        && tag.len() == MAC_LEN
        && mac(kind, model, nonce, content.as_bytes()) == tag
}

/// The content a redacted thinking block's data stands for (signed like a thought).
pub(crate) const REDACTED_CONTENT: &str = "redacted thinking";

/// The thought text of an answer: 12 to 27 tokens of prose derived from the request.
pub(crate) fn thought_tokens(digest: &Digest32) -> Vec<String> {
    let mut rng = Rng::new(derive_seed(digest, "thinking", 0));
    let len = 12 + rng.below(16) as usize;
    prose_tokens(&mut rng, len)
}

/// Tokens a redacted thinking block costs.
pub(crate) const REDACTED_TOKENS: u64 = 16;

/// Claude's thinking configuration, as requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Thinking {
    Off,
    /// `{"type": "enabled", "budget_tokens": N}`
    Manual,
    /// `{"type": "adaptive"}`
    Adaptive,
}

impl Thinking {
    pub(crate) fn on(self) -> bool {
        self != Thinking::Off
    }
}

/// Reads Claude's `thinking` object (Anthropic top level, Bedrock
/// `additionalModelRequestFields.thinking`) and applies the model's rules: manual thinking
/// needs `budget_tokens` ≥ 1024 and < `max_tokens` and is refused from generation 4.7 on;
/// adaptive exists from generation 4.6; nothing thinks before 3.7; forced tool choice
/// is refused with either. Errors are Anthropic's messages.
pub(crate) fn claude_thinking(
    thinking: Option<&serde_json::Value>,
    model: &str,
    max_tokens: Option<u64>,
    forced_tool: bool,
) -> Result<Thinking, String> {
    use serde_json::Value;
    let Some(thinking) = thinking.filter(|v| !v.is_null()) else {
        return Ok(Thinking::Off);
    };
    if !thinking.is_object() {
        return Err("thinking: Input should be a valid dictionary".to_string());
    }
    let generation = claude_generation(model);
    let parsed = match thinking.get("type").and_then(Value::as_str) {
        Some("disabled") => return Ok(Thinking::Off),
        Some("enabled") => {
            let budget = match thinking.get("budget_tokens") {
                None | Some(Value::Null) => {
                    return Err("thinking.enabled.budget_tokens: Field required".to_string())
                }
                Some(v) => match v.as_i64() {
                    Some(n) => n,
                    None => {
                        return Err(
                            "thinking.enabled.budget_tokens: Input should be a valid integer"
                                .to_string(),
                        )
                    }
                },
            };
            if generation.is_some_and(|g| g >= (4, 7)) {
                return Err(format!(
                    "thinking.type.enabled is not supported for model {model}. Use \
                     thinking.type.adaptive instead."
                ));
            }
            if budget < 1024 {
                return Err(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                        .to_string(),
                );
            }
            if let Some(max) = max_tokens {
                if u64::try_from(budget).unwrap_or(0) >= max {
                    return Err(
                        "`max_tokens` must be greater than `thinking.budget_tokens`.".to_string(),
                    );
                }
            }
            Thinking::Manual
        }
        Some("adaptive") => {
            if generation.is_some_and(|g| g < (4, 6)) {
                return Err(format!(
                    "thinking.type.adaptive is not supported for model {model}. Use \
                     thinking.type.enabled with budget_tokens instead."
                ));
            }
            Thinking::Adaptive
        }
        Some(other) => {
            return Err(format!(
                "thinking: Input tag '{other}' found using 'type' does not match any of the \
                 expected tags: 'adaptive', 'disabled', 'enabled'"
            ))
        }
        None => return Err("thinking.type: Field required".to_string()),
    };
    if generation.is_some_and(|g| g < (3, 7)) {
        return Err(format!("{model} does not support thinking."));
    }
    if forced_tool {
        return Err("Thinking may not be enabled when tool_choice forces tool use.".to_string());
    }
    Ok(parsed)
}

/// The message of the tool-loop rule: the assistant turn before the final tool results
/// must start with its thinking block. `at` is e.g. `messages.1.content.0.type`.
pub(crate) fn missing_thinking_message(at: &str, found: &str) -> String {
    format!(
        "{at}: Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` \
         is enabled, a final `assistant` message must start with a thinking block (preceeding \
         the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include \
         thinking blocks from previous turns. To avoid this requirement, disable `thinking`."
    )
}

/// Reasoning tokens an OpenAI reasoning model spends per choice at each effort.
pub(crate) fn openai_reasoning_tokens(effort: &str) -> u64 {
    match effort {
        "minimal" => 8,
        "low" => 64,
        "high" => 512,
        _ => 192,
    }
}

/// The efforts OpenAI's chat completions accept.
pub(crate) const EFFORTS: &[&str] = &["minimal", "low", "medium", "high"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_table() {
        assert_eq!(family("gemini-3-pro-preview"), Family::Gemini3);
        assert_eq!(family("gemini-3.1-flash"), Family::Gemini3);
        assert_eq!(family("gemini-2.5-flash"), Family::Gemini25);
        assert_eq!(family("gemini-2.0-flash"), Family::Plain);
        assert_eq!(family("claude-sonnet-4-5"), Family::Claude);
        assert_eq!(family("us.anthropic.claude-opus-4-7-v1:0"), Family::Claude);
        assert_eq!(family("o4-mini"), Family::OpenAiReasoning);
        assert_eq!(family("gpt-5-mini"), Family::OpenAiReasoning);
        assert_eq!(family("gpt-4o-mini"), Family::Plain);
        assert_eq!(claude_generation("claude-opus-4-7"), Some((4, 7)));
        assert_eq!(
            claude_generation("claude-3-7-sonnet-20250219"),
            Some((3, 7))
        );
        assert_eq!(
            claude_generation("anthropic.claude-opus-4-20250514-v1:0"),
            Some((4, 0))
        );
        assert_eq!(claude_generation("claude-haiku-4-5@20251001"), Some((4, 5)));
        assert_eq!(claude_generation("m"), None);
    }

    #[test]
    fn signatures_bind_kind_model_and_content() {
        let s = sign(Kind::Anthropic, "claude-sonnet-4-5", 7, "I think.");
        assert!(verify(&s, Kind::Anthropic, "claude-sonnet-4-5", "I think."));
        assert!(!verify(
            &s,
            Kind::Anthropic,
            "claude-sonnet-4-5",
            "I think!"
        ));
        assert!(!verify(&s, Kind::Anthropic, "claude-haiku-4-5", "I think."));
        assert!(!verify(&s, Kind::Bedrock, "claude-sonnet-4-5", "I think."));
        assert!(!verify("bm90IG91cnM=", Kind::Anthropic, "m", "x"));
        assert!(!verify("%%%", Kind::Anthropic, "m", "x"));
        // Re-encoded with the URL-safe alphabet and without padding: still ours.
        let raw = STANDARD.decode(&s).unwrap_or_default();
        assert!(verify(
            &URL_SAFE_NO_PAD.encode(raw),
            Kind::Anthropic,
            "claude-sonnet-4-5",
            "I think."
        ));
    }

    #[test]
    fn claude_thinking_rules() {
        use serde_json::json;
        let manual = json!({"type": "enabled", "budget_tokens": 2048});
        assert_eq!(
            claude_thinking(Some(&manual), "claude-sonnet-4-5", Some(4096), false),
            Ok(Thinking::Manual)
        );
        assert!(
            claude_thinking(Some(&manual), "claude-sonnet-4-5", Some(2048), false)
                .err()
                .unwrap_or_default()
                .contains("must be greater than `thinking.budget_tokens`")
        );
        assert!(claude_thinking(
            Some(&json!({"type":"enabled","budget_tokens":1000})),
            "claude-sonnet-4-5",
            Some(4096),
            false
        )
        .err()
        .unwrap_or_default()
        .contains("greater than or equal to 1024"));
        assert!(
            claude_thinking(Some(&manual), "claude-opus-4-7", Some(4096), false)
                .err()
                .unwrap_or_default()
                .contains("not supported")
        );
        let adaptive = json!({"type": "adaptive"});
        assert_eq!(
            claude_thinking(Some(&adaptive), "claude-opus-4-7", Some(10), false),
            Ok(Thinking::Adaptive)
        );
        assert!(claude_thinking(Some(&adaptive), "claude-sonnet-4-5", None, false).is_err());
        assert!(claude_thinking(Some(&manual), "claude-3-5-haiku", Some(4096), false).is_err());
        assert!(
            claude_thinking(Some(&manual), "claude-sonnet-4-5", Some(4096), true)
                .err()
                .unwrap_or_default()
                .contains("tool_choice forces tool use")
        );
        assert_eq!(
            claude_thinking(
                Some(&json!({"type":"disabled"})),
                "claude-sonnet-4-5",
                None,
                true
            ),
            Ok(Thinking::Off)
        );
    }
}
