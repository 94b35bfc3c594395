//! Chat completions over HTTP, OpenAI paths.

use serde_json::{json, Value};
use switchyard_sim::schema_check::validate;
use switchyard_sim::SimOptions;

use crate::{start, start_with, stream_chunks, streamed_content, user};

#[tokio::test]
async fn plain_chat_has_the_openai_shape() {
    let env = start().await;
    let got = env.post("/v1/chat/completions", &user("hello")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert!(got
        .header("x-request-id")
        .is_some_and(|v| v.starts_with("req_")));
    for h in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(got.header(h).is_some(), "missing {h}");
    }
    let body = got.json();
    assert!(body["id"]
        .as_str()
        .is_some_and(|s| s.starts_with("chatcmpl-")));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().is_some_and(|t| t > 1_700_000_000));
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["system_fingerprint"], "fp_sim");
    assert!(body.get("prompt_filter_results").is_none());
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1);
    let c = &choices[0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["finish_reason"], "stop");
    assert!(c.get("logprobs").is_some_and(Value::is_null));
    assert!(c.get("content_filter_results").is_none());
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"].get("refusal").is_some_and(Value::is_null));
    assert!(c["message"].get("tool_calls").is_none());
    let content = c["message"]["content"].as_str().expect("content");
    let words = content.split_whitespace().count();
    assert!((3..=40).contains(&words), "{content}");
    let u = &body["usage"];
    // 3 per prompt + ceil(5 chars / 4) + 4 per message.
    assert_eq!(u["prompt_tokens"], 9);
    let completion = u["completion_tokens"].as_u64().expect("completion");
    assert!((8..=40).contains(&completion));
    assert_eq!(u["total_tokens"].as_u64(), Some(9 + completion));
    assert_eq!(
        u["prompt_tokens_details"],
        json!({"cached_tokens": 0, "audio_tokens": 0})
    );
    assert_eq!(
        u["completion_tokens_details"],
        json!({"reasoning_tokens": 0, "audio_tokens": 0,
               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0})
    );
}

#[tokio::test]
async fn answers_are_deterministic_and_depend_on_the_prompt() {
    let env = start().await;
    let a = env.chat(user("same question")).await;
    let b = env.chat(user("same question")).await;
    let c = env.chat(user("another question")).await;
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["id"], b["id"]);
    assert_ne!(
        a["choices"][0]["message"]["content"],
        c["choices"][0]["message"]["content"]
    );
}

#[tokio::test]
async fn stream_framing_with_usage() {
    let env = start().await;
    let mut body = user("stream me");
    let plain = env.chat(body.clone()).await;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let got = env.post("/v1/chat/completions", &body).await;
    assert_eq!(got.status, 200);
    assert!(got
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let chunks = stream_chunks(&got.text);
    assert!(chunks.len() >= 5, "{}", got.text);
    let id = &chunks[0]["id"];
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(&c["id"], id);
        assert_eq!(c["created"], chunks[0]["created"]);
        assert_eq!(c["model"], "gpt-4o-mini");
    }
    // Role first, with empty content.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    // Every chunk but the last carries `usage: null`; the last has no choices and the usage.
    let (usage_chunk, rest) = chunks.split_last().expect("chunks");
    for c in rest {
        assert!(c.get("usage").is_some_and(Value::is_null), "{c}");
        assert_eq!(c["choices"].as_array().map(Vec::len), Some(1));
    }
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], plain["usage"]);
    // The finish chunk is the last with choices: empty delta, finish_reason set.
    let finish = &rest[rest.len() - 1]["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert_eq!(finish["finish_reason"], "stop");
    for c in &rest[..rest.len() - 1] {
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    // The streamed text equals the plain answer.
    assert_eq!(
        streamed_content(&chunks, 0),
        plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
}

#[tokio::test]
async fn stream_without_usage_option_has_no_usage_key() {
    let env = start().await;
    let mut body = user("no usage");
    body["stream"] = json!(true);
    let got = env.post("/v1/chat/completions", &body).await;
    let chunks = stream_chunks(&got.text);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(chunks
        .iter()
        .all(|c| !c["choices"].as_array().expect("choices").is_empty()));
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }
        }},
        {"type": "function", "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"]
            }
        }}
    ])
}

