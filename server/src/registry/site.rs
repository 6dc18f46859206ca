//! One origin per app: a request whose `Host` is `{app}.{apps domain}` is answered from
//! the app's current version, each file's SHA-256 checked on the way out.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use stead_core::bundle::{BundleManifest, FILES_BATCH, MANIFEST_FILE, WORKER_SCRIPT};

use super::{Registry, Release};

/// Whom a request is for, by its `Host` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Site {
    /// The server itself: the apps domain, an address, any other name, or no `Host`.
    Bare,
    /// `{name}.{apps domain}`.
    App(String),
    /// A name under the apps domain that no app can have (`a.b.{domain}`, `-x.{domain}`).
    NoApp,
}

/// The port of the `Host` header, if it names one.
pub(crate) fn host_port(headers: &HeaderMap) -> Option<u16> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let (_, port) = split_host(host).ok()?;
    port
}

/// `host[:port]` split, or why it is no `Host` value. IPv6 literals (`[::1]:80`) are kept
/// whole.
fn split_host(value: &str) -> Result<(&str, Option<u16>), &'static str> {
    if value.is_empty() || value.len() > 260 {
        return Err("empty or overlong Host header");
    }
    let (host, port) = if value.starts_with('[') {
        match value.find(']') {
            Some(end) => (&value[..=end], value[end + 1..].strip_prefix(':')),
            None => return Err("malformed IPv6 literal in the Host header"),
        }
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| "the Host header's port is out of range")?)
        }
        Some(_) => return Err("the Host header's port is not a number"),
        None => None,
    };
    if host.is_empty() {
        return Err("the Host header names no host");
    }
    Ok((host, port))
}

/// Whether a `Host` value names this server: the apps domain, a name under it, or a
/// loopback address (a server on the publisher's own machine).
pub(crate) fn is_own_host(value: &str, domain: &str) -> bool {
    let Ok((host, _)) = split_host(value) else { return false };
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    let loopback = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback || host == domain || host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
}

/// Reads the `Host` header (hostile input: a bad one is an error, never a guess).
pub(crate) fn site(headers: &HeaderMap, domain: &str) -> Result<Site, &'static str> {
    let mut values = headers.get_all(header::HOST).iter();
    let Some(value) = values.next() else { return Ok(Site::Bare) };
    if values.next().is_some() {
        return Err("more than one Host header");
    }
    let value = value.to_str().map_err(|_| "the Host header is not ASCII")?;
    let (host, _) = split_host(value)?;
    if host.starts_with('[') {
        return Ok(Site::Bare);
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err("the Host header holds characters no host name has");
    }
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host == domain {
        return Ok(Site::Bare);
    }
    match host.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) {
        Some(label) if super::check_name(label).is_ok() => Ok(Site::App(label.to_owned())),
        Some(_) => Ok(Site::NoApp),
        None => Ok(Site::Bare),
    }
}

fn text(status: StatusCode, msg: String) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], msg).into_response()
}

/// The stored release `version` of `app`, parsed once and cached.
pub(crate) async fn release(reg: &Arc<Registry>, app: &str, version: &str) -> Result<Arc<Release>, Response> {
    if let Some(r) = reg.cached(app, version) {
        return Ok(r);
    }
    let (r, a, v) = (reg.clone(), app.to_owned(), version.to_owned());
    let stored = tokio::task::spawn_blocking(move || r.backend.version(&a, &v))
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("storage task failed: {e}")))?
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read {app}'s version: {e}")))?
        .ok_or_else(|| text(StatusCode::SERVICE_UNAVAILABLE, format!("{app}'s current version {version} is not stored")))?;
    let manifest = BundleManifest::parse(&stored.manifest)
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{app}'s stored bundle manifest is damaged: {e}")))?;
    let release = Arc::new(Release { stored, manifest, shown: Default::default() });
    reg.cache(app, release.clone());
    Ok(release)
}

/// The bytes of the file `sha256` (hex) of `size` bytes, read from storage and checked:
/// a stored file that lost or changed a byte is an error, never served.
pub(crate) async fn verified(reg: &Arc<Registry>, sha256: &str, size: u64) -> Result<Vec<u8>, Response> {
    let Some(hash) = hex::decode(sha256).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
        return Err(text(StatusCode::INTERNAL_SERVER_ERROR, format!("{sha256:?} is no sha-256")));
    };
    let r = reg.clone();
    let bytes = tokio::task::spawn_blocking(move || r.backend.file(&hash))
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("storage task failed: {e}")))?
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read file {sha256}: {e}")))?
        .ok_or_else(|| text(StatusCode::SERVICE_UNAVAILABLE, format!("file {sha256} of this app is not stored on the server")))?;
    let actual: [u8; 32] = Sha256::digest(&bytes).into();
    if actual != hash || bytes.len() as u64 != size {
        tracing::error!(sha256, "a stored app file does not match its digest: refusing to serve it");
        return Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the stored copy of file {sha256} is corrupt (its sha-256 no longer matches); the publisher must publish again"),
        ));
    }
    Ok(bytes)
}

