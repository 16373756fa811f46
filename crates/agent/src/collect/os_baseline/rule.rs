//! The shape of a check: how it is decided (`Rule`), what it says (`Outcome`), and the
//! constructors the table uses.

use twinguard_core::event::BaselineSeverity;

use super::facts::Facts;

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

pub(super) const fn sshd(
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

pub(super) const fn mode(
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

pub(super) const fn sysctl(
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

pub(super) const fn custom(
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
