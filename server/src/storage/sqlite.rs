//! SQLite storage: one file in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a power cut. One writer connection (SQLite serialises writers
//! anyway) and a few readers, which WAL lets run beside the writer.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use stead_core::hlc::Hlc;
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{ChainTip, Entry, Hash, Limits, VersionVector};

use super::pool::{Pool, Pooled};
use super::apps::{self, AppTx};
use super::{AppQuota, AppStore, Backend, Moved, NewVersion, PutBlob, PutFile, Remote, StoredApp, StoredMembers, StoredVersion, WriteTx, hash32, id16, trim_bytes};
use crate::error::Result;

const SCHEMA_VERSION: i64 = 2;

const MIGRATION_1: &str = "
CREATE TABLE IF NOT EXISTS spaces (
    id BLOB PRIMARY KEY,
    members BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    space BLOB NOT NULL,
    replica BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    hash BLOB NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (space, replica, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    space BLOB NOT NULL,
    hash BLOB NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (space, hash)
);
";

/// The app registry (`storage::AppStore`).
const MIGRATION_2: &str = "
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    app_id BLOB NOT NULL,
    current TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS app_versions (
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    manifest BLOB NOT NULL,
    worker BLOB NOT NULL,
    worker_size INTEGER NOT NULL,
    signature BLOB NOT NULL,
    published INTEGER NOT NULL,
    PRIMARY KEY (app, version)
);
CREATE TABLE IF NOT EXISTS app_version_files (
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    sha BLOB NOT NULL,
    PRIMARY KEY (app, version, sha)
);
CREATE INDEX IF NOT EXISTS app_version_files_sha ON app_version_files (sha);
CREATE TABLE IF NOT EXISTS app_files (
    sha BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS app_pending (
    app TEXT NOT NULL,
    sha BLOB NOT NULL,
    size INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (app, sha)
);
CREATE INDEX IF NOT EXISTS app_pending_sha ON app_pending (sha);
";

pub struct Sqlite {
    writer: Pool<Connection>,
    readers: Pool<Connection>,
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsynced at every commit, so an acknowledged entry is on disk.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl Sqlite {
    /// Opens (creating and migrating on first start) the database file at `path`.
    pub fn open(path: &Path) -> Result<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        let conn = connect(path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version < SCHEMA_VERSION {
            let first = if version < 1 { MIGRATION_1 } else { "" };
            conn.execute_batch(&format!("BEGIN; {first} {MIGRATION_2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))?;
        }
        let (wp, rp) = (path.to_path_buf(), path.to_path_buf());
        let writer = Pool::new(1, move || connect(&wp));
        let readers = Pool::new(8, move || connect(&rp));
        Ok(Sqlite { writer, readers })
    }
}

struct SqliteTx {
    conn: Option<Pooled<Connection>>,
}

impl SqliteTx {
    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("a transaction holds its connection until it ends")
    }
}

impl WriteTx for SqliteTx {
    fn members_version(&mut self, space: SpaceId) -> Result<i64> {
        let v = self
            .conn()
            .prepare_cached("SELECT version FROM spaces WHERE id = ?1")?
            .query_row(params![&space.0[..]], |r| r.get(0))
            .optional()?;
        Ok(v.unwrap_or(0))
    }

    fn tip(&mut self, space: SpaceId, replica: ReplicaId) -> Result<Option<ChainTip>> {
        let row = self
            .conn()
            .prepare_cached("SELECT seq, hash, hlc FROM entries WHERE space = ?1 AND replica = ?2 ORDER BY seq DESC LIMIT 1")?
            .query_row(params![&space.0[..], &replica.0[..]], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()?;
        row.map(|(seq, hash, hlc)| {
            Ok(ChainTip { next_seq: seq as u64 + 1, last_hash: hash32(&hash)?, last_hlc: Hlc::from_u64(hlc as u64) })
        })
        .transpose()
    }

    fn hash_at(&mut self, space: SpaceId, replica: ReplicaId, seq: u64) -> Result<Option<Hash>> {
        let h = self
            .conn()
            .prepare_cached("SELECT hash FROM entries WHERE space = ?1 AND replica = ?2 AND seq = ?3")?
            .query_row(params![&space.0[..], &replica.0[..], seq as i64], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        h.map(|h| hash32(&h)).transpose()
    }

    fn insert(&mut self, entry: &Entry, hash: &Hash) -> Result<()> {
        let h = &entry.header;
        self.conn()
            .prepare_cached("INSERT INTO entries (space, replica, seq, hlc, hash, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
            .execute(params![&h.space.0[..], &h.replica.0[..], h.seq as i64, h.hlc.to_u64() as i64, &hash[..], entry.encode()])?;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        let conn = self.conn.take().expect("a transaction is committed once");
        match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.execute_batch("ROLLBACK").is_err()
        {
            conn.discard();
        }
    }
}

impl Backend for Sqlite {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn members(&self, space: SpaceId) -> Result<Option<StoredMembers>> {
        let conn = self.readers.get()?;
        let row = conn
            .prepare_cached("SELECT version, members FROM spaces WHERE id = ?1")?
            .query_row(params![&space.0[..]], |r| Ok(StoredMembers { version: r.get(0)?, bytes: r.get(1)? }))
            .optional()?;
        Ok(row)
    }

    fn members_version(&self, space: SpaceId) -> Result<Option<i64>> {
        let conn = self.readers.get()?;
        let v = conn.prepare_cached("SELECT version FROM spaces WHERE id = ?1")?.query_row(params![&space.0[..]], |r| r.get(0)).optional()?;
        Ok(v)
    }

    fn put_members(&self, space: SpaceId, new: &[u8], check: &dyn Fn(Option<&[u8]>) -> Result<()>) -> Result<i64> {
        let mut conn = self.writer.get()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let old: Option<(i64, Vec<u8>)> = tx
            .query_row("SELECT version, members FROM spaces WHERE id = ?1", params![&space.0[..]], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        check(old.as_ref().map(|(_, b)| b.as_slice()))?;
        let version = old.map_or(1, |(v, _)| v + 1);
        tx.execute(
            "INSERT INTO spaces (id, members, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET members = excluded.members, version = excluded.version",
            params![&space.0[..], new, version],
        )?;
        tx.commit()?;
        Ok(version)
    }

    fn begin(&self) -> Result<Box<dyn WriteTx>> {
        let conn = self.writer.get()?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Box::new(SqliteTx { conn: Some(conn) }))
    }

    fn serial_writes(&self) -> bool {
        true
    }

    fn vector(&self, space: SpaceId) -> Result<VersionVector> {
        let conn = self.readers.get()?;
        let mut stmt = conn.prepare_cached("SELECT replica, MAX(seq) FROM entries WHERE space = ?1 GROUP BY replica")?;
        let rows = stmt.query_map(params![&space.0[..]], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        let mut vv = VersionVector::new();
        for row in rows {
            let (rid, max) = row?;
            vv.insert(ReplicaId(id16(&rid)?), max as u64 + 1);
        }
        Ok(vv)
    }

    fn read(&self, space: SpaceId, replica: ReplicaId, from_seq: u64, max: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        let conn = self.readers.get()?;
        let mut stmt = conn.prepare_cached(
            "SELECT bytes FROM entries WHERE space = ?1 AND replica = ?2 AND seq >= ?3 ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![&space.0[..], &replica.0[..], from_seq as i64, max as i64], |r| r.get::<_, Vec<u8>>(0))?;
        let limits = Limits { max_payload: usize::MAX };
        let mut out = Vec::new();
        let mut total = 0;
        for row in rows {
            let e = Entry::decode(&row?, &limits)?;
            total += e.encoded_len();
            out.push(e);
            if total > max_bytes {
                break;
            }
        }
        trim_bytes(&mut out, max_bytes);
        Ok(out)
    }

    fn put_blob(&self, space: SpaceId, hash: &[u8; 32], bytes: &[u8], quota: u64) -> Result<PutBlob> {
        // The writer connection is the only one that writes, so the sum cannot move
        // between the check and the insert.
        let conn = self.writer.get()?;
        let n = conn
            .prepare_cached(
                "INSERT INTO blobs (space, hash, bytes) SELECT ?1, ?2, ?3
                 WHERE (SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM blobs WHERE space = ?1) + ?4 <= ?5
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![&space.0[..], &hash[..], bytes, bytes.len() as i64, i64::try_from(quota).unwrap_or(i64::MAX)])?;
        if n == 1 {
            return Ok(PutBlob::Created);
        }
        let exists = conn
            .prepare_cached("SELECT 1 FROM blobs WHERE space = ?1 AND hash = ?2")?
            .exists(params![&space.0[..], &hash[..]])?;
        Ok(if exists { PutBlob::Exists } else { PutBlob::OverQuota })
    }

    fn blob(&self, space: SpaceId, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let conn = self.readers.get()?;
        let b = conn
            .prepare_cached("SELECT bytes FROM blobs WHERE space = ?1 AND hash = ?2")?
            .query_row(params![&space.0[..], &hash[..]], |r| r.get(0))
            .optional()?;
        Ok(b)
    }

    fn listen(&self, _timeout: std::time::Duration) -> Option<Result<Vec<Remote>>> {
        None
    }
}

/// The columns [`VERSION_COLUMNS`] names, as read.
type VersionRow = (String, Vec<u8>, Vec<u8>, i64, Vec<u8>, i64, i64);

fn row_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
}

pub(crate) fn to_version(row: VersionRow) -> Result<StoredVersion> {
    let (version, manifest, worker, worker_size, signature, published, seq) = row;
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| crate::Error::Core(stead_core::Error::Storage("stored signature is not 64 bytes".into())))?;
    Ok(StoredVersion {
        version,
        manifest,
        worker_sha256: hash32(&worker)?,
        worker_size: worker_size as u64,
        signature,
        published_ms: published as u64,
        seq,
    })
}

const VERSION_COLUMNS: &str = "version, manifest, worker, worker_size, signature, published, seq";

struct SqliteAppTx<'a>(&'a rusqlite::Transaction<'a>, u64);

impl AppTx for SqliteAppTx<'_> {
    fn current(&mut self, app: &str) -> Result<Option<Option<String>>> {
        Ok(self.0.query_row("SELECT current FROM apps WHERE name = ?1", params![app], |r| r.get(0)).optional()?)
    }

    fn version_worker(&mut self, app: &str, version: &str) -> Result<Option<[u8; 32]>> {
        let worker: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT worker FROM app_versions WHERE app = ?1 AND version = ?2")?
            .query_row(params![app, version], |r| r.get(0))
            .optional()?;
        worker.map(|w| hash32(&w)).transpose()
    }

    fn file_size(&mut self, sha256: &[u8; 32]) -> Result<Option<u64>> {
        let n: Option<i64> = self.0.prepare_cached("SELECT size FROM app_files WHERE sha = ?1")?.query_row(params![&sha256[..]], |r| r.get(0)).optional()?;
        Ok(n.map(|n| n as u64))
    }

    fn next_seq(&mut self, app: &str) -> Result<i64> {
        Ok(self.0.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM app_versions WHERE app = ?1", params![app], |r| r.get(0))?)
    }

    fn insert_version(&mut self, new: &NewVersion, seq: i64) -> Result<()> {
        let v = &new.version;
        self.0.execute(
            "INSERT INTO app_versions (app, version, seq, manifest, worker, worker_size, signature, published)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![new.app, v.version, seq, v.manifest, &v.worker_sha256[..], v.worker_size as i64, &v.signature[..], self.1 as i64],
        )?;
        let mut stmt = self.0.prepare_cached("INSERT OR IGNORE INTO app_version_files (app, version, sha) VALUES (?1, ?2, ?3)")?;
        for (sha, _) in &new.files {
            stmt.execute(params![new.app, v.version, &sha[..]])?;
        }
        Ok(())
    }

    fn set_current(&mut self, app: &str, version: &str) -> Result<()> {
        self.0.execute("UPDATE apps SET current = ?2 WHERE name = ?1", params![app, version])?;
        Ok(())
    }

    fn version_names(&mut self, app: &str) -> Result<Vec<String>> {
        let mut stmt = self.0.prepare_cached("SELECT version FROM app_versions WHERE app = ?1 ORDER BY seq DESC")?;
        let rows = stmt.query_map(params![app], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_version(&mut self, app: &str, version: &str) -> Result<Vec<[u8; 32]>> {
        let mut stmt = self.0.prepare_cached("SELECT sha FROM app_version_files WHERE app = ?1 AND version = ?2")?;
        let shas: Vec<Vec<u8>> = stmt.query_map(params![app, version], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        self.0.execute("DELETE FROM app_version_files WHERE app = ?1 AND version = ?2", params![app, version])?;
        self.0.execute("DELETE FROM app_versions WHERE app = ?1 AND version = ?2", params![app, version])?;
        shas.iter().map(|s| hash32(s)).collect()
    }

    fn app_bytes(&mut self, app: &str) -> Result<u64> {
        let n: i64 = self.0.query_row(
            "SELECT COALESCE(SUM(size), 0) FROM app_files WHERE sha IN (SELECT sha FROM app_version_files WHERE app = ?1)",
            params![app],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn clear_pending(&mut self, app: &str, files: &[([u8; 32], u64)]) -> Result<()> {
        let mut stmt = self.0.prepare_cached("DELETE FROM app_pending WHERE app = ?1 AND sha = ?2")?;
        for (sha, _) in files {
            stmt.execute(params![app, &sha[..]])?;
        }
        Ok(())
    }

    fn delete_unreferenced(&mut self, files: &[[u8; 32]], now_ms: u64) -> Result<()> {
        let mut stmt = self.0.prepare_cached(
            "DELETE FROM app_files WHERE sha = ?1
               AND NOT EXISTS (SELECT 1 FROM app_version_files WHERE sha = ?1)
               AND NOT EXISTS (SELECT 1 FROM app_pending WHERE sha = ?1 AND expires > ?2)",
        )?;
        for sha in files {
            stmt.execute(params![&sha[..], now_ms as i64])?;
        }
        Ok(())
    }
}

impl Sqlite {
    /// Runs `f` in one write transaction, committed only when it returns `Moved::Done`.
    fn move_current(&self, f: impl FnOnce(&mut dyn AppTx) -> Result<Moved>) -> Result<Moved> {
        let mut conn = self.writer.get()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let moved = f(&mut SqliteAppTx(&tx, now_ms()))?;
        if matches!(moved, Moved::Done { .. }) {
            tx.commit()?;
        }
        Ok(moved)
    }
}

fn now_ms() -> u64 {
    use stead_core::env::Clock;
    stead_core::env::SystemClock.now_ms()
}

impl AppStore for Sqlite {
    fn app(&self, name: &str) -> Result<Option<StoredApp>> {
        let conn = self.readers.get()?;
        let row = conn
            .prepare_cached("SELECT app_id, current FROM apps WHERE name = ?1")?
            .query_row(params![name], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<String>>(1)?)))
            .optional()?;
        row.map(|(id, current)| Ok(StoredApp { name: name.to_owned(), app_id: hash32(&id)?, current })).transpose()
    }

    fn apps(&self) -> Result<Vec<StoredApp>> {
        let conn = self.readers.get()?;
        let mut stmt = conn.prepare_cached("SELECT name, app_id, current FROM apps WHERE current IS NOT NULL ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Option<String>>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, id, current) = row?;
            out.push(StoredApp { name, app_id: hash32(&id)?, current });
        }
        Ok(out)
    }

    fn claim_app(&self, name: &str, app_id: &[u8; 32], now_ms: u64) -> Result<StoredApp> {
        let conn = self.writer.get()?;
        conn.execute(
            "INSERT INTO apps (name, app_id, current, created) VALUES (?1, ?2, NULL, ?3) ON CONFLICT (name) DO NOTHING",
            params![name, &app_id[..], now_ms as i64],
        )?;
        drop(conn);
        self.app(name)?.ok_or(crate::Error::NotFound)
    }

    fn missing_files(&self, app: &str, wanted: &[([u8; 32], u64)], now_ms: u64, expires_ms: u64, max_pending: u64) -> Result<Result<Vec<[u8; 32]>, u64>> {
        let mut conn = self.writer.get()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let expired: Vec<Vec<u8>> = tx
            .prepare_cached("DELETE FROM app_pending WHERE expires <= ?1 RETURNING sha")?
            .query_map(params![now_ms as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let expired: Vec<[u8; 32]> = expired.iter().map(|s| hash32(s)).collect::<Result<_>>()?;
        SqliteAppTx(&tx, now_ms).delete_unreferenced(&expired, now_ms)?;
        let mut missing = Vec::new();
        for (sha, size) in wanted {
            if tx.prepare_cached("SELECT 1 FROM app_files WHERE sha = ?1")?.exists(params![&sha[..]])? {
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO app_pending (app, sha, size, expires) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, sha) DO UPDATE SET size = excluded.size, expires = excluded.expires",
            )?
            .execute(params![app, &sha[..], *size as i64, expires_ms as i64])?;
            missing.push(*sha);
        }
        let pending: i64 = tx.query_row("SELECT COALESCE(SUM(size), 0) FROM app_pending WHERE app = ?1 AND expires > ?2", params![app, now_ms as i64], |r| r.get(0))?;
        if pending as u64 > max_pending {
            return Ok(Err(pending as u64));
        }
        tx.commit()?;
        Ok(Ok(missing))
    }

    fn pending_size(&self, app: &str, sha256: &[u8; 32], now_ms: u64) -> Result<Option<u64>> {
        let conn = self.readers.get()?;
        let size: Option<i64> = conn
            .prepare_cached("SELECT size FROM app_pending WHERE app = ?1 AND sha = ?2 AND expires > ?3")?
            .query_row(params![app, &sha256[..], now_ms as i64], |r| r.get(0))
            .optional()?;
        Ok(size.map(|s| s as u64))
    }

    fn put_file(&self, app: &str, sha256: &[u8; 32], bytes: &[u8], now_ms: u64) -> Result<PutFile> {
        // The writer connection is the only one that writes, so the announcement cannot be
        // swept between the check and the insert.
        let conn = self.writer.get()?;
        let n = conn
            .prepare_cached(
                "INSERT INTO app_files (sha, size, bytes) SELECT ?1, ?2, ?3
                 WHERE EXISTS (SELECT 1 FROM app_pending WHERE app = ?4 AND sha = ?1 AND expires > ?5)
                 ON CONFLICT (sha) DO NOTHING",
            )?
            .execute(params![&sha256[..], bytes.len() as i64, bytes, app, now_ms as i64])?;
        if n == 1 {
            return Ok(PutFile::Created);
        }
        let exists = conn.prepare_cached("SELECT 1 FROM app_files WHERE sha = ?1")?.exists(params![&sha256[..]])?;
        Ok(if exists { PutFile::Exists } else { PutFile::NotAnnounced })
    }

    fn file(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let conn = self.readers.get()?;
        Ok(conn.prepare_cached("SELECT bytes FROM app_files WHERE sha = ?1")?.query_row(params![&sha256[..]], |r| r.get(0)).optional()?)
    }

    fn publish(&self, new: &NewVersion, quota: AppQuota) -> Result<Moved> {
        self.move_current(|tx| apps::publish(tx, new, quota, now_ms()))
    }

    fn rollback(&self, app: &str, to: &str, previous: Option<&str>) -> Result<Moved> {
        self.move_current(|tx| apps::rollback(tx, app, to, previous))
    }

    fn versions(&self, app: &str) -> Result<Vec<StoredVersion>> {
        let conn = self.readers.get()?;
        let mut stmt = conn.prepare_cached(&format!("SELECT {VERSION_COLUMNS} FROM app_versions WHERE app = ?1 ORDER BY seq DESC"))?;
        let rows = stmt.query_map(params![app], row_version)?;
        rows.map(|r| to_version(r?)).collect()
    }

    fn version(&self, app: &str, version: &str) -> Result<Option<StoredVersion>> {
        let conn = self.readers.get()?;
        let row = conn
            .prepare_cached(&format!("SELECT {VERSION_COLUMNS} FROM app_versions WHERE app = ?1 AND version = ?2"))?
            .query_row(params![app, version], row_version)
            .optional()?;
        row.map(to_version).transpose()
    }
}
