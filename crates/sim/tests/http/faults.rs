//! Fault injection and latency over HTTP.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_sim::{Fault, Latency};

use crate::{read_until_error, sse_payloads, start, stream_chunks, user, KEY};

fn streaming(text: &str) -> Value {
    let mut body = user(text);
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn error_faults_carry_status_shape_and_retry_after() {
    let env = start().await;
    env.sim().set_fault("", "*", Fault::error(429));
    let got = env.post("/v1/chat/completions", &user("x")).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    let e = got.json();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    for key in ["message", "type", "param", "code"] {
        assert!(e["error"].get(key).is_some(), "missing {key}");
    }

    env.sim()
        .set_fault("", "*", Fault::error(503).retry_after(7));
    let got = env.post("/v1/chat/completions", &streaming("x")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("7"));
    assert_eq!(got.json()["error"]["type"], "server_error");

    env.sim().set_fault("", "*", Fault::error(500));
    let got = env.post("/v1/chat/completions", &user("x")).await;
    assert_eq!(got.status, 500);
    assert!(got.header("retry-after").is_none());
    assert_eq!(got.json()["error"]["code"], "server_error");

    // Embeddings get faults too.
    let got = env
        .post("/v1/embeddings", &json!({"model": "e", "input": "x"}))
        .await;
    assert_eq!(got.status, 500);
}

#[tokio::test]
async fn counted_faults_expire() {
    let env = start().await;
    env.sim()
        .set_fault("", "gpt-4o-mini", Fault::error(500).times(2));
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        500
    );
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        500
    );
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        200
    );
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        200
    );
}

#[tokio::test]
async fn model_fault_beats_wildcard_and_other_models_are_spared() {
    let env = start().await;
    env.sim().set_fault("", "*", Fault::error(503));
    env.sim().set_fault("", "gpt-4o-mini", Fault::error(429));
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        429
    );
    let mut other = user("x");
    other["model"] = json!("gpt-4o");
    assert_eq!(env.post("/v1/chat/completions", &other).await.status, 503);
    env.sim().clear();
    assert_eq!(env.post("/v1/chat/completions", &other).await.status, 200);
}

#[tokio::test]
async fn faults_are_per_instance() {
    let env = start().await;
    env.sim().set_fault("primary", "*", Fault::error(500));
    assert_eq!(
        env.post("/primary/v1/chat/completions", &user("x"))
            .await
            .status,
        500
    );
    assert_eq!(
        env.post("/v1/chat/completions", &user("x")).await.status,
        200
    );
    assert_eq!(
        env.post("/backup/v1/chat/completions", &user("x"))
            .await
            .status,
        200
    );
    assert_eq!(env.sim().requests("primary").len(), 1);
    assert_eq!(env.sim().requests("").len(), 1);
    assert_eq!(env.sim().requests("backup").len(), 1);
    assert_eq!(
        env.handle.url("primary"),
        format!("{}/primary", env.handle.base_url())
    );
    assert_eq!(env.handle.url(""), env.handle.base_url());
}

#[tokio::test]
async fn stall_delays_plain_and_streamed_answers() {
    let env = start().await;
    env.sim().set_fault("", "*", Fault::stall(200));
    let t = Instant::now();
    let got = env.post("/v1/chat/completions", &user("x")).await;
    assert_eq!(got.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));

    let t = Instant::now();
    let resp = env
        .client
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&streaming("x"))
        .send()
        .await
        .expect("send");
    // The stall comes after the first event: headers arrive, then the pause.
    let got = crate::read(resp).await;
    assert!(t.elapsed() >= Duration::from_millis(200));
    let chunks = stream_chunks(&got.text);
    assert!(chunks.len() > 3);
}

#[tokio::test]
async fn latency_applies_and_sets_chunking() {
    let env = start().await;
    env.sim().set_latency(
        "",
        "*",
        Latency {
            ttft_ms: 100,
            chunk_delay_ms: 10,
            chunks: Some(3),
        },
    );
    let t = Instant::now();
    let got = env
        .post("/v1/chat/completions", &streaming("[[len:12]] x"))
        .await;
    assert!(t.elapsed() >= Duration::from_millis(100 + 10 * 4));
    let chunks = stream_chunks(&got.text);
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content_chunks, 3);
    let t = Instant::now();
    let got = env.post("/v1/chat/completions", &user("x")).await;
    assert_eq!(got.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn cut_stream_fails_mid_transfer() {
    let env = start().await;
    env.sim().set_fault("", "*", Fault::cut(3));
    let resp = env
        .client
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&streaming("[[len:20]] x"))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status().as_u16(), 200);
    let (text, failed) = read_until_error(resp).await;
    assert!(failed, "the body must end in an error, got {text:?}");
    assert!(!text.contains("[DONE]"));
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text:?}");
    for e in events {
        let payload = e.strip_prefix("data: ").expect("data line");
        serde_json::from_str::<Value>(payload).expect("complete chunks before the cut");
    }
}

#[tokio::test]
async fn cut_plain_answer_fails_mid_json() {
    let env = start().await;
    env.sim().set_fault("", "*", Fault::cut(0));
    let resp = env
        .client
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&user("x"))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status().as_u16(), 200);
    let (text, failed) = read_until_error(resp).await;
    assert!(failed);
    assert!(text.starts_with('{'));
    assert!(serde_json::from_str::<Value>(&text).is_err());
}

#[tokio::test]
async fn malformed_bodies() {
    let env = start().await;
    env.sim().set_fault("", "*", Fault::malformed().times(2));
    let got = env.post("/v1/chat/completions", &user("x")).await;
    assert_eq!(got.status, 200);
    assert!(
        serde_json::from_str::<Value>(&got.text).is_err(),
        "{}",
        got.text
    );

    let got = env.post("/v1/chat/completions", &streaming("x")).await;
    assert_eq!(got.status, 200);
    let payloads = sse_payloads(&got.text);
    let broken = payloads
        .iter()
        .filter(|p| *p != "[DONE]" && serde_json::from_str::<Value>(p).is_err())
        .count();
    assert_eq!(broken, 1, "{}", got.text);

    // The count is used up: the next answer is whole again.
    let got = env.post("/v1/chat/completions", &user("x")).await;
    assert!(serde_json::from_str::<Value>(&got.text).is_ok());
}

#[tokio::test]
async fn error_type_is_accepted_by_the_control_endpoint_and_sent_as_code() {
    let env = start().await;
    let resp = env
        .client
        .post(env.url("/_sim/faults"))
        .json(
            &json!({"kind": "error", "status": 503, "error_type": "engine_overloaded", "count": 1}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let listed = env.get("/_sim/faults").await.json();
    assert_eq!(listed["faults"][0]["error_type"], "engine_overloaded");
    let got = env.post("/v1/chat/completions", &user("x")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.json()["error"]["code"], "engine_overloaded");
}
