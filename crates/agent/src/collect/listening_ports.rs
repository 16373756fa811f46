//! ListeningPorts: TCP sockets in LISTEN and bound, unconnected UDP sockets, IPv4 and IPv6,
//! each with its owning process found through the socket inode in `/proc/<pid>/fd`.
//! Established connections are never reported.
//!
//! Source: `NETLINK_SOCK_DIAG` (the kernel filters by state and gives the bound interface),
//! falling back per table to `/proc/net/{tcp,tcp6,udp,udp6}` where the kernel lacks the diag
//! module (e.g. no `udp_diag`); the status says which.
//!
//! Addresses: IPv4 dotted, IPv6 compressed, never with a `%scope`: the scope of a link-local
//! IPv6 address goes to `ExtraDetails.ScopeId` (the interface name), the device a socket is
//! otherwise bound to goes to `ExtraDetails.Interface`. An IPv4-mapped IPv6 address
//! (`::ffff:127.0.0.1`, an IPv6 socket bound to an IPv4 address) is reported as the IPv4
//! address it maps, with `ExtraDetails.SocketFamily = "IPv6"` so the socket's real family
//! stays visible.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::sys::fs::Root;
use crate::sys::procfd;
use crate::sys::procnet::{self, Family, ProcNetSocket, Table, Transport};
use crate::sys::sockdiag::{self, SockDiag};
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{EventName, ExtraDetails, ListeningPorts, PayloadItem, Protocol};

use super::{CollectError, SnapshotCollector};

/// The most sockets reported in one snapshot; the rest are counted in the status note.
pub const MAX_SOCKETS: usize = 65_536;

/// Where the sockets are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketSource {
    /// `NETLINK_SOCK_DIAG`, each table falling back to `/proc/net` if the kernel refuses.
    SockDiag,
    /// `/proc/net` only (fixture trees; comparisons).
    ProcNet,
}

/// The ListeningPorts snapshot collector.
#[derive(Debug)]
pub struct ListeningPortsCollector {
    root: Root,
    source: SocketSource,
    status: CollectorStatus,
}

impl Default for ListeningPortsCollector {
    fn default() -> Self {
        ListeningPortsCollector::new()
    }
}

impl ListeningPortsCollector {
    /// A collector of this machine's sockets, through sock_diag.
    pub fn new() -> Self {
        ListeningPortsCollector::with_source(Root::system(), SocketSource::SockDiag)
    }

    /// A collector reading `/proc` under `root` (a fixture tree in tests) through `/proc/net`.
    pub fn with_root(root: Root) -> Self {
        ListeningPortsCollector::with_source(root, SocketSource::ProcNet)
    }

    /// A collector reading sockets from `source` and processes from `/proc` under `root`.
    pub fn with_source(root: Root, source: SocketSource) -> Self {
        ListeningPortsCollector {
            root,
            source,
            status: CollectorStatus::default(),
        }
    }

