//! Shadow evaluation (`[models.NAME.shadow]`): mirrored calls that never touch the
//! client, go only where the caller's data may go, stay within their daily budget,
//! count in no caller's budget, and the report that sets the two sides side by side.

mod common;

use std::time::Duration;

use common::{user, Harness, KEY, PATIENT_BREAKER};
use serde_json::{json, Value};
use sqlx::Row;
use switchyard::ledger::{SpendReader, SpentBy};
use switchyard::storage::Database;
use switchyard_sim::{Fault, Latency};

const ADMIN: &str = "sy-admin-shadow-0000001";
const EU_KEY: &str = "sy-eu-only-key-0123456789";

fn config(budget: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

[[keys]]
name = "eu"
key = "{EU_KEY}"
policy = {{ allowed_regions = ["eu-west"] }}

[deployments.eu-mini]
provider = "oa"
model = "gpt-4o-mini"
region = "eu-west"
price = {{ input = 0.15, output = 0.60 }}

[deployments.us-candidate]
provider = "oa-backup"
model = "gpt-4o-mini"
region = "us-east"
price = {{ input = 0.30, output = 1.20 }}

[models.shadowed]
deployments = ["eu-mini"]

[models.shadowed.shadow]
deployment = "us-candidate"
sample_rate = 1.0
budget_usd = "{budget}"
{PATIENT_BREAKER}"#
    )
}

async fn ask_as(h: &Harness, key: &str, text: &str) -> reqwest::Response {
    h.client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(key)
        .json(&json!({"model": "shadowed", "messages": user(text), "max_tokens": 20}))
        .send()
        .await
        .expect("send")
}

/// `GET /admin/shadow?model=shadowed`, polled until the candidate side has `n`
/// requests (the mirrors run after the clients' answers, and the ledger writes in
/// batches): bounded, never a fixed sleep.
async fn report_with(h: &Harness, n: u64) -> Value {
    report_when(h, |r| r["candidate"]["requests"].as_u64() == Some(n)).await
}

/// The report once it shows `n` mirrored requests and `calls` embeddings calls. Under
/// load the embeddings rows were seen to lag their pairs' rows by one poll (2 runs in
/// 12 with both cores busy): the wait tolerates that, and still fails if a call is
/// never recorded.
async fn report_with_calls(h: &Harness, n: u64, calls: u64) -> Value {
    report_when(h, |r| {
        r["candidate"]["requests"].as_u64() == Some(n)
            && r["similarity_calls"].as_u64() == Some(calls)
    })
    .await
}

