//! Shared helpers of the integration tests: where `../shared` is, skipping honestly.

use std::path::PathBuf;

/// `../shared` beside the checkout, when it exists.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    dir.is_dir().then_some(dir)
}

/// Whether the tests run under CI, where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says why a test is skipped; under CI a skip is a failure.
pub fn skip(test: &str, why: &str) {
    assert!(!under_ci(), "{test}: cannot be skipped under CI: {why}");
    record_skip(test, why);
}

/// Prints a skip and records it in `target/test-skips.log`, which `scripts/test` summarises
/// after the run, so a skipped check shows in the summary a person reads (cargo hides the
/// output of passing tests).
pub fn record_skip(test: &str, why: &str) {
    use std::io::Write;
    eprintln!("SKIPPED {test}: {why}");
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../test-skips.log");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        // One write per line: concurrent tests append whole lines.
        let _ = file.write_all(format!("twinguard\t{test}\t{why}\n").as_bytes());
    }
}

/// `twinguard run` in local mode over the files of `dir` (twin.json, outbox.jsonl,
/// reported.json, data/), logging warnings to a piped stderr. Add flags, then spawn.
pub fn local_agent_command(dir: &TempDir) -> std::process::Command {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("twinguard"));
    command
        .arg("run")
        .arg("--twin")
        .arg(dir.path("twin.json"))
        .arg("--outbox")
        .arg(dir.path("outbox.jsonl"))
        .arg("--reported")
        .arg(dir.path("reported.json"))
        .arg("--data-dir")
        .arg(dir.path("data"))
        .env("TWINGUARD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// A fresh empty directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<tmp>/twinguard-it-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("twinguard-it-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
