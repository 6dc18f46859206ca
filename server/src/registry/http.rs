//! The registry's HTTP routes under `/_registry/v1/`: every write is signed by the app's
//! key; errors are JSON [`api::Problem`]s.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::Signature;
use sha2::{Digest, Sha256};
use stead_core::bundle::{self, BundleManifest};
use stead_core::env::{Clock, SystemClock};

use super::{Registry, Release, api, check_name, release_message, request_message};
use crate::service::SpaceCreation;
use crate::storage::{AppQuota, Moved, NewVersion, PutFile, StoredApp, StoredVersion};

/// A refused request: its status and JSON body.
#[derive(Debug)]
pub(crate) struct Reject(StatusCode, api::Problem);

impl Reject {
    fn new(status: StatusCode, error: impl Into<String>) -> Reject {
        Reject(status, api::Problem { error: error.into(), ..Default::default() })
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<crate::Error> for Reject {
    fn from(e: crate::Error) -> Reject {
        tracing::error!("registry: {e}");
        Reject::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the server failed: {e}"))
    }
}

type Result<T, E = Reject> = std::result::Result<T, E>;

fn bad(msg: impl Into<String>) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, msg)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::Result<T> + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await.map_err(|e| crate::Error::Task(e.to_string()))??)
}

fn parse_sha(s: &str) -> Result<[u8; 32]> {
    let err = || bad(format!("{:?} is not a lower-case hex sha-256", s.chars().take(80).collect::<String>()));
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(err());
    }
    hex::decode(s).ok().and_then(|b| b.try_into().ok()).ok_or_else(err)
}

fn parse_name(name: &str) -> Result<()> {
    check_name(name).map_err(bad)
}

/// Checks the request's `Authorization: Stead-App <key>.<time>.<nonce>.<sig>` over its method,
/// host, path and `body_sha256`; returns the signing key (an app id). Each signature is
/// taken once, within [`super::REQUEST_WINDOW_MS`] of the server's clock.
fn authorize(reg: &Registry, method: &Method, uri: &Uri, headers: &HeaderMap, body_sha256: &[u8; 32]) -> Result<[u8; 32]> {
    let unauthorized = |m: &str| Reject::new(StatusCode::UNAUTHORIZED, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(super::AUTH_SCHEME))
        .and_then(|v| v.strip_prefix(' '))
        .ok_or_else(|| unauthorized("a request signed by the app's key is required (Authorization: Stead-App …)"))?;
    let mut parts = value.split('.');
    let malformed = || unauthorized("malformed Authorization header");
    let key: [u8; 32] = parts.next().and_then(|s| hex::decode(s).ok()).and_then(|b| b.try_into().ok()).ok_or_else(malformed)?;
    let time: u64 = parts.next().filter(|s| s.len() <= 20).and_then(|s| s.parse().ok()).ok_or_else(malformed)?;
    let nonce: [u8; 16] = parts.next().and_then(|s| hex::decode(s).ok()).and_then(|b| b.try_into().ok()).ok_or_else(malformed)?;
    let sig: [u8; 64] = parts.next().and_then(|s| hex::decode(s).ok()).and_then(|b| b.try_into().ok()).ok_or_else(malformed)?;
    if parts.next().is_some() {
        return Err(malformed());
    }
    let now = SystemClock.now_ms();
    if now.abs_diff(time) > super::REQUEST_WINDOW_MS {
        return Err(unauthorized("the request's time is too far from the server's (check the clock)"));
    }
    let verifying = stead_core::sig::public_key(&key).map_err(|e| unauthorized(&format!("the signing key is refused: {e}")))?;
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    // The signature covers the Host: it must be one of this server's names, so a request
    // signed for another server (one key publishes an app everywhere) is not taken here.
    if !super::site::is_own_host(host, &reg.config.apps_domain) {
        return Err(Reject::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this request was signed for {host:?}, which is not this server ({} or a name under it)", reg.config.apps_domain),
        ));
    }
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let msg = request_message(time, &nonce, &key, method.as_str(), host, path_and_query, body_sha256);
    if verifying.verify_strict(&msg, &Signature::from_bytes(&sig)).is_err() {
        return Err(unauthorized("the request's signature does not verify"));
    }
    if !reg.first_use(&sig, time, now) {
        return Err(unauthorized("this signed request was already used"));
    }
    Ok(key)
}

