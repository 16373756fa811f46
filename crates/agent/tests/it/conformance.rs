//! Conformance of the messages the agent writes with Microsoft's official security-message
//! schema (`../shared/reference/azure-iot-security/security_message/schemas`), validated the
//! way SPEC §4 and PROVENANCE.md require: draft-07, every `message*.json` registered so `$ref`s
//! resolve, and format assertion ON (without it the `ip` oneOf rejects every address, and
//! `date-time` would accept anything).
//!
//! `validate_messages` is meant for every test that produces messages (collectors, pipeline,
//! outbox): call it on the bodies. When `../shared` is missing it says so and passes, except
//! under CI (`CI=true`), where a skipped conformance check is a failure.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonschema::{Draft, Validator};
use serde_json::{json, Value};
use twinguard_core::event::{
    BaselineResult, BaselineSeverity, ConfigurationError, ConfigurationErrorType, ConnectedHardware,
    ConnectionCreate, Diagnostic, DiagnosticSeverity, Direction, DroppedEventsStatistics, Event, EventName,
    ExtraDetails, FirewallAction, FirewallConfiguration, ListeningPorts, LocalUsers, Login, LoginResult,
    MessageFrame, MessageStatistics, OSBaseline, PayloadItem, ProcessCreate, ProcessTerminate, Protocol,
    Queue, SystemInformation, Timestamp,
};
use uuid::Uuid;

use crate::support::{shared_dir, under_ci};

/// Where the schemas are, inside `../shared`.
const SCHEMA_DIR: &str = "reference/azure-iot-security/security_message/schemas";
/// Where the upstream sample messages are, inside `../shared`.
const SAMPLES: &str = "reference/azure-iot-security/security_message/tests/samples.json";

/// Checks every message body against `messageRoot.json`; the error lists each problem as
/// `message N: /json/pointer: what`. Passes (after saying so) when `../shared` is missing,
/// unless under CI.
pub fn validate_messages(bodies: &[Vec<u8>]) -> Result<(), String> {
    let Some(validator) = schema_validator() else {
        return Ok(());
    };
    let mut problems = Vec::new();
    for (n, body) in bodies.iter().enumerate() {
        match serde_json::from_slice::<Value>(body) {
            Ok(message) => problems.extend(
                schema_errors(validator, &message)
                    .into_iter()
                    .map(|e| format!("message {n}: {e}")),
            ),
            Err(e) => problems.push(format!("message {n}: not JSON: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// The compiled schema, or `None` (after printing why) when `../shared` is missing outside
/// CI. Panics when the schemas exist but cannot be loaded: that is a broken checkout.
pub fn schema_validator() -> Option<&'static Validator> {
    static VALIDATOR: OnceLock<Option<Validator>> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let shared = shared_dir()?;
        Some(build_validator(&shared.join(SCHEMA_DIR)).unwrap_or_else(|e| panic!("{e}")))
    });
    if validator.is_none() {
        assert!(
            !under_ci(),
            "../shared not found: message conformance must be checked under CI"
        );
        let test = std::thread::current().name().unwrap_or("conformance").to_owned();
        crate::support::record_skip(&test, "../shared not found (official-schema conformance)");
    }
    validator.as_ref()
}

/// Compiles `messageRoot.json` with every `message*.json` of `dir` registered under its file
/// name (which is also its `$id`), relative to jsonschema's default base URI, so that
/// `"$ref": "message_v1_0.json#"` and `messageEventTypeDefinitions_v1_0.json#/ip` resolve.
fn build_validator(dir: &std::path::Path) -> Result<Validator, String> {
    let mut resources = Vec::new();
    let mut root = None;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
            continue;
        };
        if !(file.starts_with("message") && file.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let schema: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file == "messageRoot.json" {
            root = Some(schema.clone());
        }
        resources.push((
            format!("json-schema:///{file}"),
            Draft::Draft7.create_resource(schema),
        ));
    }
    // The root plus the envelope, the type definitions and one schema per event name.
    if resources.len() < 17 {
        return Err(format!(
            "{}: only {} message*.json schemas",
            dir.display(),
            resources.len()
        ));
    }
    let root = root.ok_or_else(|| format!("{}: no messageRoot.json", dir.display()))?;
    jsonschema::options()
        .with_draft(Draft::Draft7)
        .with_resources(resources.into_iter())
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("{}: cannot compile messageRoot.json: {e}", dir.display()))
}

