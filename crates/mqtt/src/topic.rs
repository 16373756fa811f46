//! Topic names and topic filters (MQTT 3.1.1 §4.7): syntax checks and matching. Pure.

/// Why a topic name or filter is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long (§4.7.3).
    #[error("a topic is at least one character long")]
    Empty,
    /// Longer than a UTF-8 string can be on the wire.
    #[error("a topic is at most 65535 bytes long (found {0})")]
    TooLong(usize),
    /// U+0000 is not allowed in a topic (§4.7.3).
    #[error("a topic must not contain U+0000")]
    NullCharacter,
    /// `+` or `#` in a topic name (they are filter wildcards, §3.3.2.1).
    #[error("a topic name must not contain the wildcards + or #")]
    WildcardInName,
    /// A wildcard that is not a whole level, or `#` that is not the last level (§4.7.1).
    #[error("a wildcard must be a whole level, and # only the last one")]
    MisplacedWildcard,
}

fn common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong(topic.len()));
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name (what a PUBLISH is sent to): non-empty, no wildcards, no U+0000.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter (what a SUBSCRIBE asks for): `+` only as a whole level, `#` only as
/// the whole last level.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        let has_plus = level.contains('+');
        let has_hash = level.contains('#');
        if (has_plus && *level != "+") || (has_hash && (*level != "#" || i != last)) {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Whether a (valid) topic `name` matches a (valid) `filter`. Topics starting with `$` are not
/// matched by a filter starting with a wildcard (§4.7.2), so `#` does not see `$SYS/...` or
/// `$iothub/...`.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            // `a/#` also matches `a` (the parent level, §4.7.1.2).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters() {
        assert_eq!(validate_name("a/b"), Ok(()));
        assert_eq!(validate_name("/"), Ok(()));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0"), Err(TopicError::NullCharacter));
        for ok in ["#", "+", "a/#", "+/+/c", "$iothub/twin/res/#", "a//b", "/+"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+/b", "a/b+", "##"] {
            assert_eq!(validate_filter(bad), Err(TopicError::MisplacedWildcard), "{bad}");
        }
    }

    #[test]
    fn matching_follows_section_4_7() {
        for (filter, name, expect) in [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$iothub/x", false),
            ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", true),
            ("+/+", "/a", true),
            ("a/+/c", "a//c", true),
            ("a", "a/b", false),
        ] {
            assert_eq!(matches(filter, name), expect, "{filter} vs {name}");
        }
    }
}
