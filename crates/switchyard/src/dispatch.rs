//! Dispatch: call a logical model's deployments until one answers.
//!
//! [`crate::routing::plan`] gives the eligible deployments in order. Walking that
//! order, a deployment is skipped while its circuit breaker is open, while its
//! provider said it has no capacity, or when its granted quota (RPM/TPM) has no room
//! for this request: the gateway spills over *before* the provider answers 429.
//!
//! An attempt counts as answered only when nothing can go wrong invisibly any more:
//! a complete body for plain requests, the first event for streams. Until then a
//! retryable failure moves on to the next deployment and the client never knows.
//! When every deployment was tried, the loop waits (exponential backoff with full
//! jitter, at least the largest `retry-after` it was given, never beyond the
//! model's bound) and goes round again, up to `retry.max_attempts` calls in all.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use tokio::time::{timeout_at, Instant as TokioInstant};

use crate::api::error::ApiError;
use crate::api::tracker::{unix_ms, RequestTracker};
use crate::config::{Config, Constraints, Deployment, LogicalModel, Timeouts};
use crate::ledger::Usage;
use crate::limits::{Claim, Limiter, Reservation};
use crate::providers::{self, Endpoint, ProviderError, StreamDecoder, Translated};
use crate::resilience::{full_jitter, parse_duration, Admission};
use crate::routing::{self, Health, Needs};

/// Most bytes read of an upstream error body (it is only inspected for a message).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes accepted for a complete (non-stream) upstream response.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// The quota window providers grant RPM and TPM over.
const QUOTA_PERIOD: Duration = Duration::from_secs(60);

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A request body rendered for one deployment.
pub struct Rendered {
    pub body: Vec<u8>,
    /// Set when the body is in the upstream's own protocol and so is what the client
    /// speaks (a pass-through): the answer is kept as the upstream sent it, read by
    /// this instead of the adapter's translation into OpenAI's shape.
    pub native: Option<&'static dyn NativeAnswer>,
}

impl From<Vec<u8>> for Rendered {
    fn from(body: Vec<u8>) -> Self {
        Rendered { body, native: None }
    }
}

/// Reads an answer that is passed through in the upstream's own protocol.
pub trait NativeAnswer: Sync {
    /// The usage of a complete answer; an error when the body is not readable.
    fn usage(&self, body: &[u8]) -> Result<Option<Usage>, ProviderError>;
    /// A decoder whose items carry the upstream's events as they are, with usage.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;
}

/// What a successful attempt produced.
pub enum Opened {
    /// A complete JSON response and the usage read from it.
    Full { body: Bytes, usage: Option<Usage> },
    /// A stream whose first event has arrived.
    Stream {
        stream: UpstreamStream,
        first: Translated,
    },
}

pub struct Served {
    pub deployment: Arc<Deployment>,
    pub opened: Opened,
    /// The tracker's index of the winning attempt.
    pub attempt: usize,
    /// When the successful attempt started; its latency is measured from here.
    pub attempt_started: Instant,
    /// Why this deployment served, for `x-switchyard-route`.
    pub route: String,
    /// The quota held for this call; settle it with the actual tokens.
    pub capacity: Option<Capacity>,
}

/// A deployment quota reservation, to be corrected with actual usage.
pub struct Capacity {
    limiter: Arc<dyn Limiter>,
    reservation: Reservation,
    tokens_claimed: bool,
}

impl Capacity {
    /// Replaces the token estimate with the tokens actually used, off the request path.
    pub fn settle(self, usage: &Usage) {
        self.settle_counts(1, usage.prompt_tokens + usage.completion_tokens);
    }

    /// Returns a reservation whose call never happened.
    fn release(self) {
        self.settle_counts(0, 0);
    }

    fn settle_counts(self, requests: u64, tokens: u64) {
        tokio::spawn(async move {
            let actual = [requests, tokens];
            let n = if self.tokens_claimed { 2 } else { 1 };
            self.limiter.settle(self.reservation, &actual[..n]).await;
        });
    }
}

