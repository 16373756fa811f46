//! `sshd_config` as sshd reads it for the global context: keywords case-insensitive, the
//! first value obtained wins, `Include` expanded in place (globs in the last component,
//! relative to `/etc/ssh`, files in lexical order), `Match` blocks skipped (a `Match` lasts
//! until `Match all` or the end of its file). Pure over text, with file access through a
//! callback so tests need no files.

use std::collections::BTreeMap;

use super::fs::{read_text, Root};

/// Where sshd's configuration is.
pub(crate) const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
/// The largest configuration file read.
const MAX_FILE: usize = 1024 * 1024;
/// Include nesting limit (sshd's own is 16).
const MAX_DEPTH: usize = 8;
/// Most files read in all.
const MAX_FILES: usize = 64;

/// The files an `Include` pattern names: (name, text or why it could not be read).
pub(crate) type IncludedFiles = Vec<(String, Result<String, String>)>;

/// A setting's value and where it was set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SshdSetting {
    /// The value as written (arguments joined by one space, quotes removed).
    pub value: String,
    /// `file:line`.
    pub origin: String,
}

/// The global settings of an sshd configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SshdConfig {
    /// Lower-cased keyword -> its first value.
    pub settings: BTreeMap<String, SshdSetting>,
    /// Files read, in order.
    pub files: Vec<String>,
    /// Problems met (unreadable includes, nesting too deep).
    pub problems: Vec<String>,
}

impl SshdConfig {
    /// The value of `keyword` (any case), if set.
    pub fn get(&self, keyword: &str) -> Option<&SshdSetting> {
        self.settings.get(&keyword.to_ascii_lowercase())
    }
}

/// Matches `name` against a glob pattern with `*` and `?` (linear-time backtracking).
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Splits a configuration line into keyword and arguments (`Key value`, `Key=value`,
/// `Key "quoted value"`). `None` for blank lines and comments.
pub(crate) fn split_line(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let keyword = line[..end].to_ascii_lowercase();
    let mut rest = line[end..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_arg = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            '#' if !quoted && !in_arg => break,
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            c => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(cur);
    }
    Some((keyword, args))
}

/// Parses the configuration in `text` (named `origin`) into `out`. `open(pattern)` returns
/// the files an `Include` pattern names, as (name, text) pairs in order.
pub(crate) fn parse_into(
    text: &str,
    origin: &str,
    out: &mut SshdConfig,
    depth: usize,
    open: &mut dyn FnMut(&str) -> IncludedFiles,
) {
    out.files.push(origin.to_owned());
    let mut in_match = false;
    for (n, line) in text.lines().enumerate() {
        let Some((keyword, args)) = split_line(line) else {
            continue;
        };
        if keyword == "match" {
            in_match = !(args.len() == 1 && args[0].eq_ignore_ascii_case("all"));
            continue;
        }
        if in_match {
            continue;
        }
        if keyword == "include" {
            if depth >= MAX_DEPTH {
                out.problems
                    .push(format!("{origin}:{}: Include nested too deeply", n + 1));
                continue;
            }
            for pattern in &args {
                for (name, content) in open(pattern) {
                    if out.files.len() >= MAX_FILES {
                        out.problems
                            .push(format!("{origin}:{}: too many included files", n + 1));
                        return;
                    }
                    match content {
                        Ok(t) => parse_into(&t, &name, out, depth + 1, open),
                        Err(e) => out.problems.push(e),
                    }
                }
            }
            continue;
        }
        out.settings.entry(keyword).or_insert_with(|| SshdSetting {
            value: args.join(" "),
            origin: format!("{origin}:{}", n + 1),
        });
    }
}

/// The files an Include pattern names under `root` (relative patterns are under
/// `/etc/ssh`), sorted.
fn expand_include(root: &Root, pattern: &str) -> IncludedFiles {
    let abs = if pattern.starts_with('/') {
        pattern.to_owned()
    } else {
        format!("/etc/ssh/{pattern}")
    };
    let (dir, file_pattern) = match abs.rsplit_once('/') {
        Some((d, f)) => (if d.is_empty() { "/" } else { d }, f),
        None => return Vec::new(),
    };
    let read = |name: String| {
        let content = read_text(&root.path(&name), MAX_FILE).map_err(|e| e.to_string());
        (name, content)
    };
    if !file_pattern.contains(['*', '?']) {
        // A plain name that does not exist is not an error for sshd.
        if !root.path(&abs).exists() {
            return Vec::new();
        }
        return vec![read(abs)];
    }
    let Ok(entries) = std::fs::read_dir(root.path(dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| glob_match(file_pattern, n))
        .take(MAX_FILES)
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| read(format!("{}/{n}", dir.trim_end_matches('/'))))
        .collect()
}

/// Reads sshd's configuration under `root`. `Ok(None)` when `sshd_config` does not exist
/// (sshd not installed).
pub(crate) fn read_sshd_config(root: &Root) -> Result<Option<SshdConfig>, twinguard_os::safefile::FileError> {
    let text = match read_text(&root.path(SSHD_CONFIG), MAX_FILE) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = SshdConfig::default();
    parse_into(&text, SSHD_CONFIG, &mut out, 0, &mut |p| expand_include(root, p));
    Ok(Some(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str, includes: &[(&str, &str)]) -> SshdConfig {
        let mut out = SshdConfig::default();
        let owned: Vec<(String, String)> = includes
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        parse_into(text, "sshd_config", &mut out, 0, &mut |p| {
            owned
                .iter()
                .filter(|(n, _)| glob_match(p, n))
                .map(|(n, t)| (n.clone(), Ok(t.clone())))
                .collect()
        });
        out
    }

    #[test]
    fn first_value_wins_and_case_is_ignored() {
        let c = parse(
            "permitrootlogin no\nPermitRootLogin yes\nMaxAuthTries=3\nBanner \"/etc/my banner\"",
            &[],
        );
        assert_eq!(c.get("PermitRootLogin").unwrap().value, "no");
        assert_eq!(c.get("PermitRootLogin").unwrap().origin, "sshd_config:1");
        assert_eq!(c.get("maxauthtries").unwrap().value, "3");
        assert_eq!(c.get("banner").unwrap().value, "/etc/my banner");
    }

    #[test]
    fn includes_come_first_where_they_stand_and_match_is_skipped() {
        let c = parse(
            "Include conf.d/*.conf\nPermitRootLogin yes\nMatch User bob\n  X11Forwarding yes\nMatch all\nPort 2222\n",
            &[("conf.d/10.conf", "PermitRootLogin no\n"), ("other", "Port 1")],
        );
        assert_eq!(c.get("permitrootlogin").unwrap().value, "no");
        assert_eq!(c.get("permitrootlogin").unwrap().origin, "conf.d/10.conf:1");
        assert!(c.get("x11forwarding").is_none());
        assert_eq!(c.get("port").unwrap().value, "2222");
    }

    #[test]
    fn include_loops_stop() {
        let c = parse("Include self\n", &[("self", "Include self\n")]);
        assert!(!c.problems.is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.conf", "a.conf"));
        assert!(!glob_match("*.conf", "a.conf~"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match(&"*".repeat(300), "x"));
        assert!(!glob_match(&"*a".repeat(100), &"a".repeat(99)));
    }
}
