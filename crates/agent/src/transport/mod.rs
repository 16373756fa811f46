//! Transports (SPEC §6): deliver a message and confirm it; publish reported properties; bring
//! desired configuration documents. Only this layer knows files, topics or brokers.

pub mod local;

use serde_json::Value;

/// Why a delivery or a report failed; the pipeline retries with backoff and never counts a
/// failed attempt as a drop.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A file or socket error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where security messages and reported properties go.
pub trait Transport {
    /// Delivers one message body; `Ok` only once the destination confirmed it (outbox line
    /// written and fdatasync'd, MQTT PUBACK). Only then may the message leave the cache.
    fn deliver(&mut self, body: &[u8]) -> Result<(), TransportError>;

    /// Publishes the reported section (configuration object and `twinguard`).
    fn report(&mut self, section: &Value) -> Result<(), TransportError>;

    /// A short name for logs (`outbox /path`, `mqtt host:port`).
    fn describe(&self) -> String;
}
