//! The on-disk, byte-bounded event cache with two priority queues (SPEC §5).
//!
//! The cache holds serialized events (each event's compact JSON, opaque bytes here) in a High
//! and a Low queue, ordered by push. Events pushed into it survive `kill -9` and are sent after
//! a restart. The pipeline selects events for a message from [`Cache::unpinned`], reads their
//! bytes with [`Cache::read`], [`Cache::pin`]s them while the transport sends, then
//! [`Cache::ack`]s (sent) or [`Cache::unpin`]s them (send failed: back in place, not a drop).
//!
//! # Bounds
//!
//! * **Bytes.** The sum of cached event lengths never exceeds `max_bytes` (pinned events
//!   count). When an event does not fit, the oldest unpinned Low events are evicted first; a
//!   High event may then evict older unpinned High events; a Low event never evicts a High
//!   one. An event that still does not fit is dropped itself, as is one larger than
//!   `max_bytes`. Every drop is counted per queue with a [`DropReason`]. The one exception:
//!   after `max_bytes` shrinks below what is pinned, the pinned bytes stay until acknowledged
//!   (they cannot be evicted); [`Cache::unpin`] then evicts to restore the bound.
//! * **Disk.** `disk_bytes() <= 2 * max_bytes + FIXED_OVERHEAD` ([`disk_bound`]) at all times,
//!   compaction included, where [`FIXED_OVERHEAD`] = one segment ([`SEGMENT_BYTES`], the most
//!   compaction copies before it deletes) + 4 KiB (headers, the checkpoint record). This holds
//!   while the per-entry record overhead ([`PUT_OVERHEAD`] bytes per cached event) fits in
//!   `max_bytes`, i.e. when cached events average at least ~32 bytes; every real event is
//!   much larger (its `Id` alone is 36). With absurdly small events the footprint is
//!   `max_bytes + 18 x entries + FIXED_OVERHEAD` at most. While pinned events exceed a
//!   shrunk `max_bytes`, their total stands in for `max_bytes` in this bound.
//! * **Memory.** Event bytes live only on disk; RAM holds ~60 bytes of metadata per entry.
//!   Low events wait up to `lowPriorityMessageFrequency` (5 h by default), so the cache is
//!   often full; keeping its 2.5 MB in RAM would spend most of the 4 MiB budget (SPEC §10).
//!   Reading an event back costs one `pread`, normally from the page cache, once per send.
//!
//! # On-disk format (version 2; version 1 is read)
//!
//! The cache owns a directory (the pipeline uses `<data_dir>/`[`CACHE_DIR_NAME`]) of segment
//! files `cache-NNNNNN.log`, numbered in log order. Each starts with a 16-byte header (magic
//! `TWGCACHE`, format version, CRC32 of both) followed by records, each `len u32 | crc32 u32
//! | kind u8 | body` (little-endian): **Put** {seq, queue, event bytes}, **Remove** {sent or a
//! drop reason, seqs...}, **Dropped** {queue, reason, count} for incoming events never stored,
//! and **Checkpoint** {next seq, cumulative counters of both queues}. Appends go to the newest
//! segment until it would exceed [`SEGMENT_BYTES`] (a larger record gets a segment of its
//! own). Replaying the records in order rebuilds the queues (an entry is a Put with no later
//! Remove; a second Put of the same seq is a compaction copy and only moves the entry) and the
//! counters (the last Checkpoint plus the counting records after it). An entry's id is its
//! seq. See `format.rs` for the byte layout.
//!
//! Beside the segments, `counters.slot` ([`SLOT_FILE_BYTES`], `slot.rs`) is reserved at open
//! and only overwritten in place: it holds drop counts while the disk is full (no record can
//! be appended then) and the pipeline's [`Carry`]. At open its drops are added unless a log
//! record written after them already holds them.
//!
//! # Compaction
//!
//! Before a write would take the files over `2 * max_bytes`, compaction picks a segment with
//! garbage (removed entries, Remove/Dropped/old Checkpoint records), appends copies of its
//! live Puts to the head, appends a Checkpoint (the counters its records carried), fdatasyncs,
//! then deletes it. A crash in between leaves duplicate Puts, resolved by seq at the next open.
//! A segment is only deleted when no older segment holds a Put of a removed entry, so a
//! deleted Remove can never bring its entry back.
//!
//! # Crash and power-loss policy
//!
//! Every record reaches the kernel with `write(2)` before the call that wrote it returns, so
//! a process crash (`kill -9`) loses nothing that was acknowledged. At open a record cut short
//! at the end of the newest segment (length/CRC) is truncated and reported in
//! [`Recovery::torn_bytes`]; earlier records are never lost. Damage elsewhere (a bad record
//! followed by good ones) is skipped, left in place and reported in
//! [`Recovery::skipped_bytes`]: the scan resynchronises on the next valid record. A header
//! that is not ours or of another version is an error naming the file: nothing is ever
//! deleted silently. Pinned entries are simply unpinned after a restart and sent again
//! (at-least-once).
//!
//! For power loss: a segment is fdatasync'd when it is rotated out, a new segment (header and
//! directory entry) is made durable before use, compaction fdatasyncs its copies before it
//! deletes anything, and [`Cache::sync`] fdatasyncs the head. The pipeline is to call
//! `sync()` periodically (and may after each acknowledged send); a power loss then loses at
//! most the events pushed since the last `sync()` (and may resend those acknowledged since).
//! No fsync happens per push: that would cost a flash write per event.
//!
//! # Write cost
//!
//! Each event costs `PUT_OVERHEAD + len` bytes when pushed and `REMOVE_SEQ_BYTES` (plus
//! `REMOVE_BASE_BYTES` per acknowledged batch) when removed: see [`write_cost_per_event`].
//! Compaction adds copies of events still cached; [`Cache::bytes_written`] measures the total.

