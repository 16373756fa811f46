//! Recommendations: standing advice from a device's latest snapshots (unlike alerts, which
//! are about something that happened). Each snapshot kind replaces that kind's
//! recommendations for the device, so fixing the cause makes the advice go away with the next
//! snapshot. Pure.

use super::model::{BaselineResult, BaselineSeverity, Event, EventName, FirewallAction, PayloadItem};
use super::rules::Severity;

/// One recommendation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// Its kind: `open-port`, `permissive-firewall`, `baseline`, `uid0-user`, `empty-password`,
    /// `outdated-agent`.
    pub kind: &'static str,
    /// What makes it distinct within the kind and device (a port, a check id, a user).
    pub key: String,
    /// How much it matters.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// What to do.
    pub remediation: String,
}

/// The OSBaseline check whose failure names the accounts with an empty password (LocalUsers
/// carries no password state; the agent's baseline reads /etc/passwd and /etc/shadow).
pub const EMPTY_PASSWORD_CHECK: &str = "TG-ACCT-01";

/// One recommendation per account a failed [`EMPTY_PASSWORD_CHECK`] names: its `Reason` is
/// `accounts with an empty password: NAME (/etc/shadow:LINE), ...` (and `and N more` past the
/// agent's listing limit).
fn empty_password_users(item: &PayloadItem) -> Vec<Recommendation> {
    let PayloadItem::OSBaseline(b) = item else {
        return Vec::new();
    };
    if b.cce_id != EMPTY_PASSWORD_CHECK || b.result != BaselineResult::Fail {
        return Vec::new();
    }
    let Some((_, list)) = b.extra_details.get("Reason").and_then(|r| r.split_once(": ")) else {
        return Vec::new();
    };
    let mut names: Vec<&str> = list
        .split(", ")
        .flat_map(|part| part.split(" and "))
        .filter_map(|part| part.split_once(" (").map(|(name, _)| name.trim()))
        .filter(|name| !name.is_empty())
        .collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| Recommendation {
            kind: "empty-password",
            key: name.to_owned(),
            severity: Severity::High,
            title: format!("User {name} has an empty password"),
            remediation: format!("Set a password (passwd {name}) or lock the account (passwd -l {name}); anyone can log in as it where passwords are accepted."),
        })
        .collect()
}

/// Compares agent versions (`1.10.0` > `1.9.2`; a pre-release `-rc1` is older than its
/// release); `None` when either is not dotted numbers.
pub fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parse(v: &str) -> Option<(Vec<u64>, Option<&str>)> {
        let v = v.trim().trim_start_matches('v');
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let core = core.split_once('+').map_or(core, |(c, _)| c);
        let parts = core
            .split('.')
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        (!parts.is_empty()).then_some((parts, pre))
    }
    let (mut a, a_pre) = parse(a)?;
    let (mut b, b_pre) = parse(b)?;
    let len = a.len().max(b.len());
    a.resize(len, 0);
    b.resize(len, 0);
    Some(a.cmp(&b).then_with(|| match (a_pre, b_pre) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    }))
}

/// The newest agent version among `versions` (those that parse).
pub fn newest_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions.into_iter().fold(None, |best, v| match best {
        None => compare_versions(v, v).map(|_| v),
        Some(b) => match compare_versions(v, b) {
            Some(std::cmp::Ordering::Greater) => Some(v),
            _ => Some(b),
        },
    })
}

/// The recommendation for an agent at `version` when the fleet's newest is `newest`, if older.
pub fn outdated_agent(version: &str, newest: &str) -> Option<Recommendation> {
    (compare_versions(version, newest) == Some(std::cmp::Ordering::Less)).then(|| Recommendation {
        kind: "outdated-agent",
        key: version.to_owned(),
        severity: Severity::Low,
        title: format!("The agent is {version}; the fleet's newest is {newest}"),
        remediation: format!("Update twinguard on this device to {newest} so it has the fixes and detections the rest of the fleet has."),
    })
}

