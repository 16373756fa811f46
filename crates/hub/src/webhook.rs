//! Alert webhook (`serve --alert-webhook https://... --alert-webhook-secret-file FILE`): each
//! new alert and each alert state change is POSTed as JSON to the URL.
//!
//! - Body: `{"event": "alert.raised" | "alert.state", "alert": {...}}` (the alert as
//!   `/v1/alerts` prints it).
//! - Headers: `X-Twinguard-Timestamp: <Unix seconds>` and `X-Twinguard-Signature:
//!   sha256=<hex HMAC-SHA256 over "<timestamp>.<body>" with the secret>`. A receiver
//!   recomputes the MAC over the timestamp header, a dot and the raw body, compares in
//!   constant time, and refuses timestamps more than a few minutes old: a captured request
//!   cannot be replayed later, nor its timestamp changed.
//! - HTTPS only, the certificate verified against the system's roots plus
//!   `--alert-webhook-ca FILE` (the client configuration of `twinguard_os::tls`).
//! - A watcher reads the alerts changed since its last look (every second) and queues what
//!   is new: a bounded queue ([`QUEUE_CAPACITY`]); when it is full the newest is dropped and
//!   counted. One sender thread POSTs in order; a failure (network, TLS, a 5xx, 408 or 429) is
//!   retried after 0.5 s doubling to 30 s, at most [`ATTEMPTS`] attempts, then counted as
//!   failed with a one-line warning; a certificate that does not verify and other 4xx fail at
//!   once.
//! - Counters (`delivered`, `retries`, `failed`, `dropped`, the last error) at `GET
//!   /v1/statistics` (`alertWebhook`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::{json, Value};
use tracing::{info, warn};
use twinguard_os::safefile::{read_secret, MAX_SECRET_BYTES};
use twinguard_os::tls::{client_config, TlsOptions};

use crate::hub::{now_ms, Hub};
use crate::store::{AlertQuery, AlertRecord};

/// Deliveries waiting at most.
pub const QUEUE_CAPACITY: usize = 1024;
/// Attempts per delivery.
pub const ATTEMPTS: u32 = 8;
/// How often the watcher looks for changed alerts.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Bound of one request (connect, TLS, send, status line).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Alert states remembered (to see state changes); beyond, the oldest are forgotten.
const MAX_REMEMBERED: usize = 100_000;

/// An https URL: host, port, path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address (no brackets).
    pub host: String,
    /// Port (default 443).
    pub port: u16,
    /// Path and query (at least `/`).
    pub path: String,
}

impl WebhookUrl {
    /// Parses `https://host[:port][/path]`; one line naming the flag when it is not one.
    pub fn parse(url: &str) -> anyhow::Result<WebhookUrl> {
        let Some(rest) = url.strip_prefix("https://") else {
            bail!("--alert-webhook {url:?}: expected https://host[:port]/path (TLS is required)");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            bail!("--alert-webhook {url:?}: credentials in the URL are not accepted");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("--alert-webhook {url:?}: unclosed ["))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow::anyhow!("--alert-webhook {url:?}: {p:?} is not a port"))?,
        };
        if host.is_empty() || path.chars().any(|c| c.is_control() || c == ' ') {
            bail!("--alert-webhook {url:?}: no host, or a path with spaces or control characters");
        }
        Ok(WebhookUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// The checked webhook settings.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Where.
    pub url: WebhookUrl,
    /// The file holding the HMAC secret (mode 0600).
    pub secret_file: PathBuf,
    /// A private CA trusted besides the system's roots.
    pub ca: Option<PathBuf>,
}

/// The webhook's counters.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Alerts delivered (a 2xx answer).
    pub delivered: AtomicU64,
    /// Attempts after a failed one.
    pub retries: AtomicU64,
    /// Deliveries given up after their attempts, or refused with a 4xx.
    pub failed: AtomicU64,
    /// Deliveries dropped because the queue was full.
    pub dropped: AtomicU64,
    /// The last error, one line.
    pub last_error: Mutex<Option<String>>,
}

impl WebhookStats {
    /// The counters as JSON (`GET /v1/statistics`).
    pub fn to_json(&self, url: &WebhookUrl) -> Value {
        json!({
            "url": format!("https://{}:{}{}", url.host, url.port, url.path),
            "delivered": self.delivered.load(Ordering::Relaxed),
            "retries": self.retries.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "queueCapacity": QUEUE_CAPACITY,
            "lastError": self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        })
    }
}

