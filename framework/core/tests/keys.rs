//! One-time invites and key rotation: who can join, who can read what after a removal.

use ed25519_dalek::SigningKey;
use stead_core::crypto::{self, Keyring, SpaceKey};
use stead_core::env::{Random, SeededRandom};
use stead_core::error::Error;
use stead_core::ids::{RecordId, ReplicaId};
use stead_core::membership::{InviteSecret, InviteTerms, InviteState, Member, MemberEvent, Membership, Role, SignedEvent};
use stead_core::ops::{Op, Value};
use stead_core::replica::{Identity, Ingested, Replica};
use stead_core::store::MemStore;
use stead_core::testing::Space;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const NOW: u64 = 1_700_000_000_000;
const DAY: u64 = 24 * 3600 * 1000;

fn set(n: u8, value: &str) -> Vec<Op> {
    vec![Op::Set { collection: "notes".into(), record: RecordId([n; 16]), field: "text".into(), value: Value::Str(value.into()) }]
}

fn terms(role: Role, expires_ms: u64) -> InviteTerms {
    InviteTerms { role, expires_ms }
}

fn text(r: &Replica, n: u8) -> Option<Value> {
    r.value("notes", RecordId([n; 16]), "text")
}

/// A fresh device: the identity a joiner makes for itself.
fn fresh_device(space: &Space, rng: &mut SeededRandom) -> (Identity, Member) {
    let identity = Identity {
        space: space.space,
        replica: ReplicaId(rng.array()),
        signing: SigningKey::from_bytes(&rng.array()),
        agreement: rng.array(),
        space_key: SpaceKey([0; 32]),
    };
    let member = Member {
        replica: identity.replica,
        signing: identity.signing.verifying_key().to_bytes(),
        agreement: crypto::agreement_public(&identity.agreement),
    };
    (identity, member)
}

fn ring_of(space: &Space, i: usize, members: &Membership) -> Keyring {
    let id = &space.identities[i];
    members.keyring(&id.agreement, &Keyring::single(id.space_key.clone()))
}

fn open(space: &Space, identity: Identity, members: &Membership) -> Replica {
    Replica::open(identity, members.clone(), Box::new(MemStore::new()), space.config.clone()).unwrap()
}

#[test]
fn an_invite_adds_one_fresh_device_once() {
    let mut rng = SeededRandom::new(1);
    let space = Space::new(1, &mut rng);
    let owner = &space.identities[0];
    let mut members = space.members.clone();
    let secret = InviteSecret(rng.array());
    let ring = ring_of(&space, 0, &members);
    members.invite(owner.replica, &owner.signing, &ring, &secret, terms(Role::Writer, NOW + DAY), &mut rng).unwrap();
    // The joiner makes its own keys: the inviter never sees its secrets.
    let (me, card) = fresh_device(&space, &mut rng);
    let mut joined = Membership::decode(&members.encode()).unwrap();
    let ring = joined.join(&secret, card.clone(), &me.agreement, &mut rng).unwrap();
    assert_eq!(ring.current(), Some(&space.key));
    assert_eq!(joined.role(card.replica), Some(Role::Writer));
    let again = Membership::decode(&joined.encode()).unwrap();
    assert_eq!(again, joined);
    assert_eq!(again.invites().next().unwrap().state, InviteState::Used(card.replica));
    // The joiner's replica reads and writes with the key its own wrap gives it.
    let mut a = space.open(0);
    a.set_members(again.clone()).unwrap();
    let mut b = open(&space, me, &again);
    assert_eq!(b.keys().current(), Some(&space.key));
    let e = b.commit(set(1, "from the joiner"), NOW, &mut rng).unwrap();
    assert_eq!(a.ingest(e, NOW), Ok(Ingested::Applied));
    assert_eq!(text(&a, 1), Some(Value::Str("from the joiner".into())));

    // A second device using the same link is refused: one invite, one device.
    let (other, card2) = fresh_device(&space, &mut rng);
    let mut twice = again.clone();
    let err = twice.join(&secret, card2.clone(), &other.agreement, &mut rng).unwrap_err();
    assert_eq!(err.to_string(), "invalid membership event 3: the invite was used already");
    // Forged by hand, the log refuses it too.
    let forged = SignedEvent::sign(
        *again.events().last().map(|e| e.hash()).as_ref().unwrap(),
        card2.replica,
        MemberEvent::Join { invite: secret.public(), member: card2.clone(), wrapped_key: vec![0; crypto::WRAPPED_KEY_LEN] },
        &secret.signing(),
    );
    let mut events = again.events().to_vec();
    events.push(forged);
    assert!(Membership::verify(&events).is_err());
}

