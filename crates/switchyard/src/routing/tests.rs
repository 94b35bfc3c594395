use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{Capabilities, Provider, ProviderKind, Quota, RetryPolicy, Target, Timeouts};
use crate::types::Price;

fn provider() -> Arc<Provider> {
    Arc::new(Provider {
        name: "p".into(),
        kind: ProviderKind::OpenAi {
            base_url: "http://127.0.0.1:1/v1".into(),
        },
        api_key: None,
        credentials: None,
        responses_api: true,
        openai_itself: false,
    })
}

fn dep(index: usize, region: Option<&str>, tags: &[&str], input_price: u64) -> Arc<Deployment> {
    let price = Price {
        input_per_mtok: input_price,
        output_per_mtok: input_price * 4,
        cached_input_per_mtok: input_price / 2,
        ..Price::default()
    };
    Arc::new(Deployment {
        index,
        name: format!("d{index}"),
        derived: crate::config::DerivedNames::of(&format!("d{index}"), "p"),
        upstream: Default::default(),
        reasoning_issuer: None,
        provider: provider(),
        upstream_model: "m".into(),
        region: region.map(str::to_owned),
        price,
        contract: None,
        effective_price: price,
        timeouts: Timeouts {
            connect: Duration::from_secs(1),
            first_byte: Duration::from_secs(1),
            total: Duration::from_secs(1),
        },
        quota: Quota::default(),
        capabilities: Capabilities {
            tools: true,
            vision: true,
            json_schema: true,
            context_window: None,
            max_output: None,
        },
        data_tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    })
}

fn model(strategy: Strategy, deps: Vec<(Arc<Deployment>, u32, u32)>) -> LogicalModel {
    LogicalModel {
        name: "m".into(),
        strategy,
        targets: deps
            .into_iter()
            .map(|(deployment, tier, weight)| Target {
                deployment,
                tier,
                weight,
            })
            .collect(),
        constraints: Constraints::default(),
        first_byte_timeout: None,
        total_timeout: None,
        retry: RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        },
        hedge_after: None,
        stream_recovery: crate::config::StreamRecovery::Off,
        prefer_commitments: false,
        cache: None,
        shadow: None,
    }
}

fn names(plan: &Plan) -> Vec<String> {
    plan.candidates
        .iter()
        .map(|c| c.deployment.name.clone())
        .collect()
}

#[test]
fn region_and_tag_constraints_hold_under_every_strategy() {
    // A property test over random catalogs, caller policies and strategies.
    const REGIONS: [Option<&str>; 4] = [Some("eu-west"), Some("eu-north"), Some("us-east"), None];
    const TAGS: [&str; 3] = ["eu", "zero-retention", "no-training"];
    let strategies = [
        Strategy::Priority,
        Strategy::Weighted,
        Strategy::Latency,
        Strategy::Cost,
    ];
    let health = Health::new(
        8,
        crate::config::BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            open_for: Duration::from_secs(5),
        },
    );
    for trial in 0..2_000 {
        let n = rand::random_range(1..=6usize);
        let deps: Vec<_> = (0..n)
            .map(|i| {
                let region = REGIONS[rand::random_range(0..REGIONS.len())];
                let tags: Vec<&str> = TAGS
                    .iter()
                    .copied()
                    .filter(|_| rand::random_bool(0.5))
                    .collect();
                let d = dep(
                    i,
                    region,
                    &tags,
                    rand::random_range(1..1_000u64) * 1_000_000,
                );
                (d, rand::random_range(0..3u32), rand::random_range(1..5u32))
            })
            .collect();
        let mut m = model(strategies[trial % strategies.len()], deps);
        if rand::random_bool(0.3) {
            m.constraints.allowed_regions = Some(vec!["eu-west".into(), "us-east".into()]);
        }
        let caller = Constraints {
            allowed_regions: rand::random_bool(0.7).then(|| {
                REGIONS
                    .iter()
                    .flatten()
                    .filter(|_| rand::random_bool(0.5))
                    .map(|r| (*r).to_owned())
                    .collect()
            }),
            required_tags: TAGS
                .iter()
                .filter(|_| rand::random_bool(0.3))
                .map(|t| (*t).to_owned())
                .collect(),
        };
        let p = plan(&m, &Needs::default(), &caller, Some(&health));
        assert_eq!(p.candidates.len() + p.excluded.len(), m.targets.len());
        for c in &p.candidates {
            let d = &c.deployment;
            for allowed in [&caller.allowed_regions, &m.constraints.allowed_regions]
                .into_iter()
                .flatten()
            {
                let region = d
                    .region
                    .as_deref()
                    .expect("a region-constrained route needs a region");
                assert!(
                    allowed.iter().any(|a| a == region),
                    "trial {trial}: {region} not in {allowed:?}"
                );
            }
            for tag in &caller.required_tags {
                assert!(
                    d.data_tags.contains(tag),
                    "trial {trial}: {} lacks {tag}",
                    d.name
                );
            }
        }
        for (d, _) in &p.excluded {
            let both = combine(&m.constraints, &caller);
            assert!(
                satisfies(d, &both).is_err(),
                "trial {trial}: {} excluded without cause",
                d.name
            );
        }
    }
}

