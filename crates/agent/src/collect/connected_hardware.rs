//! ConnectedHardware: PCI functions and USB devices from sysfs (ids, class -> category, names
//! from `pci.ids` / `usb.ids` when installed, else from the device's own strings or its ids),
//! plus block devices and network interfaces that have hardware behind them. A machine with
//! no USB bus (a VM) simply reports no USB device.
//!
//! HardwareCategory: PCI by base class (`Network`, `Storage`, `Display`, `Multimedia`,
//! `Bridge`, `USB` for USB host controllers ...); every USB device `USB`; block devices
//! `Storage`; interfaces `Network`. HardwareSubCategory: the class's name (pci.ids /
//! usb.ids, or a built-in table), `Keyboard` / `Pointing Device` for boot HID interfaces,
//! `Disk` / `Removable Disk`, `Ethernet` / `Wireless` / `CAN`.

use std::collections::HashSet;

use crate::sys::fs::Root;
use crate::sys::hwids::{self, IdNames};
use crate::sys::sysfs::{self, BlockDevice, NetDevice, PciDevice, UsbDevice};
use twinguard_core::config::CollectorStatus;
use twinguard_core::event::{ConnectedHardware, EventName, ExtraDetails, PayloadItem};

use super::{CollectError, SnapshotCollector};

/// The category of a PCI base class.
fn pci_category(class: u8, subclass: u8) -> &'static str {
    match (class, subclass) {
        (0x01, _) => "Storage",
        (0x02, _) | (0x0d, _) => "Network",
        (0x03, _) => "Display",
        (0x04, _) => "Multimedia",
        (0x05, _) => "Memory",
        (0x06, _) => "Bridge",
        (0x07, 0x03) => "Modem",
        (0x07, _) => "Communication",
        (0x08, _) => "System",
        (0x09, _) => "Input",
        (0x0a, _) => "Docking",
        (0x0b, _) => "Processor",
        (0x0c, 0x03) => "USB",
        (0x0c, _) => "Serial Bus",
        (0x10, _) => "Encryption",
        (0x11, _) => "Signal Processing",
        (0x12, _) => "Accelerator",
        _ => "Other",
    }
}

/// A built-in name for a PCI (class, subclass), for when pci.ids is not installed.
fn pci_subclass_fallback(class: u8, subclass: u8) -> String {
    match (class, subclass) {
        (0x01, 0x00) => "SCSI storage controller".into(),
        (0x01, 0x01) => "IDE interface".into(),
        (0x01, 0x06) => "SATA controller".into(),
        (0x01, 0x08) => "Non-Volatile memory controller".into(),
        (0x02, 0x00) => "Ethernet controller".into(),
        (0x02, 0x80) => "Network controller".into(),
        (0x03, 0x00) => "VGA compatible controller".into(),
        (0x04, 0x03) => "Audio device".into(),
        (0x06, 0x00) => "Host bridge".into(),
        (0x06, 0x01) => "ISA bridge".into(),
        (0x06, 0x04) => "PCI bridge".into(),
        (0x0c, 0x03) => "USB controller".into(),
        (0x0c, 0x05) => "SMBus".into(),
        (0x0d, _) => "Wireless controller".into(),
        _ => format!("Class {class:02x}{subclass:02x}"),
    }
}

/// A built-in name for a USB class, for when usb.ids is not installed.
fn usb_class_fallback(class: u8) -> String {
    match class {
        0x01 => "Audio".into(),
        0x02 => "Communications".into(),
        0x03 => "Human Interface Device".into(),
        0x05 => "Physical Interface Device".into(),
        0x06 => "Imaging".into(),
        0x07 => "Printer".into(),
        0x08 => "Mass Storage".into(),
        0x09 => "Hub".into(),
        0x0a => "CDC Data".into(),
        0x0b => "Chip/SmartCard".into(),
        0x0e => "Video".into(),
        0x0f => "Personal Healthcare".into(),
        0x10 => "Audio/Video".into(),
        0xe0 => "Wireless".into(),
        0xef => "Miscellaneous Device".into(),
        0xfe => "Application Specific Interface".into(),
        0xff => "Vendor Specific Class".into(),
        _ => format!("Class {class:02x}"),
    }
}

