//! Routing: which deployments may serve a request, and in which order to try them.
//!
//! Constraint filters (what the request needs, where the caller's data may go) apply
//! first and under every strategy; the strategy then orders what is left. Run-time
//! health (breakers, capacity) is applied by [`crate::dispatch`] while it walks the
//! order, so that a plan stays a pure function of config, request and measurements.

pub mod health;

use std::fmt;
use std::sync::Arc;

use crate::config::{Constraints, Contract, Deployment, LogicalModel, Strategy};
use crate::limits::{self, TokenEstimate};
use crate::types::chat::{ChatRequest, MessageContent};
use crate::types::Usage;
pub use health::Health;

/// What a request needs from a deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub vision: bool,
    pub json_schema: bool,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Requested completion tokens, when the request bounds them.
    pub max_output: Option<u64>,
    /// Completion tokens expected (the bound, or a default): the quota and cost
    /// estimates count these.
    pub expected_output: u64,
}

impl Needs {
    /// What a chat request needs. `estimate` is the one the caller's admission made
    /// (`limits::estimate_chat`), so a request is estimated once and routing, quotas
    /// and budgets agree on it.
    pub fn of_chat(req: &ChatRequest, estimate: TokenEstimate) -> Needs {
        let vision = req.messages.iter().any(|m| match &m.content {
            Some(MessageContent::Parts(parts)) => parts.iter().any(|p| p.kind == "image_url"),
            _ => false,
        });
        Needs {
            tools: req.tools.as_ref().is_some_and(|t| !t.is_empty()),
            vision,
            json_schema: req
                .response_format
                .as_ref()
                .is_some_and(|f| f.kind == "json_schema"),
            prompt_tokens: estimate.prompt,
            max_output: req.max_completion_tokens.or(req.max_tokens).map(u64::from),
            expected_output: estimate.output,
        }
    }

    /// What an embeddings request needs: room for its input.
    pub fn of_embeddings(input: &serde_json::Value) -> Needs {
        Needs {
            prompt_tokens: limits::estimate_embedding_tokens(input),
            ..Needs::default()
        }
    }

    /// The usage this request is expected to have (its prompt estimate and expected
    /// output): what cost bounds and the `cost` strategy price.
    pub fn expected_usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.expected_output,
            estimated: true,
            ..Usage::default()
        }
    }

    /// Tokens this request is expected to use: the quota charge before the answer.
    pub fn estimated_total_tokens(&self) -> u64 {
        self.prompt_tokens + self.expected_output
    }
}

/// Why a deployment cannot take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    Region {
        region: Option<String>,
        allowed: Vec<String>,
    },
    MissingTag(String),
    NoTools,
    NoVision,
    NoJsonSchema,
    ContextWindow {
        prompt_tokens: u64,
        window: u64,
    },
    MaxOutput {
        requested: u64,
        max: u64,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Region { region, allowed } => write!(
                f,
                "region {} is not allowed (allowed: {})",
                region.as_deref().unwrap_or("(unset)"),
                allowed.join(", ")
            ),
            Exclusion::MissingTag(t) => write!(f, "lacks required data tag `{t}`"),
            Exclusion::NoTools => f.write_str("does not support tools"),
            Exclusion::NoVision => f.write_str("does not accept images"),
            Exclusion::NoJsonSchema => f.write_str("does not support json_schema output"),
            Exclusion::ContextWindow {
                prompt_tokens,
                window,
            } => write!(
                f,
                "context window {window} tokens < estimated prompt {prompt_tokens}"
            ),
            Exclusion::MaxOutput { requested, max } => {
                write!(f, "max output {max} tokens < requested {requested}")
            }
        }
    }
}

/// Whether `d` may carry data under `c` (region and tags).
pub fn satisfies(d: &Deployment, c: &Constraints) -> Result<(), Exclusion> {
    if let (false, Some(allowed)) = (c.region_allows(d), &c.allowed_regions) {
        return Err(Exclusion::Region {
            region: d.region.clone(),
            allowed: allowed.clone(),
        });
    }
    if let Some(tag) = c.missing_tag(d) {
        return Err(Exclusion::MissingTag(tag.to_owned()));
    }
    Ok(())
}

