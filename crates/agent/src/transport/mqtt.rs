//! MQTT mode (SPEC §6): any MQTT 3.1.1 broker. Topics under a prefix (default
//! `twinguard/{deviceId}`):
//!
//! | topic | who writes | what |
//! |---|---|---|
//! | `{prefix}/twin/desired` | the operator, retained | the desired section; each publish replaces it; an empty payload (or no retained message) = defaults |
//! | `{prefix}/twin/reported` | the agent, retained | the reported section (configuration object and `twinguard`) |
//! | `{prefix}/messages` | the agent, QoS 1 | one compact security message per publish |
//! | `{prefix}/status` | the agent, retained | `online`; the last will says `offline` |
//!
//! The status and the last reported section are "birth" messages: re-published on every
//! connection, so a broker that lost its retained store (restarted without persistence) gets
//! them back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, info, warn};
use twinguard_mqtt::{topic, LastWill, QoS};

use super::mqtt_client::{ClientOptions, Credentials, Message, MqttClient, Secret, StaticLogin};
use super::tls::{client_config, TlsOptions};
use super::{DesiredUpdate, Transport, TransportError};
use crate::backoff::{Backoff, Jitter};
use twinguard_core::config::MAX_DOCUMENT_BYTES;
use twinguard_os::safefile::{read_secret, MAX_SECRET_BYTES};

/// Keep-alive: a dead broker is noticed within about this plus the ping timeout.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a message or report waits for its PUBACK.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of one connection attempt (TCP, TLS, CONNACK, SUBACK).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect delays: 0.5 s doubling to 30 s, with jitter.
pub(crate) const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
    jitter: Jitter::UpperHalf,
};
/// Largest packet taken from the broker: a desired document (1 MiB) plus topic and headers.
pub(crate) const MAX_INCOMING_PACKET: usize = MAX_DOCUMENT_BYTES + 64 * 1024;
/// After a (re)connection, a retained desired document arrives right after the SUBACK; when
/// none came within this grace, the topic has none (= defaults).
pub(crate) const RETAINED_GRACE: Duration = Duration::from_secs(2);
/// Incoming publishes waiting for the run loop (only the desired topic is subscribed).
const INCOMING_CAPACITY: usize = 32;

pub use twinguard_mqtt::url::{BrokerUrl, UrlError};

/// Why a broker URL, device id or topic prefix cannot be used; each message is one line
/// naming the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MqttOptionsError {
    /// The broker URL.
    #[error("--mqtt {0}")]
    Url(#[from] UrlError),
    /// A device id that cannot name topics.
    #[error("--device-id {0:?}: 1 to 128 characters, without / + # or control characters")]
    DeviceId(String),
    /// A prefix that is not a topic name.
    #[error("--mqtt-prefix {prefix:?}: {source}")]
    Prefix {
        /// The prefix (without a trailing `/`).
        prefix: String,
        /// Why it is not a topic name.
        #[source]
        source: twinguard_mqtt::topic::TopicError,
    },
}

/// The validated MQTT mode settings.
#[derive(Clone, Debug)]
pub struct MqttOptions {
    /// The broker.
    pub broker: BrokerUrl,
    /// The device id (also the MQTT client id).
    pub device_id: String,
    /// The topic prefix.
    pub prefix: String,
    /// CA and client certificate.
    pub tls: TlsOptions,
    /// User name.
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
}

impl MqttOptions {
    /// Checks the device id (it names topics: no `/`, `+`, `#`) and the prefix (a topic name).
    pub fn new(
        broker: BrokerUrl,
        device_id: String,
        prefix: Option<String>,
        tls: TlsOptions,
        username: Option<String>,
        password_file: Option<PathBuf>,
    ) -> Result<MqttOptions, MqttOptionsError> {
        if device_id.is_empty()
            || device_id.len() > 128
            || device_id.contains(['/', '+', '#', '\0'])
            || device_id.chars().any(char::is_control)
        {
            return Err(MqttOptionsError::DeviceId(device_id));
        }
        let prefix = prefix.unwrap_or_else(|| format!("twinguard/{device_id}"));
        let prefix = prefix.strip_suffix('/').unwrap_or(&prefix).to_owned();
        if let Err(source) = topic::validate_name(&prefix) {
            return Err(MqttOptionsError::Prefix { prefix, source });
        }
        Ok(MqttOptions {
            broker,
            device_id,
            prefix,
            tls,
            username,
            password_file,
        })
    }
}

/// The four topics of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// `{prefix}/twin/desired`.
    pub desired: String,
    /// `{prefix}/twin/reported`.
    pub reported: String,
    /// `{prefix}/messages`.
    pub messages: String,
    /// `{prefix}/status`.
    pub status: String,
}

impl Topics {
    /// The topics under `prefix`.
    pub fn new(prefix: &str) -> Topics {
        Topics {
            desired: format!("{prefix}/twin/desired"),
            reported: format!("{prefix}/twin/reported"),
            messages: format!("{prefix}/messages"),
            status: format!("{prefix}/status"),
        }
    }
}