/// The app `name`, which must be `key`'s; a name no one has is claimed for `key` when the
/// server's policy allows it (an operator's token in `Stead-Publish-Token` where it asks
/// for one).
async fn own_app(reg: &Arc<Registry>, name: &str, key: [u8; 32], headers: &HeaderMap) -> Result<StoredApp> {
    let (r, n) = (reg.clone(), name.to_owned());
    let app = match blocking(move || r.backend.app(&n)).await? {
        Some(app) => app,
        None => {
            let token = headers.get(super::TOKEN_HEADER).and_then(|v| v.to_str().ok());
            if !reg.config.new_apps.allows(token) {
                let why = match reg.config.new_apps {
                    SpaceCreation::Token(_) if token.is_some() => "the publish token is not one of this server's",
                    SpaceCreation::Token(_) => "a new app needs an operator's token (Stead-Publish-Token)",
                    _ => "this server takes no new apps",
                };
                return Err(Reject::new(StatusCode::FORBIDDEN, format!("{name:?} is not on this server, and {why}")));
            }
            let (r, n) = (reg.clone(), name.to_owned());
            blocking(move || r.backend.claim_app(&n, &key, SystemClock.now_ms())).await?
        }
    };
    if app.app_id != key {
        return Err(Reject::new(
            StatusCode::FORBIDDEN,
            format!("{name:?} belongs to app id {}, and this request is signed by {}", hex::encode(app.app_id), hex::encode(key)),
        ));
    }
    Ok(app)
}

/// `scheme://{name}.{apps domain}[:port]/`, the port and scheme as the request came.
fn app_url(reg: &Registry, name: &str, headers: &HeaderMap) -> String {
    let port = super::site::host_port(headers).map(|p| format!(":{p}")).unwrap_or_default();
    let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
    format!("{}://{name}.{}{port}/", if https { "https" } else { "http" }, reg.config.apps_domain)
}

/// `GET /_registry/v1/`.
pub(crate) async fn info(State(reg): State<Arc<Registry>>) -> Json<api::ServerInfo> {
    let c = &reg.config;
    let new_apps = match c.new_apps {
        SpaceCreation::Open => "open",
        SpaceCreation::Token(_) => "token",
        SpaceCreation::Closed => "closed",
    };
    Json(api::ServerInfo {
        apps_domain: c.apps_domain.clone(),
        new_apps: new_apps.into(),
        max_file_bytes: c.max_file_bytes,
        max_app_bytes: c.max_app_bytes,
        max_versions: c.max_versions,
    })
}

/// `POST apps/{name}/missing`: which of the listed files the server lacks; those become
/// uploadable for the app for a while.
pub(crate) async fn missing(
    State(reg): State<Arc<Registry>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<api::MissingResponse>> {
    parse_name(&name)?;
    let key = authorize(&reg, &method, &uri, &headers, &Sha256::digest(&body).into())?;
    let req: api::MissingRequest = serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not a list of files: {e}")))?;
    let c = &reg.config;
    if req.files.len() > c.max_manifest_files + 1 {
        return Err(Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} files are more than the {} a bundle may have", req.files.len(), c.max_manifest_files),
        ));
    }
    let mut wanted = Vec::with_capacity(req.files.len());
    for f in &req.files {
        let sha = parse_sha(&f.sha256)?;
        if f.size > c.max_file_bytes {
            return Err(too_large(&f.sha256, f.size, c.max_file_bytes));
        }
        wanted.push((sha, f.size));
    }
    wanted.sort_unstable();
    wanted.dedup_by_key(|w| w.0);
    let total: u64 = wanted.iter().map(|w| w.1).sum();
    if total > c.max_app_bytes {
        return Err(Reject::new(StatusCode::INSUFFICIENT_STORAGE, format!("the bundle's {total} bytes are more than an app's quota of {}", c.max_app_bytes)));
    }
    own_app(&reg, &name, key, &headers).await?;
    let now = SystemClock.now_ms();
    let expires = now + c.pending_ttl.as_millis() as u64;
    let r = reg.clone();
    let max_pending = c.max_app_bytes;
    let missing = blocking(move || r.backend.missing_files(&name, &wanted, now, expires, max_pending)).await?.map_err(|bytes| {
        Reject::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the app's unpublished uploads would announce {bytes} bytes, more than its quota of {max_pending}; publish, or wait for them to expire"),
        )
    })?;
    Ok(Json(api::MissingResponse { missing: missing.iter().map(hex::encode).collect(), expires_ms: expires }))
}

