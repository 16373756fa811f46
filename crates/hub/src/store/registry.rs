//! The service side's storage: identities with their second key, status and etag, twins
//! with tags, shared access policies, automatic configurations and the audit trail. Every
//! write is one transaction; an `If-Match` etag is compared inside it, so a stale one changes
//! nothing.

use rusqlite::{params, OptionalExtension};
use serde_json::{Map, Value};

use super::{identity_from_cols, module_col, parse_object, read_twin, write_twin, Store, StoreError};
use crate::twin::{check_tags, DesiredChange, Twin};
use twinguard_core::iothub::identity::IdentityId;

/// An identity as the registry shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRecord {
    /// Device and module id.
    pub id: IdentityId,
    /// Primary key, base64 (the one MQTT connections are checked with).
    pub primary_key: String,
    /// Secondary key, base64.
    pub secondary_key: String,
    /// `enabled` or `disabled`.
    pub status: String,
    /// +1 per change of the identity; its etag is derived from it.
    pub etag_n: i64,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
}

/// A twin with its tags and the configuration applied to it.
#[derive(Clone, Debug, PartialEq)]
pub struct TwinRecord {
    /// Whose twin.
    pub id: IdentityId,
    /// Desired and reported sections.
    pub twin: Twin,
    /// Tags (operator-only metadata; targeted by configurations).
    pub tags: Map<String, Value>,
    /// +1 per tags change.
    pub tags_version: i64,
    /// `id@etag` of the configuration whose content was applied last, if any.
    pub applied_config: Option<String>,
    /// The identity's status.
    pub status: String,
}

impl TwinRecord {
    /// The twin's version: +1 for every change of any section.
    pub fn version(&self) -> i64 {
        self.twin.desired_version + self.twin.reported_version + self.tags_version - 2
    }

    /// The twin's etag (opaque to clients; changes with [`TwinRecord::version`]).
    pub fn etag(&self) -> String {
        etag_of("twin", self.version())
    }
}

/// A stored automatic configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigurationRecord {
    /// Its id.
    pub id: String,
    /// The document as given (without its etag and metrics, which are computed).
    pub body: Map<String, Value>,
    /// +1 per update.
    pub etag_n: i64,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
}

impl ConfigurationRecord {
    /// Its etag.
    pub fn etag(&self) -> String {
        etag_of("configuration", self.etag_n)
    }

    /// Its priority (0 when not a number).
    pub fn priority(&self) -> i64 {
        self.body.get("priority").and_then(Value::as_i64).unwrap_or(0)
    }
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Increasing sequence number.
    pub seq: i64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who: a policy name (`policy:iothubowner`) or `api-token`.
    pub who: String,
    /// What: the method and the operation (`PUT /devices/{id}`).
    pub action: String,
    /// The path it was about.
    pub target: String,
    /// The answer's status code.
    pub status: i64,
}

/// An opaque etag for a counter: base64 of `{kind}:{n}`, as IoT Hub's are base64 strings.
pub fn etag_of(kind: &str, n: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{kind}:{n}"))
}

/// Whether an `If-Match` value (quoted or not, or `*`) allows a write over `current`.
pub fn etag_matches(if_match: Option<&str>, current: &str) -> bool {
    match if_match.map(|v| v.trim().trim_matches('"')) {
        None | Some("*") => true,
        Some(given) => given == current,
    }
}

fn stale(what: &IdentityId, given: Option<&str>) -> StoreError {
    StoreError::StaleEtag {
        what: what.to_string(),
        given: given.unwrap_or_default().to_owned(),
    }
}

impl Store {
    /// The shared access policies: (name, primary key, secondary key).
    pub fn policies(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, primary_key, secondary_key FROM policies ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds a policy unless one of that name exists (keys are made once, at first start).
    pub fn ensure_policy(&mut self, name: &str, primary: &str, secondary: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO policies (name, primary_key, secondary_key) VALUES (?1, ?2, ?3)",
            params![name, primary, secondary],
        )?;
        Ok(())
    }

