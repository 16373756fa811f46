//! Percent-encoding and `name=value&...` query strings, as IoT Hub uses them in SAS tokens,
//! MQTT user names and topic property bags, and as the operator API uses them in paths. Pure.
//!
//! Encoding is the `percent-encoding` crate's; decoding is ours because it must refuse a
//! malformed `%` escape, which the crate passes through.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Why a percent-encoded string cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `%` not followed by two hex digits.
    #[error("invalid percent escape at byte {0}")]
    BadEscape(usize),
    /// The decoded bytes are not UTF-8.
    #[error("percent-decoded text is not UTF-8")]
    NotUtf8,
}

/// Decodes `%XX` escapes (either case). `+` stays `+`: IoT Hub and the official SDKs encode a
/// space as `%20`, and a `+` in a property value must survive.
pub fn percent_decode(text: &str) -> Result<String, DecodeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(DecodeError::BadEscape(i))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

/// Every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters, with upper-case hex (a SAS
/// signature depends on the exact bytes, as the SPEC §6 vector shows).
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, NOT_UNRESERVED).to_string()
}

/// The raw (still encoded) `name=value` pairs of a query string; a member without `=` has no
/// value. Empty members (`a=1&&b=2`) are skipped.
pub fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    query
        .split('&')
        .filter(|m| !m.is_empty())
        .map(|m| match m.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (m, None),
        })
}

/// The decoded pairs of a query string.
pub fn decoded_pairs(query: &str) -> Result<Vec<(String, Option<String>)>, DecodeError> {
    raw_pairs(query)
        .map(|(name, value)| Ok((percent_decode(name)?, value.map(percent_decode).transpose()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let text = "urn:azureiot:Security:SecurityAgent:1 a+b/é";
        assert_eq!(percent_decode(&percent_encode(text)), Ok(text.to_owned()));
        assert_eq!(percent_decode("%24.ifid"), Ok("$.ifid".to_owned()));
        assert_eq!(percent_decode("%2f%2F"), Ok("//".to_owned()));
        assert_eq!(percent_decode("a+b"), Ok("a+b".to_owned()));
        assert_eq!(percent_decode("%"), Err(DecodeError::BadEscape(0)));
        assert_eq!(percent_decode("a%zz"), Err(DecodeError::BadEscape(1)));
        assert_eq!(percent_decode("%ff"), Err(DecodeError::NotUtf8));
    }

    #[test]
    fn encodes_all_but_unreserved_with_upper_case_hex() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("a/b c+é$"), "a%2Fb%20c%2B%C3%A9%24");
        assert_eq!(percent_encode("="), "%3D");
    }

    #[test]
    fn pairs() {
        assert_eq!(
            decoded_pairs("%24.mid=1&flag&&k=a%26b="),
            Ok(vec![
                ("$.mid".to_owned(), Some("1".to_owned())),
                ("flag".to_owned(), None),
                ("k".to_owned(), Some("a&b=".to_owned())),
            ])
        );
    }
}
