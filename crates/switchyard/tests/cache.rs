//! The exact-match response cache (`[models.NAME] cache`, a policy's `cache`): a
//! repeated deterministic request is answered with the same bytes without an
//! upstream call, whole or replayed as a stream, never across tenants, for its TTL
//! and within its byte budget; hits are recorded in the ledger at no cost.

mod common;

use std::time::Duration;

use common::{sse_data, user, Harness, KEY, OTHER_KEY};
use serde_json::{json, Value};
use switchyard_sim::{schema_check, Fault, Latency};

const PRIVATE_KEY: &str = "sy-private-key-0123456789";
const OPTED_KEY: &str = "sy-opted-key-01234567890";
const ADMIN: &str = "sy-admin-cache-000000001";

fn extra(_sim: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN}"

[[keys]]
name = "private"
key = "{PRIVATE_KEY}"
policy = {{ log_content = false }}

[[keys]]
name = "opted"
key = "{OPTED_KEY}"
policy = {{ log_content = false, cache = {{ ttl_s = 60 }} }}

[models.cached]
deployments = ["oa-mini"]
cache = {{ ttl_s = 3600, max_bytes = 67108864 }}

[models.cached-azure]
deployments = ["az-mini"]
cache = {{ ttl_s = 3600 }}

[models.brief]
deployments = ["oa-mini"]
cache = {{ ttl_s = 1 }}

[models.small]
deployments = ["oa-mini"]
cache = {{ ttl_s = 3600, max_bytes = 200 }}
"#
    )
}

async fn start() -> Harness {
    Harness::start_with_sim(extra).await
}

