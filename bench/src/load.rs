//! The load generator: HTTP/1.1 keep-alive connections (hyper's connection-level
//! client, one request at a time per connection), driven either one request at a time
//! (the latency floor) or open-loop at a fixed rate.
//!
//! Open loop: a pacer thread releases request *i* at `start + i / rate` into a queue
//! that the connections take from, first idle first. A request's latency is measured
//! from that scheduled time, not from when a connection got round to sending it, so a
//! server that stalls is charged for every request that queued behind the stall
//! (coordinated-omission correction). The pacer sleeps with `nanosleep`, not with
//! tokio's millisecond timer, so it releases requests within tens of microseconds of
//! their time; its own lateness is recorded apart (`pacer_lag`) and it is the same
//! for every arm.
//!
//! Streams: the body is scanned for SSE events (`\n\n`); the time of each event is the
//! time the read that completed it returned. The first `chunks` events are the content
//! chunks: time to first chunk is measured to the first, and the gaps between them are
//! recorded. Events that arrived in the same read as the one before are counted as
//! `coalesced`: a proxy that buffers a stream shows up there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio::time::timeout_at;

use crate::stats::Summary;

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub path: String,
    pub authorization: Option<HeaderValue>,
}

impl Target {
    pub fn new(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<Target, String> {
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
        let authorization = match bearer {
            Some(k) => {
                Some(HeaderValue::from_str(&format!("Bearer {k}")).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        Ok(Target {
            addr,
            host,
            path: path.to_owned(),
            authorization,
        })
    }
}

/// What is sent, and what to expect back.
#[derive(Debug, Clone)]
pub struct Payload {
    pub body: Bytes,
    /// The answer is an SSE stream.
    pub stream: bool,
    /// Content chunks per stream: time to first chunk and gaps are measured on these.
    pub chunks: usize,
}

impl Payload {
    /// A chat completion request for `model`; with `pad_to`, the user message is padded
    /// so that the whole body is that many bytes.
    pub fn chat(model: &str, stream: bool, chunks: usize, pad_to: Option<usize>) -> Payload {
        let mut content = String::from("Say hello to the benchmark.");
        let stream_part = if stream {
            r#","stream":true,"stream_options":{"include_usage":true}"#
        } else {
            ""
        };
        let render = |content: &str| {
            format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"{content}"}}],"max_tokens":16{stream_part}}}"#
            )
        };
        if let Some(target) = pad_to {
            let base = render(&content).len();
            if target > base {
                let filler = "lorem ipsum dolor sit amet ";
                while content.len() < 27 + (target - base) {
                    content.push_str(filler);
                }
                content.truncate(27 + (target - base));
            }
        }
        Payload {
            body: Bytes::from(render(&content)),
            stream,
            chunks,
        }
    }
}

/// Everything measured in one run, raw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests scheduled (open loop) or sent (serial).
    pub offered: u64,
    pub ok: u64,
    pub errors: u64,
    /// Scheduled but not completed before the run's hard deadline.
    pub lost: u64,
    pub first_error: Option<String>,
    /// Per completed request, from its scheduled time (serial: its send time).
    pub latency_ns: Vec<u64>,
    /// Streams: to the first content chunk.
    pub ttft_ns: Vec<u64>,
    /// Streams: between consecutive content chunks.
    pub gaps_ns: Vec<u64>,
    /// Streams: events that arrived in the same read as the event before.
    pub coalesced: u64,
    pub events: u64,
    /// How late the pacer released requests (open loop only).
    pub pacer_lag_ns: Vec<u64>,
    /// From the first scheduled request to the last completion.
    pub wall: Duration,
}

