//! What `/proc/<pid>` says about one process at the moment an event names it: executable,
//! command line, user ids, parent and start time - read through one directory descriptor, so
//! every file read belongs to the same process even if its pid is reused meanwhile (a
//! `/proc/<pid>` descriptor keeps pointing at the process it was opened for; once that process
//! is gone, reads through it fail instead of reading a newcomer).
//!
//! Parsers are pure functions over the bytes of `stat`, `status` and `cmdline`; every read is
//! bounded; invalid UTF-8 is kept lossily.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::execfacts::{self, ExecFacts};

pub(crate) use super::execfacts::MAX_CMDLINE;
/// Most bytes read from `stat` or `status` (real ones are under 2 KiB).
const MAX_SMALL_FILE: usize = 16 * 1024;

/// What was read about a process. `None` fields could not be read (the process ended between
/// the event and the read, or access was refused).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `/proc/<pid>/exe`, lossily as text (a deleted binary keeps the ` (deleted)` suffix).
    pub executable: Option<String>,
    /// The arguments joined with spaces, at most [`MAX_CMDLINE`] bytes.
    pub command_line: Option<String>,
    /// Whether the command line was cut.
    pub command_line_truncated: bool,
    /// Real uid.
    pub uid: Option<u32>,
    /// Effective uid.
    pub euid: Option<u32>,
    /// Parent pid, from `stat`.
    pub ppid: Option<u32>,
    /// Start time in clock ticks after boot, from `stat`: with the pid, it names a process
    /// uniquely (a reused pid has a later start time).
    pub start_time: Option<u64>,
    /// The kernel's 15-character command name, from `stat`.
    pub comm: Option<String>,
    /// `ExtraDetails.Argv` when the command line is ambiguous (`execfacts::argv_detail`).
    pub argv: Option<String>,
    /// Whether `argv` was cut.
    pub argv_truncated: bool,
    /// Descriptors 0-2, the executable's state, the container.
    pub facts: ExecFacts,
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `comm`, between the parentheses.
    pub comm: String,
    /// `ppid`, field 4.
    pub ppid: u32,
    /// `starttime`, field 22.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name may hold spaces and parentheses, so the fields
