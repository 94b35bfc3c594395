//! The HTTP client for provider calls: hyper's pooled client over rustls, with
//! nothing in between.
//!
//! A general-purpose client (redirect policy, retry layer, proxy matcher, a URL type
//! of its own parsed again on every hop) cost more per call than the rest of a small
//! request's work. A provider call needs none of that: it is one `POST` to a URL
//! known at configuration load, answered by its provider. Redirects are never
//! followed (one would carry the provider credential to another host), and no
//! `HTTP(S)_PROXY` is consulted: the gateway connects to its providers itself.

use std::error::Error as _;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyDataStream, Full};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// The chunks of an answer's body as the network delivers them.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

/// A pooled client for provider calls (cheap to clone: the pool is shared).
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<Bounded, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream::Client")
    }
}

/// The pool's settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

impl Client {
    /// A client whose connections are made within `connect_timeout` (TCP and TLS
    /// handshakes each), with `TCP_NODELAY`, HTTP/2 where the provider offers it by
    /// ALPN, and the Mozilla root certificates.
    pub fn new(settings: PoolSettings) -> Result<Client, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = Bounded {
            inner: https,
            limit: settings.connect_timeout,
        };
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Client { inner })
    }

    /// A `POST` to `url`: a URL parsed once (see `config::UpstreamCache`), or text.
    pub fn post(&self, url: impl IntoUri) -> RequestBuilder {
        RequestBuilder {
            request: url.into_uri().map(|uri| {
                let mut r = Request::new(Bytes::new());
                *r.method_mut() = Method::POST;
                *r.uri_mut() = uri;
                r
            }),
        }
    }
}

/// The TLS connector with the connect timeout around the whole of making a
/// connection: resolving, TCP and the TLS handshake (a provider that accepts and then
/// stalls the handshake must not hold a call past it).
#[derive(Clone)]
struct Bounded {
    inner: HttpsConnector<HttpConnector>,
    limit: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connection = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower_service::Service<Uri> for Bounded {
    type Response = Connection;
    type Error = BoxError;
    // Boxed: one per new connection, not per request.
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timeout",
                )) as BoxError),
            }
        })
    }
}

/// Why a client could not be built (its TLS settings, or those of the token
/// endpoints' client beside it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// What a URL given to [`Client::post`] may be.
pub trait IntoUri {
    fn into_uri(self) -> Result<Uri, String>;
}

impl IntoUri for Uri {
    fn into_uri(self) -> Result<Uri, String> {
        Ok(self)
    }
}

impl IntoUri for String {
    fn into_uri(self) -> Result<Uri, String> {
        parse_url(&self)
    }
}

impl IntoUri for &String {
    fn into_uri(self) -> Result<Uri, String> {
        parse_url(self)
    }
}

impl IntoUri for &str {
    fn into_uri(self) -> Result<Uri, String> {
        parse_url(self)
    }
}

pub use crate::config::parse_url;

/// A request being built; a bad header or URL is reported when it is sent. It holds
/// no client (cloning one per request cost several reference counts): [`send`] is
/// given the one to send it with.
///
/// [`send`]: RequestBuilder::send
pub struct RequestBuilder {
    request: Result<Request<Bytes>, String>,
}

impl RequestBuilder {
    /// Adds a header (a name or value that is not valid fails the send).
    pub fn header<K, V>(mut self, name: K, value: V) -> RequestBuilder
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        if let Ok(r) = &mut self.request {
            match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                (Ok(name), Ok(value)) => {
                    r.headers_mut().append(name, value);
                }
                _ => self.request = Err("a header name or value is not valid".to_owned()),
            }
        }
        self
    }

    /// `Authorization: Bearer <token>`, marked sensitive (kept out of debug output).
    pub fn bearer_auth(mut self, token: &str) -> RequestBuilder {
        if let Ok(r) = &mut self.request {
            match HeaderValue::try_from(format!("Bearer {token}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    r.headers_mut().insert(http::header::AUTHORIZATION, value);
                }
                Err(_) => self.request = Err("the bearer token is not a valid header".to_owned()),
            }
        }
        self
    }

    /// The request's body.
    pub fn body(mut self, body: Bytes) -> RequestBuilder {
        if let Ok(r) = &mut self.request {
            *r.body_mut() = body;
        }
        self
    }

    /// The request as it would be sent (for tests and signing checks).
    pub fn build(self) -> Result<Request<Bytes>, SendError> {
        self.request.map_err(SendError::Invalid)
    }

    /// Sends the request through `client`; resolves when the answer's status and
    /// headers arrived.
    pub async fn send(self, client: &Client) -> Result<Response, SendError> {
        let request = self.request.map_err(SendError::Invalid)?;
        let request = request.map(Full::new);
        match client.inner.request(request).await {
            Ok(r) => Ok(Response(r)),
            Err(e) => Err(SendError::Failed(e)),
        }
    }
}

