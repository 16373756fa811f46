//! The pipeline's decisions (SPEC §5): give each event its priority, split what cannot fit a
//! message, keep events in the cache, decide when a message is due, pack it up to
//! `maxMessageSizeInBytes` on the exact body bytes, and count everything for the statistics
//! events. Time is a parameter (monotonic milliseconds, wall clock for timestamps): the tests
//! drive it in milliseconds, deterministically.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::cache::{Cache, CacheCounters, CacheError, Carry, DropReason, EntryId, PushOutcome};
use crate::backoff::{Backoff, Jitter};
use twinguard_core::config::Config;
use twinguard_core::event::{
    Diagnostic, DiagnosticSeverity, DroppedEventsStatistics, Event, EventName, MessageFrame,
    MessageStatistics, PayloadItem, Priority, Queue,
};

/// Timers run at most once per second, whatever the configuration says (SPEC §2).
pub const MIN_TIMER_MS: u64 = 1000;
/// Retry delays after failed deliveries: 1 s doubled per failure up to 60 s, each plus up to a
/// quarter, so a fleet does not retry in lockstep after a broker outage.
pub const RETRY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter: Jitter::UpToAQuarterMore,
};
/// At most this many Diagnostic events per minute; the rest are counted and summarised.
pub const DIAGNOSTICS_PER_MINUTE: u32 = 10;

/// A message ready to be delivered: its events are pinned in the cache until
/// [`Pipeline::confirm`] or [`Pipeline::failed`].
#[derive(Debug)]
pub struct Outgoing {
    /// The cache entries in the message.
    pub ids: Vec<EntryId>,
    /// The exact message body.
    pub body: Vec<u8>,
    /// How many events of each name it holds (for the log line).
    pub names: BTreeMap<String, usize>,
}

/// Counts for the period since the last statistics events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodCounts {
    /// Events collected per queue (High, Low).
    pub collected: [u64; 2],
    /// Events dropped per queue (High, Low).
    pub dropped: [u64; 2],
    /// Messages confirmed.
    pub messages_sent: u64,
    /// Messages confirmed whose body was under 4 KB.
    pub messages_under_4kb: u64,
    /// Failed delivery attempts.
    pub failed: u64,
}

impl PeriodCounts {
    /// As the cache's slot carries it to the next run: collected (High, Low), dropped (High,
    /// Low), messages sent, under 4 KB, failed; the eighth number is the drops of a disk-full
    /// episode still open.
    fn to_carry(&self, disk_full_open: u64) -> Carry {
        [
            self.collected[0],
            self.collected[1],
            self.dropped[0],
            self.dropped[1],
            self.messages_sent,
            self.messages_under_4kb,
            self.failed,
            disk_full_open,
        ]
    }

    fn from_carry(c: &Carry) -> PeriodCounts {
        PeriodCounts {
            collected: [c[0], c[1]],
            dropped: [c[2], c[3]],
            messages_sent: c[4],
            messages_under_4kb: c[5],
            failed: c[6],
        }
    }

    fn is_zero(&self) -> bool {
        *self == PeriodCounts::default()
    }
}

/// A time the disk had no room for the cache: its drops, explained by one Diagnostic when it
/// ends (never rate-limited).
#[derive(Clone, Copy, Debug)]
struct DiskFullEpisode {
    dropped: u64,
    /// Whether it began in a previous run (which stopped while the disk was full).
    carried: bool,
}

fn queue_index(p: Priority) -> usize {
    usize::from(p != Priority::High)
}

/// What happened to a submitted event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Submitted {
    /// Events stored (more than one when the event was split).
    pub stored: usize,
    /// Events or payload items dropped, with why.
    pub dropped: Vec<DropReason>,
    /// Entries evicted to make room.
    pub evicted: usize,
}

