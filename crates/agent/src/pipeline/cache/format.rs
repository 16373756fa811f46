//! The byte layout of a cache segment file: a 16-byte header, then framed records. Pure:
//! encoding appends to a `Vec<u8>`, decoding reads a `&[u8]` and never panics, whatever the
//! bytes (the fuzz-like tests feed it random input).
//!
//! Header: `b"TWGCACHE"`, format version (u32 LE), CRC32 of those 12 bytes (u32 LE).
//! Record: `len` (u32 LE, = 1 + body length), `crc` (u32 LE, CRC32 of kind + body), `kind`
//! (u8), body. All integers little-endian. Bodies:
//!
//! | kind | record | body |
//! |---|---|---|
//! | 1 | Put | seq u64, queue u8 (1 Low, 2 High), the event's bytes |
//! | 2 | Remove | code u8 (0 sent, else a drop-reason code), then one or more seq u64 |
//! | 3 | Dropped | queue u8, drop-reason code u8, count u64 (incoming events never stored) |
//! | 4 | Checkpoint | next_seq u64, then per queue (Low, High): collected, sent, 7 drop counts (u64 each; 6 in version 1) |
//!
//! Version 2 added the drop reason 7 (`lost`: events lost before the cache) and with it the
//! seventh count of a Checkpoint. Version 1 segments are read (a checkpoint's length says
//! which layout it has); a version 1 head segment is never appended to: the first write
//! starts a version 2 segment.

use super::types::{DropCounts, DropReason};
use twinguard_core::event::Priority;

/// The first 8 bytes of every segment file.
pub(super) const MAGIC: [u8; 8] = *b"TWGCACHE";
/// The format version this build reads and writes.
pub(super) const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub(super) const OLDEST_READABLE_VERSION: u32 = 1;
/// Size of the segment header.
pub(super) const HEADER_BYTES: u64 = 16;
/// `len` + `crc` in front of every record.
pub(super) const FRAME_BYTES: usize = 8;
/// Size of a Put record beyond the event's own bytes: frame 8 + kind 1 + seq 8 + queue 1.
pub const PUT_OVERHEAD: u64 = 18;
/// Size of a Remove record without its seqs: frame 8 + kind 1 + code 1.
pub const REMOVE_BASE_BYTES: u64 = 10;
/// Bytes per removed entry in a Remove record.
pub const REMOVE_SEQ_BYTES: u64 = 8;
/// Size of a Checkpoint record: frame 8 + kind 1 + next_seq 8 + 2 queues x 9 counters x 8.
pub(super) const CHECKPOINT_BYTES: u64 = 161;
/// The body of a version 1 Checkpoint after its kind: next_seq + 2 queues x 8 counters.
const CHECKPOINT_V1_REST: usize = 8 + 2 * 8 * 8;
/// The largest event the cache stores, whatever `max_bytes` says: it bounds the allocation a
/// corrupt length field can cause while reading.
pub const MAX_EVENT_BYTES: u64 = 16 << 20;
/// The largest `len` field a valid record can have (a Put of [`MAX_EVENT_BYTES`]); Remove
/// records are split to stay below it.
pub(super) const MAX_RECORD_LEN: u32 = (MAX_EVENT_BYTES + PUT_OVERHEAD) as u32;

const KIND_PUT: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_DROPPED: u8 = 3;
const KIND_CHECKPOINT: u8 = 4;
const CODE_SENT: u8 = 0;

/// One of the two queues (the cache has no Off queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Queue {
    Low,
    High,
}

impl Queue {
    /// Both queues, in index order.
    pub(super) const ALL: [Queue; 2] = [Queue::Low, Queue::High];

    pub(super) fn from_priority(priority: Priority) -> Option<Queue> {
        match priority {
            Priority::Low => Some(Queue::Low),
            Priority::High => Some(Queue::High),
            Priority::Off => None,
        }
    }

    pub(super) fn priority(self) -> Priority {
        match self {
            Queue::Low => Priority::Low,
            Queue::High => Priority::High,
        }
    }

