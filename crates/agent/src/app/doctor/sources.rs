//! `doctor`: every event source, probed through the same kernel interfaces and functions the
//! collectors use, and judged available, fallback or unavailable - with the reason an
//! operator can act on (a missing capability, audit locked, no `nft`, ...).
//!
//! Probes change nothing on the machine: the process connector is subscribed and released,
//! audit is only asked for its status and joined read-only (never enabled, no rule added), the
//! snapshot collectors run once as `twinguard collect` would.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::collect::{audit::RULE_KEY, connection, process, snapshot_collector};
use crate::sys::audit::{self as sys_audit, AuditSocket, AuditStatus};
use crate::sys::cnproc::ProcConnector;
use crate::sys::firewall::legacy_tables_loaded;
use crate::sys::fs::{read_text, Root};
use crate::sys::procnet::TcpStates;
use crate::sys::sockdiag::SockDiag;
use twinguard_core::event::{EventName, Priority};

/// The audit manager's lock of the running agents (see `collect::audit`).
const AUDIT_LOCK: &str = "/run/twinguard/audit.lock";
/// wtmp and btmp, the Login fallback.
const WTMP: &str = "/var/log/wtmp";
const BTMP: &str = "/var/log/btmp";
/// Present when the kernel's nftables is loaded (rules may exist even without `nft`).
const NF_TABLES_MODULE: &str = "/sys/module/nf_tables";

/// A Linux capability the agent may need, by number (`linux/capability.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Its number.
    pub bit: u32,
    /// Its name.
    pub name: &'static str,
    /// What the agent uses it for.
    pub used_for: &'static str,
}

/// `CAP_DAC_READ_SEARCH`.
pub(crate) const CAP_DAC_READ_SEARCH: Cap = Cap {
    bit: 2,
    name: "CAP_DAC_READ_SEARCH",
    used_for: "/proc/<pid>/fd of other users' processes (socket owners), btmp, restricted files",
};
/// `CAP_NET_ADMIN`.
pub const CAP_NET_ADMIN: Cap = Cap {
    bit: 12,
    name: "CAP_NET_ADMIN",
    used_for: "netlink process connector, nft list ruleset, large netlink receive buffers",
};
/// `CAP_NET_RAW` (not in the service's set: legacy iptables only).
pub(crate) const CAP_NET_RAW: Cap = Cap {
    bit: 13,
    name: "CAP_NET_RAW",
    used_for: "iptables-legacy-save (legacy iptables tables only; not granted by twinguard.service)",
};
/// `CAP_SYS_PTRACE`.
pub(crate) const CAP_SYS_PTRACE: Cap = Cap {
    bit: 19,
    name: "CAP_SYS_PTRACE",
    used_for: "/proc/<pid>/exe and /proc/<pid>/fd of other users' processes",
};
/// `CAP_AUDIT_CONTROL`.
pub const CAP_AUDIT_CONTROL: Cap = Cap {
    bit: 30,
    name: "CAP_AUDIT_CONTROL",
    used_for: "audit status, enabling audit, the ConnectionCreate rules",
};
/// `CAP_AUDIT_READ`.
pub(crate) const CAP_AUDIT_READ: Cap = Cap {
    bit: 37,
    name: "CAP_AUDIT_READ",
    used_for: "reading audit records (multicast group)",
};

/// `CAP_PERFMON`.
pub const CAP_PERFMON: Cap = Cap {
    bit: 38,
    name: "CAP_PERFMON",
    used_for: "eBPF process source (reading kernel memory from tracing programs)",
};
/// `CAP_BPF`.
pub const CAP_BPF: Cap = Cap {
    bit: 39,
    name: "CAP_BPF",
    used_for: "eBPF process source (loading programs, creating maps)",
};

