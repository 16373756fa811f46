//! Files as root and signals (issue 12): the attacks of the hardening review, each against the
//! real binary and real files. Another user is `nobody` (through `setpriv`); victims are
//! root-owned files whose content and mode must not change.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{local_agent_command, skip, TempDir};

fn twinguard() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("twinguard"));
    c.env("TWINGUARD_LOG", "warn")
        .env_remove("STATE_DIRECTORY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Whether the test can act as root and as `nobody`; prints the skip otherwise.
fn root_and_setpriv(test: &str) -> bool {
    if twinguard_os::euid() != 0 {
        skip(test, "needs root (files of root and of another user)");
        return false;
    }
    if !Path::new("/usr/bin/setpriv").exists() && !Path::new("/bin/setpriv").exists() {
        skip(test, "needs setpriv (util-linux) to act as nobody");
        return false;
    }
    true
}

/// Runs `args` as `nobody`.
fn as_nobody(args: &[&str]) {
    let status = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "as nobody: {args:?}");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

const NOBODY: u32 = 65534;

/// A root-owned 0600 file with known content (no final newline: the outbox attack cut it).
fn victim(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.path(name);
    fs::write(&p, "root:x:0:0:root:/root:/bin/bash\nlast:x:1:1::/:/bin/sh").unwrap();
    chmod(&p, 0o600);
    p
}

fn assert_untouched(victim: &Path) {
    assert_eq!(
        fs::read_to_string(victim).unwrap(),
        "root:x:0:0:root:/root:/bin/bash\nlast:x:1:1::/:/bin/sh",
        "{} was changed",
        victim.display()
    );
    let m = fs::metadata(victim).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600, "{} mode changed", victim.display());
    assert_eq!(m.uid(), 0);
}

/// What a process did: its exit code (None: killed by a signal), its stderr (then its stdout,
/// when piped), and whether it
/// ended within 2 s of SIGTERM (sent after `term_after` if it was still running).
struct Outcome {
    code: Option<i32>,
    stderr: String,
    ended_in_time: bool,
}

