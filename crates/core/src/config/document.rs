//! Reading a twin document: bytes -> JSON (or an "unreadable document" error with line and
//! column), then finding the configuration object in one of the four accepted shapes.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::property::CONFIG_KEY;

/// Documents larger than this are refused before parsing (SPEC §2).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The most members (or array elements) of one JSON value kept while parsing a document. An
/// object with more keeps its first ones and gains the member [`OVERSIZED_MEMBER`] holding
/// how many it had, which makes the document invalid; the rest is skipped unparsed, so a
/// flood of members costs no memory. Arrays (no property takes one) keep their first
/// elements.
pub const MAX_OBJECT_MEMBERS: usize = 256;

/// The member the parser adds to an object that had more than [`MAX_OBJECT_MEMBERS`]
/// members; its value is the number of members the document gave it. `$`-prefixed, so the
/// validator never takes it for a property.
pub const OVERSIZED_MEMBER: &str = "$twinguard:members";

/// Why a document could not be read as JSON at all. Distinct from an invalid configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// Zero bytes, or only white space.
    #[error("the document is empty")]
    Empty,
    /// Over [`MAX_DOCUMENT_BYTES`].
    #[error("the document is larger than the 1 MiB limit")]
    TooLarge,
    /// Bytes that are not UTF-8.
    #[error("the document is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    /// Not well-formed JSON.
    #[error("malformed JSON at line {line} column {column}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
}

/// Parses the bytes of a twin document into JSON.
pub fn read_document(bytes: &[u8]) -> Result<Value, Unreadable> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(Unreadable::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Unreadable::NotUtf8(e.valid_up_to()))?;
    // A byte-order mark is not JSON, but editors on some systems write one; accept it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(Unreadable::Empty);
    }
    let mut parser = serde_json::Deserializer::from_str(text);
    BoundedValue
        .deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value))
        .map_err(|e| {
            let full = e.to_string();
            // serde_json appends " at line L column C"; we report those as fields instead.
            let message = match full.rfind(" at line ") {
                Some(i) => full[..i].to_owned(),
                None => full,
            };
            Unreadable::Malformed {
                line: e.line(),
                column: e.column(),
                message,
            }
        })
}

/// Deserializes a JSON value keeping at most [`MAX_OBJECT_MEMBERS`] members per object and
/// elements per array (see there). Depth is bounded by serde_json's recursion limit.
struct BoundedValue;

impl<'de> DeserializeSeed<'de> for BoundedValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(BoundedVisitor)
    }
}

struct BoundedVisitor;

