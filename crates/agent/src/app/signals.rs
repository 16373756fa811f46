//! SIGINT/SIGTERM become a message on the agent's input channel: the signals are blocked in
//! every thread and one thread waits for them with `sigwait`, so no handler runs in a
//! restricted async-signal context.
//!
//! The thread starts before anything that could block (reading settings and secrets,
//! connecting, opening the data directory, a FIFO outbox waiting for its reader), so a stop
//! request is never lost: while start-up is not over, or when the run loop has not finished
//! [`STOP_GRACE`] after the signal, the thread ends the process itself with exit code 0 (a
//! requested stop, SPEC §8), within the documented 2 s. A second signal ends it at once.
//! Nothing is lost by that: the cache is crash-safe, and what is not yet fdatasync'd is what a
//! kill would lose too (at most [`super::run::SYNC_INTERVAL_MS`]).

use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use super::inbox::RunInput;
use twinguard_os::signals::{block_termination, TerminationSignals};

/// How long the run loop has to stop cleanly after SIGINT/SIGTERM before the signal thread
/// ends the process: below the 2 s the SPEC promises, with room for the exit itself.
pub(crate) const STOP_GRACE: Duration = Duration::from_millis(1500);

/// The blocked termination signals and the thread waiting for them.
#[derive(Clone, Debug)]
pub struct Signals {
    /// Where a stop request goes once the run loop listens; `None` during start-up.
    run_loop: Arc<Mutex<Option<SyncSender<RunInput>>>>,
}

impl Signals {
    /// Hands stop requests to the run loop from now on.
    pub(crate) fn attach(&self, tx: SyncSender<RunInput>) {
        *self.run_loop.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it spawns later)
/// and starts the thread that waits for them. Call it before spawning any other thread.
pub fn block_termination_signals() -> std::io::Result<Signals> {
    let set = block_termination()?;
    let signals = Signals {
        run_loop: Arc::new(Mutex::new(None)),
    };
    let shared = signals.run_loop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_signals(set, &shared))?;
    Ok(signals)
}

fn wait_for_signals(set: TerminationSignals, run_loop: &Mutex<Option<SyncSender<RunInput>>>) {
    let name = set.wait().name();
    let tx = run_loop.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match tx {
        // A full channel: the request waits for room in a helper thread, so this one keeps
        // the deadline.
        Some(tx) => {
            if tx.try_send(RunInput::Shutdown(name)).is_err() {
                let _ = std::thread::Builder::new()
                    .name("signal-send".into())
                    .spawn(move || drop(tx.send(RunInput::Shutdown(name))));
            }
        }
        None => {
            warn!("{name} during start-up: stopping");
            std::process::exit(0);
        }
    }
    // Wait for the run loop to finish (the process exits before this returns) - or for a
    // second signal, which ends it at once.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let _ = std::thread::Builder::new()
        .name("signal-second".into())
        .spawn(move || {
            let again = set.wait();
            let _ = done_tx.send(());
            again
        });
    match done_rx.recv_timeout(STOP_GRACE) {
        Ok(()) => warn!("second signal: stopping now"),
        Err(_) => warn!(
            "the agent did not stop within {STOP_GRACE:?} of {name}: stopping now (the cache keeps what was written)"
        ),
    }
    std::process::exit(0);
}
