//! OpenAI and every upstream that speaks its wire protocol: OpenAI itself, any
//! OpenAI-compatible server (vLLM, llama.cpp, Ollama…) and Azure OpenAI, which differs
//! only in its URL, its auth header and a few extra response fields (content filters)
//! that readers here ignore.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;

use super::{Endpoint, ProviderError};
use crate::config::{AzureApi, Deployment, ProviderKind};
use crate::ledger::Usage;

/// The URL of `endpoint` at this deployment.
pub fn url(deployment: &Deployment, endpoint: Endpoint) -> String {
    match &deployment.provider.kind {
        ProviderKind::OpenAi { base_url } => format!("{base_url}/{}", endpoint.path()),
        ProviderKind::Azure {
            endpoint: base,
            api: AzureApi::Deployments { api_version },
        } => format!(
            "{base}/openai/deployments/{}/{}?api-version={api_version}",
            deployment.upstream_model,
            endpoint.path()
        ),
        ProviderKind::Azure {
            endpoint: base,
            api: AzureApi::V1,
        } => format!("{base}/openai/v1/{}", endpoint.path()),
    }
}

/// A ready-to-send request: URL, auth and body.
pub fn build(
    client: &reqwest::Client,
    deployment: &Deployment,
    endpoint: Endpoint,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(url(deployment, endpoint))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    if let Some(key) = &deployment.provider.api_key {
        req = match deployment.provider.kind {
            ProviderKind::OpenAi { .. } => req.bearer_auth(key.expose()),
            ProviderKind::Azure { .. } => req.header("api-key", key.expose()),
        };
    }
    req
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    param: Option<String>,
}

/// Classifies a non-success answer. `body` is the (bounded) error body.
pub fn status_error(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> ProviderError {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.error);
    let (message, param) = match parsed {
        Some(e) => (e.message, e.param),
        None => (None, None),
    };
    ProviderError::Status {
        status,
        retry_after: headers.get(RETRY_AFTER).cloned(),
        message,
        param,
    }
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            estimated: false,
        }
    }
}

/// What the gateway reads of a complete (non-stream) response; the body itself is
/// forwarded unchanged.
#[derive(Debug, Deserialize)]
struct ResponseSummary {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Reads the usage of a non-stream chat or embeddings response, and checks that the
/// body is a JSON object.
pub fn response_usage(body: &[u8]) -> Result<Option<Usage>, ProviderError> {
    let summary: ResponseSummary = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Protocol(format!("response is not JSON: {e}")))?;
    Ok(summary.usage.map(Usage::from))
}

/// What the relay reads of one stream chunk.
#[derive(Debug, Deserialize)]
struct ChunkSummary {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// One stream event, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// A chunk that carries choices (content, tool calls, finish reason).
    Choices,
    /// A chunk without choices: the usage chunk, or Azure's prompt-filter chunk.
    NoChoices { usage: Option<Usage> },
    /// The upstream reported an error inside the stream.
    Error,
    /// `[DONE]`
    Done,
}

