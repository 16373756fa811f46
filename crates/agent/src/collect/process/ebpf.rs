//! ProcessCreate and ProcessTerminate from the eBPF programs (`sys::ebpf`): every fact of an
//! exec (pid, parent, uids, the executable's path, the whole argument list up to the cap) is
//! taken in the kernel at the exec, so a process that lived microseconds is reported whole,
//! with no `/proc` race. Records feed the same [`ProcessTracker`] as the process connector's
//! messages, so both sources make identical items (fork-time parent, executables of forked
//! children that never exec, 128 + signal).
//!
//! Records are read in batches: the kernel wakes this thread only once 16 KiB wait, and the
//! thread drains the ring buffer every [`DRAIN_EVERY`] in any case. Records the kernel could not
//! put in the full ring buffer are counted per CPU in the kernel and added to the sink's losses.
//!
//! Self-test and tamper check: at start, and every [`CHECK_EVERY`] after, the agent runs its
//! own binary (`--version <marker>`); the fork, the exec (recognised by the marker) and the exit
//! of that child must all come through the programs within [`SELF_TEST_WAIT`], and every
//! program's link must still hold it (asked of the kernel). A program detached or not working
//! stops this source: the collector gives way to the process connector, with the reason in its
//! status and a Diagnostic. A check that overlaps counted ring-buffer losses is retried, not
//! failed (the child's records may be among the lost).

use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use crate::sys::ebpf::{self, ProcessProbes, Record};
use crate::sys::execfacts;
use crate::sys::procinfo::{self, join_cmdline, ProcessInfo, MAX_CMDLINE};
use twinguard_core::event::{EventName, PayloadItem};

use super::super::user_names::UserNames;
use super::super::{EventSink, StopSignal};
use super::{alive, read_executable, seed, wall_time, ProcessTracker, MAX_TRACKED, PRIORITY_BOOST};

/// How long the thread sleeps between drains when the kernel does not wake it: the latest an
/// event is handed over.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How long the exec of the self-test child may take to be seen.
pub const SELF_TEST_WAIT: Duration = Duration::from_secs(2);
/// Records taken per drain before the items are handed over.
const MAX_DRAIN: usize = 4096;

/// Why the eBPF source stopped.
#[derive(Debug, thiserror::Error)]
pub enum EbpfStopped {
    /// The programs are attached but the self-test at start did not come through.
    #[error("self-test: {why}")]
    SelfTestFailed {
        /// What was not seen.
        why: String,
    },
    /// A periodic check found a program detached or not working.
    #[error("tamper check: {why}")]
    CheckFailed {
        /// What was found.
        why: String,
    },
    /// Waiting on the ring buffer failed.
    #[error("waiting on the ring buffer")]
    Wait(#[source] std::io::Error),
}

/// How often the attached programs are checked (hidden `TWINGUARD_EBPF_CHECK_MS` for tests).
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Hidden test settings: the check interval, and a time after which the agent detaches its own
/// exec program (closing its link, for real), so a test sees the check catch it.
const CHECK_MS_VARIABLE: &str = "TWINGUARD_EBPF_CHECK_MS";
const DETACH_MS_VARIABLE: &str = "TWINGUARD_EBPF_TEST_DETACH_MS";
/// Most fork records remembered while a self-test child is awaited.
const MAX_FORKS_AWAITED: usize = 4096;

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// The self-test's state.
enum SelfTest {
    /// Waiting until the deadline for the exec whose arguments carry the marker (matched by
    /// marker, not pid: the kernel's pids are the initial pid namespace's, the child's `pid` is
    /// the agent's, and they differ when the agent runs in a container); the new processes
    /// seen meanwhile, so the child's fork can be checked.
    Pending {
        marker: Vec<u8>,
        pid: u32,
        deadline: Instant,
        forks: Vec<u32>,
        periodic: bool,
        dropped: u64,
    },
    /// The child's exec was seen (`tgid` in the kernel's pids): waiting for its exit.
    Exiting {
        tgid: u32,
        deadline: Instant,
        periodic: bool,
        dropped: u64,
    },
    /// Nothing awaited.
    Idle,
}

impl SelfTest {
    /// Whether this exec is the self-test's (the marker in its arguments).
    fn is_marker(&self, exec: &ebpf::ExecRecord) -> bool {
        match self {
            SelfTest::Pending { marker, .. } => {
                exec.argv.windows(marker.len()).any(|w| w == marker.as_slice())
            }
            _ => false,
        }
    }

