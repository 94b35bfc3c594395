//! The gateway end to end over HTTP, against the simulator's fault injection.

mod common;

use common::{sse_data, user, Harness, KEY};
use serde_json::{json, Value};
use sqlx::Row;
use switchyard_sim::{Fault, Latency};

async fn json_of(res: reqwest::Response) -> Value {
    let text = res.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_openai_error(body: &Value, code: &str) {
    let err = &body["error"];
    assert!(err.is_object(), "no error object: {body}");
    for field in ["message", "type", "param", "code"] {
        assert!(err.get(field).is_some(), "error lacks `{field}`: {body}");
    }
    assert_eq!(err["code"], code, "{body}");
}

#[tokio::test]
async fn plain_chat_is_forwarded_with_upstream_model_and_credentials() {
    let mut h = Harness::start().await;
    let res = h
        .chat(json!({
            "model": "gpt-4o-mini",
            "messages": user("Hello there"),
            "temperature": 0.2,
            "seed": 7,
            "x_custom_field": {"kept": true}
        }))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "oa-mini");
    assert_eq!(res.headers()["x-switchyard-provider"], "oa");
    assert_eq!(res.headers()["x-switchyard-attempts"], "1");
    let request_id = res.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = json_of(res).await;
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"].as_str().is_some());
    let usage = body["usage"].clone();

    let seen = h.sim.sim.requests("");
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(
        up.header("authorization"),
        Some("Bearer sk-upstream-secret")
    );
    assert_eq!(up.body["model"], "gpt-4o-mini");
    // Unknown fields reach an OpenAI-style upstream untouched.
    assert_eq!(up.body["temperature"], 0.2);
    assert_eq!(up.body["seed"], 7);
    assert_eq!(up.body["x_custom_field"], json!({"kept": true}));

    let db = h.finish().await;
    let row = sqlx::query("SELECT * FROM requests WHERE request_id = ?")
        .bind(&request_id)
        .fetch_one(&db)
        .await
        .expect("ledger row");
    assert_eq!(row.get::<i64, _>("status"), 200);
    assert_eq!(row.get::<String, _>("key_id"), "cfg:app");
    assert_eq!(row.get::<String, _>("key_name"), "app");
    assert_eq!(row.get::<String, _>("logical_model"), "gpt-4o-mini");
    assert_eq!(row.get::<String, _>("deployment"), "oa-mini");
    assert_eq!(row.get::<String, _>("upstream_model"), "gpt-4o-mini");
    let prompt = usage["prompt_tokens"].as_i64().expect("prompt");
    let completion = usage["completion_tokens"].as_i64().expect("completion");
    assert_eq!(row.get::<i64, _>("prompt_tokens"), prompt);
    assert_eq!(row.get::<i64, _>("completion_tokens"), completion);
    // 0.15 and 0.60 USD per million tokens, in nano-USD, rounded once.
    let expected = (prompt * 150_000_000 + completion * 600_000_000 + 500_000) / 1_000_000;
    assert_eq!(row.get::<i64, _>("cost_nano_usd"), expected);
    assert_eq!(row.get::<i64, _>("streamed"), 0);
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE request_id = ?")
        .bind(&request_id)
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn cached_tokens_are_billed_at_the_cached_rate() {
    let mut h = Harness::start().await;
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("[[cached]] a long shared prefix of text")}))
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let u = &body["usage"];
    let prompt = u["prompt_tokens"].as_i64().expect("prompt");
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_i64()
        .expect("cached");
    let completion = u["completion_tokens"].as_i64().expect("completion");
    assert!(
        cached > 0,
        "the simulator reports cached tokens for [[cached]]"
    );
    let db = h.finish().await;
    let (cost, row_cached): (i64, i64) =
        sqlx::query_as("SELECT cost_nano_usd, cached_tokens FROM requests")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(row_cached, cached);
    let expected = ((prompt - cached) * 150_000_000
        + cached * 75_000_000
        + completion * 600_000_000
        + 500_000)
        / 1_000_000;
    assert_eq!(cost, expected);
}

