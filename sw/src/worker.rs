//! The worker's state and its life cycle: install, update checks, activation, clean-up,
//! status and the kill switch.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    rc::Rc,
};

use futures::{
    FutureExt, StreamExt,
    future::{LocalBoxFuture, Shared},
};
use js_sys::{Array, Date, Reflect};
use stead_core::bundle::{BundleFile, BundleManifest, FILES_BATCH, MANIFEST_FILE, batch_query};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{JsFuture, future_to_promise};
use web_sys::{
    Blob, BroadcastChannel, Client, ClientQueryOptions, ClientType, ExtendableEvent, ExtendableMessageEvent,
    RequestCache, RequestInit, Response, ServiceWorkerGlobalScope,
};

use stead_sw_common::{
    Kept,
    js::{self, Obj},
    storage_estimate,
};

use crate::{
    SwError,
    data::Data,
    store::{BundleStore, Place, Versions},
};

/// `missing` (a subset of `files`, in their order) cut into batches for `stead-files`:
/// runs in manifest order with their indices, each closed at [`BATCH_FILES`] or once it
/// reaches the byte target; a file at or over the target is a batch of its own.
fn batches<'m>(files: &'m [BundleFile], missing: &[&'m BundleFile]) -> Vec<Vec<(usize, &'m BundleFile)>> {
    let total: u64 = missing.iter().map(|f| f.size).sum();
    let target = (total / (2 * DOWNLOADS_AT_ONCE as u64)).clamp(BATCH_BYTES_MIN, BATCH_BYTES_MAX);
    let mut out: Vec<Vec<(usize, &BundleFile)>> = Vec::new();
    let (mut open, mut bytes) = (Vec::new(), 0);
    let mut wanted = missing.iter().peekable();
    for (i, file) in files.iter().enumerate() {
        if wanted.next_if(|w| std::ptr::eq(**w, file)).is_none() {
            continue;
        }
        if file.size >= target {
            out.push(vec![(i, file)]);
            continue;
        }
        open.push((i, file));
        bytes += file.size;
        if bytes >= target || open.len() == BATCH_FILES {
            out.push(std::mem::take(&mut open));
            bytes = 0;
        }
    }
    if !open.is_empty() {
        out.push(open);
    }
    out
}

/// How often a killed worker looks whether the server now has the kept data.
const KEPT_CHECK_MS: f64 = 2_000.0;

/// Downloads at once during install and update: a browser opens six connections per host.
const DOWNLOADS_AT_ONCE: usize = 6;
/// Files one batch download names at most (the server takes up to 1024).
const BATCH_FILES: usize = 256;
/// Bytes one batch download aims at: enough batches that every connection has one or
/// two, none so large that a retry repeats much, none so small that round trips count.
const BATCH_BYTES_MIN: u64 = 64 * 1024;
const BATCH_BYTES_MAX: u64 = 1024 * 1024;
/// A page heartbeat triggers an update check when the last one is older than this.
const HEARTBEAT_CHECK_MS: f64 = 5.0 * 60.0 * 1000.0;
/// A page's start checks for a new version unless one was checked this recently (its
/// navigation, when the worker answered it, did so a moment before).
const HELLO_CHECK_MS: f64 = 3.0 * 1000.0;
/// The channel every page of the origin listens on.
pub const CHANNEL: &str = "stead";

type SharedResult<T> = Shared<LocalBoxFuture<'static, Result<T, SwError>>>;

/// What an update check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    UpToDate,
    /// First install: the version is active at once.
    Installed(String),
    /// An update is stored and waits for a page to activate it.
    Pending(String),
    Offline(String),
    Killed,
}

pub struct Worker {
    scope: ServiceWorkerGlobalScope,
    /// The registration scope, ending in `/`; bundle paths are relative to it.
    pub base: String,
    /// When this worker instance started (ms since the epoch): a cold start shows as a
    /// new value in status.
    started: f64,
    channel: Option<BroadcastChannel>,
    state: RefCell<State>,
    /// Set by the kill switch: from then on this instance stores and answers nothing but
    /// status and the erase call (the marker file carries it to the next instance).
    killed: std::cell::Cell<bool>,
    /// Spaces the kill switch kept because the server lacks some of them.
    kept: RefCell<Vec<Kept>>,
    /// Whether `kept` was worked out in this worker life (a restarted worker learns it
    /// by opening the spaces).
    kept_known: std::cell::Cell<bool>,
    /// Whether a loop is erasing kept spaces as the server acknowledges them.
    watching: std::cell::Cell<bool>,
    /// Whether this worker's `install` event is still being handled.
    installing: std::cell::Cell<bool>,
    /// Whether this worker life's own kill is running: meanwhile status and messages
    /// must not open the data the kill is erasing.
    killing: std::cell::Cell<bool>,
    loading: RefCell<Option<SharedResult<BundleStore>>>,
    /// Where the bundle is kept, once known in this worker life.
    place: RefCell<Option<Place>>,
    updating: RefCell<Option<SharedResult<Checked>>>,
    /// Resolves when the last save begun has ended, so saves run one at a time (a JS
    /// promise chain: smaller in the serving module than an async mutex).
    saving: RefCell<js_sys::Promise>,
}

