//! ConnectionCreate: TCP connections to and from the device (SPEC §3).
//!
//! - **Audit** (the main source): rules tagged `twinguard` log successful `connect`, `accept`,
//!   `accept4` and `listen`, `connect` returning `EINPROGRESS` (non-blocking connects), and
//!   successful `socket` calls of the IPv4 and IPv6 families. Each event's records (SYSCALL +
//!   SOCKADDR + PROCTITLE ...) are reassembled. Every connect and accept of a TCP socket is one
//!   event, even when the socket is closed before its records are read:
//!   - *TCP or not* is decided from the records: the `socket` call that made the descriptor
//!     (its type and protocol arguments), else the live socket's protocol name
//!     (`system.sockprotoname`), else `EINPROGRESS` (only stream sockets connect in progress);
//!     for accept, the listening socket's the same way, else the SOCKADDR family. UDP and
//!     non-INET sockets stay out. A connect nothing decides (a socket made before the rules,
//!     closed before it is read) is counted in the status note, not guessed.
//!   - *The remote end* comes from SOCKADDR (for a bare accept, from the socket).
//!   - *The local end* from the socket (fd -> inode via `/proc/<pid>/fd`, then a sock_diag
//!     lookup filtered on the remote end). For accept, when the accepted socket is gone: one
//!     socket (also TIME_WAIT) with that remote end, else the listening socket (accept's a0),
//!     whose local end was read at its `listen` or at an earlier accept - the port, and the
//!     address unless it listens on a wildcard one. What is not known is listed in
//!     `ExtraDetails.Missing` (docs/extra-details.md).
//! - **Polling** (always on beside audit, and the fallback without it): processes that existed
//!   before audit was first enabled are never audited by the kernel, so every few seconds a
//!   sock_diag dump of TCP sockets is compared with the previous one; a connected socket not
//!   seen before and not reported by audit is reported with `ExtraDetails.Source: "poll"`
//!   (owner found through `/proc/<pid>/fd`; direction In when a listening socket has its local
//!   port). Connections shorter than the poll interval escape polling: that is the cost of
//!   having no kernel stream for those processes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::sys::audit::{
    self, Assembler, AuditEvent, SockAddr, AUDIT_PROCTITLE, AUDIT_SOCKADDR, AUDIT_SYSCALL,
};
use crate::sys::fs::Root;
use crate::sys::netlink::{BatchReceived, RecvBatch};
use crate::sys::procfd;
use crate::sys::procinfo::{self, ProcDir};
use crate::sys::procnet::{ProcNetSocket, TcpState, TcpStates};
use crate::sys::sockdiag;
use crate::sys::sockdiag::SockDiag;
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{ConnectionCreate, Direction, EventName, ExtraDetails, Protocol};

use super::audit::{AuditMember, RULE_KEY};
use super::process::{fallback_forced, ring_bytes, SOURCES_VARIABLE};
use super::{CollectError, EventSink, StopSignal, StreamCollector};
use crate::sys::ebpf_connection::{self, ConnectionProbes};

pub(crate) mod ebpf;

/// How often TCP sockets are polled.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How often audit is tried again while polling is the fallback.
const AUDIT_RETRY: Duration = Duration::from_secs(60);
/// Most sockets read in one poll.
const MAX_SOCKETS: usize = 100_000;
/// Audit datagrams taken per receive call.
const RECV_SLOTS: usize = 32;
/// Most new connections reported per poll (a burst beyond is counted, not reported).
const MAX_NEW_PER_POLL: usize = 10_000;

/// The source names in `reported.twinguard`.
pub(crate) const SOURCE_EBPF: &str = "eBPF raw tracepoints (inet_sock_set_state, sys_exit)";
const SOURCE_AUDIT: &str = "audit netlink + sock_diag polling";
const SOURCE_POLL: &str = "sock_diag polling";

/// The connection a SYSCALL event describes, before the socket lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedConnection {
    /// The process.
    pub pid: u32,
    /// Its parent (a child inherits the parent's sockets).
    pub ppid: Option<u32>,
    /// Its real uid.
    pub uid: Option<u32>,
    /// Its executable.
    pub executable: Option<String>,
    /// Its command line from PROCTITLE (at most 128 bytes: the kernel cuts it).
    pub proctitle: Option<String>,
    /// PROCTITLE has the kernel's full 128 bytes: the command line was probably longer.
    pub proctitle_cut: bool,
    /// Out for connect, In for accept.
    pub direction: Direction,
    /// The socket's descriptor in the process (connect's a0, accept's return value).
    pub fd: u64,
    /// For accept: the listening socket's descriptor (a0).
    pub listener: Option<u64>,
    /// The remote end, when the event has a SOCKADDR (accept without an address has none).
    pub remote: Option<(IpAddr, u16, u32)>,
    /// `connect` returned EINPROGRESS.
    pub in_progress: bool,
    /// The syscall's name.
    pub syscall: &'static str,
}

/// A socket a `socket` call created: which process and descriptor, and whether it is TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AuditedSocket {
    /// The process.
    pub pid: u32,
    /// The new descriptor.
    pub fd: u64,
    /// A stream socket of protocol 0, TCP or MPTCP (IPv4 or IPv6).
    pub tcp: bool,
}

/// What one of our audit events says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Audited {
    /// A connect or accept.
    Connection(AuditedConnection),
    /// An IPv4/IPv6 socket was created.
    Socket(AuditedSocket),
    /// A socket started listening: (pid, fd).
    Listen(u32, u64),
}

/// The most bytes of command line a PROCTITLE record carries (the kernel cuts the rest).
const PROCTITLE_MAX: usize = 128;

/// Whether `socket(family, type, protocol)` arguments make a TCP socket: `SOCK_STREAM` (the
/// low 4 bits of the type; `SOCK_NONBLOCK`/`SOCK_CLOEXEC` are flags above) with protocol 0,
/// `IPPROTO_TCP` or `IPPROTO_MPTCP`. SCTP stream sockets (`IPPROTO_SCTP`) are not TCP.
pub(crate) fn socket_args_are_tcp(kind: u64, protocol: u64) -> bool {
    const IPPROTO_MPTCP: u64 = 262;
    kind & 0xf == libc::SOCK_STREAM as u64 && matches!(protocol, 0 | 6 | IPPROTO_MPTCP)
}

