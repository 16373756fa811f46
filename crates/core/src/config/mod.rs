//! The twin configuration engine (SPEC §2). Pure: no IO.
//!
//! Raw JSON (what the operator wrote) goes in; a validated [`Config`] comes out, or the full
//! list of [`Problem`]s of the document. Only `Config` travels to the rest of the agent.
//! The reported view, the desired-patch state for IoT Hub and the JSON Schema live here too.

mod document;
mod duration;
mod patch;
mod property;
mod reported;
mod schema;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

pub use document::{locate, read_document, Located, Unreadable, MAX_DOCUMENT_BYTES};
pub use duration::{is_grammatical, DurationError, IsoDuration, MAX_EFFECTIVE};
pub use patch::{merge_patch, DesiredState, PatchOutcome};
pub use property::{Kind, Property, CONFIG_KEY, MAX_MESSAGE_BYTES, MIN_CACHE_BYTES, MIN_MESSAGE_BYTES};
pub use reported::{reported_section, CollectorStatus, ConfigurationStatus, TwinguardStatus};
pub use schema::json_schema;
pub use validate::{
    did_you_mean, validate_config_object, validate_document, Problem, ProblemKind, Severity, Validation,
};

use crate::event::{EventName, Priority};

/// A validated configuration: what the agent runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `highPriorityMessageFrequency`
    pub high_priority_message_frequency: IsoDuration,
    /// `lowPriorityMessageFrequency`
    pub low_priority_message_frequency: IsoDuration,
    /// `snapshotFrequency`
    pub snapshot_frequency: IsoDuration,
    /// `maxLocalCacheSizeInBytes`
    pub max_local_cache_size_in_bytes: u64,
    /// `maxMessageSizeInBytes`
    pub max_message_size_in_bytes: u64,
    priorities: BTreeMap<EventName, Priority>,
    aggregation: BTreeMap<EventName, Aggregation>,
    /// The value of every known property exactly as the operator set it (JSON-equal), for the
    /// reported view. Properties at their default are absent.
    set_values: BTreeMap<Property, Value>,
}

/// Aggregation settings of one aggregatable event type.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregation {
    /// `aggregationEnabled{Name}`
    pub enabled: bool,
    /// `aggregationInterval{Name}`
    pub interval: IsoDuration,
}

impl Default for Config {
    fn default() -> Config {
        let default_interval = || IsoDuration::literal("PT1H", 3600);
        Config {
            high_priority_message_frequency: IsoDuration::literal("PT7M", 420),
            low_priority_message_frequency: IsoDuration::literal("PT5H", 18_000),
            snapshot_frequency: IsoDuration::literal("PT13H", 46_800),
            max_local_cache_size_in_bytes: 2_560_000,
            max_message_size_in_bytes: 204_800,
            priorities: EventName::ALL
                .into_iter()
                .map(|n| (n, n.default_priority()))
                .collect(),
            aggregation: EventName::ALL
                .into_iter()
                .filter(|n| n.is_aggregatable())
                .map(|n| {
                    (
                        n,
                        Aggregation {
                            enabled: true,
                            interval: default_interval(),
                        },
                    )
                })
                .collect(),
            set_values: BTreeMap::new(),
        }
    }
}

impl Config {
    /// The priority of events of `name`.
    pub fn priority(&self, name: EventName) -> Priority {
        self.priorities
            .get(&name)
            .copied()
            .unwrap_or(name.default_priority())
    }

    /// Aggregation settings of `name`, `None` for event types that do not aggregate.
    pub fn aggregation(&self, name: EventName) -> Option<&Aggregation> {
        self.aggregation.get(&name)
    }

    /// The sending frequency of a queue.
    pub fn frequency(&self, priority: Priority) -> Option<Duration> {
        match priority {
            Priority::High => Some(self.high_priority_message_frequency.duration()),
            Priority::Low => Some(self.low_priority_message_frequency.duration()),
            Priority::Off => None,
        }
    }

    /// The value in force of `property`, as JSON: what the operator set, or the default.
    pub fn value_of(&self, property: Property) -> Value {
        self.set_values
            .get(&property)
            .cloned()
            .unwrap_or_else(|| property.default_value())
    }

