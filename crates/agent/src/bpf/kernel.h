/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * The kernel types the process programs read, and only the fields they read.
 *
 * Written by hand with preserve_access_index (CO-RE): clang records each field access as a
 * relocation by name, and the loader (aya) rewrites the offsets from the running kernel's BTF
 * (/sys/kernel/btf/vmlinux). So the layout here need not match any kernel, only the names and
 * kinds of the fields; the build does not depend on the build machine's kernel.
 */
#ifndef TWINGUARD_KERNEL_H
#define TWINGUARD_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;

#define CORE __attribute__((preserve_access_index))

typedef struct {
	__u32 val;
} kuid_t;

typedef struct {
	__u32 val;
} kgid_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
	kuid_t euid;
} CORE;

struct qstr {
	const unsigned char *name;
} CORE;

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} CORE;

struct vfsmount {
	struct dentry *mnt_root;
} CORE;

/* fs/mount.h: struct vfsmount is embedded in struct mount as `mnt`. */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} CORE;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} CORE;

struct file {
	struct path f_path;
} CORE;

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	struct file *exe_file;
} CORE;

struct task_struct {
	__s32 pid;
	__s32 tgid;
	int exit_code;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	const struct cred *real_cred;
	const struct cred *cred;
} CORE;

/* Raw tracepoint context: the tracepoint's arguments as 64-bit words. */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

/* Map types and flags (uapi/linux/bpf.h). */
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#define BPF_RB_AVAIL_DATA 0

/* Helpers, by their number in uapi/linux/bpf.h. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *src) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)113;
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *src) = (void *)115;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size, __u64 flags) = (void *)130;
static __u64 (*bpf_ringbuf_query)(void *ringbuf, __u64 flags) = (void *)134;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

/* Reads a kernel field through its CO-RE relocated address; 0 when the read fails. */
#define READ_KERNEL(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), &(src))

/*
 * Appended for the connection programs (bpf/connection.bpf.c): sockets, and a task's file
 * table (to turn the descriptor accept returned into its socket).
 */
typedef unsigned short umode_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} CORE;

/* include/net/sock.h: the kernel nests the address and port pairs in anonymous unions; CO-RE
 * finds the fields by name through them. */
struct sock_common {
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	int skc_bound_dev_if;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} CORE;

/* sk_protocol and sk_type are u16 since Linux 5.6 (bit fields before: the load fails there and
 * the fallback runs). */
struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	__u16 sk_type;
} CORE;

struct socket {
	struct sock *sk;
} CORE;

struct inode {
	umode_t i_mode;
} CORE;

/* struct file's fields the connection programs read (the ___ suffix is a CO-RE flavour: it
 * matches the kernel's struct file). */
struct file___sock {
	struct inode *f_inode;
	void *private_data;
} CORE;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} CORE;

struct files_struct {
	struct fdtable *fdt;
} CORE;

struct task_struct___files {
	struct files_struct *files;
} CORE;

#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_ANY 0

static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;

#endif
