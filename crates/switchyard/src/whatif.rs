//! What-if replay (`switchyard whatif`): the ledger's recorded requests routed again
//! through another configuration (other prices, deployments, strategies, regions),
//! without calling any provider, reported beside what really happened.
//!
//! Each request keeps in the ledger what routing was given for it (no content): its
//! token counts, what it needed (tools, vision, JSON schema), its output bound and the
//! caller's regions and data tags. A replay takes the recorded model name, finds it in
//! the other configuration, asks [`routing::plan_with`] for the plan with the same
//! needs and caller constraints, and lets the first candidate serve: the replay models
//! no failures. Its cost is that deployment's price applied to the recorded tokens.
//!
//! - Every request that reached routing is replayed, whatever its ingress (chat
//!   completions, messages, responses, embeddings: routing treats them alike), and
//!   whether or not it was answered (a failed request is replayed with the tokens it
//!   recorded). Requests refused before routing (authentication, policy, budget,
//!   unknown model) are counted as not replayed.
//! - A cache hit cost nothing and never reached a deployment: counted apart, at 0 on
//!   both sides, never re-routed.
//! - Latency is estimated from each deployment's observed distribution: the successful
//!   upstream calls the ledger recorded for it (by deployment name) in the same period.
//!   Each replayed request draws one of them; a deployment with none is reported as
//!   having no history. The latency strategy orders by each deployment's median.
//! - Randomness (weighted orders, the latency strategy's choices, latency draws) comes
//!   from generators seeded with `--seed`, and rows are replayed in a fixed order, so a
//!   seed gives the same report every time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::config::{Config, Constraints, Deployment};
use crate::contracts::ContractBook;
use crate::ledger::stats::contracts::{
    contract_report_json, render_contract_report, ContractState,
};
use crate::ledger::stats::replay::{deployment_latencies, replay_rows, ReplayRow, RoutedFacts};
use crate::ledger::{Database, LedgerError};
use crate::routing::{self, Health, Needs};
use crate::types::money::format_usd;
use crate::types::time::format_rfc3339;
use crate::types::{Price, Usage};

/// The reason given for a request whose model the other configuration lacks.
pub const MODEL_NOT_CONFIGURED: &str = "model not in the configuration";

/// Mixed into the seed of the latency draws, so that they use a stream of their own:
/// a change of latency history then leaves the routing decisions as they were.
const LATENCY_STREAM: u64 = 0x6c61_7465_6e63_7921;

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Requests that started in `[since_ms, until_ms)`, unix ms; `None`: unbounded
    /// on that side.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only this logical model's requests.
    pub model: Option<String>,
    pub seed: u64,
}

/// The price a replayed request's effective cost is computed with: the contracted
/// price of the alternative configuration's contract covering the deployment, else
/// its list price.
fn effective_price(d: &Deployment) -> &Price {
    &d.effective_price
}

/// What the ledger says a request effectively cost (at the contracted prices it was
/// served at).
fn recorded_effective_cost(row: &ReplayRow) -> i64 {
    row.cost_nano_usd
}

/// An amount at list prices and at effective (contracted) prices, nano-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub list_nano_usd: i64,
    pub effective_nano_usd: i64,
}

impl Cost {
    fn add(&mut self, list: i64, effective: i64) {
        self.list_nano_usd = self.list_nano_usd.saturating_add(list);
        self.effective_nano_usd = self.effective_nano_usd.saturating_add(effective);
    }

    /// `self - other`: what going from `self` to `other` saves.
    pub fn minus(&self, other: &Cost) -> Cost {
        Cost {
            list_nano_usd: self.list_nano_usd.saturating_sub(other.list_nano_usd),
            effective_nano_usd: self
                .effective_nano_usd
                .saturating_sub(other.effective_nano_usd),
        }
    }
}

/// Nearest-rank percentiles, µs; `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spread {
    pub p50_us: Option<i64>,
    pub p99_us: Option<i64>,
}

