//! `twinguard-hub serve`: opens the data directory (database, certificates), binds the MQTT
//! listener (TLS), the optional plain-TCP listener and the loopback API, writes the bound
//! addresses to `listen.json` (so the CLI and tests find a hub started on port 0), and runs
//! one thread per listener and one per connection: at most `max_pending` not yet logged in
//! and `max_connections` authenticated (see [`crate::admission`]).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::ServerConfig;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Limits, PendingTicket};
use crate::api::Access;
use crate::console::rules::{RuleEngine, RuleSettings};
use crate::hub::Hub;
use crate::link::Link;
use crate::store::{Retention, Store};

/// How often the custom rules file is looked at for changes.
const RULES_POLL: Duration = Duration::from_secs(1);

/// The file in the data directory naming the addresses a running hub listens on.
pub const LISTEN_FILE: &str = "listen.json";

/// What `serve` is asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Database and certificates.
    pub data_dir: PathBuf,
    /// MQTT over TLS.
    pub listen: SocketAddr,
    /// MQTT over plain TCP, off unless asked for.
    pub plain: Option<SocketAddr>,
    /// The operator API; must be a loopback address.
    pub api: SocketAddr,
    /// The host name in connection strings (and SAS resources).
    pub hostname: String,
    /// Names the API accepts in `Host` besides the loopback ones (`serve --api-host`).
    pub api_hosts: Vec<String>,
    /// Authenticated MQTT sessions at once; more logins get CONNACK 3 (server unavailable).
    pub max_connections: usize,
    /// Connections not yet logged in, at once, and from one source address; see
    /// [`crate::admission`].
    pub max_pending: usize,
    /// Pending connections from one source (an IPv4 address or an IPv6 /64).
    pub max_pending_per_source: usize,
    /// At most one summary line of refused connections per this interval.
    pub limits_report_every: Duration,
    /// Messages kept; the oldest beyond are deleted.
    pub max_messages: u64,
    /// IoT Hub's service REST API over HTTPS (`None`: off, `serve --no-service`).
    pub service: Option<SocketAddr>,
    /// The console's retention limits.
    pub retention: Retention,
    /// The console's rule settings.
    pub rules: RuleSettings,
    /// How often the console checks for silent devices and prunes by age.
    pub console_every: Duration,
    /// The custom rules file (`serve --rules`), watched for changes.
    pub rules_file: Option<PathBuf>,
    /// Follow a fleet of MQTT-mode agents on a broker (`serve --mqtt-fleet`).
    pub fleet: Option<crate::fleet::FleetOptions>,
    /// POST alerts to a webhook (`serve --alert-webhook`).
    pub webhook: Option<crate::webhook::WebhookOptions>,
}

