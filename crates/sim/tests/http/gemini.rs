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

const GEMINI3: &str = "gemini-3-pro-preview";

fn g3_path(method: &str) -> String {
    format!("/v1beta/models/{GEMINI3}:{method}")
}

fn g3_vertex_path(method: &str) -> String {
    format!("/v1/projects/p/locations/global/publishers/google/models/{GEMINI3}:{method}")
}

fn weather_request(text: &str) -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "tools": [{"functionDeclarations": [
            {"name": "get_weather", "parameters": {"type": "OBJECT",
                "properties": {"city": {"type": "STRING"}}, "required": ["city"]}},
            {"name": "get_time", "parameters": {"type": "OBJECT",
                "properties": {"zone": {"type": "STRING"}}, "required": ["zone"]}}
        ]}],
    })
}

/// The next request of the loop: the model's content, then one response per call.
fn continue_loop(first: &Value, model_content: &Value) -> Value {
    let responses: Vec<Value> = model_content["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["functionCall"]["name"].as_str())
        .map(|name| json!({"functionResponse": {"name": name, "response": {"result": "ok"}}}))
        .collect();
    let mut next = first.clone();
    let contents = next["contents"].as_array_mut().expect("contents");
    contents.push(model_content.clone());
    contents.push(json!({"role": "user", "parts": responses}));
    next
}

#[tokio::test]
async fn gemini3_thought_signatures_in_a_tool_loop() {
    let env = start().await;
    let first = weather_request("Call get_weather and get_time please");
    let got = post_key(&env, &g3_path("generateContent"), &first).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let answer = got.json();
    let content = answer["candidates"][0]["content"].clone();
    let parts = content["parts"].as_array().expect("parts");
    let calls: Vec<&Value> = parts
        .iter()
        .filter(|p| p.get("functionCall").is_some())
        .collect();
    assert_eq!(calls.len(), 2);
    // Parallel calls: only the first carries the signature.
    assert!(calls[0]["thoughtSignature"]
        .as_str()
        .is_some_and(|s| s.len() > 20));
    assert!(calls[1].get("thoughtSignature").is_none());
    // Gemini 3 always thinks; no summary without includeThoughts.
    assert!(answer["usageMetadata"]["thoughtsTokenCount"].as_u64() > Some(0));
    let u = &answer["usageMetadata"];
    assert_eq!(
        u["totalTokenCount"].as_u64(),
        Some(
            u["promptTokenCount"].as_u64().unwrap_or(0)
                + u["candidatesTokenCount"].as_u64().unwrap_or(0)
                + u["thoughtsTokenCount"].as_u64().unwrap_or(0)
        )
    );
    assert!(parts.iter().all(|p| p.get("thought").is_none()));

    // Signatures sent back: the loop goes on.
    let ok_next = post_key(
        &env,
        &g3_path("generateContent"),
        &continue_loop(&first, &content),
    )
    .await;
    assert_eq!(ok_next.status, 200, "{}", ok_next.text);

    // Stripped: Google's 400.
    let mut stripped = content.clone();
    for p in stripped["parts"].as_array_mut().expect("parts") {
        p.as_object_mut().map(|o| o.remove("thoughtSignature"));
    }
    let got = post_key(
        &env,
        &g3_path("generateContent"),
        &continue_loop(&first, &stripped),
    )
    .await;
    assert_eq!(got.status, 400);
    let err = got.json();
    assert_eq!(err["error"]["status"], "INVALID_ARGUMENT");
    let message = err["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("Function call is missing a thought_signature in functionCall parts."),
        "{message}"
    );
    assert!(message.contains("`default_api:get_weather`"), "{message}");

    // The documented skip value passes; a forged or foreign signature does not.
    let mut skipped = stripped.clone();
    for p in skipped["parts"].as_array_mut().expect("parts") {
        if p.get("functionCall").is_some() {
            p["thoughtSignature"] = json!("skip_thought_signature_validator");
        }
    }
    let got = post_key(
        &env,
        &g3_path("generateContent"),
        &continue_loop(&first, &skipped),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let mut forged = content.clone();
    forged["parts"][calls_index(&content)]["thoughtSignature"] = json!("Zm9yZ2VkIHNpZ25hdHVyZQ==");
    let got = post_key(
        &env,
        &g3_path("generateContent"),
        &continue_loop(&first, &forged),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["message"], "Invalid thought signature.");
    // Issued by the Gemini API, refused by Vertex AI (another provider kind).
    let resp = env
        .client
        .post(env.url(&g3_vertex_path("generateContent")))
        .bearer_auth("ya29.token")
        .json(&continue_loop(&first, &content))
        .send()
        .await
        .expect("send");
    let got = read(resp).await;
    assert_eq!(got.status, 400, "{}", got.text);
    assert_eq!(got.json()["error"]["message"], "Invalid thought signature.");
    // Vertex words a missing signature its own way.
    let resp = env
        .client
        .post(env.url(&g3_vertex_path("generateContent")))
        .bearer_auth("ya29.token")
        .json(&continue_loop(&first, &stripped))
        .send()
        .await
        .expect("send");
    let got = read(resp).await;
    assert_eq!(got.status, 400);
    assert!(
        got.text.contains(
            "function call `get_weather` in the 2. content block is missing a `thought_signature`"
        ),
        "{}",
        got.text
    );

    // A new user turn with text closes the loop: older calls are not checked.
    let mut later = continue_loop(&first, &stripped);
    later["contents"]
        .as_array_mut()
        .expect("contents")
        .push(json!({"role": "model", "parts": [{"text": "Done."}]}));
    later["contents"]
        .as_array_mut()
        .expect("contents")
        .push(json!({"role": "user", "parts": [{"text": "Thanks"}]}));
    let got = post_key(&env, &g3_path("generateContent"), &later).await;
    assert_eq!(got.status, 200, "{}", got.text);

    // Gemini 2.5 never asks for signatures.
    let got = post_key(
        &env,
        &gemini_path("generateContent"),
        &continue_loop(&first, &stripped),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
}

fn calls_index(content: &Value) -> usize {
    content["parts"]
        .as_array()
        .and_then(|p| p.iter().position(|p| p.get("functionCall").is_some()))
        .unwrap_or(0)
}

#[tokio::test]
async fn gemini3_streams_signatures_and_thought_summaries() {
    let env = start().await;
    let mut first = weather_request("Call get_weather for Rome");
    first["generationConfig"] =
        json!({"thinkingConfig": {"thinkingLevel": "low", "includeThoughts": true}});
    let plain = post_key(&env, &g3_path("generateContent"), &first)
        .await
        .json();
    let parts = plain["candidates"][0]["content"]["parts"]
        .as_array()
        .expect("parts")
        .clone();
    assert_eq!(parts[0]["thought"], true);
    assert!(parts[0]["text"].as_str().is_some_and(|t| !t.is_empty()));
    let got = post_key(
        &env,
        &format!("{}?alt=sse", g3_path("streamGenerateContent")),
        &first,
    )
    .await;
    assert_eq!(got.status, 200);
    let chunks = sse_chunks(&got.text);
    let streamed: Vec<Value> = chunks
        .iter()
        .flat_map(|c| {
            c["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(streamed[0], parts[0], "the thought summary comes first");
    let call = streamed
        .iter()
        .find(|p| p.get("functionCall").is_some())
        .expect("a call");
    let plain_call = parts
        .iter()
        .find(|p| p.get("functionCall").is_some())
        .expect("call");
    assert_eq!(call["thoughtSignature"], plain_call["thoughtSignature"]);
    let last = chunks.last().expect("chunks");
    assert_eq!(
        last["usageMetadata"]["thoughtsTokenCount"],
        plain["usageMetadata"]["thoughtsTokenCount"]
    );
    // The streamed signature works in the next turn.
    let content = json!({"role": "model", "parts": streamed});
    let got = post_key(
        &env,
        &g3_path("generateContent"),
        &continue_loop(&first, &content),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
}

#[tokio::test]
async fn thinking_config_rules_per_model() {
    let env = start().await;
    let with = |config: Value| {
        let mut b = user("hello");
        b["generationConfig"] = json!({"thinkingConfig": config});
        b
    };
    // Both set: refused.
    let got = post_key(
        &env,
        &g3_path("generateContent"),
        &with(json!({"thinkingLevel": "HIGH", "thinkingBudget": 1024})),
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(got.text.contains("cannot both be set"), "{}", got.text);
    // thinkingLevel is Gemini 3's; 2.5 refuses it.
    let got = post_key(
        &env,
        &gemini_path("generateContent"),
        &with(json!({"thinkingLevel": "LOW"})),
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(
        got.text.contains("Thinking level is not supported"),
        "{}",
        got.text
    );
    let got = post_key(
        &env,
        &g3_path("generateContent"),
        &with(json!({"thinkingLevel": "EXTREME"})),
    )
    .await;
    assert_eq!(got.status, 400);
    // 2.5 thinks with a budget (and reports it), not without one.
    let thinking = post_key(
        &env,
        &gemini_path("generateContent"),
        &with(json!({"thinkingBudget": 1024, "includeThoughts": true})),
    )
    .await;
    assert_eq!(thinking.status, 200, "{}", thinking.text);
    let thinking = thinking.json();
    assert!(thinking["usageMetadata"]["thoughtsTokenCount"].as_u64() > Some(0));
    assert_eq!(
        thinking["candidates"][0]["content"]["parts"][0]["thought"],
        true
    );
    let off = post_key(
        &env,
        &gemini_path("generateContent"),
        &with(json!({"thinkingBudget": 0, "includeThoughts": true})),
    )
    .await
    .json();
    assert!(off["usageMetadata"].get("thoughtsTokenCount").is_none());
    let default = post_key(&env, &gemini_path("generateContent"), &user("hello"))
        .await
        .json();
    assert!(default["usageMetadata"].get("thoughtsTokenCount").is_none());
    // Function calls of 2.5 carry no signature.
    let call = post_key(
        &env,
        &gemini_path("generateContent"),
        &weather_request("Call get_weather"),
    )
    .await
    .json();
    assert!(call["candidates"][0]["content"]["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .all(|p| p.get("thoughtSignature").is_none()));
}