    /// Index into per-queue arrays.
    pub(super) fn index(self) -> usize {
        match self {
            Queue::Low => 0,
            Queue::High => 1,
        }
    }

    fn code(self) -> u8 {
        match self {
            Queue::Low => 1,
            Queue::High => 2,
        }
    }

    fn from_code(code: u8) -> Option<Queue> {
        match code {
            1 => Some(Queue::Low),
            2 => Some(Queue::High),
            _ => None,
        }
    }
}

/// Why entries were removed, as a Remove record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Removal {
    Sent,
    Dropped(DropReason),
}

impl Removal {
    fn code(self) -> u8 {
        match self {
            Removal::Sent => CODE_SENT,
            // PriorityOff is never a removal; mapping it to "sent" cannot happen in practice and
            // keeps encoding total.
            Removal::Dropped(reason) => reason.code().unwrap_or(CODE_SENT),
        }
    }

    fn from_code(code: u8) -> Option<Removal> {
        if code == CODE_SENT {
            Some(Removal::Sent)
        } else {
            DropReason::from_code(code).map(Removal::Dropped)
        }
    }
}

/// Cumulative counters of one queue, as a Checkpoint stores them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) collected: u64,
    pub(super) sent: u64,
    pub(super) dropped: DropCounts,
}

/// A counters snapshot written by compaction before it deletes a segment, so the counting
/// records in that segment may go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub(super) next_seq: u64,
    pub(super) totals: [Totals; 2],
}

/// A decoded record. Borrowed parts point into the decoded buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Record<'a> {
    Put {
        seq: u64,
        queue: Queue,
        event: &'a [u8],
    },
    Remove {
        removal: Removal,
        seqs: SeqList<'a>,
    },
    Dropped {
        queue: Queue,
        reason: DropReason,
        count: u64,
    },
    Checkpoint(Checkpoint),
}

/// The seqs of a Remove record, still encoded (a multiple of 8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SeqList<'a>(&'a [u8]);

impl SeqList<'_> {
    pub(super) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.chunks_exact(8).map(le_u64)
    }
}

/// The 16-byte segment header.
pub(super) fn header() -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What the first bytes of a segment file are.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeaderCheck {
    /// A valid header of a version this build reads (the version).
    Valid(u32),
    /// Shorter than a header and a prefix of a valid one (a crash while creating the file).
    Torn,
    /// Not a cache header.
    Corrupt,
    /// A valid header of another version.
    Version(u32),
}

/// Classifies the start of a segment file.
pub(super) fn check_header(bytes: &[u8]) -> HeaderCheck {
    let expected = header();
    if bytes.len() < expected.len() {
        return if expected.starts_with(bytes) {
            HeaderCheck::Torn
        } else {
            HeaderCheck::Corrupt
        };
    }
    if bytes[..8] != MAGIC {
        return HeaderCheck::Corrupt;
    }
    if crc32fast::hash(&bytes[..12]) != le_u32(&bytes[12..16]) {
        return HeaderCheck::Corrupt;
    }
    match le_u32(&bytes[8..12]) {
        v @ OLDEST_READABLE_VERSION..=FORMAT_VERSION => HeaderCheck::Valid(v),
        other => HeaderCheck::Version(other),
    }
}

/// Appends a Put record.
pub(super) fn encode_put(buf: &mut Vec<u8>, seq: u64, queue: Queue, event: &[u8]) {
    let mut body = Vec::with_capacity(10 + event.len());
    body.push(KIND_PUT);
    body.extend_from_slice(&seq.to_le_bytes());
    body.push(queue.code());
    body.extend_from_slice(event);
    frame(buf, &body);
}

/// Appends Remove records for `seqs` (one record, or several for a huge list; none if the
/// list is empty).
pub(super) fn encode_remove(buf: &mut Vec<u8>, removal: Removal, seqs: &[u64]) {
    // Keep every record's `len` under MAX_RECORD_LEN so the reader's sanity bound holds.
    let per_record = (MAX_EVENT_BYTES / REMOVE_SEQ_BYTES) as usize;
    for chunk in seqs.chunks(per_record) {
        let mut body = Vec::with_capacity(2 + 8 * chunk.len());
        body.push(KIND_REMOVE);
        body.push(removal.code());
        for seq in chunk {
            body.extend_from_slice(&seq.to_le_bytes());
        }
        frame(buf, &body);
    }
}

