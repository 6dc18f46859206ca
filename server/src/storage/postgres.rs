//! PostgreSQL storage, for several stateless server nodes on one database.
//!
//! Same tables as SQLite. A write transaction takes a transaction-scoped advisory lock per
//! (space, replica) before reading the chain tip, so two nodes never extend one chain at
//! once. Each commit that stored entries sends, per space,
//! `NOTIFY stead_entries, '<space>:<node>:<replica>=<next seq>,…'`; every node listens,
//! advances its in-memory version vector of that space and wakes its own connections of
//! it, which read the new entries from the database. A payload without the list (too many
//! replicas for one notification) tells the listener to read the vector again.
//!
//! Any login to the database can send a notification, so its numbers are not believed:
//! they only name the replicas to look at, whose next seqs are then read from the
//! `entries` table (one index probe each). A payload naming more than
//! [`MAX_NOTIFIED_REPLICAS`] reads the whole vector again instead.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};
use stead_core::hlc::Hlc;
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{ChainTip, Entry, Hash, Limits, VersionVector};

use super::pool::{Pool, Pooled};
use super::apps::{self, AppTx};
use super::{AppQuota, AppStore, Backend, Moved, NewVersion, PutBlob, PutFile, Remote, StoredApp, StoredMembers, StoredVersion, WriteTx, hash32, id16, trim_bytes};
use crate::error::Result;

const CHANNEL: &str = "stead_entries";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;

