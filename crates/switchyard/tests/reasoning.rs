//! Reasoning models through the gateway: tool loops whose reasoning state (Gemini 3's
//! thought signatures, Claude's signed thinking blocks) must come back in the next
//! turn, on the same deployment and after a failover to another provider kind. The
//! simulator enforces each provider's documented rule (a missing, foreign or altered
//! signature is refused), so a loop that completes proves the state was carried.

mod common;

use common::{user, Harness, PATIENT_BREAKER};
use serde_json::{json, Value};
use switchyard_sim::{Fault, RecordedRequest};

fn extra_config(sim: &str) -> String {
    format!(
        r#"
{PATIENT_BREAKER}

[providers.r-anthropic]
kind = "anthropic"
base_url = "{sim}"
api_key = "sk-ant-sim"

[providers.r-bedrock]
kind = "bedrock"
base_url = "{sim}"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[providers.r-gemini]
kind = "gemini"
base_url = "{sim}"
api_key = "gemini-sim-key"

[deployments.g3-pro]
provider = "r-gemini"
model = "gemini-3-pro-preview"

[deployments.g3-flash]
provider = "r-gemini"
model = "gemini-3-flash-preview"

[deployments.g25]
provider = "r-gemini"
model = "gemini-2.5-flash"

[deployments.claude-45]
provider = "r-anthropic"
model = "claude-sonnet-4-5"

[deployments.claude-47]
provider = "r-anthropic"
model = "claude-opus-4-7"

[deployments.bedrock-claude]
provider = "r-bedrock"
model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

[models.r-gemini]
deployments = ["g3-pro"]

[models.r-bedrock]
deployments = ["bedrock-claude"]

[models.r-gemini-25]
deployments = ["g25"]

[models.r-claude]
deployments = ["claude-45"]

[models.r-claude-adaptive]
deployments = ["claude-47"]

[models.r-gemini-then-claude]
deployments = ["g3-pro", "claude-45"]

[models.r-claude-then-gemini]
deployments = ["claude-45", "g3-flash"]

[models.r-split]
strategy = "weighted"
deployments = [{{ name = "g3-pro", weight = 50 }}, {{ name = "g3-flash", weight = 50 }}]
"#
    )
}

async fn start() -> Harness {
    Harness::start_with_sim(extra_config).await
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}}}])
}

