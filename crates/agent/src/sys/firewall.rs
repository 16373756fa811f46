//! Firewall rules from the system's own tools: `nft -j list ruleset` (JSON) and
//! `iptables-legacy-save` / `ip6tables-legacy-save` (text), as one neutral [`FirewallRule`]
//! list. Pure parsers, plus [`legacy_tables_loaded`] and the tool paths.
//!
//! Every table and chain is read; a base chain's policy is a rule of its own, placed after the
//! chain's rules (`position` = rule count + 1). Rules made by iptables-nft are nftables rules
//! and appear only in the nft output (their `xt` matches rendered as `xt match NAME`).

use serde_json::Value;

use super::fs::{read_text, Root};

/// Where `nft` is installed, in order of preference (no `PATH` lookup with privilege).
pub(crate) const NFT_PATHS: [&str; 4] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];
/// Where `iptables-legacy-save` is installed.
pub(crate) const IPTABLES_LEGACY_SAVE_PATHS: [&str; 4] = [
    "/usr/sbin/iptables-legacy-save",
    "/sbin/iptables-legacy-save",
    "/usr/bin/iptables-legacy-save",
    "/bin/iptables-legacy-save",
];
/// Where `ip6tables-legacy-save` is installed.
pub(crate) const IP6TABLES_LEGACY_SAVE_PATHS: [&str; 4] = [
    "/usr/sbin/ip6tables-legacy-save",
    "/sbin/ip6tables-legacy-save",
    "/usr/bin/ip6tables-legacy-save",
    "/bin/ip6tables-legacy-save",
];

/// Where a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSource {
    /// nftables (including iptables-nft rules).
    Nftables,
    /// Legacy IPv4 iptables.
    IptablesLegacy,
    /// Legacy IPv6 ip6tables.
    Ip6tablesLegacy,
}

impl RuleSource {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleSource::Nftables => "nftables",
            RuleSource::IptablesLegacy => "iptables-legacy",
            RuleSource::Ip6tablesLegacy => "ip6tables-legacy",
        }
    }
}

/// What a rule does with a packet it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepts it.
    Accept,
    /// Drops it silently.
    Drop,
    /// Rejects it with an error reply.
    Reject,
    /// Anything else: a jump, goto, return, queue, NAT, a log or counter without verdict
    /// (`continue`) ... spelled as the tool spells it.
    Other(String),
}

/// One firewall rule or chain policy.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FirewallRule {
    /// Where it came from.
    pub source: Option<RuleSource>,
    /// Address family (`inet`, `ip`, `ip6`, `arp`, `bridge`, `netdev`).
    pub family: String,
    /// Table name.
    pub table: String,
    /// Chain name.
    pub chain: String,
    /// The netfilter hook of a base chain (`input`, `output`, `forward`, `prerouting`...).
    pub hook: Option<String>,
    /// The chain's type (`filter`, `nat`, `route`).
    pub chain_type: Option<String>,
    /// The base chain's priority.
    pub chain_priority: Option<i64>,
    /// Whether this is the chain's policy rather than a rule.
    pub is_policy: bool,
    /// 1-based position in its chain (a policy comes after the last rule).
    pub position: usize,
    /// Whether the rule is active (false in a dormant nftables table).
    pub enabled: bool,
    /// What it does.
    pub verdict: Option<Verdict>,
    /// The layer 4 protocol matched (`tcp`, `udp`, `icmp`...).
    pub protocol: Option<String>,
    /// Source address, prefix, range or set (`!` first when negated).
    pub source_address: Option<String>,
    /// Source port, range (`a-b`) or list (`a,b`).
    pub source_port: Option<String>,
    /// Destination address, like `source_address`.
    pub destination_address: Option<String>,
    /// Destination port, like `source_port`.
    pub destination_port: Option<String>,
    /// Input interface.
    pub in_interface: Option<String>,
    /// Output interface.
    pub out_interface: Option<String>,
    /// The rule's text.
    pub text: String,
    /// Its comment.
    pub comment: Option<String>,
    /// Its nftables handle.
    pub handle: Option<u64>,
}

/// Why a tool's output could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{tool}: {why}")]
pub struct ParseError {
    /// The tool.
    pub tool: &'static str,
    /// What was wrong.
    pub why: String,
}

