//! `stream_recovery = "continue"`: a stream that breaks after content was relayed is
//! continued on the next deployment, and the client sees one well-formed stream.

mod common;

use std::time::Duration;

use common::{sse_data, user, Harness, KEY, PATIENT_BREAKER};
use serde_json::{json, Value};
use switchyard_sim::{schema_check, Fault, Latency};

const ADMIN: &str = "sy-admin-recovery-0000001";

fn extra(sim: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

[providers.ant1]
kind = "anthropic"
base_url = "{sim}/ant1"
api_key = "sk-ant-upstream-secret"

[providers.ant2]
kind = "anthropic"
base_url = "{sim}/ant2"
api_key = "sk-ant-upstream-secret"

[deployments.ant1-haiku]
provider = "ant1"
model = "claude-haiku-4-5"
price = {{ input = 1.0, output = 5.0 }}

[deployments.ant2-haiku]
provider = "ant2"
model = "claude-haiku-4-5"
price = {{ input = 1.0, output = 5.0 }}

[providers.br1]
kind = "bedrock"
base_url = "{sim}/br1"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[providers.br2]
kind = "bedrock"
base_url = "{sim}/br2"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[deployments.br1-haiku]
provider = "br1"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"

[deployments.br2-haiku]
provider = "br2"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"

[models.bedrock-recovering]
deployments = ["br1-haiku", "br2-haiku"]
stream_recovery = "continue"

[models.bedrock-whole]
deployments = ["br2-haiku"]

[providers.gm1]
kind = "gemini"
base_url = "{sim}/gm1"
api_key = "gemini-sim-key"

[providers.gm2]
kind = "gemini"
base_url = "{sim}/gm2"
api_key = "gemini-sim-key"

[deployments.gm1-flash]
provider = "gm1"
model = "gemini-2.5-flash"

[deployments.gm2-flash]
provider = "gm2"
model = "gemini-2.5-flash"

[models.gemini-recovering]
deployments = ["gm1-flash", "gm2-flash"]
stream_recovery = "continue"

[models.gemini-whole]
deployments = ["gm2-flash"]

[providers.mis1]
kind = "mistral"
base_url = "{sim}/mis1/mistral/v1"
api_key = "mistral-sim-key"

[providers.mis2]
kind = "mistral"
base_url = "{sim}/mis2/mistral/v1"
api_key = "mistral-sim-key"

[deployments.mis1-small]
provider = "mis1"
model = "mistral-small-latest"

[deployments.mis2-small]
provider = "mis2"
model = "mistral-small-latest"

[models.mistral-recovering]
deployments = ["mis1-small", "mis2-small"]
stream_recovery = "continue"

[models.mistral-whole]
deployments = ["mis2-small"]

[models.recovering]
deployments = ["primary-mini", "backup-mini"]
stream_recovery = "continue"

[models.recovering-alone]
deployments = ["primary-mini"]
stream_recovery = "continue"

[models.claude-recovering]
deployments = ["ant1-haiku", "ant2-haiku"]
stream_recovery = "continue"

[models.claude-whole]
deployments = ["ant2-haiku"]
{PATIENT_BREAKER}"#
    )
}

async fn start() -> Harness {
    Harness::start_with_sim(extra).await
}

/// deployment, status, error class, prompt, completion, estimated, cost.
type AttemptRow = (String, Option<i64>, Option<String>, i64, i64, i64, i64);

const STORY: &str = "Tell me a long story about railways please";

/// Validates a chunk against OpenAI's own schema for stream chunks.
fn check_chunk(chunk: &Value) {
    let mut root: Value =
        serde_json::from_str(include_str!("fixtures/openai-chat-schemas.json")).expect("schemas");
    root["$ref"] = json!("#/components/schemas/CreateChatCompletionStreamResponse");
    schema_check::validate(&root, chunk)
        .unwrap_or_else(|e| panic!("not a valid chunk: {e}\n{chunk:#}"));
}

