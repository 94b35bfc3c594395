//! `providers::sse::SseDecoder`, whole and split at arbitrary points.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::sse(data));
