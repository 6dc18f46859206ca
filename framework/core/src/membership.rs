//! The membership log of a space: signed announcements of who may write to it.
//!
//! The creator signs a genesis event naming itself; every later event (add or remove a
//! member) is signed by a member active at that point and names the hash of the event
//! before it, so the log is a single hash chain. Anyone — the server included — can
//! verify it with public keys alone. An add carries the space key wrapped to the new
//! device's X25519 key, so the key travels with the membership and the server sees only
//! ciphertext. A remove names the last seq of the removed replica that stays valid;
//! entries it signs after that are refused as from an unknown replica.
//!
//! Invites and key rotation:
//! - An owner invites with a one-time key pair made for the invite ([`InviteSecret`]):
//!   `Invite` names its public keys, the role, an expiry, and the space key wrapped to
//!   it. The secret travels in the link. The joining device makes its own fresh identity
//!   and appends `Join`, signed by the invite's key, naming itself; an invite adds one
//!   device, once. The inviter never knows the joiner's secrets. Expiry is checked by the
//!   server when the `Join` arrives ([`Membership::expired_join`]): a log alone cannot
//!   know the time.
//! - `Rekey` starts a new space key: it names the key's id, seals the previous key under
//!   it, and wraps it to every active member and to the pending invites it keeps (the
//!   others are cancelled). Removing a member is followed by a rekey, so the removed
//!   device, which holds only older keys, cannot read what is written after, while every
//!   holder of the newest key can walk back through the whole history
//!   ([`Membership::keyring`]).
//!
//! Every key that enters the log is checked: a member's Ed25519 key must be the canonical
//! encoding of a point of large order ([`sig::public_key`]) and its X25519 key must not be
//! of small order ([`crypto::is_weak_agreement_key`]). A small-order signing key signs for
//! anyone, and a space key wrapped to a small-order agreement key is open to anyone.
//! Events are verified strictly (`verify_strict`, which also refuses a small-order `R`):
//! no batch needs a looser rule here, unlike entries (see [`crate::sig`]).

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::codec::{Reader, Writer};
use crate::crypto::{KEY_ID_LEN, Keyring, SEALED_KEY_LEN, SpaceKey, WRAPPED_KEY_LEN};
use crate::env::Random;
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SpaceId};
use crate::log::Hash;
use crate::{crypto, sig};

pub const MEMBERSHIP_VERSION: u8 = 1;
const SIGN_DOMAIN: &[u8] = b"stead-member-v1\0";

/// A device's public identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub replica: ReplicaId,
    /// Ed25519 public key that signs its entries.
    pub signing: [u8; 32],
    /// X25519 public key that space keys are wrapped to.
    pub agreement: [u8; 32],
}

impl Member {
    /// Checks both public keys and returns the signing key; the error is the reason.
    pub fn check_keys(&self) -> Result<VerifyingKey, &'static str> {
        let key = sig::public_key(&self.signing)?;
        if crypto::is_weak_agreement_key(&self.agreement) {
            return Err("weak agreement key");
        }
        Ok(key)
    }
}

/// What a member may do. The creator is an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Writes entries, and adds and removes members.
    Owner,
    /// Writes entries.
    Writer,
    /// Reads only: its entries are refused.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    pub fn may_write(self) -> bool {
        self != Role::Reader
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "owner" => Ok(Role::Owner),
            "writer" => Ok(Role::Writer),
            "reader" => Ok(Role::Reader),
            _ => Err(Error::Decode { what: "role", reason: "not owner, writer or reader" }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Genesis { space: SpaceId, creator: Member },
    /// Adds a device as `role`. Logs from before roles hold only owners' adds, which keep
    /// their encoding (kind 1); writers and readers are kind 3, with the role.
    Add { member: Member, wrapped_key: Vec<u8>, role: Role },
    /// Entries of `replica` with seq ≤ `last_seq` stay valid; `None` keeps none.
    Remove { replica: ReplicaId, last_seq: Option<u64> },
    /// A one-time invite: whoever holds its secret may add one device as `role`, with a
    /// `Join` the server takes until `expires_ms` (Unix ms). `wrapped_key` is the space
    /// key wrapped to `agreement`.
    Invite { key: [u8; 32], agreement: [u8; 32], wrapped_key: Vec<u8>, role: Role, expires_ms: u64 },
    /// The device `member` joins through the invite whose public key is `invite`; signed
    /// by that key, with `by` the new member. `wrapped_key` is the space key it wrapped
    /// to itself.
    Join { invite: [u8; 32], member: Member, wrapped_key: Vec<u8> },
    /// A new space key, named by its id: `previous` is the key before it sealed under it,
    /// and `keys` wraps it to each holder's agreement key (every active member, and the
    /// pending invites kept; the others are cancelled).
    Rekey { key_id: [u8; KEY_ID_LEN], previous: Vec<u8>, keys: Vec<([u8; 32], Vec<u8>)> },
    /// Cancels an invite nobody has used.
    Revoke { invite: [u8; 32] },
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Owner => 0,
        Role::Writer => 1,
        Role::Reader => 2,
    }
}

fn read_role(r: &mut Reader<'_>) -> Result<Role> {
    match r.u8()? {
        0 => Ok(Role::Owner),
        1 => Ok(Role::Writer),
        2 => Ok(Role::Reader),
        _ => Err(r.err("bad role")),
    }
}

/// The secret of an invite: 32 random bytes, from which its Ed25519 signing key and its
/// X25519 secret are derived. It goes into the invite link, never to the server.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteSecret(pub [u8; 32]);

impl std::fmt::Debug for InviteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InviteSecret(..)")
    }
}

impl InviteSecret {
    pub fn signing(&self) -> SigningKey {
        SigningKey::from_bytes(&self.0)
    }

    /// The public key that names the invite in the log.
    pub fn public(&self) -> [u8; 32] {
        self.signing().verifying_key().to_bytes()
    }

    pub fn agreement_secret(&self) -> [u8; 32] {
        Sha256::new().chain_update(b"stead-invite-agreement-v1\0").chain_update(self.0).finalize().into()
    }
}

/// What an invite grants, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InviteTerms {
    pub role: Role,
    /// When the server stops taking a join through it (Unix ms).
    pub expires_ms: u64,
}

/// What the log says of an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteState {
    Pending,
    /// Used by the member it names.
    Used(ReplicaId),
    /// Cancelled by an owner, or by a rotation that did not keep it.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Invitation {
    key: VerifyingKey,
    agreement: [u8; 32],
    role: Role,
    expires_ms: u64,
    state: InviteState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEvent {
    pub prev: Hash,
    pub by: ReplicaId,
    pub event: MemberEvent,
    pub sig: [u8; 64],
}