/// Chat completions calls the upstream received.
fn upstream_calls(h: &Harness) -> usize {
    h.sim
        .sim
        .requests("")
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

async fn chat_as(h: &Harness, key: &str, body: Value) -> reqwest::Response {
    h.client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("send")
}

/// Status, `x-switchyard-cache` and the body's bytes.
async fn plain(h: &Harness, key: &str, body: Value) -> (u16, Option<String>, bytes::Bytes) {
    let res = chat_as(h, key, body).await;
    let status = res.status().as_u16();
    let cache = res
        .headers()
        .get("x-switchyard-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, cache, res.bytes().await.expect("body"))
}

fn request(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": user(text), "temperature": 0})
}

/// Validates a chunk against OpenAI's own schema for stream chunks.
fn check_chunk(chunk: &Value) {
    let mut root: Value =
        serde_json::from_str(include_str!("fixtures/openai-chat-schemas.json")).expect("schemas");
    root["$ref"] = json!("#/components/schemas/CreateChatCompletionStreamResponse");
    schema_check::validate(&root, chunk)
        .unwrap_or_else(|e| panic!("not a valid chunk: {e}\n{chunk:#}"));
}

#[tokio::test]
async fn a_repeated_deterministic_request_is_answered_from_the_cache() {
    let h = start().await;
    let (status, cache, first) = plain(&h, KEY, request("cached", "What is a siding?")).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    assert_eq!(upstream_calls(&h), 1);

    let res = chat_as(&h, KEY, request("cached", "What is a siding?")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-cache"], "hit");
    assert!(
        res.headers().get("x-switchyard-deployment").is_none(),
        "no deployment served a hit"
    );
    assert!(res.headers().get("x-request-id").is_some());
    assert_eq!(res.bytes().await.expect("body"), first, "byte-identical");
    assert_eq!(upstream_calls(&h), 1, "no upstream call for a hit");

    // Where the answer is delivered and to which end user does not matter.
    let with_user = json!({"model": "cached", "messages": user("What is a siding?"),
        "temperature": 0, "user": "end-user-7"});
    let (_, cache, body) = plain(&h, KEY, with_user).await;
    assert_eq!((cache.as_deref(), &body), (Some("hit"), &first));

    // Another message, or a temperature other than 0: a miss and an upstream call.
    let (_, cache, _) = plain(&h, KEY, request("cached", "What is a points lever?")).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(upstream_calls(&h), 2);
    let warm =
        json!({"model": "cached", "messages": user("What is a siding?"), "temperature": 0.7});
    let (status, cache, _) = plain(&h, KEY, warm.clone()).await;
    assert_eq!((status, cache), (200, None), "not cacheable: no header");
    let (_, cache, _) = plain(&h, KEY, warm).await;
    assert_eq!(cache, None);
    assert_eq!(
        upstream_calls(&h),
        4,
        "a warm request is never served from the cache"
    );
    // Without an explicit temperature, or with n > 1, the answer may vary.
    let unset = json!({"model": "cached", "messages": user("What is a siding?")});
    assert_eq!(plain(&h, KEY, unset).await.1, None);
    let several =
        json!({"model": "cached", "messages": user("What is a siding?"), "temperature": 0, "n": 2});
    assert_eq!(plain(&h, KEY, several).await.1, None);
    // A model without a cache setting sends no header at all.
    let (_, cache, _) = plain(&h, KEY, request("gpt-4o-mini", "What is a siding?")).await;
    assert_eq!(cache, None);
    assert_eq!(upstream_calls(&h), 7);
    // Only the cacheable requests count as lookups.
    let metrics = h.scrape(ADMIN).await;
    for line in [
        "switchyard_cache_lookups_total{model=\"cached\",result=\"hit\"} 2\n",
        "switchyard_cache_lookups_total{model=\"cached\",result=\"miss\"} 2\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn tenants_never_share_answers() {
    let h = start().await;
    let ask = request("cached", "Which platform for Basel?");
    assert_eq!(plain(&h, KEY, ask.clone()).await.1.as_deref(), Some("miss"));
    // Another key without a team is another tenant: its own miss.
    assert_eq!(
        plain(&h, OTHER_KEY, ask.clone()).await.1.as_deref(),
        Some("miss")
    );
    assert_eq!(upstream_calls(&h), 2);
    // Each hits its own entry afterwards.
    assert_eq!(plain(&h, KEY, ask.clone()).await.1.as_deref(), Some("hit"));
    assert_eq!(plain(&h, OTHER_KEY, ask).await.1.as_deref(), Some("hit"));
    assert_eq!(upstream_calls(&h), 2);
}

#[tokio::test]
async fn a_stream_is_replayed_from_a_cached_plain_answer() {
    let h = start().await;
    let (_, _, first) = plain(&h, KEY, request("cached", "Describe a turntable.")).await;
    let whole: Value = serde_json::from_slice(&first).expect("json");
    assert_eq!(upstream_calls(&h), 1);

    let mut body = request("cached", "Describe a turntable.");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = chat_as(&h, KEY, body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-switchyard-cache"], "hit");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let raw = res.text().await.expect("body");
    let data = sse_data(&raw);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    for c in &chunks {
        check_chunk(c);
        assert_eq!(c["id"], whole["id"]);
        assert_eq!(c["created"], whole["created"]);
        assert_eq!(c["model"], whole["model"]);
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["message"]["content"]);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&whole["choices"][0]["finish_reason"]]);
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);
    assert_eq!(upstream_calls(&h), 1, "no upstream call for a replay");

    // Without include_usage: no usage chunk.
    let mut body = request("cached", "Describe a turntable.");
    body["stream"] = json!(true);
    let raw = chat_as(&h, KEY, body).await.text().await.expect("body");
    assert!(sse_data(&raw)
        .iter()
        .filter(|d| *d != "[DONE]")
        .all(|d| !d.contains("\"usage\":{")));
    assert_eq!(upstream_calls(&h), 1);
}

/// What a client makes of a stream: its chunks (each checked against OpenAI's schema),
/// the text, the tool calls put together by index, the finish reason and the usage.
struct Streamed {
    cache: Option<String>,
    chunks: Vec<Value>,
    text: String,
    calls: Vec<Value>,
    finish: Value,
    usage: Value,
    done: bool,
}

async fn stream_as(h: &Harness, key: &str, mut body: Value) -> Streamed {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = chat_as(h, key, body).await;
    assert_eq!(res.status(), 200);
    let cache = res
        .headers()
        .get("x-switchyard-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let raw = res.text().await.expect("stream");
    let data = sse_data(&raw);
    let done = data.last().map(String::as_str) == Some("[DONE]");
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    let mut text = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    for c in &chunks {
        if c.get("error").is_some() {
            continue;
        }
        check_chunk(c);
        if c["usage"].is_object() {
            usage = c["usage"].clone();
        }
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
        for d in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = d["index"].as_u64().expect("index") as usize;
            if calls.len() <= i {
                calls.resize(i + 1, json!({"function": {"name": "", "arguments": ""}}));
            }
            let call = &mut calls[i];
            if let Some(id) = d["id"].as_str() {
                call["id"] = json!(id);
            }
            for part in ["name", "arguments"] {
                if let Some(more) = d["function"][part].as_str() {
                    let so_far = call["function"][part].as_str().unwrap_or("").to_owned();
                    call["function"][part] = json!(so_far + more);
                }
            }
        }
    }
    Streamed {
        cache,
        chunks,
        text,
        calls,
        finish,
        usage,
        done,
    }
}

/// The tool calls of a completion's first choice, as `stream_as` puts them together.
fn calls_of(completion: &Value) -> Vec<Value> {
    completion["choices"][0]["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"id": c["id"], "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}))
        .collect()
}

