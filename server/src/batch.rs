//! `stead-files`: many files of one bundle version in one response, for a service worker
//! installing that version ([`stead_core::bundle::FILES_BATCH`]).
//!
//! The query names the version and the files by their index in its manifest, strictly
//! increasing, so one request asks for each file once at most and never for more bytes
//! than the version holds. The answer is the files' bytes one after another with the
//! total as `Content-Length`; the worker cuts it by the manifest's sizes and checks each
//! file's SHA-256 itself. Files are read and checked one at a time as the body is sent,
//! so a request holds one file in memory; a file that turns out missing or changed ends
//! the body short, which the worker sees as a failed download.

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use stead_core::bundle::{BundleFile, BundleManifest, parse_batch_query};

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], msg).into_response()
}

/// Answers a batch request against `manifest`, the version being served, reading each
/// file with `read` (which checks it against its size and SHA-256).
pub(crate) fn respond<F, Fut>(method: &Method, manifest: &BundleManifest, query: Option<&str>, read: F) -> Response
where
    F: FnMut(BundleFile) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<u8>, String>> + Send + 'static,
{
    let (version, indices) = match parse_batch_query(query.unwrap_or(""), manifest.files.len()) {
        Ok(q) => q,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, format!("bad batch request: {why}")),
    };
    if version != manifest.version {
        return refuse(StatusCode::CONFLICT, format!("version {version} is not the one served (now {})", manifest.version));
    }
    let files: Vec<BundleFile> = indices.into_iter().map(|i| manifest.files[i].clone()).collect();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(futures::stream::iter(files).then(read).map(|read| {
            read.map(Bytes::from).map_err(|why| {
                tracing::warn!("a batch download ends short: {why}");
                std::io::Error::other(why)
            })
        }))
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Bytes for the worker, never a document: the app's pages are among them.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; frame-ancestors 'none'"));
    response
}

/// `bytes` when they are `file`'s (size and SHA-256), else why not.
pub(crate) fn check(file: &BundleFile, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if bytes.len() as u64 != file.size || stead_core::bundle::sha256_hex(&bytes) != file.sha256 {
        return Err(format!("{} no longer matches the manifest", file.path));
    }
    Ok(bytes)
}
