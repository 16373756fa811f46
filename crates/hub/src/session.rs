//! One client connection, on its own thread: the TLS handshake and CONNECT within
//! [`CONNECT_TIMEOUT`], IoT Hub's checks of the identity and its SAS token, then the session
//! until the client leaves or breaks a rule. The thread wakes every [`POLL`] to deliver desired
//! notifications and to enforce its two deadlines: the keep-alive (1.5 x the client's
//! interval without any packet) and the SAS token's expiry (the connection is closed then, as
//! IoT Hub does, and the client reconnects with a fresh token).
//!
//! IoT Hub's documented reactions, all implemented here: bad credentials -> CONNACK 5 (not
//! authorized); a QoS 2 PUBLISH -> close; a message over 256 KB -> close; a publish to a topic
//! the identity may not use -> close; a sixth subscription -> SUBACK failure for it; a second
//! connection of the identity -> the first is closed (in [`Hub::register`]).

use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tracing::{debug, info, warn};
use twinguard_mqtt::{
    topic, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PacketBuffer, ProtocolError, Publish, QoS,
    SubAck, SubscribeReturnCode,
};

use crate::admission::{PendingTicket, SessionSlot};
use crate::connect::{
    authenticate_identity, claimed_identity, first_connect, redact_signature, FirstPacketError,
};
use crate::hub::{now_ms, Hub, Live, Outbound, OUTBOX_CAPACITY};
use crate::link::{Link, Received};
use crate::security::{check_security_message, is_security_message};
use crate::store::NewMessage;
use twinguard_core::iothub::identity::IdentityId;
use twinguard_core::iothub::topics::{self, Inbound};

/// How often a connection thread wakes up when the client is silent.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// Time for the TLS handshake and the CONNECT packet, from the TCP accept. Short, because a
/// connection holds a slot of the pending pool until then.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read at once before the login (small, as a flood may hold many such connections).
const CONNECT_CHUNK: usize = 4 * 1024;
/// Time a blocked write may take before the client is considered gone.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// IoT Hub's largest device-to-cloud message (payload bytes), the agent's bound too.
pub use twinguard_core::iothub::MAX_MESSAGE_BYTES;
/// The largest packet read: a maximal message plus the longest topic and the headers. Larger
/// packets close the connection as soon as their header is read.
pub(crate) const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 2 + 65_535 + 2 + 5;
/// IoT Hub's subscription limit per connection.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 5;
/// Token lifetimes beyond this (ten years) are treated as this.
const MAX_TOKEN_SECS: u64 = 10 * 365 * 24 * 3600;
/// IoT Hub's largest keep-alive; larger values (and 0, "no keep-alive") are treated as this.
pub(crate) const MAX_KEEP_ALIVE_SECS: u64 = 1767;

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// DISCONNECT: clean, the last will is discarded.
    Disconnect,
    /// The peer closed the socket (or another connection of the identity closed it).
    Closed,
    /// Nothing received for 1.5 x keep-alive.
    KeepAliveTimeout,
    /// The SAS token expired.
    TokenExpired,
    /// The client broke a rule; the reason is logged.
    Violation(String),
    /// A socket or storage error.
    Failure(String),
}

/// Serves one accepted connection to its end. `ticket` is its place in the pending pool, left
/// for a session slot once the CONNECT is authenticated.
pub fn serve(hub: &Hub, mut link: Link, peer: SocketAddr, ticket: PendingTicket) {
    let conn = hub.next_connection();
    let _ = link.socket().set_read_timeout(Some(POLL));
    let _ = link.socket().set_write_timeout(Some(WRITE_TIMEOUT));
    let (connect, rest) = match read_connect(&mut link) {
        Ok(c) => c,
        Err(reason) => {
            debug!(conn, %peer, "connection closed before CONNECT: {reason}");
            link.close();
            return;
        }
    };
    let mut buffer = PacketBuffer::new(MAX_PACKET_BYTES);
    buffer.push(&rest);
    let Some(mut session) = accept(hub, &mut link, conn, peer, connect, buffer, ticket) else {
        link.close();
        return;
    };
    let end = session.run(&mut link);
    link.close();
    session.finish(end);
}

