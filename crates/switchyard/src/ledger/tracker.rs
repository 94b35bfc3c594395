//! One request's ledger row, built up as the request runs and handed to the ledger
//! exactly once: when the request finishes, or when it is dropped half-way (the client
//! went away, or the server gave up on it at shutdown).

use std::time::Instant;

use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{AttemptRecord, LedgerSink, RequestRecord};
use crate::config::Deployment;
use crate::types::time::now_ms;
use crate::types::{ProviderError, Usage};

/// HTTP has no status for "the client closed the connection"; 499 is the common label.
pub const CLIENT_CLOSED: u16 = 499;

/// The error code of a request whose handling panicked (the client got a 500).
pub const PANICKED: &str = "internal_error";

pub struct RequestTracker {
    record: RequestRecord,
    sink: LedgerSink,
    started: Instant,
    /// Set once the outcome is known; a tracker dropped without it was abandoned.
    finished: bool,
    /// Rate-limit and budget reservations, settled with the request's usage and cost
    /// when the record is submitted.
    ticket: Option<Box<dyn Settle>>,
    /// Whether the caller's policy lets the ledger keep content.
    log_content: bool,
    /// The latency, when the answer was complete before the row was finished.
    answered_us: Option<i64>,
    /// Keeps the ledger's shutdown waiting until the row is handed over; a field,
    /// so it is dropped after `Drop::drop` has queued the row.
    _in_flight: Option<TaskTrackerToken>,
}

/// What admission reserved for a request (rate-limit windows, budget), to be replaced
/// by the actuals exactly once, when the request's row is submitted. Governance
/// implements it; the ledger only calls it, so it needs nothing of governance.
pub trait Settle: Send + Sync {
    fn settle(self: Box<Self>, usage: &Usage, cost_nano_usd: i64);
}

fn micros(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_micros()).unwrap_or(i64::MAX)
}

impl RequestTracker {
    pub fn new(sink: LedgerSink, request_id: String, endpoint: &'static str) -> Self {
        if let Some(o) = sink.observer() {
            o.started();
        }
        RequestTracker {
            _in_flight: sink.in_flight(),
            record: RequestRecord {
                request_id,
                started_at_ms: now_ms(),
                endpoint,
                ..RequestRecord::default()
            },
            sink,
            started: Instant::now(),
            finished: false,
            ticket: None,
            log_content: false,
            answered_us: None,
        }
    }

    /// The answer is complete: the request's latency ends now, whatever runs before
    /// the row is finished (a shadow comparison's own call).
    pub fn answered(&mut self) {
        self.answered_us = Some(micros(self.started));
    }

    /// Traces the request if the observer wants it, continuing the caller's
    /// `traceparent` when there is one.
    pub fn continue_trace(&mut self, traceparent: Option<&str>) {
        if let Some(o) = self.sink.observer() {
            self.record.trace = o.continue_trace(traceparent);
        }
    }

    /// The `traceparent` an attempt's upstream call carries (W3C trace context: this
    /// trace, the attempt's span, sampled); `None` when the request is not traced.
    pub fn traceparent(&self, index: usize) -> Option<String> {
        let trace = self.record.trace?;
        let span = self.record.attempts.get(index)?.span_id;
        Some(format!("00-{:032x}-{span:016x}-01", trace.trace_id))
    }

    /// Whether the request's spans will be exported.
    pub fn is_traced(&self) -> bool {
        self.record.trace.is_some()
    }

    /// The finish reason of the answer served, for its trace.
    pub fn set_finish_reason(&mut self, reason: &str) {
        if self.record.trace.is_some() {
            self.record.finish_reason = Some(reason.to_owned());
        }
    }

    pub fn set_team(&mut self, team: Option<&str>) {
        self.record.team_id = team.map(str::to_owned);
    }

    /// `allowed`, or `denied:<reason>`.
    pub fn set_policy_decision(&mut self, decision: &str) {
        self.record.policy_decision = Some(decision.to_owned());
    }

