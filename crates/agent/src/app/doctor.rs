//! `twinguard doctor`: tells an operator, in one report, whether the agent can do its job on
//! this device and why not: every event source (available / fallback / unavailable, and why),
//! the capabilities it has, the data directory (permissions, free space, cache state), the
//! configuration in force, and in MQTT / IoT Hub mode a connection test.
//!
//! The verdict: OK when the configuration is valid, the data directory usable, the endpoint
//! reachable (remote modes) and every event the configuration turns on has a working source
//! (a fallback counts as working). Events set to Off are probed and shown but not judged.
//!
//! Doctor probes with the same functions the agent uses and changes nothing on the machine
//! (see each submodule); run it as the agent's user, with the agent's capabilities, to see
//! what the agent sees.

mod remote;
mod sources;
mod storage;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use remote::ConnectionCheck;
pub use sources::{parse_cap_eff, Cap, Capabilities, SourceCheck, SourceState, CAPS};
pub use storage::{human_bytes, DataDirCheck};

use crate::collect::user_names::UserNames;
use crate::input::read_twin;
use crate::transport::settings::{ConnectionSettings, Mode, DEFAULT_SETTINGS_FILE};
use crate::transport::DesiredUpdate;
use twinguard_core::config::{validate_document, Config, Severity, Validation};
use twinguard_core::event::Priority;

/// What `twinguard doctor` examines.
#[derive(Clone, Debug, Default)]
pub struct DoctorOptions {
    /// The connection flags given on the command line (they win over the settings file).
    pub flags: ConnectionSettings,
    /// `--iothub-endpoint` (local hubs, tests).
    pub iothub_endpoint: Option<(String, u16)>,
    /// The settings file (`--settings`); default `/etc/twinguard/agent.toml` when it exists.
    pub settings: Option<PathBuf>,
    /// The data directory (`--data-dir`); default as `run`'s.
    pub data_dir: Option<PathBuf>,
    /// The twin file of local mode (`--twin`); without it the defaults are in force.
    pub twin: Option<PathBuf>,
}

/// Everything doctor found.
#[derive(Debug)]
pub struct Report {
    /// Who doctor runs as (`root (uid 0)`).
    pub user: String,
    /// The effective capabilities.
    pub capabilities: Capabilities,
    /// One row per event source.
    pub sources: Vec<SourceCheck>,
    /// The configuration section, one line per fact.
    pub config_lines: Vec<String>,
    /// The data directory section.
    pub data_dir: DataDirCheck,
    /// The connection test (remote modes).
    pub connection: Option<ConnectionCheck>,
    /// Everything that keeps the agent from doing its job; empty = OK.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether the agent can do its job (exit 0).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as text: sections, the table of sources, the verdict last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "twinguard doctor {} - running as {}\n",
            env!("CARGO_PKG_VERSION"),
            self.user
        );
        let _ = writeln!(out, "Event sources");
        let _ = writeln!(out, "  {:<22} {:<9} {:<12} SOURCE", "EVENT", "PRIORITY", "STATE");
        for row in &self.sources {
            let _ = writeln!(
                out,
                "  {:<22} {:<9} {:<12} {}",
                row.event.as_str(),
                row.priority.as_str(),
                row.state.as_str(),
                if row.via.is_empty() { "-" } else { &row.via }
            );
            if !row.why.is_empty() {
                let _ = writeln!(out, "      why: {}", row.why);
            }
        }
        let _ = writeln!(out, "\nCapabilities (effective)");
        for cap in CAPS {
            let have = if self.capabilities.has(cap) { "yes" } else { "no" };
            let _ = writeln!(out, "  {:<20} {:<4} {}", cap.name, have, cap.used_for);
        }
        let _ = writeln!(out, "\nData directory {}", self.data_dir.path.display());
        for line in &self.data_dir.lines {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "\nConfiguration");
        for line in &self.config_lines {
            let _ = writeln!(out, "  {line}");
        }
        if let Some(c) = &self.connection {
            let _ = writeln!(out, "\nConnection test {}", c.endpoint);
            for line in &c.lines {
                let _ = writeln!(out, "  {line}");
            }
        }
        if self.is_ok() {
            let _ = writeln!(out, "\nVerdict: OK - the agent can do its job here");
        } else {
            let _ = writeln!(out, "\nVerdict: NOT OK - {} problem(s):", self.problems.len());
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        out
    }
}

fn current_user() -> String {
    let uid = twinguard_os::euid();
    let name = UserNames::default()
        .name(uid)
        .unwrap_or_else(|| "an unnamed user".into());
    format!("{name} (uid {uid})")
}

