//! The membership log of a space: signed announcements of who may write to it.
//!
//! The creator signs a genesis event naming itself; every later event (add or remove a
//! member) is signed by a member active at that point and names the hash of the event
//! before it, so the log is a single hash chain. Anyone — the server included — can
//! verify it with public keys alone. An add carries the space key wrapped to the new
//! device's X25519 key, so the key travels with the membership and the server sees only
//! ciphertext. A remove names the last seq of the removed replica that stays valid;
//! entries it signs after that are refused as from an unknown replica.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SpaceId};
use crate::log::Hash;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Genesis { space: SpaceId, creator: Member },
    Add { member: Member, wrapped_key: Vec<u8> },
    /// Entries of `replica` with seq ≤ `last_seq` stay valid; `None` keeps none.
    Remove { replica: ReplicaId, last_seq: Option<u64> },
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
            MemberEvent::Add { member, wrapped_key } => {
                w.u8(1);
                write_member(&mut w, member);
                w.bytes(wrapped_key);
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
            1 => MemberEvent::Add { member: read_member(r)?, wrapped_key: r.bytes()?.to_vec() },
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
        key.verify(&msg, &Signature::from_bytes(&self.sig)).is_ok()
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
    /// `None` while active; `Some(last valid seq)` once removed.
    removed: Option<Option<u64>>,
}

/// The verified state of a membership log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    space: SpaceId,
    members: BTreeMap<ReplicaId, MemberState>,
    events: Vec<SignedEvent>,
    head: Hash,
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
        let key = VerifyingKey::from_bytes(&creator.signing)
            .map_err(|_| Error::Membership { index: 0, reason: "bad public key" })?;
        if first.prev != [0; 32] || first.by != creator.replica || !first.verify_sig(&key) {
            return Err(Error::Membership { index: 0, reason: "genesis is not signed by its creator" });
        }
        let mut m = Membership {
            space: *space,
            members: BTreeMap::new(),
            events: vec![first.clone()],
            head: first.hash(),
        };
        m.members
            .insert(creator.replica, MemberState { member: creator.clone(), key, removed: None });
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
        let signer = self.members.get(&ev.by).filter(|s| s.removed.is_none());
        let Some(signer) = signer else {
            return Err(fail("signed by a replica that is not an active member"));
        };
        if !ev.verify_sig(&signer.key) {
            return Err(fail("bad signature"));
        }
        match &ev.event {
            MemberEvent::Genesis { .. } => return Err(fail("a second genesis")),
            MemberEvent::Add { member, .. } => {
                if self.members.contains_key(&member.replica) {
                    return Err(fail("the replica was already a member"));
                }
                let key =
                    VerifyingKey::from_bytes(&member.signing).map_err(|_| fail("bad public key"))?;
                self.members
                    .insert(member.replica, MemberState { member: member.clone(), key, removed: None });
            }
            MemberEvent::Remove { replica, last_seq } => {
                let target = self
                    .members
                    .get_mut(replica)
                    .filter(|s| s.removed.is_none())
                    .ok_or(fail("removes a replica that is not an active member"))?;
                target.removed = Some(*last_seq);
            }
        }
        self.head = ev.hash();
        self.events.push(ev);
        Ok(())
    }

    /// Signs and applies an add of `member`, with the space key already wrapped to it.
    pub fn add(&mut self, by: ReplicaId, key: &SigningKey, member: Member, wrapped_key: Vec<u8>) -> Result<SignedEvent> {
        let ev = SignedEvent::sign(self.head, by, MemberEvent::Add { member, wrapped_key }, key);
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

    pub fn is_active(&self, replica: ReplicaId) -> bool {
        self.members.get(&replica).is_some_and(|s| s.removed.is_none())
    }

    /// Every device ever added, with whether it is still an active member.
    pub fn members(&self) -> impl Iterator<Item = (&Member, bool)> {
        self.members.values().map(|s| (&s.member, s.removed.is_none()))
    }

    pub fn member(&self, replica: ReplicaId) -> Option<&Member> {
        self.members.get(&replica).map(|s| &s.member)
    }

    /// The wrapped space key carried by the event that added `replica`.
    pub fn wrapped_key_for(&self, replica: ReplicaId) -> Option<&[u8]> {
        self.events.iter().find_map(|ev| match &ev.event {
            MemberEvent::Add { member, wrapped_key } if member.replica == replica => {
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
    /// caller reports the dropped ones.
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
        for ev in &self.events[common..] {
            if theirs.iter().any(|t| t.by == ev.by && t.event == ev.event) {
                continue;
            }
            let m = &out.members;
            let in_effect = match &ev.event {
                MemberEvent::Genesis { .. } => false,
                MemberEvent::Add { member, .. } => m.member(member.replica) == Some(member),
                MemberEvent::Remove { replica, .. } => m.members.get(replica).is_some_and(|s| s.removed.is_some()),
            };
            if in_effect {
                continue;
            }
            if ev.by != me {
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

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
}
