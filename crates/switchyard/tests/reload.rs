//! Live reload: the gateway re-reads its configuration file (`POST /admin/reload`,
//! `Gateway::reload`, which SIGHUP calls) and puts it in force for new requests,
//! while running requests finish on the configuration they started with.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use switchyard::Gateway;
use switchyard_sim::{Fault, Latency, SimHandle, SimOptions, Simulator};
use tokio::net::TcpListener;

const KEY: &str = "sy-reload-test-key-0123";
const ADMIN: &str = "reload-admin-token-0123";

struct Rig {
    sim: SimHandle,
    gateway: Option<Gateway>,
    base: String,
    client: reqwest::Client,
    file: PathBuf,
    ledger: PathBuf,
    _dir: tempfile::TempDir,
}

/// `price` is the input and output USD per million tokens of `oa-mini`; `extra` is
/// appended (more deployments and models).
fn config(sim: &str, ledger: &Path, price: (f64, f64), extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_grace_ms = 0

[timeouts]
first_byte_ms = 5000
total_ms = 30000

[ledger]
path = "{ledger}"

[admin]
token = "{ADMIN}"

[[keys]]
name = "app"
key = "{KEY}"

[providers.oa]
kind = "openai"
base_url = "{sim}/v1"
api_key = "sk-upstream"

[providers.slow]
kind = "openai"
base_url = "{sim}/slow/v1"
api_key = "sk-upstream"

[deployments.oa-mini]
provider = "oa"
model = "gpt-4o-mini"
price = {{ input = {pin}, output = {pout} }}

[deployments.slow-mini]
provider = "slow"
model = "gpt-4o-mini"
price = {{ input = {pin}, output = {pout} }}

[models.gpt-4o-mini]
deployments = ["oa-mini"]

[models.slow]
deployments = ["slow-mini"]
{extra}
"#,
        ledger = ledger.display(),
        pin = price.0,
        pout = price.1,
    )
}

const NEW_MODEL: &str = r#"
[deployments.new-dep]
provider = "oa"
model = "gpt-4o"
price = { input = 2.5, output = 10.0 }

[models.new-model]
deployments = ["new-dep"]
"#;

impl Rig {
    async fn start(price: (f64, f64), extra: &str) -> Rig {
        let sim = Simulator::new(SimOptions::default())
            .spawn(TcpListener::bind("127.0.0.1:0").await.expect("bind sim"))
            .await
            .expect("sim");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("switchyard.toml");
        let ledger = dir.path().join("ledger.db");
        std::fs::write(&file, config(&sim.base_url(), &ledger, price, extra)).expect("write");
        let gateway = Gateway::start_from_file(&file).await.expect("gateway");
        Rig {
            base: gateway.base_url(),
            gateway: Some(gateway),
            sim,
            client: reqwest::Client::new(),
            file,
            ledger,
            _dir: dir,
        }
    }

    fn rewrite(&self, price: (f64, f64), extra: &str) {
        let text = config(&self.sim.base_url(), &self.ledger, price, extra);
        std::fs::write(&self.file, text).expect("rewrite config");
    }

