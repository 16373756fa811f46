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
    twinguard_os::euid() == 0
}

/// A small file system mounted for one test (root only), unmounted when dropped.
struct Mount {
    dir: std::path::PathBuf,
    image: Option<std::path::PathBuf>,
}

impl Mount {
    /// A tmpfs of `size` (e.g. "2m") at `dir`: a real disk that fills up.
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
        let unmounted = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy: detach it now, the kernel frees it when the last user goes.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
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

/// A running agent, killed when dropped (a failing test leaves no process behind to keep its
/// mount busy).
struct Running(Option<Child>);

impl Running {
    fn spawn(command: &mut std::process::Command) -> Running {
        Running(Some(command.spawn().unwrap()))
    }

    /// SIGKILL and wait.
    fn kill9(mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then the exit code and stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        stop(self.0.take().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
    let child = Running::spawn(&mut agent_command(&dir, &twin, &dir.path("data")));
    let reported = dir.path("reported.json");
    let frequency = || {
        read_json(&reported).and_then(|r| {
            r[twinguard_core::config::CONFIG_KEY]["snapshotFrequency"]["value"]
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
    let (code, stderr) = child.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// Every event in the outbox (rotation is not reached in these tests).
fn outbox_events(dir: &TempDir) -> Vec<Value> {
    std::fs::read_to_string(dir.path("outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .flat_map(|l| {
            let m: Value = serde_json::from_str(l).unwrap();
            m["Events"].as_array().unwrap().clone()
        })
        .collect()
}

/// Sum of DroppedEvents over every DroppedEventsStatistics item in the outbox.
fn statistics_dropped(dir: &TempDir) -> u64 {
    outbox_events(dir)
        .iter()
        .filter(|e| e["Name"] == "DroppedEventsStatistics")
        .flat_map(|e| e["Payload"].as_array().unwrap().clone())
        .map(|item| item["DroppedEvents"].as_u64().unwrap())
        .sum()
}

/// Fills the file system of `dir` with one file, until ENOSPC.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut chunk = 64 * 1024;
    while chunk > 0 {
        match f.write(&vec![b'x'; chunk]) {
            Ok(n) if n == chunk => {}
            _ => chunk /= 2,
        }
    }
    path
}

/// Issue 12: drops counted while the disk is full survive a stop before space returns, and
/// every drop appears in exactly one DroppedEventsStatistics message. A real full disk: the
/// data directory is a 2 MiB tmpfs, filled while the agent runs its synthetic source.
#[test]
fn drops_on_a_full_disk_survive_a_stop_and_are_reported_once() {
    let test = "drops_on_a_full_disk_survive_a_stop_and_are_reported_once";
    if !is_root() {
        return skip(test, "needs root to mount a small tmpfs");
    }
    let dir = TempDir::new("disk-full");
    let Some(mount) = Mount::tmpfs(&dir.path("data"), "2m") else {
        return skip(test, "cannot mount a tmpfs");
    };
    let twin = dir.path("twin.json");
    std::fs::write(
        &twin,
        r#"{"lowPriorityMessageFrequency": {"value": "PT1S"}, "maxMessageSizeInBytes": {"value": 65536},
            "maxLocalCacheSizeInBytes": {"value": 50000000}, "eventPriorityDiagnostic": {"value": "Low"},
            "eventPriorityConnectionCreate": {"value": "Off"}, "eventPriorityLogin": {"value": "Off"},
            "eventPriorityProcessTerminate": {"value": "Off"}}"#,
    )
    .unwrap();
    let reported = dir.path("reported.json");
    let counters = || read_json(&reported).map(|r| r["twinguard"]["counters"].clone());

    // Run 1: the disk fills while events arrive; stop before space returns.
    let child = Running::spawn(agent_command(&dir, &twin, &mount.dir).args(["--synthetic-rate", "1000"]));
    wait_for("the agent to start", Duration::from_secs(5), || reported.exists());
    std::thread::sleep(Duration::from_millis(300));
    let filler = fill(&mount.dir);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, stderr) = child.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("disk is full"), "no warning: {stderr}");
    assert_eq!(
        stderr.matches("disk is full").count(),
        1,
        "one warning per episode: {stderr}"
    );

    // Space returns; run 2 finds the drops and the unsent period statistics.
    std::fs::remove_file(filler).unwrap();
    let child = Running::spawn(&mut agent_command(&dir, &twin, &mount.dir));
    wait_for("the carried statistics", Duration::from_secs(8), || {
        statistics_dropped(&dir) > 0
    });
    let at_start = counters().unwrap();
    let dropped_low = at_start["low"]["dropped"].as_u64().unwrap();
    assert!(dropped_low >= 300, "too few drops to mean anything: {at_start}");
    wait_for("the disk-full Diagnostic", Duration::from_secs(4), || {
        outbox_events(&dir).iter().any(|e| {
            e["Name"] == "Diagnostic" && e["Payload"].to_string().contains("while the disk was full")
        })
    });
    std::thread::sleep(Duration::from_millis(1200));
    let (code, stderr) = child.stop();
    assert_eq!(code, Some(0), "{stderr}");

    // Run 3 sends what run 2 queued at its stop (its final statistics), then stops.
    // Its own final period is queued at its stop too, for a next run that never comes, so
    // nothing may be dropped after run 3's first statistics event for the messages sent to
    // add up to the cumulative counters: run 3 runs no stream collector (the process
    // collector counts the events the kernel could not deliver to it as drops, and a busy
    // machine has some every few seconds).
    std::fs::write(
        &twin,
        r#"{"lowPriorityMessageFrequency": {"value": "PT1S"}, "maxMessageSizeInBytes": {"value": 65536},
            "maxLocalCacheSizeInBytes": {"value": 50000000}, "eventPriorityDiagnostic": {"value": "Low"},
            "eventPriorityConnectionCreate": {"value": "Off"}, "eventPriorityLogin": {"value": "Off"},
            "eventPriorityProcessTerminate": {"value": "Off"}, "eventPriorityProcessCreate": {"value": "Off"}}"#,
    )
    .unwrap();
    // Waits (on a loaded machine, more than a fixed 2.5 s) until the statistics sent add up to
    // the cumulative drops the agent reports; the assertions below say what is missing if not.
    let child = Running::spawn(&mut agent_command(&dir, &twin, &mount.dir));
    std::thread::sleep(Duration::from_millis(2500));
    let settled = |last: &Value| {
        let dropped = |q: &str| last[q]["dropped"].as_u64().unwrap_or(0);
        statistics_dropped(&dir) == dropped("high") + dropped("low")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline && !counters().is_some_and(|c| settled(&c)) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, stderr) = child.stop();
    assert_eq!(code, Some(0), "{stderr}");

    let last = counters().unwrap();
    let total = |q: &str, k: &str| last[q][k].as_u64().unwrap();
    for q in ["high", "low"] {
        assert_eq!(
            total(q, "collected"),
            total(q, "sent") + total(q, "dropped") + total(q, "cached"),
            "collected = sent + dropped + cached: {last}"
        );
    }
    let cumulative = total("high", "dropped") + total("low", "dropped");
    assert_eq!(
        statistics_dropped(&dir),
        cumulative,
        "the statistics messages must add up to the cumulative drops: {last} {:?} {}",
        outbox_events(&dir)
            .iter()
            .filter(|e| e["Name"] == "DroppedEventsStatistics")
            .map(|e| e["Payload"].to_string())
            .collect::<Vec<_>>(),
        std::fs::read_to_string(&reported).unwrap()
    );
    let diagnostics = outbox_events(&dir)
        .iter()
        .filter(|e| e["Name"] == "Diagnostic")
        .flat_map(|e| e["Payload"].as_array().unwrap().clone())
        .filter(|i| i.to_string().contains("disk was full"))
        .count();
    assert_eq!(diagnostics, 1, "one disk-full Diagnostic per episode");
    eprintln!("disk full: {cumulative} drops, all in DroppedEventsStatistics, one Diagnostic");
}

/// Runs `command` (output to /dev/null) and returns its exit code and the peak resident memory
/// (VmHWM, KiB) of the program it runs, read from `/proc/PID/status` when the process is
/// stopped at its exit by ptrace (`PTRACE_O_TRACEEXIT`), so nothing escapes the measure. Not
/// `wait4`'s `ru_maxrss`: that includes the test process's own memory when the child was
/// spawned from it before `exec`.
fn run_measuring_peak(command: &mut std::process::Command) -> (Option<i32>, u64) {
    use std::os::unix::process::CommandExt;
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only calls ptrace(2),
    // which is async-signal-safe; no memory is allocated or shared.
    unsafe {
        command.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut peak = 0;
    // SAFETY: waitpid and ptrace on our own traced child, with a valid pointer to a local
    // status word; no other memory is involved.
    unsafe {
        // Stopped by SIGTRAP at its exec.
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL;
        assert_eq!(libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options), 0);
        libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
        loop {
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                break;
            }
            let mut signal = 0;
            if status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8)) {
                let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                peak = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap();
            } else if libc::WIFSTOPPED(status) {
                signal = libc::WSTOPSIG(status);
            }
            libc::ptrace(libc::PTRACE_CONT, pid, 0, signal);
        }
    }
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, peak)
}