/// The capabilities of SPEC §9 (what `twinguard.service` grants), then `CAP_NET_RAW`.
pub const CAPS: [Cap; 8] = [
    CAP_NET_ADMIN,
    CAP_AUDIT_READ,
    CAP_AUDIT_CONTROL,
    CAP_DAC_READ_SEARCH,
    CAP_SYS_PTRACE,
    CAP_BPF,
    CAP_PERFMON,
    CAP_NET_RAW,
];

/// The effective capabilities of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// This process's effective set (`CapEff` of `/proc/self/status`); empty if unreadable.
    pub fn current() -> Capabilities {
        read_text(Path::new("/proc/self/status"), 64 * 1024)
            .ok()
            .and_then(|t| parse_cap_eff(&t))
            .map_or(Capabilities(0), Capabilities)
    }

    /// Whether `cap` is effective.
    pub fn has(self, cap: Cap) -> bool {
        cap.bit < 64 && self.0 & (1u64 << cap.bit) != 0
    }

    /// `"; missing CAP_X"` when `e` is a permission error and `cap` is not effective.
    fn hint(self, e: &io::Error, cap: Cap) -> String {
        let denied = matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES));
        if denied && !self.has(cap) {
            format!(" (missing {})", cap.name)
        } else {
            String::new()
        }
    }
}

/// The `CapEff` mask of a `/proc/<pid>/status` text (pure).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// What doctor concludes about one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// The agent collects it with its main source.
    Available,
    /// The agent collects it, but from a lesser source or with less detail.
    Fallback,
    /// The agent cannot collect it here.
    Unavailable,
}

impl SourceState {
    /// The word shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Available => "available",
            SourceState::Fallback => "fallback",
            SourceState::Unavailable => "unavailable",
        }
    }
}

/// One row of the table: an event, its priority in force, and its source's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceCheck {
    /// The event.
    pub event: EventName,
    /// Its priority in the configuration in force (Off: not collected, not judged).
    pub priority: Priority,
    /// The source's state.
    pub state: SourceState,
    /// The source the agent would use (as `reported.twinguard.collectors` names it).
    pub via: String,
    /// Why it is a fallback or unavailable, or a note.
    pub why: String,
}

/// What the audit probe found.
#[derive(Debug)]
struct AuditProbe {
    /// Whether a collector can join the audit session (read records), or why not.
    readable: Result<String, String>,
    /// Whether ConnectionCreate's rules can be in place, or why not.
    rules: Result<(), String>,
    /// Whether records will flow (audit enabled, or enabled by the agent), or why not.
    flowing: Result<(), String>,
}

/// Whether another process holds the audit manager's lock (a running twinguard). Read from
/// `/proc/locks`, not by trying the lock: a try would make an agent starting at that moment
/// believe another one manages audit.
fn audit_managed_elsewhere() -> bool {
    let Ok(meta) = crate::sys::fs::metadata(Path::new(AUDIT_LOCK)) else {
        return false;
    };
    read_text(Path::new("/proc/locks"), 1024 * 1024)
        .map(|locks| flock_holders(&locks, meta.ino()).next().is_some())
        .unwrap_or(false)
}

/// The pids holding a `flock` lock on the file with inode `inode`, from `/proc/locks` text
/// (`1: FLOCK  ADVISORY  WRITE 1234 fe:00:5366328 0 EOF`; pure).
pub(crate) fn flock_holders(locks: &str, inode: u64) -> impl Iterator<Item = u32> + '_ {
    locks.lines().filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Blocked waiters are listed as `1: -> FLOCK ...`: they hold nothing.
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let ino = fields.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (ino == inode).then(|| fields.get(4)?.parse().ok())?
    })
}

