//! Governance end to end: virtual keys and teams through the admin API, policies, rate
//! limits and budgets under concurrency, the PII guardrail, the audit columns of the
//! ledger and team-scoped spend — the gateway and the simulator on port 0.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::Row;
use switchyard::governance::store::{NewKey, Store};
use switchyard::ledger::{SpendReader, SpentBy};
use switchyard::{Config, Gateway};
use switchyard_sim::{SimHandle, SimOptions, Simulator};
use tokio::net::TcpListener;

const ADMIN: &str = "admin-token-0123456789abcdef";
const STATIC_KEY: &str = "sy-static-key-0123456789";

struct Gw {
    sim: SimHandle,
    gateway: Option<Gateway>,
    base: String,
    http: reqwest::Client,
    db: PathBuf,
    /// The config the gateway runs (restarts reuse it).
    text: String,
    _dir: tempfile::TempDir,
}

async fn start_gateway(text: &str) -> Result<Gateway, switchyard::server::StartError> {
    let config = Config::parse(text, |_| None).expect("valid config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gw");
    Gateway::start_on(config, listener).await
}

fn config_text(sim: &str, db: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_grace_ms = 0
drain_timeout_ms = 5000

[ledger]
path = "{db}"

[admin]
token = "{ADMIN}"

[governance]
refresh_ms = 100
log_content = true

[[keys]]
name = "static-app"
key = "{STATIC_KEY}"

[providers.oa]
kind = "openai"
base_url = "{sim}/v1"
api_key = "sk-upstream"

[providers.az]
kind = "azure"
endpoint = "{sim}/azure"
api_version = "2024-10-21"
api_key = "az-upstream"

[deployments.oa-mini]
provider = "oa"
model = "gpt-4o-mini"
region = "us-east"
price = {{ input = 0.15, output = 0.60, cached_input = 0.075 }}

[deployments.az-eu]
provider = "az"
model = "mini-eu"
region = "eu-west"
price = {{ input = 0.165, output = 0.66 }}

[deployments.embed]
provider = "oa"
model = "text-embedding-3-small"
price = {{ input = 0.02 }}

[models.mini]
deployments = ["oa-mini"]

[models.chat]
deployments = ["oa-mini", "az-eu"]

[models.embed]
deployments = ["embed"]
{extra}
"#
    )
}

impl Gw {
    async fn start() -> Gw {
        Gw::start_with("").await
    }

    async fn start_with(extra: &str) -> Gw {
        Gw::start_edited(extra, |text, _| text).await
    }

    /// Starts with the test config, plus `extra`, rewritten by `edit` (which gets the
    /// test's folder, for files of its own).
    async fn start_edited(
        extra: &str,
        edit: impl FnOnce(String, &std::path::Path) -> String,
    ) -> Gw {
        let sim_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let sim = Simulator::new(SimOptions::default())
            .spawn(sim_listener)
            .await
            .expect("sim");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("switchyard.db");
        let text = edit(
            config_text(&sim.base_url(), db.to_str().expect("utf-8"), extra),
            dir.path(),
        );
        let gateway = start_gateway(&text).await.expect("gateway");
        Gw {
            base: gateway.base_url(),
            gateway: Some(gateway),
            sim,
            http: reqwest::Client::new(),
            db,
            text,
            _dir: dir,
        }
    }

    /// Stops the gateway (flushing its ledger) and starts a new one, same config.
    async fn restart(&mut self) -> switchyard::server::ShutdownReport {
        let report = match self.gateway.take() {
            Some(g) => g.shutdown().await.expect("shutdown"),
            None => Default::default(),
        };
        let gateway = start_gateway(&self.text).await.expect("restart");
        self.base = gateway.base_url();
        self.gateway = Some(gateway);
        report
    }

