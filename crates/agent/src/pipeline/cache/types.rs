//! The values the cache hands out: entry ids and views, push outcomes, drop reasons, counters,
//! the recovery report and the error type. No IO here.

use std::fmt;
use std::io;
use std::path::PathBuf;

use twinguard_core::event::Priority;

/// Identifies one cached event while it is cached, and across restarts: it is the event's
/// sequence number in the log, allocated in push order and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub(super) u64);

impl EntryId {
    /// The sequence number, for logs and diagnostics.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A view of one cached entry, as [`Cache::entries`](super::Cache::entries) and
/// [`Cache::unpinned`](super::Cache::unpinned) yield it. The event bytes themselves stay on
/// disk; [`Cache::read`](super::Cache::read) fetches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef {
    /// The entry's id.
    pub id: EntryId,
    /// Length of the event's bytes (what it counts toward `max_bytes` and toward a message).
    pub len: u64,
    /// The caller's monotonic clock at push, in milliseconds; 0 for an entry reloaded after a
    /// restart (so it is due at once).
    pub enqueued_ms: u64,
    /// Whether the entry is pinned for a send in progress.
    pub pinned: bool,
}

/// One entry removed to make room (or because `max_bytes` shrank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// The evicted entry.
    pub id: EntryId,
    /// Its queue.
    pub priority: Priority,
    /// Its length in bytes.
    pub len: u64,
}

/// Why an event left the cache (or never entered it) without being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A cached event removed to make room for a newer one, or because `max_bytes` shrank.
    Evicted,
    /// An incoming event larger than `max_bytes` (or than [`MAX_EVENT_BYTES`](super::MAX_EVENT_BYTES)).
    TooLarge,
    /// An incoming event that did not fit even after evicting every candidate it may evict
    /// (a Low event facing High events, or pinned events holding the space).
    CacheFull,
    /// The write of an incoming event failed with ENOSPC or EDQUOT.
    DiskFull,
    /// The write of an incoming event failed with another IO error.
    Io,
    /// A cached event whose record could not be read back (checksum mismatch, missing
    /// record after a restart).
    Unreadable,
    /// An event lost before it reached the cache (a collector's channel was full, or the
    /// kernel dropped it), counted here so the cumulative counters hold every loss.
    Lost,
    /// `push` was called with [`Priority::Off`]: a programmer error. Never counted (there is
    /// no Off queue).
    PriorityOff,
}

impl DropReason {
    /// The reasons that are counted, in the order of [`DropCounts`].
    pub const COUNTED: [DropReason; 7] = [
        DropReason::Evicted,
        DropReason::TooLarge,
        DropReason::CacheFull,
        DropReason::DiskFull,
        DropReason::Io,
        DropReason::Unreadable,
        DropReason::Lost,
    ];

    /// A stable lower-case name for logs and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Evicted => "evicted",
            DropReason::TooLarge => "too-large",
            DropReason::CacheFull => "cache-full",
            DropReason::DiskFull => "disk-full",
            DropReason::Io => "io",
            DropReason::Unreadable => "unreadable",
            DropReason::Lost => "lost",
            DropReason::PriorityOff => "priority-off",
        }
    }

    /// Index into [`DropCounts`]; `None` for the uncounted [`DropReason::PriorityOff`].
    pub(super) fn index(self) -> Option<usize> {
        DropReason::COUNTED.iter().position(|r| *r == self)
    }

    /// The on-disk code (1..=7); `None` for [`DropReason::PriorityOff`].
    pub(super) fn code(self) -> Option<u8> {
        self.index().and_then(|i| u8::try_from(i + 1).ok())
    }

    /// Inverse of [`DropReason::code`].
    pub(super) fn from_code(code: u8) -> Option<DropReason> {
        let index = usize::from(code).checked_sub(1)?;
        DropReason::COUNTED.get(index).copied()
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drops of one queue, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts(pub(super) [u64; 7]);

impl DropCounts {
    /// The count for one reason (always 0 for [`DropReason::PriorityOff`]).
    pub fn get(&self, reason: DropReason) -> u64 {
        reason.index().and_then(|i| self.0.get(i)).copied().unwrap_or(0)
    }

    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// `(reason, count)` for every counted reason.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::COUNTED.iter().copied().zip(self.0.iter().copied())
    }

    /// Adds `n` drops of `reason` (ignored for the uncounted [`DropReason::PriorityOff`]).
    pub(super) fn add(&mut self, reason: DropReason, n: u64) {
        if let Some(slot) = reason.index().and_then(|i| self.0.get_mut(i)) {
            *slot = slot.saturating_add(n);
        }
    }
}

/// Cumulative counters of one queue. They survive restarts and crashes; after every open
/// `collected == sent + dropped.total() + cached` holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Events pushed to this queue: accepted ones plus incoming ones that were dropped.
    pub collected: u64,
    /// Events acknowledged as sent.
    pub sent: u64,
    /// Events dropped, by reason.
    pub dropped: DropCounts,
    /// Events cached now (pinned ones included).
    pub cached: u64,
    /// Sum of the lengths of the events cached now.
    pub cached_bytes: u64,
}

