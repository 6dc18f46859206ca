//! Stead's server: serves a built app bundle to browsers, and syncs spaces.
//!
//! Sync (when [`Config::sync`] holds a [`Service`]): `/sync` is the WebSocket of
//! stead-core's sync protocol, with entries verified before they are stored and
//! acknowledged only once committed; `/spaces/{space}/members` takes and serves membership
//! logs; `/blobs/{sha256}` stores encrypted blobs; `/metrics` is Prometheus text. Storage
//! is SQLite by default and PostgreSQL for several nodes ([`storage`]).
//!
//! The app registry (when [`Config::registry`] holds one, [`registry`]): publishers use
//! `/_registry/v1/` with requests signed by their app's key, and each published app is
//! served at its own origin `{app}.{apps domain}`, chosen by the `Host` header.
//!
//! Files are read from the bundle folder on every request, so a rebuilt bundle is served
//! at once. The headers are chosen for the service worker: its script and the bundle
//! manifest are `no-cache` (the worker must always see the newest), content-hashed files
//! are `immutable`, and every file carries an `ETag` equal to its SHA-256 so revalidation
//! is cheap.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use stead_core::bundle::{self, FILES_BATCH, MANIFEST_FILE, WORKER_SCRIPT};

mod batch;
mod commit;
pub mod error;
mod http;
mod listen;
pub mod metrics;
pub mod registry;
pub mod service;
mod socket;
pub mod storage;
mod sync;

pub use error::{Error, Result};
pub use listen::HttpLimits;
pub use registry::{Registry, RegistryConfig};
pub use service::{Limits, Service, SpaceCreation};

/// The MIME type the server and the bundle manifest give a path.
pub fn mime_for(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let text = mime.type_() == "text"
        || matches!(mime.essence_str(), "application/javascript" | "application/json");
    if text { format!("{}; charset=utf-8", mime.essence_str()) } else { mime.essence_str().to_owned() }
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The folder holding the built app (its `index.html`, assets and `stead-bundle.json`).
    pub bundle_dir: PathBuf,
    /// The sync service; `None` serves the bundle alone.
    pub sync: Option<Arc<Service>>,
    /// The kill switch: the app is withdrawn, so the bundle manifest answers `410 Gone`
    /// and installed service workers delete what they stored and unregister.
    pub retired: bool,
    /// Bounds on connections: counts, and deadlines for slow clients.
    pub http: HttpLimits,
    /// The app registry: `/_registry/v1/`, and each published app at its own origin
    /// `{app}.{apps domain}`.
    pub registry: Option<Arc<Registry>>,
}

/// The server's routes: `/healthz`, sync (when configured) and the bundle's files.
pub fn router(config: Config) -> Router {
    let mut router = Router::new().route("/healthz", get(|| async { "ok" }));
    if let Some(service) = config.sync.clone() {
        let limit = service.limits.max_blob_bytes + 1;
        let sync = Router::new()
            .route("/sync", get(sync::upgrade))
            .route(
                "/spaces/{space}/members",
                get(http::get_members).put(http::put_members).layer(axum::extract::DefaultBodyLimit::max(service.limits.max_membership_bytes + 1)),
            )
            .route("/blobs/{sha256}", get(http::get_blob).put(http::put_blob))
            .route("/metrics", get(http::metrics))
            .layer(axum::extract::DefaultBodyLimit::max(limit))
            .with_state(service);
        router = router.merge(sync);
    }
    if let Some(reg) = config.registry.clone() {
        use axum::extract::DefaultBodyLimit;
        use axum::routing::{post, put};
        let c = &reg.config;
        let json_limit = c.max_manifest_bytes + 64 * 1024 + c.max_manifest_files * 128;
        let registry = Router::new()
            .route("/_registry/v1/", get(registry::http::info))
            .route("/_registry/v1/apps", get(registry::http::apps))
            .route("/_registry/v1/apps/{name}/missing", post(registry::http::missing))
            .route("/_registry/v1/apps/{name}/versions", get(registry::http::versions).post(registry::http::publish))
            .route("/_registry/v1/apps/{name}/rollback", post(registry::http::rollback))
            .layer(DefaultBodyLimit::max(json_limit))
            .route(
                "/_registry/v1/apps/{name}/files/{sha256}",
                put(registry::http::put_file).layer(DefaultBodyLimit::max(usize::try_from(c.max_file_bytes).unwrap_or(usize::MAX).saturating_add(1))),
            )
            .with_state(reg);
        router = router.merge(registry);
    }
    let body_idle = config.http.body_idle_timeout;
    router
        .fallback(serve_root)
        .with_state(Arc::new(config))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_idle))
}