/// Answers a GET or HEAD on the app `name`'s origin from its current version.
pub(crate) async fn serve(reg: &Arc<Registry>, name: &str, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let (r, n) = (reg.clone(), name.to_owned());
    let app = match tokio::task::spawn_blocking(move || r.backend.app(&n)).await {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the app: {e}")),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("storage task failed: {e}")),
    };
    let Some(current) = app.and_then(|a| a.current) else {
        return text(StatusCode::NOT_FOUND, format!("no app {name:?} is published here"));
    };
    let release = match release(reg, name, &current).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(rel) = crate::clean_path(uri.path()) else {
        return text(StatusCode::BAD_REQUEST, "bad path".into());
    };
    let rel = if rel.is_empty() { release.manifest.entry.clone() } else { rel };
    if rel == FILES_BATCH {
        let reg = reg.clone();
        return crate::batch::respond(method, &release.manifest, uri.query(), move |file| {
            let reg = reg.clone();
            async move { verified(&reg, &file.sha256, file.size).await.map_err(|_| format!("{} cannot be read or is damaged", file.path)) }
        });
    }
    if rel == MANIFEST_FILE {
        let bytes = release.stored.manifest.clone();
        let sha = stead_core::bundle::sha256_hex(&bytes);
        return crate::file_response(method, headers, MANIFEST_FILE, bytes, &sha);
    }
    let (served, sha, size) = if rel == WORKER_SCRIPT {
        (rel, hex::encode(release.stored.worker_sha256), release.stored.worker_size)
    } else {
        let file = match release.manifest.file(&rel) {
            Some(f) => Some(f),
            // A navigation to an app route that is not a file gets the app's entry document.
            None if !rel.rsplit('/').next().unwrap_or("").contains('.') && crate::wants_html(headers) => release.manifest.file(&release.manifest.entry),
            None => None,
        };
        let Some(file) = file else {
            return text(StatusCode::NOT_FOUND, format!("no file {rel:?} in {name}'s current version"));
        };
        (file.path.clone(), file.sha256.clone(), file.size)
    };
    // A revalidation of the file the manifest names needs no read: the ETag is its digest.
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == format!("\"{sha}\"").as_bytes()) {
        return crate::file_response(method, headers, &served, Vec::new(), &sha);
    }
    match verified(reg, &sha, size).await {
        Ok(bytes) => crate::file_response(method, headers, &served, bytes, &sha),
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: Option<&str>, expect: Result<Site, ()>) {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, axum::http::HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
        assert_eq!(site(&h, "localhost").map_err(|_| ()), expect, "{host:?}");
    }

    #[test]
    fn own_hosts() {
        for own in ["localhost:8080", "LOCALHOST.", "todo.localhost", "127.0.0.1:9", "[::1]:80"] {
            assert!(is_own_host(own, "localhost"), "{own}");
        }
        for other in ["apps.example.com", "xlocalhost", ".localhost", "10.0.0.1:80", "", "a b"] {
            assert!(!is_own_host(other, "localhost"), "{other}");
        }
        assert!(is_own_host("notes.apps.example.com:443", "apps.example.com"));
        assert!(!is_own_host("notes.staging.example.com", "apps.example.com"));
    }

    #[test]
    fn hosts() {
        check(None, Ok(Site::Bare));
        check(Some("localhost:8080"), Ok(Site::Bare));
        check(Some("127.0.0.1:8080"), Ok(Site::Bare));
        check(Some("[::1]:8080"), Ok(Site::Bare));
        check(Some("todo.localhost:8080"), Ok(Site::App("todo".into())));
        check(Some("TODO.LocalHost."), Ok(Site::App("todo".into())));
        check(Some("a.b.localhost"), Ok(Site::NoApp));
        check(Some("www.localhost"), Ok(Site::NoApp));
        check(Some("xlocalhost"), Ok(Site::Bare));
        check(Some("todo.localhost:80:80"), Err(()));
        check(Some("todo.localhost:99999"), Err(()));
        check(Some("todo.localhost:"), Err(()));
        check(Some("todo_x.localhost"), Err(()));
        check(Some("to do.localhost"), Err(()));
        check(Some(":80"), Err(()));
        check(Some("[::1"), Err(()));
    }
}
