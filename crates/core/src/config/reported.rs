//! The reported-properties view (SPEC §2): the configuration object in force with every known
//! property, and beside it the `twinguard` status object that tells an operator what works.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::property::CONFIG_KEY;
use super::Config;

/// Most errors kept in `twinguard.errors`; with [`MAX_ERROR_CHARS`] this keeps the section far
/// below IoT Hub's 32 KB limit on reported properties.
pub const MAX_ERRORS: usize = 40;
/// Longest error string kept, in characters.
pub const MAX_ERROR_CHARS: usize = 300;

/// Whether the last desired document was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigurationStatus {
    /// The last document received is in force.
    Applied,
    /// The last document received was rejected; the one in force is older (or the defaults).
    Rejected,
}

/// What one collector is doing, for `twinguard.collectors`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectorStatus {
    /// The source in use (`"netlink proc connector"`, `"/proc/net"`...), `""` when not running.
    pub source: String,
    /// Whether the source is a fallback for a better one that is unavailable.
    pub fallback: bool,
    /// The last error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Events lost before they reached the cache (e.g. kernel socket overruns).
    pub losses: u64,
    /// A note for the operator (e.g. "no firewall tool installed").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The `twinguard` object of the reported section.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinguardStatus {
    /// The agent's version.
    pub version: String,
    /// Whether the last desired document was applied.
    pub configuration_status: ConfigurationStatus,
    /// Problems of the last desired document (errors and warnings), capped.
    pub errors: Vec<String>,
    /// `$version` of the desired document in force, when the transport has versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_version: Option<i64>,
    /// `$version` of the last desired document received, applied or rejected: what
    /// `configuration_status` and `errors` are about (`twinguard-hub twin patch-desired --wait`
    /// waits for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_desired_version: Option<i64>,
    /// Per collector (by event name), what it uses and how it fares.
    pub collectors: BTreeMap<String, CollectorStatus>,
    /// Cumulative counters (since the data directory was created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Value>,
}

impl TwinguardStatus {
    /// A status for `configuration_status` with `errors` capped to the limits above.
    pub fn new(
        configuration_status: ConfigurationStatus,
        errors: impl IntoIterator<Item = String>,
    ) -> TwinguardStatus {
        let mut kept: Vec<String> = Vec::new();
        let mut dropped = 0usize;
        for e in errors {
            if kept.len() < MAX_ERRORS {
                kept.push(if e.chars().count() > MAX_ERROR_CHARS {
                    e.chars().take(MAX_ERROR_CHARS).collect::<String>() + "..."
                } else {
                    e
                });
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            kept.push(format!("... and {dropped} more"));
        }
        TwinguardStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            configuration_status,
            errors: kept,
            desired_version: None,
            last_desired_version: None,
            collectors: BTreeMap::new(),
            counters: None,
        }
    }
}

/// The reported section: the configuration in force (every known property, wrapped, values
/// JSON-equal to what was set) and the `twinguard` status object.
pub fn reported_section(config: &Config, status: &TwinguardStatus) -> Value {
    let mut section = serde_json::Map::new();
    section.insert(CONFIG_KEY.to_owned(), Value::Object(config.to_object()));
    section.insert(
        "twinguard".to_owned(),
        serde_json::to_value(status).unwrap_or(Value::Null),
    );
    Value::Object(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_capped() {
        let status = TwinguardStatus::new(
            ConfigurationStatus::Rejected,
            (0..100).map(|i| "x".repeat(i * 10)),
        );
        assert_eq!(status.errors.len(), MAX_ERRORS + 1);
        assert!(status
            .errors
            .iter()
            .all(|e| e.chars().count() <= MAX_ERROR_CHARS + 20));
        let text = reported_section(&Config::default(), &status).to_string();
        assert!(text.len() < 32 * 1024, "{} bytes", text.len());
    }
}