/// The text of an OpenAI stream's chunks.
fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// A plain answer's text from `model` for `messages`.
async fn whole_answer(h: &Harness, model: &str, messages: Value) -> String {
    let res = h.chat(json!({"model": model, "messages": messages})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    body["choices"][0]["message"]["content"]
        .as_str()
        .expect("text")
        .to_owned()
}

/// A stream's raw body, its `data:` chunks (without `[DONE]`), and whether `[DONE]` ended it.
async fn stream(h: &Harness, body: Value) -> (http::HeaderMap, String, Vec<Value>, bool) {
    let res = h.chat(body).await;
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    let raw = res.text().await.expect("a body that ends cleanly");
    let data = sse_data(&raw);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    let chunks = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    (headers, raw, chunks, done)
}

/// Breaks `instance`'s streams with `fault`, streams [`STORY`] from `recovering` and
/// checks that the client saw one whole stream: ended by `[DONE]`, with the text
/// `whole` answers at once and the marker naming `broken` (the deployment it recovered
/// from). Returns that text, the raw stream and its chunks.
async fn recovered_story(
    h: &Harness,
    whole: &str,
    instance: &str,
    fault: Fault,
    recovering: &str,
    broken: &str,
) -> (String, String, Vec<Value>) {
    let full = whole_answer(h, whole, user(STORY)).await;
    h.sim.sim.set_fault(instance, "*", fault);
    let (_, raw, chunks, done) = stream(
        h,
        json!({"model": recovering, "messages": user(STORY), "stream": true}),
    )
    .await;
    assert!(done, "{raw}");
    assert_eq!(text_of(&chunks), full, "{raw}");
    assert!(
        raw.contains(&format!(": switchyard recovered from {broken}\n\n")),
        "{raw}"
    );
    (full, raw, chunks)
}

/// Asserts that a stream ended with the `stream_cut` error event.
fn assert_ends_cut(chunks: &[Value], raw: &str) {
    assert_eq!(
        chunks.last().map(|c| c["error"]["code"].clone()),
        Some(json!("stream_cut")),
        "{raw}"
    );
}

fn messages_of(h: &Harness, instance: &str) -> Vec<Value> {
    h.sim
        .sim
        .requests(instance)
        .iter()
        .map(|r| r.body["messages"].clone())
        .collect()
}

#[tokio::test]
async fn a_stream_cut_after_content_is_continued_on_the_next_deployment() {
    let mut h = start().await;
    let full = whole_answer(&h, "gpt-4o-mini", user(STORY)).await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(5));
    let (headers, raw, chunks, done) = stream(
        &h,
        json!({"model": "recovering", "messages": user(STORY), "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(headers["x-switchyard-deployment"], "primary-mini");
    assert!(done, "the stream ends with [DONE]: {raw}");
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "no error event: {raw}"
    );
    // One continuous text: what the simulator answers the request whole.
    assert_eq!(text_of(&chunks), full);
    // The continuation was asked with the text relayed before the cut (the simulator
    // continues only an answer that starts with it: the equality above checks that
    // too), and it is a proper part of the answer.
    let asked = messages_of(&h, "backup");
    assert_eq!(asked.len(), 1);
    let asked = &asked[0];
    assert_eq!(asked.as_array().map(Vec::len), Some(3), "{asked}");
    assert_eq!(asked[1]["role"], "assistant");
    let so_far = asked[1]["content"].as_str().expect("the prefix");
    assert!(!so_far.is_empty() && full.starts_with(so_far) && so_far.len() < full.len());
    assert_eq!(asked[2]["role"], "user");
    assert!(asked[2]["content"]
        .as_str()
        .is_some_and(|t| t.starts_with("Continue")));
    // One stream: the same identity everywhere, one finish reason, one usage chunk.
    let first = &chunks[0];
    for c in &chunks {
        check_chunk(c);
        assert_eq!(c["id"], first["id"], "{c}");
        assert_eq!(c["model"], first["model"], "{c}");
        assert_eq!(c["created"], first["created"], "{c}");
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let roles = chunks
        .iter()
        .filter(|c| !c["choices"][0]["delta"]["role"].is_null())
        .count();
    assert_eq!(roles, 1, "one role delta");
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finishes.len(), 1);
    assert_eq!(finishes[0]["choices"][0]["finish_reason"], "stop");
    let usages: Vec<&Value> = chunks.iter().filter(|c| !c["usage"].is_null()).collect();
    assert_eq!(usages.len(), 1);
    assert!(std::ptr::eq(usages[0], chunks.last().expect("chunks")));
    let usage = &usages[0]["usage"];
    // The marker, after the last chunk and before [DONE].
    assert!(
        raw.ends_with(": switchyard recovered from primary-mini\n\ndata: [DONE]\n\n"),
        "{raw}"
    );
    // Counted once, against the deployment that broke.
    let metrics = h.scrape(ADMIN).await;
    assert!(
        metrics.contains(
            "switchyard_stream_recoveries_total{model=\"recovering\",deployment=\"primary-mini\"} 1\n"
        ),
        "{metrics}"
    );
    // Both attempts are billed and recorded; the client's usage is their sum.
    let db = h.finish().await;
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT a.deployment, a.status, a.error_class, a.prompt_tokens, a.completion_tokens,
                a.usage_estimated, a.cost_nano_usd
         FROM attempts a JOIN requests r USING (request_id)
         WHERE r.logical_model = 'recovering' ORDER BY a.attempt",
    )
    .fetch_all(&db)
    .await
    .expect("attempts");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let (d1, s1, c1, p1, o1, e1, cost1) = &attempts[0];
    let (d2, s2, c2, p2, o2, e2, cost2) = &attempts[1];
    assert_eq!(
        (d1.as_str(), *s1, c1.as_deref()),
        ("primary-mini", Some(200), Some("stream_cut"))
    );
    assert_eq!(
        (d2.as_str(), *s2, c2.as_deref()),
        ("backup-mini", Some(200), None)
    );
    assert_eq!(*e1, 1, "the cut attempt's usage is estimated");
    assert_eq!(*e2, 0, "the continuation reported its own");
    assert!(*o1 > 0 && *o2 > 0 && *cost1 > 0 && *cost2 > 0);
    assert!(
        *p2 > *p1,
        "the continuation's prompt carries the answer so far"
    );
    assert_eq!(usage["prompt_tokens"].as_i64(), Some(p1 + p2));
    assert_eq!(usage["completion_tokens"].as_i64(), Some(o1 + o2));
    assert_eq!(usage["total_tokens"].as_i64(), Some(p1 + p2 + o1 + o2));
    let (status, code, count, prompt, completion, cost): (i64, Option<String>, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT status, error_code, attempt_count, prompt_tokens, completion_tokens,
                    cost_nano_usd FROM requests WHERE logical_model = 'recovering'",
        )
        .fetch_one(&db)
        .await
        .expect("row");
    assert_eq!((status, code, count), (200, None, 2));
    assert_eq!(
        (prompt, completion, cost),
        (p1 + p2, o1 + o2, cost1 + cost2)
    );
}

#[tokio::test]
async fn without_include_usage_the_client_gets_no_usage_chunk() {
    let h = start().await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(4));
    let (_, raw, chunks, done) = stream(
        &h,
        json!({"model": "recovering", "messages": user(STORY), "stream": true}),
    )
    .await;
    assert!(done, "{raw}");
    assert!(chunks.iter().all(|c| c["usage"].is_null()), "{raw}");
    assert!(raw.contains(": switchyard recovered from primary-mini\n\n"));
}

