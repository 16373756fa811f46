//! The counter slot: a small file of the cache (`counters.slot`, [`SLOT_FILE_BYTES`]) whose
//! blocks are written once when it is created, then only overwritten in place. Overwriting
//! allocated blocks needs no free space (on ext4, xfs, f2fs-in-place and tmpfs; not on
//! copy-on-write file systems such as btrfs), so this is where drop counts go while the disk
//! is full and no log record can be appended.
//!
//! It holds what the log cannot: the drops counted since the last record that reached the log
//! (with the position of the log's end when they were counted), and a carry of the pipeline's
//! statistics period that could not be stored at a stop. Two copies (A at 0, B at 256) are
//! written alternately, each with a generation number and a CRC32, so a write torn by a power
//! loss leaves the previous copy valid.
//!
//! Copy layout (little-endian): magic `TWGSLOT1` (8), generation u64, mark segment u32, mark
//! offset u64, drops per queue (Low, High) x 7 reasons u64, carry 8 x u64, CRC32 of the
//! preceding bytes u32: 208 bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::log::Location;
use super::types::{CacheError, DropCounts};

/// The slot file's name in the cache directory.
pub(super) const SLOT_FILE: &str = "counters.slot";
/// Size of the slot file: two copies of 256 bytes.
pub const SLOT_FILE_BYTES: u64 = 512;
const COPY_BYTES: u64 = 256;
const MAGIC: [u8; 8] = *b"TWGSLOT1";
const BODY_BYTES: usize = 8 + 8 + 4 + 8 + 2 * 7 * 8 + 8 * 8;

/// Numbers the pipeline carries from one run to the next (its statistics period, when the
/// statistics event could not be stored at a stop); opaque to the cache.
pub type Carry = [u64; 8];

/// What one copy of the slot says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SlotState {
    /// The end of the log when `drops` were counted: they are not in the log if no record
    /// lies beyond this point.
    pub(super) mark: Option<Location>,
    /// Drops per queue (Low, High) not yet written as log records.
    pub(super) drops: [DropCounts; 2],
    /// The pipeline's carry.
    pub(super) carry: Carry,
}

impl SlotState {
    pub(super) fn is_empty(&self) -> bool {
        self.drops.iter().all(|d| d.total() == 0) && self.carry.iter().all(|n| *n == 0)
    }
}

/// The open slot file.
#[derive(Debug)]
pub(super) struct Slot {
    path: PathBuf,
    file: File,
    generation: u64,
    /// Whether the file holds a non-empty state (so an empty one must be written to disarm it).
    armed: bool,
    /// Whether a write since the last `sync` still needs an fdatasync.
    dirty: bool,
}

fn io_err(path: &Path, op: &'static str, source: io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

impl Slot {
    /// Opens the slot in `dir`, creating it with all its blocks written (the reservation) if
    /// it is missing or short. Returns the slot and the newest valid state it holds.
    pub(super) fn open(dir: &Path) -> Result<(Slot, SlotState), CacheError> {
        let path = dir.join(SLOT_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&path, "open", e))?;
        let len = file.metadata().map_err(|e| io_err(&path, "stat", e))?.len();
        let mut bytes = vec![0u8; SLOT_FILE_BYTES as usize];
        if len < SLOT_FILE_BYTES {
            // Write every byte (not fallocate: an unwritten extent may still need a metadata
            // change to be written later), then make it durable.
            let mut reserve = bytes.clone();
            if len > 0 {
                let _ = file.read_exact_at(&mut reserve[..len as usize], 0);
            }
            file.write_all_at(&reserve, 0)
                .and_then(|()| file.flush())
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err(&path, "reserve", e))?;
            bytes = reserve;
        } else {
            file.read_exact_at(&mut bytes, 0)
                .map_err(|e| io_err(&path, "read", e))?;
        }
        let a = decode(&bytes[..COPY_BYTES as usize]);
        let b = decode(&bytes[COPY_BYTES as usize..]);
        let newest = match (a, b) {
            (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let (generation, state) = newest.unwrap_or_default();
        let slot = Slot {
            path,
            file,
            generation,
            armed: !state.is_empty(),
            dirty: false,
        };
        Ok((slot, state))
    }

    /// Writes `state` over the older copy (one `pwrite` into blocks written at creation).
    pub(super) fn write(&mut self, state: &SlotState) -> Result<(), CacheError> {
        if state.is_empty() && !self.armed {
            return Ok(());
        }
        let generation = self.generation.wrapping_add(1);
        let bytes = encode(generation, state);
        let at = (generation % 2) * COPY_BYTES;
        self.file
            .write_all_at(&bytes, at)
            .map_err(|e| io_err(&self.path, "write", e))?;
        self.generation = generation;
        self.armed = !state.is_empty();
        self.dirty = true;
        Ok(())
    }

    /// fdatasync, if something was written since the last one.
    pub(super) fn sync(&mut self) -> Result<(), CacheError> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| io_err(&self.path, "fdatasync", e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether the slot holds a non-empty state.
    pub(super) fn is_armed(&self) -> bool {
        self.armed
    }
}

fn encode(generation: u64, state: &SlotState) -> Vec<u8> {
    let mut b = Vec::with_capacity(BODY_BYTES + 4);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&generation.to_le_bytes());
    let mark = state.mark.unwrap_or(Location {
        segment: 0,
        offset: 0,
    });
    b.extend_from_slice(&mark.segment.to_le_bytes());
    b.extend_from_slice(&mark.offset.to_le_bytes());
    for d in &state.drops {
        for n in d.0 {
            b.extend_from_slice(&n.to_le_bytes());
        }
    }
    for n in state.carry {
        b.extend_from_slice(&n.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(copy: &[u8]) -> Option<(u64, SlotState)> {
    let body = copy.get(..BODY_BYTES)?;
    let crc = copy.get(BODY_BYTES..BODY_BYTES + 4)?;
    if body[..8] != MAGIC || crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let generation = u64_at(8);
    let mut seg = [0u8; 4];
    seg.copy_from_slice(&body[16..20]);
    let segment = u32::from_le_bytes(seg);
    let offset = u64_at(20);
    let mut state = SlotState {
        mark: (segment != 0).then_some(Location { segment, offset }),
        ..SlotState::default()
    };
    let mut i = 28;
    for d in &mut state.drops {
        for n in &mut d.0 {
            *n = u64_at(i);
            i += 8;
        }
    }
    for n in &mut state.carry {
        *n = u64_at(i);
        i += 8;
    }
    Some((generation, state))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copies_round_trip_and_a_torn_copy_falls_back_to_the_other() {
        let mut state = SlotState {
            mark: Some(Location {
                segment: 3,
                offset: 4242,
            }),
            ..SlotState::default()
        };
        state.drops[1].0[3] = 77;
        state.carry[2] = 5;
        let a = encode(6, &state);
        assert_eq!(a.len(), BODY_BYTES + 4);
        assert_eq!(decode(&a), Some((6, state)));
        let mut torn = a.clone();
        torn[40] ^= 1;
        assert_eq!(decode(&torn), None);
        assert_eq!(decode(&[0u8; 256]), None);
    }
}
