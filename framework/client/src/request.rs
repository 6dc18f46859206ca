//! Signed requests to a Stead server's HTTP routes: the membership log and blobs.

use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::SigningKey;
use reqwest::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use stead_core::env::{Clock, SystemClock};
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::membership::{InviteSecret, Membership};
use stead_core::sync::{RequestTarget, body_hash};

use crate::{Error, Result};

/// The `Authorization` header value proving that `replica` of `space` sends this request
/// (`path` with its query) to `server`, with a body whose SHA-256 is `body_sha256`.
pub fn authorization(server: &str, space: SpaceId, replica: ReplicaId, key: &SigningKey, method: &str, path: &str, body_sha256: [u8; 32]) -> String {
    let target = RequestTarget { method, host: &host(server), path_and_query: path, body_sha256 };
    stead_core::sync::authorization(request_time(), space, replica, key, &target)
}

/// The time to sign a request with: the clock, but never a millisecond already used, so
/// two identical requests made at once are two requests to the server (which takes each
/// signature once), not one and a replay.
fn request_time() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemClock.now_ms();
    let prev = LAST.fetch_max(now, Ordering::Relaxed);
    if prev < now { now } else { LAST.fetch_add(1, Ordering::Relaxed) + 1 }
}

/// The `Host` a request to `server` carries: `host[:port]`, the port only when it is not
/// the scheme's default, as HTTP clients send it.
fn host(server: &str) -> String {
    match reqwest::Url::parse(server) {
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        },
        Err(_) => String::new(),
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Err(Error::Server { status, body })
}

/// The base URL (`http://host:port`) without a trailing slash.
fn base(server: &str) -> &str {
    server.trim_end_matches('/')
}

/// Creates the space (with the server's creation token, where it asks for one) or extends
/// its membership log on the server.
pub async fn put_members(http: &reqwest::Client, server: &str, members: &Membership, creation_token: Option<&str>) -> Result<()> {
    let url = format!("{}/spaces/{}/members", base(server), members.space());
    let mut put = http.put(url).body(members.encode());
    if let Some(token) = creation_token {
        put = put.header("stead-creation-token", token);
    }
    check(put.send().await?).await?;
    Ok(())
}

/// The space's membership log, as a member sees it.
pub async fn get_members(http: &reqwest::Client, server: &str, space: SpaceId, replica: ReplicaId, key: &SigningKey) -> Result<Membership> {
    let path = format!("/spaces/{space}/members");
    let auth = authorization(server, space, replica, key, "GET", &path, body_hash(b""));
    let resp = check(http.get(format!("{}{path}", base(server))).header(AUTHORIZATION, auth).send().await?).await?;
    Ok(Membership::decode(&resp.bytes().await?)?)
}

/// The space's membership log, read with an invite's key before joining.
pub async fn get_members_invited(http: &reqwest::Client, server: &str, space: SpaceId, secret: &InviteSecret) -> Result<Membership> {
    let path = format!("/spaces/{space}/members");
    let target = RequestTarget { method: "GET", host: &host(server), path_and_query: &path, body_sha256: body_hash(b"") };
    let auth = stead_core::sync::invite_authorization(request_time(), space, secret, &target);
    let resp = check(http.get(format!("{}{path}", base(server))).header(AUTHORIZATION, auth).send().await?).await?;
    Ok(Membership::decode(&resp.bytes().await?)?)
}

/// Stores an (already encrypted) blob; returns its SHA-256 in hex.
pub async fn put_blob(http: &reqwest::Client, server: &str, space: SpaceId, replica: ReplicaId, key: &SigningKey, bytes: Vec<u8>) -> Result<String> {
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let hash = hex::encode(digest);
    let path = format!("/blobs/{hash}");
    let auth = authorization(server, space, replica, key, "PUT", &path, digest);
    check(http.put(format!("{}{path}", base(server))).header(AUTHORIZATION, auth).body(bytes).send().await?).await?;
    Ok(hash)
}

/// A blob, whole or one byte range (`range` is the `Range` header value, e.g. `bytes=0-99`).
pub async fn get_blob(http: &reqwest::Client, server: &str, space: SpaceId, replica: ReplicaId, key: &SigningKey, hash: &str, range: Option<&str>) -> Result<Vec<u8>> {
    let path = format!("/blobs/{hash}");
    let auth = authorization(server, space, replica, key, "GET", &path, body_hash(b""));
    let mut req = http.get(format!("{}{path}", base(server))).header(AUTHORIZATION, auth);
    if let Some(r) = range {
        req = req.header(reqwest::header::RANGE, r);
    }
    Ok(check(req.send().await?).await?.bytes().await?.to_vec())
}
