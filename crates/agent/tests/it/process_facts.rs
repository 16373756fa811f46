//! The exec facts of ProcessCreate (issue 15), live through a real `twinguard run`, from both
//! process sources (eBPF, and the process connector with `TWINGUARD_SOURCES=fallback`):
//! `ExtraDetails.Argv` (arguments with spaces, quotes, backslashes, invalid UTF-8 and an empty
//! one come back exactly), the kinds of descriptors 0-2 (a TCP connection as stdin and stdout,
//! a pipe, a file, `/dev/null`, a closed descriptor, a pseudo-terminal), a binary run from a
//! directory writable by others, a deleted executable and a memfd, a process in its own pid
//! namespace (reported with its host pid), a process in a container's cgroup (ContainerId), and
//! the periodic check of the attached eBPF programs.
//!
//! The fallback reads `/proc` after the exec, so the processes here live 0.3 s: long enough for
//! it (the eBPF source needs no such help: see the exec storm test in `events`).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::events::{live_lock, pid_of, unique, LiveAgent, EBPF_SOURCE, LIVE_TWIN};
use crate::support::{local_agent_command, TempDir};

/// Both sources: eBPF (the variable unset) and the process connector.
const SOURCES: [&str; 2] = ["", "fallback"];
const PYTHON: &str = "/usr/bin/python3";

fn start(label: &str, sources: &str) -> LiveAgent {
    let agent = LiveAgent::start_sources(label, LIVE_TWIN, Some(sources));
    let status = agent.wait_running("ProcessCreate");
    if sources.is_empty() {
        assert_eq!(status["source"], EBPF_SOURCE, "{status}");
    } else {
        assert_eq!(status["fallback"], true, "{status}");
    }
    agent
}

fn extra<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v["ExtraDetails"][key].as_str()
}

