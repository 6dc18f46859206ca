//! The signed, hash-chained change log: entry encoding, signatures and chain verification.
//!
//! Each replica appends entries numbered from 0 with no gaps; each entry names the
//! SHA-256 of the replica's previous entry and is signed with the replica's Ed25519 key
//! over its header and its payload's SHA-256. Anyone holding the membership log can check
//! order, chain and signature without the space key. The byte layout is specified in
//! `LOG-FORMAT.md`.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::ids::{ReplicaId, SpaceId};
use crate::membership::Membership;
use crate::env::Random;
use crate::sig;

/// The entry encoding this build writes and reads.
pub const ENTRY_VERSION: u8 = 1;
/// Bytes of the fixed header: version, space, replica, seq, hlc, prev, payload length.
pub const HEADER_LEN: usize = 1 + 16 + 16 + 8 + 8 + 32 + 4;
pub const SIG_LEN: usize = 64;
const SIGN_DOMAIN: &[u8] = b"stead-entry-v1\0";

pub type Hash = [u8; 32];

/// Bounds on what a verifier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_payload: 1 << 20 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    pub space: SpaceId,
    pub replica: ReplicaId,
    pub seq: u64,
    pub hlc: Hlc,
    /// SHA-256 of the replica's previous entry; all zeros for seq 0.
    pub prev: Hash,
    pub payload_len: u32,
}

/// One signed log entry. Its payload is opaque here (ciphertext of an ops batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub header: EntryHeader,
    pub payload: Vec<u8>,
    pub sig: [u8; SIG_LEN],
}

impl EntryHeader {
    fn encode_into(&self, w: &mut Writer) {
        w.u8(ENTRY_VERSION);
        w.fixed(self.space.as_bytes());
        w.fixed(self.replica.as_bytes());
        w.u64(self.seq);
        w.u64(self.hlc.to_u64());
        w.fixed(&self.prev);
        w.u32(self.payload_len);
    }
}

impl Entry {
    /// Builds and signs an entry.
    pub fn sign(
        space: SpaceId,
        replica: ReplicaId,
        seq: u64,
        hlc: Hlc,
        prev: Hash,
        payload: Vec<u8>,
        key: &SigningKey,
    ) -> Entry {
        let header =
            EntryHeader { space, replica, seq, hlc, prev, payload_len: payload.len() as u32 };
        let msg = signed_message(&header, &payload);
        let sig = key.sign(&msg).to_bytes();
        Entry { header, payload, sig }
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len() + SIG_LEN
    }

    pub fn encode_into(&self, w: &mut Writer) {
        self.header.encode_into(w);
        w.fixed(&self.payload);
        w.fixed(&self.sig);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_len());
        self.encode_into(&mut w);
        w.finish()
    }

    /// Decodes exactly one entry from `bytes`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Entry> {
        let mut r = Reader::new(bytes, "entry");
        let entry = Entry::read(&mut r, limits)?;
        r.finish()?;
        Ok(entry)
    }

    /// Reads one entry from a reader positioned at its first byte.
    pub fn read(r: &mut Reader<'_>, limits: &Limits) -> Result<Entry> {
        let version = r.u8()?;
        if version != ENTRY_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "entry",
                found: version as u32,
                supported: ENTRY_VERSION as u32,
            });
        }
        let space = SpaceId(r.array()?);
        let replica = ReplicaId(r.array()?);
        let seq = r.u64()?;
        let hlc = Hlc::from_u64(r.u64()?);
        let prev = r.array()?;
        let payload_len = r.u32()?;
        if payload_len as usize > limits.max_payload {
            return Err(Error::TooLarge {
                what: "entry payload",
                size: payload_len as usize,
                limit: limits.max_payload,
            });
        }
        let payload = r.take(payload_len as usize)?.to_vec();
        let sig = r.array()?;
        Ok(Entry { header: EntryHeader { space, replica, seq, hlc, prev, payload_len }, payload, sig })
    }

    /// SHA-256 of the encoded entry, signature included: what the next entry's `prev` names.
    pub fn hash(&self) -> Hash {
        let mut h = Sha256::new();
        let mut w = Writer::with_capacity(HEADER_LEN);
        self.header.encode_into(&mut w);
        h.update(&w.buf);
        h.update(&self.payload);
        h.update(self.sig);
        h.finalize().into()
    }

    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<()> {
        let bad = || Error::BadSignature { replica: self.header.replica, seq: self.header.seq };
        if self.header.payload_len as usize != self.payload.len() {
            return Err(bad());
        }
        let msg = signed_message(&self.header, &self.payload);
        if sig::verify(key, &msg, &self.sig) { Ok(()) } else { Err(bad()) }
    }
}