    /// Stops the gateway, returning what its shutdown found.
    async fn stop(&mut self) -> switchyard::server::ShutdownReport {
        match self.gateway.take() {
            Some(g) => g.shutdown().await.expect("shutdown"),
            None => Default::default(),
        }
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("send");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn create_team(&self, body: Value) -> Value {
        let (status, team) = self
            .admin(reqwest::Method::POST, "/admin/teams", Some(body))
            .await;
        assert_eq!(status, 201, "{team}");
        team
    }

    /// Creates a key through the admin API; returns (secret, key object).
    async fn create_key(&self, body: Value) -> (String, Value) {
        let (status, key) = self
            .admin(reqwest::Method::POST, "/admin/keys", Some(body))
            .await;
        assert_eq!(status, 201, "{key}");
        let secret = key["key"].as_str().expect("secret shown once").to_owned();
        (secret, key)
    }

    async fn chat_as(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    async fn get_as(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("send")
    }

    /// Stops the gateway, flushing the ledger, and opens it read-only.
    async fn finish(&mut self) -> sqlx::SqlitePool {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await.expect("shutdown");
        }
        let url = format!("sqlite://{}?mode=ro", self.db.display());
        sqlx::SqlitePool::connect(&url).await.expect("open ledger")
    }
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
}

async fn error_code(res: reqwest::Response) -> String {
    let body: Value = res.json().await.expect("json error");
    for f in ["message", "type", "param", "code"] {
        assert!(
            body["error"].get(f).is_some(),
            "OpenAI-shaped error: {body}"
        );
    }
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `GET /admin/health` shows a provider's 429 with `retry-after` as exhaustion of that
/// deployment only, and needs the admin token.
#[tokio::test]
async fn admin_health_shows_a_deployment_exhausted_by_its_provider() {
    let gw = Gw::start().await;
    gw.sim.sim.set_fault(
        "",
        "gpt-4o-mini",
        switchyard_sim::Fault::error(429).retry_after(90).times(1),
    );
    let r = gw.chat_as(STATIC_KEY, hello("chat")).await;
    assert_eq!(r.status(), 200, "failed over to az-eu");
    let (status, health) = gw.admin(reqwest::Method::GET, "/admin/health", None).await;
    assert_eq!(status, 200, "{health}");
    let of = |name: &str| {
        health["deployments"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} in {health}"))
    };
    let exhausted = of("oa-mini")["exhausted_for_ms"]
        .as_i64()
        .expect("exhausted");
    assert!(exhausted > 0 && exhausted <= 90_000, "{exhausted}");
    assert_eq!(of("oa-mini")["breaker"], "closed");
    assert!(of("az-eu")["exhausted_for_ms"].is_null(), "{health}");
    assert_eq!(of("az-eu")["calls_in_flight"], 0);
    assert!(
        of("az-eu")["latency_ms"].as_f64().is_some(),
        "az-eu answered: {health}"
    );
    let anonymous = gw
        .http
        .get(format!("{}/admin/health", gw.base))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn admin_api_refuses_without_the_admin_token() {
    let gw = Gw::start().await;
    let url = format!("{}/admin/keys", gw.base);
    let none = gw.http.get(&url).send().await.expect("send");
    assert_eq!(none.status(), 401);
    assert_eq!(error_code(none).await, "missing_admin_token");
    let wrong = gw
        .http
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 401);
    assert_eq!(error_code(wrong).await, "invalid_admin_token");
    // An application key is not an admin token either.
    let app = gw.get_as(STATIC_KEY, "/admin/keys").await;
    assert_eq!(app.status(), 401);
    let create = gw
        .http
        .post(format!("{}/admin/teams", gw.base))
        .bearer_auth(STATIC_KEY)
        .json(&json!({"name": "sneaky"}))
        .send()
        .await
        .expect("send");
    assert_eq!(create.status(), 401);
    let (status, teams) = gw.admin(reqwest::Method::GET, "/admin/teams", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        teams["data"],
        json!([]),
        "nothing was created without the token"
    );
    // The admin token is not an application key.
    assert_eq!(gw.chat_as(ADMIN, hello("mini")).await.status(), 401);
}

#[tokio::test]
async fn admin_api_is_off_without_a_configured_token() {
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sim = Simulator::new(SimOptions::default())
        .spawn(sim_listener)
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("x.db");
    let text = config_text(&sim.base_url(), db.to_str().expect("utf-8"), "")
        .replace(&format!("[admin]\ntoken = \"{ADMIN}\""), "");
    let config = Config::parse(&text, |_| None).expect("valid");
    let gateway = Gateway::start_on(
        config,
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    )
    .await
    .expect("gateway");
    let res = reqwest::Client::new()
        .get(format!("{}/admin/keys", gateway.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "admin_disabled");
    gateway.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn revoked_key_is_refused_on_the_next_request() {
    let mut gw = Gw::start().await;
    let (secret, key) = gw.create_key(json!({"name": "short-lived"})).await;
    assert!(secret.starts_with("sy-"));
    assert_eq!(key["status"], "active");
    assert_eq!(gw.chat_as(&secret, hello("mini")).await.status(), 200);

    let (status, revoked) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/keys/short-lived/revoke",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert!(
        revoked.get("key").is_none(),
        "the secret is never shown again"
    );
    let res = gw.chat_as(&secret, hello("mini")).await;
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "invalid_api_key");
    assert_eq!(
        gw.sim.sim.requests("").len(),
        1,
        "the refused request never went upstream"
    );

    // A revocation made by another process (the CLI) on the same store: the running
    // gateway polls the change counter every 100 ms.
    let (other, _) = gw.create_key(json!({"name": "cli-revoked"})).await;
    assert_eq!(gw.chat_as(&other, hello("mini")).await.status(), 200);
    let store = Store::open(&gw.db).await.expect("store");
    store
        .revoke_key("cli-revoked", "test")
        .await
        .expect("revoke");
    let mut polls = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        polls += 1;
        let status = gw.chat_as(&other, hello("mini")).await.status();
        if status == 401 {
            break;
        }
        assert!(polls < 40, "still accepted after {polls} polls of 50 ms");
    }
    store.close().await;

    let db = gw.finish().await;
    let refused: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE status = 401 AND error_code = 'invalid_api_key'",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert!(refused >= 2);
}

#[tokio::test]
async fn expired_key_is_refused() {
    let gw = Gw::start().await;
    let (expired, _) = gw
        .create_key(json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"}))
        .await;
    let res = gw.chat_as(&expired, hello("mini")).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );
    let (fresh, key) = gw
        .create_key(json!({"name": "fresh", "expires_at": "2999-01-01"}))
        .await;
    assert_eq!(key["expires_at"], "2999-01-01T00:00:00Z");
    assert_eq!(gw.chat_as(&fresh, hello("mini")).await.status(), 200);
    let (_, listed) = gw.admin(reqwest::Method::GET, "/admin/keys", None).await;
    let status_of = |name: &str| {
        listed["data"]
            .as_array()
            .and_then(|d| d.iter().find(|k| k["name"] == name))
            .map(|k| k["status"].clone())
    };
    assert_eq!(status_of("old"), Some(json!("expired")));
    assert_eq!(status_of("fresh"), Some(json!("active")));
}

#[tokio::test]
async fn a_key_cannot_use_a_model_outside_its_policy() {
    let mut gw = Gw::start().await;
    gw.create_team(json!({"name": "support", "policy": {"models": ["mini", "chat"]}}))
        .await;
    let (secret, _) = gw
        .create_key(json!({"name": "support-bot", "team": "support", "policy": {"models": ["mini", "embed"]}}))
        .await;
    assert_eq!(gw.chat_as(&secret, hello("mini")).await.status(), 200);
    // Allowed by the team but not by the key.
    let res = gw.chat_as(&secret, hello("chat")).await;
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "model_not_allowed");
    // Allowed by the key but not by its team.
    let res = gw
        .http
        .post(format!("{}/v1/embeddings", gw.base))
        .bearer_auth(&secret)
        .json(&json!({"model": "embed", "input": "hello"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 403);
    // /v1/models lists only what the key may use.
    let models: Value = gw
        .get_as(&secret, "/v1/models")
        .await
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["mini"]);
    assert_eq!(
        gw.sim.sim.requests("").len(),
        1,
        "refusals never went upstream"
    );

    let db = gw.finish().await;
    let rows = sqlx::query(
        "SELECT logical_model, team_id, policy_decision, status FROM requests WHERE key_name = 'support-bot' ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    let got: Vec<(String, String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        [
            ("mini".into(), "support".into(), "allowed".into(), 200),
            (
                "chat".into(),
                "support".into(),
                "denied:model_not_allowed".into(),
                403
            ),
            (
                "embed".into(),
                "support".into(),
                "denied:model_not_allowed".into(),
                403
            ),
        ]
    );
}

