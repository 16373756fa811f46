//! Process-event capture figures (SPEC §10): the real agent in local mode, ProcessCreate High,
//! aggregation off, a cache large enough that nothing is evicted, under N short processes
//! launched at 1,000/s and at the fastest rate this machine manages: ours with its eBPF source
//! (`twinguard eBPF`), ours with the fallback forced (`TWINGUARD_SOURCES=fallback`: the netlink
//! process connector, `twinguard fallback`), then the same load with `auditd` (Debian's
//! package) and an execve audit rule, in the same run.
//!
//! Printed per run: events generated, events found, capture %, how many of those were fully
//! enriched (executable and command line read before the process exited), drops (the run's
//! DroppedEventsStatistics: cache evictions and events lost before the cache; must be 0 for
//! the capture figure to count), whole-system CPU with the collector minus without it (in % of
//! one core per 1,000 events/s - per-process CPU would miss the kernel's netlink and audit
//! work), the collector process's own CPU, and its idle and peak RSS.
//!
//! Run as root: `cargo bench --bench capture` (`TG_BENCH_N=20000` for more processes,
//! `TG_BENCH_REPS=5` for more paired runs; the medians are printed last). Without
//! root, or without auditd, it says why and prints what it can. Machines here are shared, so
//! the whole-system CPU difference carries the noise of whatever else runs; each figure is the
//! difference of two measurements taken back to back.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const TRUE: &str = "/bin/true";
/// The rows of our agent with its eBPF source, and with the fallback forced.
const OURS_EBPF: &str = "twinguard eBPF";
const OURS_FALLBACK: &str = "twinguard fallback";

/// Whole-system busy CPU time so far, in seconds (all CPUs: user, nice, system, irq, softirq,
/// steal; not idle or iowait).
fn system_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = v.first().unwrap_or(&0.0)
        + v.get(1).unwrap_or(&0.0)
        + v.get(2).unwrap_or(&0.0)
        + v.get(5).unwrap_or(&0.0)
        + v.get(6).unwrap_or(&0.0)
        + v.get(7).unwrap_or(&0.0);
    busy / ticks_per_sec()
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A process's own CPU time (user + system), in seconds.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12); the state is not a number, so
    // the parsed list starts at ppid.
    (f.get(10).unwrap_or(&0.0) + f.get(11).unwrap_or(&0.0)) / ticks_per_sec()
}

/// `VmHWM` or `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What one load run did.
struct Load {
    pids: HashSet<u32>,
    elapsed: Duration,
}

/// Launches `n` processes `/bin/true <marker>-<i>` at `rate` per second (0 = as fast as
/// possible, from two threads), reaping them in the background.
fn launch(n: usize, rate: u64, marker: &str) -> Load {
    let start = Instant::now();
    let threads = if rate == 0 { 2 } else { 1 };
    let mut handles = Vec::new();
    for t in 0..threads {
        let marker = marker.to_owned();
        handles.push(std::thread::spawn(move || {
            let (tx, rx) = mpsc::channel::<Child>();
            let reaper = std::thread::spawn(move || {
                for mut c in rx {
                    let _ = c.wait();
                }
            });
            let mut pids = Vec::new();
            let mut i = t;
            while i < n {
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                if let Ok(child) = Command::new(TRUE).arg(format!("{marker}-{i}")).spawn() {
                    pids.push(child.id());
                    let _ = tx.send(child);
                }
                i += threads;
            }
            drop(tx);
            let _ = reaper.join();
            pids
        }));
    }
    let mut pids = HashSet::new();
    for h in handles {
        pids.extend(h.join().unwrap());
    }
    Load {
        pids,
        elapsed: start.elapsed(),
    }
}

/// CPU figures of one measured window.
struct Cpu {
    /// Whole-system busy core-seconds.
    system: f64,
    /// The collector process's own core-seconds.
    own: f64,
    /// The launched processes' core-seconds (kernel work done in their context - audit's
    /// record formatting, the connector's messages - lands here).
    children: f64,
    /// The `kauditd` kernel thread's core-seconds.
    kauditd: f64,
    /// The window's length.
    window: f64,
}