/// are counted from the *last* `)`.
pub(crate) fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let open = bytes.iter().position(|&b| b == b'(')?;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    if close <= open {
        return None;
    }
    let comm = String::from_utf8_lossy(&bytes[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    // After the comm: state(3) ppid(4) ... starttime(22), i.e. indexes 0, 1 ... 19.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    Some(Stat {
        comm,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The real and effective uid from `/proc/<pid>/status` (`Uid:\treal\teffective\tsaved\tfs`).
pub(crate) fn parse_status_uids(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_ascii_whitespace().map(|f| f.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// Joins a NUL-separated argument list with spaces (SPEC §3), lossily, at most `max` bytes;
/// returns the text and whether it was cut. A trailing NUL is not an empty argument.
pub(crate) fn join_cmdline(raw: &[u8], max: usize) -> (String, bool) {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let cut = raw.len() > max;
    let raw = &raw[..raw.len().min(max)];
    let joined: Vec<u8> = raw.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    // A cut inside a multi-byte character leaves a replacement character, which is honest.
    (String::from_utf8_lossy(&joined).into_owned(), cut)
}

/// An open `/proc/<pid>` directory.
#[derive(Debug)]
pub struct ProcDir {
    fd: OwnedFd,
}

impl ProcDir {
    /// Opens `/proc/<pid>`; fails when there is no such process.
    pub fn open(pid: u32) -> io::Result<ProcDir> {
        ProcDir::open_path(&format!("/proc/{pid}"))
    }

    /// Opens a process directory at `path` (a fixture in tests).
    pub(crate) fn open_path(path: &str) -> io::Result<ProcDir> {
        let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a valid NUL-terminated path alive during the call; the result is
        // checked before use.
        let raw = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(ProcDir { fd })
    }

    /// Reads the file `name` of this directory, at most `limit` bytes (the rest is not read).
    pub fn read(&self, name: &str, limit: usize) -> io::Result<Vec<u8>> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the directory descriptor is open and `c` is a valid NUL-terminated name.
        let raw = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        let mut out = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, limit as u64), &mut out)?;
        Ok(out)
    }

    /// The target of the link `name` (`exe`, `fd/3`), as bytes.
    pub fn read_link(&self, name: &str) -> io::Result<Vec<u8>> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: the directory descriptor is open, `c` is NUL-terminated, and `buf` is
        // writable for its length; readlinkat writes at most that many bytes.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        Ok(buf)
    }

    /// The value of extended attribute `attr` of the file `name` (following its link): used
    /// on `fd/N` for `system.sockprotoname`, the protocol name of a socket (`TCP`, `UDPv6`).
    pub(crate) fn link_xattr(&self, name: &str, attr: &str) -> io::Result<Vec<u8>> {
        // There is no getxattrat before Linux 6.13; the path through /proc/self/fd of our
        // directory descriptor names the same directory without a second lookup by pid.
        let path = format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd());
        let p = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let a = CString::new(attr).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut buf = vec![0u8; 64];
        // SAFETY: `p` and `a` are NUL-terminated and `buf` is writable for its length.
        let n = unsafe { libc::getxattr(p.as_ptr(), a.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        while buf.last() == Some(&0) {
            buf.pop();
        }
        Ok(buf)
    }

    /// The executable and the command line: what vanishes first when the process exits (with
    /// its memory), so what is read first.
    pub fn image(&self) -> ProcessInfo {
        let mut info = ProcessInfo {
            executable: self
                .read_link("exe")
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            ..ProcessInfo::default()
        };
        if let Ok(raw) = self.read("cmdline", MAX_CMDLINE + 1) {
            // An exited process (zombie) or a kernel thread has an empty command line.
            if !raw.is_empty() {
                let (text, cut) = join_cmdline(&raw, MAX_CMDLINE);
                info.command_line = Some(text);
                info.command_line_truncated = cut;
                if let Some((argv, cut)) = execfacts::argv_detail(&raw) {
                    info.argv = Some(argv);
                    info.argv_truncated = cut;
                }
            }
        }
        info
    }

    /// `stat` of `name` relative to this directory, following links (`fd/0` gives the
    /// descriptor's inode: a socket's, a pipe's, a terminal's).
    fn stat_at(&self, name: &str) -> io::Result<libc::stat> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: stat is plain data for which all-zero is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the directory descriptor is open, `c` is NUL-terminated and `st` is valid
        // for writes.
        let r = unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }

    /// Adds the exec facts `/proc` gives after the exec (best effort: the process may have
    /// moved on): descriptors 0-2 (`fd/N`), the executable's state (`exe`'s ` (deleted)` and
    /// `/memfd:`), whether its directory is writable by others (through `root/`, so in the
    /// process's mount namespace) and the container (`cgroup`).
    pub(crate) fn add_facts(&self, info: &mut ProcessInfo) {
        let mut facts = ExecFacts::default();
        for (n, slot) in facts.std_fds.iter_mut().enumerate() {
            if let Ok(st) = self.stat_at(&format!("fd/{n}")) {
                *slot = execfacts::fd_kind(st.st_mode, libc::major(st.st_rdev));
            }
        }
        if let Some(exe) = &info.executable {
            let (deleted, memfd) = execfacts::executable_state(exe);
            facts.executable_deleted = deleted;
            facts.executable_memfd = memfd;
            let path = exe.strip_suffix(execfacts::DELETED).unwrap_or(exe);
            if let Some((dir, _)) = path.rsplit_once('/').filter(|_| !memfd && path.starts_with('/')) {
                if let Ok(st) = self.stat_at(&format!("root{dir}/")) {
                    facts.writable_directory = st.st_mode & 0o002 != 0;
                }
            }
        }
        if let Ok(raw) = self.read("cgroup", MAX_SMALL_FILE) {
            facts.container_id = execfacts::container_id_from_proc_cgroup(&String::from_utf8_lossy(&raw));
        }
        info.facts = facts;
    }

    /// Adds what `stat` says (parent, start time, command name); it lasts until the process
    /// is reaped.
    pub(crate) fn add_stat(&self, info: &mut ProcessInfo) {
        if let Some(stat) = self
            .read("stat", MAX_SMALL_FILE)
            .ok()
            .and_then(|b| parse_stat(&b))
        {
            info.ppid = Some(stat.ppid);
            info.start_time = Some(stat.start_time);
            info.comm = Some(stat.comm);
        }
    }

    /// Adds the real and effective uid from `status` (the costliest file to read: the kernel
    /// formats some fifty lines for it).
    pub(crate) fn add_uids(&self, info: &mut ProcessInfo) {
        if let Some((uid, euid)) = self
            .read("status", MAX_SMALL_FILE)
            .ok()
            .and_then(|b| parse_status_uids(&String::from_utf8_lossy(&b)))
        {
            info.uid = Some(uid);
            info.euid = Some(euid);
        }
    }

    /// Everything: [`ProcDir::image`], [`ProcDir::add_stat`], [`ProcDir::add_uids`].
    pub fn info(&self) -> ProcessInfo {
        let mut info = self.image();
        self.add_stat(&mut info);
        self.add_uids(&mut info);
        info
    }
}

