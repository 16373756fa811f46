//! SystemInformation: what the device is. Sources: `uname(2)`, `/etc/os-release` (else
//! `/usr/lib/os-release`), `/proc/meminfo`, the root mount of `/proc/self/mountinfo` (else
//! `root=` of `/proc/cmdline`) for the boot device, and BIOS facts from `/sys/class/dmi/id`
//! where present (x86), else the device-tree model (ARM boards).
//!
//! Memory, in kB as `/proc/meminfo` gives it: free physical memory is `MemAvailable` (what
//! programs can still get; `MemFree` on kernels without it); virtual memory is physical plus
//! swap (`MemTotal + SwapTotal`, free `MemAvailable + SwapFree`).

use std::collections::BTreeMap;

use crate::sys::fs::{read_text, read_value, Root};
use crate::sys::osinfo::{self, Uname};
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{EventName, ExtraDetails, PayloadItem, SystemInformation};

use super::{CollectError, SnapshotCollector};

/// The largest os-release / meminfo / mountinfo read.
const MAX_FILE: usize = 1024 * 1024;

/// Everything SystemInformation is built from, as read (so the building is pure).
#[derive(Clone, Debug, Default)]
pub struct SystemSources {
    /// `uname(2)`, when it answered.
    pub uname: Option<Uname>,
    /// os-release key/values.
    pub os_release: BTreeMap<String, String>,
    /// `/proc/meminfo` in kB.
    pub meminfo: BTreeMap<String, u64>,
    /// The source of the `/` mount.
    pub root_device: Option<String>,
    /// `root=` of the kernel command line.
    pub cmdline_root: Option<String>,
    /// DMI attributes by file name (`bios_version`, `sys_vendor`...).
    pub dmi: BTreeMap<String, String>,
    /// The device-tree model.
    pub device_tree_model: Option<String>,
}

/// The DMI attributes read, and the ExtraDetails key each goes to (`bios_version` is the
/// schema's BIOSVersion).
const DMI_KEYS: [(&str, &str); 6] = [
    ("bios_version", ""),
    ("bios_vendor", "BiosVendor"),
    ("bios_date", "BiosDate"),
    ("sys_vendor", "SystemVendor"),
    ("product_name", "ProductName"),
    ("board_name", "BoardName"),
];

/// The vendor of well-known distributions by os-release `ID`, for when os-release has no
/// `VENDOR_NAME`.
fn vendor_of(id: &str) -> Option<&'static str> {
    Some(match id {
        "debian" | "raspbian" => "Debian",
        "ubuntu" => "Canonical",
        "fedora" | "rhel" | "centos" => "Red Hat",
        "rocky" => "Rocky Enterprise Software Foundation",
        "almalinux" => "AlmaLinux OS Foundation",
        "alpine" => "Alpine Linux",
        "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" | "sles" => "SUSE",
        "arch" => "Arch Linux",
        "poky" => "Yocto Project",
        "openwrt" => "OpenWrt",
        "amzn" => "Amazon",
        "mariner" | "azurelinux" => "Microsoft",
        "photon" => "VMware",
        "buildroot" => "Buildroot",
        _ => return None,
    })
}

impl SystemSources {
    /// Reads every source under `root`; what cannot be read stays empty.
    pub fn read(root: &Root) -> SystemSources {
        let os_release = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| read_text(&root.path(p), MAX_FILE).ok())
            .map(|t| osinfo::parse_os_release(&t))
            .unwrap_or_default();
        let meminfo = read_text(&root.path("/proc/meminfo"), MAX_FILE)
            .map(|t| osinfo::parse_meminfo(&t))
            .unwrap_or_default();
        let root_device = read_text(&root.path("/proc/self/mountinfo"), 4 * MAX_FILE)
            .ok()
            .and_then(|t| osinfo::mount_at(&osinfo::parse_mountinfo(&t), "/").map(|m| m.source.clone()))
            .filter(|s| !s.is_empty() && s != "none" && s != "rootfs");
        let cmdline_root = read_text(&root.path("/proc/cmdline"), 64 * 1024)
            .ok()
            .and_then(|t| osinfo::cmdline_root(&t));
        let dmi = DMI_KEYS
            .iter()
            .filter_map(|(file, _)| {
                read_value(&root.path(format!("/sys/class/dmi/id/{file}")))
                    .filter(|v| !v.is_empty())
                    .map(|v| ((*file).to_owned(), v))
            })
            .collect();
        let device_tree_model = ["/sys/firmware/devicetree/base/model", "/proc/device-tree/model"]
            .iter()
            .find_map(|p| read_value(&root.path(p)))
            .map(|m| m.trim_end_matches('\0').to_owned())
            .filter(|m| !m.is_empty());
        SystemSources {
            uname: if root.is_system() {
                osinfo::uname().ok()
            } else {
                None
            },
            os_release,
            meminfo,
            root_device,
            cmdline_root,
            dmi,
            device_tree_model,
        }
    }
}