fn tool_request(text: &str, extra: Value) -> Value {
    let mut body = user(text);
    body["tools"] = weather_tools();
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

/// Checks the tool calls of a message and returns their names.
fn check_calls(message: &Value) -> Vec<String> {
    assert!(message["content"].is_null(), "{message}");
    let tools = weather_tools();
    message["tool_calls"]
        .as_array()
        .expect("tool_calls")
        .iter()
        .map(|call| {
            let id = call["id"].as_str().expect("id");
            assert!(id.starts_with("call_") && id.len() == 29, "{id}");
            assert!(id[5..].chars().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(call["type"], "function");
            let name = call["function"]["name"].as_str().expect("name").to_string();
            let args_text = call["function"]["arguments"]
                .as_str()
                .expect("arguments are a string");
            let args: Value = serde_json::from_str(args_text).expect("arguments are JSON");
            let schema = tools
                .as_array()
                .and_then(|t| t.iter().find(|t| t["function"]["name"] == json!(name)))
                .map(|t| t["function"]["parameters"].clone())
                .expect("known tool");
            validate(&schema, &args).unwrap_or_else(|e| panic!("{args}: {e}"));
            name
        })
        .collect()
}

#[tokio::test]
async fn tool_calls_named_required_auto_and_none() {
    let env = start().await;
    let forced = env
        .chat(tool_request(
            "anything",
            json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        ))
        .await;
    assert_eq!(forced["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(check_calls(&forced["choices"][0]["message"]), ["get_time"]);
    assert!(forced["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0));

    let required = env
        .chat(tool_request(
            "nothing named",
            json!({"tool_choice": "required"}),
        ))
        .await;
    assert_eq!(
        check_calls(&required["choices"][0]["message"]),
        ["get_weather"]
    );
    let required = env
        .chat(tool_request(
            "call get_time please",
            json!({"tool_choice": "required"}),
        ))
        .await;
    assert_eq!(
        check_calls(&required["choices"][0]["message"]),
        ["get_time"]
    );

    let auto = env
        .chat(tool_request(
            "get_time and then get_weather for Paris",
            json!({}),
        ))
        .await;
    assert_eq!(
        check_calls(&auto["choices"][0]["message"]),
        ["get_time", "get_weather"]
    );
    let ids: Vec<&Value> = auto["choices"][0]["message"]["tool_calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_ne!(ids[0], ids[1]);

    let single = env
        .chat(tool_request(
            "get_time and then get_weather",
            json!({"parallel_tool_calls": false, "tool_choice": "auto"}),
        ))
        .await;
    assert_eq!(check_calls(&single["choices"][0]["message"]), ["get_time"]);

    let none = env
        .chat(tool_request("get_time", json!({"tool_choice": "none"})))
        .await;
    assert_eq!(none["choices"][0]["finish_reason"], "stop");
    assert!(none["choices"][0]["message"]["content"].is_string());

    let unnamed = env.chat(tool_request("just chat", json!({}))).await;
    assert_eq!(unnamed["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn tool_result_ends_the_round_trip() {
    let env = start().await;
    let first = env
        .chat(tool_request("get_weather in Oslo", json!({})))
        .await;
    let call = first["choices"][0]["message"]["tool_calls"][0].clone();
    let mut body = tool_request("get_weather in Oslo", json!({}));
    if let Some(messages) = body["messages"].as_array_mut() {
        messages.push(first["choices"][0]["message"].clone());
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "12 C"}));
    }
    let second = env.chat(body).await;
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert!(second["choices"][0]["message"]["content"].is_string());
    assert!(second["choices"][0]["message"].get("tool_calls").is_none());
    // A prompt with history costs more than the first turn.
    assert!(second["usage"]["prompt_tokens"].as_u64() > first["usage"]["prompt_tokens"].as_u64());
}

#[tokio::test]
async fn streamed_tool_calls_assemble_to_the_plain_ones() {
    let env = start().await;
    let body = tool_request("get_weather and get_time", json!({}));
    let plain = env.chat(body.clone()).await;
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let got = env.post("/v1/chat/completions", &streamed).await;
    let chunks = stream_chunks(&got.text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut fragments = vec![0usize; 2];
    for c in &chunks {
        let Some(deltas) = c["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for d in deltas {
            let index = d["index"].as_u64().expect("index") as usize;
            if index == calls.len() {
                // The first fragment of a call: id, type and name, empty arguments.
                assert_eq!(d["type"], "function");
                assert_eq!(d["function"]["arguments"], "");
                calls.push((
                    d["id"].as_str().expect("id").to_string(),
                    d["function"]["name"].as_str().expect("name").to_string(),
                    String::new(),
                ));
            } else {
                assert!(
                    d.get("id").is_none() && d["function"].get("name").is_none(),
                    "{d}"
                );
                calls[index]
                    .2
                    .push_str(d["function"]["arguments"].as_str().expect("args"));
                fragments[index] += 1;
            }
        }
    }
    assert!(fragments.iter().all(|n| *n >= 2), "{fragments:?}");
    let finish = chunks
        .iter()
        .rev()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
    let expected: Vec<(String, String, String)> = plain["choices"][0]["message"]["tool_calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                c["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(calls, expected);
}

#[tokio::test]
async fn structured_outputs() {
    let env = start().await;
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {"anyOf": [
                {"type": "object", "properties": {"city": {"type": "string"}},
                 "required": ["city"], "additionalProperties": false},
                {"type": "null"}
            ]}
        },
        "required": ["name", "age", "tags", "address"],
        "additionalProperties": false
    });
    let mut body = user("describe a person");
    body["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "person", "strict": true, "schema": schema}});
    let out = env.chat(body).await;
    let content = out["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    let value: Value = serde_json::from_str(content).expect("JSON content");
    validate(&schema, &value).unwrap_or_else(|e| panic!("{value}: {e}"));

    let mut body = user("give me JSON");
    body["response_format"] = json!({"type": "json_object"});
    let out = env.chat(body).await;
    let content = out["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    let value: Value = serde_json::from_str(content).expect("JSON content");
    assert!(value.is_object());
}

#[tokio::test]
async fn max_tokens_truncates_with_length() {
    let env = start().await;
    let full = env.chat(user("a long answer please [[len:30]]")).await;
    for key in ["max_tokens", "max_completion_tokens"] {
        let mut body = user("a long answer please [[len:30]]");
        body[key] = json!(5);
        let cut = env.chat(body).await;
        assert_eq!(cut["choices"][0]["finish_reason"], "length");
        assert_eq!(cut["usage"]["completion_tokens"], 5);
        let short = cut["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        let long = full["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert!(
            long.starts_with(short) && short.len() < long.len(),
            "{short} / {long}"
        );
    }
}

#[tokio::test]
async fn stop_sequences_cut_before_the_match() {
    let env = start().await;
    let mut body = user("[[echo]] alpha beta STOP gamma delta");
    let echoed = env.chat(body.clone()).await;
    assert_eq!(
        echoed["choices"][0]["message"]["content"],
        "alpha beta STOP gamma delta"
    );
    body["stop"] = json!("STOP");
    let out = env.chat(body.clone()).await;
    assert_eq!(out["choices"][0]["message"]["content"], "alpha beta ");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    body["stop"] = json!(["delta", "beta"]);
    let out = env.chat(body.clone()).await;
    assert_eq!(out["choices"][0]["message"]["content"], "alpha ");
    // Streamed, the same cut applies.
    body["stream"] = json!(true);
    let got = env.post("/v1/chat/completions", &body).await;
    assert_eq!(streamed_content(&stream_chunks(&got.text), 0), "alpha ");
}

#[tokio::test]
async fn n_choices_differ_and_stream_per_index() {
    let env = start().await;
    let mut body = user("several please");
    let single = env.chat(body.clone()).await;
    body["n"] = json!(3);
    let out = env.chat(body.clone()).await;
    let choices = out["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    let texts: Vec<&str> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i);
            c["message"]["content"].as_str().expect("content")
        })
        .collect();
    assert_ne!(texts[0], texts[1]);
    assert_ne!(texts[1], texts[2]);
    // Choice 0 is the n=1 answer.
    assert_eq!(texts[0], single["choices"][0]["message"]["content"]);
    // Usage covers every choice.
    assert!(
        out["usage"]["completion_tokens"].as_u64() > single["usage"]["completion_tokens"].as_u64()
    );

    body["stream"] = json!(true);
    let got = env.post("/v1/chat/completions", &body).await;
    let chunks = stream_chunks(&got.text);
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(streamed_content(&chunks, i as u64), *text);
        let finishes = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == json!(i))
            .filter(|c| c["choices"][0]["finish_reason"] == "stop")
            .count();
        assert_eq!(finishes, 1);
    }
}

#[tokio::test]
async fn validation_errors_are_openai_shaped() {
    let env = start().await;
    let got = env
        .post("/v1/chat/completions", &json!({"model": "m"}))
        .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let e = got.json();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["param"], "messages");
    assert!(e["error"].get("code").is_some());
    assert!(e["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));

    let got = env
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": []}),
        )
        .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["param"], "messages");

    let resp = env
        .client
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(crate::KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    let got = crate::read(resp).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["type"], "invalid_request_error");

    let got = env.post("/v1/nothing/here", &json!({})).await;
    assert_eq!(got.status, 404);
    assert!(got.json()["error"]["message"].is_string());
    let got = env.get("/v1/chat/completions").await;
    assert_eq!(got.status, 405);
    assert!(got.json()["error"]["message"].is_string());
}

#[tokio::test]
async fn auth_is_required_and_checked() {
    let env = start().await;
    let resp = env
        .client
        .post(env.url("/v1/chat/completions"))
        .json(&user("hi"))
        .send()
        .await
        .expect("send");
    let got = crate::read(resp).await;
    assert_eq!(got.status, 401);
    let e = got.json();
    assert_eq!(
        e["error"],
        json!({"message": e["error"]["message"], "type": "invalid_request_error",
               "param": null, "code": "invalid_api_key"})
    );

    let env = start_with(SimOptions {
        api_key: Some("right-key-000".into()),
        ..SimOptions::default()
    })
    .await;
    let wrong = env.post("/v1/chat/completions", &user("hi")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    assert!(
        !wrong.text.contains(crate::KEY),
        "the key must not be echoed whole"
    );
    let resp = env
        .client
        .post(env.url("/v1/chat/completions"))
        .bearer_auth("right-key-000")
        .json(&user("hi"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn images_are_accepted_and_counted() {
    let env = start().await;
    let text_only = env.chat(user("what is this")).await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]}]});
    let out = env.chat(body).await;
    assert_eq!(
        out["usage"]["prompt_tokens"].as_u64(),
        text_only["usage"]["prompt_tokens"]
            .as_u64()
            .map(|n| n + 170)
    );
}

#[tokio::test]
async fn cached_marker_reports_cached_tokens() {
    let env = start().await;
    let out = env
        .chat(user(
            "[[cached]] a prompt that the provider has seen before",
        ))
        .await;
    let prompt = out["usage"]["prompt_tokens"].as_u64().expect("prompt");
    assert_eq!(
        out["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(prompt / 2)
    );
}

#[tokio::test]
async fn models_list_and_get() {
    let env = start().await;
    let got = env.get("/v1/models").await;
    assert_eq!(got.status, 200);
    let list = got.json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "switchyard-sim");
            assert!(m["created"].is_u64());
            m["id"].as_str().expect("id")
        })
        .collect();
    for want in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "text-embedding-3-small",
        "text-embedding-3-large",
    ] {
        assert!(ids.contains(&want), "{want}");
    }
    let one = env.get("/v1/models/gpt-4o").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "gpt-4o");
    let missing = env.get("/v1/models/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn reasoning_effort_for_reasoning_models_only() {
    let env = crate::start().await;
    let ask = |model: &str, effort: Option<&str>| {
        let mut b = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let Some(e) = effort {
            b["reasoning_effort"] = json!(e);
        }
        b
    };
    let low = env.chat(ask("o4-mini", Some("low"))).await;
    let high = env.chat(ask("o4-mini", Some("high"))).await;
    let default = env.chat(ask("gpt-5-mini", None)).await;
    let r = |v: &Value| {
        v["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!((r(&low), r(&high), r(&default)), (64, 512, 192));
    // Reasoning is part of the completion tokens.
    let text_tokens = |v: &Value| v["usage"]["completion_tokens"].as_u64().unwrap_or(0) - r(v);
    assert!(text_tokens(&low) > 0 && text_tokens(&high) > 0);
    assert!(text_tokens(&high) < 64, "the answer itself stays short");
    // A model that does not reason: no reasoning tokens, and no reasoning_effort.
    let plain = env.chat(ask("gpt-4o-mini", None)).await;
    assert_eq!(r(&plain), 0);
    let got = env
        .post("/v1/chat/completions", &ask("gpt-4o-mini", Some("low")))
        .await;
    assert_eq!(got.status, 400);
    let err = got.json();
    assert_eq!(err["error"]["code"], "unsupported_parameter");
    assert_eq!(err["error"]["param"], "reasoning_effort");
    let got = env
        .post("/v1/chat/completions", &ask("o3", Some("extreme")))
        .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["code"], "invalid_value");
    // The recorder keeps what arrived.
    let seen = env.sim().requests("");
    assert!(seen.iter().any(|q| q.body["reasoning_effort"] == "high"));
    // Streams report the same usage.
    let mut streamed = ask("o4-mini", Some("high"));
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let got = env.post("/v1/chat/completions", &streamed).await;
    let chunks = crate::stream_chunks(&got.text);
    assert_eq!(chunks.last().map(r), Some(512));
}
