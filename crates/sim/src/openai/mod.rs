//! The OpenAI and Azure OpenAI wire APIs: routing (with instance prefixes), auth, errors
//! and the response plumbing shared by chat and embeddings.
//!
//! Azure is served by the same code with a [`Dialect`] flag: Azure differs from OpenAI
//! only in paths, auth header, the `api-version` query and the content-filter fields.

mod chat;
mod chat_request;
mod embeddings;
mod responses;

pub(crate) use chat_request::{parse_chat, ChatRequest, Format, ToolChoice};

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::plumbing::{
    new_request_id, parse_body, percent_decode, query_param, record, stall_of, timed_body,
    unix_now, Event, Payload, ABORT_GRACE, MAX_BODY_BYTES,
};
use crate::{Fault, FaultKind, Shared};
/// The models `GET /v1/models` lists (chat accepts any name).
const MODELS: &[(&str, u64)] = &[
    ("gpt-4o", 1_715_367_049),
    ("gpt-4o-mini", 1_721_172_741),
    ("gpt-4.1", 1_744_316_542),
    ("text-embedding-3-small", 1_705_948_997),
    ("text-embedding-3-large", 1_705_953_180),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    OpenAi,
    /// `/openai/deployments/{deployment}/…?api-version=…`
    AzureClassic,
    /// `/openai/v1/…`
    AzureV1,
}

impl Dialect {
    fn is_azure(self) -> bool {
        self != Dialect::OpenAi
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat { deployment: Option<String> },
    Embeddings { deployment: Option<String> },
    ListModels,
    GetModel(String),
    Responses,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    dialect: Dialect,
    endpoint: Endpoint,
    method: Method,
}

/// Splits a path into its instance (`""` without a prefix) and the API route, if known.
fn parse_route(path: &str) -> (String, Option<Route>) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let is_api_root = |s: &str| s == "v1" || s == "openai";
    let (instance, rest) = match segments.as_slice() {
        [first, ..] if is_api_root(first) => (String::new(), &segments[..]),
        [first, second, ..] if is_api_root(second) => (percent_decode(first), &segments[1..]),
        _ => return (String::new(), None),
    };
    let route = |dialect, endpoint, method| {
        Some(Route {
            dialect,
            endpoint,
            method,
        })
    };
    let route = match rest {
        ["v1", "chat", "completions"] => route(
            Dialect::OpenAi,
            Endpoint::Chat { deployment: None },
            Method::POST,
        ),
        ["v1", "embeddings"] => route(
            Dialect::OpenAi,
            Endpoint::Embeddings { deployment: None },
            Method::POST,
        ),
        ["v1", "models"] => route(Dialect::OpenAi, Endpoint::ListModels, Method::GET),
        ["v1", "models", id @ ..] => route(
            Dialect::OpenAi,
            Endpoint::GetModel(percent_decode(&id.join("/"))),
            Method::GET,
        ),
        ["openai", "deployments", d, "chat", "completions"] => route(
            Dialect::AzureClassic,
            Endpoint::Chat {
                deployment: Some(percent_decode(d)),
            },
            Method::POST,
        ),
        ["openai", "deployments", d, "embeddings"] => route(
            Dialect::AzureClassic,
            Endpoint::Embeddings {
                deployment: Some(percent_decode(d)),
            },
            Method::POST,
        ),
        ["v1", "responses"] => route(Dialect::OpenAi, Endpoint::Responses, Method::POST),
        // Azure's Responses API: the preview path (`api-version` required) and v1.
        ["openai", "responses"] => route(Dialect::AzureClassic, Endpoint::Responses, Method::POST),
        ["openai", "v1", "responses"] => route(Dialect::AzureV1, Endpoint::Responses, Method::POST),
        ["openai", "models"] => route(Dialect::AzureClassic, Endpoint::ListModels, Method::GET),
        ["openai", "models", id] => route(
            Dialect::AzureClassic,
            Endpoint::GetModel(percent_decode(id)),
            Method::GET,
        ),
        ["openai", "v1", "chat", "completions"] => route(
            Dialect::AzureV1,
            Endpoint::Chat { deployment: None },
            Method::POST,
        ),
        ["openai", "v1", "embeddings"] => route(
            Dialect::AzureV1,
            Endpoint::Embeddings { deployment: None },
            Method::POST,
        ),
        ["openai", "v1", "models"] => route(Dialect::AzureV1, Endpoint::ListModels, Method::GET),
        ["openai", "v1", "models", id] => route(
            Dialect::AzureV1,
            Endpoint::GetModel(percent_decode(id)),
            Method::GET,
        ),
        _ => None,
    };
    (instance, route)
}

