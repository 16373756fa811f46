//! The netlink process connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): the kernel's stream of
//! fork, exec and exit events. A pure parser of its messages (`struct cn_msg` +
//! `struct proc_event`, linux/connector.h and linux/cn_proc.h) and the socket that subscribes
//! to it.
//!
//! Losses are exact: the kernel numbers the events it sends per CPU (`cn_msg.seq`, one counter
//! per CPU incremented for every event while anyone listens), and every event says on which CPU
//! it was made, so a gap in one CPU's sequence is the number of events lost on the way
//! (our receive buffer overflowed, or the kernel could not allocate the message).

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use super::netlink::{self, BatchReceived, NetlinkSocket, Received, RecvBatch, NLMSG_DONE};

/// `NETLINK_CONNECTOR`.
const NETLINK_CONNECTOR: libc::c_int = 11;
/// `CN_IDX_PROC`, `CN_VAL_PROC`: the process connector's id (and multicast group).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN`, `PROC_CN_MCAST_IGNORE`.
const MCAST_LISTEN: u32 = 1;
const MCAST_IGNORE: u32 = 2;
/// Size of `struct cn_msg`.
const CN_MSG: usize = 20;
/// Offset of `event_data` in `struct proc_event` (what, cpu, then the 8-aligned timestamp).
const EVENT_DATA: usize = 16;

/// `enum proc_cn_event` values we act on.
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_UID: u32 = 0x4;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Receive buffer asked for: room for tens of thousands of events during a burst while the
/// collector thread is descheduled (each event is a 96-byte datagram plus skb overhead).
pub(crate) const RECV_BUFFER: usize = 8 * 1024 * 1024;

/// One process event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcEvent {
    /// The kernel's answer to our subscription (`PROC_EVENT_NONE`), with its errno.
    Ack {
        /// 0 on success.
        err: u32,
    },
    /// A task was created. It is a new process when `child_pid == child_tgid`; else a thread.
    Fork {
        /// The creating thread's id.
        parent_pid: u32,
        /// The creating process.
        parent_tgid: u32,
        /// The new task's thread id.
        child_pid: u32,
        /// The new task's process.
        child_tgid: u32,
    },
    /// A process called execve successfully.
    Exec {
        /// The thread id (the process leader after exec).
        pid: u32,
        /// The process.
        tgid: u32,
    },
    /// A task's user ids changed (setuid, or exec of a setuid program).
    Uid {
        /// The thread id.
        pid: u32,
        /// The process.
        tgid: u32,
        /// The real uid now.
        ruid: u32,
        /// The effective uid now.
        euid: u32,
    },
    /// A task ended. It is a process exit when `pid == tgid` (the leader); else a thread.
    Exit {
        /// The thread id.
        pid: u32,
        /// The process.
        tgid: u32,
        /// The wait status: exit code in bits 8..16, terminating signal in bits 0..7, core
        /// dump flag in bit 7.
        exit_code: u32,
        /// The signal sent to the parent (`SIGCHLD` for a process, -1 for a thread).
        exit_signal: u32,
    },
    /// Any other event (uid/gid/sid/ptrace/comm/coredump changes), ignored.
    Other {
        /// `what`.
        what: u32,
    },
}

/// One message of the process connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcMessage {
    /// The CPU the event was made on.
    pub cpu: u32,
    /// The per-CPU sequence number (`cn_msg.seq`).
    pub seq: u32,
    /// `cn_msg.ack` (for an `Ack`: our request's ack + 1).
    pub ack: u32,
    /// When, in `CLOCK_MONOTONIC` nanoseconds.
    pub timestamp_ns: u64,
    /// What happened.
    pub event: ProcEvent,
}

/// Why a message is not a process event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The netlink framing is broken.
    #[error("malformed netlink framing at byte {0}")]
    Framing(usize),
    /// The message is too short for what it claims to be.
    #[error("truncated process event ({0} bytes)")]
    Truncated(usize),
    /// Another connector's message (not `CN_IDX_PROC`).
    #[error("not a process connector message")]
    Foreign,
}

/// The wait status of an exit as SPEC §3 wants it: the exit code, or 128 + the signal number
/// when a signal ended the process. Also returns the signal and the core-dump flag.
pub fn exit_status(exit_code: u32) -> (i32, Option<u32>, bool) {
    let signal = exit_code & 0x7f;
    let core = exit_code & 0x80 != 0;
    if signal != 0 {
        (128 + signal as i32, Some(signal), core)
    } else {
        (((exit_code >> 8) & 0xff) as i32, None, false)
    }
}

