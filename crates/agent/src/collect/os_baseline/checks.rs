//! How each rule is decided against the `Facts`: sshd settings, file modes, sysctl values,
//! and the custom checks the table names.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::sys::accounts::PasswordState;
use crate::sys::fs::{self as sysfs, read_text};
use crate::sys::keyvalue::{self, Limit};
use crate::sys::osinfo;
use crate::sys::sshd;

use super::facts::{Facts, Scan};
use super::rule::{Check, Outcome, Rule, SshdTest};

/// How many offending paths a reason lists.
pub(super) const MAX_LISTED: usize = 5;

/// Parses an sshd time value (`90`, `90s`, `2m`, `1h30m`) into seconds.
pub(super) fn parse_sshd_time(value: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in value.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        total = total.checked_add(num.parse().ok()?)?;
    }
    Some(total)
}

pub(super) fn run_sshd(facts: &mut Facts, keyword: &str, default: &str, test: SshdTest) -> Outcome {
    let config = match facts.sshd() {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Outcome::Pass(format!(
                "not applicable: no {} (sshd not installed)",
                sshd::SSHD_CONFIG
            ))
        }
        Err(e) => return Outcome::Err(e),
    };
    let (value, origin) = match config.get(keyword) {
        Some(s) => (s.value.clone(), s.origin.clone()),
        None => (default.to_owned(), "sshd's default".to_owned()),
    };
    let shown = if value.is_empty() {
        "(default)"
    } else {
        value.as_str()
    };
    let said = format!("{keyword} is {shown} ({origin})");
    let ok = match test {
        SshdTest::OneOf(allowed) => allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim())),
        SshdTest::AtMost(max) => match value.trim().parse::<u64>() {
            Ok(n) => n <= max,
            Err(_) => return Outcome::Fail(format!("{said}: not a number")),
        },
        SshdTest::SecondsAtMost(max) => match parse_sshd_time(&value) {
            Some(n) => n > 0 && n <= max,
            None => return Outcome::Fail(format!("{said}: not a time")),
        },
        SshdTest::Between1And(max) => match parse_sshd_time(&value) {
            Some(n) => (1..=max).contains(&n),
            None => return Outcome::Fail(format!("{said}: not a number")),
        },
        SshdTest::NoneOf(weak) => {
            // A list replaces the default; `+` appends, `^` prepends and `-` removes from it.
            let removing = value.starts_with('-');
            let list = value.trim_start_matches(['+', '-', '^']).to_ascii_lowercase();
            let found: Vec<&str> = list
                .split(',')
                .filter(|alg| weak.iter().any(|w| alg.contains(w)))
                .collect();
            if !removing && !found.is_empty() {
                return Outcome::Fail(format!("{keyword} enables {} ({origin})", found.join(", ")));
            }
            true
        }
    };
    if ok {
        Outcome::Pass(said)
    } else {
        Outcome::Fail(said)
    }
}

pub(super) fn run_mode(
    facts: &mut Facts,
    path: &str,
    allowed: u32,
    groups: &[&str],
    missing_ok: bool,
) -> Outcome {
    let full = facts.root.path(path);
    let meta = match sysfs::metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if missing_ok {
                Outcome::Pass(format!("not applicable: {path} does not exist"))
            } else {
                Outcome::Fail(format!("{path} does not exist"))
            }
        }
        Err(e) => return Outcome::Err(format!("{path}: {e}")),
    };
    let mode_bits = meta.permissions().mode() & 0o7777;
    let mut problems = Vec::new();
    if mode_bits & !allowed != 0 {
        problems.push(format!("mode is {mode_bits:04o}, more than {allowed:04o}"));
    }
    if meta.uid() != facts.expected_uid {
        problems.push(format!("owner uid is {}, not {}", meta.uid(), facts.expected_uid));
    }
    let group_ok =
        meta.gid() == facts.expected_gid || groups.iter().any(|g| facts.gid_of(g) == Some(meta.gid()));
    if !group_ok {
        problems.push(format!("group gid is {}", meta.gid()));
    }
    if problems.is_empty() {
        Outcome::Pass(format!(
            "{path}: mode {mode_bits:04o}, uid {}, gid {}",
            meta.uid(),
            meta.gid()
        ))
    } else {
        Outcome::Fail(format!("{path}: {}", problems.join(", ")))
    }
}

