//! The only layer that touches the operating system (every `unsafe` block of the agent is
//! here, each with its SAFETY line): procfs, sysfs, `/etc` files, `uname`,
//! and the firewall tools' machine-readable output - plus the pure parsers of what they
//! return, each tested on fixtures captured from real machines.
//!
//! Every read is bounded in size, invalid UTF-8 is kept lossily, and nothing here panics on
//! what the system returns. Paths are resolved under a [`fs::Root`], `/` in production and a
//! fixture tree in tests.
//!
//! - `fs`: bounded reads, bounded line iteration, the `Root`.
//! - `procnet`: `/proc/net/{tcp,udp}{,6}`.
//! - `sockdiag`: the same sockets through `NETLINK_SOCK_DIAG`, filtered by the kernel.
//! - `procfd`: socket inode -> owning processes; `/proc/<pid>/exe`.
//! - `accounts`: `/etc/passwd`, `/etc/group`, `/etc/shadow` (no NSS).
//! - `names`: host name lookups pinned to `/etc/hosts` + DNS in static glibc builds.
//! - `osinfo`: os-release, meminfo, mountinfo, kernel command line, `uname(2)`.
//! - `sysfs`: PCI, USB, block and network devices; `hwids`: pci.ids / usb.ids names.
//! - `program`: running a tool directly, with a timeout and an output cap.
//! - `safefile`: opening user-named and data-directory files as trusted tools do (no links
//!   followed, no FIFO blocks, ownership and StrictModes checks).
//!   `safefile::try_lock` is the data directory's `flock`.
//! - `firewall`: `nft -j list ruleset` and `iptables-legacy-save` parsers.
//! - `poll`: `poll(2)` for the MQTT client's IO thread; `signals`: blocking SIGINT/SIGTERM and
//!   `sigwait`; `disk`: free space (`statvfs`) and `access(2)`, for `doctor`.
//! - `sshd`: sshd_config as sshd reads it; `keyvalue`: login.defs, limits.conf.
pub mod accounts;
pub mod audit;
pub mod cnproc;
pub(crate) mod disk;
pub mod ebpf;
pub mod firewall;
pub mod fs;
pub mod hwids;
pub mod keyvalue;
pub mod names;
pub mod netlink;
pub mod osinfo;
pub(crate) mod poll;
pub mod procfd;
pub mod procinfo;
pub mod procnet;
pub mod program;
pub mod safefile;
pub(crate) mod signals;
pub mod sockdiag;
pub mod sshd;
pub mod sysfs;
pub mod tcpdiag;
pub mod utmp;

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