/// One `Argv` element back to bytes, by the documented rule (written here independently of
/// the agent's code): `\\` is a backslash, `\xNN` the byte 0xNN, anything else itself.
fn decode(element: &str) -> Vec<u8> {
    let b = element.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (b'\\', Some(b'x')) => {
                let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 4;
            }
            (b'\\', _) => panic!("a lone backslash in {element:?}"),
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn argv_of(v: &Value) -> Vec<Vec<u8>> {
    let text = extra(v, "Argv").unwrap_or_else(|| panic!("no Argv: {v}"));
    let elements: Vec<String> = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    elements.iter().map(|e| decode(e)).collect()
}

/// A unique marker argument that `sleep` takes as a further interval (`0.0<n><tag>`, under
/// 0.1 s), so the process still lives its 0.3 s.
fn mark(n: u32, tag: &str) -> String {
    format!("0.0{n}{tag}")
}

/// Runs `command` to its end; returns its pid.
fn run(command: &mut Command) -> u32 {
    let mut child = command.spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// The ProcessCreate whose CommandLine is `line`.
fn create_by_line(agent: &LiveAgent, sources: &str, line: &str) -> Value {
    agent.find("ProcessCreate", &format!("{sources:?}: {line}"), |v| {
        v["CommandLine"] == line
    })
}

fn copy_executable(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy("/usr/bin/sleep", &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

/// A directory under /tmp with `mode`, removed when dropped.
struct ModeDir(PathBuf);

impl ModeDir {
    fn new(label: &str, mode: u32) -> ModeDir {
        let dir = PathBuf::from(format!("/tmp/tg-facts-{label}-{}", unique()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        ModeDir(dir)
    }
}

impl Drop for ModeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn process_exec_facts_live_from_both_sources() {
    let Some(_guard) = live_lock("process_exec_facts_live_from_both_sources") else {
        return;
    };
    for sources in SOURCES {
        let agent = start("ev-facts", sources);
        let tag = unique();
        let [mplain, msock, mpipe, mtty, mwd, mnowd, mdel, mmem] =
            [1, 2, 3, 4, 5, 6, 7, 8].map(|n| mark(n, &tag));

        // Argv: every argument back exactly, CommandLine still joined with spaces.
        let args: Vec<OsString> = vec![
            "sleep 0.3; exit 0".into(),
            format!("tg-argv-{tag}").into(),
            "a b".into(),
            "q\"x'y".into(),
            "back\\slash\\x41".into(),
            OsString::from_vec(b"bad\xff\xfeend".to_vec()),
            "".into(),
        ];
        let pid = u64::from(run(Command::new("/bin/sh").arg("-c").args(&args)));
        let c = agent.find("ProcessCreate", "with Argv", |v| {
            pid_of(v) == pid && extra(v, "Argv").is_some()
        });
        let mut want: Vec<Vec<u8>> = vec![b"/bin/sh".to_vec(), b"-c".to_vec()];
        want.extend(args.iter().map(|a| a.clone().into_vec()));
        assert_eq!(argv_of(&c), want, "{sources:?}: {c}");
        assert_eq!(
            c["CommandLine"],
            format!("/bin/sh -c sleep 0.3; exit 0 tg-argv-{tag} a b q\"x'y back\\slash\\x41 bad\u{fffd}\u{fffd}end "),
            "{sources:?}"
        );
        assert_eq!(extra(&c, "Truncated"), None, "{c}");
        // Plain arguments: no Argv.
        let plain = format!("/bin/sleep 0.3 {mplain}");
        run(Command::new("/bin/sleep").args(["0.3", &mark(1, &tag)]));
        let c = create_by_line(&agent, sources, &plain);
        assert_eq!(extra(&c, "Argv"), None, "{sources:?}: {c}");

        // A reverse shell's shape: a TCP connection as stdin and stdout, stderr /dev/null.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let line = format!("/bin/sleep 0.3 {msock}");
        run(Command::new("/bin/sh")
            .args(["-c", &format!("exec {line}")])
            .stdin(Stdio::from(OwnedFd::from(conn.try_clone().unwrap())))
            .stdout(Stdio::from(OwnedFd::from(conn)))
            .stderr(Stdio::null()));
        drop(client);
        let c = create_by_line(&agent, sources, &line);
        let fds = |c: &Value| {
            [
                extra(c, "Stdin").map(str::to_owned),
                extra(c, "Stdout").map(str::to_owned),
                extra(c, "Stderr").map(str::to_owned),
            ]
        };
        assert_eq!(
            fds(&c),
            [Some("socket".into()), Some("socket".into()), Some("other".into())],
            "{sources:?}: {c}"
        );
        assert_eq!(extra(&c, "WritableDirectory"), None, "/usr/bin: {c}");
        assert_eq!(extra(&c, "ExecutableDeleted"), None, "{c}");

        // A pipe, a file, and a closed stderr (no key).
        let dir = ModeDir::new("out", 0o755);
        let line = format!("/bin/sleep 0.3 {mpipe}");
        let mut child = Command::new("/bin/sh")
            .args(["-c", &format!("exec 2>&-; exec {line}")])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(dir.0.join("out")).unwrap())
            .spawn()
            .unwrap();
        child.wait().unwrap();
        let c = create_by_line(&agent, sources, &line);
        assert_eq!(
            fds(&c),
            [Some("pipe".into()), Some("file".into()), None],
            "{sources:?}: {c}"
        );

        // A pseudo-terminal on all three.
        let line = format!("/bin/sleep 0.3 {mtty}");
        let script = "import os, sys\n\
            pid, fd = os.forkpty()\n\
            if pid == 0:\n    os.execv('/bin/sleep', ['/bin/sleep', '0.3', sys.argv[1]])\n\
            while True:\n    try:\n        data = os.read(fd, 1024)\n    except OSError:\n        break\n    if not data:\n        break\n\
            os.waitpid(pid, 0)\n";
        run(Command::new(PYTHON).args(["-c", script, &mark(4, &tag)]));
        let c = create_by_line(&agent, sources, &line);
        assert_eq!(
            fds(&c),
            [Some("tty".into()), Some("tty".into()), Some("tty".into())],
            "{sources:?}: {c}"
        );

        // A binary in a directory anyone may write to, and in one only its owner may.
        let open = ModeDir::new("open", 0o1777);
        let exe = copy_executable(&open.0, "tg-sleep");
        run(Command::new(&exe).args(["0.3", &mark(5, &tag)]));
        let c = create_by_line(&agent, sources, &format!("{} 0.3 {mwd}", exe.display()));
        assert_eq!(c["Executable"], exe.display().to_string(), "{c}");
        assert_eq!(extra(&c, "WritableDirectory"), Some("True"), "{sources:?}: {c}");
        let closed = ModeDir::new("closed", 0o755);
        let exe = copy_executable(&closed.0, "tg-sleep");
        run(Command::new(&exe).args(["0.3", &mark(6, &tag)]));
        let c = create_by_line(&agent, sources, &format!("{} 0.3 {mnowd}", exe.display()));
        assert_eq!(extra(&c, "WritableDirectory"), None, "{sources:?}: {c}");

        // A deleted executable: opened, unlinked, then executed through its descriptor.
        let exe = copy_executable(&closed.0, "tg-deleted");
        let script = "import os, sys\n\
            fd = os.open(sys.argv[1], os.O_RDONLY)\n\
            os.unlink(sys.argv[1])\n\
            os.execve('/proc/self/fd/%d' % fd, ['tg-deleted', '0.3', sys.argv[2]], {})\n";
        run(Command::new(PYTHON).args(["-c", script, &exe.to_string_lossy(), &mark(7, &tag)]));
        let c = create_by_line(&agent, sources, &format!("tg-deleted 0.3 {mdel}"));
        assert_eq!(
            c["Executable"],
            format!("{} (deleted)", exe.display()),
            "{sources:?}: {c}"
        );
        assert_eq!(extra(&c, "ExecutableDeleted"), Some("True"), "{sources:?}: {c}");
        assert_eq!(extra(&c, "ExecutableMemfd"), None, "{c}");

        // A memfd: an executable that never was a file.
        let script = "import os, sys\n\
            fd = os.memfd_create('tg-mem', 0)\n\
            os.write(fd, open('/usr/bin/sleep', 'rb').read())\n\
            os.execve('/proc/self/fd/%d' % fd, ['tg-memfd', '0.3', sys.argv[1]], {})\n";
        run(Command::new(PYTHON).args(["-c", script, &mark(8, &tag)]));
        let c = create_by_line(&agent, sources, &format!("tg-memfd 0.3 {mmem}"));
        assert_eq!(c["Executable"], "/memfd:tg-mem (deleted)", "{sources:?}: {c}");
        assert_eq!(extra(&c, "ExecutableMemfd"), Some("True"), "{sources:?}: {c}");
        assert_eq!(extra(&c, "ExecutableDeleted"), None, "{c}");
        assert_eq!(extra(&c, "WritableDirectory"), None, "{c}");

        let stderr = agent.stop();
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The pid of the process whose `/proc/<pid>/cmdline` is `cmdline`, waiting up to 3 s.
fn host_pid_of(cmdline: &[u8]) -> u32 {
    let t = Instant::now();
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline) {
                return pid;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(3), "no process {cmdline:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_process_in_its_own_pid_namespace_is_reported_with_its_host_pid() {
    let Some(_guard) = live_lock("a_process_in_its_own_pid_namespace_is_reported_with_its_host_pid") else {
        return;
    };
    for sources in SOURCES {
        let agent = start("ev-pidns", sources);
        let arg = format!("0.5{}", unique());
        let mut unshare = Command::new("/usr/bin/unshare")
            .args(["-p", "-f", "--mount-proc", "/bin/sleep", &arg])
            .spawn()
            .unwrap();
        let host = host_pid_of(format!("/bin/sleep\0{arg}\0").as_bytes());
        let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert_eq!(
            nspid.split_whitespace().collect::<Vec<_>>(),
            ["NSpid:", &host.to_string(), "1"],
            "pid 1 in its namespace"
        );
        assert!(unshare.wait().unwrap().success());
        let c = create_by_line(&agent, sources, &format!("/bin/sleep {arg}"));
        assert_eq!(pid_of(&c), u64::from(host), "{sources:?}: the host pid: {c}");
        assert_eq!(
            c["ParentProcessId"].as_u64(),
            Some(u64::from(unshare.id())),
            "{c}"
        );
        assert_eq!(c["Executable"], "/usr/bin/sleep", "{c}");
        let t = agent.find("ProcessTerminate", "of the namespaced sleep", |v| {
            pid_of(v) == u64::from(host)
        });
        assert_eq!(t["ExitStatus"], 0, "{t}");
        let stderr = agent.stop();
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Where a cgroup file system is mounted: `cgroup2`, or the v1 hierarchy of `controller`.
fn cgroup_mount(fstype: &str, controller: Option<&str>) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fs, _source, options) = (r.next()?, r.next()?, r.next()?);
        let point = left.split(' ').nth(4)?;
        let matches = fs == fstype && controller.is_none_or(|c| options.split(',').any(|o| o == c));
        matches.then(|| PathBuf::from(point))
    })
}

/// Cgroup directories made by the test, removed (deepest first) when dropped.
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // Empty once its processes are reaped; a moment may pass before the kernel agrees.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs `/bin/sleep 0.3 <marker>` inside the cgroup `dir` (the shell moves itself there before
/// it execs), and returns the command line to look for.
fn run_in_cgroup(dir: &Path, marker: &str) -> String {
    let line = format!("/bin/sleep 0.3 {marker}");
    let script = format!("echo $$ > {}/cgroup.procs && exec {line}", dir.display());
    let status = Command::new("/bin/sh").args(["-c", &script]).status().unwrap();
    assert!(status.success(), "{script}");
    line
}

#[test]
fn a_process_in_a_containers_cgroup_carries_its_container_id() {
    let Some(_guard) = live_lock("a_process_in_a_containers_cgroup_carries_its_container_id") else {
        return;
    };
    let v2 = cgroup_mount("cgroup2", None).expect("no cgroup2 file system mounted");
    let v1 = cgroup_mount("cgroup", Some("pids"));
    for sources in SOURCES {
        let agent = start("ev-container", sources);
        let tag = unique();
        let mnocg = mark(9, &tag);
        // Docker's systemd driver (and IoT Edge modules): `docker-<64 hex>.scope`, cgroup v2.
        let id = format!("{:0>64}", format!("c0ffee{tag}"));
        let scope = v2.join(format!("docker-{id}.scope"));
        std::fs::create_dir(&scope).unwrap();
        let mut made = Cgroups(vec![scope.clone()]);
        let line = run_in_cgroup(&scope, &mark(10, &tag));
        let c = create_by_line(&agent, sources, &line);
        assert_eq!(extra(&c, "ContainerId"), Some(id.as_str()), "{sources:?}: {c}");
        // A process outside any container has none.
        let plain = format!("/bin/sleep 0.3 {mnocg}");
        run(Command::new("/bin/sleep").args(["0.3", &mark(9, &tag)]));
        let c = create_by_line(&agent, sources, &plain);
        assert_eq!(extra(&c, "ContainerId"), None, "{sources:?}: {c}");
        // Docker's cgroupfs driver on cgroup v1: `/docker/<64 hex>` (where v1 exists).
        match &v1 {
            Some(pids) => {
                let id1 = format!("{:0>64}", format!("beef{tag}"));
                let docker = pids.join("docker");
                if !docker.exists() {
                    std::fs::create_dir(&docker).unwrap();
                    made.0.push(docker.clone());
                }
                let leaf = docker.join(&id1);
                std::fs::create_dir(&leaf).unwrap();
                made.0.push(leaf.clone());
                let line = run_in_cgroup(&leaf, &mark(11, &tag));
                let c = create_by_line(&agent, sources, &line);
                assert_eq!(extra(&c, "ContainerId"), Some(id1.as_str()), "{sources:?}: {c}");
            }
            None => eprintln!("no cgroup v1 pids hierarchy here: the /docker/<id> case is not run"),
        }
        drop(made);
        let stderr = agent.stop();
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The periodic check of the attached programs, every 0.5 s here (hidden
/// `TWINGUARD_EBPF_CHECK_MS`): passes while they are attached; once the exec program is
/// detached - for real, its link closed, by the hidden `TWINGUARD_EBPF_TEST_DETACH_MS`: this
/// kernel refuses `bpftool link detach` on raw tracepoint links (EOPNOTSUPP) - the status says
/// the fallback runs and why, a Diagnostic says so, and processes are still reported.
#[test]
fn a_detached_ebpf_program_is_caught_by_the_periodic_check_and_the_fallback_takes_over() {
    let Some(_guard) =
        live_lock("a_detached_ebpf_program_is_caught_by_the_periodic_check_and_the_fallback_takes_over")
    else {
        return;
    };
    let dir = TempDir::new("ev-tamper");
    std::fs::write(dir.path("twin.json"), LIVE_TWIN).unwrap();
    let mut command = local_agent_command(&dir);
    command
        .env_remove("TWINGUARD_SOURCES")
        .env("TWINGUARD_EBPF_CHECK_MS", "500")
        .env("TWINGUARD_EBPF_TEST_DETACH_MS", "4000");
    let agent = LiveAgent {
        child: Some(command.spawn().unwrap()),
        dir,
    };
    let status = agent.wait_running("ProcessCreate");
    assert_eq!(status["source"], EBPF_SOURCE, "{status}");
    // Several checks pass while the programs are attached.
    std::thread::sleep(Duration::from_millis(2500));
    let status = agent.reported()["twinguard"]["collectors"]["ProcessCreate"].clone();
    assert_eq!(
        status["source"], EBPF_SOURCE,
        "checks passed while attached: {status}"
    );
    let t = Instant::now();
    let status = loop {
        let status = agent.reported()["twinguard"]["collectors"]["ProcessCreate"].clone();
        if status["fallback"] == true || t.elapsed() > Duration::from_secs(15) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["source"], "netlink proc connector", "{status}");
    let note = status["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("tamper check") && note.contains("process_exec"),
        "{status}"
    );
    let d = agent.find("Diagnostic", "about the detached program", |v| {
        v["Message"].as_str().is_some_and(|m| m.contains("tamper check"))
    });
    assert_eq!(d["Severity"], "Error", "{d}");
    let tag = unique();
    let line = format!("/bin/sleep 0.3 {}", mark(1, &tag));
    run(Command::new("/bin/sleep").args(["0.3", &mark(1, &tag)]));
    create_by_line(&agent, "fallback", &line);
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
