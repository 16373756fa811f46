//! SIGINT/SIGTERM become a message on the agent's input channel: the signals are blocked in
//! every thread and one thread waits for them with `sigwait`, so no handler runs in a
//! restricted async-signal context.

use std::sync::mpsc::SyncSender;

use super::run::Input;

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it spawns later).
/// Call it before spawning any thread.
pub fn block_termination_signals() -> std::io::Result<libc::sigset_t> {
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
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Spawns the thread that turns the blocked signals into [`Input::Shutdown`].
pub fn spawn_signal_thread(set: libc::sigset_t, tx: SyncSender<Input>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is an initialised sigset_t owned by this thread; `signal` is a valid
            // out-pointer.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc != 0 {
                continue;
            }
            let name = if signal == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            // A full channel still gets the shutdown: `send` waits for room.
            if tx.send(Input::Shutdown(name)).is_err() {
                return;
            }
        })?;
    Ok(())
}
