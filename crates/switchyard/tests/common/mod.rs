//! Shared setup for the gateway's integration tests: the simulator and the gateway,
//! both on port 0, with a ledger in a temporary directory.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;
use switchyard::{Config, Gateway};
use switchyard_sim::{SimHandle, SimOptions, Simulator};
use tokio::net::TcpListener;

pub const KEY: &str = "sy-test-key-0123456789";
pub const OTHER_KEY: &str = "sy-test-key-other-99999";

/// Breakers that do not open within a test's handful of failures.
pub const PATIENT_BREAKER: &str = "[breaker]\nconsecutive_failures = 1000\nwindow = 1000\n";

pub struct Harness {
    pub sim: SimHandle,
    pub gateway: Option<Gateway>,
    pub base: String,
    pub client: reqwest::Client,
    pub ledger: PathBuf,
    _dir: tempfile::TempDir,
}

/// A config with one model per scenario the tests need. `{sim}` is the simulator.
fn config_text(sim: &str, ledger: &str, extra: &str, grace_ms: u64) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
drain_grace_ms = {grace_ms}
drain_timeout_ms = 5000

[timeouts]
first_byte_ms = 2000
total_ms = 10000

[ledger]
path = "{ledger}"

[[keys]]
name = "app"
key = "{KEY}"

[[keys]]
name = "other"
key = "{OTHER_KEY}"

[providers.oa]
kind = "openai"
base_url = "{sim}/v1"
api_key = "sk-upstream-secret"

[providers.oa-primary]
kind = "openai"
base_url = "{sim}/primary/v1"
api_key = "sk-upstream-secret"

[providers.oa-backup]
kind = "openai"
base_url = "{sim}/backup/v1"
api_key = "sk-upstream-secret"

[providers.az]
kind = "azure"
endpoint = "{sim}/azure"
api_version = "2024-10-21"
api_key = "azure-upstream-secret"

[providers.az1]
kind = "azure"
endpoint = "{sim}/azurev1"
api_key = "azure-upstream-secret"

[deployments.oa-mini]
provider = "oa"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60, cached_input = 0.075 }}

[deployments.primary-mini]
provider = "oa-primary"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}
timeouts = {{ first_byte_ms = 300 }}

[deployments.backup-mini]
provider = "oa-backup"
model = "gpt-4o-mini"
price = {{ input = 0.30, output = 1.20 }}

[deployments.az-mini]
provider = "az"
model = "mini-prod"
price = {{ input = 0.165, output = 0.66 }}

[deployments.az1-mini]
provider = "az1"
model = "mini-v1"
price = {{ input = 0.165, output = 0.66 }}

[deployments.embed]
provider = "oa"
model = "text-embedding-3-small"
price = {{ input = 0.02 }}

[models.gpt-4o-mini]
deployments = ["oa-mini"]

[models.failover]
deployments = ["primary-mini", "backup-mini"]

[models.primary-only]
deployments = ["primary-mini"]

[models.azure-classic]
deployments = ["az-mini"]

[models.azure-v1]
deployments = ["az1-mini"]

[models.embed]
deployments = ["embed"]
{extra}
"#
    )
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with("").await
    }

    pub async fn start_with(extra: &str) -> Harness {
        Harness::start_with_sim(|_| extra.to_owned()).await
    }

    /// Like `start_with`, with extra config that may name the simulator's base URL.
    /// Shutdown closes the listener at once (no readiness grace).
    pub async fn start_with_sim(extra: impl FnOnce(&str) -> String) -> Harness {
        Harness::start_with_grace(extra, 0).await
    }

    /// Like `start_with_sim`, with `server.drain_grace_ms = grace_ms`.
    pub async fn start_with_grace(extra: impl FnOnce(&str) -> String, grace_ms: u64) -> Harness {
        Harness::start_edited(extra, grace_ms, |text| text).await
    }

    /// Like `start_with_sim`, with the whole config text passed through `edit` (for
    /// fields of the tables the base config already has, such as `[ledger]`).
    pub async fn start_edited(
        extra: impl FnOnce(&str) -> String,
        grace_ms: u64,
        edit: impl FnOnce(String) -> String,
    ) -> Harness {
        let sim_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let sim = Simulator::new(SimOptions::default())
            .spawn(sim_listener)
            .await
            .expect("sim");
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = dir.path().join("ledger.db");
        let extra = extra(&sim.base_url());
        let text = config_text(
            &sim.base_url(),
            ledger.to_str().expect("utf-8 path"),
            &extra,
            grace_ms,
        );
        let text = edit(text);
        let config = Config::parse(&text, |_| None).expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gw");
        let gateway = Gateway::start_on(config, listener).await.expect("gateway");
        let base = gateway.base_url();
        Harness {
            sim,
            gateway: Some(gateway),
            base,
            client: reqwest::Client::new(),
            ledger,
            _dir: dir,
        }
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.post("/v1/chat/completions")
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    /// `GET /metrics` with the admin token `admin`: its text, after checking the status
    /// and the OpenMetrics content type.
    pub async fn scrape(&self, admin: &str) -> String {
        let res = self
            .client
            .get(format!("{}/metrics", self.base))
            .bearer_auth(admin)
            .send()
            .await
            .expect("scrape");
        assert_eq!(res.status(), 200);
        assert!(res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/openmetrics-text")));
        res.text().await.expect("text")
    }

    /// Stops the gateway (flushing the ledger) and opens the ledger for reading.
    pub async fn finish(&mut self) -> sqlx::SqlitePool {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await.expect("shutdown");
        }
        let url = format!("sqlite://{}?mode=ro", self.ledger.display());
        sqlx::SqlitePool::connect(&url).await.expect("open ledger")
    }
}

pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}
