//! The segment files of the cache: naming, the scan at open (torn-tail truncation), appends
//! to the head segment with rotation, positioned reads, syncing and deletion. This is the only
//! part of the cache that touches the file system; what the records *mean* is the cache's
//! business (`mod.rs`), their bytes are `format.rs`'s.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::format::{self, HeaderCheck, Record, HEADER_BYTES};
use super::types::CacheError;

/// Where a record starts (ordered as the log is: by segment, then offset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Location {
    pub(super) segment: u32,
    pub(super) offset: u64,
}

/// What the cache knows of one segment file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SegmentMeta {
    /// File length in bytes.
    pub(super) len: u64,
    /// Bytes of Put records here that hold the current copy of a cached entry.
    pub(super) live: u64,
    /// Bytes of all Put records here (live or not).
    pub(super) puts: u64,
}

impl SegmentMeta {
    /// Bytes compaction would reclaim: everything but the header and the live Puts.
    pub(super) fn garbage(&self) -> u64 {
        self.len.saturating_sub(HEADER_BYTES + self.live)
    }

    /// Whether the segment holds a Put of an entry that is no longer cached here. Such a Put
    /// would come back to life at the next open if a later segment holding its Remove were
    /// deleted first, so no later segment may be deleted while this one exists.
    pub(super) fn holds_dead_puts(&self) -> bool {
        self.puts > self.live
    }
}

/// What the scan at open discarded.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) torn_bytes: u64,
    pub(super) skipped_bytes: u64,
}

/// The append-only segment log.
#[derive(Debug)]
pub(super) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u32, SegmentMeta>,
    head_no: u32,
    head: File,
    /// Set when a failed write could not be rolled back: the head's tail is garbage, so the
    /// next write goes to a fresh segment (the garbage is then a torn middle, skipped at open
    /// and reclaimed by compaction).
    head_tainted: bool,
    /// Set when the head segment was written by an older format version: the next write goes
    /// to a fresh segment, so no file mixes versions.
    head_outdated: bool,
    /// The last segment read from, kept open because sends read entries in log order.
    reader: Option<(u32, File)>,
    disk_bytes: u64,
    bytes_written: u64,
    /// Highest `disk_bytes` seen since the last `take_peak` (tests check transients).
    #[cfg(test)]
    peak: u64,
    /// Test hooks: make every write fail with this errno; or let this many writes (appends
    /// and segment creations) succeed, then fail all with ENOSPC.
    #[cfg(test)]
    pub(super) fail_writes: Option<i32>,
    #[cfg(test)]
    pub(super) fail_after: Option<u64>,
    /// Test counters: writes that succeeded, failures injected.
    #[cfg(test)]
    pub(super) writes: u64,
    #[cfg(test)]
    pub(super) failures: u64,
}