/// A transport error from anything printable (client, TLS and settings errors are not OS
/// errors but travel as one).
pub(crate) fn transport_error_for(what: String, e: impl std::fmt::Display) -> TransportError {
    TransportError::Io {
        what,
        source: std::io::Error::other(e.to_string()),
    }
}

/// The MQTT mode transport.
#[derive(Debug)]
pub struct MqttTransport {
    client: MqttClient,
    topics: Topics,
    broker: BrokerUrl,
    /// The desired payload last handed to the run loop (a retained message comes again on
    /// every reconnection; the same bytes are not handed over twice).
    handed: Option<Vec<u8>>,
    /// The newest desired payload received and not handed over yet.
    received: Option<Vec<u8>>,
    /// Connections seen, and since when the current one waits for its retained desired.
    seen_connections: u64,
    grace_since: Option<Instant>,
}

impl MqttTransport {
    /// Reads the secrets, builds TLS and starts the client (which connects in the
    /// background).
    pub fn start(options: &MqttOptions) -> Result<MqttTransport, TransportError> {
        let what = || format!("mqtt {}", options.broker);
        let tls = if options.broker.tls {
            Some(client_config(&options.tls).map_err(|e| transport_error_for(what(), e))?)
        } else {
            None
        };
        let password = match &options.password_file {
            None => None,
            Some(path) => {
                let mut bytes =
                    read_secret(path, MAX_SECRET_BYTES).map_err(|e| transport_error_for(what(), e))?;
                // Editors end files with a newline; it is not part of the password.
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                if !options.broker.tls {
                    // Settings refuse this combination unless allow-insecure-password is set.
                    warn!(
                        broker = %options.broker,
                        "the broker password is sent in clear text over plain mqtt:// (allowed by allow-insecure-password); anyone on the network path can read it: use mqtts://"
                    );
                }
                Some(Secret(bytes))
            }
        };
        let topics = Topics::new(&options.prefix);
        let client = MqttClient::start(ClientOptions {
            host: options.broker.host.clone(),
            port: options.broker.port,
            tls,
            client_id: options.device_id.clone(),
            keep_alive: KEEP_ALIVE,
            clean_session: true,
            will: Some(LastWill {
                topic: topics.status.clone(),
                payload: b"offline".to_vec(),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            subscriptions: vec![(topics.desired.clone(), QoS::AtLeastOnce)],
            birth: vec![online(&topics)],
            login: Box::new(StaticLogin(Credentials {
                username: options.username.clone(),
                password,
                renew_after: None,
            })),
            max_incoming_packet: MAX_INCOMING_PACKET,
            connect_timeout: CONNECT_TIMEOUT,
            backoff: BACKOFF,
            incoming_capacity: INCOMING_CAPACITY,
        })
        .map_err(|e| transport_error_for(what(), e))?;
        Ok(MqttTransport {
            client,
            topics,
            broker: options.broker.clone(),
            handed: None,
            received: None,
            seen_connections: 0,
            grace_since: None,
        })
    }

    /// The topics in use.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Waits up to `timeout` for the desired state at start-up: `Some` once connected and the
    /// retained desired document (or its absence) is known; `None` if the broker could not be
    /// reached in time. The answer is not marked as handed over: call
    /// [`MqttTransport::mark_handed`] when the caller applied it itself.
    pub(crate) fn startup(&mut self, timeout: Duration) -> Option<DesiredUpdate> {
        let deadline = Instant::now() + timeout;
        loop {
            self.take_incoming();
            if self.received.is_some() {
                return self.received.as_deref().map(desired_update);
            }
            if self.grace_over() {
                return Some(DesiredUpdate::Cleared);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Some(p) = self.client.recv_timeout(left.min(Duration::from_millis(50))) {
                self.accept(p.topic, p.payload);
            }
        }
    }

    /// Records that the run loop already has the current desired document (applied at start).
    pub(crate) fn mark_handed(&mut self) {
        self.handed = Some(self.received.take().unwrap_or_default());
    }

    fn accept(&mut self, topic: String, payload: Vec<u8>) {
        if topic == self.topics.desired {
            self.received = Some(payload);
            // The IO thread counts a connection before it delivers that connection's retained
            // message, so the count read now covers the connection that brought it: no grace
            // wait is armed for it later (which would wrongly conclude "no document").
            self.seen_connections = self.client.connections();
            self.grace_since = None;
        } else {
            debug!(%topic, "ignoring a publish on an unexpected topic");
        }
    }

    /// Drains the client's incoming publishes and notices reconnections.
    fn take_incoming(&mut self) {
        let connections = self.client.connections();
        if connections != self.seen_connections {
            self.seen_connections = connections;
            self.grace_since = Some(Instant::now());
        }
        while let Some(p) = self.client.try_recv() {
            self.accept(p.topic, p.payload);
        }
        if self.client.take_overflow() {
            // Something was dropped: ask the broker for the retained document again.
            self.client.resubscribe();
            self.grace_since = Some(Instant::now());
        }
    }

    /// True once the current connection has been up for the grace time without bringing a
    /// retained desired document.
    fn grace_over(&mut self) -> bool {
        match self.grace_since {
            Some(since) if since.elapsed() >= RETAINED_GRACE && self.client.is_connected() => {
                self.grace_since = None;
                true
            }
            _ => false,
        }
    }
}

fn online(topics: &Topics) -> Message {
    Message {
        topic: topics.status.clone(),
        payload: b"online".to_vec(),
        retain: true,
    }
}

/// A desired payload as the run loop takes it: empty = defaults.
fn desired_update(payload: &[u8]) -> DesiredUpdate {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return DesiredUpdate::Cleared;
    }
    match twinguard_core::config::read_document(payload) {
        Ok(doc) => DesiredUpdate::Document { doc, version: None },
        Err(e) => DesiredUpdate::Unreadable(format!("the desired document on the broker: {e}")),
    }
}

impl Transport for MqttTransport {
    fn connections(&self) -> u64 {
        self.client.connections()
    }

    fn deliver(&mut self, body: &[u8]) -> Result<(), TransportError> {
        self.client
            .publish(&self.topics.messages, body, false, PUBLISH_TIMEOUT)
            .map_err(|e| transport_error_for(format!("mqtt publish to {}", self.topics.messages), e))
    }

    fn report(&mut self, section: &Value) -> Result<(), TransportError> {
        let payload =
            serde_json::to_vec(section).map_err(|e| transport_error_for("reported section".into(), e))?;
        // Whatever happens now, the next connection publishes the newest section.
        self.client.set_birth(vec![
            online(&self.topics),
            Message {
                topic: self.topics.reported.clone(),
                payload: payload.clone(),
                retain: true,
            },
        ]);
        self.client
            .publish(&self.topics.reported, &payload, true, PUBLISH_TIMEOUT)
            .map_err(|e| {
                transport_error_for(
                    format!(
                        "mqtt publish to {} (sent again on reconnection)",
                        self.topics.reported
                    ),
                    e,
                )
            })
    }

    fn poll_desired(&mut self, _now_ms: u64) -> Option<DesiredUpdate> {
        self.take_incoming();
        if let Some(payload) = self.received.take() {
            if self.handed.as_ref() == Some(&payload) {
                return None;
            }
            let update = desired_update(&payload);
            self.handed = Some(payload);
            return Some(update);
        }
        if self.grace_over() && self.handed.as_ref().is_some_and(|h| !h.is_empty()) {
            info!("no retained desired document on the broker any more: back to the defaults");
            self.handed = Some(Vec::new());
            return Some(DesiredUpdate::Cleared);
        }
        None
    }

    fn describe(&self) -> String {
        format!(
            "mqtt {} prefix {}",
            self.broker,
            self.topics.messages.trim_end_matches("/messages")
        )
    }

    fn mode(&self) -> &'static str {
        "mqtt"
    }

    fn configuration_hint(&self) -> String {
        format!(
            "publish a retained desired document on {} to set shorter frequencies",
            self.topics.desired
        )
    }
}

impl Drop for MqttTransport {
    fn drop(&mut self) {
        // A clean stop says `offline` itself: DISCONNECT makes the broker drop the last will.
        let farewell = Message {
            topic: self.topics.status.clone(),
            payload: b"offline".to_vec(),
            retain: true,
        };
        self.client.stop(Some(farewell), Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_device_ids() {
        let url = BrokerUrl::parse("mqtt://h").unwrap_or_else(|e| panic!("{e}"));
        let o = MqttOptions::new(
            url.clone(),
            "dev-1".into(),
            None,
            TlsOptions::default(),
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Topics::new(&o.prefix),
            Topics {
                desired: "twinguard/dev-1/twin/desired".into(),
                reported: "twinguard/dev-1/twin/reported".into(),
                messages: "twinguard/dev-1/messages".into(),
                status: "twinguard/dev-1/status".into(),
            }
        );
        let o = MqttOptions::new(
            url.clone(),
            "d".into(),
            Some("fleet/a/".into()),
            TlsOptions::default(),
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.prefix, "fleet/a");
        for bad in ["", "a/b", "a+", "#", "a\nb"] {
            assert!(
                MqttOptions::new(url.clone(), bad.into(), None, TlsOptions::default(), None, None).is_err(),
                "{bad:?}"
            );
        }
        assert!(MqttOptions::new(
            url,
            "d".into(),
            Some("a/#".into()),
            TlsOptions::default(),
            None,
            None
        )
        .is_err());
    }

    #[test]
    fn desired_payloads() {
        assert_eq!(desired_update(b""), DesiredUpdate::Cleared);
        assert_eq!(desired_update(b" \n"), DesiredUpdate::Cleared);
        assert!(matches!(desired_update(b"{\"a\":"), DesiredUpdate::Unreadable(_)));
        assert!(matches!(
            desired_update(b"{}"),
            DesiredUpdate::Document { version: None, .. }
        ));
    }
}
