//! Golden tests: fixtures in `fixtures/{request,response,stream}`, each holding an
//! input and the exact JSON expected out.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{json, Value};

use super::error::error_json;
use super::request::to_openai;
use super::response::to_message;
use super::stream::AnthropicEvents;
use super::wire::MessagesRequest;
use crate::api::error::ApiError;
use crate::api::relay::Encoder;
use crate::api::wire::parse_body;
use crate::types::Usage;

fn fixtures(kind: &str) -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/api/anthropic/fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}

/// What the OpenAI decoder would read of a chunk's or completion's usage.
fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    Some(Usage {
        prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
        cached_tokens: u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        ..Usage::default()
    })
}

#[test]
fn requests_translate_to_openai() {
    for (path, f) in fixtures("request") {
        let bytes = serde_json::to_vec(&f["anthropic"]).expect("json");
        let req: MessagesRequest = parse_body(&bytes).expect("parses");
        req.validate()
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.message));
        let got = serde_json::to_value(to_openai(&req)).expect("json");
        assert_eq!(got, f["openai"], "{}", path.display());
    }
}

#[test]
fn responses_translate_to_anthropic() {
    for (path, f) in fixtures("response") {
        let body = serde_json::to_vec(&f["openai"]).expect("json");
        let usage = usage_of(&f["openai"]).expect("fixture has usage");
        let got = to_message(&body, "msg_1", "support-chat", &usage).expect("translates");
        assert_eq!(got, f["anthropic"], "{}", path.display());
    }
}

/// Splits SSE output into (event name, data) pairs, checking the framing.
fn events(out: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(out).expect("utf-8");
    assert!(
        text.ends_with("\n\n"),
        "events end with a blank line: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("two lines");
            let name = name.strip_prefix("event: ").expect("event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                .expect("json");
            assert_eq!(data["type"], name, "the data's type names the event");
            (name.to_owned(), data)
        })
        .collect()
}

#[test]
fn streams_translate_to_anthropic_events() {
    for (path, f) in fixtures("stream") {
        let mut enc = AnthropicEvents::new("msg_1".into(), "support-chat".into());
        let mut out = Vec::new();
        for chunk in f["chunks"].as_array().expect("chunks") {
            let data = Bytes::from(serde_json::to_vec(chunk).expect("json"));
            let has_choices = chunk["choices"].as_array().is_some_and(|c| !c.is_empty());
            if let Some(b) = enc.chunk(&data, has_choices, usage_of(chunk).as_ref()) {
                out.extend_from_slice(&b);
            }
        }
        out.extend_from_slice(&enc.done());
        let got: Vec<Value> = events(&out)
            .into_iter()
            .map(|(name, data)| json!([name, data]))
            .collect();
        let want = f["events"].as_array().expect("events");
        assert_eq!(got.len(), want.len(), "{}: {got:#?}", path.display());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "{} event {i}", path.display());
        }
    }
}

#[test]
fn a_cut_stream_ends_with_one_error_event() {
    let mut enc = AnthropicEvents::new("msg_1".into(), "m".into());
    let chunk = json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}]});
    let first = enc
        .chunk(&Bytes::from(chunk.to_string()), true, None)
        .expect("events");
    assert_eq!(
        events(&first).len(),
        4,
        "message_start, ping, block start, delta"
    );
    let error = ApiError::from_provider(
        &crate::types::ProviderError::Connect("reset".into()),
        "oa-mini",
    );
    let out = enc.failed(&error);
    let evs = events(&out);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].0, "error");
    assert_eq!(evs[0].1["error"]["type"], "api_error");
    let upstream = enc.upstream_error(&Bytes::from_static(
        br#"{"error":{"message":"boom","type":"server_error"}}"#,
    ));
    assert_eq!(events(&upstream)[0].1["error"]["message"], "boom");
    assert_eq!(events(&upstream)[0].1["error"]["type"], "api_error");
    let overloaded = enc.upstream_error(&Bytes::from_static(
        br#"{"error":{"message":"Overloaded","type":"server_error","code":"upstream_overloaded"}}"#,
    ));
    assert_eq!(
        events(&overloaded)[0].1["error"]["type"],
        "overloaded_error"
    );
}

