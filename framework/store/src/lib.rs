//! Adapters of stead-core's `Store` trait over real storage.
//!
//! - [`FileStore`]: native files. Each replica's log is a folder of segment files of
//!   bounded size, so an append writes only to the end of the newest segment and its cost
//!   does not grow with the log. Every record carries a CRC-32; on open, a torn or garbled
//!   tail of the newest segment is cut off with a warning and the valid prefix kept.
//!   Snapshots and metadata are replaced atomically (temp file, fsync, rename, fsync of
//!   the folder).
//!
//! - [`opfs::OpfsStore`] (wasm32): OPFS, for the service worker. The same segmented,
//!   checksummed log, because OPFS `createWritable` copies a whole file per write. OPFS
//!   is asynchronous and the core's `Store` is not, so reads come from a
//!   [`CachedStore`] in memory and writes queue there until the adapter flushes them.
//! - [`idb::IdbStore`] (wasm32): IndexedDB, the fallback where workers cannot write
//!   OPFS; a flush is one transaction.

pub mod cached;
#[cfg(not(target_arch = "wasm32"))]
mod file;
#[cfg(target_arch = "wasm32")]
pub mod idb;
#[cfg(target_arch = "wasm32")]
pub mod opfs;
pub mod segment;

pub use cached::{CachedStore, Write};
#[cfg(not(target_arch = "wasm32"))]
pub use file::{FileStore, Options, Recovery};

/// Errors of the storage adapters.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("corrupt log segment {path} at byte {offset}: {reason}")]
    Corrupt { path: String, offset: u64, reason: String },
    #[error("append of {replica} seq {seq} does not follow the stored head {head}")]
    OutOfOrder { replica: String, seq: u64, head: u64 },
    #[error("invalid metadata key {0:?}")]
    BadKey(String),
}

impl From<StoreError> for stead_core::Error {
    fn from(e: StoreError) -> Self {
        stead_core::Error::Storage(e.to_string())
    }
}
