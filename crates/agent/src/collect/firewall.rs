//! FirewallConfiguration: every table, chain and rule of nftables (`nft -j list ruleset`) and,
//! when legacy iptables tables are loaded, of `iptables-legacy-save` /
//! `ip6tables-legacy-save`. Rules made by iptables-nft are nftables rules and appear once.
//! Chain policies are rules too (placed after their chain's rules).
//!
//! Fields: `Priority` = the rule's 1-based position in its chain; `Direction` only for base
//! chains on the input (`In`) or output (`Out`) hook; `Action` Allow (accept), Deny (drop,
//! reject), Other (jump, return, NAT, log-only... spelled in `ExtraDetails.Verdict`);
//! addresses, ports and protocol where the rule matches them; `Enabled` false only in a
//! dormant nftables table. The rule's text is in `ExtraDetails.Rule`.
//!
//! No firewall tool installed and no legacy table loaded: an empty snapshot and a note in the
//! status. A tool that fails: an error (no event).

use std::path::PathBuf;
use std::time::Duration;

use crate::sys::firewall::{self, FirewallRule, Verdict};
use crate::sys::fs::Root;
use crate::sys::program;
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{
    Direction, EventName, ExtraDetails, FirewallAction, FirewallConfiguration, PayloadItem,
};

use super::{CollectError, SnapshotCollector};

/// Where the firewall tools are (fixed system paths; tests may point elsewhere).
#[derive(Clone, Debug)]
pub(crate) struct FirewallTools {
    /// `nft`, if installed.
    pub nft: Option<PathBuf>,
    /// `iptables-legacy-save`, if installed.
    pub iptables_legacy_save: Option<PathBuf>,
    /// `ip6tables-legacy-save`, if installed.
    pub ip6tables_legacy_save: Option<PathBuf>,
    /// How long a tool may run.
    pub timeout: Duration,
    /// The cap on a tool's output.
    pub output_cap: usize,
}

impl FirewallTools {
    /// The tools installed on this machine.
    pub fn installed() -> FirewallTools {
        FirewallTools {
            nft: program::find_tool(&firewall::NFT_PATHS),
            iptables_legacy_save: program::find_tool(&firewall::IPTABLES_LEGACY_SAVE_PATHS),
            ip6tables_legacy_save: program::find_tool(&firewall::IP6TABLES_LEGACY_SAVE_PATHS),
            timeout: program::DEFAULT_TIMEOUT,
            output_cap: program::DEFAULT_OUTPUT_CAP,
        }
    }
}

