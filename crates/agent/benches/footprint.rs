//! Footprint figures (SPEC §10): start to first reported properties in local mode, resident
//! memory while idle with every collector on, and the size of the release binary.
//!
//! Run: `cargo bench --bench footprint` (prints figures; no pass/fail: machines here are shared).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> PathBuf {
    // The bench runs from target/release/deps; the agent binary is built beside it.
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = release.join("twinguard");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "twinguard", "--quiet"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

/// A `Key:   N kB` field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let bin = binary();
    let dir = std::env::temp_dir().join(format!("twinguard-bench-footprint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Every event on (Diagnostic too), default frequencies.
    let twin = dir.join("twin.json");
    std::fs::write(&twin, r#"{"eventPriorityDiagnostic": {"value": "Low"}}"#).unwrap();
    measure(&bin, &dir, &twin, "release binary (glibc, dynamically linked)");
    // The static binary that ships (scripts/build-release), when it has been built.
    let target_dir = bin.parent().and_then(Path::parent).map(Path::to_path_buf);
    if let Some(musl) = target_dir
        .map(|t| t.join("x86_64-unknown-linux-musl/release/twinguard"))
        .filter(|p| p.exists())
    {
        let _ = std::fs::remove_dir_all(dir.join("data"));
        measure(&musl, &dir, &twin, "static musl binary (scripts/build-release)");
    } else {
        println!("static musl binary: not built (scripts/build-release builds it)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn measure(bin: &Path, dir: &Path, twin: &Path, label: &str) {
    println!("{label}: {}", bin.display());
    let mut starts = Vec::new();
    let mut rss = (0, 0, 0);
    for run in 0..5 {
        let reported = dir.join(format!("reported-{run}.json"));
        let _ = std::fs::remove_file(&reported);
        let t = Instant::now();
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--twin")
            .arg(twin)
            .arg("--outbox")
            .arg(dir.join("outbox.jsonl"))
            .arg("--reported")
            .arg(&reported)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("TWINGUARD_LOG", "error")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !reported.exists() {
            std::thread::sleep(Duration::from_micros(200));
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no reported properties after 10 s"
            );
        }
        starts.push(t.elapsed().as_secs_f64() * 1000.0);
        if run == 0 {
            // Idle: the first snapshots are done and sent; nothing else happens for hours.
            std::thread::sleep(Duration::from_secs(3));
            let pid = child.id();
            rss = (
                status_kib(pid, "VmRSS:"),
                status_kib(pid, "RssAnon:"),
                status_kib(pid, "RssFile:"),
            );
        }
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().unwrap();
    }
    starts.sort_by(f64::total_cmp);
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    println!(
        "  start to first reported properties (local mode): median {:.1} ms, min {:.1} ms over {} starts  [SPEC target <= 50 ms]",
        starts[starts.len() / 2],
        starts[0],
        starts.len()
    );
    println!(
        "  resident memory, idle, all collectors on: {:.2} MiB (anonymous {:.2} MiB; file-backed {:.2} MiB: mapped code, shared and reclaimable)  [SPEC target <= 4 MiB]",
        rss.0 as f64 / 1024.0,
        rss.1 as f64 / 1024.0,
        rss.2 as f64 / 1024.0
    );
    println!(
        "  binary size ({}, stripped): {:.2} MiB  [SPEC target <= 4 MiB static]",
        std::env::consts::ARCH,
        size as f64 / 1048576.0
    );
}
