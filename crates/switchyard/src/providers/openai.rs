//! OpenAI and every upstream that speaks its wire protocol: OpenAI itself, any
//! OpenAI-compatible server (vLLM, llama.cpp, Ollama…) and Azure OpenAI, which differs
//! only in its URL, its auth header and a few extra response fields (content filters)
//! that readers here ignore.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::lax::{self, ChunkReader};
use super::sse::SseDecoder;
use super::{Adapter, Endpoint, StreamDecoder, StreamProgress, Translated};
use crate::config::{AzureApi, Deployment, ProviderKind};
use crate::types::chat::{ChatRequest, EmbeddingsRequest, Role, StreamOptions};
use crate::types::ProviderError;
use crate::types::Usage;

/// The URL of `endpoint` at this deployment.
pub fn url(deployment: &Deployment, endpoint: Endpoint) -> String {
    match &deployment.provider.kind {
        ProviderKind::OpenAi { base_url } | ProviderKind::Mistral { base_url } => {
            format!("{base_url}/{}", endpoint.path())
        }
        // Azure's Responses API is not below a deployment: the deployment is the
        // body's `model`.
        ProviderKind::Azure {
            endpoint: base,
            api: AzureApi::Deployments { api_version },
        } if endpoint == Endpoint::Responses => {
            format!("{base}/openai/responses?api-version={api_version}")
        }
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
        // Native protocols have their own adapters (`providers::adapter`) and never
        // come here; their base URL is the least surprising answer.
        ProviderKind::Anthropic { base_url, .. }
        | ProviderKind::Bedrock { base_url, .. }
        | ProviderKind::Gemini { base_url, .. }
        | ProviderKind::Vertex { base_url, .. } => base_url.clone(),
    }
}

/// A ready-to-send request: URL, auth and body.
pub fn build(
    client: &super::upstream::Client,
    deployment: &Deployment,
    endpoint: Endpoint,
    body: Bytes,
    credential: Option<&super::auth::Credential>,
) -> super::upstream::RequestBuilder {
    // The URL is parsed once per deployment and endpoint, not per call.
    let slot = endpoint as usize;
    let req = match deployment.upstream.url(slot, || url(deployment, endpoint)) {
        Some(parsed) => client.post(parsed),
        None => client.post(url(deployment, endpoint)),
    };
    let req = req
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    // A run-time credential (Entra ID for Azure) is an OAuth2 bearer token.
    if let Some(super::auth::Credential::Bearer(token)) = credential {
        return req.bearer_auth(token.expose());
    }
    match deployment.upstream.auth(|| static_auth(deployment)) {
        Some((name, value)) => req.header(name.clone(), value.clone()),
        // A key that is no valid header value fails the call when it is sent, as it
        // always did, rather than going out without one.
        None => match &deployment.provider.api_key {
            Some(key) => req.header(http::header::AUTHORIZATION, key.expose()),
            None => req,
        },
    }
}

