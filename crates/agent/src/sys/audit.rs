//! Linux audit over netlink (`NETLINK_AUDIT`): the status and rule messages (linux/audit.h)
//! the agent sends, the text records the kernel sends back, and the reassembly of multi-record
//! events (SYSCALL + SOCKADDR + PROCTITLE + ... + EOE, all sharing one serial number).
//!
//! Everything but [`AuditSocket`] is pure and works on bytes or text, so it is tested on
//! records captured from a real kernel (`tests/fixtures/audit/`) and fuzzed with proptest.
//!
//! Record text is `audit(<sec>.<ms>:<serial>): key=value ...`. Values are bare, `"quoted"`,
//! or - for strings a process controls (exe, comm, acct, proctitle ...) whenever they hold a
//! space, quote or control character - hex-encoded without quotes. User-space messages
//! (PAM's USER_AUTH ...) carry a second level inside `msg='...'`.
//!
//! One kernel quirk matters: a record sent to the audit daemon (unicast) has `nlmsg_len` set to
//! the length of the text alone, not of the whole message; one sent to the read-only multicast
//! group has the standard length. So a record's text is taken from the datagram, not from
//! `nlmsg_len`: the kernel sends one record per datagram.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::netlink::{
    self, BatchReceived, NetlinkSocket, Received, RecvBatch, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_REQUEST,
};

/// `NETLINK_AUDIT`.
const NETLINK_AUDIT: libc::c_int = 9;
/// `AUDIT_NLGRP_READLOG`: the read-only multicast group (needs `CAP_AUDIT_READ`).
pub(crate) const NLGRP_READLOG: u32 = 1;

/// `AUDIT_GET`: read the status.
pub(crate) const AUDIT_GET: u16 = 1000;
/// `AUDIT_SET`: change the status (enabled, daemon pid, backlog limit ...).
pub(crate) const AUDIT_SET: u16 = 1001;
/// `AUDIT_ADD_RULE`.
pub(crate) const AUDIT_ADD_RULE: u16 = 1011;
/// `AUDIT_DEL_RULE`.
pub(crate) const AUDIT_DEL_RULE: u16 = 1012;
/// `AUDIT_LIST_RULES`.
pub(crate) const AUDIT_LIST_RULES: u16 = 1013;
/// `AUDIT_USER_AUTH`: a user-space authentication attempt (PAM).
pub(crate) const AUDIT_USER_AUTH: u16 = 1100;
/// `AUDIT_USER_LOGIN`: a user-space login (sshd, login).
pub(crate) const AUDIT_USER_LOGIN: u16 = 1112;
/// `AUDIT_SYSCALL`: the syscall record of an event.
pub(crate) const AUDIT_SYSCALL: u16 = 1300;
/// `AUDIT_SOCKADDR`: the socket address a syscall passed or returned.
pub(crate) const AUDIT_SOCKADDR: u16 = 1306;
/// `AUDIT_EOE`: the end of a multi-record event.
pub(crate) const AUDIT_EOE: u16 = 1320;
/// `AUDIT_PROCTITLE`: the process's command line (hex, NUL-separated, at most 128 bytes).
pub(crate) const AUDIT_PROCTITLE: u16 = 1327;

/// `AUDIT_STATUS_*` bits of [`AuditStatus`] fields to change.
pub(crate) const STATUS_ENABLED: u32 = 0x1;
/// The daemon pid.
pub(crate) const STATUS_PID: u32 = 0x4;
/// The backlog limit.
pub(crate) const STATUS_BACKLOG_LIMIT: u32 = 0x10;

/// Rule fields (`AUDIT_ARCH` ...) and the operator we use.
const FIELD_ARCH: u32 = 11;
const FIELD_EXIT: u32 = 103;
const FIELD_SUCCESS: u32 = 104;
const FIELD_FILTERKEY: u32 = 210;
/// `AUDIT_ARG0`: the syscall's first argument.
const FIELD_ARG0: u32 = 200;
const OP_EQUAL: u32 = 0x4000_0000;
/// `AUDIT_FILTER_EXIT`, `AUDIT_ALWAYS`.
const FILTER_EXIT: u32 = 0x04;
const ACTION_ALWAYS: u32 = 2;
/// `AUDIT_BITMASK_SIZE`, `AUDIT_MAX_FIELDS`.
const BITMASK_WORDS: usize = 64;
const MAX_FIELDS: usize = 64;
/// Offset of `buflen` / `buf` in `struct audit_rule_data`.
const RULE_BUFLEN_AT: usize = 12 + 4 * (BITMASK_WORDS + 3 * MAX_FIELDS);
const RULE_BUF_AT: usize = RULE_BUFLEN_AT + 4;
/// Rule fields whose value is a string in `buf` (linux/audit.h: SUBJ_*/OBJ_* LSM fields,
/// WATCH, DIR, EXE, FILTERKEY), in the order the kernel packs them.
const STRING_FIELDS: [u32; 14] = [13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 105, 107, 112, 210];

