//! A small synchronous MQTT 3.1.1 client for the MQTT and IoT Hub modes, on the
//! `twinguard-mqtt` codec.
//!
//! One IO thread per client owns the connection: it connects (TCP or TLS) with a last will and
//! keep-alive, subscribes and waits for the SUBACK, publishes the "birth" messages (retained
//! state to restore on every connection), then serves: it writes what callers publish, reads
//! and acknowledges what the broker sends, pings when idle, and reconnects with exponential
//! backoff and jitter when the connection is lost. It sleeps in `poll(2)` on the socket and a
//! wake-up socket, so an idle connection wakes only for its keep-alive.
//!
//! What blocks where: [`MqttClient::publish`] (called by the run loop) returns at once when
//! there is no connection, else waits for the PUBACK up to its timeout. The IO thread never
//! blocks on a caller: incoming publishes go into a bounded channel with `try_send`; when it is
//! full the publish is dropped, counted, and [`MqttClient::take_overflow`] tells the owner to
//! re-synchronise (re-subscribe for retained state, or GET the twin).
//!
//! The agent's sessions are clean (`clean_session = 1`): on reconnection nothing in flight is
//! resumed. A publish whose PUBACK did not arrive fails, and its message stays in the agent's
//! cache to be sent again - at-least-once, never lost.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tracing::{debug, info, warn};
use twinguard_mqtt::{
    ConnectReturnCode, EncodeError, LastWill, Packet, PacketBuffer, ProtocolError, Publish, QoS, Subscribe,
    SubscribeReturnCode,
};

use super::net::{poll, wait_fd, ReadStatus, Stream, WakeSender, Waker};
use crate::backoff::Backoff;

/// A connection that stayed up this long resets the reconnect backoff; a broker that accepts
/// and drops at once is retried ever more slowly.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// At most this many of our publishes wait for a PUBACK; more means the broker stopped
/// answering, and the connection is restarted.
const MAX_IN_FLIGHT: usize = 64;
/// Room in the command queue (callers publish one message at a time; this is slack).
const COMMAND_CAPACITY: usize = 16;
/// How long a clean stop waits for the farewell message's PUBACK.
const FAREWELL_TIMEOUT: Duration = Duration::from_millis(700);

/// Bytes that must never be logged (a password, a SAS token).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// User name and password for one connection.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// The credentials expire after this long (a SAS token): the client reconnects with fresh
    /// ones before then.
    pub renew_after: Option<Duration>,
}

/// Gives the credentials for each connection attempt (fresh SAS tokens for IoT Hub).
pub trait Login: Send + fmt::Debug {
    /// Credentials for the next connection, or why there are none.
    fn credentials(&mut self) -> Result<Credentials, String>;
}

/// Credentials that never change (a broker user name and password).
#[derive(Debug)]
pub struct StaticLogin(pub Credentials);

impl Login for StaticLogin {
    fn credentials(&mut self) -> Result<Credentials, String> {
        Ok(self.0.clone())
    }
}

/// A message to publish at QoS 1.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Body.
    pub payload: Vec<u8>,
    /// Retained.
    pub retain: bool,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("retain", &self.retain)
            .finish()
    }
}

