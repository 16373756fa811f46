//! The composition root: wires collectors -> pipeline -> transport and supervises them.

use std::path::PathBuf;

use uuid::Uuid;

/// The data directory when `--data-dir` is not given, first that applies:
/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`; the first entry when it lists several),
/// `/var/lib/twinguard` as root, `$XDG_STATE_HOME/twinguard`, `$HOME/.local/state/twinguard`.
/// Never a path relative to the working directory: a service starts in `/`.
pub fn default_data_dir() -> Result<PathBuf, NoDataDir> {
    let env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    data_dir_from(
        env("STATE_DIRECTORY").map(|p| {
            // systemd separates several StateDirectory= entries with ':'.
            let text = p.to_string_lossy();
            PathBuf::from(text.split(':').next().unwrap_or_default())
        }),
        twinguard_os::euid() == 0,
        env("XDG_STATE_HOME"),
        env("HOME"),
    )
}

/// No data directory can be chosen without `--data-dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no data directory: neither $STATE_DIRECTORY, $XDG_STATE_HOME nor $HOME is set; give one with --data-dir DIR")]
pub struct NoDataDir;

/// `default_data_dir` over its inputs (pure, for tests).
fn data_dir_from(
    state_directory: Option<PathBuf>,
    root: bool,
    xdg_state_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf, NoDataDir> {
    if let Some(dir) = state_directory.filter(|p| p.is_absolute()) {
        return Ok(dir);
    }
    if root {
        return Ok(PathBuf::from("/var/lib/twinguard"));
    }
    if let Some(dir) = xdg_state_home {
        return Ok(dir.join("twinguard"));
    }
    match home {
        Some(home) => Ok(home.join(".local/state/twinguard")),
        None => Err(NoDataDir),
    }
}

/// Makes a user-given path absolute (against the working directory) so messages name it
/// unambiguously.
pub fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The AgentId of the default data directory when one exists (read without taking the lock, for
/// one-shot commands like `collect`), else a fresh random id.
pub fn agent_id_for_display() -> Uuid {
    default_data_dir()
        .ok()
        .and_then(|dir| crate::datadir::peek_agent_id(&dir))
        .unwrap_or_else(Uuid::new_v4)
}

pub mod doctor;
mod inbox;
pub(crate) mod notify;
mod remote;
mod run;
mod signals;
mod snapshots;
mod streams;

pub use remote::{run_iothub, run_mqtt};
pub use run::{run_agent, run_local, LocalOptions, RunError, Synthetic, EXIT_CONFIG};
pub use signals::{block_termination_signals, Signals};

#[cfg(test)]
mod tests {
    use super::data_dir_from;
    use std::path::PathBuf;

    fn p(s: &str) -> Option<PathBuf> {
        Some(PathBuf::from(s))
    }

    #[test]
    fn data_dir_order() {
        let state = data_dir_from(p("/var/lib/twinguard"), false, p("/x"), p("/home/u"));
        assert_eq!(state, Ok(PathBuf::from("/var/lib/twinguard")));
        assert_eq!(
            data_dir_from(None, true, p("/x"), p("/h")),
            Ok(PathBuf::from("/var/lib/twinguard"))
        );
        assert_eq!(
            data_dir_from(None, false, p("/x"), p("/h")),
            Ok(PathBuf::from("/x/twinguard"))
        );
        assert_eq!(
            data_dir_from(None, false, None, p("/home/u")),
            Ok(PathBuf::from("/home/u/.local/state/twinguard"))
        );
        assert!(data_dir_from(None, false, None, None).is_err());
        // A relative STATE_DIRECTORY is not trusted.
        assert_eq!(
            data_dir_from(p("rel"), true, None, None),
            Ok(PathBuf::from("/var/lib/twinguard"))
        );
    }
}
