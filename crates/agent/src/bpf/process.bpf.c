// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * ProcessCreate / ProcessTerminate taken in the kernel, at the moment they happen:
 *
 * - raw_tracepoint/sched_process_exec: pid (tgid), parent tgid, real uid, effective uid, gid,
 *   cgroup id, the executable's path (mm->exe_file, walked dentry by dentry across mounts, leaf
 *   first, components separated by NUL; user space reverses them) and the argument bytes
 *   mm->arg_start..arg_end, at most ARGV_READ bytes; and the facts detections need, read after
 *   the exec replaced the image (close-on-exec descriptors are closed by then): the mode and
 *   device of descriptors 0-2, whether the executable is unlinked or a pseudo file (memfd),
 *   whether its directory is writable by others, and the names of the task's cgroup and two
 *   ancestors (the default hierarchy's; on a cgroup v1 system the first v1 cgroup whose name is
 *   long enough to hold a container id), so user space finds a container id without a /proc
 *   race.
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
/* The executable is a pseudo file (its dentry its own parent, not a mount's root): a memfd. */
#define FLAG_PSEUDO 4
/* The executable was unlinked (its dentry is unhashed). */
#define FLAG_DELETED 8
/* The executable's directory is writable by others (S_IWOTH). */
#define FLAG_DIR_WRITABLE 16
/* The cgroup names are from a cgroup v1 hierarchy. */
#define FLAG_CGROUP_V1 32

/* Cgroup names kept: the task's cgroup and its parents, each at most CG_NAME - 1 bytes (a
 * container's is at most 85: `cri-containerd-<64 hex>.scope`). */
#define CG_LEVELS 3
#define CG_NAME 96
/* A cgroup name shorter than this (with its NUL) cannot hold a 64-hex container id. */
#define CG_ID_NAME 65
/* Most v1 hierarchies looked at. */
#define CG_SUBSYS 16

/* CO-RE field-info kinds (clang's __builtin_preserve_field_info). */
#define FIELD_BYTE_OFFSET 0
#define FIELD_BYTE_SIZE 1
#define FIELD_EXISTS 2

/*
 * Kernel types only this program reads, as CO-RE "flavors": the loader ignores the `___tg`
 * suffix when it matches them to the running kernel's types by name, so these need not agree
 * with kernel.h's (which the other programs share) beyond the fields named here.
 */
struct hlist_bl_node___tg {
	struct hlist_bl_node___tg **pprev;
} CORE;

struct inode___tg {
	__u16 i_mode;
	__u32 i_rdev;
} CORE;

struct dentry___tg {
	struct hlist_bl_node___tg d_hash;
	struct dentry___tg *d_parent;
	struct inode___tg *d_inode;
} CORE;

struct file___tg {
	struct inode___tg *f_inode;
} CORE;

struct fdtable___tg {
	unsigned int max_fds;
	struct file___tg **fd;
} CORE;

struct files_struct___tg {
	struct fdtable___tg *fdt;
} CORE;

/* Linux 6.15 renamed kernfs_node's `parent` to `__parent`: both are tried (FIELD_EXISTS). */
struct kernfs_node___tg {
	const char *name;
	struct kernfs_node___tg *__parent;
} CORE;

struct kernfs_node___old {
	const char *name;
	struct kernfs_node___old *parent;
} CORE;

struct cgroup___tg {
	struct kernfs_node___tg *kn;
} CORE;

struct cgroup_subsys_state___tg {
	struct cgroup___tg *cgroup;
} CORE;

struct css_set___tg {
	struct cgroup_subsys_state___tg *subsys[CG_SUBSYS];
	struct cgroup___tg *dfl_cgrp;
} CORE;

struct task_struct___tg {
	struct files_struct___tg *files;
	struct css_set___tg *cgroups;
} CORE;

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
	/* Descriptors 0-2: the inode's mode (0: not open) and device (kernel dev_t). */
	__u16 fd_mode[3];
	__u16 pad;
	__u32 fd_rdev[3];
	__u32 pad2;
	/* Cgroup names, the task's first, each NUL-terminated ("" past the root). */
	char cgroup[CG_LEVELS][CG_NAME];
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
			if (dentry != root) {
				/* Its own parent but no mount's root: a pseudo file (a memfd), which
				 * has a name and no path. */
				if (*len == 0) {
					const unsigned char *name = 0;
					READ_KERNEL(name, dentry->d_name.name);
					long n = bpf_probe_read_kernel_str(r->data, NAME_BYTES, name);
					if (n > 0)
						*len = (__u16)n;
					r->flags |= FLAG_PSEUDO;
				}
				return;
			}
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

/* Whether the executable is unlinked and whether its directory is writable by others. */
static __attribute__((always_inline)) void exe_facts(struct file *exe, struct exec_record *r)
{
	struct dentry___tg *dentry = 0, *parent = 0;
	struct hlist_bl_node___tg **pprev = 0;
	READ_KERNEL(dentry, exe->f_path.dentry);
	if (!dentry)
		return;
	READ_KERNEL(parent, dentry->d_parent);
	READ_KERNEL(pprev, dentry->d_hash.pprev);
	if (!pprev && parent != dentry)
		r->flags |= FLAG_DELETED;
	if (!parent || parent == dentry)
		return;
	struct inode___tg *dir = 0;
	__u16 mode = 0;
	READ_KERNEL(dir, parent->d_inode);
	if (dir)
		READ_KERNEL(mode, dir->i_mode);
	if (mode & 0002)
		r->flags |= FLAG_DIR_WRITABLE;
}

