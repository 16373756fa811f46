//! Reading documents the user points the agent at (a twin file, or standard input), bounded in
//! size so that a huge or endless input cannot exhaust memory.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::config::{read_document, Unreadable, MAX_DOCUMENT_BYTES};

/// Why a twin document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a JSON document.
    #[error("{0}")]
    Unreadable(#[from] Unreadable),
}

/// Reads at most [`MAX_DOCUMENT_BYTES`] + 1 bytes from `path` (`-` = standard input).
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let limit = MAX_DOCUMENT_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)?;
    } else {
        // Non-blocking open, regular files only (checked on the open descriptor): a FIFO or a
        // device at the path is an error at once, never a wait.
        let file = crate::sys::safefile::open_regular(path).map_err(|e| match e {
            crate::sys::safefile::FileError::Io { source, .. } => source,
            other => std::io::Error::other(short_reason(&other)),
        })?;
        file.take(limit).read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

/// The reason of a file error without the path (the caller's message names the file).
fn short_reason(e: &crate::sys::safefile::FileError) -> String {
    match e {
        crate::sys::safefile::FileError::WrongKind { found, expected, .. } => {
            format!("is {}, not {}", found.describe(), expected.describe())
        }
        other => other.to_string(),
    }
}

/// Reads and parses a twin document. A file over the limit reports the limit, not its size.
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
