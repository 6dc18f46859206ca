//! Group commit: the Entries frames of one or more connections in one transaction.
//!
//! A [`Write`] carries a connection's protocol state and the frames it received. Before
//! the transaction, [`precheck`] checks what needs no chain — space, size, the member's key
//! for (replica, seq), the signature, the entry hash — on the blocking pool, split across
//! cores, each member's signatures in a batch (`log::check_entries`). Inside the
//! transaction only the chain is verified (seq continuity, prev hash, fork or duplicate,
//! clock) against the tips read in that transaction, for entries that are byte for byte
//! those prechecked under the membership still current (any other is checked in full
//! there); then they are inserted; the transaction commits; only then does the connection
//! generate its `Ack`s from the returned state. On SQLite, which has one writer, a
//! committer thread takes every write queued while the previous commit was being fsynced
//! into the next transaction, so many frames and connections share one fsync and none
//! waits for a transaction of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use ed25519_dalek::Signer;
use stead_core::codec::Reader;
use stead_core::hlc::HlcClock;
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{ChainTip, Checked, Entry, Limits as EntryLimits, Verified, VersionVector, check_entries, check_entry, verify_chain};
use stead_core::membership::Membership;
use stead_core::sync::{Frame, Sync, SyncPeer, check_member};
use tokio::sync::oneshot;

use crate::service::{OsRandom, Service};
use crate::storage::WriteTx;

/// Entries in one group transaction at most; the rest wait for the next one.
const MAX_GROUP_ENTRIES: usize = 8192;
/// Most entries a write's precheck checks on the runtime's own thread.
const INLINE_CHECK_ENTRIES: usize = 2;
/// Fewest entries worth a blocking task of their own when a write's checks are split.
const MIN_CHECK_CHUNK: usize = 16;

/// What a connection knows about its space.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) space: SpaceId,
    pub(crate) members: Arc<Membership>,
    pub(crate) members_version: i64,
    pub(crate) server: ReplicaId,
    pub(crate) service: Arc<Service>,
}

impl Ctx {
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.service.signing.sign(msg).to_bytes()
    }
}

/// One connection's received frames (at least one of them Entries), to run in a transaction.
pub(crate) struct Write {
    pub(crate) ctx: Ctx,
    pub(crate) sync: Sync,
    pub(crate) frames: Vec<Bytes>,
    /// The frames' entries checked ahead of the transaction (empty: check them all in it).
    pub(crate) checked: Prechecked,
    pub(crate) now_ms: u64,
    /// The connection's place in its space's hub, which need not hear of its own entries.
    pub(crate) conn: u64,
    /// The entries stored, once committed (empty once relayed: see `relayed`).
    pub(crate) stored: Vec<Entry>,
    /// The entries were relayed to the space before the commit (as far as each replica's
    /// next seq): once it commits, the space's vector advances to this.
    pub(crate) relayed: Option<crate::service::Relayed>,
    /// Storage failed: nothing of this write was committed. `sync` has counted its entries
    /// as stored, so the connection must close without generating from it.
    pub(crate) failed: Option<String>,
}

impl Write {
    fn entries(&self) -> usize {
        self.frames.iter().map(|f| entries_in(f)).sum()
    }
}