/// Whether `d` can do what the request needs.
pub fn capable(d: &Deployment, needs: &Needs) -> Result<(), Exclusion> {
    let caps = &d.capabilities;
    if needs.tools && !caps.tools {
        return Err(Exclusion::NoTools);
    }
    if needs.vision && !caps.vision {
        return Err(Exclusion::NoVision);
    }
    if needs.json_schema && !caps.json_schema {
        return Err(Exclusion::NoJsonSchema);
    }
    if let Some(window) = caps.context_window {
        if needs.prompt_tokens > window {
            return Err(Exclusion::ContextWindow {
                prompt_tokens: needs.prompt_tokens,
                window,
            });
        }
    }
    if let (Some(max), Some(requested)) = (caps.max_output, needs.max_output) {
        if requested > max {
            return Err(Exclusion::MaxOutput { requested, max });
        }
    }
    Ok(())
}

/// The model's constraints combined with the caller's: both must hold.
pub fn combine(model: &Constraints, caller: &Constraints) -> Constraints {
    let allowed_regions = match (&model.allowed_regions, &caller.allowed_regions) {
        (None, None) => None,
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (Some(a), Some(b)) => Some(a.iter().filter(|r| b.contains(r)).cloned().collect()),
    };
    let mut required_tags = model.required_tags.clone();
    for t in &caller.required_tags {
        if !required_tags.contains(t) {
            required_tags.push(t.clone());
        }
    }
    Constraints {
        allowed_regions,
        required_tags,
    }
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub deployment: Arc<Deployment>,
    /// Why it is at this place in the order, for `x-switchyard-route` and
    /// `routes explain`.
    pub why: String,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    pub excluded: Vec<(Arc<Deployment>, Exclusion)>,
}