    async fn admin_reload(&self) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}/admin/reload", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        (status, res.json().await.expect("json body"))
    }

    async fn chat(&self, model: &str, stream: bool) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(KEY)
            .json(&json!({
                "model": model,
                "stream": stream,
                "messages": [{"role": "user", "content": "Say something."}],
            }))
            .send()
            .await
            .expect("send")
    }

    async fn models(&self) -> Vec<String> {
        let v: Value = self
            .client
            .get(format!("{}/v1/models", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Stops the gateway (flushing the ledger) and opens the ledger.
    async fn finish(&mut self) -> sqlx::SqlitePool {
        if let Some(g) = self.gateway.take() {
            let report = g.shutdown().await.expect("shutdown");
            assert_eq!(report.ledger.dropped, 0, "ledger rows lost: {report:?}");
        }
        let url = format!("sqlite://{}?mode=ro", self.ledger.display());
        sqlx::SqlitePool::connect(&url).await.expect("open ledger")
    }
}

fn request_id(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned()
}

/// (prompt tokens, completion tokens, cost) of one request's ledger row.
async fn row(db: &sqlx::SqlitePool, id: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT prompt_tokens, completion_tokens, cost_nano_usd FROM requests WHERE request_id = ?",
    )
    .bind(id)
    .fetch_one(db)
    .await
    .expect("the request's row")
}

#[tokio::test]
async fn a_reload_puts_a_new_model_and_price_in_force_while_a_stream_finishes_on_its_own() {
    let mut rig = Rig::start((0.15, 0.60), "").await;
    // The stream below takes seconds, so the reload happens while it runs.
    rig.sim.sim.set_latency(
        "slow",
        "*",
        Latency {
            ttft_ms: 0,
            chunk_delay_ms: 150,
            chunks: Some(20),
        },
    );
    let before = rig.chat("gpt-4o-mini", false).await;
    assert_eq!(before.status(), 200);
    let before_id = request_id(&before);
    assert_eq!(rig.chat("new-model", false).await.status(), 404);

    let mut stream = rig.chat("slow", true).await;
    assert_eq!(stream.status(), 200);
    let stream_id = request_id(&stream);
    let first = stream.chunk().await.expect("first chunk").expect("data");
    assert!(!first.is_empty());

    rig.rewrite((1.0, 2.0), NEW_MODEL);
    let (status, report) = rig.admin_reload().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["generation"], 2);
    assert_eq!(report["models"]["added"], json!(["new-model"]));
    assert_eq!(report["deployments"]["added"], json!(["new-dep"]));
    assert_eq!(
        report["deployments"]["changed"],
        json!(["oa-mini", "slow-mini"])
    );
    assert_eq!(report["restart_needed"], json!([]));
    assert_eq!(report["unchanged"], false);

    let new = rig.chat("new-model", false).await;
    assert_eq!(new.status(), 200);
    assert_eq!(
        new.headers()
            .get("x-switchyard-deployment")
            .and_then(|v| v.to_str().ok()),
        Some("new-dep")
    );
    let after = rig.chat("gpt-4o-mini", false).await;
    assert_eq!(after.status(), 200);
    let after_id = request_id(&after);
    assert!(rig.models().await.contains(&"new-model".to_owned()));

    // The stream that started before the reload ends normally.
    let mut rest = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = stream.chunk().await.expect("chunk") {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(!rest.contains("\"error\""), "{rest}");

    let db = rig.finish().await;
    // Old price: 150 and 600 nano-USD a token; new price: 1,000 and 2,000.
    let (p, c, cost) = row(&db, &before_id).await;
    assert!(p > 0 && c > 0);
    assert_eq!(cost, p * 150 + c * 600);
    let (p, c, cost) = row(&db, &after_id).await;
    assert_eq!(cost, p * 1_000 + c * 2_000);
    // The stream was priced by the configuration it started on.
    let (p, c, cost) = row(&db, &stream_id).await;
    assert!(c > 0);
    assert_eq!(cost, p * 150 + c * 600);
}

#[tokio::test]
async fn requests_during_repeated_reloads_all_succeed() {
    let mut rig = Rig::start((0.15, 0.60), "").await;
    let base = rig.base.clone();
    let client = rig.client.clone();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (base, client) = (base.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..20 {
                let stream = i % 3 == 0;
                let res = client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .json(&json!({
                        "model": "gpt-4o-mini",
                        "stream": stream,
                        "messages": [{"role": "user", "content": "Hi."}],
                    }))
                    .send()
                    .await;
                let status = match res {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        // A stream that broke after its 200 ends with an error event.
                        if stream && !body.trim_end().ends_with("data: [DONE]") {
                            0
                        } else {
                            s
                        }
                    }
                    Err(_) => 0,
                };
                statuses.push(status);
            }
            statuses
        }));
    }
    let gateway = rig.gateway.as_ref().expect("running");
    for i in 0..12u32 {
        // Alternate between two files: a price change and a model added and removed.
        if i % 2 == 0 {
            rig.rewrite((1.0, 2.0), NEW_MODEL);
        } else {
            rig.rewrite((0.15, 0.60), "");
        }
        let report = gateway.reload().await.expect("a valid file reloads");
        assert_eq!(report.generation, u64::from(i) + 2);
        tokio::task::yield_now().await;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    assert_eq!(all.len(), 160);
    assert!(all.iter().all(|s| *s == 200), "{all:?}");
    let db = rig.finish().await;
    let ok: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE status = 200")
        .fetch_one(&db)
        .await
        .expect("count");
    let rows: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT status, error_code FROM requests WHERE status != 200")
            .fetch_all(&db)
            .await
            .unwrap_or_default();
    assert_eq!(ok, 160, "rows not 200: {rows:?}");
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_its_field_and_the_running_config_stays() {
    let mut rig = Rig::start((0.15, 0.60), "").await;
    rig.rewrite(
        (1.0, 2.0),
        "\n[models.broken]\ndeployments = [\"no-such-deployment\"]\n",
    );
    let (status, body) = rig.admin_reload().await;
    assert_eq!(status, 400, "{body}");
    let err = &body["error"];
    assert_eq!(err["code"], "invalid_config");
    assert_eq!(err["type"], "invalid_request_error");
    assert_eq!(err["param"], "models.broken.deployments[0]");
    let message = err["message"].as_str().expect("message");
    // As `config check` prints it: file:line: field: what is wrong.
    let line = std::fs::read_to_string(&rig.file)
        .expect("read")
        .lines()
        .position(|l| l.contains("no-such-deployment"))
        .expect("the line")
        + 1;
    let expected = format!(
        "{}:{line}: models.broken.deployments[0]: unknown deployment `no-such-deployment`",
        rig.file.display()
    );
    assert!(message.contains(&expected), "{message}");

    // A parse error is refused the same way.
    std::fs::write(&rig.file, "[server\nlisten = 1").expect("write");
    let (status, body) = rig.admin_reload().await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");

    // The old configuration still serves, at its price.
    let res = rig.chat("gpt-4o-mini", false).await;
    assert_eq!(res.status(), 200);
    let id = request_id(&res);
    assert_eq!(rig.chat("broken", false).await.status(), 404);
    assert!(!rig.models().await.contains(&"broken".to_owned()));

    // And the next valid file is generation 2: nothing was swapped in between.
    rig.rewrite((0.15, 0.60), "");
    let (status, report) = rig.admin_reload().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["generation"], 2);
    assert_eq!(report["unchanged"], true);

    // Reloading needs the admin token.
    let res = rig
        .client
        .post(format!("{}/admin/reload", rig.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);

    let db = rig.finish().await;
    let (p, c, cost) = row(&db, &id).await;
    assert_eq!(cost, p * 150 + c * 600);
}

#[tokio::test]
async fn a_settings_change_that_needs_a_restart_is_reported_and_the_rest_applies() {
    let rig = Rig::start((0.15, 0.60), "").await;
    let other_ledger = rig.file.with_file_name("elsewhere.db");
    let text = config(&rig.sim.base_url(), &other_ledger, (1.0, 2.0), "")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    std::fs::write(&rig.file, text).expect("write");
    let (status, report) = rig.admin_reload().await;
    assert_eq!(status, 200, "{report}");
    let fields: Vec<&str> = report["restart_needed"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|w| w["field"].as_str())
        .collect();
    // The key store is the ledger's file unless named: it moved with it.
    assert_eq!(fields, ["server.listen", "ledger.path", "governance.store"]);
    assert_eq!(
        report["deployments"]["changed"],
        json!(["oa-mini", "slow-mini"])
    );
    // Still serving on the same listener, writing the same ledger.
    assert_eq!(rig.chat("gpt-4o-mini", false).await.status(), 200);
    let config = rig.gateway.as_ref().expect("running").config();
    assert_eq!(config.ledger.path.as_deref(), Some(rig.ledger.as_path()));
    assert!(!other_ledger.exists());
}

#[tokio::test]
async fn an_open_breaker_stays_open_across_a_reload_that_keeps_its_deployment() {
    let breaker = "\n[breaker]\nconsecutive_failures = 1\nopen_ms = 600000\n";
    let flaky = r#"
[providers.flaky]
kind = "openai"
base_url = "SIM/flaky/v1"
api_key = "sk-upstream"

[deployments.flaky-mini]
provider = "flaky"
model = "gpt-4o-mini"

[models.flaky]
deployments = ["flaky-mini"]
retry = { max_attempts = 1 }
"#;
    let rig0 = Rig::start((0.15, 0.60), "").await;
    let flaky = flaky.replace("SIM", &rig0.sim.base_url());
    rig0.rewrite((0.15, 0.60), &format!("{breaker}{flaky}"));
    let (status, report) = rig0.admin_reload().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["models"]["added"], json!(["flaky"]));

    rig0.sim.sim.set_fault("flaky", "*", Fault::error(500));
    let res = rig0.chat("flaky", false).await;
    assert_eq!(res.status(), 502);
    assert_eq!(rig0.sim.sim.requests("flaky").len(), 1);
    rig0.sim.sim.clear_faults();
    // Open now: refused without calling the upstream.
    assert_eq!(rig0.chat("flaky", false).await.status(), 503);
    assert_eq!(rig0.sim.sim.requests("flaky").len(), 1);

    // A reload that keeps the deployment (and changes the breaker's thresholds and
    // other things) keeps what the gateway learned about it.
    let breaker2 = "\n[breaker]\nconsecutive_failures = 3\nopen_ms = 600000\n";
    rig0.rewrite((1.0, 2.0), &format!("{breaker2}{flaky}{NEW_MODEL}"));
    let (status, report) = rig0.admin_reload().await;
    assert_eq!(status, 200, "{report}");
    assert!(report["settings"]
        .as_array()
        .expect("list")
        .contains(&json!("breaker")));
    let res = rig0.chat("flaky", false).await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_healthy_deployment");
    assert_eq!(
        rig0.sim.sim.requests("flaky").len(),
        1,
        "the open breaker kept the upstream from being called"
    );
    // A deployment under a new name starts afresh.
    assert_eq!(rig0.chat("new-model", false).await.status(), 200);
}

