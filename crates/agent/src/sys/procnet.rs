//! Sockets from `/proc/net/{tcp,tcp6,udp,udp6}`: a pure parser of one line, and a streaming
//! reader that keeps only the sockets a filter wants, up to a cap, so a table of 100,000
//! sockets costs memory for the kept ones only.
//!
//! Addresses in these files are the kernel's `__be32` words printed with `%08X`, i.e. read as
//! native-endian integers: turning each word back into native-endian bytes gives the address
//! in network order on any machine. Ports are printed as host-order numbers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::fs::{BoundedLines, Root};
use twinguard_os::safefile::FileError;

/// A socket's state in the kernel's `TCP_*` numbering (include/net/tcp_states.h), which
/// `/proc/net/*` and sock_diag both use, UDP sockets included (`Established`: connected,
/// `Close`: not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// `TCP_ESTABLISHED` (1).
    Established,
    /// `TCP_SYN_SENT` (2): a connect in progress.
    SynSent,
    /// `TCP_SYN_RECV` (3): a connection not yet accepted.
    SynRecv,
    /// `TCP_FIN_WAIT1` (4).
    FinWait1,
    /// `TCP_FIN_WAIT2` (5).
    FinWait2,
    /// `TCP_TIME_WAIT` (6): closed by this end first; kept a while without an owner.
    TimeWait,
    /// `TCP_CLOSE` (7); for UDP, an unconnected socket.
    Close,
    /// `TCP_CLOSE_WAIT` (8).
    CloseWait,
    /// `TCP_LAST_ACK` (9).
    LastAck,
    /// `TCP_LISTEN` (10).
    Listen,
    /// `TCP_CLOSING` (11).
    Closing,
    /// `TCP_NEW_SYN_RECV` (12).
    NewSynRecv,
    /// `TCP_BOUND_INACTIVE` (13, Linux 6.5).
    BoundInactive,
    /// A number this list does not know (a newer kernel).
    Other(u8),
}

impl TcpState {
    /// The state of kernel number `n`.
    pub const fn from_kernel(n: u8) -> TcpState {
        match n {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            12 => TcpState::NewSynRecv,
            13 => TcpState::BoundInactive,
            n => TcpState::Other(n),
        }
    }

    /// The kernel's number of the state.
    pub const fn kernel(self) -> u8 {
        match self {
            TcpState::Established => 1,
            TcpState::SynSent => 2,
            TcpState::SynRecv => 3,
            TcpState::FinWait1 => 4,
            TcpState::FinWait2 => 5,
            TcpState::TimeWait => 6,
            TcpState::Close => 7,
            TcpState::CloseWait => 8,
            TcpState::LastAck => 9,
            TcpState::Listen => 10,
            TcpState::Closing => 11,
            TcpState::NewSynRecv => 12,
            TcpState::BoundInactive => 13,
            TcpState::Other(n) => n,
        }
    }
}

/// A set of states, as sock_diag's `idiag_states` bit mask (bit n: kernel state n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpStates(u32);

impl TcpStates {
    /// Every state of a socket that is or was connected and still has an owner: ESTABLISHED,
    /// SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING. TIME_WAIT
    /// sockets have no inode (no owner any more) and are left out.
    pub(crate) const CONNECTED: TcpStates = TcpStates::of(&[
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Closing,
    ]);
    /// [`TcpStates::CONNECTED`], TIME_WAIT and CLOSE: every state a connection can be in after
    /// it was made.
    pub(crate) const EVER_CONNECTED: TcpStates =
        TcpStates(TcpStates::CONNECTED.0 | TcpStates::of(&[TcpState::TimeWait, TcpState::Close]).0);
    /// LISTEN only.
    pub(crate) const LISTENING: TcpStates = TcpStates::of(&[TcpState::Listen]);

    /// The set of `states` (numbers above 31 cannot be asked for and are left out).
    pub const fn of(states: &[TcpState]) -> TcpStates {
        let mut bits = 0u32;
        let mut i = 0;
        while i < states.len() {
            let n = states[i].kernel();
            if n < 32 {
                bits |= 1 << n;
            }
            i += 1;
        }
        TcpStates(bits)
    }

    /// The bit mask.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

/// The longest line accepted; real lines are under 200 bytes.
const MAX_LINE: usize = 1024;
/// The most lines read from one table (bounds the time spent on a hostile table).
const MAX_LINES: usize = 4_000_000;

/// The transport of a socket table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// The address family of a socket table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (`tcp`, `udp`).
    V4,
    /// IPv6 (`tcp6`, `udp6`).
    V6,
}

