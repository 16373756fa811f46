//! Fuzz target: arbitrary bytes as an HTTP request to the operator API must never panic the
//! hub's request parser or its access checks (Host, bearer token, content type, path).
//! Its corpus is replayed on the stable toolchain by the hub's integration test `fuzz_corpus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    twinguard_hub::api::check_untrusted_request(data);
});