fn too_large(sha: &str, size: u64, limit: u64) -> Reject {
    Reject::new(StatusCode::PAYLOAD_TOO_LARGE, format!("file {sha} of {size} bytes is larger than this server's limit of {limit} bytes a file"))
}

/// `PUT apps/{name}/files/{sha256}`: a file a pending publication of the app announced.
/// The signature covers the digest in the path; the body must hash to it and be the
/// announced size.
pub(crate) async fn put_file(
    State(reg): State<Arc<Registry>>,
    Path((name, sha)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    parse_name(&name)?;
    let hash = parse_sha(&sha)?;
    let key = authorize(&reg, &method, &uri, &headers, &hash)?;
    let (r, n) = (reg.clone(), name.clone());
    let app =
        blocking(move || r.backend.app(&n)).await?.ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, format!("no app {name:?} here: ask `missing` first")))?;
    if app.app_id != key {
        return Err(Reject::new(StatusCode::FORBIDDEN, format!("{name:?} belongs to another key than this request's")));
    }
    let (r, n) = (reg.clone(), name.clone());
    let size = blocking(move || r.backend.pending_size(&n, &hash, SystemClock.now_ms()))
        .await?
        .ok_or_else(|| Reject::new(StatusCode::FORBIDDEN, format!("{sha} is not a file a pending publication of {name:?} announced (POST missing first)")))?;
    let limit = size.min(reg.config.max_file_bytes);
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large(&sha, len, limit));
    }
    let bytes = axum::body::to_bytes(body, limit as usize + 1).await.map_err(|_| too_large(&sha, limit + 1, limit))?;
    if bytes.len() as u64 != size {
        return Err(bad(format!("the body has {} bytes, and {sha} was announced with {size}", bytes.len())));
    }
    let actual: [u8; 32] = Sha256::digest(&bytes).into();
    if actual != hash {
        return Err(bad(format!("the body's sha-256 is {}, not {sha}", hex::encode(actual))));
    }
    let r = reg.clone();
    let (n, now) = (name.clone(), SystemClock.now_ms());
    match blocking(move || r.backend.put_file(&n, &hash, &bytes, now)).await? {
        PutFile::Created => Ok((StatusCode::CREATED, "").into_response()),
        PutFile::Exists => Ok((StatusCode::OK, "").into_response()),
        PutFile::NotAnnounced => {
            Err(Reject::new(StatusCode::FORBIDDEN, format!("the announcement of {sha} by {name:?} expired meanwhile (POST missing again)")))
        }
    }
}

