//! Console rules fired by a real agent (`twinguard run --iothub`) doing the real thing on this
//! machine, each with its near miss: a custom rules file (`serve --rules`, reloaded while
//! running); failed `su` attempts then a success (PAM); `useradd` (then `userdel`); a listener
//! opened after the first ListeningPorts snapshot; `nft flush ruleset` inside a network
//! namespace with an agent running in it. The agents report every second (set through the
//! twin), so each test takes seconds.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent::{agent_binary, Agent};
use crate::console::{cli_alerts, find};
use crate::support::{machine_wide, scratch, skip, wait_until, Hub, CONFIG_KEY, MODULE};

/// Desired properties for an agent that reports every second and snapshots every 2 s.
fn fast_twin() -> Value {
    json!({CONFIG_KEY: {
        "highPriorityMessageFrequency": {"value": "PT1S"},
        "lowPriorityMessageFrequency": {"value": "PT1S"},
        "snapshotFrequency": {"value": "PT2S"},
        "aggregationEnabledProcessCreate": {"value": false},
        "aggregationEnabledConnectionCreate": {"value": false},
    }})
}

fn context(hub: &Hub, agent: &Agent) -> String {
    format!(
        "\nhub log (tail):\n{}\nagent log (tail):\n{}",
        tail(&hub.log_text()),
        tail(&agent.log_text())
    )
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Starts an agent for `device` (through `prefix`, if any) and waits until it applied its
/// configuration and its first message is in.
fn start_agent(bin: &Path, dir: &Path, hub: &Hub, device: &str, prefix: &[&str]) -> Agent {
    let cs = hub.add_identity(device, Some(MODULE));
    hub.desired("PUT", device, MODULE, &fast_twin());
    let agent = Agent::start_via(prefix, bin, dir, hub, &cs, &[]);
    let synced = wait_until(Duration::from_secs(40), || {
        hub.twin(device, MODULE)["reported"]["twinguard"]["configurationStatus"] == json!("applied")
            && !hub.messages(device).is_empty()
    });
    assert!(synced, "the agent did not start{}", context(hub, &agent));
    agent
}

/// The events of `name` the hub stored for `device`.
fn events(hub: &Hub, device: &str, name: &str) -> Vec<Value> {
    hub.messages(device)
        .iter()
        .filter(|m| m["body"].is_object())
        .flat_map(|m| m["body"]["Events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["Name"] == json!(name))
        .collect()
}

fn keys_of(alerts: &[Value], rule: &str) -> Vec<String> {
    alerts
        .iter()
        .filter(|a| a["rule"] == json!(rule))
        .filter_map(|a| a["key"].as_str().map(str::to_owned))
        .collect()
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A file name unique to this test run.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

#[test]
fn a_custom_rules_file_raises_alerts_through_ingest_and_reloads() {
    let _one_at_a_time = machine_wide();
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    let dir = scratch("console-custom");
    let rules = dir.join("rules.toml");
    // Every device: programs from the usual places only. Devices tagged role=camera (ours is
    // not): no process at all, which would fire on anything - the near miss of tag matching.
    std::fs::write(
        &rules,
        r#"
[[groups]]
name = "everyone"
allow.processes = ["/usr/*", "/bin/*", "/sbin/*", "/lib*", "/opt/*", "/root/*", "/work/*", "/home/*", "/snap/*", "/etc/*", "/var/lib/*", "/proc/*", "/memfd:*"]

[[groups]]
name = "cameras"
match.tags = { role = "camera" }
ranges.processes = { max = 0 }
"#,
    )
    .expect("rules");
    let rules_arg = rules.to_string_lossy().into_owned();
    let hub = Hub::start_with(
        &dir.join("hub-data"),
        "127.0.0.1:0",
        &["--rules", &rules_arg, "--console-check-secs", "1"],
    )
    .expect("hub starts");
    let device = "dev-custom";
    let agent = start_agent(&bin, &dir, &hub, device, &[]);

    // A program copied out of the allowed places and run: not on the allow-list.
    let tmp = std::env::temp_dir().join(unique("tg-custom-"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let copied = tmp.join("tg-true");
    std::fs::copy("/bin/true", &copied).expect("copy");
    // The near miss: the same program where the allow-list allows it.
    assert!(run("/bin/true", &[]));
    assert!(run(&copied.to_string_lossy(), &[]));
    let key = format!("everyone/process/{}", copied.display());
    let data = dir.join("hub-data");
    let fired = wait_until(Duration::from_secs(40), || {
        keys_of(&cli_alerts(&data, device), "custom-not-allowed").contains(&key)
    });
    let alerts = cli_alerts(&data, device);
    assert!(fired, "{alerts:#?}{}", context(&hub, &agent));
    let alert = alerts.iter().find(|a| a["key"] == json!(key)).expect("alert");
    assert_eq!(alert["severity"], json!("medium"));
    assert_eq!(alert["evidence"]["fields"]["Group"], json!("everyone"));
    let not_allowed = keys_of(&alerts, "custom-not-allowed");
    assert!(
        !not_allowed
            .iter()
            .any(|k| k.ends_with("/bin/true") && !k.contains("tg-custom")),
        "the allowed /bin/true raised an alert: {not_allowed:?}"
    );
    assert!(
        !alerts
            .iter()
            .any(|a| a["key"].as_str().unwrap_or("").starts_with("cameras/")),
        "an untagged device is not a camera: {alerts:#?}"
    );

    // A bad edit: logged with its pointer, the rules in force stay (the copy still alerts
    // under the same group).
    std::fs::write(
        &rules,
        "[[groups]]\nname = \"everyone\"\nranges.cpu = { max = 1 }\n",
    )
    .expect("rules");
    let logged = wait_until(Duration::from_secs(10), || {
        hub.log_text().contains(
            "custom rules not reloaded (the last good ones stay): /groups/0/ranges/cpu: unknown count",
        )
    });
    assert!(logged, "{}", tail(&hub.log_text()));
    // Reloaded: a new group name, and /tmp no longer allowed under it only.
    std::fs::write(
        &rules,
        "[[groups]]\nname = \"reloaded\"\nallow.processes = [\"/usr/*\", \"/bin/*\", \"/sbin/*\", \"/lib*\", \"/opt/*\", \"/root/*\", \"/work/*\", \"/home/*\", \"/snap/*\", \"/etc/*\", \"/var/lib/*\", \"/proc/*\"]\n",
    )
    .expect("rules");
    assert!(wait_until(Duration::from_secs(10), || hub
        .log_text()
        .contains("custom rules reloaded")));
    assert!(run(&copied.to_string_lossy(), &[]));
    let key = format!("reloaded/process/{}", copied.display());
    let fired = wait_until(Duration::from_secs(40), || {
        keys_of(&cli_alerts(&data, device), "custom-not-allowed").contains(&key)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(fired, "{:#?}{}", cli_alerts(&data, device), context(&hub, &agent));

    // `rules validate` says the same as the hub's log, one line per error, exit 1.
    std::fs::write(
        &rules,
        "[[groups]]\nname = \"x\"\nwindowSeconds = 0\nallow.listeningPorts = [70000]\n",
    )
    .expect("rules");
    let out = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .args(["rules", "validate", &rules_arg])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        vec![
            format!("{rules_arg}: /groups/0/windowSeconds: expected an integer from 1 to 604800, got 0"),
            format!("{rules_arg}: /groups/0/allow/listeningPorts/0: expected a port 1-65535 or \"TCP/PORT\" / \"UDP/PORT\", got 70000"),
        ]
    );
    let schema = Command::new(env!("CARGO_BIN_EXE_twinguard-hub"))
        .args(["rules", "schema"])
        .output()
        .expect("runs");
    let schema: Value = serde_json::from_slice(&schema.stdout).expect("JSON");
    assert_eq!(schema["required"], json!(["groups"]));
}

/// `su` binaries and `runuser`, for PAM authentications as the agent's Login tests do.
fn su_tools() -> Option<(PathBuf, PathBuf)> {
    let first = |paths: &[&str]| paths.iter().map(PathBuf::from).find(|p| p.exists());
    Some((
        first(&["/usr/bin/su", "/bin/su"])?,
        first(&["/usr/sbin/runuser", "/sbin/runuser"])?,
    ))
}

/// One failed PAM authentication: nobody asking `su` for root's password with no terminal.
fn failed_su(su: &Path, runuser: &Path) {
    let _ = Command::new(runuser)
        .args(["-u", "nobody", "--"])
        .arg(su)
        .args(["root", "-c", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One successful one: root to root (pam_rootok).
fn good_su(su: &Path) {
    let _ = Command::new(su)
        .args(["root", "-c", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[test]
fn brute_force_by_su_a_user_added_and_a_new_listening_port() {
    let _one_at_a_time = machine_wide();
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    let Some((su, runuser)) = su_tools() else {
        return skip("needs su and runuser (util-linux) for PAM authentications");
    };
    let dir = scratch("console-realagent");
    let data = dir.join("hub-data");
    let hub = Hub::start_with(&data, "127.0.0.1:0", &["--console-check-secs", "1"]).expect("hub starts");
    let device = "dev-real";
    let agent = start_agent(&bin, &dir, &hub, device, &[]);

    // The Login collector joins audit when it starts: wait until a successful su is seen.
    let seen = wait_until(Duration::from_secs(30), || {
        good_su(&su);
        std::thread::sleep(Duration::from_millis(500));
        events(&hub, device, "Login")
            .iter()
            .flat_map(|e| e["Payload"].as_array().cloned().unwrap_or_default())
            .any(|p| p["Result"] == json!("Success") && p["UserName"] == json!("root"))
    });
    assert!(seen, "no Login event for su{}", context(&hub, &agent));

    // The near miss: four failures then a success is no brute force.
    for _ in 0..4 {
        failed_su(&su, &runuser);
    }
    std::thread::sleep(Duration::from_millis(1500));
    good_su(&su);
    let logins = || {
        events(&hub, device, "Login")
            .iter()
            .flat_map(|e| e["Payload"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["Result"] == json!("Fail"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || logins() >= 4),
        "the failures were not reported{}",
        context(&hub, &agent)
    );
    std::thread::sleep(Duration::from_secs(3));
    let alerts = cli_alerts(&data, device);
    assert!(
        find(&alerts, "successful-brute-force").is_none(),
        "four failures are not a brute force: {alerts:#?}"
    );

    // Five failures, then a success: a successful brute force, with six events as evidence.
    for _ in 0..5 {
        failed_su(&su, &runuser);
    }
    std::thread::sleep(Duration::from_millis(1500));
    good_su(&su);
    let fired = wait_until(Duration::from_secs(30), || {
        find(&cli_alerts(&data, device), "successful-brute-force").is_some()
    });
    let alerts = cli_alerts(&data, device);
    assert!(fired, "{alerts:#?}{}", context(&hub, &agent));
    let brute = find(&alerts, "successful-brute-force").expect("alert");
    assert_eq!(brute["key"], json!("root@local"), "{brute}");
    assert_eq!(brute["severity"], json!("high"));
    assert!(
        brute["evidence"]["eventIds"]
            .as_array()
            .is_some_and(|ids| ids.len() >= 6),
        "{brute}"
    );
    assert!(find(&alerts, "failed-brute-force").is_some(), "{alerts:#?}");

    // useradd (then userdel): user added; `useradd -D` (print the defaults) is the near miss.
    let user = unique("tgu");
    assert!(run("useradd", &["-D"]));
    assert!(
        run("useradd", &["-M", "-s", "/usr/sbin/nologin", &user]),
        "useradd {user}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let _ = run("userdel", &[&user]);
    let fired = wait_until(Duration::from_secs(30), || {
        keys_of(&cli_alerts(&data, device), "user-added").contains(&user)
    });
    let alerts = cli_alerts(&data, device);
    assert!(fired, "{alerts:#?}{}", context(&hub, &agent));
    assert_eq!(
        keys_of(&alerts, "user-added")
            .iter()
            .filter(|k| k.is_empty() || *k == "-D")
            .count(),
        0,
        "{alerts:#?}"
    );

    // A listener opened after the first ListeningPorts snapshot: a new listening port. The
    // hub's own MQTT port, listening since before, is the near miss.
    assert!(
        wait_until(Duration::from_secs(20), || !events(
            &hub,
            device,
            "ListeningPorts"
        )
        .is_empty()),
        "no ListeningPorts snapshot{}",
        context(&hub, &agent)
    );
    let listener = TcpListener::bind("0.0.0.0:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let key = format!("TCP/{port}");
    let fired = wait_until(Duration::from_secs(30), || {
        keys_of(&cli_alerts(&data, device), "new-listening-port").contains(&key)
    });
    let alerts = cli_alerts(&data, device);
    assert!(fired, "{alerts:#?}{}", context(&hub, &agent));
    assert!(
        !keys_of(&alerts, "new-listening-port").contains(&format!("TCP/{}", hub.mqtt.port())),
        "{alerts:#?}"
    );
    drop(listener);
}

/// A network namespace with a veth pair to the host, removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let net = pid % 250 + 2;
        let ns = Netns {
            name: format!("tgns{pid}"),
            host_if: format!("tgh{pid}"),
            host_ip: format!("10.213.{net}.1"),
        };
        let peer = format!("tgn{pid}");
        let ns_ip = format!("10.213.{net}.2/30");
        let host_cidr = format!("{}/30", ns.host_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns.name],
            vec!["link", "add", &ns.host_if, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", &ns.name],
            vec!["addr", "add", &host_cidr, "dev", &ns.host_if],
            vec!["link", "set", &ns.host_if, "up"],
            vec!["-n", &ns.name, "addr", "add", &ns_ip, "dev", &peer],
            vec!["-n", &ns.name, "link", "set", &peer, "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }

    fn nft(&self, args: &[&str]) -> bool {
        let mut all = vec!["netns", "exec", &self.name, "nft"];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

#[test]
fn nft_flush_in_a_network_namespace_disables_the_firewall() {
    let _one_at_a_time = machine_wide();
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(reason) => return skip(&reason),
    };
    if !Path::new("/usr/sbin/nft").exists() {
        return skip("needs nft (nftables)");
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(reason) => return skip(&format!("cannot create a network namespace: {reason}")),
    };
    // A firewall in the namespace: an input chain that drops something.
    assert!(ns.nft(&["add", "table", "inet", "tgtest"]));
    assert!(ns.nft(&[
        "add",
        "chain",
        "inet",
        "tgtest",
        "input",
        "{ type filter hook input priority 0 ; policy accept ; }"
    ]));
    assert!(ns.nft(&["add", "rule", "inet", "tgtest", "input", "tcp", "dport", "9", "drop"]));

    let dir = scratch("console-netns");
    let data = dir.join("hub-data");
    // The hub listens on the host end of the veth pair; the namespaced agent connects there.
    // Its certificate names that address (the agent checks the name it connects to).
    let hub = Hub::start_with(
        &data,
        &format!("{}:0", ns.host_ip),
        &["--console-check-secs", "1", "--hostname", &ns.host_ip],
    )
    .expect("hub starts");
    let device = "dev-netns";
    let prefix = ["ip", "netns", "exec", ns.name.as_str()];
    let agent = start_agent(&bin, &dir, &hub, device, &prefix);
    let with_rules = wait_until(Duration::from_secs(30), || {
        events(&hub, device, "FirewallConfiguration")
            .iter()
            .any(|e| e["Payload"].as_array().is_some_and(|p| !p.is_empty()))
    });
    assert!(
        with_rules,
        "no FirewallConfiguration with the namespace's rule{}",
        context(&hub, &agent)
    );

    // The near miss: listing the rules changes nothing.
    assert!(ns.nft(&["list", "ruleset"]));
    std::thread::sleep(Duration::from_secs(5));
    let alerts = cli_alerts(&data, device);
    assert!(find(&alerts, "firewall-disabled").is_none(), "{alerts:#?}");

    // Flushed: the command, and the namespace's next snapshot without rules.
    assert!(ns.nft(&["flush", "ruleset"]));
    let fired = wait_until(Duration::from_secs(30), || {
        let keys = keys_of(&cli_alerts(&data, device), "firewall-disabled");
        keys.contains(&"snapshot".to_owned()) && keys.contains(&"command".to_owned())
    });
    let alerts = cli_alerts(&data, device);
    assert!(fired, "{alerts:#?}{}", context(&hub, &agent));
    let snapshot = alerts
        .iter()
        .find(|a| a["rule"] == json!("firewall-disabled") && a["key"] == json!("snapshot"))
        .expect("alert");
    assert_eq!(snapshot["severity"], json!("high"));
    drop(agent);
}
