//! Socket listing through `NETLINK_SOCK_DIAG` (`inet_diag`), the kernel interface `ss` uses,
//! on the one netlink socket type (`netlink.rs`): the kernel filters by state (only LISTEN TCP
//! sockets and unconnected UDP sockets cross to user space for ListeningPorts; connected TCP
//! sockets, optionally only those with one remote end, for ConnectionCreate) and answers in
//! binary, much faster than formatting `/proc/net/*` text. It also gives the socket's bound
//! interface, which `/proc/net` does not (the scope of a link-local IPv6 address).
//!
//! ConnectionCreate uses it to find the local end of a connection an audit record names (by
//! remote address, then by the socket's inode), and to poll for connections of processes audit
//! cannot see. The request (with its bytecode) is built and the answer parsed as plain bytes
//! (pure functions, tested on captured answers).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::netlink::{
    self, NetlinkSocket, Received, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, NLM_F_DUMP, NLM_F_REQUEST,
};
use super::procnet::{Family, ProcNetSocket, Table, TcpState, TcpStates, Transport};

/// `NETLINK_SOCK_DIAG` (linux/netlink.h).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_DUMP_INTR`: the dump was interrupted by a change and may be inconsistent.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `INET_DIAG_REQ_BYTECODE` (the request attribute) and `INET_DIAG_BC_D_COND` (remote address
/// and port condition).
const REQ_BYTECODE: u16 = 1;
const BC_D_COND: u8 = 8;
/// Size of `struct inet_diag_msg`.
const DIAG_MSG: usize = 72;
/// The most bytes read for one dump (a bound on a hostile or runaway answer): 64 MiB is some
/// 500,000 sockets of one family.
const MAX_DUMP_BYTES: usize = 64 * 1024 * 1024;
/// The receive buffer. The kernel sizes dump datagrams after the buffer we read with, up to
/// 32 KiB; a larger datagram (never seen) is an error, not a silent loss.
const RECV_BUFFER: usize = 32 * 1024;

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// A socket call failed.
    #[error("sock_diag: {what}: {source}")]
    Io {
        /// The call.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel refused the request (e.g. `udp_diag` not built: ENOENT).
    #[error("sock_diag: the kernel refused the request: {0}")]
    Refused(std::io::Error),
    /// The answer was not well-formed.
    #[error("sock_diag: malformed answer: {0}")]
    Malformed(String),
    /// The answer was larger than allowed.
    #[error("sock_diag: answer larger than {MAX_DUMP_BYTES} bytes")]
    TooLarge,
}

/// The states asked for: TCP LISTEN, or UDP unconnected (`TCP_CLOSE`).
fn wanted_states(transport: Transport) -> TcpStates {
    match transport {
        Transport::Tcp => TcpStates::LISTENING,
        Transport::Udp => TcpStates::of(&[TcpState::Close]),
    }
}

/// The `inet_diag` bytecode accepting only sockets whose remote end is `ip` port `port`.
pub(crate) fn remote_filter(ip: IpAddr, port: u16) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let total = 4 + 8 + addr.len();
    let mut b = Vec::with_capacity(total);
    // struct inet_diag_bc_op: code, yes (jump to the end: accept), no (past the end: reject).
    b.push(BC_D_COND);
    b.push(total as u8);
    b.extend_from_slice(&((total + 4) as u16).to_ne_bytes());
    // struct inet_diag_hostcond: family, prefix_len, port (int), then the address.
    b.push(family);
    b.push((addr.len() * 8) as u8);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&i32::from(port).to_ne_bytes());
    b.extend_from_slice(&addr);
    b
}

/// The request (`nlmsghdr` + `inet_diag_req_v2`, then the bytecode attribute when given)
/// dumping the sockets of `family` (`AF_INET` / `AF_INET6`) and `protocol` (`IPPROTO_TCP` /
/// `IPPROTO_UDP`) in `states`.
pub(crate) fn request(
    family: u8,
    protocol: u8,
    states: TcpStates,
    bytecode: Option<&[u8]>,
    seq: u32,
) -> Vec<u8> {
    let mut req = vec![0u8; 56];
    req[0] = family;
    req[1] = protocol;
    // idiag_ext 0, pad 0; idiag_states; the socket id (all zero: any).
    req[4..8].copy_from_slice(&states.bits().to_ne_bytes());
    if let Some(bc) = bytecode {
        let attr_len = 4 + bc.len();
        req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        req.extend_from_slice(&REQ_BYTECODE.to_ne_bytes());
        req.extend_from_slice(bc);
        while !req.len().is_multiple_of(4) {
            req.push(0);
        }
    }
    netlink::request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, &req)
}

