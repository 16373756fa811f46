//! One event of a security message: its envelope (`Id`, timestamps, `Category`, `Name`,
//! `EventType`, `IsEmpty`, `PayloadSchemaVersion`, `Payload`), its compact JSON, and splitting
//! an event too large for one message into several of the same name.
//!
//! An `Event` is valid by construction: its items all belong to its name, and a Triggered event
//! has at least one item. `IsEmpty`, `Category` and `EventType` are derived from the name and the
//! payload, never stored, so they cannot disagree with them.

use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use std::io;
use uuid::Uuid;

use super::name::{Category, EventName, EventType};
use super::payload::{EventPayload, PayloadItem};
use super::timestamp::Timestamp;

/// `PayloadSchemaVersion` of every event we write.
pub const PAYLOAD_SCHEMA_VERSION: &str = "1.0";

/// Why an event could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A Triggered event must carry at least one payload item (schema: `minItems: 1`).
    #[error("a {name} event is Triggered and needs at least one payload item")]
    EmptyTriggered {
        /// The event name.
        name: EventName,
    },
    /// An item of another event was put into this one.
    #[error("payload item {index} is a {item} item, not a {event} item")]
    ForeignItem {
        /// The event being built.
        event: EventName,
        /// Position of the item in the payload.
        index: usize,
        /// The event the item belongs to.
        item: EventName,
    },
    /// The JSON text is not an event (syntax, a missing or unknown member, a wrong type).
    #[error("not an event: {0}")]
    Json(#[from] serde_json::Error),
    /// A member has a value the schema or SPEC §4 does not allow.
    #[error("not an event: {member}: {problem}")]
    Invalid {
        /// The member, e.g. `TimestampUTC`.
        member: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// One event: a name, a time, and the payload items of that name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    id: Uuid,
    name: EventName,
    time: Timestamp,
    payload: Vec<PayloadItem>,
}

/// What [`Event::split_to_fit`] made of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitOutcome {
    /// Events of the original name, each serializing to at most the size asked for, holding
    /// the fitting items in their original order. Empty when nothing fits.
    pub events: Vec<Event>,
    /// Items too large to fit in an event even alone, in their original order. The caller
    /// drops, counts and explains them (SPEC §5).
    pub too_large: Vec<PayloadItem>,
}

impl Event {
    /// An event of the items' own name (`T::NAME`) with a given `Id` and time. Cannot mix
    /// names; fails only for a Triggered name with no items.
    pub fn from_items<T: EventPayload>(
        id: Uuid,
        items: impl IntoIterator<Item = T>,
        time: Timestamp,
    ) -> Result<Event, EventError> {
        Event::with_id(id, T::NAME, items.into_iter().map(Into::into).collect(), time)
    }

    /// An event of `name` holding `items`, with the given `Id` and time (the core reads no
    /// clock and draws no random ids: the agent's `stamp` module gives fresh v4 ids and the
    /// local time).
    ///
    /// A Periodic event with no items is an empty snapshot (`IsEmpty: true`, `Payload: []`);
    /// a Triggered one is an error, as is an item of another name.
    pub fn with_id(
        id: Uuid,
        name: EventName,
        items: Vec<PayloadItem>,
        time: Timestamp,
    ) -> Result<Event, EventError> {
        if items.is_empty() && name.category() == Category::Triggered {
            return Err(EventError::EmptyTriggered { name });
        }
        if let Some((index, item)) = items.iter().enumerate().find(|(_, i)| i.name() != name) {
            return Err(EventError::ForeignItem {
                event: name,
                index,
                item: item.name(),
            });
        }
        Ok(Event {
            id,
            name,
            time,
            payload: items,
        })
    }

    /// `Id`.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// `Name`.
    pub fn name(&self) -> EventName {
        self.name
    }

    /// `Category`, from the name.
    pub fn category(&self) -> Category {
        self.name.category()
    }

    /// `EventType`, from the name.
    pub fn event_type(&self) -> EventType {
        self.name.event_type()
    }

    /// `IsEmpty`: true only for a Periodic event with no items.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// The instant of `TimestampLocal` / `TimestampUTC`.
    pub fn time(&self) -> Timestamp {
        self.time
    }

