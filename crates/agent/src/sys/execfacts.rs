//! The facts of an exec that detections need beyond SPEC §3's fields, the same for both process
//! sources (eBPF takes them in the kernel at the exec, the process connector from `/proc`
//! after it): the exact argument list (`ExtraDetails.Argv`, when `CommandLine` is ambiguous),
//! the kinds of descriptors 0-2, whether the executable is deleted or a memfd, whether its
//! directory is writable by others, and the container the process runs in, named by its cgroup.
//! All pure: the sources hand in what they read.

use twinguard_core::event::ExtraDetails;

/// Most bytes of a command line kept (the rest is cut and flagged): a message holds the event,
/// and an argument list can be megabytes long.
pub(crate) const MAX_CMDLINE: usize = 8192;

/// Most bytes of `ExtraDetails.Argv` (the JSON text): the same bound as `CommandLine`, so a
/// process event is at most about twice 8 KiB.
pub(crate) const MAX_ARGV_TEXT: usize = 8192;

/// What a standard descriptor (0-2) is open on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A socket (a network or Unix connection).
    Socket,
    /// A pipe or FIFO.
    Pipe,
    /// A terminal: a pseudo-terminal, the console, a serial line.
    Tty,
    /// A regular file.
    File,
    /// Anything else (`/dev/null`, a directory, another device).
    Other,
}

impl FdKind {
    /// The value written in `ExtraDetails` (`socket`, `pipe`, `tty`, `file`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            FdKind::Socket => "socket",
            FdKind::Pipe => "pipe",
            FdKind::Tty => "tty",
            FdKind::File => "file",
            FdKind::Other => "other",
        }
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFIFO: u32 = 0o010_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Character-device majors of terminals (Documentation/admin-guide/devices.txt): 4 virtual
/// consoles and 8250 serial ports, 5 `/dev/tty` `/dev/console` `/dev/ptmx`, 136-143 Unix98
/// pseudo-terminal slaves (`/dev/pts/N`), 166 USB ACM modems, 188 USB serial adapters, 204
/// low-density serial ports (`ttyAMA`, the Raspberry Pi's UART).
fn tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143 | 166 | 188 | 204)
}

/// What an inode of `mode` (`st_mode`; 0: the descriptor is not open) on device `major`
/// (character devices) is, as a standard descriptor.
pub fn fd_kind(mode: u32, major: u32) -> Option<FdKind> {
    if mode == 0 {
        return None;
    }
    Some(match mode & S_IFMT {
        S_IFSOCK => FdKind::Socket,
        S_IFIFO => FdKind::Pipe,
        S_IFREG => FdKind::File,
        S_IFCHR if tty_major(major) => FdKind::Tty,
        _ => FdKind::Other,
    })
}

/// The facts of one exec; [`ExecFacts::add_to`] writes them as `ExtraDetails`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecFacts {
    /// Descriptors 0, 1, 2 (`None`: not open).
    pub std_fds: [Option<FdKind>; 3],
    /// The executable was unlinked before or after the exec.
    pub executable_deleted: bool,
    /// The executable is a memfd (`memfd_create` + `execveat`/`fexecve`: no file on disk).
    pub executable_memfd: bool,
    /// The executable's directory is writable by others (mode `o+w`, e.g. `/tmp`).
    pub writable_directory: bool,
    /// The container, from the cgroup's name.
    pub container_id: Option<String>,
}

impl ExecFacts {
    /// Adds `Stdin`, `Stdout`, `Stderr` (for open descriptors), `ExecutableDeleted`,
    /// `ExecutableMemfd`, `WritableDirectory` (`True`, only when so) and `ContainerId`.
    pub fn add_to(&self, extra: &mut ExtraDetails) {
        for (key, kind) in ["Stdin", "Stdout", "Stderr"].iter().zip(self.std_fds) {
            if let Some(kind) = kind {
                extra.insert((*key).into(), kind.as_str().into());
            }
        }
        for (key, set) in [
            ("ExecutableDeleted", self.executable_deleted),
            ("ExecutableMemfd", self.executable_memfd),
            ("WritableDirectory", self.writable_directory),
        ] {
            if set {
                extra.insert(key.into(), "True".into());
            }
        }
        if let Some(id) = &self.container_id {
            extra.insert("ContainerId".into(), id.clone());
        }
    }
}

