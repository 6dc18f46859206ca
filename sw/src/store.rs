//! The worker's bundle store: OPFS where the worker can write files there, IndexedDB
//! otherwise (WebKit without OPFS, or an engine that opens OPFS folders but refuses
//! writable files in a worker).
//!
//! In OPFS, under the worker's folder (the origin's root for the root scope, see
//! [`crate::scope`]):
//!
//! ```text
//! stead/files/<name>.pack     downloaded contents, back to back (see [`crate::pack`])
//! stead/files/<sha256>        a content stored one to a file by a worker before packs
//! stead/files/<sha256>.part   such a file being written (renamed once closed)
//! stead/state.bin             the active and pending manifests, the meta and where each
//!                             content is in the packs, in one binary document
//!                             (see [`crate::state`])
//! stead-killed.json           the kill switch's marker, beside `stead/`
//! ```
//!
//! In IndexedDB, the database `stead-bundle` (scoped like every database, see
//! [`crate::scope`]) holds the same under keys: `files` maps a SHA-256 to the body's
//! chunks (an array of `Uint8Array`s; one chunk since the body is checked whole) and
//! `sizes` to its size, both written in one transaction once the body matched; `docs` maps
//! `state.bin` to the state document's bytes and `stead-killed.json` to its text.
//! Bytes, not `Blob`s: WebKit's non-persistent sessions (private browsing, automation)
//! refuse to store a `Blob` in IndexedDB ("Error preparing Blob/File data").
//!
//! A version's manifest is written only after every file it names is stored, and the
//! state document is the pointer: switching versions is one atomic replacement of it.
//! A store written by an older worker has `active.json`, `pending.json` and `meta.json`
//! (JSON) in place of `state.bin`: see [`LEGACY`].

use std::collections::{HashMap, HashSet};

use js_sys::{Array, Reflect, Uint8Array};
use stead_core::bundle::BundleFile;
use stead_store::idb::db;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, IdbDatabase};

use crate::{
    SwError,
    opfs::{self, Dir},
    pack::{self, Compacted, Pack, PackWriter},
};

/// The state document: the active and pending manifests and the meta ([`crate::state`]).
const STATE: &str = "state.bin";
/// The documents a store kept before the state document (JSON). A worker that finds
/// only these has no version yet: its install downloads the manifest again (every file
/// it names is still stored) and its first save writes the state; a wipe removes them.
const LEGACY: [&str; 3] = ["active.json", "pending.json", "meta.json"];
const ROOT: &str = "stead";
const PART: &str = ".part";
/// The kill switch's marker: present while a killed worker keeps data the server lacks.
const KILLED: &str = "stead-killed.json";
/// The IndexedDB fallback's database and its object stores.
const IDB_NAME: &str = "stead-bundle";
const IDB_FILES: &str = "files";
const IDB_SIZES: &str = "sizes";
const IDB_DOCS: &str = "docs";
const IDB_STORES: [&str; 3] = [IDB_FILES, IDB_SIZES, IDB_DOCS];
/// Written, read back and removed to learn whether this worker can write OPFS files.
const PROBE: &str = ".stead-bundle-probe";

/// What status shows about past update checks; survives worker restarts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Milliseconds since the epoch of the last finished check.
    pub last_update_check: Option<f64>,
    /// `up-to-date`, `downloaded <version>`, `offline: ...`.
    pub last_check_result: Option<String>,
    pub last_error: Option<String>,
}

pub use crate::state::Versions;

/// Where this worker keeps its bundle, chosen once per worker life by [`Place::detect`].
#[derive(Debug, Clone)]
pub enum Place {
    /// The worker's OPFS folder (the scope's root), and the store's folder in it when
    /// detection already found it (a cold start then looks it up once, not twice).
    Opfs { root: Dir, bundle: Option<Dir> },
    /// The `stead-bundle` database.
    IndexedDb,
}

impl Place {
    /// OPFS when a bundle is already stored there or a probe file can be written, read
    /// back and removed; IndexedDB otherwise. A store that exists keeps its place, so a
    /// worker that once chose OPFS never loses its bundle to a failing probe (a full disk).
    pub async fn detect() -> Place {
        let Ok(root) = crate::scope::opfs_root().await else { return Place::IndexedDb };
        crate::worker::mark("opfs_root");
        if let Ok(Some(bundle)) = opfs::dir(&root, ROOT, false).await {
            crate::worker::mark("store_found");
            return Place::Opfs { root, bundle: Some(bundle) };
        }
        if matches!(opfs::file(&root, KILLED).await, Ok(Some(_))) {
            return Place::Opfs { root, bundle: None };
        }
        let writable = async {
            opfs::write_bytes(&root, PROBE, b"ok").await?;
            let read = opfs::read_bytes(&root, PROBE).await?;
            opfs::remove(&root, PROBE, false).await?;
            Ok::<bool, opfs::FsError>(read.as_deref() == Some(&b"ok"[..]))
        };
        match writable.await {
            Ok(true) => Place::Opfs { root, bundle: None },
            _ => Place::IndexedDb,
        }
    }

