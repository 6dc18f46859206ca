//! A replica: one device's verified log, decrypted state, indexes, history and undo.
//!
//! [`Replica`] ties the pieces together. Local writes become signed, encrypted entries
//! ([`Replica::commit`]); remote entries are verified, decrypted and merged
//! ([`Replica::ingest`]); opening reads the latest snapshot and replays the log tail.
//! The replica's only I/O is the injected [`Store`]; time and randomness are arguments.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::codec::{Reader, Writer};
use crate::crypto::{self, Keyring, SpaceKey};
use crate::env::Random;
use crate::error::{Error, Result};
use crate::hlc::{Hlc, HlcClock};
use crate::ids::{RecordId, ReplicaId, SpaceId};
use crate::log::{self, verify_chain, verify_entry, ChainTip, Checked, Entry, Limits, Verified, VersionVector};
use crate::sig::DerivedWeights;
use crate::membership::Membership;
use crate::ops::{decode_batch, encode_batch, Op, Tag, Value, MAX_BATCH_OPS};
use crate::query::{Cursor, Filter, Indexes, Page, Query};
use crate::schema::Schema;
use crate::state::{read_records, write_records, RecordState, Stamp, State, Version};
use crate::store::Store;

/// The self-contained snapshot of [`Snapshot::encode`].
pub const SNAPSHOT_VERSION: u8 = 1;
/// The stored snapshot: an index in `put_snapshot`, record chunks in meta keys.
pub const STORED_SNAPSHOT_VERSION: u8 = 2;
/// Records per stored chunk: what a first read decodes.
const CHUNK_RECORDS: usize = 256;

/// The meta key of a stored snapshot's chunk `n`. Saves alternate between two parities,
/// so a crash mid-save leaves the previous snapshot's chunks whole.
pub fn chunk_key(parity: u64, n: u64) -> String {
    format!("snapshot-{parity}-{n}")
}

/// The parity (0 or 1) of a [`chunk_key`]; `None` for any other meta key. Stores that
/// group metadata by how often it changes use it: chunks change only when a snapshot is
/// saved, other keys (what the server acknowledged) with every sync.
pub fn chunk_parity(key: &str) -> Option<usize> {
    match key.strip_prefix("snapshot-")?.split_once('-')? {
        ("0", _) => Some(0),
        ("1", _) => Some(1),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// How far ahead of local time a remote entry's clock may be.
    pub max_drift_ms: u64,
    pub limits: Limits,
    /// The largest decrypted ops batch accepted.
    pub max_batch_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_drift_ms: 5 * 60 * 1000, limits: Limits::default(), max_batch_len: 16 << 20 }
    }
}

/// Who this replica is and the secrets it holds.
#[derive(Debug, Clone)]
pub struct Identity {
    pub space: SpaceId,
    pub replica: ReplicaId,
    pub signing: SigningKey,
    /// The X25519 secret space keys are wrapped to.
    pub agreement: [u8; 32],
    /// The space key this device was given or made; the membership log gives the rest
    /// ([`Membership::keyring`]).
    pub space_key: SpaceKey,
}

/// The result of taking in an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Applied,
    Duplicate,
    /// Valid in the chain but its payload could not be read; kept so the chain goes on,
    /// and skipped alike by every replica.
    Unreadable(Error),
}

/// One op of a record's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    pub stamp: Stamp,
    pub op: Op,
}

pub struct Replica {
    me: Identity,
    config: Config,
    clock: HlcClock,
    members: Membership,
    /// The space keys this device holds, from `members`.
    keys: Keyring,
    schema: Option<Schema>,
    tips: BTreeMap<ReplicaId, ChainTip>,
    state: State,
    store: Box<dyn Store>,
    /// Own seqs that undo can still take back, oldest first.
    undo: Vec<u64>,
    indexes: Option<Indexes>,
    /// Records of the opened snapshot not yet decoded, per collection by last record id.
    /// A record lives either in `state` or in one of these chunks: the first write to a
    /// chunk's range moves the whole chunk into `state`.
    lazy: BTreeMap<String, BTreeMap<RecordId, Chunk>>,
    /// What the opened snapshot covered: a chunk that cannot be read is rebuilt from these
    /// entries of the log.
    lazy_vv: VersionVector,
    /// `state` plus every lazy chunk, built when [`Replica::state`] is asked while chunks wait.
    full: OnceCell<State>,
    /// The stored snapshot's generation and chunk count, and the previous one's count.
    snap_gen: u64,
    snap_counts: (u64, u64),
    /// Set when a damaged snapshot chunk could not be rebuilt because the store had not
    /// loaded the entries it needs ([`Replica::take_incomplete`]).
    incomplete: std::cell::Cell<bool>,
}

/// A range of one collection's records in a stored snapshot, decoded on first use.
#[derive(Debug)]
struct Chunk {
    collection: String,
    first: RecordId,
    last: RecordId,
    key: String,
    sha256: [u8; 32],
    records: OnceCell<BTreeMap<RecordId, RecordState>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("replica", &self.me.replica).field("tips", &self.tips).finish()
    }
}

