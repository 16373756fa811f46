//! OSBaseline: built-in hardening checks in the spirit of the CIS Distribution Independent
//! Linux benchmark, as one declarative table ([`CHECKS`]): sshd settings (with sshd's own
//! defaults), permissions and owners of account and configuration files, account hygiene,
//! sysctl network and kernel hardening, core dumps, mount options, password hashing, legacy
//! cleartext services, and world-writable files in system directories (a bounded scan).
//!
//! No shell and no external program: files are read directly. Each check reports Pass, Fail
//! or Err with its reason in `ExtraDetails.Reason`; `Error` is `""` unless the result is
//! `Err`. `CceId` is our stable check id (`TG-...`): CCE ids are assigned per distribution
//! release, so none applies to a distribution-independent check. A check whose subject is
//! absent (no sshd installed, no IPv6, no gshadow) passes as not applicable, and says so.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::sys::accounts::{self, GroupEntry, Parsed, PasswdEntry, PasswordState, ShadowEntry};
use crate::sys::fs::{self as sysfs, read_text, read_value, Root};
use crate::sys::keyvalue::{self, Limit};
use crate::sys::osinfo::{self, Mount};
use crate::sys::sshd::{self, SshdConfig};
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{
    BaselineResult, BaselineSeverity, EventName, ExtraDetails, OSBaseline, PayloadItem,
};

use BaselineSeverity::{Critical, Important, Informational, Warning};

/// The most directory entries the world-writable scan visits.
pub(crate) const MAX_SCAN_ENTRIES: usize = 100_000;
/// How deep the world-writable scan descends.
const MAX_SCAN_DEPTH: usize = 12;
/// Directories scanned for world-writable files.
pub(crate) const SCAN_DIRS: [&str; 9] = [
    "/etc",
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/libexec",
    "/boot",
];
/// How many offending paths a reason lists.
const MAX_LISTED: usize = 5;

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Complies, because...
    Pass(String),
    /// Does not comply, because...
    Fail(String),
    /// Could not be checked, because...
    Err(String),
}

/// What an sshd setting must be.
#[derive(Clone, Copy, Debug)]
pub enum SshdTest {
    /// One of these values (case-insensitive).
    OneOf(&'static [&'static str]),
    /// A number no larger than this.
    AtMost(u64),
    /// A time (`90`, `2m`, `1h30m`) of at most this many seconds, and not 0 (unlimited).
    SecondsAtMost(u64),
    /// A number from 1 to this (0 = disabled fails).
    Between1And(u64),
    /// An algorithm list naming none of these (substring match).
    NoneOf(&'static [&'static str]),
}

/// How a check is decided.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// An sshd_config keyword, with sshd's default when unset.
    Sshd {
        /// The keyword.
        keyword: &'static str,
        /// sshd's default.
        default: &'static str,
        /// What it must be.
        test: SshdTest,
    },
    /// A file's permissions and owner.
    Mode {
        /// The file.
        path: &'static str,
        /// Permission bits it may have (any other bit fails).
        allowed: u32,
        /// Group names allowed besides the expected group (`shadow`).
        groups: &'static [&'static str],
        /// Whether a missing file passes (not applicable).
        missing_ok: bool,
    },
    /// Kernel parameters under `/proc/sys`: each must hold one of `accept`.
    Sysctl {
        /// Paths below `/proc/sys`.
        keys: &'static [&'static str],
        /// Accepted values.
        accept: &'static [&'static str],
    },
    /// Anything else.
    Custom(fn(&mut Facts) -> Outcome),
}

/// One check of the table.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// Our stable id (`CceId`).
    pub id: &'static str,
    /// What it checks.
    pub description: &'static str,
    /// How bad a failure is.
    pub severity: BaselineSeverity,
    /// How it is decided.
    pub rule: Rule,
}

