//! The provider routes: recognises the native protocols' paths (with an optional
//! instance prefix), reads and records the request, and hands it to the protocol's
//! module. Every other path goes to the OpenAI and Azure dispatcher unchanged.

use std::sync::Arc;

use axum::body::{to_bytes, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::Response;
use serde_json::Value;

use crate::plumbing::{parse_body, percent_decode, record, MAX_BODY_BYTES};
use crate::{anthropic, bedrock, gemini, mistral, openai, Shared};

/// First path segments that start an API path; an instance prefix may come before them,
/// so none of them can be an instance name.
pub(crate) const API_ROOTS: &[&str] = &[
    "v1", "v1beta", "v1beta1", "openai", "model", "mistral", "_sim",
];

/// A native protocol's endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Native {
    /// Anthropic `POST /v1/messages` (or `/v1/messages/count_tokens`).
    Anthropic { count_tokens: bool },
    /// Bedrock `POST /model/{modelId}/converse[-stream]`.
    Bedrock { model: String, stream: bool },
    /// Gemini `POST /{v1,v1beta}/models/{model}:{method}` or Vertex
    /// `POST /{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}`.
    Gemini {
        model: String,
        method: GeminiMethod,
        vertex: bool,
    },
    /// Mistral `POST /mistral/v1/chat/completions`.
    Mistral,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GeminiMethod {
    Generate,
    Stream,
    CountTokens,
}

/// A native request, read and recorded.
pub(crate) struct NativeRequest {
    pub(crate) shared: Arc<Shared>,
    pub(crate) instance: String,
    pub(crate) parts: Parts,
    /// The body exactly as received (SigV4 hashes it).
    pub(crate) bytes: Bytes,
    pub(crate) body: Value,
}

/// Splits a path into its instance and native endpoint; `None` for every other path.
pub(crate) fn parse_native(path: &str) -> Option<(String, Native)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let is_root = |s: &str| API_ROOTS.contains(&s);
    let (instance, rest) = match segments.as_slice() {
        [first, ..] if is_root(first) => (String::new(), &segments[..]),
        [first, second, ..] if is_root(second) => (percent_decode(first), &segments[1..]),
        _ => return None,
    };
    let native = match rest {
        ["v1", "messages"] => Native::Anthropic {
            count_tokens: false,
        },
        ["v1", "messages", "count_tokens"] => Native::Anthropic { count_tokens: true },
        ["model", id, op @ ("converse" | "converse-stream")] => Native::Bedrock {
            model: percent_decode(id),
            stream: *op == "converse-stream",
        },
        ["v1" | "v1beta", "models" | "tunedModels", target] => {
            let (model, method) = gemini_target(target)?;
            Native::Gemini {
                model,
                method,
                vertex: false,
            }
        }
        ["v1" | "v1beta" | "v1beta1", "projects", _, "locations", _, "publishers", "google", "models", target] =>
        {
            let (model, method) = gemini_target(target)?;
            Native::Gemini {
                model,
                method,
                vertex: true,
            }
        }
        ["mistral", "v1", "chat", "completions"] => Native::Mistral,
        _ => return None,
    };
    Some((instance, native))
}

/// `gemini-2.0-flash:generateContent` → the model and the method.
fn gemini_target(segment: &str) -> Option<(String, GeminiMethod)> {
    let decoded = percent_decode(segment);
    let (model, method) = decoded.rsplit_once(':')?;
    let method = match method {
        "generateContent" => GeminiMethod::Generate,
        "streamGenerateContent" => GeminiMethod::Stream,
        "countTokens" => GeminiMethod::CountTokens,
        _ => return None,
    };
    Some((model.to_string(), method))
}

/// The fallback handler: every path that is not a control route comes here.
pub(crate) async fn dispatch(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let Some((instance, native)) = parse_native(req.uri().path()) else {
        return openai::dispatch(State(shared), req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return crate::plumbing::response(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "application/json",
                axum::body::Body::from(r#"{"error":{"message":"The request body is too large."}}"#),
                &[],
            )
        }
    };
    let body = parse_body(&bytes);
    record(&shared, &instance, &parts, &body);
    tracing::debug!(%instance, method = %parts.method, path = %parts.uri.path(), ?native, "sim request");
    let req = NativeRequest {
        shared,
        instance,
        parts,
        bytes,
        body,
    };
    match native {
        Native::Anthropic { count_tokens } => anthropic::handle(req, count_tokens).await,
        Native::Bedrock { model, stream } => bedrock::handle(req, model, stream).await,
        Native::Gemini {
            model,
            method,
            vertex,
        } => gemini::handle(req, model, method, vertex).await,
        Native::Mistral => mistral::handle(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_routes() {
        assert_eq!(
            parse_native("/v1/messages"),
            Some((
                String::new(),
                Native::Anthropic {
                    count_tokens: false
                }
            ))
        );
        assert_eq!(
            parse_native(
                "/primary/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
            ),
            Some((
                "primary".to_string(),
                Native::Bedrock {
                    model: "us.anthropic.claude-3-5-sonnet-20241022-v2:0".into(),
                    stream: true
                }
            ))
        );
        assert_eq!(
            parse_native("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
            Some((
                String::new(),
                Native::Gemini {
                    model: "gemini-2.0-flash".into(),
                    method: GeminiMethod::Stream,
                    vertex: false
                }
            ))
        );
        assert_eq!(
            parse_native(
                "/b/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
            ),
            Some((
                "b".to_string(),
                Native::Gemini {
                    model: "gemini-2.5-pro".into(),
                    method: GeminiMethod::Generate,
                    vertex: true
                }
            ))
        );
        assert_eq!(
            parse_native("/x/mistral/v1/chat/completions"),
            Some(("x".to_string(), Native::Mistral))
        );
        // OpenAI and Azure paths are not native.
        assert_eq!(parse_native("/v1/chat/completions"), None);
        assert_eq!(parse_native("/v1/models/gpt-4o"), None);
        assert_eq!(parse_native("/primary/openai/v1/models"), None);
        assert_eq!(parse_native("/v1beta/models/gemini:unknownMethod"), None);
    }
}
