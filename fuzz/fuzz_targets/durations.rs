//! Provider duration headers and the adapters' error readers that take them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::durations(data));