    /// This place once [`Place::wipe`] removed the store: an OPFS store's folder handle
    /// names a folder that is gone (using it fails), so opening again creates the folder.
    pub fn wiped(&self) -> Place {
        match self {
            Place::Opfs { root, .. } => Place::Opfs { root: root.clone(), bundle: None },
            Place::IndexedDb => Place::IndexedDb,
        }
    }

    /// Whether detection found the OPFS store's folder, so opening it creates nothing.
    pub fn has_store(&self) -> bool {
        matches!(self, Place::Opfs { bundle: Some(_), .. })
    }

    /// `opfs` or `indexeddb`, as status shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Place::Opfs { .. } => "opfs",
            Place::IndexedDb => "indexeddb",
        }
    }

    pub async fn open(&self) -> Result<BundleStore, SwError> {
        match self {
            Place::Opfs { bundle: Some(bundle), .. } => BundleStore::open_at(bundle.clone()).await,
            Place::Opfs { root, bundle: None } => BundleStore::open_in(root).await,
            Place::IndexedDb => BundleStore::open_idb().await,
        }
    }

    /// Opens the store and reads what a worker serves from: the active and pending
    /// manifests and the meta, in flight together. For a store that exists in OPFS the
    /// `files` folder opens while they are read (a cold start's critical path).
    pub async fn open_versions(&self) -> Result<(BundleStore, Versions), SwError> {
        if let Place::Opfs { bundle: Some(bundle), .. } = self {
            // The documents live in `stead/` itself, so they need no `files` handle.
            let doc = Doc::Opfs(bundle);
            let (files, versions) = futures::join!(opfs::dir(bundle, "files", true), read_versions(&doc));
            return Ok((BundleStore::opfs(bundle.clone(), files?.expect("created")), versions?));
        }
        let store = self.open().await?;
        let versions = store.versions().await?;
        Ok((store, versions))
    }

    /// Deletes every file, version and status the store holds (the kill marker stays).
    pub async fn wipe(&self) -> Result<(), SwError> {
        match self {
            Place::Opfs { root, .. } => BundleStore::wipe(root).await,
            Place::IndexedDb => {
                let database = idb_open().await?;
                let tx = db::transaction(&database, &IDB_STORES, true)?;
                db::store(&tx, IDB_FILES)?.clear()?;
                db::store(&tx, IDB_SIZES)?.clear()?;
                let docs = db::store(&tx, IDB_DOCS)?;
                for name in std::iter::once(STATE).chain(LEGACY) {
                    docs.delete(&name.into())?;
                }
                db::committed(&tx).await?;
                database.close();
                Ok(())
            }
        }
    }

    /// Whether the kill switch's marker is there.
    pub async fn killed(&self) -> Result<bool, SwError> {
        match self {
            Place::Opfs { root, .. } => Ok(opfs::file(root, KILLED).await?.is_some()),
            Place::IndexedDb => {
                let database = idb_open().await?;
                let found = db::get(&database, IDB_DOCS, KILLED).await?.is_some();
                database.close();
                Ok(found)
            }
        }
    }

    pub async fn mark_killed(&self, json: &str) -> Result<(), SwError> {
        match self {
            Place::Opfs { root, .. } => Ok(opfs::write_bytes(root, KILLED, json.as_bytes()).await?),
            Place::IndexedDb => {
                let database = idb_open().await?;
                db::put(&database, IDB_DOCS, KILLED, &json.into()).await?;
                database.close();
                Ok(())
            }
        }
    }

    /// Removes the marker, and with it whatever is left of the store.
    pub async fn unmark_killed(&self) -> Result<(), SwError> {
        match self {
            Place::Opfs { root, .. } => {
                opfs::remove(root, KILLED, false).await?;
                Ok(())
            }
            Place::IndexedDb => Ok(db::delete_database(IDB_NAME).await?),
        }
    }
}