#[derive(Default)]
struct State {
    store: Option<BundleStore>,
    /// The active and pending versions and the meta, as last saved.
    versions: Versions,
    /// `Blob`s of stored contents (OPFS `File` snapshots, IndexedDB values):
    /// content-addressed files never change, so one can be served again without another
    /// look-up.
    blobs: HashMap<String, Blob>,
    /// The version each page was loaded with, so no page sees two versions mixed.
    clients: HashMap<String, Rc<BundleManifest>>,
}

thread_local! {
    static WORKER: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
}

impl Worker {
    pub fn get() -> Rc<Worker> {
        WORKER.with(|w| w.borrow_mut().get_or_insert_with(|| Rc::new(Worker::new())).clone())
    }

    fn new() -> Worker {
        let scope: ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
        let base = scope.registration().scope();
        Worker {
            scope,
            base,
            started: Date::now(),
            channel: BroadcastChannel::new(CHANNEL).ok(),
            state: RefCell::default(),
            killed: std::cell::Cell::new(false),
            kept: RefCell::default(),
            kept_known: std::cell::Cell::new(false),
            watching: std::cell::Cell::new(false),
            installing: std::cell::Cell::new(false),
            killing: std::cell::Cell::new(false),
            loading: RefCell::default(),
            place: RefCell::default(),
            updating: RefCell::default(),
            saving: RefCell::new(js_sys::Promise::resolve(&JsValue::UNDEFINED)),
        }
    }

    pub fn on_install(self: &Rc<Self>, event: ExtendableEvent) {
        mark("install");
        let _ = self.scope.skip_waiting();
        self.installing.set(true);
        let w = self.clone();
        wait_until(&event, async move {
            let checked = w.update().await;
            w.installing.set(false);
            match checked? {
                Checked::Offline(why) => Err(SwError::Js(format!("cannot install offline: {why}"))),
                // The kill ran (see `finish_kill`); a failed install is what removes a
                // registration that never had a working version.
                Checked::Killed => Err(SwError::Js("not installing: the server withdrew this app (410 Gone)".into())),
                _ if w.state.borrow().versions.active.is_none() => Err(SwError::Js("no version is active".into())),
                _ => Ok(()),
            }
        });
    }

    pub fn on_activate(self: &Rc<Self>, event: ExtendableEvent) {
        mark("activate");
        let claim = self.scope.clients().claim();
        wait_until(&event, async move {
            JsFuture::from(claim).await?;
            mark("claimed");
            Ok(())
        });
    }

    pub fn on_message(self: &Rc<Self>, event: ExtendableMessageEvent) {
        if self.killed.get() {
            let w = self.clone();
            wait_until(&event, async move {
                if w.killing.get() {
                    // The kill tells pages what it kept when it ends.
                    return Ok(());
                }
                if !w.kept_known.get() {
                    w.check_kept().await;
                }
                let nothing_kept = w.kept.borrow().is_empty();
                if w.kept_known.get() && nothing_kept {
                    // A page registered again and revived this registration: say so, and go.
                    w.broadcast(Obj::new().set("type", "killed").set("kept", js::array::<JsValue>([])));
                    JsFuture::from(w.scope.registration().unregister()?).await?;
                } else if !nothing_kept {
                    // Kept data waits for the server or the user; the page hears it again,
                    // and its heartbeat keeps the kept spaces syncing.
                    w.announce_kept();
                    let _ = Data::get().wake().await;
                }
                Ok(())
            });
            return;
        }
        let kind = Reflect::get(&event.data(), &"type".into()).ok().and_then(|t| t.as_string());
        let w = self.clone();
        match kind.as_deref() {
            Some("activate-update") => {
                // The asking page reloads into the new version: its pin must not keep the
                // old files alive.
                if let Some(id) = event.source().and_then(|s| Reflect::get(&s, &"id".into()).ok()).and_then(|v| v.as_string()) {
                    self.state.borrow_mut().clients.remove(&id);
                }
                wait_until(&event, async move { w.activate_pending().await })
            }
            Some("check-update") => wait_until(&event, async move { w.update().await.map(drop) }),
            // A page of the app started (stead-yew's `register`): open the data, if this
            // device holds any, and resume its sync. Not on the navigation itself: the
            // page's files go first.
            Some("hello") => wait_until(&event, async move {
                // A navigation the cold copy answered never reached this worker: the page's
                // start is when it checks for a new version, and finishes a copy a stopped
                // worker left behind.
                Data::get().wake_if_used().await;
                w.load().await?;
                let last = w.state.borrow().versions.meta.last_update_check.unwrap_or(0.0);
                if crate::fetch::is_online() && Date::now() - last > HELLO_CHECK_MS {
                    let _ = w.update().await;
                }
                w.sync_cold().await
            }),
            Some("heartbeat") => wait_until(&event, async move {
                // Pages keep the worker, and with it the sync connections, alive.
                Data::get().wake_if_used().await;
                w.load().await?;
                let last = w.state.borrow().versions.meta.last_update_check.unwrap_or(0.0);
                if Date::now() - last > HEARTBEAT_CHECK_MS {
                    w.update().await?;
                }
                Ok(())
            }),
            Some("kill") => wait_until(&event, async move { w.kill().await }),
            _ => {}
        }
    }

