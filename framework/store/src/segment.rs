//! The record framing every log segment uses: `u32 length ‖ u32 CRC-32 of the entry ‖
//! encoded entry`, little-endian. A reader stops at the first record that is cut short,
//! fails its checksum or does not decode, and reports how many bytes were good.

use stead_core::log::{Entry, Limits};

pub const RECORD_HEADER: usize = 8;

/// Appends one framed record to `out`.
pub fn frame(entry: &Entry, out: &mut Vec<u8>) {
    let body = entry.encode();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Checks the record at the start of `bytes`; returns its framed length and entry.
pub fn unframe(bytes: &[u8], limits: &Limits) -> Result<(usize, Entry), String> {
    if bytes.len() < RECORD_HEADER {
        return Err("truncated record header".into());
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let body = bytes.get(RECORD_HEADER..RECORD_HEADER + len).ok_or("truncated record")?;
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let entry = Entry::decode(body, limits).map_err(|e| e.to_string())?;
    Ok((RECORD_HEADER + len, entry))
}

/// What reading a whole segment found.
#[derive(Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// Bytes of whole, valid records at the start of the segment.
    pub valid: usize,
    /// Why reading stopped before the end, if it did.
    pub damage: Option<String>,
}

pub fn scan(bytes: &[u8], limits: &Limits) -> Scan {
    let mut entries = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match unframe(&bytes[pos..], limits) {
            Ok((len, entry)) => {
                entries.push(entry);
                pos += len;
            }
            Err(reason) => return Scan { entries, valid: pos, damage: Some(reason) },
        }
    }
    Scan { entries, valid: pos, damage: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_core::testing::Space;

    fn entries(n: usize) -> Vec<Entry> {
        let mut rng = stead_core::env::SeededRandom::new(7);
        let space = Space::new(1, &mut rng);
        let mut r = space.open(0);
        (0..n)
            .map(|i| {
                let op = stead_core::ops::Op::CounterAdd {
                    collection: "c".into(),
                    record: stead_core::ids::RecordId([1; 16]),
                    field: "n".into(),
                    delta: i as i64,
                };
                r.commit(vec![op], 1_000 + i as u64, &mut rng).unwrap()
            })
            .collect()
    }

    #[test]
    fn every_cut_keeps_exactly_the_whole_records_before_it() {
        let es = entries(3);
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for e in &es {
            frame(e, &mut bytes);
            ends.push(bytes.len());
        }
        for cut in 0..=bytes.len() {
            let s = scan(&bytes[..cut], &Limits::default());
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(s.entries.len(), whole, "cut at {cut}");
            assert_eq!(s.valid, if whole == 0 { 0 } else { ends[whole - 1] });
            assert_eq!(s.damage.is_some(), cut != s.valid, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_ends_the_scan_at_its_record() {
        let es = entries(3);
        let mut bytes = Vec::new();
        for e in &es {
            frame(e, &mut bytes);
        }
        let first = RECORD_HEADER + es[0].encode().len();
        for i in first..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let s = scan(&bad, &Limits::default());
            assert!(s.entries.len() < 3, "flip at {i} went unnoticed");
            assert!(s.valid >= first, "flip at {i} cost the record before it");
            assert!(s.damage.is_some());
        }
    }
}
