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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::StatusCode;
use tokio::time::{timeout_at, Instant as TokioInstant};

use crate::config::{Config, Constraints, Deployment, LogicalModel, Timeouts};
use crate::contracts::{CapReached, ContractBook, ContractHold, Refused, ShadowBudgets};
use crate::ledger::tracker::RequestTracker;
use crate::limits::{Claim, Limiter, Reservation};
use crate::providers::{self, Endpoint, StreamDecoder, Translated};
use crate::resilience::full_jitter;
use crate::routing::health::{CallPermit, InFlight};
use crate::routing::{self, Health, Needs};
use crate::types::time::now_ms;
use crate::types::time::parse_duration;
use crate::types::ProviderError;
use crate::types::Usage;

/// Most bytes read of an upstream error body (it is only inspected for a message).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes accepted for a complete (non-stream) upstream response.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// The quota window providers grant RPM and TPM over.
const QUOTA_PERIOD: Duration = Duration::from_secs(60);

/// When a deployment skipped because shared state was unreachable may be tried again:
/// the state watcher re-checks Redis about this often.
const STATE_UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

use crate::providers::upstream::{self, ByteStream};

/// A request body rendered for one deployment.
pub struct Rendered {
    pub body: Vec<u8>,
    /// Set when the body is in the upstream's own protocol and so is what the client
    /// speaks (a pass-through): the answer is kept as the upstream sent it, read by
    /// this instead of the adapter's translation into OpenAI's shape.
    pub native: Option<&'static dyn NativeAnswer>,
    /// The API called instead of the job's (a Responses request sent as it is).
    pub endpoint: Option<Endpoint>,
}

impl From<Vec<u8>> for Rendered {
    fn from(body: Vec<u8>) -> Self {
        Rendered {
            body,
            native: None,
            endpoint: None,
        }
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

/// One quota window's room: see [`Dispatcher::quota_headroom`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub limit: u64,
    pub remaining: u64,
    /// When the window will be empty again.
    pub resets_in: Duration,
}

/// A deployment's quota room; `None` where its quota sets no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaHeadroom {
    pub requests: Option<Headroom>,
    pub tokens: Option<Headroom>,
}

/// A deployment's quota reservation and its contract's hold, to be corrected with
/// actual usage.
///
/// Dropped without being settled, a reservation whose call was never made is given
/// back (a hedge twin that never started, a body that could not be rendered, a request
/// cancelled before its call); one whose call was made keeps its estimate, because the
/// provider counted (and may bill) that call whether or not its answer was read.
pub struct Capacity {
    limiter: Arc<dyn Limiter>,
    /// `None` once settled, or when the deployment has no quota.
    reservation: Option<Reservation>,
    tokens_claimed: bool,
    /// What the call holds against its deployment's contract.
    contract: Option<ContractHold>,
    /// Whether the call this reservation is for was sent.
    called: bool,
}

impl Capacity {
    /// Replaces the estimates with the tokens actually used (and their cost, in the
    /// contract), off the request path.
    pub fn settle(mut self, usage: &Usage) {
        if let Some(hold) = self.contract.take() {
            hold.settle(usage);
        }
        self.settle_counts(
            1,
            usage.prompt_tokens.saturating_add(usage.completion_tokens),
        );
    }

    fn settle_counts(&mut self, requests: u64, tokens: u64) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        // Settling awaits the limiter, which a drop cannot; outside a runtime (only at
        // teardown) the estimate simply stands.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let actual = if self.tokens_claimed {
            vec![requests, tokens]
        } else {
            vec![requests]
        };
        let limiter = self.limiter.clone();
        runtime.spawn(async move {
            limiter.settle(reservation, &actual).await;
        });
    }
}

impl Drop for Capacity {
    fn drop(&mut self) {
        let hold = self.contract.take();
        if !self.called {
            // Dropped, the hold gives its reservation back.
            drop(hold);
            self.settle_counts(0, 0);
        } else if let Some(hold) = hold {
            hold.keep();
        }
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
    /// The issuer of the reasoning state the request carries back (a tool loop's
    /// signatures): routing tries that deployment first.
    pub affinity: Option<&'a str>,
    /// The channel's time-to-first-token objective: deployments whose recent p90
    /// misses it are tried last, and a first call without a first token by then is
    /// hedged.
    pub ttft_slo: Option<Duration>,
}

/// Upstream clients, deployment health and capacity: the state dispatch shares
/// across requests.
pub struct Dispatcher {
    /// One pooled client per distinct connect timeout (usually one in all).
    clients: HashMap<Duration, upstream::Client>,
    pub health: Health,
    limiter: Arc<dyn Limiter>,
    /// Run-time provider credentials (tokens renewed before they expire).
    pub credentials: providers::auth::Credentials,
    /// Contract burn and cap holds, kept across reloads.
    pub contracts: Arc<ContractBook>,
    /// Shadow evaluation's daily budgets, kept across reloads.
    pub shadow_budgets: Arc<ShadowBudgets>,
}

impl Dispatcher {
    pub fn new(config: &Config, limiter: Arc<dyn Limiter>) -> Result<Self, upstream::ClientError> {
        Dispatcher::next(config, limiter, None)
    }

    /// The dispatcher for `config`; with `previous` (the configuration it replaces
    /// and its dispatcher), the deployments that keep their names keep their health,
    /// and the pooled clients are reused while the pool settings are the same (their
    /// warm connections with them).
    pub fn next(
        config: &Config,
        limiter: Arc<dyn Limiter>,
        previous: Option<(&Config, &Dispatcher)>,
    ) -> Result<Self, upstream::ClientError> {
        let reusable = previous.filter(|(old, _)| {
            old.upstream.pool_idle_timeout == config.upstream.pool_idle_timeout
                && old.upstream.pool_max_idle_per_host == config.upstream.pool_max_idle_per_host
        });
        let mut clients = HashMap::new();
        for d in &config.deployments {
            if clients.contains_key(&d.timeouts.connect) {
                continue;
            }
            if let Some(kept) = reusable.and_then(|(_, p)| p.clients.get(&d.timeouts.connect)) {
                clients.insert(d.timeouts.connect, kept.clone());
                continue;
            }
            // No redirect is followed (see `providers::upstream`).
            let client = upstream::Client::new(upstream::PoolSettings {
                connect_timeout: d.timeouts.connect,
                idle_timeout: config.upstream.pool_idle_timeout,
                max_idle_per_host: config.upstream.pool_max_idle_per_host,
            })?;
            clients.insert(d.timeouts.connect, client);
        }
        let health = match previous {
            Some((old, p)) => Health::carried_over(config, old, &p.health),
            None => Health::new(config.deployments.len(), config.breaker),
        };
        let credentials = providers::auth::Credentials::next(
            config,
            previous.map(|(old, p)| (old, &p.credentials)),
        )?;
        Ok(Dispatcher {
            clients,
            health,
            limiter,
            credentials,
            contracts: previous.map_or_else(ContractBook::new, |(_, p)| p.contracts.clone()),
            shadow_budgets: previous
                .map_or_else(ShadowBudgets::new, |(_, p)| p.shadow_budgets.clone()),
        })
    }