// ---------------------------------------------------------------------------------------
// Errors

/// An error response: status, JSON body and the retry hints to send with it.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Value,
    retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The human-readable message of the error body.
    pub(crate) fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The OpenAI error shape; all four keys are always present.
    fn openai(
        status: StatusCode,
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> ApiError {
        ApiError {
            status,
            body: json!({"error": {
                "message": message.into(),
                "type": kind,
                "param": param,
                "code": code,
            }}),
            retry_after_s: None,
        }
    }

    fn invalid(message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> ApiError {
        ApiError::openai(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            param,
            code,
        )
    }

    /// Azure's own gateway-level shape: a string `code` and a message, no `type`/`param`.
    fn azure(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({"error": {"code": code, "message": message.into()}}),
            retry_after_s: None,
        }
    }
}

/// The error a `kind: error` fault produces, in the shape of the dialect's provider.
fn fault_error(dialect: Dialect, fault: &Fault, model: &str) -> ApiError {
    let status_code = fault.status.unwrap_or(500);
    let status = StatusCode::from_u16(status_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = fault.retry_after_s.or((status_code == 429).then_some(1));
    let mut err = match status_code {
        429 if dialect.is_azure() => ApiError::azure(
            status,
            "429",
            format!(
                "Requests to the chat completions operation of deployment '{model}' have exceeded \
                 the simulated rate limit. Retry after {} seconds.",
                retry_after.unwrap_or(1)
            ),
        ),
        429 => ApiError::openai(
            status,
            format!(
                "Rate limit reached for {model} (simulated) on requests per min (RPM). \
                 Please try again in {}s.",
                retry_after.unwrap_or(1)
            ),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        400 => ApiError::invalid("Simulated bad request.", None, None),
        401 => ApiError::openai(
            status,
            "Simulated authentication failure.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        403 => ApiError::openai(
            status,
            "Simulated permission failure.",
            "invalid_request_error",
            None,
            Some("permission_denied"),
        ),
        404 => ApiError::openai(
            status,
            format!("The model '{model}' does not exist (simulated)."),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ),
        500 => ApiError::openai(
            status,
            "The server had an error processing your request (simulated).",
            "server_error",
            None,
            Some("server_error"),
        ),
        502 | 503 => ApiError::openai(
            status,
            "The engine is overloaded right now (simulated); try again later.",
            "server_error",
            None,
            Some("service_unavailable"),
        ),
        504 => ApiError::openai(
            status,
            "The request timed out upstream (simulated).",
            "server_error",
            None,
            Some("timeout"),
        ),
        s if s >= 500 => ApiError::openai(
            status,
            format!("Simulated server error (status {s})."),
            "server_error",
            None,
            None,
        ),
        s => ApiError::openai(
            status,
            format!("Simulated error (status {s})."),
            "invalid_request_error",
            None,
            None,
        ),
    };
    err.retry_after_s = retry_after;
    if let Some(kind) = &fault.error_type {
        err.body["error"]["code"] = json!(kind);
    }
    err
}

// ---------------------------------------------------------------------------------------
// Response helpers

/// Per-request context for building responses.
struct Ctx {
    shared: Arc<Shared>,
    instance: String,
    dialect: Dialect,
    request_id: String,
}

impl Ctx {
    /// Headers every API response carries, error or not.
    fn common_headers(&self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put("x-request-id", &self.request_id);
        put("x-ratelimit-limit-requests", "10000");
        put("x-ratelimit-remaining-requests", "9999");
        put("x-ratelimit-limit-tokens", "30000000");
        put("x-ratelimit-remaining-tokens", "29999000");
        put("x-ratelimit-reset-requests", "6ms");
        put("x-ratelimit-reset-tokens", "0s");
        if self.dialect.is_azure() {
            put("apim-request-id", &self.request_id);
            put("x-ms-region", "Simulated Region");
        }
    }

    fn json(&self, status: StatusCode, body: &Value) -> Response {
        self.bytes_response(status, "application/json", Body::from(body.to_string()))
    }

    fn bytes_response(&self, status: StatusCode, content_type: &str, body: Body) -> Response {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(content_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        self.common_headers(headers);
        response
    }

    fn error(&self, err: ApiError) -> Response {
        let mut response = self.json(err.status, &err.body);
        if let Some(secs) = err.retry_after_s {
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            if self.dialect.is_azure() {
                // Azure also sends the millisecond form, which the SDKs read first.
                headers.insert(
                    HeaderName::from_static("retry-after-ms"),
                    HeaderValue::from(secs.saturating_mul(1000)),
                );
            }
        }
        response
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch

/// The fallback handler: every path that is not a control route comes here.
pub(crate) async fn dispatch(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let (instance, route) = parse_route(&path);
    let dialect = route.as_ref().map_or(Dialect::OpenAi, |r| r.dialect);
    let ctx = Ctx {
        request_id: new_request_id(&shared),
        shared,
        instance,
        dialect,
    };
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ctx.error(ApiError::openai(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is too large.",
                "invalid_request_error",
                None,
                None,
            ))
        }
    };
    let body = parse_body(&bytes);
    record(&ctx.shared, &ctx.instance, &parts, &body);
    tracing::debug!(instance = %ctx.instance, method = %parts.method, %path, "sim request");

    let Some(route) = route else {
        return ctx.error(ApiError::openai(
            StatusCode::NOT_FOUND,
            format!("Invalid URL ({} {path})", parts.method),
            "invalid_request_error",
            None,
            None,
        ));
    };
    if parts.method != route.method {
        return ctx.error(ApiError::openai(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "Method {} is not allowed on {path}; use {}.",
                parts.method, route.method
            ),
            "invalid_request_error",
            None,
            None,
        ));
    }
    if route.dialect == Dialect::AzureClassic {
        if let Err(e) = check_api_version(query.as_deref()) {
            return ctx.error(e);
        }
        // The Responses API came with 2025-03-01-preview.
        let version = query_param(query.as_deref(), "api-version").unwrap_or_default();
        if route.endpoint == Endpoint::Responses && version < "2025-03-01" {
            return ctx.error(ApiError::azure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "API version not supported",
            ));
        }
    }
    if let Err(e) = check_auth(&ctx.shared, route.dialect, &parts.headers) {
        return ctx.error(e);
    }
    match route.endpoint {
        Endpoint::Chat { deployment } => chat::chat(&ctx, deployment, &body).await,
        Endpoint::Embeddings { deployment } => {
            embeddings::embeddings(&ctx, deployment, &body).await
        }
        Endpoint::Responses => responses::responses(&ctx, &body).await,
        Endpoint::ListModels => ctx.json(StatusCode::OK, &models_list()),
        Endpoint::GetModel(id) => match MODELS.iter().find(|(m, _)| *m == id) {
            Some(&(m, created)) => ctx.json(StatusCode::OK, &model_object(m, created)),
            None => ctx.error(ApiError::openai(
                StatusCode::NOT_FOUND,
                format!("The model '{id}' does not exist or you do not have access to it."),
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            )),
        },
    }
}

/// Azure's classic paths need `api-version`: without it Azure answers 404, and with a
/// value that is not a version it answers 400.
fn check_api_version(query: Option<&str>) -> Result<(), ApiError> {
    let Some(version) = query_param(query, "api-version").filter(|v| !v.is_empty()) else {
        return Err(ApiError::azure(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        ));
    };
    let bytes = version.as_bytes();
    let date_like = bytes.len() >= 10
        && bytes[..10].iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let suffix_ok = matches!(&version[10.min(version.len())..], "" | "-preview");
    if date_like && suffix_ok {
        Ok(())
    } else {
        Err(ApiError::azure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "API version not supported",
        ))
    }
}

