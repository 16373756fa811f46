//! The console's storage: typed event rows, per-identity agent facts, alerts and
//! recommendations, and their retention. Alerts are folded from findings here, inside the
//! transaction that stores the events, so an alert's count and evidence always match the
//! rows stored.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::{json, Value};

use super::{identity_from_cols, module_col, Store, StoreError};
use crate::console::recommend::{newest_version, outdated_agent, Recommendation};
use crate::console::rules::Severity;
use crate::console::rules::{merges_into, Finding, RuleSettings};
use twinguard_core::iothub::identity::IdentityId;

/// The console's tables (created by [`super::SCHEMA`]).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_seq INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    name TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    items INTEGER NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_identity ON events (device_id, module_id, time_ms);
CREATE INDEX IF NOT EXISTS events_by_name ON events (name, time_ms);
CREATE INDEX IF NOT EXISTS events_by_received ON events (received_ms);
CREATE TABLE IF NOT EXISTS agents (
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    last_message_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, module_id)
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    evidence TEXT NOT NULL,
    changed_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_key ON alerts (device_id, module_id, rule, key);
CREATE INDEX IF NOT EXISTS alerts_by_state ON alerts (state, changed_ms);
CREATE TABLE IF NOT EXISTS snapshots (
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    name TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (device_id, module_id, name)
);
CREATE TABLE IF NOT EXISTS recommendations (
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    remediation TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, module_id, source, kind, key)
);
";

/// Most event ids an alert's evidence keeps (the first ones, which show how it started,
/// and the newest).
pub const MAX_EVIDENCE_EVENTS: usize = 20;

/// How long and how much the console keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Typed event rows kept at most; the oldest beyond are deleted at once.
    pub max_events: u64,
    /// Events and messages older than this (by reception) are deleted, milliseconds.
    pub max_age_ms: i64,
    /// Closed alerts are deleted this long after they were closed, milliseconds.
    pub closed_alert_age_ms: i64,
}

/// Thirty days in milliseconds.
const THIRTY_DAYS_MS: i64 = 30 * 24 * 60 * 60 * 1000;

impl Default for Retention {
    /// 10 million events, 30 days of events and messages, closed alerts for 30 days.
    fn default() -> Retention {
        Retention {
            max_events: 10_000_000,
            max_age_ms: THIRTY_DAYS_MS,
            closed_alert_age_ms: THIRTY_DAYS_MS,
        }
    }
}

/// One event as a typed row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Its `Id`.
    pub event_id: String,
    /// Its `Name`.
    pub name: String,
    /// Its time, Unix milliseconds.
    pub time_ms: i64,
    /// Payload items.
    pub items: usize,
    /// One line for people.
    pub summary: String,
}

/// A stored event row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Whose.
    pub id: IdentityId,
    /// When the hub received it, Unix milliseconds.
    pub received_ms: i64,
    /// The row.
    pub row: EventRow,
}

/// What an alert's state may become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertAction {
    /// Open -> acknowledged (someone looks at it).
    Acknowledge,
    /// Open or acknowledged -> closed (dealt with); a later finding opens a new alert.
    Close,
}

/// A stored alert.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRecord {
    /// Its number.
    pub id: i64,
    /// The rule's id.
    pub rule: String,
    /// `high`, `medium`, `low`, `informational`.
    pub severity: String,
    /// Whose.
    pub identity: IdentityId,
    /// What distinguishes it within rule and identity.
    pub key: String,
    /// `open`, `acknowledged`, `closed`.
    pub state: String,
    /// First and last finding, Unix milliseconds.
    pub first_ms: i64,
    /// Last finding.
    pub last_ms: i64,
    /// Findings folded in.
    pub count: i64,
    /// `{"eventIds": [...], "fields": {...}}`.
    pub evidence: Value,
    /// Last change (finding or state), Unix milliseconds.
    pub changed_ms: i64,
}

/// Which alerts to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertQuery {
    /// Only this device's.
    pub device: Option<String>,
    /// Only these severities (`high`...); empty: all.
    pub severity: Option<String>,
    /// Only in this state (`all`: any); `None`: open and acknowledged.
    pub state: Option<String>,
    /// Only those changed at or after this time (Unix milliseconds), oldest change first;
    /// `None`: newest change first.
    pub changed_since_ms: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

