//! MQTT fleet ingest (`serve --mqtt-fleet mqtt[s]://HOST:PORT`): the hub follows agents that
//! run in MQTT mode on any broker (SPEC §6), so they get the same console as agents on the
//! hub's own IoT Hub endpoint.
//!
//! Topics, with the fleet prefix `P` (default `twinguard`, so that an agent's default prefix
//! `twinguard/{deviceId}` is `P/{deviceId}`):
//!
//! | topic | the hub |
//! |---|---|
//! | `P/+/messages` | subscribes (QoS 1): each publish is stored as a security message of the device and goes through the console's typed ingest and rules |
//! | `P/+/twin/reported` | subscribes: the retained reported section becomes the device twin's reported section |
//! | `P/+/status` | subscribes: retained `online` / `offline` (the agent's clean stop, or its last will) is the device's connection state |
//! | `P/{deviceId}/twin/desired` | publishes (QoS 1, retained) the twin's desired section whenever it changes (console, CLI, service API), and again on every connection to the broker (a broker restarted without persistence lost it); an empty desired section is an empty payload (= defaults) |
//!
//! Each device is a device identity (no module) in the registry, created when first seen.
//! One thread keeps one connection: a persistent session (`clean_session = 0`, a fixed client
//! id), so QoS 1 messages published while the hub was away are delivered when it comes back;
//! each PUBACK leaves only after the message is committed (at least once). Lost connections are
//! retried with exponential backoff and jitter (0.5 s doubling to 30 s). Nothing is queued in
//! the hub: a message is ingested before the next one is read, so a slow database slows the
//! broker's delivery, not the hub's memory; desired changes wait as one entry per device.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustls::ClientConfig;
use serde_json::{Map, Value};
use tracing::{debug, info, warn};
use twinguard_core::iothub::identity::IdentityId;
use twinguard_mqtt::url::BrokerUrl;
use twinguard_mqtt::{ConnectReturnCode, Packet, PacketBuffer, Publish, QoS, Subscribe, SubscribeReturnCode};
use twinguard_os::safefile::{read_regular, read_secret, MAX_SECRET_BYTES};
use twinguard_os::tls::{client_config, TlsOptions};

use crate::hub::{now_ms, Hub};
use crate::link::{Link, Received};
use crate::store::{NewMessage, RegistryRecord, StoreError};

/// The default fleet prefix: agents' default topic prefix is `twinguard/{deviceId}`.
pub const DEFAULT_PREFIX: &str = "twinguard";
/// The default MQTT client id of the hub's fleet connection.
pub const DEFAULT_CLIENT_ID: &str = "twinguard-hub";
/// Keep-alive of the fleet connection.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a PINGREQ may wait for its PINGRESP.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of one connection attempt (TCP, TLS, CONNACK, SUBACK).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the loop waits for the socket before looking at desired changes and timers.
const POLL: Duration = Duration::from_millis(100);
/// Largest packet taken from the broker: a message (256 KB), a reported section, headers.
const MAX_INCOMING_PACKET: usize = 1024 * 1024 + 64 * 1024;
/// Desired publishes waiting for their PUBACK; more means the broker stopped answering.
const MAX_IN_FLIGHT: usize = 256;
/// A connection up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// Settings files are small.
const MAX_SETTINGS_BYTES: usize = 64 * 1024;
/// Devices followed at most: anyone who may publish under the prefix names devices, and each
/// is an identity and an entry in memory. Publishes of further devices are dropped (counted in
/// the log).
pub const MAX_DEVICES: usize = 10_000;

/// The fleet connection as given: flags, or keys of a settings file (`serve --settings FILE`)
/// named as the flags (`mqtt-fleet = "mqtts://broker:8883"`, `mqtt-ca = "ca.pem"`, ...), the
/// same keys as the agent's MQTT mode. Flags win.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSettings {
    /// The broker URL.
    pub mqtt_fleet: Option<String>,
    /// The fleet's topic prefix (devices are `PREFIX/{deviceId}`).
    pub mqtt_prefix: Option<String>,
    /// A private CA (PEM) trusted for the broker besides the system roots.
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub mqtt_client_cert: Option<PathBuf>,
    /// Its private key (PEM; a secret: mode 0600).
    pub mqtt_client_key: Option<PathBuf>,
    /// User name.
    pub mqtt_username: Option<String>,
    /// File holding the password (a secret: mode 0600; one trailing newline ignored).
    pub mqtt_password_file: Option<PathBuf>,
    /// MQTT client id (default `twinguard-hub`).
    pub mqtt_client_id: Option<String>,
    /// Send the password over plain `mqtt://` (refused otherwise).
    pub allow_insecure_password: Option<bool>,
}

