//! The stream relay: upstream items (OpenAI chunks) in, the ingress protocol's SSE
//! frames out, one by one as they arrive. Nothing is buffered beyond the event being
//! read; a cacheable stream's answer is assembled beside it (`super::cache::capture`,
//! bounded by the entry's `max_bytes`) and stored when the stream completes.
//!
//! The relay owns what every ingress shares (usage, the ledger, capacity, the cut
//! detection); an [`Encoder`] decides what the client sees. [`OpenAiFrames`] forwards
//! the upstream's own chunk bytes: the usage chunk is passed on only when the client
//! asked for it, and chunks without choices (Azure's prompt-filter results) are
//! dropped, since OpenAI clients do not expect them.
//!
//! Upstreams that ignore `stream_options.include_usage` still end with the usage chunk
//! the client asked for: when the stream completes without one, the relay estimates
//! it (the prompt estimate, and the output counted as it was relayed with the
//! ledger's estimator) and the upstream's decoder writes it in the stream's shape;
//! the ledger row is marked `usage_estimated`; a usage without `prompt_tokens` or
//! `completion_tokens` gets the missing counts estimated the same way. A stream that
//! closes without `[DONE]` after every choice the request asked for (its `n`) sent its
//! finish reason is complete, not cut.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http::{header, HeaderValue, StatusCode};

use super::cache::capture::Capture;
use super::chat::{estimate, served_headers};
use super::error::ApiError;
use super::recovery::{Recovery, Splice};
use crate::config::Deployment;
use crate::dispatch::{Capacity, UpstreamStream};
use crate::governance::output::{GuardedChunk, OutputGuard};
use crate::ledger::tracker::RequestTracker;
use crate::providers::Translated;
use crate::types::Usage;

/// A stream that is ready to be relayed, waiting for its request's tracker.
pub struct Relay {
    pub deployment: Arc<Deployment>,
    /// The tracker's index of the serving attempt.
    pub attempt: usize,
    pub attempt_started: Instant,
    pub attempts: usize,
    pub route: String,
    pub capacity: Option<Capacity>,
    pub upstream: UpstreamStream,
    /// The first item, read during dispatch.
    pub first: Translated,
    pub prompt_estimate: u64,
    /// The choices the request asked for (its `n`, at least 1).
    pub choices: u64,
    /// Set when a break after content may be continued elsewhere (`stream_recovery`).
    pub recovery: Option<Box<Recovery>>,
    /// The channel's PII check of the answer (`pii_output`), applied to every chunk
    /// before the encoder sees it.
    pub output_guard: Option<OutputGuard>,
    /// Set when the answer may be cached: what the client is shown is assembled into
    /// a completion, stored when the stream completes.
    pub capture: Option<Capture>,
    /// A shadow mirror of the request (`[models.NAME.shadow]`), started when the
    /// stream completes; dropped unstarted if it does not.
    pub mirror: Option<super::shadow::Mirror>,
}

/// How one ingress protocol renders a relayed stream. Each call returns the bytes to
/// send (one or more complete SSE events), or nothing for an item the client does not
/// see.
pub trait Encoder: Send + 'static {
    /// An OpenAI `chat.completion.chunk`, with what the decoder read of it.
    fn chunk(&mut self, data: &Bytes, has_choices: bool, usage: Option<&Usage>) -> Option<Bytes>;
    /// The upstream's own error event (OpenAI error JSON); the stream ends after it.
    fn upstream_error(&mut self, data: &Bytes) -> Bytes;
    /// The upstream completed the stream.
    fn done(&mut self) -> Bytes;
    /// The stream broke off after it started; the stream ends after this event.
    fn failed(&mut self, error: &ApiError) -> Bytes;
    /// Work to finish after [`Encoder::done`] and before its bytes are sent (a
    /// stored response is written before the client hears it is complete).
    fn persist(&mut self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        None
    }
}

/// OpenAI Chat Completions frames: the upstream's chunks as they are.
pub struct OpenAiFrames {
    /// Whether the client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

impl Encoder for OpenAiFrames {
    fn chunk(&mut self, data: &Bytes, has_choices: bool, usage: Option<&Usage>) -> Option<Bytes> {
        if has_choices || (usage.is_some() && self.include_usage) {
            return Some(frame(data));
        }
        None
    }

