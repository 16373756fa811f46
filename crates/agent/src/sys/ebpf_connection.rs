//! The kernel side of the eBPF connection source: loads `bpf/connection.bpf.o` (built by
//! `scripts/build-bpf` from `bpf/connection.bpf.c`, committed beside it) with the shared loader
//! ([`super::ebpf::Probes`]), attaches its raw tracepoints (`inet_sock_set_state`, `sys_exit`)
//! and parses the records: one per TCP connect (returning 0 or EINPROGRESS) and
//! per accept, with both ends, the process, its uid, executable and arguments, all taken in
//! the kernel when the system call returns. Parsing is pure and tested on bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::ebpf::{join_path, u16_at, u32_at, u64_at, LoadError, ObjectSpec, Probes, RING_BYTES};

/// The compiled programs (see `scripts/build-bpf`).
static CONNECTION_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/connection.bpf.o");

/// The program and the raw tracepoint it attaches to.
const PROGRAMS: [(&str, &str); 2] = [
    ("connection_state", "inet_sock_set_state"),
    ("connection_sys_exit", "sys_exit"),
];

/// The loaded and attached connection programs.
pub type ConnectionProbes = Probes;

/// Offsets in the kernel's `struct pt_regs` of the system call number and of the first
/// argument as saved at entry, for the architectures the programs support: x86_64 `orig_ax`
/// (15th word) and `di` (14th); arm64 `syscallno` (after `regs[31]`, `sp`, `pc`, `pstate`,
/// `orig_x0`) and `orig_x0`. Both layouts have been stable for many kernel versions; were one
/// to move, the self-test's accept would not be seen and the collector would fall back.
fn regs_offsets() -> Option<(u32, u32)> {
    if cfg!(target_arch = "x86_64") {
        Some((120, 112))
    } else if cfg!(target_arch = "aarch64") {
        Some((280, 272))
    } else {
        None
    }
}

/// The `.rodata` globals of the programs for this architecture: the system call numbers they
/// look for at `sys_exit` and where the saved registers hold the number and first argument.
/// `None` on an architecture the programs do not support.
fn globals() -> Option<Vec<(&'static str, u32)>> {
    let (nr_offset, arg0_offset) = regs_offsets()?;
    let nr = |n: libc::c_long| u32::try_from(n).unwrap_or(u32::MAX);
    Some(vec![
        ("accept_nr", nr(libc::SYS_accept)),
        ("accept4_nr", nr(libc::SYS_accept4)),
        ("connect_nr", nr(libc::SYS_connect)),
        ("sendto_nr", nr(libc::SYS_sendto)),
        ("sendmsg_nr", nr(libc::SYS_sendmsg)),
        ("sendmmsg_nr", nr(libc::SYS_sendmmsg)),
        ("regs_nr_offset", nr_offset),
        ("regs_arg0_offset", arg0_offset),
    ])
}

/// Loads the connection programs with a ring buffer of `ring_bytes` (a power of two, at least
/// a page).
pub fn load_with_ring(ring_bytes: u32) -> Result<ConnectionProbes, LoadError> {
    let globals = globals().ok_or(LoadError::Unsupported(std::env::consts::ARCH))?;
    Probes::load_object(
        &ObjectSpec {
            object: CONNECTION_OBJECT,
            programs: &PROGRAMS,
            globals,
        },
        ring_bytes,
    )
}

/// Loads the connection programs with the default ring buffer.
pub fn load() -> Result<ConnectionProbes, LoadError> {
    load_with_ring(RING_BYTES)
}

/// A loopback TCP connection this process made (listener on 127.0.0.1, connect, accept) and
/// holds open: the connect and accept the eBPF source's self-test must see. Held so that its
/// ports are not reused meanwhile by another connection that would be taken for it.
#[derive(Debug)]
pub struct LoopbackConnection {
    /// The listener's port (the connect's remote port, the accept's local port).
    pub server: u16,
    /// The client's port.
    pub client: u16,
    _sockets: (TcpListener, TcpStream, TcpStream),
}

impl LoopbackConnection {
    /// Makes the connection; the connect may take up to `timeout`.
    pub fn make(timeout: Duration) -> std::io::Result<LoopbackConnection> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let server_addr = listener.local_addr()?;
        let client = TcpStream::connect_timeout(&server_addr, timeout)?;
        let client_port = client.local_addr()?.port();
        let (accepted, _) = listener.accept()?;
        Ok(LoopbackConnection {
            server: server_addr.port(),
            client: client_port,
            _sockets: (listener, client, accepted),
        })
    }
}

/// Which system call made the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    /// `connect` (or a send with `MSG_FASTOPEN`): outbound.
    Connect,
    /// `accept` or `accept4`: inbound.
    Accept,
}

/// What the kernel saw of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Connect or accept.
    pub kind: ConnectionKind,
    /// The process (thread-group) id, in the initial pid namespace.
    pub tgid: u32,
    /// `CLOCK_MONOTONIC` ns.
    pub ktime_ns: u64,
    /// Real uid.
    pub uid: u32,
    /// The socket's local end (as the kernel has it: an IPv6 socket's IPv4-mapped address
    /// stays mapped here).
    pub local: (IpAddr, u16),
    /// The remote end.
    pub remote: (IpAddr, u16),
    /// The interface the socket is bound to (0: none).
    pub ifindex: u32,
    /// `connect` returned EINPROGRESS (non-blocking).
    pub in_progress: bool,
    /// The executable's path as `/proc/<pid>/exe` shows it; `None` when the kernel could not
    /// walk it whole or the task had no memory map.
    pub executable: Option<String>,
    /// The argument bytes (NUL-separated), at most [`super::ebpf::ARGV_READ`].
    pub argv: Vec<u8>,
}

