//! Login: authentication attempts and logins (SPEC §3).
//!
//! - **Audit** (the main source): PAM's `USER_AUTH` records (Operation `"authentication"`) and
//!   the `USER_LOGIN` records of sshd and login (Operation `"login"`), one event each, read
//!   through the shared audit session (as the audit daemon, or from the read-only multicast
//!   group when auditd runs). No rule is needed: user-space records are logged while audit is
//!   enabled.
//! - **wtmp / btmp** (the fallback without audit): successful logins (`USER_PROCESS` in
//!   `/var/log/wtmp`, Operation `"wtmp"`) and failed ones (`/var/log/btmp`, Operation `"btmp"`)
//!   followed by offset, across rotation. The offsets are kept in a checkpoint file when one
//!   is given, advanced past a record only once its event was handed over.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::sys::audit::{self, Assembler, AuditEvent, AUDIT_USER_AUTH, AUDIT_USER_LOGIN};
use crate::sys::netlink::Received;
use crate::sys::procinfo::ProcDir;
use crate::sys::utmp::{self, Position, UtmpRecord};
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{EventName, ExtraDetails, Login, LoginResult};

use super::audit::AuditMember;
use super::user_names::UserNames;
use super::{CollectError, EventSink, StopSignal, StreamCollector};

/// How often wtmp and btmp are read.
pub(crate) const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How often audit is tried again while the files are the fallback.
const AUDIT_RETRY: Duration = Duration::from_secs(60);
/// Most records read from one file per interval.
const MAX_RECORDS: usize = 1000;
const SOURCE_AUDIT: &str = "audit netlink (USER_AUTH, USER_LOGIN)";
const SOURCE_FILES: &str = "wtmp/btmp";

/// The Login item of an audit event (`USER_AUTH` or `USER_LOGIN`); `None` for other records.
pub(crate) fn audit_login(event: &AuditEvent, users: &mut UserNames) -> Option<Login> {
    let record = event.records.first()?;
    let operation = match record.kind {
        AUDIT_USER_AUTH => "authentication",
        AUDIT_USER_LOGIN => "login",
        _ => return None,
    };
    let f = audit::user_fields(&record.body);
    let mut extra = ExtraDetails::new();
    let mut missing: Vec<&str> = Vec::new();
    let pid = audit::get(&f, "pid").and_then(|p| p.parse::<u32>().ok());
    let acct = audit::get(&f, "acct").and_then(audit::untrusted);
    let id = audit::get(&f, "id").and_then(|i| i.parse::<u32>().ok());
    let user_name = acct.clone().or_else(|| id.and_then(|i| users.name(i)));
    let user_id = id.or_else(|| acct.as_deref().and_then(|a| users.uid(a)));
    let executable = audit::get(&f, "exe").and_then(audit::untrusted);
    let addr = audit::get(&f, "addr").and_then(audit::plain).and_then(parse_ip);
    let host = audit::get(&f, "hostname").and_then(audit::plain);
    if let Some(host) = host {
        if parse_ip(host).is_none() {
            extra.insert("RemoteHost".into(), host.to_owned());
        }
    }
    if let Some(terminal) = audit::get(&f, "terminal").and_then(audit::plain) {
        extra.insert("Terminal".into(), terminal.to_owned());
    }
    let result = if audit::get(&f, "res").and_then(audit::plain) == Some("success") {
        LoginResult::Success
    } else {
        LoginResult::Fail
    };
    if pid.is_none() {
        missing.push("ProcessId");
    }
    if user_name.is_none() {
        missing.push("UserName");
    }
    if executable.is_none() {
        missing.push("Executable");
    }
    extra.insert("AuditEventId".into(), event.id());
    if !missing.is_empty() {
        extra.insert("Missing".into(), missing.join(";"));
    }
    Some(Login {
        process_id: pid.unwrap_or(0),
        user_id: user_id.map(|u| u.to_string()),
        user_name: user_name.unwrap_or_default(),
        operation: operation.into(),
        executable: executable.unwrap_or_default(),
        remote_address: addr,
        remote_port: None,
        local_port: None,
        result,
        extra_details: extra,
    })
}

/// An address as audit or utmp write it: IPv4, IPv6 (maybe IPv4-mapped, maybe with a scope).
fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip: IpAddr = text.split('%').next()?.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

