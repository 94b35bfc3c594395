use std::convert::Infallible;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use sqlx::Connection;

use super::*;
use crate::ledger::tracker::RequestTracker;
use crate::ledger::{Ledger, LedgerOptions, LedgerSink};

/// A request that panics half-way, with its tracker held across an await as the real
/// handlers hold theirs.
async fn panics_mid_request(State(sink): State<LedgerSink>, uri: http::Uri) -> Response {
    let mut tracker = RequestTracker::new(sink, format!("req{}", uri.path()), "chat.completions");
    tracker.set_model("m", false);
    tokio::task::yield_now().await;
    explode(&tracker)
}

fn explode(_holding: &RequestTracker) -> Response {
    panic!("injected panic")
}

/// A stream whose second frame panics, its tracker inside the body as the relay's is.
async fn panics_mid_stream(State(sink): State<LedgerSink>) -> Response {
    let mut tracker = RequestTracker::new(sink, "req-stream".into(), "chat.completions");
    tracker.set_model("m", true);
    tracker.set_status(200);
    let frames = futures_util::stream::unfold((tracker, 0u32), |(t, n)| async move {
        tokio::task::yield_now().await;
        if n == 1 {
            explode(&t);
        }
        Some((
            Ok::<_, Infallible>(Bytes::from_static(b"data: {}\n\n")),
            (t, n + 1),
        ))
    });
    Response::new(Body::from_stream(frames))
}

#[tokio::test]
async fn a_panic_is_a_500_in_the_routes_shape_with_one_ledger_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let ledger = Ledger::open(LedgerOptions::new(&path))
        .await
        .expect("ledger");
    let app = Router::new()
        .route("/v1/chat/completions", post(panics_mid_request))
        .route("/v1/messages", post(panics_mid_request))
        .route("/v1/stream", get(panics_mid_stream))
        .layer(axum::middleware::from_fn(catch_panics))
        .with_state(ledger.sink());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let res = client
        .post(format!("{base}/v1/chat/completions"))
        .send()
        .await
        .expect("an answer, not a reset connection");
    assert_eq!(res.status(), 500);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    assert!(!body.to_string().contains("injected"), "{body}");

    let res = client
        .post(format!("{base}/v1/messages"))
        .send()
        .await
        .expect("an answer, not a reset connection");
    assert_eq!(res.status(), 500);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "api_error", "{body}");

    // A stream that panics after it started ends with an error after its first frame.
    let res = client
        .get(format!("{base}/v1/stream"))
        .send()
        .await
        .expect("headers");
    assert_eq!(res.status(), 200);
    let mut res = res;
    let first = res.chunk().await.expect("the first frame");
    assert_eq!(first.as_deref(), Some(&b"data: {}\n\n"[..]));
    assert!(res.chunk().await.is_err(), "the body ends in an error");

    server.abort();
    ledger.shutdown().await.expect("shutdown");
    let mut db = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
    )
    .await
    .expect("open");
    let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
        "SELECT request_id, status, error_code, client_disconnected FROM requests ORDER BY request_id",
    )
    .fetch_all(&mut db)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        [
            ("req-stream".into(), 200, "internal_error".into(), 0),
            (
                "req/v1/chat/completions".into(),
                500,
                "internal_error".into(),
                0
            ),
            ("req/v1/messages".into(), 500, "internal_error".into(), 0),
        ]
    );
}