/// Reads a reassembled audit event of ours; `None` when the event is not one of ours or not
/// an INET connection or socket (UNIX, netlink ... sockets).
pub(crate) fn audited(event: &AuditEvent) -> Option<Audited> {
    let sys = event.record(AUDIT_SYSCALL)?;
    let f = audit::fields(&sys.body);
    if audit::get(&f, "key").and_then(audit::untrusted).as_deref() != Some(RULE_KEY) {
        return None;
    }
    let nr: u32 = audit::get(&f, "syscall")?.parse().ok()?;
    let exit: i64 = audit::get(&f, "exit")?.parse().ok()?;
    let success = audit::get(&f, "success") == Some("yes");
    let arg = |name: &str| audit::get(&f, name).and_then(|a| u64::from_str_radix(a, 16).ok());
    let pid: u32 = audit::get(&f, "pid")?.parse().ok()?;
    if audit::socket_syscalls().contains(&nr) {
        let family = arg("a0")?;
        if !success || (family != libc::AF_INET as u64 && family != libc::AF_INET6 as u64) {
            return None;
        }
        return Some(Audited::Socket(AuditedSocket {
            pid,
            fd: u64::try_from(exit).ok()?,
            tcp: socket_args_are_tcp(arg("a1")?, arg("a2")?),
        }));
    }
    if audit::listen_syscalls().contains(&nr) {
        return success.then_some(Audited::Listen(pid, arg("a0")?));
    }
    let (direction, fd, listener) = if audit::connect_syscalls().contains(&nr) {
        (Direction::Out, arg("a0")?, None)
    } else if audit::accept_syscalls().contains(&nr) {
        (Direction::In, u64::try_from(exit).ok()?, arg("a0"))
    } else {
        return None;
    };
    let in_progress = direction == Direction::Out && exit == -i64::from(libc::EINPROGRESS);
    if !success && !in_progress {
        return None;
    }
    let remote = match event
        .record(AUDIT_SOCKADDR)
        .and_then(|r| audit::get(&audit::fields(&r.body), "saddr").and_then(audit::parse_sockaddr))
    {
        Some(SockAddr::Inet { ip, port, scope_id }) => Some((ip, port, scope_id)),
        Some(SockAddr::Other(_)) => return None,
        // connect always logs its address; without one this is not a connection we can name.
        None if direction == Direction::Out => return None,
        None => None,
    };
    let proctitle_raw = event
        .record(AUDIT_PROCTITLE)
        .and_then(|r| audit::get(&audit::fields(&r.body), "proctitle").map(str::to_owned));
    Some(Audited::Connection(AuditedConnection {
        pid,
        proctitle_cut: proctitle_raw
            .as_deref()
            .is_some_and(|p| !p.starts_with('"') && p.len() >= 2 * PROCTITLE_MAX),
        ppid: audit::get(&f, "ppid").and_then(|p| p.parse().ok()),
        uid: audit::get(&f, "uid").and_then(|u| u.parse().ok()),
        executable: audit::get(&f, "exe").and_then(audit::untrusted),
        proctitle: event
            .record(AUDIT_PROCTITLE)
            .and_then(|r| audit::get(&audit::fields(&r.body), "proctitle").and_then(audit::proctitle)),
        direction,
        fd,
        listener,
        remote,
        in_progress,
        syscall: audit::syscall_name(nr),
    }))
}

/// The connection of an audit event, if it is one (see [`audited`]).
pub fn audited_connection(event: &AuditEvent) -> Option<AuditedConnection> {
    match audited(event)? {
        Audited::Connection(c) => Some(c),
        Audited::Socket(_) | Audited::Listen(..) => None,
    }
}

/// What the audited `socket`, `accept` and `accept4` calls said about descriptors:
/// (pid, fd) -> TCP or not, the latest call for a descriptor winning. Bounded: past
/// [`SocketKinds::MAX`] descriptors the oldest are forgotten.
#[derive(Debug, Default)]
pub(crate) struct SocketKinds {
    kinds: HashMap<(u32, u64), (bool, u64)>,
    order: std::collections::VecDeque<((u32, u64), u64)>,
    next: u64,
}

impl SocketKinds {
    /// Most descriptors remembered.
    pub const MAX: usize = 65_536;

    /// Notes that `pid`'s descriptor `fd` is now a socket, TCP or not.
    pub fn note(&mut self, pid: u32, fd: u64, tcp: bool) {
        self.next += 1;
        self.kinds.insert((pid, fd), (tcp, self.next));
        self.order.push_back(((pid, fd), self.next));
        while self.order.len() > Self::MAX {
            if let Some((key, seq)) = self.order.pop_front() {
                if self.kinds.get(&key).is_some_and(|(_, s)| *s == seq) {
                    self.kinds.remove(&key);
                }
            }
        }
        // Entries replaced by a later call leave stale ones in `order`: compact now and then.
        if self.order.len() > 2 * self.kinds.len() + 1024 {
            let kinds = &self.kinds;
            self.order
                .retain(|(k, seq)| kinds.get(k).is_some_and(|(_, s)| s == seq));
        }
    }

    /// Whether `pid`'s descriptor `fd` is TCP, as far as audited calls tell; a descriptor
    /// unknown for `pid` is looked up for its parent (a child inherits its parent's sockets).
    pub(crate) fn is_tcp(&self, pid: u32, ppid: Option<u32>, fd: u64) -> Option<bool> {
        self.kinds
            .get(&(pid, fd))
            .or_else(|| ppid.and_then(|pp| self.kinds.get(&(pp, fd))))
            .map(|(tcp, _)| *tcp)
    }
}

/// Whether a socket protocol name (`system.sockprotoname`) is TCP.
pub(crate) fn is_tcp_name(name: &[u8]) -> bool {
    matches!(name, b"TCP" | b"TCPv6" | b"MPTCP" | b"MPTCPv6")
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps; others unchanged.
fn canonical(ip: IpAddr) -> (IpAddr, bool) {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), true),
            None => (ip, false),
        },
        v4 => (v4, false),
    }
}