#[test]
fn errors_are_anthropic_shaped_with_the_type_of_their_status() {
    let cases = [
        (ApiError::invalid_key(), "authentication_error"),
        (ApiError::model_not_found("x"), "not_found_error"),
        (
            ApiError::invalid_request(Some("max_tokens".into()), "bad"),
            "invalid_request_error",
        ),
        (ApiError::body_too_large(10), "request_too_large"),
        (
            ApiError::capacity_exhausted("x", std::time::Duration::from_secs(1)),
            "rate_limit_error",
        ),
        (
            ApiError::no_healthy_deployment("x", std::time::Duration::from_secs(1)),
            "overloaded_error",
        ),
        (ApiError::internal("x"), "api_error"),
    ];
    for (e, want) in cases {
        let v = error_json(&e, Some("req_1"));
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], want, "{}", e.message);
        assert_eq!(v["error"]["message"], e.message.as_str());
        assert_eq!(v["request_id"], "req_1");
    }
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": []}),
            "messages",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}),
            "messages[0].content[0].source",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            "messages[0].content[0].tool_use_id",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "t"}]}),
            "tools[0].input_schema",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "any"}}),
            "tool_choice",
        ),
        (
            json!({"model": "m", "max_tokens": "many", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            "messages[0].role",
        ),
    ];
    for (body, param) in cases {
        let bytes = serde_json::to_vec(&body).expect("json");
        let err = parse_body::<MessagesRequest>(&bytes)
            .and_then(|r| r.validate())
            .expect_err("invalid");
        assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
        assert_eq!(err.status, 400);
    }
}

#[test]
fn passthrough_sends_the_clients_body_only_to_anthropic_and_only_when_unchanged() {
    use super::passthrough::Passthrough;
    use crate::config::ProviderKind;
    use crate::providers::canonical::golden;

    let ant = golden::deployment(
        ProviderKind::Anthropic {
            base_url: "http://h".into(),
            version: "2023-06-01".into(),
        },
        "claude-haiku-4-5",
    );
    let oa = golden::deployment(
        ProviderKind::OpenAi {
            base_url: "http://h/v1".into(),
        },
        "gpt-4o-mini",
    );
    let body = json!({"model": "claude", "max_tokens": 9, "top_k": 3,
        "messages": [{"role": "user", "content": "hi"}]});
    let bytes = serde_json::to_vec(&body).expect("json");
    let req: MessagesRequest = parse_body(&bytes).expect("parses");
    let translated = to_openai(&req);

    let mut p = Passthrough::new(&bytes, &translated, true);
    assert!(
        p.body(&translated, &oa).is_none(),
        "OpenAI deployments get the translation"
    );
    let sent: Value =
        serde_json::from_slice(&p.body(&translated, &ant).expect("passed").body).expect("json");
    let mut want = body.clone();
    want["model"] = json!("claude-haiku-4-5");
    assert_eq!(sent, want);

    let mut redacted = translated.clone();
    redacted.messages[0].content = Some(crate::api::wire::MessageContent::Text("[EMAIL_1]".into()));
    let mut p = Passthrough::new(&bytes, &translated, true);
    assert!(
        p.body(&redacted, &ant).is_none(),
        "a rewritten request is not bypassed"
    );
}

#[test]
fn native_streams_keep_the_upstreams_events_and_read_usage() {
    use super::native::{NativeEvents, ANTHROPIC_NATIVE};
    use crate::dispatch::NativeAnswer;
    use crate::providers::Translated;

    let upstream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_x\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":4,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let mut decoder = ANTHROPIC_NATIVE.stream_decoder();
    decoder.push(upstream.as_bytes());
    let mut enc = NativeEvents;
    let mut out = Vec::new();
    let mut last_usage = None;
    loop {
        match decoder.next().expect("decodes") {
            Some(Translated::Chunk {
                data,
                has_choices,
                usage,
            }) => {
                if usage.is_some() {
                    last_usage = usage;
                }
                out.extend_from_slice(
                    &enc.chunk(&data, has_choices, usage.as_ref()).expect("sent"),
                );
            }
            Some(Translated::Done) => {
                out.extend_from_slice(&enc.done());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!decoder.has_partial());
    // Byte for byte what the upstream sent: thinking blocks included.
    assert_eq!(String::from_utf8(out).expect("utf-8"), upstream);
    let usage = last_usage.expect("usage");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens
        ),
        (16, 7, 4, 2)
    );

    let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[],"usage":{"input_tokens":3,"output_tokens":2}}"#;
    let usage = ANTHROPIC_NATIVE
        .usage(body)
        .expect("readable")
        .expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 2));
    assert!(ANTHROPIC_NATIVE.usage(b"{\"type\":\"error\"}").is_err());
}