pub(super) fn run_sysctl(facts: &mut Facts, keys: &[&str], accept: &[&str]) -> Outcome {
    let mut seen = Vec::new();
    let mut bad = Vec::new();
    let mut absent = Vec::new();
    for key in keys {
        let name = key.replace('/', ".");
        match facts.sysctl(key) {
            Some(v) => {
                if accept.contains(&v.as_str()) {
                    seen.push(format!("{name} = {v}"));
                } else {
                    bad.push(format!("{name} = {v}"));
                }
            }
            None => absent.push(name),
        }
    }
    if !bad.is_empty() {
        return Outcome::Fail(format!("{} (expected {})", bad.join(", "), accept.join(" or ")));
    }
    if !absent.is_empty() {
        // A whole family or module absent (no IPv6, no Yama) cannot be misconfigured.
        let family_absent = keys.iter().all(|k| {
            let top = k.split('/').take(2).collect::<Vec<_>>().join("/");
            !facts.root.path(format!("/proc/sys/{top}")).exists()
        });
        if family_absent {
            return Outcome::Pass(format!(
                "not applicable: {} not present in this kernel",
                absent.join(", ")
            ));
        }
        return Outcome::Err(format!("cannot read {}", absent.join(", ")));
    }
    Outcome::Pass(seen.join(", "))
}

pub(super) fn run_check(facts: &mut Facts, check: &Check) -> Outcome {
    match check.rule {
        Rule::Sshd {
            keyword,
            default,
            test,
        } => run_sshd(facts, keyword, default, test),
        Rule::Mode {
            path,
            allowed,
            groups,
            missing_ok,
        } => run_mode(facts, path, allowed, groups, missing_ok),
        Rule::Sysctl { keys, accept } => run_sysctl(facts, keys, accept),
        Rule::Custom(f) => f(facts),
    }
}

pub(super) fn list(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(MAX_LISTED).map(String::as_str).collect();
    if items.len() > MAX_LISTED {
        format!("{} and {} more", shown.join(", "), items.len() - MAX_LISTED)
    } else {
        shown.join(", ")
    }
}

pub(super) fn pass_or_fail(bad: Vec<String>, what_bad: &str, ok: &str) -> Outcome {
    if bad.is_empty() {
        Outcome::Pass(ok.to_owned())
    } else {
        Outcome::Fail(format!("{what_bad}: {}", list(&bad)))
    }
}

pub(super) fn check_host_keys(facts: &mut Facts) -> Outcome {
    let dir = facts.root.path("/etc/ssh");
    let Ok(entries) = sysfs::dir_names(&dir) else {
        return Outcome::Pass("not applicable: no /etc/ssh".to_owned());
    };
    let names: Vec<String> = entries
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
        .collect();
    if names.is_empty() {
        return Outcome::Pass("not applicable: no host private keys in /etc/ssh".to_owned());
    }
    let ssh_keys_gid = facts.gid_of("ssh_keys");
    let mut bad = Vec::new();
    for name in &names {
        let path = format!("/etc/ssh/{name}");
        // Some distributions make keys 0640 with group ssh_keys; that group may read them.
        let allowed = match sysfs::metadata(&facts.root.path(&path)) {
            Ok(m) if Some(m.gid()) == ssh_keys_gid => 0o640,
            _ => 0o600,
        };
        match run_mode(facts, &path, allowed, &["ssh_keys"], true) {
            Outcome::Pass(_) => {}
            Outcome::Fail(why) | Outcome::Err(why) => bad.push(why),
        }
    }
    pass_or_fail(
        bad,
        "host keys too open",
        &format!("{} host keys are root-only", names.len()),
    )
}

pub(super) fn check_tmp_sticky(facts: &mut Facts) -> Outcome {
    match sysfs::metadata(&facts.root.path("/tmp")) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                Outcome::Fail(format!(
                    "/tmp is mode {mode:04o}: world-writable without the sticky bit"
                ))
            } else {
                Outcome::Pass(format!("/tmp is mode {mode:04o}"))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Outcome::Pass("not applicable: no /tmp".to_owned())
        }
        Err(e) => Outcome::Err(format!("/tmp: {e}")),
    }
}