    fn client(&self, d: &Deployment) -> Result<&upstream::Client, ProviderError> {
        // Every deployment's connect timeout got a client in `new`.
        self.clients
            .get(&d.timeouts.connect)
            .ok_or_else(|| ProviderError::Connect("no upstream client for this deployment".into()))
    }

    /// Routes one request. `make_body` renders the request for one deployment.
    pub async fn dispatch(
        &self,
        job: Job<'_>,
        tracker: &mut RequestTracker,
        make_body: impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
    ) -> Result<Served, DispatchError> {
        self.dispatch_within(job, Bounds::default(), tracker, make_body)
            .await
    }

    /// Routes the continuation of a stream that broke on deployment `broken` (see
    /// `stream_recovery`): the model's plan without that deployment, at most
    /// `max_attempts` calls, no hedge. Everything else is as for a request: the same
    /// constraints, gates and failover.
    pub async fn dispatch_continuation(
        &self,
        job: Job<'_>,
        broken: &str,
        max_attempts: u32,
        tracker: &mut RequestTracker,
        make_body: impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
    ) -> Result<Served, DispatchError> {
        let bounds = Bounds {
            exclude: Some(broken),
            max_attempts: Some(max_attempts),
            no_hedge: true,
        };
        self.dispatch_within(job, bounds, tracker, make_body).await
    }