#[test]
fn a_join_must_be_signed_by_its_invite_and_name_itself() {
    let mut rng = SeededRandom::new(2);
    let space = Space::new(1, &mut rng);
    let owner = &space.identities[0];
    let mut members = space.members.clone();
    let secret = InviteSecret(rng.array());
    members.invite(owner.replica, &owner.signing, &ring_of(&space, 0, &members), &secret, terms(Role::Reader, NOW + DAY), &mut rng).unwrap();
    let (_, card) = fresh_device(&space, &mut rng);
    let head = members.events().last().unwrap().hash();
    let join = |by: ReplicaId, key: &SigningKey| {
        let ev = MemberEvent::Join { invite: secret.public(), member: card.clone(), wrapped_key: vec![0; crypto::WRAPPED_KEY_LEN] };
        let mut events = members.events().to_vec();
        events.push(SignedEvent::sign(head, by, ev, key));
        Membership::verify(&events).map(|_| ()).map_err(|e| e.to_string())
    };
    let stranger = SigningKey::from_bytes(&[77; 32]);
    assert_eq!(join(card.replica, &stranger), Err("invalid membership event 2: bad signature".into()));
    assert_eq!(
        join(owner.replica, &secret.signing()),
        Err("invalid membership event 2: a join must be in the name of the device it adds".into())
    );
    assert_eq!(join(card.replica, &secret.signing()), Ok(()));
    // A revoked invite adds nobody.
    let mut revoked = members.clone();
    revoked.revoke_invite(owner.replica, &owner.signing, secret.public()).unwrap();
    let (me, card) = fresh_device(&space, &mut rng);
    let err = revoked.join(&secret, card, &me.agreement, &mut rng).unwrap_err();
    assert_eq!(err.to_string(), "invalid membership event 3: the invite was cancelled");
}

#[test]
fn the_server_refuses_expired_and_overlong_invites() {
    let mut rng = SeededRandom::new(3);
    let space = Space::new(1, &mut rng);
    let owner = &space.identities[0];
    let mut members = space.members.clone();
    let ring = ring_of(&space, 0, &members);
    let secret = InviteSecret(rng.array());
    members.invite(owner.replica, &owner.signing, &ring, &secret, terms(Role::Writer, NOW + DAY), &mut rng).unwrap();
    assert!(members.check_times(1, NOW, 30 * DAY).is_ok());
    let mut long = members.clone();
    long.invite(owner.replica, &owner.signing, &ring, &InviteSecret(rng.array()), terms(Role::Writer, NOW + 365 * DAY), &mut rng).unwrap();
    assert_eq!(
        long.check_times(1, NOW, 30 * DAY).unwrap_err().to_string(),
        "invalid membership event 2: the invite is set to last longer than the server allows"
    );
    let (me, card) = fresh_device(&space, &mut rng);
    members.join(&secret, card, &me.agreement, &mut rng).unwrap();
    assert!(members.check_times(2, NOW + DAY - 1, 30 * DAY).is_ok());
    assert_eq!(
        members.check_times(2, NOW + DAY, 30 * DAY).unwrap_err().to_string(),
        "invalid membership event 2: the invite has expired"
    );
}

