//! The worker's bundle store in OPFS.
//!
//! Layout under the worker's OPFS folder (the origin's root for the root scope, see
//! [`crate::scope`]):
//!
//! ```text
//! stead/files/<sha256>        file contents, content-addressed, written once
//! stead/files/<sha256>.part   a download in progress (renamed when verified)
//! stead/active.json           manifest of the version being served
//! stead/pending.json          manifest of a fully downloaded update, not yet activated
//! stead/meta.json             last update check and last error, for status
//! ```
//!
//! A version's manifest is written only after every file it names is stored, and the
//! manifest is the pointer: switching versions is one atomic file replacement.

use std::collections::BTreeMap;

use js_sys::{Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stead_core::bundle::{BundleFile, BundleManifest};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{File, ReadableStreamDefaultReader, Response};

use crate::{
    SwError,
    opfs::{self, Dir},
};

pub const ACTIVE: &str = "active.json";
pub const PENDING: &str = "pending.json";
const META: &str = "meta.json";
const ROOT: &str = "stead";
const PART: &str = ".part";

/// What status shows about past update checks; survives worker restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Milliseconds since the epoch of the last finished check.
    pub last_update_check: Option<f64>,
    /// `up-to-date`, `downloaded <version>`, `offline: ...`.
    pub last_check_result: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BundleStore {
    root: Dir,
    files: Dir,
}

impl BundleStore {
    pub async fn open() -> Result<Self, SwError> {
        Self::open_in(&crate::scope::opfs_root().await?).await
    }

    /// Opens (creating) the store under `parent`; tests use a folder of their own.
    pub async fn open_in(parent: &Dir) -> Result<Self, SwError> {
        let root = opfs::dir(parent, ROOT, true).await?.expect("created");
        let files = opfs::dir(&root, "files", true).await?.expect("created");
        Ok(BundleStore { root, files })
    }

    /// Deletes everything the store holds under `parent`.
    pub async fn wipe(parent: &Dir) -> Result<(), SwError> {
        opfs::remove(parent, ROOT, true).await?;
        Ok(())
    }

    pub async fn manifest(&self, name: &str) -> Result<Option<BundleManifest>, SwError> {
        match opfs::read_bytes(&self.root, name).await? {
            Some(bytes) => Ok(Some(BundleManifest::parse(&bytes)?)),
            None => Ok(None),
        }
    }

    pub async fn write_manifest(&self, name: &str, manifest: &BundleManifest) -> Result<(), SwError> {
        Ok(opfs::write_bytes(&self.root, name, manifest.to_json().as_bytes()).await?)
    }

    pub async fn remove_manifest(&self, name: &str) -> Result<(), SwError> {
        opfs::remove(&self.root, name, false).await?;
        Ok(())
    }

    pub async fn meta(&self) -> Meta {
        match opfs::read_bytes(&self.root, META).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => Meta::default(),
        }
    }

    pub async fn write_meta(&self, meta: &Meta) -> Result<(), SwError> {
        let json = serde_json::to_vec(meta).expect("meta serializes");
        Ok(opfs::write_bytes(&self.root, META, &json).await?)
    }

    /// Stored contents by hash, with their sizes. Unfinished downloads are not listed.
    pub async fn stored(&self) -> Result<BTreeMap<String, u64>, SwError> {
        let mut out = BTreeMap::new();
        for name in opfs::names(&self.files).await? {
            if name.ends_with(PART) {
                continue;
            }
            if let Some(f) = opfs::file(&self.files, &name).await? {
                out.insert(name, f.size() as u64);
            }
        }
        Ok(out)
    }

    /// Every entry in the files folder, unfinished downloads included.
    pub async fn file_names(&self) -> Result<Vec<String>, SwError> {
        Ok(opfs::names(&self.files).await?)
    }

    /// The stored content with this hash.
    pub async fn file(&self, sha256: &str) -> Result<Option<File>, SwError> {
        Ok(opfs::file(&self.files, sha256).await?)
    }

    pub async fn delete(&self, name: &str) -> Result<bool, SwError> {
        Ok(opfs::remove(&self.files, name, false).await?)
    }

    /// Streams a response body into the store, hashing as it goes. The content becomes
    /// visible under its hash only when size and SHA-256 match `file`; otherwise nothing
    /// is kept and the error says what differed.
    pub async fn put(&self, file: &BundleFile, response: &Response) -> Result<(), SwError> {
        let part_name = format!("{}{PART}", file.sha256);
        let part = opfs::file_handle(&self.files, &part_name, true).await?.expect("created");
        let writable = opfs::writable(&part).await?;
        let copied = copy_hashing(response, &writable).await;
        let verdict = match copied {
            Ok((size, _)) if size != file.size => Err(SwError::Size {
                path: file.path.clone(),
                expected: file.size,
                actual: size,
            }),
            Ok((_, sha)) if sha != file.sha256 => Err(SwError::Hash {
                path: file.path.clone(),
                expected: file.sha256.clone(),
                actual: sha,
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = verdict {
            let _ = JsFuture::from(writable.abort()).await;
            let _ = opfs::remove(&self.files, &part_name, false).await;
            return Err(e);
        }
        JsFuture::from(writable.close()).await?;
        Ok(opfs::rename(&part, &file.sha256).await?)
    }
}

/// Copies the body chunk by chunk into `writable` and returns its size and hex SHA-256.
async fn copy_hashing(
    response: &Response,
    writable: &web_sys::FileSystemWritableFileStream,
) -> Result<(u64, String), SwError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let Some(body) = response.body() else {
        return Ok((0, hex::encode(hasher.finalize())));
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut buf = Vec::new();
    loop {
        let next = JsFuture::from(reader.read()).await.map_err(SwError::network)?;
        if Reflect::get(&next, &"done".into())?.is_truthy() {
            break;
        }
        let chunk: Uint8Array = Reflect::get(&next, &"value".into())?.unchecked_into();
        let n = chunk.length() as usize;
        buf.resize(n, 0);
        chunk.copy_to(&mut buf);
        hasher.update(&buf);
        size += n as u64;
        JsFuture::from(writable.write_with_js_u8_array(&chunk)?).await?;
    }
    Ok((size, hex::encode(hasher.finalize())))
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
