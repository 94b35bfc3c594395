use serde_json::{json, Value};

use super::*;

fn detector() -> Arc<PiiDetector> {
    Arc::new(PiiDetector::builtin())
}

fn guard(action: OutputAction) -> OutputGuard {
    OutputGuard::new(detector(), action)
}

/// Texts with PII, and the values that must never be sent.
fn pii_texts() -> Vec<(String, Vec<&'static str>)> {
    vec![
        (
            "Sure! You can reach John at john.doe@example.com or his assistant at \
             jane@example.org, and john.doe@example.com again for the invoice."
                .to_owned(),
            vec!["john.doe@example.com", "jane@example.org"],
        ),
        (
            "Call the London office on +44 20 7946 0958 tomorrow morning, or the \
             San Francisco one at (415) 555-2671 after lunch; both answer in English."
                .to_owned(),
            vec!["+44 20 7946 0958", "(415) 555-2671"],
        ),
        (
            "The card on file is 4111 1111 1111 1111 and the backup card is \
             5500005555555559; neither has expired yet, as far as I can tell."
                .to_owned(),
            vec!["4111 1111 1111 1111", "5500005555555559"],
        ),
        (
            "Transfer the deposit to IBAN DE89 3704 0044 0532 0130 00 by Friday, \
             or to GB82WEST12345698765432 if the German account is closed."
                .to_owned(),
            vec!["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
        ),
        (
            "Her SSN is 123-45-6789, and her social security number is 078051120 \
             according to the old form, which we should shred."
                .to_owned(),
            vec!["123-45-6789", "078051120"],
        ),
        (
            "Grüße aus München! 日本語のテキストです。Schreib an anna.schmidt@example.de — \
             oder ruf +49 30 1234 5678 an. Zahlen ٠١٢٣٤٥٦٧٨٩ und 👍🏽 bleiben, \
             ça va très bien."
                .to_owned(),
            vec!["anna.schmidt@example.de", "+49 30 1234 5678"],
        ),
        (
            "A long one: averyveryverylonglocalpartthatgoesonandon.and.on.and.on@mail.subdomain.example-company.com ends here."
                .to_owned(),
            vec!["averyveryverylonglocalpartthatgoesonandon.and.on.and.on@mail.subdomain.example-company.com"],
        ),
        (
            "tiny a@b.co".to_owned(),
            vec!["a@b.co"],
        ),
    ]
}

fn whole_redacted(text: &str) -> String {
    let d = PiiDetector::builtin();
    let mut r = Redactor::new(&d);
    r.redact(text).unwrap_or_else(|| text.to_owned())
}

fn chunk(choices: Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-test",
            "system_fingerprint": "fp_1",
            "choices": choices,
        }))
        .expect("test data"),
    )
}

fn role_chunk(index: u64) -> Bytes {
    chunk(
        json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
    )
}

fn content_chunk(index: u64, text: &str) -> Bytes {
    chunk(
        json!([{"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]),
    )
}

fn finish_chunk(index: u64, reason: &str) -> Bytes {
    chunk(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]))
}

fn usage_chunk() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-test",
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        }))
        .expect("test data"),
    )
}

/// Feeds `chunks`, then flushes; what would be sent, in order.
fn run(g: &mut OutputGuard, chunks: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for c in chunks {
        match g.chunk(c) {
            GuardedChunk::Unchanged => out.push(c.clone()),
            GuardedChunk::Rewritten(b) => out.push(b),
            GuardedChunk::Withheld => {}
        }
    }
    if let Some(b) = g.flush() {
        out.push(b);
    }
    out
}

fn parse(b: &Bytes) -> Value {
    serde_json::from_slice(b).expect("test data")
}

/// The content fragments sent for choice `index`.
fn content_of(sent: &[Bytes], index: u64) -> Vec<String> {
    let mut out = Vec::new();
    for b in sent {
        let v = parse(b);
        for c in v["choices"].as_array().expect("test data") {
            if c["index"].as_u64() == Some(index) {
                if let Some(s) = c["delta"]["content"].as_str() {
                    out.push(s.to_owned());
                }
            }
        }
    }
    out
}

