//! `bench-forwarder`: the bare pass-through proxy, the floor no gateway can beat.
//!
//! It does what every HTTP proxy must and nothing else: accept a request, send it to
//! the upstream over a pooled keep-alive connection with the same method, path,
//! headers and body (streamed, not buffered), and stream the answer back. No parsing,
//! no auth, no accounting. It uses the same runtime as `switchyard serve` (tokio's
//! multi-thread runtime, one worker per CPU it may run on), so the difference
//! between the two is the gateway's own work.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "Bare pass-through HTTP proxy for the Switchyard benchmark")]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The upstream, e.g. `http://127.0.0.1:9000`: requests keep their path.
    #[arg(long)]
    upstream: Uri,
}

type Reply = Response<BoxBody<bytes::Bytes, hyper::Error>>;

/// Hop-by-hop headers: they describe one connection and are not forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn bad_gateway(e: impl std::fmt::Display) -> Reply {
    let mut res = Response::new(
        Full::new(bytes::Bytes::from(format!(
            r#"{{"error":{{"message":"upstream: {e}","type":"server_error","param":null,"code":null}}}}"#
        )))
        .map_err(|never| match never {})
        .boxed(),
    );
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

struct Forwarder {
    client: Client<HttpConnector, Incoming>,
    authority: http::uri::Authority,
    host: HeaderValue,
}

impl Forwarder {
    async fn forward(&self, req: Request<Incoming>) -> Reply {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        parts.uri = match uri {
            Ok(u) => u,
            Err(e) => return bad_gateway(e),
        };
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.host.clone());
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(res) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => bad_gateway(e),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-forwarder: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-forwarder: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let authority = args
        .upstream
        .authority()
        .cloned()
        .ok_or("--upstream needs a host and port, e.g. http://127.0.0.1:9000")?;
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);
    let forwarder = std::sync::Arc::new(Forwarder {
        client,
        authority,
        host,
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("LISTENING {addr}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bench-forwarder: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let forwarder = forwarder.clone();
                async move { Ok::<_, std::convert::Infallible>(forwarder.forward(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
