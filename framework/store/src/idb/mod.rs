//! The IndexedDB adapter of stead-core's `Store`: the fallback for browsers whose
//! workers cannot write OPFS.
//!
//! One database per store, with three object stores: `log` (key
//! `<replica hex>:<seq, 20 digits>`, value the encoded entry), `snapshot` (key
//! `current`) and `meta` (key = the meta key). A flush writes every queued write in one
//! readwrite transaction and waits for its `complete` event, so a flush lands whole or
//! not at all. On open, a record that does not decode, or that does not follow its
//! replica's previous entry, ends that replica's log there (reported, not fatal).

pub mod db;

use js_sys::Uint8Array;
use stead_core::log::{Entry, Limits};
use stead_core::store::{MemStore, Store};
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
}

fn log_key(entry: &Entry) -> String {
    format!("{}:{:020}", hex::encode(entry.header.replica.as_bytes()), entry.header.seq)
}

fn bytes(v: &JsValue) -> Vec<u8> {
    Uint8Array::new(v).to_vec()
}

impl IdbStore {
    /// Opens (creating) the database `name`, reading it into memory.
    pub async fn open(name: &str, limits: Limits) -> Result<IdbStore, OpfsError> {
        let db = db::open(name, &[LOG, SNAPSHOT, META]).await?;
        let mut mem = MemStore::new();
        let mut recovered = None;
        let mut broken: Option<String> = None;
        for (key, value) in db::all(&db, LOG).await? {
            let replica = key.split(':').next().unwrap_or_default().to_owned();
            if broken.as_deref() == Some(replica.as_str()) {
                continue;
            }
            let ok = Entry::decode(&bytes(&value), &limits)
                .map_err(|e| e.to_string())
                .and_then(|entry| mem.append(&entry).map_err(|e| e.to_string()));
            if let Err(reason) = ok {
                tracing::warn!(%key, %reason, "dropping a damaged IndexedDB log record and what follows it");
                recovered = Some(format!("dropped {key} and later entries of its replica: {reason}"));
                broken = Some(replica);
            }
        }
        if let Some(s) = db::get(&db, SNAPSHOT, "current").await? {
            mem.put_snapshot(&bytes(&s))?;
        }
        for (key, value) in db::all(&db, META).await? {
            mem.put_meta(&key, &bytes(&value))?;
        }
        Ok(IdbStore { db, cache: CachedStore::loaded(mem), recovered })
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