impl Spread {
    /// The percentiles of `samples` (sorted here).
    fn of(samples: &mut [i64]) -> Spread {
        samples.sort_unstable();
        Spread {
            p50_us: nearest_rank(samples, 50),
            p99_us: nearest_rank(samples, 99),
        }
    }
}

/// The value at rank ceil(p × n / 100) of sorted `samples`.
fn nearest_rank(sorted: &[i64], p: usize) -> Option<i64> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// A team's requests (replayed and cache hits) and their cost both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeamFigures {
    pub requests: u64,
    pub actual: Cost,
    pub whatif: Cost,
    /// What the team's requests with no eligible deployment in the other
    /// configuration actually cost (in `actual`, not comparable with `whatif`).
    pub unserved: Cost,
}

impl TeamFigures {
    /// Like for like: the actual cost of the requests the other configuration serves,
    /// less their cost there.
    pub fn saving(&self) -> Cost {
        self.actual.minus(&self.unserved).minus(&self.whatif)
    }
}

/// One deployment: the requests it answered, those the replay sends it, its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentFigures {
    pub provider: Option<String>,
    /// Whether the other configuration has a deployment of this name.
    pub configured: bool,
    /// Replayed requests it actually answered.
    pub actual_requests: u64,
    /// Replayed requests whose first candidate it is in the other configuration.
    pub whatif_requests: u64,
    /// Successful upstream calls the ledger has of it in the period.
    pub history_samples: u64,
    /// The percentiles of that history.
    pub history: Spread,
    /// The percentiles of the latencies drawn for the requests routed to it; `None`
    /// when it has no history (or got no requests).
    pub estimated: Option<Spread>,
}

/// Requests per provider, both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderFigures {
    pub actual_requests: u64,
    pub whatif_requests: u64,
}

/// Requests the other configuration has no eligible deployment for, by model and
/// reason (routing's exclusions, or [`MODEL_NOT_CONFIGURED`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoEligible {
    pub model: String,
    pub reason: String,
    pub requests: u64,
    /// What those requests actually cost.
    pub actual: Cost,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub options: Option<Options>,
    /// Requests in the range (and of the model, when one is given).
    pub requests: u64,
    /// Requests routed again.
    pub replayed: u64,
    /// Replayed requests per ingress endpoint.
    pub endpoints: BTreeMap<String, u64>,
    /// Answered from the response cache: cost 0, not re-routed.
    pub cache_hits: u64,
    /// Refused before routing: nothing to replay.
    pub not_routed: u64,
    /// Replayed requests that were answered, and those that failed.
    pub actual_answered: u64,
    pub actual_failed: u64,
    /// Replayed requests the other configuration has a deployment for.
    pub whatif_routed: u64,
    /// Cost of the replayed requests and the cache hits.
    pub actual: Cost,
    pub whatif: Cost,
    /// By team (`None`: requests of keys without a team).
    pub teams: BTreeMap<Option<String>, TeamFigures>,
    pub deployments: BTreeMap<String, DeploymentFigures>,
    pub providers: BTreeMap<String, ProviderFigures>,
    pub no_eligible: Vec<NoEligible>,
    /// The answered replayed requests' recorded latency.
    pub actual_latency: Spread,
    /// The latencies drawn for the replayed requests.
    pub estimated_latency: Spread,
    pub estimated_requests: u64,
    /// Replayed requests sent to a deployment without history (no latency drawn).
    pub without_history: u64,
    /// The other configuration's contracts at the last replayed request: the burn of
    /// that request's period, from the replayed requests (what happened before the
    /// range is not counted), and its projection.
    pub contracts: Vec<ContractState>,
}

impl Report {
    /// What the other configuration saves (negative: costs more).
    ///
    /// Like for like: requests the other configuration cannot serve are left out of
    /// both sides (their actual cost is [`Report::unserved`]).
    pub fn saving(&self) -> Cost {
        self.comparable().minus(&self.whatif)
    }

    /// The actual cost of the requests the other configuration serves (and of the
    /// cache hits, which cost nothing either way).
    pub fn comparable(&self) -> Cost {
        self.actual.minus(&self.unserved())
    }