fn probe_audit(caps: Capabilities) -> AuditProbe {
    let unavailable = |why: String| AuditProbe {
        readable: Err(why.clone()),
        rules: Err(why.clone()),
        flowing: Err(why),
    };
    let mut control = match AuditSocket::open(false) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
            return unavailable("the kernel has no audit support (CONFIG_AUDIT)".into())
        }
        Err(e) => return unavailable(format!("audit netlink: {e}")),
    };
    let status: Result<AuditStatus, String> = control
        .status()
        .map_err(|e| format!("audit status: {e}{}", caps.hint(&e, CAP_AUDIT_CONTROL)));
    let elsewhere = audit_managed_elsewhere();
    let multicast = AuditSocket::open(true).map(drop);

    let readable = match (&multicast, &status) {
        (Ok(()), Ok(s)) if s.pid != 0 => Ok(format!(
            "audit netlink (read-only multicast group; pid {} is the audit daemon)",
            s.pid
        )),
        (Ok(()), _) => Ok("audit netlink (read-only multicast group)".into()),
        // Without the multicast group a member can still register as the audit daemon when
        // audit is off and nobody else is (see `collect::audit`).
        (Err(_), Ok(s)) if s.enabled == 0 && s.pid == 0 && !elsewhere => {
            Ok("audit netlink (as the audit daemon)".into())
        }
        (Err(e), _) => Err(format!(
            "audit records cannot be read: {e}{}",
            caps.hint(e, CAP_AUDIT_READ)
        )),
    };
    let rules = if elsewhere {
        Ok(())
    } else {
        match &status {
            Err(e) => Err(format!("audit rules cannot be added: {e}")),
            Ok(s) if s.enabled == 2 => {
                let ours = control
                    .list_rules()
                    .map(|rules| {
                        rules
                            .iter()
                            .any(|r| sys_audit::rule_key(r).as_deref() == Some(RULE_KEY))
                    })
                    .unwrap_or(false);
                if ours {
                    Ok(())
                } else {
                    Err("audit is locked (enabled=2, until reboot): the ConnectionCreate rules cannot be added".into())
                }
            }
            Ok(_) => Ok(()),
        }
    };
    let flowing = match &status {
        // On, or off now and enabled by the agent (it may: the status was readable).
        Ok(_) => Ok(()),
        Err(e) if elsewhere => Err(format!("{e}; another twinguard manages audit")),
        Err(e) => Err(format!(
            "whether audit is enabled is unknown ({e}): records come only if something else enabled it"
        )),
    };
    AuditProbe {
        readable,
        rules,
        flowing,
    }
}

/// The process source the collector would choose: the eBPF programs are loaded, attached and
/// released (nothing stays behind), else the process connector is subscribed and released.
fn probe_process(caps: Capabilities) -> (SourceState, String, String) {
    let why_not_ebpf = match process::choose_source() {
        Ok(_probes) => return (SourceState::Available, process::SOURCE_EBPF.into(), String::new()),
        Err(why) if why.contains("Operation not permitted") && !caps.has(CAP_BPF) => {
            format!("{why} (missing {}, {})", CAP_BPF.name, CAP_PERFMON.name)
        }
        Err(why) => why,
    };
    match ProcConnector::subscribe(Duration::from_millis(250)) {
        Ok(_subscription) => (SourceState::Fallback, process::SOURCE.into(), why_not_ebpf),
        Err(e) => (
            SourceState::Unavailable,
            process::SOURCE.into(),
            format!(
                "{why_not_ebpf}; netlink proc connector: {e}{}",
                caps.hint(&e, CAP_NET_ADMIN)
            ),
        ),
    }
}

fn probe_sock_diag() -> Result<(), String> {
    let mut diag = SockDiag::open().map_err(|e| format!("sock_diag: {e}"))?;
    let mut sockets = Vec::new();
    diag.dump_tcp_all(TcpStates::LISTENING, 1, &mut sockets)
        .map(drop)
        .map_err(|e| format!("sock_diag: {e}"))
}