mod format;
mod log;
mod slot;
mod types;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use twinguard_core::event::Priority;

use format::{Checkpoint, Queue, Record, Removal, Totals, CHECKPOINT_BYTES, HEADER_BYTES};
use log::{Location, SegmentLog};

pub use format::{MAX_EVENT_BYTES, PUT_OVERHEAD, REMOVE_BASE_BYTES, REMOVE_SEQ_BYTES};
pub use slot::{Carry, SLOT_FILE_BYTES};
use slot::{Slot, SlotState};
pub use types::{
    CacheCounters, CacheError, DropCounts, DropReason, EntryId, EntryRef, Eviction, Evictions, PushOutcome,
    QueueCounters, Recovery,
};

/// The name of the cache's directory inside the data directory.
pub const CACHE_DIR_NAME: &str = "cache";

/// Size at which the head segment is rotated (a larger single record gets its own segment).
pub const SEGMENT_BYTES: u64 = 64 * 1024;

/// The fixed part of the disk bound: one segment (the most compaction copies before it
/// deletes the segment it compacts) plus 4 KiB for segment headers and checkpoint records.
pub const FIXED_OVERHEAD: u64 = SEGMENT_BYTES + 4096;

/// The documented bound on [`Cache::disk_bytes`] for a given `max_bytes` (see the module doc
/// for the condition on event sizes).
pub const fn disk_bound(max_bytes: u64) -> u64 {
    max_bytes.saturating_mul(2).saturating_add(FIXED_OVERHEAD)
}

/// Bytes written to disk for one event of `event_len` bytes that is pushed and later
/// acknowledged in a batch of `ack_batch` events, compaction aside: its Put record, its share
/// of the Remove record. For the flash-wear figure of the benchmarks (SPEC §10).
pub const fn write_cost_per_event(event_len: u64, ack_batch: u64) -> u64 {
    let batch = if ack_batch == 0 { 1 } else { ack_batch };
    PUT_OVERHEAD + event_len + REMOVE_SEQ_BYTES + REMOVE_BASE_BYTES.div_ceil(batch)
}

/// The cache. One per directory (the agent's data-directory lock guarantees it).
///
/// Not `Clone`; dropping it without [`Cache::close`] is a crash as far as the files are
/// concerned, and that is safe.
#[derive(Debug)]
pub struct Cache {
    log: SegmentLog,
    max_bytes: u64,
    queues: [QueueState; 2],
    next_seq: u64,
    /// Records that failed to write (disk full), retried in front of the next write.
    pending: Pending,
    /// The first problem met on the side (compaction), handed out with the next outcome.
    side_error: Option<CacheError>,
    /// The counter slot (space reserved at open for drop counts while the disk is full);
    /// `None` if it could not be created (then such counts live in memory only).
    slot: Option<Slot>,
    /// The pipeline's carry as the slot holds it now.
    carry: Carry,
    /// The carry read at open, until the pipeline takes it.
    carried: Carry,
    /// The counters as the files held them at open (the log's records and the slot's drops:
    /// what the previous run had counted), before the open's own evictions and repairs.
    recovered: CacheCounters,
}

#[derive(Debug, Default)]
struct QueueState {
    /// By seq: push order, which is also the order entries return to when unpinned.
    entries: BTreeMap<u64, Entry>,
    /// Sum of cached event lengths.
    used: u64,
    /// Sum of pinned event lengths (those cannot be evicted).
    pinned: u64,
    totals: Totals,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    len: u32,
    pinned: bool,
    enqueued_ms: u64,
    at: Location,
}

impl Entry {
    fn record_bytes(&self) -> u64 {
        PUT_OVERHEAD + u64::from(self.len)
    }
}

#[derive(Debug, Default)]
struct Pending {
    removes: Vec<(Removal, u64)>,
    drops: [DropCounts; 2],
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.removes.is_empty() && self.drops.iter().all(|d| d.total() == 0)
    }

    fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut kinds: Vec<Removal> = Vec::new();
        for (removal, _) in &self.removes {
            if !kinds.contains(removal) {
                kinds.push(*removal);
            }
        }
        for kind in kinds {
            let seqs: Vec<u64> = self
                .removes
                .iter()
                .filter(|(r, _)| *r == kind)
                .map(|(_, seq)| *seq)
                .collect();
            format::encode_remove(&mut buf, kind, &seqs);
        }
        for queue in Queue::ALL {
            for (reason, n) in self.drops[queue.index()].iter() {
                if n > 0 {
                    format::encode_dropped(&mut buf, queue, reason, n);
                }
            }
        }
        buf
    }
}

