//! Google Gemini API (`/v1beta/models/{model}:generateContent`, API key) and Vertex AI
//! (`/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent`,
//! bearer token): plain, `:streamGenerateContent?alt=sse` (and the JSON-array stream
//! without `alt=sse`), and `:countTokens`, with google.rpc.Status errors.

mod request;

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::conversation::{self, group_tokens, Answer, Finish};
use crate::generate::{alnum, derive_seed};
use crate::plumbing::{
    fault_and_latency, header_text, is_mid_stream_error, percent_decode, plain_body, plain_wait,
    query_param, response, rfc3339, stall_of, stream_events, timed_body, unix_now,
};
use crate::reasoning::{self, Family, Kind};
use crate::routes::{GeminiMethod, NativeRequest};
use crate::{Fault, FaultKind, Shared};

/// A google.rpc.Status error.
#[derive(Debug)]
struct GoogleError {
    code: u16,
    status: String,
    message: String,
    details: Vec<Value>,
}

impl GoogleError {
    fn new(code: u16, status: &str, message: impl Into<String>) -> GoogleError {
        GoogleError {
            code,
            status: status.to_string(),
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn invalid(message: impl Into<String>) -> GoogleError {
        GoogleError::new(400, "INVALID_ARGUMENT", message)
    }

    fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message, "status": self.status});
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({"error": error})
    }

    fn response(&self) -> Response {
        response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json; charset=UTF-8",
            Body::from(pretty(&self.body())),
            &[],
        )
    }
}

/// Google's APIs answer errors as indented JSON.
fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn status_for_code(code: u16) -> (&'static str, &'static str) {
    match code {
        400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401 => (
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ),
        403 => ("PERMISSION_DENIED", "The caller does not have permission"),
        404 => ("NOT_FOUND", "Requested entity was not found."),
        409 => ("ABORTED", "The operation was aborted."),
        429 => (
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        ),
        499 => ("CANCELLED", "The operation was cancelled."),
        500 => (
            "INTERNAL",
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting",
        ),
        503 => (
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        504 => (
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        ),
        c if c >= 500 => ("INTERNAL", "Internal error encountered."),
        _ => ("FAILED_PRECONDITION", "Precondition check failed."),
    }
}

fn code_for_status(status: &str) -> Option<u16> {
    Some(match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "ABORTED" | "ALREADY_EXISTS" => 409,
        "RESOURCE_EXHAUSTED" => 429,
        "CANCELLED" => 499,
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => 500,
        "UNIMPLEMENTED" => 501,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => return None,
    })
}

fn fault_error(fault: &Fault) -> GoogleError {
    let code = fault
        .status
        .or_else(|| fault.error_type.as_deref().and_then(code_for_status))
        .unwrap_or(500);
    let (status, message) = status_for_code(code);
    let mut err = GoogleError::new(code, fault.error_type.as_deref().unwrap_or(status), message);
    if code == 429 {
        let delay = fault.retry_after_s.unwrap_or(1);
        err.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{delay}s"),
        }));
    }
    err
}

/// Gemini API: `x-goog-api-key` or `?key=`; Vertex: `Authorization: Bearer TOKEN`.
fn check_auth(shared: &Shared, req: &NativeRequest, vertex: bool) -> Result<(), GoogleError> {
    let expected = shared.opts.api_key.as_deref();
    let token = header_text(&req.parts.headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty());
    // An OAuth2 token (Vertex always; the Gemini API too): one issued by the token
    // endpoints is judged by them, expired or revoked ones refused.
    if let Some(t) = &token {
        match shared.authority().check_bearer(t) {
            BearerCheck::Valid => return Ok(()),
            BearerCheck::NotOurs => {}
            BearerCheck::Expired | BearerCheck::Revoked | BearerCheck::Unknown => {
                return Err(unauthenticated())
            }
        }
        if !vertex {
            return match expected {
                Some(e) if t != e => Err(unauthenticated()),
                _ => Ok(()),
            };
        }
    }
    if vertex {
        return match (token, expected) {
            (Some(t), Some(e)) if t != e => Err(unauthenticated()),
            (Some(_), _) => Ok(()),
            (None, _) => Err(unauthenticated()),
        };
    }
    let key = header_text(&req.parts.headers, "x-goog-api-key")
        .or_else(|| query_param(req.parts.uri.query(), "key").map(percent_decode))
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty());
    match (key, expected) {
        (None, _) => Err(GoogleError::new(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        )),
        (Some(k), Some(e)) if k != e => {
            let mut err = GoogleError::invalid("API key not valid. Please pass a valid API key.");
            err.details.push(json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }));
            Err(err)
        }
        _ => Ok(()),
    }
}

