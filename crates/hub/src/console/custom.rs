//! Custom rules, in the spirit of Defender for IoT's customizable alerts: per device group
//! (devices whose twin tags match), allowed ranges for counts in a window (failed logins,
//! connections, processes) and allow-lists (processes, remote addresses, listening ports).
//! Declared in a TOML or JSON file (`serve --rules FILE`), checked by [`parse`] with one
//! [`RuleError`] per problem, each naming its place as a JSON pointer; [`schema`] is the
//! published JSON Schema of the same format. Evaluated by [`CustomState`] inside the rule
//! engine with the event's own time. Pure: the file is read, and watched, by the IO layer.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::finding::{Finding, Rule};
use super::model::{Event, LoginResult, PayloadItem};

/// Most groups in a file.
pub const MAX_GROUPS: usize = 256;
/// Most entries in one allow-list.
pub const MAX_LIST: usize = 1024;
/// Longest window, seconds (a week).
pub const MAX_WINDOW_SECS: i64 = 7 * 24 * 3600;
/// The window when a group names none, seconds.
pub const DEFAULT_WINDOW_SECS: i64 = 300;

/// A count a range applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Login items with result Fail.
    FailedLogins,
    /// ConnectionCreate items (an aggregated item counts its `HitCount`).
    Connections,
    /// ProcessCreate items.
    Processes,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 3] = [Metric::FailedLogins, Metric::Connections, Metric::Processes];

    /// Its key in the file.
    pub fn key(self) -> &'static str {
        match self {
            Metric::FailedLogins => "failedLogins",
            Metric::Connections => "connections",
            Metric::Processes => "processes",
        }
    }

    fn index(self) -> usize {
        match self {
            Metric::FailedLogins => 0,
            Metric::Connections => 1,
            Metric::Processes => 2,
        }
    }
}

/// An allowed range; either bound may be open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Fewer than this in a window is out of range.
    pub min: Option<u64>,
    /// More than this in a window is out of range.
    pub max: Option<u64>,
}

/// An allowed remote network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An allowed listening port: a port, of one protocol or of any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `TCP`, `UDP`, or `None` for either.
    pub protocol: Option<String>,
    /// The port.
    pub port: u16,
}

/// One device group with its ranges and allow-lists.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Its name (unique in the file; part of every alert key).
    pub name: String,
    /// Tags a device's twin must all carry with these values (none: every device).
    pub tags: Map<String, Value>,
    /// The counting window, milliseconds.
    pub window_ms: i64,
    /// Allowed ranges by metric.
    pub ranges: Vec<(Metric, Range)>,
    /// Allowed executables (exact paths, or with `*` wildcards); `None`: not checked.
    pub processes: Option<Vec<String>>,
    /// Allowed remote addresses of connections; `None`: not checked.
    pub remote_addresses: Option<Vec<Net>>,
    /// Allowed listening ports; `None`: not checked.
    pub listening_ports: Option<Vec<PortSpec>>,
}

impl Group {
    /// Whether a device with twin `tags` belongs to this group.
    pub fn matches(&self, tags: &Map<String, Value>) -> bool {
        self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// A rules file, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CustomRules {
    /// Its groups, in file order.
    pub groups: Vec<Group>,
}

impl CustomRules {
    /// Whether any group depends on tags (so the caller must look them up).
    pub fn needs_tags(&self) -> bool {
        self.groups.iter().any(|g| !g.tags.is_empty())
    }
}

/// One problem of a rules file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// Where: a JSON pointer (`/groups/0/ranges/failedLogins/max`), or `line N column M` for a
    /// syntax error.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// The file's syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

impl Format {
    /// `.toml` files are TOML, others JSON.
    pub fn of_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("toml") => Format::Toml,
            _ => Format::Json,
        }
    }
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Reads and checks a rules file's text: the rules, or every problem found.
pub fn parse(text: &str, format: Format) -> Result<CustomRules, Vec<RuleError>> {
    let value: Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| {
            vec![RuleError {
                at: format!("line {} column {}", e.line(), e.column()),
                message: format!("not JSON: {e}")
                    .split(" at line ")
                    .next()
                    .unwrap_or("not JSON")
                    .to_owned(),
            }]
        })?,
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| {
                let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
                vec![RuleError {
                    at: format!("line {line} column {col}"),
                    message: format!("not TOML: {}", e.message().trim().replace('\n', " ")),
                }]
            })?;
            serde_json::to_value(table).map_err(|e| {
                vec![RuleError {
                    at: "/".into(),
                    message: format!("not representable as JSON: {e}"),
                }]
            })?
        }
    };
    check(&value)
}