/// One socket table: a transport and a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Table {
    /// TCP or UDP.
    pub transport: Transport,
    /// IPv4 or IPv6.
    pub family: Family,
}

impl Table {
    /// The four tables ListeningPorts reads.
    pub const ALL: [Table; 4] = [
        Table::new(Transport::Tcp, Family::V4),
        Table::new(Transport::Tcp, Family::V6),
        Table::new(Transport::Udp, Family::V4),
        Table::new(Transport::Udp, Family::V6),
    ];

    /// The table of `transport` and `family`.
    pub const fn new(transport: Transport, family: Family) -> Table {
        Table { transport, family }
    }

    /// Its path under `/proc`.
    pub(crate) fn proc_path(self) -> &'static str {
        match (self.transport, self.family) {
            (Transport::Tcp, Family::V4) => "/proc/net/tcp",
            (Transport::Tcp, Family::V6) => "/proc/net/tcp6",
            (Transport::Udp, Family::V4) => "/proc/net/udp",
            (Transport::Udp, Family::V6) => "/proc/net/udp6",
        }
    }
}

/// One socket, as a line of a `/proc/net` table describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcNetSocket {
    /// Local address.
    pub local_ip: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address (unspecified when not connected).
    pub remote_ip: IpAddr,
    /// Remote port (0 when not connected).
    pub remote_port: u16,
    /// The kernel state (`TCP_*` numbering, also for UDP).
    pub state: TcpState,
    /// The owner's uid.
    pub uid: u32,
    /// The socket's inode (0 for sockets being torn down).
    pub inode: u64,
    /// The interface the socket is bound to (`SO_BINDTODEVICE`, or the scope of a link-local
    /// IPv6 address), 0 for none; `/proc/net` does not carry it, so it is 0 there.
    pub ifindex: u32,
}

impl ProcNetSocket {
    /// Whether the socket is listening in the sense of ListeningPorts: a TCP socket in LISTEN,
    /// or a UDP socket bound to a port and not connected. Established connections never are.
    pub fn is_listening(&self, transport: Transport) -> bool {
        match transport {
            Transport::Tcp => self.state == TcpState::Listen,
            Transport::Udp => {
                self.state == TcpState::Close
                    && self.local_port != 0
                    && self.remote_port == 0
                    && self.remote_ip.is_unspecified()
            }
        }
    }
}

/// Decodes a `/proc/net` address: 8 hex digits (IPv4) or 32 (IPv6), each 8-digit group a
/// native-endian `u32` holding 4 bytes of the address in network order.
pub(crate) fn decode_address(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => hex.get(..8).and_then(word).map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let w = word(hex.get(i * 8..i * 8 + 8)?)?;
                chunk.copy_from_slice(&w);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

fn decode_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    if port.len() > 4 {
        return None;
    }
    Some((decode_address(addr)?, u16::from_str_radix(port, 16).ok()?))
}

/// Parses one line of a socket table; `None` for the header and for malformed lines.
pub(crate) fn parse_line(line: &str) -> Option<ProcNetSocket> {
    let mut fields = line.split_ascii_whitespace();
    let slot = fields.next()?;
    if !slot.ends_with(':') {
        return None;
    }
    let (local_ip, local_port) = decode_endpoint(fields.next()?)?;
    let (remote_ip, remote_port) = decode_endpoint(fields.next()?)?;
    let state_text = fields.next()?;
    if state_text.len() > 2 {
        return None;
    }
    let state = TcpState::from_kernel(u8::from_str_radix(state_text, 16).ok()?);
    // tx_queue:rx_queue, tr:tm->when, retrnsmt
    let _ = (fields.next()?, fields.next()?, fields.next()?);
    let uid = fields.next()?.parse().ok()?;
    let _timeout = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    Some(ProcNetSocket {
        local_ip,
        local_port,
        remote_ip,
        remote_port,
        state,
        uid,
        inode,
        ifindex: 0,
    })
}

/// What [`read_table`] kept of one table, and what it could not keep.
#[derive(Debug, Default)]
pub struct TableRead {
    /// The sockets the filter kept, up to the cap.
    pub sockets: Vec<ProcNetSocket>,
    /// Kept-worthy sockets beyond the cap.
    pub over_cap: usize,
    /// Lines that were not sockets (malformed, too long), the header excepted.
    pub malformed: usize,
}

