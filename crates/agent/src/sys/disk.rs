//! What `twinguard doctor` asks the file system: free space (`statvfs(2)`) and whether this
//! process may create files in a directory (`access(2)`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// Bytes available to unprivileged writers on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = c_path(path)?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field types differ between targets (u32 on 32-bit ARM for some); all fit in u64.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether this process may create and remove entries in `dir` (`access(2)` with `W_OK |
/// X_OK`, checked with the real ids, as the agent would run).
pub(crate) fn may_write_into(dir: &Path) -> bool {
    let Ok(c) = c_path(dir) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_and_access_of_a_real_directory() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).is_ok_and(|b| b > 0));
        assert!(may_write_into(&dir));
        assert!(free_bytes(Path::new("/nonexistent/twinguard")).is_err());
        assert!(!may_write_into(Path::new("/nonexistent/twinguard")));
        assert!(free_bytes(Path::new("a\0b")).is_err());
    }
}
