//! The JSON Schema (draft-07) of the configuration object, generated from the property table so
//! that it cannot drift from the validator. A test checks that both agree on every case.

use serde_json::{json, Map, Value};

use super::property::{Kind, Property};

/// The grammar of the official `TimeConfiguration` pattern, plus a look-ahead that demands a
/// non-zero digit somewhere (our "total > 0" rule, which the official pattern lacks).
pub const DURATION_PATTERN: &str = concat!(
    r"^P(?=.*[1-9])(?!$)((\d+Y)|(\d+\.\d+Y$))?((\d+M)|(\d+\.\d+M$))?((\d+W)|(\d+\.\d+W$))?",
    r"((\d+D)|(\d+\.\d+D$))?(T(?=\d)((\d+H)|(\d+\.\d+H$))?((\d+M)|(\d+\.\d+M$))?(\d+(\.\d+)?S)?)??$"
);

/// The JSON Schema of the configuration object (the value of the `ms_iotn:...` key).
pub fn json_schema() -> Value {
    let mut properties = Map::new();
    for p in Property::all() {
        let value = match p.kind() {
            Kind::Duration => json!({"type": "string", "pattern": DURATION_PATTERN}),
            Kind::Integer { min, max } if max == u64::MAX => json!({"type": "integer", "minimum": min}),
            Kind::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Kind::Priority => json!({"type": "string", "enum": ["High", "Low", "Off"]}),
            Kind::Boolean => json!({"type": "boolean"}),
        };
        properties.insert(
            p.name(),
            json!({
                "description": p.description(),
                // null deletes the member (IoT Hub's meaning), so it is allowed and means default.
                "type": ["object", "null"],
                "properties": {"value": value},
                "default": {"value": p.default_value()},
            }),
        );
    }
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://twinguard.invalid/schema/security-agent-configuration.json",
        "title": "twinguard security agent configuration object",
        "description": "The value of desired[\"ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration\"]. Every property is optional and wrapped as {\"value\": ...}; a missing or null property is at its default. Unknown properties are allowed and ignored.",
        "type": ["object", "null"],
        "properties": properties,
    })
}
