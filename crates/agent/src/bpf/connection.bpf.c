// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * ConnectionCreate taken in the kernel, in the process that makes the connection, at the moment
 * it makes it:
 *
 * - Out (connect): raw_tracepoint/inet_sock_set_state sees a TCP socket go CLOSE -> SYN_SENT,
 *   which runs in the connecting task, once per connection; the socket is remembered for that
 *   thread. The source port is chosen only after that transition, so the record is written at
 *   the exit of the same system call (raw_tracepoint/sys_exit: connect, or a send with
 *   MSG_FASTOPEN), when it returned 0 or EINPROGRESS and its descriptor (the first argument) is
 *   that socket.
 * - In (accept): the passive side's ESTABLISHED happens in softirq, in no process; so sys_exit
 *   of accept or accept4 turns the returned descriptor into its socket
 *   (task->files->fdt->fd[ret]).
 *
 * sys_exit runs for every system call: it reads the call's number from the saved registers and
 * returns at once for any other. The numbers and the registers' offsets differ per
 * architecture: the loader sets them in .rodata for the target it was built for.
 *
 * Each record carries both ends (address and port), the family, the pid (tgid), the real uid,
 * the executable's path (mm->exe_file, walked as the process programs do) and the argument
 * bytes. Only TCP sockets of the INET and INET6 families are reported. Records go to one ring
 * buffer; the per-CPU `counts` say how many were offered and how many found it full.
 *
 * The record layout is mirrored in crates/agent/src/sys/ebpf.rs (`parse_connection`).
 */
#include "kernel.h"

#define KIND_CONNECT 4
#define KIND_ACCEPT 5

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define EINPROGRESS 115
#define S_IFMT 00170000
#define S_IFSOCK 0140000

#define PATH_BYTES 4096
#define NAME_BYTES 256
#define MAX_DEPTH 48
#define ARGV_READ 8193
#define ARGV_BYTES 8208
#define WAKE_BYTES (16 * 1024)

#define FLAG_PATH_CUT 1
#define FLAG_NO_MM 2
#define FLAG_IN_PROGRESS 4

/* Set by the loader for the target architecture; ~0 = no such system call. */
volatile const __u32 accept_nr = ~0U;
volatile const __u32 accept4_nr = ~0U;
volatile const __u32 connect_nr = ~0U;
volatile const __u32 sendto_nr = ~0U;
volatile const __u32 sendmsg_nr = ~0U;
volatile const __u32 sendmmsg_nr = ~0U;
/* Offsets in struct pt_regs of the system call's number and of its first argument as saved at
 * entry (x86_64: orig_ax, di; arm64: syscallno, orig_x0). */
volatile const __u32 regs_nr_offset = 0;
volatile const __u32 regs_arg0_offset = 0;

struct conn_record {
	__u32 kind;
	__u32 tgid;
	__u64 ktime_ns;
	__u32 uid;
	__u16 family;
	__u16 local_port;
	__u16 remote_port;
	__u16 path_len;
	__u16 argv_len;
	__u16 flags;
	__u32 ifindex;
	__u32 pad;
	__u8 local[16];
	__u8 remote[16];
	/* path_len bytes of path components (leaf first, NUL after each), then argv_len bytes of
	 * arguments. */
	char data[2 * PATH_BYTES + ARGV_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

#define COUNT_OFFERED 0
#define COUNT_DROPPED 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn_record);
} scratch SEC(".maps");

/* The socket a thread's connect moved to SYN_SENT, keyed by pid_tgid; consumed at the system
 * call's exit. Bounded: the least recently used entry goes when it is full, which needs more
 * than this many threads between SYN_SENT and their system call's exit at once. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} pending SEC(".maps");

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

/* The executable's path into r->data, leaf first (see process.bpf.c's path_of). */
static void path_of(struct file *file, struct conn_record *r)
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
				return;
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

/* Whether `sk` is a TCP socket of the INET or INET6 family; its family into *family. */
static int tcp_inet(struct sock *sk, __u16 *family)
{
	__u16 protocol = 0;
	unsigned short f = 0;
	READ_KERNEL(protocol, sk->sk_protocol);
	READ_KERNEL(f, sk->__sk_common.skc_family);
	*family = f;
	return protocol == IPPROTO_TCP && (f == AF_INET || f == AF_INET6);
}

/* The socket behind descriptor `fd` of the current task, or 0. */
static struct sock *sock_of_fd(__u64 fd)
{
	struct task_struct___files *task = (struct task_struct___files *)bpf_get_current_task();
	struct files_struct *files = 0;
	struct fdtable *fdt = 0;
	struct file **fds = 0;
	unsigned int max = 0;
	READ_KERNEL(files, task->files);
	if (!files)
		return 0;
	READ_KERNEL(fdt, files->fdt);
	if (!fdt)
		return 0;
	READ_KERNEL(max, fdt->max_fds);
	READ_KERNEL(fds, fdt->fd);
	if (fd >= max || !fds)
		return 0;
	struct file___sock *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), fds + fd);
	if (!file)
		return 0;
	struct inode *inode = 0;
	umode_t mode = 0;
	READ_KERNEL(inode, file->f_inode);
	if (!inode)
		return 0;
	READ_KERNEL(mode, inode->i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *socket = 0;
	struct sock *sk = 0;
	READ_KERNEL(socket, file->private_data);
	if (!socket)
		return 0;
	READ_KERNEL(sk, socket->sk);
	return sk;
}

