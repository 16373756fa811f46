//! What the agent sends: `struct audit_status` encoded and decoded, audit rules
//! (`struct audit_rule_data`) for the syscalls ConnectionCreate watches, and the syscall
//! numbers of this architecture. Pure.

use crate::sys::netlink;

/// Rule fields (`AUDIT_ARCH` ...) and the operator we use.
pub(super) const FIELD_ARCH: u32 = 11;

pub(super) const FIELD_EXIT: u32 = 103;

pub(super) const FIELD_SUCCESS: u32 = 104;

pub(super) const FIELD_FILTERKEY: u32 = 210;

/// `AUDIT_ARG0`: the syscall's first argument.
pub(super) const FIELD_ARG0: u32 = 200;

pub(super) const OP_EQUAL: u32 = 0x4000_0000;

/// `AUDIT_FILTER_EXIT`, `AUDIT_ALWAYS`.
pub(super) const FILTER_EXIT: u32 = 0x04;

pub(super) const ACTION_ALWAYS: u32 = 2;

/// `AUDIT_BITMASK_SIZE`, `AUDIT_MAX_FIELDS`.
pub(super) const BITMASK_WORDS: usize = 64;

pub(super) const MAX_FIELDS: usize = 64;

/// Offset of `buflen` / `buf` in `struct audit_rule_data`.
pub(super) const RULE_BUFLEN_AT: usize = 12 + 4 * (BITMASK_WORDS + 3 * MAX_FIELDS);

pub(super) const RULE_BUF_AT: usize = RULE_BUFLEN_AT + 4;

/// Rule fields whose value is a string in `buf` (linux/audit.h: SUBJ_*/OBJ_* LSM fields,
/// WATCH, DIR, EXE, FILTERKEY), in the order the kernel packs them.
pub(super) const STRING_FIELDS: [u32; 14] = [13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 105, 107, 112, 210];

/// The audit architecture of this build's native syscalls (`AUDIT_ARCH_*`).
pub const fn native_arch() -> u32 {
    if cfg!(target_arch = "x86_64") {
        0xC000_003E
    } else if cfg!(target_arch = "aarch64") {
        0xC000_00B7
    } else if cfg!(target_arch = "riscv64") {
        0xC000_00F3
    } else if cfg!(target_arch = "arm") {
        0x4000_0028
    } else if cfg!(target_arch = "x86") {
        0x4000_0003
    } else {
        0
    }
}

/// The syscall numbers of `connect` on this architecture.
pub(crate) fn connect_syscalls() -> Vec<u32> {
    vec![libc::SYS_connect as u32]
}

/// The syscall number of `socket` on this architecture.
pub(crate) fn socket_syscalls() -> Vec<u32> {
    vec![libc::SYS_socket as u32]
}

/// The syscall number of `listen` on this architecture.
pub(crate) fn listen_syscalls() -> Vec<u32> {
    vec![libc::SYS_listen as u32]
}

/// The syscall numbers of `accept` and `accept4` on this architecture (32-bit x86 has only
/// `accept4` as a direct syscall).
pub(crate) fn accept_syscalls() -> Vec<u32> {
    #[cfg(not(target_arch = "x86"))]
    {
        vec![libc::SYS_accept as u32, libc::SYS_accept4 as u32]
    }
    #[cfg(target_arch = "x86")]
    {
        vec![libc::SYS_accept4 as u32]
    }
}

/// The name of a connection syscall number, for `ExtraDetails.Syscall`.
pub(crate) fn syscall_name(nr: u32) -> &'static str {
    if connect_syscalls().contains(&nr) {
        "connect"
    } else if socket_syscalls().contains(&nr) {
        "socket"
    } else if listen_syscalls().contains(&nr) {
        "listen"
    } else if nr == libc::SYS_accept4 as u32 {
        "accept4"
    } else if accept_syscalls().contains(&nr) {
        "accept"
    } else {
        "other"
    }
}

/// `struct audit_status` (the fields we use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AuditStatus {
    /// 0 off, 1 on, 2 on and locked (no change until reboot).
    pub enabled: u32,
    /// What the kernel does when it must drop records (0 silent, 1 printk, 2 panic).
    pub failure: u32,
    /// The registered audit daemon's pid, 0 when none.
    pub pid: u32,
    /// Records per second, 0 unlimited.
    pub rate_limit: u32,
    /// Most records queued for the daemon.
    pub backlog_limit: u32,
    /// Records the kernel lost since boot.
    pub lost: u32,
    /// Records queued now.
    pub backlog: u32,
}

/// Reads a status reply (the first 7 fields after `mask`; later kernels append more).
pub(crate) fn decode_status(b: &[u8]) -> Option<AuditStatus> {
    let f = |i: usize| netlink::u32_at(b, 4 * i);
    Some(AuditStatus {
        enabled: f(1)?,
        failure: f(2)?,
        pid: f(3)?,
        rate_limit: f(4)?,
        backlog_limit: f(5)?,
        lost: f(6)?,
        backlog: f(7)?,
    })
}