const fn sshd(
    id: &'static str,
    description: &'static str,
    severity: BaselineSeverity,
    keyword: &'static str,
    default: &'static str,
    test: SshdTest,
) -> Check {
    Check {
        id,
        description,
        severity,
        rule: Rule::Sshd {
            keyword,
            default,
            test,
        },
    }
}

const fn mode(
    id: &'static str,
    description: &'static str,
    severity: BaselineSeverity,
    path: &'static str,
    allowed: u32,
    groups: &'static [&'static str],
    missing_ok: bool,
) -> Check {
    Check {
        id,
        description,
        severity,
        rule: Rule::Mode {
            path,
            allowed,
            groups,
            missing_ok,
        },
    }
}

const fn sysctl(
    id: &'static str,
    description: &'static str,
    severity: BaselineSeverity,
    keys: &'static [&'static str],
    accept: &'static [&'static str],
) -> Check {
    Check {
        id,
        description,
        severity,
        rule: Rule::Sysctl { keys, accept },
    }
}

const fn custom(
    id: &'static str,
    description: &'static str,
    severity: BaselineSeverity,
    f: fn(&mut Facts) -> Outcome,
) -> Check {
    Check {
        id,
        description,
        severity,
        rule: Rule::Custom(f),
    }
}

/// Weak SSH ciphers (CBC modes, RC4, 3DES, Blowfish, CAST).
const WEAK_CIPHERS: &[&str] = &["-cbc", "arcfour", "3des", "blowfish", "cast128", "rijndael"];
/// Weak SSH MACs.
const WEAK_MACS: &[&str] = &["md5", "ripemd160", "sha1-96", "umac-64"];
/// Weak key exchanges.
const WEAK_KEX: &[&str] = &[
    "diffie-hellman-group1-sha1",
    "diffie-hellman-group14-sha1",
    "diffie-hellman-group-exchange-sha1",
];

