//! Mistral's chat API (OpenAI-shaped, with Mistral's differences) over HTTP.

use serde_json::{json, Value};
use switchyard_sim::{Fault, SimOptions};

use crate::{sse_payloads, start, start_with, Env, Got};

const PATH: &str = "/mistral/v1/chat/completions";

fn tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}})
}

async fn chat(env: &Env, body: &Value) -> Got {
    env.post(PATH, body).await
}

fn is_mistral_id(id: &Value) -> bool {
    id.as_str()
        .is_some_and(|s| s.len() == 9 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[tokio::test]
async fn plain_and_tool_calls() {
    let env = start().await;
    let got = chat(
        &env,
        &json!({"model": "mistral-large-latest",
        "messages": [{"role": "user", "content": "Hello"}]}),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let r = got.json();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(r["choices"][0]["message"]["content"].is_string());
    assert!(r["usage"]["total_tokens"].is_u64());

    let got = chat(
        &env,
        &json!({"model": "mistral-large-latest", "tools": [tool()],
        "tool_choice": "any", "messages": [{"role": "user", "content": "What time is it?"}]}),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let r = got.json();
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
    let call = &r["choices"][0]["message"]["tool_calls"][0];
    assert!(is_mistral_id(&call["id"]), "{call}");
    assert_eq!(call["function"]["name"], "get_time");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))
        .expect("arguments are a JSON string");
    assert!(args["zone"].is_string());

    // Answering with the 9-character id works; an OpenAI-style id is refused.
    let answer = |id: &str| {
        json!({"model": "mistral-large-latest", "tools": [tool()], "messages": [
            {"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": id, "type": "function",
                "function": {"name": "get_time", "arguments": "{\"zone\":\"UTC\"}"}}]},
            {"role": "tool", "tool_call_id": id, "name": "get_time", "content": "12:00"}]})
    };
    let got = chat(&env, &answer(call["id"].as_str().unwrap_or_default())).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = chat(&env, &answer("call_abc123def456")).await;
    assert_eq!(got.status, 400);
    let e = got.json();
    assert_eq!(e["object"], "error");
    assert_eq!(e["type"], "invalid_function_call");
    assert!(e["message"]
        .as_str()
        .is_some_and(|m| m.contains("with a length of 9")));
}

#[tokio::test]
async fn stream_has_whole_tool_calls_and_usage_on_the_last_chunk() {
    let env = start().await;
    let got = chat(
        &env,
        &json!({"model": "mistral-small-latest", "stream": true, "tools": [tool()],
        "messages": [{"role": "user", "content": "Use get_time please"}]}),
    )
    .await;
    assert_eq!(got.status, 200);
    let payloads = sse_payloads(&got.text);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk"))
        .collect();
    let with_calls: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"].get("tool_calls").is_some())
        .collect();
    assert_eq!(with_calls.len(), 1, "the call arrives in one chunk");
    let call = &with_calls[0]["choices"][0]["delta"]["tool_calls"][0];
    assert!(is_mistral_id(&call["id"]));
    assert!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap_or("")).is_ok()
    );
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert!(last["usage"]["prompt_tokens"].is_u64());
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn errors_in_mistral_shapes() {
    let env = start_with(SimOptions {
        api_key: Some("mistral-key".into()),
        ..SimOptions::default()
    })
    .await;
    let got = env
        .client
        .post(env.url(PATH))
        .bearer_auth("wrong")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(got.status(), 401);
    assert_eq!(
        got.json::<Value>().await.expect("json"),
        json!({"detail": "Unauthorized"})
    );

    let env = start().await;
    let got = chat(&env, &json!({"model": "m"})).await;
    assert_eq!(got.status, 422);
    assert_eq!(
        got.json()["message"]["detail"][0]["loc"],
        json!(["body", "messages"])
    );
    let got = chat(
        &env,
        &json!({"model": "m", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["type"], "invalid_request_message_order");

    env.sim().set_fault("", "*", Fault::error(429).times(1));
    let got = chat(
        &env,
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(got.status, 429);
    assert_eq!(
        got.json(),
        json!({"message": "Requests rate limit exceeded"})
    );
}