    /// What the requests with no eligible deployment in the other configuration
    /// actually cost.
    pub fn unserved(&self) -> Cost {
        let mut c = Cost::default();
        for n in &self.no_eligible {
            c.add(n.actual.list_nano_usd, n.actual.effective_nano_usd);
        }
        c
    }

    pub fn no_eligible_requests(&self) -> u64 {
        self.no_eligible.iter().map(|n| n.requests).sum()
    }
}

/// Reads the ledger and replays it through `alt`.
pub async fn replay(db: &Database, alt: &Config, options: &Options) -> Result<Report, LedgerError> {
    let since_ms = options.since_ms.unwrap_or(i64::MIN);
    let until_ms = options.until_ms.unwrap_or(i64::MAX);
    let rows = replay_rows(db, since_ms, until_ms, options.model.as_deref()).await?;
    let history = deployment_latencies(db, since_ms, until_ms).await?;
    Ok(replay_rows_through(alt, &rows, &history, options))
}

/// The replay itself, on rows already read: `history` holds each deployment's
/// observed latencies (µs, sorted), by name.
pub fn replay_rows_through(
    alt: &Config,
    rows: &[ReplayRow],
    history: &BTreeMap<String, Vec<i64>>,
    options: &Options,
) -> Report {
    let mut route_rng = StdRng::seed_from_u64(options.seed);
    let mut latency_rng = StdRng::seed_from_u64(options.seed ^ LATENCY_STREAM);
    let health = measured_health(alt, history);
    let mut report = Report {
        options: Some(options.clone()),
        ..Report::default()
    };
    let mut no_eligible: BTreeMap<(String, String), NoEligible> = BTreeMap::new();
    let mut actual_latencies: Vec<i64> = Vec::new();
    let mut drawn: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    // The other configuration's contracts, burned by the replayed requests in order.
    let contracts = ContractBook::new();
    let mut last_at = None;
    for row in rows {
        last_at = Some(row.started_at_ms);
        report.requests += 1;
        let actual_list = row.list_cost_nano_usd;
        let actual_effective = recorded_effective_cost(row);
        if row.cache_hit {
            report.cache_hits += 1;
            let team = report.teams.entry(row.team_id.clone()).or_default();
            team.requests += 1;
            team.actual.add(actual_list, actual_effective);
            report.actual.add(actual_list, actual_effective);
            continue;
        }
        let Some(facts) = &row.routed else {
            report.not_routed += 1;
            continue;
        };
        report.replayed += 1;
        *report.endpoints.entry(row.endpoint.clone()).or_default() += 1;
        report.actual.add(actual_list, actual_effective);
        let team = report.teams.entry(row.team_id.clone()).or_default();
        team.requests += 1;
        team.actual.add(actual_list, actual_effective);
        if row.answered {
            report.actual_answered += 1;
            actual_latencies.push(row.latency_us);
            if let Some(name) = &row.deployment {
                let d = report.deployments.entry(name.clone()).or_default();
                d.actual_requests += 1;
                if d.provider.is_none() {
                    d.provider.clone_from(&row.provider);
                }
            }
            let provider = row.provider.clone().unwrap_or_else(|| "(none)".to_owned());
            report
                .providers
                .entry(provider)
                .or_default()
                .actual_requests += 1;
        } else {
            report.actual_failed += 1;
        }

        let model_name = row.logical_model.clone().unwrap_or_default();
        let chosen = match alt.model(&model_name) {
            None => Err(MODEL_NOT_CONFIGURED.to_owned()),
            Some(model) => {
                let needs = needs_of(row, facts, alt.governance.default_max_output_tokens);
                let caller = caller_of(facts);
                let mut plan =
                    routing::plan_with(model, &needs, &caller, Some(&health), &mut route_rng);
                let at = row.started_at_ms;
                routing::prefer_commitments(&mut plan, model, |c| contracts.unburned(c, at));
                // The first candidate whose contract cap has room serves; its hold is
                // settled with the recorded usage, so commitments burn and caps fill in
                // the order the requests came.
                let mut capped = Vec::new();
                let mut served = None;
                for c in &plan.candidates {
                    let d = &c.deployment;
                    match contracts.hold(d, &needs.expected_usage(), at) {
                        Ok(hold) => {
                            served = Some((d.clone(), hold));
                            break;
                        }
                        Err(cap) => capped
                            .push(format!("{}: contract {} cap reached", d.name, cap.contract)),
                    }
                }
                match served {
                    Some((d, hold)) => {
                        if let Some(hold) = hold {
                            hold.settle(&usage_of(row));
                        }
                        Ok(d)
                    }
                    None if !capped.is_empty() => Err(capped.join("; ")),
                    None if plan.excluded.is_empty() => Err("the model has no deployment".into()),
                    None => Err(plan.exclusions()),
                }
            }
        };
        let deployment = match chosen {
            Ok(d) => d,
            Err(reason) => {
                let entry = no_eligible
                    .entry((model_name.clone(), reason.clone()))
                    .or_insert_with(|| NoEligible {
                        model: model_name,
                        reason,
                        requests: 0,
                        actual: Cost::default(),
                    });
                entry.requests += 1;
                entry.actual.add(actual_list, actual_effective);
                if let Some(team) = report.teams.get_mut(&row.team_id) {
                    team.unserved.add(actual_list, actual_effective);
                }
                continue;
            }
        };
        report.whatif_routed += 1;
        let usage = usage_of(row);
        let list = deployment.price.cost(&usage);
        let effective = effective_price(&deployment).cost(&usage);
        report.whatif.add(list, effective);
        if let Some(team) = report.teams.get_mut(&row.team_id) {
            team.whatif.add(list, effective);
        }
        let d = report
            .deployments
            .entry(deployment.name.clone())
            .or_default();
        d.whatif_requests += 1;
        d.provider = Some(deployment.provider.name.clone());
        report
            .providers
            .entry(deployment.provider.name.clone())
            .or_default()
            .whatif_requests += 1;
        let samples = history.get(&deployment.name).filter(|s| !s.is_empty());
        let draw = samples.and_then(|s| s.get(latency_rng.random_range(0..s.len())));
        match draw {
            Some(&us) => {
                report.estimated_requests += 1;
                drawn.entry(deployment.name.clone()).or_default().push(us);
            }
            None => report.without_history += 1,
        }
    }

    for (name, d) in &mut report.deployments {
        d.configured = alt.deployments.iter().any(|c| &c.name == name);
        if let Some(samples) = history.get(name) {
            d.history_samples = samples.len() as u64;
            d.history = Spread::of(&mut samples.clone());
        }
        d.estimated = drawn.get_mut(name).map(|s| Spread::of(s));
    }
    let mut all_drawn: Vec<i64> = drawn.into_values().flatten().collect();
    report.estimated_latency = Spread::of(&mut all_drawn);
    report.actual_latency = Spread::of(&mut actual_latencies);
    report.no_eligible = no_eligible.into_values().collect();
    // Each contract as the replay leaves it: the burn of the period of the last
    // replayed request, and what that projects.
    if let Some(at) = last_at {
        report.contracts = alt
            .contracts
            .values()
            .map(|c| ContractState::of(c, contracts.burn(c, at), at))
            .collect();
    }
    report
}

