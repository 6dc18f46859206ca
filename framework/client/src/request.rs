//! Signed requests to a Stead server's HTTP routes: the membership log and blobs.

use ed25519_dalek::SigningKey;
use reqwest::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use stead_core::env::{Clock, SystemClock};
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::membership::Membership;

use crate::{Error, Result};

/// The `Authorization` header value proving that `replica` of `space` sends this request.
pub fn authorization(space: SpaceId, replica: ReplicaId, key: &SigningKey, method: &str, path: &str) -> String {
    stead_core::sync::authorization(SystemClock.now_ms(), space, replica, key, method, path)
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
    let auth = authorization(space, replica, key, "GET", &path);
    let resp = check(http.get(format!("{}{path}", base(server))).header(AUTHORIZATION, auth).send().await?).await?;
    Ok(Membership::decode(&resp.bytes().await?)?)
}

/// Stores an (already encrypted) blob; returns its SHA-256 in hex.
pub async fn put_blob(http: &reqwest::Client, server: &str, space: SpaceId, replica: ReplicaId, key: &SigningKey, bytes: Vec<u8>) -> Result<String> {
    let hash = hex::encode(Sha256::digest(&bytes));
    let path = format!("/blobs/{hash}");
    let auth = authorization(space, replica, key, "PUT", &path);
    check(http.put(format!("{}{path}", base(server))).header(AUTHORIZATION, auth).body(bytes).send().await?).await?;
    Ok(hash)
}

/// A blob, whole or one byte range (`range` is the `Range` header value, e.g. `bytes=0-99`).
pub async fn get_blob(http: &reqwest::Client, server: &str, space: SpaceId, replica: ReplicaId, key: &SigningKey, hash: &str, range: Option<&str>) -> Result<Vec<u8>> {
    let path = format!("/blobs/{hash}");
    let auth = authorization(space, replica, key, "GET", &path);
    let mut req = http.get(format!("{}{path}", base(server))).header(AUTHORIZATION, auth);
    if let Some(r) = range {
        req = req.header(reqwest::header::RANGE, r);
    }
    Ok(check(req.send().await?).await?.bytes().await?.to_vec())
}
