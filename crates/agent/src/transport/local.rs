//! Local mode (SPEC §6): messages go to an append-only outbox file (one compact message per
//! line, rotated at a size limit), the reported section to a file written atomically, and the
//! desired document comes from a watched twin file.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{DesiredUpdate, Transport, TransportError};
use twinguard_os::safefile::{fstat, Dir, FileError, FileKind};

/// Size at which the outbox is rotated by default.
pub const DEFAULT_OUTBOX_ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept by default (`outbox.1` .. `outbox.N`).
pub(crate) const DEFAULT_OUTBOX_KEEP: usize = 3;

/// The outbox file and the reported file.
///
/// Both are opened in their directory without following a link, and must be regular files
/// owned by the running user (or root) with one name: a link planted at either name, or a
/// device node, is refused at start, never truncated, appended to or replaced. With
/// `allow_special` (`--allow-special-files`) either may instead be (or link to) a FIFO or a
/// character device, which is written in place: never cut, rotated or replaced.
#[derive(Debug)]
pub(crate) struct LocalTransport {
    outbox_path: PathBuf,
    outbox_dir: Dir,
    outbox_name: String,
    outbox: File,
    /// The outbox is a FIFO or character device: written in place, never cut or rotated.
    outbox_special: bool,
    size: u64,
    rotate_bytes: u64,
    keep: usize,
    reported_path: PathBuf,
    reported_dir: Dir,
    reported_name: String,
    allow_special: bool,
    twin: Option<TwinFile>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { what, source }
}

fn file_error(what: &str) -> impl FnOnce(FileError) -> TransportError + '_ {
    move |e| TransportError::Io {
        what: what.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// How an output file (outbox, reported) may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Missing or a regular file of ours: created, appended, rotated or replaced.
    Regular,
    /// A FIFO or character device the user allowed: written in place.
    Special,
}

/// What `name` in `dir` is, and whether it may be written: see [`LocalTransport`].
fn check_output(dir: &Dir, name: &str, allow_special: bool) -> Result<Output, FileError> {
    let path = dir.join(name);
    let Some(st) = dir.stat(name)? else {
        return Ok(Output::Regular);
    };
    let target = if st.kind == FileKind::Symlink && allow_special {
        // Only a link to a FIFO or device is accepted (`/dev/stdout`), checked again on the
        // open descriptor.
        std::fs::metadata(&path)
            .map(|m| fstat_kind(&m))
            .unwrap_or(FileKind::Symlink)
    } else {
        st.kind
    };
    match target {
        FileKind::Regular if st.kind == FileKind::Regular => {
            check_our_regular(&path, st.uid, st.nlink)?;
            Ok(Output::Regular)
        }
        FileKind::Fifo | FileKind::CharDevice if allow_special => Ok(Output::Special),
        FileKind::Symlink => Err(FileError::Symlink { path, what: "file" }),
        found => Err(FileError::WrongKind {
            path,
            found,
            expected: FileKind::Regular,
        }),
    }
}

fn fstat_kind(m: &fs::Metadata) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_fifo() {
        FileKind::Fifo
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_file() {
        FileKind::Regular
    } else {
        FileKind::Directory
    }
}

/// A regular output file must be ours (or root's) and have one name: a hard link could name
/// another user's file.
fn check_our_regular(path: &Path, uid: u32, nlink: u64) -> Result<(), FileError> {
    if uid != 0 && uid != twinguard_os::euid() {
        return Err(FileError::ForeignOwner {
            path: path.to_owned(),
            uid,
            me: twinguard_os::euid(),
            hint: "the agent writes only files of its own user; remove it or choose another path".into(),
        });
    }
    if nlink > 1 {
        return Err(FileError::HardLinked {
            path: path.to_owned(),
            nlink,
        });
    }
    Ok(())
}

/// Opens the outbox for appending: see [`LocalTransport`] for the rules.
fn open_outbox(dir: &Dir, name: &str, allow_special: bool) -> Result<(File, bool), FileError> {
    let path = dir.join(name);
    match check_output(dir, name, allow_special)? {
        Output::Regular => {
            let file = dir.open(
                name,
                libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_NONBLOCK,
                0o600,
            )?;
            let st = fstat(&file).map_err(|source| FileError::Io {
                path: path.clone(),
                source,
            })?;
            twinguard_os::safefile::expect_regular(&path, &st)?;
            check_our_regular(&path, st.uid, st.nlink)?;
            Ok((file, false))
        }
        Output::Special => {
            // A FIFO's open waits for a reader: SIGINT/SIGTERM still stop the agent (the
            // signal thread exits the process when the start-up does not end in time).
            let file = fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|source| FileError::Io {
                    path: path.clone(),
                    source,
                })?;
            let st = fstat(&file).map_err(|source| FileError::Io {
                path: path.clone(),
                source,
            })?;
            if !matches!(st.kind, FileKind::Fifo | FileKind::CharDevice) {
                return Err(FileError::WrongKind {
                    path,
                    found: st.kind,
                    expected: FileKind::Regular,
                });
            }
            Ok((file, true))
        }
    }
}

