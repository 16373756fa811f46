//! `doctor`: the data directory - whether it exists and who owns it, its mode, the free space
//! the cache may still need, the lock, and the cache's state (events and bytes per queue).
//!
//! Nothing is written into the directory: a missing directory is reported (the agent creates
//! it at start), the lock is read from `/proc/locks` (never taken), and when no agent holds it
//! the cache's files are copied to a private directory and the copy is opened (opening
//! repairs, which writes). No link in the directory is followed, as the agent would refuse
//! it; a directory owned by another user is inspected but never changed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::pipeline::cache::{disk_bound, Cache, QueueCounters, CACHE_DIR_NAME};
use crate::sys::disk::{free_bytes, may_write_into};
use crate::sys::fs::read_text;
use twinguard_os::safefile::{self, user_name, Dir, FileKind};

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

/// Examines `path` for an agent whose cache may hold `max_cache_bytes`. Read-only: nothing
/// in the directory is created, locked or changed, no link in it is followed, and a FIFO
/// planted there is not waited on.
pub(crate) fn examine_data_dir(path: &Path, max_cache_bytes: u64) -> DataDirCheck {
    let mut check = DataDirCheck {
        path: path.to_owned(),
        ..DataDirCheck::default()
    };
    let bound = disk_bound(max_cache_bytes);
    let meta = match safefile::lstat(path) {
        Ok(Some(m)) => m,
        Ok(None) => {
            let parent = path
                .ancestors()
                .skip(1)
                .find(|p| !p.as_os_str().is_empty() && p.exists())
                .unwrap_or(Path::new("."));
            check.line(format!(
                "does not exist yet: the agent creates it (mode 0700) at its first start (nearest existing parent: {})",
                parent.display()
            ));
            if !may_write_into(parent) {
                check.problem(format!(
                    "{} is not writable by this user: the agent could not create {}",
                    parent.display(),
                    path.display()
                ));
            }
            if let Err(e) = safefile::check_ancestors(path) {
                check.problem(format!("the agent refuses it: {e}"));
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
    if meta.kind == FileKind::Symlink {
        check.problem(
            "is a symbolic link: the agent refuses a linked data directory (name the real directory)",
        );
        return check;
    }
    if meta.kind != FileKind::Directory {
        check.problem("exists but is not a directory");
        return check;
    }
    let mode = meta.mode;
    let owner = user_name(meta.uid);
    let mode_note = if mode & 0o777 == 0o700 {
        String::new()
    } else {
        "; the agent tightens it to 0700 at start".to_owned()
    };
    check.line(format!(
        "mode {mode:04o}, owner {owner} (uid {}){mode_note}",
        meta.uid
    ));
    let me = twinguard_os::euid();
    let ours = meta.uid == me || meta.uid == 0;
    if !ours && me == 0 {
        check.line(format!(
            "owned by {owner}: the agent must run as {owner} here (`runuser -u {owner} -- twinguard run ...` or the systemd unit); root refuses another user's data directory"
        ));
    } else if !ours {
        check.problem(format!(
            "owned by {owner} (uid {}), not by this user: the agent refuses it",
            meta.uid
        ));
    } else if !may_write_into(path) {
        check.problem("not writable by this user (the agent's user must own it)");
    }
    if mode & 0o022 != 0 {
        check.problem(format!(
            "writable by group or others (mode {mode:04o}): the agent refuses it (`chmod 700 {}`)",
            path.display()
        ));
    }
    if let Err(e) = safefile::check_ancestors(path) {
        check.problem(format!("the agent refuses it: {e}"));
    }
    let dir = match Dir::open_for_reading(path) {
        Ok(d) => d,
        Err(e) => {
            check.problem(format!("cannot inspect: {e}"));
            return check;
        }
    };
    if let Ok(Some(id)) = dir.read("agent-id", 4096) {
        check.line(format!("agent id {}", String::from_utf8_lossy(&id).trim()));
    }

    let mut disk_used = 0;
    match dir.stat("lock") {
        Ok(None) => check.line("no agent has used it yet: no cache"),
        Ok(Some(st)) if st.kind != FileKind::Regular => check.problem(format!(
            "{} is {}, not a regular file: the agent refuses it (remove it)",
            dir.join("lock").display(),
            st.kind.describe()
        )),
        Ok(Some(st)) => match lock_holder(st.ino) {
            Some(pid) => {
                check.line(format!(
                    "lock: held by a running agent (pid {pid}); its cache is not opened (its reported properties carry the counters)"
                ));
                check.held_by = Some(pid.to_string());
                disk_used = dir_bytes(&dir, CACHE_DIR_NAME);
            }
            None => {
                check.line("lock: free (no agent runs on this directory now)");
                disk_used = examine_cache(&mut check, &dir, bound);
            }
        },
        Err(e) => check.problem(e.to_string()),
    }
    free_space(&mut check, path, bound, disk_used);
    check
}

/// The process holding the `flock` of the file with inode `inode`, from `/proc/locks`.
fn lock_holder(inode: u64) -> Option<u32> {
    let locks = read_text(Path::new("/proc/locks"), 1024 * 1024).ok()?;
    let holder = flock_holders(&locks, inode).next();
    holder
}

/// The cache's state; returns the bytes its files take. The cache is never opened in place
/// (opening repairs and may write): its files are copied, read without following links,
/// into a private temporary directory, and the copy is opened.
fn examine_cache(check: &mut DataDirCheck, data: &Dir, bound: u64) -> u64 {
    let dir = match data.stat(CACHE_DIR_NAME) {
        Ok(None) => {
            check.line("cache: empty (no segment files)");
            return 0;
        }
        Ok(Some(_)) => match data.sub_dir_for_reading(CACHE_DIR_NAME) {
            Ok(d) => d,
            Err(e) => {
                check.problem(format!("cache: {e}"));
                return 0;
            }
        },
        Err(e) => {
            check.problem(format!("cache: {e}"));
            return 0;
        }
    };
    let names = dir.names().unwrap_or_default();
    if !names.iter().any(|n| n.starts_with("cache-")) {
        check.line("cache: empty (no segment files)");
        return 0;
    }
    let copy = match copy_cache(&dir, &names, bound) {
        Ok(c) => c,
        Err(e) => {
            check.problem(format!("cache: {e}"));
            return dir_bytes(data, CACHE_DIR_NAME);
        }
    };
    // An unbounded size: opening must never evict what the agent has not sent yet.
    let used = match Cache::open(&copy.0, u64::MAX) {
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
            dir_bytes(data, CACHE_DIR_NAME)
        }
    };
    used
}

/// A private copy of the cache's files, removed when dropped.
struct CacheCopy(PathBuf);

impl Drop for CacheCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies the regular, singly linked files of `dir` into a new private directory; refuses
/// more than twice the cache's bound.
fn copy_cache(dir: &Dir, names: &[String], bound: u64) -> Result<CacheCopy, String> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let copy = (0..100)
        .find_map(|_| {
            let p = base.join(format!(
                "twinguard-doctor-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .ok()
                .map(|()| CacheCopy(p))
        })
        .ok_or_else(|| format!("cannot create a private copy under {}", base.display()))?;
    let limit = bound.saturating_mul(2).saturating_add(1024 * 1024);
    let mut total = 0u64;
    for name in names {
        let Ok(Some(st)) = dir.stat(name) else { continue };
        if st.kind != FileKind::Regular || st.nlink > 1 {
            return Err(format!(
                "{} is {}; refused (the agent writes only regular files there)",
                dir.join(name).display(),
                if st.nlink > 1 {
                    "hard-linked"
                } else {
                    st.kind.describe()
                }
            ));
        }
        total = total.saturating_add(st.size);
        if total > limit {
            return Err(format!(
                "more than {} of files: not inspected",
                human_bytes(limit)
            ));
        }
        let bytes = dir
            .read(name, usize::try_from(limit).unwrap_or(usize::MAX))
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        fs::write(copy.0.join(name), bytes).map_err(|e| format!("private copy: {e}"))?;
    }
    Ok(copy)
}

/// The bytes of the regular files directly in `data`'s subdirectory `name` (links not
/// followed).
fn dir_bytes(data: &Dir, name: &str) -> u64 {
    let Ok(dir) = data.sub_dir_for_reading(name) else {
        return 0;
    };
    dir.names()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| dir.stat(n).ok().flatten())
        .filter(|s| s.kind == FileKind::Regular)
        .map(|s| s.size)
        .sum()
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
    use crate::datadir::DataDir;
    use twinguard_core::event::Priority;

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

        // Doctor wrote nothing: the lock still names the last agent, and a torn tail of the
        // newest segment (which opening the cache in place would cut) is still there.
        fs::write(dir.join("lock"), "4242").unwrap();
        // The newest segment (the directory also holds the drop counters' slot file).
        let segment = fs::read_dir(dir.join(CACHE_DIR_NAME))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        bytes.extend_from_slice(b"\x00\x07torn");
        fs::write(&segment, &bytes).unwrap();
        let check = examine_data_dir(&dir, 1_000_000);
        assert!(
            check.lines.join("\n").contains("torn bytes cut"),
            "{:?}",
            check.lines
        );
        assert_eq!(fs::read_to_string(dir.join("lock")).unwrap(), "4242");
        assert_eq!(fs::read(&segment).unwrap(), bytes);

        let held = DataDir::open(&dir).unwrap();
        let check = examine_data_dir(&dir, 1_000_000);
        assert_eq!(check.held_by, Some(std::process::id().to_string()));
        assert!(check.lines.join("\n").contains("held by a running agent"));
        drop(held);
        fs::remove_dir_all(&dir).unwrap();
    }
}