/// `POST apps/{name}/versions`: a signed bundle becomes current if `previous` still is.
pub(crate) async fn publish(
    State(reg): State<Arc<Registry>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    parse_name(&name)?;
    let key = authorize(&reg, &method, &uri, &headers, &Sha256::digest(&body).into())?;
    let req: api::PublishRequest = serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not a publication: {e}")))?;
    let c = &reg.config;
    if req.manifest.len() > c.max_manifest_bytes {
        return Err(Reject::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the bundle manifest is larger than {} bytes", c.max_manifest_bytes)));
    }
    let manifest = BundleManifest::parse(req.manifest.as_bytes()).map_err(|e| Reject::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    if manifest.files.len() > c.max_manifest_files {
        return Err(Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} files are more than the {} a bundle may have", manifest.files.len(), c.max_manifest_files),
        ));
    }
    if manifest.file(bundle::MANIFEST_FILE).is_some() || manifest.file(bundle::WORKER_SCRIPT).is_some() {
        return Err(Reject::new(StatusCode::UNPROCESSABLE_ENTITY, "the bundle lists stead-bundle.json or stead-sw.js, which the server serves itself"));
    }
    let worker = parse_sha(&req.worker.sha256)?;
    let mut files: Vec<([u8; 32], u64)> = vec![(worker, req.worker.size)];
    for f in &manifest.files {
        files.push((parse_sha(&f.sha256)?, f.size));
    }
    files.sort_unstable();
    for w in files.windows(2) {
        if w[0].0 == w[1].0 && w[0].1 != w[1].1 {
            return Err(Reject::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{} is listed with two sizes", hex::encode(w[0].0))));
        }
    }
    files.dedup();
    if let Some((sha, size)) = files.iter().find(|f| f.1 > c.max_file_bytes) {
        return Err(too_large(&hex::encode(sha), *size, c.max_file_bytes));
    }
    let signature: [u8; 64] =
        hex::decode(&req.signature).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| bad("the release signature is not 64 bytes of hex"))?;
    let verifying = stead_core::sig::public_key(&key).map_err(|e| Reject::new(StatusCode::UNAUTHORIZED, e))?;
    let release = release_message(&name, &manifest.version, &req.worker.sha256, req.worker.size);
    if verifying.verify_strict(&release, &Signature::from_bytes(&signature)).is_err() {
        return Err(Reject::new(StatusCode::FORBIDDEN, "the release is not signed by the key that signs the request"));
    }
    if let Some(p) = &req.previous {
        parse_sha(p)?;
    }
    own_app(&reg, &name, key, &headers).await?;
    let new = NewVersion {
        app: name.clone(),
        previous: req.previous,
        version: StoredVersion {
            version: manifest.version.clone(),
            manifest: req.manifest.into_bytes(),
            worker_sha256: worker,
            worker_size: req.worker.size,
            signature,
            published_ms: 0,
            seq: 0,
        },
        files,
    };
    let quota = AppQuota { max_versions: c.max_versions, max_app_bytes: c.max_app_bytes };
    let r = reg.clone();
    let moved = blocking(move || r.backend.publish(&new, quota)).await?;
    moved_response(&reg, &name, key, &manifest.version, moved, &headers)
}

fn moved_response(reg: &Registry, name: &str, key: [u8; 32], version: &str, moved: Moved, headers: &HeaderMap) -> Result<Response> {
    match moved {
        Moved::Done { trimmed } => {
            tracing::info!(app = name, version, "current moved");
            let body = api::Moved { app: name.to_owned(), app_id: hex::encode(key), current: version.to_owned(), trimmed, url: app_url(reg, name, headers) };
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Moved::Conflict { current } => Err(Reject(
            StatusCode::CONFLICT,
            api::Problem {
                error: format!("the current version of {name} is {}, not the one this publication replaces", current.as_deref().unwrap_or("none")),
                has_current: Some(current.is_some()),
                current,
                ..Default::default()
            },
        )),
        Moved::MissingFiles(missing) => Err(Reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            api::Problem {
                error: format!("{} files of the bundle are not on the server: upload them first", missing.len()),
                missing: missing.iter().map(hex::encode).collect(),
                ..Default::default()
            },
        )),
        Moved::WrongSize { sha256, stored, declared } => {
            Err(Reject::new(StatusCode::UNPROCESSABLE_ENTITY, format!("file {} has {stored} bytes, and the bundle says {declared}", hex::encode(sha256))))
        }
        Moved::OverQuota { bytes } => Err(Reject::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the app's kept versions would hold {bytes} bytes, more than its quota of {}", reg.config.max_app_bytes),
        )),
        Moved::OtherWorker => Err(Reject::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "version {version} of {name} is stored with another worker script: a version is its files and its worker, so a new worker needs a change to the app's files (rebuild it with this Stead)"
            ),
        )),
        Moved::NotFound => Err(Reject::new(StatusCode::NOT_FOUND, format!("no version {version} of {name:?} here"))),
    }
}

/// `POST apps/{name}/rollback`: an earlier version becomes current if `previous` still is.
pub(crate) async fn rollback(
    State(reg): State<Arc<Registry>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    parse_name(&name)?;
    let key = authorize(&reg, &method, &uri, &headers, &Sha256::digest(&body).into())?;
    let req: api::RollbackRequest = serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not a rollback: {e}")))?;
    parse_sha(&req.to)?;
    if let Some(p) = &req.previous {
        parse_sha(p)?;
    }
    let (r, n) = (reg.clone(), name.clone());
    let app = blocking(move || r.backend.app(&n)).await?.ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, format!("no app {name:?} here")))?;
    if app.app_id != key {
        return Err(Reject::new(StatusCode::FORBIDDEN, format!("{name:?} belongs to another key than this request's")));
    }
    let (r, n, to) = (reg.clone(), name.clone(), req.to.clone());
    let moved = blocking(move || r.backend.rollback(&n, &to, req.previous.as_deref())).await?;
    moved_response(&reg, &name, key, &req.to, moved, &headers)
}