fn write_member(w: &mut Writer, m: &Member) {
    w.fixed(m.replica.as_bytes());
    w.fixed(&m.signing);
    w.fixed(&m.agreement);
}

fn read_member(r: &mut Reader<'_>) -> Result<Member> {
    Ok(Member { replica: ReplicaId(r.array()?), signing: r.array()?, agreement: r.array()? })
}

impl SignedEvent {
    fn body(prev: &Hash, by: ReplicaId, event: &MemberEvent) -> Writer {
        let mut w = Writer::new();
        w.u8(MEMBERSHIP_VERSION);
        w.fixed(prev);
        w.fixed(by.as_bytes());
        match event {
            MemberEvent::Genesis { space, creator } => {
                w.u8(0);
                w.fixed(space.as_bytes());
                write_member(&mut w, creator);
            }
            MemberEvent::Add { member, wrapped_key, role: Role::Owner } => {
                w.u8(1);
                write_member(&mut w, member);
                w.bytes(wrapped_key);
            }
            MemberEvent::Add { member, wrapped_key, role } => {
                w.u8(3);
                write_member(&mut w, member);
                w.bytes(wrapped_key);
                w.u8(role_byte(*role));
            }
            MemberEvent::Invite { key, agreement, wrapped_key, role, expires_ms } => {
                w.u8(4);
                w.fixed(key);
                w.fixed(agreement);
                w.bytes(wrapped_key);
                w.u8(role_byte(*role));
                w.u64(*expires_ms);
            }
            MemberEvent::Join { invite, member, wrapped_key } => {
                w.u8(5);
                w.fixed(invite);
                write_member(&mut w, member);
                w.bytes(wrapped_key);
            }
            MemberEvent::Rekey { key_id, previous, keys } => {
                w.u8(6);
                w.fixed(key_id);
                w.bytes(previous);
                w.varint(keys.len() as u64);
                for (agreement, wrapped) in keys {
                    w.fixed(agreement);
                    w.bytes(wrapped);
                }
            }
            MemberEvent::Revoke { invite } => {
                w.u8(7);
                w.fixed(invite);
            }
            MemberEvent::Remove { replica, last_seq } => {
                w.u8(2);
                w.fixed(replica.as_bytes());
                match last_seq {
                    None => w.u8(0),
                    Some(s) => {
                        w.u8(1);
                        w.u64(*s);
                    }
                }
            }
        }
        w
    }

    pub fn sign(prev: Hash, by: ReplicaId, event: MemberEvent, key: &SigningKey) -> SignedEvent {
        let body = SignedEvent::body(&prev, by, &event).finish();
        let mut msg = SIGN_DOMAIN.to_vec();
        msg.extend_from_slice(&body);
        SignedEvent { prev, by, event, sig: key.sign(&msg).to_bytes() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = SignedEvent::body(&self.prev, self.by, &self.event);
        w.fixed(&self.sig);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<SignedEvent> {
        let mut r = Reader::new(bytes, "membership event");
        let ev = SignedEvent::read(&mut r)?;
        r.finish()?;
        Ok(ev)
    }

    pub fn read(r: &mut Reader<'_>) -> Result<SignedEvent> {
        let version = r.u8()?;
        if version != MEMBERSHIP_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "membership event",
                found: version as u32,
                supported: MEMBERSHIP_VERSION as u32,
            });
        }
        let prev = r.array()?;
        let by = ReplicaId(r.array()?);
        let event = match r.u8()? {
            0 => MemberEvent::Genesis { space: SpaceId(r.array()?), creator: read_member(r)? },
            1 => MemberEvent::Add { member: read_member(r)?, wrapped_key: r.bytes()?.to_vec(), role: Role::Owner },
            3 => {
                let (member, wrapped_key) = (read_member(r)?, r.bytes()?.to_vec());
                let role = match read_role(r)? {
                    // An owner's add has one encoding only (kind 1), so an event has one hash.
                    Role::Owner => return Err(r.err("bad role")),
                    role => role,
                };
                MemberEvent::Add { member, wrapped_key, role }
            }
            4 => MemberEvent::Invite {
                key: r.array()?,
                agreement: r.array()?,
                wrapped_key: r.bytes()?.to_vec(),
                role: read_role(r)?,
                expires_ms: r.u64()?,
            },
            5 => MemberEvent::Join { invite: r.array()?, member: read_member(r)?, wrapped_key: r.bytes()?.to_vec() },
            6 => {
                let key_id = r.array()?;
                let previous = r.bytes()?.to_vec();
                // Each holder takes at least 33 bytes, which bounds the count by the input.
                let n = r.len(33)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push((r.array()?, r.bytes()?.to_vec()));
                }
                MemberEvent::Rekey { key_id, previous, keys }
            }
            7 => MemberEvent::Revoke { invite: r.array()? },
            2 => MemberEvent::Remove {
                replica: ReplicaId(r.array()?),
                last_seq: match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    _ => return Err(r.err("bad option tag")),
                },
            },
            _ => return Err(r.err("unknown event kind")),
        };
        Ok(SignedEvent { prev, by, event, sig: r.array()? })
    }

    pub fn hash(&self) -> Hash {
        Sha256::digest(self.encode()).into()
    }

    fn verify_sig(&self, key: &VerifyingKey) -> bool {
        let mut msg = SIGN_DOMAIN.to_vec();
        msg.extend_from_slice(&SignedEvent::body(&self.prev, self.by, &self.event).finish());
        key.verify_strict(&msg, &Signature::from_bytes(&self.sig)).is_ok()
    }
}

/// What [`Membership::rebase_onto`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebased {
    /// `onto` with this log's own events on top.
    pub members: Membership,
    /// How many events were signed again on top of `onto`.
    pub resigned: usize,
    /// Events `onto` lacks that could not be carried over (signed by another device, or
    /// refused on top of `onto`).
    pub dropped: Vec<SignedEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MemberState {
    member: Member,
    key: VerifyingKey,
    role: Role,
    /// `None` while active; `Some(last valid seq)` once removed.
    removed: Option<Option<u64>>,
}

/// The verified state of a membership log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    space: SpaceId,
    members: BTreeMap<ReplicaId, MemberState>,
    /// By the invite's public key.
    invites: BTreeMap<[u8; 32], Invitation>,
    events: Vec<SignedEvent>,
    head: Hash,
}