/// The kernel thread id of the calling thread (Diagnostic's `ThreadId`).
pub(crate) fn current_thread_id() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    u32::try_from(tid).unwrap_or(0)
}

/// Lowers the calling thread's nice value by `boost` (raises its priority); false when not
/// allowed (without `CAP_SYS_NICE` a thread cannot go below its current value).
pub(crate) fn raise_thread_priority(boost: i32) -> bool {
    let tid = current_thread_id();
    // SAFETY: getpriority/setpriority take no pointers; on Linux PRIO_PROCESS with a thread id
    // applies to that one thread. errno is not needed: the result is checked by reading back.
    unsafe {
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now - boost).max(-20)) == 0
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock of process connector timestamps).
pub(crate) fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data for which all-zero is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid for writes; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The pids of all processes now (the numeric entries of `/proc`), at most `cap`.
pub(crate) fn all_pids(cap: usize) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .take(cap)
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = b"4242 (we(ird) name) S 17 4242 4242 0 -1 4194560 105 0 0 0 0 0 0 0 20 0 1 0 98765 \
                     8634368 476 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "we(ird) name");
        assert_eq!(s.ppid, 17);
        assert_eq!(s.start_time, 98765);
        assert_eq!(parse_stat(b"1 (x) S"), None);
        assert_eq!(parse_stat(b") (x"), None);
    }

    #[test]
    fn status_gives_real_and_effective_uid() {
        let text =
            "Name:\tsudo\nUmask:\t0022\nState:\tS\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_status_uids(text), Some((1000, 0)));
        assert_eq!(parse_status_uids("Uid:\tx\n"), None);
        assert_eq!(parse_status_uids(""), None);
    }

    #[test]
    fn cmdline_is_joined_with_spaces_and_bounded() {
        assert_eq!(
            join_cmdline(b"curl\0-s\0http://x\0", 100),
            ("curl -s http://x".into(), false)
        );
        assert_eq!(join_cmdline(b"a\0\0b", 100), ("a  b".into(), false));
        assert_eq!(join_cmdline(b"abcdef", 3), ("abc".into(), true));
        let (t, cut) = join_cmdline("é\0x".as_bytes(), 1);
        assert!(cut && t == "\u{fffd}");
        assert_eq!(join_cmdline(b"\xff\0z", 10).0, "\u{fffd} z");
    }

    #[test]
    fn our_own_process_reads_fully() {
        let dir = ProcDir::open(std::process::id()).unwrap();
        let info = dir.info();
        assert!(info.executable.is_some());
        assert!(info.command_line.is_some());
        assert!(info.uid.is_some() && info.ppid.is_some() && info.start_time.is_some());
        assert!(current_thread_id() > 0);
        assert!(monotonic_ns() > 0);
    }

    #[test]
    fn a_gone_process_reads_nothing_through_its_old_directory() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let dir = ProcDir::open(child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let info = dir.info();
        assert_eq!(info.executable, None);
        assert_eq!(info.command_line, None);
        assert_eq!(info.start_time, None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..64) {
            let _ = parse_stat(&data);
            let _ = parse_status_uids(&String::from_utf8_lossy(&data));
            let (t, _) = join_cmdline(&data, max);
            prop_assert!(t.len() <= max * 3);
        }
    }
}