/// An answer whose body has not been read.
#[derive(Debug)]
pub struct Response(http::Response<hyper::body::Incoming>);

impl Response {
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }

    /// The body's chunks as they arrive.
    pub fn bytes_stream(self) -> ByteStream {
        Box::pin(BodyDataStream::new(self.0.into_body()))
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Invalid(String),
    #[error("{}", describe(.0))]
    Failed(hyper_util::client::legacy::Error),
}

impl SendError {
    /// Whether the connection could not be made within the connect timeout.
    pub fn is_timeout(&self) -> bool {
        let SendError::Failed(e) = self else {
            return false;
        };
        let mut source = e.source();
        while let Some(s) = source {
            if s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return true;
            }
            source = s.source();
        }
        false
    }
}

/// An error with its causes, outermost first (`a: b: c`): the outermost alone (say,
/// "client error (Connect)") does not say what went wrong.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A client for unit tests that only build requests.
#[cfg(test)]
pub fn test_client() -> Client {
    Client::new(PoolSettings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_idle_per_host: 1,
    })
    .expect("client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_absolute_http_or_normalised() {
        assert_eq!(
            parse_url("http://h:8/v1/chat/completions?x=1")
                .expect("ok")
                .to_string(),
            "http://h:8/v1/chat/completions?x=1"
        );
        // A space is no valid request target as it stands; it is percent-encoded.
        assert_eq!(
            parse_url("https://h/model/a b/converse")
                .expect("ok")
                .path(),
            "/model/a%20b/converse"
        );
        // A non-ASCII host goes out in its IDNA form.
        assert_eq!(
            parse_url("https://b\u{fc}cher.example/v1")
                .expect("ok")
                .host(),
            Some("xn--bcher-kva.example")
        );
        for bad in ["/v1/chat", "ftp://h/x", "http://", "not a url", ""] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_header_fails_the_request_not_the_process() {
        let client = test_client();
        let bad = client
            .post("http://h/x")
            .header("x-key", "line\nbreak")
            .body(Bytes::from_static(b"{}"))
            .build();
        assert!(matches!(bad, Err(SendError::Invalid(_))));
        let bad = client.post("http://h/x").bearer_auth("a\rb").build();
        assert!(matches!(bad, Err(SendError::Invalid(_))));
        let good = client
            .post("http://h/x")
            .header("x-key", "k")
            .bearer_auth("t")
            .body(Bytes::from_static(b"{}"))
            .build()
            .expect("built");
        assert_eq!(good.method(), Method::POST);
        assert_eq!(good.headers()["x-key"], "k");
        assert_eq!(good.headers()["authorization"], "Bearer t");
        assert!(good.headers()["authorization"].is_sensitive());
        assert_eq!(good.body().as_ref(), b"{}");
    }

    #[tokio::test]
    async fn a_stalled_handshake_is_a_connect_timeout() {
        // Accepts TCP connections and never answers the TLS client hello.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let client = Client::new(PoolSettings {
            connect_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_host: 1,
        })
        .expect("client");
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            client.post(format!("https://{addr}/v1")).send(&client),
        )
        .await
        .expect("the connect timeout ends the call");
        let err = sent.expect_err("no TLS server");
        assert!(err.is_timeout(), "{err}");
        held.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_says_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let client = Client::new(PoolSettings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_host: 1,
        })
        .expect("client");
        let err = client
            .post(format!("http://{addr}/v1"))
            .send(&client)
            .await
            .expect_err("nothing listens");
        assert!(!err.is_timeout());
        let text = err.to_string();
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
