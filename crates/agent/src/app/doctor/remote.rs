//! `doctor`: the connection test of the MQTT and IoT Hub modes, step by step so that the
//! failing step is named: the secrets and TLS settings, TCP, the TLS handshake (certificate
//! verified against the same roots the agent trusts), the MQTT login with the agent's own
//! identity, and reading the desired configuration (the broker's retained document, or the
//! module twin) - which is the configuration the agent would start with.
//!
//! It uses the transport's pieces (TLS configuration, byte stream, credentials, topics) but not
//! its client: a test must stop at the first failure and say why, where the client retries.
//! When an agent is running on the same data directory it uses this identity: a second login
//! would take its connection away (IoT Hub allows one connection per identity), so the test
//! then stops after the TLS handshake. Nothing is published to the broker (no status, no
//! will); an IoT Hub twin GET is the only request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::ClientConfig;
use serde_json::Value;
use twinguard_core::iothub::identity::ConnectionString;
use twinguard_core::iothub::topics::{self, parse_response_topic};
use twinguard_mqtt::{
    Connect, ConnectReturnCode, Packet, PacketBuffer, Publish, QoS, Subscribe, SubscribeReturnCode,
};

use crate::transport::iothub::{desired_for_agent, IotHubOptions, IOTHUB_PORT, RESPONSE_TIMEOUT};
use crate::transport::mqtt::{
    MqttOptions, Topics, CONNECT_TIMEOUT, KEEP_ALIVE, MAX_INCOMING_PACKET, RETAINED_GRACE,
};
use crate::transport::net::{wait_fd, ReadStatus, Stream};
use crate::transport::tls::{client_config, TlsOptions};
use crate::transport::DesiredUpdate;
use twinguard_core::config::read_document;
use twinguard_os::safefile::{read_secret, MAX_SECRET_BYTES};

/// How long a SAS token signed for the test lives.
const TEST_TOKEN_TTL: Duration = Duration::from_secs(300);

/// What the connection test found.
#[derive(Debug, Default)]
pub struct ConnectionCheck {
    /// `host:port`.
    pub endpoint: String,
    /// One line per step.
    pub lines: Vec<String>,
    /// What keeps the agent from connecting (each makes doctor fail).
    pub problems: Vec<String>,
    /// The desired document read, when the test got that far.
    pub desired: Option<DesiredUpdate>,
}

impl ConnectionCheck {
    fn ok(&mut self, text: impl Into<String>) {
        self.lines.push(format!("ok: {}", text.into()));
    }

    fn fail(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.lines.push(format!("FAILED: {text}"));
        self.problems.push(text);
    }
}

/// One MQTT connection driven step by step.
struct Probe {
    stream: Stream,
    buffer: PacketBuffer,
    scratch: Vec<u8>,
    deadline: Instant,
}

impl Probe {
    fn connect(
        check: &mut ConnectionCheck,
        host: &str,
        port: u16,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Option<Probe> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        match Stream::connect(host, port, tls, deadline) {
            Ok(stream) => {
                check.ok(match tls {
                    Some(_) => format!(
                        "TCP connection and TLS handshake with {host}:{port} (server certificate verified)"
                    ),
                    None => format!("TCP connection to {host}:{port} (plain MQTT, no TLS)"),
                });
                Some(Probe {
                    stream,
                    buffer: PacketBuffer::new(MAX_INCOMING_PACKET),
                    scratch: Vec::new(),
                    // The steps after the handshake get their own budget.
                    deadline: Instant::now() + CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
                })
            }
            Err(e) => {
                check.fail(format!("cannot connect to {host}:{port}: {e}"));
                None
            }
        }
    }

    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let bytes = packet
            .to_bytes()
            .map_err(|e| format!("cannot encode {}: {e}", packet.name()))?;
        self.stream.queue(&bytes).map_err(|e| e.to_string())?;
        loop {
            self.stream.flush().map_err(|e| e.to_string())?;
            if !self.stream.wants_write() {
                return Ok(());
            }
            match wait_fd(self.stream.fd(), true, None, self.deadline) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("timed out sending {}", packet.name())),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The next packet before `until` (`Ok(None)` at `until`). QoS 1 publishes are
    /// acknowledged here.
    fn next(&mut self, until: Instant) -> Result<Option<Packet>, String> {
        let until = until.min(self.deadline);
        loop {
            if let Some(packet) = self
                .buffer
                .next_packet()
                .map_err(|e| format!("protocol error: {e}"))?
            {
                if let Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    packet_id: Some(id),
                    ..
                }) = &packet
                {
                    self.send(&Packet::PubAck(*id))?;
                }
                return Ok(Some(packet));
            }
            self.scratch.clear();
            match self.stream.read(&mut self.scratch).map_err(|e| e.to_string())? {
                ReadStatus::Data(_) => self.buffer.push(&self.scratch),
                ReadStatus::Closed => return Err("the server closed the connection".into()),
                ReadStatus::WouldBlock => match wait_fd(self.stream.fd(), false, None, until) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                },
            }
        }
    }

    fn login(&mut self, connect: Connect) -> Result<(), String> {
        self.send(&Packet::Connect(connect))?;
        match self.next(self.deadline)? {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Accepted => Ok(()),
            Some(Packet::ConnAck(ack)) => {
                Err(format!("the server refused the login: {}", ack.code.describe()))
            }
            Some(other) => Err(format!("expected CONNACK, got {}", other.name())),
            None => Err("no CONNACK in time".into()),
        }
    }

    fn subscribe(&mut self, filter: &str, packet_id: u16) -> Result<(), String> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(filter.to_owned(), QoS::AtLeastOnce)],
        }))?;
        loop {
            match self.next(self.deadline)? {
                Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => {
                    return match ack.return_codes.first() {
                        Some(SubscribeReturnCode::Success(_)) => Ok(()),
                        _ => Err(format!(
                            "the server refused the subscription to {filter} (not authorized?)"
                        )),
                    };
                }
                Some(_) => {}
                None => return Err(format!("no SUBACK for {filter} in time")),
            }
        }
    }

    fn close(mut self) {
        let _ = self.send(&Packet::Disconnect);
        self.stream.close();
    }
}

