//! The Bedrock adapter's event-stream decoder (binary frames → OpenAI chunks).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::stream(3, data));