fn run_until(mut cmd: Command, term_after: Duration) -> Outcome {
    let mut child = cmd.spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        if let Some(mut out) = out {
            let _ = out.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let mut termed: Option<Instant> = None;
    let mut ended_in_time = true;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if termed.is_none() && start.elapsed() >= term_after {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            termed = Some(Instant::now());
        }
        if termed.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            ended_in_time = false;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stderr: reader.join().unwrap(),
        ended_in_time,
    }
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only reads it.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// A character device like /dev/null (1:3) at `path`.
fn mknod_null(path: &Path) -> bool {
    Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn root_never_follows_links_planted_in_another_users_data_directory() {
    if !root_and_setpriv("root_never_follows_links_planted_in_another_users_data_directory") {
        return;
    }
    let dir = TempDir::new("planted");
    chmod(&dir.0, 0o755);
    let data = dir.path("data");
    fs::create_dir(&data).unwrap();
    chown(&data, NOBODY, NOBODY);
    chmod(&data, 0o700);
    let victim_dir = dir.path("victim-dir");
    fs::create_dir(&victim_dir).unwrap();
    chmod(&victim_dir, 0o700);
    let links = [
        ("lock", victim(&dir, "victim-lock")),
        (".agent-id.tmp", victim(&dir, "victim-id")),
        ("outbox.jsonl", victim(&dir, "victim-outbox")),
        (".reported.json.tmp", victim(&dir, "victim-reported")),
        ("agent-id", victim(&dir, "victim-agent-id")),
    ];
    for (name, target) in &links {
        as_nobody(&[
            "ln",
            "-s",
            target.to_str().unwrap(),
            data.join(name).to_str().unwrap(),
        ]);
    }
    as_nobody(&[
        "ln",
        "-s",
        victim_dir.to_str().unwrap(),
        data.join("cache").to_str().unwrap(),
    ]);
    let before = entries(&data);

    // run: refused at once, naming the owner and the command to use instead.
    let mut run = twinguard();
    run.arg("run").arg("--data-dir").arg(&data).stdout(Stdio::null());
    let out = run_until(run, Duration::from_secs(3));
    assert!(out.ended_in_time);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(data.to_str().unwrap())
            && out.stderr.contains("nobody")
            && out.stderr.contains("uid 65534")
            && out.stderr.contains("runuser -u nobody"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {}", out.stderr);

    // doctor: inspects, never writes, never follows.
    let mut doctor = twinguard();
    doctor
        .arg("doctor")
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped());
    let output = doctor.output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("owned by nobody"), "{text}");

    for (_, target) in &links {
        assert_untouched(target);
    }
    assert!(
        entries(&victim_dir).is_empty(),
        "cache written into a foreign directory"
    );
    assert_eq!(fs::metadata(&victim_dir).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        entries(&data),
        before,
        "something was created in the data directory"
    );
    assert_eq!(fs::metadata(&data).unwrap().uid(), NOBODY);
}

#[test]
fn links_in_an_own_data_directory_are_refused_or_replaced_never_followed() {
    if !root_and_setpriv("links_in_an_own_data_directory_are_refused_or_replaced_never_followed") {
        return;
    }
    // `lock` and `cache` links: refused.
    for (name, is_dir) in [("lock", false), ("cache", true)] {
        let dir = TempDir::new("own-links");
        let data = dir.path("data");
        fs::create_dir(&data).unwrap();
        chmod(&data, 0o700);
        let target = if is_dir {
            let d = dir.path("victim-dir");
            fs::create_dir(&d).unwrap();
            d
        } else {
            victim(&dir, "victim")
        };
        std::os::unix::fs::symlink(&target, data.join(name)).unwrap();
        let out = run_until(local_agent_command(&dir), Duration::from_secs(3));
        assert!(out.ended_in_time);
        assert_eq!(out.code, Some(1), "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("{name}: is a symbolic link")),
            "{name}: {}",
            out.stderr
        );
        if is_dir {
            assert!(entries(&target).is_empty());
        } else {
            assert_untouched(&target);
        }
    }
    // A `.agent-id.tmp` and a `.reported.json.tmp` link: removed, the files created anew.
    let dir = TempDir::new("own-tmp");
    let data = dir.path("data");
    fs::create_dir(&data).unwrap();
    chmod(&data, 0o700);
    let v1 = victim(&dir, "victim-id");
    let v2 = victim(&dir, "victim-reported");
    std::os::unix::fs::symlink(&v1, data.join(".agent-id.tmp")).unwrap();
    std::os::unix::fs::symlink(&v2, dir.path(".reported.json.tmp")).unwrap();
    let mut child = local_agent_command(&dir).spawn().unwrap();
    let start = Instant::now();
    while !(data.join("agent-id").exists() && dir.path("reported.json").exists())
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert_untouched(&v1);
    assert_untouched(&v2);
    let id = fs::read_to_string(data.join("agent-id")).unwrap();
    assert!(uuid::Uuid::parse_str(id.trim()).is_ok(), "{id}");
    assert!(fs::symlink_metadata(dir.path("reported.json")).unwrap().is_file());
}

#[test]
fn a_symlinked_data_directory_is_refused_and_its_target_untouched() {
    let dir = TempDir::new("linked-data");
    let target = dir.path("elsewhere");
    fs::create_dir(&target).unwrap();
    chmod(&target, 0o755);
    fs::write(target.join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(&target, dir.path("data")).unwrap();
    let out = run_until(local_agent_command(&dir), Duration::from_secs(3));
    assert!(out.ended_in_time);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("is a symbolic link"), "{}", out.stderr);
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(entries(&target), ["keep"]);
}

#[test]
fn a_group_writable_data_directory_is_refused_with_its_owner() {
    let dir = TempDir::new("gw-data");
    let data = dir.path("data");
    fs::create_dir(&data).unwrap();
    chmod(&data, 0o770);
    let out = run_until(local_agent_command(&dir), Duration::from_secs(3));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("writable by group or others") && out.stderr.contains("0770"),
        "{}",
        out.stderr
    );
    assert!(entries(&data).is_empty());
}