    /// Whether `tgid` is the self-test child seen earlier.
    fn is_child(&self, tgid: u32) -> bool {
        matches!(self, SelfTest::Exiting { tgid: t, .. } if *t == tgid)
    }

    /// Starts a self-test: runs the marked child.
    fn start(periodic: bool, dropped: u64) -> SelfTest {
        let marker = format!(
            "twinguard-self-test-{}-{}",
            std::process::id(),
            procinfo::monotonic_ns()
        );
        match ebpf::run_marker(&marker) {
            Ok(pid) => SelfTest::Pending {
                marker: marker.into_bytes(),
                pid,
                deadline: Instant::now() + SELF_TEST_WAIT,
                forks: Vec::new(),
                periodic,
                dropped,
            },
            Err(e) => {
                warn!("eBPF process source: the self-test could not run its child ({e}); trusting the attached programs");
                SelfTest::Idle
            }
        }
    }
}

/// A failed self-test: at start or periodic.
fn failed(periodic: bool, why: String) -> EbpfStopped {
    if periodic {
        EbpfStopped::CheckFailed { why }
    } else {
        EbpfStopped::SelfTestFailed { why }
    }
}

/// Turns an exec record into what the tracker needs. The executable falls back on
/// `/proc/<pid>/exe` only when the kernel could not walk the path whole, and only when `proc`
/// says the agent's `/proc` shows the kernel's pids (not in a pid namespace of its own).
pub fn exec_info(record: &ebpf::ExecRecord, proc: bool) -> ProcessInfo {
    let executable = record.executable.clone().or_else(|| {
        proc.then(|| read_executable(record.tgid))
            .flatten()
            .and_then(|i| i.executable)
    });
    let (command_line, command_line_truncated) = if record.argv.is_empty() {
        (None, false)
    } else {
        let (text, cut) = join_cmdline(&record.argv, MAX_CMDLINE);
        (Some(text), cut)
    };
    let (argv, argv_truncated) = match execfacts::argv_detail(&record.argv) {
        Some((text, cut)) if !record.argv.is_empty() => (Some(text), cut),
        _ => (None, false),
    };
    ProcessInfo {
        executable,
        command_line,
        command_line_truncated,
        argv,
        argv_truncated,
        facts: record.facts.clone(),
        uid: Some(record.uid),
        euid: Some(record.euid),
        ppid: Some(record.ppid),
        ..ProcessInfo::default()
    }
}

/// Runs the eBPF source until `stop` is raised (Ok) or it fails.
pub fn run(mut probes: ProcessProbes, sink: &EventSink, stop: &StopSignal) -> Result<(), EbpfStopped> {
    procinfo::raise_thread_priority(PRIORITY_BOOST);
    let mut tracker = ProcessTracker::new(MAX_TRACKED);
    seed(&mut tracker);
    let mut users = UserNames::default();
    let check_every = env_ms(CHECK_MS_VARIABLE).unwrap_or(CHECK_EVERY);
    let mut detach_at = env_ms(DETACH_MS_VARIABLE).map(|d| Instant::now() + d);
    let mut next_check = Instant::now() + check_every;
    let mut self_test = SelfTest::start(false, 0);
    // Whether `/proc` shows the kernel's pids; false once the self-test finds the agent in a
    // pid namespace of its own (then the table seeded from `/proc` is of other pids).
    let mut proc_pids = true;
    let mut foreign_pids = false;
    // Set when the self-test child's exec arrives without its fork before it.
    let mut fork_unseen = false;
    let mut dropped_before: u64 = 0;
    let mut batch: Vec<(PayloadItem, SystemTime)> = Vec::with_capacity(256);
    while !stop.is_stopped() {
        probes.wait(DRAIN_EVERY).map_err(EbpfStopped::Wait)?;
        let (mono, wall) = (procinfo::monotonic_ns(), SystemTime::now());
        let want_create = sink.wants(EventName::ProcessCreate);
        loop {
            let taken = probes.drain(MAX_DRAIN, &mut |bytes| {
                let Some(record) = ebpf::parse_record(bytes) else {
                    debug!("eBPF process record not understood ({} bytes)", bytes.len());
                    return;
                };
                let tgid = match &record {
                    Record::Exec(exec) => exec.tgid,
                    Record::Fork { tgid, .. } | Record::Exit { tgid, .. } => *tgid,
                };
                // The self-test child's events are the agent's own: not reported.
                let own = match &record {
                    Record::Exec(exec) if self_test.is_marker(exec) => {
                        if let SelfTest::Pending {
                            pid,
                            forks,
                            periodic,
                            dropped,
                            ..
                        } = &self_test
                        {
                            foreign_pids = *pid != exec.tgid;
                            fork_unseen = !forks.contains(&exec.tgid);
                            self_test = SelfTest::Exiting {
                                tgid: exec.tgid,
                                deadline: Instant::now() + SELF_TEST_WAIT,
                                periodic: *periodic,
                                dropped: *dropped,
                            };
                        }
                        true
                    }
                    _ => self_test.is_child(tgid),
                };
                if let (Record::Fork { tgid, .. }, SelfTest::Pending { forks, .. }) =
                    (&record, &mut self_test)
                {
                    if forks.len() < MAX_FORKS_AWAITED {
                        forks.push(*tgid);
                    }
                }
                let item: Option<(PayloadItem, u64)> = match record {
                    Record::Fork { tgid, ppid, .. } => {
                        tracker.on_fork(ppid, tgid, &alive);
                        None
                    }
                    Record::Exec(exec) => {
                        let info = if want_create {
                            exec_info(&exec, proc_pids)
                        } else {
                            ProcessInfo {
                                executable: exec.executable.clone(),
                                ..ProcessInfo::default()
                            }
                        };
                        let item = tracker.on_exec(exec.tgid, Some(info), &mut |uid| users.name(uid), &alive);
                        Some((item.into(), exec.ktime_ns))
                    }
                    Record::Exit {
                        tgid,
                        exit_code,
                        ktime_ns,
                    } => {
                        if own {
                            // Its pid may be reused by another process from now on.
                            self_test = SelfTest::Idle;
                        }
                        Some((tracker.on_exit(tgid, exit_code).into(), ktime_ns))
                    }
                };
                if let Some((item, ktime_ns)) = item {
                    if !own && sink.wants(item.name()) {
                        batch.push((item, wall_time(ktime_ns, mono, wall)));
                    }
                }
            });
            if taken < MAX_DRAIN {
                break;
            }
            hand_over(sink, &mut batch);
        }
        hand_over(sink, &mut batch);
        if foreign_pids && proc_pids {
            warn!(
                "eBPF process source: the agent runs in a pid namespace of its own; \
                 events carry the kernel's (host) pids, /proc is not used for them"
            );
            proc_pids = false;
            tracker = ProcessTracker::new(MAX_TRACKED);
        }
        match probes.counts().map(|c| c.dropped) {
            Ok(dropped) if dropped > dropped_before => {
                sink.count_losses(dropped - dropped_before);
                warn!(
                    lost = dropped - dropped_before,
                    "eBPF ring buffer full: process events lost (counted)"
                );
                dropped_before = dropped;
            }
            Ok(_) => {}
            Err(e) => debug!("eBPF drop counter unreadable: {e}"),
        }
        let now = Instant::now();
        // Records of the child may have been among those lost: check again, do not fail.
        let lossy = |dropped: u64| dropped_before > dropped;
        match &self_test {
            SelfTest::Pending {
                pid,
                deadline,
                periodic,
                dropped,
                ..
            } if now >= *deadline => {
                if !lossy(*dropped) {
                    return Err(failed(
                        *periodic,
                        format!(
                            "the exec of the agent's own binary (pid {pid}) was not seen within {SELF_TEST_WAIT:?} \
                             (program process_exec detached or not working)"
                        ),
                    ));
                }
                self_test = SelfTest::Idle;
                next_check = now;
            }
            SelfTest::Exiting {
                periodic, dropped, ..
            } if fork_unseen && !lossy(*dropped) => {
                return Err(failed(
                    *periodic,
                    "the fork of the agent's self-test child was not seen (program process_fork detached or not working)"
                        .into(),
                ));
            }
            SelfTest::Exiting {
                deadline,
                periodic,
                dropped,
                ..
            } if now >= *deadline => {
                if !lossy(*dropped) {
                    return Err(failed(
                        *periodic,
                        format!(
                            "the exit of the agent's self-test child was not seen within {SELF_TEST_WAIT:?} \
                             (program process_exit detached or not working)"
                        ),
                    ));
                }
                self_test = SelfTest::Idle;
                next_check = now;
            }
            _ => {}
        }
        fork_unseen = false;
        if detach_at.is_some_and(|t| now >= t) {
            detach_at = None;
            if probes.detach("process_exec") {
                warn!(
                    "eBPF process source: program process_exec detached ({DETACH_MS_VARIABLE}, a test hook)"
                );
            }
        }
        if matches!(self_test, SelfTest::Idle) && now >= next_check {
            next_check = now + check_every;
            probes
                .check_links()
                .map_err(|why| EbpfStopped::CheckFailed { why })?;
            self_test = SelfTest::start(true, dropped_before);
        }
    }
    Ok(())
}

fn hand_over(sink: &EventSink, batch: &mut Vec<(PayloadItem, SystemTime)>) {
    if batch.is_empty() {
        return;
    }
    let mut events = Vec::with_capacity(batch.len());
    for (item, wall) in batch.drain(..) {
        match crate::stamp::new_event(item.name(), vec![item], wall) {
            Ok(event) => events.push(event),
            Err(e) => debug!("process event not built: {e}"),
        }
    }
    sink.send_all(events);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exec_records_become_the_connectors_process_info() {
        let record = ebpf::ExecRecord {
            tgid: 10,
            ppid: 9,
            uid: 1000,
            euid: 0,
            executable: Some("/usr/bin/sudo".into()),
            argv: b"sudo\0id\0".to_vec(),
            ..ebpf::ExecRecord::default()
        };
        let info = exec_info(&record, true);
        assert_eq!(info.executable.as_deref(), Some("/usr/bin/sudo"));
        assert_eq!(info.command_line.as_deref(), Some("sudo id"));
        assert_eq!((info.uid, info.euid, info.ppid), (Some(1000), Some(0), Some(9)));
        assert!(!info.command_line_truncated);
        let long = ebpf::ExecRecord {
            argv: vec![b'a'; ebpf::ARGV_READ],
            ..record.clone()
        };
        let info = exec_info(&long, true);
        assert!(info.command_line_truncated);
        assert_eq!(info.command_line.unwrap().len(), MAX_CMDLINE);
        let exact = ebpf::ExecRecord {
            argv: [vec![b'a'; MAX_CMDLINE], vec![0]].concat(),
            ..record.clone()
        };
        assert!(
            !exec_info(&exact, true).command_line_truncated,
            "8192 bytes and the NUL fit"
        );
        let empty = ebpf::ExecRecord {
            argv: Vec::new(),
            ..record
        };
        assert_eq!(exec_info(&empty, true).command_line, None);
    }
}
