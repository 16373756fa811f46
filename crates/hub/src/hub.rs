//! The state shared by every connection and API request: the store, the live connection of
//! each identity (one per identity: a new one closes the old), and a signal for readers
//! waiting for new messages (`messages --follow`), and the console's rule engine, run on each
//! stored security message and reported-properties change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::console::ingest::{parse_message, summary};
use crate::console::recommend::from_snapshot;
use crate::console::rules::RuleEngine;
use crate::store::{EventRow, Ingest, NewMessage, Store, StoreError, TwinRecord};
use crate::twin::{DesiredChange, Twin};
use twinguard_core::iothub::identity::IdentityId;

/// What the hub hands a live connection besides the client's own requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// A desired-properties notification (the patch with its `$version`).
    DesiredPatch(Value),
}

/// How many notifications may wait for one connection; past that the client is not reading
/// and is disconnected (it GETs the full twin when it reconnects, so nothing is lost).
pub const OUTBOX_CAPACITY: usize = 64;

/// The live connection of one identity.
#[derive(Debug)]
pub struct Live {
    /// The connection's number (for logs, and so a closing connection only removes itself).
    pub conn: u64,
    /// Where notifications for it go.
    pub outbox: SyncSender<Outbound>,
    /// A handle on its socket, to close it from another thread.
    pub socket: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// When it connected, Unix milliseconds.
    pub since_ms: i64,
}

/// A summary of a live connection, for the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Who.
    pub id: IdentityId,
    /// From where.
    pub peer: SocketAddr,
    /// Since when, Unix milliseconds.
    pub since_ms: i64,
}

/// The shared hub state.
#[derive(Debug)]
pub struct Hub {
    hostname: String,
    store: Mutex<Store>,
    live: Mutex<HashMap<IdentityId, Live>>,
    next_conn: AtomicU64,
    /// The newest stored message's sequence number; waiters are woken on each new one.
    last_message: Mutex<i64>,
    new_message: Condvar,
    /// The console's rules; locked before the store when both are.
    engine: Mutex<RuleEngine>,
    /// The devices followed on an MQTT broker (`serve --mqtt-fleet`), see [`crate::fleet`].
    fleet: Mutex<FleetState>,
    /// Fleet-wide event counts per (hour of event time, name), kept as messages are ingested
    /// (loaded from the database at start), so the overview's chart does not count a day of
    /// events on every request. Only hours from 25 h ago to 1 h ahead are kept: bounded.
    event_hours: Mutex<BTreeMap<(i64, String), i64>>,
    /// Counters of optional parts (the alert webhook), by name, for `GET /v1/statistics`.
    statistics: Mutex<BTreeMap<String, Statistics>>,
}

/// A source of counters, read when asked for.
#[derive(Clone)]
pub struct Statistics(pub std::sync::Arc<dyn Fn() -> Value + Send + Sync>);

impl std::fmt::Debug for Statistics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Statistics")
    }
}

/// One hour in milliseconds.
const HOUR_MS: i64 = 3_600_000;

/// What the hub knows of the devices it follows on an MQTT broker.
#[derive(Debug, Default)]
struct FleetState {
    /// Every device seen on the broker since the start, with its last status.
    devices: HashMap<IdentityId, FleetDevice>,
    /// Devices whose desired section changed and is not published yet (one entry per device
    /// however often it changed: bounded by the fleet's size).
    pending_desired: BTreeSet<IdentityId>,
}

/// One device followed on an MQTT broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetDevice {
    /// Its retained status: `Some(true)` online, `Some(false)` offline (said by the agent at
    /// a clean stop, or by the broker for it: its last will), `None` not known.
    pub online: Option<bool>,
    /// When the status last changed, Unix milliseconds.
    pub since_ms: i64,
}

