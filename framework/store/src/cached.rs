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
use std::collections::BTreeMap;
use std::rc::Rc;

use stead_core::{Error, Result};
use stead_core::ids::ReplicaId;
use stead_core::log::{Entry, VersionVector};
use stead_core::store::Store;

/// One write waiting to reach storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Append(Entry),
    Snapshot(Vec<u8>),
    Meta(String, Vec<u8>),
}

/// One replica's log as far as it is in memory: the entries from `base` on. The entries
/// below `base` are on disk only (an adapter that opened with the log's tail).
#[derive(Debug, Default)]
struct Tail {
    base: u64,
    entries: Vec<Entry>,
}

impl Tail {
    fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }
}

#[derive(Debug, Default)]
struct Inner {
    logs: BTreeMap<ReplicaId, Tail>,
    snapshot: Option<Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
    pending: Vec<Write>,
    /// Per replica, the lowest seq a read asked for below what is loaded.
    wanted: VersionVector,
}

/// A [`Store`] in memory whose writes queue up for an asynchronous adapter. Clones share
/// one cache: the replica holds one, the adapter another.
///
/// It may hold only the tail of a replica's log (from its *floor* on): a read below the
/// floor answers [`Error::NotLoaded`] and is noted in [`CachedStore::take_wanted`], so the
/// adapter can load those entries ([`CachedStore::prepend`]) and the caller ask again.
#[derive(Debug, Clone, Default)]
pub struct CachedStore {
    inner: Rc<RefCell<Inner>>,
}

impl CachedStore {
    /// Sets the snapshot read from storage (not queued for writing).
    pub fn load_snapshot(&self, bytes: Vec<u8>) {
        self.inner.borrow_mut().snapshot = Some(bytes);
    }

    /// Sets a metadata value read from storage (not queued for writing).
    pub fn load_meta(&self, key: &str, bytes: Vec<u8>) {
        self.inner.borrow_mut().meta.insert(key.to_owned(), bytes);
    }

    /// Declares that `replica`'s log on disk ends before `head` and that the cache holds it
    /// from `head` on (nothing yet): entries from `head` are then added with
    /// [`CachedStore::load_entry`]. Only while the replica holds nothing.
    pub fn set_floor(&self, replica: ReplicaId, head: u64) {
        let mut inner = self.inner.borrow_mut();
        let tail = inner.logs.entry(replica).or_default();
        assert!(tail.entries.is_empty(), "a floor is set before any entry is loaded");
        tail.base = head;
    }

    /// Adds an entry read from storage at the head of its replica's log, not queued for
    /// writing.
    pub fn load_entry(&self, entry: &Entry) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        let tail = inner.logs.entry(entry.header.replica).or_default();
        if entry.header.seq != tail.head() {
            return Err(Error::Storage(format!("loading seq {} of {} after seq {}", entry.header.seq, entry.header.replica, tail.head())));
        }
        tail.entries.push(entry.clone());
        Ok(())
    }

    /// Puts entries read from storage in front of what `replica`'s log holds: they must end
    /// right below its floor, which moves down to the first of them.
    pub fn prepend(&self, replica: ReplicaId, entries: Vec<Entry>) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        let tail = inner.logs.entry(replica).or_default();
        let first = tail.base.checked_sub(entries.len() as u64).ok_or_else(|| Error::Storage(format!("{} entries of {replica} below seq {}", entries.len(), tail.base)))?;
        if entries.iter().enumerate().any(|(i, e)| e.header.replica != replica || e.header.seq != first + i as u64) {
            return Err(Error::Storage(format!("entries of {replica} loaded out of order below seq {}", tail.base)));
        }
        tail.base = first;
        tail.entries.splice(0..0, entries);
        Ok(())
    }

    /// The first seq of each replica held in memory (0: the whole log is).
    pub fn floors(&self) -> VersionVector {
        // Inserts, not collect(): each collect into a map brings its own sort into the
        // worker's wasm.
        let mut vv = VersionVector::new();
        for (r, t) in &self.inner.borrow().logs {
            vv.insert(*r, t.base);
        }
        vv
    }

    /// Every replica's floor as 0: what loading the whole log asks for.
    pub fn whole(&self) -> VersionVector {
        let mut vv = self.floors();
        vv.values_mut().for_each(|v| *v = 0);
        vv
    }

    /// The reads below a floor since the last call: per replica, the lowest seq asked for.
    pub fn take_wanted(&self) -> VersionVector {
        std::mem::take(&mut self.inner.borrow_mut().wanted)
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
        self.inner.borrow().logs.values().map(|t| t.entries.len()).sum()
    }
}

