//! `twinguard run` in local mode: the run loop that wires collectors -> pipeline -> transport,
//! applies twin changes, runs the snapshot schedule, and stops cleanly on SIGINT/SIGTERM.
//!
//! One thread owns the pipeline and the transport; collectors, the snapshot worker and the
//! signal thread talk to it through one bounded channel ([`INPUT_CAPACITY`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tracing::{info, warn};

use super::inbox::RunInput;
use super::signals::{block_termination_signals, Signals};
use super::snapshots::SnapshotWorker;
use super::streams::Streams;
use crate::collect::{snapshot_collector, stream_collectors};
use crate::datadir::{DataDir, DataDirError};
use crate::pipeline::aggregate::{Aggregator, MAX_KEYS};
use crate::pipeline::batch::{Pipeline, MIN_TIMER_MS};
use crate::pipeline::cache::{Cache, CacheError};
use crate::transport::local::{LocalTransport, TwinChange, TwinFile, DEFAULT_OUTBOX_KEEP};
use crate::transport::{DesiredUpdate, Transport, TransportError};
use twinguard_core::config::{
    read_document, reported_section, validate_document, CollectorStatus, Config, ConfigurationStatus,
    Problem, ProblemKind, Property, Severity, TwinguardStatus, Validation,
};
use twinguard_core::event::{
    ConfigurationError, ConfigurationErrorType, DiagnosticSeverity, EventName, MessageFrame, PayloadItem,
    Priority, ProcessCreate,
};
use twinguard_os::safefile::FileError;

/// Exit code for an invalid or unreadable configuration at start (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Capacity of the input channel. When it is full, stream collectors count a loss (they never
/// block the kernel side); the snapshot worker and the signal thread wait for room.
pub(crate) const INPUT_CAPACITY: usize = 4096;
/// Longest time between two fdatasyncs of the cache: what a power loss may lose at most.
pub(crate) const SYNC_INTERVAL_MS: u64 = 2000;
/// Collector status changes are reported at most this often.
pub(crate) const REPORT_COALESCE_MS: u64 = 5000;
/// The shortest time between two reports made only because a collector's losses grew.
pub(crate) const LOSS_REPORT_MS: u64 = 10_000;
/// How often the twin file's metadata is checked.
const TWIN_POLL_MS: u64 = 100;
/// A twin file must be stable this long before it is read (editors write in several steps).
const TWIN_DEBOUNCE_MS: u64 = 200;

/// Everything `twinguard run` needs in local mode.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The twin file; `None` = defaults, nothing watched.
    pub twin: Option<PathBuf>,
    /// The outbox file.
    pub outbox: PathBuf,
    /// The reported file.
    pub reported: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Size at which the outbox rotates.
    pub outbox_rotate_bytes: u64,
    /// `--allow-special-files`: the outbox and reported file may be a FIFO or a character
    /// device (written in place).
    pub allow_special_files: bool,
    /// A synthetic event source, for tests and benchmarks.
    pub synthetic: Option<Synthetic>,
}

/// A synthetic event source: ProcessCreate events with a sequence number, at a fixed rate.
#[derive(Clone, Debug)]
pub struct Synthetic {
    /// Events per second.
    pub rate: u64,
    /// Stop after this many events (none: run until stopped).
    pub limit: Option<u64>,
    /// Where the id of every event acknowledged by the cache is appended, one per line, as
    /// soon as the cache has it (independently of the cache, for crash tests).
    pub ack_log: Option<PathBuf>,
}

