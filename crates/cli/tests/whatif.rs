//! `switchyard whatif`: the real binary against a ledger file written with known rows,
//! its JSON checked against figures computed here by hand, and its refusals of bad
//! input.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use switchyard::ledger::{AttemptRecord, Ledger, LedgerOptions, ReplayFacts, RequestRecord};
use switchyard::types::Usage;

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard")
}

/// 2026-11-02T00:00:00Z, unix ms.
const DAY: i64 = 1_793_577_600_000;

/// One answered request served by `deployment` in one call.
fn served(
    i: usize,
    deployment: &str,
    team: Option<&str>,
    (prompt, completion): (u64, u64),
    cost: i64,
    latency_ms: i64,
    regions: Option<&str>,
) -> RequestRecord {
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        ..Usage::default()
    };
    RequestRecord {
        request_id: format!("req_{i:04}"),
        started_at_ms: DAY + i64::try_from(i).expect("small") * 1000,
        key_id: Some("cfg:app".into()),
        key_name: Some("app".into()),
        endpoint: "chat.completions",
        logical_model: Some("chat".into()),
        deployment: Some(deployment.into()),
        provider: Some(format!("{deployment}-provider")),
        upstream_model: Some("m".into()),
        status: 200,
        usage,
        cost_nano_usd: cost,
        list_cost_nano_usd: cost,
        latency_us: latency_ms * 1000,
        attempts: vec![AttemptRecord {
            attempt: 1,
            started_at_ms: DAY + i64::try_from(i).expect("small") * 1000,
            deployment: deployment.into(),
            provider: format!("{deployment}-provider"),
            upstream_model: "m".into(),
            status: Some(200),
            usage,
            cost_nano_usd: cost,
            list_cost_nano_usd: cost,
            latency_us: latency_ms * 1000,
            provider_kind: "openai",
            ..AttemptRecord::default()
        }],
        team_id: team.map(str::to_owned),
        policy_decision: Some("allowed".into()),
        replay: Some(ReplayFacts {
            needs: String::new(),
            max_tokens: None,
            allowed_regions: regions.map(str::to_owned),
            required_tags: "[]".into(),
        }),
        ..RequestRecord::default()
    }
}