/// The entry a compact entry follows: what its encoding leaves out is derived from this
/// (LOG-FORMAT.md, "Runs").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub space: SpaceId,
    pub replica: ReplicaId,
    pub seq: u64,
    pub hlc: Hlc,
    /// SHA-256 of the encoded entry: the `prev` of the next one.
    pub hash: Hash,
}

impl Link {
    /// The link to `entry`, hashing it.
    pub fn to(entry: &Entry) -> Link {
        Link::with_hash(entry, entry.hash())
    }

    /// The link to `entry` whose hash the caller already computed.
    pub fn with_hash(entry: &Entry, hash: Hash) -> Link {
        let h = &entry.header;
        Link { space: h.space, replica: h.replica, seq: h.seq, hlc: h.hlc, hash }
    }
}

impl Entry {
    /// Whether this entry directly follows `link`'s in its chain (same space and replica,
    /// next seq, `prev` naming it, a later clock), so it can be written compact after it.
    pub fn follows(&self, link: &Link) -> bool {
        let h = &self.header;
        h.space == link.space
            && h.replica == link.replica
            && Some(h.seq) == link.seq.checked_add(1)
            && h.prev == link.hash
            && h.hlc > link.hlc
    }

    /// Writes the compact form, `varint (hlc − link's hlc) ‖ payload ‖ sig`, whose length
    /// the container records. Only for an entry that [`follows`](Entry::follows) `link`.
    pub fn encode_compact_into(&self, link: &Link, w: &mut Writer) {
        debug_assert!(self.follows(link));
        w.varint(self.header.hlc.to_u64() - link.hlc.to_u64());
        w.fixed(&self.payload);
        w.fixed(&self.sig);
    }

    /// Reads the compact form of the entry after `link` from all of `body`, re-deriving
    /// space, replica, seq and prev. The signature covers the derived header as it covers
    /// any other, so a compact entry put after the wrong entry fails verification.
    pub fn decode_compact(body: &[u8], link: &Link, limits: &Limits) -> Result<Entry> {
        let mut r = Reader::new(body, "compact entry");
        let delta = r.varint()?;
        let hlc = match link.hlc.to_u64().checked_add(delta) {
            Some(v) if delta > 0 => Hlc::from_u64(v),
            _ => return Err(r.err("clock does not move forward")),
        };
        let payload_len = r.remaining().checked_sub(SIG_LEN).ok_or(r.err("unexpected end of input"))?;
        if payload_len > limits.max_payload {
            return Err(Error::TooLarge { what: "entry payload", size: payload_len, limit: limits.max_payload });
        }
        let payload = r.take(payload_len)?.to_vec();
        let sig = r.array()?;
        let seq = link.seq.checked_add(1).ok_or(r.err("seq overflows"))?;
        let header = EntryHeader {
            space: link.space,
            replica: link.replica,
            seq,
            hlc,
            prev: link.hash,
            payload_len: payload_len as u32,
        };
        Ok(Entry { header, payload, sig })
    }
}

/// Writes a run of entries, each either whole or compact after the one before it:
/// `varint (body length × 2 + compact) ‖ body` per entry, the body being the entry's
/// encoding or its compact form. What the sync protocol's Entries frames hold.
///
/// The entry before is hashed only when the next one could follow it by everything else
/// its header says: a run of one entry, most of what a server relays live, hashes none.
#[derive(Debug, Default, Clone)]
pub struct RunWriter<'a> {
    last: Option<&'a Entry>,
}

impl<'a> RunWriter<'a> {
    pub fn new() -> Self {
        RunWriter::default()
    }

    pub fn write(&mut self, entry: &'a Entry, w: &mut Writer) {
        let mut body = Writer::with_capacity(entry.encoded_len());
        let h = &entry.header;
        let link = self
            .last
            .filter(|l| {
                let b = &l.header;
                h.space == b.space && h.replica == b.replica && Some(h.seq) == b.seq.checked_add(1) && h.hlc > b.hlc
            })
            .map(Link::to);
        let compact = match &link {
            Some(link) if entry.follows(link) => {
                entry.encode_compact_into(link, &mut body);
                true
            }
            _ => {
                entry.encode_into(&mut body);
                false
            }
        };
        w.varint(((body.buf.len() as u64) << 1) | compact as u64);
        w.fixed(&body.buf);
        self.last = Some(entry);
    }
}

/// Reads what [`RunWriter`] wrote.
#[derive(Debug, Default, Clone)]
pub struct RunReader {
    last: Option<Link>,
}

impl RunReader {
    pub fn new() -> Self {
        RunReader::default()
    }

