//! Credentials obtained and renewed at run time, against the simulator's token
//! endpoints: Google service accounts and Application Default Credentials (Vertex,
//! Gemini), Entra ID (Azure), and the AWS chain (Bedrock: container credentials and
//! web identity through STS). The simulator is told to accept only what it issued,
//! so a request that passes proves the gateway used a fetched credential.
//!
//! The AWS chain reads the process environment; those tests run the gateway in a
//! child process (this test binary, filtered to one ignored test) whose environment
//! is set at spawn, so the test process's own environment is never changed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::{Config, Gateway};
use switchyard_sim::{SimHandle, SimOptions, Simulator};
use tokio::net::TcpListener;

const KEY: &str = "sy-test-key-0123456789";
const PRIVATE_PEM: &str = include_str!("fixtures/credentials/test-only-rsa-private.pem");
const PUBLIC_PEM: &str = include_str!("fixtures/credentials/test-only-rsa-public.pem");
const SA_EMAIL: &str = "gateway@sim-project.iam.gserviceaccount.com";

struct Setup {
    sim: SimHandle,
    gateway: Gateway,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn sim() -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
    let sim = Simulator::new(SimOptions::default())
        .spawn(listener)
        .await
        .expect("sim");
    sim.sim.require_issued_credentials(true);
    sim.sim
        .add_google_service_account(SA_EMAIL, PUBLIC_PEM)
        .expect("public key");
    sim
}

/// A service-account key file whose `token_uri` is the simulator's.
fn write_service_account(dir: &Path, sim: &str) -> PathBuf {
    let path = dir.join("sa.json");
    let key = json!({
        "type": "service_account",
        "project_id": "sim-project",
        "private_key_id": "test-key-1",
        "private_key": PRIVATE_PEM,
        "client_email": SA_EMAIL,
        "client_id": "1234567890",
        "token_uri": format!("{sim}/token"),
    });
    std::fs::write(&path, key.to_string()).expect("write key");
    path
}

fn config_text(provider: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_grace_ms = 0

[timeouts]
first_byte_ms = 5000
total_ms = 10000

[ledger]
enabled = false

[[keys]]
name = "app"
key = "{KEY}"

[breaker]
consecutive_failures = 1000
window = 1000

[providers.p]
{provider}

[deployments.d]
provider = "p"
model = "m-1"

[models.m]
deployments = ["d"]
retry = {{ max_attempts = 1 }}
"#
    )
}

/// The gateway with one provider whose fields are `provider`; `env` plays the
/// environment the configuration is resolved in.
async fn start(
    sim: SimHandle,
    dir: tempfile::TempDir,
    provider: &str,
    env: &[(&str, String)],
) -> Setup {
    let text = config_text(provider);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let config = Config::parse(&text, move |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gw");
    let gateway = Gateway::start_on(config, listener).await.expect("gateway");
    Setup {
        sim,
        gateway,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Setup {
    async fn chat(&self) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/v1/chat/completions", self.gateway.base_url()))
            .bearer_auth(KEY)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The Authorization headers the simulator's `instance` received, in order.
    fn authorizations_at(&self, instance: &str) -> Vec<String> {
        self.sim
            .sim
            .requests(instance)
            .iter()
            .filter(|r| r.path.contains("m-1"))
            .filter_map(|r| r.header("authorization").map(str::to_owned))
            .collect()
    }

    fn authorizations(&self) -> Vec<String> {
        self.authorizations_at("")
    }
}

fn vertex(sim: &str, extra: &str) -> String {
    format!(
        "kind = \"vertex\"\nbase_url = \"{sim}\"\nproject = \"sim-project\"\nlocation = \"us-central1\"\n{extra}"
    )
}

#[tokio::test]
async fn vertex_with_a_service_account_key_file() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_service_account(dir.path(), &sim.base_url());
    let provider = vertex(
        &sim.base_url(),
        &format!("credentials_file = \"{}\"", key.display()),
    );
    let s = start(sim, dir, &provider, &[]).await;
    for _ in 0..3 {
        let (status, body) = s.chat().await;
        assert_eq!(status, 200, "{body}");
    }
    // One token, fetched once and reused from the cache.
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 1);
    let auth = s.authorizations();
    assert_eq!(auth.len(), 3);
    assert!(
        auth.iter().all(|a| a.starts_with("Bearer ya29.sim-sa-")),
        "{auth:?}"
    );
    assert!(auth.windows(2).all(|w| w[0] == w[1]), "{auth:?}");
}

#[tokio::test]
async fn gemini_with_adc_from_an_authorized_user_file() {
    let sim = sim().await;
    sim.sim
        .add_google_authorized_user("client-1.apps", "client-secret-1", "refresh-1");
    let dir = tempfile::tempdir().expect("tempdir");
    let adc = dir.path().join("adc.json");
    let file = json!({
        "type": "authorized_user",
        "client_id": "client-1.apps",
        "client_secret": "client-secret-1",
        "refresh_token": "refresh-1",
        "token_uri": format!("{}/token", sim.base_url()),
    });
    std::fs::write(&adc, file.to_string()).expect("write adc");
    let provider = format!(
        "kind = \"gemini\"\nbase_url = \"{}\"\ncredentials = \"adc\"",
        sim.base_url()
    );
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", adc.display().to_string())];
    let s = start(sim, dir, &provider, &env).await;
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.sim.tokens_issued().google_refresh_token, 1);
    let auth = s.authorizations();
    assert!(
        auth.iter().all(|a| a.starts_with("Bearer ya29.sim-user-")),
        "{auth:?}"
    );
}

