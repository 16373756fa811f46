//! Names of PCI and USB vendors, devices and classes from the `pci.ids` / `usb.ids` databases
//! (the hwdata / usbutils / pciutils packages), when installed. A pure parser that keeps only
//! the names asked for, so memory stays small whatever the database's size.
//!
//! Format: a vendor line `vvvv  Name`, its devices `\tdddd  Name`, subsystems `\t\t...`; the
//! class section `C cc  Name`, subclasses `\tss  Name`, programming interfaces `\t\tpp  Name`.
//! Other sections (`AT`, `HID`, `L` ... in usb.ids) are skipped.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::fs::{read_text, Root};

/// The biggest database read (pci.ids is about 1.4 MB).
pub(crate) const MAX_DB_BYTES: usize = 16 * 1024 * 1024;

/// Where pci.ids is installed, in order of preference.
pub(crate) const PCI_IDS_PATHS: [&str; 3] = [
    "/usr/share/misc/pci.ids",
    "/usr/share/hwdata/pci.ids",
    "/usr/share/pci.ids",
];
/// Where usb.ids is installed, in order of preference.
pub(crate) const USB_IDS_PATHS: [&str; 4] = [
    "/usr/share/misc/usb.ids",
    "/usr/share/hwdata/usb.ids",
    "/var/lib/usbutils/usb.ids",
    "/usr/share/usb.ids",
];

/// Names found in a database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdNames {
    /// Vendor names of the vendors asked for.
    pub vendors: HashMap<u16, String>,
    /// Device names of the (vendor, device) pairs asked for.
    pub devices: HashMap<(u16, u16), String>,
    /// Every class name.
    pub classes: HashMap<u8, String>,
    /// Every (class, subclass) name.
    pub subclasses: HashMap<(u8, u8), String>,
    /// Every (class, subclass, programming interface / protocol) name.
    pub protocols: HashMap<(u8, u8, u8), String>,
}

impl IdNames {
    /// `"Vendor Device"`, or what of it is known.
    pub(crate) fn product(&self, vendor: u16, device: u16) -> Option<String> {
        match (self.vendors.get(&vendor), self.devices.get(&(vendor, device))) {
            (Some(v), Some(d)) => Some(format!("{v} {d}")),
            (None, Some(d)) => Some(d.clone()),
            (Some(v), None) => Some(format!("{v} device {device:04x}")),
            (None, None) => None,
        }
    }
}

fn hex_u16(s: &str) -> Option<u16> {
    (s.len() == 4).then(|| u16::from_str_radix(s, 16).ok()).flatten()
}

fn hex_u8(s: &str) -> Option<u8> {
    (s.len() == 2).then(|| u8::from_str_radix(s, 16).ok()).flatten()
}

/// Splits `id  name` (two spaces; the name may be absent).
fn id_and_name(s: &str) -> (&str, &str) {
    match s.split_once(' ') {
        Some((id, name)) => (id, name.trim()),
        None => (s, ""),
    }
}

#[derive(Clone, Copy)]
enum Section {
    None,
    Vendor(u16),
    Class(u8),
    Other,
}

/// Parses a database, keeping the names of `wanted` (vendor, device) pairs, their vendors,
/// and every class.
pub fn parse(text: &str, wanted: &HashSet<(u16, u16)>) -> IdNames {
    let wanted_vendors: HashSet<u16> = wanted.iter().map(|(v, _)| *v).collect();
    let mut out = IdNames::default();
    let mut section = Section::None;
    let mut subclass: Option<u8> = None;
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("\t\t") {
            if let (Section::Class(c), Some(s)) = (section, subclass) {
                let (id, name) = id_and_name(rest);
                if let Some(p) = hex_u8(id) {
                    out.protocols.insert((c, s, p), name.to_owned());
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix('\t') {
            let (id, name) = id_and_name(rest);
            match section {
                Section::Vendor(v) => {
                    if let Some(d) = hex_u16(id) {
                        if wanted.contains(&(v, d)) {
                            out.devices.insert((v, d), name.to_owned());
                        }
                    }
                }
                Section::Class(c) => {
                    subclass = hex_u8(id);
                    if let Some(s) = subclass {
                        out.subclasses.insert((c, s), name.to_owned());
                    }
                }
                Section::None | Section::Other => {}
            }
            continue;
        }
        subclass = None;
        if let Some(rest) = line.strip_prefix("C ") {
            let (id, name) = id_and_name(rest);
            section = match hex_u8(id) {
                Some(c) => {
                    out.classes.insert(c, name.to_owned());
                    Section::Class(c)
                }
                None => Section::Other,
            };
            continue;
        }
        let (id, name) = id_and_name(line);
        section = match hex_u16(id) {
            Some(v) => {
                if wanted_vendors.contains(&v) {
                    out.vendors.insert(v, name.to_owned());
                }
                Section::Vendor(v)
            }
            None => Section::Other,
        };
    }
    out
}

/// Reads the first database of `paths` that exists under `root`; `None` when none is
/// installed or readable.
pub fn load(root: &Root, paths: &[&str], wanted: &HashSet<(u16, u16)>) -> Option<(PathBuf, IdNames)> {
    paths.iter().find_map(|p| {
        let path = root.path(p);
        let text = read_text(&path, MAX_DB_BYTES).ok()?;
        Some((path, parse(&text, wanted)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# comment\n\
1af4  Red Hat, Inc.\n\
\t1041  Virtio 1.0 network device\n\
\t\t1af4 1100  QEMU Virtual Machine\n\
\t1042  Virtio 1.0 block device\n\
8086  Intel Corporation\n\
\t0d57  Ethernet Controller\n\
C 02  Network controller\n\
\t00  Ethernet controller\n\
C 03  Human Interface Device\n\
\t01  Boot Interface Subclass\n\
\t\t01  Keyboard\n\
AT 0100  USB Undefined\n\
HID 21  HID\n\
L 0436  Afrikaans\n\
\t01  Not a subclass\n";

    #[test]
    fn keeps_only_what_is_asked() {
        let wanted: HashSet<(u16, u16)> = [(0x1af4, 0x1041), (0x1234, 0x0001)].into();
        let names = parse(SAMPLE, &wanted);
        assert_eq!(names.vendors.len(), 1);
        assert_eq!(
            names.product(0x1af4, 0x1041).as_deref(),
            Some("Red Hat, Inc. Virtio 1.0 network device")
        );
        assert_eq!(
            names.product(0x1af4, 0x1042).as_deref(),
            Some("Red Hat, Inc. device 1042")
        );
        assert_eq!(names.product(0x1234, 0x0001), None);
        assert_eq!(names.classes[&0x02], "Network controller");
        assert_eq!(names.subclasses[&(0x02, 0x00)], "Ethernet controller");
        assert_eq!(names.protocols[&(0x03, 0x01, 0x01)], "Keyboard");
        // Lines of other sections do not leak into classes.
        assert_eq!(names.subclasses.len(), 2);
    }

    #[test]
    fn garbage_does_not_panic() {
        let wanted: HashSet<(u16, u16)> = [(0xffff, 0xffff)].into();
        let names = parse("\t\t\n\tzz\nC\nC zz\n\u{fffd}\u{fffd}\nffff\n\tffff\n", &wanted);
        assert_eq!(names.devices.get(&(0xffff, 0xffff)).map(String::as_str), Some(""));
    }
}