fn check_auth(shared: &Shared, dialect: Dialect, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let key = if dialect.is_azure() {
        headers
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .or(bearer)
    } else {
        bearer
    };
    // Azure takes Entra ID tokens as bearer tokens: issued ones are judged by the
    // simulated token endpoint.
    if let (true, Some(token)) = (dialect.is_azure(), bearer) {
        use crate::auth::BearerCheck;
        match shared.authority().check_bearer(token) {
            BearerCheck::Valid => return Ok(()),
            BearerCheck::NotOurs => {}
            BearerCheck::Expired | BearerCheck::Revoked | BearerCheck::Unknown => {
                return Err(ApiError::azure(
                    StatusCode::UNAUTHORIZED,
                    "401",
                    "Unauthorized. Access token is missing, invalid, audience is incorrect \
                     (https://cognitiveservices.azure.com), or have expired.",
                ))
            }
        }
    }
    let accepted = match (key, shared.opts.api_key.as_deref()) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(given), Some(expected)) => given == expected,
    };
    if accepted {
        return Ok(());
    }
    if dialect.is_azure() {
        return Err(ApiError::azure(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied: the API key is missing or not valid for this endpoint. \
             Send it in the api-key header.",
        ));
    }
    let message = match key {
        None => "No API key was provided. Send it in the Authorization header as a Bearer \
                 token (Authorization: Bearer YOUR_KEY)."
            .to_string(),
        Some(k) => format!("Incorrect API key provided: {}.", mask_key(k)),
    };
    Err(ApiError::openai(
        StatusCode::UNAUTHORIZED,
        message,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    ))
}