/// Why `run` stopped with an error. Each message is the one line `twinguard run` prints; the
/// cause stays reachable as the source.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration at start is invalid or unreadable: one line per problem.
    #[error("invalid configuration")]
    Config(Vec<String>),
    /// SIGINT/SIGTERM could not be blocked, or their thread not started.
    #[error("signals: {0}")]
    Signals(#[source] std::io::Error),
    /// The data directory cannot be used (not ours, locked by another agent ...).
    #[error("{0}")]
    DataDir(#[from] DataDirError),
    /// The transport could not start (outbox, broker settings, secrets, TLS).
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The cache could not be opened.
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    /// A file named on the command line (the synthetic source's ack log).
    #[error("{0}")]
    File(#[from] FileError),
    /// A thread could not be started.
    #[error("{what}: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The run loop's state.
struct Agent {
    pipeline: Pipeline,
    transport: Box<dyn Transport>,
    /// False until a valid configuration is in force (remote modes may start without one):
    /// then nothing is collected.
    started: bool,
    status: TwinguardStatus,
    collectors: BTreeMap<String, CollectorStatus>,
    start: Instant,
    last_snapshot_ms: Option<u64>,
    snapshots: SnapshotWorker,
    available_snapshots: Vec<EventName>,
    ack_log: Option<std::fs::File>,
    last_sync_ms: u64,
    streams: Streams,
    aggregator: Aggregator,
    /// The transport's connection count last seen (a change = reconnected).
    connections_seen: u64,
    /// Losses already counted, per stream collector.
    losses_seen: BTreeMap<EventName, u64>,
    /// When a coalesced report of collector statuses is due.
    report_due_ms: Option<u64>,
    last_report_ms: u64,
}

/// Reads and validates the twin at start. `Err` holds the lines to print.
fn initial_config(twin: Option<&mut TwinFile>) -> Result<(Config, Vec<Problem>), Vec<String>> {
    let Some(twin) = twin else {
        return Ok((Config::default(), Vec::new()));
    };
    let name = twin.path().display().to_string();
    match twin.read_now() {
        TwinChange::Deleted => {
            info!(twin = %name, "the twin file does not exist yet: running with the defaults; create it to configure the agent");
            Ok((Config::default(), Vec::new()))
        }
        TwinChange::Content(Err(e)) => Err(vec![format!("{name}: error: {e}")]),
        TwinChange::Content(Ok(bytes)) => {
            let doc = read_document(&bytes).map_err(|e| vec![format!("{name}: error: {e}")])?;
            let v = validate_document(&doc);
            match v.config {
                Some(c) => Ok((c, v.problems)),
                None => Err(v
                    .problems
                    .iter()
                    .map(|p| format!("{name}: {}: {p}", p.severity.as_str()))
                    .collect()),
            }
        }
    }
}

/// Runs the agent in local mode until SIGINT/SIGTERM.
pub fn run_local(opts: LocalOptions) -> Result<(), RunError> {
    let signals = block_termination_signals().map_err(RunError::Signals)?;
    // The data directory first: the default outbox and reported file live in it, and nothing
    // may be created there before it is known to be ours.
    let data_dir = DataDir::open(&opts.data_dir)?;
    let mut twin = opts.twin.as_deref().map(|p| TwinFile::new(p, TWIN_DEBOUNCE_MS));
    let (config, problems) = initial_config(twin.as_mut()).map_err(RunError::Config)?;
    let transport = LocalTransport::open(
        &opts.outbox,
        &opts.reported,
        opts.outbox_rotate_bytes,
        DEFAULT_OUTBOX_KEEP,
        twin,
        opts.allow_special_files,
    )?;
    info!(
        outbox = %opts.outbox.display(),
        reported = %opts.reported.display(),
        data_dir = %opts.data_dir.display(),
        twin = %opts.twin.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none: defaults)".into()),
        "twinguard starting in local mode"
    );
    run_agent(
        signals,
        Box::new(transport),
        data_dir,
        Some((config, problems)),
        opts.synthetic,
    )
}

/// Runs the agent over any transport until SIGINT/SIGTERM. `initial` is the configuration in
/// force at start; `None` (remote modes whose desired document is not valid or not there yet)
/// means: stay connected, collect nothing, start when a valid document arrives.
/// `signals` comes from [`block_termination_signals`], called before any thread was spawned.
pub fn run_agent(
    signals: Signals,
    transport: Box<dyn Transport>,
    data_dir: DataDir,
    initial: Option<(Config, Vec<Problem>)>,
    synthetic: Option<Synthetic>,
) -> Result<(), RunError> {
    let started = initial.is_some();
    let (config, problems) = initial.unwrap_or_else(|| (Config::default(), Vec::new()));
    let agent_id = data_dir.agent_id()?;
    let frame = MessageFrame::new(env!("CARGO_PKG_VERSION"), agent_id);
    let cache_dir = data_dir.cache_dir()?;
    let (cache, recovery) = Cache::open(&cache_dir, config.max_local_cache_size_in_bytes)?;
    if recovery.entries > 0 || recovery.torn_bytes > 0 {
        info!(
            events = recovery.entries,
            torn_bytes = recovery.torn_bytes,
            "cache reopened: events from the previous run are due at once"
        );
    }
    if recovery.slot_drops > 0 {
        info!(
            drops = recovery.slot_drops,
            "drops counted while the disk was full in the previous run were recovered from the counter slot"
        );
    }
    if let Some(e) = &recovery.error {
        warn!("cache: {e}");
    }
    let ack_log = match &synthetic {
        Some(Synthetic {
            ack_log: Some(path), ..
        }) => Some(
            twinguard_os::safefile::Dir::open_parent_of(path).and_then(|(dir, name)| {
                dir.open(
                    &name,
                    libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NONBLOCK,
                    0o600,
                )
            })?,
        ),
        _ => None,
    };

    let (tx, rx) = sync_channel(INPUT_CAPACITY);
    signals.attach(tx.clone());
    let snapshots = SnapshotWorker::spawn(tx.clone()).map_err(|source| RunError::Thread {
        what: "snapshot thread",
        source,
    })?;
    if let Some(s) = synthetic {
        spawn_synthetic(s, tx.clone()).map_err(|source| RunError::Thread {
            what: "synthetic source",
            source,
        })?;
    }
    let streams = Streams::new(stream_collectors(Some(data_dir.path())), tx.clone());
    drop(tx);

    let available_snapshots = EventName::SECURITY_SNAPSHOTS
        .into_iter()
        .filter(|n| snapshot_collector(*n).is_some())
        .collect();
    let status = if started {
        TwinguardStatus::new(ConfigurationStatus::Applied, problem_lines(&problems))
    } else {
        TwinguardStatus::new(
            ConfigurationStatus::Rejected,
            ["waiting for a valid desired configuration".to_owned()],
        )
    };
    let mut agent = Agent {
        pipeline: Pipeline::new(cache, config.clone(), frame),
        transport,
        started,
        status,
        collectors: BTreeMap::new(),
        start: Instant::now(),
        last_snapshot_ms: None,
        snapshots,
        available_snapshots,
        ack_log,
        last_sync_ms: 0,
        streams,
        aggregator: Aggregator::new(MAX_KEYS),
        report_due_ms: None,
        last_report_ms: 0,
        losses_seen: BTreeMap::new(),
        connections_seen: 0,
    };
    agent.aggregator.apply_config(&config);
    if started {
        agent.streams.apply(&config);
    }
    for p in problems.iter().filter(|p| p.severity == Severity::Warning) {
        warn!("configuration: {p}");
    }
    agent.report();
    let now = agent.now_ms();
    agent.emit_configuration_errors(&problems, now);
    info!(transport = %agent.transport.describe(), "twinguard running");
    // systemd (Type=notify): ready once the configuration is in force and reported.
    super::notify::notify_ready();
    match data_dir.record_mode(agent.transport.mode()) {
        // A new data directory: likely a newcomer, who waits this long for the first message.
        Ok(None) if started => {
            let c = agent.pipeline.config();
            info!(
                "snapshots are taken now and every {}; queued events are sent within {} (High) or {} (Low); {}",
                c.snapshot_frequency,
                c.high_priority_message_frequency,
                c.low_priority_message_frequency,
                agent.transport.configuration_hint()
            );
        }
        Ok(Some(before)) if before != agent.transport.mode() => warn!(
            "data directory {} was last used in {before} mode, now {}: events it cached then are sent in this mode (give each mode its own --data-dir to keep them apart)",
            data_dir.path().display(),
            agent.transport.mode()
        ),
        Ok(_) => {}
        Err(e) => warn!("{e}"),
    }
    agent.run(&rx);
    Ok(())
}

fn problem_lines(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{}: {p}", p.severity.as_str()))
        .collect()
}

impl Agent {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn run(&mut self, rx: &Receiver<RunInput>) {
        let watchdog = super::notify::watchdog_interval();
        let mut last_ping = Instant::now();
        loop {
            // The loop wakes at least once a second, so the watchdog is pinged in time; a
            // stuck loop stops pinging and systemd restarts the agent.
            if let Some(every) = watchdog {
                if last_ping.elapsed() >= every {
                    super::notify::notify_watchdog();
                    last_ping = Instant::now();
                }
            }
            let now = self.now_ms();
            self.poll_desired(now);
            self.run_snapshots_if_due(now);
            for e in self.aggregator.flush_due(now, SystemTime::now()) {
                self.pipeline.submit(e, now);
            }
            self.flush_diagnostics();
            self.account_losses();
            let connections = self.transport.connections();
            if connections != self.connections_seen {
                self.connections_seen = connections;
                self.pipeline.reset_backoff();
            }
            self.send_due(now);
            self.sync_if_due(now);
            self.report_if_due(now);

            let mut deadline = self.next_snapshot_ms();
            for d in [self.pipeline.next_deadline(), self.aggregator.next_deadline()]
                .into_iter()
                .flatten()
            {
                deadline = deadline.min(d);
            }
            // The transport's desired document is polled (a file's metadata, or what a network
            // thread received): at most this long a change waits.
            deadline = deadline.min(now + TWIN_POLL_MS);
            let wait = Duration::from_millis(deadline.saturating_sub(self.now_ms()).min(1000));
            let first = match rx.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(RunInput::Shutdown("input closed")),
            };
            // Take what is waiting in one go (bounded), so a burst costs one loop turn.
            let burst = first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()).take(INPUT_CAPACITY));
            let mut stop = None;
            for input in burst {
                if let RunInput::Shutdown(why) = input {
                    stop = Some(why);
                } else {
                    self.handle(input);
                }
            }
            if let Some(why) = stop {
                info!(signal = why, "stopping: sending what is due");
                super::notify::notify_stopping();
                self.streams.stop_all();
                // What the collectors lost since the last turn, up to their end, belongs to
                // the final statistics period.
                self.account_losses();
                let now = self.now_ms();
                // A clean stop flushes open aggregation windows (a crash may lose them).
                for e in self.aggregator.flush_all(SystemTime::now()) {
                    self.pipeline.submit(e, now);
                }
                self.flush_diagnostics();
                // The final partial statistics period is queued (or carried to the next run).
                if let Err(e) = self.pipeline.stop(SystemTime::now(), now) {
                    warn!("cache: {e}");
                }
                self.send_due(now);
                if self.report_due_ms.is_some() {
                    self.report();
                }
                if let Err(e) = self.pipeline.cache_mut().sync() {
                    warn!("cache sync at exit: {e}");
                }
                info!("stopped");
                return;
            }
        }
    }

    fn handle(&mut self, input: RunInput) {
        let now = self.now_ms();
        match input {
            RunInput::Event(event) => {
                for e in self.aggregator.offer(event, now) {
                    self.pipeline.submit(e, now);
                }
            }
            RunInput::Events(batch) => {
                let mut events = Vec::new();
                for event in batch.take() {
                    events.extend(self.aggregator.offer(event, now));
                }
                // The whole burst goes into the cache with as few writes as it allows.
                self.pipeline.submit_all(events, now);
            }
            RunInput::Synthetic(event) => {
                let id = event.id();
                let submitted = self.pipeline.submit(event, now);
                if submitted.stored == 1 && submitted.dropped.is_empty() {
                    if let Some(log) = self.ack_log.as_mut() {
                        let _ = writeln!(log, "{id}");
                    }
                }
            }
            RunInput::Snapshot {
                name,
                result,
                status,
                wall,
            } => {
                let mut status = status;
                match result {
                    Ok(items) => match crate::stamp::new_event(name, items, wall) {
                        Ok(event) => {
                            self.pipeline.submit(event, now);
                        }
                        Err(e) => status.last_error = Some(e.to_string()),
                    },
                    Err(e) => {
                        warn!(collector = %name, "snapshot failed: {e}");
                        self.pipeline
                            .diagnose(DiagnosticSeverity::Error, format!("{name}: {e}"), now);
                        status.last_error = Some(e.to_string());
                    }
                }
                self.collector_status(name, status, now);
            }
            RunInput::Status(name, status) => self.collector_status(name, status, now),
            RunInput::Diagnostic(message) => {
                self.pipeline.diagnose(DiagnosticSeverity::Error, message, now);
            }
            RunInput::Shutdown(_) => {}
        }
    }

    /// Power-loss bound: cached events are fdatasync'd at least every [`SYNC_INTERVAL_MS`].
    fn sync_if_due(&mut self, now: u64) {
        if now.saturating_sub(self.last_sync_ms) >= SYNC_INTERVAL_MS {
            self.last_sync_ms = now;
            if let Err(e) = self.pipeline.cache_mut().sync() {
                warn!("cache: {e}");
            }
        }
    }

    /// Records a collector's status. Status changes are reported at most every
    /// [`REPORT_COALESCE_MS`] (several collectors start at once; IoT Hub throttles twin
    /// updates), configuration changes at once.
    fn collector_status(&mut self, name: EventName, status: CollectorStatus, now: u64) {
        if self.collectors.get(name.as_str()) != Some(&status) {
            self.collectors.insert(name.as_str().to_owned(), status);
            if self.report_due_ms.is_none() {
                self.report_due_ms = Some(now.max(self.last_report_ms.saturating_add(REPORT_COALESCE_MS)));
            }
        }
    }

    /// Adds new stream-collector losses to the period's DroppedEventsStatistics, and to the
    /// collectors' status in `reported.twinguard` as they grow (reported at most every
    /// [`LOSS_REPORT_MS`]: losses can grow steadily, and twin updates are throttled).
    fn account_losses(&mut self) {
        let mut grown = false;
        for (names, total) in self.streams.losses() {
            let Some(&name) = names.first() else { continue };
            let seen = self.losses_seen.entry(name).or_insert(0);
            if total > *seen {
                let delta = total - *seen;
                *seen = total;
                let priority = self.pipeline.config().priority(name);
                self.pipeline.count_lost(priority, delta);
            }
            for n in names {
                if let Some(status) = self.collectors.get_mut(n.as_str()) {
                    if status.losses < total {
                        status.losses = total;
                        grown = true;
                    }
                }
            }
        }
        if grown && self.report_due_ms.is_none() {
            let now = self.now_ms();
            self.report_due_ms = Some(now.max(self.last_report_ms.saturating_add(LOSS_REPORT_MS)));
        }
    }

    fn report_if_due(&mut self, now: u64) {
        if self.report_due_ms.is_some_and(|due| now >= due) {
            self.report();
        }
    }

    fn next_snapshot_ms(&self) -> u64 {
        match self.last_snapshot_ms {
            None => 0,
            Some(last) => {
                let freq = u64::try_from(self.pipeline.config().snapshot_frequency.duration().as_millis())
                    .unwrap_or(u64::MAX)
                    .max(MIN_TIMER_MS);
                last.saturating_add(freq)
            }
        }
    }

    fn run_snapshots_if_due(&mut self, now: u64) {
        if !self.started || now < self.next_snapshot_ms() {
            return;
        }
        self.last_snapshot_ms = Some(now);
        let config = self.pipeline.config();
        let names: Vec<EventName> = self
            .available_snapshots
            .iter()
            .copied()
            .filter(|n| config.priority(*n) != Priority::Off)
            .collect();
        if !names.is_empty() && !self.snapshots.request(names) {
            warn!("the previous snapshot is still running; this one is skipped");
        }
        self.pipeline.submit_statistics(SystemTime::now(), now);
    }

    fn flush_diagnostics(&mut self) {
        if let Some(event) = self.pipeline.take_diagnostics(SystemTime::now()) {
            let now = self.now_ms();
            self.pipeline.submit(event, now);
        }
    }

    fn send_due(&mut self, now: u64) {
        while let Some(out) = self.pipeline.poll_message(now) {
            match self.transport.deliver(&out.body) {
                Ok(()) => {
                    if let Err(e) = self.pipeline.confirm(&out) {
                        warn!("cache: {e}");
                    }
                    // Make the acknowledgement durable too, so a power loss resends little.
                    if let Err(e) = self.pipeline.cache_mut().sync() {
                        warn!("cache: {e}");
                    }
                    let names: Vec<String> = out.names.iter().map(|(n, c)| format!("{n} x{c}")).collect();
                    info!(
                        bytes = out.body.len(),
                        events = out.ids.len(),
                        "sent a message: {}",
                        names.join(", ")
                    );
                }
                Err(e) => {
                    self.pipeline.failed(&out, now);
                    warn!("delivery failed, will retry: {e}");
                    return;
                }
            }
        }
    }

    fn poll_desired(&mut self, now: u64) {
        let Some(update) = self.transport.poll_desired(now) else {
            return;
        };
        if update == DesiredUpdate::Cleared {
            info!("the desired document is gone: back to the defaults");
        }
        match update.validate() {
            Ok(validation) => self.apply(validation, update.version(), now),
            Err(why) => self.reject_document(why.to_owned(), now),
        }
    }

    fn apply(&mut self, validation: Validation, version: Option<i64>, now: u64) {
        match validation.config {
            Some(config) => {
                info!("configuration applied");
                for p in &validation.problems {
                    warn!("configuration: {p}");
                }
                self.pipeline.apply_config(config);
                if !self.started {
                    info!("a valid configuration is in force: monitoring starts");
                    self.started = true;
                    self.last_snapshot_ms = None;
                }
                self.streams.apply(self.pipeline.config());
                self.status =
                    TwinguardStatus::new(ConfigurationStatus::Applied, problem_lines(&validation.problems));
                self.status.desired_version = version;
                self.status.last_desired_version = version;
                self.report();
                self.emit_configuration_errors(&validation.problems, now);
            }
            None => {
                for p in &validation.problems {
                    warn!("configuration rejected: {p}");
                }
                let applied_version = self.status.desired_version;
                self.status =
                    TwinguardStatus::new(ConfigurationStatus::Rejected, problem_lines(&validation.problems));
                self.status.desired_version = applied_version;
                self.status.last_desired_version = version;
                self.report();
                self.emit_configuration_errors(&validation.problems, now);
            }
        }
    }

    fn reject_document(&mut self, message: String, now: u64) {
        warn!("configuration rejected: {message}");
        self.status = TwinguardStatus::new(ConfigurationStatus::Rejected, [format!("error: {message}")]);
        self.report();
        let used = Value::Object(self.pipeline.config().to_object()).to_string();
        let item = ConfigurationError::new("", ConfigurationErrorType::TypeMismatch, used, message);
        if let Ok(event) = crate::stamp::new_event(
            EventName::ConfigurationError,
            vec![item.into()],
            SystemTime::now(),
        ) {
            self.pipeline.submit(event, now);
        }
    }

    /// One ConfigurationError item per problem (errors: TypeMismatch; advisories: Conflict or
    /// NotOptimal), emitted once per configuration change.
    fn emit_configuration_errors(&mut self, problems: &[Problem], now: u64) {
        let config = self.pipeline.config();
        let items: Vec<PayloadItem> = problems
            .iter()
            .map(|p| {
                let used = match Property::from_name(&p.property) {
                    Some(property) => config.value_of(property).to_string(),
                    None if p.property.is_empty() => Value::Object(config.to_object()).to_string(),
                    None => String::new(),
                };
                let kind = match p.kind {
                    ProblemKind::TypeMismatch => ConfigurationErrorType::TypeMismatch,
                    ProblemKind::Conflict => ConfigurationErrorType::Conflict,
                    ProblemKind::NotOptimal => ConfigurationErrorType::NotOptimal,
                };
                ConfigurationError::new(p.property.clone(), kind, used, p.to_string()).into()
            })
            .collect();
        if items.is_empty() {
            return;
        }
        if let Ok(event) = crate::stamp::new_event(EventName::ConfigurationError, items, SystemTime::now()) {
            self.pipeline.submit(event, now);
        }
    }

    fn report(&mut self) {
        self.report_due_ms = None;
        self.last_report_ms = self.now_ms();
        self.status.collectors = self.collectors.clone();
        let counters = self.pipeline.counters();
        self.status.counters = Some(serde_json::json!({
            "high": {"collected": counters.high.collected, "sent": counters.high.sent, "dropped": counters.high.dropped.total(), "cached": counters.high.cached},
            "low": {"collected": counters.low.collected, "sent": counters.low.sent, "dropped": counters.low.dropped.total(), "cached": counters.low.cached},
        }));
        let section = reported_section(self.pipeline.config(), &self.status);
        if let Err(e) = self.transport.report(&section) {
            warn!("cannot write the reported properties: {e}");
        }
    }
}

/// Spawns the synthetic source: `rate` ProcessCreate events per second, paced every 10 ms.
fn spawn_synthetic(s: Synthetic, tx: SyncSender<RunInput>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("synthetic".into())
        .spawn(move || {
            let start = Instant::now();
            let mut sent: u64 = 0;
            loop {
                if s.limit.is_some_and(|l| sent >= l) {
                    return;
                }
                let elapsed = start.elapsed().as_secs_f64();
                let target = (elapsed * s.rate as f64) as u64;
                let target = s.limit.map_or(target, |l| target.min(l));
                while sent < target {
                    let item = ProcessCreate {
                        executable: "/usr/bin/synthetic".into(),
                        command_line: format!("synthetic {sent}"),
                        process_id: 1000 + (sent % 30_000) as u32,
                        parent_process_id: 1,
                        user_id: "0".into(),
                        user_name: Some("root".into()),
                        extra_details: Default::default(),
                    }
                    .with_extra("Synthetic", sent.to_string());
                    match crate::stamp::new_event(
                        EventName::ProcessCreate,
                        vec![item.into()],
                        SystemTime::now(),
                    ) {
                        Ok(event) => {
                            if tx.send(RunInput::Synthetic(event)).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })?;
    Ok(())
}
