//! The data directory (SPEC §5): mode 0700, one agent per directory (an advisory lock whose file
//! names the holder's pid), and the persistent AgentId.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Creating, opening or setting permissions failed.
    #[error("data directory {path}: {source} (choose another with --data-dir DIR)")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
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

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An open, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (mode 0700) or opens `path`, tightens its mode to 0700, and takes the lock.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        fs::create_dir_all(path).map_err(io_error(path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error(path))?;
        let lock_path = path.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
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
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        lock.set_len(0).map_err(io_error(&lock_path))?;
        lock.rewind().map_err(io_error(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io_error(&lock_path))?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The AgentId: created at first start, then read back. A damaged file is replaced (the old
    /// content is kept beside it as `agent-id.damaged`).
    pub fn agent_id(&self) -> Result<Uuid, DataDirError> {
        let path = self.path.join("agent-id");
        match fs::read_to_string(&path) {
            Ok(text) => {
                if let Ok(id) = Uuid::parse_str(text.trim()) {
                    return Ok(id);
                }
                let _ = fs::rename(&path, self.path.join("agent-id.damaged"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
        let id = Uuid::new_v4();
        write_atomically(&path, format!("{id}\n").as_bytes()).map_err(io_error(&path))?;
        Ok(id)
    }
}

impl DataDir {
    /// Records which mode (`local`, `mqtt`, `iothub`) runs on this directory and returns what
    /// it found before: `None` on a new directory, else the mode of the last start. Events
    /// cached in one mode are sent by the next, whatever its mode, so a change is worth a word.
    pub fn record_mode(&self, mode: &str) -> Result<Option<String>, DataDirError> {
        let path = self.path.join("mode");
        let before = match fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(&path)(e)),
        };
        if before.as_deref() != Some(mode) {
            write_atomically(&path, format!("{mode}\n").as_bytes()).map_err(io_error(&path))?;
        }
        Ok(before)
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. A reader sees the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lock_mode_and_agent_id() {
        let dir = std::env::temp_dir().join(format!("twinguard-datadir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = DataDir::open(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
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