/// Whether legacy iptables tables are loaded for IPv4 / IPv6 (`/proc/net/ip_tables_names`
/// and `ip6_tables_names` list at least one table). Checking first means the save tools are
/// never run where they would load kernel modules just to print nothing.
pub(crate) fn legacy_tables_loaded(root: &Root) -> (bool, bool) {
    let loaded = |p: &str| {
        read_text(&root.path(p), 4096)
            .map(|t| t.lines().any(|l| !l.trim().is_empty()))
            .unwrap_or(false)
    };
    (
        loaded("/proc/net/ip_tables_names"),
        loaded("/proc/net/ip6_tables_names"),
    )
}

// ---------------------------------------------------------------------------------------------
// nftables JSON

/// A scalar or structured nft JSON value as nft's own syntax (`10.0.0.0/8`, `{ 22, 80 }`,
/// `8000-8080`, `@set`); unknown shapes as compact JSON.
pub(crate) fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(render_value).collect::<Vec<_>>().join(","),
        Value::Object(map) => {
            if let Some(p) = map.get("prefix") {
                return format!("{}/{}", render_value(&p["addr"]), render_value(&p["len"]));
            }
            if let Some(Value::Array(r)) = map.get("range") {
                if r.len() == 2 {
                    return format!("{}-{}", render_value(&r[0]), render_value(&r[1]));
                }
            }
            if let Some(Value::Array(items)) = map.get("set") {
                return format!(
                    "{{ {} }}",
                    items.iter().map(render_value).collect::<Vec<_>>().join(", ")
                );
            }
            if let Some(set) = map.get("set") {
                return render_value(set);
            }
            if let Some(p) = map.get("payload") {
                return format!("{} {}", render_value(&p["protocol"]), render_value(&p["field"]));
            }
            if let Some(m) = map.get("meta") {
                return format!("meta {}", render_value(&m["key"]));
            }
            if let Some(c) = map.get("ct") {
                return format!("ct {}", render_value(&c["key"]));
            }
            serde_json::to_string(v).unwrap_or_default()
        }
    }
}

/// A set of values as a plain list for a rule field (`22,80,8000-8080`).
fn field_value(v: &Value) -> String {
    match v {
        Value::Object(map) => match map.get("set") {
            Some(Value::Array(items)) => items.iter().map(field_value).collect::<Vec<_>>().join(","),
            _ => render_value(v),
        },
        _ => render_value(v),
    }
}

/// Renders one statement of a rule's `expr` list.
fn render_statement(stmt: &Value) -> String {
    let Some((kind, body)) = stmt.as_object().and_then(|m| m.iter().next()) else {
        return serde_json::to_string(stmt).unwrap_or_default();
    };
    match kind.as_str() {
        "match" => {
            let left = render_value(&body["left"]);
            let right = render_value(&body["right"]);
            match body["op"].as_str().unwrap_or("==") {
                "==" | "in" => format!("{left} {right}"),
                op => format!("{left} {op} {right}"),
            }
        }
        "accept" | "drop" | "return" | "continue" | "masquerade" | "notrack" => {
            if body.is_null() {
                kind.clone()
            } else {
                format!("{kind} {}", compact_args(body))
            }
        }
        "jump" | "goto" => format!("{kind} {}", render_value(&body["target"])),
        "counter" => "counter".to_owned(),
        "log" => match body.get("prefix") {
            Some(p) => format!("log prefix \"{}\"", render_value(p)),
            None => "log".to_owned(),
        },
        "xt" => format!(
            "xt {} {}",
            render_value(&body["type"]),
            render_value(&body["name"])
        ),
        _ => {
            if body.is_null() {
                kind.clone()
            } else {
                format!("{kind} {}", compact_args(body))
            }
        }
    }
}

/// `key value` pairs of a statement's arguments (`reject type icmpx expr port-unreachable`).
fn compact_args(body: &Value) -> String {
    match body {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k} {}", render_value(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => render_value(other),
    }
}