/// The suffix the kernel gives the path of an unlinked file (`/proc/<pid>/exe`).
pub(crate) const DELETED: &str = " (deleted)";

/// Whether an executable path as `/proc/<pid>/exe` shows it is deleted and whether it is a
/// memfd (`/memfd:NAME (deleted)`: a memfd is not also called deleted).
pub fn executable_state(exe: &str) -> (bool, bool) {
    match exe.strip_suffix(DELETED) {
        Some(path) if path.starts_with("/memfd:") => (false, true),
        Some(_) => (true, false),
        None => (false, false),
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The container id named by cgroup names, the process's own cgroup first, then its parents:
/// `docker-<id>.scope` (docker and IoT Edge modules with the systemd cgroup driver),
/// `cri-containerd-<id>.scope` (containerd's CRI), `crio-<id>.scope` (CRI-O),
/// `libpod-<id>.scope` (podman, also as `libpod-<id>.scope/container`), and a bare `<id>` in
/// a cgroup named `docker` or `moby` (docker's cgroupfs driver: `/docker/<id>`) or `pod...`
/// (Kubernetes with cgroupfs). `<id>` is 64 lower-case hex digits.
pub fn container_id<'a>(leaf_first: &[&'a str]) -> Option<&'a str> {
    for (i, name) in leaf_first.iter().enumerate() {
        let stem = name.strip_suffix(".scope").unwrap_or(name);
        for prefix in ["docker-", "cri-containerd-", "crio-", "libpod-"] {
            if let Some(id) = stem.strip_prefix(prefix) {
                if is_id(id) {
                    return Some(id);
                }
            }
        }
        if is_id(name) {
            if let Some(parent) = leaf_first.get(i + 1) {
                if *parent == "docker" || *parent == "moby" || parent.starts_with("pod") {
                    return Some(name);
                }
            }
        }
    }
    None
}

/// The container id from `/proc/<pid>/cgroup` (`hierarchy:controllers:path` lines): the
/// unified hierarchy's line (`0::`) first, then the v1 ones.
pub fn container_id_from_proc_cgroup(text: &str) -> Option<String> {
    let paths = text.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let hierarchy = f.next()?;
        let _controllers = f.next()?;
        Some((hierarchy != "0", f.next()?))
    });
    let mut paths: Vec<(bool, &str)> = paths.collect();
    paths.sort_by_key(|(v1, _)| *v1);
    paths.into_iter().find_map(|(_, path)| {
        let names: Vec<&str> = path.rsplit('/').filter(|n| !n.is_empty()).take(3).collect();
        container_id(&names).map(str::to_owned)
    })
}

/// Whether splitting `CommandLine` (the arguments joined with spaces) at spaces gives the
/// arguments back exactly, so that `Argv` would add nothing: no argument is empty or holds a
/// space, a quote, a backslash, a control character or a byte that is not UTF-8.
fn plain(args: &[&[u8]]) -> bool {
    args.iter().all(|a| {
        !a.is_empty()
            && std::str::from_utf8(a).is_ok()
            && !a
                .iter()
                .any(|&b| b <= b' ' || b == 0x7f || b == b'"' || b == b'\'' || b == b'\\')
    })
}