#[tokio::test]
async fn max_tokens_policy_caps_requests() {
    let gw = Gw::start().await;
    let (secret, _) = gw
        .create_key(json!({"name": "capped", "policy": {"max_tokens": 50}}))
        .await;
    let mut body = hello("mini");
    body["max_tokens"] = json!(51);
    let res = gw.chat_as(&secret, body).await;
    assert_eq!(res.status(), 400);
    // Without a limit of its own, the request gets the policy's.
    assert_eq!(gw.chat_as(&secret, hello("mini")).await.status(), 200);
    let seen = gw.sim.sim.requests("");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["max_tokens"], 50);
}

/// Reasoning models (o1, o3, o4-mini, gpt-5…) refuse `max_tokens`: a policy's limit
/// and the client's own reach them as `max_completion_tokens`, while an
/// OpenAI-compatible server gets the `max_tokens` it knows.
#[tokio::test]
async fn output_limits_reach_each_model_in_the_field_it_takes() {
    let gw = Gw::start_with(
        r#"
[deployments.oa-o3]
provider = "oa"
model = "o3-mini"

[deployments.az-o4]
provider = "az"
model = "o4-mini"

[models.reasoner]
deployments = ["oa-o3"]

[models.az-reasoner]
deployments = ["az-o4"]
"#,
    )
    .await;
    let (capped, _) = gw
        .create_key(json!({"name": "capped", "policy": {"max_tokens": 64}}))
        .await;
    // The last request the simulator instance got: its two output-limit fields.
    let sent = |instance: &str| {
        let seen = gw.sim.sim.requests(instance);
        let body = seen.last().map(|r| r.body.clone()).unwrap_or_default();
        (
            body["max_tokens"].clone(),
            body["max_completion_tokens"].clone(),
        )
    };

    // The policy's limit, for a request without one.
    let res = gw.chat_as(&capped, hello("reasoner")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        sent(""),
        (Value::Null, json!(64)),
        "policy limit at o3-mini"
    );

    // The client's own legacy `max_tokens`, at an Azure reasoning deployment.
    let mut body = hello("az-reasoner");
    body["max_tokens"] = json!(33);
    let res = gw.chat_as(STATIC_KEY, body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        sent("azure"),
        (Value::Null, json!(33)),
        "client limit at o4-mini"
    );

    // An OpenAI-compatible server (the simulator's address is not OpenAI's) serving
    // a non-reasoning model gets `max_tokens`.
    let mut body = hello("mini");
    body["max_completion_tokens"] = json!(21);
    let res = gw.chat_as(STATIC_KEY, body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(sent(""), (json!(21), Value::Null), "compatible server");
}

#[tokio::test]
async fn request_rate_limits_hold_with_100_concurrent_clients() {
    let mut gw = Gw::start().await;
    gw.create_team(json!({"name": "busy", "policy": {"rpm": 15}}))
        .await;
    let (a, _) = gw
        .create_key(json!({"name": "busy-a", "team": "busy", "policy": {"rpm": 10}}))
        .await;
    let (b, _) = gw
        .create_key(json!({"name": "busy-b", "team": "busy"}))
        .await;

    let responses = join_all((0..100).map(|_| gw.chat_as(&a, hello("mini")))).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    println!(
        "key rpm 10, 100 concurrent: {ok} admitted, {} refused",
        limited.len()
    );
    assert_eq!(ok, 10);
    assert_eq!(limited.len(), 90);
    let h = limited[0].headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "10");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert!(h.contains_key("x-ratelimit-reset-requests"));
    assert!(h.contains_key("retry-after"));
    let admitted = responses
        .iter()
        .find(|r| r.status() == 200)
        .expect("one admitted");
    assert_eq!(admitted.headers()["x-ratelimit-limit-requests"], "10");

    // The team's limit (15) is shared: key b gets what is left of it, 5.
    let responses = join_all((0..100).map(|_| gw.chat_as(&b, hello("mini")))).await;
    let ok_b = responses.iter().filter(|r| r.status() == 200).count();
    println!("team rpm 15 after 10, 100 concurrent: {ok_b} admitted");
    assert_eq!(ok_b, 5);
    assert_eq!(
        gw.sim.sim.requests("").len(),
        15,
        "exactly the admitted requests went upstream"
    );

    let db = gw.finish().await;
    let denied: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE status = 429 AND policy_decision LIKE 'denied:rate_limited:%'",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(denied, 185);
}