/// One request's routing inputs.
pub struct Job<'a> {
    pub model: &'a LogicalModel,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub needs: Needs,
    /// The caller's data policy (regions, tags), combined with the model's.
    pub caller: &'a Constraints,
}

/// Upstream clients, deployment health and capacity: the state dispatch shares
/// across requests.
pub struct Dispatcher {
    /// One pooled client per distinct connect timeout (usually one in all).
    clients: HashMap<Duration, reqwest::Client>,
    pub health: Health,
    limiter: Arc<dyn Limiter>,
}

impl Dispatcher {
    pub fn new(config: &Config, limiter: Arc<dyn Limiter>) -> Result<Self, reqwest::Error> {
        let mut clients = HashMap::new();
        for d in &config.deployments {
            if clients.contains_key(&d.timeouts.connect) {
                continue;
            }
            let client = reqwest::Client::builder()
                .connect_timeout(d.timeouts.connect)
                .pool_idle_timeout(config.upstream.pool_idle_timeout)
                .pool_max_idle_per_host(config.upstream.pool_max_idle_per_host)
                .tcp_nodelay(true)
                // A redirect would carry our provider credential to another host;
                // providers do not redirect API calls, so none is followed.
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            clients.insert(d.timeouts.connect, client);
        }
        Ok(Dispatcher {
            clients,
            health: Health::new(config.deployments.len(), config.breaker),
            limiter,
        })
    }

    fn client(&self, d: &Deployment) -> reqwest::Client {
        // Every deployment's connect timeout got a client in `new`.
        self.clients
            .get(&d.timeouts.connect)
            .cloned()
            .unwrap_or_default()
    }

