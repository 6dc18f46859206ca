//! Stead's service worker, compiled to wasm and driven by a small JS shim.
//!
//! The shim (`js/shim.js`) instantiates this module synchronously when the worker script
//! is first evaluated and forwards `install`, `activate`, `fetch` and `message` events to
//! the `on_*` functions below. The worker:
//!
//! - installs the app's bundle (`stead-bundle.json`) into OPFS, content-addressed and
//!   verified, resuming where an interrupted install stopped ([`worker`]);
//! - serves the active version's files from OPFS, offline or not ([`fetch`]), and keeps
//!   a Cache Storage copy that Chromium answers from while the worker is stopped
//!   ([`cold`]);
//! - checks for a new bundle on navigation and on page heartbeats, downloads only
//!   changed contents, tells pages "update ready" on the `stead` BroadcastChannel and
//!   switches when a page asks;
//! - answers `/_stead/v1/status`;
//! - hands the page API (`/_stead/v1/...`) to the data engine, a second wasm module it
//!   compiles on first data use ([`data`]).

pub mod cold;
pub mod data;
pub mod fetch;
pub mod manifest;
pub mod pack;
pub mod state;
pub mod store;
pub mod worker;

/// The OPFS helpers, storage scoping and JSON through JS, compiled into the data module too.
pub use stead_sw_common::{js, opfs, scope};


/// The `Content-Security-Policy` every app file carries, online (stead-server) and
/// offline (the worker): only the app's own origin may frame it.
pub const FRAME_POLICY: &str = "frame-ancestors 'self'";

use wasm_bindgen::prelude::*;
use web_sys::{ExtendableEvent, ExtendableMessageEvent, FetchEvent};

/// Everything that can go wrong in the worker, as text a status page can show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwError {
    #[error("{0}")]
    Js(String),
    #[error("network error fetching {path}: {message}")]
    Network { path: String, message: String },
    #[error("{path}: server answered HTTP {status}")]
    Http { path: String, status: u16 },
    #[error("{path}: sha256 mismatch (expected {expected}, got {actual})")]
    Hash { path: String, expected: String, actual: String },
    #[error("{path}: size mismatch (expected {expected} bytes, got {actual})")]
    Size { path: String, expected: u64, actual: u64 },
    #[error(transparent)]
    Bundle(#[from] stead_core::bundle::BundleError),
}

impl From<opfs::FsError> for SwError {
    fn from(e: opfs::FsError) -> Self {
        SwError::Js(e.to_string())
    }
}

impl SwError {
    fn network(e: JsValue) -> Self {
        SwError::Network { path: String::new(), message: store::describe(&e) }
    }

    /// Names the bundle file a network error happened for.
    fn at(self, path: &str) -> Self {
        match self {
            SwError::Network { message, .. } => SwError::Network { path: path.to_owned(), message },
            other => other,
        }
    }
}

/// Called once when the worker script is evaluated: opening the store starts before the
/// first event arrives, so a cold start does not wait for it on the first fetch.
#[wasm_bindgen]
pub fn on_start() {
    scope::init();
    let worker = worker::Worker::get();
    wasm_bindgen_futures::spawn_local(async move {
        let _ = worker.load().await;
    });
}

#[wasm_bindgen]
pub fn on_install(event: ExtendableEvent) {
    worker::Worker::get().on_install(event);
}

#[wasm_bindgen]
pub fn on_activate(event: ExtendableEvent) {
    worker::Worker::get().on_activate(event);
}

#[wasm_bindgen]
pub fn on_fetch(event: FetchEvent) {
    fetch::on_fetch(&worker::Worker::get(), event);
}

#[wasm_bindgen]
pub fn on_message(event: ExtendableMessageEvent) {
    worker::Worker::get().on_message(event);
}

/// Background Sync's `sync` event: reconnect every space and hold the worker until the
/// server has what is pending (the browser retries later when this rejects).
#[wasm_bindgen]
pub fn on_sync(event: ExtendableEvent) {
    let work = async {
        let data = data::Data::get();
        // No spaces on this device: nothing to send, and no reason to load the engine.
        if data.in_use().await {
            data.sync(20_000.0).await?;
        }
        Ok(JsValue::UNDEFINED)
    };
    let _ = event.wait_until(&wasm_bindgen_futures::future_to_promise(work));
}

/// talc rather than std's dlmalloc: 2.8 KB gzip less of the module every worker start
/// compiles (the data module keeps dlmalloc; its size is paid once per data use).
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static ALLOC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
