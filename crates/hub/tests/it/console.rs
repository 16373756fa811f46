//! The fleet console end to end: a real agent (`twinguard run --iothub`) on this machine does
//! real things - a shell that opens a TCP connection through bash's `/dev/tcp` (the reverse
//! shell's tell), a program copied to /tmp and run, an ordinary program (the near miss) - and
//! the alerts appear through the CLI and the API; they are acknowledged and closed there;
//! the agent stopped, the device is alerted as silent. On the way, the web console is loaded
//! in a real headless Chromium (`console_web.py`): every page at phone and desktop width, with
//! no console error, no failed request and no request elsewhere, an alert acknowledged through
//! its form; screenshots under `target/console-screenshots/`.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent::{agent_binary, Agent};
use crate::cli::{hub_cli, ok_stdout};
use crate::hardening::raw_http;
use crate::python::venv_python;
use crate::support::{
    machine_wide, repo_root, scratch, skip, target_dir, wait_until, Hub, CONFIG_KEY, MODULE,
};

/// The alerts the CLI prints for `device` (all states), by rule.
pub fn cli_alerts(data: &Path, device: &str) -> Vec<Value> {
    let out = ok_stdout(&hub_cli(
        data,
        &["alerts", "--device", device, "--state", "all"],
        None,
    ));
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The alert of `rule` whose key ends with `suffix` (other tests' programs may alert too).
fn find_key<'a>(alerts: &'a [Value], rule: &str, suffix: &str) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|a| a["rule"] == json!(rule) && a["key"].as_str().is_some_and(|k| k.ends_with(suffix)))
}

pub fn find<'a>(alerts: &'a [Value], rule: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["rule"] == json!(rule))
}

