//! Validation of a configuration object: every problem of the document is reported, each with
//! its JSON pointer, what was expected and what was found. A document with any error yields no
//! [`Config`]: nothing of it is applied (SPEC §2).

use std::fmt;

use serde_json::{Map, Value};

use super::document::{describe, escape_pointer, locate};
use super::duration::{DurationError, IsoDuration, MAX_EFFECTIVE};
use super::property::{Kind, Property};
use super::{Config, Typed};
use crate::event::Priority;

/// Whether a problem rejects the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The document is invalid; nothing of it is applied.
    Error,
    /// Applied anyway; the operator should look.
    Warning,
}

impl Severity {
    /// `error` or `warning`, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// The `ErrorType` of the `ConfigurationError` item a problem becomes at runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A value of the wrong type or out of range; the document is rejected.
    TypeMismatch,
    /// Two valid values that contradict each other.
    Conflict,
    /// A valid value that works badly (or a name the agent does not know).
    NotOptimal,
}

impl ProblemKind {
    /// The wire spelling of `ErrorType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::TypeMismatch => "TypeMismatch",
            ProblemKind::Conflict => "Conflict",
            ProblemKind::NotOptimal => "NotOptimal",
        }
    }
}

/// One problem of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// What kind of `ConfigurationError` it is.
    pub kind: ProblemKind,
    /// JSON pointer from the document's root (`""` is the root).
    pub pointer: String,
    /// The property the problem is about (`ConfigurationName`), `""` for the document.
    pub property: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.pointer, self.message)
        }
    }
}

/// The outcome of validating a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    /// The configuration, when the document has no error.
    pub config: Option<Config>,
    /// Every problem, errors first, each group in document order.
    pub problems: Vec<Problem>,
}

impl Validation {
    /// Whether the document has no error.
    pub fn is_valid(&self) -> bool {
        self.config.is_some()
    }

    /// The problems that reject the document.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.severity == Severity::Error)
    }
}

/// Validates a whole twin document in any of the accepted shapes.
pub fn validate_document(doc: &Value) -> Validation {
    // Any object with too many members (the parser kept only the first ones) makes the
    // document invalid: one problem, naming the first such object.
    if let Some(((pointer, members), count)) = super::document::oversized_objects(doc) {
        let more = match count {
            1 => String::new(),
            n => format!(" ({} more objects are as large)", n - 1),
        };
        return Validation {
            config: None,
            problems: vec![Problem {
                severity: Severity::Error,
                kind: ProblemKind::TypeMismatch,
                pointer,
                property: String::new(),
                message: format!(
                    "the object has {members} members; at most {MAX_CONFIG_MEMBERS} are accepted (the configuration object has {} known properties){more}",
                    Property::all().len()
                ),
            }],
        };
    }
    let located = locate(doc);
    if !located.shape_errors.is_empty() {
        let problems = located
            .shape_errors
            .into_iter()
            .map(|(pointer, found)| Problem {
                severity: Severity::Error,
                kind: ProblemKind::TypeMismatch,
                pointer,
                property: String::new(),
                message: format!("expected a JSON object, found {found}"),
            })
            .collect();
        return Validation {
            config: None,
            problems,
        };
    }
    validate_config_object(located.object, &located.pointer)
}

/// The most members a configuration object may have. It knows 25 properties; a twin with more
/// than this many members is a mistake or a flood, and is invalid as a whole (no per-member
/// problems are built for it, so its cost stays bounded).
pub const MAX_CONFIG_MEMBERS: usize = super::document::MAX_OBJECT_MEMBERS;

/// How many unknown property names the one summarised warning lists.
pub const UNKNOWN_NAMES_LISTED: usize = 5;

/// Validates the configuration object found at `pointer` (`None` or `null` = all defaults).
pub fn validate_config_object(object: Option<&Value>, pointer: &str) -> Validation {
    let mut v = Validator {
        config: Config::default(),
        problems: Vec::new(),
    };
    match object {
        None | Some(Value::Null) => {}
        Some(Value::Object(members)) if members.len() > MAX_CONFIG_MEMBERS => v.error(
            pointer,
            "",
            format!(
                "the object has {} members; at most {MAX_CONFIG_MEMBERS} are accepted (the configuration object has {} known properties)",
                members
                    .get(super::document::OVERSIZED_MEMBER)
                    .and_then(Value::as_u64)
                    .unwrap_or(members.len() as u64),
                Property::all().len()
            ),
        ),
        Some(Value::Object(members)) => v.members(members, pointer),
        Some(other) => v.error(
            pointer,
            "",
            format!(
                "expected the configuration object to be a JSON object, found {}",
                describe(other)
            ),
        ),
    }
    let has_error = v.problems.iter().any(|p| p.severity == Severity::Error);
    if !has_error {
        v.advisories(pointer);
    }
    v.problems.sort_by_key(|p| p.severity);
    Validation {
        config: (!has_error).then_some(v.config),
        problems: v.problems,
    }
}