    /// Reads the listening sockets of every table, into `sockets`; notes what went wrong.
    fn read_sockets(
        &mut self,
        sockets: &mut Vec<(Table, ProcNetSocket)>,
        notes: &mut Vec<String>,
    ) -> Result<usize, CollectError> {
        let mut diag = match self.source {
            SocketSource::SockDiag => match SockDiag::open() {
                Ok(d) => Some(d),
                Err(e) => {
                    notes.push(format!("{e}; using /proc/net"));
                    None
                }
            },
            SocketSource::ProcNet => None,
        };
        let mut over_cap = 0usize;
        let mut used_diag = Vec::new();
        let mut used_procnet = Vec::new();
        for table in Table::ALL {
            let cap = MAX_SOCKETS.saturating_sub(sockets.len());
            if let Some(d) = diag.as_mut() {
                let mut found = Vec::new();
                match d.dump_listening(table, cap, &mut found) {
                    Ok((over, interrupted)) => {
                        over_cap += over;
                        if interrupted {
                            notes.push(format!(
                                "{}: the kernel flagged the dump as interrupted",
                                table.proc_path()
                            ));
                        }
                        sockets.extend(found.into_iter().map(|s| (table, s)));
                        used_diag.push(table);
                        continue;
                    }
                    Err(e) => notes.push(format!(
                        "{} via sock_diag: {e}; using {}",
                        table.proc_path(),
                        table.proc_path()
                    )),
                }
            }
            match procnet::read_table(&self.root, table, cap, |s| s.is_listening(table.transport)) {
                Ok(read) => {
                    over_cap += read.over_cap;
                    if read.malformed > 0 {
                        notes.push(format!(
                            "{}: {} malformed lines ignored",
                            table.proc_path(),
                            read.malformed
                        ));
                    }
                    sockets.extend(read.sockets.into_iter().map(|s| (table, s)));
                    used_procnet.push(table);
                }
                // IPv6 disabled: no tcp6/udp6 tables, nothing listens on IPv6.
                Err(e) if e.is_not_found() && table.family == Family::V6 => {}
                Err(e) => {
                    return Err(CollectError::Failed {
                        source_name: table.proc_path().to_owned(),
                        why: e.to_string(),
                    })
                }
            }
        }
        self.status.source = match (used_diag.is_empty(), used_procnet.is_empty()) {
            (false, true) => "sock_diag".to_owned(),
            (true, _) => "/proc/net".to_owned(),
            (false, false) => format!(
                "sock_diag, /proc/net for {}",
                used_procnet
                    .iter()
                    .map(|t| t.proc_path())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.status.fallback = self.source == SocketSource::SockDiag && !used_procnet.is_empty();
        Ok(over_cap)
    }

    fn snapshot(&mut self) -> Result<Vec<ListeningPorts>, CollectError> {
        let mut sockets: Vec<(Table, ProcNetSocket)> = Vec::new();
        let mut notes = Vec::new();
        let over_cap = self.read_sockets(&mut sockets, &mut notes)?;
        if over_cap > 0 {
            notes.push(format!(
                "{over_cap} sockets beyond the cap of {MAX_SOCKETS} not reported"
            ));
        }
        let wanted: HashSet<u64> = sockets.iter().map(|(_, s)| s.inode).filter(|&i| i != 0).collect();
        let owners = match procfd::socket_owners(&self.root, &wanted) {
            Ok(o) => o,
            Err(e) => {
                notes.push(format!("cannot scan /proc for socket owners: {e}"));
                procfd::SocketOwners::default()
            }
        };
        if owners.unreadable > 0 {
            let why = if twinguard_os::euid() == 0 {
                "permission denied to root: processes of another user namespace, or CAP_SYS_PTRACE missing"
            } else {
                "not root: needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
            };
            notes.push(format!(
                "descriptors of {} processes unreadable ({why}): some owners unknown",
                owners.unreadable
            ));
        }
        let mut exes: HashMap<u32, Option<String>> = HashMap::new();
        let root = &self.root;
        let items = listening_items(
            &sockets,
            &owners.owners,
            |pid| {
                exes.entry(pid)
                    .or_insert_with(|| procfd::executable(root, pid))
                    .clone()
            },
            sockdiag::interface_name,
        );
        self.status.note = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(items)
    }
}

/// The address as reported: an IPv4-mapped IPv6 address becomes IPv4 (`true` when mapped).
pub(crate) fn report_address(ip: IpAddr) -> (IpAddr, bool) {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), true),
            None => (ip, false),
        },
        v4 => (v4, false),
    }
}