const MIGRATION: &str = "
CREATE TABLE IF NOT EXISTS spaces (
    id BYTEA PRIMARY KEY,
    members BYTEA NOT NULL,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    space BYTEA NOT NULL,
    replica BYTEA NOT NULL,
    seq BIGINT NOT NULL,
    hlc BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (space, replica, seq)
);
CREATE TABLE IF NOT EXISTS blobs (
    space BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (space, hash)
);
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    app_id BYTEA NOT NULL,
    current TEXT,
    created BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS app_versions (
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    seq BIGINT NOT NULL,
    manifest BYTEA NOT NULL,
    worker BYTEA NOT NULL,
    worker_size BIGINT NOT NULL,
    signature BYTEA NOT NULL,
    published BIGINT NOT NULL,
    PRIMARY KEY (app, version)
);
CREATE TABLE IF NOT EXISTS app_version_files (
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    sha BYTEA NOT NULL,
    PRIMARY KEY (app, version, sha)
);
CREATE INDEX IF NOT EXISTS app_version_files_sha ON app_version_files (sha);
CREATE TABLE IF NOT EXISTS app_files (
    sha BYTEA PRIMARY KEY,
    size BIGINT NOT NULL,
    bytes BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS app_pending (
    app TEXT NOT NULL,
    sha BYTEA NOT NULL,
    size BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (app, sha)
);
CREATE INDEX IF NOT EXISTS app_pending_sha ON app_pending (sha);
";

/// The advisory lock every registry write takes for its transaction: publications are
/// rare, and one at a time no file can be swept while another app's version comes to
/// list it.
const REGISTRY_LOCK: i64 = 7465616401;

pub struct Postgres {
    url: String,
    node: String,
    pool: Pool<Client>,
    listener: Mutex<Option<Client>>,
}

impl Postgres {
    /// Connects, and creates the tables on first start (under an advisory lock, so nodes
    /// starting together do not race).
    pub fn open(url: &str, node: [u8; 16]) -> Result<Postgres> {
        let mut client = Client::connect(url, NoTls)?;
        client.batch_execute(&format!("SELECT pg_advisory_lock(7465616400); {MIGRATION} SELECT pg_advisory_unlock(7465616400);"))?;
        let u = url.to_owned();
        let pool = Pool::new(16, move || Ok(Client::connect(&u, NoTls)?));
        Ok(Postgres { url: url.to_owned(), node: hex::encode(node), pool, listener: Mutex::new(None) })
    }
}

struct PgTx {
    conn: Option<Pooled<Client>>,
    node: String,
    /// Space → replica → next seq, of what this transaction stored.
    wrote: BTreeMap<SpaceId, VersionVector>,
}

impl PgTx {
    fn conn(&mut self) -> &mut Client {
        self.conn.as_mut().expect("a transaction holds its connection until it ends")
    }
}

fn chain_lock_key(space: SpaceId, replica: ReplicaId) -> i64 {
    let h = Sha256::new().chain_update(space.0).chain_update(replica.0).finalize();
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// The advisory lock taken while a blob of `space` is stored (a key no chain uses: a
/// chain's replica id is never a domain tag).
fn blob_lock_key(space: SpaceId) -> i64 {
    let h = Sha256::new().chain_update(b"stead-blobs").chain_update(space.0).finalize();
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

impl WriteTx for PgTx {
    fn members_version(&mut self, space: SpaceId) -> Result<i64> {
        let row = self.conn().query_opt("SELECT version FROM spaces WHERE id = $1", &[&&space.0[..]])?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    fn tip(&mut self, space: SpaceId, replica: ReplicaId) -> Result<Option<ChainTip>> {
        let key = chain_lock_key(space, replica);
        self.conn().execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
        let row = self.conn().query_opt(
            "SELECT seq, hash, hlc FROM entries WHERE space = $1 AND replica = $2 ORDER BY seq DESC LIMIT 1",
            &[&&space.0[..], &&replica.0[..]],
        )?;
        row.map(|r| {
            let (seq, hash, hlc): (i64, Vec<u8>, i64) = (r.get(0), r.get(1), r.get(2));
            Ok(ChainTip { next_seq: seq as u64 + 1, last_hash: hash32(&hash)?, last_hlc: Hlc::from_u64(hlc as u64) })
        })
        .transpose()
    }

    fn hash_at(&mut self, space: SpaceId, replica: ReplicaId, seq: u64) -> Result<Option<Hash>> {
        let row = self.conn().query_opt(
            "SELECT hash FROM entries WHERE space = $1 AND replica = $2 AND seq = $3",
            &[&&space.0[..], &&replica.0[..], &(seq as i64)],
        )?;
        row.map(|r| hash32(&r.get::<_, Vec<u8>>(0))).transpose()
    }

    fn insert(&mut self, entry: &Entry, hash: &Hash) -> Result<()> {
        let h = &entry.header;
        let space = h.space;
        self.conn().execute(
            "INSERT INTO entries (space, replica, seq, hlc, hash, bytes) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&&space.0[..], &&h.replica.0[..], &(h.seq as i64), &(h.hlc.to_u64() as i64), &&hash[..], &entry.encode()],
        )?;
        let next = self.wrote.entry(space).or_default().entry(h.replica).or_insert(0);
        *next = (*next).max(h.seq + 1);
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        for (space, vector) in std::mem::take(&mut self.wrote) {
            let mut payload = format!("{}:{}:", hex::encode(space.0), self.node);
            for (i, (replica, next)) in vector.iter().enumerate() {
                if i > 0 {
                    payload.push(',');
                }
                payload.push_str(&format!("{}={next}", hex::encode(replica.0)));
            }
            if payload.len() > MAX_PAYLOAD {
                payload = format!("{}:{}", hex::encode(space.0), self.node);
            }
            self.conn().execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
        }
        let mut conn = self.conn.take().expect("a transaction is committed once");
        match conn.batch_execute("COMMIT") {
            Ok(()) => Ok(()),
            Err(e) => {
                conn.discard();
                Err(e.into())
            }
        }
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && conn.batch_execute("ROLLBACK").is_err()
        {
            conn.discard();
        }
    }
}

/// Runs `f` on a pooled client, dropping the client if the query failed on a closed
/// connection.
fn with<T>(pool: &Pool<Client>, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
    let mut conn = pool.get()?;
    let out = f(&mut conn);
    if out.is_err() && conn.is_closed() {
        conn.discard();
    }
    out
}

impl Backend for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn members(&self, space: SpaceId) -> Result<Option<StoredMembers>> {
        with(&self.pool, |c| {
            let row = c.query_opt("SELECT version, members FROM spaces WHERE id = $1", &[&&space.0[..]])?;
            Ok(row.map(|r| StoredMembers { version: r.get(0), bytes: r.get(1) }))
        })
    }

    fn members_version(&self, space: SpaceId) -> Result<Option<i64>> {
        with(&self.pool, |c| Ok(c.query_opt("SELECT version FROM spaces WHERE id = $1", &[&&space.0[..]])?.map(|r| r.get(0))))
    }

    fn put_members(&self, space: SpaceId, new: &[u8], check: &dyn Fn(Option<&[u8]>) -> Result<()>) -> Result<i64> {
        with(&self.pool, |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&chain_lock_key(space, ReplicaId([0; 16]))])?;
            let old = tx.query_opt("SELECT version, members FROM spaces WHERE id = $1", &[&&space.0[..]])?;
            let old: Option<(i64, Vec<u8>)> = old.map(|r| (r.get(0), r.get(1)));
            check(old.as_ref().map(|(_, b)| b.as_slice()))?;
            let version = old.map_or(1, |(v, _)| v + 1);
            tx.execute(
                "INSERT INTO spaces (id, members, version) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET members = excluded.members, version = excluded.version",
                &[&&space.0[..], &new, &version],
            )?;
            // Other nodes close the connections of devices this change removed.
            let payload = format!("{}:{}:{MEMBERS_CHANGED}", hex::encode(space.0), self.node);
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
            tx.commit()?;
            Ok(version)
        })
    }

    fn begin(&self) -> Result<Box<dyn WriteTx>> {
        let mut conn = self.pool.get()?;
        if let Err(e) = conn.batch_execute("BEGIN") {
            conn.discard();
            return Err(e.into());
        }
        Ok(Box::new(PgTx { conn: Some(conn), node: self.node.clone(), wrote: BTreeMap::new() }))
    }

    fn serial_writes(&self) -> bool {
        false
    }

    fn vector(&self, space: SpaceId) -> Result<VersionVector> {
        with(&self.pool, |c| {
            let rows = c.query("SELECT replica, MAX(seq) FROM entries WHERE space = $1 GROUP BY replica", &[&&space.0[..]])?;
            let mut vv = VersionVector::new();
            for r in rows {
                let (rid, max): (Vec<u8>, i64) = (r.get(0), r.get(1));
                vv.insert(ReplicaId(id16(&rid)?), max as u64 + 1);
            }
            Ok(vv)
        })
    }

    fn read(&self, space: SpaceId, replica: ReplicaId, from_seq: u64, max: usize, max_bytes: usize) -> Result<Vec<Entry>> {
        with(&self.pool, |c| {
            let rows = c.query(
                "SELECT bytes FROM entries WHERE space = $1 AND replica = $2 AND seq >= $3 ORDER BY seq LIMIT $4",
                &[&&space.0[..], &&replica.0[..], &(from_seq as i64), &(max as i64)],
            )?;
            let limits = Limits { max_payload: usize::MAX };
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(Entry::decode(r.get::<_, &[u8]>(0), &limits)?);
            }
            trim_bytes(&mut out, max_bytes);
            Ok(out)
        })
    }

    fn put_blob(&self, space: SpaceId, hash: &[u8; 32], bytes: &[u8], quota: u64) -> Result<PutBlob> {
        with(&self.pool, |c| {
            let mut tx = c.transaction()?;
            // One blob write per space at a time, across nodes: the sum cannot move between
            // the check and the insert.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&blob_lock_key(space)])?;
            let n = tx.execute(
                "INSERT INTO blobs (space, hash, bytes) SELECT $1, $2, $3
                 WHERE (SELECT COALESCE(SUM(octet_length(bytes)), 0) FROM blobs WHERE space = $1) + $4 <= $5
                 ON CONFLICT DO NOTHING",
                &[&&space.0[..], &&hash[..], &bytes, &(bytes.len() as i64), &i64::try_from(quota).unwrap_or(i64::MAX)],
            )?;
            let put = if n == 1 {
                PutBlob::Created
            } else if tx.query_opt("SELECT 1 FROM blobs WHERE space = $1 AND hash = $2", &[&&space.0[..], &&hash[..]])?.is_some() {
                PutBlob::Exists
            } else {
                PutBlob::OverQuota
            };
            tx.commit()?;
            Ok(put)
        })
    }

    fn blob(&self, space: SpaceId, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        with(&self.pool, |c| {
            let row = c.query_opt("SELECT bytes FROM blobs WHERE space = $1 AND hash = $2", &[&&space.0[..], &&hash[..]])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn listen(&self, timeout: Duration) -> Option<Result<Vec<Remote>>> {
        let mut g = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(|c| c.is_closed()) {
            let connected = Client::connect(&self.url, NoTls).and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                Ok(c)
            });
            match connected {
                Ok(c) => *g = Some(c),
                Err(e) => {
                    drop(g);
                    std::thread::sleep(timeout);
                    return Some(Err(e.into()));
                }
            }
        }
        let client = g.as_mut().expect("connected above");
        let mut spaces = Vec::new();
        let mut notes = client.notifications();
        let mut wait = timeout;
        loop {
            // After the first notification, take what else has arrived without waiting.
            let next = notes.timeout_iter(wait).next();
            wait = Duration::ZERO;
            match next {
                Ok(Some(n)) => {
                    let mut parts = n.payload().split(':');
                    let (Some(space), Some(node)) = (parts.next(), parts.next()) else { continue };
                    if node == self.node {
                        continue;
                    }
                    if let Ok(Ok(id)) = hex::decode(space).map(|b| id16(&b)) {
                        let rest = parts.next();
                        let members = rest == Some(MEMBERS_CHANGED);
                        let named = rest.filter(|_| !members).and_then(parse_vector).filter(|v| v.len() <= MAX_NOTIFIED_REPLICAS);
                        spaces.push(Remote { space: SpaceId(id), vector: named, members });
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    drop(notes);
                    *g = None;
                    return Some(Err(e.into()));
                }
            }
        }
        drop(notes);
        drop(g);
        // What the notifications claim is only where to look: read the numbers.
        for remote in &mut spaces {
            if let Some(named) = remote.vector.take() {
                remote.vector = self.next_seqs(remote.space, named.keys()).ok();
            }
        }
        Some(Ok(spaces))
    }
}

impl Postgres {
    /// The next seq stored of each of `replicas` (those with none stored are left out).
    fn next_seqs<'a>(&self, space: SpaceId, replicas: impl Iterator<Item = &'a ReplicaId>) -> Result<VersionVector> {
        with(&self.pool, |c| {
            let mut vv = VersionVector::new();
            for r in replicas {
                let row = c.query_one("SELECT MAX(seq) FROM entries WHERE space = $1 AND replica = $2", &[&&space.0[..], &&r.0[..]])?;
                if let Some(max) = row.get::<_, Option<i64>>(0) {
                    vv.insert(*r, max as u64 + 1);
                }
            }
            Ok(vv)
        })
    }
}