#[tokio::test]
async fn vertex_with_adc_from_a_service_account_file_and_from_the_metadata_server() {
    // GOOGLE_APPLICATION_CREDENTIALS naming a service-account key.
    let sim1 = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_service_account(dir.path(), &sim1.base_url());
    let provider = vertex(&sim1.base_url(), "credentials = \"adc\"");
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", key.display().to_string())];
    let s = start(sim1, dir, &provider, &env).await;
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 1);

    // No file anywhere: the metadata server.
    let sim2 = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let host = sim2.base_url().trim_start_matches("http://").to_owned();
    let provider = vertex(&sim2.base_url(), "credentials = \"adc\"");
    let env = [
        ("HOME", dir.path().display().to_string()),
        ("GCE_METADATA_HOST", host),
    ];
    let s = start(sim2, dir, &provider, &env).await;
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    let issued = s.sim.sim.tokens_issued();
    assert_eq!(issued.google_metadata, 1);
    assert_eq!(issued.google_jwt_bearer, 0);
}

fn azure(sim: &str, secret_env: &str) -> String {
    format!(
        "kind = \"azure\"\nendpoint = \"{sim}/azure\"\napi_version = \"2024-10-21\"\n\
         tenant_id = \"tenant-1\"\nclient_id = \"app-1\"\nclient_secret = \"${{{secret_env}}}\"\n\
         authority_host = \"{sim}\""
    )
}

