//! Payload items: one struct per per-event schema of security message v1.0
//! (`messageEvent*_v1_0.json`, `messageOperationalEvent*_v1_0.json`), named after the event
//! whose `Payload` array holds it.
//!
//! Field names are the schemas' exact spellings (note `OsArchitecture` beside `OSName`,
//! `CceId`, `MessagesUnder4KB`, `...InKB`). A field the schema requires is a plain type and
//! always written; an optional one is an `Option` and left out when `None`. `ExtraDetails`, the
//! schemas' string->string map, is left out when empty. Every schema says
//! `additionalProperties: false`, so nothing else may appear: extras go in `ExtraDetails`.
//!
//! Where the schema is looser than the domain, the type is narrower on purpose: IP addresses
//! are `IpAddr` (the schema's `ip` is a oneOf of the `ipv4` / `ipv6` formats, so any other text
//! is invalid; `Display` writes IPv6 compressed and never with a `%scope`), and the `Protocol`
//! of a socket is TCP or UDP (SPEC §3). Ports stay strings, as in the schema, because firewall
//! rules use ranges and lists (`"53248-53250"`, `"22,53"`, `"*"`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::name::EventName;

/// The `ExtraDetails` map: extra facts beyond the schema's fields, keys in UpperCamelCase.
pub type ExtraDetails = BTreeMap<String, String>;

/// A payload struct of one event name.
pub trait EventPayload: Serialize + Into<PayloadItem> {
    /// The event whose `Payload` holds items of this type.
    const NAME: EventName;
}