/* The mode and device of descriptors 0-2 of `task`. */
static __attribute__((always_inline)) void std_fds(struct task_struct___tg *task, struct exec_record *r)
{
	struct files_struct___tg *files = 0;
	struct fdtable___tg *fdt = 0;
	struct file___tg **fd = 0;
	unsigned int max = 0;
	READ_KERNEL(files, task->files);
	if (files)
		READ_KERNEL(fdt, files->fdt);
	if (fdt) {
		READ_KERNEL(fd, fdt->fd);
		READ_KERNEL(max, fdt->max_fds);
	}
	for (__u32 i = 0; i < 3; i++) {
		r->fd_mode[i] = 0;
		r->fd_rdev[i] = 0;
		if (!fd || i >= max)
			continue;
		struct file___tg *f = 0;
		struct inode___tg *inode = 0;
		bpf_probe_read_kernel(&f, sizeof(f), &fd[i]);
		if (f)
			READ_KERNEL(inode, f->f_inode);
		if (!inode)
			continue;
		READ_KERNEL(r->fd_mode[i], inode->i_mode);
		READ_KERNEL(r->fd_rdev[i], inode->i_rdev);
	}
}

static __attribute__((always_inline)) struct kernfs_node___tg *kn_parent(struct kernfs_node___tg *kn)
{
	struct kernfs_node___tg *parent = 0;
	if (__builtin_preserve_field_info(kn->__parent, FIELD_EXISTS))
		READ_KERNEL(parent, kn->__parent);
	else
		READ_KERNEL(parent, ((struct kernfs_node___old *)kn)->parent);
	return parent;
}

/* The names of `cgroup` and its parents into r->cgroup, the root left out; returns the
 * longest name's length with its NUL (0: the root). */
static __attribute__((always_inline)) long cgroup_names(struct cgroup___tg *cgroup, struct exec_record *r)
{
	struct kernfs_node___tg *kn = 0;
	long longest = 0;
	for (int i = 0; i < CG_LEVELS; i++)
		r->cgroup[i][0] = 0;
	if (cgroup)
		READ_KERNEL(kn, cgroup->kn);
	for (int i = 0; i < CG_LEVELS && kn; i++) {
		struct kernfs_node___tg *parent = kn_parent(kn);
		if (!parent)
			break; /* the root has no name */
		const char *name = 0;
		READ_KERNEL(name, kn->name);
		long n = bpf_probe_read_kernel_str(r->cgroup[i], CG_NAME, name);
		if (n > longest)
			longest = n;
		kn = parent;
	}
	return longest;
}

/* The cgroup names: the default (v2) hierarchy's, else the first v1 cgroup whose name can hold
 * a container id (docker's cgroupfs driver: /docker/<64 hex> in every v1 hierarchy). */
static __attribute__((always_inline)) void cgroups_of(struct task_struct___tg *task, struct exec_record *r)
{
	struct css_set___tg *cset = 0;
	struct cgroup___tg *dfl = 0;
	READ_KERNEL(cset, task->cgroups);
	if (!cset)
		return;
	READ_KERNEL(dfl, cset->dfl_cgrp);
	if (cgroup_names(dfl, r) >= CG_ID_NAME)
		return;
	__u32 offset = __builtin_preserve_field_info(cset->subsys, FIELD_BYTE_OFFSET);
	__u32 size = __builtin_preserve_field_info(cset->subsys, FIELD_BYTE_SIZE);
	for (__u32 i = 0; i < CG_SUBSYS && (i + 1) * sizeof(void *) <= size; i++) {
		struct cgroup_subsys_state___tg *css = 0;
		struct cgroup___tg *cgroup = 0;
		bpf_probe_read_kernel(&css, sizeof(css), (char *)cset + offset + i * sizeof(void *));
		if (css)
			READ_KERNEL(cgroup, css->cgroup);
		if (cgroup && cgroup_names(cgroup, r) >= CG_ID_NAME) {
			r->flags |= FLAG_CGROUP_V1;
			return;
		}
	}
	for (int i = 0; i < CG_LEVELS; i++)
		r->cgroup[i][0] = 0;
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
	r->pad = 0;
	r->pad2 = 0;
	std_fds((struct task_struct___tg *)task, r);
	cgroups_of((struct task_struct___tg *)task, r);
	READ_KERNEL(mm, task->mm);
	if (!mm) {
		r->flags |= FLAG_NO_MM;
		output(r, sizeof(struct exec_record) - sizeof(r->data));
		return 0;
	}
	struct file *exe = 0;
	READ_KERNEL(exe, mm->exe_file);
	if (exe) {
		path_of(exe, r);
		exe_facts(exe, r);
	}
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
