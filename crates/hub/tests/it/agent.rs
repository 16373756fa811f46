//! End to end: the real agent (`twinguard run --iothub FILE --iothub-ca CA --iothub-endpoint
//! 127.0.0.1:PORT`) against a real hub: twin sync, a desired patch applied and reported, a
//! partial patch changing only what it names, an invalid patch rejected with the reported
//! configuration object unchanged, every message stored as a schema-valid security message,
//! and a hub killed and restarted mid-run without losing an acknowledged event.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::python::venv_python;
use crate::support::{repo_root, scratch, skip, wait_until, write_secret, Hub, CONFIG_KEY, MODULE};

/// The agent binary, built once per run (`cargo build -p twinguard`), or why there is none.
pub fn agent_binary() -> Result<PathBuf, String> {
    static RESULT: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut result = RESULT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    result.get_or_insert_with(build_agent).clone()
}

fn build_agent() -> Result<PathBuf, String> {
    let hub_exe = PathBuf::from(env!("CARGO_BIN_EXE_twinguard-hub"));
    let bin = hub_exe.with_file_name("twinguard");
    // Build (a no-op when fresh) so the test never runs a stale agent. Cargo holds no lock
    // while tests run, so this does not wait on the outer `cargo test`.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let mut build = Command::new(cargo)
        .args(["build", "-p", "twinguard", "--bin", "twinguard", "--quiet"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        match build.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return Err(format!("cargo build -p twinguard failed: {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            _ => {
                let _ = build.kill();
                return Err("cargo build -p twinguard did not finish in 20 minutes".into());
            }
        }
    }
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} does not exist after cargo build -p twinguard",
            bin.display()
        ))
    }
}