    /// The channel profile the request runs under.
    pub fn set_channel(&mut self, channel: &str) {
        self.record.channel = Some(channel.to_owned());
    }

    /// Whether the request begins a conversation turn.
    pub fn set_turn(&mut self, begins: bool) {
        self.record.turn_start = begins;
    }

    /// The answer came from the response cache: no attempt, so usage and cost stay 0.
    pub fn set_cache_hit(&mut self) {
        self.record.cache_hit = true;
    }

    /// What routing is given for this request, for what-if replays.
    pub fn set_replay(&mut self, facts: super::ReplayFacts) {
        self.record.replay = Some(facts);
    }

    /// The row is a shadow of the client's request `of` (see `[models.NAME.shadow]`).
    pub fn set_shadow_of(&mut self, of: &str) {
        self.record.shadow = Some(super::ShadowFacts {
            of: of.to_owned(),
            agreement: None,
        });
    }

    /// How far a shadow row's answer agreed with the client's.
    pub fn set_agreement(&mut self, agreement: Option<f64>) {
        if let Some(s) = self.record.shadow.as_mut() {
            s.agreement = agreement;
        }
    }

    /// The caller: its key's id and name, and its team.
    pub fn caller(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (
            self.record.key_id.as_deref(),
            self.record.key_name.as_deref(),
            self.record.team_id.as_deref(),
        )
    }

    /// The prompt kept for the ledger, when the caller's policy allows keeping it.
    pub fn logged_prompt(&self) -> Option<&str> {
        self.record
            .content_prompt
            .as_deref()
            .filter(|_| self.log_content)
    }

    /// The request was cacheable but not in the cache.
    pub fn set_cache_miss(&mut self) {
        self.record.cache_missed = true;
    }

    /// What the PII guardrail found (types and counts only).
    pub fn set_redactions(&mut self, summary: &str) {
        self.record.redactions = Some(summary.to_owned());
    }

    /// What the PII guardrail found in the answer, after what it found in the prompt:
    /// `redact:EMAIL=1;output:redact:PHONE=2`.
    pub fn add_output_findings(&mut self, action: &str, summary: &str) {
        let output = format!("output:{action}:{summary}");
        self.record.redactions = Some(match self.record.redactions.take() {
            Some(prompt) => format!("{prompt};{output}"),
            None => output,
        });
    }

    /// Keeps the reservations admission made, to settle them once with the actuals.
    pub fn hold(&mut self, ticket: Box<dyn Settle>) {
        self.ticket = Some(ticket);
    }

    /// Keeps the prompt in the ledger; only called when the policy allows content logging.
    pub fn log_content(&mut self, prompt: String) {
        self.log_content = true;
        self.record.content_prompt = Some(cap_content(prompt));
    }

