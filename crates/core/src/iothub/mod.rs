//! The IoT Hub protocol rules the agent (a client) and the hub (a local server) share, so the
//! two sides cannot disagree: identities and connection strings (`identity`), SAS tokens
//! (`sas`: signing and checking), topics and property bags (`topics`), percent-encoding and
//! query strings (`query`), and the service's size limits. Pure: time is a parameter.
pub mod identity;
pub mod query;
pub mod sas;
pub mod topics;

/// The MQTT API version the agent names in its user name (`?api-version=`).
pub const API_VERSION: &str = "2021-04-12";

/// The largest device-to-cloud message IoT Hub accepts: 256 KiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