/// Issue 12: a valid-looking twin under 1 MiB with 44,000 unknown properties is invalid (more
/// than 256 members): `validate` exits 1 at once with one line, within a memory bound.
#[test]
fn a_twin_flooded_with_unknown_properties_is_refused_quickly_in_bounded_memory() {
    let dir = TempDir::new("twin-flood");
    let mut doc = String::from("{");
    for n in 0..44_000 {
        if n > 0 {
            doc.push(',');
        }
        doc.push_str(&format!("\"p{n:05}\":{{\"value\":1}}"));
    }
    doc.push('}');
    assert!(doc.len() < 1 << 20, "{} bytes", doc.len());
    let path = dir.path("flood.json");
    std::fs::write(&path, &doc).unwrap();
    let t = Instant::now();
    let (status, peak_kib) = run_measuring_peak(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
            .arg("validate")
            .arg(&path),
    );
    let took = t.elapsed();
    // Run it again for the text (the measured run's output went to /dev/null).
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(status, Some(1));
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let problems = |text: &str| {
        text.lines()
            .filter(|l| l.contains(": error: ") || l.contains(": warning: "))
            .count()
    };
    assert_eq!(problems(&text), 1, "{text}");
    assert!(
        text.contains("44000 members") && text.contains("at most 256"),
        "{text}"
    );
    // Documented bound (ARCHITECTURE.md): 16 MiB peak for `validate` of a flooded document
    // (measured about 8 MiB with the debug binary): the parser keeps 256 members per object
    // and skips the rest unparsed.
    assert!(peak_kib < 16 * 1024, "peak RSS {peak_kib} KiB");
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!("44,000-property twin: validate exit 1 in {took:?}, peak RSS {peak_kib} KiB");

    // `run` refuses it at start (78); at runtime it is rejected, the configuration in force
    // stays, and one ConfigurationError item says why.
    let out = agent_command(&dir, &path, &dir.path("data"))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let twin = dir.path("twin.json");
    let valid = r#"{"eventPriorityConfigurationError": {"value": "High"}, "highPriorityMessageFrequency": {"value": "PT1S"}}"#;
    std::fs::write(&twin, valid).unwrap();
    let child = Running::spawn(&mut agent_command(&dir, &twin, &dir.path("data")));
    let reported = dir.path("reported.json");
    wait_for("the valid twin", Duration::from_secs(5), || {
        read_json(&reported).is_some_and(|r| r["twinguard"]["configurationStatus"] == "applied")
    });
    let before = read_json(&reported).unwrap()[twinguard_core::config::CONFIG_KEY].clone();
    // The flood, with a valid change among its first members.
    let flood = doc.replacen('{', r#"{"highPriorityMessageFrequency": {"value": "PT9S"},"#, 1);
    let tmp = dir.path("twin.json.tmp");
    std::fs::write(&tmp, &flood).unwrap();
    std::fs::rename(&tmp, &twin).unwrap();
    wait_for("the rejection", Duration::from_secs(5), || {
        read_json(&reported).is_some_and(|r| r["twinguard"]["configurationStatus"] == "rejected")
    });
    let after = read_json(&reported).unwrap();
    assert_eq!(
        after[twinguard_core::config::CONFIG_KEY],
        before,
        "the configuration in force stays"
    );
    wait_for("a ConfigurationError event", Duration::from_secs(5), || {
        outbox_events(&dir)
            .iter()
            .any(|e| e["Name"] == "ConfigurationError")
    });
    let (code, stderr) = child.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let items: Vec<Value> = outbox_events(&dir)
        .iter()
        .filter(|e| e["Name"] == "ConfigurationError")
        .flat_map(|e| e["Payload"].as_array().unwrap().clone())
        .collect();
    assert_eq!(items.len(), 1, "one item per document: {items:?}");
    assert!(
        items[0]["Message"].as_str().unwrap().contains("44001 members"),
        "{items:?}"
    );
    assert_eq!(stderr.matches("configuration rejected").count(), 1, "{stderr}");

    // Under the limit, 40 unknown properties: valid, one summarised warning.
    let mut doc = String::from("{\"eventPriorityLogn\":{\"value\":\"High\"}");
    for n in 0..39 {
        doc.push_str(&format!(",\"p{n:05}\":{{\"value\":1}}"));
    }
    doc.push('}');
    std::fs::write(&path, &doc).unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(problems(&text), 1, "{text}");
    assert!(
        text.contains("40 unknown properties are ignored")
            && text.contains("did you mean \"eventPriorityLogin\"")
            && text.contains("and 35 more"),
        "{text}"
    );
}

/// Issue 12: drops counted while the disk is full survive `kill -9` too (each is written into
/// the reserved counter slot before the next event is taken). 1,500 synthetic events, most of
/// them dropped on a full tmpfs, then SIGKILL, space freed, restart: every one of them is
/// counted (collected >= 1,500) and the counters balance.
#[test]
fn drops_on_a_full_disk_survive_kill_9() {
    let test = "drops_on_a_full_disk_survive_kill_9";
    if !is_root() {
        return skip(test, "needs root to mount a small tmpfs");
    }
    let dir = TempDir::new("disk-full-kill");
    let Some(mount) = Mount::tmpfs(&dir.path("data"), "2m") else {
        return skip(test, "cannot mount a tmpfs");
    };
    let twin = dir.path("twin.json");
    std::fs::write(
        &twin,
        r#"{"lowPriorityMessageFrequency": {"value": "PT1H"}, "maxLocalCacheSizeInBytes": {"value": 50000000},
            "eventPriorityConnectionCreate": {"value": "Off"}, "eventPriorityLogin": {"value": "Off"},
            "eventPriorityProcessTerminate": {"value": "Off"}}"#,
    )
    .unwrap();
    let reported = dir.path("reported.json");
    let child = Running::spawn(agent_command(&dir, &twin, &mount.dir).args([
        "--synthetic-rate",
        "500",
        "--synthetic-limit",
        "1500",
    ]));
    wait_for("the agent to start", Duration::from_secs(5), || reported.exists());
    std::thread::sleep(Duration::from_millis(300));
    let filler = fill(&mount.dir);
    std::thread::sleep(Duration::from_millis(3700));
    child.kill9();
    std::fs::remove_file(filler).unwrap();
    std::fs::remove_file(&reported).unwrap();

    let child = Running::spawn(&mut agent_command(&dir, &twin, &mount.dir));
    wait_for("the agent to start", Duration::from_secs(5), || reported.exists());
    let (code, stderr) = child.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let counters = read_json(&reported).unwrap()["twinguard"]["counters"].clone();
    let low = |k: &str| counters["low"][k].as_u64().unwrap();
    assert!(
        low("collected") >= 1500,
        "synthetic events not all counted: {counters}"
    );
    assert!(
        low("dropped") >= 500,
        "too few drops to mean anything: {counters}"
    );
    assert_eq!(
        low("collected"),
        low("sent") + low("dropped") + low("cached"),
        "{counters}"
    );
    eprintln!("kill -9 on a full disk: {counters}");
}
