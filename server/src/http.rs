//! The plain HTTP routes of sync: membership logs, blobs and metrics, with signed
//! requests (`Authorization: Stead <space>.<replica>.<time ms>.<signature hex>`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use stead_core::env::{Clock, SystemClock};
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::sync::{RequestTarget, body_hash, check_member, request_message};

use crate::error::{Error, Result};
use crate::service::Service;
use crate::storage::PutBlob;

/// The header carrying an operator-issued token that allows creating a space.
pub(crate) const CREATION_TOKEN: &str = "stead-creation-token";

/// How far a signed request's time may be from the server's. Each signature is taken
/// once within it (see `Service::first_use`).
pub(crate) const REQUEST_WINDOW_MS: u64 = 60 * 1000;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Task(e.to_string()))?
}

/// Who may sign a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signers {
    Members,
    /// Members, and holders of a pending, unexpired invite (who read the membership log
    /// to join).
    MembersAndInvites,
}

/// Checks the signed `Authorization` header of a request whose body has SHA-256
/// `body_sha256`; returns the space it proves membership of. Anything but a GET needs a
/// member that may write (not a reader).
async fn authorize(service: &Arc<Service>, method: &Method, uri: &Uri, headers: &HeaderMap, body_sha256: [u8; 32], signers: Signers) -> Result<SpaceId> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Stead "))
        .ok_or(Error::Unauthorized("a signed Authorization header is required"))?;
    let mut parts = value.split('.');
    let bad = || Error::Unauthorized("malformed Authorization header");
    let space: SpaceId = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let signer = parts.next().ok_or_else(bad)?;
    let invite: Option<[u8; 32]> = match signer.strip_prefix("invite-") {
        Some(hex_key) if signers == Signers::MembersAndInvites && *method == Method::GET => {
            Some(hex::decode(hex_key).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)?)
        }
        Some(_) => return Err(Error::Unauthorized("an invite signs only for reading the membership log")),
        None => None,
    };
    let replica: ReplicaId = match &invite {
        Some(key) => stead_core::sync::invite_replica(key),
        None => signer.parse().map_err(|_| bad())?,
    };
    let time: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let sig: [u8; 64] = parts
        .next()
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    if SystemClock.now_ms().abs_diff(time) > REQUEST_WINDOW_MS {
        return Err(Error::Unauthorized("the request's time is too far from the server's"));
    }
    let svc = service.clone();
    let members = blocking(move || svc.members(space)).await?.ok_or(Error::Unauthorized("not a member of the space"))?;
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let target = RequestTarget { method: method.as_str(), host, path_and_query, body_sha256 };
    let msg = request_message(time, space, replica, &target);
    let proven = match &invite {
        Some(key) => stead_core::sync::check_invite(&members.1, key, SystemClock.now_ms(), &msg, &sig),
        None => check_member(&members.1, replica, &msg, &sig),
    };
    if !proven {
        return Err(Error::Unauthorized(match invite {
            Some(_) => "the invite is not pending (used, cancelled or expired) or the signature is wrong",
            None => "not a member of the space",
        }));
    }
    if !service.first_use(&sig, time) {
        return Err(Error::Unauthorized("this signed request was already used"));
    }
    if *method != Method::GET && !members.1.may_write(replica) {
        return Err(Error::Forbidden("this device may only read the space"));
    }
    Ok(space)
}

fn parse_space(s: &str) -> Result<SpaceId> {
    s.parse().map_err(|_| Error::BadRequest(format!("{s:?} is not a space id")))
}

/// `PUT /spaces/{space}/members`: creates a space from its genesis (as the server's
/// creation policy allows: a `Stead-Creation-Token` header where it asks for one), or
/// extends its membership log, which needs no header: every event in the log is signed
/// by a member.
pub(crate) async fn put_members(
    State(service): State<Arc<Service>>,
    Path(space): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let space = parse_space(&space)?;
    let token = headers.get(CREATION_TOKEN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let svc = service.clone();
    let version = blocking(move || svc.put_members(space, &body, token.as_deref())).await?;
    Ok((StatusCode::OK, version.to_string()).into_response())
}

/// `GET /spaces/{space}/members`: the membership log, to members, and to the holder of a
/// pending invite (who needs it to join).
pub(crate) async fn get_members(
    State(service): State<Arc<Service>>,
    Path(space): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let space = parse_space(&space)?;
    if authorize(&service, &method, &uri, &headers, body_hash(b""), Signers::MembersAndInvites).await? != space {
        return Err(Error::Unauthorized("the signature is for another space"));
    }
    let svc = service.clone();
    let stored = blocking(move || svc.backend.members(space)).await?.ok_or(Error::NotFound)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], stored.bytes).into_response())
}

