//! Arbitrary JSON → `ChatRequest` (and Anthropic Messages or a Responses request →
//! `ChatRequest`) → every adapter's `chat_body`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::chat(data));