/// `<replica hex>=<next seq>,…` from a notification; `None` when malformed.
/// The payload's third part when a space's membership log changed.
const MEMBERS_CHANGED: &str = "members";

/// Replicas a notification may name before the whole vector is read instead.
const MAX_NOTIFIED_REPLICAS: usize = 64;

fn parse_vector(list: &str) -> Option<VersionVector> {
    let mut vv = VersionVector::new();
    for pair in list.split(',').filter(|p| !p.is_empty()) {
        let (replica, next) = pair.split_once('=')?;
        let replica = id16(&hex::decode(replica).ok()?).ok()?;
        vv.insert(ReplicaId(replica), next.parse().ok()?);
    }
    Some(vv)
}

struct PgAppTx<'a, 'b>(&'a mut postgres::Transaction<'b>, u64);

const VERSION_COLUMNS: &str = "version, manifest, worker, worker_size, signature, published, seq";

fn to_version(r: &postgres::Row) -> Result<StoredVersion> {
    super::sqlite::to_version((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
}

impl AppTx for PgAppTx<'_, '_> {
    fn current(&mut self, app: &str) -> Result<Option<Option<String>>> {
        Ok(self.0.query_opt("SELECT current FROM apps WHERE name = $1 FOR UPDATE", &[&app])?.map(|r| r.get(0)))
    }

    fn version_worker(&mut self, app: &str, version: &str) -> Result<Option<[u8; 32]>> {
        let row = self.0.query_opt("SELECT worker FROM app_versions WHERE app = $1 AND version = $2", &[&app, &version])?;
        row.map(|r| hash32(&r.get::<_, Vec<u8>>(0))).transpose()
    }

    fn file_size(&mut self, sha256: &[u8; 32]) -> Result<Option<u64>> {
        Ok(self.0.query_opt("SELECT size FROM app_files WHERE sha = $1", &[&&sha256[..]])?.map(|r| r.get::<_, i64>(0) as u64))
    }

    fn next_seq(&mut self, app: &str) -> Result<i64> {
        Ok(self.0.query_one("SELECT COALESCE(MAX(seq), 0) + 1 FROM app_versions WHERE app = $1", &[&app])?.get(0))
    }

    fn insert_version(&mut self, new: &NewVersion, seq: i64) -> Result<()> {
        let v = &new.version;
        self.0.execute(
            "INSERT INTO app_versions (app, version, seq, manifest, worker, worker_size, signature, published)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&new.app, &v.version, &seq, &v.manifest, &&v.worker_sha256[..], &(v.worker_size as i64), &&v.signature[..], &(self.1 as i64)],
        )?;
        for (sha, _) in &new.files {
            self.0.execute(
                "INSERT INTO app_version_files (app, version, sha) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&new.app, &v.version, &&sha[..]],
            )?;
        }
        Ok(())
    }

    fn set_current(&mut self, app: &str, version: &str) -> Result<()> {
        self.0.execute("UPDATE apps SET current = $2 WHERE name = $1", &[&app, &version])?;
        Ok(())
    }

    fn version_names(&mut self, app: &str) -> Result<Vec<String>> {
        Ok(self.0.query("SELECT version FROM app_versions WHERE app = $1 ORDER BY seq DESC", &[&app])?.iter().map(|r| r.get(0)).collect())
    }

    fn delete_version(&mut self, app: &str, version: &str) -> Result<Vec<[u8; 32]>> {
        let rows = self.0.query("DELETE FROM app_version_files WHERE app = $1 AND version = $2 RETURNING sha", &[&app, &version])?;
        self.0.execute("DELETE FROM app_versions WHERE app = $1 AND version = $2", &[&app, &version])?;
        rows.iter().map(|r| hash32(r.get::<_, &[u8]>(0))).collect()
    }

    fn app_bytes(&mut self, app: &str) -> Result<u64> {
        let n: i64 = self
            .0
            .query_one(
                "SELECT COALESCE(SUM(size), 0)::BIGINT FROM app_files WHERE sha IN (SELECT sha FROM app_version_files WHERE app = $1)",
                &[&app],
            )?
            .get(0);
        Ok(n as u64)
    }

    fn clear_pending(&mut self, app: &str, files: &[([u8; 32], u64)]) -> Result<()> {
        for (sha, _) in files {
            self.0.execute("DELETE FROM app_pending WHERE app = $1 AND sha = $2", &[&app, &&sha[..]])?;
        }
        Ok(())
    }

    fn delete_unreferenced(&mut self, files: &[[u8; 32]], now_ms: u64) -> Result<()> {
        for sha in files {
            self.0.execute(
                "DELETE FROM app_files WHERE sha = $1
                   AND NOT EXISTS (SELECT 1 FROM app_version_files WHERE sha = $1)
                   AND NOT EXISTS (SELECT 1 FROM app_pending WHERE sha = $1 AND expires > $2)",
                &[&&sha[..], &(now_ms as i64)],
            )?;
        }
        Ok(())
    }
}

impl Postgres {
    /// Runs `f` in one write transaction under the registry's lock, committed only when
    /// it returns `Moved::Done` (or when `always` says so).
    fn registry_tx<T>(&self, f: impl FnOnce(&mut PgAppTx<'_, '_>) -> Result<T>, commit: impl FnOnce(&T) -> bool) -> Result<T> {
        with(&self.pool, |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REGISTRY_LOCK])?;
            let out = f(&mut PgAppTx(&mut tx, now_ms()))?;
            if commit(&out) {
                tx.commit()?;
            }
            Ok(out)
        })
    }
}

