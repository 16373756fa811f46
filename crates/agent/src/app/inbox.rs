//! What reaches the run loop through its one bounded channel: events and snapshot results from
//! the collectors, status changes, and the signal thread's stop request. Its own module so the
//! run loop and the threads that feed it ([`super::signals`], [`super::snapshots`],
//! [`super::streams`]) all depend on it and not on each other.

use std::time::SystemTime;

use crate::collect::{CollectError, EventBatch};
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{Event, EventName, PayloadItem};

/// What reaches the run loop.
#[derive(Debug)]
pub(crate) enum RunInput {
    /// An event from a stream collector.
    Event(Event),
    /// A burst of events from a stream collector, handed over at once.
    Events(EventBatch),
    /// A synthetic event, whose id is logged once the cache has it.
    Synthetic(Event),
    /// A snapshot collector's result.
    Snapshot {
        /// The collector.
        name: EventName,
        /// Its items, or why it failed.
        result: Result<Vec<PayloadItem>, CollectError>,
        /// What it uses.
        status: CollectorStatus,
        /// When it ran.
        wall: SystemTime,
    },
    /// A stream collector's status changed.
    Status(EventName, CollectorStatus),
    /// A problem of the agent's own, for a Diagnostic event (a collector's source degraded).
    Diagnostic(String),
    /// Stop (the signal's name).
    Shutdown(&'static str),
}
