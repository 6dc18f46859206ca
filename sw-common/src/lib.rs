//! Code both of the worker's wasm modules compile in: the serving module (`stead-sw`,
//! inside `stead-sw.js`) and the data engine (`stead-sw-data`, `stead-data.wasm`).
//!
//! Each module has its own copy (two wasm instances share no memory), so nothing here
//! may keep state that one module sets and the other reads: [`scope::init`] is called
//! by each module when it starts.

pub mod js;
pub mod scope;

/// The OPFS helpers (shared with stead-store's OPFS adapter).
pub use stead_store::opfs::fs as opfs;

use js_sys::Reflect;
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;

/// A space the kill switch kept because the server lacks some of it. The data module
/// reports these; the serving module shows them in status and on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub space: String,
    /// This device's entries the server has not acknowledged; `None` when the space
    /// could not be opened to tell.
    pub pending: Option<u64>,
    /// Blobs waiting to be uploaded.
    pub blobs_pending: Option<usize>,
}

impl Kept {
    /// As the serving module shows it in status and on the channel.
    pub fn to_js(&self) -> JsValue {
        js::Obj::new().set("space", &self.space).set("pending", self.pending).set("blobs_pending", self.blobs_pending).build()
    }

    /// Read back from the data module's JSON answer (parsed with `JSON.parse`).
    pub fn from_js(value: &JsValue) -> Option<Kept> {
        Some(Kept {
            space: js::get_str(value, "space")?,
            pending: js::get_u64(value, "pending"),
            blobs_pending: js::get_u64(value, "blobs_pending").map(|n| n as usize),
        })
    }
}

/// `navigator.storage.estimate()`: bytes used and the origin's quota, each `None` where
/// the browser does not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    pub usage: Option<f64>,
    pub quota: Option<f64>,
}

/// Asks the browser for its [`Estimate`]; `None` where there is no storage manager.
pub async fn storage_estimate() -> Option<Estimate> {
    let storage = opfs::storage().ok()?;
    let e = JsFuture::from(storage.estimate().ok()?).await.ok()?;
    let num = |k: &str| Reflect::get(&e, &k.into()).ok().and_then(|v| v.as_f64());
    Some(Estimate { usage: num("usage"), quota: num("quota") })
}

/// A promise that resolves after `ms` milliseconds (`setTimeout`).
pub fn sleep(ms: f64) -> JsFuture {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout: js_sys::Function = Reflect::get(&js_sys::global(), &"setTimeout".into()).expect("setTimeout").into();
        let _ = set_timeout.call2(&JsValue::NULL, &resolve, &JsValue::from_f64(ms));
    });
    JsFuture::from(promise)
}
