//! Bedrock Runtime Converse and ConverseStream over HTTP, signed with SigV4.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_sim::schema_check::validate;
use switchyard_sim::{Fault, SimOptions, DEFAULT_AWS_ACCESS_KEY_ID, DEFAULT_AWS_SECRET_ACCESS_KEY};

use crate::{read, read_until_error, start, start_with, Env, Got};

/// A model id with the `:` that must be percent-encoded in the path.
const MODEL: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
const MODEL_IN_PATH: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2%3A0";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (civil-from-days).
fn amz_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Signer<'a> {
    access_key: &'a str,
    secret: &'a str,
    token: Option<&'a str>,
    service: &'a str,
    /// Seconds added to the clock (to sign in the past).
    offset: i64,
}

impl Default for Signer<'_> {
    fn default() -> Self {
        Signer {
            access_key: DEFAULT_AWS_ACCESS_KEY_ID,
            secret: DEFAULT_AWS_SECRET_ACCESS_KEY,
            token: None,
            service: "bedrock",
            offset: 0,
        }
    }
}

impl Signer<'_> {
    /// The SigV4 headers for a POST of `body` to `path` (as sent) on `host`.
    fn headers(&self, host: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
            + self.offset;
        let date_time = amz_date(now as u64);
        let date = &date_time[..8];
        // The canonical URI encodes the path as sent once more (`%3A` → `%253A`).
        let canonical_uri: String = path
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("host".to_string(), host.to_string()),
            ("x-amz-date".to_string(), date_time.clone()),
        ];
        if let Some(t) = self.token {
            headers.push(("x-amz-security-token".to_string(), t.to_string()));
        }
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let canonical = format!(
            "POST\n{canonical_uri}\n\n{canonical_headers}\n{}\n{}",
            signed.join(";"),
            hex(&Sha256::digest(body))
        );
        let scope = format!("{date}/us-east-1/{}/aws4_request", self.service);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{}", self.secret).as_bytes(), date);
        for part in ["us-east-1", self.service, "aws4_request"] {
            key = hmac(&key, part);
        }
        let signature = hex(&hmac(&key, &sts));
        headers.push((
            "authorization".to_string(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
                self.access_key,
                signed.join(";")
            ),
        ));
        headers.retain(|(k, _)| k != "host");
        headers
    }
}

async fn signed_post(
    env: &Env,
    path: &str,
    body: &Value,
    signer: &Signer<'_>,
) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).expect("json");
    let host = env
        .handle
        .base_url()
        .trim_start_matches("http://")
        .to_string();
    let mut req = env.client.post(env.url(path)).body(bytes.clone());
    for (k, v) in signer.headers(&host, path, &bytes) {
        req = req.header(k, v);
    }
    req.send().await.expect("send")
}

async fn converse(env: &Env, path: &str, body: &Value) -> Got {
    read(signed_post(env, path, body, &Signer::default()).await).await
}

fn path(op: &str) -> String {
    format!("/model/{MODEL_IN_PATH}/{op}")
}

fn user(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": [{"text": text}]}]})
}

fn tool_config() -> Value {
    json!({"tools": [{"toolSpec": {
        "name": "lookup_order",
        "description": "Look an order up.",
        "inputSchema": {"json": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "express": {"type": "boolean"}},
            "required": ["order_id", "express"]
        }}
    }}]})
}

