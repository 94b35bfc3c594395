//! The Prometheus registry: families registered once, updated per finished request,
//! rendered in the text format (OpenMetrics flavour) on scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::series::{Labels, Series};
use super::{operation_name, Snapshot};
use crate::config::TelemetryConfig;
use crate::ledger::RequestRecord;

/// What `GET /metrics` answers with.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The GenAI histograms' labels, and with the token type or the error class.
const GEN_AI: [&str; 4] = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
];
const GEN_AI_TOKEN: [&str; 5] = [
    GEN_AI[0],
    GEN_AI[1],
    GEN_AI[2],
    GEN_AI[3],
    "gen_ai_token_type",
];
const GEN_AI_ERROR: [&str; 5] = [GEN_AI[0], GEN_AI[1], GEN_AI[2], GEN_AI[3], "error_type"];
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// `gen_ai.client.operation.duration`'s advised buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// `gen_ai.client.token.usage`'s advised buckets, in tokens.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn token_histogram() -> Histogram {
    Histogram::new(TOKEN_BUCKETS)
}

/// The guardrail's findings as the ledger row says them, `mode:TYPE=n,TYPE=n` for the
/// prompt, then `;output:mode:TYPE=n` for the answer: (direction, mode, type in lower
/// case, count). Anything else is skipped.
fn pii_findings(redactions: &str) -> Vec<(&'static str, &str, String, u64)> {
    let mut out = Vec::new();
    for part in redactions.split(';') {
        let (direction, rest) = match part.strip_prefix("output:") {
            Some(rest) => ("output", rest),
            None => ("input", part),
        };
        let Some((mode, found)) = rest.split_once(':') else {
            continue;
        };
        for (kind, n) in found.split(',').filter_map(|p| p.split_once('=')) {
            if let Ok(n) = n.parse::<u64>() {
                out.push((direction, mode, kind.to_ascii_lowercase(), n));
            }
        }
    }
    out
}

pub(super) struct Metrics {
    registry: Registry,
    key_labels: bool,
    team_labels: bool,
    operation_duration: Series<Histogram>,
    token_usage: Series<Histogram>,
    time_to_first_token: Series<Histogram>,
    requests: Series<Counter>,
    attempts: Series<Counter>,
    failovers: Series<Counter>,
    cost: Series<Counter<f64, AtomicU64>>,
    pii: Series<Counter>,
    recoveries: Series<Counter>,
    cache_lookups: Series<Counter>,
    channel_first_token: Series<Histogram>,
    channel_duration: Series<Histogram>,
    in_flight: Gauge,
}

