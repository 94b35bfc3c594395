//! `switchyard serve` reloads its configuration file on SIGHUP: the real binary, the
//! real signal, a simulator process behind it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KEY: &str = "sy-cli-reload-key-0123";

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `switchyard ARGS` and waits (bounded) for the stderr line that starts with
/// `prefix`; returns the process and the rest of that line. Later stderr lines go to
/// the returned channel.
fn spawn_until(args: &[&str], prefix: &str) -> (Running, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_LOG", "info")
        .env("RELOAD_TEST_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end even when nobody listens any more: a closed pipe would make
        // the child's next write to stderr fail (`eprintln!` panics on it), killing it.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no `{prefix}` line from switchyard {args:?}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return (running, rest.trim().to_owned(), rx);
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; (status, body).
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_as(addr, KEY, method, path, body)
}

/// [`http`] with another bearer token.
fn http_as(addr: &str, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn config(sim: &str, ledger: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_grace_ms = 0

[ledger]
path = "{ledger}"

[[keys]]
name = "app"
key = "${{RELOAD_TEST_KEY}}"

[providers.oa]
kind = "openai"
base_url = "{sim}/v1"
api_key = "sk-upstream"

[deployments.oa-mini]
provider = "oa"
model = "gpt-4o-mini"
price = {{ input = 0.15, output = 0.60 }}

[models.gpt-4o-mini]
deployments = ["oa-mini"]
{extra}
"#
    )
}

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Hello"}}]}}"#)
}

#[test]
fn sighup_reloads_the_file_and_a_new_model_serves() {
    let (_sim, sim_base, _) = spawn_until(
        &["sim", "--listen", "127.0.0.1:0"],
        "switchyard simulator listening on",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("switchyard.toml");
    let ledger = dir.path().join("ledger.db");
    let ledger = ledger.to_str().expect("utf-8");
    std::fs::write(&file, config(&sim_base, ledger, "")).expect("write");
    let file_arg = file.to_str().expect("utf-8");

    let (gateway, base, logs) =
        spawn_until(&["--config", file_arg, "serve"], "switchyard listening on");
    let addr = base.trim_start_matches("http://").to_owned();
    let (status, body) = http(&addr, "GET", "/v1/models", None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("\"new-model\""), "{body}");
    let (status, _) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat("new-model")),
    );
    assert_eq!(status, 404);

    let pid = gateway.0.id().to_string();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(ok.success());
    };

    // An invalid file: logged, refused, and the gateway keeps serving.
    std::fs::write(
        &file,
        config(
            &sim_base,
            ledger,
            "\n[models.broken]\ndeployments = [\"nope\"]\n",
        ),
    )
    .expect("write");
    hup();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        let line = logs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a log line for the refused reload");
        if line.contains("reload refused") {
            break line;
        }
    };
    assert!(
        refusal.contains("models.broken.deployments[0]"),
        "{refusal}"
    );
    let (status, _) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat("gpt-4o-mini")),
    );
    assert_eq!(status, 200);

    let extra = r#"
[deployments.new-dep]
provider = "oa"
model = "gpt-4o"
price = { input = 2.5, output = 10.0 }

[models.new-model]
deployments = ["new-dep"]
"#;
    std::fs::write(&file, config(&sim_base, ledger, extra)).expect("rewrite");
    hup();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(&addr, "GET", "/v1/models", None);
        assert_eq!(status, 200, "{body}");
        if body.contains("\"new-model\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new model never appeared: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat("new-model")),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chat.completion"), "{body}");
    // The process is the one started at first: SIGHUP did not end it.
    let mut gateway = gateway;
    assert!(gateway.0.try_wait().expect("wait").is_none());
}

#[test]
fn config_check_and_a_reload_accept_and_refuse_the_same_files() {
    const ADMIN: &str = "admin-token-reload-parity-0123456789";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("switchyard.toml");
    let ledger = dir.path().join("ledger.db");
    let ledger = ledger.to_str().expect("utf-8");
    // Nothing is called upstream: a port nothing listens on will do.
    let text = |extra: &str| {
        config(
            "http://127.0.0.1:9",
            ledger,
            &format!("\n[admin]\ntoken = \"{ADMIN}\"\n{extra}"),
        )
    };
    std::fs::write(&file, text("")).expect("write");
    let file_arg = file.to_str().expect("utf-8");
    let (_gateway, base, _logs) =
        spawn_until(&["--config", file_arg, "serve"], "switchyard listening on");
    let addr = base.trim_start_matches("http://").to_owned();

    let cases = [
        (
            "a new model",
            "\n[models.other]\ndeployments = [\"oa-mini\"]\n",
            true,
        ),
        (
            "an unknown deployment",
            "\n[models.broken]\ndeployments = [\"nope\"]\n",
            false,
        ),
        ("an unknown field", "\n[server2]\nlisten = 1\n", false),
        (
            "a price that is not a number",
            "\n[deployments.bad]\nprovider = \"oa\"\nmodel = \"m\"\nprice = { input = \"cheap\", output = 1.0 }\n",
            false,
        ),
    ];
    for (what, extra, valid) in cases {
        std::fs::write(&file, text(extra)).expect("write");
        let check = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["config", "check", file_arg])
            .env("RELOAD_TEST_KEY", KEY)
            .output()
            .expect("run config check");
        let (status, body) = http_as(&addr, ADMIN, "POST", "/admin/reload", Some("{}"));
        assert_eq!(
            check.status.success(),
            valid,
            "config check on {what}: {check:?}"
        );
        if !valid {
            assert_eq!(check.status.code(), Some(2), "{what}: {check:?}");
        }
        assert_eq!(
            (200..300).contains(&status),
            valid,
            "reload of {what}: {status} {body}"
        );
    }
}
