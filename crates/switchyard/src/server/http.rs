//! The HTTP listener: accepts connections and serves a router on each, HTTP/1.1, or
//! HTTP/2 with prior knowledge (h2c, as load balancers speak to backends), until told
//! to stop; then it stops accepting and lets every open connection finish what it is
//! serving (each is asked to close once its requests are done).
//!
//! Why not `axum::serve`: its version detection (hyper-util's `auto`) reads a new
//! connection's first 24 bytes and replays them to hyper, whose read buffer (8 KB)
//! then holds those 24 bytes when it asks for its next full-size read, does not fit
//! it and doubles: every HTTP/1 connection kept a 16 KB read buffer for its whole
//! life (8 MB more with 1,000 open streams). Here the first bytes are peeked, not
//! read, and the socket goes to hyper's HTTP/1 or HTTP/2 server untouched.

use std::io;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How an HTTP/2 connection with prior knowledge begins (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest wait for the rest of the preface from a client that sent only part of it;
/// then the connection is served as HTTP/1 (which refuses it).
const PREFACE_WAIT: Duration = Duration::from_secs(10);

/// Serves `router` on every connection `listener` accepts until `stop` is cancelled,
/// then returns once every connection has closed.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY the first small write after the headers (a stream's
        // first chunk) can wait on Nagle's algorithm for the client's ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // A clone of the router is a reference count: the route table is built once.
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let h2 = tokio::select! {
                () = stop.cancelled() => return,
                h2 = speaks_h2(&tcp) => h2,
            };
            let io = TokioIo::new(tcp);
            match h2 {
                Ok(true) => {
                    let conn =
                        http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
                    drive(conn, &stop).await;
                }
                Ok(false) => {
                    drive(http1::Builder::new().serve_connection(io, service), &stop).await
                }
                Err(e) => tracing::debug!(error = %e, "connection failed before its first request"),
            }
        });
    }
    // Nothing more is accepted; connections still being set up see `stop` too.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection; once `stop` is cancelled, asks it to close after the
/// requests it has begun (HTTP/1: after the current one; HTTP/2: GOAWAY).
async fn drive<C>(conn: C, stop: &CancellationToken)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

/// Whether a new connection starts with the HTTP/2 preface, judged by peeking at its
/// first bytes (they stay in the socket for the server that reads them).
async fn speaks_h2(tcp: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let n = tcp.peek(&mut first).await?;
        if n == 0 || first.get(..n) != H2_PREFACE.get(..n) {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Only part of the preface so far. Peeking again at once would spin (the bytes
        // are still there and the socket stays readable), so wait a little.
        if started.elapsed() >= PREFACE_WAIT {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// An accept that failed: a connection that went away before it was accepted is
/// nobody's concern; anything else (out of file descriptors, say) is logged and the
/// loop pauses, so that it does not spin while the condition lasts.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests;