    fn upstream_error(&mut self, data: &Bytes) -> Bytes {
        // Passed on as it is; no [DONE] after it.
        frame(data)
    }

    fn done(&mut self) -> Bytes {
        Bytes::from_static(b"data: [DONE]\n\n")
    }

    fn failed(&mut self, error: &ApiError) -> Bytes {
        frame(&error.to_json())
    }
}

impl Relay {
    pub fn into_response(self, mut tracker: RequestTracker, encoder: impl Encoder) -> Response {
        tracker.set_status(StatusCode::OK.as_u16());
        let mut res = Response::new(Body::empty());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        served_headers(h, &self.deployment, self.attempts, &self.route);
        let state = RelayState {
            pending: Some(self.first),
            upstream: self.upstream,
            deployment: self.deployment,
            attempt: self.attempt,
            capacity: self.capacity,
            attempt_started: self.attempt_started,
            encoder,
            prompt_estimate: self.prompt_estimate,
            choices: self.choices,
            usage: None,
            choice_chunks: 0,
            tracker: Some(tracker),
            recovery: self.recovery,
            splice: None,
            output_guard: self.output_guard,
            capture: self.capture,
            mirror: self.mirror,
        };
        *res.body_mut() = Body::from_stream(frames(state));
        res
    }
}

struct RelayState<E: Encoder> {
    pending: Option<Translated>,
    upstream: UpstreamStream,
    deployment: Arc<Deployment>,
    attempt: usize,
    /// The deployment quota held for this call, settled with the actual tokens.
    capacity: Option<Capacity>,
    attempt_started: Instant,
    encoder: E,
    prompt_estimate: u64,
    /// The choices the request asked for: a stream without `[DONE]` is complete when
    /// that many finished.
    choices: u64,
    usage: Option<Usage>,
    /// Chunks with choices sent so far; about one token each, the estimate of last resort.
    choice_chunks: u64,
    /// Present until the stream's outcome is recorded.
    tracker: Option<RequestTracker>,
    /// Present until the stream has been recovered once (or cannot be).
    recovery: Option<Box<Recovery>>,
    /// Set once a continuation is being relayed.
    splice: Option<Splice>,
    /// Holds back answer text until it is known free of PII (see
    /// `governance::output`): the one other thing the relay keeps beyond the event.
    output_guard: Option<OutputGuard>,
    /// The answer's parts for the response cache, bounded by the entry's budget
    /// (see `super::cache::capture`); dropped, and nothing stored, once it cannot be.
    capture: Option<Capture>,
    mirror: Option<super::shadow::Mirror>,
}

fn frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
    out.freeze()
}

impl<E: Encoder> RelayState<E> {
    /// The usage to bill when the upstream reported none: the prompt estimate, and the
    /// output relayed at the ledger's estimator's rate (where the decoder counts it;
    /// else a token per chunk).
    fn estimated_usage(&self) -> Usage {
        let completion = self.upstream.progress().map_or(self.choice_chunks, |p| {
            crate::limits::text_tokens(p.output_chars)
        });
        estimate(self.prompt_estimate, completion)
    }

    /// A chunk whose upstream usage lacks counts gets the missing ones estimated
    /// (what the upstream sent stays) and is billed as estimated.
    fn with_usage_completed(&self, data: Bytes, usage: Option<Usage>) -> (Bytes, Option<Usage>) {
        let partial = self.upstream.progress().is_some_and(|p| p.partial_usage);
        if usage.is_none() || !partial {
            return (data, usage);
        }
        match self.upstream.fill_usage(&data, &self.estimated_usage()) {
            Some((data, usage)) => (data, Some(usage)),
            None => (data, usage),
        }
    }

