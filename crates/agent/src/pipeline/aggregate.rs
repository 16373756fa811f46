//! Aggregation of triggered events (SPEC §3): while `aggregationEnabled{Name}` is true,
//! identical ProcessCreate, ProcessTerminate and ConnectionCreate items within one
//! `aggregationInterval{Name}` become one item with `ExtraDetails.HitCount`, `StartTimeUtc` and
//! `EndTimeUtc` (the first and last hit's event times), and pids 0 when it stands for more than
//! one event.
//!
//! Pure: no clock, no IO. Time comes in as monotonic milliseconds (`now_ms`, the run loop's
//! clock, for the windows' deadlines) and wall-clock time (`wall`, for the timestamp of the
//! events it emits); the hits' own times come from their events.
//!
//! Identity (the key) per event type:
//! - ProcessCreate: Executable, CommandLine, UserId, and the exec facts of its `ExtraDetails`
//!   ([`PROCESS_FACT_KEYS`]: Argv, the kinds of descriptors 0-2, deleted/memfd executable,
//!   writable directory, container), so that an item standing for several execs of one command
//!   never hides one that differs in what detections look at (the same shell with a socket as
//!   stdin, the same command in a container). This refines SPEC §3's key: it only splits.
//! - ProcessTerminate: Executable, ExitStatus.
//! - ConnectionCreate: Direction, Protocol, Executable, RemoteAddress, and the service port:
//!   RemotePort for Out, LocalPort for In. The other port (the client's ephemeral one) becomes
//!   `"*"` when the hits differ in it.
//!
//! Bounds: at most [`MAX_KEYS`] windows are open; a new key beyond that flushes the oldest
//! window early. A clean shutdown flushes every window (`flush_all`); a crash loses at most the
//! open windows, which live only in memory.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use twinguard_core::config::Config;
use twinguard_core::event::{Direction, Event, EventName, PayloadItem, Timestamp};

/// Most windows open at once, over all event types.
pub const MAX_KEYS: usize = 1024;

/// `ExtraDetails` keys that describe one event only, dropped from an item standing for several.
const PER_EVENT_KEYS: [&str; 2] = ["AuditEventId", "Inode"];

/// ProcessCreate `ExtraDetails` keys that are part of its aggregation key (see above).
const PROCESS_FACT_KEYS: [&str; 8] = [
    "Argv",
    "Stdin",
    "Stdout",
    "Stderr",
    "ExecutableDeleted",
    "ExecutableMemfd",
    "WritableDirectory",
    "ContainerId",
];

/// The aggregated event types.
const AGGREGATED: [EventName; 3] = [
    EventName::ProcessCreate,
    EventName::ProcessTerminate,
    EventName::ConnectionCreate,
];

/// One open window.
#[derive(Debug)]
struct Window {
    /// The first hit's item, changed at flush.
    item: PayloadItem,
    hits: u64,
    first: Timestamp,
    last: Timestamp,
    /// Whether the hits differ in the non-service port (ConnectionCreate).
    port_varies: bool,
    opened_ms: u64,
    deadline_ms: u64,
    seq: u64,
}

/// Groups identical events per interval. See the module documentation.
#[derive(Debug)]
pub struct Aggregator {
    /// Interval in ms per aggregated event type; absent = aggregation off for it.
    intervals: HashMap<EventName, u64>,
    windows: HashMap<(EventName, String), Window>,
    /// (deadline, seq) -> key: the next window due first.
    by_deadline: BTreeMap<(u64, u64), (EventName, String)>,
    /// seq -> key: the oldest window first.
    by_age: BTreeMap<u64, (EventName, String)>,
    next_seq: u64,
    max_keys: usize,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new(MAX_KEYS)
    }
}

