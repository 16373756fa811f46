//! Stream collectors: sources that run in their own thread and send events as things happen
//! (process connector, audit, wtmp). They know nothing of the cache or transports: they hand
//! events to an [`EventSink`], which never blocks, and watch a [`StopSignal`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::CollectorStatus;
use crate::event::{Event, EventName};

use super::CollectError;

/// Where a stream collector sends events: the agent's bounded input channel. `send` never
/// blocks (a collector must keep draining its kernel socket); an event that finds the channel
/// full is counted as a loss, reported in `reported.twinguard` and DroppedEventsStatistics.
#[derive(Clone)]
pub struct EventSink {
    deliver: Arc<dyn Fn(Event) -> bool + Send + Sync>,
    losses: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("losses", &self.losses())
            .finish()
    }
}

impl EventSink {
    /// A sink over `deliver`, which returns false when the event could not be taken.
    pub fn new(deliver: impl Fn(Event) -> bool + Send + Sync + 'static) -> EventSink {
        EventSink {
            deliver: Arc::new(deliver),
            losses: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands an event to the agent; false (and a counted loss) when the channel is full.
    pub fn send(&self, event: Event) -> bool {
        let taken = (self.deliver)(event);
        if !taken {
            self.losses.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Counts losses that happened before the sink (e.g. kernel socket overruns), so they are
    /// reported with the others.
    pub fn count_losses(&self, n: u64) {
        self.losses.fetch_add(n, Ordering::Relaxed);
    }

    /// Events lost so far.
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }
}

/// Tells a stream collector to stop; it checks [`StopSignal::is_stopped`] at least every
/// 250 ms (e.g. with a receive timeout on its socket).
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// A signal not yet raised.
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// Raises the signal.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the collector should stop.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stream collector. `run` is called in a thread of its own and returns when `stop` is raised
/// (Ok) or when its source fails for good (Err: the agent reports it and retries with backoff).
pub trait StreamCollector: Send {
    /// The events it produces (the process connector makes ProcessCreate and ProcessTerminate).
    fn names(&self) -> &[EventName];

    /// Runs until stopped.
    fn run(&mut self, sink: &EventSink, stop: &StopSignal) -> Result<(), CollectError>;

    /// What source it uses, whether that is a fallback, and notes for the operator.
    fn status(&self) -> CollectorStatus;
}