/// The checks, in report order.
pub const CHECKS: &[Check] = &[
    // sshd
    sshd(
        "TG-SSH-01",
        "SSH root login is disabled or key-only (PermitRootLogin)",
        Important,
        "PermitRootLogin",
        "prohibit-password",
        SshdTest::OneOf(&[
            "no",
            "prohibit-password",
            "without-password",
            "forced-commands-only",
        ]),
    ),
    sshd(
        "TG-SSH-02",
        "SSH does not accept empty passwords (PermitEmptyPasswords no)",
        Critical,
        "PermitEmptyPasswords",
        "no",
        SshdTest::OneOf(&["no"]),
    ),
    sshd(
        "TG-SSH-03",
        "SSH host-based authentication is disabled (HostbasedAuthentication no)",
        Important,
        "HostbasedAuthentication",
        "no",
        SshdTest::OneOf(&["no"]),
    ),
    sshd(
        "TG-SSH-04",
        "SSH ignores .rhosts files (IgnoreRhosts yes)",
        Important,
        "IgnoreRhosts",
        "yes",
        SshdTest::OneOf(&["yes"]),
    ),
    sshd(
        "TG-SSH-05",
        "SSH X11 forwarding is disabled (X11Forwarding no)",
        Warning,
        "X11Forwarding",
        "no",
        SshdTest::OneOf(&["no"]),
    ),
    sshd(
        "TG-SSH-06",
        "SSH allows at most 4 authentication attempts (MaxAuthTries)",
        Warning,
        "MaxAuthTries",
        "6",
        SshdTest::AtMost(4),
    ),
    sshd(
        "TG-SSH-07",
        "SSH login grace time is at most 60 seconds (LoginGraceTime)",
        Warning,
        "LoginGraceTime",
        "120",
        SshdTest::SecondsAtMost(60),
    ),
    sshd(
        "TG-SSH-08",
        "SSH users cannot set environment options (PermitUserEnvironment no)",
        Warning,
        "PermitUserEnvironment",
        "no",
        SshdTest::OneOf(&["no"]),
    ),
    sshd(
        "TG-SSH-09",
        "SSH logs at INFO or VERBOSE level (LogLevel)",
        Informational,
        "LogLevel",
        "INFO",
        SshdTest::OneOf(&["info", "verbose"]),
    ),
    sshd(
        "TG-SSH-10",
        "SSH uses no weak ciphers (CBC, RC4, 3DES, Blowfish, CAST)",
        Important,
        "Ciphers",
        "",
        SshdTest::NoneOf(WEAK_CIPHERS),
    ),
    sshd(
        "TG-SSH-11",
        "SSH uses no weak MACs (MD5, RIPEMD-160, 96-bit, UMAC-64)",
        Important,
        "MACs",
        "",
        SshdTest::NoneOf(WEAK_MACS),
    ),
    sshd(
        "TG-SSH-12",
        "SSH uses no SHA-1 key exchanges",
        Warning,
        "KexAlgorithms",
        "",
        SshdTest::NoneOf(WEAK_KEX),
    ),
    sshd(
        "TG-SSH-13",
        "SSH idle sessions are probed (ClientAliveInterval 1..900)",
        Informational,
        "ClientAliveInterval",
        "0",
        SshdTest::Between1And(900),
    ),
    mode(
        "TG-SSH-14",
        "sshd_config is owned by root and not accessible by others (600)",
        Important,
        "/etc/ssh/sshd_config",
        0o600,
        &[],
        true,
    ),
    custom(
        "TG-SSH-15",
        "SSH host private keys are owned by root and readable by root only",
        Critical,
        check_host_keys,
    ),
    // files
    mode(
        "TG-FILE-01",
        "/etc/passwd is owned by root and mode 644 or stricter",
        Important,
        "/etc/passwd",
        0o644,
        &[],
        false,
    ),
    mode(
        "TG-FILE-02",
        "/etc/shadow is owned by root (group root or shadow) and mode 640 or stricter",
        Critical,
        "/etc/shadow",
        0o640,
        &["shadow"],
        false,
    ),
    mode(
        "TG-FILE-03",
        "/etc/group is owned by root and mode 644 or stricter",
        Important,
        "/etc/group",
        0o644,
        &[],
        false,
    ),
    mode(
        "TG-FILE-04",
        "/etc/gshadow is owned by root (group root or shadow) and mode 640 or stricter",
        Important,
        "/etc/gshadow",
        0o640,
        &["shadow"],
        true,
    ),
    mode(
        "TG-FILE-05",
        "/etc/passwd- is owned by root and mode 644 or stricter",
        Warning,
        "/etc/passwd-",
        0o644,
        &[],
        true,
    ),
    mode(
        "TG-FILE-06",
        "/etc/shadow- is owned by root (group root or shadow) and mode 640 or stricter",
        Important,
        "/etc/shadow-",
        0o640,
        &["shadow"],
        true,
    ),
    mode(
        "TG-FILE-07",
        "/etc/crontab is owned by root and mode 600 or stricter",
        Warning,
        "/etc/crontab",
        0o600,
        &[],
        true,
    ),
    mode(
        "TG-FILE-08",
        "root's home directory is mode 750 or stricter",
        Warning,
        "/root",
        0o750,
        &[],
        true,
    ),
    custom(
        "TG-FILE-09",
        "/tmp has the sticky bit if it is world-writable",
        Important,
        check_tmp_sticky,
    ),
    custom(
        "TG-FILE-10",
        "No world-writable files in system directories",
        Important,
        check_world_writable_files,
    ),
    custom(
        "TG-FILE-11",
        "World-writable directories in system directories have the sticky bit",
        Important,
        check_world_writable_dirs,
    ),
    // accounts
    custom(
        "TG-ACCT-01",
        "No account has an empty password",
        Critical,
        check_empty_passwords,
    ),
    custom(
        "TG-ACCT-02",
        "root is the only account with uid 0",
        Critical,
        check_uid0,
    ),
    custom(
        "TG-ACCT-03",
        "Password hashes are in /etc/shadow, not /etc/passwd",
        Important,
        check_shadowed,
    ),
    custom(
        "TG-ACCT-04",
        "No two accounts share a uid",
        Warning,
        check_dup_uids,
    ),
    custom(
        "TG-ACCT-05",
        "No two accounts share a name",
        Warning,
        check_dup_user_names,
    ),
    custom("TG-ACCT-06", "No two groups share a gid", Warning, check_dup_gids),
    custom(
        "TG-ACCT-07",
        "No two groups share a name",
        Warning,
        check_dup_group_names,
    ),
    custom(
        "TG-ACCT-08",
        "root's primary group is gid 0",
        Warning,
        check_root_gid,
    ),
    custom(
        "TG-ACCT-09",
        "No legacy NIS '+' entries in passwd, shadow or group",
        Important,
        check_nis_entries,
    ),
    custom(
        "TG-ACCT-10",
        "Every account's primary group exists",
        Informational,
        check_groups_exist,
    ),
    custom(
        "TG-ACCT-11",
        "The shadow group has no members",
        Warning,
        check_shadow_group_empty,
    ),
    custom(
        "TG-ACCT-12",
        "Passwords are hashed with SHA-512 or yescrypt (login.defs ENCRYPT_METHOD)",
        Warning,
        check_encrypt_method,
    ),
    custom(
        "TG-ACCT-13",
        "Passwords expire within 365 days (login.defs PASS_MAX_DAYS)",
        Informational,
        check_pass_max_days,
    ),
    // network sysctl
    sysctl(
        "TG-NET-01",
        "IP forwarding is disabled (net.ipv4.ip_forward = 0)",
        Warning,
        &["net/ipv4/ip_forward"],
        &["0"],
    ),
    sysctl(
        "TG-NET-02",
        "ICMP redirects are not sent (send_redirects = 0)",
        Important,
        &[
            "net/ipv4/conf/all/send_redirects",
            "net/ipv4/conf/default/send_redirects",
        ],
        &["0"],
    ),
    sysctl(
        "TG-NET-03",
        "Source-routed IPv4 packets are refused (accept_source_route = 0)",
        Important,
        &[
            "net/ipv4/conf/all/accept_source_route",
            "net/ipv4/conf/default/accept_source_route",
        ],
        &["0"],
    ),
    sysctl(
        "TG-NET-04",
        "IPv4 ICMP redirects are refused (accept_redirects = 0)",
        Important,
        &[
            "net/ipv4/conf/all/accept_redirects",
            "net/ipv4/conf/default/accept_redirects",
        ],
        &["0"],
    ),
    sysctl(
        "TG-NET-05",
        "Secure ICMP redirects are refused (secure_redirects = 0)",
        Warning,
        &[
            "net/ipv4/conf/all/secure_redirects",
            "net/ipv4/conf/default/secure_redirects",
        ],
        &["0"],
    ),
    sysctl(
        "TG-NET-06",
        "Martian packets are logged (log_martians = 1)",
        Informational,
        &[
            "net/ipv4/conf/all/log_martians",
            "net/ipv4/conf/default/log_martians",
        ],
        &["1"],
    ),
    sysctl(
        "TG-NET-07",
        "Broadcast ICMP echo requests are ignored",
        Warning,
        &["net/ipv4/icmp_echo_ignore_broadcasts"],
        &["1"],
    ),
    sysctl(
        "TG-NET-08",
        "Bogus ICMP error responses are ignored",
        Informational,
        &["net/ipv4/icmp_ignore_bogus_error_responses"],
        &["1"],
    ),
    sysctl(
        "TG-NET-09",
        "Reverse path filtering is strict (rp_filter = 1)",
        Warning,
        &["net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter"],
        &["1"],
    ),
    sysctl(
        "TG-NET-10",
        "TCP SYN cookies are enabled",
        Important,
        &["net/ipv4/tcp_syncookies"],
        &["1"],
    ),
    sysctl(
        "TG-NET-11",
        "IPv6 router advertisements are not accepted (accept_ra = 0)",
        Informational,
        &["net/ipv6/conf/all/accept_ra", "net/ipv6/conf/default/accept_ra"],
        &["0"],
    ),
    sysctl(
        "TG-NET-12",
        "IPv6 ICMP redirects are refused (accept_redirects = 0)",
        Important,
        &[
            "net/ipv6/conf/all/accept_redirects",
            "net/ipv6/conf/default/accept_redirects",
        ],
        &["0"],
    ),
    sysctl(
        "TG-NET-13",
        "Source-routed IPv6 packets are refused (accept_source_route = 0)",
        Important,
        &[
            "net/ipv6/conf/all/accept_source_route",
            "net/ipv6/conf/default/accept_source_route",
        ],
        &["0"],
    ),
    // kernel
    sysctl(
        "TG-KERN-01",
        "Address space layout randomization is full (kernel.randomize_va_space = 2)",
        Important,
        &["kernel/randomize_va_space"],
        &["2"],
    ),
    sysctl(
        "TG-KERN-02",
        "Set-uid programs do not dump core (fs.suid_dumpable = 0)",
        Warning,
        &["fs/suid_dumpable"],
        &["0"],
    ),
    custom(
        "TG-KERN-03",
        "Core dumps are limited to 0 for all users (limits.conf: * hard core 0)",
        Warning,
        check_core_limit,
    ),
    sysctl(
        "TG-KERN-04",
        "Hard and symbolic link protections are on (fs.protected_hardlinks/symlinks = 1)",
        Important,
        &["fs/protected_hardlinks", "fs/protected_symlinks"],
        &["1"],
    ),
    sysctl(
        "TG-KERN-05",
        "Kernel log is restricted to privileged users (kernel.dmesg_restrict = 1)",
        Informational,
        &["kernel/dmesg_restrict"],
        &["1"],
    ),
    sysctl(
        "TG-KERN-06",
        "Kernel pointers are hidden (kernel.kptr_restrict >= 1)",
        Informational,
        &["kernel/kptr_restrict"],
        &["1", "2"],
    ),
    custom(
        "TG-KERN-07",
        "ptrace is restricted (kernel.yama.ptrace_scope >= 1, where Yama is built)",
        Informational,
        check_ptrace_scope,
    ),
    // mounts
    custom(
        "TG-MNT-01",
        "/dev/shm is mounted nodev, nosuid, noexec",
        Warning,
        check_dev_shm,
    ),
    custom(
        "TG-MNT-02",
        "/tmp is a separate mount with nodev and nosuid",
        Informational,
        check_tmp_mount,
    ),
    // services
    custom(
        "TG-SVC-01",
        "No cleartext remote-login servers installed (telnetd, rshd, rlogind, rexecd, tftpd)",
        Important,
        check_legacy_servers,
    ),
];