pub(super) fn scan_note(scan: &Scan) -> String {
    if scan.truncated {
        format!("; scan stopped after {} entries", scan.visited)
    } else {
        format!("; {} entries scanned", scan.visited)
    }
}

pub(super) fn check_world_writable_files(facts: &mut Facts) -> Outcome {
    let scan = facts.scan().clone();
    match pass_or_fail(
        scan.files.clone(),
        "world-writable files",
        "no world-writable files in system directories",
    ) {
        Outcome::Pass(r) => Outcome::Pass(r + &scan_note(&scan)),
        Outcome::Fail(r) => Outcome::Fail(r + &scan_note(&scan)),
        e => e,
    }
}

pub(super) fn check_world_writable_dirs(facts: &mut Facts) -> Outcome {
    let scan = facts.scan().clone();
    match pass_or_fail(
        scan.dirs_without_sticky.clone(),
        "world-writable directories without the sticky bit",
        "no world-writable directory without the sticky bit",
    ) {
        Outcome::Pass(r) => Outcome::Pass(r + &scan_note(&scan)),
        Outcome::Fail(r) => Outcome::Fail(r + &scan_note(&scan)),
        e => e,
    }
}

pub(super) fn check_empty_passwords(facts: &mut Facts) -> Outcome {
    let mut bad: Vec<String> = match facts.passwd() {
        Ok(p) => p
            .entries
            .iter()
            .filter(|e| e.password_field == PasswordState::Empty)
            .map(|e| format!("{} (/etc/passwd:{})", e.name, e.line))
            .collect(),
        Err(e) => return Outcome::Err(e),
    };
    match facts.shadow() {
        Ok(s) => bad.extend(
            s.entries
                .iter()
                .filter(|e| e.password == PasswordState::Empty)
                .map(|e| format!("{} (/etc/shadow:{})", e.name, e.line)),
        ),
        Err(e) => return Outcome::Err(e),
    }
    pass_or_fail(
        bad,
        "accounts with an empty password",
        "no account has an empty password",
    )
}