/// CPU time of this process's reaped children so far, in seconds.
fn children_cpu_secs() -> f64 {
    // SAFETY: rusage is plain data; getrusage writes into it and cannot fail for
    // RUSAGE_CHILDREN.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// The pid of the `kauditd` kernel thread, if audit is built in.
fn kauditd_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        (std::fs::read_to_string(e.path().join("comm")).ok()?.trim() == "kauditd").then_some(pid)
    })
}

/// Runs the load and measures whole-system CPU over the load plus `tail` (the collector's
/// catch-up), and `own_pid`'s CPU over the same window.
fn measured(n: usize, rate: u64, marker: &str, tail: Duration, own_pid: Option<u32>) -> (Load, Cpu) {
    let kauditd = kauditd_pid();
    let own0 = own_pid.map_or(0.0, process_cpu_secs);
    let kd0 = kauditd.map_or(0.0, process_cpu_secs);
    let ch0 = children_cpu_secs();
    let sys0 = system_busy_secs();
    let t = Instant::now();
    let load = launch(n, rate, marker);
    std::thread::sleep(tail);
    let sys1 = system_busy_secs();
    let own1 = own_pid.map_or(0.0, process_cpu_secs);
    (
        load,
        Cpu {
            system: sys1 - sys0,
            own: own1 - own0,
            children: children_cpu_secs() - ch0,
            kauditd: kauditd.map_or(0.0, process_cpu_secs) - kd0,
            window: t.elapsed().as_secs_f64(),
        },
    )
}

/// One row of the results table.
struct Row {
    who: &'static str,
    rate_label: String,
    generated: usize,
    found: usize,
    enriched: Option<usize>,
    evictions: Option<u64>,
    extra_cpu_pct_per_1k: f64,
    /// The collector's own CPU, plus what the launched processes and kauditd spent beyond the
    /// same load without the collector: the cost it causes, measured where it lands.
    attributed_cpu_pct_per_1k: f64,
    own_cpu_pct_per_1k: f64,
    peak_rss_kib: u64,
    /// RSS before the load (the agent settled, idle).
    idle_rss_kib: Option<u64>,
    achieved_rate: f64,
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<18} {:>7} {:>8} {:>9} {:>6} {:>8} {:>7} {:>11} {:>12} {:>11} {:>10}",
        "collector",
        "rate",
        "achieved",
        "generated",
        "found",
        "capture",
        "dropped",
        "sys %/1k/s",
        "cause %/1k/s",
        "own %/1k/s",
        "peak RSS"
    );
    for r in rows {
        let capture = 100.0 * r.found as f64 / r.generated.max(1) as f64;
        println!(
            "{:<18} {:>7} {:>8.0} {:>9} {:>6} {:>7.2}% {:>7} {:>11.2} {:>12.2} {:>11.2} {:>6} KiB",
            r.who,
            r.rate_label,
            r.achieved_rate,
            r.generated,
            r.found,
            capture,
            r.evictions.map_or("-".to_string(), |e| e.to_string()),
            r.extra_cpu_pct_per_1k,
            r.attributed_cpu_pct_per_1k,
            r.own_cpu_pct_per_1k,
            r.peak_rss_kib
        );
        if let Some(e) = r.enriched {
            println!(
                "{:<18} {:>10} with the whole command line (and, ours, the executable): {} ({:.1}%); \
                 idle RSS before the load {} KiB",
                "",
                "",
                e,
                100.0 * e as f64 / r.generated.max(1) as f64,
                r.idle_rss_kib.unwrap_or(0)
            );
        }
    }
}

/// The core-seconds a collector caused: its own, kauditd's, and the launched processes' beyond
/// what the same load cost without it. Unlike the whole-system difference, this is not moved
/// by what else the machine runs.
fn attributed(cpu: &Cpu, baseline: &Cpu) -> f64 {
    cpu.own + (cpu.kauditd - baseline.kauditd) + (cpu.children - baseline.children)
}