/// Builds the SystemInformation item (pure).
pub fn system_information(src: &SystemSources) -> SystemInformation {
    let mut missing: Vec<&str> = Vec::new();
    let mut extra = ExtraDetails::new();
    let os = &src.os_release;
    let os_name = os.get("NAME").cloned();
    let os_version = os.get("VERSION").or_else(|| os.get("VERSION_ID")).cloned();
    let os_vendor = os
        .get("VENDOR_NAME")
        .cloned()
        .or_else(|| os.get("ID").and_then(|id| vendor_of(id)).map(str::to_owned))
        .or_else(|| {
            os.get("ID_LIKE")
                .and_then(|like| like.split_ascii_whitespace().find_map(vendor_of))
                .map(str::to_owned)
        });
    for (key, value) in [
        ("OsId", os.get("ID")),
        ("OsVersionId", os.get("VERSION_ID")),
        ("OsPrettyName", os.get("PRETTY_NAME")),
    ] {
        if let Some(v) = value {
            extra.insert(key.into(), v.clone());
        }
    }
    if let Some(u) = &src.uname {
        extra.insert("KernelName".into(), u.sysname.clone());
        extra.insert("KernelRelease".into(), u.release.clone());
        extra.insert("KernelVersion".into(), u.version.clone());
    }
    for (file, key) in DMI_KEYS.iter().skip(1) {
        if let Some(v) = src.dmi.get(*file) {
            extra.insert((*key).into(), v.clone());
        }
    }
    if let Some(model) = &src.device_tree_model {
        extra.insert("DeviceModel".into(), model.clone());
    }
    let mem = |k: &str| src.meminfo.get(k).copied();
    let total = mem("MemTotal");
    let free = mem("MemAvailable").or_else(|| mem("MemFree"));
    let total_virtual = total.zip(mem("SwapTotal")).map(|(a, b)| a.saturating_add(b));
    let free_virtual = free.zip(mem("SwapFree")).map(|(a, b)| a.saturating_add(b));
    let boot_device = src.root_device.clone().or_else(|| src.cmdline_root.clone());
    let item = SystemInformation {
        os_name,
        os_version,
        os_vendor,
        os_architecture: src.uname.as_ref().map(|u| u.machine.clone()),
        host_name: src.uname.as_ref().map(|u| u.nodename.clone()),
        bios_version: src.dmi.get("bios_version").cloned(),
        boot_device,
        total_physical_memory_in_kb: total,
        free_physical_memory_in_kb: free,
        total_virtual_memory_in_kb: total_virtual,
        free_virtual_memory_in_kb: free_virtual,
        extra_details: ExtraDetails::new(),
    };
    for (name, absent) in [
        ("OSName", item.os_name.is_none()),
        ("OSVersion", item.os_version.is_none()),
        ("OSVendor", item.os_vendor.is_none()),
        ("OsArchitecture", item.os_architecture.is_none()),
        ("HostName", item.host_name.is_none()),
        ("BIOSVersion", item.bios_version.is_none()),
        ("BootDevice", item.boot_device.is_none()),
        (
            "TotalPhysicalMemoryInKB",
            item.total_physical_memory_in_kb.is_none(),
        ),
        (
            "FreePhysicalMemoryInKB",
            item.free_physical_memory_in_kb.is_none(),
        ),
        (
            "TotalVirtualMemoryInKB",
            item.total_virtual_memory_in_kb.is_none(),
        ),
        ("FreeVirtualMemoryInKB", item.free_virtual_memory_in_kb.is_none()),
    ] {
        if absent {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        extra.insert("Missing".into(), missing.join(";"));
    }
    SystemInformation {
        extra_details: extra,
        ..item
    }
}

/// The SystemInformation snapshot collector.
#[derive(Debug)]
pub struct SystemInformationCollector {
    root: Root,
    status: CollectorStatus,
}

impl Default for SystemInformationCollector {
    fn default() -> Self {
        SystemInformationCollector::new()
    }
}

impl SystemInformationCollector {
    /// A collector of this machine.
    pub fn new() -> Self {
        SystemInformationCollector::with_root(Root::system())
    }

    /// A collector reading files under `root` (`uname` is asked only when `root` is `/`).
    pub fn with_root(root: Root) -> Self {
        SystemInformationCollector {
            root,
            status: CollectorStatus {
                source: "uname, /etc/os-release, /proc/meminfo, /proc/self/mountinfo, /sys/class/dmi/id"
                    .to_owned(),
                ..CollectorStatus::default()
            },
        }
    }
}

impl SnapshotCollector for SystemInformationCollector {
    fn name(&self) -> EventName {
        EventName::SystemInformation
    }

    fn collect(&mut self) -> Result<Vec<PayloadItem>, CollectError> {
        let sources = SystemSources::read(&self.root);
        let item = system_information(&sources);
        self.status.note = item
            .extra_details
            .get("Missing")
            .map(|m| format!("not available on this machine: {m}"));
        Ok(vec![item.into()])
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
    fn builds_from_sources_and_lists_what_is_missing() {
        let src = SystemSources {
            uname: Some(Uname {
                sysname: "Linux".into(),
                nodename: "gw-7".into(),
                release: "6.1.0".into(),
                version: "#1 SMP".into(),
                machine: "aarch64".into(),
            }),
            os_release: osinfo::parse_os_release("NAME=\"Ubuntu\"\nVERSION=\"22.04.4 LTS (Jammy Jellyfish)\"\nID=ubuntu\n"),
            meminfo: osinfo::parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\nSwapTotal: 500 kB\nSwapFree: 400 kB\n"),
            root_device: None,
            cmdline_root: Some("/dev/mmcblk0p2".into()),
            dmi: BTreeMap::new(),
            device_tree_model: Some("Raspberry Pi 4 Model B Rev 1.4".into()),
        };
        let item = system_information(&src);
        assert_eq!(item.os_vendor.as_deref(), Some("Canonical"));
        assert_eq!(item.os_version.as_deref(), Some("22.04.4 LTS (Jammy Jellyfish)"));
        assert_eq!(item.boot_device.as_deref(), Some("/dev/mmcblk0p2"));
        assert_eq!(item.free_physical_memory_in_kb, Some(600));
        assert_eq!(item.total_virtual_memory_in_kb, Some(1500));
        assert_eq!(item.free_virtual_memory_in_kb, Some(1000));
        assert_eq!(item.extra_details["Missing"], "BIOSVersion");
        assert_eq!(
            item.extra_details["DeviceModel"],
            "Raspberry Pi 4 Model B Rev 1.4"
        );
    }
}