pub(super) fn check_uid0(facts: &mut Facts) -> Outcome {
    match facts.passwd() {
        Ok(p) => pass_or_fail(
            p.entries
                .iter()
                .filter(|e| e.uid == 0 && e.name != "root")
                .map(|e| format!("{} (/etc/passwd:{})", e.name, e.line))
                .collect(),
            "accounts besides root with uid 0",
            "only root has uid 0",
        ),
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_shadowed(facts: &mut Facts) -> Outcome {
    match facts.passwd() {
        Ok(p) => pass_or_fail(
            p.entries
                .iter()
                .filter(|e| matches!(e.password_field, PasswordState::Hash))
                .map(|e| format!("{} (/etc/passwd:{})", e.name, e.line))
                .collect(),
            "password hashes in /etc/passwd",
            "no password hash in /etc/passwd",
        ),
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn duplicates<'a>(items: impl Iterator<Item = (String, &'a str)>) -> Vec<String> {
    let mut seen: HashMap<String, Vec<&str>> = HashMap::new();
    for (key, name) in items {
        seen.entry(key).or_default().push(name);
    }
    let mut out: Vec<String> = seen
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(key, names)| format!("{key}: {}", names.join(" ")))
        .collect();
    out.sort();
    out
}

pub(super) fn check_dup_uids(facts: &mut Facts) -> Outcome {
    match facts.passwd() {
        Ok(p) => pass_or_fail(
            duplicates(
                p.entries
                    .iter()
                    .map(|e| (format!("uid {}", e.uid), e.name.as_str())),
            ),
            "shared uids",
            "every uid is unique",
        ),
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_dup_user_names(facts: &mut Facts) -> Outcome {
    match facts.passwd() {
        Ok(p) => pass_or_fail(
            duplicates(p.entries.iter().map(|e| (e.name.clone(), "twice"))),
            "repeated account names",
            "every account name is unique",
        ),
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_dup_gids(facts: &mut Facts) -> Outcome {
    match facts.group() {
        Ok(g) => pass_or_fail(
            duplicates(
                g.entries
                    .iter()
                    .map(|e| (format!("gid {}", e.gid), e.name.as_str())),
            ),
            "shared gids",
            "every gid is unique",
        ),
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_dup_group_names(facts: &mut Facts) -> Outcome {
    match facts.group() {
        Ok(g) => pass_or_fail(
            duplicates(g.entries.iter().map(|e| (e.name.clone(), "twice"))),
            "repeated group names",
            "every group name is unique",
        ),
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_root_gid(facts: &mut Facts) -> Outcome {
    match facts.passwd() {
        Ok(p) => match p.entries.iter().find(|e| e.name == "root") {
            Some(r) if r.gid == 0 => Outcome::Pass("root's primary gid is 0".to_owned()),
            Some(r) => Outcome::Fail(format!("root's primary gid is {}", r.gid)),
            None => Outcome::Fail("no root account in /etc/passwd".to_owned()),
        },
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_nis_entries(facts: &mut Facts) -> Outcome {
    let mut bad = Vec::new();
    for (file, count) in [
        ("/etc/passwd", facts.passwd().map(|p| p.nis_lines)),
        ("/etc/group", facts.group().map(|p| p.nis_lines)),
        ("/etc/shadow", facts.shadow().map(|p| p.nis_lines)),
    ] {
        match count {
            Ok(0) => {}
            Ok(n) => bad.push(format!("{file}: {n}")),
            Err(e) => return Outcome::Err(e),
        }
    }
    pass_or_fail(bad, "NIS compatibility lines", "no NIS compatibility lines")
}

pub(super) fn check_groups_exist(facts: &mut Facts) -> Outcome {
    let gids: std::collections::HashSet<u32> = match facts.group() {
        Ok(g) => g.entries.iter().map(|e| e.gid).collect(),
        Err(e) => return Outcome::Err(e),
    };
    match facts.passwd() {
        Ok(p) => pass_or_fail(
            p.entries
                .iter()
                .filter(|e| !gids.contains(&e.gid))
                .map(|e| format!("{} (gid {})", e.name, e.gid))
                .collect(),
            "accounts whose primary group does not exist",
            "every primary group exists",
        ),
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_shadow_group_empty(facts: &mut Facts) -> Outcome {
    let shadow_gid = facts.gid_of("shadow");
    let members: Vec<String> = match facts.group() {
        Ok(g) => g
            .entries
            .iter()
            .filter(|e| e.name == "shadow")
            .flat_map(|e| e.members.clone())
            .collect(),
        Err(e) => return Outcome::Err(e),
    };
    let Some(gid) = shadow_gid else {
        return Outcome::Pass("not applicable: no shadow group".to_owned());
    };
    let mut bad = members;
    match facts.passwd() {
        Ok(p) => bad.extend(
            p.entries
                .iter()
                .filter(|e| e.gid == gid)
                .map(|e| format!("{} (primary)", e.name)),
        ),
        Err(e) => return Outcome::Err(e),
    }
    pass_or_fail(
        bad,
        "members of the shadow group",
        "the shadow group has no members",
    )
}

pub(super) fn check_encrypt_method(facts: &mut Facts) -> Outcome {
    match facts.login_defs() {
        Ok(None) => Outcome::Pass("not applicable: no /etc/login.defs".to_owned()),
        Ok(Some(defs)) => match defs.get("ENCRYPT_METHOD") {
            Some(m) if ["SHA512", "YESCRYPT"].contains(&m.to_ascii_uppercase().as_str()) => {
                Outcome::Pass(format!("ENCRYPT_METHOD is {m}"))
            }
            Some(m) => Outcome::Fail(format!("ENCRYPT_METHOD is {m}")),
            None => Outcome::Fail("ENCRYPT_METHOD is not set in /etc/login.defs".to_owned()),
        },
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_pass_max_days(facts: &mut Facts) -> Outcome {
    match facts.login_defs() {
        Ok(None) => Outcome::Pass("not applicable: no /etc/login.defs".to_owned()),
        Ok(Some(defs)) => match defs.get("PASS_MAX_DAYS").map(|v| (v, v.parse::<i64>())) {
            Some((v, Ok(n))) if (1..=365).contains(&n) => Outcome::Pass(format!("PASS_MAX_DAYS is {v}")),
            Some((v, _)) => Outcome::Fail(format!("PASS_MAX_DAYS is {v}")),
            None => Outcome::Fail("PASS_MAX_DAYS is not set in /etc/login.defs".to_owned()),
        },
        Err(e) => Outcome::Err(e),
    }
}

pub(super) fn check_core_limit(facts: &mut Facts) -> Outcome {
    let mut files = vec!["/etc/security/limits.conf".to_owned()];
    if let Ok(entries) = sysfs::dir_names(&facts.root.path("/etc/security/limits.d")) {
        let names: Vec<String> = entries.into_iter().filter(|n| n.ends_with(".conf")).collect();
        files.extend(names.into_iter().map(|n| format!("/etc/security/limits.d/{n}")));
    }
    let mut limits: Vec<Limit> = Vec::new();
    for f in &files {
        if let Ok(t) = read_text(&facts.root.path(f), 1024 * 1024) {
            limits.extend(keyvalue::parse_limits(&t, f));
        }
    }
    // The last matching line wins, as pam_limits applies them in order.
    match limits
        .iter()
        .rev()
        .find(|l| l.domain == "*" && (l.kind == "hard" || l.kind == "-") && l.item == "core")
    {
        Some(l) if l.value == "0" => Outcome::Pass(format!("core limit 0 ({})", l.origin)),
        Some(l) => Outcome::Fail(format!("core limit is {} ({})", l.value, l.origin)),
        None => Outcome::Fail("no '* hard core 0' line in limits.conf or limits.d".to_owned()),
    }
}

pub(super) fn check_ptrace_scope(facts: &mut Facts) -> Outcome {
    if !facts.root.path("/proc/sys/kernel/yama").exists() {
        return Outcome::Pass("not applicable: Yama is not built into this kernel".to_owned());
    }
    run_sysctl(facts, &["kernel/yama/ptrace_scope"], &["1", "2", "3"])
}

pub(super) fn mount_options_check(
    facts: &mut Facts,
    point: &str,
    needed: &[&str],
    separate_required: bool,
) -> Outcome {
    let mounts = match facts.mounts() {
        Ok(m) => m,
        Err(e) => return Outcome::Err(e),
    };
    match osinfo::mount_at(mounts, point) {
        None if separate_required => Outcome::Fail(format!("{point} is not a separate mount")),
        None => Outcome::Pass(format!("not applicable: {point} is not mounted")),
        Some(m) => {
            let lacking: Vec<&str> = needed.iter().copied().filter(|o| !m.has_option(o)).collect();
            if lacking.is_empty() {
                Outcome::Pass(format!("{point} is mounted {}", needed.join(",")))
            } else {
                Outcome::Fail(format!("{point} is mounted without {}", lacking.join(",")))
            }
        }
    }
}

pub(super) fn check_dev_shm(facts: &mut Facts) -> Outcome {
    mount_options_check(facts, "/dev/shm", &["nodev", "nosuid", "noexec"], false)
}

pub(super) fn check_tmp_mount(facts: &mut Facts) -> Outcome {
    mount_options_check(facts, "/tmp", &["nodev", "nosuid"], true)
}

pub(super) fn check_legacy_servers(facts: &mut Facts) -> Outcome {
    const NAMES: [&str; 8] = [
        "telnetd",
        "in.telnetd",
        "in.rshd",
        "in.rlogind",
        "in.rexecd",
        "rshd",
        "in.tftpd",
        "tftpd",
    ];
    const DIRS: [&str; 5] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/libexec"];
    let mut found: Vec<String> = DIRS
        .iter()
        .flat_map(|d| NAMES.iter().map(move |n| format!("{d}/{n}")))
        .filter(|p| facts.root.path(p).is_file())
        .collect();
    if let Ok(t) = read_text(&facts.root.path("/etc/inetd.conf"), 1024 * 1024) {
        found.extend(
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .filter(|l| {
                    ["telnet", "shell", "login", "exec", "tftp"]
                        .iter()
                        .any(|s| l.split_ascii_whitespace().next() == Some(s))
                })
                .map(|l| format!("/etc/inetd.conf: {l}")),
        );
    }
    found.dedup();
    pass_or_fail(
        found,
        "cleartext servers found",
        "no telnet, rsh, rlogin, rexec or tftp server found",
    )
}