/// Applies one `match` statement to the rule's fields.
fn apply_match(rule: &mut FirewallRule, body: &Value) {
    let negated = body["op"].as_str() == Some("!=");
    let value = || {
        let v = field_value(&body["right"]);
        if negated {
            format!("!{v}")
        } else {
            v
        }
    };
    let left = &body["left"];
    if let Some(p) = left.get("payload") {
        let protocol = p["protocol"].as_str().unwrap_or("");
        match (protocol, p["field"].as_str().unwrap_or("")) {
            ("ip" | "ip6" | "arp", "saddr") => rule.source_address = Some(value()),
            ("ip" | "ip6" | "arp", "daddr") => rule.destination_address = Some(value()),
            ("ip", "protocol") | ("ip6", "nexthdr") => rule.protocol = Some(value()),
            (l4, "sport") => {
                rule.source_port = Some(value());
                if l4 != "th" && rule.protocol.is_none() {
                    rule.protocol = Some(l4.to_owned());
                }
            }
            (l4, "dport") => {
                rule.destination_port = Some(value());
                if l4 != "th" && rule.protocol.is_none() {
                    rule.protocol = Some(l4.to_owned());
                }
            }
            ("tcp" | "udp" | "icmp" | "icmpv6" | "sctp" | "dccp" | "udplite" | "esp" | "ah", _)
                if rule.protocol.is_none() =>
            {
                rule.protocol = Some(protocol.to_owned());
            }
            _ => {}
        }
    } else if let Some(m) = left.get("meta") {
        match m["key"].as_str().unwrap_or("") {
            "l4proto" => rule.protocol = Some(value()),
            "iifname" | "iif" => rule.in_interface = Some(value()),
            "oifname" | "oif" => rule.out_interface = Some(value()),
            _ => {}
        }
    }
}

fn verdict_of(stmt: &Value) -> Option<Verdict> {
    let (kind, body) = stmt.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "reject" => Verdict::Reject,
        "jump" | "goto" => Verdict::Other(format!("{kind} {}", render_value(&body["target"]))),
        "return" | "continue" | "queue" | "masquerade" | "snat" | "dnat" | "redirect" | "notrack"
        | "synproxy" | "fwd" | "dup" | "tproxy" => Verdict::Other(kind.clone()),
        _ => return None,
    })
}

/// (family, table, chain).
type ChainKey = (String, String, String);

