//! The alert webhook end to end: a real HTTPS receiver here (rustls, a certificate from a CA
//! the test makes), the hub started with `--alert-webhook`, a secret file and `--alert-webhook-ca`,
//! and an alert raised by a security message a device sends over MQTT (a program run from
//! /tmp). The receiver checks every request's signature with the secret; it fails the first
//! two: the alert is delivered once, with two retries counted. Acknowledging the alert posts
//! its state change. A receiver whose certificate the hub does not trust is refused and
//! counted as failed; a secret file others may read is refused at start.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};
use twinguard_core::event::{Event, ProcessCreate, Timestamp, Uuid};
use twinguard_core::iothub::sas::sign;
use twinguard_mqtt::QoS;

use crate::client::{unix_now, Client};
use crate::fleet::make_pki;
use crate::support::{key_of, scratch, wait_until, write_secret, Hub, MODULE};

const SECRET: &str = "webhook-test-secret";

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted (including failed handshakes).
    connections: AtomicUsize,
    /// Bodies of requests with a valid signature and a fresh timestamp, answered 200.
    accepted: Mutex<Vec<Value>>,
    /// Requests whose signature did not verify.
    bad_signatures: AtomicUsize,
}

/// An HTTPS receiver on a free port with `dir`'s certificate; answers 500 to the first
/// `fail_first` requests.
fn receiver(dir: &Path, fail_first: usize) -> (u16, Arc<Seen>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { continue };
            let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
            let mut tls = StreamOwned::new(ServerConnection::new(Arc::clone(&config)).unwrap(), socket);
            let Some((head, body)) = read_request(&mut tls) else {
                continue;
            };
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
            };
            let timestamp = header("x-twinguard-timestamp").unwrap_or_default();
            let signature = header("x-twinguard-signature").unwrap_or_default();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
            let mut signed = format!("{timestamp}.").into_bytes();
            signed.extend_from_slice(&body);
            let valid = signature
                .strip_prefix("sha256=")
                .and_then(|h| {
                    (0..h.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                })
                .is_some_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok());
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let fresh = timestamp.parse::<u64>().is_ok_and(|t| t.abs_diff(now) < 300);
            let status = if n <= fail_first {
                "500 Internal Server Error"
            } else if valid && fresh {
                shared
                    .accepted
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                "200 OK"
            } else {
                shared.bad_signatures.fetch_add(1, Ordering::SeqCst);
                "401 Unauthorized"
            };
            let _ = tls.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (port, seen)
}

/// Reads one request: its head and its body (by Content-Length).
fn read_request(s: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = data[end + 4..].to_vec();
    while body.len() < length {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some((head, body))
}

/// A device sends one security message with a program started from /tmp.
fn raise_temp_dir_alert(hub: &Hub, device: &str) {
    let cs = hub.add_identity(device, None);
    let _ = cs;
    let cs = hub.add_identity(device, Some(MODULE));
    let key = key_of(&cs);
    let mut c = Client::open(hub.mqtt, &hub.ca);
    let token = sign(
        &format!("localhost/devices/{device}/modules/{MODULE}"),
        &key,
        unix_now() + 600,
    );
    let code = c.connect(
        &format!("{device}/{MODULE}"),
        &format!("localhost/{device}/{MODULE}/?api-version=2021-04-12"),
        &token,
        60,
    );
    assert_eq!(code, Some(twinguard_mqtt::ConnectReturnCode::Accepted));
    let now_ms = i64::try_from(unix_now() * 1000).unwrap();
    let event = Event::from_items(
        Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef),
        vec![ProcessCreate {
            executable: "/tmp/tg-webhook-test".into(),
            process_id: 4242,
            parent_process_id: 1,
            user_id: "0".into(),
            user_name: None,
            command_line: "/tmp/tg-webhook-test --run".into(),
            extra_details: Default::default(),
        }],
        Timestamp::from_parts(now_ms, 0).unwrap(),
    )
    .unwrap();
    let body = format!(
        r#"{{"AgentVersion":"0.1.0","AgentId":"9b2d4c1e-8f3a-4e6b-9c7d-1a2b3c4d5e6f","MessageSchemaVersion":"1.0","Events":[{}]}}"#,
        String::from_utf8(event.to_json()).unwrap()
    );
    let topic = format!(
        "devices/{device}/modules/{MODULE}/messages/events/%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.ct=application%2Fjson&%24.ce=utf-8"
    );
    assert!(c.publish(&topic, body.as_bytes(), QoS::AtLeastOnce).is_some());
    let _ = c.next(Duration::from_secs(5));
}