/// The family and protocol bytes of a table.
fn family_protocol(table: Table) -> (u8, u8) {
    let family = match table.family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    };
    let protocol = match table.transport {
        Transport::Tcp => libc::IPPROTO_TCP as u8,
        Transport::Udp => libc::IPPROTO_UDP as u8,
    };
    (family, protocol)
}

fn address(family: u8, raw: &[u8]) -> Option<IpAddr> {
    if family == libc::AF_INET as u8 {
        let o: [u8; 4] = raw.get(..4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(o)))
    } else if family == libc::AF_INET6 as u8 {
        let o: [u8; 16] = raw.get(..16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    } else {
        None
    }
}

/// Parses one `inet_diag_msg`.
pub(crate) fn parse_diag_msg(b: &[u8]) -> Option<ProcNetSocket> {
    if b.len() < DIAG_MSG {
        return None;
    }
    let family = b[0];
    let state = TcpState::from_kernel(b[1]);
    // Ports are big-endian (network order) in the socket id.
    let local_port = u16::from_be_bytes([b[4], b[5]]);
    let remote_port = u16::from_be_bytes([b[6], b[7]]);
    Some(ProcNetSocket {
        local_ip: address(family, &b[8..24])?,
        local_port,
        remote_ip: address(family, &b[24..40])?,
        remote_port,
        state,
        uid: netlink::u32_at(b, 64)?,
        inode: u64::from(netlink::u32_at(b, 68)?),
        ifindex: netlink::u32_at(b, 40)?,
    })
}

/// What one received buffer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Sockets, in order.
    pub sockets: Vec<ProcNetSocket>,
    /// Whether `NLMSG_DONE` was seen.
    pub done: bool,
    /// Whether the kernel flagged the dump as interrupted (possibly inconsistent).
    pub interrupted: bool,
    /// Messages that were not sockets (malformed).
    pub malformed: usize,
}