fn chain_key(obj: &Value) -> ChainKey {
    (
        obj["family"].as_str().unwrap_or("").to_owned(),
        obj["table"].as_str().unwrap_or("").to_owned(),
        obj.get("chain")
            .or_else(|| obj.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    )
}

/// A table's flags: a string or a list of strings.
fn is_dormant(table: &Value) -> bool {
    match &table["flags"] {
        Value::String(s) => s == "dormant",
        Value::Array(a) => a.iter().any(|f| f == "dormant"),
        _ => false,
    }
}

/// Parses the output of `nft -j list ruleset`.
pub fn parse_nft_json(bytes: &[u8]) -> Result<Vec<FirewallRule>, ParseError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| ParseError {
        tool: "nft",
        why: format!("not JSON: {e}"),
    })?;
    let Some(items) = doc.get("nftables").and_then(Value::as_array) else {
        return Err(ParseError {
            tool: "nft",
            why: "no \"nftables\" array in the output".to_owned(),
        });
    };
    let mut dormant = std::collections::HashSet::new();
    // Chains in listing order, each with its rules.
    let mut chains: Vec<(ChainKey, &Value, Vec<&Value>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for item in items {
        if let Some(t) = item.get("table") {
            if is_dormant(t) {
                dormant.insert((
                    t["family"].as_str().unwrap_or("").to_owned(),
                    t["name"].as_str().unwrap_or("").to_owned(),
                ));
            }
        } else if let Some(c) = item.get("chain") {
            let key = chain_key(c);
            index.insert(key.clone(), chains.len());
            chains.push((key, c, Vec::new()));
        } else if let Some(r) = item.get("rule") {
            let key = chain_key(r);
            match index.get(&key) {
                Some(&i) => chains[i].2.push(r),
                None => {
                    // A rule listed before its chain (not nft's order, but tolerated).
                    index.insert(key.clone(), chains.len());
                    chains.push((key, &Value::Null, vec![r]));
                }
            }
        }
    }
    let mut out = Vec::new();
    for ((family, table, chain), c, rules) in chains {
        let enabled = !dormant.contains(&(family.clone(), table.clone()));
        let base = FirewallRule {
            source: Some(RuleSource::Nftables),
            family: family.clone(),
            table: table.clone(),
            chain: chain.clone(),
            hook: c["hook"].as_str().map(str::to_owned),
            chain_type: c["type"].as_str().map(str::to_owned),
            chain_priority: c["prio"].as_i64(),
            enabled,
            ..FirewallRule::default()
        };
        let count = rules.len();
        for (i, r) in rules.into_iter().enumerate() {
            let mut rule = FirewallRule {
                position: i + 1,
                handle: r["handle"].as_u64(),
                comment: r["comment"].as_str().map(str::to_owned),
                ..base.clone()
            };
            let stmts = r["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let mut text = Vec::with_capacity(stmts.len());
            for stmt in stmts {
                if let Some(body) = stmt.get("match") {
                    apply_match(&mut rule, body);
                }
                if let Some(v) = verdict_of(stmt) {
                    rule.verdict = Some(v);
                }
                text.push(render_statement(stmt));
            }
            if rule.verdict.is_none() {
                rule.verdict = Some(Verdict::Other("continue".to_owned()));
            }
            if let Some(comment) = &rule.comment {
                text.push(format!("comment \"{comment}\""));
            }
            rule.text = text.join(" ");
            out.push(rule);
        }
        if let Some(policy) = c["policy"].as_str() {
            out.push(FirewallRule {
                is_policy: true,
                position: count + 1,
                verdict: Some(match policy {
                    "accept" => Verdict::Accept,
                    "drop" => Verdict::Drop,
                    other => Verdict::Other(other.to_owned()),
                }),
                text: format!("policy {policy}"),
                ..base
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// iptables-save text

/// Splits an iptables-save rule line into words, honouring double quotes and `\"` inside them.
pub(crate) fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn builtin_hook(chain: &str) -> Option<&'static str> {
    Some(match chain {
        "INPUT" => "input",
        "OUTPUT" => "output",
        "FORWARD" => "forward",
        "PREROUTING" => "prerouting",
        "POSTROUTING" => "postrouting",
        _ => return None,
    })
}

/// Parses the output of `iptables-legacy-save` (or `ip6tables-legacy-save`, with `v6`).
pub fn parse_iptables_save(text: &str, v6: bool) -> Vec<FirewallRule> {
    let (family, source) = if v6 {
        ("ip6", RuleSource::Ip6tablesLegacy)
    } else {
        ("ip", RuleSource::IptablesLegacy)
    };
    let mut out = Vec::new();
    let mut table = String::new();
    // Chains of the current table in declaration order: name, policy, rules.
    let mut chains: Vec<(String, Option<String>, Vec<FirewallRule>)> = Vec::new();
    let flush = |table: &str,
                 chains: &mut Vec<(String, Option<String>, Vec<FirewallRule>)>,
                 out: &mut Vec<FirewallRule>| {
        for (chain, policy, rules) in chains.drain(..) {
            let count = rules.len();
            out.extend(rules);
            if let Some(policy) = policy {
                out.push(FirewallRule {
                    source: Some(source),
                    family: family.to_owned(),
                    table: table.to_owned(),
                    hook: builtin_hook(&chain).map(str::to_owned),
                    chain,
                    is_policy: true,
                    position: count + 1,
                    enabled: true,
                    verdict: Some(match policy.as_str() {
                        "ACCEPT" => Verdict::Accept,
                        "DROP" => Verdict::Drop,
                        other => Verdict::Other(other.to_owned()),
                    }),
                    text: format!("-P {policy}"),
                    ..FirewallRule::default()
                });
            }
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            flush(&table, &mut chains, &mut out);
            table = name.trim().to_owned();
        } else if line == "COMMIT" {
            flush(&table, &mut chains, &mut out);
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_ascii_whitespace();
            let name = parts.next().unwrap_or("").to_owned();
            let policy = parts.next().filter(|p| *p != "-").map(str::to_owned);
            if !name.is_empty() && !chains.iter().any(|(n, _, _)| *n == name) {
                chains.push((name, policy, Vec::new()));
            }
        } else if line.starts_with("-A ") {
            let words = split_words(line);
            let Some(chain) = words.get(1).cloned() else {
                continue;
            };
            let i = match chains.iter().position(|(n, _, _)| *n == chain) {
                Some(i) => i,
                None => {
                    chains.push((chain.clone(), None, Vec::new()));
                    chains.len() - 1
                }
            };
            let position = chains[i].2.len() + 1;
            let mut rule = FirewallRule {
                source: Some(source),
                family: family.to_owned(),
                table: table.clone(),
                hook: builtin_hook(&chain).map(str::to_owned),
                chain,
                position,
                enabled: true,
                text: line.to_owned(),
                ..FirewallRule::default()
            };
            apply_iptables_words(&mut rule, &words[2..]);
            chains[i].2.push(rule);
        }
    }
    flush(&table, &mut chains, &mut out);
    out
}

fn apply_iptables_words(rule: &mut FirewallRule, words: &[String]) {
    let mut negate = false;
    let mut i = 0;
    let mut target_seen = false;
    while i < words.len() {
        let w = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str);
        let mut val = |v: Option<&str>| -> Option<String> {
            let v = if negate { format!("!{}", v?) } else { v?.to_owned() };
            negate = false;
            Some(v)
        };
        let consumed = match w {
            "!" => {
                negate = true;
                1
            }
            "-s" | "--source" | "--src" => {
                rule.source_address = val(arg.map(|a| a.trim_end_matches("/32").trim_end_matches("/128")));
                2
            }
            "-d" | "--destination" | "--dst" => {
                rule.destination_address =
                    val(arg.map(|a| a.trim_end_matches("/32").trim_end_matches("/128")));
                2
            }
            "-p" | "--protocol" => {
                rule.protocol = arg.map(|a| {
                    let p = a.to_ascii_lowercase();
                    if negate {
                        format!("!{p}")
                    } else {
                        p
                    }
                });
                negate = false;
                2
            }
            // iptables writes port ranges `a:b`; the schema's ports are `a-b`.
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                rule.destination_port = val(arg.map(|a| a.replace(':', "-")).as_deref());
                2
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                rule.source_port = val(arg.map(|a| a.replace(':', "-")).as_deref());
                2
            }
            "-i" | "--in-interface" => {
                rule.in_interface = val(arg);
                2
            }
            "-o" | "--out-interface" => {
                rule.out_interface = val(arg);
                2
            }
            "--comment" => {
                rule.comment = arg.map(str::to_owned);
                2
            }
            "-j" | "--jump" | "-g" | "--goto" if !target_seen => {
                target_seen = true;
                let target = arg.unwrap_or("");
                rule.verdict = Some(match target {
                    "ACCEPT" => Verdict::Accept,
                    "DROP" => Verdict::Drop,
                    "REJECT" => Verdict::Reject,
                    other if w.starts_with("-g") || w == "--goto" => Verdict::Other(format!("goto {other}")),
                    other => Verdict::Other(match other {
                        "RETURN" | "LOG" | "MASQUERADE" | "SNAT" | "DNAT" | "REDIRECT" | "NFQUEUE"
                        | "QUEUE" | "MARK" | "CONNMARK" | "NOTRACK" | "CT" | "TCPMSS" => other.to_owned(),
                        chain => format!("jump {chain}"),
                    }),
                });
                2
            }
            _ => {
                negate = false;
                1
            }
        };
        i += consumed;
    }
    if rule.verdict.is_none() {
        rule.verdict = Some(Verdict::Other("continue".to_owned()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_nft_values() {
        assert_eq!(
            render_value(&json!({"prefix": {"addr": "10.0.0.0", "len": 8}})),
            "10.0.0.0/8"
        );
        assert_eq!(render_value(&json!({"range": [8000, 8080]})), "8000-8080");
        assert_eq!(
            render_value(&json!({"set": [22, {"range": [1, 2]}]})),
            "{ 22, 1-2 }"
        );
        assert_eq!(field_value(&json!({"set": [22, {"range": [1, 2]}]})), "22,1-2");
        assert_eq!(render_value(&json!("@blocklist")), "@blocklist");
    }

    #[test]
    fn words_with_quotes() {
        assert_eq!(
            split_words(r#"-A INPUT -m comment --comment "ssh from \"lan\"" -j ACCEPT"#),
            [
                "-A",
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "ssh from \"lan\"",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(split_words(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn nft_garbage_is_an_error_not_a_panic() {
        assert!(parse_nft_json(b"not json").is_err());
        assert!(parse_nft_json(b"{}").is_err());
        let odd = br#"{"nftables": [{"rule": {"expr": [{"match": 5}, 7, {"jump": {}}]}}, {"chain": 3}, {"table": {"flags": 1}}]}"#;
        let rules = parse_nft_json(odd).unwrap();
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn iptables_policies_follow_rules() {
        let text = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:mine - [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n-A mine -j RETURN\nCOMMIT\n";
        let rules = parse_iptables_save(text, false);
        let summary: Vec<(String, bool, usize)> = rules
            .iter()
            .map(|r| (r.chain.clone(), r.is_policy, r.position))
            .collect();
        assert_eq!(
            summary,
            [
                ("INPUT".to_owned(), false, 1),
                ("INPUT".to_owned(), true, 2),
                ("FORWARD".to_owned(), true, 1),
                ("mine".to_owned(), false, 1)
            ]
        );
        assert_eq!(rules[0].destination_port.as_deref(), Some("22"));
        assert_eq!(rules[1].verdict, Some(Verdict::Drop));
        assert_eq!(rules[3].verdict, Some(Verdict::Other("RETURN".into())));
    }
}
