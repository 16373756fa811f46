//! The operator API's transport: HTTP/1.1 by hyper on a tokio runtime of its own, one request
//! per connection (`Connection: close`). The routes and access checks are [`crate::api`]'s;
//! this module keeps slow clients from making the API refuse everyone, in three pools:
//!
//! - *open*: at most [`MAX_CONNECTIONS`] connections in all (more are closed at accept);
//! - *reading*: at most [`MAX_READING`] connections whose request is still arriving, each
//!   with [`REQUEST_TIMEOUT`] from the accept to send all of it (else 408 and closed); when
//!   the pool is full, a new connection closes the oldest, which is the slow one, since the
//!   CLI sends its request at once;
//! - *answering*: at most [`MAX_API_REQUESTS`] requests answered at once (more: 503);
//! - *long-polls*: `messages` requests waiting for news have their own budget
//!   ([`crate::api::MAX_LONG_POLLS`]; a newer one ends the oldest wait early).
//!
//! Requests are answered on tokio's blocking threads (the store is SQLite behind a mutex, and
//! a long-poll waits on the hub's condition variable).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify, Semaphore};
use tracing::{debug, warn};

use crate::api::{Access, Answer, LongPolls, Reply};
use crate::http::{request_from, HttpError, MAX_REQUEST_BODY};
use crate::hub::Hub;
use crate::web::{WebReply, SECURITY_HEADERS};

/// Requests answered at once (after they were read); more get 503.
pub const MAX_API_REQUESTS: usize = 16;
/// Connections whose request is still arriving; a newer one closes the oldest past this.
pub const MAX_READING: usize = 32;
/// Time a client has to send its whole request, from the TCP accept.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new connection may take to send its first bytes before it counts in the
/// reading pool.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(50);
/// Connections at once, in every state; a new one past this is closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Blocking threads for answers: the answering pool, the long-polls, and room to spare.
const MAX_BLOCKING_THREADS: usize = 128;

/// What every connection of the API shares.
#[derive(Debug)]
struct Shared {
    hub: Arc<Hub>,
    status: Value,
    access: Arc<Access>,
    polls: LongPolls,
    answering: Semaphore,
    /// Every open connection holds one.
    connections: Arc<Semaphore>,
    /// Connections still sending their request, oldest first, each with what closes it.
    reading: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next: AtomicU64,
}

impl Shared {
    fn reading(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Notify>)>> {
        self.reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enters the reading pool, closing its oldest member when it is full.
    fn start_reading(&self) -> (u64, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let mut reading = self.reading();
        while reading.len() >= MAX_READING {
            match reading.pop_front() {
                Some((_, oldest)) => oldest.notify_one(),
                None => break,
            }
        }
        reading.push_back((id, close.clone()));
        (id, close)
    }

    fn done_reading(&self, id: u64) {
        self.reading().retain(|(i, _)| *i != id);
    }
}

/// Serves the API on `listener` until the process ends. `status` is the body of
/// `/v1/status`.
pub fn serve(hub: Arc<Hub>, listener: TcpListener, status: Value, access: Arc<Access>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("api")
        .enable_io()
        .enable_time()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            warn!("API: cannot start its runtime: {e}");
            return;
        }
    };
    let shared = Arc::new(Shared {
        hub,
        status,
        access,
        polls: LongPolls::default(),
        answering: Semaphore::new(MAX_API_REQUESTS),
        connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        reading: Mutex::new(VecDeque::new()),
        next: AtomicU64::new(1),
    });
    runtime.block_on(accept_loop(shared, listener));
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            warn!("API: cannot use its listener: {e}");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            debug!(%peer, "API: {MAX_CONNECTIONS} connections open: closing a new one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(shared, stream, peer).await;
        });
    }
}

