//! Who may hold a connection slot, before and after login. A connection starts in the
//! *pending* pool (TLS handshake and CONNECT not yet done) and leaves it once its CONNECT is
//! authenticated, taking a *session* slot then. The two pools are separate, so a flood of
//! connections that never log in cannot take the slots of devices that did.
//!
//! Within the pending pool, one source (an IPv4 address, or an IPv6 /64) holds at most
//! `per_source` connections. When the pool is full, a newcomer whose source holds fewer
//! pending connections than the busiest source evicts that source's oldest pending connection
//! (its socket is shut down, which ends its thread). Honest clients finish their login within
//! milliseconds, so under a flood it is the flood's connections that are oldest and evicted.
//!
//! Refusals and evictions are counted, and [`Admission::report`] turns the counts into one log
//! line per interval, so a flood cannot fill the disk with log lines.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

/// How often the counted refusals are logged by default (one line per interval, only when
/// there were some).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How many CONNECT refusals (bad credentials and the like) are logged one by one per
/// interval; the rest are counted into the interval's summary line.
pub(crate) const REFUSALS_LOGGED_PER_INTERVAL: u64 = 10;

/// The sizes of the two pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Authenticated sessions at once (`serve --max-connections`).
    pub sessions: usize,
    /// Connections not yet logged in, at once (`serve --max-pending`).
    pub pending: usize,
    /// Connections not yet logged in from one source address (`serve --max-pending-per-source`).
    pub pending_per_source: usize,
    /// At most one summary line of refusals per this interval ([`REPORT_INTERVAL`]).
    pub report_every: Duration,
}

/// A source address as the limits count it: IPv4 addresses one by one; IPv6 by /64, since
/// anyone with one IPv6 address usually has the whole /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Source::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

#[derive(Debug)]
struct Entry {
    source: Source,
    /// A handle on the connection's socket, to end it from the accepting thread.
    socket: TcpStream,
}

#[derive(Debug, Default)]
struct Pending {
    next_id: u64,
    /// By age: the smallest id is the oldest.
    entries: BTreeMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    /// The connection to end so that a newcomer whose source holds `mine` can enter a full
    /// pool: the oldest of the sources holding the most, or the newcomer's own oldest when
    /// its source is among those holding the most (so it takes nothing from the others).
    fn eviction_candidate(&self, mine: Source) -> Option<u64> {
        let most = self.per_source.values().copied().max()?;
        let own = self.per_source.get(&mine).copied().unwrap_or(0);
        self.entries
            .iter()
            .find(|(_, e)| {
                if own == most {
                    e.source == mine
                } else {
                    self.per_source.get(&e.source) == Some(&most)
                }
            })
            .map(|(id, _)| *id)
    }
}

/// What the counters have seen since the last report.
#[derive(Debug, Default)]
struct Counters {
    per_source: AtomicU64,
    evicted: AtomicU64,
    sessions_full: AtomicU64,
    connect_refusals_unlogged: AtomicU64,
    connect_refusals_this_interval: AtomicU64,
}

/// Why a new connection was not admitted: its source already holds its share of pending
/// connections. (A full pool refuses no one: it evicts, see [`Admission::admit`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused;

