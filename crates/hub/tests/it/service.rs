//! The service REST API against Microsoft's official service SDK `azure-iot-hub`
//! (`tests/sdk/service_client.py`), with the hub's CA given as `REQUESTS_CA_BUNDLE` and the
//! connection string `twinguard-hub policy show iothubowner` prints: the operator's workflow
//! of the seed with real agents (`twinguard run --iothub`), a fleet configured by automatic
//! configurations, and the refusals.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::{json, Value};

use crate::agent::{agent_binary, Agent};
use crate::python::venv_python;
use crate::support::{scratch, skip, Hub, CONFIG_KEY, MODULE};

/// Held by the tests that load the machine most (Python SDK flows with real agents) and by
/// the timing-sensitive flood test, so they do not run at the same time on a small CI box.
pub static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `twinguard-hub policy show NAME`, as a user runs it.
fn policy_show(data: &Path, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .arg("--data-dir")
        .arg(data)
        .args(["policy", "show", name])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// A running `service_client.py FLOW`; its steps are read line by line.
struct Flow {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    steps: BTreeMap<String, Value>,
    cases: Vec<Value>,
}

impl Flow {
    fn start(python: &Path, hub: &Hub, dir: &Path, args: &[&str]) -> Flow {
        let data = dir.join("data");
        let owner = policy_show(&data, "iothubowner");
        let port = hub.service.expect("service API").port();
        let host = if port == 443 {
            "HostName=localhost".to_owned()
        } else {
            format!("HostName=localhost:{port}")
        };
        assert_eq!(owner.split(';').next(), Some(host.as_str()), "{owner}");
        let owner_file = dir.join("owner.cs");
        std::fs::write(&owner_file, &owner).expect("write");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/service_client.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(args[0])
            .arg(&owner_file)
            .args(&args[1..])
            .env("REQUESTS_CA_BUNDLE", &hub.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Flow {
            child,
            stdin,
            lines,
            steps: BTreeMap::new(),
            cases: Vec::new(),
        }
    }

    /// The next step, or `None` at the end.
    fn next(&mut self, hub: &Hub) -> Option<Value> {
        let line = self.lines.next()?.expect("line");
        let step: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a step: {line}"));
        assert_ne!(
            step["step"],
            json!("error"),
            "the service SDK failed: {}\n{}\nhub log:\n{}",
            step["error"],
            step["traceback"].as_str().unwrap_or_default(),
            hub.log_text()
        );
        let name = step["step"].as_str().unwrap_or_default().to_owned();
        if name == "case" {
            self.cases.push(step.clone());
        }
        self.steps.insert(name, step.clone());
        Some(step)
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the script");
        stdin.flush().expect("flush");
    }

    fn finish(mut self, hub: &Hub) -> (BTreeMap<String, Value>, Vec<Value>) {
        while self.next(hub).is_some() {}
        let status = self.child.wait().expect("python ends");
        assert!(
            status.success(),
            "service_client.py: {status}; steps {:?}\nhub log:\n{}",
            self.steps,
            hub.log_text()
        );
        assert!(self.steps.contains_key("done"), "{:?}", self.steps);
        (self.steps, self.cases)
    }
}

fn module_cs(device: &str, key: &str) -> String {
    format!("HostName=localhost;DeviceId={device};ModuleId={MODULE};SharedAccessKey={key}")
}

fn environment() -> Option<(PathBuf, PathBuf)> {
    let python = match venv_python() {
        Ok(p) => p,
        Err(reason) => {
            skip(&reason);
            return None;
        }
    };
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => {
            skip(&reason);
            return None;
        }
    };
    Some((python, bin))
}

#[test]
fn service_sdk_configures_a_real_agent() {
    let Some((python, bin)) = environment() else {
        return;
    };
    let _heavy = heavy();
    let dir = scratch("service-agent");
    let hub = Hub::start(&dir.join("data"), "127.0.0.1:0").expect("hub starts");
    let device = "dev-svc";
    let mut flow = Flow::start(&python, &hub, &dir, &["agent", device]);
    let mut agent = None;
    while let Some(step) = flow.next(&hub) {
        if step["step"] == json!("module") {
            let key = step["primaryKey"].as_str().expect("key");
            let agent_dir = dir.join("agent");
            std::fs::create_dir_all(&agent_dir).expect("dir");
            agent = Some(Agent::start(&bin, &agent_dir, &hub, &module_cs(device, key), &[]));
            flow.send("go");
        }
        if step["step"] == json!("done") {
            break;
        }
    }
    let (steps, _) = flow.finish(&hub);
    let log = agent.as_ref().map(Agent::log_text).unwrap_or_default();
    let context = format!("\nagent log:\n{log}\nhub log:\n{}", hub.log_text());

    assert_eq!(steps["device"]["status"], json!("enabled"));
    assert_eq!(
        steps["first-report"]["hp"],
        json!({"value": "PT7M"}),
        "the default before the change{context}"
    );
    assert_eq!(
        steps["updated"]["desired"][CONFIG_KEY]["highPriorityMessageFrequency"],
        json!({"value": "PT2M"})
    );
    let applied = &steps["applied"]["reported"];
    assert_eq!(applied["twinguard"]["configurationStatus"], json!("applied"));
    assert_eq!(
        applied[CONFIG_KEY]["maxMessageSizeInBytes"],
        json!({"value": 204800}),
        "the rest stays at its defaults"
    );
    assert_eq!(steps["stale"]["status"], json!(412), "a stale etag");
    assert_eq!(
        steps["stale"]["desired"][CONFIG_KEY]["highPriorityMessageFrequency"],
        json!({"value": "PT2M"}),
        "the refused write changed nothing"
    );
    let rejected = &steps["rejected"]["reported"];
    assert_eq!(
        rejected[CONFIG_KEY], applied[CONFIG_KEY],
        "the configuration in force is unchanged"
    );
    assert_eq!(steps["query"]["items"], json!([[device, MODULE]]));

    // The audit trail names the policy and the writes.
    let out = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("audit")
        .output()
        .expect("runs");
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for expected in [
        "\"PUT /devices/dev-svc\"",
        "\"PUT /devices/dev-svc/modules/azureiotsecurity\"",
        "\"PATCH /twins/dev-svc/modules/azureiotsecurity\"",
    ] {
        assert!(audit.contains(expected), "{expected} in\n{audit}");
    }
    assert!(audit.contains("\"who\":\"policy:iothubowner\""), "{audit}");

    // The README's and docs/hub.md's command, as written: examples/service-sdk.py with the
    // connection string `policy show` prints. First the invalid value goes (the agent still
    // has it in desired), through the operator API.
    hub.desired(
        "PATCH",
        device,
        MODULE,
        &json!({CONFIG_KEY: {"maxMessageSizeInBytes": null}}),
    );
    let example = crate::support::repo_root().join("examples/service-sdk.py");
    let out = Command::new(&python)
        .arg(&example)
        .arg(policy_show(&dir.join("data"), "iothubowner"))
        .args([device, "PT3M"])
        .env("REQUESTS_CA_BUNDLE", &hub.ca)
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{printed}{}{context}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("highPriorityMessageFrequency PT3M"), "{printed}");
    assert!(
        printed.contains("applied: the agent reports desired $version"),
        "{printed}"
    );
    assert_eq!(
        hub.twin(device, MODULE)["reported"][CONFIG_KEY]["highPriorityMessageFrequency"],
        json!({"value": "PT3M"})
    );
    drop(agent);
    assert!(
        audit.contains("\"status\":412"),
        "the refused write is recorded too: {audit}"
    );
}

