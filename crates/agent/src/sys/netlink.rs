//! A netlink socket for the event sources (process connector, audit, sock_diag): opening and
//! binding it, its receive buffer and timeout, multicast groups, and sending to the kernel -
//! plus the pure walk over the `nlmsghdr` messages of a received datagram.
//!
//! Receiving never blocks longer than the timeout set, so a collector thread sees its stop
//! signal in time. A full receive buffer (`ENOBUFS`: the kernel dropped messages for us) is a
//! distinct outcome, so callers count the losses instead of missing them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Size of `struct nlmsghdr`.
pub(crate) const NLMSG_HDR: usize = 16;
/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an error or, with errno 0, an acknowledgement.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a multipart answer (and the type of every connector message).
pub(crate) const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// `SOL_NETLINK` (linux/socket.h).
const SOL_NETLINK: libc::c_int = 270;
/// `NETLINK_ADD_MEMBERSHIP`, `NETLINK_DROP_MEMBERSHIP` (linux/netlink.h).
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_DROP_MEMBERSHIP: libc::c_int = 2;

/// One netlink message inside a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlMsg<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`: the sender's port (0 = the kernel).
    pub pid: u32,
    /// The bytes after the header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

impl NlMsg<'_> {
    /// For an `NLMSG_ERROR` message: the errno it carries (0 = an acknowledgement) and the
    /// sequence number of the request it answers.
    pub fn error(&self) -> Option<(i32, u32)> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        let errno = i32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?);
        // The original request's header follows the errno; its seq is at offset 8 within it.
        let seq = self
            .payload
            .get(12..16)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes);
        Some((-errno, seq.unwrap_or(self.seq)))
    }
}

/// Reads a native-endian `u16` at `at`, `None` past the end.
pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Reads a native-endian `u32` at `at`, `None` past the end.
pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Reads a native-endian `u64` at `at`, `None` past the end.
pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The messages of one datagram, in order. A header whose length is shorter than a header or
/// runs past the datagram ends the walk (and is reported as `Err` with the offset), so a
/// malformed datagram can never make the walk loop or read out of bounds.
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages {
        rest: datagram,
        offset: 0,
    }
}

/// Iterator of [`messages`].
#[derive(Debug)]
pub struct Messages<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<NlMsg<'a>, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLMSG_HDR {
            return None;
        }
        let b = self.rest;
        let len = u32_at(b, 0).map_or(0, |l| l as usize);
        if len < NLMSG_HDR || len > b.len() {
            let at = self.offset;
            self.rest = &[];
            return Some(Err(at));
        }
        let msg = NlMsg {
            kind: u16_at(b, 4).unwrap_or(0),
            flags: u16_at(b, 6).unwrap_or(0),
            seq: u32_at(b, 8).unwrap_or(0),
            pid: u32_at(b, 12).unwrap_or(0),
            payload: &b[NLMSG_HDR..len],
        };
        // Messages are aligned to 4 bytes within a datagram.
        let next = len.saturating_add(3) & !3;
        self.rest = b.get(next..).unwrap_or(&[]);
        self.offset += next;
        Some(Ok(msg))
    }
}

/// Builds one request: an `nlmsghdr` addressed to the kernel followed by `payload`.
pub(crate) fn request(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + payload.len();
    let mut b = Vec::with_capacity((len + 3) & !3);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port.
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(payload);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b
}

/// What one receive gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// A datagram of this many bytes (already cut to the buffer: see `truncated`).
    Data {
        /// Bytes in the buffer.
        len: usize,
        /// Whether the datagram was larger than the buffer (its tail is lost).
        truncated: bool,
    },
    /// Nothing arrived within the timeout.
    Timeout,
    /// The kernel dropped messages because our receive buffer was full (`ENOBUFS`).
    Overrun,
}

/// An open, bound netlink socket.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
    port: u32,
}