/// The audit architecture of this build's native syscalls (`AUDIT_ARCH_*`).
pub const fn native_arch() -> u32 {
    if cfg!(target_arch = "x86_64") {
        0xC000_003E
    } else if cfg!(target_arch = "aarch64") {
        0xC000_00B7
    } else if cfg!(target_arch = "riscv64") {
        0xC000_00F3
    } else if cfg!(target_arch = "arm") {
        0x4000_0028
    } else if cfg!(target_arch = "x86") {
        0x4000_0003
    } else {
        0
    }
}

/// The syscall numbers of `connect` on this architecture.
pub(crate) fn connect_syscalls() -> Vec<u32> {
    vec![libc::SYS_connect as u32]
}

/// The syscall number of `socket` on this architecture.
pub(crate) fn socket_syscalls() -> Vec<u32> {
    vec![libc::SYS_socket as u32]
}

/// The syscall number of `listen` on this architecture.
pub(crate) fn listen_syscalls() -> Vec<u32> {
    vec![libc::SYS_listen as u32]
}

/// The syscall numbers of `accept` and `accept4` on this architecture (32-bit x86 has only
/// `accept4` as a direct syscall).
pub(crate) fn accept_syscalls() -> Vec<u32> {
    #[cfg(not(target_arch = "x86"))]
    {
        vec![libc::SYS_accept as u32, libc::SYS_accept4 as u32]
    }
    #[cfg(target_arch = "x86")]
    {
        vec![libc::SYS_accept4 as u32]
    }
}

/// The name of a connection syscall number, for `ExtraDetails.Syscall`.
pub(crate) fn syscall_name(nr: u32) -> &'static str {
    if connect_syscalls().contains(&nr) {
        "connect"
    } else if socket_syscalls().contains(&nr) {
        "socket"
    } else if listen_syscalls().contains(&nr) {
        "listen"
    } else if nr == libc::SYS_accept4 as u32 {
        "accept4"
    } else if accept_syscalls().contains(&nr) {
        "accept"
    } else {
        "other"
    }
}

/// `struct audit_status` (the fields we use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AuditStatus {
    /// 0 off, 1 on, 2 on and locked (no change until reboot).
    pub enabled: u32,
    /// What the kernel does when it must drop records (0 silent, 1 printk, 2 panic).
    pub failure: u32,
    /// The registered audit daemon's pid, 0 when none.
    pub pid: u32,
    /// Records per second, 0 unlimited.
    pub rate_limit: u32,
    /// Most records queued for the daemon.
    pub backlog_limit: u32,
    /// Records the kernel lost since boot.
    pub lost: u32,
    /// Records queued now.
    pub backlog: u32,
}

/// Reads a status reply (the first 7 fields after `mask`; later kernels append more).
pub(crate) fn decode_status(b: &[u8]) -> Option<AuditStatus> {
    let f = |i: usize| netlink::u32_at(b, 4 * i);
    Some(AuditStatus {
        enabled: f(1)?,
        failure: f(2)?,
        pid: f(3)?,
        rate_limit: f(4)?,
        backlog_limit: f(5)?,
        lost: f(6)?,
        backlog: f(7)?,
    })
}

/// An `AUDIT_SET` payload changing the fields named in `mask`.
pub(crate) fn encode_status(mask: u32, s: &AuditStatus) -> Vec<u8> {
    let words = [
        mask,
        s.enabled,
        s.failure,
        s.pid,
        s.rate_limit,
        s.backlog_limit,
        0,
        0,
        0,
        0,
        0,
    ];
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// An exit-filter rule that always logs: syscalls, field conditions (all `==`), and a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Syscall numbers.
    pub syscalls: Vec<u32>,
    /// Conditions (field, value), in order.
    pub fields: Vec<(u32, u32)>,
    /// The key (`-k`), which tags the records the rule makes.
    pub key: String,
}

impl Rule {
    /// `-a exit,always -F arch=<native> -S <syscalls> -F success=1 -k <key>`.
    pub fn successful(syscalls: Vec<u32>, key: &str) -> Rule {
        Rule {
            syscalls,
            fields: vec![(FIELD_ARCH, native_arch()), (FIELD_SUCCESS, 1)],
            key: key.to_owned(),
        }
    }

    /// `-a exit,always -F arch=<native> -S <syscalls> -F a0=<a0> -F success=1 -k <key>`.
    pub(crate) fn successful_with_a0(syscalls: Vec<u32>, a0: u32, key: &str) -> Rule {
        Rule {
            syscalls,
            fields: vec![(FIELD_ARCH, native_arch()), (FIELD_ARG0, a0), (FIELD_SUCCESS, 1)],
            key: key.to_owned(),
        }
    }

