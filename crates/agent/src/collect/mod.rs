//! Collectors: one module per event source (SPEC §3). A collector produces payload items (a
//! snapshot) or events (a stream) and knows nothing of the cache, messages or transports.
//! Each reads the system only through `crate::sys`, whose parsers are pure.

pub mod audit;
pub mod connected_hardware;
pub mod connection;
pub mod firewall;
pub mod listening_ports;
pub mod local_users;
pub mod login;
pub mod os_baseline;
pub mod process;
mod stream;
pub mod system_information;
pub(crate) mod user_names;

pub use stream::{EventBatch, EventSink, StopSignal, StreamCollector};

use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{EventName, PayloadItem};

/// Why a collector could not produce its event. The event is then not sent at all (never
/// `IsEmpty: true` for a failure); the failure goes to the log, `reported.twinguard` and a
/// Diagnostic event.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The source is missing on this machine (no such file, tool, or kernel interface).
    #[error("{source_name} is unavailable: {why}")]
    Unavailable {
        /// The source (e.g. `/proc/net/tcp`, `nft`).
        source_name: String,
        /// Why.
        why: String,
    },
    /// Reading the source failed.
    #[error("{source_name}: {why}")]
    Failed {
        /// The source.
        source_name: String,
        /// Why.
        why: String,
    },
    /// Not a failure: a stream collector ends so that it starts again at once on a better
    /// source (audit came back after a fallback). The supervisor restarts it without a delay,
    /// reports its new status and records no error.
    #[error("{source_name}: {why}")]
    SourceChanged {
        /// The source being left.
        source_name: String,
        /// Why.
        why: String,
    },
    /// A source stopped working while in use (an eBPF program detached or failing its check):
    /// the collector has switched to its fallback and starts again at once on it. The
    /// supervisor reports a Diagnostic and the new status, and records no error.
    #[error("{source_name}: {why}")]
    Degraded {
        /// The source being left.
        source_name: String,
        /// What happened.
        why: String,
    },
}

/// A snapshot collector: called at start and every `snapshotFrequency`; returns the items of
/// one snapshot (an empty vector = nothing to report, sent as `IsEmpty: true`).
pub trait SnapshotCollector: Send {
    /// The event it produces.
    fn name(&self) -> EventName;

    /// Takes one snapshot.
    fn collect(&mut self) -> Result<Vec<PayloadItem>, CollectError>;

    /// What source it uses, whether that is a fallback, and notes for the operator.
    fn status(&self) -> CollectorStatus;
}

/// Records a snapshot's outcome in the collector's status (`last_error` set on failure,
/// cleared on success) and converts its items for the pipeline.
pub(crate) fn record_outcome<T: Into<PayloadItem>>(
    status: &mut CollectorStatus,
    result: Result<Vec<T>, CollectError>,
) -> Result<Vec<PayloadItem>, CollectError> {
    match result {
        Ok(items) => {
            status.last_error = None;
            Ok(items.into_iter().map(Into::into).collect())
        }
        Err(e) => {
            status.last_error = Some(e.to_string());
            Err(e)
        }
    }
}

/// The snapshot collector for `name`, if `name` is a Security snapshot that has one.
pub fn snapshot_collector(name: EventName) -> Option<Box<dyn SnapshotCollector>> {
    Some(match name {
        EventName::SystemInformation => Box::new(system_information::SystemInformationCollector::new()),
        EventName::LocalUsers => Box::new(local_users::LocalUsersCollector::new()),
        EventName::ListeningPorts => Box::new(listening_ports::ListeningPortsCollector::new()),
        EventName::ConnectedHardware => Box::new(connected_hardware::ConnectedHardwareCollector::new()),
        EventName::FirewallConfiguration => Box::new(firewall::FirewallConfigurationCollector::new()),
        EventName::OSBaseline => Box::new(os_baseline::OsBaselineCollector::new()),
        _ => return None,
    })
}

/// Every stream collector of this build (each runs only while one of its events is not Off).
/// `data_dir`, when given, keeps the Login fallback's wtmp/btmp checkpoint across restarts.
pub(crate) fn stream_collectors(data_dir: Option<&std::path::Path>) -> Vec<Box<dyn StreamCollector>> {
    vec![
        Box::new(process::ProcessCollector::new()),
        Box::new(connection::ConnectionCollector::new()),
        Box::new(login::LoginCollector::new(
            data_dir.map(|d| d.join("login.checkpoint")),
        )),
    ]
}
