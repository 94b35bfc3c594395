//! What-if replays (`switchyard::whatif`): a run recorded through the gateway against
//! the simulator, replayed through other configurations. Figures are checked against
//! sums taken from the ledger with SQL of the test's own and against prices applied by
//! hand, never against the library's cost code.

mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{user, Harness, KEY};
use serde_json::{json, Value};
use switchyard::config::{PostgresConfig, Secret};
use switchyard::ledger::{
    AttemptRecord, Database, Ledger, LedgerOptions, ReplayFacts, RequestRecord,
};
use switchyard::storage::Postgres;
use switchyard::types::Usage;
use switchyard::whatif::{self, Options, Report, MODEL_NOT_CONFIGURED};
use switchyard::Config;

const ADMIN: &str = "sy-admin-whatif-000000001";

/// Two deployments in different regions (prices per million tokens with whole
/// nano-USD per token, so that a request's cost is exact: 400 and 1600 nano-USD per
/// token for the primary), a priority model over both and a second model.
fn recorded_config() -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

[deployments.wi-primary]
provider = "oa-primary"
model = "gpt-4o-mini"
region = "eu-west"
price = {{ input = 0.40, output = 1.60 }}

[deployments.wi-backup]
provider = "oa-backup"
model = "gpt-4o-mini"
region = "us-east"
price = {{ input = 0.30, output = 1.20 }}

[models.wi-chat]
strategy = "priority"
deployments = ["wi-primary", "wi-backup"]

[models.wi-other]
deployments = ["wi-backup"]
"#
    )
}

/// The configuration to replay through: the same providers (never called), the
/// deployments and models given.
fn alt(deployments_and_models: &str) -> Config {
    let text = format!(
        r#"
[providers.oa-primary]
kind = "openai"
base_url = "http://127.0.0.1:9/primary/v1"
api_key = "sk-never-called"

[providers.oa-backup]
kind = "openai"
base_url = "http://127.0.0.1:9/backup/v1"
api_key = "sk-never-called"
{deployments_and_models}
"#
    );
    Config::parse(&text, |_| None).expect("the replay configuration is valid")
}

const SAME: &str = r#"
[deployments.wi-primary]
provider = "oa-primary"
model = "gpt-4o-mini"
region = "eu-west"
price = { input = 0.40, output = 1.60 }

[deployments.wi-backup]
provider = "oa-backup"
model = "gpt-4o-mini"
region = "us-east"
price = { input = 0.30, output = 1.20 }

[models.wi-chat]
strategy = "priority"
deployments = ["wi-primary", "wi-backup"]

[models.wi-other]
deployments = ["wi-backup"]
"#;

/// Requests of the recorded run, by who sent them.
const CHAT_REQUESTS: usize = 44;
/// Every fourth chat request comes from the key that may use `us-east` only.
const US_ONLY_REQUESTS: u64 = 11;
const OTHER_MODEL_REQUESTS: u64 = 3;

