//! Supervision of stream collectors: each runs in its own thread while at least one of its
//! events is not Off; a failure is reported and retried with exponential backoff; a change of
//! priorities starts or stops them.

use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use super::inbox::RunInput;
use crate::backoff::{Backoff, Jitter};
use crate::collect::{CollectError, EventSink, StopSignal, StreamCollector};
use twinguard_core::config::{CollectorStatus, Config};
use twinguard_core::event::{EventName, Priority};

/// Retry delays after a collector failed: 1 s doubling to 5 min, each jittered down to as
/// little as half.
const RETRY: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(300),
    jitter: Jitter::UpperHalf,
};

struct Running {
    stop: StopSignal,
    /// The thread gives the collector back when it ends, so it can be started again.
    handle: JoinHandle<Box<dyn StreamCollector>>,
}

/// One stream collector slot.
struct Slot {
    names: Vec<EventName>,
    /// The collector while it is not running.
    idle: Option<Box<dyn StreamCollector>>,
    running: Option<Running>,
    sink: EventSink,
}

/// All stream collectors.
pub(crate) struct Streams {
    slots: Vec<Slot>,
    tx: SyncSender<RunInput>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Streams {
    /// Takes the collectors; none runs until [`Streams::apply`].
    pub fn new(collectors: Vec<Box<dyn StreamCollector>>, tx: SyncSender<RunInput>) -> Streams {
        let slots = collectors
            .into_iter()
            .map(|c| {
                let tx = tx.clone();
                Slot {
                    names: c.names().to_vec(),
                    idle: Some(c),
                    running: None,
                    sink: {
                        let batches = tx.clone();
                        EventSink::new(move |event| tx.try_send(RunInput::Event(event)).is_ok())
                            .with_batches(move |batch| batches.try_send(RunInput::Events(batch)).is_ok())
                    },
                }
            })
            .collect();
        Streams { slots, tx }
    }

    /// Starts the collectors whose events are wanted and stops the others.
    pub(crate) fn apply(&mut self, config: &Config) {
        for slot in &mut self.slots {
            slot.sink.set_wanted(|n| config.priority(n) != Priority::Off);
            let wanted = slot.names.iter().any(|n| config.priority(*n) != Priority::Off);
            if wanted && slot.running.is_none() {
                if let Some(collector) = slot.idle.take() {
                    slot.running = spawn(collector, slot.sink.clone(), self.tx.clone());
                }
            } else if !wanted {
                if let Some(running) = slot.running.take() {
                    running.stop.stop();
                    if let Ok(collector) = running.handle.join() {
                        slot.idle = Some(collector);
                    }
                }
            }
        }
    }

    /// Events lost so far by each collector's sink (channel full, kernel overruns), with the
    /// collector's event names (the first one's priority counts them).
    pub(crate) fn losses(&self) -> Vec<(&[EventName], u64)> {
        self.slots
            .iter()
            .filter(|s| !s.names.is_empty())
            .map(|s| (s.names.as_slice(), s.sink.losses()))
            .collect()
    }

    /// Stops every collector and waits for them (each checks its stop signal every 250 ms).
    pub(crate) fn stop_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(running) = &slot.running {
                running.stop.stop();
            }
        }
        for slot in &mut self.slots {
            if let Some(running) = slot.running.take() {
                if let Ok(collector) = running.handle.join() {
                    slot.idle = Some(collector);
                }
            }
        }
    }
}

fn spawn(collector: Box<dyn StreamCollector>, sink: EventSink, tx: SyncSender<RunInput>) -> Option<Running> {
    let stop = StopSignal::new();
    let thread_stop = stop.clone();
    let name = collector.names().first().map(|n| n.as_str()).unwrap_or("stream");
    let spawned = std::thread::Builder::new()
        .name(format!("collect-{name}"))
        .spawn(move || {
            let mut collector = collector;
            supervise(collector.as_mut(), &sink, &thread_stop, &tx);
            collector
        });
    match spawned {
        Ok(handle) => Some(Running { stop, handle }),
        Err(e) => {
            warn!("cannot start a collector thread: {e}");
            None
        }
    }
}

fn supervise(
    collector: &mut dyn StreamCollector,
    sink: &EventSink,
    stop: &StopSignal,
    tx: &SyncSender<RunInput>,
) {
    let mut failures = 0u32;
    let names = collector.names().to_vec();
    let report = |status: CollectorStatus| {
        for name in &names {
            let _ = tx.send(RunInput::Status(*name, status.clone()));
        }
    };
    while !stop.is_stopped() {
        let mut status = collector.status();
        status.losses = sink.losses();
        report(status);
        match collector.run(sink, stop) {
            Ok(()) => break,
            Err(CollectError::SourceChanged { source_name, why }) => {
                // Not a failure: the collector ended to start again at once on a better
                // source; the status reported at the top of the loop says which.
                info!("collector leaves {source_name}: {why}");
                failures = 0;
            }
            Err(CollectError::Degraded { source_name, why }) => {
                // The collector switched to its fallback; the status reported at the top of
                // the loop says which and why; the operator also gets a Diagnostic.
                warn!("collector leaves {source_name}: {why}");
                let name = names.first().map(|n| n.as_str()).unwrap_or("stream");
                let _ = tx.send(RunInput::Diagnostic(format!("{name}: {source_name}: {why}")));
                failures = 0;
            }
            Err(e) => {
                let mut status = collector.status();
                status.last_error = Some(e.to_string());
                status.losses = sink.losses();
                report(status);
                let delay = RETRY.delay(failures);
                failures = failures.saturating_add(1);
                warn!("collector failed, retrying in {:.1} s: {e}", delay.as_secs_f64());
                let mut waited = Duration::ZERO;
                while waited < delay && !stop.is_stopped() {
                    std::thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                }
            }
        }
    }
}
