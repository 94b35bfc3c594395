//! Channel profiles (`[channels.NAME]`): chosen by the key's policy or the
//! `x-switchyard-channel` header, their system prompt and output limits whichever
//! provider answers, their first-token objective in routing and hedging, and the
//! channel report.

mod common;

use common::sse_data;
use common::{user, Harness, KEY, PATIENT_BREAKER};
use serde_json::{json, Value};
use switchyard_sim::Latency;

const ADMIN: &str = "sy-admin-channels-000001";
const AGENT_KEY: &str = "sy-agent-key-0123456789";
const VOICE_PROMPT: &str = "You are Ada, the railway's voice assistant. Keep answers short.";
const CHAT_PROMPT: &str = "You are Ada, the railway's chat assistant.";

fn extra(sim: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

[[keys]]
name = "agent"
key = "{AGENT_KEY}"
policy = {{ channel = "chat", channels = ["voice", "support", "secure"] }}

[channels.voice]
ttft_slo_ms = 150
total_slo_ms = 5000
system_prompt = "{VOICE_PROMPT}"
max_output_tokens = 60
stop = ["Goodbye."]

[channels.chat]
system_prompt = "{CHAT_PROMPT}"

[channels.email]
total_slo_ms = 60000

[channels.support]
pii_output = "redact"

[channels.secure]
pii_output = "block"

[providers.ant]
kind = "anthropic"
base_url = "{sim}/ant"
api_key = "sk-ant-upstream-secret"

[deployments.ant-haiku]
provider = "ant"
model = "claude-haiku-4-5"
price = {{ input = 1.0, output = 5.0 }}

[models.claude]
deployments = ["ant-haiku"]
{PATIENT_BREAKER}"#
    )
}

async fn start() -> Harness {
    Harness::start_with_sim(extra).await
}

async fn chat_as(h: &Harness, key: &str, channel: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(key)
        .json(&body);
    if let Some(c) = channel {
        req = req.header("x-switchyard-channel", c);
    }
    req.send().await.expect("send")
}

/// "hi" to `gpt-4o-mini` as `key`, under `channel`.
async fn hi(h: &Harness, key: &str, channel: Option<&str>) -> reqwest::Response {
    chat_as(
        h,
        key,
        channel,
        json!({"model": "gpt-4o-mini", "messages": user("hi")}),
    )
    .await
}

/// The messages the upstream `instance` received in its last request.
fn last_body(h: &Harness, instance: &str) -> Value {
    h.sim
        .sim
        .requests(instance)
        .last()
        .map(|r| r.body.clone())
        .expect("the upstream was called")
}

