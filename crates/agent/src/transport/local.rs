//! Local mode (SPEC §6): messages go to an append-only outbox file (one compact message per
//! line, rotated at a size limit), the reported section to a file written atomically, and the
//! desired document comes from a watched twin file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{DesiredUpdate, Transport, TransportError};
use crate::datadir::write_atomically;

/// Size at which the outbox is rotated by default.
pub const DEFAULT_OUTBOX_ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept by default (`outbox.1` .. `outbox.N`).
pub const DEFAULT_OUTBOX_KEEP: usize = 3;

/// The outbox file and the reported file.
#[derive(Debug)]
pub struct LocalTransport {
    outbox_path: PathBuf,
    outbox: File,
    size: u64,
    rotate_bytes: u64,
    keep: usize,
    reported_path: PathBuf,
    twin: Option<TwinFile>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { what, source }
}

impl LocalTransport {
    /// Opens (creates) the outbox. A partial last line - left by a crash in the middle of a
    /// write, whose message is still in the cache and will be sent again - is cut off.
    pub fn open(
        outbox_path: &Path,
        reported_path: &Path,
        rotate_bytes: u64,
        keep: usize,
        twin: Option<TwinFile>,
    ) -> Result<LocalTransport, TransportError> {
        let what = format!("outbox {}", outbox_path.display());
        // The default outbox and reported file live in the data directory, which may not exist
        // yet on a first start; create missing parents (0700: they may hold the data dir).
        for path in [outbox_path, reported_path] {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
                std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
                    .create(parent)
                    .map_err(io(format!("directory {}", parent.display())))?;
            }
        }
        let outbox = open_outbox(outbox_path).map_err(io(what.clone()))?;
        let size = truncate_partial_line(&outbox).map_err(io(what))?;
        Ok(LocalTransport {
            outbox_path: outbox_path.to_owned(),
            outbox,
            size,
            rotate_bytes: rotate_bytes.max(1),
            keep,
            reported_path: reported_path.to_owned(),
            twin,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut name = self.outbox_path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            fs::remove_file(&self.outbox_path)?;
        } else {
            let _ = fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(numbered(n), numbered(n + 1));
            }
            fs::rename(&self.outbox_path, numbered(1))?;
        }
        self.outbox = open_outbox(&self.outbox_path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_outbox(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Cuts the file after its last newline; returns the new size.
fn truncate_partial_line(file: &File) -> std::io::Result<u64> {
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok(0);
    }
    let mut f = file;
    let mut pos = size;
    let mut buf = vec![0u8; 64 * 1024];
    while pos > 0 {
        let start = pos.saturating_sub(buf.len() as u64);
        let len = (pos - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..len])?;
        if let Some(i) = buf[..len].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != size {
                file.set_len(keep)?;
                file.sync_data()?;
            }
            return Ok(keep);
        }
        pos = start;
    }
    file.set_len(0)?;
    Ok(0)
}

impl Transport for LocalTransport {
    fn deliver(&mut self, body: &[u8]) -> Result<(), TransportError> {
        let what = format!("outbox {}", self.outbox_path.display());
        if self.size > 0 && self.size + body.len() as u64 + 1 > self.rotate_bytes {
            self.rotate().map_err(io(what.clone()))?;
        }
        let mut line = Vec::with_capacity(body.len() + 1);
        line.extend_from_slice(body);
        line.push(b'\n');
        let result = self
            .outbox
            .write_all(&line)
            .and_then(|()| self.outbox.sync_data());
        if let Err(e) = result {
            // Leave no partial line behind (e.g. disk full): the message stays in the cache.
            let _ = self.outbox.set_len(self.size);
            return Err(io(what)(e));
        }
        self.size += line.len() as u64;
        Ok(())
    }

    fn report(&mut self, section: &Value) -> Result<(), TransportError> {
        let mut text = serde_json::to_vec_pretty(section).unwrap_or_default();
        text.push(b'\n');
        write_atomically(&self.reported_path, &text)
            .map_err(io(format!("reported {}", self.reported_path.display())))
    }

    fn poll_desired(&mut self, now_ms: u64) -> Option<DesiredUpdate> {
        let twin = self.twin.as_mut()?;
        let name = twin.path().display().to_string();
        Some(match twin.poll(now_ms)? {
            TwinChange::Deleted => DesiredUpdate::Cleared,
            TwinChange::Content(Err(e)) => DesiredUpdate::Unreadable(format!("cannot read {name}: {e}")),
            TwinChange::Content(Ok(bytes)) => match crate::config::read_document(&bytes) {
                Ok(doc) => DesiredUpdate::Document { doc, version: None },
                Err(e) => DesiredUpdate::Unreadable(format!("{name}: {e}")),
            },
        })
    }

    fn describe(&self) -> String {
        format!("outbox {}", self.outbox_path.display())
    }
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// A change of the twin file, after debouncing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TwinChange {
    /// The file has new content (read with the 1 MiB bound), or could not be read.
    Content(Result<Vec<u8>, String>),
    /// The file is gone: the desired document is empty (all defaults).
    Deleted,
}

/// How long after a file's mtime its metadata may still hide a change: file systems store
/// times with a granularity (1 s on ext4 with 128-byte inodes, 2 s on FAT), so two writes of
/// the same size within one tick leave device, inode, size, mtime and ctime all equal.
const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// Watches the twin file by polling its metadata (device, inode, size, mtime, ctime): cheap, and
/// it sees editors that replace the file by rename as well as in-place writes. A change is
/// reported once the file has been stable for the debounce time.
///
/// Metadata alone misses a rewrite of the same size within the file system's timestamp tick
/// (a burst of versions on a file system with 1 s timestamps). So, as long as a version was
/// read within [`RACY_WINDOW_NS`] of its mtime, every poll also compares the content with
/// what was read (a checksum of at most 1 MiB, for at most two seconds after a change): the
/// newest version is always the one applied after a burst.
#[derive(Debug)]
pub struct TwinFile {
    path: PathBuf,
    applied: Option<Option<Fingerprint>>,
    candidate: Option<(Option<Fingerprint>, u64)>,
    debounce_ms: u64,
    /// The content last read, while its metadata may still hide a change.
    racy: Option<RacyRead>,
}

