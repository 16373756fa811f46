//! Local accounts from `/etc/passwd`, `/etc/group` and `/etc/shadow`, parsed directly (no NSS,
//! so no LDAP or other network round-trips). Pure line parsers and bounded readers.
//!
//! Password hashes are never kept: a shadow entry keeps only whether its password is empty,
//! locked or set.

use std::path::Path;

use super::fs::{BoundedLines, Root};
use twinguard_os::safefile::FileError;

/// The longest line accepted; longer lines are skipped and counted.
pub(crate) const MAX_LINE: usize = 8192;
/// The most lines read from one file.
pub(crate) const MAX_LINES: usize = 1_000_000;

/// One `/etc/passwd` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// What the password field holds (`x`: the hash is in the shadow file).
    pub password_field: PasswordState,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// GECOS (full name, ...).
    pub gecos: String,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
    /// 1-based line number.
    pub line: usize,
}

/// One `/etc/group` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Supplementary members (user names).
    pub members: Vec<String>,
    /// 1-based line number.
    pub line: usize,
}

/// What a password field holds, without the hash itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordState {
    /// Empty: no password is needed to log in.
    Empty,
    /// `x`: the hash is in the shadow file.
    Shadowed,
    /// Locked (`!...` or `*...`): password login impossible.
    Locked,
    /// A hash.
    Hash,
}

impl PasswordState {
    /// Classifies a password field.
    pub fn of(field: &str) -> PasswordState {
        if field.is_empty() {
            PasswordState::Empty
        } else if field == "x" {
            PasswordState::Shadowed
        } else if field.starts_with('!') || field.starts_with('*') {
            PasswordState::Locked
        } else {
            PasswordState::Hash
        }
    }
}

/// One `/etc/shadow` entry (name and password state only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShadowEntry {
    /// Login name.
    pub name: String,
    /// What the password field holds.
    pub password: PasswordState,
    /// 1-based line number.
    pub line: usize,
}

/// Entries of one file and the lines that were not entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed<T> {
    /// The entries, in file order.
    pub entries: Vec<T>,
    /// Lines that were neither entries, comments nor blank (including over-long lines).
    pub malformed: usize,
    /// NIS compatibility lines (`+...`, `-...`), which are not entries.
    pub nis_lines: usize,
    /// Whether the file had more lines than were read.
    pub truncated: bool,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            entries: Vec::new(),
            malformed: 0,
            nis_lines: 0,
            truncated: false,
        }
    }
}

/// What a line is, before parsing its fields.
enum LineKind<'a> {
    Skip,
    Nis,
    Fields(Vec<&'a str>),
}

fn classify(line: &str) -> LineKind<'_> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        LineKind::Skip
    } else if line.starts_with('+') || line.starts_with('-') {
        LineKind::Nis
    } else {
        LineKind::Fields(line.split(':').collect())
    }
}

/// Parses one passwd line (`name:pw:uid:gid:gecos:home:shell`); `None` when malformed.
pub(crate) fn parse_passwd_line(line: &str, number: usize) -> Option<PasswdEntry> {
    let LineKind::Fields(f) = classify(line) else {
        return None;
    };
    if f.len() != 7 || f[0].is_empty() {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_owned(),
        password_field: PasswordState::of(f[1]),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        gecos: f[4].to_owned(),
        home: f[5].to_owned(),
        shell: f[6].to_owned(),
        line: number,
    })
}

