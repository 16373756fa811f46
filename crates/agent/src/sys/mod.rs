//! The only layer that touches the operating system (every `unsafe` block of the agent is
//! here, each with its SAFETY line): procfs, sysfs, `/etc` files, `uname`,
//! and the firewall tools' machine-readable output - plus the pure parsers of what they
//! return, each tested on fixtures captured from real machines.
//!
//! Every read is bounded in size, invalid UTF-8 is kept lossily, and nothing here panics on
//! what the system returns. Paths are resolved under a [`fs::Root`], `/` in production and a
//! fixture tree in tests.
//!
//! Files opened by path, the bounded reader, the atomic write and the termination signals are
//! in `twinguard-os` (`twinguard_os::safefile`, `twinguard_os::signals`), shared with the hub.
//!
//! - `fs`: bounded reads, bounded line iteration, the `Root`.
//! - `procnet`: `/proc/net/{tcp,udp}{,6}`.
//! - `sockdiag`: the same sockets through `NETLINK_SOCK_DIAG`, filtered by the kernel.
//! - `ebpf`: the eBPF process programs (`bpf/process.bpf.o`): loaded and attached with aya,
//!   their ring buffer drained, their per-CPU record counts read; records parsed (pure).
//! - `execfacts`: the exec facts both process sources report (Argv, descriptors 0-2, deleted or
//!   memfd executable, writable directory, container id), pure.
//! - `procfd`: socket inode -> owning processes; `/proc/<pid>/exe`.
//! - `accounts`: `/etc/passwd`, `/etc/group`, `/etc/shadow` (no NSS).
//! - `names`: host name lookups pinned to `/etc/hosts` + DNS in static glibc builds.
//! - `osinfo`: os-release, meminfo, mountinfo, kernel command line, `uname(2)`.
//! - `sysfs`: PCI, USB, block and network devices; `hwids`: pci.ids / usb.ids names.
//! - `program`: running a tool directly, with a timeout and an output cap.
//! - `firewall`: `nft -j list ruleset` and `iptables-legacy-save` parsers.
//! - `poll`: `poll(2)` for the MQTT client's IO thread; `disk`: free space (`statvfs`) and `access(2)`, for `doctor`.
//! - `sshd`: sshd_config as sshd reads it; `keyvalue`: login.defs, limits.conf.
pub mod accounts;
pub mod audit;
pub mod cnproc;
pub(crate) mod disk;
pub mod ebpf;
pub mod ebpf_connection;
pub mod execfacts;
pub mod firewall;
pub mod fs;
pub(crate) mod hwids;
pub(crate) mod keyvalue;
pub mod names;
pub mod netlink;
pub mod osinfo;
pub(crate) mod poll;
pub mod procfd;
pub mod procinfo;
pub mod procnet;
pub mod program;
pub mod sockdiag;
pub mod sshd;
pub mod sysfs;
pub mod utmp;