    /// How this worker life started: the shim's steps (script evaluated, wasm decoded,
    /// wasm instantiated) then [`mark`]'s, each in ms since the time origin.
    fn start_profile(&self) -> JsValue {
        let shim = Reflect::get(&js_sys::global(), &"__stead_start".into()).unwrap_or(JsValue::UNDEFINED);
        let mut profile = Obj::new();
        for step in ["script_evaluated", "wasm_decoded", "wasm_instantiated"] {
            profile = profile.set(step, Reflect::get(&shim, &step.into()).ok().and_then(|v| v.as_f64()));
        }
        for (step, at) in MARKS.with(|m| m.borrow().clone()) {
            profile = profile.set(step, at);
        }
        profile.build()
    }

    pub fn is_killed(&self) -> bool {
        self.killed.get()
    }

    /// Opens the store and reads the versions once per worker life; concurrent callers
    /// share the same load.
    pub async fn load(self: &Rc<Self>) -> Result<BundleStore, SwError> {
        if self.killed.get() {
            return Err(SwError::Js("this app was withdrawn (kill switch)".into()));
        }
        if let Some(store) = self.state.borrow().store.clone() {
            return Ok(store);
        }
        let shared = self
            .loading
            .borrow_mut()
            .get_or_insert_with(|| {
                let w = self.clone();
                async move {
                    let place = w.place().await;
                    let open = place.open_versions();
                    let withdrawn = || {
                        // Killed in an earlier life, with data kept.
                        w.killed.set(true);
                        w.watch_kept();
                        Err(SwError::Js("this app was withdrawn (kill switch)".into()))
                    };
                    // A store that exists is opened while the kill marker is looked for (a
                    // cold start's critical path); else nothing is created before it is known.
                    let (store, versions) = if place.has_store() {
                        let (killed, opened) = futures::join!(place.killed(), open);
                        if killed? {
                            return withdrawn();
                        }
                        opened?
                    } else {
                        if place.killed().await? {
                            return withdrawn();
                        }
                        open.await?
                    };
                    mark("store_opened");
                    let mut s = w.state.borrow_mut();
                    s.versions = versions;
                    s.store = Some(store.clone());
                    Ok(store)
                }
                .boxed_local()
                .shared()
            })
            .clone();
        let result = shared.await;
        if result.is_err() {
            *self.loading.borrow_mut() = None;
        }
        result
    }

    /// Whether some page is pinned to a version other than the active one, so a clean-up
    /// may free something once that page is gone.
    pub fn has_stale_pins(&self) -> bool {
        let s = self.state.borrow();
        let active = s.versions.active.as_ref().map(|a| a.version.as_str());
        s.clients.values().any(|v| Some(v.version.as_str()) != active)
    }

    pub fn active(&self) -> Option<Rc<BundleManifest>> {
        self.state.borrow().versions.active.clone()
    }

    /// The version a client sees: the one it was loaded with, else the active one.
    pub fn version_for(&self, client: Option<&str>) -> Option<Rc<BundleManifest>> {
        let s = self.state.borrow();
        client.and_then(|c| s.clients.get(c).cloned()).or_else(|| s.versions.active.clone())
    }

    /// Pins the active version for a page being loaded.
    pub fn pin_active(&self, client: &str) -> Option<Rc<BundleManifest>> {
        let mut s = self.state.borrow_mut();
        let active = s.versions.active.clone()?;
        if !client.is_empty() {
            s.clients.insert(client.to_owned(), active.clone());
        }
        Some(active)
    }

    /// Stored content by hash, even in a killed worker (whose bundle is gone but for the
    /// data engine it keeps to sync what the server lacks).
    pub async fn stored_file(self: &Rc<Self>, sha256: &str) -> Result<Option<Blob>, SwError> {
        match self.load().await {
            Ok(_) => self.blob(sha256).await,
            Err(_) if self.killed.get() => {
                let (store, versions) = self.place().await.open_versions().await?;
                store.file(&versions.packs, sha256).await
            }
            Err(e) => Err(e),
        }
    }

    /// Where the bundle is kept: detected once per worker life.
    async fn place(&self) -> Place {
        if let Some(place) = self.place.borrow().clone() {
            return place;
        }
        let place = Place::detect().await;
        *self.place.borrow_mut() = Some(place.clone());
        place
    }

    /// A `Blob` for stored content, from the snapshot cache when possible.
    pub async fn blob(self: &Rc<Self>, sha256: &str) -> Result<Option<Blob>, SwError> {
        if let Some(f) = self.state.borrow().blobs.get(sha256) {
            return Ok(Some(f.clone()));
        }
        let store = self.load().await?;
        let packs = self.state.borrow().versions.packs.clone();
        let file = store.file(&packs, sha256).await?;
        if let Some(f) = &file {
            self.state.borrow_mut().blobs.insert(sha256.to_owned(), f.clone());
        }
        Ok(file)
    }

    /// Checks the server for a new bundle and downloads it; concurrent callers share one
    /// check. The outcome and any error are kept for status.
    pub async fn update(self: &Rc<Self>) -> Result<Checked, SwError> {
        let shared = self
            .updating
            .borrow_mut()
            .get_or_insert_with(|| {
                let w = self.clone();
                async move {
                    let result = w.check_and_download().await;
                    w.record(&result).await;
                    *w.updating.borrow_mut() = None;
                    result
                }
                .boxed_local()
                .shared()
            })
            .clone();
        shared.await
    }