/// An invite as the log holds it, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteInfo {
    pub key: [u8; 32],
    pub role: Role,
    pub expires_ms: u64,
    pub state: InviteState,
}

impl Membership {
    /// Creates a space's membership with its creator as the only member.
    pub fn genesis(space: SpaceId, creator: Member, key: &SigningKey) -> Result<Membership> {
        let by = creator.replica;
        let ev = SignedEvent::sign([0; 32], by, MemberEvent::Genesis { space, creator }, key);
        Membership::verify(std::slice::from_ref(&ev))
    }

    /// Verifies a whole membership log from its genesis.
    pub fn verify(events: &[SignedEvent]) -> Result<Membership> {
        let first = events.first().ok_or(Error::Membership { index: 0, reason: "the log is empty" })?;
        let MemberEvent::Genesis { space, creator } = &first.event else {
            return Err(Error::Membership { index: 0, reason: "the first event is not a genesis" });
        };
        let key = creator.check_keys().map_err(|reason| Error::Membership { index: 0, reason })?;
        if first.prev != [0; 32] || first.by != creator.replica || !first.verify_sig(&key) {
            return Err(Error::Membership { index: 0, reason: "genesis is not signed by its creator" });
        }
        let mut m = Membership {
            space: *space,
            members: BTreeMap::new(),
            invites: BTreeMap::new(),
            events: vec![first.clone()],
            head: first.hash(),
        };
        m.members
            .insert(creator.replica, MemberState { member: creator.clone(), key, role: Role::Owner, removed: None });
        for ev in &events[1..] {
            m.apply(ev.clone())?;
        }
        Ok(m)
    }

    /// Appends one event signed by an active member.
    pub fn apply(&mut self, ev: SignedEvent) -> Result<()> {
        let index = self.events.len();
        let fail = |reason| Error::Membership { index, reason };
        if ev.prev != self.head {
            return Err(fail("does not chain to the previous event"));
        }
        match &ev.event {
            MemberEvent::Join { invite, member, wrapped_key } => {
                self.apply_join(&ev, invite, member, wrapped_key).map_err(fail)?
            }
            _ => self.apply_owners(&ev).map_err(fail)?,
        }
        self.head = ev.hash();
        self.events.push(ev);
        Ok(())
    }