/// The header carrying a provider's static key, as its kind expects it; marked
/// sensitive so that no debug output shows it.
fn static_auth(deployment: &Deployment) -> Option<(http::HeaderName, HeaderValue)> {
    let key = deployment.provider.api_key.as_ref()?.expose();
    let (name, value) = match deployment.provider.kind {
        ProviderKind::OpenAi { .. }
        | ProviderKind::Mistral { .. }
        | ProviderKind::Bedrock { .. }
        | ProviderKind::Vertex { .. } => (http::header::AUTHORIZATION, format!("Bearer {key}")),
        ProviderKind::Azure { .. } => (http::HeaderName::from_static("api-key"), key.to_owned()),
        ProviderKind::Anthropic { .. } => {
            (http::HeaderName::from_static("x-api-key"), key.to_owned())
        }
        ProviderKind::Gemini { .. } => (
            http::HeaderName::from_static("x-goog-api-key"),
            key.to_owned(),
        ),
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// Classifies a non-success answer. `body` is the (bounded) error body, in OpenAI's
/// shape or another server's (see [`lax::error_parts`]); the status alone decides
/// whether it is retryable. An unknown model (`model_not_found`), an unknown Azure
/// deployment (`DeploymentNotFound`), any 404 or a redirect is the deployment's
/// misconfiguration.
pub fn status_error(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> ProviderError {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let lax::ErrorParts {
        message,
        param,
        code,
    } = lax::error_parts(content_type, body);
    if matches!(
        code.as_deref(),
        Some("model_not_found" | "DeploymentNotFound")
    ) {
        return ProviderError::misconfigured(status, message.as_deref());
    }
    if let Some(e) = ProviderError::misconfigured_status(status, message.as_deref()) {
        return e;
    }
    ProviderError::Status {
        status,
        retry_after: headers.get(RETRY_AFTER).cloned(),
        message,
        param,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct WireUsage {
    /// `None` when absent or null (some OpenAI-compatible servers send only part).
    #[serde(default)]
    pub(super) prompt_tokens: Option<u64>,
    #[serde(default)]
    pub(super) completion_tokens: Option<u64>,
    #[serde(default)]
    pub(super) total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens.unwrap_or(0),
            completion_tokens: u.completion_tokens.unwrap_or(0),
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            estimated: false,
            ..Usage::default()
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

/// Reads one `data:` payload of an OpenAI-style stream on its own (no stream state):
/// see [`ChunkReader::read`]. The payload is passed on as it is when it lacks nothing.
pub fn translate_chunk(data: Bytes) -> Result<Translated, ProviderError> {
    ChunkReader::new("").read(data)
}

/// Whether an OpenAI model name is of a reasoning family (o1, o3, o4-mini, gpt-5…),
/// which takes `max_completion_tokens` and refuses the legacy `max_tokens`. For Azure
/// the name is the deployment's, which by convention names the model it serves.
pub fn is_reasoning_model(name: &str) -> bool {
    // `openai/o3` as some routers and proxies spell it.
    let name = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    let o_series = ["o1", "o3", "o4"].iter().any(|family| {
        name.strip_prefix(family)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    });
    o_series || name.starts_with("gpt-5")
}

/// Puts the output limit (the client's, or the one a policy set) in the field this
/// upstream takes: reasoning models only take `max_completion_tokens`; OpenAI-
/// compatible servers know `max_tokens` (many ignore the newer field, leaving the
/// output unbounded); OpenAI and Azure otherwise get the field the client used.
/// `max_completion_tokens` wins when both are set, as OpenAI defines it.
fn fit_output_limit(req: &mut ChatRequest, deployment: &Deployment) {
    if is_reasoning_model(&deployment.upstream_model) {
        if let Some(n) = req.max_tokens.take() {
            req.max_completion_tokens.get_or_insert(n);
        }
        return;
    }
    let compatible_server = matches!(deployment.provider.kind, ProviderKind::OpenAi { .. })
        && !deployment.provider.openai_itself;
    if compatible_server {
        if let Some(n) = req.max_completion_tokens.take() {
            req.max_tokens = Some(n);
        }
    }
}

/// Whether the deployment is OpenAI's or Azure's own API, which refuse
/// `reasoning_effort` for models that do not reason (a compatible server may run a
/// reasoning model under any name, so it gets the field as sent).
fn openai_refuses_effort(deployment: &Deployment) -> bool {
    match &deployment.provider.kind {
        ProviderKind::OpenAi { .. } => deployment.provider.openai_itself,
        ProviderKind::Azure { .. } => true,
        _ => false,
    }
}

/// The request serialized without what an OpenAI-style upstream must not see: the
/// reasoning state other providers return on assistant turns (`thinking_blocks`,
/// `reasoning_content`: OpenAI refuses unknown message fields, and servers of the
/// DeepSeek kind refuse their own reasoning back) and, with `drop_effort`,
/// `reasoning_effort`. Taken out for the serialization and put back, because the same
/// request is rendered again for the next deployment when this one fails.
pub fn body_without_reasoning_state(
    req: &mut ChatRequest,
    drop_effort: bool,
) -> Result<Vec<u8>, ProviderError> {
    let effort = if drop_effort {
        req.extra.remove("reasoning_effort")
    } else {
        None
    };
    let mut taken: Vec<(usize, &'static str, Value)> = Vec::new();
    const STATE: [&str; 2] = ["thinking_blocks", "reasoning_content"];
    // Looked for first without a mutable borrow, which would drop the client's own
    // bytes of the messages (`types::chat::Messages`) for nothing.
    let carries_state = req
        .messages
        .iter()
        .any(|m| m.role == Role::Assistant && STATE.iter().any(|k| m.extra.contains_key(*k)));
    let messages = if carries_state {
        req.messages.iter_mut().collect()
    } else {
        Vec::new()
    };
    for (i, m) in messages.into_iter().enumerate() {
        if m.role != Role::Assistant || m.extra.is_empty() {
            continue;
        }
        for key in STATE {
            if let Some(v) = m.extra.remove(key) {
                taken.push((i, key, v));
            }
        }
    }
    // Sized for the messages' own bytes at once: a buffer that doubles as it is
    // written copied a 100 KB request about twice over.
    let mut body = Vec::with_capacity(req.messages.raw_len() + 256);
    let body = serde_json::to_writer(&mut body, req)
        .map(|()| body)
        .map_err(|e| ProviderError::Protocol(e.to_string()));
    for (i, key, v) in taken {
        if let Some(m) = req.messages.get_mut(i) {
            m.extra.insert(key.into(), v);
        }
    }
    if let Some(e) = effort {
        req.extra.insert("reasoning_effort".into(), e);
    }
    body
}

/// The adapter for OpenAI and Azure OpenAI: bodies pass through with the model name
/// swapped, answers are already in the canonical shape.
pub struct OpenAiAdapter;

impl Adapter for OpenAiAdapter {
    fn chat_body(
        &self,
        req: &mut ChatRequest,
        deployment: &Deployment,
        stream: bool,
    ) -> Result<Vec<u8>, ProviderError> {
        deployment.upstream_model.clone_into(&mut req.model);
        fit_output_limit(req, deployment);
        if stream {
            // Always ask for usage, so the ledger is right even when the client did
            // not; the relay hides the usage chunk from clients that did not ask.
            req.stream_options
                .get_or_insert_with(|| StreamOptions {
                    include_usage: None,
                    extra: Default::default(),
                })
                .include_usage = Some(true);
        }
        let drop_effort = matches!(
            deployment.provider.kind,
            ProviderKind::Azure { .. } | ProviderKind::OpenAi { .. }
        ) && !is_reasoning_model(&deployment.upstream_model)
            && openai_refuses_effort(deployment);
        body_without_reasoning_state(req, drop_effort)
    }

    fn embeddings_body(
        &self,
        req: &mut EmbeddingsRequest,
        deployment: &Deployment,
    ) -> Result<Vec<u8>, ProviderError> {
        deployment.upstream_model.clone_into(&mut req.model);
        serde_json::to_vec(req).map_err(|e| ProviderError::Protocol(e.to_string()))
    }

    fn request(
        &self,
        client: &super::upstream::Client,
        deployment: &Deployment,
        endpoint: Endpoint,
        _stream: bool,
        body: Bytes,
        credential: Option<&super::auth::Credential>,
    ) -> Result<super::upstream::RequestBuilder, ProviderError> {
        Ok(build(client, deployment, endpoint, body, credential))
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        status_error(status, headers, body)
    }

    fn response(
        &self,
        endpoint: Endpoint,
        deployment: &Deployment,
        body: Bytes,
    ) -> Result<(Bytes, Option<Usage>), ProviderError> {
        match endpoint {
            Endpoint::ChatCompletions => lax::complete_answer(body, &deployment.upstream_model),
            // A Responses answer is read by its ingress (`dispatch::NativeAnswer`).
            Endpoint::Embeddings | Endpoint::Responses => {
                let usage = response_usage(&body)?;
                Ok((body, usage))
            }
        }
    }

    fn is_stream(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }

    fn stream_decoder(&self, deployment: &Deployment) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStream {
            sse: SseDecoder::new(),
            chunks: ChunkReader::new(&deployment.upstream_model),
        })
    }
}

/// An OpenAI-style SSE stream: each `data:` payload is one item.
struct OpenAiStream {
    sse: SseDecoder,
    chunks: ChunkReader,
}

impl StreamDecoder for OpenAiStream {
    fn push(&mut self, bytes: &[u8]) {
        self.sse.push(bytes);
    }

    fn next(&mut self) -> Result<Option<Translated>, ProviderError> {
        match self.sse.next_event() {
            Ok(Some(event)) => self.chunks.read(event.data).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(ProviderError::Protocol(e.to_string())),
        }
    }

    fn has_partial(&self) -> bool {
        self.sse.has_partial()
    }

    fn progress(&self) -> Option<&StreamProgress> {
        Some(self.chunks.progress())
    }

    fn usage_chunk(&self, usage: &Usage) -> Option<Bytes> {
        Some(self.chunks.usage_chunk(usage))
    }

    fn fill_usage(&self, data: &Bytes, estimate: &Usage) -> Option<(Bytes, Usage)> {
        lax::chunk_with_usage(data, estimate)
    }
}

#[cfg(test)]
mod tests {
    use super::super::canonical::golden::deployment;
    use super::*;

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
        let client = crate::providers::upstream::test_client();
        let oa = deployment(
            ProviderKind::OpenAi {
                base_url: "http://h/v1".into(),
            },
            "gpt",
        );
        let req = build(&client, &oa, Endpoint::ChatCompletions, Bytes::new(), None)
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
        let req = build(&client, &az, Endpoint::ChatCompletions, Bytes::new(), None)
            .build()
            .expect("request");
        assert_eq!(req.headers()["api-key"], "k-123");
        assert!(!req.headers().contains_key("authorization"));
        // An Entra ID token replaces the api-key header.
        let token =
            crate::providers::auth::Credential::Bearer(crate::config::Secret::new("eyJ.entra"));
        let req = build(
            &client,
            &az,
            Endpoint::ChatCompletions,
            Bytes::new(),
            Some(&token),
        )
        .build()
        .expect("request");
        assert_eq!(req.headers()["authorization"], "Bearer eyJ.entra");
        assert!(!req.headers().contains_key("api-key"));
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
                estimated: false,
                ..Usage::default()
            }
        );
        assert!(response_usage(b"<html>").is_err());
    }

    #[test]
    fn chunk_translation_tolerates_azure_filters() {
        let azure_first = Bytes::from_static(
            br#"{"choices":[],"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#,
        );
        assert!(matches!(
            translate_chunk(azure_first).expect("ok"),
            Translated::Chunk {
                has_choices: false,
                usage: None,
                ..
            }
        ));
        let content = Bytes::from_static(
            br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null,"content_filter_results":{}}],"usage":null}"#,
        );
        match translate_chunk(content.clone()).expect("ok") {
            Translated::Chunk {
                data,
                has_choices,
                usage,
            } => {
                assert_eq!(data, content, "forwarded byte for byte");
                assert!(has_choices);
                assert_eq!(usage, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let usage = Bytes::from_static(
            br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        );
        match translate_chunk(usage).expect("ok") {
            Translated::Chunk {
                has_choices: false,
                usage: Some(u),
                ..
            } => assert_eq!(u.completion_tokens, 2),
            other => panic!("unexpected {other:?}"),
        }
        let err = Bytes::from_static(br#"{"error":{"message":"boom"}}"#);
        assert_eq!(
            translate_chunk(err.clone()).expect("ok"),
            Translated::Error(err)
        );
        assert_eq!(
            translate_chunk(Bytes::from_static(b"[DONE]")).expect("ok"),
            Translated::Done
        );
        assert!(translate_chunk(Bytes::from_static(b"{broken")).is_err());
    }

    #[test]
    fn chat_body_swaps_the_model_and_asks_for_stream_usage() {
        let mut req: ChatRequest = serde_json::from_str(
            r#"{"model":"support-chat","messages":[{"role":"user","content":"hi"}],"stream":true,"seed":3}"#,
        )
        .expect("request");
        let d = deployment(
            ProviderKind::OpenAi {
                base_url: "http://h/v1".into(),
            },
            "gpt-4o-mini",
        );
        let body = OpenAiAdapter.chat_body(&mut req, &d, true).expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["seed"], 3);
        let mut plain: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
                .expect("request");
        let body = OpenAiAdapter
            .chat_body(&mut plain, &d, false)
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(v.get("stream_options").is_none());
    }

    /// The body the adapter renders for `req` at a deployment of `model` on `kind`.
    fn rendered(kind: ProviderKind, model: &str, req: serde_json::Value) -> serde_json::Value {
        let mut req: ChatRequest = serde_json::from_value(req).expect("request");
        let body = OpenAiAdapter
            .chat_body(&mut req, &deployment(kind, model), false)
            .expect("body");
        serde_json::from_slice(&body).expect("json")
    }

    #[test]
    fn reasoning_families_are_recognised_by_name() {
        for name in [
            "o1",
            "o1-mini",
            "o3",
            "o3-mini-2025-01-31",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "GPT-5.1",
            "openai/o3",
        ] {
            assert!(is_reasoning_model(name), "{name}");
        }
        for name in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "o10x",
            "omni",
            "llama-3-70b",
        ] {
            assert!(!is_reasoning_model(name), "{name}");
        }
    }

    #[test]
    fn the_output_limit_goes_in_the_field_the_upstream_takes() {
        let openai = || ProviderKind::OpenAi {
            base_url: "https://api.openai.com/v1".into(),
        };
        let compatible = || ProviderKind::OpenAi {
            base_url: "http://127.0.0.1:8000/v1".into(),
        };
        let azure = || ProviderKind::Azure {
            endpoint: "https://r.openai.azure.com".into(),
            api: AzureApi::V1,
        };
        let legacy = serde_json::json!({"model": "m", "messages": [], "max_tokens": 7});
        let current = serde_json::json!({"model": "m", "messages": [], "max_completion_tokens": 7});
        let both = serde_json::json!({"model": "m", "messages": [], "max_tokens": 9, "max_completion_tokens": 7});
        // (kind, model, request) -> (max_tokens, max_completion_tokens) sent.
        let cases = [
            (openai(), "o3-mini", &legacy, None, Some(7)),
            (openai(), "gpt-5", &both, None, Some(7)),
            (azure(), "o4-mini", &legacy, None, Some(7)),
            (compatible(), "o1", &legacy, None, Some(7)),
            (openai(), "gpt-4o", &current, None, Some(7)),
            (openai(), "gpt-4o", &legacy, Some(7), None),
            (azure(), "gpt-4o", &current, None, Some(7)),
            (compatible(), "llama-3", &current, Some(7), None),
            (compatible(), "llama-3", &both, Some(7), None),
            (compatible(), "llama-3", &legacy, Some(7), None),
        ];
        for (kind, model, req, max_tokens, max_completion_tokens) in cases {
            let label = format!("{} {model} {req}", kind.label());
            let body = rendered(kind, model, req.clone());
            assert_eq!(body["max_tokens"].as_u64(), max_tokens, "{label}: {body}");
            assert_eq!(
                body["max_completion_tokens"].as_u64(),
                max_completion_tokens,
                "{label}: {body}"
            );
        }
    }

    #[test]
    fn unknown_models_deployments_and_redirects_are_misconfigurations() {
        let h = http::HeaderMap::new();
        let s = |n: u16| http::StatusCode::from_u16(n).expect("status");
        let cases = [
            ("openai 404", status_error(s(404), &h, br#"{"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#)),
            ("azure", status_error(s(404), &h, br#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#)),
            ("code at 400", status_error(s(400), &h, br#"{"error":{"message":"no","code":"model_not_found"}}"#)),
            ("bare 404", status_error(s(404), &h, b"404 page not found")),
            ("redirect", status_error(s(301), &h, b"")),
            ("numeric code", status_error(s(404), &h, br#"{"error":{"message":"gone","code":404}}"#)),
        ];
        for (what, e) in &cases {
            assert_eq!(e.class(), "misconfigured", "{what}: {e:?}");
            assert!(e.retryable(), "{what}: another deployment may serve it");
            assert!(!e.may_pass(), "{what}: no second round");
        }
        let client = status_error(
            s(400),
            &h,
            br#"{"error":{"message":"bad","code":"invalid_value"}}"#,
        );
        assert_eq!(client.class(), "upstream_4xx");
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
