//! The sync protocol: a sans-IO state machine and its binary frame codec (spec: SYNC.md).
//!
//! Each side of a connection keeps a [`Sync`]. The caller moves bytes: it asks
//! [`Sync::generate`] for the next frame to send until it returns `None`, and hands every
//! received frame to [`Sync::receive`]. Both sides say hello (protocol versions, space,
//! replica, a fresh challenge), prove who they are by signing the other's challenge,
//! exchange version vectors, then send what the other lacks in seq order in bounded
//! batches; the receiver acknowledges what it stored. A new connection resumes from the
//! version vectors, so nothing is sent twice on purpose and duplicates are harmless.
//!
//! Two peers syncing in memory:
//!
//! ```
//! use stead_core::env::{ManualClock, SeededRandom};
//! use stead_core::ops::{Op, Value};
//! use stead_core::sync::{Sync, SyncConfig};
//! use stead_core::testing::Space;
//! use stead_core::ids::RecordId;
//!
//! let mut rng = SeededRandom::new(7);
//! let space = Space::new(2, &mut rng);
//! let (mut alice, mut bob) = (space.open(0), space.open(1));
//! let clock = ManualClock::new(1_700_000_000_000);
//! let note = RecordId::generate(&clock, &mut rng);
//! let set = Op::Set { collection: "notes".into(), record: note, field: "title".into(), value: Value::Str("hi".into()) };
//! alice.commit(vec![set], clock.now_ms(), &mut rng).unwrap();
//!
//! let mut a = Sync::new(SyncConfig::default(), &mut rng);
//! let mut b = Sync::new(SyncConfig::default(), &mut rng);
//! loop {
//!     let mut quiet = true;
//!     while let Some(frame) = a.generate(&alice) {
//!         quiet = false;
//!         let bytes = frame.encode();                  // what goes on the socket
//!         b.receive(&bytes, &mut bob, clock.now_ms()).unwrap();
//!     }
//!     while let Some(frame) = b.generate(&bob) {
//!         quiet = false;
//!         a.receive(&frame.encode(), &mut alice, clock.now_ms()).unwrap();
//!     }
//!     if quiet { break; }
//! }
//! assert_eq!(bob.value("notes", note, "title"), Some(Value::Str("hi".into())));
//! assert_eq!(alice.version_vector(), bob.version_vector());
//! # use stead_core::env::Clock;
//! ```

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer};
use sha2::Digest;

use crate::codec::{Reader, Writer};
use crate::env::Random;
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SpaceId};
use crate::log::{Checked, Entry, Limits, RunReader, RunWriter, VersionVector};
use crate::replica::{Ingested, Replica};

/// Protocol versions this build speaks.
/// Version 2 writes Entries frames as runs (an entry that follows the one before it
/// leaves out space, replica, seq and prev); version 1's whole entries are not read.
pub const PROTOCOL_MIN: u16 = 2;
pub const PROTOCOL_MAX: u16 = 2;
const HELLO_MAGIC: &[u8; 5] = b"STEAD";
const PROOF_DOMAIN: &[u8] = b"stead-proof-v1\0";
const REQUEST_DOMAIN: &[u8] = b"stead-request-v2\0";

/// Error codes carried by [`Frame::Error`].
pub mod code {
    pub const UNSUPPORTED_VERSION: u16 = 1;
    pub const WRONG_SPACE: u16 = 2;
    pub const UNAUTHORIZED: u16 = 3;
    pub const BAD_FRAME: u16 = 4;
    pub const REJECTED_ENTRY: u16 = 5;
    pub const UNEXPECTED: u16 = 6;
    pub const INTERNAL: u16 = 7;
    /// A frame above the receiver's size limit, or a batch with too many entries.
    pub const TOO_LARGE: u16 = 8;
    /// The connection sent faster than the receiver allows.
    pub const RATE_LIMITED: u16 = 9;
    /// The space already has as many connections as the receiver allows.
    pub const BUSY: u16 = 10;
    /// The connection fell too far behind the changes sent to it; reconnect to catch up.
    pub const TOO_SLOW: u16 = 11;
    /// The receiver is shutting down; reconnect later.
    pub const SHUTTING_DOWN: u16 = 12;

