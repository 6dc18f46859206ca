//! Packs: how the OPFS store keeps the contents it downloads.
//!
//! Each OPFS operation of a service worker is a round trip to the browser's storage
//! process, and the browser runs a worker's operations one after another: stored one
//! file each, a download cost five of them (handle, writable, write, close, rename; 41 ms
//! of a file's 62 ms in Chromium on this machine, see ARCHITECTURE.md). A pack holds many
//! verified contents back to back and is written with one writable and one write, so an
//! install's storage cost grows with its megabytes, not its files.
//!
//! A pack is a file `stead/files/<name>.pack`; where each content is in it (SHA-256,
//! offset, size) is in the state document ([`crate::state`]), which a cold start reads
//! anyway. A pack holds nothing until the state lists it, so a pack written by an install
//! that stopped before saving is an orphan: the clean-up removes it once it is old enough
//! that no worker can still be writing it. A listed pack that is not the size the state
//! says is damaged: it is served from no more, and the clean-up drops it.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use js_sys::{Array, Date, Uint8Array};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, File};

pub use crate::state::{Entry, Pack};
use crate::{
    SwError,
    opfs::{self, Dir},
};

/// A pack is written once it holds this much (a larger content makes a pack of its own).
pub const PACK_BYTES: u64 = 4 << 20;
/// A pack the state does not list, younger than this, may still be being written.
pub const UNFINISHED_GRACE_MS: f64 = 10.0 * 60.0 * 1000.0;
pub const SUFFIX: &str = ".pack";

/// Writes `contents` (SHA-256, bytes) as one pack in `files`, with one writable and one
/// write. `None` when there was nothing to write.
pub async fn write(files: &Dir, contents: Vec<(String, Uint8Array)>) -> Result<Option<Pack>, SwError> {
    if contents.is_empty() {
        return Ok(None);
    }
    let name = new_name();
    let mut entries = Vec::with_capacity(contents.len());
    let parts = Array::new();
    let mut offset = 0;
    for (sha256, bytes) in contents {
        let size = u64::from(bytes.length());
        parts.push(&bytes);
        entries.push(Entry { sha256, offset, size });
        offset += size;
    }
    let file_name = format!("{name}{SUFFIX}");
    let handle = opfs::file_handle(files, &file_name, true).await?.expect("created");
    let writable = opfs::writable(&handle).await?;
    let written = async {
        JsFuture::from(writable.write_with_blob(&Blob::new_with_u8_array_sequence(&parts)?)?).await?;
        JsFuture::from(writable.close()).await
    }
    .await;
    if let Err(e) = written {
        let _ = JsFuture::from(writable.abort()).await;
        let _ = opfs::remove(files, &file_name, false).await;
        return Err(e.into());
    }
    Ok(Some(Pack { name, size: offset, entries: entries.into() }))
}

/// A pack's `File`, when the pack is whole: there, and the size the state says.
pub async fn file(files: &Dir, pack: &Pack) -> Result<Option<File>, SwError> {
    Ok(opfs::file(files, &format!("{}{SUFFIX}", pack.name)).await?.filter(|f| f.size() as u64 == pack.size))
}

/// A content's bytes as a slice of its pack's `File`.
pub fn slice(file: &File, entry: &Entry) -> Result<Blob, SwError> {
    Ok(file.slice_with_f64_and_f64(entry.offset as f64, (entry.offset + entry.size) as f64)?)
}

/// What a clean-up of the packs did: packs to list (written, or listed again with fewer
/// contents), packs to forget (then removed, unless listed again), and the contents gone
/// or moved (a `Blob` of their old place must not be served again).
#[derive(Debug, Default)]
pub struct Compacted {
    pub added: Vec<Pack>,
    pub dropped: Vec<String>,
    pub changed: Vec<String>,
}