#[tokio::test]
async fn a_gateway_started_without_a_file_has_nothing_to_reload() {
    let sim = Simulator::new(SimOptions::default())
        .spawn(TcpListener::bind("127.0.0.1:0").await.expect("bind"))
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(&sim.base_url(), &dir.path().join("l.db"), (0.15, 0.6), "");
    let cfg = switchyard::Config::parse(&text, |_| None).expect("valid");
    let gateway = Gateway::start_on(cfg, TcpListener::bind("127.0.0.1:0").await.expect("bind"))
        .await
        .expect("gateway");
    let res = reqwest::Client::new()
        .post(format!("{}/admin/reload", gateway.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_config_file");
    gateway.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_reload_puts_changed_channel_profiles_in_force_and_says_so() {
    let rig = Rig::start((0.15, 0.60), "").await;
    let send = |channel: &'static str| {
        rig.client
            .post(format!("{}/v1/chat/completions", rig.base))
            .bearer_auth(KEY)
            .header("x-switchyard-channel", channel)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // No such channel yet.
    assert_eq!(send("voice").await.expect("send").status(), 400);
    let with_voice = |prompt: &str| format!("\n[channels.voice]\nsystem_prompt = \"{prompt}\"\n");
    // The key may choose it once the policy allows it: the key is in the main config.
    let allow = |extra: &str| {
        config(&rig.sim.base_url(), &rig.ledger, (0.15, 0.60), extra).replace(
            &format!("key = \"{KEY}\""),
            &format!("key = \"{KEY}\"\npolicy = {{ channels = [\"voice\"] }}"),
        )
    };
    std::fs::write(&rig.file, allow(&with_voice("First prompt."))).expect("write");
    let (status, report) = rig.admin_reload().await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["settings"]
            .as_array()
            .expect("list")
            .contains(&json!("channels.voice")),
        "{report}"
    );
    assert_eq!(send("voice").await.expect("send").status(), 200);
    let sent = rig
        .sim
        .sim
        .requests("")
        .last()
        .map(|r| r.body.clone())
        .expect("sent");
    assert_eq!(sent["messages"][0]["content"], "First prompt.");

    // A changed prompt is in force for the next request, and named in the report.
    std::fs::write(&rig.file, allow(&with_voice("Second prompt."))).expect("write");
    let (status, report) = rig.admin_reload().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["unchanged"], json!(false), "{report}");
    assert_eq!(send("voice").await.expect("send").status(), 200);
    let sent = rig
        .sim
        .sim
        .requests("")
        .last()
        .map(|r| r.body.clone())
        .expect("sent");
    assert_eq!(sent["messages"][0]["content"], "Second prompt.");

    // A virtual key whose policy names the channel: a file without it is refused,
    // naming the key, and the running configuration keeps serving the channel.
    let created: Value = rig
        .client
        .post(format!("{}/admin/keys", rig.base))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "voice-agent", "policy": {"channel": "voice"}}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    rig.rewrite((0.15, 0.60), "");
    let (status, body) = rig.admin_reload().await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "channels", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("key voice-agent ({id})")) && message.contains("`voice`"),
        "{message}"
    );
    assert_eq!(send("voice").await.expect("send").status(), 200);
}