/// The identity of an item, `None` for items that are not aggregated.
fn key_of(item: &PayloadItem) -> Option<String> {
    // Fields are joined with NUL, which none of them can contain unescaped in JSON terms of
    // meaning; two different tuples cannot give the same key.
    let k = match item {
        PayloadItem::ProcessCreate(p) => {
            let mut k = format!("{}\0{}\0{}", p.executable, p.command_line, p.user_id);
            for key in PROCESS_FACT_KEYS {
                k.push('\0');
                if let Some(v) = p.extra_details.get(key) {
                    k.push_str(v);
                }
            }
            k
        }
        PayloadItem::ProcessTerminate(p) => format!("{}\0{}", p.executable, p.exit_status),
        PayloadItem::ConnectionCreate(c) => {
            let service = match c.direction {
                Direction::Out => c.remote_port.clone(),
                Direction::In => c.local_port.clone().unwrap_or_default(),
            };
            format!(
                "{}\0{}\0{}\0{}\0{}",
                c.direction, c.protocol, c.executable, c.remote_address, service
            )
        }
        _ => return None,
    };
    Some(k)
}

/// The non-service port of a connection (the one that may vary within a window).
fn other_port(item: &PayloadItem) -> Option<Option<String>> {
    match item {
        PayloadItem::ConnectionCreate(c) => Some(match c.direction {
            Direction::Out => c.local_port.clone(),
            Direction::In => Some(c.remote_port.clone()),
        }),
        _ => None,
    }
}

impl Aggregator {
    /// An aggregator with every event type's aggregation off until [`Aggregator::apply_config`],
    /// keeping at most `max_keys` windows open.
    pub fn new(max_keys: usize) -> Aggregator {
        Aggregator {
            intervals: HashMap::new(),
            windows: HashMap::new(),
            by_deadline: BTreeMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            max_keys: max_keys.max(1),
        }
    }