#[tokio::test]
async fn anthropic_deployments_continue_from_a_prefill() {
    let h = start().await;
    // message_start, content_block_start, ping, then text deltas.
    let (full, _, _) = recovered_story(
        &h,
        "claude-whole",
        "ant1",
        Fault::cut(7),
        "claude-recovering",
        "ant1-haiku",
    )
    .await;
    // The continuation got the text so far as the final assistant turn, without
    // trailing whitespace (Anthropic refuses it there), and no instruction.
    let asked = messages_of(&h, "ant2");
    let last = asked.last().expect("a request");
    let turns = last.as_array().expect("messages");
    assert_eq!(turns.len(), 2, "{last}");
    assert_eq!(turns[1]["role"], "assistant");
    let prefill = turns[1]["content"].to_string();
    assert!(!prefill.is_empty());
    let text = turns[1]["content"][0]["text"]
        .as_str()
        .or(turns[1]["content"].as_str())
        .expect("prefill text");
    assert!(
        full.starts_with(text) && text.trim_end() == text,
        "{text:?}"
    );
}

#[tokio::test]
async fn claude_on_bedrock_continues_from_a_prefill() {
    let h = start().await;
    // messageStart, contentBlockStart?, then text deltas.
    let (full, _, _) = recovered_story(
        &h,
        "bedrock-whole",
        "br1",
        Fault::cut(5),
        "bedrock-recovering",
        "br1-haiku",
    )
    .await;
    let asked = messages_of(&h, "br2");
    let turns = asked.last().and_then(Value::as_array).expect("messages");
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(turns[1]["role"], "assistant");
    let so_far = turns[1]["content"][0]["text"]
        .as_str()
        .expect("prefill text");
    assert!(!so_far.is_empty() && full.starts_with(so_far) && so_far.trim_end() == so_far);
}

