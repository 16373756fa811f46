//! Issue 12, "drops and floods", end to end with the real binary: drop counts that survive a
//! full disk and a stop, statistics that add up to the cumulative counters, a twin flooded with
//! unknown properties within a memory bound, and a burst of twin versions ending on the newest.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{skip, TempDir};

/// `twinguard run` in local mode with the twin and data directory given, outbox and reported
/// file in `dir`, warnings on a piped stderr.
fn agent_command(dir: &TempDir, twin: &Path, data: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("twinguard"));
    command
        .arg("run")
        .arg("--twin")
        .arg(twin)
        .arg("--outbox")
        .arg(dir.path("outbox.jsonl"))
        .arg("--reported")
        .arg(dir.path("reported.json"))
        .arg("--data-dir")
        .arg(data)
        .env("TWINGUARD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A small file system mounted for one test (root only), unmounted when dropped.
struct Mount {
    dir: std::path::PathBuf,
    image: Option<std::path::PathBuf>,
}

impl Mount {
    /// A tmpfs of `size` (e.g. "2m") at `dir`: a real disk that fills up.
    #[allow(dead_code)]
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount {
            dir: dir.to_owned(),
            image: None,
        })
    }

    /// An 8 MiB ext4 with 128-byte inodes at `dir`, loop-mounted: its timestamps have a
    /// granularity of one second, as on older and small-device file systems.
    fn ext4_coarse_times(dir: &Path) -> Option<Mount> {
        let image = dir.with_extension("img");
        std::fs::write(&image, b"").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-I", "128"])
            .arg(&image)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let mounted = made
            && std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
        mounted.then(|| Mount {
            dir: dir.to_owned(),
            image: Some(image),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// SIGTERM, then the exit code and stderr.
fn stop(mut child: Child) -> (Option<i32>, String) {
    use std::io::Read;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

/// Issue 12: ten twin versions written 50 ms apart (faster than the 200 ms debounce) must end
/// with the newest applied. On a file system with 1 s timestamps, versions of the same size
/// rewritten in place have identical metadata; the watcher compares content while a version is
/// that recent.
#[test]
fn a_burst_of_twin_versions_ends_on_the_newest() {
    let test = "a_burst_of_twin_versions_ends_on_the_newest";
    if !is_root() {
        return skip(test, "needs root to loop-mount an ext4 with 1 s timestamps");
    }
    let dir = TempDir::new("twin-burst");
    let Some(mount) = Mount::ext4_coarse_times(&dir.path("fs")) else {
        return skip(
            test,
            "cannot make or loop-mount an ext4 image (mkfs.ext4, loop devices)",
        );
    };
    let twin = mount.dir.join("twin.json");
    // Every version has the same size.
    let doc = |n: u32| format!(r#"{{"snapshotFrequency": {{"value": "PT{n}M"}}}}"#);
    std::fs::write(&twin, doc(10)).unwrap();
    let child = agent_command(&dir, &twin, &dir.path("data")).spawn().unwrap();
    let reported = dir.path("reported.json");
    let frequency = || {
        read_json(&reported).and_then(|r| {
            r[twinguard::config::CONFIG_KEY]["snapshotFrequency"]["value"]
                .as_str()
                .map(str::to_owned)
        })
    };
    wait_for("the first version", Duration::from_secs(5), || {
        frequency().as_deref() == Some("PT10M")
    });
    for round in 0..2 {
        // Ten versions, 50 ms apart: in place (same inode, same size) in the first round,
        // replaced by rename (as editors do) in the second.
        let base = 11 + round * 10;
        // Start just after a second begins, so the whole burst (about 500 ms) shares one
        // timestamp on this file system.
        let subsec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        std::thread::sleep(Duration::from_millis(u64::from(1020 - subsec)));
        for n in base..base + 10 {
            if round == 0 {
                std::fs::write(&twin, doc(n)).unwrap();
            } else {
                let tmp = mount.dir.join("twin.json.tmp");
                std::fs::write(&tmp, doc(n)).unwrap();
                std::fs::rename(&tmp, &twin).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let newest = format!("PT{}M", base + 9);
        wait_for(
            &format!("the newest version {newest}"),
            Duration::from_secs(4),
            || frequency().as_deref() == Some(newest.as_str()),
        );
        // And it stays there.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(frequency(), Some(newest));
    }
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}
