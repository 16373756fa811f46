//! Stream collectors: sources that run in their own thread and send events as things happen
//! (process connector, audit, wtmp). They know nothing of the cache or transports: they hand
//! events to an [`EventSink`], which never blocks, and watch a [`StopSignal`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{Event, EventName};

use super::CollectError;

/// Where a stream collector sends events: the agent's bounded input channel. `send` never
/// blocks (a collector must keep draining its kernel socket); an event that finds the channel
/// full is counted as a loss, reported in `reported.twinguard` and DroppedEventsStatistics.
#[derive(Clone)]
pub struct EventSink {
    deliver: Arc<dyn Fn(Event) -> bool + Send + Sync>,
    /// Hands several events over at once; false when the batch could not be taken.
    deliver_batch: Option<Arc<dyn Fn(EventBatch) -> bool + Send + Sync>>,
    /// Events in batches handed over and not yet taken by the agent.
    in_batches: Arc<AtomicUsize>,
    losses: Arc<AtomicU64>,
    /// The event names not Off in the configuration in force, one bit per
    /// [`EventName::ALL`] index (all set until the agent says otherwise).
    wanted: Arc<AtomicU64>,
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
            deliver_batch: None,
            in_batches: Arc::new(AtomicUsize::new(0)),
            losses: Arc::new(AtomicU64::new(0)),
            wanted: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// Adds a way to hand over several events at once (one channel message for a burst);
    /// `deliver` returns false when the batch could not be taken.
    pub(crate) fn with_batches(
        mut self,
        deliver: impl Fn(EventBatch) -> bool + Send + Sync + 'static,
    ) -> EventSink {
        self.deliver_batch = Some(Arc::new(deliver));
        self
    }

    /// Hands events to the agent, at once when the sink takes batches (and fewer than
    /// [`MAX_IN_BATCHES`] events wait in batches: the memory bound), else one by one; the ones
    /// that could not be taken are counted as losses. Returns how many were taken.
    pub(crate) fn send_all(&self, events: Vec<Event>) -> usize {
        let n = events.len();
        match &self.deliver_batch {
            Some(deliver) if n > 1 && self.in_batches.load(Ordering::Relaxed) + n <= MAX_IN_BATCHES => {
                self.in_batches.fetch_add(n, Ordering::Relaxed);
                let batch = EventBatch {
                    events,
                    counted: n,
                    in_batches: self.in_batches.clone(),
                };
                if deliver(batch) {
                    n
                } else {
                    // The batch was dropped (its count given back): all of it is lost.
                    self.losses.fetch_add(n as u64, Ordering::Relaxed);
                    0
                }
            }
            _ => {
                let mut taken = 0;
                for e in events {
                    taken += usize::from(self.send(e));
                }
                taken
            }
        }
    }

    /// Whether `name` is wanted (not Off) in the configuration in force: a collector making
    /// several events skips the work of the ones nobody wants.
    pub(crate) fn wants(&self, name: EventName) -> bool {
        let bit = EventName::ALL.iter().position(|n| *n == name).unwrap_or(63);
        self.wanted.load(Ordering::Relaxed) & (1 << bit) != 0
    }

    /// Tells the collectors behind this sink which events are wanted.
    pub(crate) fn set_wanted(&self, wanted: impl Fn(EventName) -> bool) {
        let mut bits = 0u64;
        for (i, n) in EventName::ALL.iter().enumerate() {
            if wanted(*n) {
                bits |= 1 << i;
            }
        }
        self.wanted.store(bits, Ordering::Relaxed);
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
    pub(crate) fn count_losses(&self, n: u64) {
        self.losses.fetch_add(n, Ordering::Relaxed);
    }

    /// Events lost so far.
    pub(crate) fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }
}

/// Most events waiting in batches handed over by one sink (beside the channel's own bound).
pub(crate) const MAX_IN_BATCHES: usize = 4096;

/// Events handed over at once; the sink's count of waiting events drops when it is dropped.
#[derive(Debug)]
pub struct EventBatch {
    /// The events, in order.
    pub events: Vec<Event>,
    counted: usize,
    in_batches: Arc<AtomicUsize>,
}

impl EventBatch {
    /// Takes the events out (the batch no longer counts as waiting).
    pub fn take(mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

impl Drop for EventBatch {
    fn drop(&mut self) {
        self.in_batches.fetch_sub(self.counted, Ordering::Relaxed);
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
    pub(crate) fn is_stopped(&self) -> bool {
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