/// `ExtraDetails.Argv` for the raw NUL-separated arguments (as read, at most
/// `MAX_CMDLINE + 1` bytes): `None` when `CommandLine` is not ambiguous; else the JSON array of
/// the arguments (of the first [`MAX_CMDLINE`] bytes, as `CommandLine`) and whether it is cut
/// (the arguments were cut, or the text reached [`MAX_ARGV_TEXT`]).
///
/// Each element is the argument's text with two escapes of our own, applied before the JSON
/// encoding: a byte that is not part of valid UTF-8 is `\xNN` (two lower-case hex digits) and a
/// real backslash is `\\`, so `\x` only ever starts an escape. In the JSON text these appear as
/// `\\xNN` and `\\\\`.
pub fn argv_detail(raw: &[u8]) -> Option<(String, bool)> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let mut cut = raw.len() > MAX_CMDLINE;
    let raw = &raw[..raw.len().min(MAX_CMDLINE)];
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    if plain(&args) {
        return None;
    }
    // Room for the closing `"]` is kept at every step.
    let budget = MAX_ARGV_TEXT - 2;
    let mut out = String::with_capacity(raw.len() + 16);
    out.push('[');
    'args: for (i, arg) in args.iter().enumerate() {
        let sep = if i == 0 { "\"" } else { ",\"" };
        if out.len() + sep.len() > budget {
            cut = true;
            break;
        }
        out.push_str(sep);
        let mut unit = String::with_capacity(12);
        for chunk in arg.utf8_chunks() {
            for c in chunk.valid().chars() {
                unit.clear();
                match c {
                    '\\' => unit.push_str("\\\\\\\\"),
                    '"' => unit.push_str("\\\""),
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        unit.push_str(&format!("\\u{:04x}", c as u32));
                    }
                    c => unit.push(c),
                }
                if out.len() + unit.len() > budget {
                    cut = true;
                    out.push('"');
                    break 'args;
                }
                out.push_str(&unit);
            }
            for b in chunk.invalid() {
                unit.clear();
                unit.push_str(&format!("\\\\x{b:02x}"));
                if out.len() + unit.len() > budget {
                    cut = true;
                    out.push('"');
                    break 'args;
                }
                out.push_str(&unit);
            }
        }
        out.push('"');
    }
    out.push(']');
    Some((out, cut))
}

