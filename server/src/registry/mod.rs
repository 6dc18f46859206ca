//! The app registry: apps published to this server by their publishers, each served at
//! its own origin `{app}.{apps domain}`. The HTTP API is under `/_registry/v1/`
//! (`server/REGISTRY.md`).
//!
//! An app is a name (a DNS label) owned by an Ed25519 key, its app id. A version is a
//! signed bundle manifest (`stead-bundle.json`) plus the worker script; files are stored
//! once by SHA-256, shared across versions and apps. `current` moves only by
//! compare-and-swap on the version the publisher saw, so two publishers racing never lose
//! a version silently. Every write is a request signed by the app's key
//! ([`authorization`]), within a time window and once.
//!
//! The message formats and the wire types are public: `stead publish` signs with them.

pub mod api;
pub mod catalog;
pub(crate) mod http;
pub(crate) mod site;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use stead_core::bundle::BundleManifest;

use crate::service::SpaceCreation;
use crate::storage::{Backend, StoredVersion};

/// The `Authorization` scheme of registry requests.
pub const AUTH_SCHEME: &str = "Stead-App";
/// The header carrying an operator's token that allows claiming a new app name.
pub const TOKEN_HEADER: &str = "stead-publish-token";
/// How far a signed request's time may be from the server's.
pub const REQUEST_WINDOW_MS: u64 = 60 * 1000;

const REQUEST_DOMAIN: &[u8] = b"stead-registry-request/1\0";
const RELEASE_DOMAIN: &[u8] = b"stead-registry-release/1\0";

/// Names no app may take: they are the operator's, or look like they are.
pub const RESERVED_NAMES: &[&str] = &[
    "www",
    "api",
    "admin",
    "administrator",
    "app",
    "apps",
    "registry",
    "stead",
    "root",
    "mail",
    "email",
    "smtp",
    "imap",
    "pop",
    "pop3",
    "ftp",
    "ns",
    "ns1",
    "ns2",
    "dns",
    "mx",
    "static",
    "cdn",
    "assets",
    "status",
    "help",
    "support",
    "docs",
    "blog",
    "auth",
    "login",
    "logout",
    "signin",
    "signup",
    "account",
    "accounts",
    "dashboard",
    "console",
    "billing",
    "security",
    "localhost",
    "catalog",
    "sync",
    "metrics",
    "healthz",
    "webmail",
    "autoconfig",
    "autodiscover",
    "wpad",
    "_registry",
];

/// Why `name` cannot be an app's name, if it cannot: 1–40 of `a-z`, `0-9`, `-`, not
/// starting or ending with `-`, no `--` in third and fourth place (IDNA's `xn--` and its
/// kin), and not reserved.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 40 {
        return Err(format!("an app name is 1 to 40 characters long, not {}", name.len()));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("an app name holds only lower-case letters a-z, digits and '-'".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("an app name neither starts nor ends with '-'".into());
    }
    if name.get(2..4) == Some("--") {
        return Err("an app name has no '--' in third and fourth place (reserved for internationalised names)".into());
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("{name:?} is reserved on this server"));
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// What a registry request's signature covers: the time, a random nonce (two identical
/// requests in one millisecond are still two), the signing key, the method, the `Host`
/// header, the path and query, and the body's SHA-256 (for a file upload, the digest in
/// its path, checked against the body).
pub fn request_message(time_ms: u64, nonce: &[u8; 16], app_id: &[u8; 32], method: &str, host: &str, path_and_query: &str, body_sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = REQUEST_DOMAIN.to_vec();
    m.extend_from_slice(&time_ms.to_be_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(app_id);
    put_str(&mut m, method);
    put_str(&mut m, host);
    put_str(&mut m, path_and_query);
    m.extend_from_slice(body_sha256);
    m
}

/// The `Authorization` header of a registry request:
/// `Stead-App <app id hex>.<time ms>.<nonce hex>.<signature of request_message, hex>`.
/// `nonce` must be fresh for each request (random: see [`nonce`]).
pub fn authorization(key: &SigningKey, time_ms: u64, nonce: &[u8; 16], method: &str, host: &str, path_and_query: &str, body_sha256: &[u8; 32]) -> String {
    let id = key.verifying_key().to_bytes();
    let sig = key.sign(&request_message(time_ms, nonce, &id, method, host, path_and_query, body_sha256));
    format!("{AUTH_SCHEME} {}.{time_ms}.{}.{}", hex::encode(id), hex::encode(nonce), hex::encode(sig.to_bytes()))
}

/// A fresh random nonce for [`authorization`].
pub fn nonce() -> Result<[u8; 16], getrandom::Error> {
    let mut n = [0u8; 16];
    getrandom::getrandom(&mut n)?;
    Ok(n)
}

/// What the publisher signs for a release: the app's name, the bundle's version (a hash
/// over its whole file list) and the worker script's digest and size. Kept with the
/// version, so anyone holding it can check who published what, under which name.
pub fn release_message(name: &str, version: &str, worker_sha256: &str, worker_size: u64) -> Vec<u8> {
    let mut m = RELEASE_DOMAIN.to_vec();
    put_str(&mut m, name);
    put_str(&mut m, version);
    put_str(&mut m, worker_sha256);
    m.extend_from_slice(&worker_size.to_be_bytes());
    m
}

/// The registry's bounds and policy.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Apps are served at `{name}.{apps_domain}` (`localhost` locally, `apps.example.com`
    /// behind a wildcard DNS name).
    pub apps_domain: String,
    /// Who may claim a new app name (the token, if any, in `Stead-Publish-Token`).
    pub new_apps: SpaceCreation,
    /// Largest file of a bundle (the worker script included), in bytes.
    pub max_file_bytes: u64,
    /// The distinct files an app's kept versions list, in bytes.
    pub max_app_bytes: u64,
    /// Versions kept per app; publishing past it trims the oldest (never the current).
    pub max_versions: usize,
    /// Files of one bundle, at most.
    pub max_manifest_files: usize,
    /// Largest `stead-bundle.json`, in bytes.
    pub max_manifest_bytes: usize,
    /// How long an announced upload stays allowed (and its file kept unpublished).
    pub pending_ttl: Duration,
    /// Stead's service worker script (`stead-sw.js` of a build of this checkout) for the
    /// catalog at the bare host: with it, the catalog installs and works offline.
    pub catalog_worker: Option<Vec<u8>>,
}