#[tokio::test]
async fn token_rate_limits_hold_with_100_concurrent_clients() {
    let mut gw = Gw::start().await;
    let (k, _) = gw
        .create_key(json!({"name": "tokens", "policy": {"tpm": 1000}}))
        .await;
    // Estimate per request: prompt 3 + (ceil(16/4) + 4) = 11, plus max_tokens 89 = 100.
    let body = json!({"model": "mini", "max_tokens": 89,
        "messages": [{"role": "user", "content": "Hi [[len:5]] you"}]});
    let responses = join_all((0..100).map(|_| gw.chat_as(&k, body.clone()))).await;
    let mut used = 0u64;
    let mut ok = 0;
    for r in responses {
        if r.status() == 200 {
            ok += 1;
            let v: Value = r.json().await.expect("json");
            used += v["usage"]["total_tokens"].as_u64().expect("usage");
        } else {
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "1000");
        }
    }
    println!("tpm 1000, 100 concurrent: {ok} admitted, {used} tokens used");
    // Ten estimates fill the window; settling to actual usage frees room for more, but
    // the tokens really used never exceed the limit.
    assert!(ok >= 10, "{ok}");
    assert!(used <= 1000, "{used}");
    let db = gw.finish().await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE key_name = 'tokens' AND status = 200",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(rows, ok);
}

#[tokio::test]
async fn budget_is_never_overspent_by_200_concurrent_requests() {
    let mut gw = Gw::start().await;
    // Upper bound per request at oa-mini (0.15 / 0.60 USD per M): prompt 3 + (ceil(18/4)
    // + 4) = 12 tokens × 150 + max_tokens 50 × 600 = 31,800 nano-USD. Actual: 12 × 150 +
    // 10 × 600 = 7,800. A cap of 0.0003 USD holds nine bounds at once.
    let (k, frugal) = gw
        .create_key(json!({"name": "frugal",
            "budgets": [{"period": "month", "limit_usd": "0.0003"}]}))
        .await;
    let body = json!({"model": "mini", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hey [[len:10]] you"}]});
    let responses = join_all((0..200).map(|_| gw.chat_as(&k, body.clone()))).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok + refused.len(), 200);
    println!(
        "budget $0.0003, 200 concurrent: {ok} admitted, {} refused",
        refused.len()
    );
    assert!(ok >= 9, "{ok}");
    assert!(!refused.is_empty());
    let (_, key) = gw
        .admin(reqwest::Method::GET, "/admin/keys/frugal", None)
        .await;
    let budget = &key["budgets"][0];
    assert_eq!(
        budget["reserved_nano_usd"], 0,
        "every reservation was settled"
    );
    let spent_in_memory = budget["spent_nano_usd"].as_i64().expect("spent");

    let db = gw.finish().await;
    let (rows, spent): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(cost_nano_usd), 0) FROM requests WHERE key_name = 'frugal' AND status = 200",
    )
    .fetch_one(&db)
    .await
    .expect("sum");
    println!("spent {spent} nano-USD of 300000 over {rows} requests");
    assert_eq!(rows, ok as i64);
    assert_eq!(
        spent,
        rows * 7_800,
        "each request cost exactly the hand-computed 7,800"
    );
    assert!(spent <= 300_000, "overspent: {spent}");
    assert_eq!(spent, spent_in_memory);
    let denied: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE key_name = 'frugal' AND policy_decision = 'denied:budget:key:frugal:month'",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(denied, 200 - ok as i64);

    // A restarted gateway remembers the month's spend: budgets are seeded from the
    // ledger's rows of this key's id.
    let id = frugal["id"].as_str().expect("id");
    let mut reader = SpendReader::open(&gw.db).await.expect("ledger");
    assert_eq!(
        reader
            .spent_since(SpentBy::Key(id), month_start())
            .await
            .expect("spent"),
        spent
    );
}

