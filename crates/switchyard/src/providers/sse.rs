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
    event: Option<String>,
    data: Option<BytesMut>,
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
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.buf.len() > MAX_EVENT_BYTES {
                    return Err(EventTooLarge);
                }
                return Ok(None);
            };
            // A lone `\r` at the end of the buffer may be the first half of `\r\n`.
            if nl + 1 == self.buf.len() && self.buf.ends_with(b"\r") {
                return Ok(None);
            }
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
            let mut parts = line.splitn(2, |&b| b == b':');
            let field = parts.next().unwrap_or_default();
            let value = parts
                .next()
                .map_or(b"".as_slice(), |v| v.strip_prefix(b" ").unwrap_or(v));
            match field {
                b"data" => {
                    let data = self.data.get_or_insert_with(BytesMut::new);
                    if !data.is_empty() {
                        data.extend_from_slice(b"\n");
                    }
                    data.extend_from_slice(value);
                    if data.len() > MAX_EVENT_BYTES {
                        return Err(EventTooLarge);
                    }
                }
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
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
    fn oversized_event_is_an_error() {
        let mut d = SseDecoder::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        d.push(&big);
        assert_eq!(d.next_event(), Err(EventTooLarge));
    }
}
