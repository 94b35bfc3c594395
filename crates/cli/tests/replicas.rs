//! Three real `switchyard serve` processes sharing one PostgreSQL database and one Redis
//! key prefix, on loopback, in front of one simulator: what a load balancer over
//! replicas relies on. Each test builds its own cluster (a fresh database, a random
//! prefix) and the tests of this file run one at a time, so six gateway processes never
//! compete for the machine's cores.
//!
//! PostgreSQL and Redis come from `SWITCHYARD_TEST_POSTGRES_URL` and
//! `SWITCHYARD_TEST_REDIS_URL` (defaults: `postgres://postgres@127.0.0.1:5432/test` and
//! `redis://127.0.0.1:6379/`, as `postgres_url` and `redis_url` below say); a test
//! fails, with the URL it tried, when one is absent.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use switchyard_sim::{Fault, SimHandle, SimOptions, Simulator};

const ADMIN: &str = "admin-token-replicas-0123456789";
const LIMITED: &str = "sy-limited-key-0123456789";
const FRUGAL: &str = "sy-frugal-key-0123456789";
const FREE: &str = "sy-free-key-0123456789abc";

/// The tests of this file share the machine's cores; one cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn postgres_url() -> String {
    std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A database of its own for one test, dropped at the end.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Database {
        let admin_url = postgres_url();
        let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is needed at {admin_url} (SWITCHYARD_TEST_POSTGRES_URL): {e}")
        });
        let name = format!("sw_replicas_{}", random_suffix());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        conn.close().await.ok();
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("the Postgres URL names a database");
        let url = format!("{base}/{name}");
        Database {
            admin_url,
            name,
            url,
        }
    }

    async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    async fn drop_now(self) {
        if let Ok(mut conn) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// Deletes every Redis key under a prefix.
async fn clear_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

async fn require_redis(url: &str) {
    let client = redis::Client::open(url).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is needed at {url} (SWITCHYARD_TEST_REDIS_URL): {e}"));
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Redis server of a test's own, to stop and start again.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let mut r = OwnRedis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Replica {
    child: Option<Child>,
    base: String,
    log: PathBuf,
}

impl Replica {
    fn pid(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {}", self.pid());
    }

    /// SIGTERM and wait: the replica drains and flushes its ledger batch.
    fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal("-TERM");
        if let Some(mut c) = self.child.take() {
            let status = c.wait().expect("wait for the replica");
            assert!(
                status.success(),
                "replica exit: {status}; log:\n{}",
                self.log_text()
            );
        }
    }

    /// SIGKILL: no drain, no flush.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Options {
    redis: String,
    on_unavailable: &'static str,
    replicas: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redis: redis_url(),
            on_unavailable: "local",
            replicas: 3,
        }
    }
}

struct Cluster {
    sim: SimHandle,
    db: Option<Database>,
    prefix: String,
    redis: String,
    config: PathBuf,
    replicas: Vec<Replica>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn config_text(
    sim: &str,
    db: &str,
    redis: &str,
    prefix: &str,
    mode: &str,
    price_in: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_grace_ms = 0
drain_timeout_ms = 10000

[timeouts]
first_byte_ms = 10000
total_ms = 30000

[storage]
kind = "postgres"
url = "{db}"

[state]
redis_url = "{redis}"
prefix = "{prefix}"
on_unavailable = "{mode}"

[admin]
token = "{ADMIN}"

[breaker]
consecutive_failures = 1000
window = 1000

[[keys]]
name = "limited"
key = "{LIMITED}"
policy = {{ rpm = 30 }}

[[keys]]
name = "frugal"
key = "{FRUGAL}"
budgets = [{{ period = "month", limit_usd = "0.0003" }}]

[[keys]]
name = "free"
key = "{FREE}"

[providers.primary]
kind = "openai"
base_url = "{sim}/primary/v1"
api_key = "sk-upstream-secret"

[providers.backup]
kind = "openai"
base_url = "{sim}/backup/v1"
api_key = "sk-upstream-secret"

[deployments.primary-mini]
provider = "primary"
model = "gpt-4o-mini"
price = {{ input = {price_in}, output = 0.60 }}

[deployments.backup-mini]
provider = "backup"
model = "gpt-4o-mini"
price = {{ input = 0.30, output = 1.20 }}

[models.chat]
deployments = ["primary-mini", "backup-mini"]

[models.solo]
deployments = ["backup-mini"]
{extra}
"#
    )
}

