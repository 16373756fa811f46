//! The attacks of issue 12 on the hub, each against a real hub process: floods of connections
//! that never log in (from 127.0.0.2 and up: all of 127/8 is loopback on Linux) while real
//! devices log in from 127.0.0.1, half-sent large CONNECTs (the hub's memory read from
//! /proc), the API without its token, with a foreign `Host` and with a cross-site `text/plain`
//! POST, slow API clients and long-polls, the data directory's modes and owner, a SAS token in
//! a refused user name, device-forged `iothub-*` properties, SAS expiry far ahead, and
//! `identity add --out` at a symbolic link.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use twinguard_core::iothub::sas::sign;
use twinguard_mqtt::{ConnectReturnCode, Packet, QoS};

use crate::client::{tcp_from, unix_now, Client, Next};
use crate::support::{key_of, scratch, skip, Hub, MODULE};

fn loopback(n: u32) -> IpAddr {
    // 127.0.0.2 + n, across the third octet for n >= 254.
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + n))
}

/// One HTTP exchange with raw bytes; the status and the whole answer.
pub fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

fn memory_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn hub_cli(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("runs")
}

const DEVICE: &str = "dev-hard";

fn login(hub: &Hub, key: &[u8], from: Option<IpAddr>, expiry: u64) -> (Client, Option<ConnectReturnCode>) {
    let mut c = match from {
        Some(ip) => Client::open_from(hub.mqtt, ip, &hub.ca),
        None => Client::open(hub.mqtt, &hub.ca),
    };
    let token = sign(
        &format!("localhost/devices/{DEVICE}/modules/{MODULE}"),
        key,
        expiry,
    );
    let code = c.connect(
        &format!("{DEVICE}/{MODULE}"),
        &format!("localhost/{DEVICE}/{MODULE}/?api-version=2021-04-12"),
        &token,
        60,
    );
    (c, code)
}

/// 15 logins from 127.0.0.1, one after another: how many succeeded, and the slowest.
fn fifteen_logins(hub: &Hub, key: &[u8]) -> (usize, Duration) {
    let mut ok = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..15 {
        let start = Instant::now();
        let (_c, code) = login(hub, key, None, unix_now() + 600);
        slowest = slowest.max(start.elapsed());
        ok += usize::from(code == Some(ConnectReturnCode::Accepted));
    }
    (ok, slowest)
}

#[test]
fn idle_connection_floods_do_not_lock_out_devices() {
    // Its summary lines are counted within seconds: not beside the SDK flows with agents.
    let _heavy = crate::service::HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let data = scratch("flood").join("data");
    let hub = Hub::start_with(&data, "127.0.0.1:0", &["--limits-report-secs", "1"]).expect("hub starts");
    let key = key_of(&hub.add_identity(DEVICE, Some(MODULE)));
    // A device logged in before the flood keeps working through it.
    let other_key = key_of(&hub.add_identity("dev-other", None));
    let mut before = Client::open(hub.mqtt, &hub.ca);
    let token = sign("localhost/devices/dev-other", &other_key, unix_now() + 600);
    assert_eq!(
        before.connect(
            "dev-other",
            "localhost/dev-other/?api-version=2021-04-12",
            &token,
            60
        ),
        Some(ConnectReturnCode::Accepted)
    );
    let rss_before = memory_kb(hub.pid, "VmRSS:");

    // 1. 256 idle connections from one address (127.0.0.2).
    let start = Instant::now();
    let one: Vec<TcpStream> = (0..256)
        .filter_map(|_| tcp_from(hub.mqtt, loopback(0)).ok())
        .collect();
    let flood_one = start.elapsed();
    let (ok, slowest) = fifteen_logins(&hub, &key);
    assert_eq!(ok, 15, "logins from 127.0.0.1 under a one-address flood");
    eprintln!(
        "flood from one address: {} connections opened in {flood_one:?}; 15/15 logins, slowest {slowest:?}",
        one.len()
    );
    let one_count = one.len();
    drop(one);

    // 2. 256 idle connections from 256 addresses (127.0.0.2 - 127.0.1.1).
    let start = Instant::now();
    let many: Vec<TcpStream> = (0..256)
        .filter_map(|n| tcp_from(hub.mqtt, loopback(n)).ok())
        .collect();
    let flood_many = start.elapsed();
    let (ok, slowest) = fifteen_logins(&hub, &key);
    assert_eq!(ok, 15, "logins from 127.0.0.1 under a 256-address flood");
    before.send(&Packet::PingReq);
    assert_eq!(
        before.next(Duration::from_secs(5)),
        Next::Packet(Packet::PingResp),
        "a device logged in before the flood still works"
    );
    let rss_after = memory_kb(hub.pid, "VmRSS:");
    eprintln!(
        "flood from 256 addresses: {} connections opened in {flood_many:?}; 15/15 logins, slowest {slowest:?}; hub VmRSS {rss_before} -> {rss_after} kB",
        many.len()
    );
    drop(many);

    // Refusals are counted, not logged one by one: one line at the first refusal, then one
    // summary line per interval (1 s here, 10 s by default) with the counts.
    let sum = |log: &str, field: &str| -> usize {
        log.lines()
            .filter(|l| l.contains("connection limits in the last"))
            .filter_map(|l| l.split(&format!(" {field}=")).nth(1))
            .filter_map(|v| v.split(' ').next()?.parse::<usize>().ok())
            .sum()
    };
    let expected_refused = 256 - 16 - (256 - one_count);
    assert!(
        crate::support::wait_until(Duration::from_secs(4), || {
            let log = hub.log_text();
            sum(&log, "refused_per_source") == expected_refused && sum(&log, "evicted") >= 128
        }),
        "summary lines: {}",
        hub.log_text()
    );
    let log = hub.log_text();
    let refusal_lines = log.lines().filter(|l| l.contains("connection refused")).count();
    assert_eq!(refusal_lines, 1, "{log}");
    assert!(log.contains("further refusals are counted"), "{log}");
    let summaries = log
        .lines()
        .filter(|l| l.contains("connection limits in the last"))
        .count();
    eprintln!(
        "log: 1 refusal line and {summaries} summary lines for {expected_refused} refusals and {} evictions",
        sum(&log, "evicted")
    );
    assert!(summaries <= 8, "{log}");
}

