//! Replays the checked-in fuzz corpora of the hub (crates/hub/fuzz/corpus/{connect,
//! http_request,service_request}) on the stable toolchain, so every input the fuzzer found interesting, and
//! every hand-made seed, stays covered by `cargo test`.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 10,
        "corpus at {} has only {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs
}

#[test]
fn connect_corpus_replays_without_panic() {
    for (_, bytes) in corpus("connect") {
        twinguard_hub::connect::check_untrusted_bytes(&bytes);
    }
    // The seeds reach the deep end: a valid CONNECT passes every check with the fuzz key.
    let (_, valid) = corpus("connect")
        .into_iter()
        .find(|(name, _)| name == "valid_module")
        .expect("seed valid_module");
    let (connect, _) = twinguard_hub::connect::first_connect(&valid)
        .expect("parses")
        .expect("whole");
    let (id, token) = twinguard_hub::connect::claimed_identity(&connect, "localhost").expect("claims");
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    assert_eq!(
        twinguard_hub::connect::authenticate(&id, &token, "localhost", Some(key), 1_790_000_000),
        Ok(())
    );
}

#[test]
fn http_request_corpus_replays_without_panic() {
    for (_, bytes) in corpus("http_request") {
        twinguard_hub::api::check_untrusted_request(&bytes);
    }
}

#[test]
fn service_request_corpus_replays_without_panic() {
    for (_, bytes) in corpus("service_request") {
        twinguard_hub::service::routes::check_untrusted_request(&bytes);
    }
}