/// Appends a Dropped record.
pub(super) fn encode_dropped(buf: &mut Vec<u8>, queue: Queue, reason: DropReason, count: u64) {
    let mut body = Vec::with_capacity(11);
    body.push(KIND_DROPPED);
    body.push(queue.code());
    body.push(reason.code().unwrap_or(0));
    body.extend_from_slice(&count.to_le_bytes());
    frame(buf, &body);
}

/// Appends a Checkpoint record.
pub(super) fn encode_checkpoint(buf: &mut Vec<u8>, cp: &Checkpoint) {
    let mut body = Vec::with_capacity(CHECKPOINT_BYTES as usize);
    body.push(KIND_CHECKPOINT);
    body.extend_from_slice(&cp.next_seq.to_le_bytes());
    for t in &cp.totals {
        body.extend_from_slice(&t.collected.to_le_bytes());
        body.extend_from_slice(&t.sent.to_le_bytes());
        for n in t.dropped.0 {
            body.extend_from_slice(&n.to_le_bytes());
        }
    }
    frame(buf, &body);
}

fn frame(buf: &mut Vec<u8>, body: &[u8]) {
    // Bodies are built by this module and bounded by MAX_RECORD_LEN, so the length fits.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    buf.extend_from_slice(body);
}

/// Reads the frame in front of a record: `(len, crc)`. `len` is checked against the sanity
/// bound here, so a caller may allocate `len` bytes.
pub(super) fn decode_frame(frame: &[u8; FRAME_BYTES]) -> Result<(u32, u32), &'static str> {
    let len = le_u32(&frame[..4]);
    if len == 0 {
        return Err("zero record length");
    }
    if len > MAX_RECORD_LEN {
        return Err("record length out of range");
    }
    Ok((len, le_u32(&frame[4..])))
}

/// Checks a record's checksum and decodes its body (`body` = kind + payload, `len` bytes).
pub(super) fn decode_body(body: &[u8], crc: u32) -> Result<Record<'_>, &'static str> {
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let Some((&kind, rest)) = body.split_first() else {
        return Err("empty record");
    };
    match kind {
        KIND_PUT => {
            if rest.len() < 9 {
                return Err("short put record");
            }
            let queue = Queue::from_code(rest[8]).ok_or("bad queue code")?;
            Ok(Record::Put {
                seq: le_u64(&rest[..8]),
                queue,
                event: &rest[9..],
            })
        }
        KIND_REMOVE => {
            let Some((&code, seqs)) = rest.split_first() else {
                return Err("short remove record");
            };
            if seqs.is_empty() || seqs.len() % 8 != 0 {
                return Err("malformed remove record");
            }
            let removal = Removal::from_code(code).ok_or("bad removal code")?;
            Ok(Record::Remove {
                removal,
                seqs: SeqList(seqs),
            })
        }
        KIND_DROPPED => {
            if rest.len() != 10 {
                return Err("malformed dropped record");
            }
            let queue = Queue::from_code(rest[0]).ok_or("bad queue code")?;
            let reason = DropReason::from_code(rest[1]).ok_or("bad drop reason")?;
            Ok(Record::Dropped {
                queue,
                reason,
                count: le_u64(&rest[2..]),
            })
        }
        KIND_CHECKPOINT => {
            let drop_counts = if rest.len() as u64 == CHECKPOINT_BYTES - 9 {
                7
            } else if rest.len() == CHECKPOINT_V1_REST {
                6
            } else {
                return Err("malformed checkpoint record");
            };
            let mut words = rest.chunks_exact(8).map(le_u64);
            let mut next = || words.next().unwrap_or(0);
            let next_seq = next();
            let mut totals = [Totals::default(); 2];
            for t in &mut totals {
                t.collected = next();
                t.sent = next();
                for n in t.dropped.0.iter_mut().take(drop_counts) {
                    *n = next();
                }
            }
            Ok(Record::Checkpoint(Checkpoint { next_seq, totals }))
        }
        _ => Err("unknown record kind"),
    }
}

