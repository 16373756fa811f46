//! The hub against Microsoft's official `azure-iot-device` Python SDK, a client nobody here
//! wrote: `tests/sdk/module_client.py` connects as a module client with the hub's connection
//! string and CA, gets the twin, patches reported properties, receives a desired patch and
//! sends a message marked as a security message; this test checks what the hub stored. The
//! SDK only ever connects to port 8883, so the hub runs on 127.0.0.1:8883, one test at a time.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::{json, Value};
use twinguard_core::event::{Event, Timestamp, Uuid};

use crate::python::venv_python;
use crate::support::{scratch, skip, Hub, CONFIG_KEY, MODULE};

/// Serializes the tests that need port 8883.
pub static PORT_8883: Mutex<()> = Mutex::new(());

/// A valid security message (one empty periodic event), as the agent's model writes it.
pub fn security_message() -> String {
    let event = Event::from_items(
        Uuid::from_u128(0x0f8f_ad5b_d9cb_469f_a165_7086_7728_950e),
        Vec::<twinguard_core::event::ListeningPorts>::new(),
        Timestamp::from_parts(1_795_893_660_123, 0).expect("time"),
    )
    .expect("event");
    format!(
        r#"{{"AgentVersion":"0.1.0","AgentId":"9b2d4c1e-8f3a-4e6b-9c7d-1a2b3c4d5e6f","MessageSchemaVersion":"1.0","Events":[{}]}}"#,
        String::from_utf8(event.to_json()).expect("utf-8")
    )
}

#[test]
fn official_python_sdk_module_client() {
    let python = match venv_python() {
        Ok(p) => p,
        Err(reason) => return skip(&reason),
    };
    let _port = PORT_8883
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = scratch("sdk");
    let hub = match Hub::start(&dir.join("data"), "127.0.0.1:8883") {
        Ok(hub) => hub,
        Err(e) if e.contains("Address already in use") => return skip(&format!("port 8883 is taken: {e}")),
        Err(e) => panic!("{e}"),
    };
    let device = "dev-sdk";
    let cs = hub.add_identity(device, Some(MODULE));
    std::fs::write(dir.join("cs.txt"), &cs).expect("write");
    let body = security_message();
    std::fs::write(dir.join("message.json"), &body).expect("write");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/module_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(dir.join("cs.txt"))
        .arg(&hub.ca)
        .arg(dir.join("message.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs");
    let stdout = child.stdout.take().expect("stdout");
    let desired_patch = json!({
        CONFIG_KEY: {"highPriorityMessageFrequency": {"value": "PT2M"}},
        "sdkTest": {"n": 1},
    });
    let mut steps = std::collections::BTreeMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let step: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a step: {line}"));
        let name = step["step"].as_str().unwrap_or_default().to_owned();
        assert_ne!(
            name,
            "error",
            "the SDK failed: {step}\nhub log:\n{}",
            hub.log_text()
        );
        if name == "waiting" {
            hub.desired("PATCH", device, MODULE, &desired_patch);
        }
        steps.insert(name, step);
    }
    let status = child.wait().expect("python ends");
    assert!(
        status.success(),
        "module_client.py: {status}; steps {steps:?}\nhub log:\n{}",
        hub.log_text()
    );

    // get_twin on a new identity: empty sections at version 1.
    assert_eq!(
        steps["twin"]["twin"],
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );
    // The desired patch arrived as a notification with the next $version.
    let mut expected_patch = desired_patch.clone();
    expected_patch["$version"] = json!(2);
    assert_eq!(steps["desired"]["patch"], expected_patch);
    // Reported: two patches, the second deleting a member with null.
    let twin = hub.twin(device, MODULE);
    assert_eq!(
        twin["reported"],
        json!({"sdk": {"language": "python", "step": 1}, "$version": 3})
    );
    assert_eq!(
        steps["twin-after"]["twin"], twin,
        "the SDK reads what the hub stores"
    );
    // The message: stored once, its property bag decoded, flagged as a security message that
    // parses with the agent's model.
    let messages = hub.messages(device);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["moduleId"], json!(MODULE));
    assert_eq!(m["securityMessage"], json!(true));
    assert_eq!(m["schemaValid"], json!(true), "{m}");
    assert_eq!(m["body"], serde_json::from_str::<Value>(&body).expect("JSON"));
    assert_eq!(
        m["properties"],
        json!({
            "$.mid": "sdk-message-1",
            "$.ct": "application/json",
            "$.ce": "utf-8",
            "$.ifid": "urn:azureiot:Security:SecurityAgent:1",
            "origin": "azure-iot-device",
        })
    );
    assert!(steps.contains_key("done"));
}
