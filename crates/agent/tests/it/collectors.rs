//! The six Security snapshot collectors: on fixture trees captured from real machines (and
//! hostile variants of them), and live on this machine where it has the privilege and tools
//! (root, `nft`, `ss`). Every event produced is checked against the official schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use twinguard::collect::connected_hardware::ConnectedHardwareCollector;
use twinguard::collect::firewall::{firewall_item, FirewallConfigurationCollector};
use twinguard::collect::listening_ports::{ListeningPortsCollector, SocketSource, MAX_SOCKETS};
use twinguard::collect::local_users::LocalUsersCollector;
use twinguard::collect::os_baseline::{OsBaselineCollector, CHECKS};
use twinguard::collect::system_information::SystemInformationCollector;
use twinguard::collect::{snapshot_collector, SnapshotCollector};
use twinguard::sys::firewall::{parse_iptables_save, parse_nft_json};
use twinguard::sys::fs::Root;
use twinguard_core::event::{EventName, MessageFrame, PayloadItem};

use crate::conformance::validate_messages;
use crate::support::{skip, TempDir};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn is_root() -> bool {
    twinguard_os::euid() == 0
}

fn tool(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Builds the message(s) of one snapshot and checks them against the official schema.
fn assert_conforms(name: EventName, items: Vec<PayloadItem>) {
    let event = twinguard::stamp::new_event(name, items, std::time::SystemTime::now()).unwrap();
    let frame = MessageFrame::new("0.1.0", uuid::Uuid::new_v4());
    let split = event.split_to_fit(frame.max_event_bytes(256 * 1024), twinguard::stamp::new_id);
    assert!(
        split.too_large.is_empty(),
        "{name}: an item larger than a message"
    );
    let bodies: Vec<Vec<u8>> = split
        .events
        .iter()
        .map(|e| frame.assemble(&[e.to_json()]))
        .collect();
    if let Err(e) = validate_messages(&bodies) {
        panic!("{name}: messages do not conform:\n{e}");
    }
}

fn json(item: &PayloadItem) -> Value {
    serde_json::to_value(item).unwrap()
}

fn extra<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v["ExtraDetails"][key].as_str()
}

/// Copies a fixture tree (files, directories, symbolic links as links).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ListeningPorts

/// A fake `/proc` with the captured socket tables and one process owning some sockets.
fn procnet_tree(dir: &TempDir) -> Root {
    let net = dir.path("proc/net");
    std::fs::create_dir_all(&net).unwrap();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        std::fs::copy(fixture(&format!("procnet/{table}")), net.join(table)).unwrap();
    }
    // pid 4242 holds the IPv4 wildcard listener and the mapped UDP socket; pid 4243 shares the
    // first (a forked worker); pid 77 owns the link-local listener.
    for (pid, inodes, exe) in [
        (4242u32, vec![26021u64, 26030, 1], "/usr/bin/fixture-server"),
        (4243, vec![26021], "/usr/bin/fixture-server"),
        (77, vec![25447], "/usr/sbin/linklocal (deleted)"),
    ] {
        let fd = dir.path(&format!("proc/{pid}/fd"));
        std::fs::create_dir_all(&fd).unwrap();
        for (n, inode) in inodes.iter().enumerate() {
            std::os::unix::fs::symlink(format!("socket:[{inode}]"), fd.join(n.to_string())).unwrap();
        }
        std::os::unix::fs::symlink("/dev/null", fd.join("99")).unwrap();
        std::os::unix::fs::symlink(exe, dir.path(&format!("proc/{pid}/exe"))).unwrap();
    }
    Root::at(&dir.0)
}

