//! The audit session shared by the audit-fed collectors (ConnectionCreate, Login) of this
//! process, and by other twinguard processes on the machine.
//!
//! Audit is one per machine: one enabled flag, one rule list, one daemon socket. So:
//!
//! - **Manager.** One twinguard process manages audit: the one holding the lock
//!   `/run/twinguard/audit.lock`. It enables audit if it was off, raises the backlog limit if it
//!   was low, removes stale rules tagged `twinguard` (a crashed run's), and adds the rules its
//!   members need. What it changed is written to `/run/twinguard/audit.state` before it changes
//!   it, and restored when its last member leaves - also by the next manager after a crash
//!   (`/run` is cleared at boot, when audit's state resets too).
//! - **Readers.** Each member (collector) has its own socket. If nobody is the audit daemon
//!   (no auditd) and audit was off before twinguard enabled it, one member of the manager
//!   process registers as the daemon and gets records unicast - without a daemon the kernel
//!   would print every record to the kernel log. Every other member reads the read-only
//!   multicast group (`CAP_AUDIT_READ`). If audit was already on without a daemon, the kernel
//!   log is where its records go (AppArmor and SELinux denials ...): no member takes them
//!   away. A member checks once a second whether it should take over a role that was left
//!   (the manager exited, auditd stopped) and whether auditd, starting, deleted our rules.
//! - Rules are added only while a member that needs them (ConnectionCreate) is running.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::sys::audit::{
    self, AuditSocket, AuditStatus, Rule, NLGRP_READLOG, STATUS_BACKLOG_LIMIT, STATUS_ENABLED, STATUS_PID,
};
use crate::sys::netlink::{BatchReceived, Received, RecvBatch};
use twinguard_os::safefile::{self, Dir};

/// The key that tags every rule the agent adds (SPEC §3).
pub(crate) const RULE_KEY: &str = "twinguard";
/// Where the cross-process lock and the saved state live.
const RUN_DIR: &str = "/run/twinguard";
const LOCK_NAME: &str = "audit.lock";
const STATE_NAME: &str = "audit.state";
const STATE_FILE: &str = "/run/twinguard/audit.state";
/// The backlog limit we want at least: the kernel's default of 64 overflows in a burst.
pub(crate) const WANT_BACKLOG: u32 = 8192;
/// Receive buffer of a member socket.
const RECV_BUFFER: usize = 8 * 1024 * 1024;
/// How often a member looks at the roles and rules.
const TICK: Duration = Duration::from_secs(1);
/// How often the manager checks that its rules are still there.
const RULE_CHECK: Duration = Duration::from_secs(5);

/// The rules ConnectionCreate needs: successful connect/accept/accept4, connects in progress
/// (`EINPROGRESS`: non-blocking connects, the common case), successful `listen` calls (the
/// listening socket's local end is read then, while its process surely lives, for the accepts
/// on it), and successful `socket` calls of the IPv4 and IPv6 families - their type and
/// protocol arguments tell a TCP socket from a UDP one even when the socket is closed before
/// its connect record is read.
pub(crate) fn connection_rules() -> Vec<Rule> {
    let mut ok = audit::connect_syscalls();
    ok.extend(audit::accept_syscalls());
    ok.extend(audit::listen_syscalls());
    vec![
        Rule::successful(ok, RULE_KEY),
        Rule::failing_with(audit::connect_syscalls(), libc::EINPROGRESS, RULE_KEY),
        Rule::successful_with_a0(audit::socket_syscalls(), libc::AF_INET as u32, RULE_KEY),
        Rule::successful_with_a0(audit::socket_syscalls(), libc::AF_INET6 as u32, RULE_KEY),
    ]
}

/// What the manager changed, to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Original {
    enabled: u32,
    backlog_limit: u32,
}

impl Original {
    fn to_text(self) -> String {
        format!("enabled={}\nbacklog_limit={}\n", self.enabled, self.backlog_limit)
    }

    fn parse(text: &str) -> Option<Original> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        Some(Original {
            enabled: get("enabled")?,
            backlog_limit: get("backlog_limit")?,
        })
    }
}

#[derive(Debug)]
struct Manager {
    _lock: File,
    control: AuditSocket,
    /// The state before any twinguard changed it.
    original: Original,
    /// Audit is locked (`enabled = 2`): nothing can be changed until reboot.
    locked: bool,
    rules_installed: bool,
    rules_checked: Option<Instant>,
    last_lost: Option<u32>,
}

#[derive(Debug)]
struct Shared {
    members: u32,
    next_id: u64,
    manager: Option<Manager>,
    rule_users: u32,
    daemon: Option<u64>,
    last_error: Option<String>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    members: 0,
    next_id: 1,
    manager: None,
    rule_users: 0,
    daemon: None,
    last_error: None,
});