    /// Errors after which the connection is closed.
    pub fn is_fatal(code: u16) -> bool {
        !matches!(code, REJECTED_ENTRY)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello { min: u16, max: u16, space: SpaceId, replica: ReplicaId, challenge: [u8; 32] },
    /// The sender's signature over the receiver's challenge.
    Proof { sig: [u8; 64] },
    /// Replica → next seq the sender has stored (what it sends may run past it, see
    /// [`SyncPeer::sync_stored_vector`]).
    Vector(VersionVector),
    Entries(Vec<Entry>),
    /// The sender has durably stored `replica`'s entries up to `seq` inclusive.
    Ack { replica: ReplicaId, seq: u64 },
    Error { code: u16, message: String },
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Frame::Hello { min, max, space, replica, challenge } => {
                w.u8(0);
                w.fixed(HELLO_MAGIC);
                w.u16(*min);
                w.u16(*max);
                w.fixed(space.as_bytes());
                w.fixed(replica.as_bytes());
                w.fixed(challenge);
            }
            Frame::Proof { sig } => {
                w.u8(1);
                w.fixed(sig);
            }
            Frame::Vector(vv) => {
                w.u8(2);
                w.varint(vv.len() as u64);
                for (r, s) in vv {
                    w.fixed(r.as_bytes());
                    w.varint(*s);
                }
            }
            Frame::Entries(entries) => {
                w.u8(3);
                w.varint(entries.len() as u64);
                let mut run = RunWriter::new();
                for e in entries {
                    run.write(e, &mut w);
                }
            }
            Frame::Ack { replica, seq } => {
                w.u8(4);
                w.fixed(replica.as_bytes());
                w.varint(*seq);
            }
            Frame::Error { code, message } => {
                w.u8(5);
                w.u16(*code);
                w.str(message);
            }
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Frame> {
        let mut r = Reader::new(bytes, "frame");
        let frame = match r.u8()? {
            0 => {
                if &r.array::<5>()? != HELLO_MAGIC {
                    return Err(r.err("not a stead hello"));
                }
                Frame::Hello {
                    min: r.u16()?,
                    max: r.u16()?,
                    space: SpaceId(r.array()?),
                    replica: ReplicaId(r.array()?),
                    challenge: r.array()?,
                }
            }
            1 => Frame::Proof { sig: r.array()? },
            2 => {
                let n = r.len(17)?;
                let mut vv = VersionVector::new();
                for _ in 0..n {
                    let rid = ReplicaId(r.array()?);
                    if vv.last_key_value().is_some_and(|(l, _)| *l >= rid) {
                        return Err(r.err("vector out of order"));
                    }
                    vv.insert(rid, r.varint()?);
                }
                Frame::Vector(vv)
            }
            3 => {
                let n = r.len(1 + 1 + crate::log::SIG_LEN)?;
                let mut entries = Vec::with_capacity(n);
                let mut run = RunReader::new();
                for _ in 0..n {
                    entries.push(run.read(&mut r, limits)?);
                }
                Frame::Entries(entries)
            }
            4 => Frame::Ack { replica: ReplicaId(r.array()?), seq: r.varint()? },
            5 => Frame::Error { code: r.u16()?, message: r.str()?.to_owned() },
            _ => return Err(r.err("unknown frame kind")),
        };
        r.finish()?;
        Ok(frame)
    }
}

/// What a signed request is: everything the server acts on, so a signature made for one
/// request proves nothing for another.
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a> {
    pub method: &'a str,
    /// The `Host` the request is sent to (`host[:port]`, the port only when not the
    /// scheme's default), so a signature for one server is no use at another.
    pub host: &'a str,
    /// The path with its query, as sent.
    pub path_and_query: &'a str,
    /// SHA-256 of the body ([`body_hash`]; of nothing for a request without one).
    pub body_sha256: [u8; 32],
}

/// SHA-256 of a request body, for [`RequestTarget::body_sha256`].
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(body).into()
}

