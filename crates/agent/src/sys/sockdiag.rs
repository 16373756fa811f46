//! Socket listing through `NETLINK_SOCK_DIAG` (`inet_diag`), the kernel interface `ss` uses:
//! the kernel filters by state (only LISTEN TCP sockets and unconnected UDP sockets cross to
//! user space) and answers in binary, much faster than formatting `/proc/net/*` text. It also
//! gives the socket's bound interface, which `/proc/net` does not (the scope of a link-local
//! IPv6 address).
//!
//! The request is built and the answer parsed as plain bytes (pure functions, tested on
//! captured answers); only the socket calls are `unsafe`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::procnet::{Family, ProcNetSocket, Table, Transport, STATE_CLOSE, STATE_LISTEN};

/// `NETLINK_SOCK_DIAG` (linux/netlink.h).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST | NLM_F_DUMP` (linux/netlink.h).
const DUMP_FLAGS: u16 = 0x1 | 0x300;
/// `NLMSG_ERROR`, `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_DUMP_INTR`: the dump was interrupted by a change and may be inconsistent.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// Sizes of `struct nlmsghdr` and `struct inet_diag_msg`.
const NLMSG_HDR: usize = 16;
const DIAG_MSG: usize = 72;
/// The most bytes read for one dump (a bound on a hostile or runaway answer).
const MAX_DUMP_BYTES: usize = 256 * 1024 * 1024;

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
fn wanted_states(transport: Transport) -> u32 {
    match transport {
        Transport::Tcp => 1 << STATE_LISTEN,
        Transport::Udp => 1 << STATE_CLOSE,
    }
}

