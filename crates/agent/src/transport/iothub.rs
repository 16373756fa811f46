//! IoT Hub mode (SPEC §6): the `azureiotsecurity` module identity over MQTT 3.1.1 and TLS
//! (port 8883), written from the protocol description because no maintained Rust SDK exists.
//!
//! - Identity: a module connection string read from a file (a secret); client id
//!   `{device}/{module}`, user name `{host}/{device}/{module}/?api-version=2021-04-12`, password
//!   a SAS token signed with the module key, valid [`TOKEN_TTL`] and renewed by reconnecting
//!   before it expires.
//! - Twin: subscribe to `$iothub/twin/res/#` and `$iothub/twin/PATCH/properties/desired/#` (2
//!   of the 5 subscriptions IoT Hub allows); after every connection GET the full twin
//!   (`$rid`-correlated, with a timeout); desired patches are merged onto the last received
//!   document with [`DesiredState`] (RFC 7386, `$version` order, a gap -> GET again);
//!   notifications not newer than the GET's `$version` are ignored. Reported properties are
//!   PATCHed and confirmed by the 204 answer.
//! - Messages: `devices/{d}/modules/{m}/messages/events/` + the security-message property bag
//!   and a `$.mid`, QoS 1 only (QoS 2 makes IoT Hub close the connection), 256 KB at most.
//!   One message is in flight at a time, so the hub's PUBACK pace is the send rate: a
//!   throttled hub slows us down; a disconnect is retried with backoff and jitter.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::{debug, info, warn};
use twinguard_mqtt::{Publish, QoS};

use super::mqtt::{transport_error_for, BACKOFF, CONNECT_TIMEOUT, MAX_INCOMING_PACKET};
use super::mqtt_client::{ClientOptions, Credentials, Login, MqttClient, Secret};
use super::tls::{client_config, TlsOptions};
use super::{DesiredUpdate, Transport, TransportError};
use crate::backoff::Backoff;
use twinguard_core::config::{DesiredState, PatchOutcome, CONFIG_KEY};
use twinguard_core::iothub::identity::ConnectionString;
use twinguard_core::iothub::topics::{
    self, message_topic, parse_desired_topic, parse_response_topic, TwinResponse,
};
use twinguard_core::iothub::MAX_MESSAGE_BYTES;
use twinguard_os::safefile::{read_secret, MAX_SECRET_BYTES};

/// Lifetime of a SAS token; the connection is renewed after five sixths of it.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// IoT Hub's MQTT port.
pub(crate) const IOTHUB_PORT: u16 = 8883;
/// How long a twin GET or reported PATCH waits for its answer.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish waits for its PUBACK.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// IoT Hub's keep-alive default in the official SDKs is 60 s; we ping sooner so a dead
/// connection is noticed within a minute.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Desired patches held while a GET is outstanding; more are dropped (the GET has them).
const MAX_BUFFERED_PATCHES: usize = 32;
/// Incoming publishes waiting for the transport.
const INCOMING_CAPACITY: usize = 64;
/// The validated IoT Hub mode settings.
#[derive(Clone, Debug)]
pub struct IotHubOptions {
    /// File holding the module connection string.
    pub connection_string_file: PathBuf,
    /// A private CA to trust.
    pub ca: Option<PathBuf>,
    /// Connect here instead of `HostName:8883` (tests and local hubs; the TLS name is this
    /// host).
    pub endpoint: Option<(String, u16)>,
    /// SAS token lifetime (tests shorten it to see renewals).
    pub token_ttl: Duration,
}

impl IotHubOptions {
    /// Options for a connection string file, with the defaults.
    pub fn new(connection_string_file: PathBuf, ca: Option<PathBuf>) -> IotHubOptions {
        IotHubOptions {
            connection_string_file,
            ca,
            endpoint: None,
            token_ttl: TOKEN_TTL,
        }
    }
}

/// Fresh SAS credentials for every connection.
#[derive(Debug)]
struct SasLogin {
    identity: ConnectionString,
    ttl: Duration,
}

impl Login for SasLogin {
    fn credentials(&mut self) -> Result<Credentials, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970: cannot sign a SAS token".to_owned())?;
        let expiry = (now + self.ttl).as_secs();
        Ok(Credentials {
            username: Some(self.identity.username()),
            password: Some(Secret(self.identity.sas_token(expiry).into_bytes())),
            renew_after: Some(self.ttl - self.ttl / 6),
        })
    }
}