/// % of one core per 1,000 events/s, from extra core-seconds over a window at `rate`.
fn pct_per_1k(extra_core_secs: f64, window: f64, events: usize) -> f64 {
    let cores = extra_core_secs / window;
    let rate = events as f64 / window;
    if rate <= 0.0 {
        return 0.0;
    }
    100.0 * cores / (rate / 1000.0)
}

struct Agent {
    child: Child,
    dir: PathBuf,
}

fn start_agent(dir: &Path, fallback: bool) -> Agent {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let twin = r#"{
        "eventPriorityProcessCreate": {"value": "High"},
        "aggregationEnabledProcessCreate": {"value": false},
        "aggregationEnabledProcessTerminate": {"value": false},
        "aggregationEnabledConnectionCreate": {"value": false},
        "highPriorityMessageFrequency": {"value": "PT2S"},
        "maxLocalCacheSizeInBytes": {"value": 500000000},
        "maxMessageSizeInBytes": {"value": 262144},
        "snapshotFrequency": {"value": "PT5S"},
        "eventPriorityDroppedEventsStatistics": {"value": "High"},
        "eventPriorityConnectedHardware": {"value": "Off"},
        "eventPriorityListeningPorts": {"value": "Off"},
        "eventPrioritySystemInformation": {"value": "Off"},
        "eventPriorityLocalUsers": {"value": "Off"},
        "eventPriorityFirewallConfiguration": {"value": "Off"},
        "eventPriorityOSBaseline": {"value": "Off"}
    }"#;
    std::fs::write(dir.join("twin.json"), twin).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_twinguard"));
    if fallback {
        command.env("TWINGUARD_SOURCES", "fallback");
    } else {
        command.env_remove("TWINGUARD_SOURCES");
    }
    let child = command
        .arg("run")
        .arg("--twin")
        .arg(dir.join("twin.json"))
        .arg("--outbox")
        .arg(dir.join("outbox.jsonl"))
        .arg("--reported")
        .arg(dir.join("reported.json"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("TWINGUARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Agent {
        child,
        dir: dir.to_owned(),
    }
}

/// ProcessCreate pids (and how many with the marker in their command line) in the outbox,
/// and the evictions its DroppedEventsStatistics count.
fn outbox_figures(dir: &Path, pids: &HashSet<u32>, marker: &str) -> (usize, usize, u64) {
    let mut found = HashSet::new();
    let mut enriched = 0;
    let mut dropped = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("outbox.jsonl"))
    });
    for f in files {
        let Ok(file) = std::fs::File::open(&f) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            let Ok(m) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            for e in m["Events"].as_array().into_iter().flatten() {
                let items = e["Payload"].as_array().cloned().unwrap_or_default();
                match e["Name"].as_str() {
                    Some("ProcessCreate") => {
                        for i in items {
                            let pid = i["ProcessId"].as_u64().unwrap_or(0) as u32;
                            if pids.contains(&pid) && found.insert(pid) {
                                let cmd = i["CommandLine"].as_str().unwrap_or("");
                                // The whole command line: the executable and its one argument.
                                if cmd.starts_with(&format!("{TRUE} {marker}-"))
                                    && i["Executable"].as_str().is_some_and(|x| !x.is_empty())
                                {
                                    enriched += 1;
                                }
                            }
                        }
                    }
                    Some("DroppedEventsStatistics") => {
                        dropped += items
                            .iter()
                            .map(|i| i["DroppedEvents"].as_u64().unwrap_or(0))
                            .sum::<u64>();
                    }
                    _ => {}
                }
            }
        }
    }
    (found.len(), enriched, dropped)
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}

