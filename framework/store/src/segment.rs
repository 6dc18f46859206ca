//! The framing every log segment uses (format 2), shared by the file and OPFS adapters.
//!
//! A segment is `"STSG" ‖ u8 version = 2`, then records
//! `varint (body length × 2 + compact) ‖ u32 CRC-32 of (that varint ‖ body) ‖ body`. The body
//! is the entry's canonical encoding, or, when the entry directly follows the previous
//! record of the same replica in the same segment, its compact form (stead-core's
//! `log::Link`: clock delta, payload and signature; space, replica, seq and prev are
//! re-derived from that record, and the signature, which covers them, checks them). So
//! each record decodes from its segment's earlier records alone, the first record of a
//! replica in a segment is whole, and a torn tail never makes an earlier record unreadable.
//!
//! A reader stops at the first record that is cut short, fails its checksum or does not
//! decode, and reports how many bytes were good. A segment that does not start with this
//! header is refused: it is another format, not damage.

use std::collections::HashMap;

use stead_core::codec::{Reader, Writer};
use stead_core::ids::ReplicaId;
use stead_core::log::{Entry, Limits, Link};

pub const MAGIC: &[u8; 4] = b"STSG";
pub const VERSION: u8 = 2;
pub const SEGMENT_HEADER: usize = 5;
/// The most a record adds to its body: a 5-byte length varint and the CRC.
pub const RECORD_OVERHEAD: usize = 9;

/// What a segment's records so far say about one replica: its slot (the order in which
/// replicas first appear in the segment), its last entry and how many records it has.
#[derive(Debug, Clone, Copy)]
struct Run {
    slot: usize,
    link: Link,
    count: usize,
}

/// The replicas a segment's records so far hold, by id and by slot.
#[derive(Debug, Clone, Default)]
struct Runs {
    by_replica: HashMap<ReplicaId, Run>,
    slots: Vec<ReplicaId>,
}

impl Runs {
    fn push(&mut self, entry: &Entry) {
        let replica = entry.header.replica;
        let link = Link::to(entry);
        match self.by_replica.get_mut(&replica) {
            Some(run) => {
                run.link = link;
                run.count += 1;
            }
            None => {
                self.by_replica.insert(replica, Run { slot: self.slots.len(), link, count: 1 });
                self.slots.push(replica);
            }
        }
    }
}

/// Writes records into one segment.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    /// Whether the segment header is written.
    started: bool,
    runs: Runs,
    /// Every `full_every`-th record of a replica in the segment is written whole (0: only
    /// the first), so a reader can start there without decoding from the segment's start.
    full_every: usize,
}

impl Framer {
    /// For an empty segment: the first record brings the segment header.
    pub fn new(full_every: usize) -> Framer {
        Framer { started: false, runs: Runs::default(), full_every }
    }

    /// For a segment already holding a header and the records of `entries`, in order.
    pub fn resume(entries: &[Entry], full_every: usize) -> Framer {
        let mut f = Framer { started: true, runs: Runs::default(), full_every };
        for e in entries {
            f.runs.push(e);
        }
        f
    }

    /// Appends one framed record (after the segment header, for a new segment) to `out`.
    pub fn frame(&mut self, entry: &Entry, out: &mut Vec<u8>) {
        if !self.started {
            out.extend_from_slice(MAGIC);
            out.push(VERSION);
            self.started = true;
        }
        let mut body = Writer::with_capacity(entry.encoded_len());
        let compact = match self.runs.by_replica.get(&entry.header.replica) {
            Some(run) if !self.is_keyframe(run.count) && entry.follows(&run.link) => {
                body.varint(run.slot as u64);
                entry.encode_compact_into(&run.link, &mut body);
                true
            }
            _ => {
                entry.encode_into(&mut body);
                false
            }
        };
        let mut head = Writer::with_capacity(5);
        head.varint(((body.buf.len() as u64) << 1) | compact as u64);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head.buf);
        crc.update(&body.buf);
        out.extend_from_slice(&head.buf);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&body.buf);
        self.runs.push(entry);
    }

    fn is_keyframe(&self, count: usize) -> bool {
        self.full_every > 0 && count.is_multiple_of(self.full_every)
    }

    /// For a segment holding `count` records of one replica only (the file store's), the
    /// last of them `last`: what [`Framer::resume`] gives for those records, hashing one.
    pub fn after_one_replica(last: &Entry, count: usize, full_every: usize) -> Framer {
        let mut runs = Runs::default();
        runs.push(last);
        if let Some(run) = runs.by_replica.get_mut(&last.header.replica) {
            run.count = count;
        }
        Framer { started: true, runs, full_every }
    }

    /// Bytes `entry` would take as the next record (with the segment header, if due).
    pub fn framed_len(&self, entry: &Entry) -> usize {
        let mut out = Vec::new();
        self.clone().frame(entry, &mut out);
        out.len()
    }
}