/// The argument fragments sent for tool call `tool` of choice 0.
fn arguments_of(sent: &[Bytes], tool: u64) -> Vec<String> {
    let mut out = Vec::new();
    for b in sent {
        let v = parse(b);
        for c in v["choices"].as_array().expect("test data") {
            for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                if t["index"].as_u64() == Some(tool) {
                    if let Some(s) = t["function"]["arguments"].as_str() {
                        out.push(s.to_owned());
                    }
                }
            }
        }
    }
    out
}

fn finish_reasons(sent: &[Bytes], index: u64) -> Vec<String> {
    let mut out = Vec::new();
    for b in sent {
        let v = parse(b);
        for c in v["choices"].as_array().expect("test data") {
            if c["index"].as_u64() == Some(index) {
                if let Some(s) = c["finish_reason"].as_str() {
                    out.push(s.to_owned());
                }
            }
        }
    }
    out
}

fn char_boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

fn stream_of(deltas: &[&str]) -> Vec<Bytes> {
    let mut chunks = vec![role_chunk(0)];
    chunks.extend(deltas.iter().map(|d| content_chunk(0, d)));
    chunks.push(finish_chunk(0, "stop"));
    chunks.push(usage_chunk());
    chunks
}

/// Streams `deltas` and checks the answer against redacting the whole text at once.
fn check_content_stream(text: &str, values: &[&str], deltas: &[&str]) {
    let mut g = guard(OutputAction::Redact);
    let sent = run(&mut g, &stream_of(deltas));
    let fragments = content_of(&sent, 0);
    let joined: String = fragments.concat();
    let expected = whole_redacted(text);
    assert_eq!(joined, expected, "split {deltas:?}");
    for v in values {
        assert!(!joined.contains(v), "{v} sent in {joined:?}");
        for f in &fragments {
            assert!(!f.contains(v), "{v} sent in fragment {f:?}");
        }
        for b in &sent {
            let raw = String::from_utf8_lossy(b);
            assert!(!raw.contains(v), "{v} sent in chunk {raw}");
        }
    }
    assert_eq!(finish_reasons(&sent, 0), ["stop"]);
    // The usage chunk is the last thing sent, untouched.
    assert_eq!(sent.last(), Some(&usage_chunk()));
}

#[test]
fn the_test_texts_have_pii_the_detector_finds() {
    for (text, values) in pii_texts() {
        let redacted = whole_redacted(&text);
        for v in values {
            assert!(text.contains(v), "{v} not in {text}");
            assert!(!redacted.contains(v), "{v} not redacted in {redacted}");
        }
    }
}

#[test]
fn content_split_in_two_at_every_char_boundary_matches_whole_redaction() {
    for (text, values) in pii_texts() {
        for k in char_boundaries(&text) {
            let (a, b) = text.split_at(k);
            check_content_stream(&text, &values, &[a, b]);
        }
    }
}

#[test]
fn content_in_one_char_deltas_matches_whole_redaction() {
    for (text, values) in pii_texts() {
        let deltas: Vec<String> = text.chars().map(String::from).collect();
        let deltas: Vec<&str> = deltas.iter().map(String::as_str).collect();
        check_content_stream(&text, &values, &deltas);
    }
}

#[test]
fn content_in_three_pieces_matches_whole_redaction() {
    for (text, values) in pii_texts() {
        let bounds = char_boundaries(&text);
        for (n, &i) in bounds.iter().enumerate().step_by(3) {
            for &j in bounds.iter().skip(n).step_by(7) {
                let deltas = [&text[..i], &text[i..j], &text[j..]];
                check_content_stream(&text, &values, &deltas);
            }
        }
    }
}

