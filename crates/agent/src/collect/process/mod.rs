//! ProcessCreate and ProcessTerminate (SPEC §3), from the best source this machine allows,
//! chosen each time the collector starts: the eBPF programs ([`ebpf`]; every fact taken in the
//! kernel at the exec), else the netlink process connector described below (facts read from
//! `/proc/<pid>` after the exec, which a process that lives only microseconds can win). Why the
//! better source is not in use (no BTF, EPERM, a failed self-test, or `TWINGUARD_SOURCES=fallback`)
//! is the collector's status note, shown by `reported.twinguard` and `doctor`.
//!
//! The process connector source:
//!
//! - exec -> ProcessCreate: Executable, CommandLine (arguments joined with spaces), UserId and
//!   UserName read from `/proc/<pid>` the moment the event arrives, through one directory
//!   descriptor so that a reused pid cannot mix two processes; ParentProcessId from the fork
//!   event (the parent at fork time, not the reaper a `/proc` read would show later); then the
//!   exec facts (`sys::execfacts`: Argv, descriptors 0-2, deleted/memfd executable, writable
//!   directory, ContainerId) from `fd/0-2`, `exe`, `root/` and `cgroup`, best effort.
//! - exit of a thread-group leader -> ProcessTerminate: ExitStatus = exit code, or 128 + the
//!   signal; Executable from a bounded pid -> executable table fed by exec events, by fork
//!   events (a forked child runs its parent's executable until it execs) and by a scan of
//!   `/proc` at start. Thread exits and thread creations are not process events.
//! - A process gone before it could be read still gives its event, with what is known and
//!   `ExtraDetails.Missing` naming the rest.
//! - Losses: the kernel's per-CPU sequence numbers count exactly the events that never reached
//!   us (receive buffer overruns, `ENOBUFS`); they go to the sink's loss counter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use crate::sys::cnproc::{self, LossCounter, ProcConnector, ProcEvent, ProcMessage};
use crate::sys::ebpf::ProcessProbes;
use crate::sys::netlink::{BatchReceived, RecvBatch};
use crate::sys::procinfo::{self, ProcDir, ProcessInfo};
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{EventName, ExtraDetails, PayloadItem, ProcessCreate, ProcessTerminate};

use super::user_names::UserNames;
use super::{CollectError, EventSink, StopSignal, StreamCollector};

pub(crate) mod ebpf;

/// Most processes remembered in the pid -> executable table (about 100 bytes each).
pub(crate) const MAX_TRACKED: usize = 32_768;
/// How long a receive waits before the stop signal is checked again.
const RECV_TIMEOUT: Duration = Duration::from_millis(200);
/// The process connector source's name in `reported.twinguard`.
pub(crate) const SOURCE: &str = "netlink proc connector";
/// The eBPF source's name in `reported.twinguard`.
pub(crate) const SOURCE_EBPF: &str =
    "eBPF raw tracepoints (sched_process_exec, sched_process_fork, sched_process_exit)";
/// The environment variable that forces the fallback sources (value `fallback`).
pub(crate) const SOURCES_VARIABLE: &str = "TWINGUARD_SOURCES";
/// How much the collector thread's nice value is lowered (its scheduling priority raised).
pub(crate) const PRIORITY_BOOST: i32 = 5;

/// What the table remembers of a live process.
#[derive(Clone, Debug, Default)]
struct Tracked {
    /// Its executable; shared between a parent and its forked children.
    executable: Option<Arc<str>>,
    /// The parent at fork time, when the fork was seen.
    parent: Option<u32>,
    /// Real and effective uid, followed through fork and uid-change events, so that an exec
    /// need not read `/proc/<pid>/status` (the costliest file: the kernel formats some fifty
    /// lines for it).
    uid: Option<(u32, u32)>,
}

/// What an exec needs read from `/proc` beyond the executable and command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// The parent is not known from a fork event: read `stat`.
    pub parent: bool,
    /// The uids are not known from events: read `status`.
    pub uid: bool,
}

