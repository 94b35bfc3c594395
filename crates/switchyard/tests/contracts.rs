//! Contracts (`[contracts.NAME]`): caps that concurrent requests never pass, routing
//! that burns commitments first, contracted prices in the ledger beside list prices,
//! and the burn report.

mod common;

use common::{user, Harness, PATIENT_BREAKER};
use serde_json::{json, Value};
use sqlx::Row;
use switchyard::ledger::stats::contracts::contract_report;
use switchyard::storage::Database;
use switchyard::types::time::now_ms;

const ADMIN: &str = "sy-admin-contracts-00001";

fn with_admin(extra: &str) -> String {
    format!("[admin]\ntoken = \"{ADMIN}\"\n{extra}\n{PATIENT_BREAKER}")
}

async fn ask(h: &Harness, model: &str, text: &str) -> reqwest::Response {
    h.chat(json!({"model": model, "messages": user(text), "max_tokens": 20}))
        .await
}

fn route(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-switchyard-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `(deployment, cost, list cost, prompt + completion tokens)` of every attempt, in
/// the order the requests started.
async fn attempts(pool: &sqlx::SqlitePool) -> Vec<(String, i64, i64, i64)> {
    sqlx::query(
        "SELECT a.deployment, a.cost_nano_usd, a.list_cost_nano_usd, \
                a.prompt_tokens + a.completion_tokens AS tokens \
         FROM attempts a JOIN requests r USING (request_id) \
         ORDER BY r.started_at_ms, r.rowid, a.attempt",
    )
    .fetch_all(pool)
    .await
    .expect("attempts")
    .iter()
    .map(|r| {
        (
            r.get::<String, _>("deployment"),
            r.get::<i64, _>("cost_nano_usd"),
            r.get::<i64, _>("list_cost_nano_usd"),
            r.get::<i64, _>("tokens"),
        )
    })
    .collect()
}

#[tokio::test]
async fn a_contract_cap_is_never_passed_by_200_concurrent_requests() {
    // $0.0002 = 200,000 nano-USD: room for a few dozen small answers on the primary.
    const CAP: i64 = 200_000;
    let mut h = Harness::start_with(&with_admin(
        r#"
[contracts.primary-cap]
deployments = ["oa-mini"]
cap_usd = "0.0002"

[models.capped]
deployments = ["oa-mini", "backup-mini"]
"#,
    ))
    .await;
    let h_ref = &h;
    let answers = futures_util::future::join_all((0..200).map(|i| async move {
        let res = ask(h_ref, "capped", &format!("question number {i}")).await;
        let status = res.status().as_u16();
        (status, route(&res))
    }))
    .await;
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "every request is answered, on the backup when the cap has no room: {:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .take(3)
            .collect::<Vec<_>>()
    );
    let skipped = answers
        .iter()
        .filter(|(_, r)| r.contains("oa-mini skipped: contract primary-cap cap reached"))
        .count();
    assert!(skipped > 0, "some requests say why the primary was skipped");
    let pool = h.finish().await;
    let rows = attempts(&pool).await;
    let on_primary: Vec<_> = rows.iter().filter(|r| r.0 == "oa-mini").collect();
    let spent: i64 = on_primary.iter().map(|r| r.1).sum();
    let on_backup = rows.iter().filter(|r| r.0 == "backup-mini").count();
    println!(
        "cap {CAP} nano-USD: {spent} spent on the primary by {} requests, {on_backup} on the backup, {skipped} said why",
        on_primary.len()
    );
    assert!(spent <= CAP, "{spent} nano-USD spent under a cap of {CAP}");
    assert!(
        !on_primary.is_empty() && on_backup > 0,
        "{} on the primary, {on_backup} on the backup",
        on_primary.len()
    );
    // The cap was used, not just respected: what is left is less than one more answer.
    let dearest = on_primary.iter().map(|r| r.1).max().unwrap_or(0);
    assert!(
        CAP - spent < 3 * dearest,
        "{spent} of {CAP} spent; one answer costs up to {dearest}"
    );
    let requests: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(requests, 200);
}

