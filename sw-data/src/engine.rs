//! One space's engine: the replica over its OPFS store, and its sync connection.
//!
//! Everything runs on the worker's one thread. No `RefCell` borrow is held across an
//! `await`; the store's flush is serialised by an async mutex.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{ArrayBuffer, Reflect, Uint8Array};
use serde_json::json;
use stead_core::crypto::SpaceKey;
use stead_core::env::Random;
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::membership::{InviteSecret, InviteState, InviteTerms, MemberEvent, Membership as Members, Role};
use stead_core::log::VersionVector;
use stead_core::replica::{Config as ReplicaConfig, Identity, Replica};
use stead_core::store::Store;
use stead_core::sync::{Frame, Sync, SyncConfig, code};
use stead_store::CachedStore;
use stead_store::idb::IdbStore;
use stead_store::opfs::{OpfsError, OpfsOptions, OpfsStore};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use super::{DataError, Membership, StorageKind, WebRandom, now_ms};
use crate::opfs;

/// Reconnect delays: the first, and the cap; each is jittered down to half its value.
const BACKOFF_MIN_MS: f64 = 250.0;
const BACKOFF_MAX_MS: f64 = 15_000.0;

/// A snapshot is written after this many new entries...
const SNAPSHOT_EVERY: u64 = 1_000;
/// ...once writes have paused this long.
const SNAPSHOT_IDLE_MS: f64 = 2_000.0;

/// The store's metadata key holding this device's acknowledged position (u64, LE).
const ACKED_META: &str = "acked";

/// The acknowledged position stored by [`ACKED_META`]; 0 when none was stored or it does
/// not parse (the next connection's vector restores it).
fn read_acked(replica: &Replica) -> u64 {
    replica
        .store()
        .meta(ACKED_META)
        .ok()
        .flatten()
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

/// The sync state pages see.
#[derive(Debug, Clone, Default)]
pub struct SyncStatus {
    pub connected: bool,
    pub connecting: bool,
    pub connects: u64,
    /// This device's entries below this seq are durably on the server.
    pub acked: u64,
    pub last_synced: Option<u64>,
    pub last_error: Option<String>,
    /// The server refused us (not a member, protocol error) rather than being unreachable.
    pub refused: bool,
    /// Why the last entry this device refused was refused (forged, dated too far ahead):
    /// that replica's chain is skipped while the rest of the space syncs on.
    pub rejected: Option<String>,
    /// The refusal last answered by reconnecting with a fresh membership log: met again,
    /// the fresh log did not help, and the chain is skipped instead.
    pub refreshed_for: Option<String>,
    /// Membership events of other devices dropped when this device's log was rebased
    /// onto the server's (they could not be signed again).
    pub members_dropped: Option<String>,
}

struct Conn {
    ws: WebSocket,
    sync: Sync,
    open: bool,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

/// The storage under a space's replica.
#[derive(Debug)]
pub enum Backend {
    Opfs(OpfsStore),
    Idb(IdbStore),
}

impl Backend {
    async fn open(me: &Membership) -> Result<Backend, DataError> {
        Ok(match me.storage {
            StorageKind::Opfs => {
                let dir = opfs::dir(&super::space_dir(me.space).await?, "store", true).await?.expect("created");
                Backend::Opfs(OpfsStore::open(dir, OpfsOptions::default()).await?)
            }
            StorageKind::Indexeddb => {
                super::storage_open()?;
                Backend::Idb(IdbStore::open(&super::space_db(me.space), Default::default()).await?)
            }
        })
    }

    fn cache(&self) -> CachedStore {
        match self {
            Backend::Opfs(s) => s.cache(),
            Backend::Idb(s) => s.cache(),
        }
    }

    fn has_pending(&self) -> bool {
        match self {
            Backend::Opfs(s) => s.has_pending(),
            Backend::Idb(s) => s.has_pending(),
        }
    }

    async fn flush(&mut self) -> Result<usize, OpfsError> {
        match self {
            Backend::Opfs(s) => s.flush().await,
            Backend::Idb(s) => s.flush().await,
        }
    }

    /// Reads into the cache the entries from `want`'s seqs on that opening left on disk.
    async fn load(&mut self, want: &VersionVector) -> Result<(), OpfsError> {
        match self {
            Backend::Opfs(s) => s.load(want).await,
            Backend::Idb(s) => s.load(want).await,
        }
    }

    async fn load_all(&mut self) -> Result<(), OpfsError> {
        match self {
            Backend::Opfs(s) => s.load_all().await,
            Backend::Idb(s) => s.load_all().await,
        }
    }

    fn recovered(&self) -> Option<String> {
        match self {
            Backend::Opfs(s) => s.recovered().map(|r| {
                format!("cut a damaged log tail in {}: kept {} bytes, dropped {} ({})", r.segment, r.kept_bytes, r.dropped_bytes, r.reason)
            }),
            Backend::Idb(s) => s.recovered().map(str::to_owned),
        }
    }

    fn close(&self) {
        if let Backend::Idb(s) = self {
            s.close();
        }
    }
}

impl Conn {
    /// Closes the socket without hearing from it again.
    fn shut(self) {
        self.ws.set_onclose(None);
        self.ws.set_onmessage(None);
        self.ws.set_onopen(None);
        let _ = self.ws.close();
    }
}

pub struct Engine {
    me: Membership,
    replica: RefCell<Replica>,
    store: futures::lock::Mutex<Backend>,
    /// The store's in-memory side, shared with the replica.
    cache: RefCell<stead_store::CachedStore>,
    /// Counts rollbacks after failed flushes: a writer whose flush saw the count change
    /// knows its write was undone.
    rollbacks: Cell<u64>,
    conn: RefCell<Option<Conn>>,
    status: RefCell<SyncStatus>,
    attempt: Cell<u32>,
    /// How many membership events the server is known to hold.
    members_pushed: Cell<usize>,
    recovered: RefCell<Option<String>>,
    /// The server's creation token, until the server has taken the space's first
    /// membership log.
    creation_token: RefCell<Option<String>>,
    /// Set by [`Engine::close`]: no more connections.
    closed: Cell<bool>,
    /// How many entries the replica held at the last snapshot (or at open).
    snapshot_at: Cell<u64>,
    /// How many entries the snapshot on disk covers (status `snapshot_entries`): set once
    /// its flush is done, so a page (a test, the benchmark) that waits for it and then
    /// stops the worker wakes from it.
    snapshot_stored: Cell<u64>,
    /// When the last write or sync change happened (ms), for snapshot timing.
    last_write: Cell<f64>,
    /// Whether a snapshot timer is waiting for writes to pause.
    snapshot_timer: Cell<bool>,
    /// What holds the store's lock and since when (ms), and how many wait for it: status
    /// shows them (`store`), so a request stuck behind the store says where.
    store_held: RefCell<Option<(&'static str, f64)>>,
    store_waiting: Cell<u32>,
}

/// The store, locked by [`Engine::lock_store`]; unlocking clears what status shows.
struct StoreGuard<'a> {
    guard: futures::lock::MutexGuard<'a, Backend>,
    held: &'a RefCell<Option<(&'static str, f64)>>,
}

impl std::ops::Deref for StoreGuard<'_> {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        &self.guard
    }
}

