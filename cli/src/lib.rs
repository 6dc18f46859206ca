//! The library behind the `stead` command.
//!
//! - [`build`]: turns an app into a deployable bundle: the app built by trunk, the
//!   service worker built to wasm and shipped inside its own script, and the bundle
//!   manifest `stead-bundle.json`.

pub mod build;