impl Cluster {
    async fn start(opts: Options) -> Cluster {
        let db = Database::create().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the simulator");
        let sim = Simulator::new(SimOptions {
            api_key: Some("sk-upstream-secret".into()),
            ..Default::default()
        })
        .spawn(listener)
        .await
        .expect("simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = format!("switchyard-test-{}:", random_suffix());
        let config = dir.path().join("switchyard.toml");
        let mut cluster = Cluster {
            sim,
            db: Some(db),
            prefix,
            redis: opts.redis,
            config,
            replicas: Vec::new(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            _dir: dir,
        };
        cluster.write_config(opts.on_unavailable, "0.15", "");
        for i in 0..opts.replicas {
            let r = cluster.spawn_replica(i).await;
            cluster.replicas.push(r);
        }
        cluster
    }

    fn db(&self) -> &Database {
        self.db.as_ref().expect("database")
    }

    fn write_config(&self, mode: &str, price_in: &str, extra: &str) {
        let text = config_text(
            &self.sim.base_url(),
            &self.db().url,
            &self.redis,
            &self.prefix,
            mode,
            price_in,
            extra,
        );
        // Write then rename, so a replica reloading never reads half a file.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("move config into place");
    }

    async fn spawn_replica(&self, i: usize) -> Replica {
        let log = self.config.with_file_name(format!("replica-{i}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--config", path_str(&self.config), "serve"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn switchyard serve");
        let mut replica = Replica {
            child: Some(child),
            base: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = replica.log_text();
            if let Some(rest) = text.split("switchyard listening on ").nth(1) {
                replica.base = rest.lines().next().unwrap_or_default().trim().to_owned();
                break;
            }
            if let Some(Ok(Some(status))) = replica.child.as_mut().map(Child::try_wait) {
                panic!("replica {i} exited with {status}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    fn base(&self, i: usize) -> &str {
        &self.replicas[i % self.replicas.len()].base
    }

    async fn chat(
        &self,
        i: usize,
        key: &str,
        body: &Value,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.client
            .post(format!("{}/v1/chat/completions", self.base(i)))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
    }

    async fn admin(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base(i)))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("admin request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn readyz(&self, i: usize) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}/readyz", self.base(i)))
            .send()
            .await
            .expect("readyz");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Stops every replica that still runs (flushing their ledgers) and returns a pool
    /// on the shared database.
    async fn stop_all(&mut self) -> PgPool {
        for r in &mut self.replicas {
            r.stop();
        }
        self.db().pool().await
    }

    async fn finish(mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
        clear_prefix(&self.redis, &self.prefix).await;
        if let Some(db) = self.db.take() {
            db.drop_now().await;
        }
        self.sim.shutdown();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn hello(model: &str) -> Value {
    json!({"model": model, "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hey [[len:10]] you"}]})
}

async fn status_of(r: Result<reqwest::Response, reqwest::Error>) -> u16 {
    match r {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// Polls `check` until it holds or `within` has passed; returns how long it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rate_limit_is_exact_across_three_replicas() {
    let _serial = SERIAL.lock().await;
    require_redis(&redis_url()).await;
    let cluster = Cluster::start(Options::default()).await;
    let body = hello("solo");
    let statuses = join_all((0..300).map(|i| {
        let cluster = &cluster;
        let body = &body;
        async move { status_of(cluster.chat(i, LIMITED, body).await).await }
    }))
    .await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!("rpm 30 over 3 replicas, 300 concurrent: {ok} admitted, {limited} refused");
    assert_eq!(ok, 30, "statuses: {statuses:?}");
    assert_eq!(limited, 270, "statuses: {statuses:?}");
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_is_never_overspent_across_three_replicas() {
    let _serial = SERIAL.lock().await;
    require_redis(&redis_url()).await;
    let mut cluster = Cluster::start(Options::default()).await;
    // At backup-mini (0.30 / 1.20 USD per M) a request's bound is 12 × 300 + 50 × 1,200
    // = 63,600 nano-USD and its cost 12 × 300 + 10 × 1,200 = 15,600. A cap of
    // 0.0003 USD holds four bounds at once.
    let body = hello("solo");
    let statuses = join_all((0..200).map(|i| {
        let cluster = &cluster;
        let body = &body;
        async move { status_of(cluster.chat(i, FRUGAL, body).await).await }
    }))
    .await;
    let ok = statuses.iter().filter(|s| **s == 200).count() as i64;
    let refused = statuses.iter().filter(|s| **s == 429).count() as i64;
    assert_eq!(ok + refused, 200, "statuses: {statuses:?}");
    let pool = cluster.stop_all().await;
    let (rows, spent): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(cost_nano_usd), 0)::BIGINT FROM requests \
         WHERE key_name = 'frugal' AND status = 200",
    )
    .fetch_one(&pool)
    .await
    .expect("spend");
    println!(
        "budget $0.0003 over 3 replicas, 200 concurrent: {ok} admitted, spent {spent} nano-USD"
    );
    assert_eq!(rows, ok, "one ledger row per admitted request");
    assert!(ok >= 4, "at least four bounds fit the cap: {ok}");
    assert!(refused > 0);
    assert_eq!(
        spent,
        rows * 15_600,
        "each request cost the hand-computed 15,600"
    );
    assert!(spent <= 300_000, "overspent across replicas: {spent}");
    pool.close().await;
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_429_seen_by_one_replica_spares_the_others() {
    let _serial = SERIAL.lock().await;
    require_redis(&redis_url()).await;
    let cluster = Cluster::start(Options::default()).await;
    cluster
        .sim
        .sim
        .set_fault("primary", "gpt-4o-mini", Fault::error(429).retry_after(120));
    let r = cluster.chat(0, FREE, &hello("chat")).await.expect("chat");
    assert_eq!(r.status(), 200, "failed over to the backup");
    assert_eq!(r.headers()["x-switchyard-deployment"], "backup-mini");
    assert_eq!(cluster.sim.sim.requests("primary").len(), 1);
    // The others learn of the exhaustion from the shared state, not from a 429 of
    // their own: their health shows it before they serve a request.
    for i in 1..3 {
        eventually(Duration::from_secs(10), "exhaustion shared", || async {
            let (_, health) = cluster
                .admin(i, reqwest::Method::GET, "/admin/health", None)
                .await;
            health["deployments"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| {
                    d["name"] == "primary-mini" && d["exhausted_for_ms"].as_i64().unwrap_or(0) > 0
                })
        })
        .await;
    }
    for i in [1, 2, 1, 2] {
        let r = cluster.chat(i, FREE, &hello("chat")).await.expect("chat");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-switchyard-deployment"], "backup-mini");
        assert_eq!(
            r.headers()["x-switchyard-attempts"],
            "1",
            "primary skipped, not tried"
        );
    }
    assert_eq!(
        cluster.sim.sim.requests("primary").len(),
        1,
        "only the first replica called the exhausted deployment"
    );
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_replica() {
    let _serial = SERIAL.lock().await;
    require_redis(&redis_url()).await;
    let cluster = Cluster::start(Options::default()).await;
    let (status, created) = cluster
        .admin(
            0,
            reqwest::Method::POST,
            "/admin/keys",
            Some(json!({"name": "temp"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().expect("the new secret").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    let mut created_in = Duration::ZERO;
    for i in 0..3 {
        let took = eventually(
            Duration::from_secs(5),
            "new key admitted everywhere",
            || async { status_of(cluster.chat(i, &secret, &hello("solo")).await).await == 200 },
        )
        .await;
        created_in = created_in.max(took);
    }
    // Measured from just before the revocation is sent, every replica polled at once,
    // each with its own loop: the README promises every replica within a second.
    let revoked_at = Instant::now();
    let (status, _) = cluster
        .admin(
            0,
            reqwest::Method::POST,
            &format!("/admin/keys/{id}/revoke"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let refused_after = join_all((0..3).map(|i| {
        let (cluster, secret) = (&cluster, &secret);
        async move {
            loop {
                let r = cluster
                    .client
                    .get(format!("{}/v1/models", cluster.base(i)))
                    .bearer_auth(secret)
                    .send()
                    .await;
                if status_of(r).await == 401 {
                    return revoked_at.elapsed();
                }
                if revoked_at.elapsed() > Duration::from_secs(10) {
                    return revoked_at.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }))
    .await;
    for (i, took) in refused_after.iter().enumerate() {
        assert!(
            *took <= Duration::from_millis(1000),
            "replica {i} refused the revoked key {took:?} after the revocation (bound: 1 s)"
        );
        // The chat route refuses it alike.
        let r = cluster.chat(i, &secret, &hello("solo")).await;
        assert_eq!(status_of(r).await, 401, "replica {i}");
    }
    let revoked_in = refused_after.into_iter().max().unwrap_or_default();
    // PostgreSQL's key store is never polled: these came by notification.
    println!(
        "a created key reached every replica in {created_in:?}, a revocation in {revoked_in:?}"
    );
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_no_answered_request_of_the_others() {
    let _serial = SERIAL.lock().await;
    require_redis(&redis_url()).await;
    let mut cluster = Cluster::start(Options::default()).await;
    let body = hello("solo");
    let (answered, killed_at) = load_with_kill(&mut cluster, &body).await;
    let survivors: Vec<_> = answered.iter().filter(|a| a.replica != 2).collect();
    let failed: Vec<_> = survivors.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "surviving replicas failed requests: {failed:?}"
    );
    assert!(
        survivors.iter().any(|a| a.done > killed_at),
        "the survivors served after the kill"
    );
    let victim: Vec<_> = answered
        .iter()
        .filter(|a| a.replica == 2 && a.status == 200)
        .collect();
    let pool = cluster.stop_all().await;
    let in_ledger = |ids: Vec<String>| {
        let pool = pool.clone();
        async move {
            let found: Vec<String> =
                sqlx::query_scalar("SELECT request_id FROM requests WHERE request_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&pool)
                    .await
                    .expect("rows");
            found.into_iter().collect::<std::collections::HashSet<_>>()
        }
    };
    let ids: Vec<String> = survivors.iter().map(|a| a.id.clone()).collect();
    let found = in_ledger(ids.clone()).await;
    assert_eq!(
        found.len(),
        ids.len(),
        "every answer of a survivor has its ledger row"
    );
    // The README's bound: a killed replica loses the rows of the requests that
    // finished in its last batch window (5 ms), plus a backlog while the database was
    // slow. With a whole second of margin for a busy machine: every request it
    // answered a second or more before the kill has its row.
    let victim_found = in_ledger(victim.iter().map(|a| a.id.clone()).collect()).await;
    let margin = Duration::from_secs(1);
    let settled: Vec<_> = victim
        .iter()
        .filter(|a| a.done + margin <= killed_at)
        .collect();
    assert!(
        !settled.is_empty(),
        "the killed replica answered requests well before the kill"
    );
    let lost_old: Vec<_> = settled
        .iter()
        .filter(|a| !victim_found.contains(&a.id))
        .collect();
    assert!(
        lost_old.is_empty(),
        "rows of requests answered over {margin:?} before the kill were lost: {lost_old:?}"
    );
    let lost = victim.len() - victim_found.len();
    let recent = victim.len() - settled.len();
    assert!(
        lost <= recent,
        "{lost} rows lost, {recent} answered in the last {margin:?}"
    );
    println!(
        "SIGKILL under load: survivors answered {} requests, all 200, all in the ledger; \
         the killed replica answered {}, of which {lost} rows were lost with it \
         ({recent} answered in the last {margin:?} before the kill)",
        survivors.len(),
        victim.len(),
    );
    pool.close().await;
    cluster.finish().await;
}

/// One request of [`load_with_kill`]: which replica, its status (0: no answer), its
/// request id, and when its answer came.
#[derive(Debug)]
struct Answered {
    replica: usize,
    status: u16,
    id: String,
    done: Instant,
}

/// Sends requests round robin over three replicas with six workers for two seconds,
/// SIGKILLs replica 2, and goes on for one more second (replica 2's share failing).
/// Returns every request and the moment of the kill.
async fn load_with_kill(cluster: &mut Cluster, body: &Value) -> (Vec<Answered>, Instant) {
    let bases: Vec<String> = cluster.replicas.iter().map(|r| r.base.clone()).collect();
    let client = cluster.client.clone();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (bases, client, sent, stop, body) = (
            bases.clone(),
            client.clone(),
            sent.clone(),
            stop.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let replica = sent.fetch_add(1, Ordering::Relaxed) % 3;
                let r = client
                    .post(format!("{}/v1/chat/completions", bases[replica]))
                    .bearer_auth(FREE)
                    .json(&body)
                    .send()
                    .await;
                let (status, id) = match r {
                    Ok(r) => {
                        let id = r
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        (r.status().as_u16(), id)
                    }
                    Err(_) => (0, String::new()),
                };
                out.push(Answered {
                    replica,
                    status,
                    id,
                    done: Instant::now(),
                });
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.replicas[2].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    (all, killed_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_falls_back_to_local_state_then_recovers() {
    let _serial = SERIAL.lock().await;
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start(Options {
        redis: redis.url(),
        ..Options::default()
    })
    .await;
    let shared = |v: &Value| v["state"] == "shared";
    for i in 0..3 {
        let (status, body) = cluster.readyz(i).await;
        assert_eq!(status, 200);
        assert!(shared(&body), "{body}");
        assert_eq!(
            status_of(cluster.chat(i, FREE, &hello("solo")).await).await,
            200
        );
    }
    redis.stop();
    for i in 0..3 {
        // A request that meets the dead connection is served on local state.
        assert_eq!(
            status_of(cluster.chat(i, FREE, &hello("solo")).await).await,
            200
        );
        eventually(Duration::from_secs(20), "readyz says local", || async {
            let (status, body) = cluster.readyz(i).await;
            status == 200 && body["state"] == "local"
        })
        .await;
    }
    redis.restart();
    for i in 0..3 {
        eventually(Duration::from_secs(30), "back on shared state", || async {
            shared(&cluster.readyz(i).await.1)
        })
        .await;
        assert_eq!(
            status_of(cluster.chat(i, FREE, &hello("solo")).await).await,
            200
        );
    }
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_in_closed_mode_refuses_with_state_unavailable() {
    let _serial = SERIAL.lock().await;
    let dead = format!("redis://127.0.0.1:{}/", free_port());
    let cluster = Cluster::start(Options {
        redis: dead,
        on_unavailable: "closed",
        replicas: 1,
    })
    .await;
    let r = cluster.chat(0, FREE, &hello("solo")).await.expect("chat");
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "state_unavailable");
    let (status, body) = cluster.readyz(0).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["state"], "unavailable", "{body}");
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_brings_a_new_model_and_price_with_no_failed_request() {
    let _serial = SERIAL.lock().await;
    require_redis(&redis_url()).await;
    let mut cluster = Cluster::start(Options::default()).await;
    let stop = AtomicBool::new(false);
    let failures = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let load = join_all((0..3).map(|w| {
        let (cluster, stop, failures, done) = (&cluster, &stop, &failures, &done);
        async move {
            // Bounded: at most 2,000 requests per worker, whatever happens.
            for n in 0..2000 {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let s = status_of(cluster.chat(w + n, FREE, &hello("chat")).await).await;
                if s != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));
    let reload = async {
        eventually(Duration::from_secs(60), "load under way", || async {
            done.load(Ordering::Relaxed) >= 30
        })
        .await;
        cluster.write_config(
            "local",
            "1.50",
            "\n[models.chat-new]\ndeployments = [\"primary-mini\"]\n",
        );
        for r in &cluster.replicas {
            r.signal("-HUP");
        }
        for i in 0..3 {
            eventually(
                Duration::from_secs(20),
                "the new model is listed",
                || async {
                    let res = cluster
                        .client
                        .get(format!("{}/v1/models", cluster.base(i)))
                        .bearer_auth(FREE)
                        .send()
                        .await;
                    match res {
                        Ok(r) => r.text().await.unwrap_or_default().contains("\"chat-new\""),
                        Err(_) => false,
                    }
                },
            )
            .await;
        }
        let before = done.load(Ordering::Relaxed);
        eventually(
            Duration::from_secs(60),
            "load goes on after the reload",
            || async { done.load(Ordering::Relaxed) >= before + 30 },
        )
        .await;
        stop.store(true, Ordering::Release);
    };
    tokio::join!(load, reload);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = cluster
            .chat(i, FREE, &hello("chat-new"))
            .await
            .expect("chat");
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["x-request-id"].to_str().expect("id").to_owned());
        let v: Value = r.json().await.expect("json");
        assert!(v["usage"]["prompt_tokens"].as_i64().unwrap_or(0) > 0);
    }
    let pool = cluster.stop_all().await;
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT prompt_tokens, completion_tokens, cost_nano_usd FROM requests WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 3);
    for (prompt, completion, cost) in rows {
        assert_eq!(
            cost,
            prompt * 1_500 + completion * 600,
            "billed at the new input price"
        );
    }
    pool.close().await;
    cluster.finish().await;
}
