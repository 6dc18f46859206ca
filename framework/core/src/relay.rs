//! A keyless verifying log: what a sync server keeps for a space.
//!
//! A [`Relay`] checks every entry's order, chain, membership and signature, stores it and
//! serves it to other replicas, all without the space key: it never sees plaintext. It
//! speaks the same [`crate::sync`] protocol as a replica.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};

use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SpaceId};
use crate::log::{verify_entry, ChainTip, Entry, Limits, Verified, VersionVector};
use crate::membership::Membership;
use crate::store::Store;
use crate::sync::{check_member, SyncPeer};

pub struct Relay {
    id: ReplicaId,
    signing: SigningKey,
    members: Membership,
    tips: BTreeMap<ReplicaId, ChainTip>,
    store: Box<dyn Store>,
    limits: Limits,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("space", &self.members.space()).field("tips", &self.tips).finish()
    }
}

impl Relay {
    /// Opens a relay over a store, re-verifying every stored entry. `id` and `signing` are
    /// the server's own identity in the handshake (it is not a member of the space).
    pub fn open(id: ReplicaId, signing: SigningKey, members: Membership, store: Box<dyn Store>, limits: Limits) -> Result<Relay> {
        let mut relay = Relay { id, signing, members, tips: BTreeMap::new(), store, limits };
        for (rid, head) in relay.store.heads()? {
            let mut next = 0;
            while next < head {
                let batch = relay.store.read(rid, next, 256)?;
                if batch.is_empty() {
                    return Err(Error::Storage(format!("store lost entries of {rid} from seq {next}")));
                }
                for e in batch {
                    next = e.header.seq + 1;
                    relay.accept(&e, false)?;
                }
            }
        }
        Ok(relay)
    }

    pub fn space(&self) -> SpaceId {
        self.members.space()
    }

    pub fn version_vector(&self) -> VersionVector {
        self.tips.iter().map(|(r, t)| (*r, t.next_seq)).collect()
    }

    /// Replaces the membership with a longer verified log of the same space.
    pub fn set_members(&mut self, members: Membership) -> Result<()> {
        if members.space() != self.space() {
            return Err(Error::WrongSpace { expected: self.space(), found: members.space() });
        }
        self.members = members;
        Ok(())
    }

    fn accept(&mut self, entry: &Entry, store: bool) -> Result<bool> {
        let rid = entry.header.replica;
        let store_ref = &self.store;
        let (verdict, hash) = verify_entry(entry, self.members.space(), &self.members, self.tips.get(&rid), &self.limits, |seq| {
            Ok(store_ref.read(rid, seq, 1)?.first().map(Entry::hash))
        })?;
        if verdict == Verified::Duplicate {
            return Ok(false);
        }
        if store {
            self.store.append(entry)?;
        }
        let h = &entry.header;
        self.tips.insert(rid, ChainTip { next_seq: h.seq + 1, last_hash: hash, last_hlc: h.hlc });
        Ok(true)
    }
}

impl SyncPeer for Relay {
    fn sync_space(&self) -> SpaceId {
        self.space()
    }
    fn sync_replica(&self) -> ReplicaId {
        self.id
    }
    fn sync_vector(&self) -> VersionVector {
        self.version_vector()
    }
    fn sync_entries(&self, replica: ReplicaId, from_seq: u64, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        let mut out = self.store.read(replica, from_seq, max_entries)?;
        crate::log::trim_to_bytes(&mut out, max_bytes);
        Ok(out)
    }
    fn sync_ingest(&mut self, entry: Entry, _now_ms: u64) -> Result<bool> {
        self.accept(&entry, true)
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
    fn sync_check_member(&self, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        check_member(&self.members, replica, msg, sig)
    }
}
