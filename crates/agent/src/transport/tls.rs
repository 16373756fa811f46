//! TLS client configuration for the MQTT and IoT Hub modes: shared with the hub, in
//! `twinguard_os::tls` (the system's roots plus an optional private CA, an optional client
//! certificate; verification always on).

pub use twinguard_os::tls::{client_config, TlsError, TlsOptions};