impl Plan {
    /// One line naming what excluded what, for the "no eligible deployment" error.
    pub fn exclusions(&self) -> String {
        self.excluded
            .iter()
            .map(|(d, why)| format!("{}: {why}", d.name))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Share of latency-strategy requests that try a random deployment first, so that
/// a recovered deployment gets measured again.
pub const EXPLORATION: f64 = 0.1;

/// Orders the eligible deployments of `model` for one request. `health` is None when
/// there are no measurements (e.g. `routes explain`).
/// Moves the deployment that issued a tool loop's reasoning state (`issuer`, see
/// `types::reasoning`) to the front of the order: its signatures are valid only
/// there, so finishing the loop on it keeps the model's reasoning. A soft affinity:
/// the others keep their order behind it, so an unavailable issuer is skipped like
/// any other failure.
pub fn prefer_issuer(plan: &mut Plan, issuer: &str) {
    let Some(at) = plan
        .candidates
        .iter()
        .position(|c| crate::providers::issuer_of(&c.deployment) == Some(issuer))
    else {
        return;
    };
    if at == 0 {
        return;
    }
    let mut first = plan.candidates.remove(at);
    first.why = format!("{}; issued this tool loop's reasoning state", first.why);
    plan.candidates.insert(0, first);
}

/// A channel's time-to-first-token objective in the order: deployments whose recent
/// p90 misses it move behind the others, each keeping its place among its kind (so
/// the strategy's order stands where the objective does not speak). A deployment
/// without enough recent samples is not judged.
pub fn demote_slow(plan: &mut Plan, health: &Health, slo: std::time::Duration, now_ms: i64) {
    let mut slow = Vec::new();
    let mut i = 0;
    while let Some(c) = plan.candidates.get(i) {
        match health.of(&c.deployment).ttft_p90(now_ms) {
            Some(p90) if p90 > slo => {
                let mut c = plan.candidates.remove(i);
                c.why = format!(
                    "{}; tried last: first-token p90 {} ms above the channel's {} ms",
                    c.why,
                    p90.as_millis(),
                    slo.as_millis()
                );
                slow.push(c);
            }
            _ => i += 1,
        }
    }
    plan.candidates.extend(slow);
}

/// Contracts in the order. A deployment covered by a commitment that is not burned
/// yet costs nothing at the margin (it is paid for either way): under `cost` it goes
/// first, and under `priority` too when the model says `prefer_commitments`. Such
/// deployments keep their order among themselves, as do the others behind them.
/// `unburned` answers for a contract now (see `contracts::ContractBook::unburned`).
pub fn prefer_commitments(
    plan: &mut Plan,
    model: &LogicalModel,
    unburned: impl Fn(&Contract) -> bool,
) {
    let applies = match model.strategy {
        Strategy::Cost => true,
        Strategy::Priority => model.prefer_commitments,
        Strategy::Weighted | Strategy::Latency => false,
    };
    if !applies
        || !plan
            .candidates
            .iter()
            .any(|c| c.deployment.contract.is_some())
    {
        return;
    }
    let mut first = Vec::with_capacity(plan.candidates.len());
    let mut rest = Vec::new();
    for mut c in plan.candidates.drain(..) {
        let covering = c.deployment.contract.clone();
        match covering.filter(|k| unburned(k)) {
            Some(k) => {
                c.why = format!(
                    "{}; free at the margin: unburned commitment of contract {}",
                    c.why, k.name
                );
                first.push(c);
            }
            None => rest.push(c),
        }
    }
    first.extend(rest);
    plan.candidates = first;
}

pub fn plan(
    model: &LogicalModel,
    needs: &Needs,
    caller: &Constraints,
    health: Option<&Health>,
) -> Plan {
    plan_with(model, needs, caller, health, &mut rand::rng())
}

/// [`plan`] with the randomness drawn from `rng`, so that a seeded generator gives the
/// same plans every time (what-if replays).
pub fn plan_with(
    model: &LogicalModel,
    needs: &Needs,
    caller: &Constraints,
    health: Option<&Health>,
    rng: &mut impl rand::Rng,
) -> Plan {
    let (mut plan, eligible) = filter(model, needs, caller);
    match model.strategy {
        Strategy::Priority => {
            let mut tiers: Vec<u32> = eligible.iter().map(|t| t.tier).collect();
            tiers.sort_unstable();
            tiers.dedup();
            for tier in tiers {
                let members: Vec<_> = eligible
                    .iter()
                    .filter(|t| t.tier == tier)
                    .copied()
                    .collect();
                let shared = members.len() > 1;
                for t in weighted_order(&members, &mut *rng) {
                    let why = if shared {
                        format!("priority tier {tier}, weight {}", t.weight)
                    } else {
                        format!("priority tier {tier}")
                    };
                    plan.candidates.push(Candidate {
                        deployment: t.deployment.clone(),
                        why,
                    });
                }
            }
        }
        Strategy::Weighted => {
            let total: u32 = eligible.iter().map(|t| t.weight).sum();
            for t in weighted_order(&eligible, &mut *rng) {
                plan.candidates.push(Candidate {
                    deployment: t.deployment.clone(),
                    why: format!("weighted {}/{total}", t.weight),
                });
            }
        }
        Strategy::Latency => {
            let score =
                |t: &&crate::config::Target| health.map_or(0.0, |h| h.of(&t.deployment).score());
            let mut ordered: Vec<_> = eligible.clone();
            ordered.sort_by(|a, b| score(a).total_cmp(&score(b)));
            let explore = health.is_some() && ordered.len() > 1 && rng.random_bool(EXPLORATION);
            if explore {
                let i = rng.random_range(0..ordered.len());
                let t = ordered.remove(i);
                ordered.insert(0, t);
            } else if ordered.len() > 1 {
                // Power of two choices: of two random deployments the better goes
                // first, which spreads load among equals instead of herding.
                let a = rng.random_range(0..ordered.len());
                let mut b = rng.random_range(0..ordered.len() - 1);
                if b >= a {
                    b += 1;
                }
                // `a` and `b` are below `ordered.len()` by construction, so both are found.
                let a_first = ordered
                    .get(a)
                    .zip(ordered.get(b))
                    .is_none_or(|(x, y)| score(x) <= score(y));
                let first = if a_first { a } else { b };
                let t = ordered.remove(first);
                ordered.insert(0, t);
            }
            for (i, t) in ordered.into_iter().enumerate() {
                let measured = health.and_then(|h| h.of(&t.deployment).latency_us());
                let why = match (i, explore, measured) {
                    (0, true, _) => "latency: exploring".to_owned(),
                    (_, _, Some(us)) => format!("latency {:.1} ms", us / 1000.0),
                    (_, _, None) => "latency: not yet measured".to_owned(),
                };
                plan.candidates.push(Candidate {
                    deployment: t.deployment.clone(),
                    why,
                });
            }
        }
        Strategy::Cost => {
            let usage = needs.expected_usage();
            let mut ordered: Vec<_> = eligible
                .iter()
                .map(|t| (t.deployment.effective_price.cost(&usage), *t))
                .collect();
            // Stable: equal costs keep configuration order.
            ordered.sort_by_key(|(cost, _)| *cost);
            for (cost, t) in ordered {
                plan.candidates.push(Candidate {
                    deployment: t.deployment.clone(),
                    why: format!("cost est. {} nano-USD", cost),
                });
            }
        }
    }
    plan
}

fn filter<'m>(
    model: &'m LogicalModel,
    needs: &Needs,
    caller: &Constraints,
) -> (Plan, Vec<&'m crate::config::Target>) {
    let constraints = combine(&model.constraints, caller);
    let mut plan = Plan::default();
    let mut eligible = Vec::with_capacity(model.targets.len());
    for t in &model.targets {
        match satisfies(&t.deployment, &constraints).and_then(|()| capable(&t.deployment, needs)) {
            Ok(()) => eligible.push(t),
            Err(e) => plan.excluded.push((t.deployment.clone(), e)),
        }
    }
    (plan, eligible)
}

/// The plan as configuration alone decides it, for `switchyard routes explain`: no
/// randomness (weighted shares are stated instead), no measurements.
pub fn explain(model: &LogicalModel, needs: &Needs, caller: &Constraints) -> Plan {
    if model.strategy == Strategy::Cost {
        return plan(model, needs, caller, None);
    }
    let (mut plan, mut eligible) = filter(model, needs, caller);
    eligible.sort_by_key(|t| (t.tier, std::cmp::Reverse(t.weight)));
    for t in &eligible {
        let tier_weight: u32 = eligible
            .iter()
            .filter(|o| model.strategy != Strategy::Priority || o.tier == t.tier)
            .map(|o| o.weight)
            .sum();
        let share = f64::from(t.weight) * 100.0 / f64::from(tier_weight.max(1));
        let why = match model.strategy {
            Strategy::Priority if share < 100.0 => {
                format!(
                    "priority tier {}, {share:.0}% of the tier's traffic",
                    t.tier
                )
            }
            Strategy::Priority => format!("priority tier {}", t.tier),
            Strategy::Weighted => format!("weighted, {share:.0}% of traffic"),
            _ => "latency: ordered by measured latency at run time".to_owned(),
        };
        plan.candidates.push(Candidate {
            deployment: t.deployment.clone(),
            why,
        });
    }
    plan
}

/// A random order in which each item comes first with probability weight / total
/// (Efraimidis–Spirakis: sort by u^(1/w) descending).
fn weighted_order<'a>(
    items: &[&'a crate::config::Target],
    rng: &mut impl rand::Rng,
) -> Vec<&'a crate::config::Target> {
    if items.len() <= 1 {
        return items.to_vec();
    }
    let mut keyed: Vec<(f64, &crate::config::Target)> = items
        .iter()
        .map(|t| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            (u.powf(1.0 / f64::from(t.weight)), *t)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests;

/// The text `switchyard routes explain` prints.
pub fn render_explanation(model: &LogicalModel, needs: &Needs, caller: &Constraints) -> String {
    use std::fmt::Write;
    let plan = explain(model, needs, caller);
    let c = combine(&model.constraints, caller);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {}: strategy {}, {} deployment(s)",
        model.name,
        model.strategy.label(),
        model.targets.len()
    );
    let regions = c
        .allowed_regions
        .as_ref()
        .map_or_else(|| "any".to_owned(), |r| r.join(", "));
    let tags = if c.required_tags.is_empty() {
        "none".to_owned()
    } else {
        c.required_tags.join(", ")
    };
    let mut wants: Vec<&str> = Vec::new();
    if needs.tools {
        wants.push("tools");
    }
    if needs.vision {
        wants.push("vision");
    }
    if needs.json_schema {
        wants.push("json_schema");
    }
    let _ = writeln!(
        out,
        "constraints: regions {regions}; required tags {tags}; needs {}; ~{} prompt tokens",
        if wants.is_empty() {
            "nothing special".to_owned()
        } else {
            wants.join(", ")
        },
        needs.prompt_tokens
    );
    if plan.candidates.is_empty() {
        let _ = writeln!(
            out,
            "no eligible deployment: requests fail with 400 no_eligible_deployment"
        );
    } else {
        let _ = writeln!(out, "eligible, in the order they are tried:");
    }
    for (i, cand) in plan.candidates.iter().enumerate() {
        let d = &cand.deployment;
        let quota = match (d.quota.rpm, d.quota.tpm) {
            (None, None) => "no quota set".to_owned(),
            (rpm, tpm) => format!(
                "quota {} rpm / {} tpm",
                rpm.map_or("-".to_owned(), |v| v.to_string()),
                tpm.map_or("-".to_owned(), |v| v.to_string())
            ),
        };
        let _ = writeln!(
            out,
            "  {}. {} ({} {}, model {}) region {} tags [{}]; {}; USD/M in {} out {}\n     why: {}",
            i + 1,
            d.name,
            d.provider.kind.label(),
            d.provider.name,
            d.upstream_model,
            d.region.as_deref().unwrap_or("(unset)"),
            d.data_tags.join(", "),
            quota,
            per_million(d.price.input_per_mtok),
            per_million(d.price.output_per_mtok),
            cand.why
        );
        if let Some(c) = &d.contract {
            let mut terms = Vec::new();
            if d.effective_price != d.price {
                terms.push(format!(
                    "contracted USD/M in {} out {}",
                    per_million(d.effective_price.input_per_mtok),
                    per_million(d.effective_price.output_per_mtok)
                ));
            }
            if c.commitment.is_some() {
                terms.push(
                    "free at the margin while its commitment is unburned (cost strategy, or prefer_commitments)".to_owned(),
                );
            }
            if let Some(cap) = c.cap_nano_usd {
                terms.push(format!(
                    "skipped when a request's reservation would pass its cap of {}",
                    crate::types::money::format_usd(cap)
                ));
            }
            let _ = writeln!(out, "     contract {}: {}", c.name, terms.join("; "));
        }
    }
    if !plan.excluded.is_empty() {
        let _ = writeln!(out, "excluded:");
        for (d, why) in &plan.excluded {
            let _ = writeln!(out, "  - {}: {why}", d.name);
        }
    }
    let _ = writeln!(
        out,
        "at run time: open circuit breakers, exhausted quotas and provider rate limits skip a \
         deployment, as does a contract cap without room; retryable failures fall through to the next (at most {} attempts).",
        model.retry.max_attempts
    );
    out
}

/// Nano-USD per million tokens as dollars, exact.
fn per_million(nano: u64) -> String {
    let s = format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000);
    let trimmed = s.trim_end_matches('0');
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    format!("${trimmed}")
}
