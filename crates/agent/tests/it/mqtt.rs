//! MQTT and IoT Hub modes end to end, against real mosquitto brokers the tests start on free
//! loopback ports (plain, and TLS with a CA and server certificate generated here): twin sync,
//! runtime configuration changes, QoS 1 delivery of schema-valid messages, a broker outage with
//! no acknowledged event lost (and the drain rate and reconnect time printed), start-up with an
//! invalid desired document, and the IoT Hub dialect against a small hub harness on mosquitto
//! that answers the twin topics (until `twinguard-hub` exists: see `iothub_*`).
//!
//! The observers are the agent's own MQTT client (`twinguard::transport::mqtt_client`),
//! subscribed with a persistent session where they must not miss messages across an outage.
//! Without mosquitto (Debian packages `mosquitto`, `mosquitto-clients`) the tests say SKIPPED
//! (a failure under CI).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use twinguard::backoff::{Backoff, Jitter};
use twinguard::transport::mqtt_client::{ClientOptions, Credentials, MqttClient, Secret, StaticLogin};
use twinguard::transport::tls::{client_config, TlsOptions};
use twinguard_core::config::CONFIG_KEY;
use twinguard_mqtt::{Publish, QoS};

use crate::conformance::validate_messages;
use crate::support::{skip, TempDir};

const DEVICE: &str = "dev1";

fn mosquitto_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    twinguard_os::euid() == 0
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A CA and a server certificate for `localhost` and `127.0.0.1`, as PEM files in `dir`.
struct TestPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &TempDir) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "twinguard test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let pki = TestPki {
        ca: dir.path("ca.pem"),
        cert: dir.path("server.pem"),
        key: dir.path("server.key"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, server_cert.pem()).unwrap();
    write_private(&pki.key, &server_key.serialize_pem());
    pki
}

/// A mosquitto on a free loopback port, with persistence (sessions and retained messages
/// survive a restart) in its own directory.
struct Broker {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    tls: bool,
}

impl Broker {
    /// Starts a broker; `None` (after saying SKIPPED) when mosquitto is not installed.
    fn start(test: &str, dir: &TempDir, tls: Option<&TestPki>, extra: &str) -> Option<Broker> {
        let Some(_) = mosquitto_binary() else {
            skip(test, "mosquitto is not installed (Debian package mosquitto)");
            return None;
        };
        let port = free_port();
        let store = dir.path("mosquitto");
        std::fs::create_dir_all(&store).unwrap();
        let mut conf = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nlog_dest file {}/mosquitto.log\n",
            store.display(),
            store.display()
        );
        if is_root() {
            // Otherwise mosquitto drops to its own user, which cannot read the test directory.
            conf.push_str("user root\n");
        }
        if let Some(pki) = tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display()
            ));
        }
        if !extra.contains("allow_anonymous") {
            conf.push_str("allow_anonymous true\n");
        }
        conf.push_str(extra);
        let conf_path = dir.path("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut broker = Broker {
            child: None,
            port,
            conf: conf_path,
            tls: tls.is_some(),
        };
        broker.launch();
        Some(broker)
    }

    fn launch(&mut self) {
        let child = Command::new(mosquitto_binary().unwrap())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGTERM: it saves its persistent state) and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        if self.tls {
            format!("mqtts://localhost:{}", self.port)
        } else {
            format!("mqtt://127.0.0.1:{}", self.port)
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `twinguard run` in a remote mode; its log (info level) goes to `agent.log` in the data
/// directory's parent.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &TempDir, name: &str, args: &[&str]) -> Agent {
        let log = dir.path(&format!("{name}.log"));
        let child = Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
            .arg("run")
            .arg("--data-dir")
            .arg(dir.path(&format!("{name}-data")))
            .args(args)
            .env("TWINGUARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    fn mqtt(dir: &TempDir, broker: &Broker, extra: &[&str]) -> Agent {
        let url = broker.url();
        let mut args = vec!["--mqtt", url.as_str(), "--device-id", DEVICE];
        args.extend_from_slice(extra);
        Agent::start(dir, "agent", &args)
    }

    /// SIGTERM; the exit code.
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().unwrap().code()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

/// A test's view of the broker: a subscriber that keeps every publish with its arrival time.
struct Observer {
    client: MqttClient,
    seen: Vec<(Instant, Publish)>,
}

struct ObserverOptions<'a> {
    port: u16,
    ca: Option<&'a Path>,
    filters: &'a [&'a str],
    client_id: &'a str,
    persistent: bool,
    login: Option<(&'a str, &'a str)>,
}