/// The desired document handed to the run loop: only our configuration key (other modules'
/// desired properties are not ours to warn about) and `$version`.
pub(crate) fn desired_for_agent(desired: &Value, version: Option<i64>) -> DesiredUpdate {
    let mut doc = Map::new();
    if let Some(object) = desired.get(CONFIG_KEY).filter(|v| !v.is_null()) {
        doc.insert(CONFIG_KEY.to_owned(), object.clone());
    }
    if let Some(v) = version {
        doc.insert("$version".into(), Value::from(v));
    }
    DesiredUpdate::Document {
        doc: Value::Object(doc),
        version,
    }
}

/// The IoT Hub mode transport.
#[derive(Debug)]
pub(crate) struct IotHubTransport {
    client: MqttClient,
    identity: ConnectionString,
    desired: DesiredState,
    next_rid: u64,
    seen_connections: u64,
    /// A full GET is needed (after a connection, a gap, lost notifications).
    need_get: bool,
    /// The outstanding GET: its `$rid` and when it was sent.
    get: Option<(u64, Instant)>,
    get_failures: u32,
    get_not_before: Option<Instant>,
    /// Notifications that came while a GET was outstanding.
    buffered: VecDeque<Value>,
    /// The next update for the run loop.
    update: Option<DesiredUpdate>,
    /// The `$version` the run loop is known to apply (for `twinguard.desiredVersion` of the
    /// first report, before any update went through the run loop).
    started_version: Option<i64>,
    /// The newest reported section (compact JSON) and whether the hub has confirmed it.
    reported: Option<Vec<u8>>,
    report_confirmed: bool,
    /// The reported PATCH waiting for its answer: its `$rid` and when it was sent. The answer
    /// is awaited asynchronously so a slow hub never holds up the run loop.
    report_rid: Option<(u64, Instant)>,
    report_failures: u32,
    report_not_before: Option<Instant>,
}

