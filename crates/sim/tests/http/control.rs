//! The `/_sim` control endpoint and the request recorder.

use serde_json::{json, Value};
use switchyard_sim::{Fault, FaultKind, Scenario, ScenarioFault, SimOptions};

use crate::{read, start, start_with, user, KEY};

async fn control(
    env: &crate::Env,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> crate::Got {
    let mut req = env.client.request(method, env.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    read(req.send().await.expect("send")).await
}

#[tokio::test]
async fn health() {
    let env = start().await;
    let got = control(&env, reqwest::Method::GET, "/_sim/health", None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn faults_over_http() {
    let env = start().await;
    let got = control(
        &env,
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"instance": "primary", "model": "gpt-4o-mini",
                    "kind": "error", "status": 503, "retry_after_s": 2, "count": 1})),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let listed = control(&env, reqwest::Method::GET, "/_sim/faults", None)
        .await
        .json();
    assert_eq!(
        listed["faults"],
        json!([{"instance": "primary", "model": "gpt-4o-mini", "kind": "error",
                "status": 503, "retry_after_s": 2, "count": 1, "remaining": 1}])
    );
    let got = env.post("/primary/v1/chat/completions", &user("x")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("2"));
    assert_eq!(
        env.post("/primary/v1/chat/completions", &user("x"))
            .await
            .status,
        200
    );

    // Defaults: instance "" and model "*".
    control(
        &env,
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"kind": "error", "status": 429})),
    )
    .await;
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        429
    );
    let got = control(&env, reqwest::Method::DELETE, "/_sim/faults", None).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        200
    );

    for bad in [
        json!({"kind": "explode"}),
        json!({"kind": "stall", "stall": 100}),
        json!({"kind": "error", "status": 42}),
        json!(["kind", "error"]),
    ] {
        let got = control(
            &env,
            reqwest::Method::POST,
            "/_sim/faults",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(got.status, 400, "{bad}");
        assert!(got.json()["error"]["message"].is_string());
    }
    let got = control(
        &env,
        reqwest::Method::POST,
        "/_sim/latency",
        Some(json!({"ttft": 5})),
    )
    .await;
    assert_eq!(got.status, 400);
    let listed = control(&env, reqwest::Method::GET, "/_sim/faults", None)
        .await
        .json();
    assert_eq!(listed["faults"], json!([]));
}

#[tokio::test]
async fn latency_over_http() {
    let env = start().await;
    let got = control(
        &env,
        reqwest::Method::POST,
        "/_sim/latency",
        Some(json!({"model": "*", "chunks": 2})),
    )
    .await;
    assert_eq!(got.status, 200);
    let listed = control(&env, reqwest::Method::GET, "/_sim/latency", None)
        .await
        .json();
    assert_eq!(listed["latencies"][0]["chunks"], 2);
    let mut body = user("[[len:10]] x");
    body["stream"] = json!(true);
    let got = env.post("/v1/chat/completions", &body).await;
    let chunks = crate::stream_chunks(&got.text);
    let content = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content, 2);
    control(&env, reqwest::Method::DELETE, "/_sim/latency", None).await;
    let listed = control(&env, reqwest::Method::GET, "/_sim/latency", None)
        .await
        .json();
    assert_eq!(listed["latencies"], json!([]));
}

#[tokio::test]
async fn recorded_requests_over_http_and_api() {
    let env = start().await;
    let resp = env
        .client
        .post(env.url("/primary/v1/chat/completions?trace=1"))
        .bearer_auth(KEY)
        .header("x-custom", "yes")
        .json(&user("record me"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let recorded = env.sim().requests("primary");
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/primary/v1/chat/completions");
    assert_eq!(r.query.as_deref(), Some("trace=1"));
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("X-Custom"), Some("yes"));
    assert_eq!(r.body, user("record me"));
    assert!(env.sim().requests("").is_empty());

    let listed = control(
        &env,
        reqwest::Method::GET,
        "/_sim/requests?instance=primary",
        None,
    )
    .await
    .json();
    assert_eq!(listed["requests"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        listed["requests"][0]["path"],
        "/primary/v1/chat/completions"
    );
    assert_eq!(
        listed["requests"][0]["body"]["messages"][0]["content"],
        "record me"
    );
    let default = control(&env, reqwest::Method::GET, "/_sim/requests", None)
        .await
        .json();
    assert_eq!(default["requests"], json!([]));

    control(&env, reqwest::Method::DELETE, "/_sim/requests", None).await;
    assert!(env.sim().requests("primary").is_empty());
}

#[tokio::test]
async fn reset_clears_everything() {
    let env = start().await;
    env.sim().set_fault("", "*", Fault::error(500));
    env.post("/v1/chat/completions", &user("x")).await;
    let got = control(&env, reqwest::Method::POST, "/_sim/reset", None).await;
    assert_eq!(got.status, 200);
    assert!(env.sim().requests("").is_empty());
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        200
    );
}

#[tokio::test]
async fn scenarios_at_start_and_over_http() {
    let scenario: Scenario = serde_json::from_value(json!({
        "faults": [{"instance": "primary", "kind": "error", "status": 429}],
        "latencies": [{"model": "gpt-4o", "ttft_ms": 1}]
    }))
    .expect("scenario JSON");
    assert_eq!(scenario.faults[0].model, "*");
    assert_eq!(scenario.faults[0].fault.kind, FaultKind::Error);
    let env = start_with(SimOptions {
        api_key: None,
        scenario,
        ..SimOptions::default()
    })
    .await;
    assert_eq!(
        env.post("/primary/v1/chat/completions", &user("x"))
            .await
            .status,
        429
    );

    let replacement = Scenario {
        faults: vec![ScenarioFault {
            instance: String::new(),
            model: "*".into(),
            fault: Fault::error(502),
        }],
        latencies: vec![],
    };
    let got = control(
        &env,
        reqwest::Method::POST,
        "/_sim/scenario",
        Some(serde_json::to_value(&replacement).expect("serialize")),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        env.post("/primary/v1/chat/completions", &user("x"))
            .await
            .status,
        200
    );
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        502
    );
}