/// Both pools and the refusal counters.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    pending: Mutex<Pending>,
    sessions: AtomicUsize,
    counters: Counters,
    /// Whether a refusal was already logged in full (the first one of the process is, so an
    /// operator sees at once that limits are in play; later ones go into the summaries).
    first_logged: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Admission {
    /// Empty pools of these sizes (each at least 1).
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits: Limits {
                sessions: limits.sessions.max(1),
                pending: limits.pending.max(1),
                pending_per_source: limits.pending_per_source.max(1),
                report_every: limits.report_every.max(Duration::from_secs(1)),
            },
            pending: Mutex::new(Pending::default()),
            sessions: AtomicUsize::new(0),
            counters: Counters::default(),
            first_logged: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The pools' sizes.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admits a new connection from `peer` into the pending pool. If the pool is full, the
    /// oldest pending connection of the busiest source is ended to make room (the
    /// newcomer's own oldest, if its source is among the busiest). The ticket leaves the pool when
    /// dropped or promoted.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        socket: &TcpStream,
    ) -> Result<PendingTicket, Refused> {
        let source = Source::of(peer);
        let handle = socket.try_clone().map_err(|_| Refused)?;
        let mut pending = lock(&self.pending);
        let mine = pending.per_source.get(&source).copied().unwrap_or(0);
        if mine >= self.limits.pending_per_source {
            drop(pending);
            self.count(
                &self.counters.per_source,
                peer,
                "over the per-source limit of pending connections",
            );
            return Err(Refused);
        }
        if pending.entries.len() >= self.limits.pending {
            if let Some(entry) = pending.eviction_candidate(source).and_then(|v| pending.remove(v)) {
                let _ = entry.socket.shutdown(Shutdown::Both);
            }
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = pending.next_id;
        pending.next_id += 1;
        pending.entries.insert(
            id,
            Entry {
                source,
                socket: handle,
            },
        );
        *pending.per_source.entry(source).or_insert(0) += 1;
        Ok(PendingTicket {
            admission: self.clone(),
            id,
        })
    }

    fn count(&self, counter: &AtomicU64, peer: IpAddr, why: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        if !self.first_logged.swap(true, Ordering::Relaxed) {
            warn!(%peer, "connection refused: {why}; further refusals are counted and logged once every {} s", self.limits.report_every.as_secs());
        }
    }

    /// Whether a refused CONNECT (bad credentials and the like) may be logged on its own line:
    /// the first [`REFUSALS_LOGGED_PER_INTERVAL`] of each interval are; the rest are counted.
    pub(crate) fn log_connect_refusal(&self) -> bool {
        let n = self
            .counters
            .connect_refusals_this_interval
            .fetch_add(1, Ordering::Relaxed);
        if n < REFUSALS_LOGGED_PER_INTERVAL {
            return true;
        }
        self.counters
            .connect_refusals_unlogged
            .fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Pending connections now.
    pub(crate) fn pending_count(&self) -> usize {
        lock(&self.pending).entries.len()
    }

    /// Logs what was counted since the last call, in one line, if anything was; called every
    /// [`Limits::report_every`] by the server.
    pub fn report(&self) {
        let c = &self.counters;
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        c.connect_refusals_this_interval.store(0, Ordering::Relaxed);
        let (per_source, evicted, sessions_full, unlogged) = (
            take(&c.per_source),
            take(&c.evicted),
            take(&c.sessions_full),
            take(&c.connect_refusals_unlogged),
        );
        if per_source + evicted + sessions_full == 0 && unlogged == 0 {
            return;
        }
        let pending = self.pending_count();
        let sessions = self.sessions.load(Ordering::Relaxed);
        let l = self.limits;
        warn!(
            refused_per_source = per_source,
            evicted,
            refused_sessions_full = sessions_full,
            connect_refusals_not_logged = unlogged,
            pending,
            sessions,
            "connection limits in the last {} s: {per_source} refused (over {} pending per source), {evicted} pending evicted (pool of {} full), {sessions_full} logins refused (all {} session slots taken), {unlogged} more refused CONNECTs not logged",
            l.report_every.as_secs(),
            l.pending_per_source,
            l.pending,
            l.sessions,
        );
    }
}

/// A connection's place in the pending pool; it leaves the pool when dropped.
#[derive(Debug)]
pub struct PendingTicket {
    admission: Arc<Admission>,
    id: u64,
}

impl PendingTicket {
    /// See [`Admission::log_connect_refusal`].
    pub(crate) fn log_connect_refusal(&self) -> bool {
        self.admission.log_connect_refusal()
    }

    /// Leaves the pending pool for a session slot, after the CONNECT was authenticated.
    /// `None` when every session slot is taken (the caller answers CONNACK 3, server
    /// unavailable).
    pub(crate) fn promote(self) -> Option<SessionSlot> {
        let a = self.admission.clone();
        drop(self);
        if a.sessions.fetch_add(1, Ordering::SeqCst) >= a.limits.sessions {
            a.sessions.fetch_sub(1, Ordering::SeqCst);
            a.counters.sessions_full.fetch_add(1, Ordering::Relaxed);
            if !a.first_logged.swap(true, Ordering::Relaxed) {
                info!("login refused: all {} session slots are taken", a.limits.sessions);
            }
            return None;
        }
        Some(SessionSlot(a))
    }
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        lock(&self.admission.pending).remove(self.id);
    }
}

