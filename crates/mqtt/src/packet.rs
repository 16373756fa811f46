//! The MQTT 3.1.1 control packets as plain data. Encoding and decoding live in `encode.rs` and
//! `decode.rs`; these types carry no IO and no protocol state.

use std::fmt;

/// Delivery guarantee of a publish or a subscription (MQTT 3.1.1 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once: no acknowledgement.
    AtMostOnce = 0,
    /// At least once: PUBACK.
    AtLeastOnce = 1,
    /// Exactly once: PUBREC / PUBREL / PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS of a two-bit wire value; 3 is not a QoS.
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value.
    pub fn bits(self) -> u8 {
        self as u8
    }
}

/// One MQTT 3.1.1 control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Client -> server: open a session.
    Connect(Connect),
    /// Server -> client: the answer to CONNECT.
    ConnAck(ConnAck),
    /// Either way: an application message.
    Publish(Publish),
    /// QoS 1 acknowledgement of the PUBLISH with this packet identifier.
    PubAck(u16),
    /// QoS 2, first acknowledgement.
    PubRec(u16),
    /// QoS 2, release.
    PubRel(u16),
    /// QoS 2, completion.
    PubComp(u16),
    /// Client -> server: subscribe to topic filters.
    Subscribe(Subscribe),
    /// Server -> client: one return code per requested filter.
    SubAck(SubAck),
    /// Client -> server: remove subscriptions.
    Unsubscribe(Unsubscribe),
    /// Server -> client: the UNSUBSCRIBE with this packet identifier is done.
    UnsubAck(u16),
    /// Client -> server: keep-alive probe.
    PingReq,
    /// Server -> client: keep-alive answer.
    PingResp,
    /// Client -> server: clean disconnect (the last will is discarded).
    Disconnect,
}

impl Packet {
    /// The packet's name as the specification writes it, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// CONNECT (§3.1). Only protocol name `MQTT` level 4 (3.1.1) exists here; the decoder reports
/// anything else as [`crate::ProtocolError::UnsupportedProtocol`] so a server can answer
/// CONNACK 0x01 as the specification asks.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// The client identifier (may be empty with a clean session; the server decides).
    pub client_id: String,
    /// Discard any previous session and start a new one.
    pub clean_session: bool,
    /// Keep-alive interval in seconds (0 = off).
    pub keep_alive_secs: u16,
    /// The message the server publishes when the connection drops without DISCONNECT.
    pub will: Option<LastWill>,
    /// User name.
    pub username: Option<String>,
    /// Password (binary data in 3.1.1). Never printed by `Debug`.
    pub password: Option<Vec<u8>>,
}

impl fmt::Debug for Connect {
    // Written by hand so that a password (an IoT Hub SAS token, a broker password) can never
    // reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The last will of a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    /// Where it is published (a topic name: no wildcards).
    pub topic: String,
    /// What is published.
    pub payload: Vec<u8>,
    /// With which QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
}

/// CONNACK (§3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// The server resumed a stored session.
    pub session_present: bool,
    /// Accepted, or why not.
    pub code: ConnectReturnCode,
}

/// CONNACK return codes (§3.2.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectReturnCode {
    /// 0: connection accepted.
    Accepted = 0,
    /// 1: the server does not support this protocol level.
    UnacceptableProtocolVersion = 1,
    /// 2: the client identifier is not allowed.
    IdentifierRejected = 2,
    /// 3: the MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 4: the user name or password is malformed.
    BadUserNameOrPassword = 4,
    /// 5: the client is not authorized to connect.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The return code of a wire value; 6..=255 are reserved.
    pub fn from_byte(byte: u8) -> Option<ConnectReturnCode> {
        Some(match byte {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUserNameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return None,
        })
    }

    /// What the code means, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            ConnectReturnCode::Accepted => "accepted",
            ConnectReturnCode::UnacceptableProtocolVersion => "unacceptable protocol version",
            ConnectReturnCode::IdentifierRejected => "client identifier rejected",
            ConnectReturnCode::ServerUnavailable => "server unavailable",
            ConnectReturnCode::BadUserNameOrPassword => "bad user name or password",
            ConnectReturnCode::NotAuthorized => "not authorized",
        }
    }
}

/// PUBLISH (§3.3). `packet_id` is present exactly when `qos` is not [`QoS::AtMostOnce`]; the
/// decoder guarantees it and the encoder refuses anything else.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    /// A re-delivery of an earlier attempt (QoS > 0 only).
    pub dup: bool,
    /// The delivery guarantee.
    pub qos: QoS,
    /// Keep as the topic's retained message (an empty payload deletes it).
    pub retain: bool,
    /// The topic name (no wildcards).
    pub topic: String,
    /// The packet identifier (QoS 1 and 2).
    pub packet_id: Option<u16>,
    /// The application message.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Publish {
    // Payloads can be large (256 KB messages): show their size, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic", &self.topic)
            .field("packet_id", &self.packet_id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// SUBSCRIBE (§3.8): at least one (filter, requested QoS). Filters are checked for UTF-8 and
/// length by the decoder only; a server checks their syntax with
/// [`crate::topic::validate_filter`] so it can fail one filter in the SUBACK instead of
/// closing the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet identifier, echoed by the SUBACK.
    pub packet_id: u16,
    /// The topic filters and their requested QoS.
    pub filters: Vec<(String, QoS)>,
}

/// SUBACK (§3.9): one return code per filter of the SUBSCRIBE, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet identifier.
    pub packet_id: u16,
    /// One per filter.
    pub return_codes: Vec<SubscribeReturnCode>,
}

/// A SUBACK return code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    /// Subscribed, with this maximum QoS.
    Success(QoS),
    /// 0x80: the subscription was refused.
    Failure,
}

/// UNSUBSCRIBE (§3.10): at least one filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet identifier, echoed by the UNSUBACK.
    pub packet_id: u16,
    /// The filters to remove.
    pub filters: Vec<String>,
}