    /// `Payload`.
    pub fn payload(&self) -> &[PayloadItem] {
        &self.payload
    }

    /// Takes the payload items out.
    pub fn into_payload(self) -> Vec<PayloadItem> {
        self.payload
    }

    /// The compact JSON of the event, as it appears inside a message's `Events` array.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        // Cannot fail: writing to a Vec does not fail, every map key is a string, and no
        // Serialize impl of the event types returns an error.
        if let Err(e) = serde_json::to_writer(&mut out, self) {
            unreachable!("serializing an event failed: {e}");
        }
        out
    }

    /// The length of [`Event::to_json`], computed without keeping the bytes.
    pub fn json_len(&self) -> usize {
        json_len(self)
    }

    /// Reads an event back from its JSON (as [`Event::to_json`] writes it, or another agent's
    /// v1.0 event), checking what the schema checks on the envelope.
    pub fn from_json(json: &[u8]) -> Result<Event, EventError> {
        Event::from_raw(serde_json::from_slice(json)?)
    }

    /// [`Event::from_json`] over an already parsed JSON value (a member of a message's
    /// `Events`), without writing it out and parsing it again.
    pub fn from_value(value: serde_json::Value) -> Result<Event, EventError> {
        Event::from_raw(serde_json::from_value(value)?)
    }

    fn from_raw(raw: RawEvent) -> Result<Event, EventError> {
        let invalid = |member, problem: String| EventError::Invalid { member, problem };
        let name = EventName::parse(&raw.name)
            .ok_or_else(|| invalid("Name", format!("unknown event name {:?}", raw.name)))?;
        let id = parse_guid(&raw.id).ok_or_else(|| invalid("Id", format!("{:?}", raw.id)))?;
        let time = Timestamp::parse_rfc3339(&raw.timestamp_local).ok_or_else(|| {
            invalid(
                "TimestampLocal",
                format!("not RFC 3339 with milliseconds: {:?}", raw.timestamp_local),
            )
        })?;
        let utc = Timestamp::parse_rfc3339(&raw.timestamp_utc).ok_or_else(|| {
            invalid(
                "TimestampUTC",
                format!("not RFC 3339 with milliseconds: {:?}", raw.timestamp_utc),
            )
        })?;
        if utc.millis_since_epoch() != time.millis_since_epoch() {
            return Err(invalid(
                "TimestampUTC",
                "not the instant of TimestampLocal".into(),
            ));
        }
        let expect = |member, found: &str, want: &str| {
            if found == want {
                Ok(())
            } else {
                Err(invalid(member, format!("{found:?} where {name} has {want:?}")))
            }
        };
        expect("Category", &raw.category, name.category().as_str())?;
        expect("EventType", &raw.event_type, name.event_type().as_str())?;
        expect(
            "PayloadSchemaVersion",
            &raw.payload_schema_version,
            PAYLOAD_SCHEMA_VERSION,
        )?;
        if raw.is_empty != raw.payload.is_empty() {
            return Err(invalid(
                "IsEmpty",
                format!("{} with {} items", raw.is_empty, raw.payload.len()),
            ));
        }
        let items = raw
            .payload
            .into_iter()
            .map(|v| PayloadItem::from_value(name, v))
            .collect::<Result<Vec<_>, _>>()?;
        Event::with_id(id, name, items, time)
    }

    /// Makes the event fit in `max_event_bytes` of JSON (the message size minus
    /// [`MessageFrame::overhead`](super::MessageFrame::overhead)).
    ///
    /// An event that fits comes back unchanged. Otherwise its items are distributed, in order,
    /// greedily into as few events of the same name as a first-fit pass gives, each with a
    /// fresh `Id` from `new_id` and the original timestamps; an item that does not fit even alone goes to
    /// `too_large`. If even an event with no items exceeds the bound (impossible with the
    /// configuration's minimum message size of 8192), nothing comes back.
    pub fn split_to_fit(self, max_event_bytes: usize, mut new_id: impl FnMut() -> Uuid) -> SplitOutcome {
        if self.json_len() <= max_event_bytes {
            return SplitOutcome {
                events: vec![self],
                too_large: Vec::new(),
            };
        }
        let Event {
            name, time, payload, ..
        } = self;
        // The length of an event of this name and time with an empty, non-empty-flagged payload:
        // ids are all 36 characters, so this holds for every part. `IsEmpty` is `true` when the
        // payload is empty; a part has items and says `false`, one byte longer.
        let bare = Event {
            id: Uuid::nil(),
            name,
            time,
            payload: Vec::new(),
        };
        let base = bare.json_len() - "true".len() + "false".len();

        let mut events = Vec::new();
        let mut too_large = Vec::new();
        let mut part: Vec<PayloadItem> = Vec::new();
        let mut part_len = base;
        for item in payload {
            let item_len = json_len(&item);
            if base + item_len > max_event_bytes {
                too_large.push(item);
                continue;
            }
            // Every item after the first is preceded by a comma.
            let mut added = item_len + usize::from(!part.is_empty());
            if part_len + added > max_event_bytes {
                events.push(Event {
                    id: new_id(),
                    name,
                    time,
                    payload: std::mem::take(&mut part),
                });
                part_len = base;
                added = item_len;
            }
            part.push(item);
            part_len += added;
        }
        if !part.is_empty() {
            events.push(Event {
                id: new_id(),
                name,
                time,
                payload: part,
            });
        }
        debug_assert!(events.iter().all(|e| e.json_len() <= max_event_bytes));
        SplitOutcome { events, too_large }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Field names and order exactly as message_v1_0.json lists them.
        let mut s = serializer.serialize_struct("Event", 9)?;
        s.serialize_field(
            "Id",
            self.id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        )?;
        s.serialize_field("TimestampLocal", &self.time.local_rfc3339())?;
        s.serialize_field("TimestampUTC", &self.time.utc_rfc3339())?;
        s.serialize_field("Category", self.category().as_str())?;
        s.serialize_field("Name", self.name.as_str())?;
        s.serialize_field("EventType", self.event_type().as_str())?;
        s.serialize_field("IsEmpty", &self.is_empty())?;
        s.serialize_field("PayloadSchemaVersion", PAYLOAD_SCHEMA_VERSION)?;
        s.serialize_field("Payload", &self.payload)?;
        s.end()
    }
}