fn now_ms() -> u64 {
    use stead_core::env::Clock;
    stead_core::env::SystemClock.now_ms()
}

impl AppStore for Postgres {
    fn app(&self, name: &str) -> Result<Option<StoredApp>> {
        with(&self.pool, |c| {
            let row = c.query_opt("SELECT app_id, current FROM apps WHERE name = $1", &[&name])?;
            row.map(|r| Ok(StoredApp { name: name.to_owned(), app_id: hash32(r.get::<_, &[u8]>(0))?, current: r.get(1) })).transpose()
        })
    }

    fn apps(&self) -> Result<Vec<StoredApp>> {
        with(&self.pool, |c| {
            let rows = c.query("SELECT name, app_id, current FROM apps WHERE current IS NOT NULL ORDER BY name", &[])?;
            rows.iter().map(|r| Ok(StoredApp { name: r.get(0), app_id: hash32(r.get::<_, &[u8]>(1))?, current: r.get(2) })).collect()
        })
    }

    fn claim_app(&self, name: &str, app_id: &[u8; 32], now_ms: u64) -> Result<StoredApp> {
        with(&self.pool, |c| {
            c.execute(
                "INSERT INTO apps (name, app_id, current, created) VALUES ($1, $2, NULL, $3) ON CONFLICT (name) DO NOTHING",
                &[&name, &&app_id[..], &(now_ms as i64)],
            )?;
            Ok(())
        })?;
        self.app(name)?.ok_or(crate::Error::NotFound)
    }