/// Decodes an event stream, checking both CRCs of every message.
fn frames(bytes: &[u8]) -> Vec<(Vec<(String, String)>, Value)> {
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let total = be32(rest, 0) as usize;
        let headers_len = be32(rest, 4) as usize;
        assert_eq!(be32(rest, 8), crc32fast::hash(&rest[..8]), "prelude CRC");
        assert_eq!(
            be32(rest, total - 4),
            crc32fast::hash(&rest[..total - 4]),
            "message CRC"
        );
        let mut headers = Vec::new();
        let mut at = 12;
        while at < 12 + headers_len {
            let n = rest[at] as usize;
            let name = String::from_utf8(rest[at + 1..at + 1 + n].to_vec()).expect("utf8");
            at += 1 + n;
            assert_eq!(rest[at], 7, "string header");
            let len = u16::from_be_bytes([rest[at + 1], rest[at + 2]]) as usize;
            let value = String::from_utf8(rest[at + 3..at + 3 + len].to_vec()).expect("utf8");
            at += 3 + len;
            headers.push((name, value));
        }
        let payload: Value =
            serde_json::from_slice(&rest[12 + headers_len..total - 4]).expect("JSON payload");
        out.push((headers, payload));
        rest = &rest[total..];
    }
    out
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[tokio::test]
async fn converse_plain_shape() {
    let env = start().await;
    let got = converse(&env, &path("converse"), &user("Hello")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(got.header("x-amzn-requestid").is_some());
    let r = got.json();
    assert_eq!(r["output"]["message"]["role"], "assistant");
    assert!(r["output"]["message"]["content"][0]["text"].is_string());
    assert_eq!(r["stopReason"], "end_turn");
    let usage = &r["usage"];
    assert_eq!(
        usage["totalTokens"].as_u64(),
        Some(
            usage["inputTokens"].as_u64().unwrap_or(0)
                + usage["outputTokens"].as_u64().unwrap_or(0)
        )
    );
    assert!(r["metrics"]["latencyMs"].is_u64());
    // The model id was decoded from the path.
    let recorded = &env.sim().requests("")[0];
    assert_eq!(recorded.path, path("converse"));
}

#[tokio::test]
async fn converse_stream_frames_and_order() {
    let env = start().await;
    let plain = converse(&env, &path("converse"), &user("A story please"))
        .await
        .json();
    let resp = signed_post(
        &env,
        &path("converse-stream"),
        &user("A story please"),
        &Signer::default(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/vnd.amazon.eventstream")
    );
    let bytes = resp.bytes().await.expect("body");
    let fs = frames(&bytes);
    for (headers, _) in &fs {
        assert_eq!(header(headers, ":message-type"), "event");
        assert_eq!(header(headers, ":content-type"), "application/json");
    }
    let types: Vec<&str> = fs.iter().map(|(h, _)| header(h, ":event-type")).collect();
    assert_eq!(types[0], "messageStart");
    assert_eq!(
        &types[types.len() - 3..],
        ["contentBlockStop", "messageStop", "metadata"]
    );
    assert!(types[1..types.len() - 3]
        .iter()
        .all(|t| *t == "contentBlockDelta"));
    assert_eq!(fs[0].1, json!({"role": "assistant"}));
    let text: String = fs
        .iter()
        .filter(|(h, _)| header(h, ":event-type") == "contentBlockDelta")
        .map(|(_, p)| p["delta"]["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        text,
        plain["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
    );
    assert_eq!(fs[fs.len() - 2].1["stopReason"], "end_turn");
    // Usage comes last, in metadata, after messageStop.
    assert_eq!(fs[fs.len() - 1].1["usage"], plain["usage"]);
}

#[tokio::test]
async fn tool_use_plain_and_streamed() {
    let env = start().await;
    let mut req = user("Where is order 42? Use lookup_order.");
    req["toolConfig"] = tool_config();
    let r = converse(&env, &path("converse"), &req).await.json();
    assert_eq!(r["stopReason"], "tool_use");
    let content = r["output"]["message"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tool_use = content
        .iter()
        .find_map(|b| b.get("toolUse"))
        .expect("a toolUse block");
    assert!(tool_use["toolUseId"]
        .as_str()
        .is_some_and(|id| id.starts_with("tooluse_")));
    assert_eq!(tool_use["name"], "lookup_order");
    validate(
        &tool_config()["tools"][0]["toolSpec"]["inputSchema"]["json"],
        &tool_use["input"],
    )
    .expect("input valid");

    let resp = signed_post(&env, &path("converse-stream"), &req, &Signer::default()).await;
    let fs = frames(&resp.bytes().await.expect("body"));
    let start = fs
        .iter()
        .find(|(h, _)| header(h, ":event-type") == "contentBlockStart")
        .map(|(_, p)| p.clone())
        .expect("contentBlockStart for the tool use");
    assert_eq!(
        start["start"]["toolUse"]["toolUseId"],
        tool_use["toolUseId"]
    );
    let index = start["contentBlockIndex"].clone();
    let input: String = fs
        .iter()
        .filter(|(h, p)| {
            header(h, ":event-type") == "contentBlockDelta" && p["contentBlockIndex"] == index
        })
        .map(|(_, p)| {
            p["delta"]["toolUse"]["input"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).expect("JSON"),
        tool_use["input"]
    );

    // The round trip ends with text.
    let round_trip = json!({"toolConfig": tool_config(), "messages": [
        req["messages"][0],
        r["output"]["message"],
        {"role": "user", "content": [{"toolResult": {"toolUseId": tool_use["toolUseId"],
            "content": [{"json": {"status": "shipped"}}]}}]}]});
    let answer = converse(&env, &path("converse"), &round_trip).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["stopReason"], "end_turn");
}

#[tokio::test]
async fn sigv4_rejections() {
    let env = start().await;
    let body = user("x");
    let expect = |got: &Got, status: u16, kind: &str| {
        assert_eq!(got.status, status, "{}", got.text);
        let error_type = got.header("x-amzn-errortype").unwrap_or_default();
        assert!(error_type.starts_with(&format!("{kind}:")), "{error_type}");
        assert!(got.json()["message"].is_string());
    };
    let wrong_secret = Signer {
        secret: "not-the-secret",
        ..Signer::default()
    };
    let got = read(signed_post(&env, &path("converse"), &body, &wrong_secret).await).await;
    expect(&got, 403, "InvalidSignatureException");
    let message = got.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.starts_with("The request signature we calculated does not match"));
    assert!(message.contains("%253A0/converse"), "{message}");

    let unknown = Signer {
        access_key: "AKIDSOMEONEELSE",
        ..Signer::default()
    };
    let got = read(signed_post(&env, &path("converse"), &body, &unknown).await).await;
    expect(&got, 403, "UnrecognizedClientException");

    let wrong_service = Signer {
        service: "bedrock-runtime",
        ..Signer::default()
    };
    let got = read(signed_post(&env, &path("converse"), &body, &wrong_service).await).await;
    expect(&got, 403, "InvalidSignatureException");

    let stale = Signer {
        offset: -3600,
        ..Signer::default()
    };
    let got = read(signed_post(&env, &path("converse"), &body, &stale).await).await;
    expect(&got, 403, "InvalidSignatureException");
    assert!(got.json()["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("Signature expired")));

    let got = read(
        env.client
            .post(env.url(&path("converse")))
            .json(&body)
            .send()
            .await
            .expect("send"),
    )
    .await;
    expect(&got, 403, "MissingAuthenticationTokenException");

    // A body changed after signing does not match.
    let host = env
        .handle
        .base_url()
        .trim_start_matches("http://")
        .to_string();
    let signed = Signer::default().headers(&host, &path("converse"), b"{}");
    let mut req = env.client.post(env.url(&path("converse"))).json(&body);
    for (k, v) in signed {
        req = req.header(k, v);
    }
    expect(
        &read(req.send().await.expect("send")).await,
        403,
        "InvalidSignatureException",
    );

    // A Bedrock API key (bearer) is accepted too.
    let got = read(
        env.client
            .post(env.url(&path("converse")))
            .bearer_auth("ABSKexample")
            .json(&body)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
}

#[tokio::test]
async fn configured_credentials_and_session_token() {
    let env = start_with(SimOptions {
        aws_access_key_id: "AKIDCUSTOM".into(),
        aws_secret_access_key: "custom-secret".into(),
        aws_session_token: Some("session-123".into()),
        ..SimOptions::default()
    })
    .await;
    let good = Signer {
        access_key: "AKIDCUSTOM",
        secret: "custom-secret",
        token: Some("session-123"),
        ..Signer::default()
    };
    let got = read(signed_post(&env, &path("converse"), &user("x"), &good).await).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let no_token = Signer {
        token: None,
        ..good
    };
    let got = read(signed_post(&env, &path("converse"), &user("x"), &no_token).await).await;
    assert_eq!(got.status, 403);
    // Under an instance prefix the prefix is part of the signed path.
    let got = read(
        signed_post(
            &env,
            &format!("/primary{}", path("converse")),
            &user("x"),
            &good,
        )
        .await,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(env.sim().requests("primary").len(), 1);
}

#[tokio::test]
async fn validation_and_faults() {
    let env = start().await;
    let got = converse(
        &env,
        &path("converse"),
        &json!({"messages": [
        {"role": "assistant", "content": [{"text": "hi"}]}]}),
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(got
        .header("x-amzn-errortype")
        .is_some_and(|t| t.starts_with("ValidationException:")));
    assert!(got.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("must start with a user message")));

    // Faults are keyed by the decoded model id.
    env.sim().set_fault("", MODEL, Fault::error(429).times(1));
    let got = converse(&env, &path("converse"), &user("x")).await;
    assert_eq!(got.status, 429);
    assert!(got
        .header("x-amzn-errortype")
        .is_some_and(|t| t.starts_with("ThrottlingException:")));
    assert_eq!(
        got.json(),
        json!({"message": "Too many requests, please wait before trying again."})
    );

    let mut not_ready = Fault::error(429)
        .with_type("ModelNotReadyException")
        .times(1);
    not_ready.status = None;
    env.sim().set_fault("", "*", not_ready);
    let got = converse(&env, &path("converse"), &user("x")).await;
    assert_eq!(got.status, 429);
    assert!(got
        .header("x-amzn-errortype")
        .is_some_and(|t| t.starts_with("ModelNotReadyException:")));

    env.sim().set_fault("", "*", Fault::error(503).times(1));
    let got = converse(&env, &path("converse-stream"), &user("x")).await;
    assert_eq!(got.status, 503);
    assert!(got
        .header("x-amzn-errortype")
        .is_some_and(|t| t.starts_with("ServiceUnavailableException:")));

    // In-stream: events, then an exception message.
    env.sim()
        .set_fault("", "*", Fault::error(429).mid_stream(2).times(1));
    let resp = signed_post(
        &env,
        &path("converse-stream"),
        &user("x"),
        &Signer::default(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let fs = frames(&resp.bytes().await.expect("body"));
    assert_eq!(fs.len(), 3);
    let (headers, payload) = &fs[2];
    assert_eq!(header(headers, ":message-type"), "exception");
    assert_eq!(header(headers, ":exception-type"), "throttlingException");
    assert!(payload["message"].is_string());

    env.sim().set_fault("", "*", Fault::cut(2).times(1));
    let resp = signed_post(
        &env,
        &path("converse-stream"),
        &user("x"),
        &Signer::default(),
    )
    .await;
    let (_, failed) = read_until_error(resp).await;
    assert!(failed);
}

#[tokio::test]
async fn temporary_credentials_from_the_container_endpoint_expire_and_revoke() {
    let env = start().await;
    let creds = |env: &Env| {
        let url = env.url("/ecs/credentials");
        let client = env.client.clone();
        async move {
            let got = read(client.get(url).send().await.expect("send")).await;
            let c = got.json();
            (
                c["AccessKeyId"].as_str().expect("id").to_owned(),
                c["SecretAccessKey"].as_str().expect("secret").to_owned(),
                c["Token"].as_str().expect("token").to_owned(),
            )
        }
    };
    let call = |id: &str, secret: &str, token: &str| {
        let signer = Signer {
            access_key: id,
            secret,
            token: Some(token),
            ..Signer::default()
        };
        let headers = signer.headers(
            env.handle.base_url().trim_start_matches("http://"),
            &path("converse"),
            &serde_json::to_vec(&user("hi")).expect("json"),
        );
        (headers, serde_json::to_vec(&user("hi")).expect("json"))
    };
    let send = |(headers, body): (Vec<(String, String)>, Vec<u8>)| {
        let mut req = env.client.post(env.url(&path("converse"))).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { read(req.send().await.expect("send")).await }
    };
    env.sim().require_issued_credentials(true);
    let (id, secret, token) = creds(&env).await;
    let got = send(call(&id, &secret, &token)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    // The static simulator keys are refused in strict mode.
    let got = converse(&env, &path("converse"), &user("hi")).await;
    assert_eq!(got.status, 403);
    assert_eq!(
        got.header("x-amzn-errortype")
            .map(|t| t.split(':').next().unwrap_or("")),
        Some("UnrecognizedClientException")
    );

    env.sim().set_token_lifetime(std::time::Duration::ZERO);
    let (id2, secret2, token2) = creds(&env).await;
    let got = send(call(&id2, &secret2, &token2)).await;
    assert_eq!(got.status, 403);
    assert!(got
        .header("x-amzn-errortype")
        .is_some_and(|t| t.starts_with("ExpiredTokenException")));

    env.sim().revoke_issued_credentials();
    let got = send(call(&id, &secret, &token)).await;
    assert_eq!(got.status, 403);
    assert!(got
        .header("x-amzn-errortype")
        .is_some_and(|t| t.starts_with("UnrecognizedClientException")));
}

const THINKING_MODEL_IN_PATH: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0";

fn thinking_request(text: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "toolConfig": tool_config(),
        "inferenceConfig": {"maxTokens": 4096},
        "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 2048}},
    })
}

fn thinking_path(op: &str) -> String {
    format!("/model/{THINKING_MODEL_IN_PATH}/{op}")
}

fn continue_converse(first: &Value, content: &Value) -> Value {
    let results: Vec<Value> = content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["toolUse"]["toolUseId"].as_str())
        .map(|id| json!({"toolResult": {"toolUseId": id, "content": [{"text": "shipped"}]}}))
        .collect();
    let mut next = first.clone();
    let messages = next["messages"].as_array_mut().expect("messages");
    messages.push(json!({"role": "assistant", "content": content}));
    messages.push(json!({"role": "user", "content": results}));
    next
}

#[tokio::test]
async fn claude_reasoning_content_through_converse() {
    let env = start().await;
    let first = thinking_request("Please lookup_order 42 [[redacted_thinking]]");
    let got = converse(&env, &thinking_path("converse"), &first).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let answer = got.json();
    let content = answer["output"]["message"]["content"].clone();
    let text = content[0]["reasoningContent"]["reasoningText"]["text"]
        .as_str()
        .unwrap_or("");
    let signature = content[0]["reasoningContent"]["reasoningText"]["signature"]
        .as_str()
        .unwrap_or("");
    assert!(!text.is_empty() && signature.len() > 20, "{content}");
    assert!(content[1]["reasoningContent"]["redactedContent"]
        .as_str()
        .is_some());
    assert_eq!(answer["stopReason"], "tool_use");

    // Sent back: the loop goes on. Without the reasoning block: refused.
    let ok = converse(
        &env,
        &thinking_path("converse"),
        &continue_converse(&first, &content),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let stripped: Vec<Value> = content
        .as_array()
        .expect("content")
        .iter()
        .filter(|b| b.get("reasoningContent").is_none())
        .cloned()
        .collect();
    let got = converse(
        &env,
        &thinking_path("converse"),
        &continue_converse(&first, &json!(stripped)),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(
        got.header("x-amzn-errortype")
            .map(|h| h.split(':').next().unwrap_or("")),
        Some("ValidationException")
    );
    let message = got.json()["message"].as_str().unwrap_or("").to_string();
    assert!(message.starts_with("The model returned the following errors: messages.1.content.0.type: Expected `thinking` or `redacted_thinking`"), "{message}");
    // A Bedrock signature is not an Anthropic one, nor one for another model.
    let mut other = first.clone();
    other["messages"][0]["content"][0]["text"] = json!("Please lookup_order 42");
    let foreign = continue_converse(&other, &content);
    let got = converse(
        &env,
        "/model/us.anthropic.claude-opus-4-1-20250805-v1%3A0/converse",
        &foreign,
    )
    .await;
    assert_eq!(got.status, 400);
    assert!(
        got.text.contains("Invalid `signature` in `thinking` block"),
        "{}",
        got.text
    );
    // Forced tool choice with thinking: refused.
    let mut forced = first.clone();
    forced["toolConfig"]["toolChoice"] = json!({"any": {}});
    let got = converse(&env, &thinking_path("converse"), &forced).await;
    assert_eq!(got.status, 400);
    assert!(got
        .text
        .contains("Thinking may not be enabled when tool_choice forces tool use."));
    // Budget must stay under maxTokens.
    let mut over = first.clone();
    over["inferenceConfig"]["maxTokens"] = json!(1500);
    let got = converse(&env, &thinking_path("converse"), &over).await;
    assert_eq!(got.status, 400);

    // The stream: reasoning text deltas, then the signature, the same as the plain answer.
    let resp = signed_post(
        &env,
        &thinking_path("converse-stream"),
        &first,
        &Signer::default(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let fs = frames(&resp.bytes().await.expect("body"));
    let deltas: Vec<&Value> = fs
        .iter()
        .filter(|(h, p)| {
            header(h, ":event-type") == "contentBlockDelta" && p["contentBlockIndex"] == 0
        })
        .map(|(_, p)| &p["delta"]["reasoningContent"])
        .collect();
    let streamed: String = deltas.iter().filter_map(|d| d["text"].as_str()).collect();
    assert_eq!(streamed, text);
    assert_eq!(
        deltas.last().map(|d| d["signature"].clone()),
        Some(json!(signature))
    );
    assert!(fs.iter().any(|(_, p)| p["contentBlockIndex"] == 1
        && p["delta"]["reasoningContent"]["redactedContent"].is_string()));

    // Models that do not think ignore nothing: the old model answers as before.
    let plain = converse(&env, &path("converse"), &user("hello"))
        .await
        .json();
    assert!(plain["output"]["message"]["content"][0]
        .get("text")
        .is_some());
}