/// Decodes the record at the start of `buf`: the record and its total size. An incomplete
/// or damaged record is an error (the reader treats it as the end of the valid log).
pub(super) fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), &'static str> {
    let Some(frame) = buf.get(..FRAME_BYTES) else {
        return Err("truncated frame");
    };
    let mut f = [0u8; FRAME_BYTES];
    f.copy_from_slice(frame);
    let (len, crc) = decode_frame(&f)?;
    let end = FRAME_BYTES + len as usize;
    let body = buf.get(FRAME_BYTES..end).ok_or("truncated record")?;
    Ok((decode_body(body, crc)?, end))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_match_the_documented_constants() {
        let mut buf = Vec::new();
        encode_put(&mut buf, 7, Queue::High, b"abc");
        assert_eq!(buf.len() as u64, PUT_OVERHEAD + 3);
        buf.clear();
        encode_remove(&mut buf, Removal::Sent, &[1, 2, 3]);
        assert_eq!(buf.len() as u64, REMOVE_BASE_BYTES + 3 * REMOVE_SEQ_BYTES);
        buf.clear();
        encode_dropped(&mut buf, Queue::Low, DropReason::CacheFull, 4);
        // frame 8 + kind 1 + queue 1 + reason 1 + count 8
        assert_eq!(buf.len(), 19);
        buf.clear();
        encode_checkpoint(&mut buf, &Checkpoint::default());
        assert_eq!(buf.len() as u64, CHECKPOINT_BYTES);
    }

    #[test]
    fn records_round_trip() {
        let mut totals = [Totals::default(); 2];
        totals[1].collected = 9;
        totals[1].sent = 3;
        totals[1].dropped.add(DropReason::DiskFull, 6);
        let cp = Checkpoint { next_seq: 42, totals };
        let mut buf = Vec::new();
        encode_put(&mut buf, 5, Queue::Low, b"{\"a\":1}");
        encode_remove(&mut buf, Removal::Dropped(DropReason::Evicted), &[5, 6]);
        encode_dropped(&mut buf, Queue::High, DropReason::TooLarge, 2);
        encode_checkpoint(&mut buf, &cp);
        let mut at = 0;
        let mut got = Vec::new();
        while at < buf.len() {
            let (record, size) = decode(&buf[at..]).unwrap();
            got.push(format!("{record:?}"));
            at += size;
        }
        assert_eq!(got.len(), 4);
        let (record, _) = decode(&buf).unwrap();
        assert_eq!(
            record,
            Record::Put {
                seq: 5,
                queue: Queue::Low,
                event: b"{\"a\":1}"
            }
        );
        let (_, put_size) = decode(&buf).unwrap();
        match decode(&buf[put_size..]).unwrap().0 {
            Record::Remove { removal, seqs } => {
                assert_eq!(removal, Removal::Dropped(DropReason::Evicted));
                assert_eq!(seqs.iter().collect::<Vec<_>>(), vec![5, 6]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(got[3].contains("next_seq: 42"));
    }

    #[test]
    fn header_checks() {
        let h = header();
        assert_eq!(check_header(&h), HeaderCheck::Valid(FORMAT_VERSION));
        assert_eq!(check_header(&h[..5]), HeaderCheck::Torn);
        assert_eq!(check_header(&[]), HeaderCheck::Torn);
        assert_eq!(check_header(b"XX"), HeaderCheck::Corrupt);
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(check_header(&bad), HeaderCheck::Corrupt);
        let mut v2 = h;
        v2[8..12].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32fast::hash(&v2[..12]);
        v2[12..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check_header(&v2), HeaderCheck::Version(3));
        v2[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&v2[..12]);
        v2[12..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check_header(&v2), HeaderCheck::Valid(1));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode_put(&mut buf, 1, Queue::High, b"hello");
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                // A flip may still decode only if it hit nothing the CRC covers, which is
                // impossible here: every byte is framed or checksummed.
                assert!(decode(&b).is_err(), "byte {i} bit {bit}");
            }
        }
    }
}
