//! ConnectionCreate from the eBPF programs (`sys::ebpf_connection`): every TCP connect
//! (returning 0 or EINPROGRESS) and every accept, IPv4 and IPv6, with both ends, the pid, uid,
//! executable and arguments, all taken in the kernel by the process that made the connection
//! as its system call returns. A connection closed microseconds later is reported whole; each
//! connection once (a second connection to the same end is a second event).
//!
//! Records are read in batches, as the process source reads its own: the kernel wakes this
//! thread once 16 KiB wait, and the thread drains every [`DRAIN_EVERY`] anyway. Records the
//! kernel could not put in the full ring buffer are counted per CPU and become the sink's
//! losses.
//!
//! Self-test: at start the collector makes a loopback connection of its own (a listener on
//! 127.0.0.1, a connect, an accept); unless both its Out and In records arrive within
//! [`SELF_TEST_WAIT`], the programs are attached but not working and the collector gives way
//! to audit. The self-test's own records are not reported.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Instant, SystemTime};

use tracing::{debug, warn};

use crate::collect::process::ebpf::{DRAIN_EVERY, SELF_TEST_WAIT};
use crate::collect::process::{wall_time, PRIORITY_BOOST};
use crate::sys::ebpf_connection::{
    self, ConnectionKind, ConnectionProbes, ConnectionRecord, LoopbackConnection,
};
use crate::sys::procinfo::{self, join_cmdline, MAX_CMDLINE};
use twinguard_core::event::{ConnectionCreate, Direction, Event, EventName, ExtraDetails, Protocol};

use super::super::{EventSink, StopSignal};
use super::{canonical, scope_name};

/// Records taken per drain before the events are handed over.
const MAX_DRAIN: usize = 4096;

