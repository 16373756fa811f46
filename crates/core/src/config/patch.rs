//! IoT Hub desired-property patches (SPEC §2): the agent keeps the last *received* full desired
//! document and its `$version`, applies each patch to it as a JSON merge patch (RFC 7386), ignores
//! stale notifications and detects gaps, after which the caller fetches the full twin again.
//! A patch is never treated as the whole document.

use serde_json::{Map, Value};

/// Applies `patch` to `target` as an RFC 7386 JSON merge patch: objects merge member by member,
/// `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(existing) = target {
        for (key, value) in members {
            if value.is_null() {
                existing.remove(key);
            } else {
                merge_patch(existing.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// What happened to a desired-properties notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Merged into the document; validate [`DesiredState::document`] next.
    Applied {
        /// The document's new `$version`.
        version: i64,
    },
    /// Its `$version` is not newer than the one already received: ignored.
    Stale {
        /// The notification's version.
        received: i64,
        /// The version already held.
        known: i64,
    },
    /// One or more versions were missed (or none was ever received): fetch the full twin.
    Gap {
        /// The version that was expected next, if any is known.
        expected: Option<i64>,
        /// The notification's version.
        received: i64,
    },
    /// The patch has no integer `$version`: it cannot be ordered; fetch the full twin.
    Unversioned,
}

/// The last received full desired document and its version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    document: Value,
    version: Option<i64>,
}

impl DesiredState {
    /// Nothing received yet.
    pub fn new() -> DesiredState {
        DesiredState {
            document: Value::Object(Map::new()),
            version: None,
        }
    }

    /// Replaces the document with a full desired section (from a twin GET), taking its
    /// `$version`.
    pub fn replace(&mut self, desired: Value) {
        self.version = desired.get("$version").and_then(Value::as_i64);
        self.document = desired;
    }

    /// Applies a desired-properties patch notification.
    pub fn apply_patch(&mut self, patch: &Value) -> PatchOutcome {
        let Some(received) = patch.get("$version").and_then(Value::as_i64) else {
            return PatchOutcome::Unversioned;
        };
        let Some(known) = self.version else {
            return PatchOutcome::Gap {
                expected: None,
                received,
            };
        };
        if received <= known {
            return PatchOutcome::Stale { received, known };
        }
        if received != known + 1 {
            return PatchOutcome::Gap {
                expected: Some(known + 1),
                received,
            };
        }
        merge_patch(&mut self.document, patch);
        self.version = Some(received);
        PatchOutcome::Applied { version: received }
    }

    /// The merged desired document (validate it before applying it).
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The `$version` of the document, if one was received.
    pub fn version(&self) -> Option<i64> {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        // The examples of RFC 7386 appendix A.
        for (target, patch, result) in [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ] {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, result, "{target} + {patch}");
        }
    }

    #[test]
    fn a_patch_keeps_unmentioned_properties() {
        let key = super::super::CONFIG_KEY;
        let mut state = DesiredState::new();
        state.replace(json!({key: {"snapshotFrequency": {"value": "PT1H"}, "eventPriorityLogin": {"value": "Low"}}, "$version": 4}));
        let outcome = state.apply_patch(&json!({key: {"eventPriorityLogin": null}, "$version": 5}));
        assert_eq!(outcome, PatchOutcome::Applied { version: 5 });
        assert_eq!(
            state.document()[key],
            json!({"snapshotFrequency": {"value": "PT1H"}})
        );
        assert_eq!(
            state.apply_patch(&json!({"$version": 5})),
            PatchOutcome::Stale {
                received: 5,
                known: 5
            }
        );
        assert_eq!(
            state.apply_patch(&json!({"$version": 7})),
            PatchOutcome::Gap {
                expected: Some(6),
                received: 7
            }
        );
        assert_eq!(state.apply_patch(&json!({})), PatchOutcome::Unversioned);
        assert!(matches!(
            DesiredState::new().apply_patch(&json!({"$version": 1})),
            PatchOutcome::Gap { expected: None, .. }
        ));
    }
}
