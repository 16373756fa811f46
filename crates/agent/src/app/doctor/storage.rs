//! `doctor`: the data directory - whether it exists and who owns it, its mode, the free space
//! the cache may still need, the lock, and the cache's state (events and bytes per queue).
//!
//! Nothing is created: a missing directory is reported (the agent creates it at start). The
//! cache is opened only when no agent holds the directory's lock, with an unbounded size so
//! that opening it never evicts anything; an agent holding the lock is reported instead.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::collect::user_names::UserNames;
use crate::datadir::{DataDir, DataDirError};
use crate::pipeline::cache::{disk_bound, Cache, QueueCounters, CACHE_DIR_NAME};
use crate::sys::fs::read_text;

use super::sources::flock_holders;

/// What doctor found in the data directory.
#[derive(Debug, Default)]
pub struct DataDirCheck {
    /// The directory.
    pub path: PathBuf,
    /// One line per fact, in order.
    pub lines: Vec<String>,
    /// What keeps the agent from using it (each makes doctor fail).
    pub problems: Vec<String>,
    /// The pid of the running agent holding the lock, if one does.
    pub held_by: Option<String>,
}

impl DataDirCheck {
    fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    fn problem(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.lines.push(format!("PROBLEM: {text}"));
        self.problems.push(text);
    }
}

/// Human-readable bytes (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes available to unprivileged writers on the file system holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between targets (u32 on 32-bit ARM for some); all fit in u64.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether this process may write into `dir` (access(2) with the real ids, as the agent
/// would run).
fn writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn queue_line(name: &str, q: &QueueCounters) -> String {
    format!(
        "{name} queue: {} events cached ({}); since the directory was created {} collected, {} sent, {} dropped",
        q.cached,
        human_bytes(q.cached_bytes),
        q.collected,
        q.sent,
        q.dropped.total()
    )
}

/// Examines `path` for an agent whose cache may hold `max_cache_bytes`.
pub fn examine_data_dir(path: &Path, max_cache_bytes: u64) -> DataDirCheck {
    let mut check = DataDirCheck {
        path: path.to_owned(),
        ..DataDirCheck::default()
    };
    let bound = disk_bound(max_cache_bytes);
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path
                .ancestors()
                .skip(1)
                .find(|p| !p.as_os_str().is_empty() && p.exists())
                .unwrap_or(Path::new("."));
            check.line(format!(
                "does not exist yet: the agent creates it (mode 0700) at its first start (nearest existing parent: {})",
                parent.display()
            ));
            if !writable(parent) {
                check.problem(format!(
                    "{} is not writable by this user: the agent could not create {}",
                    parent.display(),
                    path.display()
                ));
            }
            free_space(&mut check, parent, bound, 0);
            return check;
        }
        Err(e) => {
            check.problem(format!(
                "cannot inspect: {e} (run doctor as root or as the agent's user)"
            ));
            return check;
        }
    };
    if !meta.is_dir() {
        check.problem("exists but is not a directory");
        return check;
    }
    let mode = meta.mode() & 0o7777;
    let owner = UserNames::default()
        .name(meta.uid())
        .unwrap_or_else(|| "no such user".into());
    let mode_note = if mode & 0o777 == 0o700 {
        String::new()
    } else {
        "; the agent tightens it to 0700 at start".to_owned()
    };
    check.line(format!(
        "mode {mode:04o}, owner {owner} (uid {}){mode_note}",
        meta.uid()
    ));
    if !writable(path) {
        check.problem("not writable by this user (the agent's user must own it)");
    }
    if let Ok(id) = fs::read_to_string(path.join("agent-id")) {
        check.line(format!("agent id {}", id.trim()));
    }

    let lock = path.join("lock");
    let mut disk_used = 0;
    if !lock.exists() {
        check.line("no agent has used it yet: no cache");
    } else if let Some(pid) = lock_holder(&lock) {
        // Held: not even tried (a try would refuse an agent starting at that moment).
        check.line(format!(
            "lock: held by a running agent (pid {pid}); its cache is not opened (its reported properties carry the counters)"
        ));
        check.held_by = Some(pid.to_string());
        disk_used = dir_bytes(&path.join(CACHE_DIR_NAME));
    } else {
        match DataDir::open(path) {
            Ok(dir) => {
                check.line("lock: free (no agent runs on this directory now)");
                disk_used = examine_cache(&mut check, &dir.path().join(CACHE_DIR_NAME));
            }
            Err(DataDirError::Locked { holder, .. }) => {
                check.line(format!(
                    "lock: held by a running agent (pid {holder}); its cache is not opened (its reported properties carry the counters)"
                ));
                check.held_by = Some(holder);
                disk_used = dir_bytes(&path.join(CACHE_DIR_NAME));
            }
            Err(e) => check.problem(e.to_string()),
        }
    }
    free_space(&mut check, path, bound, disk_used);
    check
}

