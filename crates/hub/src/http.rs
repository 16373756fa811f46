//! A minimal HTTP/1.1 for the operator API, both ends: one request per connection
//! (`Connection: close`), `Content-Length` bodies only, bounded head and body sizes. Enough
//! for a loopback JSON API between our own CLI and server; not a general HTTP implementation.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::query::{decoded_pairs, percent_decode};

/// Largest request or response head (request line / status line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body (a desired document; IoT Hub's own limit is 32 KB).
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// Largest response body the client reads (a page of messages).
pub const MAX_RESPONSE_BODY: usize = 512 * 1024 * 1024;

/// Why a request or response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket failed or timed out.
    #[error("{0}")]
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
}

/// Reads the head (up to the blank line) and returns it and any body bytes read after it.
fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), HttpError> {
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
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad(400, "connection closed in the head"));
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// The `Content-Length` of a head's header lines (0 without one); chunked bodies are refused.
fn content_length(headers: &str, max: usize) -> Result<usize, HttpError> {
    let mut length = 0;
    for line in headers.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().map_err(|_| bad(400, "bad Content-Length"))?;
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(501, "chunked bodies are not supported"));
        }
    }
    if length > max {
        return Err(bad(413, format!("body of {length} bytes; at most {max}")));
    }
    Ok(length)
}

fn read_body(stream: &mut TcpStream, mut body: Vec<u8>, length: usize) -> Result<Vec<u8>, HttpError> {
    if body.len() > length {
        body.truncate(length);
    }
    let missing = length - body.len();
    stream.take(missing as u64).read_to_end(&mut body)?;
    if body.len() != length {
        return Err(bad(400, "connection closed in the body"));
    }
    Ok(body)
}

/// Reads one request.
pub fn read_request(stream: &mut TcpStream) -> Result<Request, HttpError> {
    let (head, rest) = read_head(stream)?;
    let (request_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(505, "only HTTP/1.x"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(400, format!("path: {e}")))?;
    let query = decoded_pairs(query).map_err(|e| bad(400, format!("query: {e}")))?;
    let length = content_length(headers, MAX_REQUEST_BODY)?;
    let body = read_body(stream, rest, length)?;
    Ok(Request {
        method: method.to_owned(),
        segments,
        query,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Writes a JSON response and ends the exchange.
pub fn write_response(stream: &mut TcpStream, status: u16, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Sends one request to `addr` and returns the status and the JSON body (`Null` when empty).
pub fn call(
    addr: SocketAddr,
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
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let (head, rest) = read_head(&mut stream)?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(400, format!("bad status line {status_line:?}")))?;
    let length = content_length(headers, MAX_RESPONSE_BODY)?;
    let bytes = read_body(&mut stream, rest, length)?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| bad(400, format!("response is not JSON: {e}")))?
    };
    Ok((status, value))
}