/// Ten requests: six served by `a` (1000 and 2000 nano-USD per token), four by `b`
/// (500 and 1000), of two teams; two of `b`'s callers may use `us-east` only. Latencies
/// 10..=60 ms on `a`, 100..=400 ms on `b`.
async fn write_ledger(path: &Path) -> (i64, Vec<(u64, u64, &'static str, bool)>) {
    let ledger = Ledger::open(LedgerOptions::new(path))
        .await
        .expect("open ledger");
    let sink = ledger.sink();
    let mut total = 0;
    let mut rows = Vec::new();
    for i in 0..10 {
        let prompt = 100 + 10 * i as u64;
        let completion = 20 + i as u64;
        let (deployment, cost, latency) = if i < 6 {
            ("a", prompt * 1000 + completion * 2000, 10 * (i as i64 + 1))
        } else {
            ("b", prompt * 500 + completion * 1000, 100 * (i as i64 - 5))
        };
        let cost = i64::try_from(cost).expect("small");
        let team = if i % 2 == 0 {
            Some("red")
        } else {
            Some("blue")
        };
        let us_only = i >= 8;
        let regions = us_only.then_some(r#"["us-east"]"#);
        sink.submit(served(
            i,
            deployment,
            team,
            (prompt, completion),
            cost,
            latency,
            regions,
        ))
        .await;
        total += cost;
        rows.push((prompt, completion, deployment, us_only));
    }
    ledger.shutdown().await.expect("flush");
    (total, rows)
}

const ALT: &str = r#"
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-never-called"

[deployments.b]
provider = "p"
model = "m"
region = "eu-west"
price = { input = 0.25, output = 0.50 }

[models.chat]
deployments = ["b"]
"#;

#[tokio::test]
async fn whatif_prints_the_replayed_figures_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ledger.db");
    let (recorded, rows) = write_ledger(&db).await;
    let alt = dir.path().join("alt.toml");
    std::fs::write(&alt, ALT).expect("write alt");

    let out = switchyard(&[
        "whatif",
        "--config",
        alt.to_str().expect("utf-8"),
        "--ledger",
        db.to_str().expect("utf-8"),
        "--json",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");

    // Under the other configuration only `b` (in eu-west, at 250 and 500 nano-USD per
    // token) serves; the two us-east-only requests have no eligible deployment.
    let whatif: u64 = rows
        .iter()
        .filter(|r| !r.3)
        .map(|(p, c, _, _)| p * 250 + c * 500)
        .sum();
    let whatif = i64::try_from(whatif).expect("small");
    assert_eq!(json["requests"]["in_range"], 10);
    assert_eq!(json["requests"]["replayed"], 10);
    assert_eq!(json["requests"]["whatif_routed"], 8);
    assert_eq!(json["requests"]["whatif_no_eligible"], 2);
    assert_eq!(json["cost"]["actual"]["list_nano_usd"], recorded);
    assert_eq!(json["cost"]["whatif"]["list_nano_usd"], whatif);
    assert_eq!(json["cost"]["whatif"]["effective_nano_usd"], whatif);
    // Like for like: the two requests the other configuration cannot serve are left
    // out of the saving (their actual cost is reported apart).
    let unserved: u64 = rows
        .iter()
        .filter(|r| r.3)
        .map(|(p, c, _, _)| p * 500 + c * 1000)
        .sum();
    let unserved = i64::try_from(unserved).expect("small");
    assert_eq!(json["cost"]["unserved"]["list_nano_usd"], unserved);
    assert_eq!(
        json["cost"]["saving"]["list_nano_usd"],
        recorded - unserved - whatif
    );
    assert_eq!(json["seed"], 3);
    let no_eligible = &json["no_eligible"][0];
    assert_eq!(no_eligible["requests"], 2);
    assert_eq!(
        no_eligible["reason"],
        "b: region eu-west is not allowed (allowed: us-east)"
    );

    let deployments = json["deployments"].as_array().expect("array");
    let by_name = |n: &str| {
        deployments
            .iter()
            .find(|d| d["deployment"] == n)
            .unwrap_or_else(|| panic!("{n} in {deployments:?}"))
    };
    let a = by_name("a");
    assert_eq!(a["actual_requests"], 6);
    assert_eq!(a["actual_share_percent"], 60.0);
    assert_eq!(a["whatif_requests"], 0);
    assert_eq!(a["configured"], false);
    let b = by_name("b");
    assert_eq!(b["actual_requests"], 4);
    assert_eq!(b["whatif_requests"], 8);
    assert_eq!(b["whatif_share_percent"], 100.0);
    // b's observed calls: 100, 200, 300, 400 ms; nearest-rank p50 200 ms, p99 400 ms.
    assert_eq!(b["history_samples"], 4);
    assert_eq!(b["history_latency_us"]["p50"], 200_000);
    assert_eq!(b["history_latency_us"]["p99"], 400_000);
    // Every replayed latency is one of b's observed ones.
    let est = &b["estimated_latency_us"];
    for p in ["p50", "p99"] {
        let v = est[p].as_i64().expect("drawn");
        assert!([100_000, 200_000, 300_000, 400_000].contains(&v), "{v}");
    }
    // The actual overall latency over the ten requests: p50 is the 5th (50 ms).
    assert_eq!(json["latency_us"]["actual"]["p50"], 50_000);
    assert_eq!(json["latency_us"]["actual"]["p99"], 400_000);

    // Per team: red are the even requests.
    let teams = json["teams"].as_array().expect("array");
    let red = teams.iter().find(|t| t["team"] == "red").expect("red");
    let red_whatif: u64 = rows
        .iter()
        .enumerate()
        .filter(|(i, r)| i % 2 == 0 && !r.3)
        .map(|(_, (p, c, _, _))| p * 250 + c * 500)
        .sum();
    assert_eq!(red["whatif"]["list_nano_usd"], red_whatif);
    assert_eq!(red["requests"], 5);

    // The same seed prints the same bytes; the table names the same figures.
    let again = switchyard(&[
        "whatif",
        "--config",
        alt.to_str().expect("utf-8"),
        "--ledger",
        db.to_str().expect("utf-8"),
        "--json",
        "--seed",
        "3",
    ]);
    assert_eq!(again.stdout, out.stdout);
    let table = switchyard(&[
        "whatif",
        "--config",
        alt.to_str().expect("utf-8"),
        "--ledger",
        db.to_str().expect("utf-8"),
    ]);
    assert!(table.status.success(), "{table:?}");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("no eligible deployment (2 requests)"),
        "{text}"
    );
    assert!(
        text.contains(&switchyard::types::money::format_usd(whatif)),
        "{text}"
    );

    // A range that holds nothing replays nothing.
    let none = switchyard(&[
        "whatif",
        "--config",
        alt.to_str().expect("utf-8"),
        "--ledger",
        db.to_str().expect("utf-8"),
        "--json",
        "--since",
        "2026-11-03",
    ]);
    assert!(none.status.success(), "{none:?}");
    let json: Value = serde_json::from_slice(&none.stdout).expect("json");
    assert_eq!(json["requests"]["in_range"], 0);
}

#[tokio::test]
async fn whatif_refuses_bad_input_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ledger.db");
    write_ledger(&db).await;
    let db = db.to_str().expect("utf-8");
    let alt = dir.path().join("alt.toml");
    std::fs::write(&alt, ALT).expect("write alt");
    let alt = alt.to_str().expect("utf-8");

    // A configuration that fails validation: its problem, and exit code 2.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, ALT.replace("provider = \"p\"", "provider = \"nope\""))
        .expect("write bad");
    let out = switchyard(&[
        "whatif",
        "--config",
        bad.to_str().expect("utf-8"),
        "--ledger",
        db,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
    assert!(stderr.contains("deployments.b.provider"), "{stderr}");
    assert!(out.stdout.is_empty());

    // A date that is not one.
    let out = switchyard(&[
        "whatif",
        "--config",
        alt,
        "--ledger",
        db,
        "--since",
        "yesterday",
    ]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--since") && stderr.contains("yesterday"),
        "{stderr}"
    );

    // A ledger that does not exist.
    let missing = dir.path().join("none.db");
    let out = switchyard(&[
        "whatif",
        "--config",
        alt,
        "--ledger",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger at"));
}
