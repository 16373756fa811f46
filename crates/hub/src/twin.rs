//! Twin documents as IoT Hub keeps them: a desired and a reported section, each a JSON object
//! with its own `$version`, changed by JSON merge patches (RFC 7386: `null` deletes) and bounded
//! by IoT Hub's limits (key syntax, nesting depth, 32 KB per section). Pure.

use serde_json::{Map, Value};
use twinguard_core::config::merge_patch;

/// Largest section (desired or reported), counted as its compact JSON without `$version`.
pub const MAX_SECTION_BYTES: usize = 32 * 1024;
/// Deepest nesting of objects and arrays below a section's root.
pub const MAX_DEPTH: usize = 10;
/// Largest tags section, counted as its compact JSON.
pub const MAX_TAGS_BYTES: usize = 16 * 1024;
/// Longest member name, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a twin document or patch is refused (the client gets status 400; the operator API 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    /// Not a JSON object.
    #[error("{0} must be a JSON object")]
    NotAnObject(&'static str),
    /// A member name IoT Hub refuses.
    #[error("member name {0:?}: names are 1 to 1024 bytes without '.', '$', ' ' or control characters")]
    BadKey(String),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Larger than [`MAX_SECTION_BYTES`] ([`MAX_TAGS_BYTES`] for tags) once applied.
    #[error("the {what} section would be {size} bytes; at most {} are allowed", if *what == "tags" { MAX_TAGS_BYTES } else { MAX_SECTION_BYTES })]
    TooLarge {
        /// `desired` or `reported`.
        what: &'static str,
        /// Its size.
        size: usize,
    },
}

/// One twin: both sections and their versions. A new twin has empty sections at version 1,
/// as IoT Hub creates them.
#[derive(Clone, Debug, PartialEq)]
pub struct Twin {
    /// Desired properties (no `$version` member inside).
    pub desired: Map<String, Value>,
    /// `$version` of the desired section; +1 per change, so a client can see gaps.
    pub desired_version: i64,
    /// Reported properties (no `$version` member inside).
    pub reported: Map<String, Value>,
    /// `$version` of the reported section.
    pub reported_version: i64,
}

impl Default for Twin {
    fn default() -> Twin {
        Twin {
            desired: Map::new(),
            desired_version: 1,
            reported: Map::new(),
            reported_version: 1,
        }
    }
}

impl Twin {
    /// The body of a twin GET answer: `{"desired": {..., "$version"}, "reported": {...,
    /// "$version"}}`.
    pub fn get_body(&self) -> Value {
        serde_json::json!({
            "desired": with_version(&self.desired, self.desired_version),
            "reported": with_version(&self.reported, self.reported_version),
        })
    }

    /// Merges a reported patch. On error the twin is unchanged. Returns the new reported
    /// `$version`.
    pub fn patch_reported(&mut self, patch: &Value) -> Result<i64, TwinError> {
        let merged = patched(&self.reported, patch, "reported")?;
        self.reported = merged;
        self.reported_version += 1;
        Ok(self.reported_version)
    }

    /// Applies an operator's change to the desired section. Returns the notification to send
    /// (the merge patch from the old to the new section, with the new `$version`), or `None`
    /// when nothing changed (no new version either).
    pub fn change_desired(&mut self, change: &DesiredChange) -> Result<Option<Value>, TwinError> {
        let new = match change {
            DesiredChange::Patch(patch) => patched(&self.desired, patch, "desired")?,
            DesiredChange::Replace(doc) => {
                let Value::Object(members) = doc else {
                    return Err(TwinError::NotAnObject("desired properties"));
                };
                let mut stripped = Value::Object(Map::new());
                // Null members mean "absent" in IoT Hub's twin model, in a replacement too.
                merge_patch(&mut stripped, &Value::Object(members.clone()));
                let Value::Object(new) = stripped else {
                    return Err(TwinError::NotAnObject("desired properties"));
                };
                check_section(&new, "desired")?;
                new
            }
        };
        let Value::Object(mut notification) =
            diff(&Value::Object(self.desired.clone()), &Value::Object(new.clone()))
        else {
            return Err(TwinError::NotAnObject("desired properties"));
        };
        if notification.is_empty() {
            return Ok(None);
        }
        self.desired = new;
        self.desired_version += 1;
        notification.insert("$version".into(), Value::from(self.desired_version));
        Ok(Some(Value::Object(notification)))
    }
}

/// An operator's change to the desired properties.
#[derive(Clone, Debug, PartialEq)]
pub enum DesiredChange {
    /// Replace the whole section (`twin set-desired`).
    Replace(Value),
    /// Merge a patch into it (`twin patch-desired`).
    Patch(Value),
}

fn with_version(section: &Map<String, Value>, version: i64) -> Value {
    let mut out = section.clone();
    out.insert("$version".into(), Value::from(version));
    Value::Object(out)
}