fn weather_request(text: &str) -> Value {
    let mut ask = request("cached", text);
    ask["tools"] = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}
    }}]);
    ask["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    ask
}

#[tokio::test]
async fn a_streamed_miss_is_stored_and_answers_later_requests() {
    let h = start().await;
    let ask = request("cached", "Describe a signal box.");
    let first = stream_as(&h, KEY, ask.clone()).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert!(first.done);
    assert!(!first.text.is_empty());
    assert!(first.usage["total_tokens"].as_u64().unwrap_or(0) > 0);
    assert_eq!(upstream_calls(&h), 1);

    // A plain request gets the completion the stream amounted to.
    let (status, cache, body) = plain(&h, KEY, ask.clone()).await;
    assert_eq!((status, cache.as_deref()), (200, Some("hit")));
    let whole: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        first.text.as_str()
    );
    assert_eq!(whole["choices"][0]["finish_reason"], first.finish);
    assert_eq!(whole["usage"], first.usage);
    let head = &first.chunks[0];
    for field in ["id", "created", "model"] {
        assert_eq!(whole[field], head[field], "{field}");
    }
    let mut schemas: Value =
        serde_json::from_str(include_str!("fixtures/openai-chat-schemas.json")).expect("schemas");
    schemas["$ref"] = json!("#/components/schemas/CreateChatCompletionResponse");
    schema_check::validate(&schemas, &whole)
        .unwrap_or_else(|e| panic!("not a valid completion: {e}\n{whole:#}"));

    // A streamed request gets it replayed.
    let again = stream_as(&h, KEY, ask).await;
    assert_eq!(again.cache.as_deref(), Some("hit"));
    assert!(again.done);
    assert_eq!(
        (&again.text, &again.finish, &again.usage),
        (&first.text, &first.finish, &first.usage)
    );
    assert_eq!(again.chunks[0]["id"], head["id"]);
    assert_eq!(upstream_calls(&h), 1, "both answered from the cache");
}

#[tokio::test]
async fn a_streamed_tool_call_is_stored_with_its_calls() {
    let h = start().await;
    let ask = weather_request("Weather in Davos?");
    let first = stream_as(&h, KEY, ask.clone()).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert_eq!(first.calls.len(), 1, "{:?}", first.chunks);
    assert_eq!(first.calls[0]["function"]["name"], "get_weather");
    assert_eq!(first.finish, "tool_calls");

    let (_, cache, body) = plain(&h, KEY, ask.clone()).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    let whole: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(calls_of(&whole), first.calls);
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(whole["usage"], first.usage);

    let again = stream_as(&h, KEY, ask).await;
    assert_eq!(again.cache.as_deref(), Some("hit"));
    assert_eq!(again.calls, first.calls);
    assert_eq!(again.finish, "tool_calls");
    assert_eq!(upstream_calls(&h), 1);
}

#[tokio::test]
async fn a_streamed_miss_from_azure_keeps_the_streams_identity() {
    let h = start().await;
    // Azure's stream opens with a chunk without choices (prompt-filter results) that
    // clients never see; the stored completion has the identity the client saw.
    let ask = request("cached-azure", "Describe a signal box.");
    let first = stream_as(&h, KEY, ask.clone()).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert!(first.done);
    let head = &first.chunks[0];
    assert!(!head["id"].as_str().unwrap_or("").is_empty());
    let (_, cache, body) = plain(&h, KEY, ask).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    let whole: Value = serde_json::from_slice(&body).expect("json");
    for field in ["id", "created", "model"] {
        assert_eq!(whole[field], head[field], "{field}");
    }
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        first.text.as_str()
    );
    assert_eq!(whole["usage"], first.usage);
    assert_eq!(h.sim.sim.requests("azure").len(), 1);
}

#[tokio::test]
async fn a_cut_stream_is_not_stored() {
    let h = start().await;
    let ask = request("cached", "Tell me a long story about a night train please.");
    h.sim.sim.set_fault("", "*", Fault::cut(3).times(1));
    let cut = stream_as(&h, KEY, ask.clone()).await;
    assert_eq!(cut.cache.as_deref(), Some("miss"));
    assert!(!cut.done, "no [DONE] after a cut");
    let last = cut.chunks.last().expect("events");
    assert_eq!(last["error"]["code"], "stream_cut");
    assert!(!cut.text.is_empty(), "content came before the cut");
    assert_eq!(upstream_calls(&h), 1);

    // The next request is a miss that reaches the upstream, and that one is kept.
    let whole = stream_as(&h, KEY, ask.clone()).await;
    assert_eq!(whole.cache.as_deref(), Some("miss"));
    assert!(whole.done);
    assert_eq!(upstream_calls(&h), 2);
    let (_, cache, _) = plain(&h, KEY, ask).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!(upstream_calls(&h), 2);
}