    /// Routes one request. `make_body` renders the request for one deployment.
    pub async fn dispatch(
        &self,
        job: Job<'_>,
        tracker: &mut RequestTracker,
        mut make_body: impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
    ) -> Result<Served, ApiError> {
        let plan = routing::plan(job.model, &job.needs, job.caller, Some(&self.health));
        if plan.candidates.is_empty() {
            return Err(ApiError::no_eligible_deployment(
                &job.model.name,
                &plan.exclusions(),
            ));
        }
        let retry = job.model.retry;
        let mut attempts = 0u32;
        let mut last: Option<(ProviderError, Arc<Deployment>)> = None;
        let mut skipped = Skipped::default();
        let mut round = 0u32;
        let mut failures: Vec<String> = Vec::new();
        'rounds: loop {
            let mut tried_this_round = false;
            let mut worth_another_round = false;
            let mut longest_retry_after = Duration::ZERO;
            let mut i = 0;
            while i < plan.candidates.len() {
                if attempts >= retry.max_attempts {
                    break 'rounds;
                }
                let candidate = &plan.candidates[i];
                i += 1;
                let d = &candidate.deployment;
                let Some(gate) = self.admit(d, &job.needs, &mut skipped).await else {
                    continue;
                };
                tried_this_round = true;
                attempts += 1;
                // Hedging: the first call of a request may get a twin on the next
                // admissible deployment if it is slow to answer.
                let twin = if attempts == 1 && attempts < retry.max_attempts {
                    match job.model.hedge_after {
                        Some(after) => self
                            .next_admissible(&plan.candidates[i..], &job.needs, &mut skipped)
                            .await
                            .map(|(offset, twin_gate)| (after, offset, twin_gate)),
                        None => None,
                    }
                } else {
                    None
                };
                let outcome = match twin {
                    None => {
                        self.attempt_logged(job.model, d, &job, tracker, gate, &mut make_body)
                            .await
                    }
                    Some((after, offset, twin_gate)) => {
                        let twin = plan.candidates[i + offset].deployment.clone();
                        i += offset + 1;
                        attempts += 1;
                        self.hedged(
                            &job,
                            tracker,
                            &mut make_body,
                            (d.clone(), gate),
                            (twin, twin_gate),
                            after,
                        )
                        .await
                    }
                };
                match outcome {
                    Ok(mut served) => {
                        served.route = route_header(
                            plan.candidates
                                .iter()
                                .find(|c| c.deployment.name == served.deployment.name)
                                .map_or("", |c| c.why.as_str()),
                            &failures,
                            &skipped,
                        );
                        return Ok(served);
                    }
                    Err((e, failed)) => {
                        failures.push(format!("{} {}", failed.name, e.class()));
                        if let ProviderError::Status {
                            retry_after: Some(v),
                            ..
                        } = &e
                        {
                            if let Some(wait) = v.to_str().ok().and_then(parse_duration) {
                                longest_retry_after = longest_retry_after.max(wait);
                            }
                        }
                        let retryable = e.retryable();
                        // Another round helps only after a failure that may pass.
                        worth_another_round |= e.may_pass();
                        last = Some((e, failed));
                        if !retryable {
                            break 'rounds;
                        }
                    }
                }
            }
            if !tried_this_round || !worth_another_round || attempts >= retry.max_attempts {
                break;
            }
            // Every deployment failed once: wait, then go round again. A retry-after
            // longer than the model allows ends the request instead of stalling it.
            if longest_retry_after > retry.max_backoff {
                break;
            }
            let wait =
                full_jitter(retry.base_backoff, retry.max_backoff, round).max(longest_retry_after);
            tokio::time::sleep(wait).await;
            round += 1;
        }
        match last {
            Some((e, d)) => Err(ApiError::from_provider(&e, &d.name)),
            None => Err(skipped.into_error(&job.model.name)),
        }
    }

    /// Whether `d` may take a call now; if so, its quota reservation.
    async fn admit(&self, d: &Deployment, needs: &Needs, skipped: &mut Skipped) -> Option<Gate> {
        let health = self.health.of(d);
        if let Some(ms) = health.exhausted_for_ms(unix_ms()) {
            skipped.capacity(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            return None;
        }
        let admission = health.admit(Instant::now());
        if admission == Admission::Refused {
            skipped.circuit(health.reopens_in(Instant::now()).unwrap_or_default());
            return None;
        }
        match self.reserve(d, needs).await {
            Ok(capacity) => Some(Gate {
                capacity,
                probe: admission == Admission::Probe,
            }),
            Err(retry_after) => {
                if admission == Admission::Probe {
                    health.release_probe();
                }
                skipped.capacity(retry_after);
                None
            }
        }
    }

    async fn next_admissible(
        &self,
        rest: &[routing::Candidate],
        needs: &Needs,
        skipped: &mut Skipped,
    ) -> Option<(usize, Gate)> {
        for (offset, c) in rest.iter().enumerate() {
            if let Some(gate) = self.admit(&c.deployment, needs, skipped).await {
                return Some((offset, gate));
            }
        }
        None
    }

    /// Reserves one request and the estimated tokens in the deployment's quota.
    async fn reserve(&self, d: &Deployment, needs: &Needs) -> Result<Option<Capacity>, Duration> {
        let mut claims = Vec::with_capacity(2);
        if let Some(rpm) = d.quota.rpm {
            claims.push(Claim {
                key: format!("deployment:{}:rpm", d.name).into(),
                limit: rpm,
                period: QUOTA_PERIOD,
                amount: 1,
            });
        }
        let tokens_claimed = d.quota.tpm.is_some();
        if let Some(tpm) = d.quota.tpm {
            if claims.is_empty() {
                // Keep the request claim first so settle's order is fixed.
                claims.push(Claim {
                    key: format!("deployment:{}:rpm", d.name).into(),
                    limit: u64::MAX,
                    period: QUOTA_PERIOD,
                    amount: 1,
                });
            }
            claims.push(Claim {
                key: format!("deployment:{}:tpm", d.name).into(),
                limit: tpm,
                period: QUOTA_PERIOD,
                amount: needs.estimated_total_tokens(),
            });
        }
        if claims.is_empty() {
            return Ok(None);
        }
        match self.limiter.try_reserve(&claims).await {
            Ok(reservation) => Ok(Some(Capacity {
                limiter: self.limiter.clone(),
                reservation,
                tokens_claimed,
            })),
            Err(refusal) => Err(refusal.retry_after),
        }
    }

    /// One attempt with its bookkeeping: tracker, health and breaker.
    async fn attempt_logged(
        &self,
        model: &LogicalModel,
        d: &Arc<Deployment>,
        job: &Job<'_>,
        tracker: &mut RequestTracker,
        gate: Gate,
        make_body: &mut impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
    ) -> Result<Served, (ProviderError, Arc<Deployment>)> {
        let idx = tracker.begin_attempt(d);
        let started = Instant::now();
        let body = match make_body(d) {
            Ok(b) => b,
            Err(e) => {
                tracker.fail_attempt(idx, &e, started);
                gate.release(&self.health, d);
                return Err((e, d.clone()));
            }
        };
        let health = self.health.of(d);
        let in_flight = health.start_call();
        let result = attempt(
            &self.client(d),
            d,
            model.timeouts_for(d),
            job.endpoint,
            job.stream,
            body,
        )
        .await;
        drop(in_flight);
        self.conclude(d, idx, started, result, gate, tracker)
    }

    /// Records the outcome of an attempt in the tracker and the deployment's health.
    fn conclude(
        &self,
        d: &Arc<Deployment>,
        idx: usize,
        started: Instant,
        result: AttemptResult,
        gate: Gate,
        tracker: &mut RequestTracker,
    ) -> Result<Served, (ProviderError, Arc<Deployment>)> {
        let health = self.health.of(d);
        let now = Instant::now();
        if let Some(status) = result.status {
            tracker.attempt_status(idx, status);
        }
        if let Some(until) = result.exhausted_until_ms {
            health.mark_exhausted(until);
        }
        match result.outcome {
            Ok(opened) => {
                health.observe_latency(now.duration_since(started));
                health.record(true, now);
                Ok(Served {
                    deployment: d.clone(),
                    opened,
                    attempt: idx,
                    attempt_started: started,
                    route: String::new(),
                    capacity: gate.capacity,
                })
            }
            Err(e) => {
                if matches!(e, ProviderError::Misconfigured { .. }) {
                    // The operator's to fix, and every request routed here pays for
                    // it until then (the breaker limits how often): say it loudly.
                    tracing::error!(
                        request_id = tracker.request_id(),
                        deployment = %d.name,
                        upstream_model = %d.upstream_model,
                        provider = %d.provider.name,
                        error = %e,
                        "deployment misconfigured: the upstream does not serve what it names"
                    );
                } else {
                    tracing::warn!(
                        request_id = tracker.request_id(),
                        deployment = %d.name,
                        error = %e,
                        "upstream attempt failed"
                    );
                }
                // A client-caused 4xx says nothing about the deployment's health.
                if e.retryable() {
                    health.record(false, now);
                } else if gate.probe {
                    health.release_probe();
                }
                tracker.fail_attempt(idx, &e, started);
                if let Some(capacity) = gate.capacity {
                    // The call failed: it used no tokens; the request still counts.
                    capacity.settle(&Usage::default());
                }
                Err((e, d.clone()))
            }
        }
    }

    /// Two attempts raced: `second` starts when `first` has not answered after
    /// `after`. The first success wins; the loser is cancelled and recorded.
    async fn hedged(
        &self,
        job: &Job<'_>,
        tracker: &mut RequestTracker,
        make_body: &mut impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
        first: (Arc<Deployment>, Gate),
        second: (Arc<Deployment>, Gate),
        after: Duration,
    ) -> Result<Served, (ProviderError, Arc<Deployment>)> {
        let (d1, gate1) = first;
        let (d2, gate2) = second;
        let body1 = make_body(&d1).map_err(|e| (e, d1.clone()))?;
        let body2 = make_body(&d2).map_err(|e| (e, d2.clone()))?;
        let idx1 = tracker.begin_attempt(&d1);
        let started1 = Instant::now();
        let h1 = self.health.of(&d1).start_call();
        let client1 = self.client(&d1);
        let fut1 = attempt(
            &client1,
            &d1,
            job.model.timeouts_for(&d1),
            job.endpoint,
            job.stream,
            body1,
        );
        tokio::pin!(fut1);
        tokio::select! {
            r = &mut fut1 => {
                drop(h1);
                // Answered before the hedge delay: the twin never starts.
                gate2.release(&self.health, &d2);
                return self.conclude(&d1, idx1, started1, r, gate1, tracker);
            }
            () = tokio::time::sleep(after) => {}
        }
        let idx2 = tracker.begin_attempt(&d2);
        let started2 = Instant::now();
        let h2 = self.health.of(&d2).start_call();
        let client2 = self.client(&d2);
        let fut2 = attempt(
            &client2,
            &d2,
            job.model.timeouts_for(&d2),
            job.endpoint,
            job.stream,
            body2,
        );
        tokio::pin!(fut2);
        let (winner_first, r) = tokio::select! {
            r = &mut fut1 => (true, r),
            r = &mut fut2 => (false, r),
        };
        let (wd, widx, wstarted, wgate, ld, lidx, lstarted, lgate) = if winner_first {
            (
                d1.clone(),
                idx1,
                started1,
                gate1,
                d2.clone(),
                idx2,
                started2,
                gate2,
            )
        } else {
            (
                d2.clone(),
                idx2,
                started2,
                gate2,
                d1.clone(),
                idx1,
                started1,
                gate1,
            )
        };
        if r.outcome.is_ok() {
            drop((h1, h2));
            // The loser is cancelled (its future dropped, its connection closed);
            // the provider may still bill the prompt it read.
            tracker.cancel_attempt(lidx, &ld, lstarted, "hedge_lost", job.needs.prompt_tokens);
            lgate.release(&self.health, &ld);
            return self.conclude(&wd, widx, wstarted, r, wgate, tracker);
        }
        // The first to finish failed (its failure is recorded); the other decides.
        let _failed = self.conclude(&wd, widx, wstarted, r, wgate, tracker);
        let other = if winner_first {
            (&mut fut2).await
        } else {
            (&mut fut1).await
        };
        drop((h1, h2));
        self.conclude(&ld, lidx, lstarted, other, lgate, tracker)
    }
}

