//! The processes of a run: the upstream, and each proxy under test with its
//! generated configuration, pinned with `taskset`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use switchyard_bench::load::connect;

/// The bearer key every arm is called with: long enough for Switchyard, and shaped
/// like the `sk-…` master key LiteLLM insists on.
pub const KEY: &str = "sk-bench-0123456789abcdef";

/// A child process that is stopped when dropped, so that a failing harness leaves
/// nothing running.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running; when it is not, why.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            )),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Spawns `program args…` with stdout and stderr into `log`; pinned to `core` with
/// taskset when given (taskset execs the program, so the pid is the program's).
fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    core: Option<usize>,
    log: PathBuf,
) -> Result<Proc, String> {
    let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
    })
}

/// `GET path` answers 2xx.
pub async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut sender) = connect(addr).await else {
        return false;
    };
    let Ok(host) = HeaderValue::from_str(&addr.to_string()) else {
        return false;
    };
    let Ok(req) = Request::get(path)
        .header(HOST, host)
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    match sender.send_request(req).await {
        Ok(res) => {
            let ok = res.status().is_success();
            let _ = res.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

/// Waits until `GET path` answers 2xx, the process dies, or `limit` passes.
async fn wait_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(), String> {
    let until = Instant::now() + limit;
    loop {
        if let Some(why) = proc.exited() {
            return Err(why);
        }
        if http_ok(addr, path).await {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!(
                "{} did not answer GET {path} within {limit:?}; last lines of {}:\n{}",
                proc.name,
                proc.log.display(),
                tail(&proc.log, 15)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The upstream: on the harness's own core (inherited), address read from its output.
pub async fn start_upstream(
    bin_dir: &Path,
    work: &Path,
    chunks: usize,
    interval_ms: u64,
    delay_ms: u64,
) -> Result<(Proc, SocketAddr), String> {
    let port = free_port()?;
    let addr = loopback(port);
    let args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--chunks".to_owned(),
        chunks.to_string(),
        "--chunk-interval-ms".to_owned(),
        interval_ms.to_string(),
        "--delay-ms".to_owned(),
        delay_ms.to_string(),
    ];
    let mut proc = spawn(
        "bench-upstream",
        &bin_dir.join("bench-upstream"),
        &args,
        &[],
        None,
        work.join("upstream.log"),
    )?;
    wait_ready(&mut proc, addr, "/healthz", Duration::from_secs(10)).await?;
    Ok((proc, addr))
}

/// The bare forwarder on `core`.
pub async fn start_forwarder(
    bin_dir: &Path,
    work: &Path,
    upstream: SocketAddr,
    core: usize,
) -> Result<(Proc, SocketAddr), String> {
    let addr = loopback(free_port()?);
    let args = vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--upstream".to_owned(),
        format!("http://{upstream}"),
    ];
    let mut proc = spawn(
        "bench-forwarder",
        &bin_dir.join("bench-forwarder"),
        &args,
        &[],
        Some(core),
        work.join("forwarder.log"),
    )?;
    wait_ready(&mut proc, addr, "/healthz", Duration::from_secs(10)).await?;
    Ok((proc, addr))
}

/// Where a Switchyard arm keeps its ledger and its run-time state.
pub enum Backend {
    /// The SQLite ledger in the work dir, state in process (the default deployment).
    Sqlite,
    /// `[ledger] enabled = false`, state in process.
    NoLedger,
    /// As `Sqlite`, each model with a shadow candidate that takes every plain request.
    SqliteShadow,
    /// Ledger and key store in a PostgreSQL database made for the run, rate limits and
    /// budgets in Redis under a prefix of the run's own.
    Shared {
        database_url: String,
        redis_url: String,
        prefix: String,
    },
}

/// The PostgreSQL server (`BENCH_POSTGRES_URL`, else the test suite's
/// `SWITCHYARD_TEST_POSTGRES_URL`, else the local default).
fn postgres_url() -> String {
    std::env::var("BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("SWITCHYARD_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("BENCH_REDIS_URL")
        .or_else(|_| std::env::var("SWITCHYARD_TEST_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The database name of a run: letters, digits and underscores only.
fn bench_database(stamp: &str) -> String {
    let clean: String = stamp
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("switchyard_bench_{clean}")
}

impl Backend {
    /// Creates the run's database (dropping a leftover of the same name) and checks
    /// that Redis answers.
    pub async fn shared(stamp: &str) -> Result<Backend, String> {
        use sqlx::Connection;
        let admin = postgres_url();
        let name = bench_database(stamp);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::query(&sql)
                .execute(&mut conn)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let redis = redis_url();
        let client =
            redis::Client::open(redis.as_str()).map_err(|e| format!("Redis at {redis}: {e}"))?;
        let mut r = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("Redis at {redis}: {e}"))?;
        redis::cmd("PING")
            .query_async::<String>(&mut r)
            .await
            .map_err(|e| format!("Redis at {redis}: {e}"))?;
        Ok(Backend::Shared {
            database_url: format!("{base}/{name}"),
            redis_url: redis,
            prefix: format!("switchyard-bench-{}:", stamp.to_ascii_lowercase()),
        })
    }

    fn tag(&self) -> &'static str {
        match self {
            Backend::Sqlite => "ledger",
            Backend::NoLedger => "noledger",
            Backend::Shared { .. } => "shared",
            Backend::SqliteShadow => "shadow",
        }
    }
}

/// Drops the run's database and Redis keys, if the shared arm made them.
pub async fn drop_shared(stamp: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            bench_database(stamp)
        );
        let _ = sqlx::query(&sql).execute(&mut conn).await;
        let _ = conn.close().await;
    }
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut r) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let pattern = format!("switchyard-bench-{}:*", stamp.to_ascii_lowercase());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut r)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _ = redis::cmd("DEL").arg(keys).query_async::<i64>(&mut r).await;
    }
}

/// The Switchyard configuration for one arm: one provider (the upstream), one
/// deployment and logical model per upstream model name, one key from the
/// environment, the ledger on or off (or in PostgreSQL, with state in Redis). With
/// `governance`, the key also carries rate limits and a budget, set far above anything
/// the run can reach, so that every request pays for the checks and none is refused.
pub fn switchyard_config(
    listen: SocketAddr,
    upstream: SocketAddr,
    backend: &Backend,
    sqlite: &Path,
    models: &[&str],
    governance: bool,
) -> String {
    let mut s = format!(
        "# Generated by bench-harness for one run; see bench/README.md.\n\
         [server]\nlisten = \"{listen}\"\n\n"
    );
    match backend {
        Backend::Sqlite | Backend::SqliteShadow => s.push_str(&format!(
            "[ledger]\npath = \"{}\"\nenabled = true\n\n",
            sqlite.display()
        )),
        Backend::NoLedger => s.push_str("[ledger]\nenabled = false\n\n"),
        Backend::Shared {
            database_url,
            redis_url,
            prefix,
        } => s.push_str(&format!(
            "[storage]\nkind = \"postgres\"\nurl = \"{database_url}\"\n\n\
             [state]\nredis_url = \"{redis_url}\"\nprefix = \"{prefix}\"\n\n"
        )),
    }
    s.push_str("[[keys]]\nname = \"bench\"\nkey = \"${SWITCHYARD_BENCH_KEY}\"\n");
    if governance {
        s.push_str(
            "policy = { rpm = 1000000000, tpm = 1000000000000 }\n\
             budgets = [{ period = \"month\", limit_usd = 1000000000 }]\n",
        );
    }
    s.push_str("\n[providers.upstream]\nkind = \"openai\"\n");
    s.push_str(&format!("base_url = \"http://{upstream}/v1\"\n\n"));
    for (i, m) in models.iter().enumerate() {
        s.push_str(&format!(
            "[deployments.d{i}]\nprovider = \"upstream\"\nmodel = \"{m}\"\n\
             price = {{ input = 0.15, output = 0.60 }}\n\n\
             [models.\"{m}\"]\ndeployments = [\"d{i}\"]\n\n"
        ));
        if matches!(backend, Backend::SqliteShadow) {
            s.push_str(&format!(
                "[deployments.shadow{i}]\nprovider = \"upstream\"\nmodel = \"{m}\"\n\
                 price = {{ input = 0.15, output = 0.60 }}\n\n\
                 [models.\"{m}\".shadow]\ndeployment = \"shadow{i}\"\nsample_rate = 1.0\n\
                 budget_usd = 1000000000\n\n"
            ));
        }
    }
    s
}

/// A running Switchyard and whether its key has rate limits and a budget (builds
/// from before those existed refuse the fields; they run without).
pub struct Switchyard {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub governance: bool,
}

/// `switchyard serve` on `core` with a generated configuration.
pub async fn start_switchyard(
    binary: &Path,
    work: &Path,
    upstream: SocketAddr,
    backend: Backend,
    models: &[&str],
    core: usize,
) -> Result<Switchyard, String> {
    let addr = loopback(free_port()?);
    let tag = backend.tag();
    let db = work.join(format!("switchyard-{tag}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let config_path = work.join(format!("switchyard-{tag}.toml"));
    let env = [
        ("SWITCHYARD_BENCH_KEY", KEY.to_owned()),
        ("NO_COLOR", "1".to_owned()),
    ];
    let mut governance = true;
    for attempt in [true, false] {
        governance = attempt;
        let config = switchyard_config(addr, upstream, &backend, &db, models, governance);
        fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let check = Command::new(binary)
            .args(["config", "check"])
            .arg(&config_path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if check.status.success() {
            break;
        }
        let why = String::from_utf8_lossy(&check.stderr).into_owned()
            + &String::from_utf8_lossy(&check.stdout);
        if !(governance && why.contains("policy")) {
            return Err(format!(
                "switchyard config check refused the configuration: {why}"
            ));
        }
    }
    let args = vec![
        "serve".to_owned(),
        "--config".to_owned(),
        config_path.display().to_string(),
    ];
    let mut proc = spawn(
        &format!("switchyard ({tag})"),
        binary,
        &args,
        &env,
        Some(core),
        work.join(format!("switchyard-{tag}.log")),
    )?;
    wait_ready(&mut proc, addr, "/healthz", Duration::from_secs(20)).await?;
    Ok(Switchyard {
        proc,
        addr,
        governance,
    })
}

/// LiteLLM's proxy on `core`: every model as `openai/NAME` at the upstream, the
/// master key for auth, no database, offline cost map.
pub async fn start_litellm(
    litellm: &Path,
    work: &Path,
    upstream: SocketAddr,
    models: &[&str],
    core: usize,
) -> Result<(Proc, SocketAddr), String> {
    let addr = loopback(free_port()?);
    let mut yaml = String::from("# Generated by bench-harness for one run.\nmodel_list:\n");
    for m in models {
        yaml.push_str(&format!(
            "  - model_name: \"{m}\"\n    litellm_params:\n      model: \"openai/{m}\"\n      \
             api_base: \"http://{upstream}/v1\"\n      api_key: \"sk-upstream-unused\"\n"
        ));
    }
    yaml.push_str(&format!(
        "general_settings:\n  master_key: \"{KEY}\"\nlitellm_settings:\n  telemetry: false\n"
    ));
    let config_path = work.join("litellm.yaml");
    fs::write(&config_path, yaml).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let args = vec![
        "--config".to_owned(),
        config_path.display().to_string(),
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        addr.port().to_string(),
    ];
    let env = [
        ("LITELLM_LOCAL_MODEL_COST_MAP", "True".to_owned()),
        ("LITELLM_TELEMETRY", "False".to_owned()),
        ("NO_PROXY", "127.0.0.1,localhost".to_owned()),
    ];
    let mut proc = spawn(
        "litellm",
        litellm,
        &args,
        &env,
        Some(core),
        work.join("litellm.log"),
    )?;
    wait_ready(
        &mut proc,
        addr,
        "/health/liveliness",
        Duration::from_secs(180),
    )
    .await?;
    Ok((proc, addr))
}

/// `written=N, dropped=M` from the line `switchyard serve` prints when it stops.
pub fn ledger_totals(log: &Path) -> Option<(u64, u64)> {
    let file = File::open(log).ok()?;
    let line = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("switchyard stopped"))
        .last()?;
    let field = |name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    Some((field("written")?, field("dropped")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_every_model() {
        let c = switchyard_config(
            loopback(8080),
            loopback(9000),
            &Backend::NoLedger,
            Path::new("unused.db"),
            &["bench", "bench-25x200"],
            true,
        );
        assert!(c.contains("enabled = false"));
        assert!(c.contains("budgets = [{ period = \"month\""));
        assert!(c.contains("[models.\"bench-25x200\"]"));
        assert!(c.contains("base_url = \"http://127.0.0.1:9000/v1\""));
    }

    #[test]
    fn the_shared_arm_puts_the_ledger_in_postgres_and_state_in_redis() {
        let shared = Backend::Shared {
            database_url: "postgres://postgres@127.0.0.1:5432/switchyard_bench_x".into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            prefix: "switchyard-bench-x:".into(),
        };
        let c = switchyard_config(
            loopback(8080),
            loopback(9000),
            &shared,
            Path::new("unused.db"),
            &["bench"],
            true,
        );
        assert!(c.contains("[storage]\nkind = \"postgres\""), "{c}");
        assert!(c.contains("prefix = \"switchyard-bench-x:\""), "{c}");
        assert!(!c.contains("[ledger]"), "{c}");
        assert_eq!(
            bench_database("20261204T053000Z"),
            "switchyard_bench_20261204t053000z"
        );
    }
}