/// Plans the packs' clean-up: a pack none of whose contents `keep` names, or that is
/// damaged, is dropped; one at least half kept is listed again with only what is kept (the
/// rest stays in the file, unlisted, until the pack is written again); one less than half
/// kept is written again with only that (the new pack is written here, before the old one
/// is forgotten: a stop halfway leaves both, never neither).
pub async fn compact(files: &Dir, keep: &HashSet<String>, packs: &[Pack]) -> Result<Compacted, SwError> {
    let mut out = Compacted::default();
    for (i, pack) in packs.iter().enumerate() {
        // A content stored twice (a clean-up stopped halfway) is served from its first pack.
        let served_here = |e: &&Entry| !packs[..i].iter().any(|p| p.entries.iter().any(|o| o.sha256 == e.sha256));
        let (live, dead): (Vec<&Entry>, Vec<&Entry>) = pack.entries.iter().filter(served_here).partition(|e| keep.contains(&e.sha256));
        let whole = if live.is_empty() { None } else { file(files, pack).await? };
        if whole.is_some() && live.len() == pack.entries.len() {
            continue;
        }
        if whole.is_some() && live.iter().map(|e| e.size).sum::<u64>() * 2 >= pack.size {
            out.added.push(Pack { entries: live.into_iter().cloned().collect(), ..pack.clone() });
            out.dropped.push(pack.name.clone());
            out.changed.extend(dead.iter().map(|e| e.sha256.clone()));
            continue;
        }
        if let Some(f) = whole {
            let mut copies = Vec::with_capacity(live.len());
            for e in &live {
                copies.push((e.sha256.clone(), Uint8Array::new(&JsFuture::from(slice(&f, e)?.array_buffer()).await?)));
            }
            out.added.extend(write(files, copies).await?);
        } else if !live.is_empty() {
            web_sys::console::warn_1(&format!("stead: pack {} is missing or damaged; its contents are downloaded again", pack.name).into());
        }
        out.dropped.push(pack.name.clone());
        out.changed.extend(live.iter().chain(&dead).map(|e| e.sha256.clone()));
    }
    Ok(out)
}

/// Whether a pack file the state does not list may go: one this clean-up dropped, or one
/// old enough that no worker can still be writing it.
pub fn removable(file_name: &str, dropped: &[String], now: f64) -> bool {
    let Some(name) = file_name.strip_suffix(SUFFIX) else { return false };
    dropped.iter().any(|d| d == name) || created_at(name).is_none_or(|t| now - t > UNFINISHED_GRACE_MS)
}

/// Collects verified contents into packs of about [`PACK_BYTES`] as an install downloads
/// them, writing each pack when it is full; [`PackWriter::finish`] writes the rest. Each
/// pack written is returned once, for the state to list.
pub struct PackWriter {
    files: Dir,
    pending: RefCell<Vec<(String, Uint8Array)>>,
    bytes: Cell<u64>,
}

impl PackWriter {
    pub fn new(files: Dir) -> PackWriter {
        PackWriter { files, pending: RefCell::default(), bytes: Cell::new(0) }
    }

    pub async fn add(&self, sha256: String, bytes: Uint8Array) -> Result<Option<Pack>, SwError> {
        self.bytes.set(self.bytes.get() + u64::from(bytes.length()));
        self.pending.borrow_mut().push((sha256, bytes));
        if self.bytes.get() >= PACK_BYTES { self.finish().await } else { Ok(None) }
    }

    /// Writes what was added since the last pack.
    pub async fn finish(&self) -> Result<Option<Pack>, SwError> {
        let contents = std::mem::take(&mut *self.pending.borrow_mut());
        self.bytes.set(0);
        write(&self.files, contents).await
    }
}

/// A new pack's name: its creation time (ms since the epoch, hex) and a random part, so
/// two worker lives writing at once never pick the same.
fn new_name() -> String {
    format!("{:x}-{:08x}", Date::now() as u64, (js_sys::Math::random() * f64::from(u32::MAX)) as u32)
}

fn created_at(name: &str) -> Option<f64> {
    let (time, _) = name.split_once('-')?;
    u64::from_str_radix(time, 16).ok().map(|t| t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn a_pack_name_carries_its_creation_time() {
        assert_eq!(created_at("18f3a2b4c5d-0000abcd"), Some(0x18f3a2b4c5d_u64 as f64));
        assert_eq!(created_at("garbage"), None);
        let now = 0x18f3a2b4c5d_u64 as f64;
        assert!(!removable("18f3a2b4c5d-0000abcd.pack", &[], now + 60_000.0), "a minute old: maybe still being written");
        assert!(removable("18f3a2b4c5d-0000abcd.pack", &[], now + UNFINISHED_GRACE_MS + 1.0));
        assert!(removable("18f3a2b4c5d-0000abcd.pack", &["18f3a2b4c5d-0000abcd".into()], now));
        assert!(!removable(&"ab".repeat(32), &[], now), "a content stored one to a file is not a pack");
    }
}