#[tokio::test]
async fn stream_relays_chunks_and_hides_the_forced_usage_chunk() {
    let h = Harness::start().await;
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("Tell me a story"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = res.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert!(chunks.len() >= 3);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| !c["choices"].as_array().expect("choices").is_empty()));
    assert!(chunks.last().expect("last")["choices"][0]["finish_reason"].is_string());
    // The gateway asked the upstream for usage although the client did not.
    let up = &h.sim.sim.requests("")[0];
    assert_eq!(up.body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn stream_with_usage_ends_with_the_usage_chunk_and_ledger_matches() {
    let mut h = Harness::start().await;
    let res = h
        .chat(json!({
            "model": "gpt-4o-mini",
            "messages": user("Tell me a story"),
            "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).expect("json");
    assert_eq!(usage_chunk["choices"], json!([]));
    let completion = usage_chunk["usage"]["completion_tokens"]
        .as_i64()
        .expect("usage");
    let db = h.finish().await;
    let (streamed, tokens, ttft): (i64, i64, Option<i64>) =
        sqlx::query_as("SELECT streamed, completion_tokens, ttft_us FROM requests")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(streamed, 1);
    assert_eq!(tokens, completion);
    assert!(ttft.is_some());
}

#[tokio::test]
async fn tools_and_response_format_pass_through() {
    let h = Harness::start().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let res = h
        .chat(json!({
            "model": "gpt-4o-mini",
            "messages": user("What is the weather in Paris?"),
            "tools": tools,
            "tool_choice": "required"
        }))
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("string"))
        .expect("arguments are JSON");
    assert!(args["city"].is_string());
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    let schema = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema":
        {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}});
    let res = h
        .chat(
            json!({"model": "gpt-4o-mini", "messages": user("Answer"), "response_format": schema}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    let content: Value = serde_json::from_str(
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("text"),
    )
    .expect("JSON content");
    assert!(content["ok"].is_boolean());
    let seen = h.sim.sim.requests("");
    assert_eq!(seen[0].body["tool_choice"], "required");
    assert_eq!(seen[1].body["response_format"], schema);
}

#[tokio::test]
async fn client_errors_are_openai_shaped_with_param() {
    let mut h = Harness::start().await;
    let raw = |body: &'static str| {
        h.post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = raw("{not json").await.expect("send");
    assert_eq!(res.status(), 400);
    assert_openai_error(&json_of(res).await, "invalid_json");

    let res = raw(r#"{"model":"gpt-4o-mini"}"#).await.expect("send");
    assert_eq!(res.status(), 400);
    let body = json_of(res).await;
    assert_openai_error(&body, "invalid_request");
    assert_eq!(body["error"]["param"], "messages");

    let res = raw(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":42}]}"#)
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    assert_eq!(json_of(res).await["error"]["param"], "messages[0].content");

    let res = raw(r#"{"model":"gpt-4o-mini","messages":[{"role":"wizard","content":"x"}]}"#)
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    assert_eq!(json_of(res).await["error"]["param"], "messages[0].role");

    let res = raw(r#"{"model":"gpt-4o-mini","messages":[],"n":1}"#)
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    assert_eq!(json_of(res).await["error"]["param"], "messages");

    let res = raw(
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}"#,
    )
    .await
    .expect("send");
    assert_eq!(res.status(), 400);
    assert_eq!(json_of(res).await["error"]["param"], "max_tokens");

    let res = h
        .chat(json!({"model": "no-such-model", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 404);
    let body = json_of(res).await;
    assert_openai_error(&body, "model_not_found");
    assert_eq!(body["error"]["param"], "model");

    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .json(&json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    assert_openai_error(&json_of(res).await, "missing_api_key");

    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth("sy-wrong-key-000000")
        .json(&json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    assert_openai_error(&json_of(res).await, "invalid_api_key");

    let big = "x".repeat(70_000);
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user(&big)}))
        .await;
    assert_eq!(res.status(), 413);
    assert_openai_error(&json_of(res).await, "request_too_large");

    let res = h
        .client
        .get(format!("{}/v1/nothing-here", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 404);
    assert_openai_error(&json_of(res).await, "unknown_url");

    // None of these reached the upstream.
    assert!(h.sim.sim.requests("").is_empty());
    // Every request that reached the gateway has its ledger row.
    let db = h.finish().await;
    let statuses: Vec<i64> =
        sqlx::query_scalar("SELECT status FROM requests ORDER BY started_at_ms")
            .fetch_all(&db)
            .await
            .expect("rows");
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec![400, 400, 400, 400, 400, 400, 401, 401, 404, 413],
        "{statuses:?}"
    );
    let unauthenticated: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE key_id IS NULL")
            .fetch_one(&db)
            .await
            .expect("count");
    // The two 401s; the 413's row still names its caller (the key is looked at
    // before the body is read, though a bad key is answered only after it).
    assert_eq!(unauthenticated, 2);
}

#[tokio::test]
async fn upstream_errors_map_to_the_right_status() {
    let h = Harness::start_with(common::PATIENT_BREAKER).await;
    let sim = &h.sim.sim;
    sim.set_fault("primary", "*", Fault::error(500));
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 502);
    let text = res.text().await.expect("body");
    assert!(!text.contains("sk-upstream-secret"));
    assert_openai_error(
        &serde_json::from_str(&text).expect("json"),
        "upstream_error",
    );

    sim.set_fault("primary", "*", Fault::error(503));
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 503);

    sim.set_fault("primary", "*", Fault::error(401));
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(
        res.status(),
        502,
        "our credential's failure is not the client's 401"
    );
    let body = json_of(res).await;
    assert_openai_error(&body, "upstream_auth_failed");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("primary-mini"));

    // primary-mini allows 300 ms to the first byte.
    sim.set_fault("primary", "*", Fault::stall(1500));
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 504);
    assert_openai_error(&json_of(res).await, "upstream_timeout");

    sim.set_fault("primary", "*", Fault::malformed());
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 502);
    assert_openai_error(&json_of(res).await, "upstream_bad_response");

    // Last: a 429 also marks the deployment out of capacity for its retry-after.
    sim.set_fault("primary", "*", Fault::error(429).retry_after(7));
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "7");
    assert_openai_error(&json_of(res).await, "rate_limit_exceeded");
    // The next request does not reach the provider: the gateway answers 429 itself.
    let before = sim.requests("primary").len();
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=7).contains(&wait), "{wait}");
    assert_openai_error(&json_of(res).await, "capacity_exhausted");
    assert_eq!(sim.requests("primary").len(), before);
}

