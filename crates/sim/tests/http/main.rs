//! HTTP-level tests: the simulator on 127.0.0.1:0, driven with reqwest.

mod anthropic;
mod auth;
mod azure;
mod bedrock;
mod chat;
mod control;
mod embeddings;
mod faults;
mod gemini;
mod mistral;

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use switchyard_sim::{SimHandle, SimOptions, Simulator};

pub const KEY: &str = "sk-test-key-123456";

pub struct Env {
    pub handle: SimHandle,
    pub client: reqwest::Client,
}

pub async fn start() -> Env {
    start_with(SimOptions::default()).await
}

pub async fn start_with(opts: SimOptions) -> Env {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let handle = Simulator::new(opts).spawn(listener).await.expect("spawn");
    Env {
        handle,
        client: reqwest::Client::new(),
    }
}

/// A response read to the end: status, headers and body text (or the transfer error).
pub struct Got {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Env {
    pub fn sim(&self) -> &Simulator {
        &self.handle.sim
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.handle.base_url(), path)
    }

    /// POST with bearer auth; reads the whole body.
    pub async fn post(&self, path: &str, body: &Value) -> Got {
        let resp = self
            .client
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .expect("send");
        read(resp).await
    }

    pub async fn get(&self, path: &str) -> Got {
        let resp = self
            .client
            .get(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("send");
        read(resp).await
    }

    /// A chat completion on the default instance that must succeed.
    pub async fn chat(&self, body: Value) -> Value {
        let got = self.post("/v1/chat/completions", &body).await;
        assert_eq!(got.status, 200, "{}", got.text);
        got.json()
    }
}

pub async fn read(resp: reqwest::Response) -> Got {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Got {
        status,
        headers,
        text,
    }
}

/// Splits an SSE body into its `data:` payloads, checking the framing strictly: every
/// event is exactly one `data: …` line followed by a blank line.
pub fn sse_payloads(text: &str) -> Vec<String> {
    assert!(
        text.ends_with("\n\n"),
        "stream must end with a blank line: {text:?}"
    );
    text[..text.len() - 2]
        .split("\n\n")
        .map(|event| {
            assert!(!event.contains('\n'), "one line per event: {event:?}");
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {event:?}"))
                .to_string()
        })
        .collect()
}

/// The JSON chunks of a complete stream, asserting it ends with `[DONE]`.
pub fn stream_chunks(text: &str) -> Vec<Value> {
    let payloads = sse_payloads(text);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("bad chunk {p}: {e}")))
        .collect()
}

/// Joins the streamed `delta.content` of choice `index`.
pub fn streamed_content(chunks: &[Value], index: u64) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"] == json!(index))
        .filter_map(|c| c["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

/// Reads a streamed body chunk by chunk until it ends or fails; returns what arrived and
/// whether the transfer failed. Bounded in time so a hang fails the test instead.
pub async fn read_until_error(resp: reqwest::Response) -> (String, bool) {
    let mut stream = resp.bytes_stream();
    let mut text = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => text.extend_from_slice(&bytes),
                Err(_) => return true,
            }
        }
        false
    })
    .await
    .expect("stream neither ended nor failed within 10 s");
    (String::from_utf8_lossy(&text).into_owned(), outcome)
}

pub fn user(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}