async fn idb_open() -> Result<IdbDatabase, SwError> {
    let database = db::open(IDB_NAME, &IDB_STORES).await?;
    // Whoever deletes the database (the kill switch, a page resetting the app) waits
    // until every connection closed: this one closes when asked.
    let this = database.clone();
    let close = wasm_bindgen::closure::Closure::<dyn Fn()>::new(move || this.close());
    database.set_onversionchange(Some(close.as_ref().unchecked_ref()));
    close.forget();
    Ok(database)
}

#[derive(Debug, Clone)]
pub struct BundleStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Opfs { root: Dir, files: Dir, packs: std::rc::Rc<std::cell::RefCell<Vec<(String, web_sys::File)>>> },
    Idb(IdbDatabase),
}

/// Where the state document is read from.
enum Doc<'a> {
    Opfs(&'a Dir),
    Idb(&'a IdbDatabase),
}

async fn read_doc(place: &Doc<'_>, name: &str) -> Result<Option<Vec<u8>>, SwError> {
    match place {
        Doc::Opfs(root) => Ok(opfs::read_bytes(root, name).await?),
        Doc::Idb(database) => Ok(db::get(database, IDB_DOCS, name).await?.and_then(|v| v.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec))),
    }
}

/// The active and pending versions and the meta: one read of the state document.
///
/// A damaged document reads as no version, with the damage as the last error: the
/// state is derived (the server has the manifest, and every file is stored under its
/// hash), so the next update check downloads the manifest again, finds the files and
/// saves a new one, where an error here would stop the worker for good.
async fn read_versions(place: &Doc<'_>) -> Result<Versions, SwError> {
    let Some(bytes) = read_doc(place, STATE).await? else { return Ok(Versions::default()) };
    Ok(crate::state::decode(&bytes).unwrap_or_else(|e| Versions {
        meta: Meta { last_error: Some(format!("the stored state is damaged ({e}); the next update check replaces it")), ..Meta::default() },
        ..Versions::default()
    }))
}

impl BundleStore {
    fn new(backend: Backend) -> Self {
        BundleStore { backend }
    }

    /// Opens (creating) the store under `parent` in OPFS; tests use a folder of their own.
    pub async fn open_in(parent: &Dir) -> Result<Self, SwError> {
        Self::open_at(opfs::dir(parent, ROOT, true).await?.expect("created")).await
    }

    /// Opens the store whose folder (`stead/`) is `root`.
    async fn open_at(root: Dir) -> Result<Self, SwError> {
        let files = opfs::dir(&root, "files", true).await?.expect("created");
        Ok(BundleStore::opfs(root, files))
    }

    fn opfs(root: Dir, files: Dir) -> Self {
        BundleStore::new(Backend::Opfs { root, files, packs: Default::default() })
    }

    /// A listed pack's `File` when it is whole, read once per store.
    async fn pack_file(&self, pack: &Pack) -> Result<Option<web_sys::File>, SwError> {
        let Backend::Opfs { files, packs, .. } = &self.backend else { return Ok(None) };
        if let Some((_, f)) = packs.borrow().iter().find(|(name, _)| *name == pack.name) {
            return Ok(Some(f.clone()));
        }
        let file = pack::file(files, pack).await?;
        if let Some(f) = &file {
            packs.borrow_mut().push((pack.name.clone(), f.clone()));
        }
        Ok(file)
    }

    /// Opens (creating) the store in IndexedDB.
    pub async fn open_idb() -> Result<Self, SwError> {
        Ok(BundleStore::new(Backend::Idb(idb_open().await?)))
    }

    /// Opens (creating) an IndexedDB store in a database of its own; for tests.
    pub async fn open_idb_named(name: &str) -> Result<Self, SwError> {
        Ok(BundleStore::new(Backend::Idb(db::open(name, &IDB_STORES).await?)))
    }

    /// Deletes everything the OPFS store holds under `parent`.
    pub async fn wipe(parent: &Dir) -> Result<(), SwError> {
        opfs::remove(parent, ROOT, true).await?;
        Ok(())
    }

    /// Closes the IndexedDB connection (nothing to close in OPFS): a database with an
    /// open connection cannot be deleted. The store is not used after this.
    pub fn close(&self) {
        if let Backend::Idb(database) = &self.backend {
            database.close();
        }
    }

