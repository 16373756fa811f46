//! Attached hardware from sysfs: PCI and USB devices (`/sys/bus/{pci,usb}/devices`), block
//! devices and network interfaces that have a device behind them (`/sys/class/{block,net}`).
//! Each attribute is a small bounded read; the number of devices read is capped.

use std::path::{Path, PathBuf};

use super::fs::{read_link_text, read_value, Root};

/// The most devices read of one kind.
pub(crate) const MAX_DEVICES: usize = 4096;

/// A PCI function (`/sys/bus/pci/devices/0000:00:02.0`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PciDevice {
    /// The bus address (`0000:00:02.0`).
    pub address: String,
    /// Vendor id.
    pub vendor: Option<u16>,
    /// Device id.
    pub device: Option<u16>,
    /// Class code (`0x020000`: class, subclass, programming interface).
    pub class: Option<u32>,
    /// The bound driver's name.
    pub driver: Option<String>,
}

/// A USB device (`/sys/bus/usb/devices/1-1`; interfaces and root hubs' interfaces are not
/// devices).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsbDevice {
    /// The kernel's name for it (`1-1.4`, `usb1` for a root hub).
    pub name: String,
    /// `idVendor`.
    pub vendor: Option<u16>,
    /// `idProduct`.
    pub product: Option<u16>,
    /// `bDeviceClass`.
    pub device_class: Option<u8>,
    /// (`bInterfaceClass`, `bInterfaceSubClass`, `bInterfaceProtocol`) of each interface of the
    /// active configuration, in name order.
    pub interfaces: Vec<(u8, u8, u8)>,
    /// The manufacturer string.
    pub manufacturer: Option<String>,
    /// The product string.
    pub product_name: Option<String>,
    /// Speed in Mbit/s as the kernel writes it (`480`).
    pub speed: Option<String>,
}

/// A block device with hardware behind it (not a partition, loop or RAM disk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockDevice {
    /// Kernel name (`sda`, `mmcblk0`, `vda`).
    pub name: String,
    /// Size in bytes (512-byte sectors times 512).
    pub size_bytes: Option<u64>,
    /// Whether the medium is removable.
    pub removable: bool,
    /// `device/vendor`, trimmed.
    pub vendor: Option<String>,
    /// `device/model`, trimmed.
    pub model: Option<String>,
    /// The driver of the device behind it.
    pub driver: Option<String>,
    /// The device's sysfs path, relative to `/sys`.
    pub sysfs_path: Option<String>,
}

/// A network interface with hardware behind it (not `lo`, bridges, tunnels...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NetDevice {
    /// Interface name (`eth0`, `wlan0`).
    pub name: String,
    /// The ARP hardware type (`1` Ethernet, `280` CAN...).
    pub link_type: Option<u32>,
    /// Whether it is an 802.11 interface.
    pub wireless: bool,
    /// MAC address.
    pub address: Option<String>,
    /// The driver of the device behind it.
    pub driver: Option<String>,
    /// PCI vendor/device ids of the device behind it, when it is a PCI function.
    pub pci_ids: Option<(u16, u16)>,
    /// The device's sysfs path, relative to `/sys`.
    pub sysfs_path: Option<String>,
}

/// Parses a sysfs hex attribute (`0x8086`, `8086`).
pub(crate) fn parse_hex(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    if t.is_empty() || t.len() > 8 {
        return None;
    }
    u32::from_str_radix(t, 16).ok()
}

fn hex_attr<T: TryFrom<u32>>(dir: &Path, name: &str) -> Option<T> {
    read_value(&dir.join(name))
        .as_deref()
        .and_then(parse_hex)
        .and_then(|v| T::try_from(v).ok())
}

fn text_attr(dir: &Path, name: &str) -> Option<String> {
    read_value(&dir.join(name)).filter(|s| !s.is_empty())
}

fn driver_of(dir: &Path) -> Option<String> {
    let link = read_link_text(&dir.join("driver"))?;
    link.rsplit('/')
        .next()
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

/// The entries of a directory, sorted by name, at most [`MAX_DEVICES`].
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .take(MAX_DEVICES)
        .collect();
    out.sort();
    Ok(out)
}