/// Health as routing's latency strategy reads it: each deployment with history
/// measured at its median, the others unmeasured (as a new deployment is at run time).
fn measured_health(alt: &Config, history: &BTreeMap<String, Vec<i64>>) -> Health {
    let health = Health::new(alt.deployments.len(), alt.breaker);
    for d in &alt.deployments {
        let median = history
            .get(&d.name)
            .and_then(|s| nearest_rank(s, 50))
            .and_then(|us| u64::try_from(us).ok());
        if let Some(us) = median {
            health.of(d).observe_latency(Duration::from_micros(us));
        }
    }
    health
}

/// What routing is given for a recorded request. The prompt size is the recorded
/// count (routing was given an estimate of it), the expected output the recorded bound
/// or the configuration's default.
fn needs_of(row: &ReplayRow, facts: &RoutedFacts, default_output: u64) -> Needs {
    let has = |n: &str| facts.needs.split(',').any(|x| x.trim() == n);
    Needs {
        tools: has("tools"),
        vision: has("vision"),
        json_schema: has("json_schema"),
        prompt_tokens: row.prompt_tokens,
        max_output: facts.max_tokens,
        expected_output: facts.max_tokens.unwrap_or(default_output),
    }
}

/// The caller's constraints as recorded (JSON arrays).
fn caller_of(facts: &RoutedFacts) -> Constraints {
    let list = |s: &str| serde_json::from_str::<Vec<String>>(s).ok();
    Constraints {
        allowed_regions: facts.allowed_regions.as_deref().and_then(list),
        required_tags: facts
            .required_tags
            .as_deref()
            .and_then(list)
            .unwrap_or_default(),
    }
}

