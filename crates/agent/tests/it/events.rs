//! The event collectors (ProcessCreate, ProcessTerminate, ConnectionCreate, Login): their
//! parsers on bytes and text captured from a real machine, and live, as root, through a real
//! `twinguard run` whose outbox must show the events the test caused - with the right pids,
//! executables, users, directions, ports and exit statuses - in messages that conform to the
//! official schema.
//!
//! Live tests need root (the process connector needs CAP_NET_ADMIN, audit CAP_AUDIT_CONTROL);
//! without it they skip, which fails under CI. They run one at a time (audit is one per
//! machine).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::conformance::validate_messages;
use crate::support::{local_agent_command, skip, TempDir};

/// The variable that forces the fallback sources.
pub(crate) const SOURCES: &str = "TWINGUARD_SOURCES";
/// The eBPF process source's name in `reported.twinguard`.
pub(crate) const EBPF_SOURCE: &str =
    "eBPF raw tracepoints (sched_process_exec, sched_process_fork, sched_process_exit)";

/// The eBPF connection source's name in `reported.twinguard`.
const CONNECTION_EBPF_SOURCE: &str = "eBPF raw tracepoints (inet_sock_set_state, sys_exit)";

/// Live tests take this lock: two agents would share the machine's audit state.
static LIVE: Mutex<()> = Mutex::new(());

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn is_root() -> bool {
    twinguard_os::euid() == 0
}

/// A running `twinguard run` in local mode.
pub(crate) struct LiveAgent {
    pub(crate) child: Option<Child>,
    pub(crate) dir: TempDir,
}

/// A twin with every triggered event High, sent every second, aggregation off.
pub(crate) const LIVE_TWIN: &str = r#"{
    "highPriorityMessageFrequency": {"value": "PT1S"},
    "maxLocalCacheSizeInBytes": {"value": 20000000},
    "eventPriorityProcessCreate": {"value": "High"},
    "eventPriorityProcessTerminate": {"value": "High"},
    "eventPriorityConnectionCreate": {"value": "High"},
    "eventPriorityLogin": {"value": "High"},
    "eventPriorityDiagnostic": {"value": "High"},
    "aggregationEnabledProcessCreate": {"value": false},
    "aggregationEnabledProcessTerminate": {"value": false},
    "aggregationEnabledConnectionCreate": {"value": false}
}"#;

impl LiveAgent {
    fn start(label: &str, twin: &str) -> LiveAgent {
        Self::start_sources(label, twin, None)
    }

    /// Starts with `TWINGUARD_SOURCES` set to `Some(value)`, or unset with `Some("")`; `None`
    /// inherits the test's environment (so the whole suite can run with the fallback forced).
    pub(crate) fn start_sources(label: &str, twin: &str, sources: Option<&str>) -> LiveAgent {
        let dir = TempDir::new(label);
        std::fs::write(dir.path("twin.json"), twin).unwrap();
        let mut command = local_agent_command(&dir);
        match sources {
            Some("") => {
                command.env_remove(SOURCES);
            }
            Some(value) => {
                command.env(SOURCES, value);
            }
            None => {}
        }
        let child = command.spawn().unwrap();
        LiveAgent {
            child: Some(child),
            dir,
        }
    }

    /// Starts with the eBPF sources and one-page ring buffers (the hidden
    /// `TWINGUARD_EBPF_RING_BYTES`), so that a storm overflows them.
    fn start_one_page_ring(label: &str) -> LiveAgent {
        let dir = TempDir::new(label);
        std::fs::write(dir.path("twin.json"), LIVE_TWIN).unwrap();
        let mut command = local_agent_command(&dir);
        command
            .env_remove(SOURCES)
            .env("TWINGUARD_EBPF_RING_BYTES", "4096");
        LiveAgent {
            child: Some(command.spawn().unwrap()),
            dir,
        }
    }