impl Outcome {
    fn absorb(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.lost += other.lost;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_ns.extend(other.latency_ns);
        self.ttft_ns.extend(other.ttft_ns);
        self.gaps_ns.extend(other.gaps_ns);
        self.coalesced += other.coalesced;
        self.events += other.events;
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    /// The summaries and counts, for reports.
    pub fn report(&mut self) -> Report {
        Report {
            offered: self.offered,
            ok: self.ok,
            errors: self.errors,
            lost: self.lost,
            first_error: self.first_error.clone(),
            achieved_rps: if self.wall.is_zero() {
                0.0
            } else {
                self.ok as f64 / self.wall.as_secs_f64()
            },
            latency: Summary::of(&mut self.latency_ns, self.lost as usize),
            ttft: (!self.ttft_ns.is_empty()).then(|| Summary::of(&mut self.ttft_ns, 0)),
            gaps: (!self.gaps_ns.is_empty()).then(|| Summary::of(&mut self.gaps_ns, 0)),
            coalesced_fraction: (self.events > 0)
                .then(|| self.coalesced as f64 / self.events as f64),
            pacer_lag: (!self.pacer_lag_ns.is_empty())
                .then(|| Summary::of(&mut self.pacer_lag_ns, 0)),
        }
    }
}

/// The summary of an [`Outcome`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub offered: u64,
    pub ok: u64,
    pub errors: u64,
    pub lost: u64,
    pub first_error: Option<String>,
    pub achieved_rps: f64,
    pub latency: Summary,
    pub ttft: Option<Summary>,
    pub gaps: Option<Summary>,
    pub coalesced_fraction: Option<f64>,
    pub pacer_lag: Option<Summary>,
}

