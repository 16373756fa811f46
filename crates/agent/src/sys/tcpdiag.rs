//! TCP sockets in any state through `NETLINK_SOCK_DIAG`, optionally only those connected to
//! one remote address and port (the kernel filters with an `inet_diag` bytecode condition, so
//! finding one connection among ten thousand costs one short answer).
//!
//! ConnectionCreate uses it twice: to find the local end of a connection an audit record names
//! (by remote address, then by the socket's inode), and to poll for connections of processes
//! audit cannot see. The answer is parsed by [`super::sockdiag::parse_batch`]; the request with
//! its bytecode is built here, as plain bytes.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use super::netlink::{self, NetlinkSocket, Received, NLM_F_DUMP, NLM_F_REQUEST};
use super::procnet::ProcNetSocket;
use super::sockdiag::{parse_batch, DiagError};

/// `NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`.
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_REQ_BYTECODE` (the request attribute) and `INET_DIAG_BC_D_COND` (remote address
/// and port condition).
const REQ_BYTECODE: u16 = 1;
const BC_D_COND: u8 = 8;
/// The most bytes read for one dump.
const MAX_DUMP_BYTES: usize = 64 * 1024 * 1024;

/// TCP states (`TCP_*` numbering).
pub const ESTABLISHED: u8 = 1;
/// `TCP_SYN_SENT`: a connect in progress.
pub const SYN_SENT: u8 = 2;
/// `TCP_LISTEN`.
pub const LISTEN: u8 = 10;

/// Every state of a socket that is or was connected and still has an owner: ESTABLISHED,
/// SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING. TIME_WAIT sockets
/// have no inode (no owner any more) and are left out.
pub const CONNECTED: u32 = 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;
/// `TCP_TIME_WAIT`: closed by this end first; kept a while without an owner.
pub const TIME_WAIT: u8 = 6;
/// [`CONNECTED`] and TIME_WAIT and CLOSE: every state a connection can be in after it was made.
pub const EVER_CONNECTED: u32 = CONNECTED | 1 << TIME_WAIT | 1 << 7;
/// LISTEN only.
pub const LISTENING: u32 = 1 << LISTEN;

/// The `inet_diag` bytecode accepting only sockets whose remote end is `ip` port `port`.
pub fn remote_filter(ip: IpAddr, port: u16) -> Vec<u8> {
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

/// The request dumping TCP sockets of `family` in `states`, with an optional bytecode.
pub fn request(family: u8, states: u32, bytecode: Option<&[u8]>, seq: u32) -> Vec<u8> {
    let mut req = vec![0u8; 56];
    req[0] = family;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
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

/// An open sock_diag socket for TCP dumps.
#[derive(Debug)]
pub struct TcpDiag {
    sock: NetlinkSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl TcpDiag {
    /// Opens the socket (answers must come within 2 s).
    pub fn open() -> io::Result<TcpDiag> {
        let sock = NetlinkSocket::open(NETLINK_SOCK_DIAG, libc::SOCK_DGRAM, 0)?;
        sock.set_recv_timeout(Duration::from_secs(2))?;
        Ok(TcpDiag {
            sock,
            seq: 0,
            // The kernel sizes dump datagrams after the buffers we read with, up to 32 KiB.
            buf: vec![0u8; 32 * 1024],
        })
    }

    /// Dumps TCP sockets of `family` (`AF_INET` / `AF_INET6`) in `states`, only those whose
    /// remote end is `remote` when given, into `out` (at most `cap`; the rest are counted in the
    /// returned number).
    pub fn dump(
        &mut self,
        family: u8,
        states: u32,
        remote: Option<(IpAddr, u16)>,
        cap: usize,
        out: &mut Vec<ProcNetSocket>,
    ) -> Result<usize, DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let bytecode = remote.map(|(ip, port)| remote_filter(ip, port));
        let req = request(family, states, bytecode.as_deref(), self.seq);
        self.sock.send_to_kernel(&req).map_err(|source| DiagError::Io {
            what: "sendto",
            source,
        })?;
        let mut total = 0usize;
        let mut over = 0usize;
        loop {
            let len = match self.sock.recv(&mut self.buf) {
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
            for s in batch.sockets {
                if out.len() < cap {
                    out.push(s);
                } else {
                    over += 1;
                }
            }
            if batch.done {
                return Ok(over);
            }
        }
    }

    /// Every TCP socket of both families in `states` (IPv6 sockets included when the kernel
    /// has no IPv6: that dump is then skipped).
    pub fn dump_all(
        &mut self,
        states: u32,
        cap: usize,
        out: &mut Vec<ProcNetSocket>,
    ) -> Result<usize, DiagError> {
        let mut over = self.dump(libc::AF_INET as u8, states, None, cap, out)?;
        match self.dump(libc::AF_INET6 as u8, states, None, cap, out) {
            Ok(n) => over += n,
            Err(DiagError::Refused(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(over)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

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
        let req = request(libc::AF_INET as u8, CONNECTED, Some(&bc), 3);
        assert_eq!(req.len(), 16 + 56 + 4 + 16);
        assert_eq!(netlink::u32_at(&req, 0), Some(req.len() as u32));
    }

    #[test]
    fn live_dump_finds_a_connection_by_its_remote_end() {
        let Ok(mut diag) = TcpDiag::open() else {
            return;
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (_a, _) = l.accept().unwrap();
        let mut out = Vec::new();
        diag.dump(
            libc::AF_INET as u8,
            CONNECTED,
            Some((addr.ip(), addr.port())),
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].local_port, c.local_addr().unwrap().port());
        assert!(out[0].inode != 0);
        let mut listening = Vec::new();
        diag.dump_all(LISTENING, 100_000, &mut listening).unwrap();
        assert!(listening.iter().any(|s| s.local_port == addr.port()));
    }
}
