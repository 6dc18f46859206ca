//! The Cache Storage copy that Chromium's static routes answer from while the worker is
//! not running (the routes are declared at install, in `js/shim.js`, which also does the
//! copy's Cache Storage calls).
//!
//! A routed request that misses the copy goes to the network, not to the worker, so the
//! copy must hold every file a page may ask for while the worker is stopped: the active
//! version's files, the scope's own URL as its entry, and the files of versions that open
//! pages still use (the active version's content wins where paths meet). A rewrite puts
//! what changed, then deletes what went, then writes a marker (`_stead/cold`, a path the
//! routes never serve) listing what the copy holds, so one cut short by a stop is finished
//! by the next. It never runs during the install (see `Worker::gc`): the shim puts a wake
//! page for the entry there, which starts the worker and loads again, and a rewrite that
//! changes the entry puts the wake page first and the entry last.

use std::{collections::HashSet, rc::Rc};

use js_sys::{Array, Function, Promise, Reflect};
use stead_core::bundle::{BundleFile, BundleManifest};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::{SwError, worker::Worker};

/// The shim's helpers (`self.__stead_cold`); `None` where the browser has no static
/// routes, and so no copy.
fn helpers() -> Option<JsValue> {
    Reflect::get(&js_sys::global(), &"__stead_cold".into()).ok().filter(JsValue::is_object)
}

async fn call(helpers: &JsValue, name: &str, args: &Array) -> Result<JsValue, SwError> {
    let f: Function = Reflect::get(helpers, &name.into())?.unchecked_into();
    let promise: Promise = f.apply(helpers, args)?.unchecked_into();
    Ok(JsFuture::from(promise).await?)
}

/// Every (path, file, version) the copy must hold, the active version first; the path ""
/// is the scope's URL, answered with the entry.
fn wanted(versions: &[Rc<BundleManifest>]) -> Vec<(&str, &BundleFile, &str)> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    if let Some(v) = versions.first()
        && let Some(entry) = v.file(&v.entry)
    {
        out.push(("", entry, v.version.as_str()));
    }
    for v in versions {
        for f in &v.files {
            if seen.insert(f.path.clone()) {
                out.push((f.path.as_str(), f, v.version.as_str()));
            }
        }
    }
    out
}

/// Brings the copy in line with `versions` (the active one first). Cheap when it already
/// is: one read of the marker.
pub async fn sync(w: &Rc<Worker>, versions: &[Rc<BundleManifest>]) -> Result<(), SwError> {
    let Some(h) = helpers() else { return Ok(()) };
    let entries = wanted(versions);
    let (paths, lines) = (Array::new(), Array::new());
    for (path, file, version) in &entries {
        paths.push(&JsValue::from_str(path));
        lines.push(&format!("{} {version} {path}", file.sha256).into());
    }
    let missing = call(&h, "missing", &Array::of1(&lines)).await?;
    if missing.is_null() {
        return Ok(());
    }
    let put = Array::new();
    for i in missing.unchecked_into::<Array>().iter() {
        let Some((path, file, version)) = i.as_f64().and_then(|i| entries.get(i as usize)) else { continue };
        let blob = w.blob(&file.sha256).await?.ok_or_else(|| SwError::Js("a file for the cold copy is not stored".into()))?;
        let response = crate::fetch::stored_response(file, &blob, version)?;
        put.push(&Array::of2(&JsValue::from_str(path), &response));
    }
    call(&h, "sync", &Array::of3(&put, &paths, &lines)).await.map(drop)
}

/// Deletes the copy (the kill switch: a withdrawn app must not be served from it).
pub async fn drop_all() -> Result<(), SwError> {
    match helpers() {
        Some(h) => call(&h, "drop", &Array::new()).await.map(drop),
        None => Ok(()),
    }
}
