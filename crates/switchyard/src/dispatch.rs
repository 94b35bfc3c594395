//! Dispatch: call a logical model's deployments in order until one answers.
//!
//! An attempt counts as answered only when nothing can go wrong invisibly any more:
//! a complete body for plain requests, the first event for streams. Until then a
//! retryable failure moves on to the next deployment and the client never knows.
//! (Backoff, breakers and smarter strategies build on this loop.)

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use tokio::time::{timeout_at, Instant as TokioInstant};

use crate::api::error::ApiError;
use crate::api::tracker::RequestTracker;
use crate::config::{Deployment, LogicalModel};
use crate::ledger::Usage;
use crate::providers::sse::{SseDecoder, SseEvent};
use crate::providers::{openai, Endpoint, ProviderError};

/// Most bytes read of an upstream error body (it is only inspected for a message).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes accepted for a complete (non-stream) upstream response.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What a successful attempt produced.
pub enum Opened {
    /// A complete JSON response and the usage read from it.
    Full { body: Bytes, usage: Option<Usage> },
    /// A stream whose first event has arrived.
    Stream {
        stream: UpstreamStream,
        first: SseEvent,
    },
}

pub struct Served {
    pub deployment: Arc<Deployment>,
    pub opened: Opened,
    /// When the successful attempt started; its latency is measured from here.
    pub attempt_started: Instant,
}

/// Tries each deployment of `model` in turn. `make_body` renders the request for one
/// deployment (its upstream model name differs).
pub async fn dispatch(
    client: &reqwest::Client,
    model: &LogicalModel,
    endpoint: Endpoint,
    stream: bool,
    tracker: &mut RequestTracker,
    mut make_body: impl FnMut(&Deployment) -> Result<Vec<u8>, ApiError>,
) -> Result<Served, ApiError> {
    let mut last: Option<(ProviderError, &Arc<Deployment>)> = None;
    for deployment in &model.deployments {
        let attempt_started = Instant::now();
        tracker.begin_attempt(deployment);
        let body = make_body(deployment)?;
        match attempt(client, deployment, endpoint, stream, body, tracker).await {
            Ok(opened) => {
                return Ok(Served {
                    deployment: deployment.clone(),
                    opened,
                    attempt_started,
                })
            }
            Err(e) => {
                tracing::warn!(
                    request_id = tracker.request_id(),
                    deployment = %deployment.name,
                    error = %e,
                    "upstream attempt failed"
                );
                tracker.fail_attempt(&e, attempt_started);
                let retryable = e.retryable();
                last = Some((e, deployment));
                if !retryable {
                    break;
                }
            }
        }
    }
    match last {
        Some((e, d)) => Err(ApiError::from_provider(&e, &d.name)),
        None => Err(ApiError::internal("The model has no deployments.")),
    }
}

fn send_error(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout {
            phase: "connection",
        }
    } else {
        // reqwest's message includes the URL, which holds no secret (keys travel in
        // headers); strip it anyway so upstream topology stays out of client errors.
        ProviderError::Connect(e.without_url().to_string())
    }
}

async fn attempt(
    client: &reqwest::Client,
    deployment: &Deployment,
    endpoint: Endpoint,
    stream: bool,
    body: Vec<u8>,
    tracker: &mut RequestTracker,
) -> Result<Opened, ProviderError> {
    let start = TokioInstant::now();
    let total = start + deployment.timeouts.total;
    let first_byte = (start + deployment.timeouts.first_byte).min(total);
    let request = openai::build(client, deployment, endpoint, body);
    let response = match timeout_at(first_byte, request.send()).await {
        Err(_) => {
            return Err(ProviderError::Timeout {
                phase: "response headers",
            })
        }
        Ok(Err(e)) => return Err(send_error(e)),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    tracker.attempt_status(status.as_u16());
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = read_limited(response.bytes_stream().boxed(), MAX_ERROR_BODY, total)
            .await
            .unwrap_or_default();
        return Err(openai::status_error(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            &headers,
            &body,
        ));
    }
    if stream {
        let is_sse = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(ProviderError::Protocol(
                "a stream was requested but the answer is not text/event-stream".into(),
            ));
        }
        let mut upstream = UpstreamStream {
            body: response.bytes_stream().boxed(),
            decoder: SseDecoder::new(),
            deadline: total,
        };
        let first = match timeout_at(first_byte, upstream.next_event()).await {
            Err(_) => {
                return Err(ProviderError::Timeout {
                    phase: "first event",
                })
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => {
                return Err(ProviderError::Protocol(
                    "the stream ended before its first event".into(),
                ))
            }
            Ok(Ok(Some(event))) => event,
        };
        return Ok(Opened::Stream {
            stream: upstream,
            first,
        });
    }
    let body = read_limited(response.bytes_stream().boxed(), MAX_RESPONSE_BODY, total).await?;
    let usage = openai::response_usage(&body)?;
    Ok(Opened::Full { body, usage })
}

async fn read_limited(
    mut body: ByteStream,
    limit: usize,
    deadline: TokioInstant,
) -> Result<Bytes, ProviderError> {
    let mut buf = BytesMut::new();
    loop {
        match timeout_at(deadline, body.next()).await {
            Err(_) => {
                return Err(ProviderError::Timeout {
                    phase: "response body",
                })
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(ProviderError::Connect(format!(
                    "the response body broke off: {}",
                    e.without_url()
                )))
            }
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(ProviderError::Protocol(format!(
                        "the response body exceeds {limit} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// An upstream event stream, read event by event as the network delivers it.
pub struct UpstreamStream {
    body: ByteStream,
    decoder: SseDecoder,
    /// The attempt's total deadline.
    deadline: TokioInstant,
}

impl UpstreamStream {
    /// The next event; `Ok(None)` when the upstream closed the stream cleanly between
    /// events.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, ProviderError> {
        loop {
            match self.decoder.next_event() {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) => {}
                Err(e) => return Err(ProviderError::Protocol(e.to_string())),
            }
            match timeout_at(self.deadline, self.body.next()).await {
                Err(_) => return Err(ProviderError::Timeout { phase: "stream" }),
                Ok(Some(Ok(chunk))) => self.decoder.push(&chunk),
                Ok(Some(Err(e))) => {
                    return Err(ProviderError::Connect(format!(
                        "the stream broke off: {}",
                        e.without_url()
                    )))
                }
                Ok(None) if self.decoder.has_partial() => {
                    return Err(ProviderError::Protocol(
                        "the stream ended inside an event".into(),
                    ))
                }
                Ok(None) => return Ok(None),
            }
        }
    }
}