/// Reads records from a record boundary on: from a segment's first record, or, in a
/// segment of one replica (the file store's), from any record its writer made whole.
#[derive(Debug, Clone, Default)]
pub struct Unframer {
    runs: Runs,
}

/// One record read by [`Unframer::next`].
#[derive(Debug)]
pub struct Record {
    /// Framed length in bytes.
    pub len: usize,
    pub entry: Entry,
    /// Whether the body was the compact form.
    pub compact: bool,
}

impl Unframer {
    /// Reads from a segment's first record (after the header).
    pub fn new() -> Unframer {
        Unframer::default()
    }

    /// Checks and decodes the record at the start of `bytes`.
    pub fn next(&mut self, bytes: &[u8], limits: &Limits) -> Result<Record, String> {
        let (len, compact, body) = checked_record(bytes)?;
        let entry = if compact {
            let mut b = Reader::new(body, "record");
            let slot = b.varint().map_err(|e| e.to_string())?;
            let run = usize::try_from(slot)
                .ok()
                .and_then(|s| self.runs.slots.get(s))
                .map(|r| self.runs.by_replica[r])
                .ok_or("compact record without a predecessor in its segment")?;
            Entry::decode_compact(&body[b.position()..], &run.link, limits).map_err(|e| e.to_string())?
        } else {
            Entry::decode(body, limits).map_err(|e| e.to_string())?
        };
        self.runs.push(&entry);
        Ok(Record { len, entry, compact })
    }

}

/// What reading a whole segment found.
#[derive(Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// End offset of each entry's record.
    pub ends: Vec<usize>,
    /// Whether each entry's record was compact.
    pub compact: Vec<bool>,
    /// Bytes of the header and whole, valid records at the start of the segment.
    pub valid: usize,
    /// Why reading stopped before the end, if it did.
    pub damage: Option<String>,
    /// The runs of all of `entries`, for [`Scan::framer`].
    runs: Runs,
}

impl Scan {
    /// A framer that goes on after the first `kept` of `entries` as the one that wrote
    /// them would: [`Framer::resume`], without hashing every entry again when all are kept.
    pub fn framer(&self, kept: usize, full_every: usize) -> Framer {
        if kept == self.entries.len() {
            Framer { started: true, runs: self.runs.clone(), full_every }
        } else {
            Framer::resume(&self.entries[..kept], full_every)
        }
    }
}

/// Where a segment's records start, or `None` when it has none to read: it is empty, or
/// its header is torn (cut short, or zeros where a crash left the file longer than what
/// was written), which is set as `damage`. `Err` means `bytes` are not a segment of this
/// format (an older one, or not a log at all).
fn records_start(bytes: &[u8], damage: &mut Option<String>) -> Result<Option<usize>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let head = &bytes[..bytes.len().min(SEGMENT_HEADER)];
    let torn = head.iter().all(|&b| b == 0) || (head.len() < SEGMENT_HEADER && [&MAGIC[..], &[VERSION]].concat().starts_with(head));
    if torn {
        *damage = Some("torn segment header".into());
        return Ok(None);
    }
    if head.len() < SEGMENT_HEADER || &head[..4] != MAGIC {
        return Err("not a log segment of format 2 (an older format, or another file)".into());
    }
    if head[4] != VERSION {
        return Err(format!("unsupported log segment version {}", head[4]));
    }
    Ok(Some(SEGMENT_HEADER))
}

/// One record found by [`skim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub start: usize,
    pub end: usize,
    pub compact: bool,
}