async fn admin_post(h: &Harness, path: &str, body: Value) -> Value {
    let res = h
        .client
        .post(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("admin");
    assert_eq!(res.status(), 201, "{path}");
    res.json().await.expect("json")
}

async fn key(h: &Harness, name: &str, team: &str, policy: Value) -> String {
    let k = admin_post(
        h,
        "/admin/keys",
        json!({"name": name, "team": team, "policy": policy}),
    )
    .await;
    k["key"].as_str().expect("secret").to_owned()
}

async fn chat_as(h: &Harness, key: &str, body: Value) -> reqwest::Response {
    h.client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("send")
}

/// Records a run: 44 chat requests from four keys of two teams and one without a
/// team (prompts of different lengths, some with `max_tokens`), three to a second
/// model, a cache miss and its hit, and one request refused before routing. Returns
/// the stopped gateway's harness (its ledger is complete) and the ledger for SQL.
async fn record() -> (Harness, sqlx::SqlitePool) {
    let mut h = Harness::start_with(&recorded_config()).await;
    admin_post(&h, "/admin/teams", json!({"name": "research"})).await;
    admin_post(&h, "/admin/teams", json!({"name": "support"})).await;
    let research = key(&h, "res-app", "research", json!({})).await;
    let support = key(&h, "sup-app", "support", json!({})).await;
    let us_only = key(
        &h,
        "sup-us",
        "support",
        json!({"allowed_regions": ["us-east"]}),
    )
    .await;
    let cachey = key(&h, "cachey", "research", json!({"cache": {"ttl_s": 600}})).await;
    let keys = [KEY.to_owned(), research, support, us_only];
    for i in 0..CHAT_REQUESTS {
        let text = format!("question {i}: {}", "where does the train go ".repeat(i % 7));
        let mut body = json!({"model": "wi-chat", "messages": user(&text)});
        if i % 2 == 0 {
            body["max_tokens"] = json!(40 + i);
        }
        let res = chat_as(&h, &keys[i % keys.len()], body).await;
        assert_eq!(res.status(), 200, "request {i}");
        let _ = res.bytes().await;
    }
    for i in 0..OTHER_MODEL_REQUESTS {
        let body = json!({"model": "wi-other", "messages": user(&format!("other {i}"))});
        let res = chat_as(&h, KEY, body).await;
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await;
    }
    let cached = json!({"model": "wi-chat", "messages": user("a timetable"), "temperature": 0});
    for expected in ["miss", "hit"] {
        let res = chat_as(&h, &cachey, cached.clone()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-switchyard-cache"], expected);
        let _ = res.bytes().await;
    }
    let res = chat_as(
        &h,
        KEY,
        json!({"model": "no-such-model", "messages": user("hi")}),
    )
    .await;
    assert_eq!(res.status(), 404);
    let _ = res.bytes().await;
    let db = h.finish().await;
    (h, db)
}

fn options(seed: u64) -> Options {
    Options {
        since_ms: None,
        until_ms: None,
        model: None,
        seed,
    }
}

async fn replay(h: &Harness, alt: &Config, seed: u64) -> Report {
    whatif::replay(&Database::Sqlite(h.ledger.clone()), alt, &options(seed))
        .await
        .expect("replay")
}

async fn scalar(db: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .expect(sql)
}

#[tokio::test]
async fn the_same_configuration_replays_to_the_recorded_cost() {
    let (h, db) = record().await;
    let report = replay(&h, &alt(SAME), 7).await;

    let rows = scalar(&db, "SELECT COUNT(*) FROM requests").await;
    assert_eq!(report.requests, u64::try_from(rows).expect("count"));
    assert_eq!(report.cache_hits, 1);
    assert_eq!(report.not_routed, 1);
    let replayed = CHAT_REQUESTS as u64 + OTHER_MODEL_REQUESTS + 1;
    assert_eq!(report.replayed, replayed);
    assert_eq!(report.whatif_routed, replayed);
    assert_eq!(report.actual_answered, replayed);
    assert!(report.no_eligible.is_empty(), "{:?}", report.no_eligible);

    let recorded = scalar(&db, "SELECT SUM(cost_nano_usd) FROM requests").await;
    assert!(recorded > 0);
    assert_eq!(report.actual.list_nano_usd, recorded);
    // Priority with healthy deployments is deterministic: the same deployment serves
    // every request, so the replayed cost is the recorded one, exactly.
    assert_eq!(report.whatif.list_nano_usd, recorded);
    assert_eq!(report.whatif.effective_nano_usd, recorded);
    assert_eq!(report.saving().list_nano_usd, 0);

    // Where each request went, both ways.
    let primary = &report.deployments["wi-primary"];
    let backup = &report.deployments["wi-backup"];
    let chat = CHAT_REQUESTS as u64;
    assert_eq!(primary.actual_requests, chat - US_ONLY_REQUESTS + 1);
    assert_eq!(primary.whatif_requests, primary.actual_requests);
    assert_eq!(
        backup.actual_requests,
        US_ONLY_REQUESTS + OTHER_MODEL_REQUESTS
    );
    assert_eq!(backup.whatif_requests, backup.actual_requests);

    // Per team: the teams' recorded costs, summed by SQL.
    let by_team: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT team_id, COUNT(*), SUM(cost_nano_usd) FROM requests \
         WHERE needs IS NOT NULL OR cache_hit = 1 GROUP BY team_id ORDER BY team_id",
    )
    .fetch_all(&db)
    .await
    .expect("teams");
    assert_eq!(by_team.len(), 3, "{by_team:?}");
    for (team, n, cost) in by_team {
        let t = &report.teams[&team];
        assert_eq!(t.requests, u64::try_from(n).expect("count"), "{team:?}");
        assert_eq!(t.actual.list_nano_usd, cost, "{team:?}");
        assert_eq!(t.whatif.list_nano_usd, cost, "{team:?}");
    }

    // Latency history: every successful call, by deployment.
    for name in ["wi-primary", "wi-backup"] {
        let calls = scalar(
            &db,
            &format!(
                "SELECT COUNT(*) FROM attempts WHERE deployment = '{name}' \
                 AND error_class IS NULL AND status < 400"
            ),
        )
        .await;
        let d = &report.deployments[name];
        assert_eq!(d.history_samples, u64::try_from(calls).expect("count"));
        let est = d.estimated.expect("estimated latency");
        assert!(est.p50_us.is_some() && est.p99_us >= est.p50_us);
    }
    assert_eq!(report.estimated_requests, replayed);
    assert_eq!(report.without_history, 0);
}

#[tokio::test]
async fn a_cheaper_price_list_saves_what_the_tokens_say() {
    let (h, db) = record().await;
    // The primary at a quarter of its price: 100 and 400 nano-USD per token instead of
    // 400 and 1600. The backup keeps its price.
    let cheaper = SAME.replace(
        "price = { input = 0.40, output = 1.60 }",
        "price = { input = 0.10, output = 0.40 }",
    );
    assert_ne!(cheaper, SAME);
    let report = replay(&h, &alt(&cheaper), 7).await;

    let (prompt, completion, cached): (i64, i64, i64) = sqlx::query_as(
        "SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens) FROM requests \
         WHERE deployment = 'wi-primary' AND cache_hit = 0",
    )
    .fetch_one(&db)
    .await
    .expect("tokens");
    assert_eq!(cached, 0, "no cached-input price in play");
    assert!(prompt > 0 && completion > 0);
    let expected_saving = prompt * (400 - 100) + completion * (1600 - 400);
    assert_eq!(report.saving().list_nano_usd, expected_saving);
    assert_eq!(report.saving().effective_nano_usd, expected_saving);
    let recorded = scalar(&db, "SELECT SUM(cost_nano_usd) FROM requests").await;
    assert_eq!(report.whatif.list_nano_usd, recorded - expected_saving);

    // The no-team key's saving, by hand as well.
    let (p, c): (i64, i64) = sqlx::query_as(
        "SELECT SUM(prompt_tokens), SUM(completion_tokens) FROM requests \
         WHERE deployment = 'wi-primary' AND cache_hit = 0 AND team_id IS NULL",
    )
    .fetch_one(&db)
    .await
    .expect("tokens");
    let no_team = &report.teams[&None];
    assert_eq!(
        no_team.actual.list_nano_usd - no_team.whatif.list_nano_usd,
        p * 300 + c * 1200
    );

    // A contract with contracted prices instead: the list cost stands, the effective
    // cost is the contracted price's, by hand as well.
    let contracted = format!(
        "{SAME}\n[contracts.deal]\ndeployments = [\"wi-primary\"]\n\
         [contracts.deal.prices.wi-primary]\ninput = 0.20\noutput = 0.80\n"
    );
    let report = replay(&h, &alt(&contracted), 7).await;
    assert_eq!(report.saving().list_nano_usd, 0);
    assert_eq!(
        report.saving().effective_nano_usd,
        prompt * (400 - 200) + completion * (1600 - 800)
    );
}

#[tokio::test]
async fn requests_whose_regions_exclude_everything_have_no_eligible_deployment() {
    let (h, db) = record().await;
    // The backup moves out of `us-east`, and the second model is gone.
    let moved = SAME
        .replace("region = \"us-east\"", "region = \"ap-south\"")
        .replace("[models.wi-other]\ndeployments = [\"wi-backup\"]\n", "");
    let report = replay(&h, &alt(&moved), 7).await;

    let by_reason: BTreeMap<(&str, &str), u64> = report
        .no_eligible
        .iter()
        .map(|n| ((n.model.as_str(), n.reason.as_str()), n.requests))
        .collect();
    let region_reason = "wi-primary: region eu-west is not allowed (allowed: us-east); \
                         wi-backup: region ap-south is not allowed (allowed: us-east)";
    assert_eq!(
        by_reason,
        BTreeMap::from([
            (("wi-chat", region_reason), US_ONLY_REQUESTS),
            (("wi-other", MODEL_NOT_CONFIGURED), OTHER_MODEL_REQUESTS),
        ])
    );
    assert_eq!(
        report.no_eligible_requests(),
        US_ONLY_REQUESTS + OTHER_MODEL_REQUESTS
    );
    assert_eq!(
        report.whatif_routed,
        report.replayed - US_ONLY_REQUESTS - OTHER_MODEL_REQUESTS
    );
    // The saving is like for like: what cannot be served is left out of both sides.
    let unserved = scalar(
        &db,
        "SELECT SUM(cost_nano_usd) FROM requests \
         WHERE key_name = 'sup-us' OR logical_model = 'wi-other'",
    )
    .await;
    assert!(unserved > 0);
    assert_eq!(report.unserved().list_nano_usd, unserved);
    assert_eq!(
        report.comparable().list_nano_usd,
        report.actual.list_nano_usd - unserved
    );
    // The rest went to the primary and still does, at the same price.
    assert_eq!(
        report.whatif.list_nano_usd,
        report.comparable().list_nano_usd
    );
    assert_eq!(report.saving().list_nano_usd, 0);
    let support = &report.teams[&Some("support".to_owned())];
    let support_unserved = scalar(
        &db,
        "SELECT SUM(cost_nano_usd) FROM requests WHERE key_name = 'sup-us'",
    )
    .await;
    assert_eq!(support.unserved.list_nano_usd, support_unserved);
    assert_eq!(support.saving().list_nano_usd, 0);
    // Everything that is routed goes to the primary now.
    assert_eq!(
        report.deployments["wi-primary"].whatif_requests,
        report.whatif_routed
    );
    assert_eq!(report.deployments["wi-backup"].whatif_requests, 0);

    let json = report.to_json();
    let reasons: Vec<&str> = json["no_eligible"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["reason"].as_str())
        .collect();
    assert!(reasons.contains(&region_reason), "{reasons:?}");
    assert_eq!(
        json["requests"]["whatif_no_eligible"],
        US_ONLY_REQUESTS + OTHER_MODEL_REQUESTS
    );
    let text = report.render();
    assert!(text.contains(region_reason), "{text}");
    assert!(text.contains(MODEL_NOT_CONFIGURED), "{text}");
}

#[tokio::test]
async fn a_seed_gives_the_same_report_and_weighted_shares_add_up() {
    let (h, _db) = record().await;
    // Traffic moves: weighted over the primary, the backup and a deployment that
    // never served (no latency history).
    let weighted = format!(
        "{}\n[deployments.wi-new]\nprovider = \"oa-backup\"\nmodel = \"gpt-4o-mini\"\n\
         region = \"us-east\"\nprice = {{ input = 0.20, output = 0.80 }}\n",
        SAME.replace(
            "strategy = \"priority\"\ndeployments = [\"wi-primary\", \"wi-backup\"]",
            "strategy = \"weighted\"\ndeployments = [{ name = \"wi-primary\", weight = 40 }, \
             { name = \"wi-backup\", weight = 30 }, { name = \"wi-new\", weight = 30 }]",
        )
    );
    let config = alt(&weighted);
    let first = replay(&h, &config, 42).await;
    let second = replay(&h, &config, 42).await;
    assert_eq!(first, second);
    let json = first.to_json();
    assert_eq!(
        serde_json::to_string(&json).expect("json"),
        serde_json::to_string(&second.to_json()).expect("json")
    );
    assert_eq!(first.render(), second.render());

    let deployments = json["deployments"].as_array().expect("array");
    let share_sum: f64 = deployments
        .iter()
        .map(|d| d["whatif_share_percent"].as_f64().expect("share"))
        .sum();
    assert!((share_sum - 100.0).abs() < 1e-9, "{share_sum}");
    let provider_sum: f64 = json["providers"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["whatif_share_percent"].as_f64().expect("share"))
        .sum();
    assert!((provider_sum - 100.0).abs() < 1e-9, "{provider_sum}");
    let counts: u64 = first.deployments.values().map(|d| d.whatif_requests).sum();
    assert_eq!(counts, first.whatif_routed);
    // The traffic really moved: each of the three got some of it.
    for name in ["wi-primary", "wi-backup", "wi-new"] {
        assert!(first.deployments[name].whatif_requests > 0, "{name}");
    }
    // The new deployment has no history: no latency drawn for its requests.
    let new = deployments
        .iter()
        .find(|d| d["deployment"] == "wi-new")
        .expect("wi-new");
    assert_eq!(new["no_history"], true);
    assert_eq!(new["estimated_latency_us"], Value::Null);
    assert_eq!(
        first.without_history,
        first.deployments["wi-new"].whatif_requests
    );
    assert_eq!(
        first.estimated_requests + first.without_history,
        first.whatif_routed
    );
    assert!(first.render().contains("no history"));
}

/// Rows of every kind a replay meets, written straight into a ledger: answered
/// requests of two deployments and two teams, some restricted to `us-east`, some
/// needing tools with an output bound, a failed one, a cache hit and one refused
/// before routing.
fn varied_records() -> Vec<RequestRecord> {
    let mut out = Vec::new();
    for i in 0..30_u64 {
        let deployment = if i % 3 == 0 {
            "wi-backup"
        } else {
            "wi-primary"
        };
        let usage = Usage {
            prompt_tokens: 50 + 7 * i,
            completion_tokens: 10 + 3 * i,
            cached_tokens: i % 4,
            ..Usage::default()
        };
        let at = 1_790_000_000_000 + i64::try_from(i).expect("small") * 1000;
        let failed = i == 17;
        let attempt = AttemptRecord {
            attempt: 1,
            started_at_ms: at,
            deployment: deployment.into(),
            provider: "oa".into(),
            upstream_model: "gpt-4o-mini".into(),
            status: Some(if failed { 500 } else { 200 }),
            error_class: failed.then(|| "upstream_5xx".to_owned()),
            usage,
            cost_nano_usd: 1000 + i64::try_from(i).expect("small"),
            list_cost_nano_usd: 1000 + i64::try_from(i).expect("small"),
            latency_us: 1000 * (i64::try_from(i).expect("small") + 1),
            provider_kind: "openai",
            ..AttemptRecord::default()
        };
        out.push(RequestRecord {
            request_id: format!("req_{i:03}"),
            started_at_ms: at,
            key_id: Some("cfg:app".into()),
            key_name: Some("app".into()),
            endpoint: if i % 5 == 0 {
                "embeddings"
            } else {
                "chat.completions"
            },
            logical_model: Some(if i % 7 == 0 { "wi-other" } else { "wi-chat" }.into()),
            deployment: Some(deployment.into()),
            provider: Some("oa".into()),
            status: if failed { 502 } else { 200 },
            error_code: failed.then(|| "upstream_5xx".to_owned()),
            usage,
            cost_nano_usd: 1000 + i64::try_from(i).expect("small"),
            list_cost_nano_usd: 1000 + i64::try_from(i).expect("small"),
            latency_us: 1000 * (i64::try_from(i).expect("small") + 2),
            attempts: vec![attempt],
            team_id: (i % 2 == 0).then(|| "research".to_owned()),
            cache_hit: i == 29,
            replay: (i != 28 && i != 29).then(|| ReplayFacts {
                needs: if i % 4 == 1 {
                    "tools".into()
                } else {
                    String::new()
                },
                max_tokens: (i % 4 == 1).then_some(64),
                allowed_regions: (i % 6 == 5).then(|| r#"["us-east"]"#.to_owned()),
                required_tags: "[]".into(),
            }),
            ..RequestRecord::default()
        });
    }
    out
}

async fn write(db: Database, records: &[RequestRecord]) -> Database {
    let ledger = Ledger::open(LedgerOptions::on(db))
        .await
        .expect("open ledger");
    let sink = ledger.sink();
    for r in records {
        sink.submit(r.clone()).await;
    }
    let db = ledger.database().clone();
    ledger.shutdown().await.expect("flush");
    db
}

#[tokio::test]
async fn both_engines_replay_the_same_rows_to_the_same_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg_db = pg::TestDb::create().await;
    let pg = Postgres::connect(&PostgresConfig {
        url: Secret::new(pg_db.url.as_str()),
        max_connections: 5,
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .expect("connect to the test database");
    let records = varied_records();
    let sqlite = write(Database::Sqlite(dir.path().join("l.db")), &records).await;
    let postgres = write(Database::Postgres(pg), &records).await;

    let weighted = SAME.replace("strategy = \"priority\"", "strategy = \"weighted\"");
    let config = alt(&weighted);
    let opts = Options {
        since_ms: Some(1_790_000_000_000),
        until_ms: Some(1_790_000_000_000 + 29_000),
        model: Some("wi-chat".into()),
        seed: 11,
    };
    let a = whatif::replay(&sqlite, &config, &opts)
        .await
        .expect("sqlite");
    let b = whatif::replay(&postgres, &config, &opts)
        .await
        .expect("postgres");
    assert_eq!(a, b);
    assert_eq!(a.to_json(), b.to_json());

    // Rows 0..=28 are in range (29 is not); wi-other's are filtered out (0, 7, 14,
    // 21, 28); 28 never reached routing anyway.
    let in_range: Vec<&RequestRecord> = records
        .iter()
        .take(29)
        .filter(|r| r.logical_model.as_deref() == Some("wi-chat"))
        .collect();
    assert_eq!(a.requests, in_range.len() as u64);
    assert_eq!(a.cache_hits, 0);
    assert_eq!(a.not_routed, 0);
    assert_eq!(a.replayed, in_range.len() as u64);
    assert_eq!(a.actual_failed, 1);
    assert_eq!(a.endpoints["embeddings"], 5);
    let recorded: i64 = in_range.iter().map(|r| r.cost_nano_usd).sum();
    assert_eq!(a.actual.list_nano_usd, recorded);
    // The us-east-only callers can only go to the backup; both deployments serve.
    assert_eq!(a.whatif_routed, a.replayed);
    assert!(a.deployments["wi-primary"].whatif_requests > 0);
    assert!(a.deployments["wi-backup"].whatif_requests > 0);
    // The history is the successful calls of the range, the failed one left out.
    let backup_calls = records
        .iter()
        .take(29)
        .filter(|r| r.deployment.as_deref() == Some("wi-backup") && r.error_code.is_none())
        .count();
    assert_eq!(
        a.deployments["wi-backup"].history_samples,
        backup_calls as u64
    );
}

#[tokio::test]
async fn the_other_configurations_contracts_are_burned_in_request_order() {
    let (h, _db) = record().await;
    // A commitment on the backup, preferred under priority: the replay sends every
    // eligible request there, and the commitment's burn is what they cost.
    let committed = format!(
        "{}\n[contracts.backup-commit]\ndeployments = [\"wi-backup\"]\ncommitment_usd = \"1\"\n",
        SAME.replace(
            "strategy = \"priority\"\n",
            "strategy = \"priority\"\nprefer_commitments = true\n"
        )
    );
    let report = replay(&h, &alt(&committed), 7).await;
    assert!(report.whatif_routed > 0);
    assert_eq!(
        report
            .deployments
            .get("wi-primary")
            .map_or(0, |d| d.whatif_requests),
        0
    );
    assert_eq!(report.contracts.len(), 1);
    let c = &report.contracts[0];
    assert_eq!(c.name, "backup-commit");
    assert_eq!(c.burn.spent_nano_usd, report.whatif.effective_nano_usd);
    assert!(
        c.projection().left.is_some_and(|l| l > 0),
        "far from burned"
    );
    let json = report.to_json();
    assert_eq!(json["contracts"][0]["contract"], "backup-commit");
    assert!(report
        .render()
        .contains("contract backup-commit (wi-backup)"));

    // A cap on the primary with no room for any request: it is skipped every time.
    let capped = format!(
        "{SAME}\n[contracts.primary-cap]\ndeployments = [\"wi-primary\"]\ncap_usd = \"0.000001\"\n"
    );
    let report = replay(&h, &alt(&capped), 7).await;
    assert_eq!(
        report
            .deployments
            .get("wi-primary")
            .map_or(0, |d| d.whatif_requests),
        0
    );
    assert!(report.whatif_routed > 0);
    assert_eq!(report.contracts[0].burn.spent_nano_usd, 0);
}