    /// `-a exit,always -F arch=<native> -S <syscalls> -F exit=-<errno> -k <key>`.
    pub(crate) fn failing_with(syscalls: Vec<u32>, errno: i32, key: &str) -> Rule {
        Rule {
            syscalls,
            // The kernel compares the return value as a u32: -115 is 0xFFFFFF8D.
            fields: vec![(FIELD_ARCH, native_arch()), (FIELD_EXIT, (-errno) as u32)],
            key: key.to_owned(),
        }
    }

    /// The `struct audit_rule_data` bytes (for `AUDIT_ADD_RULE` / `AUDIT_DEL_RULE`).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let key = self.key.as_bytes();
        let mut b = vec![0u8; RULE_BUF_AT];
        let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut b, 0, FILTER_EXIT);
        put(&mut b, 4, ACTION_ALWAYS);
        let mut fields: Vec<(u32, u32)> = self.fields.clone();
        fields.push((FIELD_FILTERKEY, key.len() as u32));
        fields.truncate(MAX_FIELDS);
        put(&mut b, 8, fields.len() as u32);
        for &nr in &self.syscalls {
            let word = nr as usize / 32;
            if word < BITMASK_WORDS {
                let at = 12 + 4 * word;
                let old = netlink::u32_at(&b, at).unwrap_or(0);
                put(&mut b, at, old | 1 << (nr % 32));
            }
        }
        let fields_at = 12 + 4 * BITMASK_WORDS;
        let values_at = fields_at + 4 * MAX_FIELDS;
        let flags_at = values_at + 4 * MAX_FIELDS;
        for (i, (field, value)) in fields.iter().enumerate() {
            put(&mut b, fields_at + 4 * i, *field);
            put(&mut b, values_at + 4 * i, *value);
            put(&mut b, flags_at + 4 * i, OP_EQUAL);
        }
        put(&mut b, RULE_BUFLEN_AT, key.len() as u32);
        b.extend_from_slice(key);
        b
    }
}

/// The key of a rule as `AUDIT_LIST_RULES` returns it (`struct audit_rule_data`), if it has
/// one. String fields are packed into `buf` in field order, each `value` bytes long.
pub(crate) fn rule_key(b: &[u8]) -> Option<String> {
    let count = (netlink::u32_at(b, 8)? as usize).min(MAX_FIELDS);
    let buflen = netlink::u32_at(b, RULE_BUFLEN_AT)? as usize;
    let buf = b.get(RULE_BUF_AT..RULE_BUF_AT.checked_add(buflen)?)?;
    let fields_at = 12 + 4 * BITMASK_WORDS;
    let values_at = fields_at + 4 * MAX_FIELDS;
    let mut offset = 0usize;
    for i in 0..count {
        let field = netlink::u32_at(b, fields_at + 4 * i)?;
        if !STRING_FIELDS.contains(&field) {
            continue;
        }
        let len = netlink::u32_at(b, values_at + 4 * i)? as usize;
        let text = buf.get(offset..offset.checked_add(len)?)?;
        if field == FIELD_FILTERKEY {
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        offset += len;
    }
    None
}

/// One audit record, its text kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record type (`AUDIT_SYSCALL` ...).
    pub kind: u16,
    /// The event's serial number: records of one event share it.
    pub serial: u64,
    /// The event's time, milliseconds since the epoch.
    pub time_ms: i64,
    /// The text after `audit(...): `, lossily decoded.
    pub body: String,
}

/// Most bytes of record text kept (the kernel's own maximum is 8970).
pub(crate) const MAX_RECORD: usize = 9000;
/// A buffer that holds any one audit datagram (a record of at most 8970 bytes + header).
pub(crate) const RECV_BUFFER_BYTES: usize = 12 * 1024;

/// The record type and text of one datagram from the audit socket, handling the `nlmsg_len`
/// quirk (see the module doc). `None` for non-record messages (replies, acks).
pub(crate) fn datagram_record(d: &[u8]) -> Option<(u16, &[u8])> {
    let kind = netlink::u16_at(d, 4)?;
    if !(1100..3000).contains(&kind) {
        return None;
    }
    let body = d.get(netlink::NLMSG_HDR..)?;
    let end = body
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(body.len())
        .min(MAX_RECORD);
    Some((kind, &body[..end]))
}

/// Parses a record's text: `audit(1700000000.123:456): rest`.
pub(crate) fn parse_record(kind: u16, text: &[u8]) -> Option<Record> {
    let text = text.get(..text.len().min(MAX_RECORD))?;
    let rest = text.strip_prefix(b"audit(")?;
    let close = rest.iter().position(|&b| b == b')')?;
    let stamp = std::str::from_utf8(&rest[..close]).ok()?;
    let (time, serial) = stamp.split_once(':')?;
    let (secs, millis) = time.split_once('.')?;
    let secs: i64 = secs.parse().ok()?;
    let millis: i64 = millis.parse().ok()?;
    let body = rest.get(close + 1..)?;
    let body = body.strip_prefix(b":").unwrap_or(body);
    Some(Record {
        kind,
        serial: serial.parse().ok()?,
        time_ms: secs.checked_mul(1000)?.checked_add(millis)?,
        body: String::from_utf8_lossy(body).trim().to_owned(),
    })
}

