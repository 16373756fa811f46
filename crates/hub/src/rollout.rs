//! Applies automatic configurations to twins: after a configuration changes (every twin),
//! and after an identity is created or its tags change (that twin). A twin records the
//! `id@etag` of the configuration whose content it holds, so content is written once per
//! configuration version, and a deleted configuration leaves its content in place (as on IoT
//! Hub) until another one targets the twin. Decisions are [`crate::configuration`]'s; this
//! module reads and writes through the [`Hub`], so connected agents get the change at once.

use tracing::{info, warn};

use crate::configuration::{winner, Configuration};
use crate::hub::Hub;
use crate::store::{StoreError, TwinRecord};
use crate::twin::DesiredChange;
use crate::twin_query::Source;
use twinguard_core::iothub::identity::IdentityId;

/// The stored configurations, checked (a stored one that no longer checks is skipped).
pub fn configurations(hub: &Hub) -> Result<Vec<Configuration>, StoreError> {
    let stored = hub.store().configurations()?;
    Ok(stored
        .iter()
        .filter_map(|c| {
            Configuration::from_document(&c.id, &c.body, c.created_ms, format!("{}@{}", c.id, c.etag()))
                .map_err(|e| warn!(configuration = %c.id, "stored configuration skipped: {e}"))
                .ok()
        })
        .collect())
}

fn source_of(id: &IdentityId) -> Source {
    if id.module().is_some() {
        Source::Modules
    } else {
        Source::Devices
    }
}

/// Brings one twin to the configuration in force for it. A write that loses a race with
/// another writer (stale etag) is retried on the new twin.
fn reconcile_record(hub: &Hub, all: &[Configuration], mut record: TwinRecord) -> Result<(), StoreError> {
    for _ in 0..5 {
        let doc = record.document(false);
        let Some(chosen) = winner(all, source_of(&record.id), &doc) else {
            if record.applied_config.is_some() {
                // Its configuration is gone or no longer targets it: the content stays.
                hub.store().set_applied_config(&record.id, None)?;
            }
            return Ok(());
        };
        if record.applied_config.as_deref() == Some(chosen.stamp.as_str()) {
            return Ok(());
        }
        let desired = chosen.apply(&record.twin.desired, record.id.module());
        let change = DesiredChange::Replace(serde_json::Value::Object(desired));
        match hub.write_twin_service(&record.id, Some(&record.etag()), None, Some(&change)) {
            Ok(_) => {
                hub.store().set_applied_config(&record.id, Some(&chosen.stamp))?;
                info!(identity = %record.id, configuration = %chosen.id, "configuration applied");
                return Ok(());
            }
            Err(StoreError::StaleEtag { .. }) => {
                let Some(again) = hub.store().twin_record(&record.id)? else {
                    return Ok(());
                };
                record = again;
            }
            Err(e) => return Err(e),
        }
    }
    warn!(identity = %record.id, "configuration not applied: the twin kept changing");
    Ok(())
}

/// Applies the configurations to every twin.
pub fn reconcile_all(hub: &Hub) -> Result<(), StoreError> {
    let all = configurations(hub)?;
    for modules in [false, true] {
        let records = hub.store().twin_records(modules)?;
        for record in records {
            reconcile_record(hub, &all, record)?;
        }
    }
    Ok(())
}

/// Applies the configurations to one twin (a new identity, or one whose tags changed).
pub fn reconcile_one(hub: &Hub, id: &IdentityId) -> Result<(), StoreError> {
    let all = configurations(hub)?;
    if all.is_empty() {
        return Ok(());
    }
    let Some(record) = hub.store().twin_record(id)? else {
        return Ok(());
    };
    reconcile_record(hub, &all, record)
}
