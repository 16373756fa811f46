//! The hub's storage: one SQLite database (`hub.db` in the data directory, WAL journal) with
//! identities, twins and received messages. Every write is one transaction, committed before
//! the hub acknowledges anything (PUBACK, a 204, an API answer), so killing the hub loses
//! nothing it confirmed.
//!
//! Schema (version 3, in `PRAGMA user_version`; a version 1 database gains the new columns
//! and tables at open):
//!
//! ```sql
//! identities(device_id, module_id ('' for a device), key (base64), created_ms,
//!            secondary_key, status ('enabled'|'disabled'), etag_n (+1 per identity change))
//! twins(device_id, module_id, desired (JSON), desired_version, reported (JSON), reported_version,
//!       tags (JSON), tags_version, applied_config ('id@etag' of the configuration in force))
//! messages(id, device_id, module_id, received_ms, topic, properties (JSON array of
//!          [name, value|null]), body (BLOB), is_security, schema_valid, schema_error)
//! policies(name, primary_key, secondary_key)              shared access policies
//! configurations(id, body (JSON), etag_n, created_ms)     automatic device management
//! audit(id, at_ms, who, action, target, status)          every state-changing request
//! events(id, message_seq, device_id, module_id, event_id, name, time_ms, received_ms, items,
//!        summary)                                        typed rows of security messages
//! agents(device_id, module_id, agent_version, last_message_ms)
//! alerts(id, rule, severity, device_id, module_id, key, state, first_ms, last_ms, count,
//!        evidence (JSON), changed_ms)
//! recommendations(device_id, module_id, source, kind, key, severity, title, remediation,
//!                 updated_ms)
//! ```
//!
//! Version 3 added the last four (the console's, `store::console`); older databases gain
//! them at open, empty: messages stored before are not ingested again.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{Map, Value};

use crate::twin::{DesiredChange, Twin, TwinError};
use twinguard_core::iothub::identity::IdentityId;

const SCHEMA_VERSION: i64 = 3;

mod console;
pub use console::{
    AgentRecord, AlertAction, AlertQuery, AlertRecord, EventRecord, EventRow, Ingest, RecommendationRecord,
    Retention,
};
mod registry;
pub use registry::{etag_matches, etag_of, AuditRecord, ConfigurationRecord, RegistryRecord, TwinRecord};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    key TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    secondary_key TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'enabled',
    etag_n INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (device_id, module_id)
);
CREATE TABLE IF NOT EXISTS twins (
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    desired TEXT NOT NULL,
    desired_version INTEGER NOT NULL,
    reported TEXT NOT NULL,
    reported_version INTEGER NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}',
    tags_version INTEGER NOT NULL DEFAULT 1,
    applied_config TEXT,
    PRIMARY KEY (device_id, module_id)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    module_id TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL,
    is_security INTEGER NOT NULL,
    schema_valid INTEGER NOT NULL,
    schema_error TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_identity ON messages (device_id, module_id, id);
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY,
    primary_key TEXT NOT NULL,
    secondary_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS configurations (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    etag_n INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL
);
";