/// Locks a mutex even if a thread panicked while holding it: the data behind these locks is
/// kept consistent by SQLite transactions and whole-value updates, so it is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Hub {
    /// A hub over `store`, answering as `hostname`.
    pub fn new(hostname: String, store: Store) -> Result<Hub, StoreError> {
        Hub::with_rules(hostname, store, RuleEngine::default())
    }

    /// A hub over `store` whose console runs `engine`.
    pub fn with_rules(hostname: String, store: Store, engine: RuleEngine) -> Result<Hub, StoreError> {
        let last = store.last_message_seq()?;
        let mut event_hours = BTreeMap::new();
        for (hour, name, n) in store.event_counts_by_hour(now_ms() - 25 * HOUR_MS)? {
            event_hours.insert((hour, name), n);
        }
        Ok(Hub {
            hostname,
            store: Mutex::new(store),
            live: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            last_message: Mutex::new(last),
            new_message: Condvar::new(),
            engine: Mutex::new(engine),
            fleet: Mutex::new(FleetState::default()),
            event_hours: Mutex::new(event_hours),
            statistics: Mutex::new(BTreeMap::new()),
        })
    }

    /// The host name in connection strings and SAS resources.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The store, locked.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// A new connection number.
    pub fn next_connection(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `live` the connection of `id`, closing the previous one (IoT Hub allows one
    /// connection per identity; the newest wins).
    pub fn register(&self, id: &IdentityId, live: Live) {
        lock(&self.engine).connection_started(&id.to_string());
        let old = lock(&self.live).insert(id.clone(), live);
        if let Some(old) = old {
            info!(identity = %id, old = old.conn, "a new connection of the identity closes the old one");
            let _ = old.socket.shutdown(Shutdown::Both);
        }
    }

    /// Puts custom rules in force (`serve --rules FILE`, and each good change of it).
    pub fn set_custom_rules(&self, rules: crate::console::custom::CustomRules) {
        lock(&self.engine).set_custom(rules);
    }

    /// Notes for the console that `id`'s connection ended, cleanly (MQTT DISCONNECT) or not.
    pub fn connection_ended(&self, id: &IdentityId, clean: bool) {
        lock(&self.engine).connection_ended(&id.to_string(), clean, now_ms());
    }

    /// Whether connection `conn` is still the live one of `id`.
    pub fn is_live(&self, id: &IdentityId, conn: u64) -> bool {
        lock(&self.live).get(id).is_some_and(|l| l.conn == conn)
    }

    /// Forgets connection `conn` of `id` (if it is still the live one).
    pub fn unregister(&self, id: &IdentityId, conn: u64) {
        let mut live = lock(&self.live);
        if live.get(id).is_some_and(|l| l.conn == conn) {
            live.remove(id);
        }
    }

    /// The live connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut out: Vec<ConnectionInfo> = lock(&self.live)
            .iter()
            .map(|(id, l)| ConnectionInfo {
                id: id.clone(),
                peer: l.peer,
                since_ms: l.since_ms,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Changes an identity's desired properties and notifies its live connection. The store
    /// stays locked while notifying, so notifications leave in `$version` order.
    pub fn change_desired(&self, id: &IdentityId, change: &DesiredChange) -> Result<Twin, StoreError> {
        let mut store = self.store();
        let (twin, notification) = store.change_desired(id, change)?;
        if let Some(patch) = notification {
            self.notify(id, patch);
        }
        Ok(twin)
    }

    /// A service-side twin write (tags and desired, checked against `if_match`), notifying
    /// the live connection of a desired change as [`Hub::change_desired`] does.
    pub fn write_twin_service(
        &self,
        id: &IdentityId,
        if_match: Option<&str>,
        tags: Option<Map<String, Value>>,
        desired: Option<&DesiredChange>,
    ) -> Result<TwinRecord, StoreError> {
        let mut store = self.store();
        let (record, notification) = store.write_twin_service(id, if_match, tags, desired)?;
        if let Some(patch) = notification {
            self.notify(id, patch);
        }
        Ok(record)
    }

    /// Hands a desired patch to the identity's live connection, if any; a connection that
    /// does not read its notifications is closed (it GETs the twin when it reconnects).
    fn notify(&self, id: &IdentityId, patch: Value) {
        {
            let mut fleet = lock(&self.fleet);
            if fleet.devices.contains_key(id) {
                // The fleet client publishes the whole section, retained, on its next turn.
                fleet.pending_desired.insert(id.clone());
            }
        }
        let mut live = lock(&self.live);
        if let Some(l) = live.get(id) {
            match l.outbox.try_send(Outbound::DesiredPatch(patch)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    warn!(identity = %id, conn = l.conn, "client is not reading its notifications: closing it");
                    let _ = l.socket.shutdown(Shutdown::Both);
                    live.remove(id);
                }
                // The connection is ending; it will GET the twin when it comes back.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Whether an identity has a live connection (to this hub, or said `online` on the MQTT
    /// broker the hub follows).
    pub fn is_connected(&self, id: &IdentityId) -> bool {
        lock(&self.live).contains_key(id)
            || lock(&self.fleet)
                .devices
                .get(id)
                .is_some_and(|d| d.online == Some(true))
    }

    /// Records that a device was seen on the fleet's broker; with `status`, its new status.
    /// Returns true when the status changed.
    pub fn fleet_seen(&self, id: &IdentityId, status: Option<Option<bool>>, now_ms: i64) -> bool {
        let mut fleet = lock(&self.fleet);
        let device = fleet.devices.entry(id.clone()).or_default();
        match status {
            Some(online) if device.online != online => {
                device.online = online;
                device.since_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// The device as followed on the fleet's broker, if it was seen there.
    pub fn fleet_device(&self, id: &IdentityId) -> Option<FleetDevice> {
        lock(&self.fleet).devices.get(id).cloned()
    }

    /// How many devices were seen on the fleet's broker.
    pub fn fleet_devices_len(&self) -> usize {
        lock(&self.fleet).devices.len()
    }

    /// Every device seen on the fleet's broker, by id.
    pub fn fleet_devices(&self) -> Vec<(IdentityId, FleetDevice)> {
        let mut out: Vec<_> = lock(&self.fleet)
            .devices
            .iter()
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The fleet devices whose desired section is to be published, taken.
    pub fn take_fleet_desired(&self) -> Vec<IdentityId> {
        std::mem::take(&mut lock(&self.fleet).pending_desired)
            .into_iter()
            .collect()
    }

    /// Marks a fleet device's desired section to be published (again).
    pub fn mark_fleet_desired(&self, id: &IdentityId) {
        lock(&self.fleet).pending_desired.insert(id.clone());
    }

    /// Stores a message and wakes the readers waiting for one. A schema-valid security
    /// message is parsed once into typed rows and run through the rules and recommendations,
    /// stored with the message in one transaction.
    pub fn record_message(&self, message: &NewMessage) -> Result<i64, StoreError> {
        let seq = if message.is_security && message.schema_valid {
            // The message is stored (and will be acknowledged) whatever the console makes
            // of it; a console failure is logged, not the device's problem.
            match self.ingest(message) {
                Ok(Some(seq)) => seq,
                Ok(None) => self.store().insert_message(message)?,
                Err(e) => {
                    warn!(identity = %message.id, "console ingest: {e}");
                    self.store().insert_message(message)?
                }
            }
        } else {
            self.store().insert_message(message)?
        };
        let mut last = lock(&self.last_message);
        *last = (*last).max(seq);
        self.new_message.notify_all();
        Ok(seq)
    }

    /// Parses a security message once into typed rows, runs the rules and the
    /// recommendations over its events, and stores the message and all of it in one
    /// transaction; `None` (nothing stored) when the body is not a security message after all.
    fn ingest(&self, message: &NewMessage) -> Result<Option<i64>, StoreError> {
        let Some(parsed) = parse_message(&message.body) else {
            return Ok(None);
        };
        let device = message.id.to_string();
        let mut engine = lock(&self.engine);
        // The device's twin tags place it in custom rule groups; looked up only when a group
        // matches by tags.
        let tags = if engine.custom().needs_tags() {
            self.store()
                .twin_record(&message.id)?
                .map(|r| r.tags)
                .unwrap_or_default()
        } else {
            Map::new()
        };
        let mut ingest = Ingest {
            agent_version: parsed.agent_version,
            ..Ingest::default()
        };
        for event in &parsed.events {
            ingest.events.push(EventRow {
                event_id: event.id().to_string(),
                name: event.name().as_str().to_owned(),
                time_ms: event.time().millis_since_epoch(),
                items: event.payload().len(),
                summary: summary(event),
            });
            ingest
                .findings
                .extend(engine.observe_tagged(&device, &tags, event));
            if let Some(advice) = from_snapshot(event) {
                ingest.recommendations.push(advice);
            }
            if event.name().is_snapshot() {
                if let Some(payload) = serde_json::to_value(event)
                    .ok()
                    .and_then(|v| v.get("Payload").cloned())
                {
                    ingest.snapshots.push((
                        event.name().as_str().to_owned(),
                        event.time().millis_since_epoch(),
                        payload.to_string(),
                    ));
                }
            }
        }
        let settings = *engine.settings();
        let (seq, changed) = self
            .store()
            .insert_message_ingested(message, &ingest, &settings)?;
        if !changed.is_empty() {
            info!(identity = %message.id, alerts = ?changed, "console: alerts raised");
        }
        let now_hour = now_ms() / HOUR_MS;
        let mut hours = lock(&self.event_hours);
        for e in &ingest.events {
            let hour = e.time_ms.div_euclid(HOUR_MS);
            if (now_hour - 25..=now_hour + 1).contains(&hour) {
                *hours.entry((hour, e.name.clone())).or_default() += 1;
            }
        }
        Ok(Some(seq))
    }

    /// Registers a source of counters under `name` (`GET /v1/statistics`).
    pub fn add_statistics(&self, name: &str, source: Statistics) {
        lock(&self.statistics).insert(name.to_owned(), source);
    }

    /// Every registered source's counters, by name.
    pub fn statistics(&self) -> Map<String, Value> {
        let sources: Vec<(String, Statistics)> = lock(&self.statistics)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sources.into_iter().map(|(k, f)| (k, (f.0)())).collect()
    }

    /// Fleet-wide event counts per name in the whole hours since `since_ms` (the hour that
    /// holds `since_ms` included), from the running summary.
    pub fn fleet_event_counts(&self, since_ms: i64) -> Vec<(String, i64)> {
        let first = since_ms.div_euclid(HOUR_MS);
        let mut hours = lock(&self.event_hours);
        // Drop what no chart asks for any more (the map stays bounded).
        let stale = now_ms() / HOUR_MS - 25;
        hours.retain(|(hour, _), _| *hour >= stale);
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for ((_, name), n) in hours.range((first, String::new())..) {
            *counts.entry(name.clone()).or_default() += n;
        }
        counts.into_iter().collect()
    }

    /// Stores a reported-properties patch, then runs the rules over the reported section.
    pub fn patch_reported(&self, id: &IdentityId, patch: &Value) -> Result<i64, StoreError> {
        let engine = lock(&self.engine);
        let mut store = self.store();
        let version = store.patch_reported(id, patch)?;
        if let Some(twin) = store.twin(id)? {
            let findings = engine.observe_reported(&Value::Object(twin.reported), now_ms());
            let settings = *engine.settings();
            if let Err(e) = store.raise(id, &findings, &settings, now_ms()) {
                warn!(identity = %id, "console: reported status: {e}");
            }
        }
        Ok(version)
    }

    /// The console's periodic checks of each identity that sent security messages: device
    /// silent (no live connection, quiet for longer than its expected frequency allows),
    /// desired configuration unapplied for too long, and away after an unclean end.
    pub fn check_silence(&self, now: i64) -> Result<(), StoreError> {
        let mut engine = lock(&self.engine);
        let settings = *engine.settings();
        let agents = self.store().agents()?;
        // Custom rule windows that ended: their minimums.
        for (device, finding) in engine.custom_tick(now) {
            if let Some(agent) = agents.iter().find(|a| a.identity.to_string() == device) {
                self.store().raise(&agent.identity, &[finding], &settings, now)?;
            }
        }
        for agent in agents {
            let device = agent.identity.to_string();
            let twin = self.store().twin(&agent.identity)?;
            let mut findings = Vec::new();
            if let Some(twin) = &twin {
                if let Some(f) = engine.config_pending(
                    &device,
                    twin.desired_version,
                    seen_desired_version(&twin.reported),
                    now,
                ) {
                    findings.push(f);
                }
            }
            if !self.is_connected(&agent.identity) {
                let frequency = twin.as_ref().and_then(|t| high_frequency_ms(&t.reported));
                findings.extend(engine.silent(agent.last_message_ms, frequency, now));
                findings.extend(engine.offline_unclean(&device, now));
            }
            if !findings.is_empty() {
                self.store().raise(&agent.identity, &findings, &settings, now)?;
            }
        }
        Ok(())
    }

    /// The newest stored message's sequence number.
    pub fn last_message_seq(&self) -> i64 {
        *lock(&self.last_message)
    }

    /// Waits until a message newer than `after` is stored, at most `timeout`, or until
    /// `cancel` is set (followed by [`Hub::wake_waiters`]).
    pub fn wait_for_message(&self, after: i64, timeout: Duration, cancel: &AtomicBool) {
        let last = lock(&self.last_message);
        let _ = self
            .new_message
            .wait_timeout_while(last, timeout, |last| {
                *last <= after && !cancel.load(Ordering::SeqCst)
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }

    /// Wakes every waiter of [`Hub::wait_for_message`] to check its cancel flag.
    pub fn wake_waiters(&self) {
        let _last = lock(&self.last_message);
        self.new_message.notify_all();
    }
}

/// The desired `$version` the agent reports it has seen (`twinguard.lastDesiredVersion`, or
/// `desiredVersion` of its first report), when it reports one.
fn seen_desired_version(reported: &Map<String, Value>) -> Option<i64> {
    let status = reported.get("twinguard")?;
    status
        .get("lastDesiredVersion")
        .or_else(|| status.get("desiredVersion"))
        .and_then(Value::as_i64)
}

/// The reported highPriorityMessageFrequency of an agent, in milliseconds (read with the
/// agent's own duration grammar), when it reports one.
fn high_frequency_ms(reported: &Map<String, Value>) -> Option<i64> {
    let text = reported
        .get(crate::console::model::CONFIG_KEY)?
        .get("highPriorityMessageFrequency")?
        .get("value")?
        .as_str()?;
    let duration = crate::console::model::IsoDuration::parse(text).ok()?.duration();
    i64::try_from(duration.as_millis()).ok()
}