/// Permission to call a deployment: its quota reservation and whether the call is
/// the breaker's half-open probe.
struct Gate {
    capacity: Option<Capacity>,
    probe: bool,
}

impl Gate {
    /// Gives back what an unused gate holds.
    fn release(self, health: &Health, d: &Deployment) {
        if self.probe {
            health.of(d).release_probe();
        }
        if let Some(capacity) = self.capacity {
            capacity.release();
        }
    }
}

/// Why deployments were passed over without a call.
#[derive(Default)]
struct Skipped {
    circuit_open: u32,
    over_capacity: u32,
    /// Soonest time any skipped deployment may take calls again.
    soonest: Option<Duration>,
}

impl Skipped {
    fn circuit(&mut self, reopens_in: Duration) {
        self.circuit_open += 1;
        self.note(reopens_in);
    }

    fn capacity(&mut self, retry_after: Duration) {
        self.over_capacity += 1;
        self.note(retry_after);
    }

    fn note(&mut self, wait: Duration) {
        self.soonest = Some(self.soonest.map_or(wait, |s| s.min(wait)));
    }

    fn into_error(self, model: &str) -> ApiError {
        let retry_after = self.soonest.unwrap_or(Duration::from_secs(1));
        if self.over_capacity > 0 && self.circuit_open == 0 {
            ApiError::capacity_exhausted(model, retry_after)
        } else {
            ApiError::no_healthy_deployment(model, retry_after)
        }
    }
}