    /// One identity as the registry shows it.
    pub fn registry_record(&self, id: &IdentityId) -> Result<Option<RegistryRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT key, secondary_key, status, etag_n, created_ms FROM identities WHERE device_id = ?1 AND module_id = ?2",
                params![id.device(), module_col(id)],
                |r| {
                    Ok(RegistryRecord {
                        id: id.clone(),
                        primary_key: r.get(0)?,
                        secondary_key: r.get(1)?,
                        status: r.get(2)?,
                        etag_n: r.get(3)?,
                        created_ms: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Devices (`device` None: every device, no modules), or the modules of `device`.
    pub fn registry_records(&self, device: Option<&str>) -> Result<Vec<RegistryRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, module_id, key, secondary_key, status, etag_n, created_ms FROM identities
             WHERE (?1 IS NULL AND module_id = '') OR (device_id = ?1 AND module_id != '')
             ORDER BY device_id, module_id",
        )?;
        let rows = stmt.query_map(params![device], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (d, m, primary_key, secondary_key, status, etag_n, created_ms) = row?;
            // Rows that are not valid ids can only come from hand edits; they are skipped.
            if let Some(id) = identity_from_cols(&d, &m) {
                out.push(RegistryRecord {
                    id,
                    primary_key,
                    secondary_key,
                    status,
                    etag_n,
                    created_ms,
                });
            }
        }
        Ok(out)
    }

    /// Creates or updates an identity (IoT Hub's `PUT /devices/{id}[/modules/{mid}]`). Without
    /// `if_match`, the identity must not exist (409); with it, it must exist (404) and match
    /// (412). A module's device must exist.
    pub fn put_identity(
        &mut self,
        record: &RegistryRecord,
        if_match: Option<&str>,
        now_ms: i64,
    ) -> Result<RegistryRecord, StoreError> {
        let tx = self.conn.transaction()?;
        let id = &record.id;
        if id.module().is_some() {
            let device =
                IdentityId::new(id.device(), None).map_err(|_| StoreError::NoSuchIdentity(id.to_string()))?;
            let found: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM identities WHERE device_id = ?1 AND module_id = ''",
                    params![device.device()],
                    |r| r.get(0),
                )
                .optional()?;
            if found.is_none() {
                return Err(StoreError::NoSuchIdentity(device.to_string()));
            }
        }
        let current: Option<i64> = tx
            .query_row(
                "SELECT etag_n FROM identities WHERE device_id = ?1 AND module_id = ?2",
                params![id.device(), module_col(id)],
                |r| r.get(0),
            )
            .optional()?;
        match (current, if_match) {
            (Some(_), None) => return Err(StoreError::IdentityExists(id.to_string())),
            (None, Some(_)) => return Err(StoreError::NoSuchIdentity(id.to_string())),
            (Some(n), Some(given)) => {
                if !etag_matches(Some(given), &etag_of("identity", n)) {
                    return Err(stale(id, Some(given)));
                }
                tx.execute(
                    "UPDATE identities SET key = ?3, secondary_key = ?4, status = ?5, etag_n = etag_n + 1 WHERE device_id = ?1 AND module_id = ?2",
                    params![id.device(), module_col(id), record.primary_key, record.secondary_key, record.status],
                )?;
            }
            (None, None) => {
                let empty = Twin::default();
                tx.execute(
                    "INSERT INTO identities (device_id, module_id, key, created_ms, secondary_key, status, etag_n) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                    params![id.device(), module_col(id), record.primary_key, now_ms, record.secondary_key, record.status],
                )?;
                tx.execute(
                    "INSERT INTO twins (device_id, module_id, desired, desired_version, reported, reported_version) VALUES (?1, ?2, '{}', ?3, '{}', ?4)",
                    params![id.device(), module_col(id), empty.desired_version, empty.reported_version],
                )?;
            }
        }
        tx.commit()?;
        self.registry_record(id)?
            .ok_or_else(|| StoreError::NoSuchIdentity(id.to_string()))
    }