/// Which file a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoginFile {
    /// `wtmp`: successful logins.
    Wtmp,
    /// `btmp`: failed attempts.
    Btmp,
}

/// The Login item of a wtmp/btmp record; `None` for records that are not login attempts
/// (logouts, boots, run-level changes). `executable` looks up the login process's program.
pub(crate) fn utmp_login(
    record: &UtmpRecord,
    file: LoginFile,
    users: &mut UserNames,
    executable: &dyn Fn(u32) -> Option<String>,
) -> Option<Login> {
    let wanted = match file {
        LoginFile::Wtmp => record.kind == utmp::USER_PROCESS,
        LoginFile::Btmp => record.kind == utmp::USER_PROCESS || record.kind == utmp::LOGIN_PROCESS,
    };
    if !wanted || record.user.is_empty() {
        return None;
    }
    let mut extra = ExtraDetails::new();
    let pid = u32::try_from(record.pid).unwrap_or(0);
    let exe = (pid != 0).then(|| executable(pid)).flatten();
    if exe.is_none() {
        extra.insert("Missing".into(), "Executable".into());
    }
    if !record.line.is_empty() {
        extra.insert("Terminal".into(), record.line.clone());
    }
    let address = record.address();
    if !record.host.is_empty() && parse_ip(&record.host).is_none() {
        extra.insert("RemoteHost".into(), record.host.clone());
    }
    let (operation, result) = match file {
        LoginFile::Wtmp => ("wtmp", LoginResult::Success),
        LoginFile::Btmp => ("btmp", LoginResult::Fail),
    };
    Some(Login {
        process_id: pid,
        user_id: users.uid(&record.user).map(|u| u.to_string()),
        user_name: record.user.clone(),
        operation: operation.into(),
        executable: exe.unwrap_or_default(),
        remote_address: address,
        remote_port: None,
        local_port: None,
        result,
        extra_details: extra,
    })
}

/// The followed files' positions, as kept in the checkpoint file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// wtmp's position.
    pub wtmp: Option<Position>,
    /// btmp's position.
    pub btmp: Option<Position>,
}

impl Checkpoint {
    /// `wtmp <dev> <ino> <offset>` and `btmp ...` lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (name, p) in [("wtmp", self.wtmp), ("btmp", self.btmp)] {
            if let Some(p) = p {
                s += &format!("{name} {} {} {}\n", p.dev, p.ino, p.offset);
            }
        }
        s
    }

    /// Reads [`Checkpoint::to_text`]; malformed lines are ignored.
    pub fn parse(text: &str) -> Checkpoint {
        let mut c = Checkpoint::default();
        for line in text.lines().take(16) {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let [name, dev, ino, offset] = f[..] else { continue };
            let (Ok(dev), Ok(ino), Ok(offset)) = (dev.parse(), ino.parse(), offset.parse()) else {
                continue;
            };
            let p = Some(Position { dev, ino, offset });
            match name {
                "wtmp" => c.wtmp = p,
                "btmp" => c.btmp = p,
                _ => {}
            }
        }
        c
    }

    fn load(path: &Path) -> Option<Checkpoint> {
        crate::sys::fs::read_text(path, 4096)
            .ok()
            .map(|t| Checkpoint::parse(&t))
    }

    fn save(&self, path: &Path) -> Result<(), twinguard_os::safefile::FileError> {
        twinguard_os::safefile::write_file_atomically(path, self.to_text().as_bytes(), 0o600)
    }
}

/// The Login stream collector.
#[derive(Debug)]
pub struct LoginCollector {
    status: CollectorStatus,
    wtmp: PathBuf,
    btmp: PathBuf,
    checkpoint: Option<PathBuf>,
    /// Use the files only (machines known to have no audit; tests of the fallback).
    files_only: bool,
    audit_failed: Option<(String, Instant)>,
}

impl Default for LoginCollector {
    fn default() -> Self {
        LoginCollector::new(None)
    }
}

fn send(sink: &EventSink, item: Login, wall: SystemTime) -> bool {
    match crate::stamp::new_event(EventName::Login, vec![item.into()], wall) {
        Ok(e) => sink.send(e),
        Err(e) => {
            debug!("login event not built: {e}");
            true
        }
    }
}