#[test]
fn capability_filters_name_the_reason() {
    let plain = dep(0, Some("eu"), &[], 1);
    let mut small = (*dep(1, Some("eu"), &[], 1)).clone();
    small.capabilities = Capabilities {
        tools: false,
        vision: false,
        json_schema: false,
        context_window: Some(100),
        max_output: Some(50),
    };
    let m = model(
        Strategy::Priority,
        vec![(plain, 0, 1), (Arc::new(small), 1, 1)],
    );
    let cases = [
        (
            Needs {
                tools: true,
                ..Needs::default()
            },
            Exclusion::NoTools,
        ),
        (
            Needs {
                vision: true,
                ..Needs::default()
            },
            Exclusion::NoVision,
        ),
        (
            Needs {
                json_schema: true,
                ..Needs::default()
            },
            Exclusion::NoJsonSchema,
        ),
        (
            Needs {
                prompt_tokens: 101,
                ..Needs::default()
            },
            Exclusion::ContextWindow {
                prompt_tokens: 101,
                window: 100,
            },
        ),
        (
            Needs {
                max_output: Some(60),
                ..Needs::default()
            },
            Exclusion::MaxOutput {
                requested: 60,
                max: 50,
            },
        ),
    ];
    for (needs, expected) in cases {
        let p = plan(&m, &needs, &Constraints::default(), None);
        assert_eq!(names(&p), ["d0"]);
        assert_eq!(p.excluded.len(), 1);
        assert_eq!(p.excluded[0].1, expected);
        assert!(p.exclusions().starts_with("d1: "));
    }
    let p = plan(&m, &Needs::default(), &Constraints::default(), None);
    assert_eq!(names(&p), ["d0", "d1"]);
}

#[test]
fn priority_orders_tiers_and_splits_within_a_tier() {
    let m = model(
        Strategy::Priority,
        vec![
            (dep(0, None, &[], 1), 1, 1),
            (dep(1, None, &[], 1), 0, 3),
            (dep(2, None, &[], 1), 0, 1),
        ],
    );
    let mut first_d1 = 0;
    for _ in 0..4_000 {
        let p = plan(&m, &Needs::default(), &Constraints::default(), None);
        let order = names(&p);
        assert_eq!(order[2], "d0", "tier 1 comes after all of tier 0");
        if order[0] == "d1" {
            first_d1 += 1;
        }
    }
    // Weight 3 of 4 within tier 0: 75% ± 3 points over 4,000 draws.
    let share = f64::from(first_d1) / 4_000.0;
    assert!((0.72..=0.78).contains(&share), "{share}");
}

#[test]
fn cost_orders_by_estimated_price() {
    let m = model(
        Strategy::Cost,
        vec![
            (dep(0, None, &[], 300_000_000), 0, 1),
            (dep(1, None, &[], 100_000_000), 0, 1),
            (dep(2, None, &[], 200_000_000), 0, 1),
        ],
    );
    let p = plan(
        &m,
        &Needs {
            prompt_tokens: 1_000,
            ..Needs::default()
        },
        &Constraints::default(),
        None,
    );
    assert_eq!(names(&p), ["d1", "d2", "d0"]);
    assert!(p.candidates[0].why.starts_with("cost est."));
}

#[test]
fn latency_prefers_the_faster_deployment() {
    let health = Health::new(
        2,
        crate::config::BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            open_for: Duration::from_secs(5),
        },
    );
    let slow = dep(0, None, &[], 1);
    let fast = dep(1, None, &[], 1);
    health.of(&slow).observe_latency(Duration::from_millis(50));
    health.of(&fast).observe_latency(Duration::from_millis(5));
    let m = model(Strategy::Latency, vec![(slow, 0, 1), (fast, 0, 1)]);
    let firsts = (0..2_000)
        .filter(|_| {
            names(&plan(
                &m,
                &Needs::default(),
                &Constraints::default(),
                Some(&health),
            ))[0]
                == "d1"
        })
        .count();
    // Everything but the exploring share (10%, of which half picks the fast one anyway).
    let share = firsts as f64 / 2_000.0;
    assert!((0.92..=0.98).contains(&share), "{share}");
}