impl Replica {
    /// Opens a replica from its store: the snapshot if there is a usable one, then every
    /// stored entry after it, each verified again (so a changed byte at rest is caught).
    pub fn open(me: Identity, members: Membership, store: Box<dyn Store>, config: Config) -> Result<Replica> {
        if members.space() != me.space {
            return Err(Error::WrongSpace { expected: me.space, found: members.space() });
        }
        let keys = members.keyring(&me.agreement, &Keyring::single(me.space_key.clone()));
        let mut r = Replica {
            clock: HlcClock::new(config.max_drift_ms),
            me,
            config,
            members,
            keys,
            schema: None,
            tips: BTreeMap::new(),
            state: State::default(),
            store,
            undo: Vec::new(),
            indexes: None,
            lazy: BTreeMap::new(),
            lazy_vv: VersionVector::new(),
            full: OnceCell::new(),
            snap_gen: 0,
            snap_counts: (0, 0),
            incomplete: std::cell::Cell::new(false),
        };
        let heads = r.store.heads()?;
        if let Some(bytes) = r.store.snapshot()? {
            // Only the index is read here; record chunks are decoded when first touched.
            let (snap, stored) = match bytes.first() {
                Some(&STORED_SNAPSHOT_VERSION) => {
                    let s = StoredSnapshot::decode(&bytes)?;
                    let snap = Snapshot { space: s.space, hlc: s.hlc, tips: s.tips, undo: s.undo, state: State::default() };
                    (snap, Some((s.generation, s.counts, s.chunks)))
                }
                _ => (Snapshot::decode(&bytes)?, None),
            };
            // A snapshot that covers entries the log lost (a torn tail) cannot be trusted to
            // serve sync; replay the log alone then.
            let covered = snap.tips.iter().all(|(rid, t)| heads.get(rid).copied().unwrap_or(0) >= t.next_seq);
            if let Some((generation, counts, _)) = &stored {
                // Whatever is loaded, the next save must not overwrite the chunks this index names.
                r.snap_gen = *generation;
                r.snap_counts = *counts;
            }
            if snap.space == r.me.space && covered {
                r.state = snap.state;
                r.lazy_vv = snap.tips.iter().map(|(k, t)| (*k, t.next_seq)).collect();
                r.tips = snap.tips;
                r.undo = snap.undo;
                r.clock.observe(snap.hlc);
                for chunk in stored.into_iter().flat_map(|(_, _, c)| c) {
                    let (coll, last) = (chunk.0.clone(), chunk.2);
                    let key = chunk_key(r.snap_gen % 2, chunk.3);
                    let c = Chunk { collection: chunk.0, first: chunk.1, last, key, sha256: chunk.4, records: OnceCell::new() };
                    r.lazy.entry(coll).or_default().insert(last, c);
                }
            }
        }
        for (rid, head) in heads {
            let mut next = r.tips.get(&rid).map_or(0, |t| t.next_seq);
            while next < head {
                let batch = r.store.read(rid, next, 256)?;
                if batch.is_empty() {
                    return Err(Error::Storage(format!("store lost entries of {rid} from seq {next}")));
                }
                let checks = r.check_entries(&batch);
                for (entry, checked) in batch.into_iter().zip(checks) {
                    next = entry.header.seq + 1;
                    // Own entries replayed past the snapshot are not offered to undo: the
                    // log does not say which of them were undo entries themselves.
                    r.ingest_inner(entry, Some(checked), None, false)?;
                }
            }
        }
        Ok(r)
    }

    pub fn id(&self) -> ReplicaId {
        self.me.replica
    }

    /// Whether a damaged snapshot chunk was rebuilt without all the entries it needs (a
    /// store that loaded only the log's tail); the flag is cleared. Values read since may
    /// be wrong: load the whole log and open the replica again.
    pub fn take_incomplete(&self) -> bool {
        self.incomplete.replace(false)
    }
    pub fn space(&self) -> SpaceId {
        self.me.space
    }
    /// The whole materialized state. While snapshot chunks wait to be decoded this decodes
    /// all of them into a copy; `get`, `value` and `query` read only what they need.
    pub fn state(&self) -> &State {
        if self.lazy.is_empty() {
            return &self.state;
        }
        self.full.get_or_init(|| {
            let mut full = self.state.clone();
            for chunks in self.lazy.values() {
                for c in chunks.values() {
                    let coll = full.collections.entry(c.collection.clone()).or_default();
                    coll.extend(self.chunk_records(c).iter().map(|(k, v)| (*k, v.clone())));
                }
            }
            full
        })
    }

    /// A record, visible or deleted, wherever it is held.
    fn record(&self, collection: &str, record: RecordId) -> Option<&RecordState> {
        if let Some(r) = self.state.record(collection, record) {
            return Some(r);
        }
        let c = self.chunk_of(collection, record)?;
        self.chunk_records(c).get(&record)
    }

