//! `twinguard-core`: what the agent and the hub share, pure. The configuration engine
//! (`config`: a twin's desired document -> a validated `Config`, or every problem), the event
//! model and the security message (`event`), and the IoT Hub protocol rules both sides apply
//! (`iothub`).
//!
//! Architecture Invariant: nothing here does IO, starts a thread, reads a clock or logs. Time
//! and event ids are parameters; warnings are returned as data. `clippy.toml` forbids std's
//! file system, network, thread and clock functions, and the crate has no `libc` or `tracing`
//! dependency, so the invariant is checked by the build, not promised.
pub mod config;
pub mod event;
pub mod iothub;