impl Observer {
    fn connect(o: ObserverOptions<'_>) -> Observer {
        let tls = o.ca.map(|ca| {
            client_config(&TlsOptions {
                ca: Some(ca.to_owned()),
                client_auth: None,
            })
            .unwrap()
        });
        let client = MqttClient::start(ClientOptions {
            host: if tls.is_some() { "localhost" } else { "127.0.0.1" }.to_owned(),
            port: o.port,
            tls,
            client_id: o.client_id.to_owned(),
            keep_alive: Duration::from_secs(30),
            clean_session: !o.persistent,
            will: None,
            subscriptions: o
                .filters
                .iter()
                .map(|f| ((*f).to_owned(), QoS::AtLeastOnce))
                .collect(),
            birth: vec![],
            login: Box::new(StaticLogin(Credentials {
                username: o.login.map(|(u, _)| u.to_owned()),
                password: o.login.map(|(_, p)| Secret(p.as_bytes().to_vec())),
                renew_after: None,
            })),
            max_incoming_packet: 2 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(300),
                jitter: Jitter::UpperHalf,
            },
            incoming_capacity: 200_000,
        })
        .unwrap();
        let t = Instant::now();
        while client.connections() == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the observer could not connect"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Observer {
            client,
            seen: Vec::new(),
        }
    }

    fn plain(broker: &Broker, client_id: &str) -> Observer {
        Observer::connect(ObserverOptions {
            port: broker.port,
            ca: None,
            filters: &["twinguard/dev1/#"],
            client_id,
            persistent: false,
            login: None,
        })
    }

    fn pump(&mut self, wait: Duration) {
        if let Some(p) = self.client.recv_timeout(wait) {
            self.seen.push((Instant::now(), p));
        }
        while let Some(p) = self.client.try_recv() {
            self.seen.push((Instant::now(), p));
        }
    }

    /// Waits until `done` holds for what was seen; panics with `what` after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Observer) -> bool) {
        let t = Instant::now();
        loop {
            if done(self) {
                return;
            }
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            self.pump(Duration::from_millis(50));
        }
    }

    fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        self.client
            .publish(topic, payload, retain, Duration::from_secs(5))
            .unwrap();
    }

    fn on(&self, topic: &str) -> impl Iterator<Item = &Publish> {
        let topic = topic.to_owned();
        self.seen.iter().map(|(_, p)| p).filter(move |p| p.topic == topic)
    }

    fn latest_json(&self, topic: &str) -> Option<Value> {
        self.on(topic)
            .last()
            .and_then(|p| serde_json::from_slice(&p.payload).ok())
    }

    fn bodies(&self, topic: &str) -> Vec<Vec<u8>> {
        self.on(topic).map(|p| p.payload.clone()).collect()
    }
}

fn topic(leaf: &str) -> String {
    format!("twinguard/{DEVICE}/{leaf}")
}

/// The events of messages, in arrival order.
fn events(bodies: &[Vec<u8>]) -> Vec<Value> {
    bodies
        .iter()
        .flat_map(|b| {
            let m: Value = serde_json::from_slice(b).unwrap();
            m["Events"].as_array().cloned().unwrap_or_default()
        })
        .collect()
}

/// Whether every property of `desired`'s configuration object is JSON-equal in `reported`.
fn reported_matches(reported: &Value, desired: &Value) -> bool {
    desired[CONFIG_KEY]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| reported[CONFIG_KEY].get(k) == Some(v))
}

fn status_of(reported: &Value) -> &str {
    reported["twinguard"]["configurationStatus"]
        .as_str()
        .unwrap_or("")
}

#[test]
fn mqtt_twin_sync_runtime_rejection_and_qos1_messages() {
    let dir = TempDir::new("mqtt-twin");
    let Some(broker) = Broker::start("mqtt_twin_sync", &dir, None, "") else {
        return;
    };
    let mut obs = Observer::plain(&broker, "it-twin");
    let desired = json!({CONFIG_KEY: {
        "lowPriorityMessageFrequency": {"value": "PT1S"},
        "highPriorityMessageFrequency": {"value": "PT1S"},
        "snapshotFrequency": {"value": "PT1H"},
        "maxMessageSizeInBytes": {"value": 65536},
        "eventPriorityLogin": {"value": "Low"},
    }});
    obs.publish(&topic("twin/desired"), desired.to_string().as_bytes(), true);
    let mut agent = Agent::mqtt(&dir, &broker, &[]);

    obs.wait_for("reported == desired", Duration::from_secs(20), |o| {
        o.latest_json(&topic("twin/reported"))
            .is_some_and(|r| status_of(&r) == "applied" && reported_matches(&r, &desired))
    });
    assert!(obs.on(&topic("status")).any(|p| p.payload == b"online"));
    // Retained: a client arriving later is given the same section.
    let mut late = Observer::plain(&broker, "it-twin-late");
    late.wait_for("the retained reported section", Duration::from_secs(5), |o| {
        o.on(&topic("twin/reported")).any(|p| {
            p.retain
                && serde_json::from_slice::<Value>(&p.payload).is_ok_and(|r| reported_matches(&r, &desired))
        })
    });

    obs.wait_for("a security message", Duration::from_secs(20), |o| {
        o.on(&topic("messages")).count() >= 1
    });
    assert!(obs
        .on(&topic("messages"))
        .all(|p| p.qos == QoS::AtLeastOnce && !p.retain));

    // An invalid change at runtime: the configuration object stays, twinguard says rejected,
    // and a ConfigurationError message names the property.
    let before = obs.latest_json(&topic("twin/reported")).unwrap()[CONFIG_KEY].clone();
    let mut invalid = desired.clone();
    invalid[CONFIG_KEY]["snapshotFrequency"] = json!({"value": "soon"});
    invalid[CONFIG_KEY]["eventPriorityLogin"] = json!({"value": "High"});
    obs.publish(&topic("twin/desired"), invalid.to_string().as_bytes(), true);
    obs.wait_for("the rejection in reported", Duration::from_secs(10), |o| {
        o.latest_json(&topic("twin/reported"))
            .is_some_and(|r| status_of(&r) == "rejected")
    });
    let reported = obs.latest_json(&topic("twin/reported")).unwrap();
    assert_eq!(
        reported[CONFIG_KEY], before,
        "a rejected document changed the configuration object"
    );
    assert!(
        reported["twinguard"]["errors"]
            .to_string()
            .contains("snapshotFrequency"),
        "{reported}"
    );
    obs.wait_for("a ConfigurationError message", Duration::from_secs(10), |o| {
        events(&o.bodies(&topic("messages"))).iter().any(|e| {
            e["Name"] == "ConfigurationError"
                && e["Payload"].as_array().is_some_and(|items| {
                    items
                        .iter()
                        .any(|i| i["ConfigurationName"] == "snapshotFrequency")
                })
        })
    });
    validate_messages(&obs.bodies(&topic("messages"))).unwrap();

    // An empty retained payload means defaults.
    obs.publish(&topic("twin/desired"), b"", true);
    obs.wait_for("defaults in reported", Duration::from_secs(10), |o| {
        o.latest_json(&topic("twin/reported")).is_some_and(|r| {
            status_of(&r) == "applied" && r[CONFIG_KEY]["snapshotFrequency"] == json!({"value": "PT13H"})
        })
    });

    let code = agent.stop();
    assert_eq!(code, Some(0), "{}", agent.log());
    obs.wait_for("status offline", Duration::from_secs(5), |o| {
        o.on(&topic("status"))
            .last()
            .is_some_and(|p| p.payload == b"offline")
    });
    // Live deliveries carry no retain flag (MQTT 3.1.1 §3.3.1.3); a new subscriber sees the
    // retained state.
    let mut after = Observer::plain(&broker, "it-twin-after");
    after.wait_for("the retained offline status", Duration::from_secs(5), |o| {
        o.on(&topic("status"))
            .any(|p| p.payload == b"offline" && p.retain)
    });
}

