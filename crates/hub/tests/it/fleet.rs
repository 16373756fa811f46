//! MQTT fleet ingest end to end: a real mosquitto (TLS, with a CA and server certificate made
//! here), a hub following it (`serve --settings FILE` with `mqtt-fleet` and a relative
//! `mqtt-ca`), and two real agents in MQTT mode (`twinguard run --mqtt mqtts://...`). Both
//! devices appear with their status; the desired sections set through the hub before the
//! agents start reach them (short frequencies, and process events off on the second); a
//! program run from /tmp raises an alert for the first device only; a desired change made
//! while they run reaches the agent (its reported section shows it); the broker killed and
//! started again (its retained messages gone), the hub reconnects and publishes the desired
//! sections again, and messages keep coming; the second agent stopped, its status turns
//! offline. Bad fleet settings are refused in one line.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent::agent_binary;
use crate::console::{log_in, web};
use crate::support::{scratch, skip, wait_until, Hub, CONFIG_KEY};

/// The mosquitto binary, if installed.
pub fn mosquitto_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A CA, and a server certificate for localhost and 127.0.0.1 signed by it: PEM files
/// `ca.pem`, `server.pem`, `server.key` in `dir`.
pub fn make_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "twinguard fleet test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    crate::support::write_secret(&dir.join("server.key"), &key.serialize_pem());
}

/// A mosquitto on a free loopback port (TLS with `dir`'s PKI when `tls`); killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    conf: PathBuf,
}

impl Broker {
    pub fn start(dir: &Path, tls: bool) -> Option<Broker> {
        let bin = mosquitto_binary()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest file {}\n",
            dir.join("mosquitto.log").display()
        );
        if twinguard_os::euid() == 0 {
            // Otherwise mosquitto drops to its own user, which cannot read the test directory.
            conf.push_str("user root\n");
        }
        if tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                dir.join("ca.pem").display(),
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ));
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        Some(Broker::launch(&bin, conf_path, port))
    }

    fn launch(bin: &Path, conf: PathBuf, port: u16) -> Broker {
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut broker = Broker { child, port, conf };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let _ = broker.child.kill();
            panic!("mosquitto did not listen on {port}");
        }
        broker
    }

    /// Kills the broker (its retained messages and sessions are lost: no persistence) and
    /// starts it again on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = mosquitto_binary().unwrap();
        let fresh = Broker::launch(&bin, self.conf.clone(), self.port);
        // The old one's child is reaped already: dropping it changes nothing.
        drop(std::mem::replace(self, fresh));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent in MQTT mode; stopped (SIGTERM, a clean stop) when dropped.
struct MqttAgent {
    child: Option<Child>,
    log: PathBuf,
}

