//! The data engine in the worker: one [`Engine`] per space, opened lazily on wake, each
//! a stead-core replica over the OPFS store and synced with the app's server over a
//! WebSocket. Pages reach it through the page API ([`api`]) and hear of changes on the
//! `stead` BroadcastChannel.
//!
//! A wasm module of its own (`stead-data.wasm`, a file of the app's bundle): the serving
//! module (`stead-sw`) compiles it on first data use and calls the functions in
//! [`exports`], so a page that never touches data never pays for this code.
//!
//! Where things live:
//! - IndexedDB `stead` ([`keys`]): this device's identity in each space and the space
//!   key, sealed under a non-extractable device key;
//! - each space's log, snapshot and metadata (stead-store): in OPFS under
//!   `stead-data/spaces/<space>/store/` (apart from the bundle's `stead/`), or in the
//!   IndexedDB database `stead-space-<space>` where OPFS cannot be written.
//!
//! All of these names are scoped by the worker's registration scope ([`crate::scope`]).

pub mod api;
pub mod blobs;
pub mod engine;
pub mod exports;
pub mod json;
pub mod keys;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use ed25519_dalek::SigningKey;
use js_sys::{Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use stead_core::crypto::SpaceKey;
use stead_core::env::{Clock, Random};
use stead_core::ids::{ReplicaId, SpaceId};
use wasm_bindgen::JsValue;

pub use stead_sw_common::{Kept, opfs, scope};

use opfs::Dir;
use engine::Engine;

pub const DATA_ROOT: &str = "stead-data";

/// Web Crypto's `getRandomValues`: keys, ids and nonces.
#[derive(Debug, Default, Clone, Copy)]
pub struct WebRandom;

impl Random for WebRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        // getRandomValues fills at most 65,536 bytes per call.
        for chunk in dest.chunks_mut(65_536) {
            let buf = Uint8Array::new_with_length(chunk.len() as u32);
            let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).expect("Web Crypto exists in workers");
            let get: js_sys::Function = Reflect::get(&crypto, &"getRandomValues".into()).expect("getRandomValues").into();
            get.call1(&crypto, &buf).expect("getRandomValues accepts a Uint8Array");
            buf.copy_to(chunk);
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct WebClock;

impl Clock for WebClock {
    fn now_ms(&self) -> u64 {
        js_sys::Date::now() as u64
    }
}

pub fn now_ms() -> u64 {
    WebClock.now_ms()
}

/// Which storage holds a space's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Opfs,
    Indexeddb,
}

impl StorageKind {
    /// OPFS where this scope can write files in it (a probe file is written through
    /// `createWritable`, read back and removed), IndexedDB otherwise: some engines open
    /// OPFS folders in a worker but refuse writable files there.
    pub async fn detect() -> StorageKind {
        const PROBE: &str = ".stead-write-probe";
        let writable = async {
            let root = data_root().await?;
            opfs::write_bytes(&root, PROBE, b"ok").await?;
            let read = opfs::read_bytes(&root, PROBE).await?;
            opfs::remove(&root, PROBE, false).await?;
            Ok::<bool, DataError>(read.as_deref() == Some(&b"ok"[..]))
        };
        match writable.await {
            Ok(true) => StorageKind::Opfs,
            _ => StorageKind::Indexeddb,
        }
    }
}