fn route_header(why: &str, failures: &[String], skipped: &Skipped) -> String {
    let mut out = why.to_owned();
    if !failures.is_empty() {
        out.push_str("; after ");
        out.push_str(&failures.join(", "));
    }
    if skipped.over_capacity > 0 {
        out.push_str(&format!("; {} over capacity", skipped.over_capacity));
    }
    if skipped.circuit_open > 0 {
        out.push_str(&format!("; {} circuit open", skipped.circuit_open));
    }
    out
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

struct AttemptResult {
    status: Option<u16>,
    /// Set when the provider said its capacity is used up until then (unix ms).
    exhausted_until_ms: Option<i64>,
    outcome: Result<Opened, ProviderError>,
}

/// Reads the provider's capacity signals: a 429's `retry-after`, or rate-limit
/// headers saying nothing remains.
fn exhaustion(status: u16, headers: &http::HeaderMap) -> Option<i64> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let wait = if status == 429 {
        Some(
            header("retry-after")
                .and_then(parse_duration)
                .unwrap_or(Duration::from_secs(1)),
        )
    } else {
        let out = |remaining: &str, reset: &str| {
            (header(remaining)?.trim() == "0")
                .then(|| header(reset).and_then(parse_duration))
                .flatten()
        };
        out(
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        )
        .into_iter()
        .chain(out(
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ))
        .max()
    }?;
    Some(unix_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2))
}