/// `section` with `patch` merged in, checked.
pub fn patched(
    section: &Map<String, Value>,
    patch: &Value,
    what: &'static str,
) -> Result<Map<String, Value>, TwinError> {
    let Value::Object(members) = patch else {
        return Err(TwinError::NotAnObject(what));
    };
    check_keys(patch, 0)?;
    let mut merged = Value::Object(section.clone());
    merge_patch(&mut merged, &Value::Object(members.clone()));
    let Value::Object(merged) = merged else {
        return Err(TwinError::NotAnObject(what));
    };
    check_section(&merged, what)?;
    Ok(merged)
}

/// Checks a tags section (service side): keys, depth and size.
pub fn check_tags(tags: &Map<String, Value>) -> Result<(), TwinError> {
    let value = Value::Object(tags.clone());
    check_keys(&value, 0)?;
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_TAGS_BYTES {
        return Err(TwinError::TooLarge { what: "tags", size });
    }
    Ok(())
}

/// Checks a whole section: keys, depth and size.
fn check_section(section: &Map<String, Value>, what: &'static str) -> Result<(), TwinError> {
    let value = Value::Object(section.clone());
    check_keys(&value, 0)?;
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_SECTION_BYTES {
        return Err(TwinError::TooLarge { what, size });
    }
    Ok(())
}

/// Member names and nesting depth, recursively. `depth` is that of `value`'s members.
fn check_keys(value: &Value, depth: usize) -> Result<(), TwinError> {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Object(members) => {
            for key in members.keys() {
                if !key_allowed(key) {
                    return Err(TwinError::BadKey(key.clone()));
                }
            }
            Box::new(members.values())
        }
        Value::Array(items) => Box::new(items.iter()),
        _ => return Ok(()),
    };
    for child in children {
        if matches!(child, Value::Object(_) | Value::Array(_)) {
            if depth + 1 > MAX_DEPTH {
                return Err(TwinError::TooDeep);
            }
            check_keys(child, depth + 1)?;
        }
    }
    Ok(())
}

fn key_allowed(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key
            .chars()
            .any(|c| c == '.' || c == '$' || c == ' ' || c.is_control())
}

/// The JSON merge patch that turns `old` into `new` (both objects): removed members become
/// `null`, changed objects recurse, other changes are the new value.
pub fn diff(old: &Value, new: &Value) -> Value {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return new.clone();
    };
    let mut patch = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in new {
        match old.get(key) {
            Some(before) if before == value => {}
            Some(before @ Value::Object(_)) if value.is_object() => {
                patch.insert(key.clone(), diff(before, value));
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(patch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reported_patches_merge_and_version() {
        let mut twin = Twin::default();
        assert_eq!(
            twin.patch_reported(&json!({"a": {"b": 1, "c": 2}, "d": [1, 2]})),
            Ok(2)
        );
        assert_eq!(twin.patch_reported(&json!({"a": {"b": null}, "e": true})), Ok(3));
        assert_eq!(
            twin.get_body(),
            json!({"desired": {"$version": 1}, "reported": {"a": {"c": 2}, "d": [1, 2], "e": true, "$version": 3}})
        );
        for bad in [
            json!([1]),
            json!({"a.b": 1}),
            json!({"$version": 4}),
            json!({"a b": 1}),
            json!({"": 1}),
        ] {
            assert!(twin.patch_reported(&bad).is_err(), "{bad}");
        }
        // The root plus MAX_DEPTH nested levels is the deepest allowed.
        let deepest = (0..=MAX_DEPTH).fold(json!(1), |v, _| json!({ "k": v }));
        assert!(twin.clone().patch_reported(&deepest).is_ok());
        let deeper = json!({ "k": deepest });
        assert_eq!(twin.patch_reported(&deeper), Err(TwinError::TooDeep));
        let big = json!({"big": "x".repeat(MAX_SECTION_BYTES)});
        assert!(matches!(
            twin.patch_reported(&big),
            Err(TwinError::TooLarge { .. })
        ));
        assert_eq!(twin.reported_version, 3, "refused patches change nothing");
    }

    #[test]
    fn desired_changes_notify_the_difference() {
        let mut twin = Twin::default();
        let n = twin.change_desired(&DesiredChange::Patch(
            json!({"c": {"x": {"value": 1}, "y": {"value": 2}}}),
        ));
        assert_eq!(
            n,
            Ok(Some(
                json!({"c": {"x": {"value": 1}, "y": {"value": 2}}, "$version": 2})
            ))
        );
        let n = twin.change_desired(&DesiredChange::Replace(
            json!({"c": {"x": {"value": 1}}, "z": null}),
        ));
        assert_eq!(n, Ok(Some(json!({"c": {"y": null}, "$version": 3}))));
        assert_eq!(
            twin.desired,
            json!({"c": {"x": {"value": 1}}})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
        assert_eq!(
            twin.change_desired(&DesiredChange::Patch(json!({"c": {"x": {"value": 1}}}))),
            Ok(None)
        );
        assert_eq!(twin.desired_version, 3);
        assert!(twin.change_desired(&DesiredChange::Replace(json!("x"))).is_err());
    }

    #[test]
    fn diff_round_trips() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": {"f": 1}});
        let new = json!({"b": {"c": 2, "d": 4}, "e": 5, "g": {}});
        let mut applied = old.clone();
        merge_patch(&mut applied, &diff(&old, &new));
        assert_eq!(applied, new);
    }
}