/// Everything a client needs.
#[derive(Debug)]
pub struct ClientOptions {
    /// Broker host name or address (also the TLS server name).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS configuration; `None` = plain TCP.
    pub tls: Option<Arc<ClientConfig>>,
    /// MQTT client identifier.
    pub client_id: String,
    /// Keep-alive interval (whole seconds are sent; 0 = off).
    pub keep_alive: Duration,
    /// Start a fresh session on every connection. The agent always does (what was in flight
    /// stays in its cache); a persistent session (`false`) suits observers that must not miss
    /// QoS 1 messages published while they were away.
    pub clean_session: bool,
    /// Last will.
    pub will: Option<LastWill>,
    /// Subscribed (and SUBACK-confirmed) on every connection before it counts as up.
    pub subscriptions: Vec<(String, QoS)>,
    /// Published (QoS 1) on every connection once subscribed; [`MqttClient::set_birth`]
    /// replaces them. Given here so that even the first connection has them.
    pub birth: Vec<Message>,
    /// Credentials, asked for at each attempt.
    pub login: Box<dyn Login>,
    /// Largest packet accepted from the broker; a larger one ends the connection.
    pub max_incoming_packet: usize,
    /// Bound of one attempt: TCP connect, TLS handshake, CONNACK and SUBACK.
    pub connect_timeout: Duration,
    /// Delays between attempts.
    pub backoff: Backoff,
    /// Capacity of the incoming-publish channel.
    pub incoming_capacity: usize,
}

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// There is no connection now (the IO thread is reconnecting).
    #[error("not connected to {0}")]
    NotConnected(String),
    /// The broker did not acknowledge in time.
    #[error("no PUBACK from {endpoint} within {timeout:?}")]
    Timeout {
        /// The broker.
        endpoint: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The connection was lost before the acknowledgement.
    #[error("the connection to {0} was lost before the PUBACK")]
    ConnectionLost(String),
    /// Too many publishes in flight or queued.
    #[error("the MQTT client is busy")]
    Busy,
    /// The client was stopped.
    #[error("the MQTT client has stopped")]
    Stopped,
    /// The message cannot be encoded (e.g. a topic with wildcards).
    #[error("cannot encode the message: {0}")]
    Encode(#[from] EncodeError),
}

/// Why one connection ended (or never started).
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the broker refused the connection: {}", .0.describe())]
    Refused(ConnectReturnCode),
    #[error("{0}")]
    Other(String),
    /// The credentials are due for renewal: reconnect at once.
    #[error("renewing credentials")]
    Renew,
    /// The owner stopped the client.
    #[error("stopped")]
    Stop,
}

type Reply = SyncSender<Result<(), ClientError>>;

enum Command {
    Publish { message: Message, reply: Reply },
}

#[derive(Debug, Default)]
struct Shared {
    connected: AtomicBool,
    connections: AtomicU64,
    dropped_incoming: AtomicU64,
    overflow: AtomicBool,
    resubscribe: AtomicBool,
    stop: AtomicBool,
    farewell: Mutex<Option<Message>>,
    birth: Mutex<Vec<Message>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The handle the transports hold; dropping it stops the IO thread.
#[derive(Debug)]
pub struct MqttClient {
    commands: SyncSender<CommandBox>,
    wake: WakeSender,
    incoming: Receiver<Publish>,
    shared: Arc<Shared>,
    done: Receiver<()>,
    endpoint: String,
    stopped: bool,
}

/// `Command` behind a Debug-able box (replies are channels).
struct CommandBox(Command);

impl fmt::Debug for CommandBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Command::Publish { message, .. } => write!(f, "Publish({message:?})"),
        }
    }
}

impl MqttClient {
    /// Starts the IO thread, which connects in the background.
    pub fn start(mut options: ClientOptions) -> io::Result<MqttClient> {
        let (commands, command_rx) = sync_channel(COMMAND_CAPACITY);
        let (incoming_tx, incoming) = sync_channel(options.incoming_capacity.max(1));
        let (done_tx, done) = sync_channel(1);
        let waker = Waker::new()?;
        let wake = waker.sender()?;
        let shared = Arc::new(Shared::default());
        *lock(&shared.birth) = std::mem::take(&mut options.birth);
        let endpoint = format!("{}:{}", options.host, options.port);
        let worker = Worker {
            options,
            commands: command_rx,
            waker,
            incoming: incoming_tx,
            shared: Arc::clone(&shared),
            next_id: 0,
            endpoint: endpoint.clone(),
        };
        std::thread::Builder::new()
            .name("mqtt-io".into())
            .spawn(move || {
                worker.run();
                let _ = done_tx.send(());
            })?;
        Ok(MqttClient {
            commands,
            wake,
            incoming,
            shared,
            done,
            endpoint,
            stopped: false,
        })
    }

