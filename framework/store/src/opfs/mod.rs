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
//! - `meta.pack`: every metadata key and value in one file with a CRC, rewritten whole
//!   (atomically, on `close`) by a flush that changed metadata. One file, not one per key:
//!   a snapshot's chunks are hundreds of keys, and OPFS pays per file on open.
//!
//! Every write OPFS makes through `createWritable` lands on `close` or not at all, so the
//! usual damage is a missing last write; a garbled tail (a bad disk, a hand edit) is still
//! detected by the checksums, cut off with a warning, and the valid prefix kept.
//!
//! Reads are served from memory ([`CachedStore`]); [`OpfsStore::flush`] writes what the
//! replica queued.

pub mod fs;

use std::collections::BTreeMap;

use stead_core::log::{Entry, Limits};
use stead_core::store::{MemStore, Store};

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
    /// Every metadata key and value, as `meta.pack` holds them.
    meta: BTreeMap<String, Vec<u8>>,
    options: OpfsOptions,
    cache: CachedStore,
    /// The newest segment and its length.
    segment: u32,
    segment_len: u64,
    /// What the newest segment's records say, for framing the next ones compact.
    framer: Framer,
    snapshot_gen: u64,
    recovered: Option<Recovered>,
}

const META_PACK: &str = "meta.pack";
const META_MAGIC: &[u8; 4] = b"SMP1";

/// `"SMP1" ‖ u32 count ‖ (u32 key length ‖ key ‖ u32 value length ‖ value)* ‖ u32 CRC-32
/// of everything before it`, little-endian.
fn pack_meta(meta: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
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

impl OpfsStore {
    /// Opens (creating) the store in `dir`, reading the whole log into memory and cutting
    /// off a damaged tail.
    pub async fn open(dir: Dir, options: OpfsOptions) -> Result<OpfsStore, OpfsError> {
        let log = fs::dir(&dir, "log", true).await?.expect("created");
        let mut mem = MemStore::new();

        let mut segments: Vec<u32> = fs::names(&log)
            .await?
            .iter()
            .filter_map(|n| n.strip_suffix(".seg")?.parse().ok())
            .collect();
        segments.sort_unstable();
        // Every file is read at once: OPFS answers them concurrently, and a wake waits for
        // the slowest instead of the sum.
        let contents = futures::future::join_all(segments.iter().map(|&i| {
            let (log, name) = (log.clone(), segment_name(i));
            async move { fs::read_bytes(&log, &name).await }
        }))
        .await;
        let (mut segment, mut segment_len) = (0, 0);
        let mut recovered = None;
        let mut framer = Framer::new(0);
        for ((i, &index), bytes) in segments.iter().enumerate().zip(contents) {
            let name = segment_name(index);
            let bytes = bytes?.unwrap_or_default();
            let scan = segment::scan(&bytes, &options.limits).map_err(|reason| OpfsError::Store(format!("log segment {name}: {reason}")))?;
            let (mut valid, mut damage, mut kept) = (scan.valid.min(segment::SEGMENT_HEADER), scan.damage.clone(), 0);
            for (entry, &end) in scan.entries.iter().zip(&scan.ends) {
                if let Err(e) = mem.append(entry) {
                    damage = Some(format!("entry out of order: {e}"));
                    break;
                }
                (valid, kept) = (end, kept + 1);
            }
            (segment, segment_len) = (index, valid as u64);
            framer = if valid > 0 { scan.framer(kept, 0) } else { Framer::new(0) };
            if let Some(reason) = damage {
                let later = &segments[i + 1..];
                tracing::warn!(segment = %name, kept = valid, dropped = bytes.len() - valid, later = later.len(), %reason, "cutting off a damaged log tail");
                fs::write_bytes(&log, &name, &bytes[..valid]).await?;
                for &l in later {
                    fs::remove(&log, &segment_name(l), false).await?;
                }
                recovered = Some(Recovered {
                    segment: name,
                    kept_bytes: valid as u64,
                    dropped_bytes: (bytes.len() - valid) as u64,
                    dropped_segments: later.len(),
                    reason,
                });
                break;
            }
        }

        let mut snapshot_gen = 0;
        if let Some(p) = fs::read_bytes(&dir, "SNAPSHOT").await? {
            let gen_text = String::from_utf8_lossy(&p);
            if let Ok(g) = gen_text.trim().parse::<u64>() {
                snapshot_gen = g;
                match fs::read_bytes(&dir, &format!("snap-{g}.bin")).await? {
                    Some(s) => mem.put_snapshot(&s)?,
                    None => tracing::warn!(generation = g, "the snapshot pointer names a missing file; opening from the log"),
                }
            }
        }
        let meta = match fs::read_bytes(&dir, META_PACK).await? {
            Some(bytes) => unpack_meta(&bytes).unwrap_or_else(|reason| {
                tracing::warn!(%reason, "meta.pack is damaged; opening without metadata");
                recovered.get_or_insert(Recovered {
                    segment: META_PACK.into(),
                    kept_bytes: 0,
                    dropped_bytes: bytes.len() as u64,
                    dropped_segments: 0,
                    reason,
                });
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        for (k, v) in &meta {
            mem.put_meta(k, v)?;
        }
        Ok(OpfsStore {
            dir,
            log,
            meta,
            options,
            cache: CachedStore::loaded(mem),
            segment,
            segment_len,
            framer,
            snapshot_gen,
            recovered,
        })
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

    pub fn has_pending(&self) -> bool {
        self.cache.has_pending()
    }

    /// Writes everything queued, in order; returns how many writes it made. After an
    /// error the queue is gone and the cache is ahead of the disk: reopen the store.
    pub async fn flush(&mut self) -> Result<usize, OpfsError> {
        let writes = self.cache.take_pending();
        let count = writes.len();
        let mut batch: Vec<u8> = Vec::new();
        // Metadata changes gather in memory and land as one rewrite of meta.pack, always
        // before any later write of the queue, so the disk keeps the queue's order.
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
            self.segment += 1;
            self.segment_len = 0;
            // A new segment starts with a header and each replica's first record whole.
            framer = Framer::new(0);
            record.clear();
            framer.frame(entry, &mut record);
        }
        batch.extend_from_slice(&record);
        self.framer = framer;
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

    async fn write_meta(&mut self) -> Result<(), OpfsError> {
        Ok(fs::write_bytes(&self.dir, META_PACK, &pack_meta(&self.meta)).await?)
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