impl std::ops::DerefMut for StoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Backend {
        &mut self.guard
    }
}

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        *self.held.borrow_mut() = None;
    }
}

/// Counts a waiter for the store's lock while it lives.
struct Waiting<'a>(&'a Cell<u32>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("space", &self.me.space).finish_non_exhaustive()
    }
}

fn identity(me: &Membership) -> Identity {
    Identity { space: me.space, replica: me.replica, signing: me.signing.clone(), agreement: me.agreement, space_key: me.key.clone() }
}

async fn open_replica(me: &Membership, members: Option<Members>) -> Result<(Backend, Replica), DataError> {
    // The store opens with the snapshot and the log past it; this device's own entries the
    // server has not acknowledged are loaded too, since the next connection sends them.
    let mut store = Backend::open(me).await?;
    let mut cache = store.cache();
    let acked = cache.meta(ACKED_META)?.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map_or(0, u64::from_le_bytes);
    let mut own = VersionVector::new();
    own.insert(me.replica, acked);
    store.load(&own).await?;
    let stored = cache.meta("membership")?.map(|b| Members::decode(&b)).transpose()?;
    let (members, fresh) = match (stored, members) {
        (Some(s), Some(m)) if m.events().len() > s.events().len() => (m, true),
        (Some(s), _) => (s, false),
        (None, Some(m)) => (m, true),
        (None, None) => return Err(DataError::new(500, "storage error", format!("space {}: no membership log stored", me.space))),
    };
    if fresh {
        cache.put_meta("membership", &members.encode())?;
    }
    let schema = cache.meta("schema")?;
    let mut replica = match Replica::open(identity(me), members.clone(), Box::new(cache.clone()), ReplicaConfig::default()) {
        // The snapshot cannot serve (another space's, or it covers entries the log lost):
        // the replica replays the whole log.
        Err(stead_core::Error::NotLoaded { .. }) => {
            store.load_all().await?;
            Replica::open(identity(me), members, Box::new(cache), ReplicaConfig::default())?
        }
        r => r?,
    };
    if let Some(text) = schema {
        let schema = stead_core::schema::Schema::from_json(&String::from_utf8_lossy(&text))?;
        replica.set_schema(schema)?;
    }
    Ok((store, replica))
}

/// The app's server, from the worker's own origin.
fn server_base() -> String {
    let scope: web_sys::ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
    scope.location().origin()
}

/// The `Authorization` header proving `me` sends a request to the worker's own server
/// (see stead-core's `request_message`), with a body of SHA-256 `body_sha256`.
pub fn authorization(space: SpaceId, replica: ReplicaId, key: &ed25519_dalek::SigningKey, method: &str, path: &str, body_sha256: [u8; 32]) -> String {
    let host = server_host();
    let target = stead_core::sync::RequestTarget { method, host: &host, path_and_query: path, body_sha256 };
    stead_core::sync::authorization(request_time(), space, replica, key, &target)
}

/// The `Authorization` header with which the holder of an invite reads the membership
/// log before joining (a GET with no body).
fn invite_authorization(space: SpaceId, secret: &InviteSecret, path: &str) -> String {
    let host = server_host();
    let target = stead_core::sync::RequestTarget { method: "GET", host: &host, path_and_query: path, body_sha256: stead_core::sync::body_hash(b"") };
    stead_core::sync::invite_authorization(request_time(), space, secret, &target)
}

fn server_host() -> String {
    let scope: web_sys::ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
    scope.location().host()
}

/// The time to sign a request with: never a millisecond already used, since the server
/// takes each signature once and two identical requests in one millisecond would sign
/// the same bytes.
fn request_time() -> u64 {
    thread_local! { static LAST: std::cell::Cell<u64> = const { std::cell::Cell::new(0) }; }
    LAST.with(|last| {
        let t = now_ms().max(last.get() + 1);
        last.set(t);
        t
    })
}

/// A fetch from the worker to the server; `Err` holds a readable reason.
pub async fn server_fetch(method: &str, path: &str, auth: Option<String>, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), String> {
    server_fetch_with(method, path, auth, None, body).await
}

/// [`server_fetch`] with a `Stead-Creation-Token` header when `token` is given.
async fn server_fetch_with(method: &str, path: &str, auth: Option<String>, token: Option<&str>, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), String> {
    let scope: web_sys::ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    init.set_cache(web_sys::RequestCache::NoStore);
    let headers = web_sys::Headers::new().map_err(|e| opfs::FsError::from(e).to_string())?;
    if let Some(a) = auth {
        headers.set("authorization", &a).map_err(|e| opfs::FsError::from(e).to_string())?;
    }
    if let Some(t) = token {
        headers.set("stead-creation-token", t).map_err(|e| opfs::FsError::from(e).to_string())?;
    }
    init.set_headers(&headers);
    if let Some(b) = body {
        init.set_body(&Uint8Array::from(b).into());
    }
    let url = format!("{}{path}", server_base());
    let resp: web_sys::Response = JsFuture::from(scope.fetch_with_str_and_init(&url, &init))
        .await
        .map_err(|e| format!("network error: {}", opfs::FsError::from(e)))?
        .unchecked_into();
    let buf = JsFuture::from(resp.array_buffer().map_err(|e| opfs::FsError::from(e).to_string())?)
        .await
        .map_err(|e| format!("network error: {}", opfs::FsError::from(e)))?;
    Ok((resp.status(), Uint8Array::new(&buf).to_vec()))
}

