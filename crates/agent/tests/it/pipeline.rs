//! The pipeline's batching and timers with injected time (milliseconds, deterministic), over a
//! real on-disk cache; every message produced here is checked against the official schema.

use std::time::SystemTime;

use serde_json::{json, Value};
use twinguard::pipeline::batch::{Outgoing, Pipeline};
use twinguard::pipeline::cache::{Cache, DropReason};
use twinguard_core::config::{validate_document, Config};
use twinguard_core::event::{
    ConfigurationError, ConfigurationErrorType, Event, EventName, MessageFrame, PayloadItem, ProcessCreate,
};
use uuid::Uuid;

use crate::conformance::validate_messages;
use crate::support::TempDir;

fn config(doc: Value) -> Config {
    let v = validate_document(&doc);
    v.config.unwrap_or_else(|| panic!("{:?}", v.problems))
}

fn pipeline(dir: &TempDir, config: Config) -> Pipeline {
    let (cache, _) = Cache::open(&dir.path("cache"), config.max_local_cache_size_in_bytes).unwrap();
    Pipeline::new(cache, config, MessageFrame::new("0.1.0", Uuid::new_v4()))
}

fn process(n: usize, command_len: usize) -> PayloadItem {
    ProcessCreate {
        executable: "/usr/bin/test".into(),
        process_id: 100 + n as u32,
        parent_process_id: 1,
        user_id: "0".into(),
        user_name: Some("root".into()),
        command_line: format!("test {n} {}", "x".repeat(command_len)),
        extra_details: Default::default(),
    }
    .into()
}

fn event(name: EventName, items: Vec<PayloadItem>) -> Event {
    twinguard::stamp::new_event(name, items, SystemTime::now()).unwrap()
}

/// A Login-priority (High by default) event: ConfigurationError set to High in the configs below.
fn high_event() -> Event {
    let item = ConfigurationError::new("x", ConfigurationErrorType::NotOptimal, "1", "test");
    event(EventName::ConfigurationError, vec![item.into()])
}

/// Delivers (confirms) a message and keeps its body for the conformance check.
fn deliver(p: &mut Pipeline, out: Outgoing, bodies: &mut Vec<Vec<u8>>) {
    p.confirm(&out).unwrap();
    bodies.push(out.body);
}

#[test]
fn high_and_low_are_sent_exactly_when_their_oldest_event_is_due() {
    let dir = TempDir::new("due");
    let mut p = pipeline(
        &dir,
        config(json!({
            "highPriorityMessageFrequency": {"value": "PT2S"},
            "lowPriorityMessageFrequency": {"value": "PT5S"},
            "eventPriorityConfigurationError": {"value": "High"},
        })),
    );
    let mut bodies = Vec::new();
    p.submit(high_event(), 1000);
    p.submit(event(EventName::ProcessCreate, vec![process(1, 10)]), 1500);
    assert_eq!(p.next_deadline(), Some(3000));
    assert!(p.poll_message(2999).is_none());
    let out = p.poll_message(3000).expect("High is due at 1000 + 2000");
    // The due High queue goes first and the Low event tops the message up.
    assert_eq!(out.ids.len(), 2);
    deliver(&mut p, out, &mut bodies);
    assert_eq!(p.next_deadline(), None);

    p.submit(event(EventName::ProcessCreate, vec![process(2, 10)]), 4000);
    assert_eq!(p.next_deadline(), Some(9000));
    assert!(p.poll_message(8999).is_none());
    let out = p.poll_message(9000).expect("Low is due at 4000 + 5000");
    assert_eq!(out.ids.len(), 1);
    deliver(&mut p, out, &mut bodies);
    validate_messages(&bodies).unwrap();
}

#[test]
fn a_full_message_is_sent_at_once_and_never_exceeds_the_limit() {
    let dir = TempDir::new("full");
    let mut p = pipeline(
        &dir,
        config(
            json!({"maxMessageSizeInBytes": {"value": 8192}, "maxLocalCacheSizeInBytes": {"value": 1000000}}),
        ),
    );
    let mut bodies = Vec::new();
    let mut n = 0;
    while p.next_deadline() != Some(0) {
        p.submit(event(EventName::ProcessCreate, vec![process(n, 200)]), 10);
        n += 1;
        assert!(n < 100, "never became full");
    }
    let out = p
        .poll_message(10)
        .expect("a full message goes at once, long before Low is due");
    assert!(out.body.len() <= 8192, "{} bytes", out.body.len());
    let in_message = out.ids.len();
    assert!(in_message >= n - 2 && in_message < n, "{in_message} of {n}");
    deliver(&mut p, out, &mut bodies);
    assert!(p.poll_message(10).is_none(), "the rest is not full and not due");
    assert_eq!(p.counters().low.cached as usize, n - in_message);
    validate_messages(&bodies).unwrap();
}

#[test]
fn events_reloaded_after_a_restart_are_due_at_once() {
    let dir = TempDir::new("reload");
    let cfg = config(json!({}));
    let mut p = pipeline(&dir, cfg.clone());
    for n in 0..3 {
        p.submit(event(EventName::ProcessCreate, vec![process(n, 10)]), 10);
    }
    assert!(p.poll_message(11).is_none());
    drop(p);
    let mut p = pipeline(&dir, cfg);
    assert_eq!(p.next_deadline(), Some(0));
    let out = p.poll_message(1).unwrap();
    assert_eq!(out.ids.len(), 3);
    let mut bodies = Vec::new();
    deliver(&mut p, out, &mut bodies);
    validate_messages(&bodies).unwrap();
}

