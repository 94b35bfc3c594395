//! Bedrock's stream translation with valid frames: records become event-stream
//! messages (CRCs computed), so mutations reach the event handling, not just the CRC check.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::bedrock_events(data));
