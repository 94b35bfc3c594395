//! Token counts, as providers report them and the gateway bills them.

/// Token counts for a request or an attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens billed by the provider (includes cached ones).
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Portion of `prompt_tokens` served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Portion of `completion_tokens` spent on reasoning (OpenAI's
    /// `completion_tokens_details.reasoning_tokens`; Gemini's thoughts, added to the
    /// completion by its translator).
    pub reasoning_tokens: u64,
    /// Portion of `prompt_tokens` written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`; translators add it, and cache reads, into
    /// `prompt_tokens`).
    pub cache_write_tokens: u64,
    /// True when the counts were estimated by the gateway because the provider
    /// reported none (e.g. a stream cut before its usage chunk).
    pub estimated: bool,
}
