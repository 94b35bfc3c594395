//! The PII detector and redactor on arbitrary text (other scripts' digits included).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::pii(data));