/// Parses one connector message body (after the `nlmsghdr`): `cn_msg` + `proc_event`.
pub(crate) fn parse_cn_msg(b: &[u8]) -> Result<ProcMessage, ParseError> {
    let field = |at| netlink::u32_at(b, at).ok_or(ParseError::Truncated(b.len()));
    if field(0)? != CN_IDX_PROC || field(4)? != CN_VAL_PROC {
        return Err(ParseError::Foreign);
    }
    let seq = field(8)?;
    let ack = field(12)?;
    let data_len = usize::from(netlink::u16_at(b, 16).ok_or(ParseError::Truncated(b.len()))?);
    let ev = b
        .get(CN_MSG..CN_MSG.saturating_add(data_len))
        .ok_or(ParseError::Truncated(b.len()))?;
    let at = |off: usize| netlink::u32_at(ev, off).ok_or(ParseError::Truncated(b.len()));
    let what = at(0)?;
    let cpu = at(4)?;
    let timestamp_ns = netlink::u64_at(ev, 8).ok_or(ParseError::Truncated(b.len()))?;
    let d = |i: usize| at(EVENT_DATA + 4 * i);
    let event = match what {
        PROC_EVENT_NONE => ProcEvent::Ack { err: d(0)? },
        PROC_EVENT_FORK => ProcEvent::Fork {
            parent_pid: d(0)?,
            parent_tgid: d(1)?,
            child_pid: d(2)?,
            child_tgid: d(3)?,
        },
        PROC_EVENT_EXEC => ProcEvent::Exec {
            pid: d(0)?,
            tgid: d(1)?,
        },
        PROC_EVENT_UID => ProcEvent::Uid {
            pid: d(0)?,
            tgid: d(1)?,
            ruid: d(2)?,
            euid: d(3)?,
        },
        PROC_EVENT_EXIT => ProcEvent::Exit {
            pid: d(0)?,
            tgid: d(1)?,
            exit_code: d(2)?,
            exit_signal: d(3)?,
        },
        other => ProcEvent::Other { what: other },
    };
    Ok(ProcMessage {
        cpu,
        seq,
        ack,
        timestamp_ns,
        event,
    })
}

/// Parses every message of one datagram.
pub(crate) fn parse_datagram(datagram: &[u8]) -> Vec<Result<ProcMessage, ParseError>> {
    netlink::messages(datagram)
        .map(|m| match m {
            Ok(m) if m.kind == NLMSG_DONE => parse_cn_msg(m.payload),
            Ok(_) => Err(ParseError::Foreign),
            Err(at) => Err(ParseError::Framing(at)),
        })
        .collect()
}

/// Counts events lost in the kernel from the per-CPU sequence numbers.
#[derive(Debug, Default)]
pub(crate) struct LossCounter {
    last: HashMap<u32, u32>,
}

impl LossCounter {
    /// Most CPUs tracked (a bound on what a hostile `cpu` field could make us keep).
    const MAX_CPUS: usize = 4096;

    /// Records a message; returns how many events of its CPU were skipped since the last one.
    pub(crate) fn observe(&mut self, msg: &ProcMessage) -> u64 {
        if matches!(msg.event, ProcEvent::Ack { .. }) {
            // Acks carry our request's sequence, not the CPU's event counter.
            return 0;
        }
        let gap = match self.last.get(&msg.cpu) {
            Some(&prev) => {
                let d = msg.seq.wrapping_sub(prev).wrapping_sub(1);
                // A huge "gap" is a reordering or a counter reset, not billions of losses.
                if d < 1 << 30 {
                    u64::from(d)
                } else {
                    0
                }
            }
            None => 0,
        };
        if self.last.len() < Self::MAX_CPUS || self.last.contains_key(&msg.cpu) {
            self.last.insert(msg.cpu, msg.seq);
        }
        gap
    }
}

/// A subscribed process connector socket. Dropping it unsubscribes.
#[derive(Debug)]
pub struct ProcConnector {
    sock: NetlinkSocket,
    /// The receive buffer in force.
    pub recv_buffer: usize,
}

fn control(port: u32, op: u32, ack: u32) -> Vec<u8> {
    let mut cn = Vec::with_capacity(CN_MSG + 4);
    cn.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    cn.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    cn.extend_from_slice(&0u32.to_ne_bytes()); // seq
    cn.extend_from_slice(&ack.to_ne_bytes());
    cn.extend_from_slice(&4u16.to_ne_bytes()); // len
    cn.extend_from_slice(&0u16.to_ne_bytes()); // flags
    cn.extend_from_slice(&op.to_ne_bytes());
    let mut msg = netlink::request(NLMSG_DONE, 0, 0, &cn);
    // The connector wants the sender's port in nlmsg_pid.
    msg[12..16].copy_from_slice(&port.to_ne_bytes());
    msg
}

