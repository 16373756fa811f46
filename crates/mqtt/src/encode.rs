//! Packets -> bytes. The encoder refuses what the decoder would refuse (a QoS 0 publish with a
//! packet identifier, identifier 0, wildcards in a topic name, strings over 65535 bytes, a
//! packet over the protocol's 256 MiB limit), so what we send is always valid MQTT 3.1.1.

use crate::decode::MAX_REMAINING_LENGTH;
use crate::packet::{
    ConnAck, Connect, Packet, Publish, QoS, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe,
};
use crate::topic;

/// Why a packet cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field longer than its 16-bit length prefix allows.
    #[error("{what} is {len} bytes long; at most 65535 fit")]
    FieldTooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The packet is over the protocol's maximum remaining length.
    #[error("packet body of {0} bytes exceeds MQTT's limit of 268435455")]
    TooLarge(usize),
    /// A packet identifier of 0.
    #[error("{0}: packet identifier 0")]
    ZeroPacketId(&'static str),
    /// A PUBLISH whose packet identifier does not agree with its QoS.
    #[error("PUBLISH: a packet identifier is required exactly for QoS 1 and 2")]
    PacketIdMismatch,
    /// DUP on a QoS 0 PUBLISH.
    #[error("PUBLISH: DUP set on a QoS 0 message")]
    DupOnQoS0,
    /// A topic name that is not valid.
    #[error("invalid topic name {topic:?}: {error}")]
    InvalidTopicName {
        /// The topic.
        topic: String,
        /// Why.
        error: topic::TopicError,
    },
    /// A SUBSCRIBE or UNSUBSCRIBE without filters.
    #[error("{0}: at least one topic filter is required")]
    NoFilters(&'static str),
    /// A password without a user name (not expressible in 3.1.1).
    #[error("CONNECT: a password requires a user name")]
    PasswordWithoutUserName,
}

/// Appends the encoding of `packet` to `out`. On error nothing is appended.
pub fn encode(packet: &Packet, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut body = Vec::new();
    let first = match packet {
        Packet::Connect(c) => {
            connect(c, &mut body)?;
            0x10
        }
        Packet::ConnAck(ConnAck {
            session_present,
            code,
        }) => {
            body.push(u8::from(*session_present));
            body.push(*code as u8);
            0x20
        }
        Packet::Publish(p) => publish(p, &mut body)?,
        Packet::PubAck(id) => id_only("PUBACK", *id, &mut body, 0x40)?,
        Packet::PubRec(id) => id_only("PUBREC", *id, &mut body, 0x50)?,
        Packet::PubRel(id) => id_only("PUBREL", *id, &mut body, 0x62)?,
        Packet::PubComp(id) => id_only("PUBCOMP", *id, &mut body, 0x70)?,
        Packet::Subscribe(Subscribe { packet_id, filters }) => {
            packet_id_field("SUBSCRIBE", *packet_id, &mut body)?;
            if filters.is_empty() {
                return Err(EncodeError::NoFilters("SUBSCRIBE"));
            }
            for (filter, qos) in filters {
                string("topic filter", filter, &mut body)?;
                body.push(qos.bits());
            }
            0x82
        }
        Packet::SubAck(SubAck {
            packet_id,
            return_codes,
        }) => {
            packet_id_field("SUBACK", *packet_id, &mut body)?;
            body.extend(return_codes.iter().map(|c| match c {
                SubscribeReturnCode::Success(qos) => qos.bits(),
                SubscribeReturnCode::Failure => 0x80,
            }));
            0x90
        }
        Packet::Unsubscribe(Unsubscribe { packet_id, filters }) => {
            packet_id_field("UNSUBSCRIBE", *packet_id, &mut body)?;
            if filters.is_empty() {
                return Err(EncodeError::NoFilters("UNSUBSCRIBE"));
            }
            for filter in filters {
                string("topic filter", filter, &mut body)?;
            }
            0xa2
        }
        Packet::UnsubAck(id) => id_only("UNSUBACK", *id, &mut body, 0xb0)?,
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    if body.len() > MAX_REMAINING_LENGTH {
        return Err(EncodeError::TooLarge(body.len()));
    }
    out.reserve(body.len() + 5);
    out.push(first);
    encode_remaining_length(body.len(), out);
    out.extend_from_slice(&body);
    Ok(())
}

/// Appends `len` as a variable byte integer (1 to 4 bytes; `len` must be at most
/// [`MAX_REMAINING_LENGTH`]).
pub fn encode_remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

fn id_only(name: &'static str, id: u16, body: &mut Vec<u8>, first: u8) -> Result<u8, EncodeError> {
    packet_id_field(name, id, body)?;
    Ok(first)
}

fn packet_id_field(name: &'static str, id: u16, body: &mut Vec<u8>) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::ZeroPacketId(name));
    }
    body.extend_from_slice(&id.to_be_bytes());
    Ok(())
}

fn binary(what: &'static str, bytes: &[u8], body: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong {
        what,
        len: bytes.len(),
    })?;
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(bytes);
    Ok(())
}

fn string(what: &'static str, text: &str, body: &mut Vec<u8>) -> Result<(), EncodeError> {
    binary(what, text.as_bytes(), body)
}

fn topic_name(name: &str, body: &mut Vec<u8>) -> Result<(), EncodeError> {
    topic::validate_name(name).map_err(|error| EncodeError::InvalidTopicName {
        topic: name.to_owned(),
        error,
    })?;
    string("topic name", name, body)
}

fn connect(c: &Connect, body: &mut Vec<u8>) -> Result<(), EncodeError> {
    if c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::PasswordWithoutUserName);
    }
    string("protocol name", "MQTT", body)?;
    body.push(4);
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos.bits() << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive_secs.to_be_bytes());
    string("client identifier", &c.client_id, body)?;
    if let Some(will) = &c.will {
        topic_name(&will.topic, body)?;
        binary("will message", &will.payload, body)?;
    }
    if let Some(user) = &c.username {
        string("user name", user, body)?;
    }
    if let Some(password) = &c.password {
        binary("password", password, body)?;
    }
    Ok(())
}

fn publish(p: &Publish, body: &mut Vec<u8>) -> Result<u8, EncodeError> {
    if p.packet_id.is_some() != (p.qos != QoS::AtMostOnce) {
        return Err(EncodeError::PacketIdMismatch);
    }
    if p.dup && p.qos == QoS::AtMostOnce {
        return Err(EncodeError::DupOnQoS0);
    }
    topic_name(&p.topic, body)?;
    if let Some(id) = p.packet_id {
        packet_id_field("PUBLISH", id, body)?;
    }
    body.extend_from_slice(&p.payload);
    let mut first = 0x30 | (p.qos.bits() << 1);
    if p.dup {
        first |= 0x08;
    }
    if p.retain {
        first |= 0x01;
    }
    Ok(first)
}