struct Validator {
    config: Config,
    problems: Vec<Problem>,
}

impl Validator {
    fn error(&mut self, pointer: &str, property: &str, message: String) {
        self.problems.push(Problem {
            severity: Severity::Error,
            kind: ProblemKind::TypeMismatch,
            pointer: pointer.to_owned(),
            property: property.to_owned(),
            message,
        });
    }

    fn warning(&mut self, kind: ProblemKind, pointer: &str, property: &str, message: String) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            kind,
            pointer: pointer.to_owned(),
            property: property.to_owned(),
            message,
        });
    }

    fn members(&mut self, members: &Map<String, Value>, base: &str) {
        let mut unknown: Vec<&str> = Vec::new();
        for (name, wrapper) in members {
            let pointer = format!("{base}/{}", escape_pointer(name));
            // IoT Hub's `$metadata`/`$version` members carry no configuration.
            if name.starts_with('$') {
                continue;
            }
            // A null member is deleted (IoT Hub's meaning): the property is at its default.
            if wrapper.is_null() {
                continue;
            }
            let Some(property) = Property::from_name(name) else {
                unknown.push(name);
                continue;
            };
            self.wrapper(property, wrapper, &pointer);
        }
        self.unknown_properties(&unknown, base);
    }

    /// One warning (one ConfigurationError item) for all unknown properties of a document:
    /// how many, and the first few names, each with its "did you mean".
    fn unknown_properties(&mut self, names: &[&str], base: &str) {
        let Some(first) = names.first() else {
            return;
        };
        let listed: Vec<String> = names
            .iter()
            .take(UNKNOWN_NAMES_LISTED)
            .map(|name| {
                let hint = did_you_mean(name, Property::all().into_iter().map(Property::name));
                format!("\"{name}\"{hint}")
            })
            .collect();
        let (pointer, property) = if names.len() == 1 {
            (format!("{base}/{}", escape_pointer(first)), (*first).to_owned())
        } else {
            (base.to_owned(), String::new())
        };
        let message = match names.len() {
            1 => {
                let hint = did_you_mean(first, Property::all().into_iter().map(Property::name));
                format!("unknown property \"{first}\" is ignored{hint}")
            }
            n if n <= UNKNOWN_NAMES_LISTED => {
                format!("{n} unknown properties are ignored: {}", listed.join(", "))
            }
            n => format!(
                "{n} unknown properties are ignored: {}, and {} more",
                listed.join(", "),
                n - UNKNOWN_NAMES_LISTED
            ),
        };
        self.warning(ProblemKind::NotOptimal, &pointer, &property, message);
    }

    fn wrapper(&mut self, property: Property, wrapper: &Value, pointer: &str) {
        let name = property.name();
        let Value::Object(fields) = wrapper else {
            self.error(
                pointer,
                &name,
                format!(
                    "expected an object like {{\"value\": {}}}, found {}",
                    property.default_value(),
                    describe(wrapper)
                ),
            );
            return;
        };
        for key in fields.keys().filter(|k| *k != "value" && !k.starts_with('$')) {
            let hint = did_you_mean(key, ["value".to_owned()]);
            self.warning(
                ProblemKind::NotOptimal,
                &format!("{pointer}/{}", escape_pointer(key)),
                &name,
                format!("unknown member \"{key}\" is ignored{hint}"),
            );
        }
        // `{}` (no value) means the default, as the seed document's "remove the property" does.
        let Some(value) = fields.get("value") else {
            return;
        };
        let value_pointer = format!("{pointer}/value");
        match check_value(property.kind(), value) {
            Ok(typed) => self.config.set(property, typed, value.clone()),
            Err(message) => self.error(&value_pointer, &name, message),
        }
    }

    fn advisories(&mut self, base: &str) {
        let c = self.config.clone();
        let at = |p: Property| format!("{base}/{}", p.name());
        let cache = Property::MaxLocalCacheSizeInBytes;
        let message = Property::MaxMessageSizeInBytes;
        if c.max_local_cache_size_in_bytes < c.max_message_size_in_bytes {
            let text = format!(
                "maxLocalCacheSizeInBytes ({}) is smaller than maxMessageSizeInBytes ({}): a message can never be full",
                c.max_local_cache_size_in_bytes, c.max_message_size_in_bytes
            );
            for p in [cache, message] {
                self.warning(ProblemKind::Conflict, &at(p), &p.name(), text.clone());
            }
        }
        let (high, low) = (
            Property::HighPriorityMessageFrequency,
            Property::LowPriorityMessageFrequency,
        );
        if c.high_priority_message_frequency.duration() > c.low_priority_message_frequency.duration() {
            let text = format!(
                "highPriorityMessageFrequency ({}) is longer than lowPriorityMessageFrequency ({}): High events would wait longer than Low ones",
                c.high_priority_message_frequency, c.low_priority_message_frequency
            );
            for p in [high, low] {
                self.warning(ProblemKind::Conflict, &at(p), &p.name(), text.clone());
            }
        }
        if !c.max_message_size_in_bytes.is_multiple_of(4096) {
            self.warning(
                ProblemKind::NotOptimal,
                &at(message),
                &message.name(),
                format!(
                    "{} is not a multiple of 4096: IoT Hub bills messages in 4 KB units",
                    c.max_message_size_in_bytes
                ),
            );
        }
        for p in Property::all().into_iter().filter(|p| p.kind() == Kind::Duration) {
            let Value::String(text) = c.value_of(p) else {
                continue;
            };
            let Ok(d) = IsoDuration::parse(&text) else {
                continue;
            };
            if d.duration().as_secs() == 0 {
                self.warning(
                    ProblemKind::NotOptimal,
                    &at(p),
                    &p.name(),
                    format!("\"{text}\" is shorter than one second: timers run at most once per second"),
                );
            } else if d.is_clamped() {
                self.warning(
                    ProblemKind::NotOptimal,
                    &at(p),
                    &p.name(),
                    format!(
                        "\"{text}\" is longer than {} days: the agent uses {} days",
                        MAX_EFFECTIVE.as_secs() / 86_400,
                        MAX_EFFECTIVE.as_secs() / 86_400
                    ),
                );
            }
        }
    }
}