/// The state of the process event stream: the bounded pid table and the exact loss counter.
/// Pure apart from the `/proc` reads the caller passes in, so it is tested without a kernel.
#[derive(Debug)]
pub struct ProcessTracker {
    table: HashMap<u32, Tracked>,
    cap: usize,
    losses: LossCounter,
    /// Insertions refused because the table was full even after removing dead processes.
    pub refused: u64,
}

impl ProcessTracker {
    /// An empty tracker remembering at most `cap` processes.
    pub fn new(cap: usize) -> ProcessTracker {
        ProcessTracker {
            table: HashMap::new(),
            cap: cap.max(1),
            losses: LossCounter::default(),
            refused: 0,
        }
    }

    /// Number of processes remembered.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Events of this message's CPU lost since the previous one.
    pub(crate) fn count_losses(&mut self, msg: &ProcMessage) -> u64 {
        self.losses.observe(msg)
    }

    fn insert(&mut self, pid: u32, entry: Tracked, alive: &dyn Fn(u32) -> bool) {
        if self.table.len() >= self.cap && !self.table.contains_key(&pid) {
            // Full: the entries of processes whose exit we missed are dead weight.
            self.table.retain(|p, _| alive(*p));
            if self.table.len() >= self.cap {
                self.refused += 1;
                return;
            }
        }
        self.table.insert(pid, entry);
    }

    /// Remembers a process that existed before the stream started.
    pub fn seed(
        &mut self,
        pid: u32,
        executable: Option<String>,
        parent: Option<u32>,
        uid: Option<(u32, u32)>,
    ) {
        if self.table.len() < self.cap {
            let executable = executable.map(Arc::from);
            self.table.insert(
                pid,
                Tracked {
                    executable,
                    parent,
                    uid,
                },
            );
        }
    }

    /// What an exec of `pid` needs read beyond its image.
    pub fn needs(&self, pid: u32) -> Needs {
        let known = self.table.get(&pid);
        Needs {
            parent: known.and_then(|t| t.parent).is_none(),
            uid: known.and_then(|t| t.uid).is_none(),
        }
    }

    /// A fork: a new process (not a thread) runs its parent's executable, as its parent's
    /// user, until it execs or changes ids.
    pub(crate) fn on_fork(&mut self, parent_tgid: u32, child_tgid: u32, alive: &dyn Fn(u32) -> bool) {
        let from = self.table.get(&parent_tgid);
        let entry = Tracked {
            executable: from.and_then(|t| t.executable.clone()),
            parent: Some(parent_tgid),
            uid: from.and_then(|t| t.uid),
        };
        self.insert(child_tgid, entry, alive);
    }

    /// A uid change (setuid, or the exec of a setuid program).
    pub(crate) fn on_uid(&mut self, tgid: u32, ruid: u32, euid: u32) {
        if let Some(t) = self.table.get_mut(&tgid) {
            t.uid = Some((ruid, euid));
        }
    }