/// The recommendations of a snapshot event: `Some((source, list))` for the snapshot kinds
/// that give advice (the list replaces the earlier one of `source`), `None` for others.
pub fn from_snapshot(event: &Event) -> Option<(&'static str, Vec<Recommendation>)> {
    let items = event.payload();
    let list = match event.name() {
        EventName::ListeningPorts => (
            "ListeningPorts",
            items
                .iter()
                .filter_map(|i| match i {
                    PayloadItem::ListeningPorts(p) if p.local_address.is_none_or(|a| a.is_unspecified()) => {
                        Some(Recommendation {
                            kind: "open-port",
                            key: format!("{}/{}", p.protocol, p.local_port),
                            severity: Severity::Low,
                            title: format!("Port {}/{} listens on all interfaces", p.local_port, p.protocol),
                            remediation: "Bind the service to the address that needs it (often 127.0.0.1), or filter the port in the firewall.".into(),
                        })
                    }
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        EventName::FirewallConfiguration => {
            // Permissive: no enabled rule on the input path that drops or rejects anything
            // (which also covers no firewall rules at all).
            let denies_input = items.iter().any(|i| match i {
                PayloadItem::FirewallConfiguration(f) => {
                    f.enabled
                        && f.action == FirewallAction::Deny
                        && (f.direction.is_some_and(|d| d.as_str() == "In")
                            || f.chain_name.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("input")))
                }
                _ => false,
            });
            let list = if denies_input {
                Vec::new()
            } else {
                vec![Recommendation {
                    kind: "permissive-firewall",
                    key: "input".into(),
                    severity: Severity::Medium,
                    title: "The firewall accepts all incoming traffic".into(),
                    remediation: "Set the input chain's policy to drop and accept only the services the device offers (nftables: policy drop; ct state established,related accept).".into(),
                }]
            };
            ("FirewallConfiguration", list)
        }
        EventName::OSBaseline => (
            "OSBaseline",
            items
                .iter()
                .flat_map(empty_password_users)
                .chain(items.iter().filter_map(|i| match i {
                    PayloadItem::OSBaseline(b) if b.result == BaselineResult::Fail => Some(Recommendation {
                        kind: "baseline",
                        key: b.cce_id.clone(),
                        severity: match b.severity {
                            BaselineSeverity::Critical => Severity::High,
                            BaselineSeverity::Important => Severity::Medium,
                            BaselineSeverity::Warning => Severity::Low,
                            BaselineSeverity::Informational => Severity::Informational,
                        },
                        title: format!("{} ({})", b.description, b.cce_id),
                        remediation: b
                            .extra_details
                            .get("Reason")
                            .map_or_else(|| "Fix the check's finding.".to_owned(), |r| format!("Found: {r}. Fix it so the check passes.")),
                    }),
                    _ => None,
                }))
                .collect(),
        ),
        EventName::LocalUsers => (
            "LocalUsers",
            items
                .iter()
                .filter_map(|i| match i {
                    PayloadItem::LocalUsers(u) if u.user_id == "0" && u.user_name != "root" => Some(Recommendation {
                        kind: "uid0-user",
                        key: u.user_name.clone(),
                        severity: Severity::High,
                        title: format!("User {} has uid 0 (root's powers)", u.user_name),
                        remediation: "Give the account its own uid (usermod -u), or remove it if nobody expects it.".into(),
                    }),
                    _ => None,
                })
                .collect(),
        ),
        _ => return None,
    };
    Some(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::model::Timestamp;
    use crate::console::model::{ListeningPorts, LocalUsers, OSBaseline, Protocol};

    fn at(name: EventName, items: Vec<PayloadItem>) -> Event {
        Event::with_id(
            crate::console::model::Uuid::from_u128(1),
            name,
            items,
            Timestamp::from_parts(0, 0).expect("time"),
        )
        .expect("event")
    }

    #[test]
    fn advice_from_each_snapshot_kind() {
        let port = |addr: &str, p: &str| {
            PayloadItem::ListeningPorts(ListeningPorts {
                remote_address: None,
                remote_port: None,
                local_address: Some(addr.parse().expect("ip")),
                local_port: p.into(),
                protocol: Protocol::Tcp,
                extra_details: Default::default(),
            })
        };
        let (source, list) = from_snapshot(&at(
            EventName::ListeningPorts,
            vec![port("0.0.0.0", "22"), port("127.0.0.1", "631"), port("::", "80")],
        ))
        .expect("advice");
        assert_eq!(source, "ListeningPorts");
        assert_eq!(
            list.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            vec!["TCP/22", "TCP/80"]
        );

        let (_, list) = from_snapshot(&at(EventName::FirewallConfiguration, Vec::new())).expect("advice");
        assert_eq!(list[0].kind, "permissive-firewall");

        let mut extra = std::collections::BTreeMap::new();
        extra.insert("Reason".to_owned(), "PermitRootLogin yes".to_owned());
        let check = |result| {
            PayloadItem::OSBaseline(OSBaseline {
                description: "Root login over SSH is disabled".into(),
                cce_id: "TG-SSH-1".into(),
                result,
                error: String::new(),
                severity: BaselineSeverity::Critical,
                extra_details: extra.clone(),
            })
        };
        let (_, list) = from_snapshot(&at(
            EventName::OSBaseline,
            vec![check(BaselineResult::Fail), check(BaselineResult::Pass)],
        ))
        .expect("advice");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].severity, Severity::High);
        assert!(list[0].remediation.contains("PermitRootLogin yes"));

        let user = |name: &str, uid: &str| {
            PayloadItem::LocalUsers(LocalUsers {
                group_ids: String::new(),
                group_names: String::new(),
                user_id: uid.into(),
                user_name: name.into(),
                extra_details: Default::default(),
            })
        };
        let (_, list) = from_snapshot(&at(
            EventName::LocalUsers,
            vec![user("root", "0"), user("toor", "0"), user("bob", "1000")],
        ))
        .expect("advice");
        assert_eq!(
            list.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            vec!["toor"]
        );
        assert!(from_snapshot(&at(EventName::SystemInformation, Vec::new())).is_none());
    }

    #[test]
    fn empty_passwords_from_the_baseline_check() {
        let check = |id: &str, result, reason: &str| {
            let mut extra = std::collections::BTreeMap::new();
            extra.insert("Reason".to_owned(), reason.to_owned());
            PayloadItem::OSBaseline(OSBaseline {
                description: "No account has an empty password".into(),
                cce_id: id.into(),
                result,
                error: String::new(),
                severity: BaselineSeverity::Critical,
                extra_details: extra,
            })
        };
        let (_, list) = from_snapshot(&at(
            EventName::OSBaseline,
            vec![check(
                EMPTY_PASSWORD_CHECK,
                BaselineResult::Fail,
                "accounts with an empty password: guest (/etc/shadow:31), kiosk (/etc/passwd:40)",
            )],
        ))
        .expect("advice");
        let users: Vec<&str> = list
            .iter()
            .filter(|r| r.kind == "empty-password")
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(users, vec!["guest", "kiosk"]);
        assert!(
            list.iter().any(|r| r.kind == "baseline"),
            "the check itself stays too"
        );
        // Near misses: the check passing, another check failing with a similar reason.
        for item in [
            check(
                EMPTY_PASSWORD_CHECK,
                BaselineResult::Pass,
                "no account has an empty password",
            ),
            check(
                "TG-ACCT-02",
                BaselineResult::Fail,
                "accounts with uid 0: toor (/etc/passwd:3)",
            ),
        ] {
            let (_, list) = from_snapshot(&at(EventName::OSBaseline, vec![item])).expect("advice");
            assert!(list.iter().all(|r| r.kind != "empty-password"), "{list:?}");
        }
    }

    #[test]
    fn agents_older_than_the_fleets_newest() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.10.0", "1.9.2"), Some(Greater));
        assert_eq!(compare_versions("0.1", "0.1.0"), Some(Equal));
        assert_eq!(compare_versions("1.0.0-rc1", "1.0.0"), Some(Less));
        assert_eq!(compare_versions("banana", "1.0"), None);
        assert_eq!(newest_version(["0.1.0", "0.3.1", "junk", "0.2.9"]), Some("0.3.1"));
        let r = outdated_agent("0.2.9", "0.3.1").expect("older");
        assert_eq!((r.kind, r.key.as_str()), ("outdated-agent", "0.2.9"));
        assert!(outdated_agent("0.3.1", "0.3.1").is_none());
        assert!(outdated_agent("junk", "0.3.1").is_none());
    }
}