/// Decodes one element of `Argv` (after JSON decoding) back into the argument's bytes: the
/// inverse of the escapes [`argv_detail`] applies. `None` for a malformed escape.
pub fn decode_argv_element(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            match b.get(i + 1)? {
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                }
                b'x' => {
                    let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 4;
                }
                _ => return None,
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args_of(argv: &str) -> Vec<Vec<u8>> {
        let v: Vec<String> = serde_json::from_str(argv).unwrap();
        v.iter().map(|e| decode_argv_element(e).unwrap()).collect()
    }

    #[test]
    fn plain_arguments_need_no_argv() {
        assert_eq!(argv_detail(b"/bin/true\0tg-1\0--x=y\0"), None);
        assert_eq!(argv_detail("é\0ü".as_bytes()), None);
    }

    #[test]
    fn ambiguous_arguments_round_trip() {
        let raw = b"/bin/sh\0-c\0echo \"a b\" 'c'\0\0back\\slash\0bad\xff\xfe\0tab\tnl\n";
        let (text, cut) = argv_detail(raw).unwrap();
        assert!(!cut);
        assert_eq!(
            text,
            r#"["/bin/sh","-c","echo \"a b\" 'c'","","back\\\\slash","bad\\xff\\xfe","tab\u0009nl\u000a"]"#
        );
        let back = args_of(&text);
        let want: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        assert_eq!(back, want);
        // A real backslash followed by `x` is told apart from an escaped byte.
        let (text, _) = argv_detail(b"a\\xff\0\xff").unwrap();
        assert_eq!(args_of(&text), vec![b"a\\xff".to_vec(), vec![0xff]]);
    }

    #[test]
    fn argv_is_cut_at_the_command_lines_bound_and_at_its_own() {
        let mut raw = b"sh\0a b\0".to_vec();
        raw.extend(std::iter::repeat_n(b'x', MAX_CMDLINE));
        let (text, cut) = argv_detail(&raw).unwrap();
        assert!(cut);
        assert!(text.len() <= MAX_ARGV_TEXT);
        let back = args_of(&text);
        assert_eq!(back[..2], [b"sh".to_vec(), b"a b".to_vec()]);
        // Bytes that escape to four characters each: cut at a whole escape, still JSON.
        let raw = vec![0xffu8; 4000];
        let (text, cut) = argv_detail(&raw).unwrap();
        assert!(cut && text.len() <= MAX_ARGV_TEXT, "{}", text.len());
        assert!(args_of(&text)[0].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn descriptor_kinds() {
        assert_eq!(fd_kind(0, 0), None);
        assert_eq!(fd_kind(0o140_777, 0), Some(FdKind::Socket));
        assert_eq!(fd_kind(0o010_600, 0), Some(FdKind::Pipe));
        assert_eq!(fd_kind(0o100_644, 0), Some(FdKind::File));
        assert_eq!(fd_kind(0o020_620, 136), Some(FdKind::Tty));
        assert_eq!(fd_kind(0o020_666, 1), Some(FdKind::Other), "/dev/null");
        assert_eq!(fd_kind(0o040_755, 0), Some(FdKind::Other));
        let facts = ExecFacts {
            std_fds: [Some(FdKind::Socket), None, Some(FdKind::Tty)],
            executable_memfd: true,
            container_id: Some("c".into()),
            ..ExecFacts::default()
        };
        let mut extra = ExtraDetails::new();
        facts.add_to(&mut extra);
        let got: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("ContainerId", "c"),
                ("ExecutableMemfd", "True"),
                ("Stderr", "tty"),
                ("Stdin", "socket")
            ]
        );
    }

    #[test]
    fn executables_deleted_or_memfd() {
        assert_eq!(executable_state("/usr/bin/true"), (false, false));
        assert_eq!(executable_state("/tmp/x/evil (deleted)"), (true, false));
        assert_eq!(executable_state("/memfd:payload (deleted)"), (false, true));
    }

    #[test]
    fn container_ids_from_cgroup_names() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let scope = format!("docker-{id}.scope");
        assert_eq!(container_id(&[&scope, "system.slice"]), Some(id));
        assert_eq!(container_id(&[id, "docker"]), Some(id));
        let cri = format!("cri-containerd-{id}.scope");
        assert_eq!(container_id(&[&cri, "kubepods-besteffort.slice"]), Some(id));
        let podman = format!("libpod-{id}.scope");
        assert_eq!(container_id(&["container", &podman, "machine.slice"]), Some(id));
        assert_eq!(container_id(&[id, "user.slice"]), None, "a bare id elsewhere");
        assert_eq!(container_id(&[&id.to_uppercase(), "docker"]), None);
        assert_eq!(container_id(&["docker-abc.scope"]), None);
        assert_eq!(container_id(&[]), None);
        let text = format!("12:pids:/docker/{id}\n1:name=systemd:/\n0::/\n");
        assert_eq!(container_id_from_proc_cgroup(&text).as_deref(), Some(id));
        let text = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(container_id_from_proc_cgroup(&text).as_deref(), Some(id));
        assert_eq!(container_id_from_proc_cgroup("0::/user.slice\n"), None);
    }

    proptest! {
        #[test]
        fn any_argument_list_round_trips_or_is_plain(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..20), 1..8)
        ) {
            // As the kernel keeps them: each argument followed by a NUL.
            let raw: Vec<u8> = args.iter().flat_map(|a| a.iter().copied().chain([0])).collect();
            match argv_detail(&raw) {
                None => {
                    let line = String::from_utf8(args.join(&b' ')).unwrap();
                    let split: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
                    let want: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    prop_assert_eq!(split, want);
                }
                Some((text, cut)) => {
                    prop_assert!(!cut);
                    prop_assert_eq!(args_of(&text), args);
                }
            }
        }
    }
}