const KIND_CONNECT: u32 = 4;
const KIND_ACCEPT: u32 = 5;
const FLAG_PATH_CUT: u16 = 1;
const FLAG_NO_MM: u16 = 2;
const FLAG_IN_PROGRESS: u16 = 4;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Bytes before a record's data.
const HEADER: usize = 72;

fn address(family: u16, bytes: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            *bytes.first()?,
            *bytes.get(1)?,
            *bytes.get(2)?,
            *bytes.get(3)?,
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes.get(..16)?).ok()?,
        ))),
        _ => None,
    }
}

/// Parses one record (layout: `bpf/connection.bpf.c`); `None` for a record too short, of an
/// unknown kind or family.
pub fn parse_connection(b: &[u8]) -> Option<ConnectionRecord> {
    let kind = match u32_at(b, 0)? {
        KIND_CONNECT => ConnectionKind::Connect,
        KIND_ACCEPT => ConnectionKind::Accept,
        _ => return None,
    };
    let family = u16_at(b, 20)?;
    let path_len = usize::from(u16_at(b, 26)?);
    let argv_len = usize::from(u16_at(b, 28)?);
    let flags = u16_at(b, 30)?;
    let local = address(family, b.get(40..56)?)?;
    let remote = address(family, b.get(56..72)?)?;
    let path = b.get(HEADER..HEADER + path_len)?;
    let argv = b.get(HEADER + path_len..HEADER + path_len + argv_len)?;
    let whole = flags & (FLAG_PATH_CUT | FLAG_NO_MM) == 0 && !path.is_empty();
    Some(ConnectionRecord {
        kind,
        tgid: u32_at(b, 4)?,
        ktime_ns: u64_at(b, 8)?,
        uid: u32_at(b, 16)?,
        local: (local, u16_at(b, 22)?),
        remote: (remote, u16_at(b, 24)?),
        ifindex: u32_at(b, 32)?,
        in_progress: flags & FLAG_IN_PROGRESS != 0,
        executable: whole.then(|| join_path(path)),
        argv: argv.to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn record(
        kind: u32,
        family: u16,
        local: &[u8],
        remote: &[u8],
        ports: (u16, u16),
        flags: u16,
        path: &[u8],
        argv: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&77u32.to_ne_bytes());
        b.extend_from_slice(&5u64.to_ne_bytes());
        b.extend_from_slice(&1000u32.to_ne_bytes());
        b.extend_from_slice(&family.to_ne_bytes());
        b.extend_from_slice(&ports.0.to_ne_bytes());
        b.extend_from_slice(&ports.1.to_ne_bytes());
        b.extend_from_slice(&(path.len() as u16).to_ne_bytes());
        b.extend_from_slice(&(argv.len() as u16).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&3u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        let mut l = local.to_vec();
        l.resize(16, 0);
        let mut r = remote.to_vec();
        r.resize(16, 0);
        b.extend_from_slice(&l);
        b.extend_from_slice(&r);
        assert_eq!(b.len(), HEADER);
        b.extend_from_slice(path);
        b.extend_from_slice(argv);
        b
    }

    #[test]
    fn connection_records_carry_both_ends_and_the_process() {
        let b = record(
            KIND_CONNECT,
            AF_INET,
            &[127, 0, 0, 1],
            &[10, 1, 2, 3],
            (40000, 443),
            FLAG_IN_PROGRESS,
            b"curl\0bin\0usr\0",
            b"curl\0x\0",
        );
        let r = parse_connection(&b).unwrap();
        assert_eq!(r.kind, ConnectionKind::Connect);
        assert_eq!((r.tgid, r.uid, r.ktime_ns, r.ifindex), (77, 1000, 5, 3));
        assert_eq!(r.local, ("127.0.0.1".parse().unwrap(), 40000));
        assert_eq!(r.remote, ("10.1.2.3".parse().unwrap(), 443));
        assert!(r.in_progress);
        assert_eq!(r.executable.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(r.argv, b"curl\0x\0");
        let v6 = record(
            KIND_ACCEPT,
            AF_INET6,
            &[0; 15],
            &[0xfe, 0x80],
            (22, 5555),
            FLAG_NO_MM,
            b"",
            b"",
        );
        let r = parse_connection(&v6).unwrap();
        assert_eq!(r.kind, ConnectionKind::Accept);
        assert_eq!(r.local.0, "::".parse::<IpAddr>().unwrap());
        assert_eq!(r.remote.0, "fe80::".parse::<IpAddr>().unwrap());
        assert!(!r.in_progress);
        assert_eq!(r.executable, None);
    }

    #[test]
    fn short_or_unknown_connection_records_are_refused() {
        let b = record(KIND_ACCEPT, AF_INET, &[1; 4], &[2; 4], (1, 2), 0, b"x\0", b"x\0");
        for n in 0..b.len() {
            assert_eq!(parse_connection(&b[..n]), None, "{n} bytes");
        }
        assert!(parse_connection(&record(9, AF_INET, &[], &[], (1, 2), 0, b"", b"")).is_none());
        assert!(parse_connection(&record(KIND_ACCEPT, 1, &[], &[], (1, 2), 0, b"", b"")).is_none());
    }
}