impl ProcConnector {
    /// Opens the socket, sizes its buffer, subscribes, and waits (up to 2 s) for the kernel's
    /// acknowledgement so that a refusal (no `CAP_NET_ADMIN`) is an error here, not silence.
    /// Events that arrive before the acknowledgement are returned to be processed.
    pub(crate) fn subscribe(timeout: Duration) -> io::Result<(ProcConnector, Vec<ProcMessage>)> {
        let sock = NetlinkSocket::open(NETLINK_CONNECTOR, libc::SOCK_DGRAM, CN_IDX_PROC)?;
        let recv_buffer = sock.set_recv_buffer(RECV_BUFFER)?;
        sock.set_recv_timeout(timeout)?;
        const ACK: u32 = 0x7467_0001;
        sock.send_to_kernel(&control(sock.port(), MCAST_LISTEN, ACK))?;
        let mut early = Vec::new();
        let mut buf = vec![0u8; 8192];
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            match sock.recv(&mut buf)? {
                Received::Data { len, .. } => {
                    for m in parse_datagram(&buf[..len]).into_iter().flatten() {
                        match m.event {
                            ProcEvent::Ack { err } if m.ack == ACK.wrapping_add(1) => {
                                if err != 0 {
                                    return Err(io::Error::from_raw_os_error(err as i32));
                                }
                                return Ok((ProcConnector { sock, recv_buffer }, early));
                            }
                            ProcEvent::Ack { .. } => {}
                            _ if early.len() < 65_536 => early.push(m),
                            _ => {}
                        }
                    }
                }
                Received::Timeout | Received::Overrun => {}
            }
        }
        // Kernels before 3.x did not acknowledge; events arriving proves the subscription.
        if early.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the kernel did not acknowledge the subscription",
            ));
        }
        Ok((ProcConnector { sock, recv_buffer }, early))
    }

    /// Receives one datagram (see [`NetlinkSocket::recv`]).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.sock.recv(buf)
    }

    /// Receives a burst of datagrams with one call (see [`NetlinkSocket::recv_batch`]).
    pub(crate) fn recv_batch(&self, batch: &mut RecvBatch, wait: bool) -> io::Result<BatchReceived> {
        self.sock.recv_batch(batch, wait)
    }

    /// Receives one datagram if one is queued (`Timeout` otherwise).
    pub fn recv_nowait(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.sock.recv_nowait(buf)
    }
}

impl Drop for ProcConnector {
    fn drop(&mut self) {
        // Tell the kernel one listener fewer, so it stops making events when nobody listens.
        let _ = self
            .sock
            .send_to_kernel(&control(self.sock.port(), MCAST_IGNORE, 0));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A connector datagram as the kernel sends it.
    pub(crate) fn datagram(cpu: u32, seq: u32, what: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&cpu.to_ne_bytes());
        ev.extend_from_slice(&123_456_789u64.to_ne_bytes());
        for d in data {
            ev.extend_from_slice(&d.to_ne_bytes());
        }
        while ev.len() < 40 {
            ev.push(0);
        }
        let mut cn = Vec::new();
        cn.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        cn.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        cn.extend_from_slice(&seq.to_ne_bytes());
        cn.extend_from_slice(&0u32.to_ne_bytes());
        cn.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        cn.extend_from_slice(&0u16.to_ne_bytes());
        cn.extend(ev);
        netlink::request(NLMSG_DONE, 0, seq, &cn)
    }

    #[test]
    fn parses_fork_exec_exit() {
        let fork = parse_datagram(&datagram(1, 10, PROC_EVENT_FORK, &[100, 100, 200, 200]));
        assert_eq!(
            fork[0].unwrap().event,
            ProcEvent::Fork {
                parent_pid: 100,
                parent_tgid: 100,
                child_pid: 200,
                child_tgid: 200
            }
        );
        let exec = parse_datagram(&datagram(0, 3, PROC_EVENT_EXEC, &[200, 200]))[0].unwrap();
        assert_eq!(exec.event, ProcEvent::Exec { pid: 200, tgid: 200 });
        assert_eq!((exec.cpu, exec.seq, exec.timestamp_ns), (0, 3, 123_456_789));
        let exit = parse_datagram(&datagram(0, 4, PROC_EVENT_EXIT, &[200, 200, 0x0900, 17]))[0].unwrap();
        assert_eq!(
            exit.event,
            ProcEvent::Exit {
                pid: 200,
                tgid: 200,
                exit_code: 0x0900,
                exit_signal: 17
            }
        );
        let uid = parse_datagram(&datagram(0, 5, PROC_EVENT_UID, &[7, 7, 1000, 0]))[0].unwrap();
        assert_eq!(
            uid.event,
            ProcEvent::Uid {
                pid: 7,
                tgid: 7,
                ruid: 1000,
                euid: 0
            }
        );
        let other = parse_datagram(&datagram(0, 5, 0x200, &[1, 1]))[0].unwrap();
        assert_eq!(other.event, ProcEvent::Other { what: 0x200 });
    }