#[tokio::test]
async fn a_reload_keeps_the_response_cache_and_applies_the_new_settings() {
    const CACHED: &str =
        "\n[models.cached]\ndeployments = [\"oa-mini\"]\ncache = { ttl_s = 3600 }\n";
    let rig = Rig::start((0.15, 0.60), CACHED).await;
    let ask = |rig: &Rig| {
        rig.client
            .post(format!("{}/v1/chat/completions", rig.base))
            .bearer_auth(KEY)
            .json(&json!({"model": "cached", "temperature": 0,
                "messages": [{"role": "user", "content": "Say something."}]}))
            .send()
    };
    let cache_of = |res: &reqwest::Response| {
        res.headers()
            .get("x-switchyard-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let first = ask(&rig).await.expect("send");
    assert_eq!(cache_of(&first).as_deref(), Some("miss"));
    let first = first.bytes().await.expect("body");

    rig.rewrite((0.30, 1.20), CACHED);
    assert_eq!(rig.admin_reload().await.0, 200);
    let again = ask(&rig).await.expect("send");
    assert_eq!(
        cache_of(&again).as_deref(),
        Some("hit"),
        "kept across the reload"
    );
    assert_eq!(again.bytes().await.expect("body"), first);

    // The model no longer opts in: its requests are not cached any more.
    rig.rewrite(
        (0.30, 1.20),
        "\n[models.cached]\ndeployments = [\"oa-mini\"]\n",
    );
    assert_eq!(rig.admin_reload().await.0, 200);
    let after = ask(&rig).await.expect("send");
    assert_eq!(after.status(), 200);
    assert_eq!(cache_of(&after), None);
}
