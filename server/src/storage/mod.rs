//! Where the server keeps spaces: their membership logs, verified entries and blobs.
//!
//! [`Backend`] is blocking: callers run it on tokio's blocking pool. Two implementations
//! share one table layout: SQLite (WAL, `synchronous=FULL`, the default) and PostgreSQL
//! (several server nodes on one database). A [`WriteTx`] is one database transaction,
//! possibly over several spaces (group commit): entries verified inside it are visible to
//! others, and acknowledged, only once [`WriteTx::commit`] has returned.

mod pool;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{ChainTip, Entry, Hash, VersionVector};

use crate::error::{Error, Result};

/// The stored membership log of a space and its version (bumped on every change).
#[derive(Debug, Clone)]
pub struct StoredMembers {
    pub version: i64,
    pub bytes: Vec<u8>,
}

/// One database transaction on the logs of one or more spaces.
pub trait WriteTx: Send {
    /// The membership version of `space` as of this transaction.
    fn members_version(&mut self, space: SpaceId) -> Result<i64>;
    /// The end of `replica`'s stored chain in `space`.
    fn tip(&mut self, space: SpaceId, replica: ReplicaId) -> Result<Option<ChainTip>>;
    /// The hash of a stored entry.
    fn hash_at(&mut self, space: SpaceId, replica: ReplicaId, seq: u64) -> Result<Option<Hash>>;
    /// Stores a verified entry (the next of its chain) in the space its header names.
    fn insert(&mut self, entry: &Entry, hash: &Hash) -> Result<()>;
    /// Commits durably; other nodes sharing the database are told about the space.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Storage of a server (or of several server nodes sharing it).
pub trait Backend: Send + Sync + 'static {
    /// `sqlite` or `postgres`, for logs and metrics.
    fn kind(&self) -> &'static str;
    fn members(&self, space: SpaceId) -> Result<Option<StoredMembers>>;
    /// The version of the space's membership log alone (`None` for an unknown space):
    /// enough to tell whether a cached log is still current without reading the log.
    fn members_version(&self, space: SpaceId) -> Result<Option<i64>>;
    /// Creates a space with `new`, or replaces its log when `new` extends the stored one
    /// (`check` decides that on the stored bytes, inside the transaction).
    fn put_members(&self, space: SpaceId, new: &[u8], check: &dyn Fn(Option<&[u8]>) -> Result<()>) -> Result<i64>;
    fn begin(&self) -> Result<Box<dyn WriteTx>>;
    /// Whether the backend runs one write transaction at a time (SQLite): callers then
    /// group the writes of several connections into one transaction, one fsync. PostgreSQL
    /// runs transactions side by side and groups concurrent commits' WAL flushes itself.
    fn serial_writes(&self) -> bool;
    /// Replica → next seq stored. A scan of the space's log: callers keep the result
    /// ([`crate::Service`] holds one per active space) instead of asking per frame.
    fn vector(&self, space: SpaceId) -> Result<VersionVector>;
    /// Up to `max` entries of `replica` from `from_seq` on, at most about `max_bytes`.
    fn read(&self, space: SpaceId, replica: ReplicaId, from_seq: u64, max: usize, max_bytes: usize) -> Result<Vec<Entry>>;
    /// Stores a blob unless the space's blobs would then exceed `quota` bytes in all.
    fn put_blob(&self, space: SpaceId, hash: &[u8; 32], bytes: &[u8], quota: u64) -> Result<PutBlob>;
    fn blob(&self, space: SpaceId, hash: &[u8; 32]) -> Result<Option<Vec<u8>>>;
    /// Waits (up to `timeout`) for other nodes' commits; returns what they stored.
    /// A backend with no other nodes returns `None` at once, and the caller stops asking.
    fn listen(&self, timeout: std::time::Duration) -> Option<Result<Vec<Remote>>>;
}

/// What [`Backend::put_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutBlob {
    Created,
    /// The space already had it.
    Exists,
    /// It would take the space's blobs over their quota; nothing was stored.
    OverQuota,
}

/// Another node committed entries of `space`.
#[derive(Debug, Clone)]
pub struct Remote {
    pub space: SpaceId,
    /// Replica → next seq now stored, when the notification said (else read the database).
    pub vector: Option<VersionVector>,
    /// The space's membership log changed.
    pub members: bool,
}

/// Opens storage from `--database`: a `postgres://` URL, or else a SQLite file path.
pub fn open(database: &str, node: [u8; 16]) -> Result<Arc<dyn Backend>> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        Ok(Arc::new(postgres::Postgres::open(database, node)?))
    } else if database.contains("://") {
        Err(Error::BadDatabaseUrl(database.to_owned()))
    } else {
        Ok(Arc::new(sqlite::Sqlite::open(std::path::Path::new(database))?))
    }
}

pub(crate) use stead_core::log::trim_to_bytes as trim_bytes;

pub(crate) fn hash32(bytes: &[u8]) -> Result<Hash> {
    bytes.try_into().map_err(|_| Error::Core(stead_core::Error::Storage("stored hash is not 32 bytes".into())))
}

pub(crate) fn id16(bytes: &[u8]) -> Result<[u8; 16]> {
    bytes.try_into().map_err(|_| Error::Core(stead_core::Error::Storage("stored id is not 16 bytes".into())))
}