/// What a version 1 database gains (its tables exist without these columns).
const MIGRATE_FROM_1: &str = "
ALTER TABLE identities ADD COLUMN secondary_key TEXT NOT NULL DEFAULT '';
ALTER TABLE identities ADD COLUMN status TEXT NOT NULL DEFAULT 'enabled';
ALTER TABLE identities ADD COLUMN etag_n INTEGER NOT NULL DEFAULT 1;
ALTER TABLE twins ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
ALTER TABLE twins ADD COLUMN tags_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE twins ADD COLUMN applied_config TEXT;
";

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, corruption, locked by another hub).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer hub.
    #[error("database schema version {found} is newer than this hub's {SCHEMA_VERSION}")]
    NewerSchema {
        /// The version found.
        found: i64,
    },
    /// A stored JSON column does not parse (the file was edited by hand).
    #[error("stored JSON of {what} is corrupt: {source}")]
    CorruptJson {
        /// Which column.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// `identity add` of an identity that exists.
    #[error("identity {0} already exists")]
    IdentityExists(String),
    /// No such identity.
    #[error("no identity {0}")]
    NoSuchIdentity(String),
    /// A twin change refused by IoT Hub's rules.
    #[error(transparent)]
    Twin(#[from] TwinError),
    /// No alert of that number.
    #[error("no alert {0}")]
    NoSuchAlert(i64),
    /// A state change that does not apply to the alert's state.
    #[error("alert {alert} is {state}")]
    AlertState {
        /// Which alert.
        alert: i64,
        /// Its state.
        state: String,
    },
    /// `If-Match` named another etag than the current one.
    #[error("the etag {given} is not the current one of {what}")]
    StaleEtag {
        /// Which document.
        what: String,
        /// The etag given.
        given: String,
    },
}

/// One identity as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// Device and module id.
    pub id: IdentityId,
    /// Its symmetric key, base64.
    pub key: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
}

/// A message to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Who sent it.
    pub id: IdentityId,
    /// When it arrived, Unix milliseconds.
    pub received_ms: i64,
    /// The whole PUBLISH topic.
    pub topic: String,
    /// The decoded property bag, in order.
    pub properties: Vec<(String, Option<String>)>,
    /// The payload.
    pub body: Vec<u8>,
    /// Marked as a security message.
    pub is_security: bool,
    /// Parsed strictly as the security-message model (only checked for security messages).
    pub schema_valid: bool,
    /// Why not, when it is a security message that does not parse.
    pub schema_error: Option<String>,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Increasing id; `after` in queries.
    pub seq: i64,
    /// The message.
    pub message: NewMessage,
}

/// Which messages to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageQuery {
    /// Only this device's (and its modules').
    pub device: Option<String>,
    /// Only this module's.
    pub module: Option<String>,
    /// Only with a sequence number above this.
    pub after: i64,
    /// At most this many, oldest first.
    pub limit: usize,
}

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// Oldest messages beyond this many are deleted, so the database stays bounded.
    max_messages: i64,
    /// The console's retention.
    retention: Retention,
}

fn module_col(id: &IdentityId) -> &str {
    id.module().unwrap_or("")
}

fn identity_from_cols(device: &str, module: &str) -> Option<IdentityId> {
    IdentityId::new(device, (!module.is_empty()).then_some(module)).ok()
}

