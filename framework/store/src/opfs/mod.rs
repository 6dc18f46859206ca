//! The OPFS adapter of stead-core's `Store`, for the service worker (and pages).
//!
//! Layout under the store's folder:
//! - `log/<index, 10 digits>.seg`: the log, every replica's entries in the order they were
//!   stored, framed as in [`crate::segment`] (an entry that follows its replica's previous
//!   record in the same segment is stored compact). A segment is closed once it reaches
//!   `segment_bytes`: OPFS's `createWritable` copies the whole file for an append, so
//!   segments keep an append's cost independent of the log's length.
//! - `snap-<generation>.bin` and `SNAPSHOT`, which names the current generation: a new
//!   snapshot is written to a new file, then the pointer is switched, then the old file
//!   removed.
//! - `meta.pack`, `chunks-0.pack`, `chunks-1.pack`: the metadata, keys and values with a
//!   CRC, grouped by how often they change. A snapshot's chunks (core's
//!   [`chunk_key`](stead_core::replica::chunk_key)s, hundreds of them) go to the pack of
//!   their parity, every other key (what the server acknowledged, membership, schema) to
//!   `meta.pack`. A flush rewrites whole (atomically, on `close`) only the packs whose
//!   keys changed: an acknowledgement from the server rewrites a few hundred bytes, not
//!   every chunk of the snapshot. Packs, not a file per key: OPFS pays per file on open.
//! - `segments.idx`: for each closed segment, its length and, per replica, the first and
//!   last seq it holds (with a CRC), rewritten when a segment closes, after the segment's
//!   last write. Opening reads only the segments holding entries past the snapshot (and
//!   the newest, always scanned); the rest stay on disk until [`OpfsStore::load`] asks for
//!   them. A segment the index does not describe, or whose length differs from it, is
//!   scanned; a store without the index (written by an older version) is read whole
//!   once, and the index written.
//!
//! Every write OPFS makes through `createWritable` lands on `close` or not at all, so the
//! usual damage is a missing last write; a garbled tail (a bad disk, a hand edit) is still
//! detected by the checksums, cut off with a warning, and the valid prefix kept.
//!
//! Reads are served from memory ([`CachedStore`]); [`OpfsStore::flush`] writes what the
//! replica queued. Damage in a segment that opening skipped is found when
//! [`OpfsStore::load`] reads it, and refused there rather than cut.

pub mod fs;

use std::collections::BTreeMap;

use stead_core::ids::ReplicaId;
use stead_core::log::{Entry, Limits, VersionVector};
use stead_core::store::Store;

use crate::cached::{CachedStore, Write};
use crate::segment::{self, Framer};
use fs::{Dir, FsError};

/// What the adapter's folder is called under a parent, and how big segments get.
#[derive(Debug, Clone)]
pub struct OpfsOptions {
    pub segment_bytes: u64,
    pub limits: Limits,
}

impl Default for OpfsOptions {
    fn default() -> Self {
        // TOOLCHAIN.md: appends stay at about 1 ms up to 256 KB segments.
        OpfsOptions { segment_bytes: 256 * 1024, limits: Limits::default() }
    }
}

/// Errors of the OPFS adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpfsError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("invalid metadata key {0:?}")]
    BadKey(String),
    #[error("{0}")]
    Store(String),
}

impl OpfsError {
    pub fn is_quota(&self) -> bool {
        matches!(self, OpfsError::Fs(e) if e.is_quota())
    }
}

impl From<stead_core::Error> for OpfsError {
    fn from(e: stead_core::Error) -> Self {
        OpfsError::Store(e.to_string())
    }
}

/// A damaged log tail that opening cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub segment: String,
    pub kept_bytes: u64,
    pub dropped_bytes: u64,
    pub dropped_segments: usize,
    pub reason: String,
}

