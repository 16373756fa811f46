//! The command line (SPEC §8), as data. Parsing only; `main.rs` runs the commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// twinguard - a security agent for Linux IoT devices, configured through a module twin.
#[derive(Debug, Parser)]
#[command(name = "twinguard", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a twin document; prints one line per problem.
    ///
    /// Accepts a full module twin, {"desired": ...}, the desired section, or the bare
    /// configuration object. Exit 0 valid (warnings allowed), 1 invalid, 2 unreadable or usage.
    Validate {
        /// The document (`-` reads standard input).
        file: PathBuf,
    },
    /// Show the configuration or its JSON Schema.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run snapshot collector(s) once and print each message as one compact line.
    #[command(
        override_usage = "twinguard collect <EVENT> [--pretty]\n       twinguard collect --all [--pretty]"
    )]
    Collect(CollectArgs),
    /// Run the agent (local mode unless --mqtt or --iothub).
    Run(Box<RunArgs>),
    /// Tell whether the agent can do its job here: every event source (available, fallback or
    /// unavailable, and why), capabilities, the data directory, the configuration in force,
    /// and in MQTT / IoT Hub mode a connection test.
    ///
    /// Exit 0 when the agent can do its job, 1 with the reasons otherwise, 2 usage.
    Doctor(Box<DoctorArgs>),
}

/// `doctor` arguments: the same data directory, twin, settings and connection flags as `run`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Connection settings file (TOML). Default /etc/twinguard/agent.toml when it exists.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// The data directory. Default $STATE_DIRECTORY (systemd), else /var/lib/twinguard as
    /// root, else $XDG_STATE_HOME/twinguard (~/.local/state/twinguard).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The twin document of local mode (a missing file means the defaults, as in `run`).
    #[arg(long, value_name = "FILE")]
    pub twin: Option<PathBuf>,
    /// How to reach the broker or IoT Hub, as `run` takes it.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (all defaults without --twin), pretty JSON.
    Show {
        /// A twin document whose configuration to show (`-` reads standard input).
        #[arg(long, value_name = "FILE")]
        twin: Option<PathBuf>,
    },
    /// Print the JSON Schema of the configuration object.
    Schema,
}

/// `collect` arguments.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// The event to collect (e.g. SystemInformation).
    #[arg(value_name = "EVENT", conflicts_with = "all")]
    pub event: Option<String>,
    /// Run the six Security snapshot collectors.
    #[arg(long)]
    pub all: bool,
    /// Indent a single message.
    #[arg(long)]
    pub pretty: bool,
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The twin document (local mode): watched; each change replaces the desired document.
    #[arg(long, value_name = "FILE")]
    pub twin: Option<PathBuf>,
    /// Where messages go in local mode: one compact JSON message per line.
    #[arg(long, value_name = "FILE")]
    pub outbox: Option<PathBuf>,
    /// Where the reported section is written (atomically) in local mode.
    #[arg(long, value_name = "FILE")]
    pub reported: Option<PathBuf>,
    /// The data directory (cache, agent id, lock). Default $STATE_DIRECTORY (systemd), else
    /// /var/lib/twinguard as root, else $XDG_STATE_HOME/twinguard (~/.local/state/twinguard).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Connection settings file (TOML). Default /etc/twinguard/agent.toml when it exists.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// How to reach the broker or IoT Hub (local mode without them).
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Tests: SAS token lifetime in seconds (renewed by reconnecting at five sixths of it).
    #[arg(long, hide = true, value_name = "SECS")]
    pub iothub_token_secs: Option<u64>,
    /// Let the outbox and the reported file be a FIFO or a character device (e.g. a pipe to
    /// another program, /dev/null), written in place: never cut, rotated or replaced.
    /// Without it either must be a regular file of this user (a link or a device is refused).
    #[arg(long)]
    pub allow_special_files: bool,
    /// Size in bytes at which the outbox is rotated (a few old files are kept).
    #[arg(long, value_name = "BYTES")]
    pub outbox_rotate_bytes: Option<u64>,
    /// Test and benchmark source: synthetic ProcessCreate events per second.
    #[arg(long, hide = true, value_name = "N")]
    pub synthetic_rate: Option<u64>,
    /// Stop the synthetic source after N events.
    #[arg(long, hide = true, value_name = "N")]
    pub synthetic_limit: Option<u64>,
    /// Append the id of every synthetic event the cache acknowledged to FILE.
    #[arg(long, hide = true, value_name = "FILE")]
    pub synthetic_ack_log: Option<PathBuf>,
}

/// The connection flags shared by `run` and `doctor` (the settings file may give them too;
/// a flag wins over the file).
#[derive(Debug, Args, Clone, Default)]
pub struct ConnectionArgs {
    /// MQTT broker URL (mqtt://host:port or mqtts://host:port).
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Device id for MQTT mode.
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// Topic prefix in MQTT mode (default twinguard/{device-id}).
    #[arg(long, value_name = "PREFIX")]
    pub mqtt_prefix: Option<String>,
    /// CA certificate (PEM) to trust for the broker, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for the broker.
    #[arg(long, value_name = "FILE")]
    pub mqtt_client_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate; a secret (see --mqtt-password-file).
    #[arg(long, value_name = "FILE")]
    pub mqtt_client_key: Option<PathBuf>,
    /// User name for the broker.
    #[arg(long, value_name = "NAME")]
    pub mqtt_username: Option<String>,
    /// File holding the broker password. A secret: owned by this user or root, no access for
    /// group or others; a bare NAME is read from $CREDENTIALS_DIRECTORY (systemd) when there.
    #[arg(long, value_name = "FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// Send the broker password even over plain mqtt:// (clear text on the network); refused
    /// without this flag. Prefer mqtts://.
    #[arg(long)]
    pub allow_insecure_password: bool,
    /// File holding the IoT Hub module connection string; a secret (see --mqtt-password-file).
    #[arg(long, value_name = "FILE")]
    pub iothub: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the IoT Hub endpoint, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub iothub_ca: Option<PathBuf>,
    /// Tests and local hubs: connect to HOST:PORT instead of the connection string's
    /// HostName on 8883.
    #[arg(long, hide = true, value_name = "HOST:PORT")]
    pub iothub_endpoint: Option<String>,
}