/// The running webhook, for the API.
#[derive(Debug)]
pub struct Webhook {
    /// Where it posts.
    pub url: WebhookUrl,
    /// Its counters.
    pub stats: Arc<WebhookStats>,
}

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"). Pure.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::from("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Reads the secret (refused when group or others may read the file), builds TLS, and
/// starts the watcher and the sender.
pub fn start(hub: Arc<Hub>, options: &WebhookOptions) -> anyhow::Result<Webhook> {
    let mut secret =
        read_secret(&options.secret_file, MAX_SECRET_BYTES).context("--alert-webhook-secret-file")?;
    while matches!(secret.last(), Some(b'\n' | b'\r')) {
        secret.pop();
    }
    if secret.is_empty() {
        bail!(
            "--alert-webhook-secret-file {}: empty",
            options.secret_file.display()
        );
    }
    let tls = client_config(&TlsOptions {
        ca: options.ca.clone(),
        client_auth: None,
    })
    .map_err(|e| anyhow::anyhow!("--alert-webhook-ca: {e}"))?;
    let stats = Arc::new(WebhookStats::default());
    let (queue, deliveries) = sync_channel::<Vec<u8>>(QUEUE_CAPACITY);
    {
        let (stats, url) = (Arc::clone(&stats), options.url.clone());
        std::thread::Builder::new()
            .name("webhook-send".into())
            .spawn(move || send_loop(&deliveries, &url, &tls, &secret, &stats))
            .context("starting the webhook thread")?;
    }
    {
        let stats = Arc::clone(&stats);
        let hub = Arc::clone(&hub);
        std::thread::Builder::new()
            .name("webhook-watch".into())
            .spawn(move || watch(&hub, &queue, &stats))
            .context("starting the webhook thread")?;
    }
    {
        let (stats, url) = (Arc::clone(&stats), options.url.clone());
        hub.add_statistics(
            "alertWebhook",
            crate::hub::Statistics(Arc::new(move || stats.to_json(&url))),
        );
    }
    info!(url = %format!("https://{}:{}{}", options.url.host, options.url.port, options.url.path), "alert webhook on");
    Ok(Webhook {
        url: options.url.clone(),
        stats,
    })
}

/// What the watcher remembers of alerts: the highest id seen, and each known alert's state.
#[derive(Debug, Default)]
pub struct Seen {
    max_id: i64,
    states: HashMap<i64, String>,
}

impl Seen {
    /// What to post about `alert`, if anything (new, or in a new state). Pure.
    pub fn event_for(&mut self, alert: &AlertRecord) -> Option<&'static str> {
        let event = if alert.id > self.max_id {
            self.max_id = alert.id;
            Some("alert.raised")
        } else {
            match self.states.get(&alert.id) {
                Some(state) if *state == alert.state => None,
                Some(_) => Some("alert.state"),
                // Known before the hub started (or forgotten): only a change is news, and
                // this one cannot be told from no change.
                None => None,
            }
        };
        if alert.state == "closed" {
            self.states.remove(&alert.id);
        } else {
            if self.states.len() >= MAX_REMEMBERED {
                if let Some(oldest) = self.states.keys().min().copied() {
                    self.states.remove(&oldest);
                }
            }
            self.states.insert(alert.id, alert.state.clone());
        }
        event
    }
}

