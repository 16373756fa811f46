//! Operating-system facts: `/etc/os-release`, `/proc/meminfo`, `/proc/self/mountinfo`,
//! `/proc/cmdline` and `uname(2)`. Pure parsers over text, plus `uname`, the one system call.

use std::collections::BTreeMap;

/// Parses an os-release file (`KEY=value`, values optionally quoted with `"` or `'`, shell
/// escapes `\"`, `\\`, `` \` ``, `\$` in double quotes). Later keys win; malformed lines are
/// ignored.
pub(crate) fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        out.insert(key.to_owned(), unquote(value));
    }
    out
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() >= 2 && bytes[0] == b'\'' && bytes[bytes.len() - 1] == b'\'' {
        return value[1..value.len() - 1].to_owned();
    }
    if bytes.len() >= 2 && bytes[0] == b'"' && bytes[bytes.len() - 1] == b'"' {
        let inner = &value[1..value.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(n @ ('"' | '\\' | '`' | '$')) => out.push(n),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    value.to_owned()
}

/// Parses `/proc/meminfo` into key -> kB (`MemTotal: 16384 kB`). Values without a unit are
/// kept as they are (counts such as `HugePages_Total`).
pub(crate) fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let value = match parts.next() {
            None | Some("kB") => value,
            Some(_) => continue,
        };
        out.insert(key.trim().to_owned(), value);
    }
    out
}

/// One mount of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,nodev`).
    pub options: Vec<String>,
    /// File system type.
    pub fs_type: String,
    /// The source (`/dev/vda1`, `tmpfs`).
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl Mount {
    /// Whether the mount or its superblock has `option`.
    pub(crate) fn has_option(&self, option: &str) -> bool {
        self.options
            .iter()
            .chain(&self.super_options)
            .any(|o| o == option)
    }
}

/// Decodes the `\040`-style octal escapes of mountinfo fields.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line:
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
pub(crate) fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    if left.len() < 6 {
        return None;
    }
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_owned();
    let source = unescape_octal(right.next()?);
    let super_options = right.next().unwrap_or("").split(',').map(str::to_owned).collect();
    Some(Mount {
        mount_point: unescape_octal(left[4]),
        options: left[5].split(',').map(str::to_owned).collect(),
        fs_type,
        source,
        super_options,
    })
}

/// Parses all of mountinfo; malformed lines are ignored.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// The mount in force at `mount_point` (the last one listed: later mounts hide earlier ones).
pub(crate) fn mount_at<'a>(mounts: &'a [Mount], mount_point: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.mount_point == mount_point)
}

/// The value of `root=` on a kernel command line.
pub(crate) fn cmdline_root(cmdline: &str) -> Option<String> {
    cmdline
        .split_ascii_whitespace()
        .take_while(|w| *w != "--")
        .filter_map(|w| w.strip_prefix("root="))
        .last()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// What `uname(2)` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uname {
    /// `sysname` (`Linux`).
    pub sysname: String,
    /// `nodename`: the host name.
    pub nodename: String,
    /// `release` (`6.1.0-18-arm64`).
    pub release: String,
    /// `version` (`#1 SMP PREEMPT ...`).
    pub version: String,
    /// `machine` (`aarch64`).
    pub machine: String,
}

fn field_text(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| u8::from_ne_bytes(c.to_ne_bytes()))
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Calls `uname(2)`.
pub fn uname() -> std::io::Result<Uname> {
    // SAFETY: utsname is plain old data (arrays of c_char) for which all-zero bytes are a
    // valid value.
    let mut buf: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `buf` is a valid, writable utsname that outlives the call; uname writes only
    // into it.
    let rc = unsafe { libc::uname(&mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Uname {
        sysname: field_text(&buf.sysname),
        nodename: field_text(&buf.nodename),
        release: field_text(&buf.release),
        version: field_text(&buf.version),
        machine: field_text(&buf.machine),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quotes() {
        let m = parse_os_release(
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID='12'\nID=debian\n# x\nPRETTY_NAME=\"a \\\"b\\\" \\$c\"\nbad line\n=x\n",
        );
        assert_eq!(m["NAME"], "Debian GNU/Linux");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["PRETTY_NAME"], "a \"b\" $c");
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn meminfo_values() {
        let m = parse_meminfo(
            "MemTotal:       24668184 kB\nMemFree: 100 kB\nHugePages_Total:       0\nBad: x kB\n",
        );
        assert_eq!(m["MemTotal"], 24668184);
        assert_eq!(m["HugePages_Total"], 0);
        assert!(!m.contains_key("Bad"));
    }

    #[test]
    fn mountinfo_lines() {
        let m =
            parse_mountinfo_line("29 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard").unwrap();
        assert_eq!(m.mount_point, "/");
        assert_eq!(m.source, "/dev/vda");
        assert!(m.has_option("discard"));
        let m = parse_mountinfo_line("30 29 0:5 / /mnt/my\\040disk rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(m.mount_point, "/mnt/my disk");
        assert_eq!(parse_mountinfo_line("garbage"), None);
    }

    #[test]
    fn cmdline_root_value() {
        assert_eq!(
            cmdline_root("quiet root=/dev/mmcblk0p2 rw").as_deref(),
            Some("/dev/mmcblk0p2")
        );
        assert_eq!(cmdline_root("quiet -- root=/dev/x"), None);
        assert_eq!(cmdline_root("root="), None);
    }

    #[test]
    fn uname_answers() {
        let u = uname().unwrap();
        assert_eq!(u.sysname, "Linux");
        assert!(!u.machine.is_empty());
    }
}