fn tls_config(check: &mut ConnectionCheck, options: &TlsOptions) -> Option<Arc<ClientConfig>> {
    match client_config(options) {
        Ok(c) => Some(c),
        Err(e) => {
            check.fail(format!("TLS settings: {e}"));
            None
        }
    }
}

fn not_logging_in(check: &mut ConnectionCheck, holder: &str) {
    check.lines.push(format!(
        "skipped: the MQTT login - an agent (pid {holder}) runs with this identity and a second login would take its connection away; its reported properties show its state"
    ));
}

/// The desired document of an MQTT retained payload.
fn desired_from_payload(payload: &[u8]) -> DesiredUpdate {
    if payload.is_empty() {
        return DesiredUpdate::Cleared;
    }
    match read_document(payload) {
        Ok(doc) => DesiredUpdate::Document { doc, version: None },
        Err(e) => DesiredUpdate::Unreadable(e.to_string()),
    }
}

/// Tests the MQTT mode; `agent_running` is the pid of an agent using this identity.
pub(crate) fn test_mqtt(options: &MqttOptions, agent_running: Option<&str>) -> ConnectionCheck {
    let mut check = ConnectionCheck {
        endpoint: format!("{}", options.broker),
        ..ConnectionCheck::default()
    };
    let tls = if options.broker.tls {
        match tls_config(&mut check, &options.tls) {
            Some(c) => Some(c),
            None => return check,
        }
    } else {
        None
    };
    let password = match &options.password_file {
        None => None,
        Some(path) => match read_secret(path, MAX_SECRET_BYTES) {
            Ok(mut bytes) => {
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                Some(bytes)
            }
            Err(e) => {
                check.fail(format!("password: {e}"));
                return check;
            }
        },
    };
    let Some(mut probe) = Probe::connect(
        &mut check,
        &options.broker.host,
        options.broker.port,
        tls.as_ref(),
    ) else {
        return check;
    };
    if let Some(holder) = agent_running {
        not_logging_in(&mut check, holder);
        probe.stream.close();
        return check;
    }
    let connect = Connect {
        client_id: options.device_id.clone(),
        clean_session: true,
        keep_alive_secs: KEEP_ALIVE.as_secs() as u16,
        will: None,
        username: options.username.clone(),
        password,
    };
    if let Err(e) = probe.login(connect) {
        check.fail(format!("MQTT login as {:?}: {e}", options.device_id));
        probe.close();
        return check;
    }
    check.ok(format!("MQTT login as {:?}", options.device_id));
    let topics = Topics::new(&options.prefix);
    if let Err(e) = probe.subscribe(&topics.desired, 1) {
        check.fail(e);
        probe.close();
        return check;
    }
    // A retained document arrives right after the SUBACK; none within the grace: defaults.
    let until = Instant::now() + RETAINED_GRACE;
    let mut desired = DesiredUpdate::Cleared;
    loop {
        match probe.next(until) {
            Ok(Some(Packet::Publish(p))) if p.topic == topics.desired => {
                desired = desired_from_payload(&p.payload);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                check.fail(format!("reading {}: {e}", topics.desired));
                probe.close();
                return check;
            }
        }
    }
    check.ok(match &desired {
        DesiredUpdate::Cleared => format!(
            "no retained desired document on {}: the defaults apply",
            topics.desired
        ),
        _ => format!("read the retained desired document on {}", topics.desired),
    });
    check.desired = Some(desired);
    probe.close();
    check
}

