//! Where the server keeps spaces: their membership logs, verified entries and blobs.
//!
//! [`Backend`] is blocking: callers run it on tokio's blocking pool. Two implementations
//! share one table layout: SQLite (WAL, `synchronous=FULL`, the default) and PostgreSQL
//! (several server nodes on one database). A [`WriteTx`] is one database transaction,
//! possibly over several spaces (group commit): entries verified inside it are stored,
//! and acknowledged, only once [`WriteTx::commit`] has returned (on SQLite the server
//! relays them to the space's connections just before: `commit::commit_group`).

pub(crate) mod apps;
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

/// Storage of a server (or of several server nodes sharing it): spaces, and the app
/// registry ([`AppStore`]).
pub trait Backend: AppStore + Send + Sync + 'static {
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

/// A published app: its name, its id (the publisher's Ed25519 key) and current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApp {
    pub name: String,
    pub app_id: [u8; 32],
    pub current: Option<String>,
}

/// One version of an app, as stored.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub version: String,
    /// The exact text of the signed `stead-bundle.json`.
    pub manifest: Vec<u8>,
    pub worker_sha256: [u8; 32],
    pub worker_size: u64,
    /// The publisher's signature of the release (`registry::release_message`).
    pub signature: [u8; 64],
    pub published_ms: u64,
    /// Order of publication within the app (1, 2, …).
    pub seq: i64,
}

/// A version to publish: already verified (manifest parsed, release signature checked).
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub app: String,
    pub previous: Option<String>,
    pub version: StoredVersion,
    /// Every distinct content the version needs (its files' and the worker's), with the
    /// size the manifest declares.
    pub files: Vec<([u8; 32], u64)>,
}

/// The bounds a publication must stay within.
#[derive(Debug, Clone, Copy)]
pub struct AppQuota {
    /// Versions kept per app; older ones (never the current) are trimmed.
    pub max_versions: usize,
    /// Bytes of the distinct files the app's kept versions list, in all.
    pub max_app_bytes: u64,
}

/// What a move of `current` (a publication or a rollback) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// `current` is now the version; `trimmed` lists the versions dropped to stay
    /// within [`AppQuota::max_versions`].
    Done { trimmed: Vec<String> },
    /// `current` was not the expected previous version: nothing changed.
    Conflict { current: Option<String> },
    /// These contents are not stored (yet): nothing changed.
    MissingFiles(Vec<[u8; 32]>),
    /// The kept versions would list more than the app's quota of bytes: nothing changed.
    OverQuota { bytes: u64 },
    /// A file is stored with another size than the manifest declares: nothing changed.
    WrongSize { sha256: [u8; 32], stored: u64, declared: u64 },
    /// The version is stored already with another worker script: nothing changed.
    OtherWorker,
    /// No such app, or (for a rollback) no such version of it.
    NotFound,
}

/// The app registry's storage: apps, their versions, and files stored once by SHA-256
/// (shared across versions and apps, kept while a version lists them or a publication
/// in progress announced them).
pub trait AppStore {
    fn app(&self, name: &str) -> Result<Option<StoredApp>>;
    /// Every app with a current version, by name.
    fn apps(&self) -> Result<Vec<StoredApp>>;
    /// Records `name` as `app_id`'s, unless it is taken; returns the app as stored.
    fn claim_app(&self, name: &str, app_id: &[u8; 32], now_ms: u64) -> Result<StoredApp>;
    /// Of `wanted` (digest, size), the digests not stored; each is recorded as pending
    /// for `app` until `expires_ms`, which allows its upload. Expired pending records are
    /// swept, with their files when nothing else keeps them. When the app's pending
    /// uploads would then announce more than `max_pending` bytes, nothing is recorded and
    /// `Err(bytes)` tells how many.
    fn missing_files(&self, app: &str, wanted: &[([u8; 32], u64)], now_ms: u64, expires_ms: u64, max_pending: u64) -> Result<Result<Vec<[u8; 32]>, u64>>;
    /// The announced size of `sha256` if a pending publication of `app` named it.
    fn pending_size(&self, app: &str, sha256: &[u8; 32], now_ms: u64) -> Result<Option<u64>>;
    /// Stores a file (whose digest the caller checked) if a pending publication of `app`
    /// still announces it: checked in the same write as the insert, so no upload lands
    /// after its announcement was swept (it would be kept by nothing, and swept never).
    fn put_file(&self, app: &str, sha256: &[u8; 32], bytes: &[u8], now_ms: u64) -> Result<PutFile>;
    fn file(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>>;
    /// Adds a version and makes it current if `current` is still `new.previous`
    /// (compare-and-swap). A version the app already has is only made current again.
    fn publish(&self, new: &NewVersion, quota: AppQuota) -> Result<Moved>;
    /// Makes the existing version `to` current if `current` is still `previous`.
    fn rollback(&self, app: &str, to: &str, previous: Option<&str>) -> Result<Moved>;
    /// The app's kept versions, newest first.
    fn versions(&self, app: &str) -> Result<Vec<StoredVersion>>;
    fn version(&self, app: &str, version: &str) -> Result<Option<StoredVersion>>;
}

/// What [`AppStore::put_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutFile {
    Created,
    /// It was stored already.
    Exists,
    /// No unexpired announcement of the app names it: nothing was stored.
    NotAnnounced,
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