impl RegistryConfig {
    pub fn new(apps_domain: &str) -> RegistryConfig {
        RegistryConfig {
            apps_domain: apps_domain.to_owned(),
            new_apps: SpaceCreation::Closed,
            max_file_bytes: 32 << 20,
            max_app_bytes: 512 << 20,
            max_versions: 20,
            max_manifest_files: 10_000,
            max_manifest_bytes: 4 << 20,
            pending_ttl: Duration::from_secs(3600),
            catalog_worker: None,
        }
    }
}

/// Why an apps domain cannot be used.
pub fn check_domain(domain: &str) -> Result<(), String> {
    let ok = !domain.is_empty()
        && domain.len() <= 200
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok { Ok(()) } else { Err(format!("{domain:?} is not a lower-case DNS name (like localhost or apps.example.com)")) }
}

/// A version being served: its stored record and parsed manifest (versions never change,
/// so they are cached by name and version).
pub(crate) struct Release {
    pub stored: StoredVersion,
    pub manifest: BundleManifest,
    /// What the catalog shows of it, read from its web app manifest once.
    pub shown: tokio::sync::OnceCell<Shown>,
}

/// An app's name, description and first icon (a path on its origin), as its web app
/// manifest gives them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shown {
    pub title: Option<String>,
    pub description: Option<String>,
    pub icon: Option<String>,
}

/// The registry: storage, policy, and what it remembers between requests.
pub struct Registry {
    pub(crate) backend: Arc<dyn Backend>,
    pub config: RegistryConfig,
    seen: Mutex<HashMap<[u8; 16], u64>>,
    releases: Mutex<HashMap<(String, String), Arc<Release>>>,
    pub(crate) catalog: catalog::Catalog,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("apps_domain", &self.config.apps_domain).finish_non_exhaustive()
    }
}

/// Releases kept parsed in memory, at most.
const RELEASE_CACHE: usize = 256;

impl Registry {
    pub fn new(backend: Arc<dyn Backend>, config: RegistryConfig) -> Arc<Registry> {
        // Made from files compiled in, which the catalog's tests render.
        let catalog = catalog::Catalog::new(config.catalog_worker.clone()).expect("the catalog's own manifest and icon render");
        Arc::new(Registry { backend, config, seen: Mutex::default(), releases: Mutex::default(), catalog })
    }

    /// Whether a signature is used for the first time (a replay within the window is not).
    pub(crate) fn first_use(&self, sig: &[u8; 64], time_ms: u64, now: u64) -> bool {
        let key: [u8; 16] = sig[..16].try_into().expect("16 of 64 bytes");
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 4096 && seen.len().is_power_of_two() {
            seen.retain(|_, t| now.abs_diff(*t) <= REQUEST_WINDOW_MS);
        }
        seen.insert(key, time_ms).is_none()
    }

    pub(crate) fn cached(&self, app: &str, version: &str) -> Option<Arc<Release>> {
        self.releases.lock().unwrap_or_else(|p| p.into_inner()).get(&(app.to_owned(), version.to_owned())).cloned()
    }

    pub(crate) fn cache(&self, app: &str, release: Arc<Release>) {
        let mut c = self.releases.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= RELEASE_CACHE {
            c.clear();
        }
        c.insert((app.to_owned(), release.stored.version.clone()), release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "todo", "field-notes", "a1", "x".repeat(40).as_str()] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Todo", "-a", "a-", "xn--abc", "ab--c", "a.b", "a_b", "www", "api", "admin", "é", &"x".repeat(41), "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn domains() {
        assert!(check_domain("localhost").is_ok() && check_domain("apps.example.com").is_ok());
        for bad in ["", "Apps.example.com", "a..b", ".a", "a.", "-a.b", "a_b.c", "a:80"] {
            assert!(check_domain(bad).is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn signed_messages_bind_every_field() {
        let base = request_message(1, &[0; 16], &[1; 32], "POST", "h", "/p", &[2; 32]);
        assert_ne!(base, request_message(2, &[0; 16], &[1; 32], "POST", "h", "/p", &[2; 32]));
        assert_ne!(base, request_message(1, &[1; 16], &[1; 32], "POST", "h", "/p", &[2; 32]));
        assert_ne!(base, request_message(1, &[0; 16], &[1; 32], "PUT", "h", "/p", &[2; 32]));
        assert_ne!(base, request_message(1, &[0; 16], &[1; 32], "POST", "h/", "p", &[2; 32]), "fields are length-prefixed");
        assert_ne!(release_message("a", "v", "w", 1), release_message("b", "v", "w", 1));
    }
}
