//! Opening files by path the way trusted tools (OpenSSH, systemd, sudo) do, so that a root
//! agent never follows a link another user planted and nothing blocks on a FIFO.
//!
//! - **Trusted directories** ([`Dir::open_trusted`]): the data directory, `/run/twinguard`.
//!   The directory itself must not be a symbolic link, must be owned by the running user or
//!   root and must not be writable by group or others; every ancestor is checked as OpenSSH's
//!   `StrictModes` does ([`check_ancestors`]). Once that holds, nobody but us (and root) can
//!   add, remove or swap an entry, so a path inside it names what we checked.
//! - **Files inside a directory** are opened relative to its descriptor (`openat`) with
//!   `O_NOFOLLOW`; temporary files are created `O_EXCL`; renames use `renameat`.
//! - **Read-only inputs** ([`read_regular`], [`read_secret`]): opened with `O_NONBLOCK` (a FIFO
//!   never blocks the open), checked to be a regular file with `fstat` on the open
//!   descriptor (no check-then-open race), then read with a size bound. Secrets must also be
//!   owned by the running user or root and give group and others no access at all.
//!
//! Every error is one line naming the path, and the owner (uid and name) or mode when that is
//! the reason.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a directory entry is, from `st_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link (only seen without following it).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device (`/dev/null`, a tty).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A UNIX socket.
    Socket,
}

impl FileKind {
    fn of(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFSOCK => FileKind::Socket,
            _ => FileKind::Regular,
        }
    }

    /// How messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Fifo => "a FIFO (named pipe)",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Socket => "a socket",
        }
    }
}

/// What `fstat`/`fstatat` said about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Its kind.
    pub kind: FileKind,
    /// Owner uid.
    pub uid: u32,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Hard links to it.
    pub nlink: u64,
    /// Size in bytes.
    pub size: u64,
    /// Device and inode: what identifies it.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        // Field widths differ between targets; all fit in these types.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Stat {
            kind: FileKind::of(st.st_mode as u32),
            uid: st.st_uid,
            mode: (st.st_mode as u32) & 0o7777,
            nlink: st.st_nlink as u64,
            size: st.st_size as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        }
    }
}

/// Why a file or directory was refused or could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The OS refused an operation.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A symbolic link where none is accepted.
    #[error("{}: is a symbolic link; refused (name the real {what} instead)", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
        /// "file" or "directory".
        what: &'static str,
    },
    /// Not the kind of file expected (a FIFO where a regular file must be).
    #[error("{}: is {}, not {}; refused", path.display(), found.describe(), expected.describe())]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What it is.
        found: FileKind,
        /// What it must be.
        expected: FileKind,
    },
    /// Owned by a user who is neither us nor root.
    #[error("{}: owned by {} (uid {uid}), not by {}; {hint}", path.display(), user_name(*uid), us(*me))]
    ForeignOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The running user.
        me: u32,
        /// What to do instead.
        hint: String,
    },
    /// Others may change what it holds.
    #[error("{}: writable by group or others (mode {mode:04o}, owner {} uid {uid}); anyone could plant files there: run `chmod go-w {}`", path.display(), user_name(*uid), path.display())]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
    /// A secret that group or others may access.
    #[error("{}: holds a secret but is {} by group or others (mode {mode:04o}, owner {} uid {uid}); run `chmod 600 {}`", path.display(), access(*mode), user_name(*uid), path.display())]
    SecretMode {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
    /// Several names for one file: a hard link may point at anybody's file.
    #[error("{}: has {nlink} hard links; refused (a link may name another user's file)", path.display())]
    HardLinked {
        /// The path.
        path: PathBuf,
        /// Its link count.
        nlink: u64,
    },
    /// An ancestor directory others may change, so the path may be swapped under us.
    #[error("{}: directory {} is {why} (mode {mode:04o}, owner {} uid {uid}); anyone able to change it could swap the path", path.display(), dir.display(), user_name(*uid))]
    UnsafeAncestor {
        /// The path checked.
        path: PathBuf,
        /// The ancestor at fault.
        dir: PathBuf,
        /// "writable by group or others" or "owned by another user".
        why: &'static str,
        /// Its mode.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
    /// Larger than its bound.
    #[error("{}: larger than {limit} bytes", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The bound.
        limit: usize,
    },
}