impl IotHubTransport {
    /// Reads the connection string (a secret file), builds TLS and starts the client.
    pub fn start(options: &IotHubOptions) -> Result<IotHubTransport, TransportError> {
        let file = options.connection_string_file.display().to_string();
        let what = || "iothub".to_owned();
        let bytes = read_secret(&options.connection_string_file, MAX_SECRET_BYTES)
            .map_err(|e| transport_error_for(what(), e))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| transport_error_for(what(), format!("{file}: not UTF-8")))?;
        let identity = ConnectionString::parse(&text)
            .map_err(|e| transport_error_for(what(), format!("{file}: {e}")))?;
        for key in &identity.ignored {
            // GatewayHostName and future keys are not needed to connect directly.
            debug!(key = %key, "connection string: key ignored");
        }
        let tls = client_config(&TlsOptions {
            ca: options.ca.clone(),
            client_auth: None,
        })
        .map_err(|e| transport_error_for(what(), e))?;
        let (host, port) = options
            .endpoint
            .clone()
            .unwrap_or_else(|| (identity.host.clone(), IOTHUB_PORT));
        let client = MqttClient::start(ClientOptions {
            host,
            port,
            tls: Some(tls),
            client_id: identity.client_id(),
            keep_alive: KEEP_ALIVE,
            clean_session: true,
            will: None,
            subscriptions: vec![
                (topics::TWIN_RESPONSES.to_owned(), QoS::AtLeastOnce),
                (topics::TWIN_DESIRED.to_owned(), QoS::AtLeastOnce),
            ],
            birth: vec![],
            login: Box::new(SasLogin {
                identity: identity.clone(),
                ttl: options.token_ttl,
            }),
            max_incoming_packet: MAX_INCOMING_PACKET,
            connect_timeout: CONNECT_TIMEOUT,
            backoff: BACKOFF,
            incoming_capacity: INCOMING_CAPACITY,
        })
        .map_err(|e| transport_error_for(what(), e))?;
        Ok(IotHubTransport {
            client,
            identity,
            desired: DesiredState::new(),
            next_rid: 0,
            seen_connections: 0,
            need_get: true,
            get: None,
            get_failures: 0,
            get_not_before: None,
            buffered: VecDeque::new(),
            update: None,
            started_version: None,
            reported: None,
            report_confirmed: true,
            report_rid: None,
            report_failures: 0,
            report_not_before: None,
        })
    }

    /// Waits up to `timeout` for the full twin at start-up. `None` if the hub could not be
    /// reached (or did not answer) in time. The update stays pending for
    /// [`Transport::poll_desired`] unless [`IotHubTransport::mark_handed`] is called.
    pub(crate) fn startup(&mut self, timeout: Duration) -> Option<DesiredUpdate> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.pump();
            if self.update.is_some() {
                return self.update.clone();
            }
            if let Some(p) = self.client.recv_timeout(Duration::from_millis(50)) {
                self.handle(p);
            }
        }
        None
    }

    /// The run loop applied the start-up document itself: do not hand it over again.
    pub(crate) fn mark_handed(&mut self) {
        if let Some(DesiredUpdate::Document { version, .. }) = self.update.take() {
            self.started_version = version;
        }
    }

    fn next_rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    /// Handles what arrived, notices reconnections and (re)sends the GET when needed.
    fn pump(&mut self) {
        let connections = self.client.connections();
        if connections != self.seen_connections {
            self.seen_connections = connections;
            // A new connection: its subscriptions are fresh; GET the whole twin, and send the
            // reported section again if the hub never confirmed it.
            self.need_get = true;
            self.get = None;
            self.get_failures = 0;
            self.get_not_before = None;
            self.report_rid = None;
            self.report_not_before = None;
        }
        while let Some(p) = self.client.try_recv() {
            self.handle(p);
        }
        if self.client.take_overflow() {
            self.need_get = true;
        }
        self.resend_report_if_due();
        if let Some((rid, sent)) = self.get {
            if sent.elapsed() >= RESPONSE_TIMEOUT {
                warn!(rid, "no answer to the twin GET: asking again");
                self.get = None;
                self.need_get = true;
                self.get_failed();
            }
        }
        if self.need_get && self.get.is_none() && self.client.is_connected() {
            if self.get_not_before.is_some_and(|t| Instant::now() < t) {
                return;
            }
            let rid = self.next_rid();
            match self
                .client
                .publish(&topics::twin_get(rid), b"", false, PUBLISH_TIMEOUT)
            {
                Ok(()) => {
                    debug!(rid, "twin GET sent");
                    self.get = Some((rid, Instant::now()));
                    self.need_get = false;
                    self.buffered.clear();
                }
                Err(e) => {
                    warn!("twin GET not sent: {e}");
                    self.get_failed();
                }
            }
        }
    }

    fn get_failed(&mut self) {
        let delay = Backoff::delay(&BACKOFF, self.get_failures);
        self.get_failures = self.get_failures.saturating_add(1);
        self.get_not_before = Some(Instant::now() + delay);
    }

    /// Handles one incoming publish.
    fn handle(&mut self, publish: Publish) {
        if let Some(response) = parse_response_topic(&publish.topic) {
            self.handle_response(response, &publish.payload);
        } else if let Some(topic_version) = parse_desired_topic(&publish.topic) {
            self.handle_notification(topic_version, &publish.payload);
        } else {
            debug!(topic = %publish.topic, "ignoring a publish on an unexpected topic");
        }
    }

    fn handle_response(&mut self, response: TwinResponse, body: &[u8]) {
        if let Some((rid, _)) = self.report_rid {
            if response.rid == Some(rid) {
                self.report_rid = None;
                match response.status {
                    200..=299 => {
                        self.report_confirmed = true;
                        self.report_failures = 0;
                    }
                    status => {
                        warn!(status, "the hub refused the reported properties (429 = throttled): sending them again after a delay");
                        self.report_failed();
                    }
                }
                return;
            }
        }
        let Some((rid, _)) = self.get else {
            debug!(?response, "a twin answer nobody waits for (an earlier request)");
            return;
        };
        if response.rid != Some(rid) {
            debug!(?response, "a twin answer to an earlier request: ignored");
            return;
        }
        self.get = None;
        if response.status != 200 {
            warn!(
                status = response.status,
                "the twin GET failed; asking again after a delay"
            );
            self.need_get = true;
            self.get_failed();
            return;
        }
        self.get_failures = 0;
        // Parsed with the bounds of any twin document (members per object, 1 MiB).
        let twin: Value = match twinguard_core::config::read_document(body) {
            Ok(v) => v,
            Err(e) => {
                self.update = Some(DesiredUpdate::Unreadable(format!(
                    "the twin from the hub is not JSON: {e}"
                )));
                return;
            }
        };
        let Some(desired) = twin.get("desired").filter(|d| d.is_object()) else {
            self.update = Some(DesiredUpdate::Unreadable(
                "the twin from the hub has no desired section".into(),
            ));
            return;
        };
        self.desired.replace(desired.clone());
        info!(version = ?self.desired.version(), "twin received");
        // Notifications that came while the GET was out: apply those newer than the GET's.
        let buffered: Vec<Value> = self.buffered.drain(..).collect();
        for patch in buffered {
            self.apply_patch(&patch);
        }
        self.update = Some(desired_for_agent(self.desired.document(), self.desired.version()));
    }

    fn handle_notification(&mut self, topic_version: Option<i64>, body: &[u8]) {
        let mut patch: Value = match twinguard_core::config::read_document(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                warn!("a desired-properties notification is not a JSON object: fetching the twin");
                self.need_get = true;
                return;
            }
        };
        // The version is in the body; the topic's is a fallback for hubs that omit it.
        if patch.get("$version").is_none() {
            if let (Some(v), Value::Object(members)) = (topic_version, &mut patch) {
                members.insert("$version".into(), Value::from(v));
            }
        }
        if self.get.is_some() || self.need_get {
            if self.buffered.len() < MAX_BUFFERED_PATCHES {
                self.buffered.push_back(patch);
            }
            return;
        }
        if self.apply_patch(&patch) {
            self.update = Some(desired_for_agent(self.desired.document(), self.desired.version()));
        }
    }

    /// Applies a patch to the desired state; true when it changed the document.
    fn apply_patch(&mut self, patch: &Value) -> bool {
        match self.desired.apply_patch(patch) {
            PatchOutcome::Applied { version } => {
                info!(version, "desired patch merged");
                true
            }
            PatchOutcome::Stale { received, known } => {
                debug!(received, known, "stale desired notification ignored");
                false
            }
            PatchOutcome::Gap { expected, received } => {
                info!(
                    ?expected,
                    received, "desired versions missed: fetching the whole twin"
                );
                self.need_get = true;
                false
            }
            PatchOutcome::Unversioned => {
                warn!("a desired notification without $version: fetching the whole twin");
                self.need_get = true;
                false
            }
        }
    }

    /// PATCHes the newest reported section; the hub's answer is handled when it comes.
    fn send_report(&mut self) -> Result<(), TransportError> {
        let Some(body) = self.reported.clone() else {
            return Ok(());
        };
        let rid = self.next_rid();
        match self
            .client
            .publish(&topics::twin_patch_reported(rid), &body, false, PUBLISH_TIMEOUT)
        {
            Ok(()) => {
                self.report_rid = Some((rid, Instant::now()));
                Ok(())
            }
            Err(e) => {
                self.report_failed();
                Err(transport_error_for(
                    "iothub reported PATCH (sent again when connected)".into(),
                    e,
                ))
            }
        }
    }

    fn report_failed(&mut self) {
        let delay = Backoff::delay(&BACKOFF, self.report_failures);
        self.report_failures = self.report_failures.saturating_add(1);
        self.report_not_before = Some(Instant::now() + delay);
    }

    /// Sends the newest reported section again when the hub has not confirmed it: after a
    /// refusal (with backoff), a lost answer, or a reconnection.
    fn resend_report_if_due(&mut self) {
        if self.report_confirmed || self.reported.is_none() || !self.client.is_connected() {
            return;
        }
        if let Some((rid, sent)) = self.report_rid {
            if sent.elapsed() < RESPONSE_TIMEOUT {
                return;
            }
            warn!(rid, "no answer to the reported PATCH: sending it again");
            self.report_rid = None;
            self.report_failed();
        }
        if self.report_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if let Err(e) = self.send_report() {
            debug!("{e}");
        }
    }
}