/// The pipeline state around the cache.
#[derive(Debug)]
pub struct Pipeline {
    cache: Cache,
    config: Config,
    frame: MessageFrame,
    in_flight: Option<Vec<EntryId>>,
    /// Failed deliveries in a row (the attempt of [`RETRY_BACKOFF`]).
    failures: u32,
    retry_at_ms: u64,
    /// The message counts of the current period (its collected/dropped fields are unused:
    /// those come from the cache's counters, see [`Pipeline::period`]).
    period: PeriodCounts,
    /// The cache's cumulative (collected, dropped) of High and Low when the last statistics
    /// event was stored: the start of the current period.
    reported: [(u64, u64); 2],
    /// Items dropped before reaching the cache (too large alone), per queue, cumulative.
    dropped_before_cache: [u64; 2],
    diagnostics: Vec<Diagnostic>,
    diagnostics_window: (u64, u32),
    diagnostics_suppressed: u64,
    jitter_state: u64,
    /// Set when the message size may have shrunk under cached events (start, new config).
    recheck_sizes: bool,
    /// The disk-full episode in progress, if any.
    disk_full: Option<DiskFullEpisode>,
}

impl Pipeline {
    /// A pipeline over a cache just opened, with the configuration in force. Its first
    /// statistics period starts from [`Cache::counters_at_open`] less the previous run's carry.
    pub fn new(mut cache: Cache, config: Config, frame: MessageFrame) -> Pipeline {
        // What the previous run could not store at its stop: its last statistics period
        // (sent with this run's first statistics events) and an open disk-full episode. The
        // counts it carries are in the counters the cache recovered from its files: they are
        // the part of them not yet reported. The period starts there, before the drops the
        // open itself counted (evictions for a smaller cache, lost entries), so those are in
        // this run's first period too.
        let carry = cache.take_carry();
        let carried = PeriodCounts::from_carry(&carry);
        let at_open = cumulative(cache.counters_at_open());
        let reported = [0, 1].map(|q| {
            (
                at_open[q].0.saturating_sub(carried.collected[q]),
                at_open[q].1.saturating_sub(carried.dropped[q]),
            )
        });
        let evictions = cache.set_max_bytes(config.max_local_cache_size_in_bytes);
        let seed = frame.agent_id.as_u128() as u64 | 1;
        let mut p = Pipeline {
            cache,
            config,
            frame,
            in_flight: None,
            failures: 0,
            retry_at_ms: 0,
            period: carried,
            reported,
            dropped_before_cache: [0; 2],
            diagnostics: Vec::new(),
            diagnostics_window: (0, 0),
            diagnostics_suppressed: 0,
            jitter_state: seed,
            recheck_sizes: true,
            disk_full: None,
        };
        if carry[7] > 0 {
            p.disk_full = Some(DiskFullEpisode {
                dropped: carry[7],
                carried: true,
            });
        }
        if let Some(e) = evictions.error {
            p.diagnose(DiagnosticSeverity::Error, format!("cache: {e}"), 0);
        }
        p
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cache's cumulative counters.
    pub fn counters(&self) -> CacheCounters {
        self.cache.counters()
    }

    /// Items dropped before they reached the cache (too large even alone), High and Low.
    pub fn dropped_before_cache(&self) -> [u64; 2] {
        self.dropped_before_cache
    }

    /// Counts events lost before they reached the pipeline (a collector's channel was full,
    /// or the kernel dropped them), so DroppedEventsStatistics and the cache's cumulative
    /// counters (reason `lost`) include them.
    pub fn count_lost(&mut self, priority: Priority, n: u64) {
        self.count_before_cache(priority, DropReason::Lost, n, 0);
    }

    /// Counts drops that never reached the cache in the cache's cumulative counters (and so
    /// in the current statistics period).
    fn count_before_cache(&mut self, priority: Priority, reason: DropReason, n: u64, now_ms: u64) {
        if priority == Priority::Off || n == 0 {
            return;
        }
        self.dropped_before_cache[queue_index(priority)] += n;
        if let Err(e) = self.cache.count_dropped(priority, reason, n) {
            self.diagnose(DiagnosticSeverity::Error, format!("cache: {e}"), now_ms);
        }
    }

    /// The cache, for its disk figures and `sync`.
    pub fn cache_mut(&mut self) -> &mut Cache {
        &mut self.cache
    }

    /// Applies a new valid configuration: priorities apply to events queued from now on, the
    /// timers use the new frequencies at once, a smaller cache evicts.
    pub fn apply_config(&mut self, config: Config) {
        let evictions = self.cache.set_max_bytes(config.max_local_cache_size_in_bytes);
        if let Some(e) = evictions.error {
            self.diagnose(DiagnosticSeverity::Error, format!("cache: {e}"), 0);
        }
        self.config = config;
        self.recheck_sizes = true;
    }

    fn max_message(&self) -> usize {
        usize::try_from(self.config.max_message_size_in_bytes).unwrap_or(usize::MAX)
    }

    /// Queues an event at the priority its name has now. `Off` events are discarded (their
    /// collectors should not run). An event too large for one message is split; a payload item
    /// too large even alone is dropped, counted, and explained in a Diagnostic.
    pub fn submit(&mut self, event: Event, now_ms: u64) -> Submitted {
        self.submit_all(vec![event], now_ms)
    }

    /// Queues events as [`Pipeline::submit`] does, one by one in order, with the cache
    /// appending them in as few writes as its bounds allow. The counts are the sum.
    pub fn submit_all(&mut self, events: Vec<Event>, now_ms: u64) -> Submitted {
        let mut out = Submitted::default();
        let mut parts = Vec::with_capacity(events.len());
        for event in events {
            let priority = self.config.priority(event.name());
            if priority == Priority::Off {
                continue;
            }
            let name = event.name();
            for part in self.fit(event, priority, now_ms, &mut out) {
                parts.push((name, (priority, part.to_json())));
            }
        }
        let (names, items): (Vec<EventName>, Vec<(Priority, Vec<u8>)>) = parts.into_iter().unzip();
        let outcomes = self.cache.push_batch(&items, now_ms.max(1));
        for (name, outcome) in names.into_iter().zip(outcomes) {
            self.account(name, outcome, now_ms, &mut out);
        }
        out
    }

    /// The event as parts that each fit in a message: itself, or its split. Items too
    /// large even alone are dropped, counted and explained.
    fn fit(&mut self, event: Event, priority: Priority, now_ms: u64, out: &mut Submitted) -> Vec<Event> {
        let max_event = self.frame.max_event_bytes(self.max_message());
        if event.json_len() <= max_event {
            return vec![event];
        }
        let name = event.name();
        let outcome = event.split_to_fit(max_event, crate::stamp::new_id);
        for item in &outcome.too_large {
            self.count_before_cache(priority, DropReason::TooLarge, 1, now_ms);
            out.dropped.push(DropReason::TooLarge);
            let len = serde_json::to_vec(item).map(|v| v.len()).unwrap_or(0);
            self.diagnose(
                DiagnosticSeverity::Warning,
                format!(
                    "a {name} payload item of {len} bytes cannot fit in a message of {} bytes; dropped",
                    self.max_message()
                ),
                now_ms,
            );
        }
        outcome.events
    }

    /// Counts what the cache did with one part of a `name` event.
    fn account(&mut self, name: EventName, outcome: PushOutcome, now_ms: u64, out: &mut Submitted) {
        match outcome {
            PushOutcome::Stored { evicted, error, .. } => {
                out.stored += 1;
                self.end_disk_full_episode();
                out.evicted += evicted.len();
                if let Some(e) = error {
                    self.diagnose(DiagnosticSeverity::Warning, format!("cache: {e}"), now_ms);
                }
            }
            PushOutcome::Dropped {
                reason,
                evicted,
                error,
            } => {
                out.evicted += evicted.len();
                if reason == DropReason::DiskFull {
                    self.disk_full_drop();
                }
                out.dropped.push(reason);
                if let Some(e) = error {
                    self.diagnose(
                        DiagnosticSeverity::Error,
                        format!("cache: {e}; {name} event dropped"),
                        now_ms,
                    );
                }
            }
        }
    }

    /// Frequency of a queue in ms, at least one second.
    fn frequency_ms(&self, p: Priority) -> u64 {
        let ms = self.config.frequency(p).map(|d| d.as_millis()).unwrap_or(0);
        u64::try_from(ms).unwrap_or(u64::MAX).max(MIN_TIMER_MS)
    }

    /// When the oldest unpinned event of a queue becomes due; reloaded events (time 0) are due
    /// at once.
    fn due_ms(&self, p: Priority) -> Option<u64> {
        let oldest = self.cache.unpinned(p).next()?.enqueued_ms;
        Some(if oldest == 0 {
            0
        } else {
            oldest.saturating_add(self.frequency_ms(p))
        })
    }

    /// Whether the unpinned events of both queues more than fill a message.
    fn is_full(&self) -> bool {
        let mut total = self.frame.overhead();
        let max = self.max_message();
        for p in [Priority::High, Priority::Low] {
            for e in self.cache.unpinned(p) {
                total += usize::try_from(e.len).unwrap_or(usize::MAX).saturating_add(1);
                if total > max {
                    return true;
                }
            }
        }
        false
    }

    /// The next monotonic time at which [`Pipeline::poll_message`] may have something to send,
    /// `None` when nothing is queued.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.in_flight.is_some() {
            return None;
        }
        let due = if self.is_full() {
            Some(0)
        } else {
            [Priority::High, Priority::Low]
                .into_iter()
                .filter_map(|p| self.due_ms(p))
                .min()
        };
        due.map(|d| d.max(self.retry_at_ms))
    }

    /// A message to deliver now, if one is due (or a full message is ready). Its events are
    /// pinned until `confirm` or `failed`. One message is in flight at a time.
    pub fn poll_message(&mut self, now_ms: u64) -> Option<Outgoing> {
        if self.in_flight.is_some() || now_ms < self.retry_at_ms {
            return None;
        }
        let high_due = self.due_ms(Priority::High).is_some_and(|d| d <= now_ms);
        let low_due = self.due_ms(Priority::Low).is_some_and(|d| d <= now_ms);
        let (first, second) = if high_due {
            (Priority::High, Priority::Low)
        } else if low_due {
            (Priority::Low, Priority::High)
        } else if self.is_full() {
            (Priority::High, Priority::Low)
        } else {
            return None;
        };
        self.take_message(first, second, now_ms)
    }

    fn take_message(&mut self, first: Priority, second: Priority, now_ms: u64) -> Option<Outgoing> {
        let max = self.max_message();
        if std::mem::take(&mut self.recheck_sizes) {
            self.discard_unsendable(now_ms);
        }
        let mut chosen = Vec::new();
        let mut lens = Vec::new();
        for p in [first, second] {
            for e in self.cache.unpinned(p) {
                let len = usize::try_from(e.len).unwrap_or(usize::MAX);
                if self.frame.body_len(lens.iter().copied().chain([len])) > max {
                    break;
                }
                lens.push(len);
                chosen.push(e.id);
            }
        }
        let mut events = Vec::with_capacity(chosen.len());
        let mut ids = Vec::with_capacity(chosen.len());
        for id in chosen {
            match self.cache.read(id) {
                Ok(bytes) => {
                    events.push(bytes);
                    ids.push(id);
                }
                // The cache has dropped and counted an unreadable entry; go on without it.
                Err(e) => self.diagnose(DiagnosticSeverity::Error, format!("cache: {e}"), now_ms),
            }
        }
        if ids.is_empty() {
            return None;
        }
        self.cache.pin(&ids);
        let mut names = BTreeMap::new();
        for e in &events {
            *names.entry(event_name_of(e)).or_insert(0) += 1;
        }
        let body = self.frame.assemble(&events);
        self.in_flight = Some(ids.clone());
        Some(Outgoing { ids, body, names })
    }

    /// Drops (counted, explained) cached events that no longer fit in a message on their own,
    /// which happens when `maxMessageSizeInBytes` shrinks after they were cached; otherwise
    /// they would stall their queue.
    fn discard_unsendable(&mut self, now_ms: u64) {
        let max_event = self.frame.max_event_bytes(self.max_message()) as u64;
        let mut unsendable = Vec::new();
        for p in [Priority::High, Priority::Low] {
            for e in self.cache.unpinned(p).filter(|e| e.len > max_event) {
                unsendable.push((p, e.id, e.len));
            }
        }
        if unsendable.is_empty() {
            return;
        }
        let ids: Vec<EntryId> = unsendable.iter().map(|(_, id, _)| *id).collect();
        for (_, _, len) in &unsendable {
            self.diagnose(
                DiagnosticSeverity::Warning,
                format!(
                    "a cached event of {len} bytes no longer fits in a message of {} bytes; dropped",
                    self.max_message()
                ),
                now_ms,
            );
        }
        if let Err(e) = self.cache.discard(&ids, DropReason::TooLarge) {
            self.diagnose(DiagnosticSeverity::Error, format!("cache: {e}"), now_ms);
        }
    }

    /// The transport confirmed the message: its events leave the cache as sent.
    pub fn confirm(&mut self, out: &Outgoing) -> Result<(), CacheError> {
        self.in_flight = None;
        self.failures = 0;
        self.retry_at_ms = 0;
        self.period.messages_sent += 1;
        if out.body.len() < 4096 {
            self.period.messages_under_4kb += 1;
        }
        self.cache.ack(&out.ids)
    }

    /// The delivery failed: the events go back to their queues (never counted as drops), and
    /// the next attempt waits an exponential backoff with jitter.
    pub fn failed(&mut self, out: &Outgoing, now_ms: u64) {
        self.in_flight = None;
        self.period.failed += 1;
        // Entries evicted here are counted by the cache (and so in the statistics).
        let _ = self.cache.unpin(&out.ids);
        // xorshift seeded with the AgentId: the backoff's random source, deterministic in tests.
        self.jitter_state ^= self.jitter_state << 13;
        self.jitter_state ^= self.jitter_state >> 7;
        self.jitter_state ^= self.jitter_state << 17;
        let delay = RETRY_BACKOFF.delay_with(self.failures, self.jitter_state);
        self.failures = self.failures.saturating_add(1);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.retry_at_ms = now_ms.saturating_add(delay_ms);
    }

    /// Forgets the retry backoff: the transport reconnected, so the next send goes at once.
    pub fn reset_backoff(&mut self) {
        self.failures = 0;
        self.retry_at_ms = 0;
    }

    /// Records a Diagnostic for the agent's own problem, rate-limited to
    /// [`DIAGNOSTICS_PER_MINUTE`]. They are queued by [`Pipeline::take_diagnostics`].
    pub fn diagnose(&mut self, severity: DiagnosticSeverity, message: String, now_ms: u64) {
        let (start, count) = self.diagnostics_window;
        if now_ms.saturating_sub(start) >= 60_000 || start == 0 {
            self.diagnostics_window = (now_ms.max(1), 0);
        }
        if self.diagnostics_window.1 >= DIAGNOSTICS_PER_MINUTE {
            self.diagnostics_suppressed += 1;
            return;
        }
        let _ = count;
        self.diagnostics_window.1 += 1;
        self.diagnostics
            .push(Diagnostic::new(severity, message, std::process::id(), 0));
    }

    /// Counts a drop for lack of disk space; the first of an episode is logged once.
    fn disk_full_drop(&mut self) {
        match self.disk_full.as_mut() {
            Some(episode) => episode.dropped += 1,
            None => {
                tracing::warn!(
                    "the cache's disk is full: new events are dropped and counted (disk-full) until space comes back"
                );
                self.disk_full = Some(DiskFullEpisode {
                    dropped: 1,
                    carried: false,
                });
            }
        }
    }

    /// An event was stored: a disk-full episode, if one was open, is over. Its Diagnostic
    /// bypasses the rate limit: one per episode, whatever else happened.
    fn end_disk_full_episode(&mut self) {
        let Some(episode) = self.disk_full.take() else {
            return;
        };
        let when = if episode.carried {
            "the previous run stopped while the disk was full"
        } else {
            "the disk was full"
        };
        let message = format!(
            "{when}: {} events were dropped and counted as disk-full; space is back",
            episode.dropped
        );
        tracing::info!("{message}");
        self.diagnostics.push(Diagnostic::new(
            DiagnosticSeverity::Error,
            message,
            std::process::id(),
            0,
        ));
    }

    /// The pending Diagnostic items (as one event), to be submitted when Diagnostic is not Off.
    pub fn take_diagnostics(&mut self, wall: SystemTime) -> Option<Event> {
        if self.diagnostics_suppressed > 0 {
            let n = std::mem::take(&mut self.diagnostics_suppressed);
            self.diagnostics.push(Diagnostic::new(
                DiagnosticSeverity::Warning,
                format!("{n} more diagnostics suppressed by the rate limit"),
                std::process::id(),
                0,
            ));
        }
        if self.diagnostics.is_empty() {
            return None;
        }
        let items: Vec<PayloadItem> = self.diagnostics.drain(..).map(PayloadItem::from).collect();
        crate::stamp::new_event(EventName::Diagnostic, items, wall).ok()
    }

    /// The DroppedEventsStatistics and MessageStatistics events for the period since the last
    /// call; the period counts restart at zero.
    pub fn statistics_events(&mut self, wall: SystemTime) -> Vec<Event> {
        let p = self.period();
        self.reported = cumulative(self.cache.counters());
        self.period = PeriodCounts::default();
        let dropped = vec![
            PayloadItem::from(DroppedEventsStatistics::new(
                Queue::High,
                p.collected[0],
                p.dropped[0],
            )),
            PayloadItem::from(DroppedEventsStatistics::new(
                Queue::Low,
                p.collected[1],
                p.dropped[1],
            )),
        ];
        let messages = vec![PayloadItem::from(MessageStatistics::new(
            p.messages_sent,
            p.messages_under_4kb,
            p.failed,
        ))];
        [
            (EventName::DroppedEventsStatistics, dropped),
            (EventName::MessageStatistics, messages),
        ]
        .into_iter()
        .filter(|(name, _)| self.config.priority(*name) != Priority::Off)
        .filter_map(|(name, items)| crate::stamp::new_event(name, items, wall).ok())
        .collect()
    }

    /// Ends the statistics period: its DroppedEventsStatistics and MessageStatistics events
    /// are queued in the cache. The counts of an event the cache could not store (disk full)
    /// go back into the period, so they reach the next statistics event instead of none.
    pub fn submit_statistics(&mut self, wall: SystemTime, now_ms: u64) {
        let taken = self.period.clone();
        let reported = self.reported;
        for event in self.statistics_events(wall) {
            let name = event.name();
            if self.submit(event, now_ms).stored > 0 {
                continue;
            }
            let p = &mut self.period;
            if name == EventName::DroppedEventsStatistics {
                // Not reported after all: the next period starts where this one did.
                self.reported = reported;
            } else {
                p.messages_sent += taken.messages_sent;
                p.messages_under_4kb += taken.messages_under_4kb;
                p.failed += taken.failed;
            }
        }
    }

    /// A clean stop: the final partial period's statistics are queued in the cache (sent
    /// now if due, else by the next run, which reloads them). What the cache cannot store
    /// (disk full) - those counts and an open disk-full episode - goes to the cache's
    /// reserved slot and comes back at the next start. Call [`Cache::sync`] after.
    pub fn stop(&mut self, wall: SystemTime, now_ms: u64) -> Result<(), CacheError> {
        self.submit_statistics(wall, now_ms);
        let open = self.disk_full.map_or(0, |e| e.dropped);
        let period = self.period();
        let carry = if period.is_zero() && open == 0 {
            Carry::default()
        } else {
            period.to_carry(open)
        };
        self.cache.set_carry(carry)
    }

    /// The counts of the current period so far. Collected and dropped events are the
    /// cache's cumulative counters since the last statistics event (every drop the cache
    /// counts, whatever its reason, is in exactly one period).
    pub fn period(&self) -> PeriodCounts {
        let now = cumulative(self.cache.counters());
        let mut p = self.period.clone();
        for (q, (collected, dropped)) in now.iter().enumerate() {
            p.collected[q] = collected.saturating_sub(self.reported[q].0);
            p.dropped[q] = dropped.saturating_sub(self.reported[q].1);
        }
        p
    }
}

