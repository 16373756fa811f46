//! The command line of `twinguard-hub`, as data. Parsing only; `commands.rs` runs them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default API address (loopback only).
pub const DEFAULT_API: &str = "127.0.0.1:8884";

/// twinguard-hub - a local Azure IoT Hub-compatible MQTT endpoint (device and module
/// identities, SAS tokens, twins, device-to-cloud messages), for trying twinguard's IoT Hub
/// mode without an Azure subscription.
#[derive(Debug, Parser)]
#[command(name = "twinguard-hub", version, about, long_about = None)]
pub struct Cli {
    /// The hub's data directory (database, certificates, listen.json).
    #[arg(long, global = true, value_name = "DIR", default_value = "twinguard-hub-data")]
    pub data_dir: PathBuf,
    /// The API address of the running hub (default: from DIR/listen.json, else 127.0.0.1:8884).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub api: Option<SocketAddr>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (MQTT over TLS, and the loopback API the other commands use).
    Serve(Box<ServeArgs>),
    /// Manage device and module identities.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Read and change twins.
    #[command(subcommand)]
    Twin(TwinCommand),
    /// Print stored device-to-cloud messages, one JSON object per line.
    Messages(MessagesArgs),
    /// Show the running hub's addresses and live connections.
    Status,
    /// Print or replace the API token (DIR/api-token) that every API request must carry.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Shared access policies of the service API (iothubowner, service, registryRead,
    /// registryReadWrite).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the audit trail: every state-changing request, who made it and when.
    Audit(AuditArgs),
    /// Print the console's alerts, one JSON object per line (open and acknowledged by
    /// default), or change one's state (alerts ack ID, alerts close ID).
    Alerts(AlertsArgs),
    /// Print the recommendations from the devices' latest snapshots, one JSON object per line.
    Recommendations(RecommendationsArgs),
    /// Custom rules files (`serve --rules FILE`): print their JSON Schema, or check one.
    #[command(subcommand)]
    Rules(RulesCommand),
}

/// `rules` subcommands (local: no hub needed).
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Print the JSON Schema of a custom rules file (TOML files follow it too).
    Schema,
    /// Check a rules file: prints each problem on one line (FILE: POINTER: problem) and exits
    /// 1, or says it is good.
    Validate {
        /// The rules file (`.toml` is TOML, anything else JSON).
        file: PathBuf,
    },
}

/// `alerts` options.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Change an alert's state instead of listing.
    #[command(subcommand)]
    pub action: Option<AlertsAction>,
    /// Keep printing alerts as they are raised or change (count, state).
    #[arg(long, short)]
    pub follow: bool,
    /// Only this device's alerts.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Only alerts of this severity: high, medium, low, informational.
    #[arg(long, value_name = "SEVERITY")]
    pub severity: Option<String>,
    /// Only alerts in this state: open, acknowledged, closed, all (default: open and
    /// acknowledged).
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
}

/// `alerts` state changes.
#[derive(Debug, Subcommand)]
pub enum AlertsAction {
    /// Acknowledge an open alert (someone is on it).
    Ack {
        /// The alert's id.
        id: i64,
    },
    /// Close an alert (dealt with; a new finding opens a new alert).
    Close {
        /// The alert's id.
        id: i64,
    },
}

/// `recommendations` options.
#[derive(Debug, Args)]
pub struct RecommendationsArgs {
    /// Only this device's recommendations.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the service connection string of a policy
    /// (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...).
    Show {
        /// The policy: iothubowner, service, registryRead or registryReadWrite.
        name: String,
    },
    /// List the policies with their permissions (no keys).
    List,
}