#[derive(Debug)]
pub struct OpfsStore {
    dir: Dir,
    log: Dir,
    /// Every metadata key and value, as the packs hold them.
    meta: BTreeMap<String, Vec<u8>>,
    /// Which of [`PACKS`] differ from what is on disk.
    packs_dirty: [bool; 3],
    options: OpfsOptions,
    cache: CachedStore,
    /// The newest segment and its length.
    segment: u32,
    segment_len: u64,
    /// What the newest segment's records say, for framing the next ones compact.
    framer: Framer,
    /// What each closed segment holds, as `segments.idx` says (kept in step on close).
    index: Index,
    /// What the newest segment holds.
    current: SegInfo,
    snapshot_gen: u64,
    recovered: Option<Recovered>,
    /// Segments the last open read.
    segments_read: usize,
}

/// What one segment holds: its length and, per replica, the seqs `[first, end)` of its
/// records (a replica's records in a segment are consecutive entries of its chain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SegInfo {
    len: u64,
    /// `(replica, first, end)`, in the order replicas first appear (a segment holds few).
    ranges: Vec<(ReplicaId, u64, u64)>,
}

impl SegInfo {
    fn add(&mut self, e: &Entry) {
        let (r, seq) = (e.header.replica, e.header.seq);
        match self.ranges.iter_mut().find(|x| x.0 == r) {
            Some(x) => x.2 = seq + 1,
            None => self.ranges.push((r, seq, seq + 1)),
        }
    }

    /// Whether it holds an entry of `replica` in `[from, to)`.
    fn holds(&self, replica: &ReplicaId, from: u64, to: u64) -> bool {
        self.ranges.iter().any(|&(r, first, end)| r == *replica && first < to && end > from)
    }
}

/// Closed segments' [`SegInfo`], by segment number, ascending. (Vectors rather than maps
/// here and below: each new map type costs the worker's wasm several KB.)
type Index = Vec<(u32, SegInfo)>;

fn find(index: &Index, n: u32) -> Option<&SegInfo> {
    index.binary_search_by_key(&n, |(k, _)| *k).ok().map(|i| &index[i].1)
}

const INDEX: &str = "segments.idx";
const INDEX_MAGIC: &[u8; 4] = b"SIX1";

