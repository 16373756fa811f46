//! `twinguard-hub`: a local Azure IoT Hub-compatible MQTT endpoint (SPEC §7), so twinguard's IoT
//! Hub mode is tested end to end and users can try the Azure path without an Azure subscription.
//!
//! Code map (outer IO layer first):
//! - `server`: `serve` - data directory, listeners, one thread per connection (bounded).
//! - `admission`: the two connection pools (pending login, authenticated sessions), the
//!   per-source limits before login, and the counted, rate-limited refusal log.
//! - `session`: one MQTT connection under IoT Hub's rules (CONNECT checks, twin topics,
//!   device-to-cloud messages, limits, keep-alive and token-expiry deadlines).
//! - `link`: plain TCP or TLS byte stream with a poll timeout.
//! - `hub`: shared state - the store, one live connection per identity, new-message signal.
//! - `api`, `http`: the loopback operator API (JSON over a minimal HTTP/1.1) and its client.
//! - `datadir`, `token`: the data directory's ownership and modes, private files opened
//!   without following links; the API's bearer token.
//! - `store`: SQLite - identities, twins with versions, messages with properties and flags.
//! - `tls`: local CA and server certificate, generated on first start.
//! - Pure rules: `connect` (client id, user name, SAS check), `twin` (sections, versions,
//!   merge patches, limits), `security` (security-message marker and strict parse with the
//!   agent's model). The IoT Hub rules the agent shares (SAS tokens, topics and property bags,
//!   identities and connection strings, percent-encoding) are `twinguard_core::iothub`.
//!
//! Architecture Invariant: nothing a client sends can panic the hub or make it hold more than
//! one bounded packet per connection; every thread, queue and wait is bounded.
pub mod admission;
pub mod api;
pub mod connect;
pub mod datadir;
pub mod http;
pub mod hub;
pub mod link;
pub mod security;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod token;
pub mod twin;