impl Transport for IotHubTransport {
    fn connections(&self) -> u64 {
        self.client.connections()
    }

    fn deliver(&mut self, body: &[u8]) -> Result<(), TransportError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(transport_error_for(
                "iothub message".into(),
                format!("{} bytes is over IoT Hub's 256 KB limit", body.len()),
            ));
        }
        let topic = message_topic(
            &self.identity.device_id,
            &self.identity.module_id,
            &uuid::Uuid::new_v4().to_string(),
        );
        self.client
            .publish(&topic, body, false, PUBLISH_TIMEOUT)
            .map_err(|e| transport_error_for("iothub message".into(), e))
    }

    fn report(&mut self, section: &Value) -> Result<(), TransportError> {
        let mut section = section.clone();
        // The first report comes before any update went through the run loop: it applies the
        // start-up twin, whose version only we know.
        if let (Some(v), Some(Value::Object(status))) = (self.started_version, section.get_mut("twinguard")) {
            status.entry("desiredVersion").or_insert(Value::from(v));
        }
        let body =
            serde_json::to_vec(&section).map_err(|e| transport_error_for("reported section".into(), e))?;
        self.reported = Some(body);
        self.report_confirmed = false;
        self.report_rid = None;
        self.report_failures = 0;
        self.report_not_before = None;
        self.send_report()
    }

    fn poll_desired(&mut self, _now_ms: u64) -> Option<DesiredUpdate> {
        self.pump();
        let update = self.update.take();
        if update.is_some() {
            // From now on the run loop tracks the version itself.
            self.started_version = None;
        }
        update
    }

    fn describe(&self) -> String {
        format!(
            "iothub {} module {}",
            self.identity.host,
            self.identity.client_id()
        )
    }

    fn mode(&self) -> &'static str {
        "iothub"
    }

    fn configuration_hint(&self) -> String {
        "patch the desired properties of the azureiotsecurity module twin to set shorter frequencies".into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_agent_sees_only_its_configuration_and_the_version() {
        let desired =
            json!({CONFIG_KEY: {"snapshotFrequency": {"value": "PT1H"}}, "otherApp": 1, "$version": 5});
        assert_eq!(
            desired_for_agent(&desired, Some(5)),
            DesiredUpdate::Document {
                doc: json!({CONFIG_KEY: {"snapshotFrequency": {"value": "PT1H"}}, "$version": 5}),
                version: Some(5)
            }
        );
        let DesiredUpdate::Document { doc, .. } = desired_for_agent(&json!({"otherApp": 1}), Some(2)) else {
            panic!()
        };
        assert!(twinguard_core::config::validate_document(&doc)
            .problems
            .is_empty());
    }

    proptest::proptest! {
        /// Topics, connection strings and twin bodies come from the network or a file: the
        /// parsers return `None`/an error on anything, never panic.
        #[test]
        fn parsers_never_panic(tail in ".{0,60}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            for prefix in ["", topics::TWIN_RESPONSE_PREFIX, topics::TWIN_DESIRED_PREFIX, "$iothub/twin/res/200/?"] {
                let topic = format!("{prefix}{tail}");
                let _ = parse_response_topic(&topic);
                let _ = parse_desired_topic(&topic);
            }
            let _ = ConnectionString::parse(&tail);
            let _ = ConnectionString::parse(&String::from_utf8_lossy(&bytes));
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                let _ = desired_for_agent(&v, Some(1));
                let mut state = DesiredState::new();
                let _ = state.apply_patch(&v);
            }
        }
    }

    /// A patch arrives while the GET is outstanding: it is applied after the GET's document
    /// only if newer; a gap asks for the twin again.
    #[test]
    fn patch_sequencing_against_the_twin_state() {
        let mut state = DesiredState::new();
        state.replace(json!({CONFIG_KEY: {"eventPriorityLogin": {"value": "Low"}}, "$version": 4}));
        assert_eq!(
            state.apply_patch(&json!({CONFIG_KEY: {"eventPriorityLogin": null}, "$version": 4})),
            PatchOutcome::Stale {
                received: 4,
                known: 4
            }
        );
        assert_eq!(
            state.apply_patch(&json!({CONFIG_KEY: {"snapshotFrequency": {"value": "PT2H"}}, "$version": 5})),
            PatchOutcome::Applied { version: 5 }
        );
        let DesiredUpdate::Document { doc, version } = desired_for_agent(state.document(), state.version())
        else {
            panic!()
        };
        assert_eq!(version, Some(5));
        assert_eq!(
            doc[CONFIG_KEY],
            json!({"eventPriorityLogin": {"value": "Low"}, "snapshotFrequency": {"value": "PT2H"}})
        );
    }
}