/// The assistant message of an answer, plain or streamed (deltas put together the
/// way a client does: text and reasoning appended, tool calls by index, thinking
/// blocks in order).
async fn assistant_message(res: reqwest::Response, stream: bool) -> (Value, String) {
    let status = res.status();
    if status != 200 {
        panic!("status {status}: {}", res.text().await.unwrap_or_default());
    }
    if !stream {
        let body: Value = res.json().await.expect("json");
        let choice = &body["choices"][0];
        let finish = choice["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return (choice["message"].clone(), finish);
    }
    let text = res.text().await.expect("body");
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut blocks: Vec<Value> = Vec::new();
    let mut finish = String::new();
    for data in common::sse_data(&text) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).expect("chunk json");
        assert!(chunk.get("error").is_none(), "stream error: {chunk}");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or_default());
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
        for b in delta["thinking_blocks"].as_array().into_iter().flatten() {
            blocks.push(b.clone());
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().expect("index") as usize;
            if calls.len() <= index {
                calls.push(json!({"id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}));
            }
            let args = call["function"]["arguments"].as_str().unwrap_or_default();
            let slot = &mut calls[index]["function"]["arguments"];
            *slot = json!(format!("{}{args}", slot.as_str().unwrap_or_default()));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !blocks.is_empty() {
        message["thinking_blocks"] = json!(blocks);
    }
    (message, finish)
}

/// One tool loop of `turns` user questions (each names the tool, so the model calls it
/// and then answers its result), sent as the official SDK would: every assistant
/// message back as it came. Returns the messages and the final finish reason.
async fn tool_loop(
    h: &Harness,
    model: &str,
    stream: bool,
    turns: usize,
    effort: Option<&str>,
    between: impl Fn(usize),
) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::new();
    let mut round = 0;
    for turn in 0..turns {
        messages.push(json!({"role": "user",
            "content": format!("Question {turn}: call get_weather for Paris, please.")}));
        for step in 0..2 {
            between(round);
            round += 1;
            let mut body = json!({"model": model, "messages": messages, "tools": weather_tool(),
                "stream": stream, "max_tokens": 300});
            if let Some(e) = effort {
                body["reasoning_effort"] = json!(e);
            }
            let (message, finish) = assistant_message(h.chat(body).await, stream).await;
            messages.push(message.clone());
            if step == 0 {
                assert_eq!(finish, "tool_calls", "turn {turn}: {message}");
                for call in message["tool_calls"].as_array().expect("calls") {
                    messages.push(json!({"role": "tool", "tool_call_id": call["id"],
                        "content": "{\"temperature\": 18}"}));
                }
            } else {
                assert_eq!(finish, "stop", "turn {turn}: {message}");
            }
        }
    }
    messages
}

/// The recorded generateContent bodies for `model`.
fn gemini_bodies(h: &Harness, model: &str) -> Vec<Value> {
    recorded(h, |r| r.path.contains(&format!("/models/{model}:")))
}

fn anthropic_bodies(h: &Harness, model: &str) -> Vec<Value> {
    recorded(h, |r| {
        r.path.ends_with("/v1/messages") && r.body["model"] == model
    })
}

fn recorded(h: &Harness, keep: impl Fn(&RecordedRequest) -> bool) -> Vec<Value> {
    h.sim
        .sim
        .requests("")
        .into_iter()
        .filter(|r| keep(r))
        .map(|r| r.body)
        .collect()
}

/// The `thoughtSignature` of each model turn's first function call in a body.
fn signatures(body: &Value) -> Vec<Option<String>> {
    body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["role"] == "model")
        .filter_map(|c| {
            c["parts"]
                .as_array()?
                .iter()
                .find(|p| p.get("functionCall").is_some())
                .map(|p| p["thoughtSignature"].as_str().map(str::to_owned))
        })
        .collect()
}

#[tokio::test]
async fn gemini_3_tool_loops_keep_their_thought_signatures() {
    for stream in [false, true] {
        for turns in [1, 2] {
            let h = start().await;
            let messages = tool_loop(&h, "r-gemini", stream, turns, None, |_| {}).await;
            // Every id the client saw carries the signature; none reached the upstream.
            let bodies = gemini_bodies(&h, "gemini-3-pro-preview");
            assert_eq!(bodies.len(), 2 * turns);
            for body in &bodies {
                assert!(!body.to_string().contains(".sy1."), "{body}");
            }
            // The last request gives back one real signature per model turn with calls.
            let last = bodies.last().expect("a request");
            let sigs = signatures(last);
            assert_eq!(sigs.len(), turns, "stream={stream}: {last}");
            for sig in &sigs {
                let sig = sig.as_deref().expect("signed");
                assert_ne!(sig, "skip_thought_signature_validator");
            }
            let ids: Vec<&str> = messages
                .iter()
                .filter_map(|m| m["tool_calls"][0]["id"].as_str())
                .collect();
            assert_eq!(ids.len(), turns);
            assert!(ids.iter().all(|id| id.contains(".sy1.gemini-")), "{ids:?}");
        }
    }
}

#[tokio::test]
async fn claude_thinking_blocks_go_back_verbatim_in_a_tool_loop() {
    for (model, upstream) in [
        ("r-claude", "claude-sonnet-4-5"),
        ("r-claude-adaptive", "claude-opus-4-7"),
    ] {
        for stream in [false, true] {
            let h = start().await;
            let messages = tool_loop(&h, model, stream, 2, Some("medium"), |_| {}).await;
            let first = messages
                .iter()
                .find(|m| m.get("tool_calls").is_some())
                .expect("a call");
            let blocks = first["thinking_blocks"]
                .as_array()
                .expect("thinking blocks");
            assert!(!blocks.is_empty());
            assert!(!first["reasoning_content"]
                .as_str()
                .unwrap_or_default()
                .is_empty());
            let bodies = anthropic_bodies(&h, upstream);
            assert_eq!(bodies.len(), 4);
            // Thinking in the model's own terms.
            if upstream == "claude-opus-4-7" {
                assert_eq!(bodies[0]["thinking"], json!({"type": "adaptive"}));
                assert_eq!(bodies[0]["output_config"]["effort"], "medium");
            } else {
                assert_eq!(bodies[0]["thinking"]["type"], "enabled");
                assert_eq!(bodies[0]["thinking"]["budget_tokens"], 4096);
            }
            // The continuation starts its assistant turn with the blocks as issued.
            let turn = &bodies[1]["messages"][1]["content"];
            assert_eq!(turn[0]["type"], "thinking", "{}", bodies[1]);
            assert_eq!(turn[0]["signature"], blocks[0]["signature"]);
            assert_eq!(turn[0]["thinking"], blocks[0]["thinking"]);
        }
    }
}

#[tokio::test]
async fn a_loop_begun_on_gemini_finishes_on_claude_without_foreign_signatures() {
    for stream in [false, true] {
        let h = start().await;
        let sim = h.sim.sim.clone();
        // The primary serves the first request, then fails for the rest of the loop.
        tool_loop(
            &h,
            "r-gemini-then-claude",
            stream,
            1,
            Some("high"),
            move |round| {
                if round == 1 {
                    sim.set_fault("", "gemini-3-pro-preview", Fault::error(503));
                }
            },
        )
        .await;
        let claude = anthropic_bodies(&h, "claude-sonnet-4-5");
        assert_eq!(claude.len(), 1, "the continuation went to Claude");
        let body = claude[0].to_string();
        assert!(!body.contains(".sy1."), "{body}");
        // Claude was never sent Gemini's signature, and continued without thinking.
        assert!(claude[0].get("thinking").is_none(), "{body}");
        assert!(!body.contains("thoughtSignature"));
    }
}

#[tokio::test]
async fn a_loop_begun_on_claude_finishes_on_gemini_3_with_the_skip_value() {
    for stream in [false, true] {
        let h = start().await;
        let sim = h.sim.sim.clone();
        tool_loop(
            &h,
            "r-claude-then-gemini",
            stream,
            1,
            Some("low"),
            move |round| {
                if round == 1 {
                    sim.set_fault("", "claude-sonnet-4-5", Fault::error(529));
                }
            },
        )
        .await;
        let gemini = gemini_bodies(&h, "gemini-3-flash-preview");
        assert_eq!(gemini.len(), 1);
        assert_eq!(
            signatures(&gemini[0]),
            [Some("skip_thought_signature_validator".to_owned())]
        );
        assert_eq!(
            gemini[0]["generationConfig"]["thinkingConfig"],
            json!({"thinkingLevel": "low"})
        );
        assert!(!gemini[0].to_string().contains("thinking_blocks"));
    }
}

#[tokio::test]
async fn the_rest_of_a_loop_goes_to_the_deployment_that_signed_it() {
    let h = start().await;
    for _ in 0..8 {
        h.sim.sim.clear_requests();
        tool_loop(&h, "r-split", false, 1, None, |_| {}).await;
        let pro = gemini_bodies(&h, "gemini-3-pro-preview").len();
        let flash = gemini_bodies(&h, "gemini-3-flash-preview").len();
        // Both requests of the loop on one deployment, whichever the split chose first.
        assert!(
            (pro, flash) == (2, 0) || (pro, flash) == (0, 2),
            "pro {pro}, flash {flash}"
        );
    }
}

#[tokio::test]
async fn effort_reaches_each_provider_in_its_own_terms() {
    let h = start().await;
    for (model, effort) in [("r-gemini-25", "medium"), ("r-gemini", "minimal")] {
        let res = h
            .chat(json!({"model": model, "messages": user("Hello"),
                "reasoning_effort": effort}))
            .await;
        assert_eq!(
            res.status(),
            200,
            "{}",
            res.text().await.unwrap_or_default()
        );
    }
    let g25 = gemini_bodies(&h, "gemini-2.5-flash");
    assert_eq!(
        g25[0]["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 8192})
    );
    let g3 = gemini_bodies(&h, "gemini-3-pro-preview");
    assert_eq!(
        g3[0]["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "low"})
    );
    // Reasoning tokens are read from Gemini's usage and billed.
    let res = h
        .chat(
            json!({"model": "r-gemini-25", "messages": user("Hello again"),
            "reasoning_effort": "high"}),
        )
        .await;
    let body: Value = res.json().await.expect("json");
    assert!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{body}"
    );
}

#[tokio::test]
async fn bedrock_claude_reasoning_goes_back_signed_in_a_tool_loop() {
    for stream in [false, true] {
        let h = start().await;
        let messages = tool_loop(&h, "r-bedrock", stream, 2, Some("medium"), |_| {}).await;
        let first = messages
            .iter()
            .find(|m| m.get("tool_calls").is_some())
            .expect("a call");
        let blocks = first["thinking_blocks"]
            .as_array()
            .expect("thinking blocks");
        assert_eq!(blocks[0]["type"], "thinking", "{first}");
        assert!(first["tool_calls"][0]["id"]
            .as_str()
            .is_some_and(|id| id.contains(".sy1.bedrock-")));
        let bodies = recorded(&h, |r| r.path.contains("/converse"));
        assert_eq!(bodies.len(), 4);
        assert_eq!(
            bodies[0]["additionalModelRequestFields"]["thinking"],
            json!({"type": "enabled", "budget_tokens": 4096})
        );
        // The continuation starts its assistant turn with the signed reasoning.
        let turn = &bodies[1]["messages"][1]["content"];
        let text = &turn[0]["reasoningContent"]["reasoningText"];
        assert_eq!(text["signature"], blocks[0]["signature"], "{}", bodies[1]);
        assert_eq!(text["text"], blocks[0]["thinking"]);
        assert!(!bodies[1].to_string().contains(".sy1."));
    }
}