/// Checks a rules document (already JSON).
pub fn check(value: &Value) -> Result<CustomRules, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut err = |at: String, message: String| errors.push(RuleError { at, message });
    let Some(top) = value.as_object() else {
        err("/".into(), "expected an object with a \"groups\" array".into());
        return Err(errors);
    };
    for key in top.keys() {
        if key != "groups" && key != "$schema" {
            err(
                format!("/{}", escape(key)),
                "unknown key (expected groups)".into(),
            );
        }
    }
    let mut groups = Vec::new();
    match top.get("groups") {
        None => err("/groups".into(), "missing (an array of groups)".into()),
        Some(Value::Array(list)) => {
            if list.len() > MAX_GROUPS {
                err(
                    "/groups".into(),
                    format!("{} groups, at most {MAX_GROUPS}", list.len()),
                );
            }
            for (i, g) in list.iter().enumerate().take(MAX_GROUPS) {
                if let Some(group) = check_group(&format!("/groups/{i}"), g, &mut err) {
                    if groups.iter().any(|o: &Group| o.name == group.name) {
                        err(
                            format!("/groups/{i}/name"),
                            format!("{:?} names an earlier group too", group.name),
                        );
                    }
                    groups.push(group);
                }
            }
        }
        Some(_) => err("/groups".into(), "expected an array".into()),
    }
    if errors.is_empty() {
        Ok(CustomRules { groups })
    } else {
        Err(errors)
    }
}