#[tokio::test]
async fn a_stream_whose_client_went_away_is_not_stored() {
    let mut h = start().await;
    // Ten chunks 100 ms apart: the client leaves after the first.
    let slow = Latency {
        ttft_ms: 0,
        chunk_delay_ms: 100,
        chunks: Some(10),
    };
    h.sim.sim.set_latency("", "*", slow);
    let ask = request("cached", "Tell me a story about a rack railway.");
    let mut body = ask.clone();
    body["stream"] = json!(true);
    let mut res = chat_as(&h, KEY, body).await;
    assert_eq!(res.headers()["x-switchyard-cache"], "miss");
    let first = res.chunk().await.expect("read").expect("a first chunk");
    assert!(!first.is_empty());
    drop(res);
    // Longer than the whole stream would have taken, had it gone on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.sim.sim.set_latency("", "*", Latency::default());

    let (_, cache, _) = plain(&h, KEY, ask.clone()).await;
    assert_eq!(cache.as_deref(), Some("miss"), "nothing was stored");
    assert_eq!(upstream_calls(&h), 2);
    assert_eq!(plain(&h, KEY, ask).await.1.as_deref(), Some("hit"));
    let db = h.finish().await;
    let disconnected: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE client_disconnected = 1")
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(disconnected, 1, "the first client did go away");
}

#[tokio::test]
async fn a_stream_larger_than_max_bytes_is_not_kept() {
    let h = start().await;
    let ask = request("small", "Tell me about the Rhaetian Railway.");
    let first = stream_as(&h, KEY, ask.clone()).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert!(first.done);
    let (_, cache, _) = plain(&h, KEY, ask).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(upstream_calls(&h), 2);
    // The same answer under a model with room for it is kept.
    let roomy = request("cached", "Tell me about the Rhaetian Railway.");
    assert_eq!(stream_as(&h, KEY, roomy.clone()).await.text, first.text);
    assert_eq!(plain(&h, KEY, roomy).await.1.as_deref(), Some("hit"));
    assert_eq!(upstream_calls(&h), 3);
}

#[tokio::test]
async fn a_hit_is_recorded_at_no_cost_without_an_attempt() {
    let mut h = start().await;
    let ask = request("cached", "How long is the Gotthard tunnel?");
    let first = chat_as(&h, KEY, ask.clone()).await;
    let first_id = first.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    first.bytes().await.expect("body");
    let hit = chat_as(&h, KEY, ask).await;
    let hit_id = hit.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_eq!(hit.headers()["x-switchyard-cache"], "hit");
    hit.bytes().await.expect("body");
    let db = h.finish().await;

    type Row = (i64, i64, i64, i64, Option<String>, i64, i64);
    let row = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query_as::<_, Row>(
                "SELECT status, cache_hit, cost_nano_usd, prompt_tokens + completion_tokens, \
                 deployment, attempt_count, \
                 (SELECT COUNT(*) FROM attempts a WHERE a.request_id = r.request_id) \
                 FROM requests r WHERE request_id = ?",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .expect("row")
        }
    };
    let (status, cache_hit, cost, tokens, deployment, attempts, attempt_rows) = row(hit_id).await;
    assert_eq!((status, cache_hit, cost, tokens), (200, 1, 0, 0));
    assert_eq!(deployment, None);
    assert_eq!((attempts, attempt_rows), (0, 0));
    let (status, cache_hit, cost, tokens, deployment, _, attempt_rows) = row(first_id).await;
    assert_eq!((status, cache_hit), (200, 0));
    assert!(cost > 0 && tokens > 0);
    assert_eq!(deployment.as_deref(), Some("oa-mini"));
    assert_eq!(attempt_rows, 1);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(rows, 2, "exactly one row per request");
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let h = start().await;
    let ask = request("brief", "Is the 8:02 on time?");
    assert_eq!(plain(&h, KEY, ask.clone()).await.1.as_deref(), Some("miss"));
    assert_eq!(plain(&h, KEY, ask.clone()).await.1.as_deref(), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(plain(&h, KEY, ask.clone()).await.1.as_deref(), Some("miss"));
    assert_eq!(upstream_calls(&h), 2);
}

