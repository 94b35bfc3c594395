//! Protocol-neutral HTTP plumbing shared by every wire API: reading and recording a
//! request, request ids, timed response bodies, and how the stall, cut and malformed
//! faults are worked into a plain or streamed body.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::generate;
use crate::{Fault, FaultKind, Latency, RecordedRequest, Shared};

/// Requests larger than this are refused; large enough for base64 images.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Decodes `%XX` escapes in a path segment (deployment names and model ids may carry them).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of query parameter `name`, if present (raw, not percent-decoded).
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2025-01-02T03:04:05Z` for a Unix time.
pub(crate) fn rfc3339(secs: u64) -> String {
    let secs = secs as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// 32 lowercase hex characters, unique per request (a counter and the clock, hashed).
pub(crate) fn unique_hex(shared: &Shared) -> String {
    let n = shared.request_counter.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = Vec::with_capacity(24);
    seed.extend_from_slice(&n.to_le_bytes());
    seed.extend_from_slice(&nanos.to_le_bytes());
    let digest = generate::sha256(&seed);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn new_request_id(shared: &Shared) -> String {
    format!("req_{}", unique_hex(shared))
}

/// The body as JSON; a non-JSON body is kept as a string so it can still be recorded.
pub(crate) fn parse_body(bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Records a request for `instance` (every header, nothing redacted).
pub(crate) fn record(shared: &Shared, instance: &str, parts: &Parts, body: &Value) {
    shared.state().record(
        instance,
        RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.clone(),
        },
    );
}

/// The fault and latency that apply to this request; counts the fault against its `count`.
pub(crate) fn fault_and_latency(
    shared: &Shared,
    instance: &str,
    model: &str,
) -> (Option<Fault>, Latency) {
    let mut state = shared.state();
    (
        state.take_fault(instance, model),
        state.latency(instance, model),
    )
}

/// A header value from text; `None` when it is not a valid header value.
pub(crate) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A response with a status, a content type, a body and extra headers.
pub(crate) fn response(
    status: StatusCode,
    content_type: &str,
    body: Body,
    headers: &[(&'static str, String)],
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        map.insert(header::CONTENT_TYPE, v);
    }
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.append(HeaderName::from_static(name), v);
        }
    }
    response
}

/// The pause before a cut aborts the body. Without it hyper would still hold the headers
/// and the first events in its write buffer when the body fails, and the client would see
/// no response at all instead of a response that breaks off part-way.
pub(crate) const ABORT_GRACE: Duration = Duration::from_millis(20);

/// One step of a response body: wait, then send bytes or abort the transfer.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) delay: Duration,
    pub(crate) payload: Payload,
}

#[derive(Debug)]
pub(crate) enum Payload {
    Data(Bytes),
    Abort,
}

/// A body that plays `events` with their delays; an `Abort` ends it with an error, which
/// makes hyper drop the connection without finishing the transfer.
pub(crate) fn timed_body(events: Vec<Event>) -> Body {
    let stream = futures_util::stream::iter(events).then(|event| async move {
        if !event.delay.is_zero() {
            tokio::time::sleep(event.delay).await;
        }
        match event.payload {
            Payload::Data(bytes) => Ok(bytes),
            Payload::Abort => Err(std::io::Error::other("simulated cut")),
        }
    });
    Body::from_stream(stream)
}

/// How long a `stall` fault pauses.
pub(crate) fn stall_of(fault: Option<&Fault>) -> Duration {
    match fault {
        Some(f) if f.kind == FaultKind::Stall => Duration::from_millis(f.stall_ms.unwrap_or(1000)),
        _ => Duration::ZERO,
    }
}

/// The body of a plain (non-streamed) answer with the cut and malformed faults worked
/// in: both send the first half of the JSON; a cut then drops the connection.
pub(crate) fn plain_body(body: String, fault: Option<&Fault>) -> Body {
    let half = || {
        let mut h = body.len() / 2;
        while !body.is_char_boundary(h) {
            h -= 1;
        }
        body[..h].to_string()
    };
    match fault.map(|f| f.kind) {
        Some(FaultKind::Cut) => timed_body(vec![
            Event {
                delay: Duration::ZERO,
                payload: Payload::Data(Bytes::from(half())),
            },
            Event {
                delay: ABORT_GRACE,
                payload: Payload::Abort,
            },
        ]),
        Some(FaultKind::Malformed) => Body::from(half()),
        _ => Body::from(body),
    }
}

/// The frames of a stream as timed events: `ttft_ms` before the first, `chunk_delay_ms`
/// before each later one, with the fault worked in:
/// - `stall`: the pause comes before the second frame;
/// - `cut`: only `cut_after_chunks` frames (default 2), then the connection drops;
/// - `malformed`: `malformed` is sent after the first frame;
/// - `error` with `cut_after_chunks`: that many frames, then `error_frame`, then the end.
///
/// `trailer` (e.g. OpenAI's `[DONE]`) follows the frames unless a cut or an error ends
/// the stream first.
pub(crate) fn stream_events(
    frames: Vec<Bytes>,
    trailer: Option<Bytes>,
    latency: &Latency,
    fault: Option<&Fault>,
    malformed: Bytes,
    error_frame: Option<Bytes>,
) -> Vec<Event> {
    let count = frames.len();
    let mut events: Vec<Event> = frames
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Event {
            delay: Duration::from_millis(if i == 0 {
                latency.ttft_ms
            } else {
                latency.chunk_delay_ms
            }),
            payload: Payload::Data(bytes),
        })
        .collect();
    let Some(fault) = fault else {
        if let Some(t) = trailer {
            events.push(Event {
                delay: Duration::ZERO,
                payload: Payload::Data(t),
            });
        }
        return events;
    };
    let keep = (fault.cut_after_chunks.unwrap_or(2) as usize).min(count);
    match fault.kind {
        FaultKind::Stall => {
            if let Some(second) = events.get_mut(1) {
                second.delay += Duration::from_millis(fault.stall_ms.unwrap_or(1000));
            }
        }
        FaultKind::Cut => {
            events.truncate(keep);
            events.push(Event {
                delay: ABORT_GRACE,
                payload: Payload::Abort,
            });
            return events;
        }
        FaultKind::Malformed => {
            events.insert(
                1.min(events.len()),
                Event {
                    delay: Duration::ZERO,
                    payload: Payload::Data(malformed),
                },
            );
        }
        FaultKind::Error => {
            if let Some(frame) = error_frame {
                events.truncate(keep);
                events.push(Event {
                    delay: Duration::from_millis(latency.chunk_delay_ms),
                    payload: Payload::Data(frame),
                });
                return events;
            }
        }
    }
    if let Some(t) = trailer {
        events.push(Event {
            delay: Duration::ZERO,
            payload: Payload::Data(t),
        });
    }
    events
}

/// How long the plain form of a stream waits: the sum of the stream's delays.
pub(crate) fn plain_wait(frames: usize, latency: &Latency) -> Duration {
    if frames == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(
        latency
            .ttft_ms
            .saturating_add(latency.chunk_delay_ms.saturating_mul(frames as u64 - 1)),
    )
}

/// True when an `error` fault should be sent inside a started stream rather than as the
/// HTTP status (it names how many events come first).
pub(crate) fn is_mid_stream_error(fault: &Fault, stream: bool) -> bool {
    stream && fault.kind == FaultKind::Error && fault.cut_after_chunks.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match &e.payload {
                Payload::Data(b) => String::from_utf8_lossy(b).into_owned(),
                Payload::Abort => "<abort>".to_string(),
            })
            .collect()
    }

    fn frames() -> Vec<Bytes> {
        ["a", "b", "c"].iter().map(|s| Bytes::from(*s)).collect()
    }

    #[test]
    fn stream_faults() {
        let lat = Latency {
            ttft_ms: 5,
            chunk_delay_ms: 1,
            chunks: None,
        };
        let t = || Some(Bytes::from("T"));
        let m = || Bytes::from("M");
        let e = || Some(Bytes::from("E"));
        let ev = stream_events(frames(), t(), &lat, None, m(), e());
        assert_eq!(data(&ev), ["a", "b", "c", "T"]);
        assert_eq!(ev[0].delay, Duration::from_millis(5));
        assert_eq!(ev[1].delay, Duration::from_millis(1));
        let ev = stream_events(frames(), t(), &lat, Some(&Fault::cut(1)), m(), e());
        assert_eq!(data(&ev), ["a", "<abort>"]);
        let ev = stream_events(frames(), t(), &lat, Some(&Fault::malformed()), m(), e());
        assert_eq!(data(&ev), ["a", "M", "b", "c", "T"]);
        let mut err = Fault::error(429);
        err.cut_after_chunks = Some(2);
        let ev = stream_events(frames(), t(), &lat, Some(&err), m(), e());
        assert_eq!(data(&ev), ["a", "b", "E"]);
        let ev = stream_events(frames(), None, &lat, Some(&Fault::stall(7)), m(), e());
        assert_eq!(ev[1].delay, Duration::from_millis(8));
        assert_eq!(plain_wait(3, &lat), Duration::from_millis(7));
        assert_eq!(plain_wait(0, &lat), Duration::ZERO);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_440_938_160), "2015-08-30T12:36:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for days in [-1000, 0, 59, 60, 11_016, 20_000, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