impl Store for CachedStore {
    fn append(&mut self, entry: &Entry) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        let tail = inner.logs.entry(entry.header.replica).or_default();
        if entry.header.seq != tail.head() {
            return Err(Error::Storage(format!("append of seq {} to a log of {} entries", entry.header.seq, tail.head())));
        }
        tail.entries.push(entry.clone());
        inner.pending.push(Write::Append(entry.clone()));
        Ok(())
    }

    fn read(&self, replica: ReplicaId, from_seq: u64, max: usize) -> Result<Vec<Entry>> {
        let mut inner = self.inner.borrow_mut();
        let Some(tail) = inner.logs.get(&replica) else { return Ok(Vec::new()) };
        if from_seq < tail.base {
            if max == 0 {
                return Ok(Vec::new());
            }
            let w = inner.wanted.entry(replica).or_insert(from_seq);
            *w = (*w).min(from_seq);
            return Err(Error::NotLoaded { replica, seq: from_seq });
        }
        let from = ((from_seq - tail.base) as usize).min(tail.entries.len());
        Ok(tail.entries[from..].iter().take(max).cloned().collect())
    }

    fn heads(&self) -> Result<VersionVector> {
        let mut vv = VersionVector::new();
        for (r, t) in &self.inner.borrow().logs {
            vv.insert(*r, t.head());
        }
        Ok(vv)
    }

    fn put_snapshot(&mut self, bytes: &[u8]) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.snapshot = Some(bytes.to_vec());
        // Only the newest snapshot matters: an older one still queued need not be written.
        inner.pending.retain(|w| !matches!(w, Write::Snapshot(_)));
        inner.pending.push(Write::Snapshot(bytes.to_vec()));
        Ok(())
    }

    fn snapshot(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.borrow().snapshot.clone())
    }

    fn put_meta(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.meta.insert(key.to_owned(), bytes.to_vec());
        // Each key is one whole file: an older value still queued need not be written.
        inner.pending.retain(|w| !matches!(w, Write::Meta(k, _) if k == key));
        inner.pending.push(Write::Meta(key.to_owned(), bytes.to_vec()));
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.borrow().meta.get(key).cloned())
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

    #[test]
    fn a_read_below_the_floor_is_not_loaded_and_noted_and_an_empty_one_is_empty() {
        let cache = CachedStore::default();
        let r = ReplicaId([7; 16]);
        cache.set_floor(r, 10);
        assert_eq!(cache.heads().unwrap().get(&r), Some(&10));
        assert_eq!(cache.read(r, 3, 0).unwrap(), Vec::new());
        assert!(cache.take_wanted().is_empty());
        assert_eq!(cache.read(r, 10, 5).unwrap(), Vec::new());
        assert!(matches!(cache.read(r, 4, 1), Err(Error::NotLoaded { seq: 4, .. })));
        assert!(matches!(cache.read(r, 6, 1), Err(Error::NotLoaded { seq: 6, .. })));
        assert_eq!(cache.take_wanted().get(&r), Some(&4), "the lowest seq asked for");
        assert!(cache.take_wanted().is_empty());
        assert!(cache.prepend(r, Vec::new()).is_ok());
        assert_eq!(cache.floors().get(&r), Some(&10));
    }
}
