//! The fourteen event names of the security-message model, with their fixed attributes
//! (category, EventType, snapshot flag, default priority) as SPEC §3 tabulates them.

use std::fmt;

/// How urgently an event is sent, or `Off` when its collector does not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Not collected at all.
    Off,
    /// Sent within `lowPriorityMessageFrequency`.
    Low,
    /// Sent within `highPriorityMessageFrequency`.
    High,
}

impl Priority {
    /// All values, in the spelling the twin uses.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Low, Priority::Off];

    /// The exact (case-sensitive) twin spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Off => "Off",
            Priority::Low => "Low",
            Priority::High => "High",
        }
    }

    /// Parses the exact twin spelling; anything else (including other casings) is `None`.
    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Category` of an event: triggered by something happening, or a periodic snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// Emitted when something happens.
    Triggered,
    /// Emitted on a schedule.
    Periodic,
}

impl Category {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Triggered => "Triggered",
            Category::Periodic => "Periodic",
        }
    }
}

/// `EventType` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something about the device's security.
    Security,
    /// Something about the agent's own operation.
    Operational,
    /// The agent's own log.
    Diagnostic,
}

impl EventType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Security => "Security",
            EventType::Operational => "Operational",
            EventType::Diagnostic => "Diagnostic",
        }
    }
}

/// One of the fourteen event names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventName {
    Diagnostic,
    ConfigurationError,
    DroppedEventsStatistics,
    MessageStatistics,
    ConnectedHardware,
    ListeningPorts,
    ProcessCreate,
    ProcessTerminate,
    SystemInformation,
    LocalUsers,
    Login,
    ConnectionCreate,
    FirewallConfiguration,
    OSBaseline,
}

impl EventName {
    /// Every name, in the order of SPEC §3.
    pub const ALL: [EventName; 14] = [
        EventName::Diagnostic,
        EventName::ConfigurationError,
        EventName::DroppedEventsStatistics,
        EventName::MessageStatistics,
        EventName::ConnectedHardware,
        EventName::ListeningPorts,
        EventName::ProcessCreate,
        EventName::ProcessTerminate,
        EventName::SystemInformation,
        EventName::LocalUsers,
        EventName::Login,
        EventName::ConnectionCreate,
        EventName::FirewallConfiguration,
        EventName::OSBaseline,
    ];

    /// The six Security snapshot collectors that `collect --all` runs.
    pub const SECURITY_SNAPSHOTS: [EventName; 6] = [
        EventName::SystemInformation,
        EventName::LocalUsers,
        EventName::ListeningPorts,
        EventName::ConnectedHardware,
        EventName::FirewallConfiguration,
        EventName::OSBaseline,
    ];

    /// The wire name (also the suffix of `eventPriority{Name}`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::Diagnostic => "Diagnostic",
            EventName::ConfigurationError => "ConfigurationError",
            EventName::DroppedEventsStatistics => "DroppedEventsStatistics",
            EventName::MessageStatistics => "MessageStatistics",
            EventName::ConnectedHardware => "ConnectedHardware",
            EventName::ListeningPorts => "ListeningPorts",
            EventName::ProcessCreate => "ProcessCreate",
            EventName::ProcessTerminate => "ProcessTerminate",
            EventName::SystemInformation => "SystemInformation",
            EventName::LocalUsers => "LocalUsers",
            EventName::Login => "Login",
            EventName::ConnectionCreate => "ConnectionCreate",
            EventName::FirewallConfiguration => "FirewallConfiguration",
            EventName::OSBaseline => "OSBaseline",
        }
    }

    /// Parses an exact wire name.
    pub fn parse(s: &str) -> Option<EventName> {
        EventName::ALL.into_iter().find(|n| n.as_str() == s)
    }

    /// Triggered or Periodic.
    pub fn category(self) -> Category {
        if self.is_snapshot() {
            Category::Periodic
        } else {
            Category::Triggered
        }
    }

    /// Whether the event is a snapshot taken every `snapshotFrequency`.
    pub fn is_snapshot(self) -> bool {
        !matches!(
            self,
            EventName::Diagnostic
                | EventName::ConfigurationError
                | EventName::ProcessCreate
                | EventName::ProcessTerminate
                | EventName::Login
                | EventName::ConnectionCreate
        )
    }

    /// Security, Operational or Diagnostic.
    pub fn event_type(self) -> EventType {
        match self {
            EventName::Diagnostic => EventType::Diagnostic,
            EventName::ConfigurationError
            | EventName::DroppedEventsStatistics
            | EventName::MessageStatistics => EventType::Operational,
            _ => EventType::Security,
        }
    }

    /// The priority when the twin does not set one (the seed document's table).
    pub fn default_priority(self) -> Priority {
        match self {
            EventName::Diagnostic => Priority::Off,
            EventName::ListeningPorts | EventName::LocalUsers | EventName::Login => Priority::High,
            _ => Priority::Low,
        }
    }

    /// Whether the twin has `aggregationEnabled{Name}` / `aggregationInterval{Name}` for it.
    pub fn is_aggregatable(self) -> bool {
        matches!(
            self,
            EventName::ProcessCreate | EventName::ProcessTerminate | EventName::ConnectionCreate
        )
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_attributes_match_the_seed_table() {
        for n in EventName::ALL {
            assert_eq!(EventName::parse(n.as_str()), Some(n));
        }
        let high: Vec<_> = EventName::ALL
            .into_iter()
            .filter(|n| n.default_priority() == Priority::High)
            .collect();
        assert_eq!(
            high,
            [EventName::ListeningPorts, EventName::LocalUsers, EventName::Login]
        );
        let snapshots = EventName::ALL.into_iter().filter(|n| n.is_snapshot()).count();
        assert_eq!(snapshots, 8);
        assert_eq!(Priority::parse("high"), None);
    }
}
