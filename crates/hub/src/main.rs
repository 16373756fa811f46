//! The `twinguard-hub` binary: `serve` runs the hub; the other commands are clients of its
//! loopback API. Output functions here are the only place that prints. Exit codes: 0 done,
//! 1 failed (the hub said no, or could not be reached; a desired change the agent rejected),
//! 2 usage, 3 `--wait` timed out.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use twinguard_core::iothub::query::percent_encode;
use twinguard_hub::console::rules::RuleSettings;
use twinguard_hub::fleet::FleetSettings;
use twinguard_hub::http::{call, HttpError};
use twinguard_hub::server::{start, ServeOptions, LISTEN_FILE};
use twinguard_hub::store::Retention;
use twinguard_hub::webhook::{WebhookOptions, WebhookUrl};
use twinguard_os::safefile::{read_limited, read_regular};

use cli::{
    AlertsAction, AlertsArgs, AuditArgs, Cli, Command, IdentityArgs, IdentityCommand, MessagesArgs,
    PolicyCommand, RecommendationsArgs, RulesCommand, ServeArgs, TokenCommand, TwinCommand, DEFAULT_API,
};

/// Largest desired document read from a file or standard input: the agent's bound.
use twinguard_core::config::MAX_DOCUMENT_BYTES;
/// How long a `messages --follow` request waits on the hub before asking again.
const FOLLOW_WAIT_MS: u64 = 25_000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => serve(&cli, args),
        Command::Rules(command) => rules_command(command),
        command => client(&cli, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => ExitCode::from(*code),
            None => {
                eprintln!("twinguard-hub: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs go to stderr; the level is debug with `-v`, else from TWINGUARD_LOG (error, warn,
/// info, debug, trace; default info).
fn init_logging(verbose: bool) {
    let level = match std::env::var("TWINGUARD_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        _ if verbose => tracing::Level::DEBUG,
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
}

/// `rules schema` and `rules validate FILE`: local, no hub needed.
fn rules_command(command: &RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Schema => {
            let text = serde_json::to_string_pretty(&twinguard_hub::console::custom::schema())?;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{text}");
            Ok(())
        }
        RulesCommand::Validate { file } => match twinguard_hub::rules_file::load(file) {
            Ok(rules) => {
                println!("{}: good ({} groups)", file.display(), rules.groups.len());
                Ok(())
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{}: {e}", file.display());
                }
                Err(Exit(1).into())
            }
        },
    }
}

/// Seconds as milliseconds, saturating.
fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn serve(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    init_logging(args.verbose);
    let flags = FleetSettings {
        mqtt_fleet: args.mqtt_fleet.clone(),
        mqtt_prefix: args.mqtt_prefix.clone(),
        mqtt_ca: args.mqtt_ca.clone(),
        mqtt_client_cert: args.mqtt_client_cert.clone(),
        mqtt_client_key: args.mqtt_client_key.clone(),
        mqtt_username: args.mqtt_username.clone(),
        mqtt_password_file: args.mqtt_password_file.clone(),
        mqtt_client_id: args.mqtt_client_id.clone(),
        allow_insecure_password: args.allow_insecure_password.then_some(true),
    };
    let file = match &args.settings {
        Some(path) => FleetSettings::load(path)?,
        None => FleetSettings::default(),
    };
    let fleet = flags.over(file).options()?;
    let webhook = match (&args.alert_webhook, &args.alert_webhook_secret_file) {
        (Some(url), Some(secret_file)) => Some(WebhookOptions {
            url: WebhookUrl::parse(url)?,
            secret_file: secret_file.clone(),
            ca: args.alert_webhook_ca.clone(),
        }),
        _ => None,
    };
    let running = start(&ServeOptions {
        data_dir: cli.data_dir.clone(),
        listen: args.listen,
        plain: args.plain,
        api: cli.api.unwrap_or_else(default_api),
        hostname: args.hostname.clone(),
        max_connections: args.max_connections.max(1),
        max_pending: args.max_pending.max(1),
        max_pending_per_source: args.max_pending_per_source.max(1),
        limits_report_every: Duration::from_secs(args.limits_report_secs.max(1)),
        api_hosts: args.api_host.clone(),
        max_messages: args.max_messages.max(1),
        service: (!args.no_service).then_some(args.service),
        retention: Retention {
            max_events: args.max_events.max(1),
            max_age_ms: days_ms(args.retention_days),
            closed_alert_age_ms: days_ms(args.retention_days),
        },
        rules: RuleSettings {
            silent_floor_ms: secs_ms(args.silent_after_secs),
            config_pending_ms: secs_ms(args.config_pending_secs),
            offline_grace_ms: secs_ms(args.offline_grace_secs),
            outbound_learning_ms: secs_ms(args.outbound_learning_secs),
            ..RuleSettings::default()
        },
        console_every: Duration::from_secs(args.console_check_secs.max(1)),
        rules_file: args.rules.clone(),
        fleet: fleet.clone(),
        webhook,
    })?;
    println!(
        "twinguard-hub {} for host name {}",
        env!("CARGO_PKG_VERSION"),
        args.hostname
    );
    println!("MQTT over TLS:  {}", running.listen);
    if let Some(plain) = running.plain {
        println!("MQTT plain TCP: {plain} (no encryption: local experiments only)");
    }
    println!("operator API:   http://{}", running.api);
    if let Some(service) = running.service {
        println!("service API:    https://{service} (twinguard-hub policy show iothubowner prints its connection string)");
    }
    if let Some(fleet) = &fleet {
        println!(
            "MQTT fleet:     {} (devices under {}/)",
            fleet.broker, fleet.prefix
        );
    }
    println!("CA certificate: {}", running.ca_file.display());
    println!(
        "API token:      {} (the CLI reads it; twinguard-hub token show)",
        twinguard_hub::token::path(&cli.data_dir).display()
    );
    running.wait();
    Ok(())
}

/// `days` in milliseconds, saturating.
fn days_ms(days: u64) -> i64 {
    i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX)
}

fn default_api() -> SocketAddr {
    DEFAULT_API
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8884)))
}

