//! twinguard: a security agent for Linux IoT devices.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map.
pub mod app;
pub mod backoff;
pub mod collect;
pub mod datadir;
pub mod input;
pub mod pipeline;
pub mod stamp;
pub mod sys;
pub mod transport;
