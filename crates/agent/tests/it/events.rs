//! The event collectors (ProcessCreate, ProcessTerminate, ConnectionCreate, Login): their
//! parsers on bytes and text captured from a real machine, and live, as root, through a real
//! `twinguard run` whose outbox must show the events the test caused - with the right pids,
//! executables, users, directions, ports and exit statuses - in messages that conform to the
//! official schema.
//!
//! Live tests need root (the process connector needs CAP_NET_ADMIN, audit CAP_AUDIT_CONTROL);
//! without it they skip, which fails under CI. They run one at a time (audit is one per
//! machine).

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::conformance::validate_messages;
use crate::support::{skip, TempDir};

/// Live tests take this lock: two agents would share the machine's audit state.
static LIVE: Mutex<()> = Mutex::new(());

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A running `twinguard run` in local mode.
struct LiveAgent {
    child: Option<Child>,
    dir: TempDir,
}

/// A twin with every triggered event High, sent every second, aggregation off.
const LIVE_TWIN: &str = r#"{
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
        let dir = TempDir::new(label);
        std::fs::write(dir.path("twin.json"), twin).unwrap();
        let child = Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
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
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        LiveAgent {
            child: Some(child),
            dir,
        }
    }

    fn reported(&self) -> Value {
        std::fs::read(self.dir.path("reported.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the collector of `name` reports its source (it is running).
    fn wait_running(&self, name: &str) -> Value {
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
    fn items(&self, name: &str) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .flat_map(|m| m["Events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["Name"] == name)
            .flat_map(|e| e["Payload"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (up to 10 s) for an item of `name` that `want` accepts.
    fn find(&self, name: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
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
    fn stop(mut self) -> String {
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

fn live_lock(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if !is_root() {
        skip(test, "needs root (netlink proc connector, audit)");
        return None;
    }
    Some(LIVE.lock().unwrap_or_else(|e| e.into_inner()))
}

fn unique() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}{:06}", std::process::id(), n % 1_000_000)
}

fn pid_of(v: &Value) -> u64 {
    v["ProcessId"].as_u64().unwrap_or(0)
}

#[test]
fn process_create_and_terminate_reach_the_outbox_live() {
    let Some(_guard) = live_lock("process_create_and_terminate_reach_the_outbox_live") else {
        return;
    };
    let agent = LiveAgent::start("ev-process", LIVE_TWIN);
    let status = agent.wait_running("ProcessCreate");
    assert_eq!(status["source"], "netlink proc connector");
    assert_eq!(status["fallback"], false);

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
    assert!(create.get("ExtraDetails").is_none(), "{create}");

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
    let stderr = agent.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
