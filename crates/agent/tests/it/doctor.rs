//! `twinguard doctor` with the real binary: its verdicts match what `twinguard run` then does on
//! this machine (live, as root: a source it calls working produces events, one it calls
//! unavailable produces none, and the agent reports the source doctor named), the data
//! directory while an agent holds it and after, the reasons it gives for failing, and the MQTT
//! connection test against a real mosquitto.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::conformance::validate_messages;
use crate::support::{skip, TempDir};

/// Events with a source, in the order of doctor's table.
const SOURCES: [&str; 10] = [
    "ProcessCreate",
    "ProcessTerminate",
    "ConnectionCreate",
    "Login",
    "SystemInformation",
    "LocalUsers",
    "ListeningPorts",
    "ConnectedHardware",
    "FirewallConfiguration",
    "OSBaseline",
];

/// Every source High, sent every second, snapshots every 2 s, no aggregation.
fn live_twin() -> String {
    let mut twin = serde_json::json!({
        "highPriorityMessageFrequency": {"value": "PT1S"},
        "snapshotFrequency": {"value": "PT2S"},
        "maxLocalCacheSizeInBytes": {"value": 20000000},
        "aggregationEnabledProcessCreate": {"value": false},
        "aggregationEnabledProcessTerminate": {"value": false},
        "aggregationEnabledConnectionCreate": {"value": false},
    });
    for name in SOURCES {
        twin[format!("eventPriority{name}")] = serde_json::json!({"value": "High"});
    }
    twin.to_string()
}

fn is_root() -> bool {
    twinguard_os::euid() == 0
}

fn doctor(args: &[&str]) -> (Option<i32>, String) {
    doctor_with(args, |_| {})
}

/// `doctor` with `adjust` applied to its command (e.g. its environment).
fn doctor_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> (Option<i32>, String) {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("twinguard"));
    command.arg("doctor").args(args);
    adjust(&mut command);
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        stderr.is_empty(),
        "doctor wrote to stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    (status.code(), stdout)
}

/// Doctor's table: event -> (priority, state, source).
fn table(report: &str) -> BTreeMap<String, (String, String, String)> {
    report
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let event = parts.next()?;
            SOURCES.contains(&event).then(|| {
                let priority = parts.next().unwrap_or_default().to_owned();
                let state = parts.next().unwrap_or_default().to_owned();
                let source = parts.collect::<Vec<_>>().join(" ");
                (event.to_owned(), (priority, state, source))
            })
        })
        .collect()
}