#[test]
fn half_sent_large_connects_keep_memory_bounded() {
    let data = scratch("half-sent").join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let key = key_of(&hub.add_identity(DEVICE, Some(MODULE)));
    let rss_before = memory_kb(hub.pid, "VmRSS:");
    let start = Instant::now();
    // 250 CONNECTs announcing 327 KB (IoT Hub's largest packet) with 30 KB sent, from 250
    // addresses, and 250 more announcing 31 KB (under the CONNECT limit) with 30 KB sent.
    let mut held = Vec::new();
    for (n, announced) in (0..500u32).map(|n| (n, if n < 250 { 327_000 } else { 31_000 })) {
        let mut c = Client::open_from(hub.mqtt, loopback(n % 250), &hub.ca);
        let mut bytes = vec![0x10];
        let mut len: usize = announced;
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            bytes.push(byte);
            if len == 0 {
                break;
            }
        }
        bytes.extend(std::iter::repeat_n(b'x', 30_000));
        c.send_raw(&bytes);
        held.push(c);
    }
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = memory_kb(hub.pid, "VmRSS:");
    let hwm = memory_kb(hub.pid, "VmHWM:");
    eprintln!(
        "500 half-sent CONNECTs in {elapsed:?}: hub VmRSS {rss_before} -> {rss_after} kB, VmHWM {hwm} kB"
    );
    assert!(
        hwm < rss_before + 40 * 1024,
        "the hub's peak memory grew from {rss_before} kB to {hwm} kB"
    );
    // Devices still log in meanwhile.
    let (ok, _) = fifteen_logins(&hub, &key);
    assert_eq!(ok, 15);
    drop(held);
}

