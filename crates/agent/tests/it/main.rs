//! The single integration-test binary: the real `twinguard` binary and the public library API,
//! against real files (and, where the machine has them, real kernel interfaces).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod collectors;
mod config_cases;
mod conformance;
mod doctor;
mod drops;
mod events;
mod fuzz_corpus;
mod hardening;
mod mqtt;
mod pipeline;
mod process_facts;
mod run;
mod support;