#[test]
fn mqtt_start_with_invalid_desired_stays_connected_then_starts() {
    let dir = TempDir::new("mqtt-invalid");
    let Some(broker) = Broker::start("mqtt_start_with_invalid_desired", &dir, None, "") else {
        return;
    };
    let mut obs = Observer::plain(&broker, "it-invalid");
    let invalid = json!({CONFIG_KEY: {
        "lowPriorityMessageFrequency": {"value": "PT1S"},
        "highPriorityMessageFrequency": {"value": "PT1S"},
        "maxMessageSizeInBytes": {"value": 100},
    }});
    obs.publish(&topic("twin/desired"), invalid.to_string().as_bytes(), true);
    let mut agent = Agent::mqtt(&dir, &broker, &[]);
    obs.wait_for("the errors in reported", Duration::from_secs(20), |o| {
        o.latest_json(&topic("twin/reported")).is_some_and(|r| {
            status_of(&r) == "rejected"
                && r["twinguard"]["errors"]
                    .to_string()
                    .contains("maxMessageSizeInBytes")
        })
    });
    assert!(obs.on(&topic("status")).any(|p| p.payload == b"online"));
    // Nothing is collected: no collector has run, no security message is sent.
    obs.pump(Duration::from_secs(2));
    // Monitoring has not started (the run loop says so when it does).
    let log = agent.log();
    assert!(
        log.contains("collecting nothing until a valid one arrives"),
        "{log}"
    );
    assert!(!log.contains("monitoring starts"), "{log}");
    assert!(events(&obs.bodies(&topic("messages")))
        .iter()
        .all(|e| e["EventType"] != "Security"));

    let valid = json!({CONFIG_KEY: {
        "lowPriorityMessageFrequency": {"value": "PT1S"},
        "highPriorityMessageFrequency": {"value": "PT1S"},
        "maxMessageSizeInBytes": {"value": 65536},
    }});
    obs.publish(&topic("twin/desired"), valid.to_string().as_bytes(), true);
    obs.wait_for("the valid document applied", Duration::from_secs(10), |o| {
        o.latest_json(&topic("twin/reported"))
            .is_some_and(|r| status_of(&r) == "applied" && reported_matches(&r, &valid))
    });
    obs.wait_for("security events", Duration::from_secs(20), |o| {
        events(&o.bodies(&topic("messages")))
            .iter()
            .any(|e| e["EventType"] == "Security")
    });
    validate_messages(&obs.bodies(&topic("messages"))).unwrap();
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
}

#[test]
fn mqtt_over_tls_with_a_private_ca_and_a_password() {
    let dir = TempDir::new("mqtt-tls");
    if mosquitto_binary().is_none() {
        skip(
            "mqtt_over_tls",
            "mosquitto is not installed (Debian package mosquitto)",
        );
        return;
    }
    let pki = make_pki(&dir);
    // mosquitto's own password file format (PBKDF2-SHA512), made by its tool.
    let passwords = dir.path("passwords");
    let made = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwords)
        .args(["agent", "s3cret pass"])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        skip(
            "mqtt_over_tls",
            "mosquitto_passwd is not installed (Debian package mosquitto)",
        );
        return;
    }
    let extra = format!("allow_anonymous false\npassword_file {}\n", passwords.display());
    let Some(broker) = Broker::start("mqtt_over_tls", &dir, Some(&pki), &extra) else {
        return;
    };
    let mut obs = Observer::connect(ObserverOptions {
        port: broker.port,
        ca: Some(&pki.ca),
        filters: &["twinguard/dev1/#"],
        client_id: "it-tls",
        persistent: false,
        login: Some(("agent", "s3cret pass")),
    });
    let desired = json!({CONFIG_KEY: {"highPriorityMessageFrequency": {"value": "PT1S"}, "lowPriorityMessageFrequency": {"value": "PT1S"}}});
    obs.publish(&topic("twin/desired"), desired.to_string().as_bytes(), true);

    let password = dir.path("password");
    write_private(&password, "s3cret pass\n");
    let ca = pki.ca.to_str().unwrap();
    let pw = password.to_str().unwrap();
    let mut agent = Agent::mqtt(
        &dir,
        &broker,
        &[
            "--mqtt-ca",
            ca,
            "--mqtt-username",
            "agent",
            "--mqtt-password-file",
            pw,
        ],
    );
    obs.wait_for("reported over TLS", Duration::from_secs(20), |o| {
        o.latest_json(&topic("twin/reported"))
            .is_some_and(|r| reported_matches(&r, &desired))
    });
    obs.wait_for("a message over TLS", Duration::from_secs(20), |o| {
        o.on(&topic("messages")).count() > 0
    });
    validate_messages(&obs.bodies(&topic("messages"))).unwrap();
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    assert!(!agent.log().contains("s3cret"), "the password reached the log");

    // A secret readable by others is refused, naming the file, before anything connects.
    let open_pw = dir.path("password-0644");
    std::fs::write(&open_pw, "s3cret pass\n").unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
        .args([
            "run",
            "--mqtt",
            &broker.url(),
            "--device-id",
            "dev2",
            "--mqtt-ca",
            ca,
        ])
        .args([
            "--mqtt-username",
            "agent",
            "--mqtt-password-file",
            open_pw.to_str().unwrap(),
        ])
        .arg("--data-dir")
        .arg(dir.path("refused-data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("password-0644") && stderr.contains("readable by group or others"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"));

    // Without the private CA the broker's certificate is not trusted: never connected.
    let mut untrusted = Agent::start(
        &dir,
        "untrusted",
        &["--mqtt", &broker.url(), "--device-id", "dev3"],
    );
    let t = Instant::now();
    while !untrusted.log().contains("MQTT connection failed") && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    untrusted.stop();
    let log = untrusted.log();
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer"),
        "{log}"
    );
    assert!(!log.contains("MQTT connection up"), "{log}");
}

