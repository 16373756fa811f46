//! Model-based property test: random operations (push, select + pin, ack, unpin,
//! set_max_bytes, crash, clean reopen) drive the real cache and a plain in-memory model (two
//! `VecDeque`s and counters). After every step both must agree on contents, order, pinning,
//! timestamps, bytes, eviction choices and exact counters, and the byte and disk bounds hold.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;

use super::tests::{event, TempDir};
use super::*;
use twinguard_core::event::Priority::{self, High, Low};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelEntry {
    id: EntryId,
    len: u64,
    ts: u64,
    pinned: bool,
    tag: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ModelCounters {
    collected: u64,
    sent: u64,
    dropped: [u64; 7],
}

#[derive(Debug, Default)]
struct Model {
    /// Index 0 Low, 1 High.
    queues: [VecDeque<ModelEntry>; 2],
    counters: [ModelCounters; 2],
    max: u64,
    /// Batches pinned by `Select`, awaiting `Ack` or `Unpin`.
    batches: Vec<Vec<EntryId>>,
}

fn qi(p: Priority) -> usize {
    usize::from(p == High)
}

fn reason_index(r: DropReason) -> usize {
    DropReason::COUNTED.iter().position(|x| *x == r).unwrap()
}

impl Model {
    fn used(&self) -> u64 {
        self.queues.iter().flatten().map(|e| e.len).sum()
    }

    fn unpinned_bytes(&self, q: usize) -> u64 {
        self.queues[q].iter().filter(|e| !e.pinned).map(|e| e.len).sum()
    }

    /// Oldest unpinned entries of `order`'s queues until `need` bytes; removed and counted.
    fn evict(&mut self, order: &[usize], need: u64) -> Vec<EntryId> {
        let mut victims = Vec::new();
        let mut freed = 0;
        for &q in order {
            for e in &self.queues[q] {
                if freed >= need {
                    break;
                }
                if !e.pinned {
                    victims.push((q, e.id));
                    freed += e.len;
                }
            }
        }
        for &(q, id) in &victims {
            self.queues[q].retain(|e| e.id != id);
            self.counters[q].dropped[reason_index(DropReason::Evicted)] += 1;
        }
        victims.into_iter().map(|(_, id)| id).collect()
    }

    /// What a push must do: `Ok(evicted)` if stored, `Err(reason)` if dropped.
    fn push(&mut self, p: Priority, len: u64) -> Result<Vec<EntryId>, DropReason> {
        let q = qi(p);
        self.counters[q].collected += 1;
        let drop = |m: &mut Model, r: DropReason| {
            m.counters[q].dropped[reason_index(r)] += 1;
            Err(r)
        };
        if len > self.max {
            return drop(self, DropReason::TooLarge);
        }
        let need = (self.used() + len).saturating_sub(self.max);
        if need == 0 {
            return Ok(Vec::new());
        }
        let order: &[usize] = if p == High { &[0, 1] } else { &[0] };
        let available: u64 = order.iter().map(|&q| self.unpinned_bytes(q)).sum();
        if available < need {
            return drop(self, DropReason::CacheFull);
        }
        Ok(self.evict(order, need))
    }

    fn enforce_bound(&mut self) -> Vec<EntryId> {
        let need = self.used().saturating_sub(self.max);
        if need == 0 {
            return Vec::new();
        }
        self.evict(&[0, 1], need)
    }

    fn set_pinned(&mut self, ids: &[EntryId], pinned: bool) {
        for e in self.queues.iter_mut().flatten() {
            if ids.contains(&e.id) {
                e.pinned = pinned;
            }
        }
    }

    fn ack(&mut self, ids: &[EntryId]) {
        for (q, queue) in self.queues.iter_mut().enumerate() {
            let before = queue.len();
            queue.retain(|e| !ids.contains(&e.id));
            self.counters[q].sent += (before - queue.len()) as u64;
        }
    }

    /// What a restart does: nothing pinned, every timestamp 0, then the bound enforced.
    fn restart(&mut self) -> Vec<EntryId> {
        self.batches.clear();
        for e in self.queues.iter_mut().flatten() {
            e.pinned = false;
            e.ts = 0;
        }
        self.enforce_bound()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Push { high: bool, len: usize },
    PushBatch(Vec<(bool, usize)>),
    Select { first_high: bool, budget: u64 },
    Ack(Index),
    Unpin(Index),
    SetMax(u64),
    Crash,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<bool>(), 1usize..3000).prop_map(|(high, len)| Op::Push { high, len }),
        3 => prop::collection::vec((any::<bool>(), 1usize..3000), 1..12).prop_map(Op::PushBatch),
        3 => (any::<bool>(), 1u64..20_000)
            .prop_map(|(first_high, budget)| Op::Select { first_high, budget }),
        2 => any::<Index>().prop_map(Op::Ack),
        1 => any::<Index>().prop_map(Op::Unpin),
        1 => (8192u64..60_000).prop_map(Op::SetMax),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

fn reopen(dir: &Path, max: u64, segment: u64, model: &mut Model) -> Cache {
    let (c, rec) = Cache::open_with(dir, max, segment).unwrap();
    let expected_entries = model.queues.iter().map(|q| q.len() as u64).sum::<u64>();
    let expected_evicted = model.restart();
    assert_eq!(rec.entries, expected_entries);
    assert_eq!((rec.torn_bytes, rec.skipped_bytes, rec.lost_entries), (0, 0, 0));
    assert!(rec.error.is_none(), "{:?}", rec.error);
    let got: Vec<EntryId> = rec.evicted.iter().map(|e| e.id).collect();
    assert_eq!(got, expected_evicted);
    c
}

/// Everything the model says must be true of the cache.
fn check(cache: &mut Cache, model: &Model, dir: &Path, segment: u64, peak_max: u64) {
    for p in [Low, High] {
        let got: Vec<(EntryId, u64, u64, bool)> = cache
            .entries(p)
            .map(|e| (e.id, e.len, e.enqueued_ms, e.pinned))
            .collect();
        let want: Vec<(EntryId, u64, u64, bool)> = model.queues[qi(p)]
            .iter()
            .map(|e| (e.id, e.len, e.ts, e.pinned))
            .collect();
        assert_eq!(got, want, "{p} queue");
        let oldest = model.queues[qi(p)].iter().find(|e| !e.pinned).map(|e| e.ts);
        assert_eq!(cache.oldest_ms(p), oldest);
        for e in &model.queues[qi(p)] {
            assert_eq!(cache.read(e.id).unwrap(), event(e.len as usize, e.tag));
        }
    }

    let counters = cache.counters();
    for p in [Low, High] {
        let got = counters.queue(p).unwrap();
        let want = model.counters[qi(p)];
        assert_eq!(got.collected, want.collected, "{p} collected");
        assert_eq!(got.sent, want.sent, "{p} sent");
        assert_eq!(got.dropped.0, want.dropped, "{p} dropped");
        assert_eq!(got.cached, model.queues[qi(p)].len() as u64);
        assert_eq!(
            got.cached_bytes,
            model.queues[qi(p)].iter().map(|e| e.len).sum::<u64>()
        );
        assert!(got.is_balanced(), "{p}: {got:?}");
    }

    // The byte bound: only pinned bytes may exceed a shrunk max, and then nothing unpinned
    // is left.
    let used = cache.used_bytes();
    assert!(
        used <= model.max || model.unpinned_bytes(0) + model.unpinned_bytes(1) == 0,
        "used {used} > max {}",
        model.max
    );

    // The disk bound, documented and tight (the transient is one segment's live copies at
    // most), now and at the peak of the step.
    let tight = |max: u64| 2 * max + segment.min(2 * max) + 4096;
    let max = model.max.max(used);
    assert!(cache.disk_bytes() <= disk_bound(max));
    assert!(cache.disk_bytes() <= tight(max), "disk {}", cache.disk_bytes());
    let peak = cache.take_peak_disk_bytes();
    assert!(peak <= disk_bound(peak_max));
    assert!(peak <= tight(peak_max), "peak {peak}");
    let files: u64 = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(files, cache.disk_bytes());
}

/// Checks one push's outcome against the model's, and takes a stored event into the model.
fn expect_push(
    model: &mut Model,
    p: Priority,
    len: usize,
    tag: u64,
    now: u64,
    outcome: PushOutcome,
    last_id: &mut Option<EntryId>,
) {
    let want = model.push(p, len as u64);
    match (outcome, want) {
        (
            PushOutcome::Stored {
                id, evicted, error, ..
            },
            Ok(want_evicted),
        ) => {
            assert!(error.is_none(), "{error:?}");
            assert!(last_id.iter().all(|&last| id > last));
            *last_id = Some(id);
            let got: Vec<EntryId> = evicted.iter().map(|e| e.id).collect();
            assert_eq!(got, want_evicted);
            model.queues[qi(p)].push_back(ModelEntry {
                id,
                len: len as u64,
                ts: now,
                pinned: false,
                tag,
            });
        }
        (
            PushOutcome::Dropped {
                reason,
                evicted,
                error,
            },
            Err(want),
        ) => {
            assert_eq!(reason, want);
            assert!(evicted.is_empty() && error.is_none());
        }
        (got, want) => panic!("push {p} {len}: got {got:?}, model {want:?}"),
    }
}

fn run(initial_max: u64, segment: u64, ops: Vec<Op>) {
    let dir = TempDir::new("model");
    let mut model = Model {
        max: initial_max,
        ..Model::default()
    };
    let mut cache = reopen(dir.path(), initial_max, segment, &mut model);
    let mut last_id: Option<EntryId> = None;
    let mut tag = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        let now = step as u64 + 1;
        // Pinned bytes above a shrunk max stand in for it in the disk bound.
        let mut peak_max = model.max.max(model.used());
        match op {
            Op::Push { high, len } => {
                let p = if high { High } else { Low };
                tag += 1;
                let outcome = cache.push(p, event(len, tag), now);
                expect_push(&mut model, p, len, tag, now, outcome, &mut last_id);
            }
            Op::PushBatch(items) => {
                let mut batch = Vec::new();
                let first_tag = tag + 1;
                for &(high, len) in &items {
                    tag += 1;
                    batch.push((if high { High } else { Low }, event(len, tag)));
                }
                let outcomes = cache.push_batch(&batch, now);
                assert_eq!(outcomes.len(), items.len());
                for (i, ((high, len), outcome)) in items.into_iter().zip(outcomes).enumerate() {
                    let p = if high { High } else { Low };
                    let t = first_tag + i as u64;
                    expect_push(&mut model, p, len, t, now, outcome, &mut last_id);
                }
            }
            Op::Select { first_high, budget } => {
                // Like the batcher: oldest first from one queue, topped up from the other,
                // stopping at the first entry that does not fit.
                let order = if first_high { [High, Low] } else { [Low, High] };
                let mut chosen = Vec::new();
                let mut total = 0;
                for p in order {
                    for e in cache.unpinned(p) {
                        if total + e.len > budget {
                            break;
                        }
                        total += e.len;
                        chosen.push(e.id);
                    }
                }
                if !chosen.is_empty() {
                    cache.pin(&chosen);
                    model.set_pinned(&chosen, true);
                    model.batches.push(chosen);
                }
            }
            Op::Ack(i) => {
                if !model.batches.is_empty() {
                    let batch = model.batches.remove(i.index(model.batches.len()));
                    cache.ack(&batch).unwrap();
                    model.ack(&batch);
                }
            }
            Op::Unpin(i) => {
                if !model.batches.is_empty() {
                    let batch = model.batches.remove(i.index(model.batches.len()));
                    let out = cache.unpin(&batch);
                    model.set_pinned(&batch, false);
                    let want = model.enforce_bound();
                    assert!(out.error.is_none());
                    assert_eq!(out.evicted.iter().map(|e| e.id).collect::<Vec<_>>(), want);
                }
            }
            Op::SetMax(max) => {
                peak_max = peak_max.max(max);
                let out = cache.set_max_bytes(max);
                model.max = max;
                let want = model.enforce_bound();
                assert!(out.error.is_none());
                assert_eq!(out.evicted.iter().map(|e| e.id).collect::<Vec<_>>(), want);
            }
            Op::Crash => {
                drop(cache);
                cache = reopen(dir.path(), model.max, segment, &mut model);
            }
            Op::Reopen => {
                cache.close().unwrap();
                cache = reopen(dir.path(), model.max, segment, &mut model);
            }
        }
        let peak_max = peak_max.max(model.max).max(model.used());
        check(&mut cache, &model, dir.path(), segment, peak_max);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn cache_matches_the_model(
        initial_max in 8192u64..60_000,
        segment in prop_oneof![Just(SEGMENT_BYTES), Just(4096u64), Just(1024u64)],
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(initial_max, segment, ops);
    }
}