/// Every schema error of one message, as `/pointer: message` (the innermost oneOf branch is
/// not reported by jsonschema, so these name the failing keyword at the event level).
fn schema_errors(validator: &Validator, message: &Value) -> Vec<String> {
    validator
        .iter_errors(message)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// A fixed wall clock: 2026-11-28T19:21:00.123Z.
fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_893_660_123)
}

fn frame() -> MessageFrame {
    MessageFrame::new(env!("CARGO_PKG_VERSION"), Uuid::new_v4())
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn extra(pairs: &[(&str, &str)]) -> ExtraDetails {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Realistic items of `name`, with every optional field set in at least one item (so a field
/// spelled wrong is caught by `additionalProperties: false`), IPv4 and IPv6 addresses, and
/// `ExtraDetails`.
pub fn sample_items(name: EventName) -> Vec<PayloadItem> {
    match name {
        EventName::Diagnostic => vec![Diagnostic {
            correlation_id: Some(Uuid::new_v4()),
            extra_details: extra(&[("Collector", "Login")]),
            ..Diagnostic::new(
                DiagnosticSeverity::Warning,
                "audit socket is owned by auditd; reading the multicast group",
                4242,
                4243,
            )
        }
        .into()],
        EventName::ConfigurationError => vec![
            ConfigurationError::new(
                "highPriorityMessageFrequency",
                ConfigurationErrorType::TypeMismatch,
                "\"PT7M\"",
                "expected an ISO 8601 duration such as \"PT7M\", found \"7 minutes\"",
            )
            .into(),
            ConfigurationError::new(
                "maxLocalCacheSizeInBytes",
                ConfigurationErrorType::Conflict,
                "8192",
                "maxLocalCacheSizeInBytes (8192) < maxMessageSizeInBytes (204800)",
            )
            .with_extra("Other", "maxMessageSizeInBytes")
            .into(),
        ],
        EventName::DroppedEventsStatistics => vec![
            DroppedEventsStatistics::new(Queue::High, 1200, 0).into(),
            DroppedEventsStatistics::new(Queue::Low, 53_000, 17)
                .with_extra("Reason", "cache full")
                .into(),
        ],
        EventName::MessageStatistics => {
            vec![MessageStatistics::new(42, 30, 2)
                .with_extra("BytesSent", "512000")
                .into()]
        }
        EventName::ConnectedHardware => vec![
            ConnectedHardware {
                hardware_category: "USB".into(),
                hardware_sub_category: "Keyboard".into(),
                hardware_name: "Logitech, Inc. Keyboard K120".into(),
                extra_details: extra(&[("VendorId", "046d"), ("ProductId", "c31c")]),
            }
            .into(),
            ConnectedHardware {
                hardware_category: "Network".into(),
                hardware_sub_category: "Ethernet".into(),
                hardware_name: "eth0".into(),
                extra_details: ExtraDetails::new(),
            }
            .into(),
        ],
        EventName::ListeningPorts => vec![
            ListeningPorts {
                remote_address: Some(ip("0.0.0.0")),
                remote_port: Some("*".into()),
                local_address: Some(ip("0.0.0.0")),
                local_port: "22".into(),
                protocol: Protocol::Tcp,
                extra_details: extra(&[("Pid", "611"), ("Executable", "/usr/sbin/sshd")]),
            }
            .into(),
            ListeningPorts {
                remote_address: None,
                remote_port: None,
                local_address: Some(ip("fe80::1c2d:3eff:fe4f:5a6b")),
                local_port: "5353".into(),
                protocol: Protocol::Udp,
                extra_details: extra(&[("ScopeId", "2")]),
            }
            .into(),
        ],
        EventName::ProcessCreate => vec![ProcessCreate {
            executable: "/usr/bin/curl".into(),
            process_id: 31_337,
            parent_process_id: 1204,
            user_id: "1000".into(),
            user_name: Some("pi".into()),
            command_line: "curl -fsS https://example.com/update.sh".into(),
            extra_details: extra(&[("HitCount", "3")]),
        }
        .into()],
        EventName::ProcessTerminate => vec![ProcessTerminate {
            executable: "/usr/bin/curl".into(),
            process_id: 31_337,
            exit_status: 137,
            extra_details: extra(&[("Signal", "SIGKILL")]),
        }
        .into()],
        EventName::SystemInformation => vec![SystemInformation {
            os_name: Some("Debian GNU/Linux".into()),
            os_version: Some("12 (bookworm)".into()),
            os_vendor: Some("Debian".into()),
            os_architecture: Some("aarch64".into()),
            host_name: Some("gateway-07".into()),
            bios_version: Some("2023.01".into()),
            boot_device: Some("/dev/mmcblk0p2".into()),
            total_physical_memory_in_kb: Some(3_884_564),
            free_physical_memory_in_kb: Some(2_107_772),
            total_virtual_memory_in_kb: Some(4_933_136),
            free_virtual_memory_in_kb: Some(3_156_344),
            extra_details: extra(&[("KernelRelease", "6.1.0-rpi7-rpi-v8")]),
        }
        .into()],
        EventName::LocalUsers => vec![
            LocalUsers {
                group_ids: "0".into(),
                group_names: "root".into(),
                user_id: "0".into(),
                user_name: "root".into(),
                extra_details: extra(&[("Shell", "/bin/bash")]),
            }
            .into(),
            LocalUsers {
                group_ids: "1000;27;44".into(),
                group_names: "pi;sudo;video".into(),
                user_id: "1000".into(),
                user_name: "pi".into(),
                extra_details: ExtraDetails::new(),
            }
            .into(),
        ],
        EventName::Login => vec![
            Login {
                process_id: 2211,
                user_id: Some("1000".into()),
                user_name: "pi".into(),
                operation: "login".into(),
                executable: "/usr/sbin/sshd".into(),
                remote_address: Some(ip("2001:db8::42")),
                remote_port: Some("50122".into()),
                local_port: Some("22".into()),
                result: LoginResult::Success,
                extra_details: extra(&[("Terminal", "ssh")]),
            }
            .into(),
            Login {
                process_id: 2290,
                user_id: None,
                user_name: "admin".into(),
                operation: "authentication".into(),
                executable: "/usr/sbin/sshd".into(),
                remote_address: Some(ip("203.0.113.9")),
                remote_port: Some("41000".into()),
                local_port: None,
                result: LoginResult::Fail,
                extra_details: ExtraDetails::new(),
            }
            .into(),
        ],
        EventName::ConnectionCreate => vec![
            ConnectionCreate {
                remote_address: ip("93.184.216.34"),
                remote_port: "443".into(),
                local_address: Some(ip("192.168.1.20")),
                local_port: Some("51544".into()),
                direction: Direction::Out,
                protocol: Protocol::Tcp,
                process_id: 31_337,
                user_id: Some("1000".into()),
                executable: "/usr/bin/curl".into(),
                command_line: Some("curl -fsS https://example.com/update.sh".into()),
                extra_details: extra(&[("Source", "audit")]),
            }
            .into(),
            ConnectionCreate {
                remote_address: ip("::ffff:198.51.100.7"),
                remote_port: "60012".into(),
                local_address: Some(ip("2001:db8::20")),
                local_port: Some("22".into()),
                direction: Direction::In,
                protocol: Protocol::Tcp,
                process_id: 611,
                user_id: None,
                executable: "/usr/sbin/sshd".into(),
                command_line: None,
                extra_details: extra(&[("Source", "poll")]),
            }
            .into(),
        ],
        EventName::FirewallConfiguration => vec![
            FirewallConfiguration {
                priority: Some(-150),
                direction: Some(Direction::In),
                chain_name: Some("input".into()),
                application: Some("/usr/sbin/sshd".into()),
                enabled: true,
                action: FirewallAction::Allow,
                source_address: Some("10.0.0.0/8".into()),
                source_port: Some("*".into()),
                destination_address: Some("Local subnet".into()),
                destination_port: Some("22,2222".into()),
                protocol: Some("TCP".into()),
                extra_details: extra(&[("Table", "inet filter"), ("Handle", "7")]),
            }
            .into(),
            FirewallConfiguration {
                priority: None,
                direction: None,
                chain_name: None,
                application: None,
                enabled: true,
                action: FirewallAction::Deny,
                source_address: None,
                source_port: None,
                destination_address: None,
                destination_port: None,
                protocol: None,
                extra_details: extra(&[("Policy", "drop")]),
            }
            .into(),
        ],
        EventName::OSBaseline => vec![
            OSBaseline {
                description: "SSH root login is disabled".into(),
                cce_id: "CCE-4387-1".into(),
                result: BaselineResult::Pass,
                error: String::new(),
                severity: BaselineSeverity::Important,
                extra_details: extra(&[("Value", "PermitRootLogin no")]),
            }
            .into(),
            OSBaseline {
                description: "/etc/shadow is not readable by others".into(),
                cce_id: "twinguard-fs-002".into(),
                result: BaselineResult::Err,
                error: "permission denied reading /etc/shadow".into(),
                severity: BaselineSeverity::Critical,
                extra_details: ExtraDetails::new(),
            }
            .into(),
        ],
    }
}

/// One event of every name, at the fixed wall clock in local time.
pub fn one_event_of_every_name() -> Vec<Event> {
    EventName::ALL
        .into_iter()
        .map(|n| twinguard::stamp::new_event(n, sample_items(n), wall()).unwrap())
        .collect()
}

/// A message holding one event of every name, as a JSON value to break in tests.
fn message_of_every_name() -> Value {
    let events: Vec<Vec<u8>> = one_event_of_every_name().iter().map(Event::to_json).collect();
    serde_json::from_slice(&frame().assemble(&events)).unwrap()
}

/// Index of the event named `name` in [`message_of_every_name`].
fn index_of(name: EventName) -> usize {
    EventName::ALL.iter().position(|n| *n == name).unwrap()
}

#[test]
fn a_message_with_one_event_of_every_name_validates() {
    let events: Vec<Vec<u8>> = one_event_of_every_name().iter().map(Event::to_json).collect();
    let f = frame();
    let mut bodies = vec![f.assemble(&events)];
    // And each event alone, so that a problem names its event.
    bodies.extend(events.iter().map(|e| f.assemble(&[e])));
    validate_messages(&bodies).unwrap();
    // For a cross-check with ../shared/tools/check-messages (the Python validator).
    if let Ok(path) = std::env::var("TWINGUARD_DUMP_MESSAGES") {
        let mut lines = Vec::new();
        for body in &bodies {
            lines.extend_from_slice(body);
            lines.push(b'\n');
        }
        std::fs::write(&path, lines).unwrap();
    }
}

#[test]
fn empty_periodic_snapshots_validate() {
    let f = frame();
    let bodies: Vec<Vec<u8>> = EventName::ALL
        .into_iter()
        .filter(|n| n.is_snapshot())
        .map(|n| f.assemble(&[twinguard::stamp::new_event(n, vec![], wall()).unwrap().to_json()]))
        .collect();
    assert_eq!(bodies.len(), 8);
    validate_messages(&bodies).unwrap();
}

#[test]
fn utc_timestamps_with_z_and_with_a_zero_offset_both_validate() {
    let Some(validator) = schema_validator() else {
        return;
    };
    let mut message = message_of_every_name();
    assert!(message["Events"][0]["TimestampUTC"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    message["Events"][0]["TimestampUTC"] = json!("2026-11-28T19:21:00.123+00:00");
    message["Events"][0]["TimestampLocal"] = json!("2026-11-28T20:21:00.123+01:00");
    assert_eq!(schema_errors(validator, &message), Vec::<String>::new());
}

#[test]
fn events_split_to_fit_make_valid_messages_within_the_size_bound() {
    let max_message = 8192;
    let f = frame();
    let items: Vec<PayloadItem> = (0..300u32)
        .map(|pid| {
            ProcessCreate {
                executable: "/usr/bin/python3".into(),
                process_id: pid,
                parent_process_id: 1,
                user_id: "0".into(),
                user_name: Some("root".into()),
                command_line: format!("python3 -c 'print({})'", "9".repeat(pid as usize % 90)),
                extra_details: ExtraDetails::new(),
            }
            .into()
        })
        .collect();
    let event = twinguard::stamp::new_event(EventName::ProcessCreate, items, wall()).unwrap();
    let out = event.split_to_fit(f.max_event_bytes(max_message), twinguard::stamp::new_id);
    assert!(out.too_large.is_empty());
    assert!(out.events.len() > 1);
    let bodies: Vec<Vec<u8>> = out.events.iter().map(|e| f.assemble(&[e.to_json()])).collect();
    for (body, event) in bodies.iter().zip(&out.events) {
        assert!(body.len() <= max_message, "{} > {max_message}", body.len());
        assert_eq!(body.len(), f.body_len([event.json_len()]));
    }
    let kept: usize = out.events.iter().map(|e| e.payload().len()).sum();
    assert_eq!(kept, 300);
    validate_messages(&bodies).unwrap();
}

#[test]
fn broken_messages_are_rejected() {
    let Some(validator) = schema_validator() else {
        return;
    };
    let good = message_of_every_name();
    assert_eq!(schema_errors(validator, &good), Vec::<String>::new());

    let conn = index_of(EventName::ConnectionCreate);
    let process = index_of(EventName::ProcessCreate);
    let login = index_of(EventName::Login);
    let ports = index_of(EventName::ListeningPorts);
    let sysinfo = index_of(EventName::SystemInformation);
    type Breakage = (&'static str, Box<dyn Fn(&mut Value)>);
    let breakages: Vec<Breakage> = vec![
        (
            "IPv4 out of range",
            Box::new(move |m| m["Events"][conn]["Payload"][0]["RemoteAddress"] = json!("10.0.0.256")),
        ),
        (
            "IPv6 with a scope id",
            Box::new(move |m| m["Events"][conn]["Payload"][1]["LocalAddress"] = json!("fe80::1%eth0")),
        ),
        (
            "an address that is a name",
            Box::new(move |m| m["Events"][ports]["Payload"][0]["LocalAddress"] = json!("localhost")),
        ),
        (
            "missing required ProcessId",
            Box::new(move |m| {
                m["Events"][process]["Payload"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("ProcessId");
            }),
        ),
        (
            "Login without UserId and UserName",
            Box::new(move |m| {
                let item = m["Events"][login]["Payload"][1].as_object_mut().unwrap();
                item.remove("UserName");
                item.remove("UserId");
            }),
        ),
        (
            "a port as a number",
            Box::new(move |m| m["Events"][conn]["Payload"][0]["RemotePort"] = json!(443)),
        ),
        (
            "an unknown payload field",
            Box::new(move |m| m["Events"][sysinfo]["Payload"][0]["OSArchitecture"] = json!("aarch64")),
        ),
        (
            "a Triggered event flagged empty",
            Box::new(move |m| {
                m["Events"][process]["IsEmpty"] = json!(true);
                m["Events"][process]["Payload"] = json!([]);
            }),
        ),
        (
            "a Periodic event empty but not flagged",
            Box::new(move |m| {
                m["Events"][sysinfo]["Payload"] = json!([]);
            }),
        ),
        (
            "the wrong category for the name",
            Box::new(move |m| m["Events"][process]["Category"] = json!("Periodic")),
        ),
        (
            "a timestamp with a space",
            Box::new(|m| m["Events"][0]["TimestampUTC"] = json!("2026-11-28 19:21:00.123Z")),
        ),
        (
            "a timestamp without an offset",
            Box::new(|m| m["Events"][0]["TimestampLocal"] = json!("2026-11-28T20:21:00.123")),
        ),
        (
            "an Id of 32 characters",
            Box::new(|m| m["Events"][0]["Id"] = json!("072f3eca3db045ba8174fa383bc93caf")),
        ),
        ("no events", Box::new(|m| m["Events"] = json!([]))),
        (
            "another schema version",
            Box::new(|m| m["MessageSchemaVersion"] = json!("2.0")),
        ),
        (
            "an unknown envelope member",
            Box::new(|m| m["DeviceId"] = json!("dev1")),
        ),
    ];
    for (what, breakage) in breakages {
        let mut message = good.clone();
        breakage(&mut message);
        assert!(!schema_errors(validator, &message).is_empty(), "accepted: {what}");
        let body = serde_json::to_vec(&message).unwrap();
        assert!(
            validate_messages(&[body]).is_err(),
            "validate_messages accepted: {what}"
        );
    }
}

/// PROVENANCE.md: of the 13 upstream valid samples, 4 fail with format assertion on, because
/// their timestamps use a space instead of `T`; the 6 invalid samples are all rejected.
#[test]
fn upstream_samples_behave_as_provenance_says() {
    let Some(validator) = schema_validator() else {
        return;
    };
    let Some(shared) = shared_dir() else { return };
    let samples: Value = serde_json::from_slice(&std::fs::read(shared.join(SAMPLES)).unwrap()).unwrap();
    let valid = samples["valid"].as_array().unwrap();
    let invalid = samples["invalid"].as_array().unwrap();
    assert_eq!((valid.len(), invalid.len()), (13, 6));

    let failing: Vec<&Value> = valid
        .iter()
        .filter(|m| !schema_errors(validator, m).is_empty())
        .collect();
    assert_eq!(failing.len(), 4);
    for message in failing {
        // Written with `T`, the same message passes: the space is the only problem.
        let mut fixed = message.clone();
        for event in fixed["Events"].as_array_mut().unwrap() {
            for member in ["TimestampLocal", "TimestampUTC"] {
                let text = event[member].as_str().unwrap().to_owned();
                assert!(text.contains(' '), "{member} {text:?} fails for another reason");
                event[member] = json!(text.replacen(' ', "T", 1));
            }
        }
        assert_eq!(schema_errors(validator, &fixed), Vec::<String>::new());
    }
    for message in invalid {
        assert!(
            !schema_errors(validator, message).is_empty(),
            "accepted: {message}"
        );
    }
}

#[test]
fn our_events_read_back_unchanged() {
    for event in one_event_of_every_name() {
        assert_eq!(Event::from_json(&event.to_json()).unwrap(), event);
    }
    // Timestamps of the fixed clock, in whatever the local zone is, name one instant.
    let t = one_event_of_every_name()[0].time();
    assert_eq!(t.utc_rfc3339(), "2026-11-28T19:21:00.123Z");
    assert_eq!(Timestamp::parse_rfc3339(&t.local_rfc3339()), Some(t));
}
