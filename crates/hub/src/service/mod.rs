//! IoT Hub's service REST API over HTTPS (hyper on tokio, TLS by rustls with the hub's own
//! certificate): what Microsoft's service SDKs and scripts written against IoT Hub call.
//! Every request is authenticated with a shared access policy's SAS token ([`crate::policy`]);
//! the routes are in [`routes`]. This module is the transport: connections and their limits.
//!
//! Limits before and around authentication: at most [`MAX_CONNECTIONS`] connections (more
//! are closed at once), [`HANDSHAKE_TIMEOUT`] for the TLS handshake, [`HEADER_TIMEOUT`] for a
//! request head (also the idle time allowed between keep-alive requests), a head of at most
//! [`MAX_HEAD_BYTES`], a body of at most [`MAX_BODY_BYTES`] read within [`BODY_TIMEOUT`]
//! (larger: 413, after reading at most [`MAX_DRAIN_BYTES`]), a connection lives at most [`CONNECTION_LIFETIME`], and a source that
//! failed authentication [`AUTH_FAILURE_LIMIT`] times within [`AUTH_FAILURE_WINDOW`] gets 429
//! for every request until that window ends.

pub mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tracing::{debug, warn};

use crate::admission::Source;
use crate::hub::Hub;

/// Connections at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Time for the TLS handshake, from the accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a request head to arrive (and idle time between keep-alive requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a request body to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Largest request head (hyper's read buffer).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body: a twin is at most 32 KB desired + 16 KB tags, so 128 KB is ample.
pub const MAX_BODY_BYTES: usize = 128 * 1024;
/// Most body bytes read (and discarded past [`MAX_BODY_BYTES`]) before a 413, so a client
/// sending a too-large body reads the answer; a body declared larger is refused unread.
pub const MAX_DRAIN_BYTES: usize = 4 * 1024 * 1024;
/// Failed authentications one source may have within [`AUTH_FAILURE_WINDOW`].
pub const AUTH_FAILURE_LIMIT: u32 = 20;
/// The window of [`AUTH_FAILURE_LIMIT`].
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Sources whose failures are remembered; past this, expired entries are forgotten, then
/// the whole table (a flood from many sources only resets its own counting).
const MAX_TRACKED_SOURCES: usize = 4096;

/// What the service routes share: the hub, the names the SAS resource may carry, and the
/// failed-authentication counts.
#[derive(Debug)]
pub struct ServiceState {
    hub: Arc<Hub>,
    /// The host name with and without the service port, lower case.
    hosts: Vec<String>,
    failures: Mutex<HashMap<Source, (Instant, u32)>>,
}

impl ServiceState {
    /// The state for a service API bound at `bound`, answering as the hub's host name.
    pub fn new(hub: Arc<Hub>, bound: SocketAddr) -> ServiceState {
        let host = hub.hostname().to_ascii_lowercase();
        let hosts = vec![host.clone(), format!("{host}:{}", bound.port())];
        ServiceState {
            hub,
            hosts,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The host names a SAS resource may be.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Source, (Instant, u32)>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip` has failed too often lately (429 until its window ends).
    pub fn locked_out(&self, ip: IpAddr) -> bool {
        self.failures()
            .get(&Source::of(ip))
            .is_some_and(|(start, n)| start.elapsed() < AUTH_FAILURE_WINDOW && *n >= AUTH_FAILURE_LIMIT)
    }

    /// Counts a failed authentication of `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        let mut failures = self.failures();
        if failures.len() >= MAX_TRACKED_SOURCES {
            failures.retain(|_, (start, _)| start.elapsed() < AUTH_FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED_SOURCES {
                failures.clear();
            }
        }
        let now = Instant::now();
        let entry = failures.entry(Source::of(ip)).or_insert((now, 0));
        if entry.0.elapsed() >= AUTH_FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 == AUTH_FAILURE_LIMIT {
            warn!(source = %ip, "service API: {AUTH_FAILURE_LIMIT} failed authentications within {AUTH_FAILURE_WINDOW:?}: answering 429 until the window ends");
        }
    }
}

/// Serves the service API on `listener` until the process ends (runs its own runtime).
pub fn serve(state: Arc<ServiceState>, listener: std::net::TcpListener, tls: Arc<ServerConfig>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("service")
        .enable_io()
        .enable_time()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            warn!("service API: cannot start its runtime: {e}");
            return;
        }
    };
    runtime.block_on(accept_loop(state, listener, tls));
}

async fn accept_loop(state: Arc<ServiceState>, listener: std::net::TcpListener, tls: Arc<ServerConfig>) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            warn!("service API: cannot use its listener: {e}");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                debug!("service accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "service API: {MAX_CONNECTIONS} connections open: closing a new one");
            continue;
        };
        let (state, acceptor) = (state.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _permit = permit;
            connection(state, acceptor, stream, peer).await;
        });
    }
}

async fn connection(
    state: Arc<ServiceState>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, "service TLS handshake: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "service TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(state, request, peer.ip()).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, "service connection: {e}"),
        Err(_) => debug!(%peer, "service connection reached its lifetime"),
    }
}

fn plain(status: u16, code: &str, message: &str) -> routes::Answer {
    routes::Answer::error(status, code, message)
}

/// Why a body was not read.
enum BodyError {
    TooLarge,
    Timeout,
    Broken(String),
}

/// Reads a body: kept up to [`MAX_BODY_BYTES`]; past that, read on and discarded up to
/// [`MAX_DRAIN_BYTES`] so the client, still sending, reads the 413 instead of a reset.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, BodyError> {
    let read = async {
        let mut kept = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                total = total.saturating_add(data.len());
                if total <= MAX_BODY_BYTES {
                    kept.extend_from_slice(&data);
                } else if total > MAX_DRAIN_BYTES {
                    break;
                }
            }
        }
        if total > MAX_BODY_BYTES {
            Err(BodyError::TooLarge)
        } else {
            Ok(kept)
        }
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

async fn respond(state: Arc<ServiceState>, request: Request<Incoming>, ip: IpAddr) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        plain(
            413,
            "RequestEntityTooLarge",
            &format!("the request body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let answer = if declared.is_some_and(|n| n > MAX_DRAIN_BYTES as u64) {
        too_large()
    } else {
        match read_body(body).await {
            Err(BodyError::TooLarge) => too_large(),
            Err(BodyError::Timeout) => {
                plain(408, "RequestTimeout", "the request body did not arrive in time")
            }
            Err(BodyError::Broken(e)) => plain(400, "BadRequest", &format!("reading the body: {e}")),
            Ok(body) => {
                let request = routes::ServiceRequest::from_parts(&parts, body, ip);
                let state = state.clone();
                tokio::task::spawn_blocking(move || routes::handle(&state, &request))
                    .await
                    .unwrap_or_else(|e| {
                        warn!("service API: a request handler failed: {e}");
                        plain(500, "ServerError", "the request failed")
                    })
            }
        }
    };
    answer.into_response()
}