    /// An event only an active owner may sign.
    fn apply_owners(&mut self, ev: &SignedEvent) -> Result<(), &'static str> {
        let signer = self.members.get(&ev.by).filter(|s| s.removed.is_none());
        let Some(signer) = signer else {
            return Err("signed by a replica that is not an active member");
        };
        if !ev.verify_sig(&signer.key) {
            return Err("bad signature");
        }
        if signer.role != Role::Owner {
            return Err("signed by a member that is not an owner");
        }
        match &ev.event {
            MemberEvent::Genesis { .. } => return Err("a second genesis"),
            MemberEvent::Join { .. } => unreachable!("a join is signed by its invite"),
            MemberEvent::Add { member, role, .. } => {
                if self.members.contains_key(&member.replica) {
                    return Err("the replica was already a member");
                }
                let key = member.check_keys()?;
                self.members
                    .insert(member.replica, MemberState { member: member.clone(), key, role: *role, removed: None });
            }
            MemberEvent::Remove { replica, last_seq } => {
                let owners = self.members.values().filter(|s| s.removed.is_none() && s.role == Role::Owner).count();
                let target = self
                    .members
                    .get_mut(replica)
                    .filter(|s| s.removed.is_none())
                    .ok_or("removes a replica that is not an active member")?;
                if target.role == Role::Owner && owners == 1 {
                    return Err("removes the space's last owner");
                }
                target.removed = Some(*last_seq);
            }
            MemberEvent::Invite { key, agreement, wrapped_key, role, expires_ms } => {
                let verifying = sig::public_key(key)?;
                if crypto::is_weak_agreement_key(agreement) {
                    return Err("weak agreement key");
                }
                if wrapped_key.len() != WRAPPED_KEY_LEN {
                    return Err("a wrapped key of the wrong size");
                }
                if self.invites.contains_key(key) {
                    return Err("the invite's key was used before");
                }
                let invitation =
                    Invitation { key: verifying, agreement: *agreement, role: *role, expires_ms: *expires_ms, state: InviteState::Pending };
                self.invites.insert(*key, invitation);
            }
            MemberEvent::Rekey { key_id, previous, keys } => {
                if previous.len() != SEALED_KEY_LEN {
                    return Err("a sealed previous key of the wrong size");
                }
                if self.key_ids().any(|id| id == key_id) {
                    return Err("the key id was used before");
                }
                let mut holders = std::collections::BTreeSet::new();
                for (agreement, wrapped) in keys {
                    if wrapped.len() != WRAPPED_KEY_LEN {
                        return Err("a wrapped key of the wrong size");
                    }
                    if !holders.insert(*agreement) {
                        return Err("wraps the key twice to one holder");
                    }
                }
                let active: std::collections::BTreeSet<[u8; 32]> =
                    self.members.values().filter(|s| s.removed.is_none()).map(|s| s.member.agreement).collect();
                if !active.is_subset(&holders) {
                    return Err("leaves an active member without the new key");
                }
                let pending = |a: &[u8; 32]| {
                    self.invites.values().any(|i| i.state == InviteState::Pending && i.agreement == *a)
                };
                if holders.iter().any(|a| !active.contains(a) && !pending(a)) {
                    return Err("wraps the key to a device that is neither a member nor invited");
                }
                for invite in self.invites.values_mut() {
                    if invite.state == InviteState::Pending && !holders.contains(&invite.agreement) {
                        invite.state = InviteState::Revoked;
                    }
                }
            }
            MemberEvent::Revoke { invite } => {
                let invite = self
                    .invites
                    .get_mut(invite)
                    .filter(|i| i.state == InviteState::Pending)
                    .ok_or("cancels an invite that is not pending")?;
                invite.state = InviteState::Revoked;
            }
        }
        Ok(())
    }

    /// A join, signed by its invite's key in the name of the device it adds.
    fn apply_join(&mut self, ev: &SignedEvent, invite: &[u8; 32], member: &Member, wrapped_key: &[u8]) -> Result<(), &'static str> {
        let invitation = self.invites.get(invite).ok_or("joins through an invite the log does not hold")?;
        match invitation.state {
            InviteState::Pending => {}
            InviteState::Used(_) => return Err("the invite was used already"),
            InviteState::Revoked => return Err("the invite was cancelled"),
        }
        if ev.by != member.replica {
            return Err("a join must be in the name of the device it adds");
        }
        if !ev.verify_sig(&invitation.key) {
            return Err("bad signature");
        }
        if self.members.contains_key(&member.replica) {
            return Err("the replica was already a member");
        }
        let key = member.check_keys()?;
        if wrapped_key.len() != WRAPPED_KEY_LEN {
            return Err("a wrapped key of the wrong size");
        }
        let role = invitation.role;
        self.invites.get_mut(invite).expect("looked up above").state = InviteState::Used(member.replica);
        self.members.insert(member.replica, MemberState { member: member.clone(), key, role, removed: None });
        Ok(())
    }

    /// Whether a rotation of this log started the key named `id`.
    pub fn names_key(&self, id: &[u8; KEY_ID_LEN]) -> bool {
        self.key_ids().any(|k| k == id)
    }

    /// The ids of the keys rotations started, oldest first.
    fn key_ids(&self) -> impl Iterator<Item = &[u8; KEY_ID_LEN]> {
        self.events.iter().filter_map(|ev| match &ev.event {
            MemberEvent::Rekey { key_id, .. } => Some(key_id),
            _ => None,
        })
    }

    /// Every space key a device with the X25519 `secret` can reach: the newest key
    /// wrapped to it (by its add, join, invite or a rotation), and from there, through
    /// each rotation's sealed previous key, every older one. `known` adds keys the
    /// device kept itself (the creator's first key is wrapped to nobody). The current key
    /// is the newest rotation's, or with no rotation the only key there is.
    pub fn keyring(&self, secret: &[u8; 32], known: &Keyring) -> Keyring {
        let mine = crypto::agreement_public(secret);
        let mut ring = known.clone();
        let newest_wrap = self.events.iter().rev().find_map(|ev| {
            let wrapped = match &ev.event {
                MemberEvent::Add { member, wrapped_key, .. } | MemberEvent::Join { member, wrapped_key, .. }
                    if member.agreement == mine =>
                {
                    wrapped_key
                }
                MemberEvent::Invite { agreement, wrapped_key, .. } if *agreement == mine => wrapped_key,
                MemberEvent::Rekey { keys, .. } => keys.iter().find(|(a, _)| *a == mine).map(|(_, w)| w)?,
                _ => return None,
            };
            crypto::unwrap_space_key(wrapped, self.space, secret).ok()
        });
        let first = newest_wrap.map(|k| ring.insert(k));
        let rotations: Vec<(&[u8; KEY_ID_LEN], &Vec<u8>)> = self
            .events
            .iter()
            .filter_map(|ev| match &ev.event {
                MemberEvent::Rekey { key_id, previous, .. } => Some((key_id, previous)),
                _ => None,
            })
            .collect();
        for (id, previous) in rotations.iter().rev() {
            let previous = ring.get(id).and_then(|next| crypto::open_previous_key(next, previous, self.space).ok());
            if let Some(p) = previous {
                ring.insert(p);
            }
        }
        match rotations.last() {
            Some((id, _)) => match ring.get(id).cloned() {
                Some(k) => ring.set_current(k),
                None => ring.clear_current(),
            },
            None => match first.or((!ring.is_empty()).then_some(0)) {
                Some(i) => {
                    let k = ring.key(i).clone();
                    ring.set_current(k)
                }
                None => ring.clear_current(),
            },
        }
        ring
    }

    /// Invites one device with a fresh invite secret: wraps the current key to the
    /// invite's own X25519 key.
    pub fn invite(
        &mut self,
        by: ReplicaId,
        key: &SigningKey,
        ring: &Keyring,
        secret: &InviteSecret,
        terms: InviteTerms,
        rng: &mut dyn Random,
    ) -> Result<SignedEvent> {
        let InviteTerms { role, expires_ms } = terms;
        let current = ring.current().ok_or(Error::NoCurrentKey)?;
        let agreement = crypto::agreement_public(&secret.agreement_secret());
        let wrapped = crypto::wrap_space_key(current, self.space, &agreement, fresh(rng), fresh(rng))?;
        let event = MemberEvent::Invite { key: secret.public(), agreement, wrapped_key: wrapped, role, expires_ms };
        let ev = SignedEvent::sign(self.head, by, event, key);
        self.apply(ev.clone())?;
        Ok(ev)
    }

    /// Joins through an invite as the device `me` (a fresh identity the joiner made, with
    /// X25519 secret `my_agreement`): takes the space keys the invite can reach, wraps the
    /// current one to `me`, and appends the join. Returns the joiner's keyring.
    pub fn join(&mut self, secret: &InviteSecret, me: Member, my_agreement: &[u8; 32], rng: &mut dyn Random) -> Result<Keyring> {
        let index = self.events.len();
        let info = self.invites.get(&secret.public()).ok_or(Error::Membership { index, reason: "joins through an invite the log does not hold" })?;
        if info.state != InviteState::Pending {
            let reason = if info.state == InviteState::Revoked { "the invite was cancelled" } else { "the invite was used already" };
            return Err(Error::Membership { index, reason });
        }
        let ring = self.keyring(&secret.agreement_secret(), &Keyring::default());
        let current = ring.current().ok_or(Error::NoCurrentKey)?.clone();
        debug_assert_eq!(crypto::agreement_public(my_agreement), me.agreement);
        let wrapped = crypto::wrap_space_key(&current, self.space, &me.agreement, fresh(rng), fresh(rng))?;
        let by = me.replica;
        let ev = SignedEvent::sign(self.head, by, MemberEvent::Join { invite: secret.public(), member: me, wrapped_key: wrapped }, &secret.signing());
        self.apply(ev)?;
        let mut mine = ring;
        mine.set_current(current);
        Ok(mine)
    }

    /// Starts a new space key: seals the current one under it and wraps it to every
    /// active member and every pending invite that has not expired by `now_ms` (the
    /// others are cancelled). `ring` takes the new key as its current one.
    pub fn rekey(&mut self, by: ReplicaId, key: &SigningKey, ring: &mut Keyring, new_key: SpaceKey, now_ms: u64, rng: &mut dyn Random) -> Result<SignedEvent> {
        let previous = ring.current().ok_or(Error::NoCurrentKey)?;
        let sealed = crypto::seal_previous_key(&new_key, previous, self.space, fresh(rng));
        let mut holders: Vec<[u8; 32]> =
            self.members.values().filter(|s| s.removed.is_none()).map(|s| s.member.agreement).collect();
        holders.extend(
            self.invites.values().filter(|i| i.state == InviteState::Pending && i.expires_ms > now_ms).map(|i| i.agreement),
        );
        holders.sort();
        holders.dedup();
        let mut keys = Vec::with_capacity(holders.len());
        for agreement in holders {
            keys.push((agreement, crypto::wrap_space_key(&new_key, self.space, &agreement, fresh(rng), fresh(rng))?));
        }
        let event = MemberEvent::Rekey { key_id: new_key.id(), previous: sealed, keys };
        let ev = SignedEvent::sign(self.head, by, event, key);
        self.apply(ev.clone())?;
        ring.set_current(new_key);
        Ok(ev)
    }

    /// Cancels an invite nobody has used.
    pub fn revoke_invite(&mut self, by: ReplicaId, key: &SigningKey, invite: [u8; 32]) -> Result<SignedEvent> {
        let ev = SignedEvent::sign(self.head, by, MemberEvent::Revoke { invite }, key);
        self.apply(ev.clone())?;
        Ok(ev)
    }

    /// The log's invites, in the order of their keys.
    pub fn invites(&self) -> impl Iterator<Item = InviteInfo> + '_ {
        self.invites.iter().map(|(k, i)| InviteInfo { key: *k, role: i.role, expires_ms: i.expires_ms, state: i.state })
    }

    /// What a server checks of the events from `from` on, which a log cannot know by
    /// itself: a join arrives before its invite expires, and no invite is made to last
    /// longer than `max_invite_ms`. `Err` names the first event that fails.
    pub fn check_times(&self, from: usize, now_ms: u64, max_invite_ms: u64) -> Result<()> {
        for (index, ev) in self.events.iter().enumerate().skip(from) {
            let reason = match &ev.event {
                MemberEvent::Invite { expires_ms, .. } if *expires_ms > now_ms.saturating_add(max_invite_ms) => {
                    "the invite is set to last longer than the server allows"
                }
                MemberEvent::Join { invite, .. } if self.invites.get(invite).is_some_and(|i| i.expires_ms <= now_ms) => {
                    "the invite has expired"
                }
                _ => continue,
            };
            return Err(Error::Membership { index, reason });
        }
        Ok(())
    }

    pub fn add(&mut self, by: ReplicaId, key: &SigningKey, member: Member, wrapped_key: Vec<u8>) -> Result<SignedEvent> {
        self.add_as(by, key, member, wrapped_key, Role::Owner)
    }

    /// Signs and applies an add of `member` as `role`.
    pub fn add_as(&mut self, by: ReplicaId, key: &SigningKey, member: Member, wrapped_key: Vec<u8>, role: Role) -> Result<SignedEvent> {
        let ev = SignedEvent::sign(self.head, by, MemberEvent::Add { member, wrapped_key, role }, key);
        self.apply(ev.clone())?;
        Ok(ev)
    }

    pub fn remove(&mut self, by: ReplicaId, key: &SigningKey, replica: ReplicaId, last_seq: Option<u64>) -> Result<SignedEvent> {
        let ev = SignedEvent::sign(self.head, by, MemberEvent::Remove { replica, last_seq }, key);
        self.apply(ev.clone())?;
        Ok(ev)
    }

    pub fn space(&self) -> SpaceId {
        self.space
    }

    pub fn events(&self) -> &[SignedEvent] {
        &self.events
    }

    /// The key that must have signed entry `seq` of `replica`, if that entry may exist.
    pub fn key_for(&self, replica: ReplicaId, seq: u64) -> Option<VerifyingKey> {
        let s = self.members.get(&replica)?;
        match s.removed {
            None => Some(s.key),
            Some(Some(last)) if seq <= last => Some(s.key),
            Some(_) => None,
        }
    }

    /// The role of `replica`, while it is an active member.
    pub fn role(&self, replica: ReplicaId) -> Option<Role> {
        self.members.get(&replica).filter(|s| s.removed.is_none()).map(|s| s.role)
    }

    /// Whether `replica`'s entries may be taken: it was added as a writer or owner.
    pub fn may_write(&self, replica: ReplicaId) -> bool {
        self.members.get(&replica).is_some_and(|s| s.role.may_write())
    }

    pub fn is_active(&self, replica: ReplicaId) -> bool {
        self.members.get(&replica).is_some_and(|s| s.removed.is_none())
    }

    /// Every device ever added, with its role and whether it is still an active member.
    pub fn members(&self) -> impl Iterator<Item = (&Member, Role, bool)> {
        self.members.values().map(|s| (&s.member, s.role, s.removed.is_none()))
    }

    pub fn member(&self, replica: ReplicaId) -> Option<&Member> {
        self.members.get(&replica).map(|s| &s.member)
    }

    /// The wrapped space key carried by the event that added `replica`.
    pub fn wrapped_key_for(&self, replica: ReplicaId) -> Option<&[u8]> {
        self.events.iter().find_map(|ev| match &ev.event {
            MemberEvent::Add { member, wrapped_key, .. } | MemberEvent::Join { member, wrapped_key, .. }
                if member.replica == replica =>
            {
                Some(wrapped_key.as_slice())
            }
            _ => None,
        })
    }

    /// Puts the events of this log that `onto` (another copy of the space's log, e.g. the
    /// server's) lacks on top of it, so two copies that each grew on their own (two
    /// devices inviting while offline) become one log again.
    ///
    /// Events past the common prefix are taken in order. One already in `onto` (the same
    /// signer and event), or whose effect `onto` already has (the same device added, a
    /// removed device removed), is left out. One signed by `me` is signed again with
    /// `key` on top of the rebased head. One signed by anyone else cannot be signed again
    /// and is dropped, as is one `onto` refuses (e.g. `me` was removed there); the
    /// caller reports the dropped ones. A rotation is dropped too when `onto` rotated
    /// since the common prefix: its sealed previous key would skip `onto`'s key
    /// ([`Membership::rebase_keeping_keys`] issues it again).
    pub fn rebase_onto(&self, onto: &Membership, me: ReplicaId, key: &SigningKey) -> Result<Rebased> {
        if self.space != onto.space {
            return Err(Error::WrongSpace { expected: onto.space, found: self.space });
        }
        if self.events[0] != onto.events[0] {
            return Err(Error::Membership { index: 0, reason: "the two logs start with different genesis events" });
        }
        let common = self.events.iter().zip(&onto.events).take_while(|(a, b)| a == b).count();
        let theirs = &onto.events[common..];
        let mut out = Rebased { members: onto.clone(), resigned: 0, dropped: Vec::new() };
        let they_rotated = theirs.iter().any(|t| matches!(t.event, MemberEvent::Rekey { .. }));
        for ev in &self.events[common..] {
            if theirs.iter().any(|t| t.by == ev.by && t.event == ev.event) {
                continue;
            }
            let m = &out.members;
            let in_effect = match &ev.event {
                MemberEvent::Genesis { .. } => false,
                MemberEvent::Add { member, .. } => m.member(member.replica) == Some(member),
                MemberEvent::Remove { replica, .. } => m.members.get(replica).is_some_and(|s| s.removed.is_some()),
                MemberEvent::Invite { key, .. } => m.invites.contains_key(key),
                MemberEvent::Join { member, .. } => m.member(member.replica) == Some(member),
                MemberEvent::Rekey { key_id, .. } => m.key_ids().any(|id| id == key_id),
                MemberEvent::Revoke { invite } => m.invites.get(invite).is_some_and(|i| i.state != InviteState::Pending),
            };
            if in_effect {
                continue;
            }
            if ev.by != me || (they_rotated && matches!(ev.event, MemberEvent::Rekey { .. })) {
                out.dropped.push(ev.clone());
                continue;
            }
            let again = SignedEvent::sign(out.members.head, me, ev.event.clone(), key);
            match out.members.apply(again) {
                Ok(()) => out.resigned += 1,
                Err(_) => out.dropped.push(ev.clone()),
            }
        }
        Ok(out)
    }

    /// The whole log, encoded as a sequence of length-prefixed events.
    /// [`Membership::rebase_onto`], then every rotation of `me`'s that was dropped is
    /// issued again on the rebased log with the same key: entries may already be sealed
    /// under it, so it must reach the holders of the rebased log, chained to its current
    /// key. `agreement` is `me`'s X25519 secret and `ring` the keys it held; returns the
    /// ring on the rebased log.
    #[allow(clippy::too_many_arguments)]
    pub fn rebase_keeping_keys(
        &self,
        onto: &Membership,
        me: ReplicaId,
        key: &SigningKey,
        agreement: &[u8; 32],
        ring: &Keyring,
        now_ms: u64,
        rng: &mut dyn Random,
    ) -> Result<(Rebased, Keyring)> {
        let mut out = self.rebase_onto(onto, me, key)?;
        let mut ring = out.members.keyring(agreement, ring);
        let dropped = std::mem::take(&mut out.dropped);
        for ev in dropped {
            let again = match &ev.event {
                MemberEvent::Rekey { key_id, .. } if ev.by == me && !out.members.names_key(key_id) => ring.get(key_id).cloned(),
                _ => None,
            };
            match again {
                Some(k) if ring.current().is_some() => {
                    out.members.rekey(me, key, &mut ring, k, now_ms, rng)?;
                    out.resigned += 1;
                }
                _ => out.dropped.push(ev),
            }
        }
        Ok((out, ring))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.varint(self.events.len() as u64);
        for ev in &self.events {
            w.bytes(&ev.encode());
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership> {
        Membership::verify(&Membership::decode_events(bytes)?)
    }

    /// The events of an encoded log, decoded but not verified: for comparing a log with
    /// one already verified, and verifying only what it adds (see [`Membership::apply`]).
    pub fn decode_events(bytes: &[u8]) -> Result<Vec<SignedEvent>> {
        let mut r = Reader::new(bytes, "membership log");
        let n = r.len(1)?;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(SignedEvent::decode(r.bytes()?)?);
        }
        r.finish()?;
        Ok(events)
    }
}

