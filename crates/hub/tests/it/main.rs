//! The one integration-test binary of `twinguard-hub`: the hub as a real process, driven by a
//! small codec-based client (`protocol`), by Microsoft's official Python SDK (`sdk`, on port
//! 8883), by its service SDK (`service`, the HTTPS service API) and by the real agent (`agent`).
#![allow(clippy::print_stderr, clippy::unwrap_used)]

mod agent;
mod cli;
mod client;
mod console;
mod console_agent;
mod fleet;
mod fuzz_corpus;
mod hardening;
mod protocol;
mod python;
mod sdk;
mod service;
mod support;
mod webhook;
