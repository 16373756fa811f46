//! `poll(2)` on a stream socket and a wake-up socket: how the MQTT client's IO thread and the
//! doctor's connection test sleep until there is something to do.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// What `poll` saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The socket is readable (or closed, or in error: a read will tell).
    pub readable: bool,
    /// The socket takes writes.
    pub writable: bool,
    /// The wake-up socket was signalled.
    pub woken: bool,
}

/// One `poll(2)` on an optional stream socket (always for reading; for writing too when the
/// flag is set) and an optional wake-up socket, for at most `timeout`.
pub(crate) fn poll(
    stream: Option<(RawFd, bool)>,
    wake: Option<RawFd>,
    timeout: Duration,
) -> io::Result<Ready> {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
    if let Some((fd, write)) = stream {
        let mut events = libc::POLLIN;
        if write {
            events |= libc::POLLOUT;
        }
        fds.push(libc::pollfd {
            fd,
            events,
            revents: 0,
        });
    }
    if let Some(fd) = wake {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // Round up so a 0.4 ms wait does not become a busy 0 ms loop.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` initialised pollfd
    // structs that lives across the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Ready::default());
        }
        return Err(e);
    }
    let mut ready = Ready::default();
    let mut i = 0;
    if stream.is_some() {
        let r = fds[0].revents;
        ready.readable = r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        ready.writable = r & libc::POLLOUT != 0;
        i = 1;
    }
    if wake.is_some() {
        ready.woken = fds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    }
    Ok(ready)
}