/// Why the eBPF connection source stopped.
#[derive(Debug, thiserror::Error)]
pub enum EbpfStopped {
    /// The self-test connection could not be made.
    #[error("self-test: the loopback connection could not be made")]
    SelfTestSetup(#[source] std::io::Error),
    /// The programs are attached but the self-test connection was not seen.
    #[error("self-test: the loopback connection 127.0.0.1:{client} -> 127.0.0.1:{server} was not seen within {SELF_TEST_WAIT:?} (connect seen: {out}, accept seen: {inbound})")]
    SelfTestFailed {
        /// The client's port.
        client: u16,
        /// The listener's port.
        server: u16,
        /// Whether the connect was seen.
        out: bool,
        /// Whether the accept was seen.
        inbound: bool,
    },
    /// Waiting on the ring buffer failed.
    #[error("waiting on the ring buffer")]
    Wait(#[source] std::io::Error),
}

/// The self-test connection: its ports, what was seen of it, and until when to wait.
struct SelfTest {
    server: u16,
    client: u16,
    out: bool,
    inbound: bool,
    deadline: Instant,
}

impl SelfTest {
    /// Makes the loopback connection, held open until the test is over.
    fn start() -> std::io::Result<(SelfTest, LoopbackConnection)> {
        let connection = LoopbackConnection::make(SELF_TEST_WAIT)?;
        Ok((
            SelfTest {
                server: connection.server,
                client: connection.client,
                out: false,
                inbound: false,
                deadline: Instant::now() + SELF_TEST_WAIT,
            },
            connection,
        ))
    }

    /// Whether `r` is the self-test's connection (then it is noted, not reported).
    fn take(&mut self, r: &ConnectionRecord) -> bool {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (local, remote) = (
            (canonical(r.local.0).0, r.local.1),
            (canonical(r.remote.0).0, r.remote.1),
        );
        match r.kind {
            ConnectionKind::Connect
                if local == (loopback, self.client) && remote == (loopback, self.server) =>
            {
                self.out = true;
                true
            }
            ConnectionKind::Accept
                if local == (loopback, self.server) && remote == (loopback, self.client) =>
            {
                self.inbound = true;
                true
            }
            _ => false,
        }
    }

    fn passed(&self) -> bool {
        self.out && self.inbound
    }
}

/// The ConnectionCreate item of a record.
pub fn item(r: &ConnectionRecord) -> ConnectionCreate {
    let mut extra = ExtraDetails::new();
    let (remote, mapped) = canonical(r.remote.0);
    let (local, _) = canonical(r.local.0);
    if mapped {
        extra.insert("SocketFamily".into(), "IPv6".into());
    }
    if r.ifindex != 0 && matches!(r.remote.0, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
        extra.insert("ScopeId".into(), scope_name(r.ifindex));
    }
    let (command_line, cut) = if r.argv.is_empty() {
        (None, false)
    } else {
        let (text, cut) = join_cmdline(&r.argv, MAX_CMDLINE);
        (Some(text), cut)
    };
    if cut {
        extra.insert("Truncated".into(), "CommandLine".into());
    }
    let mut missing = Vec::new();
    if r.executable.is_none() {
        missing.push("Executable");
    }
    if command_line.is_none() {
        missing.push("CommandLine");
    }
    extra.insert("Source".into(), "ebpf".into());
    let (direction, syscall) = match r.kind {
        ConnectionKind::Connect => (Direction::Out, "connect"),
        ConnectionKind::Accept => (Direction::In, "accept"),
    };
    extra.insert("Syscall".into(), syscall.into());
    if r.in_progress {
        extra.insert("InProgress".into(), "true".into());
    }
    if !missing.is_empty() {
        extra.insert("Missing".into(), missing.join(";"));
    }
    ConnectionCreate {
        remote_address: remote,
        remote_port: r.remote.1.to_string(),
        local_address: Some(local),
        local_port: Some(r.local.1.to_string()),
        direction,
        protocol: Protocol::Tcp,
        process_id: r.tgid,
        user_id: Some(r.uid.to_string()),
        executable: r.executable.clone().unwrap_or_default(),
        command_line,
        extra_details: extra,
    }
}

/// Runs the eBPF source until `stop` is raised (Ok) or it fails.
pub fn run(mut probes: ConnectionProbes, sink: &EventSink, stop: &StopSignal) -> Result<(), EbpfStopped> {
    // Drained ahead of ordinary work, as the process source is: a storm of connections fills the
    // ring buffer while its reader waits for a CPU.
    procinfo::raise_thread_priority(PRIORITY_BOOST);
    let (mut self_test, held) = SelfTest::start().map_err(EbpfStopped::SelfTestSetup)?;
    let mut held = Some(held);
    let mut dropped_before: u64 = 0;
    let mut batch: Vec<Event> = Vec::with_capacity(256);
    while !stop.is_stopped() {
        probes.wait(DRAIN_EVERY).map_err(EbpfStopped::Wait)?;
        let (mono, wall) = (procinfo::monotonic_ns(), SystemTime::now());
        let want = sink.wants(EventName::ConnectionCreate);
        loop {
            let taken = probes.drain(MAX_DRAIN, &mut |bytes| {
                let Some(record) = ebpf_connection::parse_connection(bytes) else {
                    debug!("eBPF connection record not understood ({} bytes)", bytes.len());
                    return;
                };
                if held.is_some() && self_test.take(&record) {
                    return;
                }
                if !want {
                    return;
                }
                match crate::stamp::new_event(
                    EventName::ConnectionCreate,
                    vec![item(&record).into()],
                    wall_time(record.ktime_ns, mono, wall),
                ) {
                    Ok(e) => batch.push(e),
                    Err(e) => debug!("connection event not built: {e}"),
                }
            });
            if taken < MAX_DRAIN {
                break;
            }
            sink.send_all(std::mem::take(&mut batch));
        }
        if !batch.is_empty() {
            sink.send_all(std::mem::take(&mut batch));
        }
        match probes.counts().map(|c| c.dropped) {
            Ok(dropped) if dropped > dropped_before => {
                sink.count_losses(dropped - dropped_before);
                warn!(
                    lost = dropped - dropped_before,
                    "eBPF ring buffer full: connection events lost (counted)"
                );
                dropped_before = dropped;
            }
            Ok(_) => {}
            Err(e) => debug!("eBPF drop counter unreadable: {e}"),
        }
        if held.is_some() {
            if self_test.passed() {
                held = None;
            } else if Instant::now() >= self_test.deadline {
                return Err(EbpfStopped::SelfTestFailed {
                    client: self_test.client,
                    server: self_test.server,
                    out: self_test.out,
                    inbound: self_test.inbound,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn record(kind: ConnectionKind, local: &str, remote: &str) -> ConnectionRecord {
        let l: SocketAddr = local.parse().unwrap();
        let r: SocketAddr = remote.parse().unwrap();
        ConnectionRecord {
            kind,
            tgid: 42,
            ktime_ns: 1,
            uid: 1000,
            local: (l.ip(), l.port()),
            remote: (r.ip(), r.port()),
            ifindex: 0,
            in_progress: false,
            executable: Some("/usr/bin/curl".into()),
            argv: b"curl\0https://example.org\0".to_vec(),
        }
    }

    #[test]
    fn records_become_items_with_both_ends_and_mapped_addresses_as_ipv4() {
        let out = item(&record(
            ConnectionKind::Connect,
            "[::ffff:10.0.0.2]:40000",
            "[::ffff:10.0.0.1]:443",
        ));
        assert_eq!(out.direction, Direction::Out);
        assert_eq!(out.remote_address, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(out.local_address, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(
            (out.remote_port.as_str(), out.local_port.as_deref()),
            ("443", Some("40000"))
        );
        assert_eq!(
            out.extra_details.get("SocketFamily").map(String::as_str),
            Some("IPv6")
        );
        assert_eq!(out.extra_details.get("Source").map(String::as_str), Some("ebpf"));
        assert_eq!(out.command_line.as_deref(), Some("curl https://example.org"));
        assert_eq!((out.process_id, out.user_id.as_deref()), (42, Some("1000")));
        assert!(!out.extra_details.contains_key("Missing"));
        let mut bare = record(ConnectionKind::Accept, "[::1]:22", "[::1]:5000");
        bare.executable = None;
        bare.argv.clear();
        let inbound = item(&bare);
        assert_eq!(inbound.direction, Direction::In);
        assert_eq!(inbound.remote_address, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            inbound.extra_details.get("Missing").map(String::as_str),
            Some("Executable;CommandLine")
        );
    }

    #[test]
    fn the_self_test_takes_only_its_own_connection() {
        let mut t = SelfTest {
            server: 5000,
            client: 40000,
            out: false,
            inbound: false,
            deadline: Instant::now(),
        };
        assert!(!t.take(&record(
            ConnectionKind::Connect,
            "127.0.0.1:40001",
            "127.0.0.1:5000"
        )));
        assert!(!t.take(&record(
            ConnectionKind::Accept,
            "127.0.0.1:40000",
            "127.0.0.1:5000"
        )));
        assert!(t.take(&record(
            ConnectionKind::Connect,
            "127.0.0.1:40000",
            "127.0.0.1:5000"
        )));
        assert!(!t.passed());
        assert!(t.take(&record(
            ConnectionKind::Accept,
            "127.0.0.1:5000",
            "127.0.0.1:40000"
        )));
        assert!(t.passed());
    }
}