/// The `key=value` pairs of a record body, values raw (quotes kept). A value is `"..."`,
/// `'...'` or runs to the next space. Malformed text ends the list; nothing panics.
pub fn fields(body: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() && out.len() < 256 {
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        if key.contains(' ') {
            // A bare word (some records have them, e.g. `audit_enabled`); skip it.
            rest = rest[key.find(' ').map_or(rest.len(), |i| i + 1)..].trim_start();
            continue;
        }
        let after = &rest[eq + 1..];
        let end = match after.as_bytes().first() {
            Some(&q @ (b'"' | b'\'')) => after[1..].find(q as char).map_or(after.len(), |i| i + 2),
            _ => after.find(' ').unwrap_or(after.len()),
        };
        out.push((key, &after[..end]));
        rest = after[end..].trim_start();
    }
    out
}

/// The raw value of `key` in `fields`.
pub fn get<'a>(fields: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A plain value: quotes removed; `?` and `(null)` (the kernel's "unknown") are `None`.
pub fn plain(raw: &str) -> Option<&str> {
    let v = raw
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| raw.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(raw);
    (!v.is_empty() && v != "?" && v != "(null)" && v != "(none)").then_some(v)
}

/// Decodes hex text into bytes; `None` unless it is an even number of hex digits.
pub(crate) fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// An untrusted string field (exe, comm, acct, key ...): quoted text as is, an unquoted value
/// hex-decoded (lossily: invalid UTF-8 kept as replacement characters), `None` when unknown.
pub fn untrusted(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        return plain(raw).map(str::to_owned);
    }
    let v = plain(raw)?;
    match hex_bytes(v) {
        Some(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        None => Some(v.to_owned()),
    }
}

/// The fields inside a user-space message's `msg='...'`.
pub(crate) fn user_fields(body: &str) -> Vec<(&str, &str)> {
    let outer = fields(body);
    match get(&outer, "msg") {
        Some(m) if m.starts_with('\'') => {
            let inner = m.trim_start_matches('\'').trim_end_matches('\'');
            let mut all = outer.clone();
            all.extend(fields(inner));
            all
        }
        _ => outer,
    }
}

/// A decoded `SOCKADDR` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SockAddr {
    /// An IPv4 or IPv6 address and port (an IPv6 scope id beside it, 0 when none).
    Inet {
        /// The address.
        ip: IpAddr,
        /// The port.
        port: u16,
        /// The IPv6 scope (interface index) of a link-local address, else 0.
        scope_id: u32,
    },
    /// Any other family (UNIX, netlink ...): not a network connection.
    Other(u16),
}

/// Decodes the `saddr=` hex of a SOCKADDR record (a raw `struct sockaddr`, family in host
/// order, port and address in network order).
pub(crate) fn parse_sockaddr(hex: &str) -> Option<SockAddr> {
    let b = hex_bytes(hex)?;
    let family = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?);
    let port = || b.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
    if family == libc::AF_INET as u16 {
        let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(SockAddr::Inet {
            ip: IpAddr::V4(Ipv4Addr::from(a)),
            port: port()?,
            scope_id: 0,
        })
    } else if family == libc::AF_INET6 as u16 {
        let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let scope_id = b
            .get(24..28)
            .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
        Some(SockAddr::Inet {
            ip: IpAddr::V6(Ipv6Addr::from(a)),
            port: port()?,
            scope_id,
        })
    } else {
        Some(SockAddr::Other(family))
    }
}

/// The command line of a PROCTITLE record (`proctitle=` hex with NUL-separated arguments, or
/// a quoted string when it has no special characters), arguments joined with spaces.
pub(crate) fn proctitle(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        return plain(raw).map(str::to_owned);
    }
    let bytes = hex_bytes(plain(raw)?)?;
    Some(super::procinfo::join_cmdline(&bytes, usize::MAX).0)
}

/// One whole event: its records in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The serial number.
    pub serial: u64,
    /// The time, milliseconds since the epoch.
    pub time_ms: i64,
    /// The records.
    pub records: Vec<Record>,
}

impl AuditEvent {
    /// The first record of `kind`.
    pub fn record(&self, kind: u16) -> Option<&Record> {
        self.records.iter().find(|r| r.kind == kind)
    }

    /// `<sec>.<ms>:<serial>`, as auditd's logs name the event.
    pub fn id(&self) -> String {
        format!(
            "{}.{:03}:{}",
            self.time_ms.div_euclid(1000),
            self.time_ms.rem_euclid(1000),
            self.serial
        )
    }
}

/// Whether records of this type stand alone (user-space messages: no EOE follows them).
pub(crate) fn is_standalone(kind: u16) -> bool {
    (1100..=1199).contains(&kind) || (2100..=2999).contains(&kind)
}