/// A JSON pointer token.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn check_group(at: &str, g: &Value, err: &mut impl FnMut(String, String)) -> Option<Group> {
    let Some(obj) = g.as_object() else {
        err(at.into(), "expected an object".into());
        return None;
    };
    let mut failed = false;
    let mut e = |p: String, m: String| {
        failed = true;
        err(p, m);
    };
    for key in obj.keys() {
        if !["name", "match", "windowSeconds", "ranges", "allow"].contains(&key.as_str()) {
            e(
                format!("{at}/{}", escape(key)),
                "unknown key (expected name, match, windowSeconds, ranges, allow)".into(),
            );
        }
    }
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 64 => s.clone(),
        Some(Value::String(_)) => {
            e(format!("{at}/name"), "expected 1 to 64 characters".into());
            String::new()
        }
        Some(_) => {
            e(format!("{at}/name"), "expected a string".into());
            String::new()
        }
        None => {
            e(format!("{at}/name"), "missing (the group's name)".into());
            String::new()
        }
    };
    let mut tags = Map::new();
    match obj.get("match") {
        None => {}
        Some(Value::Object(m)) => {
            for key in m.keys() {
                if key != "tags" {
                    e(
                        format!("{at}/match/{}", escape(key)),
                        "unknown key (expected tags)".into(),
                    );
                }
            }
            match m.get("tags") {
                None => {}
                Some(Value::Object(t)) => {
                    for (k, v) in t {
                        if v.is_object() || v.is_array() || v.is_null() {
                            e(
                                format!("{at}/match/tags/{}", escape(k)),
                                "expected a string, number or boolean tag value".into(),
                            );
                        } else {
                            tags.insert(k.clone(), v.clone());
                        }
                    }
                }
                Some(_) => e(
                    format!("{at}/match/tags"),
                    "expected an object of tag values".into(),
                ),
            }
        }
        Some(_) => e(format!("{at}/match"), "expected an object".into()),
    }
    let window_secs = match obj.get("windowSeconds") {
        None => DEFAULT_WINDOW_SECS,
        Some(v) => match v.as_i64() {
            Some(n) if (1..=MAX_WINDOW_SECS).contains(&n) => n,
            _ => {
                e(
                    format!("{at}/windowSeconds"),
                    format!("expected an integer from 1 to {MAX_WINDOW_SECS}, got {v}"),
                );
                DEFAULT_WINDOW_SECS
            }
        },
    };
    let mut ranges = Vec::new();
    match obj.get("ranges") {
        None => {}
        Some(Value::Object(r)) => {
            for (key, range) in r {
                let here = format!("{at}/ranges/{}", escape(key));
                let Some(metric) = Metric::ALL.into_iter().find(|m| m.key() == key) else {
                    e(
                        here,
                        "unknown count (expected failedLogins, connections, processes)".into(),
                    );
                    continue;
                };
                let Some(bounds) = range.as_object() else {
                    e(here, "expected an object with min and/or max".into());
                    continue;
                };
                let mut bound = |name: &str| match bounds.get(name) {
                    None => None,
                    Some(v) => match v.as_u64() {
                        Some(n) => Some(n),
                        None => {
                            e(
                                format!("{here}/{name}"),
                                format!("expected a whole number >= 0, got {v}"),
                            );
                            None
                        }
                    },
                };
                let (min, max) = (bound("min"), bound("max"));
                for key in bounds.keys() {
                    if key != "min" && key != "max" {
                        e(
                            format!("{here}/{}", escape(key)),
                            "unknown key (expected min, max)".into(),
                        );
                    }
                }
                if !bounds.contains_key("min") && !bounds.contains_key("max") {
                    e(here.clone(), "expected min and/or max".into());
                }
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        e(format!("{here}/min"), format!("min {lo} is above max {hi}"));
                    }
                }
                ranges.push((metric, Range { min, max }));
            }
        }
        Some(_) => e(format!("{at}/ranges"), "expected an object".into()),
    }
    let (mut processes, mut remote_addresses, mut listening_ports) = (None, None, None);
    match obj.get("allow") {
        None => {}
        Some(Value::Object(a)) => {
            for (key, list) in a {
                let here = format!("{at}/allow/{}", escape(key));
                let Some(items) = list.as_array() else {
                    e(here, "expected an array".into());
                    continue;
                };
                if items.len() > MAX_LIST {
                    e(
                        here.clone(),
                        format!("{} entries, at most {MAX_LIST}", items.len()),
                    );
                }
                match key.as_str() {
                    "processes" => {
                        let mut out = Vec::new();
                        for (i, v) in items.iter().enumerate() {
                            match v.as_str() {
                                Some(p) if p.starts_with('/') || p.starts_with('*') => out.push(p.to_owned()),
                                _ => e(
                                    format!("{here}/{i}"),
                                    format!(
                                        "expected an absolute executable path (with * wildcards), got {v}"
                                    ),
                                ),
                            }
                        }
                        processes = Some(out);
                    }
                    "remoteAddresses" => {
                        let mut out = Vec::new();
                        for (i, v) in items.iter().enumerate() {
                            match v.as_str().and_then(parse_net) {
                                Some(n) => out.push(n),
                                None => e(
                                    format!("{here}/{i}"),
                                    format!("expected an IP address or CIDR network (10.0.0.0/8, fd00::/8), got {v}"),
                                ),
                            }
                        }
                        remote_addresses = Some(out);
                    }
                    "listeningPorts" => {
                        let mut out = Vec::new();
                        for (i, v) in items.iter().enumerate() {
                            match parse_port(v) {
                                Some(p) => out.push(p),
                                None => e(
                                    format!("{here}/{i}"),
                                    format!(
                                        "expected a port 1-65535 or \"TCP/PORT\" / \"UDP/PORT\", got {v}"
                                    ),
                                ),
                            }
                        }
                        listening_ports = Some(out);
                    }
                    _ => e(
                        here,
                        "unknown allow-list (expected processes, remoteAddresses, listeningPorts)".into(),
                    ),
                }
            }
        }
        Some(_) => e(format!("{at}/allow"), "expected an object".into()),
    }
    (!failed).then_some(Group {
        name,
        tags,
        window_ms: window_secs * 1000,
        ranges,
        processes,
        remote_addresses,
        listening_ports,
    })
}

fn parse_net(text: &str) -> Option<Net> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(full);
    (prefix <= full).then_some(Net { addr, prefix })
}