    /// Deletes an identity (a device with its modules), if `if_match` allows.
    pub fn delete_identity(&mut self, id: &IdentityId, if_match: Option<&str>) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let current: Option<i64> = tx
            .query_row(
                "SELECT etag_n FROM identities WHERE device_id = ?1 AND module_id = ?2",
                params![id.device(), module_col(id)],
                |r| r.get(0),
            )
            .optional()?;
        let Some(n) = current else {
            return Err(StoreError::NoSuchIdentity(id.to_string()));
        };
        if !etag_matches(if_match, &etag_of("identity", n)) {
            return Err(stale(id, if_match));
        }
        let (sql_i, sql_t) = if id.module().is_some() {
            (
                "DELETE FROM identities WHERE device_id = ?1 AND module_id = ?2",
                "DELETE FROM twins WHERE device_id = ?1 AND module_id = ?2",
            )
        } else {
            (
                "DELETE FROM identities WHERE device_id = ?1 AND ?2 = ''",
                "DELETE FROM twins WHERE device_id = ?1 AND ?2 = ''",
            )
        };
        tx.execute(sql_i, params![id.device(), module_col(id)])?;
        tx.execute(sql_t, params![id.device(), module_col(id)])?;
        tx.commit()?;
        Ok(())
    }

    /// A twin with its tags.
    pub fn twin_record(&self, id: &IdentityId) -> Result<Option<TwinRecord>, StoreError> {
        let Some(twin) = read_twin(&self.conn, id)? else {
            return Ok(None);
        };
        let row = self
            .conn
            .query_row(
                "SELECT t.tags, t.tags_version, t.applied_config, COALESCE(i.status, 'enabled') FROM twins t
                 LEFT JOIN identities i ON i.device_id = t.device_id AND i.module_id = t.module_id
                 WHERE t.device_id = ?1 AND t.module_id = ?2",
                params![id.device(), module_col(id)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((tags, tags_version, applied_config, status)) = row else {
            return Ok(None);
        };
        Ok(Some(TwinRecord {
            id: id.clone(),
            twin,
            tags: parse_object(&tags, "twins.tags")?,
            tags_version,
            applied_config,
            status,
        }))
    }

    /// Every device twin (`modules` false) or every module twin, by device then module.
    pub fn twin_records(&self, modules: bool) -> Result<Vec<TwinRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, module_id FROM twins WHERE (module_id != '') = ?1 ORDER BY device_id, module_id",
        )?;
        let ids: Vec<(String, String)> = stmt
            .query_map(params![modules], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for (d, m) in ids {
            if let Some(id) = identity_from_cols(&d, &m) {
                if let Some(record) = self.twin_record(&id)? {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// Writes a twin from the service side: the etag checked, then new tags and a desired
    /// change, all checked before anything is written. Returns the twin after and the desired
    /// notification for the live connection (`None` when desired did not change).
    pub fn write_twin_service(
        &mut self,
        id: &IdentityId,
        if_match: Option<&str>,
        tags: Option<Map<String, Value>>,
        desired: Option<&DesiredChange>,
    ) -> Result<(TwinRecord, Option<Value>), StoreError> {
        let current = self
            .twin_record(id)?
            .ok_or_else(|| StoreError::NoSuchIdentity(id.to_string()))?;
        if !etag_matches(if_match, &current.etag()) {
            return Err(stale(id, if_match));
        }
        let mut twin = current.twin.clone();
        let notification = match desired {
            Some(change) => twin.change_desired(change)?,
            None => None,
        };
        let tags_changed = match &tags {
            Some(t) => {
                check_tags(t)?;
                *t != current.tags
            }
            None => false,
        };
        let tx = self.conn.transaction()?;
        if notification.is_some() {
            write_twin(&tx, id, &twin)?;
        }
        if let (true, Some(t)) = (tags_changed, &tags) {
            tx.execute(
                "UPDATE twins SET tags = ?3, tags_version = tags_version + 1 WHERE device_id = ?1 AND module_id = ?2",
                params![id.device(), module_col(id), Value::Object(t.clone()).to_string()],
            )?;
        }
        tx.commit()?;
        let after = self
            .twin_record(id)?
            .ok_or_else(|| StoreError::NoSuchIdentity(id.to_string()))?;
        Ok((after, notification))
    }

    /// Records which configuration's content a twin holds (`id@etag`), or none.
    pub fn set_applied_config(&mut self, id: &IdentityId, applied: Option<&str>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE twins SET applied_config = ?3 WHERE device_id = ?1 AND module_id = ?2",
            params![id.device(), module_col(id), applied],
        )?;
        Ok(())
    }

    /// Creates or replaces a configuration; `if_match` as for identities (none: must not
    /// exist).
    pub fn put_configuration(
        &mut self,
        id: &str,
        body: &Map<String, Value>,
        if_match: Option<&str>,
        now_ms: i64,
    ) -> Result<ConfigurationRecord, StoreError> {
        let current = self.configuration(id)?;
        let text = Value::Object(body.clone()).to_string();
        match (current, if_match) {
            (Some(_), None) => return Err(StoreError::IdentityExists(format!("configuration {id}"))),
            (None, Some(_)) => return Err(StoreError::NoSuchIdentity(format!("configuration {id}"))),
            (Some(c), Some(given)) => {
                if !etag_matches(Some(given), &c.etag()) {
                    return Err(StoreError::StaleEtag {
                        what: format!("configuration {id}"),
                        given: given.to_owned(),
                    });
                }
                self.conn.execute(
                    "UPDATE configurations SET body = ?2, etag_n = etag_n + 1 WHERE id = ?1",
                    params![id, text],
                )?;
            }
            (None, None) => {
                self.conn.execute(
                    "INSERT INTO configurations (id, body, etag_n, created_ms) VALUES (?1, ?2, 1, ?3)",
                    params![id, text, now_ms],
                )?;
            }
        }
        self.configuration(id)?
            .ok_or_else(|| StoreError::NoSuchIdentity(format!("configuration {id}")))
    }

    /// One configuration.
    pub fn configuration(&self, id: &str) -> Result<Option<ConfigurationRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT body, etag_n, created_ms FROM configurations WHERE id = ?1",
                params![id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
            )
            .optional()?;
        row.map(|(body, etag_n, created_ms)| {
            Ok(ConfigurationRecord {
                id: id.to_owned(),
                body: parse_object(&body, "configurations.body")?,
                etag_n,
                created_ms,
            })
        })
        .transpose()
    }

    /// Every configuration, by id.
    pub fn configurations(&self) -> Result<Vec<ConfigurationRecord>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id FROM configurations ORDER BY id")?;
        let ids: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(c) = self.configuration(&id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Deletes a configuration, if `if_match` allows. Twins keep what it set.
    pub fn delete_configuration(&mut self, id: &str, if_match: Option<&str>) -> Result<(), StoreError> {
        let current = self
            .configuration(id)?
            .ok_or_else(|| StoreError::NoSuchIdentity(format!("configuration {id}")))?;
        if !etag_matches(if_match, &current.etag()) {
            return Err(StoreError::StaleEtag {
                what: format!("configuration {id}"),
                given: if_match.unwrap_or_default().to_owned(),
            });
        }
        self.conn
            .execute("DELETE FROM configurations WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Appends to the audit trail.
    pub fn record_audit(
        &mut self,
        at_ms: i64,
        who: &str,
        action: &str,
        target: &str,
        status: u16,
    ) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO audit (at_ms, who, action, target, status) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![at_ms, who, action, target, status],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Audit entries after `after`, oldest first, at most `limit`.
    pub fn audit_after(&self, after: i64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at_ms, who, action, target, status FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                who: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                status: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl TwinRecord {
    /// The twin as IoT Hub's service API shows it (and as queries and target conditions see
    /// it): ids, etag, version, status, tags, and both sections with their `$version`.
    pub fn document(&self, connected: bool) -> Value {
        let mut doc = serde_json::json!({
            "deviceId": self.id.device(),
            "etag": self.etag(),
            "version": self.version(),
            "status": self.status,
            "connectionState": if connected { "Connected" } else { "Disconnected" },
            "authenticationType": "sas",
            "tags": self.tags,
            "properties": self.twin.get_body(),
        });
        if let (Some(m), Value::Object(o)) = (self.id.module(), &mut doc) {
            o.insert("moduleId".into(), Value::from(m));
        }
        doc
    }
}