/// Reassembles multi-record events. A syscall event ends with its EOE record; one whose EOE
/// never comes (lost) is completed after [`Assembler::MAX_AGE_MS`] or when more than
/// [`Assembler::MAX_PENDING`] events are open. User-space records are events of their own.
/// A record seen twice (while moving between the multicast group and the daemon socket) is
/// kept once.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: VecDeque<(u64, AuditEvent)>,
    recent: VecDeque<(u64, u16)>,
}

impl Assembler {
    /// Events open at once at most.
    pub(crate) const MAX_PENDING: usize = 256;
    /// Records kept per event at most.
    pub(crate) const MAX_RECORDS: usize = 32;
    /// How long an event may wait for its EOE.
    pub(crate) const MAX_AGE_MS: u64 = 1000;
    /// Standalone records remembered to drop duplicates.
    const RECENT: usize = 256;

    /// Adds a record received at `now_ms`; returns the events it completes.
    pub fn push(&mut self, record: Record, now_ms: u64) -> Vec<AuditEvent> {
        let mut done = Vec::new();
        if is_standalone(record.kind) {
            let key = (record.serial, record.kind);
            if self.recent.contains(&key) {
                return done;
            }
            if self.recent.len() >= Self::RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(key);
            done.push(AuditEvent {
                serial: record.serial,
                time_ms: record.time_ms,
                records: vec![record],
            });
            return done;
        }
        let at = self.pending.iter().position(|(_, e)| e.serial == record.serial);
        if record.kind == AUDIT_EOE {
            if let Some(i) = at {
                if let Some((_, e)) = self.pending.remove(i) {
                    done.push(e);
                }
            }
            return done;
        }
        match at {
            Some(i) => {
                let e = &mut self.pending[i].1;
                let duplicate = e
                    .records
                    .iter()
                    .any(|r| r.kind == record.kind && r.body == record.body);
                if !duplicate && e.records.len() < Self::MAX_RECORDS {
                    e.records.push(record);
                }
            }
            None => {
                if self.pending.len() >= Self::MAX_PENDING {
                    if let Some((_, oldest)) = self.pending.pop_front() {
                        done.push(oldest);
                    }
                }
                self.pending.push_back((
                    now_ms,
                    AuditEvent {
                        serial: record.serial,
                        time_ms: record.time_ms,
                        records: vec![record],
                    },
                ));
            }
        }
        done
    }

    /// Completes the events that waited too long for their EOE.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<AuditEvent> {
        let mut done = Vec::new();
        while self
            .pending
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) >= Self::MAX_AGE_MS)
        {
            if let Some((_, e)) = self.pending.pop_front() {
                done.push(e);
            }
        }
        done
    }

    /// Completes every open event.
    pub fn flush(&mut self) -> Vec<AuditEvent> {
        self.pending.drain(..).map(|(_, e)| e).collect()
    }
}

/// An audit netlink socket: requests with their acknowledgements, and records.
#[derive(Debug)]
pub(crate) struct AuditSocket {
    sock: NetlinkSocket,
    seq: u32,
    /// Datagrams that arrived while a request waited for its answer; read before new ones.
    stash: VecDeque<Vec<u8>>,
}

/// Most datagrams kept aside while a request waits.
const MAX_STASH: usize = 4096;

impl AuditSocket {
    /// Opens a socket (joined to the read-only multicast group when `multicast`).
    pub fn open(multicast: bool) -> io::Result<AuditSocket> {
        let sock = NetlinkSocket::open(NETLINK_AUDIT, libc::SOCK_RAW, 0)?;
        if multicast {
            sock.add_membership(NLGRP_READLOG)?;
        }
        sock.set_recv_timeout(Duration::from_millis(200))?;
        Ok(AuditSocket {
            sock,
            seq: 0,
            stash: VecDeque::new(),
        })
    }

    /// The underlying socket (buffer size, multicast membership).
    pub fn socket(&self) -> &NetlinkSocket {
        &self.sock
    }

