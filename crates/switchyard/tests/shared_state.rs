//! Run-time state shared through Redis: limits, budgets, deployment health, and what
//! happens while Redis is unreachable. Every test uses its own key prefix and deletes
//! its keys at the end; Redis is at `SWITCHYARD_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/`) and its absence fails the test with that message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::config::{OnUnavailable, Secret, StateConfig};
use switchyard::limits::redis::RedisLimiter;
use switchyard::limits::{Claim, InProcessLimiter, Limiter};
use switchyard::storage::redis::Redis;

fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

fn random_prefix() -> String {
    format!("sytest:{:016x}:", rand::random::<u64>())
}

fn state_config(url: &str, prefix: &str, mode: OnUnavailable) -> StateConfig {
    StateConfig {
        redis_url: Secret::new(url),
        prefix: prefix.to_owned(),
        on_unavailable: mode,
        timeout: Duration::from_millis(500),
    }
}

/// A handle on the test Redis, failing the test clearly when there is none.
async fn connect(prefix: &str) -> Arc<Redis> {
    let url = redis_url();
    let r = Redis::connect(&state_config(&url, prefix, OnUnavailable::Local))
        .await
        .expect("redis handle");
    assert!(
        r.ping().await.is_ok(),
        "these tests need Redis at {url} (set SWITCHYARD_TEST_REDIS_URL); it does not answer"
    );
    r
}

/// A plain connection to the test Redis, to read and write keys as they are stored.
async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the test Redis")
}

