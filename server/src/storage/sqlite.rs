//! SQLite storage: one file in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a power cut. One writer connection (SQLite serialises writers
//! anyway) and a few readers, which WAL lets run beside the writer.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use stead_core::hlc::Hlc;
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{ChainTip, Entry, Hash, Limits, VersionVector};

use super::pool::{Pool, Pooled};
use super::{Backend, PutBlob, Remote, StoredMembers, WriteTx, hash32, id16, trim_bytes};
use crate::error::Result;

const SCHEMA_VERSION: i64 = 1;

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
            conn.execute_batch(&format!("BEGIN; {MIGRATION_1} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))?;
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