#[test]
fn service_sdk_pages_and_configures_a_fleet() {
    let Some((python, bin)) = environment() else {
        return;
    };
    let _heavy = heavy();
    let dir = scratch("service-fleet");
    let hub = Hub::start(&dir.join("data"), "127.0.0.1:0").expect("hub starts");
    let mut flow = Flow::start(&python, &hub, &dir, &["fleet", "250"]);
    let mut agents = Vec::new();
    while let Some(step) = flow.next(&hub) {
        if step["step"] == json!("agents") {
            for (device, key) in step["keys"].as_object().expect("keys") {
                let agent_dir = dir.join(device);
                std::fs::create_dir_all(&agent_dir).expect("dir");
                let cs = module_cs(device, key.as_str().expect("key"));
                agents.push(Agent::start(&bin, &agent_dir, &hub, &cs, &[]));
            }
            flow.send("go");
        }
        if step["step"] == json!("done") {
            break;
        }
    }
    let (steps, _) = flow.finish(&hub);

    assert_eq!(
        steps["paged"],
        json!({"step": "paged", "pages": 3, "count": 250, "distinct": 250})
    );
    let high = &steps["high-wins"];
    assert_eq!(high["plant1"], json!("PT4M"), "the higher priority wins");
    assert_eq!(
        high["plant2"],
        json!("PT7M"),
        "the untagged agent is not targeted"
    );
    assert_eq!(high["plant2_desired"], json!({"$version": 1}));
    assert_eq!(high["high"], json!({"targetedCount": 1, "appliedCount": 1}));
    assert_eq!(high["low"], json!({"targetedCount": 1, "appliedCount": 0}));
    assert_eq!(high["metrics"], json!({"rejected": 0}));
    assert_eq!(high["listed"], json!(["plant1-high", "plant1-low"]));
    let deleted = &steps["high-deleted"];
    assert_eq!(
        deleted["plant1"],
        json!("PT3M"),
        "the next matching configuration applies"
    );
    assert_eq!(deleted["low"], json!({"targetedCount": 1, "appliedCount": 1}));
    let all = &steps["all-deleted"];
    assert_eq!(
        all["plant1"],
        json!("PT3M"),
        "deleting leaves the twins as they were"
    );
    assert_eq!(
        all["desired"][CONFIG_KEY]["highPriorityMessageFrequency"],
        json!({"value": "PT3M"})
    );
    assert_eq!(all["listed"], json!([]));
    assert_eq!(
        steps["statistics"],
        json!({"step": "statistics", "total": 3, "enabled": 3, "connected": 2})
    );
    drop(agents);
}