    /// Sends a request and collects its answers until the acknowledgement (or `NLMSG_DONE`
    /// for a dump). Other datagrams are stashed for [`AuditSocket::recv`].
    pub(crate) fn request(&mut self, kind: u16, payload: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        self.sock
            .send_to_kernel(&netlink::request(kind, NLM_F_REQUEST | NLM_F_ACK, seq, payload))?;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut acked = false;
        let mut dump_done = kind != AUDIT_LIST_RULES;
        while std::time::Instant::now() < deadline {
            let len = match self.sock.recv(&mut buf)? {
                Received::Data { len, .. } => len,
                Received::Timeout => continue,
                Received::Overrun => {
                    // Records were dropped for us; the caller counts them through the kernel's
                    // lost counter. The answer itself may still come.
                    continue;
                }
            };
            let d = &buf[..len];
            let mut ours = false;
            for m in netlink::messages(d).flatten() {
                if m.seq != seq || datagram_record(d).is_some() {
                    continue;
                }
                ours = true;
                match m.kind {
                    NLMSG_ERROR => {
                        let (errno, _) = m.error().unwrap_or((libc::EPROTO, seq));
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(errno));
                        }
                        acked = true;
                    }
                    NLMSG_DONE => dump_done = true,
                    _ => answers.push(m.payload.to_vec()),
                }
            }
            if !ours && self.stash.len() < MAX_STASH {
                self.stash.push_back(d.to_vec());
            }
            // AUDIT_GET answers before its ack; a dump ends with DONE after the ack.
            if acked && dump_done && (kind != AUDIT_GET || !answers.is_empty()) {
                return Ok(answers);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer from the audit subsystem",
        ))
    }

    /// The status.
    pub fn status(&mut self) -> io::Result<AuditStatus> {
        let answers = self.request(AUDIT_GET, &[])?;
        answers
            .iter()
            .find_map(|a| decode_status(a))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed audit status"))
    }

    /// Changes the fields of `mask`.
    pub(crate) fn set_status(&mut self, mask: u32, s: &AuditStatus) -> io::Result<()> {
        self.request(AUDIT_SET, &encode_status(mask, s)).map(|_| ())
    }

    /// Every rule, as `struct audit_rule_data` bytes.
    pub(crate) fn list_rules(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.request(AUDIT_LIST_RULES, &[])
    }

    /// Adds a rule; an identical rule already there is not an error.
    pub(crate) fn add_rule(&mut self, rule: &[u8]) -> io::Result<()> {
        match self.request(AUDIT_ADD_RULE, rule) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Deletes a rule (the bytes as added or as listed); a missing rule is not an error.
    pub(crate) fn del_rule(&mut self, rule: &[u8]) -> io::Result<()> {
        match self.request(AUDIT_DEL_RULE, rule) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Receives one datagram (stashed ones first) into `buf`; see [`NetlinkSocket::recv`].
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        if let Some(d) = self.stash.pop_front() {
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            return Ok(Received::Data {
                len: n,
                truncated: n < d.len(),
            });
        }
        self.sock.recv(buf)
    }

    /// Receives a burst of datagrams with one call (stashed ones first, alone); see
    /// [`NetlinkSocket::recv_batch`].
    pub(crate) fn recv_batch(&mut self, batch: &mut RecvBatch, wait: bool) -> io::Result<BatchReceived> {
        if !self.stash.is_empty() {
            let take = self.stash.len().min(batch.slots());
            let n = batch.load(self.stash.drain(..take));
            return Ok(BatchReceived::Data(n));
        }
        self.sock.recv_batch(batch, wait)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The records of `tests/fixtures/audit/records.bin`: datagrams captured as the audit
    /// daemon (unicast) on Linux 6.18 x86_64, stored as (u32 LE length, datagram)*.
    pub(crate) fn captured(name: &str) -> Vec<Vec<u8>> {
        let path = format!("{}/tests/fixtures/audit/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(path).unwrap();
        let mut rest = &bytes[..];
        let mut out = Vec::new();
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        out
    }

    fn events_of(datagrams: &[Vec<u8>]) -> Vec<AuditEvent> {
        let mut a = Assembler::default();
        let mut out = Vec::new();
        for d in datagrams {
            if let Some((kind, text)) = datagram_record(d) {
                out.extend(a.push(parse_record(kind, text).unwrap(), 0));
            }
        }
        out.extend(a.flush());
        out
    }

    #[test]
    fn captured_records_reassemble_into_events() {
        if cfg!(target_endian = "big") {
            return;
        }
        let events = events_of(&captured("records.bin"));
        let syscalls: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| e.record(AUDIT_SYSCALL).is_some())
            .collect();
        // 2 auditctl rule additions, then the connections of the capture script.
        assert!(syscalls.len() >= 10, "{}", syscalls.len());
        let e = syscalls.iter().find(|e| e.serial == 5).unwrap();
        assert_eq!(e.id(), "1795901011.828:5");
        assert_eq!(
            e.records.iter().map(|r| r.kind).collect::<Vec<_>>(),
            vec![AUDIT_SYSCALL, AUDIT_SOCKADDR, AUDIT_PROCTITLE],
            "EOE ends the event and is not kept"
        );
        let f = fields(&e.record(AUDIT_SYSCALL).unwrap().body);
        assert_eq!(get(&f, "syscall"), Some("42"));
        assert_eq!(get(&f, "success"), Some("yes"));
        assert_eq!(
            untrusted(get(&f, "exe").unwrap()).as_deref(),
            Some("/usr/bin/python3.11")
        );
        assert_eq!(untrusted(get(&f, "key").unwrap()).as_deref(), Some("twinguard"));
        let sa = fields(&e.record(AUDIT_SOCKADDR).unwrap().body);
        let SockAddr::Inet { ip, port, .. } = parse_sockaddr(get(&sa, "saddr").unwrap()).unwrap() else {
            panic!()
        };
        assert_eq!(ip.to_string(), "127.0.0.1");
        assert!(port > 1024);
        let title = proctitle(get(&fields(&e.record(AUDIT_PROCTITLE).unwrap().body), "proctitle").unwrap());
        assert!(title.unwrap().starts_with("/usr/bin/python3 -c \nimport socket"));
    }

    #[test]
    fn ipv6_sockaddr_in_progress_connect_and_hex_names() {
        if cfg!(target_endian = "big") {
            return;
        }
        let events = events_of(&captured("records.bin"));
        let inprogress = events.iter().find(|e| e.serial == 7).unwrap();
        let f = fields(&inprogress.record(AUDIT_SYSCALL).unwrap().body);
        assert_eq!((get(&f, "success"), get(&f, "exit")), (Some("no"), Some("-115")));
        let sa = fields(&inprogress.record(AUDIT_SOCKADDR).unwrap().body);
        let SockAddr::Inet { ip, scope_id, .. } = parse_sockaddr(get(&sa, "saddr").unwrap()).unwrap() else {
            panic!()
        };
        assert_eq!((ip.to_string(), scope_id), ("::1".to_string(), 0));
        // A program at "/tmp/tg dir/py\"thon": its names are hex-encoded.
        let hexed = events.iter().find(|e| e.serial == 10).unwrap();
        let f = fields(&hexed.record(AUDIT_SYSCALL).unwrap().body);
        assert_eq!(
            untrusted(get(&f, "exe").unwrap()).as_deref(),
            Some("/tmp/tg dir/py\"thon")
        );
        assert_eq!(untrusted(get(&f, "comm").unwrap()).as_deref(), Some("py\"thon"));
        // accept(fd, NULL, NULL): no SOCKADDR record.
        let bare = events.iter().find(|e| e.serial == 13).unwrap();
        assert!(bare.record(AUDIT_SOCKADDR).is_none());
        assert_eq!(
            get(&fields(&bare.record(AUDIT_SYSCALL).unwrap().body), "syscall"),
            Some("43")
        );
    }

    #[test]
    fn user_messages_stand_alone_with_nested_fields() {
        if cfg!(target_endian = "big") {
            return;
        }
        let events = events_of(&captured("records.bin"));
        let auths: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| e.records[0].kind == AUDIT_USER_AUTH)
            .collect();
        assert_eq!(auths.len(), 2);
        let ok = user_fields(&auths[0].records[0].body);
        assert_eq!(get(&ok, "op"), Some("PAM:authentication"));
        assert_eq!(untrusted(get(&ok, "acct").unwrap()).as_deref(), Some("root"));
        assert_eq!(
            untrusted(get(&ok, "exe").unwrap()).as_deref(),
            Some("/usr/bin/su")
        );
        assert_eq!(plain(get(&ok, "addr").unwrap()), None);
        assert_eq!(get(&ok, "res"), Some("success"));
        let failed = user_fields(&auths[1].records[0].body);
        assert_eq!(get(&failed, "res"), Some("failed"));
        assert_eq!(get(&failed, "uid"), Some("65534"));
    }

    #[test]
    fn records_parse_from_text() {
        let r = parse_record(1112, b"audit(1700000000.005:77): pid=5 uid=0 msg='op=login id=1000 exe=\"/usr/sbin/sshd\" hostname=203.0.113.9 addr=203.0.113.9 terminal=ssh res=success'").unwrap();
        assert_eq!((r.serial, r.time_ms), (77, 1_700_000_000_005));
        let f = user_fields(&r.body);
        assert_eq!(get(&f, "id"), Some("1000"));
        assert_eq!(get(&f, "addr"), Some("203.0.113.9"));
        assert_eq!(parse_record(1300, b"audit(x): a=b"), None);
        assert_eq!(parse_record(1300, b"nonsense"), None);
        // Truncated in the middle of a quoted value: the value runs to the end.
        let f = fields("a=1 exe=\"/usr/bi");
        assert_eq!(f, vec![("a", "1"), ("exe", "\"/usr/bi")]);
        assert_eq!(plain("\"/usr/bi"), Some("\"/usr/bi"));
    }

    #[test]
    fn sockaddrs_of_every_family() {
        // IPv4 with padding, IPv6 link-local with a scope, UNIX, truncated.
        assert!(matches!(
            parse_sockaddr("0200005070000001"),
            Some(SockAddr::Inet { port: 80, .. })
        ));
        let mut v6 = String::from("0A00");
        v6 += "01BB";
        v6 += "00000000";
        v6 += "FE800000000000000000000000000001";
        v6 += &hex_of(&3u32.to_ne_bytes());
        let Some(SockAddr::Inet { ip, port, scope_id }) = parse_sockaddr(&v6) else {
            panic!()
        };
        assert_eq!((ip.to_string(), port, scope_id), ("fe80::1".into(), 443, 3));
        assert_eq!(
            parse_sockaddr(&(hex_of(&1u16.to_ne_bytes()) + "2F746D70")),
            Some(SockAddr::Other(1))
        );
        assert_eq!(parse_sockaddr("0200"), None);
        assert_eq!(parse_sockaddr("0A0001BB0000"), None);
        assert_eq!(parse_sockaddr("zz"), None);
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    #[test]
    fn events_without_eoe_expire_and_duplicates_are_dropped() {
        let rec = |kind, serial, body: &str| Record {
            kind,
            serial,
            time_ms: 1,
            body: body.into(),
        };
        let mut a = Assembler::default();
        assert!(a.push(rec(AUDIT_SYSCALL, 1, "x=1"), 0).is_empty());
        assert!(a.push(rec(AUDIT_SYSCALL, 1, "x=1"), 0).is_empty());
        assert!(a.push(rec(AUDIT_SOCKADDR, 1, "saddr=00"), 0).is_empty());
        assert!(a.push(rec(AUDIT_SYSCALL, 2, "x=2"), 600).is_empty());
        let expired = a.expire(1000);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].records.len(), 2);
        let done = a.push(rec(AUDIT_EOE, 2, ""), 1100);
        assert_eq!(done[0].serial, 2);
        assert_eq!(a.push(rec(AUDIT_USER_AUTH, 3, "a"), 0).len(), 1);
        assert!(
            a.push(rec(AUDIT_USER_AUTH, 3, "a"), 0).is_empty(),
            "the same record twice"
        );
        for s in 10..10 + Assembler::MAX_PENDING as u64 + 5 {
            a.push(rec(AUDIT_SYSCALL, s, "x"), 0);
        }
        assert_eq!(a.flush().len(), Assembler::MAX_PENDING);
    }

    #[test]
    fn rules_encode_like_auditctl_and_keys_read_back() {
        let rule = Rule::successful(vec![42, 43, 288], "twinguard");
        let b = rule.encode();
        assert_eq!(b.len(), RULE_BUF_AT + 9);
        assert_eq!(netlink::u32_at(&b, 8), Some(3), "arch, success, key");
        assert_eq!(netlink::u32_at(&b, 12 + 4), Some(1 << (42 - 32) | 1 << (43 - 32)));
        assert_eq!(netlink::u32_at(&b, 12 + 4 * 9), Some(1 << (288 % 32)));
        assert_eq!(rule_key(&b).as_deref(), Some("twinguard"));
        let einprogress = Rule::failing_with(vec![42], libc::EINPROGRESS, "twinguard").encode();
        let values_at = 12 + 4 * BITMASK_WORDS + 4 * MAX_FIELDS;
        assert_eq!(netlink::u32_at(&einprogress, values_at + 4), Some(0xFFFF_FF8D));
        assert_eq!(rule_key(&b[..100]), None);
    }

    #[test]
    fn status_round_trips() {
        let s = AuditStatus {
            enabled: 1,
            failure: 1,
            pid: 42,
            rate_limit: 0,
            backlog_limit: 8192,
            lost: 0,
            backlog: 0,
        };
        let enc = encode_status(STATUS_ENABLED, &s);
        assert_eq!(netlink::u32_at(&enc, 0), Some(STATUS_ENABLED));
        assert_eq!(decode_status(&enc), Some(s));
        assert_eq!(decode_status(&enc[..20]), None);
    }

    proptest! {
        #[test]
        fn record_text_never_panics(text in proptest::collection::vec(any::<u8>(), 0..400), kind in 1000u16..3000) {
            let mut d = netlink::request(kind, 0, 0, &text);
            d[0..4].copy_from_slice(&(text.len() as u32).to_ne_bytes());
            if let Some((k, t)) = datagram_record(&d) {
                if let Some(r) = parse_record(k, t) {
                    let f = user_fields(&r.body);
                    for (_, v) in &f {
                        let _ = untrusted(v);
                        let _ = parse_sockaddr(v);
                        let _ = proctitle(v);
                    }
                }
            }
        }

        #[test]
        fn structured_bodies_never_panic(body in "[a-z]{1,6}=(\"[^\"]{0,10}\"?|'[^']{0,20}'?|[0-9A-F]{0,12})( [a-z]{1,4}=[^ ]{0,8}){0,6}") {
            let f = user_fields(&body);
            prop_assert!(f.len() <= 256);
            for (_, v) in f {
                let _ = untrusted(v);
            }
            let _ = parse_record(1300, format!("audit(1.2:3): {body}").as_bytes());
        }

        #[test]
        fn rule_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = rule_key(&data);
            let _ = decode_status(&data);
        }

        #[test]
        fn truncated_captured_records_never_panic(cut in 0usize..400) {
            if cfg!(target_endian = "little") {
                for d in captured("records.bin").iter().take(40) {
                    let d = &d[..cut.min(d.len())];
                    if let Some((k, t)) = datagram_record(d) {
                        if let Some(r) = parse_record(k, t) {
                            let _ = user_fields(&r.body);
                        }
                    }
                }
            }
        }
    }
}
