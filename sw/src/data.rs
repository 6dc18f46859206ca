//! The data engine as the serving module sees it: a second wasm module
//! (`stead-data.wasm`, crate `stead-sw-data`), compiled on first data use.
//!
//! The module is a file of the app's bundle, so install and update download it (verified
//! by SHA-256) into the bundle store with the app's other files, before the worker
//! activates; `stead-sw.js` names the SHA-256 it was built with (`__STEAD_DATA_SHA256`)
//! and carries the module's wasm-bindgen glue. On first use one shared load reads the
//! file from the store, compiles it (`WebAssembly.compile`) and instantiates it with the
//! glue (`__stead_data_init` in the shim). Missing (not downloaded yet), the page API
//! answers 503.
//!
//! A worker wakes the engine on its own (a page's `hello` as it starts, a page
//! heartbeat, Background Sync) only when spaces may exist: the engine was loaded in this
//! worker life, or the key database (`stead`, scoped) exists. A page that never touches data never pays
//! for the module.

use std::{cell::RefCell, rc::Rc};

use futures::{
    FutureExt,
    future::{LocalBoxFuture, Shared},
};
use js_sys::{Function, Reflect};
use stead_sw_common::{Kept, js};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, Response};

use crate::worker::Worker;

/// The key database the data module keeps its spaces in (`stead-sw-data`'s `keys::DB`).
const KEYS_DB: &str = "stead";

type Loading = Shared<LocalBoxFuture<'static, Result<JsValue, String>>>;

/// The data module: not loaded, loading, or its exports.
#[derive(Default)]
pub struct Data {
    loading: RefCell<Option<Loading>>,
    exports: RefCell<Option<JsValue>>,
    /// The module's bytes once read, so a kill that keeps data can store them again.
    bytes: RefCell<Option<js_sys::ArrayBuffer>>,
}

thread_local! {
    static DATA: Rc<Data> = Rc::new(Data::default());
}

/// The SHA-256 of the data module this worker script was built with.
pub fn module_sha256() -> Option<String> {
    Reflect::get(&js_sys::global(), &"__STEAD_DATA_SHA256".into()).ok().and_then(|v| v.as_string())
}

impl Data {
    pub fn get() -> Rc<Data> {
        DATA.with(Rc::clone)
    }

    pub fn is_loaded(&self) -> bool {
        self.exports.borrow().is_some()
    }

