//! Channel profiles at the ingress: which channel a request belongs to (the
//! `x-switchyard-channel` header where the key's policy allows it, else the policy's
//! own channel), and what the profile changes in the request before admission (its
//! system prompt first, output limits). Routing's part (latency objectives) is in
//! dispatch; the answer's check (`pii_output`) is `governance::output`.

use std::sync::Arc;

use http::HeaderMap;

use super::error::ApiError;
use super::Generation;
use crate::config::{Channel, MAX_STOP_SEQUENCES};
use crate::governance::Principal;
use crate::types::chat::{ChatMessage, ChatRequest, MessageContent, Role, Stop};

/// The header a request names its channel with.
pub const CHANNEL_HEADER: &str = "x-switchyard-channel";

/// The channel of a request, or none.
pub(crate) fn resolve(
    state: &Generation,
    key: &Principal,
    headers: &HeaderMap,
) -> Result<Option<Arc<Channel>>, ApiError> {
    let asked = match headers.get(CHANNEL_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map(str::trim).map_err(|_| {
            ApiError::invalid_request(
                Some(CHANNEL_HEADER.to_owned()),
                format!("The `{CHANNEL_HEADER}` header is not a channel name."),
            )
        })?),
    };
    let Some(name) = asked.or(key.policy.channel.as_deref()) else {
        return Ok(None);
    };
    let Some(channel) = state.config.channel(name) else {
        let message = if asked.is_some() {
            // The header is the caller's: echoed only as long as a name can be.
            let shown: String = name.chars().take(64).collect();
            format!("Unknown channel `{shown}` in the `{CHANNEL_HEADER}` header.")
        } else {
            // A channel removed from the configuration that a stored policy still names.
            format!("This API key's policy names the channel `{name}`, which is not configured.")
        };
        return Err(ApiError::invalid_request(
            Some(CHANNEL_HEADER.to_owned()),
            message,
        ));
    };
    if asked.is_some() && !key.policy.allows_channel(name) {
        return Err(ApiError::channel_not_allowed(CHANNEL_HEADER, name));
    }
    Ok(Some(channel.clone()))
}

/// The profile's changes to the request: its system prompt before the application's
/// messages, its output limit (a larger or missing `max_tokens` is capped; the
/// adapters move it to the field their upstream takes), its stop sequences added to
/// the request's own.
pub(super) fn apply(channel: &Channel, req: &mut ChatRequest) -> Result<(), ApiError> {
    if let Some(prompt) = &channel.system_prompt {
        prepend_system_prompt(req, prompt);
    }
    if let Some(limit) = channel.max_output_tokens {
        match (&mut req.max_completion_tokens, &mut req.max_tokens) {
            (Some(n), _) | (None, Some(n)) => *n = (*n).min(limit),
            (None, None) => req.max_tokens = Some(limit),
        }
    }
    if !channel.stop.is_empty() {
        let mut stop: Vec<String> = channel.stop.clone();
        let own = match req.stop.take() {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        for s in own {
            if !stop.contains(&s) {
                stop.push(s);
            }
        }
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid_request(
                Some("stop".to_owned()),
                format!(
                    "The channel `{}` adds {} stop sequences; with the request's own that is {}, above the limit of {MAX_STOP_SEQUENCES}.",
                    channel.name,
                    channel.stop.len(),
                    stop.len()
                ),
            ));
        }
        req.stop = Some(Stop::Many(stop));
    }
    Ok(())
}

/// A channel's system prompt as the request's first message, before the application's
/// own (every translator gathers system messages wherever they are).
pub(crate) fn prepend_system_prompt(req: &mut ChatRequest, prompt: &str) {
    req.messages.insert(
        0,
        ChatMessage::new(Role::System, MessageContent::Text(prompt.to_owned())),
    );
}

/// Whether a request begins a conversation turn: its last message is the user's (a
/// tool result or an assistant prefill continues the turn before it). The channel
/// report's cost per turn divides by these.
pub(super) fn begins_turn(req: &ChatRequest) -> bool {
    req.messages
        .last()
        .is_some_and(|m| matches!(m.role, Role::User))
}
