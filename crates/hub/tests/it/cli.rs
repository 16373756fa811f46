//! The operator CLI against a running hub (found through the data directory's `listen.json`):
//! identities and connection strings, twins (show, set-desired, patch-desired from a file or
//! standard input), messages (and `--follow`), status.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use twinguard_core::iothub::sas::sign;
use twinguard_mqtt::{ConnectReturnCode, Packet, QoS};

use crate::client::{unix_now, Client, Next};
use crate::support::{key_of, scratch, Hub, MODULE};

pub fn hub_cli(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("ends")
}

pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

#[test]
fn operator_commands() {
    let dir = scratch("cli");
    let data = dir.join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let device = "dev-cli";
    let cs_file = dir.join("dev-cli.cs");
    let out = hub_cli(
        &data,
        &[
            "identity",
            "add",
            device,
            "--module",
            MODULE,
            "--out",
            cs_file.to_str().expect("utf-8"),
        ],
        None,
    );
    ok_stdout(&out);
    let cs = std::fs::read_to_string(&cs_file).expect("written");
    assert!(
        cs.starts_with(&format!(
            "HostName=localhost;DeviceId={device};ModuleId={MODULE};SharedAccessKey="
        )),
        "{cs}"
    );
    let mode = std::fs::metadata(&cs_file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let shown = ok_stdout(&hub_cli(
        &data,
        &["identity", "show", device, "--module", MODULE],
        None,
    ));
    assert_eq!(shown, cs);
    let again = hub_cli(&data, &["identity", "add", device, "--module", MODULE], None);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let listed: Value =
        serde_json::from_str(&ok_stdout(&hub_cli(&data, &["identity", "list"], None))).expect("json");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(2),
        "the module and its device"
    );

    // Desired: a patch from standard input, then a replacement from a file in the shape
    // `twin show` prints (its $version members are ignored).
    ok_stdout(&hub_cli(
        &data,
        &["twin", "patch-desired", device, "--module", MODULE, "-"],
        Some(r#"{"a": {"b": 1}, "c": 2}"#),
    ));
    let twin: Value = serde_json::from_str(&ok_stdout(&hub_cli(
        &data,
        &["twin", "show", device, "--module", MODULE],
        None,
    )))
    .expect("json");
    assert_eq!(
        twin["properties"]["desired"],
        json!({"a": {"b": 1}, "c": 2, "$version": 2})
    );
    let mut edited = twin.clone();
    edited["properties"]["desired"]["c"] = Value::Null;
    edited["properties"]["desired"]["d"] = json!(true);
    let file = dir.join("twin.json");
    std::fs::write(&file, edited.to_string()).expect("write");
    ok_stdout(&hub_cli(
        &data,
        &[
            "twin",
            "set-desired",
            device,
            "--module",
            MODULE,
            file.to_str().expect("utf-8"),
        ],
        None,
    ));
    assert_eq!(
        hub.twin(device, MODULE)["desired"],
        json!({"a": {"b": 1}, "d": true, "$version": 3})
    );
    let bad = hub_cli(
        &data,
        &["twin", "patch-desired", device, "--module", MODULE, "-"],
        Some("[1]"),
    );
    assert_eq!(bad.status.code(), Some(1));
    let bad = hub_cli(&data, &["twin", "show", "nobody"], None);
    assert_eq!(bad.status.code(), Some(1));

    // Messages, and --follow.
    assert_eq!(ok_stdout(&hub_cli(&data, &["messages"], None)), "");
    let mut follow = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .arg("--data-dir")
        .arg(&data)
        .args(["messages", "--follow", "--device", device])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("follow");
    let mut c = Client::open(hub.mqtt, &hub.ca);
    let token = sign(
        &format!("localhost/devices/{device}/modules/{MODULE}"),
        &key_of(&cs),
        unix_now() + 600,
    );
    assert_eq!(
        c.connect(
            &format!("{device}/{MODULE}"),
            &format!("localhost/{device}/{MODULE}/?api-version=2021-04-12"),
            &token,
            60
        ),
        Some(ConnectReturnCode::Accepted)
    );
    let topic = format!("devices/{device}/modules/{MODULE}/messages/events/k=v");
    let id = c.publish(&topic, b"hello", QoS::AtLeastOnce).expect("id");
    assert_eq!(c.next(Duration::from_secs(5)), Next::Packet(Packet::PubAck(id)));
    let mut line = String::new();
    BufReader::new(follow.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("a line");
    let _ = follow.kill();
    let _ = follow.wait();
    let followed: Value = serde_json::from_str(&line).expect("json line");
    // Not JSON: base64, never a string under `body`.
    assert_eq!(followed["bodyBase64"], json!("aGVsbG8="));
    assert!(followed.get("body").is_none(), "{followed}");
    assert_eq!(followed["properties"], json!({"k": "v"}));
    let printed = ok_stdout(&hub_cli(
        &data,
        &["messages", "--device", device, "--module", MODULE],
        None,
    ));
    assert_eq!(printed.lines().count(), 1);
    assert_eq!(
        ok_stdout(&hub_cli(&data, &["messages", "--after", "1"], None)),
        ""
    );

    let status: Value = serde_json::from_str(&ok_stdout(&hub_cli(&data, &["status"], None))).expect("json");
    assert_eq!(status["connections"][0]["deviceId"], json!(device));
    assert_eq!(status["caFile"], json!(hub.ca.display().to_string()));
}