#[test]
fn text_without_pii_streams_back_exactly() {
    let text = "Version 1.2.3 shipped on 2024-05-01; order #123456789012 costs $19.99. \
                Größe: 42 — 日本語 ٣٤٥ 👍🏽. Meet at 10:30 in room 4-101, ext. 5555.\n\n\
                A code block:\n```\nfn main() { println!(\"hi\"); }\n```\n";
    let bounds = char_boundaries(text);
    for &k in &bounds {
        let (a, b) = text.split_at(k);
        let mut g = guard(OutputAction::Redact);
        let sent = run(&mut g, &stream_of(&[a, b]));
        assert_eq!(content_of(&sent, 0).concat(), text);
        assert_eq!(g.summary(), None);
        assert!(!g.blocked());
    }
    let deltas: Vec<String> = text.chars().map(String::from).collect();
    let deltas: Vec<&str> = deltas.iter().map(String::as_str).collect();
    let mut g = guard(OutputAction::Redact);
    let sent = run(&mut g, &stream_of(&deltas));
    assert_eq!(content_of(&sent, 0).concat(), text);
    // Text is released as it becomes safe, not all at the end.
    assert!(content_of(&sent, 0).len() > 10);
}

fn tool_stream(fragments: &[&str]) -> Vec<Bytes> {
    let mut chunks = vec![chunk(json!([{
        "index": 0,
        "delta": {"role": "assistant", "content": null, "tool_calls": [{
            "index": 0, "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": ""}
        }]},
        "logprobs": null, "finish_reason": null
    }]))];
    for f in fragments {
        chunks.push(chunk(json!([{
            "index": 0,
            "delta": {"tool_calls": [{"index": 0, "function": {"arguments": f}}]},
            "logprobs": null, "finish_reason": null
        }])));
    }
    chunks.push(finish_chunk(0, "tool_calls"));
    chunks.push(usage_chunk());
    chunks
}

