//! The IndexedDB adapter of stead-core's `Store`: the fallback for browsers whose
//! workers cannot write OPFS.
//!
//! One database per store, with three object stores: `log` (key
//! `<replica hex>:<seq, 20 digits>`, value the encoded entry), `snapshot` (key
//! `current`) and `meta` (key = the meta key). A flush writes every queued write in one
//! readwrite transaction and waits for its `complete` event, so a flush lands whole or
//! not at all. Opening reads the snapshot, the metadata and, by key ranges, only the log
//! records past what the snapshot covers (with, per replica, the last covered record, to
//! show the log still holds it); [`IdbStore::load`] reads older ones when asked. With no
//! usable snapshot, or when a record read does not decode or follow its replica's
//! previous entry, opening reads the whole log, and such a record ends that replica's log
//! there (reported, not fatal).

pub mod db;

use js_sys::Uint8Array;
use stead_core::ids::ReplicaId;
use stead_core::log::{Entry, Limits, VersionVector};
use stead_core::store::Store;
use wasm_bindgen::JsValue;
use web_sys::IdbDatabase;

use crate::cached::{CachedStore, Write};
use crate::opfs::OpfsError;

const LOG: &str = "log";
const SNAPSHOT: &str = "snapshot";
const META: &str = "meta";

#[derive(Debug)]
pub struct IdbStore {
    db: IdbDatabase,
    cache: CachedStore,
    recovered: Option<String>,
    limits: Limits,
}

fn log_key(entry: &Entry) -> String {
    key_of(&entry.header.replica, entry.header.seq)
}

fn bytes(v: &JsValue) -> Vec<u8> {
    Uint8Array::new(v).to_vec()
}

fn key_of(replica: &ReplicaId, seq: u64) -> String {
    format!("{}:{seq:020}", hex::encode(replica.as_bytes()))
}

impl IdbStore {
    /// Opens (creating) the database `name`, reading into memory the snapshot, the
    /// metadata and the log records past the snapshot (all of them without one).
    pub async fn open(name: &str, limits: Limits) -> Result<IdbStore, OpfsError> {
        let db = db::open(name, &[LOG, SNAPSHOT, META]).await?;
        let snapshot = db::get(&db, SNAPSHOT, "current").await?.map(|v| bytes(&v));
        let covers = snapshot.as_deref().and_then(|b| stead_core::replica::snapshot_vector(b).ok()).filter(|v| !v.is_empty());
        let tail = match &covers {
            Some(covers) => Self::open_tail(&db, covers, &limits).await?,
            None => None,
        };
        let (cache, recovered) = match tail {
            Some(cache) => (cache, None),
            None => Self::open_full(&db, &limits).await?,
        };
        if let Some(s) = snapshot {
            cache.load_snapshot(s);
        }
        for (key, value) in db::all(&db, META).await? {
            cache.load_meta(&key, bytes(&value));
        }
        Ok(IdbStore { db, cache, recovered, limits })
    }

    /// The records past `covers` (and each covered replica's last covered record): every
    /// key range but those below the floors. `None` when they do not make whole chains
    /// from there, and the whole log must be read.
    async fn open_tail(db: &IdbDatabase, covers: &VersionVector, limits: &Limits) -> Result<Option<CachedStore>, OpfsError> {
        // Keys sort by replica, then seq: between two covered replicas' floors lie the
        // records of replicas the snapshot does not know, whole.
        let mut ranges = Vec::new();
        let mut from: Option<String> = None;
        for (r, &n) in covers {
            ranges.push((from.take(), Some(key_of(r, 0))));
            from = Some(key_of(r, n.saturating_sub(1)));
        }
        ranges.push((from, None));
        let cache = CachedStore::default();
        for (r, &n) in covers {
            if n > 1 {
                cache.set_floor(*r, n - 1);
            }
        }
        for (_, value) in db::ranges(db, LOG, &ranges).await? {
            let ok = Entry::decode(&bytes(&value), limits).ok().is_some_and(|e| cache.load_entry(&e).is_ok());
            if !ok {
                return Ok(None);
            }
        }
        // A covered replica whose last covered record is missing: the snapshot covers
        // entries the log lost, and the replica replays the log alone.
        let heads = cache.heads()?;
        if covers.iter().any(|(r, &n)| heads.get(r).copied().unwrap_or(0) < n) {
            return Ok(None);
        }
        Ok(Some(cache))
    }