/// Waits until `count()` stops growing for `quiet` (or `max` passes).
fn settle(mut count: impl FnMut() -> usize, quiet: Duration, max: Duration) -> usize {
    let start = Instant::now();
    let mut last = count();
    let mut since = Instant::now();
    while start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(250));
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

fn ours(n: usize, rate: u64, label: &str, baseline: &Cpu, work: &Path, fallback: bool) -> Row {
    let who = if fallback { OURS_FALLBACK } else { OURS_EBPF };
    let dir = work.join(format!("agent-{label}-{fallback}").replace('/', "-"));
    let agent = start_agent(&dir, fallback);
    let pid = agent.child.id();
    // Let it start: snapshots off, statistics only.
    std::thread::sleep(Duration::from_secs(3));
    let idle_rss = memory_kib(pid, "VmRSS:");
    let marker = format!(
        "tgbench-ours-{}-{}-{}",
        label.replace('/', "-"),
        fallback,
        std::process::id()
    );
    let (load, cpu) = measured(n, rate, &marker, Duration::from_secs(2), Some(pid));
    let peak = memory_kib(pid, "VmHWM:");
    // High events are sent within 2 s; wait until the outbox stops growing.
    let pids = load.pids.clone();
    let (dir2, marker2) = (agent.dir.clone(), marker.clone());
    settle(
        || outbox_figures(&dir2, &pids, &marker2).0,
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    let mut agent = agent;
    stop(&mut agent.child);
    let (found, enriched, dropped) = outbox_figures(&agent.dir, &load.pids, &marker);
    let extra = cpu.system - baseline.system * (cpu.window / baseline.window);
    Row {
        who,
        rate_label: label.to_owned(),
        generated: load.pids.len(),
        found,
        enriched: Some(enriched),
        evictions: Some(dropped),
        extra_cpu_pct_per_1k: pct_per_1k(extra, cpu.window, load.pids.len()),
        attributed_cpu_pct_per_1k: pct_per_1k(attributed(&cpu, baseline), cpu.window, load.pids.len()),
        own_cpu_pct_per_1k: pct_per_1k(cpu.own, cpu.window, load.pids.len()),
        peak_rss_kib: peak,
        idle_rss_kib: Some(idle_rss),
        achieved_rate: load.pids.len() as f64 / load.elapsed.as_secs_f64(),
    }
}

fn auditctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("auditctl")
        .args(args)
        .output()
        .map_err(|e| format!("auditctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn audit_status(field: &str) -> Option<String> {
    auditctl(&["-s"])
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field} ")).map(str::to_owned))
}

/// Why auditd cannot run here, if it cannot; waits up to a minute for another audit daemon
/// (another test's agent) to go away.
fn auditd_unavailable() -> Option<String> {
    let t = Instant::now();
    loop {
        match auditd_blocker() {
            Some(why) if why.starts_with("another") && t.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

fn auditd_blocker() -> Option<String> {
    if !Path::new("/sbin/auditd").exists() && !Path::new("/usr/sbin/auditd").exists() {
        return Some("auditd is not installed (apt-get install auditd)".into());
    }
    match audit_status("pid") {
        None => Some("auditctl -s failed: no audit support or no privilege".into()),
        Some(p) if p != "0" => Some(format!(
            "another audit daemon (pid {p}, e.g. a twinguard of a concurrent test) owns the audit socket"
        )),
        Some(_) => None,
    }
}

fn auditd_run(n: usize, rate: u64, label: &str, baseline: &Cpu, work: &Path) -> Result<Row, String> {
    let dir = work.join(format!("auditd-{label}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let log = dir.join("audit.log");
    // Debian's configuration, with the log in our directory and no size action (so nothing
    // rotates or suspends during the run).
    let system_conf = std::fs::read_to_string("/etc/audit/auditd.conf").unwrap_or_default();
    let mut conf = String::new();
    for line in system_conf.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "log_file"
            | "max_log_file_action"
            | "space_left_action"
            | "admin_space_left_action"
            | "disk_full_action"
            | "disk_error_action"
            | "max_log_file" => {}
            _ => conf += &format!("{line}\n"),
        }
    }
    conf += &format!(
        "log_file = {}\nmax_log_file = 4000\nmax_log_file_action = IGNORE\nspace_left_action = IGNORE\n\
         admin_space_left_action = IGNORE\ndisk_full_action = IGNORE\ndisk_error_action = IGNORE\n",
        log.display()
    );
    let conf_path = dir.join("auditd.conf");
    let mut f = std::fs::File::create(&conf_path).map_err(|e| e.to_string())?;
    f.write_all(conf.as_bytes()).map_err(|e| e.to_string())?;
    drop(f);
    let enabled_before = audit_status("enabled").unwrap_or_else(|| "0".into());
    let auditd = if Path::new("/sbin/auditd").exists() {
        "/sbin/auditd"
    } else {
        "/usr/sbin/auditd"
    };
    let mut child = Command::new(auditd)
        .args(["-n", "-c"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("auditd: {e}"))?;
    let pid = child.id();
    let t = Instant::now();
    while audit_status("pid").as_deref() != Some(&pid.to_string()) {
        if t.elapsed() > Duration::from_secs(5) || child.try_wait().ok().flatten().is_some() {
            stop(&mut child);
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!(
                "auditd did not register as the audit daemon: {}",
                err.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let arch = if cfg!(target_pointer_width = "64") {
        "arch=b64"
    } else {
        "arch=b32"
    };
    let rule = ["exit,always", "-F", arch, "-S", "execve", "-k", "tgbench"];
    let mut add = vec!["-a"];
    add.extend(rule);
    auditctl(&add)?;
    // As Debian's default rules file does (`-b 8192`): with the kernel's default backlog of 64,
    // an exec storm would block in the kernel waiting for auditd.
    let backlog_before = audit_status("backlog_limit").unwrap_or_else(|| "64".into());
    auditctl(&["-b", "8192"])?;
    auditctl(&["-e", "1"])?;
    std::thread::sleep(Duration::from_secs(1));
    let marker = format!("tgbench-auditd-{label}-{}", std::process::id());
    let (load, cpu) = measured(n, rate, &marker, Duration::from_secs(2), Some(pid));
    let peak = memory_kib(pid, "VmHWM:");
    let mut del = vec!["-d"];
    del.extend(rule);
    let _ = auditctl(&del);
    let _ = auditctl(&["-e", &enabled_before]);
    let _ = auditctl(&["-b", &backlog_before]);
    // Found: a SYSCALL record of a launched pid; with its whole command line: its event also
    // has the EXECVE record naming the marker (the arguments, as auditd logs them).
    let figures = || -> (usize, usize) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let event_of = |line: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix("msg=audit("))
                .map(|v| v.trim_end_matches(':').trim_end_matches(')').to_owned())
        };
        let with_args: HashSet<String> = text
            .lines()
            .filter(|l| l.contains("type=EXECVE") && l.contains(&marker))
            .filter_map(event_of)
            .collect();
        let mut found = HashSet::new();
        let mut whole = 0;
        for line in text
            .lines()
            .filter(|l| l.contains("type=SYSCALL") && l.contains("tgbench"))
        {
            if let Some(pid) = line
                .split(' ')
                .find_map(|f| f.strip_prefix("pid="))
                .and_then(|p| p.parse::<u32>().ok())
            {
                if load.pids.contains(&pid) && found.insert(pid) {
                    whole += usize::from(event_of(line).is_some_and(|e| with_args.contains(&e)));
                }
            }
        }
        (found.len(), whole)
    };
    let found = settle(|| figures().0, Duration::from_secs(2), Duration::from_secs(30));
    let enriched = figures().1;
    stop(&mut child);
    let extra = cpu.system - baseline.system * (cpu.window / baseline.window);
    Ok(Row {
        who: "auditd",
        rate_label: label.to_owned(),
        generated: load.pids.len(),
        found,
        enriched: Some(enriched),
        evictions: None,
        extra_cpu_pct_per_1k: pct_per_1k(extra, cpu.window, load.pids.len()),
        attributed_cpu_pct_per_1k: pct_per_1k(attributed(&cpu, baseline), cpu.window, load.pids.len()),
        own_cpu_pct_per_1k: pct_per_1k(cpu.own, cpu.window, load.pids.len()),
        peak_rss_kib: peak,
        idle_rss_kib: None,
        achieved_rate: load.pids.len() as f64 / load.elapsed.as_secs_f64(),
    })
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (a filter) is ignored.
    if twinguard_os::euid() != 0 {
        println!(
            "capture: skipped: needs root (the process connector needs CAP_NET_ADMIN; auditd needs root)"
        );
        return;
    }
    let n: usize = std::env::var("TG_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let work = std::env::temp_dir().join(format!("twinguard-capture-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    println!(
        "capture: {n} processes ({TRUE}) per run; {} CPUs; figures per run below",
        num_cpus()
    );
    let reps: usize = std::env::var("TG_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let auditd_why = auditd_unavailable();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (rate, label) in [(1000u64, "1000/s"), (0u64, "max")] {
        // Each run is paired with the same load without any collector, right before it; the
        // median of the pairs damps what else the machine was doing.
        for _ in 0..reps {
            let (_, base) = measured(n, rate, "tgbench-base", Duration::from_secs(2), None);
            rows.push(ours(n, rate, label, &base, &work, false));
            let (_, base) = measured(n, rate, "tgbench-base", Duration::from_secs(2), None);
            rows.push(ours(n, rate, label, &base, &work, true));
            if auditd_why.is_none() {
                if let Some(why) = auditd_unavailable() {
                    notes.push(format!("auditd {label}: skipped: {why}"));
                    continue;
                }
                let (_, base) = measured(n, rate, "tgbench-base", Duration::from_secs(2), None);
                match auditd_run(n, rate, label, &base, &work) {
                    Ok(row) => rows.push(row),
                    Err(e) => notes.push(format!("auditd {label}: could not run: {e}")),
                }
            }
        }
    }
    print_rows(&rows);
    println!();
    println!("medians over {reps} paired runs:");
    for who in [OURS_EBPF, OURS_FALLBACK, "auditd"] {
        for label in ["1000/s", "max"] {
            let runs: Vec<&Row> = rows
                .iter()
                .filter(|r| r.who == who && r.rate_label == label)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let mut sys: Vec<f64> = runs.iter().map(|r| r.extra_cpu_pct_per_1k).collect();
            let mut caused: Vec<f64> = runs.iter().map(|r| r.attributed_cpu_pct_per_1k).collect();
            let mut own: Vec<f64> = runs.iter().map(|r| r.own_cpu_pct_per_1k).collect();
            let min_capture = runs
                .iter()
                .map(|r| 100.0 * r.found as f64 / r.generated.max(1) as f64)
                .fold(f64::INFINITY, f64::min);
            let listed = sys
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{who:<18} {label:>7}: capture >= {min_capture:.2}%, caused CPU {:.2} %/1k/s (own {:.2}), \
                 whole-system difference {:.2} %/1k/s (runs: {listed})",
                median(&mut caused),
                median(&mut own),
                median(&mut sys),
            );
        }
    }
    for note in notes {
        println!("{note}");
    }
    if let Some(why) = auditd_why {
        println!("auditd: not run: {why}");
    }
    println!(
        "(dropped: DroppedEventsStatistics of the run, cache evictions plus events lost before the cache, must be 0; \
         all CPU figures in % of one core per 1,000 events/s; sys: whole-system busy time with the collector \
         minus the same load without it (moved by whatever else the machine runs); cause: the collector's own \
         CPU + kauditd's + the launched processes' extra kernel time (audit records, connector messages); \
         own: the collector process alone; SPEC §10 target: 100% captured, <= 3%/1k/s)"
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