    /// Shows `data`, a chunk the client is about to get, to the cache's capture.
    fn capture(&mut self, data: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            if !c.chunk(data) {
                self.capture = None;
            }
        }
    }

    fn settle(&mut self) {
        let usage = self.usage.unwrap_or_else(|| self.estimated_usage());
        if let Some(t) = self.tracker.as_mut() {
            t.settle(self.attempt, &self.deployment, usage, self.attempt_started);
        }
        if let Some(capacity) = self.capacity.take() {
            capacity.settle(&usage);
        }
    }

    /// Ends the stream: settles usage and hands the record to the ledger (the last
    /// frame waits for it when the ledger's queue is full, see
    /// [`RequestTracker::finish`]).
    async fn finish(&mut self, error: Option<&str>) {
        self.settle();
        if let (Some(guard), Some(t)) = (&self.output_guard, self.tracker.as_mut()) {
            guard.record_findings(t);
        }
        if let Some(t) = self.tracker.take() {
            t.finish(StatusCode::OK.as_u16(), error).await;
        }
    }

    /// The next frame for the client, or None when the stream is over.
    /// The ends of a stream (completion, recovery, a cut) run once per stream and
    /// hold large futures of their own; they are boxed so that the state every
    /// open stream keeps between chunks stays small.
    async fn next_frame(&mut self) -> Option<Bytes> {
        self.tracker.as_ref()?;
        loop {
            let item = match self.pending.take() {
                Some(item) => Ok(Some(item)),
                None => self.upstream.next_item().await,
            };
            let item = match item {
                Ok(Some(item)) => item,
                // Some servers end a complete answer without `[DONE]`.
                Ok(None)
                    if self
                        .upstream
                        .progress()
                        .is_some_and(|p| p.complete(self.choices)) =>
                {
                    return Some(Box::pin(self.complete()).await)
                }
                Ok(None) => {
                    let why = "the upstream stream ended without [DONE]";
                    if Box::pin(self.recover(why)).await {
                        continue;
                    }
                    return Some(Box::pin(self.cut(why)).await);
                }
                Err(e) => {
                    let why = e.to_string();
                    if Box::pin(self.recover(&why)).await {
                        continue;
                    }
                    return Some(Box::pin(self.cut(&why)).await);
                }
            };
            match item {
                Translated::Chunk {
                    data,
                    has_choices,
                    usage,
                } => {
                    let (data, usage) = self.with_usage_completed(data, usage);
                    if usage.is_some() {
                        self.usage = usage;
                    }
                    if has_choices {
                        self.choice_chunks += 1;
                        if let Some(t) = self.tracker.as_mut() {
                            t.first_token();
                        }
                        if let Some(r) = self.recovery.as_mut() {
                            r.observe(&data);
                        }
                    }
                    let (data, usage) = match self.splice.as_mut() {
                        None => (data, usage),
                        Some(splice) => match splice.rewrite(&data, usage.as_ref()) {
                            Some(shown) => shown,
                            None => continue,
                        },
                    };
                    let data = match self.output_guard.as_mut() {
                        None => data,
                        Some(guard) => match guard.chunk(&data) {
                            GuardedChunk::Unchanged => data,
                            GuardedChunk::Rewritten(checked) => checked,
                            GuardedChunk::Withheld => continue,
                        },
                    };
                    self.capture(&data);
                    if let Some(out) = self.encoder.chunk(&data, has_choices, usage.as_ref()) {
                        return Some(out);
                    }
                }
                Translated::Error(data) => {
                    if crate::providers::stream_error(&data).retryable()
                        && Box::pin(self.recover("the upstream sent an error event")).await
                    {
                        continue;
                    }
                    // The upstream's own error event, passed on; nothing after it.
                    Box::pin(self.finish(Some("upstream_stream_error"))).await;
                    return Some(self.encoder.upstream_error(&data));
                }
                Translated::Done => return Some(Box::pin(self.complete()).await),
            }
        }
    }

    /// The stream is complete: the usage chunk when the upstream sent none (the
    /// client asked for one; the encoder decides whether it shows), then the end.
    async fn complete(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        // Text still held back for a choice that sent no finish chunk.
        if let Some(held) = self.output_guard.as_mut().and_then(OutputGuard::flush) {
            self.capture(&held);
            if let Some(frame) = self.encoder.chunk(&held, true, None) {
                out.put_slice(&frame);
            }
        }
        if self.usage.is_none() {
            let usage = self.estimated_usage();
            if let Some(chunk) = self.upstream.usage_chunk(&usage) {
                let shown = match self.splice.as_mut() {
                    None => Some((chunk, Some(usage))),
                    Some(splice) => splice.rewrite(&chunk, Some(&usage)),
                };
                if let Some((chunk, shown)) = shown {
                    self.capture(&chunk);
                    if let Some(frame) = self.encoder.chunk(&chunk, false, shown.as_ref()) {
                        out.put_slice(&frame);
                    }
                }
            }
            self.usage = Some(usage);
        }
        self.finish(None).await;
        // Stored before the client hears the stream is complete, so that its next
        // request, on any replica, finds it.
        if let Some(capture) = self.capture.take() {
            capture.store().await;
        }
        // The client's answer is complete: a shadow mirror may go now.
        if let Some(mirror) = self.mirror.take() {
            mirror.start(None);
        }
        let tail = self.encoder.done();
        if let Some(work) = self.encoder.persist() {
            work.await;
        }
        if let Some(splice) = &self.splice {
            out.put_slice(&splice.comment());
        }
        out.put_slice(&tail);
        out.freeze()
    }

    /// The upstream broke off after the client got the first bytes: with recovery on
    /// and the stream eligible, the next deployment is asked to continue it (see
    /// [`super::recovery`]). True when a continuation is now being relayed; false
    /// leaves the break to [`Self::cut`] (the broken attempt stays the one that is
    /// settled and named).
    async fn recover(&mut self, why: &str) -> bool {
        let Some(recovery) = self.recovery.take() else {
            return false;
        };
        if !recovery.eligible() || self.tracker.is_none() {
            return false;
        }
        tracing::warn!(
            deployment = %self.deployment.name,
            reason = why,
            "stream cut; asking the next deployment to continue it"
        );
        // The broken attempt is billed for what it relayed.
        let prior = self.usage.unwrap_or_else(|| self.estimated_usage());
        self.usage = Some(prior);
        self.settle();
        let Some(tracker) = self.tracker.as_mut() else {
            return false;
        };
        tracker.mark_attempt(self.attempt, "stream_cut");
        let prompt_estimate = recovery.prompt_estimate();
        let (served, splice) = match recovery.resume(&self.deployment.name, prior, tracker).await {
            Ok(resumed) => resumed,
            Err(e) => {
                tracing::warn!(
                    deployment = %self.deployment.name,
                    error = ?e,
                    "the stream could not be continued"
                );
                return false;
            }
        };
        let crate::dispatch::Opened::Stream { stream, first } = served.opened else {
            return false;
        };
        self.pending = Some(first);
        self.upstream = stream;
        self.deployment = served.deployment;
        self.attempt = served.attempt;
        self.attempt_started = served.attempt_started;
        self.capacity = served.capacity;
        self.prompt_estimate = prompt_estimate;
        self.usage = None;
        self.choice_chunks = 0;
        self.splice = Some(splice);
        true
    }

    /// The upstream broke off after the client got the first bytes: one error event,
    /// then the end (no `[DONE]`).
    async fn cut(&mut self, why: &str) -> Bytes {
        tracing::warn!(deployment = %self.deployment.name, reason = why, "stream cut");
        self.finish(Some("stream_cut")).await;
        let error = ApiError {
            status: StatusCode::BAD_GATEWAY,
            kind: "server_error",
            code: "stream_cut",
            param: None,
            message: format!(
                "The stream from deployment `{}` broke off before it was complete.",
                self.deployment.name
            ),
            retry_after: None,
        };
        self.encoder.failed(&error)
    }
}

impl<E: Encoder> Drop for RelayState<E> {
    fn drop(&mut self) {
        // Dropped with the outcome unknown: the client went away. Record what was
        // probably billed; the tracker marks the disconnect.
        if self.tracker.is_some() {
            self.settle();
        }
    }
}

fn frames<E: Encoder>(state: RelayState<E>) -> impl Stream<Item = Result<Bytes, Infallible>> {
    // Boxed: `unfold` moves its state into each frame's future and back out again,
    // and the state (upstream stream, tracker, encoder) is large: a box makes each
    // move a pointer's.
    futures_util::stream::unfold(Box::new(state), |mut state| async move {
        let frame = state.next_frame().await?;
        Some((Ok(frame), state))
    })
}