    /// `host:port`, for logs.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Publishes at QoS 1 and waits for the PUBACK up to `timeout`. Fails at once when there
    /// is no connection.
    pub fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        if self.stopped {
            return Err(ClientError::Stopped);
        }
        if !self.is_connected() {
            return Err(ClientError::NotConnected(self.endpoint.clone()));
        }
        let (reply, answer) = sync_channel(1);
        let message = Message {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            retain,
        };
        match self
            .commands
            .try_send(CommandBox(Command::Publish { message, reply }))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ClientError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ClientError::Stopped),
        }
        self.wake.wake();
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::ConnectionLost(self.endpoint.clone())),
        }
    }

    /// Sets the messages published (QoS 1) right after every future connection is up - the
    /// retained state the broker must hold even after a restart that lost it.
    pub(crate) fn set_birth(&self, messages: Vec<Message>) {
        *lock(&self.shared.birth) = messages;
    }

    /// Subscribes again to every subscription: a broker then re-sends the retained messages
    /// (MQTT-3.8.4-3). Used after incoming publishes were dropped.
    pub(crate) fn resubscribe(&self) {
        self.shared.resubscribe.store(true, Ordering::SeqCst);
        self.wake.wake();
    }

    /// The next incoming publish, if one is waiting.
    pub fn try_recv(&self) -> Option<Publish> {
        self.incoming.try_recv().ok()
    }

    /// The next incoming publish, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Publish> {
        self.incoming.recv_timeout(timeout).ok()
    }

    /// Whether a connection is up (connected and subscribed).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// How many connections have come up so far; a change means "reconnected".
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Incoming publishes dropped because the channel was full, since the start.
    pub fn dropped_incoming(&self) -> u64 {
        self.shared.dropped_incoming.load(Ordering::SeqCst)
    }

    /// Whether incoming publishes were dropped since the last call.
    pub(crate) fn take_overflow(&self) -> bool {
        self.shared.overflow.swap(false, Ordering::SeqCst)
    }

    /// Stops the IO thread: when connected, publishes `farewell` (QoS 1, waiting briefly for
    /// its PUBACK), then DISCONNECT (so the broker drops the last will). Waits at most
    /// `timeout` for the thread.
    pub fn stop(&mut self, farewell: Option<Message>, timeout: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        *lock(&self.shared.farewell) = farewell;
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
        let _ = self.done.recv_timeout(timeout);
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.stop(None, Duration::from_secs(1));
    }
}

/// The IO thread's state.
struct Worker {
    options: ClientOptions,
    commands: Receiver<CommandBox>,
    waker: Waker,
    incoming: SyncSender<Publish>,
    shared: Arc<Shared>,
    next_id: u16,
    endpoint: String,
}

/// One live connection.
struct Session {
    stream: Stream,
    buffer: PacketBuffer,
    scratch: Vec<u8>,
    /// Our QoS 1 publishes waiting for PUBACK (birth messages have no reply).
    pending: HashMap<u16, Option<Reply>>,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    renew_at: Option<Instant>,
}

impl Session {
    fn send(&mut self, packet: &Packet) -> Result<(), ConnectionEnd> {
        let bytes = packet
            .to_bytes()
            .map_err(|e| ConnectionEnd::Other(format!("cannot encode {}: {e}", packet.name())))?;
        self.stream.queue(&bytes)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next packet, waiting up to `deadline` (used while connecting and stopping).
    fn read_packet(&mut self, deadline: Instant) -> Result<Packet, ConnectionEnd> {
        loop {
            if let Some(p) = self.buffer.next_packet()? {
                return Ok(p);
            }
            self.stream.flush()?;
            self.scratch.clear();
            match self.stream.read(&mut self.scratch)? {
                ReadStatus::Data(_) => self.buffer.push(&self.scratch),
                ReadStatus::Closed => {
                    return Err(ConnectionEnd::Other("the broker closed the connection".into()));
                }
                ReadStatus::WouldBlock => {
                    if wait_fd(self.stream.fd(), self.stream.wants_write(), None, deadline)?.is_none() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out").into());
                    }
                }
            }
        }
    }