impl FleetSettings {
    /// Reads a settings file; relative paths are relative to its directory. Keys that are not
    /// the fleet's are refused, one line naming the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<FleetSettings> {
        let bytes = read_regular(path, MAX_SETTINGS_BYTES).with_context(|| format!("{}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut out = FleetSettings::default();
        for (key, value) in &table {
            let text = || -> anyhow::Result<String> {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow::anyhow!("{}: {key}: expected a string", path.display()))
            };
            let file = || -> anyhow::Result<PathBuf> {
                let p = PathBuf::from(text()?);
                Ok(if p.is_relative() { base.join(p) } else { p })
            };
            match key.as_str() {
                "mqtt-fleet" => out.mqtt_fleet = Some(text()?),
                "mqtt-prefix" => out.mqtt_prefix = Some(text()?),
                "mqtt-ca" => out.mqtt_ca = Some(file()?),
                "mqtt-client-cert" => out.mqtt_client_cert = Some(file()?),
                "mqtt-client-key" => out.mqtt_client_key = Some(file()?),
                "mqtt-username" => out.mqtt_username = Some(text()?),
                "mqtt-password-file" => out.mqtt_password_file = Some(file()?),
                "mqtt-client-id" => out.mqtt_client_id = Some(text()?),
                "allow-insecure-password" => {
                    out.allow_insecure_password = Some(value.as_bool().ok_or_else(|| {
                        anyhow::anyhow!("{}: {key}: expected true or false", path.display())
                    })?);
                }
                other => bail!("{}: unknown key {other:?}", path.display()),
            }
        }
        Ok(out)
    }

    /// `self` (the flags) over `file`.
    pub fn over(self, file: FleetSettings) -> FleetSettings {
        FleetSettings {
            mqtt_fleet: self.mqtt_fleet.or(file.mqtt_fleet),
            mqtt_prefix: self.mqtt_prefix.or(file.mqtt_prefix),
            mqtt_ca: self.mqtt_ca.or(file.mqtt_ca),
            mqtt_client_cert: self.mqtt_client_cert.or(file.mqtt_client_cert),
            mqtt_client_key: self.mqtt_client_key.or(file.mqtt_client_key),
            mqtt_username: self.mqtt_username.or(file.mqtt_username),
            mqtt_password_file: self.mqtt_password_file.or(file.mqtt_password_file),
            mqtt_client_id: self.mqtt_client_id.or(file.mqtt_client_id),
            allow_insecure_password: self.allow_insecure_password.or(file.allow_insecure_password),
        }
    }