/// An authenticated session's slot; freed when dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot(Arc<Admission>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};

    /// A connected socket pair end, so tickets have a real socket to hold.
    fn socket(listener: &TcpListener) -> TcpStream {
        let s = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let _ = listener.accept().expect("accept");
        s
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn per_source_limit_and_eviction_of_the_busiest_source() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = Admission::new(Limits {
            sessions: 1,
            pending: 4,
            pending_per_source: 3,
            report_every: REPORT_INTERVAL,
        });
        let s = socket(&listener);
        let mut held: Vec<_> = (0..3).map(|_| a.admit(v4(2), &s).expect("admitted")).collect();
        assert_eq!(a.admit(v4(2), &s).err(), Some(Refused));
        held.push(a.admit(v4(3), &s).expect("another source"));
        assert_eq!(a.pending_count(), 4);
        // Full: a third source evicts the oldest connection of the busiest source (2).
        held.push(a.admit(v4(4), &s).expect("evicts"));
        let sources = |a: &Admission| {
            let p = lock(&a.pending);
            let mut v: Vec<usize> = [2, 3, 4, 5]
                .iter()
                .map(|l| p.per_source.get(&Source::of(v4(*l))).copied().unwrap_or(0))
                .collect();
            v.push(p.entries.len());
            v
        };
        assert_eq!(sources(&a), [2, 1, 1, 0, 4]);
        // 3 holds fewer than 2: it takes one of 2's.
        held.push(a.admit(v4(3), &s).expect("evicts"));
        assert_eq!(sources(&a), [1, 2, 1, 0, 4]);
        // 3 is now the busiest: it evicts its own oldest, taking nothing from the others.
        held.push(a.admit(v4(3), &s).expect("evicts its own"));
        assert_eq!(sources(&a), [1, 2, 1, 0, 4]);
        // A new source takes from the busiest (3).
        held.push(a.admit(v4(5), &s).expect("evicts"));
        assert_eq!(sources(&a), [1, 1, 1, 1, 4]);
        // All hold one each: the oldest overall (2's) goes.
        held.push(a.admit(v4(6), &s).expect("evicts"));
        assert_eq!(sources(&a), [0, 1, 1, 1, 4]);
        drop(held);
        assert_eq!(a.pending_count(), 0);
    }

    #[test]
    fn promotion_moves_to_the_session_pool() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = Admission::new(Limits {
            sessions: 1,
            pending: 2,
            pending_per_source: 2,
            report_every: REPORT_INTERVAL,
        });
        let s = socket(&listener);
        let first = a.admit(v4(1), &s).expect("admitted").promote().expect("slot");
        assert_eq!(a.pending_count(), 0);
        assert!(
            a.admit(v4(1), &s).expect("admitted").promote().is_none(),
            "sessions full"
        );
        drop(first);
        assert!(a.admit(v4(1), &s).expect("admitted").promote().is_some());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("v6");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        assert_eq!(Source::of(IpAddr::V6(a)), Source::of(IpAddr::V6(b)));
        let mapped: Ipv6Addr = "::ffff:127.0.0.2".parse().expect("v6");
        assert_eq!(Source::of(IpAddr::V6(mapped)), Source::of(v4(2)));
    }
}
