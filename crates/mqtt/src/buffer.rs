//! Bytes as they come off a connection -> whole packets, with bounded memory: a packet that
//! announces more than the maximum is an error as soon as its header is in, so the buffer never
//! holds more than one maximum packet plus the last chunk pushed.

use crate::decode::{decode, Decoded, ProtocolError};
use crate::packet::Packet;

/// Accumulates received bytes and cuts them into packets.
#[derive(Debug)]
pub struct PacketBuffer {
    bytes: Vec<u8>,
    /// Bytes before this offset were already decoded; they are dropped lazily so that many
    /// small packets in one chunk do not each cost a move of the rest.
    start: usize,
    max_packet_size: usize,
}

impl PacketBuffer {
    /// An empty buffer refusing packets over `max_packet_size` bytes.
    pub fn new(max_packet_size: usize) -> PacketBuffer {
        PacketBuffer {
            bytes: Vec::new(),
            start: 0,
            max_packet_size,
        }
    }

    /// Appends received bytes. Call [`PacketBuffer::next_packet`] until it returns `Ok(None)`
    /// before pushing more, so the buffer stays within its bound.
    pub fn push(&mut self, received: &[u8]) {
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(received);
    }

    /// The next whole packet, `Ok(None)` if more bytes are needed, or the protocol error that
    /// ends the connection.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ProtocolError> {
        match decode(&self.bytes[self.start..], self.max_packet_size)? {
            Decoded::Incomplete => Ok(None),
            Decoded::Packet { packet, consumed } => {
                self.start += consumed;
                if self.start == self.bytes.len() {
                    self.bytes.clear();
                    self.start = 0;
                }
                Ok(Some(packet))
            }
        }
    }

    /// Bytes held that are not yet part of a returned packet.
    pub fn pending(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Forgets everything (after the connection is gone).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.start = 0;
    }
}