    /// Checks the settings: `None` when no fleet broker is set (and no other fleet setting
    /// either), else the options to connect with. One line per problem, naming the flag.
    pub fn options(&self) -> anyhow::Result<Option<FleetOptions>> {
        let Some(url) = &self.mqtt_fleet else {
            let given = [
                ("mqtt-prefix", self.mqtt_prefix.is_some()),
                ("mqtt-ca", self.mqtt_ca.is_some()),
                ("mqtt-client-cert", self.mqtt_client_cert.is_some()),
                ("mqtt-client-key", self.mqtt_client_key.is_some()),
                ("mqtt-username", self.mqtt_username.is_some()),
                ("mqtt-password-file", self.mqtt_password_file.is_some()),
                ("mqtt-client-id", self.mqtt_client_id.is_some()),
            ];
            if let Some((name, _)) = given.iter().find(|(_, set)| *set) {
                bail!("--{name} is a fleet setting: it needs --mqtt-fleet URL");
            }
            return Ok(None);
        };
        let broker = BrokerUrl::parse(url).map_err(|e| anyhow::anyhow!("--mqtt-fleet {e}"))?;
        let client_auth = match (&self.mqtt_client_cert, &self.mqtt_client_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => bail!("--mqtt-client-cert and --mqtt-client-key go together"),
        };
        if !broker.tls && (self.mqtt_ca.is_some() || client_auth.is_some()) {
            bail!("--mqtt-ca and client certificates need an mqtts:// URL");
        }
        if self.mqtt_password_file.is_some() && self.mqtt_username.is_none() {
            bail!(
                "--mqtt-password-file needs --mqtt-username (MQTT 3.1.1 has no password without a user name)"
            );
        }
        if !broker.tls && self.mqtt_password_file.is_some() && self.allow_insecure_password != Some(true) {
            bail!("--mqtt-fleet {url}: a password over plain mqtt:// travels in clear text; use mqtts:// (TLS), or accept the risk with --allow-insecure-password");
        }
        let prefix = self
            .mqtt_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        let prefix = prefix.trim_end_matches('/').to_owned();
        if let Err(e) = twinguard_mqtt::topic::validate_name(&prefix) {
            bail!("--mqtt-prefix {prefix:?}: {e}");
        }
        let client_id = self
            .mqtt_client_id
            .clone()
            .unwrap_or_else(|| DEFAULT_CLIENT_ID.to_owned());
        if client_id.is_empty() || client_id.len() > 128 || client_id.chars().any(char::is_control) {
            bail!("--mqtt-client-id {client_id:?}: 1 to 128 characters, no control characters");
        }
        Ok(Some(FleetOptions {
            broker,
            prefix,
            tls: TlsOptions {
                ca: self.mqtt_ca.clone(),
                client_auth,
            },
            username: self.mqtt_username.clone(),
            password_file: self.mqtt_password_file.clone(),
            client_id,
        }))
    }
}

/// The checked fleet connection settings.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// The broker.
    pub broker: BrokerUrl,
    /// The topic prefix before `{deviceId}`.
    pub prefix: String,
    /// CA and client certificate (mqtts:// only).
    pub tls: TlsOptions,
    /// User name.
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// MQTT client id (the persistent session's name).
    pub client_id: String,
}

/// What a topic under the prefix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `P/{d}/messages`.
    Messages,
    /// `P/{d}/twin/reported`.
    Reported,
    /// `P/{d}/status`.
    Status,
}

/// The device and kind of a topic under `prefix`, if it is one the fleet uses. Pure.
pub fn route<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, Kind)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (device, kind) = rest.split_once('/')?;
    let kind = match kind {
        "messages" => Kind::Messages,
        "twin/reported" => Kind::Reported,
        "status" => Kind::Status,
        _ => return None,
    };
    (!device.is_empty()).then_some((device, kind))
}

/// The reported patch that turns `current` into `new` (whole-section replacement: members
/// gone are deleted with null), or `None` when nothing changes. `$` members are the twin's.
pub fn replacement_patch(current: &Map<String, Value>, new: &Map<String, Value>) -> Option<Value> {
    let mut patch = Map::new();
    for (k, v) in new {
        if !k.starts_with('$') && current.get(k) != Some(v) {
            patch.insert(k.clone(), v.clone());
        }
    }
    for k in current.keys() {
        if !k.starts_with('$') && !new.contains_key(k) {
            patch.insert(k.clone(), Value::Null);
        }
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// The desired payload published for a twin's desired section (without `$` members); an
/// empty section is an empty payload (an agent's defaults). Pure.
pub fn desired_payload(desired: &Map<String, Value>) -> Vec<u8> {
    let section: Map<String, Value> = desired
        .iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if section.is_empty() {
        Vec::new()
    } else {
        Value::Object(section).to_string().into_bytes()
    }
}

/// Everything a connection needs, prepared once at start (secrets read, TLS built), so a
/// bad file fails `serve` with one line instead of every reconnection.
struct Connector {
    options: FleetOptions,
    tls: Option<Arc<ClientConfig>>,
    password: Option<Vec<u8>>,
}

/// Starts the fleet thread.
pub fn start(hub: Arc<Hub>, options: FleetOptions) -> anyhow::Result<JoinHandle<()>> {
    let tls = if options.broker.tls {
        Some(
            client_config(&options.tls)
                .map_err(|e| anyhow::anyhow!("--mqtt-fleet {}: {e}", options.broker))?,
        )
    } else {
        None
    };
    let password = match &options.password_file {
        None => None,
        Some(path) => {
            let mut bytes =
                read_secret(path, MAX_SECRET_BYTES).with_context(|| "--mqtt-password-file".to_string())?;
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            if !options.broker.tls {
                warn!(broker = %options.broker, "the fleet broker password is sent in clear text over plain mqtt:// (allowed by --allow-insecure-password): use mqtts://");
            }
            Some(bytes)
        }
    };
    let connector = Connector {
        options,
        tls,
        password,
    };
    std::thread::Builder::new()
        .name("mqtt-fleet".into())
        .spawn(move || run(&hub, &connector))
        .context("starting the MQTT fleet thread")
}

/// A delay in `[base / 2, base]` for attempt `attempt`: 0.5 s doubling to 30 s.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1u32 << attempt.min(10))
        .min(Duration::from_secs(30));
    let half = u64::try_from(base.as_millis() / 2).unwrap_or(1).max(1);
    let mut random = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    Duration::from_millis(half + u64::from_le_bytes(random) % half)
}

fn run(hub: &Hub, c: &Connector) {
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let mut in_flight = HashMap::new();
        let end = session(hub, c, &mut in_flight);
        // Desired publishes without PUBACK are published again on the next connection.
        for id in in_flight.into_values() {
            hub.mark_fleet_desired(&id);
        }
        if let Err(e) = end {
            warn!(broker = %c.options.broker, "MQTT fleet: {e}; reconnecting");
        }
        if started.elapsed() >= STABLE {
            attempt = 0;
        }
        std::thread::sleep(backoff(attempt));
        attempt = attempt.saturating_add(1);
    }
}

