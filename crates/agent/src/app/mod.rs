//! The composition root: wires collectors -> pipeline -> transport and supervises them.

use std::path::PathBuf;

use uuid::Uuid;

/// The default data directory: `/var/lib/twinguard` as root, else `./twinguard-data`.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        PathBuf::from("/var/lib/twinguard")
    } else {
        PathBuf::from("twinguard-data")
    }
}

/// The AgentId of the default data directory when one exists (read without taking the lock, for
/// one-shot commands like `collect`), else a fresh random id.
pub fn agent_id_for_display() -> Uuid {
    std::fs::read_to_string(default_data_dir().join("agent-id"))
        .ok()
        .and_then(|t| Uuid::parse_str(t.trim()).ok())
        .unwrap_or_else(Uuid::new_v4)
}

pub mod doctor;
pub mod notify;
mod run;
mod signals;
mod snapshots;
mod streams;

pub use run::{run_agent, run_local, Input, LocalOptions, RunError, Synthetic, EXIT_CONFIG};
pub use signals::block_termination_signals;