    #[test]
    fn exit_status_is_code_or_128_plus_signal() {
        assert_eq!(exit_status(0), (0, None, false));
        assert_eq!(exit_status(3 << 8), (3, None, false));
        assert_eq!(exit_status(9), (137, Some(9), false));
        assert_eq!(exit_status(0x80 | 11), (139, Some(11), true));
        assert_eq!(exit_status(15), (143, Some(15), false));
    }

    #[test]
    fn truncated_and_foreign_messages_are_errors() {
        let d = datagram(0, 1, PROC_EVENT_EXEC, &[1, 1]);
        for cut in [17, 20, 30, 40, 52] {
            let mut short = d[..cut].to_vec();
            short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            assert!(parse_datagram(&short).iter().all(Result::is_err), "cut at {cut}");
        }
        let mut foreign = d.clone();
        foreign[16] = 9;
        assert_eq!(parse_datagram(&foreign), vec![Err(ParseError::Foreign)]);
    }

    #[test]
    fn sequence_gaps_per_cpu_count_losses() {
        let msg = |cpu, seq| parse_datagram(&datagram(cpu, seq, PROC_EVENT_EXEC, &[1, 1]))[0].unwrap();
        let mut c = LossCounter::default();
        assert_eq!(c.observe(&msg(0, 10)), 0);
        assert_eq!(c.observe(&msg(1, 500)), 0);
        assert_eq!(c.observe(&msg(0, 11)), 0);
        assert_eq!(c.observe(&msg(0, 15)), 3);
        assert_eq!(c.observe(&msg(1, 501)), 0);
        assert_eq!(c.observe(&msg(1, 400)), 0, "going backwards is not a loss");
        let mut wrap = LossCounter::default();
        wrap.observe(&msg(0, u32::MAX));
        assert_eq!(wrap.observe(&msg(0, 1)), 1);
    }

    #[test]
    fn captured_messages_from_this_machine_parse() {
        // Captured from this module's subscription on Linux 6.18 x86_64 while a Python program
        // ran `/bin/true fixture-arg`, killed `/bin/sleep 5` with SIGKILL, ran `sh -c 'exit 3'`
        // and a Python whose second thread exited. Stored as (u32 LE length, datagram)*; the
        // datagrams are native-endian, so the test runs on little-endian machines only.
        if cfg!(target_endian = "big") {
            return;
        }
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cnproc/true.bin"
        ))
        .unwrap();
        let mut rest = &bytes[..];
        let mut events = Vec::new();
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            events.extend(parse_datagram(&rest[4..4 + len]).into_iter().map(Result::unwrap));
            rest = &rest[4 + len..];
        }
        assert_eq!(events.len(), 17);
        assert_eq!(events[0].event, ProcEvent::Ack { err: 0 });
        assert_eq!(events[0].ack, 0x7467_0002);
        let exits: Vec<(u32, u32, u32)> = events
            .iter()
            .filter_map(|e| match e.event {
                ProcEvent::Exit {
                    pid, tgid, exit_code, ..
                } => Some((pid, tgid, exit_code)),
                _ => None,
            })
            .collect();
        // true: 0; sleep killed: signal 9; sh: exit 3; a thread (pid != tgid); python: 0; the
        // capturing program's worker thread.
        let process_exits: Vec<i32> = exits
            .iter()
            .filter(|(p, t, _)| p == t)
            .map(|(_, _, c)| exit_status(*c).0)
            .collect();
        assert_eq!(process_exits, vec![0, 137, 3, 0]);
        assert_eq!(exits.iter().filter(|(p, t, _)| p != t).count(), 2);
        let execs = events
            .iter()
            .filter(|e| matches!(e.event, ProcEvent::Exec { .. }))
            .count();
        assert_eq!(execs, 4);
        let mut losses = LossCounter::default();
        let lost: u64 = events.iter().map(|e| losses.observe(e)).sum();
        assert_eq!(lost, 0, "the capture was complete");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_datagram(&data);
            let _ = parse_cn_msg(&data);
        }

        #[test]
        fn mutated_real_messages_parse_without_panic(
            what in prop::sample::select(vec![0u32, 1, 2, 4, 0x40, 0x200, 0x8000_0000, 7]),
            data in proptest::collection::vec(any::<u32>(), 0..8),
            cut in 0usize..120,
        ) {
            let mut d = datagram(0, 1, what, &data);
            d.truncate(cut.min(d.len()));
            let _ = parse_datagram(&d);
        }
    }
}
