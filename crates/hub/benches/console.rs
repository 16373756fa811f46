//! The fleet console at fleet size (issue 17): a synthetic fleet of `TG_BENCH_DEVICES` agents
//! (default 1,000) and `TG_BENCH_EVENTS` stored events (default 1,000,000).
//!
//! 1. Ingest: security messages of 20 events each (process starts and ends, connections, a
//!    login; now and then a program from /tmp, which raises an alert), spread over the last
//!    24 hours, go through `Hub::record_message` - the path of every message the hub receives:
//!    the message stored, parsed once into typed rows, the rules and recommendations run, all in
//!    one transaction - on one thread. Only that call is timed (building the bodies is not).
//! 2. Pages: the database is then served by the real hub (`server::start`, as `serve` runs it)
//!    and the overview, device and alerts pages are fetched over HTTP with a session cookie
//!    from a real login (one request per connection, as the hub serves them): median and p99
//!    of each, client-measured, so the HTTP layer is included.
//! 3. Size: the database's bytes (after a WAL checkpoint) per million events.
//!
//! `cargo bench -p twinguard-hub --bench console`; targets: ingest >= 50,000 events/s, every
//! page <= 100 ms p99.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use twinguard_core::event::{
    ConnectionCreate, Direction, Event, EventName, Login, LoginResult, PayloadItem, ProcessCreate,
    ProcessTerminate, Protocol, Timestamp, Uuid,
};
use twinguard_core::iothub::identity::IdentityId;
use twinguard_hub::console::rules::{RuleEngine, RuleSettings};
use twinguard_hub::hub::{now_ms, Hub};
use twinguard_hub::server::{start, ServeOptions};
use twinguard_hub::store::{NewMessage, RegistryRecord, Retention, Store};

const MODULE: &str = "azureiotsecurity";
const EVENTS_PER_MESSAGE: usize = 20;
const CONFIG_KEY: &str = "ms_iotn:urn_azureiot_Security_SecurityAgentConfiguration";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn device_name(i: usize) -> String {
    format!("bench-{i:04}")
}

/// A small deterministic generator (xorshift), so every run builds the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

const PROGRAMS: &[(&str, &str)] = &[
    ("/usr/bin/ls", "ls -la /var/log"),
    ("/usr/bin/cat", "cat /etc/os-release"),
    ("/usr/bin/grep", "grep -r error /var/log/syslog"),
    ("/usr/sbin/cron", "/usr/sbin/CRON -f"),
    ("/usr/bin/python3", "python3 /opt/app/collect.py --interval 60"),
    ("/usr/bin/systemctl", "systemctl status app.service"),
    ("/usr/bin/curl", "curl -s https://updates.example/manifest.json"),
    ("/bin/sh", "sh -c /opt/app/healthcheck"),
];

fn event(rng: &mut Rng, name: EventName, item: PayloadItem, ms: i64) -> Event {
    let id = Uuid::from_u128(u128::from(rng.next()) << 64 | u128::from(rng.next()));
    Event::with_id(id, name, vec![item], Timestamp::from_parts(ms, 0).unwrap()).unwrap()
}