#[cfg(target_endian = "little")]
#[test]
fn listening_ports_from_captured_tables() {
    let dir = TempDir::new("lp-fixture");
    let mut collector = ListeningPortsCollector::with_root(procnet_tree(&dir));
    let items = collector.collect().unwrap();
    let got: BTreeSet<(String, String, String)> = items
        .iter()
        .map(json)
        .map(|v| {
            (
                v["Protocol"].as_str().unwrap().to_owned(),
                v["LocalAddress"].as_str().unwrap().to_owned(),
                v["LocalPort"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = [
        ("TCP", "0.0.0.0", "18080"),
        ("TCP", "0.0.0.0", "2024"),
        ("TCP", "127.0.0.1", "18081"),
        ("TCP", "::", "18082"),
        ("TCP", "::1", "18083"),
        ("TCP", "127.0.0.1", "18084"),
        ("TCP", "fe80::fc:ff:fe00:1", "18085"),
        ("UDP", "0.0.0.0", "15353"),
        ("UDP", "::", "15354"),
        ("UDP", "127.0.0.1", "15355"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    // The established connections (both ends, IPv4 and IPv6) and the connected UDP socket of
    // the capture are not listening.
    assert_eq!(got, want);
    assert_eq!(items.len(), want.len());
    let by_port: HashMap<String, Value> = items
        .iter()
        .map(json)
        .map(|v| (v["LocalPort"].as_str().unwrap().to_owned(), v))
        .collect();
    let server = &by_port["18080"];
    assert_eq!(extra(server, "Pid"), Some("4242"));
    assert_eq!(extra(server, "Pids"), Some("4242;4243"));
    assert_eq!(extra(server, "Executable"), Some("/usr/bin/fixture-server"));
    assert_eq!(extra(server, "Inode"), Some("26021"));
    assert_eq!(extra(server, "SocketFamily"), None);
    let mapped = &by_port["18084"];
    assert_eq!(extra(mapped, "SocketFamily"), Some("IPv6"));
    assert_eq!(extra(mapped, "Missing"), Some("Pid;Executable"));
    assert_eq!(extra(&by_port["15355"], "Pid"), Some("4242"));
    assert_eq!(
        extra(&by_port["18085"], "Executable"),
        Some("/usr/sbin/linklocal (deleted)")
    );
    for v in by_port.values() {
        assert!(
            v.get("RemoteAddress").is_none() && v.get("RemotePort").is_none(),
            "{v}"
        );
        assert!(!v["LocalAddress"].as_str().unwrap().contains('%'));
    }
    assert_conforms(EventName::ListeningPorts, items);
}

#[test]
fn listening_ports_survive_a_hostile_table_of_100k_sockets() {
    let dir = TempDir::new("lp-hostile");
    let net = dir.path("proc/net");
    std::fs::create_dir_all(&net).unwrap();
    let mut tcp = std::io::BufWriter::new(std::fs::File::create(net.join("tcp")).unwrap());
    writeln!(
        tcp,
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
    )
    .unwrap();
    for i in 0..100_000u32 {
        let port = 1024 + (i % 60_000);
        writeln!(
            tcp,
            "{i:>5}: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 {} 1 0000000000000000 100 0 0 10 0",
            1_000_000 + i
        )
        .unwrap();
        if i % 10_000 == 0 {
            // Garbage, invalid UTF-8 and a 1 MiB line among the sockets.
            tcp.write_all(b"\xff\xfe garbage \xc3\n").unwrap();
            tcp.write_all(&vec![b'A'; 1 << 20]).unwrap();
            tcp.write_all(b"\n   1: ZZZZZZZZ:0016 00000000:0000 0A\n")
                .unwrap();
        }
    }
    drop(tcp);
    std::fs::write(net.join("udp"), b"header\n").unwrap();
    // No tcp6/udp6: IPv6 disabled is not an error.
    std::fs::create_dir_all(dir.path("proc/1/fd")).unwrap();
    let mut collector = ListeningPortsCollector::with_root(Root::at(&dir.0));
    let started = std::time::Instant::now();
    let items = collector.collect().unwrap();
    eprintln!("100k-socket table read in {:?}", started.elapsed());
    assert_eq!(items.len(), MAX_SOCKETS);
    let note = collector.status().note.unwrap();
    assert!(note.contains("beyond the cap"), "{note}");
    assert!(note.contains("malformed"), "{note}");
}

/// Our own listeners, IPv4 and IPv6, TCP and UDP, found with our pid; our own established
/// connection is not among them.
#[test]
fn listening_ports_finds_this_process_listeners() {
    let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp6 = TcpListener::bind("[::1]:0").ok();
    let mapped = TcpListener::bind("[::ffff:127.0.0.1]:0").ok();
    let udp4 = UdpSocket::bind("0.0.0.0:0").unwrap();
    let udp6 = UdpSocket::bind("[::]:0").ok();
    let client = TcpStream::connect(tcp4.local_addr().unwrap()).unwrap();
    let (_server_side, _) = tcp4.accept().unwrap();
    let connected_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected_udp.connect(udp4.local_addr().unwrap()).unwrap();

    let items: Vec<Value> = ListeningPortsCollector::new()
        .collect()
        .unwrap()
        .iter()
        .map(json)
        .collect();
    let pid = std::process::id().to_string();
    let mine: BTreeSet<(String, String, String)> = items
        .iter()
        .filter(|v| {
            extra(v, "Pid") == Some(pid.as_str())
                || extra(v, "Pids").is_some_and(|p| p.split(';').any(|x| x == pid))
        })
        .map(|v| {
            assert_eq!(
                extra(v, "Executable").map(|e| e.trim_end_matches(" (deleted)").to_owned()),
                std::env::current_exe().ok().map(|p| p.display().to_string())
            );
            (
                v["Protocol"].as_str().unwrap().to_owned(),
                v["LocalAddress"].as_str().unwrap().to_owned(),
                v["LocalPort"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let key = |proto: &str, addr: std::net::SocketAddr| {
        (proto.to_owned(), addr.ip().to_string(), addr.port().to_string())
    };
    assert!(mine.contains(&key("TCP", tcp4.local_addr().unwrap())), "{mine:?}");
    assert!(mine.contains(&key("UDP", udp4.local_addr().unwrap())), "{mine:?}");
    if let Some(l) = &tcp6 {
        assert!(mine.contains(&key("TCP", l.local_addr().unwrap())), "{mine:?}");
    }
    if let Some(l) = &mapped {
        // Reported as the IPv4 address it maps.
        let port = l.local_addr().unwrap().port().to_string();
        assert!(
            mine.contains(&("TCP".to_owned(), "127.0.0.1".to_owned(), port)),
            "{mine:?}"
        );
    }
    if let Some(u) = &udp6 {
        assert!(mine.contains(&key("UDP", u.local_addr().unwrap())), "{mine:?}");
    }
    let client_port = client.local_addr().unwrap().port().to_string();
    let connected_port = connected_udp.local_addr().unwrap().port().to_string();
    for (proto, _, port) in &mine {
        assert!(
            !(proto == "TCP" && *port == client_port),
            "an established connection was listed"
        );
        assert!(
            !(proto == "UDP" && *port == connected_port),
            "a connected UDP socket was listed"
        );
    }
}

/// sock_diag and `/proc/net` give the same set (sockets of other processes may come and go
/// meanwhile, so a few attempts are allowed), and sock_diag is what `new()` uses.
#[test]
fn listening_ports_sock_diag_agrees_with_proc_net() {
    let _l = TcpListener::bind("[::]:0").unwrap();
    let keys = |source: SocketSource| -> (BTreeSet<(String, String, String, String)>, String) {
        let mut c = ListeningPortsCollector::with_source(Root::system(), source);
        let set = c
            .collect()
            .unwrap()
            .iter()
            .map(json)
            .map(|v| {
                (
                    v["Protocol"].as_str().unwrap().to_owned(),
                    v["LocalAddress"].as_str().unwrap().to_owned(),
                    v["LocalPort"].as_str().unwrap().to_owned(),
                    extra(&v, "Inode").unwrap().to_owned(),
                )
            })
            .collect();
        (set, c.status().source)
    };
    let mut last = String::new();
    for _ in 0..5 {
        let (diag, source) = keys(SocketSource::SockDiag);
        let (procnet, _) = keys(SocketSource::ProcNet);
        assert!(
            source.starts_with("sock_diag") || source == "/proc/net",
            "{source}"
        );
        if diag == procnet {
            return;
        }
        last = format!(
            "sock_diag only: {:?}\n/proc/net only: {:?}",
            diag.difference(&procnet).collect::<Vec<_>>(),
            procnet.difference(&diag).collect::<Vec<_>>()
        );
    }
    panic!("sources disagree:\n{last}");
}

/// A listener on a link-local IPv6 address is reported without `%scope`, the scope going to
/// `ExtraDetails.ScopeId` (sock_diag knows the bound interface).
#[test]
fn listening_ports_link_local_scope() {
    let test = "listening_ports_link_local_scope";
    // No IPv6 or no link-local address is the network's shape, not a missing package or
    // privilege: it is said, not failed, even under CI (the scope logic has unit tests too).
    let Ok(if_inet6) = std::fs::read_to_string("/proc/net/if_inet6") else {
        return crate::support::record_skip(test, "no IPv6 on this machine");
    };
    let Some((addr, ifname)) = if_inet6.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let hex = f.first()?;
        if !hex.starts_with("fe80") {
            return None;
        }
        let groups: Vec<String> = (0..8).map(|i| hex[i * 4..i * 4 + 4].to_owned()).collect();
        Some((
            groups.join(":").parse::<std::net::Ipv6Addr>().ok()?,
            f.last()?.to_string(),
        ))
    }) else {
        return crate::support::record_skip(test, "no link-local IPv6 address on any interface");
    };
    let index = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
    let sock = std::net::SocketAddrV6::new(addr, 0, 0, index);
    let listener = TcpListener::bind(sock).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let items: Vec<Value> = ListeningPortsCollector::new()
        .collect()
        .unwrap()
        .iter()
        .map(json)
        .collect();
    let item = items
        .iter()
        .find(|v| v["LocalPort"] == port.as_str() && v["Protocol"] == "TCP")
        .unwrap();
    assert_eq!(item["LocalAddress"], addr.to_string());
    assert_eq!(extra(item, "ScopeId"), Some(ifname.as_str()));
}

/// (protocol, address, port) -> pids, as `ss -H -tulnp` prints them.
fn ss_listening(ss: &Path) -> Option<BTreeMap<(String, String, String), Vec<String>>> {
    let out = Command::new(ss)
        .args(["-H", "-t", "-u", "-l", "-n", "-p"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 {
            continue;
        }
        let proto = cols[0].to_ascii_uppercase();
        let (addr, port) = cols[4].rsplit_once(':')?;
        // `[::1]`, `0.0.0.0%lo`, `*` (a dual-stack socket on any address).
        let addr = addr
            .split('%')
            .next()
            .unwrap_or(addr)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = if addr == "*" {
            "::".to_owned()
        } else {
            addr.to_owned()
        };
        let addr = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .map(|v4| v4.to_string())
                .unwrap_or_else(|| v6.to_string()),
            Ok(ip) => ip.to_string(),
            Err(_) => addr,
        };
        let pids: Vec<String> = line
            .split("pid=")
            .skip(1)
            .filter_map(|s| s.split(',').next().map(str::to_owned))
            .collect();
        map.entry((proto, addr, port.to_owned()))
            .or_insert_with(Vec::new)
            .extend(pids);
    }
    Some(map)
}

fn ours_listening() -> BTreeMap<(String, String, String), Option<String>> {
    ListeningPortsCollector::new()
        .collect()
        .unwrap()
        .iter()
        .map(json)
        .map(|v| {
            (
                (
                    v["Protocol"].as_str().unwrap().to_owned(),
                    v["LocalAddress"].as_str().unwrap().to_owned(),
                    v["LocalPort"].as_str().unwrap().to_owned(),
                ),
                extra(&v, "Pid").map(str::to_owned),
            )
        })
        .collect()
}

/// The whole ListeningPorts set agrees with `ss -tulnp` taken at the same moment (between
/// two snapshots of ours, so sockets opened or closed meanwhile by other processes do not
/// count), owners included.
#[test]
fn listening_ports_agree_with_ss() {
    let test = "listening_ports_agree_with_ss";
    let Some(ss) = tool(&["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]) else {
        return skip(test, "ss (iproute2) is not installed");
    };
    if !is_root() {
        return skip(test, "needs root to see every process's sockets");
    }
    // Something of ours to find, in case the machine listens on nothing.
    let _l4 = TcpListener::bind("0.0.0.0:0").unwrap();
    let _u6 = UdpSocket::bind("[::1]:0").ok();
    // Other processes (and other tests of this binary) open and close sockets while we look:
    // a real disagreement persists, a race does not, so a few attempts are allowed.
    let mut problems = Vec::new();
    for _attempt in 0..5 {
        problems = compare_with_ss(&ss);
        if problems.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("ListeningPorts disagrees with ss:\n{}", problems.join("\n"));
}

fn compare_with_ss(ss: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let before = ours_listening();
    let Some(theirs) = ss_listening(ss) else {
        return vec!["ss failed".to_owned()];
    };
    let after = ours_listening();
    for (key, pids) in &theirs {
        if !(before.contains_key(key) || after.contains_key(key)) {
            problems.push(format!("ss lists {key:?} (pids {pids:?}) but we do not"));
        }
    }
    for (key, pid) in &before {
        if !after.contains_key(key) {
            continue;
        }
        let Some(ss_pids) = theirs.get(key) else {
            problems.push(format!("we list {key:?} in both snapshots but ss does not"));
            continue;
        };
        if let (Some(pid), Some(pid2)) = (pid, after.get(key).cloned().flatten()) {
            if *pid == pid2 && !ss_pids.is_empty() && !ss_pids.contains(pid) {
                problems.push(format!("{key:?}: our pid {pid}, ss says {ss_pids:?}"));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// LocalUsers

#[test]
fn local_users_from_odd_passwd_and_group() {
    let mut collector = LocalUsersCollector::with_root(Root::at(fixture("accounts")));
    let items = collector.collect().unwrap();
    let users: BTreeMap<String, Value> = items
        .iter()
        .map(json)
        .map(|v| (v["UserName"].as_str().unwrap().to_owned(), v))
        .collect();
    // Real entries of this machine are there, root first.
    assert_eq!(json(&items[0])["UserName"], "root");
    assert_eq!(users["root"]["GroupIds"], "0");
    assert_eq!(users["postgres"]["GroupIds"], "104;103");
    assert_eq!(users["postgres"]["GroupNames"], "postgres;ssl-cert");
    // Crafted entries.
    assert_eq!(users["svc-empty"]["ExtraDetails"]["Shell"], "");
    assert_eq!(users["café"]["GroupIds"], "1501;2000");
    assert_eq!(users["café"]["GroupNames"], "café;devs");
    let lossy = "bad\u{fffd}\u{fffd}name";
    assert_eq!(users[lossy]["UserId"], "1502");
    assert_eq!(users["nogrp"]["GroupIds"], "4242;2000;2001");
    assert_eq!(users["nogrp"]["GroupNames"], ";devs;ops");
    assert_eq!(users["nogrp"]["ExtraDetails"]["Missing"], "GroupNames");
    assert_eq!(users["crlf"]["ExtraDetails"]["Shell"], "/bin/sh");
    assert_eq!(users["last"]["GroupIds"], "1509;2000");
    // `dup` is listed twice (two accounts of one name); the group of gid 2000 counts once.
    assert_eq!(items.iter().filter(|i| json(i)["UserName"] == "dup").count(), 2);
    assert_eq!(users["dup"]["GroupIds"], "1506;2000");
    for absent in ["long", "broken", "short", "+@netgroup", "-baduser", "ghost"] {
        assert!(!users.contains_key(absent), "{absent} should not be a user");
    }
    let note = collector.status().note.unwrap();
    assert!(note.contains("/etc/passwd: 3 malformed"), "{note}");
    assert_conforms(EventName::LocalUsers, items);
}

/// LocalUsers lists exactly the accounts of this machine's `/etc/passwd`.
#[test]
fn local_users_match_etc_passwd() {
    let text = std::fs::read_to_string("/etc/passwd").unwrap();
    let want: Vec<(String, String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0].to_owned(), f[2].to_owned(), f[3].to_owned())
        })
        .collect();
    let items = LocalUsersCollector::new().collect().unwrap();
    let got: Vec<(String, String, String)> = items
        .iter()
        .map(json)
        .map(|v| {
            let primary = v["GroupIds"]
                .as_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            (
                v["UserName"].as_str().unwrap().to_owned(),
                v["UserId"].as_str().unwrap().to_owned(),
                primary,
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_conforms(EventName::LocalUsers, items);
}

// ---------------------------------------------------------------------------------------------
// SystemInformation

#[test]
fn system_information_matches_this_machine() {
    let items = SystemInformationCollector::new().collect().unwrap();
    assert_eq!(items.len(), 1);
    let v = json(&items[0]);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(v["HostName"], hostname.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(v["TotalPhysicalMemoryInKB"], total);
    assert!(v["FreePhysicalMemoryInKB"].as_u64().unwrap() <= total);
    assert!(v["TotalVirtualMemoryInKB"].as_u64().unwrap() >= total);
    if let Ok(os) = std::fs::read_to_string("/etc/os-release") {
        let name = os
            .lines()
            .find_map(|l| l.strip_prefix("NAME="))
            .unwrap()
            .trim_matches('"');
        assert_eq!(v["OSName"], name);
    }
    assert_eq!(v["OsArchitecture"], std::env::consts::ARCH);
    assert!(v["BootDevice"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    assert_conforms(EventName::SystemInformation, items);
}

#[test]
fn system_information_on_a_bare_tree_lists_what_is_missing() {
    let dir = TempDir::new("si-bare");
    std::fs::create_dir_all(dir.path("etc")).unwrap();
    std::fs::write(
        dir.path("etc/os-release"),
        "NAME=\"Poky (Yocto Project Reference Distro)\"\nVERSION_ID=4.0.4\nID=poky\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path("proc")).unwrap();
    std::fs::write(
        dir.path("proc/cmdline"),
        "console=ttyS0 root=/dev/mmcblk0p2 rootwait\n",
    )
    .unwrap();
    let items = SystemInformationCollector::with_root(Root::at(&dir.0))
        .collect()
        .unwrap();
    let v = json(&items[0]);
    assert_eq!(v["OSVendor"], "Yocto Project");
    assert_eq!(v["OSVersion"], "4.0.4");
    assert_eq!(v["BootDevice"], "/dev/mmcblk0p2");
    let missing = extra(&v, "Missing").unwrap();
    for field in ["HostName", "BIOSVersion", "TotalPhysicalMemoryInKB"] {
        assert!(missing.split(';').any(|m| m == field), "{missing}");
    }
    assert_conforms(EventName::SystemInformation, items);
}

// ---------------------------------------------------------------------------------------------
// ConnectedHardware

#[test]
fn connected_hardware_from_a_sysfs_tree() {
    let dir = TempDir::new("hw");
    copy_tree(&fixture("sysfs"), &dir.0);
    let items = ConnectedHardwareCollector::with_root(Root::at(&dir.0))
        .collect()
        .unwrap();
    let rows: Vec<(String, String, String)> = items
        .iter()
        .map(json)
        .map(|v| {
            (
                v["HardwareCategory"].as_str().unwrap().to_owned(),
                v["HardwareSubCategory"].as_str().unwrap().to_owned(),
                v["HardwareName"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str)> = vec![
        ("Bridge", "Host bridge", "Intel Corporation device 0d57"),
        (
            "Other",
            "Unassigned class",
            "Red Hat, Inc. Virtio 1.0 memory balloon",
        ),
        (
            "Storage",
            "Mass storage controller",
            "Red Hat, Inc. Virtio 1.0 block device",
        ),
        (
            "Network",
            "Ethernet controller",
            "Red Hat, Inc. Virtio 1.0 network device",
        ),
        ("Other", "Unassigned class", "Red Hat, Inc. Virtio 1.0 socket"),
        ("Other", "Unassigned class", "Red Hat, Inc. Virtio 1.0 RNG"),
        (
            "USB",
            "USB controller",
            "Intel Corporation Celeron/Pentium Silver Processor USB 3.0 xHCI Controller",
        ),
        (
            "Network",
            "Ethernet controller",
            "Intel Corporation I210 Gigabit Network Connection",
        ),
        ("USB", "Hub", "USB2.0 Hub"),
        ("USB", "Keyboard", "Logitech USB Keyboard"),
        ("USB", "Mass Storage", "SanDisk Corp. Cruzer Blade"),
        (
            "USB",
            "Hub",
            "Linux 6.1.0-rpi7-rpi-v8 xhci-hcd xHCI Host Controller",
        ),
        ("Storage", "Removable Disk", "mmcblk0 (mmcblk)"),
        ("Storage", "Disk", "ATA Samsung SSD 860"),
        ("Network", "CAN", "can0"),
        (
            "Network",
            "Ethernet",
            "Intel Corporation I210 Gigabit Network Connection",
        ),
        ("Network", "Wireless", "wlan0 (brcmfmac)"),
    ];
    let want: Vec<(String, String, String)> = want
        .into_iter()
        .map(|(a, b, c)| (a.into(), b.into(), c.into()))
        .collect();
    assert_eq!(rows, want);
    let by_bus: Vec<Value> = items.iter().map(json).collect();
    let sda = by_bus.iter().find(|v| extra(v, "Device") == Some("sda")).unwrap();
    assert_eq!(extra(sda, "SizeInBytes"), Some("32017047552"));
    let kb = by_bus
        .iter()
        .find(|v| extra(v, "BusId") == Some("1-1.2"))
        .unwrap();
    assert_eq!(
        (extra(kb, "VendorId"), extra(kb, "ProductId")),
        (Some("046d"), Some("c31c"))
    );
    assert_conforms(EventName::ConnectedHardware, items);
}

#[test]
fn connected_hardware_without_ids_databases_or_usb() {
    let dir = TempDir::new("hw-bare");
    copy_tree(&fixture("sysfs/sys"), &dir.path("sys"));
    std::fs::remove_dir_all(dir.path("sys/bus/usb")).unwrap();
    let mut collector = ConnectedHardwareCollector::with_root(Root::at(&dir.0));
    let items = collector.collect().unwrap();
    let names: Vec<String> = items
        .iter()
        .map(|i| json(i)["HardwareName"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"PCI device 8086:0d57".to_owned()), "{names:?}");
    assert!(!items
        .iter()
        .any(|i| json(i)["HardwareCategory"] == "USB" && extra(&json(i), "Bus") == Some("USB")));
    assert!(collector.status().note.unwrap().contains("pci.ids not installed"));
}

#[test]
fn connected_hardware_on_this_machine_conforms() {
    let items = ConnectedHardwareCollector::new().collect().unwrap();
    let pci = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        items
            .iter()
            .filter(|i| extra(&json(i), "Bus") == Some("PCI"))
            .count(),
        pci
    );
    assert_conforms(EventName::ConnectedHardware, items);
}

// ---------------------------------------------------------------------------------------------
// FirewallConfiguration

fn fw_items(rules: &[twinguard::sys::firewall::FirewallRule]) -> Vec<Value> {
    rules
        .iter()
        .map(|r| serde_json::to_value(firewall_item(r)).unwrap())
        .collect()
}

#[test]
fn firewall_from_captured_nft_ruleset() {
    // nft 1.0.6 (Debian 12), which captured this, writes a table's flags wrongly (the table
    // name where `"dormant"` belongs); later versions write `"dormant"` or `["dormant"]`.
    let captured = std::fs::read_to_string(fixture("firewall/nft-ruleset.json")).unwrap();
    assert!(captured.contains(r#""flags": "tgdormant""#));
    let fixed = captured.replace(r#""flags": "tgdormant""#, r#""flags": ["dormant"]"#);
    let rules = parse_nft_json(fixed.as_bytes()).unwrap();
    let items = fw_items(&rules);
    let find = |table: &str, chain: &str, prio: i64| {
        items
            .iter()
            .find(|v| extra(v, "Table") == Some(table) && v["ChainName"] == chain && v["Priority"] == prio)
            .unwrap_or_else(|| panic!("no rule {table} {chain} {prio}"))
    };
    let ssh = find("tgtest", "input", 3);
    assert_eq!(ssh["Action"], "Allow");
    assert_eq!(ssh["Direction"], "In");
    assert_eq!(ssh["SourceAddress"], "10.0.0.0/8");
    assert_eq!(ssh["DestinationPort"], "22,80,8000-8080");
    assert_eq!(ssh["Protocol"], "TCP");
    assert_eq!(extra(ssh, "Comment"), Some("ssh and web"));
    assert_eq!(
        extra(ssh, "Rule"),
        Some("ip saddr 10.0.0.0/8 tcp dport { 22, 80, 8000-8080 } counter accept comment \"ssh and web\"")
    );
    assert_eq!(find("tgtest", "input", 1)["Action"], "Allow");
    let v6 = find("tgtest", "input", 4);
    assert_eq!(
        (
            v6["SourceAddress"].as_str(),
            v6["DestinationPort"].as_str(),
            v6["Protocol"].as_str()
        ),
        (Some("fe80::/10"), Some("546"), Some("UDP"))
    );
    let jump = find("tgtest", "input", 5);
    assert_eq!(
        (jump["Action"].as_str(), extra(jump, "Verdict")),
        (Some("Other"), Some("jump mychain"))
    );
    assert_eq!(find("tgtest", "input", 6)["Action"], "Deny");
    assert_eq!(find("tgtest", "input", 6)["Protocol"], "ICMP");
    assert_eq!(find("tgtest", "input", 7)["SourceAddress"], "@bl");
    let policy = find("tgtest", "input", 8);
    assert_eq!(
        (policy["Action"].as_str(), extra(policy, "ChainPolicy")),
        (Some("Deny"), Some("true"))
    );
    let mychain = find("tgtest", "mychain", 1);
    assert_eq!(mychain["DestinationAddress"], "!192.168.1.1");
    assert_eq!(mychain["Action"], "Deny");
    assert!(
        mychain.get("Direction").is_none(),
        "a regular chain has no direction"
    );
    let out = find("tgtest", "out", 1);
    assert_eq!(
        (out["Direction"].as_str(), out["Action"].as_str()),
        (Some("Out"), Some("Deny"))
    );
    assert_eq!(
        (out["SourcePort"].as_str(), out["DestinationAddress"].as_str()),
        (Some("1-1023"), Some("1.2.3.4-1.2.3.10"))
    );
    assert_eq!(extra(find("tgtest", "out", 2), "ChainPriority"), Some("10"));
    // The iptables-nft rule appears once, as an nftables rule.
    let telnet: Vec<&Value> = items.iter().filter(|v| v["DestinationPort"] == "23").collect();
    assert_eq!(telnet.len(), 1);
    assert_eq!(
        (telnet[0]["Action"].as_str(), extra(telnet[0], "Source")),
        (Some("Deny"), Some("nftables"))
    );
    assert!(extra(telnet[0], "Rule").unwrap().contains("xt match conntrack"));
    // A dormant table's rules are disabled; a forward hook has no direction.
    let dormant = find("tgdormant", "fw", 1);
    assert_eq!(
        (dormant["Enabled"].as_bool(), dormant.get("Direction")),
        (Some(false), None)
    );
    assert_eq!(extra(find("tgdormant", "fw", 2), "ChainPriority"), Some("-100"));
    let nat = find("tgnat", "post", 1);
    assert_eq!(
        (
            nat["Action"].as_str(),
            extra(nat, "Verdict"),
            extra(nat, "OutInterface")
        ),
        (Some("Other"), Some("masquerade"), Some("eth0"))
    );
    assert!(nat.get("Direction").is_none());
    let bodies = rules.iter().map(|r| firewall_item(r).into()).collect();
    assert_conforms(EventName::FirewallConfiguration, bodies);
}

#[test]
fn firewall_from_captured_iptables_legacy_save() {
    let v4 = parse_iptables_save(
        &std::fs::read_to_string(fixture("firewall/iptables-legacy-save.txt")).unwrap(),
        false,
    );
    let v6 = parse_iptables_save(
        &std::fs::read_to_string(fixture("firewall/ip6tables-legacy-save.txt")).unwrap(),
        true,
    );
    let items = fw_items(&v4);
    let summary: Vec<String> = items
        .iter()
        .map(|v| {
            format!(
                "{}/{}/{}:{}",
                extra(v, "Table").unwrap(),
                v["ChainName"].as_str().unwrap(),
                v["Priority"],
                v["Action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "nat/PREROUTING/1:Allow",
            "nat/INPUT/1:Allow",
            "nat/OUTPUT/1:Allow",
            "nat/POSTROUTING/1:Other",
            "nat/POSTROUTING/2:Allow",
            "filter/INPUT/1:Allow",
            "filter/INPUT/2:Deny",
            "filter/INPUT/3:Other",
            "filter/INPUT/4:Allow",
            "filter/FORWARD/1:Deny",
            "filter/OUTPUT/1:Allow",
            "filter/TGLEG/1:Other",
        ]
    );
    let ssh = &items[5];
    assert_eq!(
        (
            ssh["SourceAddress"].as_str(),
            ssh["DestinationPort"].as_str(),
            ssh["Protocol"].as_str()
        ),
        (Some("192.168.0.0/16"), Some("22"), Some("TCP"))
    );
    assert_eq!(extra(ssh, "Comment"), Some("ssh from \"lan\""));
    assert_eq!(ssh["Direction"], "In");
    let dns = &items[6];
    assert_eq!(
        (dns["SourceAddress"].as_str(), dns["DestinationPort"].as_str()),
        (Some("!10.1.2.3"), Some("53,67-68"))
    );
    assert_eq!(extra(&items[7], "Verdict"), Some("jump TGLEG"));
    assert_eq!(extra(&items[7], "InInterface"), Some("eth0"));
    assert_eq!(extra(&items[11], "Verdict"), Some("LOG"));
    let items6 = fw_items(&v6);
    assert_eq!(items6[0]["SourceAddress"], "fe80::/10");
    assert_eq!(extra(&items6[0], "Family"), Some("ip6"));
    let all = v4.iter().chain(&v6).map(|r| firewall_item(r).into()).collect();
    assert_conforms(EventName::FirewallConfiguration, all);
}

#[test]
fn firewall_parsers_survive_hostile_output() {
    let deep = format!("{{\"nftables\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_nft_json(deep.as_bytes()).is_err());
    assert!(parse_nft_json(b"\xff\xfe").is_err());
    let odd = br#"{"nftables": [{"chain": {"family": "ip", "table": "t", "name": "c", "hook": "input", "prio": "x", "policy": "weird"}},
        {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [{"match": {"op": "==", "left": {"payload": {}}, "right": {"range": [1]}}}, {"queue": {"num": 3}}]}}]}"#;
    let items = fw_items(&parse_nft_json(odd).unwrap());
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["Action"], "Other");
    let garbage =
        "*filter\n:INPUT\n:\n-A\n-A INPUT ! ! -s\n-A INPUT -j\n\u{fffd}\nCOMMIT\nCOMMIT\n-A OUTPUT -p\n";
    let rules = parse_iptables_save(garbage, false);
    assert!(rules.len() >= 2);
}

struct NftTable(PathBuf, String);

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new(&self.0)
            .args(["delete", "table", "inet", &self.1])
            .status();
    }
}

/// An nftables table made here is found, rule by rule, then removed.
#[test]
fn firewall_finds_a_live_nftables_table() {
    let test = "firewall_finds_a_live_nftables_table";
    let Some(nft) = tool(&["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]) else {
        return skip(test, "nft (nftables) is not installed");
    };
    if !is_root() {
        return skip(test, "needs root to change nftables");
    }
    let name = format!("twinguard_it_{}", std::process::id());
    let guard = NftTable(nft.clone(), name.clone());
    let run = |args: &[&str]| {
        let out = Command::new(&nft).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["add", "table", "inet", &name]);
    run(&[
        "add",
        "chain",
        "inet",
        &name,
        "input",
        "{ type filter hook input priority 0; policy accept; }",
    ]);
    run(&[
        "add",
        "rule",
        "inet",
        &name,
        "input",
        "ip",
        "saddr",
        "192.0.2.0/24",
        "tcp",
        "dport",
        "8883",
        "accept",
    ]);
    run(&[
        "add",
        "rule",
        "inet",
        &name,
        "input",
        "udp",
        "dport",
        "{ 5683, 5684 }",
        "drop",
    ]);
    let items: Vec<Value> = FirewallConfigurationCollector::new()
        .collect()
        .unwrap()
        .iter()
        .map(json)
        .collect();
    let ours: Vec<&Value> = items
        .iter()
        .filter(|v| extra(v, "Table") == Some(name.as_str()))
        .collect();
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert_eq!(
        (
            ours[0]["SourceAddress"].as_str(),
            ours[0]["DestinationPort"].as_str(),
            ours[0]["Action"].as_str()
        ),
        (Some("192.0.2.0/24"), Some("8883"), Some("Allow"))
    );
    assert_eq!(
        (
            ours[1]["DestinationPort"].as_str(),
            ours[1]["Protocol"].as_str(),
            ours[1]["Action"].as_str()
        ),
        (Some("5683,5684"), Some("UDP"), Some("Deny"))
    );
    assert_eq!(extra(ours[2], "ChainPolicy"), Some("true"));
    drop(guard);
    let after: Vec<Value> = FirewallConfigurationCollector::new()
        .collect()
        .unwrap()
        .iter()
        .map(json)
        .collect();
    assert!(!after.iter().any(|v| extra(v, "Table") == Some(name.as_str())));
}

// ---------------------------------------------------------------------------------------------
// OSBaseline

/// Copies a baseline fixture tree and applies the permissions its `modes` file lists (git
/// keeps no modes).
fn baseline_tree(name: &str) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new(&format!("baseline-{name}"));
    copy_tree(&fixture(&format!("baseline/{name}")), &dir.0);
    let modes = std::fs::read_to_string(dir.path("modes")).unwrap();
    for line in modes.lines().filter(|l| !l.trim().is_empty()) {
        let (path, mode) = line.split_once(' ').unwrap();
        let mode = u32::from_str_radix(mode.trim(), 8).unwrap();
        std::fs::set_permissions(dir.path(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

fn baseline_results(dir: &TempDir) -> Vec<Value> {
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let items = OsBaselineCollector::with_root(Root::at(&dir.0), uid, gid)
        .collect()
        .unwrap();
    assert_conforms(EventName::OSBaseline, items.clone());
    items.iter().map(json).collect()
}

/// Every check passes on the `pass` tree and fails on the `fail` tree, with a reason.
#[test]
fn os_baseline_every_check_has_a_passing_and_a_failing_fixture() {
    assert!(CHECKS.len() >= 30);
    let pass = baseline_tree("pass");
    let fail = baseline_tree("fail");
    let mut wrong = Vec::new();
    for (tree, want) in [(&pass, "Pass"), (&fail, "Fail")] {
        let results = baseline_results(tree);
        assert_eq!(results.len(), CHECKS.len());
        for (v, check) in results.iter().zip(CHECKS) {
            assert_eq!(v["CceId"], check.id);
            let reason = extra(v, "Reason").unwrap_or("");
            assert!(!reason.is_empty(), "{} has no reason", check.id);
            if v["Result"] != want || reason.starts_with("not applicable") {
                wrong.push(format!(
                    "{} on the {want} tree: {} ({reason})",
                    check.id, v["Result"]
                ));
            }
            if v["Result"] != "Err" {
                assert_eq!(v["Error"], "");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "checks with the wrong result:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn os_baseline_reasons_name_the_culprit() {
    let fail = baseline_tree("fail");
    let results = baseline_results(&fail);
    let reason = |id: &str| {
        extra(results.iter().find(|v| v["CceId"] == id).unwrap(), "Reason")
            .unwrap()
            .to_owned()
    };
    assert!(
        reason("TG-SSH-01").contains("sshd_config.d/50-weak.conf:1"),
        "{}",
        reason("TG-SSH-01")
    );
    assert!(reason("TG-ACCT-02").contains("toor"));
    assert!(reason("TG-ACCT-01").contains("ops"));
    assert!(
        reason("TG-FILE-10").contains("/etc/world-writable.conf"),
        "{}",
        reason("TG-FILE-10")
    );
    assert!(
        reason("TG-KERN-03").contains("99-debug.conf"),
        "{}",
        reason("TG-KERN-03")
    );
    assert!(reason("TG-SVC-01").contains("in.telnetd"));
}

/// On an empty tree nothing panics: checks of absent subjects pass as not applicable, the
/// others fail or report Err with an Error text.
#[test]
fn os_baseline_on_an_empty_tree() {
    let dir = TempDir::new("baseline-empty");
    for v in baseline_results(&dir) {
        if v["Result"] == "Err" {
            assert!(!v["Error"].as_str().unwrap().is_empty(), "{v}");
        } else {
            assert_eq!(v["Error"], "", "{v}");
        }
    }
}

#[test]
fn os_baseline_on_this_machine_conforms() {
    let items = OsBaselineCollector::new().collect().unwrap();
    assert_eq!(items.len(), CHECKS.len());
    assert_conforms(EventName::OSBaseline, items);
}

// ---------------------------------------------------------------------------------------------
// The registry and the CLI

#[test]
fn every_security_snapshot_has_a_collector() {
    for name in EventName::SECURITY_SNAPSHOTS {
        let c = snapshot_collector(name).unwrap_or_else(|| panic!("no collector for {name}"));
        assert_eq!(c.name(), name);
    }
    assert!(snapshot_collector(EventName::Login).is_none());
}

/// `twinguard collect --all` prints six schema-valid messages, one per Security snapshot.
#[test]
fn collect_all_prints_six_conforming_messages() {
    if !is_root() && tool(&["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]).is_some() {
        return skip(
            "collect_all_prints_six_conforming_messages",
            "needs root: nft lists the ruleset only for root (FirewallConfiguration fails otherwise)",
        );
    }
    let out = assert_cmd::Command::cargo_bin("twinguard")
        .unwrap()
        .args(["collect", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bodies: Vec<Vec<u8>> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let names: BTreeSet<String> = bodies
        .iter()
        .flat_map(|b| {
            serde_json::from_slice::<Value>(b).unwrap()["Events"]
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|e| e["Name"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = EventName::SECURITY_SNAPSHOTS
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    assert_eq!(names, want);
    if let Err(e) = validate_messages(&bodies) {
        panic!("collect --all output does not conform:\n{e}");
    }
}