#[test]
fn an_oversized_event_is_split_and_a_too_large_item_dropped_and_explained() {
    let dir = TempDir::new("split");
    let mut p = pipeline(
        &dir,
        config(json!({
            "maxMessageSizeInBytes": {"value": 8192},
            "maxLocalCacheSizeInBytes": {"value": 1000000},
            "eventPriorityDiagnostic": {"value": "High"},
        })),
    );
    let mut items: Vec<PayloadItem> = (0..100).map(|n| process(n, 300)).collect();
    items.push(process(999, 20_000));
    let submitted = p.submit(event(EventName::ProcessCreate, items), 10);
    assert!(submitted.stored >= 4, "{submitted:?}");
    assert_eq!(submitted.dropped, vec![DropReason::TooLarge]);
    let diagnostic = p
        .take_diagnostics(SystemTime::now())
        .expect("a Diagnostic explains the drop");
    assert_eq!(diagnostic.name(), EventName::Diagnostic);
    p.submit(diagnostic, 10);
    let mut bodies = Vec::new();
    let mut items_sent = 0;
    while let Some(out) = p.poll_message(u64::MAX / 2) {
        assert!(out.body.len() <= 8192);
        let message: Value = serde_json::from_slice(&out.body).unwrap();
        for e in message["Events"].as_array().unwrap() {
            if e["Name"] == "ProcessCreate" {
                items_sent += e["Payload"].as_array().unwrap().len();
            }
        }
        deliver(&mut p, out, &mut bodies);
    }
    assert_eq!(items_sent, 100);
    let stats = p.statistics_events(SystemTime::now());
    let dropped: Value = serde_json::from_slice(&stats[0].to_json()).unwrap();
    assert_eq!(dropped["Payload"][1]["DroppedEvents"], 1, "{dropped}");
    validate_messages(&bodies).unwrap();
}

#[test]
fn a_failed_delivery_is_retried_with_backoff_and_never_counted_as_a_drop() {
    let dir = TempDir::new("retry");
    let mut p = pipeline(
        &dir,
        config(json!({"eventPriorityConfigurationError": {"value": "High"}})),
    );
    p.submit(high_event(), 1);
    let due = p.next_deadline().unwrap();
    let out = p.poll_message(due).unwrap();
    p.failed(&out, due);
    assert!(p.poll_message(due + 999).is_none(), "backoff of at least 1 s");
    let retry = p.next_deadline().unwrap();
    assert!((due + 1000..=due + 1250).contains(&retry), "{retry}");
    let out = p.poll_message(retry).unwrap();
    p.confirm(&out).unwrap();
    let c = p.counters();
    assert_eq!((c.high.sent, c.high.dropped.total(), c.high.cached), (1, 0, 0));
    assert_eq!(p.period().failed, 1);
    assert_eq!(p.period().messages_sent, 1);
}

#[test]
fn a_smaller_configuration_evicts_and_priorities_apply_to_new_events() {
    let dir = TempDir::new("shrink");
    let mut p = pipeline(&dir, config(json!({})));
    for n in 0..200 {
        p.submit(event(EventName::ProcessCreate, vec![process(n, 100)]), 10);
    }
    let before = p.counters().low.cached_bytes;
    assert!(before > 16384);
    p.apply_config(config(json!({
        "maxLocalCacheSizeInBytes": {"value": 16384},
        "maxMessageSizeInBytes": {"value": 8192},
        "eventPriorityProcessCreate": {"value": "Off"},
    })));
    let c = p.counters();
    assert!(c.low.cached_bytes <= 16384);
    assert_eq!(c.low.collected, c.low.sent + c.low.dropped.total() + c.low.cached);
    let collected = c.low.collected;
    p.submit(event(EventName::ProcessCreate, vec![process(1, 1)]), 20);
    assert_eq!(p.counters().low.collected, collected, "Off events are not queued");
}

#[test]
fn a_cached_event_too_large_for_a_shrunk_message_is_dropped_not_stalled() {
    let dir = TempDir::new("shrunk-message");
    let mut p = pipeline(&dir, config(json!({"maxMessageSizeInBytes": {"value": 65536}})));
    p.submit(event(EventName::ProcessCreate, vec![process(1, 30_000)]), 10);
    p.submit(event(EventName::ProcessCreate, vec![process(2, 10)]), 10);
    p.apply_config(config(json!({"maxMessageSizeInBytes": {"value": 8192}})));
    let out = p
        .poll_message(u64::MAX / 2)
        .expect("the small event is still sent");
    assert_eq!(out.ids.len(), 1);
    p.confirm(&out).unwrap();
    let c = p.counters();
    assert_eq!(
        (c.low.sent, c.low.dropped.get(DropReason::TooLarge), c.low.cached),
        (1, 1, 0)
    );
    assert!(p.poll_message(u64::MAX / 2).is_none());
}
