//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), encoded by
//! hand: big-endian prelude (total length, headers length, prelude CRC-32), string
//! headers, the JSON payload, and the CRC-32 of everything before it.

use axum::body::Bytes;
use serde_json::Value;

/// Header value type 7: a UTF-8 string with a 16-bit length.
const HEADER_STRING: u8 = 7;

/// One message with string headers and a payload.
pub(crate) fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        // Names are at most 255 bytes and values 32 KiB: ours are short constants.
        encoded_headers.push(name.len().min(255) as u8);
        encoded_headers.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        encoded_headers.push(HEADER_STRING);
        let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        encoded_headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded_headers.extend_from_slice(value);
    }
    let total = 12 + encoded_headers.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(encoded_headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded_headers);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(out)
}

/// An event message: `:event-type`, JSON content, `:message-type` event.
pub(crate) fn event(event_type: &str, payload: &Value) -> Bytes {
    event_raw(event_type, payload.to_string().as_bytes())
}

/// An event message with a raw payload (used to send a payload that is not JSON).
pub(crate) fn event_raw(event_type: &str, payload: &[u8]) -> Bytes {
    frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// An exception message: `:exception-type` is the stream member name
/// (`throttlingException`, `modelStreamErrorException`, …).
pub(crate) fn exception(exception_type: &str, payload: &Value) -> Bytes {
    frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// A decoded message: its string headers, its payload and its total length.
#[cfg(test)]
pub(crate) type Decoded = (Vec<(String, String)>, Vec<u8>, usize);

/// Decodes one message, checking both CRCs (for tests).
#[cfg(test)]
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let be32 = |at: usize| -> Result<u32, String> {
        let b = bytes.get(at..at + 4).ok_or("short")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let total = be32(0)? as usize;
    let headers_len = be32(4)? as usize;
    if be32(8)? != crc32fast::hash(&bytes[..8]) {
        return Err("prelude crc".into());
    }
    if bytes.len() < total || be32(total - 4)? != crc32fast::hash(&bytes[..total - 4]) {
        return Err("message crc".into());
    }
    let mut headers = Vec::new();
    let mut at = 12;
    while at < 12 + headers_len {
        let n = bytes[at] as usize;
        let name = String::from_utf8_lossy(&bytes[at + 1..at + 1 + n]).into_owned();
        at += 1 + n;
        if bytes[at] != HEADER_STRING {
            return Err("header type".into());
        }
        let len = u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]) as usize;
        let value = String::from_utf8_lossy(&bytes[at + 3..at + 3 + len]).into_owned();
        at += 3 + len;
        headers.push((name, value));
    }
    Ok((headers, bytes[12 + headers_len..total - 4].to_vec(), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_layout() {
        let f = event("messageStart", &json!({"role": "assistant"}));
        let (headers, payload, total) = decode(&f).expect("decodes");
        assert_eq!(total, f.len());
        assert_eq!(headers[0], (":event-type".into(), "messageStart".into()));
        assert_eq!(headers[2], (":message-type".into(), "event".into()));
        assert_eq!(payload, br#"{"role":"assistant"}"#);
        // Prelude: total length, then headers length, both big-endian.
        assert_eq!(
            u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
            f.len()
        );
    }

    #[test]
    fn empty_message_is_sixteen_bytes() {
        // The smallest valid message: no headers, no payload. Its prelude CRC is the
        // CRC-32 of 00 00 00 10 00 00 00 00 (known value 0x05c248eb).
        let f = frame(&[], b"");
        assert_eq!(f.len(), 16);
        assert_eq!(&f[8..12], &[0x05, 0xc2, 0x48, 0xeb]);
    }

    #[test]
    fn corrupted_frames_fail_to_decode() {
        let mut f = exception("throttlingException", &json!({"message": "slow down"})).to_vec();
        assert!(decode(&f).is_ok());
        let last = f.len() - 6;
        f[last] ^= 1;
        assert!(decode(&f).is_err());
    }
}