    /// `opfs` or `indexeddb`.
    pub fn place_name(&self) -> &'static str {
        match self.backend {
            Backend::Opfs { .. } => "opfs",
            Backend::Idb(_) => "indexeddb",
        }
    }

    /// The active and pending versions and the meta (see [`read_versions`]).
    pub async fn versions(&self) -> Result<Versions, SwError> {
        match &self.backend {
            Backend::Opfs { root, .. } => read_versions(&Doc::Opfs(root)).await,
            Backend::Idb(database) => read_versions(&Doc::Idb(database)).await,
        }
    }

    /// Replaces the state document: one atomic write, whatever changed in it.
    pub async fn save(&self, versions: &Versions) -> Result<(), SwError> {
        let bytes = crate::state::encode(versions);
        match &self.backend {
            Backend::Opfs { root, .. } => opfs::write_bytes(root, STATE, &bytes).await?,
            Backend::Idb(database) => db::put(database, IDB_DOCS, STATE, &Uint8Array::from(&bytes[..]).into()).await?,
        }
        Ok(())
    }

    /// Stored contents by hash, with their sizes: those in the whole packs of `packs`, and
    /// those stored one to a file. Unfinished downloads are not listed.
    pub async fn stored(&self, packs: &[Pack]) -> Result<HashMap<String, u64>, SwError> {
        let mut out = HashMap::new();
        match &self.backend {
            Backend::Opfs { files, .. } => {
                for p in packs {
                    if self.pack_file(p).await?.is_some() {
                        out.extend(p.entries.iter().map(|e| (e.sha256.clone(), e.size)));
                    }
                }
                for name in opfs::names(files).await? {
                    if name.ends_with(PART) || name.ends_with(pack::SUFFIX) || out.contains_key(&name) {
                        continue;
                    }
                    if let Some(f) = opfs::file(files, &name).await? {
                        out.insert(name, f.size() as u64);
                    }
                }
            }
            Backend::Idb(database) => {
                for (name, size) in db::all(database, IDB_SIZES).await? {
                    if let Some(size) = size.as_f64() {
                        out.insert(name, size as u64);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Plans the packs' clean-up ([`pack::compact`]); the caller saves the state with
    /// its packs changed, then calls [`BundleStore::gc`].
    /// Nothing changes while `in_progress`: the update's packs are listed before the
    /// version that keeps their contents is.
    pub async fn compact(&self, keep: &HashSet<String>, packs: &[Pack], in_progress: bool) -> Result<Compacted, SwError> {
        match &self.backend {
            Backend::Opfs { files, .. } if !in_progress => pack::compact(files, keep, packs).await,
            _ => Ok(Compacted::default()),
        }
    }

    /// Deletes every content stored one to a file that `keep` does not name (an
    /// unfinished download too, unless `in_progress`), and every pack the state does not
    /// list (`listed`) that [`pack::removable`] allows. Returns the hashes whose content
    /// is gone.
    pub async fn gc(&self, keep: &HashSet<String>, in_progress: bool, dropped: &[String], listed: &[Pack]) -> Result<Vec<String>, SwError> {
        let (files, names) = match &self.backend {
            Backend::Opfs { files, .. } => (Some(files), opfs::names(files).await?),
            Backend::Idb(database) => (None, db::keys(database, IDB_SIZES).await?),
        };
        let now = js_sys::Date::now();
        let mut changed = Vec::new();
        for name in names {
            if let Some(files) = files
                && name.ends_with(pack::SUFFIX)
            {
                let listed = listed.iter().any(|p| name.strip_suffix(pack::SUFFIX) == Some(p.name.as_str()));
                if !listed && pack::removable(&name, dropped, now) {
                    opfs::remove(files, &name, false).await?;
                }
                continue;
            }
            let hash = name.strip_suffix(PART).unwrap_or(&name);
            let unfinished = hash.len() != name.len();
            if keep.contains(&name) || (unfinished && in_progress) {
                continue;
            }
            self.delete(&name).await?;
            changed.push(hash.to_owned());
        }
        Ok(changed)
    }

    /// The stored content with this hash: a slice of its pack (one of `packs`), or the
    /// file an older worker stored it in.
    pub async fn file(&self, packs: &[Pack], sha256: &str) -> Result<Option<Blob>, SwError> {
        match &self.backend {
            Backend::Opfs { files, .. } => {
                // The first whole pack that holds it: a damaged one may list it too, until
                // the clean-up drops it, when the content was downloaded again.
                let mut listed = false;
                for (p, e) in packs.iter().filter_map(|p| p.entries.iter().find(|e| e.sha256 == sha256).map(|e| (p, e))) {
                    listed = true;
                    if let Some(f) = self.pack_file(p).await? {
                        return Ok(Some(pack::slice(&f, e)?));
                    }
                }
                if listed {
                    return Ok(None);
                }
                Ok(opfs::file(files, sha256).await?.map(Blob::from))
            }
            Backend::Idb(database) => match db::get(database, IDB_FILES, sha256).await? {
                Some(chunks) => Ok(Some(Blob::new_with_u8_array_sequence(&chunks)?)),
                None => Ok(None),
            },
        }
    }

    async fn delete(&self, name: &str) -> Result<bool, SwError> {
        match &self.backend {
            Backend::Opfs { files, .. } => Ok(opfs::remove(files, name, false).await?),
            Backend::Idb(database) => {
                let had = db::get(database, IDB_SIZES, name).await?.is_some();
                let tx = db::transaction(database, &[IDB_FILES, IDB_SIZES], true)?;
                db::store(&tx, IDB_FILES)?.delete(&name.into())?;
                db::store(&tx, IDB_SIZES)?.delete(&name.into())?;
                db::committed(&tx).await?;
                Ok(had)
            }
        }
    }

    /// Stores one content (see [`Writer::put_bytes`]) and writes it at once; in OPFS,
    /// returns its pack for the state to list.
    pub async fn put(&self, file: &BundleFile, bytes: Uint8Array) -> Result<Option<Pack>, SwError> {
        let writer = self.writer();
        let written = writer.put_bytes(file, bytes).await?;
        Ok(written.or(writer.finish().await?))
    }

    /// A writer for many contents: in OPFS they go into packs, each written when full.
    pub fn writer(&self) -> Writer {
        match &self.backend {
            Backend::Opfs { files, .. } => Writer::Packs(PackWriter::new(files.clone())),
            Backend::Idb(database) => Writer::Idb(database.clone()),
        }
    }
}

/// Stores verified contents; what it holds back is written by [`Writer::finish`].
pub enum Writer {
    Packs(PackWriter),
    Idb(IdbDatabase),
}

impl Writer {
    /// Checks `bytes` (a downloaded body, or a view into a batch download's) for size and
    /// SHA-256 (the browser's own) against `file`. Only when both match is it stored: in
    /// IndexedDB at once, in OPFS into the pack being gathered, written when full (and
    /// then returned, for the state to list) or by [`Writer::finish`]. Otherwise nothing
    /// is kept and the error says what differed. The bytes never pass through wasm.
    pub async fn put_bytes(&self, file: &BundleFile, bytes: Uint8Array) -> Result<Option<Pack>, SwError> {
        let size = u64::from(bytes.length());
        if size != file.size {
            return Err(SwError::Size { path: file.path.clone(), expected: file.size, actual: size });
        }
        let sha = sha256_hex(&bytes).await?;
        if sha != file.sha256 {
            return Err(SwError::Hash { path: file.path.clone(), expected: file.sha256.clone(), actual: sha });
        }
        match self {
            Writer::Packs(packs) => packs.add(sha, bytes).await,
            Writer::Idb(database) => {
                // One chunk, as the reader expects a list of them.
                let tx = db::transaction(database, &[IDB_FILES, IDB_SIZES], true)?;
                // A copy of the view's bytes alone: IndexedDB would store its whole buffer.
                let own = bytes.slice(0, bytes.length());
                db::store(&tx, IDB_FILES)?.put_with_key(&Array::of1(&own), &file.sha256.as_str().into())?;
                db::store(&tx, IDB_SIZES)?.put_with_key(&(file.size as f64).into(), &file.sha256.as_str().into())?;
                db::committed(&tx).await?;
                Ok(None)
            }
        }
    }

    /// Writes what is held back; in OPFS, returns its pack for the state to list.
    pub async fn finish(&self) -> Result<Option<Pack>, SwError> {
        match self {
            Writer::Packs(packs) => packs.finish().await,
            Writer::Idb(_) => Ok(None),
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`, from the browser's `crypto.subtle.digest`.
pub async fn sha256_hex(bytes: &Uint8Array) -> Result<String, SwError> {
    let subtle = Reflect::get(&Reflect::get(&js_sys::global(), &"crypto".into())?, &"subtle".into())?;
    let digest: js_sys::Function = Reflect::get(&subtle, &"digest".into())?.dyn_into()?;
    let promise: js_sys::Promise = digest.call2(&subtle, &"SHA-256".into(), bytes)?.dyn_into()?;
    let hash = JsFuture::from(promise).await?;
    Ok(hex::encode(Uint8Array::new(&hash).to_vec()))
}

impl From<JsValue> for SwError {
    fn from(e: JsValue) -> Self {
        SwError::Js(describe(&e))
    }
}

/// A readable one-line description of a thrown JS value.
pub fn describe(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return format!("{}: {}", String::from(err.name()), String::from(err.message()));
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}