impl FileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What group or others may do with a file of `mode`, in words.
fn access(mode: u32) -> &'static str {
    match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "usable",
    }
}

/// How messages name the running user and root.
fn us(me: u32) -> String {
    if me == 0 {
        "root".to_owned()
    } else {
        format!("{} or root", user_name(me))
    }
}

/// `uid`'s name from `/etc/passwd` (no NSS), or `uid N`. Only the name and uid fields are
/// looked at, so this module needs nothing of `sys::accounts` (which reads through this
/// module's [`read_limited`] and reports [`FileError`]s: no import cycle).
pub fn user_name(uid: u32) -> String {
    let found = read_regular(Path::new("/etc/passwd"), MAX_PASSWD_BYTES)
        .ok()
        .and_then(|bytes| name_of_uid(&String::from_utf8_lossy(&bytes), uid));
    found.unwrap_or_else(|| format!("uid {uid}"))
}

/// `/etc/passwd` is read whole for [`user_name`] up to this size.
const MAX_PASSWD_BYTES: usize = 4 * 1024 * 1024;

/// The name of the first `name:password:uid:...` line of `passwd` with `uid` (pure).
fn name_of_uid(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

fn cstring(bytes: &OsStr) -> io::Result<CString> {
    CString::new(bytes.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// A name inside a directory: one component, not `.` or `..`.
fn entry_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    cstring(OsStr::new(name))
}

/// Base flags of every open: no controlling tty, close on exec.
const BASE: libc::c_int = libc::O_CLOEXEC | libc::O_NOCTTY;

fn open_raw(dirfd: RawFd, path: &CString, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `path` is NUL-terminated and outlives the call; `dirfd` is a descriptor we
        // own or AT_FDCWD. The mode is passed as the variadic argument open(2) expects.
        let fd = unsafe { libc::openat(dirfd, path.as_ptr(), flags | BASE, mode as libc::c_uint) };
        if fd >= 0 {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: &impl AsRawFd) -> io::Result<Stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call; `st` is a valid, writable stat.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stat::from_raw(&st))
}

fn fstatat_nofollow(dirfd: RawFd, name: &CString) -> io::Result<Option<Stat>> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `dirfd` is open or AT_FDCWD, `st` is writable.
    let rc = unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(Stat::from_raw(&st)))
}

/// `lstat(2)`: what `path` itself is (a link is not followed); `None` when it does not exist.
pub fn lstat(path: &Path) -> io::Result<Option<Stat>> {
    fstatat_nofollow(libc::AT_FDCWD, &cstring(path.as_os_str())?)
}

/// Whether `uid` may own what the running user trusts: itself or root.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == crate::euid()
}

/// Checks every ancestor of `path` (from its parent up to `/`, after resolving links) the way
/// OpenSSH's `StrictModes` does: owned by root or the running user, and not writable by group
/// or others. One exception, documented in docs/hardening.md: a directory with the sticky
/// bit (`/tmp`, mode 1777) owned by root or the user is accepted, because there nobody can
/// rename or remove an entry they do not own, so the path below it cannot be swapped (the
/// entry itself is then checked by its own rules: owner and mode).
pub fn check_ancestors(path: &Path) -> Result<(), FileError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let real = std::fs::canonicalize(parent).map_err(io_at(parent))?;
    for dir in real.ancestors() {
        let Some(st) = lstat(dir).map_err(io_at(dir))? else {
            continue;
        };
        let why = if !trusted_owner(st.uid) {
            Some("owned by another user")
        } else if st.mode & 0o022 != 0 && st.mode & libc::S_ISVTX == 0 {
            Some("writable by group or others")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(FileError::UnsafeAncestor {
                path: path.to_owned(),
                dir: dir.to_owned(),
                why,
                mode: st.mode,
                uid: st.uid,
            });
        }
    }
    Ok(())
}