#[test]
fn constraints_combine_as_intersection_and_union() {
    let model_c = Constraints {
        allowed_regions: Some(vec!["eu-west".into(), "us-east".into()]),
        required_tags: vec!["eu".into()],
    };
    let caller = Constraints {
        allowed_regions: Some(vec!["eu-west".into(), "eu-north".into()]),
        required_tags: vec!["zero-retention".into(), "eu".into()],
    };
    let c = combine(&model_c, &caller);
    assert_eq!(c.allowed_regions, Some(vec!["eu-west".to_owned()]));
    assert_eq!(
        c.required_tags,
        vec!["eu".to_owned(), "zero-retention".to_owned()]
    );
    assert_eq!(
        combine(&Constraints::default(), &Constraints::default()),
        Constraints::default()
    );
}

#[test]
fn explanation_lists_order_reasons_and_exclusions() {
    let config = crate::config::Config::parse(
        r#"
[providers.az]
kind = "azure"
endpoint = "https://r.openai.azure.com"
api_key = "k-123"
[providers.oa]
kind = "openai"
base_url = "https://api.openai.com/v1"
[deployments.az-eu]
provider = "az"
model = "mini"
region = "eu-west"
data_tags = ["eu"]
quota = { rpm = 300 }
price = { input = 0.165, output = 0.66 }
[deployments.oa-eu]
provider = "oa"
model = "gpt-4o-mini"
region = "eu-north"
data_tags = ["eu"]
price = { input = 0.15, output = 0.6 }
[deployments.oa-us]
provider = "oa"
model = "gpt-4o-mini"
region = "us-east"
[models.support-chat]
deployments = ["az-eu", "oa-eu", "oa-us"]
"#,
        |_| None,
    )
    .expect("valid");
    let model = config.model("support-chat").expect("model");
    let caller = Constraints {
        allowed_regions: Some(vec!["eu-west".into(), "eu-north".into()]),
        required_tags: vec![],
    };
    let text = render_explanation(model, &Needs::default(), &caller);
    assert!(
        text.contains("strategy priority, 3 deployment(s)"),
        "{text}"
    );
    let az = text
        .find("1. az-eu (azure az, model mini) region eu-west")
        .expect(&text);
    let oa = text.find("2. oa-eu (openai oa").expect(&text);
    assert!(az < oa);
    assert!(text.contains("quota 300 rpm / - tpm"), "{text}");
    assert!(text.contains("USD/M in $0.165 out $0.66"), "{text}");
    assert!(text.contains("why: priority tier 0"), "{text}");
    assert!(
        text.contains("- oa-us: region us-east is not allowed (allowed: eu-west, eu-north)"),
        "{text}"
    );
}

#[test]
fn a_first_token_objective_moves_slow_deployments_last_in_their_order() {
    let health = Health::new(
        3,
        crate::config::BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            open_for: Duration::from_secs(5),
        },
    );
    let (a, b, c) = (
        dep(0, None, &[], 1),
        dep(1, None, &[], 1),
        dep(2, None, &[], 1),
    );
    let now = 1_700_000_000_000;
    for _ in 0..5 {
        health
            .of(&a)
            .observe_first_token(Duration::from_millis(400), now);
        health
            .of(&b)
            .observe_first_token(Duration::from_millis(100), now);
    }
    // `c` has no samples: not judged, keeps its place.
    let m = model(Strategy::Priority, vec![(a, 0, 1), (b, 1, 1), (c, 2, 1)]);
    let mut p = plan(&m, &Needs::default(), &Constraints::default(), None);
    assert_eq!(names(&p), ["d0", "d1", "d2"]);
    demote_slow(&mut p, &health, Duration::from_millis(200), now);
    assert_eq!(names(&p), ["d1", "d2", "d0"]);
    assert!(p.candidates[2]
        .why
        .contains("first-token p90 400 ms above the channel's 200 ms"));
    // Met exactly is met.
    let mut p = plan(&m, &Needs::default(), &Constraints::default(), None);
    demote_slow(&mut p, &health, Duration::from_millis(400), now);
    assert_eq!(names(&p), ["d0", "d1", "d2"]);
}