fn month_start() -> i64 {
    switchyard::governance::Period::Month
        .bounds(switchyard::types::time::now_ms())
        .0
}

#[tokio::test]
async fn costs_match_hand_computed_values() {
    let mut gw = Gw::start().await;
    let (k, _) = gw.create_key(json!({"name": "coster"})).await;
    // Plain: prompt 3 + (ceil(14/4) + 4) = 11, completion 7.
    let plain =
        json!({"model": "mini", "messages": [{"role": "user", "content": "Price [[len:7]]"}]});
    let r = gw.chat_as(&k, plain).await;
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.expect("json");
    assert_eq!(u["usage"]["prompt_tokens"], 11);
    assert_eq!(u["usage"]["completion_tokens"], 7);
    // Cached: half the prompt is reported cached.
    let cached = json!({"model": "mini", "messages": [{"role": "user", "content": "[[cached]] some longer prompt text to cache [[len:3]]"}]});
    let r = gw.chat_as(&k, cached).await;
    let c: Value = r.json().await.expect("json");
    let cp = c["usage"]["prompt_tokens"].as_i64().expect("p");
    let cc = c["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_i64()
        .expect("c");
    assert!(cc > 0);
    // Streamed, without the client asking for usage: billed from the upstream's usage.
    let streamed = json!({"model": "mini", "stream": true,
        "messages": [{"role": "user", "content": "Stream [[len:9]]"}]});
    let r = gw.chat_as(&k, streamed).await;
    assert_eq!(r.status(), 200);
    let _ = r.text().await.expect("stream");
    // Azure deployment, other prices.
    let r = gw
        .chat_as(
            &k,
            json!({"model": "chat", "messages": [{"role": "user", "content": "Price [[len:7]]"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Embeddings: input only.
    let r = gw
        .http
        .post(format!("{}/v1/embeddings", gw.base))
        .bearer_auth(&k)
        .json(&json!({"model": "embed", "input": "embed these words"}))
        .send()
        .await
        .expect("send");
    let e: Value = r.json().await.expect("json");
    let ep = e["usage"]["prompt_tokens"].as_i64().expect("p");

    let db = gw.finish().await;
    let costs: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(deployment, ''), prompt_tokens, completion_tokens, cached_tokens, cost_nano_usd \
         FROM requests WHERE key_name = 'coster' ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    // (nano-USD per million tokens × tokens + 500,000) / 1,000,000, rounded once.
    let at = |input: i64, cached_in: i64, output: i64, p: i64, c: i64, k: i64| {
        ((p - k) * input + k * cached_in + c * output + 500_000) / 1_000_000
    };
    assert_eq!(costs[0], ("oa-mini".into(), 11, 7, 0, 5_850));
    assert_eq!(
        costs[0].4,
        at(150_000_000, 75_000_000, 600_000_000, 11, 7, 0)
    );
    assert_eq!(
        costs[1].4,
        at(150_000_000, 75_000_000, 600_000_000, cp, 3, cc)
    );
    // Stream: prompt 3 + (ceil(15/4) + 4) = 11, completion 9.
    assert_eq!(costs[2], ("oa-mini".into(), 11, 9, 0, 11 * 150 + 9 * 600));
    assert_eq!(
        costs[3],
        ("oa-mini".into(), 11, 7, 0, 5_850),
        "priority: oa-mini first"
    );
    assert_eq!(costs[4].0, "embed");
    assert_eq!(costs[4].4, at(20_000_000, 20_000_000, 0, ep, 0, 0));
}

#[tokio::test]
async fn pii_guardrail_redacts_logs_and_blocks() {
    let mut gw = Gw::start().await;
    let (redact, _) = gw
        .create_key(json!({"name": "redactor", "policy": {"pii": "redact"}}))
        .await;
    let (block, _) = gw
        .create_key(json!({"name": "blocker", "policy": {"pii": "block"}}))
        .await;
    let (log, _) = gw
        .create_key(json!({"name": "logger", "policy": {"pii": "log"}}))
        .await;
    let text = "Mail jane@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111, again jane@example.com";
    let body = json!({"model": "mini", "messages": [{"role": "user", "content": text}]});

    assert_eq!(gw.chat_as(&redact, body.clone()).await.status(), 200);
    let seen = gw.sim.sim.requests("");
    assert_eq!(
        seen[0].body["messages"][0]["content"],
        "Mail [EMAIL_1] or call [PHONE_1]; card [CARD_1], again [EMAIL_1]"
    );

    let res = gw.chat_as(&block, body.clone()).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["code"], "pii_detected");
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("EMAIL") && !msg.contains("jane"), "{msg}");
    assert_eq!(gw.sim.sim.requests("").len(), 1, "blocked before dispatch");

    assert_eq!(gw.chat_as(&log, body.clone()).await.status(), 200);
    let seen = gw.sim.sim.requests("");
    assert_eq!(
        seen[1].body["messages"][0]["content"], text,
        "log mode forwards as sent"
    );

    let db = gw.finish().await;
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT key_name, redactions, policy_decision FROM requests WHERE redactions IS NOT NULL ORDER BY key_name",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        [
            (
                "blocker".into(),
                "block:EMAIL=2,PHONE=1,CARD=1".into(),
                Some("denied:pii_blocked".into())
            ),
            (
                "logger".into(),
                "log:EMAIL=2,PHONE=1,CARD=1".into(),
                Some("allowed".into())
            ),
            (
                "redactor".into(),
                "redact:EMAIL=2,PHONE=1,CARD=1".into(),
                Some("allowed".into())
            ),
        ]
    );
    // The ledger keeps no raw PII for the redacting key: its logged prompt is redacted.
    let prompt: String = sqlx::query_scalar(
        "SELECT c.prompt FROM request_content c JOIN requests r USING (request_id) WHERE r.key_name = 'redactor'",
    )
    .fetch_one(&db)
    .await
    .expect("content");
    assert!(
        prompt.contains("[EMAIL_1]") && !prompt.contains("jane@"),
        "{prompt}"
    );
}

/// Tool-call arguments, tool results, the system prompt and content parts all go
/// upstream, so the guardrail reads every one of them; arguments stay a JSON document
/// after redaction (a card number written as a JSON number included).
#[tokio::test]
async fn pii_guardrail_covers_tool_calls_results_and_parts() {
    let mut gw = Gw::start().await;
    let (redact, _) = gw
        .create_key(json!({"name": "redactor", "policy": {"pii": "redact"}}))
        .await;
    let (block, _) = gw
        .create_key(json!({"name": "blocker", "policy": {"pii": "block"}}))
        .await;
    let body = json!({"model": "mini", "messages": [
        {"role": "system", "content": "Escalate to +44 20 7946 0958."},
        {"role": "user", "content": [{"type": "text", "text": "Refund me, I am jane@example.com"}]},
        {"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "refund", "arguments": "{\"email\":\"jane@example.com\",\"card\":4111111111111111}"},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Refunded to 5555 5555 5555 4444."},
    ]});
    assert_eq!(gw.chat_as(&redact, body.clone()).await.status(), 200);
    let seen = gw.sim.sim.requests("");
    let sent = &seen[0].body["messages"];
    let all = sent.to_string();
    for raw in [
        "jane@example.com",
        "4111111111111111",
        "5555 5555 5555 4444",
        "7946",
    ] {
        assert!(!all.contains(raw), "{raw} went upstream: {all}");
    }
    assert_eq!(sent[0]["content"], "Escalate to [PHONE_1].");
    assert_eq!(sent[1]["content"][0]["text"], "Refund me, I am [EMAIL_1]");
    let arguments = sent[2]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .expect("arguments stay a string");
    let arguments: Value = serde_json::from_str(arguments).expect("arguments stay JSON");
    assert_eq!(
        arguments,
        json!({"email": "[EMAIL_1]", "card": "[CARD_1]"}),
        "the same value gets the same placeholder"
    );
    assert_eq!(sent[3]["content"], "Refunded to [CARD_2].");

    // Block mode refuses PII that only the arguments carry.
    let only_arguments = json!({"model": "mini", "messages": [
        {"role": "user", "content": "Refund me"},
        {"role": "assistant", "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "refund", "arguments": "{\"email\":\"jane@example.com\"}"},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ]});
    let res = gw.chat_as(&block, only_arguments).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["code"], "pii_detected");
    assert_eq!(gw.sim.sim.requests("").len(), 1, "blocked before dispatch");

    let db = gw.finish().await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT key_name, redactions FROM requests WHERE redactions IS NOT NULL ORDER BY key_name",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        [
            ("blocker".into(), "block:EMAIL=1".into()),
            ("redactor".into(), "redact:PHONE=1,EMAIL=2,CARD=2".into()),
        ]
    );
}

#[tokio::test]
async fn eu_only_no_logging_key_is_routed_to_eu_and_leaves_no_content() {
    let mut gw = Gw::start().await;
    gw.create_team(json!({"name": "research"})).await;
    let (eu, _) = gw
        .create_key(json!({"name": "eu-app", "team": "research",
            "policy": {"allowed_regions": ["eu-west"], "log_content": false},
            "budgets": [{"period": "month", "limit_usd": 25}]}))
        .await;
    let (open, _) = gw
        .create_key(json!({"name": "open-app", "team": "research"}))
        .await;
    let res = gw.chat_as(&eu, hello("chat")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "az-eu");
    let res = gw.chat_as(&open, hello("chat")).await;
    assert_eq!(res.headers()["x-switchyard-deployment"], "oa-mini");
    // A model with no EU deployment cannot serve the EU-only key.
    let res = gw.chat_as(&eu, hello("mini")).await;
    assert_eq!(res.status(), 400);

    let db = gw.finish().await;
    let logged: Vec<String> = sqlx::query_scalar(
        "SELECT r.key_name FROM request_content c JOIN requests r USING (request_id) ORDER BY r.key_name",
    )
    .fetch_all(&db)
    .await
    .expect("content");
    assert_eq!(logged, ["open-app"]);
    let response: Option<String> = sqlx::query_scalar(
        "SELECT c.response FROM request_content c JOIN requests r USING (request_id) WHERE r.key_name = 'open-app'",
    )
    .fetch_one(&db)
    .await
    .expect("response");
    assert!(response.unwrap_or_default().contains("chat.completion"));
}

async fn spend_of(gw: &Gw, key: &str, query: &str) -> (u16, Value) {
    let res = gw.get_as(key, &format!("/v1/spend{query}")).await;
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_team_cannot_read_another_teams_spend() {
    let mut gw = Gw::start().await;
    gw.create_team(json!({"name": "alpha"})).await;
    gw.create_team(json!({"name": "beta"})).await;
    let (a, _) = gw
        .create_key(json!({"name": "alpha-app", "team": "alpha"}))
        .await;
    let (b, _) = gw
        .create_key(json!({"name": "beta-app", "team": "beta"}))
        .await;
    for _ in 0..3 {
        assert_eq!(gw.chat_as(&a, hello("mini")).await.status(), 200);
    }
    assert_eq!(gw.chat_as(&b, hello("mini")).await.status(), 200);

    // The ledger is written in the background: wait until the admin sees all four.
    let mut polls = 0;
    let all = loop {
        let (_, all) = gw
            .admin(reqwest::Method::GET, "/admin/spend?by=team", None)
            .await;
        let n: u64 = all["data"]
            .as_array()
            .map_or(0, |d| d.iter().filter_map(|r| r["requests"].as_u64()).sum());
        if n >= 4 {
            break all;
        }
        polls += 1;
        assert!(polls < 100, "ledger rows never arrived: {all}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let groups: Vec<&str> = all["data"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["group"].as_str())
        .collect();
    assert!(
        groups.contains(&"alpha") && groups.contains(&"beta"),
        "{all}"
    );

    let (status, mine) = spend_of(&gw, &a, "?by=key").await;
    assert_eq!(status, 200);
    assert_eq!(mine["team"], "alpha");
    let keys: Vec<&str> = mine["data"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["group"].as_str())
        .collect();
    assert_eq!(keys, ["alpha-app"]);
    assert_eq!(mine["data"][0]["requests"], 3);
    // Asking for the other team is refused, on either path.
    assert_eq!(spend_of(&gw, &a, "?team=beta").await.0, 403);
    let res = gw.get_as(&a, "/admin/spend?by=team&team=beta").await;
    assert_eq!(res.status(), 403);
    // /admin/spend with a team key is the same team-scoped report.
    let same: Value = gw
        .get_as(&a, "/admin/spend?by=key")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(same["data"], mine["data"]);
    // A key without a team (the config file's) reads no spend.
    assert_eq!(spend_of(&gw, STATIC_KEY, "").await.0, 403);

    // The CLI's report is the same query: same numbers.
    let (_, by_team) = gw
        .admin(reqwest::Method::GET, "/admin/spend?by=team", None)
        .await;
    let _ = gw.finish().await;
    let rows = switchyard::ledger::spend_report(&gw.db, switchyard::ledger::SpendGroup::Team, None)
        .await
        .expect("report");
    let cli: Vec<(String, u64, i64)> = rows
        .iter()
        .map(|r| (r.group.clone(), r.requests, r.cost_nano_usd))
        .collect();
    let api: Vec<(String, u64, i64)> = by_team["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap_or_default().to_owned(),
                r["requests"].as_u64().unwrap_or_default(),
                r["cost_nano_usd"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(cli, api);
}

/// With the key store in a file of its own (`governance.store`), budgets still read
/// the spend so far from the ledger: a restarted gateway goes on refusing a key
/// whose month is spent.
#[tokio::test]
async fn budgets_remember_spend_across_a_restart_when_the_store_is_a_separate_file() {
    let mut gw = Gw::start_edited("", |text, dir| {
        let store = dir.join("keys.db");
        text.replace(
            "[governance]\n",
            &format!("[governance]\nstore = \"{}\"\n", store.display()),
        )
    })
    .await;
    // Bound 31,800 nano-USD (see `budgets_never_overspend_under_concurrency`), actual
    // 7,800: a cap of 35,000 admits one request, then refuses the next.
    let (k, key) = gw
        .create_key(json!({"name": "thrifty",
            "budgets": [{"period": "month", "limit_usd": "0.000035"}]}))
        .await;
    let body = json!({"model": "mini", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hey [[len:10]] you"}]});
    assert_eq!(gw.chat_as(&k, body.clone()).await.status(), 200);
    let refused = gw.chat_as(&k, body.clone()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(error_code(refused).await, "budget_exceeded");

    let report = gw.restart().await;
    assert_eq!(report.ledger.dropped, 0);
    let (_, after) = gw
        .admin(reqwest::Method::GET, "/admin/keys/thrifty", None)
        .await;
    assert_eq!(after["id"], key["id"]);
    assert_eq!(after["budgets"][0]["spent_nano_usd"], 7_800, "{after}");
    let refused = gw.chat_as(&k, body).await;
    assert_eq!(
        refused.status(),
        429,
        "the restarted gateway forgot the spend"
    );
    assert_eq!(error_code(refused).await, "budget_exceeded");
}

/// A ledger that refuses writes (as a full disk or a read-only file does) loses the
/// rows, counted as such in the shutdown report, but budgets are charged all the same.
#[tokio::test]
async fn a_ledger_that_cannot_write_still_charges_budgets_and_counts_the_lost_rows() {
    let mut gw = Gw::start_with(
        r#"
[[keys]]
name = "capped"
key = "sy-capped-key-0123456789"
budgets = [{ period = "month", limit_usd = "0.000035" }]
"#,
    )
    .await;
    let url = format!("sqlite://{}", gw.db.display());
    let saboteur = sqlx::SqlitePool::connect(&url).await.expect("open ledger");
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_rows BEFORE INSERT ON requests \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .execute(&saboteur)
    .await
    .expect("trigger");
    saboteur.close().await;

    let body = json!({"model": "mini", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hey [[len:10]] you"}]});
    let key = "sy-capped-key-0123456789";
    assert_eq!(gw.chat_as(key, body.clone()).await.status(), 200);
    let refused = gw.chat_as(key, body).await;
    assert_eq!(
        refused.status(),
        429,
        "the spend of a lost row was not charged"
    );
    assert_eq!(error_code(refused).await, "budget_exceeded");

    let report = gw.stop().await;
    assert_eq!(report.ledger.written, 0);
    assert_eq!(report.ledger.dropped_write_failed, 2);
    assert_eq!(report.ledger.dropped, 2);
    assert!(report.ledger.write_errors >= 1);
}

/// A key of the config file may not take the name of a virtual key: the gateway
/// refuses to start, naming the field; and the admin API refuses the other way round.
#[tokio::test]
async fn key_names_cannot_be_shared_by_config_and_store_keys() {
    let gw = Gw::start().await;
    let (status, body) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({"name": "static-app"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // A virtual key created behind the gateway's back (e.g. `keys create --store`
    // without the config file), then a config file that reuses its name.
    let store = Store::open(&gw.db).await.expect("store");
    let (row, _) = store
        .create_key(
            &NewKey {
                name: "twin".into(),
                ..NewKey::default()
            },
            "test",
        )
        .await
        .expect("key");
    store.close().await;
    let text = gw.text.clone()
        + r#"
[[keys]]
name = "twin"
key = "sy-twin-key-0123456789"
"#;
    let err = match start_gateway(&text).await {
        Ok(_) => panic!("started with a key name shared with the store"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("keys[1].name"), "{err}");
    assert!(err.contains("`twin`") && err.contains(&row.id), "{err}");
}

#[tokio::test]
async fn a_per_model_rate_limit_counts_only_that_model_and_names_it() {
    let gw = Gw::start().await;
    gw.create_team(json!({"name": "models", "policy": {"model_limits": {"chat": {"rpm": 5}}}}))
        .await;
    let (key, _) = gw
        .create_key(json!({"name": "per-model", "team": "models", "policy": {"rpm": 10, "model_limits": {"mini": {"rpm": 2}}}}))
        .await;
    for left in ["1", "0"] {
        let res = gw.chat_as(&key, hello("mini")).await;
        assert_eq!(res.status(), 200);
        // The tightest request window is the key's own for `mini`.
        assert_eq!(res.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(res.headers()["x-ratelimit-remaining-requests"], left);
    }
    let refused = gw.chat_as(&key, hello("mini")).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("per-model model mini rpm"), "{message}");
    // Another model counts only in the key's own window (10, of which 2 are used) and
    // the team's window for it.
    let res = gw.chat_as(&key, hello("chat")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-ratelimit-limit-requests"], "5");
    assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "4");
}

#[tokio::test]
async fn a_long_request_goes_upstream_as_sent_unless_the_guardrail_changes_it() {
    let gw = Gw::start().await;
    let (redact, _) = gw
        .create_key(json!({"name": "long-redactor", "policy": {"pii": "redact"}}))
        .await;
    let filler = "lorem ipsum ".repeat(400); // ~4.8 KB: the client's bytes are kept
    let text = format!("{filler} mail jane@example.com");
    // `name: null` is what tells the two forms apart upstream: the client's bytes
    // carry it, a re-encoding leaves it out.
    let body = json!({"model": "mini", "messages": [
        {"role": "system", "content": "be brief", "name": null},
        {"role": "user", "content": text}
    ]});
    assert_eq!(gw.chat_as(STATIC_KEY, body.clone()).await.status(), 200);
    assert_eq!(gw.chat_as(&redact, body).await.status(), 200);
    let seen = gw.sim.sim.requests("");
    assert_eq!(seen.len(), 2);
    // As sent: the same messages, `null` included, and the upstream model swapped in.
    assert_eq!(seen[0].body["messages"][0]["name"], Value::Null);
    assert!(
        seen[0].body["messages"][0]
            .as_object()
            .is_some_and(|m| m.contains_key("name")),
        "{}",
        seen[0].body["messages"][0]
    );
    assert_eq!(seen[0].body["messages"][1]["content"], text.as_str());
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");
    // Redacted: the guardrail's change is what goes upstream, never the raw bytes.
    let sent = seen[1].body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        sent.ends_with("mail [EMAIL_1]"),
        "{}",
        &sent[sent.len().saturating_sub(40)..]
    );
    assert!(!seen[1].body.to_string().contains("jane@example.com"));
}