/// What to tell a user whose directory is owned by someone else.
fn foreign_dir_hint(uid: u32) -> String {
    if crate::euid() == 0 {
        let name = user_name(uid);
        format!(
            "root does not use another user's directory: run the agent as its owner (`runuser -u {name} -- twinguard run ...`, or the systemd unit), or choose another --data-dir"
        )
    } else {
        "choose a directory of your own with --data-dir DIR".to_owned()
    }
}

/// An open directory: every file in it is reached through this descriptor, never by a path
/// that could be re-resolved.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Creates `path` (mode 0700, with missing parents) when it does not exist, then opens
    /// it as a trusted directory ([`Dir::open_trusted`]) and tightens its mode to 0700.
    pub fn create_trusted(path: &Path) -> Result<Dir, FileError> {
        if lstat(path).map_err(io_at(path))?.is_none() {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(path)
                .map_err(io_at(path))?;
        }
        let dir = Dir::open_trusted(path)?;
        let st = fstat(&dir.fd).map_err(io_at(path))?;
        if st.uid == crate::euid() && st.mode & 0o7777 != 0o700 {
            // SAFETY: fchmod on a descriptor we own; no memory is involved.
            if unsafe { libc::fchmod(dir.fd.as_raw_fd(), 0o700) } != 0 {
                return Err(io_at(path)(io::Error::last_os_error()));
            }
        }
        Ok(dir)
    }

    /// Opens `path`, which must be a real directory (not a symbolic link) owned by the running
    /// user or root, not writable by group or others, below ancestors that pass
    /// [`check_ancestors`].
    pub fn open_trusted(path: &Path) -> Result<Dir, FileError> {
        check_ancestors(path)?;
        let c = cstring(path.as_os_str()).map_err(io_at(path))?;
        let fd = match open_raw(
            libc::AT_FDCWD,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) => return Err(refine(path, e, "directory", FileKind::Directory)),
        };
        let st = fstat(&fd).map_err(io_at(path))?;
        check_trusted_dir(path, &st)?;
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    /// Opens the directory holding `path` as it is named (links followed, no ownership
    /// rules): for files the user names anywhere (`--outbox`, `--reported`), whose own
    /// entry is then opened without following a link. Missing parents are created (0700).
    pub fn open_parent_of(path: &Path) -> Result<(Dir, String), FileError> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| io_at(path)(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")))?;
        if !parent.exists() {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(parent)
                .map_err(io_at(parent))?;
        }
        let c = cstring(parent.as_os_str()).map_err(io_at(parent))?;
        let fd =
            open_raw(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_at(parent))?;
        Ok((
            Dir {
                fd,
                path: parent.to_owned(),
            },
            name,
        ))
    }

    /// A runtime directory shared by twinguard processes of different users
    /// (`/run/twinguard`, the service user's `RuntimeDirectory=`), created 0700 when missing:
    /// not a link, not writable by group or others, safe ancestors. Owned by the running user
    /// or root - or, for root, by any user: root then only creates files there with `O_EXCL`
    /// and `O_NOFOLLOW`, and trusts a file it reads only when [`trusted_file`] says so.
    pub fn create_shared(path: &Path) -> Result<Dir, FileError> {
        if lstat(path).map_err(io_at(path))?.is_none() {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(path)
                .map_err(io_at(path))?;
        }
        check_ancestors(path)?;
        let dir = Dir::open_for_reading(path)?;
        let st = fstat(&dir.fd).map_err(io_at(path))?;
        if crate::euid() == 0 && st.kind == FileKind::Directory && st.mode & 0o022 == 0 {
            return Ok(dir);
        }
        check_trusted_dir(path, &st)?;
        Ok(dir)
    }

    /// Opens the directory `path` itself without following a link and without ownership
    /// rules, for read-only inspection (`doctor`): files in it are then read through
    /// [`Dir::read`] (no link followed, no FIFO waited on), nothing is written.
    pub fn open_for_reading(path: &Path) -> Result<Dir, FileError> {
        let c = cstring(path.as_os_str()).map_err(io_at(path))?;
        match open_raw(
            libc::AT_FDCWD,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => Ok(Dir {
                fd,
                path: path.to_owned(),
            }),
            Err(e) => Err(refine(path, e, "directory", FileKind::Directory)),
        }
    }

    /// The subdirectory `name` for read-only inspection: a real directory (not a link), no
    /// ownership rules, nothing created.
    pub fn sub_dir_for_reading(&self, name: &str) -> Result<Dir, FileError> {
        let path = self.join(name);
        let c = entry_name(name).map_err(io_at(&path))?;
        match open_raw(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => Ok(Dir { fd, path }),
            Err(e) => Err(refine(&path, e, "directory", FileKind::Directory)),
        }
    }

    /// The names in the directory (`.` and `..` left out), read through its descriptor.
    pub fn names(&self) -> Result<Vec<String>, FileError> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let entries = std::fs::read_dir(&path).or_else(|_| std::fs::read_dir(&self.path));
        let entries = entries.map_err(io_at(&self.path))?;
        Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// What `name` is, without following a link; `None` when it does not exist.
    pub fn stat(&self, name: &str) -> Result<Option<Stat>, FileError> {
        let c = entry_name(name).map_err(io_at(&self.join(name)))?;
        fstatat_nofollow(self.fd.as_raw_fd(), &c).map_err(io_at(&self.join(name)))
    }

    /// Opens `name` with `flags` (plus `O_NOFOLLOW`, `O_CLOEXEC`, `O_NOCTTY`); `mode` for a
    /// file it creates. A link is refused with [`FileError::Symlink`].
    pub fn open(&self, name: &str, flags: libc::c_int, mode: u32) -> Result<File, FileError> {
        let path = self.join(name);
        let c = entry_name(name).map_err(io_at(&path))?;
        match open_raw(self.fd.as_raw_fd(), &c, flags | libc::O_NOFOLLOW, mode) {
            Ok(fd) => Ok(File::from(fd)),
            Err(e) => Err(refine(&path, e, "file", FileKind::Regular)),
        }
    }

    /// Opens `name` for reading (non-blocking open; it must be a regular file) and reads at
    /// most `limit` bytes of it; `None` when it does not exist.
    pub fn read(&self, name: &str, limit: usize) -> Result<Option<Vec<u8>>, FileError> {
        Ok(self.read_with_stat(name, limit)?.map(|(bytes, _)| bytes))
    }

    /// [`Dir::read`], also returning what `fstat` said of the file read (its owner and mode,
    /// for callers that trust a file only when it is ours).
    pub fn read_with_stat(&self, name: &str, limit: usize) -> Result<Option<(Vec<u8>, Stat)>, FileError> {
        let path = self.join(name);
        let file = match self.open(name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = fstat(&file).map_err(io_at(&path))?;
        expect_regular(&path, &st)?;
        read_limited(&path, file, limit).map(|bytes| Some((bytes, st)))
    }

    /// Creates `name` with `O_EXCL` (never an existing file, never through a link).
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File, FileError> {
        self.open(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// Renames `from` to `to` inside the directory (`renameat`; a link is renamed, never
    /// followed).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FileError> {
        let path = self.join(from);
        let a = entry_name(from).map_err(io_at(&path))?;
        let b = entry_name(to).map_err(io_at(&path))?;
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated and outlive the call; `fd` is our directory.
        if unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) } != 0 {
            return Err(io_at(&path)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Removes the entry `name` (a link itself, never its target); a missing entry is fine.
    pub fn remove(&self, name: &str) -> Result<(), FileError> {
        let path = self.join(name);
        let c = entry_name(name).map_err(io_at(&path))?;
        // SAFETY: `c` is NUL-terminated and outlives the call; the descriptor is ours.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(io_at(&path)(e));
            }
        }
        Ok(())
    }

    /// Makes the directory's entries durable (`fsync` of the directory).
    pub fn sync(&self) -> Result<(), FileError> {
        // SAFETY: fsync on a descriptor we own.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(io_at(&self.path)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The subdirectory `name`, created (0700) when missing; it must be a real directory
    /// owned by the running user or root and not writable by group or others.
    pub fn sub_dir(&self, name: &str) -> Result<Dir, FileError> {
        let path = self.join(name);
        let c = entry_name(name).map_err(io_at(&path))?;
        // SAFETY: `c` is NUL-terminated and outlives the call; the descriptor is ours.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_at(&path)(e));
            }
        }
        let fd = match open_raw(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) => return Err(refine(&path, e, "directory", FileKind::Directory)),
        };
        let st = fstat(&fd).map_err(io_at(&path))?;
        check_trusted_dir(&path, &st)?;
        Ok(Dir { fd, path })
    }

    /// Replaces `name` atomically with `bytes` (mode 0600), see [`Dir::write_atomically_mode`].
    pub fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        self.write_atomically_mode(name, bytes, 0o600)
    }

    /// Replaces `name` atomically with `bytes`, the new file with permission bits `mode`
    /// (less the umask): a temporary `.NAME.tmp` created `O_EXCL` (a stale one, or a link
    /// planted there, is removed first, never followed), fsync, `renameat`, fsync of the
    /// directory. A reader sees the old or the new content, and after a power loss too. The
    /// one atomic write of every file twinguard and twinguard-hub persist (the cache's
    /// segments have their own log format).
    pub fn write_atomically_mode(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), FileError> {
        let tmp = format!(".{name}.tmp");
        let tmp_path = self.join(&tmp);
        let mut file = match self.create_new(&tmp, mode) {
            Ok(f) => f,
            Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                self.remove(&tmp)?;
                self.create_new(&tmp, mode)?
            }
            Err(e) => return Err(e),
        };
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = self.remove(&tmp);
            return Err(io_at(&tmp_path)(e));
        }
        drop(file);
        self.rename(&tmp, name)?;
        // The rename is durable only once the directory entry is.
        let _ = self.sync();
        Ok(())
    }
}

