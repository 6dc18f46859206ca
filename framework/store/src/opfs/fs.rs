//! Thin async helpers over OPFS's handle API, the only one a service worker has.
//!
//! They work in any scope that has `navigator.storage` (page, dedicated, shared and
//! service worker), turn "not found" into `None` instead of an exception, and every
//! other exception into an [`FsError`] that keeps its DOMException name (a full disk is
//! `QuotaExceededError`).

use js_sys::{AsyncIterator, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue, prelude::wasm_bindgen};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    File, FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetDirectoryOptions,
    FileSystemGetFileOptions, FileSystemRemoveOptions, FileSystemWritableFileStream, StorageManager,
};

/// A JavaScript exception from the file system, by name and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct FsError {
    pub name: String,
    pub message: String,
}

impl FsError {
    /// The storage quota (or the disk) is full.
    pub fn is_quota(&self) -> bool {
        self.name == "QuotaExceededError"
    }
}

impl From<JsValue> for FsError {
    fn from(e: JsValue) -> Self {
        if let Some(err) = e.dyn_ref::<js_sys::Error>() {
            return FsError { name: err.name().into(), message: err.message().into() };
        }
        FsError { name: "Error".into(), message: e.as_string().unwrap_or_else(|| format!("{e:?}")) }
    }
}

#[wasm_bindgen]
extern "C" {
    /// A file handle seen through the part of its API web-sys does not bind.
    #[wasm_bindgen(extends = js_sys::Object)]
    type MovableHandle;
    /// `FileSystemHandle.move(newName)`: a rename inside the same folder.
    #[wasm_bindgen(method, js_name = move)]
    fn rename_to(this: &MovableHandle, new_name: &str) -> Promise;
}

pub type Dir = FileSystemDirectoryHandle;

/// The storage manager of the current global scope, whichever kind it is.
pub fn storage() -> Result<StorageManager, FsError> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into())?;
    let storage = Reflect::get(&navigator, &"storage".into())?;
    if storage.is_undefined() || storage.is_null() {
        // WebKit turns the Storage API off in some builds: calling into it would throw.
        return Err(FsError { name: "NotSupportedError".into(), message: "this scope has no navigator.storage".into() });
    }
    Ok(storage.unchecked_into())
}

/// Where Stead's worker shim leaves the promise of the OPFS root it asked for before
/// compiling the worker's wasm, so a cold start's first file-system call overlaps that.
const EARLY_ROOT: &str = "__stead_opfs_root";

/// The origin's OPFS root. In Stead's service worker this is the promise the shim made on
/// its first line (the same handle every time); elsewhere a fresh `getDirectory()`.
pub async fn root() -> Result<Dir, FsError> {
    if let Ok(early) = Reflect::get(&js_sys::global(), &EARLY_ROOT.into())
        && let Ok(early) = early.dyn_into::<Promise>()
    {
        return Ok(JsFuture::from(early).await?.unchecked_into());
    }
    let storage = storage()?;
    if !Reflect::get(&storage, &"getDirectory".into())?.is_function() {
        return Err(FsError { name: "NotSupportedError".into(), message: "this browser has no origin private file system".into() });
    }
    Ok(JsFuture::from(storage.get_directory()).await?.unchecked_into())
}

fn is_not_found(e: &JsValue) -> bool {
    Reflect::get(e, &"name".into()).ok().and_then(|n| n.as_string()).is_some_and(|n| {
        n == "NotFoundError" || n == "TypeMismatchError"
    })
}