/// The name a tool is reported by (`nft`).
fn tool_name(tool: &std::path::Path) -> String {
    tool.file_name().map_or_else(
        || tool.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn action_of(verdict: Option<&Verdict>) -> FirewallAction {
    match verdict {
        Some(Verdict::Accept) => FirewallAction::Allow,
        Some(Verdict::Drop | Verdict::Reject) => FirewallAction::Deny,
        _ => FirewallAction::Other,
    }
}

/// The payload item of one rule (pure).
pub fn firewall_item(rule: &FirewallRule) -> FirewallConfiguration {
    // Only the input and output hooks have a direction; forward, pre- and postrouting, and
    // regular chains (reached by jumps from anywhere) have none.
    let direction = match rule.hook.as_deref() {
        Some("input") => Some(Direction::In),
        Some("output") => Some(Direction::Out),
        _ => None,
    };
    let mut extra = ExtraDetails::new();
    if let Some(source) = rule.source {
        extra.insert("Source".into(), source.as_str().into());
    }
    extra.insert("Family".into(), rule.family.clone());
    extra.insert("Table".into(), rule.table.clone());
    if let Some(hook) = &rule.hook {
        extra.insert("Hook".into(), hook.clone());
    }
    if let Some(t) = &rule.chain_type {
        extra.insert("ChainType".into(), t.clone());
    }
    if let Some(p) = rule.chain_priority {
        extra.insert("ChainPriority".into(), p.to_string());
    }
    if rule.is_policy {
        extra.insert("ChainPolicy".into(), "true".into());
    }
    extra.insert(
        "Verdict".into(),
        match &rule.verdict {
            Some(Verdict::Accept) => "accept".to_owned(),
            Some(Verdict::Drop) => "drop".to_owned(),
            Some(Verdict::Reject) => "reject".to_owned(),
            Some(Verdict::Other(v)) => v.clone(),
            None => "continue".to_owned(),
        },
    );
    if let Some(i) = &rule.in_interface {
        extra.insert("InInterface".into(), i.clone());
    }
    if let Some(o) = &rule.out_interface {
        extra.insert("OutInterface".into(), o.clone());
    }
    if let Some(c) = &rule.comment {
        extra.insert("Comment".into(), c.clone());
    }
    if let Some(h) = rule.handle {
        extra.insert("Handle".into(), h.to_string());
    }
    extra.insert("Rule".into(), rule.text.clone());
    FirewallConfiguration {
        priority: i64::try_from(rule.position).ok(),
        direction,
        chain_name: Some(rule.chain.clone()),
        application: None,
        enabled: rule.enabled,
        action: action_of(rule.verdict.as_ref()),
        source_address: rule.source_address.clone(),
        source_port: rule.source_port.clone(),
        destination_address: rule.destination_address.clone(),
        destination_port: rule.destination_port.clone(),
        protocol: rule.protocol.as_ref().map(|p| p.to_ascii_uppercase()),
        extra_details: extra,
    }
}

/// The FirewallConfiguration snapshot collector.
#[derive(Debug)]
pub struct FirewallConfigurationCollector {
    root: Root,
    tools: FirewallTools,
    status: CollectorStatus,
}

impl Default for FirewallConfigurationCollector {
    fn default() -> Self {
        FirewallConfigurationCollector::new()
    }
}

impl FirewallConfigurationCollector {
    /// A collector of this machine's firewall.
    pub fn new() -> Self {
        FirewallConfigurationCollector::with_tools(Root::system(), FirewallTools::installed())
    }

    /// A collector with the given tools, checking for legacy tables under `root`.
    pub(crate) fn with_tools(root: Root, tools: FirewallTools) -> Self {
        FirewallConfigurationCollector {
            root,
            tools,
            status: CollectorStatus::default(),
        }
    }

    fn run_tool(&self, tool: &std::path::Path, args: &[&str]) -> Result<Vec<u8>, CollectError> {
        program::run(tool, args, self.tools.timeout, self.tools.output_cap).map_err(|e| {
            CollectError::Failed {
                source_name: tool_name(tool),
                // The tool's error output can span lines; the status and the log want one.
                why: e
                    .to_string()
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })
    }

    fn snapshot(&mut self) -> Result<Vec<FirewallConfiguration>, CollectError> {
        let mut rules = Vec::new();
        let mut sources = Vec::new();
        if let Some(nft) = self.tools.nft.clone() {
            let out = self.run_tool(&nft, &["-j", "list", "ruleset"])?;
            rules.extend(firewall::parse_nft_json(&out).map_err(|e| CollectError::Failed {
                source_name: tool_name(&nft),
                why: e.to_string(),
            })?);
            sources.push("nft -j list ruleset");
        }
        let (v4, v6) = firewall::legacy_tables_loaded(&self.root);
        for (loaded, tool, name, is_v6) in [
            (
                v4,
                self.tools.iptables_legacy_save.clone(),
                "iptables-legacy-save",
                false,
            ),
            (
                v6,
                self.tools.ip6tables_legacy_save.clone(),
                "ip6tables-legacy-save",
                true,
            ),
        ] {
            if !loaded {
                continue;
            }
            match tool {
                Some(tool) => {
                    let out = self.run_tool(&tool, &[])?;
                    rules.extend(firewall::parse_iptables_save(
                        &String::from_utf8_lossy(&out),
                        is_v6,
                    ));
                    sources.push(name);
                }
                None => {
                    return Err(CollectError::Unavailable {
                        source_name: name.to_owned(),
                        why: "legacy tables are loaded but the tool to read them is not installed".to_owned(),
                    })
                }
            }
        }
        self.status.source = sources.join(", ");
        self.status.note = if sources.is_empty() {
            Some(
                "no firewall tool installed (nft) and no legacy iptables table loaded: nothing to report"
                    .to_owned(),
            )
        } else {
            None
        };
        Ok(rules.iter().map(firewall_item).collect())
    }
}

impl SnapshotCollector for FirewallConfigurationCollector {
    fn name(&self) -> EventName {
        EventName::FirewallConfiguration
    }

    fn collect(&mut self) -> Result<Vec<PayloadItem>, CollectError> {
        let result = self.snapshot();
        super::record_outcome(&mut self.status, result)
    }

    fn status(&self) -> CollectorStatus {
        self.status.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn no_tool_no_tables_is_an_empty_snapshot_with_a_note() {
        let dir = std::env::temp_dir().join(format!("tg-fw-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tools = FirewallTools {
            nft: None,
            iptables_legacy_save: None,
            ip6tables_legacy_save: None,
            timeout: Duration::from_secs(1),
            output_cap: 1024,
        };
        let mut c = FirewallConfigurationCollector::with_tools(Root::at(&dir), tools);
        assert!(c.collect().unwrap().is_empty());
        assert!(c.status().note.unwrap().contains("no firewall tool"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_tool_is_an_error() {
        let Some(false_tool) = program::find_tool(&["/bin/false", "/usr/bin/false"]) else {
            return;
        };
        let tools = FirewallTools {
            nft: Some(false_tool),
            iptables_legacy_save: None,
            ip6tables_legacy_save: None,
            timeout: Duration::from_secs(5),
            output_cap: 1024,
        };
        let mut c = FirewallConfigurationCollector::with_tools(Root::at("/nonexistent"), tools);
        assert!(c.collect().is_err());
        assert!(c.status().last_error.is_some());
    }
}
