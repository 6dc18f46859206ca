//! A write-behind cache over any asynchronous storage.
//!
//! stead-core's [`Store`] trait is synchronous, but a service worker only has OPFS's and
//! IndexedDB's asynchronous APIs. [`CachedStore`] bridges the two: it answers every read
//! from memory and records every write in a queue, and the adapter that owns the real
//! storage drains the queue with [`CachedStore::take_pending`] and writes it out.
//!
//! The engine acknowledges nothing before that write has finished: a page's write is
//! answered after the flush, and the sync protocol's acknowledgements come from the
//! server. When a flush fails (a full disk), the engine drops this cache and reopens from
//! what is stored, so memory never runs ahead of the disk for longer than one request.

use std::cell::RefCell;
use std::rc::Rc;

use stead_core::Result;
use stead_core::ids::ReplicaId;
use stead_core::log::{Entry, VersionVector};
use stead_core::store::{MemStore, Store};

/// One write waiting to reach storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Append(Entry),
    Snapshot(Vec<u8>),
    Meta(String, Vec<u8>),
}

#[derive(Debug, Default)]
struct Inner {
    mem: MemStore,
    pending: Vec<Write>,
}

/// A [`Store`] in memory whose writes queue up for an asynchronous adapter. Clones share
/// one cache: the replica holds one, the adapter another.
#[derive(Debug, Clone, Default)]
pub struct CachedStore {
    inner: Rc<RefCell<Inner>>,
}

impl CachedStore {
    /// A cache holding what the adapter loaded, with nothing pending.
    pub fn loaded(mem: MemStore) -> CachedStore {
        CachedStore { inner: Rc::new(RefCell::new(Inner { mem, pending: Vec::new() })) }
    }

    /// The writes made since the last call, oldest first.
    pub fn take_pending(&self) -> Vec<Write> {
        std::mem::take(&mut self.inner.borrow_mut().pending)
    }

    pub fn has_pending(&self) -> bool {
        !self.inner.borrow().pending.is_empty()
    }

    /// How many entries the cache holds.
    pub fn entry_count(&self) -> usize {
        self.inner.borrow().mem.entries().count()
    }
}

impl Store for CachedStore {
    fn append(&mut self, entry: &Entry) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.mem.append(entry)?;
        inner.pending.push(Write::Append(entry.clone()));
        Ok(())
    }

    fn read(&self, replica: ReplicaId, from_seq: u64, max: usize) -> Result<Vec<Entry>> {
        self.inner.borrow().mem.read(replica, from_seq, max)
    }

    fn heads(&self) -> Result<VersionVector> {
        self.inner.borrow().mem.heads()
    }

    fn put_snapshot(&mut self, bytes: &[u8]) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.mem.put_snapshot(bytes)?;
        // Only the newest snapshot matters: an older one still queued need not be written.
        inner.pending.retain(|w| !matches!(w, Write::Snapshot(_)));
        inner.pending.push(Write::Snapshot(bytes.to_vec()));
        Ok(())
    }

    fn snapshot(&self) -> Result<Option<Vec<u8>>> {
        self.inner.borrow().mem.snapshot()
    }

    fn put_meta(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.mem.put_meta(key, bytes)?;
        // Each key is one whole file: an older value still queued need not be written.
        inner.pending.retain(|w| !matches!(w, Write::Meta(k, _) if k == key));
        inner.pending.push(Write::Meta(key.to_owned(), bytes.to_vec()));
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.borrow().mem.meta(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meta_key_written_twice_before_a_flush_is_written_once_with_its_newest_value() {
        let mut cache = CachedStore::default();
        cache.put_meta("acked", b"1").unwrap();
        cache.put_meta("other", b"x").unwrap();
        cache.put_meta("acked", b"2").unwrap();
        assert_eq!(cache.meta("acked").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(
            cache.take_pending(),
            [Write::Meta("other".into(), b"x".to_vec()), Write::Meta("acked".into(), b"2".to_vec())]
        );
        assert!(!cache.has_pending());
    }
}