/// Which way a polled connection goes: In when a listening socket owns its local port.
pub(crate) fn poll_direction(socket: &ProcNetSocket, listening: &[ProcNetSocket]) -> Direction {
    let (local, _) = canonical(socket.local_ip);
    let inbound = listening.iter().any(|l| {
        let (ip, _) = canonical(l.local_ip);
        l.local_port == socket.local_port && (l.local_ip.is_unspecified() || ip == local)
    });
    if inbound {
        Direction::In
    } else {
        Direction::Out
    }
}

/// The state of connection polling: which sockets were seen, and which audit reported.
#[derive(Debug, Default)]
pub(crate) struct ConnectionPoller {
    known: HashSet<u64>,
    /// Inodes audit reported, with the poll count when it did.
    audited: HashMap<u64, u64>,
    polls: u64,
}

impl ConnectionPoller {
    /// Most inodes remembered as reported by audit between two polls.
    const MAX_AUDITED: usize = 65_536;

    /// Notes a socket audit reported, so polling does not report it again.
    pub(crate) fn audited(&mut self, inode: u64) {
        if self.audited.len() < Self::MAX_AUDITED {
            self.audited.insert(inode, self.polls);
        }
    }

    /// Whether audit reported this socket since it was last seen in a dump.
    pub(crate) fn was_audited(&self, inode: u64) -> bool {
        self.audited.contains_key(&inode)
    }

    /// Takes one dump of connected sockets; returns the new connections (none on the first
    /// call: what exists when the agent starts is the baseline, not news). A connect still in
    /// progress (SYN_SENT) or a connection not yet accepted (SYN_RECV, no inode) is reported
    /// once it is established.
    pub fn poll(&mut self, connected: &[ProcNetSocket]) -> Vec<ProcNetSocket> {
        let mut now = HashSet::with_capacity(connected.len());
        let mut new = Vec::new();
        for s in connected {
            if s.inode == 0 || matches!(s.state, TcpState::SynSent | TcpState::SynRecv) {
                continue;
            }
            now.insert(s.inode);
            if self.polls > 0 && !self.known.contains(&s.inode) && !self.audited.contains_key(&s.inode) {
                new.push(s.clone());
            }
        }
        // An audited socket seen in this dump is known from now on; one not seen yet (audit
        // was faster than the dump) is kept for two more polls, then forgotten.
        let polls = self.polls;
        self.audited.retain(|i, at| !now.contains(i) && *at + 2 > polls);
        self.known = now;
        self.polls += 1;
        new
    }
}

/// The source the next run uses.
#[derive(Debug)]
enum Plan {
    /// Not chosen yet: the next run chooses, reports and restarts at once.
    Choose,
    /// The eBPF programs, loaded and attached.
    Ebpf(Box<ConnectionProbes>),
    /// Audit (and polling), because of the reason in `ebpf_note`.
    Audit,
}

/// Which source this machine allows now: the eBPF programs (loaded and attached) or why not.
pub(crate) fn choose_source() -> Result<ConnectionProbes, String> {
    if fallback_forced() {
        return Err(format!("eBPF not tried: {SOURCES_VARIABLE}=fallback"));
    }
    ebpf_connection::load_with_ring(ring_bytes()).map_err(|e| format!("eBPF unavailable: {}", e.chain()))
}

/// The ConnectionCreate stream collector.
#[derive(Debug)]
pub(crate) struct ConnectionCollector {
    status: CollectorStatus,
    plan: Plan,
    /// Why the eBPF source is not in use (shown with the fallback's status).
    ebpf_note: Option<String>,
    /// Why audit could not be used (then polling is the source), until it is tried again.
    audit_failed: Option<(String, Instant)>,
    /// Connections audit named whose socket had closed (or was not TCP-identifiable) before
    /// it could be looked up.
    unresolved: u64,
    /// Polled connections waiting one poll interval for an audit record (inode, item).
    candidates: Vec<(u64, ConnectionCreate)>,
    /// What audited calls said about descriptors (TCP or not).
    kinds: SocketKinds,
    /// Listening sockets' local ends by inode (read again on a miss).
    listeners: HashMap<u64, (IpAddr, u16)>,
    /// Listening sockets' local ends by (pid, fd), as accepts named them.
    listeners_by_fd: HashMap<(u32, u64), (IpAddr, u16)>,
}

impl Default for ConnectionCollector {
    fn default() -> Self {
        ConnectionCollector::new()
    }
}

fn now_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn event_time(ms: i64) -> SystemTime {
    u64::try_from(ms)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or_else(|_| SystemTime::now())
}

fn send(sink: &EventSink, item: ConnectionCreate, wall: SystemTime) {
    match crate::stamp::new_event(EventName::ConnectionCreate, vec![item.into()], wall) {
        Ok(e) => {
            sink.send(e);
        }
        Err(e) => debug!("connection event not built: {e}"),
    }
}

fn scope_name(scope: u32) -> String {
    sockdiag::interface_name(scope).unwrap_or_else(|| scope.to_string())
}

