//! What the rules say: the rules by id ([`Rule`], built-in and custom), how bad each is
//! ([`Severity`]), and one occurrence ([`Finding`]), which the store folds into alerts. Shared
//! by the built-in rules (`rules`) and the custom ones (`custom`). Pure.

/// How bad an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Act now: an intrusion or a disabled defence.
    High,
    /// Look today.
    Medium,
    /// Worth knowing.
    Low,
    /// For the record.
    Informational,
}

impl Severity {
    /// Every severity, worst first.
    pub const ALL: [Severity; 4] = [
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Informational,
    ];

    /// The name used in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Informational => "informational",
        }
    }

    /// Reads [`Severity::as_str`] (any case).
    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }
}

/// The built-in rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Several failed logins of a user from one source, then a success.
    SuccessfulBruteForce,
    /// Several failed logins of a user from one source within the window.
    FailedBruteForce,
    /// A successful login with no remote address (console, `su`).
    SuccessfulLocalLogin,
    /// A shell with its input and output on a socket, by its usual command lines.
    ReverseShell,
    /// A program run from /tmp, /var/tmp, /dev/shm (or from memory, or deleted).
    TempDirExecution,
    /// Firewall rules flushed or the firewall service stopped, or a snapshot that lost them.
    FirewallDisabled,
    /// Kernel auditing switched off or its daemon stopped.
    AuditDisabled,
    /// A shell history file removed, emptied or redirected.
    HistoryCleared,
    /// A local user created.
    UserAdded,
    /// A user added to a privileged group.
    PrivilegedGroup,
    /// A listening port this device had not opened before.
    NewListeningPort,
    /// A known attack or crypto-mining tool run.
    AttackTool,
    /// An SSH or socat port forward.
    PortForwarding,
    /// No message from the device for longer than its expected frequency allows.
    DeviceSilent,
    /// The agent rejected its desired configuration.
    ConfigurationRejected,
    /// The agent lost events, runs a collector on a fallback source, has not applied its
    /// desired configuration for too long, or went offline without a clean stop.
    MonitoringDegraded,
    /// An executable connected out to a destination it had not used after the learning period.
    NewOutboundDestination,
    /// A compiler or linker writing its output into a temporary directory.
    SuspiciousCompilation,
    /// A custom rule's count (failed logins, connections, processes) outside its allowed range.
    CustomCountRange,
    /// Something a custom rule's allow-list does not allow (a process, a remote address, a
    /// listening port).
    CustomNotAllowed,
}

impl Rule {
    /// Every built-in rule.
    pub const ALL: [Rule; 20] = [
        Rule::SuccessfulBruteForce,
        Rule::FailedBruteForce,
        Rule::SuccessfulLocalLogin,
        Rule::ReverseShell,
        Rule::TempDirExecution,
        Rule::FirewallDisabled,
        Rule::AuditDisabled,
        Rule::HistoryCleared,
        Rule::UserAdded,
        Rule::PrivilegedGroup,
        Rule::NewListeningPort,
        Rule::AttackTool,
        Rule::PortForwarding,
        Rule::DeviceSilent,
        Rule::ConfigurationRejected,
        Rule::MonitoringDegraded,
        Rule::NewOutboundDestination,
        Rule::SuspiciousCompilation,
        Rule::CustomCountRange,
        Rule::CustomNotAllowed,
    ];

