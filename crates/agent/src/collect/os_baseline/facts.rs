//! What the checks look at (`Facts`), read once per run through `sys` and only when a check
//! needs it, and the bounded world-writable scan.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::sys::accounts::{self, GroupEntry, Parsed, PasswdEntry, ShadowEntry};
use crate::sys::fs::{self as sysfs, read_text, read_value, Root};
use crate::sys::keyvalue;
use crate::sys::osinfo::{self, Mount};
use crate::sys::sshd::{self, SshdConfig};

/// The most directory entries the world-writable scan visits.
pub(super) const MAX_SCAN_ENTRIES: usize = 100_000;

/// How deep the world-writable scan descends.
pub(super) const MAX_SCAN_DEPTH: usize = 12;

/// Directories scanned for world-writable files.
pub(super) const SCAN_DIRS: [&str; 9] = [
    "/etc",
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/libexec",
    "/boot",
];

/// What the checks look at, read once per run and only when a check needs it.
#[derive(Debug)]
pub struct Facts {
    pub(super) root: Root,
    pub(super) expected_uid: u32,
    pub(super) expected_gid: u32,
    pub(super) sshd: Option<Result<Option<SshdConfig>, String>>,
    pub(super) passwd: Option<Result<Parsed<PasswdEntry>, String>>,
    pub(super) group: Option<Result<Parsed<GroupEntry>, String>>,
    pub(super) shadow: Option<Result<Parsed<ShadowEntry>, String>>,
    pub(super) mounts: Option<Result<Vec<Mount>, String>>,
    pub(super) login_defs: Option<Result<Option<BTreeMap<String, String>>, String>>,
    pub(super) scan: Option<Scan>,
}

/// What the world-writable scan found.
#[derive(Clone, Debug, Default)]
pub(super) struct Scan {
    pub(super) files: Vec<String>,
    pub(super) dirs_without_sticky: Vec<String>,
    pub(super) visited: usize,
    pub(super) truncated: bool,
}

impl Facts {
    /// Facts about the system under `root`, whose files must belong to `expected_uid` /
    /// `expected_gid` (0 / 0 on a real system).
    pub fn new(root: Root, expected_uid: u32, expected_gid: u32) -> Facts {
        Facts {
            root,
            expected_uid,
            expected_gid,
            sshd: None,
            passwd: None,
            group: None,
            shadow: None,
            mounts: None,
            login_defs: None,
            scan: None,
        }
    }

    pub(super) fn sshd(&mut self) -> Result<Option<&SshdConfig>, String> {
        let root = &self.root;
        self.sshd
            .get_or_insert_with(|| sshd::read_sshd_config(root).map_err(|e| e.to_string()))
            .as_ref()
            .map(Option::as_ref)
            .map_err(Clone::clone)
    }

    pub(super) fn passwd(&mut self) -> Result<&Parsed<PasswdEntry>, String> {
        let root = &self.root;
        self.passwd
            .get_or_insert_with(|| accounts::read_passwd(root).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub(super) fn group(&mut self) -> Result<&Parsed<GroupEntry>, String> {
        let root = &self.root;
        self.group
            .get_or_insert_with(|| accounts::read_group(root).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub(super) fn shadow(&mut self) -> Result<&Parsed<ShadowEntry>, String> {
        let root = &self.root;
        self.shadow
            .get_or_insert_with(|| accounts::read_shadow(root).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub(super) fn mounts(&mut self) -> Result<&[Mount], String> {
        let root = &self.root;
        self.mounts
            .get_or_insert_with(|| {
                read_text(&root.path("/proc/self/mountinfo"), 4 * 1024 * 1024)
                    .map(|t| osinfo::parse_mountinfo(&t))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map(Vec::as_slice)
            .map_err(Clone::clone)
    }

    pub(super) fn login_defs(&mut self) -> Result<Option<&BTreeMap<String, String>>, String> {
        let root = &self.root;
        self.login_defs
            .get_or_insert_with(|| match read_text(&root.path("/etc/login.defs"), 1024 * 1024) {
                Ok(t) => Ok(Some(keyvalue::parse_login_defs(&t))),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e.to_string()),
            })
            .as_ref()
            .map(Option::as_ref)
            .map_err(Clone::clone)
    }

    pub(super) fn scan(&mut self) -> &Scan {
        let root = &self.root;
        self.scan.get_or_insert_with(|| world_writable_scan(root))
    }

    pub(super) fn sysctl(&self, key: &str) -> Option<String> {
        read_value(&self.root.path(format!("/proc/sys/{key}")))
    }

    /// The gid of group `name`, from /etc/group.
    pub(super) fn gid_of(&mut self, name: &str) -> Option<u32> {
        self.group()
            .ok()
            .and_then(|g| g.entries.iter().find(|e| e.name == name).map(|e| e.gid))
    }
}

/// Walks [`SCAN_DIRS`] (not following links, not crossing into other file systems), bounded
/// by [`MAX_SCAN_ENTRIES`] and depth.
pub(super) fn world_writable_scan(root: &Root) -> Scan {
    let mut scan = Scan::default();
    for dir in SCAN_DIRS {
        let start = root.path(dir);
        let Ok(meta) = sysfs::symlink_metadata(&start) else {
            continue;
        };
        // /bin -> usr/bin on merged-/usr systems: scanned once, through /usr/bin.
        if !meta.is_dir() {
            continue;
        }
        let dev = meta.dev();
        let mut stack = vec![(start, 0usize)];
        while let Some((path, depth)) = stack.pop() {
            let Ok(entries) = sysfs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                if scan.visited >= MAX_SCAN_ENTRIES {
                    scan.truncated = true;
                    return scan;
                }
                scan.visited += 1;
                let Ok(m) = entry.metadata() else {
                    continue;
                };
                let mode = m.permissions().mode();
                let shown = || {
                    let p = entry.path();
                    let rel = p.strip_prefix(root.dir()).map(Path::to_path_buf).unwrap_or(p);
                    format!("/{}", rel.to_string_lossy().trim_start_matches('/'))
                };
                if m.is_dir() {
                    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                        scan.dirs_without_sticky.push(shown());
                    }
                    if m.dev() == dev && depth < MAX_SCAN_DEPTH {
                        stack.push((entry.path(), depth + 1));
                    }
                } else if m.is_file() && mode & 0o002 != 0 {
                    scan.files.push(shown());
                }
            }
        }
    }
    scan
}
