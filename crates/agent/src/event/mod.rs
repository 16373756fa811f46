//! The event model and the security message (SPEC §3, §4). Pure: no IO. (One exception:
//! `Event::new` / `Timestamp::local` ask the system time zone, through `chrono::Local`, for the
//! local offset; `Event::with_offset` does not.)
//!
//! - `name`: the fourteen event names and their fixed attributes.
//! - `payload`: one struct per per-event schema, and `PayloadItem` over them.
//! - `timestamp`: an event's instant and its RFC 3339 forms.
//! - `message`: one event (`Event`): envelope, JSON, splitting to a size.
//! - `frame`: the message envelope around serialized events (`MessageFrame`).
mod frame;
mod message;
mod name;
mod payload;
mod timestamp;

pub use frame::{MessageFrame, MESSAGE_SCHEMA_VERSION};
pub use message::{Event, EventError, SplitOutcome, PAYLOAD_SCHEMA_VERSION};
pub use name::{Category, EventName, EventType, Priority};
pub use payload::{
    BaselineResult, BaselineSeverity, ConfigurationError, ConfigurationErrorType, ConnectedHardware,
    ConnectionCreate, Diagnostic, DiagnosticSeverity, Direction, DroppedEventsStatistics, EventPayload,
    ExtraDetails, FirewallAction, FirewallConfiguration, ListeningPorts, LocalUsers, Login, LoginResult,
    MessageStatistics, OSBaseline, PayloadItem, ProcessCreate, ProcessTerminate, Protocol, Queue,
    SystemInformation,
};
pub use timestamp::Timestamp;