    fn chunk_of(&self, collection: &str, record: RecordId) -> Option<&Chunk> {
        let (_, c) = self.lazy.get(collection)?.range(record..).next()?;
        (c.first <= record).then_some(c)
    }

    fn chunk_records<'a>(&self, c: &'a Chunk) -> &'a BTreeMap<RecordId, RecordState> {
        c.records.get_or_init(|| self.load_chunk(c))
    }

    /// Decodes a chunk; one that is missing or does not match its hash is rebuilt from the
    /// entries the snapshot covered, so a damaged snapshot costs time, never data.
    fn load_chunk(&self, c: &Chunk) -> BTreeMap<RecordId, RecordState> {
        let stored = self.store.meta(&c.key).ok().flatten().filter(|b| Sha256::digest(b).as_slice() == c.sha256);
        if let Some(records) = stored.and_then(|b| decode_chunk(&b).ok()) {
            return records;
        }
        let mut state = State::default();
        for (rid, end) in &self.lazy_vv {
            let mut next = 0;
            while next < *end {
                let batch = match self.store.read(*rid, next, 256) {
                    Ok(b) => b,
                    Err(_) => {
                        // A tail-only store lacks the old entries (or the read failed): the
                        // chunk is incomplete, and the replica must be opened again over
                        // the whole log.
                        self.incomplete.set(true);
                        break;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for entry in batch.iter().take_while(|e| e.header.seq < *end) {
                    next = entry.header.seq + 1;
                    let Ok(ops) = self.decrypt(entry) else { continue };
                    let h = &entry.header;
                    for (n, op) in ops.iter().enumerate() {
                        if op.collection() == c.collection && (c.first..=c.last).contains(&op.record()) {
                            state.apply(Stamp { hlc: h.hlc, replica: h.replica, seq: h.seq, n: n as u32 }, op);
                        }
                    }
                }
                if batch.last().is_some_and(|e| e.header.seq + 1 >= *end) {
                    break;
                }
            }
        }
        state.collections.remove(&c.collection).unwrap_or_default()
    }

    /// Moves the chunk holding `record`'s range, if one waits, into the live state.
    fn take_chunk(&mut self, collection: &str, record: RecordId) {
        let Some(last) = self.chunk_of(collection, record).map(|c| c.last) else { return };
        self.full = OnceCell::new();
        let chunks = self.lazy.get_mut(collection).expect("chunk found above");
        let c = chunks.remove(&last).expect("chunk found above");
        if chunks.is_empty() {
            self.lazy.remove(collection);
        }
        let records = match c.records.get() {
            Some(_) => c.records.into_inner().unwrap_or_default(),
            None => self.load_chunk(&c),
        };
        self.state.collections.entry(collection.to_owned()).or_default().extend(records);
    }

    /// Moves every waiting chunk of `collection` (or of all) into the live state.
    fn take_all(&mut self, collection: Option<&str>) {
        let names: Vec<String> = match collection {
            Some(c) => self.lazy.contains_key(c).then(|| c.to_owned()).into_iter().collect(),
            None => self.lazy.keys().cloned().collect(),
        };
        for name in names {
            while let Some(first) = self.lazy.get(&name).and_then(|m| m.values().next()).map(|c| c.first) {
                self.take_chunk(&name, first);
            }
        }
    }
    pub fn signing_key(&self) -> &SigningKey {
        &self.me.signing
    }
    pub fn members(&self) -> &Membership {
        &self.members
    }
    /// The space keys this device holds.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }
    pub fn clock(&self) -> Hlc {
        self.clock.last()
    }
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
    /// Gives the store back, e.g. to reopen it.
    pub fn into_store(self) -> Box<dyn Store> {
        self.store
    }

    /// Replaces the membership with a longer verified log of the same space.
    pub fn set_members(&mut self, members: Membership) -> Result<()> {
        if members.space() != self.me.space {
            return Err(Error::WrongSpace { expected: self.me.space, found: members.space() });
        }
        self.store.put_meta("membership", &members.encode())?;
        self.keys = members.keyring(&self.me.agreement, &self.keys);
        self.members = members;
        Ok(())
    }

    /// Sets the schema writes are validated against (after checking the upgrade path).
    pub fn set_schema(&mut self, schema: Schema) -> Result<()> {
        if let Some(old) = &self.schema {
            old.check_upgrade(&schema)?;
        } else {
            schema.check()?;
        }
        self.schema = Some(schema);
        self.indexes = None;
        Ok(())
    }

    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    pub fn version_vector(&self) -> VersionVector {
        self.tips.iter().map(|(r, t)| (*r, t.next_seq)).collect()
    }

    pub fn tips(&self) -> &BTreeMap<ReplicaId, ChainTip> {
        &self.tips
    }

    /// A visible record (never written or deleted ones are `None`).
    pub fn get(&self, collection: &str, record: RecordId) -> Option<&crate::state::RecordState> {
        self.record(collection, record).filter(|r| !r.is_deleted())
    }

    /// A field as the schema shows it: the register, a default, or `None`.
    pub fn value(&self, collection: &str, record: RecordId, field: &str) -> Option<Value> {
        let rec = self.get(collection, record)?;
        rec.field(field)
            .and_then(|s| s.register().cloned())
            .or_else(|| self.schema.as_ref()?.default_value(collection, field))
    }

    pub fn version(&self, collection: &str, record: RecordId) -> Version {
        self.record(collection, record).map(|r| r.version).unwrap_or_default()
    }

    /// Writes `ops` as one new entry of this replica. Returns the entry for sending.
    pub fn commit(&mut self, ops: Vec<Op>, now_ms: u64, rng: &mut dyn Random) -> Result<Entry> {
        self.validate(&ops)?;
        self.commit_inner(ops, now_ms, rng, true)
    }

    /// Compare-and-swap: commits `ops` only if `record` is still at `expected`.
    pub fn update_if(
        &mut self,
        collection: &str,
        record: RecordId,
        expected: Version,
        ops: Vec<Op>,
        now_ms: u64,
        rng: &mut dyn Random,
    ) -> Result<Entry> {
        let current = self.version(collection, record);
        if current != expected {
            return Err(Error::Conflict {
                collection: collection.to_owned(),
                record,
                expected: Box::new(expected),
                current: Box::new(current),
            });
        }
        self.commit(ops, now_ms, rng)
    }

    fn validate(&self, ops: &[Op]) -> Result<()> {
        let Some(schema) = &self.schema else { return Ok(()) };
        let mut new_records: BTreeMap<(&str, RecordId), BTreeSet<&str>> = BTreeMap::new();
        for op in ops {
            schema.validate_op(op)?;
            if self.record(op.collection(), op.record()).is_none() {
                let fields = new_records.entry((op.collection(), op.record())).or_default();
                if let Op::Set { field, value, .. } = op
                    && *value != Value::Null {
                        fields.insert(field);
                    }
            }
        }
        for ((coll, _), set) in &new_records {
            for req in schema.required_fields(coll) {
                if !set.contains(req) {
                    return Err(Error::Validation {
                        collection: coll.to_string(),
                        field: req.to_owned(),
                        value: "null".into(),
                        reason: "a new record must set this required field".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn commit_inner(&mut self, ops: Vec<Op>, now_ms: u64, rng: &mut dyn Random, undoable: bool) -> Result<Entry> {
        let tip = self.tips.get(&self.me.replica);
        let seq = tip.map_or(0, |t| t.next_seq);
        let prev = tip.map_or([0; 32], |t| t.last_hash);
        if ops.len() > MAX_BATCH_OPS {
            return Err(Error::TooLarge { what: "ops batch", size: ops.len(), limit: MAX_BATCH_OPS });
        }
        let hlc = self.clock.tick(now_ms);
        let packed = crypto::pack(&encode_batch(&ops));
        let mut nonce = [0u8; crypto::NONCE_LEN];
        rng.fill(&mut nonce);
        let key = self.keys.current().ok_or(Error::NoCurrentKey)?;
        let payload = crypto::seal(key, nonce, self.me.space, self.me.replica, seq, &packed);
        if payload.len() > self.config.limits.max_payload {
            return Err(Error::TooLarge {
                what: "entry payload",
                size: payload.len(),
                limit: self.config.limits.max_payload,
            });
        }
        let entry = Entry::sign(self.me.space, self.me.replica, seq, hlc, prev, payload, &self.me.signing);
        let hash = entry.hash();
        self.store.append(&entry)?;
        self.apply_ops(&entry, &ops);
        self.tips.insert(self.me.replica, ChainTip { next_seq: seq + 1, last_hash: hash, last_hlc: hlc });
        if undoable {
            self.undo.push(seq);
        }
        Ok(entry)
    }

    /// Takes in an entry from elsewhere: verifies it, stores it, merges its ops.
    pub fn ingest(&mut self, entry: Entry, now_ms: u64) -> Result<Ingested> {
        self.ingest_inner(entry, None, Some(now_ms), true)
    }

    /// What [`log::check_entry`] says of each of `entries` (say, one frame's), with each
    /// signer's signatures checked in one batch, about three times faster; then each goes
    /// to [`Replica::ingest_checked`]. The batch weights are derived from this device's
    /// secret key and the entries' signatures ([`DerivedWeights`]), so a sender cannot
    /// predict them.
    pub fn check_entries(&self, entries: &[Entry]) -> Vec<Result<Checked>> {
        let mut weights = DerivedWeights::new(self.me.signing.as_bytes(), entries.iter().map(|e| e.sig.as_slice()));
        log::check_entries(entries, self.me.space, &self.members, &self.config.limits, &mut weights)
    }

    /// [`Replica::ingest`] of an entry [`Replica::check_entries`] checked: `checked` is
    /// what it said of this entry.
    pub fn ingest_checked(&mut self, entry: Entry, checked: Result<Checked>, now_ms: u64) -> Result<Ingested> {
        self.ingest_inner(entry, Some(checked), Some(now_ms), true)
    }

    fn ingest_inner(&mut self, entry: Entry, checked: Option<Result<Checked>>, now_ms: Option<u64>, store: bool) -> Result<Ingested> {
        let rid = entry.header.replica;
        let tip = self.tips.get(&rid);
        let store_ref = &self.store;
        // An old seq's hash tells a duplicate from a fork. Below what a tail-only store
        // loaded it is unknown, and the entry counts as a duplicate: either verdict leaves
        // store and state as they are (only the report differs), and a server relays no
        // fork, since it verifies every chain before storing.
        let known = |seq| match store_ref.read(rid, seq, 1) {
            Err(Error::NotLoaded { .. }) => Ok(None),
            r => Ok(r?.first().map(Entry::hash)),
        };
        let (verdict, hash) = match checked {
            Some(checked) => {
                let checked = checked?;
                assert!(checked.is_for(&entry), "a check is used only for the entry it was made for");
                (verify_chain(&entry, &checked, tip, known)?, checked.hash())
            }
            None => verify_entry(&entry, self.me.space, &self.members, tip, &self.config.limits, known)?,
        };
        if verdict == Verified::Duplicate {
            return Ok(Ingested::Duplicate);
        }
        if let Some(now) = now_ms {
            self.clock.check(entry.header.hlc, now)?;
        }
        let ops = self.decrypt(&entry);
        if store && matches!(ops, Err(Error::MissingKey { .. })) {
            // Sealed under a rotation this device has not seen: refused, not stored as
            // unreadable, so it comes again once the membership log has caught up.
            return Err(ops.expect_err("matched"));
        }
        if store {
            self.store.append(&entry)?;
        }
        let h = &entry.header;
        self.tips.insert(rid, ChainTip { next_seq: h.seq + 1, last_hash: hash, last_hlc: h.hlc });
        self.clock.observe(h.hlc);
        match ops {
            Ok(ops) => {
                self.apply_ops(&entry, &ops);
                Ok(Ingested::Applied)
            }
            Err(e) => Ok(Ingested::Unreadable(e)),
        }
    }

    fn decrypt(&self, entry: &Entry) -> Result<Vec<Op>> {
        let h = &entry.header;
        let packed = self.keys.open(h.space, h.replica, h.seq, &entry.payload).map_err(|e| {
            let id = entry.payload.get(..crypto::KEY_ID_LEN).and_then(|b| b.try_into().ok());
            match id {
                Some(id) if !self.keys.holds_key_of(&entry.payload) && !self.members.names_key(&id) => {
                    Error::MissingKey { replica: h.replica, seq: h.seq }
                }
                _ => e,
            }
        })?;
        decode_batch(&crypto::unpack(&packed, self.config.max_batch_len)?)
    }

    fn apply_ops(&mut self, entry: &Entry, ops: &[Op]) {
        let h = &entry.header;
        self.full = OnceCell::new();
        for (n, op) in ops.iter().enumerate() {
            if !self.lazy.is_empty() {
                self.take_chunk(op.collection(), op.record());
            }
            let stamp = Stamp { hlc: h.hlc, replica: h.replica, seq: h.seq, n: n as u32 };
            self.state.apply(stamp, op);
        }
        if let (Some(ix), Some(schema)) = (&mut self.indexes, &self.schema) {
            for op in ops {
                ix.update(schema, &self.state, op.collection(), op.record());
            }
        }
    }

    /// Runs a query through the schema's indexes (a collection's are built on its first
    /// filtered query, after its snapshot chunks are decoded); [`Filter::All`] is
    /// [`Replica::list`].
    pub fn query(&mut self, q: &Query) -> Result<Page> {
        if self.schema.is_none() {
            return Err(Error::Schema("no schema set".into()));
        }
        if q.filter == Filter::All {
            return Ok(self.list(q));
        }
        self.take_all(Some(&q.collection));
        let schema = self.schema.as_ref().expect("checked above");
        let ix = self.indexes.get_or_insert_with(Indexes::default);
        ix.ensure(schema, &self.state, &q.collection);
        ix.query(&self.state, q)
    }

    /// A page of a collection's visible records in id order (`q.filter` is not looked
    /// at), decoding only the snapshot chunks the page reaches: a first query after a wake
    /// costs a chunk, not the collection. Records live either in the live state or in one
    /// waiting chunk, and chunks hold disjoint id ranges, so the two merge in id order.
    pub fn list(&self, q: &Query) -> Page {
        let start = q.after.as_ref().map_or(Bound::Unbounded, |a| Bound::Excluded(a.record));
        let limit = q.limit.max(1);
        let mut live = self.state.collections.get(&q.collection).into_iter().flat_map(|m| m.range((start, Bound::Unbounded))).peekable();
        let mut lazy = self
            .lazy
            .get(&q.collection)
            .into_iter()
            .flat_map(|m| m.range((start, Bound::Unbounded)))
            .flat_map(|(_, c)| self.chunk_records(c).range((start, Bound::Unbounded)))
            .peekable();
        let (mut out, mut more) = (Vec::new(), false);
        loop {
            let next = match (live.peek(), lazy.peek()) {
                (Some(a), Some(b)) if a.0 < b.0 => live.next(),
                (_, Some(_)) => lazy.next(),
                (Some(_), None) => live.next(),
                (None, None) => None,
            };
            let Some((id, rec)) = next else { break };
            if rec.is_deleted() {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(*id);
        }
        let next = more.then(|| Cursor { key: None, record: *out.last().expect("page is full") });
        Page { records: out, next }
    }

    /// Every op ever applied to a record, in merge order, read back from the log.
    pub fn history(&self, collection: &str, record: RecordId) -> Result<Vec<HistoryItem>> {
        let mut out = Vec::new();
        for (rid, tip) in &self.tips {
            let mut next = 0;
            while next < tip.next_seq {
                let batch = self.store.read(*rid, next, 256)?;
                if batch.is_empty() {
                    break;
                }
                for entry in &batch {
                    next = entry.header.seq + 1;
                    let Ok(ops) = self.decrypt(entry) else { continue };
                    let h = &entry.header;
                    for (n, op) in ops.into_iter().enumerate() {
                        if op.record() == record && op.collection() == collection {
                            let stamp = Stamp { hlc: h.hlc, replica: h.replica, seq: h.seq, n: n as u32 };
                            out.push(HistoryItem { stamp, op });
                        }
                    }
                }
            }
        }
        out.sort_by_key(|i| i.stamp);
        Ok(out)
    }

    /// Undoes this replica's last `n` local changes by writing one entry of inverse ops,
    /// which syncs like any edit. Values since overwritten by someone else are left alone.
    pub fn undo(&mut self, n: usize, now_ms: u64, rng: &mut dyn Random) -> Result<Option<Entry>> {
        let take = n.min(self.undo.len());
        if take == 0 {
            return Ok(None);
        }
        let seqs: Vec<u64> = self.undo[self.undo.len() - take..].to_vec();
        let undone: BTreeSet<u64> = seqs.iter().copied().collect();
        let mine = |s: &Stamp| s.replica == self.me.replica && undone.contains(&s.seq);
        let mut inverse = Vec::new();
        for &seq in seqs.iter().rev() {
            let entry = self
                .store
                .read(self.me.replica, seq, 1)?
                .pop()
                .ok_or_else(|| Error::Storage(format!("own entry {seq} is missing")))?;
            let ops = self.decrypt(&entry)?;
            let h = &entry.header;
            for (i, op) in ops.iter().enumerate().rev() {
                let stamp = Stamp { hlc: h.hlc, replica: h.replica, seq, n: i as u32 };
                let rec = self.record(op.collection(), op.record());
                match op {
                    Op::Set { collection, record, field, .. } => {
                        let current = rec.and_then(|r| r.field(field)).and_then(|s| s.reg.as_ref());
                        if current.is_some_and(|(s, _)| mine(s)) {
                            let before = self
                                .history(collection, *record)?
                                .into_iter()
                                .filter(|it| it.stamp < stamp)
                                .filter_map(|it| match it.op {
                                    Op::Set { field: f, value, .. } if f == *field => Some(value),
                                    _ => None,
                                })
                                .next_back()
                                .unwrap_or(Value::Null);
                            inverse.push(Op::Set {
                                collection: collection.clone(),
                                record: *record,
                                field: field.clone(),
                                value: before,
                            });
                        }
                    }
                    Op::Delete { collection, record } | Op::Restore { collection, record } => {
                        if rec.and_then(|r| r.deleted).is_some_and(|(s, _)| mine(&s)) {
                            inverse.push(if matches!(op, Op::Delete { .. }) {
                                Op::Restore { collection: collection.clone(), record: *record }
                            } else {
                                Op::Delete { collection: collection.clone(), record: *record }
                            });
                        }
                    }
                    Op::CounterAdd { collection, record, field, delta } => inverse.push(Op::CounterAdd {
                        collection: collection.clone(),
                        record: *record,
                        field: field.clone(),
                        delta: delta.wrapping_neg(),
                    }),
                    Op::SetAdd { collection, record, field, elem } => {
                        let tag = Tag { replica: h.replica, seq, n: i as u32 };
                        let live = rec.and_then(|r| r.field(field)).is_some_and(|s| s.set_tags(elem).contains(&tag));
                        if live {
                            inverse.push(Op::SetRemove {
                                collection: collection.clone(),
                                record: *record,
                                field: field.clone(),
                                elem: elem.clone(),
                                tags: vec![tag],
                            });
                        }
                    }
                    Op::SetRemove { collection, record, field, elem, .. } => {
                        let present = rec.and_then(|r| r.field(field)).is_some_and(|s| !s.set_tags(elem).is_empty());
                        if !present {
                            inverse.push(Op::SetAdd {
                                collection: collection.clone(),
                                record: *record,
                                field: field.clone(),
                                elem: elem.clone(),
                            });
                        }
                    }
                }
            }
        }
        self.undo.truncate(self.undo.len() - take);
        if inverse.is_empty() {
            return Ok(None);
        }
        self.commit_inner(inverse, now_ms, rng, false).map(Some)
    }

    /// The snapshot of this replica's derived state (not its secrets).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            space: self.me.space,
            hlc: self.clock.last(),
            tips: self.tips.clone(),
            undo: self.undo.clone(),
            state: self.state().clone(),
        }
    }

    /// Writes a snapshot to the store so the next open replays only the tail: the records
    /// in chunks of [`CHUNK_RECORDS`] under meta keys `snapshot-<generation % 2>-<n>`,
    /// then the index naming them (atomically, so a crash keeps the previous snapshot,
    /// whose chunks are under the other parity), then empties this parity's leftovers.
    pub fn save_snapshot(&mut self) -> Result<()> {
        self.take_all(None);
        let generation = self.snap_gen + 1;
        let mut chunks = Vec::new();
        for (coll, records) in &self.state.collections {
            let ids: Vec<&RecordId> = records.keys().collect();
            for part in ids.chunks(CHUNK_RECORDS) {
                let slice: BTreeMap<RecordId, RecordState> =
                    part.iter().map(|id| (**id, records[*id].clone())).collect();
                let bytes = encode_chunk(&slice);
                let n = chunks.len() as u64;
                self.store.put_meta(&chunk_key(generation % 2, n), &bytes)?;
                chunks.push((coll.clone(), *part[0], *part[part.len() - 1], n, Sha256::digest(&bytes).into()));
            }
        }
        let count = chunks.len() as u64;
        let stored = StoredSnapshot {
            space: self.me.space,
            hlc: self.clock.last(),
            tips: self.tips.clone(),
            undo: self.undo.clone(),
            generation,
            counts: (count, self.snap_counts.0),
            chunks,
        };
        self.store.put_snapshot(&stored.encode())?;
        // Chunks of this parity from two saves ago that the new index does not name.
        for n in count..self.snap_counts.1 {
            self.store.put_meta(&chunk_key(generation % 2, n), &[])?;
        }
        self.snap_gen = generation;
        self.snap_counts = stored.counts;
        Ok(())
    }

    /// Entries of `replica` from `from_seq`, bounded by count and total bytes (at least one).
    pub fn entries_from(&self, replica: ReplicaId, from_seq: u64, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        let mut out = self.store.read(replica, from_seq, max_entries)?;
        crate::log::trim_to_bytes(&mut out, max_bytes);
        Ok(out)
    }
}

/// The version vector a stored snapshot covers: [`Replica::open`] reads only the entries
/// past it (when the log holds all it covers), so an adapter that opens with the log's tail
/// loads from here. `bytes` is what the replica gave `put_snapshot`.
pub fn snapshot_vector(bytes: &[u8]) -> Result<VersionVector> {
    let tips = match bytes.first() {
        Some(&STORED_SNAPSHOT_VERSION) => StoredSnapshot::decode(bytes)?.tips,
        _ => Snapshot::decode(bytes)?.tips,
    };
    let mut vv = VersionVector::new();
    for (r, t) in &tips {
        vv.insert(*r, t.next_seq);
    }
    Ok(vv)
}

/// State + version vector (with chain tips) + clock: what opening needs before the tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub space: SpaceId,
    pub hlc: Hlc,
    pub tips: BTreeMap<ReplicaId, ChainTip>,
    pub undo: Vec<u64>,
    pub state: State,
}

impl Snapshot {
    /// `version (1) ‖ raw length (u32) ‖ LZ4 block of the body`; see LOG-FORMAT.md.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        write_head(&mut w, self.space, self.hlc, &self.tips, &self.undo);
        self.state.encode_into(&mut w);
        let body = w.finish();
        let mut out = Writer::with_capacity(body.len() / 2 + 8);
        out.u8(SNAPSHOT_VERSION);
        out.u32(body.len() as u32);
        out.fixed(&lz4_flex::block::compress(&body));
        out.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot> {
        let mut r = Reader::new(bytes, "snapshot");
        let version = r.u8()?;
        if version != SNAPSHOT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "snapshot",
                found: version as u32,
                supported: SNAPSHOT_VERSION as u32,
            });
        }
        let raw_len = r.u32()? as usize;
        // LZ4 expands at most ~255×; a larger claim is a forgery, not a snapshot.
        if raw_len > r.remaining().saturating_mul(255) + 16 {
            return Err(r.err("length exceeds what the data can hold"));
        }
        let body = lz4_flex::block::decompress(r.take(r.remaining())?, raw_len)
            .map_err(|_| r.err("lz4 data is corrupt"))?;
        let mut r = Reader::new(&body, "snapshot");
        let (space, hlc, tips, undo) = read_head(&mut r)?;
        let state = State::read(&mut r)?;
        r.finish()?;
        Ok(Snapshot { space, hlc, tips, undo, state })
    }
}

fn encode_chunk(records: &BTreeMap<RecordId, RecordState>) -> Vec<u8> {
    let mut w = Writer::new();
    write_records(&mut w, records);
    let body = w.finish();
    let mut out = Writer::with_capacity(body.len() / 2 + 8);
    out.u32(body.len() as u32);
    out.fixed(&lz4_flex::block::compress(&body));
    out.finish()
}

fn decode_chunk(bytes: &[u8]) -> Result<BTreeMap<RecordId, RecordState>> {
    let mut r = Reader::new(bytes, "snapshot chunk");
    let raw_len = r.u32()? as usize;
    if raw_len > r.remaining().saturating_mul(255) + 16 {
        return Err(r.err("length exceeds what the data can hold"));
    }
    let body = lz4_flex::block::decompress(r.take(r.remaining())?, raw_len).map_err(|_| r.err("lz4 data is corrupt"))?;
    let mut r = Reader::new(&body, "snapshot chunk");
    let records = read_records(&mut r)?;
    r.finish()?;
    Ok(records)
}

/// A chunk named by a stored snapshot: collection, first and last record id, number, SHA-256.
type ChunkRef = (String, RecordId, RecordId, u64, [u8; 32]);

/// The index a stored snapshot writes through `put_snapshot` (see LOG-FORMAT.md).
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredSnapshot {
    space: SpaceId,
    hlc: Hlc,
    tips: BTreeMap<ReplicaId, ChainTip>,
    undo: Vec<u64>,
    generation: u64,
    /// Chunks of this generation and of the previous one.
    counts: (u64, u64),
    chunks: Vec<ChunkRef>,
}

impl StoredSnapshot {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(STORED_SNAPSHOT_VERSION);
        write_head(&mut w, self.space, self.hlc, &self.tips, &self.undo);
        w.varint(self.generation);
        w.varint(self.counts.1);
        w.varint(self.chunks.len() as u64);
        for (coll, first, last, _, sha) in &self.chunks {
            w.str(coll);
            w.fixed(first.as_bytes());
            w.fixed(last.as_bytes());
            w.fixed(sha);
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<StoredSnapshot> {
        let mut r = Reader::new(bytes, "snapshot index");
        let version = r.u8()?;
        if version != STORED_SNAPSHOT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "snapshot index",
                found: version as u32,
                supported: STORED_SNAPSHOT_VERSION as u32,
            });
        }
        let (space, hlc, tips, undo) = read_head(&mut r)?;
        let generation = r.varint()?;
        let previous = r.varint()?;
        let n = r.len(65)?;
        let mut chunks: Vec<ChunkRef> = Vec::with_capacity(n);
        for i in 0..n {
            let coll = r.str()?.to_owned();
            let first = RecordId(r.array()?);
            let last = RecordId(r.array()?);
            let sha = r.array()?;
            let ordered = chunks.last().is_none_or(|(c, _, l, _, _)| (c.as_str(), *l) < (coll.as_str(), first));
            if first > last || !ordered {
                return Err(r.err("chunks out of order"));
            }
            chunks.push((coll, first, last, i as u64, sha));
        }
        r.finish()?;
        Ok(StoredSnapshot { space, hlc, tips, undo, generation, counts: (n as u64, previous), chunks })
    }
}