#[tokio::test]
async fn gemini_deployments_are_asked_to_continue() {
    let h = start().await;
    recovered_story(
        &h,
        "gemini-whole",
        "gm1",
        Fault::cut(4),
        "gemini-recovering",
        "gm1-flash",
    )
    .await;
    let asked = h.sim.sim.requests("gm2");
    let contents = asked
        .last()
        .and_then(|r| r.body["contents"].as_array())
        .expect("contents");
    assert_eq!(contents.len(), 3);
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(contents[2]["role"], "user");
    assert!(contents[2]["parts"][0]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("Continue")));
}

#[tokio::test]
async fn mistral_deployments_continue_from_a_prefix() {
    let h = start().await;
    let (full, _, _) = recovered_story(
        &h,
        "mistral-whole",
        "mis1",
        Fault::cut(5),
        "mistral-recovering",
        "mis1-small",
    )
    .await;
    let asked = messages_of(&h, "mis2");
    let turns = asked.last().and_then(Value::as_array).expect("messages");
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1]["role"], "assistant");
    assert_eq!(turns[1]["prefix"], true);
    let so_far = turns[1]["content"].as_str().expect("text");
    assert!(!so_far.is_empty() && full.starts_with(so_far));
}

#[tokio::test]
async fn an_overloaded_error_event_after_content_is_recovered_too() {
    let h = start().await;
    let (_, raw, chunks) = recovered_story(
        &h,
        "claude-whole",
        "ant1",
        Fault::error(529)
            .with_type("overloaded_error")
            .mid_stream(6),
        "claude-recovering",
        "ant1-haiku",
    )
    .await;
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "{raw}");
}

#[tokio::test]
async fn a_cut_tool_call_stream_is_not_continued() {
    let h = start().await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(3));
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let (_, raw, chunks, done) = stream(
        &h,
        json!({"model": "recovering", "messages": user("Use get_weather for Paris"),
               "tools": tools, "stream": true}),
    )
    .await;
    assert!(!done);
    assert!(chunks
        .iter()
        .any(|c| !c["choices"][0]["delta"]["tool_calls"].is_null()));
    assert_ends_cut(&chunks, &raw);
    assert!(h.sim.sim.requests("backup").is_empty());
    assert!(!raw.contains("recovered"));
}

#[tokio::test]
async fn with_recovery_off_a_cut_ends_with_an_error_event() {
    let h = start().await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(5));
    let (_, raw, chunks, done) = stream(
        &h,
        json!({"model": "failover", "messages": user(STORY), "stream": true}),
    )
    .await;
    assert!(!done);
    assert_ends_cut(&chunks, &raw);
    assert!(h.sim.sim.requests("backup").is_empty());
}

#[tokio::test]
async fn with_no_other_deployment_a_cut_ends_with_an_error_event() {
    let mut h = start().await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(5));
    let (_, raw, chunks, done) = stream(
        &h,
        json!({"model": "recovering-alone", "messages": user(STORY), "stream": true}),
    )
    .await;
    assert!(!done);
    assert_ends_cut(&chunks, &raw);
    assert_eq!(
        h.sim.sim.requests("primary").len(),
        1,
        "never the broken one again"
    );
    let db = h.finish().await;
    let (code, attempts): (String, i64) =
        sqlx::query_as("SELECT error_code, attempt_count FROM requests")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!((code.as_str(), attempts), ("stream_cut", 1));
}

#[tokio::test]
async fn a_cut_before_anything_was_relayed_is_an_ordinary_failover() {
    let h = start().await;
    let full = whole_answer(&h, "gpt-4o-mini", user(STORY)).await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(0));
    let (headers, raw, chunks, done) = stream(
        &h,
        json!({"model": "recovering", "messages": user(STORY), "stream": true}),
    )
    .await;
    assert!(done, "{raw}");
    assert_eq!(headers["x-switchyard-deployment"], "backup-mini");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    assert_eq!(text_of(&chunks), full);
    assert!(!raw.contains("recovered"), "not a recovery: {raw}");
    // The backup was asked the client's request, not a continuation.
    let asked = messages_of(&h, "backup");
    assert_eq!(asked, vec![user(STORY)]);
}

