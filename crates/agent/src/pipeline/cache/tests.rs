//! Unit tests of the cache: each eviction rule, pinning, counters across crashes, torn
//! tails at every offset, damaged and foreign files, compaction bounds, disk-full handling.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::format::{self, HEADER_BYTES};
use super::log::segment_name;
use super::*;
use twinguard_core::event::Priority::{High, Low, Off};

/// A fresh directory under the system temp dir, removed on drop (no tempfile crate here).
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "twinguard-cache-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `len` bytes of compact-JSON-looking content, distinct per `tag`.
pub(super) fn event(len: usize, tag: u64) -> Vec<u8> {
    let mut s = format!("{{\"n\":{tag},\"p\":\"");
    while s.len() + 2 < len {
        s.push(char::from(b'a' + (tag % 26) as u8));
    }
    s.push_str("\"}");
    let mut b = s.into_bytes();
    b.truncate(len);
    while b.len() < len {
        b.push(b'x');
    }
    b
}

fn open(dir: &TempDir, max: u64) -> Cache {
    Cache::open(dir.path(), max).unwrap().0
}

fn stored(outcome: PushOutcome) -> (EntryId, Vec<Eviction>) {
    match outcome {
        PushOutcome::Stored { id, evicted, error } => {
            assert!(error.is_none(), "{error:?}");
            (id, evicted)
        }
        other => panic!("expected Stored, got {other:?}"),
    }
}

fn push(cache: &mut Cache, p: twinguard_core::event::Priority, len: usize, tag: u64) -> EntryId {
    stored(cache.push(p, event(len, tag), tag)).0
}

fn ids(cache: &Cache, p: twinguard_core::event::Priority) -> Vec<EntryId> {
    cache.entries(p).map(|e| e.id).collect()
}

fn evicted_ids(evicted: &[Eviction]) -> Vec<EntryId> {
    evicted.iter().map(|e| e.id).collect()
}