pub async fn get_members(space: SpaceId, replica: ReplicaId, key: &ed25519_dalek::SigningKey) -> Result<Members, DataError> {
    let path = format!("/spaces/{space}/members");
    let auth = authorization(space, replica, key, "GET", &path, stead_core::sync::body_hash(b""));
    match server_fetch("GET", &path, Some(auth), None).await {
        Ok((200, body)) => Ok(Members::decode(&body)?),
        Ok((401 | 403 | 404, _)) => Err(DataError::new(403, "not invited", format!("the server does not list this device in space {space} (yet)"))),
        Ok((status, body)) => Err(DataError::new(502, "server error", format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))),
        Err(reason) => Err(DataError::new(503, "offline", format!("the server could not be reached: {reason}"))),
    }
}

/// The membership log of `space` as the holder of an invite may read it (to join).
/// A server that does not take the invite (used, cancelled, expired, or not published
/// yet) answers 401, told here as 410.
pub async fn get_members_invited(space: SpaceId, secret: &InviteSecret) -> Result<Members, DataError> {
    let path = format!("/spaces/{space}/members");
    let auth = invite_authorization(space, secret, &path);
    match server_fetch("GET", &path, Some(auth), None).await {
        Ok((200, body)) => Ok(Members::decode(&body)?),
        Ok((401 | 403 | 404, _)) => Err(invite_not_usable()),
        Ok((status, body)) => Err(DataError::new(502, "server error", format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))),
        Err(reason) => Err(DataError::new(503, "offline", format!("the server could not be reached: {reason}"))),
    }
}

/// The answer to a join through an invite the server does not take.
pub fn invite_not_usable() -> DataError {
    DataError::new(
        410,
        "invite not usable",
        "the invite was used already, cancelled or has expired (or the device that made it has not reached the server since): ask for a new one",
    )
}

/// Why a membership log was not published.
pub enum PutMembers {
    /// The server holds a log ours does not extend (409): another device's events went
    /// up first, or ours is behind.
    Conflict,
    /// The server answered and refused it (say 403: no creation token; 410: a join after
    /// its invite expired): trying again will not help until something changes.
    Refused(u16, String),
    /// The server could not be reached, or failed.
    Failed(String),
}

impl PutMembers {
    pub fn reason(self) -> String {
        match self {
            PutMembers::Conflict => "the server's membership log moved on meanwhile".to_owned(),
            PutMembers::Refused(_, reason) | PutMembers::Failed(reason) => reason,
        }
    }
}

/// Publishes a membership log, with the server's creation token where one is given.
pub async fn put_members(members: &Members, token: Option<&str>) -> Result<(), PutMembers> {
    let path = format!("/spaces/{}/members", members.space());
    match server_fetch_with("PUT", &path, None, token, Some(&members.encode())).await.map_err(PutMembers::Failed)? {
        (s, _) if (200..300).contains(&s) => Ok(()),
        (409, _) => Err(PutMembers::Conflict),
        (403, body) => {
            let hint = match token {
                None => "; on this server a space is created with a creation token: POST spaces {\"creation_token\": ...}",
                Some(_) => "; the creation token this device holds was not accepted",
            };
            Err(PutMembers::Refused(403, format!("the server refused this space (HTTP 403: {}){hint}", String::from_utf8_lossy(&body))))
        }
        (s, body) if (400..500).contains(&s) => {
            Err(PutMembers::Refused(s, format!("the server refused the membership log: HTTP {s}: {}", String::from_utf8_lossy(&body))))
        }
        (s, body) => Err(PutMembers::Failed(format!("the server failed to take the membership log: HTTP {s}: {}", String::from_utf8_lossy(&body)))),
    }
}

/// A membership event in words, for a warning.
fn describe_event(event: &stead_core::membership::MemberEvent, by: ReplicaId) -> String {
    match event {
        MemberEvent::Genesis { .. } => format!("the space's creation by {by}"),
        MemberEvent::Add { member, .. } => format!("{by} added {}", member.replica),
        MemberEvent::Remove { replica, .. } => format!("{by} removed {replica}"),
        MemberEvent::Invite { key, role, .. } => format!("{by} invited a {} (invite {})", role.as_str(), hex::encode(&key[..8])),
        MemberEvent::Join { member, invite, .. } => format!("{} joined through invite {}", member.replica, hex::encode(&invite[..8])),
        MemberEvent::Rekey { key_id, .. } => format!("{by} rotated the space key (to {})", hex::encode(key_id)),
        MemberEvent::Revoke { invite } => format!("{by} cancelled invite {}", hex::encode(&invite[..8])),
    }
}

pub(crate) fn sleep(ms: f64) -> JsFuture {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout: js_sys::Function = Reflect::get(&js_sys::global(), &"setTimeout".into()).expect("setTimeout").into();
        let _ = set_timeout.call2(&JsValue::NULL, &resolve, &JsValue::from_f64(ms));
    });
    JsFuture::from(promise)
}

impl Engine {
    pub async fn open(me: Membership, members: Option<Members>) -> Result<Rc<Engine>, DataError> {
        let (mut store, replica) = open_replica(&me, members).await?;
        // A membership log given to a new space is written before the space exists.
        store.flush().await?;
        let recovered = store.recovered();
        // With no snapshot yet, the first write of a long log makes one.
        let has_snapshot = replica.store().snapshot().ok().flatten().is_some();
        let total: u64 = if has_snapshot { replica.version_vector().values().sum() } else { 0 };
        // What the server acknowledged before the worker last stopped: without it, a
        // worker woken offline would count every synced entry as pending again.
        let acked = read_acked(&replica);
        Ok(Rc::new(Engine {
            creation_token: RefCell::new(me.creation_token.clone()),
            me,
            replica: RefCell::new(replica),
            cache: RefCell::new(store.cache()),
            store: futures::lock::Mutex::new(store),
            rollbacks: Cell::new(0),
            conn: RefCell::new(None),
            status: RefCell::new(SyncStatus { acked, ..SyncStatus::default() }),
            attempt: Cell::new(0),
            members_pushed: Cell::new(0),
            recovered: RefCell::new(recovered),
            closed: Cell::new(false),
            snapshot_at: Cell::new(total),
            snapshot_stored: Cell::new(total),
            last_write: Cell::new(0.0),
            snapshot_timer: Cell::new(false),
            store_held: RefCell::new(None),
            store_waiting: Cell::new(0),
        }))
    }

