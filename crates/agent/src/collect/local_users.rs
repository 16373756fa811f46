//! LocalUsers: the accounts of `/etc/passwd` with their primary and supplementary groups from
//! `/etc/group`, parsed directly (no NSS: no LDAP or other network round-trips).
//!
//! `GroupIds` lists the primary group first, then each group that names the user as a
//! member, in `/etc/group` order, without repeats; `GroupNames` has the same order. A gid
//! with no group entry has an empty name there, and `ExtraDetails.Missing` says
//! `GroupNames`.

use std::collections::HashMap;

use crate::sys::accounts::{self, GroupEntry, PasswdEntry};
use crate::sys::fs::Root;
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{EventName, ExtraDetails, LocalUsers, PayloadItem};

use super::{CollectError, SnapshotCollector};

/// The LocalUsers snapshot collector.
#[derive(Debug)]
pub struct LocalUsersCollector {
    root: Root,
    status: CollectorStatus,
}

impl Default for LocalUsersCollector {
    fn default() -> Self {
        LocalUsersCollector::new()
    }
}

impl LocalUsersCollector {
    /// A collector of this machine's accounts.
    pub fn new() -> Self {
        LocalUsersCollector::with_root(Root::system())
    }

    /// A collector reading `/etc` under `root`.
    pub fn with_root(root: Root) -> Self {
        LocalUsersCollector {
            root,
            status: CollectorStatus {
                source: "/etc/passwd, /etc/group".to_owned(),
                ..CollectorStatus::default()
            },
        }
    }

    fn snapshot(&mut self) -> Result<Vec<LocalUsers>, CollectError> {
        let passwd = accounts::read_passwd(&self.root).map_err(|e| CollectError::Failed {
            source_name: "/etc/passwd".to_owned(),
            why: e.to_string(),
        })?;
        let mut notes = Vec::new();
        if passwd.malformed > 0 {
            notes.push(format!(
                "/etc/passwd: {} malformed or over-long lines ignored",
                passwd.malformed
            ));
        }
        if passwd.truncated {
            notes.push("/etc/passwd: too many lines; the rest ignored".to_owned());
        }
        let groups = match accounts::read_group(&self.root) {
            Ok(g) => {
                if g.malformed > 0 {
                    notes.push(format!(
                        "/etc/group: {} malformed or over-long lines ignored",
                        g.malformed
                    ));
                }
                g.entries
            }
            Err(e) => {
                notes.push(format!("group names unknown: {e}"));
                Vec::new()
            }
        };
        self.status.note = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(local_users(&passwd.entries, &groups))
    }
}

/// The payload items of `users` with their groups (pure).
pub fn local_users(users: &[PasswdEntry], groups: &[GroupEntry]) -> Vec<LocalUsers> {
    // gid -> first group of that id; user -> indexes of the groups naming it.
    let mut by_gid: HashMap<u32, &GroupEntry> = HashMap::new();
    let mut member_of: HashMap<&str, Vec<&GroupEntry>> = HashMap::new();
    for g in groups {
        by_gid.entry(g.gid).or_insert(g);
        for m in &g.members {
            member_of.entry(m.as_str()).or_default().push(g);
        }
    }
    users
        .iter()
        .map(|u| {
            let mut ids: Vec<u32> = vec![u.gid];
            let mut names: Vec<String> = vec![by_gid.get(&u.gid).map(|g| g.name.clone()).unwrap_or_default()];
            let missing = !by_gid.contains_key(&u.gid);
            for g in member_of.get(u.name.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                if !ids.contains(&g.gid) {
                    ids.push(g.gid);
                    names.push(g.name.clone());
                }
            }
            let mut extra = ExtraDetails::new();
            extra.insert("HomeDirectory".into(), u.home.clone());
            extra.insert("Shell".into(), u.shell.clone());
            if missing {
                extra.insert("Missing".into(), "GroupNames".into());
            }
            LocalUsers {
                group_ids: ids.iter().map(u32::to_string).collect::<Vec<_>>().join(";"),
                group_names: names.join(";"),
                user_id: u.uid.to_string(),
                user_name: u.name.clone(),
                extra_details: extra,
            }
        })
        .collect()
}

impl SnapshotCollector for LocalUsersCollector {
    fn name(&self) -> EventName {
        EventName::LocalUsers
    }

    fn collect(&mut self) -> Result<Vec<PayloadItem>, CollectError> {
        let result = self.snapshot();
        super::record_outcome(&mut self.status, result)
    }

    fn status(&self) -> CollectorStatus {
        self.status.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::accounts::{parse_group_line, parse_passwd_line};

    #[test]
    fn primary_then_supplementary_groups() {
        let users = [
            parse_passwd_line("alice:x:1000:1000::/home/alice:/bin/bash", 1).unwrap(),
            parse_passwd_line("ghost:x:1001:4242::/:/usr/sbin/nologin", 2).unwrap(),
        ];
        let groups = [
            parse_group_line("alice:x:1000:", 1).unwrap(),
            parse_group_line("sudo:x:27:bob,alice", 2).unwrap(),
            parse_group_line("alice2:x:1000:alice", 3).unwrap(),
            parse_group_line("ghosts:x:5000:ghost", 4).unwrap(),
        ];
        let items = local_users(&users, &groups);
        assert_eq!(items[0].group_ids, "1000;27");
        assert_eq!(items[0].group_names, "alice;sudo");
        assert!(!items[0].extra_details.contains_key("Missing"));
        assert_eq!(items[1].group_ids, "4242;5000");
        assert_eq!(items[1].group_names, ";ghosts");
        assert_eq!(items[1].extra_details["Missing"], "GroupNames");
    }
}