/// Reads until the first packet, which must be CONNECT of at most [`MAX_CONNECT_BYTES`],
/// within [`CONNECT_TIMEOUT`]; returns it and the bytes received after it.
fn read_connect(link: &mut Link) -> Result<(Connect, Vec<u8>), String> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut chunk = [0u8; CONNECT_CHUNK];
    let mut bytes = Vec::new();
    loop {
        match first_connect(&bytes) {
            Ok(Some((c, consumed))) => return Ok((c, bytes.split_off(consumed))),
            Ok(None) => {}
            Err(FirstPacketError::Protocol(e @ ProtocolError::UnsupportedProtocol { .. })) => {
                // MQTT 3.1.1 §3.1.2.2: answer 0x01 before closing.
                send_packet(
                    link,
                    &Packet::ConnAck(ConnAck {
                        session_present: false,
                        code: ConnectReturnCode::UnacceptableProtocolVersion,
                    }),
                )
                .ok();
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() >= deadline {
            return Err("no CONNECT within the connect timeout".into());
        }
        match link.receive(&mut chunk).map_err(|e| e.to_string())? {
            // `decode` refuses a packet announcing more than the maximum as soon as its
            // header is in, so this never holds more than a maximum CONNECT and one chunk.
            Received::Data(n) => bytes.extend_from_slice(&chunk[..n]),
            Received::Idle => {}
            Received::Closed => return Err("closed by the peer".into()),
        }
    }
}

fn send_packet(link: &mut Link, packet: &Packet) -> Result<(), String> {
    let bytes = packet
        .to_bytes()
        .map_err(|e| format!("encoding {}: {e}", packet.name()))?;
    link.send(&bytes)
        .map_err(|e| format!("sending {}: {e}", packet.name()))
}

/// The time left until `expiry` (Unix seconds), to the millisecond, so the connection closes
/// at the expiry itself; capped, so a token expiring in the year 292 billion cannot overflow
/// an `Instant`.
fn token_lifetime(expiry: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs(expiry.min(u64::MAX / 2))
        .saturating_sub(now)
        .min(Duration::from_secs(MAX_TOKEN_SECS))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks the CONNECT; on success registers the connection and answers CONNACK 0.
fn accept<'h>(
    hub: &'h Hub,
    link: &mut Link,
    conn: u64,
    peer: SocketAddr,
    connect: Connect,
    buffer: PacketBuffer,
    ticket: PendingTicket,
) -> Option<Session<'h>> {
    let now = unix_now();
    let checked = claimed_identity(&connect, hub.hostname()).and_then(|(id, token)| {
        let record = match hub.store().registry_record(&id) {
            Ok(record) => record,
            Err(e) => {
                warn!(conn, "reading identity {id}: {e}");
                None
            }
        };
        let identity = record.as_ref().map(|r| {
            (
                r.status == "enabled",
                r.primary_key.as_str(),
                r.secondary_key.as_str(),
            )
        });
        authenticate_identity(&id, &token, hub.hostname(), identity, now).map(|()| (id, token))
    });
    let (id, token) = match checked {
        Ok(ok) => ok,
        Err(refusal) => {
            if ticket.log_connect_refusal() {
                info!(conn, %peer, client_id = %redact_signature(&connect.client_id), code = ?refusal.code, "CONNECT refused: {}", redact_signature(&refusal.reason));
            }
            let _ = send_packet(
                link,
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: refusal.code,
                }),
            );
            return None;
        }
    };
    let Some(slot) = ticket.promote() else {
        let _ = send_packet(
            link,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::ServerUnavailable,
            }),
        );
        return None;
    };
    let socket = match link.socket().try_clone() {
        Ok(s) => s,
        Err(e) => {
            warn!(conn, "cannot keep a handle on the socket: {e}");
            return None;
        }
    };
    let (outbox, inbox) = sync_channel(OUTBOX_CAPACITY);
    hub.register(
        &id,
        Live {
            conn,
            outbox,
            socket,
            peer,
            since_ms: now_ms(),
        },
    );
    if let Err(e) = send_packet(
        link,
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }),
    ) {
        hub.unregister(&id, conn);
        debug!(conn, "{e}");
        return None;
    }
    let keep_alive_secs = match u64::from(connect.keep_alive_secs) {
        0 => MAX_KEEP_ALIVE_SECS,
        k => k.min(MAX_KEEP_ALIVE_SECS),
    };
    let started = Instant::now();
    info!(conn, %peer, identity = %id, keep_alive_secs, token_expiry = token.expiry, "connected");
    Some(Session {
        hub,
        id,
        conn,
        buffer,
        inbox,
        subscriptions: Vec::new(),
        next_packet_id: 0,
        keep_alive: Duration::from_millis(keep_alive_secs * 1500),
        last_received: started,
        token_deadline: started + token_lifetime(token.expiry),
        will: connect.will,
        _slot: slot,
    })
}

