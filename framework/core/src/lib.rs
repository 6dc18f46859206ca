//! The sans-IO heart of Stead.
//!
//! Everything here is pure Rust: no async runtime, no browser API, no file system. The
//! same code runs in the service worker (wasm32), the server and native clients, and the
//! callers bring the I/O.
//!
//! - [`bundle`]: the bundle manifest an app build writes and the service worker installs
//!   from (file list with hashes, the version id, and the diff between two versions).

pub mod bundle;