/// The request (`nlmsghdr` + `inet_diag_req_v2`) dumping `table`'s listening sockets.
pub fn request(table: Table, seq: u32) -> [u8; NLMSG_HDR + 56] {
    let mut b = [0u8; NLMSG_HDR + 56];
    b[0..4].copy_from_slice(&((NLMSG_HDR + 56) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&DUMP_FLAGS.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: to the kernel.
    b[16] = match table.family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    };
    b[17] = match table.transport {
        Transport::Tcp => libc::IPPROTO_TCP as u8,
        Transport::Udp => libc::IPPROTO_UDP as u8,
    };
    // idiag_ext 0, pad 0; idiag_states; the socket id (all zero: any).
    b[20..24].copy_from_slice(&wanted_states(table.transport).to_ne_bytes());
    b
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
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
pub fn parse_diag_msg(b: &[u8]) -> Option<ProcNetSocket> {
    if b.len() < DIAG_MSG {
        return None;
    }
    let family = b[0];
    let state = b[1];
    // Ports are big-endian (network order) in the socket id.
    let local_port = u16::from_be_bytes([b[4], b[5]]);
    let remote_port = u16::from_be_bytes([b[6], b[7]]);
    Some(ProcNetSocket {
        local_ip: address(family, &b[8..24])?,
        local_port,
        remote_ip: address(family, &b[24..40])?,
        remote_port,
        state,
        uid: u32_ne(b, 64)?,
        inode: u64::from(u32_ne(b, 68)?),
        ifindex: u32_ne(b, 40)?,
    })
}

/// What one received buffer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
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
pub fn parse_batch(mut b: &[u8], seq: u32) -> Result<Batch, DiagError> {
    let mut out = Batch::default();
    while b.len() >= NLMSG_HDR {
        let len = u32_ne(b, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDR || len > b.len() {
            return Err(DiagError::Malformed(format!(
                "message length {len} of {} bytes left",
                b.len()
            )));
        }
        let kind = u16_ne(b, 4).unwrap_or(0);
        let flags = u16_ne(b, 6).unwrap_or(0);
        let msg_seq = u32_ne(b, 8).unwrap_or(0);
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

/// An open `NETLINK_SOCK_DIAG` socket.
#[derive(Debug)]
pub struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
}

impl DiagSocket {
    /// Opens the socket (with a 2 s receive timeout, so a silent kernel cannot hang us).
    pub fn open() -> Result<DiagSocket, DiagError> {
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(DiagError::Io {
                what: "socket",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively; OwnedFd closes it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval that outlives the call, and its size is given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(DiagError::Io {
                what: "setsockopt(SO_RCVTIMEO)",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(DiagSocket { fd, seq: 0 })
    }

    /// Dumps `table`'s listening sockets (TCP LISTEN, or UDP unconnected) into `out`, at most
    /// `cap` of them; returns how many were beyond the cap and whether the kernel flagged the
    /// dump as interrupted.
    pub fn dump(
        &mut self,
        table: Table,
        cap: usize,
        out: &mut Vec<ProcNetSocket>,
    ) -> Result<(usize, bool), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(table, self.seq);
        // SAFETY: sockaddr_nl is plain data for which all-zero is valid (nl_pid 0 = the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `kernel` are valid for the lengths given and outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(DiagError::Io {
                what: "sendto",
                source: std::io::Error::last_os_error(),
            });
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let mut over_cap = 0usize;
        let mut interrupted = false;
        loop {
            // SAFETY: `buf` is valid and writable for its whole length during the call.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DiagError::Io {
                    what: "recv",
                    source: e,
                });
            }
            if n == 0 {
                return Err(DiagError::Malformed(
                    "the kernel closed the dump early".to_owned(),
                ));
            }
            let n = usize::try_from(n).unwrap_or(0).min(buf.len());
            total += n;
            if total > MAX_DUMP_BYTES {
                return Err(DiagError::TooLarge);
            }
            let batch = parse_batch(&buf[..n], self.seq)?;
            interrupted |= batch.interrupted;
            for s in batch.sockets {
                // The kernel filtered by state; UDP still needs "bound and not connected".
                if s.is_listening(table.transport) {
                    if out.len() < cap {
                        out.push(s);
                    } else {
                        over_cap += 1;
                    }
                }
            }
            if batch.done {
                return Ok((over_cap, interrupted));
            }
        }
    }
}

/// The name of interface `index` (`eth0`), `None` when there is none.
pub fn interface_name(index: u32) -> Option<String> {
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

    fn diag(family: u8, state: u8, sport: u16, src: &[u8], ifindex: u32, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG];
        b[0] = family;
        b[1] = state;
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
            &diag(libc::AF_INET as u8, STATE_LISTEN, 22, &[127, 0, 0, 1], 0, 42),
        );
        buf.extend(msg(
            7,
            SOCK_DIAG_BY_FAMILY,
            &diag(libc::AF_INET6 as u8, STATE_LISTEN, 8080, &ll.octets(), 2, 43),
        ));
        buf.extend(msg(7, SOCK_DIAG_BY_FAMILY, &[1, 2, 3]));
        buf.extend(msg(6, SOCK_DIAG_BY_FAMILY, &diag(2, 10, 1, &[1, 1, 1, 1], 0, 1)));
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
        let mut m = msg(1, SOCK_DIAG_BY_FAMILY, &diag(2, 10, 1, &[1, 1, 1, 1], 0, 1));
        m[0] = 0xff;
        assert!(parse_batch(&m, 1).is_err());
        assert_eq!(parse_batch(&[1, 2, 3], 1).unwrap(), Batch::default());
        assert_eq!(parse_diag_msg(&[0; 10]), None);
        let mut bad_family = diag(99, 10, 1, &[1, 1, 1, 1], 0, 1);
        bad_family[0] = 99;
        assert_eq!(parse_diag_msg(&bad_family), None);
    }

    #[test]
    fn requests_ask_for_listening_states() {
        let r = request(Table::new(Transport::Udp, Family::V6), 9);
        assert_eq!(u32_ne(&r, 0), Some(72));
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_UDP as u8);
        assert_eq!(u32_ne(&r, 20), Some(1 << STATE_CLOSE));
    }

    #[test]
    fn live_dump_finds_a_listener() {
        let Ok(mut sock) = DiagSocket::open() else {
            return;
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut out = Vec::new();
        sock.dump(Table::new(Transport::Tcp, Family::V4), 1_000_000, &mut out)
            .unwrap();
        assert!(out
            .iter()
            .any(|s| s.local_port == port && s.state == STATE_LISTEN));
        assert!(interface_name(1).is_some());
    }
}
