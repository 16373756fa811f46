//! The `twinguard` binary: parses the command line, runs the command, maps the outcome to an
//! exit code (SPEC §8). Output functions are the only place that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use twinguard::input::{display_name, read_twin};
use twinguard_core::config::{json_schema, validate_document, Config, Severity, Validation};

use cli::{Cli, CollectArgs, Command, ConfigCommand, RunArgs};
use twinguard::app::doctor::{examine, DoctorOptions};
use twinguard::app::{run_iothub, run_mqtt};
use twinguard::app::{run_local, LocalOptions, RunError, Synthetic, EXIT_CONFIG};
use twinguard::collect::snapshot_collector;
use twinguard::transport::local::DEFAULT_OUTBOX_ROTATE_BYTES;
use twinguard::transport::settings::{ConnectionSettings, Mode};
use twinguard::transport::settings::{DEFAULT_SETTINGS_FILE, MAX_SETTINGS_BYTES};
use twinguard_core::event::{EventName, MessageFrame};
use twinguard_os::safefile::read_regular;

/// Exit code for a usage error or an unreadable document.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Before anything resolves a host name or starts a thread (see sys::names).
    twinguard::sys::names::pin_host_lookups();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Config(ConfigCommand::Show { twin }) => config_show(twin.as_deref()),
        Command::Config(ConfigCommand::Schema) => {
            print_json_pretty(&json_schema());
            ExitCode::SUCCESS
        }
        Command::Collect(args) => collect(&args),
        Command::Run(args) => run(*args),
        Command::Doctor(args) => {
            let iothub_endpoint = match parse_endpoint(args.connection.iothub_endpoint.as_deref()) {
                Ok(endpoint) => endpoint,
                Err(code) => return code,
            };
            doctor(DoctorOptions {
                flags: connection_flags(&args.connection),
                settings: args.settings,
                data_dir: args.data_dir,
                twin: args.twin,
                iothub_endpoint,
            })
        }
    }
}