async fn report_when(h: &Harness, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = h
            .client
            .get(format!("{}/admin/shadow?model=shadowed", h.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("report")
            .json()
            .await
            .expect("json");
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the shadow report never showed what was awaited: {last}");
}

#[tokio::test]
async fn a_candidate_that_fails_every_call_costs_the_client_nothing() {
    let h = Harness::start_with(&config("1")).await;
    h.sim.sim.set_fault("backup", "*", Fault::error(500));
    for i in 0..30 {
        let res = ask_as(&h, KEY, &format!("question {i}")).await;
        assert_eq!(
            res.status(),
            200,
            "the client never sees the candidate's failure"
        );
        assert_eq!(res.headers()["x-switchyard-deployment"], "eu-mini");
    }
    let report = report_with(&h, 30).await;
    assert_eq!(report["primary"]["requests"], 30);
    assert_eq!(report["primary"]["error_rate"], 0.0);
    assert_eq!(report["candidate"]["errors"], 30);
    assert_eq!(report["candidate"]["error_rate"], 1.0);
    assert_eq!(report["compared"], 0, "no answer to compare");
    assert_eq!(
        h.sim.sim.requests("backup").len(),
        30,
        "one call each, no retry"
    );
}

#[tokio::test]
async fn the_mirror_starts_after_the_clients_answer_and_the_answers_are_compared() {
    let mut h = Harness::start_with(&config("1")).await;
    // The candidate takes 1.5 s to answer: a client that waited for it would show it.
    h.sim.sim.set_latency(
        "backup",
        "*",
        Latency {
            ttft_ms: 1_500,
            ..Latency::default()
        },
    );
    for i in 0..5 {
        assert_eq!(
            ask_as(&h, KEY, &format!("compare me {i}")).await.status(),
            200
        );
    }
    let report = report_with(&h, 5).await;
    // The same upstream model answers the same prompt the same way.
    assert_eq!(report["compared"], 5);
    assert_eq!(report["agreement_rate"], 1.0);
    assert_eq!(
        report["candidate"]["deployments"][0]["deployment"],
        "us-candidate"
    );
    let pool = h.finish().await;
    let rows = sqlx::query(
        "SELECT s.started_at_ms AS mirror_start, s.latency_us AS mirror_latency, \
                p.latency_us AS client_latency, a.started_at_ms AS call_start, \
                a.latency_us AS call_latency, s.key_id AS mirror_key, p.key_id AS client_key \
         FROM requests s JOIN requests p ON p.request_id = s.shadow_of \
         JOIN attempts a ON a.request_id = p.request_id \
         WHERE s.kind = 'shadow'",
    )
    .fetch_all(&pool)
    .await
    .expect("pairs");
    assert_eq!(rows.len(), 5);
    for r in &rows {
        let mirror_latency: i64 = r.get("mirror_latency");
        let client_latency: i64 = r.get("client_latency");
        assert!(mirror_latency >= 1_500_000, "{mirror_latency}");
        assert!(
            client_latency < mirror_latency,
            "the client's {client_latency} µs did not include the mirror's {mirror_latency} µs"
        );
        // The mirror began once the client's upstream call had answered.
        let call_end_ms: i64 =
            r.get::<i64, _>("call_start") + r.get::<i64, _>("call_latency") / 1000;
        assert!(r.get::<i64, _>("mirror_start") >= call_end_ms);
        assert_eq!(
            r.get::<Option<String>, _>("mirror_key"),
            r.get::<Option<String>, _>("client_key")
        );
    }
    // Shadow rows count in no budget: the key's spend is its own requests'.
    let own: i64 = sqlx::query_scalar("SELECT SUM(cost_nano_usd) FROM requests WHERE kind IS NULL")
        .fetch_one(&pool)
        .await
        .expect("own");
    let shadow: i64 =
        sqlx::query_scalar("SELECT SUM(cost_nano_usd) FROM requests WHERE kind = 'shadow'")
            .fetch_one(&pool)
            .await
            .expect("shadow");
    assert!(shadow > 0);
    let key: String = rows[0].get("client_key");
    let mut reader = SpendReader::open(Database::Sqlite(h.ledger.clone()))
        .await
        .expect("reader");
    assert_eq!(
        reader
            .spent_since(SpentBy::Key(&key), 0)
            .await
            .expect("spent"),
        own
    );
}

#[tokio::test]
async fn a_caller_whose_data_may_not_go_to_the_candidate_is_not_mirrored() {
    let h = Harness::start_with(&config("1")).await;
    for i in 0..3 {
        assert_eq!(
            ask_as(&h, EU_KEY, &format!("eu only {i}")).await.status(),
            200
        );
    }
    assert_eq!(ask_as(&h, KEY, "anywhere").await.status(), 200);
    let report = report_with(&h, 1).await;
    assert_eq!(report["primary"]["requests"], 1);
    assert_eq!(
        h.sim.sim.requests("backup").len(),
        1,
        "only the unconstrained caller's"
    );
}

#[tokio::test]
async fn the_daily_shadow_budget_is_never_passed() {
    // $0.00004 = 40,000 nano-USD a day: room for a couple of mirrors (one costs about
    // 20,000 at the candidate's 0.30/1.20 per million), not for ten.
    const BUDGET: i64 = 40_000;
    let h = Harness::start_with(&config("0.00004")).await;
    for i in 0..10 {
        assert_eq!(ask_as(&h, KEY, &format!("budget {i}")).await.status(), 200);
    }
    // Whether to mirror is decided before each client's answer returns; wait until
    // the report shows what the candidate received.
    let mirrored = h.sim.sim.requests("backup").len() as u64;
    let report = report_with(&h, mirrored).await;
    assert!((1..10).contains(&mirrored), "{mirrored} of 10 mirrored");
    let spent = report["candidate"]["cost_nano_usd"].as_i64().expect("cost");
    println!("shadow budget {BUDGET} nano-USD: {mirrored} of 10 mirrored, {spent} spent");
    assert!(spent <= BUDGET, "{spent} > {BUDGET}");
}

#[tokio::test]
async fn the_report_needs_a_model() {
    let h = Harness::start_with(&config("1")).await;
    let res = h
        .client
        .get(format!("{}/admin/shadow", h.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("report");
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["param"], "model");
}

#[tokio::test]
async fn a_stream_is_mirrored_once_relayed_to_its_end_and_not_when_it_breaks() {
    let h = Harness::start_with(&config("1")).await;
    let stream = |text: &'static str| {
        h.client
            .post(format!("{}/v1/chat/completions", h.base))
            .bearer_auth(KEY)
            .json(&json!({"model": "shadowed", "messages": user(text), "stream": true, "max_tokens": 20}))
            .send()
    };
    let res = stream("stream me").await.expect("send");
    assert_eq!(res.status(), 200);
    assert!(res.text().await.expect("body").contains("data: [DONE]"));
    let report = report_with(&h, 1).await;
    assert_eq!(report["candidate"]["errors"], 0);
    assert_eq!(
        report["compared"], 0,
        "a streamed answer is not kept to compare"
    );
    // A stream that breaks off: its mirror is never sent.
    h.sim.sim.set_fault("", "*", Fault::cut(3));
    let broken = stream("break me")
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    assert!(!broken.contains("data: [DONE]"), "{broken}");
    h.sim.sim.clear_faults();
    assert_eq!(ask_as(&h, KEY, "plain after").await.status(), 200);
    report_with(&h, 2).await;
    assert_eq!(
        h.sim.sim.requests("backup").len(),
        2,
        "the broken stream's mirror never went"
    );
}

#[tokio::test]
async fn text_answers_are_compared_by_the_cosine_of_their_embeddings_when_configured() {
    let extra = config("1").replace(
        "budget_usd = \"1\"",
        "budget_usd = \"1\"\nembeddings = \"embed\"",
    );
    let h = Harness::start_with(&extra).await;
    for i in 0..3 {
        assert_eq!(
            ask_as(&h, KEY, &format!("embed me {i}")).await.status(),
            200
        );
    }
    // The same upstream model answers the same prompt with the same text, whose two
    // embeddings are equal: cosine 1.
    let report = report_with_calls(&h, 3, 3).await;
    assert_eq!(report["compared"], 3);
    assert_eq!(report["agreement_rate"], 1.0);
    assert_eq!(report["mean_agreement"], 1.0);
    assert_eq!(report["similarity_calls"], 3, "{report}");
    assert!(
        report["similarity_cost_nano_usd"].as_i64().unwrap_or(0) > 0,
        "{report}"
    );
    // One embeddings call per pair, both answers in one input.
    let calls: Vec<Value> = h
        .sim
        .sim
        .requests("")
        .into_iter()
        .filter(|r| r.path.ends_with("/embeddings"))
        .map(|r| r.body)
        .collect();
    assert_eq!(calls.len(), 3);
    for body in &calls {
        let input = body["input"].as_array().expect("an input array");
        assert_eq!(input.len(), 2, "{body}");
        assert_eq!(input[0], input[1], "the two answers were equal");
        assert_eq!(body["model"], "text-embedding-3-small");
    }
}

#[tokio::test]
async fn a_failed_embeddings_call_falls_back_to_word_overlap_and_is_recorded() {
    let extra = config("1").replace(
        "budget_usd = \"1\"",
        "budget_usd = \"1\"\nembeddings = \"embed\"",
    );
    let mut h = Harness::start_with(&extra).await;
    h.sim
        .sim
        .set_fault("", "text-embedding-3-small", Fault::error(500));
    for i in 0..2 {
        assert_eq!(
            ask_as(&h, KEY, &format!("embed me {i}")).await.status(),
            200
        );
    }
    let report = report_with_calls(&h, 2, 2).await;
    // Equal texts overlap entirely: still compared, by words.
    assert_eq!(report["compared"], 2);
    assert_eq!(report["agreement_rate"], 1.0);
    assert_eq!(report["similarity_calls"], 2);
    assert_eq!(
        report["candidate"]["errors"], 0,
        "the failed embeddings calls are not the candidate's"
    );
    let pool = h.finish().await;
    let failed: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT status, shadow_of FROM requests WHERE kind = 'shadow' AND endpoint = 'embeddings'",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(failed.len(), 2);
    assert!(
        failed.iter().all(|(s, of)| *s >= 500 && of.is_some()),
        "{failed:?}"
    );
}

#[tokio::test]
async fn differing_answers_score_the_cosine_of_their_embeddings() {
    // The candidate is another upstream model: its answer to the same prompt differs.
    let extra = config("1")
        .replace("deployment = \"us-candidate\"", "deployment = \"other-model\"")
        .replace(
            "budget_usd = \"1\"",
            "budget_usd = \"1\"\nembeddings = \"embed\"",
        )
        + "\n[deployments.other-model]\nprovider = \"oa-backup\"\nmodel = \"gpt-4o\"\nregion = \"us-east\"\nprice = { input = 2.5, output = 10 }\n";
    let h = Harness::start_with(&extra).await;
    assert_eq!(ask_as(&h, KEY, "describe the sea").await.status(), 200);
    let report = report_with(&h, 1).await;
    let mut call = None;
    for _ in 0..100 {
        call = h
            .sim
            .sim
            .requests("")
            .into_iter()
            .find(|r| r.path.ends_with("/embeddings"));
        if call.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = call.expect("an embeddings call").body;
    let input = body["input"].as_array().expect("input").clone();
    assert_ne!(input[0], input[1], "the two answers differ");
    // The score is the cosine of the two vectors the embeddings model gives, computed
    // here from a call of our own.
    let vectors: Value = h
        .client
        .post(format!("{}/v1/embeddings", h.sim.base_url()))
        .bearer_auth("sk-upstream-secret")
        .json(&json!({"model": "text-embedding-3-small", "input": input}))
        .send()
        .await
        .expect("sim")
        .json()
        .await
        .expect("json");
    let v = |i: usize| -> Vec<f64> {
        vectors["data"][i]["embedding"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|x| x.as_f64().expect("float"))
            .collect()
    };
    let (x, y) = (v(0), v(1));
    let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let want = (dot / (norm(&x) * norm(&y))).clamp(0.0, 1.0);
    let got = report["mean_agreement"].as_f64().expect("scored");
    assert!((got - want).abs() < 1e-9, "scored {got}, cosine {want}");
    assert!(got < 0.8, "unrelated answers do not agree: {got}");
}
