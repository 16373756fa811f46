//! Reading a twin document: bytes -> JSON (or an "unreadable document" error with line and
//! column), then finding the configuration object in one of the four accepted shapes.

use serde_json::Value;

use super::property::CONFIG_KEY;

/// Documents larger than this are refused before parsing (SPEC §2).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

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
    serde_json::from_str(text).map_err(|e| {
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
        located
            .shape_errors
            .push((String::new(), super::validate::describe(doc)));
        return located;
    };
    let (desired, base) = if let Some(properties) = top.get("properties") {
        match properties {
            Value::Object(p) => (p.get("desired"), "/properties/desired".to_owned()),
            Value::Null => (None, String::new()),
            other => {
                located
                    .shape_errors
                    .push(("/properties".into(), super::validate::describe(other)));
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
        Some(other) => located
            .shape_errors
            .push((base, super::validate::describe(other))),
    }
    located
}

/// Escapes one JSON pointer token (RFC 6901).
pub(crate) fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
