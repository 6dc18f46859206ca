//! What the serving module calls: the data module's whole surface. Built with
//! `wasm-bindgen --target no-modules --no-modules-global stead_data`, its glue is inlined
//! in `stead-sw.js` and the serving module instantiates it on first data use
//! (`stead_sw::data`). Values cross as JS values or JSON text: the two modules share
//! no memory and no Rust types.

use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use web_sys::Request;

use crate::{Data, DataError};

/// Called once, right after the module is instantiated: this module's copy of
/// stead-store opens its databases under the worker's scope too.
#[wasm_bindgen]
pub fn start() {
    crate::scope::init();
}

fn json_promise<T: Serialize>(work: impl Future<Output = Result<T, DataError>> + 'static) -> js_sys::Promise {
    future_to_promise(async move {
        let value = work.await.map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))?;
        Ok(JsValue::from_str(&serde_json::to_string(&value).expect("serialisable")))
    })
}

/// Opens every space and (re)connects its sync ([`Data::wake`]).
#[wasm_bindgen]
pub fn wake() -> js_sys::Promise {
    json_promise(async { Data::get().wake().await })
}

/// Answers a page API request (`_stead/v1/...` but status) with a `Response`.
#[wasm_bindgen]
pub fn handle(request: Request, rel: String) -> js_sys::Promise {
    future_to_promise(crate::api::handle(request, rel))
}

/// The kill switch's data side ([`Data::retire`]): JSON, the kept spaces.
#[wasm_bindgen]
pub fn retire(settle_ms: f64) -> js_sys::Promise {
    json_promise(async move { Data::get().retire(settle_ms).await })
}

/// [`Data::erase_acknowledged`]: JSON, the spaces still kept.
#[wasm_bindgen]
pub fn erase_acknowledged() -> js_sys::Promise {
    json_promise(async { Data::get().erase_acknowledged().await })
}

/// [`Data::erase_all`]: JSON, the spaces erased.
#[wasm_bindgen]
pub fn erase_all() -> js_sys::Promise {
    json_promise(async { Data::get().erase_all().await })
}

/// JSON, the ids of the spaces this device holds.
#[wasm_bindgen]
pub fn spaces() -> js_sys::Promise {
    json_promise(async { Ok(Data::get().spaces().await?.iter().map(ToString::to_string).collect::<Vec<_>>()) })
}

/// Background Sync: reconnects every space and resolves once the server has what is
/// pending, rejecting when `timeout_ms` passes first (the browser retries later).
#[wasm_bindgen]
pub fn sync(timeout_ms: f64) -> js_sys::Promise {
    future_to_promise(async move {
        let data = Data::get();
        data.wake().await.map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))?;
        for engine in data.open_engines() {
            if !engine.settle(timeout_ms).await {
                return Err(js_sys::Error::new("changes are still pending").into());
            }
        }
        Ok(JsValue::UNDEFINED)
    })
}