#[test]
fn a_fifo_at_any_input_path_never_hangs() {
    let dir = TempDir::new("fifos");
    let fifo = dir.path("fifo");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    let data = dir.path("data");
    let d = data.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("run --twin", vec!["run", "--twin", f, "--data-dir", d]),
        ("run --iothub", vec!["run", "--iothub", f, "--data-dir", d]),
        (
            "run --mqtt-password-file",
            vec![
                "run",
                "--mqtt",
                "mqtts://127.0.0.1:1",
                "--device-id",
                "d",
                "--mqtt-username",
                "u",
                "--mqtt-password-file",
                f,
                "--data-dir",
                d,
            ],
        ),
        ("run --settings", vec!["run", "--settings", f, "--data-dir", d]),
        ("doctor --twin", vec!["doctor", "--twin", f, "--data-dir", d]),
        (
            "doctor --settings",
            vec!["doctor", "--settings", f, "--data-dir", d],
        ),
        ("config show --twin", vec!["config", "show", "--twin", f]),
        ("validate", vec!["validate", f]),
    ];
    for (what, args) in cases {
        let mut c = twinguard();
        c.args(&args);
        let t = Instant::now();
        let out = run_until(c, Duration::from_millis(500));
        assert!(out.ended_in_time, "{what}: still running 2 s after SIGTERM");
        assert!(
            out.code.is_some(),
            "{what}: killed by a signal instead of exiting"
        );
        assert!(
            out.code != Some(0) && out.stderr.contains("FIFO") && out.stderr.contains(f),
            "{what}: expected an error naming the FIFO, got {:?}: {}",
            out.code,
            out.stderr
        );
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{what}: took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_twin_file_swapped_for_a_fifo_while_running_does_not_freeze_the_agent() {
    let dir = TempDir::new("twin-fifo");
    fs::write(dir.path("twin.json"), "{}").unwrap();
    let mut child = local_agent_command(&dir).spawn().unwrap();
    let start = Instant::now();
    while !dir.path("reported.json").exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::remove_file(dir.path("twin.json")).unwrap();
    mkfifo(&dir.path("twin.json"));
    std::thread::sleep(Duration::from_millis(800));
    let t = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = status.unwrap_or_else(|| panic!("not stopped 2 s after SIGTERM: {stderr}"));
    assert!(status.success(), "{status:?} {stderr}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(stderr.contains("FIFO"), "no warning about the FIFO: {stderr}");
}

#[test]
fn sigterm_stops_a_start_up_waiting_on_a_fifo_outbox() {
    // --allow-special-files: a FIFO outbox waits for its reader; SIGTERM still ends it.
    let dir = TempDir::new("fifo-outbox");
    mkfifo(&dir.path("outbox.jsonl"));
    let mut c = local_agent_command(&dir);
    c.arg("--allow-special-files");
    let out = run_until(c, Duration::from_millis(500));
    assert!(out.ended_in_time, "{}", out.stderr);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(fs::symlink_metadata(dir.path("outbox.jsonl"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn device_nodes_and_links_as_outbox_or_reported_are_never_replaced() {
    let dir = TempDir::new("devices");
    let node = dir.path("null");
    if !mknod_null(&node) {
        skip(
            "device_nodes_and_links_as_outbox_or_reported_are_never_replaced",
            "mknod of a character device needs CAP_MKNOD",
        );
        return;
    }
    let local = |outbox: &Path, reported: &Path| {
        let mut c = twinguard();
        c.arg("run")
            .arg("--outbox")
            .arg(outbox)
            .arg("--reported")
            .arg(reported)
            .arg("--data-dir")
            .arg(dir.path("data"));
        c
    };
    let (outbox, reported) = (dir.path("outbox.jsonl"), dir.path("reported.json"));
    for flag in ["--outbox", "--reported"] {
        let c = if flag == "--outbox" {
            local(&node, &reported)
        } else {
            local(&outbox, &node)
        };
        let out = run_until(c, Duration::from_secs(3));
        assert!(out.ended_in_time, "{flag}: {}", out.stderr);
        assert_eq!(out.code, Some(1), "{flag}: {}", out.stderr);
        assert!(
            out.stderr.contains("is a character device"),
            "{flag}: {}",
            out.stderr
        );
        assert!(fs::symlink_metadata(&node).unwrap().file_type().is_char_device());
    }
    // A link to a passwd-like file without a final newline: refused, not cut or appended.
    let v = victim(&dir, "victim");
    std::os::unix::fs::symlink(&v, dir.path("link")).unwrap();
    let link = dir.path("link");
    for flag in ["--outbox", "--reported"] {
        let c = if flag == "--outbox" {
            local(&link, &reported)
        } else {
            local(&outbox, &link)
        };
        let out = run_until(c, Duration::from_secs(3));
        assert_eq!(out.code, Some(1), "{flag}: {}", out.stderr);
        assert!(
            out.stderr.contains("is a symbolic link"),
            "{flag}: {}",
            out.stderr
        );
        assert_untouched(&v);
    }
    // Allowed explicitly: the device is written in place and stays a device.
    let mut c = local(&outbox, &node);
    c.arg("--allow-special-files");
    let out = run_until(c, Duration::from_secs(2));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(fs::symlink_metadata(&node).unwrap().file_type().is_char_device());
}

#[test]
fn secrets_writable_by_group_or_owned_by_another_user_are_refused() {
    if !root_and_setpriv("secrets_writable_by_group_or_owned_by_another_user_are_refused") {
        return;
    }
    let dir = TempDir::new("secrets");
    chmod(&dir.0, 0o755);
    let secret = dir.path("connection-string");
    fs::write(
        &secret,
        "HostName=h.example;DeviceId=d;ModuleId=azureiotsecurity;SharedAccessKey=a2V5",
    )
    .unwrap();
    for (mode, uid, expect) in [
        (0o620, 0, "0620"),
        (0o602, 0, "0602"),
        (0o600, NOBODY, "owned by nobody (uid 65534)"),
    ] {
        chmod(&secret, mode);
        chown(&secret, uid, uid);
        let mut c = twinguard();
        c.arg("run")
            .arg("--iothub")
            .arg(&secret)
            .arg("--data-dir")
            .arg(dir.path("data"));
        let out = run_until(c, Duration::from_secs(3));
        assert!(out.ended_in_time);
        assert_eq!(out.code, Some(1), "{mode:o}/{uid}: {}", out.stderr);
        assert!(
            out.stderr.contains(secret.to_str().unwrap()) && out.stderr.contains(expect),
            "{mode:o}/{uid}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("a2V5"), "the secret leaked: {}", out.stderr);
    }
}

#[test]
fn a_secret_is_found_in_the_credentials_directory() {
    let dir = TempDir::new("credentials");
    let creds = dir.path("creds");
    fs::create_dir(&creds).unwrap();
    fs::write(creds.join("connection-string"), "not a connection string").unwrap();
    chmod(&creds.join("connection-string"), 0o400);
    let mut c = twinguard();
    c.current_dir(&dir.0)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .args(["run", "--iothub", "connection-string", "--data-dir"])
        .arg(dir.path("data"));
    let out = run_until(c, Duration::from_secs(3));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    // Read from the credentials directory (it got as far as parsing the content).
    assert!(
        out.stderr
            .contains(creds.join("connection-string").to_str().unwrap())
            || out.stderr.contains("connection-string:"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("No such file"), "{}", out.stderr);
}

#[test]
fn a_data_directory_below_a_directory_others_may_write_is_refused() {
    let dir = TempDir::new("unsafe-parent");
    let open = dir.path("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let data = open.join("data");
    let mut c = twinguard();
    c.arg("run").arg("--data-dir").arg(&data).stdout(Stdio::null());
    let out = run_until(c, Duration::from_secs(3));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "directory {} is writable by group or others",
            open.display()
        )) && out.stderr.contains("0777"),
        "{}",
        out.stderr
    );
    // Sticky (like /tmp): nobody can swap another user's entry, so it is accepted.
    chmod(&open, 0o1777);
    let mut c = twinguard();
    c.arg("run").arg("--data-dir").arg(&data).stdout(Stdio::null());
    let out = run_until(c, Duration::from_secs(1));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn an_outbox_owned_by_another_user_is_refused_and_unchanged() {
    if !root_and_setpriv("an_outbox_owned_by_another_user_is_refused_and_unchanged") {
        return;
    }
    let dir = TempDir::new("foreign-outbox");
    let outbox = victim(&dir, "outbox.jsonl");
    chown(&outbox, NOBODY, NOBODY);
    let out = run_until(local_agent_command(&dir), Duration::from_secs(3));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("owned by nobody (uid 65534)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        fs::read_to_string(&outbox).unwrap(),
        "root:x:0:0:root:/root:/bin/bash\nlast:x:1:1::/:/bin/sh"
    );
}