/// How many entries an Entries frame says it holds (0 for other frames).
pub(crate) fn entries_in(frame: &[u8]) -> usize {
    if frame.first() != Some(&3) {
        return 0;
    }
    Reader::new(&frame[1..], "frame").varint().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A write's entries with the outcome of [`check_entry`] on each, in frame order, and the
/// membership version they were checked under.
#[derive(Default)]
pub(crate) struct Prechecked {
    members_version: i64,
    entries: Vec<(Entry, stead_core::Result<Checked>)>,
    /// Where the next look-up starts: `Sync` hands entries over in frame order, skipping
    /// some (the rest of a replica's after a refused one), never going back.
    next: usize,
}

impl Prechecked {
    /// The checks of consecutive frames as one, in order; none when they were made under
    /// different memberships.
    pub(crate) fn join(parts: Vec<Prechecked>) -> Prechecked {
        let mut parts = parts.into_iter();
        let Some(mut all) = parts.next() else { return Prechecked::default() };
        for part in parts {
            if part.members_version != all.members_version {
                return Prechecked::default();
            }
            all.entries.extend(part.entries);
        }
        all
    }

    /// The check of `entry` if it was prechecked: the same bytes, so the same signature
    /// and hash. `None` sends it to the full check.
    fn take(&mut self, entry: &Entry) -> Option<stead_core::Result<Checked>> {
        let found = self.entries[self.next..].iter().position(|(e, _)| e == entry)?;
        let k = self.next + found;
        self.next = k + 1;
        Some(self.entries[k].1.clone())
    }
}

/// Decodes the entries of the Entries frames among `frames`. A frame that does not decode
/// is left to `Sync`, which refuses it the same way in the transaction.
fn decode_entries(frames: &[Bytes], limits: &EntryLimits) -> Vec<Entry> {
    let mut entries = Vec::new();
    for f in frames.iter().filter(|f| f.first() == Some(&3)) {
        if let Ok(Frame::Entries(es)) = Frame::decode(f, limits) {
            entries.extend(es);
        }
    }
    entries
}

/// Checks `entries`, the signatures of each member in one batch (`log::check_entries`).
fn check_all(entries: Vec<Entry>, space: SpaceId, members: &Membership, limits: &EntryLimits) -> Vec<(Entry, stead_core::Result<Checked>)> {
    let checked = check_entries(&entries, space, members, limits, &mut OsRandom);
    entries.into_iter().zip(checked).collect()
}

/// Checks the signatures (and all else that needs no chain) of the entries in `frames`:
/// a write of a few entries where it is, any other on the blocking pool, split in up to
/// one chunk per core.
pub(crate) async fn precheck(ctx: &Ctx, frames: &[Bytes]) -> Prechecked {
    let limits = EntryLimits { max_payload: ctx.service.limits.max_payload };
    let (space, version) = (ctx.space, ctx.members_version);
    let n: usize = frames.iter().map(|f| entries_in(f)).sum();
    if n <= INLINE_CHECK_ENTRIES {
        // One or two signatures (tens of microseconds): a hop to the blocking pool and
        // back would cost more than the check, two thread wake-ups when the server idles.
        let entries = check_all(decode_entries(frames, &limits), space, &ctx.members, &limits);
        return Prechecked { members_version: version, entries, next: 0 };
    }
    let frames = frames.to_vec();
    if n < 2 * MIN_CHECK_CHUNK {
        // Too few to split: decode and check in one hop.
        let members = ctx.members.clone();
        let checking = tokio::task::spawn_blocking(move || check_all(decode_entries(&frames, &limits), space, &members, &limits));
        let entries = checking.await.unwrap_or_default();
        return Prechecked { members_version: version, entries, next: 0 };
    }
    let decoding = tokio::task::spawn_blocking(move || decode_entries(&frames, &limits));
    let Ok(mut entries) = decoding.await else { return Prechecked::default() };
    let parts = ctx.service.check_threads.min(entries.len() / MIN_CHECK_CHUNK).max(1);
    let per = entries.len().div_ceil(parts);
    let mut chunks = Vec::with_capacity(parts);
    while entries.len() > per {
        let rest = entries.split_off(per);
        chunks.push(std::mem::replace(&mut entries, rest));
    }
    chunks.push(entries);
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let members = ctx.members.clone();
            tokio::task::spawn_blocking(move || check_all(chunk, space, &members, &limits))
        })
        .collect();
    let mut checked = Prechecked { members_version: version, entries: Vec::new(), next: 0 };
    for task in tasks {
        // A chunk that panicked is checked again in the transaction.
        if let Ok(part) = task.await {
            checked.entries.extend(part);
        }
    }
    checked
}

/// One write inside the shared transaction: verifies entries against the tips it reads
/// and inserts them.
struct TxPeer<'a> {
    ctx: &'a Ctx,
    tx: &'a mut dyn WriteTx,
    tips: BTreeMap<ReplicaId, Option<ChainTip>>,
    limits: EntryLimits,
    checked: &'a mut Prechecked,
    stored: Vec<Entry>,
}

impl SyncPeer for TxPeer<'_> {
    fn sync_space(&self) -> SpaceId {
        self.ctx.space
    }
    fn sync_replica(&self) -> ReplicaId {
        self.ctx.server
    }
    fn sync_vector(&self) -> VersionVector {
        self.tips.iter().filter_map(|(r, t)| t.map(|t| (*r, t.next_seq))).collect()
    }
    fn sync_entries(&self, _: ReplicaId, _: u64, _: usize, _: usize) -> stead_core::Result<Vec<Entry>> {
        Ok(Vec::new())
    }
    fn sync_ingest(&mut self, entry: Entry, now_ms: u64) -> stead_core::Result<bool> {
        let (space, rid) = (self.ctx.space, entry.header.replica);
        // An entry dated ahead of the server's clock would be refused by every client
        // whose clock is right; it is refused here, before anyone else can receive it.
        HlcClock::new(self.ctx.service.limits.max_clock_drift_ms).check(entry.header.hlc, now_ms)?;
        // Read in this transaction (which may hold other writes of the same chain), never
        // from a cache: another node or connection may have extended the chain.
        if !self.tips.contains_key(&rid) {
            let tip = self.tx.tip(space, rid)?;
            self.tips.insert(rid, tip);
        }
        let tip = self.tips[&rid];
        let checked = match self.checked.take(&entry) {
            Some(checked) => checked?,
            None => check_entry(&entry, space, &self.ctx.members, &self.limits)?,
        };
        let tx = &mut self.tx;
        let verdict = verify_chain(&entry, &checked, tip.as_ref(), |seq| Ok(tx.hash_at(space, rid, seq)?))?;
        if verdict == Verified::Duplicate {
            return Ok(false);
        }
        let hash = checked.hash();
        self.tx.insert(&entry, &hash)?;
        let h = &entry.header;
        self.tips.insert(rid, Some(ChainTip { next_seq: h.seq + 1, last_hash: hash, last_hlc: h.hlc }));
        self.stored.push(entry);
        Ok(true)
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.ctx.sign(msg)
    }
    fn sync_check_member(&self, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        check_member(&self.ctx.members, replica, msg, sig)
    }
}