fn check_tool_stream(args: &str, values: &[&str], fragments: &[&str]) {
    let mut g = guard(OutputAction::Redact);
    let sent = run(&mut g, &tool_stream(fragments));
    let sent_args = arguments_of(&sent, 0);
    let joined = sent_args.concat();
    assert_eq!(joined, whole_redacted(args), "split {fragments:?}");
    serde_json::from_str::<Value>(&joined).expect("arguments stay JSON");
    for v in values {
        for b in &sent {
            let raw = String::from_utf8_lossy(b);
            assert!(!raw.contains(v), "{v} sent in chunk {raw}");
        }
    }
    // The call's id and name went out with the first chunk.
    let first = parse(sent.first().expect("test data"));
    assert_eq!(
        first["choices"][0]["delta"]["tool_calls"][0]["id"],
        "call_1"
    );
    assert_eq!(
        first["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    assert_eq!(finish_reasons(&sent, 0), ["tool_calls"]);
}

const ARGS: &str = r#"{"customer": {"email": "john.doe@example.com", "phone": "+44 20 7946 0958"}, "card": "4111 1111 1111 1111", "note": "Grüße, call after 5pm"}"#;
const ARGS_VALUES: &[&str] = &[
    "john.doe@example.com",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
];

#[test]
fn tool_arguments_split_in_two_everywhere_match_whole_redaction() {
    for k in char_boundaries(ARGS) {
        let (a, b) = ARGS.split_at(k);
        check_tool_stream(ARGS, ARGS_VALUES, &[a, b]);
    }
}

#[test]
fn tool_arguments_in_one_char_fragments_match_whole_redaction() {
    let frags: Vec<String> = ARGS.chars().map(String::from).collect();
    let frags: Vec<&str> = frags.iter().map(String::as_str).collect();
    check_tool_stream(ARGS, ARGS_VALUES, &frags);
}

#[test]
fn a_bare_number_in_arguments_becomes_a_quoted_placeholder() {
    let args = r#"{"card": 4111111111111111, "n": 3}"#;
    for k in char_boundaries(args) {
        let (a, b) = args.split_at(k);
        let mut g = guard(OutputAction::Redact);
        let sent = run(&mut g, &tool_stream(&[a, b]));
        let joined = arguments_of(&sent, 0).concat();
        let v: Value = serde_json::from_str(&joined).expect("still JSON");
        assert_eq!(v, json!({"card": "[CARD_1]", "n": 3}));
    }
}

#[test]
fn an_escape_before_a_value_does_not_hide_it() {
    let args = r#"{"note": "card:\n4111 1111 1111 1111\tphone:\"+44 20 7946 0958\""}"#;
    let mut g = guard(OutputAction::Redact);
    let frags: Vec<String> = args.chars().map(String::from).collect();
    let frags: Vec<&str> = frags.iter().map(String::as_str).collect();
    let sent = run(&mut g, &tool_stream(&frags));
    let joined = arguments_of(&sent, 0).concat();
    let v: Value = serde_json::from_str(&joined).expect("still JSON");
    assert_eq!(
        v["note"], "card:\n[CARD_1]\tphone:\"[PHONE_1]\"",
        "from {joined}"
    );
    assert_eq!(g.summary().as_deref(), Some("CARD=1,PHONE=1"));
}

#[test]
fn a_long_answer_holds_back_a_bounded_tail() {
    let mut g = guard(OutputAction::Redact);
    let text = format!("{} {}", "word ".repeat(500), "x".repeat(3000));
    let mut sent = String::new();
    g.chunk(&role_chunk(0));
    for c in text.chars() {
        if let GuardedChunk::Rewritten(b) = g.chunk(&content_chunk(0, &c.to_string())) {
            sent.push_str(
                parse(&b)["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("test data"),
            );
        }
        let held = g.choices.get(&0).map_or(0, |s| s.content.held.len());
        assert!(held <= MAX_RUN + HOLD + 1, "{held} bytes held");
    }
    let b = g.flush().expect("test data");
    let v = parse(&b);
    sent.push_str(
        v["choices"][0]["delta"]["content"]
            .as_str()
            .expect("test data"),
    );
    assert_eq!(sent, text);
    // The flushed chunk looks like the others.
    assert_eq!(v["id"], "chatcmpl-1");
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["created"], 1_700_000_000);
    assert_eq!(v["object"], "chat.completion.chunk");
    assert!(v["choices"][0]["finish_reason"].is_null());
    assert_eq!(g.flush(), None);
}

#[test]
fn flush_releases_redacted_text_when_no_finish_chunk_came() {
    let mut g = guard(OutputAction::Redact);
    let text = "write to john.doe@example.com";
    assert_eq!(g.chunk(&role_chunk(0)), GuardedChunk::Unchanged);
    assert_eq!(g.chunk(&content_chunk(0, text)), GuardedChunk::Withheld);
    let v = parse(&g.flush().expect("test data"));
    assert_eq!(v["choices"][0]["delta"]["content"], "write to [EMAIL_1]");
    assert_eq!(g.summary().as_deref(), Some("EMAIL=1"));
}

#[test]
fn block_mode_stream_ends_with_content_filter_and_never_sends_the_value() {
    for (text, values) in pii_texts() {
        for k in char_boundaries(&text).into_iter().step_by(5) {
            let (a, b) = text.split_at(k);
            let mut g = guard(OutputAction::Block);
            let sent = run(&mut g, &stream_of(&[a, b]));
            assert!(g.blocked());
            assert!(g.summary().is_some());
            for v in &values {
                for b in &sent {
                    let raw = String::from_utf8_lossy(b);
                    assert!(!raw.contains(v), "{v} sent in chunk {raw}");
                }
            }
            assert_eq!(finish_reasons(&sent, 0), ["content_filter"]);
            // Whatever was released is a clean prefix of the answer.
            let released = content_of(&sent, 0).concat();
            assert!(text.starts_with(&released));
            assert_eq!(sent.last(), Some(&usage_chunk()));
        }
    }
}

#[test]
fn block_mode_stream_without_finish_chunk_finishes_on_flush() {
    let mut g = guard(OutputAction::Block);
    g.chunk(&role_chunk(0));
    g.chunk(&content_chunk(0, "mail john.doe@example.com now"));
    let v = parse(&g.flush().expect("test data"));
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert!(!v.to_string().contains("john.doe"));
}

#[test]
fn block_mode_tool_arguments_are_dropped() {
    let mut g = guard(OutputAction::Block);
    let frags: Vec<String> = ARGS.chars().map(String::from).collect();
    let frags: Vec<&str> = frags.iter().map(String::as_str).collect();
    let sent = run(&mut g, &tool_stream(&frags));
    for v in ARGS_VALUES {
        for b in &sent {
            assert!(!String::from_utf8_lossy(b).contains(v));
        }
    }
    assert_eq!(finish_reasons(&sent, 0), ["content_filter"]);
    assert!(g.blocked());
}

fn completion_body() -> Vec<u8> {
    // Keys deliberately out of alphabetical order, with an unknown field.
    br#"{"id":"chatcmpl-9","object":"chat.completion","created":1700000000,"model":"gpt-test","zeta_unknown":{"b":1,"a":2},"choices":[{"index":0,"message":{"role":"assistant","content":"Mail john.doe@example.com or call +44 20 7946 0958.","refusal":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"email\":\"john.doe@example.com\"}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#.to_vec()
}

#[test]
fn whole_completion_is_redacted_with_fields_and_order_kept() {
    let mut g = guard(OutputAction::Redact);
    let out = g.completion(&completion_body()).expect("changed");
    let text = std::str::from_utf8(&out).expect("test data");
    assert!(!text.contains("john.doe@example.com"));
    assert!(!text.contains("7946"));
    assert!(text.starts_with(
        r#"{"id":"chatcmpl-9","object":"chat.completion","created":1700000000,"model":"gpt-test","zeta_unknown":{"b":1,"a":2},"choices""#
    ));
    let v = parse(&out);
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"], "Mail [EMAIL_1] or call [PHONE_1].");
    // One numbering for the whole answer: the same email is the same placeholder.
    assert_eq!(
        m["tool_calls"][0]["function"]["arguments"],
        r#"{"email":"[EMAIL_1]"}"#
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"]["total_tokens"], 12);
    assert_eq!(g.summary().as_deref(), Some("EMAIL=2,PHONE=1"));
    assert!(!g.blocked());
}

#[test]
fn whole_completion_without_pii_is_not_rewritten() {
    let mut g = guard(OutputAction::Redact);
    let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Version 1.2.3, order #12345."},"finish_reason":"stop"}]}"#;
    assert_eq!(g.completion(body), None);
    let mut g = guard(OutputAction::Block);
    assert_eq!(g.completion(body), None);
    assert!(!g.blocked());
}

#[test]
fn whole_completion_in_block_mode_is_filtered() {
    let mut g = guard(OutputAction::Block);
    let out = g.completion(&completion_body()).expect("changed");
    let text = std::str::from_utf8(&out).expect("test data");
    assert!(!text.contains("john.doe"));
    assert!(!text.contains("7946"));
    let v = parse(&out);
    let m = &v["choices"][0]["message"];
    assert!(m["content"].is_null());
    assert!(m.get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert!(g.blocked());
    assert!(g.summary().expect("test data").contains("EMAIL="));
}

#[test]
fn two_interleaved_choices_are_guarded_separately() {
    let a =
        "Choice zero says: write to john.doe@example.com or jane@example.org when you can, thanks.";
    let b = "Choice one says: call +44 20 7946 0958 or (415) 555-2671 during office hours, thanks.";
    for step in [1, 2, 3, 7, 40] {
        let ca: Vec<String> = a
            .chars()
            .collect::<Vec<_>>()
            .chunks(step)
            .map(|c| c.iter().collect())
            .collect();
        let cb: Vec<String> = b
            .chars()
            .collect::<Vec<_>>()
            .chunks(step)
            .map(|c| c.iter().collect())
            .collect();
        let mut chunks = vec![role_chunk(0), role_chunk(1)];
        for i in 0..ca.len().max(cb.len()) {
            if let Some(x) = ca.get(i) {
                chunks.push(content_chunk(0, x));
            }
            if let Some(x) = cb.get(i) {
                chunks.push(content_chunk(1, x));
            }
        }
        chunks.push(finish_chunk(1, "length"));
        chunks.push(finish_chunk(0, "stop"));
        chunks.push(usage_chunk());
        let mut g = guard(OutputAction::Redact);
        let sent = run(&mut g, &chunks);
        // Each choice has its own kinds, so its numbering is that of its own text.
        assert_eq!(content_of(&sent, 0).concat(), whole_redacted(a));
        assert_eq!(content_of(&sent, 1).concat(), whole_redacted(b));
        assert_eq!(finish_reasons(&sent, 0), ["stop"]);
        assert_eq!(finish_reasons(&sent, 1), ["length"]);
        // Counted in the order released, which depends on the interleaving.
        let summary = g.summary().expect("test data");
        let mut kinds: Vec<&str> = summary.split(',').collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["EMAIL=2", "PHONE=2"]);
    }
}

#[test]
fn block_mode_blocks_only_the_choice_with_pii() {
    let mut g = guard(OutputAction::Block);
    let clean = "Nothing to see in this choice, it is all plain and harmless text, really.";
    let chunks = vec![
        role_chunk(0),
        role_chunk(1),
        content_chunk(0, "Reach me at john.doe@example.com"),
        content_chunk(1, clean),
        content_chunk(0, " whenever you like."),
        finish_chunk(0, "stop"),
        finish_chunk(1, "stop"),
    ];
    let sent = run(&mut g, &chunks);
    assert_eq!(finish_reasons(&sent, 0), ["content_filter"]);
    assert_eq!(finish_reasons(&sent, 1), ["stop"]);
    assert_eq!(content_of(&sent, 1).concat(), clean);
    assert_eq!(content_of(&sent, 0).concat(), "");
}

#[test]
fn usage_chunk_and_unknown_fields_are_left_alone() {
    let mut g = guard(OutputAction::Redact);
    assert_eq!(g.chunk(&usage_chunk()), GuardedChunk::Unchanged);
    assert_eq!(g.chunk(&role_chunk(0)), GuardedChunk::Unchanged);
    // A chunk that must change keeps everything else, in order.
    let text = "x".repeat(100);
    let raw = Bytes::from(format!(
        r#"{{"id":"c","object":"chat.completion.chunk","obfuscation":"zz","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{text}","x_extra":{{"b":1,"a":[1,2.5]}}}},"logprobs":null,"finish_reason":null,"z_last":true}}]}}"#
    ));
    let GuardedChunk::Rewritten(out) = g.chunk(&raw) else {
        panic!("expected a rewrite");
    };
    let out = std::str::from_utf8(&out).expect("test data");
    assert_eq!(
        out,
        r#"{"id":"c","object":"chat.completion.chunk","obfuscation":"zz","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"","x_extra":{"b":1,"a":[1,2.5]}},"logprobs":null,"finish_reason":null,"z_last":true}]}"#
    );
}

#[test]
fn hostile_input_passes_unchanged() {
    let mut g = guard(OutputAction::Redact);
    let inputs: &[&[u8]] = &[
        b"",
        b"not json",
        b"[1,2,3]",
        b"{\"choices\": 5}",
        b"{\"choices\": [5, \"x\", null]}",
        b"{\"choices\": [{\"delta\": {\"content\": 5}}]}",
        b"{\"choices\": [{\"delta\": \"john.doe@example.com\"}]}",
        b"{\"choices\": [{\"index\": -1, \"delta\": {\"tool_calls\": 7}}]}",
        b"{\"choices\": [{\"index\": 0, \"delta\": {\"tool_calls\": [1, {\"function\": 3}]}}]}",
        b"\xff\xfe{}",
        b"{\"choices\": [{\"delta\": {\"content\": \"unterminated",
    ];
    for i in inputs {
        let b = Bytes::copy_from_slice(i);
        assert_eq!(g.chunk(&b), GuardedChunk::Unchanged, "{:?}", i);
        assert_eq!(g.completion(i), None, "{:?}", i);
    }
    assert_eq!(g.flush(), None);
}

#[test]
fn duplicate_keys_guard_the_value_clients_read() {
    let mut g = guard(OutputAction::Redact);
    let body = br#"{"choices":[{"index":0,"message":{"content":"fine","content":"mail john.doe@example.com"},"finish_reason":"stop"}]}"#;
    let out = g.completion(body).expect("changed");
    assert!(!String::from_utf8_lossy(&out).contains("john.doe"));
}

#[test]
fn multibyte_text_is_never_cut_inside_a_char() {
    // Every split of a text of 2-, 3- and 4-byte chars; from_utf8 in `parse` would
    // fail on a broken char, and the concatenation must be the text.
    let text = "ééééé日本語日本語👍🏽👍🏽٠١٢٣٤٥٦٧٨٩ ".repeat(6);
    for k in char_boundaries(&text).into_iter().step_by(3) {
        let (a, b) = text.split_at(k);
        let mut g = guard(OutputAction::Redact);
        let sent = run(&mut g, &stream_of(&[a, b]));
        assert_eq!(content_of(&sent, 0).concat(), text);
    }
}

#[test]
fn refusal_and_legacy_function_call_arguments_are_guarded() {
    let refusal = "I cannot share the address jane@example.org with you, sorry about that.";
    let args = r#"{"to": "john.doe@example.com", "body": "hello there, general kenobi"}"#;
    for k in char_boundaries(refusal) {
        let (a, b) = refusal.split_at(k);
        let mut g = guard(OutputAction::Redact);
        let mut chunks = vec![role_chunk(0)];
        for part in [a, b] {
            chunks.push(chunk(
                json!([{"index": 0, "delta": {"refusal": part}, "finish_reason": null}]),
            ));
        }
        chunks.push(finish_chunk(0, "stop"));
        let sent = run(&mut g, &chunks);
        let mut joined = String::new();
        for b in &sent {
            let v = parse(b);
            if let Some(s) = v["choices"][0]["delta"]["refusal"].as_str() {
                joined.push_str(s);
            }
        }
        assert_eq!(joined, whole_redacted(refusal));
    }
    for k in char_boundaries(args) {
        let (a, b) = args.split_at(k);
        let mut g = guard(OutputAction::Redact);
        let mut chunks = vec![chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "function_call": {"name": "send", "arguments": ""}}, "finish_reason": null}]),
        )];
        for part in [a, b] {
            chunks.push(chunk(json!([{"index": 0, "delta": {"function_call": {"arguments": part}}, "finish_reason": null}])));
        }
        chunks.push(finish_chunk(0, "function_call"));
        let sent = run(&mut g, &chunks);
        let mut joined = String::new();
        for b in &sent {
            let v = parse(b);
            if let Some(s) = v["choices"][0]["delta"]["function_call"]["arguments"].as_str() {
                joined.push_str(s);
            }
            assert!(!v.to_string().contains("john.doe"));
        }
        assert_eq!(joined, whole_redacted(args));
    }
}

