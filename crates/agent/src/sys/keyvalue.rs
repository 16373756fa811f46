//! Small configuration formats read by the OS baseline: `/etc/login.defs` (`KEY value`) and
//! `limits.conf` (`domain type item value`). Pure parsers.

use std::collections::BTreeMap;

/// Parses login.defs: upper-case keys and their value; the last definition wins (as shadow's
/// `getdef` reads it).
pub(crate) fn parse_login_defs(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(2, |c: char| c.is_whitespace());
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        out.insert(key.to_owned(), value.to_owned());
    }
    out
}

/// One `limits.conf` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    /// Who (`*`, `root`, `@group`).
    pub domain: String,
    /// `soft`, `hard` or `-` (both).
    pub kind: String,
    /// The resource (`core`, `nofile`).
    pub item: String,
    /// The value (`0`, `unlimited`).
    pub value: String,
    /// `file:line`.
    pub origin: String,
}

/// Parses a limits.conf file named `origin`.
pub(crate) fn parse_limits(text: &str, origin: &str) -> Vec<Limit> {
    text.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            (f.len() == 4).then(|| Limit {
                domain: f[0].to_owned(),
                kind: f[1].to_owned(),
                item: f[2].to_owned(),
                value: f[3].to_owned(),
                origin: format!("{origin}:{}", n + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_defs() {
        let m = parse_login_defs(
            "# c\nPASS_MAX_DAYS\t99999\nENCRYPT_METHOD SHA512\nENCRYPT_METHOD YESCRYPT\nLONELY\n",
        );
        assert_eq!(m["PASS_MAX_DAYS"], "99999");
        assert_eq!(m["ENCRYPT_METHOD"], "YESCRYPT");
        assert!(!m.contains_key("LONELY"));
    }

    #[test]
    fn limits() {
        let l = parse_limits(
            "*  hard  core  0 # no dumps\n@staff - nofile 4096\nbad line\n",
            "limits.conf",
        );
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].item, "core");
        assert_eq!(l[0].origin, "limits.conf:1");
        assert_eq!(l[1].kind, "-");
    }
}
