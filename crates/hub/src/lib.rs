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
//! - `api_server`, `api`: the loopback operator API: hyper with the pools that keep slow
//!   clients from blocking everyone, then access checks and routes. `http`: the CLI's
//!   minimal HTTP/1.1 client, and the request parser the fuzz targets shape inputs with.
//! - `service`: IoT Hub's service REST API over HTTPS (hyper, rustls); `service::routes` its
//!   routes; `rollout` applies automatic configurations to twins through `hub`.
//! - `fleet`: MQTT fleet ingest (`serve --mqtt-fleet`): one client connection to a broker,
//!   the agents' messages, reported sections and status in, desired sections out (retained).
//! - `webhook`: the alert webhook (`serve --alert-webhook`): new alerts and state changes
//!   POSTed over verified HTTPS with an HMAC-SHA256 signature, retried, bounded, counted.
//! - `datadir`, `token`: the data directory's ownership and modes, private files opened
//!   without following links; the API's bearer token.
//! - `console`: the fleet console's pure part - typed ingest, the rule engine,
//!   recommendations; `store::console` keeps its rows, alerts and recommendations; `web` serves
//!   its pages (sessions, CSRF) on the API's address outside `/v1/`.
//! - `store`: SQLite - identities, twins with versions, messages with properties and flags;
//!   `store::registry` the service side's: keys, etags, tags, policies, configurations, audit.
//! - `tls`: local CA and server certificate, generated on first start.
//! - Pure rules: `connect` (client id, user name, SAS check), `twin` (sections, versions,
//!   merge patches, limits), `security` (security-message marker and strict parse with the
//!   agent's model), `policy` (shared access policies, service SAS check), `twin_query` (IoT
//!   Hub's query language subset), `configuration` (automatic configurations: targeting,
//!   priority, content). The IoT Hub rules the agent shares (SAS tokens, topics and property
//!   bags, identities and connection strings, percent-encoding) are `twinguard_core::iothub`.
//!
//! Architecture Invariant: nothing a client sends can panic the hub or make it hold more than
//! one bounded packet per connection; every thread, queue and wait is bounded.
pub mod admission;
pub mod api;
pub mod api_server;
pub mod configuration;
pub mod connect;
pub mod console;
pub mod datadir;
pub mod fleet;
pub mod http;
pub mod hub;
pub mod keys;
pub mod link;
pub mod policy;
pub mod rollout;
pub mod rules_file;
pub mod security;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod tls;
pub mod token;
pub mod twin;
pub mod twin_query;
pub mod web;
pub mod webhook;