/// Takes an exclusive `flock(2)` on `file` without waiting: `Ok(false)` when another open
/// file description holds it. The lock lasts as long as the descriptor (every duplicate of it).
pub fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own (borrowed for the call); no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Replaces the file at `path` atomically with `bytes` (see [`Dir::write_atomically_mode`]):
/// the temporary file is created `O_EXCL` in the directory holding `path` (created 0700 when
/// missing), never through a link.
pub fn write_file_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let (dir, name) = Dir::open_parent_of(path)?;
    dir.write_atomically_mode(&name, bytes, mode)
}

fn check_trusted_dir(path: &Path, st: &Stat) -> Result<(), FileError> {
    if st.kind != FileKind::Directory {
        return Err(FileError::WrongKind {
            path: path.to_owned(),
            found: st.kind,
            expected: FileKind::Directory,
        });
    }
    if !trusted_owner(st.uid) {
        return Err(FileError::ForeignOwner {
            path: path.to_owned(),
            uid: st.uid,
            me: crate::euid(),
            hint: foreign_dir_hint(st.uid),
        });
    }
    if st.mode & 0o022 != 0 {
        return Err(FileError::Writable {
            path: path.to_owned(),
            mode: st.mode,
            uid: st.uid,
        });
    }
    Ok(())
}

