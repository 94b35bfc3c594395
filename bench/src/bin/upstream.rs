//! `bench-upstream`: a minimal, fast OpenAI-compatible server to measure proxies
//! against. `POST …/chat/completions` answers after a fixed delay with a small fixed
//! JSON body carrying usage, or, with `"stream": true`, with N content chunks at a
//! fixed interval, then the usage chunk (when `stream_options.include_usage`) and
//! `[DONE]`. `GET /healthz` answers 200. `POST /v1/traces` takes OTLP exports and keeps
//! nothing. Everything else is 404.
//!
//! A model name ending in `-NxMS` (e.g. `bench-25x200`) streams N chunks MS
//! milliseconds apart instead of the defaults, so that one server can play a short
//! and a long stream behind any proxy, which passes the model name along.
//!
//! It runs on one thread (a current-thread runtime): it shares a core with the load
//! generator and should take as little of it as it can.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};

#[derive(Parser, Debug, Clone, Copy)]
#[command(about = "Fast fake OpenAI-compatible upstream for the Switchyard benchmark")]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before the answer (non-streaming) or the first chunk (streaming), in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Content chunks per stream.
    #[arg(long, default_value_t = 10)]
    chunks: usize,
    /// Interval between content chunks, in ms.
    #[arg(long, default_value_t = 5)]
    chunk_interval_ms: u64,
}

/// The fields the upstream looks at; the rest of the body is skipped.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<PeekStreamOptions>,
}

#[derive(Deserialize)]
struct PeekStreamOptions {
    #[serde(default)]
    include_usage: bool,
}

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;

const CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"},\"finish_reason\":null}]}\n\n";
const LAST_CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE_CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":10,\"total_tokens\":22}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// Chunks and interval from a model name ending in `-NxMS`.
fn stream_shape(model: &str, args: &Args) -> (usize, Duration) {
    let parsed = model.rsplit_once('-').and_then(|(_, tail)| {
        let (n, ms) = tail.split_once('x')?;
        Some((n.parse().ok()?, ms.parse().ok()?))
    });
    let (n, ms) = parsed.unwrap_or((args.chunks, args.chunk_interval_ms));
    (n.max(1), Duration::from_millis(ms))
}

/// An SSE answer produced on a schedule: chunk `i` is due at `start + i·interval`;
/// the last content chunk carries `finish_reason`, then usage and `[DONE]` follow at once.
struct SseBody {
    start: Instant,
    interval: Duration,
    chunks: usize,
    next: usize,
    include_usage: bool,
    sleep: Pin<Box<Sleep>>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let content = this.chunks;
        if this.next < content {
            let due = this.start + this.interval * this.next as u32;
            if Instant::now() < due {
                if this.sleep.deadline() != due {
                    this.sleep.as_mut().reset(due);
                }
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.next += 1;
            let text = if this.next == content {
                LAST_CHUNK
            } else {
                CHUNK
            };
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(text.as_bytes())))));
        }
        if this.next == content {
            this.next += 1;
            if this.include_usage {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    USAGE_CHUNK.as_bytes(),
                )))));
            }
        }
        if this.next == content + 1 {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(DONE.as_bytes())))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.next > self.chunks + 1
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

type Reply = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>>;

fn plain(status: StatusCode, text: &'static str) -> Reply {
    let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

async fn handle(req: Request<Incoming>, args: Args) -> Result<Reply, Infallible> {
    let is_chat = req.uri().path().ends_with("/chat/completions");
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        return Ok(plain(StatusCode::OK, r#"{"status":"ok"}"#));
    }
    if req.method() == Method::POST && req.uri().path() == "/v1/traces" {
        // An OTLP/HTTP collector that keeps nothing, for profiles with traces on: the
        // body is read whole and the export acknowledged (an empty protobuf message).
        let _ = req.into_body().collect().await;
        return Ok(plain(StatusCode::OK, ""));
    }
    if !is_chat || req.method() != Method::POST {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}"#,
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                r#"{"error":{"message":"body","type":"invalid_request_error","param":null,"code":null}}"#,
            ))
        }
    };
    let Ok(peek) = serde_json::from_slice::<Peek>(&body) else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"the body is not a chat completion request","type":"invalid_request_error","param":null,"code":null}}"#,
        ));
    };
    let start = Instant::now() + Duration::from_millis(args.delay_ms);
    if !peek.stream {
        if args.delay_ms > 0 {
            tokio::time::sleep_until(start).await;
        }
        return Ok(plain(StatusCode::OK, COMPLETION));
    }
    let (chunks, interval) = stream_shape(&peek.model, &args);
    let body = SseBody {
        start,
        interval,
        chunks,
        next: 0,
        include_usage: peek.stream_options.is_some_and(|o| o.include_usage),
        sleep: Box::pin(tokio::time::sleep_until(start)),
    };
    let mut res = Response::new(body.boxed_unsync());
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-upstream: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("LISTENING {}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait and go on.
                eprintln!("bench-upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, args));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_shape_from_model_name() {
        let args = Args {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            delay_ms: 0,
            chunks: 10,
            chunk_interval_ms: 5,
        };
        assert_eq!(
            stream_shape("bench-25x200", &args),
            (25, Duration::from_millis(200))
        );
        assert_eq!(stream_shape("bench", &args), (10, Duration::from_millis(5)));
        assert_eq!(
            stream_shape("gpt-4o-mini", &args),
            (10, Duration::from_millis(5))
        );
    }

    #[test]
    fn canned_bodies_are_json() {
        assert!(serde_json::from_str::<serde_json::Value>(COMPLETION).is_ok());
        for chunk in [CHUNK, LAST_CHUNK, USAGE_CHUNK] {
            let data = chunk
                .strip_prefix("data: ")
                .and_then(|c| c.strip_suffix("\n\n"))
                .unwrap_or("");
            assert!(serde_json::from_str::<serde_json::Value>(data).is_ok());
        }
    }
}
