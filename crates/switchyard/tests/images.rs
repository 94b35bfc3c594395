//! Image URLs for providers that take only bytes (Bedrock): the gateway fetches them
//! itself, from a tiny image server on 127.0.0.1, only when `[images] allow_hosts`
//! names loopback; without it the fetch is refused with 400 naming the part.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use common::{Harness, PATIENT_BREAKER};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A 1×1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// Serves the PNG to every request; returns its base URL and the request count.
async fn image_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG)
        .expect("png");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let png = png.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    png.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&png).await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

fn config(sim: &str, images: &str) -> String {
    format!(
        r#"
{PATIENT_BREAKER}

[providers.i-bedrock]
kind = "bedrock"
base_url = "{sim}"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[deployments.i-bedrock]
provider = "i-bedrock"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"

[models.img-bedrock]
deployments = ["i-bedrock"]
retry = {{ max_attempts = 1 }}

{images}
"#
    )
}

fn with_image(model: &str, url: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe this picture"},
        {"type": "image_url", "image_url": {"url": url}}
    ]}]})
}

async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

#[tokio::test]
async fn bedrock_gets_the_bytes_of_an_allowed_loopback_image() {
    let (images, hits) = image_server().await;
    let h = Harness::start_with_sim(|sim| config(sim, "[images]\nallow_hosts = [\"127.0.0.1\"]\n"))
        .await;
    let (status, text_only) = json_of(
        h.chat(json!({"model": "img-bedrock", "messages": common::user("Describe this picture")}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{text_only}");
    let (status, body) = json_of(
        h.chat(with_image("img-bedrock", &format!("{images}/cat.png")))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once");
    let with = body["usage"]["prompt_tokens"].as_i64().expect("usage");
    let without = text_only["usage"]["prompt_tokens"].as_i64().expect("usage");
    assert!(
        with > without,
        "the image reached Bedrock: {with} vs {without}"
    );
}

#[tokio::test]
async fn loopback_is_refused_without_the_allowlist() {
    let (images, hits) = image_server().await;
    let h = Harness::start_with_sim(|sim| config(sim, "")).await;
    let (status, body) = json_of(
        h.chat(with_image("img-bedrock", &format!("{images}/cat.png")))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"], "messages[0].content[1].image_url.url",
        "{body}"
    );
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("loopback"), "{message}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "never connected");
}

#[tokio::test]
async fn images_over_the_size_cap_are_refused() {
    let (images, _) = image_server().await;
    let h = Harness::start_with_sim(|sim| {
        config(
            sim,
            "[images]\nmax_bytes = 10\nallow_hosts = [\"127.0.0.1\"]\n",
        )
    })
    .await;
    let (status, body) = json_of(
        h.chat(with_image("img-bedrock", &format!("{images}/cat.png")))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("larger than 10 bytes"),
        "{body}"
    );
}

#[tokio::test]
async fn models_without_a_bytes_only_deployment_pass_the_url_on() {
    let (images, hits) = image_server().await;
    let h = Harness::start_with_sim(|sim| config(sim, "")).await;
    // `gpt-4o-mini` is served by an OpenAI deployment, which takes URLs itself.
    let (status, body) = json_of(
        h.chat(with_image("gpt-4o-mini", &format!("{images}/cat.png")))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the gateway did not fetch");
}

#[tokio::test]
async fn the_anthropic_ingress_fetches_url_images_for_bedrock() {
    let (images, hits) = image_server().await;
    let h = Harness::start_with_sim(|sim| config(sim, "[images]\nallow_hosts = [\"127.0.0.1\"]\n"))
        .await;
    let res = h
        .post("/v1/messages")
        .json(&json!({"model": "img-bedrock", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this picture"},
            {"type": "image", "source": {"type": "url", "url": format!("{images}/cat.png")}}
        ]}]}))
        .send()
        .await
        .expect("send");
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// The same request with `n` copies of one image URL.
fn with_images(model: &str, url: &str, n: usize) -> Value {
    let mut content = vec![json!({"type": "text", "text": "Compare these pictures"})];
    content.extend((0..n).map(|_| json!({"type": "image_url", "image_url": {"url": url}})));
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn the_images_of_one_request_share_a_total_cap() {
    let (images, hits) = image_server().await;
    let png_len = base64::engine::general_purpose::STANDARD
        .decode(PNG)
        .expect("png")
        .len();
    // Two images fit, the third passes the total although it is under `max_bytes`.
    let total = png_len * 2 + png_len / 2;
    let h = Harness::start_with_sim(|sim| {
        config(
            sim,
            &format!("[images]\nmax_total_bytes = {total}\nallow_hosts = [\"127.0.0.1\"]\n"),
        )
    })
    .await;
    let url = format!("{images}/cat.png");
    let (status, body) = json_of(h.chat(with_images("img-bedrock", &url, 2)).await).await;
    assert_eq!(status, 200, "two images are within the total: {body}");
    let (status, body) = json_of(h.chat(with_images("img-bedrock", &url, 5)).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"], "messages[0].content[3].image_url.url",
        "the third image is the one that passes the total: {body}"
    );
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("images.max_total_bytes"), "{message}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2 + 3,
        "the fetching stopped at the image that passed the total"
    );
    assert_eq!(
        h.sim.sim.requests("").len(),
        1,
        "the refused request never reached Bedrock"
    );
}

#[tokio::test]
async fn a_refused_host_is_not_told_which_address_it_resolved_to() {
    let (images, hits) = image_server().await;
    let port = images.rsplit(':').next().expect("port");
    let h = Harness::start_with_sim(|sim| config(sim, "")).await;
    let (status, body) = json_of(
        h.chat(with_image(
            "img-bedrock",
            &format!("http://localhost:{port}/cat.png"),
        ))
        .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"], "messages[0].content[1].image_url.url",
        "{body}"
    );
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("loopback"), "the reason class: {message}");
    for address in ["127.0.0.1", "::1"] {
        assert!(
            !message.contains(address),
            "the resolved address leaked: {message}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "never connected");
}

#[tokio::test]
async fn images_are_fetched_once_per_request_not_per_attempt() {
    let (images, hits) = image_server().await;
    let h = Harness::start_with_sim(|sim| {
        format!(
            r#"
{}
[providers.i-bedrock-primary]
kind = "bedrock"
base_url = "{sim}/primary"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"
secret_access_key = "sim-secret-key"

[deployments.i-bedrock-primary]
provider = "i-bedrock-primary"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"

[models.img-failover]
deployments = ["i-bedrock-primary", "i-bedrock"]
"#,
            config(sim, "[images]\nallow_hosts = [\"127.0.0.1\"]\n")
        )
    })
    .await;
    h.sim
        .sim
        .set_fault("primary", "*", switchyard_sim::Fault::error(500));
    let res = h
        .chat(with_images("img-failover", &format!("{images}/cat.png"), 2))
        .await;
    assert_eq!(
        res.headers()["x-switchyard-deployment"],
        "i-bedrock",
        "the backup served"
    );
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !h.sim.sim.requests("primary").is_empty(),
        "the primary was tried first"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "each image fetched once, whatever the number of attempts"
    );
}
