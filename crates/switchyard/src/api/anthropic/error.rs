//! Errors rendered the Anthropic way: `{"type":"error","error":{"type","message"}}`.
//! The status and the message come from [`ApiError`], whose mapping is the only one.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use crate::api::error::ApiError;

/// Anthropic's error `type` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

pub fn error_json(e: &ApiError, request_id: Option<&str>) -> serde_json::Value {
    let mut body = json!({
        "type": "error",
        "error": {"type": error_type(e.status), "message": e.message},
    });
    if let (Some(id), Some(fields)) = (request_id, body.as_object_mut()) {
        fields.insert("request_id".into(), json!(id));
    }
    body
}

pub fn error_response(e: &ApiError, request_id: &str) -> Response {
    let body = serde_json::to_vec(&error_json(e, Some(request_id))).unwrap_or_default();
    let mut res = (e.status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = &e.retry_after {
        h.insert(header::RETRY_AFTER, v.clone());
    }
    res
}