/// Whether `ip` is an IPv6 link-local address (`fe80::/10`), which needs a scope.
fn is_link_local_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Builds the payload items of `sockets` (pure but for `executable`, which names a pid's
/// executable, and `interface`, which names an interface index), sorted by protocol, port
/// and address.
pub fn listening_items(
    sockets: &[(Table, ProcNetSocket)],
    owners: &HashMap<u64, Vec<u32>>,
    mut executable: impl FnMut(u32) -> Option<String>,
    mut interface: impl FnMut(u32) -> Option<String>,
) -> Vec<ListeningPorts> {
    // Sorted on the numbers, before the text is made.
    let mut order: Vec<&(Table, ProcNetSocket)> = sockets.iter().collect();
    order.sort_by_key(|(table, s)| {
        (
            table.transport,
            s.local_port,
            report_address(s.local_ip).0,
            s.inode,
        )
    });
    order
        .into_iter()
        .map(|(table, s)| {
            let (address, mapped) = report_address(s.local_ip);
            let mut extra = ExtraDetails::new();
            let mut missing = Vec::new();
            if mapped {
                extra.insert("SocketFamily".into(), "IPv6".into());
            }
            if s.ifindex != 0 {
                let name = interface(s.ifindex).unwrap_or_else(|| s.ifindex.to_string());
                let key = if is_link_local_v6(address) {
                    "ScopeId"
                } else {
                    "Interface"
                };
                extra.insert(key.into(), name);
            }
            extra.insert("UserId".into(), s.uid.to_string());
            extra.insert("Inode".into(), s.inode.to_string());
            match owners
                .get(&s.inode)
                .and_then(|p| p.first().map(|first| (*first, p)))
            {
                Some((pid, all)) => {
                    extra.insert("Pid".into(), pid.to_string());
                    if all.len() > 1 {
                        let list: Vec<String> = all.iter().map(u32::to_string).collect();
                        extra.insert("Pids".into(), list.join(";"));
                    }
                    match executable(pid) {
                        Some(exe) => {
                            extra.insert("Executable".into(), exe);
                        }
                        None => missing.push("Executable"),
                    }
                }
                None => missing.extend(["Pid", "Executable"]),
            }
            if !missing.is_empty() {
                extra.insert("Missing".into(), missing.join(";"));
            }
            ListeningPorts {
                remote_address: None,
                remote_port: None,
                local_address: Some(address),
                local_port: s.local_port.to_string(),
                protocol: match table.transport {
                    Transport::Tcp => Protocol::Tcp,
                    Transport::Udp => Protocol::Udp,
                },
                extra_details: extra,
            }
        })
        .collect()
}

impl SnapshotCollector for ListeningPortsCollector {
    fn name(&self) -> EventName {
        EventName::ListeningPorts
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

    fn sock(ip: &str, port: u16, inode: u64) -> ProcNetSocket {
        ProcNetSocket {
            local_ip: ip.parse().unwrap(),
            local_port: port,
            remote_ip: "::".parse().unwrap(),
            remote_port: 0,
            state: procnet::TcpState::Listen,
            uid: 0,
            inode,
            ifindex: 0,
        }
    }

    #[test]
    fn scopes_and_bound_interfaces() {
        let tcp6 = Table::new(Transport::Tcp, Family::V6);
        let mut ll = sock("fe80::1", 22, 1);
        ll.ifindex = 2;
        let mut bound = sock("::", 53, 2);
        bound.ifindex = 3;
        let names = |i: u32| (i == 2).then(|| "eth0".to_owned());
        let items = listening_items(&[(tcp6, ll), (tcp6, bound)], &HashMap::new(), |_| None, names);
        assert_eq!(items[0].extra_details["ScopeId"], "eth0");
        assert_eq!(items[0].local_address.unwrap().to_string(), "fe80::1");
        assert_eq!(items[1].extra_details["Interface"], "3");
    }

    #[test]
    fn mapped_addresses_become_ipv4_and_owners_are_named() {
        let tcp6 = Table::new(Transport::Tcp, Family::V6);
        let sockets = vec![
            (tcp6, sock("::ffff:127.0.0.1", 8080, 10)),
            (tcp6, sock("::1", 22, 11)),
            (tcp6, sock("::", 22, 12)),
        ];
        let owners: HashMap<u64, Vec<u32>> = [(10, vec![5, 9]), (11, vec![7])].into();
        let items = listening_items(
            &sockets,
            &owners,
            |pid| (pid == 5).then(|| "/usr/bin/web".to_owned()),
            |_| None,
        );
        assert_eq!(items.len(), 3);
        let by_port: Vec<(String, String)> = items
            .iter()
            .map(|i| (i.local_port.clone(), i.local_address.unwrap().to_string()))
            .collect();
        assert_eq!(
            by_port,
            [
                ("22".into(), "::".into()),
                ("22".into(), "::1".into()),
                ("8080".into(), "127.0.0.1".into())
            ]
        );
        let web = &items[2].extra_details;
        assert_eq!(web["SocketFamily"], "IPv6");
        assert_eq!(web["Pid"], "5");
        assert_eq!(web["Pids"], "5;9");
        assert_eq!(web["Executable"], "/usr/bin/web");
        assert_eq!(items[1].extra_details["Missing"], "Executable");
        assert_eq!(items[0].extra_details["Missing"], "Pid;Executable");
    }
}