/// `cache-000001.log`.
pub(super) fn segment_name(no: u32) -> String {
    format!("cache-{no:06}.log")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("cache-")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn io_err(path: &Path, op: &'static str, source: io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`, calling `on_record` for every valid
    /// record in log order. A damaged tail of the newest segment is truncated; a damaged part
    /// of an older segment is skipped and left in place. A header that is not ours, or of
    /// another version, is an error naming the file.
    pub(super) fn open(
        dir: &Path,
        segment_bytes: u64,
        mut on_record: impl FnMut(Location, u64, Record<'_>),
    ) -> Result<(SegmentLog, Scan), CacheError> {
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err(dir, "create directory", e))?;
        }
        let mut numbers = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| io_err(dir, "read directory", e))? {
            let item = item.map_err(|e| io_err(dir, "read directory", e))?;
            if let Some(no) = item.file_name().to_str().and_then(parse_segment_name) {
                numbers.push(no);
            }
        }
        numbers.sort_unstable();

        let mut scan = Scan::default();
        let mut segments = BTreeMap::new();
        let mut newest_version = format::FORMAT_VERSION;
        for (i, &no) in numbers.iter().enumerate() {
            let is_newest = i + 1 == numbers.len();
            let path = dir.join(segment_name(no));
            let (len, version) =
                scan_segment(&path, no, is_newest, segment_bytes, &mut scan, &mut on_record)?;
            newest_version = version;
            segments.insert(
                no,
                SegmentMeta {
                    len,
                    ..SegmentMeta::default()
                },
            );
        }

        let (head_no, head) = match numbers.last() {
            Some(&no) => {
                let path = dir.join(segment_name(no));
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, "open", e))?;
                (no, file)
            }
            None => {
                let file = create_segment(dir, 1)?;
                segments.insert(
                    1,
                    SegmentMeta {
                        len: HEADER_BYTES,
                        ..SegmentMeta::default()
                    },
                );
                (1, file)
            }
        };
        let disk_bytes = segments.values().map(|m| m.len).sum();
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            head_no,
            head,
            head_tainted: false,
            head_outdated: newest_version != format::FORMAT_VERSION,
            reader: None,
            disk_bytes,
            bytes_written: 0,
            #[cfg(test)]
            peak: disk_bytes,
            #[cfg(test)]
            fail_writes: None,
            #[cfg(test)]
            fail_after: None,
            #[cfg(test)]
            writes: 0,
            #[cfg(test)]
            failures: 0,
        };
        Ok((log, scan))
    }

    /// The path of segment `no`.
    pub(super) fn path(&self, no: u32) -> PathBuf {
        self.dir.join(segment_name(no))
    }

    /// Total length of all segment files.
    pub(super) fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Bytes written through `write(2)` since open (records, headers, compaction copies).
    pub(super) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The highest `disk_bytes` since the last call, then resets it to the current value.
    #[cfg(test)]
    pub(super) fn take_peak(&mut self) -> u64 {
        std::mem::replace(&mut self.peak, self.disk_bytes)
    }

    /// The end of the log: where the next record would go (before any rotation).
    pub(super) fn end(&self) -> Location {
        Location {
            segment: self.head_no,
            offset: self.segments.get(&self.head_no).map_or(HEADER_BYTES, |m| m.len),
        }
    }

    pub(super) fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    pub(super) fn head_no(&self) -> u32 {
        self.head_no
    }

    pub(super) fn segments(&self) -> &BTreeMap<u32, SegmentMeta> {
        &self.segments
    }

    pub(super) fn meta_mut(&mut self, no: u32) -> Option<&mut SegmentMeta> {
        self.segments.get_mut(&no)
    }

    /// Appends `buf` (whole records) to the head segment, rotating first when the head is
    /// full. On failure the partial write is rolled back (truncated) so the log never holds
    /// a torn record in the middle. Returns where `buf` starts.
    pub(super) fn append(&mut self, buf: &[u8]) -> Result<Location, CacheError> {
        let head_len = self.segments.get(&self.head_no).map_or(0, |m| m.len);
        let len = buf.len() as u64;
        // A record larger than a segment gets a segment of its own (never sharing with other
        // records), so compaction never has to copy it while it is live.
        if self.head_tainted
            || self.head_outdated
            || (head_len > HEADER_BYTES && head_len.saturating_add(len) > self.segment_bytes)
        {
            self.rotate()?;
        }
        let head_len = self.segments.get(&self.head_no).map_or(0, |m| m.len);
        let result = self.write_head(buf);
        match result {
            Ok(()) => {
                self.grow(self.head_no, len);
                self.bytes_written = self.bytes_written.saturating_add(len);
                Ok(Location {
                    segment: self.head_no,
                    offset: head_len,
                })
            }
            Err(e) => {
                if self.head.set_len(head_len).is_err() {
                    self.head_tainted = true;
                    let real = self.head.metadata().map_or(head_len + len, |m| m.len());
                    self.grow(self.head_no, real.saturating_sub(head_len));
                }
                Err(io_err(&self.path(self.head_no), "write", e))
            }
        }
    }

    fn write_head(&mut self, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(e) = self.injected_failure() {
            return Err(e);
        }
        self.head.write_all(buf)
    }

    #[cfg(test)]
    fn injected_failure(&mut self) -> Option<io::Error> {
        let errno = match self.fail_after.as_mut() {
            Some(0) => Some(libc::ENOSPC),
            Some(n) => {
                *n -= 1;
                self.fail_writes
            }
            None => self.fail_writes,
        };
        match errno {
            Some(errno) => {
                self.failures += 1;
                Some(io::Error::from_raw_os_error(errno))
            }
            None => {
                self.writes += 1;
                None
            }
        }
    }

    fn grow(&mut self, no: u32, by: u64) {
        if let Some(m) = self.segments.get_mut(&no) {
            m.len = m.len.saturating_add(by);
        }
        self.disk_bytes = self.disk_bytes.saturating_add(by);
        #[cfg(test)]
        {
            self.peak = self.peak.max(self.disk_bytes);
        }
    }

    /// Closes the head (fdatasync: a finished segment is durable) and starts a new one.
    pub(super) fn rotate(&mut self) -> Result<(), CacheError> {
        #[cfg(test)]
        if let Some(e) = self.injected_failure() {
            return Err(io_err(&self.path(self.head_no), "create segment", e));
        }
        if !self.head_tainted {
            self.head
                .sync_data()
                .map_err(|e| io_err(&self.path(self.head_no), "fdatasync", e))?;
        }
        let no = self.head_no.checked_add(1).ok_or_else(|| {
            io_err(
                &self.dir,
                "create segment",
                io::Error::other("segment numbers exhausted"),
            )
        })?;
        let file = create_segment(&self.dir, no)?;
        self.head = file;
        self.head_no = no;
        self.head_tainted = false;
        self.head_outdated = false;
        self.segments.insert(no, SegmentMeta::default());
        self.grow(no, HEADER_BYTES);
        self.bytes_written = self.bytes_written.saturating_add(HEADER_BYTES);
        Ok(())
    }

    /// Reads `len` bytes at `at`.
    pub(super) fn read_at(&mut self, at: Location, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut buf = vec![0u8; len];
        if at.segment == self.head_no {
            self.head.read_exact_at(&mut buf, at.offset)?;
            return Ok(buf);
        }
        let cached = matches!(&self.reader, Some((no, _)) if *no == at.segment);
        if !cached {
            let file = File::open(self.path(at.segment))?;
            self.reader = Some((at.segment, file));
        }
        match &self.reader {
            Some((_, file)) => file.read_exact_at(&mut buf, at.offset)?,
            None => return Err(io::Error::other("reader not open")),
        }
        Ok(buf)
    }

    /// fdatasync of the head segment (older segments were synced when they were rotated).
    pub(super) fn sync(&mut self) -> Result<(), CacheError> {
        self.head
            .sync_data()
            .map_err(|e| io_err(&self.path(self.head_no), "fdatasync", e))
    }

    /// Deletes a segment file other than the head.
    pub(super) fn delete(&mut self, no: u32) -> Result<(), CacheError> {
        if no == self.head_no {
            return Ok(());
        }
        if matches!(&self.reader, Some((r, _)) if *r == no) {
            self.reader = None;
        }
        let path = self.path(no);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "delete", e)),
        }
        if let Some(m) = self.segments.remove(&no) {
            self.disk_bytes = self.disk_bytes.saturating_sub(m.len);
        }
        Ok(())
    }
}