impl Cache {
    /// Opens the cache in `dir` (created with mode 0700 if missing), replaying what is on
    /// disk, then evicting per policy if `max_bytes` is smaller than what is cached.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Cache, Recovery), CacheError> {
        Cache::open_with(dir, max_bytes, SEGMENT_BYTES)
    }

    /// [`Cache::open`] with another segment size (tests use small ones to get many segments).
    pub(crate) fn open_with(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Cache, Recovery), CacheError> {
        let mut replay = Replay::default();
        let (log, scan) = SegmentLog::open(dir, segment_bytes, |at, size, record| {
            replay.apply(at, size, record)
        })?;
        let (slot, slot_state, slot_error) = match Slot::open(dir) {
            Ok((slot, state)) => (Some(slot), state, None),
            Err(e) => (None, SlotState::default(), Some(e)),
        };
        let mut cache = Cache {
            log,
            max_bytes,
            queues: Default::default(),
            next_seq: 1,
            pending: Pending::default(),
            side_error: slot_error,
            slot,
            carry: Carry::default(),
            carried: slot_state.carry,
            recovered: CacheCounters::default(),
        };
        // Drops counted while the disk was full, which never reached the log: they count
        // unless a record was appended after them (then that record holds them).
        let mut slot_drops = 0;
        if slot_state.mark.is_some_and(|mark| replay.last_end <= mark) {
            for q in Queue::ALL {
                for (reason, n) in slot_state.drops[q.index()].iter() {
                    let totals = &mut replay.queues[q.index()].totals;
                    totals.collected = totals.collected.saturating_add(n);
                    totals.dropped.add(reason, n);
                    cache.pending.drops[q.index()].add(reason, n);
                    slot_drops += n;
                }
            }
        }
        cache.recovered = counters_of(&replay.queues);
        let lost_entries = replay.install(&mut cache);
        // Write them as log records now (or keep them in the slot while the disk is full),
        // and clear the carry, which the pipeline takes from here.
        if let Err(e) = cache.flush_pending() {
            cache.note(e);
        }
        cache.save_slot(Carry::default());
        let mut recovery = Recovery {
            slot_drops,
            entries: cache.queues.iter().map(|q| q.entries.len() as u64).sum(),
            torn_bytes: scan.torn_bytes,
            skipped_bytes: scan.skipped_bytes,
            lost_entries,
            segments: cache.log.segments().len(),
            ..Recovery::default()
        };
        let shrink = cache.enforce_bound();
        recovery.evicted = shrink.evicted;
        cache.make_room(0);
        recovery.error = shrink.error.or_else(|| cache.side_error.take());
        Ok((cache, recovery))
    }

    /// Caches an event (its exact bytes as they will appear in a message) in the queue of
    /// `priority`, evicting per policy if needed. `now_ms` is the caller's monotonic clock.
    /// Never panics; `Priority::Off` is a programmer error answered with a
    /// [`DropReason::PriorityOff`] drop that is not counted.
    pub fn push(&mut self, priority: Priority, event: impl AsRef<[u8]>, now_ms: u64) -> PushOutcome {
        let event = event.as_ref();
        let Some(queue) = Queue::from_priority(priority) else {
            return PushOutcome::Dropped {
                reason: DropReason::PriorityOff,
                evicted: Vec::new(),
                error: None,
            };
        };
        let len = event.len() as u64;
        if len > self.max_bytes || len > MAX_EVENT_BYTES {
            let error = self.drop_incoming(queue, DropReason::TooLarge);
            return PushOutcome::Dropped {
                reason: DropReason::TooLarge,
                evicted: Vec::new(),
                error,
            };
        }
        let Some(victims) = self.plan_room(queue, len) else {
            let error = self.drop_incoming(queue, DropReason::CacheFull);
            return PushOutcome::Dropped {
                reason: DropReason::CacheFull,
                evicted: Vec::new(),
                error,
            };
        };

        let mut evicted = Vec::new();
        if !victims.is_empty() {
            // The Remove goes to disk first: if it cannot be written, nothing is evicted for
            // an event that cannot be stored either.
            let seqs: Vec<u64> = victims.iter().map(|(_, seq)| *seq).collect();
            let mut buf = Vec::new();
            format::encode_remove(&mut buf, Removal::Dropped(DropReason::Evicted), &seqs);
            if let Err(e) = self.append(&buf) {
                let reason = e.drop_reason();
                self.count_unwritten_drop(queue, reason);
                return PushOutcome::Dropped {
                    reason,
                    evicted,
                    error: Some(e),
                };
            }
            evicted = self.remove_in_memory(&victims, Removal::Dropped(DropReason::Evicted));
        }

        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        let mut buf = Vec::with_capacity(PUT_OVERHEAD as usize + event.len());
        format::encode_put(&mut buf, seq, queue, event);
        match self.append(&buf) {
            Ok(at) => PushOutcome::Stored {
                id: self.take_in(queue, seq, len, at, now_ms),
                evicted,
                error: self.side_error.take(),
            },
            Err(e) => {
                let reason = e.drop_reason();
                self.count_unwritten_drop(queue, reason);
                PushOutcome::Dropped {
                    reason,
                    evicted,
                    error: Some(e),
                }
            }
        }
    }

    /// Caches several events, in order, with as few writes as the bounds allow: consecutive
    /// events that fit without evicting anything go to disk as one append of up to a quarter
    /// segment (their Put records back to back, so a crash keeps a prefix of them, as single
    /// pushes would); any other event goes through [`Cache::push`]. One outcome per event, in
    /// order, exactly as `push` would have given them.
    pub fn push_batch(&mut self, events: &[(Priority, Vec<u8>)], now_ms: u64) -> Vec<PushOutcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        let limit = (self.log.segment_bytes() / 4).max(1);
        let mut i = 0;
        while i < events.len() {
            let run = self.batchable_run(&events[i..], limit);
            if run < 2 {
                let (priority, bytes) = &events[i];
                outcomes.push(self.push(*priority, bytes, now_ms));
                i += 1;
                continue;
            }
            let slice = &events[i..i + run];
            match self.append_puts(slice, now_ms) {
                Some(stored) => outcomes.extend(stored),
                // The append was rolled back: each event on its own, so each failure is
                // counted and explained exactly as a single push would.
                None => {
                    for (priority, bytes) in slice {
                        outcomes.push(self.push(*priority, bytes, now_ms));
                    }
                }
            }
            i += run;
        }
        outcomes
    }

    /// How many events from the start of `events` can be stored as one append: each has a
    /// queue and a valid size, together they fit in the cache without evictions and their
    /// records in `limit` bytes.
    fn batchable_run(&self, events: &[(Priority, Vec<u8>)], limit: u64) -> usize {
        let room = self.max_bytes.saturating_sub(self.used_bytes());
        let (mut bytes, mut records) = (0u64, 0u64);
        for (n, (priority, event)) in events.iter().enumerate() {
            let len = event.len() as u64;
            if Queue::from_priority(*priority).is_none() || len > MAX_EVENT_BYTES {
                return n;
            }
            bytes += len;
            records += PUT_OVERHEAD + len;
            if bytes > room || records > limit {
                return n;
            }
        }
        events.len()
    }

    /// Writes the Put records of `events` (checked by [`Cache::batchable_run`]) with one
    /// append and takes them into the queues. `None` if the append failed (nothing stored).
    fn append_puts(&mut self, events: &[(Priority, Vec<u8>)], now_ms: u64) -> Option<Vec<PushOutcome>> {
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(events.len());
        let mut seq = self.next_seq;
        for (priority, event) in events {
            let queue = Queue::from_priority(*priority)?;
            placed.push((queue, seq, buf.len() as u64, event.len() as u64));
            format::encode_put(&mut buf, seq, queue, event);
            seq = seq.saturating_add(1);
        }
        // On failure the single pushes that follow meet (and report) the same error.
        let at = self.append(&buf).ok()?;
        self.next_seq = seq;
        let mut outcomes = Vec::with_capacity(placed.len());
        for (queue, seq, offset, len) in placed {
            let at = Location {
                segment: at.segment,
                offset: at.offset + offset,
            };
            outcomes.push(PushOutcome::Stored {
                id: self.take_in(queue, seq, len, at, now_ms),
                evicted: Vec::new(),
                error: self.side_error.take(),
            });
        }
        Some(outcomes)
    }

    /// Takes a written Put of `len` event bytes at `at` into its queue and its segment's
    /// accounting. `len <= MAX_EVENT_BYTES`: the callers checked it.
    fn take_in(&mut self, queue: Queue, seq: u64, len: u64, at: Location, now_ms: u64) -> EntryId {
        let entry = Entry {
            len: u32::try_from(len).unwrap_or(u32::MAX),
            pinned: false,
            enqueued_ms: now_ms,
            at,
        };
        if let Some(meta) = self.log.meta_mut(at.segment) {
            meta.live += entry.record_bytes();
            meta.puts += entry.record_bytes();
        }
        let q = &mut self.queues[queue.index()];
        q.entries.insert(seq, entry);
        q.used += len;
        bump(&mut q.totals.collected);
        EntryId(seq)
    }

    /// Counts `n` events of a queue that were dropped before they reached the cache (lost by
    /// a collector, an item too large for any message), so the cumulative counters hold
    /// every drop: `collected` and `dropped` both grow by `n`. Written as a Dropped record;
    /// while the disk is full, kept in the reserved slot. `Priority::Off` and `n == 0` are
    /// ignored.
    pub fn count_dropped(
        &mut self,
        priority: Priority,
        reason: DropReason,
        n: u64,
    ) -> Result<(), CacheError> {
        let Some(queue) = Queue::from_priority(priority) else {
            return Ok(());
        };
        if n == 0 || reason.index().is_none() {
            return Ok(());
        }
        let totals = &mut self.queues[queue.index()].totals;
        totals.collected = totals.collected.saturating_add(n);
        totals.dropped.add(reason, n);
        self.pending.drops[queue.index()].add(reason, n);
        self.persist_pending()?;
        match self.side_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The `enqueued_ms` of the oldest unpinned entry of a queue (0 for one reloaded after a
    /// restart), for the send timers. `None` if the queue has no unpinned entry.
    pub fn oldest_ms(&self, priority: Priority) -> Option<u64> {
        self.unpinned(priority).next().map(|e| e.enqueued_ms)
    }

    /// Every entry of a queue, oldest first, pinned ones included.
    pub fn entries(&self, priority: Priority) -> impl Iterator<Item = EntryRef> + '_ {
        Queue::from_priority(priority)
            .map(|q| &self.queues[q.index()].entries)
            .into_iter()
            .flatten()
            .map(|(&seq, e)| EntryRef {
                id: EntryId(seq),
                len: u64::from(e.len),
                enqueued_ms: e.enqueued_ms,
                pinned: e.pinned,
            })
    }

    /// The unpinned entries of a queue, oldest first: what a message may take.
    pub fn unpinned(&self, priority: Priority) -> impl Iterator<Item = EntryRef> + '_ {
        self.entries(priority).filter(|e| !e.pinned)
    }

    /// The bytes of a cached entry (one `pread`). If its record is damaged the entry is
    /// dropped, counted as [`DropReason::Unreadable`], and [`CacheError::Unreadable`] returned,
    /// so a queue never stalls on it; another IO error leaves the entry in place (treat it
    /// like a failed send).
    pub fn read(&mut self, id: EntryId) -> Result<Vec<u8>, CacheError> {
        let Some((queue, entry)) = self.find(id.0) else {
            return Err(CacheError::UnknownEntry(id));
        };
        match self.log.read_at(entry.at, entry.record_bytes()) {
            Ok(mut buf) => match check_put(&buf, id.0, entry.len) {
                Ok(()) => {
                    buf.drain(..PUT_OVERHEAD as usize);
                    Ok(buf)
                }
                Err(why) => Err(self.drop_unreadable(queue, id.0, why)),
            },
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.drop_unreadable(queue, id.0, "record past the end of the file"))
            }
            Err(source) => Err(CacheError::Io {
                path: self.log.path(entry.at.segment),
                op: "read",
                source,
            }),
        }
    }

    /// Pins entries for a send: they cannot be evicted and leave [`Cache::unpinned`]. Unknown
    /// or already pinned ids are ignored.
    pub fn pin(&mut self, ids: &[EntryId]) {
        for id in ids {
            if let Some(q) = self.queue_of(id.0) {
                let state = &mut self.queues[q.index()];
                if let Some(e) = state.entries.get_mut(&id.0) {
                    if !e.pinned {
                        e.pinned = true;
                        state.pinned += u64::from(e.len);
                    }
                }
            }
        }
    }

    /// Removes sent entries, counting them as sent. Unknown ids are ignored (an ack repeated
    /// after a retry is harmless). An error means the removal is effective in memory but its
    /// record is not yet on disk (retried with the next write; a crash before that resends
    /// those events) or that compaction met a problem; log it.
    pub fn ack(&mut self, ids: &[EntryId]) -> Result<(), CacheError> {
        let victims: Vec<(Queue, u64)> = ids
            .iter()
            .filter_map(|id| self.queue_of(id.0).map(|q| (q, id.0)))
            .collect();
        if !victims.is_empty() {
            self.remove_in_memory(&victims, Removal::Sent);
            let seqs: Vec<u64> = victims.iter().map(|(_, seq)| *seq).collect();
            self.persist_removal(&seqs, Removal::Sent)?;
        }
        match self.side_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes entries that can never be sent (e.g. larger than a message after
    /// `maxMessageSizeInBytes` shrank), counting them as dropped for `reason`, so that no queue
    /// stalls behind them. Unknown ids are ignored.
    pub fn discard(&mut self, ids: &[EntryId], reason: DropReason) -> Result<(), CacheError> {
        if reason.index().is_none() {
            return Ok(());
        }
        let victims: Vec<(Queue, u64)> = ids
            .iter()
            .filter_map(|id| self.queue_of(id.0).map(|q| (q, id.0)))
            .collect();
        if !victims.is_empty() {
            self.remove_in_memory(&victims, Removal::Dropped(reason));
            let seqs: Vec<u64> = victims.iter().map(|(_, seq)| *seq).collect();
            self.persist_removal(&seqs, Removal::Dropped(reason))?;
        }
        match self.side_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Returns pinned entries to their queue after a failed send, at their old position; not
    /// a drop. If `max_bytes` shrank meanwhile, evicts per policy to restore the bound.
    pub fn unpin(&mut self, ids: &[EntryId]) -> Evictions {
        for id in ids {
            if let Some(q) = self.queue_of(id.0) {
                let state = &mut self.queues[q.index()];
                if let Some(e) = state.entries.get_mut(&id.0) {
                    if e.pinned {
                        e.pinned = false;
                        state.pinned -= u64::from(e.len);
                    }
                }
            }
        }
        self.enforce_bound()
    }

    /// Changes the byte bound (a new configuration). Shrinking evicts per policy (oldest Low
    /// first, then oldest High; pinned entries stay) and compacts the files to the new disk
    /// bound; growing takes effect at once.
    pub fn set_max_bytes(&mut self, max_bytes: u64) -> Evictions {
        self.max_bytes = max_bytes;
        let mut out = self.enforce_bound();
        self.make_room(0);
        if out.error.is_none() {
            out.error = self.side_error.take();
        }
        out
    }

    /// The byte bound in force.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Sum of cached event lengths, both queues, pinned included.
    pub fn used_bytes(&self) -> u64 {
        self.queues.iter().map(|q| q.used).sum()
    }

    /// The cumulative counters of both queues.
    pub fn counters(&self) -> CacheCounters {
        counters_of(&self.queues)
    }

    /// The cumulative counters as the files held them when the cache was opened: what the
    /// previous run had counted (drops recovered from the slot included), before the open
    /// evicted for a smaller `max_bytes` or counted entries whose record was missing. The
    /// pipeline's first statistics period starts from them, so those drops are in it.
    pub fn counters_at_open(&self) -> CacheCounters {
        self.recovered
    }

    /// Writes any deferred record and fdatasyncs the head segment: after it returns, what
    /// the cache holds survives a power loss. The pipeline calls it periodically.
    pub fn sync(&mut self) -> Result<(), CacheError> {
        let flushed = self.flush_pending();
        if flushed.is_ok() && self.slot.as_ref().is_some_and(Slot::is_armed) {
            // The drops it held are in the log now; only the carry stays.
            self.save_slot(self.carry);
        }
        if let Some(slot) = self.slot.as_mut() {
            slot.sync()?;
        }
        flushed?;
        self.log.sync()
    }

    /// A clean shutdown: [`Cache::sync`], then close the files.
    pub fn close(mut self) -> Result<(), CacheError> {
        self.sync()
    }

    /// Total size of the cache's files: segments and the counter slot (bounded by
    /// [`disk_bound`]).
    pub fn disk_bytes(&self) -> u64 {
        self.log.disk_bytes() + self.slot.as_ref().map_or(0, |_| SLOT_FILE_BYTES)
    }

    /// Bytes written to disk since open, compaction included (flash wear, SPEC §10).
    pub fn bytes_written(&self) -> u64 {
        self.log.bytes_written()
    }

    // ----- internals -----

    fn find(&self, seq: u64) -> Option<(Queue, Entry)> {
        Queue::ALL
            .into_iter()
            .find_map(|q| self.queues[q.index()].entries.get(&seq).map(|e| (q, *e)))
    }

    fn queue_of(&self, seq: u64) -> Option<Queue> {
        self.find(seq).map(|(q, _)| q)
    }

    /// The unpinned entries to evict so an event of `len` bytes fits in `incoming`'s queue:
    /// oldest Low first, then (for a High event only) oldest High. `None` if even all of them
    /// would not make room.
    fn plan_room(&self, incoming: Queue, len: u64) -> Option<Vec<(Queue, u64)>> {
        let need = (self.used_bytes() + len).saturating_sub(self.max_bytes);
        if need == 0 {
            return Some(Vec::new());
        }
        let order: &[Queue] = match incoming {
            Queue::Low => &[Queue::Low],
            Queue::High => &[Queue::Low, Queue::High],
        };
        let available: u64 = order
            .iter()
            .map(|q| {
                let s = &self.queues[q.index()];
                s.used - s.pinned
            })
            .sum();
        if available < need {
            return None;
        }
        Some(self.oldest_unpinned(order, need))
    }

    /// Oldest unpinned entries of `order`'s queues, in that order, until `need` bytes.
    fn oldest_unpinned(&self, order: &[Queue], need: u64) -> Vec<(Queue, u64)> {
        let mut victims = Vec::new();
        let mut freed = 0u64;
        for &q in order {
            for (&seq, e) in &self.queues[q.index()].entries {
                if freed >= need {
                    return victims;
                }
                if !e.pinned {
                    victims.push((q, seq));
                    freed += u64::from(e.len);
                }
            }
        }
        victims
    }

    /// Evicts until the cached bytes are within `max_bytes` (as far as unpinned entries
    /// allow), in memory at once, on disk as soon as a write succeeds.
    fn enforce_bound(&mut self) -> Evictions {
        let need = self.used_bytes().saturating_sub(self.max_bytes);
        if need == 0 {
            return Evictions::default();
        }
        let victims = self.oldest_unpinned(&[Queue::Low, Queue::High], need);
        let evicted = self.remove_in_memory(&victims, Removal::Dropped(DropReason::Evicted));
        let seqs: Vec<u64> = victims.iter().map(|(_, seq)| *seq).collect();
        let error = self
            .persist_removal(&seqs, Removal::Dropped(DropReason::Evicted))
            .err();
        Evictions { evicted, error }
    }

    /// Removes entries from the queues and counts them.
    fn remove_in_memory(&mut self, victims: &[(Queue, u64)], removal: Removal) -> Vec<Eviction> {
        let mut out = Vec::with_capacity(victims.len());
        for &(q, seq) in victims {
            let state = &mut self.queues[q.index()];
            let Some(e) = state.entries.remove(&seq) else {
                continue;
            };
            state.used -= u64::from(e.len);
            if e.pinned {
                state.pinned -= u64::from(e.len);
            }
            match removal {
                Removal::Sent => bump(&mut state.totals.sent),
                Removal::Dropped(reason) => state.totals.dropped.add(reason, 1),
            }
            if let Some(meta) = self.log.meta_mut(e.at.segment) {
                meta.live = meta.live.saturating_sub(e.record_bytes());
            }
            out.push(Eviction {
                id: EntryId(seq),
                priority: q.priority(),
                len: u64::from(e.len),
            });
        }
        out
    }

    /// Writes a Remove record for entries already removed in memory; on failure the record
    /// stays deferred to the next write.
    fn persist_removal(&mut self, seqs: &[u64], removal: Removal) -> Result<(), CacheError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.pending
            .removes
            .extend(seqs.iter().map(|seq| (removal, *seq)));
        self.persist_pending()
    }

    /// Counts an incoming event that is not stored and records the drop on disk.
    fn drop_incoming(&mut self, queue: Queue, reason: DropReason) -> Option<CacheError> {
        let totals = &mut self.queues[queue.index()].totals;
        bump(&mut totals.collected);
        totals.dropped.add(reason, 1);
        self.pending.drops[queue.index()].add(reason, 1);
        match self.persist_pending() {
            Ok(()) => self.side_error.take(),
            Err(e) => Some(e),
        }
    }

    /// Writes the records of changes already made in memory (compacting first if needed).
    ///
    /// Such records always go through `pending`: compaction writes pending records before its
    /// checkpoint, so a checkpoint (whose counters include these changes) never precedes
    /// them in the log; replay would count them twice otherwise.
    fn persist_pending(&mut self) -> Result<(), CacheError> {
        let size = self.pending.encode().len() as u64;
        self.make_room(size);
        self.flush_pending()
    }

    /// Counts an incoming event whose write just failed; its Dropped record waits for the
    /// next write (writing it now would most likely fail the same way). A crash before then
    /// loses the count from both `collected` and `dropped`, so the counters stay balanced.
    fn count_unwritten_drop(&mut self, queue: Queue, reason: DropReason) {
        let totals = &mut self.queues[queue.index()].totals;
        bump(&mut totals.collected);
        totals.dropped.add(reason, 1);
        self.pending.drops[queue.index()].add(reason, 1);
        // The log has no room for it: the slot's reserved blocks do.
        self.save_slot(self.carry);
    }

    /// Writes the drops not yet in the log, the end of the log and `carry` to the slot (an
    /// empty state disarms it). Failures are noted: the counts stay in memory.
    fn save_slot(&mut self, carry: Carry) {
        self.carry = carry;
        let state = SlotState {
            mark: Some(self.log.end()),
            drops: self.pending.drops,
            carry,
        };
        let state = if state.drops.iter().all(|d| d.total() == 0) {
            SlotState { mark: None, ..state }
        } else {
            state
        };
        if let Some(slot) = self.slot.as_mut() {
            if let Err(e) = slot.write(&state) {
                self.note(e);
            }
        }
    }

    /// The pipeline's carry read at open (zero if none), and forgets it.
    pub fn take_carry(&mut self) -> Carry {
        std::mem::take(&mut self.carried)
    }

    /// Keeps `carry` (the pipeline's numbers that could not be stored as an event) in the
    /// reserved slot for the next open, which hands it back through [`Cache::take_carry`]. A
    /// zero carry clears it. Durable once [`Cache::sync`] or [`Cache::close`] returns.
    pub fn set_carry(&mut self, carry: Carry) -> Result<(), CacheError> {
        self.save_slot(carry);
        match self.side_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Drops an entry whose record is damaged; returns the error to report.
    fn drop_unreadable(&mut self, queue: Queue, seq: u64, why: &'static str) -> CacheError {
        let at = self.find(seq).map(|(_, e)| e.at);
        let removal = Removal::Dropped(DropReason::Unreadable);
        self.remove_in_memory(&[(queue, seq)], removal);
        self.pending.removes.push((removal, seq));
        if let Err(e) = self.flush_pending() {
            self.note(e);
        }
        let at = at.unwrap_or(Location {
            segment: self.log.head_no(),
            offset: 0,
        });
        CacheError::Unreadable {
            path: self.log.path(at.segment),
            id: EntryId(seq),
            offset: at.offset,
            why,
        }
    }

    fn note(&mut self, e: CacheError) {
        if self.side_error.is_none() {
            self.side_error = Some(e);
        }
    }

    /// Writes deferred records, as their own append.
    fn flush_pending(&mut self) -> Result<(), CacheError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let buf = self.pending.encode();
        if let Err(e) = self.log.append(&buf) {
            if self.pending.drops.iter().any(|d| d.total() > 0) {
                self.save_slot(self.carry);
            }
            return Err(e);
        }
        self.pending = Pending::default();
        Ok(())
    }

    /// Deferred records first, then `buf`; no compaction (compaction itself uses this).
    fn write(&mut self, buf: &[u8]) -> Result<Location, CacheError> {
        self.flush_pending()?;
        self.log.append(buf)
    }

    /// Compacts as needed to keep the disk bound, then writes.
    fn append(&mut self, buf: &[u8]) -> Result<Location, CacheError> {
        self.make_room(buf.len() as u64);
        self.write(buf)
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            next_seq: self.next_seq,
            totals: [
                self.queues[Queue::Low.index()].totals,
                self.queues[Queue::High.index()].totals,
            ],
        }
    }

    /// Compacts segments until `incoming` more bytes fit within `2 * max_bytes`, or nothing
    /// more can be gained. Problems are noted, not returned: the write goes ahead anyway.
    fn make_room(&mut self, incoming: u64) {
        // Pinned events above a shrunk max_bytes are live data that cannot go yet; counting
        // them keeps compaction from copying them around for nothing.
        let limit = self.max_bytes.max(self.used_bytes()).saturating_mul(2);
        // Each step deletes a segment that existed at the start (or one the steps created,
        // at most a few), so this bounds the work even if steps gain nothing.
        let steps = self.log.segments().len() + 4;
        for _ in 0..steps {
            if self.log.disk_bytes().saturating_add(incoming) <= limit {
                return;
            }
            let Some(no) = self.pick_segment() else {
                return;
            };
            if let Err(e) = self.compact(no) {
                self.note(e);
                return;
            }
        }
    }

    /// The segment to compact: the one with the most garbage among those that may be
    /// deleted (up to and including the first that holds a dead Put), if compacting it gains
    /// more than the checkpoint and headers it costs; otherwise that first dead-Put holder, if
    /// it hides enough garbage behind it.
    fn pick_segment(&self) -> Option<u32> {
        let worth = CHECKPOINT_BYTES + 2 * HEADER_BYTES;
        let mut best: Option<(u32, u64)> = None;
        let mut blocker = None;
        let mut behind = 0u64;
        for (&no, meta) in self.log.segments() {
            if blocker.is_some() {
                behind += meta.garbage();
                continue;
            }
            let garbage = meta.garbage();
            let better = match best {
                Some((_, g)) => garbage > g,
                None => true,
            };
            if better {
                best = Some((no, garbage));
            }
            if meta.holds_dead_puts() {
                blocker = Some(no);
            }
        }
        match best {
            Some((no, garbage)) if garbage > worth => Some(no),
            _ => blocker.filter(|_| behind > worth),
        }
    }

    /// One compaction step: copy segment `no`'s live Puts to the head, write a checkpoint,
    /// fdatasync, delete the segment. Interrupted anywhere, the log stays valid.
    fn compact(&mut self, no: u32) -> Result<(), CacheError> {
        self.flush_pending()?;
        if no == self.log.head_no() {
            self.log.rotate()?;
        }
        let mut movers: Vec<(Queue, u64)> = Queue::ALL
            .into_iter()
            .flat_map(|q| {
                self.queues[q.index()]
                    .entries
                    .iter()
                    .filter(move |(_, e)| e.at.segment == no)
                    .map(move |(&seq, _)| (q, seq))
            })
            .collect();
        movers.sort_unstable_by_key(|(_, seq)| *seq);
        for (q, seq) in movers {
            let Some(entry) = self.queues[q.index()].entries.get(&seq).copied() else {
                continue;
            };
            let size = entry.record_bytes();
            let buf = match self.log.read_at(entry.at, size) {
                Ok(buf) => match check_put(&buf, seq, entry.len) {
                    Ok(()) => buf,
                    Err(why) => {
                        let e = self.drop_unreadable(q, seq, why);
                        self.note(e);
                        continue;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    let e = self.drop_unreadable(q, seq, "record past the end of the file");
                    self.note(e);
                    continue;
                }
                Err(source) => {
                    return Err(CacheError::Io {
                        path: self.log.path(no),
                        op: "read",
                        source,
                    })
                }
            };
            let at = self.write(&buf)?;
            if let Some(meta) = self.log.meta_mut(entry.at.segment) {
                meta.live = meta.live.saturating_sub(size);
            }
            if let Some(meta) = self.log.meta_mut(at.segment) {
                meta.live += size;
                meta.puts += size;
            }
            if let Some(e) = self.queues[q.index()].entries.get_mut(&seq) {
                e.at = at;
            }
        }
        let mut buf = Vec::with_capacity(CHECKPOINT_BYTES as usize);
        format::encode_checkpoint(&mut buf, &self.checkpoint());
        self.write(&buf)?;
        // The copies must be durable before their originals go (power loss).
        self.log.sync()?;
        self.log.delete(no)
    }

    /// Test hook: every log write fails with `errno` (ENOSPC: a full disk) until `None`.
    #[cfg(test)]
    pub(crate) fn fail_writes(&mut self, errno: Option<i32>) {
        self.log.fail_writes = errno;
    }

    /// The highest disk footprint since the last call (tests check compaction transients).
    #[cfg(test)]
    fn take_peak_disk_bytes(&mut self) -> u64 {
        self.log.take_peak()
    }
}

/// The counters of both queues, as [`Cache::counters`] hands them out.
fn counters_of(queues: &[QueueState; 2]) -> CacheCounters {
    let view = |q: &QueueState| QueueCounters {
        collected: q.totals.collected,
        sent: q.totals.sent,
        dropped: q.totals.dropped,
        cached: q.entries.len() as u64,
        cached_bytes: q.used,
    };
    CacheCounters {
        high: view(&queues[Queue::High.index()]),
        low: view(&queues[Queue::Low.index()]),
    }
}

/// Counters come back from disk; saturating keeps any file content from causing an
/// overflow panic.
fn bump(n: &mut u64) {
    *n = n.saturating_add(1);
}

/// Seqs at or above this are treated as damage at open: no cache allocates them (2^62 pushes
/// at a million a second take 146,000 years), and keeping `next_seq` far from `u64::MAX`
/// means it never saturates into reuse.
const MAX_SEQ: u64 = 1 << 62;

/// Checks that `buf` is exactly the Put record of `seq` with an event of `len` bytes.
fn check_put(buf: &[u8], seq: u64, len: u32) -> Result<(), &'static str> {
    match format::decode(buf)? {
        (Record::Put { seq: s, event, .. }, size)
            if s == seq && event.len() as u64 == u64::from(len) && size == buf.len() =>
        {
            Ok(())
        }
        _ => Err("record is not this entry's put"),
    }
}