    /// An exec: the ProcessCreate item from what `/proc` gave (`None`: the process was gone),
    /// completed with what the table knows (parent, uids).
    pub(crate) fn on_exec(
        &mut self,
        pid: u32,
        info: Option<ProcessInfo>,
        user_name: &mut dyn FnMut(u32) -> Option<String>,
        alive: &dyn Fn(u32) -> bool,
    ) -> ProcessCreate {
        let mut info = info.unwrap_or_default();
        let mut missing: Vec<&str> = Vec::new();
        let mut extra = ExtraDetails::new();
        let known = self.table.get(&pid);
        let parent = known.and_then(|t| t.parent).or(info.ppid);
        if let (None, Some((uid, euid))) = (info.uid, known.and_then(|t| t.uid)) {
            info.uid = Some(uid);
            info.euid = Some(euid);
        }
        if parent.is_none() {
            missing.push("ParentProcessId");
        }
        if info.executable.is_none() {
            missing.push("Executable");
        }
        if info.command_line.is_none() {
            missing.push("CommandLine");
        }
        let mut truncated: Vec<&str> = Vec::new();
        if info.command_line_truncated {
            truncated.push("CommandLine");
        }
        if let Some(argv) = info.argv.take() {
            extra.insert("Argv".into(), argv);
            if info.argv_truncated {
                truncated.push("Argv");
            }
        }
        if !truncated.is_empty() {
            extra.insert("Truncated".into(), truncated.join(";"));
        }
        info.facts.add_to(&mut extra);
        let user_name_text = info.uid.and_then(&mut *user_name);
        match (info.uid, info.euid) {
            (None, _) => missing.push("UserId"),
            (Some(uid), Some(euid)) if euid != uid => {
                extra.insert("EffectiveUserId".into(), euid.to_string());
            }
            _ => {}
        }
        if info.executable.is_none() || info.command_line.is_none() {
            // The kernel's command name survives the process's exit until it is reaped.
            if let Some(comm) = &info.comm {
                extra.insert("Comm".into(), comm.clone());
            }
        }
        if !missing.is_empty() {
            extra.insert("Missing".into(), missing.join(";"));
        }
        let entry = Tracked {
            executable: info.executable.as_deref().map(Arc::from),
            parent,
            uid: info.uid.zip(info.euid),
        };
        self.insert(pid, entry, alive);
        ProcessCreate {
            executable: info.executable.unwrap_or_default(),
            process_id: pid,
            parent_process_id: parent.unwrap_or(0),
            user_id: info.uid.map(|u| u.to_string()).unwrap_or_default(),
            user_name: user_name_text,
            command_line: info.command_line.unwrap_or_default(),
            extra_details: extra,
        }
    }

    /// A process exit (the caller has checked it is the thread-group leader): the item.
    pub(crate) fn on_exit(&mut self, pid: u32, exit_code: u32) -> ProcessTerminate {
        let tracked = self.table.remove(&pid);
        let executable = tracked.and_then(|t| t.executable);
        let (exit_status, signal, core) = cnproc::exit_status(exit_code);
        let mut extra = ExtraDetails::new();
        if let Some(signal) = signal {
            extra.insert("Signal".into(), signal.to_string());
        }
        if core {
            extra.insert("CoreDumped".into(), "true".into());
        }
        if executable.is_none() {
            extra.insert("Missing".into(), "Executable".into());
        }
        ProcessTerminate {
            executable: executable.map(|e| e.to_string()).unwrap_or_default(),
            process_id: pid,
            exit_status,
            extra_details: extra,
        }
    }

    /// Applies one message; returns the item it makes, if any. `read` reads `/proc/<pid>`:
    /// always the image, and what [`Needs`] says.
    pub(crate) fn apply(
        &mut self,
        msg: &ProcMessage,
        read: &mut dyn FnMut(u32, Needs) -> Option<ProcessInfo>,
        user_name: &mut dyn FnMut(u32) -> Option<String>,
        alive: &dyn Fn(u32) -> bool,
    ) -> Option<PayloadItem> {
        match msg.event {
            ProcEvent::Fork {
                parent_tgid,
                child_pid,
                child_tgid,
                ..
            } if child_pid == child_tgid => {
                self.on_fork(parent_tgid, child_tgid, alive);
                None
            }
            ProcEvent::Exec { tgid, .. } => {
                let info = read(tgid, self.needs(tgid));
                Some(self.on_exec(tgid, info, user_name, alive).into())
            }
            ProcEvent::Uid { tgid, ruid, euid, .. } => {
                self.on_uid(tgid, ruid, euid);
                None
            }
            ProcEvent::Exit {
                pid, tgid, exit_code, ..
            } if pid == tgid => Some(self.on_exit(tgid, exit_code).into()),
            _ => None,
        }
    }
}

/// Converts a `CLOCK_MONOTONIC` event time into wall-clock time, given both clocks now.
pub(crate) fn wall_time(event_ns: u64, mono_now_ns: u64, wall_now: SystemTime) -> SystemTime {
    let ago = Duration::from_nanos(mono_now_ns.saturating_sub(event_ns));
    // An event is never from the future, and never more than a minute old here: a larger
    // difference is a clock oddity, and "now" is then the better answer.
    if ago > Duration::from_secs(60) {
        return wall_now;
    }
    wall_now.checked_sub(ago).unwrap_or(wall_now)
}

