//! The real binary's command-line contracts and exit codes (SPEC §8).

use assert_cmd::Command;
use serde_json::Value;
use twinguard_core::config::{Property, CONFIG_KEY};

use crate::support::TempDir;

fn twinguard() -> Command {
    Command::cargo_bin("twinguard").unwrap()
}

/// Runs `twinguard validate FILE` on `bytes`; returns (exit code, stdout, stderr).
fn validate_bytes(bytes: &[u8]) -> (i32, String, String) {
    let dir = TempDir::new("validate");
    let path = dir.path("twin.json");
    std::fs::write(&path, bytes).unwrap();
    let out = twinguard().arg("validate").arg(&path).output().unwrap();
    let name = path.display().to_string();
    let stdout = String::from_utf8(out.stdout).unwrap().replace(&name, "FILE");
    let stderr = String::from_utf8(out.stderr).unwrap().replace(&name, "FILE");
    (out.status.code().unwrap(), stdout, stderr)
}

#[test]
fn validate_exit_codes_and_lines() {
    let (code, stdout, _) = validate_bytes(br#"{"desired": {"ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration": {"highPriorityMessageFrequency": {"value": "PT7M"}, "eventPriorityConnectionCreate": {"value": "High"}}}}"#);
    assert_eq!((code, stdout.as_str()), (0, ""));

    let (code, stdout, _) = validate_bytes(
        br#"{"highPriorityMessageFrequency": {"value": "7 minutes"}, "eventPriorityLoginn": {}}"#,
    );
    assert_eq!(code, 1);
    assert_eq!(
        stdout,
        "FILE: error: /highPriorityMessageFrequency/value: expected an ISO 8601 duration like \"PT7M\", found \"7 minutes\" (must start with an upper-case P)\n\
         FILE: warning: /eventPriorityLoginn: unknown property \"eventPriorityLoginn\" is ignored; did you mean \"eventPriorityLogin\"?\n"
    );

    // Warnings alone keep exit 0.
    let (code, stdout, _) = validate_bytes(br#"{"maxMessageSizeInBytes": {"value": 10000}}"#);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("FILE: warning: /maxMessageSizeInBytes: "),
        "{stdout}"
    );
}

#[test]
fn unreadable_documents_exit_2_with_a_clear_line() {
    // The seed document's own example, missing its braces.
    let seed = b"\"desired\": {\n    \"ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration\": {\n        \"highPriorityMessageFrequency\": {\n            \"value\": \"PT7M\"\n        \"eventPriorityConnectionCreate\": {\n            \"value\": \"High\"\n";
    let deep = "[".repeat(5000);
    let ten_mb = vec![b' '; 10 * 1024 * 1024];
    for (bytes, expected) in [
        (
            &seed[..],
            "FILE: error: malformed JSON at line 1 column 10: trailing characters\n",
        ),
        (b"".as_slice(), "FILE: error: the document is empty\n"),
        (
            b"{\"a\": \"\xff\"}".as_slice(),
            "FILE: error: the document is not UTF-8 (invalid byte at offset 7)\n",
        ),
        (
            &ten_mb[..],
            "FILE: error: the document is larger than the 1 MiB limit\n",
        ),
        (
            deep.as_bytes(),
            "FILE: error: malformed JSON at line 1 column 128: recursion limit exceeded\n",
        ),
        (
            b"{\"a\": 1,}".as_slice(),
            "FILE: error: malformed JSON at line 1 column 9: trailing comma\n",
        ),
    ] {
        let (code, stdout, stderr) = validate_bytes(bytes);
        assert_eq!((code, stdout.as_str(), stderr.as_str()), (2, "", expected));
    }
}

#[test]
fn missing_file_stdin_and_usage() {
    let out = twinguard()
        .args(["validate", "/nonexistent/twin.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "/nonexistent/twin.json: error: cannot read: No such file or directory (os error 2)\n"
    );
    twinguard()
        .args(["validate", "-"])
        .write_stdin("{}")
        .assert()
        .code(0);
    let out = twinguard()
        .args(["validate", "-"])
        .write_stdin(r#"{"eventPriorityLogin": {"value": "high"}}"#)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("<stdin>: error: /eventPriorityLogin/value:"));
    twinguard().arg("validate").assert().code(2);
    twinguard().arg("frobnicate").assert().code(2);
    twinguard().args(["validate", "a", "b"]).assert().code(2);
}

#[test]
fn config_show_prints_every_property_with_defaults_or_what_was_set() {
    let out = twinguard().args(["config", "show"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let object = shown[CONFIG_KEY].as_object().unwrap();
    assert_eq!(object.len(), Property::all().len());
    for p in Property::all() {
        assert_eq!(object[&p.name()], serde_json::json!({"value": p.default_value()}));
    }
    assert_eq!(object["eventPriorityDiagnostic"]["value"], "Off");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\n  \""), "pretty");

    let out = twinguard()
        .args(["config", "show", "--twin", "-"])
        .write_stdin(
            r#"{"snapshotFrequency": {"value": "P1DT2H"}, "maxMessageSizeInBytes": {"value": 8192.0}}"#,
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown[CONFIG_KEY]["snapshotFrequency"]["value"], "P1DT2H");
    assert_eq!(
        shown[CONFIG_KEY]["maxMessageSizeInBytes"]["value"],
        serde_json::json!(8192.0)
    );

    let out = twinguard()
        .args(["config", "show", "--twin", "-"])
        .write_stdin(r#"{"snapshotFrequency": {"value": "PT0S"}}"#)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("<stdin>: error: /snapshotFrequency/value:"));
    twinguard()
        .args(["config", "show", "--twin", "/nonexistent"])
        .assert()
        .code(2);
}

#[test]
fn config_schema_is_a_json_schema() {
    let out = twinguard().args(["config", "schema"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(jsonschema::draft7::meta::is_valid(&schema));
    assert_eq!(
        schema["properties"].as_object().unwrap().len(),
        Property::all().len()
    );
}
