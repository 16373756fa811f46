//! The data directory (SPEC §5): mode 0700, one agent per directory (an advisory lock whose file
//! names the holder's pid), and the persistent AgentId.
//!
//! The directory is opened through [`Dir`]: it must not be a symbolic link, must belong to the
//! running user or root, must not be writable by group or others, and its ancestors must pass
//! the StrictModes check. Every file in it is then opened relative to the directory's
//! descriptor without following links, so a link planted there (`lock`, `.agent-id.tmp`,
//! `cache`) is refused, never followed.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use twinguard_os::safefile::{self, expect_regular, fstat, try_lock, Dir, FileError};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Creating, opening or checking the directory or a file in it failed.
    #[error("data directory: {0} (choose another with --data-dir DIR)")]
    File(#[from] FileError),
    /// Another agent holds the lock.
    #[error(
        "data directory {path} is in use by another twinguard (pid {holder}); one agent per data directory"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The pid written in the lock file, or "unknown".
        holder: String,
    },
}

/// An open, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    dir: Dir,
    _lock: File,
}

/// Largest lock or agent-id file read back.
const SMALL_FILE_BYTES: usize = 4096;

impl DataDir {
    /// Creates (mode 0700) or opens `path`, checks it (see the module doc), tightens its mode
    /// to 0700, and takes the lock.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let dir = Dir::create_trusted(path)?;
        let lock_path = dir.join("lock");
        let mut lock = dir.open("lock", libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK, 0o600)?;
        let st = fstat(&lock).map_err(|source| FileError::Io {
            path: lock_path.clone(),
            source,
        })?;
        expect_regular(&lock_path, &st)?;
        let io = |source| {
            DataDirError::File(FileError::Io {
                path: lock_path.clone(),
                source,
            })
        };
        if !try_lock(&lock).map_err(io)? {
            let mut holder = String::new();
            let _ = (&lock).take(SMALL_FILE_BYTES as u64).read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(DataDirError::Locked {
                path: path.to_owned(),
                holder: if holder.is_empty() {
                    "unknown".into()
                } else {
                    holder.to_owned()
                },
            });
        }
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(DataDir { dir, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The checked, open directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The cache's directory `cache` (created 0700): a real directory owned by us, checked
    /// before the cache opens its files by path (which is safe from then on: nobody else may
    /// change the entries of a directory that only we can write).
    pub(crate) fn cache_dir(&self) -> Result<PathBuf, DataDirError> {
        let sub = self.dir.sub_dir(crate::pipeline::cache::CACHE_DIR_NAME)?;
        Ok(sub.path().to_owned())
    }

    /// The AgentId: created at first start, then read back. A damaged file is replaced (the old
    /// content is kept beside it as `agent-id.damaged`).
    pub(crate) fn agent_id(&self) -> Result<Uuid, DataDirError> {
        if let Some(bytes) = self.dir.read("agent-id", SMALL_FILE_BYTES).or_else(|e| match e {
            FileError::TooLarge { .. } => Ok(Some(Vec::new())),
            e => Err(e),
        })? {
            if let Ok(id) = Uuid::parse_str(String::from_utf8_lossy(&bytes).trim()) {
                return Ok(id);
            }
            let _ = self.dir.rename("agent-id", "agent-id.damaged");
        }
        let id = Uuid::new_v4();
        self.dir
            .write_atomically("agent-id", format!("{id}\n").as_bytes())?;
        Ok(id)
    }
}

impl DataDir {
    /// Records which mode (`local`, `mqtt`, `iothub`) runs on this directory and returns what
    /// it found before: `None` on a new directory, else the mode of the last start. Events
    /// cached in one mode are sent by the next, whatever its mode, so a change is worth a word.
    pub(crate) fn record_mode(&self, mode: &str) -> Result<Option<String>, DataDirError> {
        let before = self
            .dir
            .read("mode", SMALL_FILE_BYTES)?
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
        if before.as_deref() != Some(mode) {
            self.dir
                .write_atomically("mode", format!("{mode}\n").as_bytes())?;
        }
        Ok(before)
    }
}

/// Reads the AgentId of `dir` without taking the lock (one-shot commands), never following a
/// link and never blocking on a FIFO.
pub(crate) fn peek_agent_id(dir: &Path) -> Option<Uuid> {
    let bytes = safefile::lstat(&dir.join("agent-id"))
        .ok()
        .flatten()
        .filter(|s| s.kind == safefile::FileKind::Regular)
        .and_then(|_| safefile::read_regular(&dir.join("agent-id"), SMALL_FILE_BYTES).ok())?;
    Uuid::parse_str(String::from_utf8_lossy(&bytes).trim()).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lock_mode_and_agent_id() {
        let dir = std::env::temp_dir().join(format!("twinguard-datadir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = DataDir::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        match DataDir::open(&dir) {
            Err(DataDirError::Locked { holder, .. }) => assert_eq!(holder, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        let id = a.agent_id().unwrap();
        assert_eq!(a.agent_id().unwrap(), id);
        drop(a);
        let b = DataDir::open(&dir).unwrap();
        assert_eq!(b.agent_id().unwrap(), id);
        fs::write(dir.join("agent-id"), "garbage").unwrap();
        assert_ne!(b.agent_id().unwrap(), id);
        fs::remove_dir_all(&dir).unwrap();
    }
}