/// Whether `TWINGUARD_SOURCES=fallback` asks for the fallback sources.
pub(crate) fn fallback_forced() -> bool {
    std::env::var(SOURCES_VARIABLE).is_ok_and(|v| v.trim() == "fallback")
}

/// The source the next run uses.
enum Plan {
    /// Not chosen yet: the next run chooses, reports and restarts at once.
    Choose,
    /// The eBPF programs, loaded and attached.
    Ebpf(Box<ProcessProbes>),
    /// The process connector, because of the reason in the status note.
    Connector,
}

/// A hidden setting for tests: the eBPF ring buffer's size in bytes (a power of two, at least
/// 4096), so that a test can make it overflow. Anything else is ignored.
pub(crate) const RING_BYTES_VARIABLE: &str = "TWINGUARD_EBPF_RING_BYTES";

/// Which source this machine allows now: the eBPF programs (loaded and attached) or why not.
pub(crate) fn choose_source() -> Result<ProcessProbes, String> {
    if fallback_forced() {
        return Err(format!("eBPF not tried: {SOURCES_VARIABLE}=fallback"));
    }
    ProcessProbes::load_with_ring(ring_bytes()).map_err(|e| format!("eBPF unavailable: {}", e.chain()))
}

/// The eBPF ring buffer size: [`RING_BYTES_VARIABLE`] when valid, else the default.
pub(crate) fn ring_bytes() -> u32 {
    std::env::var(RING_BYTES_VARIABLE)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| n.is_power_of_two() && *n >= 4096)
        .unwrap_or(crate::sys::ebpf::RING_BYTES)
}

/// The ProcessCreate / ProcessTerminate stream collector.
pub(crate) struct ProcessCollector {
    status: CollectorStatus,
    plan: Plan,
}

impl std::fmt::Debug for ProcessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCollector")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

impl ProcessCollector {
    /// A collector of this machine's process events. Its source is chosen when it first runs
    /// (until then the status names none).
    pub fn new() -> ProcessCollector {
        ProcessCollector {
            status: CollectorStatus::default(),
            plan: Plan::Choose,
        }
    }

    /// Chooses the source and sets the status the supervisor reports before the next run.
    fn choose(&mut self) -> Plan {
        match choose_source() {
            Ok(probes) => {
                self.status = CollectorStatus {
                    source: SOURCE_EBPF.into(),
                    ..CollectorStatus::default()
                };
                Plan::Ebpf(Box::new(probes))
            }
            Err(why) => {
                self.fall_back(why);
                Plan::Connector
            }
        }
    }

    fn fall_back(&mut self, why: String) {
        warn!("process events from the {SOURCE}: {why}");
        self.status = CollectorStatus {
            source: SOURCE.into(),
            fallback: true,
            note: Some(why),
            ..CollectorStatus::default()
        };
    }
}

/// Reads `/proc/<pid>` for an exec: the image first (it vanishes when the process exits),
/// then only what the tracker does not know from events.
fn read_process(pid: u32, needs: Needs) -> Option<ProcessInfo> {
    let dir = ProcDir::open(pid).ok()?;
    let mut info = dir.image();
    // `stat` gives the parent, and the command name when the image is already gone.
    if needs.parent || info.executable.is_none() || info.command_line.is_none() {
        dir.add_stat(&mut info);
    }
    if needs.uid {
        dir.add_uids(&mut info);
    }
    dir.add_facts(&mut info);
    Some(info)
}

/// Reads only the executable of `pid` (what ProcessTerminate needs of an exec).
pub(crate) fn read_executable(pid: u32) -> Option<ProcessInfo> {
    let dir = ProcDir::open(pid).ok()?;
    Some(ProcessInfo {
        executable: dir
            .read_link("exe")
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        ..ProcessInfo::default()
    })
}