#[tokio::test]
async fn a_cut_after_the_role_alone_gets_the_whole_answer_from_the_next() {
    let h = start().await;
    let full = whole_answer(&h, "gpt-4o-mini", user(STORY)).await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(1));
    let (headers, raw, chunks, done) = stream(
        &h,
        json!({"model": "recovering", "messages": user(STORY), "stream": true}),
    )
    .await;
    assert!(done, "{raw}");
    assert_eq!(headers["x-switchyard-deployment"], "primary-mini");
    assert_eq!(text_of(&chunks), full);
    assert!(raw.contains(": switchyard recovered from primary-mini\n\n"));
    // Nothing of the answer went out: the backup was asked the request itself.
    assert_eq!(messages_of(&h, "backup"), vec![user(STORY)]);
    let roles = chunks
        .iter()
        .filter(|c| !c["choices"][0]["delta"]["role"].is_null())
        .count();
    assert_eq!(roles, 1);
}

#[tokio::test]
async fn a_second_break_is_not_recovered_again() {
    let h = start().await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(5));
    h.sim.sim.set_fault("backup", "*", Fault::cut(4));
    let (_, raw, chunks, done) = stream(
        &h,
        json!({"model": "recovering", "messages": user(STORY), "stream": true}),
    )
    .await;
    assert!(!done);
    assert_ends_cut(&chunks, &raw);
    assert_eq!(h.sim.sim.requests("primary").len(), 1);
    assert_eq!(h.sim.sim.requests("backup").len(), 1);
}

#[tokio::test]
async fn the_messages_ingress_stream_is_continued_too() {
    let h = start().await;
    let full = whole_answer(&h, "gpt-4o-mini", user(STORY)).await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(5));
    let res = h
        .client
        .post(format!("{}/v1/messages", h.base))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "recovering", "max_tokens": 1000, "stream": true,
                      "messages": user(STORY)}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let raw = res.text().await.expect("body");
    let mut names = Vec::new();
    let mut text = String::new();
    for block in raw.split_terminator("\n\n") {
        if block.starts_with(':') {
            assert_eq!(block, ": switchyard recovered from primary-mini");
            continue;
        }
        let (name, data) = block.split_once('\n').expect("event and data lines");
        let data: Value = serde_json::from_str(data.trim_start_matches("data: ")).expect("json");
        if let Some(t) = data["delta"]["text"].as_str() {
            text.push_str(t);
        }
        names.push(name.trim_start_matches("event: ").to_owned());
    }
    assert_eq!(text, full, "{raw}");
    assert!(!names.contains(&"error".to_owned()), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("message_start"), 1);
    assert_eq!(count("message_delta"), 1);
    assert_eq!(count("content_block_start"), 1, "one text block: {names:?}");
    assert!(raw.contains(": switchyard recovered from primary-mini"));
}

#[tokio::test]
async fn a_client_that_hangs_up_during_the_continuation_leaves_nothing_held() {
    let mut h = start().await;
    h.sim.sim.set_fault("primary", "*", Fault::cut(5));
    // The continuation's first event takes far longer than the test waits.
    h.sim.sim.set_latency(
        "backup",
        "*",
        Latency {
            ttft_ms: 1_500,
            chunk_delay_ms: 0,
            chunks: None,
        },
    );
    let mut res = h
        .chat(json!({"model": "recovering", "messages": user(STORY), "stream": true}))
        .await;
    assert_eq!(res.status(), 200);
    // Read until the continuation has been asked for, then hang up.
    let reading = async { while let Ok(Some(_)) = res.chunk().await {} };
    tokio::select! {
        () = reading => panic!("the stream ended before the continuation answered"),
        () = async {
            while h.sim.sim.requests("backup").is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }
    let in_flight = |health: &Value, name: &str| {
        health["deployments"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["name"] == name))
            .map(|x| x["calls_in_flight"].clone())
    };
    let health = admin_health(&h).await;
    assert_eq!(
        in_flight(&health, "backup-mini"),
        Some(json!(1)),
        "{health}"
    );
    drop(res);
    // The gateway notices the hang-up; the continuation's call is dropped with it.
    let mut released = false;
    for _ in 0..100 {
        let health = admin_health(&h).await;
        if in_flight(&health, "backup-mini") == Some(json!(0)) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        released,
        "the continuation's call is no longer counted in flight"
    );
    let db = h.finish().await;
    let (disconnected, attempts): (i64, i64) =
        sqlx::query_as("SELECT client_disconnected, attempt_count FROM requests")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!((disconnected, attempts), (1, 2));
}

async fn admin_health(h: &Harness) -> Value {
    h.client
        .get(format!("{}/admin/health", h.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}