/// The message a member signs to prove itself on a plain request (HTTP) to a server:
/// `"stead-request-v2\0" ‖ u64 time in ms ‖ space ‖ replica ‖ str method ‖ str host ‖
/// str path and query ‖ body SHA-256`. The server accepts it once, and only within a
/// minute of its own time.
pub fn request_message(time_ms: u64, space: SpaceId, replica: ReplicaId, target: &RequestTarget<'_>) -> Vec<u8> {
    let mut w = Writer::new();
    w.fixed(REQUEST_DOMAIN);
    w.u64(time_ms);
    w.fixed(space.as_bytes());
    w.fixed(replica.as_bytes());
    w.str(target.method);
    w.str(target.host);
    w.str(target.path_and_query);
    w.fixed(&target.body_sha256);
    w.finish()
}

/// The `Authorization` header of a signed request:
/// `Stead <space>.<replica>.<time ms>.<signature of request_message, hex>`.
pub fn authorization(time_ms: u64, space: SpaceId, replica: ReplicaId, key: &ed25519_dalek::SigningKey, target: &RequestTarget<'_>) -> String {
    let sig = key.sign(&request_message(time_ms, space, replica, target));
    format!("Stead {space}.{replica}.{time_ms}.{}", hex::encode(sig.to_bytes()))
}

/// The `Authorization` header with which the holder of an invite reads the space's
/// membership log before it has joined: `Stead <space>.invite-<invite key, hex>.<time
/// ms>.<signature>`, the message as [`request_message`]'s with the invite key's first 16
/// bytes in the replica's place. A server takes it for that one route, while the invite
/// is pending and unexpired ([`check_invite`]).
pub fn invite_authorization(time_ms: u64, space: SpaceId, secret: &crate::membership::InviteSecret, target: &RequestTarget<'_>) -> String {
    let public = secret.public();
    let sig = secret.signing().sign(&request_message(time_ms, space, invite_replica(&public), target));
    format!("Stead {space}.invite-{}.{time_ms}.{}", hex::encode(public), hex::encode(sig.to_bytes()))
}

/// The replica id an invite key signs requests as.
pub fn invite_replica(invite: &[u8; 32]) -> ReplicaId {
    ReplicaId(invite[..16].try_into().expect("32 bytes"))
}

/// Whether `sig` over `msg` is by the key of an invite of `members` that is pending and
/// has not expired at `now_ms`.
pub fn check_invite(members: &crate::membership::Membership, invite: &[u8; 32], now_ms: u64, msg: &[u8], sig: &[u8; 64]) -> bool {
    use crate::membership::InviteState;
    members.invites().any(|i| i.key == *invite && i.state == InviteState::Pending && i.expires_ms > now_ms)
        && crate::sig::public_key(invite)
            .is_ok_and(|key| key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok())
}