pub(crate) fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Fills the table with the processes that exist now, so their exits have an executable and
/// their children a user.
pub(crate) fn seed(tracker: &mut ProcessTracker) {
    let Ok(pids) = procinfo::all_pids(MAX_TRACKED) else {
        return;
    };
    for pid in pids {
        if let Ok(dir) = ProcDir::open(pid) {
            let exe = dir
                .read_link("exe")
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let mut info = ProcessInfo::default();
            dir.add_stat(&mut info);
            dir.add_uids(&mut info);
            tracker.seed(pid, exe, info.ppid, info.uid.zip(info.euid));
        }
    }
}

/// Most items gathered before they are handed over, while the socket still has messages.
const MAX_BATCH: usize = 256;
/// How long gathered items may wait before they are handed over: one wake-up of the run loop
/// per this interval under a steady stream, instead of one per event.
const HAND_OVER_AFTER: Duration = Duration::from_millis(100);
/// Datagrams taken per receive call.
const RECV_SLOTS: usize = 64;

impl StreamCollector for ProcessCollector {
    fn names(&self) -> &[EventName] {
        &[EventName::ProcessCreate, EventName::ProcessTerminate]
    }

    fn run(&mut self, sink: &EventSink, stop: &StopSignal) -> Result<(), CollectError> {
        // A run uses the plan once: the next start (after Off, or a failure) chooses again.
        match std::mem::replace(&mut self.plan, Plan::Choose) {
            Plan::Choose => {
                self.plan = self.choose();
                Err(CollectError::SourceChanged {
                    source_name: "(choosing)".into(),
                    why: format!("starting on {}", self.status.source),
                })
            }
            Plan::Ebpf(probes) => match ebpf::run(*probes, sink, stop) {
                Ok(()) => Ok(()),
                Err(
                    e @ (ebpf::EbpfStopped::SelfTestFailed { .. } | ebpf::EbpfStopped::CheckFailed { .. }),
                ) => {
                    self.fall_back(format!("eBPF stopped, {e}"));
                    self.plan = Plan::Connector;
                    Err(CollectError::Degraded {
                        source_name: SOURCE_EBPF.into(),
                        why: format!("{e}; the {SOURCE} takes over"),
                    })
                }
                Err(e) => Err(CollectError::Failed {
                    source_name: SOURCE_EBPF.into(),
                    why: e.to_string(),
                }),
            },
            Plan::Connector => self.run_connector(sink, stop),
        }
    }

    fn status(&self) -> CollectorStatus {
        self.status.clone()
    }
}