impl QueueCounters {
    /// Whether `collected == sent + dropped + cached` (the SPEC §5 invariant).
    pub fn is_balanced(&self) -> bool {
        self.sent
            .checked_add(self.dropped.total())
            .and_then(|n| n.checked_add(self.cached))
            == Some(self.collected)
    }
}

/// The counters of both queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// The High queue.
    pub high: QueueCounters,
    /// The Low queue.
    pub low: QueueCounters,
}

impl CacheCounters {
    /// The counters of one queue; `None` for [`Priority::Off`].
    pub fn queue(&self, priority: Priority) -> Option<&QueueCounters> {
        match priority {
            Priority::High => Some(&self.high),
            Priority::Low => Some(&self.low),
            Priority::Off => None,
        }
    }
}

/// What `push` did with an event.
#[derive(Debug)]
pub enum PushOutcome {
    /// The event is cached (its record written), possibly after evicting others.
    Stored {
        /// Its id.
        id: EntryId,
        /// Entries evicted to make room, oldest first.
        evicted: Vec<Eviction>,
        /// A problem met on the side (compaction or a deferred record failed to write); the
        /// event itself is stored. For a Diagnostic.
        error: Option<CacheError>,
    },
    /// The event was not cached; the drop is counted (except for `PriorityOff`).
    Dropped {
        /// Why.
        reason: DropReason,
        /// Entries already evicted for it before its own write failed (normally empty).
        evicted: Vec<Eviction>,
        /// The write error behind a `DiskFull`/`Io` drop, for a Diagnostic.
        error: Option<CacheError>,
    },
}

impl PushOutcome {
    /// The id if the event was stored.
    pub fn id(&self) -> Option<EntryId> {
        match self {
            PushOutcome::Stored { id, .. } => Some(*id),
            PushOutcome::Dropped { .. } => None,
        }
    }

    /// The entries evicted by this push.
    pub fn evicted(&self) -> &[Eviction] {
        match self {
            PushOutcome::Stored { evicted, .. } | PushOutcome::Dropped { evicted, .. } => evicted,
        }
    }
}

/// Entries evicted by [`Cache::set_max_bytes`](super::Cache::set_max_bytes) or
/// [`Cache::unpin`](super::Cache::unpin), and any problem persisting that.
#[derive(Debug, Default)]
pub struct Evictions {
    /// Evicted entries, Low before High, oldest first.
    pub evicted: Vec<Eviction>,
    /// A write problem (the evictions are effective in memory and the record is retried with
    /// the next write), for a Diagnostic.
    pub error: Option<CacheError>,
}

/// What [`Cache::open`](super::Cache::open) found on disk.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Drops counted while the disk was full that only the counter slot held (the previous
    /// run stopped before space came back); they are in the counters now.
    pub slot_drops: u64,
    /// Entries recovered (both queues); all unpinned, with `enqueued_ms` 0.
    pub entries: u64,
    /// Bytes discarded from the end of the newest segment: a record cut short by a crash.
    pub torn_bytes: u64,
    /// Unreadable bytes after a bad record in an older segment. Left in place (never
    /// deleted at open); compaction reclaims the segment later.
    pub skipped_bytes: u64,
    /// Entries the persisted counters hold as cached but whose record was not found; they
    /// are counted as dropped ([`DropReason::Unreadable`]) so the counters balance.
    pub lost_entries: u64,
    /// Entries evicted at open because `max_bytes` is smaller than what was cached.
    pub evicted: Vec<Eviction>,
    /// Segment files found.
    pub segments: usize,
    /// A write problem met while evicting or compacting at open (the cache is usable).
    pub error: Option<CacheError>,
}

/// Errors of the cache. Every variant that is about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An IO operation failed.
    #[error("{}: {op}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("write", "fdatasync", ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A segment file whose header is not a cache header (wrong magic or checksum).
    #[error("{}: not a twinguard cache segment (bad header); move it away to start an empty cache", .path.display())]
    CorruptHeader {
        /// The segment file.
        path: PathBuf,
    },
    /// A segment file written by a format version this build does not read.
    #[error("{}: cache format version {found} is not supported (this build reads version {supported})", .path.display())]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A cached entry's record could not be read back; the entry was dropped and counted as
    /// [`DropReason::Unreadable`] so the queue does not stall.
    #[error("{}: entry {id} at offset {offset} is unreadable ({why}); it was dropped", .path.display())]
    Unreadable {
        /// The segment file.
        path: PathBuf,
        /// The entry.
        id: EntryId,
        /// The record's offset in the file.
        offset: u64,
        /// What was wrong.
        why: &'static str,
    },
    /// The entry is not cached (never was, or already acknowledged or evicted).
    #[error("entry {0} is not in the cache")]
    UnknownEntry(EntryId),
}

impl CacheError {
    /// Whether this is the device running out of space (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            CacheError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            }
            _ => false,
        }
    }

    /// The drop reason for an incoming event whose write failed with this error.
    pub(super) fn drop_reason(&self) -> DropReason {
        if self.is_disk_full() {
            DropReason::DiskFull
        } else {
            DropReason::Io
        }
    }
}
