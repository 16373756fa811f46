//! Host name resolution without loadable NSS modules.
//!
//! The agent resolves the broker's / IoT Hub's host name with `getaddrinfo` (through std's
//! `ToSocketAddrs`). The x86_64 and aarch64 release binaries are static musl, whose resolver
//! reads `/etc/hosts` and then asks the DNS servers of `/etc/resolv.conf`. The armv7 release
//! binary is static glibc: its `getaddrinfo` follows `/etc/nsswitch.conf`, and every service
//! there other than glibc's built-in `files` and `dns` is a shared object (`libnss_mdns4_minimal`,
//! `libnss_resolve`, ...) that a static binary loads only if it comes from the very glibc it was
//! linked with - otherwise the lookup fails or worse. So a static glibc build pins the `hosts`
//! database to `files dns` before anything resolves: the same two sources, in the same order,
//! as musl. (Accounts never go through NSS: `accounts` parses `/etc/passwd` itself.)

/// Makes host name lookups use `/etc/hosts`, then DNS, and never load an NSS module. Call once,
/// first thing in `main`, before any thread starts. A no-op except in static glibc builds.
pub fn pin_host_lookups() {
    #[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
    {
        extern "C" {
            // glibc <nss.h>: replaces the nsswitch.conf line of one database.
            fn __nss_configure_lookup(
                dbname: *const libc::c_char,
                service_line: *const libc::c_char,
            ) -> libc::c_int;
        }
        // SAFETY: both arguments are NUL-terminated static strings; glibc copies what it keeps.
        // Called before any other thread exists, so no lookup runs concurrently with it.
        let rc = unsafe { __nss_configure_lookup(c"hosts".as_ptr(), c"files dns".as_ptr()) };
        debug_assert_eq!(rc, 0, "__nss_configure_lookup(hosts) failed");
    }
}
