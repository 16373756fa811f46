//! What the kernel sends back: one record per datagram, its `key=value` fields (bare,
//! quoted or hex-encoded), socket addresses and proctitles. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::sys::netlink;

/// One audit record, its text kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record type (`AUDIT_SYSCALL` ...).
    pub kind: u16,
    /// The event's serial number: records of one event share it.
    pub serial: u64,
    /// The event's time, milliseconds since the epoch.
    pub time_ms: i64,
    /// The text after `audit(...): `, lossily decoded.
    pub body: String,
}

/// Most bytes of record text kept (the kernel's own maximum is 8970).
pub(crate) const MAX_RECORD: usize = 9000;

/// A buffer that holds any one audit datagram (a record of at most 8970 bytes + header).
pub(crate) const RECV_BUFFER_BYTES: usize = 12 * 1024;

/// The record type and text of one datagram from the audit socket, handling the `nlmsg_len`
/// quirk (see the module doc). `None` for non-record messages (replies, acks).
pub(crate) fn datagram_record(d: &[u8]) -> Option<(u16, &[u8])> {
    let kind = netlink::u16_at(d, 4)?;
    if !(1100..3000).contains(&kind) {
        return None;
    }
    let body = d.get(netlink::NLMSG_HDR..)?;
    let end = body
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(body.len())
        .min(MAX_RECORD);
    Some((kind, &body[..end]))
}

/// Parses a record's text: `audit(1700000000.123:456): rest`.
pub(crate) fn parse_record(kind: u16, text: &[u8]) -> Option<Record> {
    let text = text.get(..text.len().min(MAX_RECORD))?;
    let rest = text.strip_prefix(b"audit(")?;
    let close = rest.iter().position(|&b| b == b')')?;
    let stamp = std::str::from_utf8(&rest[..close]).ok()?;
    let (time, serial) = stamp.split_once(':')?;
    let (secs, millis) = time.split_once('.')?;
    let secs: i64 = secs.parse().ok()?;
    let millis: i64 = millis.parse().ok()?;
    let body = rest.get(close + 1..)?;
    let body = body.strip_prefix(b":").unwrap_or(body);
    Some(Record {
        kind,
        serial: serial.parse().ok()?,
        time_ms: secs.checked_mul(1000)?.checked_add(millis)?,
        body: String::from_utf8_lossy(body).trim().to_owned(),
    })
}

/// The `key=value` pairs of a record body, values raw (quotes kept). A value is `"..."`,
/// `'...'` or runs to the next space. Malformed text ends the list; nothing panics.
pub fn fields(body: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() && out.len() < 256 {
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        if key.contains(' ') {
            // A bare word (some records have them, e.g. `audit_enabled`); skip it.
            rest = rest[key.find(' ').map_or(rest.len(), |i| i + 1)..].trim_start();
            continue;
        }
        let after = &rest[eq + 1..];
        let end = match after.as_bytes().first() {
            Some(&q @ (b'"' | b'\'')) => after[1..].find(q as char).map_or(after.len(), |i| i + 2),
            _ => after.find(' ').unwrap_or(after.len()),
        };
        out.push((key, &after[..end]));
        rest = after[end..].trim_start();
    }
    out
}

/// The raw value of `key` in `fields`.
pub fn get<'a>(fields: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A plain value: quotes removed; `?` and `(null)` (the kernel's "unknown") are `None`.
pub fn plain(raw: &str) -> Option<&str> {
    let v = raw
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| raw.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(raw);
    (!v.is_empty() && v != "?" && v != "(null)" && v != "(none)").then_some(v)
}

/// Decodes hex text into bytes; `None` unless it is an even number of hex digits.
pub(crate) fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// An untrusted string field (exe, comm, acct, key ...): quoted text as is, an unquoted value
/// hex-decoded (lossily: invalid UTF-8 kept as replacement characters), `None` when unknown.
pub fn untrusted(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        return plain(raw).map(str::to_owned);
    }
    let v = plain(raw)?;
    match hex_bytes(v) {
        Some(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        None => Some(v.to_owned()),
    }
}

/// The fields inside a user-space message's `msg='...'`.
pub(crate) fn user_fields(body: &str) -> Vec<(&str, &str)> {
    let outer = fields(body);
    match get(&outer, "msg") {
        Some(m) if m.starts_with('\'') => {
            let inner = m.trim_start_matches('\'').trim_end_matches('\'');
            let mut all = outer.clone();
            all.extend(fields(inner));
            all
        }
        _ => outer,
    }
}

/// A decoded `SOCKADDR` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SockAddr {
    /// An IPv4 or IPv6 address and port (an IPv6 scope id beside it, 0 when none).
    Inet {
        /// The address.
        ip: IpAddr,
        /// The port.
        port: u16,
        /// The IPv6 scope (interface index) of a link-local address, else 0.
        scope_id: u32,
    },
    /// Any other family (UNIX, netlink ...): not a network connection.
    Other(u16),
}

/// Decodes the `saddr=` hex of a SOCKADDR record (a raw `struct sockaddr`, family in host
/// order, port and address in network order).
pub(crate) fn parse_sockaddr(hex: &str) -> Option<SockAddr> {
    let b = hex_bytes(hex)?;
    let family = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?);
    let port = || b.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
    if family == libc::AF_INET as u16 {
        let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(SockAddr::Inet {
            ip: IpAddr::V4(Ipv4Addr::from(a)),
            port: port()?,
            scope_id: 0,
        })
    } else if family == libc::AF_INET6 as u16 {
        let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let scope_id = b
            .get(24..28)
            .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
        Some(SockAddr::Inet {
            ip: IpAddr::V6(Ipv6Addr::from(a)),
            port: port()?,
            scope_id,
        })
    } else {
        Some(SockAddr::Other(family))
    }
}

/// The command line of a PROCTITLE record (`proctitle=` hex with NUL-separated arguments, or
/// a quoted string when it has no special characters), arguments joined with spaces.
pub(crate) fn proctitle(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        return plain(raw).map(str::to_owned);
    }
    let bytes = hex_bytes(plain(raw)?)?;
    Some(crate::sys::procinfo::join_cmdline(&bytes, usize::MAX).0)
}
