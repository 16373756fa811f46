//! The kernel side of the eBPF process source: loads `bpf/process.bpf.o` (compiled from
//! `bpf/process.bpf.c` by `scripts/build-bpf`, committed beside it) with the pure-Rust loader
//! `aya`, attaches its three raw tracepoints (`sched_process_exec`, `sched_process_fork`,
//! `sched_process_exit`), and reads the records they put in one ring buffer, in batches.
//!
//! Loading needs the kernel's BTF (`/sys/kernel/btf/vmlinux`, for the CO-RE relocations),
//! `bpf(2)` with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and a kernel of 5.8 or later
//! (ring buffer). Each failure is a [`LoadError`] that names the step, so the collector can say
//! why it runs its fallback. The parsing of records is pure and tested on bytes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::links::FdLink;
use aya::programs::RawTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use super::execfacts::{self, ExecFacts};

/// The compiled programs (see `scripts/build-bpf`).
static PROCESS_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/process.bpf.o");

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The program and the tracepoint it attaches to.
const PROGRAMS: [(&str, &str); 3] = [
    ("process_fork", "sched_process_fork"),
    ("process_exit", "sched_process_exit"),
    ("process_exec", "sched_process_exec"),
];

/// The ring buffer's size: about a second of records at 2,000 execs/s (exec, fork and exit),
/// mapped whole into the agent (it counts in its RSS).
pub const RING_BYTES: u32 = 256 * 1024;
/// Indexes of the `counts` map (`bpf/process.bpf.c`).
const COUNT_OFFERED: u32 = 0;
const COUNT_DROPPED: u32 = 1;

/// Argument bytes the kernel program copies: one more than the command-line cap
/// (`procinfo::MAX_CMDLINE`), so that a cut is seen exactly as a `/proc` read sees it.
pub const ARGV_READ: usize = 8193;

