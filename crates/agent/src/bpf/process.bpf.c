// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * ProcessCreate / ProcessTerminate taken in the kernel, at the moment they happen:
 *
 * - raw_tracepoint/sched_process_exec: pid (tgid), parent tgid, real uid, effective uid, gid,
 *   cgroup id, the executable's path (mm->exe_file, walked dentry by dentry across mounts, leaf
 *   first, components separated by NUL; user space reverses them) and the argument bytes
 *   mm->arg_start..arg_end, at most ARGV_READ bytes.
 * - raw_tracepoint/sched_process_fork: a new process (not a thread) and its parent, so user space
 *   knows which executable a forked child that never execs runs.
 * - raw_tracepoint/sched_process_exit: the exit of a thread-group leader, with its wait status.
 *
 * Raw tracepoints need neither tracefs nor perf_event_open, and attach on kernels without
 * BTF-typed tracepoints; CO-RE relocations adapt the field offsets to the running kernel.
 * Records go to one ring buffer; a record that does not fit is counted in `counts` (per CPU), so
 * user space knows exactly how many were lost. Consumers are woken only once WAKE_BYTES wait:
 * user space also drains on a timer, so a quiet system costs no wake-up per event.
 *
 * The record layout is mirrored in crates/agent/src/sys/ebpf.rs (`parse_record`).
 */
#include "kernel.h"

#define KIND_EXEC 1
#define KIND_FORK 2
#define KIND_EXIT 3

/* Path components: each read with at most NAME_BYTES, into a buffer of PATH_BYTES (+ slack). */
#define PATH_BYTES 4096
#define NAME_BYTES 256
#define MAX_DEPTH 48
/* The user-space cap is 8192 bytes of arguments; one more byte tells whether it was cut. */
#define ARGV_READ 8193
#define ARGV_BYTES 8208
#define WAKE_BYTES (16 * 1024)

#define FLAG_PATH_CUT 1
#define FLAG_NO_MM 2

struct header {
	__u32 kind;
	__u32 tgid;
	__u64 ktime_ns;
};

struct exec_record {
	struct header h;
	__u32 ppid;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u64 cgroup_id;
	__u16 path_len;
	__u16 argv_len;
	__u32 flags;
	/* path_len bytes of path components, then argv_len bytes of arguments. */
	char data[2 * PATH_BYTES + ARGV_BYTES];
};

struct fork_record {
	struct header h;
	__u32 ppid;
	__u32 pad;
};

