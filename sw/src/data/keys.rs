//! This device's secrets at rest. Each space's identity and key are sealed with
//! AES-256-GCM under a device key that is a **non-extractable** WebCrypto `CryptoKey`:
//! the browser keeps its bytes out of reach of script (including this worker), and
//! stores it in IndexedDB as an opaque object. Both the key and the sealed spaces live
//! in the IndexedDB database `stead`, so they work whether or not OPFS does.

use js_sys::{Array, Object, Promise, Reflect, Uint8Array};
use stead_core::ids::SpaceId;
use stead_store::idb::db;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::IdbDatabase;

use super::{DataError, Membership};

pub const DB: &str = "stead";
const KEYS: &str = "keys";
const SPACES: &str = "spaces";
const NONCE: usize = 12;

fn subtle() -> Result<JsValue, DataError> {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into())?;
    Ok(Reflect::get(&crypto, &"subtle".into())?)
}

async fn call(method: &str, args: &Array) -> Result<JsValue, DataError> {
    let s = subtle()?;
    let f: js_sys::Function = Reflect::get(&s, &method.into())?.dyn_into()?;
    let p: Promise = f.apply(&s, args)?.dyn_into()?;
    Ok(JsFuture::from(p).await?)
}

fn aes(iv: Option<&[u8]>) -> Result<JsValue, DataError> {
    let o = Object::new();
    Reflect::set(&o, &"name".into(), &"AES-GCM".into())?;
    match iv {
        Some(iv) => Reflect::set(&o, &"iv".into(), &Uint8Array::from(iv))?,
        None => Reflect::set(&o, &"length".into(), &256.into())?,
    };
    Ok(o.into())
}

async fn open_db() -> Result<IdbDatabase, DataError> {
    Ok(db::open(DB, &[KEYS, SPACES]).await?)
}

/// The device key, made on first use.
async fn device_key(database: &IdbDatabase) -> Result<JsValue, DataError> {
    if let Some(k) = db::get(database, KEYS, "device").await? {
        return Ok(k);
    }
    let usages = Array::of2(&"encrypt".into(), &"decrypt".into());
    let key = call("generateKey", &Array::of3(&aes(None)?, &JsValue::FALSE, &usages)).await?;
    db::put(database, KEYS, "device", &key).await?;
    Ok(key)
}

async fn seal(database: &IdbDatabase, plain: &[u8]) -> Result<Vec<u8>, DataError> {
    let key = device_key(database).await?;
    let mut iv = [0u8; NONCE];
    stead_core::env::Random::fill(&mut super::WebRandom, &mut iv);
    let ct = call("encrypt", &Array::of3(&aes(Some(&iv))?, &key, &Uint8Array::from(plain))).await?;
    let mut out = iv.to_vec();
    out.extend(Uint8Array::new(&ct).to_vec());
    Ok(out)
}

async fn unseal(database: &IdbDatabase, sealed: &[u8]) -> Result<Vec<u8>, DataError> {
    let damaged = || DataError::new(500, "storage error", "a sealed space record is damaged or was sealed under another device key");
    if sealed.len() < NONCE {
        return Err(damaged());
    }
    let key = device_key(database).await?;
    let (iv, ct) = sealed.split_at(NONCE);
    let plain = call("decrypt", &Array::of3(&aes(Some(iv))?, &key, &Uint8Array::from(ct))).await.map_err(|_| damaged())?;
    Ok(Uint8Array::new(&plain).to_vec())
}

/// Stores this device's membership of a space, sealed.
pub async fn save(me: &Membership) -> Result<(), DataError> {
    let database = open_db().await?;
    let sealed = seal(&database, &me.to_json()).await?;
    db::put(&database, SPACES, &me.space.to_string(), &Uint8Array::from(sealed.as_slice()).into()).await?;
    database.close();
    Ok(())
}

pub async fn load(space: SpaceId) -> Result<Option<Membership>, DataError> {
    let database = open_db().await?;
    let out = match db::get(&database, SPACES, &space.to_string()).await? {
        Some(v) => {
            let plain = unseal(&database, &Uint8Array::new(&v).to_vec()).await?;
            Some(Membership::from_json(&plain).ok_or_else(|| DataError::new(500, "storage error", format!("space {space}: its record is damaged")))?)
        }
        None => None,
    };
    database.close();
    Ok(out)
}

pub async fn spaces() -> Result<Vec<SpaceId>, DataError> {
    let database = open_db().await?;
    let mut out: Vec<SpaceId> = db::all(&database, SPACES).await?.iter().filter_map(|(k, _)| k.parse().ok()).collect();
    database.close();
    out.sort();
    Ok(out)
}