fn pci_item(dev: &PciDevice, names: Option<&IdNames>) -> ConnectedHardware {
    let class = dev.class.unwrap_or(0);
    let (base, sub) = (((class >> 16) & 0xff) as u8, ((class >> 8) & 0xff) as u8);
    let sub_category = names
        .and_then(|n| {
            n.subclasses
                .get(&(base, sub))
                .or_else(|| n.classes.get(&base))
                .cloned()
        })
        .unwrap_or_else(|| pci_subclass_fallback(base, sub));
    let ids = dev.vendor.zip(dev.device);
    let name = match (ids, names) {
        (Some((v, d)), Some(n)) => n.product(v, d),
        _ => None,
    }
    .unwrap_or_else(|| match ids {
        Some((v, d)) => format!("PCI device {v:04x}:{d:04x}"),
        None => format!("PCI device {}", dev.address),
    });
    let mut extra = ExtraDetails::new();
    extra.insert("Bus".into(), "PCI".into());
    extra.insert("BusId".into(), dev.address.clone());
    if let Some((v, d)) = ids {
        extra.insert("VendorId".into(), format!("{v:04x}"));
        extra.insert("ProductId".into(), format!("{d:04x}"));
    }
    if dev.class.is_some() {
        extra.insert("Class".into(), format!("{class:06x}"));
    }
    if let Some(driver) = &dev.driver {
        extra.insert("Driver".into(), driver.clone());
    }
    ConnectedHardware {
        hardware_category: if dev.class.is_some() {
            pci_category(base, sub)
        } else {
            "Other"
        }
        .into(),
        hardware_sub_category: sub_category,
        hardware_name: name,
        extra_details: extra,
    }
}

fn usb_item(dev: &UsbDevice, names: Option<&IdNames>) -> ConnectedHardware {
    // A device whose class is 0 declares its function per interface.
    let (class, subclass, protocol) = match dev.device_class {
        Some(c) if c != 0 => (c, 0, 0),
        _ => dev.interfaces.first().copied().unwrap_or((0, 0, 0)),
    };
    let sub_category = match (class, subclass, protocol) {
        (0x03, 0x01, 0x01) => "Keyboard".to_owned(),
        (0x03, 0x01, 0x02) => "Pointing Device".to_owned(),
        _ => names
            .and_then(|n| n.classes.get(&class).cloned())
            .unwrap_or_else(|| usb_class_fallback(class)),
    };
    let ids = dev.vendor.zip(dev.product);
    let own = match (&dev.manufacturer, &dev.product_name) {
        (Some(m), Some(p)) if p.starts_with(m.as_str()) => Some(p.clone()),
        (Some(m), Some(p)) => Some(format!("{m} {p}")),
        (None, Some(p)) => Some(p.clone()),
        _ => None,
    };
    let name = own
        .or_else(|| ids.and_then(|(v, p)| names.and_then(|n| n.product(v, p))))
        .unwrap_or_else(|| match ids {
            Some((v, p)) => format!("USB device {v:04x}:{p:04x}"),
            None => format!("USB device {}", dev.name),
        });
    let mut extra = ExtraDetails::new();
    extra.insert("Bus".into(), "USB".into());
    extra.insert("BusId".into(), dev.name.clone());
    if let Some((v, p)) = ids {
        extra.insert("VendorId".into(), format!("{v:04x}"));
        extra.insert("ProductId".into(), format!("{p:04x}"));
    }
    extra.insert("Class".into(), format!("{class:02x}"));
    if let Some(speed) = &dev.speed {
        extra.insert("SpeedMbps".into(), speed.clone());
    }
    ConnectedHardware {
        hardware_category: "USB".into(),
        hardware_sub_category: sub_category,
        hardware_name: name,
        extra_details: extra,
    }
}