/// A connected, authenticated client.
struct Session<'h> {
    hub: &'h Hub,
    id: IdentityId,
    conn: u64,
    buffer: PacketBuffer,
    inbox: Receiver<Outbound>,
    /// Accepted topic filters and their granted QoS.
    subscriptions: Vec<(String, QoS)>,
    next_packet_id: u16,
    /// 1.5 x the keep-alive interval.
    keep_alive: Duration,
    last_received: Instant,
    token_deadline: Instant,
    will: Option<LastWill>,
    /// Its place in the session pool, freed when the session ends.
    _slot: SessionSlot,
}

impl Session<'_> {
    fn run(&mut self, link: &mut Link) -> End {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let now = Instant::now();
            if now >= self.token_deadline {
                return End::TokenExpired;
            }
            if now.duration_since(self.last_received) >= self.keep_alive {
                return End::KeepAliveTimeout;
            }
            loop {
                match self.inbox.try_recv() {
                    Ok(Outbound::DesiredPatch(patch)) => {
                        let version = patch.get("$version").and_then(Value::as_i64).unwrap_or(0);
                        let body = patch.to_string().into_bytes();
                        if let Err(e) = self.deliver(link, topics::desired_notification(version), body) {
                            return e;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    // The hub dropped this connection (a newer one of the identity).
                    Err(TryRecvError::Disconnected) => return End::Closed,
                }
            }
            match link.receive(&mut chunk) {
                Ok(Received::Data(n)) => {
                    self.last_received = Instant::now();
                    self.buffer.push(&chunk[..n]);
                    loop {
                        match self.buffer.next_packet() {
                            Ok(Some(packet)) => {
                                if let Err(end) = self.handle(link, packet) {
                                    return end;
                                }
                            }
                            Ok(None) => break,
                            Err(e @ ProtocolError::TooLarge { .. }) => {
                                return End::Violation(format!("{e} (IoT Hub's message limit is 256 KB)"))
                            }
                            Err(e) => return End::Violation(e.to_string()),
                        }
                    }
                }
                Ok(Received::Idle) => {}
                Ok(Received::Closed) => return End::Closed,
                Err(e) => return End::Failure(format!("socket: {e}")),
            }
        }
    }

    fn finish(self, end: End) {
        let replaced = !self.hub.is_live(&self.id, self.conn);
        self.hub.unregister(&self.id, self.conn);
        if !replaced {
            self.hub.connection_ended(&self.id, end == End::Disconnect);
        }
        match &end {
            End::Violation(why) => warn!(conn = self.conn, identity = %self.id, "closed: {why}"),
            End::Disconnect => info!(conn = self.conn, identity = %self.id, "disconnected"),
            End::Closed if replaced => {
                info!(conn = self.conn, identity = %self.id, "closed: replaced by a newer connection")
            }
            other => info!(conn = self.conn, identity = %self.id, "closed: {other:?}"),
        }
        // MQTT: the will is published when the connection ends without DISCONNECT; IoT Hub
        // turns it into a device-to-cloud message marked `iothub-MessageType: Will`.
        if end != End::Disconnect && !replaced {
            if let Some(will) = &self.will {
                if let Inbound::Telemetry { mut properties } = topics::classify_publish(&will.topic, &self.id)
                {
                    topics::drop_system_properties(&mut properties);
                    properties.push(("iothub-MessageType".into(), Some("Will".into())));
                    self.store_message(&will.topic, properties, will.payload.clone())
                        .ok();
                }
            }
        }
    }

    fn handle(&mut self, link: &mut Link, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.on_publish(link, p),
            // Acknowledgements of our QoS 1 deliveries: nothing is re-sent, so nothing to do.
            Packet::PubAck(_) => Ok(()),
            Packet::Subscribe(s) => {
                let return_codes = s.filters.iter().map(|(f, q)| self.subscribe(f, *q)).collect();
                self.send(
                    link,
                    &Packet::SubAck(SubAck {
                        packet_id: s.packet_id,
                        return_codes,
                    }),
                )
            }
            Packet::Unsubscribe(u) => {
                self.subscriptions.retain(|(f, _)| !u.filters.contains(f));
                self.send(link, &Packet::UnsubAck(u.packet_id))
            }
            Packet::PingReq => self.send(link, &Packet::PingResp),
            Packet::Disconnect => Err(End::Disconnect),
            Packet::Connect(_) => Err(End::Violation("a second CONNECT".into())),
            other => Err(End::Violation(format!(
                "{} is not supported (IoT Hub has no QoS 2, and it is a server packet otherwise)",
                other.name()
            ))),
        }
    }

    fn subscribe(&mut self, filter: &str, requested: QoS) -> SubscribeReturnCode {
        if topic::validate_filter(filter).is_err() || !topics::subscription_allowed(filter, &self.id) {
            info!(conn = self.conn, identity = %self.id, filter, "subscription refused: not an IoT Hub topic of this identity");
            return SubscribeReturnCode::Failure;
        }
        // IoT Hub grants at most QoS 1.
        let granted = requested.min(QoS::AtLeastOnce);
        if let Some(existing) = self.subscriptions.iter_mut().find(|(f, _)| f == filter) {
            existing.1 = granted;
        } else if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            info!(conn = self.conn, identity = %self.id, filter, "subscription refused: IoT Hub allows {MAX_SUBSCRIPTIONS}");
            return SubscribeReturnCode::Failure;
        } else {
            self.subscriptions.push((filter.to_owned(), granted));
        }
        SubscribeReturnCode::Success(granted)
    }

    fn on_publish(&mut self, link: &mut Link, p: Publish) -> Result<(), End> {
        if p.qos == QoS::ExactlyOnce {
            return Err(End::Violation(
                "QoS 2 PUBLISH (IoT Hub closes the connection)".into(),
            ));
        }
        if p.payload.len() > MAX_MESSAGE_BYTES {
            return Err(End::Violation(format!(
                "message of {} bytes (IoT Hub's limit is {MAX_MESSAGE_BYTES})",
                p.payload.len()
            )));
        }
        match topics::classify_publish(&p.topic, &self.id) {
            Inbound::Telemetry { mut properties } => {
                let dropped = topics::drop_system_properties(&mut properties);
                if dropped > 0 {
                    debug!(conn = self.conn, identity = %self.id, dropped, "device-supplied iothub-* properties dropped");
                }
                // Stored (committed) before the PUBACK: an acknowledged message survives a
                // killed hub.
                self.store_message(&p.topic, properties, p.payload)
                    .map_err(End::Failure)?;
                self.ack(link, &p.packet_id)
            }
            Inbound::TwinGet { rid } => {
                self.ack(link, &p.packet_id)?;
                let twin = self.hub.store().twin(&self.id);
                let (status, body) = match twin {
                    Ok(Some(twin)) => (200, twin.get_body().to_string()),
                    Ok(None) => (404, error_body(404, "no twin")),
                    Err(e) => {
                        warn!(conn = self.conn, "twin GET: {e}");
                        (500, error_body(500, "storage error"))
                    }
                };
                self.deliver(link, topics::twin_response(status, &rid, None), body.into_bytes())
            }
            Inbound::TwinPatchReported { rid } => {
                self.ack(link, &p.packet_id)?;
                let result = serde_json::from_slice::<Value>(&p.payload)
                    .map_err(|e| format!("not JSON: {e}"))
                    .and_then(|patch| {
                        self.hub
                            .patch_reported(&self.id, &patch)
                            .map_err(|e| e.to_string())
                    });
                let (topic, body) = match result {
                    Ok(version) => (topics::twin_response(204, &rid, Some(version)), Vec::new()),
                    Err(why) => {
                        info!(conn = self.conn, identity = %self.id, "reported PATCH refused: {why}");
                        (
                            topics::twin_response(400, &rid, None),
                            error_body(400, &why).into_bytes(),
                        )
                    }
                };
                self.deliver(link, topic, body)
            }
            Inbound::MethodResponse => self.ack(link, &p.packet_id),
            Inbound::Unsupported(why) => Err(End::Violation(why)),
        }
    }

    fn store_message(
        &self,
        topic: &str,
        properties: Vec<(String, Option<String>)>,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let is_security = is_security_message(&properties);
        let (schema_valid, schema_error) = if is_security {
            match check_security_message(&body) {
                Ok(_) => (true, None),
                Err(e) => (false, Some(e)),
            }
        } else {
            (false, None)
        };
        if let Some(e) = &schema_error {
            warn!(conn = self.conn, identity = %self.id, "security message does not parse as the model: {e}");
        }
        let message = NewMessage {
            id: self.id.clone(),
            received_ms: now_ms(),
            topic: topic.to_owned(),
            properties,
            body,
            is_security,
            schema_valid,
            schema_error,
        };
        let seq = self
            .hub
            .record_message(&message)
            .map_err(|e| format!("storing a message: {e}"))?;
        debug!(conn = self.conn, identity = %self.id, seq, bytes = message.body.len(), is_security, schema_valid, "message stored");
        Ok(())
    }

    fn ack(&mut self, link: &mut Link, packet_id: &Option<u16>) -> Result<(), End> {
        match packet_id {
            Some(id) => self.send(link, &Packet::PubAck(*id)),
            None => Ok(()),
        }
    }

    fn send(&mut self, link: &mut Link, packet: &Packet) -> Result<(), End> {
        send_packet(link, packet).map_err(End::Failure)
    }

    /// Publishes to the client if one of its subscriptions matches, with the highest QoS
    /// granted among them (IoT Hub only delivers what a client subscribed to).
    fn deliver(&mut self, link: &mut Link, topic: String, payload: Vec<u8>) -> Result<(), End> {
        let Some(qos) = self
            .subscriptions
            .iter()
            .filter(|(f, _)| topic::matches(f, &topic))
            .map(|(_, q)| *q)
            .max()
        else {
            debug!(conn = self.conn, topic, "not subscribed: not delivered");
            return Ok(());
        };
        let packet_id = (qos != QoS::AtMostOnce).then(|| {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            self.next_packet_id
        });
        self.send(
            link,
            &Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic,
                packet_id,
                payload,
            }),
        )
    }
}

fn error_body(status: u16, message: &str) -> String {
    serde_json::json!({"errorCode": status, "message": message}).to_string()
}