/// Lists a sysfs directory; a missing directory (no such bus on this machine) is empty.
fn entries_or_empty(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    match sorted_entries(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// The path of `dir/device` relative to `/sys` once symbolic links are resolved.
fn sysfs_path(root: &Root, dir: &Path) -> Option<String> {
    let real = std::fs::canonicalize(dir.join("device")).ok()?;
    let sys = std::fs::canonicalize(root.path("/sys")).ok()?;
    real.strip_prefix(&sys)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// PCI functions under `root`.
pub(crate) fn pci_devices(root: &Root) -> std::io::Result<Vec<PciDevice>> {
    Ok(entries_or_empty(&root.path("/sys/bus/pci/devices"))?
        .into_iter()
        .map(|(name, dir)| PciDevice {
            vendor: hex_attr(&dir, "vendor"),
            device: hex_attr(&dir, "device"),
            class: hex_attr(&dir, "class"),
            driver: driver_of(&dir),
            address: name,
        })
        .collect())
}

/// USB devices under `root` (root hubs included: they are the host controllers' ports).
pub(crate) fn usb_devices(root: &Root) -> std::io::Result<Vec<UsbDevice>> {
    let entries = entries_or_empty(&root.path("/sys/bus/usb/devices"))?;
    let mut out = Vec::new();
    for (name, dir) in &entries {
        // Interfaces are named `<device>:<config>.<interface>`.
        if name.contains(':') || !dir.join("idVendor").exists() {
            continue;
        }
        let prefix = format!("{name}:");
        let interfaces = entries
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .filter_map(|(_, d)| {
                Some((
                    hex_attr::<u8>(d, "bInterfaceClass")?,
                    hex_attr::<u8>(d, "bInterfaceSubClass").unwrap_or(0),
                    hex_attr::<u8>(d, "bInterfaceProtocol").unwrap_or(0),
                ))
            })
            .collect();
        out.push(UsbDevice {
            name: name.clone(),
            vendor: hex_attr(dir, "idVendor"),
            product: hex_attr(dir, "idProduct"),
            device_class: hex_attr(dir, "bDeviceClass"),
            interfaces,
            manufacturer: text_attr(dir, "manufacturer"),
            product_name: text_attr(dir, "product"),
            speed: text_attr(dir, "speed"),
        });
    }
    Ok(out)
}

/// Block devices with hardware behind them under `root`.
pub(crate) fn block_devices(root: &Root) -> std::io::Result<Vec<BlockDevice>> {
    let mut out = Vec::new();
    for (name, dir) in entries_or_empty(&root.path("/sys/class/block"))? {
        // Partitions have a `partition` attribute; loop, ram and zram devices have no device.
        if dir.join("partition").exists() || !dir.join("device").exists() {
            continue;
        }
        let device = dir.join("device");
        out.push(BlockDevice {
            size_bytes: read_value(&dir.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .map(|sectors| sectors.saturating_mul(512)),
            removable: read_value(&dir.join("removable")).as_deref() == Some("1"),
            vendor: text_attr(&device, "vendor"),
            model: text_attr(&device, "model"),
            driver: driver_of(&device),
            sysfs_path: sysfs_path(root, &dir),
            name,
        });
    }
    Ok(out)
}

/// Network interfaces with hardware behind them under `root`.
pub(crate) fn net_devices(root: &Root) -> std::io::Result<Vec<NetDevice>> {
    let mut out = Vec::new();
    for (name, dir) in entries_or_empty(&root.path("/sys/class/net"))? {
        let device = dir.join("device");
        if !device.exists() {
            continue;
        }
        // A PCI function has a class attribute; a virtio or USB child does not.
        let pci_ids = if device.join("class").exists() {
            hex_attr::<u16>(&device, "vendor").zip(hex_attr::<u16>(&device, "device"))
        } else {
            None
        };
        out.push(NetDevice {
            link_type: read_value(&dir.join("type")).and_then(|s| s.parse().ok()),
            wireless: dir.join("wireless").exists() || dir.join("phy80211").exists(),
            address: text_attr(&dir, "address"),
            driver: driver_of(&device),
            pci_ids,
            sysfs_path: sysfs_path(root, &dir),
            name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_attributes() {
        assert_eq!(parse_hex("0x8086\n"), Some(0x8086));
        assert_eq!(parse_hex("1d6b"), Some(0x1d6b));
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex("0x123456789"), None);
        assert_eq!(parse_hex("zz"), None);
    }
}