/// `"SIX1" ‖ u32 count ‖ (u32 segment ‖ u64 length ‖ u32 replicas ‖ (16-byte replica ‖
/// u64 first ‖ u64 end)*)* ‖ u32 CRC-32 of everything before it`, little-endian.
fn pack_index(index: &Index) -> Vec<u8> {
    let mut out = INDEX_MAGIC.to_vec();
    out.extend_from_slice(&(index.len() as u32).to_le_bytes());
    for (n, info) in index {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&info.len.to_le_bytes());
        out.extend_from_slice(&(info.ranges.len() as u32).to_le_bytes());
        for (r, first, end) in &info.ranges {
            out.extend_from_slice(r.as_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn unpack_index(bytes: &[u8]) -> Result<Index, String> {
    let body = bytes.len().checked_sub(4).map(|n| &bytes[..n]).ok_or("truncated")?;
    let crc = u32::from_le_bytes(bytes[body.len()..].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc || !body.starts_with(INDEX_MAGIC) {
        return Err("checksum mismatch".into());
    }
    let mut pos = 4;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = body.get(pos..pos + n).ok_or("truncated")?;
        pos += n;
        Ok(s)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let mut out: Index = Vec::new();
    for _ in 0..u32_at(take(4)?) {
        let n = u32_at(take(4)?);
        if out.last().is_some_and(|(last, _)| *last >= n) {
            return Err("segments out of order".into());
        }
        let mut info = SegInfo { len: u64_at(take(8)?), ranges: Vec::new() };
        for _ in 0..u32_at(take(4)?) {
            let r = ReplicaId(take(16)?.try_into().expect("16 bytes"));
            let (first, end) = (u64_at(take(8)?), u64_at(take(8)?));
            if first >= end {
                return Err("an empty range".into());
            }
            info.ranges.push((r, first, end));
        }
        out.push((n, info));
    }
    Ok(out)
}

/// The metadata files: `meta.pack` holds every key but the snapshot's chunks, which go
/// to the pack of their parity.
const PACKS: [&str; 3] = ["meta.pack", "chunks-0.pack", "chunks-1.pack"];
const META_MAGIC: &[u8; 4] = b"SMP1";

/// Which of [`PACKS`] holds `key`.
fn pack_of(key: &str) -> usize {
    stead_core::replica::chunk_parity(key).map_or(0, |p| p + 1)
}

/// `"SMP1" ‖ u32 count ‖ (u32 key length ‖ key ‖ u32 value length ‖ value)* ‖ u32 CRC-32
/// of everything before it`, little-endian.
fn pack_meta(meta: &[(&String, &Vec<u8>)]) -> Vec<u8> {
    let mut out = META_MAGIC.to_vec();
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    for (k, v) in meta {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn unpack_meta(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let body = bytes.len().checked_sub(4).map(|n| &bytes[..n]).ok_or("truncated")?;
    let crc = u32::from_le_bytes(bytes[body.len()..].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc || !body.starts_with(META_MAGIC) {
        return Err("checksum mismatch".into());
    }
    let mut pos = 4;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = body.get(pos..pos + n).ok_or("truncated")?;
        pos += n;
        Ok(s)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let count = u32_at(take(4)?);
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let kl = u32_at(take(4)?);
        let key = String::from_utf8(take(kl)?.to_vec()).map_err(|_| "a key is not UTF-8")?;
        let vl = u32_at(take(4)?);
        out.insert(key, take(vl)?.to_vec());
    }
    Ok(out)
}

/// Merges what the packs hold (`None`: the file is not there) into one map, and says which
/// packs must be written again. A `meta.pack` written before the chunks had packs of their
/// own holds them too: they are kept where their own pack is missing, and both packs are
/// marked for rewriting so the next metadata flush moves them.
fn merge_packs(packs: Vec<Option<BTreeMap<String, Vec<u8>>>>) -> (BTreeMap<String, Vec<u8>>, [bool; 3]) {
    let mut meta = BTreeMap::new();
    let mut dirty = [false; 3];
    let present: Vec<bool> = packs.iter().map(Option::is_some).collect();
    for (i, pack) in packs.into_iter().enumerate() {
        for (k, v) in pack.into_iter().flatten() {
            let home = pack_of(&k);
            if home == i {
                meta.insert(k, v);
            } else if i == 0 {
                dirty[0] = true;
                if !present[home] {
                    dirty[home] = true;
                    meta.insert(k, v);
                }
            }
        }
    }
    (meta, dirty)
}

fn segment_name(i: u32) -> String {
    format!("{i:010}.seg")
}

fn check_key(key: &str) -> Result<(), OpfsError> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !key.starts_with('.');
    if ok { Ok(()) } else { Err(OpfsError::BadKey(key.to_owned())) }
}

/// What opening read of the log, before the cache is filled.
struct LogScan {
    segment: u32,
    segment_len: u64,
    framer: Framer,
    index: Index,
    current: SegInfo,
    recovered: Option<Recovered>,
    segments_read: usize,
    /// Whether `segments.idx` must be written again (built or corrected by this open).
    index_stale: bool,
}

async fn read_snapshot(dir: &Dir) -> Result<(u64, Option<Vec<u8>>), OpfsError> {
    let Some(p) = fs::read_bytes(dir, "SNAPSHOT").await? else { return Ok((0, None)) };
    let Ok(g) = String::from_utf8_lossy(&p).trim().parse::<u64>() else { return Ok((0, None)) };
    let bytes = fs::read_bytes(dir, &format!("snap-{g}.bin")).await?;
    if bytes.is_none() {
        tracing::warn!(generation = g, "the snapshot pointer names a missing file; opening from the log");
    }
    Ok((g, bytes))
}

async fn list_segments(log: &Dir) -> Result<Vec<u32>, OpfsError> {
    let mut segments: Vec<u32> = fs::names(log).await?.iter().filter_map(|n| n.strip_suffix(".seg")?.parse().ok()).collect();
    segments.sort_unstable();
    Ok(segments)
}

/// Reads the given segments, all at once: OPFS answers them concurrently, and a wake
/// waits for the slowest instead of the sum.
async fn read_segments(log: &Dir, which: &[u32]) -> Vec<Result<Option<Vec<u8>>, FsError>> {
    futures::future::join_all(which.iter().map(|&i| {
        let (log, name) = (log.clone(), segment_name(i));
        async move { fs::read_bytes(&log, &name).await }
    }))
    .await
}

fn info_of(scan: &segment::Scan) -> SegInfo {
    let mut info = SegInfo { len: scan.valid as u64, ranges: Vec::new() };
    for e in &scan.entries {
        info.add(e);
    }
    info
}

fn resume_framer(scan: &segment::Scan) -> Framer {
    if scan.valid > 0 { scan.framer(scan.entries.len(), 0) } else { Framer::new(0) }
}

/// Opening through the index: `None` when it cannot be trusted this time (a segment is
/// damaged, missing, or not as the index says; the snapshot covers entries the log lacks),
/// and the caller reads everything instead.
async fn tail_scan(log: &Dir, options: &OpfsOptions, index: &Index, covers: &VersionVector) -> Result<Option<(LogScan, CachedStore)>, OpfsError> {
    let segments = list_segments(log).await?;
    let Some(&newest) = segments.last() else { return Ok(None) };
    // Closed segments the index describes at their present length are trusted unread.
    let indexed: Vec<(u32, &SegInfo)> = segments[..segments.len() - 1].iter().filter_map(|&n| Some((n, find(index, n)?))).collect();
    let sizes = futures::future::join_all(indexed.iter().map(|&(n, _)| {
        let (log, name) = (log.clone(), segment_name(n));
        async move { fs::size(&log, &name).await }
    }))
    .await;
    let mut trusted: Vec<(u32, &SegInfo)> = Vec::new();
    for (&(n, info), size) in indexed.iter().zip(sizes) {
        if size? == Some(info.len) {
            trusted.push((n, info));
        }
    }
    let is_trusted = |n: u32| trusted.binary_search_by_key(&n, |(k, _)| *k).is_ok();
    // Scans, aligned with `segments`: every segment not trusted is read (the newest always,
    // its records frame the next appends), and the trusted ones holding entries past the
    // snapshot.
    let mut scans: Vec<Option<segment::Scan>> = segments.iter().map(|_| None).collect();
    let read_into = |which: Vec<usize>, contents: Vec<Result<Option<Vec<u8>>, FsError>>, scans: &mut Vec<Option<segment::Scan>>| -> Result<bool, OpfsError> {
        for (i, bytes) in which.into_iter().zip(contents) {
            let Some(bytes) = bytes? else { return Ok(false) };
            let scan = segment::scan(&bytes, &options.limits).map_err(|reason| OpfsError::Store(format!("log segment {}: {reason}", segment_name(segments[i]))))?;
            if scan.damage.is_some() || scan.valid != bytes.len() {
                return Ok(false);
            }
            scans[i] = Some(scan);
        }
        Ok(true)
    };
    let unread: Vec<usize> = (0..segments.len()).filter(|&i| !is_trusted(segments[i])).collect();
    let names: Vec<u32> = unread.iter().map(|&i| segments[i]).collect();
    let contents = read_segments(log, &names).await;
    if !read_into(unread.clone(), contents, &mut scans)? {
        return Ok(None);
    }
    let mut heads = VersionVector::new();
    let scanned: Vec<SegInfo> = scans.iter().flatten().map(info_of).collect();
    for info in trusted.iter().map(|(_, i)| *i).chain(&scanned) {
        for &(r, _, end) in &info.ranges {
            let h = heads.entry(r).or_insert(0);
            *h = (*h).max(end);
        }
    }
    if covers.iter().any(|(r, &n)| heads.get(r).copied().unwrap_or(0) < n) {
        // The snapshot covers entries the log lost: the replica replays the log alone.
        return Ok(None);
    }
    let floor = |r: &ReplicaId| covers.get(r).copied().unwrap_or(0);
    let needed: Vec<usize> = (0..segments.len())
        .filter(|&i| trusted.iter().any(|(n, info)| *n == segments[i] && info.ranges.iter().any(|(r, _, end)| *end > floor(r))))
        .collect();
    let names: Vec<u32> = needed.iter().map(|&i| segments[i]).collect();
    let contents = read_segments(log, &names).await;
    if !read_into(needed.clone(), contents, &mut scans)? {
        return Ok(None);
    }
    for &i in &needed {
        let as_indexed = find(index, segments[i]).is_some_and(|info| scans[i].as_ref().is_some_and(|s| info_of(s) == *info));
        if !as_indexed {
            return Ok(None);
        }
    }
    let cache = CachedStore::default();
    for r in heads.keys() {
        if floor(r) > 0 {
            cache.set_floor(*r, floor(r));
        }
    }
    for scan in scans.iter().flatten() {
        for e in scan.entries.iter().filter(|e| e.header.seq >= floor(&e.header.replica)) {
            if cache.load_entry(e).is_err() {
                return Ok(None);
            }
        }
    }
    if cache.heads().ok().as_ref() != Some(&heads) {
        return Ok(None);
    }
    // The index as it should be: trusted entries as they were, closed segments it did not
    // describe as scanned.
    let mut built: Index = Vec::new();
    for (i, &n) in segments[..segments.len() - 1].iter().enumerate() {
        match (find(index, n).filter(|_| is_trusted(n)), &scans[i]) {
            (Some(info), _) => built.push((n, info.clone())),
            (None, Some(scan)) => built.push((n, info_of(scan))),
            (None, None) => return Ok(None),
        }
    }
    let last = scans[segments.len() - 1].as_ref().expect("the newest segment is read");
    let scan = LogScan {
        segment: newest,
        segment_len: last.valid as u64,
        framer: resume_framer(last),
        current: info_of(last),
        index_stale: built != *index,
        index: built,
        recovered: None,
        segments_read: unread.len() + needed.len(),
    };
    Ok(Some((scan, cache)))
}

/// Opening without the index: every segment read, a damaged tail cut off (the rest of
/// that segment and every later one), and the index built.
async fn full_scan(log: &Dir, options: &OpfsOptions, old_index: Option<&Index>) -> Result<(LogScan, CachedStore), OpfsError> {
    let cache = CachedStore::default();
    let segments = list_segments(log).await?;
    let contents = read_segments(log, &segments).await;
    let (mut segment, mut segment_len) = (0, 0);
    let mut recovered = None;
    let mut framer = Framer::new(0);
    let (mut index, mut current): (Index, SegInfo) = (Vec::new(), SegInfo::default());
    for ((i, &n), bytes) in segments.iter().enumerate().zip(contents) {
        let name = segment_name(n);
        let bytes = bytes?.unwrap_or_default();
        let scan = segment::scan(&bytes, &options.limits).map_err(|reason| OpfsError::Store(format!("log segment {name}: {reason}")))?;
        let (mut valid, mut damage, mut kept) = (scan.valid.min(segment::SEGMENT_HEADER), scan.damage.clone(), 0);
        let mut info = SegInfo::default();
        for (entry, &end) in scan.entries.iter().zip(&scan.ends) {
            if let Err(e) = cache.load_entry(entry) {
                damage = Some(format!("entry out of order: {e}"));
                break;
            }
            info.add(entry);
            (valid, kept) = (end, kept + 1);
        }
        info.len = valid as u64;
        (segment, segment_len) = (n, valid as u64);
        framer = if valid > 0 { scan.framer(kept, 0) } else { Framer::new(0) };
        if let Some(reason) = damage {
            let later = &segments[i + 1..];
            tracing::warn!(segment = %name, kept = valid, dropped = bytes.len() - valid, later = later.len(), %reason, "cutting off a damaged log tail");
            fs::write_bytes(log, &name, &bytes[..valid]).await?;
            for &l in later {
                fs::remove(log, &segment_name(l), false).await?;
            }
            recovered = Some(Recovered {
                segment: name,
                kept_bytes: valid as u64,
                dropped_bytes: (bytes.len() - valid) as u64,
                dropped_segments: later.len(),
                reason,
            });
            current = info;
            break;
        }
        if i + 1 < segments.len() {
            index.push((n, info));
        } else {
            current = info;
        }
    }
    let scan = LogScan {
        segment,
        segment_len,
        framer,
        index_stale: old_index != Some(&index),
        index,
        current,
        recovered,
        segments_read: segments.len(),
    };
    Ok((scan, cache))
}

impl OpfsStore {
    /// Opens (creating) the store in `dir`: the snapshot, the metadata, and the log's
    /// entries past the snapshot (every entry when there is no usable snapshot), cutting
    /// off a damaged tail. Older entries stay on disk until [`OpfsStore::load`].
    pub async fn open(dir: Dir, options: OpfsOptions) -> Result<OpfsStore, OpfsError> {
        let log = fs::dir(&dir, "log", true).await?.expect("created");
        let packs = futures::future::join_all(PACKS.iter().map(|name| fs::read_bytes(&dir, name)));
        let (snapshot, packs, index) = futures::join!(read_snapshot(&dir), packs, fs::read_bytes(&dir, INDEX));
        let (snapshot_gen, snapshot) = snapshot?;
        let mut recovered = None;
        let mut unpacked: Vec<Option<BTreeMap<String, Vec<u8>>>> = Vec::new();
        for (name, bytes) in PACKS.iter().zip(packs) {
            unpacked.push(bytes?.map(|bytes| {
                unpack_meta(&bytes).unwrap_or_else(|reason| {
                    tracing::warn!(%reason, pack = name, "a metadata pack is damaged; opening without its keys");
                    recovered.get_or_insert(Recovered {
                        segment: (*name).into(),
                        kept_bytes: 0,
                        dropped_bytes: bytes.len() as u64,
                        dropped_segments: 0,
                        reason,
                    });
                    BTreeMap::new()
                })
            }));
        }
        let (meta, packs_dirty) = merge_packs(unpacked);
        // The entries a snapshot covers are left on disk, unless metadata holding its
        // chunks was lost (the replica then rebuilds them from the log).
        let covers = match &snapshot {
            Some(bytes) if recovered.is_none() => stead_core::replica::snapshot_vector(bytes).ok(),
            _ => None,
        };
        let index = index?.and_then(|b| {
            unpack_index(&b).map_err(|reason| tracing::warn!(%reason, "segments.idx is damaged; reading every segment")).ok()
        });
        let tail = match (&covers, &index) {
            (Some(covers), Some(index)) => tail_scan(&log, &options, index, covers).await?,
            _ => None,
        };
        // No index, no usable snapshot, or something the index did not foresee (damage,
        // a length that differs): read everything, as before the index, cutting damage.
        let (scan, cache) = match tail {
            Some(t) => t,
            None => full_scan(&log, &options, index.as_ref()).await?,
        };
        if let Some(bytes) = snapshot {
            cache.load_snapshot(bytes);
        }
        for (k, v) in &meta {
            cache.load_meta(k, v.clone());
        }
        let mut store = OpfsStore {
            dir,
            log,
            meta,
            packs_dirty,
            options,
            cache,
            segment: scan.segment,
            segment_len: scan.segment_len,
            framer: scan.framer,
            index: scan.index,
            current: scan.current,
            snapshot_gen,
            recovered: scan.recovered.or(recovered),
            segments_read: scan.segments_read,
        };
        if scan.index_stale {
            // Built once for a store an older version wrote, or corrected after a cut; a
            // failure only means the next open reads more.
            if let Err(e) = store.write_index().await {
                tracing::warn!(error = %e, "could not write segments.idx");
            }
        }
        Ok(store)
    }

    /// The store the replica writes to; its writes reach OPFS on [`OpfsStore::flush`].
    pub fn cache(&self) -> CachedStore {
        self.cache.clone()
    }

    /// The damaged tail the last open cut off, if any.
    pub fn recovered(&self) -> Option<&Recovered> {
        self.recovered.as_ref()
    }

    pub fn segment_count(&self) -> u32 {
        self.segment + 1
    }

    /// How many segments the last open read (the rest it left on disk).
    pub fn segments_read(&self) -> usize {
        self.segments_read
    }

    /// Reads into the cache every entry from `want`'s seqs on that opening left on disk,
    /// per replica, reading only the segments that hold them. A segment that turns out
    /// damaged or not as the index says is an error: nothing is cut here, since it may
    /// hold acknowledged entries.
    pub async fn load(&mut self, want: &VersionVector) -> Result<(), OpfsError> {
        let floors = self.cache.floors();
        let need: Vec<(ReplicaId, u64, u64)> =
            want.iter().filter_map(|(r, &from)| floors.get(r).filter(|&&base| from < base).map(|&base| (*r, from, base))).collect();
        if need.is_empty() {
            return Ok(());
        }
        let holds = |info: &SegInfo| need.iter().any(|(r, from, to)| info.holds(r, *from, *to));
        let mut which: Vec<u32> = self.index.iter().filter(|(_, i)| holds(i)).map(|(n, _)| *n).collect();
        if holds(&self.current) {
            which.push(self.segment);
        }
        let contents = read_segments(&self.log, &which).await;
        let mut found: Vec<Vec<Entry>> = need.iter().map(|_| Vec::new()).collect();
        for (&n, bytes) in which.iter().zip(contents) {
            let name = segment_name(n);
            let bytes = bytes?.ok_or_else(|| OpfsError::Store(format!("log segment {name} is missing")))?;
            let scan = segment::scan(&bytes, &self.options.limits).map_err(|reason| OpfsError::Store(format!("log segment {name}: {reason}")))?;
            let expected = if n == self.segment { None } else { find(&self.index, n).map(|i| i.len) };
            let short = expected.is_some_and(|l| l != scan.valid as u64);
            if let Some(reason) = scan.damage.clone().or(short.then(|| "not the length the index says".to_owned())) {
                return Err(OpfsError::Store(format!("log segment {name} is damaged: {reason}")));
            }
            for e in scan.entries {
                let (r, seq) = (e.header.replica, e.header.seq);
                if let Some(k) = need.iter().position(|&(nr, from, to)| nr == r && (from..to).contains(&seq)) {
                    found[k].push(e);
                }
            }
        }
        for ((r, from, to), entries) in need.into_iter().zip(found) {
            if entries.len() as u64 != to - from {
                return Err(OpfsError::Store(format!("the log holds {} of the entries of {r} from seq {from} to {to}", entries.len())));
            }
            self.cache.prepend(r, entries)?;
        }
        Ok(())
    }

    /// [`OpfsStore::load`] of every entry opening left on disk.
    pub async fn load_all(&mut self) -> Result<(), OpfsError> {
        let want = self.cache.whole();
        self.load(&want).await
    }

    pub fn has_pending(&self) -> bool {
        self.cache.has_pending()
    }

    /// Writes everything queued, in order; returns how many writes it made. After an
    /// error the queue is gone and the cache is ahead of the disk: reopen the store.
    pub async fn flush(&mut self) -> Result<usize, OpfsError> {
        let writes = self.cache.take_pending();
        let count = writes.len();
        let mut batch: Vec<u8> = Vec::new();
        // Metadata changes gather in memory and land as one rewrite of each pack they
        // touched, always before any later write of the queue, so the disk keeps the
        // queue's order.
        let mut meta_dirty = false;
        for w in writes {
            match w {
                Write::Append(entry) => {
                    if std::mem::take(&mut meta_dirty) {
                        self.write_meta().await?;
                    }
                    self.stage(&entry, &mut batch).await?
                }
                Write::Meta(key, bytes) => {
                    check_key(&key)?;
                    self.write_batch(&mut batch).await?;
                    self.packs_dirty[pack_of(&key)] = true;
                    self.meta.insert(key, bytes);
                    meta_dirty = true;
                }
                Write::Snapshot(bytes) => {
                    self.write_batch(&mut batch).await?;
                    if std::mem::take(&mut meta_dirty) {
                        self.write_meta().await?;
                    }
                    self.write_snapshot(&bytes).await?
                }
            }
        }
        self.write_batch(&mut batch).await?;
        if meta_dirty {
            self.write_meta().await?;
        }
        Ok(count)
    }

    /// Adds a record to the batch bound for the newest segment, first writing the batch
    /// and starting a new segment when the record would overflow it.
    async fn stage(&mut self, entry: &Entry, batch: &mut Vec<u8>) -> Result<(), OpfsError> {
        let mut framer = self.framer.clone();
        let mut record = Vec::new();
        framer.frame(entry, &mut record);
        let filled = self.segment_len + batch.len() as u64;
        if filled > 0 && filled + record.len() as u64 > self.options.segment_bytes {
            self.write_batch(batch).await?;
            // The closed segment goes into the index once its last write landed, so the
            // index never describes bytes the disk may not hold.
            let mut closed = std::mem::take(&mut self.current);
            closed.len = self.segment_len;
            self.index.push((self.segment, closed));
            self.write_index().await?;
            self.segment += 1;
            self.segment_len = 0;
            // A new segment starts with a header and each replica's first record whole.
            framer = Framer::new(0);
            record.clear();
            framer.frame(entry, &mut record);
        }
        batch.extend_from_slice(&record);
        self.framer = framer;
        self.current.add(entry);
        Ok(())
    }

    async fn write_batch(&mut self, batch: &mut Vec<u8>) -> Result<(), OpfsError> {
        if batch.is_empty() {
            return Ok(());
        }
        fs::write_at(&self.log, &segment_name(self.segment), self.segment_len, batch).await?;
        self.segment_len += batch.len() as u64;
        batch.clear();
        Ok(())
    }

    async fn write_index(&mut self) -> Result<(), OpfsError> {
        Ok(fs::write_bytes(&self.dir, INDEX, &pack_index(&self.index)).await?)
    }

    /// Rewrites the packs whose keys changed: the chunks' first, so a `meta.pack` that no
    /// longer holds chunks (a store an older version wrote) lands after the packs that do.
    async fn write_meta(&mut self) -> Result<(), OpfsError> {
        for i in [1, 2, 0] {
            if !self.packs_dirty[i] {
                continue;
            }
            let keys: Vec<(&String, &Vec<u8>)> = self.meta.iter().filter(|(k, _)| pack_of(k) == i).collect();
            fs::write_bytes(&self.dir, PACKS[i], &pack_meta(&keys)).await?;
            self.packs_dirty[i] = false;
        }
        Ok(())
    }

    async fn write_snapshot(&mut self, bytes: &[u8]) -> Result<(), OpfsError> {
        let next = self.snapshot_gen + 1;
        fs::write_bytes(&self.dir, &format!("snap-{next}.bin"), bytes).await?;
        fs::write_bytes(&self.dir, "SNAPSHOT", next.to_string().as_bytes()).await?;
        let old = std::mem::replace(&mut self.snapshot_gen, next);
        if old > 0 {
            fs::remove(&self.dir, &format!("snap-{old}.bin"), false).await?;
        }
        Ok(())
    }
}