/// One connection.
struct Session {
    link: Link,
    buffer: PacketBuffer,
    scratch: Vec<u8>,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    next_id: u16,
}

impl Session {
    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let bytes = packet
            .to_bytes()
            .map_err(|e| format!("cannot encode {}: {e}", packet.name()))?;
        self.link.send(&bytes).map_err(|e| format!("sending: {e}"))?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Reads what the socket has within one poll interval; `Ok(false)` when nothing came.
    fn fill(&mut self) -> Result<bool, String> {
        match self
            .link
            .receive(&mut self.scratch)
            .map_err(|e| format!("receiving: {e}"))?
        {
            Received::Data(n) => {
                self.buffer.push(&self.scratch[..n]);
                Ok(true)
            }
            Received::Idle => Ok(false),
            Received::Closed => Err("the broker closed the connection".into()),
        }
    }

    fn next_packet(&mut self) -> Result<Option<Packet>, String> {
        self.buffer
            .next_packet()
            .map_err(|e| format!("protocol error: {e}"))
    }

    /// The next packet, waiting until `deadline`.
    fn wait_packet(&mut self, deadline: Instant) -> Result<Packet, String> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err("timed out waiting for the broker".into());
            }
            self.fill()?;
        }
    }

    fn packet_id(&mut self, in_flight: &HashMap<u16, IdentityId>) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !in_flight.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }
}