/// What one side of a sync connection works against: a [`Replica`], or a server's
/// keyless verifying log.
pub trait SyncPeer {
    fn sync_space(&self) -> SpaceId;
    fn sync_replica(&self) -> ReplicaId;
    /// Replica → next seq this side holds, and may send.
    fn sync_vector(&self) -> VersionVector;
    /// Replica → next seq this side has durably stored: what its `Vector` frame tells the
    /// peer. A peer counts its own entries in it as acknowledged (an `Ack` lost with an
    /// earlier connection), so it must count nothing that could still be lost. The same as
    /// `sync_vector` unless this side can send entries it has not stored yet (a server
    /// relaying entries before their commit's fsync).
    fn sync_stored_vector(&self) -> VersionVector {
        self.sync_vector()
    }
    fn sync_entries(&self, replica: ReplicaId, from_seq: u64, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>>;
    /// Verifies and durably stores an entry; `Ok(true)` when it was new.
    fn sync_ingest(&mut self, entry: Entry, now_ms: u64) -> Result<bool>;
    /// Checks what needs no chain of one frame's entries at once (signatures in
    /// batches), for [`SyncPeer::sync_ingest_checked`]; `None` leaves each entry to
    /// `sync_ingest`.
    fn sync_check(&self, _entries: &[Entry]) -> Option<Vec<Result<Checked>>> {
        None
    }
    /// `sync_ingest` of an entry `sync_check` checked; `checked` is what it said of it.
    fn sync_ingest_checked(&mut self, entry: Entry, _checked: Result<Checked>, now_ms: u64) -> Result<bool> {
        self.sync_ingest(entry, now_ms)
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64];
    /// Whether `sig` over `msg` is by an active member `replica`.
    fn sync_check_member(&self, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool;
}

impl SyncPeer for Replica {
    fn sync_space(&self) -> SpaceId {
        self.space()
    }
    fn sync_replica(&self) -> ReplicaId {
        self.id()
    }
    fn sync_vector(&self) -> VersionVector {
        self.version_vector()
    }
    fn sync_entries(&self, replica: ReplicaId, from_seq: u64, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        self.entries_from(replica, from_seq, max_entries, max_bytes)
    }
    fn sync_ingest(&mut self, entry: Entry, now_ms: u64) -> Result<bool> {
        Ok(!matches!(self.ingest(entry, now_ms)?, Ingested::Duplicate))
    }
    fn sync_check(&self, entries: &[Entry]) -> Option<Vec<Result<Checked>>> {
        (entries.len() > 1).then(|| self.check_entries(entries))
    }
    fn sync_ingest_checked(&mut self, entry: Entry, checked: Result<Checked>, now_ms: u64) -> Result<bool> {
        Ok(!matches!(self.ingest_checked(entry, checked, now_ms)?, Ingested::Duplicate))
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing_key().sign(msg).to_bytes()
    }
    fn sync_check_member(&self, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        check_member(self.members(), replica, msg, sig)
    }
}

/// Checks a proof signature (of a sync hello or a signed request) against an active
/// member's key, strictly: no batch rule applies here, so a small-order `R` or key is
/// refused outright.
pub fn check_member(members: &crate::membership::Membership, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
    members.is_active(replica)
        && members
            .key_for(replica, u64::MAX)
            .is_some_and(|k| k.verify_strict(msg, &Signature::from_bytes(sig)).is_ok())
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Most entries in one frame.
    pub max_entries: usize,
    /// Soft bound on one frame's bytes (a single larger entry still goes alone).
    pub max_bytes: usize,
    /// Refuse a peer that is not an active member of the space (servers set this).
    pub require_member: bool,
    /// Send an `Ack` for entries taken in. A server must: its acks are how a client knows
    /// its entries are durable. A client's would tell the server nothing it uses (what a
    /// client has, it says in its vector when it connects), and at a fan-out they are one
    /// more frame per delivery for the server to read.
    pub acknowledge: bool,
    pub limits: Limits,
}

impl Default for SyncConfig {
    /// A server's side of a connection.
    fn default() -> Self {
        SyncConfig { max_entries: 256, max_bytes: 1 << 20, require_member: true, acknowledge: true, limits: Limits::default() }
    }
}

impl SyncConfig {
    /// A client's side of a connection to a server: the server need not be a member of
    /// the space (it cannot read it), and entries the server relays are not acknowledged.
    pub fn client() -> Self {
        SyncConfig { require_member: false, acknowledge: false, ..SyncConfig::default() }
    }
}

#[derive(Debug, Clone)]
struct PeerHello {
    replica: ReplicaId,
    version: u16,
    challenge: [u8; 32],
}

/// One side of one sync connection.
#[derive(Debug, Clone)]
pub struct Sync {
    config: SyncConfig,
    challenge: [u8; 32],
    hello_sent: bool,
    peer: Option<PeerHello>,
    proof_sent: bool,
    peer_proven: bool,
    vector_due: bool,
    their: Option<VersionVector>,
    sent: VersionVector,
    acks_due: BTreeMap<ReplicaId, u64>,
    acked: VersionVector,
    outgoing_error: Option<(u16, String)>,
    /// A fatal error is queued: further frames are ignored until it is sent.
    failed: bool,
    closed: bool,
}

fn proof_message(challenge: &[u8; 32], space: SpaceId, replica: ReplicaId, version: u16) -> Vec<u8> {
    let mut w = Writer::new();
    w.fixed(PROOF_DOMAIN);
    w.fixed(challenge);
    w.fixed(space.as_bytes());
    w.fixed(replica.as_bytes());
    w.u16(version);
    w.finish()
}

impl Sync {
    pub fn new(config: SyncConfig, rng: &mut dyn Random) -> Sync {
        let mut challenge = [0u8; 32];
        rng.fill(&mut challenge);
        Sync {
            config,
            challenge,
            hello_sent: false,
            peer: None,
            proof_sent: false,
            peer_proven: false,
            vector_due: true,
            their: None,
            sent: VersionVector::new(),
            acks_due: BTreeMap::new(),
            acked: VersionVector::new(),
            outgoing_error: None,
            failed: false,
            closed: false,
        }
    }

    /// The negotiated protocol version, once both hellos crossed.
    pub fn version(&self) -> Option<u16> {
        self.peer.as_ref().map(|p| p.version)
    }

    pub fn peer(&self) -> Option<ReplicaId> {
        self.peer.as_ref().map(|p| p.replica)
    }

    /// Whether the peer proved it holds the key of the replica its hello named, and (with
    /// [`SyncConfig::require_member`]) that the replica is an active member.
    pub fn peer_proven(&self) -> bool {
        self.peer_proven
    }

    /// Whether the peer said what it holds (its vector): until then nothing is sent.
    pub fn knows_peer_vector(&self) -> bool {
        self.their.is_some()
    }

    /// Whether a fatal error ended the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Replica → next seq the peer has acknowledged storing.
    pub fn acked(&self) -> &VersionVector {
        &self.acked
    }

    /// Whether the peer is known to hold everything `local` has.
    pub fn in_sync(&self, local: &dyn SyncPeer) -> bool {
        let Some(their) = &self.their else { return false };
        local.sync_vector().iter().all(|(r, n)| their.get(r).copied().unwrap_or(0) >= *n)
    }

    /// The next frame to send, if any.
    pub fn generate(&mut self, local: &dyn SyncPeer) -> Option<Frame> {
        if self.closed {
            return None;
        }
        if let Some((code, message)) = self.outgoing_error.take() {
            if code::is_fatal(code) {
                self.closed = true;
            }
            return Some(Frame::Error { code, message });
        }
        if !self.hello_sent {
            self.hello_sent = true;
            return Some(Frame::Hello {
                min: PROTOCOL_MIN,
                max: PROTOCOL_MAX,
                space: local.sync_space(),
                replica: local.sync_replica(),
                challenge: self.challenge,
            });
        }
        let peer = self.peer.as_ref()?;
        if !self.proof_sent {
            self.proof_sent = true;
            let msg = proof_message(&peer.challenge, local.sync_space(), local.sync_replica(), peer.version);
            return Some(Frame::Proof { sig: local.sync_sign(&msg) });
        }
        if self.config.require_member && !self.peer_proven {
            return None;
        }
        if let Some((&replica, &seq)) = self.acks_due.iter().next() {
            self.acks_due.remove(&replica);
            return Some(Frame::Ack { replica, seq });
        }
        if self.vector_due {
            self.vector_due = false;
            // What is stored, not all that may be sent: the peer counts its own entries in
            // it as acknowledged. Past it the peer may send back entries it was sent;
            // taken in again they are duplicates, acknowledged once stored.
            return Some(Frame::Vector(local.sync_stored_vector()));
        }
        let their = self.their.as_ref()?;
        for (replica, next) in local.sync_vector() {
            let from = self.sent.get(&replica).copied().unwrap_or(0).max(their.get(&replica).copied().unwrap_or(0));
            if from >= next {
                continue;
            }
            match local.sync_entries(replica, from, self.config.max_entries, self.config.max_bytes) {
                Ok(entries) if !entries.is_empty() => {
                    let last = entries.last().expect("not empty").header.seq;
                    self.sent.insert(replica, last + 1);
                    return Some(Frame::Entries(entries));
                }
                Ok(_) => continue,
                // Stored but not in memory: the adapter loads them and the caller generates
                // again; this replica's entries are not marked sent meanwhile.
                Err(Error::NotLoaded { .. }) => continue,
                Err(e) => {
                    self.closed = true;
                    return Some(Frame::Error { code: code::INTERNAL, message: e.to_string() });
                }
            }
        }
        None
    }

    fn fail(&mut self, code: u16, err: Error) -> Error {
        if !self.failed {
            self.outgoing_error = Some((code, err.to_string()));
            self.failed = code::is_fatal(code);
        }
        err
    }

    /// Takes in one received frame. Errors are also queued as an error frame for the peer
    /// when they are the peer's fault; a rejected entry does not end the connection.
    pub fn receive(&mut self, bytes: &[u8], local: &mut dyn SyncPeer, now_ms: u64) -> Result<()> {
        if self.closed || self.failed {
            return Ok(());
        }
        let frame = match Frame::decode(bytes, &self.config.limits) {
            Ok(f) => f,
            Err(e) => return Err(self.fail(code::BAD_FRAME, e)),
        };
        match frame {
            Frame::Hello { min, max, space, replica, challenge } => {
                if self.peer.is_some() {
                    return Err(self.fail(code::UNEXPECTED, protocol(code::UNEXPECTED, "a second hello")));
                }
                if space != local.sync_space() {
                    let e = Error::WrongSpace { expected: local.sync_space(), found: space };
                    return Err(self.fail(code::WRONG_SPACE, e));
                }
                let version = max.min(PROTOCOL_MAX);
                if version < min.max(PROTOCOL_MIN) {
                    let e = Error::UnsupportedVersion { what: "protocol", found: max as u32, supported: PROTOCOL_MAX as u32 };
                    return Err(self.fail(code::UNSUPPORTED_VERSION, e));
                }
                self.peer = Some(PeerHello { replica, version, challenge });
            }
            Frame::Proof { sig } => {
                let Some(peer) = &self.peer else {
                    return Err(self.fail(code::UNEXPECTED, protocol(code::UNEXPECTED, "proof before hello")));
                };
                let msg = proof_message(&self.challenge, local.sync_space(), peer.replica, peer.version);
                self.peer_proven = local.sync_check_member(peer.replica, &msg, &sig);
                if self.config.require_member && !self.peer_proven {
                    return Err(self.fail(code::UNAUTHORIZED, protocol(code::UNAUTHORIZED, "peer is not a member of the space")));
                }
            }
            Frame::Vector(vv) => {
                self.ready_or_fail()?;
                // Resume from what the peer says it has, even if we sent more before: a gap
                // on its side asks us to go back.
                self.sent = vv.clone();
                self.their = Some(vv);
            }
            Frame::Entries(entries) => {
                self.ready_or_fail()?;
                let mut skip: Option<ReplicaId> = None;
                let mut checks = local.sync_check(&entries).map(Vec::into_iter);
                for entry in entries {
                    let (replica, seq) = (entry.header.replica, entry.header.seq);
                    let checked = checks.as_mut().and_then(Iterator::next);
                    if skip == Some(replica) {
                        continue;
                    }
                    let ingested = match checked {
                        Some(c) => local.sync_ingest_checked(entry, c, now_ms),
                        None => local.sync_ingest(entry, now_ms),
                    };
                    match ingested {
                        Ok(_) => {
                            if self.config.acknowledge {
                                let due = self.acks_due.entry(replica).or_insert(seq);
                                *due = (*due).max(seq);
                            }
                            let their = self.their.get_or_insert_with(VersionVector::new);
                            let t = their.entry(replica).or_insert(0);
                            *t = (*t).max(seq + 1);
                            let s = self.sent.entry(replica).or_insert(0);
                            *s = (*s).max(seq + 1);
                        }
                        Err(Error::Gap { .. }) => {
                            // Something before this went missing: ask again from our vector.
                            self.vector_due = true;
                            skip = Some(replica);
                        }
                        Err(Error::Storage(m)) => return Err(self.fail(code::INTERNAL, Error::Storage(m))),
                        Err(e) => {
                            skip = Some(replica);
                            self.outgoing_error = Some((code::REJECTED_ENTRY, e.to_string()));
                        }
                    }
                }
            }
            Frame::Ack { replica, seq } => {
                self.ready_or_fail()?;
                let a = self.acked.entry(replica).or_insert(0);
                *a = (*a).max(seq + 1);
                if let Some(their) = &mut self.their {
                    let t = their.entry(replica).or_insert(0);
                    *t = (*t).max(seq + 1);
                }
            }
            Frame::Error { code: c, message } => {
                if code::is_fatal(c) {
                    self.closed = true;
                }
                return Err(Error::Protocol { code: c, message });
            }
        }
        Ok(())
    }

    fn ready_or_fail(&mut self) -> Result<()> {
        if self.peer.is_none() || (self.config.require_member && !self.peer_proven) {
            return Err(self.fail(code::UNEXPECTED, protocol(code::UNEXPECTED, "data before the handshake")));
        }
        Ok(())
    }
}

fn protocol(code: u16, message: &str) -> Error {
    Error::Protocol { code, message: message.to_owned() }
}