#[test]
fn a_removed_member_cannot_read_what_is_written_after_the_rotation() {
    let mut rng = SeededRandom::new(4);
    let space = Space::new(3, &mut rng);
    let (a_id, c_id) = (&space.identities[0], &space.identities[2]);
    let mut a = space.open(0);
    let mut b = space.open(1);
    let mut c = space.open(2);
    let before = b.commit(set(1, "before"), NOW, &mut rng).unwrap();
    for r in [&mut a, &mut c] {
        assert_eq!(r.ingest(before.clone(), NOW), Ok(Ingested::Applied));
    }

    // A removes C and rotates the key.
    let mut members = a.members().clone();
    members.remove(a_id.replica, &a_id.signing, c_id.replica, Some(0)).unwrap();
    let mut ring = a.keys().clone();
    let new_key = SpaceKey(rng.array());
    members.rekey(a_id.replica, &a_id.signing, &mut ring, new_key.clone(), NOW, &mut rng).unwrap();
    let members = Membership::decode(&members.encode()).unwrap();
    a.set_members(members.clone()).unwrap();
    b.set_members(members.clone()).unwrap();
    assert_eq!(a.keys().current(), Some(&new_key));
    assert_eq!(b.keys().current(), Some(&new_key), "B gets the new key from the rotation's wrap");
    let after = b.commit(set(2, "after"), NOW + 1, &mut rng).unwrap();
    assert_eq!(after.payload[..crypto::KEY_ID_LEN], new_key.id(), "new entries are sealed under the new key");
    assert_eq!(a.ingest(after.clone(), NOW + 1), Ok(Ingested::Applied));
    assert_eq!(text(&a, 2), Some(Value::Str("after".into())));

    // C, even holding the new log, has only the old key: it cannot read the new entry
    // (the server would not send it anyway), nor write under the new key.
    let c_ring = members.keyring(&c_id.agreement, &Keyring::single(c_id.space_key.clone()));
    assert_eq!(c_ring.current(), None);
    assert!(c_ring.get(&new_key.id()).is_none());
    assert!(c_ring.open(space.space, after.header.replica, after.header.seq, &after.payload).is_err());
    c.set_members(members.clone()).unwrap();
    assert!(matches!(c.commit(set(3, "x"), NOW + 2, &mut rng), Err(Error::NoCurrentKey)));

    // A device invited after the rotation reads the whole history: the new key carries
    // the old one sealed under it.
    let mut later = members.clone();
    let secret = InviteSecret(rng.array());
    later.invite(a_id.replica, &a_id.signing, a.keys(), &secret, terms(Role::Writer, NOW + DAY), &mut rng).unwrap();
    let (me, card) = fresh_device(&space, &mut rng);
    let ring = later.join(&secret, card, &me.agreement, &mut rng).unwrap();
    assert_eq!(ring.current(), Some(&new_key));
    assert!(ring.get(&space.key.id()).is_some(), "the first key is reached through the chain");
    let mut d = open(&space, me, &later);
    assert_eq!(d.ingest(before, NOW + 3), Ok(Ingested::Applied));
    assert_eq!(d.ingest(after, NOW + 3), Ok(Ingested::Applied));
    assert_eq!(text(&d, 1), Some(Value::Str("before".into())));
    assert_eq!(text(&d, 2), Some(Value::Str("after".into())));
}

#[test]
fn an_entry_under_a_rotation_not_seen_yet_is_refused_until_the_log_catches_up() {
    let mut rng = SeededRandom::new(5);
    let space = Space::new(2, &mut rng);
    let a_id = &space.identities[0];
    let mut a = space.open(0);
    let mut b = space.open(1);
    let mut members = a.members().clone();
    let mut ring = a.keys().clone();
    members.rekey(a_id.replica, &a_id.signing, &mut ring, SpaceKey(rng.array()), NOW, &mut rng).unwrap();
    a.set_members(members.clone()).unwrap();
    let e = a.commit(set(1, "rotated"), NOW, &mut rng).unwrap();
    // B still holds the old log: the entry is refused, not stored as unreadable...
    assert!(matches!(b.ingest(e.clone(), NOW), Err(Error::MissingKey { .. })));
    assert!(!b.version_vector().contains_key(&a_id.replica));
    // ...so once B has the new log it takes it.
    b.set_members(members).unwrap();
    assert_eq!(b.ingest(e, NOW), Ok(Ingested::Applied));
    assert_eq!(text(&b, 1), Some(Value::Str("rotated".into())));
}

