//! The table of known configuration properties (SPEC §2): their names, kinds, bounds and
//! defaults. The validator, the reported view and the JSON Schema are all derived from it, so
//! there is one source of truth.

use serde_json::{json, Value};

use crate::event::EventName;

/// The key of the configuration object inside the desired (and reported) section.
pub const CONFIG_KEY: &str = "ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration";

/// Smallest valid `maxLocalCacheSizeInBytes` (inclusive).
pub const MIN_CACHE_BYTES: u64 = 8192;
/// Smallest valid `maxMessageSizeInBytes` (inclusive).
pub const MIN_MESSAGE_BYTES: u64 = 8192;
/// Largest valid `maxMessageSizeInBytes` (inclusive): IoT Hub's 256 KB message limit.
pub const MAX_MESSAGE_BYTES: u64 = 262_144;

/// One known property of the configuration object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Property {
    /// `highPriorityMessageFrequency`
    HighPriorityMessageFrequency,
    /// `lowPriorityMessageFrequency`
    LowPriorityMessageFrequency,
    /// `snapshotFrequency`
    SnapshotFrequency,
    /// `maxLocalCacheSizeInBytes`
    MaxLocalCacheSizeInBytes,
    /// `maxMessageSizeInBytes`
    MaxMessageSizeInBytes,
    /// `eventPriority{Name}`
    EventPriority(EventName),
    /// `aggregationEnabled{Name}` (ProcessCreate, ProcessTerminate, ConnectionCreate)
    AggregationEnabled(EventName),
    /// `aggregationInterval{Name}` (ProcessCreate, ProcessTerminate, ConnectionCreate)
    AggregationInterval(EventName),
}

/// The JSON type and range a property's `value` must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An ISO 8601 duration string.
    Duration,
    /// An integer within inclusive bounds.
    Integer {
        /// Smallest valid value.
        min: u64,
        /// Largest valid value.
        max: u64,
    },
    /// `"High"`, `"Low"` or `"Off"`, exactly.
    Priority,
    /// `true` or `false`.
    Boolean,
}

impl Property {
    /// Every known property, in the order they are reported.
    pub fn all() -> Vec<Property> {
        let mut all = vec![
            Property::HighPriorityMessageFrequency,
            Property::LowPriorityMessageFrequency,
            Property::SnapshotFrequency,
            Property::MaxLocalCacheSizeInBytes,
            Property::MaxMessageSizeInBytes,
        ];
        all.extend(EventName::ALL.into_iter().map(Property::EventPriority));
        for name in EventName::ALL.into_iter().filter(|n| n.is_aggregatable()) {
            all.push(Property::AggregationEnabled(name));
            all.push(Property::AggregationInterval(name));
        }
        all
    }

    /// The property's name in the twin.
    pub fn name(self) -> String {
        match self {
            Property::HighPriorityMessageFrequency => "highPriorityMessageFrequency".into(),
            Property::LowPriorityMessageFrequency => "lowPriorityMessageFrequency".into(),
            Property::SnapshotFrequency => "snapshotFrequency".into(),
            Property::MaxLocalCacheSizeInBytes => "maxLocalCacheSizeInBytes".into(),
            Property::MaxMessageSizeInBytes => "maxMessageSizeInBytes".into(),
            Property::EventPriority(n) => format!("eventPriority{n}"),
            Property::AggregationEnabled(n) => format!("aggregationEnabled{n}"),
            Property::AggregationInterval(n) => format!("aggregationInterval{n}"),
        }
    }

    /// Looks a name up exactly (case-sensitive, as the twin is).
    pub fn from_name(name: &str) -> Option<Property> {
        Property::all().into_iter().find(|p| p.name() == name)
    }

    /// What the `value` must be.
    pub fn kind(self) -> Kind {
        match self {
            Property::HighPriorityMessageFrequency
            | Property::LowPriorityMessageFrequency
            | Property::SnapshotFrequency
            | Property::AggregationInterval(_) => Kind::Duration,
            Property::MaxLocalCacheSizeInBytes => Kind::Integer {
                min: MIN_CACHE_BYTES,
                max: u64::MAX,
            },
            Property::MaxMessageSizeInBytes => Kind::Integer {
                min: MIN_MESSAGE_BYTES,
                max: MAX_MESSAGE_BYTES,
            },
            Property::EventPriority(_) => Kind::Priority,
            Property::AggregationEnabled(_) => Kind::Boolean,
        }
    }

    /// The default value, as it appears in the twin.
    pub fn default_value(self) -> Value {
        match self {
            Property::HighPriorityMessageFrequency => json!("PT7M"),
            Property::LowPriorityMessageFrequency => json!("PT5H"),
            Property::SnapshotFrequency => json!("PT13H"),
            Property::MaxLocalCacheSizeInBytes => json!(2_560_000),
            Property::MaxMessageSizeInBytes => json!(204_800),
            Property::EventPriority(n) => json!(n.default_priority().as_str()),
            Property::AggregationEnabled(_) => json!(true),
            Property::AggregationInterval(_) => json!("PT1H"),
        }
    }

    /// A one-line description, used in the JSON Schema and help texts.
    pub fn description(self) -> String {
        match self {
            Property::HighPriorityMessageFrequency => {
                "Longest time a queued High event waits before it is sent (ISO 8601 duration)".into()
            }
            Property::LowPriorityMessageFrequency => {
                "Longest time a queued Low event waits before it is sent (ISO 8601 duration)".into()
            }
            Property::SnapshotFrequency => "Interval between snapshot events (ISO 8601 duration)".into(),
            Property::MaxLocalCacheSizeInBytes => {
                "Bytes of events the device may hold before they are sent; at least 8192".into()
            }
            Property::MaxMessageSizeInBytes => {
                "Largest security message in bytes; 8192 to 262144, best a multiple of 4096".into()
            }
            Property::EventPriority(n) => format!("Priority of {n} events: High, Low or Off"),
            Property::AggregationEnabled(n) => {
                format!("Whether identical {n} events within an interval are sent as one")
            }
            Property::AggregationInterval(n) => {
                format!("Window in which identical {n} events are aggregated (ISO 8601 duration)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_property_once() {
        let all = Property::all();
        assert_eq!(all.len(), 5 + 14 + 6);
        for p in &all {
            assert_eq!(Property::from_name(&p.name()), Some(*p));
        }
        assert_eq!(Property::from_name("eventprioritylogin"), None);
    }
}