    async fn record(self: &Rc<Self>, result: &Result<Checked, SwError>) {
        if let Ok(Checked::Killed) = result {
            // Nothing of the app may be left behind, status included.
            return;
        }
        let Ok(store) = self.load().await else { return };
        let now = Date::now();
        let note = |v: &mut Versions| {
            let meta = &mut v.meta;
            meta.last_update_check = Some(now);
            match result {
                Ok(Checked::Offline(why)) => meta.last_check_result = Some(format!("offline: {why}")),
                Ok(Checked::UpToDate) => {
                    meta.last_check_result = Some("up-to-date".into());
                    meta.last_error = None;
                }
                Ok(Checked::Installed(v) | Checked::Pending(v)) => {
                    meta.last_check_result = Some(format!("downloaded {v}"));
                    meta.last_error = None;
                }
                Ok(Checked::Killed) => {}
                Err(e) => {
                    meta.last_check_result = Some("error".into());
                    meta.last_error = Some(e.to_string());
                }
            }
        };
        // Status shows the check once it is saved, so a worker stopped after status
        // reported it reads it back. If saving fails, status still shows it from memory.
        if self.persist(&store, &note).await.is_err() {
            note(&mut self.state.borrow_mut().versions);
        }
        if let Err(e) = &result {
            web_sys::console::warn_1(&format!("stead: update failed: {e}").into());
            self.broadcast(Obj::new().set("type", "error").set("message", e.to_string()));
        }
    }

    async fn check_and_download(self: &Rc<Self>) -> Result<Checked, SwError> {
        let store = self.load().await?;
        let url = format!("{}{MANIFEST_FILE}", self.base);
        let response = match self.fetch_fresh(&url).await {
            Ok(r) => r,
            Err(e) => return Ok(Checked::Offline(e.to_string())),
        };
        if response.status() == 410 {
            self.kill().await?;
            return Ok(Checked::Killed);
        }
        if !response.ok() {
            return Err(SwError::Http { path: MANIFEST_FILE.into(), status: response.status() });
        }
        let bytes = JsFuture::from(response.array_buffer()?).await.map_err(SwError::network)?;
        let text = String::from_utf8(js_sys::Uint8Array::new(&bytes).to_vec()).map_err(|_| stead_core::bundle::BundleError::Json("not UTF-8".into()))?;
        let manifest = crate::manifest::parse_downloaded(&text).await?;
        mark("manifest");
        let (active, pending) = {
            let s = self.state.borrow();
            (s.versions.active.clone(), s.versions.pending.clone())
        };
        let up_to_date = active.as_ref().is_some_and(|a| a.version == manifest.version);
        if !up_to_date && pending.as_ref().is_some_and(|p| p.version == manifest.version) {
            self.broadcast(Obj::new().set("type", "update-ready").set("version", &manifest.version));
            return Ok(Checked::Pending(manifest.version));
        }

        let packs = self.state.borrow().versions.packs.clone();
        let stored = store.stored(&packs).await?;
        mark("stored_listed");
        // Up to date, the active version's contents are still looked for: one lost since
        // (a pack cut short or removed) would otherwise be missing offline until the next
        // version, so it is downloaded again.
        let missing = manifest.missing(|f| stored.get(&f.sha256) == Some(&f.size));
        if up_to_date && missing.is_empty() {
            return Ok(Checked::UpToDate);
        }
        let writer = store.writer();
        let batching = Cell::new(true);
        let mut errors: Vec<SwError> = futures::stream::iter(batches(&manifest.files, &missing))
            .map(|batch| self.download_batch(&store, &writer, &manifest.version, batch, &batching))
            .buffer_unordered(DOWNLOADS_AT_ONCE)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        // Written even when some download failed: the next try needs only the rest.
        if let Err(e) = async { self.list_pack(&store, writer.finish().await?).await }.await {
            errors.insert(0, e);
        }
        mark("downloaded");
        if let Some(first) = errors.first() {
            return Err(match errors.len() {
                1 => first.clone(),
                n => SwError::Js(format!("{first} (and {} more failed downloads)", n - 1)),
            });
        }

        if up_to_date {
            // Served from here on from where they are now.
            self.state.borrow_mut().blobs.clear();
            return Ok(Checked::UpToDate);
        }
        let version = manifest.version.clone();
        if active.is_none() {
            let manifest = Rc::new(manifest);
            self.persist(&store, &|v| v.active = Some(manifest.clone())).await?;
            mark("saved");
            self.gc().await?;
            Ok(Checked::Installed(version))
        } else {
            let manifest = Rc::new(manifest);
            self.persist(&store, &|v| v.pending = Some(manifest.clone())).await?;
            self.broadcast(Obj::new().set("type", "update-ready").set("version", &version));
            Ok(Checked::Pending(version))
        }
    }

    async fn fetch_fresh(&self, url: &str) -> Result<Response, SwError> {
        let init = RequestInit::new();
        // Revalidate with the server: the HTTP cache must never stand in for it.
        init.set_cache(RequestCache::NoCache);
        let headers = web_sys::Headers::new()?;
        headers.set("stead-fetch", "install")?;
        init.set_headers(&headers);
        let promise = self.scope.fetch_with_str_and_init(url, &init);
        let response = JsFuture::from(promise)
            .await
            .map_err(|e| SwError::Network { path: url.to_owned(), message: crate::store::describe(&e) })?;
        Ok(response.unchecked_into())
    }

    /// Saves the state with a pack just written listed.
    async fn list_pack(&self, store: &BundleStore, written: Option<crate::pack::Pack>) -> Result<(), SwError> {
        match written {
            Some(pack) => self.persist(store, &|v| v.packs.push(pack.clone())).await,
            None => Ok(()),
        }
    }