/// The connection source the collector would choose: the eBPF programs (loaded, attached and
/// released), else audit with polling, else polling.
fn probe_connections(audit: &AuditProbe, caps: Capabilities) -> (SourceState, String, String) {
    let why_not_ebpf = match connection::choose_source() {
        Ok(_probes) => {
            return (
                SourceState::Available,
                connection::SOURCE_EBPF.into(),
                String::new(),
            )
        }
        Err(why) if why.contains("Operation not permitted") && !caps.has(CAP_BPF) => {
            format!("{why} (missing {}, {})", CAP_BPF.name, CAP_PERFMON.name)
        }
        Err(why) => why,
    };
    let (state, via, why) = probe_connections_fallback(audit);
    let state = match state {
        SourceState::Available => SourceState::Fallback,
        other => other,
    };
    let why = if why.is_empty() {
        why_not_ebpf
    } else {
        format!("{why_not_ebpf}; {why}")
    };
    (state, via, why)
}

fn probe_connections_fallback(audit: &AuditProbe) -> (SourceState, String, String) {
    let diag = probe_sock_diag();
    let audit_ok = audit
        .readable
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|_| audit.rules.clone())
        .and_then(|()| audit.flowing.clone());
    match (audit_ok, diag) {
        (Ok(()), Ok(())) => (
            SourceState::Available,
            "audit netlink + sock_diag polling".into(),
            String::new(),
        ),
        (Err(why), Ok(())) => (
            SourceState::Fallback,
            "sock_diag polling".into(),
            format!("{why}; connections shorter than the 2 s poll interval are missed"),
        ),
        (Ok(()), Err(why)) => (
            SourceState::Fallback,
            "audit netlink + sock_diag polling".into(),
            format!("{why}: local ends and pre-existing connections unknown"),
        ),
        (Err(a), Err(d)) => (SourceState::Unavailable, String::new(), format!("{a}; {d}")),
    }
}

fn probe_login(audit: &AuditProbe, caps: Capabilities) -> (SourceState, String, String) {
    let audit_ok = audit
        .readable
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|_| audit.flowing.clone());
    let why = match audit_ok {
        Ok(()) => {
            return (
                SourceState::Available,
                "audit netlink (USER_AUTH, USER_LOGIN)".into(),
                String::new(),
            )
        }
        Err(why) => why,
    };
    for path in [WTMP, BTMP] {
        match File::open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return (
                    SourceState::Unavailable,
                    "wtmp/btmp".into(),
                    format!("{why}; {path}: {e}{}", caps.hint(&e, CAP_DAC_READ_SEARCH)),
                )
            }
        }
    }
    (
        SourceState::Fallback,
        "wtmp/btmp".into(),
        format!("{why}; following {WTMP} and {BTMP} instead (no failed logins of programs that log only to audit)"),
    )
}

/// Runs a snapshot collector once and judges its result and status.
fn probe_snapshot(name: EventName, caps: Capabilities) -> (SourceState, String, String) {
    let Some(mut collector) = snapshot_collector(name) else {
        return (
            SourceState::Unavailable,
            String::new(),
            "no collector in this build".into(),
        );
    };
    let result = collector.collect();
    let status = collector.status();
    let note = status.note.clone().unwrap_or_default();
    match result {
        Err(e) => {
            let text = e.to_string();
            let mut why = text.clone();
            let denied = text.contains("Permission denied")
                || text.contains("Operation not permitted")
                || text.contains("must be root");
            if denied && name == EventName::FirewallConfiguration {
                let (v4, v6) = legacy_tables_loaded(&Root::system());
                if (v4 || v6) && !caps.has(CAP_NET_RAW) {
                    why += "; legacy iptables tables are loaded and iptables-legacy-save needs CAP_NET_RAW (not granted by twinguard.service: add it with a drop-in, or move the rules to nftables)";
                } else if !caps.has(CAP_NET_ADMIN) {
                    why += &format!(" (missing {})", CAP_NET_ADMIN.name);
                }
            }
            (SourceState::Unavailable, status.source, why)
        }
        Ok(_) if name == EventName::FirewallConfiguration && status.source.is_empty() => {
            if Path::new(NF_TABLES_MODULE).exists() {
                (
                    SourceState::Unavailable,
                    String::new(),
                    "nf_tables is loaded but nft is not installed, so its rules cannot be read (apt install nftables)".into(),
                )
            } else {
                (
                    SourceState::Available,
                    String::new(),
                    "no firewall in use (no nftables, no legacy iptables tables): snapshots are empty".into(),
                )
            }
        }
        // Works here, but only thanks to a capability the packaged service does not have.
        Ok(_)
            if name == EventName::FirewallConfiguration
                && status.source.contains("iptables-legacy-save")
                && caps.has(CAP_NET_RAW) =>
        {
            let why = "legacy iptables tables are read with CAP_NET_RAW, which twinguard.service does not grant: under the service this source is unavailable unless a drop-in adds it".to_owned();
            (SourceState::Available, status.source, why)
        }
        Ok(_) if status.fallback => (SourceState::Fallback, status.source, note),
        // Descriptors of other users' processes unreadable: without these capabilities the
        // owners of sockets stay unknown (with them, only a process that just exited is).
        Ok(_)
            if note.contains("unreadable")
                && !(caps.has(CAP_SYS_PTRACE) && caps.has(CAP_DAC_READ_SEARCH)) =>
        {
            let mut why = note;
            for cap in [CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH] {
                if !caps.has(cap) {
                    why += &format!(" (missing {})", cap.name);
                }
            }
            (SourceState::Fallback, status.source, why)
        }
        Ok(_) => (SourceState::Available, status.source, note),
    }
}