impl Report {
    /// Every request completed and at most 0.1% failed.
    pub fn complete(&self) -> bool {
        self.lost == 0 && self.ok > 0 && self.errors * 1000 <= self.offered
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// Opens one keep-alive HTTP/1.1 connection.
pub async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A keep-alive connection and how many requests it has carried.
struct Conn {
    sender: Sender,
    used: u64,
}

/// Why an exchange failed.
enum Failure {
    /// The connection was closed under the request before an answer began: on a
    /// reused connection that is the server ending an idle keep-alive connection,
    /// which clients retry on a new one.
    Closed(String),
    Other(String),
}

impl Failure {
    fn message(self) -> String {
        match self {
            Failure::Closed(m) | Failure::Other(m) => m,
        }
    }
}

fn closed_or_other(e: hyper::Error, what: &str) -> Failure {
    if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
        Failure::Closed(format!("{what}: {e}"))
    } else {
        Failure::Other(format!("{what}: {e}"))
    }
}

/// One request on the connection in `slot` (opened if empty), retried once on a fresh
/// connection when a reused one turns out to have been closed by the server.
async fn exchange_on(
    slot: &mut Option<Conn>,
    target: &Target,
    payload: &Payload,
    origin: Instant,
    first_event: Option<&AtomicUsize>,
    out: &mut Outcome,
) -> Result<(), String> {
    for attempt in 0..2 {
        let conn = match slot {
            Some(c) => c,
            None => slot.insert(Conn {
                sender: connect(target.addr).await?,
                used: 0,
            }),
        };
        match exchange(&mut conn.sender, target, payload, origin, first_event, out).await {
            Ok(()) => {
                conn.used += 1;
                return Ok(());
            }
            Err(Failure::Closed(_)) if conn.used > 0 && attempt == 0 => {
                *slot = None;
            }
            Err(e) => {
                *slot = None;
                return Err(e.message());
            }
        }
    }
    Err("the connection closed twice".into())
}

/// SSE event boundaries across reads.
#[derive(Default)]
struct EventScan {
    /// The last significant byte seen was a newline.
    after_newline: bool,
}

impl EventScan {
    /// Number of events completed by `data`.
    fn push(&mut self, data: &[u8]) -> usize {
        let mut n = 0;
        for &b in data {
            match b {
                b'\n' if self.after_newline => {
                    n += 1;
                    self.after_newline = false;
                }
                b'\n' => self.after_newline = true,
                b'\r' => {}
                _ => self.after_newline = false,
            }
        }
        n
    }
}

/// One request and its whole answer. Latency counts from `origin`.
async fn exchange(
    sender: &mut Sender,
    target: &Target,
    payload: &Payload,
    origin: Instant,
    first_event: Option<&AtomicUsize>,
    out: &mut Outcome,
) -> Result<(), Failure> {
    sender
        .ready()
        .await
        .map_err(|e| closed_or_other(e, "connection"))?;
    let mut req = Request::post(target.path.as_str())
        .header(HOST, target.host.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(payload.body.clone()))
        .map_err(|e| Failure::Other(e.to_string()))?;
    if let Some(auth) = &target.authorization {
        req.headers_mut().insert(AUTHORIZATION, auth.clone());
    }
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| closed_or_other(e, "request"))?;
    let status = res.status();
    let mut body = res.into_body();
    if !status.is_success() {
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Other(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if text.len() < 300 {
                    text.extend_from_slice(&data);
                }
            }
        }
        text.truncate(300);
        return Err(Failure::Other(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&text)
        )));
    }
    if !payload.stream {
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| Failure::Other(format!("body: {e}")))?;
        }
        out.latency_ns.push(nanos(origin.elapsed()));
        return Ok(());
    }
    let mut scan = EventScan::default();
    let mut times: Vec<Instant> = Vec::with_capacity(payload.chunks + 2);
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Other(format!("stream: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        let n = scan.push(data);
        if n > 0 && times.is_empty() {
            if let Some(counter) = first_event {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        if n > 1 {
            out.coalesced += n as u64 - 1;
        }
        times.extend(std::iter::repeat_n(now, n));
        tail.extend_from_slice(data);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    let end = Instant::now();
    if !tail.windows(6).any(|w| w == b"[DONE]") {
        return Err(Failure::Other(format!(
            "stream ended without [DONE] after {} events",
            times.len()
        )));
    }
    out.events += times.len() as u64;
    if let Some(first) = times.first() {
        out.ttft_ns.push(nanos(first.duration_since(origin)));
    }
    let content = &times[..times.len().min(payload.chunks)];
    out.gaps_ns
        .extend(content.windows(2).map(|w| nanos(w[1].duration_since(w[0]))));
    out.latency_ns.push(nanos(end.duration_since(origin)));
    Ok(())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One request at a time on one connection, for `duration` or `max` requests.
pub async fn run_serial(
    target: &Target,
    payload: &Payload,
    duration: Duration,
    max: u64,
) -> Outcome {
    let mut out = Outcome::default();
    let start = Instant::now();
    let end = start + duration;
    let mut slot: Option<Conn> = None;
    while Instant::now() < end && out.offered < max {
        out.offered += 1;
        let t = Instant::now();
        match exchange_on(&mut slot, target, payload, t, None, &mut out).await {
            Ok(()) => out.ok += 1,
            Err(e) => {
                out.error(e);
                // A server that refuses connections should not be hammered.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out.wall = start.elapsed();
    out
}

/// Open loop: `rate` requests a second for `duration`, over `connections` keep-alive
/// connections. Requests not completed `drain` after the last one was scheduled are
/// lost.
pub async fn run_open(
    target: &Target,
    payload: &Payload,
    rate: f64,
    duration: Duration,
    connections: usize,
    drain: Duration,
) -> Outcome {
    let mut out = Outcome::default();
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    out.offered = total;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        match connect(target.addr).await {
            Ok(sender) => conns.push(Conn { sender, used: 0 }),
            Err(e) => {
                out.error(e);
                out.lost = total;
                return out;
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let hard = start + duration + drain;
    let target = Arc::new(target.clone());
    let payload = Arc::new(payload.clone());
    let mut workers = Vec::with_capacity(conns.len());
    for conn in conns {
        let queue = queue.clone();
        let target = target.clone();
        let payload = payload.clone();
        workers.push(tokio::spawn(async move {
            open_worker(conn, queue, &target, &payload, hard).await
        }));
    }
    let pacer = std::thread::spawn(move || {
        let mut lags = Vec::with_capacity(total as usize);
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            lags.push(nanos(Instant::now().saturating_duration_since(at)));
            if tx.send(at).is_err() {
                break;
            }
        }
        lags
    });
    for w in workers {
        match w.await {
            Ok(o) => out.absorb(o),
            Err(e) => out.error(format!("worker panicked: {e}")),
        }
    }
    out.wall = start.elapsed();
    // The workers end only once the pacer dropped its sender, so this does not block.
    match pacer.join() {
        Ok(lags) => out.pacer_lag_ns = lags,
        Err(_) => out.error("the pacer thread panicked".into()),
    }
    // Anything scheduled that neither completed nor failed is lost.
    let accounted = out.ok + out.errors + out.lost;
    out.lost += total.saturating_sub(accounted);
    out
}

async fn open_worker(
    conn: Conn,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    target: &Target,
    payload: &Payload,
    hard: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut slot = Some(conn);
    let deadline = tokio::time::Instant::from_std(hard);
    loop {
        let job = {
            let mut q = queue.lock().await;
            q.recv().await
        };
        let Some(scheduled) = job else { break };
        if Instant::now() >= hard {
            out.lost += 1;
            continue;
        }
        match timeout_at(
            deadline,
            exchange_on(&mut slot, target, payload, scheduled, None, &mut out),
        )
        .await
        {
            Ok(Ok(())) => out.ok += 1,
            Ok(Err(e)) => out.error(e),
            Err(_) => {
                out.lost += 1;
                slot = None;
            }
        }
    }
    out
}

/// Counters a [`run_held`] updates as it goes, for whoever watches it.
#[derive(Debug, Default)]
pub struct HeldProgress {
    /// Streams whose first event arrived.
    pub started: AtomicUsize,
    /// Streams that ended (well or not).
    pub finished: AtomicUsize,
}

/// `n` streams at once, each on its own connection, all opened as fast as the target
/// accepts them; for memory under many concurrent streams.
pub async fn run_held(
    target: &Target,
    payload: &Payload,
    n: usize,
    progress: Arc<HeldProgress>,
    deadline: Duration,
) -> Outcome {
    let mut out = Outcome {
        offered: n as u64,
        ..Outcome::default()
    };
    let start = Instant::now();
    let hard = tokio::time::Instant::from_std(start + deadline);
    let target = Arc::new(target.clone());
    let payload = Arc::new(payload.clone());
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let target = target.clone();
        let payload = payload.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut slot = None;
            let run = exchange_on(
                &mut slot,
                &target,
                &payload,
                Instant::now(),
                Some(&progress.started),
                &mut out,
            );
            match timeout_at(hard, run).await {
                Ok(Ok(())) => out.ok += 1,
                Ok(Err(e)) => out.error(e),
                Err(_) => out.lost += 1,
            }
            progress.finished.fetch_add(1, Ordering::Relaxed);
            out
        }));
    }
    for t in tasks {
        match t.await {
            Ok(o) => out.absorb(o),
            Err(e) => out.error(format!("stream task panicked: {e}")),
        }
    }
    out.wall = start.elapsed();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_across_reads() {
        let mut s = EventScan::default();
        assert_eq!(s.push(b"data: a\n"), 0);
        assert_eq!(s.push(b"\ndata: b\n\ndata: c\r\n"), 2);
        assert_eq!(s.push(b"\r\n"), 1);
        assert_eq!(s.push(b"data: [DONE]\n\n"), 1);
    }

    #[test]
    fn padded_body_has_the_asked_size() {
        let p = Payload::chat("bench", false, 0, Some(100 * 1024));
        assert_eq!(p.body.len(), 100 * 1024);
        let v: serde_json::Value = serde_json::from_slice(&p.body).expect("valid JSON");
        assert_eq!(v["model"], "bench");
        let small = Payload::chat("bench", true, 10, None);
        let v: serde_json::Value = serde_json::from_slice(&small.body).expect("valid JSON");
        assert_eq!(v["stream"], true);
    }
}
