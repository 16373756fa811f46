//! Fuzz target: arbitrary bytes as the first bytes of an MQTT connection must never panic the
//! hub's CONNECT path (packet cut, identity and SAS token checks, log redaction).
//! Its corpus is replayed on the stable toolchain by the hub's integration test `fuzz_corpus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    twinguard_hub::connect::check_untrusted_bytes(data);
});