/// Turns `ELOOP` from an `O_NOFOLLOW` open into [`FileError::Symlink`], and `ENOTDIR` from an
/// `O_DIRECTORY` open into [`FileError::WrongKind`].
fn refine(path: &Path, e: io::Error, what: &'static str, expected: FileKind) -> FileError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => FileError::Symlink {
            path: path.to_owned(),
            what,
        },
        Some(libc::ENOTDIR) if expected == FileKind::Directory => match lstat(path) {
            Ok(Some(st)) if st.kind == FileKind::Symlink => FileError::Symlink {
                path: path.to_owned(),
                what,
            },
            Ok(Some(st)) => FileError::WrongKind {
                path: path.to_owned(),
                found: st.kind,
                expected,
            },
            _ => io_at(path)(e),
        },
        _ => io_at(path)(e),
    }
}

/// Whether a file read through [`Dir::read_with_stat`] may be trusted: written by the running
/// user or root, and writable by nobody else.
pub fn trusted_file(st: &Stat) -> bool {
    trusted_owner(st.uid) && st.mode & 0o022 == 0
}

/// Refuses anything but a regular file.
pub fn expect_regular(path: &Path, st: &Stat) -> Result<(), FileError> {
    if st.kind == FileKind::Regular {
        Ok(())
    } else {
        Err(FileError::WrongKind {
            path: path.to_owned(),
            found: st.kind,
            expected: FileKind::Regular,
        })
    }
}

