//! Readiness and watchdog notifications to the service manager (systemd's `sd_notify`
//! protocol), without libsystemd.
//!
//! Under a unit with `Type=notify`, systemd passes `$NOTIFY_SOCKET`: an `AF_UNIX` datagram
//! socket, a path or (starting with `@`) a name in the abstract namespace. The agent sends
//! `READY=1` once it runs, `WATCHDOG=1` at least every half of `$WATCHDOG_USEC` while its run
//! loop turns, and `STOPPING=1` when it stops. Without `$NOTIFY_SOCKET` (started by hand, by
//! tests, by another init) every call here does nothing, so callers need no conditions.
//!
//! Failures to notify are not errors of the agent: they are logged at debug level and
//! otherwise ignored (systemd then restarts or times out the unit, which is its job).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The environment variable naming the notification socket.
pub(crate) const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The environment variable holding the watchdog timeout in microseconds.
pub(crate) const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The environment variable naming the process the watchdog is meant for.
pub(crate) const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// Tells the service manager the agent is up (data directory locked, cache open, transport
/// started, first reported properties written).
pub(crate) fn notify_ready() {
    send_logged("READY=1");
}

/// Tells the service manager the agent is alive; call at least every
/// [`watchdog_interval`] while the run loop turns.
pub(crate) fn notify_watchdog() {
    send_logged("WATCHDOG=1");
}

/// Tells the service manager the agent is stopping (a clean stop after SIGTERM/SIGINT).
pub(crate) fn notify_stopping() {
    send_logged("STOPPING=1");
}

/// How often to send [`notify_watchdog`]: half the unit's `WatchdogSec=` (from
/// `$WATCHDOG_USEC`, as systemd's documentation advises), or `None` when no watchdog is
/// configured for this process (no `$NOTIFY_SOCKET`, no or an invalid `$WATCHDOG_USEC`, or
/// `$WATCHDOG_PID` names another process).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    std::env::var_os(NOTIFY_SOCKET_ENV)?;
    let usec = std::env::var(WATCHDOG_USEC_ENV).ok();
    let pid = std::env::var(WATCHDOG_PID_ENV).ok();
    interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// The watchdog interval from the variables' values (pure, for tests).
fn interval_from(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    let usec = usec?.trim().parse::<u64>().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

fn send_logged(state: &str) {
    match send(state) {
        Ok(_) => {}
        Err(e) => tracing::debug!("cannot notify the service manager ({state}): {e}"),
    }
}

/// Sends `state` to `$NOTIFY_SOCKET`; `Ok(false)` when there is no socket to notify.
pub fn send(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return Ok(false);
    };
    send_to(&target.to_string_lossy(), state)?;
    Ok(true)
}

/// Sends `state` as one datagram to the socket `target` (a path, or `@name` for the abstract
/// namespace).
pub(crate) fn send_to(target: &str, state: &str) -> io::Result<()> {
    let addr = socket_addr(target)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other("short write to the notification socket"));
    }
    Ok(())
}

fn socket_addr(target: &str) -> io::Result<SocketAddr> {
    match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None if target.starts_with('/') => SocketAddr::from_pathname(target),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("${NOTIFY_SOCKET_ENV} {target:?} is neither an absolute path nor an @abstract name"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_this_process() {
        assert_eq!(
            interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(interval_from(Some("30000000"), Some("x"), 7), None);
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("soon"), None, 7), None);
        assert_eq!(interval_from(None, Some("7"), 7), None);
        assert_eq!(interval_from(Some("1"), None, 7), Some(Duration::from_millis(1)));
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let path = std::env::temp_dir().join(format!("twinguard-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        let name = format!("twinguard-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn a_relative_target_is_refused() {
        assert!(send_to("run/notify", "READY=1").is_err());
    }
}
