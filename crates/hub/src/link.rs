//! One client's byte stream, plain TCP or TLS (rustls, driven by hand over a blocking socket
//! with a short read timeout), so the connection thread can wake up every poll interval to
//! deliver notifications and check its deadlines without a second thread per connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// What a receive found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// This many bytes were placed at the front of the buffer.
    Data(usize),
    /// Nothing arrived within the socket's read timeout.
    Idle,
    /// The peer closed the connection.
    Closed,
}

/// A client connection.
#[derive(Debug)]
pub enum Link {
    /// Plain TCP (only with `serve --plain`).
    Plain(TcpStream),
    /// TLS (the server side of a client's connection, or the client side of the hub's own
    /// connection to an MQTT broker).
    Tls {
        /// The TLS state.
        tls: Box<Connection>,
        /// The socket.
        socket: TcpStream,
    },
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl Link {
    /// A TLS link over `socket`; the handshake runs as bytes are received.
    pub fn tls(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<Link> {
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Link::Tls {
            tls: Box::new(Connection::Server(tls)),
            socket,
        })
    }

    /// The client side of a TLS connection to `server` (name checked against its
    /// certificate) over `socket`; the handshake runs as bytes are sent and received.
    pub fn tls_client(socket: TcpStream, config: Arc<ClientConfig>, server: &str) -> io::Result<Link> {
        let name = ServerName::try_from(server.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{server:?}: {e}")))?;
        let tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Link::Tls {
            tls: Box::new(Connection::Client(tls)),
            socket,
        })
    }

    /// The socket.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls { socket, .. } => socket,
        }
    }

    /// Receives application bytes into `buf`, waiting at most the socket's read timeout.
    pub(crate) fn receive(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        match self {
            Link::Plain(socket) => match socket.read(buf) {
                Ok(0) => Ok(Received::Closed),
                Ok(n) => Ok(Received::Data(n)),
                Err(e) if is_timeout(&e) => Ok(Received::Idle),
                Err(e) => Err(e),
            },
            Link::Tls { tls, socket } => loop {
                match tls.reader().read(buf) {
                    // A close_notify from the peer.
                    Ok(0) => return Ok(Received::Closed),
                    Ok(n) => return Ok(Received::Data(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match tls.read_tls(socket) {
                    Ok(0) => return Ok(Received::Closed),
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => return Ok(Received::Idle),
                    Err(e) => return Err(e),
                }
                if let Err(e) = tls.process_new_packets() {
                    // Tell the peer why (an alert), best effort, then give up.
                    let _ = tls.write_tls(socket);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                flush_tls(tls, socket)?;
            },
        }
    }

    /// Sends all of `bytes`, waiting at most the socket's write timeout for each write.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Plain(socket) => socket.write_all(bytes),
            Link::Tls { tls, socket } => {
                let mut rest = bytes;
                let mut stalls = 0;
                while !rest.is_empty() {
                    let n = tls.writer().write(rest)?;
                    rest = &rest[n..];
                    flush_tls(tls, socket)?;
                    // rustls takes nothing only while its buffer is full; after a flush it has
                    // room, so two empty writes in a row mean it will not take more.
                    stalls = if n == 0 { stalls + 1 } else { 0 };
                    if stalls > 2 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                }
                Ok(())
            }
        }
    }

    /// Closes the connection: a TLS close_notify (best effort), then a TCP shutdown.
    pub fn close(&mut self) {
        if let Link::Tls { tls, socket } = self {
            tls.send_close_notify();
            let _ = flush_tls(tls, socket);
        }
        let _ = self.socket().shutdown(Shutdown::Both);
    }
}

fn flush_tls(tls: &mut Connection, socket: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(socket)?;
    }
    Ok(())
}
