//! The hub's data directory and its private files. The directory holds every identity's key
//! (in `hub.db`), the CA key and the API token, protected by file modes only: the directory
//! must be owned by the running user or root and not writable by group or others (else the
//! hub refuses to start, naming the path and owner), and at every start it is set to 0700 and
//! the private files to 0600, a looser mode found being tightened and logged. Files are
//! opened with `O_NOFOLLOW`, so a symbolic link planted in the directory is refused, not
//! followed.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tracing::warn;
use twinguard_os::safefile::{open_nofollow, read_limited, write_file_atomically, FileError};

/// The API's bearer token, in the data directory.
pub(crate) const TOKEN_FILE: &str = "api-token";

/// Files holding secrets (keys, the database of keys and its journal files, the API token):
/// mode 0600 at every start.
pub(crate) const PRIVATE_FILES: [&str; 6] = [
    "hub.db",
    "hub.db-wal",
    "hub.db-shm",
    "ca-key.pem",
    "server-key.pem",
    TOKEN_FILE,
];

/// Why the data directory or one of its files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The path is a symbolic link or not a directory / regular file.
    #[error("{path}: {what}")]
    Kind {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// Owned by another user: whoever owns it controls what the hub reads.
    #[error("{path} is owned by uid {owner}, not by this user (uid {me}) or root: run the hub as its owner, or use another --data-dir")]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The running user.
        me: u32,
    },
    /// Writable by group or others: anyone in the group could swap the files in it.
    #[error("{path} (owner uid {owner}) is writable by group or others (mode {mode:04o}): make it private with chmod 700, or use another --data-dir")]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A file was refused by the hardened file layer (a link, not a regular file ...).
    #[error(transparent)]
    File(FileError),
    /// A system call failed (the cause is the source).
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<FileError> for DataDirError {
    fn from(e: FileError) -> DataDirError {
        match e {
            FileError::Io { path, source } => DataDirError::Io { path, source },
            other => DataDirError::File(other),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the data directory (0700) if it is missing, checks its owner and mode, tightens
/// it to 0700, and tightens (or refuses) the private files in it.
pub fn prepare(dir: &Path) -> Result<(), DataDirError> {
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(io_error(dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_error(dir))?;
    if meta.file_type().is_symlink() {
        return Err(DataDirError::Kind {
            path: dir.to_owned(),
            what: "is a symbolic link; give the real directory as --data-dir",
        });
    }
    if !meta.is_dir() {
        return Err(DataDirError::Kind {
            path: dir.to_owned(),
            what: "is not a directory",
        });
    }
    let me = twinguard_os::euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(DataDirError::Owner {
            path: dir.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DataDirError::Writable {
            path: dir.to_owned(),
            owner: meta.uid(),
            mode,
        });
    }
    if mode != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
        warn!(path = %dir.display(), "the data directory had mode {mode:04o}: set to 0700");
    }
    tighten_private_files(dir)
}

/// Sets every existing private file to 0600, logging each one that was looser; refuses a
/// symbolic link or a file that is not regular at those names.
pub(crate) fn tighten_private_files(dir: &Path) -> Result<(), DataDirError> {
    for name in PRIVATE_FILES {
        let path = dir.join(name);
        let file = match open_nofollow(&path, OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(refusal(&path, e)),
        };
        let meta = file.metadata().map_err(io_error(&path))?;
        if !meta.is_file() {
            return Err(DataDirError::Kind {
                path,
                what: "is not a regular file",
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode != 0o600 {
            // On the open descriptor (fchmod), so the file checked is the file changed.
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_error(&path))?;
            warn!(path = %path.display(), "a private file had mode {mode:04o}: set to 0600");
        }
    }
    Ok(())
}

/// A clear error for a failed no-follow open: `ELOOP` means a symbolic link.
pub fn refusal(path: &Path, e: io::Error) -> DataDirError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        DataDirError::Kind {
            path: path.to_owned(),
            what: "is a symbolic link; refusing to follow it",
        }
    } else {
        io_error(path)(e)
    }
}

/// Reads a small private file (at most `max` bytes; a larger one is refused, not cut):
/// regular, not a link, read through the one bounded reader (`safefile::read_limited`).
pub(crate) fn read_private(path: &Path, max: usize) -> Result<String, DataDirError> {
    let file = open_nofollow(path, OpenOptions::new().read(true)).map_err(|e| refusal(path, e))?;
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(DataDirError::Kind {
            path: path.to_owned(),
            what: "is not a regular file",
        });
    }
    let bytes = read_limited(path, file, max)?;
    String::from_utf8(bytes)
        .map_err(|_| io_error(path)(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8")))
}

/// Writes `text` to `path` (mode 0600) through a new temporary file beside it, renamed over
/// the old one: never through a planted link, never half-written, durable once it returns
/// (the one atomic write, `sys::safefile::write_file_atomically`).
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), DataDirError> {
    Ok(write_file_atomically(path, text.as_bytes(), 0o600)?)
}

/// Creates an empty private file (0600) if nothing is at `path`, so a file another program
/// creates there later (SQLite) starts private.
pub(crate) fn create_private_if_missing(path: &Path) -> Result<(), DataDirError> {
    match open_nofollow(path, OpenOptions::new().write(true).create_new(true).mode(0o600)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(refusal(path, e)),
    }
}