#[test]
fn a_rotation_covers_every_active_member_and_only_holders() {
    let mut rng = SeededRandom::new(6);
    let space = Space::new(3, &mut rng);
    let a_id = &space.identities[0];
    let members = space.members.clone();
    let ring = ring_of(&space, 0, &members);
    let current = ring.current().unwrap().clone();
    let new_key = SpaceKey(rng.array());
    let head = members.events().last().unwrap().hash();
    let holders: Vec<[u8; 32]> = members.members().map(|(m, _, _)| m.agreement).collect();
    let rekey_to = |to: &[[u8; 32]], rng: &mut SeededRandom| {
        let keys = to
            .iter()
            .map(|a| (*a, crypto::wrap_space_key(&new_key, space.space, a, rng.array(), rng.array()).unwrap()))
            .collect();
        let previous = crypto::seal_previous_key(&new_key, &current, space.space, rng.array());
        let ev = MemberEvent::Rekey { key_id: new_key.id(), previous, keys };
        let mut events = members.events().to_vec();
        events.push(SignedEvent::sign(head, a_id.replica, ev, &a_id.signing));
        Membership::verify(&events).map(|_| ()).map_err(|e| e.to_string())
    };
    assert_eq!(rekey_to(&holders, &mut rng), Ok(()));
    assert_eq!(
        rekey_to(&holders[..2], &mut rng),
        Err("invalid membership event 3: leaves an active member without the new key".into())
    );
    let outsider = crypto::agreement_public(&[42; 32]);
    assert_eq!(
        rekey_to(&[&holders[..], &[outsider]].concat(), &mut rng),
        Err("invalid membership event 3: wraps the key to a device that is neither a member nor invited".into())
    );

    // A rotation keeps the invites that have not expired and cancels the others.
    let mut m = members.clone();
    let mut ring = ring.clone();
    let (keep, lapse) = (InviteSecret(rng.array()), InviteSecret(rng.array()));
    m.invite(a_id.replica, &a_id.signing, &ring, &keep, terms(Role::Writer, NOW + DAY), &mut rng).unwrap();
    m.invite(a_id.replica, &a_id.signing, &ring, &lapse, terms(Role::Writer, NOW + 1), &mut rng).unwrap();
    m.rekey(a_id.replica, &a_id.signing, &mut ring, new_key.clone(), NOW + 10, &mut rng).unwrap();
    let states: Vec<_> = m.invites().map(|i| (i.key, i.state)).collect();
    assert!(states.contains(&(keep.public(), InviteState::Pending)));
    assert!(states.contains(&(lapse.public(), InviteState::Revoked)));
    // The kept invite joins straight into the new key.
    let (me, card) = fresh_device(&space, &mut rng);
    let joined = m.join(&keep, card, &me.agreement, &mut rng).unwrap();
    assert_eq!(joined.current(), Some(&new_key));
    // Only an owner rotates.
    let mut w = space.members.clone();
    let (_, writer) = fresh_device(&space, &mut rng);
    let writer_key = SigningKey::from_bytes(&[5; 32]);
    let writer = Member { signing: writer_key.verifying_key().to_bytes(), ..writer };
    let wrapped = crypto::wrap_space_key(&current, space.space, &writer.agreement, rng.array(), rng.array()).unwrap();
    w.add_as(a_id.replica, &a_id.signing, writer.clone(), wrapped, Role::Writer).unwrap();
    let mut ring = Keyring::single(current.clone());
    let err = w.rekey(writer.replica, &writer_key, &mut ring, SpaceKey(rng.array()), NOW, &mut rng).unwrap_err();
    assert_eq!(err.to_string(), "invalid membership event 4: signed by a member that is not an owner");
}

#[test]
fn rotations_made_apart_are_chained_again_when_the_logs_are_rebased() {
    let mut rng = SeededRandom::new(7);
    let space = Space::new(2, &mut rng);
    let (a_id, b_id) = (&space.identities[0], &space.identities[1]);
    // B becomes an owner too, then A and B each rotate while apart.
    let mut base = space.members.clone();
    let mut a_ring = ring_of(&space, 0, &base);
    let mut b_ring = ring_of(&space, 1, &base);
    let mut theirs = base.clone();
    let k_a = SpaceKey(rng.array());
    theirs.rekey(a_id.replica, &a_id.signing, &mut a_ring, k_a.clone(), NOW, &mut rng).unwrap();
    let k_b = SpaceKey(rng.array());
    base.rekey(b_id.replica, &b_id.signing, &mut b_ring, k_b.clone(), NOW, &mut rng).unwrap();
    let (rebased, ring) = base
        .rebase_keeping_keys(&theirs, b_id.replica, &b_id.signing, &b_id.agreement, &b_ring, NOW, &mut rng)
        .unwrap();
    assert!(rebased.dropped.is_empty(), "{:?}", rebased.dropped);
    assert_eq!(ring.current(), Some(&k_b), "B's key, which may seal entries already, stays the current one");
    // Everyone reaches every key: A's from the new wrap and the chain, the first one too.
    let members = Membership::decode(&rebased.members.encode()).unwrap();
    let a_view = members.keyring(&a_id.agreement, &Keyring::single(space.key.clone()));
    for k in [&space.key, &k_a, &k_b] {
        assert!(a_view.get(&k.id()).is_some());
        assert!(ring.get(&k.id()).is_some());
    }
    assert_eq!(a_view.current(), Some(&k_b));
}
