//! A small blocking MQTT client over TLS built on the `twinguard-mqtt` codec, for driving the
//! hub packet by packet (including packets no well-behaved client sends).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use twinguard_mqtt::{
    ConnAck, Connect, ConnectReturnCode, Packet, PacketBuffer, Publish, QoS, SubAck, Subscribe,
    SubscribeReturnCode,
};

/// What waiting for a packet found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A packet.
    Packet(Packet),
    /// Nothing within the timeout.
    Timeout,
    /// The server closed the connection.
    Closed,
}

/// A connection to the hub.
#[derive(Debug)]
pub struct Client {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buffer: PacketBuffer,
    next_id: u16,
}

/// Now, Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A TCP connection to `addr` from the local address `source`.
pub fn tcp_from(addr: SocketAddr, source: std::net::IpAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(3))?;
    Ok(socket.into())
}

impl Client {
    /// Opens a TLS connection trusting only `ca`, verifying the name `localhost`.
    pub fn open(addr: SocketAddr, ca: &Path) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect"), ca)
    }

    /// [`Client::open`] from the local address `source` (any of 127/8 on Linux).
    pub fn open_from(addr: SocketAddr, source: std::net::IpAddr, ca: &Path) -> Client {
        Client::over(tcp_from(addr, source).expect("connect"), ca)
    }

    fn over(socket: TcpStream, ca: &Path) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
            roots.add(cert.expect("ca cert")).expect("add ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        let conn = ClientConnection::new(Arc::new(config), name).expect("tls");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Client {
            stream: StreamOwned::new(conn, socket),
            buffer: PacketBuffer::new(16 * 1024 * 1024),
            next_id: 0,
        }
    }

    /// A new packet identifier.
    pub fn next_id(&mut self) -> u16 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a packet; `false` if the connection is gone.
    pub fn send(&mut self, packet: &Packet) -> bool {
        let bytes = packet.to_bytes().expect("encode");
        self.send_raw(&bytes)
    }

    /// Sends raw bytes; `false` if the connection is gone.
    pub fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .is_ok()
    }

    /// The next packet within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.buffer.next_packet() {
                Ok(Some(p)) => return Next::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("the hub sent bad MQTT: {e}"),
            }
            if Instant::now() >= deadline {
                return Next::Timeout;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Next::Closed,
                Ok(n) => self.buffer.push(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => return Next::Closed,
            }
        }
    }

    /// Waits up to `timeout` for the server to close the connection, skipping packets.
    /// Returns when it closed, or `None` if it did not.
    pub fn closed_within(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            match self.next(Duration::from_millis(100)) {
                Next::Closed => return Some(start.elapsed()),
                _ if start.elapsed() >= timeout => return None,
                _ => {}
            }
        }
    }

    /// Sends CONNECT and returns the CONNACK's code (`None`: closed without one).
    pub fn connect(
        &mut self,
        client_id: &str,
        username: &str,
        password: &str,
        keep_alive_secs: u16,
    ) -> Option<ConnectReturnCode> {
        self.send(&Packet::Connect(Connect {
            client_id: client_id.into(),
            clean_session: true,
            keep_alive_secs,
            will: None,
            username: Some(username.into()),
            password: Some(password.as_bytes().to_vec()),
        }));
        match self.next(Duration::from_secs(10)) {
            Next::Packet(Packet::ConnAck(ConnAck { code, .. })) => Some(code),
            other => {
                assert!(
                    !matches!(other, Next::Packet(_)),
                    "expected CONNACK, got {other:?}"
                );
                None
            }
        }
    }

    /// Subscribes and returns the SUBACK's codes.
    pub fn subscribe(&mut self, filters: &[&str]) -> Vec<SubscribeReturnCode> {
        let packet_id = self.next_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|f| ((*f).to_owned(), QoS::AtLeastOnce))
                .collect(),
        }));
        match self.next(Duration::from_secs(10)) {
            Next::Packet(Packet::SubAck(SubAck {
                packet_id: id,
                return_codes,
            })) if id == packet_id => return_codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes with `qos` (a packet id is added for QoS 1 and 2).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS) -> Option<u16> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.next_id());
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            payload: payload.to_vec(),
        }));
        packet_id
    }

    /// The next PUBLISH from the hub within `timeout` (acknowledging QoS 1 ones).
    pub fn next_publish(&mut self, timeout: Duration) -> Option<Publish> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Next::Packet(Packet::Publish(p)) => {
                    if let Some(id) = p.packet_id {
                        self.send(&Packet::PubAck(id));
                    }
                    return Some(p);
                }
                Next::Packet(_) => {}
                Next::Timeout | Next::Closed => return None,
            }
        }
    }
}