    pub fn read(&mut self, r: &mut Reader<'_>, limits: &Limits) -> Result<Entry> {
        let head = r.varint()?;
        let len = usize::try_from(head >> 1).map_err(|_| r.err("entry length exceeds the input"))?;
        if len > r.remaining() {
            return Err(r.err("entry length exceeds the input"));
        }
        let body = r.take(len)?;
        let entry = if head & 1 == 1 {
            let link = self.last.as_ref().ok_or(r.err("compact entry without a predecessor"))?;
            Entry::decode_compact(body, link, limits)?
        } else {
            Entry::decode(body, limits)?
        };
        self.last = Some(Link::to(&entry));
        Ok(entry)
    }
}

fn signed_message(header: &EntryHeader, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(SIGN_DOMAIN.len() + HEADER_LEN + 32);
    w.fixed(SIGN_DOMAIN);
    header.encode_into(&mut w);
    w.fixed(&Sha256::digest(payload));
    w.finish()
}

/// What a verifier knows about the end of one replica's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainTip {
    pub next_seq: u64,
    pub last_hash: Hash,
    pub last_hlc: Hlc,
}

/// The outcome of verifying an entry against the chains seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Extends its replica's chain by one.
    New,
    /// Already known (same bytes at the same seq); harmless.
    Duplicate,
}

/// Replica → next expected seq.
pub type VersionVector = BTreeMap<ReplicaId, u64>;

