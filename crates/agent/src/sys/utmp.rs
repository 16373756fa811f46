//! `wtmp` / `btmp` records (glibc's `struct utmp`, 384 bytes on every Linux architecture glibc
//! supports: 32-bit time fields even on 64-bit machines), parsed from bytes; and following such
//! a file by offset across rotation and truncation.
//!
//! Strings are fixed-size, NUL-padded fields (a field that fills its size has no NUL), kept
//! lossily. Integers are native-endian.

use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Size of one record.
pub(crate) const RECORD_SIZE: usize = 384;
/// `ut_type` values.
pub(crate) const LOGIN_PROCESS: i16 = 6;
/// A user logged in (wtmp); a failed attempt in btmp also uses it.
pub(crate) const USER_PROCESS: i16 = 7;
/// A session ended (wtmp).
pub const DEAD_PROCESS: i16 = 8;

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UtmpRecord {
    /// `ut_type`.
    pub kind: i16,
    /// `ut_pid`: the login process.
    pub pid: i32,
    /// `ut_line`: the terminal (`pts/0`, `ssh:notty`).
    pub line: String,
    /// `ut_user`: the user name (or what was typed, for a failed attempt).
    pub user: String,
    /// `ut_host`: the remote host name or address.
    pub host: String,
    /// `ut_tv.tv_sec`.
    pub seconds: i64,
    /// `ut_tv.tv_usec`.
    pub micros: i64,
    /// `ut_addr_v6`: the remote address, network order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one record (`None` when shorter than [`RECORD_SIZE`]).
pub(crate) fn parse_record(b: &[u8]) -> Option<UtmpRecord> {
    if b.len() < RECORD_SIZE {
        return None;
    }
    Some(UtmpRecord {
        kind: i16::from_ne_bytes([b[0], b[1]]),
        pid: i32_at(b, 4)?,
        line: text(&b[8..40]),
        user: text(&b[44..76]),
        host: text(&b[76..332]),
        seconds: i64::from(i32_at(b, 340)?),
        micros: i64::from(i32_at(b, 344)?),
        addr: b[348..364].try_into().ok()?,
    })
}

impl UtmpRecord {
    /// The remote address: from `ut_addr_v6` when set (IPv4 when only its first word is),
    /// else `ut_host` when that is an address.
    pub fn address(&self) -> Option<IpAddr> {
        if self.addr.iter().any(|&b| b != 0) {
            if self.addr[4..].iter().all(|&b| b == 0) {
                return Some(IpAddr::V4(Ipv4Addr::new(
                    self.addr[0],
                    self.addr[1],
                    self.addr[2],
                    self.addr[3],
                )));
            }
            let v6 = Ipv6Addr::from(self.addr);
            return Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
        }
        // `ut_host` may carry a display (`:0`) or a scope (`fe80::1%eth0`).
        let host = self.host.split('%').next().unwrap_or("");
        host.parse().ok()
    }
}

/// Where a followed file was left: its identity (device, inode) and the offset read up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`: a rotated file has a new inode.
    pub ino: u64,
    /// Bytes read (always a whole number of records).
    pub offset: u64,
}

/// What a read of a followed file gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Whole records, each with the position just after it.
    pub records: Vec<(UtmpRecord, Position)>,
    /// Where the read started (after rotation or truncation, at 0).
    pub start: Position,
}

