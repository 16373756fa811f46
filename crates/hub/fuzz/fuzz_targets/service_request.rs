//! Fuzz target: arbitrary bytes as an HTTP request to the service REST API must never panic
//! its routing, its SAS check, or the rules a body meets (twin writes, queries,
//! configurations). Its corpus is replayed on the stable toolchain by the hub's integration
//! test `fuzz_corpus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    twinguard_hub::service::routes::check_untrusted_request(data);
});