fn connect_socket(broker: &BrokerUrl) -> Result<TcpStream, String> {
    let addrs = (broker.host.as_str(), broker.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", broker.host))?;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

fn session(hub: &Hub, c: &Connector, in_flight: &mut HashMap<u16, IdentityId>) -> Result<(), String> {
    let o = &c.options;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let socket = connect_socket(&o.broker)?;
    let _ = socket.set_nodelay(true);
    socket
        .set_read_timeout(Some(POLL))
        .and_then(|()| socket.set_write_timeout(Some(CONNECT_TIMEOUT)))
        .map_err(|e| format!("socket: {e}"))?;
    let link = match &c.tls {
        Some(config) => {
            Link::tls_client(socket, Arc::clone(config), &o.broker.host).map_err(|e| format!("TLS: {e}"))?
        }
        None => Link::Plain(socket),
    };
    let mut s = Session {
        link,
        buffer: PacketBuffer::new(MAX_INCOMING_PACKET),
        scratch: vec![0; 64 * 1024],
        last_sent: Instant::now(),
        ping_sent: None,
        next_id: 0,
    };
    let result = serve(hub, c, &mut s, deadline, in_flight);
    s.link.close();
    result
}

fn serve(
    hub: &Hub,
    c: &Connector,
    s: &mut Session,
    deadline: Instant,
    in_flight: &mut HashMap<u16, IdentityId>,
) -> Result<(), String> {
    let o = &c.options;
    s.send(&Packet::Connect(twinguard_mqtt::Connect {
        client_id: o.client_id.clone(),
        // A persistent session: QoS 1 messages published while the hub was away wait for it.
        clean_session: false,
        keep_alive_secs: u16::try_from(KEEP_ALIVE.as_secs()).unwrap_or(30),
        will: None,
        username: o.username.clone(),
        password: c.password.clone(),
    }))?;
    match s.wait_packet(deadline)? {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => {}
        Packet::ConnAck(ack) => {
            return Err(format!(
                "the broker refused the connection: {}",
                ack.code.describe()
            ))
        }
        other => return Err(format!("expected CONNACK, got {}", other.name())),
    }
    let filters: Vec<(String, QoS)> = ["messages", "twin/reported", "status"]
        .iter()
        .map(|kind| (format!("{}/+/{kind}", o.prefix), QoS::AtLeastOnce))
        .collect();
    let sub_id = s.packet_id(in_flight);
    s.send(&Packet::Subscribe(Subscribe {
        packet_id: sub_id,
        filters: filters.clone(),
    }))?;
    loop {
        match s.wait_packet(deadline)? {
            Packet::SubAck(ack) if ack.packet_id == sub_id => {
                if let Some((i, _)) = ack
                    .return_codes
                    .iter()
                    .enumerate()
                    .find(|(_, c)| **c == SubscribeReturnCode::Failure)
                {
                    let filter = filters.get(i).map_or("?", |f| f.0.as_str());
                    return Err(format!("the broker refused the subscription to {filter}"));
                }
                break;
            }
            other => handle(hub, c, s, other, in_flight)?,
        }
    }
    info!(broker = %o.broker, prefix = %o.prefix, "MQTT fleet: connected, following {}/+/{{messages,twin/reported,status}}", o.prefix);
    // The desired sections again, retained, on every connection: a broker that lost its
    // retained messages (restarted without persistence) gets them back, as agents re-publish
    // their status and reported sections.
    for (id, _) in hub.fleet_devices() {
        let twin = hub
            .store()
            .twin(&id)
            .map_err(|e| format!("reading the twin of {id}: {e}"))?;
        if twin.is_some_and(|t| !desired_payload(&t.desired).is_empty()) {
            hub.mark_fleet_desired(&id);
        }
    }
    loop {
        for id in hub.take_fleet_desired() {
            if in_flight.len() >= MAX_IN_FLIGHT {
                hub.mark_fleet_desired(&id);
                return Err(format!(
                    "{MAX_IN_FLIGHT} desired publishes without PUBACK: the broker stopped answering"
                ));
            }
            publish_desired(hub, c, s, &id, in_flight)?;
        }
        let now = Instant::now();
        match s.ping_sent {
            Some(sent) if now.duration_since(sent) >= PING_TIMEOUT => {
                return Err(format!("no PINGRESP within {PING_TIMEOUT:?}"));
            }
            None if now.duration_since(s.last_sent) >= KEEP_ALIVE => {
                s.send(&Packet::PingReq)?;
                s.ping_sent = Some(now);
            }
            _ => {}
        }
        s.fill()?;
        while let Some(packet) = s.next_packet()? {
            handle(hub, c, s, packet, in_flight)?;
        }
    }
}

fn publish_desired(
    hub: &Hub,
    c: &Connector,
    s: &mut Session,
    id: &IdentityId,
    in_flight: &mut HashMap<u16, IdentityId>,
) -> Result<(), String> {
    let twin = hub
        .store()
        .twin(id)
        .map_err(|e| format!("reading the twin of {id}: {e}"))?;
    let Some(twin) = twin else {
        return Ok(());
    };
    let packet_id = s.packet_id(in_flight);
    let topic = format!("{}/{}/twin/desired", c.options.prefix, id.device());
    s.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: topic.clone(),
        packet_id: Some(packet_id),
        payload: desired_payload(&twin.desired),
    }))?;
    in_flight.insert(packet_id, id.clone());
    info!(identity = %id, %topic, version = twin.desired_version, "MQTT fleet: desired section published (retained)");
    Ok(())
}