/// Classifies a `data:` payload of an OpenAI-style stream.
pub fn classify_chunk(data: &Bytes) -> Result<(ChunkKind, Option<Usage>), ProviderError> {
    if data.as_ref() == b"[DONE]" {
        return Ok((ChunkKind::Done, None));
    }
    let c: ChunkSummary = serde_json::from_slice(data)
        .map_err(|e| ProviderError::Protocol(format!("stream chunk is not JSON: {e}")))?;
    if c.error.is_some() {
        return Ok((ChunkKind::Error, None));
    }
    let usage = c.usage.map(Usage::from);
    match c.choices {
        Some(choices) if !choices.is_empty() => Ok((ChunkKind::Choices, usage)),
        _ => Ok((ChunkKind::NoChoices { usage }, usage)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Capabilities, Price, Provider, Quota, Secret, Timeouts};
    use std::sync::Arc;
    use std::time::Duration;

    fn deployment(kind: ProviderKind, model: &str) -> Deployment {
        Deployment {
            index: 0,
            name: "d".into(),
            provider: Arc::new(Provider {
                name: "p".into(),
                kind,
                api_key: Some(Secret::new("k-123")),
            }),
            upstream_model: model.into(),
            region: None,
            price: Price::default(),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                first_byte: Duration::from_secs(1),
                total: Duration::from_secs(2),
            },
            quota: Quota::default(),
            capabilities: Capabilities {
                tools: true,
                vision: true,
                json_schema: true,
                context_window: None,
                max_output: None,
            },
            data_tags: Vec::new(),
        }
    }

    #[test]
    fn urls_per_provider_kind() {
        let oa = deployment(
            ProviderKind::OpenAi {
                base_url: "http://h/v1".into(),
            },
            "gpt",
        );
        assert_eq!(
            url(&oa, Endpoint::ChatCompletions),
            "http://h/v1/chat/completions"
        );
        let classic = deployment(
            ProviderKind::Azure {
                endpoint: "https://r.openai.azure.com".into(),
                api: AzureApi::Deployments {
                    api_version: "2024-10-21".into(),
                },
            },
            "prod-mini",
        );
        assert_eq!(
            url(&classic, Endpoint::Embeddings),
            "https://r.openai.azure.com/openai/deployments/prod-mini/embeddings?api-version=2024-10-21"
        );
        let v1 = deployment(
            ProviderKind::Azure {
                endpoint: "https://r.openai.azure.com".into(),
                api: AzureApi::V1,
            },
            "prod-mini",
        );
        assert_eq!(
            url(&v1, Endpoint::ChatCompletions),
            "https://r.openai.azure.com/openai/v1/chat/completions"
        );
    }

    #[test]
    fn auth_header_per_provider_kind() {
        let client = reqwest::Client::new();
        let oa = deployment(
            ProviderKind::OpenAi {
                base_url: "http://h/v1".into(),
            },
            "gpt",
        );
        let req = build(&client, &oa, Endpoint::ChatCompletions, vec![])
            .build()
            .expect("request");
        assert_eq!(req.headers()["authorization"], "Bearer k-123");
        assert!(!req.headers().contains_key("api-key"));
        let az = deployment(
            ProviderKind::Azure {
                endpoint: "http://r".into(),
                api: AzureApi::V1,
            },
            "m",
        );
        let req = build(&client, &az, Endpoint::ChatCompletions, vec![])
            .build()
            .expect("request");
        assert_eq!(req.headers()["api-key"], "k-123");
        assert!(!req.headers().contains_key("authorization"));
    }

    #[test]
    fn usage_with_cached_tokens() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":7,"total_tokens":107,"prompt_tokens_details":{"cached_tokens":64}}}"#;
        let u = response_usage(body).expect("json").expect("usage");
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 100,
                completion_tokens: 7,
                cached_tokens: 64,
                estimated: false
            }
        );
        assert!(response_usage(b"<html>").is_err());
    }

    #[test]
    fn chunk_classification_tolerates_azure_filters() {
        let azure_first = Bytes::from_static(
            br#"{"choices":[],"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#,
        );
        assert_eq!(
            classify_chunk(&azure_first).expect("ok").0,
            ChunkKind::NoChoices { usage: None }
        );
        let content = Bytes::from_static(
            br#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null,"content_filter_results":{}}],"usage":null}"#,
        );
        assert_eq!(classify_chunk(&content).expect("ok").0, ChunkKind::Choices);
        let usage = Bytes::from_static(
            br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        );
        let (kind, u) = classify_chunk(&usage).expect("ok");
        assert!(matches!(kind, ChunkKind::NoChoices { usage: Some(_) }));
        assert_eq!(u.map(|u| u.completion_tokens), Some(2));
        let err = Bytes::from_static(br#"{"error":{"message":"boom"}}"#);
        assert_eq!(classify_chunk(&err).expect("ok").0, ChunkKind::Error);
        assert_eq!(
            classify_chunk(&Bytes::from_static(b"[DONE]"))
                .expect("ok")
                .0,
            ChunkKind::Done
        );
        assert!(classify_chunk(&Bytes::from_static(b"{broken")).is_err());
    }

    #[test]
    fn status_errors_keep_retry_after_and_message() {
        let mut headers = http::HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let e = status_error(
            http::StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        match &e {
            ProviderError::Status {
                retry_after,
                message,
                ..
            } => {
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"7"[..]));
                assert_eq!(message.as_deref(), Some("slow down"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.retryable());
        assert_eq!(e.class(), "rate_limited");
        let bad = status_error(http::StatusCode::BAD_REQUEST, &http::HeaderMap::new(), b"x");
        assert!(!bad.retryable());
    }
}
