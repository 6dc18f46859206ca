//! Group commit: the Entries frames of one or more connections in one transaction.
//!
//! A [`Write`] carries a connection's protocol state and the frames it received. Inside the
//! transaction every entry is verified (membership, seq continuity, prev hash, signature)
//! against the chain tips read in that transaction, then inserted; the transaction
//! commits; only then does the connection generate its `Ack`s from the returned state. On
//! SQLite, which has one writer, a committer thread takes every write queued while the
//! previous commit was being fsynced into the next transaction, so many frames and
//! connections share one fsync and none waits for a transaction of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use ed25519_dalek::Signer;
use stead_core::codec::Reader;
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{ChainTip, Entry, Limits as EntryLimits, Verified, VersionVector, verify_entry};
use stead_core::membership::Membership;
use stead_core::sync::{Sync, SyncPeer, check_member};
use tokio::sync::oneshot;

use crate::service::Service;
use crate::storage::WriteTx;

/// Entries in one group transaction at most; the rest wait for the next one.
const MAX_GROUP_ENTRIES: usize = 8192;

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
    pub(crate) now_ms: u64,
    /// The entries stored, once committed.
    pub(crate) stored: Vec<Entry>,
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

/// One write inside the shared transaction: verifies entries against the tips it reads
/// and inserts them.
struct TxPeer<'a> {
    ctx: &'a Ctx,
    tx: &'a mut dyn WriteTx,
    tips: BTreeMap<ReplicaId, Option<ChainTip>>,
    limits: EntryLimits,
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
    fn sync_ingest(&mut self, entry: Entry, _now_ms: u64) -> stead_core::Result<bool> {
        let (space, rid) = (self.ctx.space, entry.header.replica);
        // Read in this transaction (which may hold other writes of the same chain), never
        // from a cache: another node or connection may have extended the chain.
        if !self.tips.contains_key(&rid) {
            let tip = self.tx.tip(space, rid)?;
            self.tips.insert(rid, tip);
        }
        let tip = self.tips[&rid];
        let tx = &mut self.tx;
        let (verdict, hash) = verify_entry(&entry, space, &self.ctx.members, tip.as_ref(), &self.limits, |seq| {
            Ok(tx.hash_at(space, rid, seq)?)
        })?;
        if verdict == Verified::Duplicate {
            return Ok(false);
        }
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
    let limits = EntryLimits { max_payload: service.limits.max_payload };
    let mut peer = TxPeer { ctx: &w.ctx, tx, tips: BTreeMap::new(), limits, stored: Vec::new() };
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
/// committed entries in `stored` or, when storage failed, the reason in `failed`.
pub(crate) fn commit_group(service: &Service, group: &mut [Write]) {
    let result = (|| {
        let mut tx = service.backend.begin().map_err(|e| e.to_string())?;
        for w in group.iter_mut() {
            receive(service, tx.as_mut(), w)?;
        }
        tx.commit().map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => {
            let n: usize = group.iter().map(|w| w.stored.len()).sum();
            service.metrics.entries_stored.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(m) => {
            for w in group {
                w.stored.clear();
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
