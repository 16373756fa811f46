//! The fleet console (issue 17): what the hub makes of the security messages it stores.
//!
//! - `model`: the one import of the shared event model.
//! - `ingest`: a security message parsed once into typed events, and their summaries. Pure.
//! - `rules`: the built-in detection rules over typed events (and reported status, and
//!   silence), with injected time. Pure.
//! - `finding`: the rule ids, severities and findings both kinds of rules produce. Pure.
//! - `custom`: custom rules (ranges and allow-lists per device group) from a rules file:
//!   checked, with a published schema, and evaluated with the event's time. Pure.
//! - `recommend`: standing advice from the latest snapshots. Pure.
//!
//! Around it, the IO layer: the store keeps the typed rows, alerts and recommendations
//! (`store::console`); the hub runs ingest and the rules on each stored security message
//! (`hub::Hub`); `web` serves the pages.
//!
//! Architecture Invariant: this module does no IO, reads no clock, and uses nothing of the
//! hub's IO layer (hub, store, web), which `scripts/check-cycles` keeps honest.

pub mod custom;
pub mod finding;
pub mod ingest;
pub mod model;
pub mod recommend;
pub mod rules;