/// Agent log lines: (wall time, line).
fn log_lines(log: &str) -> Vec<(chrono::DateTime<chrono::FixedOffset>, String)> {
    log.lines()
        .filter_map(|l| {
            let (stamp, rest) = l.split_once(' ')?;
            Some((chrono::DateTime::parse_from_rfc3339(stamp).ok()?, rest.to_owned()))
        })
        .collect()
}

fn log_field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn mqtt_outage_loses_no_acknowledged_event_and_drains_the_backlog() {
    let dir = TempDir::new("mqtt-outage");
    let Some(mut broker) = Broker::start("mqtt_outage", &dir, None, "") else {
        return;
    };
    // A persistent session: messages published while the observer is away (the broker
    // restarting) are kept for it.
    let mut obs = Observer::connect(ObserverOptions {
        port: broker.port,
        ca: None,
        filters: &["twinguard/dev1/#"],
        client_id: "it-outage",
        persistent: true,
        login: None,
    });
    let desired = json!({CONFIG_KEY: {
        "lowPriorityMessageFrequency": {"value": "PT1S"},
        "highPriorityMessageFrequency": {"value": "PT1S"},
        "maxMessageSizeInBytes": {"value": 65536},
        "maxLocalCacheSizeInBytes": {"value": 50_000_000},
    }});
    obs.publish(&topic("twin/desired"), desired.to_string().as_bytes(), true);
    let ack_log = dir.path("acked.txt");
    // The source stops during the outage, so what is sent after the reconnection is the
    // backlog (plus the periodic statistics), and the drain can be timed.
    let rate = 10_000u64;
    let limit = 40_000u64;
    let mut agent = Agent::mqtt(
        &dir,
        &broker,
        &[
            "--synthetic-rate",
            &rate.to_string(),
            "--synthetic-limit",
            &limit.to_string(),
            "--synthetic-ack-log",
            ack_log.to_str().unwrap(),
        ],
    );
    obs.wait_for("the first messages", Duration::from_secs(20), |o| {
        o.on(&topic("messages")).count() >= 2
    });

    // The outage: events accumulate in the cache.
    broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    let restarted_wall = chrono::Utc::now();
    broker.launch();

    let acked = || -> Vec<String> {
        std::fs::read_to_string(&ack_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.len() == 36)
            .map(str::to_owned)
            .collect()
    };
    // Parsed incrementally and checked against the ack log only once it is complete: the
    // test must not eat the CPU the agent's drain is timed on.
    let messages_topic = topic("messages");
    let mut parsed = 0;
    let mut got: BTreeSet<String> = BTreeSet::new();
    let mut acked_ids: Vec<String> = Vec::new();
    obs.wait_for("every acknowledged event", Duration::from_secs(90), |o| {
        let new: Vec<Vec<u8>> = o
            .on(&messages_topic)
            .skip(parsed)
            .map(|p| p.payload.clone())
            .collect();
        parsed += new.len();
        got.extend(
            events(&new)
                .iter()
                .filter_map(|e| e["Id"].as_str().map(str::to_owned)),
        );
        if (acked_ids.len() as u64) < limit {
            acked_ids = acked();
            if (acked_ids.len() as u64) < limit {
                return false;
            }
        }
        acked_ids.iter().all(|id| got.contains(id))
    });
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());

    // At-least-once: events seen twice come from one earlier message (the one in flight when
    // the broker went away, sent again - possibly topped up with newer events), never from
    // several, and only a message or two is repeated.
    let bodies = obs.bodies(&topic("messages"));
    let mut first_seen_in: BTreeMap<String, usize> = BTreeMap::new();
    let mut repeated = 0;
    for (n, body) in bodies.iter().enumerate() {
        let ids: Vec<String> = events(std::slice::from_ref(body))
            .iter()
            .filter_map(|e| e["Id"].as_str().map(str::to_owned))
            .collect();
        let origins: BTreeSet<usize> = ids
            .iter()
            .filter_map(|id| first_seen_in.get(id).copied())
            .collect();
        if !origins.is_empty() {
            repeated += 1;
            assert_eq!(
                origins.len(),
                1,
                "message {n} repeats events of several messages: {origins:?}"
            );
        }
        for id in ids {
            first_seen_in.entry(id).or_insert(n);
        }
    }
    assert!(repeated <= 2, "{repeated} messages repeated after one outage");
    validate_messages(&bodies).unwrap();

    // Figures, from the agent's own log: when the connection came back, and the burst of
    // back-to-back sends that followed (the backlog) until sends fall back to the timer pace.
    let lines = log_lines(&agent.log());
    let up = lines
        .iter()
        .find(|(t, l)| *t >= restarted_wall && l.contains("MQTT connection up"))
        .map(|(t, _)| *t)
        .expect("a reconnection in the log");
    let sends: Vec<(chrono::DateTime<chrono::FixedOffset>, u64)> = lines
        .iter()
        .filter(|(t, l)| *t >= up && l.contains("sent a message"))
        .filter_map(|(t, l)| Some((*t, log_field(l, "events")?)))
        .collect();
    let mut burst_end = 0;
    while burst_end + 1 < sends.len()
        && (sends[burst_end + 1].0 - sends[burst_end].0) < chrono::Duration::milliseconds(250)
    {
        burst_end += 1;
    }
    let burst = &sends[..=burst_end];
    if std::env::var("TWINGUARD_IT_DEBUG").is_ok() {
        for w in sends.windows(2).take(40) {
            eprintln!(
                "gap {} us, {} events",
                (w[1].0 - w[0].0).num_microseconds().unwrap_or(0),
                w[1].1
            );
        }
    }
    let drain_s = ((burst[burst.len() - 1].0 - up).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-3);
    let drained_events: u64 = burst.iter().map(|(_, n)| n).sum();
    let reconnect_s = (up.with_timezone(&chrono::Utc) - restarted_wall).num_milliseconds() as f64 / 1e3;
    // The first send after the reconnection waits for the pipeline's retry timer (its backoff
    // grew during the outage); from then on the backlog goes back to back.
    let wait_s = (burst[0].0 - up).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let send_s = ((burst[burst.len() - 1].0 - burst[0].0)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6)
        .max(1e-3);
    eprintln!(
        "MQTT outage of 5 s at {rate} events/s: {limit} acknowledged events all delivered ({} messages, {repeated} repeated); \
         reconnect {reconnect_s:.2} s after the broker restarted; backlog of {drained_events} events in {} messages \
         drained {drain_s:.3} s after the reconnection = {:.0} events/s, {:.0} messages/s; of that, {wait_s:.3} s waiting \
         for the pipeline's retry timer, then {send_s:.3} s sending = {:.0} events/s, {:.0} messages/s \
         (64 KiB messages, loopback mosquitto)",
        bodies.len(),
        burst.len(),
        drained_events as f64 / drain_s,
        burst.len() as f64 / drain_s,
        drained_events as f64 / send_s,
        burst.len() as f64 / send_s,
    );
    assert!(
        drained_events > rate,
        "the backlog was only {drained_events} events"
    );
}