/// The state rebuilt from the records at open.
#[derive(Default)]
struct Replay {
    queues: [QueueState; 2],
    next_seq: u64,
    /// Per segment: (live Put bytes, all Put bytes).
    puts: BTreeMap<u32, (u64, u64)>,
    /// Where the last valid record ends (segment 0: no record).
    last_end: Location,
}

impl Replay {
    fn apply(&mut self, at: Location, size: u64, record: Record<'_>) {
        self.last_end = self.last_end.max(Location {
            segment: at.segment,
            offset: at.offset.saturating_add(size),
        });
        match record {
            Record::Put { seq, queue, event } => {
                self.puts.entry(at.segment).or_default().1 += size;
                if seq >= MAX_SEQ {
                    return;
                }
                self.next_seq = self.next_seq.max(seq + 1);
                let Ok(len) = u32::try_from(event.len()) else {
                    return;
                };
                let [low, high] = &mut self.queues;
                let existing = low.entries.get_mut(&seq).or(high.entries.get_mut(&seq));
                if let Some(e) = existing {
                    // A copy made by compaction: the newest copy is the entry's home; the
                    // older one is now a dead Put in its segment. (Differing lengths would
                    // mean damage; keep the first.)
                    if e.len == len {
                        let old = e.at.segment;
                        e.at = at;
                        if let Some(p) = self.puts.get_mut(&old) {
                            p.0 = p.0.saturating_sub(size);
                        }
                        self.puts.entry(at.segment).or_default().0 += size;
                    }
                    return;
                }
                let state = &mut self.queues[queue.index()];
                state.entries.insert(
                    seq,
                    Entry {
                        len,
                        pinned: false,
                        enqueued_ms: 0,
                        at,
                    },
                );
                state.used += u64::from(len);
                bump(&mut state.totals.collected);
                self.puts.entry(at.segment).or_default().0 += size;
            }
            Record::Remove { removal, seqs } => {
                for seq in seqs.iter() {
                    for state in &mut self.queues {
                        let Some(e) = state.entries.remove(&seq) else {
                            continue;
                        };
                        state.used -= u64::from(e.len);
                        match removal {
                            Removal::Sent => bump(&mut state.totals.sent),
                            Removal::Dropped(reason) => state.totals.dropped.add(reason, 1),
                        }
                        if let Some(p) = self.puts.get_mut(&e.at.segment) {
                            p.0 = p.0.saturating_sub(e.record_bytes());
                        }
                        break;
                    }
                }
            }
            Record::Dropped { queue, reason, count } => {
                let totals = &mut self.queues[queue.index()].totals;
                totals.collected = totals.collected.saturating_add(count);
                totals.dropped.add(reason, count);
            }
            Record::Checkpoint(cp) => {
                for q in Queue::ALL {
                    self.queues[q.index()].totals = cp.totals[q.index()];
                }
                self.next_seq = self.next_seq.max(cp.next_seq.min(MAX_SEQ));
            }
        }
    }

