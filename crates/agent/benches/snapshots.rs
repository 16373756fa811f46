//! Benchmarks of the snapshot collectors (SPEC §10), printing figures beside the peers that
//! run on this machine:
//!
//! - ListeningPorts with 10,000 listening sockets (5,000 TCP/IPv4 + 5,000 TCP/IPv6) held by
//!   this process, beside `ss -tlnp` (and `ss -tln`) in the same run. Target: <= 20 ms and
//!   faster than `ss -tlnp`.
//! - OSBaseline's full run, beside `lynis audit system --quick` when lynis is installed (no
//!   pass/fail on time: lynis does far more, and far slower).
//! - One run of each other snapshot collector, for reference.
//!
//! Run: `cargo bench -p twinguard --bench snapshots` (as root, so that every process's
//! descriptors, hence socket owners, are visible to us and to ss alike). Environment:
//! `TG_BENCH_SOCKETS` (default 10000), `TG_BENCH_ROUNDS` (default 15), `TG_BENCH_LYNIS=0` to
//! skip lynis.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};
use twinguard::collect::listening_ports::{listening_items, ListeningPortsCollector};
use twinguard::collect::os_baseline::OsBaselineCollector;
use twinguard::collect::{snapshot_collector, SnapshotCollector};
use twinguard::sys::fs::Root;
use twinguard::sys::procfd;
use twinguard::sys::procnet::{self, Table};
use twinguard::sys::sockdiag::SockDiag;
use twinguard_core::event::EventName;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median and minimum of `rounds` timings of `f`.
fn time_rounds(rounds: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[0])
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1000.0)
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Raises the open-file limit so this process can hold `n` sockets.
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let want = n + 256;
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max.max(want));
        lim.rlim_max = lim.rlim_max.max(want);
        // SAFETY: `lim` is a valid, initialised rlimit; failure only leaves the limit as it was.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn bench_listening_ports(sockets: usize, rounds: usize) {
    raise_nofile(sockets as u64);
    let mut held = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let addr = if i % 2 == 0 { "127.0.0.1:0" } else { "[::1]:0" };
        match TcpListener::bind(addr) {
            Ok(l) => held.push(l),
            Err(e) => {
                eprintln!("could open only {} listening sockets: {e}", held.len());
                break;
            }
        }
    }
    let mut count = 0;
    let (ours_med, ours_min) = time_rounds(rounds, || {
        count = ListeningPortsCollector::new()
            .collect()
            .map(|v| v.len())
            .unwrap_or(0);
    });
    println!(
        "ListeningPorts, {} listening sockets held by this process ({count} items reported):",
        held.len()
    );
    println!(
        "  twinguard ListeningPorts   median {}  min {}",
        ms(ours_med),
        ms(ours_min)
    );
    // Where the time goes: the kernel dump, and the scan of /proc/*/fd for owners.
    let root = Root::system();
    let mut inodes = HashSet::new();
    let mut dumped = Vec::new();
    let (dump_med, _) = time_rounds(rounds, || {
        dumped.clear();
        if let Ok(mut d) = SockDiag::open() {
            for table in Table::ALL {
                let mut out = Vec::new();
                let _ = d.dump_listening(table, usize::MAX, &mut out);
                dumped.extend(out.into_iter().map(|s| (table, s)));
            }
        }
        inodes = dumped.iter().map(|(_, s)| s.inode).collect();
    });
    let (build_med, _) = time_rounds(rounds, || {
        let items = listening_items(&dumped, &HashMap::new(), |_| None, |_| None);
        assert!(!items.is_empty());
    });
    let (procnet_med, _) = time_rounds(rounds, || {
        for table in Table::ALL {
            let _ = procnet::read_table(&root, table, usize::MAX, |s| s.is_listening(table.transport));
        }
    });
    let (scan_med, _) = time_rounds(rounds, || {
        let _ = procfd::socket_owners(&root, &inodes);
    });
    println!(
        "    of which: sock_diag dump {}, /proc/*/fd owner scan {}, items {} (a /proc/net read instead of the dump: {})",
        ms(dump_med),
        ms(scan_med),
        ms(build_med),
        ms(procnet_med)
    );
    match find(&["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]) {
        Some(ss) => {
            for args in [["-tlnp"], ["-tln"]] {
                let (med, min) = time_rounds(rounds, || {
                    let _ = Command::new(&ss)
                        .args(args)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                });
                println!("  ss {:<23} median {}  min {}", args[0], ms(med), ms(min));
            }
        }
        None => println!("  ss: not installed (apt-get install iproute2)"),
    }
    drop(held);
}

fn bench_baseline(rounds: usize) {
    let mut n = 0;
    let (med, min) = time_rounds(rounds, || {
        n = OsBaselineCollector::new().collect().map(|v| v.len()).unwrap_or(0);
    });
    println!("OSBaseline ({n} checks):");
    println!("  twinguard OSBaseline       median {}  min {}", ms(med), ms(min));
    if std::env::var("TG_BENCH_LYNIS").is_ok_and(|v| v == "0") {
        println!("  lynis: skipped (TG_BENCH_LYNIS=0)");
        return;
    }
    match find(&["/usr/sbin/lynis", "/usr/bin/lynis", "/usr/local/bin/lynis"]) {
        Some(lynis) => {
            let t = Instant::now();
            let status = Command::new(&lynis)
                .args(["audit", "system", "--quick", "--no-colors", "--quiet", "--no-log"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let took = t.elapsed();
            match status {
                Ok(_) => println!("  lynis audit system --quick once    {}", ms(took)),
                Err(e) => println!("  lynis: could not run: {e}"),
            }
        }
        None => println!("  lynis: not installed (apt-get install lynis)"),
    }
}

fn bench_others(rounds: usize) {
    println!("Other snapshot collectors (median of {rounds}):");
    let names = [
        EventName::SystemInformation,
        EventName::LocalUsers,
        EventName::ConnectedHardware,
        EventName::FirewallConfiguration,
    ];
    for name in names {
        let make = || snapshot_collector(name).expect("every Security snapshot has a collector");
        let mut n = 0;
        let mut failed = None;
        let (med, _) = time_rounds(rounds, || match make().collect() {
            Ok(v) => n = v.len(),
            Err(e) => failed = Some(e.to_string()),
        });
        match failed {
            Some(e) => println!("  {:<26} failed: {e}", name.as_str()),
            None => println!("  {:<26} median {}  ({n} items)", name.as_str(), ms(med)),
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let sockets = env_usize("TG_BENCH_SOCKETS", 10_000);
    let rounds = env_usize("TG_BENCH_ROUNDS", 15).max(1);
    if twinguard_os::euid() != 0 {
        println!("note: not root: socket owners of other users' processes are invisible to us and to ss");
    }
    // Other work on the machine skews every figure; say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {cpus} CPUs, load average {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    bench_listening_ports(sockets, rounds);
    bench_baseline(rounds.min(5));
    bench_others(rounds.min(5));
}