impl Metrics {
    pub(super) fn new(config: &TelemetryConfig) -> Metrics {
        let mut registry = Registry::default();
        let operation_duration = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "GenAI operation duration (gen_ai.client.operation.duration): one per request that reached a provider",
            Unit::Seconds,
            operation_duration.clone(),
        );
        let token_usage = HistogramFamily::new_with_constructor(token_histogram);
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens used per request (gen_ai.client.token.usage), by gen_ai_token_type input or output",
            token_usage.clone(),
        );
        let time_to_first_token = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "gen_ai_server_time_to_first_token",
            "Time from the request to the first token sent to the client, streams only (gen_ai.server.time_to_first_token)",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "switchyard_requests",
            "Client requests by logical model, serving (or last failed) deployment, outcome and error class",
            requests.clone(),
        );
        let attempts = Family::<Labels, Counter>::default();
        registry.register(
            "switchyard_attempts",
            "Upstream calls by logical model, deployment, provider, outcome and error class",
            attempts.clone(),
        );
        let failovers = Family::<Labels, Counter>::default();
        registry.register(
            "switchyard_failovers",
            "Failed attempts after which another deployment was tried, by the failed deployment and its error class",
            failovers.clone(),
        );
        let cost = Family::<Labels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "switchyard_cost_usd",
            "List-price cost of upstream calls in USD, by logical model, deployment and team",
            cost.clone(),
        );
        let pii = Family::<Labels, Counter>::default();
        registry.register(
            "switchyard_pii_detections",
            "PII found in requests by the guardrail, by type and mode (never values)",
            pii.clone(),
        );
        let recoveries = Family::<Labels, Counter>::default();
        registry.register(
            "switchyard_stream_recoveries",
            "Streams that broke after content and were continued on another deployment (stream_recovery), by the deployment that broke",
            recoveries.clone(),
        );
        let cache_lookups = Family::<Labels, Counter>::default();
        registry.register(
            "switchyard_cache_lookups",
            "Cacheable requests by logical model and result (hit, miss)",
            cache_lookups.clone(),
        );
        let channel_first_token = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "switchyard_channel_first_token",
            "Time to first token of answered requests per channel profile (a plain answer's is its whole body), against ttft_slo_ms",
            Unit::Seconds,
            channel_first_token.clone(),
        );
        let channel_duration = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "switchyard_channel_request_duration",
            "Latency of answered requests per channel profile, against total_slo_ms",
            Unit::Seconds,
            channel_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "switchyard_requests_in_flight",
            "Requests being served now",
            in_flight.clone(),
        );
        Metrics {
            registry,
            key_labels: config.key_labels,
            team_labels: config.team_labels,
            operation_duration: Series::new(operation_duration, &GEN_AI_ERROR),
            token_usage: Series::new(token_usage, &GEN_AI_TOKEN),
            time_to_first_token: Series::new(time_to_first_token, &GEN_AI[..]),
            requests: Series::new(
                requests,
                &[
                    "model",
                    "deployment",
                    "outcome",
                    "error_type",
                    "key",
                    "team",
                ],
            ),
            attempts: Series::new(
                attempts,
                &["model", "deployment", "provider", "outcome", "error_type"],
            ),
            failovers: Series::new(failovers, &["model", "deployment", "error_type"]),
            cost: Series::new(cost, &["model", "deployment", "key", "team"]),
            pii: Series::new(pii, &["type", "mode", "direction"]),
            recoveries: Series::new(recoveries, &["model", "deployment"]),
            cache_lookups: Series::new(cache_lookups, &["model", "result"]),
            channel_first_token: Series::new(channel_first_token, &["channel"]),
            channel_duration: Series::new(channel_duration, &["channel"]),
            in_flight,
        }
    }

    pub(super) fn started(&self) {
        self.in_flight.inc();
    }

    pub(super) fn finished(&self, r: &RequestRecord) {
        self.in_flight.dec();
        // A model the gateway does not know is the client's string: never a label.
        let model = match (&r.logical_model, r.error_code.as_deref()) {
            (_, Some("model_not_found")) => "unknown",
            (Some(m), _) => m.as_str(),
            (None, _) => "none",
        };
        let deployment = r.deployment.as_deref().unwrap_or("none");
        let outcome = if r.client_disconnected {
            "cancelled"
        } else if r.status < 400 {
            "success"
        } else {
            "error"
        };
        let key = match (self.key_labels, &r.key_id) {
            (true, Some(k)) => k.as_str(),
            _ => "",
        };
        let team = match (self.team_labels, &r.team_id) {
            (true, Some(t)) => t.as_str(),
            _ => "",
        };
        let error = r.error_code.as_deref().unwrap_or("");
        self.requests
            .get(&[model, deployment, outcome, error, key, team])
            .inc();

        let operation = operation_name(r.endpoint);
        if let Some(serving) = r.attempts.last() {
            let provider = serving.provider_kind;
            let response_model = serving.upstream_model.as_str();
            if r.status < 400 {
                for (kind, n) in [
                    ("input", r.usage.prompt_tokens),
                    ("output", r.usage.completion_tokens),
                ] {
                    self.token_usage
                        .get(&[operation, provider, model, response_model, kind])
                        .observe(n as f64);
                }
            }
            if let Some(ttft) = r.ttft_us {
                self.time_to_first_token
                    .get(&[operation, provider, model, response_model])
                    .observe(ttft as f64 / 1e6);
            }
            self.operation_duration
                .get(&[operation, provider, model, response_model, error])
                .observe(r.latency_us as f64 / 1e6);
        }

        let last = r.attempts.len().saturating_sub(1);
        for (i, a) in r.attempts.iter().enumerate() {
            let (outcome, error) = match &a.error_class {
                Some(e) => ("error", e.as_str()),
                None => ("success", ""),
            };
            self.attempts
                .get(&[model, &a.deployment, &a.provider, outcome, error])
                .inc();
            // A failover moves to another deployment; a retry of the same one is not.
            let next = r.attempts.get(i + 1).map(|n| n.deployment.as_str());
            if i < last && next != Some(a.deployment.as_str()) && !error.is_empty() {
                self.failovers.get(&[model, &a.deployment, error]).inc();
            }
            if a.cost_nano_usd > 0 {
                self.cost
                    .get(&[model, &a.deployment, key, team])
                    .inc_by(a.cost_nano_usd as f64 / 1e9);
            }
        }

        if r.cache_hit || r.cache_missed {
            let result = if r.cache_hit { "hit" } else { "miss" };
            self.cache_lookups.get(&[model, result]).inc();
        }

        // A stream continued elsewhere: its broken attempt, then the one that served.
        if r.error_code.is_none() {
            let broke = r
                .attempts
                .iter()
                .rev()
                .skip(1)
                .find(|a| a.error_class.as_deref() == Some("stream_cut"));
            if let Some(a) = broke {
                self.recoveries.get(&[model, &a.deployment]).inc();
            }
        }

        if let Some(channel) = r
            .channel
            .as_deref()
            .filter(|_| r.status < 400 && r.error_code.is_none())
        {
            let first_token = r.ttft_us.unwrap_or(r.latency_us);
            self.channel_first_token
                .get(&[channel])
                .observe(first_token as f64 / 1e6);
            self.channel_duration
                .get(&[channel])
                .observe(r.latency_us as f64 / 1e6);
        }

        if let Some(redactions) = r.redactions.as_deref() {
            for (direction, mode, kind, n) in pii_findings(redactions) {
                self.pii.get(&[&kind, mode, direction]).inc_by(n);
            }
        }
    }

    /// `traces_dropped`: requests whose spans the exporter had no room for, when
    /// traces are on.
    pub(super) fn render(&self, s: &Snapshot, traces_dropped: Option<u64>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let mut scraped = self.scrape_registry(s);
        if let Some(n) = traces_dropped {
            let dropped = Counter::<u64>::default();
            dropped.inc_by(n);
            scraped.register(
                "switchyard_trace_requests_dropped",
                "Requests whose spans were not exported because the exporter's queue was full",
                dropped,
            );
        }
        let _ = encode_registry(&mut out, &scraped);
        let _ = encode_eof(&mut out);
        out
    }

    /// The gauges of state kept elsewhere, as of this scrape.
    fn scrape_registry(&self, s: &Snapshot) -> Registry {
        let mut reg = Registry::default();
        let breaker = Family::<Labels, Gauge>::default();
        let exhausted = Family::<Labels, Gauge>::default();
        let exhausted_for = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let calls = Family::<Labels, Gauge>::default();
        for d in &s.deployments {
            for state in ["closed", "open", "half_open"] {
                let l = vec![
                    ("deployment", d.deployment.clone()),
                    ("state", state.to_owned()),
                ];
                breaker.get_or_create(&l).set(i64::from(d.breaker == state));
            }
            let l = vec![
                ("deployment", d.deployment.clone()),
                ("provider", d.provider.clone()),
            ];
            exhausted
                .get_or_create(&l)
                .set(i64::from(d.exhausted_for_ms.is_some()));
            exhausted_for
                .get_or_create(&l)
                .set(d.exhausted_for_ms.unwrap_or(0) as f64 / 1e3);
            calls.get_or_create(&l).set(i64::from(d.calls_in_flight));
        }
        reg.register(
            "switchyard_breaker_state",
            "Circuit-breaker state per deployment: 1 for the current state, 0 for the others",
            breaker,
        );
        reg.register(
            "switchyard_deployment_exhausted",
            "1 while the provider says the deployment is out of capacity (quota exhausted)",
            exhausted,
        );
        reg.register_with_unit(
            "switchyard_deployment_exhausted_remaining",
            "How much longer the provider said the deployment is exhausted for",
            Unit::Seconds,
            exhausted_for,
        );
        reg.register(
            "switchyard_deployment_calls_in_flight",
            "Upstream calls in flight per deployment",
            calls,
        );

        let spend = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let limit = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for b in &s.budgets {
            let shown = match b.scope {
                "key" => self.key_labels,
                _ => self.team_labels,
            };
            if !shown {
                continue;
            }
            let l = vec![(b.scope, b.id.clone()), ("period", b.period.to_owned())];
            spend.get_or_create(&l).set(b.spent_nano_usd as f64 / 1e9);
            limit.get_or_create(&l).set(b.limit_nano_usd as f64 / 1e9);
        }
        reg.register(
            "switchyard_budget_spend_usd",
            "Spend in the budget's current period, per key or team budget",
            spend,
        );
        reg.register(
            "switchyard_budget_limit_usd",
            "The budget's limit per period",
            limit,
        );

        let remaining = Family::<Labels, Gauge>::default();
        let capacity = Family::<Labels, Gauge>::default();
        for w in &s.limits {
            let shown = match w.scope {
                "key" => self.key_labels,
                "team" => self.team_labels,
                _ => true,
            };
            if !shown {
                continue;
            }
            let l = vec![(w.scope, w.id.clone()), ("limit", w.limit.to_owned())];
            remaining.get_or_create(&l).set(clamp(w.remaining));
            capacity.get_or_create(&l).set(clamp(w.capacity));
        }
        reg.register(
            "switchyard_limit_remaining",
            "Headroom of a rate limit (key, team) or quota (deployment) in its current window",
            remaining,
        );
        reg.register(
            "switchyard_limit_capacity",
            "The limit of that window",
            capacity,
        );

        // Contracts: the period's burn and what it projects (money; a token
        // commitment's shortfall is in tokens).
        let usd = |v: i64| v as f64 / 1e9;
        let contract_spend = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let contract_reserved = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let contract_committed = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let contract_cap = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let contract_shortfall = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let contract_overage = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for c in &s.contracts {
            if c.period.is_none() {
                continue;
            }
            let l = vec![("contract", c.name.clone())];
            let p = c.projection();
            contract_spend
                .get_or_create(&l)
                .set(usd(c.burn.spent_nano_usd));
            contract_reserved
                .get_or_create(&l)
                .set(usd(c.burn.reserved_nano_usd));
            if let Some(committed) = p.committed_nano_usd {
                contract_committed.get_or_create(&l).set(usd(committed));
            }
            if let (Some(short), false) = (p.shortfall, c.in_tokens()) {
                contract_shortfall.get_or_create(&l).set(usd(short));
            }
            if let (Some(cap), Some(over)) = (c.cap_nano_usd, p.overage_nano_usd) {
                contract_cap.get_or_create(&l).set(usd(cap));
                contract_overage.get_or_create(&l).set(usd(over));
            }
        }
        for (name, help, family) in [
            (
                "switchyard_contract_spend_usd",
                "Spend at contracted prices on a contract's deployments in its current period",
                contract_spend,
            ),
            (
                "switchyard_contract_reserved_usd",
                "What calls in flight hold against a contract's cap",
                contract_reserved,
            ),
            (
                "switchyard_contract_committed_usd",
                "A contract's commitment for its current period",
                contract_committed,
            ),
            (
                "switchyard_contract_cap_usd",
                "A contract's spending cap per period",
                contract_cap,
            ),
            (
                "switchyard_contract_projected_shortfall_usd",
                "Committed money projected to go unused by the period's end (0: on track)",
                contract_shortfall,
            ),
            (
                "switchyard_contract_projected_overage_usd",
                "Spend projected beyond the cap by the period's end (0: within it)",
                contract_overage,
            ),
        ] {
            reg.register(name, help, family);
        }

        let queue = Gauge::<i64>::default();
        queue.set(i64::try_from(s.ledger_queue_depth).unwrap_or(i64::MAX));
        reg.register(
            "switchyard_ledger_queue_depth",
            "Ledger rows waiting for the writer",
            queue,
        );
        if let Some(stats) = &s.ledger {
            let written = Counter::<u64>::default();
            written.inc_by(stats.written);
            reg.register(
                "switchyard_ledger_rows_written",
                "Request rows the ledger wrote",
                written,
            );
            let dropped = Family::<Labels, Counter>::default();
            for (reason, n) in [
                ("queue_full", stats.dropped_queue_full),
                ("write_failed", stats.dropped_write_failed),
                ("duplicate", stats.dropped_duplicate),
                ("shutting_down", stats.dropped_shutting_down),
                ("writer_gone", stats.dropped_writer_gone),
            ] {
                dropped
                    .get_or_create(&vec![("reason", reason.to_owned())])
                    .inc_by(n);
            }
            reg.register(
                "switchyard_ledger_rows_dropped",
                "Request rows the ledger lost, by reason",
                dropped,
            );
        }
        reg
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::pii_findings;

    #[test]
    fn pii_findings_read_prompt_and_answer_parts() {
        assert_eq!(
            pii_findings("redact:EMAIL=2,PHONE=1;output:block:CARD=1"),
            vec![
                ("input", "redact", "email".to_owned(), 2),
                ("input", "redact", "phone".to_owned(), 1),
                ("output", "block", "card".to_owned(), 1),
            ]
        );
        assert_eq!(
            pii_findings("output:redact:EMAIL=1"),
            vec![("output", "redact", "email".to_owned(), 1)]
        );
        // Malformed parts are skipped, never mislabelled.
        assert_eq!(pii_findings("redact;output:x;log:EMAIL=lots"), vec![]);
    }
}