    /// Downloads and stores `batch` (indices into the manifest's files, and the files) in
    /// one `stead-files` request, or file by file: when it is one file, when the server has
    /// no batches (then `batching` is cleared, so the rest go file by file at once), or when
    /// the batch fails or ends short (a server file that no longer matches the manifest, or
    /// the network: file by file, the error names the file). Every file is tried, as when they go in parallel: the
    /// next try needs only the rest. Each pack is listed as soon as it is written: an
    /// install stopped later resumes after it.
    async fn download_batch(
        &self,
        store: &BundleStore,
        writer: &crate::store::Writer,
        version: &str,
        batch: Vec<(usize, &BundleFile)>,
        batching: &Cell<bool>,
    ) -> Result<(), SwError> {
        let mut first_error = Ok(());
        let mut keep = |done: Result<(), SwError>| {
            if first_error.is_ok() {
                first_error = done;
            }
        };
        if batch.len() > 1 && batching.get() {
            let indices: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
            let url = format!("{}{FILES_BATCH}?{}", self.base, batch_query(version, &indices));
            // A batch cut short before its headers (the server met a bad file first) fails
            // the fetch itself in Firefox: that goes file by file too.
            let response = self.fetch_fresh(&url).await.ok();
            if response.as_ref().is_some_and(|r| !r.ok()) {
                // A server without batches, or one serving another version by now.
                batching.set(false);
            } else if let Some(response) = response
                && let Ok(body) = JsFuture::from(response.array_buffer()?).await
            {
                let bytes = js_sys::Uint8Array::new(&body);
                if u64::from(bytes.length()) == batch.iter().map(|(_, f)| f.size).sum::<u64>() {
                    let mut at = 0;
                    for (_, file) in &batch {
                        // The sizes add up to the buffer's length, so each fits in u32.
                        let end = at + file.size as u32;
                        keep(self.keep_bytes(store, writer, file, bytes.subarray(at, end)).await);
                        at = end;
                    }
                    return first_error;
                }
            }
        }
        for (_, file) in batch {
            keep(async {
                let bytes = self.download(file).await.map_err(|e| e.at(&file.path))?;
                self.keep_bytes(store, writer, file, bytes).await
            }
            .await);
        }
        first_error
    }

    async fn download(&self, file: &BundleFile) -> Result<js_sys::Uint8Array, SwError> {
        let url = web_sys::Url::new_with_base(&file.path, &self.base)?.href();
        let response = self.fetch_fresh(&url).await?;
        if !response.ok() {
            return Err(SwError::Http { path: file.path.clone(), status: response.status() });
        }
        let body = JsFuture::from(response.array_buffer()?).await.map_err(SwError::network)?;
        Ok(js_sys::Uint8Array::new(&body))
    }

    /// Stores a downloaded file (checked by the writer) and lists its pack once written.
    async fn keep_bytes(&self, store: &BundleStore, writer: &crate::store::Writer, file: &BundleFile, bytes: js_sys::Uint8Array) -> Result<(), SwError> {
        let pack = writer.put_bytes(file, bytes).await.map_err(|e| e.at(&file.path))?;
        self.list_pack(store, pack).await
    }

    /// Saves the versions and the meta with `change` made, and once saved makes it in
    /// memory too. Saves run one at a time, each from what memory holds when its turn
    /// comes, so none undoes another; a failed save changes nothing.
    async fn persist(&self, store: &BundleStore, change: &dyn Fn(&mut Versions)) -> Result<(), SwError> {
        let mut end_turn = None;
        let turn = js_sys::Promise::new(&mut |resolve, _| end_turn = Some(resolve));
        let previous = self.saving.replace(turn);
        let _ = JsFuture::from(previous).await;
        let mut next = self.state.borrow().versions.clone();
        change(&mut next);
        let saved = store.save(&next).await;
        if saved.is_ok() {
            change(&mut self.state.borrow_mut().versions);
        }
        if let Some(end_turn) = end_turn {
            let _ = end_turn.call0(&JsValue::UNDEFINED);
        }
        saved
    }

    /// Makes the downloaded update the served version. Pages loaded before keep the
    /// version they started with until they reload.
    pub async fn activate_pending(self: &Rc<Self>) -> Result<(), SwError> {
        let store = self.load().await?;
        let Some(pending) = self.state.borrow().versions.pending.clone() else {
            return Ok(());
        };
        self.persist(&store, &|v| {
            v.active = Some(pending.clone());
            v.pending = None;
        })
        .await?;
        self.broadcast(Obj::new().set("type", "activated").set("version", &pending.version));
        self.gc().await
    }

