//! `twinguard-os`: the OS access the agent and the hub share, so neither keeps its own copy.
//! Every `unsafe` block here has its SAFETY line.
//!
//! - `safefile`: opening user-named and data-directory files as trusted tools do (no links
//!   followed, no FIFO blocks, ownership and StrictModes checks), the one bounded reader
//!   (`read_limited`) and the one atomic write (temporary `O_EXCL` file, fsync, `renameat`,
//!   directory fsync); `try_lock` is a data directory's `flock`.
//! - `signals`: blocking SIGINT/SIGTERM and taking them with `sigwait(2)`.
//! - `tls`: the TLS client configuration (system roots plus a private CA, optional client
//!   certificate) of every outgoing TLS connection.
//! - [`euid`]: the effective user id.
pub mod safefile;
pub mod signals;
pub mod tls;

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
