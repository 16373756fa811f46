//! Security messages: a device-to-cloud message is one when its property bag says
//! `$.ifid=urn:azureiot:Security:SecurityAgent:1` (what the official SDKs'
//! `set_as_security_message()` and the agent send), and it is *valid* when its body parses
//! strictly as the security-message model shared with the agent (`twinguard_core::event`): exactly
//! `AgentVersion`, `AgentId` (a GUID), `MessageSchemaVersion` "1.0" and a non-empty `Events`
//! array of events that `Event::from_json` accepts. Pure.

use serde_json::Value;
use twinguard_core::event::{Event, MESSAGE_SCHEMA_VERSION};

/// The interface id that marks a security message.
pub(crate) const SECURITY_INTERFACE_ID: &str = "urn:azureiot:Security:SecurityAgent:1";

/// Whether a decoded property bag marks a security message.
pub(crate) fn is_security_message(properties: &[(String, Option<String>)]) -> bool {
    properties
        .iter()
        .any(|(name, value)| name == "$.ifid" && value.as_deref() == Some(SECURITY_INTERFACE_ID))
}

/// Checks a body against the security-message model; `Err` says the first problem found.
/// Returns the number of events.
pub(crate) fn check_security_message(body: &[u8]) -> Result<usize, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(members) = value else {
        return Err("not a JSON object".into());
    };
    for name in members.keys() {
        if !matches!(
            name.as_str(),
            "AgentVersion" | "AgentId" | "MessageSchemaVersion" | "Events"
        ) {
            return Err(format!("unknown member {name:?}"));
        }
    }
    match members.get("AgentVersion") {
        Some(Value::String(_)) => {}
        _ => return Err("AgentVersion: missing or not a string".into()),
    }
    match members.get("AgentId") {
        Some(Value::String(id)) if is_guid(id) => {}
        _ => return Err("AgentId: missing or not a GUID".into()),
    }
    match members.get("MessageSchemaVersion") {
        Some(Value::String(v)) if v == MESSAGE_SCHEMA_VERSION => {}
        _ => {
            return Err(format!(
                "MessageSchemaVersion: missing or not {MESSAGE_SCHEMA_VERSION:?}"
            ))
        }
    }
    let Some(Value::Array(events)) = members.get("Events") else {
        return Err("Events: missing or not an array".into());
    };
    if events.is_empty() {
        return Err("Events: empty".into());
    }
    for (i, event) in events.iter().enumerate() {
        let json = serde_json::to_vec(event).map_err(|e| format!("Events/{i}: {e}"))?;
        Event::from_json(&json).map_err(|e| format!("Events/{i}: {e}"))?;
    }
    Ok(events.len())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits of either case.
fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinguard_core::event::{Timestamp, Uuid};

    fn event_json() -> String {
        let event = Event::from_items(
            Uuid::from_u128(0x0f8f_ad5b_d9cb_469f_a165_7086_7728_950e),
            Vec::<twinguard_core::event::ListeningPorts>::new(),
            Timestamp::from_parts(1_795_893_660_123, 0).expect("time"),
        )
        .expect("event");
        String::from_utf8(event.to_json()).expect("utf-8")
    }

    #[test]
    fn strict_model() {
        let good = format!(
            r#"{{"AgentVersion":"0.1.0","AgentId":"0f8fad5b-d9cb-469f-a165-70867728950e","MessageSchemaVersion":"1.0","Events":[{}]}}"#,
            event_json()
        );
        assert_eq!(check_security_message(good.as_bytes()), Ok(1));
        for bad in [
            "[]".to_owned(),
            "{".to_owned(),
            good.replace("\"1.0\",\"Events\"", "\"2.0\",\"Events\""),
            good.replace("0f8fad5b-", "0f8fad5b"),
            good.replace("\"AgentVersion\":\"0.1.0\",", "\"AgentVersion\":1,"),
            good.replace("\"AgentVersion\"", "\"Extra\":1,\"AgentVersion\""),
            r#"{"AgentVersion":"1","AgentId":"0f8fad5b-d9cb-469f-a165-70867728950e","MessageSchemaVersion":"1.0","Events":[]}"#.to_owned(),
            good.replace("ListeningPorts", "NoSuchEvent"),
        ] {
            assert!(check_security_message(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn marker() {
        let props = |v: &str| vec![("$.ifid".to_owned(), Some(v.to_owned()))];
        assert!(is_security_message(&props(SECURITY_INTERFACE_ID)));
        assert!(!is_security_message(&props("urn:other")));
        assert!(!is_security_message(&[]));
    }
}