#[tokio::test]
async fn a_cap_without_room_anywhere_is_a_429_naming_the_contract() {
    let h = Harness::start_with(&with_admin(
        r#"
[contracts.tiny]
deployments = ["primary-mini"]
cap_usd = "0.000001"

[models.tiny-only]
deployments = ["primary-mini"]
"#,
    ))
    .await;
    let res = ask(&h, "tiny-only", "hello").await;
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after in seconds");
    assert!(
        retry_after > 0 && retry_after <= 31 * 86_400,
        "{retry_after}"
    );
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["code"], "contract_cap_reached");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tiny")),
        "{err}"
    );
    assert!(h.sim.sim.requests("primary").is_empty(), "no call was made");
}

#[tokio::test]
async fn the_cost_strategy_burns_a_commitment_first_then_goes_by_price() {
    // az-mini lists at 0.165/0.66, above oa-mini's 0.15/0.60, but 0.00005 USD of it
    // is committed: it is free at the margin until that is spent.
    const COMMITTED: i64 = 50_000;
    const N: usize = 30;
    let mut h = Harness::start_with(&with_admin(
        r#"
[contracts.az-commit]
deployments = ["az-mini"]
commitment_usd = "0.00005"

[models.cheapest]
strategy = "cost"
deployments = ["oa-mini", "az-mini"]
"#,
    ))
    .await;
    let mut routes = Vec::new();
    for i in 0..N {
        let res = ask(&h, "cheapest", &format!("tell me something {i}")).await;
        assert_eq!(res.status(), 200);
        routes.push(route(&res));
    }
    assert!(
        routes[0].contains("free at the margin: unburned commitment of contract az-commit"),
        "{}",
        routes[0]
    );
    // While the commitment lasts the report says so.
    let report: Value = h
        .client
        .get(format!("{}/admin/contracts", h.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("report")
        .json()
        .await
        .expect("json");
    let metrics = h.scrape(ADMIN).await;
    let config = h.gateway.as_ref().expect("running").config();
    let pool = h.finish().await;
    let rows = attempts(&pool).await;
    assert_eq!(rows.len(), N);
    // Expected: az-mini serves until its spend reaches the commitment, then oa-mini
    // serves the rest (it is cheaper at list price).
    let mut burned = 0i64;
    let mut expected_on_az = 0usize;
    for r in &rows {
        if burned >= COMMITTED {
            break;
        }
        burned += r.1;
        expected_on_az += 1;
    }
    let on_az = rows.iter().filter(|r| r.0 == "az-mini").count();
    assert!(
        (2..N).contains(&expected_on_az),
        "the commitment lasts a few requests: {expected_on_az}"
    );
    assert_eq!(on_az, expected_on_az, "{rows:?}");
    assert!(rows[..on_az].iter().all(|r| r.0 == "az-mini"));
    assert!(rows[on_az..].iter().all(|r| r.0 == "oa-mini"));
    let share = on_az as f64 * 100.0 / N as f64;
    println!("commitment-first share: az-mini {share:.1}% of {N} requests ({on_az}), then oa-mini");

    // The admin API's report, taken while the gateway ran (the ledger writes in
    // batches, so it may lag what was spent, never exceed it).
    let entry = &report["data"][0];
    assert_eq!(entry["contract"], "az-commit");
    assert_eq!(entry["commitment"], "spend");
    assert_eq!(entry["committed"], COMMITTED);
    let consumed = entry["consumed"].as_i64().expect("consumed");
    assert!(consumed <= burned, "{consumed} <= {burned}");
    assert_eq!(entry["left"].as_i64(), Some((COMMITTED - consumed).max(0)));
    // The report over the flushed ledger: exactly what the attempts cost.
    let states = contract_report(
        &Database::Sqlite(h.ledger.clone()),
        &config.contract_list(),
        now_ms(),
    )
    .await
    .expect("report");
    let p = states[0].projection();
    assert_eq!(states[0].burn.spent_nano_usd, burned);
    assert_eq!(p.consumed, burned);
    assert_eq!(p.left, Some(0), "burned");
    assert_eq!(p.shortfall, Some(0));
    // The gauges: the gateway's own count of the period, and the commitment.
    let gauge = |name: &str| -> f64 {
        let prefix = format!("{name}{{contract=\"az-commit\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in {metrics}"))
    };
    assert!((gauge("switchyard_contract_spend_usd") - burned as f64 / 1e9).abs() < 1e-12);
    assert!((gauge("switchyard_contract_committed_usd") - 0.00005).abs() < 1e-12);
    assert_eq!(gauge("switchyard_contract_projected_shortfall_usd"), 0.0);
    let tokens: i64 = rows[..on_az].iter().map(|r| r.3).sum();
    assert_eq!(
        states[0].burn.tokens,
        u64::try_from(tokens).expect("tokens")
    );
}

#[tokio::test]
async fn priority_prefers_a_commitment_only_when_the_model_says_so() {
    let h = Harness::start_with(&with_admin(
        r#"
[contracts.az-commit]
deployments = ["az-mini"]
commitment_usd = "100"

[models.partner-first]
deployments = ["oa-mini", "az-mini"]
prefer_commitments = true

[models.plain-priority]
deployments = ["oa-mini", "az-mini"]
"#,
    ))
    .await;
    for _ in 0..3 {
        let res = ask(&h, "partner-first", "hi").await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["x-switchyard-deployment"],
            "az-mini",
            "{}",
            route(&res)
        );
        let res = ask(&h, "plain-priority", "hi").await;
        assert_eq!(res.headers()["x-switchyard-deployment"], "oa-mini");
    }
}