/// What the checks look at, read once per run and only when a check needs it.
#[derive(Debug)]
pub struct Facts {
    root: Root,
    expected_uid: u32,
    expected_gid: u32,
    sshd: Option<Result<Option<SshdConfig>, String>>,
    passwd: Option<Result<Parsed<PasswdEntry>, String>>,
    group: Option<Result<Parsed<GroupEntry>, String>>,
    shadow: Option<Result<Parsed<ShadowEntry>, String>>,
    mounts: Option<Result<Vec<Mount>, String>>,
    login_defs: Option<Result<Option<BTreeMap<String, String>>, String>>,
    scan: Option<Scan>,
}

/// What the world-writable scan found.
#[derive(Clone, Debug, Default)]
struct Scan {
    files: Vec<String>,
    dirs_without_sticky: Vec<String>,
    visited: usize,
    truncated: bool,
}

impl Facts {
    /// Facts about the system under `root`, whose files must belong to `expected_uid` /
    /// `expected_gid` (0 / 0 on a real system).
    pub fn new(root: Root, expected_uid: u32, expected_gid: u32) -> Facts {
        Facts {
            root,
            expected_uid,
            expected_gid,
            sshd: None,
            passwd: None,
            group: None,
            shadow: None,
            mounts: None,
            login_defs: None,
            scan: None,
        }
    }

