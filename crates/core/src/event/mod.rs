//! The event model and the security message (SPEC §3, §4). Pure: no IO, no clock, no random
//! ids: an event's `Id` and time are parameters (the agent's `stamp` module draws v4 ids and
//! asks the system time zone for the local offset).
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
/// Event ids (`Id`), so users of the model need no `uuid` dependency of their own.
pub use uuid::Uuid;
