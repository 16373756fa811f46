//! Transports (SPEC §6): deliver a message and confirm it; publish reported properties; bring
//! desired configuration documents. Only this layer knows files, topics or brokers.

pub mod iothub;
pub mod local;
pub mod mqtt;
pub mod mqtt_client;
pub mod net;
pub mod settings;
pub mod tls;

use serde_json::Value;
use twinguard_core::config::{validate_config_object, validate_document, Validation};

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

    /// A new desired document, if one arrived since the last call (`now_ms`: monotonic time,
    /// for debouncing). The transport hands over whole documents: IoT Hub patches are merged
    /// into the last received document before they get here.
    fn poll_desired(&mut self, now_ms: u64) -> Option<DesiredUpdate>;

    /// How many connections have come up so far (0 for transports without connections). A
    /// change means "reconnected": the pipeline then retries at once instead of waiting out
    /// a backoff that grew during the outage.
    fn connections(&self) -> u64 {
        0
    }

    /// A short name for logs (`outbox /path`, `mqtt host:port`).
    fn describe(&self) -> String;
    /// The mode's short name (`local`, `mqtt`, `iothub`), recorded in the data directory.
    fn mode(&self) -> &'static str;
    /// How an operator sets shorter message frequencies in this mode (one sentence).
    fn configuration_hint(&self) -> String;
}

/// A desired document brought by a transport.
#[derive(Clone, Debug, PartialEq)]
pub enum DesiredUpdate {
    /// A whole desired document (any accepted shape), with its `$version` when the transport
    /// has versions.
    Document {
        /// The document.
        doc: Value,
        /// Its `$version`.
        version: Option<i64>,
    },
    /// The document is gone or empty: all defaults.
    Cleared,
    /// Something arrived that is not a JSON document (why, for the ConfigurationError).
    Unreadable(String),
}

impl DesiredUpdate {
    /// The one place a desired update becomes a configuration (the run loop, remote start-up
    /// and `doctor` all ask here): a document is validated whole, a cleared one is the
    /// defaults. `Err` holds why an unreadable update could not be read.
    pub fn validate(&self) -> Result<Validation, &str> {
        match self {
            DesiredUpdate::Document { doc, .. } => Ok(validate_document(doc)),
            DesiredUpdate::Cleared => Ok(validate_config_object(None, "")),
            DesiredUpdate::Unreadable(why) => Err(why),
        }
    }

    /// The document's `$version`, when the transport has versions.
    pub fn version(&self) -> Option<i64> {
        match self {
            DesiredUpdate::Document { version, .. } => *version,
            DesiredUpdate::Cleared | DesiredUpdate::Unreadable(_) => None,
        }
    }
}
