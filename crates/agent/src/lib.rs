//! twinguard: a security agent for Linux IoT devices.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map.
pub mod app;
pub mod backoff;
pub mod collect;
pub mod config;
pub mod datadir;
pub mod event;
pub mod input;
pub mod pipeline;
pub mod sys;
pub mod transport;