/// Shows only the ends of a key, like the provider does, so logs of errors leak nothing.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

fn model_object(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "switchyard-sim"})
}

fn models_list() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, created)| model_object(id, *created))
        .collect();
    json!({"object": "list", "data": data})
}

// ---------------------------------------------------------------------------------------
// Validation helpers shared by chat and embeddings

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
        Some(param),
        Some("invalid_type"),
    )
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

fn invalid_value(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, Some(param), Some("invalid_value"))
}

/// A present, non-null field.
fn field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

// ---------------------------------------------------------------------------------------
// Response bodies with timing and faults

/// An answer, chat or Responses alike: streamed as `events(fault)` times it, or, for a
/// plain request, `body()` after as long as its stream would have taken
/// (`events(None)`), the fault worked in either way.
async fn timed_answer(
    ctx: &Ctx,
    stream: bool,
    fault: Option<&Fault>,
    events: impl Fn(Option<&Fault>) -> Vec<Event>,
    body: impl FnOnce() -> String,
) -> Response {
    if stream {
        let mut response = ctx.bytes_response(
            StatusCode::OK,
            "text/event-stream; charset=utf-8",
            timed_body(events(fault)),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let wait: Duration = events(None).iter().map(|e| e.delay).sum();
    plain_response(ctx, body(), wait, fault).await
}

/// Sends a non-streaming JSON answer after `wait`, with the fault worked in.
async fn plain_response(
    ctx: &Ctx,
    body: String,
    wait: Duration,
    fault: Option<&Fault>,
) -> Response {
    let total = wait + stall_of(fault);
    if !total.is_zero() {
        tokio::time::sleep(total).await;
    }
    // Half of the body, cut at a character boundary, for the cut and malformed faults.
    let half = {
        let mut h = body.len() / 2;
        while !body.is_char_boundary(h) {
            h -= 1;
        }
        body[..h].to_string()
    };
    match fault.map(|f| f.kind) {
        Some(FaultKind::Cut) => ctx.bytes_response(
            StatusCode::OK,
            "application/json",
            timed_body(vec![
                Event {
                    delay: Duration::ZERO,
                    payload: Payload::Data(Bytes::from(half)),
                },
                Event {
                    delay: ABORT_GRACE,
                    payload: Payload::Abort,
                },
            ]),
        ),
        Some(FaultKind::Malformed) => {
            ctx.bytes_response(StatusCode::OK, "application/json", Body::from(half))
        }
        _ => ctx.bytes_response(StatusCode::OK, "application/json", Body::from(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_instances() {
        let (i, r) = parse_route("/v1/chat/completions");
        assert_eq!(i, "");
        assert_eq!(r.map(|r| r.dialect), Some(Dialect::OpenAi));
        let (i, r) = parse_route("/primary/openai/deployments/my%20dep/chat/completions");
        assert_eq!(i, "primary");
        assert_eq!(
            r.map(|r| r.endpoint),
            Some(Endpoint::Chat {
                deployment: Some("my dep".into())
            })
        );
        let (i, r) = parse_route("/backup/openai/v1/embeddings");
        assert_eq!(i, "backup");
        assert_eq!(r.map(|r| r.dialect), Some(Dialect::AzureV1));
        let (_, r) = parse_route("/v1/models/ft:gpt-4o:org/x");
        assert_eq!(
            r.map(|r| r.endpoint),
            Some(Endpoint::GetModel("ft:gpt-4o:org/x".into()))
        );
        assert!(parse_route("/primary/v2/chat").1.is_none());
        assert!(parse_route("/").1.is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn api_version_rules() {
        assert!(check_api_version(Some("api-version=2024-10-21")).is_ok());
        assert!(check_api_version(Some("x=1&api-version=2025-04-01-preview")).is_ok());
        assert_eq!(
            check_api_version(None).map_err(|e| e.status).err(),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            check_api_version(Some("api-version=banana"))
                .map_err(|e| e.status)
                .err(),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn mask_shows_only_ends() {
        assert_eq!(mask_key("sk-abcdefghijkl"), "sk-***ijkl");
        assert_eq!(mask_key("short"), "*****");
    }
}