fn parse_hash(s: &str) -> Result<[u8; 32]> {
    let bad = || Error::BadRequest(format!("{s:?} is not a lower-case sha-256 in hex"));
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad());
    }
    hex::decode(s).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)
}

/// `PUT /blobs/{sha256}`: stores an (encrypted) blob of the caller's space.
pub(crate) async fn put_blob(
    State(service): State<Arc<Service>>,
    Path(hash): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let hash = parse_hash(&hash)?;
    // The body's hash is the path's: the signature covers it before a byte is read, and
    // the body is checked against it below.
    let space = authorize(&service, &method, &uri, &headers, hash, Signers::Members).await?;
    let limit = service.limits.max_blob_bytes;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        return Err(Error::TooLarge { what: "blob", size: len, limit });
    }
    let bytes = axum::body::to_bytes(body, limit + 1).await.map_err(|_| Error::TooLarge { what: "blob", size: limit + 1, limit })?;
    let actual: [u8; 32] = Sha256::digest(&bytes).into();
    if actual != hash {
        return Err(Error::BadRequest(format!("the body's sha-256 is {}", hex::encode(actual))));
    }
    let svc = service.clone();
    let quota = service.limits.max_blob_bytes_per_space;
    let put = blocking(move || svc.backend.put_blob(space, &hash, &bytes, quota)).await?;
    match put {
        PutBlob::Created => {
            service.metrics.blobs_stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((StatusCode::CREATED, "").into_response())
        }
        PutBlob::Exists => Ok((StatusCode::OK, "").into_response()),
        PutBlob::OverQuota => {
            service.metrics.reject_quota("blob_bytes");
            Err(Error::QuotaFull { what: "blob bytes", limit: quota })
        }
    }
}

/// One byte range of a `Range` header, resolved against `size`: `None` when absent or not
/// a single byte range (then the whole blob is served).
fn parse_range(headers: &HeaderMap, size: usize) -> Result<Option<(usize, usize)>> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Err(Error::BadRange { size }) };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: usize = b.parse().map_err(|_| Error::BadRange { size })?;
        if n == 0 {
            return Err(Error::BadRange { size });
        }
        (size.saturating_sub(n), size.saturating_sub(1))
    } else {
        let start: usize = a.parse().map_err(|_| Error::BadRange { size })?;
        let end = if b.is_empty() { size.saturating_sub(1) } else { b.parse::<usize>().map_err(|_| Error::BadRange { size })?.min(size.saturating_sub(1)) };
        (start, end)
    };
    if range.0 >= size || range.0 > range.1 {
        return Err(Error::BadRange { size });
    }
    Ok(Some(range))
}

/// `GET /blobs/{sha256}`: a blob of the caller's space, whole or one byte range.
pub(crate) async fn get_blob(
    State(service): State<Arc<Service>>,
    Path(hash): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let hash = parse_hash(&hash)?;
    let space = authorize(&service, &method, &uri, &headers, body_hash(b""), Signers::Members).await?;
    let svc = service.clone();
    let bytes = blocking(move || svc.backend.blob(space, &hash)).await?.ok_or(Error::NotFound)?;
    let size = bytes.len();
    let mut response = match parse_range(&headers, size)? {
        Some((start, end)) => {
            let mut r = Response::new(Body::from(bytes[start..=end].to_vec()));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let cr = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).expect("ascii");
            r.headers_mut().insert(header::CONTENT_RANGE, cr);
            r
        }
        None => Response::new(Body::from(bytes)),
    };
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{}\"", hex::encode(hash))).expect("ascii"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    Ok(response)
}

/// `GET /metrics`: to loopback clients, or, when the operator set a token, to whoever
/// sends `Authorization: Bearer <token>` (and then only to them).
pub(crate) async fn metrics(State(service): State<Arc<Service>>, req: axum::extract::Request) -> Response {
    let allowed = match &service.limits.metrics_token {
        Some(hash) => req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| crate::service::token_hash(t) == *hash),
        None => req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .is_some_and(|c| c.0.ip().to_canonical().is_loopback()),
    };
    if !allowed {
        return (StatusCode::FORBIDDEN, "/metrics is served to loopback, or with the operator's token\n").into_response();
    }
    let mut text = service.metrics.render(service.connections(), service.backend.kind());
    if let Some(gate) = service.gate.get() {
        gate.stats.render(&mut text);
    }
    let l = &service.limits;
    text.push_str("# HELP stead_quota_limit Per-space bounds.\n# TYPE stead_quota_limit gauge\n");
    for (quota, n) in [
        ("entries", l.max_entries_per_space),
        ("blob_bytes", l.max_blob_bytes_per_space),
        ("membership_events", l.max_membership_events as u64),
        ("membership_bytes", l.max_membership_bytes as u64),
    ] {
        text.push_str(&format!("stead_quota_limit{{quota=\"{quota}\"}} {n}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