fn path_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn events_by_name(outbox: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(outbox).unwrap_or_default().lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        for e in m["Events"].as_array().unwrap() {
            *counts.entry(e["Name"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

fn reported(dir: &TempDir) -> Value {
    std::fs::read(dir.path("reported.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn doctor_verdicts_match_what_the_agent_then_does() {
    let test = "doctor_verdicts_match_what_the_agent_then_does";
    if !is_root() {
        skip(test, "needs root (the process connector, audit)");
        return;
    }
    let dir = TempDir::new("doctor-live");
    std::fs::write(dir.path("twin.json"), live_twin()).unwrap();
    let (twin, data) = (dir.path("twin.json"), dir.path("data"));
    let args = ["--twin", path_arg(&twin), "--data-dir", path_arg(&data)];

    let (code, report) = doctor(&args);
    let rows = table(&report);
    assert_eq!(rows.len(), SOURCES.len(), "{report}");
    let unavailable: Vec<&String> = rows
        .iter()
        .filter(|(_, (_, state, _))| state == "unavailable")
        .map(|(e, _)| e)
        .collect();
    assert_eq!(code, Some(i32::from(!unavailable.is_empty())), "{report}");
    assert!(report.contains("does not exist yet"), "{report}");
    assert!(!data.exists(), "doctor created the data directory");
    assert!(report.contains("in force: snapshotFrequency PT2S"), "{report}");
    for (event, (priority, state, _)) in &rows {
        assert_eq!(priority, "High", "{event}: {report}");
        assert!(["available", "fallback", "unavailable"].contains(&state.as_str()));
    }

    let agent = Running(
        Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
            .arg("run")
            .args(args)
            .arg("--outbox")
            .arg(dir.path("outbox.jsonl"))
            .arg("--reported")
            .arg(dir.path("reported.json"))
            .env("TWINGUARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // What doctor calls working must produce events: make a process and a TCP connection
    // while the agent runs (no login happens: Login is checked by its reported source).
    let expected: Vec<&str> = SOURCES
        .into_iter()
        .filter(|e| *e != "Login" && rows[*e].1 != "unavailable")
        .collect();
    let t = Instant::now();
    let counts = loop {
        let streams_up = ["ProcessCreate", "ConnectionCreate"]
            .iter()
            .all(|e| reported(&dir)["twinguard"]["collectors"][e]["source"].is_string());
        if streams_up {
            let _ = Command::new("/bin/true").status();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let _server = listener.accept().unwrap();
        }
        let counts = events_by_name(&dir.path("outbox.jsonl"));
        if expected.iter().all(|e| counts.contains_key(*e)) || t.elapsed() > Duration::from_secs(20) {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(300));
    };

    // While the agent runs, doctor sees its lock and leaves its cache alone.
    let (_, during) = doctor(&args);
    assert!(
        during.contains(&format!("held by a running agent (pid {})", agent.0.id())),
        "{during}"
    );

    drop(agent);
    let reported = reported(&dir);
    let collectors = &reported["twinguard"]["collectors"];
    for (event, (_, state, source)) in &rows {
        let got = counts.get(event.as_str()).copied().unwrap_or(0);
        if state == "unavailable" {
            assert_eq!(got, 0, "{event}: doctor says unavailable, the agent sent {got}");
        } else if event != "Login" {
            assert!(
                got > 0,
                "{event}: doctor says {state}, the agent sent nothing: {counts:?}\n{report}"
            );
        }
        if ["ProcessCreate", "ProcessTerminate", "ConnectionCreate", "Login"].contains(&event.as_str())
            && state != "unavailable"
        {
            assert_eq!(
                collectors[event]["source"].as_str(),
                Some(source.as_str()),
                "{event}: doctor and the agent disagree on the source\n{report}\n{collectors:#}"
            );
        }
    }
    let bodies: Vec<Vec<u8>> = std::fs::read_to_string(dir.path("outbox.jsonl"))
        .unwrap()
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    validate_messages(&bodies).unwrap();

    // After the agent: the cache is read, and balances.
    let (_, after) = doctor(&args);
    assert!(after.contains("lock: free"), "{after}");
    assert!(after.contains("cache: High queue: "), "{after}");
    assert!(!after.contains("PROBLEM"), "{after}");
    assert!(after.contains("mode 0700"), "{after}");
}

/// On this machine (kernel BTF, raw tracepoints allowed, root) doctor names the eBPF process
/// and connection sources; with the fallback forced it names the process connector and audit
/// as fallbacks, and why.
#[test]
fn doctor_names_the_ebpf_process_source_and_why_the_fallback_runs() {
    let test = "doctor_names_the_ebpf_process_source_and_why_the_fallback_runs";
    if !is_root() {
        skip(test, "needs root (loading eBPF programs)");
        return;
    }
    let dir = TempDir::new("doctor-ebpf");
    std::fs::write(dir.path("twin.json"), live_twin()).unwrap();
    let (twin, data) = (dir.path("twin.json"), dir.path("data"));
    let args = ["--twin", path_arg(&twin), "--data-dir", path_arg(&data)];
    let (_, report) = doctor_with(&args, |c| {
        c.env_remove("TWINGUARD_SOURCES");
    });
    let rows = table(&report);
    for event in ["ProcessCreate", "ProcessTerminate"] {
        assert_eq!(rows[event].1, "available", "{report}");
        assert_eq!(
            rows[event].2,
            "eBPF raw tracepoints (sched_process_exec, sched_process_fork, sched_process_exit)",
            "{report}"
        );
    }
    assert_eq!(rows["ConnectionCreate"].1, "available", "{report}");
    assert_eq!(
        rows["ConnectionCreate"].2, "eBPF raw tracepoints (inet_sock_set_state, sys_exit)",
        "{report}"
    );
    let (_, report) = doctor_with(&args, |c| {
        c.env("TWINGUARD_SOURCES", "fallback");
    });
    let rows = table(&report);
    assert_eq!(rows["ProcessCreate"].1, "fallback", "{report}");
    assert_eq!(rows["ProcessCreate"].2, "netlink proc connector", "{report}");
    assert_ne!(rows["ConnectionCreate"].1, "available", "{report}");
    assert!(
        rows["ConnectionCreate"].2.starts_with("audit netlink")
            || rows["ConnectionCreate"].2 == "sock_diag polling",
        "{report}"
    );
    assert!(
        report.contains("eBPF not tried: TWINGUARD_SOURCES=fallback"),
        "{report}"
    );
}

#[test]
fn doctor_fails_with_its_reasons() {
    let dir = TempDir::new("doctor-fail");
    std::fs::write(
        dir.path("twin.json"),
        r#"{"snapshotFrequency": {"value": "soon"}, "eventPriorityProcessCreate": {"value": "Off"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path("not-a-dir"), "x").unwrap();
    let (code, report) = doctor(&[
        "--twin",
        path_arg(&dir.path("twin.json")),
        "--data-dir",
        path_arg(&dir.path("not-a-dir")),
    ]);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("Verdict: NOT OK"), "{report}");
    assert!(report.contains("/snapshotFrequency/value"), "{report}");
    assert!(
        report.contains("is invalid (1 error(s)): the agent would not start (exit 78)"),
        "{report}"
    );
    assert!(
        report.contains("data directory: exists but is not a directory"),
        "{report}"
    );

    // A settings file `run` would refuse.
    std::fs::write(dir.path("agent.toml"), "mqtt = \"mqtt://127.0.0.1:1\"\n").unwrap();
    let (code, report) = doctor(&["--settings", path_arg(&dir.path("agent.toml"))]);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("MQTT mode needs --device-id"), "{report}");
}

/// A mosquitto on a free loopback port, killed when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &TempDir) -> Option<Mosquitto> {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())?;
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
        if is_root() {
            conf.push_str("user root\n");
        }
        std::fs::write(dir.path("mosquitto.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.path("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let m = Mosquitto { child, port };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(m)
    }

    /// Publishes a retained message with mosquitto's own client (a client we did not write).
    fn retain(&self, topic: &str, payload: &str) {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1", "-r"])
            .args(["-t", topic, "-m", payload])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn doctor_tests_the_mqtt_connection_and_reads_the_desired_configuration() {
    let test = "doctor_tests_the_mqtt_connection_and_reads_the_desired_configuration";
    let dir = TempDir::new("doctor-mqtt");
    let Some(broker) = Mosquitto::start(&dir) else {
        skip(
            test,
            "mosquitto is not installed (Debian packages mosquitto, mosquitto-clients)",
        );
        return;
    };
    std::fs::write(
        dir.path("agent.toml"),
        format!(
            "mqtt = \"mqtt://127.0.0.1:{}\"\ndevice-id = \"doc1\"\n",
            broker.port
        ),
    )
    .unwrap();
    // Every source Off: the verdict then depends only on the connection and configuration,
    // whatever this user may do.
    let mut desired = serde_json::json!({"snapshotFrequency": {"value": "PT1H"}});
    for name in SOURCES {
        desired[format!("eventPriority{name}")] = serde_json::json!({"value": "Off"});
    }
    broker.retain("twinguard/doc1/twin/desired", &desired.to_string());
    let (settings, data) = (dir.path("agent.toml"), dir.path("data"));
    let args = ["--settings", path_arg(&settings), "--data-dir", path_arg(&data)];
    let (code, report) = doctor(&args);
    assert!(
        report.contains("mode: MQTT, broker mqtt://127.0.0.1:"),
        "{report}"
    );
    assert!(report.contains("ok: TCP connection to 127.0.0.1:"), "{report}");
    assert!(report.contains("ok: MQTT login as \"doc1\""), "{report}");
    assert!(
        report.contains("read the retained desired document on twinguard/doc1/twin/desired"),
        "{report}"
    );
    assert!(report.contains("in force: snapshotFrequency PT1H"), "{report}");
    assert!(table(&report).values().all(|(p, _, _)| p == "Off"), "{report}");
    assert_eq!(code, Some(0), "{report}");

    // The same check from `run`'s flags alone, no settings file.
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let flags = [
        "--mqtt",
        &url,
        "--device-id",
        "doc1",
        "--data-dir",
        path_arg(&data),
    ];
    let (code, by_flags) = doctor(&flags);
    assert!(by_flags.contains("ok: MQTT login as \"doc1\""), "{by_flags}");
    assert!(
        by_flags.contains("in force: snapshotFrequency PT1H"),
        "{by_flags}"
    );
    assert_eq!(code, Some(0), "{by_flags}");

    // An invalid desired document: the agent would stay connected and collect nothing.
    broker.retain(
        "twinguard/doc1/twin/desired",
        r#"{"snapshotFrequency": {"value": 5}}"#,
    );
    let (code, report) = doctor(&args);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("desired is invalid"), "{report}");

    // The broker gone: the connection step fails and says so.
    drop(broker);
    let (code, report) = doctor(&args);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("FAILED: cannot connect to 127.0.0.1:"),
        "{report}"
    );
}