/// The configuration of a validation, or its errors as problems.
fn judge_validation(
    validation: Validation,
    origin: &str,
    consequence: &str,
    lines: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Option<Config> {
    for p in &validation.problems {
        lines.push(format!("{origin}: {}: {p}", p.severity.as_str()));
    }
    let warnings = validation
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .count();
    match validation.config {
        Some(config) => {
            lines.push(format!("{origin}: valid ({warnings} warning(s))"));
            Some(config)
        }
        None => {
            problems.push(format!(
                "configuration: {origin} is invalid ({} error(s)): {consequence}",
                validation.errors().count()
            ));
            None
        }
    }
}

/// The local-mode configuration: the twin file's, or the defaults.
fn local_config(twin: Option<&Path>, lines: &mut Vec<String>, problems: &mut Vec<String>) -> Config {
    let Some(path) = twin else {
        lines.push("twin: none given (--twin FILE): the defaults are in force".into());
        return Config::default();
    };
    let origin = format!("twin {}", path.display());
    if !path.exists() {
        lines.push(format!(
            "{origin}: does not exist yet: the defaults are in force until it is created"
        ));
        return Config::default();
    }
    match read_twin(path) {
        Ok(doc) => judge_validation(
            validate_document(&doc),
            &origin,
            "the agent would not start (exit 78)",
            lines,
            problems,
        )
        .unwrap_or_default(),
        Err(e) => {
            problems.push(format!(
                "configuration: {origin}: {e}: the agent would not start (exit 78)"
            ));
            Config::default()
        }
    }
}

/// The remote-mode configuration: the desired document the test read, or the defaults.
fn remote_config(
    desired: Option<&DesiredUpdate>,
    lines: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Config {
    let consequence = "the agent would stay connected and collect nothing until a valid one arrives";
    match desired {
        None => {
            lines.push(
                "desired configuration: not read (see the connection test): shown with the defaults".into(),
            );
            Config::default()
        }
        Some(update) => {
            if *update == DesiredUpdate::Cleared {
                lines.push("desired configuration: none: the defaults are in force".into());
            }
            match update.validate() {
                Ok(validation) => {
                    judge_validation(validation, "desired", consequence, lines, problems).unwrap_or_default()
                }
                Err(why) => {
                    problems.push(format!(
                        "configuration: the desired document cannot be read ({why}): {consequence}"
                    ));
                    Config::default()
                }
            }
        }
    }
}

/// Examines this machine as `twinguard run` with the same options would find it.
pub fn examine(opts: &DoctorOptions) -> Report {
    let mut problems = Vec::new();
    let mut config_lines = Vec::new();

    let settings_origin = match &opts.settings {
        Some(p) => p.display().to_string(),
        None if Path::new(DEFAULT_SETTINGS_FILE).exists() => DEFAULT_SETTINGS_FILE.to_owned(),
        None => format!("none ({DEFAULT_SETTINGS_FILE} does not exist)"),
    };
    config_lines.push(format!("settings file: {settings_origin}"));
    let mode = match opts
        .flags
        .clone()
        .resolve(opts.settings.as_deref())
        .and_then(|s| s.mode())
    {
        Ok(mode) => mode,
        Err(e) => {
            problems.push(format!("settings: {e} (twinguard run would refuse to start)"));
            Mode::Local
        }
    };
    let data_dir = match opts
        .data_dir
        .clone()
        .map(Ok)
        .unwrap_or_else(crate::app::default_data_dir)
    {
        Ok(dir) => crate::app::absolute(&dir),
        Err(e) => {
            problems.push(format!("data directory: {e}"));
            std::path::PathBuf::from("/nonexistent")
        }
    };

    let mut connection = None;
    let (config, storage) = match &mode {
        Mode::Local => {
            config_lines.push("mode: local (twin file -> outbox file)".into());
            let config = local_config(opts.twin.as_deref(), &mut config_lines, &mut problems);
            let storage = storage::examine_data_dir(&data_dir, config.max_local_cache_size_in_bytes);
            (config, storage)
        }
        Mode::Mqtt(_) | Mode::IotHub(_) => {
            if opts.twin.is_some() {
                problems.push(
                    "configuration: --twin is a local-mode flag; with MQTT or IoT Hub the twin comes from the broker or hub"
                        .into(),
                );
            }
            let storage =
                storage::examine_data_dir(&data_dir, Config::default().max_local_cache_size_in_bytes);
            let check = match &mode {
                Mode::Mqtt(options) => {
                    config_lines.push(format!(
                        "mode: MQTT, broker {}, device {:?}, topics under {}",
                        options.broker, options.device_id, options.prefix
                    ));
                    remote::test_mqtt(options, storage.held_by.as_deref())
                }
                Mode::IotHub(options) => {
                    let mut options = options.clone();
                    if let Some(endpoint) = &opts.iothub_endpoint {
                        options.endpoint = Some(endpoint.clone());
                    }
                    let options = &options;
                    config_lines.push(format!(
                        "mode: IoT Hub, connection string {}",
                        options.connection_string_file.display()
                    ));
                    remote::test_iothub(options, storage.held_by.as_deref())
                }
                Mode::Local => ConnectionCheck::default(),
            };
            problems.extend(check.problems.iter().map(|p| format!("connection: {p}")));
            let config = remote_config(check.desired.as_ref(), &mut config_lines, &mut problems);
            connection = Some(check);
            (config, storage)
        }
    };
    config_lines.push(format!(
        "in force: snapshotFrequency {}, highPriorityMessageFrequency {}, lowPriorityMessageFrequency {}, maxLocalCacheSizeInBytes {}, maxMessageSizeInBytes {}",
        config.snapshot_frequency,
        config.high_priority_message_frequency,
        config.low_priority_message_frequency,
        config.max_local_cache_size_in_bytes,
        config.max_message_size_in_bytes
    ));
    problems.extend(storage.problems.iter().map(|p| format!("data directory: {p}")));

    let capabilities = Capabilities::current();
    let sources = sources::examine_sources(|name| config.priority(name), capabilities);
    for row in &sources {
        if row.state == SourceState::Unavailable && row.priority != Priority::Off {
            problems.push(format!(
                "{}: unavailable: {} (or set eventPriority{} to Off)",
                row.event, row.why, row.event
            ));
        }
    }
    Report {
        user: current_user(),
        capabilities,
        sources,
        config_lines,
        data_dir: storage,
        connection,
        problems,
    }
}
