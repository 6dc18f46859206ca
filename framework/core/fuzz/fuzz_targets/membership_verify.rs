//! Fuzzes the membership log as a server and every device take it in: decode, verify
//! (signatures, chain, roles, invites, joins, rotations), then derive a device's keys
//! from it (`keyring`: unwrapping and walking the sealed key chain). The input is both a
//! log of its own and a list of byte flips applied to a genuine log that holds every
//! kind of event, so the fuzzer reaches deep into valid structure. Nothing may panic; a
//! log that verifies must encode back to a log that verifies the same; a flipped log
//! that still verifies must be the genuine one (every byte is signed).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stead_core::crypto::{Keyring, SpaceKey};
use stead_core::env::SeededRandom;
use stead_core::membership::{InviteSecret, InviteTerms, Member, Membership, Role};
use stead_core::testing::Space;

struct Fixture {
    space: Space,
    log: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = SeededRandom::new(2);
        let space = Space::new(3, &mut rng);
        let (a, c) = (&space.identities[0], &space.identities[2]);
        let mut m = space.members.clone();
        let mut ring = m.keyring(&a.agreement, &Keyring::single(a.space_key.clone()));
        let terms = InviteTerms { role: Role::Writer, expires_ms: 1_800_000_000_000 };
        let secret = InviteSecret([3; 32]);
        m.invite(a.replica, &a.signing, &ring, &secret, terms, &mut rng).expect("invite");
        let joiner = [4u8; 32];
        let signing = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let me = Member {
            replica: stead_core::ids::ReplicaId([6; 16]),
            signing: signing.verifying_key().to_bytes(),
            agreement: stead_core::crypto::agreement_public(&joiner),
        };
        m.join(&secret, me, &joiner, &mut rng).expect("join");
        m.invite(a.replica, &a.signing, &ring, &InviteSecret([7; 32]), terms, &mut rng).expect("invite");
        m.revoke_invite(a.replica, &a.signing, InviteSecret([7; 32]).public()).expect("revoke");
        m.remove(a.replica, &a.signing, c.replica, Some(3)).expect("remove");
        m.rekey(a.replica, &a.signing, &mut ring, SpaceKey([8; 32]), 0, &mut rng).expect("rekey");
        let log = m.encode();
        Fixture { space, log }
    })
}

fn check(f: &Fixture, bytes: &[u8]) -> Option<Membership> {
    let m = Membership::decode(bytes).ok()?;
    let again = Membership::decode(&m.encode()).expect("a verified log encodes to one that verifies");
    assert_eq!(again, m);
    for id in &f.space.identities {
        let ring = m.keyring(&id.agreement, &Keyring::single(id.space_key.clone()));
        assert!(!ring.is_empty());
    }
    Some(m)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    check(f, data);
    let mut flipped = f.log.clone();
    for op in data.chunks_exact(3) {
        let at = u16::from_le_bytes([op[0], op[1]]) as usize % flipped.len();
        flipped[at] ^= op[2];
    }
    if check(f, &flipped).is_some() {
        assert_eq!(flipped, f.log, "a changed log verified");
    }
});