use crate::auth::BearerCheck;

fn unauthenticated() -> GoogleError {
    GoogleError::new(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login \
         cookie or other valid authentication credential. See \
         https://developers.google.com/identity/sign-in/web/devconsole-project.",
    )
}

pub(crate) async fn handle(
    req: NativeRequest,
    model: String,
    method: GeminiMethod,
    vertex: bool,
) -> Response {
    if req.parts.method != Method::POST {
        return GoogleError::new(404, "NOT_FOUND", "Method not found.").response();
    }
    if let Err(e) = check_auth(&req.shared, &req, vertex) {
        return e.response();
    }
    // countTokens takes the contents directly or a whole generateContentRequest.
    let body = match (method, req.body.get("generateContentRequest")) {
        (GeminiMethod::CountTokens, Some(inner)) => inner.clone(),
        _ => req.body.clone(),
    };
    let parsed = match request::parse(&body, &model) {
        Ok(p) => p,
        Err(message) => return GoogleError::invalid(message).response(),
    };
    if method == GeminiMethod::CountTokens {
        return response(
            StatusCode::OK,
            "application/json; charset=UTF-8",
            Body::from(
                json!({
                    "totalTokens": parsed.prompt_tokens,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": parsed.prompt_tokens}],
                })
                .to_string(),
            ),
            &[],
        );
    }
    let kind = if vertex { Kind::Vertex } else { Kind::Gemini };
    if let Err(message) = request::check_signatures(&body, &model, kind) {
        return GoogleError::invalid(message).response();
    }
    let stream = method == GeminiMethod::Stream;
    let sse = query_param(req.parts.uri.query(), "alt") == Some("sse");
    let (fault, latency) = fault_and_latency(&req.shared, &req.instance, &model);
    if let Some(f) = fault
        .as_ref()
        .filter(|f| f.kind == FaultKind::Error && !is_mid_stream_error(f, stream))
    {
        return fault_error(f).response();
    }
    // A request to continue an answer it carries: the rest of the answer the request
    // without it gets (whole, then cut by this request's limits).
    let continued = conversation::continuation(&body, conversation::Continue::Instruction)
        .and_then(|(mut base, so_far)| {
            if let Some(config) = base
                .get_mut("generationConfig")
                .and_then(Value::as_object_mut)
            {
                config.remove("maxOutputTokens");
            }
            request::parse(&base, &model).ok().map(|b| (b, so_far))
        });
    let plan = Plan::new(&parsed, &model, vertex, continued.as_ref());
    let chunks = plan.chunks(latency.chunks);
    if stream {
        let (frames, malformed, error_frame, trailer, content_type) = if sse {
            (
                chunks
                    .iter()
                    .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
                    .collect::<Vec<_>>(),
                Bytes::from_static(b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"broken\r\n\r\n"),
                // An error after the stream started comes as raw (multi-line) JSON.
                fault.as_ref().map(|f| Bytes::from(format!("{}\n", pretty(&fault_error(f).body())))),
                None,
                "text/event-stream",
            )
        } else {
            let n = chunks.len();
            (
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let lead = if i == 0 { "[" } else { ",\r\n" };
                        Bytes::from(format!("{lead}{}", pretty(c)))
                    })
                    .collect::<Vec<_>>(),
                Bytes::from_static(b",\r\n{\"candidates\": [{\"content\": "),
                fault
                    .as_ref()
                    .map(|f| Bytes::from(format!(",\r\n{}]", pretty(&fault_error(f).body())))),
                (n > 0).then(|| Bytes::from_static(b"]")),
                "application/json; charset=UTF-8",
            )
        };
        let events = stream_events(
            frames,
            trailer,
            &latency,
            fault.as_ref(),
            malformed,
            error_frame,
        );
        return response(StatusCode::OK, content_type, timed_body(events), &[]);
    }
    let wait = plain_wait(chunks.len(), &latency) + stall_of(fault.as_ref());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    response(
        StatusCode::OK,
        "application/json; charset=UTF-8",
        plain_body(plan.full().to_string(), fault.as_ref()),
        &[],
    )
}