pub async fn dir(parent: &Dir, name: &str, create: bool) -> Result<Option<Dir>, FsError> {
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(create);
    match JsFuture::from(parent.get_directory_handle_with_options(name, &opts)).await {
        Ok(h) => Ok(Some(h.unchecked_into())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn file_handle(parent: &Dir, name: &str, create: bool) -> Result<Option<FileSystemFileHandle>, FsError> {
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(create);
    match JsFuture::from(parent.get_file_handle_with_options(name, &opts)).await {
        Ok(h) => Ok(Some(h.unchecked_into())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A `File` snapshot of the named file. For files that never change (content-addressed),
/// the snapshot stays valid and can be kept and served again.
pub async fn file(parent: &Dir, name: &str) -> Result<Option<File>, FsError> {
    match file_handle(parent, name, false).await? {
        Some(h) => match JsFuture::from(h.get_file()).await {
            Ok(f) => Ok(Some(f.unchecked_into())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        },
        None => Ok(None),
    }
}

/// The named file's size in bytes, without reading it.
pub async fn size(parent: &Dir, name: &str) -> Result<Option<u64>, FsError> {
    Ok(file(parent, name).await?.map(|f| f.size() as u64))
}

pub async fn read_bytes(parent: &Dir, name: &str) -> Result<Option<Vec<u8>>, FsError> {
    match file(parent, name).await? {
        Some(f) => {
            let buf = JsFuture::from(f.array_buffer()).await?;
            Ok(Some(Uint8Array::new(&buf).to_vec()))
        }
        None => Ok(None),
    }
}

/// Writes the whole file. `createWritable` writes to a swap file and replaces the
/// contents only on `close`, so a reader sees the old bytes or the new, never a mix.
pub async fn write_bytes(parent: &Dir, name: &str, bytes: &[u8]) -> Result<(), FsError> {
    let handle = file_handle(parent, name, true).await?.expect("create makes the file");
    write_and_close(writable(&handle).await?, None, bytes).await
}

/// Writes `bytes` (at `at`, if given) and closes, which commits; on failure the stream is
/// aborted so the file keeps its old contents.
async fn write_and_close(w: FileSystemWritableFileStream, at: Option<u64>, bytes: &[u8]) -> Result<(), FsError> {
    let written = async {
        if let Some(at) = at {
            JsFuture::from(w.seek_with_f64(at as f64)?).await?;
        }
        JsFuture::from(w.write_with_u8_array(bytes)?).await?;
        JsFuture::from(w.close()).await?;
        Ok::<_, JsValue>(())
    }
    .await;
    if let Err(e) = written {
        let _ = JsFuture::from(w.abort()).await;
        return Err(e.into());
    }
    Ok(())
}

pub async fn writable(handle: &FileSystemFileHandle) -> Result<FileSystemWritableFileStream, FsError> {
    Ok(JsFuture::from(handle.create_writable()).await?.unchecked_into())
}

pub async fn rename(handle: &FileSystemFileHandle, new_name: &str) -> Result<(), FsError> {
    JsFuture::from(handle.unchecked_ref::<MovableHandle>().rename_to(new_name)).await?;
    Ok(())
}

/// Removes an entry; `false` when it was not there.
pub async fn remove(parent: &Dir, name: &str, recursive: bool) -> Result<bool, FsError> {
    let opts = FileSystemRemoveOptions::new();
    opts.set_recursive(recursive);
    match JsFuture::from(parent.remove_entry_with_options(name, &opts)).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The names of a folder's entries.
pub async fn names(dir: &Dir) -> Result<Vec<String>, FsError> {
    let iter: AsyncIterator = dir.keys();
    let mut out = Vec::new();
    loop {
        let next = JsFuture::from(iter.next()?).await?;
        if Reflect::get(&next, &"done".into())?.is_truthy() {
            break;
        }
        if let Some(name) = Reflect::get(&next, &"value".into())?.as_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Writes `bytes` at offset `at` of the named file, keeping what is before it. Chromium
/// copies the file into a swap file for this and swaps it in on `close`, so the cost
/// grows with the file: callers keep such files small (log segments).
pub async fn write_at(parent: &Dir, name: &str, at: u64, bytes: &[u8]) -> Result<(), FsError> {
    let handle = file_handle(parent, name, true).await?.expect("create makes the file");
    let opts = web_sys::FileSystemCreateWritableOptions::new();
    opts.set_keep_existing_data(true);
    let w: FileSystemWritableFileStream = JsFuture::from(handle.create_writable_with_options(&opts)).await?.unchecked_into();
    write_and_close(w, Some(at), bytes).await
}
