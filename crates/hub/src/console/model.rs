//! The one place the console names the shared model (the agent's `event` and `config`
//! modules, moving to `twinguard-core`): everything else in `console` imports from here, so a move of that
//! model changes this file only.

pub use twinguard::config::{IsoDuration, CONFIG_KEY};
pub use twinguard::event::{
    BaselineResult, BaselineSeverity, ConfigurationErrorType, Event, EventName, FirewallAction, LoginResult,
    PayloadItem, Protocol, Timestamp,
};

/// `ms` (Unix milliseconds) as RFC 3339 UTC text, `""` when out of range.
pub fn utc_text(ms: i64) -> String {
    Timestamp::from_parts(ms, 0)
        .map(|t| t.utc_rfc3339())
        .unwrap_or_default()
}