    /// The rule's id in the API and the database.
    pub fn id(self) -> &'static str {
        match self {
            Rule::SuccessfulBruteForce => "successful-brute-force",
            Rule::FailedBruteForce => "failed-brute-force",
            Rule::SuccessfulLocalLogin => "successful-local-login",
            Rule::ReverseShell => "reverse-shell",
            Rule::TempDirExecution => "temp-dir-execution",
            Rule::FirewallDisabled => "firewall-disabled",
            Rule::AuditDisabled => "audit-disabled",
            Rule::HistoryCleared => "history-cleared",
            Rule::UserAdded => "user-added",
            Rule::PrivilegedGroup => "privileged-group",
            Rule::NewListeningPort => "new-listening-port",
            Rule::AttackTool => "attack-tool",
            Rule::PortForwarding => "port-forwarding",
            Rule::DeviceSilent => "device-silent",
            Rule::ConfigurationRejected => "configuration-rejected",
            Rule::MonitoringDegraded => "monitoring-degraded",
            Rule::NewOutboundDestination => "new-outbound-destination",
            Rule::SuspiciousCompilation => "suspicious-compilation",
            Rule::CustomCountRange => "custom-count-range",
            Rule::CustomNotAllowed => "custom-not-allowed",
        }
    }

    /// Reads [`Rule::id`].
    pub fn parse(id: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.id() == id)
    }

    /// A short title for lists.
    pub fn title(self) -> &'static str {
        match self {
            Rule::SuccessfulBruteForce => "Successful brute-force login",
            Rule::FailedBruteForce => "Brute-force login attempts",
            Rule::SuccessfulLocalLogin => "Successful local login",
            Rule::ReverseShell => "Possible reverse shell",
            Rule::TempDirExecution => "Program run from a temporary directory",
            Rule::FirewallDisabled => "Firewall disabled",
            Rule::AuditDisabled => "Audit logging disabled",
            Rule::HistoryCleared => "Shell history cleared",
            Rule::UserAdded => "Local user added",
            Rule::PrivilegedGroup => "User added to a privileged group",
            Rule::NewListeningPort => "New listening port",
            Rule::AttackTool => "Attack or crypto-mining tool run",
            Rule::PortForwarding => "Port forwarding",
            Rule::DeviceSilent => "Device silent",
            Rule::ConfigurationRejected => "Agent configuration rejected",
            Rule::MonitoringDegraded => "Monitoring degraded",
            Rule::NewOutboundDestination => "New outbound destination",
            Rule::SuspiciousCompilation => "Compilation in a temporary directory",
            Rule::CustomCountRange => "Count outside its allowed range (custom rule)",
            Rule::CustomNotAllowed => "Not on the allow-list (custom rule)",
        }
    }

    /// How bad it is.
    pub fn severity(self) -> Severity {
        match self {
            Rule::SuccessfulBruteForce
            | Rule::ReverseShell
            | Rule::FirewallDisabled
            | Rule::AuditDisabled
            | Rule::AttackTool => Severity::High,
            Rule::FailedBruteForce
            | Rule::TempDirExecution
            | Rule::HistoryCleared
            | Rule::PrivilegedGroup
            | Rule::PortForwarding
            | Rule::DeviceSilent
            | Rule::ConfigurationRejected
            | Rule::SuspiciousCompilation
            | Rule::CustomCountRange
            | Rule::CustomNotAllowed => Severity::Medium,
            Rule::UserAdded
            | Rule::NewListeningPort
            | Rule::MonitoringDegraded
            | Rule::NewOutboundDestination => Severity::Low,
            Rule::SuccessfulLocalLogin => Severity::Informational,
        }
    }

    /// What the operator should do.
    pub fn remediation(self) -> &'static str {
        match self {
            Rule::SuccessfulBruteForce => "Treat the account as compromised: change its password or keys, end its sessions, review what it ran, and limit login attempts (fail2ban, pam_faillock) or disable password logins.",
            Rule::FailedBruteForce => "Block the source, limit login attempts (pam_faillock, fail2ban) and prefer key-based SSH logins.",
            Rule::SuccessfulLocalLogin => "Confirm that someone with physical or console access was expected on this device.",
            Rule::ReverseShell => "Isolate the device, kill the process and its parent, find how it was started (the parent process), and rotate the credentials it could read.",
            Rule::TempDirExecution => "Find where the program came from, remove it, and mount /tmp, /var/tmp and /dev/shm with noexec.",
            Rule::FirewallDisabled => "Restore the firewall rules (nft -f /etc/nftables.conf), re-enable the service, and find who disabled it.",
            Rule::AuditDisabled => "Re-enable auditing (auditctl -e 1, systemctl start auditd), make the rules immutable (-e 2), and find who disabled it.",
            Rule::HistoryCleared => "Someone hid their commands: review logins and process events around this time.",
            Rule::UserAdded => "Confirm the new account is expected; otherwise lock it (usermod -L) and investigate.",
            Rule::PrivilegedGroup => "Confirm the change is expected; otherwise remove the user from the group (gpasswd -d USER GROUP) and investigate.",
            Rule::NewListeningPort => "Confirm the service is expected; otherwise stop it, or bind it to the interface that needs it only.",
            Rule::AttackTool => "Kill the process, remove the tool, and find how it reached the device.",
            Rule::PortForwarding => "Confirm the tunnel is expected; otherwise kill it and disable forwarding (AllowTcpForwarding no).",
            Rule::DeviceSilent => "Check the device's power, network and agent (systemctl status twinguard); a device that stops reporting may have been tampered with.",
            Rule::ConfigurationRejected => "Fix the desired configuration (twinguard validate, or the device page's errors); the agent keeps the previous one meanwhile.",
            Rule::MonitoringDegraded => "See the device's reported collector status and twinguard doctor on the device; raise the cache size or message frequency if events are dropped; check that the agent runs and reaches the hub.",
            Rule::NewOutboundDestination => "Confirm the program is expected to talk to this destination; otherwise block it in the firewall and find why the program connects there.",
            Rule::SuspiciousCompilation => "Find who compiled what (the process's user and parent), remove the output, and remove compilers from production devices.",
            Rule::CustomCountRange => "Compare the count with the custom rule's range: investigate the device, or widen the range in the rules file if the activity is expected.",
            Rule::CustomNotAllowed => "Investigate the device, or add the item to the custom rule's allow-list in the rules file if it is expected.",
        }
    }
}

/// What a rule found: one occurrence, which the store folds into an alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Which rule.
    pub rule: Rule,
    /// What makes this occurrence distinct within the rule and device (a user and source, a
    /// port, a path); occurrences with the same key fold into one alert.
    pub key: String,
    /// When it happened (the event's time), Unix milliseconds.
    pub time_ms: i64,
    /// The events that match (their `Id`s).
    pub event_ids: Vec<String>,
    /// The fields that matched, by name.
    pub fields: Vec<(String, String)>,
}
