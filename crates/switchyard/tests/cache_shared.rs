//! The response cache in Redis (`[state]`): what one gateway stores, another serves
//! without an upstream call, byte for byte, never across tenants; entries expire in
//! Redis; and a Redis that does not answer turns lookups into misses, never into
//! errors. Every test uses its own key prefix and deletes its keys at the end; Redis is
//! at `SWITCHYARD_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`) and its absence
//! fails the test with that message.

mod common;

use std::time::{Duration, Instant};

use common::{sse_data, user, Harness, KEY, OTHER_KEY};
use serde_json::{json, Value};

const ADMIN: &str = "sy-admin-shared-cache-01";

fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

fn random_prefix() -> String {
    format!("sytest:{:016x}:", rand::random::<u64>())
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let con = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await;
    match con {
        Ok(Ok(con)) => con,
        _ => panic!(
            "these tests need Redis at {url} (set SWITCHYARD_TEST_REDIS_URL); it does not answer"
        ),
    }
}

/// The keys under `prefix` that hold cached answers.
async fn cache_keys(prefix: &str) -> Vec<String> {
    let mut con = redis_connection().await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}cache:*"))
        .query_async(&mut con)
        .await
        .expect("KEYS")
}

/// Deletes every key under `prefix`.
async fn cleanup(prefix: &str) {
    let mut con = redis_connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut con)
            .await
            .expect("DEL");
    }
}

/// The cached models, shared state at `url` under `prefix`, and the extra config.
fn config(url: &str, prefix: &str, more: &str) -> String {
    format!(
        r#"
[state]
redis_url = "{url}"
prefix = "{prefix}"
on_unavailable = "local"
timeout_ms = 300

[models.cached]
deployments = ["oa-mini"]
cache = {{ ttl_s = 3600 }}
{more}
"#
    )
}