/// A started hub.
#[derive(Debug)]
pub struct Running {
    /// The CA certificate clients should trust.
    pub ca_file: PathBuf,
    /// The bound MQTT/TLS address.
    pub listen: SocketAddr,
    /// The bound plain MQTT address.
    pub plain: Option<SocketAddr>,
    /// The bound API address.
    pub api: SocketAddr,
    /// The bound service API address (HTTPS).
    pub service: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Blocks while the listeners run (until the process is stopped).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts the hub; returns once every listener is bound.
pub fn start(opts: &ServeOptions) -> anyhow::Result<Running> {
    if !opts.api.ip().is_loopback() {
        bail!(
            "the API address {} is not a loopback address: the API is only served on 127.0.0.0/8 or ::1",
            opts.api
        );
    }
    // The directory holds the CA key, the API token and every identity's key.
    crate::datadir::prepare(&opts.data_dir)?;
    let db = opts.data_dir.join("hub.db");
    crate::datadir::create_private_if_missing(&db)?;
    let store = Store::open(&db, opts.max_messages).with_context(|| format!("opening {}", db.display()))?;
    // SQLite has created the -wal and -shm files by now (with the database's mode).
    crate::datadir::tighten_private_files(&opts.data_dir)?;
    let token = crate::token::load_or_create(&opts.data_dir)?;
    let mut store = store;
    store.set_retention(opts.retention);
    ensure_policies(&mut store)?;
    let hub = Arc::new(Hub::with_rules(
        opts.hostname.clone(),
        store,
        RuleEngine::new(opts.rules),
    )?);
    let mut rules_file = None;
    if let Some(path) = &opts.rules_file {
        match crate::rules_file::RulesFile::open(path) {
            Ok((rules, file)) => {
                info!(file = %path.display(), groups = rules.groups.len(), "custom rules in force");
                hub.set_custom_rules(rules);
                rules_file = Some(file);
            }
            Err(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                bail!("custom rules {}:\n  {}", path.display(), lines.join("\n  "));
            }
        }
    }
    let ca_file = crate::tls::ensure_certificates(&opts.data_dir, &opts.hostname)?;
    let tls = crate::tls::server_config(&opts.data_dir)?;

    let bind = |addr: SocketAddr, what: &str| {
        TcpListener::bind(addr).with_context(|| format!("binding the {what} listener to {addr}"))
    };
    let mqtt = bind(opts.listen, "MQTT/TLS")?;
    let plain = opts.plain.map(|a| bind(a, "plain MQTT")).transpose()?;
    let api = bind(opts.api, "API")?;
    let service = opts.service.map(|a| bind(a, "service API (HTTPS)")).transpose()?;
    let service_addr = service.as_ref().map(TcpListener::local_addr).transpose()?;
    let listen = mqtt.local_addr()?;
    let plain_addr = plain.as_ref().map(TcpListener::local_addr).transpose()?;
    let api_addr = api.local_addr()?;

    let status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": opts.hostname,
        "mqtt": listen.to_string(),
        "plain": plain_addr.map(|a| a.to_string()),
        "api": api_addr.to_string(),
        "service": service_addr.map(|a| a.to_string()),
        "caFile": ca_file.display().to_string(),
        "pid": std::process::id(),
    });
    let listen_file = opts.data_dir.join(LISTEN_FILE);
    crate::datadir::write_private(&listen_file, &status.to_string())?;

    let admission = Admission::new(Limits {
        sessions: opts.max_connections,
        pending: opts.max_pending,
        pending_per_source: opts.max_pending_per_source,
        report_every: opts.limits_report_every,
    });
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .with_context(|| format!("starting the {name} thread"))
    };
    {
        let (hub, admission) = (hub.clone(), admission.clone());
        threads.push(spawn(
            "mqtt-tls",
            Box::new({
                let tls = tls.clone();
                move || accept_loop(&hub, mqtt, Some(tls), &admission)
            }),
        )?);
    }
    if let Some(plain) = plain {
        let (hub, admission) = (hub.clone(), admission.clone());
        threads.push(spawn(
            "mqtt-plain",
            Box::new(move || accept_loop(&hub, plain, None, &admission)),
        )?);
    }
    {
        let admission = admission.clone();
        threads.push(spawn(
            "limits-report",
            Box::new(move || loop {
                std::thread::sleep(admission.limits().report_every);
                admission.report();
            }),
        )?);
    }
    {
        let hub = hub.clone();
        let every = opts.console_every.max(Duration::from_millis(100));
        threads.push(spawn(
            "console",
            Box::new(move || loop {
                std::thread::sleep(every);
                let now = crate::hub::now_ms();
                if let Err(e) = hub.check_silence(now) {
                    warn!("console: silence check: {e}");
                }
                match hub.store().prune(now) {
                    Ok(0) => {}
                    Ok(n) => debug!(rows = n, "console: retention pruned rows"),
                    Err(e) => warn!("console: retention: {e}"),
                }
            }),
        )?);
    }
    if let Some(mut file) = rules_file {
        let hub = hub.clone();
        threads.push(spawn(
            "rules-file",
            Box::new(move || loop {
                std::thread::sleep(RULES_POLL);
                match file.poll() {
                    crate::rules_file::Reload::Unchanged => {}
                    crate::rules_file::Reload::Apply(rules) => {
                        info!(file = %file.path().display(), groups = rules.groups.len(), "custom rules reloaded");
                        hub.set_custom_rules(rules);
                    }
                    crate::rules_file::Reload::Keep(errors) => {
                        for e in errors {
                            warn!(file = %file.path().display(), "custom rules not reloaded (the last good ones stay): {e}");
                        }
                    }
                }
            }),
        )?);
    }
    if let Some(webhook) = &opts.webhook {
        crate::webhook::start(hub.clone(), webhook)?;
    }
    if let Some(fleet) = &opts.fleet {
        threads.push(crate::fleet::start(hub.clone(), fleet.clone())?);
    }
    if let (Some(listener), Some(bound)) = (service, service_addr) {
        let state = Arc::new(crate::service::ServiceState::new(hub.clone(), bound));
        let tls = tls.clone();
        threads.push(spawn(
            "service",
            Box::new(move || crate::service::serve(state, listener, tls)),
        )?);
    }
    {
        let hub = hub.clone();
        let access = Arc::new(Access::new(
            token,
            &opts.api_hosts,
            api_addr.ip(),
            opts.data_dir.clone(),
        ));
        threads.push(spawn(
            "api",
            Box::new(move || crate::api_server::serve(hub, api, status, access)),
        )?);
    }
    info!(mqtt = %listen, plain = ?plain_addr, api = %api_addr, service = ?service_addr, hostname = %opts.hostname, "hub listening");
    Ok(Running {
        ca_file,
        listen,
        plain: plain_addr,
        api: api_addr,
        service: service_addr,
        threads,
    })
}

/// Creates the shared access policies a hub has (each with new keys) that are missing: at
/// the first start, all of them.
fn ensure_policies(store: &mut Store) -> anyhow::Result<()> {
    let existing: Vec<String> = store.policies()?.into_iter().map(|(n, _, _)| n).collect();
    for (name, _) in crate::policy::POLICIES {
        if !existing.iter().any(|e| e == name) {
            let (primary, secondary) = crate::policy::new_policy_keys()
                .map_err(|_| anyhow::anyhow!("no random source for policy keys"))?;
            store.ensure_policy(name, &primary, &secondary)?;
            info!(policy = name, "created the shared access policy (`twinguard-hub policy show {name}` prints its connection string)");
        }
    }
    Ok(())
}

fn accept_loop(
    hub: &Arc<Hub>,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    admission: &Arc<Admission>,
) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                debug!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        // Refused connections are closed at once (dropped), counted and summarised.
        let Ok(ticket) = admission.admit(peer.ip(), &stream) else {
            continue;
        };
        let (hub, tls) = (hub.clone(), tls.clone());
        let spawned = std::thread::Builder::new()
            .name("mqtt-conn".into())
            .spawn(move || connection(&hub, stream, peer, tls, ticket));
        if let Err(e) = spawned {
            warn!("cannot start a connection thread: {e}");
        }
    }
}

fn connection(
    hub: &Hub,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    ticket: PendingTicket,
) {
    let _ = stream.set_nodelay(true);
    let link = match tls {
        Some(config) => match Link::tls(stream, config) {
            Ok(link) => link,
            Err(e) => {
                debug!(%peer, "TLS setup: {e}");
                return;
            }
        },
        None => Link::Plain(stream),
    };
    crate::session::serve(hub, link, peer, ticket);
}