/// A version read too close to its mtime for the metadata to prove it is the last one.
#[derive(Clone, Copy, Debug)]
struct RacyRead {
    /// CRC32 of the content read.
    digest: u32,
    /// The file's mtime when read (ns since the epoch).
    mtime_ns: i128,
    /// The wall clock at the last read that found this content (ns since the epoch).
    read_ns: i128,
}

fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

impl TwinFile {
    /// Watches `path`; `poll` reports its first state as a change.
    pub fn new(path: &Path, debounce_ms: u64) -> TwinFile {
        TwinFile {
            path: path.to_owned(),
            applied: None,
            candidate: None,
            debounce_ms,
            racy: None,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        let m = fs::metadata(&self.path).ok()?;
        Some(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }

    /// Reads the file now, without debouncing (at start-up).
    pub fn read_now(&mut self) -> TwinChange {
        let fp = self.fingerprint();
        self.applied = Some(fp);
        self.candidate = None;
        self.read(fp)
    }

    /// Reads the version `fp` names, remembering what was read while the metadata may hide
    /// a later version.
    fn read(&mut self, fp: Option<Fingerprint>) -> TwinChange {
        if fp.is_none() && !self.path.exists() {
            self.racy = None;
            return TwinChange::Deleted;
        }
        let read_ns = wall_ns();
        let content = crate::input::read_bounded(&self.path).map_err(|e| e.to_string());
        self.racy = match (&content, fp) {
            (Ok(bytes), Some(fp)) if read_ns < fp.mtime_ns.saturating_add(RACY_WINDOW_NS) => Some(RacyRead {
                digest: crc32fast::hash(bytes),
                mtime_ns: fp.mtime_ns,
                read_ns,
            }),
            _ => None,
        };
        TwinChange::Content(content)
    }

    /// Whether the content differs from the version last read although the metadata is the
    /// same (only checked while that version is racy).
    fn content_changed(&mut self) -> bool {
        let Some(racy) = self.racy else {
            return false;
        };
        if racy.read_ns >= racy.mtime_ns.saturating_add(RACY_WINDOW_NS) {
            self.racy = None;
            return false;
        }
        let read_ns = wall_ns();
        match crate::input::read_bounded(&self.path) {
            Ok(bytes) if crc32fast::hash(&bytes) == racy.digest => {
                // Same content, seen later: once this is past the window it is proven.
                self.racy = Some(RacyRead { read_ns, ..racy });
                false
            }
            _ => true,
        }
    }

    /// Checks the file at monotonic time `now_ms`; returns a change once it is stable.
    pub fn poll(&mut self, now_ms: u64) -> Option<TwinChange> {
        let fp = self.fingerprint();
        if self.applied == Some(fp) && !self.content_changed() {
            self.candidate = None;
            return None;
        }
        match self.candidate {
            Some((c, since)) if c == fp => {
                if now_ms.saturating_sub(since) >= self.debounce_ms {
                    self.applied = Some(fp);
                    self.candidate = None;
                    return Some(self.read(fp));
                }
                None
            }
            _ => {
                self.candidate = Some((fp, now_ms));
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twinguard-local-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn outbox_appends_lines_cuts_partial_tail_and_rotates() {
        let dir = temp("outbox");
        let outbox = dir.join("outbox.jsonl");
        fs::write(&outbox, b"{\"a\":1}\n{\"b\":").unwrap();
        let mut t = LocalTransport::open(&outbox, &dir.join("reported.json"), 40, 2, None).unwrap();
        assert_eq!(fs::read(&outbox).unwrap(), b"{\"a\":1}\n");
        t.deliver(b"{\"c\":2}").unwrap();
        assert_eq!(fs::read(&outbox).unwrap(), b"{\"a\":1}\n{\"c\":2}\n");
        for i in 0..10 {
            t.deliver(format!("{{\"n\":{i:010}}}").as_bytes()).unwrap();
        }
        assert!(fs::metadata(&outbox).unwrap().len() <= 40);
        assert!(dir.join("outbox.jsonl.1").exists() && dir.join("outbox.jsonl.2").exists());
        assert!(!dir.join("outbox.jsonl.3").exists());
        t.report(&serde_json::json!({"x": 1})).unwrap();
        let reported: Value = serde_json::from_slice(&fs::read(dir.join("reported.json")).unwrap()).unwrap();
        assert_eq!(reported["x"], 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn twin_file_changes_are_debounced_and_renames_seen() {
        let dir = temp("twin");
        let path = dir.join("twin.json");
        let mut w = TwinFile::new(&path, 200);
        assert_eq!(w.read_now(), TwinChange::Deleted);
        assert_eq!(w.poll(0), None);
        fs::write(dir.join("new"), b"{}").unwrap();
        fs::rename(dir.join("new"), &path).unwrap();
        assert_eq!(w.poll(1000), None);
        assert_eq!(w.poll(1100), None);
        assert_eq!(w.poll(1200), Some(TwinChange::Content(Ok(b"{}".to_vec()))));
        assert_eq!(w.poll(1500), None);
        fs::remove_file(&path).unwrap();
        assert_eq!(w.poll(2000), None);
        assert_eq!(w.poll(2300), Some(TwinChange::Deleted));
        fs::remove_dir_all(&dir).unwrap();
    }
}
