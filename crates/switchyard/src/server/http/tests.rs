use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::*;

/// The two sides of a request that waits: `entered` when its handler runs, `release`
/// to let it answer.
#[derive(Clone, Default)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

type Server = (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
);

/// Stops the server and waits until `serve` has returned.
async fn stop_and_wait(stop: CancellationToken, task: tokio::task::JoinHandle<()>) {
    stop.cancel();
    task.await.expect("serve");
}

/// A server on a free port answering `GET /version` with the request's HTTP version,
/// and `GET /wait` once the gate is released.
async fn start(gate: Gate) -> Server {
    let router = Router::new()
        .route(
            "/version",
            get(|req: axum::extract::Request| async move { format!("{:?}", req.version()) }),
        )
        .route(
            "/wait",
            get(move || {
                let gate = gate.clone();
                async move {
                    gate.entered.notify_one();
                    gate.release.notified().await;
                    "released"
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, router, stop.clone()));
    (addr, stop, task)
}

#[tokio::test]
async fn serves_http1_and_http2_with_prior_knowledge() {
    let (addr, stop, task) = start(Gate::default()).await;
    let h1 = reqwest::get(format!("http://{addr}/version"))
        .await
        .expect("h1");
    assert_eq!(h1.text().await.expect("body"), "HTTP/1.1");
    let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let res = h2
        .get(format!("http://{addr}/version").parse().expect("uri"))
        .await
        .expect("h2c");
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"HTTP/2.0");
    drop(h2);
    stop_and_wait(stop, task).await;
}

/// The server's first HTTP/2 frame is its SETTINGS; an HTTP/1 server would answer 400.
#[tokio::test]
async fn a_preface_sent_in_pieces_is_still_http2() {
    let (addr, stop, task) = start(Gate::default()).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&H2_PREFACE[..9]).await.expect("first part");
    tokio::time::sleep(Duration::from_millis(30)).await;
    tcp.write_all(&H2_PREFACE[9..]).await.expect("rest");
    let mut frame = [0u8; 9];
    tcp.read_exact(&mut frame).await.expect("a frame");
    assert_eq!(frame[3], 0x4, "frame type SETTINGS, got {frame:?}");
    drop(tcp);
    stop_and_wait(stop, task).await;
}

#[tokio::test]
async fn an_http1_request_that_looks_like_the_preface_at_first_is_http1() {
    let (addr, stop, task) = start(Gate::default()).await;
    // "P" as in the preface, then not: a plain HTTP/1 request (here a bad method).
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"PUT /version HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 12];
    tcp.read_exact(&mut answer).await.expect("status line");
    assert_eq!(&answer[..], b"HTTP/1.1 405");
    drop(tcp);
    stop_and_wait(stop, task).await;
}

#[tokio::test]
async fn a_silent_connection_does_not_hold_up_shutdown() {
    let (addr, stop, task) = start(Gate::default()).await;
    let _silent = TcpStream::connect(addr).await.expect("connect");
    // Accepted before the stop (the server answers another connection meanwhile).
    let ok = reqwest::get(format!("http://{addr}/version"))
        .await
        .expect("h1");
    assert!(ok.status().is_success());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve still waited on a connection that never spoke")
        .expect("serve");
}

#[tokio::test]
async fn a_connection_closed_before_it_speaks_costs_nothing() {
    let (addr, stop, task) = start(Gate::default()).await;
    for _ in 0..20 {
        drop(TcpStream::connect(addr).await.expect("connect"));
    }
    let ok = reqwest::get(format!("http://{addr}/version"))
        .await
        .expect("h1");
    assert_eq!(ok.text().await.expect("body"), "HTTP/1.1");
    stop_and_wait(stop, task).await;
}

#[tokio::test]
async fn shutdown_waits_for_the_request_in_flight() {
    let gate = Gate::default();
    let (addr, stop, mut task) = start(gate.clone()).await;
    let request = tokio::spawn(reqwest::get(format!("http://{addr}/wait")));
    gate.entered.notified().await;
    stop.cancel();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut task)
            .await
            .is_err(),
        "serve returned with a request in flight"
    );
    gate.release.notify_one();
    let res = request.await.expect("task").expect("answered");
    assert_eq!(res.text().await.expect("body"), "released");
    task.await.expect("serve");
    // Nothing is accepted after the stop.
    assert!(TcpStream::connect(addr).await.is_err());
}