fn parse_object(text: &str, what: &'static str) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::CorruptJson { what, source })
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path, max_messages: u64) -> Result<Store, StoreError> {
        // NOFOLLOW: a symbolic link planted at the database path is refused, not followed.
        let conn = Connection::open_with_flags(path, OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW)?;
        // WAL: readers (the API) do not block the writer; NORMAL sync is durable against a
        // killed process (the WAL is in the kernel before a commit returns); only a power loss
        // may lose the last commits, as for the agent's own cache.
        // `journal_mode` answers with the mode in force (an in-memory database stays "memory").
        let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Pages read through a memory map (up to 1 GiB) rather than copied by read(2) into
        // SQLite's small page cache: at fleet size (a million events) the console's indexes
        // are read on every message and page.
        conn.execute_batch("PRAGMA mmap_size = 1073741824;")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found });
        }
        if found == 1 {
            conn.execute_batch(MIGRATE_FROM_1)?;
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(console::SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Store {
            conn,
            max_messages: i64::try_from(max_messages).unwrap_or(i64::MAX).max(1),
            retention: Retention::default(),
        })
    }

    /// Sets the console's retention limits.
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    /// One identity.
    pub fn identity(&self, id: &IdentityId) -> Result<Option<IdentityRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT key, created_ms FROM identities WHERE device_id = ?1 AND module_id = ?2",
                params![id.device(), module_col(id)],
                |r| {
                    Ok(IdentityRecord {
                        id: id.clone(),
                        key: r.get(0)?,
                        created_ms: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// All identities, by device then module.
    pub fn identities(&self) -> Result<Vec<IdentityRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, module_id, key, created_ms FROM identities ORDER BY device_id, module_id",
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
            let (device, module, key, created_ms) = row?;
            // Rows that are not valid ids can only come from hand edits; they are skipped.
            if let Some(id) = identity_from_cols(&device, &module) {
                out.push(IdentityRecord { id, key, created_ms });
            }
        }
        Ok(out)
    }

    /// The twin of an identity.
    pub fn twin(&self, id: &IdentityId) -> Result<Option<Twin>, StoreError> {
        read_twin(&self.conn, id)
    }

    /// Merges a reported patch; returns the new reported `$version`.
    pub(crate) fn patch_reported(&mut self, id: &IdentityId, patch: &Value) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let mut twin = read_twin(&tx, id)?.ok_or_else(|| StoreError::NoSuchIdentity(id.to_string()))?;
        let version = twin.patch_reported(patch)?;
        write_twin(&tx, id, &twin)?;
        tx.commit()?;
        Ok(version)
    }

    /// Changes the desired properties; returns the twin after the change and the notification
    /// to deliver (`None` when nothing changed).
    pub fn change_desired(
        &mut self,
        id: &IdentityId,
        change: &DesiredChange,
    ) -> Result<(Twin, Option<Value>), StoreError> {
        let tx = self.conn.transaction()?;
        let mut twin = read_twin(&tx, id)?.ok_or_else(|| StoreError::NoSuchIdentity(id.to_string()))?;
        let notification = twin.change_desired(change)?;
        if notification.is_some() {
            write_twin(&tx, id, &twin)?;
        }
        tx.commit()?;
        Ok((twin, notification))
    }

    /// Stores a message (deleting the oldest beyond the retention bound); returns its
    /// sequence number.
    pub(crate) fn insert_message(&mut self, m: &NewMessage) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let seq = insert_message_in(&tx, m, self.max_messages)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Stores a security message and what the console made of it in one transaction (one
    /// commit per message, half the cost of two at fleet size); returns its sequence number
    /// and the alerts made or changed.
    pub(crate) fn insert_message_ingested(
        &mut self,
        m: &NewMessage,
        ingest: &Ingest,
        settings: &crate::console::rules::RuleSettings,
    ) -> Result<(i64, Vec<i64>), StoreError> {
        let tx = self.conn.transaction()?;
        let seq = insert_message_in(&tx, m, self.max_messages)?;
        let changed = console::ingest_in(&tx, seq, &m.id, m.received_ms, ingest, settings, self.retention)?;
        tx.commit()?;
        Ok((seq, changed))
    }

    /// Messages matching `q`, oldest first.
    pub fn messages(&self, q: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, device_id, module_id, received_ms, topic, properties, body, is_security, schema_valid, schema_error
             FROM messages
             WHERE id > ?1 AND (?2 IS NULL OR device_id = ?2) AND (?3 IS NULL OR module_id = ?3)
             ORDER BY id LIMIT ?4",
        )?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![q.after, q.device, q.module, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Vec<u8>>(6)?,
                r.get::<_, bool>(7)?,
                r.get::<_, bool>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                seq,
                device,
                module,
                received_ms,
                topic,
                properties,
                body,
                is_security,
                schema_valid,
                schema_error,
            ) = row?;
            let Some(id) = identity_from_cols(&device, &module) else {
                continue;
            };
            let properties: Vec<(String, Option<String>)> =
                serde_json::from_str(&properties).map_err(|source| StoreError::CorruptJson {
                    what: "messages.properties",
                    source,
                })?;
            out.push(StoredMessage {
                seq,
                message: NewMessage {
                    id,
                    received_ms,
                    topic,
                    properties,
                    body,
                    is_security,
                    schema_valid,
                    schema_error,
                },
            });
        }
        Ok(out)
    }

    /// The newest message's sequence number (0 when there is none).
    pub(crate) fn last_message_seq(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| r.get(0))?)
    }
}

