//! `[channels.NAME]`: one assistant on voice, chat and email, each with its own
//! profile. A profile is applied to a request before admission (system prompt, output
//! limits), steers routing (latency objectives) and checks the answer (`pii_output`).

use std::time::Duration;

use super::{err, path_key, raw, ConfigError};

/// Longest objective accepted: beyond an hour it is no objective, and every
/// duration the gateway sleeps on stays far from overflowing.
const MAX_SLO_MS: u64 = 3_600_000;
/// OpenAI's limit on stop sequences per request.
pub const MAX_STOP_SEQUENCES: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub name: String,
    /// Time-to-first-token objective.
    pub ttft_slo: Option<Duration>,
    /// Whole-answer objective.
    pub total_slo: Option<Duration>,
    /// Placed before the application's own messages.
    pub system_prompt: Option<String>,
    /// Most output tokens per answer.
    pub max_output_tokens: Option<u32>,
    /// Added to the request's own stop sequences.
    pub stop: Vec<String>,
    /// The PII guardrail on answers.
    pub pii_output: Option<PiiOutput>,
}

/// What the output guardrail does with personal data in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiOutput {
    /// Typed placeholders (`[EMAIL_1]`) replace each finding.
    Redact,
    /// The answer is withheld from the first finding and ends with `content_filter`.
    Block,
}

impl PiiOutput {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiOutput::Redact => "redact",
            PiiOutput::Block => "block",
        }
    }
}

impl Channel {
    /// Whether the channel changes what is sent upstream (then a pass-through of the
    /// client's own body would skip it).
    pub fn rewrites_request(&self) -> bool {
        self.system_prompt.is_some() || self.max_output_tokens.is_some() || !self.stop.is_empty()
    }
}

/// A channel name: it travels in a header and in report labels.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn validate_channel(name: &str, c: raw::RawChannel) -> Result<Channel, ConfigError> {
    let at = format!("channels.{}", path_key(name));
    if !valid_name(name) {
        return Err(err(
            at,
            "a channel name has 1 to 64 letters, digits, `-`, `_` or `.` (it is sent in the x-switchyard-channel header)",
        ));
    }
    let slo = |v: Option<u64>, field: &str| -> Result<Option<Duration>, ConfigError> {
        match v {
            None => Ok(None),
            Some(0) => Err(err(format!("{at}.{field}"), "must be greater than 0")),
            Some(ms) if ms > MAX_SLO_MS => Err(err(
                format!("{at}.{field}"),
                format!("must be at most {MAX_SLO_MS} (an hour)"),
            )),
            Some(ms) => Ok(Some(Duration::from_millis(ms))),
        }
    };
    let ttft_slo = slo(c.ttft_slo_ms, "ttft_slo_ms")?;
    let total_slo = slo(c.total_slo_ms, "total_slo_ms")?;
    if let (Some(first), Some(total)) = (ttft_slo, total_slo) {
        if total < first {
            return Err(err(
                format!("{at}.total_slo_ms"),
                "must not be less than ttft_slo_ms (the whole answer includes its first token)",
            ));
        }
    }
    if c.system_prompt
        .as_deref()
        .is_some_and(|p| p.trim().is_empty())
    {
        return Err(err(
            format!("{at}.system_prompt"),
            "must not be empty (omit it for none)",
        ));
    }
    if c.max_output_tokens == Some(0) {
        return Err(err(
            format!("{at}.max_output_tokens"),
            "must be greater than 0",
        ));
    }
    if c.stop.len() > MAX_STOP_SEQUENCES {
        return Err(err(
            format!("{at}.stop"),
            format!("at most {MAX_STOP_SEQUENCES} stop sequences"),
        ));
    }
    // Anthropic refuses whitespace-only stop sequences, and a channel is for every
    // provider.
    if let Some(i) = c.stop.iter().position(|s| s.trim().is_empty()) {
        return Err(err(
            format!("{at}.stop[{i}]"),
            "must contain a character other than whitespace (Anthropic refuses whitespace-only stop sequences)",
        ));
    }
    let pii_output = match c.pii_output.as_deref() {
        None | Some("off") => None,
        Some("redact") => Some(PiiOutput::Redact),
        Some("block") => Some(PiiOutput::Block),
        Some(other) => {
            return Err(err(
                format!("{at}.pii_output"),
                format!("unknown value `{other}`; expected \"off\", \"redact\" or \"block\""),
            ))
        }
    };
    Ok(Channel {
        name: name.to_owned(),
        ttft_slo,
        total_slo,
        system_prompt: c.system_prompt,
        max_output_tokens: c.max_output_tokens,
        stop: c.stop,
        pii_output,
    })
}
