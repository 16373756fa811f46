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
//!
//! - `rule`: what a check is (`Check`, `Rule`, `Outcome`); `table`: the checks, as data;
//!   `facts`: what they read (through `sys`), once per run; `checks`: how each rule is decided.
//!   This module runs the table and is the snapshot collector.

mod checks;
mod facts;
mod rule;
mod table;

use crate::sys::fs::Root;
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{BaselineResult, EventName, ExtraDetails, OSBaseline, PayloadItem};

use checks::run_check;
pub use facts::Facts;
pub use rule::{Check, Outcome, Rule, SshdTest};
pub use table::CHECKS;

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
    use super::checks::parse_sshd_time;
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
