//! Azure OpenAI paths: classic (deployment + api-version) and v1.

use serde_json::{json, Value};
use switchyard_sim::Fault;

use crate::{read, start, stream_chunks, streamed_content, KEY};

const CLASSIC: &str = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";

fn messages(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

async fn azure_post(env: &crate::Env, path: &str, body: &Value) -> crate::Got {
    let resp = env
        .client
        .post(env.url(path))
        .header("api-key", KEY)
        .json(body)
        .send()
        .await
        .expect("send");
    read(resp).await
}

fn assert_filter(results: &Value) {
    for category in ["hate", "self_harm", "sexual", "violence"] {
        assert_eq!(
            results[category],
            json!({"filtered": false, "severity": "safe"}),
            "{results}"
        );
    }
}

#[tokio::test]
async fn classic_chat_with_api_key() {
    let env = start().await;
    let got = azure_post(&env, CLASSIC, &messages("hello azure")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(got.header("apim-request-id").is_some());
    let body = got.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "my-gpt");
    let prompt = &body["prompt_filter_results"][0];
    assert_eq!(prompt["prompt_index"], 0);
    assert_filter(&prompt["content_filter_results"]);
    assert_eq!(
        prompt["content_filter_results"]["jailbreak"],
        json!({"filtered": false, "detected": false})
    );
    assert_filter(&body["choices"][0]["content_filter_results"]);
    assert!(body["choices"][0]["message"]["content"].is_string());

    // Bearer works too; the path records the deployment.
    let resp = env
        .client
        .post(env.url(CLASSIC))
        .bearer_auth("entra-token")
        .json(&messages("hello"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let recorded = env.sim().requests("");
    assert_eq!(
        recorded[0].path,
        "/openai/deployments/my-gpt/chat/completions"
    );
    assert_eq!(recorded[0].query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(recorded[0].header("api-key"), Some(KEY));
}

#[tokio::test]
async fn classic_needs_api_version_and_key() {
    let env = start().await;
    let got = azure_post(
        &env,
        "/openai/deployments/d/chat/completions",
        &messages("x"),
    )
    .await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.json()["error"]["code"], "404");
    let got = azure_post(
        &env,
        "/openai/deployments/d/chat/completions?api-version=soon",
        &messages("x"),
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(got.json()["error"]["message"].is_string());

    let resp = env
        .client
        .post(env.url(CLASSIC))
        .json(&messages("x"))
        .send()
        .await
        .expect("send");
    let got = read(resp).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["code"], "401");
}

#[tokio::test]
async fn classic_stream_has_filter_chunks() {
    let env = start().await;
    let mut body = messages("stream from azure");
    let plain = azure_post(&env, CLASSIC, &body).await.json();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let got = azure_post(&env, CLASSIC, &body).await;
    assert_eq!(got.status, 200);
    let chunks = stream_chunks(&got.text);
    // First: no choices, the prompt filter results.
    assert_eq!(chunks[0]["choices"], json!([]));
    assert_filter(&chunks[0]["prompt_filter_results"][0]["content_filter_results"]);
    // Then the role chunk, and every choice carries content_filter_results.
    assert_eq!(chunks[1]["choices"][0]["delta"]["role"], "assistant");
    let with_choices: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"].as_array().expect("choices").is_empty())
        .collect();
    for c in &with_choices {
        assert!(c["choices"][0]["content_filter_results"].is_object(), "{c}");
        if c["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            assert_filter(&c["choices"][0]["content_filter_results"]);
        }
    }
    let last = chunks.last().expect("chunks");
    assert_eq!(last["usage"], plain["usage"]);
    assert_eq!(
        streamed_content(&chunks, 0),
        plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
}

#[tokio::test]
async fn classic_embeddings_and_models() {
    let env = start().await;
    let got = azure_post(
        &env,
        "/openai/deployments/emb/embeddings?api-version=2024-10-21",
        &json!({"input": "text", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let body = got.json();
    assert_eq!(body["model"], "emb");
    assert!(body["data"][0]["embedding"].is_string());

    let resp = env
        .client
        .get(env.url("/openai/models?api-version=2024-10-21"))
        .header("api-key", KEY)
        .send()
        .await
        .expect("send");
    let got = read(resp).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["object"], "list");
}

#[tokio::test]
async fn v1_paths() {
    let env = start().await;
    let mut body = messages("v1 hello");
    body["model"] = json!("dep-v1");
    let got = azure_post(&env, "/backup/openai/v1/chat/completions", &body).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let out = got.json();
    assert_eq!(out["model"], "dep-v1");
    assert!(out["prompt_filter_results"].is_array());
    assert_eq!(env.sim().requests("backup").len(), 1);

    let got = azure_post(
        &env,
        "/openai/v1/embeddings",
        &json!({"model": "dep-emb", "input": "x"}),
    )
    .await;
    assert_eq!(got.status, 200);
    let resp = env
        .client
        .get(env.url("/openai/v1/models"))
        .bearer_auth("token")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    // The model is required on v1 paths (there is no deployment in the path).
    let got = azure_post(&env, "/openai/v1/chat/completions", &messages("x")).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["param"], "model");
}

#[tokio::test]
async fn azure_rate_limit_shape_and_deployment_matching() {
    let env = start().await;
    env.sim()
        .set_fault("", "my-gpt", Fault::error(429).retry_after(3));
    let got = azure_post(&env, CLASSIC, &messages("x")).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("3"));
    assert_eq!(got.header("retry-after-ms"), Some("3000"));
    let e = got.json();
    assert_eq!(e["error"]["code"], "429");
    assert!(e["error"]["message"].is_string());
    // Another deployment is unaffected.
    let got = azure_post(
        &env,
        "/openai/deployments/other/chat/completions?api-version=2024-10-21",
        &messages("x"),
    )
    .await;
    assert_eq!(got.status, 200);
}