impl LocalTransport {
    /// Opens (creates) the outbox and checks the reported file (see the type's doc). A partial
    /// last line - left by a crash in the middle of a write, whose message is still in the
    /// cache and will be sent again - is cut off.
    pub fn open(
        outbox_path: &Path,
        reported_path: &Path,
        rotate_bytes: u64,
        keep: usize,
        twin: Option<TwinFile>,
        allow_special: bool,
    ) -> Result<LocalTransport, TransportError> {
        let what = "outbox".to_owned();
        // The default outbox and reported file live in the data directory, which may not exist
        // yet on a first start: missing parents are created (0700: they may hold the data dir).
        let (outbox_dir, outbox_name) = Dir::open_parent_of(outbox_path).map_err(file_error(&what))?;
        let (outbox, outbox_special) =
            open_outbox(&outbox_dir, &outbox_name, allow_special).map_err(file_error(&what))?;
        let size = if outbox_special {
            0
        } else {
            truncate_partial_line(&outbox).map_err(io(what))?
        };
        let what = "reported".to_owned();
        let (reported_dir, reported_name) = Dir::open_parent_of(reported_path).map_err(file_error(&what))?;
        check_output(&reported_dir, &reported_name, allow_special).map_err(file_error(&what))?;
        Ok(LocalTransport {
            outbox_path: outbox_path.to_owned(),
            outbox_dir,
            outbox_name,
            outbox,
            outbox_special,
            size,
            rotate_bytes: rotate_bytes.max(1),
            keep,
            reported_path: reported_path.to_owned(),
            reported_dir,
            reported_name,
            allow_special,
            twin,
        })
    }

    fn rotate(&mut self) -> Result<(), FileError> {
        let numbered = |n: usize| format!("{}.{n}", self.outbox_name);
        let dir = &self.outbox_dir;
        if self.keep == 0 {
            dir.remove(&self.outbox_name)?;
        } else {
            dir.remove(&numbered(self.keep))?;
            for n in (1..self.keep).rev() {
                let _ = dir.rename(&numbered(n), &numbered(n + 1));
            }
            dir.rename(&self.outbox_name, &numbered(1))?;
        }
        self.outbox = open_outbox(dir, &self.outbox_name, false)?.0;
        self.size = 0;
        Ok(())
    }
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
        if !self.outbox_special && self.size > 0 && self.size + body.len() as u64 + 1 > self.rotate_bytes {
            self.rotate().map_err(file_error(&what))?;
        }
        let mut line = Vec::with_capacity(body.len() + 1);
        line.extend_from_slice(body);
        line.push(b'\n');
        let result = self.outbox.write_all(&line).and_then(|()| {
            if self.outbox_special {
                Ok(())
            } else {
                self.outbox.sync_data()
            }
        });
        if let Err(e) = result {
            if self.outbox_special {
                return Err(io(what)(e));
            }
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
        let what = format!("reported {}", self.reported_path.display());
        let dir = &self.reported_dir;
        let name = &self.reported_name;
        let written = check_output(dir, name, self.allow_special).and_then(|kind| match kind {
            Output::Regular => dir.write_atomically(name, &text),
            Output::Special => fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(dir.join(name))
                .and_then(|mut f| f.write_all(&text))
                .map_err(|source| FileError::Io {
                    path: dir.join(name),
                    source,
                }),
        });
        written.map_err(file_error(&what))
    }

    fn poll_desired(&mut self, now_ms: u64) -> Option<DesiredUpdate> {
        let twin = self.twin.as_mut()?;
        let name = twin.path().display().to_string();
        Some(match twin.poll(now_ms)? {
            TwinChange::Deleted => DesiredUpdate::Cleared,
            TwinChange::Content(Err(e)) => DesiredUpdate::Unreadable(format!("{name}: {e}")),
            TwinChange::Content(Ok(bytes)) => match twinguard_core::config::read_document(&bytes) {
                Ok(doc) => DesiredUpdate::Document { doc, version: None },
                Err(e) => DesiredUpdate::Unreadable(format!("{name}: {e}")),
            },
        })
    }

    fn describe(&self) -> String {
        format!("outbox {}", self.outbox_path.display())
    }

    fn mode(&self) -> &'static str {
        "local"
    }

    fn configuration_hint(&self) -> String {
        "start with `--twin FILE` (e.g. examples/quick-twin.json in the source tree) to set shorter frequencies".into()
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
pub(crate) enum TwinChange {
    /// The file has new content (read with the 1 MiB bound), or why it could not be read
    /// (`cannot read: ...`, or the document is over the limit).
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
pub(crate) struct TwinFile {
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
    pub(crate) fn read_now(&mut self) -> TwinChange {
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
        // Non-blocking and regular files only: a FIFO swapped in while the agent runs is an
        // unreadable version, never a read that waits forever.
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
        let mut t = LocalTransport::open(&outbox, &dir.join("reported.json"), 40, 2, None, false).unwrap();
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
        drop(t);
        // A hard link may name anybody's file: refused, neither file touched.
        fs::write(dir.join("other"), b"x").unwrap();
        fs::remove_file(&outbox).unwrap();
        fs::hard_link(dir.join("other"), &outbox).unwrap();
        let err = LocalTransport::open(&outbox, &dir.join("reported.json"), 40, 2, None, false).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
        assert_eq!(fs::read(dir.join("other")).unwrap(), b"x");
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