/// A running agent; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    pub fn start(bin: &Path, dir: &Path, hub: &Hub, cs: &str, extra: &[&str]) -> Agent {
        Agent::start_via(&[], bin, dir, hub, cs, extra)
    }

    /// Starts the agent through `prefix` (e.g. `ip netns exec NS`), which execs it.
    pub fn start_via(prefix: &[&str], bin: &Path, dir: &Path, hub: &Hub, cs: &str, extra: &[&str]) -> Agent {
        let cs_file = dir.join("connection-string");
        write_secret(&cs_file, cs);
        let log = dir.join("agent.log");
        let log_file = std::fs::File::create(&log).expect("log");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("run")
            .arg("--iothub")
            .arg(&cs_file)
            .arg("--iothub-ca")
            .arg(&hub.ca)
            .arg("--iothub-endpoint")
            .arg(hub.mqtt.to_string())
            .arg("--data-dir")
            .arg(dir.join("agent-data"))
            .args(extra)
            .env("TWINGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("agent starts");
        Agent { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (a clean stop, SPEC §8), then SIGKILL if it takes over 5 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let stopped = wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reported_config(hub: &Hub, device: &str) -> Value {
    hub.twin(device, MODULE)["reported"][CONFIG_KEY].clone()
}

/// Every stored message of `device` must be a security message that parses with the
/// agent's model; returns their bodies.
fn check_messages(hub: &Hub, device: &str) -> Vec<Value> {
    hub.messages(device)
        .iter()
        .map(|m| {
            assert_eq!(m["securityMessage"], json!(true), "{m}");
            assert_eq!(m["schemaValid"], json!(true), "{m}");
            assert!(m["body"].is_object(), "the body is parsed JSON: {m}");
            m["body"].clone()
        })
        .collect()
}

/// Runs the official schema checker (`shared/tools/check-messages`) over the bodies when the
/// shared folder and the Python venv are there.
fn official_schema_check(dir: &Path, bodies: &[Value]) {
    let checker = repo_root().join("../shared/tools/check-messages");
    if !checker.exists() {
        return skip(&format!(
            "{} is missing: official schema check not run",
            checker.display()
        ));
    }
    let python = match venv_python() {
        Ok(p) => p,
        Err(reason) => return skip(&reason),
    };
    let file = dir.join("stored-messages.jsonl");
    let lines: Vec<String> = bodies.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let out = Command::new(python)
        .arg(&checker)
        .arg(&file)
        .output()
        .expect("checker runs");
    assert!(
        out.status.success(),
        "check-messages: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn event_names(bodies: &[Value]) -> BTreeSet<String> {
    bodies
        .iter()
        .flat_map(|b| b["Events"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["Name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn agent_syncs_its_twin_and_applies_only_valid_patches() {
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    let dir = scratch("agent-twin");
    let hub = Hub::start(&dir.join("hub-data"), "127.0.0.1:0").expect("hub starts");
    let device = "dev-agent";
    let cs = hub.add_identity(device, Some(MODULE));
    hub.desired(
        "PUT",
        device,
        MODULE,
        &json!({CONFIG_KEY: {
            "highPriorityMessageFrequency": {"value": "PT1S"},
            "lowPriorityMessageFrequency": {"value": "PT2S"},
            "snapshotFrequency": {"value": "PT1H"},
        }}),
    );
    let agent = Agent::start(&bin, &dir, &hub, &cs, &[]);
    let context = |hub: &Hub, agent: &Agent| {
        format!("\nhub log:\n{}\nagent log:\n{}", hub.log_text(), agent.log_text())
    };

    // Twin sync: the reported configuration object echoes the desired values, defaults for
    // the rest, and the status says applied.
    let synced = wait_until(Duration::from_secs(30), || {
        let twin = hub.twin(device, MODULE);
        twin["reported"][CONFIG_KEY]["highPriorityMessageFrequency"] == json!({"value": "PT1S"})
            && twin["reported"]["twinguard"]["configurationStatus"] == json!("applied")
    });
    assert!(synced, "no reported configuration{}", context(&hub, &agent));
    let before = reported_config(&hub, device);
    assert_eq!(before["lowPriorityMessageFrequency"], json!({"value": "PT2S"}));
    assert_eq!(
        before["maxMessageSizeInBytes"],
        json!({"value": 204800}),
        "defaults for the rest"
    );

    // A partial patch changes only what it names.
    hub.desired(
        "PATCH",
        device,
        MODULE,
        &json!({CONFIG_KEY: {"lowPriorityMessageFrequency": {"value": "PT3S"}}}),
    );
    let patched = wait_until(Duration::from_secs(20), || {
        reported_config(&hub, device)["lowPriorityMessageFrequency"] == json!({"value": "PT3S"})
    });
    assert!(patched, "the patch was not applied{}", context(&hub, &agent));
    let after_patch = reported_config(&hub, device);
    let mut expected = before.clone();
    expected["lowPriorityMessageFrequency"] = json!({"value": "PT3S"});
    assert_eq!(after_patch, expected, "only the named property changed");
    let desired_version = hub.twin(device, MODULE)["desired"]["$version"].clone();
    assert!(wait_until(Duration::from_secs(10), || {
        hub.twin(device, MODULE)["reported"]["twinguard"]["desiredVersion"] == desired_version
    }));

    // An invalid patch is rejected: the reported configuration object stays as it was.
    hub.desired(
        "PATCH",
        device,
        MODULE,
        &json!({CONFIG_KEY: {"maxMessageSizeInBytes": {"value": 5}}}),
    );
    let rejected = wait_until(Duration::from_secs(20), || {
        hub.twin(device, MODULE)["reported"]["twinguard"]["configurationStatus"] == json!("rejected")
    });
    assert!(
        rejected,
        "the invalid patch was not rejected{}",
        context(&hub, &agent)
    );
    assert_eq!(
        reported_config(&hub, device),
        after_patch,
        "the configuration in force is unchanged"
    );

    // Messages: stored, security messages, valid; the rejection's ConfigurationError among
    // them (Low priority, sent within PT3S).
    let got_error = wait_until(Duration::from_secs(30), || {
        event_names(&check_messages(&hub, device)).contains("ConfigurationError")
    });
    let bodies = check_messages(&hub, device);
    assert!(
        got_error,
        "no ConfigurationError event; events {:?}{}",
        event_names(&bodies),
        context(&hub, &agent)
    );
    assert!(
        event_names(&bodies).contains("SystemInformation"),
        "{:?}",
        event_names(&bodies)
    );
    official_schema_check(&dir, &bodies);
    assert!(
        !hub.log_text().contains("reported PATCH refused"),
        "{}",
        hub.log_text()
    );
}

#[test]
fn agent_loses_no_event_when_the_hub_is_killed_and_restarted() {
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    let dir = scratch("agent-restart");
    let data = dir.join("hub-data");
    let mut hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let port = hub.mqtt.port();
    let device = "dev-restart";
    let cs = hub.add_identity(device, Some(MODULE));
    hub.desired(
        "PUT",
        device,
        MODULE,
        &json!({CONFIG_KEY: {
            "highPriorityMessageFrequency": {"value": "PT1S"},
            "lowPriorityMessageFrequency": {"value": "PT1S"},
            "maxMessageSizeInBytes": {"value": 16384},
        }}),
    );
    let acks = dir.join("acked-ids");
    let agent = Agent::start(
        &bin,
        &dir,
        &hub,
        &cs,
        &[
            "--synthetic-rate",
            "100",
            "--synthetic-limit",
            "1500",
            "--synthetic-ack-log",
            acks.to_str().expect("utf-8 path"),
        ],
    );
    let stored_ids = |hub: &Hub| -> BTreeSet<String> {
        check_messages(hub, device)
            .iter()
            .flat_map(|b| b["Events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["Id"].as_str().map(str::to_owned))
            .collect()
    };
    let some_sent = wait_until(Duration::from_secs(30), || stored_ids(&hub).len() > 50);
    assert!(
        some_sent,
        "no messages before the kill\nagent log:\n{}",
        agent.log_text()
    );

    // Kill the hub mid-run (no clean shutdown), leave it down for 2 s, bring it back on the
    // same port and data directory.
    hub.kill();
    std::thread::sleep(Duration::from_secs(2));
    let hub = Hub::start(&data, &format!("127.0.0.1:{port}")).expect("hub restarts");

    let acked = || -> BTreeSet<String> {
        std::fs::read_to_string(&acks)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let all_in = wait_until(Duration::from_secs(90), || {
        let acked = acked();
        acked.len() == 1500 && acked.is_subset(&stored_ids(&hub))
    });
    let acked = acked();
    let stored = stored_ids(&hub);
    let missing: Vec<&String> = acked.difference(&stored).take(5).collect();
    assert!(
        all_in,
        "{} acknowledged, {} stored, missing e.g. {missing:?}\nhub log:\n{}\nagent log:\n{}",
        acked.len(),
        stored.len(),
        hub.log_text(),
        agent.log_text()
    );
}

/// `twin patch-desired --wait` against a real agent: it prints the new `$version` and the
/// patch, then "applied" (exit 0) or "rejected" with the agent's errors (exit 1); with no
/// agent connected it times out with exit 3.
#[test]
fn patch_desired_waits_for_the_agents_verdict() {
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    let dir = scratch("agent-wait");
    let data = dir.join("hub-data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let device = "dev-wait";
    let cs = hub.add_identity(device, Some(MODULE));
    let patch = |doc: &Value, wait: &str| {
        let file = dir.join("patch.json");
        std::fs::write(&file, doc.to_string()).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
            .arg("--data-dir")
            .arg(&data)
            .args(["twin", "patch-desired", device, "--module", MODULE])
            .arg(&file)
            .args(["--wait", wait])
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut agent = Agent::start(&bin, &dir, &hub, &cs, &[]);
    let good = json!({CONFIG_KEY: {"lowPriorityMessageFrequency": {"value": "PT3S"}}});
    let (code, out, err) = patch(&good, "30");
    let log = || format!("\nagent log:\n{}", agent.log_text());
    assert_eq!(code, Some(0), "{out}{err}{}", log());
    assert!(out.starts_with("desired $version "), "{out}");
    assert!(out.contains("PT3S"), "the patch is printed: {out}");
    assert!(
        out.contains("applied: the agent reports desired $version"),
        "{out}"
    );

    let bad = json!({CONFIG_KEY: {"maxMessageSizeInBytes": {"value": 5}}});
    let (code, out, err) = patch(&bad, "30");
    assert_eq!(code, Some(1), "{out}{err}{}", log());
    assert!(out.contains("rejected:"), "{out}");
    assert!(
        out.contains("/maxMessageSizeInBytes/value"),
        "the agent's error is printed: {out}"
    );

    agent.stop();
    let fix = json!({CONFIG_KEY: {"maxMessageSizeInBytes": {"value": 8192}}});
    let (code, out, err) = patch(&fix, "1");
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("timed out after 1 s"), "{err}");
}
