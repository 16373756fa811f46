//! Automatic device management configurations, as IoT Hub has them: a target condition over
//! twins, a priority, and content (`properties.desired.*` paths set on every targeted twin).
//! `deviceContent` targets device twins (a bare condition); `moduleContent` targets module
//! twins (`from devices.modules where ...`), either as paths directly or keyed by module id
//! (`{"azureiotsecurity": {"properties.desired.X": ...}}`, applied to that module only).
//! Among the configurations targeting a twin the highest priority wins; on a tie the newest.
//! Pure: deciding and computing; `rollout` does the writing.

use serde_json::{Map, Value};

use crate::twin_query::{evaluate, parse_target, Condition, QueryError, Source};

/// The prefix of every content path.
const DESIRED_PREFIX: &str = "properties.desired.";

/// Why a configuration document is refused (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    /// The target condition does not parse.
    #[error("targetCondition: {0}")]
    Target(#[from] QueryError),
    /// Something else is wrong, said in words.
    #[error("{0}")]
    Invalid(String),
}

/// One path the content sets: the members below `properties.desired`, and the value.
#[derive(Clone, Debug, PartialEq)]
pub struct ContentPath {
    /// Only for module twins of this id (`None`: every targeted twin).
    pub module: Option<String>,
    /// The members below `properties.desired`.
    pub path: Vec<String>,
    /// What is set there.
    pub value: Value,
}

/// A configuration, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Configuration {
    /// Its id.
    pub id: String,
    /// Higher wins.
    pub priority: i64,
    /// Creation time, Unix milliseconds (the newest wins a tie).
    pub created_ms: i64,
    /// `id@etag`, what a twin records once it holds this content.
    pub stamp: String,
    /// Device twins or module twins, and which of them; `None` targets nothing.
    pub target: Option<(Source, Condition)>,
    /// What it sets.
    pub content: Vec<ContentPath>,
}

fn invalid(message: impl Into<String>) -> ConfigurationError {
    ConfigurationError::Invalid(message.into())
}

fn content_paths(
    section: &Map<String, Value>,
    module: Option<&str>,
) -> Result<Vec<ContentPath>, ConfigurationError> {
    let mut out = Vec::new();
    for (key, value) in section {
        if let Some(rest) = key.strip_prefix(DESIRED_PREFIX) {
            let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(invalid(format!("content path {key:?} has an empty member")));
            }
            out.push(ContentPath {
                module: module.map(str::to_owned),
                path,
                value: value.clone(),
            });
        } else if key == "properties.desired" {
            return Err(invalid(
                "content sets members below properties.desired (\"properties.desired.NAME\"), not the whole section",
            ));
        } else if let (None, Value::Object(inner)) = (module, value) {
            twinguard_core::iothub::identity::validate_id("module", key)
                .map_err(|e| invalid(format!("moduleContent key {key:?}: {e}")))?;
            out.extend(content_paths(inner, Some(key))?);
        } else {
            return Err(invalid(format!(
                "content key {key:?}: expected \"properties.desired.NAME\"{}",
                if module.is_none() { " or a module id" } else { "" }
            )));
        }
    }
    Ok(out)
}

impl Configuration {
    /// Checks a stored or submitted configuration document.
    pub fn from_document(
        id: &str,
        doc: &Map<String, Value>,
        created_ms: i64,
        stamp: String,
    ) -> Result<Configuration, ConfigurationError> {
        let target_text = match doc.get("targetCondition") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(invalid("targetCondition must be a string")),
        };
        let target = parse_target(target_text)?;
        let priority = match doc.get("priority") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .filter(|p| *p >= 0)
                .ok_or_else(|| invalid("priority must be a whole number >= 0"))?,
        };
        let content = match doc.get("content") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(c)) => c.clone(),
            Some(_) => return Err(invalid("content must be an object")),
        };
        let mut paths = Vec::new();
        for (key, section) in &content {
            let Value::Object(section) = section else {
                if section.is_null() {
                    continue;
                }
                return Err(invalid(format!("content.{key} must be an object")));
            };
            let is_modules = match key.as_str() {
                "deviceContent" => false,
                "moduleContent" => true,
                "modulesContent" => {
                    return Err(invalid(
                        "content.modulesContent (IoT Edge deployments) is not implemented",
                    ))
                }
                other => return Err(invalid(format!("content.{other} is not a content kind"))),
            };
            let wanted = if is_modules {
                Source::Modules
            } else {
                Source::Devices
            };
            if let Some((source, _)) = &target {
                if section.is_empty() {
                    continue;
                }
                if *source != wanted {
                    return Err(invalid(if is_modules {
                        "moduleContent needs a targetCondition starting with \"from devices.modules where\""
                    } else {
                        "deviceContent needs a targetCondition over devices (without \"from devices.modules\")"
                    }));
                }
            }
            let found = content_paths(section, None)?;
            if !is_modules && found.iter().any(|p| p.module.is_some()) {
                return Err(invalid("deviceContent keys are \"properties.desired.NAME\""));
            }
            paths.extend(found);
        }
        Ok(Configuration {
            id: id.to_owned(),
            priority,
            created_ms,
            stamp,
            target,
            content: paths,
        })
    }

    /// Whether it targets `twin` (the service API's twin document) of `source`.
    pub fn targets(&self, source: Source, twin: &Value) -> bool {
        let Some((s, condition)) = &self.target else {
            return false;
        };
        if *s != source || evaluate(condition, twin) != Some(true) {
            return false;
        }
        // A content keyed by module id only targets that module.
        let module = twin.get("moduleId").and_then(Value::as_str);
        self.content.is_empty()
            || self
                .content
                .iter()
                .any(|p| p.module.is_none() || p.module.as_deref() == module)
    }

    /// `desired` with this configuration's content set (for `module`, when a module twin).
    pub fn apply(&self, desired: &Map<String, Value>, module: Option<&str>) -> Map<String, Value> {
        let mut out = Value::Object(desired.clone());
        for p in &self.content {
            if p.module.is_some() && p.module.as_deref() != module {
                continue;
            }
            set_path(&mut out, &p.path, p.value.clone());
        }
        match out {
            Value::Object(m) => m,
            _ => desired.clone(),
        }
    }
}