/// Opens `path` with `options` without following a symbolic link at its last component
/// (`ELOOP` then) and without blocking on a FIFO (`O_NONBLOCK`): for files in a directory this
/// process owns, whose ancestors were checked when it was created.
pub fn open_nofollow(path: &Path, options: &mut std::fs::OpenOptions) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Reads at most `limit` bytes of `reader`; more is [`FileError::TooLarge`]. The one bounded
/// read under every reader of user-named files.
pub fn read_limited(path: &Path, reader: impl Read, limit: usize) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(path))?;
    if bytes.len() > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Opens `path` for reading without blocking (a FIFO or a device never hangs the open) and
/// checks on the open descriptor that it is a regular file.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let c = cstring(path.as_os_str()).map_err(io_at(path))?;
    let fd = open_raw(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(io_at(path))?;
    let st = fstat(&fd).map_err(io_at(path))?;
    expect_regular(path, &st)?;
    Ok(File::from(fd))
}

/// Reads a user-named input (twin, settings, CA bundle): a regular file (links followed), at
/// most `limit` bytes.
pub fn read_regular(path: &Path, limit: usize) -> Result<Vec<u8>, FileError> {
    let file = open_regular(path)?;
    read_limited(path, file, limit)
}

/// Secrets (a password, a connection string, a private key) are small; anything larger is
/// refused unread.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The environment variable systemd sets for `LoadCredential=`.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Where a secret named `path` is read: a bare name (no `/`) that exists in
/// `$CREDENTIALS_DIRECTORY` is that credential; anything else is `path` itself. The second
/// value tells whether it is a credential.
pub fn secret_location(path: &Path) -> (PathBuf, bool) {
    let bare = path.components().count() == 1 && path.is_relative();
    if bare {
        if let Some(dir) = std::env::var_os(CREDENTIALS_ENV).map(PathBuf::from) {
            let candidate = dir.join(path);
            if dir.is_absolute() && lstat(&candidate).is_ok_and(|s| s.is_some()) {
                return (candidate, true);
            }
        }
    }
    (path.to_owned(), false)
}