/// Chat completions calls a gateway's upstream received.
fn upstream_calls(h: &Harness) -> usize {
    h.sim
        .sim
        .requests("")
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

fn request(text: &str) -> Value {
    json!({"model": "cached", "messages": user(text), "temperature": 0})
}

/// Status, `x-switchyard-cache` and the body.
async fn chat_as(h: &Harness, key: &str, body: &Value) -> (u16, Option<String>, bytes::Bytes) {
    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    let cache = res
        .headers()
        .get("x-switchyard-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, cache, res.bytes().await.expect("body"))
}

/// The streamed text and whether the stream ended with `[DONE]`.
fn streamed_text(body: &[u8]) -> (String, bool) {
    let data = sse_data(&String::from_utf8_lossy(body));
    let text = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk"))
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    (text, data.last().map(String::as_str) == Some("[DONE]"))
}

fn streaming(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_one_gateway_is_a_hit_on_another() {
    let prefix = random_prefix();
    let _ = redis_connection().await; // fails clearly without Redis
    let url = redis_url();
    let a = Harness::start_with(&config(&url, &prefix, "")).await;
    let b = Harness::start_with(&config(&url, &prefix, "")).await;

    let ask = request("Which platform for Chur?");
    let (status, cache, first) = chat_as(&a, KEY, &ask).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    assert_eq!(upstream_calls(&a), 1);
    let (status, cache, second) = chat_as(&b, KEY, &ask).await;
    assert_eq!((status, cache.as_deref()), (200, Some("hit")));
    assert_eq!(
        second, first,
        "byte-identical to the first gateway's answer"
    );
    assert_eq!(
        upstream_calls(&b),
        0,
        "no upstream call from the second gateway"
    );

    // One entry, under the prefix, that Redis expires within the TTL.
    let keys = cache_keys(&prefix).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let hex = keys[0]
        .strip_prefix(&format!("{prefix}cache:"))
        .expect("key");
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut con = redis_connection().await;
    let left: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .expect("PTTL");
    assert!(left > 0 && left <= 3_600_000, "{left}");

    // A streamed miss on B is assembled, stored, and a hit on A, whole or streamed.
    let ask = request("Which platform for Davos?");
    let (status, cache, raw) = chat_as(&b, KEY, &streaming(ask.clone())).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    let (text, done) = streamed_text(&raw);
    assert!(done && !text.is_empty());
    assert_eq!(upstream_calls(&b), 1);
    let (_, cache, whole) = chat_as(&a, KEY, &ask).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    let whole: Value = serde_json::from_slice(&whole).expect("json");
    assert_eq!(whole["choices"][0]["message"]["content"], text.as_str());
    let (_, cache, raw) = chat_as(&a, KEY, &streaming(ask)).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!(streamed_text(&raw), (text, true));
    assert_eq!(upstream_calls(&a), 1);
    assert_eq!(cache_keys(&prefix).await.len(), 2);

    // A value that is not ours (another type under the key) is a miss, not an
    // error, and the fresh answer replaces it.
    let ask = request("Which platform for Chur?");
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .expect("DEL");
    let _: i64 = redis::cmd("RPUSH")
        .arg(&keys[0])
        .arg("not an answer")
        .query_async(&mut con)
        .await
        .expect("RPUSH");
    let (status, cache, _) = chat_as(&b, KEY, &ask).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    assert_eq!(upstream_calls(&b), 2);
    assert_eq!(chat_as(&a, KEY, &ask).await.1.as_deref(), Some("hit"));
    assert_eq!(upstream_calls(&a), 1);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn redis_expires_entries_after_their_ttl() {
    let prefix = random_prefix();
    let _ = redis_connection().await;
    let brief = "\n[models.brief]\ndeployments = [\"oa-mini\"]\ncache = { ttl_s = 1 }\n";
    let h = Harness::start_with(&config(&redis_url(), &prefix, brief)).await;
    let ask = json!({"model": "brief", "messages": user("Is the 8:02 on time?"), "temperature": 0});
    assert_eq!(chat_as(&h, KEY, &ask).await.1.as_deref(), Some("miss"));
    let keys = cache_keys(&prefix).await;
    assert_eq!(keys.len(), 1);
    let mut con = redis_connection().await;
    let left: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .expect("PTTL");
    assert!(left > 0 && left <= 1000, "{left}");
    assert_eq!(chat_as(&h, KEY, &ask).await.1.as_deref(), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cache_keys(&prefix).await.is_empty(), "Redis dropped it");
    assert_eq!(chat_as(&h, KEY, &ask).await.1.as_deref(), Some("miss"));
    assert_eq!(upstream_calls(&h), 2);
    cleanup(&prefix).await;
}

async fn admin(h: &Harness, path: &str, body: Value) -> Value {
    let res = h
        .client
        .post(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 201);
    res.json().await.expect("json")
}

/// Waits until `h` knows `key` (its store is polled), asking an uncached model.
async fn until_known(h: &Harness, key: &str) {
    let probe = json!({"model": "gpt-4o-mini", "messages": user("ping")});
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat_as(h, key, &probe).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the key never reached the gateway"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_answers_across_gateways() {
    let prefix = random_prefix();
    let _ = redis_connection().await;
    let url = redis_url();
    // Both gateways read teams and keys from one store, as replicas do.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("keys.db");
    let more = format!(
        "\n[admin]\ntoken = \"{ADMIN}\"\n\n[governance]\nstore = \"{}\"\nrefresh_ms = 100\n",
        store.display()
    );
    let a = Harness::start_with(&config(&url, &prefix, &more)).await;
    let b = Harness::start_with(&config(&url, &prefix, &more)).await;

    // Keys without a team are tenants of their own.
    let ask = request("When does the last ferry leave?");
    assert_eq!(chat_as(&a, KEY, &ask).await.1.as_deref(), Some("miss"));
    assert_eq!(
        chat_as(&b, OTHER_KEY, &ask).await.1.as_deref(),
        Some("miss")
    );
    assert_eq!(chat_as(&b, KEY, &ask).await.1.as_deref(), Some("hit"));
    assert_eq!(chat_as(&a, OTHER_KEY, &ask).await.1.as_deref(), Some("hit"));
    assert_eq!((upstream_calls(&a), upstream_calls(&b)), (1, 1));

    // A team shares across gateways; another team never sees its answers.
    for team in ["red", "blue"] {
        admin(&a, "/admin/teams", json!({"name": team})).await;
    }
    let mut keys = Vec::new();
    for (name, team) in [("red-a", "red"), ("red-b", "red"), ("blue-a", "blue")] {
        let created = admin(&a, "/admin/keys", json!({"name": name, "team": team})).await;
        let secret = created["key"].as_str().expect("secret").to_owned();
        until_known(&b, &secret).await;
        keys.push(secret);
    }
    let (a_calls, b_calls) = (upstream_calls(&a), upstream_calls(&b));
    let ask = request("Is the 8:02 on time?");
    assert_eq!(chat_as(&a, &keys[0], &ask).await.1.as_deref(), Some("miss"));
    assert_eq!(chat_as(&b, &keys[2], &ask).await.1.as_deref(), Some("miss"));
    assert_eq!(chat_as(&b, &keys[1], &ask).await.1.as_deref(), Some("hit"));
    assert_eq!(
        (upstream_calls(&a), upstream_calls(&b)),
        (a_calls + 1, b_calls + 1)
    );
    cleanup(&prefix).await;
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn an_unreachable_redis_serves_requests_as_misses() {
    let url = format!("redis://127.0.0.1:{}/", dead_port());
    let h = Harness::start_with(&config(&url, &random_prefix(), "")).await;
    let ask = request("Where does the night train stop?");
    for _ in 0..2 {
        let (status, cache, body) = chat_as(&h, KEY, &ask).await;
        assert_eq!((status, cache.as_deref()), (200, Some("miss")));
        let whole: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(whole["object"], "chat.completion");
    }
    let (status, cache, raw) = chat_as(&h, KEY, &streaming(ask)).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    let (text, done) = streamed_text(&raw);
    assert!(done && !text.is_empty());
    assert_eq!(upstream_calls(&h), 3, "every request reached the upstream");
}
