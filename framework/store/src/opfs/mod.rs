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
//! - `meta/<key>`: small named blobs, each replaced whole.
//!
//! Every write OPFS makes through `createWritable` lands on `close` or not at all, so the
//! usual damage is a missing last write; a garbled tail (a bad disk, a hand edit) is still
//! detected by the checksums, cut off with a warning, and the valid prefix kept.
//!
//! Reads are served from memory ([`CachedStore`]); [`OpfsStore::flush`] writes what the
//! replica queued.

pub mod fs;

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
    meta: Dir,
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
        let meta = fs::dir(&dir, "meta", true).await?.expect("created");
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
            let (mut valid, mut damage, mut kept) = (scan.valid.min(segment::SEGMENT_HEADER), scan.damage, 0);
            for (entry, &end) in scan.entries.iter().zip(&scan.ends) {
                if let Err(e) = mem.append(entry) {
                    damage = Some(format!("entry out of order: {e}"));
                    break;
                }
                (valid, kept) = (end, kept + 1);
            }
            (segment, segment_len) = (index, valid as u64);
            framer = if valid > 0 { Framer::resume(&scan.entries[..kept], 0) } else { Framer::new(0) };
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
        let keys: Vec<String> = fs::names(&meta).await?.into_iter().filter(|k| check_key(k).is_ok()).collect();
        let values = futures::future::join_all(keys.iter().map(|k| fs::read_bytes(&meta, k))).await;
        for (key, value) in keys.iter().zip(values) {
            if let Some(b) = value? {
                mem.put_meta(key, &b)?;
            }
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
        for w in writes {
            match w {
                Write::Append(entry) => self.stage(&entry, &mut batch).await?,
                other => {
                    self.write_batch(&mut batch).await?;
                    match other {
                        Write::Snapshot(bytes) => self.write_snapshot(&bytes).await?,
                        Write::Meta(key, bytes) => {
                            check_key(&key)?;
                            fs::write_bytes(&self.meta, &key, &bytes).await?;
                        }
                        Write::Append(_) => unreachable!("handled above"),
                    }
                }
            }
        }
        self.write_batch(&mut batch).await?;
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