/// Probes every source, in the order of the table.
pub(crate) fn examine_sources(
    priority: impl Fn(EventName) -> Priority,
    caps: Capabilities,
) -> Vec<SourceCheck> {
    let mut rows = Vec::new();
    let mut push = |event: EventName, (state, via, why): (SourceState, String, String)| {
        rows.push(SourceCheck {
            event,
            priority: priority(event),
            state,
            via,
            why,
        });
    };
    let process = probe_process(caps);
    push(EventName::ProcessCreate, process.clone());
    push(EventName::ProcessTerminate, process);
    let audit = probe_audit(caps);
    push(EventName::ConnectionCreate, probe_connections(&audit, caps));
    push(EventName::Login, probe_login(&audit, caps));
    for name in EventName::SECURITY_SNAPSHOTS {
        push(name, probe_snapshot(name, caps));
    }
    rows
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_come_from_the_status_text() {
        let status = "Name:\ttwinguard\nCapInh:\t0000000000000000\nCapPrm:\t0000002040081004\nCapEff:\t0000002040081004\n";
        let caps = Capabilities(parse_cap_eff(status).unwrap());
        for cap in [
            CAP_NET_ADMIN,
            CAP_AUDIT_READ,
            CAP_AUDIT_CONTROL,
            CAP_DAC_READ_SEARCH,
            CAP_SYS_PTRACE,
        ] {
            assert!(caps.has(cap), "{}", cap.name);
        }
        assert!(!caps.has(CAP_NET_RAW));
        assert_eq!(parse_cap_eff("CapPrm:\t1\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn lock_holders_come_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 23040 fe:00:5366328 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 23041 fe:00:5366328 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 fe:00:5366328 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 777 fe:00:10133507 0 EOF\n";
        assert_eq!(flock_holders(locks, 5366328).collect::<Vec<_>>(), vec![23040]);
        assert_eq!(flock_holders(locks, 10133507).collect::<Vec<_>>(), vec![777]);
        assert_eq!(flock_holders(locks, 1).count(), 0);
        assert_eq!(flock_holders("garbage\n1: FLOCK\n", 1).count(), 0);
    }

    #[test]
    fn hints_name_a_missing_capability_only_for_permission_errors() {
        let none = Capabilities(0);
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(none.hint(&eperm, CAP_NET_ADMIN), " (missing CAP_NET_ADMIN)");
        let all = Capabilities(u64::MAX);
        assert_eq!(all.hint(&eperm, CAP_NET_ADMIN), "");
        let other = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(none.hint(&other, CAP_NET_ADMIN), "");
    }
}
