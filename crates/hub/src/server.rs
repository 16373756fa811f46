//! `twinguard-hub serve`: opens the data directory (database, certificates), binds the MQTT
//! listener (TLS), the optional plain-TCP listener and the loopback API, writes the bound
//! addresses to `listen.json` (so the CLI and tests find a hub started on port 0), and runs
//! one thread per listener and one per connection, at most `max_connections` at once.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::ServerConfig;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::link::Link;
use crate::store::Store;

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
    /// MQTT connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Messages kept; the oldest beyond are deleted.
    pub max_messages: u64,
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

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The directory holds the CA key and every identity's key.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Starts the hub; returns once every listener is bound.
pub fn start(opts: &ServeOptions) -> anyhow::Result<Running> {
    if !opts.api.ip().is_loopback() {
        bail!("the API address {} is not a loopback address: the API has no authentication, so it is only served on 127.0.0.0/8 or ::1", opts.api);
    }
    create_private_dir(&opts.data_dir)?;
    let store = Store::open(&opts.data_dir.join("hub.db"), opts.max_messages)
        .with_context(|| format!("opening {}", opts.data_dir.join("hub.db").display()))?;
    let hub = Arc::new(Hub::new(opts.hostname.clone(), store)?);
    let ca_file = crate::tls::ensure_certificates(&opts.data_dir, &opts.hostname)?;
    let tls = crate::tls::server_config(&opts.data_dir)?;

    let bind = |addr: SocketAddr, what: &str| {
        TcpListener::bind(addr).with_context(|| format!("binding the {what} listener to {addr}"))
    };
    let mqtt = bind(opts.listen, "MQTT/TLS")?;
    let plain = opts.plain.map(|a| bind(a, "plain MQTT")).transpose()?;
    let api = bind(opts.api, "API")?;
    let listen = mqtt.local_addr()?;
    let plain_addr = plain.as_ref().map(TcpListener::local_addr).transpose()?;
    let api_addr = api.local_addr()?;

    let status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": opts.hostname,
        "mqtt": listen.to_string(),
        "plain": plain_addr.map(|a| a.to_string()),
        "api": api_addr.to_string(),
        "caFile": ca_file.display().to_string(),
        "pid": std::process::id(),
    });
    let listen_file = opts.data_dir.join(LISTEN_FILE);
    let tmp = listen_file.with_extension("tmp");
    fs::write(&tmp, status.to_string())
        .and_then(|()| fs::rename(&tmp, &listen_file))
        .with_context(|| format!("writing {}", listen_file.display()))?;

    let active = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .with_context(|| format!("starting the {name} thread"))
    };
    {
        let (hub, active, max) = (hub.clone(), active.clone(), opts.max_connections);
        threads.push(spawn(
            "mqtt-tls",
            Box::new(move || accept_loop(&hub, mqtt, Some(tls), &active, max)),
        )?);
    }
    if let Some(plain) = plain {
        let (hub, active, max) = (hub.clone(), active.clone(), opts.max_connections);
        threads.push(spawn(
            "mqtt-plain",
            Box::new(move || accept_loop(&hub, plain, None, &active, max)),
        )?);
    }
    {
        let hub = hub.clone();
        threads.push(spawn(
            "api",
            Box::new(move || crate::api::serve(hub, api, status)),
        )?);
    }
    info!(mqtt = %listen, plain = ?plain_addr, api = %api_addr, hostname = %opts.hostname, "hub listening");
    Ok(Running {
        ca_file,
        listen,
        plain: plain_addr,
        api: api_addr,
        threads,
    })
}

/// Decrements the connection count when a connection thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    hub: &Arc<Hub>,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    active: &Arc<AtomicUsize>,
    max: usize,
) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            warn!("connection limit of {max} reached: closing a new connection");
            continue;
        }
        let slot = Slot(active.clone());
        let (hub, tls) = (hub.clone(), tls.clone());
        let spawned = std::thread::Builder::new()
            .name("mqtt-conn".into())
            .spawn(move || {
                let _slot = slot;
                connection(&hub, stream, tls);
            });
        if let Err(e) = spawned {
            warn!("cannot start a connection thread: {e}");
        }
    }
}

fn connection(hub: &Hub, stream: TcpStream, tls: Option<Arc<ServerConfig>>) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
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
    crate::session::serve(hub, link, peer);
}