/// Trims `entries` to at most `max_bytes` of encoded entries, keeping at least one so a
/// batch always makes progress.
pub fn trim_to_bytes(entries: &mut Vec<Entry>, max_bytes: usize) {
    let mut total = 0;
    let keep = entries
        .iter()
        .position(|e| {
            total += e.encoded_len();
            total > max_bytes
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
}

/// Checks an entry: space, size, membership, signature, then its place in the chain.
/// `known_hash` returns the hash of an already stored entry of the same replica (to tell a
/// duplicate from a fork); it may return `None` when that entry is no longer at hand.
///
/// The composition of [`check_entry`], which needs no chain and may run on any thread
/// ahead of time, and [`verify_chain`], which needs the current tip.
pub fn verify_entry(
    entry: &Entry,
    space: SpaceId,
    members: &Membership,
    tip: Option<&ChainTip>,
    limits: &Limits,
    known_hash: impl FnOnce(u64) -> Result<Option<Hash>>,
) -> Result<(Verified, Hash)> {
    let checked = check_entry(entry, space, members, limits)?;
    let verdict = verify_chain(entry, &checked, tip, known_hash)?;
    Ok((verdict, checked.hash))
}

/// Proof that an entry passed [`check_entry`]: its space and size are right, and it is
/// signed by the key the membership log gives its replica at its seq. Holds the entry's
/// hash, computed once. Only [`check_entry`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    replica: ReplicaId,
    seq: u64,
    hash: Hash,
}

impl Checked {
    /// SHA-256 of the encoded entry.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Whether this check was made of `entry` (its replica and seq; the hash is trusted).
    pub fn is_for(&self, entry: &Entry) -> bool {
        self.replica == entry.header.replica && self.seq == entry.header.seq
    }
}

/// The stateless half of [`verify_entry`]: space, size, the membership key for
/// (replica, seq), the signature and the entry hash. Needs no chain tip, so it may run on
/// any thread before the chain is at hand (a server checks a received batch in parallel
/// before its write transaction).
pub fn check_entry(entry: &Entry, space: SpaceId, members: &Membership, limits: &Limits) -> Result<Checked> {
    let key = signer(entry, space, members, limits)?;
    entry.verify_signature(&key)?;
    Ok(Checked { replica: entry.header.replica, seq: entry.header.seq, hash: entry.hash() })
}

/// What [`check_entry`] checks before the signature itself, in its order; the key that
/// must have signed the entry.
fn signer(entry: &Entry, space: SpaceId, members: &Membership, limits: &Limits) -> Result<VerifyingKey> {
    let h = &entry.header;
    if h.space != space {
        return Err(Error::WrongSpace { expected: space, found: h.space });
    }
    if entry.payload.len() > limits.max_payload {
        return Err(Error::TooLarge {
            what: "entry payload",
            size: entry.payload.len(),
            limit: limits.max_payload,
        });
    }
    let key = members.key_for(h.replica, h.seq).ok_or(Error::UnknownReplica { replica: h.replica, seq: h.seq })?;
    if !members.may_write(h.replica) {
        return Err(Error::ReadOnly { replica: h.replica, seq: h.seq });
    }
    // The signature covers the header's length: a payload of another length fails it.
    if h.payload_len as usize != entry.payload.len() {
        return Err(Error::BadSignature { replica: h.replica, seq: h.seq });
    }
    Ok(key)
}

/// [`check_entry`] for many entries, with the signatures of each key checked as one batch
/// ([`sig::verify_batch`]), about three times faster, and with a run's signatures
/// vouched for by its last one: an entry followed in `entries` by the next entry of its
/// chain (same replica and key, next seq, `prev` its hash) needs no signature check of
/// its own, because that successor's signature covers its hash, and the hash covers the
/// entry with its signature. So only each run's last signature is checked; a run of 256
/// entries from one device costs one signature check, not 256.
///
/// Every entry gets the result `check_entry` gives it, but one kind: an entry whose own
/// signature is bad and whose successor, signed by the same key, chains to it. Only the
/// key's holder can make that pair (anyone else would have to sign the successor), so
/// it forges nothing: it is the holder's own entry, and it can only stall the holder's own
/// chain for a verifier that receives it without its successor. When a run's last
/// signature fails, each entry of the run is checked on its own, to tell which are bad.
pub fn check_entries(entries: &[Entry], space: SpaceId, members: &Membership, limits: &Limits, random: &mut dyn Random) -> Vec<Result<Checked>> {
    let mut out: Vec<Result<Checked>> = Vec::with_capacity(entries.len());
    let mut keys: Vec<Option<VerifyingKey>> = Vec::with_capacity(entries.len());
    for entry in entries {
        let h = &entry.header;
        match signer(entry, space, members, limits) {
            Ok(key) => {
                out.push(Ok(Checked { replica: h.replica, seq: h.seq, hash: entry.hash() }));
                keys.push(Some(key));
            }
            Err(e) => {
                out.push(Err(e));
                keys.push(None);
            }
        }
    }
    // Runs, as index ranges whose last entry signs for the rest, grouped by key.
    type Runs = Vec<(usize, usize)>;
    let mut by_key: BTreeMap<[u8; 32], (VerifyingKey, Runs)> = BTreeMap::new();
    let mut start = 0;
    for i in 0..entries.len() {
        let Some(key) = keys[i] else {
            start = i + 1;
            continue;
        };
        let vouched = match (out[i].as_ref(), entries.get(i + 1), keys.get(i + 1)) {
            (Ok(checked), Some(next), Some(Some(next_key))) => {
                let (h, n) = (&entries[i].header, &next.header);
                next_key == &key && n.replica == h.replica && n.seq == h.seq + 1 && n.prev == checked.hash
            }
            _ => false,
        };
        if !vouched {
            by_key.entry(key.to_bytes()).or_insert_with(|| (key, Vec::new())).1.push((start, i));
            start = i + 1;
        }
    }
    for (key, runs) in by_key.into_values() {
        let msgs: Vec<Vec<u8>> = runs.iter().map(|&(_, last)| signed_message(&entries[last].header, &entries[last].payload)).collect();
        if runs.len() > 1 {
            let items: Vec<(&[u8], &[u8; 64])> = runs.iter().zip(&msgs).map(|(&(_, last), msg)| (msg.as_slice(), &entries[last].sig)).collect();
            if sig::verify_batch(&key, &items, random) {
                continue;
            }
        }
        for (&(first, last), msg) in runs.iter().zip(&msgs) {
            if sig::verify(&key, msg, &entries[last].sig) {
                continue;
            }
            for i in first..=last {
                let e = &entries[i];
                if i == last || e.verify_signature(&key).is_err() {
                    out[i] = Err(Error::BadSignature { replica: e.header.replica, seq: e.header.seq });
                }
            }
        }
    }
    out
}

/// The chain half of [`verify_entry`], cheap: seq continuity against `tip`, duplicate or
/// fork, prev hash and clock. `checked` is what [`check_entry`] returned for `entry`.
pub fn verify_chain(
    entry: &Entry,
    checked: &Checked,
    tip: Option<&ChainTip>,
    known_hash: impl FnOnce(u64) -> Result<Option<Hash>>,
) -> Result<Verified> {
    let h = &entry.header;
    debug_assert!(checked.replica == h.replica && checked.seq == h.seq);
    let hash = checked.hash;
    let next = tip.map_or(0, |t| t.next_seq);
    if h.seq > next {
        return Err(Error::Gap { replica: h.replica, expected: next, got: h.seq });
    }
    if h.seq < next {
        let stored = match tip {
            Some(t) if h.seq + 1 == next => Some(t.last_hash),
            _ => known_hash(h.seq)?,
        };
        return match stored {
            Some(s) if s != hash => Err(Error::Fork { replica: h.replica, seq: h.seq }),
            _ => Ok(Verified::Duplicate),
        };
    }
    let expected_prev = tip.map_or([0u8; 32], |t| t.last_hash);
    if h.prev != expected_prev {
        return Err(Error::BadPrev { replica: h.replica, seq: h.seq });
    }
    if let Some(t) = tip
        && h.hlc <= t.last_hlc {
            return Err(Error::HlcRegression { replica: h.replica, seq: h.seq });
        }
    Ok(Verified::New)
}
