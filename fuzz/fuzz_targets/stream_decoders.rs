//! Every adapter's stream decoder; the first byte picks the provider kind.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&kind, rest)) = data.split_first() {
        switchyard::fuzzing::stream(usize::from(kind), rest);
    }
});
