//! Blobs: content sealed under the space's current key (stead-core's `seal_blob`, which
//! names the key in the nonce; any key of the device's keyring opens it), addressed by the
//! SHA-256 of the sealed form, kept on the device and uploaded to the server's
//! `/blobs/{sha256}`. The page stores and reads plaintext; the server only ever sees the
//! sealed bytes. A blob written offline waits in the `blobs-pending` list (store
//! metadata) and goes up on the next connection.

use std::rc::Rc;

use js_sys::Uint8Array;
use sha2::{Digest, Sha256};
use stead_core::env::Random;
use stead_store::idb::db;

use super::engine::{Engine, authorization, server_fetch};
use super::{DataError, StorageKind, WebRandom, space_dir};
use crate::opfs;

const PENDING: &str = "blobs-pending";

fn blob_db(engine: &Engine) -> String {
    super::blob_db(engine.space())
}

async fn put_local(engine: &Engine, sha: &str, sealed: &[u8]) -> Result<(), DataError> {
    match engine.me().storage {
        StorageKind::Opfs => {
            let dir = opfs::dir(&space_dir(engine.space()).await?, "blobs", true).await?.expect("created");
            opfs::write_bytes(&dir, sha, sealed).await?;
        }
        StorageKind::Indexeddb => {
            super::storage_open()?;
            let d = db::open(&blob_db(engine), &["blobs"]).await?;
            db::put(&d, "blobs", sha, &Uint8Array::from(sealed).into()).await?;
            d.close();
        }
    }
    Ok(())
}

async fn get_local(engine: &Engine, sha: &str) -> Result<Option<Vec<u8>>, DataError> {
    Ok(match engine.me().storage {
        StorageKind::Opfs => {
            let dir = opfs::dir(&space_dir(engine.space()).await?, "blobs", true).await?.expect("created");
            opfs::read_bytes(&dir, sha).await?
        }
        StorageKind::Indexeddb => {
            super::storage_open()?;
            let d = db::open(&blob_db(engine), &["blobs"]).await?;
            let v = db::get(&d, "blobs", sha).await?.map(|v| Uint8Array::new(&v).to_vec());
            d.close();
            v
        }
    })
}

/// How many blobs wait to be uploaded.
pub fn pending_count(engine: &Engine) -> usize {
    pending(engine).len()
}

fn pending(engine: &Engine) -> Vec<String> {
    engine
        .read(|r| r.store().meta(PENDING).ok().flatten())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

async fn set_pending(engine: &Rc<Engine>, list: &[String]) -> Result<(), DataError> {
    engine.put_meta(PENDING, &serde_json::to_vec(list).expect("serialisable"))?;
    engine.flush().await
}

async fn upload(engine: &Engine, sha: &str, sealed: &[u8]) -> Result<(), String> {
    let path = format!("/blobs/{sha}");
    let me = engine.me();
    let auth = authorization(me.space, me.replica, &me.signing, "PUT", &path, Sha256::digest(sealed).into());
    match server_fetch("PUT", &path, Some(auth), Some(sealed)).await? {
        (s, _) if (200..300).contains(&s) => Ok(()),
        (s, body) => Err(format!("the server refused blob {sha}: HTTP {s}: {}", String::from_utf8_lossy(&body))),
    }
}

/// Seals and stores `content`; uploads it now if the server is reachable. Returns the
/// blob's address (SHA-256 of the sealed form, hex).
pub async fn put(engine: &Rc<Engine>, content: &[u8]) -> Result<String, DataError> {
    let key = engine.read(|r| r.keys().current().cloned()).ok_or(stead_core::Error::NoCurrentKey)?;
    let sealed = stead_core::crypto::seal_blob(&key, WebRandom.array(), engine.space(), content);
    let sha = hex::encode(Sha256::digest(&sealed));
    put_local(engine, &sha, &sealed).await?;
    if upload(engine, &sha, &sealed).await.is_err() {
        let mut list = pending(engine);
        if !list.contains(&sha) {
            list.push(sha.clone());
            set_pending(engine, &list).await?;
        }
    }
    Ok(sha)
}

/// Uploads the blobs written while offline; stops at the first failure.
pub async fn upload_pending(engine: &Rc<Engine>) -> Result<(), String> {
    let mut list = pending(engine);
    while let Some(sha) = list.first().cloned() {
        let sealed = get_local(engine, &sha).await.map_err(|e| e.to_string())?;
        if let Some(sealed) = sealed {
            upload(engine, &sha, &sealed).await?;
        }
        list.remove(0);
        set_pending(engine, &list).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The plaintext of blob `sha`: from the device, else from the server (then kept).
pub async fn get(engine: &Rc<Engine>, sha: &str) -> Result<Vec<u8>, DataError> {
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DataError::bad_request(format!("{sha:?} is not a SHA-256 in hex")));
    }
    let sealed = match get_local(engine, sha).await? {
        Some(s) => s,
        None => {
            let path = format!("/blobs/{sha}");
            let me = engine.me();
            let auth = authorization(me.space, me.replica, &me.signing, "GET", &path, stead_core::sync::body_hash(b""));
            let sealed = match server_fetch("GET", &path, Some(auth), None).await {
                Ok((200, body)) => body,
                Ok((404, _)) => return Err(DataError::not_found(format!("no blob {sha} on this device or the server"))),
                Ok((s, body)) => return Err(DataError::new(502, "server error", format!("HTTP {s}: {}", String::from_utf8_lossy(&body)))),
                Err(reason) => return Err(DataError::new(503, "offline", format!("blob {sha} is not on this device and the server cannot be reached: {reason}"))),
            };
            if hex::encode(Sha256::digest(&sealed)) != sha {
                return Err(DataError::new(502, "server error", format!("the server's blob {sha} does not match its hash")));
            }
            put_local(engine, sha, &sealed).await?;
            sealed
        }
    };
    let open = |engine: &Engine| engine.read(|r| r.keys().open_blob(engine.space(), &sealed));
    match open(engine) {
        Ok(plain) => Ok(plain),
        // Sealed under a key a rotation since this device's membership log brought:
        // a fresh log from the server may hold it.
        Err(e) => match engine.take_server_members().await {
            Ok(true) => Ok(open(engine)?),
            _ => Err(e.into()),
        },
    }
}

/// Parses a single `Range: bytes=…` against a length: the inclusive byte range, or
/// `None` when it cannot be satisfied.
pub fn range(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len - 1)
        }
        (s, "") => (s.parse().ok()?, len - 1),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