    /// Deletes stored contents that no version in use needs any more.
    pub async fn gc(self: &Rc<Self>) -> Result<(), SwError> {
        let store = self.load().await?;
        let live = self.live_clients().await?;
        let in_progress = self.updating.borrow().is_some();
        let keep: HashSet<String> = {
            let mut s = self.state.borrow_mut();
            s.clients.retain(|id, _| live.contains(id));
            let versions = s.versions.active.iter().chain(s.versions.pending.iter()).chain(s.clients.values());
            // The data engine this script was built with, even before its version is active.
            versions.flat_map(|v| v.files.iter().map(|f| f.sha256.clone())).chain(crate::data::module_sha256()).collect()
        };
        let packs = self.state.borrow().versions.packs.clone();
        let compacted = store.compact(&keep, &packs, in_progress).await?;
        if !compacted.dropped.is_empty() {
            // The packs written first, then the state without the old ones, then those go.
            self.persist(&store, &|v| {
                v.packs.retain(|p| !compacted.dropped.contains(&p.name));
                v.packs.extend(compacted.added.iter().cloned());
            })
            .await?;
        }
        let listed = self.state.borrow().versions.packs.clone();
        let gone = store.gc(&keep, in_progress, &compacted.dropped, &listed).await?;
        {
            let mut s = self.state.borrow_mut();
            for hash in compacted.changed.iter().chain(&gone) {
                s.blobs.remove(hash);
            }
        }
        // Not during the install: the copy waits until the version is active (the shim's
        // `hello` to itself), and while it is written the shim's wake page stands in for
        // the entry. A copy that could not be rewritten is tried again at the next `hello`.
        if !self.installing.get() {
            let _ = self.sync_cold().await;
        }
        Ok(())
    }

    /// Brings the cold copy ([`crate::cold`]) in line with the active version and the
    /// versions open pages use.
    pub async fn sync_cold(self: &Rc<Self>) -> Result<(), SwError> {
        let versions: Vec<Rc<BundleManifest>> = {
            let s = self.state.borrow();
            let mut seen = HashSet::new();
            s.versions.active.iter().chain(s.clients.values()).filter(|v| seen.insert(v.version.clone())).cloned().collect()
        };
        if versions.is_empty() {
            return Ok(());
        }
        let synced = crate::cold::sync(self, &versions).await;
        if let Err(e) = &synced {
            web_sys::console::warn_1(&format!("stead: the cold copy: {e}").into());
        }
        synced
    }

    async fn live_clients(&self) -> Result<HashSet<String>, SwError> {
        let opts = ClientQueryOptions::new();
        opts.set_include_uncontrolled(true);
        opts.set_type(ClientType::All);
        let list: Array = JsFuture::from(self.scope.clients().match_all_with_options(&opts)).await?.unchecked_into();
        Ok(list.iter().map(|c| c.unchecked_into::<Client>().id()).collect())
    }

    /// The kill switch: forgets every stored file and version, erases the data the server
    /// holds, and unregisters. Data the server lacks (after 5 s to send it) is kept, and
    /// the worker stays registered, answering status and the erase call, until the server
    /// has it or the user agrees to lose it ([`Worker::erase_kept`]).
    pub async fn kill(self: &Rc<Self>) -> Result<(), SwError> {
        self.killing.set(true);
        let result = self.kill_steps().await;
        self.killing.set(false);
        result
    }

    async fn kill_steps(self: &Rc<Self>) -> Result<(), SwError> {
        let data = Data::get();
        // From here no page request starts the data engine (a killed worker sends the page
        // API to the network), but one may have started it already, to create the space it
        // asks for (an app's first request does): the kill waits for that load, so it sees
        // and erases what the request makes instead of leaving it behind the app.
        self.killed.set(true);
        // First, so no request is answered from the app any more while the worker is
        // stopped.
        if let Err(e) = crate::cold::drop_all().await {
            web_sys::console::warn_1(&format!("stead: deleting the cold copy: {e}").into());
        }
        let in_use = data.in_use_once_loaded().await;
        // The data engine is a bundle file: loaded before the bundle goes.
        if in_use && let Err(e) = data.load().await {
            web_sys::console::warn_1(&format!("loading the data engine: {e}").into());
        }
        let place = self.place().await;
        if let Some(store) = self.state.borrow_mut().store.take() {
            store.close();
        }
        place.wipe().await?;
        // The store's folder went with the wipe: its handle must not be used again.
        let place = place.wiped();
        *self.place.borrow_mut() = Some(place.clone());
        *self.state.borrow_mut() = State::default();
        *self.loading.borrow_mut() = None;
        let retired = if in_use { data.retire(5_000.0).await } else { Ok(Vec::new()) };
        let kept = match retired {
            Ok(kept) => kept,
            Err(e) => {
                // Whether anything is unacknowledged is unknown: keep it all.
                web_sys::console::warn_1(&format!("erasing the data: {e}").into());
                let unknown = |space: String| Kept { space, pending: None, blobs_pending: None };
                match data.spaces().await {
                    Ok(spaces) if !spaces.is_empty() => spaces.into_iter().map(unknown).collect(),
                    _ => vec![unknown(String::new())],
                }
            }
        };
        if kept.is_empty() {
            return self.finish_kill().await;
        }
        // A restarted killed worker needs the engine to sync and erase what is kept.
        if let (Some(sha256), Some(bytes)) = (crate::data::module_sha256(), data.bytes()) {
            let file = BundleFile {
                path: stead_core::bundle::DATA_MODULE.into(),
                sha256,
                size: bytes.byte_length().into(),
                mime: "application/wasm".into(),
                immutable: false,
            };
            let stored = async {
                let store = place.open().await?;
                match store.put(&file, js_sys::Uint8Array::new(&bytes)).await? {
                    // The state the wipe removed, with only this pack in it.
                    Some(pack) => store.save(&crate::store::Versions { packs: vec![pack], ..Default::default() }).await,
                    None => Ok(()),
                }
            };
            if let Err(e) = stored.await {
                web_sys::console::warn_1(&format!("keeping the data engine: {e}").into());
            }
        }
        place.mark_killed(&js::stringify(&Obj::new().set("killed_at", Date::now()).build())).await?;
        *self.kept.borrow_mut() = kept;
        self.kept_known.set(true);
        self.announce_kept();
        self.watch_kept();
        Ok(())
    }