/// The item of a polled connection owned by `pid`.
fn polled_item(s: &ProcNetSocket, pid: Option<u32>, direction: Direction) -> ConnectionCreate {
    let mut extra = ExtraDetails::new();
    let mut missing: Vec<&str> = Vec::new();
    let dir = pid.and_then(|p| ProcDir::open(p).ok());
    let executable = dir
        .as_ref()
        .and_then(|d| d.read_link("exe").ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let (command_line, cut) = dir
        .as_ref()
        .and_then(|d| d.read("cmdline", procinfo::MAX_CMDLINE + 1).ok())
        .filter(|raw| !raw.is_empty())
        .map(|raw| procinfo::join_cmdline(&raw, procinfo::MAX_CMDLINE))
        .map_or((None, false), |(text, cut)| (Some(text), cut));
    if cut {
        extra.insert("Truncated".into(), "CommandLine".into());
    }
    if pid.is_none() {
        missing.push("ProcessId");
    }
    if executable.is_none() {
        missing.push("Executable");
    }
    if command_line.is_none() {
        missing.push("CommandLine");
    }
    let (remote, mapped) = canonical(s.remote_ip);
    if mapped {
        extra.insert("SocketFamily".into(), "IPv6".into());
    }
    if s.ifindex != 0 && matches!(s.remote_ip, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
        extra.insert("ScopeId".into(), scope_name(s.ifindex));
    }
    extra.insert("Source".into(), "poll".into());
    if !missing.is_empty() {
        extra.insert("Missing".into(), missing.join(";"));
    }
    ConnectionCreate {
        remote_address: remote,
        remote_port: s.remote_port.to_string(),
        local_address: Some(canonical(s.local_ip).0),
        local_port: Some(s.local_port.to_string()),
        direction,
        protocol: Protocol::Tcp,
        process_id: pid.unwrap_or(0),
        user_id: Some(s.uid.to_string()),
        executable: executable.unwrap_or_default(),
        command_line,
        extra_details: extra,
    }
}

impl ConnectionCollector {
    /// A collector of this machine's TCP connections.
    pub fn new() -> ConnectionCollector {
        ConnectionCollector {
            status: CollectorStatus::default(),
            plan: Plan::Choose,
            ebpf_note: None,
            audit_failed: None,
            unresolved: 0,
            candidates: Vec::new(),
            kinds: SocketKinds::default(),
            listeners: HashMap::new(),
            listeners_by_fd: HashMap::new(),
        }
    }

    /// Whether an audited connection's socket is TCP: `None` when nothing tells.
    ///
    /// For connect, the `socket` call that made the descriptor (audited since the rules went
    /// in), else the live socket's protocol name, else `EINPROGRESS` (only a stream socket
    /// connects in progress). For accept, the listening socket the same way, else the
    /// SOCKADDR family (only stream sockets accept; INET ones are TCP but for SCTP).
    fn decide_tcp(&self, c: &AuditedConnection, dir: Option<&ProcDir>, fd_name: &str) -> Option<bool> {
        let live = |name: &str| {
            dir.and_then(|d| d.link_xattr(name, "system.sockprotoname").ok())
                .map(|n| is_tcp_name(&n))
        };
        match c.direction {
            Direction::Out => self
                .kinds
                .is_tcp(c.pid, c.ppid, c.fd)
                .or_else(|| live(fd_name))
                .or(c.in_progress.then_some(true)),
            Direction::In => {
                let listener = c.listener?;
                self.kinds
                    .is_tcp(c.pid, c.ppid, listener)
                    .or_else(|| live(&format!("fd/{listener}")))
                    .or_else(|| live(fd_name))
                    .or(c.remote.map(|_| true))
            }
        }
    }

    /// The local end of a listening socket (by inode), from a cache of the listening table
    /// that is read again when an inode is not in it.
    fn listener_end(&mut self, diag: &mut SockDiag, inode: u64) -> Option<(IpAddr, u16)> {
        if let Some(end) = self.listeners.get(&inode) {
            return Some(*end);
        }
        let mut listening = Vec::new();
        let _ = diag.dump_tcp_all(TcpStates::LISTENING, MAX_SOCKETS, &mut listening);
        self.listeners = listening
            .into_iter()
            .filter(|s| s.inode != 0)
            .map(|s| (s.inode, (s.local_ip, s.local_port)))
            .collect();
        self.listeners.get(&inode).copied()
    }

    /// Reads and remembers the local end of `pid`'s listening socket `fd` (`None` when the
    /// process or the socket is gone, or it is not a TCP listener).
    fn note_listener(&mut self, diag: &mut SockDiag, pid: u32, fd: u64) -> Option<(IpAddr, u16)> {
        let inode = ProcDir::open(pid)
            .ok()?
            .read_link(&format!("fd/{fd}"))
            .ok()
            .and_then(|l| procfd::socket_inode(&l))?;
        let end = self.listener_end(diag, inode)?;
        if self.listeners_by_fd.len() >= SocketKinds::MAX {
            self.listeners_by_fd.clear();
        }
        self.listeners_by_fd.insert((pid, fd), end);
        Some(end)
    }

    /// Turns an audited connection into its item, looking up the socket; `None` when it is
    /// not TCP, or when nothing tells whether it is (counted in the status) or who the remote
    /// end is (a bare accept whose socket is gone).
    fn resolve(
        &mut self,
        c: AuditedConnection,
        mut diag: Option<&mut SockDiag>,
        poller: &mut ConnectionPoller,
        audit_id: String,
    ) -> Option<ConnectionCreate> {
        let mut missing: Vec<&str> = Vec::new();
        let mut extra = ExtraDetails::new();
        let dir = ProcDir::open(c.pid).ok();
        let fd_name = format!("fd/{}", c.fd);
        match self.decide_tcp(&c, dir.as_ref(), &fd_name) {
            Some(true) => {}
            Some(false) => return None,
            None => {
                self.unresolved += 1;
                return None;
            }
        }
        if c.direction == Direction::In {
            self.kinds.note(c.pid, c.fd, true);
        }
        let inode = dir
            .as_ref()
            .and_then(|d| d.read_link(&fd_name).ok())
            .and_then(|l| procfd::socket_inode(&l));
        // The local end (and, for accept without an address, the remote end) from the socket.
        // For accept, sockets already closed count too: the remote end of an accepted
        // connection (the client's address and port) names it among TIME_WAIT ones.
        let states = match c.direction {
            Direction::Out => TcpStates::CONNECTED,
            Direction::In => TcpStates::EVER_CONNECTED,
        };
        let mut found: Option<ProcNetSocket> = None;
        let mut same_remote = Vec::new();
        if let Some(diag) = diag.as_deref_mut() {
            let _ = match c.remote {
                Some((ip, port, _)) => {
                    let family = if ip.is_ipv4() {
                        libc::AF_INET
                    } else {
                        libc::AF_INET6
                    } as u8;
                    diag.dump_tcp(family, states, Some((ip, port)), 1024, &mut same_remote)
                }
                None if inode.is_some() => {
                    diag.dump_tcp_all(TcpStates::CONNECTED, MAX_SOCKETS, &mut same_remote)
                }
                None => Ok(0),
            };
            if let Some(inode) = inode {
                found = same_remote.iter().find(|s| s.inode == inode).cloned();
            }
        }
        if let Some(inode) = inode {
            poller.audited(inode);
        }
        let mut listening_end: Option<(IpAddr, u16)> = None;
        if found.is_none() && c.direction == Direction::In {
            // The listening socket (accept's a0) names the local port, and the address unless
            // it listens on a wildcard one; remembered per (pid, fd) for when the process is
            // gone by the time a later accept is read.
            if let Some(l) = c.listener {
                listening_end = self
                    .listeners_by_fd
                    .get(&(c.pid, l))
                    .or_else(|| c.ppid.and_then(|pp| self.listeners_by_fd.get(&(pp, l))))
                    .copied();
                if let (None, Some(diag)) = (listening_end, diag) {
                    listening_end = self.note_listener(diag, c.pid, l);
                }
            }
            // One socket with that remote end (on the listening port, when known) is this one.
            let mut candidates = same_remote
                .iter()
                .filter(|s| listening_end.is_none_or(|(_, port)| s.local_port == port));
            if let (Some(one), None) = (candidates.next(), candidates.next()) {
                found = Some(one.clone());
            }
        }
        let (remote_ip, remote_port, scope) = match (c.remote, &found) {
            (Some(r), _) => r,
            (None, Some(s)) => (s.remote_ip, s.remote_port, 0),
            (None, None) => {
                self.unresolved += 1;
                return None;
            }
        };
        let (remote_ip, mapped) = canonical(remote_ip);
        if mapped {
            extra.insert("SocketFamily".into(), "IPv6".into());
        }
        if scope != 0 {
            extra.insert("ScopeId".into(), scope_name(scope));
        }
        let (local_address, local_port) = match (&found, listening_end) {
            (Some(s), _) => (Some(canonical(s.local_ip).0), Some(s.local_port.to_string())),
            (None, Some((ip, port))) => {
                let address = (!ip.is_unspecified()).then(|| canonical(ip).0);
                if address.is_none() {
                    missing.push("LocalAddress");
                }
                (address, Some(port.to_string()))
            }
            (None, None) => {
                missing.push("LocalAddress");
                missing.push("LocalPort");
                (None, None)
            }
        };
        // The command line from the process when it still runs, else PROCTITLE (cut by the
        // kernel at 128 bytes).
        let (command_line, cut) = match dir
            .as_ref()
            .and_then(|d| d.read("cmdline", procinfo::MAX_CMDLINE + 1).ok())
            .filter(|raw| !raw.is_empty())
        {
            Some(raw) => {
                let (text, cut) = procinfo::join_cmdline(&raw, procinfo::MAX_CMDLINE);
                (Some(text), cut)
            }
            None => (c.proctitle, c.proctitle_cut),
        };
        if command_line.is_none() {
            missing.push("CommandLine");
        }
        if cut {
            extra.insert("Truncated".into(), "CommandLine".into());
        }
        if c.executable.is_none() {
            missing.push("Executable");
        }
        extra.insert("Source".into(), "audit".into());
        extra.insert("Syscall".into(), c.syscall.into());
        extra.insert("AuditEventId".into(), audit_id);
        if c.in_progress {
            extra.insert("InProgress".into(), "true".into());
        }
        if !missing.is_empty() {
            extra.insert("Missing".into(), missing.join(";"));
        }
        Some(ConnectionCreate {
            remote_address: remote_ip,
            remote_port: remote_port.to_string(),
            local_address,
            local_port,
            direction: c.direction,
            protocol: Protocol::Tcp,
            process_id: c.pid,
            user_id: c.uid.map(|u| u.to_string()),
            executable: c.executable.unwrap_or_default(),
            command_line,
            extra_details: extra,
        })
    }

    /// One poll. New connections are looked up at once (their owner is alive now) but reported
    /// at the next poll, and only if audit did not report them meanwhile: the audit record of a
    /// connection can trail the dump that first shows its socket.
    fn poll(&mut self, diag: &mut SockDiag, poller: &mut ConnectionPoller, sink: &EventSink) {
        let wall = SystemTime::now();
        for (inode, item) in std::mem::take(&mut self.candidates) {
            if !poller.was_audited(inode) {
                send(sink, item, wall);
            }
        }
        let mut connected = Vec::new();
        if let Err(e) = diag.dump_tcp_all(TcpStates::CONNECTED, MAX_SOCKETS, &mut connected) {
            debug!("connection poll failed: {e}");
            return;
        }
        let mut new = poller.poll(&connected);
        if new.is_empty() {
            return;
        }
        if new.len() > MAX_NEW_PER_POLL {
            sink.count_losses((new.len() - MAX_NEW_PER_POLL) as u64);
            new.truncate(MAX_NEW_PER_POLL);
        }
        let mut listening = Vec::new();
        let _ = diag.dump_tcp_all(TcpStates::LISTENING, MAX_SOCKETS, &mut listening);
        let wanted: HashSet<u64> = new.iter().map(|s| s.inode).collect();
        let owners = procfd::socket_owners(&Root::system(), &wanted).unwrap_or_default();
        for s in new {
            let pid = owners.owners.get(&s.inode).and_then(|p| p.first().copied());
            let item = polled_item(&s, pid, poll_direction(&s, &listening));
            self.candidates.push((s.inode, item));
        }
    }

    /// Chooses the source and sets the status the supervisor reports before the next run.
    fn choose(&mut self) -> Plan {
        match choose_source() {
            Ok(probes) => {
                self.ebpf_note = None;
                self.status = CollectorStatus {
                    source: SOURCE_EBPF.into(),
                    ..CollectorStatus::default()
                };
                Plan::Ebpf(Box::new(probes))
            }
            Err(why) => {
                self.fall_back(why);
                Plan::Audit
            }
        }
    }

    fn fall_back(&mut self, why: String) {
        warn!("connection events from {SOURCE_AUDIT}: {why}");
        self.ebpf_note = Some(why.clone());
        self.status = CollectorStatus {
            source: SOURCE_AUDIT.into(),
            fallback: true,
            note: Some(why),
            ..CollectorStatus::default()
        };
    }

    fn set_status(&mut self, source: &str, fallback: bool, note: Option<String>) {
        // The audit sources are a fallback of the eBPF one, whose reason comes first.
        let note = match (&self.ebpf_note, note) {
            (Some(why), Some(n)) => Some(format!("{why}; {n}")),
            (Some(why), None) => Some(why.clone()),
            (None, n) => n,
        };
        self.status = CollectorStatus {
            source: source.into(),
            fallback: fallback || self.ebpf_note.is_some(),
            last_error: None,
            losses: 0,
            note,
        };
    }
}

impl StreamCollector for ConnectionCollector {
    fn names(&self) -> &[EventName] {
        &[EventName::ConnectionCreate]
    }

    fn run(&mut self, sink: &EventSink, stop: &StopSignal) -> Result<(), CollectError> {
        // A run uses the plan once: the next start (after Off, or a failure) chooses again.
        match std::mem::replace(&mut self.plan, Plan::Choose) {
            Plan::Choose => {
                self.plan = self.choose();
                Err(CollectError::SourceChanged {
                    source_name: "(choosing)".into(),
                    why: format!("starting on {}", self.status.source),
                })
            }
            Plan::Ebpf(probes) => match ebpf::run(*probes, sink, stop) {
                Ok(()) => Ok(()),
                Err(e @ (ebpf::EbpfStopped::SelfTestFailed { .. } | ebpf::EbpfStopped::SelfTestSetup(_))) => {
                    self.fall_back(format!("eBPF failed its {e}"));
                    self.plan = Plan::Audit;
                    Err(CollectError::SourceChanged {
                        source_name: SOURCE_EBPF.into(),
                        why: e.to_string(),
                    })
                }
                Err(e) => Err(CollectError::Failed {
                    source_name: SOURCE_EBPF.into(),
                    why: e.to_string(),
                }),
            },
            Plan::Audit => {
                // A failure restarts audit (it has its own retries and polling fallback); a
                // stop (Off) makes the next start choose again.
                let result = self.run_audit(sink, stop);
                if result.is_err() {
                    self.plan = Plan::Audit;
                }
                result
            }
        }
    }

    fn status(&self) -> CollectorStatus {
        self.status_with_counts()
    }
}

impl ConnectionCollector {
    /// Audit netlink with sock_diag enrichment and polling (the fallback), until stopped.
    fn run_audit(&mut self, sink: &EventSink, stop: &StopSignal) -> Result<(), CollectError> {
        let mut diag = SockDiag::open().ok();
        let retry_audit = self
            .audit_failed
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= AUDIT_RETRY);
        let mut member = None;
        if retry_audit {
            match AuditMember::join(true) {
                Ok(m) => {
                    if self.audit_failed.take().is_some() {
                        info!("ConnectionCreate: audit is available again");
                    }
                    member = Some(m);
                }
                Err(e) => {
                    let first = self.audit_failed.is_none();
                    self.audit_failed = Some((e.to_string(), Instant::now()));
                    if diag.is_none() {
                        return Err(CollectError::Unavailable {
                            source_name: "audit netlink and sock_diag".into(),
                            why: e.to_string(),
                        });
                    }
                    self.set_status(SOURCE_POLL, true, Some(format!("audit unavailable: {e}")));
                    if first {
                        // Fail this run once, so the supervisor reports the fallback status;
                        // the next run (a second later) polls.
                        return Err(CollectError::Unavailable {
                            source_name: "audit netlink".into(),
                            why: format!("{e}; falling back to sock_diag polling"),
                        });
                    }
                }
            }
        }
        if let Some(m) = &member {
            let mut note = format!("{}; polling every {} s", m.describe(), POLL_INTERVAL.as_secs());
            if !m.rules_in_place() {
                note += "; audit rules could not be added (audit locked?)";
            }
            if let Some(e) = m.last_error() {
                note += &format!("; {e}");
            }
            self.set_status(SOURCE_AUDIT, false, Some(note));
        } else if diag.is_none() {
            return Err(CollectError::Unavailable {
                source_name: "sock_diag".into(),
                why: "cannot open NETLINK_SOCK_DIAG".into(),
            });
        }

        let start = Instant::now();
        let mut poller = ConnectionPoller::default();
        // The baseline, before any record is read: what exists now is not news.
        self.candidates.clear();
        if let Some(d) = diag.as_mut() {
            self.poll(d, &mut poller, sink);
        }
        let mut next_poll = Instant::now() + POLL_INTERVAL;
        let mut assembler = Assembler::default();
        let mut datagrams = RecvBatch::new(RECV_SLOTS, audit::RECV_BUFFER_BYTES);
        let mut waiting = true;
        while !stop.is_stopped() {
            let mut complete = Vec::new();
            if let Some(m) = member.as_mut() {
                match m.recv_batch(&mut datagrams, waiting) {
                    Ok(BatchReceived::Data(n)) => {
                        for (d, _) in datagrams.datagrams() {
                            if let Some(record) =
                                audit::datagram_record(d).and_then(|(k, t)| audit::parse_record(k, t))
                            {
                                complete.extend(assembler.push(record, now_ms(start)));
                            }
                        }
                        // Slots left empty: the socket was drained, so wait rather than
                        // spend a call on finding it empty.
                        waiting = n < RECV_SLOTS;
                    }
                    Ok(BatchReceived::Timeout) => waiting = true,
                    // The count is unknown; one is the least that was lost.
                    Ok(BatchReceived::Overrun) => sink.count_losses(1),
                    Err(e) => {
                        return Err(CollectError::Failed {
                            source_name: "audit netlink".into(),
                            why: format!("receive: {e}"),
                        })
                    }
                }
                complete.extend(assembler.expire(now_ms(start)));
                let lost = m.tick();
                if lost > 0 {
                    sink.count_losses(lost);
                }
            } else {
                std::thread::sleep(Duration::from_millis(200));
                if self
                    .audit_failed
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() >= AUDIT_RETRY)
                {
                    if let Ok(m) = AuditMember::join(true) {
                        drop(m);
                        // Restart on audit, so the supervisor reports the new source.
                        return Err(CollectError::Failed {
                            source_name: SOURCE_POLL.into(),
                            why: "audit became available; restarting on it".into(),
                        });
                    }
                    self.audit_failed = self.audit_failed.take().map(|(e, _)| (e, Instant::now()));
                }
            }
            let mut ready = Vec::new();
            for event in complete {
                let id = event.id();
                let time = event.time_ms;
                match audited(&event) {
                    Some(Audited::Socket(s)) => {
                        self.kinds.note(s.pid, s.fd, s.tcp);
                        self.listeners_by_fd.remove(&(s.pid, s.fd));
                    }
                    Some(Audited::Connection(c)) => {
                        if let Some(item) = self.resolve(c, diag.as_mut(), &mut poller, id) {
                            match crate::stamp::new_event(
                                EventName::ConnectionCreate,
                                vec![item.into()],
                                event_time(time),
                            ) {
                                Ok(e) => ready.push(e),
                                Err(e) => debug!("connection event not built: {e}"),
                            }
                        }
                    }
                    Some(Audited::Listen(pid, fd)) => {
                        if let Some(d) = diag.as_mut() {
                            self.note_listener(d, pid, fd);
                        }
                    }
                    None => {}
                }
            }
            sink.send_all(ready);
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + POLL_INTERVAL;
                if let Some(d) = diag.as_mut() {
                    self.poll(d, &mut poller, sink);
                }
            }
        }
        Ok(())
    }

    fn status_with_counts(&self) -> CollectorStatus {
        let mut s = self.status.clone();
        if self.unresolved > 0 {
            let note = format!(
                "{} connections not reported: closed before their socket could be read, and neither their protocol nor (bare accept) their remote end known from audit",
                self.unresolved
            );
            s.note = Some(match s.note {
                Some(n) => format!("{n}; {note}"),
                None => note,
            });
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::audit::{parse_record, Record};

    fn event(records: &[(u16, &str)]) -> AuditEvent {
        let records: Vec<Record> = records
            .iter()
            .map(|(k, t)| parse_record(*k, format!("audit(1700000000.250:9): {t}").as_bytes()).unwrap())
            .collect();
        AuditEvent {
            serial: 9,
            time_ms: 1_700_000_000_250,
            records,
        }
    }

    const SYS_CONNECT: &str = "arch=c000003e syscall=42 success=yes exit=0 a0=1f a1=7ffc a2=10 a3=0 items=0 ppid=1 pid=321 auid=4294967295 uid=1000 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm=\"curl\" exe=\"/usr/bin/curl\" key=\"twinguard\"";

    #[test]
    fn connect_records_name_the_process_fd_and_remote_end() {
        let sys = SYS_CONNECT.replace("syscall=42", &format!("syscall={}", libc::SYS_connect));
        let e = event(&[
            (AUDIT_SYSCALL, &sys),
            (AUDIT_SOCKADDR, "saddr=020001BBC0000207000000000000000000"),
            (
                AUDIT_PROCTITLE,
                "proctitle=6375726C0068747470733A2F2F6578616D706C65",
            ),
        ]);
        let c = audited_connection(&e).unwrap();
        assert_eq!((c.pid, c.uid, c.fd), (321, Some(1000), 0x1f));
        assert_eq!(c.direction, Direction::Out);
        assert_eq!(c.remote, Some(("192.0.2.7".parse().unwrap(), 443, 0)));
        assert_eq!(c.executable.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(c.proctitle.as_deref(), Some("curl https://example"));
        assert!(!c.in_progress);
        assert_eq!(e.id(), "1700000000.250:9");
    }

    #[test]
    fn in_progress_connects_count_and_other_failures_do_not() {
        let connect = format!("syscall={}", libc::SYS_connect);
        let inprogress = SYS_CONNECT
            .replace("syscall=42", &connect)
            .replace("success=yes exit=0", "success=no exit=-115");
        let e = event(&[
            (AUDIT_SYSCALL, &inprogress),
            (
                AUDIT_SOCKADDR,
                "saddr=0A0001BB00000000000000000000000000000000000000010000000000",
            ),
        ]);
        let c = audited_connection(&e).unwrap();
        assert!(c.in_progress);
        assert_eq!(c.remote.unwrap().0.to_string(), "::1");
        let refused = SYS_CONNECT
            .replace("syscall=42", &connect)
            .replace("success=yes exit=0", "success=no exit=-111");
        assert_eq!(
            audited_connection(&event(&[
                (AUDIT_SYSCALL, &refused),
                (AUDIT_SOCKADDR, "saddr=0200005070000001")
            ])),
            None
        );
    }

    #[test]
    fn foreign_keys_unix_sockets_and_unknown_syscalls_are_ignored() {
        let connect = format!("syscall={}", libc::SYS_connect);
        let sys = SYS_CONNECT.replace("syscall=42", &connect);
        let unix = event(&[
            (AUDIT_SYSCALL, &sys),
            (AUDIT_SOCKADDR, "saddr=01002F6465762F6C6F67"),
        ]);
        assert_eq!(audited_connection(&unix), None);
        let other_key = sys.replace("key=\"twinguard\"", "key=\"net\"");
        assert_eq!(
            audited_connection(&event(&[
                (AUDIT_SYSCALL, &other_key),
                (AUDIT_SOCKADDR, "saddr=0200005070000001")
            ])),
            None
        );
        let read = sys.replace(&connect, "syscall=0");
        assert_eq!(
            audited_connection(&event(&[
                (AUDIT_SYSCALL, &read),
                (AUDIT_SOCKADDR, "saddr=0200005070000001")
            ])),
            None
        );
        assert_eq!(
            audited_connection(&event(&[(AUDIT_SYSCALL, &sys)])),
            None,
            "connect without SOCKADDR"
        );
    }

    #[test]
    fn accept_without_an_address_uses_the_returned_fd() {
        let accept = format!("syscall={}", libc::SYS_accept4);
        let sys = SYS_CONNECT
            .replace("syscall=42", &accept)
            .replace("exit=0", "exit=7");
        let c = audited_connection(&event(&[(AUDIT_SYSCALL, &sys)])).unwrap();
        assert_eq!((c.direction, c.fd, c.remote), (Direction::In, 7, None));
        assert_eq!(c.syscall, "accept4");
    }

    #[test]
    fn captured_connections_are_recognised() {
        if cfg!(target_endian = "big") {
            return;
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/audit/records.bin");
        let bytes = std::fs::read(path).unwrap();
        let mut rest = &bytes[..];
        let mut a = Assembler::default();
        let mut events = Vec::new();
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            if let Some((k, t)) = audit::datagram_record(&rest[4..4 + len]) {
                events.extend(a.push(parse_record(k, t).unwrap(), 0));
            }
            rest = &rest[4 + len..];
        }
        let conns: Vec<AuditedConnection> = events.iter().filter_map(audited_connection).collect();
        let dirs: Vec<(Direction, bool, bool)> = conns
            .iter()
            .map(|c| (c.direction, c.in_progress, c.remote.is_some()))
            .collect();
        // v4 connect, v4 accept4, v6 connect in progress, v6 accept4, UDP connect (dropped
        // later by its protocol name), hex-named connect + accept4, perl connect, bare accept.
        assert_eq!(
            dirs,
            vec![
                (Direction::Out, false, true),
                (Direction::In, false, true),
                (Direction::Out, true, true),
                (Direction::In, false, true),
                (Direction::Out, false, true),
                (Direction::Out, false, true),
                (Direction::In, false, true),
                (Direction::Out, false, true),
                (Direction::In, false, false),
            ]
        );
        assert_eq!(conns[5].executable.as_deref(), Some("/tmp/tg dir/py\"thon"));
    }

    fn sock(local: &str, lport: u16, remote: &str, rport: u16, state: TcpState, inode: u64) -> ProcNetSocket {
        ProcNetSocket {
            local_ip: local.parse().unwrap(),
            local_port: lport,
            remote_ip: remote.parse().unwrap(),
            remote_port: rport,
            state,
            uid: 0,
            inode,
            ifindex: 0,
        }
    }

    #[test]
    fn polling_reports_new_connections_once_and_not_the_baseline_or_audited_ones() {
        let mut p = ConnectionPoller::default();
        let a = sock("10.0.0.2", 40000, "1.1.1.1", 443, TcpState::Established, 100);
        let syn = sock("10.0.0.2", 40001, "1.1.1.1", 443, TcpState::SynSent, 101);
        assert!(p.poll(&[a.clone(), syn.clone()]).is_empty(), "baseline");
        let b = sock("10.0.0.2", 22, "10.0.0.9", 50000, TcpState::Established, 102);
        let c = sock("10.0.0.2", 40002, "8.8.8.8", 53, TcpState::Established, 103);
        p.audited(103);
        let established = sock("10.0.0.2", 40001, "1.1.1.1", 443, TcpState::Established, 101);
        let new = p.poll(&[a.clone(), b.clone(), c.clone(), established.clone()]);
        assert_eq!(new.iter().map(|s| s.inode).collect::<Vec<_>>(), vec![102, 101]);
        assert!(p.poll(&[a, b, c, established]).is_empty(), "reported once");
        let listening = [sock("0.0.0.0", 22, "0.0.0.0", 0, TcpState::Listen, 5)];
        assert_eq!(
            poll_direction(
                &sock("10.0.0.2", 22, "10.0.0.9", 50000, TcpState::Established, 7),
                &listening
            ),
            Direction::In
        );
        assert_eq!(
            poll_direction(
                &sock("10.0.0.2", 40000, "10.0.0.9", 22, TcpState::Established, 8),
                &listening
            ),
            Direction::Out
        );
        let v6_listener = [sock("::", 8080, "::", 0, TcpState::Listen, 5)];
        assert_eq!(
            poll_direction(
                &sock(
                    "::ffff:127.0.0.1",
                    8080,
                    "::ffff:127.0.0.1",
                    5000,
                    TcpState::Established,
                    9
                ),
                &v6_listener
            ),
            Direction::In
        );
    }

    const SYS_SOCKET: &str = "arch=c000003e syscall=41 success=yes exit=5 a0=a a1=80801 a2=0 a3=0 items=0 ppid=1 pid=321 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm=\"curl\" exe=\"/usr/bin/curl\" key=\"twinguard\"";

    #[test]
    fn socket_and_listen_records_are_read_and_udp_sockets_are_not_tcp() {
        let sys = SYS_SOCKET.replace("syscall=41", &format!("syscall={}", libc::SYS_socket));
        assert_eq!(
            audited(&event(&[(AUDIT_SYSCALL, &sys)])),
            Some(Audited::Socket(AuditedSocket {
                pid: 321,
                fd: 5,
                tcp: true
            }))
        );
        let udp = sys.replace("a1=80801", "a1=80002");
        assert!(matches!(
            audited(&event(&[(AUDIT_SYSCALL, &udp)])),
            Some(Audited::Socket(AuditedSocket { tcp: false, .. }))
        ));
        let sctp = sys.replace("a2=0", "a2=84");
        assert!(matches!(
            audited(&event(&[(AUDIT_SYSCALL, &sctp)])),
            Some(Audited::Socket(AuditedSocket { tcp: false, .. }))
        ));
        let unix = sys.replace("a0=a", "a0=1");
        assert_eq!(audited(&event(&[(AUDIT_SYSCALL, &unix)])), None);
        let listen = sys
            .replace(
                &format!("syscall={}", libc::SYS_socket),
                &format!("syscall={}", libc::SYS_listen),
            )
            .replace("exit=5", "exit=0")
            .replace("a0=a", "a0=7");
        assert_eq!(
            audited(&event(&[(AUDIT_SYSCALL, &listen)])),
            Some(Audited::Listen(321, 7))
        );
        let accept = SYS_CONNECT
            .replace("syscall=42", &format!("syscall={}", libc::SYS_accept4))
            .replace("exit=0", "exit=9")
            .replace("a0=1f", "a0=7");
        let c = audited_connection(&event(&[(AUDIT_SYSCALL, &accept)])).unwrap();
        assert_eq!((c.fd, c.listener, c.ppid), (9, Some(7), Some(1)));
    }

    #[test]
    fn socket_kinds_keep_the_latest_call_fall_back_to_the_parent_and_stay_bounded() {
        let mut k = SocketKinds::default();
        k.note(10, 3, true);
        assert_eq!(k.is_tcp(10, None, 3), Some(true));
        k.note(10, 3, false);
        assert_eq!(k.is_tcp(10, None, 3), Some(false), "the descriptor was reused");
        assert_eq!(k.is_tcp(11, Some(10), 3), Some(false), "inherited");
        assert_eq!(k.is_tcp(11, Some(12), 3), None);
        for fd in 0..(SocketKinds::MAX as u64 + 10) {
            k.note(20, fd, true);
        }
        assert!(k.kinds.len() <= SocketKinds::MAX && k.order.len() <= 2 * SocketKinds::MAX + 1024);
        assert_eq!(k.is_tcp(10, None, 3), None, "the oldest are forgotten");
        assert_eq!(k.is_tcp(20, None, SocketKinds::MAX as u64 + 9), Some(true));
    }

    #[test]
    fn protocol_names() {
        assert!(is_tcp_name(b"TCP") && is_tcp_name(b"TCPv6"));
        assert!(!is_tcp_name(b"UDP") && !is_tcp_name(b"UNIX") && !is_tcp_name(b""));
    }
}
