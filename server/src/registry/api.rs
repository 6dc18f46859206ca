//! The JSON bodies of the registry's HTTP API (`server/REGISTRY.md`), shared with
//! `stead publish`.

use serde::{Deserialize, Serialize};

/// `GET /_registry/v1/`: what a publisher needs to know about this server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Apps are served at `{name}.{apps_domain}`.
    pub apps_domain: String,
    /// `open`, `token` or `closed`: who may claim a new app name.
    pub new_apps: String,
    pub max_file_bytes: u64,
    pub max_app_bytes: u64,
    pub max_versions: usize,
}

/// A file by content: lower-case hex SHA-256 and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub sha256: String,
    pub size: u64,
}

/// `POST apps/{name}/missing`: the files a publication needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingRequest {
    pub files: Vec<FileRef>,
}

/// The digests the server lacks; each may now be uploaded (`PUT apps/{name}/files/{sha256}`)
/// until `expires_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingResponse {
    pub missing: Vec<String>,
    pub expires_ms: u64,
}

/// `POST apps/{name}/versions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The exact text of `stead-bundle.json`.
    pub manifest: String,
    /// The worker script (`stead-sw.js`), which is not in the manifest.
    pub worker: FileRef,
    /// Hex Ed25519 signature of `registry::release_message` by the app's key.
    pub signature: String,
    /// The version the publisher saw as current (`null` for the first).
    pub previous: Option<String>,
}

/// `POST apps/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub to: String,
    pub previous: Option<String>,
}

/// The answer to a move of `current` that took place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moved {
    pub app: String,
    pub app_id: String,
    pub current: String,
    /// Versions dropped to stay within the server's bound on kept versions.
    pub trimmed: Vec<String>,
    /// Where the app is served, as this server sees it (scheme and port as the request's).
    pub url: String,
}

/// Every error's body: what went wrong, and for some, the facts to act on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Problem {
    pub error: String,
    /// On 409: the version that is actually current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// On 409, whether an app has a current version (`current` is `null` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_current: Option<bool>,
    /// On 422: the digests the server lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// One version, in `GET apps/{name}/versions` (newest first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub published_ms: u64,
    pub files: usize,
    /// Bytes of its distinct files, the worker's included.
    pub bytes: u64,
    pub current: bool,
    /// The publisher's release signature (hex), checkable with the app id.
    pub signature: String,
}

/// `GET apps/{name}/versions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub app: String,
    pub app_id: String,
    pub current: Option<String>,
    pub versions: Vec<VersionInfo>,
}

/// One app, in `GET apps`: name, id, current version, and what its web app manifest says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppInfo {
    pub name: String,
    pub app_id: String,
    pub current: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// An icon's URL on the app's origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
}
