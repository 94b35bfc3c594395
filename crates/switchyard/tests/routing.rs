//! Orchestration and resilience end to end: strategies, constraints, capacity,
//! breakers, retries and hedging, scripted through the simulator's fault injection.
//! Assertions count requests (at the simulator, in the ledger), never wall-clock time.
//! The latency strategy's loop (measure, then order by it) is tested beside dispatch,
//! under a paused clock, because here the measurements would be real time.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{user, Harness};
use serde_json::{json, Value};
use switchyard_sim::{Fault, Latency};

/// Deployments on the simulator's instances, with regions, tags, quotas and prices.
const CATALOG: &str = r#"
[deployments.eu-primary]
provider = "oa-primary"
model = "gpt-4o-mini"
region = "eu-west"
data_tags = ["eu", "zero-retention"]
price = { input = 0.30, output = 1.20 }

[deployments.eu-backup]
provider = "oa-backup"
model = "gpt-4o-mini"
region = "eu-north"
data_tags = ["eu", "zero-retention"]
price = { input = 0.20, output = 0.80 }

[deployments.us-cheap]
provider = "oa"
model = "gpt-4o-mini"
region = "us-east"
price = { input = 0.05, output = 0.20 }
capabilities = { tools = false, vision = false }

[deployments.eu-limited]
provider = "oa-primary"
model = "gpt-4o-mini"
region = "eu-west"
quota = { rpm = 5 }
price = { input = 0.30, output = 1.20 }

[models.support-chat]
strategy = "priority"
deployments = ["eu-primary", "eu-backup", "us-cheap"]
allowed_regions = ["eu-west", "eu-north"]

[models.overflow]
deployments = ["eu-limited", "eu-backup"]

[models.split]
strategy = "weighted"
deployments = [{ name = "eu-primary", weight = 70 }, { name = "eu-backup", weight = 30 }]

[models.fastest]
strategy = "latency"
deployments = ["eu-primary", "eu-backup"]

[models.cheapest]
strategy = "cost"
deployments = ["eu-primary", "eu-backup", "us-cheap"]

[models.both-down]
deployments = ["eu-primary", "eu-backup"]
retry = { max_attempts = 3, base_backoff_ms = 10, max_backoff_ms = 50 }

[models.hedged]
deployments = ["eu-primary", "eu-backup"]
hedge_after_ms = 100

[models.text-only]
deployments = ["us-cheap"]
"#;

fn breaker(consecutive: u32, open_ms: u64) -> String {
    format!("{CATALOG}\n[breaker]\nconsecutive_failures = {consecutive}\nopen_ms = {open_ms}\n")
}

async fn served_by(h: &Harness, model: &str) -> (u16, String) {
    let res = h
        .chat(json!({"model": model, "messages": user("hello")}))
        .await;
    let status = res.status().as_u16();
    let deployment = res
        .headers()
        .get("x-switchyard-deployment")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let _ = res.bytes().await;
    (status, deployment)
}

#[tokio::test]
async fn primary_down_every_request_served_by_the_fallback() {
    let h = Harness::start_with(&breaker(5, 60_000)).await;
    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    for i in 0..30 {
        let (status, deployment) = served_by(&h, "support-chat").await;
        assert_eq!(status, 200, "request {i}");
        assert_eq!(deployment, "eu-backup", "request {i}");
    }
    // The breaker opened after 5 failures: the primary was not called 30 times.
    assert_eq!(h.sim.sim.requests("primary").len(), 5);
    // The US deployment is outside the model's regions: never used.
    assert!(h.sim.sim.requests("").is_empty());
}

#[tokio::test]
async fn primary_429_overflows_without_client_429s() {
    let h = Harness::start_with(&breaker(50, 60_000)).await;
    h.sim
        .sim
        .set_fault("primary", "*", Fault::error(429).retry_after(30));
    for i in 0..20 {
        let (status, deployment) = served_by(&h, "support-chat").await;
        assert_eq!(status, 200, "request {i}");
        assert_eq!(deployment, "eu-backup");
    }
    // The 429's retry-after marked the primary out of capacity: asked once only.
    assert_eq!(h.sim.sim.requests("primary").len(), 1);
}

#[tokio::test]
async fn quota_spills_over_before_the_provider_says_429() {
    let h = Harness::start_with(CATALOG).await;
    let mut by: HashMap<String, u32> = HashMap::new();
    for _ in 0..12 {
        let (status, deployment) = served_by(&h, "overflow").await;
        assert_eq!(status, 200);
        *by.entry(deployment).or_default() += 1;
    }
    // rpm = 5 on eu-limited: five go there, the rest spill over, no 429 anywhere.
    assert_eq!(by.get("eu-limited"), Some(&5));
    assert_eq!(by.get("eu-backup"), Some(&7));
    assert_eq!(h.sim.sim.requests("primary").len(), 5);
}