    async fn open_full(db: &IdbDatabase, limits: &Limits) -> Result<(CachedStore, Option<String>), OpfsError> {
        let cache = CachedStore::default();
        let mut recovered = None;
        let mut broken: Option<String> = None;
        for (key, value) in db::all(db, LOG).await? {
            let replica = key.split(':').next().unwrap_or_default().to_owned();
            if broken.as_deref() == Some(replica.as_str()) {
                continue;
            }
            let ok = Entry::decode(&bytes(&value), limits)
                .map_err(|e| e.to_string())
                .and_then(|entry| cache.load_entry(&entry).map_err(|e| e.to_string()));
            if let Err(reason) = ok {
                tracing::warn!(%key, %reason, "dropping a damaged IndexedDB log record and what follows it");
                recovered = Some(format!("dropped {key} and later entries of its replica: {reason}"));
                broken = Some(replica);
            }
        }
        Ok((cache, recovered))
    }

    /// Reads into the cache every log record from `want`'s seqs on that opening left in
    /// the database, per replica (one key range each). A record that does not decode is
    /// an error here, not cut: it may be an acknowledged entry.
    pub async fn load(&mut self, want: &VersionVector) -> Result<(), OpfsError> {
        let floors = self.cache.floors();
        let need: Vec<(ReplicaId, u64, u64)> =
            want.iter().filter_map(|(r, &from)| floors.get(r).filter(|&&base| from < base).map(|&base| (*r, from, base))).collect();
        if need.is_empty() {
            return Ok(());
        }
        let ranges: Vec<_> = need.iter().map(|(r, from, to)| (Some(key_of(r, *from)), Some(key_of(r, *to)))).collect();
        let records = db::ranges(&self.db, LOG, &ranges).await?;
        let mut found: Vec<Vec<Entry>> = need.iter().map(|_| Vec::new()).collect();
        for (key, value) in records {
            let e = Entry::decode(&bytes(&value), &self.limits).map_err(|e| OpfsError::Store(format!("log record {key} is damaged: {e}")))?;
            if let Some(k) = need.iter().position(|(r, _, _)| *r == e.header.replica) {
                found[k].push(e);
            }
        }
        for ((r, from, to), entries) in need.into_iter().zip(found) {
            if entries.len() as u64 != to - from {
                return Err(OpfsError::Store(format!("the database holds {} of the entries of {r} from seq {from} to {to}", entries.len())));
            }
            self.cache.prepend(r, entries)?;
        }
        Ok(())
    }

    /// [`IdbStore::load`] of every record opening left in the database.
    pub async fn load_all(&mut self) -> Result<(), OpfsError> {
        let want = self.cache.whole();
        self.load(&want).await
    }

    pub fn cache(&self) -> CachedStore {
        self.cache.clone()
    }

    pub fn recovered(&self) -> Option<&str> {
        self.recovered.as_deref()
    }

    pub fn has_pending(&self) -> bool {
        self.cache.has_pending()
    }

    /// Closes the database connection (a pending delete of the database waits for it).
    pub fn close(&self) {
        self.db.close();
    }

    /// Writes everything queued in one transaction; returns how many writes it made.
    /// After an error nothing of the batch is stored and the cache is ahead: reopen.
    pub async fn flush(&mut self) -> Result<usize, OpfsError> {
        let writes = self.cache.take_pending();
        if writes.is_empty() {
            return Ok(0);
        }
        let tx = db::transaction(&self.db, &[LOG, SNAPSHOT, META], true)?;
        let (log, snap, meta) = (db::store(&tx, LOG)?, db::store(&tx, SNAPSHOT)?, db::store(&tx, META)?);
        let put = |s: &web_sys::IdbObjectStore, key: &str, b: &[u8]| -> Result<(), OpfsError> {
            s.put_with_key(&Uint8Array::from(b).into(), &key.into()).map_err(crate::opfs::fs::FsError::from)?;
            Ok(())
        };
        for w in &writes {
            match w {
                Write::Append(e) => put(&log, &log_key(e), &e.encode())?,
                Write::Snapshot(b) => put(&snap, "current", b)?,
                Write::Meta(k, b) => put(&meta, k, b)?,
            }
        }
        db::committed(&tx).await?;
        Ok(writes.len())
    }
}

/// Deletes the database `name`.
pub async fn destroy(name: &str) -> Result<(), OpfsError> {
    Ok(db::delete_database(name).await?)
}