#[tokio::test]
async fn the_ledger_keeps_the_contracted_and_the_list_cost() {
    let mut h = Harness::start_with(&with_admin(
        r#"
[contracts.az-prices]
deployments = ["az-mini"]
[contracts.az-prices.prices.az-mini]
input = 0.10
output = 0.40

[contracts.ptu]
deployments = ["backup-mini"]
provisioned_usd_per_hour = 2

[models.contracted]
deployments = ["az-mini"]

[models.provisioned]
deployments = ["backup-mini"]
"#,
    ))
    .await;
    assert_eq!(ask(&h, "contracted", "price me").await.status(), 200);
    assert_eq!(ask(&h, "provisioned", "price me").await.status(), 200);
    let pool = h.finish().await;
    let rows = sqlx::query(
        "SELECT deployment, prompt_tokens, completion_tokens, cost_nano_usd, list_cost_nano_usd \
         FROM requests ORDER BY started_at_ms",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 2);
    let get = |i: usize| {
        let r = &rows[i];
        (
            r.get::<String, _>("deployment"),
            r.get::<i64, _>("prompt_tokens"),
            r.get::<i64, _>("completion_tokens"),
            r.get::<i64, _>("cost_nano_usd"),
            r.get::<i64, _>("list_cost_nano_usd"),
        )
    };
    // USD 0.10 per million is 100 nano-USD a token; the list's 0.165 is 165.
    let (d, p, c, cost, list) = get(0);
    assert_eq!(d, "az-mini");
    assert!(p > 0 && c > 0);
    assert_eq!(cost, p * 100 + c * 400);
    assert_eq!(list, p * 165 + c * 660);
    // Provisioned: nothing at the margin, the list value kept.
    let (d, p, c, cost, list) = get(1);
    assert_eq!(d, "backup-mini");
    assert_eq!(cost, 0);
    assert_eq!(list, p * 300 + c * 1_200);
}

#[tokio::test]
async fn a_restarted_gateway_reads_the_periods_burn_from_the_ledger() {
    const CONTRACT: &str = r#"
[contracts.primary-cap]
deployments = ["oa-mini"]
cap_usd = "0.00005"

[models.capped]
deployments = ["oa-mini", "backup-mini"]
"#;
    let mut first = Harness::start_with(&with_admin(CONTRACT)).await;
    // Sequential requests until the primary's cap turns one away.
    let mut served_by_primary = 0;
    for i in 0..50 {
        let res = ask(&first, "capped", &format!("fill the cap {i}")).await;
        assert_eq!(res.status(), 200);
        if route(&res).contains("cap reached") {
            break;
        }
        served_by_primary += 1;
    }
    assert!(
        (1..50).contains(&served_by_primary),
        "{served_by_primary} requests before the cap"
    );
    first.finish().await;
    let old_ledger = first.ledger.display().to_string();
    // The same ledger, a new process: the cap is still spent.
    let second = Harness::start_edited(
        |_| with_admin(CONTRACT),
        0,
        |text| {
            text.lines()
                .map(|l| {
                    if l.starts_with("path = ") && l.ends_with("ledger.db\"") {
                        format!("path = \"{old_ledger}\"")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
    .await;
    let res = ask(&second, "capped", "after the restart").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "backup-mini");
    assert!(route(&res).contains("oa-mini skipped: contract primary-cap cap reached"));
}