    fn missing_files(&self, app: &str, wanted: &[([u8; 32], u64)], now_ms: u64, expires_ms: u64, max_pending: u64) -> Result<Result<Vec<[u8; 32]>, u64>> {
        self.registry_tx(
            |tx| {
                let expired = tx.0.query("DELETE FROM app_pending WHERE expires <= $1 RETURNING sha", &[&(now_ms as i64)])?;
                let expired: Vec<[u8; 32]> = expired.iter().map(|r| hash32(r.get::<_, &[u8]>(0))).collect::<Result<_>>()?;
                tx.delete_unreferenced(&expired, now_ms)?;
                let mut missing = Vec::new();
                for (sha, size) in wanted {
                    if tx.file_size(sha)?.is_some() {
                        continue;
                    }
                    tx.0.execute(
                        "INSERT INTO app_pending (app, sha, size, expires) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (app, sha) DO UPDATE SET size = excluded.size, expires = excluded.expires",
                        &[&app, &&sha[..], &(*size as i64), &(expires_ms as i64)],
                    )?;
                    missing.push(*sha);
                }
                let pending: i64 = tx
                    .0
                    .query_one("SELECT COALESCE(SUM(size), 0)::BIGINT FROM app_pending WHERE app = $1 AND expires > $2", &[&app, &(now_ms as i64)])?
                    .get(0);
                Ok(if pending as u64 > max_pending { Err(pending as u64) } else { Ok(missing) })
            },
            |out| out.is_ok(),
        )
    }