impl MqttAgent {
    fn start(bin: &Path, dir: &Path, broker: &Broker, device: &str) -> MqttAgent {
        let log = dir.join(format!("{device}.log"));
        let child = Command::new(bin)
            .args(["run", "--mqtt", &format!("mqtts://localhost:{}", broker.port)])
            .args(["--device-id", device, "--mqtt-ca"])
            .arg(dir.join("ca.pem"))
            .arg("--data-dir")
            .arg(dir.join(format!("{device}-data")))
            .env("TWINGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("agent starts");
        MqttAgent {
            child: Some(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        if !wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for MqttAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fleet_status(hub: &Hub, device: &str) -> Option<String> {
    let (status, list) = hub.api("GET", "/v1/fleet", None);
    assert_eq!(status, 200, "{list}");
    list.as_array()?
        .iter()
        .find(|d| d["deviceId"] == json!(device))
        .and_then(|d| d["status"].as_str().map(str::to_owned))
}

fn reported(hub: &Hub, device: &str) -> Value {
    let (status, twin) = hub.api("GET", &format!("/v1/twins/{device}"), None);
    assert_eq!(status, 200, "{twin}");
    twin["properties"]["reported"].clone()
}

fn alerts(hub: &Hub, device: &str) -> Vec<Value> {
    let (status, list) = hub.api("GET", &format!("/v1/alerts?device={device}&state=all"), None);
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .or_else(|| list["alerts"].as_array())
        .cloned()
        .unwrap_or_default()
}

#[test]
fn two_mqtt_agents_on_a_broker_are_one_fleet() {
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    let dir = scratch("fleet");
    make_pki(&dir);
    let Some(mut broker) = Broker::start(&dir, true) else {
        return skip("mosquitto is not installed (Debian package mosquitto)");
    };
    // The fleet settings in a file, the agents' key names, the CA relative to the file.
    let settings = dir.join("fleet.toml");
    std::fs::write(
        &settings,
        format!(
            "mqtt-fleet = \"mqtts://localhost:{}\"\nmqtt-ca = \"ca.pem\"\nmqtt-client-id = \"hub-{}\"\n",
            broker.port,
            std::process::id()
        ),
    )
    .unwrap();
    let data = dir.join("hub-data");
    let settings_arg = settings.display().to_string();
    let hub = Hub::start_with(
        &data,
        "127.0.0.1:0",
        &["--settings", &settings_arg, "--console-check-secs", "1"],
    )
    .expect("hub starts");

    // Desired sections set through the hub before the agents exist on the broker.
    let (a, b) = ("fleet-a", "fleet-b");
    let short = |process: &str| {
        json!({CONFIG_KEY: {
            "highPriorityMessageFrequency": {"value": "PT1S"},
            "lowPriorityMessageFrequency": {"value": "PT2S"},
            "aggregationEnabledProcessCreate": {"value": false},
            "eventPriorityProcessCreate": {"value": process},
        }})
    };
    for (device, process) in [(a, "High"), (b, "Off")] {
        hub.add_identity(device, None);
        let (status, twin) = hub.api(
            "PUT",
            &format!("/v1/twins/{device}/desired"),
            Some(&short(process)),
        );
        assert_eq!(status, 200, "{twin}");
    }
    let mut agent_a = MqttAgent::start(&bin, &dir, &broker, a);
    let mut agent_b = MqttAgent::start(&bin, &dir, &broker, b);
    let context = |hub: &Hub, x: &MqttAgent, y: &MqttAgent| {
        format!(
            "\nhub log:\n{}\nagent a:\n{}\nagent b:\n{}\nfleet: {}",
            hub.log_text(),
            x.log_text(),
            y.log_text(),
            hub.api("GET", "/v1/fleet", None).1
        )
    };

    // Both online, both applied the desired section the hub published.
    let up = wait_until(Duration::from_secs(60), || {
        [a, b].iter().all(|d| {
            fleet_status(&hub, d).as_deref() == Some("online")
                && reported(&hub, d)[CONFIG_KEY]["highPriorityMessageFrequency"]["value"] == json!("PT1S")
        })
    });
    assert!(
        up,
        "the fleet did not come up{}",
        context(&hub, &agent_a, &agent_b)
    );
    assert_eq!(
        reported(&hub, b)[CONFIG_KEY]["eventPriorityProcessCreate"]["value"],
        json!("Off")
    );
    assert_eq!(
        reported(&hub, a)["twinguard"]["configurationStatus"],
        json!("applied"),
        "{}",
        reported(&hub, a)
    );
    // Their messages are stored as schema-valid security messages.
    let messages_in = wait_until(Duration::from_secs(30), || {
        [a, b].iter().all(|d| !hub.messages(d).is_empty())
    });
    assert!(messages_in, "no messages{}", context(&hub, &agent_a, &agent_b));
    for d in [a, b] {
        for m in hub.messages(d) {
            assert_eq!(m["schemaValid"], json!(true), "{m}");
        }
    }

    // The web console's overview lists both, online.
    let (cookie, _) = log_in(&hub);
    let overview = |hub: &Hub| {
        let (status, page) = web(hub, "GET", "/", &cookie, "");
        assert_eq!(status, 200, "{page}");
        page
    };
    let page = overview(&hub);
    for d in [a, b] {
        assert!(
            page.contains(&format!(">{d}</a></td><td><span class=\"online\">")),
            "{d} not online on the overview: {page}"
        );
    }

    // A program copied to /tmp and run: an alert for the device that watches processes.
    let tmp = std::env::temp_dir().join(format!("twinguard-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let copied = tmp.join("tg-fleet-sleep");
    std::fs::copy("/bin/sleep", &copied).unwrap();
    let status = Command::new(&copied).arg("2").status().expect("runs");
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(status.success());
    let fired = wait_until(Duration::from_secs(40), || {
        alerts(&hub, a).iter().any(|x| {
            x["rule"] == json!("temp-dir-execution")
                && x["key"].as_str().unwrap_or("").ends_with("/tg-fleet-sleep")
        })
    });
    assert!(
        fired,
        "no temp-dir alert for {a}: {:#?}{}",
        alerts(&hub, a),
        context(&hub, &agent_a, &agent_b)
    );
    let alert = alerts(&hub, a)
        .into_iter()
        .find(|x| x["rule"] == json!("temp-dir-execution"))
        .unwrap();
    assert_eq!(alert["deviceId"], json!(a), "{alert}");
    assert!(
        !alerts(&hub, b)
            .iter()
            .any(|x| x["rule"] == json!("temp-dir-execution")),
        "{b} does not watch processes: {:#?}",
        alerts(&hub, b)
    );

    // A desired change while the agents run: published retained, applied, reported.
    let (status, twin) = hub.api(
        "PATCH",
        &format!("/v1/twins/{a}/desired"),
        Some(&json!({CONFIG_KEY: {"lowPriorityMessageFrequency": {"value": "PT3S"}}})),
    );
    assert_eq!(status, 200, "{twin}");
    let applied = wait_until(Duration::from_secs(30), || {
        reported(&hub, a)[CONFIG_KEY]["lowPriorityMessageFrequency"]["value"] == json!("PT3S")
    });
    assert!(
        applied,
        "the change did not reach {a}: {}{}",
        reported(&hub, a),
        context(&hub, &agent_a, &agent_b)
    );

    // The broker killed and started again: the hub reconnects (with backoff) and the agents'
    // messages keep coming in.
    let before = hub.messages(a).len();
    broker.restart();
    let resumed = wait_until(Duration::from_secs(60), || hub.messages(a).len() > before + 2);
    assert!(
        resumed,
        "no messages after the broker restart{}",
        context(&hub, &agent_a, &agent_b)
    );
    assert!(
        hub.log_text()
            .lines()
            .any(|l| l.contains("MQTT fleet: ") && l.contains("; reconnecting")),
        "the lost connection is logged in one line"
    );
    let both_online = wait_until(Duration::from_secs(30), || {
        [a, b]
            .iter()
            .all(|d| fleet_status(&hub, d).as_deref() == Some("online"))
    });
    assert!(both_online, "{}", context(&hub, &agent_a, &agent_b));

    // The second agent stopped: offline; the first stays online.
    agent_b.stop();
    let offline = wait_until(Duration::from_secs(20), || {
        fleet_status(&hub, b).as_deref() == Some("offline")
    });
    assert!(offline, "{b} not offline{}", context(&hub, &agent_a, &agent_b));
    assert_eq!(fleet_status(&hub, a).as_deref(), Some("online"));
    let page = overview(&hub);
    assert!(
        page.contains(&format!(">{b}</a></td><td><span class=\"offline\">")),
        "{b} not offline on the overview: {page}"
    );
    agent_a.stop();
    drop(broker);
}

/// `serve` refuses fleet settings it cannot use, with one line naming the file or flag: a
/// password file others may read, an unknown settings key, a URL that is not a broker's.
#[test]
fn bad_fleet_settings_are_refused_in_one_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch("fleet-settings");
    let password = dir.join("password-0644");
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let settings = dir.join("hub.toml");
    std::fs::write(
        &settings,
        "mqtt-fleet = \"mqtt://127.0.0.1:1\"\nmqtt-topic = \"x\"\n",
    )
    .unwrap();
    let password_arg = password.display().to_string();
    let settings_arg = settings.display().to_string();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "--mqtt-fleet",
                "mqtt://127.0.0.1:1",
                "--mqtt-username",
                "hub",
                "--mqtt-password-file",
                &password_arg,
                "--allow-insecure-password",
            ],
            "password-0644",
        ),
        (&["--settings", &settings_arg], "unknown key \"mqtt-topic\""),
        (&["--mqtt-fleet", "tcp://broker"], "--mqtt-fleet \"tcp://broker\""),
    ];
    for (i, (args, expected)) in cases.iter().enumerate() {
        let out = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
            .arg("--data-dir")
            .arg(dir.join(format!("data-{i}")))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--no-service",
            ])
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}
