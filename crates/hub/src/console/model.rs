//! The one place the console names the shared model (`twinguard_core`'s `event` and
//! `config`): everything else in `console` imports from here, so a change of where
//! that model lives changes this file only.

pub use twinguard_core::config::{IsoDuration, CONFIG_KEY};
pub use twinguard_core::event::{
    BaselineResult, BaselineSeverity, ConfigurationError, ConfigurationErrorType, ConnectionCreate,
    Direction, DroppedEventsStatistics, Event, EventName, ExtraDetails, FirewallAction,
    FirewallConfiguration, ListeningPorts, LocalUsers, Login, LoginResult, OSBaseline, PayloadItem,
    ProcessCreate, Protocol, Queue, Timestamp, Uuid,
};

/// `ms` (Unix milliseconds) as RFC 3339 UTC text, `""` when out of range.
pub fn utc_text(ms: i64) -> String {
    Timestamp::from_parts(ms, 0)
        .map(|t| t.utc_rfc3339())
        .unwrap_or_default()
}