fn exe_of(pid: u32) -> Option<String> {
    ProcDir::open(pid)
        .ok()?
        .read_link("exe")
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

impl LoginCollector {
    /// A collector of this machine's logins; `checkpoint`: where the fallback keeps its file
    /// offsets (without one it starts at the files' ends at every start).
    pub fn new(checkpoint: Option<PathBuf>) -> LoginCollector {
        LoginCollector {
            status: CollectorStatus {
                source: SOURCE_AUDIT.into(),
                ..CollectorStatus::default()
            },
            wtmp: PathBuf::from("/var/log/wtmp"),
            btmp: PathBuf::from("/var/log/btmp"),
            checkpoint,
            files_only: false,
            audit_failed: None,
        }
    }

    /// A collector that only follows `wtmp` and `btmp` at the paths given.
    pub fn files_only(wtmp: PathBuf, btmp: PathBuf, checkpoint: Option<PathBuf>) -> LoginCollector {
        LoginCollector {
            status: CollectorStatus {
                source: SOURCE_FILES.into(),
                fallback: true,
                ..CollectorStatus::default()
            },
            wtmp,
            btmp,
            checkpoint,
            files_only: true,
            audit_failed: None,
        }
    }

    fn run_audit(
        &mut self,
        mut member: AuditMember,
        sink: &EventSink,
        stop: &StopSignal,
    ) -> Result<(), CollectError> {
        self.status = CollectorStatus {
            source: SOURCE_AUDIT.into(),
            note: Some(member.describe()),
            ..CollectorStatus::default()
        };
        let mut users = UserNames::default();
        let mut assembler = Assembler::default();
        let mut buf = vec![0u8; audit::RECV_BUFFER_BYTES];
        while !stop.is_stopped() {
            match member.recv(&mut buf) {
                Ok(Received::Data { len, .. }) => {
                    let Some(record) = audit::datagram_record(&buf[..len])
                        .filter(|(k, _)| *k == AUDIT_USER_AUTH || *k == AUDIT_USER_LOGIN)
                        .and_then(|(k, t)| audit::parse_record(k, t))
                    else {
                        continue;
                    };
                    for event in assembler.push(record, 0) {
                        if let Some(item) = audit_login(&event, &mut users) {
                            let wall = u64::try_from(event.time_ms)
                                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                                .unwrap_or_else(|_| SystemTime::now());
                            send(sink, item, wall);
                        }
                    }
                }
                Ok(Received::Timeout) => {}
                Ok(Received::Overrun) => sink.count_losses(1),
                Err(e) => {
                    return Err(CollectError::Failed {
                        source_name: "audit netlink".into(),
                        why: format!("receive: {e}"),
                    })
                }
            }
            member.tick();
        }
        Ok(())
    }

    /// Reads what is new in both files and sends it; returns whether a position moved.
    fn follow_once(&self, checkpoint: &mut Checkpoint, users: &mut UserNames, sink: &EventSink) -> bool {
        let mut moved = false;
        for (path, file) in [(&self.wtmp, LoginFile::Wtmp), (&self.btmp, LoginFile::Btmp)] {
            let pos = match file {
                LoginFile::Wtmp => &mut checkpoint.wtmp,
                LoginFile::Btmp => &mut checkpoint.btmp,
            };
            let chunk = match utmp::read_after(path, *pos, MAX_RECORDS) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // When it appears, it is read from its start.
                    if pos.is_none() {
                        *pos = Some(Position::default());
                        moved = true;
                    }
                    continue;
                }
                Err(e) => {
                    debug!(file = %path.display(), "cannot read: {e}");
                    continue;
                }
            };
            if *pos != Some(chunk.start) && chunk.records.is_empty() {
                *pos = Some(chunk.start);
                moved = true;
            }
            for (record, after) in chunk.records {
                if let Some(item) = utmp_login(&record, file, users, &exe_of) {
                    let wall = u64::try_from(record.seconds)
                        .ok()
                        .filter(|s| *s > 0)
                        .map(|s| {
                            UNIX_EPOCH
                                + Duration::from_secs(s)
                                + Duration::from_micros(record.micros.max(0) as u64)
                        })
                        .unwrap_or_else(SystemTime::now);
                    if !send(sink, item, wall) {
                        // Not taken: the position stays before this record, to retry it.
                        break;
                    }
                }
                *pos = Some(after);
                moved = true;
            }
        }
        moved
    }

    fn run_files(&mut self, sink: &EventSink, stop: &StopSignal) -> Result<(), CollectError> {
        let mut checkpoint = self
            .checkpoint
            .as_deref()
            .and_then(Checkpoint::load)
            .unwrap_or_default();
        let mut users = UserNames::default();
        let mut next = Instant::now();
        while !stop.is_stopped() {
            if Instant::now() >= next {
                next = Instant::now() + FOLLOW_INTERVAL;
                if self.follow_once(&mut checkpoint, &mut users, sink) {
                    if let Some(path) = &self.checkpoint {
                        if let Err(e) = checkpoint.save(path) {
                            warn!(file = %path.display(), "cannot save the login checkpoint: {e}");
                        }
                    }
                }
                if !self.files_only
                    && self
                        .audit_failed
                        .as_ref()
                        .is_some_and(|(_, at)| at.elapsed() >= AUDIT_RETRY)
                {
                    if let Ok(m) = AuditMember::join(false) {
                        drop(m);
                        return Err(CollectError::SourceChanged {
                            source_name: SOURCE_FILES.into(),
                            why: "audit became available; restarting on it".into(),
                        });
                    }
                    self.audit_failed = self.audit_failed.take().map(|(e, _)| (e, Instant::now()));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl StreamCollector for LoginCollector {
    fn names(&self) -> &[EventName] {
        &[EventName::Login]
    }

    fn run(&mut self, sink: &EventSink, stop: &StopSignal) -> Result<(), CollectError> {
        if !self.files_only {
            let retry = self
                .audit_failed
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= AUDIT_RETRY);
            if retry {
                match AuditMember::join(false) {
                    Ok(member) => {
                        if self.audit_failed.take().is_some() {
                            info!("Login: audit is available again");
                        }
                        return self.run_audit(member, sink, stop);
                    }
                    Err(e) => {
                        let first = self.audit_failed.is_none();
                        self.audit_failed = Some((e.to_string(), Instant::now()));
                        self.status = CollectorStatus {
                            source: SOURCE_FILES.into(),
                            fallback: true,
                            note: Some(format!("audit unavailable: {e}")),
                            ..CollectorStatus::default()
                        };
                        if first {
                            // Fail this run once, so the supervisor reports the fallback.
                            return Err(CollectError::Unavailable {
                                source_name: "audit netlink".into(),
                                why: format!("{e}; falling back to wtmp/btmp"),
                            });
                        }
                    }
                }
            }
        }
        self.run_files(sink, stop)
    }

    fn status(&self) -> CollectorStatus {
        self.status.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::audit::parse_record;
    use crate::sys::fs::Root;

    fn users() -> UserNames {
        UserNames::new(Root::at(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/accounts"
        )))
    }

    fn event(kind: u16, body: &str) -> AuditEvent {
        let r = parse_record(kind, format!("audit(1700000000.100:44): {body}").as_bytes()).unwrap();
        AuditEvent {
            serial: 44,
            time_ms: r.time_ms,
            records: vec![r],
        }
    }

    #[test]
    fn pam_authentication_records_become_logins() {
        let ok = event(AUDIT_USER_AUTH, "pid=16936 uid=0 auid=4294967295 ses=4294967295 msg='op=PAM:authentication grantors=pam_rootok acct=\"root\" exe=\"/usr/bin/su\" hostname=? addr=? terminal=/dev/pts/0 res=success'");
        let l = audit_login(&ok, &mut users()).unwrap();
        assert_eq!(
            (l.process_id, l.operation.as_str(), l.result),
            (16936, "authentication", LoginResult::Success)
        );
        assert_eq!((l.user_name.as_str(), l.user_id.as_deref()), ("root", Some("0")));
        assert_eq!(l.executable, "/usr/bin/su");
        assert_eq!(l.remote_address, None);
        assert_eq!(
            l.extra_details.get("Terminal").map(String::as_str),
            Some("/dev/pts/0")
        );
        assert_eq!(
            l.extra_details.get("AuditEventId").map(String::as_str),
            Some("1700000000.100:44")
        );
        let failed = event(AUDIT_USER_AUTH, "pid=9 uid=65534 auid=4294967295 ses=4294967295 msg='op=PAM:authentication grantors=? acct=\"nosuchuser\" exe=\"/usr/sbin/sshd\" hostname=203.0.113.9 addr=203.0.113.9 terminal=ssh res=failed'");
        let l = audit_login(&failed, &mut users()).unwrap();
        assert_eq!(l.result, LoginResult::Fail);
        assert_eq!(l.user_id, None);
        assert_eq!(l.remote_address, Some("203.0.113.9".parse().unwrap()));
        assert!(!l.extra_details.contains_key("RemoteHost"));
    }

    #[test]
    fn sshd_login_records_with_ids_hex_names_and_ipv6() {
        let login = event(AUDIT_USER_LOGIN, "pid=812 uid=0 auid=0 ses=3 msg='op=login id=0 exe=\"/usr/sbin/sshd\" hostname=gw.example addr=::ffff:198.51.100.4 terminal=/dev/pts/1 res=success'");
        let l = audit_login(&login, &mut users()).unwrap();
        assert_eq!(
            (l.operation.as_str(), l.user_name.as_str(), l.user_id.as_deref()),
            ("login", "root", Some("0"))
        );
        assert_eq!(l.remote_address, Some("198.51.100.4".parse().unwrap()));
        assert_eq!(
            l.extra_details.get("RemoteHost").map(String::as_str),
            Some("gw.example")
        );
        let hex = event(AUDIT_USER_LOGIN, "pid=1 uid=0 msg='op=login acct=6D7920757365720A exe=2F7573722F7362696E2F737368 hostname=? addr=2001:db8::1 terminal=ssh res=failed'");
        let l = audit_login(&hex, &mut users()).unwrap();
        assert_eq!(l.user_name, "my user\n");
        assert_eq!(l.executable, "/usr/sbin/ssh");
        assert_eq!(l.remote_address, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            audit_login(
                &event(1101, "pid=1 msg='op=PAM:accounting res=success'"),
                &mut users()
            ),
            None
        );
        let bare = event(AUDIT_USER_AUTH, "msg='res=success'");
        let l = audit_login(&bare, &mut users()).unwrap();
        assert_eq!(
            l.extra_details.get("Missing").map(String::as_str),
            Some("ProcessId;UserName;Executable")
        );
    }

    #[test]
    fn utmp_records_become_logins() {
        if cfg!(target_endian = "big") {
            return;
        }
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/utmp/wtmp")).unwrap();
        let records: Vec<UtmpRecord> = bytes
            .chunks_exact(utmp::RECORD_SIZE)
            .filter_map(utmp::parse_record)
            .collect();
        let exe = |pid: u32| (pid == 4242).then(|| "/usr/sbin/sshd".to_string());
        let logins: Vec<Login> = records
            .iter()
            .filter_map(|r| utmp_login(r, LoginFile::Wtmp, &mut users(), &exe))
            .collect();
        assert_eq!(logins.len(), 2, "boot and logout records are not logins");
        assert_eq!(
            (logins[0].operation.as_str(), logins[0].result),
            ("wtmp", LoginResult::Success)
        );
        assert_eq!(logins[0].executable, "/usr/sbin/sshd");
        assert_eq!(logins[0].remote_address, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(
            logins[1].extra_details.get("Missing").map(String::as_str),
            Some("Executable")
        );
        let btmp = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/utmp/btmp")).unwrap();
        let r = utmp::parse_record(&btmp).unwrap();
        let l = utmp_login(&r, LoginFile::Btmp, &mut users(), &|_| None).unwrap();
        assert_eq!(
            (l.operation.as_str(), l.result, l.user_id.as_deref()),
            ("btmp", LoginResult::Fail, Some("0"))
        );
        assert_eq!(
            l.extra_details.get("Terminal").map(String::as_str),
            Some("ssh:notty")
        );
    }

    #[test]
    fn checkpoints_round_trip() {
        let c = Checkpoint {
            wtmp: Some(Position {
                dev: 2049,
                ino: 131_090,
                offset: 3840,
            }),
            btmp: None,
        };
        assert_eq!(Checkpoint::parse(&c.to_text()), c);
        assert_eq!(
            Checkpoint::parse("garbage\nwtmp 1 2\nbtmp a b c\n"),
            Checkpoint::default()
        );
    }
}