/// One security message body of `EVENTS_PER_MESSAGE` events around `ms`.
fn message_body(rng: &mut Rng, ms: i64, from_tmp: bool) -> Vec<u8> {
    let mut events = Vec::with_capacity(EVENTS_PER_MESSAGE);
    for k in 0..EVENTS_PER_MESSAGE {
        let t = ms + i64::try_from(k).unwrap_or(0) * 10;
        let pid = u32::try_from(1000 + rng.below(60_000)).unwrap_or(1000);
        let (exe, cmd) = PROGRAMS[rng.below(PROGRAMS.len())];
        let remote = format!("10.0.{}.{}", rng.below(256), rng.below(256));
        let e = match k {
            0..=12 => event(
                rng,
                EventName::ProcessCreate,
                PayloadItem::ProcessCreate(ProcessCreate {
                    executable: exe.into(),
                    process_id: pid,
                    parent_process_id: 1,
                    user_id: "0".into(),
                    user_name: None,
                    command_line: cmd.into(),
                    extra_details: Default::default(),
                }),
                t,
            ),
            13 if from_tmp => event(
                rng,
                EventName::ProcessCreate,
                PayloadItem::ProcessCreate(ProcessCreate {
                    executable: "/tmp/.x/miner-helper".into(),
                    process_id: pid,
                    parent_process_id: 1,
                    user_id: "1000".into(),
                    user_name: None,
                    command_line: "/tmp/.x/miner-helper --quiet".into(),
                    extra_details: Default::default(),
                }),
                t,
            ),
            13..=15 => event(
                rng,
                EventName::ProcessTerminate,
                PayloadItem::ProcessTerminate(ProcessTerminate {
                    executable: exe.into(),
                    process_id: pid,
                    exit_status: 0,
                    extra_details: Default::default(),
                }),
                t,
            ),
            16..=18 => event(
                rng,
                EventName::ConnectionCreate,
                PayloadItem::ConnectionCreate(ConnectionCreate {
                    remote_address: remote.parse().unwrap(),
                    remote_port: "443".into(),
                    local_address: None,
                    local_port: None,
                    direction: Direction::Out,
                    protocol: Protocol::Tcp,
                    process_id: pid,
                    user_id: Some("0".into()),
                    executable: exe.into(),
                    command_line: Some(cmd.into()),
                    extra_details: Default::default(),
                }),
                t,
            ),
            _ => event(
                rng,
                EventName::Login,
                PayloadItem::Login(Login {
                    process_id: pid,
                    user_id: Some("1000".into()),
                    user_name: "operator".into(),
                    operation: "Login".into(),
                    executable: "/usr/sbin/sshd".into(),
                    remote_address: Some("192.0.2.7".parse().unwrap()),
                    remote_port: None,
                    local_port: None,
                    result: LoginResult::Success,
                    extra_details: Default::default(),
                }),
                t,
            ),
        };
        events.push(serde_json::from_slice::<serde_json::Value>(&e.to_json()).unwrap());
    }
    serde_json::to_vec(&json!({
        "AgentVersion": "0.1.0",
        "AgentId": "6f0c3d1e-9a4b-4c1d-8e2f-0a1b2c3d4e5f",
        "MessageSchemaVersion": "1.0",
        "Events": events,
    }))
    .unwrap()
}

