//! Every adapter's response and error translation; the first byte picks the kind.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&kind, rest)) = data.split_first() {
        switchyard::fuzzing::response(usize::from(kind), rest);
    }
});
