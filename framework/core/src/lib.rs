//! The sans-IO heart of Stead.
//!
//! Everything here is pure Rust: no async runtime, no browser API, no file system. The
//! same code runs in the service worker (wasm32), the server and native clients, and the
//! callers bring the I/O: time through [`env::Clock`], randomness through
//! [`env::Random`], storage through [`store::Store`], sockets by moving the frames of
//! [`sync::Sync`].
//!
//! - [`bundle`]: the bundle manifest an app build writes and the service worker installs
//!   from (file list with hashes, the version id, and the diff between two versions).
//! - [`ids`], [`hlc`]: UUID v7 ids and the hybrid logical clock.
//! - [`log`]: signed, hash-chained entries and their verification (`LOG-FORMAT.md`).
//! - [`membership`]: the signed membership log of a space.
//! - [`crypto`]: payload encryption, compression, padding and space-key wrapping.
//! - [`ops`], [`state`]: ops and the CRDT state they merge into.
//! - [`schema`], [`query`]: the metaschema, validation, indexes and paged queries.
//! - [`replica`]: a device's replica: commit, ingest, CAS, history, undo, snapshots.
//! - [`relay`]: the keyless verifying log a sync server keeps for a space.
//! - [`store`]: the `Store` trait and the in-memory store.
//! - [`sync`]: the sans-IO sync protocol and its frame codec (`SYNC.md`).
//! - [`testing`]: seeded fixtures for tests, the simulator and benchmarks.

pub mod bundle;
pub mod codec;
pub mod crypto;
pub mod env;
pub mod error;
pub mod hlc;
pub mod ids;
pub mod log;
pub mod membership;
pub mod ops;
pub mod query;
pub mod relay;
pub mod replica;
pub mod schema;
pub mod sig;
pub mod state;
pub mod store;
pub mod sync;
pub mod testing;

pub use error::{Error, Result};

// Unit tests also run on wasm32 in headless Chromium: each test module aliases
// `wasm_bindgen_test` as `test`, and this sets the context once for the test binary.
#[cfg(all(test, target_arch = "wasm32"))]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);