/// The database's size on disk (main file, WAL and shared memory).
fn db_bytes(dir: &Path) -> u64 {
    ["hub.db", "hub.db-wal", "hub.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// One HTTP/1.1 request; the status and the body's length.
fn http(api: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// CPU time of this thread (user and system), so the ingest figure is the cost on one core
/// even when other work shares the machine.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let devices = env_usize("TG_BENCH_DEVICES", 1_000).max(1);
    let total_events = env_usize("TG_BENCH_EVENTS", 1_000_000).max(EVENTS_PER_MESSAGE);
    let samples = env_usize("TG_BENCH_PAGE_SAMPLES", 100).max(2);
    let messages = total_events / EVENTS_PER_MESSAGE;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "console bench: {devices} devices, {} events in {messages} messages of {EVENTS_PER_MESSAGE}; machine: {cpus} CPUs, load average {}",
        messages * EVENTS_PER_MESSAGE,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("console-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    twinguard_hub::datadir::prepare(&dir).unwrap();
    let store = Store::open(&dir.join("hub.db"), u64::try_from(messages).unwrap_or(u64::MAX)).unwrap();
    let hub = Hub::with_rules("bench".into(), store, RuleEngine::new(RuleSettings::default())).unwrap();
    let now = now_ms();
    let ids: Vec<IdentityId> = (0..devices)
        .map(|i| IdentityId::new(&device_name(i), Some(MODULE)).unwrap())
        .collect();
    for id in &ids {
        for identity in [IdentityId::new(id.device(), None).unwrap(), id.clone()] {
            let record = RegistryRecord {
                id: identity,
                primary_key: "a2V5".into(),
                secondary_key: "a2V5".into(),
                status: "enabled".into(),
                etag_n: 0,
                created_ms: 0,
            };
            hub.store().put_identity(&record, None, now).unwrap();
        }
        hub.change_desired(
            id,
            &twinguard_hub::twin::DesiredChange::Replace(json!({CONFIG_KEY: {
                "highPriorityMessageFrequency": {"value": "PT5M"}
            }})),
        )
        .unwrap();
        hub.patch_reported(
            id,
            &json!({
                CONFIG_KEY: {"highPriorityMessageFrequency": {"value": "PT5M"}},
                "twinguard": {"configurationStatus": "applied", "lastDesiredVersion": 2, "errors": []},
            }),
        )
        .unwrap();
    }

    // 1. Ingest.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let day_ms = 24 * 3600 * 1000;
    let mut ingest = Duration::ZERO;
    let mut ingest_cpu = Duration::ZERO;
    let mut body_bytes = 0usize;
    for m in 0..messages {
        let id = &ids[m % devices];
        let ms = now - day_ms + i64::try_from(m).unwrap_or(0) * day_ms / i64::try_from(messages).unwrap_or(1);
        let body = message_body(&mut rng, ms, m % 997 == 5);
        body_bytes += body.len();
        let message = NewMessage {
            id: id.clone(),
            received_ms: ms,
            topic: format!("devices/{}/modules/{MODULE}/messages/events/", id.device()),
            properties: vec![(
                "$.ifid".into(),
                Some("urn:azureiot:Security:SecurityAgent:1".into()),
            )],
            body,
            is_security: true,
            schema_valid: true,
            schema_error: None,
        };
        let (t, c) = (Instant::now(), thread_cpu());
        hub.record_message(&message).unwrap();
        ingest += t.elapsed();
        ingest_cpu += thread_cpu().saturating_sub(c);
    }
    let events = messages * EVENTS_PER_MESSAGE;
    let rate = events as f64 / ingest.as_secs_f64();
    let cpu_rate = events as f64 / ingest_cpu.as_secs_f64();
    drop(hub);
    // A checkpoint so the size is the database's, not a WAL's.
    {
        let s = Store::open(&dir.join("hub.db"), u64::try_from(messages).unwrap_or(u64::MAX)).unwrap();
        drop(s);
        let c = rusqlite::Connection::open(dir.join("hub.db")).unwrap();
        let _: i64 = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
    }
    let size = db_bytes(&dir);

    // 2. Pages through the real server.
    let running = start(&ServeOptions {
        data_dir: dir.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        plain: None,
        api: "127.0.0.1:0".parse().unwrap(),
        hostname: "localhost".into(),
        api_hosts: Vec::new(),
        max_connections: 16,
        max_pending: 16,
        max_pending_per_source: 16,
        limits_report_every: Duration::from_secs(3600),
        max_messages: u64::try_from(messages).unwrap_or(u64::MAX),
        service: None,
        retention: Retention {
            max_events: 10_000_000,
            max_age_ms: 30 * day_ms,
            closed_alert_age_ms: 30 * day_ms,
        },
        rules: RuleSettings::default(),
        console_every: Duration::from_secs(3600),
        rules_file: None,
        fleet: None,
        webhook: None,
    })
    .unwrap();
    let api = running.api;
    let token = std::fs::read_to_string(dir.join("api-token")).unwrap();
    let form = format!("token={}", token.trim());
    let (status, reply) = http(
        api,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 303, "login: {reply}");
    let cookie = reply
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
        })
        .expect("a session cookie");
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
    };
    type PagePath = Box<dyn Fn(usize) -> String>;
    let pages: Vec<(&str, PagePath)> = vec![
        ("overview /", Box::new(|_| "/".to_owned())),
        (
            "device /devices/D/modules/M",
            Box::new(move |i| format!("/devices/{}/modules/{MODULE}", device_name((i * 37) % devices))),
        ),
        ("alerts /alerts", Box::new(|_| "/alerts".to_owned())),
        (
            "alerts /alerts?severity=medium",
            Box::new(|_| "/alerts?severity=medium".to_owned()),
        ),
    ];
    let mut rows = Vec::new();
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(samples);
        let mut bytes = 0;
        for i in 0..samples {
            let request = get(&path(i));
            let t = Instant::now();
            let (status, body) = http(api, &request);
            times.push(t.elapsed());
            assert_eq!(
                status,
                200,
                "{name}: {}",
                body.chars().take(300).collect::<String>()
            );
            bytes = body.len();
        }
        times.sort();
        rows.push((*name, percentile(&times, 0.5), percentile(&times, 0.99), bytes));
    }

    println!();
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| ingest per CPU second (record_message: stored, typed rows, rules; one thread) | {cpu_rate:.0} events/s ({:.0} messages/s; {:.1} s of CPU) | >= 50,000 events/s |",
        messages as f64 / ingest_cpu.as_secs_f64(),
        ingest_cpu.as_secs_f64()
    );
    println!(
        "| ingest per wall-clock second (the same, on a shared machine) | {rate:.0} events/s ({events} events in {:.1} s) | - |",
        ingest.as_secs_f64()
    );
    for (name, median, p99, bytes) in &rows {
        println!(
            "| page {name} over HTTP ({samples} requests, {} KB) | median {}, p99 {} | p99 <= 100 ms |",
            bytes / 1024,
            ms(*median),
            ms(*p99)
        );
    }
    println!(
        "| database size (events, {messages} message bodies, alerts) | {:.0} MB, {:.0} MB per million events, of which the message bodies {:.0} MB | - |",
        size as f64 / 1e6,
        size as f64 / 1e6 / (events as f64 / 1e6),
        body_bytes as f64 / 1e6
    );
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