impl AsRawFd for NetlinkSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl NetlinkSocket {
    /// Opens a socket of netlink `protocol` (`SOCK_RAW` or `SOCK_DGRAM` per `kind`) and binds it
    /// to a kernel-chosen port and the multicast `groups` bitmask.
    pub fn open(protocol: libc::c_int, kind: libc::c_int, groups: u32) -> io::Result<NetlinkSocket> {
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, kind | libc::SOCK_CLOEXEC, protocol) };
        check(raw)?;
        // SAFETY: `raw` is a descriptor we just opened and own exclusively; OwnedFd closes it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data for which all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        let addr_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_nl of the length given, alive during the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                addr_len,
            )
        })?;
        // SAFETY: as above; getsockname writes at most `len` bytes into `bound`.
        let mut bound: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = addr_len;
        // SAFETY: `bound` and `len` are valid for writes of the sizes given.
        check(unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut bound as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        })?;
        Ok(NetlinkSocket {
            fd,
            port: bound.nl_pid,
        })
    }

    /// The port the kernel gave us.
    pub fn port(&self) -> u32 {
        self.port
    }

    fn set_opt<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` points to a live T of the size given; setsockopt only reads it.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        })
    }

    /// Makes every receive return within `timeout` (at least 1 ms).
    pub(crate) fn set_recv_timeout(&self, timeout: Duration) -> io::Result<()> {
        let timeout = timeout.max(Duration::from_millis(1));
        // The field types are not named: libc deprecates `time_t`/`suseconds_t` on musl (their
        // width changed with musl 1.2), and they are 32 bits on armv7. Both widths take an i32.
        let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let micros = i32::try_from(timeout.subsec_micros()).unwrap_or(999_999);
        #[allow(
            clippy::useless_conversion,
            reason = "i32 -> i64 on 64-bit targets, i32 -> i32 on armv7"
        )]
        let tv = libc::timeval {
            tv_sec: secs.into(),
            tv_usec: micros.into(),
        };
        self.set_opt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    /// Asks for a receive buffer of `bytes`: beyond `net.core.rmem_max` when privileged
    /// (`SO_RCVBUFFORCE`), else as much as the limit allows. Returns the size in force.
    pub(crate) fn set_recv_buffer(&self, bytes: usize) -> io::Result<usize> {
        let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        if self
            .set_opt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &want)
            .is_err()
        {
            self.set_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, &want)?;
        }
        let mut got: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `got` and `len` are valid for writes of the sizes given.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(usize::try_from(got).unwrap_or(0))
    }

    /// Joins multicast group number `group` (1-based, as in `NETLINK_ADD_MEMBERSHIP`).
    pub(crate) fn add_membership(&self, group: u32) -> io::Result<()> {
        self.set_opt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group)
    }

    /// Leaves multicast group number `group`.
    pub(crate) fn drop_membership(&self, group: u32) -> io::Result<()> {
        self.set_opt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, &group)
    }

    /// Sends one datagram to the kernel.
    pub(crate) fn send_to_kernel(&self, datagram: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data for which all-zero is valid (nl_pid 0 = the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `datagram` and `kernel` are valid for the lengths given during the call.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    datagram.as_ptr().cast(),
                    datagram.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one datagram into `buf`, waiting at most the receive timeout. Only datagrams
    /// from the kernel (port 0) are accepted; anything a process sends us is skipped.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.recv_flags(buf, 0)
    }

    /// Like [`NetlinkSocket::recv`] without waiting: `Timeout` when nothing is queued.
    pub fn recv_nowait(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.recv_flags(buf, libc::MSG_DONTWAIT)
    }

    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<Received> {
        loop {
            // SAFETY: sockaddr_nl is plain data for which all-zero is valid.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf`, `from` and `from_len` are valid for writes of the sizes given.
            // MSG_TRUNC makes the call return the datagram's real length, to detect truncation.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | flags,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => Ok(Received::Timeout),
                    Some(libc::ENOBUFS) => Ok(Received::Overrun),
                    _ => Err(e),
                };
            }
            if from.nl_pid != 0 {
                continue;
            }
            let real = usize::try_from(n).unwrap_or(0);
            return Ok(Received::Data {
                len: real.min(buf.len()),
                truncated: real > buf.len(),
            });
        }
    }
}

/// What one [`NetlinkSocket::recv_batch`] call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchReceived {
    /// This many datagrams are in the batch (at least one).
    Data(usize),
    /// Nothing came within the receive timeout (or nothing was queued, without waiting).
    Timeout,
    /// The kernel dropped datagrams: the socket's receive buffer overflowed (`ENOBUFS`).
    Overrun,
}

/// Buffers for receiving several datagrams with one `recvmmsg` call.
#[derive(Debug)]
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// Per slot: received length, whether it was cut, whether it came from the kernel.
    got: Vec<(usize, bool, bool)>,
    count: usize,
}

impl RecvBatch {
    /// `slots` buffers of `size` bytes each (both at least 1).
    pub fn new(slots: usize, size: usize) -> RecvBatch {
        let slots = slots.clamp(1, 1024);
        RecvBatch {
            bufs: vec![vec![0u8; size.max(1)]; slots],
            got: vec![(0, false, false); slots],
            count: 0,
        }
    }