/// Parses one group line (`name:pw:gid:member,member`); `None` when malformed.
pub(crate) fn parse_group_line(line: &str, number: usize) -> Option<GroupEntry> {
    let LineKind::Fields(f) = classify(line) else {
        return None;
    };
    if f.len() != 4 || f[0].is_empty() {
        return None;
    }
    Some(GroupEntry {
        name: f[0].to_owned(),
        gid: f[2].parse().ok()?,
        members: f[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect(),
        line: number,
    })
}

/// Parses one shadow line (9 fields; only the first two are looked at).
pub(crate) fn parse_shadow_line(line: &str, number: usize) -> Option<ShadowEntry> {
    let LineKind::Fields(f) = classify(line) else {
        return None;
    };
    if f.len() < 2 || f.len() > 9 || f[0].is_empty() {
        return None;
    }
    Some(ShadowEntry {
        name: f[0].to_owned(),
        password: PasswordState::of(f[1]),
        line: number,
    })
}

/// Parses the lines of a file with `parse` (pure).
pub(crate) fn parse_lines<T>(
    lines: impl Iterator<Item = String>,
    parse: impl Fn(&str, usize) -> Option<T>,
) -> Parsed<T> {
    let mut out = Parsed::default();
    for (i, line) in lines.enumerate() {
        match classify(&line) {
            LineKind::Skip => {}
            LineKind::Nis => out.nis_lines += 1,
            LineKind::Fields(_) => match parse(&line, i + 1) {
                Some(entry) => out.entries.push(entry),
                None => out.malformed += 1,
            },
        }
    }
    out
}

/// Reads and parses `path` with bounded lines.
pub(crate) fn read_file<T>(
    path: &Path,
    parse: impl Fn(&str, usize) -> Option<T>,
) -> Result<Parsed<T>, FileError> {
    let mut lines = BoundedLines::open(path, MAX_LINE, MAX_LINES)?;
    let mut out = parse_lines(&mut lines, parse);
    out.malformed += lines.skipped();
    out.truncated = lines.truncated();
    if let Some(source) = lines.take_error() {
        return Err(FileError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(out)
}

/// `/etc/passwd` under `root`.
pub(crate) fn read_passwd(root: &Root) -> Result<Parsed<PasswdEntry>, FileError> {
    read_file(&root.path("/etc/passwd"), parse_passwd_line)
}

/// `/etc/group` under `root`.
pub(crate) fn read_group(root: &Root) -> Result<Parsed<GroupEntry>, FileError> {
    read_file(&root.path("/etc/group"), parse_group_line)
}

/// `/etc/shadow` under `root`.
pub(crate) fn read_shadow(root: &Root) -> Result<Parsed<ShadowEntry>, FileError> {
    read_file(&root.path("/etc/shadow"), parse_shadow_line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let e = parse_passwd_line("root:x:0:0:root:/root:/bin/bash", 1).unwrap();
        assert_eq!((e.name.as_str(), e.uid, e.gid), ("root", 0, 0));
        assert_eq!(e.password_field, PasswordState::Shadowed);
        assert_eq!(e.shell, "/bin/bash");
        // Empty GECOS, home and shell are allowed.
        let e = parse_passwd_line("svc::999:999:::", 2).unwrap();
        assert_eq!(e.password_field, PasswordState::Empty);
        assert_eq!(e.shell, "");
        for bad in [
            "root:x:0:0:root:/root",
            "root:x:zero:0:root:/root:/bin/sh",
            ":x:1:1:::",
            "a:x:1:1:::/bin/sh:extra",
            "a:x:-1:1:::",
            "a:x:4294967296:1:::",
        ] {
            assert_eq!(parse_passwd_line(bad, 1), None, "{bad}");
        }
    }

    #[test]
    fn group_lines() {
        let g = parse_group_line("sudo:x:27:alice, bob,,", 1).unwrap();
        assert_eq!(g.members, ["alice", "bob"]);
        assert_eq!(parse_group_line("nogroup:x:65534:", 1).unwrap().members.len(), 0);
        assert_eq!(parse_group_line("bad:x:27", 1), None);
    }

    #[test]
    fn comments_blank_and_nis_lines() {
        let text = "# comment\n\n+@netgroup\n-baduser\nroot:x:0:0::/root:/bin/sh\nbroken\n";
        let p = parse_lines(text.lines().map(str::to_owned), parse_passwd_line);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].line, 5);
        assert_eq!(p.nis_lines, 2);
        assert_eq!(p.malformed, 1);
    }

    #[test]
    fn shadow_keeps_only_the_state() {
        let s = parse_shadow_line("root:$6$abc$def:19000:0:99999:7:::", 1).unwrap();
        assert_eq!(s.password, PasswordState::Hash);
        assert_eq!(
            parse_shadow_line("daemon:*:19000:0:99999:7:::", 1)
                .unwrap()
                .password,
            PasswordState::Locked
        );
        assert_eq!(
            parse_shadow_line("ops::19000::::::", 1).unwrap().password,
            PasswordState::Empty
        );
        assert_eq!(
            parse_shadow_line("locked:!$6$x:1::::::", 1).unwrap().password,
            PasswordState::Locked
        );
    }
}