struct exit_record {
	struct header h;
	__u32 exit_code;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Per CPU: [COUNT_OFFERED] records offered to the ring buffer, [COUNT_DROPPED] those that found
 * it full. So user space can tell offered = delivered + dropped, exactly. */
#define COUNT_OFFERED 0
#define COUNT_DROPPED 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

/* Each CPU's exec record is built here: too large for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_record);
} scratch SEC(".maps");

static __u64 wake_flag(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKE_BYTES ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP;
}

static void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counts, &which);
	if (n)
		*n += 1;
}

static void output(void *record, __u64 size)
{
	count(COUNT_OFFERED);
	if (bpf_ringbuf_output(&events, record, size, wake_flag()) != 0)
		count(COUNT_DROPPED);
}

static __u32 tgid_of(struct task_struct *task)
{
	__s32 tgid = 0;
	READ_KERNEL(tgid, task->tgid);
	return (__u32)tgid;
}

/*
 * The path of `file` into r->data, leaf first, NUL after each component; its length goes to
 * r->path_len. The running length is kept in the map value, not in a register: the verifier
 * then sees an unknown (masked) offset each round instead of a new bound per round, which keeps
 * the number of states it explores small.
 */
static void path_of(struct file *file, struct exec_record *r)
{
	struct dentry *dentry = 0;
	struct vfsmount *vfsmnt = 0;
	READ_KERNEL(dentry, file->f_path.dentry);
	READ_KERNEL(vfsmnt, file->f_path.mnt);
	__u64 mnt_offset = __builtin_preserve_field_info(((struct mount *)0)->mnt, 0);
	struct mount *mnt = (struct mount *)((char *)vfsmnt - mnt_offset);
	volatile __u16 *len = &r->path_len;
	*len = 0;
	int depth;
	for (depth = 0; depth < MAX_DEPTH; depth++) {
		struct dentry *root = 0, *parent = 0;
		READ_KERNEL(root, vfsmnt->mnt_root);
		READ_KERNEL(parent, dentry->d_parent);
		if (dentry == root || dentry == parent) {
			struct mount *up = 0;
			READ_KERNEL(up, mnt->mnt_parent);
			if (dentry != root || up == mnt || up == 0)
				return; /* the root of the mount tree */
			/* Cross into the mount this one is mounted on. */
			READ_KERNEL(dentry, mnt->mnt_mountpoint);
			mnt = up;
			vfsmnt = (struct vfsmount *)((char *)up + mnt_offset);
			continue;
		}
		const unsigned char *name = 0;
		READ_KERNEL(name, dentry->d_name.name);
		__u32 off = *len;
		if (off >= PATH_BYTES - NAME_BYTES) {
			r->flags |= FLAG_PATH_CUT;
			return;
		}
		long n = bpf_probe_read_kernel_str(r->data + (off & (PATH_BYTES - 1)), NAME_BYTES, name);
		if (n <= 0) {
			r->flags |= FLAG_PATH_CUT;
			return;
		}
		*len = (__u16)(off + (__u32)n);
		dentry = parent;
	}
	r->flags |= FLAG_PATH_CUT;
}

SEC("raw_tracepoint/sched_process_exec")
int process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	struct exec_record *r = bpf_map_lookup_elem(&scratch, &zero);
	if (!r)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = 0;
	const struct cred *cred = 0;
	struct mm_struct *mm = 0;
	r->h.kind = KIND_EXEC;
	r->h.tgid = tgid_of(task);
	r->h.ktime_ns = bpf_ktime_get_ns();
	READ_KERNEL(parent, task->real_parent);
	r->ppid = parent ? tgid_of(parent) : 0;
	__u64 uid_gid = bpf_get_current_uid_gid();
	r->uid = (__u32)uid_gid;
	r->gid = (__u32)(uid_gid >> 32);
	r->euid = r->uid;
	READ_KERNEL(cred, task->cred);
	if (cred)
		READ_KERNEL(r->euid, cred->euid.val);
	r->cgroup_id = bpf_get_current_cgroup_id();
	r->flags = 0;
	r->path_len = 0;
	r->argv_len = 0;
	READ_KERNEL(mm, task->mm);
	if (!mm) {
		r->flags |= FLAG_NO_MM;
		output(r, sizeof(struct exec_record) - sizeof(r->data));
		return 0;
	}
	struct file *exe = 0;
	READ_KERNEL(exe, mm->exe_file);
	if (exe)
		path_of(exe, r);
	__u32 path_len = *(volatile __u16 *)&r->path_len;
	if (path_len > PATH_BYTES)
		path_len = PATH_BYTES;
	unsigned long start = 0, end = 0;
	READ_KERNEL(start, mm->arg_start);
	READ_KERNEL(end, mm->arg_end);
	__u32 argv_len = 0;
	if (end > start) {
		unsigned long want = end - start;
		argv_len = want > ARGV_READ ? ARGV_READ : (__u32)want;
		if (bpf_probe_read_user(r->data + (path_len & (2 * PATH_BYTES - 1)), argv_len & 0x3fff,
					(const void *)start) != 0)
			argv_len = 0;
	}
	r->path_len = (__u16)path_len;
	r->argv_len = (__u16)argv_len;
	__u64 size = sizeof(struct exec_record) - sizeof(r->data) + path_len + argv_len;
	if (size > sizeof(struct exec_record))
		size = sizeof(struct exec_record);
	output(r, size);
	return 0;
}

SEC("raw_tracepoint/sched_process_fork")
int process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__s32 pid = 0, tgid = 0;
	READ_KERNEL(pid, child->pid);
	READ_KERNEL(tgid, child->tgid);
	if (pid != tgid)
		return 0; /* a thread */
	struct task_struct *parent = 0;
	READ_KERNEL(parent, child->real_parent);
	struct fork_record r = {};
	r.h.kind = KIND_FORK;
	r.h.tgid = (__u32)tgid;
	r.h.ktime_ns = bpf_ktime_get_ns();
	r.ppid = parent ? tgid_of(parent) : 0;
	output(&r, sizeof(r));
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__s32 pid = 0, tgid = 0;
	int code = 0;
	READ_KERNEL(pid, task->pid);
	READ_KERNEL(tgid, task->tgid);
	if (pid != tgid)
		return 0; /* a thread */
	READ_KERNEL(code, task->exit_code);
	struct exit_record r = {};
	r.h.kind = KIND_EXIT;
	r.h.tgid = (__u32)tgid;
	r.h.ktime_ns = bpf_ktime_get_ns();
	r.exit_code = (__u32)code;
	output(&r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
