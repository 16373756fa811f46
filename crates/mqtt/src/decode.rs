//! Bytes -> packets. [`decode`] looks at the front of a buffer and says: not enough bytes yet,
//! one packet (and how many bytes it used), or a protocol error. It never panics and never
//! allocates more than the packet it returns, which is at most the caller's size bound: a
//! packet announcing more than the bound is an error as soon as its fixed header is read, before
//! its body arrives.

use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubAck, Subscribe,
    SubscribeReturnCode, Unsubscribe,
};
use crate::topic;

/// Why the bytes are not MQTT 3.1.1. After any of these the connection must be closed: the
/// stream cannot be re-synchronised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Packet type 0 or 15.
    #[error("packet type {0} is reserved")]
    ReservedPacketType(u8),
    /// The low four bits of the first byte are wrong for this packet type (§2.2.2).
    #[error("{packet}: invalid fixed-header flags {flags:#06b}")]
    InvalidFlags {
        /// The packet type.
        packet: &'static str,
        /// The flags found.
        flags: u8,
    },
    /// The remaining length has a fifth continuation byte (§2.2.3).
    #[error("malformed remaining length (more than 4 bytes)")]
    MalformedRemainingLength,
    /// The packet announces more bytes than the caller allows.
    #[error("packet of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The packet's total size (fixed header included).
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The remaining length ends before the contents do.
    #[error("{packet}: truncated {what}")]
    Truncated {
        /// The packet type.
        packet: &'static str,
        /// The field being read.
        what: &'static str,
    },
    /// Bytes left over after the contents of a packet of fixed shape.
    #[error("{packet}: {count} unexpected byte(s) after the contents")]
    TrailingBytes {
        /// The packet type.
        packet: &'static str,
        /// How many.
        count: usize,
    },
    /// A string field is not UTF-8 (§1.5.3).
    #[error("{packet}: {what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The packet type.
        packet: &'static str,
        /// The field.
        what: &'static str,
    },
    /// A string field contains U+0000 (§1.5.3).
    #[error("{packet}: {what} contains U+0000")]
    NullCharacter {
        /// The packet type.
        packet: &'static str,
        /// The field.
        what: &'static str,
    },
    /// QoS bits 11.
    #[error("{packet}: QoS 3 does not exist")]
    InvalidQoS {
        /// The packet type.
        packet: &'static str,
    },
    /// A packet identifier of 0 (§2.3.1).
    #[error("{packet}: packet identifier 0")]
    ZeroPacketId {
        /// The packet type.
        packet: &'static str,
    },
    /// A CONNECT with another protocol name or level than `MQTT` 4. A server answers CONNACK
    /// 0x01 (unacceptable protocol version) and closes.
    #[error("CONNECT: unsupported protocol {name:?} level {level} (only MQTT 3.1.1, level 4)")]
    UnsupportedProtocol {
        /// The protocol name found.
        name: String,
        /// The protocol level found.
        level: u8,
    },
    /// Inconsistent CONNECT flags (§3.1.2.3 - §3.1.2.9).
    #[error("CONNECT: invalid flags: {0}")]
    InvalidConnectFlags(&'static str),
    /// A CONNACK with reserved bits set or a reserved return code.
    #[error("CONNACK: {0}")]
    InvalidConnAck(&'static str),
    /// A PUBLISH topic name that is not a valid topic name.
    #[error("PUBLISH: invalid topic name: {0}")]
    InvalidTopicName(topic::TopicError),
    /// DUP set on a QoS 0 PUBLISH (§3.3.1.1).
    #[error("PUBLISH: DUP set on a QoS 0 message")]
    DupOnQoS0,
    /// A SUBSCRIBE or UNSUBSCRIBE without any filter, or with an empty one.
    #[error("{packet}: {what}")]
    InvalidFilterList {
        /// The packet type.
        packet: &'static str,
        /// What is wrong.
        what: &'static str,
    },
    /// Reserved bits set in a SUBSCRIBE's requested QoS byte (§3.8.3.1).
    #[error("SUBSCRIBE: reserved bits set in the requested QoS byte {0:#04x}")]
    InvalidRequestedQoS(u8),
    /// A SUBACK return code other than 0, 1, 2 or 0x80.
    #[error("SUBACK: invalid return code {0:#04x}")]
    InvalidSubAckCode(u8),
}

/// The largest remaining length a 4-byte variable byte integer can express.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// What the front of a buffer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole packet yet: read more bytes and call again with the longer buffer.
    Incomplete,
    /// One packet, which used the first `consumed` bytes of the buffer.
    Packet {
        /// The packet.
        packet: Packet,
        /// Bytes used.
        consumed: usize,
    },
}