#[test]
fn two_tool_calls_each_get_their_own_arguments_back() {
    let first = r#"{"email": "john.doe@example.com", "subject": "the quarterly report"}"#;
    let second = r#"{"phone": "+44 20 7946 0958", "message": "running late, start without me"}"#;
    let mut chunks = vec![role_chunk(0)];
    for (i, args) in [(0u64, first), (1, second)] {
        chunks.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [{
            "index": i, "id": format!("call_{i}"), "type": "function",
            "function": {"name": "act", "arguments": ""}
        }]}, "finish_reason": null}])));
        for c in args.chars() {
            chunks.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [{
                "index": i, "function": {"arguments": c.to_string()}
            }]}, "finish_reason": null}])));
        }
    }
    chunks.push(finish_chunk(0, "tool_calls"));
    let mut g = guard(OutputAction::Redact);
    let sent = run(&mut g, &chunks);
    assert_eq!(arguments_of(&sent, 0).concat(), whole_redacted(first));
    assert_eq!(arguments_of(&sent, 1).concat(), whole_redacted(second));
    // Both held tails go out in the finish chunk, which keeps its finish_reason.
    let last = parse(sent.last().expect("sent"));
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        last["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

#[test]
fn deeply_nested_input_does_not_overflow() {
    let mut g = guard(OutputAction::Redact);
    let deep = format!(
        r#"{{"choices":[{{"index":0,"delta":{{"x":{}1{}}}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let b = Bytes::from(deep.clone());
    assert_eq!(g.chunk(&b), GuardedChunk::Unchanged);
    assert_eq!(g.completion(deep.as_bytes()), None);
}

#[test]
fn the_guard_can_live_in_an_async_stream() {
    fn send_static<T: Send + 'static>(_: &T) {}
    send_static(&guard(OutputAction::Redact));
}