fn handle(
    hub: &Hub,
    c: &Connector,
    s: &mut Session,
    packet: Packet,
    in_flight: &mut HashMap<u16, IdentityId>,
) -> Result<(), String> {
    match packet {
        Packet::Publish(p) => {
            let ack = match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(id)),
                (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(id)),
                _ => None,
            };
            // Acknowledged only once stored: a failure ends the connection and the broker
            // delivers the message again.
            on_publish(hub, &c.options.prefix, p)?;
            if let Some(ack) = ack {
                s.send(&ack)?;
            }
        }
        Packet::PubAck(id) => {
            in_flight.remove(&id);
        }
        Packet::PubRel(id) => s.send(&Packet::PubComp(id))?,
        Packet::PingResp => s.ping_sent = None,
        Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
        other => return Err(format!("unexpected {} from the broker", other.name())),
    }
    Ok(())
}

/// Takes one publish from the broker. `Err` only for storage failures (the message must come
/// again); what a device sends wrong is logged and dropped.
pub fn on_publish(hub: &Hub, prefix: &str, p: Publish) -> Result<(), String> {
    let Some((device, kind)) = route(prefix, &p.topic) else {
        debug!(topic = %p.topic, "MQTT fleet: ignoring a topic outside the fleet's");
        return Ok(());
    };
    let id = match IdentityId::new(device, None) {
        Ok(id) => id,
        Err(e) => {
            warn!(topic = %p.topic, "MQTT fleet: not a device id: {e}");
            return Ok(());
        }
    };
    let now = now_ms();
    if hub.fleet_device(&id).is_none() {
        if hub.fleet_devices_len() >= MAX_DEVICES {
            static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                warn!(identity = %id, refused = n + 1, "MQTT fleet: already {MAX_DEVICES} devices; publishes of new ones are dropped");
            }
            return Ok(());
        }
        ensure_identity(hub, &id).map_err(|e| format!("registering {id}: {e}"))?;
    }
    match kind {
        Kind::Status => {
            let status = match p.payload.as_slice() {
                b"online" => Some(true),
                b"offline" => Some(false),
                b"" => None,
                _ => {
                    warn!(identity = %id, "MQTT fleet: status {:?} is neither online nor offline", String::from_utf8_lossy(&p.payload).chars().take(40).collect::<String>());
                    return Ok(());
                }
            };
            if hub.fleet_seen(&id, Some(status), now) {
                info!(identity = %id, "MQTT fleet: device {}", match status {
                    Some(true) => "online",
                    Some(false) => "offline",
                    None => "status cleared",
                });
            }
        }
        Kind::Reported => {
            hub.fleet_seen(&id, None, now);
            let new = match serde_json::from_slice::<Value>(&p.payload) {
                Ok(Value::Object(m)) => m,
                Ok(_) if p.payload.is_empty() => Map::new(),
                Ok(_) | Err(_) => {
                    warn!(identity = %id, "MQTT fleet: the reported section is not a JSON object: ignored");
                    return Ok(());
                }
            };
            let current = hub
                .store()
                .twin(&id)
                .map_err(|e| format!("reading the twin of {id}: {e}"))?
                .map(|t| t.reported)
                .unwrap_or_default();
            if let Some(patch) = replacement_patch(&current, &new) {
                match hub.patch_reported(&id, &patch) {
                    Ok(_) => debug!(identity = %id, "MQTT fleet: reported section stored"),
                    Err(StoreError::Twin(e)) => {
                        warn!(identity = %id, "MQTT fleet: reported section refused: {e}")
                    }
                    Err(e) => return Err(format!("storing the reported section of {id}: {e}")),
                }
            }
        }
        Kind::Messages => {
            // A device that publishes is connected, whatever its status said.
            hub.fleet_seen(&id, None, now);
            let (schema_valid, schema_error) = match crate::security::check_security_message(&p.payload) {
                Ok(_) => (true, None),
                Err(e) => (false, Some(e)),
            };
            if let Some(e) = &schema_error {
                warn!(identity = %id, "MQTT fleet: a message that is not a valid security message is stored unparsed: {e}");
            }
            hub.record_message(&NewMessage {
                id: id.clone(),
                received_ms: now,
                topic: p.topic,
                properties: Vec::new(),
                body: p.payload,
                is_security: true,
                schema_valid,
                schema_error,
            })
            .map_err(|e| format!("storing a message of {id}: {e}"))?;
        }
    }
    Ok(())
}