type Head = (SpaceId, Hlc, BTreeMap<ReplicaId, ChainTip>, Vec<u64>);

fn write_head(w: &mut Writer, space: SpaceId, hlc: Hlc, tips: &BTreeMap<ReplicaId, ChainTip>, undo: &[u64]) {
    w.fixed(space.as_bytes());
    w.u64(hlc.to_u64());
    w.varint(tips.len() as u64);
    for (r, t) in tips {
        w.fixed(r.as_bytes());
        w.varint(t.next_seq);
        w.fixed(&t.last_hash);
        w.u64(t.last_hlc.to_u64());
    }
    w.varint(undo.len() as u64);
    for s in undo {
        w.varint(*s);
    }
}

fn read_head(r: &mut Reader<'_>) -> Result<Head> {
    let space = SpaceId(r.array()?);
    let hlc = Hlc::from_u64(r.u64()?);
    let mut tips = BTreeMap::new();
    let n = r.len(57)?;
    for _ in 0..n {
        let rid = ReplicaId(r.array()?);
        let tip = ChainTip { next_seq: r.varint()?, last_hash: r.array()?, last_hlc: Hlc::from_u64(r.u64()?) };
        if tips.last_key_value().is_some_and(|(l, _)| *l >= rid) {
            return Err(r.err("tips out of order"));
        }
        tips.insert(rid, tip);
    }
    let n = r.len(1)?;
    let mut undo = Vec::with_capacity(n);
    for _ in 0..n {
        undo.push(r.varint()?);
    }
    Ok((space, hlc, tips, undo))
}
