//! The dashboard's server side: login with the admin token or a one-time link, the
//! session cookie and its attributes, CSRF on changes made with the cookie, logout;
//! and the stats endpoints, with exact values: through a gateway (compared with the
//! ledger's own rows) and from rows written directly, alike on SQLite and PostgreSQL.

mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{user, Harness};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use sqlx::Row;
use switchyard::config::{PostgresConfig, Secret};
use switchyard::ledger::stats::{
    errors_by_class, overview, recent_requests, request_detail, RequestFilter, StatusFilter, Window,
};
use switchyard::ledger::{AttemptRecord, Ledger, LedgerOptions, RequestRecord};
use switchyard::storage::{Database, Postgres};
use switchyard_sim::Fault;

const ADMIN: &str = "sy-test-admin-token-0123456789";

fn admin_section() -> String {
    format!("[admin]\ntoken = \"{ADMIN}\"\n")
}

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

fn set_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The session id in a `Set-Cookie` value.
fn session_id(set_cookie: &str) -> String {
    set_cookie
        .strip_prefix("switchyard_session=")
        .and_then(|rest| rest.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

fn csrf_of(page: &str) -> String {
    let marker = r#"<meta name="switchyard-csrf" content=""#;
    let start = page.find(marker).expect("the CSRF meta tag") + marker.len();
    page[start..].split('"').next().expect("token").to_owned()
}

#[tokio::test]
async fn login_session_csrf_and_logout() {
    let h = Harness::start_with(&admin_section()).await;
    let b = browser();
    let url = |p: &str| format!("{}{p}", h.base);

    // Not logged in: the login form, with the page's security headers.
    let res = b.get(url("/dashboard")).send().await.expect("get");
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    let page = res.text().await.expect("body");
    assert!(page.contains(r#"id="login-form""#));
    assert!(!page.contains("switchyard-csrf"));
    // Nothing is loaded from elsewhere: the app works offline.
    for asset in ["/dashboard", "/dashboard/app.js", "/dashboard/app.css"] {
        let text = b
            .get(url(asset))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        for external in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "@import",
            "fetch(\"http",
        ] {
            assert!(!text.contains(external), "{asset} loads {external}…");
        }
    }
    let js = b.get(url("/dashboard/app.js")).send().await.expect("get");
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );

    // A wrong token: 401, no cookie.
    let res = b
        .post(url("/dashboard/login"))
        .form(&[("token", "sy-test-admin-token-wrong")])
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), 401);
    assert!(set_cookie(&res).is_none());
    assert!(res
        .text()
        .await
        .expect("body")
        .contains("not the admin token"));

    // The admin token: a session cookie with every protective attribute.
    let res = b
        .post(url("/dashboard/login"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/dashboard");
    let cookie = set_cookie(&res).expect("set-cookie");
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let id = session_id(&cookie);
    assert_eq!(id.len(), 64, "256 random bits, hex");
    let jar = format!("switchyard_session={id}");

    // The app, with the session's CSRF token.
    let page = b
        .get(url("/dashboard"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    let csrf = csrf_of(&page);
    assert_eq!(csrf.len(), 64);
    assert!(page.contains(r#"<script src="/dashboard/app.js">"#));

    // Reads need only the cookie.
    let res = b
        .get(url("/admin/keys"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200);
    // Changes need the CSRF header too: missing, wrong, right.
    let team = |name: &str| json!({"name": name});
    let res = b
        .post(url("/admin/teams"))
        .header("cookie", &jar)
        .json(&team("t1"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "csrf_token_missing");
    let res = b
        .post(url("/admin/teams"))
        .header("cookie", &jar)
        .header("x-switchyard-csrf", "0".repeat(64))
        .json(&team("t1"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let res = b
        .post(url("/admin/teams"))
        .header("cookie", &jar)
        .header("x-switchyard-csrf", &csrf)
        .json(&team("t1"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    // The bearer token needs no CSRF header (no browser sends it by itself).
    let res = b
        .post(url("/admin/teams"))
        .bearer_auth(ADMIN)
        .json(&team("t2"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    // An unknown session is refused.
    let res = b
        .get(url("/admin/keys"))
        .header("cookie", format!("switchyard_session={}", "a".repeat(64)))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_admin_token");

    // Logout needs the CSRF header, then ends the session and clears the cookie.
    let res = b
        .post(url("/dashboard/logout"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let res = b
        .post(url("/dashboard/logout"))
        .header("cookie", &jar)
        .header("x-switchyard-csrf", &csrf)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 204);
    assert!(set_cookie(&res).expect("cleared").contains("Max-Age=0"));
    let res = b
        .get(url("/admin/keys"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 401);
    let page = b
        .get(url("/dashboard"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(page.contains(r#"id="login-form""#));

    // A one-time link opens a session once.
    let gateway = h.gateway.as_ref().expect("running");
    let link = gateway.dashboard_login_link().expect("admin token set");
    assert!(link.starts_with(&format!("{}/dashboard/login/", h.base)));
    let res = b.get(&link).send().await.expect("get");
    assert_eq!(res.status(), 303);
    let id = session_id(&set_cookie(&res).expect("cookie"));
    let res = b
        .get(url("/admin/health"))
        .header("cookie", format!("switchyard_session={id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200);
    let res = b.get(&link).send().await.expect("get");
    assert_eq!(res.status(), 401);
    assert!(set_cookie(&res).is_none());
}

#[tokio::test]
async fn without_an_admin_token_the_dashboard_is_disabled() {
    let h = Harness::start().await;
    let b = browser();
    let res = b
        .post(format!("{}/dashboard/login", h.base))
        .form(&[("token", "anything-at-all-long")])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    assert!(set_cookie(&res).is_none());
    assert!(h
        .gateway
        .as_ref()
        .expect("gw")
        .dashboard_login_link()
        .is_none());
}

/// Nearest rank: the value at rank ceil(p × n / 100) of the sorted values.
fn nearest_rank(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100);
    sorted.get(rank - 1).copied()
}

#[tokio::test]
async fn the_stats_endpoints_match_the_ledger_exactly() {
    let extra = format!("{}{}", admin_section(), common::PATIENT_BREAKER);
    let mut h = Harness::start_with(&extra).await;
    for i in 0..3 {
        let res = h
            .chat(json!({"model": "gpt-4o-mini", "messages": user(&format!("plain {i}"))}))
            .await;
        assert_eq!(res.status(), 200);
    }
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("stream"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    res.text().await.expect("stream body");
    let res = h
        .chat(json!({"model": "no-such-model", "messages": user("x")}))
        .await;
    assert_eq!(res.status(), 404);
    h.sim
        .sim
        .set_fault("primary", "*", Fault::error(500).times(1));
    let res = h
        .chat(json!({"model": "failover", "messages": user("fail over")}))
        .await;
    assert_eq!(res.status(), 200);

    let admin = h.client.clone();
    let get = |path: String| {
        let admin = admin.clone();
        let base = h.base.clone();
        async move {
            let res = admin
                .get(format!("{base}{path}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("get");
            assert_eq!(res.status(), 200, "{path}");
            res.json::<Value>().await.expect("json")
        }
    };
    // The ledger is written off the request path: wait (bounded) for the six rows.
    let mut rows = 0;
    for _ in 0..200 {
        rows = get("/admin/requests".into()).await["data"]
            .as_array()
            .map_or(0, Vec::len);
        if rows == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rows, 6);
    let end = switchyard::types::time::now_ms() + 1;
    let ov = get(format!("/admin/stats/overview?window=1h&end={end}")).await;
    let errs = get(format!("/admin/stats/errors?window=1h&end={end}")).await;
    let failover = get("/admin/requests?model=failover".into()).await;
    let not_found = get("/admin/requests?status=404".into()).await;
    let failed = get("/admin/requests?status=error".into()).await;
    let by_key = get("/admin/requests?key=app&limit=2".into()).await;

    // What the ledger itself holds, read with SQLite's own driver.
    let pool = h.finish().await;
    let ledger = sqlx::query(
        "SELECT deployment, provider, latency_us, ttft_us, cost_nano_usd, status FROM requests",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    let mut latencies: Vec<i64> = ledger.iter().map(|r| r.get("latency_us")).collect();
    latencies.sort_unstable();
    let mut ttfts: Vec<i64> = ledger
        .iter()
        .filter_map(|r| r.get::<Option<i64>, _>("ttft_us"))
        .collect();
    ttfts.sort_unstable();
    let cost: i64 = ledger
        .iter()
        .map(|r| r.get::<i64, _>("cost_nano_usd"))
        .sum();
    let mut by_provider: BTreeMap<String, u64> = BTreeMap::new();
    for r in &ledger {
        let p: Option<String> = r.get("provider");
        *by_provider
            .entry(p.unwrap_or_else(|| "(none)".into()))
            .or_default() += 1;
    }

    assert_eq!(ov["requests"], 6);
    assert_eq!(ov["errors"], 1);
    assert_eq!(ov["cost_nano_usd"], cost);
    assert!(cost > 0);
    assert_eq!(ov["latency_us"]["p50"], json!(nearest_rank(&latencies, 50)));
    assert_eq!(ov["latency_us"]["p99"], json!(nearest_rank(&latencies, 99)));
    assert_eq!(ttfts.len(), 1);
    assert_eq!(ov["ttft_us"]["p50"], json!(ttfts[0]));
    assert_eq!(ov["window"]["end_ms"], end);
    assert_eq!(ov["window"]["bucket_ms"], 60_000);
    let series = ov["traffic"]["providers"].as_object().expect("series");
    let sums: BTreeMap<String, u64> = series
        .iter()
        .map(|(p, counts)| {
            let n = counts.as_array().expect("counts");
            assert_eq!(n.len(), 60);
            (
                p.clone(),
                n.iter().map(|v| v.as_u64().expect("count")).sum(),
            )
        })
        .collect();
    assert_eq!(sums, by_provider);
    let deployments = ov["deployments"].as_array().expect("list");
    let dep = |name: &str| {
        deployments
            .iter()
            .find(|d| d["deployment"] == name)
            .unwrap_or_else(|| panic!("{name} in {deployments:?}"))
            .clone()
    };
    let mini = dep("oa-mini");
    assert_eq!(mini["requests"], 4);
    assert_eq!(mini["errors"], 0);
    assert_eq!(mini["attempts"], 4);
    assert_eq!(mini["ttft_us"]["p50"], json!(ttfts[0]));
    // The primary failed once and never answered: attempts only.
    let primary = dep("primary-mini");
    assert_eq!(primary["requests"], 0);
    assert_eq!(primary["attempts"], 1);
    assert_eq!(primary["failed_attempts"], 1);
    assert_eq!(dep("backup-mini")["requests"], 1);
    assert_eq!(dep("(none)")["errors"], 1);

    assert_eq!(errs["data"].as_array().expect("list").len(), 1);
    assert_eq!(errs["data"][0]["deployment"], "primary-mini");
    assert_eq!(errs["data"][0]["error_class"], "upstream_5xx");
    assert_eq!(errs["data"][0]["attempts"], 1);

    assert_eq!(failover["data"].as_array().expect("list").len(), 1);
    assert_eq!(failover["data"][0]["deployment"], "backup-mini");
    assert_eq!(not_found["data"].as_array().expect("list").len(), 1);
    assert_eq!(not_found["data"][0]["model"], "no-such-model");
    assert_eq!(failed["data"].as_array().expect("list").len(), 1);
    assert_eq!(by_key["data"].as_array().expect("list").len(), 2);
    assert!(by_key["next_before"].is_i64());
    let _ = failover["data"][0]["request_id"].as_str().expect("id");
}

#[tokio::test]
async fn a_request_opens_with_its_attempts_in_order() {
    let extra = format!("{}{}", admin_section(), common::PATIENT_BREAKER);
    let h = Harness::start_with(&extra).await;
    h.sim
        .sim
        .set_fault("primary", "*", Fault::error(500).times(1));
    let res = h
        .chat(json!({"model": "failover", "messages": user("fail over")}))
        .await;
    assert_eq!(res.status(), 200);
    let get = |path: String| {
        let c = h.client.clone();
        let base = h.base.clone();
        async move {
            c.get(format!("{base}{path}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("get")
        }
    };
    let mut id = None;
    for _ in 0..200 {
        let list: Value = get("/admin/requests".into())
            .await
            .json()
            .await
            .expect("json");
        if let Some(v) = list["data"][0]["request_id"].as_str() {
            id = Some(v.to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let id = id.expect("the row was written");
    let detail: Value = get(format!("/admin/requests/{id}"))
        .await
        .json()
        .await
        .expect("json");
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["deployment"], "primary-mini");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[0]["error_class"], "upstream_5xx");
    assert_eq!(attempts[1]["deployment"], "backup-mini");
    assert_eq!(attempts[1]["status"], 200);
    assert_eq!(attempts[1]["error_class"], Value::Null);
    assert_eq!(get("/admin/requests/req_nope".into()).await.status(), 404);
    assert_eq!(
        get("/admin/stats/overview?window=2h".into()).await.status(),
        400
    );
}

// ---------------------------------------------------------------------------------
// The same queries on both engines, from rows written directly.

/// 2026-03-01T00:00:00Z in unix ms.
const T0: i64 = 1_772_323_200_000;

fn row(id: &str, at: i64, deployment: &str, latency_ms: i64) -> RequestRecord {
    RequestRecord {
        request_id: id.to_owned(),
        started_at_ms: at,
        key_id: Some("cfg:app".into()),
        key_name: Some("app".into()),
        endpoint: "chat.completions",
        logical_model: Some("chat".into()),
        deployment: Some(deployment.to_owned()),
        provider: Some(format!("{deployment}-provider")),
        upstream_model: Some("m".into()),
        status: 200,
        cost_nano_usd: 10,
        latency_us: latency_ms * 1000,
        attempts: vec![AttemptRecord {
            attempt: 1,
            started_at_ms: at,
            deployment: deployment.to_owned(),
            provider: format!("{deployment}-provider"),
            upstream_model: "m".into(),
            status: Some(200),
            cost_nano_usd: 10,
            latency_us: latency_ms * 1000,
            ..AttemptRecord::default()
        }],
        ..RequestRecord::default()
    }
}

fn rows() -> Vec<RequestRecord> {
    let mut out = Vec::new();
    // Deployment a: latencies 1..=100 ms, one a second from T0.
    for i in 1..=100 {
        let mut r = row(&format!("a{i:03}"), T0 + i * 1000, "a", i);
        if i <= 4 {
            r.ttft_us = Some(i * 100);
            r.streamed = true;
        }
        out.push(r);
    }
    // Deployment b: 10, 20, 30 ms; the last one after a failed attempt on a.
    for (i, ms) in [10, 20, 30].into_iter().enumerate() {
        let at = T0 + 120_000 + i64::try_from(i).expect("small") * 1000;
        out.push(row(&format!("b{i}"), at, "b", ms));
    }
    if let Some(last) = out.last_mut() {
        last.team_id = Some("research".into());
        last.attempts.insert(
            0,
            AttemptRecord {
                attempt: 1,
                started_at_ms: last.started_at_ms,
                deployment: "a".into(),
                provider: "a-provider".into(),
                upstream_model: "m".into(),
                status: Some(503),
                error_class: Some("upstream_overloaded".into()),
                latency_us: 5_000,
                ..AttemptRecord::default()
            },
        );
        if let Some(second) = last.attempts.get_mut(1) {
            second.attempt = 2;
        }
    }
    // Refused before dispatch, and one outside the window (an hour earlier).
    let mut refused = row("refused", T0 + 150_000, "x", 1);
    refused.deployment = None;
    refused.provider = None;
    refused.status = 401;
    refused.error_code = Some("invalid_api_key".into());
    refused.key_id = None;
    refused.key_name = None;
    refused.attempts.clear();
    refused.cost_nano_usd = 0;
    out.push(refused);
    out.push(row("old", T0 - 3_600_000, "a", 999));
    out
}

async fn stats_suite(db: &Database) {
    let engine = db.kind();
    let ledger = Ledger::open(LedgerOptions::on(db.clone()))
        .await
        .expect("open ledger");
    let sink = ledger.sink();
    for r in rows() {
        sink.record(r);
    }
    let written = ledger.shutdown().await.expect("shutdown").written;
    assert_eq!(written, 105, "{engine}");

    // The hour after T0 (its end inside the last minute bucket).
    let w = Window::ending_at(T0 + 3_600_000 - 1, 3_600_000, 60_000);
    assert_eq!(w.start_ms, T0, "{engine}");
    assert_eq!(w.buckets(), 60, "{engine}");
    let o = overview(db, &w).await.expect("overview");
    assert_eq!(o.requests, 104, "{engine}");
    assert_eq!(o.errors, 1, "{engine}");
    assert_eq!(o.cost_nano_usd, 1030, "{engine}");
    let names: Vec<&str> = o
        .deployments
        .iter()
        .map(|d| d.deployment.as_str())
        .collect();
    assert_eq!(names, ["(none)", "a", "b"], "{engine}");
    let a = &o.deployments[1];
    assert_eq!(
        (a.requests, a.attempts, a.failed_attempts),
        (100, 101, 1),
        "{engine}"
    );
    assert_eq!(a.latency.p50_us, Some(50_000), "{engine}");
    assert_eq!(a.latency.p99_us, Some(99_000), "{engine}");
    // TTFT 100, 200, 300, 400 µs: ranks 2 and 4.
    assert_eq!(a.ttft.p50_us, Some(200), "{engine}");
    assert_eq!(a.ttft.p99_us, Some(400), "{engine}");
    let b = &o.deployments[2];
    assert_eq!(b.provider, "b-provider", "{engine}");
    assert_eq!(
        (b.requests, b.attempts, b.failed_attempts),
        (3, 3, 0),
        "{engine}"
    );
    assert_eq!(b.latency.p50_us, Some(20_000), "{engine}");
    assert_eq!(b.latency.p99_us, Some(30_000), "{engine}");
    assert_eq!(b.ttft.p50_us, None, "{engine}");
    // All 104: 1, 1..=100 and 10, 20, 30 ms, sorted; rank 52 is 48 ms, rank 103 is 99 ms.
    assert_eq!(o.latency.p50_us, Some(48_000), "{engine}");
    assert_eq!(o.latency.p99_us, Some(99_000), "{engine}");
    // Traffic per minute: a's rows are at seconds 1..=100 (59 in minute 0, 41 in
    // minute 1), b's at 120..122 s (minute 2), the refusal at 150 s.
    assert_eq!(o.traffic.len(), 60, "{engine}");
    let minute = |i: usize| o.traffic[i].clone().into_iter().collect::<Vec<_>>();
    assert_eq!(minute(0), [("a-provider".to_owned(), 59)], "{engine}");
    assert_eq!(minute(1), [("a-provider".to_owned(), 41)], "{engine}");
    assert_eq!(
        minute(2),
        [("(none)".to_owned(), 1), ("b-provider".to_owned(), 3)],
        "{engine}"
    );
    assert!(o.traffic[3..].iter().all(|b| b.is_empty()), "{engine}");

    let errors = errors_by_class(db, &w).await.expect("errors");
    assert_eq!(errors.len(), 1, "{engine}");
    assert_eq!(errors[0].deployment, "a", "{engine}");
    assert_eq!(errors[0].error_class, "upstream_overloaded", "{engine}");
    assert_eq!(errors[0].attempts, 1, "{engine}");
    assert_eq!(errors[0].last_at_ms, T0 + 122_000, "{engine}");

    let list = |f: RequestFilter| async move {
        recent_requests(db, &RequestFilter { limit: 500, ..f })
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.request_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(list(RequestFilter::default()).await.len(), 105, "{engine}");
    let newest = list(RequestFilter::default()).await;
    assert_eq!(&newest[..3], ["refused", "b2", "b1"], "{engine}");
    assert_eq!(
        list(RequestFilter {
            team: Some("research".into()),
            ..RequestFilter::default()
        })
        .await,
        ["b2"],
        "{engine}"
    );
    assert_eq!(
        list(RequestFilter {
            status: Some(StatusFilter::Error),
            ..RequestFilter::default()
        })
        .await,
        ["refused"],
        "{engine}"
    );
    assert_eq!(
        list(RequestFilter {
            status: Some(StatusFilter::Code(401)),
            ..RequestFilter::default()
        })
        .await,
        ["refused"],
        "{engine}"
    );
    let by_key = list(RequestFilter {
        key: Some("app".into()),
        before_ms: Some(T0 + 3_000),
        ..RequestFilter::default()
    })
    .await;
    assert_eq!(by_key, ["a002", "a001", "old"], "{engine}");
    let page = recent_requests(
        db,
        &RequestFilter {
            key: Some("cfg:app".into()),
            limit: 2,
            ..RequestFilter::default()
        },
    )
    .await
    .expect("page");
    assert_eq!(page.len(), 2, "{engine}");

    let (r, attempts) = request_detail(db, "b2")
        .await
        .expect("detail")
        .expect("found");
    assert_eq!(r.team_id.as_deref(), Some("research"), "{engine}");
    let route: Vec<(String, Option<i64>)> = attempts
        .iter()
        .map(|a| (a.deployment.clone(), a.status))
        .collect();
    assert_eq!(
        route,
        [("a".to_owned(), Some(503)), ("b".to_owned(), Some(200))],
        "{engine}"
    );
    assert!(request_detail(db, "nope").await.expect("detail").is_none());
}

#[tokio::test]
async fn the_stats_queries_answer_alike_on_both_engines() {
    let dir = tempfile::tempdir().expect("tempdir");
    stats_suite(&Database::Sqlite(dir.path().join("stats.db"))).await;
    let pg_db = pg::TestDb::create().await;
    let pg = Postgres::connect(&PostgresConfig {
        url: Secret::new(pg_db.url.as_str()),
        max_connections: 5,
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .expect("connect to the test database");
    stats_suite(&Database::Postgres(pg)).await;
}

/// What one dashboard poll costs the database: the Overview's and the Health page's
/// queries over a ledger of 100,000 requests in the last hour, on each engine.
/// Prints the figures; asserts only the counts (never speed). Run with
/// `cargo test -p switchyard --test dashboard -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn stats_query_cost() {
    const N: i64 = 100_000;
    let end = T0 + 3_600_000 - 1;
    let dir = tempfile::tempdir().expect("tempdir");
    let pg_db = pg::TestDb::create().await;
    let pg = Postgres::connect(&PostgresConfig {
        url: Secret::new(pg_db.url.as_str()),
        max_connections: 5,
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .expect("connect");
    for db in [
        Database::Sqlite(dir.path().join("cost.db")),
        Database::Postgres(pg),
    ] {
        let ledger = Ledger::open(LedgerOptions::on(db.clone()))
            .await
            .expect("open ledger");
        let sink = ledger.sink();
        for i in 0..N {
            let deployment = ["a", "b", "c", "d"][usize::try_from(i % 4).expect("small")];
            let mut r = row(&format!("r{i:06}"), T0 + i * 36, deployment, 1 + i % 997);
            r.ttft_us = (i % 2 == 0).then_some(100 + i % 89);
            if i % 50 == 0 {
                r.attempts[0].error_class = Some("upstream_5xx".into());
            }
            sink.record(r);
        }
        assert_eq!(
            ledger.shutdown().await.expect("shutdown").written,
            u64::try_from(N).expect("positive")
        );
        let w = Window::ending_at(end, 3_600_000, 60_000);
        let mut took = Vec::new();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let o = overview(&db, &w).await.expect("overview");
            let overview_ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(o.requests, u64::try_from(N).expect("positive"));
            let t = std::time::Instant::now();
            let e = errors_by_class(&db, &w).await.expect("errors");
            let errors_ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(e.len(), 2, "every 50th row fails: deployments a and c");
            let t = std::time::Instant::now();
            let l = recent_requests(
                &db,
                &RequestFilter {
                    limit: 100,
                    ..RequestFilter::default()
                },
            )
            .await
            .expect("list");
            let list_ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(l.len(), 100);
            took.push((overview_ms, errors_ms, list_ms));
        }
        println!(
            "{}: {N} rows in the window; overview, errors by class, 100 recent rows (ms, 3 runs): {took:.1?}",
            db.kind()
        );
    }
}