    /// `loaded` or `not loaded` (in this worker life), for status.
    pub fn state(&self) -> &'static str {
        if self.is_loaded() { "loaded" } else { "not loaded" }
    }

    /// Whether this device may hold spaces: the engine is loaded, or its key database
    /// exists. Where `indexedDB.databases()` is missing, assume it does.
    pub async fn in_use(&self) -> bool {
        if self.is_loaded() {
            return true;
        }
        let Ok(factory) = stead_store::idb::db::factory() else { return false };
        let Ok(databases) = Reflect::get(&factory, &"databases".into()) else { return true };
        let Some(databases) = databases.dyn_ref::<Function>() else { return true };
        let Ok(promise) = databases.call0(&factory) else { return true };
        let Ok(list) = JsFuture::from(js_sys::Promise::from(promise)).await else { return true };
        let name = stead_store::idb::db::scoped_name(KEYS_DB);
        js_sys::Array::from(&list)
            .iter()
            .any(|d| Reflect::get(&d, &"name".into()).ok().and_then(|n| n.as_string()).as_deref() == Some(name.as_str()))
    }

    /// [`Data::in_use`], asked once a load of the engine under way has ended: the request
    /// that started it goes on to create what it asks for.
    pub async fn in_use_once_loaded(&self) -> bool {
        let loading = self.loading.borrow().clone();
        if let Some(loading) = loading {
            let _ = loading.await;
        }
        self.in_use().await
    }

    /// The module's exports, loading it once per worker life (concurrent callers share
    /// the load; a failed load is tried again by the next caller).
    pub async fn load(self: &Rc<Self>) -> Result<JsValue, String> {
        if let Some(e) = self.exports.borrow().clone() {
            return Ok(e);
        }
        let shared = self
            .loading
            .borrow_mut()
            .get_or_insert_with(|| {
                let data = self.clone();
                async move {
                    let result = data.instantiate().await;
                    match &result {
                        Ok(exports) => *data.exports.borrow_mut() = Some(exports.clone()),
                        Err(_) => *data.loading.borrow_mut() = None,
                    }
                    result
                }
                .boxed_local()
                .shared()
            })
            .clone();
        shared.await
    }

    async fn instantiate(&self) -> Result<JsValue, String> {
        let sha = module_sha256().ok_or("this worker script carries no data engine")?;
        let blob = Worker::get()
            .stored_file(&sha)
            .await
            .map_err(|e| format!("reading the data engine: {e}"))?
            .ok_or("the data engine (stead-data.wasm) is not stored on this device yet: it is downloaded with the app's next update, online")?;
        crate::worker::mark("data_found");
        let bytes: js_sys::ArrayBuffer =
            JsFuture::from(blob.array_buffer()).await.map_err(|e| format!("reading the data engine: {}", crate::store::describe(&e)))?.unchecked_into();
        crate::worker::mark("data_read");
        let module = JsFuture::from(js_sys::WebAssembly::compile(&bytes))
            .await
            .map_err(|e| format!("compiling the data engine: {}", crate::store::describe(&e)))?;
        crate::worker::mark("data_compiled");
        let init: Function = Reflect::get(&js_sys::global(), &"__stead_data_init".into())
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or("this worker script carries no data engine glue")?;
        let exports = init.call1(&JsValue::NULL, &module).map_err(|e| format!("starting the data engine: {}", crate::store::describe(&e)))?;
        crate::worker::mark("data_started");
        *self.bytes.borrow_mut() = Some(bytes);
        Ok(exports)
    }

    /// The module's bytes, when it was loaded in this worker life.
    pub fn bytes(&self) -> Option<js_sys::ArrayBuffer> {
        self.bytes.borrow().clone()
    }

    /// Calls an export and awaits the promise it returns.
    async fn call(self: &Rc<Self>, name: &str, args: &[JsValue]) -> Result<JsValue, String> {
        let exports = self.load().await?;
        let f: Function = Reflect::get(&exports, &name.into()).ok().and_then(|f| f.dyn_into().ok()).ok_or_else(|| format!("the data engine has no {name}"))?;
        let promise = f.apply(&JsValue::NULL, &args.iter().collect()).map_err(|e| crate::store::describe(&e))?;
        JsFuture::from(js_sys::Promise::from(promise)).await.map_err(|e| crate::store::describe(&e))
    }

    /// Calls an export that answers a JSON array, and reads each item with `item`.
    async fn call_list<T>(self: &Rc<Self>, name: &str, args: &[JsValue], item: impl Fn(&JsValue) -> Option<T>) -> Result<Vec<T>, String> {
        let text = self.call(name, args).await?.as_string().unwrap_or_default();
        let bad = |why: &str| format!("the data engine's {name} answered {text}: {why}");
        let list = js::items(&js::parse(&text).map_err(|e| bad(&e))?).ok_or_else(|| bad("not an array"))?;
        list.iter().map(|v| item(v).ok_or_else(|| bad("an unexpected item"))).collect()
    }

    /// Opens every space and (re)connects its sync.
    pub async fn wake(self: &Rc<Self>) -> Result<(), String> {
        self.call("wake", &[]).await.map(drop)
    }

    /// Wakes the engine when spaces may exist ([`Data::in_use`]); otherwise does nothing.
    pub async fn wake_if_used(self: &Rc<Self>) {
        if self.in_use().await
            && let Err(e) = self.wake().await
        {
            web_sys::console::warn_1(&format!("opening the data engine: {e}").into());
        }
    }

    /// Answers a page API request; 503 when the engine cannot be loaded.
    pub async fn handle(self: &Rc<Self>, request: Request, rel: String) -> Result<JsValue, JsValue> {
        match self.call("handle", &[request.into(), rel.into()]).await {
            Ok(response) => Ok(response),
            Err(why) => Ok(unavailable(&why)?.into()),
        }
    }

    pub async fn retire(self: &Rc<Self>, settle_ms: f64) -> Result<Vec<Kept>, String> {
        self.call_list("retire", &[settle_ms.into()], Kept::from_js).await
    }

    pub async fn erase_acknowledged(self: &Rc<Self>) -> Result<Vec<Kept>, String> {
        self.call_list("erase_acknowledged", &[], Kept::from_js).await
    }

    pub async fn erase_all(self: &Rc<Self>) -> Result<Vec<String>, String> {
        self.call_list("erase_all", &[], JsValue::as_string).await
    }

    pub async fn spaces(self: &Rc<Self>) -> Result<Vec<String>, String> {
        self.call_list("spaces", &[], JsValue::as_string).await
    }

    /// Background Sync: every space reconnected and acknowledged within `timeout_ms`.
    pub async fn sync(self: &Rc<Self>, timeout_ms: f64) -> Result<(), JsValue> {
        self.call("sync", &[timeout_ms.into()]).await.map(drop).map_err(|e| JsValue::from(js_sys::Error::new(&e)))
    }
}

/// The page API's answer while the data engine cannot be loaded.
fn unavailable(why: &str) -> Result<Response, JsValue> {
    let headers = web_sys::Headers::new()?;
    headers.set("content-type", "application/problem+json")?;
    headers.set("cache-control", "no-store")?;
    headers.set("retry-after", "30")?;
    let init = web_sys::ResponseInit::new();
    init.set_status(503);
    init.set_headers(&headers);
    let body = crate::worker::problem(503, "data engine unavailable", why);
    Response::new_with_opt_str_and_init(Some(&js::stringify(&body)), &init)
}