    async fn dispatch_within(
        &self,
        job: Job<'_>,
        bounds: Bounds<'_>,
        tracker: &mut RequestTracker,
        mut make_body: impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
    ) -> Result<Served, DispatchError> {
        let mut plan = routing::plan(job.model, &job.needs, job.caller, Some(&self.health));
        let now = now_ms();
        routing::prefer_commitments(&mut plan, job.model, |c| self.contracts.unburned(c, now));
        if let Some(slo) = job.ttft_slo {
            routing::demote_slow(&mut plan, &self.health, slo, now_ms());
        }
        if let Some(issuer) = job.affinity {
            routing::prefer_issuer(&mut plan, issuer);
        }
        if let Some(broken) = bounds.exclude {
            plan.candidates.retain(|c| c.deployment.name != broken);
        }
        if plan.candidates.is_empty() {
            let mut exclusions = plan.exclusions();
            if let Some(broken) = bounds.exclude {
                if !exclusions.is_empty() {
                    exclusions.push_str("; ");
                }
                exclusions.push_str(&format!("{broken}: its stream broke off"));
            }
            return Err(DispatchError::NoEligibleDeployment {
                model: job.model.name.clone(),
                exclusions,
            });
        }
        let mut retry = job.model.retry;
        if let Some(most) = bounds.max_attempts {
            retry.max_attempts = retry.max_attempts.min(most);
        }
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
            while let Some(candidate) = plan.candidates.get(i) {
                if attempts >= retry.max_attempts {
                    break 'rounds;
                }
                i += 1;
                let d = &candidate.deployment;
                let Some(gate) = self.admit(d, &job, &mut skipped).await else {
                    continue;
                };
                tried_this_round = true;
                attempts += 1;
                // Hedging: the first call of a request may get a twin on the next
                // admissible deployment if it is slow to answer.
                // A channel's first-token objective hedges too: the twin starts when the
                // first call has produced no first token by then.
                let hedge_after = match (job.model.hedge_after, job.ttft_slo) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
                .filter(|_| !bounds.no_hedge && attempts == 1 && attempts < retry.max_attempts);
                let outcome = match hedge_after {
                    None => {
                        self.attempt_logged(d, &job, tracker, gate, &mut make_body)
                            .await
                    }
                    Some(after) => {
                        let rest = plan.candidates.get(i..).unwrap_or_default();
                        let hedge = Hedge {
                            rest,
                            after,
                            skipped: &mut skipped,
                        };
                        // Boxed: a hedge holds two calls' futures, which inline
                        // would make every request's future (moved into a box per
                        // request) twice as large for the few models that hedge.
                        let (outcome, twin) =
                            Box::pin(self.hedged(&job, tracker, &mut make_body, d, gate, hedge))
                                .await;
                        // A twin that was started (or tried to start) is this round's
                        // turn of its deployment; one that never started leaves it to
                        // the loop, which moves on to it at once if the first failed.
                        if let Some(offset) = twin {
                            i += offset + 1;
                            attempts += 1;
                        }
                        outcome
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
            Some((error, d)) => Err(DispatchError::Upstream {
                error,
                deployment: d.name.clone(),
            }),
            None => Err(skipped.into_error(&job.model.name)),
        }
    }

    /// Whether `d` may take a call now; if so, the breaker's permit and the quota
    /// reservation, both given back if the gate is dropped unused.
    async fn admit(
        &self,
        d: &Deployment,
        job: &Job<'_>,
        skipped: &mut Skipped,
    ) -> Option<Gate<'_>> {
        let health = self.health.of(d);
        if let Some(ms) = health.exhausted_for_ms(now_ms()) {
            skipped.capacity(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            return None;
        }
        // No attempt outlives its total timeout, so a probe slot held longer than that
        // is lost and may be granted again (see `resilience::breaker`).
        let lease = job.model.timeouts_for(d).total;
        let Some(permit) = health.admit(Instant::now(), lease) else {
            skipped.circuit(health.reopens_in(Instant::now()).unwrap_or_default());
            return None;
        };
        let contract = match self.hold_contract(d, &job.needs, lease).await {
            Ok(hold) => hold,
            Err((Refused::Cap(cap), resets_in)) => {
                // The permit is dropped here: a probe slot goes back unused.
                skipped.contract_cap(&d.name, cap, resets_in);
                return None;
            }
            Err((Refused::StateUnavailable { contract }, retry)) => {
                tracing::debug!(deployment = %d.name, contract,
                    "deployment skipped: its contract's cap is in shared state, which is unreachable");
                skipped.capacity(retry);
                return None;
            }
        };
        match self.reserve(d, &job.needs, contract).await {
            Ok(capacity) => Some(Gate { permit, capacity }),
            Err(retry_after) => {
                // The permit and the contract hold are dropped here: a probe slot and
                // the cap's reservation go back unused.
                skipped.capacity(retry_after);
                None
            }
        }
    }

    /// The first deployment of `rest` that admits a call now, with its offset in `rest`.
    async fn next_admissible(
        &self,
        rest: &[routing::Candidate],
        job: &Job<'_>,
        skipped: &mut Skipped,
    ) -> Option<(usize, Arc<Deployment>, Gate<'_>)> {
        for (offset, c) in rest.iter().enumerate() {
            if let Some(gate) = self.admit(&c.deployment, job, skipped).await {
                return Some((offset, c.deployment.clone(), gate));
            }
        }
        None
    }

    /// Asks Anthropic deployment `d` of `model` to count the input tokens of `body`
    /// (a Messages body naming `d`'s upstream model): one call within the attempt's
    /// timeouts, outside the attempt loop. It takes no quota and is not a breaker's
    /// call: Anthropic counts tokens free, under limits of its own.
    pub async fn count_tokens(
        &self,
        model: &LogicalModel,
        d: &Deployment,
        body: Vec<u8>,
    ) -> Result<u64, ProviderError> {
        let timeouts = model.timeouts_for(d);
        let start = TokioInstant::now();
        let total = start + timeouts.total;
        let first_byte = (start + timeouts.first_byte).min(total);
        let client = self.client(d)?;
        let request = providers::anthropic::count_tokens_request(client, d, Bytes::from(body))?;
        let response = match timeout_at(first_byte, request.send(client)).await {
            Err(_) => {
                return Err(ProviderError::Timeout {
                    phase: "response headers",
                })
            }
            Ok(Err(e)) => return Err(send_error(e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let headers = response.headers().clone();
        // A count is a few bytes; an error body is read as far as any other's.
        let body = read_limited(response.bytes_stream(), MAX_ERROR_BODY, total).await?;
        if !status.is_success() {
            return Err(providers::anthropic::status_error(
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                &headers,
                &body,
            ));
        }
        providers::anthropic::counted_tokens(&body)
    }

    /// What is left of `d`'s granted quota (RPM, TPM) in the current minute, for
    /// `GET /admin/health`: a read of the limiter's windows, which reserves nothing.
    pub async fn quota_headroom(&self, d: &Deployment) -> QuotaHeadroom {
        let mut out = QuotaHeadroom::default();
        if let Some(rpm) = d.quota.rpm {
            let (left, reset) = self
                .limiter
                .remaining(&d.derived.rpm_key, rpm, QUOTA_PERIOD)
                .await;
            out.requests = Some(Headroom {
                limit: rpm,
                remaining: left,
                resets_in: reset,
            });
        }
        if let Some(tpm) = d.quota.tpm {
            let (left, reset) = self
                .limiter
                .remaining(&d.derived.tpm_key, tpm, QUOTA_PERIOD)
                .await;
            out.tokens = Some(Headroom {
                limit: tpm,
                remaining: left,
                resets_in: reset,
            });
        }
        out
    }

    /// A hold on the contract that covers `d`, reserving the call's most cost at the
    /// contracted price against the cap (for at most `lease`, the call's longest run);
    /// refused, with the time until it may be tried again, when the cap has no room
    /// or cannot be known.
    async fn hold_contract(
        &self,
        d: &Deployment,
        needs: &Needs,
        lease: Duration,
    ) -> Result<Option<ContractHold>, (Refused, Duration)> {
        let now = now_ms();
        match self
            .contracts
            .hold_for_call(d, &needs.expected_usage(), lease, now)
            .await
        {
            Ok(hold) => Ok(hold),
            Err(refused @ Refused::Cap(_)) => {
                let ends = d
                    .contract
                    .as_ref()
                    .and_then(|c| c.period.bounds(now))
                    .map_or(now, |(_, end)| end);
                let wait = u64::try_from(ends.saturating_sub(now)).unwrap_or(0);
                Err((refused, Duration::from_millis(wait)))
            }
            Err(refused @ Refused::StateUnavailable { .. }) => {
                Err((refused, STATE_UNAVAILABLE_RETRY))
            }
        }
    }

    /// Reserves one request and the estimated tokens in the deployment's quota; the
    /// capacity also carries the call's contract hold.
    async fn reserve(
        &self,
        d: &Deployment,
        needs: &Needs,
        contract: Option<ContractHold>,
    ) -> Result<Option<Capacity>, Duration> {
        let mut claims = Vec::with_capacity(2);
        if let Some(rpm) = d.quota.rpm {
            claims.push(Claim {
                key: d.derived.rpm_key.clone(),
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
                    key: d.derived.rpm_key.clone(),
                    limit: u64::MAX,
                    period: QUOTA_PERIOD,
                    amount: 1,
                });
            }
            claims.push(Claim {
                key: d.derived.tpm_key.clone(),
                limit: tpm,
                period: QUOTA_PERIOD,
                amount: needs.estimated_total_tokens(),
            });
        }
        if claims.is_empty() {
            return Ok(contract.map(|hold| Capacity {
                limiter: self.limiter.clone(),
                reservation: None,
                tokens_claimed,
                contract: Some(hold),
                called: false,
            }));
        }
        match self.limiter.try_reserve(&claims).await {
            Ok(reservation) => Ok(Some(Capacity {
                limiter: self.limiter.clone(),
                reservation: Some(reservation),
                tokens_claimed,
                contract,
                called: false,
            })),
            Err(refusal) => Err(refusal.retry_after),
        }
    }

    /// One attempt with its bookkeeping: tracker, health and breaker.
    async fn attempt_logged(
        &self,
        d: &Arc<Deployment>,
        job: &Job<'_>,
        tracker: &mut RequestTracker,
        gate: Gate<'_>,
        make_body: &mut impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
    ) -> Result<Served, (ProviderError, Arc<Deployment>)> {
        let (call, body) = match self.begin(d, tracker, gate, make_body) {
            Ok(started) => started,
            Err(e) => return Err((e, d.clone())),
        };
        let result = self
            .call(d.clone(), job, body, call.traceparent.clone())
            .await;
        self.conclude(call, result, tracker)
    }

    /// Renders the body for `d` and marks the call as started. A body that cannot be
    /// rendered fails the attempt before any call, and the gate goes back unused.
    fn begin<'s>(
        &'s self,
        d: &Arc<Deployment>,
        tracker: &mut RequestTracker,
        mut gate: Gate<'s>,
        make_body: &mut impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
    ) -> Result<(Call<'s>, Rendered), ProviderError> {
        let idx = tracker.begin_attempt(d);
        let started = Instant::now();
        let body = match make_body(d) {
            Ok(body) => body,
            Err(e) => {
                tracker.fail_attempt(idx, &e, started);
                return Err(e);
            }
        };
        if let Some(capacity) = &mut gate.capacity {
            capacity.called = true;
        }
        let call = Call {
            deployment: d.clone(),
            idx,
            traceparent: tracker.traceparent(idx),
            started,
            sent: TokioInstant::now(),
            gate,
            _in_flight: self.health.of(d).start_call(),
        };
        Ok((call, body))
    }

    /// Makes the call. It owns its deployment so that the two calls of a hedge have
    /// one type whatever their deployments' lifetimes.
    async fn call(
        &self,
        d: Arc<Deployment>,
        job: &Job<'_>,
        body: Rendered,
        traceparent: Option<String>,
    ) -> AttemptResult {
        let client = match self.client(&d) {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        attempt(
            client,
            &d,
            self.credentials.of(&d),
            job.model.timeouts_for(&d),
            job.endpoint,
            job.stream,
            body,
            traceparent,
        )
        .await
    }

    /// Records the outcome of an attempt in the tracker and the deployment's health.
    fn conclude(
        &self,
        call: Call<'_>,
        result: AttemptResult,
        tracker: &mut RequestTracker,
    ) -> Result<Served, (ProviderError, Arc<Deployment>)> {
        let Call {
            deployment: d,
            idx,
            traceparent: _,
            started,
            sent,
            gate: Gate { permit, capacity },
            _in_flight,
        } = call;
        drop(_in_flight);
        let health = self.health.of(&d);
        let now = Instant::now();
        if let Some(status) = result.status {
            tracker.attempt_status(idx, status);
        }
        if let Some(until) = result.exhausted_until_ms {
            health.mark_exhausted(until);
        }
        match result.outcome {
            Ok(opened) => {
                let first_token = sent.elapsed();
                health.observe_latency(first_token);
                health.observe_first_token(first_token, now_ms());
                permit.record(true, now);
                Ok(Served {
                    deployment: d,
                    opened,
                    attempt: idx,
                    attempt_started: started,
                    route: String::new(),
                    capacity,
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
                if matches!(e, ProviderError::Timeout { .. }) {
                    // No first token within the timeout: at least that long.
                    health.observe_first_token(sent.elapsed(), now_ms());
                }
                // A client-caused 4xx says nothing about the deployment's health; the
                // permit, dropped unrecorded, gives a probe slot back.
                if e.retryable() {
                    permit.record(false, now);
                }
                tracker.fail_attempt(idx, &e, started);
                if let Some(capacity) = capacity {
                    // The call failed: it used no tokens; the request still counts.
                    capacity.settle(&Usage::default());
                }
                Err((e, d))
            }
        }
    }

    /// The first call of a request, hedged: if it has not answered after
    /// `hedge.after`, a twin starts on the next deployment of `hedge.rest` that admits
    /// a call then (its quota and probe slot are taken only at that moment). The first
    /// success wins; the loser is cancelled and recorded. A first call that fails before
    /// the delay ends the hedge at once, and the dispatch loop moves on to the next
    /// deployment; a twin whose body cannot be rendered is recorded as failed and the
    /// first call alone decides.
    ///
    /// Returns the outcome and, if a twin was taken, its offset in `hedge.rest`.
    async fn hedged<'s>(
        &'s self,
        job: &Job<'_>,
        tracker: &mut RequestTracker,
        make_body: &mut impl FnMut(&Deployment) -> Result<Rendered, ProviderError>,
        d1: &Arc<Deployment>,
        gate1: Gate<'s>,
        hedge: Hedge<'_, '_>,
    ) -> (
        Result<Served, (ProviderError, Arc<Deployment>)>,
        Option<usize>,
    ) {
        let (call1, body1) = match self.begin(d1, tracker, gate1, make_body) {
            Ok(started) => started,
            Err(e) => return (Err((e, d1.clone())), None),
        };
        let fut1 = self.call(d1.clone(), job, body1, call1.traceparent.clone());
        tokio::pin!(fut1);
        tokio::select! {
            r = &mut fut1 => {
                // Answered, or failed, before the hedge delay: no twin starts.
                return (self.conclude(call1, r, tracker), None);
            }
            () = tokio::time::sleep(hedge.after) => {}
        }
        let Some((offset, d2, gate2)) = self.next_admissible(hedge.rest, job, hedge.skipped).await
        else {
            // Nowhere to hedge to: the first call alone decides.
            let r = fut1.await;
            return (self.conclude(call1, r, tracker), None);
        };
        let (call2, body2) = match self.begin(&d2, tracker, gate2, make_body) {
            Ok(started) => started,
            Err(_) => {
                // The twin's failure is recorded; the request is the first call's.
                let r = fut1.await;
                return (self.conclude(call1, r, tracker), Some(offset));
            }
        };
        let fut2 = self.call(d2.clone(), job, body2, call2.traceparent.clone());
        tokio::pin!(fut2);
        let (first_won, r) = tokio::select! {
            r = &mut fut1 => (true, r),
            r = &mut fut2 => (false, r),
        };
        let (winner, loser, loser_fut) = if first_won {
            (call1, call2, fut2)
        } else {
            (call2, call1, fut1)
        };
        if r.outcome.is_ok() {
            // The loser is cancelled: its future is dropped on return, closing its
            // connection. The provider may still bill, and count against the quota,
            // the prompt it read.
            // Its first token had not come by now: a lower bound of its time to
            // first token, and the evidence a first-token objective needs (a
            // deployment that always loses its hedges would otherwise never be
            // measured as slow).
            self.health
                .of(&loser.deployment)
                .observe_first_token(loser.sent.elapsed(), now_ms());
            tracker.cancel_attempt(
                loser.idx,
                &loser.deployment,
                loser.started,
                "hedge_lost",
                job.needs.prompt_tokens,
            );
            let Call {
                gate: Gate { capacity, .. },
                ..
            } = loser;
            if let Some(capacity) = capacity {
                capacity.settle(&Usage {
                    prompt_tokens: job.needs.prompt_tokens,
                    ..Usage::default()
                });
            }
            return (self.conclude(winner, r, tracker), Some(offset));
        }
        // The first to finish failed (its failure is recorded); the other decides.
        let _failed = self.conclude(winner, r, tracker);
        let other = loser_fut.await;
        (self.conclude(loser, other, tracker), Some(offset))
    }
}

/// What narrows a dispatch beyond the model's own settings.
#[derive(Default)]
struct Bounds<'a> {
    /// A deployment left out of the plan.
    exclude: Option<&'a str>,
    /// At most this many calls (never more than the model's `retry.max_attempts`).
    max_attempts: Option<u32>,
    no_hedge: bool,
}

/// Where a hedged first call may find its twin.
struct Hedge<'r, 'k> {
    /// The candidates after the first call's, in plan order.
    rest: &'r [routing::Candidate],
    /// How long the first call may go unanswered before the twin starts.
    after: Duration,
    skipped: &'k mut Skipped,
}

/// Permission to call a deployment: the breaker's permit (holding the half-open probe
/// slot if this call is the probe) and the quota reservation. Both give back what they
/// hold when dropped unused, so every way out of an attempt (an early return, the
/// request's future dropped by a client that went away, a panic) releases them.
struct Gate<'h> {
    permit: CallPermit<'h>,
    capacity: Option<Capacity>,
}

/// An attempt whose call has started: what its conclusion needs, and the deployment's
/// in-flight count, held until the call ends (or is dropped).
struct Call<'h> {
    deployment: Arc<Deployment>,
    /// The tracker's index of the attempt.
    idx: usize,
    /// The W3C `traceparent` the upstream call carries, when the request is traced.
    traceparent: Option<String>,
    started: Instant,
    /// When the call went out, on the runtime's clock like the attempt's deadlines (a
    /// test can pause it): the deployment's latency is measured from here.
    sent: TokioInstant,
    gate: Gate<'h>,
    _in_flight: InFlight<'h>,
}

/// Why deployments were passed over without a call.
#[derive(Default)]
struct Skipped {
    circuit_open: u32,
    over_capacity: u32,
    /// Deployments skipped because their contract's cap had no room, with the
    /// contract's name.
    over_cap: Vec<(String, String)>,
    /// Soonest time any skipped deployment may take calls again.
    soonest: Option<Duration>,
}

impl Skipped {
    fn contract_cap(&mut self, deployment: &str, cap: CapReached, resets_in: Duration) {
        tracing::debug!(
            deployment,
            contract = %cap.contract,
            cap_nano_usd = cap.cap_nano_usd,
            spent_nano_usd = cap.spent_nano_usd,
            reserved_nano_usd = cap.reserved_nano_usd,
            "deployment skipped: its contract's cap has no room"
        );
        if !self.over_cap.iter().any(|(d, _)| d == deployment) {
            self.over_cap.push((deployment.to_owned(), cap.contract));
        }
        self.note(resets_in);
    }

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

    fn into_error(self, model: &str) -> DispatchError {
        let retry_after = self.soonest.unwrap_or(Duration::from_secs(1));
        let model = model.to_owned();
        if !self.over_cap.is_empty() && self.over_capacity == 0 && self.circuit_open == 0 {
            let mut contracts: Vec<String> = self.over_cap.into_iter().map(|(_, c)| c).collect();
            contracts.dedup();
            return DispatchError::ContractCapReached {
                model,
                contracts,
                retry_after,
            };
        }
        if (self.over_capacity > 0 || !self.over_cap.is_empty()) && self.circuit_open == 0 {
            DispatchError::CapacityExhausted { model, retry_after }
        } else {
            DispatchError::NoHealthyDeployment { model, retry_after }
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
    for (deployment, contract) in &skipped.over_cap {
        out.push_str(&format!(
            "; {deployment} skipped: contract {contract} cap reached"
        ));
    }
    out
}

fn send_error(e: upstream::SendError) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout {
            phase: "connection",
        }
    } else {
        // The message names no URL: upstream topology stays out of client errors.
        ProviderError::Connect(format!("error sending request: {e}"))
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
    Some(now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)))
}

/// An attempt that failed before any answer came.
fn failed(e: ProviderError) -> AttemptResult {
    AttemptResult {
        status: None,
        exhausted_until_ms: None,
        outcome: Err(e),
    }
}

/// The provider's run-time credential, waited for within the first-byte deadline.
async fn credential(
    auth: &providers::auth::ProviderAuth,
    refused: Option<&providers::auth::Issued<providers::auth::Credential>>,
    deadline: TokioInstant,
) -> Result<providers::auth::Issued<providers::auth::Credential>, ProviderError> {
    let got = match refused {
        None => timeout_at(deadline, auth.get()).await,
        Some(r) => timeout_at(deadline, auth.renew_after(r)).await,
    };
    match got {
        Ok(Ok(issued)) => Ok(issued),
        // No secret is in the message: the endpoint's error code and description.
        Ok(Err(e)) => Err(ProviderError::Connect(format!(
            "cannot obtain the provider credential: {e}"
        ))),
        Err(_) => Err(ProviderError::Timeout {
            phase: "provider credential",
        }),
    }
}

// One argument per thing an attempt is made of; a struct for them would be built and
// taken apart again at the one call site.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    client: &upstream::Client,
    deployment: &Deployment,
    auth: Option<&providers::auth::ProviderAuth>,
    timeouts: Timeouts,
    endpoint: Endpoint,
    stream: bool,
    rendered: Rendered,
    traceparent: Option<String>,
) -> AttemptResult {
    let start = TokioInstant::now();
    let total = start + timeouts.total;
    let first_byte = (start + timeouts.first_byte).min(total);
    let adapter = providers::adapter(&deployment.provider.kind);
    let native = rendered.native;
    let endpoint = rendered.endpoint.unwrap_or(endpoint);
    let body = Bytes::from(rendered.body);
    let mut issued = match auth {
        Some(a) => match credential(a, None, first_byte).await {
            Ok(i) => Some(i),
            Err(e) => return failed(e),
        },
        None => None,
    };
    // At most two sends: a credential the upstream refuses (expired early, revoked)
    // is renewed once and the call made again, so that the client never sees it.
    let mut renewed = false;
    let response = loop {
        let credential_now = issued.as_ref().map(|i| &i.value);
        let request = match adapter.request(
            client,
            deployment,
            endpoint,
            stream,
            body.clone(),
            credential_now,
        ) {
            Ok(r) => match &traceparent {
                Some(tp) => r.header("traceparent", tp),
                None => r,
            },
            Err(e) => return failed(e),
        };
        let response = match timeout_at(first_byte, request.send(client)).await {
            Err(_) => {
                return failed(ProviderError::Timeout {
                    phase: "response headers",
                })
            }
            Ok(Err(e)) => return failed(send_error(e)),
            Ok(Ok(r)) => r,
        };
        let (Some(a), Some(refused)) = (auth, issued.as_ref()) else {
            break response;
        };
        if renewed || !a.refused(response.status(), response.headers()) {
            break response;
        }
        renewed = true;
        tracing::info!(
            deployment = %deployment.name,
            status = response.status().as_u16(),
            "the upstream refused the provider credential; renewing it once"
        );
        drop(response);
        match credential(a, Some(refused), first_byte).await {
            Ok(i) => issued = Some(i),
            Err(e) => return failed(e),
        }
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
    response: upstream::Response,
    stream: bool,
    first_byte: TokioInstant,
    total: TokioInstant,
    native: Option<&'static dyn NativeAnswer>,
) -> Result<Opened, ProviderError> {
    let adapter = providers::adapter(&deployment.provider.kind);
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = read_limited(response.bytes_stream(), MAX_ERROR_BODY, total)
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
            body: response.bytes_stream(),
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
            // An error before anything was relayed is this attempt's failure, like
            // an error status: the client has seen nothing yet, so it fails over.
            Ok(Ok(Some(Translated::Error(data)))) => return Err(providers::stream_error(&data)),
            Ok(Ok(Some(event))) => event,
        };
        return Ok(Opened::Stream {
            stream: upstream,
            first,
        });
    }
    let body = read_limited(response.bytes_stream(), MAX_RESPONSE_BODY, total).await?;
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
                    upstream::describe(&e)
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
                        upstream::describe(&e)
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