#[test]
fn service_api_refusals_change_nothing() {
    let python = match venv_python() {
        Ok(p) => p,
        Err(reason) => return skip(&reason),
    };
    let _heavy = heavy();
    let dir = scratch("service-refusals");
    let data = dir.join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let device = "dev-refusals";
    let cs = hub.add_identity(device, Some(MODULE));
    hub.desired("PUT", device, MODULE, &json!({"keep": {"me": 1}}));
    let before = hub.twin(device, MODULE);
    let identities_before = hub.api("GET", "/v1/identities", None).1;
    let reader = dir.join("reader.cs");
    std::fs::write(&reader, policy_show(&data, "registryRead")).expect("write");
    let base = format!("https://localhost:{}", hub.service.expect("service").port());
    let mut flow = Flow::start(
        &python,
        &hub,
        &dir,
        &["raw", &base, device, reader.to_str().expect("utf-8")],
    );
    let key = cs
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("key")
        .to_owned();
    flow.send(&key);
    let (_, cases) = flow.finish(&hub);
    let status: BTreeMap<String, (u64, Value)> = cases
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                (c["status"].as_u64().unwrap_or(0), c["body"].clone()),
            )
        })
        .collect();
    let expected = [
        ("wrong key", 401),
        ("expired token", 401),
        ("device token", 401),
        ("no token", 401),
        ("registryRead writes", 401),
        ("registryRead reads", 200),
        ("malformed JSON", 400),
        ("40 KB desired", 400),
        ("depth 11", 400),
        ("bad member name", 400),
        ("1 MB body", 413),
        ("unknown path", 404),
        ("direct method", 501),
        ("any api-version", 200),
        ("query syntax", 400),
        ("duplicate device", 409),
        ("no such module", 404),
        ("throttled", 429),
    ];
    for (name, code) in expected {
        let (got, body) = &status[name];
        assert_eq!(*got, code, "{name}: {body}\nhub log:\n{}", hub.log_text());
    }
    let message = |name: &str| status[name].1["Message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message("40 KB desired").contains("desired section"),
        "{}",
        message("40 KB desired")
    );
    assert!(
        message("depth 11").contains("nested deeper than 10"),
        "{}",
        message("depth 11")
    );
    assert!(
        message("query syntax").contains("position 38"),
        "{}",
        message("query syntax")
    );
    assert!(
        message("device token").contains("device or module token"),
        "{}",
        message("device token")
    );
    assert!(
        message("registryRead writes").contains("registryRead"),
        "{}",
        message("registryRead writes")
    );
    assert_eq!(hub.twin(device, MODULE), before, "no refusal changed the twin");
    assert_eq!(hub.api("GET", "/v1/identities", None).1, identities_before);
}

/// SDKs other than Python's always connect to port 443: `serve --service 127.0.0.1:443` works
/// (tests run as root), `policy show` leaves the port out, and the SAS resource without a port
/// is accepted.
#[test]
fn service_api_on_port_443() {
    let python = match venv_python() {
        Ok(p) => p,
        Err(reason) => return skip(&reason),
    };
    let _heavy = heavy();
    let dir = scratch("service-443");
    let hub = match Hub::start_with(&dir.join("data"), "127.0.0.1:0", &["--service", "127.0.0.1:443"]) {
        Ok(hub) => hub,
        Err(e) if e.contains("Address already in use") => return skip(&format!("port 443 is taken: {e}")),
        Err(e) if e.contains("Permission denied") => {
            return skip(&format!("binding port 443 needs root: {e}"))
        }
        Err(e) => panic!("{e}"),
    };
    let flow = Flow::start(&python, &hub, &dir, &["stats"]);
    let (steps, _) = flow.finish(&hub);
    assert_eq!(
        steps["stats"],
        json!({"step": "stats", "total": 1, "device": "dev-443"})
    );
}