/// Reads a secret of at most `limit` bytes: a regular file owned by the running user or root
/// that gives group and others no access at all, below ancestors that pass
/// [`check_ancestors`]. A bare name may be a systemd credential ([`secret_location`]); there,
/// systemd vouches for the directory and may grant the service's user read access through an
/// ACL (which shows as group bits), so only "others" bits are refused.
pub fn read_secret(path: &Path, limit: usize) -> Result<Vec<u8>, FileError> {
    let (path, credential) = secret_location(path);
    let path = path.as_path();
    let file = open_regular(path)?;
    let st = fstat(&file).map_err(io_at(path))?;
    if !trusted_owner(st.uid) {
        return Err(FileError::ForeignOwner {
            path: path.to_owned(),
            uid: st.uid,
            me: crate::euid(),
            hint: format!(
                "a secret must belong to the agent's user or root (`chown {} {}`)",
                user_name(crate::euid()),
                path.display()
            ),
        });
    }
    let forbidden = if credential { 0o007 } else { 0o077 };
    if st.mode & forbidden != 0 {
        return Err(FileError::SecretMode {
            path: path.to_owned(),
            mode: st.mode,
            uid: st.uid,
        });
    }
    if !credential {
        // The directories named by the open file, not by the path: no link can redirect this.
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .unwrap_or_else(|_| path.to_owned());
        check_ancestors(&real)?;
    }
    read_limited(path, file, limit)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn try_lock_is_exclusive_between_open_files() {
        let path = std::env::temp_dir().join(format!("twinguard-lock-{}", std::process::id()));
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_lock(&first).unwrap());
        assert!(
            !try_lock(&second).unwrap(),
            "a second open file must not get the lock"
        );
        drop(first);
        assert!(try_lock(&second).unwrap(), "closing the holder frees the lock");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn names_of_uids_from_passwd_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# comment\n:x:5:5::/:/bin/sh\nbad line\nalice:x:1000:1000::/home/a:/bin/sh\n";
        assert_eq!(name_of_uid(passwd, 0).as_deref(), Some("root"));
        assert_eq!(name_of_uid(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(name_of_uid(passwd, 5), None);
        assert_eq!(name_of_uid(passwd, 7), None);
    }
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tg-safefile-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fifo_inputs_fail_at_once_and_secrets_need_strict_modes() {
        let dir = temp("inputs");
        let fifo = dir.join("fifo");
        let c = cstring(fifo.as_os_str()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo only reads it.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_regular(&fifo, 10).unwrap_err().to_string();
        assert!(err.contains("FIFO") && err.contains("fifo"), "{err}");
        let secret = dir.join("secret");
        std::fs::write(&secret, "s").unwrap();
        for mode in [0o622, 0o602, 0o640, 0o604] {
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret(&secret, 10).unwrap_err().to_string();
            assert!(err.contains(&format!("{mode:04o}")), "{err}");
        }
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&secret, 10).unwrap(), b"s");
        // Below a directory others may write (not sticky), the path could be swapped.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = read_secret(&secret, 10).unwrap_err();
        assert!(matches!(err, FileError::UnsafeAncestor { .. }), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(read_secret(&secret, 10).unwrap(), b"s");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            read_regular(&secret, 0),
            Err(FileError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_are_not_followed_inside_a_directory() {
        let dir = temp("links");
        std::fs::write(dir.join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(dir.join("victim"), dir.join(".name.tmp")).unwrap();
        let d = Dir::open_trusted(&dir).unwrap();
        assert!(matches!(d.open("name.link", libc::O_RDONLY, 0), Err(e) if e.is_not_found()));
        std::os::unix::fs::symlink(dir.join("victim"), dir.join("name.link")).unwrap();
        assert!(matches!(
            d.open("name.link", libc::O_RDONLY, 0),
            Err(FileError::Symlink { .. })
        ));
        d.write_atomically("name", b"new").unwrap();
        assert_eq!(std::fs::read(dir.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir.join("name")).unwrap(), b"new");
        std::os::unix::fs::symlink(&dir, dir.join("linked")).unwrap();
        assert!(matches!(
            Dir::open_trusted(&dir.join("linked")),
            Err(FileError::Symlink { .. })
        ));
        assert!(matches!(d.sub_dir("name.link"), Err(FileError::Symlink { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