/// A stored recommendation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecommendationRecord {
    /// Whose.
    pub identity: IdentityId,
    /// The snapshot it came from.
    pub source: String,
    /// `open-port`, ...
    pub kind: String,
    /// Distinct within the kind.
    pub key: String,
    /// `high` ...
    pub severity: String,
    /// One line.
    pub title: String,
    /// What to do.
    pub remediation: String,
    /// When its snapshot arrived, Unix milliseconds.
    pub updated_ms: i64,
}

/// An identity that sent security messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    /// Who.
    pub identity: IdentityId,
    /// `AgentVersion` of its last message.
    pub agent_version: String,
    /// When its last security message arrived, Unix milliseconds.
    pub last_message_ms: i64,
}

/// Everything one security message adds.
#[derive(Clone, Debug, Default)]
pub struct Ingest {
    /// `AgentVersion`.
    pub agent_version: String,
    /// The typed rows.
    pub events: Vec<EventRow>,
    /// What the rules found.
    pub findings: Vec<Finding>,
    /// Per snapshot source, its new recommendations.
    pub recommendations: Vec<(&'static str, Vec<Recommendation>)>,
    /// The snapshot events' payloads (name, time, the `Payload` array as JSON), each replacing
    /// the identity's previous one of that name: the device page's tables.
    pub snapshots: Vec<(String, i64, String)>,
}

fn alert_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AlertRecordCols, String)> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(11)?,
        ),
        r.get(10)?,
    ))
}

type AlertRecordCols = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
);

const ALERT_COLS: &str =
    "id, rule, severity, device_id, module_id, key, state, first_ms, last_ms, count, evidence, changed_ms";

fn to_alert((cols, evidence): (AlertRecordCols, String)) -> Result<Option<AlertRecord>, StoreError> {
    let (id, rule, severity, device, module, key, state, first_ms, last_ms, count, changed_ms) = cols;
    let Some(identity) = identity_from_cols(&device, &module) else {
        return Ok(None);
    };
    let evidence = serde_json::from_str(&evidence).map_err(|source| StoreError::CorruptJson {
        what: "alerts.evidence",
        source,
    })?;
    Ok(Some(AlertRecord {
        id,
        rule,
        severity,
        identity,
        key,
        state,
        first_ms,
        last_ms,
        count,
        evidence,
        changed_ms,
    }))
}

/// Folds findings into alerts; returns the ids of the alerts made or changed.
/// What one security message adds to the console's tables, in `tx`; the alerts made or
/// changed.
pub(super) fn ingest_in(
    tx: &Transaction<'_>,
    seq: i64,
    id: &IdentityId,
    received_ms: i64,
    ingest: &Ingest,
    settings: &RuleSettings,
    retention: Retention,
) -> Result<Vec<i64>, StoreError> {
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (message_seq, device_id, module_id, event_id, name, time_ms, received_ms, items, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for e in &ingest.events {
            insert.execute(params![
                seq,
                id.device(),
                module_col(id),
                e.event_id,
                e.name,
                e.time_ms,
                received_ms,
                i64::try_from(e.items).unwrap_or(i64::MAX),
                e.summary
            ])?;
        }
    }
    let last = tx.last_insert_rowid();
    tx.prepare_cached("DELETE FROM events WHERE id <= ?1")?
        .execute(params![last.saturating_sub(
            i64::try_from(retention.max_events).unwrap_or(i64::MAX)
        )])?;
    tx.prepare_cached(
        "INSERT INTO agents (device_id, module_id, agent_version, last_message_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_id, module_id) DO UPDATE SET agent_version = ?3, last_message_ms = MAX(last_message_ms, ?4)",
    )?
    .execute(params![id.device(), module_col(id), ingest.agent_version, received_ms])?;
    for (source, list) in &ingest.recommendations {
        tx.execute(
            "DELETE FROM recommendations WHERE device_id = ?1 AND module_id = ?2 AND source = ?3",
            params![id.device(), module_col(id), source],
        )?;
        for r in list {
            tx.execute(
                "INSERT OR REPLACE INTO recommendations (device_id, module_id, source, kind, key, severity, title, remediation, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![id.device(), module_col(id), source, r.kind, r.key, r.severity.as_str(), r.title, r.remediation, received_ms],
            )?;
        }
    }
    for (name, time_ms, payload) in &ingest.snapshots {
        tx.execute(
            "INSERT INTO snapshots (device_id, module_id, name, time_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device_id, module_id, name) DO UPDATE SET time_ms = ?4, payload = ?5 WHERE ?4 >= time_ms",
            params![id.device(), module_col(id), name, time_ms, payload],
        )?;
    }
    raise_in(tx, id, &ingest.findings, settings, received_ms)
}