#[test]
fn the_api_wants_its_token_a_loopback_host_and_json() {
    let data = scratch("api-access").join("data");
    let hub = Hub::start_with(&data, "127.0.0.1:0", &["--api-host", "hub.example"]).expect("hub starts");
    let api = hub.api;
    let get = |host: &str, auth: &str| {
        raw_http(
            api,
            &format!("GET /v1/identities HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"),
        )
    };
    let bearer = format!("Authorization: Bearer {}\r\n", hub.token);
    // No token, a wrong token, a token in a cookie: 401, with the scheme named.
    let (status, answer) = get(&api.to_string(), "");
    assert_eq!(status, 401, "{answer}");
    // Header names are case-insensitive (hyper writes them in lower case).
    assert!(
        answer.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{answer}"
    );
    let wrong = format!("Authorization: Bearer {}\r\n", "A".repeat(43));
    assert_eq!(get(&api.to_string(), &wrong).0, 401);
    assert_eq!(
        get(&api.to_string(), &format!("Cookie: token={}\r\n", hub.token)).0,
        401
    );
    // DNS rebinding: the page's own name in Host.
    assert_eq!(get("evil.example.com", &bearer).0, 421);
    assert_eq!(get(&format!("evil.example.com:{}", api.port()), &bearer).0, 421);
    // Loopback names and the configured one.
    for host in [
        api.to_string(),
        format!("localhost:{}", api.port()),
        "[::1]".into(),
        "hub.example".into(),
    ] {
        assert_eq!(get(&host, &bearer).0, 200, "{host}");
    }
    // A cross-site form or fetch: text/plain, cookies, an Origin, no Authorization.
    let body = r#"{"deviceId":"csrf"}"#;
    let (status, _) = raw_http(
        api,
        &format!(
            "POST /v1/identities HTTP/1.1\r\nHost: {api}\r\nOrigin: http://evil.example.com\r\nCookie: session=x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 401);
    // Even with the token, a body must be JSON.
    let (status, _) = raw_http(
        api,
        &format!(
            "POST /v1/identities HTTP/1.1\r\nHost: {api}\r\n{bearer}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 415);
    assert_eq!(
        hub.api("GET", "/v1/identities/csrf", None).0,
        404,
        "no identity was created"
    );

    // The CLI reads the token; rotating it through the running hub locks out the old one.
    let shown = hub_cli(&data, &["token", "show"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), hub.token);
    let rotated = hub_cli(&data, &["token", "rotate"]);
    assert!(rotated.status.success(), "{rotated:?}");
    let new = String::from_utf8_lossy(&rotated.stdout).trim().to_owned();
    assert_ne!(new, hub.token);
    assert_eq!(
        get(&api.to_string(), &bearer).0,
        401,
        "the old token no longer works"
    );
    assert_eq!(
        get(&api.to_string(), &format!("Authorization: Bearer {new}\r\n")).0,
        200
    );
    let listed = hub_cli(&data, &["identity", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let mode = std::fs::metadata(data.join("api-token"))
        .expect("token file")
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn slow_api_clients_and_long_polls_do_not_block_the_api() {
    let data = scratch("api-slow").join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    // 40 long-polls waiting for messages that never come, then 40 clients that send one byte
    // and then nothing (a byte every 5 s would do the same).
    let mut polls = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(hub.api).expect("connect");
        let request = format!(
            "GET /v1/messages?after=0&waitMs=30000 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            hub.api, hub.token
        );
        s.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("poll {i}: {e}"));
        polls.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(hub.api).expect("connect");
        s.write_all(b"G").expect("write");
        slow.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(hub.api("GET", "/v1/status", None).0, 200);
    }
    let twenty = start.elapsed();
    eprintln!("20 API requests beside 40 slow clients and 40 long-polls: {twenty:?}");
    assert!(twenty < Duration::from_secs(5), "{twenty:?}");
    // Past the budget of 32 long-polls, each newer one ended the oldest wait early, with a
    // normal answer (an empty page the client asks again after).
    let mut ended = 0;
    for mut poll in polls {
        poll.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut answer = String::new();
        let _ = poll.read_to_string(&mut answer);
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
            assert!(answer.contains(r#""messages":[]"#), "{answer:?}");
            ended += 1;
        }
    }
    assert_eq!(ended, 40 - 32, "long-polls ended early");
    // Every slow client was closed: the oldest for newer connections, the rest with 408
    // when their 5 s were up.
    let start = Instant::now();
    let mut timed_out = 0;
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(7))).expect("timeout");
        let mut answer = String::new();
        let result = s.read_to_string(&mut answer);
        assert!(
            !matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a slow client still open after {:?}",
            start.elapsed()
        );
        timed_out += usize::from(answer.starts_with("HTTP/1.1 408"));
    }
    assert!(timed_out > 0, "no slow client got 408");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("metadata").mode() & 0o7777
}

#[test]
fn data_directory_modes_are_tightened_and_foreign_owners_refused() {
    let data = scratch("modes").join("data");
    let mut hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    hub.add_identity("d", None);
    hub.kill();
    // Loosen everything, as an old hub or a careless copy left it.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for name in ["hub.db", "hub.db-wal", "hub.db-shm", "api-token", "ca-key.pem"] {
        let path = data.join(name);
        assert!(path.exists(), "{name} exists after a run");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts again");
    assert_eq!(mode_of(&data), 0o700);
    for name in ["hub.db", "hub.db-wal", "hub.db-shm", "api-token", "ca-key.pem"] {
        assert_eq!(mode_of(&data.join(name)), 0o600, "{name}");
    }
    let log = hub.log_text();
    assert!(log.contains("had mode 0755: set to 0700"), "{log}");
    assert!(
        log.contains("hub.db-wal") && log.contains("had mode 0644: set to 0600"),
        "{log}"
    );
    drop(hub);

    let start_error = |data: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(["--service", "127.0.0.1:0"])
            .output()
            .expect("runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Group-writable: refused, naming the path and owner.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    let err = start_error(&data);
    assert!(
        err.contains(&data.display().to_string()) && err.contains("writable by group or others"),
        "{err}"
    );
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // A database that is a link to elsewhere: refused, not followed.
    let elsewhere = data.with_extension("elsewhere.db");
    std::fs::rename(data.join("hub.db"), &elsewhere).expect("move");
    std::os::unix::fs::symlink(&elsewhere, data.join("hub.db")).expect("symlink");
    let err = start_error(&data);
    assert!(err.contains("hub.db: is a symbolic link"), "{err}");
    std::fs::remove_file(data.join("hub.db")).expect("unlink");
    std::fs::rename(&elsewhere, data.join("hub.db")).expect("move back");
    // Owned by another user: refused (needs root to give it away).
    if twinguard_os::euid() != 0 {
        skip("not root: cannot give the data directory to another user");
        return;
    }
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).expect("chown");
    let err = start_error(&data);
    assert!(err.contains("is owned by uid 65534"), "{err}");
}

#[test]
fn refused_user_names_are_logged_without_their_signature() {
    let data = scratch("redact").join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let key = key_of(&hub.add_identity(DEVICE, Some(MODULE)));
    let token = sign(
        &format!("localhost/devices/{DEVICE}/modules/{MODULE}"),
        &key,
        unix_now() + 600,
    );
    let signature = token
        .split("sig=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("sig")
        .to_owned();
    // A client that put its token in the user name (wrong host, so refused).
    let mut c = Client::open(hub.mqtt, &hub.ca);
    let code = c.connect(
        &format!("{DEVICE}/{MODULE}"),
        &format!("otherhost/{DEVICE}/{MODULE}/?{token}"),
        &token,
        60,
    );
    assert_eq!(code, Some(ConnectReturnCode::NotAuthorized));
    assert!(crate::support::wait_until(Duration::from_secs(5), || hub
        .log_text()
        .contains("CONNECT refused")));
    let log = hub.log_text();
    assert!(!log.contains(&signature), "the signature is in the log: {log}");
    assert!(log.contains("sig=(removed)"), "{log}");
}

#[test]
fn devices_cannot_forge_the_hubs_system_properties() {
    let data = scratch("forge").join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let key = key_of(&hub.add_identity(DEVICE, Some(MODULE)));
    let (mut c, code) = login(&hub, &key, None, unix_now() + 600);
    assert_eq!(code, Some(ConnectReturnCode::Accepted));
    let topic = format!(
        "devices/{DEVICE}/modules/{MODULE}/messages/events/iothub-connection-device-id=someone-else&iothub-MessageType=Will&IOTHUB-connection-module-id=x&custom=1"
    );
    let id = c.publish(&topic, b"{}", QoS::AtLeastOnce).expect("id");
    assert_eq!(c.next(Duration::from_secs(5)), Next::Packet(Packet::PubAck(id)));
    let stored = hub.messages(DEVICE);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["properties"], json!({"custom": "1"}));
    assert_eq!(stored[0]["deviceId"], json!(DEVICE));
}

#[test]
fn sas_tokens_expiring_over_a_year_ahead_are_refused() {
    let data = scratch("sas-max").join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let key = key_of(&hub.add_identity(DEVICE, Some(MODULE)));
    let day = 24 * 3600;
    for (expiry, expected) in [
        (unix_now() + 364 * day, ConnectReturnCode::Accepted),
        (unix_now() + 366 * day, ConnectReturnCode::NotAuthorized),
        (u64::MAX, ConnectReturnCode::NotAuthorized),
    ] {
        let (_c, code) = login(&hub, &key, None, expiry);
        assert_eq!(code, Some(expected), "se={expiry}");
    }
}

#[test]
fn identity_out_never_follows_a_link() {
    let dir = scratch("out-link");
    let data = dir.join("data");
    let _hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("write");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let link = dir.join("dev.cs");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let out = hub_cli(
        &data,
        &["identity", "add", "d1", "--out", link.to_str().expect("utf8")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dev.cs: is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious\n");
    assert_eq!(mode_of(&victim), 0o644);
    // A FIFO is refused without blocking; an existing regular file becomes 0600.
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let out = hub_cli(
        &data,
        &["identity", "show", "d1", "--out", fifo.to_str().expect("utf8")],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
        "{out:?}"
    );
    let file = dir.join("plain.cs");
    std::fs::write(&file, "old, longer content than a connection string? no: shorter").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = hub_cli(
        &data,
        &["identity", "show", "d1", "--out", file.to_str().expect("utf8")],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode_of(&file), 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.starts_with("HostName=localhost;DeviceId=d1;") && text.ends_with('\n'),
        "{text}"
    );
}