fn shared() -> MutexGuard<'static, Shared> {
    // A panic while holding the lock cannot leave the state worse than its fields say.
    SHARED.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/run/twinguard`, checked (see [`Dir::create_shared`]).
fn run_dir() -> io::Result<Dir> {
    Dir::create_shared(Path::new(RUN_DIR)).map_err(io::Error::other)
}

fn take_lock() -> io::Result<Option<File>> {
    let file = run_dir()?
        .open(
            LOCK_NAME,
            libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK,
            0o600,
        )
        .map_err(io::Error::other)?;
    Ok(safefile::try_lock(&file)?.then_some(file))
}

fn save_original(o: Original) -> io::Result<()> {
    run_dir()?
        .write_atomically(STATE_NAME, o.to_text().as_bytes())
        .map_err(io::Error::other)
}

/// The state a previous manager saved, when it can be trusted: a regular file (no link
/// followed) written by this user or root and writable by nobody else. Anything else - a file
/// another user forged to make root turn audit off - is ignored with a warning.
fn read_saved() -> Option<Original> {
    read_saved_in(&run_dir().ok()?)
}

fn read_saved_in(dir: &Dir) -> Option<Original> {
    let (bytes, st) = match dir.read_with_stat(STATE_NAME, 4096) {
        Ok(found) => found?,
        Err(e) => {
            warn!("audit: ignoring the saved state: {e}");
            return None;
        }
    };
    if !safefile::trusted_file(&st) {
        warn!(
            "audit: ignoring {}: owned by {} (uid {}), mode {:04o}; only a state this user or root wrote, writable by nobody else, is trusted",
            dir.join(STATE_NAME).display(),
            safefile::user_name(st.uid),
            st.uid,
            st.mode
        );
        return None;
    }
    Original::parse(&String::from_utf8_lossy(&bytes))
}

impl Shared {
    /// Becomes the manager if no other process is. Ok(false): another process manages.
    fn try_manage(&mut self) -> io::Result<bool> {
        if self.manager.is_some() {
            return Ok(true);
        }
        let Some(lock) = take_lock()? else {
            return Ok(false);
        };
        let mut control = AuditSocket::open(false)?;
        let now = control.status()?;
        let saved = read_saved();
        if saved.is_some() {
            info!("audit: restoring from a previous run that did not exit cleanly");
        }
        let original = saved.unwrap_or(Original {
            enabled: now.enabled,
            backlog_limit: now.backlog_limit,
        });
        let locked = now.enabled == 2;
        if !locked {
            let mut mask = 0;
            let mut want = now;
            if now.enabled == 0 {
                mask |= STATUS_ENABLED;
                want.enabled = 1;
            }
            if now.backlog_limit < WANT_BACKLOG {
                mask |= STATUS_BACKLOG_LIMIT;
                want.backlog_limit = WANT_BACKLOG;
            }
            if mask != 0 || saved.is_some() {
                save_original(original)?;
            }
            if mask != 0 {
                control.set_status(mask, &want)?;
            }
            // Rules tagged with our key that no live twinguard owns (we hold the lock) are a
            // crashed run's.
            for rule in control.list_rules()? {
                if audit::rule_key(&rule).as_deref() == Some(RULE_KEY) {
                    control.del_rule(&rule)?;
                }
            }
        }
        self.manager = Some(Manager {
            _lock: lock,
            control,
            original,
            locked,
            rules_installed: false,
            rules_checked: None,
            last_lost: Some(now.lost),
        });
        Ok(true)
    }

    /// Adds the rules while a member needs them; re-adds them if someone deleted them.
    fn keep_rules(&mut self) {
        let wanted = self.rule_users > 0;
        let Some(m) = self.manager.as_mut() else { return };
        if m.locked || !wanted {
            return;
        }
        let due = m.rules_checked.is_none_or(|t| t.elapsed() >= RULE_CHECK);
        if m.rules_installed && !due {
            return;
        }
        m.rules_checked = Some(Instant::now());
        if m.rules_installed {
            let present = m.control.list_rules().map(|rules| {
                rules
                    .iter()
                    .filter(|r| audit::rule_key(r).as_deref() == Some(RULE_KEY))
                    .count()
            });
            if present.as_ref().is_ok_and(|n| *n >= connection_rules().len()) {
                return;
            }
            warn!("audit: our rules were removed (auditd starting?); adding them again");
        }
        let result: io::Result<()> = connection_rules()
            .iter()
            .try_for_each(|r| m.control.add_rule(&r.encode()));
        match result {
            Ok(()) => {
                m.rules_installed = true;
                self.last_error = None;
            }
            Err(e) => self.last_error = Some(format!("audit: cannot add rules: {e}")),
        }
    }

    fn remove_rules(&mut self) {
        if let Some(m) = self.manager.as_mut() {
            if m.rules_installed {
                for r in connection_rules() {
                    if let Err(e) = m.control.del_rule(&r.encode()) {
                        warn!("audit: cannot remove a rule: {e}");
                    }
                }
                m.rules_installed = false;
            }
        }
    }

    /// Restores what the manager changed and gives up the role.
    fn release(&mut self) {
        self.remove_rules();
        let Some(mut m) = self.manager.take() else { return };
        if m.locked {
            return;
        }
        let now = m.control.status().unwrap_or_default();
        let mut mask = 0;
        let mut want = now;
        if now.backlog_limit != m.original.backlog_limit && m.original.backlog_limit < WANT_BACKLOG {
            mask |= STATUS_BACKLOG_LIMIT;
            want.backlog_limit = m.original.backlog_limit;
        }
        if now.enabled != m.original.enabled && m.original.enabled != 2 {
            mask |= STATUS_ENABLED;
            want.enabled = m.original.enabled;
        }
        if mask != 0 {
            if let Err(e) = m.control.set_status(mask, &want) {
                warn!("audit: cannot restore the previous state: {e}");
                return;
            }
        }
        if let Ok(dir) = run_dir() {
            let _ = dir.remove(STATE_NAME);
        }
    }
}

/// How a member receives records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Registered as the audit daemon: records come unicast.
    Daemon,
    /// A reader of the read-only multicast group.
    Multicast,
}

/// One collector's membership in the audit session. Dropping it leaves the session (and, for
/// the last member, restores the audit state).
#[derive(Debug)]
pub struct AuditMember {
    id: u64,
    sock: AuditSocket,
    needs_rules: bool,
    role: Role,
    next_tick: Instant,
}

impl AuditMember {
    /// Joins the session; `needs_rules`: the connection rules must be in place while this
    /// member runs. Fails when this machine or this process cannot use audit (no kernel
    /// support, no privilege, not the initial network namespace).
    pub fn join(needs_rules: bool) -> io::Result<AuditMember> {
        let mut s = shared();
        let sock = AuditSocket::open(false)?;
        sock.socket().set_recv_buffer(RECV_BUFFER)?;
        let id = s.next_id;
        s.next_id += 1;
        s.members += 1;
        s.rule_users += u32::from(needs_rules);
        let mut member = AuditMember {
            id,
            sock,
            needs_rules,
            role: Role::Multicast,
            next_tick: Instant::now() + TICK,
        };
        if let Err(e) = member.setup(&mut s) {
            drop(s);
            drop(member);
            return Err(e);
        }
        Ok(member)
    }

    /// Becomes the manager if possible, puts the rules in place, and picks a role.
    fn setup(&mut self, s: &mut Shared) -> io::Result<()> {
        if let Err(e) = s.try_manage() {
            // Not fatal: another process or auditd may provide the records.
            s.last_error = Some(format!("audit: cannot manage: {e}"));
        }
        s.keep_rules();
        self.choose_role(s)
    }

    fn choose_role(&mut self, s: &mut Shared) -> io::Result<()> {
        if s.daemon.is_none() {
            // Only when audit was off before us: then nothing read its records. When it was on
            // without a daemon, the kernel log had them (AppArmor/SELinux denials ...), and a
            // daemon would take them away from it.
            if let Some(m) = s.manager.as_mut().filter(|m| m.original.enabled == 0) {
                if m.control.status()?.pid == 0 {
                    let me = AuditStatus {
                        pid: std::process::id(),
                        ..AuditStatus::default()
                    };
                    match self.sock.set_status(STATUS_PID, &me) {
                        Ok(()) => {
                            if self.role == Role::Multicast {
                                let _ = self.sock.socket().drop_membership(NLGRP_READLOG);
                            }
                            self.role = Role::Daemon;
                            s.daemon = Some(self.id);
                            return Ok(());
                        }
                        // Someone registered first (a race with auditd): read the group.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.sock.socket().add_membership(NLGRP_READLOG)?;
        self.role = Role::Multicast;
        Ok(())
    }

    /// How this member receives records.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this process manages audit (and so whether the rules are ours).
    pub fn is_manager(&self) -> bool {
        shared().manager.is_some()
    }

    /// Whether the connection rules are in place (ours, or another twinguard's).
    pub(crate) fn rules_in_place(&self) -> bool {
        let s = shared();
        match &s.manager {
            Some(m) => m.rules_installed,
            // Another process manages: it keeps the same rules while it runs ConnectionCreate.
            None => true,
        }
    }

    /// The last problem of the session (for the collector's status), if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        shared().last_error.clone()
    }

    /// A short description of the source, for `reported.twinguard`.
    pub(crate) fn describe(&self) -> String {
        match self.role {
            Role::Daemon => "audit netlink (as the audit daemon)".into(),
            Role::Multicast => "audit netlink (read-only multicast group)".into(),
        }
    }

    /// Receives one datagram (waits at most 200 ms).
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        self.sock.recv(buf)
    }

    /// Receives a burst of datagrams with one call (waits at most 200 ms for the first when
    /// `wait`).
    pub(crate) fn recv_batch(&mut self, batch: &mut RecvBatch, wait: bool) -> io::Result<BatchReceived> {
        self.sock.recv_batch(batch, wait)
    }

    /// Call often: once a second it takes over roles others left and keeps the rules.
    /// Returns the records the kernel reports lost since the last call (manager only, and
    /// only to the member that needs rules, so they are counted once).
    pub(crate) fn tick(&mut self) -> u64 {
        if Instant::now() < self.next_tick {
            return 0;
        }
        self.next_tick = Instant::now() + TICK;
        let mut s = shared();
        if s.manager.is_none() {
            match s.try_manage() {
                Ok(true) => info!("audit: this agent now manages audit"),
                Ok(false) => {}
                Err(e) => s.last_error = Some(format!("audit: cannot manage: {e}")),
            }
        }
        s.keep_rules();
        let mut lost = 0;
        let mut daemon_gone = false;
        if let Some(m) = s.manager.as_mut() {
            if let Ok(status) = m.control.status() {
                if self.needs_rules {
                    if let Some(prev) = m.last_lost {
                        lost = u64::from(status.lost.wrapping_sub(prev));
                    }
                    m.last_lost = Some(status.lost);
                }
                daemon_gone = status.pid == 0;
            }
        }
        if daemon_gone && (s.daemon.is_none() || s.daemon == Some(self.id)) {
            s.daemon = None;
            if let Err(e) = self.choose_role(&mut s) {
                s.last_error = Some(format!("audit: cannot become the daemon: {e}"));
            }
        }
        lost
    }
}

impl Drop for AuditMember {
    fn drop(&mut self) {
        let mut s = shared();
        if s.daemon == Some(self.id) {
            s.daemon = None;
            if let Some(m) = s.manager.as_mut() {
                // Unregister, so the kernel does not queue records for a closed socket.
                let _ = m.control.set_status(STATUS_PID, &AuditStatus::default());
            }
        }
        s.rule_users = s.rule_users.saturating_sub(u32::from(self.needs_rules));
        if s.rule_users == 0 {
            s.remove_rules();
        }
        s.members = s.members.saturating_sub(1);
        if s.members == 0 {
            s.release();
        }
    }
}

/// Whether the audit state file says a previous run changed audit (for tests).
pub fn state_file_exists() -> bool {
    Path::new(STATE_FILE).exists()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_root_cannot_verify_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("tg-audit-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        let dir = Dir::open_for_reading(&path).unwrap();
        let state = path.join(STATE_NAME);
        std::fs::write(&state, "enabled=0\nbacklog_limit=64\n").unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_saved_in(&dir).is_some());
        // Writable by others: forged or not, it cannot be trusted.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read_saved_in(&dir), None);
        // A link is never followed.
        std::fs::rename(&state, path.join("real")).unwrap();
        std::os::unix::fs::symlink(path.join("real"), &state).unwrap();
        assert_eq!(read_saved_in(&dir), None);
        if twinguard_os::euid() == 0 {
            // Another user's file.
            std::fs::remove_file(&state).unwrap();
            std::fs::rename(path.join("real"), &state).unwrap();
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
            assert_eq!(read_saved_in(&dir), None);
        }
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn the_saved_state_round_trips() {
        let o = Original {
            enabled: 0,
            backlog_limit: 64,
        };
        assert_eq!(Original::parse(&o.to_text()), Some(o));
        assert_eq!(Original::parse("enabled=x\n"), None);
        assert_eq!(Original::parse(""), None);
    }

    #[test]
    fn connection_rules_cover_connect_accept_and_in_progress() {
        let rules = connection_rules();
        assert_eq!(rules.len(), 4);
        assert!(rules.iter().all(|r| r.key == RULE_KEY));
        assert!(rules[0].syscalls.contains(&(libc::SYS_connect as u32)));
        assert!(rules[0].syscalls.contains(&(libc::SYS_accept4 as u32)));
        assert!(rules[0].syscalls.contains(&(libc::SYS_listen as u32)));
        assert_eq!(rules[1].syscalls, vec![libc::SYS_connect as u32]);
        assert_eq!(rules[2].syscalls, vec![libc::SYS_socket as u32]);
        assert_eq!(rules[3].syscalls, vec![libc::SYS_socket as u32]);
    }
}