#[test]
fn a_real_agent_doing_real_things_raises_alerts() {
    let _one_at_a_time = machine_wide();
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    if !Path::new("/bin/bash").exists() {
        return skip("no /bin/bash for the /dev/tcp connection");
    }
    let dir = scratch("console-agent");
    let data = dir.join("hub-data");
    let hub = Hub::start_with(
        &data,
        "127.0.0.1:0",
        &["--silent-after-secs", "1", "--console-check-secs", "1"],
    )
    .expect("hub starts");
    let device = "dev-console";
    let cs = hub.add_identity(device, Some(MODULE));
    hub.desired(
        "PUT",
        device,
        MODULE,
        &json!({CONFIG_KEY: {
            "highPriorityMessageFrequency": {"value": "PT1S"},
            "lowPriorityMessageFrequency": {"value": "PT1S"},
            // Each process start is its own event (not one aggregate an hour later).
            "aggregationEnabledProcessCreate": {"value": false},
        }}),
    );
    let agent = Agent::start(&bin, &dir, &hub, &cs, &[]);
    let context = |hub: &Hub, agent: &Agent| {
        format!("\nhub log:\n{}\nagent log:\n{}", hub.log_text(), agent.log_text())
    };
    let synced = wait_until(Duration::from_secs(30), || {
        hub.twin(device, MODULE)["reported"]["twinguard"]["configurationStatus"] == json!("applied")
    });
    assert!(
        synced,
        "the agent did not apply its configuration{}",
        context(&hub, &agent)
    );
    // Let the process source settle before acting (it is running once the first message is in).
    assert!(wait_until(Duration::from_secs(30), || !hub
        .messages(device)
        .is_empty()));

    // The near miss: an ordinary program with an ordinary command line.
    let status = Command::new("/bin/sh")
        .args(["-c", "sleep 2"])
        .status()
        .expect("sh runs");
    assert!(status.success());
    // The reverse shell's tell: bash with a socket opened through /dev/tcp to a listener here.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let status = Command::new("/bin/bash")
        .args(["-c", &format!("exec 5<>/dev/tcp/127.0.0.1/{port}; sleep 2")])
        .status()
        .expect("bash runs");
    assert!(status.success());
    // A program copied to /tmp and run from there.
    let tmp = std::env::temp_dir().join(format!("twinguard-console-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let copied = tmp.join("tg-sleep");
    std::fs::copy("/bin/sleep", &copied).expect("copy sleep");
    let status = Command::new(&copied)
        .arg("2")
        .status()
        .expect("copied program runs");
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(status.success());

    let fired = wait_until(Duration::from_secs(40), || {
        let alerts = cli_alerts(&data, device);
        find(&alerts, "reverse-shell").is_some()
            && find_key(&alerts, "temp-dir-execution", "/tg-sleep").is_some()
    });
    let alerts = cli_alerts(&data, device);
    assert!(fired, "alerts: {alerts:#?}{}", context(&hub, &agent));
    let reverse = find(&alerts, "reverse-shell").expect("reverse shell");
    assert_eq!(reverse["severity"], json!("high"));
    assert_eq!(reverse["state"], json!("open"));
    assert_eq!(reverse["deviceId"], json!(device));
    assert_eq!(reverse["moduleId"], json!(MODULE));
    let command_line = reverse["evidence"]["fields"]["CommandLine"]
        .as_str()
        .unwrap_or("");
    assert!(
        command_line.contains(&format!("/dev/tcp/127.0.0.1/{port}")),
        "{reverse}"
    );
    assert_eq!(
        reverse["evidence"]["eventIds"].as_array().map(Vec::len),
        Some(1),
        "{reverse}"
    );
    assert!(!reverse["remediation"].as_str().unwrap_or("").is_empty());
    let temp = find_key(&alerts, "temp-dir-execution", "/tg-sleep").expect("temp dir");
    assert!(
        temp["key"].as_str().unwrap_or("").ends_with("/tg-sleep"),
        "{temp}"
    );
    // The near miss raised nothing of ours: no alert names `sleep 2` run by /bin/sh.
    assert!(
        !alerts.iter().any(
            |a| a["evidence"]["fields"]["CommandLine"] == json!("/bin/sh -c sleep 2")
                || a["evidence"]["fields"]["CommandLine"] == json!("sh -c sleep 2")
        ),
        "{alerts:#?}"
    );
    // The typed rows are there: the device page's events come from them.
    let (status, api_alerts) = hub.api("GET", &format!("/v1/alerts?device={device}&severity=high"), None);
    assert_eq!(status, 200, "{api_alerts}");
    assert!(api_alerts
        .as_array()
        .is_some_and(|l| l.iter().all(|a| a["severity"] == json!("high"))));
    assert!(api_alerts
        .as_array()
        .is_some_and(|l| l.iter().any(|a| a["id"] == reverse["id"])));

    // The web pages in a real browser, with this device, its alerts and its configuration.
    let temp_id = temp["id"].as_i64().expect("id");
    browser_check(&hub, device, temp_id);

    // State changes: ack by the CLI, close by the API; a closed alert cannot be acknowledged.
    let id = reverse["id"].as_i64().expect("id").to_string();
    let acked: Value =
        serde_json::from_str(ok_stdout(&hub_cli(&data, &["alerts", "ack", &id], None)).trim()).expect("JSON");
    assert_eq!(acked["state"], json!("acknowledged"));
    let (status, closed) = hub.api("POST", &format!("/v1/alerts/{id}/close"), None);
    assert_eq!((status, &closed["state"]), (200, &json!("closed")), "{closed}");
    let (status, _) = hub.api("POST", &format!("/v1/alerts/{id}/ack"), None);
    assert_eq!(status, 409);
    let (status, _) = hub.api("POST", "/v1/alerts/999999/ack", None);
    assert_eq!(status, 404);
    let open = ok_stdout(&hub_cli(&data, &["alerts", "--device", device], None));
    assert!(
        !open.contains(&format!("\"id\":{id},")),
        "closed alerts are not listed by default: {open}"
    );
    let out = hub_cli(&data, &["alerts", "--severity", "urgent"], None);
    assert!(!out.status.success(), "a bad severity is refused");

    // Recommendations: the CLI prints what the API has, as JSON lines.
    let (status, recs) = hub.api("GET", &format!("/v1/recommendations?device={device}"), None);
    assert_eq!(status, 200, "{recs}");
    let printed = ok_stdout(&hub_cli(&data, &["recommendations", "--device", device], None));
    assert_eq!(
        printed.lines().count(),
        recs.as_array().map_or(0, Vec::len),
        "{printed}"
    );

    // The agent stopped: not connected and quiet past twice its PT1S: silent.
    drop(agent);
    let silent = wait_until(Duration::from_secs(30), || {
        find(&cli_alerts(&data, device), "device-silent").is_some()
    });
    assert!(silent, "no device-silent alert\nhub log:\n{}", hub.log_text());
}

/// Runs `console_web.py` against the hub's web console: `alert` is acknowledged through the
/// alerts page.
fn browser_check(hub: &Hub, device: &str, alert: i64) {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).exists() {
            return skip(&format!(
                "{tool} is missing (Debian: apt-get install chromium chromium-driver)"
            ));
        }
    }
    let python = match venv_python() {
        Ok(p) => p,
        Err(reason) => return skip(&reason),
    };
    let before = hub.twin(device, MODULE)["desired"]["$version"]
        .as_i64()
        .expect("version");
    let shots = target_dir().join("console-screenshots");
    let script = repo_root().join("crates/hub/tests/it/console_web.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("http://{}", hub.api))
        .arg(&hub.token)
        .arg(format!("/devices/{device}/modules/{MODULE}"))
        .arg(alert.to_string())
        .arg(&shots)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("the script prints JSON");
    for shot in result["screenshots"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        eprintln!("console screenshot: {}", shot.as_str().unwrap_or(""));
    }
    assert!(
        result["screenshots"].as_array().is_some_and(|s| s.len() >= 10),
        "{result}"
    );
    // The editor: the invalid document saved nothing (one new desired version, the valid
    // one), and the valid one reached the agent, which reports it.
    let twin = hub.twin(device, MODULE);
    assert_eq!(twin["desired"]["$version"], json!(before + 1), "{twin}");
    assert_eq!(
        twin["desired"][CONFIG_KEY]["snapshotFrequency"]["value"],
        json!("PT7H"),
        "{twin}"
    );
    let applied = wait_until(Duration::from_secs(30), || {
        let reported = &hub.twin(device, MODULE)["reported"];
        reported[CONFIG_KEY]["snapshotFrequency"]["value"] == json!("PT7H")
            && reported["twinguard"]["configurationStatus"] == json!("applied")
    });
    assert!(
        applied,
        "the agent does not report PT7H: {}",
        hub.twin(device, MODULE)
    );
}

/// A web request with a form body (empty: none) and extra header lines.
pub fn web(hub: &Hub, method: &str, path: &str, headers: &str, form: &str) -> (u16, String) {
    let api = hub.api;
    let body = if form.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    let request = if body.is_empty() {
        format!("{method} {path} HTTP/1.1\r\nHost: {api}\r\n{headers}Connection: close\r\n\r\n")
    } else {
        format!("{method} {path} HTTP/1.1\r\nHost: {api}\r\n{headers}Connection: close\r\n{body}")
    };
    raw_http(api, &request)
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.split("\r\n\r\n").next()?.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

/// Logs in; returns the `Cookie:` header line and the page's CSRF token.
pub fn log_in(hub: &Hub) -> (String, String) {
    let (status, answer) = web(hub, "POST", "/login", "", &format!("token={}", hub.token));
    assert_eq!(status, 303, "{answer}");
    let cookie = header(&answer, "set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value");
    let cookie_line = format!("Cookie: {pair}\r\n");
    let (status, page) = web(hub, "GET", "/", &cookie_line, "");
    assert_eq!(status, 200, "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();
    (cookie_line, csrf)
}

#[test]
fn the_web_console_needs_a_session_and_a_csrf_token() {
    let dir = scratch("console-web-access");
    let data = dir.join("data");
    let hub = Hub::start(&data, "127.0.0.1:0").expect("hub starts");

    // Without a session: the login page; a foreign Host: 421 (DNS rebinding).
    let (status, answer) = web(&hub, "GET", "/", "", "");
    assert_eq!(
        (status, header(&answer, "location")),
        (303, Some("/login")),
        "{answer}"
    );
    let (status, answer) = web(&hub, "GET", "/login", "", "");
    assert_eq!(status, 200);
    let csp = header(&answer, "content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    let rebound = raw_http(
        hub.api,
        "GET /login HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(rebound.0, 421);
    // A wrong token, or the right one posted from another site: no session.
    let (status, answer) = web(&hub, "POST", "/login", "", "token=wrong");
    assert_eq!(status, 401);
    assert!(header(&answer, "set-cookie").is_none());
    let (status, answer) = web(
        &hub,
        "POST",
        "/login",
        "Origin: http://evil.example\r\n",
        &format!("token={}", hub.token),
    );
    assert_eq!(status, 403);
    assert!(header(&answer, "set-cookie").is_none());

    let (cookie, csrf) = log_in(&hub);
    // The cookie is not a way into the JSON API, which still wants the bearer token.
    assert_eq!(web(&hub, "GET", "/v1/alerts", &cookie, "").0, 401);
    // State changes need the CSRF token and, when the browser sends one, our Origin.
    assert_eq!(web(&hub, "POST", "/alerts/1/ack", &cookie, "back=%2F").0, 403);
    assert_eq!(web(&hub, "POST", "/alerts/1/ack", &cookie, "csrf=wrong").0, 403);
    let evil = format!("{cookie}Origin: http://evil.example\r\n");
    assert_eq!(
        web(&hub, "POST", "/alerts/1/ack", &evil, &format!("csrf={csrf}")).0,
        403
    );
    assert_eq!(
        web(&hub, "POST", "/alerts/1/ack", &cookie, &format!("csrf={csrf}")).0,
        404,
        "no such alert"
    );
    assert_eq!(web(&hub, "GET", "/devices/nobody", &cookie, "").0, 404);
    assert_eq!(web(&hub, "GET", "/console.css", &cookie, "").0, 200);

    // The configuration editor: CSRF-protected, checked as the agent checks, etag-guarded.
    hub.add_identity("dev-editor", Some(MODULE));
    let page_path = format!("/devices/dev-editor/modules/{MODULE}");
    let action = format!("{page_path}/configuration");
    let (status, page) = web(&hub, "GET", &page_path, &cookie, "");
    assert_eq!(status, 200, "{page}");
    let etag = page
        .split("name=\"etag\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the editor's etag")
        .to_owned();
    let version = || hub.twin("dev-editor", MODULE)["desired"]["$version"].clone();
    let before = version();
    let config = |text: &str| {
        let mut encoded = String::new();
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() {
                encoded.push(char::from(b));
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        encoded
    };
    let good = config(r#"{"highPriorityMessageFrequency": {"value": "PT3M"}}"#);
    assert_eq!(
        web(
            &hub,
            "POST",
            &action,
            &cookie,
            &format!("etag={etag}&config={good}")
        )
        .0,
        403,
        "no CSRF token"
    );
    let bad = config(r#"{"highPriorityMessageFrequency": {"value": "3 minutes"}}"#);
    let (status, answer) = web(
        &hub,
        "POST",
        &action,
        &cookie,
        &format!("csrf={csrf}&etag={etag}&config={bad}"),
    );
    assert_eq!(status, 200);
    assert!(
        answer.contains("Not saved") && answer.contains("highPriorityMessageFrequency/value"),
        "{answer}"
    );
    assert_eq!(version(), before, "an invalid document saves nothing");
    let (status, answer) = web(
        &hub,
        "POST",
        &action,
        &cookie,
        &format!("csrf={csrf}&etag=%22stale%22&config={good}"),
    );
    assert_eq!(status, 200);
    assert!(answer.contains("the twin changed since"), "{answer}");
    let (_, answer) = web(
        &hub,
        "POST",
        &action,
        &cookie,
        &format!("csrf={csrf}&config={good}"),
    );
    assert!(answer.contains("the twin changed since"), "no etag: {answer}");
    assert_eq!(version(), before, "a stale or missing etag saves nothing");
    let (status, answer) = web(
        &hub,
        "POST",
        &action,
        &cookie,
        &format!("csrf={csrf}&etag={etag}&config={good}"),
    );
    assert_eq!(status, 303, "{answer}");
    let twin = hub.twin("dev-editor", MODULE);
    assert_eq!(
        twin["desired"][CONFIG_KEY]["highPriorityMessageFrequency"]["value"],
        json!("PT3M"),
        "{twin}"
    );

    // Logging out ends the session.
    let (status, _) = web(&hub, "POST", "/logout", &cookie, &format!("csrf={csrf}"));
    assert_eq!(status, 303);
    assert_eq!(web(&hub, "GET", "/", &cookie, "").0, 303);
    // Rotating the API token ends every session.
    let (cookie, _) = log_in(&hub);
    let rotated = hub_cli(&data, &["token", "rotate"], None);
    assert!(rotated.status.success());
    let (status, answer) = web(&hub, "GET", "/alerts", &cookie, "");
    assert_eq!((status, header(&answer, "location")), (303, Some("/login")));
}