/// A plain answer written straight to the socket, for a client that did not send its request
/// in time (hyper, still waiting for it, cannot answer).
fn write_timeout_answer(socket: &std::net::TcpStream) {
    use std::io::Write as _;
    let body = json!({"error": "request not received in time"}).to_string();
    let answer = format!(
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer takes these few bytes at once; if not, the client is gone.
    let mut socket = socket;
    let _ = socket.write_all(answer.as_bytes());
    let _ = socket.shutdown(Shutdown::Both);
}

async fn connection(shared: Arc<Shared>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let accepted = tokio::time::Instant::now();
    // A second handle on the socket, to answer 408 or close it while hyper holds the stream.
    let (stream, handle) = match stream.into_std().and_then(|s| {
        let handle = s.try_clone()?;
        Ok((tokio::net::TcpStream::from_std(s)?, handle))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(%peer, "API connection: {e}");
            return;
        }
    };
    // The pool is entered once the request's first bytes are in (or after FIRST_BYTES_WAIT
    // without any), right before hyper reads them: a request sent at once is then read in the
    // same turn and leaves the pool at once, so a burst of quick clients accepted together
    // never pushes itself out; only clients still sending stay in it.
    let _ = tokio::time::timeout(FIRST_BYTES_WAIT, stream.readable()).await;
    let (id, close) = shared.start_reading();
    let (read_tx, read_rx) = oneshot::channel::<()>();
    let read_tx = Arc::new(Mutex::new(Some(read_tx)));
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request| {
            let (shared, read_tx) = (shared.clone(), read_tx.clone());
            async move { Ok::<_, Infallible>(respond(shared, request, read_tx).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false).max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep_until(accepted + REQUEST_TIMEOUT);
    tokio::pin!(deadline);
    tokio::select! {
        // In this order: a request already in the socket is read (and leaves the pool) at the
        // first poll, before any deadline or eviction is looked at.
        biased;
        result = &mut conn => {
            shared.done_reading(id);
            if let Err(e) = result {
                debug!(%peer, "API connection: {e}");
            }
        }
        _ = read_rx => {
            // The request is in: answering it may take long (a long-poll), without a deadline.
            shared.done_reading(id);
            if let Err(e) = conn.await {
                debug!(%peer, "API connection: {e}");
            }
        }
        () = &mut deadline => {
            shared.done_reading(id);
            debug!(%peer, "API: request not received within {REQUEST_TIMEOUT:?}");
            write_timeout_answer(&handle);
        }
        () = close.notified() => {
            debug!(%peer, "API: {MAX_READING} connections still sending: closing the oldest");
            let _ = handle.shutdown(Shutdown::Both);
        }
    }
}

fn reply_into_response(reply: Reply) -> hyper::Response<Full<Bytes>> {
    match reply {
        Reply::Json(answer) => into_response(answer),
        Reply::Web(web) => web_response(web),
    }
}

fn web_response(web: WebReply) -> hyper::Response<Full<Bytes>> {
    use hyper::header::{HeaderName, HeaderValue};
    let mut response = hyper::Response::new(Full::new(Bytes::from(web.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(web.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(web.content_type),
    );
    for (name, value) in SECURITY_HEADERS {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    for (name, value) in web.headers {
        // Our own values (a path, a cookie of base64url): always valid header text.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    response
}

fn into_response((status, body): Answer) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    if status == 401 {
        // A 401 names the scheme it wants.
        headers.insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"twinguard-hub\""),
        );
    }
    response
}

fn error(status: u16, message: impl std::fmt::Display) -> Answer {
    (status, json!({ "error": message.to_string() }))
}

async fn respond(
    shared: Arc<Shared>,
    request: hyper::Request<Incoming>,
    read_tx: Arc<Mutex<Option<oneshot::Sender<()>>>>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let headers: Result<Vec<(String, String)>, HttpError> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().map_err(|_| HttpError::Bad {
                status: 400,
                message: "a header value is not visible ASCII".into(),
            })?;
            Ok((name.as_str().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let parsed = headers.and_then(|headers| request_from(parts.method.as_str(), &target, headers));
    let mut request = match parsed {
        Ok(r) => r,
        Err(HttpError::Bad { status, message }) => return into_response(error(status, message)),
        Err(HttpError::Io(e)) => return into_response(error(400, e)),
    };
    let body = match http_body_util::Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => {
            let status = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                413
            } else {
                400
            };
            return into_response(error(status, format!("reading the body: {e}")));
        }
    };
    request.body = body;
    if let Some(tx) = read_tx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        let _ = tx.send(());
    }
    let answer = tokio::task::spawn_blocking(move || {
        let shared = &*shared;
        crate::api::exchange(
            &shared.hub,
            &request,
            &shared.status,
            &shared.access,
            &shared.polls,
            || shared.answering.try_acquire().ok(),
        )
    })
    .await
    .unwrap_or_else(|e| {
        warn!("API: a request handler failed: {e}");
        Reply::Json(error(500, "the request failed"))
    });
    reply_into_response(answer)
}
