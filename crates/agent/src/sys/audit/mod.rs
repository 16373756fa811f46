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
//!
//! - `rule`: status and rule messages the agent sends; `record`: the records the kernel
//!   sends back; `assemble`: records -> whole events. This module holds the message types and
//!   the socket.

mod assemble;
mod record;
mod rule;

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use super::netlink::{
    self, BatchReceived, NetlinkSocket, Received, RecvBatch, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_REQUEST,
};

pub use assemble::{Assembler, AuditEvent};
pub(crate) use record::{
    datagram_record, parse_record, parse_sockaddr, proctitle, user_fields, SockAddr, RECV_BUFFER_BYTES,
};
pub use record::{fields, get, plain, untrusted, Record};
pub(crate) use rule::{
    accept_syscalls, connect_syscalls, decode_status, encode_status, listen_syscalls, rule_key,
    socket_syscalls, syscall_name, AuditStatus,
};
pub use rule::{native_arch, Rule};

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
    use super::rule::{BITMASK_WORDS, MAX_FIELDS, RULE_BUF_AT};
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