    /// What the stream relayed so far, when its decoder keeps track.
    pub fn progress(&self) -> Option<&providers::StreamProgress> {
        self.decoder.progress()
    }

    /// The usage chunk for a stream whose upstream sent none, in its protocol's shape.
    pub fn usage_chunk(&self, usage: &Usage) -> Option<Bytes> {
        self.decoder.usage_chunk(usage)
    }

    /// A chunk whose usage lacked counts, completed from `estimate`, and the usage to
    /// bill (see [`providers::StreamDecoder::fill_usage`]).
    pub fn fill_usage(&self, data: &Bytes, estimate: &Usage) -> Option<(Bytes, Usage)> {
        self.decoder.fill_usage(data, estimate)
    }
}

/// Why no deployment answered a request. The ingress maps it to its protocol's status
/// and error body (`api::error`).
#[derive(Debug, Clone)]
pub enum DispatchError {
    /// The constraint filters left no deployment; `exclusions` says why each went.
    NoEligibleDeployment { model: String, exclusions: String },
    /// Every deployment was skipped for capacity: like a provider's 429.
    CapacityExhausted {
        model: String,
        retry_after: Duration,
    },
    /// Every deployment left was skipped because its contract's cap had no room for
    /// the request (`retry_after`: until the soonest period ends).
    ContractCapReached {
        model: String,
        contracts: Vec<String>,
        retry_after: Duration,
    },
    /// Every deployment was skipped as unhealthy (circuit open).
    NoHealthyDeployment {
        model: String,
        retry_after: Duration,
    },
    /// The last upstream call failed and nothing else could be tried.
    Upstream {
        error: ProviderError,
        deployment: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerSink;
    use crate::limits::InProcessLimiter;
    use crate::resilience::BreakerState;
    use crate::types::chat::ChatRequest;
    use switchyard_sim::{Fault, Latency, SimHandle, SimOptions, Simulator};

    /// The simulator and a dispatcher in front of it. `extra` adds models and settings.
    struct Rig {
        sim: SimHandle,
        config: Config,
        dispatcher: Dispatcher,
    }

    async fn rig(extra: &str) -> Rig {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let sim = Simulator::new(SimOptions::default())
            .spawn(listener)
            .await
            .expect("simulator");
        let text = format!(
            r#"
[providers.primary]
kind = "openai"
base_url = "{sim}/primary/v1"
api_key = "sk-test"

[providers.backup]
kind = "openai"
base_url = "{sim}/backup/v1"
api_key = "sk-test"

[providers.ant]
kind = "anthropic"
base_url = "{sim}/ant"
api_key = "sk-ant-test"

[deployments.primary]
provider = "primary"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[deployments.backup]
provider = "backup"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[deployments.limited]
provider = "backup"
model = "gpt-4o-mini"
quota = {{ rpm = 1 }}
price = {{ input = 0.15, output = 0.60 }}

[deployments.ant]
provider = "ant"
model = "claude-haiku-4-5"
price = {{ input = 1.0, output = 5.0 }}
{extra}
"#,
            sim = sim.base_url()
        );
        let config = Config::parse(&text, |_| None).expect("test config is valid");
        let dispatcher =
            Dispatcher::new(&config, Arc::new(InProcessLimiter::new())).expect("dispatcher");
        Rig {
            sim,
            config,
            dispatcher,
        }
    }

    impl Rig {
        fn deployment(&self, name: &str) -> Arc<Deployment> {
            self.config
                .deployments
                .iter()
                .find(|d| d.name == name)
                .cloned()
                .expect("deployment")
        }

        fn model(&self, name: &str) -> Arc<LogicalModel> {
            self.config.model(name).cloned().expect("model")
        }

        /// Dispatches one chat request to `model`; `unrenderable` names a deployment
        /// whose body cannot be rendered. Returns the outcome and the attempts begun.
        async fn serve(
            &self,
            model: &str,
            stream: bool,
            unrenderable: Option<&str>,
        ) -> (Result<Served, DispatchError>, usize) {
            let model = self.model(model);
            let mut req: ChatRequest = serde_json::from_value(serde_json::json!({
                "model": model.name,
                "messages": [{"role": "user", "content": "hello"}],
                "stream": stream,
            }))
            .expect("request");
            let caller = Constraints::default();
            let job = Job {
                model: &model,
                endpoint: Endpoint::ChatCompletions,
                stream,
                needs: Needs::of_chat(
                    &req,
                    crate::limits::estimate_chat(&req, crate::config::DEFAULT_MAX_OUTPUT_TOKENS),
                ),
                caller: &caller,
                affinity: None,
                ttft_slo: None,
            };
            let mut tracker =
                RequestTracker::new(LedgerSink::disabled(), "test".into(), "chat.completions");
            let outcome = self
                .dispatcher
                .dispatch(job, &mut tracker, |d| {
                    if unrenderable == Some(d.name.as_str()) {
                        return Err(ProviderError::Unsupported("this request".into()));
                    }
                    providers::adapter(&d.provider.kind)
                        .chat_body(&mut req, d, stream)
                        .map(Rendered::from)
                })
                .await;
            (outcome, tracker.attempts())
        }

        /// Dispatches the continuation of a stream `broken` served for `model`.
        async fn continue_on(
            &self,
            model: &str,
            broken: &str,
            tracker: &mut RequestTracker,
        ) -> Result<Served, DispatchError> {
            let model = self.model(model);
            let caller = Constraints::default();
            let job = Job {
                model: &model,
                endpoint: Endpoint::ChatCompletions,
                stream: true,
                needs: Needs::default(),
                caller: &caller,
                affinity: None,
                ttft_slo: None,
            };
            let mut req: ChatRequest = serde_json::from_value(serde_json::json!({
                "model": model.name, "stream": true,
                "messages": [{"role": "user", "content": "hello"}],
            }))
            .expect("request");
            self.dispatcher
                .dispatch_continuation(job, broken, 5, tracker, |d| {
                    providers::adapter(&d.provider.kind)
                        .chat_body(&mut req, d, true)
                        .map(Rendered::from)
                })
                .await
        }

        /// Opens `name`'s breaker (configured to open on one failure, for 1 ms) and
        /// waits out its open period, so that the next call to it is the probe.
        fn half_open(&self, name: &str) {
            let health = self.dispatcher.health.of(&self.deployment(name));
            let permit = health
                .admit(Instant::now(), Duration::from_secs(60))
                .expect("closed");
            permit.record(false, Instant::now());
            assert_eq!(health.breaker_state(Instant::now()), BreakerState::Open);
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(health.breaker_state(Instant::now()), BreakerState::HalfOpen);
        }

        /// Waits (bounded, on the test's clock) until `instance` has received `n`
        /// requests.
        async fn received(&self, instance: &str, n: usize) {
            for _ in 0..10_000 {
                if self.sim.sim.requests(instance).len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("{instance} never received {n} requests");
        }

        /// What `admit` gives for `name` now (the gate is dropped at once).
        async fn admissible(&self, name: &str) -> Option<bool> {
            let model = self.model("solo");
            let caller = Constraints::default();
            let job = Job {
                model: &model,
                endpoint: Endpoint::ChatCompletions,
                stream: false,
                needs: Needs::default(),
                caller: &caller,
                affinity: None,
                ttft_slo: None,
            };
            let gate = self
                .dispatcher
                .admit(&self.deployment(name), &job, &mut Skipped::default())
                .await;
            gate.map(|g| g.permit.is_probe())
        }
    }

    /// Lets spawned settlements of the limiter run.
    async fn settle_spawned() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    const ONE_FAILURE_OPENS: &str = "[breaker]\nconsecutive_failures = 1\nopen_ms = 1\n";

    #[tokio::test(start_paused = true)]
    async fn a_hedged_first_call_that_fails_fast_moves_on_to_the_fallback() {
        let rig = rig(r#"
[models.hedged]
deployments = ["primary", "backup"]
hedge_after_ms = 500

[breaker]
consecutive_failures = 1000
"#)
        .await;
        rig.sim.sim.set_fault("primary", "*", Fault::error(500));
        for i in 0..3 {
            let (outcome, attempts) = rig.serve("hedged", false, None).await;
            let served = outcome.unwrap_or_else(|e| panic!("request {i}: {e:?}"));
            assert_eq!(served.deployment.name, "backup", "request {i}");
            assert_eq!(attempts, 2, "request {i}: the primary, then the fallback");
        }
        assert_eq!(rig.sim.sim.requests("primary").len(), 3);
        assert_eq!(rig.sim.sim.requests("backup").len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_twin_that_cannot_be_rendered_leaves_the_request_to_the_first_call() {
        let rig = rig(r#"
[models.hedged]
deployments = ["primary", "backup"]
hedge_after_ms = 50
retry = { max_attempts = 2 }
"#)
        .await;
        rig.sim.sim.set_latency(
            "primary",
            "*",
            Latency {
                ttft_ms: 1_000,
                chunk_delay_ms: 0,
                chunks: None,
            },
        );
        let (outcome, attempts) = rig.serve("hedged", false, Some("backup")).await;
        let served = outcome.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(served.deployment.name, "primary");
        assert_eq!(
            attempts, 2,
            "the primary and the twin that failed to render"
        );
        assert_eq!(rig.sim.sim.requests("primary").len(), 1);
        assert!(rig.sim.sim.requests("backup").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_twin_takes_quota_and_probe_slot_only_when_it_starts() {
        let rig = rig(&format!(
            r#"
[models.hedged]
deployments = ["primary", "limited"]
hedge_after_ms = 10000

[models.solo]
deployments = ["limited"]
{ONE_FAILURE_OPENS}"#
        ))
        .await;
        rig.half_open("limited");
        rig.sim.sim.set_latency(
            "primary",
            "*",
            Latency {
                ttft_ms: 1_000,
                chunk_delay_ms: 0,
                chunks: None,
            },
        );
        let check = async {
            rig.received("primary", 1).await;
            // The first call is in flight and the hedge delay has not passed: the
            // twin's deployment still has its one request of quota and its probe slot.
            let admitted = rig.admissible("limited").await;
            settle_spawned().await;
            admitted
        };
        let ((outcome, attempts), admitted) = tokio::join!(rig.serve("hedged", false, None), check);
        assert_eq!(admitted, Some(true), "quota and probe slot were free");
        let served = outcome.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(served.deployment.name, "primary");
        assert_eq!(attempts, 1, "the twin never started");
        assert!(rig.sim.sim.requests("backup").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_cancelled_with_its_request_gives_the_slot_back() {
        let rig = rig(&format!(
            "[models.solo]\ndeployments = [\"primary\"]\n{ONE_FAILURE_OPENS}"
        ))
        .await;
        rig.half_open("primary");
        rig.sim.sim.set_latency(
            "primary",
            "*",
            Latency {
                ttft_ms: 1_000,
                chunk_delay_ms: 0,
                chunks: None,
            },
        );
        // The client goes away while the probe is in flight: its future is dropped.
        tokio::select! {
            _ = rig.serve("solo", false, None) => panic!("the probe answered first"),
            () = rig.received("primary", 1) => {}
        }
        let health = rig.dispatcher.health.of(&rig.deployment("primary"));
        assert_eq!(health.calls_in_flight(), 0);
        assert_eq!(
            rig.admissible("primary").await,
            Some(true),
            "the next request is the probe"
        );
        // And that probe decides: the primary serves again.
        rig.sim.sim.clear();
        let (outcome, _) = rig.serve("solo", false, None).await;
        assert_eq!(
            outcome.map(|s| s.deployment.name.clone()).ok().as_deref(),
            Some("primary")
        );
        assert_eq!(health.breaker_state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_continuation_leaves_out_the_broken_deployment_and_gives_back_what_it_held_when_dropped(
    ) {
        let rig = rig(&format!(
            "[models.pair]\ndeployments = [\"primary\", \"backup\"]\n\n[models.solo]\ndeployments = [\"backup\"]\n{ONE_FAILURE_OPENS}"
        ))
        .await;
        // The broken deployment is not asked again; the next one serves.
        let mut tracker =
            RequestTracker::new(LedgerSink::disabled(), "t".into(), "chat.completions");
        let served = rig
            .continue_on("pair", "primary", &mut tracker)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(served.deployment.name, "backup");
        drop(served);
        assert!(rig.sim.sim.requests("primary").is_empty());
        // With the next one's call in flight (its breaker's probe), the request goes away.
        rig.half_open("backup");
        rig.sim.sim.set_latency(
            "backup",
            "*",
            Latency {
                ttft_ms: 1_000,
                chunk_delay_ms: 0,
                chunks: None,
            },
        );
        let mut tracker =
            RequestTracker::new(LedgerSink::disabled(), "t2".into(), "chat.completions");
        tokio::select! {
            _ = rig.continue_on("pair", "primary", &mut tracker) => panic!("the call answered first"),
            () = rig.received("backup", 2) => {}
        }
        let health = rig.dispatcher.health.of(&rig.deployment("backup"));
        assert_eq!(health.calls_in_flight(), 0);
        assert_eq!(
            rig.admissible("backup").await,
            Some(true),
            "the probe slot is back"
        );
        // Without another deployment there is nothing to continue on.
        match rig.continue_on("solo", "backup", &mut tracker).await {
            Err(DispatchError::NoEligibleDeployment { exclusions, .. }) => {
                assert!(
                    exclusions.contains("backup: its stream broke off"),
                    "{exclusions}"
                );
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("nothing may serve"),
        }
    }

    // The clock is paused: the simulator's latency and dispatch's measurement of it
    // are the same virtual milliseconds however busy the machine is, so the shares
    // depend only on the strategy (and its random exploration).
    #[tokio::test(start_paused = true)]
    async fn the_latency_strategy_follows_the_faster_deployment_and_back() {
        let rig = rig(r#"
[models.fastest]
strategy = "latency"
deployments = ["primary", "backup"]
"#)
        .await;
        let slow = Latency {
            ttft_ms: 60,
            chunk_delay_ms: 0,
            chunks: None,
        };
        let mut served = Vec::new();
        rig.sim.sim.set_latency("primary", "*", slow.clone());
        for _ in 0..60 {
            let (outcome, _) = rig.serve("fastest", false, None).await;
            served.push(
                outcome
                    .map(|s| s.deployment.name.clone())
                    .unwrap_or_default(),
            );
        }
        let fast = served.iter().skip(30).filter(|d| *d == "backup").count();
        assert!(fast >= 24, "backup (fast) served {fast} of the last 30");

        // The primary recovers and the backup slows down: traffic moves back.
        rig.sim.sim.clear();
        rig.sim.sim.set_latency("backup", "*", slow);
        served.clear();
        for _ in 0..120 {
            let (outcome, _) = rig.serve("fastest", false, None).await;
            served.push(
                outcome
                    .map(|s| s.deployment.name.clone())
                    .unwrap_or_default(),
            );
        }
        let fast = served.iter().skip(90).filter(|d| *d == "primary").count();
        assert!(
            fast >= 24,
            "primary (fast again) served {fast} of the last 30"
        );
        let primary = rig.dispatcher.health.of(&rig.deployment("primary"));
        let backup = rig.dispatcher.health.of(&rig.deployment("backup"));
        assert!(
            backup.latency_us() >= Some(60_000.0),
            "the backup's estimate is its simulated latency: {:?}",
            backup.latency_us()
        );
        assert!(primary.latency_us() < backup.latency_us());
    }

    #[tokio::test]
    async fn a_gate_dropped_unused_gives_its_quota_back() {
        let rig = rig("[models.solo]\ndeployments = [\"limited\"]\n").await;
        // rpm = 1: a gate that is dropped without a call leaves the request for later.
        for _ in 0..3 {
            assert_eq!(rig.admissible("limited").await, Some(false));
            settle_spawned().await;
        }
    }

    #[tokio::test]
    async fn a_call_that_was_sent_keeps_its_quota_when_dropped() {
        let rig = rig("[models.solo]\ndeployments = [\"limited\"]\n").await;
        let model = rig.model("solo");
        let caller = Constraints::default();
        let job = Job {
            model: &model,
            endpoint: Endpoint::ChatCompletions,
            stream: false,
            needs: Needs::default(),
            caller: &caller,
            affinity: None,
            ttft_slo: None,
        };
        let d = rig.deployment("limited");
        let mut gate = rig
            .dispatcher
            .admit(&d, &job, &mut Skipped::default())
            .await
            .expect("quota free");
        if let Some(capacity) = &mut gate.capacity {
            capacity.called = true;
        }
        // The request reached the provider, which counted it: so does the quota.
        drop(gate);
        settle_spawned().await;
        assert!(rig
            .dispatcher
            .admit(&d, &job, &mut Skipped::default())
            .await
            .is_none());
    }

    #[tokio::test]
    async fn a_contract_hold_is_given_back_unless_its_call_was_sent() {
        // A bound of 1,000 prompt and 1,000 output tokens at 0.15/0.60 is 750,000
        // nano-USD: one fits under the 1,000,000 cap, two do not.
        let rig = rig("[models.solo]\ndeployments = [\"primary\"]\n\n\
             [contracts.c]\ndeployments = [\"primary\"]\ncap_usd = \"0.001\"\n")
        .await;
        let model = rig.model("solo");
        let caller = Constraints::default();
        let job = Job {
            model: &model,
            endpoint: Endpoint::ChatCompletions,
            stream: false,
            needs: Needs {
                prompt_tokens: 1_000,
                expected_output: 1_000,
                ..Needs::default()
            },
            caller: &caller,
            affinity: None,
            ttft_slo: None,
        };
        let d = rig.deployment("primary");
        let contract = d.contract.clone().expect("covered");
        let burn = || rig.dispatcher.contracts.burn(&contract, now_ms());
        let gate = rig
            .dispatcher
            .admit(&d, &job, &mut Skipped::default())
            .await
            .expect("room under the cap");
        assert_eq!(burn().reserved_nano_usd, 750_000);
        let mut skipped = Skipped::default();
        assert!(rig.dispatcher.admit(&d, &job, &mut skipped).await.is_none());
        assert_eq!(
            skipped.over_cap,
            vec![("primary".to_owned(), "c".to_owned())]
        );
        assert!(matches!(
            skipped.into_error("solo"),
            DispatchError::ContractCapReached { contracts, .. } if contracts == ["c"]
        ));
        // Dropped before its call (a request cancelled, a body that would not render).
        drop(gate);
        assert_eq!((burn().spent_nano_usd, burn().reserved_nano_usd), (0, 0));
        let mut gate = rig
            .dispatcher
            .admit(&d, &job, &mut Skipped::default())
            .await
            .expect("room again");
        gate.capacity.as_mut().expect("holds the contract").called = true;
        // Dropped after its call was sent: its cost is unknown, the bound stands.
        drop(gate);
        assert_eq!(
            (burn().spent_nano_usd, burn().reserved_nano_usd),
            (750_000, 0)
        );
        assert!(rig
            .dispatcher
            .admit(&d, &job, &mut Skipped::default())
            .await
            .is_none());
    }

    #[tokio::test]
    async fn a_stream_whose_first_event_is_an_error_fails_over() {
        let rig = rig(r#"
[models.mixed]
deployments = ["ant", "backup"]

[breaker]
consecutive_failures = 1
open_ms = 600000
"#)
        .await;
        rig.sim.sim.set_fault(
            "ant",
            "*",
            Fault::error(529)
                .with_type("overloaded_error")
                .mid_stream(0),
        );
        let (outcome, attempts) = rig.serve("mixed", true, None).await;
        let served = outcome.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(served.deployment.name, "backup");
        assert_eq!(attempts, 2);
        match served.opened {
            Opened::Stream { first, .. } => {
                assert!(!matches!(first, Translated::Error(_)), "{first:?}");
            }
            Opened::Full { .. } => panic!("a stream was asked for"),
        }
        assert_eq!(rig.sim.sim.requests("ant").len(), 1);
        // The failure counted against the deployment: one failure opens this breaker.
        let ant = rig.dispatcher.health.of(&rig.deployment("ant"));
        assert_eq!(ant.breaker_state(Instant::now()), BreakerState::Open);
    }
}
