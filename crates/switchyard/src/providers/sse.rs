//! An incremental decoder for `text/event-stream`, fed with whatever byte chunks the
//! network delivers. Events may be split across chunks at any byte.

use bytes::{Buf, Bytes, BytesMut};

/// One server-sent event. Only the fields the gateway reads are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, when the stream uses names (Anthropic does, OpenAI does not).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: Bytes,
}

/// Upper bound for one event; a peer that never ends an event must not exhaust memory.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: BytesMut,
    /// Leading bytes of `buf` already scanned and known to hold no line end, so that a
    /// long line arriving in many chunks is scanned once, not once per chunk.
    scanned: usize,
    event: Option<String>,
    data: Option<Data>,
}

/// An event's data so far: one line (nearly every event) is kept as a slice of the
/// received bytes, without a copy; a second line joins them in a buffer.
#[derive(Debug)]
enum Data {
    One(Bytes),
    Many(BytesMut),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::One(b) => b.len(),
            Data::Many(b) => b.len(),
        }
    }

    fn push_line(self, line: Bytes) -> Data {
        let mut joined = match self {
            Data::One(first) => {
                let mut b = BytesMut::with_capacity(first.len() + 1 + line.len());
                b.extend_from_slice(&first);
                b
            }
            Data::Many(b) => b,
        };
        joined.extend_from_slice(b"\n");
        joined.extend_from_slice(&line);
        Data::Many(joined)
    }

    fn freeze(self) -> Bytes {
        match self {
            Data::One(b) => b,
            Data::Many(b) => b.freeze(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event is larger than {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if the bytes pushed so far hold one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, EventTooLarge> {
        loop {
            let unscanned = self.buf.get(self.scanned..).unwrap_or_default();
            let Some(found) = memchr::memchr2(b'\n', b'\r', unscanned) else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_EVENT_BYTES {
                    return Err(EventTooLarge);
                }
                return Ok(None);
            };
            let nl = self.scanned + found;
            // A lone `\r` at the end of the buffer may be the first half of `\r\n`.
            if nl + 1 == self.buf.len() && self.buf.ends_with(b"\r") {
                self.scanned = nl;
                return Ok(None);
            }
            self.scanned = 0;
            let line = self.buf.split_to(nl).freeze();
            let terminator = if self.buf.starts_with(b"\r\n") { 2 } else { 1 };
            self.buf.advance(terminator);

            if line.is_empty() {
                // A blank line dispatches the event, if it has data.
                let event = self.event.take();
                if let Some(data) = self.data.take() {
                    return Ok(Some(SseEvent {
                        event,
                        data: data.freeze(),
                    }));
                }
                continue;
            }
            if line.starts_with(b":") {
                continue; // a comment, e.g. a keep-alive
            }
            // `field:value`, the value's one leading space dropped; a line without a
            // colon is a field with an empty value.
            let (field, value) = match memchr::memchr(b':', &line) {
                Some(colon) => {
                    let start = colon + 1;
                    let start = if line.get(start) == Some(&b' ') {
                        start + 1
                    } else {
                        start
                    };
                    (line.slice(..colon), line.slice(start..))
                }
                None => (line, Bytes::new()),
            };
            match &field[..] {
                b"data" => {
                    let data = match self.data.take() {
                        None => Data::One(value),
                        Some(d) => d.push_line(value),
                    };
                    let too_large = data.len() > MAX_EVENT_BYTES;
                    self.data = Some(data);
                    if too_large {
                        return Err(EventTooLarge);
                    }
                }
                b"event" => self.event = Some(String::from_utf8_lossy(&value).into_owned()),
                _ => {} // id, retry and unknown fields do not matter to a relay
            }
        }
    }

    /// Whether bytes of an unfinished event remain (a stream that ends here was cut).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.data.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(e) = d.next_event().expect("within limits") {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn decodes_openai_style_events() {
        let events = decode_all(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(&events[0].data[..], b"{\"a\":1}");
        assert_eq!(&events[1].data[..], b"[DONE]");
        assert_eq!(events[0].event, None);
    }

    #[test]
    fn any_split_point_gives_the_same_events() {
        let stream: &[u8] =
            b"event: message_start\r\ndata: {\"x\":\r\ndata: 2}\r\n\r\n: ping\n\ndata:tight\n\n";
        let whole = decode_all(&[stream]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].event.as_deref(), Some("message_start"));
        assert_eq!(&whole[0].data[..], b"{\"x\":\n2}");
        assert_eq!(&whole[1].data[..], b"tight");
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(decode_all(&[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytes), whole);
    }

    #[test]
    fn unfinished_event_is_reported_as_partial() {
        let mut d = SseDecoder::new();
        d.push(b"data: {\"half\":");
        assert_eq!(d.next_event().expect("ok"), None);
        assert!(d.has_partial());
    }

    #[test]
    fn a_long_line_in_many_chunks_and_many_data_lines_decode_whole() {
        // 200 KB of data in 1 KB chunks: scanned once, whole at the end.
        let payload = vec![b'y'; 200 * 1024];
        let mut stream = b"data: ".to_vec();
        stream.extend_from_slice(&payload);
        stream.extend_from_slice(b"\r\ndata:second\ndata\n\n");
        let chunks: Vec<&[u8]> = stream.chunks(1024).collect();
        let events = decode_all(&chunks);
        assert_eq!(events.len(), 1);
        let mut want = payload.clone();
        want.extend_from_slice(b"\nsecond\n");
        assert_eq!(&events[0].data[..], &want[..]);
        // `data: x` and `data:x` agree; only one space is dropped.
        let events = decode_all(&[b"data:  two spaces\n\ndata:x\n\n"]);
        assert_eq!(&events[0].data[..], b" two spaces");
        assert_eq!(&events[1].data[..], b"x");
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut d = SseDecoder::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        d.push(&big);
        assert_eq!(d.next_event(), Err(EventTooLarge));
    }
}
