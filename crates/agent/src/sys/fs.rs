//! Bounded reads of system files, relative to a [`Root`] so that tests can point every reader
//! at a fixture tree instead of `/`.
//!
//! Nothing here reads without a size bound: a file larger than its bound is an error
//! ([`read_bounded`]) or is read line by line with each line bounded ([`BoundedLines`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use twinguard_os::safefile::{self, FileError};

/// Where the system's files are: `/` on a real machine, a fixture directory in tests. Every
/// absolute system path (`/proc/net/tcp`, `/etc/passwd`) is looked up under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Default for Root {
    fn default() -> Root {
        Root(PathBuf::from("/"))
    }
}

impl Root {
    /// The real system (`/`).
    pub fn system() -> Root {
        Root::default()
    }

    /// A tree rooted at `dir` (a fixture).
    pub fn at(dir: impl Into<PathBuf>) -> Root {
        Root(dir.into())
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// Whether this is the real system's root.
    pub(crate) fn is_system(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// `abs` (an absolute system path such as `/etc/passwd`) under this root.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        let rel = abs.strip_prefix("/").unwrap_or(abs);
        self.0.join(rel)
    }
}

/// Reads all of `path` (a system file: links followed), failing when it holds more than
/// `limit` bytes. The bound is enforced on what is read, not on `stat` (procfs files report a
/// size of 0), by [`safefile::read_limited`], the one bounded read of the agent.
pub(crate) fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, FileError> {
    let file = File::open(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    safefile::read_limited(path, file, limit)
}

/// Reads `path` as text (invalid UTF-8 replaced), failing past `limit` bytes.
pub(crate) fn read_text(path: &Path, limit: usize) -> Result<String, FileError> {
    read_bounded(path, limit).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads a small one-value file (sysfs attribute, sysctl) and trims it; `None` when it cannot
/// be read. Values above 4 KiB are refused.
pub(crate) fn read_value(path: &Path) -> Option<String> {
    read_text(path, 4096).ok().map(|s| s.trim().to_owned())
}

/// The metadata of `path`, links followed (a mode, owner or sticky-bit check).
pub fn metadata(path: &Path) -> io::Result<std::fs::Metadata> {
    std::fs::metadata(path)
}

/// The metadata of `path` itself, a link not followed.
pub fn symlink_metadata(path: &Path) -> io::Result<std::fs::Metadata> {
    std::fs::symlink_metadata(path)
}

/// The entries of directory `path`, in the order the file system gives them (a bounded walk
/// is the caller's: it counts what it visits).
pub fn read_dir(path: &Path) -> io::Result<std::fs::ReadDir> {
    std::fs::read_dir(path)
}

/// The names in directory `path` (lossily as text), sorted.
pub(crate) fn dir_names(path: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The target of the symbolic link `path`, lossily as text.
pub(crate) fn read_link_text(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Lines of a reader, each at most `max_line` bytes, invalid UTF-8 replaced. A longer line is
/// skipped whole (without buffering it) and counted in [`BoundedLines::skipped`]; at most
/// `max_lines` lines are returned, the rest counted in [`BoundedLines::truncated`].
#[derive(Debug)]
pub(crate) struct BoundedLines<R> {
    reader: BufReader<R>,
    max_line: usize,
    max_lines: usize,
    returned: usize,
    buf: Vec<u8>,
    skipped: usize,
    truncated: bool,
    error: Option<io::Error>,
}

impl BoundedLines<File> {
    /// Opens `path` for bounded line reading.
    pub fn open(path: &Path, max_line: usize, max_lines: usize) -> Result<Self, FileError> {
        let file = File::open(path).map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(BoundedLines::new(file, max_line, max_lines))
    }
}

impl<R: Read> BoundedLines<R> {
    /// Reads lines of `reader`.
    pub fn new(reader: R, max_line: usize, max_lines: usize) -> Self {
        BoundedLines {
            reader: BufReader::with_capacity(64 * 1024, reader),
            max_line,
            max_lines,
            returned: 0,
            buf: Vec::new(),
            skipped: 0,
            truncated: false,
            error: None,
        }
    }

    /// Lines skipped because they were longer than the bound.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Whether reading stopped at `max_lines` with input left.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The read error that ended the lines early, if one did.
    pub(crate) fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Reads one raw line into `buf` (without the newline); `Ok(false)` at the end.
    fn next_raw(&mut self) -> io::Result<bool> {
        self.buf.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if too_long {
                    self.skipped += 1;
                    self.buf.clear();
                    return Ok(false);
                }
                return Ok(any);
            }
            any = true;
            let (take, done) = match memchr_newline(chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                let content = if done { &chunk[..take - 1] } else { chunk };
                if self.buf.len() + content.len() > self.max_line {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(content);
                }
            }
            self.reader.consume(take);
            if done {
                if too_long {
                    // Skip the long line and go on with the next one.
                    self.skipped += 1;
                    too_long = false;
                    any = false;
                    continue;
                }
                return Ok(true);
            }
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

impl<R: Read> Iterator for BoundedLines<R> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.error.is_some() {
            return None;
        }
        match self.next_raw() {
            Ok(true) => {
                if self.returned >= self.max_lines {
                    self.truncated = true;
                    return None;
                }
                self.returned += 1;
                let mut line = String::from_utf8_lossy(&self.buf).into_owned();
                if line.ends_with('\r') {
                    line.pop();
                }
                Some(line)
            }
            Ok(false) => None,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn root_joins_absolute_paths() {
        assert_eq!(Root::system().path("/etc/passwd"), PathBuf::from("/etc/passwd"));
        assert_eq!(
            Root::at("/tmp/x").path("/etc/passwd"),
            PathBuf::from("/tmp/x/etc/passwd")
        );
        assert!(Root::system().is_system());
        assert!(!Root::at("/tmp/x").is_system());
    }

    #[test]
    fn long_lines_are_skipped_and_counted() {
        let long = "x".repeat(100_000);
        let text = format!("a\n{long}\nb\r\nc");
        let mut lines = BoundedLines::new(text.as_bytes(), 16, 100);
        let got: Vec<String> = lines.by_ref().collect();
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(lines.skipped(), 1);
        assert!(!lines.truncated());
    }

    #[test]
    fn a_long_last_line_without_newline_is_skipped() {
        let text = format!("a\n{}", "y".repeat(100));
        let mut lines = BoundedLines::new(text.as_bytes(), 16, 100);
        assert_eq!(lines.by_ref().collect::<Vec<_>>(), ["a"]);
        assert_eq!(lines.skipped(), 1);
    }

    #[test]
    fn line_count_is_bounded_and_invalid_utf8_is_kept_lossily() {
        let text = b"\xffa\nb\nc\n";
        let mut lines = BoundedLines::new(&text[..], 16, 2);
        assert_eq!(lines.by_ref().collect::<Vec<_>>(), ["\u{fffd}a", "b"]);
        assert!(lines.truncated());
    }

    #[test]
    fn read_bounded_refuses_large_files() {
        let dir = std::env::temp_dir().join(format!("tg-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("big");
        std::fs::write(&f, vec![b'a'; 100]).unwrap();
        assert!(matches!(read_bounded(&f, 99), Err(FileError::TooLarge { .. })));
        assert_eq!(read_bounded(&f, 100).unwrap().len(), 100);
        assert!(read_bounded(&dir.join("none"), 10).unwrap_err().is_not_found());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