    /// Follows `aggregationEnabled*` / `aggregationInterval*`. Open windows of a type whose
    /// aggregation is now off become due at once; those of a type whose interval changed are
    /// due at their opening + the new interval (at once if that has passed).
    pub fn apply_config(&mut self, config: &Config) {
        self.intervals.clear();
        for name in AGGREGATED {
            if let Some(a) = config.aggregation(name).filter(|a| a.enabled) {
                let ms = u64::try_from(a.interval.duration().as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.intervals.insert(name, ms);
            }
        }
        let keys: Vec<(EventName, String)> = self.windows.keys().cloned().collect();
        for key in keys {
            let deadline = match self.intervals.get(&key.0) {
                Some(ms) => self
                    .windows
                    .get(&key)
                    .map_or(0, |w| w.opened_ms.saturating_add(*ms)),
                None => 0,
            };
            self.set_deadline(&key, deadline);
        }
    }

    fn set_deadline(&mut self, key: &(EventName, String), deadline: u64) {
        if let Some(w) = self.windows.get_mut(key) {
            self.by_deadline.remove(&(w.deadline_ms, w.seq));
            w.deadline_ms = deadline;
            self.by_deadline.insert((deadline, w.seq), key.clone());
        }
    }

    /// Whether aggregation is on for `name`.
    pub fn is_enabled(&self, name: EventName) -> bool {
        self.intervals.contains_key(&name)
    }

    /// Number of open windows.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Takes an event. Returns the events to submit now: the event itself when its type is not
    /// aggregated, and any window flushed early because the key cap was reached.
    pub fn offer(&mut self, event: Event, now_ms: u64) -> Vec<Event> {
        let name = event.name();
        let Some(&interval) = self.intervals.get(&name) else {
            return vec![event];
        };
        let time = event.time();
        let mut early = Vec::new();
        for item in event.into_payload() {
            let Some(k) = key_of(&item) else { continue };
            let key = (name, k);
            if let Some(w) = self.windows.get_mut(&key) {
                w.hits += 1;
                if time.millis_since_epoch() >= w.last.millis_since_epoch() {
                    w.last = time;
                }
                if time.millis_since_epoch() < w.first.millis_since_epoch() {
                    w.first = time;
                }
                if other_port(&item) != other_port(&w.item) {
                    w.port_varies = true;
                }
                continue;
            }
            if self.windows.len() >= self.max_keys {
                if let Some(oldest) = self.by_age.first_key_value().map(|(_, k)| k.clone()) {
                    if let Some(item) = self.close(&oldest) {
                        early.push(item);
                    }
                }
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let deadline_ms = now_ms.saturating_add(interval);
            self.by_deadline.insert((deadline_ms, seq), key.clone());
            self.by_age.insert(seq, key.clone());
            self.windows.insert(
                key,
                Window {
                    item,
                    hits: 1,
                    first: time,
                    last: time,
                    port_varies: false,
                    opened_ms: now_ms,
                    deadline_ms,
                    seq,
                },
            );
        }
        group(early, time)
    }

    /// Removes a window and returns its finished item.
    fn close(&mut self, key: &(EventName, String)) -> Option<PayloadItem> {
        let w = self.windows.remove(key)?;
        self.by_deadline.remove(&(w.deadline_ms, w.seq));
        self.by_age.remove(&w.seq);
        Some(finish(w))
    }

    /// The windows whose interval has ended by `now_ms`, as events stamped `wall` (one event
    /// per type, holding one item per window).
    pub fn flush_due(&mut self, now_ms: u64, wall: SystemTime) -> Vec<Event> {
        let mut items = Vec::new();
        while let Some((&(deadline, _), key)) = self.by_deadline.first_key_value() {
            if deadline > now_ms {
                break;
            }
            let key = key.clone();
            if let Some(item) = self.close(&key) {
                items.push(item);
            }
        }
        group(items, crate::stamp::local_time(wall))
    }

    /// When the next window is due (monotonic ms), `None` when none is open.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first_key_value().map(|(&(d, _), _)| d)
    }

    /// Every open window, as events stamped `wall` (at a clean shutdown).
    pub fn flush_all(&mut self, wall: SystemTime) -> Vec<Event> {
        let keys: Vec<(EventName, String)> = self.by_age.values().cloned().collect();
        let items: Vec<PayloadItem> = keys.iter().filter_map(|k| self.close(k)).collect();
        group(items, crate::stamp::local_time(wall))
    }
}

/// The window's item as it is sent: HitCount and the time span added; for more than one hit,
/// pids 0, a varying port `"*"`, and per-event details removed.
fn finish(w: Window) -> PayloadItem {
    let mut item = w.item;
    if w.hits > 1 {
        match &mut item {
            PayloadItem::ProcessCreate(p) => {
                p.process_id = 0;
                p.parent_process_id = 0;
            }
            PayloadItem::ProcessTerminate(p) => p.process_id = 0,
            PayloadItem::ConnectionCreate(c) => {
                c.process_id = 0;
                if w.port_varies {
                    match c.direction {
                        Direction::Out => c.local_port = Some("*".into()),
                        Direction::In => c.remote_port = "*".into(),
                    }
                }
            }
            _ => {}
        }
        for k in PER_EVENT_KEYS {
            item.extra_details_mut().remove(k);
        }
    }
    let extra = item.extra_details_mut();
    extra.insert("HitCount".into(), w.hits.to_string());
    extra.insert("StartTimeUtc".into(), w.first.utc_rfc3339());
    extra.insert("EndTimeUtc".into(), w.last.utc_rfc3339());
    item
}

/// One event per event name, items in order, stamped `time`.
fn group(items: Vec<PayloadItem>, time: Timestamp) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    let mut by_name: BTreeMap<EventName, Vec<PayloadItem>> = BTreeMap::new();
    for item in items {
        by_name.entry(item.name()).or_default().push(item);
    }
    for (name, items) in by_name {
        // Items were taken from events of `name`, so this cannot fail; nothing is lost if it did.
        if let Ok(e) = crate::stamp::event_at(name, items, time) {
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use std::time::{Duration, UNIX_EPOCH};
    use twinguard_core::config::validate_config_object;
    use twinguard_core::event::{ConnectionCreate, ExtraDetails, ProcessCreate, ProcessTerminate, Protocol};

    const T0: u64 = 1_800_000_000_000;

    fn config(json: serde_json::Value) -> Config {
        validate_config_object(Some(&json), "").config.unwrap()
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn event(item: PayloadItem, wall_ms: u64) -> Event {
        crate::stamp::event_at(
            item.name(),
            vec![item],
            Timestamp::with_offset(at(wall_ms), FixedOffset::east_opt(0).unwrap()),
        )
        .unwrap()
    }

    fn create(pid: u32, args: &str) -> PayloadItem {
        ProcessCreate {
            executable: "/usr/bin/curl".into(),
            process_id: pid,
            parent_process_id: 1,
            user_id: "0".into(),
            user_name: Some("root".into()),
            command_line: format!("curl {args}"),
            extra_details: ExtraDetails::new(),
        }
        .into()
    }

    fn conn(direction: Direction, local: u16, remote: u16, pid: u32) -> PayloadItem {
        ConnectionCreate {
            remote_address: "192.0.2.1".parse().unwrap(),
            remote_port: remote.to_string(),
            local_address: Some("10.0.0.2".parse().unwrap()),
            local_port: Some(local.to_string()),
            direction,
            protocol: Protocol::Tcp,
            process_id: pid,
            user_id: Some("0".into()),
            executable: "/usr/sbin/app".into(),
            command_line: None,
            extra_details: ExtraDetails::new(),
        }
        .with_extra("AuditEventId", format!("1.0:{pid}"))
        .into()
    }

    fn json(e: &Event) -> serde_json::Value {
        serde_json::from_slice(&e.to_json()).unwrap()
    }

    fn minute_config() -> Config {
        config(serde_json::json!({
            "aggregationIntervalProcessCreate": {"value": "PT1M"},
            "aggregationIntervalConnectionCreate": {"value": "PT1M"},
            "aggregationEnabledProcessTerminate": {"value": false}
        }))
    }

    #[test]
    fn execs_that_differ_in_their_exec_facts_are_not_folded_together() {
        let mut a = Aggregator::default();
        a.apply_config(&minute_config());
        let with = |pid: u32, key: &str, value: &str| match create(pid, "x") {
            PayloadItem::ProcessCreate(p) => PayloadItem::from(p.with_extra(key, value)),
            other => other,
        };
        a.offer(event(with(10, "Stdin", "tty"), T0), 1000);
        a.offer(event(with(11, "Stdin", "tty"), T0 + 1_000), 2000);
        a.offer(event(with(12, "Stdin", "socket"), T0 + 2_000), 3000);
        a.offer(event(with(13, "ContainerId", "c"), T0 + 3_000), 4000);
        let out = a.flush_all(at(T0 + 60_000));
        let items: Vec<serde_json::Value> = out
            .iter()
            .flat_map(|e| json(e)["Payload"].as_array().cloned().unwrap_or_default())
            .collect();
        let mut hits: Vec<(String, String)> = items
            .iter()
            .map(|item| {
                let extra = &item["ExtraDetails"];
                let fact = ["Stdin", "ContainerId"]
                    .iter()
                    .find_map(|k| extra[*k].as_str().map(|v| format!("{k}={v}")))
                    .unwrap();
                (fact, extra["HitCount"].as_str().unwrap_or("1").to_owned())
            })
            .collect();
        hits.sort();
        assert_eq!(
            hits,
            [
                ("ContainerId=c".to_owned(), "1".to_owned()),
                ("Stdin=socket".to_owned(), "1".to_owned()),
                ("Stdin=tty".to_owned(), "2".to_owned())
            ]
        );
    }

    #[test]
    fn identical_events_in_one_interval_become_one_item() {
        let mut a = Aggregator::default();
        a.apply_config(&minute_config());
        assert!(a.offer(event(create(10, "x"), T0), 1000).is_empty());
        assert!(a.offer(event(create(11, "x"), T0 + 5_000), 6000).is_empty());
        assert!(a.offer(event(create(12, "y"), T0 + 7_000), 8000).is_empty());
        assert!(a.offer(event(create(13, "x"), T0 + 9_000), 10_000).is_empty());
        assert_eq!(a.next_deadline(), Some(61_000));
        assert!(a.flush_due(60_999, at(T0 + 60_000)).is_empty());
        let out = a.flush_due(61_000, at(T0 + 60_000));
        assert_eq!(out.len(), 1);
        let v = json(&out[0]);
        assert_eq!(v["Name"], "ProcessCreate");
        let item = &v["Payload"][0];
        assert_eq!(item["ExtraDetails"]["HitCount"], "3");
        assert_eq!(item["ExtraDetails"]["StartTimeUtc"], "2027-01-15T08:00:00.000Z");
        assert_eq!(item["ExtraDetails"]["EndTimeUtc"], "2027-01-15T08:00:09.000Z");
        assert_eq!(
            (item["ProcessId"].as_u64(), item["ParentProcessId"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(item["CommandLine"], "curl x");
        assert_eq!(a.next_deadline(), Some(68_000));
        // A single hit keeps its pids: it stands for exactly one process.
        let single = a.flush_due(68_000, at(T0 + 70_000));
        let item = &json(&single[0])["Payload"][0];
        assert_eq!(
            (
                item["ProcessId"].as_u64(),
                item["ExtraDetails"]["HitCount"].as_str()
            ),
            (Some(12), Some("1"))
        );
        assert_eq!(a.next_deadline(), None);
        // The next identical event opens a new window.
        a.offer(event(create(14, "x"), T0 + 80_000), 80_000);
        assert_eq!(a.next_deadline(), Some(140_000));
    }

    #[test]
    fn disabled_types_pass_through_unchanged() {
        let mut a = Aggregator::default();
        a.apply_config(&minute_config());
        let term = ProcessTerminate {
            executable: "/bin/true".into(),
            process_id: 5,
            exit_status: 0,
            extra_details: ExtraDetails::new(),
        };
        let e = event(term.into(), T0);
        let id = e.id();
        let out = a.offer(e, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id(), id);
        let login = twinguard_core::event::Login {
            process_id: 1,
            user_id: None,
            user_name: "root".into(),
            operation: "login".into(),
            executable: "/bin/login".into(),
            remote_address: None,
            remote_port: None,
            local_port: None,
            result: twinguard_core::event::LoginResult::Success,
            extra_details: ExtraDetails::new(),
        };
        assert_eq!(
            a.offer(event(login.into(), T0), 0).len(),
            1,
            "Login is never aggregated"
        );
        // Before any configuration, nothing is aggregated.
        let mut fresh = Aggregator::default();
        assert_eq!(fresh.offer(event(create(1, "x"), T0), 0).len(), 1);
    }

    #[test]
    fn connections_key_on_the_service_port_and_star_the_other() {
        let mut a = Aggregator::default();
        a.apply_config(&minute_config());
        // Out to port 443 from three ephemeral ports: one window.
        for (i, local) in [40000u16, 40001, 40002].into_iter().enumerate() {
            a.offer(
                event(conn(Direction::Out, local, 443, 100 + i as u32), T0 + i as u64),
                0,
            );
        }
        // In on port 22 from two clients' ports: one window; another service port: another.
        a.offer(event(conn(Direction::In, 22, 50000, 7), T0), 0);
        a.offer(event(conn(Direction::In, 22, 50001, 7), T0), 0);
        a.offer(event(conn(Direction::In, 80, 50002, 8), T0), 0);
        let out = a.flush_all(at(T0 + 1000));
        let items = json(&out[0])["Payload"].as_array().unwrap().clone();
        assert_eq!(items.len(), 3);
        let o = items.iter().find(|i| i["Direction"] == "Out").unwrap();
        assert_eq!(
            (o["LocalPort"].as_str(), o["RemotePort"].as_str()),
            (Some("*"), Some("443"))
        );
        assert_eq!(o["ExtraDetails"]["HitCount"], "3");
        assert!(o["ExtraDetails"].get("AuditEventId").is_none());
        assert_eq!(o["ProcessId"], 0);
        let ssh = items.iter().find(|i| i["LocalPort"] == "22").unwrap();
        assert_eq!(
            (
                ssh["RemotePort"].as_str(),
                ssh["ExtraDetails"]["HitCount"].as_str()
            ),
            (Some("*"), Some("2"))
        );
        let web = items.iter().find(|i| i["LocalPort"] == "80").unwrap();
        assert_eq!(
            (web["RemotePort"].as_str(), web["ProcessId"].as_u64()),
            (Some("50002"), Some(8))
        );
        assert_eq!(a.open_windows(), 0);
    }

    #[test]
    fn the_key_count_is_capped_by_flushing_the_oldest_window_early() {
        let mut a = Aggregator::new(2);
        a.apply_config(&minute_config());
        assert!(a.offer(event(create(1, "a"), T0), 0).is_empty());
        assert!(a.offer(event(create(2, "b"), T0 + 1), 1).is_empty());
        assert!(
            a.offer(event(create(3, "a"), T0 + 2), 2).is_empty(),
            "an existing key"
        );
        let early = a.offer(event(create(4, "c"), T0 + 3), 3);
        assert_eq!(early.len(), 1);
        let item = &json(&early[0])["Payload"][0];
        assert_eq!(
            (
                item["CommandLine"].as_str(),
                item["ExtraDetails"]["HitCount"].as_str()
            ),
            (Some("curl a"), Some("2"))
        );
        assert_eq!(a.open_windows(), 2);
    }

    #[test]
    fn configuration_changes_move_deadlines() {
        let mut a = Aggregator::default();
        a.apply_config(&minute_config());
        a.offer(event(create(1, "a"), T0), 1000);
        a.offer(event(conn(Direction::Out, 1, 2, 3), T0), 1000);
        assert_eq!(a.next_deadline(), Some(61_000));
        // A shorter interval: due at opening + 10 s.
        a.apply_config(&config(serde_json::json!({
            "aggregationIntervalProcessCreate": {"value": "PT10S"},
            "aggregationIntervalConnectionCreate": {"value": "PT1M"}
        })));
        assert_eq!(a.next_deadline(), Some(11_000));
        // Aggregation off for connections: their window is due at once.
        a.apply_config(&config(serde_json::json!({
            "aggregationIntervalProcessCreate": {"value": "PT10S"},
            "aggregationEnabledConnectionCreate": {"value": false}
        })));
        assert_eq!(a.next_deadline(), Some(0));
        let out = a.flush_due(2000, at(T0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name(), EventName::ConnectionCreate);
        assert_eq!(
            a.offer(event(conn(Direction::Out, 1, 2, 3), T0), 3000).len(),
            1,
            "now passes through"
        );
    }

    #[test]
    fn flushed_events_conform_to_the_schema_shape() {
        let mut a = Aggregator::default();
        a.apply_config(&Config::default());
        for i in 0..5 {
            a.offer(event(create(i, "z"), T0 + u64::from(i)), 0);
        }
        let out = a.flush_all(at(T0 + 10));
        let back = Event::from_json(&out[0].to_json()).unwrap();
        assert_eq!(back.payload().len(), 1);
        assert_eq!(
            back.payload()[0]
                .extra_details()
                .get("HitCount")
                .map(String::as_str),
            Some("5")
        );
    }

    proptest::proptest! {
        /// Nothing is lost or counted twice: the hit counts of everything emitted add up to the
        /// events offered, and no more than the cap of windows is ever open.
        #[test]
        fn hits_are_conserved_and_windows_bounded(
            ops in proptest::collection::vec((0u8..6, 0u64..5_000, proptest::bool::ANY), 1..200),
            cap in 1usize..5,
        ) {
            let mut a = Aggregator::new(cap);
            a.apply_config(&config(serde_json::json!({"aggregationIntervalProcessCreate": {"value": "PT2S"}})));
            let mut now = 0u64;
            let mut emitted = Vec::new();
            for (arg, step, flush) in &ops {
                now += step;
                emitted.extend(a.offer(event(create(1, &arg.to_string()), T0 + now), now));
                if *flush {
                    emitted.extend(a.flush_due(now, at(T0 + now)));
                }
                proptest::prop_assert!(a.open_windows() <= cap);
                if *flush {
                    proptest::prop_assert!(a.next_deadline().is_none_or(|d| d > now), "a due window was left open");
                }
            }
            emitted.extend(a.flush_all(at(T0 + now)));
            let hits: u64 = emitted
                .iter()
                .flat_map(|e| e.payload().iter())
                .map(|i| i.extra_details()["HitCount"].parse::<u64>().unwrap())
                .sum();
            proptest::prop_assert_eq!(hits, ops.len() as u64);
        }
    }
}
