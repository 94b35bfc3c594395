//! The Gemini API and Vertex AI generateContent over HTTP.

use serde_json::{json, Value};
use switchyard_sim::schema_check::validate;
use switchyard_sim::{Fault, SimOptions};

use crate::{read, start, start_with, Env, Got};

const KEY: &str = "gm-test-key";
const MODEL: &str = "gemini-2.5-flash";

fn gemini_path(method: &str) -> String {
    format!("/v1beta/models/{MODEL}:{method}")
}

fn vertex_path(method: &str) -> String {
    format!(
        "/v1/projects/my-project/locations/us-central1/publishers/google/models/{MODEL}:{method}"
    )
}

fn user(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

async fn post_key(env: &Env, path: &str, body: &Value) -> Got {
    let resp = env
        .client
        .post(env.url(path))
        .header("x-goog-api-key", KEY)
        .json(body)
        .send()
        .await
        .expect("send");
    read(resp).await
}

async fn ok(env: &Env, body: &Value) -> Value {
    let got = post_key(env, &gemini_path("generateContent"), body).await;
    assert_eq!(got.status, 200, "{}", got.text);
    got.json()
}

/// `data: JSON` events separated by CRLF blank lines, as Google sends them.
fn sse_chunks(text: &str) -> Vec<Value> {
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    text[..text.len() - 4]
        .split("\r\n\r\n")
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            serde_json::from_str(data).expect("JSON chunk")
        })
        .collect()
}