/// `GET apps/{name}/versions`: the kept versions, newest first (public).
pub(crate) async fn versions(State(reg): State<Arc<Registry>>, Path(name): Path<String>) -> Result<Json<api::Versions>> {
    parse_name(&name)?;
    let (r, n) = (reg.clone(), name.clone());
    let app = blocking(move || r.backend.app(&n)).await?.ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, format!("no app {name:?} here")))?;
    let (r, n) = (reg.clone(), name.clone());
    let stored = blocking(move || r.backend.versions(&n)).await?;
    let mut versions = Vec::with_capacity(stored.len());
    for v in stored {
        let (files, bytes) = match BundleManifest::parse(&v.manifest) {
            Ok(m) => (m.files.len(), m.total_size() + if m.hashes().contains(hex::encode(v.worker_sha256).as_str()) { 0 } else { v.worker_size }),
            Err(_) => (0, 0),
        };
        versions.push(api::VersionInfo {
            current: app.current.as_deref() == Some(v.version.as_str()),
            version: v.version,
            published_ms: v.published_ms,
            files,
            bytes,
            signature: hex::encode(v.signature),
        });
    }
    Ok(Json(api::Versions { app: name, app_id: hex::encode(app.app_id), current: app.current, versions }))
}

/// `GET apps`: every app with a current version, with its web app manifest's name,
/// description and first icon when it has one (public).
pub(crate) async fn apps(State(reg): State<Arc<Registry>>, headers: HeaderMap) -> Result<Json<Vec<api::AppInfo>>> {
    Ok(Json(list(&reg, &headers).await?))
}

/// Every app with a current version, as `GET apps` and the catalog show them.
pub(crate) async fn list(reg: &Arc<Registry>, headers: &HeaderMap) -> Result<Vec<api::AppInfo>> {
    let r = reg.clone();
    let all = blocking(move || r.backend.apps()).await?;
    let mut out = Vec::with_capacity(all.len());
    for app in all {
        let Some(current) = app.current.clone() else { continue };
        let url = app_url(reg, &app.name, headers);
        // Read once per release: the catalog and `GET apps` are public and may be asked often.
        let shown = match super::site::release(reg, &app.name, &current).await {
            // A read that failed is tried again next time rather than remembered as empty.
            Ok(release) => release.shown.get_or_try_init(|| web_manifest(reg, &release)).await.cloned().unwrap_or_default(),
            Err(_) => super::Shown::default(),
        };
        let icon = shown.icon.map(|src| format!("{url}{src}"));
        let (title, description) = (shown.title, shown.description);
        out.push(api::AppInfo { name: app.name, app_id: hex::encode(app.app_id), current, url, title, description, icon });
    }
    Ok(out)
}

/// A web app manifest larger than this is not read for the catalog (real ones are a few
/// KB; the file limit alone would let each catalog view hash megabytes per app).
const MAX_WEB_MANIFEST_BYTES: u64 = 64 * 1024;

/// Name, description and first icon (as a path on the app's origin) from the release's
/// `manifest.webmanifest`; nothing of a manifest that is missing, oversized or not JSON;
/// `Err` when it could not be read (storage failed, or the stored file is damaged).
async fn web_manifest(reg: &Arc<Registry>, release: &Release) -> std::result::Result<super::Shown, ()> {
    let Some(file) = release.manifest.file("manifest.webmanifest").filter(|f| f.size <= MAX_WEB_MANIFEST_BYTES) else {
        return Ok(super::Shown::default());
    };
    let bytes = super::site::verified(reg, &file.sha256, file.size).await.map_err(drop)?;
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return Ok(super::Shown::default()) };
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(|s| s.chars().take(300).collect::<String>());
    let icon = json
        .get("icons")
        .and_then(|i| i.as_array())
        .and_then(|i| i.iter().filter_map(|i| i.get("src")?.as_str()).find(|s| !s.contains(':') && !s.starts_with("//")))
        .map(|src| src.trim_start_matches("./").trim_start_matches('/').to_owned());
    Ok(super::Shown { title: text("name"), description: text("description"), icon })
}