static __u16 swap16(__u16 v)
{
	return (__u16)((v >> 8) | (v << 8));
}

/* Builds and offers the record of `sk` for the current task. */
static void report(struct sock *sk, __u32 kind, __u16 flags)
{
	__u16 family = 0;
	if (!tcp_inet(sk, &family))
		return;
	__u32 zero = 0;
	struct conn_record *r = bpf_map_lookup_elem(&scratch, &zero);
	if (!r)
		return;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	r->kind = kind;
	r->tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	r->ktime_ns = bpf_ktime_get_ns();
	r->uid = (__u32)bpf_get_current_uid_gid();
	r->family = family;
	r->flags = flags;
	r->path_len = 0;
	r->argv_len = 0;
	r->pad = 0;
	__u16 dport = 0, num = 0;
	int ifindex = 0;
	READ_KERNEL(dport, sk->__sk_common.skc_dport);
	READ_KERNEL(num, sk->__sk_common.skc_num);
	READ_KERNEL(ifindex, sk->__sk_common.skc_bound_dev_if);
	r->remote_port = swap16(dport); /* network order in the kernel */
	r->local_port = num;		/* host order */
	r->ifindex = (__u32)ifindex;
	__builtin_memset(r->local, 0, sizeof(r->local));
	__builtin_memset(r->remote, 0, sizeof(r->remote));
	if (family == AF_INET) {
		READ_KERNEL(*(__u32 *)r->local, sk->__sk_common.skc_rcv_saddr);
		READ_KERNEL(*(__u32 *)r->remote, sk->__sk_common.skc_daddr);
	} else {
		READ_KERNEL(r->local, sk->__sk_common.skc_v6_rcv_saddr);
		READ_KERNEL(r->remote, sk->__sk_common.skc_v6_daddr);
	}
	struct mm_struct *mm = 0;
	READ_KERNEL(mm, task->mm);
	__u64 head = sizeof(struct conn_record) - sizeof(r->data);
	count(COUNT_OFFERED);
	if (!mm) {
		r->flags |= FLAG_NO_MM;
		if (bpf_ringbuf_output(&events, r, head, wake_flag()) != 0)
			count(COUNT_DROPPED);
		return;
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
	__u64 size = head + path_len + argv_len;
	if (size > sizeof(struct conn_record))
		size = sizeof(struct conn_record);
	if (bpf_ringbuf_output(&events, r, size, wake_flag()) != 0)
		count(COUNT_DROPPED);
}

/* args: (struct sock *sk, int oldstate, int newstate). */
SEC("raw_tracepoint/inet_sock_set_state")
int connection_state(struct bpf_raw_tracepoint_args *ctx)
{
	if ((int)ctx->args[1] != TCP_CLOSE || (int)ctx->args[2] != TCP_SYN_SENT)
		return 0;
	struct sock *sk = (struct sock *)ctx->args[0];
	__u16 family = 0;
	if (!tcp_inet(sk, &family))
		return 0;
	/* Kernel threads (no mm) connect for the kernel (NFS, iSCSI ...): no system call exit
	 * would consume the entry. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct mm_struct *mm = 0;
	READ_KERNEL(mm, task->mm);
	if (!mm)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u64 value = (__u64)sk;
	bpf_map_update_elem(&pending, &id, &value, BPF_ANY);
	return 0;
}

/* args: (struct pt_regs *regs, long ret). */
SEC("raw_tracepoint/sys_exit")
int connection_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	const char *regs = (const char *)ctx->args[0];
	__u32 nr = ~0U;
	bpf_probe_read_kernel(&nr, sizeof(nr), regs + regs_nr_offset);
	long ret = (long)ctx->args[1];
	if (nr == accept_nr || nr == accept4_nr) {
		if (ret < 0)
			return 0;
		struct sock *accepted = sock_of_fd((__u64)ret);
		if (accepted)
			report(accepted, KIND_ACCEPT, 0);
		return 0;
	}
	if (nr != connect_nr && nr != sendto_nr && nr != sendmsg_nr && nr != sendmmsg_nr)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *pending_sk = bpf_map_lookup_elem(&pending, &id);
	if (!pending_sk)
		return 0;
	__u64 sk = *pending_sk;
	bpf_map_delete_elem(&pending, &id);
	if (ret < 0 && ret != -EINPROGRESS)
		return 0; /* refused, unreachable ...: no connection */
	/* The call's own socket (a note left by a connect elsewhere, e.g. inside io_uring, is not
	 * taken for this call's). */
	__u64 fd = ~0ULL;
	bpf_probe_read_kernel(&fd, sizeof(fd), regs + regs_arg0_offset);
	if ((__u64)sock_of_fd(fd & 0xffffffff) != sk)
		return 0;
	report((struct sock *)sk, KIND_CONNECT, ret == -EINPROGRESS ? FLAG_IN_PROGRESS : 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
