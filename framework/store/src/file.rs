//! The native file store: segmented per-replica logs, atomic snapshots and metadata.
//!
//! Layout under the root folder:
//! - `log/<replica hex>/<first seq, 20 digits>.seg`: segments framed as in
//!   [`crate::segment`], seqs consecutive; every [`FULL_EVERY`]-th record of a segment is
//!   a whole entry, the others compact, so a read decodes at most that many records
//!   before the first it wants;
//! - `snapshot.bin`, `meta/<key>`: whole files replaced by rename.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use stead_core::ids::ReplicaId;
use stead_core::log::{Entry, Limits, VersionVector};
use stead_core::store::Store;

use crate::segment::{self, Framer, Unframer};
use crate::StoreError;

/// Records of a segment written whole (counting from its first): where reads can start.
/// One whole entry in 64 costs ~1.3 bytes per entry; the compact ones save ~80 each.
pub const FULL_EVERY: usize = 64;

#[derive(Debug, Clone)]
pub struct Options {
    /// A new segment starts once the newest one reaches this size.
    pub segment_bytes: u64,
    /// fsync after every append (what lets the sync protocol acknowledge an entry).
    pub fsync: bool,
    /// The largest entry payload read back.
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options { segment_bytes: 4 << 20, fsync: true, limits: Limits { max_payload: 64 << 20 } }
    }
}

/// A torn or garbled tail cut off when opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub path: PathBuf,
    /// Length kept: everything before the first bad record.
    pub kept_bytes: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Byte offset of each record; record `i` holds seq `first_seq + i`.
    offsets: Vec<u64>,
    len: u64,
}

#[derive(Debug, Default)]
struct ReplicaLog {
    segments: Vec<Segment>,
    /// Open handle on the newest segment, for appends.
    tail: Option<File>,
    /// What the newest segment's records so far say, for framing the next one.
    framer: Framer,
}

impl ReplicaLog {
    fn head(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.first_seq + s.offsets.len() as u64)
    }
}