#[tokio::test]
async fn flapping_deployment_opens_probes_and_recovers() {
    let h = Harness::start_with(&breaker(3, 300)).await;
    let sim = &h.sim.sim;
    sim.set_fault("primary", "*", Fault::error(503));
    for _ in 0..10 {
        assert_eq!(
            served_by(&h, "support-chat").await,
            (200, "eu-backup".into())
        );
    }
    assert_eq!(sim.requests("primary").len(), 3, "open after 3 failures");

    // Still failing after the open period: one half-open probe, then open again.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    for _ in 0..5 {
        assert_eq!(served_by(&h, "support-chat").await.0, 200);
    }
    assert_eq!(sim.requests("primary").len(), 4, "exactly one probe");

    // Recovered: the next probe succeeds and the breaker closes.
    sim.clear_faults();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    for _ in 0..5 {
        assert_eq!(
            served_by(&h, "support-chat").await,
            (200, "eu-primary".into())
        );
    }
    assert_eq!(sim.requests("primary").len(), 9);
}

#[tokio::test]
async fn every_deployment_down_fails_once_clearly_without_a_retry_storm() {
    let mut h = Harness::start_with(&breaker(3, 60_000)).await;
    let sim = &h.sim.sim;
    sim.set_fault("primary", "*", Fault::error(500));
    sim.set_fault("backup", "*", Fault::error(500));
    let res = h
        .chat(json!({"model": "both-down", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_error");
    // max_attempts = 3: primary, backup, then one more round.
    let calls = sim.requests("primary").len() + sim.requests("backup").len();
    assert_eq!(calls, 3);
    // A second request opens both breakers; after that no upstream is called.
    let _ = h
        .chat(json!({"model": "both-down", "messages": user("hi")}))
        .await;
    let res = h
        .chat(json!({"model": "both-down", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_healthy_deployment");
    let calls_after = sim.requests("primary").len() + sim.requests("backup").len();
    assert_eq!(calls_after, 6, "the third request made no upstream call");
    let db = h.finish().await;
    let attempts: Vec<i64> =
        sqlx::query_scalar("SELECT attempt_count FROM requests ORDER BY started_at_ms")
            .fetch_all(&db)
            .await
            .expect("rows");
    assert_eq!(attempts, vec![3, 3, 0]);
}

#[tokio::test]
async fn weighted_split_holds_within_five_points() {
    let h = std::sync::Arc::new(Harness::start_with(CATALOG).await);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                let (status, _) = served_by(&h, "split").await;
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let primary = h.sim.sim.requests("primary").len() as f64;
    let backup = h.sim.sim.requests("backup").len() as f64;
    assert_eq!(primary + backup, 2_000.0);
    let share = primary / 2_000.0;
    assert!((0.65..=0.75).contains(&share), "primary share {share}");
}

#[tokio::test]
async fn cost_strategy_picks_the_cheapest_eligible() {
    let h = Harness::start_with(CATALOG).await;
    assert_eq!(served_by(&h, "cheapest").await, (200, "us-cheap".into()));
    // With tools, the cheapest cannot serve; the next cheapest does.
    let res = h
        .chat(json!({
            "model": "cheapest",
            "messages": user("hi"),
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        }))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "eu-backup");
    let route = res.headers()["x-switchyard-route"].to_str().expect("ascii");
    assert!(route.starts_with("cost est."), "{route}");
}

#[tokio::test]
async fn no_eligible_deployment_names_the_constraint() {
    let h = Harness::start_with(CATALOG).await;
    let res = h
        .chat(json!({
            "model": "text-only",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
            ]}]
        }))
        .await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_eligible_deployment");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("us-cheap: does not accept images"),
        "{message}"
    );
    assert!(h.sim.sim.requests("").is_empty());
}

#[tokio::test]
async fn region_constraint_holds_when_the_region_is_down() {
    let h = Harness::start_with(&breaker(1000, 60_000)).await;
    let sim = &h.sim.sim;
    sim.set_fault("primary", "*", Fault::error(500));
    sim.set_fault("backup", "*", Fault::error(500));
    for _ in 0..10 {
        let (status, _) = served_by(&h, "support-chat").await;
        assert_eq!(
            status, 502,
            "an outage in the allowed regions is an error, not a move to the US"
        );
    }
    assert!(
        sim.requests("").is_empty(),
        "the US deployment was never called"
    );
}

#[tokio::test]
async fn hedged_request_takes_the_first_answer_and_records_the_loser() {
    let mut h = Harness::start_with(CATALOG).await;
    h.sim.sim.set_latency(
        "primary",
        "*",
        Latency {
            ttft_ms: 1_500,
            chunk_delay_ms: 0,
            chunks: None,
        },
    );
    let res = h
        .chat(json!({"model": "hedged", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "eu-backup");
    assert_eq!(res.headers()["x-switchyard-attempts"], "2");
    let _ = res.bytes().await;
    let db = h.finish().await;
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT deployment, error_class, usage_estimated FROM attempts ORDER BY attempt",
    )
    .fetch_all(&db)
    .await
    .expect("attempts");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, "eu-primary");
    assert_eq!(rows[0].1.as_deref(), Some("hedge_lost"));
    assert_eq!(rows[0].2, 1, "the loser's usage is an estimate");
    assert_eq!(rows[1].0, "eu-backup");
    assert_eq!(rows[1].1, None);
}

#[tokio::test]
async fn route_header_says_why() {
    let h = Harness::start_with(&breaker(1000, 60_000)).await;
    let res = h
        .chat(json!({"model": "support-chat", "messages": user("hi")}))
        .await;
    assert_eq!(res.headers()["x-switchyard-route"], "priority tier 0");
    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    let res = h
        .chat(json!({"model": "support-chat", "messages": user("hi")}))
        .await;
    assert_eq!(
        res.headers()["x-switchyard-route"],
        "priority tier 1; after eu-primary upstream_5xx"
    );
}

#[tokio::test]
async fn stream_cut_before_its_first_event_fails_over_invisibly() {
    let mut h = Harness::start_with(&breaker(1000, 60_000)).await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(0));
    let res = h
        .chat(json!({"model": "support-chat", "messages": user("hi"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "eu-backup");
    let text = res.text().await.expect("body");
    let data = common::sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !data.iter().any(|d| d.contains("\"error\"")),
        "the client saw nothing of the failed attempt"
    );
    assert_eq!(h.sim.sim.requests("primary").len(), 1);
    let db = h.finish().await;
    let classes: Vec<Option<String>> =
        sqlx::query_scalar("SELECT error_class FROM attempts ORDER BY attempt")
            .fetch_all(&db)
            .await
            .expect("attempts");
    assert_eq!(classes.len(), 2);
    assert!(
        classes[0].is_some(),
        "the cut attempt is recorded as failed"
    );
    assert_eq!(classes[1], None);
}

/// A second catalog entry for the chaos tests: an Anthropic deployment in front of the
/// OpenAI fallback, and a hedged model that can hedge onto that fallback.
fn chaos(sim: &str, breaker: &str) -> String {
    format!(
        r#"{CATALOG}
[providers.ant]
kind = "anthropic"
base_url = "{sim}/ant"
api_key = "sk-ant-upstream-secret"

[deployments.ant-haiku]
provider = "ant"
model = "claude-haiku-4-5"
price = {{ input = 1.0, output = 5.0 }}

[models.ant-first]
deployments = ["ant-haiku", "eu-backup"]

[models.hedged-slowly]
deployments = ["eu-primary", "eu-backup"]
hedge_after_ms = 500

{breaker}
"#
    )
}

#[tokio::test]
async fn chaos_hedging_with_a_fast_failing_primary_is_served_by_the_fallback() {
    let mut h = Harness::start_with_sim(|sim| chaos(sim, common::PATIENT_BREAKER)).await;
    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    for i in 0..5 {
        assert_eq!(
            served_by(&h, "hedged-slowly").await,
            (200, "eu-backup".into()),
            "request {i}"
        );
    }
    // Each request called the primary once, failed fast, and went to the fallback
    // without waiting for the hedge delay or calling the primary again.
    assert_eq!(h.sim.sim.requests("primary").len(), 5);
    assert_eq!(h.sim.sim.requests("backup").len(), 5);
    let db = h.finish().await;
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT deployment, error_class FROM attempts ORDER BY request_id, attempt")
            .fetch_all(&db)
            .await
            .expect("attempts");
    assert_eq!(rows.len(), 10);
    for pair in rows.chunks(2) {
        assert_eq!(pair[0], ("eu-primary".into(), Some("upstream_5xx".into())));
        assert_eq!(pair[1], ("eu-backup".into(), None));
    }
}

#[tokio::test]
async fn chaos_a_probe_cancelled_by_its_client_does_not_keep_the_breaker_open() {
    const OPEN_MS: u64 = 300;
    let h = std::sync::Arc::new(
        Harness::start_with_sim(|sim| {
            chaos(
                sim,
                &format!("[breaker]\nconsecutive_failures = 1\nopen_ms = {OPEN_MS}\n"),
            )
        })
        .await,
    );
    let sim = &h.sim.sim;
    sim.set_fault("primary", "*", Fault::error(500));
    assert_eq!(
        served_by(&h, "support-chat").await,
        (200, "eu-backup".into())
    );
    assert_eq!(sim.requests("primary").len(), 1, "one failure opened it");

    // After the open period the next request is the probe; the primary is slow now.
    tokio::time::sleep(Duration::from_millis(OPEN_MS + 100)).await;
    sim.clear_faults();
    sim.set_latency(
        "primary",
        "*",
        Latency {
            ttft_ms: 30_000,
            chunk_delay_ms: 0,
            chunks: None,
        },
    );
    let client = {
        let h = h.clone();
        tokio::spawn(async move { served_by(&h, "support-chat").await })
    };
    let mut probed = false;
    for _ in 0..500 {
        if sim.requests("primary").len() == 2 {
            probed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(probed, "the probe reached the primary");
    // The client hangs up while the probe is in flight; then the fault is cleared.
    client.abort();
    assert!(client.await.is_err_and(|e| e.is_cancelled()));
    sim.clear();

    // Bounded polling over two open periods: the primary must serve again.
    let polls = 20;
    let mut served_by_primary = None;
    for i in 0..polls {
        let (status, deployment) = served_by(&h, "support-chat").await;
        assert_eq!(status, 200, "poll {i}");
        if deployment == "eu-primary" {
            served_by_primary = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2 * OPEN_MS / polls)).await;
    }
    assert!(
        served_by_primary.is_some(),
        "the primary never served again after the cancelled probe"
    );
    // Closed again: the primary takes the traffic.
    for _ in 0..3 {
        assert_eq!(
            served_by(&h, "support-chat").await,
            (200, "eu-primary".into())
        );
    }
}

#[tokio::test]
async fn a_stream_whose_first_event_is_an_error_fails_over_invisibly() {
    let mut h = Harness::start_with_sim(|sim| chaos(sim, common::PATIENT_BREAKER)).await;
    h.sim.sim.set_fault(
        "ant",
        "*",
        Fault::error(529)
            .with_type("overloaded_error")
            .mid_stream(0),
    );
    let res = h
        .chat(json!({"model": "ant-first", "messages": user("hi"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "eu-backup");
    let text = res.text().await.expect("body");
    let data = common::sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !data.iter().any(|d| d.contains("\"error\"")),
        "the client saw nothing of the failed attempt: {data:?}"
    );
    assert_eq!(h.sim.sim.requests("ant").len(), 1);
    let db = h.finish().await;
    let rows: Vec<(String, Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT deployment, status, error_class FROM attempts ORDER BY attempt")
            .fetch_all(&db)
            .await
            .expect("attempts");
    assert_eq!(
        rows,
        vec![
            ("ant-haiku".into(), Some(200), Some("overloaded".into())),
            ("eu-backup".into(), Some(200), None),
        ],
        "the failed attempt is recorded with its failure class"
    );
}

/// What a what-if replay needs of each request is in the ledger: the capabilities
/// routing required, the output bound, the caller's data policy; never content.
#[tokio::test]
async fn the_ledger_keeps_what_routing_was_given() {
    const EU_KEY: &str = "sy-eu-replay-key-0123456";
    let extra = format!(
        "{CATALOG}\n[[keys]]\nname = \"eu\"\nkey = \"{EU_KEY}\"\npolicy = {{ allowed_regions = [\"eu-west\", \"eu-north\"], required_tags = [\"zero-retention\"] }}\n"
    );
    let mut h = Harness::start_with(&extra).await;
    let tools = json!([{"type": "function", "function": {"name": "timetable",
        "parameters": {"type": "object", "properties": {}}}}]);
    let schema = json!({"type": "json_schema", "json_schema": {"name": "answer",
        "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}});
    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(EU_KEY)
        .json(
            &json!({"model": "split", "messages": user("hello"), "tools": tools,
                      "response_format": schema, "max_tokens": 77}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let _ = res.bytes().await;
    let res = h
        .chat(json!({"model": "split", "messages": user("hello")}))
        .await;
    assert_eq!(res.status(), 200);
    let _ = res.bytes().await;
    // Refused before routing: nothing to replay.
    let res = h
        .chat(json!({"model": "no-such-model", "messages": user("hello")}))
        .await;
    assert_eq!(res.status(), 404);
    let db = h.finish().await;
    type Row = (
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<String>,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT needs, max_tokens, allowed_regions, required_tags, status \
         FROM requests ORDER BY started_at_ms, rowid",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        vec![
            (
                Some("tools,json_schema".to_owned()),
                Some(77),
                Some(r#"["eu-west","eu-north"]"#.to_owned()),
                Some(r#"["zero-retention"]"#.to_owned()),
                200
            ),
            (Some(String::new()), None, None, Some("[]".to_owned()), 200),
            (None, None, None, None, 404),
        ]
    );
}
