//! uid <-> user name for the event collectors, from `/etc/passwd` read directly (no NSS: a
//! lookup must never wait on LDAP while a kernel socket fills up). Re-read when the file
//! changes, checked at most every [`RECHECK`].

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crate::sys::accounts;
use crate::sys::fs::Root;

/// How often the file's modification time is checked.
pub(crate) const RECHECK: Duration = Duration::from_secs(2);

/// A cache of `/etc/passwd`.
#[derive(Debug)]
pub(crate) struct UserNames {
    root: Root,
    by_uid: HashMap<u32, String>,
    by_name: HashMap<String, u32>,
    checked: Option<Instant>,
    modified: Option<SystemTime>,
}

impl Default for UserNames {
    fn default() -> Self {
        UserNames::new(Root::system())
    }
}

impl UserNames {
    /// A cache of `/etc/passwd` under `root`, read on first use.
    pub fn new(root: Root) -> UserNames {
        UserNames {
            root,
            by_uid: HashMap::new(),
            by_name: HashMap::new(),
            checked: None,
            modified: None,
        }
    }

    fn refresh(&mut self) {
        if self.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let path = self.root.path("/etc/passwd");
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == self.modified {
            return;
        }
        self.modified = modified;
        self.by_uid.clear();
        self.by_name.clear();
        if let Ok(parsed) = accounts::read_passwd(&self.root) {
            for e in parsed.entries {
                // The first entry of a uid names it, as getpwuid does.
                self.by_uid.entry(e.uid).or_insert_with(|| e.name.clone());
                self.by_name.entry(e.name).or_insert(e.uid);
            }
        }
    }

    /// The name of `uid`, `None` when the file has no such account.
    pub fn name(&mut self, uid: u32) -> Option<String> {
        self.refresh();
        self.by_uid.get(&uid).cloned()
    }

    /// The uid of `name`, `None` when the file has no such account.
    pub fn uid(&mut self, name: &str) -> Option<u32> {
        self.refresh();
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_passwd_file() {
        let root = Root::at(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/accounts"));
        let mut u = UserNames::new(root);
        assert_eq!(u.name(0).as_deref(), Some("root"));
        assert_eq!(u.uid("root"), Some(0));
        assert_eq!(u.name(4_000_000_000), None);
        assert_eq!(u.uid("no such user"), None);
    }
}