/// A stand-in for IoT Hub on mosquitto: answers twin GETs and reported PATCHes, records
/// device-to-cloud messages. `twinguard-hub` (issue 7) replaces it; these checks then run
/// against the real emulator.
struct HubHarness {
    obs: Observer,
    desired: Value,
    reported: Value,
    reported_version: i64,
    gets: usize,
    /// Answer the first GET and the first reported PATCH with 429 (throttled), as IoT Hub
    /// does under load.
    throttle_first: bool,
    patches: usize,
}

impl HubHarness {
    fn new(broker: &Broker, ca: &Path, desired: Value) -> HubHarness {
        let obs = Observer::connect(ObserverOptions {
            port: broker.port,
            ca: Some(ca),
            filters: &[
                "$iothub/twin/GET/#",
                "$iothub/twin/PATCH/properties/reported/#",
                "devices/dev1/modules/azureiotsecurity/messages/events/#",
            ],
            client_id: "hub-harness",
            persistent: false,
            login: None,
        });
        HubHarness {
            obs,
            desired,
            reported: json!({}),
            reported_version: 1,
            gets: 0,
            throttle_first: false,
            patches: 0,
        }
    }

    /// Answers what arrived; returns after `wait`.
    fn serve(&mut self, wait: Duration) {
        let before = self.obs.seen.len();
        self.obs.pump(wait);
        let new: Vec<Publish> = self.obs.seen[before..].iter().map(|(_, p)| p.clone()).collect();
        for p in new {
            let rid = p
                .topic
                .split("$rid=")
                .nth(1)
                .map(|r| r.split('&').next().unwrap_or("").to_owned());
            let rid = rid.unwrap_or_default();
            let throttled = format!("$iothub/twin/res/429/?$rid={rid}");
            if p.topic.starts_with("$iothub/twin/GET/") && self.throttle_first && self.gets == 0 {
                self.gets += 1;
                self.obs.publish(&throttled, b"", false);
            } else if p.topic.starts_with("$iothub/twin/PATCH/properties/reported/")
                && self.throttle_first
                && self.patches == 0
            {
                self.patches += 1;
                self.obs.publish(&throttled, b"", false);
            } else if p.topic.starts_with("$iothub/twin/GET/") {
                self.gets += 1;
                let body = json!({"desired": self.desired, "reported": self.reported});
                self.obs.publish(
                    &format!("$iothub/twin/res/200/?$rid={rid}"),
                    body.to_string().as_bytes(),
                    false,
                );
            } else if p.topic.starts_with("$iothub/twin/PATCH/properties/reported/") {
                self.patches += 1;
                let patch: Value = serde_json::from_slice(&p.payload).unwrap();
                twinguard_core::config::merge_patch(&mut self.reported, &patch);
                self.reported_version += 1;
                self.obs.publish(
                    &format!(
                        "$iothub/twin/res/204/?$rid={rid}&$version={}",
                        self.reported_version
                    ),
                    b"",
                    false,
                );
            }
        }
    }

    fn serve_until(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&HubHarness) -> bool) {
        let t = Instant::now();
        while !done(self) {
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            self.serve(Duration::from_millis(50));
        }
    }

    /// Sends a desired-properties notification and merges it into the harness's twin.
    fn patch_desired(&mut self, patch: Value) {
        let version = patch["$version"].as_i64().unwrap();
        twinguard_core::config::merge_patch(&mut self.desired, &patch);
        self.obs.publish(
            &format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            patch.to_string().as_bytes(),
            false,
        );
    }

    fn messages(&self) -> Vec<&Publish> {
        self.obs
            .seen
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.topic.starts_with("devices/"))
            .collect()
    }
}