/// What a blob is served as when its URL asks for nothing usable.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The `Content-Security-Policy` of every blob: whoever wrote a blob (any member of the
/// space) chose its bytes, so if a browser ever renders one as a document it gets an
/// opaque origin, no scripts, no plugins, no forms and no requests of its own. Inline
/// styles stay allowed: the browser's own image and text views use them.
pub const CSP: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'";

/// The types a navigation to a blob may show in the tab (no `Content-Disposition:
/// attachment`): images and plain text, which the browser draws from the response alone
/// and which carry no script. Not SVG (a document with scripts), not HTML, not PDF (a
/// viewer with its own scripting). Audio and video play through `<audio>`/`<video>` in
/// the app, which ignore the disposition, so they need no exception here.
const INLINE: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "text/plain"];

/// The media type a blob URL's `?mime=` asks for, if it is a well-formed
/// `type/subtype` with `name=value` parameters made only of RFC 9110 token characters
/// (no quotes, spaces or line breaks to smuggle into a header); type, subtype and
/// parameter names lower-cased. Anything else is [`OCTET_STREAM`].
pub fn media_type(asked: Option<&str>) -> String {
    fn token(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }
    let parse = |s: &str| -> Option<String> {
        if s.len() > 255 {
            return None;
        }
        let mut parts = s.split(';');
        let (kind, sub) = parts.next()?.trim().split_once('/')?;
        if !token(kind) || !token(sub) {
            return None;
        }
        let mut out = format!("{}/{}", kind.to_ascii_lowercase(), sub.to_ascii_lowercase());
        for p in parts {
            let (name, value) = p.trim().split_once('=')?;
            if !token(name) || !token(value) {
                return None;
            }
            out.push_str(&format!("; {}={value}", name.to_ascii_lowercase()));
        }
        Some(out)
    };
    asked.and_then(parse).unwrap_or_else(|| OCTET_STREAM.to_owned())
}

/// Whether a blob of this type (as [`media_type`] gives it) may show in the tab that
/// navigates to it; every other type is a download.
pub fn shows_inline(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default();
    INLINE.contains(&essence)
}

#[cfg(test)]
mod tests {
    use super::{media_type, range, shows_inline};
    use wasm_bindgen_test::wasm_bindgen_test;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_service_worker);

    #[wasm_bindgen_test]
    fn byte_ranges() {
        assert_eq!(range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(range("bytes=100-", 100), None);
        assert_eq!(range("bytes=5-2", 100), None);
        assert_eq!(range("bytes=0-1,4-5", 100), None);
        assert_eq!(range("items=0-1", 100), None);
    }

    #[wasm_bindgen_test]
    fn media_types() {
        for (asked, served, inline) in [
            (None, "application/octet-stream", false),
            (Some("image/png"), "image/png", true),
            (Some("IMAGE/PNG"), "image/png", true),
            (Some("text/plain; charset=utf-8"), "text/plain; charset=utf-8", true),
            (Some("text/plain;charset=UTF-8"), "text/plain; charset=UTF-8", true),
            (Some("text/html"), "text/html", false),
            (Some("Text/HTML; charset=utf-8"), "text/html; charset=utf-8", false),
            (Some("image/svg+xml"), "image/svg+xml", false),
            (Some("application/pdf"), "application/pdf", false),
            (Some("video/mp4"), "video/mp4", false),
            (Some("text/html\r\nx-evil: 1"), "application/octet-stream", false),
            (Some("text/plain; charset=\"utf-8\""), "application/octet-stream", false),
            (Some("text/plain; charset"), "application/octet-stream", false),
            (Some("image/png, text/html"), "application/octet-stream", false),
            (Some("text/"), "application/octet-stream", false),
            (Some("html"), "application/octet-stream", false),
            (Some(""), "application/octet-stream", false),
        ] {
            let got = media_type(asked);
            assert_eq!((asked, got.as_str(), shows_inline(&got)), (asked, served, inline));
        }
        assert_eq!(media_type(Some(&format!("text/{}", "a".repeat(300)))), "application/octet-stream");
    }
}