    /// Opens the kept spaces, erases those the server now has, and ends the kill when none
    /// is left; pages hear when what is kept changed.
    async fn check_kept(self: &Rc<Self>) {
        let data = Data::get();
        if let Err(e) = data.wake().await {
            web_sys::console::warn_1(&format!("opening the kept data: {e}").into());
        }
        match data.erase_acknowledged().await {
            Ok(kept) if kept.is_empty() => {
                self.kept_known.set(true);
                if let Err(e) = self.finish_kill().await {
                    web_sys::console::warn_1(&format!("ending the kill: {e}").into());
                }
            }
            Ok(kept) => {
                let changed = !self.kept_known.replace(true) || *self.kept.borrow() != kept;
                *self.kept.borrow_mut() = kept;
                if changed {
                    self.announce_kept();
                }
            }
            Err(e) => web_sys::console::warn_1(&format!("checking the kept data: {e}").into()),
        }
    }

    /// Tells pages what the kill switch kept and that it waits for their consent.
    fn announce_kept(&self) {
        let kept = self.kept.borrow().clone();
        self.broadcast(Obj::new().set("type", "killed").set("kept", kept_js(&kept)).set("consent_needed", true));
    }

    /// Erases kept spaces as the server acknowledges them (their engines keep syncing
    /// while the worker lives), and ends the kill once none is left.
    fn watch_kept(self: &Rc<Self>) {
        if self.watching.replace(true) {
            return;
        }
        let w = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                w.check_kept().await;
                if w.kept_known.get() && w.kept.borrow().is_empty() {
                    break;
                }
                let _ = stead_sw_common::sleep(KEPT_CHECK_MS).await;
            }
            w.watching.set(false);
        });
    }

    /// Nothing of the app is left: the marker goes, pages hear `killed`, and the
    /// registration ends.
    async fn finish_kill(self: &Rc<Self>) -> Result<(), SwError> {
        self.kept.borrow_mut().clear();
        // Known to be nothing from now on: later status requests and heartbeats answer
        // from memory instead of wiping again (in IndexedDB a wipe opens, so re-creates,
        // the bundle database before it deletes it). The data engine re-creates nothing
        // after its erase (`storage_open` in stead-sw-data).
        self.kept_known.set(true);
        let place = self.place().await;
        // The data engine a kill kept, if any.
        place.wipe().await?;
        place.unmark_killed().await?;
        crate::scope::remove_opfs_root_if_empty().await?;
        self.broadcast(Obj::new().set("type", "killed").set("kept", js::array::<JsValue>([])));
        let unregistering = self.scope.registration().unregister()?;
        if self.installing.get() {
            // The unregister job queues behind this worker's own install job, which waits
            // for this event to end: awaiting it here would hang the install (Firefox and
            // WebKit follow the spec's job queue to the letter). The install fails instead,
            // and that alone removes the registration.
            return Ok(());
        }
        JsFuture::from(unregistering).await?;
        Ok(())
    }

    /// `POST _stead/v1/erase` with `{"confirm": true}`: the user agreed to lose what the
    /// kill switch kept. Returns the HTTP status and the answer.
    pub async fn erase_kept(self: &Rc<Self>, confirmed: bool) -> (u16, JsValue) {
        // A worker that just started learns here whether it was killed.
        let _ = self.load().await;
        if !self.killed.get() {
            return (409, problem(409, "conflict", "nothing waits to be erased: the app was not withdrawn"));
        }
        if !confirmed {
            let detail = "expected {\"confirm\": true}: the kept data has changes the server never received";
            return (400, problem(400, "bad request", detail));
        }
        let erased = match Data::get().erase_all().await {
            Ok(spaces) => spaces,
            Err(e) => return (500, problem(500, "storage error", &e)),
        };
        if let Err(e) = self.finish_kill().await {
            return (500, problem(500, "browser error", &e.to_string()));
        }
        (200, Obj::new().set("erased", js::array(erased)).build())
    }

    /// What a killed worker reports as its status.
    pub async fn killed_status(self: &Rc<Self>) -> JsValue {
        if !self.kept_known.get() && !self.killing.get() {
            self.check_kept().await;
        }
        let kept = self.kept.borrow().clone();
        Obj::new()
            .set("killed", true)
            .set("consent_needed", !kept.is_empty())
            .set("kept", kept_js(&kept))
            .set("worker_started", self.started)
            .build()
    }

    pub async fn status(self: &Rc<Self>) -> JsValue {
        let store = match self.load().await {
            Ok(s) => s,
            Err(_) if self.killed.get() => return self.killed_status().await,
            Err(e) => return Obj::new().set("error", e.to_string()).build(),
        };
        let packs = self.state.borrow().versions.packs.clone();
        let stored = store.stored(&packs).await.unwrap_or_default();
        let estimate = storage_estimate().await.map(|e| Obj::new().set("usage", e.usage).set("quota", e.quota).build());
        let s = self.state.borrow();
        let files = js::array(s.versions.active.iter().flat_map(|a| a.files.iter()).map(|f| {
            Obj::new()
                .set("path", &f.path)
                .set("sha256", &f.sha256)
                .set("size", f.size)
                .set("stored", stored.get(&f.sha256) == Some(&f.size))
                .build()
        }));
        Obj::new()
            .set("active_version", s.versions.active.as_ref().map(|a| &a.version))
            .set("pending_version", s.versions.pending.as_ref().map(|p| &p.version))
            .set("files", files)
            .set("stored", js::array(stored.keys()))
            .set("stored_bytes", stored.values().sum::<u64>())
            .set("last_update_check", s.versions.meta.last_update_check)
            .set("last_check_result", s.versions.meta.last_check_result.as_deref())
            .set("last_error", s.versions.meta.last_error.as_deref())
            .set("storage", estimate)
            .set("bundle_storage", store.place_name())
            .set("worker_started", self.started)
            .set("start_profile", self.start_profile())
            .set("data_engine", Data::get().state())
            .set("killed", false)
            .build()
    }

    /// Posts `message` on the `stead` channel, tagged with this worker's scope.
    fn broadcast(&self, message: Obj) {
        if let Some(channel) = &self.channel {
            let _ = channel.post_message(&message.set("scope", crate::scope::url()).build());
        }
    }
}