/// Creates segment `no` with its header, durable (file data and directory entry) before it
/// is used, so a power loss never leaves a segment with a damaged header.
fn create_segment(dir: &Path, no: u32) -> Result<File, CacheError> {
    let path = dir.join(segment_name(no));
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(&path, "create", e))?;
    let written = file.write_all(&format::header()).and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Leave no headerless file behind (it would read as torn at the next open, which is
        // harmless, but a clean directory is easier to reason about).
        let _ = fs::remove_file(&path);
        return Err(io_err(&path, "write header", e));
    }
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "fsync directory", e))
}

/// The largest file the scan reads: a full segment plus one maximal record. Anything larger
/// is not a segment this code wrote.
fn max_segment_file(segment_bytes: u64) -> u64 {
    HEADER_BYTES + segment_bytes.max(super::SEGMENT_BYTES) + u64::from(format::MAX_RECORD_LEN) + 8
}

/// Reads one segment, calling `on_record` for each valid record; returns the file's length
/// afterwards and its format version.
///
/// After a bad record the scan resynchronises on the next offset where a valid record
/// starts (frame, sane length, matching CRC32), so damage in the middle of a file loses only
/// the damaged bytes. Event bytes cannot fake a record: a valid length field has a zero high
/// byte, and compact JSON never contains a 0x00 byte. A bad region that runs to the end of
/// the newest segment is a write cut short by a crash (or zeros after a power loss): it is
/// truncated. Anything else is left in place and reported; compaction reclaims it later.
fn scan_segment(
    path: &Path,
    no: u32,
    is_newest: bool,
    segment_bytes: u64,
    scan: &mut Scan,
    on_record: &mut impl FnMut(Location, u64, Record<'_>),
) -> Result<(u64, u32), CacheError> {
    let file = File::open(path).map_err(|e| io_err(path, "open", e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, "stat", e))?.len();
    if file_len > max_segment_file(segment_bytes) {
        return Err(io_err(
            path,
            "read",
            io::Error::other(format!("{file_len} bytes is larger than any cache segment")),
        ));
    }
    let mut data = Vec::with_capacity(usize::try_from(file_len).unwrap_or(0));
    file.take(file_len)
        .read_to_end(&mut data)
        .map_err(|e| io_err(path, "read", e))?;

    let version = match format::check_header(&data) {
        HeaderCheck::Valid(version) => version,
        HeaderCheck::Torn if is_newest => {
            // A crash while the segment was being created: it holds no record. Rewrite the
            // header so the file is a valid empty segment again.
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err(path, "open", e))?;
            f.set_len(0)
                .and_then(|()| f.write_all(&format::header()))
                .and_then(|()| f.sync_data())
                .map_err(|e| io_err(path, "rewrite header", e))?;
            scan.torn_bytes += data.len() as u64;
            return Ok((HEADER_BYTES, format::FORMAT_VERSION));
        }
        HeaderCheck::Torn | HeaderCheck::Corrupt => {
            return Err(CacheError::CorruptHeader {
                path: path.to_path_buf(),
            })
        }
        HeaderCheck::Version(found) => {
            return Err(CacheError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: format::FORMAT_VERSION,
            })
        }
    };

    let mut pos = HEADER_BYTES as usize;
    let mut skipped = 0u64;
    let mut bad_tail = 0u64;
    while pos < data.len() {
        match format::decode(&data[pos..]) {
            Ok((record, size)) => {
                on_record(
                    Location {
                        segment: no,
                        offset: pos as u64,
                    },
                    size as u64,
                    record,
                );
                pos += size;
            }
            Err(_) => match (pos + 1..data.len()).find(|&p| format::decode(&data[p..]).is_ok()) {
                Some(next) => {
                    skipped += (next - pos) as u64;
                    pos = next;
                }
                None => {
                    bad_tail = (data.len() - pos) as u64;
                    break;
                }
            },
        }
    }
    scan.skipped_bytes += skipped;
    if bad_tail == 0 {
        return Ok((file_len, version));
    }
    if is_newest {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, "open", e))?;
        f.set_len(pos as u64)
            .and_then(|()| f.sync_data())
            .map_err(|e| io_err(path, "truncate torn tail", e))?;
        scan.torn_bytes += bad_tail;
        return Ok((pos as u64, version));
    }
    scan.skipped_bytes += bad_tail;
    Ok((file_len, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(7), "cache-000007.log");
        assert_eq!(parse_segment_name("cache-000007.log"), Some(7));
        assert_eq!(parse_segment_name("cache-1234567.log"), Some(1_234_567));
        assert_eq!(parse_segment_name("cache-.log"), None);
        assert_eq!(parse_segment_name("cache-12a.log"), None);
        assert_eq!(parse_segment_name("cache-000007.log.tmp"), None);
        assert_eq!(parse_segment_name("other"), None);
    }
}