fn webhook_stats(hub: &Hub) -> Value {
    let (status, stats) = hub.api("GET", "/v1/statistics", None);
    assert_eq!(status, 200, "{stats}");
    stats["alertWebhook"].clone()
}

#[test]
fn alerts_reach_a_webhook_signed_retried_and_counted() {
    let dir = scratch("webhook");
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki);
    let secret = dir.join("secret");
    write_secret(&secret, &format!("{SECRET}\n"));
    let (port, seen) = receiver(&pki, 2);
    let url = format!("https://localhost:{port}/hooks/twinguard");
    let (secret_arg, ca_arg) = (
        secret.display().to_string(),
        pki.join("ca.pem").display().to_string(),
    );
    let hub = Hub::start_with(
        &dir.join("data"),
        "127.0.0.1:0",
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-secret-file",
            &secret_arg,
            "--alert-webhook-ca",
            &ca_arg,
        ],
    )
    .expect("hub starts");
    let device = "dev-webhook";
    raise_temp_dir_alert(&hub, device);
    let delivered = wait_until(Duration::from_secs(30), || {
        !seen.accepted.lock().unwrap().is_empty()
    });
    assert!(
        delivered,
        "nothing delivered: {}\n{}",
        webhook_stats(&hub),
        hub.log_text()
    );
    // Give a duplicate the time to show up if there were one.
    std::thread::sleep(Duration::from_secs(2));
    let accepted = seen.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    assert_eq!(accepted[0]["event"], json!("alert.raised"));
    assert_eq!(accepted[0]["alert"]["rule"], json!("temp-dir-execution"));
    assert_eq!(accepted[0]["alert"]["deviceId"], json!(device));
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        3,
        "two failures, then the delivery"
    );
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    let stats = webhook_stats(&hub);
    assert_eq!(
        (
            &stats["delivered"],
            &stats["retries"],
            &stats["failed"],
            &stats["dropped"]
        ),
        (&json!(1), &json!(2), &json!(0), &json!(0)),
        "{stats}"
    );
    // A state change is posted too.
    let id = accepted[0]["alert"]["id"].as_i64().unwrap();
    let (status, answer) = hub.api("POST", &format!("/v1/alerts/{id}/ack"), None);
    assert_eq!(status, 200, "{answer}");
    let posted = wait_until(Duration::from_secs(15), || {
        seen.accepted.lock().unwrap().len() == 2
    });
    assert!(posted, "{}", webhook_stats(&hub));
    let state = seen.accepted.lock().unwrap()[1].clone();
    assert_eq!(state["event"], json!("alert.state"), "{state}");
    assert_eq!(state["alert"]["state"], json!("acknowledged"), "{state}");
}

#[test]
fn an_untrusted_webhook_is_refused_and_a_readable_secret_too() {
    let dir = scratch("webhook-untrusted");
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki);
    let secret = dir.join("secret");
    write_secret(&secret, SECRET);
    let (port, seen) = receiver(&pki, 0);
    let url = format!("https://localhost:{port}/hook");
    let secret_arg = secret.display().to_string();
    // No --alert-webhook-ca: the receiver's CA is not among the system's roots.
    let hub = Hub::start_with(
        &dir.join("data"),
        "127.0.0.1:0",
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-secret-file",
            &secret_arg,
        ],
    )
    .expect("hub starts");
    raise_temp_dir_alert(&hub, "dev-untrusted");
    let failed = wait_until(Duration::from_secs(30), || {
        webhook_stats(&hub)["failed"] == json!(1)
    });
    let stats = webhook_stats(&hub);
    assert!(failed, "{stats}\n{}", hub.log_text());
    assert_eq!(stats["delivered"], json!(0), "{stats}");
    assert!(
        stats["lastError"].as_str().unwrap_or("").contains("certificate"),
        "{stats}"
    );
    assert!(seen.connections.load(Ordering::SeqCst) >= 1);
    assert!(seen.accepted.lock().unwrap().is_empty());
    let log = hub.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("alert webhook: not delivered") && l.contains("certificate")),
        "{log}"
    );
    drop(hub);

    // A secret others may read: refused at start, one line naming the file.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .arg("--data-dir")
        .arg(dir.join("data2"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--no-service",
        ])
        .args([
            "--alert-webhook",
            &url,
            "--alert-webhook-secret-file",
            &secret_arg,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("error")).unwrap_or_default();
    assert!(line.contains(&secret_arg), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}