fn usage_of(row: &ReplayRow) -> Usage {
    Usage {
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        cached_tokens: row.cached_tokens,
        reasoning_tokens: row.reasoning_tokens,
        cache_write_tokens: row.cache_write_tokens,
        estimated: false,
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn cost_json(c: &Cost) -> Value {
    json!({
        "list_nano_usd": c.list_nano_usd,
        "effective_nano_usd": c.effective_nano_usd,
        "list_usd": format_usd(c.list_nano_usd),
        "effective_usd": format_usd(c.effective_nano_usd),
    })
}

fn spread_json(s: &Spread) -> Value {
    json!({"p50": s.p50_us, "p99": s.p99_us})
}

impl Report {
    /// The report as `switchyard whatif --json` prints it. Money is integer nano-USD
    /// (with dollar strings beside), latencies µs, shares percent.
    pub fn to_json(&self) -> Value {
        let (since_ms, until_ms, model, seed) =
            self.options.as_ref().map_or((None, None, None, 0), |o| {
                (o.since_ms, o.until_ms, o.model.clone(), o.seed)
            });
        let teams: Vec<Value> = self
            .teams
            .iter()
            .map(|(team, t)| {
                json!({
                    "team": team,
                    "requests": t.requests,
                    "actual": cost_json(&t.actual),
                    "whatif": cost_json(&t.whatif),
                    "unserved": cost_json(&t.unserved),
                    "saving": cost_json(&t.saving()),
                })
            })
            .collect();
        let deployments: Vec<Value> = self
            .deployments
            .iter()
            .map(|(name, d)| {
                json!({
                    "deployment": name,
                    "provider": d.provider,
                    "configured": d.configured,
                    "actual_requests": d.actual_requests,
                    "actual_share_percent": percent(d.actual_requests, self.actual_answered),
                    "whatif_requests": d.whatif_requests,
                    "whatif_share_percent": percent(d.whatif_requests, self.whatif_routed),
                    "history_samples": d.history_samples,
                    "no_history": d.history_samples == 0,
                    "history_latency_us": spread_json(&d.history),
                    "estimated_latency_us": d.estimated.as_ref().map(spread_json),
                })
            })
            .collect();
        let providers: Vec<Value> = self
            .providers
            .iter()
            .map(|(name, p)| {
                json!({
                    "provider": name,
                    "actual_requests": p.actual_requests,
                    "actual_share_percent": percent(p.actual_requests, self.actual_answered),
                    "whatif_requests": p.whatif_requests,
                    "whatif_share_percent": percent(p.whatif_requests, self.whatif_routed),
                })
            })
            .collect();
        let no_eligible: Vec<Value> = self
            .no_eligible
            .iter()
            .map(|n| {
                json!({
                    "model": n.model,
                    "reason": n.reason,
                    "requests": n.requests,
                    "actual": cost_json(&n.actual),
                })
            })
            .collect();
        json!({
            "object": "whatif",
            "since_ms": since_ms,
            "until_ms": until_ms,
            "since": since_ms.map(format_rfc3339),
            "until": until_ms.map(format_rfc3339),
            "model": model,
            "seed": seed,
            "requests": {
                "in_range": self.requests,
                "replayed": self.replayed,
                "by_endpoint": self.endpoints,
                "cache_hits": self.cache_hits,
                "not_routed": self.not_routed,
                "actual_answered": self.actual_answered,
                "actual_failed": self.actual_failed,
                "whatif_routed": self.whatif_routed,
                "whatif_no_eligible": self.no_eligible_requests(),
            },
            "cost": {
                "actual": cost_json(&self.actual),
                "unserved": cost_json(&self.unserved()),
                "comparable": cost_json(&self.comparable()),
                "whatif": cost_json(&self.whatif),
                "saving": cost_json(&self.saving()),
            },
            "teams": teams,
            "deployments": deployments,
            "providers": providers,
            "no_eligible": no_eligible,
            "contracts": contract_report_json(&self.contracts)
                .get("data")
                .cloned()
                .unwrap_or_default(),
            "latency_us": {
                "actual": spread_json(&self.actual_latency),
                "estimated": spread_json(&self.estimated_latency),
                "estimated_requests": self.estimated_requests,
                "requests_without_history": self.without_history,
            },
        })
    }

    /// The report as `switchyard whatif` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(o) = &self.options {
            let range = match (o.since_ms, o.until_ms) {
                (None, None) => "every recorded request".to_owned(),
                (Some(s), None) => format!("the requests from {}", format_rfc3339(s)),
                (None, Some(u)) => format!("the requests before {}", format_rfc3339(u)),
                (Some(s), Some(u)) => format!(
                    "the requests from {} to {}",
                    format_rfc3339(s),
                    format_rfc3339(u)
                ),
            };
            let model = o
                .model
                .as_ref()
                .map_or_else(String::new, |m| format!(" of model {m}"));
            let _ = writeln!(out, "What-if replay of {range}{model} (seed {})", o.seed);
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|(e, n)| format!("{e} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "requests: {} in range, {} replayed{}, {} cache hits (cost 0, not re-routed), \
             {} refused before routing (not replayed)",
            self.requests,
            self.replayed,
            if endpoints.is_empty() {
                String::new()
            } else {
                format!(" ({endpoints})")
            },
            self.cache_hits,
            self.not_routed
        );
        let _ = writeln!(
            out,
            "actually: {} answered, {} failed; what-if: {} routed, {} with no eligible deployment",
            self.actual_answered,
            self.actual_failed,
            self.whatif_routed,
            self.no_eligible_requests()
        );

        let saving = self.saving();
        let comparable = self.comparable();
        let _ = writeln!(
            out,
            "\n{:<10} {:>14} {:>14} {:>14}",
            "cost", "actual", "what-if", "saving"
        );
        for (label, a, w, s, base) in [
            (
                "list",
                self.actual.list_nano_usd,
                self.whatif.list_nano_usd,
                saving.list_nano_usd,
                comparable.list_nano_usd,
            ),
            (
                "effective",
                self.actual.effective_nano_usd,
                self.whatif.effective_nano_usd,
                saving.effective_nano_usd,
                comparable.effective_nano_usd,
            ),
        ] {
            let share = if base > 0 {
                format!(" ({:.1}%)", s as f64 * 100.0 / base as f64)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{label:<10} {:>14} {:>14} {:>14}{share}",
                format_usd(a),
                format_usd(w),
                format_usd(s)
            );
        }
        let unserved = self.no_eligible_requests();
        if unserved > 0 {
            let _ = writeln!(
                out,
                "(saving like for like: the {} requests the what-if serves actually cost {}; \
                 the {unserved} it cannot serve actually cost {})",
                self.whatif_routed,
                format_usd(comparable.list_nano_usd),
                format_usd(self.unserved().list_nano_usd)
            );
        }

        if !self.teams.is_empty() {
            let names: Vec<&str> = self
                .teams
                .keys()
                .map(|t| t.as_deref().unwrap_or("(no team)"))
                .collect();
            let w = width("team", names.iter().copied());
            let _ = writeln!(
                out,
                "\n{:<w$} {:>8} {:>12} {:>12} {:>12} {:>12}",
                "team", "requests", "actual list", "what-if list", "actual eff.", "what-if eff."
            );
            for (name, t) in names.iter().zip(self.teams.values()) {
                let _ = writeln!(
                    out,
                    "{name:<w$} {:>8} {:>12} {:>12} {:>12} {:>12}",
                    t.requests,
                    format_usd(t.actual.list_nano_usd),
                    format_usd(t.whatif.list_nano_usd),
                    format_usd(t.actual.effective_nano_usd),
                    format_usd(t.whatif.effective_nano_usd)
                );
            }
        }

        if !self.deployments.is_empty() {
            let names: Vec<String> = self
                .deployments
                .iter()
                .map(|(n, d)| format!("{n}{}", if d.configured { "" } else { " *" }))
                .collect();
            let w = width("deployment", names.iter().map(String::as_str));
            let _ = writeln!(
                out,
                "\n{:<w$} {:>6} {:>6} {:>7} {:>6}  {:<22} estimated p50/p99 ms",
                "deployment", "actual", "share", "what-if", "share", "observed p50/p99 ms",
            );
            for (name, d) in names.iter().zip(self.deployments.values()) {
                let observed = if d.history_samples == 0 {
                    "no history".to_owned()
                } else {
                    format!("{} ({} calls)", ms_pair(&d.history), d.history_samples)
                };
                let estimated = match (&d.estimated, d.whatif_requests) {
                    (_, 0) => "-".to_owned(),
                    (Some(s), _) => ms_pair(s),
                    (None, _) => "no history".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{name:<w$} {:>6} {:>5.1}% {:>7} {:>5.1}%  {:<22} {}",
                    d.actual_requests,
                    percent(d.actual_requests, self.actual_answered),
                    d.whatif_requests,
                    percent(d.whatif_requests, self.whatif_routed),
                    observed,
                    estimated
                );
            }
            if self.deployments.values().any(|d| !d.configured) {
                let _ = writeln!(out, "(* not in the replayed configuration)");
            }
            let w = width("provider", self.providers.keys().map(String::as_str));
            let _ = writeln!(
                out,
                "\n{:<w$} {:>6} {:>6} {:>7} {:>6}",
                "provider", "actual", "share", "what-if", "share"
            );
            for (name, p) in &self.providers {
                let _ = writeln!(
                    out,
                    "{name:<w$} {:>6} {:>5.1}% {:>7} {:>5.1}%",
                    p.actual_requests,
                    percent(p.actual_requests, self.actual_answered),
                    p.whatif_requests,
                    percent(p.whatif_requests, self.whatif_routed),
                );
            }
        }

        let _ = writeln!(
            out,
            "\nlatency ms: actual p50/p99 {}; estimated p50/p99 {} ({} requests{})",
            ms_pair(&self.actual_latency),
            ms_pair(&self.estimated_latency),
            self.estimated_requests,
            if self.without_history > 0 {
                format!(
                    "; {} sent to deployments with no history",
                    self.without_history
                )
            } else {
                String::new()
            }
        );

        if !self.no_eligible.is_empty() {
            let _ = writeln!(
                out,
                "\nno eligible deployment ({} requests):",
                self.no_eligible_requests()
            );
            for n in &self.no_eligible {
                let _ = writeln!(
                    out,
                    "  {} x{} (actually cost {}): {}",
                    if n.model.is_empty() {
                        "(no model)"
                    } else {
                        &n.model
                    },
                    n.requests,
                    format_usd(n.actual.list_nano_usd),
                    n.reason
                );
            }
        }
        if !self.contracts.is_empty() {
            let _ = writeln!(
                out,
                "\ncontracts of the other configuration, as the replay burns them:"
            );
            for line in render_contract_report(&self.contracts).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

/// The width of a column headed `title` holding `names`.
fn width<'a>(title: &str, names: impl Iterator<Item = &'a str>) -> usize {
    names
        .map(|n| n.chars().count())
        .chain(std::iter::once(title.len()))
        .max()
        .unwrap_or(0)
}

fn ms_pair(s: &Spread) -> String {
    let ms = |us: Option<i64>| {
        us.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v as f64 / 1000.0))
    };
    format!("{}/{}", ms(s.p50_us), ms(s.p99_us))
}