    /// Moves the rebuilt state into the cache, balancing the counters (only damage to older
    /// segments can unbalance them). Returns the entries counted as lost.
    fn install(self, cache: &mut Cache) -> u64 {
        for (&no, &(live, puts)) in &self.puts {
            if let Some(meta) = cache.log.meta_mut(no) {
                meta.live = live;
                meta.puts = puts;
            }
        }
        cache.queues = self.queues;
        cache.next_seq = self.next_seq.max(1);
        let mut lost = 0;
        let mut repaired = false;
        for state in &mut cache.queues {
            let t = &mut state.totals;
            let accounted = t
                .sent
                .saturating_add(t.dropped.total())
                .saturating_add(state.entries.len() as u64);
            if t.collected > accounted {
                let missing = t.collected - accounted;
                t.dropped.add(DropReason::Unreadable, missing);
                lost += missing;
                repaired = true;
            } else if t.collected < accounted {
                t.collected = accounted;
                repaired = true;
            }
        }
        if repaired {
            // Persist the repair so the next open does not report it again.
            let mut buf = Vec::with_capacity(CHECKPOINT_BYTES as usize);
            format::encode_checkpoint(&mut buf, &cache.checkpoint());
            if let Err(e) = cache.append(&buf) {
                cache.note(e);
            }
        }
        lost
    }
}