/// Where a segment's records lie, found by their framing and checksums alone.
#[derive(Debug)]
pub struct Skim {
    pub records: Vec<Bounds>,
    /// Bytes of the header and whole, checksummed records at the start of the segment.
    pub valid: usize,
    /// Why skimming stopped before the end, if it did.
    pub damage: Option<String>,
}

/// Finds a segment's records without decoding them: a compact record's entry derives
/// from its predecessor's hash, so decoding a run of them means hashing every entry,
/// which is most of what reading a whole segment costs. A record whose checksum holds but
/// whose body does not decode is not found here; the reader that decodes it refuses it.
/// `Err` and damage as in [`scan`].
pub fn skim(bytes: &[u8]) -> Result<Skim, String> {
    let mut out = Skim { records: Vec::new(), valid: 0, damage: None };
    let Some(mut pos) = records_start(bytes, &mut out.damage)? else { return Ok(out) };
    out.valid = pos;
    while pos < bytes.len() {
        match checked_record(&bytes[pos..]) {
            Ok((len, compact, _)) => {
                out.records.push(Bounds { start: pos, end: pos + len, compact });
                pos += len;
                out.valid = pos;
            }
            Err(reason) => {
                out.damage = Some(reason);
                break;
            }
        }
    }
    Ok(out)
}

/// The framed length, compactness and body of the record at the start of `bytes`, once
/// its length fits and its checksum holds.
fn checked_record(bytes: &[u8]) -> Result<(usize, bool, &[u8]), String> {
    let mut r = Reader::new(bytes, "record");
    let head = r.varint().map_err(|_| "truncated record header".to_string())?;
    let head_len = r.position();
    let crc = r.u32().map_err(|_| "truncated record header".to_string())?;
    let len = usize::try_from(head >> 1).map_err(|_| "truncated record".to_string())?;
    let body = r.take(len).map_err(|_| "truncated record".to_string())?;
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..head_len]);
    h.update(body);
    if h.finalize() != crc {
        return Err("checksum mismatch".into());
    }
    Ok((r.position(), head & 1 == 1, body))
}