/// Checks a property's `value` against its kind.
fn check_value(kind: Kind, value: &Value) -> Result<Typed, String> {
    match kind {
        Kind::Duration => {
            let Value::String(text) = value else {
                return Err(format!(
                    "expected an ISO 8601 duration like \"PT7M\", found {}",
                    describe(value)
                ));
            };
            match IsoDuration::parse(text) {
                Ok(d) => Ok(Typed::Duration(d)),
                Err(DurationError::Zero) => Err(format!(
                    "expected a duration longer than zero, found {}",
                    describe(value)
                )),
                Err(DurationError::Grammar(why)) => {
                    let upper = text.trim().to_ascii_uppercase();
                    let hint = if upper != *text && IsoDuration::parse(&upper).is_ok() {
                        format!("; did you mean \"{upper}\"?")
                    } else {
                        format!(" ({why})")
                    };
                    Err(format!(
                        "expected an ISO 8601 duration like \"PT7M\", found {}{hint}",
                        describe(value)
                    ))
                }
            }
        }
        Kind::Integer { min, max } => {
            let range = if max == u64::MAX {
                format!("an integer of at least {min}")
            } else {
                format!("an integer from {min} to {max}")
            };
            let Value::Number(n) = value else {
                return Err(format!("expected {range}, found {}", describe(value)));
            };
            // JSON Schema draft-07: a number with a zero fractional part is an integer.
            let integer = n
                .as_u64()
                .map(Some)
                .or_else(|| n.as_i64().map(|_| None))
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0)
                        .map(|f| (f >= 0.0 && f <= u64::MAX as f64).then_some(f as u64))
                });
            match integer {
                Some(Some(i)) if (min..=max).contains(&i) => Ok(Typed::Integer(i)),
                Some(_) => Err(format!("expected {range}, found {n}")),
                None => Err(format!(
                    "expected {range}, found {n}, which has a fractional part"
                )),
            }
        }
        Kind::Priority => {
            let expected = "expected \"High\", \"Low\" or \"Off\"";
            let Value::String(text) = value else {
                return Err(format!("{expected}, found {}", describe(value)));
            };
            match Priority::parse(text) {
                Some(p) => Ok(Typed::Priority(p)),
                None => {
                    let hint = did_you_mean(text, Priority::ALL.map(|p| p.as_str().to_owned()));
                    Err(format!(
                        "{expected} (case-sensitive), found {}{hint}",
                        describe(value)
                    ))
                }
            }
        }
        Kind::Boolean => match value {
            Value::Bool(b) => Ok(Typed::Boolean(*b)),
            other => Err(format!("expected true or false, found {}", describe(other))),
        },
    }
}

/// `; did you mean "X"?` when a candidate is close to `word`, else `""`.
pub fn did_you_mean(word: &str, candidates: impl IntoIterator<Item = String>) -> String {
    let lower = word.to_lowercase();
    let best = candidates
        .into_iter()
        .map(|c| {
            let d = if c.to_lowercase() == lower {
                0
            } else {
                edit_distance(&lower, &c.to_lowercase())
            };
            (d, c)
        })
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= 3.max(word.chars().count() / 6) && d < word.chars().count() => {
            format!("; did you mean \"{c}\"?")
        }
        _ => String::new(),
    }
}

/// Levenshtein distance over characters; inputs here are short property names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean(
                "eventPriorityLogins",
                Property::all().into_iter().map(Property::name)
            ),
            "; did you mean \"eventPriorityLogin\"?"
        );
        assert_eq!(
            did_you_mean("high", ["High".to_owned()]),
            "; did you mean \"High\"?"
        );
        assert_eq!(did_you_mean("completelyDifferent", ["value".to_owned()]), "");
    }
}