    fn sshd(&mut self) -> Result<Option<&SshdConfig>, String> {
        let root = &self.root;
        self.sshd
            .get_or_insert_with(|| sshd::read_sshd_config(root).map_err(|e| e.to_string()))
            .as_ref()
            .map(Option::as_ref)
            .map_err(Clone::clone)
    }

    fn passwd(&mut self) -> Result<&Parsed<PasswdEntry>, String> {
        let root = &self.root;
        self.passwd
            .get_or_insert_with(|| accounts::read_passwd(root).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn group(&mut self) -> Result<&Parsed<GroupEntry>, String> {
        let root = &self.root;
        self.group
            .get_or_insert_with(|| accounts::read_group(root).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn shadow(&mut self) -> Result<&Parsed<ShadowEntry>, String> {
        let root = &self.root;
        self.shadow
            .get_or_insert_with(|| accounts::read_shadow(root).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn mounts(&mut self) -> Result<&[Mount], String> {
        let root = &self.root;
        self.mounts
            .get_or_insert_with(|| {
                read_text(&root.path("/proc/self/mountinfo"), 4 * 1024 * 1024)
                    .map(|t| osinfo::parse_mountinfo(&t))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map(Vec::as_slice)
            .map_err(Clone::clone)
    }

    fn login_defs(&mut self) -> Result<Option<&BTreeMap<String, String>>, String> {
        let root = &self.root;
        self.login_defs
            .get_or_insert_with(|| match read_text(&root.path("/etc/login.defs"), 1024 * 1024) {
                Ok(t) => Ok(Some(keyvalue::parse_login_defs(&t))),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e.to_string()),
            })
            .as_ref()
            .map(Option::as_ref)
            .map_err(Clone::clone)
    }

    fn scan(&mut self) -> &Scan {
        let root = &self.root;
        self.scan.get_or_insert_with(|| world_writable_scan(root))
    }

    fn sysctl(&self, key: &str) -> Option<String> {
        read_value(&self.root.path(format!("/proc/sys/{key}")))
    }

    /// The gid of group `name`, from /etc/group.
    fn gid_of(&mut self, name: &str) -> Option<u32> {
        self.group()
            .ok()
            .and_then(|g| g.entries.iter().find(|e| e.name == name).map(|e| e.gid))
    }
}

/// Parses an sshd time value (`90`, `90s`, `2m`, `1h30m`) into seconds.
pub(crate) fn parse_sshd_time(value: &str) -> Option<u64> {
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

fn run_sshd(facts: &mut Facts, keyword: &str, default: &str, test: SshdTest) -> Outcome {
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

fn run_mode(facts: &mut Facts, path: &str, allowed: u32, groups: &[&str], missing_ok: bool) -> Outcome {
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

fn run_sysctl(facts: &mut Facts, keys: &[&str], accept: &[&str]) -> Outcome {
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

fn run_check(facts: &mut Facts, check: &Check) -> Outcome {
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

fn list(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(MAX_LISTED).map(String::as_str).collect();
    if items.len() > MAX_LISTED {
        format!("{} and {} more", shown.join(", "), items.len() - MAX_LISTED)
    } else {
        shown.join(", ")
    }
}

fn pass_or_fail(bad: Vec<String>, what_bad: &str, ok: &str) -> Outcome {
    if bad.is_empty() {
        Outcome::Pass(ok.to_owned())
    } else {
        Outcome::Fail(format!("{what_bad}: {}", list(&bad)))
    }
}

fn check_host_keys(facts: &mut Facts) -> Outcome {
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

fn check_tmp_sticky(facts: &mut Facts) -> Outcome {
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

/// Walks [`SCAN_DIRS`] (not following links, not crossing into other file systems), bounded
/// by [`MAX_SCAN_ENTRIES`] and depth.
fn world_writable_scan(root: &Root) -> Scan {
    let mut scan = Scan::default();
    for dir in SCAN_DIRS {
        let start = root.path(dir);
        let Ok(meta) = sysfs::symlink_metadata(&start) else {
            continue;
        };
        // /bin -> usr/bin on merged-/usr systems: scanned once, through /usr/bin.
        if !meta.is_dir() {
            continue;
        }
        let dev = meta.dev();
        let mut stack = vec![(start, 0usize)];
        while let Some((path, depth)) = stack.pop() {
            let Ok(entries) = sysfs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                if scan.visited >= MAX_SCAN_ENTRIES {
                    scan.truncated = true;
                    return scan;
                }
                scan.visited += 1;
                let Ok(m) = entry.metadata() else {
                    continue;
                };
                let mode = m.permissions().mode();
                let shown = || {
                    let p = entry.path();
                    let rel = p.strip_prefix(root.dir()).map(Path::to_path_buf).unwrap_or(p);
                    format!("/{}", rel.to_string_lossy().trim_start_matches('/'))
                };
                if m.is_dir() {
                    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                        scan.dirs_without_sticky.push(shown());
                    }
                    if m.dev() == dev && depth < MAX_SCAN_DEPTH {
                        stack.push((entry.path(), depth + 1));
                    }
                } else if m.is_file() && mode & 0o002 != 0 {
                    scan.files.push(shown());
                }
            }
        }
    }
    scan
}

fn scan_note(scan: &Scan) -> String {
    if scan.truncated {
        format!("; scan stopped after {} entries", scan.visited)
    } else {
        format!("; {} entries scanned", scan.visited)
    }
}

fn check_world_writable_files(facts: &mut Facts) -> Outcome {
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

fn check_world_writable_dirs(facts: &mut Facts) -> Outcome {
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

fn check_empty_passwords(facts: &mut Facts) -> Outcome {
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

fn check_uid0(facts: &mut Facts) -> Outcome {
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

fn check_shadowed(facts: &mut Facts) -> Outcome {
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

fn duplicates<'a>(items: impl Iterator<Item = (String, &'a str)>) -> Vec<String> {
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

fn check_dup_uids(facts: &mut Facts) -> Outcome {
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

fn check_dup_user_names(facts: &mut Facts) -> Outcome {
    match facts.passwd() {
        Ok(p) => pass_or_fail(
            duplicates(p.entries.iter().map(|e| (e.name.clone(), "twice"))),
            "repeated account names",
            "every account name is unique",
        ),
        Err(e) => Outcome::Err(e),
    }
}

fn check_dup_gids(facts: &mut Facts) -> Outcome {
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

fn check_dup_group_names(facts: &mut Facts) -> Outcome {
    match facts.group() {
        Ok(g) => pass_or_fail(
            duplicates(g.entries.iter().map(|e| (e.name.clone(), "twice"))),
            "repeated group names",
            "every group name is unique",
        ),
        Err(e) => Outcome::Err(e),
    }
}

fn check_root_gid(facts: &mut Facts) -> Outcome {
    match facts.passwd() {
        Ok(p) => match p.entries.iter().find(|e| e.name == "root") {
            Some(r) if r.gid == 0 => Outcome::Pass("root's primary gid is 0".to_owned()),
            Some(r) => Outcome::Fail(format!("root's primary gid is {}", r.gid)),
            None => Outcome::Fail("no root account in /etc/passwd".to_owned()),
        },
        Err(e) => Outcome::Err(e),
    }
}

fn check_nis_entries(facts: &mut Facts) -> Outcome {
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

fn check_groups_exist(facts: &mut Facts) -> Outcome {
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

fn check_shadow_group_empty(facts: &mut Facts) -> Outcome {
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

fn check_encrypt_method(facts: &mut Facts) -> Outcome {
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

fn check_pass_max_days(facts: &mut Facts) -> Outcome {
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

fn check_core_limit(facts: &mut Facts) -> Outcome {
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

fn check_ptrace_scope(facts: &mut Facts) -> Outcome {
    if !facts.root.path("/proc/sys/kernel/yama").exists() {
        return Outcome::Pass("not applicable: Yama is not built into this kernel".to_owned());
    }
    run_sysctl(facts, &["kernel/yama/ptrace_scope"], &["1", "2", "3"])
}

fn mount_options_check(facts: &mut Facts, point: &str, needed: &[&str], separate_required: bool) -> Outcome {
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

fn check_dev_shm(facts: &mut Facts) -> Outcome {
    mount_options_check(facts, "/dev/shm", &["nodev", "nosuid", "noexec"], false)
}

fn check_tmp_mount(facts: &mut Facts) -> Outcome {
    mount_options_check(facts, "/tmp", &["nodev", "nosuid"], true)
}

fn check_legacy_servers(facts: &mut Facts) -> Outcome {
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

/// Runs every check of [`CHECKS`] against `facts` (pure but for the reads `facts` makes).
pub(crate) fn run_checks(facts: &mut Facts) -> Vec<OSBaseline> {
    CHECKS
        .iter()
        .map(|check| {
            let outcome = run_check(facts, check);
            let (result, reason, error) = match outcome {
                Outcome::Pass(r) => (BaselineResult::Pass, r, String::new()),
                Outcome::Fail(r) => (BaselineResult::Fail, r, String::new()),
                Outcome::Err(e) => (BaselineResult::Err, e.clone(), e),
            };
            let mut extra = ExtraDetails::new();
            extra.insert("Reason".into(), reason);
            OSBaseline {
                description: check.description.to_owned(),
                cce_id: check.id.to_owned(),
                result,
                error,
                severity: check.severity,
                extra_details: extra,
            }
        })
        .collect()
}

/// The OSBaseline snapshot collector.
#[derive(Debug)]
pub struct OsBaselineCollector {
    root: Root,
    expected_uid: u32,
    expected_gid: u32,
    status: CollectorStatus,
}

impl Default for OsBaselineCollector {
    fn default() -> Self {
        OsBaselineCollector::new()
    }
}

impl OsBaselineCollector {
    /// A collector checking this machine (system files must belong to root).
    pub fn new() -> Self {
        OsBaselineCollector::with_root(Root::system(), 0, 0)
    }

    /// A collector checking the tree under `root`, whose system files must belong to
    /// `expected_uid` / `expected_gid` (tests pass their own ids).
    pub fn with_root(root: Root, expected_uid: u32, expected_gid: u32) -> Self {
        OsBaselineCollector {
            root,
            expected_uid,
            expected_gid,
            status: CollectorStatus {
                source: format!("{} built-in checks", CHECKS.len()),
                ..CollectorStatus::default()
            },
        }
    }
}

impl super::SnapshotCollector for OsBaselineCollector {
    fn name(&self) -> EventName {
        EventName::OSBaseline
    }

    fn collect(&mut self) -> Result<Vec<PayloadItem>, super::CollectError> {
        let mut facts = Facts::new(self.root.clone(), self.expected_uid, self.expected_gid);
        let items = run_checks(&mut facts);
        let errors = items.iter().filter(|i| i.result == BaselineResult::Err).count();
        self.status.note = (errors > 0).then(|| format!("{errors} checks could not run (see their Error)"));
        Ok(items.into_iter().map(PayloadItem::from).collect())
    }

    fn status(&self) -> CollectorStatus {
        self.status.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn check_ids_are_unique_and_many() {
        let mut ids: Vec<&str> = CHECKS.iter().map(|c| c.id).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate check ids");
        assert!(n >= 30);
    }

    #[test]
    fn sshd_times() {
        assert_eq!(parse_sshd_time("120"), Some(120));
        assert_eq!(parse_sshd_time("2m"), Some(120));
        assert_eq!(parse_sshd_time("1h30m"), Some(5400));
        assert_eq!(parse_sshd_time("10x"), None);
        assert_eq!(parse_sshd_time("99999999999999999999w"), None);
    }
}