    pub fn space(&self) -> SpaceId {
        self.me.space
    }

    pub fn me(&self) -> &Membership {
        &self.me
    }

    /// Stores a small named blob beside the log; it reaches OPFS with the next flush.
    pub fn put_meta(&self, key: &str, bytes: &[u8]) -> Result<(), DataError> {
        let mut cache = self.cache.borrow().clone();
        cache.put_meta(key, bytes)?;
        Ok(())
    }

    /// Runs `f` on the replica.
    pub fn read<T>(&self, f: impl FnOnce(&mut Replica) -> T) -> T {
        f(&mut self.replica.borrow_mut())
    }

    /// Reads the whole log into memory (the store opens with its tail): what history and
    /// undo need before they run.
    pub async fn load_all(&self) -> Result<(), DataError> {
        self.lock_store("load_all").await.load_all().await?;
        Ok(())
    }

    /// Takes the store's lock for `why`, noting it for status.
    async fn lock_store(&self, why: &'static str) -> StoreGuard<'_> {
        self.store_waiting.set(self.store_waiting.get() + 1);
        let waiting = Waiting(&self.store_waiting);
        let guard = self.store.lock().await;
        drop(waiting);
        *self.store_held.borrow_mut() = Some((why, js_sys::Date::now()));
        StoreGuard { guard, held: &self.store_held }
    }

    /// A damaged snapshot chunk was rebuilt without the old entries it needs (the store
    /// opened with the log's tail): load the whole log and open the replica again over it,
    /// so what pages read is right again.
    pub fn check_incomplete(self: &Rc<Self>) {
        if !self.replica.borrow().take_incomplete() {
            return;
        }
        web_sys::console::warn_1(&format!("space {}: a damaged snapshot chunk needs the whole log; reloading it", self.me.space).into());
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = me.load_all().await {
                web_sys::console::error_1(&format!("space {}: loading the whole log: {e}", me.me.space).into());
                return;
            }
            let (members, schema) = {
                let r = me.replica.borrow();
                (r.members().clone(), r.schema().cloned())
            };
            let cache = me.cache.borrow().clone();
            match Replica::open(identity(&me.me), members, Box::new(cache), ReplicaConfig::default()) {
                Ok(mut r) => {
                    if let Some(schema) = schema {
                        let _ = r.set_schema(schema);
                    }
                    *me.replica.borrow_mut() = r;
                    me.changed();
                }
                Err(e) => web_sys::console::error_1(&format!("space {}: reopening over the whole log: {e}", me.me.space).into()),
            }
        });
    }

    /// Loads what the last sync step wanted of the log that opening left on disk, then
    /// sends on. A load that fails is reported in the status, and the next pump (a frame,
    /// a write) asks for those entries again.
    fn load_wanted(self: &Rc<Self>) {
        let wanted = self.cache.borrow().take_wanted();
        if wanted.is_empty() {
            return;
        }
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let loaded = me.lock_store("load_wanted").await.load(&wanted).await;
            match loaded {
                Ok(()) => me.pump(),
                Err(e) => {
                    web_sys::console::error_1(&format!("space {}: loading old log entries to send: {e}", me.me.space).into());
                    me.status.borrow_mut().last_error = Some(format!("reading the log: {e}"));
                    me.broadcast_status();
                }
            }
        });
    }

    /// Runs a write on the replica and answers only once it is on disk; then sends it.
    pub async fn write<T>(self: &Rc<Self>, f: impl FnOnce(&mut Replica, &mut WebRandom) -> Result<T, DataError>) -> Result<T, DataError> {
        let before = self.rollbacks.get();
        let out = f(&mut self.replica.borrow_mut(), &mut WebRandom);
        self.check_incomplete();
        let out = out?;
        self.flush().await?;
        if self.rollbacks.get() != before {
            return Err(DataError::new(507, "not stored", "an earlier write in the same batch failed to reach storage, and this one was undone with it"));
        }
        self.changed();
        // After the answer, not before: a snapshot rewrites the whole state.
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move { me.maybe_snapshot().await });
        self.pump();
        if self.conn.borrow().as_ref().is_none_or(|c| !c.open) {
            register_background_sync();
            self.connect();
        }
        Ok(out)
    }

    /// Writes what the replica queued. On failure the replica is reopened from disk, so
    /// memory never stays ahead of what is stored.
    pub async fn flush(self: &Rc<Self>) -> Result<(), DataError> {
        let mut store = self.lock_store("flush").await;
        if !store.has_pending() {
            return Ok(());
        }
        if let Err(e) = store.flush().await {
            let err = DataError::from(e);
            self.rollbacks.set(self.rollbacks.get() + 1);
            store.close();
            match open_replica(&self.me, None).await {
                Ok((s, r)) => {
                    *self.cache.borrow_mut() = s.cache();
                    *store = s;
                    *self.replica.borrow_mut() = r;
                }
                Err(again) => web_sys::console::error_1(&format!("reopening space {} after a failed write: {again}", self.me.space).into()),
            }
            // The connection's view of what we hold is stale now.
            self.drop_conn("the local store was reopened");
            self.status.borrow_mut().last_error = Some(format!("write failed: {err}"));
            self.broadcast_status();
            return Err(err);
        }
        Ok(())
    }

    /// Saves a snapshot once enough entries arrived since the last one, so the next wake
    /// opens from the snapshot and a short log tail instead of replaying the whole log.
    /// It waits until writes pause for [`SNAPSHOT_IDLE_MS`]: a snapshot rewrites the whole
    /// state, so a burst of writes makes one at its end, not one per thousand entries.
    /// One timer runs per engine; later writes only move the pause's start.
    async fn maybe_snapshot(self: &Rc<Self>) {
        self.last_write.set(js_sys::Date::now());
        if self.snapshot_timer.replace(true) {
            return;
        }
        loop {
            let _ = sleep(SNAPSHOT_IDLE_MS).await;
            if js_sys::Date::now() - self.last_write.get() >= SNAPSHOT_IDLE_MS {
                break;
            }
        }
        self.snapshot_timer.set(false);
        let total: u64 = self.read(|r| r.version_vector().values().sum());
        if total < self.snapshot_at.get() + SNAPSHOT_EVERY {
            return;
        }
        self.snapshot_at.set(total);
        if let Err(e) = self.read(|r| r.save_snapshot()) {
            web_sys::console::warn_1(&format!("space {}: snapshot failed: {e}", self.me.space).into());
            return;
        }
        // A failed flush reopens from disk as for any write; the next write tries again.
        if self.flush().await.is_ok() {
            self.snapshot_stored.set(total);
        }
    }

    /// Sync status and counts for pages.
    pub fn status_json(&self) -> serde_json::Value {
        let s = self.status.borrow().clone();
        let (own_next, vector, entries) = self.read(|r| {
            let vv = r.version_vector();
            let own = vv.get(&self.me.replica).copied().unwrap_or(0);
            let total: u64 = vv.values().sum();
            (own, vv, total)
        });
        let pending = own_next.saturating_sub(s.acked);
        let in_sync = self.conn.borrow().as_ref().is_some_and(|c| c.open && c.sync.in_sync(&*self.replica.borrow()));
        let state = if s.connected {
            if pending == 0 && in_sync { "online" } else { "syncing" }
        } else if s.refused {
            "error"
        } else {
            "offline"
        };
        json!({
            "space": self.me.space.to_string(),
            "replica": self.me.replica.to_string(),
            "state": state,
            "pending": pending,
            "entries": entries,
            "replicas": vector.len(),
            // Where the log is kept, chosen when the space was made here.
            "log_storage": self.me.storage,
            "connects": s.connects,
            "last_synced": s.last_synced,
            "last_error": s.last_error,
            "rejected": s.rejected,
            "members_dropped": s.members_dropped,
            "recovered": *self.recovered.borrow(),
            "snapshot_entries": self.snapshot_stored.get(),
            // What holds the store (a write, a read of old entries) and for how long, and
            // how many wait: `null` when it is free.
            "store": self.store_held.borrow().map(|(why, since)| json!({
                "held_by": why,
                "held_ms": (js_sys::Date::now() - since).round(),
                "waiting": self.store_waiting.get(),
            })),
        })
    }

    /// What the kill switch must keep of this space: `Some` while the server lacks some
    /// of this device's entries or blobs.
    pub fn unacknowledged(&self) -> Option<super::Kept> {
        let pending = self.status_json()["pending"].as_u64().unwrap_or(0);
        let blobs = super::blobs::pending_count(self);
        (pending > 0 || blobs > 0).then(|| super::Kept { space: self.me.space.to_string(), pending: Some(pending), blobs_pending: Some(blobs) })
    }

    fn broadcast_status(&self) {
        super::api::broadcast(crate::scope::tag(json!({"type": "sync", "status": self.status_json()})));
    }

    fn changed(&self) {
        super::api::broadcast(crate::scope::tag(json!({"type": "changed", "space": self.me.space.to_string()})));
        self.broadcast_status();
    }

    /// Opens the sync connection unless one is open or opening.
    pub fn connect(self: &Rc<Self>) {
        if self.closed.get() {
            return;
        }
        {
            let mut s = self.status.borrow_mut();
            if s.connecting || self.conn.borrow().is_some() {
                return;
            }
            s.connecting = true;
        }
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(reason) = me.open_socket().await {
                me.status.borrow_mut().connecting = false;
                me.disconnected(reason);
            }
        });
    }

    async fn open_socket(self: &Rc<Self>) -> Result<(), String> {
        // The server learns of new spaces and invited devices from the membership log.
        let members = self.read(|r| r.members().clone());
        if members.events().len() > self.members_pushed.get() {
            match self.publish(&members).await {
                Ok(()) => {}
                Err(PutMembers::Conflict) => {
                    self.rebase_members().await?;
                }
                Err(PutMembers::Refused(_, reason)) => {
                    self.status.borrow_mut().refused = true;
                    return Err(reason);
                }
                Err(PutMembers::Failed(reason)) => return Err(reason),
            }
        }
        // Blobs written offline go up before the entries that may refer to them.
        super::blobs::upload_pending(self).await?;
        if let Err(e) = self.take_server_members().await {
            if e.status != 503 {
                self.status.borrow_mut().refused = true;
            }
            return Err(e.detail);
        }
        if self.closed.get() {
            return Err("the engine is closed".into());
        }
        let url = format!("{}/sync", server_base().replacen("http", "ws", 1));
        let ws = WebSocket::new(&url).map_err(|e| opfs::FsError::from(e).to_string())?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let sync = Sync::new(SyncConfig::client(), &mut WebRandom);
        let weak = Rc::downgrade(self);
        let on_open = Closure::<dyn FnMut(JsValue)>::new({
            let weak = weak.clone();
            move |_| {
                if let Some(e) = weak.upgrade() {
                    e.on_open();
                }
            }
        });
        let on_message = Closure::<dyn FnMut(JsValue)>::new({
            let weak = weak.clone();
            move |ev: JsValue| {
                let Some(e) = weak.upgrade() else { return };
                let ev: MessageEvent = ev.unchecked_into();
                if let Ok(buf) = ev.data().dyn_into::<ArrayBuffer>() {
                    e.on_frame(&Uint8Array::new(&buf).to_vec());
                }
            }
        });
        let on_close = Closure::<dyn FnMut(JsValue)>::new({
            let weak = weak.clone();
            move |ev: JsValue| {
                let Some(e) = weak.upgrade() else { return };
                let reason = match ev.dyn_ref::<CloseEvent>() {
                    Some(c) if !c.reason().is_empty() => format!("connection closed ({}): {}", c.code(), c.reason()),
                    Some(c) => format!("connection closed ({})", c.code()),
                    None => "connection failed".to_owned(),
                };
                e.drop_conn(&reason);
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *self.conn.borrow_mut() = Some(Conn { ws, sync, open: false, _handlers: vec![on_open, on_message, on_close] });
        self.status.borrow_mut().connecting = false;
        Ok(())
    }

    /// Settles a membership log the server refused as no extension of its own (409):
    /// takes the server's log, signs this device's events it lacks again on top of it
    /// (two devices that invited while offline each grew their own copy), publishes the
    /// result and adopts it. Events of other devices the server lacks cannot be signed
    /// again: they are dropped, and status and pages are told.
    async fn rebase_members(self: &Rc<Self>) -> Result<Members, String> {
        let me = &self.me;
        let server = match get_members(self.me.space, self.me.replica, &self.me.signing).await {
            Ok(m) => m,
            Err(e) => {
                if e.status != 503 {
                    self.status.borrow_mut().refused = true;
                }
                return Err(e.detail);
            }
        };
        let (ours, ring) = self.read(|r| (r.members().clone(), r.keys().clone()));
        // A rotation this device made offline is issued again on top of the server's log
        // (with the same key: entries may be sealed under it already), not dropped.
        let (rebased, _) = ours
            .rebase_keeping_keys(&server, me.replica, &me.signing, &me.agreement, &ring, now_ms(), &mut WebRandom)
            .map_err(|e| {
                self.status.borrow_mut().refused = true;
                format!("this device's membership log cannot be joined to the server's: {e}")
            })?;
        if rebased.members.events().len() > server.events().len() {
            // Another device may have published in between: the next attempt rebases again.
            self.publish(&rebased.members).await.map_err(|e| match e {
                PutMembers::Conflict => "the server's membership log moved on while rebasing onto it".to_owned(),
                other => other.reason(),
            })?;
        }
        self.read(|r| r.set_members(rebased.members.clone())).map_err(|e| e.to_string())?;
        self.flush().await.map_err(|e| e.to_string())?;
        self.members_pushed.set(rebased.members.events().len());
        if !rebased.dropped.is_empty() {
            let what: Vec<String> = rebased.dropped.iter().map(|ev| describe_event(&ev.event, ev.by)).collect();
            let warning = format!(
                "the server's membership log lacked {} event(s) signed by other devices, which this device cannot sign again; dropped: {}",
                what.len(),
                what.join("; ")
            );
            web_sys::console::warn_1(&format!("space {}: {warning}", self.me.space).into());
            super::api::broadcast(crate::scope::tag(json!({"type": "members-dropped", "space": self.me.space.to_string(), "message": warning})));
            self.status.borrow_mut().members_dropped = Some(warning);
        }
        Ok(rebased.members)
    }

    fn on_open(self: &Rc<Self>) {
        if let Some(c) = self.conn.borrow_mut().as_mut() {
            c.open = true;
        }
        {
            let mut s = self.status.borrow_mut();
            s.connected = true;
            s.connects += 1;
            s.refused = false;
            s.last_error = None;
        }
        self.attempt.set(0);
        self.pump();
        self.broadcast_status();
    }

    fn on_frame(self: &Rc<Self>, bytes: &[u8]) {
        let before = self.read(|r| r.version_vector());
        let mut newly_acked = None;
        let result = {
            let mut conn = self.conn.borrow_mut();
            let Some(c) = conn.as_mut() else { return };
            let result = c.sync.receive(bytes, &mut *self.replica.borrow_mut(), now_ms());
            let mut acked = c.sync.acked().get(&self.me.replica).copied().unwrap_or(0);
            if bytes.first() == Some(&2) {
                // The server's vector names what it has committed, including entries
                // acknowledged on an earlier connection whose ack was lost.
                if let Ok(Frame::Vector(vv)) = Frame::decode(bytes, &Default::default()) {
                    acked = acked.max(vv.get(&self.me.replica).copied().unwrap_or(0));
                }
            }
            let mut s = self.status.borrow_mut();
            // Stored with the flush that follows every frame, and counted once stored: a
            // worker stopped in between comes back with what its store says.
            if acked > s.acked
                && self.cache.borrow().clone().put_meta(ACKED_META, &acked.to_le_bytes()).is_ok()
            {
                newly_acked = Some(acked);
            }
            if c.sync.in_sync(&*self.replica.borrow()) {
                s.last_synced = Some(now_ms());
            }
            result
        };
        let after = self.read(|r| r.version_vector());
        // Own entries count too: a store that lost its tail gets them back from the server.
        let grew = after.iter().any(|(r, n)| before.get(r).copied().unwrap_or(0) < *n);
        if let Err(e) = result {
            match e {
                stead_core::Error::Protocol { code: c, message } if code::is_fatal(c) => {
                    self.status.borrow_mut().refused = true;
                    self.drop_conn(&format!("server error {c}: {message}"));
                    return;
                }
                other => web_sys::console::warn_1(&format!("a frame from the server was refused: {other}").into()),
            }
        }
        self.pump();
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            // Received entries are stored before pages hear of them.
            let stored = me.flush().await.is_ok();
            if let (true, Some(acked)) = (stored, newly_acked) {
                let mut s = me.status.borrow_mut();
                s.acked = s.acked.max(acked);
            }
            if stored && grew {
                me.changed();
                me.maybe_snapshot().await;
            } else {
                me.broadcast_status();
            }
        });
    }

    /// Sends whatever the protocol has to send.
    pub fn pump(self: &Rc<Self>) {
        let mut failed = None;
        let mut refused = Vec::new();
        {
            let mut conn = self.conn.borrow_mut();
            let Some(c) = conn.as_mut().filter(|c| c.open) else { return };
            let replica = self.replica.borrow();
            while let Some(frame) = c.sync.generate(&*replica) {
                if let Frame::Error { code: code::REJECTED_ENTRY, message } = &frame {
                    refused.push(message.clone());
                }
                if let Err(e) = c.ws.send_with_u8_array(&frame.encode()) {
                    failed = Some(opfs::FsError::from(e).to_string());
                    break;
                }
            }
            if failed.is_none() && c.sync.is_closed() {
                failed = Some("the protocol ended the connection".into());
            }
        }
        let mut refresh = false;
        for message in refused {
            refresh |= self.refused_entry(message);
        }
        // Entries the server lacks from before what the store loaded: read, then sent.
        self.load_wanted();
        if let Some(reason) = failed {
            self.drop_conn(&reason);
        } else if refresh {
            self.drop_conn("an entry from a replica or under a space key this device does not know was refused; reconnecting with a fresh membership log");
        }
    }

    /// Takes note of an entry this device refused (its replica's chain is skipped for the
    /// rest of the frame by `Sync`); `true` when a reconnect should fetch a fresh
    /// membership log. An entry from a replica we do not know may be from a member added
    /// since our log, so the first such refusal reconnects; anything else (forged, dated
    /// too far ahead, or the same refusal after a fresh log) a new connection would only
    /// meet again, so it is reported and everything else syncs on.
    fn refused_entry(&self, message: String) -> bool {
        // Sealed under a space key this device does not hold yet: a rotation (a removal)
        // the membership log taken at connect does not hold; a fresh log brings its key.
        let unknown = message.contains("is not a member of the space") || message.contains("does not hold yet");
        {
            let mut s = self.status.borrow_mut();
            if unknown && s.refreshed_for.as_deref() != Some(message.as_str()) {
                s.refreshed_for = Some(message);
                return true;
            }
            if s.rejected.as_deref() == Some(message.as_str()) {
                return false;
            }
            s.rejected = Some(message.clone());
        }
        web_sys::console::warn_1(&format!("space {}: an entry was refused and its chain skipped: {message}", self.me.space).into());
        super::api::broadcast(crate::scope::tag(json!({"type": "rejected", "space": self.me.space.to_string(), "reason": message})));
        self.broadcast_status();
        false
    }

    /// Closes the connection for good (the reconnect loop stops with the last `Rc`).
    pub fn close(self: &Rc<Self>) {
        self.closed.set(true);
        if let Some(store) = self.store.try_lock() {
            store.close();
        }
        if let Some(c) = self.conn.borrow_mut().take() {
            c.shut();
        }
    }

    fn drop_conn(self: &Rc<Self>, reason: &str) {
        let Some(c) = self.conn.borrow_mut().take() else { return };
        c.shut();
        self.disconnected(reason.to_owned());
    }

    fn disconnected(self: &Rc<Self>, reason: String) {
        {
            let mut s = self.status.borrow_mut();
            s.connected = false;
            s.last_error = Some(reason);
        }
        self.broadcast_status();
        // Back off exponentially, jittered, and try again while the worker lives.
        let attempt = self.attempt.get();
        self.attempt.set(attempt.saturating_add(1));
        let cap = (BACKOFF_MIN_MS * 2f64.powi(attempt.min(16) as i32)).min(BACKOFF_MAX_MS);
        let delay = cap * (0.5 + 0.5 * js_sys::Math::random());
        let weak = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            let _ = sleep(delay).await;
            if let Some(e) = weak.upgrade() {
                e.connect();
            }
        });
    }

    /// Resolves once the server holds every entry of this device (or after `timeout_ms`);
    /// `true` when nothing is pending.
    pub async fn settle(self: &Rc<Self>, timeout_ms: f64) -> bool {
        let start = js_sys::Date::now();
        loop {
            self.connect();
            let pending = self.status_json()["pending"].as_u64().unwrap_or(0);
            if pending == 0 && self.status.borrow().connected {
                return true;
            }
            if js_sys::Date::now() - start > timeout_ms {
                return false;
            }
            let _ = sleep(100.0).await;
        }
    }

    /// Publishes `members` (with the creation token while the server has not taken the
    /// space yet) and notes how much of the log the server holds.
    async fn publish(&self, members: &Members) -> Result<(), PutMembers> {
        let token = self.creation_token.borrow().clone();
        put_members(members, token.as_deref()).await?;
        self.members_pushed.set(members.events().len());
        if token.is_some() {
            // The server holds the space now: the token is of no more use here.
            self.creation_token.replace(None);
            let me = Membership { creation_token: None, ..self.me.clone() };
            if let Err(e) = super::keys::save(&me).await {
                web_sys::console::warn_1(&format!("space {}: forgetting the creation token: {e}", self.me.space).into());
            }
        }
        Ok(())
    }

    /// Takes the server's membership log where it extends this device's (new members,
    /// rotations, joins through this device's invites). `Err` when the server cannot be
    /// reached (503) or does not take this device (403).
    pub async fn take_server_members(self: &Rc<Self>) -> Result<bool, DataError> {
        let server = get_members(self.me.space, self.me.replica, &self.me.signing).await?;
        let ours = self.read(|r| r.members().events().len());
        let extends = server.events().len() > ours && self.read(|r| server.events()[..ours] == *r.members().events());
        if extends {
            self.read(|r| r.set_members(server))?;
            // If this flush fails, the next connection takes the log from the server again.
            let _ = self.flush().await;
        }
        Ok(extends)
    }

    /// Signs a membership change with this device's keys and stores it, then publishes
    /// it now if the server can be reached (a log that grew apart from the server's is
    /// settled now); otherwise the next connection does. Returns whether the server
    /// holds it.
    async fn change_members(self: &Rc<Self>, change: impl FnOnce(&mut Members, &stead_core::crypto::Keyring) -> Result<(), DataError>) -> Result<bool, DataError> {
        let members = self.read(|r| {
            let mut m = r.members().clone();
            change(&mut m, r.keys())?;
            r.set_members(m.clone())?;
            Ok::<_, DataError>(m)
        })?;
        self.flush().await?;
        let published = match self.publish(&members).await {
            Ok(()) => true,
            Err(PutMembers::Conflict) => match self.rebase_members().await {
                Ok(_) => true,
                Err(reason) => {
                    web_sys::console::warn_1(&format!("space {}: publishing a membership change: {reason}", self.me.space).into());
                    false
                }
            },
            Err(_) => false,
        };
        self.broadcast_status();
        Ok(published)
    }

    /// This device's role, while it is an active member.
    fn role(&self) -> Option<Role> {
        self.read(|r| r.members().role(self.me.replica))
    }

    fn require_owner(&self, what: &str) -> Result<(), DataError> {
        match self.role() {
            Some(Role::Owner) => Ok(()),
            Some(role) => Err(DataError::new(403, "not allowed", format!("only an owner may {what}; this device is a {} of the space", role.as_str()))),
            None => Err(DataError::new(403, "not allowed", format!("only an owner may {what}; this device is no longer a member of the space"))),
        }
    }

    /// Makes a one-time invite as `terms` say: a fresh invite secret, whose public key
    /// and the current space key wrapped to it go into the membership log. The code
    /// `<space>.<secret hex>` is for a link's fragment, which browsers never send; the
    /// device that joins with it makes its own keys. Published now or on the next
    /// connection; the code works once the server holds it. Returns the code and
    /// whether the server holds the invite yet.
    pub async fn invite(self: &Rc<Self>, terms: InviteTerms) -> Result<(String, bool), DataError> {
        self.require_owner("invite")?;
        let secret = InviteSecret(WebRandom.array());
        let me = &self.me;
        let published = self
            .change_members(|m, ring| {
                m.invite(me.replica, &me.signing, ring, &secret, terms, &mut WebRandom)?;
                Ok(())
            })
            .await?;
        Ok((format!("{}.{}", me.space, hex::encode(secret.0)), published))
    }

    /// The space's invites, oldest state first as the log holds them.
    pub fn invites(&self) -> Vec<serde_json::Value> {
        let now = now_ms();
        self.read(|r| {
            r.members()
                .invites()
                .map(|i| {
                    let (state, used_by) = match i.state {
                        InviteState::Pending if i.expires_ms <= now => ("expired", None),
                        InviteState::Pending => ("pending", None),
                        InviteState::Used(by) => ("used", Some(by.to_string())),
                        InviteState::Revoked => ("cancelled", None),
                    };
                    json!({"key": hex::encode(&i.key[..8]), "role": i.role.as_str(), "expires": i.expires_ms, "state": state, "used_by": used_by})
                })
                .collect()
        })
    }

    /// Cancels the pending invite whose public key starts with `prefix` (hex).
    pub async fn revoke_invite(self: &Rc<Self>, prefix: &str) -> Result<String, DataError> {
        self.require_owner("cancel an invite")?;
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DataError::bad_request(format!("{prefix:?}: expected an invite key in hex (at least 8 digits)")));
        }
        let matching: Vec<_> = self.read(|r| r.members().invites().filter(|i| hex::encode(i.key).starts_with(&prefix)).collect());
        let invite = match matching.as_slice() {
            [one] => one.clone(),
            [] => return Err(DataError::not_found(format!("no invite {prefix}"))),
            _ => return Err(DataError::bad_request(format!("{prefix} names more than one invite: give more digits"))),
        };
        if invite.state != InviteState::Pending {
            return Err(DataError::new(409, "not pending", format!("invite {prefix} was used or cancelled already")));
        }
        let me = &self.me;
        self.change_members(|m, _| {
            m.revoke_invite(me.replica, &me.signing, invite.key)?;
            Ok(())
        })
        .await?;
        Ok(hex::encode(&invite.key[..8]))
    }

    /// Removes a device from the space (this device must be an owner) and rotates the
    /// space key in the same update: a fresh key, wrapped to every remaining member and
    /// kept invite, with the previous key sealed under it, so the removed device cannot
    /// read what is written after. Published now or on the next connection: the server
    /// then closes the device's sockets and refuses what it sends. Its entries up to the
    /// last one held here stay valid.
    pub async fn remove_member(self: &Rc<Self>, replica: ReplicaId) -> Result<(), DataError> {
        self.require_owner("remove a device")?;
        let me = &self.me;
        let last_seq = self.read(|r| r.version_vector().get(&replica).and_then(|n| n.checked_sub(1)));
        self.change_members(|m, ring| {
            m.remove(me.replica, &me.signing, replica, last_seq).map_err(|e| DataError::new(403, "not allowed", e.to_string()))?;
            let mut ring = ring.clone();
            m.rekey(me.replica, &me.signing, &mut ring, SpaceKey(WebRandom.array()), now_ms(), &mut WebRandom)?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}

/// Asks the browser for a `sync` event when it is back online (where Background Sync
/// exists); the worker then reconnects and sends what is pending.
pub fn register_background_sync() {
    let scope: web_sys::ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
    let Ok(sync) = Reflect::get(&scope.registration(), &"sync".into()) else { return };
    if sync.is_undefined() {
        return;
    }
    if let Ok(register) = Reflect::get(&sync, &"register".into()).and_then(|f| f.dyn_into::<js_sys::Function>())
        && let Ok(p) = register.call1(&sync, &"stead-sync".into()) {
            // A refusal (no permission, unsupported) is not an error: reconnecting does it too.
            let registered = JsFuture::from(js_sys::Promise::from(p));
            wasm_bindgen_futures::spawn_local(async move {
                let _ = registered.await;
            });
        }
}

/// Parses an invite code: `<space>.<invite secret, 64 hex digits>`. The older form
/// (`<space>.<replica>.<signing>.<agreement>`, a device made by the inviter) is refused
/// with a reason: such a code handed its holder another device's keys.
pub fn parse_invite(code: &str) -> Result<(SpaceId, InviteSecret), DataError> {
    let code = code.trim();
    let bad = |why: &str| DataError::bad_request(format!("the invite code is malformed: {why}"));
    let parts: Vec<&str> = code.split('.').collect();
    let [space, secret] = parts.as_slice() else {
        if parts.len() == 4 {
            return Err(DataError::bad_request(
                "this invite code is of an older kind (it carried a device made by the inviter), which this app no longer takes: ask for a new invite",
            ));
        }
        return Err(bad("expected <space>.<secret>"));
    };
    let space = space.parse().map_err(|_| bad("the space id is not valid"))?;
    let secret: [u8; 32] = hex::decode(secret).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| bad("the secret is not 64 hex digits"))?;
    Ok((space, InviteSecret(secret)))
}