#[tokio::test]
async fn upstream_400_is_passed_on_and_not_retried() {
    let h = Harness::start().await;
    h.sim.sim.set_fault("primary", "*", Fault::error(400));
    let res = h
        .chat(json!({"model": "failover", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 400);
    assert!(
        h.sim.sim.requests("backup").is_empty(),
        "a client error is not retried elsewhere"
    );
}

#[tokio::test]
async fn failover_to_the_next_deployment_is_invisible() {
    let mut h = Harness::start_with(common::PATIENT_BREAKER).await;
    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    for _ in 0..5 {
        let res = h
            .chat(json!({"model": "failover", "messages": user("hi")}))
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-switchyard-deployment"], "backup-mini");
        assert_eq!(res.headers()["x-switchyard-attempts"], "2");
    }
    // A stream whose upstream stalls before the first event fails over too.
    h.sim.sim.clear_faults();
    h.sim.sim.set_latency(
        "primary",
        "*",
        Latency {
            ttft_ms: 1500,
            chunk_delay_ms: 0,
            chunks: None,
        },
    );
    let res = h
        .chat(json!({"model": "failover", "messages": user("hi"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "backup-mini");
    let text = res.text().await.expect("body");
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));

    let db = h.finish().await;
    let failed: Vec<(String, Option<i64>, String)> = sqlx::query_as(
        "SELECT deployment, status, error_class FROM attempts WHERE error_class IS NOT NULL ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("attempts");
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(failed[..5]
        .iter()
        .all(|(d, s, c)| d == "primary-mini" && *s == Some(500) && c == "upstream_5xx"));
    assert_eq!(failed[5].2, "timeout");
    let ok: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE status = 200 AND attempt_count = 2",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(ok, 6);
}

#[tokio::test]
async fn stream_cut_after_first_bytes_ends_with_one_error_event() {
    let mut h = Harness::start().await;
    h.sim.sim.set_fault("", "*", Fault::cut(3));
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("Tell me a long story please"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body is terminated cleanly");
    let data = sse_data(&text);
    assert!(
        !data.iter().any(|d| d == "[DONE]"),
        "no [DONE] after an error"
    );
    let last: Value = serde_json::from_str(data.last().expect("events")).expect("json");
    assert_eq!(last["error"]["code"], "stream_cut");
    assert!(data.len() >= 2, "content came before the cut: {data:?}");
    let db = h.finish().await;
    let (code, estimated): (String, i64) =
        sqlx::query_as("SELECT error_code, usage_estimated FROM requests")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(code, "stream_cut");
    assert_eq!(
        estimated, 1,
        "a cut stream reports no usage; the ledger estimates"
    );
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_recorded() {
    let mut h = Harness::start().await;
    h.sim.sim.set_latency(
        "",
        "*",
        Latency {
            ttft_ms: 0,
            chunk_delay_ms: 200,
            chunks: Some(20),
        },
    );
    let mut res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("Tell me a story"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.expect("read").expect("a first chunk");
    assert!(!first.is_empty());
    drop(res);
    // The gateway notices on its next write; wait until the row exists (bounded).
    let mut found = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if h.sim.sim.requests("").len() == 1 {
            found = true;
            break;
        }
    }
    assert!(found);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let db = h.finish().await;
    let (disconnected, status, code): (i64, i64, String) =
        sqlx::query_as("SELECT client_disconnected, status, error_code FROM requests")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(disconnected, 1);
    assert_eq!(status, 200);
    assert_eq!(code, "client_disconnected");
}

#[tokio::test]
async fn azure_classic_and_v1_paths() {
    let h = Harness::start().await;
    let res = h
        .chat(json!({"model": "azure-classic", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    assert!(body["choices"][0]["message"]["content"].is_string());
    let seen = h.sim.sim.requests("azure");
    assert_eq!(
        seen[0].path,
        "/azure/openai/deployments/mini-prod/chat/completions"
    );
    assert_eq!(seen[0].query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen[0].header("api-key"), Some("azure-upstream-secret"));
    assert_eq!(seen[0].header("authorization"), None);

    // Azure streams open with a prompt-filter chunk without choices; clients never see it.
    let res = h
        .chat(
            json!({"model": "azure-classic", "messages": user("hi"), "stream": true,
                     "stream_options": {"include_usage": true}}),
        )
        .await;
    let text = res.text().await.expect("body");
    let data = sse_data(&text);
    let first: Value = serde_json::from_str(&data[0]).expect("json");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).expect("json");
    assert!(usage["usage"]["total_tokens"].as_i64().is_some());

    let res = h
        .chat(json!({"model": "azure-v1", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 200);
    let seen = h.sim.sim.requests("azurev1");
    assert_eq!(seen[0].path, "/azurev1/openai/v1/chat/completions");
    assert_eq!(seen[0].body["model"], "mini-v1");
}

#[tokio::test]
async fn embeddings_and_models() {
    let mut h = Harness::start().await;
    let res = h
        .post("/v1/embeddings")
        .json(&json!({"model": "embed", "input": ["one", "two"], "encoding_format": "float"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let body = json_of(res).await;
    assert_eq!(body["data"].as_array().expect("data").len(), 2);
    let tokens = body["usage"]["prompt_tokens"].as_i64().expect("usage");
    assert_eq!(
        h.sim.sim.requests("")[0].body["model"],
        "text-embedding-3-small"
    );

    let res = h
        .post("/v1/embeddings")
        .json(&json!({"model": "embed", "input": 5}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    assert_eq!(json_of(res).await["error"]["param"], "input");

    let res = h
        .client
        .get(format!("{}/v1/models", h.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    let body = json_of(res).await;
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [
            "azure-classic",
            "azure-v1",
            "embed",
            "failover",
            "gpt-4o-mini",
            "primary-only"
        ]
    );
    let res = h
        .client
        .get(format!("{}/v1/models/failover", h.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(json_of(res).await["id"], "failover");
    let res = h
        .client
        .get(format!("{}/v1/models", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);

    let db = h.finish().await;
    let (endpoint, prompt): (String, i64) =
        sqlx::query_as("SELECT endpoint, prompt_tokens FROM requests WHERE status = 200")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(endpoint, "embeddings");
    assert_eq!(prompt, tokens);
}

#[tokio::test]
async fn health_and_readiness_and_drain() {
    let mut h = Harness::start().await;
    let res = h
        .client
        .get(format!("{}/healthz", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let res = h
        .client
        .get(format!("{}/readyz", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);

    // A slow stream in flight when shutdown starts completes, and is in the ledger.
    h.sim.sim.set_latency(
        "",
        "*",
        Latency {
            ttft_ms: 0,
            chunk_delay_ms: 50,
            chunks: Some(10),
        },
    );
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("story"), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    let reader = tokio::spawn(async move { res.text().await });
    let gateway = h.gateway.take().expect("running");
    let report = gateway.shutdown().await.expect("shutdown");
    assert!(report.drained);
    assert_eq!(report.ledger.written, 1);
    let text = reader.await.expect("join").expect("body");
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
    let db = h.finish().await;
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE status = 200 AND client_disconnected = 0",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(n, 1);
}

/// Shutdown in its order: `/readyz` fails first while new connections are still
/// accepted and served (load balancers need that time to stop sending), and only
/// after `server.drain_grace_ms` does the listener close.
#[tokio::test]
async fn readyz_fails_through_the_grace_before_the_listener_closes() {
    // Long enough for a few loopback requests, whatever the machine's load; the test
    // asserts what happens in it, not how long it lasts.
    let mut h = Harness::start_with_grace(|_| String::new(), 2000).await;
    // A fresh connection per request: what is checked is that the listener accepts.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let ready = |client: reqwest::Client, base: String| async move {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(
        ready(fresh.clone(), h.base.clone()).await.expect("ready"),
        200
    );

    let gateway = h.gateway.take().expect("running");
    let addr = gateway.addr();
    let shutdown = tokio::spawn(gateway.shutdown());

    // The readiness check fails as soon as shutdown begins...
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let status = ready(fresh.clone(), h.base.clone()).await;
        let failing = status.as_ref().is_ok_and(|s| *s == 503);
        statuses.push(status.map_err(|e| e.to_string()));
        if failing {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        matches!(statuses.last(), Some(Ok(503))),
        "/readyz did not answer 503 during the grace: {statuses:?}"
    );
    // ...while a new connection is still accepted and its request served.
    let res = fresh
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-4o-mini", "messages": user("still there?")}))
        .send()
        .await
        .expect("accepted during the grace");
    assert_eq!(res.status(), 200);
    assert!(json_of(res).await["choices"][0]["message"]["content"].is_string());

    let report = shutdown.await.expect("join").expect("shutdown");
    assert!(report.drained);
    assert_eq!(
        report.ledger.written, 1,
        "the request served in the grace is in the ledger"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed once shutdown returns"
    );
}

/// An upstream that does not know the deployment's model (404, Bedrock's
/// `ResourceNotFoundException`) or redirects is the gateway's misconfiguration: the
/// next deployment serves, and when none can, the client gets a 502 that names the
/// deployment, never the provider's message or URL.
#[tokio::test]
async fn misconfigured_deployments_fail_over_and_answer_502() {
    let mut h = Harness::start_with_sim(|sim| {
        format!(
            r#"
[providers.br-primary]
kind = "bedrock"
base_url = "{sim}/primary"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[deployments.br-wrong]
provider = "br-primary"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"

[models.bedrock-first]
deployments = ["br-wrong", "backup-mini"]
"#
        )
    })
    .await;
    for (fault, model) in [
        (Fault::error(404), "failover"),
        (Fault::error(307), "failover"),
        (
            Fault::error(404).with_type("ResourceNotFoundException"),
            "bedrock-first",
        ),
    ] {
        h.sim.sim.clear_faults();
        h.sim.sim.set_fault("primary", "*", fault.clone());
        let res = h
            .chat(json!({"model": model, "messages": user("hi")}))
            .await;
        assert_eq!(res.status(), 200, "{fault:?}");
        assert_eq!(
            res.headers()["x-switchyard-deployment"],
            "backup-mini",
            "{fault:?}"
        );
    }
    assert_eq!(h.sim.sim.requests("primary").len(), 3, "each tried once");

    h.sim.sim.clear_faults();
    h.sim.sim.set_fault("primary", "*", Fault::error(404));
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 502);
    let body = json_of(res).await;
    assert_openai_error(&body, "deployment_misconfigured");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("`primary-mini`"), "{message}");
    for leak in ["http", "127.0.0.1", "/primary", "gpt-4o-mini"] {
        assert!(!message.contains(leak), "`{leak}` in {message}");
    }
    assert_eq!(
        h.sim.sim.requests("primary").len(),
        4,
        "no second round for a deployment the upstream does not know"
    );

    let db = h.finish().await;
    let classes: Vec<String> = sqlx::query_scalar(
        "SELECT error_class FROM attempts WHERE deployment IN ('primary-mini', 'br-wrong') ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("attempts");
    assert_eq!(classes, ["misconfigured"; 4]);
    // The upstream's status is kept on the attempt, for the operator to see.
    let statuses: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT status FROM attempts WHERE deployment IN ('primary-mini', 'br-wrong') ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("attempts");
    assert!(
        statuses
            .iter()
            .all(|s| s.is_some_and(|s| s == 404 || (300..400).contains(&s))),
        "{statuses:?}"
    );
}
