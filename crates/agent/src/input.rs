//! Reading documents the user points the agent at (a twin file, or standard input), bounded in
//! size so that a huge or endless input cannot exhaust memory.

use std::path::Path;

use serde_json::Value;

use twinguard_core::config::{read_document, Unreadable, MAX_DOCUMENT_BYTES};
use twinguard_os::safefile::{open_regular, read_limited, FileError};

/// Why a twin document could not be read. The messages do not name the file: callers put its
/// name in front (`FILE: error: ...`).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    /// Something other than a regular file is at the path (a FIFO, a directory ...).
    #[error("cannot read: {}", short_reason(.0))]
    Refused(#[source] FileError),
    /// The bytes are not a JSON document (or more than [`MAX_DOCUMENT_BYTES`] of them).
    #[error("{0}")]
    Unreadable(#[from] Unreadable),
}

/// Reads at most [`MAX_DOCUMENT_BYTES`] from `path` (`-` = standard input); more is
/// [`Unreadable::TooLarge`], reported with the limit, not the size.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    let read = if path.as_os_str() == "-" {
        read_limited(path, std::io::stdin().lock(), MAX_DOCUMENT_BYTES)
    } else {
        // Non-blocking open, regular files only (checked on the open descriptor): a FIFO or a
        // device at the path is an error at once, never a wait.
        open_regular(path).and_then(|file| read_limited(path, file, MAX_DOCUMENT_BYTES))
    };
    read.map_err(|e| match e {
        FileError::Io { source, .. } => ReadError::Io(source),
        FileError::TooLarge { .. } => ReadError::Unreadable(Unreadable::TooLarge),
        other => ReadError::Refused(other),
    })
}

/// The reason of a file error without the path (the caller's message names the file).
fn short_reason(e: &FileError) -> String {
    match e {
        FileError::WrongKind { found, expected, .. } => {
            format!("is {}, not {}", found.describe(), expected.describe())
        }
        other => other.to_string(),
    }
}

/// Reads and parses a twin document.
pub fn read_twin(path: &Path) -> Result<Value, ReadError> {
    let bytes = read_bounded(path)?;
    Ok(read_document(&bytes)?)
}
/// How a path is named in messages: `-` becomes `<stdin>`.
pub fn display_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    }
}
