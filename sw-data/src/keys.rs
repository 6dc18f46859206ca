//! This device's secrets at rest. Each space's identity and key are sealed with
//! AES-256-GCM under a device key that is a **non-extractable** WebCrypto `CryptoKey`:
//! the browser keeps its bytes out of reach of script (including this worker), and
//! stores it in IndexedDB as an opaque object. Both the key and the sealed spaces live
//! in the IndexedDB database `stead`, so they work whether or not OPFS does.
//!
//! A record is sealed with its space id as associated data, so a record moved into
//! another space's slot does not open. Records sealed before that binding open the old
//! way once (and must name their own space), then are sealed again bound to it.

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
const RECORD_DOMAIN: &[u8] = b"stead-space-record-v1\0";

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

/// `AesKeyGenParams` of the device key.
fn aes_key() -> Result<JsValue, DataError> {
    let o = Object::new();
    Reflect::set(&o, &"name".into(), &"AES-GCM".into())?;
    Reflect::set(&o, &"length".into(), &256.into())?;
    Ok(o.into())
}

/// `AesGcmParams` of one seal or unseal; `ad` is the associated data, if any.
fn aes(iv: &[u8], ad: Option<&[u8]>) -> Result<JsValue, DataError> {
    let o = Object::new();
    Reflect::set(&o, &"name".into(), &"AES-GCM".into())?;
    Reflect::set(&o, &"iv".into(), &Uint8Array::from(iv))?;
    if let Some(ad) = ad {
        Reflect::set(&o, &"additionalData".into(), &Uint8Array::from(ad))?;
    }
    Ok(o.into())
}

/// The associated data of a space's record: what binds it to that space's slot.
fn record_ad(space: SpaceId) -> Vec<u8> {
    [RECORD_DOMAIN, space.as_bytes()].concat()
}

async fn open_db() -> Result<IdbDatabase, DataError> {
    super::storage_open()?;
    Ok(db::open(DB, &[KEYS, SPACES]).await?)
}

/// The device key, made on first use.
async fn device_key(database: &IdbDatabase) -> Result<JsValue, DataError> {
    if let Some(k) = db::get(database, KEYS, "device").await? {
        return Ok(k);
    }
    let usages = Array::of2(&"encrypt".into(), &"decrypt".into());
    let key = call("generateKey", &Array::of3(&aes_key()?, &JsValue::FALSE, &usages)).await?;
    db::put(database, KEYS, "device", &key).await?;
    Ok(key)
}

async fn seal(database: &IdbDatabase, plain: &[u8], ad: &[u8]) -> Result<Vec<u8>, DataError> {
    let key = device_key(database).await?;
    let mut iv = [0u8; NONCE];
    stead_core::env::Random::fill(&mut super::WebRandom, &mut iv);
    let ct = call("encrypt", &Array::of3(&aes(&iv, Some(ad))?, &key, &Uint8Array::from(plain))).await?;
    let mut out = iv.to_vec();
    out.extend(Uint8Array::new(&ct).to_vec());
    Ok(out)
}

/// The plain record, or `None` when it does not open (damaged, sealed under another
/// device key, or with other associated data).
async fn unseal(database: &IdbDatabase, sealed: &[u8], ad: Option<&[u8]>) -> Result<Option<Vec<u8>>, DataError> {
    if sealed.len() < NONCE {
        return Ok(None);
    }
    let key = device_key(database).await?;
    let (iv, ct) = sealed.split_at(NONCE);
    let plain = call("decrypt", &Array::of3(&aes(iv, ad)?, &key, &Uint8Array::from(ct))).await;
    Ok(plain.ok().map(|p| Uint8Array::new(&p).to_vec()))
}

async fn put(database: &IdbDatabase, space: SpaceId, plain: &[u8]) -> Result<(), DataError> {
    let sealed = seal(database, plain, &record_ad(space)).await?;
    Ok(db::put(database, SPACES, &space.to_string(), &Uint8Array::from(sealed.as_slice()).into()).await?)
}

/// Stores this device's membership of a space, sealed.
pub async fn save(me: &Membership) -> Result<(), DataError> {
    let database = open_db().await?;
    put(&database, me.space, &me.to_json()).await?;
    database.close();
    Ok(())
}

pub async fn load(space: SpaceId) -> Result<Option<Membership>, DataError> {
    let database = open_db().await?;
    let out = match db::get(&database, SPACES, &space.to_string()).await? {
        Some(v) => Some(open_record(&database, space, &Uint8Array::new(&v).to_vec()).await?),
        None => None,
    };
    database.close();
    Ok(out)
}

async fn open_record(database: &IdbDatabase, space: SpaceId, sealed: &[u8]) -> Result<Membership, DataError> {
    let fail = |why: String| DataError::new(500, "storage error", format!("space {space}: its sealed record {why}"));
    let (plain, bound) = match unseal(database, sealed, Some(&record_ad(space))).await? {
        Some(plain) => (plain, true),
        None => match unseal(database, sealed, None).await? {
            Some(plain) => (plain, false),
            None => return Err(fail("does not open: it is damaged, sealed under another device key, or another space's".into())),
        },
    };
    let me = Membership::from_json(&plain).ok_or_else(|| fail("is damaged".into()))?;
    if me.space != space {
        return Err(fail(format!("is space {}'s", me.space)));
    }
    if !bound && let Err(e) = put(database, space, &plain).await {
        // The old form still opens next time; only the binding waits.
        web_sys::console::warn_1(&format!("space {space}: sealing its record bound to the space: {e}").into());
    }
    Ok(me)
}

pub async fn spaces() -> Result<Vec<SpaceId>, DataError> {
    let database = open_db().await?;
    let mut out: Vec<SpaceId> = db::all(&database, SPACES).await?.iter().filter_map(|(k, _)| k.parse().ok()).collect();
    database.close();
    out.sort();
    Ok(out)
}
