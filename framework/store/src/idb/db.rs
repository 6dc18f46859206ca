//! Small async helpers over IndexedDB's request/event API, for workers and pages.

use js_sys::{Array, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbFactory, IdbKeyRange, IdbObjectStore, IdbOpenDbRequest, IdbRequest, IdbTransaction, IdbTransactionMode};

use crate::opfs::fs::FsError;

/// The current scope's `indexedDB`.
pub fn factory() -> Result<IdbFactory, FsError> {
    let f = Reflect::get(&js_sys::global(), &"indexedDB".into())?;
    if f.is_undefined() {
        return Err(FsError { name: "NotSupportedError".into(), message: "this scope has no indexedDB".into() });
    }
    Ok(f.unchecked_into())
}

/// Resolves with the request's result once it succeeds.
pub async fn request(req: &IdbRequest) -> Result<JsValue, FsError> {
    let promise = Promise::new(&mut |resolve, reject| {
        let r = req.clone();
        let ok = Closure::once_into_js(move |_: JsValue| {
            let _ = resolve.call1(&JsValue::NULL, &r.result().unwrap_or(JsValue::UNDEFINED));
        });
        let r = req.clone();
        let err = Closure::once_into_js(move |_: JsValue| {
            let e = r.error().ok().flatten().map(JsValue::from).unwrap_or_else(|| "IndexedDB request failed".into());
            let _ = reject.call1(&JsValue::NULL, &e);
        });
        req.set_onsuccess(Some(ok.unchecked_ref()));
        req.set_onerror(Some(err.unchecked_ref()));
    });
    Ok(JsFuture::from(promise).await?)
}

/// Resolves when the transaction has committed (its `complete` event), which is when
/// its writes are durable.
pub async fn committed(tx: &IdbTransaction) -> Result<(), FsError> {
    let promise = Promise::new(&mut |resolve, reject| {
        let ok = Closure::once_into_js(move |_: JsValue| {
            let _ = resolve.call0(&JsValue::NULL);
        });
        let t = tx.clone();
        let fail = Closure::once_into_js(move |_: JsValue| {
            let e = t.error().map(JsValue::from).unwrap_or_else(|| "IndexedDB transaction aborted".into());
            let _ = reject.call1(&JsValue::NULL, &e);
        });
        tx.set_oncomplete(Some(ok.unchecked_ref()));
        let fail: js_sys::Function = fail.unchecked_into();
        tx.set_onerror(Some(&fail));
        tx.set_onabort(Some(&fail));
    });
    JsFuture::from(promise).await?;
    Ok(())
}