/// This device's place in one space: its replica and keys, the space key it made or was
/// given (the membership log gives the later ones, wrapped to `agreement`), and where
/// its log is stored. Kept sealed ([`keys`]); never sent anywhere but the creation
/// token, to the app's own server.
#[derive(Clone)]
pub struct Membership {
    pub space: SpaceId,
    pub replica: ReplicaId,
    pub signing: SigningKey,
    /// This device's X25519 secret, to which space keys are wrapped.
    pub agreement: [u8; 32],
    pub key: SpaceKey,
    pub storage: StorageKind,
    /// The server's space creation token, kept until the server has taken the space's
    /// first membership log (`Stead-Creation-Token`).
    pub creation_token: Option<String>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("space", &self.space).field("replica", &self.replica).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct SpaceFile {
    space: String,
    replica: String,
    signing: String,
    agreement: String,
    key: String,
    storage: StorageKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creation_token: Option<String>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

impl Membership {
    fn to_json(&self) -> Vec<u8> {
        let f = SpaceFile {
            space: self.space.to_string(),
            replica: self.replica.to_string(),
            signing: hex::encode(self.signing.to_bytes()),
            agreement: hex::encode(self.agreement),
            key: hex::encode(self.key.0),
            storage: self.storage,
            creation_token: self.creation_token.clone(),
        };
        serde_json::to_vec_pretty(&f).expect("serialisable")
    }

    fn from_json(bytes: &[u8]) -> Option<Membership> {
        let f: SpaceFile = serde_json::from_slice(bytes).ok()?;
        Some(Membership {
            space: f.space.parse().ok()?,
            replica: f.replica.parse().ok()?,
            signing: SigningKey::from_bytes(&hex32(&f.signing)?),
            agreement: hex32(&f.agreement)?,
            key: SpaceKey(hex32(&f.key)?),
            storage: f.storage,
            creation_token: f.creation_token,
        })
    }
}

/// Every space's engine, opened on first use.
#[derive(Default)]
pub struct Data {
    engines: RefCell<BTreeMap<SpaceId, Rc<Engine>>>,
    /// Serialises opening, so two requests at wake do not open one space twice.
    opening: futures::lock::Mutex<()>,
    /// Every stored space has been opened once in this worker life.
    woken: std::cell::Cell<bool>,
    /// The kill switch has begun: no space is added any more (one a page was creating as
    /// the kill began would otherwise be kept, unacknowledged, by a withdrawn app).
    retiring: std::cell::Cell<bool>,
}

thread_local! {
    static DATA: Rc<Data> = Rc::new(Data::default());
    /// Set once the kill switch has erased every space and the keys ([`Data::erase_rest`]).
    static ERASED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The gate in front of everything that creates the data's storage (the data folder,
/// the key database, a space's database): shut for the rest of this worker life once
/// the kill switch erased it all. Work that was under way when the kill began (a page's
/// request, a sync that now publishes, a creation token being forgotten) would otherwise
/// bring back an empty key database or data folder after the erase, and a worker
/// installing meanwhile would take it for data it must keep.
pub(crate) fn storage_open() -> Result<(), DataError> {
    if ERASED.get() {
        return Err(DataError::new(410, "gone", "this app was withdrawn and its data erased on this device"));
    }
    Ok(())
}

/// An error of the data engine, with the HTTP status the page API answers it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
    /// Extra members of the problem object (e.g. the current version of a conflict).
    pub extra: Option<serde_json::Value>,
}

impl DataError {
    pub fn new(status: u16, title: &'static str, detail: impl Into<String>) -> DataError {
        DataError { status, title, detail: detail.into(), extra: None }
    }
    pub fn bad_request(detail: impl Into<String>) -> DataError {
        DataError::new(400, "bad request", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> DataError {
        DataError::new(404, "not found", detail)
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.title, self.detail)
    }
}

impl From<opfs::FsError> for DataError {
    fn from(e: opfs::FsError) -> Self {
        if e.is_quota() {
            DataError::new(507, "storage full", format!("the browser refused the write: {e}"))
        } else {
            DataError::new(500, "storage error", e.to_string())
        }
    }
}

impl From<stead_store::opfs::OpfsError> for DataError {
    fn from(e: stead_store::opfs::OpfsError) -> Self {
        match e {
            stead_store::opfs::OpfsError::Fs(fs) => fs.into(),
            other => DataError::new(500, "storage error", other.to_string()),
        }
    }
}

impl From<stead_core::Error> for DataError {
    fn from(e: stead_core::Error) -> Self {
        match &e {
            stead_core::Error::Conflict { current, .. } => DataError {
                status: 409,
                title: "conflict",
                detail: e.to_string(),
                extra: Some(serde_json::json!({ "current_version": current.to_string() })),
            },
            stead_core::Error::Schema(_) | stead_core::Error::Validation { .. } => DataError::new(422, "invalid", e.to_string()),
            stead_core::Error::NoCurrentKey => DataError::new(
                403,
                "no current key",
                "this device does not hold the space's current key: it was removed from the space, or has not received the newest key yet",
            ),
            _ => DataError::new(500, "engine error", e.to_string()),
        }
    }
}

impl From<JsValue> for DataError {
    fn from(e: JsValue) -> Self {
        DataError::new(500, "browser error", opfs::FsError::from(e).to_string())
    }
}

async fn data_root() -> Result<Dir, DataError> {
    storage_open()?;
    Ok(opfs::dir(&crate::scope::opfs_root().await?, DATA_ROOT, true).await?.expect("created"))
}

/// The OPFS folder of a space's store.
pub async fn space_dir(space: SpaceId) -> Result<Dir, DataError> {
    let spaces = opfs::dir(&data_root().await?, "spaces", true).await?.expect("created");
    Ok(opfs::dir(&spaces, &space.to_string(), true).await?.expect("created"))
}

/// The IndexedDB database of a space's store.
pub fn space_db(space: SpaceId) -> String {
    format!("stead-space-{space}")
}

/// The IndexedDB database of a space's blobs (where its log is in IndexedDB too).
pub fn blob_db(space: SpaceId) -> String {
    format!("{}-blobs", space_db(space))
}

/// Removes a space's sealed identity from the registry (`keys`: the `spaces` store of
/// the `stead` database), so the space is no longer listed or opened.
async fn forget_identity(space: SpaceId) -> Result<(), DataError> {
    let database = stead_store::idb::db::open(keys::DB, &["keys", "spaces"]).await?;
    let deleted = stead_store::idb::db::delete(&database, "spaces", &space.to_string()).await;
    database.close();
    Ok(deleted?)
}

impl Data {
    pub fn get() -> Rc<Data> {
        DATA.with(Rc::clone)
    }

    /// The spaces this device holds (none once the kill switch erased them).
    pub async fn spaces(&self) -> Result<Vec<SpaceId>, DataError> {
        if ERASED.get() {
            return Ok(Vec::new());
        }
        keys::spaces().await
    }

    /// The engine of `space`, opening it on first use.
    pub async fn engine(&self, space: SpaceId) -> Result<Rc<Engine>, DataError> {
        if let Some(e) = self.engines.borrow().get(&space) {
            return Ok(e.clone());
        }
        let _guard = self.opening.lock().await;
        if let Some(e) = self.engines.borrow().get(&space) {
            return Ok(e.clone());
        }
        let me = keys::load(space).await?.ok_or_else(|| DataError::not_found(format!("this device holds no space {space}")))?;
        let engine = Engine::open(me, None).await?;
        self.engines.borrow_mut().insert(space, engine.clone());
        engine.connect();
        Ok(engine)
    }

    /// Stores a new space membership and opens its engine.
    pub async fn add_space(&self, me: Membership, members: stead_core::membership::Membership) -> Result<Rc<Engine>, DataError> {
        let _guard = self.opening.lock().await;
        if self.retiring.get() {
            return Err(DataError::new(410, "gone", "this app was withdrawn: no space can be added"));
        }
        let engine = Engine::open(me.clone(), Some(members)).await?;
        // The identity is saved last: a store without it is not a space yet.
        keys::save(&me).await?;
        self.engines.borrow_mut().insert(me.space, engine.clone());
        engine.connect();
        Ok(engine)
    }

    /// Opens every space and (re)connects its sync: what a wake does.
    /// After the first wake of a worker life every space is open (a new one is opened
    /// when it is added), so later wakes (each navigation, each heartbeat) only reconnect,
    /// without reading the space list again. A space that fails to open does not keep the
    /// others from syncing.
    pub async fn wake(&self) -> Result<(), DataError> {
        if !self.woken.get() {
            for space in self.spaces().await? {
                if let Err(e) = self.engine(space).await {
                    web_sys::console::warn_1(&format!("opening space {space}: {e}").into());
                }
            }
            self.woken.set(true);
        }
        for engine in self.open_engines() {
            engine.connect();
        }
        Ok(())
    }

    /// The kill switch's data side: every space gets `settle_ms` (all at once) to send
    /// what the server lacks; then each space the server holds all of is erased, and
    /// the others are kept, with their keys, until the server has them or the user agrees
    /// to lose them ([`Data::erase_all`]). Returns the kept spaces.
    pub async fn retire(&self, settle_ms: f64) -> Result<Vec<Kept>, DataError> {
        self.retiring.set(true);
        self.wake().await?;
        let engines = self.open_engines();
        futures::future::join_all(engines.iter().map(|e| e.settle(settle_ms))).await;
        self.erase_acknowledged().await
    }

    /// Erases every space the server holds all of (this device's entries acknowledged,
    /// no blob waiting to go up) and returns the others. A space that could not be opened
    /// cannot tell, and is kept. When nothing is kept, the key database and the data
    /// folder go too.
    pub async fn erase_acknowledged(&self) -> Result<Vec<Kept>, DataError> {
        self.retiring.set(true);
        let _guard = self.opening.lock().await;
        let mut kept = Vec::new();
        for space in self.spaces().await? {
            let engine = self.engines.borrow().get(&space).cloned();
            let Some(engine) = engine else {
                kept.push(Kept { space: space.to_string(), pending: None, blobs_pending: None });
                continue;
            };
            if let Some(k) = engine.unacknowledged() {
                kept.push(k);
            } else if let Err(e) = self.erase_space(&engine).await {
                web_sys::console::warn_1(&format!("erasing space {space}: {e}").into());
                kept.push(Kept { space: space.to_string(), pending: None, blobs_pending: None });
            }
        }
        if kept.is_empty() {
            self.erase_rest().await?;
        }
        Ok(kept)
    }

    /// Erases every space, acknowledged or not, and the keys: what the user agreed to.
    /// Returns the spaces erased.
    pub async fn erase_all(&self) -> Result<Vec<String>, DataError> {
        self.retiring.set(true);
        let _guard = self.opening.lock().await;
        let engines: Vec<Rc<Engine>> = std::mem::take(&mut *self.engines.borrow_mut()).into_values().collect();
        for engine in &engines {
            engine.close();
        }
        drop(engines);
        let spaces = self.spaces().await.unwrap_or_default();
        for space in &spaces {
            stead_store::idb::destroy(&space_db(*space)).await?;
            stead_store::idb::destroy(&blob_db(*space)).await?;
        }
        self.erase_rest().await?;
        Ok(spaces.iter().map(ToString::to_string).collect())
    }

    /// Erases one space: its identity first (a store without one is no space), then its
    /// log and blobs wherever they are.
    async fn erase_space(&self, engine: &Rc<Engine>) -> Result<(), DataError> {
        let space = engine.space();
        engine.close();
        self.engines.borrow_mut().remove(&space);
        forget_identity(space).await?;
        stead_store::idb::destroy(&space_db(space)).await?;
        stead_store::idb::destroy(&blob_db(space)).await?;
        // Without OPFS (WebKit) every space is in IndexedDB, already erased above.
        if let Ok(root) = crate::scope::opfs_root().await
            && let Some(data) = opfs::dir(&root, DATA_ROOT, false).await?
            && let Some(spaces) = opfs::dir(&data, "spaces", false).await?
        {
            opfs::remove(&spaces, &space.to_string(), true).await?;
        }
        Ok(())
    }

    /// The key database and the data folder, once no space is left in them. From here on
    /// nothing in this worker life creates them again ([`storage_open`]).
    async fn erase_rest(&self) -> Result<(), DataError> {
        ERASED.set(true);
        self.woken.set(false);
        stead_store::idb::destroy(keys::DB).await?;
        if let Ok(root) = crate::scope::opfs_root().await {
            opfs::remove(&root, DATA_ROOT, true).await?;
        }
        Ok(())
    }

    /// The open engines.
    pub fn open_engines(&self) -> Vec<Rc<Engine>> {
        self.engines.borrow().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_core::env::Random;
    use stead_core::membership::{Member, Membership as Members};
    use wasm_bindgen_futures::JsFuture;
    use wasm_bindgen_test::wasm_bindgen_test;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_service_worker);

    /// A new identity in a new space, and the space's first membership log.
    async fn new_space() -> (Membership, Members) {
        let mut rng = WebRandom;
        let space = SpaceId::generate(&WebClock, &mut rng);
        let me = Membership {
            space,
            replica: ReplicaId::generate(&WebClock, &mut rng),
            signing: SigningKey::from_bytes(&rng.array()),
            agreement: rng.array(),
            key: SpaceKey(rng.array()),
            storage: StorageKind::detect().await,
            creation_token: None,
        };
        let card = Member { replica: me.replica, signing: me.signing.verifying_key().to_bytes(), agreement: stead_core::crypto::agreement_public(&me.agreement) };
        let members = Members::genesis(space, card, &me.signing).expect("a genesis event");
        (me, members)
    }

    /// The data's storage that exists: the key database, spaces' databases, the data folder.
    async fn stored() -> Vec<String> {
        let mut out = Vec::new();
        let factory = stead_store::idb::db::factory().expect("indexedDB");
        let databases: js_sys::Function = Reflect::get(&factory, &"databases".into()).expect("indexedDB.databases").into();
        let list = JsFuture::from(js_sys::Promise::from(databases.call0(&factory).expect("listing"))).await.expect("listed");
        let keys_db = stead_store::idb::db::scoped_name(keys::DB);
        for d in js_sys::Array::from(&list).iter() {
            let name = Reflect::get(&d, &"name".into()).ok().and_then(|n| n.as_string()).unwrap_or_default();
            if name == keys_db || name.starts_with("stead-space-") {
                out.push(format!("idb:{name}"));
            }
        }
        let root = crate::scope::opfs_root().await.expect("OPFS");
        if opfs::dir(&root, DATA_ROOT, false).await.expect("looked up").is_some() {
            out.push(format!("opfs:{DATA_ROOT}"));
        }
        out
    }

    /// A killed worker is still asked things after the kill switch erased its data: its
    /// spaces (status, a page's heartbeat), a new space (a page's request already under
    /// way), its identity saved again (a sync that just published). None of it may bring
    /// back storage, which a worker installing meanwhile would take for data to keep.
    /// (This shuts the gate for the rest of this test binary.)
    #[wasm_bindgen_test]
    async fn once_the_kill_switch_erased_the_data_nothing_brings_it_back() {
        crate::scope::init();
        let data = Data::default();
        let (me, members) = new_space().await;
        data.add_space(me.clone(), members).await.expect("a space is added");
        let keys_db = format!("idb:{}", stead_store::idb::db::scoped_name(keys::DB));
        assert!(stored().await.contains(&keys_db), "the space's identity is stored");
        assert_eq!(data.erase_all().await.expect("erased"), vec![me.space.to_string()]);
        assert_eq!(stored().await, Vec::<String>::new(), "the erase leaves nothing");

        assert_eq!(data.spaces().await, Ok(Vec::new()));
        data.wake().await.expect("a wake with nothing to open");
        assert!(data.erase_acknowledged().await.expect("nothing to keep").is_empty());
        let (late, late_members) = new_space().await;
        assert_eq!(data.add_space(late.clone(), late_members).await.err().map(|e| e.status), Some(410));
        assert_eq!(keys::save(&me).await.err().map(|e| e.status), Some(410));
        assert!(Engine::open(late, None).await.is_err());
        assert_eq!(stored().await, Vec::<String>::new(), "storage came back after the erase");
    }
}