/// The remaining-length field at the front of `buf`: `Ok(None)` when more bytes are needed,
/// else (value, bytes used).
pub fn decode_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut value: usize = 0;
    for (i, byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(ProtocolError::MalformedRemainingLength)
    } else {
        Ok(None)
    }
}

fn type_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "reserved",
    }
}

/// Decodes the packet at the front of `buf`, refusing any packet larger than
/// `max_packet_size` bytes in total (fixed header included).
pub fn decode(buf: &[u8], max_packet_size: usize) -> Result<Decoded, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(Decoded::Incomplete);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0f;
    let name = type_name(packet_type);
    // Check the first byte before waiting for the rest, so garbage fails at once.
    let flags_ok = match packet_type {
        0 | 15 => return Err(ProtocolError::ReservedPacketType(packet_type)),
        3 => true,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if !flags_ok {
        return Err(ProtocolError::InvalidFlags { packet: name, flags });
    }
    let Some((remaining, len_bytes)) = decode_remaining_length(&buf[1..])? else {
        return Ok(Decoded::Incomplete);
    };
    let total = 1 + len_bytes + remaining;
    if total > max_packet_size {
        return Err(ProtocolError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(Decoded::Incomplete);
    }
    let body = &buf[1 + len_bytes..total];
    let packet = decode_body(packet_type, flags, body)?;
    Ok(Decoded::Packet {
        packet,
        consumed: total,
    })
}

/// A cursor over a packet's body; every read checks the bounds.
struct Body<'a> {
    packet: &'static str,
    bytes: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.bytes.len() < n {
            return Err(ProtocolError::Truncated {
                packet: self.packet,
                what,
            });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn packet_id(&mut self) -> Result<u16, ProtocolError> {
        let id = self.u16("packet identifier")?;
        if id == 0 {
            return Err(ProtocolError::ZeroPacketId { packet: self.packet });
        }
        Ok(id)
    }

    fn binary(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let bytes = self.binary(what)?;
        let text = std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 {
            packet: self.packet,
            what,
        })?;
        if text.contains('\0') {
            return Err(ProtocolError::NullCharacter {
                packet: self.packet,
                what,
            });
        }
        Ok(text.to_owned())
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn end(self) -> Result<(), ProtocolError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                packet: self.packet,
                count: self.bytes.len(),
            })
        }
    }
}