/// Reads the IoT Hub identity from its connection string file.
fn identity(check: &mut ConnectionCheck, options: &IotHubOptions) -> Option<ConnectionString> {
    let path = options.connection_string_file.display();
    let text = match read_secret(&options.connection_string_file, MAX_SECRET_BYTES) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            check.fail(format!("connection string: {e}"));
            return None;
        }
    };
    match ConnectionString::parse(&text) {
        Ok(id) => Some(id),
        Err(e) => {
            check.fail(format!("{path}: {e}"));
            None
        }
    }
}

/// Tests the IoT Hub mode; `agent_running` is the pid of an agent using this identity.
pub(crate) fn test_iothub(options: &IotHubOptions, agent_running: Option<&str>) -> ConnectionCheck {
    let mut check = ConnectionCheck {
        endpoint: format!("(the hub of {})", options.connection_string_file.display()),
        ..ConnectionCheck::default()
    };
    let Some(identity) = identity(&mut check, options) else {
        return check;
    };
    let (host, port) = options
        .endpoint
        .clone()
        .unwrap_or_else(|| (identity.host.clone(), IOTHUB_PORT));
    check.endpoint = format!("{host}:{port}");
    let Some(tls) = tls_config(
        &mut check,
        &TlsOptions {
            ca: options.ca.clone(),
            client_auth: None,
        },
    ) else {
        return check;
    };
    let Some(mut probe) = Probe::connect(&mut check, &host, port, Some(&tls)) else {
        return check;
    };
    if let Some(holder) = agent_running {
        not_logging_in(&mut check, holder);
        probe.stream.close();
        return check;
    }
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d + TEST_TOKEN_TTL).as_secs())
        .unwrap_or(0);
    let connect = Connect {
        client_id: identity.client_id(),
        clean_session: true,
        keep_alive_secs: KEEP_ALIVE.as_secs() as u16,
        will: None,
        username: Some(identity.username()),
        password: Some(identity.sas_token(expiry).into_bytes()),
    };
    if let Err(e) = probe.login(connect) {
        let hint = if e.contains("not authorized") || e.contains("bad user name") {
            " (wrong key, a disabled identity, or the system clock is off: SAS tokens carry an expiry)"
        } else {
            ""
        };
        check.fail(format!("IoT Hub login as {}: {e}{hint}", identity.client_id()));
        probe.close();
        return check;
    }
    check.ok(format!("IoT Hub login as {} (SAS token)", identity.client_id()));
    if let Err(e) = probe.subscribe(topics::TWIN_RESPONSES, 1) {
        check.fail(e);
        probe.close();
        return check;
    }
    let get = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topics::twin_get(1),
        packet_id: Some(2),
        payload: Vec::new(),
    });
    if let Err(e) = probe.send(&get) {
        check.fail(format!("twin GET: {e}"));
        probe.close();
        return check;
    }
    let until = Instant::now() + RESPONSE_TIMEOUT;
    loop {
        match probe.next(until) {
            Ok(Some(Packet::Publish(p))) => {
                let Some(response) = parse_response_topic(&p.topic).filter(|r| r.rid == Some(1)) else {
                    continue;
                };
                if response.status != 200 {
                    check.fail(format!(
                        "the twin GET was answered with status {}",
                        response.status
                    ));
                    break;
                }
                match serde_json::from_slice::<Value>(&p.payload) {
                    Ok(twin) => {
                        let desired = twin.get("desired").cloned().unwrap_or(Value::Null);
                        let version = desired.get("$version").and_then(Value::as_i64);
                        check.ok(format!(
                            "read the module twin (desired $version {})",
                            version.map_or_else(|| "none".into(), |v| v.to_string())
                        ));
                        check.desired = Some(desired_for_agent(&desired, version));
                    }
                    Err(e) => check.fail(format!("the twin is not JSON: {e}")),
                }
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                check.fail(format!("no answer to the twin GET within {RESPONSE_TIMEOUT:?}"));
                break;
            }
            Err(e) => {
                check.fail(format!("twin GET: {e}"));
                break;
            }
        }
    }
    probe.close();
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_payloads_become_desired_updates() {
        assert_eq!(desired_from_payload(b""), DesiredUpdate::Cleared);
        assert!(matches!(
            desired_from_payload(br#"{"snapshotFrequency": {"value": "PT1H"}}"#),
            DesiredUpdate::Document { version: None, .. }
        ));
        assert!(matches!(
            desired_from_payload(b"{not json"),
            DesiredUpdate::Unreadable(_)
        ));
    }

    #[test]
    fn an_unreachable_broker_fails_at_the_connection_step() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let options = MqttOptions::new(
            crate::transport::mqtt::BrokerUrl {
                host: "127.0.0.1".into(),
                port,
                tls: false,
            },
            "doctor-test".into(),
            None,
            TlsOptions::default(),
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let check = test_mqtt(&options, None);
        assert_eq!(check.problems.len(), 1, "{:?}", check.lines);
        assert!(
            check.problems[0].contains("cannot connect"),
            "{:?}",
            check.problems
        );
        assert!(check.desired.is_none());
    }
}