/// (collected, dropped) of the High and the Low queue, from the cache's cumulative counters.
fn cumulative(c: CacheCounters) -> [(u64, u64); 2] {
    [
        (c.high.collected, c.high.dropped.total()),
        (c.low.collected, c.low.dropped.total()),
    ]
}

/// The `Name` of a serialized event, for log lines; `"?"` if it cannot be found.
fn event_name_of(event: &[u8]) -> String {
    const KEY: &[u8] = b"\"Name\":\"";
    event
        .windows(KEY.len())
        .position(|w| w == KEY)
        .and_then(|i| {
            let rest = &event[i + KEY.len()..];
            let end = rest.iter().position(|&b| b == b'"')?;
            std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use twinguard_core::event::ProcessCreate;

    fn event(n: u64) -> Event {
        let item = ProcessCreate {
            executable: "/usr/bin/test".into(),
            process_id: 100,
            parent_process_id: 1,
            user_id: "0".into(),
            user_name: None,
            command_line: format!("test {n}"),
            extra_details: Default::default(),
        };
        crate::stamp::new_event(
            EventName::ProcessCreate,
            vec![item.into()],
            SystemTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    fn dropped_in(events: &[Event]) -> u64 {
        events
            .iter()
            .filter(|e| e.name() == EventName::DroppedEventsStatistics)
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
                v["Payload"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["DroppedEvents"].as_u64().unwrap())
                    .sum::<u64>()
            })
            .sum()
    }

    /// A stop while the disk is full: the final period cannot be stored as an event, so it is
    /// carried (with the open disk-full episode) to the next open, whose first statistics
    /// event reports it; the cumulative counters hold the drops too, and the episode gets one
    /// Diagnostic when an event is stored again. Time is injected (milliseconds).
    #[test]
    fn a_stop_on_a_full_disk_carries_the_final_period_to_the_next_run() {
        let dir = std::env::temp_dir().join(format!("twinguard-batch-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let frame = MessageFrame::new("0.1.0", uuid::Uuid::nil());
        let (cache, _) = Cache::open(&dir, 1 << 20).unwrap();
        let mut p = Pipeline::new(cache, Config::default(), frame.clone());
        for n in 0..5 {
            assert_eq!(p.submit(event(n), 10 + n).stored, 1);
        }
        p.cache.fail_writes(Some(libc::ENOSPC));
        for n in 5..45 {
            assert_eq!(p.submit(event(n), 100 + n).dropped, vec![DropReason::DiskFull]);
        }
        // 40 drops. The rate-limited per-drop Diagnostics cannot be stored now anyway.
        let _ = p.take_diagnostics(SystemTime::UNIX_EPOCH);
        p.stop(SystemTime::UNIX_EPOCH, 1000).unwrap();
        assert!(p.cache.sync().is_err(), "the disk is still full");
        let before = p.counters();
        // The statistics events themselves were dropped too.
        assert_eq!(before.low.dropped.get(DropReason::DiskFull), 42);
        drop(p); // the process exits

        let (cache, recovery) = Cache::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.slot_drops, 42);
        let mut p = Pipeline::new(cache, Config::default(), frame);
        assert_eq!(p.counters(), before, "no drop lost across the stop");
        assert!(p.counters().low.is_balanced());
        assert_eq!(p.period().dropped, [0, 42]);
        assert_eq!(p.submit(event(99), 5).stored, 1);
        let diagnostic = p.take_diagnostics(SystemTime::UNIX_EPOCH).unwrap();
        let text = String::from_utf8(diagnostic.to_json()).unwrap();
        assert!(
            text.contains("previous run stopped while the disk was full: 42 events"),
            "{text}"
        );
        assert!(
            p.take_diagnostics(SystemTime::UNIX_EPOCH).is_none(),
            "one per episode"
        );
        let stats = p.statistics_events(SystemTime::UNIX_EPOCH);
        assert_eq!(dropped_in(&stats), 42);
        assert_eq!(dropped_in(&p.statistics_events(SystemTime::UNIX_EPOCH)), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Drops the cache counts while it opens - here the events a smaller
    /// `maxLocalCacheSizeInBytes` evicts, as when the twin lowered it while the agent was
    /// stopped - are in the next run's first statistics period: the previous run's final
    /// period was stored as an event, and nothing else reports them.
    #[test]
    fn drops_counted_while_the_cache_opens_are_in_the_first_period() {
        let dir = std::env::temp_dir().join(format!("twinguard-batch-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let frame = MessageFrame::new("0.1.0", uuid::Uuid::nil());
        let (cache, _) = Cache::open(&dir, 1 << 20).unwrap();
        let mut p = Pipeline::new(cache, Config::default(), frame.clone());
        for n in 0..80 {
            assert_eq!(p.submit(event(n), 10 + n).stored, 1);
        }
        // A clean stop on a disk with room: the final period is queued as events.
        p.stop(SystemTime::UNIX_EPOCH, 1000).unwrap();
        p.cache.close().unwrap();

        let mut small = Config::default();
        small.max_local_cache_size_in_bytes = twinguard_core::config::MIN_CACHE_BYTES;
        let (cache, recovery) = Cache::open(&dir, small.max_local_cache_size_in_bytes).unwrap();
        let evicted = recovery.evicted.len() as u64;
        assert!(evicted >= 40, "the open evicts most of the 80 events: {evicted}");
        let mut p = Pipeline::new(cache, small, frame);
        assert_eq!(p.counters().low.dropped.get(DropReason::Evicted), evicted);
        assert_eq!(p.period().dropped, [0, evicted]);
        assert_eq!(dropped_in(&p.statistics_events(SystemTime::UNIX_EPOCH)), evicted);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
