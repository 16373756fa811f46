//! Multi-record events (SYSCALL + SOCKADDR + PROCTITLE + ... + EOE, sharing one serial)
//! reassembled from records. Pure.

use std::collections::VecDeque;

use super::record::Record;
use super::AUDIT_EOE;

/// One whole event: its records in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The serial number.
    pub serial: u64,
    /// The time, milliseconds since the epoch.
    pub time_ms: i64,
    /// The records.
    pub records: Vec<Record>,
}

impl AuditEvent {
    /// The first record of `kind`.
    pub fn record(&self, kind: u16) -> Option<&Record> {
        self.records.iter().find(|r| r.kind == kind)
    }

    /// `<sec>.<ms>:<serial>`, as auditd's logs name the event.
    pub fn id(&self) -> String {
        format!(
            "{}.{:03}:{}",
            self.time_ms.div_euclid(1000),
            self.time_ms.rem_euclid(1000),
            self.serial
        )
    }
}

/// Whether records of this type stand alone (user-space messages: no EOE follows them).
pub(crate) fn is_standalone(kind: u16) -> bool {
    (1100..=1199).contains(&kind) || (2100..=2999).contains(&kind)
}

/// Reassembles multi-record events. A syscall event ends with its EOE record; one whose EOE
/// never comes (lost) is completed after [`Assembler::MAX_AGE_MS`] or when more than
/// [`Assembler::MAX_PENDING`] events are open. User-space records are events of their own.
/// A record seen twice (while moving between the multicast group and the daemon socket) is
/// kept once.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: VecDeque<(u64, AuditEvent)>,
    recent: VecDeque<(u64, u16)>,
}

impl Assembler {
    /// Events open at once at most.
    pub(crate) const MAX_PENDING: usize = 256;
    /// Records kept per event at most.
    pub(crate) const MAX_RECORDS: usize = 32;
    /// How long an event may wait for its EOE.
    pub(crate) const MAX_AGE_MS: u64 = 1000;
    /// Standalone records remembered to drop duplicates.
    const RECENT: usize = 256;

    /// Adds a record received at `now_ms`; returns the events it completes.
    pub fn push(&mut self, record: Record, now_ms: u64) -> Vec<AuditEvent> {
        let mut done = Vec::new();
        if is_standalone(record.kind) {
            let key = (record.serial, record.kind);
            if self.recent.contains(&key) {
                return done;
            }
            if self.recent.len() >= Self::RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(key);
            done.push(AuditEvent {
                serial: record.serial,
                time_ms: record.time_ms,
                records: vec![record],
            });
            return done;
        }
        let at = self.pending.iter().position(|(_, e)| e.serial == record.serial);
        if record.kind == AUDIT_EOE {
            if let Some(i) = at {
                if let Some((_, e)) = self.pending.remove(i) {
                    done.push(e);
                }
            }
            return done;
        }
        match at {
            Some(i) => {
                let e = &mut self.pending[i].1;
                let duplicate = e
                    .records
                    .iter()
                    .any(|r| r.kind == record.kind && r.body == record.body);
                if !duplicate && e.records.len() < Self::MAX_RECORDS {
                    e.records.push(record);
                }
            }
            None => {
                if self.pending.len() >= Self::MAX_PENDING {
                    if let Some((_, oldest)) = self.pending.pop_front() {
                        done.push(oldest);
                    }
                }
                self.pending.push_back((
                    now_ms,
                    AuditEvent {
                        serial: record.serial,
                        time_ms: record.time_ms,
                        records: vec![record],
                    },
                ));
            }
        }
        done
    }

    /// Completes the events that waited too long for their EOE.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<AuditEvent> {
        let mut done = Vec::new();
        while self
            .pending
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) >= Self::MAX_AGE_MS)
        {
            if let Some((_, e)) = self.pending.pop_front() {
                done.push(e);
            }
        }
        done
    }

    /// Completes every open event.
    pub fn flush(&mut self) -> Vec<AuditEvent> {
        self.pending.drain(..).map(|(_, e)| e).collect()
    }
}