/// A [`Store`] over a folder of the native file system.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    options: Options,
    logs: BTreeMap<ReplicaId, ReplicaLog>,
    recovered: Vec<Recovery>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // Directory fsync makes a rename durable; some platforms cannot open folders.
    match File::open(dir) {
        Ok(f) => f.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// How many of a segment's skimmed records opening keeps, why it stops there, and the
/// last kept entry (decoded for the newest segment only: appends go on from it).
struct Kept {
    count: usize,
    bad: Option<String>,
    last: Option<Entry>,
}

/// Checks the records [`segment::skim`] found in a segment of `replica` starting at
/// `first_seq`: each [`FULL_EVERY`]-th record must be whole and hold its seq. Of the
/// newest segment the records from the last whole one on are decoded too (at most
/// `FULL_EVERY`, whatever the log's length), for the framer of the next append. The
/// compact records before that are left to the reads that decode them; their checksums
/// held, so only a bad writer, not a crash or a flipped bit, could have made them wrong,
/// and such a read fails with [`StoreError::Corrupt`] instead of returning them.
fn check_records(bytes: &[u8], records: &[segment::Bounds], replica: ReplicaId, first_seq: u64, newest: bool, limits: &Limits) -> Kept {
    let holds = |entry: &Entry, i: usize| -> Result<(), String> {
        let seq = first_seq + i as u64;
        if entry.header.replica != replica || entry.header.seq != seq {
            return Err(format!("record holds {}/{}, expected seq {seq}", entry.header.replica, entry.header.seq));
        }
        Ok(())
    };
    let mut kept = Kept { count: records.len(), bad: None, last: None };
    for (i, r) in records.iter().enumerate().step_by(FULL_EVERY) {
        let whole = if r.compact {
            Err(format!("record of seq {} is compact where a whole one is due", first_seq + i as u64))
        } else {
            Unframer::new().next(&bytes[r.start..r.end], limits).and_then(|rec| holds(&rec.entry, i))
        };
        if let Err(reason) = whole {
            kept.count = i;
            kept.bad = Some(reason);
            break;
        }
    }
    if !newest || kept.count == 0 {
        return kept;
    }
    let from = (kept.count - 1) / FULL_EVERY * FULL_EVERY;
    let mut un = Unframer::new();
    for (i, r) in records.iter().enumerate().take(kept.count).skip(from) {
        match un.next(&bytes[r.start..r.end], limits).and_then(|rec| holds(&rec.entry, i).map(|()| rec.entry)) {
            Ok(entry) => kept.last = Some(entry),
            Err(reason) => {
                // Not the whole record at `from`: the loop above decoded it.
                kept.count = i;
                kept.bad = Some(reason);
                break;
            }
        }
    }
    kept
}

impl FileStore {
    /// Opens (or creates) a store in `root`, skimming every segment: its records' lengths
    /// and checksums are checked, but only its whole records (and, in the newest segment,
    /// the records from the last whole one on) are decoded. A bad record in the newest
    /// segment of a replica ends that segment: the rest is cut off and reported in
    /// [`FileStore::recovered`]; a bad record anywhere else is an error. A compact record
    /// whose checksum holds but whose body does not decode fails the reads that reach it.
    pub fn open(root: impl Into<PathBuf>, options: Options) -> Result<FileStore, StoreError> {
        let root = root.into();
        let log_dir = root.join("log");
        fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        let mut store = FileStore { root, options, logs: BTreeMap::new(), recovered: Vec::new() };
        let mut dirs: Vec<PathBuf> = fs::read_dir(&log_dir)
            .map_err(io(&log_dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let Some(replica) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| hex::decode(n).ok())
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(ReplicaId)
            else {
                continue;
            };
            let log = store.scan_replica(replica, &dir)?;
            store.logs.insert(replica, log);
        }
        Ok(store)
    }

    /// Tails cut off by the last open.
    pub fn recovered(&self) -> &[Recovery] {
        &self.recovered
    }

    /// How many segment files hold `replica`'s log.
    pub fn segment_count(&self, replica: ReplicaId) -> usize {
        self.logs.get(&replica).map_or(0, |l| l.segments.len())
    }

    fn replica_dir(&self, replica: ReplicaId) -> PathBuf {
        self.root.join("log").join(hex::encode(replica.as_bytes()))
    }

    fn scan_replica(&mut self, replica: ReplicaId, dir: &Path) -> Result<ReplicaLog, StoreError> {
        let mut files: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .filter_map(|p| {
                let seq = p.file_stem()?.to_str()?.parse().ok()?;
                Some((seq, p))
            })
            .collect();
        files.sort();
        let mut log = ReplicaLog::default();
        let count = files.len();
        for (i, (first_seq, path)) in files.into_iter().enumerate() {
            let newest = i + 1 == count;
            let expected = log.head();
            if first_seq != expected {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: 0,
                    reason: format!("segment starts at seq {first_seq}, expected {expected}"),
                });
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            let corrupt = |offset: usize, reason: String| StoreError::Corrupt { path: path.display().to_string(), offset: offset as u64, reason };
            let skim = segment::skim(&bytes).map_err(|reason| corrupt(0, reason))?;
            let kept = check_records(&bytes, &skim.records, replica, first_seq, newest, &self.options.limits);
            let bad = kept.bad.or(skim.damage.clone());
            let records = &skim.records[..kept.count];
            let mut pos = records.last().map_or(skim.valid.min(segment::SEGMENT_HEADER), |r| r.end);
            let offsets: Vec<u64> = records.iter().map(|r| r.start as u64).collect();
            let mut framer = Framer::new(FULL_EVERY);
            if let Some(reason) = bad {
                if !newest {
                    return Err(corrupt(pos, reason));
                }
                if offsets.is_empty() {
                    pos = 0;
                }
                let dropped = (bytes.len() - pos) as u64;
                tracing::warn!(
                    path = %path.display(),
                    kept = pos,
                    dropped,
                    %reason,
                    "dropping a torn or garbled tail of a log segment"
                );
                let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                f.set_len(pos as u64).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                self.recovered.push(Recovery { path: path.clone(), kept_bytes: pos as u64, dropped_bytes: dropped, reason });
            }
            if newest && pos > 0 {
                framer = match &kept.last {
                    Some(last) => Framer::after_one_replica(last, offsets.len(), FULL_EVERY),
                    None => Framer::resume(&[], FULL_EVERY),
                };
            }
            log.framer = framer;
            log.segments.push(Segment { first_seq, path, offsets, len: pos as u64 });
        }
        Ok(log)
    }

    fn append_inner(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let replica = entry.header.replica;
        let dir = self.replica_dir(replica);
        let segment_bytes = self.options.segment_bytes;
        let fsync = self.options.fsync;
        let log = self.logs.entry(replica).or_default();
        let head = log.head();
        if entry.header.seq != head {
            return Err(StoreError::OutOfOrder { replica: replica.to_string(), seq: entry.header.seq, head });
        }
        let roll = log.segments.last().is_none_or(|s| s.len >= segment_bytes);
        if roll {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            let path = dir.join(format!("{head:020}.seg"));
            let f = OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(io(&path))?;
            if fsync {
                sync_dir(&dir)?;
            }
            log.segments.push(Segment { first_seq: head, path, offsets: Vec::new(), len: 0 });
            log.tail = Some(f);
            log.framer = Framer::new(FULL_EVERY);
        }
        let seg = log.segments.last_mut().expect("a segment exists");
        if log.tail.is_none() {
            let f = OpenOptions::new().append(true).open(&seg.path).map_err(io(&seg.path))?;
            log.tail = Some(f);
        }
        // Frame with a copy: a failed write must not leave the framer ahead of the file.
        let mut framer = log.framer.clone();
        let mut rec = Vec::with_capacity(entry.encoded_len() + segment::SEGMENT_HEADER + segment::RECORD_OVERHEAD);
        framer.frame(entry, &mut rec);
        let start = if seg.len == 0 { segment::SEGMENT_HEADER as u64 } else { seg.len };
        let f = log.tail.as_mut().expect("opened above");
        f.seek(SeekFrom::Start(seg.len)).map_err(io(&seg.path))?;
        f.write_all(&rec).map_err(io(&seg.path))?;
        if fsync {
            f.sync_data().map_err(io(&seg.path))?;
        }
        seg.offsets.push(start);
        seg.len += rec.len() as u64;
        log.framer = framer;
        Ok(())
    }

    fn read_inner(&self, replica: ReplicaId, from_seq: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let Some(log) = self.logs.get(&replica) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let start = log.segments.partition_point(|s| s.first_seq + s.offsets.len() as u64 <= from_seq);
        let mut seq = from_seq;
        for seg in &log.segments[start..] {
            if out.len() >= max {
                break;
            }
            let i = (seq - seg.first_seq) as usize;
            if i >= seg.offsets.len() {
                continue;
            }
            let n = (seg.offsets.len() - i).min(max - out.len());
            // Compact records need the ones before them back to a whole one.
            let whole = i - i % FULL_EVERY;
            let begin = seg.offsets[whole];
            let end = seg.offsets.get(i + n).copied().unwrap_or(seg.len);
            let mut f = File::open(&seg.path).map_err(io(&seg.path))?;
            f.seek(SeekFrom::Start(begin)).map_err(io(&seg.path))?;
            let mut buf = vec![0u8; (end - begin) as usize];
            f.read_exact(&mut buf).map_err(io(&seg.path))?;
            let mut un = Unframer::new();
            let mut pos = 0;
            for k in whole..i + n {
                let at = seg.first_seq + k as u64;
                let corrupt = |reason: String| StoreError::Corrupt { path: seg.path.display().to_string(), offset: begin + pos as u64, reason };
                let rec = un.next(&buf[pos..], &self.options.limits).map_err(corrupt)?;
                if rec.entry.header.replica != replica || rec.entry.header.seq != at {
                    let h = &rec.entry.header;
                    return Err(corrupt(format!("record holds {}/{}, expected seq {at}", h.replica, h.seq)));
                }
                pos += rec.len;
                if k >= i {
                    out.push(rec.entry);
                    seq += 1;
                }
            }
        }
        Ok(out)
    }

    fn meta_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(StoreError::BadKey(key.to_owned()));
        }
        Ok(self.root.join("meta").join(key))
    }
}

impl Store for FileStore {
    fn append(&mut self, entry: &Entry) -> stead_core::Result<()> {
        Ok(self.append_inner(entry)?)
    }

    fn read(&self, replica: ReplicaId, from_seq: u64, max: usize) -> stead_core::Result<Vec<Entry>> {
        Ok(self.read_inner(replica, from_seq, max)?)
    }

    fn heads(&self) -> stead_core::Result<VersionVector> {
        Ok(self.logs.iter().map(|(r, l)| (*r, l.head())).filter(|(_, h)| *h > 0).collect())
    }

    fn put_snapshot(&mut self, bytes: &[u8]) -> stead_core::Result<()> {
        Ok(write_atomic(&self.root.join("snapshot.bin"), bytes)?)
    }

    fn snapshot(&self) -> stead_core::Result<Option<Vec<u8>>> {
        Ok(read_optional(&self.root.join("snapshot.bin"))?)
    }

    fn put_meta(&mut self, key: &str, bytes: &[u8]) -> stead_core::Result<()> {
        Ok(write_atomic(&self.meta_path(key)?, bytes)?)
    }

    fn meta(&self, key: &str) -> stead_core::Result<Option<Vec<u8>>> {
        Ok(read_optional(&self.meta_path(key)?)?)
    }
}
