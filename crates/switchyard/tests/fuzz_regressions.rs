//! Every input the fuzzers (`fuzz/`, `scripts/fuzz`) found crashing, replayed through
//! the same harness (`switchyard::fuzzing`). Files live in
//! `tests/fuzz-regressions/<target>/`, one input each, named after what they found.

use std::path::Path;

/// Replays every input kept for `target`. A target without inputs would pass while
/// checking nothing, so a missing or empty folder fails the test.
fn replay(target: &str, run: impl Fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    replay_dir(&dir, run)
}

fn replay_dir(dir: &Path, run: impl Fn(&[u8])) -> usize {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("no regression inputs at {}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("dir entry").path();
        let input = std::fs::read(&path).expect("read input");
        eprintln!("replaying {}", path.display());
        run(&input);
        n += 1;
    }
    assert!(n > 0, "{} holds no regression inputs", dir.display());
    n
}

#[test]
#[should_panic(expected = "no regression inputs")]
fn a_missing_folder_fails() {
    replay("no-such-target", |_| {});
}

#[test]
#[should_panic(expected = "holds no regression inputs")]
fn an_empty_folder_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    replay_dir(dir.path(), |_| {});
}

#[test]
fn sse_decoder() {
    replay("sse_decoder", switchyard::fuzzing::sse);
}

#[test]
fn bedrock_stream() {
    replay("bedrock_stream", |d| switchyard::fuzzing::stream(3, d));
}

#[test]
fn bedrock_events() {
    replay("bedrock_events", switchyard::fuzzing::bedrock_events);
}

#[test]
fn stream_decoders() {
    replay("stream_decoders", |d| {
        if let Some((&kind, rest)) = d.split_first() {
            switchyard::fuzzing::stream(usize::from(kind), rest);
        }
    });
}

#[test]
fn chat_translators() {
    replay("chat_translators", switchyard::fuzzing::chat);
}

#[test]
fn response_translators() {
    replay("response_translators", |d| {
        if let Some((&kind, rest)) = d.split_first() {
            switchyard::fuzzing::response(usize::from(kind), rest);
        }
    });
}

#[test]
fn pii_redactor() {
    replay("pii_redactor", switchyard::fuzzing::pii);
}

#[test]
fn durations() {
    replay("durations", switchyard::fuzzing::durations);
}

/// The harnesses themselves work on ordinary, well-formed inputs.
#[test]
fn harnesses_accept_ordinary_inputs() {
    switchyard::fuzzing::sse(b"\x03\x01\x02\x05data: {\"a\":1}\n\nevent: x\ndata: y\r\n\r\n");
    for kind in 0..switchyard::providers::KINDS.len() {
        switchyard::fuzzing::stream(
            kind,
            b"\x02\x07\x01data: {\"id\":\"x\"}\n\ndata: [DONE]\n\n",
        );
        switchyard::fuzzing::response(kind, br#"{"id":"x","choices":[]}"#);
    }
    switchyard::fuzzing::chat(
        br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"required","stop":["x"],"max_tokens":5}"#,
    );
    switchyard::fuzzing::bedrock_events(b"\x00{\"role\":\"assistant\"}\x00\x02{\"contentBlockIndex\":0,\"delta\":{\"text\":\"hi\"}}\x00\x04{\"stopReason\":\"end_turn\"}");
    switchyard::fuzzing::chat(
        br#"{"model":"m","max_tokens":5,"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
    );
    switchyard::fuzzing::pii("mail jane@example.com, card 4111 1111 1111 1111".as_bytes());
    switchyard::fuzzing::durations(b"1h2m3.5s");
}

/// The retyping mutator reaches every value of a document and each odd value.
#[test]
fn retyping_reaches_every_value() {
    let doc = br#"{"choices":[{"delta":{"tool_calls":[{"id":"a"}]}}]}"#;
    let variants: std::collections::HashSet<Vec<u8>> = (0..200)
        .filter_map(|s| switchyard::fuzzing::retyped(doc, s))
        .collect();
    // 7 nodes (root included) × 17 odd values, less the few that coincide.
    assert!(variants.len() > 100, "{}", variants.len());
    assert!(variants.iter().any(|v| v.windows(5).any(|w| w == b"1e300")));
    assert!(variants.contains(br#"{"choices":[{"delta":{"tool_calls":[{"id":[]}]}}]}"#.as_slice()));
    assert_eq!(switchyard::fuzzing::retyped(b"not json", 3), None);
}
