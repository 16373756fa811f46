//! Termination signals handled without a signal handler: SIGINT and SIGTERM are blocked (in
//! the calling thread and every thread it spawns later) and one thread takes them with
//! `sigwait(2)`. `app::signals` decides what a signal means.

use std::io;

/// A termination signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// SIGINT.
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Termination {
    /// The signal's name (`SIGINT`, `SIGTERM`).
    pub fn name(self) -> &'static str {
        match self {
            Termination::Interrupt => "SIGINT",
            Termination::Terminate => "SIGTERM",
        }
    }
}

/// The blocked set {SIGINT, SIGTERM}, to wait on.
#[derive(Clone, Copy)]
pub struct TerminationSignals(libc::sigset_t);

impl std::fmt::Debug for TerminationSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminationSignals(SIGINT, SIGTERM)")
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it spawns later).
/// Call it before spawning any other thread, or a signal may go to a thread that does not
/// block it.
pub fn block_termination() -> io::Result<TerminationSignals> {
    // SAFETY: sigset_t is a plain C struct for which all-zero is a valid (empty) value, and
    // sigemptyset/sigaddset only write into the set we own.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(TerminationSignals(set))
}

impl TerminationSignals {
    /// Waits for the next SIGINT or SIGTERM (blocked by [`block_termination`]).
    pub fn wait(&self) -> Termination {
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `self.0` is an initialised sigset_t; `signal` is a valid out-pointer.
            if unsafe { libc::sigwait(&self.0, &mut signal) } == 0 {
                return if signal == libc::SIGINT {
                    Termination::Interrupt
                } else {
                    Termination::Terminate
                };
            }
        }
    }
}