/// Reads a whole segment. `Err` means it is not a segment of this format (an older one,
/// or not a log at all): refuse it rather than cut it as damage. A header cut short (or
/// zeros where a crash left the file longer than what was written) is damage at byte 0.
pub fn scan(bytes: &[u8], limits: &Limits) -> Result<Scan, String> {
    let mut out = Scan { entries: Vec::new(), ends: Vec::new(), compact: Vec::new(), valid: 0, damage: None, runs: Runs::default() };
    let Some(mut pos) = records_start(bytes, &mut out.damage)? else { return Ok(out) };
    out.valid = pos;
    let mut un = Unframer::new();
    while pos < bytes.len() {
        match un.next(&bytes[pos..], limits) {
            Ok(rec) => {
                pos += rec.len;
                out.entries.push(rec.entry);
                out.ends.push(pos);
                out.compact.push(rec.compact);
                out.valid = pos;
            }
            Err(reason) => {
                out.damage = Some(reason);
                break;
            }
        }
    }
    out.runs = un.runs;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_core::testing::Space;

    /// `n` entries of each of `replicas` replicas, interleaved.
    fn entries(n: usize, replicas: usize) -> Vec<Entry> {
        let mut rng = stead_core::env::SeededRandom::new(7);
        let space = Space::new(replicas, &mut rng);
        let mut reps: Vec<_> = (0..replicas).map(|r| space.open(r)).collect();
        let mut out = Vec::new();
        for i in 0..n {
            for r in &mut reps {
                let op = stead_core::ops::Op::CounterAdd {
                    collection: "c".into(),
                    record: stead_core::ids::RecordId([1; 16]),
                    field: "n".into(),
                    delta: i as i64,
                };
                out.push(r.commit(vec![op], 1_000 + i as u64, &mut rng).unwrap());
            }
        }
        out
    }

    fn framed(es: &[Entry], full_every: usize) -> (Vec<u8>, Vec<usize>) {
        let mut f = Framer::new(full_every);
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for e in es {
            let before = bytes.len();
            let expect = f.framed_len(e);
            f.frame(e, &mut bytes);
            assert_eq!(bytes.len() - before, expect);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn records_after_the_first_of_their_replica_are_compact() {
        let check = |n: usize, replicas: usize, full_every: usize, expect: &str| {
            let es = entries(n, replicas);
            let (bytes, ends) = framed(&es, full_every);
            let s = scan(&bytes, &Limits::default()).unwrap();
            assert_eq!(s.entries, es);
            assert_eq!(s.ends, ends);
            let forms: String = s.compact.iter().map(|&c| if c { 'c' } else { 'W' }).collect();
            assert_eq!(forms, expect, "{n} × {replicas}, whole every {full_every}");
            // A framer resumed from the scan goes on as the first one would have.
            let mut more = Framer::resume(&s.entries, full_every);
            let mut tail = Vec::new();
            let extra = entries(n + 1, replicas);
            more.frame(&extra[n * replicas], &mut tail);
            // So does one taken from the scan itself, whole or cut.
            for kept in [s.entries.len(), s.entries.len() - 1] {
                let (mut resumed, mut from_scan) = (Framer::resume(&s.entries[..kept], full_every), s.framer(kept, full_every));
                let (mut a, mut b) = (Vec::new(), Vec::new());
                resumed.frame(&extra[kept], &mut a);
                from_scan.frame(&extra[kept], &mut b);
                assert_eq!(a, b, "after {kept} of {} entries", s.entries.len());
            }
            let mut all = bytes.clone();
            all.extend_from_slice(&tail);
            assert_eq!(scan(&all, &Limits::default()).unwrap().entries.len(), n * replicas + 1);
        };
        check(4, 1, 0, "Wccc");
        check(3, 2, 0, "WWcccc");
        check(5, 1, 2, "WcWcW");
    }

    #[test]
    fn every_cut_keeps_exactly_the_whole_records_before_it() {
        let es = entries(2, 2);
        let (bytes, ends) = framed(&es, 0);
        for cut in 0..=bytes.len() {
            let s = scan(&bytes[..cut], &Limits::default()).unwrap();
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(s.entries.len(), whole, "cut at {cut}");
            let valid = if whole > 0 { ends[whole - 1] } else if cut >= SEGMENT_HEADER { SEGMENT_HEADER } else { 0 };
            assert_eq!(s.valid, valid, "cut at {cut}");
            assert_eq!(s.damage.is_some(), cut != s.valid, "cut at {cut}");
            let k = skim(&bytes[..cut]).unwrap();
            assert_eq!((k.valid, k.damage.is_some()), (s.valid, s.damage.is_some()), "skimmed, cut at {cut}");
            assert_eq!(k.records.iter().map(|r| r.end).collect::<Vec<_>>(), s.ends, "skimmed, cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_ends_the_scan_at_its_record() {
        let es = entries(2, 2);
        let (bytes, ends) = framed(&es, 0);
        for i in ends[0]..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let s = scan(&bad, &Limits::default()).unwrap();
            let at = ends.iter().filter(|&&end| end <= i).count();
            assert_eq!(s.entries, es[..at].to_vec(), "flip at {i}");
            assert!(s.damage.is_some(), "flip at {i} went unnoticed");
            let k = skim(&bad).unwrap();
            assert_eq!((k.records.len(), k.valid), (at, s.valid), "skimmed, flip at {i}");
        }
    }

    #[test]
    fn other_formats_are_refused_not_cut() {
        let check = |bytes: &[u8], expect: &str| {
            let got = match scan(bytes, &Limits::default()) {
                Ok(s) => format!("valid {} damage {:?}", s.valid, s.damage),
                Err(e) => e,
            };
            assert_eq!(got, expect);
            let skimmed = match skim(bytes) {
                Ok(s) => format!("valid {} damage {:?}", s.valid, s.damage),
                Err(e) => e,
            };
            assert_eq!(skimmed, expect);
        };
        check(b"", "valid 0 damage None");
        check(b"STS", "valid 0 damage Some(\"torn segment header\")");
        check(&[0; 9], "valid 0 damage Some(\"torn segment header\")");
        check(b"STSG\x02", "valid 5 damage None");
        check(b"STSG\x01\x00", "unsupported log segment version 1");
        check(&[0x7b, 0x03, 0, 0, 1, 2, 3], "not a log segment of format 2 (an older format, or another file)");
    }
}