fn files_total(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn assert_balanced(cache: &Cache) {
    let c = cache.counters();
    assert!(c.high.is_balanced(), "{:?}", c.high);
    assert!(c.low.is_balanced(), "{:?}", c.low);
}

#[test]
fn push_read_and_order() {
    let dir = TempDir::new("basic");
    let mut c = open(&dir, 8192);
    let h1 = stored(c.push(High, event(100, 1), 5)).0;
    let l1 = stored(c.push(Low, event(200, 2), 6)).0;
    let h2 = stored(c.push(High, event(50, 3), 7)).0;
    assert!(h1 < l1 && l1 < h2);
    assert_eq!(ids(&c, High), vec![h1, h2]);
    assert_eq!(ids(&c, Low), vec![l1]);
    assert_eq!(c.oldest_ms(High), Some(5));
    assert_eq!(c.oldest_ms(Low), Some(6));
    assert_eq!(c.read(h1).unwrap(), event(100, 1));
    assert_eq!(c.read(l1).unwrap(), event(200, 2));
    assert_eq!(c.read(h2).unwrap(), event(50, 3));
    let counters = c.counters();
    assert_eq!(counters.high.collected, 2);
    assert_eq!(counters.high.cached_bytes, 150);
    assert_eq!(counters.low.cached, 1);
    assert_eq!(c.used_bytes(), 350);
    assert_balanced(&c);
    assert!(matches!(c.read(EntryId(999)), Err(CacheError::UnknownEntry(_))));
}

#[test]
fn low_event_evicts_the_oldest_low_events_first() {
    let dir = TempDir::new("low-evicts");
    let mut c = open(&dir, 8192);
    let l1 = push(&mut c, Low, 3000, 1);
    let l2 = push(&mut c, Low, 3000, 2);
    let h1 = push(&mut c, High, 1000, 3);
    let (l3, evicted) = stored(c.push(Low, event(2000, 4), 4));
    assert_eq!(evicted_ids(&evicted), vec![l1]);
    assert_eq!(evicted[0].priority, Low);
    assert_eq!(ids(&c, Low), vec![l2, l3]);
    assert_eq!(ids(&c, High), vec![h1]);
    assert_eq!(c.counters().low.dropped.get(DropReason::Evicted), 1);
    assert_balanced(&c);
}

#[test]
fn low_event_never_evicts_a_high_one() {
    let dir = TempDir::new("low-vs-high");
    let mut c = open(&dir, 8192);
    let h1 = push(&mut c, High, 4000, 1);
    let h2 = push(&mut c, High, 4000, 2);
    match c.push(Low, event(500, 3), 3) {
        PushOutcome::Dropped { reason, evicted, .. } => {
            assert_eq!(reason, DropReason::CacheFull);
            assert!(evicted.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&c, High), vec![h1, h2]);
    let low = c.counters().low;
    assert_eq!((low.collected, low.dropped.get(DropReason::CacheFull)), (1, 1));
    assert_balanced(&c);
}

#[test]
fn high_event_evicts_low_then_older_high() {
    let dir = TempDir::new("high-evicts");
    let mut c = open(&dir, 8192);
    let l1 = push(&mut c, Low, 2000, 1);
    let h1 = push(&mut c, High, 3000, 2);
    let l2 = push(&mut c, Low, 2000, 3);
    let h2 = push(&mut c, High, 1000, 4);
    let (h3, evicted) = stored(c.push(High, event(4000, 5), 5));
    assert_eq!(evicted_ids(&evicted), vec![l1, l2]);
    assert_eq!(ids(&c, High), vec![h1, h2, h3]);
    let (h4, evicted) = stored(c.push(High, event(5000, 6), 6));
    assert_eq!(evicted_ids(&evicted), vec![h1, h2, h3]);
    assert_eq!(ids(&c, High), vec![h4]);
    assert!(ids(&c, Low).is_empty());
    assert_eq!(c.counters().high.dropped.get(DropReason::Evicted), 3);
    assert_balanced(&c);
}

#[test]
fn too_large_is_dropped_and_exactly_max_fits() {
    let dir = TempDir::new("too-large");
    let mut c = open(&dir, 8192);
    push(&mut c, Low, 100, 1);
    match c.push(High, event(8193, 2), 2) {
        PushOutcome::Dropped { reason, .. } => assert_eq!(reason, DropReason::TooLarge),
        other => panic!("{other:?}"),
    }
    let (_, evicted) = stored(c.push(High, event(8192, 3), 3));
    assert_eq!(evicted.len(), 1);
    let high = c.counters().high;
    assert_eq!(high.dropped.get(DropReason::TooLarge), 1);
    assert_eq!(high.collected, 2);
    assert_balanced(&c);
}

#[test]
fn priority_off_is_refused_without_counting() {
    let dir = TempDir::new("off");
    let mut c = open(&dir, 8192);
    match c.push(Off, b"{}", 1) {
        PushOutcome::Dropped { reason, .. } => assert_eq!(reason, DropReason::PriorityOff),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.counters(), CacheCounters::default());
    assert_eq!(c.entries(Off).count(), 0);
    assert_eq!(c.oldest_ms(Off), None);
}

#[test]
fn pinned_events_count_and_cannot_be_evicted() {
    let dir = TempDir::new("pinned");
    let mut c = open(&dir, 8192);
    let h1 = push(&mut c, High, 4000, 1);
    let h2 = push(&mut c, High, 4000, 2);
    c.pin(&[h1, h2]);
    assert_eq!(c.unpinned(High).count(), 0);
    assert_eq!(c.oldest_ms(High), None);
    for p in [High, Low] {
        match c.push(p, event(1000, 3), 3) {
            PushOutcome::Dropped { reason, .. } => assert_eq!(reason, DropReason::CacheFull),
            other => panic!("{other:?}"),
        }
    }
    let none = c.unpin(&[h1]);
    assert!(none.evicted.is_empty());
    let (_, evicted) = stored(c.push(High, event(1000, 4), 4));
    assert_eq!(evicted_ids(&evicted), vec![h1]);
    assert_balanced(&c);
}

#[test]
fn ack_counts_sent_and_unpin_restores_position() {
    let dir = TempDir::new("ack-unpin");
    let mut c = open(&dir, 8192);
    let a = push(&mut c, Low, 100, 1);
    let b = push(&mut c, Low, 100, 2);
    let d = push(&mut c, Low, 100, 3);
    c.pin(&[a, b]);
    assert_eq!(c.unpinned(Low).map(|e| e.id).collect::<Vec<_>>(), vec![d]);
    assert_eq!(c.oldest_ms(Low), Some(3));
    assert!(c.unpin(&[a]).evicted.is_empty());
    assert_eq!(c.unpinned(Low).map(|e| e.id).collect::<Vec<_>>(), vec![a, d]);
    c.ack(&[b]).unwrap();
    // A repeated ack is harmless.
    c.ack(&[b]).unwrap();
    assert_eq!(ids(&c, Low), vec![a, d]);
    let low = c.counters().low;
    assert_eq!((low.sent, low.dropped.total(), low.cached), (1, 0, 2));
    assert_balanced(&c);
}

#[test]
fn shrinking_evicts_per_policy_and_growing_is_free() {
    let dir = TempDir::new("shrink");
    let mut c = open(&dir, 8192);
    let l1 = push(&mut c, Low, 3000, 1);
    let h1 = push(&mut c, High, 3000, 2);
    let l2 = push(&mut c, Low, 2000, 3);
    assert!(c.set_max_bytes(8192).evicted.is_empty());
    let out = c.set_max_bytes(4000);
    assert!(out.error.is_none());
    assert_eq!(evicted_ids(&out.evicted), vec![l1, l2]);
    assert_eq!(c.used_bytes(), 3000);
    let out = c.set_max_bytes(2000);
    assert_eq!(evicted_ids(&out.evicted), vec![h1]);
    assert!(c.disk_bytes() <= disk_bound(2000));
    assert!(c.set_max_bytes(100_000).evicted.is_empty());
    push(&mut c, High, 50_000, 4);
    assert_eq!(c.counters().low.dropped.get(DropReason::Evicted), 2);
    assert_balanced(&c);
}

#[test]
fn pinned_bytes_above_a_shrunk_bound_are_evicted_when_unpinned() {
    let dir = TempDir::new("shrink-pinned");
    let mut c = open(&dir, 8192);
    let h1 = push(&mut c, High, 3000, 1);
    c.pin(&[h1]);
    assert!(c.set_max_bytes(1000).evicted.is_empty());
    assert_eq!(c.used_bytes(), 3000);
    let out = c.unpin(&[h1]);
    assert_eq!(evicted_ids(&out.evicted), vec![h1]);
    assert_eq!(c.used_bytes(), 0);
    assert_balanced(&c);
}

#[test]
fn crash_keeps_entries_and_counters() {
    let dir = TempDir::new("crash");
    let mut c = open(&dir, 8192);
    let a = push(&mut c, High, 500, 1);
    let b = push(&mut c, Low, 3000, 2);
    let d = push(&mut c, Low, 3000, 3);
    let e = push(&mut c, Low, 3000, 4); // evicts b
    let _ = c.push(Low, event(9000, 5), 5); // too large
    c.pin(&[a, d]);
    c.ack(&[a]).unwrap();
    let before = c.counters();
    drop(c); // kill -9: no close
    let (mut c, rec) = Cache::open(dir.path(), 8192).unwrap();
    assert_eq!(rec.entries, 2);
    assert_eq!((rec.torn_bytes, rec.skipped_bytes, rec.lost_entries), (0, 0, 0));
    assert_eq!(c.counters(), before);
    assert_eq!(ids(&c, Low), vec![d, e]);
    assert!(c.entries(Low).all(|x| !x.pinned && x.enqueued_ms == 0));
    assert_eq!(c.oldest_ms(Low), Some(0));
    assert_eq!(c.read(d).unwrap(), event(3000, 3));
    let f = push(&mut c, High, 10, 6);
    assert!(f > e && f != b);
    assert_balanced(&c);
}

#[test]
fn reopen_with_a_smaller_bound_evicts() {
    let dir = TempDir::new("reopen-smaller");
    let mut c = open(&dir, 10_000);
    let a = push(&mut c, Low, 3000, 1);
    let b = push(&mut c, High, 3000, 2);
    let d = push(&mut c, Low, 3000, 3);
    c.close().unwrap();
    let (c, rec) = Cache::open(dir.path(), 8192).unwrap();
    assert_eq!(evicted_ids(&rec.evicted), vec![a]);
    assert_eq!(ids(&c, Low), vec![d]);
    assert_eq!(ids(&c, High), vec![b]);
    drop(c);
    let (c, rec) = Cache::open(dir.path(), 8192).unwrap();
    assert!(rec.evicted.is_empty());
    assert_eq!(c.counters().low.dropped.get(DropReason::Evicted), 1);
    assert_balanced(&c);
}

/// Copies the cache directory (a crashed cache's files) into a fresh one.
fn copy_dir(from: &Path, tag: &str) -> TempDir {
    let to = TempDir::new(tag);
    fs::create_dir_all(to.path()).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

/// Cuts the newest segment at every offset inside its last record and reopens; `check`
/// sees the reopened cache and whether the cut left the record whole.
fn cut_last_record(dir: &Path, last_record: u64, check: impl Fn(&mut Cache, bool)) {
    let seg = dir.join(segment_name(1));
    let len = fs::metadata(&seg).unwrap().len();
    let start = len - last_record;
    for cut in start..=len {
        let copy = copy_dir(dir, "torn-copy");
        let path = copy.path().join(segment_name(1));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (mut c, rec) = Cache::open(copy.path(), 8192).unwrap();
        assert_eq!(
            rec.torn_bytes,
            cut - start - if cut == len { last_record } else { 0 }
        );
        assert_eq!(rec.skipped_bytes, 0);
        assert_eq!(rec.lost_entries, 0);
        let whole = cut == len;
        if !whole {
            assert_eq!(fs::metadata(&path).unwrap().len(), start, "truncated at {cut}");
        }
        check(&mut c, whole);
        assert_balanced(&c);
        // The cache is usable after the repair, and the repair is stable.
        push(&mut c, High, 10, 99);
        drop(c);
        let (_, rec) = Cache::open(copy.path(), 8192).unwrap();
        assert_eq!(rec.torn_bytes, 0);
    }
}

#[test]
fn torn_put_at_every_offset_keeps_earlier_events() {
    let dir = TempDir::new("torn-put");
    let mut c = open(&dir, 8192);
    let sizes = [300usize, 1, 1200, 45, 700];
    let ids: Vec<EntryId> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| push(&mut c, if i % 2 == 0 { High } else { Low }, n, i as u64))
        .collect();
    drop(c);
    cut_last_record(dir.path(), PUT_OVERHEAD + 700, |c, whole| {
        let n = if whole { 5 } else { 4 };
        for (i, id) in ids.iter().enumerate().take(n) {
            assert_eq!(c.read(*id).unwrap(), event(sizes[i], i as u64));
        }
        let present = c.entries(High).count() + c.entries(Low).count();
        assert_eq!(present, n);
        assert_eq!(c.counters().high.collected + c.counters().low.collected, n as u64);
    });
}

#[test]
fn torn_remove_at_every_offset_brings_the_entries_back_unsent() {
    let dir = TempDir::new("torn-remove");
    let mut c = open(&dir, 8192);
    let a = push(&mut c, High, 100, 1);
    let b = push(&mut c, High, 100, 2);
    c.pin(&[a, b]);
    c.ack(&[a, b]).unwrap();
    drop(c);
    cut_last_record(
        dir.path(),
        REMOVE_BASE_BYTES + 2 * REMOVE_SEQ_BYTES,
        |c, whole| {
            let high = c.counters().high;
            if whole {
                assert_eq!((high.sent, high.cached), (2, 0));
            } else {
                assert_eq!((high.sent, high.cached), (0, 2));
                assert_eq!(ids(c, High), vec![a, b]);
            }
        },
    );
}

fn write_file(dir: &Path, no: u32, bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(segment_name(no));
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_foreign_header_is_an_error_naming_the_file_and_nothing_is_deleted() {
    let dir = TempDir::new("corrupt-header");
    let path = write_file(dir.path(), 1, b"this is not a cache segment at all");
    let err = Cache::open(dir.path(), 8192).unwrap_err();
    assert!(matches!(&err, CacheError::CorruptHeader { path: p } if *p == path));
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(fs::read(&path).unwrap(), b"this is not a cache segment at all");

    // A damaged header checksum too.
    let mut h = format::header();
    h[14] ^= 0x40;
    write_file(dir.path(), 1, &h);
    assert!(matches!(
        Cache::open(dir.path(), 8192),
        Err(CacheError::CorruptHeader { .. })
    ));
}

#[test]
fn an_unknown_version_is_an_error_and_nothing_is_deleted() {
    let dir = TempDir::new("version");
    let mut h = format::header();
    h[8..12].copy_from_slice(&7u32.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    let mut bytes = h.to_vec();
    bytes.extend_from_slice(b"future records");
    let path = write_file(dir.path(), 3, &bytes);
    let err = Cache::open(dir.path(), 8192).unwrap_err();
    match &err {
        CacheError::UnsupportedVersion {
            path: p,
            found,
            supported,
        } => {
            assert_eq!((p, *found, *supported), (&path, 7, format::FORMAT_VERSION));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("version 7"));
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_torn_header_is_repaired_only_in_the_newest_segment() {
    let dir = TempDir::new("torn-header");
    {
        let mut c = open(&dir, 8192);
        push(&mut c, High, 100, 1);
    }
    // A crash while segment 2 was being created.
    write_file(dir.path(), 2, &format::header()[..7]);
    let (c, rec) = Cache::open(dir.path(), 8192).unwrap();
    assert_eq!((rec.entries, rec.torn_bytes), (1, 7));
    drop(c);
    assert_eq!(
        fs::metadata(dir.path().join(segment_name(2))).unwrap().len(),
        HEADER_BYTES
    );
    // The same bytes in an older segment are damage, not a torn write.
    write_file(dir.path(), 1, &format::header()[..7]);
    assert!(matches!(
        Cache::open(dir.path(), 8192),
        Err(CacheError::CorruptHeader { .. })
    ));
}

#[test]
fn damage_in_the_middle_loses_only_the_damaged_record() {
    let dir = TempDir::new("damage");
    let mut c = open(&dir, 8192);
    let a = push(&mut c, Low, 200, 1);
    let b = push(&mut c, Low, 200, 2);
    // Flip a byte inside a's event bytes, behind the cache's back.
    let path = dir.path().join(segment_name(1));
    let mut bytes = fs::read(&path).unwrap();
    let at = (HEADER_BYTES + PUT_OVERHEAD + 50) as usize;
    bytes[at] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    match c.read(a) {
        Err(CacheError::Unreadable { id, .. }) => assert_eq!(id, a),
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&c, Low), vec![b]);
    assert_eq!(c.counters().low.dropped.get(DropReason::Unreadable), 1);
    assert_balanced(&c);
    assert_eq!(c.read(b).unwrap(), event(200, 2));
    drop(c);

    let (mut c, rec) = Cache::open(dir.path(), 8192).unwrap();
    assert_eq!(rec.skipped_bytes, PUT_OVERHEAD + 200);
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(ids(&c, Low), vec![b]);
    assert_eq!(c.read(b).unwrap(), event(200, 2));
    assert_balanced(&c);
}

#[test]
fn compaction_keeps_the_disk_bound() {
    for segment in [SEGMENT_BYTES, 4096, 1500] {
        let dir = TempDir::new("compaction");
        let max = 8192;
        let (mut c, _) = Cache::open_with(dir.path(), max, segment).unwrap();
        let mut tag = 0u64;
        for round in 0..400u64 {
            for k in 0..3 {
                tag += 1;
                let p = if (round + k) % 3 == 0 { High } else { Low };
                let len = 50 + ((tag * 7919) % 2500) as usize;
                let _ = c.push(p, event(len, tag), tag);
            }
            if round % 2 == 0 {
                let batch: Vec<EntryId> = c.unpinned(High).take(2).map(|e| e.id).collect();
                c.pin(&batch);
                if round % 4 == 0 {
                    c.ack(&batch).unwrap();
                } else {
                    c.unpin(&batch);
                }
            }
            assert!(c.take_peak_disk_bytes() <= disk_bound(max), "segment {segment}");
            assert!(c.disk_bytes() <= disk_bound(max));
            assert_eq!(files_total(dir.path()), c.disk_bytes());
            assert_balanced(&c);
        }
        assert!(c.bytes_written() > 1_000_000);
        let all: Vec<EntryId> = [High, Low].into_iter().flat_map(|p| ids(&c, p)).collect();
        let before: Vec<(EntryId, Vec<u8>)> = all.into_iter().map(|id| (id, c.read(id).unwrap())).collect();
        let counters = c.counters();
        drop(c);
        let (mut c, rec) = Cache::open_with(dir.path(), max, segment).unwrap();
        assert_eq!((rec.torn_bytes, rec.skipped_bytes, rec.lost_entries), (0, 0, 0));
        assert_eq!(c.counters(), counters);
        for (id, bytes) in before {
            assert_eq!(c.read(id).unwrap(), bytes);
        }
    }
}

#[test]
fn the_footprint_shrinks_with_max_bytes() {
    let dir = TempDir::new("footprint-shrink");
    let mut c = open(&dir, 200_000);
    for tag in 0..300 {
        let _ = c.push(Low, event(1000, tag), tag);
    }
    assert!(c.disk_bytes() > 300_000);
    c.set_max_bytes(8192);
    assert!(c.disk_bytes() <= disk_bound(8192), "{}", c.disk_bytes());
    assert_eq!(files_total(dir.path()), c.disk_bytes());
    assert!(c.used_bytes() <= 8192);
}

#[test]
fn disk_full_drops_the_event_counts_it_and_the_cache_stays_usable() {
    let dir = TempDir::new("disk-full");
    let mut c = open(&dir, 8192);
    let a = push(&mut c, High, 4000, 1);
    let b = push(&mut c, Low, 4000, 2);
    c.log.fail_writes = Some(libc::ENOSPC);
    match c.push(High, event(1000, 3), 3) {
        PushOutcome::Dropped {
            reason,
            evicted,
            error,
        } => {
            assert_eq!(reason, DropReason::DiskFull);
            // The eviction's record could not be written: nothing was evicted.
            assert!(evicted.is_empty());
            assert!(error.unwrap().is_disk_full());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&c, Low), vec![b]);
    c.pin(&[a]);
    assert!(c.ack(&[a]).unwrap_err().is_disk_full());
    assert_eq!(c.counters().high.sent, 1);
    assert_balanced(&c);
    assert!(c.sync().is_err());

    c.log.fail_writes = None;
    let d = push(&mut c, High, 100, 4);
    let counters = c.counters();
    assert_eq!(counters.high.dropped.get(DropReason::DiskFull), 1);
    drop(c);
    // The deferred records (the drop, the ack) were written with the next write.
    let (c, _) = Cache::open(dir.path(), 8192).unwrap();
    assert_eq!(c.counters(), counters);
    assert_eq!(ids(&c, High), vec![d]);
    assert_eq!(files_total(dir.path()), c.disk_bytes());
}

#[test]
fn io_errors_other_than_enospc_are_counted_as_io() {
    let dir = TempDir::new("io-error");
    let mut c = open(&dir, 8192);
    c.log.fail_writes = Some(libc::EIO);
    match c.push(Low, event(10, 1), 1) {
        PushOutcome::Dropped { reason, error, .. } => {
            assert_eq!(reason, DropReason::Io);
            assert!(!error.unwrap().is_disk_full());
        }
        other => panic!("{other:?}"),
    }
    c.log.fail_writes = None;
    assert_eq!(c.counters().low.dropped.get(DropReason::Io), 1);
    assert_balanced(&c);
}

#[test]
fn write_cost_matches_what_is_written() {
    let dir = TempDir::new("write-cost");
    let mut c = open(&dir, 1 << 20);
    let before = c.bytes_written();
    let ids: Vec<EntryId> = (0..10).map(|t| push(&mut c, Low, 300, t)).collect();
    c.pin(&ids);
    c.ack(&ids).unwrap();
    let per_event = (c.bytes_written() - before) / 10;
    assert_eq!(per_event, write_cost_per_event(300, 10));
    assert_eq!(write_cost_per_event(300, 1), 300 + 18 + 8 + 10);
    assert_eq!(write_cost_per_event(300, 0), write_cost_per_event(300, 1));
}

#[test]
fn unknown_files_in_the_directory_are_left_alone() {
    let dir = TempDir::new("unknown-files");
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join("README"), b"hello").unwrap();
    fs::write(dir.path().join("cache-000001.log.tmp"), b"x").unwrap();
    let mut c = open(&dir, 8192);
    push(&mut c, Low, 10, 1);
    drop(c);
    assert_eq!(fs::read(dir.path().join("README")).unwrap(), b"hello");
    assert!(dir.path().join("cache-000001.log.tmp").exists());
}

/// One deterministic, pseudo-random step of a workload: pushes, sends (pin + ack or unpin),
/// shrinking and growing, syncs. `known` maps stored ids to their (len, tag).
fn workload_step(c: &mut Cache, i: u64, known: &mut BTreeMap<EntryId, (usize, u64)>) {
    let r = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    match r % 10 {
        0..=3 => {
            let len = 1 + (r % 2999) as usize;
            let p = if matches!(r % 3, 0) { High } else { Low };
            if let Some(id) = c.push(p, event(len, i), i).id() {
                known.insert(id, (len, i));
            }
        }
        4 | 5 => {
            // A burst, as the run loop hands it over: up to four events in one call.
            let events: Vec<(twinguard_core::event::Priority, usize, u64)> = (0..1 + r % 4)
                .map(|k| {
                    let len = 1 + ((r >> (4 * k)) % 1500) as usize;
                    let p = if (r >> k) & 1 == 0 { High } else { Low };
                    (p, len, i * 8 + k)
                })
                .collect();
            let batch: Vec<_> = events.iter().map(|&(p, len, tag)| (p, event(len, tag))).collect();
            for (outcome, &(_, len, tag)) in c.push_batch(&batch, i).iter().zip(&events) {
                if let Some(id) = outcome.id() {
                    known.insert(id, (len, tag));
                }
            }
        }
        6 | 7 => {
            let p = if r & 1 == 0 { High } else { Low };
            let batch: Vec<EntryId> = c.unpinned(p).take(3).map(|e| e.id).collect();
            c.pin(&batch);
            if r % 4 < 3 {
                let _ = c.ack(&batch);
            } else {
                let _ = c.unpin(&batch);
            }
        }
        8 => {
            let _ = c.set_max_bytes(8192 + (r % 20_000));
        }
        _ => {
            let _ = c.sync();
        }
    }
}

fn all_ids(c: &Cache) -> BTreeSet<EntryId> {
    [High, Low].into_iter().flat_map(|p| ids(c, p)).collect()
}

const WORKLOAD_STEPS: u64 = 70;

#[test]
fn a_write_failure_at_any_point_leaves_a_consistent_log() {
    for segment in [1024, 8192] {
        let writes = {
            let dir = TempDir::new("fail-count");
            let (mut c, _) = Cache::open_with(dir.path(), 8192, segment).unwrap();
            let mut known = BTreeMap::new();
            for i in 0..WORKLOAD_STEPS {
                workload_step(&mut c, i, &mut known);
            }
            // The workload compacts: the first segments are gone.
            assert!(c.log.segments().keys().next().is_some_and(|&no| no > 2));
            c.log.writes
        };
        assert!(writes > 50, "{writes}");
        for n in 0..writes {
            // A: crash at the step where the write fails. What is on disk is between the
            // states before and after that step, and reads back intact.
            let dir = TempDir::new("fail-crash");
            let (mut c, _) = Cache::open_with(dir.path(), 8192, segment).unwrap();
            c.log.fail_after = Some(n);
            let mut known = BTreeMap::new();
            for i in 0..WORKLOAD_STEPS {
                let before = all_ids(&c);
                workload_step(&mut c, i, &mut known);
                if c.log.failures == 0 {
                    continue;
                }
                let after = all_ids(&c);
                drop(c);
                // A large bound, so the open evicts nothing and the sets can be compared.
                let (mut r, rec) = Cache::open_with(dir.path(), 1 << 30, segment).unwrap();
                assert_eq!(
                    (rec.torn_bytes, rec.skipped_bytes, rec.lost_entries),
                    (0, 0, 0),
                    "write {n}"
                );
                assert_balanced(&r);
                let got = all_ids(&r);
                assert!(after.is_subset(&got), "write {n}: {after:?} vs {got:?}");
                assert!(got.is_subset(&before.union(&after).copied().collect()));
                for id in got {
                    let (len, tag) = known[&id];
                    assert_eq!(r.read(id).unwrap(), event(len, tag));
                }
                break;
            }

            // B: the disk comes back; the cache carries on, then crashes. The files then
            // hold exactly what the cache held.
            let dir = TempDir::new("fail-recover");
            let (mut c, _) = Cache::open_with(dir.path(), 8192, segment).unwrap();
            c.log.fail_after = Some(n);
            let mut known = BTreeMap::new();
            for i in 0..WORKLOAD_STEPS {
                workload_step(&mut c, i, &mut known);
                if c.log.failures > 0 {
                    c.log.fail_after = None;
                }
            }
            let pinned: Vec<EntryId> = [High, Low]
                .into_iter()
                .flat_map(|p| {
                    c.entries(p)
                        .filter(|e| e.pinned)
                        .map(|e| e.id)
                        .collect::<Vec<_>>()
                })
                .collect();
            let _ = c.unpin(&pinned);
            c.sync().unwrap();
            let counters = c.counters();
            let queues = (ids(&c, High), ids(&c, Low));
            let max = c.max_bytes();
            drop(c);
            let (mut r, rec) = Cache::open_with(dir.path(), max, segment).unwrap();
            assert_eq!(
                (rec.torn_bytes, rec.skipped_bytes, rec.lost_entries),
                (0, 0, 0),
                "write {n}"
            );
            assert!(rec.evicted.is_empty());
            assert_eq!(r.counters(), counters, "write {n}");
            assert_eq!((ids(&r, High), ids(&r, Low)), queues);
            for id in all_ids(&r) {
                let (len, tag) = known[&id];
                assert_eq!(r.read(id).unwrap(), event(len, tag));
            }
            assert_eq!(files_total(dir.path()), r.disk_bytes());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes as a segment file (with or without a valid header, as the newest or an
    /// older segment) give an error or a repair, never a panic, and a usable cache.
    #[test]
    fn random_segment_bytes_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        with_header in any::<bool>(),
        older in any::<bool>(),
        valid_prefix in any::<bool>(),
    ) {
        let dir = TempDir::new("fuzz");
        let mut bytes = Vec::new();
        if with_header {
            bytes.extend_from_slice(&format::header());
        }
        if valid_prefix {
            format::encode_put(&mut bytes, 1, format::Queue::High, b"{\"a\":1}");
        }
        bytes.extend_from_slice(&body);
        write_file(dir.path(), 1, &bytes);
        if older {
            write_file(dir.path(), 2, &format::header());
        }
        if let Ok((mut c, _)) = Cache::open(dir.path(), 8192) {
            assert_balanced(&c);
            let all: Vec<EntryId> = [High, Low].into_iter().flat_map(|p| ids(&c, p)).collect();
            for id in all {
                let _ = c.read(id);
            }
            push(&mut c, Low, 100, 7);
            assert_balanced(&c);
            drop(c);
            let (c, _) = Cache::open(dir.path(), 8192).unwrap();
            assert_balanced(&c);
        }
    }
}

/// A cache written by format version 1 (six drop reasons, 145-byte checkpoints) opens with
/// its entries and counters; new records go to a fresh version 2 segment, never into the old
/// file.
#[test]
fn a_version_1_cache_is_read_and_never_appended_to() {
    let dir = TempDir::new("v1");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"TWGCACHE");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    // A version 1 checkpoint: next_seq 8; Low: collected 7, sent 4, evicted 3; High: 0.
    let mut body = vec![4u8];
    body.extend_from_slice(&8u64.to_le_bytes());
    for n in [7u64, 4, 3, 0, 0, 0, 0, 0] {
        body.extend_from_slice(&n.to_le_bytes());
    }
    body.extend_from_slice(&[0u8; 64]);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    // Then two Low events, still cached.
    format::encode_put(&mut bytes, 8, format::Queue::Low, &event(100, 8));
    format::encode_put(&mut bytes, 9, format::Queue::Low, &event(100, 9));
    let old = write_file(dir.path(), 1, &bytes);
    let (mut c, recovery) = Cache::open(dir.path(), 8192).unwrap();
    assert_eq!((recovery.entries, recovery.lost_entries), (2, 0));
    assert_eq!(c.counters().low.collected, 9);
    assert_eq!(c.counters().low.dropped.get(DropReason::Evicted), 3);
    assert_eq!(c.counters().low.sent, 4);
    assert_balanced(&c);
    push(&mut c, Low, 100, 20);
    c.close().unwrap();
    assert_eq!(
        fs::read(&old).unwrap(),
        bytes,
        "the version 1 file is never written"
    );
    let newest = fs::read(dir.path().join(segment_name(2))).unwrap();
    assert_eq!(
        format::check_header(&newest),
        format::HeaderCheck::Valid(format::FORMAT_VERSION)
    );
    let (c, _) = Cache::open(dir.path(), 8192).unwrap();
    assert_eq!(c.counters().low.cached, 3);
    assert_balanced(&c);
}

#[test]
fn a_burst_that_fits_is_one_write_and_reads_back_after_a_crash() {
    let dir = TempDir::new("batch-one-write");
    let mut c = open(&dir, 1 << 20);
    let before = c.log.writes;
    let batch: Vec<_> = (0..10u64)
        .map(|t| (if t % 3 == 0 { High } else { Low }, event(200 + t as usize, t)))
        .collect();
    let outcomes = c.push_batch(&batch, 7);
    assert_eq!(c.log.writes - before, 1);
    let ids: Vec<EntryId> = outcomes.into_iter().map(|o| stored(o).0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let counters = c.counters();
    assert_eq!(counters.high.collected + counters.low.collected, 10);
    drop(c);
    let mut r = open(&dir, 1 << 20);
    for (id, (_, bytes)) in ids.iter().zip(&batch) {
        assert_eq!(&r.read(*id).unwrap(), bytes);
    }
    assert_eq!(r.counters(), counters);
}

#[test]
fn a_burst_on_a_full_disk_counts_every_event_as_a_single_push_would() {
    let dir = TempDir::new("batch-disk-full");
    let mut c = open(&dir, 1 << 20);
    c.fail_writes(Some(libc::ENOSPC));
    let batch: Vec<_> = (0..5u64).map(|t| (High, event(300, t))).collect();
    for outcome in c.push_batch(&batch, 1) {
        match outcome {
            PushOutcome::Dropped { reason, .. } => assert_eq!(reason, DropReason::DiskFull),
            other => panic!("expected a disk-full drop, got {other:?}"),
        }
    }
    let high = c.counters().high;
    assert_eq!((high.collected, high.dropped.total()), (5, 5));
    c.fail_writes(None);
    // Room again: the next burst is stored, and the drops are still counted.
    for outcome in c.push_batch(&batch, 2) {
        stored(outcome);
    }
    let high = c.counters().high;
    assert_eq!((high.collected, high.dropped.total()), (10, 5));
    assert_balanced(&c);
}