/// Every path no route took: on an app's origin (`{app}.{apps domain}`) the app's files,
/// on the bare host the catalog of published apps when the registry is on
/// ([`registry::catalog`]), else the bundle folder's files ([`serve_file`]).
async fn serve_root(State(config): State<Arc<Config>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(reg) = &config.registry {
        match registry::site::site(&headers, &reg.config.apps_domain) {
            Ok(registry::site::Site::Bare) => return registry::catalog::serve(reg, &method, &uri, &headers).await,
            Ok(registry::site::Site::App(name)) => {
                if method != Method::GET && method != Method::HEAD {
                    return (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here").into_response();
                }
                return registry::site::serve(reg, &name, &method, &uri, &headers).await;
            }
            Ok(registry::site::Site::NoApp) => return (StatusCode::NOT_FOUND, "no app can have this name").into_response(),
            Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
        }
    }
    serve_file(config, method, uri, headers).await
}

async fn serve_file(config: Arc<Config>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here").into_response();
    }
    let Some(rel) = clean_path(uri.path()) else {
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    };
    let rel = if rel.is_empty() { "index.html".to_owned() } else { rel };
    if config.retired && (rel == MANIFEST_FILE || rel == FILES_BATCH) {
        return (StatusCode::GONE, "this app has been withdrawn").into_response();
    }
    if rel == FILES_BATCH {
        return serve_batch(&config.bundle_dir, &method, uri.query()).await;
    }
    let mut found = read(&config.bundle_dir, &rel).await;
    let mut served = rel.clone();
    // A navigation to an app route that is not a file gets the app's entry document.
    if found.is_none() && !rel.rsplit('/').next().unwrap_or("").contains('.') && wants_html(&headers) {
        served = "index.html".to_owned();
        found = read(&config.bundle_dir, &served).await;
    }
    let Some(bytes) = found else {
        return (StatusCode::NOT_FOUND, format!("no file {rel:?} in this bundle")).into_response();
    };

    let sha = bundle::sha256_hex(&bytes);
    file_response(&method, &headers, &served, bytes, &sha)
}

/// A batch of the bundle folder's files ([`batch`]), against the manifest in the folder
/// now: a rebuilt bundle answers for its new version only.
async fn serve_batch(dir: &Path, method: &Method, query: Option<&str>) -> Response {
    let Some(json) = read(dir, MANIFEST_FILE).await else {
        return (StatusCode::NOT_FOUND, format!("no {MANIFEST_FILE} in this bundle")).into_response();
    };
    let manifest = match bundle::BundleManifest::parse(&json) {
        Ok(m) => m,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("the bundle's {MANIFEST_FILE} is damaged: {e}")).into_response(),
    };
    let dir = dir.to_owned();
    batch::respond(method, &manifest, query, move |file| {
        let dir = dir.clone();
        async move {
            let bytes = read(&dir, &file.path).await.ok_or_else(|| format!("{} is gone from the bundle folder", file.path))?;
            batch::check(&file, bytes)
        }
    })
}

/// A file's response with the headers the service worker relies on: `no-cache` for the
/// worker script, the bundle manifest and names without a content hash, `immutable` for
/// the rest, `ETag` = its SHA-256 (`sha256`, hex) with 304s.
pub(crate) fn file_response(method: &Method, headers: &HeaderMap, served: &str, bytes: Vec<u8>, sha256: &str) -> Response {
    let etag = format!("\"{sha256}\"");
    let cache = if served == WORKER_SCRIPT || served == MANIFEST_FILE || !bundle::is_content_hashed(served) {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    let mut response = if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else if *method == Method::HEAD {
        let mut r = Response::new(Body::empty());
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        r
    } else {
        Response::new(Body::from(bytes))
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&mime_for(served)).expect("ascii mime"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii etag"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    // No other site may frame an app: the apps of one registry are one site, so a framed
    // app would open with its real data under another app's clickjacking UI. The worker
    // sends the same policy offline.
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'self'"));
    if served == WORKER_SCRIPT {
        // The worker controls the whole origin even when its script sits elsewhere.
        h.insert("service-worker-allowed", HeaderValue::from_static("/"));
    }
    response
}

pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The request path as a bundle-relative path, or `None` when it is not one.
///
/// Each segment is percent-decoded on its own and must then be a plain file name: not
/// empty (but for a trailing slash), not `.` or `..`, and free of `/`, `\`, NUL, control
/// characters and `%` (an encoded separator would otherwise become a real one after
/// decoding, and a double encoding a second chance at one). The path can then neither
/// climb out of the bundle folder nor replace it with an absolute path in `join`; where
/// it still leads (through a symlink) is checked in [`read`].
pub(crate) fn clean_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(String::new());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut out = String::with_capacity(rest.len());
    for (i, raw) in segments.into_iter().enumerate() {
        if raw.is_empty() {
            // Only a trailing slash: "a//b" is not a path the bundle has.
            if i != last {
                return None;
            }
            out.push('/');
            continue;
        }
        let seg = percent_decode(raw)?;
        let plain = seg != "." && seg != ".." && !seg.chars().any(|c| matches!(c, '/' | '\\' | '%') || c.is_control());
        if !plain {
            return None;
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(&seg);
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Reads `rel` (from [`clean_path`]) from the bundle folder, if it is a file there. A
/// symlink in the folder is followed only while it stays inside the folder.
async fn read(dir: &Path, rel: &str) -> Option<Vec<u8>> {
    let path = dir.join(rel);
    let inside = match (tokio::fs::canonicalize(dir).await, tokio::fs::canonicalize(&path).await) {
        (Ok(root), Ok(real)) => real.starts_with(&root),
        (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => return None,
        (root, real) => {
            tracing::warn!("cannot resolve {rel}: {:?}", root.err().or(real.err()));
            return None;
        }
    };
    if !inside {
        tracing::warn!("refused {rel}: it leads out of the bundle folder");
        return None;
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::IsADirectory => None,
        Err(e) => {
            tracing::warn!("cannot read {rel}: {e}");
            None
        }
    }
}

/// Serves until `shutdown` resolves, then finishes the requests in flight: each sync
/// connection completes the frame in hand (commit and acks), is told the server is
/// shutting down, and closes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let gate = listen::Gate::new(config.http.clone());
    let service = config.sync.clone();
    if let Some(s) = &service {
        s.set_gate(gate.clone());
    }
    let drain = async move {
        if let Some(service) = service {
            service.shutdown(std::time::Duration::from_secs(10)).await;
        }
    };
    listen::run(listener, router(config), gate, shutdown, drain, std::time::Duration::from_secs(10)).await
}