/// Takes in one write's frames inside `tx`; `Err` when storage failed.
fn receive(service: &Service, tx: &mut dyn WriteTx, w: &mut Write) -> Result<(), String> {
    let space = w.ctx.space;
    let version = tx.members_version(space).map_err(|e| e.to_string())?;
    if version != w.ctx.members_version {
        // Someone changed the membership since this connection looked: verify against the new log.
        if let Ok(Some((v, m))) = service.members(space) {
            w.ctx.members = m;
            w.ctx.members_version = v;
        }
    }
    if w.checked.members_version != w.ctx.members_version {
        // Checked under a membership that has changed since: check everything again here.
        w.checked = Prechecked::default();
    }
    let limits = EntryLimits { max_payload: service.limits.max_payload };
    let mut peer = TxPeer { ctx: &w.ctx, tx, tips: BTreeMap::new(), limits, checked: &mut w.checked, stored: Vec::new() };
    for frame in &w.frames {
        match w.sync.receive(frame, &mut peer, w.now_ms) {
            Ok(()) => {}
            Err(stead_core::Error::Storage(m)) => return Err(m),
            Err(e) => tracing::debug!(%space, "entries refused: {e}"),
        }
    }
    w.stored = peer.stored;
    Ok(())
}

/// Runs `group` in one transaction (blocking). After it, each write either holds its
/// committed entries in `stored` (or, relayed before the commit, their extent in
/// `relayed`) or, when storage failed, the reason in `failed`.
///
/// On a backend with one writer (SQLite), the entries are relayed to the space's other
/// connections once every one is verified and inserted, before the commit's fsync, so
/// receivers do not wait on the disk; the `Ack`s still wait for the commit. Nothing can
/// then refuse them but the commit itself failing (an I/O error). If it fails, receivers
/// hold authentic entries, signed and chained, that the server does not: the writer has
/// no `Ack` and its connection is closed, so it sends them again, and receivers that
/// reconnect send them too. The space's vector counts them only once committed. Where
/// writers run side by side (PostgreSQL), a concurrent transaction can still refuse an
/// inserted entry at its commit, so entries are relayed only after it.
pub(crate) fn commit_group(service: &Service, group: &mut [Write]) {
    let mut n = 0;
    let result = (|| {
        let mut tx = service.backend.begin().map_err(|e| e.to_string())?;
        for w in group.iter_mut() {
            receive(service, tx.as_mut(), w)?;
        }
        n = group.iter().map(|w| w.stored.len()).sum();
        if service.backend.serial_writes() {
            for w in group.iter_mut().filter(|w| !w.stored.is_empty()) {
                let entries = std::mem::take(&mut w.stored);
                w.relayed = Some(service.relay(w.ctx.space, w.conn, entries));
            }
        }
        tx.commit().map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => {
            service.metrics.entries_stored.fetch_add(n as u64, Ordering::Relaxed);
            service.metrics.commits.fetch_add(1, Ordering::Relaxed);
        }
        Err(m) => {
            for w in group {
                w.stored.clear();
                w.relayed = None;
                w.failed = Some(m.clone());
            }
        }
    }
}

pub(crate) type Queue = std::sync::mpsc::Sender<(Write, oneshot::Sender<Write>)>;

/// Starts the committer thread of a one-writer backend; it ends when the queue is dropped.
pub(crate) fn spawn_committer() -> Option<Queue> {
    let (queue, rx) = std::sync::mpsc::channel::<(Write, oneshot::Sender<Write>)>();
    let spawned = std::thread::Builder::new().name("stead-commit".into()).spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut n = first.0.entries();
            let mut group = vec![first];
            while n < MAX_GROUP_ENTRIES {
                let Ok(next) = rx.try_recv() else { break };
                n += next.0.entries();
                group.push(next);
            }
            let service = group[0].0.ctx.service.clone();
            let (mut writes, replies): (Vec<Write>, Vec<_>) = group.into_iter().unzip();
            // A panic fails this group only (its connections see their reply dropped).
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                commit_group(&service, &mut writes);
                writes
            }));
            match ran {
                Ok(writes) => {
                    for (w, reply) in writes.into_iter().zip(replies) {
                        let _ = reply.send(w);
                    }
                }
                Err(_) => tracing::error!("a group commit panicked"),
            }
        }
    });
    match spawned {
        Ok(_) => Some(queue),
        Err(e) => {
            tracing::error!("cannot start the committer thread, committing per connection: {e}");
            None
        }
    }
}
