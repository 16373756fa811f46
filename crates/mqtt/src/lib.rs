//! `twinguard-mqtt`: an MQTT 3.1.1 packet codec with no IO, shared by the agent's client
//! (`twinguard` MQTT and IoT Hub modes) and the hub server (`twinguard-hub`).
//!
//! - [`decode`]: the front of a byte buffer -> [`Decoded::Incomplete`] (read more),
//!   [`Decoded::Packet`] (and how many bytes it used), or a [`ProtocolError`] (close the
//!   connection). Every packet is bounded by a caller-given maximum size, checked as soon as the
//!   fixed header is complete, so a peer cannot make the reader buffer more than that.
//! - [`encode`]: a [`Packet`] -> bytes, refusing anything that is not valid 3.1.1.
//! - [`PacketBuffer`]: bytes as they come off a socket -> packets, bounded.
//! - [`topic`]: topic name and filter syntax, and filter matching (for a server).
//! - [`url`]: broker URLs (`mqtt://`, `mqtts://`).
//!
//! Architecture Invariant: nothing here panics on any input (a property test feeds random
//! bytes), and nothing here does IO or reads a clock.

mod buffer;
mod decode;
mod encode;
mod packet;
pub mod topic;
pub mod url;

pub use buffer::PacketBuffer;
pub use decode::{decode, decode_remaining_length, Decoded, ProtocolError, MAX_REMAINING_LENGTH};
pub use encode::{encode, encode_remaining_length, EncodeError};
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubAck, Subscribe,
    SubscribeReturnCode, Unsubscribe,
};

impl Packet {
    /// The packet's encoding as a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        encode(self, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