    /// The losses of the collector of `events` (the first names it), read after switching
    /// them Off and On again: the status (with the losses) is reported when a collector starts.
    fn losses_after_restart(&self, events: &[&str]) -> u64 {
        let mut off = LIVE_TWIN.to_owned();
        for event in events {
            off = off.replace(
                &format!(r#""eventPriority{event}": {{"value": "High"}}"#),
                &format!(r#""eventPriority{event}": {{"value": "Off"}}"#),
            );
        }
        assert_ne!(off, LIVE_TWIN);
        self.write_twin(&off);
        std::thread::sleep(Duration::from_millis(1500));
        self.write_twin(LIVE_TWIN);
        let t = Instant::now();
        loop {
            let status = self.reported()["twinguard"]["collectors"][events[0]].clone();
            let losses = status["losses"].as_u64().unwrap_or(0);
            if losses > 0 || t.elapsed() > Duration::from_secs(10) {
                return losses;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Replaces the twin file (by rename, as editors do).
    pub(crate) fn write_twin(&self, doc: &str) {
        let tmp = self.dir.path("twin.json.tmp");
        std::fs::write(&tmp, doc).unwrap();
        std::fs::rename(&tmp, self.dir.path("twin.json")).unwrap();
    }

    pub(crate) fn reported(&self) -> Value {
        std::fs::read(self.dir.path("reported.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the collector of `name` reports its source (it is running).
    pub(crate) fn wait_running(&self, name: &str) -> Value {
        let t = Instant::now();
        loop {
            let status = self.reported()["twinguard"]["collectors"][name].clone();
            if status["source"].as_str().is_some_and(|s| !s.is_empty()) {
                return status;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name} did not start: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path("outbox.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The payload items of every event of `name` in the outbox.
    pub(crate) fn items(&self, name: &str) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .flat_map(|m| m["Events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["Name"] == name)
            .flat_map(|e| e["Payload"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (up to 10 s) for an item of `name` that `want` accepts.
    pub(crate) fn find(&self, name: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            if let Some(v) = self.items(name).into_iter().find(|v| want(v)) {
                return v;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let items = self.items(name);
                let tail: Vec<&Value> = items.iter().rev().take(20).collect();
                panic!("no {name} {what} in the outbox; the last ones: {tail:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent (SIGTERM), checks the clean exit and that every message conforms.
    pub(crate) fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "stop took {:?}",
            t.elapsed()
        );
        let bodies: Vec<Vec<u8>> = self.lines().into_iter().map(String::into_bytes).collect();
        validate_messages(&bodies).unwrap();
        stderr
    }
}

impl Drop for LiveAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

pub(crate) fn live_lock(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if !is_root() {
        skip(test, "needs root (netlink proc connector, audit)");
        return None;
    }
    Some(LIVE.lock().unwrap_or_else(|e| e.into_inner()))
}

pub(crate) fn unique() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}{:06}", std::process::id(), n % 1_000_000)
}

/// A whole ProcessCreate's ExtraDetails: nothing Missing, Truncated or otherwise remarkable,
/// only the kinds of its descriptors 0-2 (`Stdin`, `Stdout`, `Stderr`).
fn only_fd_kinds(v: &Value) -> Result<(), String> {
    let Some(extra) = v.get("ExtraDetails") else {
        return Ok(());
    };
    let keys: Vec<&String> = extra.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    if keys
        .iter()
        .all(|k| ["Stdin", "Stdout", "Stderr"].contains(&k.as_str()))
    {
        Ok(())
    } else {
        Err(format!("{v}"))
    }
}

pub(crate) fn pid_of(v: &Value) -> u64 {
    v["ProcessId"].as_u64().unwrap_or(0)
}

#[test]
fn process_create_and_terminate_reach_the_outbox_live() {
    let Some(_guard) = live_lock("process_create_and_terminate_reach_the_outbox_live") else {
        return;
    };
    let agent = LiveAgent::start_sources("ev-process", LIVE_TWIN, Some(""));
    let status = agent.wait_running("ProcessCreate");
    assert_eq!(status["source"], EBPF_SOURCE, "{status}");
    assert_eq!(status["fallback"], false);
    process_events_live(agent);
}

#[test]
fn process_create_and_terminate_reach_the_outbox_live_with_the_fallback_forced() {
    let Some(_guard) =
        live_lock("process_create_and_terminate_reach_the_outbox_live_with_the_fallback_forced")
    else {
        return;
    };
    let agent = LiveAgent::start_sources("ev-process-fallback", LIVE_TWIN, Some("fallback"));
    let status = agent.wait_running("ProcessCreate");
    assert_eq!(status["source"], "netlink proc connector", "{status}");
    assert_eq!(status["fallback"], true);
    assert_eq!(status["note"], "eBPF not tried: TWINGUARD_SOURCES=fallback");
    process_events_live(agent);
}

/// The process events a running agent must report, whichever source it uses.
fn process_events_live(agent: LiveAgent) {
    let tag = unique();
    // Exit code: a shell that lives long enough to be read, then exits 7, with a child.
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "sleep 0.3; exit 7", &format!("tg-exit-{tag}")])
        .spawn()
        .unwrap();
    // Signal death: a sleep with a unique duration, killed with SIGKILL.
    let sleep_arg = format!("30.{tag}");
    let mut sleeper = Command::new("/bin/sleep").arg(&sleep_arg).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    sleeper.kill().unwrap();
    assert_eq!(sh.wait().unwrap().code(), Some(7));
    sleeper.wait().unwrap();
    let (sh_pid, sleep_pid) = (u64::from(sh.id()), u64::from(sleeper.id()));
    let me = u64::from(std::process::id());

    let create = agent.find("ProcessCreate", "for the sleeper", |v| pid_of(v) == sleep_pid);
    assert_eq!(create["Executable"], "/usr/bin/sleep", "{create}");
    assert_eq!(
        create["CommandLine"],
        format!("/bin/sleep {sleep_arg}"),
        "{create}"
    );
    assert_eq!(create["ParentProcessId"].as_u64(), Some(me), "{create}");
    assert_eq!(create["UserId"], "0");
    assert_eq!(create["UserName"], "root");
    assert_eq!(only_fd_kinds(&create), Ok(()));

    let sh_create = agent.find("ProcessCreate", "for the shell", |v| pid_of(v) == sh_pid);
    assert!(
        sh_create["CommandLine"]
            .as_str()
            .unwrap()
            .contains(&format!("tg-exit-{tag}")),
        "{sh_create}"
    );
    // The shell's child `sleep 0.3`: its parent is the shell.
    let child = agent.find("ProcessCreate", "for the shell's child", |v| {
        v["CommandLine"] == "sleep 0.3" && v["ParentProcessId"].as_u64() == Some(sh_pid)
    });
    assert_eq!(child["Executable"], "/usr/bin/sleep");

    let killed = agent.find("ProcessTerminate", "for the sleeper", |v| pid_of(v) == sleep_pid);
    assert_eq!(killed["ExitStatus"], 137, "{killed}");
    assert_eq!(killed["Executable"], "/usr/bin/sleep");
    assert_eq!(killed["ExtraDetails"]["Signal"], "9");
    let exited = agent.find("ProcessTerminate", "for the shell", |v| pid_of(v) == sh_pid);
    assert_eq!(exited["ExitStatus"], 7, "{exited}");
    assert!(exited["Executable"].as_str().unwrap().ends_with("sh"), "{exited}");
    let child_exit = agent.find("ProcessTerminate", "for the shell's child", |v| {
        pid_of(v) == pid_of(&child)
    });
    assert_eq!(child_exit["ExitStatus"], 0);

    // Forked children are processes (each ends with its own ProcessTerminate, with the
    // parent's executable); threads are not.
    let mut forks = Command::new("/usr/bin/perl")
        .args([
            "-e",
            "my @p; for (1..5) { my $p = fork(); exit 0 unless $p; push @p, $p } waitpid($_, 0) for @p",
        ])
        .spawn()
        .unwrap();
    forks.wait().unwrap();
    let perl_pid = u64::from(forks.id());
    agent.find("ProcessTerminate", "for perl", |v| pid_of(v) == perl_pid);
    let perl_exits = agent
        .items("ProcessTerminate")
        .iter()
        .filter(|v| v["Executable"] == "/usr/bin/perl" && (perl_pid..perl_pid + 20).contains(&pid_of(v)))
        .count();
    assert_eq!(perl_exits, 6, "perl and its 5 forked children");
    let mut threads = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import threading; ts = [threading.Thread(target=lambda: None) for _ in range(20)]; \
             [t.start() for t in ts]; [t.join() for t in ts]",
        ])
        .spawn()
        .unwrap();
    threads.wait().unwrap();
    let py_pid = u64::from(threads.id());
    let py_exit = agent.find("ProcessTerminate", "for python", |v| pid_of(v) == py_pid);
    assert_eq!(py_exit["ExitStatus"], 0);
    std::thread::sleep(Duration::from_millis(1500));
    let thread_exits = agent
        .items("ProcessTerminate")
        .iter()
        .filter(|v| {
            (py_pid + 1..py_pid + 30).contains(&pid_of(v))
                && v["Executable"].as_str().unwrap_or("").contains("python")
        })
        .count();
    assert_eq!(thread_exits, 0, "thread exits are not process exits");

    // Off at runtime stops the collector; High again starts it.
    let off = LIVE_TWIN
        .replace(
            r#""eventPriorityProcessCreate": {"value": "High"}"#,
            r#""eventPriorityProcessCreate": {"value": "Off"}"#,
        )
        .replace(
            r#""eventPriorityProcessTerminate": {"value": "High"}"#,
            r#""eventPriorityProcessTerminate": {"value": "Off"}"#,
        );
    agent.write_twin(&off);
    std::thread::sleep(Duration::from_millis(1500));
    let threads = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let agent_pid = agent.child.as_ref().unwrap().id();
    assert!(
        !threads(agent_pid)
            .iter()
            .any(|t| t.starts_with("collect-Process")),
        "{:?}",
        threads(agent_pid)
    );
    let mut unseen = Command::new("/bin/sleep").arg("0.2").spawn().unwrap();
    unseen.wait().unwrap();
    agent.write_twin(LIVE_TWIN);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        threads(agent_pid)
            .iter()
            .any(|t| t.starts_with("collect-Process")),
        "{:?}",
        threads(agent_pid)
    );
    let mut seen = Command::new("/bin/sleep").arg("0.2").spawn().unwrap();
    seen.wait().unwrap();
    agent.find("ProcessCreate", "after the collector restarted", |v| {
        pid_of(v) == u64::from(seen.id())
    });
    assert!(
        !agent
            .items("ProcessCreate")
            .iter()
            .any(|v| pid_of(v) == u64::from(unseen.id())),
        "an event while Off"
    );
    // Its own self-test is not reported (other agents' self-tests, of tests running beside this
    // one, are processes like any other).
    let own_marker = format!("twinguard-self-test-{agent_pid}-");
    assert!(
        !agent
            .items("ProcessCreate")
            .iter()
            .any(|v| v["CommandLine"].as_str().unwrap_or("").contains(&own_marker)),
        "the eBPF self-test's own exec is not reported"
    );
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// 2,000 `/bin/true` with unique arguments, from 8 shells in parallel, as fast as the machine
/// runs them: with the eBPF source every one is reported whole (executable as `/proc` shows
/// it, the whole command line, the shell as parent, the user), and each exit with its status.
#[test]
fn ebpf_reports_every_exec_of_a_storm_whole() {
    let Some(_guard) = live_lock("ebpf_reports_every_exec_of_a_storm_whole") else {
        return;
    };
    let agent = LiveAgent::start_sources("ev-storm", LIVE_TWIN, Some(""));
    let status = agent.wait_running("ProcessCreate");
    assert_eq!(status["source"], EBPF_SOURCE, "{status}");
    let tag = unique();
    let (shells, per_shell) = (8usize, 250usize);
    let started = Instant::now();
    let children: Vec<Child> = (0..shells)
        .map(|s| {
            Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "i=0; while [ $i -lt {per_shell} ]; do /bin/true tg-storm-{tag}-{s}-$i; i=$((i+1)); done"
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    let shell_pids: Vec<u64> = children.iter().map(|c| u64::from(c.id())).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let took = started.elapsed();
    let total = shells * per_shell;
    eprintln!(
        "storm: {total} execs in {:.2} s ({:.0}/s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    let prefix = format!("/bin/true tg-storm-{tag}-");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (creates, terminates) = loop {
        let creates: Vec<Value> = agent
            .items("ProcessCreate")
            .into_iter()
            .filter(|v| v["CommandLine"].as_str().is_some_and(|c| c.starts_with(&prefix)))
            .collect();
        let pids: std::collections::HashSet<u64> = creates.iter().map(pid_of).collect();
        let terminates: Vec<Value> = agent
            .items("ProcessTerminate")
            .into_iter()
            .filter(|v| pids.contains(&pid_of(v)))
            .collect();
        if (creates.len() >= total && terminates.len() >= total) || Instant::now() > deadline {
            break (creates, terminates);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let status = agent.reported()["twinguard"]["collectors"]["ProcessCreate"].clone();
    assert_eq!(
        creates.len(),
        total,
        "ProcessCreate of the storm; status {status}"
    );
    let mut seen = std::collections::HashSet::new();
    for c in &creates {
        let line = c["CommandLine"].as_str().unwrap();
        let (shell, _) = line[prefix.len()..].split_once('-').unwrap();
        let shell: usize = shell.parse().unwrap();
        assert!(seen.insert(line.to_owned()), "twice: {c}");
        assert_eq!(c["Executable"], "/usr/bin/true", "{c}");
        assert_eq!(c["ParentProcessId"].as_u64(), Some(shell_pids[shell]), "{c}");
        assert_eq!(
            (c["UserId"].as_str(), c["UserName"].as_str()),
            (Some("0"), Some("root"))
        );
        assert_eq!(only_fd_kinds(c), Ok(()));
    }
    assert_eq!(terminates.len(), total, "ProcessTerminate of the storm");
    for t in &terminates {
        assert_eq!(t["ExitStatus"], 0, "{t}");
        assert_eq!(t["Executable"], "/usr/bin/true", "{t}");
    }
    let status = agent.reported()["twinguard"]["collectors"]["ProcessCreate"].clone();
    assert_eq!(status["losses"], 0, "{status}");
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A ring buffer forced to overflow (one page, not drained while 300 processes run): every
/// record the kernel programs offered was either delivered or counted as dropped, exactly.
#[test]
fn ebpf_ring_overflow_is_counted_exactly() {
    let Some(_guard) = live_lock("ebpf_ring_overflow_is_counted_exactly") else {
        return;
    };
    let mut probes =
        twinguard::sys::ebpf::ProcessProbes::load_with_ring(4096).unwrap_or_else(|e| panic!("{}", e.chain()));
    for i in 0..300 {
        Command::new("/bin/true")
            .arg(format!("tg-overflow-{i}"))
            .status()
            .unwrap();
    }
    let mut delivered = 0u64;
    // The machine is shared: settle on a moment when nothing arrived between two readings.
    for _ in 0..100 {
        delivered += probes.drain(usize::MAX, &mut |_| {}) as u64;
        let before = probes.counts().unwrap();
        let late = probes.drain(usize::MAX, &mut |_| {}) as u64;
        delivered += late;
        let after = probes.counts().unwrap();
        if late == 0 && before == after {
            assert!(after.dropped > 0, "a 4 KiB ring did not overflow: {after:?}");
            assert_eq!(
                after.offered,
                delivered + after.dropped,
                "offered = delivered + dropped: {after:?}, delivered {delivered}"
            );
            eprintln!("overflow: {after:?}, delivered {delivered}");
            return;
        }
    }
    panic!("the machine never went quiet long enough to compare the counts");
}

/// The agent with a one-page ring buffer (the hidden `TWINGUARD_EBPF_RING_BYTES`) under a storm:
/// what the kernel could not deliver is in the collector's losses, so the events captured plus
/// the losses cover every process launched.
#[test]
fn ebpf_losses_reach_the_collector_status() {
    let Some(_guard) = live_lock("ebpf_losses_reach_the_collector_status") else {
        return;
    };
    let agent = LiveAgent::start_one_page_ring("ev-ebpf-losses");
    let status = agent.wait_running("ProcessCreate");
    assert_eq!(status["source"], EBPF_SOURCE, "{status}");
    let tag = unique();
    let total = 1000usize;
    let children: Vec<Child> = (0..4)
        .map(|s| {
            Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "i=0; while [ $i -lt {} ]; do /bin/true tg-lossy-{tag}-{s}-$i; i=$((i+1)); done",
                    total / 4
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        c.wait().unwrap();
    }
    // The losses reach the status as they grow, while the collector runs (a report made only
    // for them comes at most every 10 s): wait for the report that covers the whole storm.
    let prefix = format!("/bin/true tg-lossy-{tag}-");
    let t = Instant::now();
    let (captured, losses) = loop {
        let status = agent.reported()["twinguard"]["collectors"]["ProcessCreate"].clone();
        let losses = status["losses"].as_u64().unwrap_or(0);
        let captured = agent
            .items("ProcessCreate")
            .iter()
            .filter(|v| v["CommandLine"].as_str().is_some_and(|c| c.starts_with(&prefix)))
            .count();
        if captured as u64 + losses >= total as u64 || t.elapsed() > Duration::from_secs(30) {
            break (captured, losses);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("one-page ring: {captured} of {total} captured, {losses} records lost (counted)");
    assert!(losses > 0, "a one-page ring lost nothing?");
    assert!(
        captured as u64 + losses >= total as u64,
        "captured {captured} + lost {losses} < {total}"
    );
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A 100 KB argument list: the command line is cut at 8 KiB and marked, by either source.
#[test]
fn a_long_argument_list_is_cut_at_8_kib_and_marked() {
    let Some(_guard) = live_lock("a_long_argument_list_is_cut_at_8_kib_and_marked") else {
        return;
    };
    for sources in ["", "fallback"] {
        let agent = LiveAgent::start_sources("ev-long-args", LIVE_TWIN, Some(sources));
        agent.wait_running("ProcessCreate");
        let tag = unique();
        let args: Vec<String> = (0..1000)
            .map(|i| format!("tg-long-{tag}-{i:04}-{}", "x".repeat(80)))
            .collect();
        // The shell lives long enough for the fallback to read it too.
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg("sleep 0.3")
            .args(&args)
            .spawn()
            .unwrap();
        child.wait().unwrap();
        let pid = u64::from(child.id());
        let c = agent.find("ProcessCreate", "for the long argument list", |v| {
            pid_of(v) == pid
        });
        let line = c["CommandLine"].as_str().unwrap();
        assert_eq!(line.len(), 8192, "{sources}: {}", &line[..100]);
        assert!(
            line.starts_with(&format!("/bin/sh -c sleep 0.3 tg-long-{tag}-0000-")),
            "{line}"
        );
        // `sleep 0.3` holds a space, so Argv is there too, cut at the same bytes.
        assert_eq!(
            c["ExtraDetails"]["Truncated"], "CommandLine;Argv",
            "{sources}: {c}"
        );
        let argv: Vec<String> = serde_json::from_str(c["ExtraDetails"]["Argv"].as_str().unwrap()).unwrap();
        assert_eq!(argv[..3], ["/bin/sh", "-c", "sleep 0.3"], "{sources}");
        assert!(
            argv.len() < 1003 && argv[3] == args[0],
            "{sources}: {}",
            argv.len()
        );
        assert!(c["Executable"].as_str().unwrap().ends_with("/dash"), "{c}");
        let stderr = agent.stop();
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

fn tool(path: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    p.is_file().then_some(p)
}

/// `auditctl` output, when the tool is installed (to check the agent's rules and state).
fn auditctl(args: &[&str]) -> Option<String> {
    let out = Command::new(tool("/usr/sbin/auditctl").or_else(|| tool("/sbin/auditctl"))?)
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The audit manager's lock, when no twinguard holds it (no agent manages audit now).
fn audit_lock() -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/run/twinguard/audit.lock").ok()?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(f)
}

fn audit_enabled() -> Option<String> {
    auditctl(&["-s"])?
        .lines()
        .find_map(|l| l.strip_prefix("enabled ").map(str::to_owned))
}

/// A Python program started in the background; its first stdout line is read.
struct Helper {
    child: Child,
    first_line: String,
}

impl Helper {
    fn start(code: &str, args: &[String]) -> Helper {
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(code)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        std::io::BufRead::read_line(&mut out, &mut first_line).unwrap();
        Helper { child, first_line }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    fn numbers(&self) -> Vec<u16> {
        self.first_line
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HOLDING_SERVER: &str = r#"
import socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(16)
print(l.getsockname()[1], flush=True)
held = []
while True:
    c, _ = l.accept(); held.append(c)
"#;

const DUAL_SERVER: &str = r#"
import socket, time
l4 = socket.socket(); l4.bind(("127.0.0.1", 0)); l4.listen(16)
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 0)); l6.listen(16)
print(l4.getsockname()[1], l6.getsockname()[1], flush=True)
held = [l4.accept(), l6.accept()]
time.sleep(60)
"#;

const CLIENT: &str = r#"
import socket, sys, time
p4, p6, p0 = map(int, sys.argv[1:4])
a = socket.create_connection(("127.0.0.1", p4))
b = socket.socket(socket.AF_INET6); b.setblocking(False)
try:
    b.connect(("::1", p6))
except BlockingIOError:
    pass
c = socket.create_connection(("127.0.0.1", p0))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("127.0.0.1", 9))
x = socket.socket(socket.AF_UNIX)
try:
    x.connect("/dev/log")
except OSError:
    pass
time.sleep(0.3)
print(a.getsockname()[1], b.getsockname()[1], c.getsockname()[1], u.getsockname()[1], flush=True)
time.sleep(60)
"#;

fn port_of(v: &Value, field: &str) -> u16 {
    v[field].as_str().and_then(|p| p.parse().ok()).unwrap_or(0)
}

#[test]
fn connection_create_live_in_and_out_ipv4_ipv6_blocking_non_blocking_and_pre_existing() {
    let test = "connection_create_live_in_and_out_ipv4_ipv6_blocking_non_blocking_and_pre_existing";
    let Some(_guard) = live_lock(test) else {
        return;
    };
    if tool("/usr/bin/python3").is_none() {
        skip(test, "needs /usr/bin/python3 for the client and server processes");
        return;
    }
    let lock_was_free = audit_lock().is_some();
    let enabled_before = audit_enabled();
    // A server started before the agent, and kept out of audit by a rule of our own, as a
    // process started before audit was ever enabled is: only polling can see its connections.
    let old_server = Helper::start(HOLDING_SERVER, &[]);
    let p0 = old_server.numbers()[0];
    let exclude_pid = format!("pid={}", old_server.pid());
    let exclude = |op: &str| {
        let arch = if cfg!(target_pointer_width = "64") {
            "arch=b64"
        } else {
            "arch=b32"
        };
        let args = [
            op,
            "exit,never",
            "-F",
            arch,
            "-S",
            "connect",
            "-S",
            "accept4",
            "-F",
            &exclude_pid,
            "-k",
            "tg-it-exclude",
        ];
        auditctl(&args).is_some()
    };
    let excluded = exclude("-A");

    // This test is of the audit source (the fallback of the eBPF one).
    let agent = LiveAgent::start_sources("ev-connection", LIVE_TWIN, Some("fallback"));
    let status = agent.wait_running("ConnectionCreate");
    // Ready when the rules are in place (or, without auditctl to look, after a while).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        match auditctl(&["-l"]) {
            Some(rules) if rules.contains("key=twinguard") => break,
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
            None => {
                std::thread::sleep(Duration::from_millis(1500));
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));

    let server = Helper::start(DUAL_SERVER, &[]);
    let (p4, p6) = (server.numbers()[0], server.numbers()[1]);
    let client = Helper::start(CLIENT, &[p4.to_string(), p6.to_string(), p0.to_string()]);
    let ports = client.numbers();
    let (a, b, c, udp) = (ports[0], ports[1], ports[2], ports[3]);

    // IPv4, blocking, out and in.
    let out4 = agent.find("ConnectionCreate", "out to the IPv4 server", |v| {
        v["Direction"] == "Out" && pid_of(v) == client.pid() && port_of(v, "RemotePort") == p4
    });
    assert_eq!(out4["RemoteAddress"], "127.0.0.1");
    assert_eq!(port_of(&out4, "LocalPort"), a, "{out4}");
    assert_eq!(out4["LocalAddress"], "127.0.0.1");
    assert_eq!(out4["Protocol"], "TCP");
    assert_eq!(out4["Executable"], "/usr/bin/python3.11");
    assert_eq!(out4["UserId"], "0");
    assert_eq!(out4["ExtraDetails"]["Source"], "audit", "{out4}");
    assert_eq!(out4["ExtraDetails"]["Syscall"], "connect");
    assert!(out4["CommandLine"]
        .as_str()
        .unwrap()
        .starts_with("/usr/bin/python3 -c"));
    let in4 = agent.find("ConnectionCreate", "in at the IPv4 server", |v| {
        v["Direction"] == "In" && pid_of(v) == server.pid() && port_of(v, "LocalPort") == p4
    });
    assert_eq!(
        (in4["RemoteAddress"].as_str(), port_of(&in4, "RemotePort")),
        (Some("127.0.0.1"), a),
        "{in4}"
    );
    assert_eq!(in4["ExtraDetails"]["Source"], "audit");
    // IPv6, non-blocking (EINPROGRESS), out and in.
    let out6 = agent.find("ConnectionCreate", "out to the IPv6 server", |v| {
        v["Direction"] == "Out" && pid_of(v) == client.pid() && port_of(v, "RemotePort") == p6
    });
    assert_eq!(out6["RemoteAddress"], "::1");
    assert_eq!(port_of(&out6, "LocalPort"), b, "{out6}");
    assert_eq!(out6["ExtraDetails"]["InProgress"], "true", "{out6}");
    let in6 = agent.find("ConnectionCreate", "in at the IPv6 server", |v| {
        v["Direction"] == "In" && pid_of(v) == server.pid() && port_of(v, "LocalPort") == p6
    });
    assert_eq!(
        (in6["RemoteAddress"].as_str(), port_of(&in6, "RemotePort")),
        (Some("::1"), b),
        "{in6}"
    );
    // The server started before the agent: its side comes from polling.
    let old_in = agent.find(
        "ConnectionCreate",
        "in at the server started before the agent",
        |v| v["Direction"] == "In" && pid_of(v) == old_server.pid() && port_of(v, "LocalPort") == p0,
    );
    assert_eq!(port_of(&old_in, "RemotePort"), c, "{old_in}");
    assert_eq!(old_in["Executable"], "/usr/bin/python3.11");
    if excluded {
        assert_eq!(old_in["ExtraDetails"]["Source"], "poll", "{old_in}");
    }
    agent.find("ConnectionCreate", "out to the old server", |v| {
        v["Direction"] == "Out" && pid_of(v) == client.pid() && port_of(v, "RemotePort") == p0
    });
    // Once only: audit and polling do not both report a connection.
    std::thread::sleep(Duration::from_millis(2500));
    let items = agent.items("ConnectionCreate");
    for (what, want) in [
        ("out4", &out4),
        ("in4", &in4),
        ("out6", &out6),
        ("in6", &in6),
        ("old_in", &old_in),
    ] {
        let same = items
            .iter()
            .filter(|v| {
                v["Direction"] == want["Direction"]
                    && v["LocalPort"] == want["LocalPort"]
                    && v["RemotePort"] == want["RemotePort"]
            })
            .count();
        assert_eq!(same, 1, "{what} reported {same} times");
    }
    // Not TCP: the UDP connect and the UNIX socket are not connections.
    assert!(
        !items
            .iter()
            .any(|v| port_of(v, "LocalPort") == udp || port_of(v, "RemotePort") == 9),
        "UDP reported"
    );

    drop(client);
    drop(server);
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
    if excluded {
        exclude("-d");
    }
    // The agent's rules are gone and audit is as it was - unless another twinguard on this
    // machine (another test's agent) manages audit now: it holds the lock and its rules.
    if let Some(_lock) = audit_lock() {
        if let Some(rules) = auditctl(&["-l"]) {
            assert!(!rules.contains("twinguard"), "rules left behind: {rules}");
            if lock_was_free {
                assert_eq!(audit_enabled(), enabled_before, "audit state not restored");
            }
        }
        assert!(!twinguard::collect::audit::state_file_exists());
    }
    assert_eq!(status["source"], "audit netlink + sock_diag polling", "{status}");
}

/// Sends a user-space audit message (as sshd's libaudit does) from this process.
fn send_user_audit_message(kind: u16, text: &str) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket() takes no pointers; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 9) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut msg = Vec::new();
    let len = 16 + text.len() + 1;
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&0x5u16.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(text.as_bytes());
    msg.push(0);
    // SAFETY: sockaddr_nl is plain data; all-zero is the kernel's address.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `kernel` are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn login_from_pam_and_sshd_style_audit_records_live() {
    let test = "login_from_pam_and_sshd_style_audit_records_live";
    let Some(_guard) = live_lock(test) else {
        return;
    };
    let (Some(su), Some(runuser)) = (
        tool("/usr/bin/su").or_else(|| tool("/bin/su")),
        tool("/usr/sbin/runuser").or_else(|| tool("/sbin/runuser")),
    ) else {
        skip(test, "needs su and runuser (util-linux) for PAM authentications");
        return;
    };
    let agent = LiveAgent::start("ev-login", LIVE_TWIN);
    let status = agent.wait_running("Login");
    assert_eq!(status["fallback"], false, "{status}");
    let su_name = su.to_string_lossy().into_owned();

    // A successful PAM authentication (root: pam_rootok). The collector may still be joining
    // audit when the first one runs, so try until one is seen.
    let t = Instant::now();
    let ok = loop {
        let mut child = Command::new(&su)
            .args(["root", "-c", "true"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        child.wait().unwrap();
        let pid = u64::from(child.id());
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(v) = agent.items("Login").into_iter().find(|v| pid_of(v) == pid) {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no Login for su (pid {pid}): {:?}",
            agent.items("Login")
        );
    };
    assert_eq!(ok["Operation"], "authentication", "{ok}");
    assert_eq!(ok["Result"], "Success");
    assert_eq!(ok["UserName"], "root");
    assert_eq!(ok["UserId"], "0");
    assert_eq!(ok["Executable"], su_name.as_str());

    // A failed one: nobody asking su for root's password with no terminal.
    let mut failing = Command::new(&runuser)
        .args(["-u", "nobody", "--"])
        .arg(&su)
        .args(["root", "-c", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    failing.wait().unwrap();
    let failed = agent.find("Login", "failed authentication by su", |v| {
        v["Result"] == "Fail" && v["Executable"] == su_name.as_str() && v["Operation"] == "authentication"
    });
    assert_eq!(failed["UserName"], "root", "{failed}");
    assert!(
        pid_of(&failed) > u64::from(failing.id()),
        "su runs as runuser's child"
    );

    // An sshd-style USER_LOGIN record from a remote address.
    let user = format!("tg-{}", unique());
    let text = format!(
        "op=login acct=\"{user}\" exe=\"/usr/sbin/sshd\" hostname=203.0.113.9 addr=203.0.113.9 terminal=ssh res=failed"
    );
    send_user_audit_message(1112, &text).unwrap();
    let login = agent.find("Login", "sshd-style login", |v| v["UserName"] == user.as_str());
    assert_eq!(login["Operation"], "login");
    assert_eq!(login["Result"], "Fail");
    assert_eq!(login["RemoteAddress"], "203.0.113.9");
    assert_eq!(login["Executable"], "/usr/sbin/sshd");
    assert_eq!(pid_of(&login), u64::from(std::process::id()));
    assert!(login.get("UserId").is_none(), "no such local user: {login}");
    assert_eq!(login["ExtraDetails"]["Terminal"], "ssh");
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn login_fallback_follows_real_wtmp_and_btmp_records_with_a_checkpoint() {
    use std::sync::{Arc, Mutex};
    use twinguard::collect::login::LoginCollector;
    use twinguard::collect::{EventSink, StopSignal, StreamCollector};
    use twinguard_core::event::{Event, MessageFrame};

    let dir = TempDir::new("ev-utmp");
    let wtmp_fixture = std::fs::read(fixture("utmp/wtmp")).unwrap();
    let btmp_fixture = std::fs::read(fixture("utmp/btmp")).unwrap();
    let record = |bytes: &[u8], n: usize| bytes[n * 384..(n + 1) * 384].to_vec();
    let (wtmp, btmp, checkpoint) = (dir.path("wtmp"), dir.path("btmp"), dir.path("login.checkpoint"));
    // History before the agent: not reported.
    std::fs::write(&wtmp, record(&wtmp_fixture, 0)).unwrap();
    std::fs::write(&btmp, b"").unwrap();

    let run = |wait_for: usize, append: &dyn Fn()| -> Vec<Event> {
        let got: Arc<Mutex<Vec<Event>>> = Arc::default();
        let sink_got = got.clone();
        let sink = EventSink::new(move |e| {
            sink_got.lock().unwrap().push(e);
            true
        });
        let stop = StopSignal::new();
        let mut collector = LoginCollector::files_only(wtmp.clone(), btmp.clone(), Some(checkpoint.clone()));
        let (thread_stop, thread_sink) = (stop.clone(), sink.clone());
        let handle = std::thread::spawn(move || collector.run(&thread_sink, &thread_stop));
        std::thread::sleep(Duration::from_millis(300));
        append();
        let t = Instant::now();
        while got.lock().unwrap().len() < wait_for && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1200));
        stop.stop();
        handle.join().unwrap().unwrap();
        let events = got.lock().unwrap().clone();
        events
    };
    let append = |path: &PathBuf, bytes: Vec<u8>| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(&bytes).unwrap();
    };

    // A login, an IPv6 login, a logout (not a login) and a failed attempt.
    let events = run(3, &|| {
        let mut new = record(&wtmp_fixture, 1);
        new.extend(record(&wtmp_fixture, 2));
        new.extend(record(&wtmp_fixture, 3));
        append(&wtmp, new);
        append(&btmp, btmp_fixture.clone());
    });
    let items: Vec<Value> = events
        .iter()
        .flat_map(|e| {
            serde_json::to_value(e.payload())
                .unwrap()
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    assert_eq!(items.len(), 3, "{items:#?}");
    let pi = items.iter().find(|v| v["UserName"] == "pi").unwrap();
    assert_eq!(
        (pi["Operation"].as_str(), pi["Result"].as_str()),
        (Some("wtmp"), Some("Success"))
    );
    assert_eq!(pi["RemoteAddress"], "192.0.2.10");
    assert_eq!(pi["ProcessId"], 4242);
    assert_eq!(pi["ExtraDetails"]["Terminal"], "pts/0");
    let admin = items.iter().find(|v| v["UserName"] == "admin").unwrap();
    assert_eq!(admin["RemoteAddress"], "2001:db8::7");
    let failed = items.iter().find(|v| v["Operation"] == "btmp").unwrap();
    assert_eq!(
        (failed["UserName"].as_str(), failed["Result"].as_str()),
        (Some("root"), Some("Fail"))
    );
    assert_eq!(failed["UserId"], "0");
    assert_eq!(failed["RemoteAddress"], "198.51.100.23");
    // The record's own time is the event's.
    assert_eq!(
        events
            .iter()
            .find(|e| serde_json::to_value(e.payload()).unwrap()[0]["UserName"] == "pi")
            .unwrap()
            .time()
            .millis_since_epoch(),
        1_700_000_000_000
    );
    let frame = MessageFrame::new("0.1.0", uuid::Uuid::new_v4());
    let bodies: Vec<Vec<u8>> = events.iter().map(|e| frame.assemble(&[e.to_json()])).collect();
    validate_messages(&bodies).unwrap();

    // The checkpoint holds both files' ends; a restart reports only what is new.
    let saved = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(
        saved.contains(&format!(" {}\n", 4 * 384)) && saved.contains(" 384\n"),
        "{saved}"
    );
    let events = run(1, &|| append(&wtmp, record(&wtmp_fixture, 1)));
    assert_eq!(events.len(), 1, "only the new record after a restart");
}

#[test]
fn audit_rules_and_state_left_by_a_killed_agent_are_cleaned_by_the_next() {
    let test = "audit_rules_and_state_left_by_a_killed_agent_are_cleaned_by_the_next";
    let Some(_guard) = live_lock(test) else {
        return;
    };
    if auditctl(&["-s"]).is_none() {
        skip(
            test,
            "needs auditctl (Debian package auditd) to look at the audit state",
        );
        return;
    }
    let alone = audit_lock().is_some();
    let enabled_before = audit_enabled();
    // The rules are the audit connection source's (the fallback of the eBPF one).
    let mut first = LiveAgent::start_sources("ev-crash-1", LIVE_TWIN, Some("fallback"));
    first.wait_running("ConnectionCreate");
    let t = Instant::now();
    while !auditctl(&["-l"]).unwrap_or_default().contains("key=twinguard") {
        assert!(t.elapsed() < Duration::from_secs(10), "no rules");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut child = first.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    if alone && audit_lock().is_some() {
        assert!(
            auditctl(&["-l"]).unwrap().contains("key=twinguard"),
            "a killed agent cannot clean up"
        );
        assert!(twinguard::collect::audit::state_file_exists());
    }
    let second = LiveAgent::start_sources("ev-crash-2", LIVE_TWIN, Some("fallback"));
    second.wait_running("ConnectionCreate");
    std::thread::sleep(Duration::from_millis(1500));
    second.stop();
    if let Some(_lock) = audit_lock() {
        let rules = auditctl(&["-l"]).unwrap();
        assert!(!rules.contains("twinguard"), "stale rules left: {rules}");
        assert!(!twinguard::collect::audit::state_file_exists());
        if alone {
            assert_eq!(
                audit_enabled(),
                enabled_before,
                "the state before the crash is restored"
            );
        }
    }
}

/// Two listeners (IPv4 and IPv6 loopback) that accept `n` connections each and close every
/// one at once; prints the ports, then `done` when all are accepted.
const CLOSING_SERVER: &str = r#"
import select, socket, sys
n = int(sys.argv[1])
l4 = socket.socket(); l4.bind(("127.0.0.1", 0)); l4.listen(1024)
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 0)); l6.listen(1024)
print(l4.getsockname()[1], l6.getsockname()[1], flush=True)
left = {l4: n, l6: n}
while any(left.values()):
    ready, _, _ = select.select([l for l in left if left[l]], [], [], 30)
    if not ready:
        break
    for l in ready:
        c, _ = l.accept(); c.close(); left[l] -= 1
print("done", flush=True)
sys.stdin.read()
"#;

/// Connects `n` times to each port (IPv4, then IPv6), every other connect non-blocking, and
/// closes each socket at once.
const CLOSING_CLIENT: &str = r#"
import socket, sys
p4, p6, n = map(int, sys.argv[1:4])
for family, host, port in ((socket.AF_INET, "127.0.0.1", p4), (socket.AF_INET6, "::1", p6)):
    for i in range(n):
        s = socket.socket(family)
        if i % 2:
            s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        s.close()
"#;

/// Starts an agent with `twin` (and `TWINGUARD_SOURCES` as `sources` says, see
/// [`LiveAgent::start_sources`]), waits for its audit rules when audit is its source, runs the
/// closing server and client for `n` connections per family; returns (agent, server pid,
/// client pid, port4, port6).
fn short_connections(
    label: &str,
    twin: &str,
    n: usize,
    sources: Option<&str>,
) -> (LiveAgent, u64, u64, u16, u16) {
    let agent = LiveAgent::start_sources(label, twin, sources);
    let status = agent.wait_running("ConnectionCreate");
    // Another agent on this machine may manage audit for a while (with its own rules): wait
    // until the rules of this version (four) are in place (not needed with the eBPF source).
    let t = Instant::now();
    while status["source"] != CONNECTION_EBPF_SOURCE && t.elapsed() < Duration::from_secs(30) {
        match auditctl(&["-l"]) {
            Some(rules) if rules.matches("key=twinguard").count() >= 4 => break,
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
            None => {
                std::thread::sleep(Duration::from_millis(1500));
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (server_pid, client_pid, p4, p6) = closing_connections(n);
    (agent, server_pid, client_pid, p4, p6)
}

/// Runs the closing server and client for `n` connections per family; returns (server pid,
/// client pid, port4, port6) once the server accepted all.
fn closing_connections(n: usize) -> (u64, u64, u16, u16) {
    let mut server = Command::new("/usr/bin/python3")
        .args(["-c", CLOSING_SERVER, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let ports: Vec<u16> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
    let (p4, p6) = (ports[0], ports[1]);
    let client = Command::new("/usr/bin/python3")
        .args([
            "-c",
            CLOSING_CLIENT,
            &p4.to_string(),
            &p6.to_string(),
            &n.to_string(),
        ])
        .spawn()
        .unwrap();
    let client_pid = u64::from(client.id());
    let done = client.wait_with_output().unwrap();
    assert!(done.status.success());
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "done", "the server did not accept every connection");
    let server_pid = u64::from(server.id());
    drop(server.stdin.take());
    let _ = server.wait();
    (server_pid, client_pid, p4, p6)
}

/// Waits (up to 20 s) until the outbox has `n` Out events of `client` and `n` In events of
/// `server` to each of the two ports; returns the ConnectionCreate items then.
fn wait_short_connections(
    agent: &LiveAgent,
    (server, client): (u64, u64),
    (p4, p6): (u16, u16),
    n: usize,
) -> Vec<Value> {
    let count = |items: &[Value], dir: &str, pid: u64, port_field: &str, port: u16| {
        items
            .iter()
            .filter(|v| v["Direction"] == dir && pid_of(v) == pid && port_of(v, port_field) == port)
            .count()
    };
    let t = Instant::now();
    let mut items = agent.items("ConnectionCreate");
    while t.elapsed() < Duration::from_secs(20) {
        let all = [
            count(&items, "Out", client, "RemotePort", p4),
            count(&items, "Out", client, "RemotePort", p6),
            count(&items, "In", server, "LocalPort", p4),
            count(&items, "In", server, "LocalPort", p6),
        ];
        if all.iter().all(|c| *c >= n) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        items = agent.items("ConnectionCreate");
    }
    items
}

#[test]
fn connection_create_every_short_connection_ipv4_and_ipv6_blocking_and_not() {
    let test = "connection_create_every_short_connection_ipv4_and_ipv6_blocking_and_not";
    let Some(_guard) = live_lock(test) else {
        return;
    };
    if tool("/usr/bin/python3").is_none() {
        skip(test, "needs /usr/bin/python3 for the client and server processes");
        return;
    }
    const N: usize = 200;
    // This test is of the audit source (the fallback of the eBPF one).
    let (agent, server, client, p4, p6) = short_connections("ev-short", LIVE_TWIN, N, Some("fallback"));
    let items = wait_short_connections(&agent, (server, client), (p4, p6), N);
    for (port, remote) in [(p4, "127.0.0.1"), (p6, "::1")] {
        let outs: Vec<&Value> = items
            .iter()
            .filter(|v| v["Direction"] == "Out" && port_of(v, "RemotePort") == port)
            .collect();
        let ins: Vec<&Value> = items
            .iter()
            .filter(|v| {
                v["Direction"] == "In" && v["RemoteAddress"] == remote && port_of(v, "LocalPort") == port
            })
            .collect();
        let in_any: Vec<&Value> = items
            .iter()
            .filter(|v| v["Direction"] == "In" && pid_of(v) == server)
            .collect();
        assert_eq!(
            (outs.len(), ins.len(), in_any.len()),
            (N, N, 2 * N),
            "to port {port}: Out, In at the port, In of the server (In ones without it: {:?})",
            in_any
                .iter()
                .filter(|v| port_of(v, "LocalPort") != p4 && port_of(v, "LocalPort") != p6)
                .map(|v| (&v["LocalAddress"], &v["LocalPort"], &v["ExtraDetails"]["Missing"]))
                .take(5)
                .collect::<Vec<_>>()
        );
        for o in &outs {
            assert_eq!(pid_of(o), client, "{o}");
            assert_eq!(o["RemoteAddress"], remote, "{o}");
            assert_eq!(o["ExtraDetails"]["Source"], "audit", "{o}");
            let missing = o["ExtraDetails"]["Missing"].as_str().unwrap_or("");
            if o["LocalPort"].is_null() {
                assert!(missing.contains("LocalPort"), "{o}");
            }
            if o["LocalAddress"].is_null() {
                assert!(missing.contains("LocalAddress"), "{o}");
            }
        }
        let non_blocking = outs
            .iter()
            .filter(|o| o["ExtraDetails"]["InProgress"] == "true")
            .count();
        assert!(
            non_blocking >= N / 2,
            "{non_blocking} connects in progress of {N}"
        );
        for i in &ins {
            assert_eq!(pid_of(i), server, "{i}");
            assert_eq!(i["LocalAddress"], remote, "{i}");
        }
    }
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn connection_create_repeated_connections_aggregate_into_one_item_with_their_hit_count() {
    let test = "connection_create_repeated_connections_aggregate_into_one_item_with_their_hit_count";
    let Some(_guard) = live_lock(test) else {
        return;
    };
    if tool("/usr/bin/python3").is_none() {
        skip(test, "needs /usr/bin/python3 for the client and server processes");
        return;
    }
    const N: usize = 30;
    let twin = LIVE_TWIN
        .replace(
            r#""aggregationEnabledConnectionCreate": {"value": false}"#,
            r#""aggregationEnabledConnectionCreate": {"value": true}"#,
        )
        .replace(
            r#""highPriorityMessageFrequency": {"value": "PT1S"},"#,
            r#""highPriorityMessageFrequency": {"value": "PT1S"}, "aggregationIntervalConnectionCreate": {"value": "PT6S"},"#,
        );
    let (agent, _server, _client, p4, p6) = short_connections("ev-aggregate", &twin, N, None);
    for (port, remote) in [(p4, "127.0.0.1"), (p6, "::1")] {
        let out = agent.find("ConnectionCreate", "aggregated Out", |v| {
            v["Direction"] == "Out" && port_of(v, "RemotePort") == port
        });
        let inbound = agent.find("ConnectionCreate", "aggregated In", |v| {
            v["Direction"] == "In" && port_of(v, "LocalPort") == port
        });
        for item in [&out, &inbound] {
            assert_eq!(item["RemoteAddress"], remote, "{item}");
            assert_eq!(item["ExtraDetails"]["HitCount"], N.to_string(), "{item}");
            assert_eq!(pid_of(item), 0, "{item}");
        }
        let items = agent.items("ConnectionCreate");
        let same = |dir: &str, field: &str| {
            items
                .iter()
                .filter(|v| v["Direction"] == dir && port_of(v, field) == port)
                .count()
        };
        assert_eq!((same("Out", "RemotePort"), same("In", "LocalPort")), (1, 1));
    }
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// UDP datagrams (IPv4 and IPv6, connected sockets) and a UNIX stream connection, then one TCP
/// connection to a listener of its own as an end mark; prints the UDP ports and the mark's port.
const NON_TCP: &str = r#"
import os, socket, tempfile
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("127.0.0.1", 0))
c4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c4.connect(u4.getsockname()); c4.send(b"x"); u4.recv(1)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", 0))
c6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); c6.connect(u6.getsockname()[:2]); c6.send(b"x"); u6.recv(1)
path = os.path.join(tempfile.mkdtemp(), "s")
l = socket.socket(socket.AF_UNIX); l.bind(path); l.listen(1)
x = socket.socket(socket.AF_UNIX); x.connect(path); a, _ = l.accept()
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(1)
s = socket.create_connection(t.getsockname()); b, _ = t.accept()
print(u4.getsockname()[1], c4.getsockname()[1], u6.getsockname()[1], c6.getsockname()[1], t.getsockname()[1], flush=True)
import time; time.sleep(60)
"#;

/// The eBPF source: 200 connect-then-close-at-once pairs per family (IPv4 and IPv6, every other
/// connect non-blocking) to listeners that close each connection at once: exactly 200 Out
/// events from the client and 200 In events at the server per family, each with both ends
/// (the In events' remote ports are the Out events' local ports), pid, user and executable;
/// UDP and UNIX sockets produce none.
#[test]
fn ebpf_connection_create_every_short_connection_ipv4_and_ipv6_blocking_and_not() {
    let test = "ebpf_connection_create_every_short_connection_ipv4_and_ipv6_blocking_and_not";
    let Some(_guard) = live_lock(test) else {
        return;
    };
    if tool("/usr/bin/python3").is_none() {
        skip(test, "needs /usr/bin/python3 for the client and server processes");
        return;
    }
    const N: usize = 200;
    let (agent, server, client, p4, p6) = short_connections("ev-ebpf-short", LIVE_TWIN, N, Some(""));
    let status = agent.reported()["twinguard"]["collectors"]["ConnectionCreate"].clone();
    assert_eq!(status["source"], CONNECTION_EBPF_SOURCE, "{status}");
    assert_eq!(status["fallback"], false, "{status}");
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let items = wait_short_connections(&agent, (server, client), (p4, p6), N);
    for (port, remote) in [(p4, "127.0.0.1"), (p6, "::1")] {
        let outs: Vec<&Value> = items
            .iter()
            .filter(|v| v["Direction"] == "Out" && port_of(v, "RemotePort") == port)
            .collect();
        let ins: Vec<&Value> = items
            .iter()
            .filter(|v| v["Direction"] == "In" && port_of(v, "LocalPort") == port)
            .collect();
        if (outs.len(), ins.len()) != (N, N) {
            let (outs, ins) = (outs.len(), ins.len());
            let stderr = agent.stop();
            panic!("port {port}: {outs} Out and {ins} In events of {N} each; the agent's log:\n{stderr}");
        }
        for o in &outs {
            assert_eq!(pid_of(o), client, "{o}");
            assert_eq!(o["RemoteAddress"], remote, "{o}");
            assert_eq!(o["LocalAddress"], remote, "{o}");
            assert_ne!(port_of(o, "LocalPort"), 0, "{o}");
            assert_eq!(o["Protocol"], "TCP", "{o}");
            assert_eq!(o["UserId"], "0", "{o}");
            assert_eq!(o["Executable"], python.to_str().unwrap(), "{o}");
            assert!(
                o["CommandLine"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("/usr/bin/python3 -c"),
                "{o}"
            );
            assert_eq!(o["ExtraDetails"]["Source"], "ebpf", "{o}");
            assert_eq!(o["ExtraDetails"]["Syscall"], "connect", "{o}");
            assert!(o["ExtraDetails"]["Missing"].is_null(), "{o}");
        }
        for i in &ins {
            assert_eq!(pid_of(i), server, "{i}");
            assert_eq!(i["RemoteAddress"], remote, "{i}");
            assert_eq!(i["LocalAddress"], remote, "{i}");
            assert_eq!(i["ExtraDetails"]["Syscall"], "accept", "{i}");
            assert_eq!(i["Executable"], python.to_str().unwrap(), "{i}");
            assert!(i["ExtraDetails"]["Missing"].is_null(), "{i}");
        }
        // Both ends of the same connections: the client's local ports are the server's
        // remote ports, each once.
        let mut client_ports: Vec<u16> = outs.iter().map(|o| port_of(o, "LocalPort")).collect();
        let mut server_ports: Vec<u16> = ins.iter().map(|i| port_of(i, "RemotePort")).collect();
        client_ports.sort_unstable();
        server_ports.sort_unstable();
        assert_eq!(client_ports, server_ports, "port {port}");
        client_ports.dedup();
        assert_eq!(client_ports.len(), N, "port {port}: each connection once");
        let in_progress = outs
            .iter()
            .filter(|o| o["ExtraDetails"]["InProgress"] == "true")
            .count();
        assert!(in_progress >= N / 2, "{in_progress} connects in progress of {N}");
    }

    // Not TCP: UDP (IPv4, IPv6) and UNIX sockets are not connections.
    let other = Helper::start(NON_TCP, &[]);
    let ports = other.numbers();
    let (udp, mark) = (&ports[..4], ports[4]);
    agent.find("ConnectionCreate", "the end mark's connect", |v| {
        v["Direction"] == "Out" && pid_of(v) == other.pid() && port_of(v, "RemotePort") == mark
    });
    agent.find("ConnectionCreate", "the end mark's accept", |v| {
        v["Direction"] == "In" && pid_of(v) == other.pid() && port_of(v, "LocalPort") == mark
    });
    let items = agent.items("ConnectionCreate");
    let of_other: Vec<&Value> = items.iter().filter(|v| pid_of(v) == other.pid()).collect();
    // Its UDP and UNIX sockets made nothing: its only events are the end mark's two. (UDP port
    // numbers are not looked for among all events: TCP and UDP ports are separate spaces, and
    // another connection may well have one of the same numbers.)
    assert_eq!(of_other.len(), 2, "only the TCP end mark: {udp:?} {of_other:#?}");
    for v in &of_other {
        assert!(
            [port_of(v, "LocalPort"), port_of(v, "RemotePort")].contains(&mark),
            "{v}"
        );
    }
    drop(other);

    // IPv4-mapped IPv6: an IPv4 client of a dual-stack listener, and an IPv6 socket connecting
    // to ::ffff:127.0.0.1, are reported with IPv4 addresses and `SocketFamily: IPv6` on the
    // IPv6 socket's side.
    let mapped = Helper::start(MAPPED, &[]);
    let ports = mapped.numbers();
    let (listening, plain, via_v6) = (ports[0], ports[1], ports[2]);
    let find = |what: &str, dir: &'static str, field: &'static str, port: u16| {
        agent.find("ConnectionCreate", what, |v| {
            v["Direction"] == dir && pid_of(v) == mapped.pid() && port_of(v, field) == port
        })
    };
    for (what, v, family) in [
        (
            "IPv4 connect",
            find("IPv4 connect", "Out", "LocalPort", plain),
            None,
        ),
        (
            "its accept on ::",
            find("accept of IPv4", "In", "RemotePort", plain),
            Some("IPv6"),
        ),
        (
            "IPv6 connect to ::ffff:127.0.0.1",
            find("mapped connect", "Out", "LocalPort", via_v6),
            Some("IPv6"),
        ),
        (
            "its accept on ::",
            find("accept of mapped", "In", "RemotePort", via_v6),
            Some("IPv6"),
        ),
    ] {
        assert_eq!(v["RemoteAddress"], "127.0.0.1", "{what}: {v}");
        assert_eq!(v["LocalAddress"], "127.0.0.1", "{what}: {v}");
        assert_eq!(v["ExtraDetails"]["SocketFamily"].as_str(), family, "{what}: {v}");
        let server_port = if v["Direction"] == "Out" {
            "RemotePort"
        } else {
            "LocalPort"
        };
        assert_eq!(port_of(&v, server_port), listening, "{what}: {v}");
    }
    drop(mapped);
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A dual-stack listener on `::`, an IPv4 client and an IPv6 client of `::ffff:127.0.0.1`;
/// prints the listening port and the two clients' ports.
const MAPPED: &str = r#"
import socket, time
l = socket.socket(socket.AF_INET6); l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l.bind(("::", 0)); l.listen(4); p = l.getsockname()[1]
c = socket.create_connection(("127.0.0.1", p)); a, _ = l.accept()
m = socket.socket(socket.AF_INET6); m.connect(("::ffff:127.0.0.1", p)); b, _ = l.accept()
print(p, c.getsockname()[1], m.getsockname()[1], flush=True)
time.sleep(60)
"#;

/// The connection programs' ring buffer forced to overflow (one page, not drained while 300
/// connections are made and accepted): every record offered was delivered or counted as
/// dropped, exactly; and this test's own records delivered plus the drops cover its 600.
#[test]
fn ebpf_connection_ring_overflow_is_counted_exactly() {
    let Some(_guard) = live_lock("ebpf_connection_ring_overflow_is_counted_exactly") else {
        return;
    };
    use twinguard::sys::ebpf_connection::{self, ConnectionKind};
    let mut probes = ebpf_connection::load_with_ring(4096).unwrap_or_else(|e| panic!("{}", e.chain()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap().port();
    const CONNECTIONS: u64 = 300;
    for _ in 0..CONNECTIONS {
        let c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (a, _) = listener.accept().unwrap();
        drop((c, a));
    }
    let me = std::process::id();
    let mut delivered = 0u64;
    let mut own = 0u64;
    let mut take = |b: &[u8]| {
        delivered += 1;
        if let Some(r) = ebpf_connection::parse_connection(b) {
            let port = match r.kind {
                ConnectionKind::Connect => r.remote.1,
                ConnectionKind::Accept => r.local.1,
            };
            if r.tgid == me && port == server {
                own += 1;
            }
        }
    };
    // The machine is shared: settle on a moment when nothing arrived between two readings.
    for _ in 0..100 {
        probes.drain(usize::MAX, &mut take);
        let before = probes.counts().unwrap();
        let late = probes.drain(usize::MAX, &mut take);
        let after = probes.counts().unwrap();
        if late == 0 && before == after {
            assert!(after.dropped > 0, "a 4 KiB ring did not overflow: {after:?}");
            assert_eq!(
                after.offered,
                delivered + after.dropped,
                "offered = delivered + dropped: {after:?}, delivered {delivered}"
            );
            assert!(
                own + after.dropped >= 2 * CONNECTIONS,
                "own records delivered {own} + dropped {} < {}",
                after.dropped,
                2 * CONNECTIONS
            );
            eprintln!("connection overflow: {after:?}, delivered {delivered} ({own} of this test's)");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the machine never went quiet long enough to compare the counts");
}

/// The agent with one-page ring buffers (the hidden `TWINGUARD_EBPF_RING_BYTES`) under a storm
/// of short connections: what the kernel could not deliver is in ConnectionCreate's losses, so
/// the events captured plus the losses cover every connect and accept.
#[test]
fn ebpf_connection_losses_reach_the_collector_status() {
    let test = "ebpf_connection_losses_reach_the_collector_status";
    let Some(_guard) = live_lock(test) else {
        return;
    };
    if tool("/usr/bin/python3").is_none() {
        skip(test, "needs /usr/bin/python3 for the client and server processes");
        return;
    }
    let agent = LiveAgent::start_one_page_ring("ev-ebpf-conn-losses");
    let status = agent.wait_running("ConnectionCreate");
    assert_eq!(status["source"], CONNECTION_EBPF_SOURCE, "{status}");
    // Past the self-test (the ring holds its records until the first drain).
    std::thread::sleep(Duration::from_millis(500));
    const N: usize = 500;
    let (server, client, p4, p6) = closing_connections(N);
    std::thread::sleep(Duration::from_millis(2500));
    let losses = agent.losses_after_restart(&["ConnectionCreate"]);
    let captured = agent
        .items("ConnectionCreate")
        .iter()
        .filter(|v| {
            let port = |f| port_of(v, f);
            (v["Direction"] == "Out" && pid_of(v) == client && [p4, p6].contains(&port("RemotePort")))
                || (v["Direction"] == "In" && pid_of(v) == server && [p4, p6].contains(&port("LocalPort")))
        })
        .count();
    let total = 4 * N;
    eprintln!(
        "one-page ring: {captured} of {total} connection events captured, {losses} records lost (counted)"
    );
    assert!(losses > 0, "a one-page ring lost nothing?");
    assert!(
        captured as u64 + losses >= total as u64,
        "captured {captured} + lost {losses} < {total}"
    );
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