    /// The configuration object with every known property, wrapped in `{"value": ...}`.
    pub fn to_object(&self) -> serde_json::Map<String, Value> {
        Property::all()
            .into_iter()
            .map(|p| (p.name(), serde_json::json!({ "value": self.value_of(p) })))
            .collect()
    }

    /// The document `config show` prints: `{"ms_iotn:...": {...every property...}}`.
    pub fn to_desired_section(&self) -> Value {
        let mut section = serde_json::Map::new();
        section.insert(CONFIG_KEY.to_owned(), Value::Object(self.to_object()));
        Value::Object(section)
    }

    /// Applies one validated property value. Used by the validator only.
    fn set(&mut self, property: Property, typed: Typed, raw: Value) {
        match (property, typed) {
            (Property::HighPriorityMessageFrequency, Typed::Duration(d)) => {
                self.high_priority_message_frequency = d
            }
            (Property::LowPriorityMessageFrequency, Typed::Duration(d)) => {
                self.low_priority_message_frequency = d
            }
            (Property::SnapshotFrequency, Typed::Duration(d)) => self.snapshot_frequency = d,
            (Property::MaxLocalCacheSizeInBytes, Typed::Integer(n)) => self.max_local_cache_size_in_bytes = n,
            (Property::MaxMessageSizeInBytes, Typed::Integer(n)) => self.max_message_size_in_bytes = n,
            (Property::EventPriority(name), Typed::Priority(p)) => {
                self.priorities.insert(name, p);
            }
            (Property::AggregationEnabled(name), Typed::Boolean(b)) => {
                if let Some(a) = self.aggregation.get_mut(&name) {
                    a.enabled = b;
                }
            }
            (Property::AggregationInterval(name), Typed::Duration(d)) => {
                if let Some(a) = self.aggregation.get_mut(&name) {
                    a.interval = d;
                }
            }
            // The validator produces the typed value from the property's kind, so a mismatch
            // cannot happen; ignoring it keeps the default rather than panicking.
            _ => return,
        }
        self.set_values.insert(property, raw);
    }
}

/// Runs every parser of this module over untrusted bytes: as a twin document, as a desired
/// patch, and as a duration. The fuzz target and its corpus replay call it; it must never panic.
pub fn check_untrusted_bytes(data: &[u8]) {
    if let Ok(doc) = read_document(data) {
        let _ = validate_document(&doc);
        let mut state = DesiredState::new();
        state.replace(serde_json::json!({ "$version": 1 }));
        if state.apply_patch(&doc) != (PatchOutcome::Unversioned) {
            let _ = validate_document(state.document());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = IsoDuration::parse(text);
    }
}

/// A property value after type checking.
#[derive(Clone, Debug)]
enum Typed {
    Duration(IsoDuration),
    Integer(u64),
    Priority(Priority),
    Boolean(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_values() {
        let c = Config::default();
        assert_eq!(c.high_priority_message_frequency.as_str(), "PT7M");
        assert_eq!(c.low_priority_message_frequency.as_str(), "PT5H");
        assert_eq!(c.snapshot_frequency.as_str(), "PT13H");
        assert_eq!(c.max_local_cache_size_in_bytes, 2_560_000);
        assert_eq!(c.max_message_size_in_bytes, 204_800);
        assert_eq!(c.priority(EventName::Diagnostic), Priority::Off);
        assert_eq!(c.priority(EventName::Login), Priority::High);
        for d in [
            &c.high_priority_message_frequency,
            &c.low_priority_message_frequency,
            &c.snapshot_frequency,
        ] {
            assert_eq!(IsoDuration::parse(d.as_str()).as_ref(), Ok(d));
        }
        for p in Property::all() {
            assert_eq!(c.value_of(p), p.default_value());
        }
        let agg = c.aggregation(EventName::ProcessCreate);
        assert!(agg.is_some_and(|a| a.enabled && a.interval.as_str() == "PT1H"));
        assert!(c.aggregation(EventName::Login).is_none());
    }
}