fn block_item(dev: &BlockDevice) -> ConnectedHardware {
    // SCSI-like devices name their vendor and model; a virtio disk's `vendor` is a number.
    let vendor = dev.vendor.as_deref().filter(|v| !v.starts_with("0x"));
    let model = match dev.model.as_deref() {
        Some(m) => [vendor, Some(m)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    };
    let name = if !model.is_empty() {
        model
    } else {
        match &dev.driver {
            Some(d) => format!("{} ({d})", dev.name),
            None => dev.name.clone(),
        }
    };
    let sub = if dev.name.starts_with("sr") {
        "CD-ROM"
    } else if dev.removable {
        "Removable Disk"
    } else {
        "Disk"
    };
    let mut extra = ExtraDetails::new();
    extra.insert("Bus".into(), "Block".into());
    extra.insert("Device".into(), dev.name.clone());
    if let Some(size) = dev.size_bytes {
        extra.insert("SizeInBytes".into(), size.to_string());
    }
    if let Some(driver) = &dev.driver {
        extra.insert("Driver".into(), driver.clone());
    }
    if let Some(path) = &dev.sysfs_path {
        extra.insert("SysfsPath".into(), path.clone());
    }
    ConnectedHardware {
        hardware_category: "Storage".into(),
        hardware_sub_category: sub.into(),
        hardware_name: name,
        extra_details: extra,
    }
}

fn net_item(dev: &NetDevice, names: Option<&IdNames>) -> ConnectedHardware {
    let sub = if dev.wireless {
        "Wireless"
    } else {
        match dev.link_type {
            Some(1) => "Ethernet",
            Some(280) => "CAN",
            Some(32) => "InfiniBand",
            _ => "Other",
        }
    };
    let name = dev
        .pci_ids
        .and_then(|(v, d)| names.and_then(|n| n.product(v, d)))
        .unwrap_or_else(|| match &dev.driver {
            Some(driver) => format!("{} ({driver})", dev.name),
            None => dev.name.clone(),
        });
    let mut extra = ExtraDetails::new();
    extra.insert("Bus".into(), "Net".into());
    extra.insert("Interface".into(), dev.name.clone());
    if let Some(mac) = &dev.address {
        extra.insert("MacAddress".into(), mac.clone());
    }
    if let Some(driver) = &dev.driver {
        extra.insert("Driver".into(), driver.clone());
    }
    if let Some(path) = &dev.sysfs_path {
        extra.insert("SysfsPath".into(), path.clone());
    }
    ConnectedHardware {
        hardware_category: "Network".into(),
        hardware_sub_category: sub.into(),
        hardware_name: name,
        extra_details: extra,
    }
}

/// What was found on the buses, before naming.
#[derive(Clone, Debug, Default)]
pub(crate) struct HardwareInventory {
    /// PCI functions.
    pub pci: Vec<PciDevice>,
    /// USB devices.
    pub usb: Vec<UsbDevice>,
    /// Block devices with hardware.
    pub block: Vec<BlockDevice>,
    /// Network interfaces with hardware.
    pub net: Vec<NetDevice>,
}

/// Builds the items of `inv` with names from the databases given (pure).
pub(crate) fn hardware_items(
    inv: &HardwareInventory,
    pci_names: Option<&IdNames>,
    usb_names: Option<&IdNames>,
) -> Vec<ConnectedHardware> {
    let mut out = Vec::new();
    out.extend(inv.pci.iter().map(|d| pci_item(d, pci_names)));
    out.extend(inv.usb.iter().map(|d| usb_item(d, usb_names)));
    out.extend(inv.block.iter().map(block_item));
    out.extend(inv.net.iter().map(|d| net_item(d, pci_names)));
    out
}

/// The ConnectedHardware snapshot collector.
#[derive(Debug)]
pub struct ConnectedHardwareCollector {
    root: Root,
    status: CollectorStatus,
}

impl Default for ConnectedHardwareCollector {
    fn default() -> Self {
        ConnectedHardwareCollector::new()
    }
}

impl ConnectedHardwareCollector {
    /// A collector of this machine's hardware.
    pub fn new() -> Self {
        ConnectedHardwareCollector::with_root(Root::system())
    }

    /// A collector reading `/sys` and the ids databases under `root`.
    pub fn with_root(root: Root) -> Self {
        ConnectedHardwareCollector {
            root,
            status: CollectorStatus {
                source: "sysfs".to_owned(),
                ..CollectorStatus::default()
            },
        }
    }

    fn snapshot(&mut self) -> Result<Vec<ConnectedHardware>, CollectError> {
        let failed = |what: &str, e: std::io::Error| CollectError::Failed {
            source_name: what.to_owned(),
            why: e.to_string(),
        };
        let inv = HardwareInventory {
            pci: sysfs::pci_devices(&self.root).map_err(|e| failed("/sys/bus/pci/devices", e))?,
            usb: sysfs::usb_devices(&self.root).map_err(|e| failed("/sys/bus/usb/devices", e))?,
            block: sysfs::block_devices(&self.root).map_err(|e| failed("/sys/class/block", e))?,
            net: sysfs::net_devices(&self.root).map_err(|e| failed("/sys/class/net", e))?,
        };
        let mut notes = Vec::new();
        let pci_wanted: HashSet<(u16, u16)> = inv
            .pci
            .iter()
            .filter_map(|d| d.vendor.zip(d.device))
            .chain(inv.net.iter().filter_map(|n| n.pci_ids))
            .collect();
        let pci_names = if inv.pci.is_empty() {
            None
        } else {
            let loaded = hwids::load(&self.root, &hwids::PCI_IDS_PATHS, &pci_wanted);
            if loaded.is_none() {
                notes.push("pci.ids not installed: PCI devices named by their ids");
            }
            loaded.map(|(_, n)| n)
        };
        let usb_wanted: HashSet<(u16, u16)> =
            inv.usb.iter().filter_map(|d| d.vendor.zip(d.product)).collect();
        let usb_names = if inv.usb.is_empty() {
            None
        } else {
            let loaded = hwids::load(&self.root, &hwids::USB_IDS_PATHS, &usb_wanted);
            if loaded.is_none() {
                notes.push("usb.ids not installed: USB devices without strings named by their ids");
            }
            loaded.map(|(_, n)| n)
        };
        self.status.note = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(hardware_items(&inv, pci_names.as_ref(), usb_names.as_ref()))
    }
}

impl SnapshotCollector for ConnectedHardwareCollector {
    fn name(&self) -> EventName {
        EventName::ConnectedHardware
    }

    fn collect(&mut self) -> Result<Vec<PayloadItem>, CollectError> {
        let result = self.snapshot();
        super::record_outcome(&mut self.status, result)
    }

    fn status(&self) -> CollectorStatus {
        self.status.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_hid_boot_interfaces_are_keyboards_and_mice() {
        let kb = UsbDevice {
            name: "1-1".into(),
            vendor: Some(0x046d),
            product: Some(0xc31c),
            device_class: Some(0),
            interfaces: vec![(0x03, 0x01, 0x01), (0x03, 0x00, 0x00)],
            manufacturer: Some("Logitech".into()),
            product_name: Some("USB Keyboard".into()),
            speed: Some("1.5".into()),
        };
        let item = usb_item(&kb, None);
        assert_eq!(item.hardware_category, "USB");
        assert_eq!(item.hardware_sub_category, "Keyboard");
        assert_eq!(item.hardware_name, "Logitech USB Keyboard");
        let bare = UsbDevice {
            manufacturer: None,
            product_name: None,
            device_class: Some(0x09),
            ..kb
        };
        let item = usb_item(&bare, None);
        assert_eq!(item.hardware_sub_category, "Hub");
        assert_eq!(item.hardware_name, "USB device 046d:c31c");
    }

    #[test]
    fn pci_categories() {
        let dev = PciDevice {
            address: "0000:00:14.0".into(),
            vendor: Some(0x8086),
            device: Some(0xa36d),
            class: Some(0x0c0330),
            driver: Some("xhci_hcd".into()),
        };
        let item = pci_item(&dev, None);
        assert_eq!(item.hardware_category, "USB");
        assert_eq!(item.hardware_sub_category, "USB controller");
        assert_eq!(item.hardware_name, "PCI device 8086:a36d");
        assert_eq!(item.extra_details["Class"], "0c0330");
    }
}