#[tokio::test]
async fn an_answer_larger_than_max_bytes_is_not_kept() {
    let h = start().await;
    let ask = request("small", "Tell me about the Rhaetian Railway.");
    let (_, cache, body) = plain(&h, KEY, ask.clone()).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert!(body.len() > 200, "the fixture's answer exceeds the budget");
    assert_eq!(plain(&h, KEY, ask).await.1.as_deref(), Some("miss"));
    assert_eq!(upstream_calls(&h), 2);
}

#[tokio::test]
async fn a_caller_that_keeps_content_out_of_the_ledger_is_cached_only_by_its_own_opt_in() {
    let h = start().await;
    let ask = request("cached", "Where does the night train stop?");
    for _ in 0..2 {
        let (status, cache, _) = plain(&h, PRIVATE_KEY, ask.clone()).await;
        assert_eq!((status, cache), (200, None));
    }
    assert_eq!(upstream_calls(&h), 2, "never a hit for log_content = false");

    // A policy that opts in itself is cached, on a model without a setting too.
    let own = request("gpt-4o-mini", "Where does the night train stop?");
    assert_eq!(
        plain(&h, OPTED_KEY, own.clone()).await.1.as_deref(),
        Some("miss")
    );
    assert_eq!(plain(&h, OPTED_KEY, own).await.1.as_deref(), Some("hit"));
    assert_eq!(upstream_calls(&h), 3);
}

async fn admin(h: &Harness, path: &str, body: Value) -> (u16, Value) {
    let res = h
        .client
        .post(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn virtual_key(h: &Harness, name: &str, team: &str) -> String {
    let (status, key) = admin(h, "/admin/keys", json!({"name": name, "team": team})).await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().expect("secret").to_owned()
}

#[tokio::test]
async fn a_team_shares_its_answers_and_no_other_team_sees_them() {
    let h = start().await;
    for team in ["red", "blue"] {
        let (status, body) = admin(&h, "/admin/teams", json!({"name": team})).await;
        assert_eq!(status, 201, "{body}");
    }
    let red_a = virtual_key(&h, "red-a", "red").await;
    let red_b = virtual_key(&h, "red-b", "red").await;
    let blue = virtual_key(&h, "blue-a", "blue").await;
    let ask = request("cached", "When does the last ferry leave?");
    assert_eq!(
        plain(&h, &red_a, ask.clone()).await.1.as_deref(),
        Some("miss")
    );
    let (_, cache, _) = plain(&h, &red_b, ask.clone()).await;
    assert_eq!(cache.as_deref(), Some("hit"), "one team, one cache scope");
    let (_, cache, _) = plain(&h, &blue, ask).await;
    assert_eq!(cache.as_deref(), Some("miss"), "another team never sees it");
    assert_eq!(upstream_calls(&h), 2);

    // A team's policy may opt in; its TTL is checked like a model's.
    let (status, body) = admin(
        &h,
        "/admin/teams",
        json!({"name": "green", "policy": {"cache": {"ttl_s": 0}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("cache.ttl_s"), "{body}");
    let (status, body) = admin(
        &h,
        "/admin/teams",
        json!({"name": "green", "policy": {"cache": {"ttl_s": 60}}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let green = virtual_key(&h, "green-a", "green").await;
    let own = request("gpt-4o-mini", "When does the last ferry leave?");
    assert_eq!(
        plain(&h, &green, own.clone()).await.1.as_deref(),
        Some("miss")
    );
    assert_eq!(plain(&h, &green, own).await.1.as_deref(), Some("hit"));
    assert_eq!(upstream_calls(&h), 3);
}

#[tokio::test]
async fn a_tool_call_answer_replays_its_calls_in_the_stream() {
    let h = start().await;
    let tool = json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}
    }});
    let mut ask = request("cached", "Weather in Chur?");
    ask["tools"] = json!([tool]);
    ask["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let (_, cache, first) = plain(&h, KEY, ask.clone()).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let whole: Value = serde_json::from_slice(&first).expect("json");
    let call = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{whole}");

    ask["stream"] = json!(true);
    let res = chat_as(&h, KEY, ask).await;
    assert_eq!(res.headers()["x-switchyard-cache"], "hit");
    let raw = res.text().await.expect("body");
    let data = sse_data(&raw);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    chunks.iter().for_each(check_chunk);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], call["id"]);
    assert_eq!(calls[0]["function"], call["function"]);
    let last_choice = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .expect("a finish chunk");
    assert_eq!(
        last_choice["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    assert_eq!(upstream_calls(&h), 1);
}