fn parse_port(v: &Value) -> Option<PortSpec> {
    let (protocol, port) = match v {
        Value::Number(n) => (None, n.as_u64()?),
        Value::String(s) => {
            let (proto, port) = s.split_once('/')?;
            let proto = proto.to_ascii_uppercase();
            if proto != "TCP" && proto != "UDP" {
                return None;
            }
            (Some(proto), port.parse::<u64>().ok()?)
        }
        _ => return None,
    };
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    Some(PortSpec { protocol, port })
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The published JSON Schema of a rules file (`twinguard-hub rules schema`).
pub fn schema() -> Value {
    let range = json!({
        "type": "object",
        "additionalProperties": false,
        "minProperties": 1,
        "properties": {
            "min": {"type": "integer", "minimum": 0, "description": "fewer in a window is an alert (checked when the window ends)"},
            "max": {"type": "integer", "minimum": 0, "description": "more in a window is an alert (at once)"}
        }
    });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://twinguard.invalid/schemas/hub-rules.json",
        "title": "twinguard-hub custom rules",
        "description": "Allowed ranges and allow-lists per device group (serve --rules FILE, TOML or JSON). A device belongs to every group whose tags it carries.",
        "type": "object",
        "additionalProperties": false,
        "required": ["groups"],
        "properties": {
            "$schema": {"type": "string"},
            "groups": {
                "type": "array",
                "maxItems": MAX_GROUPS,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 64, "description": "unique; part of each alert's key"},
                        "match": {
                            "type": "object",
                            "additionalProperties": false,
                            "properties": {
                                "tags": {
                                    "type": "object",
                                    "description": "twin tags the device must carry with these values (top-level tags); none: every device",
                                    "additionalProperties": {"type": ["string", "number", "boolean"]}
                                }
                            }
                        },
                        "windowSeconds": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_SECS, "default": DEFAULT_WINDOW_SECS},
                        "ranges": {
                            "type": "object",
                            "additionalProperties": false,
                            "properties": {
                                "failedLogins": range.clone(),
                                "connections": range.clone(),
                                "processes": range
                            }
                        },
                        "allow": {
                            "type": "object",
                            "additionalProperties": false,
                            "properties": {
                                "processes": {"type": "array", "maxItems": MAX_LIST, "items": {"type": "string", "pattern": "^[/*]", "description": "an executable path; * matches any characters"}},
                                "remoteAddresses": {"type": "array", "maxItems": MAX_LIST, "items": {"type": "string", "description": "an IP address or a CIDR network"}},
                                "listeningPorts": {"type": "array", "maxItems": MAX_LIST, "items": {
                                    "oneOf": [
                                        {"type": "integer", "minimum": 1, "maximum": 65535},
                                        {"type": "string", "pattern": "^(?i:tcp|udp)/[0-9]{1,5}$"}
                                    ]
                                }}
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Most devices x groups whose windows are tracked; past it, new ones are not counted.
pub const MAX_TRACKED: usize = 65_536;

/// One device's counts in one group's current window.
#[derive(Clone, Debug, Default)]
struct Window {
    /// The window's number (its start / its length).
    index: i64,
    counts: [u64; 3],
    /// Whether the max of a metric already fired in this window.
    over: [bool; 3],
    /// Event ids that counted, newest kept (evidence).
    events: VecDeque<String>,
}

/// Event ids an out-of-range finding cites at most.
const MAX_EVIDENCE: usize = 10;

/// The custom rules in force and their per-device windows.
#[derive(Debug, Default)]
pub struct CustomState {
    rules: CustomRules,
    windows: HashMap<(String, usize), Window>,
}

impl CustomState {
    /// Replaces the rules (the windows start over).
    pub fn set(&mut self, rules: CustomRules) {
        self.rules = rules;
        self.windows.clear();
    }

    /// The rules in force.
    pub fn rules(&self) -> &CustomRules {
        &self.rules
    }

    /// The findings of one event of `device`, whose twin carries `tags`.
    pub fn observe(&mut self, device: &str, tags: &Map<String, Value>, event: &Event) -> Vec<Finding> {
        let mut out = Vec::new();
        if self.rules.groups.is_empty() {
            return out;
        }
        let time_ms = event.time().millis_since_epoch();
        let id = event.id().to_string();
        for (gi, group) in self.rules.groups.iter().enumerate() {
            if !group.matches(tags) {
                continue;
            }
            let finding = |key: String, fields: Vec<(&str, String)>| Finding {
                rule: Rule::CustomNotAllowed,
                key: format!("{}/{key}", group.name),
                time_ms,
                event_ids: vec![id.clone()],
                fields: [("Group", group.name.clone())]
                    .into_iter()
                    .chain(fields)
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            };
            let mut add = [0u64; 3];
            for item in event.payload() {
                match item {
                    PayloadItem::ProcessCreate(p) => {
                        add[Metric::Processes.index()] += 1;
                        if let Some(allowed) = &group.processes {
                            if !allowed.iter().any(|pat| glob(pat, &p.executable)) {
                                out.push(finding(
                                    format!("process/{}", p.executable),
                                    vec![
                                        ("Executable", p.executable.clone()),
                                        ("CommandLine", p.command_line.clone()),
                                    ],
                                ));
                            }
                        }
                    }
                    PayloadItem::ConnectionCreate(c) => {
                        let hits = c
                            .extra_details
                            .get("HitCount")
                            .and_then(|h| h.parse::<u64>().ok())
                            .unwrap_or(1);
                        add[Metric::Connections.index()] += hits;
                        if let Some(allowed) = &group.remote_addresses {
                            if !allowed.iter().any(|n| n.contains(c.remote_address)) {
                                out.push(finding(
                                    format!("remote/{}", c.remote_address),
                                    vec![
                                        ("RemoteAddress", c.remote_address.to_string()),
                                        ("RemotePort", c.remote_port.clone()),
                                        ("Executable", c.executable.clone()),
                                    ],
                                ));
                            }
                        }
                    }
                    PayloadItem::Login(l) if l.result == LoginResult::Fail => {
                        add[Metric::FailedLogins.index()] += 1;
                    }
                    PayloadItem::ListeningPorts(p) => {
                        if let Some(allowed) = &group.listening_ports {
                            let proto = p.protocol.to_string().to_ascii_uppercase();
                            let port: Option<u16> = p.local_port.parse().ok();
                            let ok = allowed.iter().any(|a| {
                                Some(a.port) == port && a.protocol.as_ref().is_none_or(|ap| *ap == proto)
                            });
                            if !ok {
                                out.push(finding(
                                    format!("port/{proto}/{}", p.local_port),
                                    vec![("Port", format!("{proto}/{}", p.local_port))],
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
            if group.ranges.is_empty() || add.iter().all(|n| *n == 0) {
                continue;
            }
            let key = (device.to_owned(), gi);
            if !self.windows.contains_key(&key) && self.windows.len() >= MAX_TRACKED {
                continue;
            }
            let index = time_ms.div_euclid(group.window_ms);
            let window = self.windows.entry(key).or_insert_with(|| Window {
                index,
                ..Window::default()
            });
            if window.index != index {
                if window.index < index {
                    out.extend(close(group, window));
                    *window = Window {
                        index,
                        ..Window::default()
                    };
                } else {
                    // A late event of an earlier window: not counted again.
                    continue;
                }
            }
            window.events.push_back(id.clone());
            while window.events.len() > MAX_EVIDENCE {
                window.events.pop_front();
            }
            for (metric, range) in &group.ranges {
                let i = metric.index();
                window.counts[i] = window.counts[i].saturating_add(add[i]);
                if let Some(max) = range.max {
                    if window.counts[i] > max && !window.over[i] {
                        window.over[i] = true;
                        out.push(range_finding(group, window, *metric, "Max", max, time_ms));
                    }
                }
            }
        }
        out
    }

    /// Ends the windows that are over at `now_ms`, checking their minimums.
    pub fn tick(&mut self, now_ms: i64) -> Vec<(String, Finding)> {
        let mut out = Vec::new();
        let groups = &self.rules.groups;
        self.windows.retain(|(device, gi), window| {
            let Some(group) = groups.get(*gi) else {
                return false;
            };
            if now_ms.div_euclid(group.window_ms) > window.index {
                out.extend(close(group, window).into_iter().map(|f| (device.clone(), f)));
                false
            } else {
                true
            }
        });
        out
    }
}

/// The minimum findings of a window that ended.
fn close(group: &Group, window: &Window) -> Vec<Finding> {
    let end = (window.index + 1).saturating_mul(group.window_ms);
    group
        .ranges
        .iter()
        .filter_map(|(metric, range)| {
            let min = range.min?;
            (window.counts[metric.index()] < min)
                .then(|| range_finding(group, window, *metric, "Min", min, end))
        })
        .collect()
}

fn range_finding(
    group: &Group,
    window: &Window,
    metric: Metric,
    bound: &str,
    limit: u64,
    time_ms: i64,
) -> Finding {
    let start = window.index.saturating_mul(group.window_ms);
    Finding {
        rule: Rule::CustomCountRange,
        key: format!("{}/{}", group.name, metric.key()),
        time_ms,
        event_ids: window.events.iter().cloned().collect(),
        fields: vec![
            ("Group".into(), group.name.clone()),
            ("Count".into(), metric.key().into()),
            ("Value".into(), window.counts[metric.index()].to_string()),
            (bound.into(), limit.to_string()),
            ("WindowStart".into(), super::model::utc_text(start)),
            ("WindowSeconds".into(), (group.window_ms / 1000).to_string()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::model::{
        ConnectionCreate, Direction, EventName, ListeningPorts, Login, ProcessCreate, Protocol, Timestamp,
        Uuid,
    };

    const T0: i64 = 1_764_900_000_000;

    fn event(name: EventName, items: Vec<PayloadItem>, ms: i64) -> Event {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Event::with_id(
            Uuid::from_u128(u128::from(n)),
            name,
            items,
            Timestamp::from_parts(ms, 0).expect("time"),
        )
        .expect("event")
    }

    fn exec(exe: &str, ms: i64) -> Event {
        event(
            EventName::ProcessCreate,
            vec![PayloadItem::ProcessCreate(ProcessCreate {
                executable: exe.into(),
                process_id: 9,
                parent_process_id: 1,
                user_id: "0".into(),
                user_name: None,
                command_line: exe.into(),
                extra_details: Default::default(),
            })],
            ms,
        )
    }

    fn failed_login(ms: i64) -> Event {
        event(
            EventName::Login,
            vec![PayloadItem::Login(Login {
                process_id: 1,
                user_id: None,
                user_name: "pi".into(),
                operation: "Login".into(),
                executable: "/usr/sbin/sshd".into(),
                remote_address: None,
                remote_port: None,
                local_port: None,
                result: LoginResult::Fail,
                extra_details: Default::default(),
            })],
            ms,
        )
    }

    fn connect(to: &str, ms: i64) -> Event {
        event(
            EventName::ConnectionCreate,
            vec![PayloadItem::ConnectionCreate(ConnectionCreate {
                remote_address: to.parse().expect("ip"),
                remote_port: "443".into(),
                local_address: None,
                local_port: None,
                direction: Direction::Out,
                protocol: Protocol::Tcp,
                process_id: 7,
                user_id: None,
                executable: "/usr/bin/curl".into(),
                command_line: None,
                extra_details: Default::default(),
            })],
            ms,
        )
    }

    fn ports(list: &[(Protocol, &str)]) -> Event {
        event(
            EventName::ListeningPorts,
            list.iter()
                .map(|(proto, port)| {
                    PayloadItem::ListeningPorts(ListeningPorts {
                        remote_address: None,
                        remote_port: None,
                        local_address: None,
                        local_port: (*port).into(),
                        protocol: *proto,
                        extra_details: Default::default(),
                    })
                })
                .collect(),
            T0,
        )
    }

    const GATEWAYS: &str = r#"
# Gateways: few failed logins, a known set of programs, peers and ports.
[[groups]]
name = "gateways"
windowSeconds = 60
match.tags = { role = "gateway" }
ranges.failedLogins = { max = 2 }
ranges.processes = { min = 1, max = 100 }
allow.processes = ["/usr/bin/*", "/usr/sbin/sshd"]
allow.remoteAddresses = ["10.0.0.0/8", "2001:db8::1"]
allow.listeningPorts = ["TCP/22", 53]
"#;

    fn tags(role: &str) -> Map<String, Value> {
        json!({"role": role, "site": "plant1"})
            .as_object()
            .cloned()
            .expect("object")
    }

    #[test]
    fn a_valid_toml_file_and_its_json_twin() {
        let rules = parse(GATEWAYS, Format::Toml).expect("valid");
        assert_eq!(rules.groups.len(), 1);
        let g = &rules.groups[0];
        assert_eq!((g.name.as_str(), g.window_ms), ("gateways", 60_000));
        assert!(g.matches(&tags("gateway")) && !g.matches(&tags("camera")));
        assert!(rules.needs_tags());
        let json_text =
            json!({"groups": [{"name": "all", "ranges": {"connections": {"max": 5}}}]}).to_string();
        let rules = parse(&json_text, Format::Json).expect("valid JSON");
        assert_eq!(rules.groups[0].window_ms, DEFAULT_WINDOW_SECS * 1000);
        assert!(!rules.needs_tags());
        assert_eq!(Format::of_path(std::path::Path::new("/etc/r.TOML")), Format::Toml);
        assert_eq!(Format::of_path(std::path::Path::new("r.json")), Format::Json);
    }

    #[test]
    fn every_problem_is_one_error_with_its_pointer() {
        let bad = json!({
            "groups": [
                {"name": "a", "windowSeconds": 0, "ranges": {"failedLogins": {"min": 5, "max": 2}, "cpu": {"max": 1}},
                 "allow": {"processes": ["sshd"], "remoteAddresses": ["10.0.0.0/33"], "listeningPorts": [70000, "SCTP/9"], "users": []}},
                {"name": "a", "match": {"tags": {"role": ["x"]}}, "colour": "red"},
                {"ranges": {"processes": {}}}
            ],
            "extra": 1
        });
        let errors = check(&bad).expect_err("invalid");
        let at: Vec<&str> = errors.iter().map(|e| e.at.as_str()).collect();
        assert_eq!(
            at,
            vec![
                "/extra",
                "/groups/0/windowSeconds",
                "/groups/0/ranges/failedLogins/min",
                "/groups/0/ranges/cpu",
                "/groups/0/allow/processes/0",
                "/groups/0/allow/remoteAddresses/0",
                "/groups/0/allow/listeningPorts/0",
                "/groups/0/allow/listeningPorts/1",
                "/groups/0/allow/users",
                "/groups/1/colour",
                "/groups/1/match/tags/role",
                "/groups/2/name",
                "/groups/2/ranges/processes",
            ],
            "{errors:#?}"
        );
        assert!(errors.iter().all(|e| !e.to_string().contains('\n')));
        // Syntax errors name the line.
        let e = parse("[[groups]]\nname = \n", Format::Toml).expect_err("bad TOML");
        assert_eq!(e.len(), 1);
        assert!(e[0].at.starts_with("line 2"), "{e:?}");
        let e = parse("{\"groups\": [}", Format::Json).expect_err("bad JSON");
        assert!(e[0].at.starts_with("line 1 column"), "{e:?}");
        assert!(check(&json!([])).is_err());
        assert!(check(&json!({"groups": "x"})).is_err());
    }

    #[test]
    fn the_schema_names_what_the_checker_accepts() {
        let schema = schema();
        let group = &schema["properties"]["groups"]["items"]["properties"];
        for key in ["name", "match", "windowSeconds", "ranges", "allow"] {
            assert!(group.get(key).is_some(), "{key}");
        }
        for m in Metric::ALL {
            assert!(group["ranges"]["properties"].get(m.key()).is_some());
        }
        for list in ["processes", "remoteAddresses", "listeningPorts"] {
            assert!(group["allow"]["properties"].get(list).is_some());
        }
    }

    #[test]
    fn allow_lists_and_their_near_misses() {
        let mut state = CustomState::default();
        state.set(parse(GATEWAYS, Format::Toml).expect("valid"));
        let gw = tags("gateway");
        let keys = |found: Vec<Finding>| found.into_iter().map(|f| f.key).collect::<Vec<_>>();
        assert!(keys(state.observe("d", &gw, &exec("/usr/bin/ls", T0))).is_empty());
        assert!(keys(state.observe("d", &gw, &exec("/usr/sbin/sshd", T0))).is_empty());
        assert_eq!(
            keys(state.observe("d", &gw, &exec("/usr/sbin/sshd2", T0))),
            vec!["gateways/process//usr/sbin/sshd2"]
        );
        assert_eq!(
            keys(state.observe("d", &gw, &exec("/tmp/x", T0))),
            vec!["gateways/process//tmp/x"]
        );
        // Not in the group: nothing.
        assert!(state
            .observe("d", &tags("camera"), &exec("/tmp/x", T0))
            .is_empty());
        assert!(keys(state.observe("d", &gw, &connect("10.9.8.7", T0))).is_empty());
        assert!(keys(state.observe("d", &gw, &connect("::ffff:10.1.1.1", T0))).is_empty());
        assert!(keys(state.observe("d", &gw, &connect("2001:db8::1", T0))).is_empty());
        assert_eq!(
            keys(state.observe("d", &gw, &connect("11.0.0.1", T0))),
            vec!["gateways/remote/11.0.0.1"]
        );
        assert_eq!(
            keys(state.observe("d", &gw, &connect("2001:db8::2", T0))),
            vec!["gateways/remote/2001:db8::2"]
        );
        let found = state.observe(
            "d",
            &gw,
            &ports(&[
                (Protocol::Tcp, "22"),
                (Protocol::Udp, "53"),
                (Protocol::Tcp, "53"),
                (Protocol::Udp, "22"),
                (Protocol::Tcp, "8080"),
            ]),
        );
        assert_eq!(
            keys(found),
            vec!["gateways/port/UDP/22", "gateways/port/TCP/8080"]
        );
        assert!(glob("/usr/*/python*", "/usr/bin/python3.11"));
        assert!(!glob("/usr/*/python*", "/opt/bin/python3"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn ranges_count_in_windows_with_injected_time() {
        let mut state = CustomState::default();
        state.set(parse(GATEWAYS, Format::Toml).expect("valid"));
        let gw = tags("gateway");
        let start = (T0 / 60_000) * 60_000;
        // Two failures in a window are allowed, the third is not (once per window).
        assert!(state.observe("d", &gw, &failed_login(start + 1_000)).is_empty());
        assert!(state.observe("d", &gw, &failed_login(start + 2_000)).is_empty());
        let found = state.observe("d", &gw, &failed_login(start + 3_000));
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].rule, found[0].key.as_str()),
            (Rule::CustomCountRange, "gateways/failedLogins")
        );
        assert_eq!(found[0].event_ids.len(), 3);
        assert!(found[0].fields.iter().any(|(k, v)| k == "Value" && v == "3"));
        assert!(state.observe("d", &gw, &failed_login(start + 4_000)).is_empty());
        // Another device counts on its own.
        assert!(state.observe("e", &gw, &failed_login(start + 4_000)).is_empty());
        // The next window starts at zero; the window that ended had no process: below min 1.
        let found = state.observe("d", &gw, &failed_login(start + 61_000));
        assert_eq!(
            found.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
            vec!["gateways/processes"]
        );
        assert!(found[0].fields.iter().any(|(k, v)| k == "Min" && v == "1"));
        // A process in this window: the tick at its end finds the minimum met, but the
        // other device's window (no process) below it.
        assert!(state
            .observe("d", &gw, &exec("/usr/bin/ls", start + 62_000))
            .is_empty());
        let ticked = state.tick(start + 119_000);
        assert_eq!(
            ticked
                .iter()
                .map(|(d, f)| (d.as_str(), f.key.as_str()))
                .collect::<Vec<_>>(),
            vec![("e", "gateways/processes")],
            "e's first window is over, d's second is not"
        );
        assert!(
            state.tick(start + 121_000).is_empty(),
            "d's window met its minimum"
        );
        assert!(state.tick(start + 200_000).is_empty(), "each window ends once");
        // Replacing the rules drops the windows.
        state.set(CustomRules::default());
        assert!(state.observe("d", &gw, &failed_login(start + 1)).is_empty());
        assert!(state.tick(i64::MAX / 2).is_empty());
    }
}