/// Parses the netlink messages of one received buffer (pure). An `NLMSG_ERROR` becomes
/// `Err` with its errno.
pub(crate) fn parse_batch(mut b: &[u8], seq: u32) -> Result<Batch, DiagError> {
    let mut out = Batch::default();
    while b.len() >= NLMSG_HDR {
        let len = netlink::u32_at(b, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDR || len > b.len() {
            return Err(DiagError::Malformed(format!(
                "message length {len} of {} bytes left",
                b.len()
            )));
        }
        let kind = netlink::u16_at(b, 4).unwrap_or(0);
        let flags = netlink::u16_at(b, 6).unwrap_or(0);
        let msg_seq = netlink::u32_at(b, 8).unwrap_or(0);
        let body = &b[NLMSG_HDR..len];
        out.interrupted |= flags & NLM_F_DUMP_INTR != 0;
        if msg_seq == seq {
            match kind {
                NLMSG_DONE => {
                    out.done = true;
                    return Ok(out);
                }
                NLMSG_ERROR => {
                    let errno = body
                        .get(..4)
                        .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                        .unwrap_or(0);
                    if errno != 0 {
                        return Err(DiagError::Refused(std::io::Error::from_raw_os_error(-errno)));
                    }
                }
                SOCK_DIAG_BY_FAMILY => match parse_diag_msg(body) {
                    Some(s) => out.sockets.push(s),
                    None => out.malformed += 1,
                },
                _ => {}
            }
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or(&[]);
    }
    Ok(out)
}

/// An open `NETLINK_SOCK_DIAG` socket: the one sock_diag of the agent (listening ports,
/// connections by remote end, the connection poll, `doctor`).
#[derive(Debug)]
pub struct SockDiag {
    sock: NetlinkSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl SockDiag {
    /// Opens the socket (answers must come within 2 s, so a silent kernel cannot hang us).
    pub fn open() -> Result<SockDiag, DiagError> {
        let sock =
            NetlinkSocket::open(NETLINK_SOCK_DIAG, libc::SOCK_DGRAM, 0).map_err(|source| DiagError::Io {
                what: "socket",
                source,
            })?;
        sock.set_recv_timeout(Duration::from_secs(2))
            .map_err(|source| DiagError::Io {
                what: "setsockopt(SO_RCVTIMEO)",
                source,
            })?;
        Ok(SockDiag {
            sock,
            seq: 0,
            buf: vec![0u8; RECV_BUFFER],
        })
    }

    /// Sends `req` (built with sequence number `self.seq`) and reads the dump, keeping the
    /// sockets `keep` accepts into `out`, at most `cap` of them; returns how many were beyond
    /// the cap and whether the kernel flagged the dump as interrupted.
    fn dump(
        &mut self,
        req: &[u8],
        cap: usize,
        out: &mut Vec<ProcNetSocket>,
        keep: impl Fn(&ProcNetSocket) -> bool,
    ) -> Result<(usize, bool), DiagError> {
        self.sock.send_to_kernel(req).map_err(|source| DiagError::Io {
            what: "sendto",
            source,
        })?;
        let mut total = 0usize;
        let mut over_cap = 0usize;
        let mut interrupted = false;
        loop {
            let len = match self.sock.recv(&mut self.buf) {
                Ok(Received::Data { truncated: true, .. }) => {
                    return Err(DiagError::Malformed(format!(
                        "a dump datagram larger than {RECV_BUFFER} bytes"
                    )));
                }
                Ok(Received::Data { len, .. }) => len,
                Ok(Received::Timeout) => {
                    return Err(DiagError::Io {
                        what: "recv",
                        source: io::Error::from(io::ErrorKind::TimedOut),
                    })
                }
                Ok(Received::Overrun) => {
                    return Err(DiagError::Malformed("the dump overran our buffer".into()));
                }
                Err(source) => return Err(DiagError::Io { what: "recv", source }),
            };
            total += len;
            if total > MAX_DUMP_BYTES {
                return Err(DiagError::TooLarge);
            }
            let batch = parse_batch(&self.buf[..len], self.seq)?;
            interrupted |= batch.interrupted;
            for s in batch.sockets.into_iter().filter(|s| keep(s)) {
                if out.len() < cap {
                    out.push(s);
                } else {
                    over_cap += 1;
                }
            }
            if batch.done {
                return Ok((over_cap, interrupted));
            }
        }
    }

    /// Dumps `table`'s listening sockets (TCP LISTEN, or UDP unconnected) into `out`, at most
    /// `cap` of them; returns how many were beyond the cap and whether the kernel flagged the
    /// dump as interrupted.
    pub fn dump_listening(
        &mut self,
        table: Table,
        cap: usize,
        out: &mut Vec<ProcNetSocket>,
    ) -> Result<(usize, bool), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let (family, protocol) = family_protocol(table);
        let req = request(family, protocol, wanted_states(table.transport), None, self.seq);
        // The kernel filtered by state; UDP still needs "bound and not connected".
        self.dump(&req, cap, out, |s| s.is_listening(table.transport))
    }

    /// Dumps TCP sockets of `family` (`AF_INET` / `AF_INET6`) in `states`, only those whose
    /// remote end is `remote` when given (the kernel filters with an `inet_diag` bytecode
    /// condition, so finding one connection among ten thousand costs one short answer), into
    /// `out` (at most `cap`; the rest are counted in the returned number).
    pub(crate) fn dump_tcp(
        &mut self,
        family: u8,
        states: TcpStates,
        remote: Option<(IpAddr, u16)>,
        cap: usize,
        out: &mut Vec<ProcNetSocket>,
    ) -> Result<usize, DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let bytecode = remote.map(|(ip, port)| remote_filter(ip, port));
        let req = request(
            family,
            libc::IPPROTO_TCP as u8,
            states,
            bytecode.as_deref(),
            self.seq,
        );
        Ok(self.dump(&req, cap, out, |_| true)?.0)
    }

    /// Every TCP socket of both families in `states` (the IPv6 dump is skipped when the
    /// kernel has no IPv6).
    pub(crate) fn dump_tcp_all(
        &mut self,
        states: TcpStates,
        cap: usize,
        out: &mut Vec<ProcNetSocket>,
    ) -> Result<usize, DiagError> {
        let mut over = self.dump_tcp(libc::AF_INET as u8, states, None, cap, out)?;
        match self.dump_tcp(libc::AF_INET6 as u8, states, None, cap, out) {
            Ok(n) => over += n,
            Err(DiagError::Refused(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(over)
    }
}

/// The name of interface `index` (`eth0`), `None` when there is none.
pub(crate) fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires; it writes a
    // NUL-terminated name into it or returns NULL.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| u8::from_ne_bytes(c.to_ne_bytes()))
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn msg(seq: u32, kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn diag(family: u8, state: TcpState, sport: u16, src: &[u8], ifindex: u32, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG];
        b[0] = family;
        b[1] = state.kernel();
        b[4..6].copy_from_slice(&sport.to_be_bytes());
        b[8..8 + src.len()].copy_from_slice(src);
        b[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        b[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        b
    }

    #[test]
    fn parses_sockets_errors_and_done() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut buf = msg(
            7,
            SOCK_DIAG_BY_FAMILY,
            &diag(libc::AF_INET as u8, TcpState::Listen, 22, &[127, 0, 0, 1], 0, 42),
        );
        buf.extend(msg(
            7,
            SOCK_DIAG_BY_FAMILY,
            &diag(libc::AF_INET6 as u8, TcpState::Listen, 8080, &ll.octets(), 2, 43),
        ));
        buf.extend(msg(7, SOCK_DIAG_BY_FAMILY, &[1, 2, 3]));
        buf.extend(msg(
            6,
            SOCK_DIAG_BY_FAMILY,
            &diag(2, TcpState::Listen, 1, &[1, 1, 1, 1], 0, 1),
        ));
        buf.extend(msg(7, NLMSG_DONE, &0i32.to_ne_bytes()));
        let batch = parse_batch(&buf, 7).unwrap();
        assert!(batch.done);
        assert_eq!(batch.malformed, 1);
        assert_eq!(batch.sockets.len(), 2);
        assert_eq!(batch.sockets[0].local_ip.to_string(), "127.0.0.1");
        assert_eq!(batch.sockets[0].local_port, 22);
        assert_eq!((batch.sockets[0].uid, batch.sockets[0].inode), (1000, 42));
        assert_eq!(batch.sockets[1].local_ip.to_string(), "fe80::1");
        assert_eq!(batch.sockets[1].ifindex, 2);
        let err = msg(7, NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes());
        assert!(matches!(parse_batch(&err, 7), Err(DiagError::Refused(_))));
    }

    #[test]
    fn truncated_answers_are_errors_not_panics() {
        let mut m = msg(
            1,
            SOCK_DIAG_BY_FAMILY,
            &diag(2, TcpState::Listen, 1, &[1, 1, 1, 1], 0, 1),
        );
        m[0] = 0xff;
        assert!(parse_batch(&m, 1).is_err());
        assert_eq!(parse_batch(&[1, 2, 3], 1).unwrap(), Batch::default());
        assert_eq!(parse_diag_msg(&[0; 10]), None);
        let mut bad_family = diag(99, TcpState::Listen, 1, &[1, 1, 1, 1], 0, 1);
        bad_family[0] = 99;
        assert_eq!(parse_diag_msg(&bad_family), None);
    }

    #[test]
    fn requests_ask_for_listening_states() {
        let (family, protocol) = family_protocol(Table::new(Transport::Udp, Family::V6));
        let r = request(family, protocol, wanted_states(Transport::Udp), None, 9);
        assert_eq!(netlink::u32_at(&r, 0), Some(72));
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_UDP as u8);
        assert_eq!(netlink::u32_at(&r, 20), Some(1 << 7));
    }

    #[test]
    fn the_remote_filter_is_one_condition_that_jumps_to_accept_or_past_the_end() {
        let bc = remote_filter("10.0.0.1".parse().unwrap(), 443);
        assert_eq!(bc.len(), 16);
        assert_eq!((bc[0], bc[1]), (BC_D_COND, 16));
        assert_eq!(netlink::u16_at(&bc, 2), Some(20));
        assert_eq!((bc[4], bc[5]), (libc::AF_INET as u8, 32));
        assert_eq!(netlink::u32_at(&bc, 8), Some(443));
        assert_eq!(&bc[12..], &[10, 0, 0, 1]);
        assert_eq!(remote_filter("::1".parse().unwrap(), 1).len(), 28);
        let req = request(
            libc::AF_INET as u8,
            libc::IPPROTO_TCP as u8,
            TcpStates::CONNECTED,
            Some(&bc),
            3,
        );
        assert_eq!(req.len(), 16 + 56 + 4 + 16);
        assert_eq!(netlink::u32_at(&req, 0), Some(req.len() as u32));
    }

    #[test]
    fn live_dump_finds_a_connection_by_its_remote_end() {
        let Ok(mut diag) = SockDiag::open() else {
            return;
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (_a, _) = l.accept().unwrap();
        let mut out = Vec::new();
        diag.dump_tcp(
            libc::AF_INET as u8,
            TcpStates::CONNECTED,
            Some((addr.ip(), addr.port())),
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].local_port, c.local_addr().unwrap().port());
        assert!(out[0].inode != 0);
        let mut listening = Vec::new();
        diag.dump_tcp_all(TcpStates::LISTENING, 100_000, &mut listening)
            .unwrap();
        assert!(listening.iter().any(|s| s.local_port == addr.port()));
    }

    #[test]
    fn live_dump_finds_a_listener() {
        let Ok(mut sock) = SockDiag::open() else {
            return;
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut out = Vec::new();
        sock.dump_listening(Table::new(Transport::Tcp, Family::V4), 1_000_000, &mut out)
            .unwrap();
        assert!(out
            .iter()
            .any(|s| s.local_port == port && s.state == TcpState::Listen));
        assert!(interface_name(1).is_some());
    }
}