    /// Puts datagrams kept aside earlier into the batch (as many as it has slots, cut to
    /// the slot size); returns how many it took.
    pub fn load(&mut self, mut kept: impl Iterator<Item = Vec<u8>>) -> usize {
        self.count = 0;
        for (buf, got) in self.bufs.iter_mut().zip(self.got.iter_mut()) {
            let Some(d) = kept.next() else { break };
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            *got = (n, n < d.len(), true);
            self.count += 1;
        }
        self.count
    }

    /// Slots in the batch.
    pub(crate) fn slots(&self) -> usize {
        self.bufs.len()
    }

    /// The datagrams of the last call that came from the kernel, each with whether it was cut
    /// to the buffer's size.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (&[u8], bool)> {
        self.bufs
            .iter()
            .zip(&self.got)
            .take(self.count)
            .filter(|(_, (_, _, kernel))| *kernel)
            .map(|(b, (len, cut, _))| (&b[..*len], *cut))
    }
}

impl NetlinkSocket {
    /// Receives up to a batch of datagrams with one system call: waits (up to the receive
    /// timeout) for the first when `wait`, then takes what else is queued without waiting.
    /// One wake-up per burst instead of one per datagram.
    pub(crate) fn recv_batch(&self, batch: &mut RecvBatch, wait: bool) -> io::Result<BatchReceived> {
        let slots = batch.bufs.len();
        // SAFETY: sockaddr_nl is plain data for which all-zero is valid.
        let mut from: Vec<libc::sockaddr_nl> = vec![unsafe { std::mem::zeroed() }; slots];
        let mut iov: Vec<libc::iovec> = batch
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data for which all-zero is valid.
        let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; slots];
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut from[i] as *mut libc::sockaddr_nl).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        batch.count = 0;
        loop {
            // SAFETY: every header points at a live iovec over a live buffer of the stated
            // length and at a live sockaddr_nl of the stated size; `headers` holds `slots`
            // entries; all outlive the call. A null timeout: the socket's own timeout applies.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    headers.as_mut_ptr(),
                    slots as libc::c_uint,
                    // c_int on glibc, c_uint on musl: the MSG_* values fit both.
                    flags as _,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => Ok(BatchReceived::Timeout),
                    Some(libc::ENOBUFS) => Ok(BatchReceived::Overrun),
                    _ => Err(e),
                };
            }
            let n = usize::try_from(n).unwrap_or(0).min(slots);
            for i in 0..n {
                let len = (headers[i].msg_len as usize).min(batch.bufs[i].len());
                let cut = headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                batch.got[i] = (len, cut, from[i].nl_pid == 0);
            }
            batch.count = n;
            return Ok(if n == 0 {
                BatchReceived::Timeout
            } else {
                BatchReceived::Data(n)
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn walks_messages_and_stops_on_bad_lengths() {
        let mut d = request(1000, NLM_F_REQUEST, 7, b"abcde");
        d.extend(request(NLMSG_DONE, 0, 8, &[]));
        let got: Vec<_> = messages(&d).collect();
        assert_eq!(got.len(), 2);
        let first = got[0].unwrap();
        assert_eq!((first.kind, first.seq, first.payload), (1000, 7, &b"abcde"[..]));
        assert_eq!(got[1].unwrap().kind, NLMSG_DONE);

        let mut bad = d.clone();
        bad[0] = 200;
        assert_eq!(messages(&bad).collect::<Vec<_>>(), vec![Err(0)]);
        assert_eq!(messages(&d[..10]).count(), 0);
    }

    #[test]
    fn error_messages_give_errno_and_the_request_seq() {
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend(request(1001, NLM_F_REQUEST | NLM_F_ACK, 42, &[]));
        let d = request(NLMSG_ERROR, 0, 42, &payload);
        let m = messages(&d).next().unwrap().unwrap();
        assert_eq!(m.error(), Some((libc::EPERM, 42)));
        let ack = request(NLMSG_ERROR, 0, 5, &0i32.to_ne_bytes());
        assert_eq!(messages(&ack).next().unwrap().unwrap().error(), Some((0, 5)));
    }

    proptest! {
        #[test]
        fn any_bytes_walk_without_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut total = 0;
            for m in messages(&data).flatten() {
                total += NLMSG_HDR + m.payload.len();
                let _ = m.error();
            }
            prop_assert!(total <= data.len());
        }
    }
}