/// Registers a device first seen on the broker (a device identity with new keys, as
/// `identity add` would; automatic configurations targeting it apply at once).
fn ensure_identity(hub: &Hub, id: &IdentityId) -> Result<(), String> {
    let exists = hub
        .store()
        .registry_record(id)
        .map_err(|e| e.to_string())?
        .is_some();
    if !exists {
        let key = || crate::keys::generate_key().map_err(|_| "no random source for keys".to_owned());
        let record = RegistryRecord {
            id: id.clone(),
            primary_key: key()?,
            secondary_key: key()?,
            status: "enabled".into(),
            etag_n: 0,
            created_ms: 0,
        };
        hub.store()
            .put_identity(&record, None, now_ms())
            .map_err(|e| e.to_string())?;
        info!(identity = %id, "MQTT fleet: new device registered");
    }
    hub.fleet_seen(id, None, now_ms());
    if exists {
        // Seen for the first time since the hub started: the twin's desired section, when it
        // has one, is what the device must have (set while the hub or the device was away).
        let desired = hub.store().twin(id).map_err(|e| e.to_string())?;
        if desired.is_some_and(|t| !desired_payload(&t.desired).is_empty()) {
            hub.mark_fleet_desired(id);
        }
    } else {
        crate::rollout::reconcile_one(hub, id).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_route_to_devices() {
        assert_eq!(
            route("twinguard", "twinguard/d1/messages"),
            Some(("d1", Kind::Messages))
        );
        assert_eq!(
            route("twinguard", "twinguard/d1/twin/reported"),
            Some(("d1", Kind::Reported))
        );
        assert_eq!(route("a/b", "a/b/d-2/status"), Some(("d-2", Kind::Status)));
        for other in [
            "twinguard/d1/twin/desired",
            "twinguard//messages",
            "twinguardx/d1/messages",
            "other/d1/messages",
            "twinguard/d1/x/messages",
        ] {
            assert_eq!(route("twinguard", other), None, "{other}");
        }
    }

    #[test]
    fn reported_sections_are_replaced_and_desired_published_without_metadata() {
        let current = json!({"a": 1, "b": 2, "$version": 4});
        let new = json!({"a": 1, "c": 3});
        let (Value::Object(current), Value::Object(new)) = (current, new) else {
            unreachable!()
        };
        assert_eq!(
            replacement_patch(&current, &new),
            Some(json!({"b": null, "c": 3}))
        );
        assert_eq!(replacement_patch(&new, &new), None);
        let Value::Object(desired) = json!({"$version": 3, "x": {"value": 1}}) else {
            unreachable!()
        };
        assert_eq!(desired_payload(&desired), br#"{"x":{"value":1}}"#.to_vec());
        let Value::Object(empty) = json!({"$version": 5}) else {
            unreachable!()
        };
        assert!(desired_payload(&empty).is_empty());
    }

    #[test]
    fn settings_are_checked() {
        let ok = FleetSettings {
            mqtt_fleet: Some("mqtts://broker:8884".into()),
            ..FleetSettings::default()
        };
        let o = ok.options().expect("valid").expect("set");
        assert_eq!(
            (o.prefix.as_str(), o.client_id.as_str()),
            ("twinguard", "twinguard-hub")
        );
        assert!(FleetSettings::default().options().expect("valid").is_none());
        let bad = [
            FleetSettings {
                mqtt_ca: Some("ca.pem".into()),
                ..FleetSettings::default()
            },
            FleetSettings {
                mqtt_fleet: Some("tcp://x".into()),
                ..FleetSettings::default()
            },
            FleetSettings {
                mqtt_fleet: Some("mqtt://x".into()),
                mqtt_username: Some("u".into()),
                mqtt_password_file: Some("p".into()),
                ..FleetSettings::default()
            },
            FleetSettings {
                mqtt_fleet: Some("mqtts://x".into()),
                mqtt_prefix: Some("a/+".into()),
                ..FleetSettings::default()
            },
        ];
        for b in bad {
            let e = b.options().expect_err("refused").to_string();
            assert!(!e.contains('\n') && e.starts_with("--"), "{e}");
        }
    }
}