/// Reads the records after `from` in the file at `path`, at most `max` of them. A different
/// inode (rotated) or a smaller size (truncated) restarts at 0; with no previous position,
/// reading starts at the end (history before the agent started is not news). A partial record
/// at the end is left for the next read.
pub(crate) fn read_after(path: &Path, from: Option<Position>, max: usize) -> io::Result<Chunk> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let (dev, ino, size) = (meta.dev(), meta.ino(), meta.len());
    let whole = size - size % RECORD_SIZE as u64;
    let offset = match from {
        None => whole,
        Some(p) if p.dev != dev || p.ino != ino || p.offset > size => 0,
        Some(p) => p.offset - p.offset % RECORD_SIZE as u64,
    };
    let start = Position { dev, ino, offset };
    let mut out = Chunk {
        records: Vec::new(),
        start,
    };
    let available = (whole.saturating_sub(offset) / RECORD_SIZE as u64).min(max as u64) as usize;
    if available == 0 {
        return Ok(out);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; available * RECORD_SIZE];
    file.read_exact(&mut buf)?;
    for (i, rec) in buf.chunks_exact(RECORD_SIZE).enumerate() {
        if let Some(r) = parse_record(rec) {
            let pos = Position {
                dev,
                ino,
                offset: offset + ((i + 1) * RECORD_SIZE) as u64,
            };
            out.records.push((r, pos));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/utmp/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn real_wtmp_records_parse() {
        if cfg!(target_endian = "big") {
            return;
        }
        // Written by util-linux `utmpdump -r` (glibc's own struct) on this machine.
        let bytes = fixture("wtmp");
        assert_eq!(bytes.len() % RECORD_SIZE, 0);
        let records: Vec<UtmpRecord> = bytes.chunks_exact(RECORD_SIZE).filter_map(parse_record).collect();
        let login = records
            .iter()
            .find(|r| r.kind == USER_PROCESS && r.user == "pi")
            .unwrap();
        assert_eq!(login.line, "pts/0");
        assert_eq!(login.host, "192.0.2.10");
        assert_eq!(login.address(), Some("192.0.2.10".parse().unwrap()));
        assert_eq!(login.pid, 4242);
        assert_eq!(login.seconds, 1_700_000_000);
        let v6 = records.iter().find(|r| r.user == "admin").unwrap();
        assert_eq!(v6.address(), Some("2001:db8::7".parse().unwrap()));
        assert!(records.iter().any(|r| r.kind == DEAD_PROCESS));
    }

    #[test]
    fn real_btmp_records_parse() {
        if cfg!(target_endian = "big") {
            return;
        }
        let bytes = fixture("btmp");
        let r = parse_record(&bytes).unwrap();
        assert_eq!(
            (r.kind, r.user.as_str(), r.line.as_str()),
            (LOGIN_PROCESS, "root", "ssh:notty")
        );
        assert_eq!(r.address(), Some("198.51.100.23".parse().unwrap()));
    }

    #[test]
    fn addresses_from_host_text() {
        let mut r = parse_record(&[0u8; RECORD_SIZE]).unwrap();
        assert_eq!(r.address(), None);
        r.host = "fe80::1%eth0".into();
        assert_eq!(r.address(), Some("fe80::1".parse().unwrap()));
        r.host = ":0".into();
        assert_eq!(r.address(), None);
    }

    #[test]
    fn following_starts_at_the_end_then_reads_new_whole_records() {
        let dir = std::env::temp_dir().join(format!("tg-utmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wtmp");
        let rec = |n: u8| {
            let mut b = vec![0u8; RECORD_SIZE];
            b[0] = USER_PROCESS as u8;
            b[44] = b'a' + n;
            b
        };
        std::fs::write(&path, rec(0)).unwrap();
        let first = read_after(&path, None, 100).unwrap();
        assert!(first.records.is_empty());
        assert_eq!(first.start.offset, RECORD_SIZE as u64);
        let mut data = rec(0);
        data.extend(rec(1));
        data.extend(&rec(2)[..100]);
        std::fs::write(&path, &data).unwrap();
        let next = read_after(&path, Some(first.start), 100).unwrap();
        assert_eq!(next.records.len(), 1);
        assert_eq!(next.records[0].0.user, "b");
        let pos = next.records[0].1;
        assert_eq!(pos.offset, 2 * RECORD_SIZE as u64);
        // Truncated (rotated in place): from the start.
        std::fs::write(&path, rec(3)).unwrap();
        let again = read_after(&path, Some(pos), 100).unwrap();
        assert_eq!(again.records[0].0.user, "d");
        // Replaced by a new file (rotated by rename): a new inode, from the start.
        let mut two = rec(4);
        two.extend(rec(5));
        let fresh = dir.join("wtmp.1");
        std::fs::write(&fresh, &two).unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        let rotated = read_after(&path, Some(again.records[0].1), 1).unwrap();
        assert_eq!(rotated.records.len(), 1, "at most `max`");
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(data in proptest::collection::vec(any::<u8>(), 0..800)) {
            if let Some(r) = parse_record(&data) {
                let _ = r.address();
            }
        }
    }
}