/// Deletes every key under `prefix`.
async fn cleanup(prefix: &str) {
    let mut con = raw_connection().await;
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

async fn key_count(prefix: &str) -> usize {
    let mut con = raw_connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await
        .expect("KEYS");
    keys.len()
}

fn claim(key: &str, limit: u64, period: Duration, amount: u64) -> Claim {
    Claim {
        key: Arc::from(key),
        limit,
        period,
        amount,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Polls `cond` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limiter_is_exact_across_replicas() {
    let prefix = random_prefix();
    // Three replicas: three connections, three limiters, one prefix.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Arc::new(RedisLimiter::new(connect(&prefix).await)));
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let l = replicas[i % 3].clone();
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            // Each request also claims a window of its own that always fits: a refusal
            // by the shared one must leave it untouched.
            let own = format!("own-{i}");
            let claims = [
                claim(&own, 1, HOUR, 1),
                claim("key:app:rpm", 30, HOUR, 1),
                claim("key:app:tpm", 1_000_000, HOUR, 100),
            ];
            match l.try_reserve(&claims).await {
                Ok(r) => {
                    assert_eq!(r.amounts(), vec![1, 1, 100]);
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
                Err(refusal) => {
                    assert!(!refusal.state_unavailable, "Redis is up");
                    assert_eq!(refusal.key.as_ref(), "key:app:rpm");
                    assert_eq!(refusal.remaining, 0);
                    assert!(refusal.retry_after <= HOUR);
                    assert_eq!(l.remaining(&own, 1, HOUR).await.0, 1);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        30,
        "exactly the limit passes"
    );
    for l in &replicas {
        assert_eq!(l.remaining("key:app:rpm", 30, HOUR).await.0, 0);
        assert_eq!(
            l.remaining("key:app:tpm", 1_000_000, HOUR).await.0,
            1_000_000 - 3_000
        );
    }
    cleanup(&prefix).await;
}

/// One step of the scripted sequence and what it returned, comparable across limiters.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Admitted(Vec<u64>),
    Refused {
        key: String,
        remaining: u64,
        /// Whole seconds, rounded up: both count from their own clock.
        retry_after_secs: u64,
    },
    Remaining(u64),
    Settled,
}

async fn run_script(l: &dyn Limiter) -> Vec<Outcome> {
    let c = |key: &str, limit, amount| claim(key, limit, HOUR, amount);
    let mut out = Vec::new();
    let mut held = Vec::new();
    let steps: Vec<Vec<Claim>> = vec![
        vec![c("rpm", 3, 1), c("tpm", 1000, 600)],
        vec![c("rpm", 3, 1), c("tpm", 1000, 600)], // tpm refuses: 1200 > 1000
        vec![c("rpm", 3, 1), c("tpm", 1000, 400)], // exactly fits
        vec![c("a", 10, 4), c("b", 10, 4), c("c", 3, 4)], // c never fits
        vec![c("d", 5, 3), c("d", 5, 3)],          // one key twice counts both
        vec![c("e", 0, 1)],                        // limit 0
        vec![c("rpm", 3, 1)],                      // third request fits rpm
        vec![c("rpm", 3, 1)],                      // rpm full
    ];
    for claims in &steps {
        match l.try_reserve(claims).await {
            Ok(r) => {
                out.push(Outcome::Admitted(r.amounts()));
                held.push(r);
            }
            Err(e) => out.push(Outcome::Refused {
                key: e.key.to_string(),
                remaining: e.remaining,
                retry_after_secs: e.retry_after.as_secs_f64().ceil() as u64,
            }),
        }
        for (key, limit) in [("rpm", 3), ("tpm", 1000), ("a", 10), ("d", 5)] {
            out.push(Outcome::Remaining(l.remaining(key, limit, HOUR).await.0));
        }
    }
    // Settle the first reservation lower (600 → 150 tokens), the second higher
    // (400 → 900), and one with a missing actual.
    let mut held = held.into_iter();
    if let Some(r) = held.next() {
        l.settle(r, &[1, 150]).await;
        out.push(Outcome::Settled);
    }
    if let Some(r) = held.next() {
        l.settle(r, &[1, 900]).await;
        out.push(Outcome::Settled);
    }
    out.push(Outcome::Remaining(l.remaining("tpm", 1000, HOUR).await.0));
    if let Some(r) = held.next() {
        l.settle(r, &[]).await;
        out.push(Outcome::Settled);
    }
    out.push(Outcome::Remaining(l.remaining("d", 5, HOUR).await.0));
    match l.try_reserve(&[c("tpm", 1000, 1)]).await {
        Ok(r) => out.push(Outcome::Admitted(r.amounts())),
        Err(e) => out.push(Outcome::Refused {
            key: e.key.to_string(),
            remaining: e.remaining,
            retry_after_secs: e.retry_after.as_secs_f64().ceil() as u64,
        }),
    }
    out.push(Outcome::Remaining(
        l.remaining("untouched", 7, HOUR).await.0,
    ));
    out
}

#[tokio::test]
async fn redis_and_in_process_limiters_decide_alike() {
    let prefix = random_prefix();
    let redis = RedisLimiter::new(connect(&prefix).await);
    let local = InProcessLimiter::new();
    let expected = run_script(&local).await;
    let got = run_script(&redis).await;
    assert_eq!(got, expected);
    // A spot check that the script says what the in-process limiter's tests say.
    assert!(expected.contains(&Outcome::Refused {
        key: "c".into(),
        remaining: 3,
        retry_after_secs: 3600
    }));
    cleanup(&prefix).await;
}

#[tokio::test]
async fn windows_slide_and_expire_in_redis() {
    let prefix = random_prefix();
    let l = RedisLimiter::new(connect(&prefix).await);
    let period = Duration::from_millis(400);
    let w = |amount| [claim("slide", 2, period, amount)];
    l.try_reserve(&w(1)).await.expect("1 of 2");
    l.try_reserve(&w(1)).await.expect("2 of 2");
    let refused = l.try_reserve(&w(1)).await.expect_err("full");
    assert!(refused.retry_after <= period, "{:?}", refused.retry_after);
    let (remaining, reset) = l.remaining("slide", 2, period).await;
    assert_eq!(remaining, 0);
    assert!(reset <= period);
    // The oldest entry leaves after the period: admitted again (bounded wait).
    assert!(
        eventually(Duration::from_secs(10), async || l
            .try_reserve(&w(1))
            .await
            .is_ok())
        .await,
        "the window never slid"
    );
    // A reservation settled after its entry left charges only the excess, now.
    let long = [claim("long", 1000, period, 100)];
    let r = l.try_reserve(&long).await.expect("fits");
    assert!(
        eventually(Duration::from_secs(10), async || l
            .remaining("long", 1000, period)
            .await
            .0
            == 1000)
        .await
    );
    l.settle(r, &[300]).await;
    let left = l.remaining("long", 1000, period).await.0;
    // 200 charged now, unless the period already passed again on a slow machine.
    assert!(left == 800 || left == 1000, "{left}");
    // Idle windows leave nothing in Redis.
    assert!(
        eventually(Duration::from_secs(10), async || key_count(&prefix).await
            == 0)
        .await,
        "window keys did not expire"
    );
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_redis_window_keeps_slices_not_one_member_per_request() {
    let prefix = random_prefix();
    let l = Arc::new(RedisLimiter::new(connect(&prefix).await));
    // An hour's window: a slice is 3600 s / 4096, about 879 ms, so 2,000 reservations
    // made within a few seconds share a handful of slices.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250u64 {
                let claims = [claim("busy", 1_000_000, HOUR, 3)];
                let r = l.try_reserve(&claims).await.expect("fits");
                // Half settle lower, half higher than reserved: each slice moves by
                // the difference, whoever else shares it.
                let actual = if (t + i) % 2 == 0 { 1 } else { 5 };
                l.settle(r, &[actual]).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = started.elapsed();
    assert_eq!(
        l.remaining("busy", 1_000_000, HOUR).await.0,
        1_000_000 - (1_000 + 5 * 1_000),
        "the total is exact"
    );
    let mut con = raw_connection().await;
    let members: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}win:busy:log"))
        .query_async(&mut con)
        .await
        .expect("ZCARD");
    let fields: u64 = redis::cmd("HLEN")
        .arg(format!("{prefix}win:busy:amt"))
        .query_async(&mut con)
        .await
        .expect("HLEN");
    let slice_ms = 3_600_000 / 4096;
    let most = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX) / slice_ms + 2;
    assert!(
        (1..=most).contains(&members),
        "{members} members for 2,000 reservations in {elapsed:?} (at most {most})"
    );
    assert_eq!(fields, members + 1, "one amount per slice, and the total");
    cleanup(&prefix).await;
}

// ---- budgets ----

use switchyard::config::policy::{Budget, Period};
use switchyard::governance::budget::redis::RedisBudgets;
use switchyard::governance::budget::{Applied, Budgets, Denied, Scope};

fn applied(scope: Scope, id: &str, period: Period, limit: i64) -> Applied {
    Applied {
        scope,
        id: Arc::from(id),
        name: Arc::from(id),
        budget: Budget {
            period,
            limit_nano_usd: limit,
            warn_at_percent: vec![50, 100],
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_never_exceed_the_cap_across_replicas() {
    let prefix = random_prefix();
    let mut replicas: Vec<Arc<RedisBudgets>> = Vec::new();
    for _ in 0..3 {
        replicas.push(Arc::new(RedisBudgets::new(connect(&prefix).await, None)));
    }
    let now = switchyard::types::time::now_ms();
    // A key's monthly cap of 10 000 nano-USD and its team's total cap of 7 000: the
    // team decides; each request holds 300.
    let budgets = Arc::new(vec![
        applied(Scope::Key, "vk_app", Period::Month, 10_000),
        applied(Scope::Team, "research", Period::Total, 7_000),
    ]);
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let b = replicas[i % 3].clone();
        let budgets = budgets.clone();
        tasks.push(tokio::spawn(
            async move { b.reserve(&budgets, 300, now).await },
        ));
    }
    let mut holds = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(h) => holds.push(h),
            Err(Denied::Exceeded(e)) => {
                assert_eq!(e.scope, Scope::Team);
                assert!(e.spent_nano_usd + e.reserved_nano_usd <= 7_000);
            }
            Err(Denied::StateUnavailable) => panic!("Redis is up"),
        }
    }
    assert_eq!(holds.len(), 23, "7000 / 300 holds fit, no more");
    let team = replicas[1]
        .status(Scope::Team, "research", Period::Total, now)
        .await;
    assert_eq!((team.spent_nano_usd, team.reserved_nano_usd), (0, 6_900));
    // Settling with lower actual costs frees the difference.
    for (i, h) in holds.into_iter().enumerate() {
        replicas[i % 3].settle(h, 100).await;
    }
    let team = replicas[2]
        .status(Scope::Team, "research", Period::Total, now)
        .await;
    assert_eq!((team.spent_nano_usd, team.reserved_nano_usd), (2_300, 0));
    let key = replicas[0]
        .status(Scope::Key, "vk_app", Period::Month, now)
        .await;
    assert_eq!((key.spent_nano_usd, key.reserved_nano_usd), (2_300, 0));
    // 2300 of 7000 spent: 15 more holds of 300 fit, the 16th does not.
    for _ in 0..15 {
        replicas[0]
            .reserve(&budgets, 300, now)
            .await
            .expect("room freed");
    }
    assert!(replicas[1].reserve(&budgets, 300, now).await.is_err());
    // 50 % of the key's 10 000 was not crossed (2300 + holds are not spent); crossing
    // it on the team warns once, whichever replica settles.
    let warned_before: u64 = replicas.iter().map(|r| r.warnings()).sum();
    let h = replicas[2]
        .reserve(
            &[applied(Scope::Team, "research", Period::Total, 7_000)][..],
            0,
            now,
        )
        .await
        .expect("zero fits");
    replicas[2].settle(h, 1_300).await; // 3600 of 7000: past 50 %
    let warned: u64 = replicas.iter().map(|r| r.warnings()).sum();
    assert_eq!(warned - warned_before, 1);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn budget_seeds_only_a_counter_that_does_not_exist() {
    let prefix = random_prefix();
    let a = RedisBudgets::new(connect(&prefix).await, None);
    let b = RedisBudgets::new(connect(&prefix).await, None);
    let now = switchyard::types::time::now_ms();
    let id: Arc<str> = Arc::from("vk_seed");
    let (start, _) = Period::Day.bounds(now);
    assert!(a.needs_seed(Scope::Key, &id, Period::Day, now).await);
    a.seed(Scope::Key, &id, Period::Day, start, 900).await;
    let day = [applied(Scope::Key, "vk_seed", Period::Day, 1_000)];
    let h = b.reserve(&day, 50, now).await.expect("fits");
    b.settle(h, 50).await;
    // A replica starting later (its ledger lags) does not overwrite the live figure.
    b.seed(Scope::Key, &id, Period::Day, start, 0).await;
    let s = a.status(Scope::Key, "vk_seed", Period::Day, now).await;
    assert_eq!(s.spent_nano_usd, 950);
    assert!(a.reserve(&day, 51, now).await.is_err());
    cleanup(&prefix).await;
}

/// Writes rows of `key_id`'s spend (nano-USD each) into the ledger at `db`, now.
async fn ledger_spend(db: &switchyard::storage::Database, key_id: &str, costs: &[i64]) {
    use switchyard::ledger::{Ledger, LedgerOptions, RequestRecord};
    let ledger = Ledger::open(LedgerOptions::on(db.clone()))
        .await
        .expect("open ledger");
    let sink = ledger.sink();
    let now = switchyard::types::time::now_ms();
    for (i, &cost) in costs.iter().enumerate() {
        sink.record(RequestRecord {
            request_id: format!("{key_id}-{now}-{i}"),
            started_at_ms: now,
            key_id: Some(key_id.to_owned()),
            key_name: Some(key_id.to_owned()),
            endpoint: "chat.completions",
            status: 200,
            cost_nano_usd: cost,
            ..RequestRecord::default()
        });
    }
    let stats = ledger.shutdown().await.expect("ledger shutdown");
    assert_eq!(stats.written, costs.len() as u64);
}

#[tokio::test]
async fn a_budget_counter_lost_in_redis_is_seeded_again_from_the_ledger() {
    let prefix = random_prefix();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = switchyard::storage::Database::Sqlite(dir.path().join("ledger.db"));
    // 600 of a 1000 cap spent before this replica started.
    ledger_spend(&db, "vk_lost", &[400, 200]).await;
    let budgets = RedisBudgets::new(connect(&prefix).await, Some(db.clone()));
    let now = switchyard::types::time::now_ms();
    let day = [applied(Scope::Key, "vk_lost", Period::Day, 1_000)];
    // No counter yet: the reservation seeds it from the ledger first.
    let h = budgets.reserve(&day, 100, now).await.expect("700 fits");
    budgets.settle(h, 100).await;
    ledger_spend(&db, "vk_lost", &[100]).await;
    let s = budgets
        .status(Scope::Key, "vk_lost", Period::Day, now)
        .await;
    assert_eq!(s.spent_nano_usd, 700);

    // Redis forgets everything (a restart without persistence, an eviction).
    cleanup(&prefix).await;
    assert_eq!(key_count(&prefix).await, 0);
    match budgets.reserve(&day, 301, now).await {
        Err(Denied::Exceeded(e)) => assert_eq!(e.spent_nano_usd, 700, "{e:?}"),
        other => panic!("700 recorded + 301 > 1000 must be refused: {other:?}"),
    }
    let h = budgets
        .reserve(&day, 300, now)
        .await
        .expect("exactly the cap");
    // Lost again between reserve and settle: the spend is settled into a counter
    // seeded from the ledger, not dropped.
    cleanup(&prefix).await;
    budgets.settle(h, 250).await;
    let s = budgets
        .status(Scope::Key, "vk_lost", Period::Day, now)
        .await;
    assert_eq!((s.spent_nano_usd, s.reserved_nano_usd), (950, 0));
    assert!(budgets.reserve(&day, 51, now).await.is_err());
    budgets.reserve(&day, 50, now).await.expect("the last 50");
    cleanup(&prefix).await;
}

// ---- deployment health ----

const HEALTH_CONFIG: &str = r#"
[providers.oa]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-test"

[deployments.first]
provider = "oa"
model = "m"
price = { input = 1.0, output = 1.0 }

[deployments."second one"]
provider = "oa"
model = "m"
price = { input = 1.0, output = 1.0 }

[models.m]
deployments = ["first", "second one"]

[breaker]
consecutive_failures = 1
open_ms = 60000
"#;

fn shared_health(config: &switchyard::Config, redis: Arc<Redis>) -> switchyard::routing::Health {
    let h = switchyard::routing::Health::new(config.deployments.len(), config.breaker);
    let names = config
        .deployments
        .iter()
        .map(|d| Arc::from(d.name.as_str()))
        .collect();
    h.share(names, redis);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_and_open_breakers_reach_the_other_replicas() {
    use switchyard::resilience::BreakerState;
    let prefix = random_prefix();
    let config = switchyard::Config::parse(HEALTH_CONFIG, |_| None).expect("config");
    let first = config.deployments[0].clone();
    let second = config.deployments[1].clone();
    let a = shared_health(&config, connect(&prefix).await);
    let b = shared_health(&config, connect(&prefix).await);
    // Let both subscriptions settle in before publishing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = switchyard::types::time::now_ms();
    a.of(&first).mark_exhausted(now + 30_000);
    assert!(
        eventually(Duration::from_secs(10), async || b
            .of(&first)
            .exhausted_for_ms(switchyard::types::time::now_ms())
            .is_some())
        .await,
        "B never learned that A's deployment is exhausted"
    );
    assert!(b.of(&second).exhausted_for_ms(now).is_none());
    // One failure opens A's breaker for `second one` (a name with a space).
    let lease = Duration::from_secs(10);
    a.of(&second)
        .admit(Instant::now(), lease)
        .expect("closed")
        .record(false, Instant::now());
    assert_eq!(
        a.of(&second).breaker_state(Instant::now()),
        BreakerState::Open
    );
    assert!(
        eventually(Duration::from_secs(10), async || b
            .of(&second)
            .breaker_state(Instant::now())
            == BreakerState::Open)
        .await,
        "B's breaker did not open"
    );
    assert!(b.of(&second).admit(Instant::now(), lease).is_none());
    // A replica that starts later reads the facts in force when it subscribes.
    let c = shared_health(&config, connect(&prefix).await);
    assert!(
        eventually(Duration::from_secs(10), async || c
            .of(&first)
            .exhausted_for_ms(switchyard::types::time::now_ms())
            .is_some()
            && c.of(&second).breaker_state(Instant::now())
                == BreakerState::Open)
        .await,
        "a late replica did not read the current facts"
    );
    // A hostile message is clamped to the maximum, and a malformed one ignored.
    let mut con = raw_connection().await;
    let channel = format!("{prefix}health");
    for msg in [
        "exhausted 1e300 someone second one",
        "exhausted x y",
        "open",
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(msg)
            .query_async(&mut con)
            .await
            .expect("publish");
    }
    assert!(
        eventually(Duration::from_secs(10), async || b
            .of(&second)
            .exhausted_for_ms(switchyard::types::time::now_ms())
            .is_some())
        .await
    );
    let left = b
        .of(&second)
        .exhausted_for_ms(switchyard::types::time::now_ms())
        .expect("exhausted");
    assert!(
        left <= switchyard::routing::health::shared::MAX_FACT_MS,
        "{left}"
    );
    cleanup(&prefix).await;
}

// ---- Redis unreachable, and back ----

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

mod common;

use common::{user, Harness, KEY};
use serde_json::{json, Value};

const LIMITED_KEY: &str = "sy-test-key-limited-42";

fn state_section(url: &str, prefix: &str, mode: &str) -> String {
    format!(
        "\n[state]\nredis_url = \"{url}\"\nprefix = \"{prefix}\"\non_unavailable = \"{mode}\"\ntimeout_ms = 300\n\n[[keys]]\nname = \"limited\"\nkey = \"{LIMITED_KEY}\"\npolicy = {{ rpm = 3 }}\n"
    )
}

async fn chat_as(h: &Harness, key: &str) -> reqwest::Response {
    h.client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .send()
        .await
        .expect("send")
}

async fn readyz(h: &Harness) -> (u16, Value) {
    let res = h
        .client
        .get(format!("{}/readyz", h.base))
        .send()
        .await
        .expect("readyz");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rpm_is_exact_across_two_gateways() {
    let prefix = random_prefix();
    let _ = connect(&prefix).await; // fails clearly without Redis
    let url = redis_url();
    let a = Harness::start_with(&state_section(&url, &prefix, "closed")).await;
    let b = Harness::start_with(&state_section(&url, &prefix, "closed")).await;
    assert_eq!(
        readyz(&a).await,
        (200, json!({"status": "ready", "state": "shared"}))
    );
    let a = Arc::new(a);
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let h = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            chat_as(&h, LIMITED_KEY).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [[200; 3].as_slice(), &[429; 9]].concat(),
        "{statuses:?}"
    );
    // Keys without limits are not affected.
    assert_eq!(chat_as(&a, KEY).await.status(), 200);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn rate_limit_headers_count_every_replicas_requests() {
    let prefix = random_prefix();
    let _ = connect(&prefix).await; // fails clearly without Redis
    let url = redis_url();
    let a = Harness::start_with(&state_section(&url, &prefix, "closed")).await;
    let b = Harness::start_with(&state_section(&url, &prefix, "closed")).await;
    // rpm = 3, one window in Redis: each answer says what is left after it, whichever
    // replica took the others.
    for (h, left) in [(&a, "2"), (&b, "1"), (&a, "0")] {
        let res = chat_as(h, LIMITED_KEY).await;
        assert_eq!(res.status(), 200);
        let headers = res.headers();
        assert_eq!(headers["x-ratelimit-limit-requests"], "3");
        assert_eq!(headers["x-ratelimit-remaining-requests"], left);
        assert_eq!(headers["x-ratelimit-reset-requests"], "1m0s");
    }
    let refused = chat_as(&b, LIMITED_KEY).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn local_mode_serves_with_in_process_state_when_redis_is_unreachable() {
    let prefix = random_prefix();
    let url = format!("redis://127.0.0.1:{}/", dead_port());
    let h = Harness::start_with(&state_section(&url, &prefix, "local")).await;
    assert_eq!(
        readyz(&h).await,
        (200, json!({"status": "ready", "state": "local"}))
    );
    // The in-process fallback counts the key's rpm = 3.
    for _ in 0..3 {
        assert_eq!(chat_as(&h, LIMITED_KEY).await.status(), 200);
    }
    assert_eq!(chat_as(&h, LIMITED_KEY).await.status(), 429);
    assert_eq!(chat_as(&h, KEY).await.status(), 200);
}

#[tokio::test]
async fn closed_mode_answers_503_state_unavailable() {
    let prefix = random_prefix();
    let url = format!("redis://127.0.0.1:{}/", dead_port());
    let h = Harness::start_with(&state_section(&url, &prefix, "closed")).await;
    let (status, body) = readyz(&h).await;
    assert_eq!(status, 503);
    assert_eq!(body["state"], "unavailable");
    let res = chat_as(&h, KEY).await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "state_unavailable", "{body}");
    assert_eq!(body["error"]["type"], "server_error");
}

/// A `redis-server` of our own on `port`, killed on drop.
struct OwnRedis(tokio::process::Child);

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("these tests need `redis-server` on PATH");
        let up = eventually(Duration::from_secs(10), async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "redis-server did not start on port {port}");
        OwnRedis(child)
    }

    async fn stop(mut self) {
        self.0.kill().await.expect("kill redis-server");
        let _ = self.0.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_falls_back_and_recovers_with_redis() {
    let port = dead_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let prefix = random_prefix();
    let server = OwnRedis::start(port).await;
    let local = Harness::start_with(&state_section(&url, &prefix, "local")).await;
    let closed = Harness::start_with(&state_section(&url, &prefix, "closed")).await;
    assert_eq!(readyz(&local).await.1["state"], "shared");
    assert_eq!(chat_as(&closed, KEY).await.status(), 200);

    server.stop().await;
    assert!(
        eventually(Duration::from_secs(15), async || readyz(&local).await.1
            ["state"]
            == "local")
        .await,
        "local mode never noticed the outage"
    );
    assert_eq!(chat_as(&local, KEY).await.status(), 200);
    assert!(
        eventually(Duration::from_secs(15), async || readyz(&closed).await.0
            == 503)
        .await,
        "closed mode never noticed the outage"
    );
    assert_eq!(chat_as(&closed, KEY).await.status(), 503);

    let server = OwnRedis::start(port).await;
    assert!(
        eventually(Duration::from_secs(15), async || readyz(&local).await.1
            ["state"]
            == "shared")
        .await,
        "local mode never went back to shared state"
    );
    assert!(
        eventually(Duration::from_secs(15), async || readyz(&closed).await.0
            == 200)
        .await,
        "closed mode never recovered"
    );
    assert_eq!(chat_as(&closed, KEY).await.status(), 200);
    // Shared again: both gateways count one window in the restarted Redis.
    for _ in 0..3 {
        assert_eq!(chat_as(&local, LIMITED_KEY).await.status(), 200);
    }
    assert_eq!(chat_as(&closed, LIMITED_KEY).await.status(), 429);
    server.stop().await;
}

// ---- what a limiter call costs ----

#[tokio::test]
async fn limiter_round_trip_cost() {
    let prefix = random_prefix();
    let redis = RedisLimiter::new(connect(&prefix).await);
    let local = InProcessLimiter::new();
    let claims = [
        claim("key:bench:rpm", u64::MAX / 2, HOUR, 1),
        claim("key:bench:tpm", u64::MAX / 2, HOUR, 100),
    ];
    const N: u32 = 2000;
    let measure = async |l: &dyn Limiter| {
        let t = Instant::now();
        for _ in 0..N {
            let r = l.try_reserve(&claims).await.expect("fits");
            l.settle(r, &[1, 50]).await;
        }
        t.elapsed() / N
    };
    let in_process = measure(&local).await;
    let shared = measure(&redis).await;
    // Both counted the same.
    assert_eq!(
        redis.remaining("key:bench:tpm", u64::MAX / 2, HOUR).await.0,
        local.remaining("key:bench:tpm", u64::MAX / 2, HOUR).await.0
    );
    println!(
        "limiter reserve+settle (2 windows): in-process {in_process:?}, Redis {shared:?} per request"
    );
    cleanup(&prefix).await;
}

// ---- contract caps shared by replicas ----

const CAPPED_MODEL: &str = "\n[contracts.primary-cap]\ndeployments = [\"oa-mini\"]\ncap_usd = \"0.0002\"\n\n[models.capped]\ndeployments = [\"oa-mini\", \"backup-mini\"]\n";

/// `(spent, reserved, list, tokens)` of a contract's shared counter for the period
/// starting at `start`.
async fn contract_counter(prefix: &str, name: &str, start: i64) -> Vec<Option<i64>> {
    let mut con = raw_connection().await;
    redis::cmd("HMGET")
        .arg(format!("{prefix}contract:{name}:{start}"))
        .arg("spent")
        .arg("reserved")
        .arg("list")
        .arg("tokens")
        .query_async(&mut con)
        .await
        .expect("HMGET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contract_cap_holds_across_two_gateways_sharing_redis() {
    // $0.0002 = 200,000 nano-USD: room for about 15 small answers on the primary, in
    // all, whichever gateway serves them.
    const CAP: i64 = 200_000;
    let prefix = random_prefix();
    let _ = connect(&prefix).await; // fails clearly without Redis
    let url = redis_url();
    let extra = format!(
        "{}{CAPPED_MODEL}{}",
        state_section(&url, &prefix, "closed"),
        common::PATIENT_BREAKER
    );
    let a = Arc::new(Harness::start_with(&extra).await);
    let b = Arc::new(Harness::start_with(&extra).await);
    // Waves of ten requests at once, five on each gateway: the two race for the cap
    // within a wave, and each wave starts after the last one's holds (sized by
    // max_tokens) have settled to what was really spent. Fired all at once, the holds
    // could fill the cap and then settle well below it, leaving room that no later
    // request comes to use.
    let mut answers = Vec::new();
    for wave in 0..20 {
        let mut tasks = Vec::new();
        for j in 0..10 {
            let i = wave * 10 + j;
            let h = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let res = h
                    .chat(json!({"model": "capped", "messages": user(&format!("question {i}")), "max_tokens": 20}))
                    .await;
                let status = res.status().as_u16();
                let route = res
                    .headers()
                    .get("x-switchyard-route")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (status, route)
            }));
        }
        for t in tasks {
            answers.push(t.await.expect("task"));
        }
    }
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "every request is answered, on the backup when the cap has no room"
    );
    let skipped = answers
        .iter()
        .filter(|(_, r)| r.contains("oa-mini skipped: contract primary-cap cap reached"))
        .count();
    let (Ok(mut a), Ok(mut b)) = (Arc::try_unwrap(a), Arc::try_unwrap(b)) else {
        panic!("the harnesses are still shared");
    };
    let mut on_primary: Vec<(i64, i64, i64)> = Vec::new();
    for pool in [a.finish().await, b.finish().await] {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT cost_nano_usd, list_cost_nano_usd, prompt_tokens + completion_tokens \
             FROM attempts WHERE deployment = 'oa-mini'",
        )
        .fetch_all(&pool)
        .await
        .expect("attempts");
        on_primary.extend(rows);
    }
    let spent: i64 = on_primary.iter().map(|r| r.0).sum();
    let dearest = on_primary.iter().map(|r| r.0).max().unwrap_or(0);
    println!(
        "two gateways, cap {CAP} nano-USD: {spent} spent on the primary by {} requests; {skipped} said why they skipped it",
        on_primary.len()
    );
    assert!(spent <= CAP, "{spent} nano-USD spent under a cap of {CAP}");
    assert!(skipped > 0, "some requests say why the primary was skipped");
    assert!(
        CAP - spent < 3 * dearest,
        "the cap was used, not just respected: {spent} of {CAP}; one answer costs up to {dearest}"
    );
    // The shared counter agrees with the two ledgers to the nano-dollar, and holds
    // nothing once every call has settled.
    let (start, _) = switchyard::config::ContractPeriod::Month
        .bounds(switchyard::types::time::now_ms())
        .expect("a month always runs");
    let want = vec![
        Some(spent),
        Some(0),
        Some(on_primary.iter().map(|r| r.1).sum()),
        Some(on_primary.iter().map(|r| r.2).sum()),
    ];
    let settled = eventually(Duration::from_secs(10), async || {
        contract_counter(&prefix, "primary-cap", start).await == want
    })
    .await;
    assert!(
        settled,
        "counter {:?}, ledgers {want:?}",
        contract_counter(&prefix, "primary-cap", start).await
    );
    cleanup(&prefix).await;
}

/// A config with one deployment at $1 per million input tokens (1,000 nano-USD a
/// token) under a contract capped at $0.000001 (one token's worth), over a long term.
fn one_token_cap_config() -> switchyard::Config {
    let text = r#"
[ledger]
enabled = false

[providers.oa]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-upstream-secret"

[deployments.oa-mini]
provider = "oa"
model = "gpt-4o-mini"
price = { input = 1, output = 1 }

[models.gpt-4o-mini]
deployments = ["oa-mini"]

[contracts.one-token]
deployments = ["oa-mini"]
start = "2020-01-01"
end = "2099-12-31"
cap_usd = "0.000001"
"#;
    switchyard::Config::parse(text, |_| None).expect("valid config")
}

fn one_token() -> switchyard::types::Usage {
    switchyard::types::Usage {
        prompt_tokens: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_shared_contract_hold_lapses_when_its_replica_never_settles_it() {
    use switchyard::contracts::{ContractBook, Refused};
    let prefix = random_prefix();
    let config = one_token_cap_config();
    let d = config.deployments[0].clone();
    let contract = d.contract.clone().expect("covered");
    let (start, _) = contract
        .period
        .bounds(switchyard::types::time::now_ms())
        .expect("in term");
    // Two replicas' books on one Redis.
    let a = ContractBook::new();
    a.share(connect(&prefix).await, None);
    let b = ContractBook::new();
    b.share(connect(&prefix).await, None);
    let lease = Duration::from_secs(5);
    let now = switchyard::types::time::now_ms();

    // Replica A holds the whole cap, then dies without settling.
    let held = a
        .hold_for_call(&d, &one_token(), lease, now)
        .await
        .expect("room");
    std::mem::forget(held);
    let full = b.hold_for_call(&d, &one_token(), lease, now).await;
    assert!(
        matches!(&full, Err(Refused::Cap(c)) if c.reserved_nano_usd == 1_000 && c.spent_nano_usd == 0),
        "{full:?}"
    );
    // Once the lease (the call's longest run plus the margin) has passed, the dead
    // replica's hold is given back: B reserves, settles, and the spend is counted.
    let later = now
        + i64::try_from((lease + switchyard::contracts::shared::LEASE_MARGIN).as_millis())
            .expect("ms")
        + 1;
    let hold = b
        .hold_for_call(&d, &one_token(), lease, later)
        .await
        .expect("the lapsed hold was given back")
        .expect("covered");
    hold.settle(&one_token());
    let counted = eventually(Duration::from_secs(10), async || {
        contract_counter(&prefix, "one-token", start).await
            == vec![Some(1_000), Some(0), Some(1_000), Some(1)]
    })
    .await;
    assert!(
        counted,
        "{:?}",
        contract_counter(&prefix, "one-token", start).await
    );
    // The cap is now spent: neither replica gets room.
    for book in [&a, &b] {
        let r = book.hold_for_call(&d, &one_token(), lease, later).await;
        assert!(matches!(r, Err(Refused::Cap(_))), "{r:?}");
    }
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_shared_contract_hold_dropped_unsettled_gives_its_room_back_at_once() {
    use switchyard::contracts::ContractBook;
    let prefix = random_prefix();
    let config = one_token_cap_config();
    let d = config.deployments[0].clone();
    let book = ContractBook::new();
    book.share(connect(&prefix).await, None);
    let lease = Duration::from_secs(600);
    let now = switchyard::types::time::now_ms();
    // A request cancelled before its call drops its hold: the room comes back without
    // waiting for the ten-minute lease.
    let held = book
        .hold_for_call(&d, &one_token(), lease, now)
        .await
        .expect("room");
    drop(held);
    let back = eventually(Duration::from_secs(10), async || {
        book.hold_for_call(&d, &one_token(), lease, now)
            .await
            .is_ok()
    })
    .await;
    assert!(back, "the dropped hold's room never came back");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_shared_contract_cap_without_redis_follows_on_unavailable() {
    use switchyard::contracts::{ContractBook, Refused};
    let prefix = random_prefix();
    let config = one_token_cap_config();
    let d = config.deployments[0].clone();
    let url = format!("redis://127.0.0.1:{}/", dead_port());
    let now = switchyard::types::time::now_ms();
    let lease = Duration::from_secs(5);
    // closed: room cannot be known, so the deployment is not used.
    let closed = Redis::connect(&state_config(&url, &prefix, OnUnavailable::Closed))
        .await
        .expect("handle");
    let book = ContractBook::new();
    book.share(closed, None);
    let r = book.hold_for_call(&d, &one_token(), lease, now).await;
    assert!(
        matches!(&r, Err(Refused::StateUnavailable { contract }) if contract == "one-token"),
        "{r:?}"
    );
    // local: this replica counts on its own, and the cap still holds here.
    let local = Redis::connect(&state_config(&url, &prefix, OnUnavailable::Local))
        .await
        .expect("handle");
    let book = ContractBook::new();
    book.share(local, None);
    let first = book.hold_for_call(&d, &one_token(), lease, now).await;
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    let second = book.hold_for_call(&d, &one_token(), lease, now).await;
    assert!(matches!(second, Err(Refused::Cap(_))), "{second:?}");
}
