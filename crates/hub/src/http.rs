//! A minimal HTTP/1.1 for the operator API's client (the CLI, the tests): one request per
//! connection (`Connection: close`), `Content-Length` bodies only, bounded head and body
//! sizes. The server side is hyper's ([`crate::api_server`]); [`request_from`] turns what
//! hyper parsed into a [`Request`], with the same path, query and body-length rules that
//! [`parse_request`] applies to raw bytes for the fuzz targets.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use twinguard_core::iothub::query::{decoded_pairs, percent_decode};

/// Largest request or response head (request line / status line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body (a desired document; IoT Hub's own limit is 32 KB).
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// Largest response body the client reads (a page of messages).
pub const MAX_RESPONSE_BODY: usize = 512 * 1024 * 1024;
/// Most header lines in a request.
pub const MAX_HEADERS: usize = 64;

/// Why a request or response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket failed or timed out.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Not the HTTP we speak; the status to answer with.
    #[error("{status}: {message}")]
    Bad {
        /// 400, 413, 431, 501...
        status: u16,
        /// What is wrong.
        message: String,
    },
}

fn bad(status: u16, message: impl Into<String>) -> HttpError {
    HttpError::Bad {
        status,
        message: message.into(),
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path's segments, percent-decoded (`/v1/twins/d%2F1` -> `["v1", "twins", "d/1"]`).
    pub segments: Vec<String>,
    /// The query's decoded pairs.
    pub query: Vec<(String, Option<String>)>,
    /// Header lines: names in lower case, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The values of header `name` (lower case).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of header `name` (lower case), if it appears exactly once.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let mut values = self.header_values(name);
        let first = values.next()?;
        values.next().is_none().then_some(first)
    }
}

/// Reads into `buf`, waiting at most until `deadline` (no deadline: the socket's own timeout).
fn read_until(stream: &mut TcpStream, buf: &mut [u8], deadline: Option<Instant>) -> Result<usize, HttpError> {
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(bad(408, "request not received in time"));
        }
        stream.set_read_timeout(Some(left))?;
    }
    match stream.read(buf) {
        Ok(n) => Ok(n),
        Err(e)
            if deadline.is_some()
                && matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
        {
            Err(bad(408, "request not received in time"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the head (up to the blank line) and returns it and any body bytes read after it.
fn read_head(stream: &mut TcpStream, deadline: Option<Instant>) -> Result<(String, Vec<u8>), HttpError> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            data.truncate(end);
            let head = String::from_utf8(data).map_err(|_| bad(400, "head is not UTF-8"))?;
            return Ok((head, rest));
        }
        if data.len() > MAX_HEAD_BYTES {
            return Err(bad(431, "head too large"));
        }
        let n = read_until(stream, &mut chunk, deadline)?;
        if n == 0 {
            return Err(bad(400, "connection closed in the head"));
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// The `Content-Length` of a head's header lines (0 without one); chunked bodies and
/// repeated lengths are refused.
fn content_length(headers: &[(String, String)], max: usize) -> Result<usize, HttpError> {
    let mut length = None;
    for (name, value) in headers {
        if name == "content-length" {
            let n: usize = value.parse().map_err(|_| bad(400, "bad Content-Length"))?;
            if length.replace(n).is_some_and(|old| old != n) {
                return Err(bad(400, "conflicting Content-Length headers"));
            }
        } else if name == "transfer-encoding" {
            return Err(bad(501, "chunked bodies are not supported"));
        }
    }
    let length = length.unwrap_or(0);
    if length > max {
        return Err(bad(413, format!("body of {length} bytes; at most {max}")));
    }
    Ok(length)
}

fn read_body(
    stream: &mut TcpStream,
    mut body: Vec<u8>,
    length: usize,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, HttpError> {
    body.truncate(length);
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = read_until(stream, &mut chunk[..want], deadline)?;
        if n == 0 {
            return Err(bad(400, "connection closed in the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// The header lines of a head (after its first line), names lower-cased.
fn parse_headers(lines: &str) -> Result<Vec<(String, String)>, HttpError> {
    let mut headers = Vec::new();
    for line in lines.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(400, "a header line without a colon"))?;
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Err(bad(400, "bad header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        if headers.len() > MAX_HEADERS {
            return Err(bad(431, format!("more than {MAX_HEADERS} header lines")));
        }
    }
    Ok(headers)
}

/// Parses a request head (the request line and the header lines, without the blank line);
/// the body is left empty. Pure, for the fuzz target.
pub fn parse_head(head: &str) -> Result<Request, HttpError> {
    let (request_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(505, "only HTTP/1.x"));
    }
    let headers = parse_headers(headers)?;
    request_from(method, target, headers)
}

/// A request (body left empty) from its method, target (path and query, still encoded) and
/// header lines (names lower-cased): the path's segments and the query decoded, the body's
/// length checked. Shared by [`parse_head`] and the API server, which gets these from hyper.
pub fn request_from(
    method: &str,
    target: &str,
    headers: Vec<(String, String)>,
) -> Result<Request, HttpError> {
    if headers.len() > MAX_HEADERS {
        return Err(bad(431, format!("more than {MAX_HEADERS} header lines")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(400, format!("path: {e}")))?;
    let query = decoded_pairs(query).map_err(|e| bad(400, format!("query: {e}")))?;
    content_length(&headers, MAX_REQUEST_BODY)?;
    Ok(Request {
        method: method.to_owned(),
        segments,
        query,
        headers,
        body: Vec::new(),
    })
}

/// Parses a whole request held in memory (head, blank line, body), as the
/// API server would get it. Pure, for the fuzz target and tests.
pub fn parse_request(bytes: &[u8]) -> Result<Request, HttpError> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(400, "no end of head"))?;
    if end > MAX_HEAD_BYTES {
        return Err(bad(431, "head too large"));
    }
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| bad(400, "head is not UTF-8"))?;
    let mut request = parse_head(head)?;
    let length = content_length(&request.headers, MAX_REQUEST_BODY)?;
    let body = &bytes[end + 4..];
    if body.len() < length {
        return Err(bad(400, "connection closed in the body"));
    }
    request.body = body[..length].to_vec();
    Ok(request)
}

/// Sends one request to `addr`, with the API token `token` as a bearer token, and returns the
/// status and the JSON body (`Null` when empty).
pub fn call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    target: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), HttpError> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let (head, rest) = read_head(&mut stream, None)?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(400, format!("bad status line {status_line:?}")))?;
    let length = content_length(&parse_headers(headers)?, MAX_RESPONSE_BODY)?;
    let bytes = read_body(&mut stream, rest, length, None)?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| bad(400, format!("response is not JSON: {e}")))?
    };
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_headers_and_bodies() {
        let r = parse_request(
            b"POST /v1/twins/d%2F1?x=1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAUTHORIZATION:  Bearer abc \r\nContent-Length: 2\r\n\r\n{}xx",
        )
        .expect("parses");
        assert_eq!(r.method, "POST");
        assert_eq!(r.segments, ["v1", "twins", "d/1"]);
        assert_eq!(r.header("authorization"), Some("Bearer abc"));
        assert_eq!(r.header("host"), Some("127.0.0.1:1"));
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn bad_requests_get_their_status() {
        let status = |bytes: &[u8]| match parse_request(bytes) {
            Err(HttpError::Bad { status, .. }) => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(b"GET / HTTP/2\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/1.1 x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"), 413);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(status(many.as_bytes()), 431);
    }
}