    /// Keeps the response too, when content logging was allowed for this request.
    pub fn log_response(&mut self, response: &[u8]) {
        if self.log_content {
            self.record.content_response =
                Some(cap_content(String::from_utf8_lossy(response).into_owned()));
        }
    }

    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }

    /// Who called: spend is attributed to the key's id, the name is for reports.
    pub fn set_key(&mut self, id: &str, name: &str) {
        self.record.key_id = Some(id.to_owned());
        self.record.key_name = Some(name.to_owned());
    }

    pub fn set_model(&mut self, model: &str, streamed: bool) {
        self.record.logical_model = Some(model.to_owned());
        self.record.streamed = streamed;
    }

    /// The status the client was sent, before the body is known (streams).
    pub fn set_status(&mut self, status: u16) {
        self.record.status = status;
    }

    /// Notes the start of an upstream call; returns its index for the calls below.
    pub fn begin_attempt(&mut self, deployment: &Deployment) -> usize {
        let index = self.record.attempts.len();
        self.record.attempts.push(AttemptRecord {
            attempt: u32::try_from(index + 1).unwrap_or(u32::MAX),
            started_at_ms: now_ms(),
            deployment: deployment.name.clone(),
            provider: deployment.provider.name.clone(),
            upstream_model: deployment.upstream_model.clone(),
            provider_kind: deployment.provider.kind.gen_ai_name(),
            // Never 0, which W3C trace context forbids.
            span_id: match self.record.trace {
                Some(_) => rand::random::<u64>() | 1,
                None => 0,
            },
            ..AttemptRecord::default()
        });
        self.serving(index);
        index
    }

    /// The request's deployment columns follow the attempt that serves (or last failed).
    fn serving(&mut self, index: usize) {
        if let Some(a) = self.record.attempts.get(index) {
            self.record.deployment = Some(a.deployment.clone());
            self.record.provider = Some(a.provider.clone());
            self.record.upstream_model = Some(a.upstream_model.clone());
        }
    }

    pub fn attempts(&self) -> usize {
        self.record.attempts.len()
    }

    /// Records an attempt's upstream status once its headers arrived.
    pub fn attempt_status(&mut self, index: usize, status: u16) {
        if let Some(a) = self.record.attempts.get_mut(index) {
            a.status = Some(status);
        }
    }

    /// Closes an attempt as failed.
    pub fn fail_attempt(&mut self, index: usize, error: &ProviderError, started: Instant) {
        if let Some(a) = self.record.attempts.get_mut(index) {
            // The HTTP status, when one arrived, stays: a stream that failed with an
            // error event was still answered 200.
            if let Some(status) = error.upstream_status() {
                a.status.get_or_insert(status.as_u16());
            }
            a.error_class = Some(error.class().to_owned());
            a.latency_us = micros(started);
        }
    }

    /// Closes an attempt the gateway cancelled (a losing hedge). The provider may bill
    /// the prompt it read, so that is estimated and charged.
    pub fn cancel_attempt(
        &mut self,
        index: usize,
        deployment: &Deployment,
        started: Instant,
        class: &str,
        prompt_estimate: u64,
    ) {
        let usage = Usage {
            prompt_tokens: prompt_estimate,
            estimated: true,
            ..Usage::default()
        };
        if let Some(a) = self.record.attempts.get_mut(index) {
            a.error_class = Some(class.to_owned());
            a.latency_us = micros(started);
            a.usage = usage;
            a.cost_nano_usd = deployment.effective_price.cost(&usage);
            a.list_cost_nano_usd = deployment.price.cost(&usage);
        }
    }

    /// Names what ended an attempt that had served (a stream that broke off and was
    /// continued elsewhere); its usage is settled as a serving attempt's is.
    pub fn mark_attempt(&mut self, index: usize, class: &str) {
        if let Some(a) = self.record.attempts.get_mut(index) {
            a.error_class = Some(class.to_owned());
        }
    }

    /// Closes the serving attempt with its usage and cost.
    pub fn settle(
        &mut self,
        index: usize,
        deployment: &Deployment,
        usage: Usage,
        started: Instant,
    ) {
        if let Some(a) = self.record.attempts.get_mut(index) {
            a.usage = usage;
            a.cost_nano_usd = deployment.effective_price.cost(&usage);
            a.list_cost_nano_usd = deployment.price.cost(&usage);
            a.latency_us = micros(started);
        }
        self.serving(index);
    }

    pub fn first_token(&mut self) {
        if self.record.ttft_us.is_none() {
            self.record.ttft_us = Some(micros(self.started));
        }
    }

    /// The request is over: `status` is what the client got. The row is queued at
    /// once; await the returned future to wait, when the ledger's queue is full and
    /// `ledger.on_overload = "block"`, for it to get in (bounded by
    /// `ledger.max_wait_ms`). Dropped unawaited, the row still gets in or is counted.
    pub fn finish(
        mut self,
        status: u16,
        error_code: Option<&str>,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.record.status = status;
        if let Some(code) = error_code {
            self.record.error_code = Some(code.to_owned());
            // An error after the response started (a cut stream) belongs to the attempt
            // that was serving; failed attempts carry their own class already.
            if let Some(a) = self.record.attempts.last_mut() {
                if a.error_class.is_none() {
                    a.error_class = Some(code.to_owned());
                }
            }
        }
        let record = self.close();
        self.sink.submit(record)
    }

    /// Totals the attempts, settles the reservations and hands out the row, once.
    /// Budgets are charged here, before the row goes to the ledger, so they count
    /// the spend whether or not the row is written.
    fn close(&mut self) -> RequestRecord {
        self.finished = true;
        self.record.latency_us = self.answered_us.unwrap_or_else(|| micros(self.started));
        // The request's totals are what every attempt may be billed: failed, losing
        // and partial attempts included.
        let mut total = Usage::default();
        let mut cost = 0i64;
        let mut list_cost = 0i64;
        for a in &self.record.attempts {
            // Upstream-reported counts: saturate rather than overflow.
            let u = &a.usage;
            total.prompt_tokens = total.prompt_tokens.saturating_add(u.prompt_tokens);
            total.completion_tokens = total.completion_tokens.saturating_add(u.completion_tokens);
            total.cached_tokens = total.cached_tokens.saturating_add(u.cached_tokens);
            total.reasoning_tokens = total.reasoning_tokens.saturating_add(u.reasoning_tokens);
            total.cache_write_tokens = total
                .cache_write_tokens
                .saturating_add(u.cache_write_tokens);
            total.estimated |= a.usage.estimated;
            cost = cost.saturating_add(a.cost_nano_usd);
            list_cost = list_cost.saturating_add(a.list_cost_nano_usd);
        }
        self.record.usage = total;
        self.record.cost_nano_usd = cost;
        self.record.list_cost_nano_usd = list_cost;
        if let Some(ticket) = self.ticket.take() {
            ticket.settle(&total, cost);
        }
        if let Some(o) = self.sink.observer() {
            o.finished(&self.record);
        }
        std::mem::take(&mut self.record)
    }
}

