//! What the pure event model takes as parameters, read here from the system: fresh v4 event
//! ids and the local UTC offset of an instant (the system time zone, through `chrono::Local`).

use std::time::SystemTime;

use chrono::{Local, Offset, TimeZone, Utc};
use twinguard_core::event::{Event, EventError, EventName, EventPayload, PayloadItem, Timestamp, Uuid};

/// A fresh random (v4) event id.
pub fn new_id() -> Uuid {
    Uuid::new_v4()
}

/// The instant `wall` shown with the machine's local offset at that instant.
pub(crate) fn local_time(wall: SystemTime) -> Timestamp {
    // The clamped instant (years 1..=9999), so chrono can always represent it.
    let millis = Timestamp::with_offset(wall, Utc.fix()).millis_since_epoch();
    let offset = match Utc.timestamp_millis_opt(millis).single() {
        Some(utc) => Local.offset_from_utc_datetime(&utc.naive_utc()).fix(),
        None => Utc.fix(),
    };
    Timestamp::with_offset(wall, offset)
}

/// An event of `name` holding `items`, at an already computed time, with a fresh id.
pub(crate) fn event_at(
    name: EventName,
    items: Vec<PayloadItem>,
    time: Timestamp,
) -> Result<Event, EventError> {
    Event::with_id(new_id(), name, items, time)
}

/// An event of `name` holding `items`, stamped with the wall-clock time `wall` in the
/// machine's local offset, with a fresh id.
pub fn new_event(name: EventName, items: Vec<PayloadItem>, wall: SystemTime) -> Result<Event, EventError> {
    event_at(name, items, local_time(wall))
}

/// An event of the items' own name, stamped like [`new_event`].
pub fn event_from_items<T: EventPayload>(
    items: impl IntoIterator<Item = T>,
    wall: SystemTime,
) -> Result<Event, EventError> {
    Event::from_items(new_id(), items, local_time(wall))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn local_uses_a_whole_minute_offset() {
        let t = local_time(UNIX_EPOCH + Duration::from_millis(1_795_893_660_123));
        assert_eq!(t.offset_secs() % 60, 0);
        assert_eq!(t.utc_rfc3339(), "2026-11-28T19:21:00.123Z");
    }

    #[test]
    fn fresh_ids_differ() {
        assert_ne!(new_id(), new_id());
    }
}
