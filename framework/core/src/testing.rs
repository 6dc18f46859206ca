//! Fixtures for tests, examples, the simulator and benchmarks: a space with N member
//! devices whose keys come from a seeded source. Never use these keys for real data.

use ed25519_dalek::SigningKey;

use crate::crypto::{self, SpaceKey};
use crate::env::Random;
use crate::ids::{ReplicaId, SpaceId};
use crate::membership::{Member, Membership};
use crate::replica::{Config, Identity, Replica};
use crate::store::{MemStore, Store};

/// A space and the identities of its member devices.
#[derive(Debug, Clone)]
pub struct Space {
    pub space: SpaceId,
    pub key: SpaceKey,
    pub identities: Vec<Identity>,
    pub members: Membership,
    pub config: Config,
}

impl Space {
    /// A space whose first device created it and added all the others.
    pub fn new(devices: usize, rng: &mut dyn Random) -> Space {
        let mut id = [0u8; 16];
        rng.fill(&mut id);
        let space = SpaceId(id);
        let mut key = [0u8; 32];
        rng.fill(&mut key);
        let key = SpaceKey(key);
        let mut identities = Vec::new();
        let mut agreement = Vec::new();
        for _ in 0..devices.max(1) {
            let mut rid = [0u8; 16];
            rng.fill(&mut rid);
            let mut seed = [0u8; 32];
            rng.fill(&mut seed);
            let mut x = [0u8; 32];
            rng.fill(&mut x);
            identities.push(Identity {
                space,
                replica: ReplicaId(rid),
                signing: SigningKey::from_bytes(&seed),
                agreement: x,
                space_key: key.clone(),
            });
            agreement.push(crypto::agreement_public(&x));
        }
        let member = |i: usize| Member {
            replica: identities[i].replica,
            signing: identities[i].signing.verifying_key().to_bytes(),
            agreement: agreement[i],
        };
        let creator = &identities[0];
        let mut members = Membership::genesis(space, member(0), &creator.signing)
            .expect("a fresh genesis verifies");
        for (i, to) in agreement.iter().enumerate().skip(1) {
            let mut eph = [0u8; 32];
            rng.fill(&mut eph);
            let mut nonce = [0u8; 24];
            rng.fill(&mut nonce);
            let wrapped = crypto::wrap_space_key(&key, space, to, eph, nonce).expect("a fresh key is of large order");
            members
                .add(creator.replica, &creator.signing, member(i), wrapped)
                .expect("the creator may add members");
        }
        Space { space, key, identities, members, config: Config::default() }
    }

    /// Opens device `i` over an empty in-memory store.
    pub fn open(&self, i: usize) -> Replica {
        self.open_with(i, Box::new(MemStore::new()))
    }

    /// Opens device `i` over the given store.
    pub fn open_with(&self, i: usize, store: Box<dyn Store>) -> Replica {
        Replica::open(self.identities[i].clone(), self.members.clone(), store, self.config.clone())
            .expect("opening a replica over a valid store")
    }
}
