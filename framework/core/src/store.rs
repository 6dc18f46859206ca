//! The `Store` trait — where a replica keeps its log, snapshot and small metadata — and the
//! in-memory implementation.
//!
//! The trait lives in the pure core and the I/O lives in adapters (`stead-store` has the
//! native segmented-file one). It is synchronous: the core calls it the way it calls the
//! injected clock. An adapter must make `append` durable before it returns, because the
//! sync protocol acknowledges an entry once it is appended.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ids::ReplicaId;
use crate::log::{Entry, VersionVector};

pub trait Store {
    /// Appends the next entry of its replica's chain (seq = that replica's head).
    fn append(&mut self, entry: &Entry) -> Result<()>;
    /// Up to `max` entries of `replica` from `from_seq` on, in seq order. A store that
    /// keeps only the log's tail in memory answers [`Error::NotLoaded`] for entries it
    /// holds on disk but has not loaded; callers that can do without them say so.
    fn read(&self, replica: ReplicaId, from_seq: u64, max: usize) -> Result<Vec<Entry>>;
    /// For each replica with stored entries, the seq after its last one.
    fn heads(&self) -> Result<VersionVector>;
    /// Replaces the snapshot atomically.
    fn put_snapshot(&mut self, bytes: &[u8]) -> Result<()>;
    fn snapshot(&self) -> Result<Option<Vec<u8>>>;
    /// Small named blobs (membership log, schema); replaced atomically.
    fn put_meta(&mut self, key: &str, bytes: &[u8]) -> Result<()>;
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
}

/// A store in memory: what tests, the simulator and short-lived tools use.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    logs: BTreeMap<ReplicaId, Vec<Entry>>,
    snapshot: Option<Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Every stored entry, replica by replica.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.logs.values().flatten()
    }
}

impl Store for MemStore {
    fn append(&mut self, entry: &Entry) -> Result<()> {
        let log = self.logs.entry(entry.header.replica).or_default();
        if entry.header.seq != log.len() as u64 {
            return Err(Error::Storage(format!(
                "append of seq {} to a log of {} entries",
                entry.header.seq,
                log.len()
            )));
        }
        log.push(entry.clone());
        Ok(())
    }

    fn read(&self, replica: ReplicaId, from_seq: u64, max: usize) -> Result<Vec<Entry>> {
        let log = self.logs.get(&replica).map_or(&[][..], |l| l.as_slice());
        let from = (from_seq as usize).min(log.len());
        Ok(log[from..].iter().take(max).cloned().collect())
    }

    fn heads(&self) -> Result<VersionVector> {
        Ok(self.logs.iter().map(|(r, l)| (*r, l.len() as u64)).collect())
    }

    fn put_snapshot(&mut self, bytes: &[u8]) -> Result<()> {
        self.snapshot = Some(bytes.to_vec());
        Ok(())
    }

    fn snapshot(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.snapshot.clone())
    }

    fn put_meta(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
        self.meta.insert(key.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key).cloned())
    }
}