/// The API address: `--api`, else the running hub's `listen.json`, else the default.
fn api_address(cli: &Cli) -> SocketAddr {
    if let Some(api) = cli.api {
        return api;
    }
    std::fs::read(cli.data_dir.join(LISTEN_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("api").and_then(Value::as_str).and_then(|a| a.parse().ok()))
        .unwrap_or_else(default_api)
}

/// One API call; a non-2xx answer is an error carrying the hub's message.
fn request(
    api: SocketAddr,
    method: &str,
    target: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let token = API_TOKEN.get().map_or("", String::as_str);
    let (status, value) = call(api, token, method, target, body, timeout).with_context(|| {
        format!("cannot reach the hub's API at {api} (is `twinguard-hub serve` running?)")
    })?;
    if !(200..300).contains(&status) {
        let message = value.get("error").and_then(Value::as_str).unwrap_or("no details");
        bail!("{message} (HTTP {status})");
    }
    Ok(value)
}

fn identity_path(id: &IdentityArgs) -> String {
    match &id.module {
        Some(m) => format!("{}/modules/{}", percent_encode(&id.device), percent_encode(m)),
        None => percent_encode(&id.device),
    }
}

fn print_pretty(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// The API token of the data directory, read once by [`client`] before any request.
static API_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn client(cli: &Cli, command: &Command) -> anyhow::Result<()> {
    let api = api_address(cli);
    if let Command::Token(command) = command {
        return token_command(cli, api, command);
    }
    let token = twinguard_hub::token::read(&cli.data_dir).context(
        "reading the API token (start the hub once with `twinguard-hub serve`, or give its --data-dir)",
    )?;
    let _ = API_TOKEN.set(token);
    let timeout = Duration::from_secs(30);
    match command {
        Command::Serve(_) | Command::Token(_) | Command::Rules(_) => Ok(()),
        Command::Identity(IdentityCommand::Add(args)) => {
            let id = &args.identity;
            let body = json!({"deviceId": id.device, "moduleId": id.module});
            let created = request(api, "POST", "/v1/identities", Some(&body), timeout)?;
            output_connection_string(&created, args.out.as_deref())
        }
        Command::Identity(IdentityCommand::Show(args)) => {
            let target = format!("/v1/identities/{}", identity_path(&args.identity));
            let found = request(api, "GET", &target, None, timeout)?;
            output_connection_string(&found, args.out.as_deref())
        }
        Command::Identity(IdentityCommand::List) => {
            print_pretty(&request(api, "GET", "/v1/identities", None, timeout)?);
            Ok(())
        }
        Command::Twin(TwinCommand::Show(id)) => {
            print_pretty(&request(
                api,
                "GET",
                &format!("/v1/twins/{}", identity_path(id)),
                None,
                timeout,
            )?);
            Ok(())
        }
        Command::Twin(TwinCommand::SetDesired { identity, file, wait }) => {
            change_desired(api, "PUT", identity, file, *wait)
        }
        Command::Twin(TwinCommand::PatchDesired { identity, file, wait }) => {
            change_desired(api, "PATCH", identity, file, *wait)
        }
        Command::Messages(args) => messages(api, args),
        Command::Policy(PolicyCommand::Show { name }) => {
            let policy = request(
                api,
                "GET",
                &format!("/v1/policies/{}", percent_encode(name)),
                None,
                timeout,
            )?;
            if policy.get("serviceEnabled") == Some(&Value::Bool(false)) {
                eprintln!("note: the running hub serves no service API (serve --no-service)");
            }
            let cs = policy
                .get("connectionString")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("the hub's answer has no connection string"))?;
            println!("{cs}");
            Ok(())
        }
        Command::Policy(PolicyCommand::List) => {
            print_pretty(&request(api, "GET", "/v1/policies", None, timeout)?);
            Ok(())
        }
        Command::Audit(args) => audit(api, args),
        Command::Alerts(args) => alerts(api, args),
        Command::Recommendations(args) => recommendations(api, args),
        Command::Status => {
            let mut status = request(api, "GET", "/v1/status", None, timeout)?;
            status["connections"] = request(api, "GET", "/v1/connections", None, timeout)?;
            print_pretty(&status);
            Ok(())
        }
    }
}

/// `token show` prints the data directory's token; `token rotate` asks the running hub for a
/// new one, or, when no hub answers at the API address, writes a new one to the file.
fn token_command(cli: &Cli, api: SocketAddr, command: &TokenCommand) -> anyhow::Result<()> {
    let current = twinguard_hub::token::read(&cli.data_dir);
    match command {
        TokenCommand::Show => println!("{}", current?),
        TokenCommand::Rotate => {
            let answer = current
                .ok()
                .map(|token| call(api, &token, "POST", "/v1/token", None, Duration::from_secs(30)));
            match answer {
                Some(Ok((200, body))) => {
                    let new = body.get("token").and_then(Value::as_str).unwrap_or_default();
                    println!("{new}");
                    eprintln!("the running hub now takes this token only");
                }
                Some(Ok((status, body))) => {
                    let message = body.get("error").and_then(Value::as_str).unwrap_or("no details");
                    bail!("the hub at {api} refused: {message} (HTTP {status})");
                }
                Some(Err(HttpError::Io(e))) if e.kind() != std::io::ErrorKind::ConnectionRefused => {
                    bail!("cannot reach the hub's API at {api}: {e}");
                }
                Some(Err(HttpError::Bad { message, .. })) => {
                    bail!("the hub at {api} answered badly: {message}");
                }
                // No hub (or no token yet): the file is the token the next start uses.
                None | Some(Err(_)) => {
                    // Creates the directory (0700) if needed, and checks its owner and mode.
                    twinguard_hub::datadir::prepare(&cli.data_dir)?;
                    println!("{}", twinguard_hub::token::rotate(&cli.data_dir)?);
                    let file = twinguard_hub::token::path(&cli.data_dir);
                    if std::net::TcpStream::connect_timeout(&api, Duration::from_secs(1)).is_ok() {
                        // The token file was unreadable, so the running hub was not asked.
                        eprintln!(
                            "wrote the new token to {}; the hub running at {api} keeps its old token until it is restarted",
                            file.display()
                        );
                    } else {
                        eprintln!(
                            "no hub answered at {api}: wrote the new token to {}; a hub started from that directory uses it",
                            file.display()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Prints the connection string, or writes it to `out` readable by the owner only (it holds
/// the identity's key) and prints where it went.
fn output_connection_string(identity: &Value, out: Option<&Path>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let cs = identity
        .get("connectionString")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the hub's answer has no connection string"))?;
    let Some(path) = out else {
        println!("{cs}");
        return Ok(());
    };
    // Never through a symbolic link, never into a FIFO or device: the key goes to a regular
    // file at that very path, or nowhere. (Checked before the open for a clear message, and
    // again on the open descriptor, so nothing swapped in between is written to.)
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.is_file() && !meta.file_type().is_symlink() {
            bail!(
                "{} is not a regular file: refusing to write a key there",
                path.display()
            );
        }
    }
    let mut file = twinguard_os::safefile::open_nofollow(
        path,
        std::fs::OpenOptions::new().write(true).create(true).mode(0o600),
    )
    .map_err(|e| twinguard_hub::datadir::refusal(path, e))?;
    let meta = file
        .metadata()
        .with_context(|| format!("writing {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file: refusing to write a key there",
            path.display()
        );
    }
    // An existing file keeps its mode through open(2): make it private too, before writing.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.set_len(0))
        .and_then(|()| file.write_all(format!("{cs}\n").as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("connection string written to {}", path.display());
    Ok(())
}

/// Reads a JSON document from a file or `-` (standard input), bounded; a file is opened without
/// blocking and must be a regular file (a FIFO at the path is an error, not a wait).
fn read_document(path: &Path) -> anyhow::Result<Value> {
    let bytes = if path.as_os_str() == "-" {
        read_limited(
            Path::new("standard input"),
            std::io::stdin().lock(),
            MAX_DOCUMENT_BYTES,
        )?
    } else {
        read_regular(path, MAX_DOCUMENT_BYTES)?
    };
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))
}

/// The desired section of a document given as the section itself, the bare configuration
/// object, `{"desired": ...}` or a full twin (`{"properties": {"desired": ...}}`, as `twin show` prints it). `$`-members
/// (`$version`, `$metadata`) are dropped, so a shown twin can be edited and set again.
fn desired_section(doc: Value) -> Value {
    let mut section = match doc {
        Value::Object(mut o) if o.get("properties").and_then(|p| p.get("desired")).is_some() => o
            .remove("properties")
            .and_then(|mut p| p.get_mut("desired").map(Value::take))
            .unwrap_or_default(),
        Value::Object(mut o) if o.len() == 1 && o.contains_key("desired") => {
            o.remove("desired").unwrap_or_default()
        }
        other => other,
    };
    if let Value::Object(members) = &mut section {
        members.retain(|k, _| !k.starts_with('$'));
    }
    // A bare configuration object (as `twinguard run --twin` takes it) belongs under the
    // configuration key: the agent reads nothing else of the desired section.
    let bare = matches!(&section, Value::Object(m) if !m.is_empty()
        && m.keys().all(|k| twinguard_core::config::Property::from_name(k).is_some()));
    if bare {
        section = json!({ twinguard_core::config::CONFIG_KEY: section });
    }
    section
}

/// Changes the desired properties and prints what changed: the new desired `$version` and
/// the patch (or the whole section for `set-desired`). With `wait`, polls the twin until the
/// agent's reported status covers that version, then prints applied or rejected.
fn change_desired(
    api: SocketAddr,
    method: &str,
    id: &IdentityArgs,
    file: &Path,
    wait: Option<u64>,
) -> anyhow::Result<()> {
    let doc = desired_section(read_document(file)?);
    let target = format!("/v1/twins/{}", identity_path(id));
    let twin = request(
        api,
        method,
        &format!("{target}/desired"),
        Some(&doc),
        Duration::from_secs(30),
    )?;
    let version = twin
        .pointer("/properties/desired/$version")
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("the hub's answer has no desired $version"))?;
    let what = if method == "PUT" { "set to" } else { "patched with" };
    println!("desired $version {version}: {what} {doc}");
    let Some(seconds) = wait else {
        println!("(the agent reports what it made of it under reported.twinguard, lastDesiredVersion {version}; `--wait SECONDS` waits for that)");
        return Ok(());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut seen = None;
    loop {
        let twin = request(api, "GET", &target, None, Duration::from_secs(30))?;
        let status = twin.pointer("/properties/reported/twinguard");
        // The version the status is about (the agent's `lastDesiredVersion`; older agents
        // report only the version in force).
        let reported_version = status
            .and_then(|s| s.get("lastDesiredVersion").or_else(|| s.get("desiredVersion")))
            .and_then(Value::as_i64);
        if let (Some(status), Some(v)) = (status, reported_version) {
            seen = Some(v);
            if v >= version {
                let state = status
                    .get("configurationStatus")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let errors: Vec<String> = status
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|e| e.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                if state == "applied" {
                    println!("applied: the agent reports desired $version {v} in force");
                    for e in &errors {
                        println!("  warning: {e}");
                    }
                    return Ok(());
                }
                println!(
                    "rejected: the agent keeps its previous configuration (desired $version {v} not applied)"
                );
                for e in &errors {
                    println!("  {e}");
                }
                return Err(anyhow::Error::new(Exit(1)));
            }
        }
        if std::time::Instant::now() >= deadline {
            let seen = seen.map_or("no desired $version yet".to_owned(), |v| {
                format!("desired $version {v}")
            });
            eprintln!(
                "twinguard-hub: timed out after {seconds} s: the agent has reported {seen} (is it connected? see `twinguard-hub status`)"
            );
            return Err(anyhow::Error::new(Exit(EXIT_TIMEOUT)));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A command's own exit code, after it printed why.
#[derive(Debug, thiserror::Error)]
#[error("exit {0}")]
struct Exit(u8);

/// `--wait` ran out of time.
const EXIT_TIMEOUT: u8 = 3;

/// Prints the audit trail, one JSON object per line; with `--follow`, polls for new entries
/// every second.
fn audit(api: SocketAddr, args: &AuditArgs) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let page = request(
            api,
            "GET",
            &format!("/v1/audit?after={after}"),
            None,
            Duration::from_secs(30),
        )?;
        let list = page
            .get("entries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for entry in &list {
            println!("{entry}");
        }
        after = page.get("next").and_then(Value::as_i64).unwrap_or(after);
        if list.is_empty() {
            if !args.follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Lists alerts (JSON lines, oldest change first), following changes every second with
/// `--follow`; or acknowledges or closes one and prints it.
fn alerts(api: SocketAddr, args: &AlertsArgs) -> anyhow::Result<()> {
    if let Some(action) = &args.action {
        let (id, verb) = match action {
            AlertsAction::Ack { id } => (id, "ack"),
            AlertsAction::Close { id } => (id, "close"),
        };
        let alert = request(
            api,
            "POST",
            &format!("/v1/alerts/{id}/{verb}"),
            None,
            Duration::from_secs(30),
        )?;
        println!("{alert}");
        return Ok(());
    }
    let mut filter = String::new();
    for (name, value) in [
        ("device", &args.device),
        ("severity", &args.severity),
        ("state", &args.state),
    ] {
        if let Some(v) = value {
            filter.push_str(&format!("&{name}={}", percent_encode(v)));
        }
    }
    // Alerts changed at or after `since`; those already printed at exactly `since` (same
    // millisecond) are remembered so they are not printed twice.
    let mut since = 0i64;
    let mut printed_at_since: Vec<(i64, i64, i64)> = Vec::new();
    loop {
        let list = request(
            api,
            "GET",
            &format!("/v1/alerts?changedSince={since}{filter}"),
            None,
            Duration::from_secs(30),
        )?;
        for alert in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            let changed = alert.get("changedMs").and_then(Value::as_i64).unwrap_or(since);
            let id = alert.get("id").and_then(Value::as_i64).unwrap_or(0);
            let count = alert.get("count").and_then(Value::as_i64).unwrap_or(0);
            if printed_at_since.contains(&(id, changed, count)) {
                continue;
            }
            if changed > since {
                since = changed;
                printed_at_since.clear();
            }
            printed_at_since.push((id, changed, count));
            println!("{alert}");
        }
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn recommendations(api: SocketAddr, args: &RecommendationsArgs) -> anyhow::Result<()> {
    let mut target = "/v1/recommendations".to_owned();
    if let Some(d) = &args.device {
        target.push_str(&format!("?device={}", percent_encode(d)));
    }
    let list = request(api, "GET", &target, None, Duration::from_secs(30))?;
    for r in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        println!("{r}");
    }
    Ok(())
}

fn messages(api: SocketAddr, args: &MessagesArgs) -> anyhow::Result<()> {
    let mut after = args.after;
    loop {
        let mut target = format!("/v1/messages?after={after}");
        if let Some(d) = &args.device {
            target.push_str(&format!("&device={}", percent_encode(d)));
        }
        if let Some(m) = &args.module {
            target.push_str(&format!("&module={}", percent_encode(m)));
        }
        let wait = if args.follow { FOLLOW_WAIT_MS } else { 0 };
        target.push_str(&format!("&waitMs={wait}"));
        let page = request(api, "GET", &target, None, Duration::from_millis(wait + 30_000))?;
        let list = page
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for m in &list {
            println!("{m}");
        }
        after = page.get("next").and_then(Value::as_u64).unwrap_or(after);
        if list.is_empty() && !args.follow {
            return Ok(());
        }
    }
}