thread_local! {
    /// The first time this worker life reached each step of serving ([`mark`]).
    static MARKS: RefCell<Vec<(&'static str, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Notes the first time this worker life reaches `step`, in ms since its time origin (the
/// browser's start of the worker): status shows them as `start_profile`.
pub fn mark(step: &'static str) {
    MARKS.with(|m| {
        let mut marks = m.borrow_mut();
        if !marks.iter().any(|(s, _)| *s == step) {
            marks.push((step, since_start()));
        }
    });
}

/// Milliseconds since this worker's time origin (`performance.now()`).
fn since_start() -> f64 {
    let performance = Reflect::get(&js_sys::global(), &"performance".into()).unwrap_or(JsValue::UNDEFINED);
    Reflect::get(&performance, &"now".into())
        .ok()
        .and_then(|now| now.dyn_into::<js_sys::Function>().ok())
        .and_then(|now| now.call0(&performance).ok())
        .and_then(|t| t.as_f64())
        .unwrap_or(f64::NAN)
}

/// An RFC 9457 problem document, as the page API and the server write them.
pub fn problem(status: u16, title: &str, detail: &str) -> JsValue {
    Obj::new().set("type", "about:blank").set("title", title).set("status", status).set("detail", detail).build()
}

fn kept_js(kept: &[Kept]) -> JsValue {
    js::array(kept.iter().map(Kept::to_js))
}

/// Keeps the worker alive until `work` ends; a failure rejects the event's promise.
fn wait_until(event: &ExtendableEvent, work: impl Future<Output = Result<(), SwError>> + 'static) {
    let promise = future_to_promise(async move {
        work.await.map(|()| JsValue::UNDEFINED).map_err(|e| js_sys::Error::new(&e.to_string()).into())
    });
    let _ = event.wait_until(&promise);
}

#[cfg(test)]
mod tests {
    use stead_core::bundle::BundleFile;
    use wasm_bindgen_test::wasm_bindgen_test;

    use super::*;

    fn file(path: &str, size: u64) -> BundleFile {
        BundleFile { path: path.into(), sha256: format!("{:064x}", size), size, mime: "text/plain".into(), immutable: false }
    }

    fn paths(batches: &[Vec<(usize, &BundleFile)>]) -> Vec<Vec<(usize, String)>> {
        batches.iter().map(|b| b.iter().map(|(i, f)| (*i, f.path.clone())).collect()).collect()
    }

    #[wasm_bindgen_test]
    fn batches_run_in_manifest_order_and_big_files_go_alone() {
        let files = [file("a", 10), file("b", 20), file("big", 2 * BATCH_BYTES_MAX), file("c", 30), file("d", 40), file("e", 50)];
        // Stored already: b and d.
        let missing: Vec<&BundleFile> = [0, 2, 3, 5].iter().map(|&i| &files[i]).collect();
        let cut = batches(&files, &missing);
        let expect = vec![vec![(2, "big".to_owned())], vec![(0, "a".to_owned()), (3, "c".to_owned()), (5, "e".to_owned())]];
        assert_eq!(paths(&cut), expect);
    }

    #[wasm_bindgen_test]
    fn batches_close_at_their_byte_target_and_file_count() {
        // 24 files of 100 KB: the target is 2.4 MB / 12 = 200 KB, two files a batch.
        let files: Vec<BundleFile> = (0..24).map(|i| file(&format!("f{i:02}"), 100 * 1024)).collect();
        let missing: Vec<&BundleFile> = files.iter().collect();
        let cut = batches(&files, &missing);
        assert_eq!(cut.len(), 12);
        assert!(cut.iter().all(|b| b.len() == 2));
        assert_eq!(cut.concat().iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..24).collect::<Vec<_>>());
        // Many tiny files: at most BATCH_FILES a batch.
        let files: Vec<BundleFile> = (0..600).map(|i| file(&format!("t{i:03}"), 10)).collect();
        let missing: Vec<&BundleFile> = files.iter().collect();
        let sizes: Vec<usize> = batches(&files, &missing).iter().map(Vec::len).collect();
        assert_eq!(sizes, [BATCH_FILES, BATCH_FILES, 600 - 2 * BATCH_FILES]);
    }
}