fn fresh<const N: usize>(rng: &mut dyn Random) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill(&mut out);
    out
}

#[cfg(test)]
impl Membership {
    /// Adds a member with no check at all: what a log verified by a looser rule could hold.
    fn add_unchecked(&mut self, member: Member) {
        let key = VerifyingKey::from_bytes(&member.signing).expect("a point");
        self.members.insert(member.replica, MemberState { member, key, role: Role::Owner, removed: None });
    }
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::IsIdentity;
    use ed25519_dalek::Verifier;
    use sha2::Sha512;

    use super::*;
    use crate::hlc::Hlc;
    use crate::log::{Entry, EntryHeader, Limits, check_entries, check_entry};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The identity point, a point of order 8, and the identity written as y = p + 1.
    fn weak_keys() -> [[u8; 32]; 3] {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut above_p = [0xff; 32];
        above_p[0] = 0xee;
        above_p[31] = 0x7f;
        [identity, EIGHT_TORSION[1].compress().to_bytes(), above_p]
    }

    /// A signature of `msg` by the small-order key `a` that ed25519-dalek's `verify`
    /// accepts, made with no secret: s = 0 and R = −[k]A, for the torsion point R (if any)
    /// for which that holds. Any R does for the identity; one in eight for a point of order 8.
    fn forge(a: &[u8; 32], msg: &[u8]) -> Option<[u8; 64]> {
        let point = CompressedEdwardsY(*a).decompress()?;
        let sig = EIGHT_TORSION.iter().find_map(|r| {
            let r_bytes = r.compress().to_bytes();
            let k = Scalar::from_hash(Sha512::new().chain_update(r_bytes).chain_update(a).chain_update(msg));
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&r_bytes);
            (r + point * k).is_identity().then_some(sig)
        })?;
        let key = VerifyingKey::from_bytes(a).expect("a point");
        assert!(key.verify(msg, &Signature::from_bytes(&sig)).is_ok(), "the looser rule takes the forgery");
        Some(sig)
    }

    fn forged_event(prev: Hash, by: ReplicaId, event: MemberEvent, key: &[u8; 32]) -> Option<SignedEvent> {
        let mut msg = SIGN_DOMAIN.to_vec();
        msg.extend_from_slice(&SignedEvent::body(&prev, by, &event).finish());
        Some(SignedEvent { prev, by, sig: forge(key, &msg)?, event })
    }

    fn member(n: u8) -> (Member, SigningKey) {
        let key = SigningKey::from_bytes(&[n; 32]);
        let m = Member {
            replica: ReplicaId([n; 16]),
            signing: key.verifying_key().to_bytes(),
            agreement: crate::crypto::agreement_public(&[n; 32]),
        };
        (m, key)
    }

    #[test]
    fn members_add_and_remove_each_other() {
        let (a, ka) = member(1);
        let (b, kb) = member(2);
        let (c, kc) = member(3);
        let mut m = Membership::genesis(SpaceId([9; 16]), a.clone(), &ka).unwrap();
        assert!(m.key_for(b.replica, 0).is_none());
        m.add(a.replica, &ka, b.clone(), vec![]).unwrap();
        m.add(b.replica, &kb, c.clone(), vec![1, 2]).unwrap();
        m.remove(b.replica, &kb, c.replica, Some(4)).unwrap();
        assert!(m.key_for(c.replica, 4).is_some());
        assert!(m.key_for(c.replica, 5).is_none());
        // A removed member cannot sign membership events any more.
        let err = m.remove(c.replica, &kc, a.replica, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid membership event 4: signed by a replica that is not an active member"
        );
        let again = Membership::decode(&m.encode()).unwrap();
        assert_eq!(again, m);
        assert_eq!(again.wrapped_key_for(c.replica), Some(&[1u8, 2][..]));
    }

    #[test]
    fn tampered_membership_logs_are_refused() {
        let (a, ka) = member(1);
        let (b, _) = member(2);
        let mut m = Membership::genesis(SpaceId([9; 16]), a.clone(), &ka).unwrap();
        m.add(a.replica, &ka, b, vec![5; 8]).unwrap();
        let bytes = m.encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut t = bytes.clone();
                t[i] ^= bit;
                assert!(Membership::decode(&t).is_err(), "flip of byte {i} bit {bit:#x} went unseen");
            }
        }
    }

    #[test]
    fn logs_grown_apart_are_rebased_with_own_events_signed_again() {
        let (a, ka) = member(1);
        let (b, kb) = member(2);
        let (c, kc) = member(3);
        let (d, _) = member(4);
        let (e, _) = member(5);
        let mut shared = Membership::genesis(SpaceId([9; 16]), a.clone(), &ka).unwrap();
        shared.add(a.replica, &ka, b.clone(), vec![1]).unwrap();
        shared.add(a.replica, &ka, c.clone(), vec![1]).unwrap();
        // Offline, A invites D and B invites E and removes C; the server took A's first.
        let mut server = shared.clone();
        server.add(a.replica, &ka, d.clone(), vec![4]).unwrap();
        let mut ours = shared.clone();
        ours.add(b.replica, &kb, e.clone(), vec![5]).unwrap();
        ours.remove(b.replica, &kb, c.replica, Some(7)).unwrap();
        // An event signed by C that only this copy holds cannot be signed again.
        let mut with_c = shared.clone();
        with_c.add(c.replica, &kc, member(6).0, vec![6]).unwrap();
        let mut ours_and_c = with_c.clone();
        ours_and_c.add(b.replica, &kb, e.clone(), vec![5]).unwrap();

        let r = ours.rebase_onto(&server, b.replica, &kb).unwrap();
        assert_eq!(r.resigned, 2);
        assert!(r.dropped.is_empty());
        assert_eq!(r.members.events()[..4], *server.events(), "the server's log is a prefix");
        assert_eq!(Membership::decode(&r.members.encode()).unwrap(), r.members);
        assert_eq!(r.members.wrapped_key_for(e.replica), Some(&[5u8][..]));
        assert!(r.members.is_active(d.replica) && !r.members.is_active(c.replica));
        assert!(r.members.key_for(c.replica, 7).is_some());

        // Rebasing again, or a copy the server already extends, changes nothing.
        let again = ours.rebase_onto(&r.members, b.replica, &kb).unwrap();
        assert_eq!((again.members.events().len(), again.resigned), (r.members.events().len(), 0));
        let prefix = shared.rebase_onto(&server, b.replica, &kb).unwrap();
        assert_eq!((prefix.members, prefix.resigned), (server.clone(), 0));

        let r = ours_and_c.rebase_onto(&server, b.replica, &kb).unwrap();
        assert_eq!(r.dropped, with_c.events()[3..].to_vec());
        assert_eq!(r.resigned, 1);

        // A device the server removed cannot carry its events over.
        let mut removed_b = shared.clone();
        removed_b.remove(a.replica, &ka, b.replica, None).unwrap();
        let r = ours.rebase_onto(&removed_b, b.replica, &kb).unwrap();
        assert_eq!((r.resigned, r.dropped.len()), (0, 2));

        let other = Membership::genesis(SpaceId([9; 16]), b, &kb).unwrap();
        assert!(ours.rebase_onto(&other, a.replica, &ka).is_err());
    }

    #[test]
    fn an_outsider_cannot_add_itself() {
        let (a, ka) = member(1);
        let (b, kb) = member(2);
        let mut m = Membership::genesis(SpaceId([9; 16]), a, &ka).unwrap();
        let err = m.add(b.replica, &kb, b.clone(), vec![]).unwrap_err();
        assert!(matches!(err, Error::Membership { index: 1, .. }));
    }

    #[test]
    fn weak_keys_never_enter_the_log() {
        let (a, ka) = member(1);
        let weak_reason = |r: Result<Membership>| match r {
            Err(Error::Membership { index, reason }) => (index, reason),
            other => panic!("a weak key was let in: {other:?}"),
        };
        for weak in weak_keys() {
            // A genesis by a weak creator, signed with no secret.
            let creator = Member { signing: weak, ..a.clone() };
            let genesis = (0..=255u8)
                .find_map(|n| {
                    let event = MemberEvent::Genesis { space: SpaceId([n; 16]), creator: creator.clone() };
                    forged_event([0; 32], a.replica, event, &weak)
                })
                .expect("one space in eight has a forgery");
            assert_eq!(weak_reason(Membership::verify(&[genesis])), (0, "weak signing key"));

            // A member adds a weak key; its holder (anyone) then removes the creator.
            let m = Membership::genesis(SpaceId([9; 16]), a.clone(), &ka).unwrap();
            let intruder = Member { replica: ReplicaId([66; 16]), signing: weak, agreement: crypto::agreement_public(&[66; 32]) };
            let add = SignedEvent::sign(m.head, a.replica, MemberEvent::Add { member: intruder.clone(), wrapped_key: vec![], role: Role::Owner }, &ka);
            let remove = (0..=255u8)
                .find_map(|n| {
                    let event = MemberEvent::Remove { replica: a.replica, last_seq: Some(u64::from(n)) };
                    forged_event(add.hash(), intruder.replica, event, &weak)
                })
                .expect("one seq in eight has a forgery");
            let log = [m.events()[0].clone(), add, remove];
            assert_eq!(weak_reason(Membership::verify(&log)), (1, "weak signing key"), "{}", hex::encode(weak));
            let mut m2 = m.clone();
            assert_eq!(m2.add(a.replica, &ka, intruder, vec![]).unwrap_err(), Error::Membership { index: 1, reason: "weak signing key" });
            assert_eq!(m2, m);
        }
        // A small-order agreement key: a space key wrapped to it is open to anyone.
        let (b, _) = member(2);
        let mut m = Membership::genesis(SpaceId([9; 16]), a.clone(), &ka).unwrap();
        let mut one = [0u8; 32];
        one[0] = 1;
        for agreement in [[0; 32], one, EIGHT_TORSION[1].to_montgomery().to_bytes()] {
            let err = m.add(a.replica, &ka, Member { agreement, ..b.clone() }, vec![]).unwrap_err();
            assert_eq!(err, Error::Membership { index: 1, reason: "weak agreement key" });
            let creator = Member { agreement, ..a.clone() };
            let err = Membership::genesis(SpaceId([9; 16]), creator, &ka).unwrap_err();
            assert_eq!(err, Error::Membership { index: 0, reason: "weak agreement key" });
        }
    }

    #[test]
    fn a_weak_key_proves_and_signs_nothing() {
        // Were a weak key ever in a membership, nothing it "signed" would pass: not a
        // membership event, a sync proof, a signed request, nor an entry.
        let (a, ka) = member(1);
        let space = SpaceId([9; 16]);
        for weak in weak_keys() {
            let mut m = Membership::genesis(space, a.clone(), &ka).unwrap();
            let intruder = Member { replica: ReplicaId([66; 16]), signing: weak, agreement: crypto::agreement_public(&[66; 32]) };
            m.add_unchecked(intruder.clone());
            let remove = (0..=255u8)
                .find_map(|n| {
                    let event = MemberEvent::Remove { replica: a.replica, last_seq: Some(u64::from(n)) };
                    forged_event(m.head, intruder.replica, event, &weak)
                })
                .expect("one seq in eight has a forgery");
            assert_eq!(m.clone().apply(remove).unwrap_err(), Error::Membership { index: 1, reason: "bad signature" });
            for msg in [b"proof of a sync hello".to_vec(), crate::sync::request_message(1, space, intruder.replica, &crate::sync::RequestTarget { method: "GET", host: "h", path_and_query: "/blobs/x", body_sha256: [0; 32] })] {
                let sig = forge(&weak, &msg).unwrap_or_else(|| {
                    let mut trivial = [0u8; 64];
                    trivial[0] = 1;
                    trivial
                });
                assert!(!crate::sync::check_member(&m, intruder.replica, &msg, &sig), "{}", hex::encode(weak));
            }
            // R = the identity and s = 0 pass the cofactored rule for any message.
            let mut trivial = [0u8; 64];
            trivial[0] = 1;
            let entries: Vec<Entry> = (0..2)
                .map(|seq| {
                    let payload = vec![seq as u8; 3];
                    let header = EntryHeader { space, replica: intruder.replica, seq, hlc: Hlc::from_u64(seq + 1), prev: [0; 32], payload_len: 3 };
                    Entry { header, payload, sig: trivial }
                })
                .collect();
            let bad = |seq| Err(Error::BadSignature { replica: intruder.replica, seq });
            assert_eq!(check_entry(&entries[0], space, &m, &Limits::default()), bad(0));
            let batch = check_entries(&entries, space, &m, &Limits::default(), &mut crate::env::SeededRandom::new(1));
            assert_eq!(batch, vec![bad(0), bad(1)]);
        }
    }

    #[test]
    fn roles_decide_who_adds_removes_and_writes() {
        let (a, ka) = member(1);
        let (w, kw) = member(2);
        let (r, _) = member(3);
        let (x, _) = member(4);
        let mut m = Membership::genesis(SpaceId([9; 16]), a.clone(), &ka).unwrap();
        m.add_as(a.replica, &ka, w.clone(), vec![], Role::Writer).unwrap();
        m.add_as(a.replica, &ka, r.clone(), vec![], Role::Reader).unwrap();
        assert_eq!((m.role(a.replica), m.role(w.replica), m.role(r.replica)), (Some(Role::Owner), Some(Role::Writer), Some(Role::Reader)));
        assert!(m.may_write(w.replica) && !m.may_write(r.replica));
        // Only owners change the membership.
        let err = m.add(w.replica, &kw, x.clone(), vec![]).unwrap_err();
        assert_eq!(err.to_string(), "invalid membership event 3: signed by a member that is not an owner");
        assert!(m.remove(w.replica, &kw, r.replica, None).is_err());
        // The last owner stays.
        assert!(m.remove(a.replica, &ka, a.replica, None).is_err());
        // Roles survive encoding, and an owner's add keeps the encoding from before roles.
        let again = Membership::decode(&m.encode()).unwrap();
        assert_eq!(again, m);
        assert_eq!(again.events()[1].encode()[1 + 32 + 16], 3, "a writer's add is kind 3");
        let mut legacy = Membership::genesis(SpaceId([9; 16]), a.clone(), &ka).unwrap();
        let ev = legacy.add(a.replica, &ka, w.clone(), vec![]).unwrap();
        assert_eq!(ev.encode()[1 + 32 + 16], 1, "an owner's add is kind 1, as before roles");
        assert_eq!(Membership::decode(&legacy.encode()).unwrap().role(w.replica), Some(Role::Owner));
    }

    #[test]
    fn a_readers_entries_are_refused() {
        use crate::log::{Limits, check_entry};
        let mut rng = crate::env::SeededRandom::new(3);
        let mut space = crate::testing::Space::new(2, &mut rng);
        // Make the second device a reader: a log where it was added as one.
        let (owner, reader) = (&space.identities[0], &space.identities[1]);
        let mut m = Membership::genesis(space.space, space.members.member(owner.replica).unwrap().clone(), &owner.signing).unwrap();
        let card = space.members.member(reader.replica).unwrap().clone();
        m.add_as(owner.replica, &owner.signing, card, vec![], Role::Reader).unwrap();
        space.members = m.clone();
        let mut r = space.open(1);
        let op = crate::ops::Op::Set { collection: "t".into(), record: crate::ids::RecordId([1; 16]), field: "f".into(), value: crate::ops::Value::Int(1) };
        let entry = r.commit(vec![op], 1_700_000_000_000, &mut rng).unwrap();
        let err = check_entry(&entry, space.space, &m, &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    }
}