    fn pending_size(&self, app: &str, sha256: &[u8; 32], now_ms: u64) -> Result<Option<u64>> {
        with(&self.pool, |c| {
            let row = c.query_opt(
                "SELECT size FROM app_pending WHERE app = $1 AND sha = $2 AND expires > $3",
                &[&app, &&sha256[..], &(now_ms as i64)],
            )?;
            Ok(row.map(|r| r.get::<_, i64>(0) as u64))
        })
    }

    fn put_file(&self, app: &str, sha256: &[u8; 32], bytes: &[u8], now_ms: u64) -> Result<PutFile> {
        // Under the registry's lock, so the announcement cannot be swept meanwhile.
        self.registry_tx(
            |tx| {
                let n = tx.0.execute(
                    "INSERT INTO app_files (sha, size, bytes) SELECT $1, $2, $3
                     WHERE EXISTS (SELECT 1 FROM app_pending WHERE app = $4 AND sha = $1 AND expires > $5)
                     ON CONFLICT (sha) DO NOTHING",
                    &[&&sha256[..], &(bytes.len() as i64), &bytes, &app, &(now_ms as i64)],
                )?;
                Ok(if n == 1 {
                    PutFile::Created
                } else if tx.file_size(sha256)?.is_some() {
                    PutFile::Exists
                } else {
                    PutFile::NotAnnounced
                })
            },
            |_| true,
        )
    }

    fn file(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        with(&self.pool, |c| Ok(c.query_opt("SELECT bytes FROM app_files WHERE sha = $1", &[&&sha256[..]])?.map(|r| r.get(0))))
    }

    fn publish(&self, new: &NewVersion, quota: AppQuota) -> Result<Moved> {
        self.registry_tx(|tx| apps::publish(tx, new, quota, now_ms()), |m| matches!(m, Moved::Done { .. }))
    }

    fn rollback(&self, app: &str, to: &str, previous: Option<&str>) -> Result<Moved> {
        self.registry_tx(|tx| apps::rollback(tx, app, to, previous), |m| matches!(m, Moved::Done { .. }))
    }

    fn versions(&self, app: &str) -> Result<Vec<StoredVersion>> {
        with(&self.pool, |c| {
            let rows = c.query(&format!("SELECT {VERSION_COLUMNS} FROM app_versions WHERE app = $1 ORDER BY seq DESC"), &[&app])?;
            rows.iter().map(to_version).collect()
        })
    }

    fn version(&self, app: &str, version: &str) -> Result<Option<StoredVersion>> {
        with(&self.pool, |c| {
            let row = c.query_opt(&format!("SELECT {VERSION_COLUMNS} FROM app_versions WHERE app = $1 AND version = $2"), &[&app, &version])?;
            row.as_ref().map(to_version).transpose()
        })
    }
}
