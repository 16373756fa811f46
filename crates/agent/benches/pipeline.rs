//! Pipeline figures (SPEC §10): in-memory queue + batch + serialize throughput on one core, and
//! the durable cache's throughput and bytes written per event (flash wear).
//!
//! Run: `cargo bench --bench pipeline` (prints figures; no pass/fail: machines here are shared).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Instant, SystemTime};

use twinguard::pipeline::cache::Cache;
use twinguard_core::event::{Event, EventName, MessageFrame, Priority, ProcessCreate};
use uuid::Uuid;

fn sample_event(n: u64) -> Event {
    let item = ProcessCreate {
        executable: "/usr/bin/python3".into(),
        process_id: 1000 + (n % 30_000) as u32,
        parent_process_id: 1,
        user_id: "1000".into(),
        user_name: Some("pi".into()),
        command_line: format!("python3 /opt/app/worker.py --id {n}"),
        extra_details: Default::default(),
    };
    twinguard::stamp::new_event(EventName::ProcessCreate, vec![item.into()], SystemTime::now()).unwrap()
}

/// Queue + batch + serialize in memory: events are serialized, queued by priority, and packed
/// into messages of at most 204800 bytes on their exact body length.
fn in_memory(n: u64) -> (f64, u64) {
    let frame = MessageFrame::new("0.1.0", Uuid::new_v4());
    let max = 204_800;
    // Events are built before timing (collectors build them); the pipeline's work is measured.
    let events: Vec<Event> = (0..n).map(sample_event).collect();
    let start = Instant::now();
    let mut queues: [VecDeque<Vec<u8>>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut messages = 0u64;
    let mut bytes = 0u64;
    for (i, e) in events.iter().enumerate() {
        let p = if i % 10 == 0 {
            Priority::High
        } else {
            Priority::Low
        };
        queues[usize::from(p != Priority::High)].push_back(e.to_json());
    }
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut len = frame.overhead();
    for q in &mut queues {
        while let Some(e) = q.pop_front() {
            if len + e.len() + 1 > max && !batch.is_empty() {
                let body = frame.assemble(&batch);
                bytes += body.len() as u64;
                messages += 1;
                black_box(body);
                batch.clear();
                len = frame.overhead();
            }
            len += e.len() + usize::from(!batch.is_empty());
            batch.push(e);
        }
    }
    if !batch.is_empty() {
        bytes += frame.assemble(&batch).len() as u64;
        messages += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    black_box((messages, bytes));
    (n as f64 / secs, bytes)
}

/// The durable cache: push every event (write(2) per event), then acknowledge in messages of
/// ~200 events, as the pipeline does.
fn durable(n: u64) -> (f64, f64, f64) {
    let dir = std::env::temp_dir().join(format!("twinguard-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut cache, _) = Cache::open(&dir, 2_560_000).unwrap();
    let events: Vec<Vec<u8>> = (0..n).map(|i| sample_event(i).to_json()).collect();
    let total: usize = events.iter().map(Vec::len).sum();
    let start = Instant::now();
    for (i, e) in events.iter().enumerate() {
        cache.push(Priority::Low, e, 1 + i as u64);
        if cache.unpinned(Priority::Low).count() >= 200 {
            let ids: Vec<_> = cache.unpinned(Priority::Low).map(|e| e.id).collect();
            for id in &ids {
                black_box(cache.read(*id).unwrap());
            }
            cache.pin(&ids);
            cache.ack(&ids).unwrap();
            cache.sync().unwrap();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let written = cache.bytes_written() as f64;
    drop(cache);
    let _ = std::fs::remove_dir_all(&dir);
    (
        n as f64 / secs,
        total as f64 / secs / 1e6,
        written / n as f64 - total as f64 / n as f64,
    )
}

fn main() {
    let n = 1_000_000;
    let (rate, bytes) = in_memory(n);
    println!("pipeline in memory (serialize + queue + batch), one core: {:.2} M events/s ({} events, {:.1} MB of messages)  [SPEC target >= 1 M/s]", rate / 1e6, n, bytes as f64 / 1e6);
    let n = 100_000;
    let (rate, mbps, overhead) = durable(n);
    println!("durable cache (push + read + ack, fdatasync per 200-event message): {:.0} events/s, {:.1} MB/s of event bytes, {:.1} bytes written per event beyond the event itself", rate, mbps, overhead);
}
