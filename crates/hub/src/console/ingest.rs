//! Ingest: a stored security message's body, parsed once with the shared event model into
//! [`Ingested`] (the agent's version and its typed events), and the one-line summary of each
//! event that pages show. Pure. The store writes the typed rows; the rules read the typed
//! events; nothing downstream parses the JSON body again.

use serde_json::Value;

use super::model::{Event, PayloadItem};

/// A security message, parsed.
#[derive(Clone, Debug)]
pub struct Ingested {
    /// `AgentVersion`.
    pub agent_version: String,
    /// Its events, in message order; events that do not parse are skipped (the hub stored
    /// the message as schema-invalid then, and does not ingest it at all).
    pub events: Vec<Event>,
}

/// Parses a security message body; `None` when it is not one (the caller ingests only
/// messages the hub found schema-valid, so this is the rare corrupt row).
pub fn parse_message(body: &[u8]) -> Option<Ingested> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let Value::Object(mut members) = value else {
        return None;
    };
    let agent_version = members.get("AgentVersion")?.as_str()?.to_owned();
    let Value::Array(events) = members.remove("Events")? else {
        return None;
    };
    // Each event from the value already parsed: the body is parsed once.
    let events = events
        .into_iter()
        .filter_map(|e| Event::from_value(e).ok())
        .collect();
    Some(Ingested {
        agent_version,
        events,
    })
}

/// Longest summary kept, in characters.
pub const MAX_SUMMARY_CHARS: usize = 240;

/// A one-line human summary of an event (what the device page lists).
pub fn summary(event: &Event) -> String {
    let items = event.payload();
    let first = items.first().map(item_summary).unwrap_or_default();
    let text = match items.len() {
        0 => "(empty snapshot)".to_owned(),
        1 => first,
        n if event.name().is_snapshot() => format!("{n} items"),
        n => format!("{first} (+{} more)", n - 1),
    };
    text.chars().take(MAX_SUMMARY_CHARS).collect()
}

fn item_summary(item: &PayloadItem) -> String {
    match item {
        PayloadItem::ProcessCreate(p) => format!(
            "uid {} pid {} {}: {}",
            p.user_id, p.process_id, p.executable, p.command_line
        ),
        PayloadItem::ProcessTerminate(p) => {
            format!("pid {} {} exited {}", p.process_id, p.executable, p.exit_status)
        }
        PayloadItem::ConnectionCreate(c) => format!(
            "{} {} {}:{} by {}",
            c.direction, c.protocol, c.remote_address, c.remote_port, c.executable
        ),
        PayloadItem::Login(l) => format!(
            "{} {} of {} via {}{}",
            l.operation,
            l.result,
            l.user_name,
            l.executable,
            l.remote_address.map(|a| format!(" from {a}")).unwrap_or_default()
        ),
        PayloadItem::ListeningPorts(p) => format!(
            "{} {}:{}",
            p.protocol,
            p.local_address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "*".into()),
            p.local_port
        ),
        PayloadItem::LocalUsers(u) => format!("{} (uid {})", u.user_name, u.user_id),
        PayloadItem::ConfigurationError(c) => {
            format!("{} {}: {}", c.error_type, c.configuration_name, c.message)
        }
        PayloadItem::DroppedEventsStatistics(d) => format!(
            "{} queue: {} collected, {} dropped",
            d.queue, d.collected_events, d.dropped_events
        ),
        PayloadItem::MessageStatistics(m) => format!("{} sent, {} failed", m.messages_sent, m.total_failed),
        PayloadItem::OSBaseline(b) => format!("{} {}: {}", b.result, b.cce_id, b.description),
        PayloadItem::Diagnostic(d) => format!("{}: {}", d.severity, d.message),
        PayloadItem::FirewallConfiguration(f) => format!("{:?} {}", f.chain_name, f.action),
        PayloadItem::SystemInformation(s) => format!(
            "{} {}",
            s.os_name.as_deref().unwrap_or(""),
            s.os_version.as_deref().unwrap_or("")
        ),
        PayloadItem::ConnectedHardware(h) => format!("{} {}", h.hardware_category, h.hardware_name),
    }
}