/// Declares a string enum whose variants are written exactly as named (the schema spelling).
macro_rules! wire_enum {
    ($(#[$meta:meta])* $ty:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $ty {
            $($(#[$vmeta])* $variant,)+
        }

        impl $ty {
            /// Every value, in the schema's order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => stringify!($variant),)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Which way a connection or a firewall rule goes (`messageEventTypeDefinitions#/direction`).
    Direction {
        /// Toward the device.
        In,
        /// Away from the device.
        Out,
    }
}

wire_enum! {
    /// `Action` of a firewall rule. `Other` (a jump, a log, a queue ...) says what it does in
    /// `ExtraDetails`.
    FirewallAction {
        /// Accepts the packet.
        Allow,
        /// Drops or rejects the packet.
        Deny,
        /// Anything else.
        Other,
    }
}

wire_enum! {
    /// `Result` of a login attempt.
    LoginResult {
        /// The attempt failed.
        Fail,
        /// The attempt succeeded.
        Success,
    }
}

wire_enum! {
    /// `Result` of an OS baseline check.
    BaselineResult {
        /// The system complies.
        Pass,
        /// The system does not comply.
        Fail,
        /// The check could not run; `Error` says why.
        Err,
    }
}

wire_enum! {
    /// `Severity` of an OS baseline check.
    BaselineSeverity {
        /// Must be fixed.
        Critical,
        /// Should be fixed.
        Important,
        /// Worth a look.
        Warning,
        /// For information.
        Informational,
    }
}

wire_enum! {
    /// `Severity` of a Diagnostic item.
    DiagnosticSeverity {
        /// The agent cannot go on.
        Fatal,
        /// Something failed.
        Error,
        /// Something is wrong but the agent copes.
        Warning,
        /// For information.
        Information,
        /// For developers.
        Debug,
    }
}

impl DiagnosticSeverity {
    /// Maps a log level name, in any case, to a severity: `fatal`/`critical` -> Fatal,
    /// `error`/`err` -> Error, `warn`/`warning` -> Warning, `info`/`information`/`notice` ->
    /// Information, `debug`/`trace` -> Debug (the schema has no finer level than Debug).
    /// Covers the names `tracing` and syslog print; anything else is `None`.
    pub fn from_level(level: &str) -> Option<DiagnosticSeverity> {
        let level = level.trim().to_ascii_lowercase();
        Some(match level.as_str() {
            "fatal" | "critical" | "crit" | "emerg" | "alert" => DiagnosticSeverity::Fatal,
            "error" | "err" => DiagnosticSeverity::Error,
            "warn" | "warning" => DiagnosticSeverity::Warning,
            "info" | "information" | "notice" => DiagnosticSeverity::Information,
            "debug" | "trace" => DiagnosticSeverity::Debug,
            _ => return None,
        })
    }
}

wire_enum! {
    /// `ErrorType` of a ConfigurationError item.
    ConfigurationErrorType {
        /// The value has the wrong type or is out of range; it was not applied.
        TypeMismatch,
        /// The value is valid but probably not what the operator wants.
        NotOptimal,
        /// Two valid values contradict each other.
        Conflict,
    }
}

wire_enum! {
    /// `Queue` of a DroppedEventsStatistics item: the priority queue counted.
    Queue {
        /// The High priority queue.
        High,
        /// The Low priority queue.
        Low,
    }
}

/// `Protocol` of a socket (ListeningPorts, ConnectionCreate): `"TCP"` or `"UDP"` (SPEC §3).
///
/// The schema's `protocol` is any string; firewall rules, which name other protocols, keep a
/// `String`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `ConnectedHardware` item: a device attached to the machine. All three fields required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ConnectedHardware {
    /// `HardwareCategory`, e.g. `"USB"`, `"Network"`.
    pub hardware_category: String,
    /// `HardwareSubCategory`, e.g. `"Keyboard"`.
    pub hardware_sub_category: String,
    /// `HardwareName`, e.g. `"Intel Corporation I210 Gigabit Network Connection"`.
    pub hardware_name: String,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `ConnectionCreate` item: a TCP connection made to or from the device.
/// Required: RemoteAddress, RemotePort, Direction, Protocol, ProcessId, Executable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ConnectionCreate {
    /// `RemoteAddress`.
    #[serde(with = "ip")]
    pub remote_address: IpAddr,
    /// `RemotePort`, decimal.
    pub remote_port: String,
    /// `LocalAddress`.
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub local_address: Option<IpAddr>,
    /// `LocalPort`, decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<String>,
    /// `Direction`: `In` for an accepted connection, `Out` for a connect.
    pub direction: Direction,
    /// `Protocol`.
    pub protocol: Protocol,
    /// `ProcessId` of the process that made or accepted the connection.
    pub process_id: u32,
    /// `UserId` the process runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `Executable`: full path.
    pub executable: String,
    /// `CommandLine`: the executable and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `FirewallConfiguration` item: a rule (chain policies count as rules).
/// Required: Enabled, Action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FirewallConfiguration {
    /// `Priority` of the rule (position or chain priority; may be negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// `Direction`: only for input/output hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// `ChainName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_name: Option<String>,
    /// `Application` the rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// `Enabled`.
    pub enabled: bool,
    /// `Action`.
    pub action: FirewallAction,
    /// `SourceAddress`: an address, a prefix, a range or a tag (`iptag`, free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// `SourcePort`: a port, a range `a-b`, a list `a,b` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<String>,
    /// `DestinationAddress`, like `SourceAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_address: Option<String>,
    /// `DestinationPort`, like `SourcePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<String>,
    /// `Protocol`: any name (`"TCP"`, `"ICMP"` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `ListeningPorts` item: a listening TCP socket or a bound UDP socket.
/// Required: LocalPort, Protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ListeningPorts {
    /// `RemoteAddress` (a bound UDP socket may be connected).
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<IpAddr>,
    /// `RemotePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<String>,
    /// `LocalAddress`.
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub local_address: Option<IpAddr>,
    /// `LocalPort`, decimal.
    pub local_port: String,
    /// `Protocol`.
    pub protocol: Protocol,
    /// `ExtraDetails` (`Pid`, `Executable` of the owner).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `LocalUsers` item: a local account. All four fields required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LocalUsers {
    /// `GroupIds`: `;`-separated.
    pub group_ids: String,
    /// `GroupNames`: `;`-separated, in the order of `GroupIds`.
    pub group_names: String,
    /// `UserId`.
    pub user_id: String,
    /// `UserName`.
    pub user_name: String,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `Login` item: a login or authentication attempt.
/// Required: ProcessId, Operation, Executable, Result, and UserId or UserName (anyOf).
///
/// `UserName` is always written (`""` when unknown) so that the schema's
/// `anyOf [required UserId, required UserName]` holds by construction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Login {
    /// `ProcessId` of the process that handled the attempt.
    pub process_id: u32,
    /// `UserId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `UserName`.
    #[serde(default)]
    pub user_name: String,
    /// `Operation`: `"login"`, `"authentication"`, `"wtmp"`, `"btmp"`.
    pub operation: String,
    /// `Executable` that handled the attempt.
    pub executable: String,
    /// `RemoteAddress` the attempt came from.
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<IpAddr>,
    /// `RemotePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<String>,
    /// `LocalPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<String>,
    /// `Result`.
    pub result: LoginResult,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `OSBaseline` item: the outcome of one hardening check. All five fields required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct OSBaseline {
    /// `Description` of the check.
    pub description: String,
    /// `CceId`: the CCE id, or our stable check id where none exists.
    pub cce_id: String,
    /// `Result`.
    pub result: BaselineResult,
    /// `Error`: `""` unless `result` is `Err`.
    pub error: String,
    /// `Severity`.
    pub severity: BaselineSeverity,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `ProcessCreate` item: a process executed.
/// Required: Executable, ProcessId, ParentProcessId, UserId, CommandLine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ProcessCreate {
    /// `Executable`: full path.
    pub executable: String,
    /// `ProcessId`.
    pub process_id: u32,
    /// `ParentProcessId`.
    pub parent_process_id: u32,
    /// `UserId` the process runs as.
    pub user_id: String,
    /// `UserName` of `UserId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// `CommandLine`: arguments joined with spaces.
    pub command_line: String,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `ProcessTerminate` item: a process exited. All three fields required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ProcessTerminate {
    /// `Executable`: full path.
    pub executable: String,
    /// `ProcessId`.
    pub process_id: u32,
    /// `ExitStatus`: the exit code, or 128 + the signal number when killed by a signal.
    pub exit_status: i32,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `SystemInformation` item. The schema requires none of its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemInformation {
    /// `OSName`.
    #[serde(rename = "OSName", default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// `OSVersion`.
    #[serde(rename = "OSVersion", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// `OSVendor`.
    #[serde(rename = "OSVendor", default, skip_serializing_if = "Option::is_none")]
    pub os_vendor: Option<String>,
    /// `OsArchitecture` (sic: not `OSArchitecture`).
    #[serde(rename = "OsArchitecture", default, skip_serializing_if = "Option::is_none")]
    pub os_architecture: Option<String>,
    /// `HostName`.
    #[serde(rename = "HostName", default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// `BIOSVersion`.
    #[serde(rename = "BIOSVersion", default, skip_serializing_if = "Option::is_none")]
    pub bios_version: Option<String>,
    /// `BootDevice`.
    #[serde(rename = "BootDevice", default, skip_serializing_if = "Option::is_none")]
    pub boot_device: Option<String>,
    /// `TotalPhysicalMemoryInKB`.
    #[serde(
        rename = "TotalPhysicalMemoryInKB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub total_physical_memory_in_kb: Option<u64>,
    /// `FreePhysicalMemoryInKB`.
    #[serde(
        rename = "FreePhysicalMemoryInKB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub free_physical_memory_in_kb: Option<u64>,
    /// `TotalVirtualMemoryInKB`.
    #[serde(
        rename = "TotalVirtualMemoryInKB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub total_virtual_memory_in_kb: Option<u64>,
    /// `FreeVirtualMemoryInKB`.
    #[serde(
        rename = "FreeVirtualMemoryInKB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub free_virtual_memory_in_kb: Option<u64>,
    /// `ExtraDetails`.
    #[serde(rename = "ExtraDetails", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `Diagnostic` item: a warning or error of the agent itself.
/// Required: Severity, Message, ProcessId, ThreadId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Diagnostic {
    /// `CorrelationId`: ties related diagnostics together.
    #[serde(default, with = "opt_uuid", skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// `Severity`.
    pub severity: DiagnosticSeverity,
    /// `Message`.
    pub message: String,
    /// `ProcessId` of the agent.
    pub process_id: u32,
    /// `ThreadId` (kernel thread id) that reported it.
    pub thread_id: u32,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `ConfigurationError` item: a rejected configuration value, or an advisory about a valid
/// one. All four fields required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ConfigurationError {
    /// `ConfigurationName`: the property name, `""` for a document-level problem.
    pub configuration_name: String,
    /// `ErrorType`.
    pub error_type: ConfigurationErrorType,
    /// `UsedConfiguration`: the JSON text of the value in force.
    pub used_configuration: String,
    /// `Message`: what was expected and what was found.
    pub message: String,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `DroppedEventsStatistics` item: one queue's counts for the period. All three fields
/// required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DroppedEventsStatistics {
    /// `Queue`.
    pub queue: Queue,
    /// `CollectedEvents` queued in the period.
    pub collected_events: u64,
    /// `DroppedEvents` evicted or refused in the period.
    pub dropped_events: u64,
    /// `ExtraDetails`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

/// One `MessageStatistics` item: sending counts for the period. All three fields required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageStatistics {
    /// `MessagesSent`.
    #[serde(rename = "MessagesSent")]
    pub messages_sent: u64,
    /// `MessagesUnder4KB`: sent messages smaller than 4 KB (IoT Hub's billing unit).
    #[serde(rename = "MessagesUnder4KB")]
    pub messages_under_4kb: u64,
    /// `TotalFailed`: failed send attempts (a retried send counts each failure).
    #[serde(rename = "TotalFailed")]
    pub total_failed: u64,
    /// `ExtraDetails`.
    #[serde(rename = "ExtraDetails", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_details: ExtraDetails,
}

impl ConfigurationError {
    /// An item with no `ExtraDetails`.
    pub fn new(
        configuration_name: impl Into<String>,
        error_type: ConfigurationErrorType,
        used_configuration: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigurationError {
        ConfigurationError {
            configuration_name: configuration_name.into(),
            error_type,
            used_configuration: used_configuration.into(),
            message: message.into(),
            extra_details: ExtraDetails::new(),
        }
    }
}

impl DroppedEventsStatistics {
    /// An item with no `ExtraDetails`.
    pub fn new(queue: Queue, collected_events: u64, dropped_events: u64) -> Self {
        DroppedEventsStatistics {
            queue,
            collected_events,
            dropped_events,
            extra_details: ExtraDetails::new(),
        }
    }
}

impl MessageStatistics {
    /// An item with no `ExtraDetails`.
    pub fn new(messages_sent: u64, messages_under_4kb: u64, total_failed: u64) -> Self {
        MessageStatistics {
            messages_sent,
            messages_under_4kb,
            total_failed,
            extra_details: ExtraDetails::new(),
        }
    }
}

impl Diagnostic {
    /// An item with no correlation id and no `ExtraDetails`. The ids are passed in (the caller
    /// knows its process and thread; this module does no system calls).
    pub fn new(
        severity: DiagnosticSeverity,
        message: impl Into<String>,
        process_id: u32,
        thread_id: u32,
    ) -> Diagnostic {
        Diagnostic {
            correlation_id: None,
            severity,
            message: message.into(),
            process_id,
            thread_id,
            extra_details: ExtraDetails::new(),
        }
    }
}

/// Declares `PayloadItem` over the payload structs, each named like its `EventName` variant.
macro_rules! payload_items {
    ($($name:ident),+ $(,)?) => {
        /// One item of an event's `Payload`, of any event name. Serializes as the inner struct.
        ///
        /// There is no `Deserialize`: the JSON of an item does not say which event it belongs
        /// to (a `SystemInformation` item with no fields is `{}`), so reading one needs the
        /// event name: [`PayloadItem::from_value`].
        #[derive(Clone, Debug, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum PayloadItem {
            $(
                #[doc = concat!("An item of a `", stringify!($name), "` event.")]
                $name($name),
            )+
        }

        impl PayloadItem {
            /// The event this item belongs in.
            pub fn name(&self) -> EventName {
                match self {
                    $(PayloadItem::$name(_) => EventName::$name,)+
                }
            }

            /// Reads an item of the event `name` from its JSON, rejecting unknown fields.
            pub fn from_value(
                name: EventName,
                value: serde_json::Value,
            ) -> Result<PayloadItem, serde_json::Error> {
                match name {
                    $(EventName::$name => serde_json::from_value::<$name>(value).map(Into::into),)+
                }
            }

            /// The item's `ExtraDetails`.
            pub fn extra_details(&self) -> &ExtraDetails {
                match self {
                    $(PayloadItem::$name(item) => &item.extra_details,)+
                }
            }

            /// The item's `ExtraDetails`, to add to (aggregation's `HitCount`, `Missing` ...).
            pub fn extra_details_mut(&mut self) -> &mut ExtraDetails {
                match self {
                    $(PayloadItem::$name(item) => &mut item.extra_details,)+
                }
            }
        }

        $(
            impl EventPayload for $name {
                const NAME: EventName = EventName::$name;
            }

            impl From<$name> for PayloadItem {
                fn from(item: $name) -> PayloadItem {
                    PayloadItem::$name(item)
                }
            }

            impl $name {
                /// Adds one `ExtraDetails` entry (replacing an earlier value of that key).
                pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
                    self.extra_details.insert(key.into(), value.into());
                    self
                }
            }
        )+
    };
}

payload_items!(
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
);

/// An `IpAddr` as its text (`Display`: IPv4 dotted, IPv6 compressed).
mod ip {
    use std::net::IpAddr;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("not an IP address: {text:?}")))
    }
}

/// An optional `IpAddr` as its text.
mod opt_ip {
    use std::net::IpAddr;

    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => super::ip::serialize(ip, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        super::ip::deserialize(d).map(Some)
    }
}

/// An optional `Uuid` as its hyphenated lower-case text (uuid is built without serde).
mod opt_uuid {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub(super) fn serialize<S: Serializer>(id: &Option<Uuid>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer())),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
        let text = String::deserialize(d)?;
        // The schema's guid is exactly 36 characters: the hyphenated form only.
        if text.len() != 36 {
            return Err(D::Error::custom(format!("not a hyphenated UUID: {text:?}")));
        }
        Uuid::parse_str(&text)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("not a UUID: {text:?}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(item: &PayloadItem) -> Vec<String> {
        match serde_json::to_value(item).unwrap() {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn system_information_uses_the_schema_casing() {
        let item = SystemInformation {
            os_name: Some("Debian GNU/Linux".into()),
            os_version: Some("12".into()),
            os_vendor: Some("Debian".into()),
            os_architecture: Some("aarch64".into()),
            host_name: Some("gw-7".into()),
            bios_version: Some("1.2".into()),
            boot_device: Some("/dev/mmcblk0p2".into()),
            total_physical_memory_in_kb: Some(1),
            free_physical_memory_in_kb: Some(2),
            total_virtual_memory_in_kb: Some(3),
            free_virtual_memory_in_kb: Some(4),
            extra_details: ExtraDetails::new(),
        }
        .with_extra("Kernel", "6.1.0");
        let mut got = keys(&item.into());
        got.sort();
        let mut want = [
            "OSName",
            "OSVersion",
            "OSVendor",
            "OsArchitecture",
            "HostName",
            "BIOSVersion",
            "BootDevice",
            "TotalPhysicalMemoryInKB",
            "FreePhysicalMemoryInKB",
            "TotalVirtualMemoryInKB",
            "FreeVirtualMemoryInKB",
            "ExtraDetails",
        ];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(keys(&SystemInformation::default().into()), Vec::<String>::new());
    }

    #[test]
    fn optional_fields_and_empty_extra_details_are_left_out() {
        let item = ListeningPorts {
            remote_address: None,
            remote_port: None,
            local_address: Some("fe80::1".parse().unwrap()),
            local_port: "22".into(),
            protocol: Protocol::Tcp,
            extra_details: ExtraDetails::new(),
        };
        assert_eq!(
            serde_json::to_value(PayloadItem::from(item)).unwrap(),
            json!({"LocalAddress": "fe80::1", "LocalPort": "22", "Protocol": "TCP"})
        );
    }

    #[test]
    fn statistics_items_use_the_schema_field_names() {
        let stats: PayloadItem = MessageStatistics::new(3, 2, 1).into();
        assert_eq!(
            serde_json::to_value(&stats).unwrap(),
            json!({"MessagesSent": 3, "MessagesUnder4KB": 2, "TotalFailed": 1})
        );
        let dropped: PayloadItem = DroppedEventsStatistics::new(Queue::High, 10, 1).into();
        assert_eq!(
            serde_json::to_value(&dropped).unwrap(),
            json!({"Queue": "High", "CollectedEvents": 10, "DroppedEvents": 1})
        );
        let conf: PayloadItem = ConfigurationError::new(
            "maxMessageSizeInBytes",
            ConfigurationErrorType::NotOptimal,
            "10000",
            "not a multiple of 4096",
        )
        .into();
        assert_eq!(
            serde_json::to_value(&conf).unwrap(),
            json!({"ConfigurationName": "maxMessageSizeInBytes", "ErrorType": "NotOptimal",
                   "UsedConfiguration": "10000", "Message": "not a multiple of 4096"})
        );
    }

    #[test]
    fn login_always_names_the_user_so_the_any_of_holds() {
        let login = Login {
            process_id: 812,
            user_id: None,
            user_name: String::new(),
            operation: "btmp".into(),
            executable: "/usr/sbin/sshd".into(),
            remote_address: Some("2001:db8::7".parse().unwrap()),
            remote_port: Some("50122".into()),
            local_port: None,
            result: LoginResult::Fail,
            extra_details: ExtraDetails::new(),
        };
        let v = serde_json::to_value(PayloadItem::from(login)).unwrap();
        assert_eq!(v["UserName"], "");
        assert_eq!(v["Result"], "Fail");
        assert_eq!(v["RemoteAddress"], "2001:db8::7");
    }

    #[test]
    fn items_read_back_by_event_name_and_reject_unknown_fields() {
        let item: PayloadItem = Diagnostic {
            correlation_id: Some(Uuid::from_u128(0x9c64_7395_b913_4997_a732_a7fe_7303_b649)),
            ..Diagnostic::new(DiagnosticSeverity::Warning, "audit socket busy", 1, 2)
        }
        .into();
        let v = serde_json::to_value(&item).unwrap();
        assert_eq!(v["CorrelationId"], "9c647395-b913-4997-a732-a7fe7303b649");
        assert_eq!(PayloadItem::from_value(EventName::Diagnostic, v).unwrap(), item);
        let bad = json!({"Severity": "Warning", "Message": "m", "ProcessId": 1, "ThreadId": 2,
                         "Extra": "x"});
        assert!(PayloadItem::from_value(EventName::Diagnostic, bad).is_err());
        let bad_ip = json!({"LocalPort": "22", "Protocol": "TCP", "LocalAddress": "fe80::1%eth0"});
        assert!(PayloadItem::from_value(EventName::ListeningPorts, bad_ip).is_err());
    }

    #[test]
    fn every_payload_struct_knows_its_event_name() {
        assert_eq!(<OSBaseline as EventPayload>::NAME, EventName::OSBaseline);
        let item: PayloadItem = ProcessTerminate {
            executable: "/bin/true".into(),
            process_id: 7,
            exit_status: 0,
            extra_details: ExtraDetails::new(),
        }
        .into();
        assert_eq!(item.name(), EventName::ProcessTerminate);
    }

    #[test]
    fn severity_maps_log_levels() {
        assert_eq!(
            DiagnosticSeverity::from_level("WARN"),
            Some(DiagnosticSeverity::Warning)
        );
        assert_eq!(
            DiagnosticSeverity::from_level("trace"),
            Some(DiagnosticSeverity::Debug)
        );
        assert_eq!(
            DiagnosticSeverity::from_level("ERROR"),
            Some(DiagnosticSeverity::Error)
        );
        assert_eq!(DiagnosticSeverity::from_level("loud"), None);
        assert_eq!(BaselineSeverity::ALL.len(), 4);
        assert_eq!(ConfigurationErrorType::Conflict.as_str(), "Conflict");
    }
}
