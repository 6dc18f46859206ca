//! The library behind the `stead` command.
//!
//! - [`template`]: `stead new`, a new app from the template embedded in the binary;
//! - [`app`]: an app's folder and its `Stead.toml`;
//! - [`pipeline`]: `stead build`, with progress and a size table;
//! - [`build`]: the steps underneath (also driven by `cargo xtask`): the app built by
//!   trunk, the service worker built to wasm and shipped inside its own script, and the
//!   bundle manifest `stead-bundle.json`;
//! - [`tools`]: the Stead checkout apps build against, and the tools a build runs;
//! - [`serve`]: `stead serve`, stead-server in process;
//! - [`publish`]: `stead publish`, `versions`, `rollback`: a built app on a server's
//!   registry, signed with the app's key;
//! - [`dev`]: `stead dev`: build, serve, rebuild on change, reload open pages;
//! - [`diag`]: errors with the file, the field and a hint.

// A `Problem` carries the file's text for its snippet; it is made once, when a command
// fails, so its size costs nothing worth boxing.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod build;
pub mod dev;
pub mod diag;
pub mod pipeline;
pub mod publish;
pub mod serve;
pub mod template;
pub mod tools;