/// Everything needed to render the answer, plain or streamed.
struct Plan {
    answers: Vec<Answer>,
    blocked: bool,
    enum_text: bool,
    model: String,
    response_id: String,
    vertex: bool,
    create_time: String,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// The thought summary (shown only with `includeThoughts`).
    thought: Vec<String>,
    include_thoughts: bool,
    /// Thought tokens of the whole answer (0 when the model does not think).
    thoughts_tokens: u64,
    /// The first function call of each candidate carries a signature (Gemini 3).
    signatures: Vec<Option<String>>,
}

fn finish_reason(finish: &Finish) -> &'static str {
    match finish {
        Finish::Length => "MAX_TOKENS",
        Finish::Done | Finish::Stop(_) | Finish::Tools => "STOP",
    }
}

impl Plan {
    fn new(
        req: &request::GenerateRequest,
        model: &str,
        vertex: bool,
        continued: Option<&(request::GenerateRequest, String)>,
    ) -> Plan {
        let rest = |i: usize| {
            let (base, so_far) = continued?;
            let whole = conversation::answer(&base.conv, i);
            if !whole.calls.is_empty() {
                return None;
            }
            let rest = conversation::after_prefix(&whole.text, so_far)?;
            let (text, finish) = conversation::limit_tokens(rest, &req.conv.stop, req.conv.limit);
            Some(Answer {
                text,
                calls: Vec::new(),
                finish,
            })
        };
        let answers = if req.blocked {
            Vec::new()
        } else {
            (0..req.candidates)
                .map(|i| rest(i).unwrap_or_else(|| conversation::answer(&req.conv, i)))
                .collect()
        };
        let thought = if req.thinking {
            reasoning::thought_tokens(&req.conv.digest)
        } else {
            Vec::new()
        };
        let thoughts_tokens = thought.len() as u64 * answers.len() as u64;
        let kind = if vertex { Kind::Vertex } else { Kind::Gemini };
        let signatures = answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let first = a.calls.first()?;
                (reasoning::family(model) == Family::Gemini3).then(|| {
                    reasoning::sign(
                        kind,
                        model,
                        derive_seed(&req.conv.digest, "thought_signature", i as u64),
                        &first.name,
                    )
                })
            })
            .collect();
        Plan {
            thought,
            include_thoughts: req.include_thoughts,
            thoughts_tokens,
            signatures,
            answers,
            blocked: req.blocked,
            enum_text: req.enum_text,
            model: model.to_string(),
            response_id: alnum(derive_seed(&req.conv.digest, "id", 0), 22),
            vertex,
            create_time: rfc3339(unix_now()),
            prompt_tokens: req.prompt_tokens,
            cached_tokens: req.cached_tokens,
        }
    }

    /// The text of an answer: an enum answer loses its JSON quotes.
    fn text_tokens(&self, answer: &Answer) -> Vec<String> {
        if self.enum_text {
            let text = answer.text();
            if let Ok(Value::String(s)) = serde_json::from_str::<Value>(&text) {
                return vec![s];
            }
        }
        answer.text.clone()
    }

    fn usage(&self, candidates_tokens: u64) -> Value {
        let mut usage = json!({
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates_tokens,
            "totalTokenCount": self.prompt_tokens + candidates_tokens + self.thoughts_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt_tokens}],
        });
        if self.thoughts_tokens > 0 {
            usage["thoughtsTokenCount"] = json!(self.thoughts_tokens);
        }
        if self.cached_tokens > 0 {
            usage["cachedContentTokenCount"] = json!(self.cached_tokens);
        }
        if self.vertex {
            usage["trafficType"] = json!("ON_DEMAND");
        }
        usage
    }

    fn envelope(&self, candidates: Option<Vec<Value>>, usage: Value) -> Value {
        let mut body = json!({});
        if let Some(c) = candidates {
            body["candidates"] = Value::Array(c);
        }
        if self.blocked {
            body["promptFeedback"] = json!({
                "blockReason": "SAFETY",
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true},
                ],
            });
        }
        body["usageMetadata"] = usage;
        body["modelVersion"] = json!(self.model);
        if self.vertex {
            body["createTime"] = json!(self.create_time);
        }
        body["responseId"] = json!(self.response_id);
        body
    }

    fn parts(&self, index: usize, answer: &Answer) -> Vec<Value> {
        let mut parts = self.thought_parts();
        let text = self.text_tokens(answer).concat();
        if !text.is_empty() || answer.calls.is_empty() {
            parts.push(json!({"text": text}));
        }
        parts.extend(self.call_parts(index, answer));
        parts
    }

    /// The thought summary part, when the model thinks and the request asked for it.
    fn thought_parts(&self) -> Vec<Value> {
        if self.include_thoughts && !self.thought.is_empty() {
            vec![json!({"text": self.thought.concat(), "thought": true})]
        } else {
            Vec::new()
        }
    }

    /// The function-call parts, the first with its `thoughtSignature` (Gemini 3).
    fn call_parts(&self, index: usize, answer: &Answer) -> Vec<Value> {
        answer
            .calls
            .iter()
            .enumerate()
            .map(|(k, call)| {
                let mut part = json!({"functionCall": {"name": call.name, "args": call.input}});
                if let Some(Some(sig)) = self.signatures.get(index).filter(|_| k == 0) {
                    part["thoughtSignature"] = json!(sig);
                }
                part
            })
            .collect()
    }

    fn output_tokens(&self) -> u64 {
        self.answers.iter().map(Answer::output_tokens).sum()
    }

    /// The whole answer (generateContent).
    fn full(&self) -> Value {
        if self.blocked {
            return self.envelope(None, self.usage(0));
        }
        let candidates = self
            .answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "content": {"parts": self.parts(i, a), "role": "model"},
                    "finishReason": finish_reason(&a.finish),
                    "index": i,
                })
            })
            .collect();
        self.envelope(Some(candidates), self.usage(self.output_tokens()))
    }

    /// The streamed chunks: text deltas per candidate (interleaved), function calls whole;
    /// each candidate's last chunk has its `finishReason`; usage is cumulative.
    fn chunks(&self, chunks: Option<u32>) -> Vec<Value> {
        if self.blocked {
            return vec![self.envelope(None, self.usage(0))];
        }
        // Per candidate: (parts, output tokens) of each of its chunks.
        let per_candidate: Vec<Vec<(Vec<Value>, u64)>> = self
            .answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut seq: Vec<(Vec<Value>, u64)> = Vec::new();
                let thought = self.thought_parts();
                if !thought.is_empty() {
                    seq.push((thought, 0));
                }
                let tokens = self.text_tokens(a);
                if a.calls.is_empty() || !tokens.is_empty() {
                    let pieces = group_tokens(&tokens, chunks);
                    let per_piece = a.text.len() as u64 / pieces.len().max(1) as u64;
                    for (k, piece) in pieces.iter().enumerate() {
                        let tokens = if k + 1 == pieces.len() {
                            a.text.len() as u64 - per_piece * k as u64
                        } else {
                            per_piece
                        };
                        seq.push((vec![json!({"text": piece})], tokens));
                    }
                    if seq.is_empty() {
                        seq.push((vec![json!({"text": ""})], 0));
                    }
                }
                if !a.calls.is_empty() {
                    let parts = self.call_parts(i, a);
                    seq.push((parts, a.output_tokens() - a.text.len() as u64));
                }
                seq
            })
            .collect();
        let longest = per_candidate.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = Vec::new();
        let mut produced = 0u64;
        for step in 0..longest {
            for (i, seq) in per_candidate.iter().enumerate() {
                let Some((parts, tokens)) = seq.get(step) else {
                    continue;
                };
                produced += tokens;
                let mut candidate = json!({
                    "content": {"parts": parts, "role": "model"},
                    "index": i,
                });
                if step + 1 == seq.len() {
                    candidate["finishReason"] = json!(finish_reason(&self.answers[i].finish));
                }
                out.push(self.envelope(Some(vec![candidate]), self.usage(produced)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_by_code_and_status() {
        let e = fault_error(&Fault::error(429));
        assert_eq!(e.status, "RESOURCE_EXHAUSTED");
        assert_eq!(e.body()["error"]["details"][0]["retryDelay"], "1s");
        let e = fault_error(&Fault {
            status: None,
            ..Fault::error(500).with_type("UNAVAILABLE")
        });
        assert_eq!((e.code, e.status.as_str()), (503, "UNAVAILABLE"));
        assert_eq!(status_for_code(504).0, "DEADLINE_EXCEEDED");
    }
}
