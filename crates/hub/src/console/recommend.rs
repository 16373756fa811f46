//! Recommendations: standing advice from a device's latest snapshots (unlike alerts, which
//! are about something that happened). Each snapshot kind replaces that kind's
//! recommendations for the device, so fixing the cause makes the advice go away with the next
//! snapshot. Pure.

use super::model::{BaselineResult, BaselineSeverity, Event, EventName, FirewallAction, PayloadItem};
use super::rules::Severity;

/// One recommendation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// Its kind: `open-port`, `permissive-firewall`, `baseline`, `uid0-user`.
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
                .filter_map(|i| match i {
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
                })
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
}