#[tokio::test]
async fn azure_with_entra_id_client_credentials() {
    let sim = sim().await;
    sim.sim
        .add_entra_client("tenant-1", "app-1", "entra-secret-1");
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = azure(&sim.base_url(), "AZ_SECRET");
    let env = [("AZ_SECRET", "entra-secret-1".to_owned())];
    let s = start(sim, dir, &provider, &env).await;
    for _ in 0..2 {
        let (status, body) = s.chat().await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(s.sim.sim.tokens_issued().entra_client_credentials, 1);
    let requests = s.sim.sim.requests("azure");
    let call = requests
        .iter()
        .find(|r| r.path.contains("/openai/deployments/m-1/"))
        .expect("the chat call");
    assert!(call
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer eyJ")));
    assert_eq!(call.header("api-key"), None);
}

#[tokio::test]
async fn a_refused_entra_secret_fails_over_without_leaking_it() {
    let sim = sim().await;
    sim.sim
        .add_entra_client("tenant-1", "app-1", "the-right-one");
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = azure(&sim.base_url(), "AZ_SECRET");
    let env = [("AZ_SECRET", "wrong-secret-value".to_owned())];
    let s = start(sim, dir, &provider, &env).await;
    let (status, body) = s.chat().await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.to_string().contains("wrong-secret-value"), "{body}");
    assert_eq!(s.sim.sim.tokens_issued().entra_client_credentials, 0);
    // No call reached the deployment without a token.
    assert!(s.sim.sim.requests("azure").is_empty());
}

#[tokio::test]
async fn tokens_that_expire_mid_run_are_renewed_with_no_failed_request() {
    let sim = sim().await;
    let lifetime = Duration::from_secs(2);
    sim.sim.set_token_lifetime(lifetime);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_service_account(dir.path(), &sim.base_url());
    let provider = vertex(
        &sim.base_url(),
        &format!("credentials_file = \"{}\"", key.display()),
    );
    let s = start(sim, dir, &provider, &[]).await;
    let started = Instant::now();
    let mut requests = 0;
    // About three lifetimes of sequential traffic, bounded in count too.
    while started.elapsed() < lifetime * 3 && requests < 2_000 {
        let (status, body) = s.chat().await;
        assert_eq!(status, 200, "request {requests}: {body}");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let issued = s.sim.sim.tokens_issued().google_jwt_bearer;
    assert!(issued >= 2, "{issued} tokens for {requests} requests");
    let presented = s.authorizations();
    let distinct: std::collections::BTreeSet<&String> = presented.iter().collect();
    assert!(distinct.len() >= 2, "{distinct:?}");
    // Renewed ahead of expiry, not after a refusal: the upstream saw exactly one call
    // per request, so no expired token was ever presented and retried.
    assert_eq!(
        presented.len(),
        requests,
        "upstream calls for {requests} requests: a token was refused and retried"
    );
}

#[tokio::test]
async fn a_reload_keeps_a_valid_token_unless_the_credential_settings_change() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_service_account(dir.path(), &sim.base_url());
    // The same account with its next key id: other credential settings.
    let copy = dir.path().join("next-key.json");
    let next = std::fs::read_to_string(&key)
        .expect("read key")
        .replace("test-key-1", "test-key-2");
    std::fs::write(&copy, next).expect("write next key");
    let file = dir.path().join("switchyard.toml");
    let sim_url = sim.base_url();
    let with_key = |key: &Path, extra: &str| {
        let provider = vertex(
            &sim_url,
            &format!("credentials_file = \"{}\"", key.display()),
        );
        format!("{}{extra}", config_text(&provider))
    };
    std::fs::write(&file, with_key(&key, "")).expect("write config");
    let gateway = Gateway::start_from_file(&file).await.expect("gateway");
    let s = Setup {
        sim,
        gateway,
        client: reqwest::Client::new(),
        _dir: dir,
    };
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 1);

    // Another model, the provider as it was: the token in the cache goes on.
    let other_model = "\n[models.m2]\ndeployments = [\"d\"]\n";
    std::fs::write(&file, with_key(&key, other_model)).expect("rewrite config");
    let report = s.gateway.reload().await.expect("reload");
    assert_eq!(report.models.added, vec!["m2".to_owned()]);
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 1);

    // Another key: the provider changed, and its first request fetches anew.
    std::fs::write(&file, with_key(&copy, other_model)).expect("rewrite config");
    let report = s.gateway.reload().await.expect("reload");
    assert_eq!(report.providers.changed, vec!["p".to_owned()]);
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 2);
}

#[tokio::test]
async fn concurrent_requests_after_expiry_share_one_renewal() {
    let sim = sim().await;
    sim.sim.set_token_lifetime(Duration::from_secs(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_service_account(dir.path(), &sim.base_url());
    let provider = vertex(
        &sim.base_url(),
        &format!("credentials_file = \"{}\"", key.display()),
    );
    let s = std::sync::Arc::new(start(sim, dir, &provider, &[]).await);
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 1);
    // Let the first token expire; the next one lives long enough for the burst.
    s.sim.sim.set_token_lifetime(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.chat().await })
        })
        .collect();
    for task in burst {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 2);
}