#[test]
fn iothub_twin_patches_and_messages_against_a_harness_on_mosquitto() {
    let dir = TempDir::new("iothub");
    if mosquitto_binary().is_none() {
        skip(
            "iothub_harness",
            "mosquitto is not installed (Debian package mosquitto)",
        );
        return;
    }
    let pki = make_pki(&dir);
    let Some(broker) = Broker::start("iothub_harness", &dir, Some(&pki), "") else {
        return;
    };
    let desired = json!({
        CONFIG_KEY: {
            "lowPriorityMessageFrequency": {"value": "PT1S"},
            "highPriorityMessageFrequency": {"value": "PT1S"},
            "snapshotFrequency": {"value": "PT1H"},
            "eventPriorityLogin": {"value": "Low"},
        },
        "someOtherModuleSetting": true,
        "$version": 3,
    });
    let mut hub = HubHarness::new(&broker, &pki.ca, desired);
    hub.throttle_first = true;
    let cs = dir.path("connection-string");
    write_private(
        &cs,
        "HostName=localhost;DeviceId=dev1;ModuleId=azureiotsecurity;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    );
    let endpoint = format!("localhost:{}", broker.port);
    let mut agent = Agent::start(
        &dir,
        "iothub-agent",
        &[
            "--iothub",
            cs.to_str().unwrap(),
            "--iothub-ca",
            pki.ca.to_str().unwrap(),
            "--iothub-endpoint",
            &endpoint,
        ],
    );
    let applied = |h: &HubHarness, property: &str, value: Value, version: i64| {
        status_of(&h.reported) == "applied"
            && h.reported[CONFIG_KEY][property] == value
            && h.reported["twinguard"]["desiredVersion"] == version
    };
    hub.serve_until(
        "the twin GET and the first report",
        Duration::from_secs(20),
        |h| applied(h, "eventPriorityLogin", json!({"value": "Low"}), 3),
    );
    // The first GET and the first PATCH were throttled (429): both were sent again.
    assert_eq!(hub.gets, 2);

    // A partial patch changes only what it names.
    hub.patch_desired(json!({CONFIG_KEY: {"snapshotFrequency": {"value": "PT2H"}}, "$version": 4}));
    hub.serve_until("patch 4 applied", Duration::from_secs(10), |h| {
        applied(h, "snapshotFrequency", json!({"value": "PT2H"}), 4)
    });
    assert_eq!(
        hub.reported[CONFIG_KEY]["eventPriorityLogin"],
        json!({"value": "Low"})
    );

    // A stale notification (version 4 again) is ignored.
    hub.obs.publish(
        "$iothub/twin/PATCH/properties/desired/?$version=4",
        json!({CONFIG_KEY: {"snapshotFrequency": {"value": "PT9H"}}, "$version": 4})
            .to_string()
            .as_bytes(),
        false,
    );
    // An invalid patch is rejected: the configuration object stays.
    hub.patch_desired(json!({CONFIG_KEY: {"eventPriorityLogin": {"value": "loud"}}, "$version": 5}));
    hub.serve_until("patch 5 rejected", Duration::from_secs(10), |h| {
        status_of(&h.reported) == "rejected"
    });
    assert_eq!(
        hub.reported[CONFIG_KEY]["snapshotFrequency"],
        json!({"value": "PT2H"})
    );
    assert_eq!(
        hub.reported[CONFIG_KEY]["eventPriorityLogin"],
        json!({"value": "Low"})
    );
    assert_eq!(hub.reported["twinguard"]["desiredVersion"], 4);

    // A gap (version 7 after 5) makes the agent GET the whole twin again.
    hub.desired[CONFIG_KEY]["eventPriorityLogin"] = json!({"value": "High"});
    hub.desired["$version"] = json!(6);
    hub.patch_desired(json!({CONFIG_KEY: {"snapshotFrequency": {"value": "PT3H"}}, "$version": 7}));
    hub.serve_until(
        "the twin fetched again after a gap",
        Duration::from_secs(10),
        |h| h.gets == 3 && applied(h, "snapshotFrequency", json!({"value": "PT3H"}), 7),
    );
    assert_eq!(
        hub.reported[CONFIG_KEY]["eventPriorityLogin"],
        json!({"value": "High"})
    );

    // The start-up snapshots fill one message; more come only if the machine runs processes.
    hub.serve_until("security messages", Duration::from_secs(20), |h| {
        !h.messages().is_empty()
    });
    let prefix = "devices/dev1/modules/azureiotsecurity/messages/events/%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=";
    for m in hub.messages() {
        assert!(m.topic.starts_with(prefix), "{}", m.topic);
        assert_eq!(m.qos, QoS::AtLeastOnce);
    }
    let bodies: Vec<Vec<u8>> = hub.messages().iter().map(|p| p.payload.clone()).collect();
    validate_messages(&bodies).unwrap();
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    assert!(!agent.log().contains("AAECAwQF"), "the key reached the log");
    assert!(!agent.log().contains("sig="), "a SAS token reached the log");
}

#[test]
fn iothub_token_renewal_reconnects_and_fetches_the_twin_again() {
    let dir = TempDir::new("iothub-renew");
    if mosquitto_binary().is_none() {
        skip(
            "iothub_token_renewal",
            "mosquitto is not installed (Debian package mosquitto)",
        );
        return;
    }
    let pki = make_pki(&dir);
    let Some(broker) = Broker::start("iothub_token_renewal", &dir, Some(&pki), "") else {
        return;
    };
    let mut hub = HubHarness::new(&broker, &pki.ca, json!({"$version": 1}));
    let cs = dir.path("connection-string");
    write_private(
        &cs,
        "HostName=localhost;DeviceId=dev1;ModuleId=azureiotsecurity;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    );
    let endpoint = format!("localhost:{}", broker.port);
    // Tokens of 6 s are renewed after 5 s.
    let mut agent = Agent::start(
        &dir,
        "renew-agent",
        &[
            "--iothub",
            cs.to_str().unwrap(),
            "--iothub-ca",
            pki.ca.to_str().unwrap(),
            "--iothub-endpoint",
            &endpoint,
            "--iothub-token-secs",
            "6",
        ],
    );
    hub.serve_until("a renewal and a second GET", Duration::from_secs(30), |h| {
        h.gets >= 2
    });
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    assert!(agent.log().contains("renew"), "{}", agent.log());
}

/// What a hostile or broken server sends never panics the client: garbage after a valid
/// CONNACK, a PUBLISH announcing 256 MB, a truncated stream - each ends that connection, and
/// the client connects again (with backoff) and keeps working. No broker needed.
#[test]
fn mqtt_client_survives_garbage_from_the_network() {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = MqttClient::start(ClientOptions {
        host: "127.0.0.1".into(),
        port,
        tls: None,
        client_id: "garbage".into(),
        keep_alive: Duration::from_secs(30),
        clean_session: true,
        will: None,
        subscriptions: vec![],
        birth: vec![],
        login: Box::new(StaticLogin(Credentials::default())),
        max_incoming_packet: 64 * 1024,
        connect_timeout: Duration::from_secs(2),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            jitter: Jitter::UpperHalf,
        },
        incoming_capacity: 8,
    })
    .unwrap();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rounds = 40;
    for round in 0..rounds {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut connect = [0u8; 256];
        let _ = sock.read(&mut connect);
        let mut out = vec![0x20, 0x02, 0x00, 0x00];
        match round % 4 {
            0 => out.extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0x7f]),
            1 => out.extend_from_slice(&[0x30, 0x05, 0x00]),
            _ => {
                let len = (random() % 200) as usize;
                out.extend((0..len).map(|_| random() as u8));
            }
        }
        let _ = sock.write_all(&out);
        if round % 4 == 1 {
            // A truncated packet, then the server goes away.
            drop(sock);
        } else {
            // Wait until the client gives up on this connection (random bytes may also be a
            // valid packet or an incomplete one: then the server closes after a moment).
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut rest = [0u8; 1024];
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(300) {
                match sock.read(&mut rest) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
    assert!(
        client.connections() >= rounds / 4,
        "only {} connections came up",
        client.connections()
    );
    // Still alive: it comes back to a well-behaved server.
    let (mut sock, _) = listener.accept().unwrap();
    let mut connect = [0u8; 256];
    let _ = sock.read(&mut connect);
    sock.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
    let t = Instant::now();
    while !client.is_connected() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the client did not reconnect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An outage that outlasts the cache: what does not fit is evicted, and every eviction is
/// counted in DroppedEventsStatistics. The synthetic source is Low; the statistics are High (a
/// Low event never evicts a High one, so no count is itself lost); every other event is Off
/// except ProcessCreate, which the machine's own processes may add to (they are told apart by
/// `ExtraDetails.Synthetic`).
#[test]
fn mqtt_outage_longer_than_the_cache_counts_every_eviction() {
    let dir = TempDir::new("mqtt-evict");
    let Some(mut broker) = Broker::start("mqtt_outage_evictions", &dir, None, "") else {
        return;
    };
    let mut obs = Observer::connect(ObserverOptions {
        port: broker.port,
        ca: None,
        filters: &["twinguard/dev1/#"],
        client_id: "it-evict",
        persistent: true,
        login: None,
    });
    let mut object = serde_json::Map::new();
    for name in [
        "ProcessTerminate",
        "ConnectionCreate",
        "Login",
        "ListeningPorts",
        "LocalUsers",
        "SystemInformation",
        "ConnectedHardware",
        "FirewallConfiguration",
        "OSBaseline",
        "MessageStatistics",
    ] {
        object.insert(format!("eventPriority{name}"), json!({"value": "Off"}));
    }
    object.insert("eventPriorityProcessCreate".into(), json!({"value": "Low"}));
    object.insert(
        "eventPriorityDroppedEventsStatistics".into(),
        json!({"value": "High"}),
    );
    object.insert("eventPriorityConfigurationError".into(), json!({"value": "High"}));
    object.insert("aggregationEnabledProcessCreate".into(), json!({"value": false}));
    object.insert("lowPriorityMessageFrequency".into(), json!({"value": "PT1S"}));
    object.insert("highPriorityMessageFrequency".into(), json!({"value": "PT1S"}));
    object.insert("snapshotFrequency".into(), json!({"value": "PT2S"}));
    object.insert("maxMessageSizeInBytes".into(), json!({"value": 16384}));
    object.insert("maxLocalCacheSizeInBytes".into(), json!({"value": 65536}));
    let desired = json!({ CONFIG_KEY: object });
    obs.publish(&topic("twin/desired"), desired.to_string().as_bytes(), true);
    let ack_log = dir.path("acked.txt");
    let limit = 8000u64;
    let mut agent = Agent::mqtt(
        &dir,
        &broker,
        &[
            "--synthetic-rate",
            "2000",
            "--synthetic-limit",
            &limit.to_string(),
            "--synthetic-ack-log",
            ack_log.to_str().unwrap(),
        ],
    );
    obs.wait_for("the first messages", Duration::from_secs(20), |o| {
        o.on(&topic("messages")).count() >= 1
    });
    broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    broker.launch();

    let acked: BTreeSet<String> = {
        let t = Instant::now();
        loop {
            let ids: BTreeSet<String> = std::fs::read_to_string(&ack_log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.len() == 36)
                .map(str::to_owned)
                .collect();
            if ids.len() as u64 >= limit || t.elapsed() > Duration::from_secs(30) {
                break ids;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(acked.len() as u64, limit);
    // Statistics are per period and sent like any event: wait until the counted drops cover
    // every synthetic event that has not arrived (both only move one way: deliveries shrink
    // the lost set, statistics grow the count).
    let tally = |o: &Observer| {
        let all = events(&o.bodies(&topic("messages")));
        let received: BTreeSet<String> = all
            .iter()
            .filter(|e| {
                e["Name"] == "ProcessCreate" && e["Payload"][0]["ExtraDetails"]["Synthetic"].is_string()
            })
            .filter_map(|e| e["Id"].as_str().map(str::to_owned))
            .collect();
        let (mut collected, mut dropped) = (0u64, 0u64);
        let mut seen_stats = BTreeSet::new();
        for e in all.iter().filter(|e| e["Name"] == "DroppedEventsStatistics") {
            // A repeated message (at-least-once) must not count twice.
            if !seen_stats.insert(e["Id"].as_str().unwrap_or_default().to_owned()) {
                continue;
            }
            for item in e["Payload"].as_array().into_iter().flatten() {
                if item["Queue"] == "Low" {
                    collected += item["CollectedEvents"].as_u64().unwrap_or(0);
                    dropped += item["DroppedEvents"].as_u64().unwrap_or(0);
                }
            }
        }
        (received, collected, dropped)
    };
    let mut checked = 0;
    obs.wait_for(
        "every lost event counted as dropped",
        Duration::from_secs(60),
        |o| {
            // Parsing everything is costly: look again only when messages came.
            let n = o.on(&topic("messages")).count();
            if n == checked {
                return false;
            }
            checked = n;
            let (received, _, dropped) = tally(o);
            dropped >= (acked.len() - received.len()) as u64
        },
    );
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());

    let (synthetic_received, collected, dropped) = tally(&obs);
    assert!(
        synthetic_received.is_subset(&acked),
        "events arrived that were never acknowledged"
    );
    let lost = acked.len() - synthetic_received.len();
    let other_collected = collected.saturating_sub(acked.len() as u64);
    eprintln!(
        "outage past the cache: {} acknowledged, {} delivered, {lost} lost; DroppedEventsStatistics: {collected} collected, {dropped} dropped (Low)",
        acked.len(),
        synthetic_received.len()
    );
    assert!(lost > 0, "the outage did not outlast the cache");
    assert!(
        collected >= acked.len() as u64,
        "collected {collected} < acknowledged {}",
        acked.len()
    );
    // Every lost event was counted; any extra drops are the machine's own ProcessCreate events.
    assert!(
        dropped >= lost as u64,
        "{lost} events lost but only {dropped} drops counted"
    );
    assert!(
        dropped - lost as u64 <= other_collected,
        "{dropped} drops counted for {lost} lost synthetic events and {other_collected} other events"
    );
    validate_messages(&obs.bodies(&topic("messages"))).unwrap();
}

/// Issue 12: a password over plain `mqtt://` travels in clear text. It is refused (exit 2,
/// one line saying why and what to do) unless `--allow-insecure-password` or the settings key
/// accepts the risk; then the agent logs in to a real mosquitto that demands the password, and
/// warns.
#[test]
fn plain_mqtt_with_a_password_needs_an_explicit_opt_in() {
    let dir = TempDir::new("mqtt-plain-password");
    if mosquitto_binary().is_none() {
        skip(
            "plain_mqtt_with_a_password",
            "mosquitto is not installed (Debian package mosquitto)",
        );
        return;
    }
    let passwords = dir.path("passwords");
    let made = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwords)
        .args(["agent", "plain pass"])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        skip(
            "plain_mqtt_with_a_password",
            "mosquitto_passwd is not installed (Debian package mosquitto)",
        );
        return;
    }
    let extra = format!("allow_anonymous false\npassword_file {}\n", passwords.display());
    let Some(broker) = Broker::start("plain_mqtt_with_a_password", &dir, None, &extra) else {
        return;
    };
    let password = dir.path("password");
    write_private(&password, "plain pass\n");
    let pw = password.to_str().unwrap();
    let login = ["--mqtt-username", "agent", "--mqtt-password-file", pw];

    // Refused by default, before anything connects (an agent that runs instead is killed
    // after 5 s and fails the test).
    let mut refused = Command::new(assert_cmd::cargo::cargo_bin("twinguard"))
        .args(["run", "--mqtt", &broker.url(), "--device-id", DEVICE])
        .args(login)
        .arg("--data-dir")
        .arg(dir.path("refused-data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while refused.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = refused.kill();
    let out = refused.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("clear text") && stderr.contains("--allow-insecure-password"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Accepted with the flag: connects with the password, and says it is insecure.
    let mut obs = Observer::connect(ObserverOptions {
        port: broker.port,
        ca: None,
        filters: &["twinguard/dev1/#"],
        client_id: "it-plain",
        persistent: false,
        login: Some(("agent", "plain pass")),
    });
    let desired = json!({CONFIG_KEY: {"highPriorityMessageFrequency": {"value": "PT1S"}}});
    obs.publish(&topic("twin/desired"), desired.to_string().as_bytes(), true);
    let mut with_flag = login.to_vec();
    with_flag.push("--allow-insecure-password");
    let mut agent = Agent::mqtt(&dir, &broker, &with_flag);
    obs.wait_for("reported over plain MQTT", Duration::from_secs(20), |o| {
        o.latest_json(&topic("twin/reported"))
            .is_some_and(|r| reported_matches(&r, &desired))
    });
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("WARN") && log.contains("clear text"),
        "no warning about the clear-text password: {log}"
    );
    assert!(!log.contains("plain pass"), "the password reached the log");

    // The settings-file key does the same.
    let settings = dir.path("agent.toml");
    std::fs::write(
        &settings,
        format!(
            "mqtt = \"{}\"\ndevice-id = \"{DEVICE}\"\nmqtt-username = \"agent\"\nmqtt-password-file = \"{pw}\"\nallow-insecure-password = true\n",
            broker.url()
        ),
    )
    .unwrap();
    let mut from_file = Agent::start(&dir, "from-file", &["--settings", settings.to_str().unwrap()]);
    let t = Instant::now();
    while !from_file.log().contains("clear text") && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(from_file.stop(), Some(0), "{}", from_file.log());
    assert!(from_file.log().contains("clear text"), "{}", from_file.log());
}
