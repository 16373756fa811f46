//! A non-blocking TCP or TLS byte stream and `poll(2)`, for the MQTT client's single IO thread.
//!
//! Why non-blocking: one thread must read, write, send keep-alives and take commands from the
//! run loop without a second thread sharing the TLS state; it sleeps in `poll` on the socket and
//! a wake-up socket pair, so an idle connection costs nothing until the keep-alive is due.
//! TLS is rustls (TLS 1.2 and 1.3 only, certificate verification always on).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

pub(crate) use crate::sys::poll::{poll, Ready};

/// Size of one read from the socket; received bytes are decoded before the next read, so this
/// plus one maximum packet bounds what is buffered.
const READ_CHUNK: usize = 16 * 1024;

/// One connection to a broker.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain TCP (`mqtt://`), with the bytes the socket has not taken yet.
    Plain {
        /// The socket.
        sock: TcpStream,
        /// Bytes queued for writing.
        out: Vec<u8>,
    },
    /// TLS over TCP (`mqtts://`, IoT Hub).
    Tls {
        /// The socket.
        sock: TcpStream,
        /// The rustls state; it buffers outgoing plaintext itself.
        tls: Box<ClientConnection>,
    },
}

/// What a read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadStatus {
    /// This many plaintext bytes were appended (0 when only part of a TLS record came).
    Data(usize),
    /// Nothing more to read now.
    WouldBlock,
    /// The peer closed the connection.
    Closed,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: timed out"))
}

impl Stream {
    /// Resolves `host`, connects (each address in turn) and, with `tls`, completes the TLS
    /// handshake, all before `deadline`. The returned stream is non-blocking.
    pub fn connect(
        host: &str,
        port: u16,
        tls: Option<&Arc<ClientConfig>>,
        deadline: Instant,
    ) -> io::Result<Stream> {
        // DNS resolution blocks without a timeout of its own (getaddrinfo); the resolver's
        // configured timeout bounds it.
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
        let mut sock = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out("connect"));
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let sock = sock.ok_or(last)?;
        sock.set_nodelay(true)?;
        sock.set_nonblocking(true)?;
        let Some(config) = tls else {
            return Ok(Stream::Plain {
                sock,
                out: Vec::new(),
            });
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host}: not a valid TLS server name"),
            )
        })?;
        let mut tls = ClientConnection::new(Arc::clone(config), name).map_err(tls_error)?;
        // rustls caps buffered outgoing plaintext at 64 KiB by default, which a 256 KB message
        // exceeds; the client bounds what it queues itself (one message in flight plus a few
        // control packets), so rustls need not.
        tls.set_buffer_limit(None);
        let mut stream = Stream::Tls {
            sock,
            tls: Box::new(tls),
        };
        stream.handshake(deadline)?;
        Ok(stream)
    }

    fn handshake(&mut self, deadline: Instant) -> io::Result<()> {
        let Stream::Tls { sock, tls } = self else {
            return Ok(());
        };
        while tls.is_handshaking() {
            while tls.wants_write() {
                match tls.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if wait_fd(sock.as_raw_fd(), true, None, deadline)?.is_none() {
                            return Err(timed_out("TLS handshake"));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if !tls.is_handshaking() {
                break;
            }
            if wait_fd(sock.as_raw_fd(), false, None, deadline)?.is_none() {
                return Err(timed_out("TLS handshake"));
            }
            match tls.read_tls(sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ))
                }
                Ok(_) => {
                    tls.process_new_packets().map_err(tls_error)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Send the handshake's last flight (the client Finished).
        self.flush()
    }

    /// The socket, for `poll`.
    pub fn fd(&self) -> RawFd {
        match self {
            Stream::Plain { sock, .. } | Stream::Tls { sock, .. } => sock.as_raw_fd(),
        }
    }

    /// Whether bytes wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Stream::Plain { out, .. } => !out.is_empty(),
            Stream::Tls { tls, .. } => tls.wants_write(),
        }
    }

    /// Queues bytes; [`Stream::flush`] writes them.
    pub fn queue(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain { out, .. } => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Stream::Tls { tls, .. } => tls.writer().write_all(bytes),
        }
    }

    /// Writes what the socket takes now without blocking.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain { sock, out } => {
                while !out.is_empty() {
                    match sock.write(out) {
                        Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
                        Ok(n) => {
                            out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Stream::Tls { sock, tls } => {
                while tls.wants_write() {
                    match tls.write_tls(sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads what is available now (at most about one chunk) and appends the plaintext to
    /// `into`.
    pub fn read(&mut self, into: &mut Vec<u8>) -> io::Result<ReadStatus> {
        let mut chunk = [0u8; READ_CHUNK];
        match self {
            Stream::Plain { sock, .. } => match sock.read(&mut chunk) {
                Ok(0) => Ok(ReadStatus::Closed),
                Ok(n) => {
                    into.extend_from_slice(&chunk[..n]);
                    Ok(ReadStatus::Data(n))
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    Ok(ReadStatus::WouldBlock)
                }
                Err(e) => Err(e),
            },
            Stream::Tls { sock, tls } => {
                match tls.read_tls(sock) {
                    Ok(0) => return Ok(ReadStatus::Closed),
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                        return Ok(ReadStatus::WouldBlock)
                    }
                    Err(e) => return Err(e),
                }
                let state = tls.process_new_packets().map_err(tls_error)?;
                let closed = state.peer_has_closed();
                let mut total = 0;
                loop {
                    match tls.reader().read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            into.extend_from_slice(&chunk[..n]);
                            total += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadStatus::Closed),
                        Err(e) => return Err(e),
                    }
                }
                if total == 0 && closed {
                    return Ok(ReadStatus::Closed);
                }
                Ok(ReadStatus::Data(total))
            }
        }
    }

    /// Best-effort polite close: TLS close_notify, then the socket is shut down.
    pub fn close(&mut self) {
        if let Stream::Tls { tls, .. } = self {
            tls.send_close_notify();
        }
        let _ = self.flush();
        match self {
            Stream::Plain { sock, .. } | Stream::Tls { sock, .. } => {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Waits until `fd` is readable (or writable, with `write`), `wake` is signalled, or the
/// deadline passes (`Ok(None)`).
pub(crate) fn wait_fd(
    fd: RawFd,
    write: bool,
    wake: Option<RawFd>,
    deadline: Instant,
) -> io::Result<Option<Ready>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = poll(Some((fd, write)), wake, left)?;
        if ready != Ready::default() {
            return Ok(Some(ready));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Wakes the IO thread from `poll`: a connected socket pair, the IO thread polls one end.
#[derive(Debug)]
pub struct Waker {
    tx: UnixStream,
    rx: UnixStream,
}

impl Waker {
    /// A new pair (both ends non-blocking).
    pub fn new() -> io::Result<Waker> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Waker { tx, rx })
    }

    /// Signals the IO thread. A full socket buffer means it is signalled already.
    pub fn wake(&self) {
        let _ = (&self.tx).write(&[1]);
    }

    /// The end to poll.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Consumes pending signals.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// A second handle on the sending end, for another thread.
    pub(crate) fn sender(&self) -> io::Result<WakeSender> {
        Ok(WakeSender(self.tx.try_clone()?))
    }
}

/// The sending end of a [`Waker`], held by the threads that give the IO thread work.
#[derive(Debug)]
pub(crate) struct WakeSender(UnixStream);

impl WakeSender {
    /// Signals the IO thread.
    pub fn wake(&self) {
        let _ = (&self.0).write(&[1]);
    }
}
