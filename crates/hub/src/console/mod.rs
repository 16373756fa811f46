//! The fleet console (issue 17): what the hub makes of the security messages it stores.
//!
//! - `model`: the one import of the shared event model.
//! - `ingest`: a security message parsed once into typed events, and their summaries. Pure.
//! - `rules`: the built-in detection rules over typed events (and reported status, and
//!   silence), with injected time. Pure.
//! - `recommend`: standing advice from the latest snapshots. Pure.
//! - `web`: the server-rendered pages on the operator API (`/`), their session cookie and
//!   CSRF tokens.
//!
//! The store keeps the typed rows, alerts and recommendations (`store::console`); the hub
//! runs ingest and the rules on each stored security message ([`crate::hub::Hub`]).
//!
//! Architecture Invariant: `ingest`, `rules` and `recommend` do no IO and read no clock.

pub mod ingest;
pub mod model;
pub mod recommend;
pub mod rules;
pub mod web;