/// Most bytes of prompt or response content kept per request.
const MAX_CONTENT: usize = 256 * 1024;

fn cap_content(mut s: String) -> String {
    if s.len() > MAX_CONTENT {
        let mut cut = MAX_CONTENT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if std::thread::panicking() {
            // Dropped by a panic unwinding through the request: the client is told
            // 500 (or its started stream ends in an error) by `api::panics`, and the
            // row says what happened rather than blaming the client.
            self.record.status = if self.record.status == 0 {
                http::StatusCode::INTERNAL_SERVER_ERROR.as_u16()
            } else {
                self.record.status
            };
            self.record.error_code = Some(PANICKED.into());
            if let Some(a) = self.record.attempts.last_mut() {
                if a.error_class.is_none() && a.latency_us == 0 {
                    a.error_class = Some(PANICKED.into());
                    a.latency_us = micros(self.started);
                }
            }
            let record = self.close();
            self.sink.record(record);
            return;
        }
        // Abandoned half-way: the client disconnected (or shutdown cut it off). A
        // streamed request keeps the 200 it was sent; others never got a status.
        self.record.client_disconnected = true;
        if self.record.status == 0 {
            self.record.status = CLIENT_CLOSED;
        }
        if let Some(a) = self.record.attempts.last_mut() {
            if a.error_class.is_none() && a.latency_us == 0 {
                a.error_class = Some("client_disconnected".into());
                a.latency_us = micros(self.started);
            }
        }
        if self.record.error_code.is_none() {
            self.record.error_code = Some("client_disconnected".into());
        }
        // Nobody is left to wait: the sink waits for room on a task of its own.
        let record = self.close();
        self.sink.record(record);
    }
}