/// The process holding the `flock` of `lock`, from `/proc/locks`.
fn lock_holder(lock: &Path) -> Option<u32> {
    let inode = fs::metadata(lock).ok()?.ino();
    let locks = read_text(Path::new("/proc/locks"), 1024 * 1024).ok()?;
    let holder = flock_holders(&locks, inode).next();
    holder
}

/// The cache's state; returns the bytes its files take.
fn examine_cache(check: &mut DataDirCheck, dir: &Path) -> u64 {
    let has_segments = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("cache-"))
        })
        .unwrap_or(false);
    if !has_segments {
        check.line("cache: empty (no segment files)");
        return 0;
    }
    // An unbounded size: opening must never evict what the agent has not sent yet.
    match Cache::open(dir, u64::MAX) {
        Ok((cache, recovery)) => {
            let counters = cache.counters();
            check.line(queue_line("cache: High", &counters.high));
            check.line(queue_line("cache: Low", &counters.low));
            check.line(format!(
                "cache files: {} in {} segments",
                human_bytes(cache.disk_bytes()),
                recovery.segments
            ));
            if recovery.torn_bytes > 0 || recovery.skipped_bytes > 0 || recovery.lost_entries > 0 {
                check.line(format!(
                    "cache recovery: {} torn bytes cut (a crash mid-write), {} damaged bytes skipped, {} events lost",
                    recovery.torn_bytes, recovery.skipped_bytes, recovery.lost_entries
                ));
            }
            if !(counters.high.is_balanced() && counters.low.is_balanced()) {
                check.problem("cache counters do not balance (collected != sent + dropped + cached)");
            }
            cache.disk_bytes()
        }
        Err(e) => {
            check.problem(format!("cache: {e}"));
            dir_bytes(dir)
        }
    }
}

/// The bytes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn free_space(check: &mut DataDirCheck, path: &Path, bound: u64, used: u64) {
    match free_bytes(path) {
        Ok(free) => {
            let needed = bound.saturating_sub(used);
            check.line(format!(
                "free space: {} (the cache's files may take up to {}, {} of it in use)",
                human_bytes(free),
                human_bytes(bound),
                human_bytes(used)
            ));
            if free < needed {
                check.problem(format!(
                    "only {} free where the cache may need {} more: when the disk is full new events are dropped",
                    human_bytes(free),
                    human_bytes(needed)
                ));
            }
        }
        Err(e) => check.line(format!("free space: unknown ({e})")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::Priority;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twinguard-doctor-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
    }

    #[test]
    fn a_missing_directory_is_not_created() {
        let dir = temp("missing");
        let check = examine_data_dir(&dir, 2_560_000);
        assert!(!dir.exists());
        assert!(check.lines[0].contains("does not exist yet"), "{:?}", check.lines);
        assert!(check.problems.is_empty(), "{:?}", check.problems);
    }

    #[test]
    fn the_cache_is_counted_and_a_held_lock_is_reported() {
        let dir = temp("cache");
        {
            let data = DataDir::open(&dir).unwrap();
            let (mut cache, _) = Cache::open(&data.path().join(CACHE_DIR_NAME), 1_000_000).unwrap();
            cache.push(Priority::High, b"{\"event\":1}", 1);
            cache.push(Priority::Low, b"{\"event\":22}", 1);
            cache.push(Priority::Low, b"{\"event\":333}", 1);
            cache.close().unwrap();
        }
        let check = examine_data_dir(&dir, 1_000_000);
        let text = check.lines.join("\n");
        assert!(text.contains("High queue: 1 events cached (11 bytes)"), "{text}");
        assert!(text.contains("Low queue: 2 events cached (25 bytes)"), "{text}");
        assert!(check.problems.is_empty(), "{:?}", check.problems);
        assert_eq!(check.held_by, None);

        let held = DataDir::open(&dir).unwrap();
        let check = examine_data_dir(&dir, 1_000_000);
        assert_eq!(check.held_by, Some(std::process::id().to_string()));
        assert!(check.lines.join("\n").contains("held by a running agent"));
        drop(held);
        fs::remove_dir_all(&dir).unwrap();
    }
}