fn raise_in(
    tx: &Transaction<'_>,
    id: &IdentityId,
    findings: &[Finding],
    settings: &RuleSettings,
    now_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    let mut changed = Vec::new();
    for f in findings {
        let existing = tx
            .query_row(
                "SELECT id, last_ms, count, evidence FROM alerts
                 WHERE device_id = ?1 AND module_id = ?2 AND rule = ?3 AND key = ?4 AND state != 'closed'
                 ORDER BY id DESC LIMIT 1",
                params![id.device(), module_col(id), f.rule.id(), f.key],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        let fields: serde_json::Map<String, Value> = f
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        match existing {
            Some((alert, last_ms, count, evidence)) if merges_into(last_ms, f.time_ms, settings) => {
                let mut evidence: Value = serde_json::from_str(&evidence).unwrap_or_else(|_| json!({}));
                let mut ids: Vec<Value> = evidence["eventIds"].as_array().cloned().unwrap_or_default();
                let new: Vec<&String> = f
                    .event_ids
                    .iter()
                    .filter(|e| !ids.iter().any(|i| i == e.as_str()))
                    .collect();
                if new.is_empty() {
                    // The same condition seen again with no new event (a repeated silence
                    // check, a status re-reported): the alert stays alive (its last time
                    // moves on) but is not counted again nor shown as changed.
                    if f.time_ms > last_ms {
                        tx.execute(
                            "UPDATE alerts SET last_ms = ?2 WHERE id = ?1",
                            params![alert, f.time_ms],
                        )?;
                    }
                    continue;
                }
                ids.extend(new.into_iter().map(|e| Value::from(e.as_str())));
                if ids.len() > MAX_EVIDENCE_EVENTS {
                    let cut = ids.len() - MAX_EVIDENCE_EVENTS;
                    ids.drain(MAX_EVIDENCE_EVENTS / 2..MAX_EVIDENCE_EVENTS / 2 + cut);
                }
                evidence["eventIds"] = Value::Array(ids);
                evidence["fields"] = Value::Object(fields);
                tx.execute(
                    "UPDATE alerts SET last_ms = ?2, count = ?3, evidence = ?4, changed_ms = ?5 WHERE id = ?1",
                    params![alert, last_ms.max(f.time_ms), count + 1, evidence.to_string(), now_ms],
                )?;
                changed.push(alert);
            }
            _ => {
                let evidence = json!({"eventIds": f.event_ids, "fields": fields});
                tx.execute(
                    "INSERT INTO alerts (rule, severity, device_id, module_id, key, state, first_ms, last_ms, count, evidence, changed_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6, ?6, 1, ?7, ?8)",
                    params![
                        f.rule.id(),
                        f.rule.severity().as_str(),
                        id.device(),
                        module_col(id),
                        f.key,
                        f.time_ms,
                        evidence.to_string(),
                        now_ms
                    ],
                )?;
                changed.push(tx.last_insert_rowid());
            }
        }
    }
    Ok(changed)
}

impl Store {
    /// Stores what one security message (sequence number `seq`) adds, in one transaction;
    /// returns the ids of the alerts made or changed.
    pub fn ingest(
        &mut self,
        seq: i64,
        id: &IdentityId,
        received_ms: i64,
        ingest: &Ingest,
        settings: &RuleSettings,
    ) -> Result<Vec<i64>, StoreError> {
        let tx = self.conn.transaction()?;
        let changed = ingest_in(&tx, seq, id, received_ms, ingest, settings, self.retention)?;
        tx.commit()?;
        Ok(changed)
    }

    /// Folds findings that came from no message (reported status, silence) into alerts.
    pub fn raise(
        &mut self,
        id: &IdentityId,
        findings: &[Finding],
        settings: &RuleSettings,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let tx = self.conn.transaction()?;
        let changed = raise_in(&tx, id, findings, settings, now_ms)?;
        tx.commit()?;
        Ok(changed)
    }

    /// Alerts matching `q`.
    pub fn alerts(&self, q: &AlertQuery) -> Result<Vec<AlertRecord>, StoreError> {
        let order = if q.changed_since_ms.is_some() {
            "changed_ms ASC, id ASC"
        } else {
            "changed_ms DESC, id DESC"
        };
        let sql = format!(
            "SELECT {ALERT_COLS} FROM alerts
             WHERE changed_ms >= ?1 AND (?2 IS NULL OR device_id = ?2) AND (?3 IS NULL OR severity = ?3)
               AND (CASE WHEN ?4 IS NULL THEN state != 'closed' WHEN ?4 = 'all' THEN 1 ELSE state = ?4 END)
             ORDER BY {order} LIMIT ?5"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![
                q.changed_since_ms.unwrap_or(i64::MIN),
                q.device,
                q.severity,
                q.state,
                limit
            ],
            alert_from_row,
        )?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(a) = to_alert(row?)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// One alert.
    pub fn alert(&self, alert: i64) -> Result<Option<AlertRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {ALERT_COLS} FROM alerts WHERE id = ?1"),
                params![alert],
                alert_from_row,
            )
            .optional()?;
        match row {
            Some(r) => to_alert(r),
            None => Ok(None),
        }
    }

    /// Changes an alert's state; `Err(AlertState)` when the change does not apply to its
    /// state (acknowledging a closed alert).
    pub fn change_alert(
        &mut self,
        alert: i64,
        action: AlertAction,
        now_ms: i64,
    ) -> Result<AlertRecord, StoreError> {
        let current = self.alert(alert)?.ok_or(StoreError::NoSuchAlert(alert))?;
        let next = match (current.state.as_str(), action) {
            ("open" | "acknowledged", AlertAction::Acknowledge) => "acknowledged",
            ("open" | "acknowledged", AlertAction::Close) => "closed",
            (state, _) => {
                return Err(StoreError::AlertState {
                    alert,
                    state: state.to_owned(),
                })
            }
        };
        self.conn.execute(
            "UPDATE alerts SET state = ?2, changed_ms = ?3 WHERE id = ?1",
            params![alert, next, now_ms],
        )?;
        self.alert(alert)?.ok_or(StoreError::NoSuchAlert(alert))
    }

    /// Recommendations, of one device or all, worst first.
    pub fn recommendations(&self, device: Option<&str>) -> Result<Vec<RecommendationRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, module_id, source, kind, key, severity, title, remediation, updated_ms FROM recommendations
             WHERE ?1 IS NULL OR device_id = ?1
             ORDER BY CASE severity WHEN 'high' THEN 0 WHEN 'medium' THEN 1 WHEN 'low' THEN 2 ELSE 3 END, device_id, module_id, kind, key",
        )?;
        let rows = stmt.query_map(params![device], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                (
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ),
                (
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ),
                r.get::<_, i64>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let ((device, module), (source, kind, key), (severity, title, remediation), updated_ms) = row?;
            if let Some(identity) = identity_from_cols(&device, &module) {
                out.push(RecommendationRecord {
                    identity,
                    source,
                    kind,
                    key,
                    severity,
                    title,
                    remediation,
                    updated_ms,
                });
            }
        }
        // An agent older than the newest the fleet runs (worked out now, from the agents'
        // last messages, so updating one device changes the advice for the others).
        let agents = self.agents()?;
        if let Some(newest) = newest_version(agents.iter().map(|a| a.agent_version.as_str())) {
            for agent in agents
                .iter()
                .filter(|a| device.is_none_or(|d| a.identity.device() == d))
            {
                if let Some(r) = outdated_agent(&agent.agent_version, newest) {
                    out.push(RecommendationRecord {
                        identity: agent.identity.clone(),
                        source: "AgentVersion".into(),
                        kind: r.kind.into(),
                        key: r.key,
                        severity: r.severity.as_str().into(),
                        title: r.title,
                        remediation: r.remediation,
                        updated_ms: agent.last_message_ms,
                    });
                }
            }
        }
        let rank = |s: &str| Severity::parse(s).map_or(Severity::ALL.len(), |s| s as usize);
        out.sort_by_key(|r| rank(&r.severity));
        Ok(out)
    }

    /// The latest snapshot of `name` an identity sent: its time and its `Payload` array.
    pub fn latest_snapshot(&self, id: &IdentityId, name: &str) -> Result<Option<(i64, Value)>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT time_ms, payload FROM snapshots WHERE device_id = ?1 AND module_id = ?2 AND name = ?3",
            )?
            .query_row(params![id.device(), module_col(id), name], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        row.map(|(time, text)| {
            serde_json::from_str(&text)
                .map(|v| (time, v))
                .map_err(|source| StoreError::CorruptJson {
                    what: "snapshots.payload",
                    source,
                })
        })
        .transpose()
    }

    /// The identities that sent security messages.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, module_id, agent_version, last_message_ms FROM agents ORDER BY device_id, module_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (device, module, agent_version, last_message_ms) = row?;
            if let Some(identity) = identity_from_cols(&device, &module) {
                out.push(AgentRecord {
                    identity,
                    agent_version,
                    last_message_ms,
                });
            }
        }
        Ok(out)
    }

    /// The newest events of an identity (or of all), newest first, optionally of one name.
    pub fn recent_events(
        &self,
        id: Option<&IdentityId>,
        name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        // Two statements, not one with `?1 IS NULL OR ...`: SQLite plans a statement once, and
        // such an OR keeps it from using the identity's index (a full scan at fleet size).
        let mut stmt = self.conn.prepare_cached(if id.is_some() {
            "SELECT device_id, module_id, event_id, name, time_ms, received_ms, items, summary FROM events
             WHERE device_id = ?1 AND module_id = ?2 AND (?3 IS NULL OR name = ?3)
             ORDER BY time_ms DESC, id DESC LIMIT ?4"
        } else {
            "SELECT device_id, module_id, event_id, name, time_ms, received_ms, items, summary FROM events
             WHERE ?1 IS NULL AND ?2 IS NULL AND (?3 IS NULL OR name = ?3)
             ORDER BY time_ms DESC, id DESC LIMIT ?4"
        })?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![id.map(IdentityId::device), id.map(module_col), name, limit],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(5)?,
                    EventRow {
                        event_id: r.get(2)?,
                        name: r.get(3)?,
                        time_ms: r.get(4)?,
                        items: usize::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                        summary: r.get(7)?,
                    },
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (device, module, received_ms, row) = row?;
            if let Some(id) = identity_from_cols(&device, &module) {
                out.push(EventRecord { id, received_ms, row });
            }
        }
        Ok(out)
    }

    /// Event counts per name of an identity (or of all) since `since_ms` (by event time).
    pub fn event_counts(
        &self,
        id: Option<&IdentityId>,
        since_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        // Two statements for the same reason as in `recent_events`.
        let mut stmt = self.conn.prepare_cached(if id.is_some() {
            "SELECT name, COUNT(*) FROM events
             WHERE device_id = ?1 AND module_id = ?2 AND time_ms >= ?3
             GROUP BY name ORDER BY name"
        } else {
            "SELECT name, COUNT(*) FROM events
             WHERE ?1 IS NULL AND ?2 IS NULL AND time_ms >= ?3
             GROUP BY name ORDER BY name"
        })?;
        let rows = stmt.query_map(
            params![id.map(IdentityId::device), id.map(module_col), since_ms],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Event counts of the whole fleet per hour (of event time, Unix milliseconds / 3,600,000)
    /// and name since `since_ms`: what the hub's running summary starts from.
    pub fn event_counts_by_hour(&self, since_ms: i64) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT time_ms / 3600000, name, COUNT(*) FROM events WHERE time_ms >= ?1 GROUP BY 1, 2",
        )?;
        let rows = stmt.query_map(params![since_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Open and acknowledged alerts per identity and severity: `(identity, severity, count)`.
    pub fn open_alert_counts(&self) -> Result<Vec<(IdentityId, String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, module_id, severity, COUNT(*) FROM alerts WHERE state != 'closed'
             GROUP BY device_id, module_id, severity",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (device, module, severity, n) = row?;
            if let Some(id) = identity_from_cols(&device, &module) {
                out.push((id, severity, n));
            }
        }
        Ok(out)
    }

    /// Deletes what retention no longer keeps: events and messages received before
    /// `now_ms - max_age_ms`, alerts closed before `now_ms - closed_alert_age_ms`. Returns
    /// the rows deleted.
    pub fn prune(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let r = self.retention;
        let tx = self.conn.transaction()?;
        let mut n = tx.execute(
            "DELETE FROM events WHERE received_ms < ?1",
            params![now_ms.saturating_sub(r.max_age_ms)],
        )?;
        n += tx.execute(
            "DELETE FROM messages WHERE received_ms < ?1",
            params![now_ms.saturating_sub(r.max_age_ms)],
        )?;
        n += tx.execute(
            "DELETE FROM alerts WHERE state = 'closed' AND changed_ms < ?1",
            params![now_ms.saturating_sub(r.closed_alert_age_ms)],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::rules::Rule;

    const T0: i64 = 1_764_900_000_000;

    fn finding(rule: Rule, key: &str, ms: i64, event: &str) -> Finding {
        Finding {
            rule,
            key: key.into(),
            time_ms: ms,
            event_ids: vec![event.into()],
            fields: vec![("Executable".into(), "/tmp/x".into())],
        }
    }

    #[test]
    fn findings_fold_into_alerts_within_the_window_and_states_change() {
        let mut store = Store::open(std::path::Path::new(":memory:"), 100).expect("store");
        let id = IdentityId::new("dev1", Some("azureiotsecurity")).expect("id");
        let s = RuleSettings::default();
        let ingest = Ingest {
            agent_version: "1.2.3".into(),
            events: vec![EventRow {
                event_id: "e1".into(),
                name: "ProcessCreate".into(),
                time_ms: T0,
                items: 1,
                summary: "x".into(),
            }],
            findings: vec![finding(Rule::TempDirExecution, "/tmp/x", T0, "e1")],
            recommendations: Vec::new(),
            snapshots: vec![("ListeningPorts".into(), T0, r#"[{"LocalPort":"22"}]"#.into())],
        };
        let first = store.ingest(1, &id, T0, &ingest, &s).expect("ingest");
        // The latest snapshot of a kind is kept for the device page; an older one does not
        // replace it.
        let older = Ingest {
            agent_version: "1.2.3".into(),
            snapshots: vec![("ListeningPorts".into(), T0 - 1, "[]".into())],
            ..Ingest::default()
        };
        store.ingest(2, &id, T0, &older, &s).expect("ingest");
        assert_eq!(
            store.latest_snapshot(&id, "ListeningPorts").expect("read"),
            Some((T0, serde_json::json!([{"LocalPort": "22"}])))
        );
        assert!(store.latest_snapshot(&id, "LocalUsers").expect("read").is_none());
        assert_eq!(first.len(), 1);
        // Same rule and key within the window: the same alert, counted.
        let again = store
            .raise(
                &id,
                &[finding(Rule::TempDirExecution, "/tmp/x", T0 + 1000, "e2")],
                &s,
                T0,
            )
            .expect("raise");
        assert_eq!(again, first);
        // A finding with no new event keeps the alert alive without counting it again.
        let status = Finding {
            event_ids: Vec::new(),
            ..finding(Rule::TempDirExecution, "/tmp/x", T0 + 1500, "unused")
        };
        assert!(store.raise(&id, &[status], &s, T0).expect("raise").is_empty());
        assert_eq!(
            store.alert(first[0]).expect("read").expect("alert").last_ms,
            T0 + 1500
        );
        // The same finding again changes nothing.
        assert!(store
            .raise(
                &id,
                &[finding(Rule::TempDirExecution, "/tmp/x", T0 + 1000, "e2")],
                &s,
                T0
            )
            .expect("raise")
            .is_empty());
        // Another key, or past the window: new alerts.
        let other = store
            .raise(
                &id,
                &[finding(Rule::TempDirExecution, "/tmp/y", T0, "e3")],
                &s,
                T0,
            )
            .expect("raise");
        assert_ne!(other, first);
        let late = store
            .raise(
                &id,
                &[finding(
                    Rule::TempDirExecution,
                    "/tmp/x",
                    T0 + 1500 + s.dedup_window_ms + 1,
                    "e4",
                )],
                &s,
                T0,
            )
            .expect("raise");
        assert_ne!(late, first);
        let alert = store.alert(first[0]).expect("read").expect("alert");
        assert_eq!(
            (alert.count, alert.state.as_str(), alert.severity.as_str()),
            (2, "open", "medium")
        );
        assert_eq!(alert.evidence["eventIds"], json!(["e1", "e2"]));
        assert_eq!(alert.last_ms, T0 + 1500);

        let acked = store
            .change_alert(first[0], AlertAction::Acknowledge, T0)
            .expect("ack");
        assert_eq!(acked.state, "acknowledged");
        let closed = store
            .change_alert(first[0], AlertAction::Close, T0)
            .expect("close");
        assert_eq!(closed.state, "closed");
        assert!(matches!(
            store.change_alert(first[0], AlertAction::Acknowledge, T0),
            Err(StoreError::AlertState { .. })
        ));
        assert!(matches!(
            store.change_alert(999, AlertAction::Close, T0),
            Err(StoreError::NoSuchAlert(999))
        ));
        // A closed alert takes no more findings: they go to the open one of the same key.
        let after_close = store
            .raise(
                &id,
                &[finding(Rule::TempDirExecution, "/tmp/x", T0 + 2000, "e5")],
                &s,
                T0,
            )
            .expect("raise");
        assert_eq!(after_close, late);

        let open = store
            .alerts(&AlertQuery {
                limit: 100,
                ..AlertQuery::default()
            })
            .expect("list");
        assert_eq!(open.len(), 2);
        let all = store
            .alerts(&AlertQuery {
                limit: 100,
                state: Some("all".into()),
                ..AlertQuery::default()
            })
            .expect("list");
        assert_eq!(all.len(), 3);
        let none = store
            .alerts(&AlertQuery {
                limit: 100,
                severity: Some("high".into()),
                ..AlertQuery::default()
            })
            .expect("list");
        assert!(none.is_empty());
        assert_eq!(store.agents().expect("agents")[0].agent_version, "1.2.3");
        assert_eq!(store.recent_events(Some(&id), None, 10).expect("events").len(), 1);
        assert_eq!(
            store.event_counts(None, 0).expect("counts"),
            vec![("ProcessCreate".to_owned(), 1)]
        );
    }

    #[test]
    fn agents_older_than_the_fleets_newest_are_recommended_an_update() {
        let mut store = Store::open(std::path::Path::new(":memory:"), 100).expect("store");
        let settings = RuleSettings::default();
        let old = IdentityId::new("old", Some("azureiotsecurity")).expect("id");
        let new = IdentityId::new("new", Some("azureiotsecurity")).expect("id");
        for (seq, (id, version)) in [(&old, "0.9.3"), (&new, "0.10.0")].into_iter().enumerate() {
            let ingest = Ingest {
                agent_version: version.into(),
                ..Ingest::default()
            };
            store
                .ingest(i64::try_from(seq).expect("seq") + 1, id, T0, &ingest, &settings)
                .expect("ingest");
        }
        let all = store.recommendations(None).expect("list");
        let outdated: Vec<(&str, &str)> = all
            .iter()
            .filter(|r| r.kind == "outdated-agent")
            .map(|r| (r.identity.device(), r.key.as_str()))
            .collect();
        assert_eq!(outdated, vec![("old", "0.9.3")]);
        assert!(store
            .recommendations(Some("new"))
            .expect("list")
            .iter()
            .all(|r| r.kind != "outdated-agent"));
        // The old one updated: no advice left.
        let ingest = Ingest {
            agent_version: "0.10.0".into(),
            ..Ingest::default()
        };
        store.ingest(3, &old, T0, &ingest, &settings).expect("ingest");
        assert!(store.recommendations(None).expect("list").is_empty());
    }

    #[test]
    fn retention_bounds_events_by_count_and_age() {
        let mut store = Store::open(std::path::Path::new(":memory:"), 100).expect("store");
        store.set_retention(Retention {
            max_events: 3,
            max_age_ms: 1000,
            closed_alert_age_ms: 1000,
        });
        let id = IdentityId::new("dev1", None).expect("id");
        let row = |n: i64| EventRow {
            event_id: format!("e{n}"),
            name: "Login".into(),
            time_ms: T0 + n,
            items: 1,
            summary: String::new(),
        };
        let ingest = Ingest {
            agent_version: "1".into(),
            events: (0..5).map(row).collect(),
            ..Ingest::default()
        };
        store
            .ingest(1, &id, T0, &ingest, &RuleSettings::default())
            .expect("ingest");
        assert_eq!(store.recent_events(None, None, 100).expect("events").len(), 3);
        assert_eq!(store.prune(T0 + 999).expect("prune"), 0);
        assert_eq!(store.prune(T0 + 1001).expect("prune"), 3);
    }
}