/// Inserts a message in `tx`, deleting the oldest beyond `max_messages`.
fn insert_message_in(
    tx: &rusqlite::Transaction<'_>,
    m: &NewMessage,
    max_messages: i64,
) -> Result<i64, StoreError> {
    let properties = Value::Array(
        m.properties
            .iter()
            .map(|(k, v)| {
                Value::Array(vec![
                    Value::from(k.as_str()),
                    v.as_deref().map_or(Value::Null, Value::from),
                ])
            })
            .collect(),
    );
    tx.prepare_cached(
        "INSERT INTO messages (device_id, module_id, received_ms, topic, properties, body, is_security, schema_valid, schema_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        m.id.device(),
        module_col(&m.id),
        m.received_ms,
        m.topic,
        properties.to_string(),
        m.body,
        m.is_security,
        m.schema_valid,
        m.schema_error
    ])?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached("DELETE FROM messages WHERE id <= ?1")?
        .execute(params![seq - max_messages])?;
    Ok(seq)
}

fn read_twin(conn: &Connection, id: &IdentityId) -> Result<Option<Twin>, StoreError> {
    // Cached: the overview reads one twin per device.
    let row = conn
        .prepare_cached(
            "SELECT desired, desired_version, reported, reported_version FROM twins WHERE device_id = ?1 AND module_id = ?2",
        )?
        .query_row(
            params![id.device(), module_col(id)],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((desired, desired_version, reported, reported_version)) = row else {
        return Ok(None);
    };
    Ok(Some(Twin {
        desired: parse_object(&desired, "twins.desired")?,
        desired_version,
        reported: parse_object(&reported, "twins.reported")?,
        reported_version,
    }))
}

fn write_twin(conn: &Connection, id: &IdentityId, twin: &Twin) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE twins SET desired = ?3, desired_version = ?4, reported = ?5, reported_version = ?6 WHERE device_id = ?1 AND module_id = ?2",
        params![
            id.device(),
            module_col(id),
            Value::Object(twin.desired.clone()).to_string(),
            twin.desired_version,
            Value::Object(twin.reported.clone()).to_string(),
            twin.reported_version
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> Store {
        Store::open(Path::new(":memory:"), 3).expect("opens")
    }

    #[test]
    fn identities_and_twins() {
        let mut s = store();
        let m = IdentityId::new("d1", Some("azureiotsecurity")).expect("valid");
        let d = IdentityId::new("d1", None).expect("valid");
        let record = |id: &IdentityId, key: &str| RegistryRecord {
            id: id.clone(),
            primary_key: key.into(),
            secondary_key: String::new(),
            status: "enabled".into(),
            etag_n: 0,
            created_ms: 0,
        };
        assert!(
            matches!(
                s.put_identity(&record(&m, "a2V5"), None, 5),
                Err(StoreError::NoSuchIdentity(_))
            ),
            "a module's device must exist"
        );
        s.put_identity(&record(&d, "ZGV2"), None, 5).expect("adds");
        let added = s.put_identity(&record(&m, "a2V5"), None, 5).expect("adds");
        assert!(matches!(
            s.put_identity(&record(&m, "a2V5"), None, 6),
            Err(StoreError::IdentityExists(_))
        ));
        let etag = etag_of("identity", added.etag_n);
        assert!(matches!(
            s.put_identity(&record(&m, "bmV3"), Some("\"stale\""), 6),
            Err(StoreError::StaleEtag { .. })
        ));
        let updated = s
            .put_identity(&record(&m, "bmV3"), Some(&format!("\"{etag}\"")), 6)
            .expect("updates");
        assert_eq!((updated.primary_key.as_str(), updated.etag_n), ("bmV3", 2));
        s.put_identity(&record(&m, "a2V5"), Some("*"), 6)
            .expect("updates");
        let ids: Vec<String> = s
            .identities()
            .expect("lists")
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        assert_eq!(ids, ["d1", "d1/azureiotsecurity"]);
        assert_eq!(s.identity(&m).expect("reads").map(|r| r.key), Some("a2V5".into()));
        assert_eq!(s.patch_reported(&m, &json!({"a": 1})).expect("patches"), 2);
        let (twin, n) = s
            .change_desired(&m, &DesiredChange::Patch(json!({"x": 1})))
            .expect("changes");
        assert_eq!(n, Some(json!({"x": 1, "$version": 2})));
        assert_eq!(twin.reported.get("a"), Some(&json!(1)));
        assert!(matches!(
            s.patch_reported(&m, &json!({"a.b": 1})),
            Err(StoreError::Twin(_))
        ));
        let unknown = IdentityId::new("nobody", None).expect("valid");
        assert!(matches!(
            s.patch_reported(&unknown, &json!({})),
            Err(StoreError::NoSuchIdentity(_))
        ));
    }

    #[test]
    fn a_version_1_database_gains_the_service_columns() {
        let path = std::env::temp_dir().join(format!("twinguard-hub-v1-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).expect("opens");
            conn.execute_batch(
                "CREATE TABLE identities (device_id TEXT NOT NULL, module_id TEXT NOT NULL, key TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (device_id, module_id));
                 CREATE TABLE twins (device_id TEXT NOT NULL, module_id TEXT NOT NULL, desired TEXT NOT NULL, desired_version INTEGER NOT NULL, reported TEXT NOT NULL, reported_version INTEGER NOT NULL, PRIMARY KEY (device_id, module_id));
                 INSERT INTO identities VALUES ('d1', '', 'a2V5', 1);
                 INSERT INTO twins VALUES ('d1', '', '{\"x\":1}', 2, '{}', 1);
                 PRAGMA user_version = 1;",
            )
            .expect("v1 schema");
        }
        let s = Store::open(&path, 10).expect("migrates");
        let d = IdentityId::new("d1", None).expect("valid");
        let record = s.registry_record(&d).expect("reads").expect("kept");
        assert_eq!(
            (record.primary_key.as_str(), record.status.as_str()),
            ("a2V5", "enabled")
        );
        let twin = s.twin_record(&d).expect("reads").expect("kept");
        assert_eq!(twin.twin.desired.get("x"), Some(&json!(1)));
        assert!(twin.tags.is_empty());
        drop(s);
        assert!(Store::open(&path, 10).is_ok(), "opens again at version 2");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn messages_are_bounded_and_filtered() {
        let mut s = store();
        let m = IdentityId::new("d1", Some("m")).expect("valid");
        for i in 0..5 {
            let seq = s
                .insert_message(&NewMessage {
                    id: m.clone(),
                    received_ms: i,
                    topic: "t".into(),
                    properties: vec![("$.mid".into(), Some(i.to_string())), ("flag".into(), None)],
                    body: vec![b'x'; 3],
                    is_security: true,
                    schema_valid: false,
                    schema_error: Some("why".into()),
                })
                .expect("inserts");
            assert_eq!(seq, i + 1);
        }
        let all = s
            .messages(&MessageQuery {
                limit: 100,
                ..Default::default()
            })
            .expect("reads");
        assert_eq!(
            all.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [3, 4, 5],
            "retention keeps 3"
        );
        assert_eq!(all[0].message.properties[1], ("flag".into(), None));
        let q = MessageQuery {
            device: Some("d1".into()),
            module: Some("m".into()),
            after: 4,
            limit: 10,
        };
        assert_eq!(s.messages(&q).expect("reads").len(), 1);
        let q = MessageQuery {
            device: Some("d2".into()),
            limit: 10,
            ..Default::default()
        };
        assert!(s.messages(&q).expect("reads").is_empty());
        assert_eq!(s.last_message_seq().expect("reads"), 5);
    }
}