thread_local! {
    static NAMESPACE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Puts every database this thread opens or deletes from now on under `namespace`: the
/// name `n` becomes `n@namespace` (an empty namespace keeps names as they are). A
/// service worker sets it once, from its registration scope, so two apps under
/// different scopes of one origin never share a database, whoever names it.
pub fn set_namespace(namespace: &str) {
    NAMESPACE.with(|n| *n.borrow_mut() = namespace.to_owned());
}

/// The name a database called `name` really has under the current namespace.
pub fn scoped_name(name: &str) -> String {
    NAMESPACE.with(|n| {
        let n = n.borrow();
        if n.is_empty() { name.to_owned() } else { format!("{name}@{n}") }
    })
}

/// Opens (creating, at version 1) a database with the given object stores.
pub async fn open(name: &str, stores: &[&str]) -> Result<IdbDatabase, FsError> {
    let req: IdbOpenDbRequest = factory()?.open_with_u32(&scoped_name(name), 1)?;
    let names: Vec<String> = stores.iter().map(|s| (*s).to_owned()).collect();
    let r = req.clone();
    let upgrade = Closure::once_into_js(move |_: JsValue| {
        if let Ok(db) = r.result().map(JsCast::unchecked_into::<IdbDatabase>) {
            for n in &names {
                if !db.object_store_names().contains(n) {
                    let _ = db.create_object_store(n);
                }
            }
        }
    });
    req.set_onupgradeneeded(Some(upgrade.unchecked_ref()));
    Ok(request(&req).await?.unchecked_into())
}

pub async fn delete_database(name: &str) -> Result<(), FsError> {
    let req = factory()?.delete_database(&scoped_name(name))?;
    request(&req).await?;
    Ok(())
}

pub fn transaction(db: &IdbDatabase, stores: &[&str], write: bool) -> Result<IdbTransaction, FsError> {
    let names = Array::new();
    for s in stores {
        names.push(&JsValue::from_str(s));
    }
    let mode = if write { IdbTransactionMode::Readwrite } else { IdbTransactionMode::Readonly };
    Ok(db.transaction_with_str_sequence_and_mode(&names, mode)?)
}

pub fn store(tx: &IdbTransaction, name: &str) -> Result<IdbObjectStore, FsError> {
    Ok(tx.object_store(name)?)
}

pub async fn get(db: &IdbDatabase, store_name: &str, key: &str) -> Result<Option<JsValue>, FsError> {
    let tx = transaction(db, &[store_name], false)?;
    let v = request(&store(&tx, store_name)?.get(&key.into())?).await?;
    Ok((!v.is_undefined()).then_some(v))
}

pub async fn put(db: &IdbDatabase, store_name: &str, key: &str, value: &JsValue) -> Result<(), FsError> {
    let tx = transaction(db, &[store_name], true)?;
    store(&tx, store_name)?.put_with_key(value, &key.into())?;
    committed(&tx).await
}

pub async fn delete(db: &IdbDatabase, store_name: &str, key: &str) -> Result<(), FsError> {
    let tx = transaction(db, &[store_name], true)?;
    store(&tx, store_name)?.delete(&key.into())?;
    committed(&tx).await
}

/// Every (key, value) of a store, in key order.
pub async fn all(db: &IdbDatabase, store_name: &str) -> Result<Vec<(String, JsValue)>, FsError> {
    let tx = transaction(db, &[store_name], false)?;
    let s = store(&tx, store_name)?;
    let keys: Array = request(&s.get_all_keys()?).await?.unchecked_into();
    let values: Array = request(&s.get_all()?).await?.unchecked_into();
    Ok(keys.iter().zip(values.iter()).map(|(k, v)| (k.as_string().unwrap_or_default(), v)).collect())
}

/// Every key of a store, in key order, without reading the values.
pub async fn keys(db: &IdbDatabase, store_name: &str) -> Result<Vec<String>, FsError> {
    let tx = transaction(db, &[store_name], false)?;
    let keys: Array = request(&store(&tx, store_name)?.get_all_keys()?).await?.unchecked_into();
    Ok(keys.iter().map(|k| k.as_string().unwrap_or_default()).collect())
}

/// Every (key, value) of a store with keys in each of `ranges` (`[from, to)`, `None` for
/// no bound), range by range, in key order, all read in one transaction.
pub async fn ranges(db: &IdbDatabase, store_name: &str, ranges: &[(Option<String>, Option<String>)]) -> Result<Vec<(String, JsValue)>, FsError> {
    let tx = transaction(db, &[store_name], false)?;
    let s = store(&tx, store_name)?;
    let mut requests = Vec::new();
    for (from, to) in ranges {
        let range = match (from, to) {
            (Some(f), Some(t)) => IdbKeyRange::bound_with_lower_open_and_upper_open(&f.into(), &t.into(), false, true)?,
            (Some(f), None) => IdbKeyRange::lower_bound(&f.into())?,
            (None, Some(t)) => IdbKeyRange::upper_bound_with_open(&t.into(), true)?,
            (None, None) => {
                requests.push((s.get_all_keys()?, s.get_all()?));
                continue;
            }
        };
        requests.push((s.get_all_keys_with_key(&range)?, s.get_all_with_key(&range)?));
    }
    // The requests were all made before any is awaited, so they run in one go.
    let mut out = Vec::new();
    for (keys, values) in requests {
        let keys: Array = request(&keys).await?.unchecked_into();
        let values: Array = request(&values).await?.unchecked_into();
        out.extend(keys.iter().zip(values.iter()).map(|(k, v)| (k.as_string().unwrap_or_default(), v)));
    }
    Ok(out)
}