fn watch(hub: &Hub, queue: &SyncSender<Vec<u8>>, stats: &WebhookStats) {
    let mut seen = Seen::default();
    // Alerts from before the start are not news: remember them without posting.
    let mut since = now_ms();
    if let Ok(existing) = hub.store().alerts(&AlertQuery {
        state: Some("all".into()),
        limit: MAX_REMEMBERED,
        ..AlertQuery::default()
    }) {
        for a in &existing {
            let _ = seen.event_for(a);
        }
    }
    loop {
        std::thread::sleep(WATCH_EVERY);
        // A little overlap: a change stamped just before the last look is seen twice and
        // posted once (`Seen` tells).
        let from = since - 2_000;
        since = now_ms();
        let changed = match hub.store().alerts(&AlertQuery {
            state: Some("all".into()),
            changed_since_ms: Some(from),
            limit: 10_000,
            ..AlertQuery::default()
        }) {
            Ok(c) => c,
            Err(e) => {
                warn!("alert webhook: reading alerts: {e}");
                continue;
            }
        };
        for alert in &changed {
            let Some(event) = seen.event_for(alert) else {
                continue;
            };
            let body = json!({"event": event, "alert": crate::api::alert_json(alert)}).to_string();
            match queue.try_send(body.into_bytes()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    let n = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(
                        alert = alert.id,
                        dropped = n,
                        "alert webhook: queue full ({QUEUE_CAPACITY}): dropped"
                    );
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    retry: bool,
}

fn send_loop(
    deliveries: &Receiver<Vec<u8>>,
    url: &WebhookUrl,
    tls: &Arc<ClientConfig>,
    secret: &[u8],
    stats: &WebhookStats,
) {
    while let Ok(body) = deliveries.recv() {
        let mut attempt = 0;
        loop {
            match post(url, tls, secret, &body) {
                Ok(()) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(f) => {
                    if let Ok(mut last) = stats.last_error.lock() {
                        *last = Some(f.message.clone());
                    }
                    attempt += 1;
                    if !f.retry || attempt >= ATTEMPTS {
                        let n = stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
                        warn!(
                            failed = n,
                            "alert webhook: not delivered after {attempt} attempt(s): {}", f.message
                        );
                        break;
                    }
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = Duration::from_millis(500)
                        .saturating_mul(1 << (attempt - 1).min(6))
                        .min(Duration::from_secs(30));
                    warn!(attempt, ?delay, "alert webhook: {}; retrying", f.message);
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

fn post(url: &WebhookUrl, tls: &Arc<ClientConfig>, secret: &[u8], body: &[u8]) -> Result<(), Failure> {
    let retry = |message: String| Failure { message, retry: true };
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| retry(format!("resolving {}: {e}", url.host)))?
        .next()
        .ok_or_else(|| retry(format!("{}: no address", url.host)))?;
    let socket = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .map_err(|e| retry(format!("connecting to {addr}: {e}")))?;
    let _ = socket.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = socket.set_write_timeout(Some(REQUEST_TIMEOUT));
    let name = ServerName::try_from(url.host.clone()).map_err(|e| Failure {
        message: format!("{:?}: {e}", url.host),
        retry: false,
    })?;
    let conn = ClientConnection::new(Arc::clone(tls), name).map_err(|e| retry(format!("TLS: {e}")))?;
    let mut stream = StreamOwned::new(conn, socket);
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: twinguard-hub/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Twinguard-Timestamp: {timestamp}\r\nX-Twinguard-Signature: {}\r\nConnection: close\r\n\r\n",
        url.path,
        env!("CARGO_PKG_VERSION"),
        body.len(),
        signature(secret, timestamp, body)
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(|e| {
            // A certificate that does not verify will not verify on the next attempt either.
            let bad_certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|t| matches!(t, rustls::Error::InvalidCertificate(_)));
            Failure {
                message: format!("https://{host}: {e}"),
                retry: !bad_certificate,
            }
        })?;
    // The status line is all we need (bounded read).
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(retry(format!("https://{host}: {e}"))),
        }
    }
    let line = String::from_utf8_lossy(&answer);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| retry(format!("https://{host}: no HTTP status in the answer")))?;
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(retry(format!("https://{host}: HTTP {status}"))),
        _ => Err(Failure {
            message: format!("https://{host}: HTTP {status} (not retried)"),
            retry: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = WebhookUrl::parse("https://hooks.example:8443/a/b?x=1").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("hooks.example", 8443, "/a/b?x=1")
        );
        let u = WebhookUrl::parse("https://[::1]/").expect("valid");
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        for bad in [
            "http://h/",
            "https://",
            "https://u:p@h/",
            "https://h:0/",
            "https://h/a b",
        ] {
            let e = WebhookUrl::parse(bad).expect_err(bad).to_string();
            assert!(e.starts_with("--alert-webhook") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 is over "what do ya want for nothing?": split it as
        // timestamp "what do ya want for nothing?" would not be a number, so check against
        // ring directly over the same bytes instead.
        let s = signature(b"key", 1_700_000_000, b"{\"a\":1}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key");
        let tag = ring::hmac::sign(&key, b"1700000000.{\"a\":1}");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, format!("sha256={hex}"));
        assert_ne!(s, signature(b"key", 1_700_000_001, b"{\"a\":1}"));
    }

    #[test]
    fn new_alerts_and_state_changes_are_news_once() {
        let id = twinguard_core::iothub::identity::IdentityId::new("d", None).expect("id");
        let alert = |n: i64, state: &str| AlertRecord {
            id: n,
            rule: "r".into(),
            severity: "high".into(),
            identity: id.clone(),
            key: "k".into(),
            state: state.into(),
            first_ms: 0,
            last_ms: 0,
            count: 1,
            evidence: Value::Null,
            changed_ms: 0,
        };
        let mut seen = Seen::default();
        assert_eq!(seen.event_for(&alert(1, "open")), Some("alert.raised"));
        assert_eq!(
            seen.event_for(&alert(1, "open")),
            None,
            "a count change is not news"
        );
        assert_eq!(seen.event_for(&alert(1, "acknowledged")), Some("alert.state"));
        assert_eq!(seen.event_for(&alert(1, "closed")), Some("alert.state"));
        assert_eq!(seen.event_for(&alert(1, "closed")), None);
        assert_eq!(seen.event_for(&alert(2, "closed")), Some("alert.raised"));
    }
}
