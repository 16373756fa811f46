//! Which processes hold which sockets: a scan of `/proc/<pid>/fd` for `socket:[<inode>]`
//! links, and a process's executable from `/proc/<pid>/exe`.
//!
//! Only the inodes asked for are remembered, so memory is bounded by the sockets of interest,
//! whatever the number of processes and descriptors.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::fs::Root;

/// Most pids remembered per socket (a socket shared by a pre-forking server's workers).
pub(crate) const MAX_PIDS_PER_SOCKET: usize = 16;

/// The owners found by [`socket_owners`].
#[derive(Debug, Default)]
pub struct SocketOwners {
    /// inode -> pids holding it, ascending, at most [`MAX_PIDS_PER_SOCKET`].
    pub owners: HashMap<u64, Vec<u32>>,
    /// Processes whose descriptors could not be read (permission), so some owners may be
    /// unknown.
    pub unreadable: usize,
}

/// The inode of a `socket:[N]` link target.
pub(crate) fn socket_inode(link: &[u8]) -> Option<u64> {
    let rest = link.strip_prefix(b"socket:[")?;
    let digits = rest.strip_suffix(b"]")?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Processes with more descriptors than this have them read by several threads.
const PARALLEL_FDS: usize = 4096;
/// The most threads used for one process's descriptors.
const MAX_THREADS: usize = 4;

/// An open `/proc/<pid>/fd` directory, whose links are read relative to it (`readlinkat`),
/// which spares the kernel a path walk from `/` for every descriptor.
#[derive(Debug)]
struct FdDir(OwnedFd);

impl FdDir {
    fn open(path: &Path) -> io::Result<FdDir> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call; the result is
        // checked before use.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened by us and is owned by nothing else; OwnedFd closes it.
        Ok(FdDir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The socket inode descriptor `fd` refers to (`None` for other files); `Err` on
    /// permission denied.
    fn socket_inode(&self, fd: u32) -> Result<Option<u64>, ()> {
        let mut name = [0u8; 12];
        let digits = fd.to_string();
        name[..digits.len()].copy_from_slice(digits.as_bytes());
        let mut buf = [0u8; 64];
        // SAFETY: `name` is NUL-terminated (u32 has at most 10 digits), `buf` is writable for
        // its length, and the directory descriptor is open for the call's duration.
        let n = unsafe {
            libc::readlinkat(
                self.0.as_raw_fd(),
                name.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::PermissionDenied {
                Err(())
            } else {
                Ok(None)
            };
        }
        let n = usize::try_from(n).unwrap_or(0).min(buf.len());
        Ok(socket_inode(&buf[..n]))
    }
}

/// Reads descriptors `fds` of one process; returns the wanted inodes found and whether some
/// descriptor was unreadable.
fn scan_fds(dir: &FdDir, fds: &[u32], wanted: &HashSet<u64>) -> (Vec<u64>, bool) {
    let mut found = Vec::new();
    let mut denied = false;
    for &fd in fds {
        match dir.socket_inode(fd) {
            Ok(Some(inode)) if wanted.contains(&inode) => found.push(inode),
            Ok(_) => {}
            Err(()) => denied = true,
        }
    }
    (found, denied)
}

/// Scans every process under `root`'s `/proc` for descriptors of the sockets in `wanted`.
pub fn socket_owners(root: &Root, wanted: &HashSet<u64>) -> io::Result<SocketOwners> {
    let mut out = SocketOwners::default();
    if wanted.is_empty() {
        return Ok(out);
    }
    let proc_dir = root.path("/proc");
    let mut pids: Vec<u32> = std::fs::read_dir(&proc_dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .collect();
    pids.sort_unstable();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS);
    let mut fd_path = proc_dir.clone();
    let mut fds: Vec<u32> = Vec::new();
    for pid in pids {
        fd_path.push(pid.to_string());
        fd_path.push("fd");
        let listed = std::fs::read_dir(&fd_path).and_then(|entries| {
            fds.clear();
            fds.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())),
            );
            FdDir::open(&fd_path)
        });
        fd_path.pop();
        fd_path.pop();
        let dir = match listed {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                out.unreadable += 1;
                continue;
            }
            // The process exited meanwhile, or shows no descriptor table.
            Err(_) => continue,
        };
        let (found, denied) = if fds.len() > PARALLEL_FDS && threads > 1 {
            let chunk = fds.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = fds
                    .chunks(chunk)
                    .map(|part| s.spawn(|| scan_fds(&dir, part, wanted)))
                    .collect();
                handles
                    .into_iter()
                    .fold((Vec::new(), false), |(mut all, any_denied), h| match h.join() {
                        Ok((found, denied)) => {
                            all.extend(found);
                            (all, any_denied || denied)
                        }
                        Err(_) => (all, any_denied),
                    })
            })
        } else {
            scan_fds(&dir, &fds, wanted)
        };
        out.unreadable += usize::from(denied);
        for inode in found {
            let pids = out.owners.entry(inode).or_default();
            if pids.len() < MAX_PIDS_PER_SOCKET && pids.last() != Some(&pid) {
                pids.push(pid);
            }
        }
    }
    Ok(out)
}

/// The executable of `pid` (the `/proc/<pid>/exe` link, lossily as text; a deleted binary
/// keeps the kernel's ` (deleted)` suffix), `None` when unreadable.
pub fn executable(root: &Root, pid: u32) -> Option<String> {
    let link = std::fs::read_link(root.path(format!("/proc/{pid}/exe"))).ok()?;
    Some(link.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_give_inodes() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999999]"), None);
    }
}