async fn attempt(
    client: &reqwest::Client,
    deployment: &Deployment,
    timeouts: Timeouts,
    endpoint: Endpoint,
    stream: bool,
    rendered: Rendered,
) -> AttemptResult {
    let start = TokioInstant::now();
    let total = start + timeouts.total;
    let first_byte = (start + timeouts.first_byte).min(total);
    let adapter = providers::adapter(&deployment.provider.kind);
    let native = rendered.native;
    let request = match adapter.request(client, deployment, endpoint, stream, rendered.body) {
        Ok(r) => r,
        Err(e) => {
            return AttemptResult {
                status: None,
                exhausted_until_ms: None,
                outcome: Err(e),
            }
        }
    };
    let response = match timeout_at(first_byte, request.send()).await {
        Err(_) => {
            return AttemptResult {
                status: None,
                exhausted_until_ms: None,
                outcome: Err(ProviderError::Timeout {
                    phase: "response headers",
                }),
            }
        }
        Ok(Err(e)) => {
            return AttemptResult {
                status: None,
                exhausted_until_ms: None,
                outcome: Err(send_error(e)),
            }
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    let exhausted_until_ms = exhaustion(status, response.headers());
    let outcome = read_answer(
        deployment, endpoint, response, stream, first_byte, total, native,
    )
    .await;
    AttemptResult {
        status: Some(status),
        exhausted_until_ms,
        outcome,
    }
}

async fn read_answer(
    deployment: &Deployment,
    endpoint: Endpoint,
    response: reqwest::Response,
    stream: bool,
    first_byte: TokioInstant,
    total: TokioInstant,
    native: Option<&'static dyn NativeAnswer>,
) -> Result<Opened, ProviderError> {
    let adapter = providers::adapter(&deployment.provider.kind);
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = read_limited(response.bytes_stream().boxed(), MAX_ERROR_BODY, total)
            .await
            .unwrap_or_default();
        return Err(adapter.error(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            &headers,
            &body,
        ));
    }
    if stream {
        if !adapter.is_stream(response.headers()) {
            return Err(ProviderError::Protocol(
                "a stream was requested but the answer is not a stream".into(),
            ));
        }
        let mut upstream = UpstreamStream {
            body: response.bytes_stream().boxed(),
            decoder: match native {
                Some(n) => n.stream_decoder(),
                None => adapter.stream_decoder(deployment),
            },
            deadline: total,
        };
        let first = match timeout_at(first_byte, upstream.next_item()).await {
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
    let (body, usage) = match native {
        Some(n) => {
            let usage = n.usage(&body)?;
            (body, usage)
        }
        None => adapter.response(endpoint, deployment, body)?,
    };
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

/// An upstream stream, translated item by item as the network delivers it.
pub struct UpstreamStream {
    body: ByteStream,
    decoder: Box<dyn StreamDecoder>,
    /// The attempt's total deadline.
    deadline: TokioInstant,
}

impl UpstreamStream {
    /// The next item; `Ok(None)` when the upstream closed the stream cleanly between
    /// events.
    pub async fn next_item(&mut self) -> Result<Option<Translated>, ProviderError> {
        loop {
            if let Some(item) = self.decoder.next()? {
                return Ok(Some(item));
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