#[tokio::test]
async fn generate_content_shape_and_auth() {
    let env = start_with(SimOptions {
        api_key: Some(KEY.into()),
        ..SimOptions::default()
    })
    .await;
    let r = ok(&env, &user("Hello")).await;
    let candidate = &r["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert!(candidate["content"]["parts"][0]["text"].is_string());
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(candidate["index"], 0);
    let usage = &r["usageMetadata"];
    assert_eq!(
        usage["totalTokenCount"].as_u64(),
        Some(
            usage["promptTokenCount"].as_u64().unwrap_or(0)
                + usage["candidatesTokenCount"].as_u64().unwrap_or(0)
        )
    );
    assert_eq!(r["modelVersion"], MODEL);
    assert!(r["responseId"].is_string());

    // The key may come as a query parameter; the v1 path works as v1beta does.
    let got = read(
        env.client
            .post(env.url(&format!("/v1/models/{MODEL}:generateContent?key={KEY}")))
            .json(&user("Hello"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["candidates"], r["candidates"]);

    let got = read(
        env.client
            .post(env.url(&gemini_path("generateContent")))
            .json(&user("x"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["error"]["status"], "PERMISSION_DENIED");
    let got = read(
        env.client
            .post(env.url(&gemini_path("generateContent")))
            .header("x-goog-api-key", "wrong")
            .json(&user("x"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got.status, 400);
    let e = got.json();
    assert_eq!(e["error"]["code"], 400);
    assert_eq!(e["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(e["error"]["details"][0]["reason"], "API_KEY_INVALID");
}

#[tokio::test]
async fn streaming_sse_chunks() {
    let env = start().await;
    let plain = ok(&env, &user("Tell me something")).await;
    let got = post_key(
        &env,
        &format!("{}?alt=sse", gemini_path("streamGenerateContent")),
        &user("Tell me something"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("text/event-stream"));
    let chunks = sse_chunks(&got.text);
    assert!(chunks.len() > 2);
    let text: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        text,
        plain["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or_default()
    );
    let (last, rest) = chunks.split_last().expect("chunks");
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(rest
        .iter()
        .all(|c| c["candidates"][0].get("finishReason").is_none()));
    assert_eq!(last["usageMetadata"], plain["usageMetadata"]);

    // Without alt=sse the stream is one JSON array.
    let got = post_key(
        &env,
        &gemini_path("streamGenerateContent"),
        &user("Tell me something"),
    )
    .await;
    let array: Value = serde_json::from_str(&got.text).expect("a JSON array");
    assert_eq!(array.as_array().map(Vec::len), Some(chunks.len()));
}

#[tokio::test]
async fn function_calls_with_openapi_schemas() {
    let env = start().await;
    let mut req = user("What's the weather in Rome?");
    req["tools"] = json!([{"functionDeclarations": [{
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "OBJECT", "properties": {
            "city": {"type": "STRING"},
            "days": {"type": "INTEGER", "minimum": 1, "maximum": 7}
        }, "required": ["city", "days"]}
    }]}]);
    req["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY"}});
    let r = ok(&env, &req).await;
    let candidate = &r["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    let call = &candidate["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "get_weather");
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"]});
    validate(&schema, &call["args"]).expect("args valid");

    let got = post_key(
        &env,
        &format!("{}?alt=sse", gemini_path("streamGenerateContent")),
        &req,
    )
    .await;
    let chunks = sse_chunks(&got.text);
    assert_eq!(chunks.len(), 1, "a function call arrives whole");
    assert_eq!(
        chunks[0]["candidates"][0]["content"]["parts"][0]["functionCall"],
        *call
    );

    // The function response ends the round trip with text.
    let round_trip = json!({"tools": req["tools"], "contents": [
        req["contents"][0],
        {"role": "model", "parts": [{"functionCall": call}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}}]}]});
    let answer = ok(&env, &round_trip).await;
    assert!(answer["candidates"][0]["content"]["parts"][0]["text"].is_string());

    // Mode NONE never calls.
    req["toolConfig"] = json!({"functionCallingConfig": {"mode": "NONE"}});
    let r = ok(&env, &req).await;
    assert!(r["candidates"][0]["content"]["parts"][0]["text"].is_string());
}

#[tokio::test]
async fn vertex_paths_and_bearer_auth() {
    let env = start_with(SimOptions {
        api_key: Some("ya29.token".into()),
        ..SimOptions::default()
    })
    .await;
    let got = read(
        env.client
            .post(env.url(&vertex_path("generateContent")))
            .bearer_auth("ya29.token")
            .json(&user("Hi"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let r = got.json();
    assert!(r["createTime"].is_string());
    assert_eq!(r["usageMetadata"]["trafficType"], "ON_DEMAND");
    let got = read(
        env.client
            .post(env.url(&vertex_path("generateContent")))
            .json(&user("Hi"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["status"], "UNAUTHENTICATED");
    let got = read(
        env.client
            .post(env.url(&format!("/backup/v1beta1/projects/p/locations/europe-west4/publishers/google/models/{MODEL}:streamGenerateContent?alt=sse")))
            .bearer_auth("ya29.token")
            .json(&user("Hi"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(!sse_chunks(&got.text).is_empty());
    assert_eq!(env.sim().requests("backup").len(), 1);
}

#[tokio::test]
async fn markers_candidates_json_and_validation() {
    let env = start().await;
    let r = ok(&env, &user("[[blocked]] something bad")).await;
    assert!(r.get("candidates").is_none());
    assert_eq!(r["promptFeedback"]["blockReason"], "SAFETY");

    let mut req = user("[[cached]] two answers please");
    req["generationConfig"] = json!({"candidateCount": 2, "maxOutputTokens": 4});
    let r = ok(&env, &req).await;
    assert_eq!(r["candidates"].as_array().map(Vec::len), Some(2));
    assert_eq!(r["candidates"][1]["index"], 1);
    assert_eq!(r["candidates"][0]["finishReason"], "MAX_TOKENS");
    let usage = &r["usageMetadata"];
    assert_eq!(usage["candidatesTokenCount"], 8);
    assert_eq!(
        usage["cachedContentTokenCount"].as_u64(),
        usage["promptTokenCount"].as_u64().map(|p| p / 2)
    );

    let mut req = user("Give me JSON");
    req["generationConfig"] = json!({"responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"name": {"type": "STRING"}}, "required": ["name"]}});
    let r = ok(&env, &req).await;
    let text = r["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default();
    let value: Value = serde_json::from_str(text).expect("JSON answer");
    assert!(value["name"].is_string());

    let got = post_key(
        &env,
        &gemini_path("generateContent"),
        &json!({"contents": []}),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["status"], "INVALID_ARGUMENT");

    let got = post_key(&env, &gemini_path("countTokens"), &user("hello")).await;
    assert_eq!(got.json()["totalTokens"], 9);
}

#[tokio::test]
async fn faults_as_google_rpc_status() {
    let env = start().await;
    env.sim().set_fault("", MODEL, Fault::error(429).times(1));
    let got = post_key(&env, &gemini_path("generateContent"), &user("x")).await;
    assert_eq!(got.status, 429);
    let e = got.json();
    assert_eq!(e["error"]["code"], 429);
    assert_eq!(e["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(e["error"]["details"][0]["retryDelay"], "1s");

    env.sim()
        .set_fault("", "*", Fault::error(503).mid_stream(2).times(1));
    let got = post_key(
        &env,
        &format!("{}?alt=sse", gemini_path("streamGenerateContent")),
        &user("x"),
    )
    .await;
    assert_eq!(got.status, 200);
    // Two data events, then the error as raw JSON (as Google sends it mid-stream).
    let (events, error) = got
        .text
        .split_at(got.text.rfind("\r\n\r\n").map_or(0, |i| i + 4));
    assert_eq!(sse_chunks(events).len(), 2);
    let error: Value = serde_json::from_str(error.trim()).expect("raw JSON error");
    assert_eq!(error["error"]["status"], "UNAVAILABLE");
}
