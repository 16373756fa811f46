//! Fuzz target: arbitrary bytes as a twin document (and as a duration) must never panic.
//! Its corpus is replayed on the stable toolchain by the integration test `fuzz_corpus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    twinguard_core::config::check_untrusted_bytes(data);
});