/// An event's JSON as read, before its members are checked.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawEvent {
    id: String,
    timestamp_local: String,
    #[serde(rename = "TimestampUTC")]
    timestamp_utc: String,
    category: String,
    name: String,
    event_type: String,
    is_empty: bool,
    payload_schema_version: String,
    payload: Vec<serde_json::Value>,
}

/// A guid as the schema has it: exactly 36 characters, so the hyphenated form.
pub(super) fn parse_guid(text: &str) -> Option<Uuid> {
    (text.len() == 36).then(|| Uuid::parse_str(text).ok()).flatten()
}

/// The length of a value's compact JSON, counted without keeping the bytes.
pub(super) fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = ByteCounter(0);
    // Cannot fail: the counter never errors and our types always serialize.
    if let Err(e) = serde_json::to_writer(&mut counter, value) {
        unreachable!("serializing for length failed: {e}");
    }
    counter.0
}

/// A writer that only counts.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::payload::{
        ConfigurationError, ConfigurationErrorType, DroppedEventsStatistics, ExtraDetails, LocalUsers,
        ProcessCreate, Queue,
    };
    use chrono::FixedOffset;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// A fresh id per call (tests need distinct ids, not random ones).
    fn next_id() -> Uuid {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Uuid::from_u128(u128::from(NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    fn at_wall(name: EventName, items: Vec<PayloadItem>) -> Result<Event, EventError> {
        Event::with_id(next_id(), name, items, Timestamp::with_offset(wall(), plus_one()))
    }

    fn wall() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_893_660_123)
    }

    fn plus_one() -> FixedOffset {
        FixedOffset::east_opt(3600).unwrap()
    }

    fn process(pid: u32, args_len: usize) -> PayloadItem {
        ProcessCreate {
            executable: "/usr/bin/curl".into(),
            process_id: pid,
            parent_process_id: 1,
            user_id: "1000".into(),
            user_name: Some("pi".into()),
            command_line: format!("curl {}", "x".repeat(args_len)),
            extra_details: ExtraDetails::new(),
        }
        .into()
    }

    #[test]
    fn serializes_the_envelope_in_schema_order() {
        let id = Uuid::from_u128(0x072f_3eca_3db0_45ba_8174_fa38_3bc9_3caf);
        let item = ConfigurationError::new("x", ConfigurationErrorType::NotOptimal, "1", "m");
        let time = Timestamp::with_offset(wall(), plus_one());
        let event = Event::with_id(id, EventName::ConfigurationError, vec![item.into()], time).unwrap();
        let text = String::from_utf8(event.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"Id":"072f3eca-3db0-45ba-8174-fa383bc93caf","TimestampLocal":"2026-11-28T20:21:00.123+01:00","TimestampUTC":"2026-11-28T19:21:00.123Z","Category":"Triggered","Name":"ConfigurationError","EventType":"Operational","IsEmpty":false,"PayloadSchemaVersion":"1.0","Payload":[{"ConfigurationName":"x","ErrorType":"NotOptimal","UsedConfiguration":"1","Message":"m"}]}"#
        );
        assert_eq!(event.json_len(), text.len());
        assert_eq!(Event::from_json(text.as_bytes()).unwrap(), event);
    }

    #[test]
    fn an_empty_snapshot_is_flagged_empty_and_a_triggered_event_cannot_be_empty() {
        let snap = at_wall(EventName::LocalUsers, vec![]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&snap.to_json()).unwrap();
        assert_eq!(v["IsEmpty"], true);
        assert_eq!(v["Category"], "Periodic");
        assert_eq!(v["Payload"], serde_json::json!([]));
        assert!(matches!(
            at_wall(EventName::Login, vec![]),
            Err(EventError::EmptyTriggered {
                name: EventName::Login
            })
        ));
    }

    #[test]
    fn typed_items_make_an_event_of_their_name() {
        let stats = vec![
            DroppedEventsStatistics::new(Queue::High, 5, 0),
            DroppedEventsStatistics::new(Queue::Low, 9, 2),
        ];
        let event = Event::from_items(next_id(), stats, Timestamp::with_offset(wall(), plus_one())).unwrap();
        assert_eq!(event.name(), EventName::DroppedEventsStatistics);
        assert_eq!(event.category(), Category::Periodic);
        assert_eq!(event.event_type(), EventType::Operational);
        assert_eq!(event.payload().len(), 2);
        assert!(Event::from_items(
            next_id(),
            Vec::<ConfigurationError>::new(),
            Timestamp::with_offset(wall(), plus_one())
        )
        .is_err());
    }

    #[test]
    fn items_of_another_event_are_refused() {
        let user: PayloadItem = LocalUsers {
            group_ids: "0".into(),
            group_names: "root".into(),
            user_id: "0".into(),
            user_name: "root".into(),
            extra_details: ExtraDetails::new(),
        }
        .into();
        let err = at_wall(EventName::ProcessCreate, vec![process(1, 0), user]);
        assert!(matches!(
            err,
            Err(EventError::ForeignItem {
                index: 1,
                item: EventName::LocalUsers,
                ..
            })
        ));
    }

    #[test]
    fn from_json_checks_the_envelope() {
        let event = at_wall(EventName::ProcessCreate, vec![process(5, 3)]).unwrap();
        let good: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        let broken = |member: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[member] = value;
            Event::from_json(&serde_json::to_vec(&v).unwrap())
        };
        assert!(broken("Category", "Periodic".into()).is_err());
        assert!(broken("IsEmpty", true.into()).is_err());
        assert!(broken("TimestampUTC", "2026-11-28T19:21:00.124Z".into()).is_err());
        assert!(broken("TimestampLocal", "2026-11-28T20:21:00+01:00".into()).is_err());
        assert!(broken("Id", "072f3eca3db045ba8174fa383bc93caf".into()).is_err());
        assert!(broken("Name", "ProcessStart".into()).is_err());
        assert!(broken("Extra", 1.into()).is_err());
        // The same instant written with another offset is fine.
        assert!(broken("TimestampUTC", "2026-11-28T19:21:00.123+00:00".into()).is_ok());
        // From a parsed value: the same event, the same checks.
        assert_eq!(Event::from_value(good.clone()).unwrap(), event);
        let mut bad = good.clone();
        bad["IsEmpty"] = true.into();
        assert!(Event::from_value(bad).is_err());
    }

    #[test]
    fn an_event_that_fits_comes_back_unchanged() {
        let event = at_wall(EventName::ProcessCreate, vec![process(1, 10)]).unwrap();
        let len = event.json_len();
        let out = event.clone().split_to_fit(len, next_id);
        assert_eq!(out.events, vec![event]);
        assert!(out.too_large.is_empty());
    }

    #[test]
    fn splitting_keeps_order_name_and_time_and_sets_aside_huge_items() {
        let items = vec![
            process(1, 100),
            process(2, 100),
            process(3, 5000),
            process(4, 100),
        ];
        let event = at_wall(EventName::ProcessCreate, items).unwrap();
        let original_id = event.id();
        let single = at_wall(EventName::ProcessCreate, vec![process(1, 100)])
            .unwrap()
            .json_len();
        // Room for one 100-byte item per event, not two.
        let out = event.split_to_fit(single + 50, next_id);
        let pids: Vec<Vec<u32>> = out
            .events
            .iter()
            .map(|e| {
                e.payload()
                    .iter()
                    .map(|i| match i {
                        PayloadItem::ProcessCreate(p) => p.process_id,
                        _ => unreachable!(),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(pids, vec![vec![1], vec![2], vec![4]]);
        assert_eq!(out.too_large.len(), 1);
        for e in &out.events {
            assert_eq!(e.name(), EventName::ProcessCreate);
            assert_eq!(e.time(), Timestamp::with_offset(wall(), plus_one()));
            assert_ne!(e.id(), original_id);
            assert!(e.json_len() <= single + 50);
        }
    }

    #[test]
    fn a_snapshot_of_only_huge_items_yields_no_event() {
        let user: PayloadItem = LocalUsers {
            group_ids: "0".into(),
            group_names: "g".repeat(1000),
            user_id: "0".into(),
            user_name: "root".into(),
            extra_details: ExtraDetails::new(),
        }
        .into();
        let event = at_wall(EventName::LocalUsers, vec![user]).unwrap();
        let out = event.split_to_fit(600, next_id);
        assert!(out.events.is_empty());
        assert_eq!(out.too_large.len(), 1);
    }

    proptest! {
        #[test]
        fn split_parts_fit_and_keep_every_item_in_order(
            sizes in proptest::collection::vec(0usize..400, 1..40),
            max in 300usize..2000,
        ) {
            let items: Vec<PayloadItem> =
                sizes.iter().enumerate().map(|(i, &n)| process(i as u32, n)).collect();
            let event = at_wall(EventName::ProcessCreate, items.clone())
                .unwrap();
            let whole = event.json_len();
            let bare_len = {
                let e = at_wall(EventName::ProcessCreate, vec![process(0, 0)])
                    .unwrap();
                e.json_len() - json_len(&process(0, 0))
            };
            let out = event.split_to_fit(max, next_id);
            if whole <= max {
                prop_assert_eq!(out.events.len(), 1);
            }
            let mut kept = Vec::new();
            for e in &out.events {
                let bytes = e.to_json();
                prop_assert_eq!(bytes.len(), e.json_len());
                prop_assert!(bytes.len() <= max);
                prop_assert!(!e.is_empty());
                kept.extend(e.payload().iter().cloned());
            }
            for item in &out.too_large {
                prop_assert!(bare_len + json_len(item) > max);
            }
            // Kept items and set-aside items, merged back by position, are the original list.
            let mut kept_iter = kept.into_iter().peekable();
            let mut large_iter = out.too_large.into_iter().peekable();
            for item in items {
                if kept_iter.peek() == Some(&item) {
                    kept_iter.next();
                } else {
                    prop_assert_eq!(large_iter.next(), Some(item));
                }
            }
            prop_assert!(kept_iter.next().is_none() && large_iter.next().is_none());
            // Greedy: no two neighbouring parts could have been one.
            for pair in out.events.windows(2) {
                let joined = pair[0].json_len() + pair[1].json_len() - bare_len + 1;
                prop_assert!(joined > max);
            }
        }
    }
}