impl<'de> Visitor<'de> for BoundedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while items.len() < MAX_OBJECT_MEMBERS {
            match seq.next_element_seed(BoundedValue)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        let mut count: u64 = 0;
        while let Some(key) = map.next_key::<String>()? {
            count += 1;
            if members.len() < MAX_OBJECT_MEMBERS {
                let value = map.next_value_seed(BoundedValue)?;
                members.insert(key, value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if count > MAX_OBJECT_MEMBERS as u64 {
            members.insert(OVERSIZED_MEMBER.to_owned(), Value::from(count));
        }
        Ok(Value::Object(members))
    }
}

/// The first object of `doc` (depth first) that had more than [`MAX_OBJECT_MEMBERS`]
/// members, as (JSON pointer, members), and how many such objects there are.
pub fn oversized_objects(doc: &Value) -> Option<((String, u64), usize)> {
    fn walk(v: &Value, pointer: &mut String, found: &mut Vec<(String, u64)>) {
        match v {
            Value::Object(members) => {
                if let Some(n) = members.get(OVERSIZED_MEMBER).and_then(Value::as_u64) {
                    if members.len() > MAX_OBJECT_MEMBERS {
                        if found.is_empty() {
                            found.push((pointer.clone(), n));
                        } else {
                            found.push((String::new(), n));
                        }
                    }
                }
                for (key, value) in members {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&escape_pointer(key));
                    walk(value, pointer, found);
                    pointer.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, value) in items.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push_str(&format!("/{i}"));
                    walk(value, pointer, found);
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(doc, &mut String::new(), &mut found);
    let count = found.len();
    found.into_iter().next().map(|first| (first, count))
}

/// Where the configuration object is in a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<'a> {
    /// The configuration object, or `None` when the document has none (all defaults).
    pub object: Option<&'a Value>,
    /// JSON pointer of the object from the document's root (`""` for a bare object).
    pub pointer: String,
    /// Problems of the surrounding structure (e.g. `"desired"` is a string), as
    /// (pointer, what was found): they make the document invalid.
    pub shape_errors: Vec<(String, String)>,
}

/// Finds the configuration object, detecting the document's shape by its keys: a full module
/// twin (`properties.desired`), a `{"desired": ...}` wrapper, the desired section itself (has
/// the configuration key), or the bare configuration object.
pub fn locate(doc: &Value) -> Located<'_> {
    let mut located = Located {
        object: None,
        pointer: String::new(),
        shape_errors: Vec::new(),
    };
    let Value::Object(top) = doc else {
        located.shape_errors.push((String::new(), describe(doc)));
        return located;
    };
    let (desired, base) = if let Some(properties) = top.get("properties") {
        match properties {
            Value::Object(p) => (p.get("desired"), "/properties/desired".to_owned()),
            Value::Null => (None, String::new()),
            other => {
                located.shape_errors.push(("/properties".into(), describe(other)));
                return located;
            }
        }
    } else if let Some(desired) = top.get("desired") {
        (Some(desired), "/desired".to_owned())
    } else if top.contains_key(CONFIG_KEY) {
        (Some(doc), String::new())
    } else {
        // The bare configuration object.
        located.object = Some(doc);
        return located;
    };
    match desired {
        None | Some(Value::Null) => {}
        Some(Value::Object(section)) => match section.get(CONFIG_KEY) {
            None | Some(Value::Null) => {}
            Some(object) => {
                located.object = Some(object);
                located.pointer = format!("{base}/{}", escape_pointer(CONFIG_KEY));
            }
        },
        Some(other) => located.shape_errors.push((base, describe(other))),
    }
    located
}

/// A short description of a JSON value for messages: strings and scalars as JSON text (long
/// strings shortened), containers by their kind.
pub(crate) fn describe(value: &Value) -> String {
    const LIMIT: usize = 60;
    match value {
        Value::String(s) if s.chars().count() > LIMIT => {
            let head: String = s.chars().take(LIMIT).collect();
            format!("{}... ({} characters)", Value::String(head), s.chars().count())
        }
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        other => other.to_string(),
    }
}

/// Escapes one JSON pointer token (RFC 6901).
pub(crate) fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn a_flood_of_members_keeps_the_first_ones_and_says_how_many() {
        let mut text = String::from("{\"a\":{");
        for n in 0..1000 {
            text.push_str(&format!("\"k{n}\":[{n},{{\"x\":1}}],"));
        }
        text.push_str("\"last\":1},\"b\":[");
        text.push_str(&vec!["7"; 5000].join(","));
        text.push_str("]}");
        let doc = read_document(text.as_bytes()).unwrap();
        let a = doc["a"].as_object().unwrap();
        assert_eq!(a.len(), MAX_OBJECT_MEMBERS + 1);
        assert_eq!(a[OVERSIZED_MEMBER], 1001);
        assert_eq!(a["k255"], serde_json::json!([255, {"x": 1}]));
        assert_eq!(doc["b"].as_array().unwrap().len(), MAX_OBJECT_MEMBERS);
        assert_eq!(oversized_objects(&doc), Some((("/a".to_owned(), 1001), 1)));
        // Below the bound, exactly what serde_json builds.
        let small = r#"{"x": [1, 2.5, -3, 8192.0, "s", null, true], "y": {"z": {}}, "x": 2}"#;
        assert_eq!(
            read_document(small.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(small).unwrap()
        );
        assert!(oversized_objects(&read_document(small.as_bytes()).unwrap()).is_none());
        assert!(matches!(
            read_document(b"{\"a\": 1} x"),
            Err(Unreadable::Malformed {
                line: 1,
                column: 10,
                ..
            })
        ));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn detects_the_four_shapes() {
        let object = json!({"snapshotFrequency": {"value": "PT1H"}});
        let twin = json!({"properties": {"desired": {CONFIG_KEY: object.clone(), "$version": 3}}});
        let wrapper = json!({"desired": {CONFIG_KEY: object.clone()}});
        let section = json!({CONFIG_KEY: object.clone()});
        let key = format!("/{CONFIG_KEY}");
        for (doc, pointer) in [
            (&twin, format!("/properties/desired{key}")),
            (&wrapper, format!("/desired{key}")),
            (&section, key.clone()),
            (&object, String::new()),
        ] {
            let l = locate(doc);
            assert_eq!(l.object, Some(&object));
            assert_eq!(l.pointer, pointer);
            assert!(l.shape_errors.is_empty());
        }
    }

    #[test]
    fn unreadable_documents() {
        assert_eq!(read_document(b""), Err(Unreadable::Empty));
        assert_eq!(read_document(b" \n"), Err(Unreadable::Empty));
        assert_eq!(read_document(b"{\"a\": \xff}"), Err(Unreadable::NotUtf8(6)));
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert_eq!(read_document(&big), Err(Unreadable::TooLarge));
        match read_document(b"{\n  \"a\": 1\n  \"b\": 2\n}") {
            Err(Unreadable::Malformed { line, column, .. }) => assert_eq!((line, column), (3, 3)),
            other => panic!("{other:?}"),
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(matches!(
            read_document(deep.as_bytes()),
            Err(Unreadable::Malformed { .. })
        ));
        assert!(read_document("\u{feff}{}".as_bytes()).is_ok());
    }
}