fn set_path(doc: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = doc;
    for key in parents {
        if !at.get(key).is_some_and(Value::is_object) {
            if let Value::Object(m) = at {
                m.insert(key.clone(), Value::Object(Map::new()));
            }
        }
        let Some(next) = at.get_mut(key) else {
            return;
        };
        at = next;
    }
    if let Value::Object(m) = at {
        m.insert(last.clone(), value);
    }
}

/// The configuration in force for a twin among `all`: highest priority, then newest, then
/// the greatest id (so the choice never depends on the order given).
pub fn winner<'a>(all: &'a [Configuration], source: Source, twin: &Value) -> Option<&'a Configuration> {
    all.iter()
        .filter(|c| c.targets(source, twin))
        .max_by(|a, b| (a.priority, a.created_ms, &a.id).cmp(&(b.priority, b.created_ms, &b.id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(id: &str, doc: Value, created: i64) -> Configuration {
        let Value::Object(doc) = doc else { panic!("object") };
        Configuration::from_document(id, &doc, created, format!("{id}@1")).expect("valid")
    }

    #[test]
    fn highest_priority_then_newest_wins() {
        let twin = json!({"deviceId": "d", "moduleId": "azureiotsecurity", "tags": {"site": "plant1"}});
        let target = "from devices.modules where moduleId='azureiotsecurity' and tags.site='plant1'";
        let low = config(
            "low",
            json!({"targetCondition": target, "priority": 1,
                   "content": {"moduleContent": {"azureiotsecurity": {"properties.desired.c": {"a": 1}}}}}),
            1,
        );
        let high = config(
            "high",
            json!({"targetCondition": target, "priority": 5,
                   "content": {"moduleContent": {"properties.desired.c.b": 2}}}),
            0,
        );
        let all = vec![low.clone(), high.clone()];
        assert_eq!(
            winner(&all, Source::Modules, &twin).map(|c| c.id.as_str()),
            Some("high")
        );
        assert_eq!(winner(&all, Source::Devices, &twin), None);
        let other = json!({"deviceId": "d", "moduleId": "other", "tags": {"site": "plant1"}});
        assert_eq!(
            winner(std::slice::from_ref(&low), Source::Modules, &other),
            None,
            "keyed by module id"
        );
        let desired = json!({"c": {"x": 0}, "keep": true});
        let desired = desired.as_object().cloned().unwrap_or_default();
        assert_eq!(
            Value::Object(high.apply(&desired, Some("azureiotsecurity"))),
            json!({"c": {"x": 0, "b": 2}, "keep": true})
        );
        assert_eq!(
            Value::Object(low.apply(&desired, Some("azureiotsecurity"))),
            json!({"c": {"a": 1}, "keep": true})
        );
    }

    #[test]
    fn refusals() {
        for doc in [
            json!({"targetCondition": "tags.site = ", "content": {}}),
            json!({"targetCondition": "tags.a='b'", "content": {"moduleContent": {"properties.desired.x": 1}}}),
            json!({"targetCondition": "tags.a='b'", "priority": -1}),
            json!({"targetCondition": "tags.a='b'", "content": {"deviceContent": {"tags.x": 1}}}),
            json!({"targetCondition": "tags.a='b'", "content": {"modulesContent": {"$edgeAgent": {}}}}),
        ] {
            let Value::Object(doc) = doc else { panic!("object") };
            assert!(
                Configuration::from_document("c", &doc, 0, String::new()).is_err(),
                "{doc:?}"
            );
        }
    }
}
