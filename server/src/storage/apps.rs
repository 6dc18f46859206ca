//! The app registry's rules over storage, written once for both databases: each backend
//! gives one transaction's primitive reads and writes ([`AppTx`]); the compare-and-swap of
//! `current`, the quota and the trimming of old versions live here.

use super::{AppQuota, Moved, NewVersion};
use crate::error::Result;

/// One write transaction on the registry's tables. Registry writes are serialised (the
/// SQLite writer connection; a transaction-scoped advisory lock on PostgreSQL), so what
/// one reads stays true until it commits.
pub(crate) trait AppTx {
    /// The app's current version (`Some(None)`: the app exists with none yet).
    fn current(&mut self, app: &str) -> Result<Option<Option<String>>>;
    /// The worker script (SHA-256) a stored version was published with; `None` when the
    /// app has no such version.
    fn version_worker(&mut self, app: &str, version: &str) -> Result<Option<[u8; 32]>>;
    /// The size of a stored file.
    fn file_size(&mut self, sha256: &[u8; 32]) -> Result<Option<u64>>;
    /// The next version's order within the app.
    fn next_seq(&mut self, app: &str) -> Result<i64>;
    fn insert_version(&mut self, new: &NewVersion, seq: i64) -> Result<()>;
    fn set_current(&mut self, app: &str, version: &str) -> Result<()>;
    /// The app's versions, newest first.
    fn version_names(&mut self, app: &str) -> Result<Vec<String>>;
    /// Deletes a version and its file list; returns the digests it listed.
    fn delete_version(&mut self, app: &str, version: &str) -> Result<Vec<[u8; 32]>>;
    /// Bytes of the distinct files the app's versions list.
    fn app_bytes(&mut self, app: &str) -> Result<u64>;
    /// Forgets the app's pending uploads of these digests (now listed by a version).
    fn clear_pending(&mut self, app: &str, files: &[([u8; 32], u64)]) -> Result<()>;
    /// Deletes those of these files that no version lists and no pending upload names.
    fn delete_unreferenced(&mut self, files: &[[u8; 32]], now_ms: u64) -> Result<()>;
}

/// Publishes `new` in `tx` (which the caller commits only on [`Moved::Done`]).
pub(crate) fn publish(tx: &mut dyn AppTx, new: &NewVersion, quota: AppQuota, now_ms: u64) -> Result<Moved> {
    let Some(current) = tx.current(&new.app)? else { return Ok(Moved::NotFound) };
    if current != new.previous {
        return Ok(Moved::Conflict { current });
    }
    let version = &new.version.version;
    let stored = tx.version_worker(&new.app, version)?;
    if stored.is_some_and(|w| w != new.version.worker_sha256) {
        // A version is its file list and its worker: taking the current one again with
        // another worker would report a publication that serves nothing new.
        return Ok(Moved::OtherWorker);
    }
    if stored.is_none() {
        let mut missing = Vec::new();
        for (sha, declared) in &new.files {
            match tx.file_size(sha)? {
                None => missing.push(*sha),
                Some(stored) if stored != *declared => return Ok(Moved::WrongSize { sha256: *sha, stored, declared: *declared }),
                Some(_) => {}
            }
        }
        if !missing.is_empty() {
            return Ok(Moved::MissingFiles(missing));
        }
        let seq = tx.next_seq(&new.app)?;
        tx.insert_version(new, seq)?;
    }
    tx.set_current(&new.app, version)?;
    let mut trimmed = Vec::new();
    let mut freed = Vec::new();
    for old in tx.version_names(&new.app)?.into_iter().skip(quota.max_versions.max(1)) {
        if old != *version {
            freed.extend(tx.delete_version(&new.app, &old)?);
            trimmed.push(old);
        }
    }
    // Past the byte quota the oldest versions go too (never the current): an app whose
    // versions grew would otherwise be refused every publication from then on.
    let mut bytes = tx.app_bytes(&new.app)?;
    if bytes > quota.max_app_bytes {
        let mut older: Vec<String> = tx.version_names(&new.app)?.into_iter().filter(|v| v != version).collect();
        while bytes > quota.max_app_bytes {
            let Some(oldest) = older.pop() else { break };
            freed.extend(tx.delete_version(&new.app, &oldest)?);
            trimmed.push(oldest);
            bytes = tx.app_bytes(&new.app)?;
        }
    }
    if bytes > quota.max_app_bytes {
        return Ok(Moved::OverQuota { bytes });
    }
    tx.clear_pending(&new.app, &new.files)?;
    freed.sort_unstable();
    freed.dedup();
    tx.delete_unreferenced(&freed, now_ms)?;
    Ok(Moved::Done { trimmed })
}

/// Moves `current` of `app` back (or forward) to its version `to`.
pub(crate) fn rollback(tx: &mut dyn AppTx, app: &str, to: &str, previous: Option<&str>) -> Result<Moved> {
    let Some(current) = tx.current(app)? else { return Ok(Moved::NotFound) };
    if current.as_deref() != previous {
        return Ok(Moved::Conflict { current });
    }
    if tx.version_worker(app, to)?.is_none() {
        return Ok(Moved::NotFound);
    }
    tx.set_current(app, to)?;
    Ok(Moved::Done { trimmed: Vec::new() })
}