#[tokio::test]
async fn the_policy_chooses_the_channel_and_the_header_may_choose_an_allowed_one() {
    let mut h = start().await;
    // The key's own channel, without a header.
    let res = hi(&h, AGENT_KEY, None).await;
    assert_eq!(res.status(), 200);
    let sent = last_body(&h, "");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": CHAT_PROMPT})
    );
    assert_eq!(sent["messages"][1]["role"], "user");
    // Another channel its policy lists.
    let res = hi(&h, AGENT_KEY, Some("voice")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(last_body(&h, "")["messages"][0]["content"], VOICE_PROMPT);
    // A configured channel the policy does not list: 403, naming the header.
    let res = hi(&h, AGENT_KEY, Some("email")).await;
    assert_eq!(res.status(), 403);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["code"], "channel_not_allowed");
    assert_eq!(err["error"]["param"], "x-switchyard-channel");
    // A key whose policy names no channel may choose none.
    let res = hi(&h, KEY, Some("voice")).await;
    assert_eq!(res.status(), 403);
    // An unknown channel: 400, naming the header.
    let res = hi(&h, AGENT_KEY, Some("fax")).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["param"], "x-switchyard-channel");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("fax"));
    // A hostile header: not UTF-8, or far too long to be a name (echoed only in part).
    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(AGENT_KEY)
        .header(
            "x-switchyard-channel",
            reqwest::header::HeaderValue::from_bytes(b"voice\xff").expect("opaque bytes"),
        )
        .json(&json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    let long = "v".repeat(10_000);
    let res = hi(&h, AGENT_KEY, Some(&long)).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert!(err["error"]["message"].as_str().unwrap_or_default().len() < 200);
    // A request without a channel is untouched.
    let res = hi(&h, KEY, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        last_body(&h, "")["messages"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        h.sim.sim.requests("").len(),
        3,
        "refused requests never went upstream"
    );

    let db = h.finish().await;
    let rows: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT channel, status, turn_start FROM requests ORDER BY started_at_ms, rowid",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    let channels: Vec<_> = rows.iter().map(|r| (r.0.as_deref(), r.1)).collect();
    assert_eq!(
        channels,
        vec![
            (Some("chat"), 200),
            (Some("voice"), 200),
            (None, 403),
            (None, 403),
            (None, 400),
            (None, 400),
            (None, 400),
            (None, 200)
        ]
    );
    assert!(
        rows.iter().filter(|r| r.1 == 200).all(|r| r.2 == 1),
        "each asked as a user turn"
    );
}

#[tokio::test]
async fn the_system_prompt_and_output_limits_reach_every_provider_kind() {
    let h = start().await;
    // OpenAI: a larger max_tokens is capped, the stop sequences merged.
    let res = chat_as(
        &h,
        AGENT_KEY,
        Some("voice"),
        json!({"model": "gpt-4o-mini", "messages": user("hi"), "max_tokens": 1000, "stop": "END"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let sent = last_body(&h, "");
    assert_eq!(sent["max_tokens"], 60);
    assert_eq!(sent["stop"], json!(["Goodbye.", "END"]));
    // A smaller limit of the request's own stays.
    let res = chat_as(
        &h,
        AGENT_KEY,
        Some("voice"),
        json!({"model": "gpt-4o-mini", "messages": user("hi"), "max_completion_tokens": 20}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let sent = last_body(&h, "");
    let limit = [&sent["max_completion_tokens"], &sent["max_tokens"]]
        .into_iter()
        .find(|v| !v.is_null())
        .cloned();
    assert_eq!(limit, Some(json!(20)), "{sent}");
    // Too many stop sequences together: 400 naming `stop`.
    let res = chat_as(
        &h,
        AGENT_KEY,
        Some("voice"),
        json!({"model": "gpt-4o-mini", "messages": user("hi"), "stop": ["a", "b", "c", "d"]}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["param"], "stop");

    // Anthropic, through the chat ingress: the channel's prompt first, then the app's.
    let res = chat_as(
        &h,
        AGENT_KEY,
        Some("voice"),
        json!({"model": "claude", "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "hi"}
        ]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let sent = last_body(&h, "ant");
    let system = serde_json::to_string(&sent["system"]).expect("text");
    let (ours, theirs) = (
        system
            .find("voice assistant")
            .expect("the channel's prompt"),
        system.find("Answer in French").expect("the app's prompt"),
    );
    assert!(ours < theirs, "{system}");
    assert_eq!(sent["max_tokens"], 60);
    assert_eq!(sent["stop_sequences"], json!(["Goodbye."]));

    // Anthropic's own ingress: the channel changes the request, so the translation
    // goes up instead of the client's bytes, and carries the prompt.
    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", AGENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("x-switchyard-channel", "voice")
        .json(
            &json!({"model": "claude", "max_tokens": 500, "system": "Be formal.",
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let sent = last_body(&h, "ant");
    let system = serde_json::to_string(&sent["system"]).expect("text");
    assert!(
        system.find("voice assistant") < system.find("Be formal."),
        "{system}"
    );
    assert!(system.contains("Be formal."), "{system}");
    assert_eq!(sent["max_tokens"], 60);
}

/// `failover` is `primary-mini` then `backup-mini`; the voice channel's first-token
/// objective is 150 ms.
#[tokio::test]
async fn a_deployment_that_misses_the_first_token_objective_is_hedged_then_tried_last() {
    let mut h = start().await;
    let slow = Latency {
        ttft_ms: 3_000,
        chunk_delay_ms: 0,
        chunks: None,
    };
    h.sim.sim.set_latency("primary", "*", slow);
    h.sim.sim.set_latency(
        "backup",
        "*",
        Latency {
            ttft_ms: 50,
            chunk_delay_ms: 0,
            chunks: None,
        },
    );
    // The first calls are hedged at the objective: the backup answers.
    for i in 0..5 {
        let res = chat_as(
            &h,
            AGENT_KEY,
            Some("voice"),
            json!({"model": "failover", "messages": user("hi"), "stream": i % 2 == 0}),
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-switchyard-deployment"], "backup-mini");
        assert_eq!(res.headers()["x-switchyard-attempts"], "2", "hedged");
        let _ = res.bytes().await;
    }
    // Five first tokens that did not come within the objective: the primary's p90
    // misses it, and it is now tried last: one attempt, on the backup.
    let res = chat_as(
        &h,
        AGENT_KEY,
        Some("voice"),
        json!({"model": "failover", "messages": user("hi")}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "backup-mini");
    assert_eq!(res.headers()["x-switchyard-attempts"], "1");
    let route = res.headers()["x-switchyard-route"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let _ = res.bytes().await;
    assert!(route.contains("priority tier 1"), "{route}");
    // A channel without an objective keeps the model's order: the primary is called
    // first, and times out (its first_byte_ms is 300) before the backup answers.
    let res = chat_as(
        &h,
        AGENT_KEY,
        None,
        json!({"model": "failover", "messages": user("hi")}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-deployment"], "backup-mini");
    assert_eq!(res.headers()["x-switchyard-attempts"], "2");
    let _ = res.bytes().await;

    let db = h.finish().await;
    let lost: Vec<(String,)> = sqlx::query_as(
        "SELECT deployment FROM attempts WHERE error_class = 'hedge_lost' ORDER BY started_at_ms",
    )
    .fetch_all(&db)
    .await
    .expect("attempts");
    assert_eq!(lost.len(), 5);
    assert!(lost.iter().all(|(d,)| d == "primary-mini"));
}

#[tokio::test]
async fn the_channel_report_gives_percentiles_attainment_shares_and_cost_per_turn() {
    let mut h = start().await;
    // Voice: two user turns, one of them with a tool round trip (not a turn of its own).
    for messages in [
        user("hi"),
        user("when is the next train"),
        json!([
            {"role": "user", "content": "when is the next train"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "timetable", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "10:42"}
        ]),
    ] {
        let res = chat_as(
            &h,
            AGENT_KEY,
            Some("voice"),
            json!({"model": "gpt-4o-mini", "messages": messages}),
        )
        .await;
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await;
    }
    // Chat: one turn on Anthropic, one on OpenAI.
    for model in ["claude", "gpt-4o-mini"] {
        let res = chat_as(
            &h,
            AGENT_KEY,
            None,
            json!({"model": model, "messages": user("hi")}),
        )
        .await;
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await;
    }
    // The ledger writes in batches: wait (bounded) until all five rows are in.
    let mut report = Value::Null;
    for _ in 0..100 {
        report = h
            .client
            .get(format!("{}/admin/channels", h.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let seen: u64 = report["channels"]
            .as_array()
            .map(|cs| cs.iter().filter_map(|c| c["requests"].as_u64()).sum())
            .unwrap_or(0);
        if seen == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let channels = report["channels"].as_array().expect("channels");
    let names: Vec<&str> = channels
        .iter()
        .filter_map(|c| c["channel"].as_str())
        .collect();
    assert_eq!(
        names,
        ["chat", "email", "secure", "support", "voice"],
        "every configured channel, by name"
    );
    let voice = &channels[4];
    assert_eq!(voice["requests"], 3);
    assert_eq!(voice["answered"], 3);
    assert_eq!(voice["turns"], 2);
    assert_eq!(voice["ttft_slo_ms"], 150);
    assert_eq!(voice["total_slo_ms"], 5000);
    // The simulator answers at once: every objective met.
    assert_eq!(voice["ttft_attainment_percent"], 100.0);
    assert_eq!(voice["total_attainment_percent"], 100.0);
    assert_eq!(voice["providers"]["oa"]["requests"], 3);
    let cost = voice["cost_nano_usd"].as_i64().expect("cost");
    assert!(cost > 0);
    assert_eq!(voice["cost_per_turn_nano_usd"], cost / 2);
    let p50 = voice["first_token_us"]["p50"].as_i64().expect("p50");
    let p99 = voice["first_token_us"]["p99"].as_i64().expect("p99");
    assert!(0 < p50 && p50 <= p99);
    let chat = &channels[0];
    assert_eq!(chat["turns"], 2);
    assert_eq!(chat["providers"]["ant"]["share"], 0.5);
    assert_eq!(chat["providers"]["oa"]["share"], 0.5);
    assert_eq!(
        chat["ttft_attainment_percent"],
        Value::Null,
        "no objective, no attainment"
    );
    assert_eq!(channels[1]["requests"], 0);
    assert_eq!(channels[3]["configured"], true);
    // The same requests in the metrics, for alerting on the objectives.
    let metrics = h.scrape(ADMIN).await;
    for line in [
        "switchyard_channel_first_token_seconds_count{channel=\"voice\"} 3\n",
        "switchyard_channel_request_duration_seconds_count{channel=\"chat\"} 2\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // Bad input names its parameter.
    let res = h
        .client
        .get(format!("{}/admin/channels?since=yesterday", h.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["param"], "since");
    let _ = h.finish().await;
}

const LEAKY: &str =
    "[[echo]] Please write to jane.doe@example.com or call +44 20 7946 0958 before Friday, thanks";
const EMAIL: &str = "jane.doe@example.com";
const PHONE: &str = "+44 20 7946 0958";

/// Answers streamed in `n` content chunks, at once.
fn in_chunks(n: u32) -> Latency {
    Latency {
        ttft_ms: 0,
        chunk_delay_ms: 0,
        chunks: Some(n),
    }
}

/// The text of an OpenAI stream, the finish reason of its last choice chunk, and
/// whether it ended with `[DONE]`.
async fn streamed_text(res: reqwest::Response) -> (String, Option<String>, bool) {
    assert_eq!(res.status(), 200);
    let raw = res.text().await.expect("body");
    let data = sse_data(&raw);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    let mut text = String::new();
    let mut finish = None;
    for d in data.iter().filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    (text, finish, done)
}

#[tokio::test]
async fn pii_in_answers_is_redacted_whole_and_streamed_whatever_the_chunking() {
    let mut h = start().await;
    // What the model says, unchecked (no channel).
    let res = chat_as(
        &h,
        KEY,
        None,
        json!({"model": "gpt-4o-mini", "messages": user(LEAKY)}),
    )
    .await;
    let plain: Value = res.json().await.expect("json");
    let said = plain["choices"][0]["message"]["content"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(said.contains(EMAIL) && said.contains(PHONE), "{said}");
    let redacted = said.replace(EMAIL, "[EMAIL_1]").replace(PHONE, "[PHONE_1]");

    let res = chat_as(
        &h,
        AGENT_KEY,
        Some("support"),
        json!({"model": "gpt-4o-mini", "messages": user(LEAKY)}),
    )
    .await;
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], redacted.as_str());

    // Streams cut into 2 to 40 chunks: the values are split at ever other places.
    for chunks in 2..=40 {
        h.sim.sim.set_latency("", "*", in_chunks(chunks));
        let res = chat_as(
            &h,
            AGENT_KEY,
            Some("support"),
            json!({"model": "gpt-4o-mini", "messages": user(LEAKY), "stream": true}),
        )
        .await;
        let (text, finish, done) = streamed_text(res).await;
        assert!(done);
        assert_eq!(text, redacted, "{chunks} chunks");
        assert_eq!(finish.as_deref(), Some("stop"));
    }

    // Through the Anthropic ingress too (its events are made from the checked chunks).
    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", AGENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("x-switchyard-channel", "support")
        .json(
            &json!({"model": "gpt-4o-mini", "max_tokens": 500, "stream": true,
                      "messages": [{"role": "user", "content": LEAKY}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let raw = res.text().await.expect("body");
    assert!(!raw.contains("jane.doe") && !raw.contains("7946"), "{raw}");
    assert!(
        raw.contains("[EMAIL_1]") && raw.contains("[PHONE_1]"),
        "{raw}"
    );

    let metrics = h.scrape(ADMIN).await;
    let line =
        "switchyard_pii_detections_total{type=\"email\",mode=\"redact\",direction=\"output\"} 41\n";
    assert!(metrics.contains(line), "{metrics}");
    let db = h.finish().await;
    let found: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT redactions FROM requests WHERE channel = 'support' ORDER BY started_at_ms, rowid",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(found.len(), 41);
    for (r,) in found {
        let r = r.unwrap_or_default();
        assert!(r.starts_with("output:redact:"), "{r}");
        assert!(r.contains("EMAIL=1") && r.contains("PHONE=1"), "{r}");
    }
}

#[tokio::test]
async fn a_blocked_answer_stops_before_the_value_and_ends_with_content_filter() {
    let h = start().await;
    let res = chat_as(
        &h,
        AGENT_KEY,
        Some("secure"),
        json!({"model": "gpt-4o-mini", "messages": user(LEAKY)}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
    assert!(
        body["usage"]["completion_tokens"].as_u64() > Some(0),
        "billed as generated"
    );
    for chunks in [3, 7, 19] {
        h.sim.sim.set_latency("", "*", in_chunks(chunks));
        let res = chat_as(
            &h,
            AGENT_KEY,
            Some("secure"),
            json!({"model": "gpt-4o-mini", "messages": user(LEAKY), "stream": true,
                   "stream_options": {"include_usage": true}}),
        )
        .await;
        let (text, finish, done) = streamed_text(res).await;
        assert!(done, "a well-formed stream");
        assert_eq!(finish.as_deref(), Some("content_filter"));
        assert!(!text.contains("jane") && !text.contains("7946"), "{text}");
        assert!(text.len() < LEAKY.len());
    }
}

#[tokio::test]
async fn the_responses_api_under_a_checking_channel_is_translated_and_redacted() {
    let h = start().await;
    let post = |body: Value, channel: Option<&str>| {
        let key = if channel.is_some() { AGENT_KEY } else { KEY };
        let mut req = h
            .client
            .post(format!("{}/v1/responses", h.base))
            .bearer_auth(key)
            .json(&body);
        if let Some(c) = channel {
            req = req.header("x-switchyard-channel", c);
        }
        req.send()
    };
    // Without a channel an OpenAI deployment gets the Responses API natively.
    let res = post(json!({"model": "gpt-4o-mini", "input": LEAKY}), None)
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let _ = res.bytes().await;
    let path = h
        .sim
        .sim
        .requests("")
        .last()
        .map(|r| r.path.clone())
        .expect("called");
    assert!(
        path.ends_with("/v1/responses"),
        "{path} {:?}",
        h.sim
            .sim
            .requests("")
            .iter()
            .map(|r| (r.path.clone(), r.body.clone()))
            .collect::<Vec<_>>()
    );
    // With one, it is translated (the check reads chat chunks), and the value is redacted.
    let res = post(
        json!({"model": "gpt-4o-mini", "input": LEAKY, "store": false}),
        Some("support"),
    )
    .await
    .expect("send");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    let path = h
        .sim
        .sim
        .requests("")
        .last()
        .map(|r| r.path.clone())
        .expect("called");
    assert!(path.ends_with("/v1/chat/completions"), "{path}");
    let text = body["output"][0]["content"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(
        text.contains("[EMAIL_1]") && text.contains("[PHONE_1]"),
        "{text}"
    );
    assert!(!text.contains(EMAIL) && !text.contains(PHONE), "{text}");
    // Streamed: the deltas and the final response carry the redacted text only.
    h.sim.sim.set_latency("", "*", in_chunks(11));
    let res = post(
        json!({"model": "gpt-4o-mini", "input": LEAKY, "stream": true, "store": false}),
        Some("support"),
    )
    .await
    .expect("send");
    assert_eq!(res.status(), 200);
    let raw = res.text().await.expect("body");
    assert!(!raw.contains("jane.doe") && !raw.contains("7946"), "{raw}");
    let mut deltas = String::new();
    let mut done_text = None;
    for d in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let event: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        match event["type"].as_str() {
            Some("response.output_text.delta") => {
                deltas.push_str(event["delta"].as_str().unwrap_or_default());
            }
            Some("response.output_text.done") => {
                done_text = event["text"].as_str().map(str::to_owned);
            }
            _ => {}
        }
    }
    assert_eq!(Some(deltas.clone()), done_text, "{raw}");
    assert_eq!(deltas, text, "streamed and whole agree");
}

#[tokio::test]
async fn token_counts_include_the_channels_system_prompt() {
    let h = start().await;
    let count = |model: &'static str, channel: Option<&'static str>| {
        let mut req = h
            .client
            .post(format!("{}/v1/messages/count_tokens", h.base))
            .header("x-api-key", AGENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "system": "Be formal.",
                          "messages": [{"role": "user", "content": "hi"}]}));
        if let Some(c) = channel {
            req = req.header("x-switchyard-channel", c);
        }
        async move {
            let res = req.send().await.expect("send");
            assert_eq!(res.status(), 200);
            let how = res.headers()["x-switchyard-token-count"]
                .to_str()
                .expect("ascii")
                .to_owned();
            let body: Value = res.json().await.expect("json");
            (body["input_tokens"].as_u64().expect("count"), how)
        }
    };
    // The key's own channel (`chat`) has a prompt too: compare with the other.
    for (model, how) in [("claude", "exact"), ("gpt-4o-mini", "estimated")] {
        let (chat, h1) = count(model, None).await;
        let (voice, h2) = count(model, Some("voice")).await;
        assert_eq!((h1.as_str(), h2.as_str()), (how, how));
        // The voice prompt is longer than the chat one.
        assert!(voice > chat, "{model}: {voice} vs {chat}");
    }
    let sent = last_body(&h, "ant");
    let system = serde_json::to_string(&sent["system"]).expect("text");
    assert!(
        system.find("voice assistant") < system.find("Be formal."),
        "{system}"
    );
    assert!(system.contains("Be formal."), "{system}");
}