/// Why the eBPF source could not start. `Display` is what the operator sees in
/// `reported.twinguard` and `doctor`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel publishes no BTF, so CO-RE relocations cannot be resolved.
    #[error("no kernel BTF ({KERNEL_BTF} is missing: CONFIG_DEBUG_INFO_BTF is not set)")]
    NoBtf,
    /// The kernel's BTF could not be parsed.
    #[error("kernel BTF unreadable")]
    Btf(#[source] aya::BtfError),
    /// Loading the object or creating its maps failed (EPERM: missing CAP_BPF/CAP_PERFMON or
    /// locked down; an old kernel without ring buffers).
    #[error("loading the eBPF object failed")]
    Object(#[source] Box<aya::EbpfError>),
    /// The verifier refused a program, or attaching it failed.
    #[error("eBPF program {program} ({step}) failed")]
    Program {
        /// The program's name.
        program: &'static str,
        /// `load` or `attach`.
        step: &'static str,
        /// The loader's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The programs do not support this architecture (they read its saved registers).
    #[error("the eBPF programs do not support the {0} architecture")]
    Unsupported(&'static str),
    /// A map of the object is missing or of another type (a build mistake).
    #[error("eBPF map {0} missing or of the wrong type")]
    Map(&'static str),
}

impl LoadError {
    /// The whole cause chain in one line (the loader's errors nest the errno deep inside).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// Loaded and attached eBPF programs (one object: the process programs, or the connection
/// programs of [`super::ebpf_connection`]) with their ring buffer `events` and their per-CPU
/// `counts` of records offered and dropped. Dropping it detaches the programs and frees the
/// maps.
pub struct Probes {
    /// Owns the programs and their links; dropped last.
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    counts: PerCpuArray<MapData, u64>,
    /// Each program's link (closing it detaches the program) and the program's id.
    links: Vec<Attached>,
}

/// An attached program.
struct Attached {
    program: &'static str,
    link: FdLink,
    program_id: u32,
}

/// The process programs (`bpf/process.bpf.o`).
pub type ProcessProbes = Probes;

/// The kernel programs' record counts since loading, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records the programs offered to the ring buffer.
    pub offered: u64,
    /// Of those, the ones that found it full (lost).
    pub dropped: u64,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

/// What to load: an object, its raw tracepoint programs and the `u32` globals (`.rodata`) the
/// loader sets before the verifier sees them.
pub(crate) struct ObjectSpec {
    /// The compiled object.
    pub object: &'static [u8],
    /// (program, raw tracepoint) pairs, attached in this order.
    pub programs: &'static [(&'static str, &'static str)],
    /// Read-only globals to set (they must exist in the object).
    pub globals: Vec<(&'static str, u32)>,
}

impl Probes {
    /// Loads the process programs, attaches them and maps their ring buffer ([`RING_BYTES`]).
    /// The kernel's BTF is read for the relocations and freed before this returns.
    pub fn load() -> Result<ProcessProbes, LoadError> {
        Self::load_with_ring(RING_BYTES)
    }

    /// As [`ProcessProbes::load`] with a ring buffer of `ring_bytes` (a power of two, at least
    /// a page): tests force overflows with a small one.
    pub fn load_with_ring(ring_bytes: u32) -> Result<ProcessProbes, LoadError> {
        Self::load_object(
            &ObjectSpec {
                object: PROCESS_OBJECT,
                programs: &PROGRAMS,
                globals: Vec::new(),
            },
            ring_bytes,
        )
    }

    /// Loads `spec`'s object with a ring buffer of `ring_bytes`, attaches its programs and
    /// maps its ring buffer and counters.
    pub(crate) fn load_object(spec: &ObjectSpec, ring_bytes: u32) -> Result<Probes, LoadError> {
        // One load at a time: each parses the kernel's BTF (some 30 MiB while it lasts), and
        // the process and connection collectors start together.
        static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = LOADING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !Path::new(KERNEL_BTF).exists() {
            return Err(LoadError::NoBtf);
        }
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf)).map_max_entries("events", ring_bytes);
        for (name, value) in &spec.globals {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader
            .load(spec.object)
            .map_err(|e| LoadError::Object(Box::new(e)))?;
        drop(btf);
        let mut links = Vec::with_capacity(spec.programs.len());
        for &(program, tracepoint) in spec.programs {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok())
                .ok_or(LoadError::Map(program))?;
            prog.load().map_err(|e| LoadError::Program {
                program,
                step: "load",
                source: Box::new(e),
            })?;
            let step = |step: &'static str| {
                move |e: aya::programs::ProgramError| LoadError::Program {
                    program,
                    step,
                    source: Box::new(e),
                }
            };
            let id = prog.attach(tracepoint).map_err(step("attach"))?;
            // The link is kept apart from the program so the periodic check can ask the
            // kernel about it.
            let link = FdLink::from(prog.take_link(id).map_err(step("attach"))?);
            let program_id = prog.info().map_err(step("info"))?.id();
            links.push(Attached {
                program,
                link,
                program_id,
            });
        }
        let ring = ebpf
            .take_map("events")
            .and_then(|m| RingBuf::try_from(m).ok())
            .ok_or(LoadError::Map("events"))?;
        let counts = ebpf
            .take_map("counts")
            .and_then(|m| PerCpuArray::try_from(m).ok())
            .ok_or(LoadError::Map("counts"))?;
        release_free_heap();
        Ok(Probes {
            _ebpf: ebpf,
            ring,
            counts,
            links,
        })
    }

    /// Asks the kernel whether each program is still attached (`BPF_OBJ_GET_INFO_BY_FD` on its
    /// link: the link exists and holds our program). Err names the first that is not. Links that
    /// some tool detached (`bpftool link detach`, where the kernel allows it for the link type)
    /// show here; raw tracepoint links cannot be detached from outside on Linux 6.18 (EOPNOTSUPP),
    /// so the collector's self-test exec is the check that covers a program that stopped working
    /// for any other reason.
    pub fn check_links(&self) -> Result<(), String> {
        for a in &self.links {
            match a.link.info() {
                Ok(info) if info.program_id() == a.program_id => {}
                Ok(info) => {
                    return Err(format!(
                        "eBPF program {} is detached (its link holds program {} instead of {})",
                        a.program,
                        info.program_id(),
                        a.program_id
                    ))
                }
                Err(e) => return Err(format!("eBPF program {}: its link is unreadable: {e}", a.program)),
            }
        }
        Ok(())
    }

    /// Detaches the program `name` for real (closes its link), as someone tampering with the
    /// agent would: the hidden test hook of the periodic check. Whether it was attached.
    pub fn detach(&mut self, name: &str) -> bool {
        let before = self.links.len();
        self.links.retain(|a| a.program != name);
        self.links.len() != before
    }

    /// Waits up to `timeout` for the kernel to signal data (it does so only once a batch of
    /// bytes waits; the caller drains after every wait anyway).
    pub fn wait(&self, timeout: Duration) -> io::Result<()> {
        let fd: RawFd = self.ring.as_raw_fd();
        super::poll::poll(Some((fd, false)), None, timeout).map(drop)
    }

    /// Hands every record waiting in the ring buffer to `take`, at most `max`; returns how
    /// many were taken.
    pub fn drain(&mut self, max: usize, take: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            take(&item);
            n += 1;
        }
        n
    }

    /// What the kernel programs offered and dropped since loading.
    pub fn counts(&self) -> io::Result<RecordCounts> {
        let sum = |index: u32| -> io::Result<u64> {
            let values = self
                .counts
                .get(&index, 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            Ok(values.iter().fold(0u64, |sum, v| sum.saturating_add(*v)))
        };
        Ok(RecordCounts {
            offered: sum(COUNT_OFFERED)?,
            dropped: sum(COUNT_DROPPED)?,
        })
    }
}

/// Runs this program's own binary (`/proc/self/exe --version MARKER`, output discarded; it may
/// well refuse the extra argument) and waits for it: the exec the eBPF source's self-test must
/// see, recognised by `marker` in its arguments. Returns the child's pid in this process's pid
/// namespace.
pub fn run_marker(marker: &str) -> io::Result<u32> {
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg("--version")
        .arg(marker)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    child.wait()?;
    Ok(pid)
}

/// Gives the heap freed after loading back to the system: parsing the kernel's BTF takes some
/// 20 MiB in many small allocations, which glibc's allocator would otherwise keep (in the
/// loading thread's arena) for the agent's whole life. musl's allocator returns them itself.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it has no
    // preconditions and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A record of the kernel programs (layout: `bpf/process.bpf.c`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A successful exec.
    Exec(ExecRecord),
    /// A new process (not a thread).
    Fork {
        /// Its pid.
        tgid: u32,
        /// Its parent's pid.
        ppid: u32,
        /// `CLOCK_MONOTONIC` ns.
        ktime_ns: u64,
    },
    /// The exit of a process (its thread-group leader).
    Exit {
        /// Its pid.
        tgid: u32,
        /// The wait status (`exit code << 8 | signal | 0x80 if core dumped`).
        exit_code: u32,
        /// `CLOCK_MONOTONIC` ns.
        ktime_ns: u64,
    },
}

/// What the kernel saw of an exec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRecord {
    /// The process (thread-group) id.
    pub tgid: u32,
    /// The parent process's id at the time of the exec.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Effective user id (after a setuid exec).
    pub euid: u32,
    /// Real group id.
    pub gid: u32,
    /// The process's cgroup (v2) id.
    pub cgroup_id: u64,
    /// `CLOCK_MONOTONIC` ns.
    pub ktime_ns: u64,
    /// The executable's path as `/proc/<pid>/exe` shows it; `None` when the kernel could not
    /// walk it whole (deeper than the program's bound).
    pub executable: Option<String>,
    /// The argument bytes (NUL-separated), at most [`ARGV_READ`].
    pub argv: Vec<u8>,
    /// Descriptors 0-2, the executable's state (deleted, memfd, directory writable by
    /// others) and the container named by the cgroup.
    pub facts: ExecFacts,
}

const KIND_EXEC: u32 = 1;
const KIND_FORK: u32 = 2;
const KIND_EXIT: u32 = 3;
const FLAG_PATH_CUT: u32 = 1;
const FLAG_NO_MM: u32 = 2;
const FLAG_PSEUDO: u32 = 4;
const FLAG_DELETED: u32 = 8;
const FLAG_DIR_WRITABLE: u32 = 16;
/// Where an exec record's descriptor modes (3 x u16) and devices (3 x u32) are.
const FD_MODES: usize = 48;
const FD_RDEVS: usize = 56;
/// Where its cgroup names are: `CG_LEVELS` of `CG_NAME` bytes, each NUL-terminated.
const CGROUP_NAMES: usize = 72;
const CG_LEVELS: usize = 3;
const CG_NAME: usize = 96;
/// Bytes before an exec record's data.
const EXEC_HEADER: usize = CGROUP_NAMES + CG_LEVELS * CG_NAME;

/// A native-endian integer at `at` in a record; `None` past its end.
pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses one record; `None` for a record too short for its kind or of an unknown kind.
pub fn parse_record(b: &[u8]) -> Option<Record> {
    let (kind, tgid, ktime_ns) = (u32_at(b, 0)?, u32_at(b, 4)?, u64_at(b, 8)?);
    match kind {
        KIND_FORK => Some(Record::Fork {
            tgid,
            ppid: u32_at(b, 16)?,
            ktime_ns,
        }),
        KIND_EXIT => Some(Record::Exit {
            tgid,
            exit_code: u32_at(b, 16)?,
            ktime_ns,
        }),
        KIND_EXEC => {
            let path_len = usize::from(u16_at(b, 40)?);
            let argv_len = usize::from(u16_at(b, 42)?);
            let flags = u32_at(b, 44)?;
            let path = b.get(EXEC_HEADER..EXEC_HEADER + path_len)?;
            let argv = b.get(EXEC_HEADER + path_len..EXEC_HEADER + path_len + argv_len)?;
            let whole = flags & (FLAG_PATH_CUT | FLAG_NO_MM) == 0;
            let pseudo = flags & FLAG_PSEUDO != 0;
            let mut facts = ExecFacts::default();
            for (i, slot) in facts.std_fds.iter_mut().enumerate() {
                let mode = u16_at(b, FD_MODES + 2 * i)?;
                // The kernel's dev_t: the major number above 20 bits of minor.
                let major = u32_at(b, FD_RDEVS + 4 * i)? >> 20;
                *slot = execfacts::fd_kind(u32::from(mode), major);
            }
            let names = b.get(CGROUP_NAMES..EXEC_HEADER)?;
            let names: Vec<&str> = names
                .chunks(CG_NAME)
                .map(|n| n.split(|&c| c == 0).next().unwrap_or_default())
                .take_while(|n| !n.is_empty())
                .filter_map(|n| std::str::from_utf8(n).ok())
                .collect();
            facts.container_id = execfacts::container_id(&names).map(str::to_owned);
            let mut executable = whole.then(|| join_path(path));
            if let Some(exe) = executable.as_mut() {
                // As `/proc/<pid>/exe` shows them: a memfd is `/memfd:NAME (deleted)`.
                if pseudo || flags & FLAG_DELETED != 0 {
                    exe.push_str(execfacts::DELETED);
                }
                facts.executable_memfd = pseudo && exe.starts_with("/memfd:");
                facts.executable_deleted = !pseudo && flags & FLAG_DELETED != 0;
            }
            facts.writable_directory = !pseudo && flags & FLAG_DIR_WRITABLE != 0;
            Some(Record::Exec(ExecRecord {
                tgid,
                ppid: u32_at(b, 16)?,
                uid: u32_at(b, 20)?,
                euid: u32_at(b, 24)?,
                gid: u32_at(b, 28)?,
                cgroup_id: u64_at(b, 32)?,
                ktime_ns,
                executable,
                argv: argv.to_vec(),
                facts,
            }))
        }
        _ => None,
    }
}

/// The path from the components the kernel walked leaf first, each followed by a NUL:
/// `true\0bin\0usr\0` is `/usr/bin/true`. Invalid UTF-8 is kept lossily, as `/proc` reads are.
pub fn join_path(components: &[u8]) -> String {
    let parts: Vec<&[u8]> = components.split(|&b| b == 0).filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return "/".into();
    }
    let mut path = Vec::with_capacity(components.len() + 1);
    for part in parts.iter().rev() {
        path.push(b'/');
        path.extend_from_slice(part);
    }
    String::from_utf8_lossy(&path).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(kind: u32, tgid: u32, t: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&tgid.to_ne_bytes());
        b.extend_from_slice(&t.to_ne_bytes());
        b
    }

    fn exec(path: &[u8], argv: &[u8], flags: u32) -> Vec<u8> {
        let mut b = header(KIND_EXEC, 42, 7);
        for v in [1u32, 1000, 0, 100] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&99u64.to_ne_bytes());
        b.extend_from_slice(&(path.len() as u16).to_ne_bytes());
        b.extend_from_slice(&(argv.len() as u16).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        // Descriptors: a socket, not open, a pseudo-terminal (136, 3).
        for mode in [0o140_777u16, 0, 0o020_620, 0] {
            b.extend_from_slice(&mode.to_ne_bytes());
        }
        for rdev in [0u32, 0, (136 << 20) | 3, 0] {
            b.extend_from_slice(&rdev.to_ne_bytes());
        }
        for name in [&b"init.scope"[..], b"x", b""] {
            let mut n = name.to_vec();
            n.resize(CG_NAME, 0);
            b.extend_from_slice(&n);
        }
        assert_eq!(b.len(), EXEC_HEADER);
        b.extend_from_slice(path);
        b.extend_from_slice(argv);
        b
    }

    #[test]
    fn exec_records_carry_ids_path_and_arguments() {
        let b = exec(b"true\0bin\0usr\0", b"/bin/true\0a b\0", 0);
        let Some(Record::Exec(r)) = parse_record(&b) else {
            panic!()
        };
        assert_eq!((r.tgid, r.ppid, r.uid, r.euid, r.gid), (42, 1, 1000, 0, 100));
        assert_eq!((r.cgroup_id, r.ktime_ns), (99, 7));
        assert_eq!(r.executable.as_deref(), Some("/usr/bin/true"));
        assert_eq!(r.argv, b"/bin/true\0a b\0");
        assert_eq!(
            r.facts.std_fds,
            [
                Some(execfacts::FdKind::Socket),
                None,
                Some(execfacts::FdKind::Tty)
            ]
        );
        assert_eq!(r.facts.container_id, None);
        assert!(!r.facts.executable_deleted && !r.facts.writable_directory);
        let deleted = exec(b"evil\0x\0tmp\0", b"", FLAG_DELETED | FLAG_DIR_WRITABLE);
        let Some(Record::Exec(r)) = parse_record(&deleted) else {
            panic!()
        };
        assert_eq!(r.executable.as_deref(), Some("/tmp/x/evil (deleted)"));
        assert!(r.facts.executable_deleted && r.facts.writable_directory);
        let memfd = exec(b"memfd:payload\0", b"", FLAG_PSEUDO | FLAG_DELETED);
        let Some(Record::Exec(r)) = parse_record(&memfd) else {
            panic!()
        };
        assert_eq!(r.executable.as_deref(), Some("/memfd:payload (deleted)"));
        assert!(r.facts.executable_memfd && !r.facts.executable_deleted);
        let cut = exec(b"x\0", b"", FLAG_PATH_CUT);
        let Some(Record::Exec(r)) = parse_record(&cut) else {
            panic!()
        };
        assert_eq!(r.executable, None, "a path walked only in part is not reported");
    }

    #[test]
    fn short_or_unknown_records_are_refused_not_panicked_on() {
        let b = exec(b"true\0", b"/bin/true\0", 0);
        for n in 0..b.len() {
            assert_eq!(parse_record(&b[..n]), None, "{n} bytes");
        }
        assert_eq!(parse_record(&header(9, 1, 1)), None);
        let mut fork = header(KIND_FORK, 5, 3);
        fork.extend_from_slice(&4u32.to_ne_bytes());
        assert_eq!(
            parse_record(&fork),
            Some(Record::Fork {
                tgid: 5,
                ppid: 4,
                ktime_ns: 3
            })
        );
        let mut exit = header(KIND_EXIT, 5, 3);
        exit.extend_from_slice(&(9u32 << 8).to_ne_bytes());
        assert_eq!(
            parse_record(&exit),
            Some(Record::Exit {
                tgid: 5,
                exit_code: 9 << 8,
                ktime_ns: 3
            })
        );
    }

    #[test]
    fn paths_are_rebuilt_root_first() {
        assert_eq!(join_path(b"true\0bin\0usr\0"), "/usr/bin/true");
        assert_eq!(join_path(b""), "/");
        assert_eq!(join_path(b"a b\0\xff\0"), "/\u{fffd}/a b");
    }
}