/// Streams the table `path` and keeps the sockets `keep` accepts, at most `cap` of them.
pub(crate) fn read_table_at(
    path: &Path,
    cap: usize,
    keep: impl Fn(&ProcNetSocket) -> bool,
) -> Result<TableRead, FileError> {
    let mut lines = BoundedLines::open(path, MAX_LINE, MAX_LINES)?;
    let mut out = scan_lines(&mut lines, cap, keep);
    out.malformed += lines.skipped();
    if let Some(source) = lines.take_error() {
        return Err(FileError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(out)
}

/// [`read_table_at`] for `table` under `root`.
pub fn read_table(
    root: &Root,
    table: Table,
    cap: usize,
    keep: impl Fn(&ProcNetSocket) -> bool,
) -> Result<TableRead, FileError> {
    read_table_at(&root.path(table.proc_path()), cap, keep)
}

/// Parses the lines of a table (pure; the first line is the header).
pub(crate) fn scan_lines(
    lines: impl Iterator<Item = String>,
    cap: usize,
    keep: impl Fn(&ProcNetSocket) -> bool,
) -> TableRead {
    let mut out = TableRead::default();
    for (n, line) in lines.enumerate() {
        match parse_line(&line) {
            Some(sock) => {
                if keep(&sock) {
                    if out.sockets.len() < cap {
                        out.sockets.push(sock);
                    } else {
                        out.over_cap += 1;
                    }
                }
            }
            None if n == 0 || line.trim().is_empty() => {}
            None => out.malformed += 1,
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[cfg(target_endian = "little")]
    #[test]
    fn decodes_little_endian_addresses() {
        assert_eq!(decode_address("0100007F").unwrap().to_string(), "127.0.0.1");
        assert_eq!(decode_address("00000000").unwrap().to_string(), "0.0.0.0");
        assert_eq!(
            decode_address("00000000000000000000000001000000")
                .unwrap()
                .to_string(),
            "::1"
        );
        assert_eq!(
            decode_address("0000000000000000FFFF00000100007F")
                .unwrap()
                .to_string(),
            "::ffff:127.0.0.1"
        );
        assert_eq!(
            decode_address("000080FE00000000FF005450E1C2A8FE")
                .unwrap()
                .to_string(),
            "fe80::5054:ff:fea8:c2e1"
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "0100007",
            "0100007G",
            "0000000000000000000000000100000",
            "x".repeat(32).as_str(),
        ] {
            assert_eq!(decode_address(bad), None, "{bad:?}");
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_a_line() {
        let line = "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 503 1 00000000604f9225 100 0 0 10 0";
        let s = parse_line(line).unwrap();
        assert_eq!(s.local_ip.to_string(), "0.0.0.0");
        assert_eq!(s.local_port, 2024);
        assert_eq!(s.state, TcpState::Listen);
        assert_eq!(s.inode, 503);
        assert!(s.is_listening(Transport::Tcp));
        assert!(!s.is_listening(Transport::Udp));
    }

    #[test]
    fn header_and_garbage_are_not_sockets() {
        let text = "  sl  local_address rem_address   st tx_queue\n\
                    garbage\n\
                    1: 0100007F:0035 00000000:0000 07 0:0 0:0 0 0 0 42\n\
                    2: 0100007F:FFFFF 00000000:0000 07 0:0 0:0 0 0 0 42\n";
        let read = scan_lines(text.lines().map(str::to_owned), 10, |_| true);
        assert_eq!(read.sockets.len(), 1);
        assert_eq!(read.malformed, 2);
    }

    #[test]
    fn connected_udp_is_not_listening() {
        let s = ProcNetSocket {
            local_ip: "10.0.0.1".parse().unwrap(),
            local_port: 5000,
            remote_ip: "10.0.0.2".parse().unwrap(),
            remote_port: 53,
            state: TcpState::Established,
            uid: 0,
            inode: 1,
            ifindex: 0,
        };
        assert!(!s.is_listening(Transport::Udp));
        assert!(!s.is_listening(Transport::Tcp));
        let unbound = ProcNetSocket {
            local_port: 0,
            state: TcpState::Close,
            remote_ip: "0.0.0.0".parse().unwrap(),
            remote_port: 0,
            ..s
        };
        assert!(!unbound.is_listening(Transport::Udp));
    }

    #[test]
    fn cap_counts_what_it_cannot_keep() {
        let line = "1: 0100007F:0035 00000000:0000 0A 0:0 0:0 0 0 0 42";
        let lines = std::iter::once("header".to_owned()).chain(std::iter::repeat_n(line.to_owned(), 5));
        let read = scan_lines(lines, 3, |_| true);
        assert_eq!(read.sockets.len(), 3);
        assert_eq!(read.over_cap, 2);
    }
}