fn decode_body(packet_type: u8, flags: u8, bytes: &[u8]) -> Result<Packet, ProtocolError> {
    let mut body = Body {
        packet: type_name(packet_type),
        bytes,
    };
    let packet = match packet_type {
        1 => Packet::Connect(connect(&mut body)?),
        2 => {
            let ack_flags = body.u8("acknowledge flags")?;
            if ack_flags & 0xfe != 0 {
                return Err(ProtocolError::InvalidConnAck("reserved acknowledge flags set"));
            }
            let code = ConnectReturnCode::from_byte(body.u8("return code")?)
                .ok_or(ProtocolError::InvalidConnAck("reserved return code"))?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
            })
        }
        3 => Packet::Publish(publish(&mut body, flags)?),
        4 => Packet::PubAck(body.packet_id()?),
        5 => Packet::PubRec(body.packet_id()?),
        6 => Packet::PubRel(body.packet_id()?),
        7 => Packet::PubComp(body.packet_id()?),
        8 => {
            let packet_id = body.packet_id()?;
            let mut filters = Vec::new();
            while !body.is_empty() {
                let filter = filter_string(&mut body)?;
                let requested = body.u8("requested QoS")?;
                if requested & 0xfc != 0 {
                    return Err(ProtocolError::InvalidRequestedQoS(requested));
                }
                let qos =
                    QoS::from_bits(requested).ok_or(ProtocolError::InvalidQoS { packet: "SUBSCRIBE" })?;
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return Err(ProtocolError::InvalidFilterList {
                    packet: "SUBSCRIBE",
                    what: "no topic filter",
                });
            }
            Packet::Subscribe(Subscribe { packet_id, filters })
        }
        9 => {
            let packet_id = body.packet_id()?;
            let return_codes = body
                .rest()
                .iter()
                .map(|&code| match code {
                    0x80 => Ok(SubscribeReturnCode::Failure),
                    c => QoS::from_bits(c)
                        .map(SubscribeReturnCode::Success)
                        .ok_or(ProtocolError::InvalidSubAckCode(c)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Packet::SubAck(SubAck {
                packet_id,
                return_codes,
            })
        }
        10 => {
            let packet_id = body.packet_id()?;
            let mut filters = Vec::new();
            while !body.is_empty() {
                filters.push(filter_string(&mut body)?);
            }
            if filters.is_empty() {
                return Err(ProtocolError::InvalidFilterList {
                    packet: "UNSUBSCRIBE",
                    what: "no topic filter",
                });
            }
            Packet::Unsubscribe(Unsubscribe { packet_id, filters })
        }
        11 => Packet::UnsubAck(body.packet_id()?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        other => return Err(ProtocolError::ReservedPacketType(other)),
    };
    body.end()?;
    Ok(packet)
}

fn filter_string(body: &mut Body<'_>) -> Result<String, ProtocolError> {
    let filter = body.string("topic filter")?;
    if filter.is_empty() {
        return Err(ProtocolError::InvalidFilterList {
            packet: body.packet,
            what: "empty topic filter",
        });
    }
    Ok(filter)
}

fn connect(body: &mut Body<'_>) -> Result<Connect, ProtocolError> {
    let name_bytes = body.binary("protocol name")?;
    let level = body.u8("protocol level")?;
    if name_bytes != b"MQTT" || level != 4 {
        return Err(ProtocolError::UnsupportedProtocol {
            name: String::from_utf8_lossy(name_bytes).into_owned(),
            level,
        });
    }
    let flags = body.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(ProtocolError::InvalidConnectFlags("reserved bit set"));
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(ProtocolError::InvalidConnectFlags(
            "will QoS or will retain set without a will",
        ));
    }
    if password_flag && !username_flag {
        return Err(ProtocolError::InvalidConnectFlags("password without a user name"));
    }
    let will_qos = QoS::from_bits(will_qos_bits).ok_or(ProtocolError::InvalidQoS { packet: "CONNECT" })?;
    let keep_alive_secs = body.u16("keep alive")?;
    let client_id = body.string("client identifier")?;
    let will = if will_flag {
        let topic = body.string("will topic")?;
        topic::validate_name(&topic).map_err(ProtocolError::InvalidTopicName)?;
        let payload = body.binary("will message")?.to_vec();
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(body.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(body.binary("password")?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        client_id,
        clean_session,
        keep_alive_secs,
        will,
        username,
        password,
    })
}

fn publish(body: &mut Body<'_>, flags: u8) -> Result<Publish, ProtocolError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_bits((flags >> 1) & 0x03).ok_or(ProtocolError::InvalidQoS { packet: "PUBLISH" })?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(ProtocolError::DupOnQoS0);
    }
    let topic = body.string("topic name")?;
    topic::validate_name(&topic).map_err(ProtocolError::InvalidTopicName)?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(body.packet_id()?)
    };
    let payload = body.rest().to_vec();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
    })
}