impl ProcessCollector {
    /// The process connector source, until stopped or failed.
    fn run_connector(&mut self, sink: &EventSink, stop: &StopSignal) -> Result<(), CollectError> {
        let unavailable = |why: String| CollectError::Unavailable {
            source_name: SOURCE.into(),
            why,
        };
        let (conn, early) = ProcConnector::subscribe(RECV_TIMEOUT).map_err(|e| unavailable(e.to_string()))?;
        debug!(
            "process connector: receive buffer {} KiB",
            conn.recv_buffer / 1024
        );
        // A short-lived process is gone within a millisecond of its exec; waking this thread
        // ahead of ordinary work is what lets its executable and arguments be read. Failing to
        // (no CAP_SYS_NICE) only costs enrichment.
        procinfo::raise_thread_priority(PRIORITY_BOOST);
        let mut tracker = ProcessTracker::new(MAX_TRACKED);
        seed(&mut tracker);
        let mut users = UserNames::default();
        let mut overruns: u64 = 0;
        // Items are gathered while messages keep coming and handed over once the socket is
        // drained: reading `/proc` for the next exec (before that process exits) comes before
        // building and handing over the previous events.
        let mut batch: Vec<(PayloadItem, SystemTime)> = Vec::with_capacity(MAX_BATCH);
        let mut take = |tracker: &mut ProcessTracker,
                        msg: &ProcMessage,
                        wall: SystemTime,
                        batch: &mut Vec<(PayloadItem, SystemTime)>| {
            let lost = tracker.count_losses(msg);
            if lost > 0 {
                sink.count_losses(lost);
            }
            // The priorities in force: an exec read for ProcessTerminate only needs the
            // executable; an event that is Off is not built.
            let create = sink.wants(EventName::ProcessCreate);
            let mut read = |pid: u32, needs: Needs| {
                if create {
                    read_process(pid, needs)
                } else {
                    read_executable(pid)
                }
            };
            if let Some(item) = tracker.apply(msg, &mut read, &mut |uid| users.name(uid), &alive) {
                if sink.wants(item.name()) {
                    batch.push((item, wall));
                }
            }
        };
        let hand_over = |batch: &mut Vec<(PayloadItem, SystemTime)>| {
            let mut events = Vec::with_capacity(batch.len());
            for (item, wall) in batch.drain(..) {
                match crate::stamp::new_event(item.name(), vec![item], wall) {
                    Ok(event) => events.push(event),
                    Err(e) => debug!("process event not built: {e}"),
                }
            }
            sink.send_all(events);
        };
        let (mono, wall) = (procinfo::monotonic_ns(), SystemTime::now());
        for msg in &early {
            take(
                &mut tracker,
                msg,
                wall_time(msg.timestamp_ns, mono, wall),
                &mut batch,
            );
        }
        hand_over(&mut batch);
        // Each message is about 100 bytes, one per datagram: one system call takes a burst.
        let mut datagrams = RecvBatch::new(RECV_SLOTS, 512);
        let mut waiting = true;
        // When the first item not yet handed over was gathered.
        let mut oldest: Option<Instant> = None;
        while !stop.is_stopped() {
            match conn.recv_batch(&mut datagrams, waiting) {
                Ok(BatchReceived::Data(n)) => {
                    let (mono, wall) = (procinfo::monotonic_ns(), SystemTime::now());
                    for (d, _) in datagrams.datagrams() {
                        for msg in cnproc::parse_datagram(d).into_iter().flatten() {
                            take(
                                &mut tracker,
                                &msg,
                                wall_time(msg.timestamp_ns, mono, wall),
                                &mut batch,
                            );
                        }
                    }
                    // Slots left empty: the socket was drained, so the next call waits
                    // rather than spend a system call on finding it empty.
                    waiting = n < RECV_SLOTS;
                    if batch.is_empty() {
                        oldest = None;
                    } else if oldest.is_none() {
                        oldest = Some(Instant::now());
                    }
                    if batch.len() >= MAX_BATCH || oldest.is_some_and(|t| t.elapsed() >= HAND_OVER_AFTER) {
                        hand_over(&mut batch);
                        oldest = None;
                    }
                    continue;
                }
                Ok(BatchReceived::Timeout) if !waiting => {
                    // Drained: wait again; what was gathered goes when the batch is full, old
                    // enough, or the socket stays quiet for a whole receive timeout.
                    waiting = true;
                    if oldest.is_some_and(|t| t.elapsed() >= HAND_OVER_AFTER) {
                        hand_over(&mut batch);
                        oldest = None;
                    }
                    continue;
                }
                Ok(BatchReceived::Timeout) => {}
                Ok(BatchReceived::Overrun) => {
                    // The sequence gaps of the next messages count exactly what was lost.
                    overruns += 1;
                    if overruns.is_power_of_two() {
                        warn!(
                            overruns,
                            "process connector: receive buffer overrun, events lost (counted)"
                        );
                    }
                    continue;
                }
                Err(e) => {
                    return Err(CollectError::Failed {
                        source_name: SOURCE.into(),
                        why: format!("receive: {e}"),
                    })
                }
            }
            // Quiet for a receive timeout: hand over what was gathered, then wait again.
            hand_over(&mut batch);
            oldest = None;
            waiting = true;
        }
        hand_over(&mut batch);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(event: ProcEvent) -> ProcMessage {
        ProcMessage {
            cpu: 0,
            seq: 0,
            ack: 0,
            timestamp_ns: 0,
            event,
        }
    }

    fn info(exe: &str, args: &str, uid: u32, ppid: u32) -> ProcessInfo {
        ProcessInfo {
            executable: Some(exe.into()),
            command_line: Some(args.into()),
            command_line_truncated: false,
            uid: Some(uid),
            euid: Some(uid),
            ppid: Some(ppid),
            start_time: Some(1),
            comm: Some("x".into()),
            ..ProcessInfo::default()
        }
    }

    fn names(uid: u32) -> Option<String> {
        (uid == 0).then(|| "root".to_string())
    }

    fn always(_: u32) -> bool {
        true
    }

    #[test]
    fn fork_exec_exit_make_create_and_terminate() {
        let mut t = ProcessTracker::new(100);
        t.seed(1, Some("/sbin/init".into()), Some(0), Some((0, 0)));
        t.seed(50, Some("/bin/bash".into()), Some(1), Some((0, 0)));
        let fork = ProcEvent::Fork {
            parent_pid: 50,
            parent_tgid: 50,
            child_pid: 60,
            child_tgid: 60,
        };
        assert_eq!(t.apply(&msg(fork), &mut |_, _| None, &mut names, &always), None);
        // The child's /proc says its parent is init (reparented): the fork event wins.
        let mut read = |_, _| Some(info("/usr/bin/curl", "curl -s http://x", 0, 1));
        let created = t.apply(
            &msg(ProcEvent::Exec { pid: 60, tgid: 60 }),
            &mut read,
            &mut names,
            &always,
        );
        let PayloadItem::ProcessCreate(c) = created.unwrap() else {
            panic!()
        };
        assert_eq!((c.process_id, c.parent_process_id), (60, 50));
        assert_eq!(
            (c.executable.as_str(), c.command_line.as_str()),
            ("/usr/bin/curl", "curl -s http://x")
        );
        assert_eq!((c.user_id.as_str(), c.user_name.as_deref()), ("0", Some("root")));
        assert!(c.extra_details.is_empty());
        let exit = ProcEvent::Exit {
            pid: 60,
            tgid: 60,
            exit_code: 9,
            exit_signal: 17,
        };
        let PayloadItem::ProcessTerminate(e) = t
            .apply(&msg(exit), &mut |_, _| None, &mut names, &always)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((e.executable.as_str(), e.exit_status), ("/usr/bin/curl", 137));
        assert_eq!(e.extra_details.get("Signal").map(String::as_str), Some("9"));
        assert_eq!(t.len(), 2, "the exited process is forgotten");
    }

    #[test]
    fn uids_follow_forks_and_uid_changes_so_status_is_read_only_when_unknown() {
        let mut t = ProcessTracker::new(100);
        t.seed(50, Some("/bin/bash".into()), Some(1), Some((1000, 1000)));
        assert_eq!(
            t.needs(50),
            Needs {
                parent: false,
                uid: false
            }
        );
        assert_eq!(
            t.needs(77),
            Needs {
                parent: true,
                uid: true
            }
        );
        t.on_fork(50, 60, &always);
        assert_eq!(
            t.needs(60),
            Needs {
                parent: false,
                uid: false
            }
        );
        let image = ProcessInfo {
            executable: Some("/usr/bin/sudo".into()),
            command_line: Some("sudo id".into()),
            ..ProcessInfo::default()
        };
        // The exec of a setuid program changes the effective uid: the kernel says so first.
        t.on_uid(60, 1000, 0);
        let c = t.on_exec(
            60,
            Some(image.clone()),
            &mut |u| (u == 1000).then(|| "pi".into()),
            &always,
        );
        assert_eq!((c.user_id.as_str(), c.user_name.as_deref()), ("1000", Some("pi")));
        assert_eq!(
            c.extra_details.get("EffectiveUserId").map(String::as_str),
            Some("0")
        );
        assert_eq!(c.parent_process_id, 50);
        assert!(!c.extra_details.contains_key("Missing"));
        let uid_event = ProcEvent::Uid {
            pid: 60,
            tgid: 60,
            ruid: 0,
            euid: 0,
        };
        assert_eq!(
            t.apply(&msg(uid_event), &mut |_, _| None, &mut names, &always),
            None
        );
        let c = t.on_exec(60, Some(image), &mut names, &always);
        assert_eq!(c.user_id, "0");
    }

    #[test]
    fn threads_are_not_processes() {
        let mut t = ProcessTracker::new(100);
        let thread = ProcEvent::Fork {
            parent_pid: 50,
            parent_tgid: 50,
            child_pid: 51,
            child_tgid: 50,
        };
        assert_eq!(t.apply(&msg(thread), &mut |_, _| None, &mut names, &always), None);
        assert!(t.is_empty());
        let thread_exit = ProcEvent::Exit {
            pid: 51,
            tgid: 50,
            exit_code: 0,
            exit_signal: u32::MAX,
        };
        assert_eq!(
            t.apply(&msg(thread_exit), &mut |_, _| None, &mut names, &always),
            None
        );
    }

    #[test]
    fn a_forked_child_that_never_execs_terminates_with_its_parents_executable() {
        let mut t = ProcessTracker::new(100);
        t.seed(50, Some("/usr/sbin/nginx".into()), Some(1), None);
        t.on_fork(50, 70, &always);
        let e = t.on_exit(70, 3 << 8);
        assert_eq!((e.executable.as_str(), e.exit_status), ("/usr/sbin/nginx", 3));
        assert!(e.extra_details.is_empty());
    }

    #[test]
    fn a_process_gone_before_enrichment_still_gives_its_event() {
        let mut t = ProcessTracker::new(100);
        let c = t.on_exec(80, None, &mut names, &always);
        assert_eq!(
            (c.executable.as_str(), c.user_id.as_str(), c.parent_process_id),
            ("", "", 0)
        );
        assert_eq!(
            c.extra_details.get("Missing").map(String::as_str),
            Some("ParentProcessId;Executable;CommandLine;UserId")
        );
        let zombie = ProcessInfo {
            uid: Some(1000),
            euid: Some(1000),
            ppid: Some(5),
            comm: Some("true".into()),
            ..ProcessInfo::default()
        };
        let c = t.on_exec(81, Some(zombie), &mut names, &always);
        assert_eq!(
            c.extra_details.get("Missing").map(String::as_str),
            Some("Executable;CommandLine")
        );
        assert_eq!(c.extra_details.get("Comm").map(String::as_str), Some("true"));
        assert_eq!(c.user_name, None);
        let e = t.on_exit(999, 0);
        assert_eq!(
            e.extra_details.get("Missing").map(String::as_str),
            Some("Executable")
        );
    }

    #[test]
    fn setuid_programs_show_the_effective_uid() {
        let mut t = ProcessTracker::new(10);
        let mut i = info("/usr/bin/sudo", "sudo id", 1000, 1);
        i.euid = Some(0);
        i.command_line_truncated = true;
        let c = t.on_exec(5, Some(i), &mut names, &always);
        assert_eq!(c.user_id, "1000");
        assert_eq!(
            c.extra_details.get("EffectiveUserId").map(String::as_str),
            Some("0")
        );
        assert_eq!(
            c.extra_details.get("Truncated").map(String::as_str),
            Some("CommandLine")
        );
    }

    #[test]
    fn the_table_is_bounded_and_sheds_dead_processes_first() {
        let mut t = ProcessTracker::new(3);
        for pid in 1..=3 {
            t.on_fork(0, pid, &always);
        }
        t.on_fork(0, 4, &|p| p != 2);
        assert_eq!(t.len(), 3);
        assert_eq!(t.refused, 0);
        t.on_fork(0, 5, &always);
        assert_eq!((t.len(), t.refused), (3, 1));
        assert_eq!(t.on_exit(4, 0).executable, "");
    }

    #[test]
    fn monotonic_times_become_wall_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            wall_time(4_000_000_000, 5_000_000_000, now),
            now - Duration::from_secs(1)
        );
        assert_eq!(
            wall_time(6_000_000_000, 5_000_000_000, now),
            now,
            "never in the future"
        );
        assert_eq!(wall_time(0, 500_000_000_000, now), now, "absurd ages are clamped");
    }
}