    fn fail_pending(&mut self, endpoint: &str) {
        for (_, reply) in self.pending.drain() {
            if let Some(reply) = reply {
                let _ = reply.try_send(Err(ClientError::ConnectionLost(endpoint.to_owned())));
            }
        }
    }
}

impl Worker {
    fn next_packet_id(&mut self, pending: &HashMap<u16, Option<Reply>>) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !pending.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let end = match self.connect() {
                Ok(mut session) => {
                    let up = Instant::now();
                    self.shared.connected.store(true, Ordering::SeqCst);
                    self.shared.connections.fetch_add(1, Ordering::SeqCst);
                    info!(broker = %self.endpoint, "MQTT connection up");
                    let end = self.serve(&mut session);
                    self.shared.connected.store(false, Ordering::SeqCst);
                    session.fail_pending(&self.endpoint);
                    session.stream.close();
                    if up.elapsed() >= STABLE_CONNECTION {
                        attempt = 0;
                    }
                    end
                }
                Err(e) => e,
            };
            match end {
                ConnectionEnd::Stop => return,
                ConnectionEnd::Renew => {
                    info!(broker = %self.endpoint, "reconnecting to renew the credentials");
                    attempt = 0;
                    continue;
                }
                other => warn!(broker = %self.endpoint, "MQTT connection failed or lost: {other}"),
            }
            let delay = self.options.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            debug!(broker = %self.endpoint, ?delay, "reconnecting after a delay");
            if self.idle_until(Instant::now() + delay) {
                return;
            }
        }
    }

    /// Waits while disconnected, failing publishes at once. Returns true when stopped.
    fn idle_until(&mut self, deadline: Instant) -> bool {
        loop {
            self.waker.drain();
            if self.shared.stop.load(Ordering::SeqCst) {
                return true;
            }
            while let Ok(CommandBox(Command::Publish { reply, .. })) = self.commands.try_recv() {
                let _ = reply.try_send(Err(ClientError::NotConnected(self.endpoint.clone())));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = poll(None, Some(self.waker.fd()), left);
        }
    }

    fn connect(&mut self) -> Result<Session, ConnectionEnd> {
        let deadline = Instant::now() + self.options.connect_timeout;
        let credentials = self.options.login.credentials().map_err(ConnectionEnd::Other)?;
        let stream = Stream::connect(
            &self.options.host,
            self.options.port,
            self.options.tls.as_ref(),
            deadline,
        )?;
        let mut session = Session {
            stream,
            buffer: PacketBuffer::new(self.options.max_incoming_packet),
            scratch: Vec::new(),
            pending: HashMap::new(),
            last_sent: Instant::now(),
            ping_sent: None,
            renew_at: credentials.renew_after.map(|d| Instant::now() + d),
        };
        let keep_alive_secs = u16::try_from(self.options.keep_alive.as_secs()).unwrap_or(u16::MAX);
        session.send(&Packet::Connect(twinguard_mqtt::Connect {
            client_id: self.options.client_id.clone(),
            clean_session: self.options.clean_session,
            keep_alive_secs,
            will: self.options.will.clone(),
            username: credentials.username,
            password: credentials.password.map(|s| s.0),
        }))?;
        match session.read_packet(deadline)? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => {}
            Packet::ConnAck(ack) => return Err(ConnectionEnd::Refused(ack.code)),
            other => {
                return Err(ConnectionEnd::Other(format!(
                    "expected CONNACK, got {}",
                    other.name()
                )));
            }
        }
        self.subscribe(&mut session, Some(deadline))?;
        let birth = lock(&self.shared.birth).clone();
        for message in birth {
            let id = self.next_packet_id(&session.pending);
            session.send(&publish_packet(&message, id))?;
            session.pending.insert(id, None);
        }
        session.stream.flush()?;
        Ok(session)
    }

    /// Sends SUBSCRIBE for every subscription; with a deadline, waits for the SUBACK and
    /// fails the connection if any filter was refused.
    fn subscribe(&mut self, session: &mut Session, deadline: Option<Instant>) -> Result<(), ConnectionEnd> {
        if self.options.subscriptions.is_empty() {
            return Ok(());
        }
        let packet_id = self.next_packet_id(&session.pending);
        session.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: self.options.subscriptions.clone(),
        }))?;
        let Some(deadline) = deadline else {
            return Ok(());
        };
        loop {
            match session.read_packet(deadline)? {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    return match refused(&ack.return_codes, &self.options.subscriptions) {
                        None => Ok(()),
                        Some(filter) => Err(ConnectionEnd::Other(format!(
                            "the broker refused the subscription to {filter}"
                        ))),
                    };
                }
                other => self.handle(session, other)?,
            }
        }
    }

    fn serve(&mut self, session: &mut Session) -> ConnectionEnd {
        match self.serve_inner(session) {
            Ok(()) => ConnectionEnd::Stop,
            Err(end) => end,
        }
    }

    fn serve_inner(&mut self, session: &mut Session) -> Result<(), ConnectionEnd> {
        let keep_alive = self.options.keep_alive;
        let ping_timeout = keep_alive.clamp(Duration::from_secs(1), Duration::from_secs(10));
        loop {
            self.waker.drain();
            if self.shared.stop.load(Ordering::SeqCst) {
                self.farewell(session);
                return Ok(());
            }
            if self.shared.resubscribe.swap(false, Ordering::SeqCst) {
                self.subscribe(session, None)?;
            }
            while let Ok(CommandBox(Command::Publish { message, reply })) = self.commands.try_recv() {
                if session.pending.len() >= MAX_IN_FLIGHT {
                    let _ = reply.try_send(Err(ClientError::Busy));
                    return Err(ConnectionEnd::Other(format!(
                        "{MAX_IN_FLIGHT} publishes without PUBACK: the broker stopped answering"
                    )));
                }
                let id = self.next_packet_id(&session.pending);
                match publish_packet(&message, id).to_bytes() {
                    Ok(bytes) => {
                        session.stream.queue(&bytes)?;
                        session.last_sent = Instant::now();
                        session.pending.insert(id, Some(reply));
                    }
                    Err(e) => {
                        let _ = reply.try_send(Err(ClientError::Encode(e)));
                    }
                }
            }
            session.stream.flush()?;

            let now = Instant::now();
            if let Some(at) = session.renew_at {
                if now >= at {
                    let _ = session.send(&Packet::Disconnect);
                    let _ = session.stream.flush();
                    return Err(ConnectionEnd::Renew);
                }
            }
            if let Some(sent) = session.ping_sent {
                if now.duration_since(sent) >= ping_timeout {
                    return Err(ConnectionEnd::Other(format!(
                        "no PINGRESP within {ping_timeout:?}"
                    )));
                }
            } else if !keep_alive.is_zero() && now.duration_since(session.last_sent) >= keep_alive {
                session.send(&Packet::PingReq)?;
                session.ping_sent = Some(now);
                session.stream.flush()?;
            }

            // Read and handle everything the socket has now.
            loop {
                session.scratch.clear();
                match session.stream.read(&mut session.scratch)? {
                    ReadStatus::Data(_) => {
                        session.buffer.push(&session.scratch);
                        while let Some(packet) = session.buffer.next_packet()? {
                            self.handle(session, packet)?;
                        }
                    }
                    ReadStatus::WouldBlock => break,
                    ReadStatus::Closed => {
                        return Err(ConnectionEnd::Other("the broker closed the connection".into()));
                    }
                }
            }
            session.stream.flush()?;

            // Sleep until the socket, a caller or a timer needs us.
            let now = Instant::now();
            let mut wake_at = match session.ping_sent {
                Some(sent) => sent + ping_timeout,
                None if keep_alive.is_zero() => now + Duration::from_secs(3600),
                None => session.last_sent + keep_alive,
            };
            if let Some(at) = session.renew_at {
                wake_at = wake_at.min(at);
            }
            poll(
                Some((session.stream.fd(), session.stream.wants_write())),
                Some(self.waker.fd()),
                wake_at.saturating_duration_since(now),
            )?;
        }
    }

    /// Publishes the farewell (if any) and waits briefly for its PUBACK, then DISCONNECT.
    fn farewell(&mut self, session: &mut Session) {
        let message = lock(&self.shared.farewell).take();
        if let Some(message) = message {
            let id = self.next_packet_id(&session.pending);
            if session.send(&publish_packet(&message, id)).is_ok() {
                let deadline = Instant::now() + FAREWELL_TIMEOUT;
                while let Ok(packet) = session.read_packet(deadline) {
                    if packet == Packet::PubAck(id) {
                        break;
                    }
                }
            }
        }
        let _ = session.send(&Packet::Disconnect);
        let deadline = Instant::now() + Duration::from_millis(300);
        while session.stream.wants_write() && Instant::now() < deadline {
            if session.stream.flush().is_err() {
                break;
            }
            let _ = wait_fd(session.stream.fd(), true, None, deadline);
        }
    }

    /// Handles one packet from the broker.
    fn handle(&mut self, session: &mut Session, packet: Packet) -> Result<(), ConnectionEnd> {
        match packet {
            Packet::PubAck(id) => {
                if let Some(Some(reply)) = session.pending.remove(&id) {
                    let _ = reply.try_send(Ok(()));
                }
            }
            Packet::Publish(publish) => {
                match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => session.send(&Packet::PubAck(id))?,
                    // We never subscribe at QoS 2, but answer correctly if a broker sends it.
                    (QoS::ExactlyOnce, Some(id)) => session.send(&Packet::PubRec(id))?,
                    _ => {}
                }
                self.deliver(publish);
            }
            Packet::PubRel(id) => session.send(&Packet::PubComp(id))?,
            Packet::PingResp => session.ping_sent = None,
            Packet::SubAck(ack) => {
                if let Some(filter) = refused(&ack.return_codes, &self.options.subscriptions) {
                    return Err(ConnectionEnd::Other(format!(
                        "the broker refused the subscription to {filter}"
                    )));
                }
            }
            Packet::UnsubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
            other => {
                return Err(ConnectionEnd::Other(format!(
                    "unexpected {} from the broker",
                    other.name()
                )));
            }
        }
        Ok(())
    }

    fn deliver(&self, publish: Publish) {
        match self.incoming.try_send(publish) {
            Ok(()) => {}
            Err(TrySendError::Full(p)) => {
                self.shared.dropped_incoming.fetch_add(1, Ordering::SeqCst);
                self.shared.overflow.store(true, Ordering::SeqCst);
                debug!(topic = %p.topic, "incoming channel full: publish dropped (the owner re-synchronises)");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn publish_packet(message: &Message, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: message.retain,
        topic: message.topic.clone(),
        packet_id: Some(id),
        payload: message.payload.clone(),
    })
}

/// The first filter the SUBACK refused, if any.
fn refused(codes: &[SubscribeReturnCode], subscriptions: &[(String, QoS)]) -> Option<String> {
    codes
        .iter()
        .zip(subscriptions)
        .find(|(code, _)| **code == SubscribeReturnCode::Failure)
        .map(|(_, (filter, _))| filter.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let c = Credentials {
            username: Some("u".into()),
            password: Some(Secret(b"SharedAccessSignature sig=abc".to_vec())),
            renew_after: None,
        };
        assert!(!format!("{c:?}").contains("abc"));
    }
}