/// `twinguard doctor`: prints the report; exit 0 when the agent can do its job, else 1.
fn doctor(opts: DoctorOptions) -> ExitCode {
    let report = examine(&opts);
    print!("{}", report.render());
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Logs go to journald (its native protocol, with structured fields) when the agent's stderr
/// is the journal - systemd then sets `$JOURNAL_STREAM` to stderr's device and inode - and
/// `/run/systemd/journal/socket` exists; else to stderr. The level comes from `TWINGUARD_LOG`,
/// else from the settings file's `log-level`, else `info` (error, warn, info, debug, trace).
fn init_logging(settings: Option<&Path>) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;

    let wanted = std::env::var("TWINGUARD_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| settings_log_level(settings))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let level = match wanted.trim() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    if stderr_is_the_journal() && Path::new(JOURNAL_SOCKET).exists() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_syslog_identifier("twinguard".to_owned());
                if tracing_subscriber::registry()
                    .with(LevelFilter::from_level(level))
                    .with(journal)
                    .try_init()
                    .is_ok()
                {
                    return;
                }
            }
            Err(e) => eprintln!("twinguard: warning: cannot log to journald ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
}

/// journald's native-protocol socket.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` is `DEVICE:INODE` of it.
fn stderr_is_the_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// `log-level` of the settings file (`--settings`, else the default file when it exists).
fn settings_log_level(explicit: Option<&Path>) -> Option<String> {
    let default = Path::new(DEFAULT_SETTINGS_FILE);
    let path = explicit.or_else(|| default.exists().then_some(default))?;
    let bytes = read_regular(path, MAX_SETTINGS_BYTES).ok()?;
    let table: toml::Table = toml::from_str(std::str::from_utf8(&bytes).ok()?).ok()?;
    table.get("log-level")?.as_str().map(str::to_owned)
}

fn run(args: RunArgs) -> ExitCode {
    let flags = connection_flags(&args.connection);
    match flags.resolve(args.settings.as_deref()).and_then(|s| s.mode()) {
        Ok(Mode::Local) => {}
        Ok(mode) => return run_remote(args, mode),
        Err(e) => {
            eprintln!("twinguard run: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    init_logging(args.settings.as_deref());
    let data_dir = match resolve_data_dir(args.data_dir.as_deref()) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let opts = LocalOptions {
        twin: args.twin.clone(),
        outbox: args
            .outbox
            .clone()
            .unwrap_or_else(|| data_dir.join("outbox.jsonl")),
        reported: args
            .reported
            .clone()
            .unwrap_or_else(|| data_dir.join("reported.json")),
        data_dir,
        outbox_rotate_bytes: args.outbox_rotate_bytes.unwrap_or(DEFAULT_OUTBOX_ROTATE_BYTES),
        allow_special_files: args.allow_special_files,
        synthetic: args.synthetic_rate.map(|rate| Synthetic {
            rate,
            limit: args.synthetic_limit,
            ack_log: args.synthetic_ack_log.clone(),
        }),
    };
    match run_local(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Config(lines)) => {
            for line in lines {
                eprintln!("{line}");
            }
            eprintln!("twinguard run: the configuration is not valid; nothing was started (fix the twin and start again)");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("twinguard run: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The connection flags as settings (a flag wins over the settings file).
fn connection_flags(args: &cli::ConnectionArgs) -> ConnectionSettings {
    ConnectionSettings {
        mqtt: args.mqtt.clone(),
        device_id: args.device_id.clone(),
        mqtt_prefix: args.mqtt_prefix.clone(),
        mqtt_ca: args.mqtt_ca.clone(),
        mqtt_client_cert: args.mqtt_client_cert.clone(),
        mqtt_client_key: args.mqtt_client_key.clone(),
        mqtt_username: args.mqtt_username.clone(),
        mqtt_password_file: args.mqtt_password_file.clone(),
        iothub: args.iothub.clone(),
        iothub_ca: args.iothub_ca.clone(),
        log_level: None,
        allow_insecure_password: args.allow_insecure_password.then_some(true),
    }
}

/// `--iothub-endpoint HOST:PORT`, or a usage error line.
fn parse_endpoint(endpoint: Option<&str>) -> Result<Option<(String, u16)>, ExitCode> {
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let parsed = endpoint.rsplit_once(':').and_then(|(host, port)| {
        Some((
            host.trim_matches(['[', ']']).to_owned(),
            port.parse::<u16>().ok()?,
        ))
    });
    match parsed {
        Some(hp) => Ok(Some(hp)),
        None => {
            eprintln!("twinguard: error: --iothub-endpoint {endpoint:?}: expected HOST:PORT");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// The data directory of `run`: `--data-dir` made absolute, else the default; an error line
/// and the usage exit code when there is none.
fn resolve_data_dir(flag: Option<&std::path::Path>) -> Result<PathBuf, ExitCode> {
    match flag
        .map(|p| Ok(p.to_owned()))
        .unwrap_or_else(twinguard::app::default_data_dir)
    {
        Ok(dir) => Ok(twinguard::app::absolute(&dir)),
        Err(e) => {
            eprintln!("twinguard run: error: {e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// `run` in MQTT or IoT Hub mode.
fn run_remote(args: RunArgs, mode: Mode) -> ExitCode {
    let local_only = [
        ("--twin", args.twin.is_some()),
        ("--outbox", args.outbox.is_some()),
        ("--reported", args.reported.is_some()),
        ("--outbox-rotate-bytes", args.outbox_rotate_bytes.is_some()),
        ("--allow-special-files", args.allow_special_files),
    ];
    if let Some((flag, _)) = local_only.iter().find(|(_, set)| *set) {
        eprintln!("twinguard run: error: {flag} is a local-mode flag; with --mqtt or --iothub the twin and the messages go through the broker");
        return ExitCode::from(EXIT_USAGE);
    }
    init_logging(args.settings.as_deref());
    let data_dir = match resolve_data_dir(args.data_dir.as_deref()) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let synthetic = args.synthetic_rate.map(|rate| Synthetic {
        rate,
        limit: args.synthetic_limit,
        ack_log: args.synthetic_ack_log.clone(),
    });
    let result = match mode {
        Mode::Mqtt(options) => run_mqtt(&options, &data_dir, synthetic),
        Mode::IotHub(mut options) => {
            match parse_endpoint(args.connection.iothub_endpoint.as_deref()) {
                Ok(Some(hp)) => options.endpoint = Some(hp),
                Ok(None) => {}
                Err(code) => return code,
            }
            if let Some(secs) = args.iothub_token_secs {
                options.token_ttl = std::time::Duration::from_secs(secs.max(6));
            }
            run_iothub(&options, &data_dir, synthetic)
        }
        Mode::Local => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Config(lines)) => {
            for line in lines {
                eprintln!("{line}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("twinguard run: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads and validates a twin document, printing every problem. `Err` carries the exit code
/// for an unreadable document.
fn load(path: &Path) -> Result<Validation, ExitCode> {
    let name = display_name(path);
    let doc = read_twin(path).map_err(|e| {
        eprintln!("{name}: error: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    Ok(validate_document(&doc))
}

fn print_problems(name: &str, validation: &Validation, to_stderr: bool) {
    for p in &validation.problems {
        let line = format!("{name}: {}: {p}", p.severity.as_str());
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    let validation = match load(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let name = display_name(path);
    print_problems(&name, &validation, false);
    let errors = validation.errors().count();
    let warnings = validation
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .count();
    if validation.is_valid() {
        eprintln!("{name}: valid ({warnings} warning(s))");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{name}: invalid ({errors} error(s), {warnings} warning(s)); nothing of it would be applied"
        );
        ExitCode::FAILURE
    }
}

fn config_show(twin: Option<&Path>) -> ExitCode {
    let config = match twin {
        None => Config::default(),
        Some(path) => {
            let validation = match load(path) {
                Ok(v) => v,
                Err(code) => return code,
            };
            print_problems(&display_name(path), &validation, true);
            match validation.config {
                Some(c) => c,
                None => return ExitCode::FAILURE,
            }
        }
    };
    print_json_pretty(&config.to_desired_section());
    ExitCode::SUCCESS
}

fn print_json_pretty(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("twinguard: error: cannot serialize: {e}"),
    }
}

/// `; did you mean "X"?` for a misspelled or shortened event name, else `""`.
fn nearest_event(wanted: &str, known: &[&str]) -> String {
    let lower = wanted.to_ascii_lowercase();
    let by_prefix: Vec<&&str> = known
        .iter()
        .filter(|k| !lower.is_empty() && k.to_ascii_lowercase().starts_with(&lower))
        .collect();
    match by_prefix.as_slice() {
        [one] => format!("; did you mean \"{one}\"?"),
        _ => twinguard_core::config::did_you_mean(wanted, known.iter().map(|k| (*k).to_owned())),
    }
}

fn collect(args: &CollectArgs) -> ExitCode {
    let names: Vec<EventName> = if args.all {
        EventName::SECURITY_SNAPSHOTS.to_vec()
    } else {
        let known: Vec<&str> = EventName::ALL
            .into_iter()
            .filter(|n| snapshot_collector(*n).is_some())
            .map(EventName::as_str)
            .collect();
        let Some(wanted) = args.event.as_deref() else {
            eprintln!(
                "twinguard collect: error: name an event, or give --all for the six Security snapshots; events: {}",
                known.join(", ")
            );
            eprintln!(
                "Usage: twinguard collect <EVENT> [--pretty]\n       twinguard collect --all [--pretty]"
            );
            return ExitCode::from(EXIT_USAGE);
        };
        match EventName::parse(wanted).filter(|n| snapshot_collector(*n).is_some()) {
            Some(n) => vec![n],
            None => {
                if let Some(stream) = EventName::ALL
                    .into_iter()
                    .find(|n| n.as_str().eq_ignore_ascii_case(wanted) && snapshot_collector(*n).is_none())
                {
                    eprintln!(
                        "twinguard collect: error: {stream} is a stream event, seen as it happens by `twinguard run`, not a snapshot; snapshots: {}",
                        known.join(", ")
                    );
                    return ExitCode::from(EXIT_USAGE);
                }
                eprintln!(
                    "twinguard collect: error: no snapshot collector named {wanted:?}{}; known: {}",
                    nearest_event(wanted, &known),
                    known.join(", ")
                );
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    let frame = MessageFrame::new(env!("CARGO_PKG_VERSION"), twinguard::app::agent_id_for_display());
    let max_event = frame.max_event_bytes(Config::default().max_message_size_in_bytes as usize);
    let mut failed = false;
    for name in names {
        let Some(mut collector) = snapshot_collector(name) else {
            continue;
        };
        let items = match collector.collect() {
            Ok(items) => items,
            Err(e) => {
                eprintln!("twinguard collect: {name}: error: {e}");
                failed = true;
                continue;
            }
        };
        let event = match twinguard::stamp::new_event(name, items, std::time::SystemTime::now()) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("twinguard collect: {name}: error: {e}");
                failed = true;
                continue;
            }
        };
        let split = event.split_to_fit(max_event, twinguard::stamp::new_id);
        for item in &split.too_large {
            eprintln!("twinguard collect: {name}: warning: one payload item is larger than a message and was dropped ({} bytes)", serde_json::to_vec(item).map(|v| v.len()).unwrap_or(0));
        }
        for part in split.events {
            let body = frame.assemble(&[part.to_json()]);
            if args.pretty {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => print_json_pretty(&v),
                    Err(_) => println!("{}", String::from_utf8_lossy(&body)),
                }
            } else {
                println!("{}", String::from_utf8_lossy(&body));
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