/// An `AUDIT_SET` payload changing the fields named in `mask`.
pub(crate) fn encode_status(mask: u32, s: &AuditStatus) -> Vec<u8> {
    let words = [
        mask,
        s.enabled,
        s.failure,
        s.pid,
        s.rate_limit,
        s.backlog_limit,
        0,
        0,
        0,
        0,
        0,
    ];
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// An exit-filter rule that always logs: syscalls, field conditions (all `==`), and a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Syscall numbers.
    pub syscalls: Vec<u32>,
    /// Conditions (field, value), in order.
    pub fields: Vec<(u32, u32)>,
    /// The key (`-k`), which tags the records the rule makes.
    pub key: String,
}

impl Rule {
    /// `-a exit,always -F arch=<native> -S <syscalls> -F success=1 -k <key>`.
    pub fn successful(syscalls: Vec<u32>, key: &str) -> Rule {
        Rule {
            syscalls,
            fields: vec![(FIELD_ARCH, native_arch()), (FIELD_SUCCESS, 1)],
            key: key.to_owned(),
        }
    }

    /// `-a exit,always -F arch=<native> -S <syscalls> -F a0=<a0> -F success=1 -k <key>`.
    pub(crate) fn successful_with_a0(syscalls: Vec<u32>, a0: u32, key: &str) -> Rule {
        Rule {
            syscalls,
            fields: vec![(FIELD_ARCH, native_arch()), (FIELD_ARG0, a0), (FIELD_SUCCESS, 1)],
            key: key.to_owned(),
        }
    }

    /// `-a exit,always -F arch=<native> -S <syscalls> -F exit=-<errno> -k <key>`.
    pub(crate) fn failing_with(syscalls: Vec<u32>, errno: i32, key: &str) -> Rule {
        Rule {
            syscalls,
            // The kernel compares the return value as a u32: -115 is 0xFFFFFF8D.
            fields: vec![(FIELD_ARCH, native_arch()), (FIELD_EXIT, (-errno) as u32)],
            key: key.to_owned(),
        }
    }

    /// The `struct audit_rule_data` bytes (for `AUDIT_ADD_RULE` / `AUDIT_DEL_RULE`).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let key = self.key.as_bytes();
        let mut b = vec![0u8; RULE_BUF_AT];
        let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut b, 0, FILTER_EXIT);
        put(&mut b, 4, ACTION_ALWAYS);
        let mut fields: Vec<(u32, u32)> = self.fields.clone();
        fields.push((FIELD_FILTERKEY, key.len() as u32));
        fields.truncate(MAX_FIELDS);
        put(&mut b, 8, fields.len() as u32);
        for &nr in &self.syscalls {
            let word = nr as usize / 32;
            if word < BITMASK_WORDS {
                let at = 12 + 4 * word;
                let old = netlink::u32_at(&b, at).unwrap_or(0);
                put(&mut b, at, old | 1 << (nr % 32));
            }
        }
        let fields_at = 12 + 4 * BITMASK_WORDS;
        let values_at = fields_at + 4 * MAX_FIELDS;
        let flags_at = values_at + 4 * MAX_FIELDS;
        for (i, (field, value)) in fields.iter().enumerate() {
            put(&mut b, fields_at + 4 * i, *field);
            put(&mut b, values_at + 4 * i, *value);
            put(&mut b, flags_at + 4 * i, OP_EQUAL);
        }
        put(&mut b, RULE_BUFLEN_AT, key.len() as u32);
        b.extend_from_slice(key);
        b
    }
}

/// The key of a rule as `AUDIT_LIST_RULES` returns it (`struct audit_rule_data`), if it has
/// one. String fields are packed into `buf` in field order, each `value` bytes long.
pub(crate) fn rule_key(b: &[u8]) -> Option<String> {
    let count = (netlink::u32_at(b, 8)? as usize).min(MAX_FIELDS);
    let buflen = netlink::u32_at(b, RULE_BUFLEN_AT)? as usize;
    let buf = b.get(RULE_BUF_AT..RULE_BUF_AT.checked_add(buflen)?)?;
    let fields_at = 12 + 4 * BITMASK_WORDS;
    let values_at = fields_at + 4 * MAX_FIELDS;
    let mut offset = 0usize;
    for i in 0..count {
        let field = netlink::u32_at(b, fields_at + 4 * i)?;
        if !STRING_FIELDS.contains(&field) {
            continue;
        }
        let len = netlink::u32_at(b, values_at + 4 * i)? as usize;
        let text = buf.get(offset..offset.checked_add(len)?)?;
        if field == FIELD_FILTERKEY {
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        offset += len;
    }
    None
}