/// `audit` options.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Keep printing new entries as they are recorded.
    #[arg(long, short)]
    pub follow: bool,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the API token (for scripts: curl -H "Authorization: Bearer $(twinguard-hub token show)").
    Show,
    /// Replace the API token: through the running hub, or in DIR/api-token if none runs.
    Rotate,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// MQTT over TLS listens here (IoT Hub's port is 8883; the official SDKs only use it).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8883")]
    pub listen: SocketAddr,
    /// Also listen for MQTT over plain TCP here (local experiments only; off by default).
    #[arg(long, value_name = "HOST:PORT")]
    pub plain: Option<SocketAddr>,
    /// The host name in connection strings and SAS resources; clients connect to it, so the
    /// server certificate names it too (besides localhost, 127.0.0.1 and ::1).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub hostname: String,
    /// Authenticated MQTT connections at once (more logins get CONNACK 3, server unavailable).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// MQTT connections not yet logged in, at once; when full, the oldest pending connection
    /// of the busiest source address is closed for a newcomer.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_pending: usize,
    /// MQTT connections not yet logged in from one source (an IPv4 address or an IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_pending_per_source: usize,
    /// Seconds between the summary lines of refused connections (tests shorten it).
    #[arg(long, value_name = "SECS", default_value_t = 10, hide = true)]
    pub limits_report_secs: u64,
    /// A name the API accepts in the HTTP Host header besides localhost, 127.0.0.1 and [::1]
    /// (repeatable); any other Host gets 421, against DNS rebinding.
    #[arg(long, value_name = "NAME")]
    pub api_host: Vec<String>,
    /// IoT Hub's service REST API (HTTPS, SAS-authenticated with a shared access policy)
    /// listens here; Microsoft's service SDKs and IoT Hub REST scripts use it.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8443")]
    pub service: SocketAddr,
    /// Do not serve the service REST API.
    #[arg(long)]
    pub no_service: bool,
    /// Messages kept in the database (the oldest are deleted beyond).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_messages: u64,
    /// Typed event rows the console keeps (the oldest beyond are deleted).
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub max_events: u64,
    /// Days the console keeps events and messages, and closed alerts after closing.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub retention_days: u64,
    /// Least silence, in seconds, after which a device that sent security messages and is not
    /// connected is alerted as silent (longer when twice its highPriorityMessageFrequency is).
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub silent_after_secs: u64,
    /// Custom rules (allowed ranges and allow-lists per device group, TOML or JSON; see
    /// `twinguard-hub rules schema`). Watched: a good change is put in force, a bad one is
    /// logged (a line per error) and the last good rules stay.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Seconds an agent may leave its desired configuration unapplied (desired $version newer
    /// than the one it reports) before the console alerts "monitoring degraded".
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub config_pending_secs: u64,
    /// Seconds a device whose connection ended without a clean stop may stay away before the
    /// console alerts "monitoring degraded".
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub offline_grace_secs: u64,
    /// Seconds after a device's first outbound connection during which its programs'
    /// destinations are learned; later new destinations are alerted.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    pub outbound_learning_secs: u64,
    /// Seconds between the console's silence checks and retention runs (tests shorten it).
    #[arg(long, value_name = "SECS", default_value_t = 30, hide = true)]
    pub console_check_secs: u64,
    /// Follow a fleet of agents in MQTT mode on this broker (mqtt://host:port or
    /// mqtts://host:port): their messages, reported sections and status come in as for agents
    /// on the hub's own endpoint; desired sections are published (retained) to them.
    #[arg(long, value_name = "URL")]
    pub mqtt_fleet: Option<String>,
    /// The fleet's topic prefix: devices are PREFIX/{deviceId} (default twinguard, the agents'
    /// default twinguard/{device-id}).
    #[arg(long, value_name = "PREFIX")]
    pub mqtt_prefix: Option<String>,
    /// A private CA (PEM) to trust for the fleet broker, besides the system's roots.
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for the fleet broker.
    #[arg(long, value_name = "FILE")]
    pub mqtt_client_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate; a secret (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub mqtt_client_key: Option<PathBuf>,
    /// User name for the fleet broker.
    #[arg(long, value_name = "NAME")]
    pub mqtt_username: Option<String>,
    /// File holding the fleet broker's password; a secret (mode 0600, not readable by group or
    /// others); one trailing newline is ignored.
    #[arg(long, value_name = "FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// MQTT client id of the hub's fleet connection (its persistent session's name; default
    /// twinguard-hub).
    #[arg(long, value_name = "ID")]
    pub mqtt_client_id: Option<String>,
    /// Send the fleet broker password even over plain mqtt:// (clear text); refused without.
    #[arg(long)]
    pub allow_insecure_password: bool,
    /// A settings file (TOML) whose keys are these flags' names without the dashes
    /// (mqtt-fleet, mqtt-prefix, mqtt-ca, mqtt-client-cert, mqtt-client-key, mqtt-username,
    /// mqtt-password-file, mqtt-client-id, allow-insecure-password); flags win.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// POST each new alert and each alert state change as JSON to this https:// URL (the
    /// certificate verified), signed with --alert-webhook-secret-file.
    #[arg(long, value_name = "URL", requires = "alert_webhook_secret_file")]
    pub alert_webhook: Option<String>,
    /// File holding the webhook's HMAC-SHA256 secret; a secret (mode 0600, not readable by
    /// group or others); one trailing newline is ignored.
    #[arg(long, value_name = "FILE", requires = "alert_webhook")]
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// A private CA (PEM) to trust for the webhook's server, besides the system's roots.
    #[arg(long, value_name = "FILE", requires = "alert_webhook")]
    pub alert_webhook_ca: Option<PathBuf>,
    /// Log at debug level.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Which identity: a device, or one of its modules.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// The device id.
    pub device: String,
    /// The module id (e.g. azureiotsecurity, the agent's module).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
}

/// An identity and where its connection string goes.
#[derive(Debug, Args)]
pub struct ConnectionStringArgs {
    /// Which identity.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Write the connection string to FILE (mode 0600, as `twinguard run --iothub FILE`
    /// requires) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `identity` subcommands.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Create an identity with a new key and print its connection string.
    Add(ConnectionStringArgs),
    /// Print the connection string of an identity.
    Show(ConnectionStringArgs),
    /// List identities (JSON).
    List,
}

/// `twin` subcommands.
#[derive(Debug, Subcommand)]
pub enum TwinCommand {
    /// Print a twin (pretty JSON).
    Show(IdentityArgs),
    /// Replace the desired properties with a document (FILE, or - for standard input).
    SetDesired {
        /// Whose twin.
        #[command(flatten)]
        identity: IdentityArgs,
        /// The desired properties (the section itself, or {"desired": ...}, or a full twin).
        file: PathBuf,
        /// Wait up to SECONDS for the agent to report this desired $version, then print
        /// whether it applied or rejected it (exit 0 applied, 1 rejected, 3 timed out).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Merge a patch into the desired properties (RFC 7386: null deletes).
    PatchDesired {
        /// Whose twin.
        #[command(flatten)]
        identity: IdentityArgs,
        /// The patch (FILE, or - for standard input).
        file: PathBuf,
        /// Wait up to SECONDS for the agent to report this desired $version, then print
        /// whether it applied or rejected it (exit 0 applied, 1 rejected, 3 timed out).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
}

/// `messages` options.
#[derive(Debug, Args)]
pub struct MessagesArgs {
    /// Only this device's messages (its modules' included).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Only this module's messages.
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
    /// Only messages after this sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
    /// Keep printing new messages as they arrive.
    #[arg(long, short)]
    pub follow: bool,
}
