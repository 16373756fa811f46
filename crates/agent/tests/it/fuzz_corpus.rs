//! Replays the checked-in fuzz corpus (crates/agent/fuzz/corpus/) on the stable toolchain, so
//! every input the fuzzer ever found interesting stays covered by `cargo test`.

use std::path::PathBuf;

#[test]
fn twin_corpus_replays_without_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/twin");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        twinguard_core::config::check_untrusted_bytes(&bytes);
        replayed += 1;
    }
    assert!(
        replayed >= 5,
        "corpus at {} has only {replayed} inputs",
        dir.display()
    );
}