#[tokio::test]
async fn a_revoked_token_is_renewed_once_and_the_request_succeeds() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_service_account(dir.path(), &sim.base_url());
    let provider = vertex(
        &sim.base_url(),
        &format!("credentials_file = \"{}\"", key.display()),
    );
    let s = start(sim, dir, &provider, &[]).await;
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    // The cached token is still within its hour when the upstream stops taking it.
    s.sim.sim.revoke_issued_credentials();
    let (status, body) = s.chat().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 2);
    let auth = s.authorizations();
    // First call, the refused one with the old token, the retry with the new one.
    assert_eq!(auth.len(), 3, "{auth:?}");
    assert_eq!(auth[0], auth[1]);
    assert_ne!(auth[1], auth[2]);
    // Later requests use the new token without another renewal.
    let (status, _) = s.chat().await;
    assert_eq!(status, 200);
    assert_eq!(s.sim.sim.tokens_issued().google_jwt_bearer, 2);
}

// ------------------------------------------------------------------ AWS chain

const CHILD: &str = "bedrock_chain_child";

/// Runs [`bedrock_chain_child`] in a child process with `env` (and the AWS variables
/// of this process removed), and says whether it passed.
fn run_child(sim: &str, env: &[(&str, String)], dir: &Path) {
    let marker = dir.join("child-passed");
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        CHILD,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SWITCHYARD_TEST_CHILD_SIM", sim)
        .env("SWITCHYARD_TEST_CHILD_MARKER", &marker)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the child test");
    assert!(
        out.status.success() && marker.exists(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_with_container_credentials() {
    let sim = sim().await;
    sim.sim.set_token_lifetime(Duration::from_secs(2));
    sim.sim
        .set_container_authorization(Some("container-auth-token"));
    let dir = tempfile::tempdir().expect("tempdir");
    let base = sim.base_url();
    let env = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{base}/ecs/credentials"),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "container-auth-token".to_owned(),
        ),
    ];
    let (base2, env2, path) = (base.clone(), env.clone(), dir.path().to_owned());
    tokio::task::spawn_blocking(move || run_child(&base2, &env2, &path))
        .await
        .expect("child");
    let issued = sim.sim.tokens_issued();
    assert!(issued.container >= 2, "{issued:?}");
    assert_eq!(issued.sts_web_identity, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_with_web_identity_through_sts() {
    let sim = sim().await;
    sim.sim.set_token_lifetime(Duration::from_secs(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("web-identity-token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.sim-oidc-token.sig").expect("token");
    let base = sim.base_url();
    let env = [
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/gateway".to_owned(),
        ),
        ("AWS_ROLE_SESSION_NAME", "switchyard-test".to_owned()),
        ("AWS_ENDPOINT_URL_STS", format!("{base}/sts")),
    ];
    let (base2, env2, path) = (base.clone(), env.clone(), dir.path().to_owned());
    tokio::task::spawn_blocking(move || run_child(&base2, &env2, &path))
        .await
        .expect("child");
    let issued = sim.sim.tokens_issued();
    assert!(issued.sts_web_identity >= 2, "{issued:?}");
    assert_eq!(issued.container, 0);
}

/// The gateway side of the Bedrock tests, in a child process whose environment the
/// parent set: sequential requests over about three credential lifetimes, all 200.
#[tokio::test]
#[ignore = "run by the bedrock_* tests in a child process with its own environment"]
async fn bedrock_chain_child() {
    let sim = std::env::var("SWITCHYARD_TEST_CHILD_SIM").expect("run by a parent test");
    let marker = std::env::var("SWITCHYARD_TEST_CHILD_MARKER").expect("run by a parent test");
    let provider = format!("kind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"{sim}\"");
    let config = Config::parse(&config_text(&provider), |_| None).expect("valid config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gw");
    let gateway = Gateway::start_on(config, listener).await.expect("gateway");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(6) && requests < 2_000 {
        let r = client
            .post(format!("{}/v1/chat/completions", gateway.base_url()))
            .bearer_auth(KEY)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "request {requests}: {body}");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(marker, requests.to_string()).expect("marker");
}
