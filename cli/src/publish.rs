//! `stead publish`, `stead versions`, `stead rollback`: an app's built bundle on a Stead
//! server's registry (`server/REGISTRY.md`).
//!
//! Publishing builds nothing: it takes the `dist` that `stead build` wrote, checks every
//! file against `stead-bundle.json`, signs the release with the app's key, asks the
//! server which digests it lacks, uploads only those (a few at a time), and then moves
//! the app's `current` version by compare-and-swap on the version it saw. An interrupted
//! publish resumes: the next run asks again and uploads only what is still missing.
//!
//! The publisher's key is the app's identity on every server: a file made on first use
//! under `$STEAD_HOME/keys/` (else `$XDG_CONFIG_HOME/stead/keys/`, else
//! `~/.config/stead/keys/`), readable by its owner only, never in the app's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode, Url, header};
use sha2::{Digest, Sha256};
use stead_core::bundle::{BundleManifest, MANIFEST_FILE, WORKER_SCRIPT};
use stead_core::env::{Clock, SystemClock};
use stead_server::registry::{self, api};

use crate::app::App;
use crate::diag::Problem;

/// Uploads in flight at once.
const UPLOADS: usize = 4;
/// Rounds of ask-upload-publish before giving up (files can vanish between them only
/// when the server sweeps expired uploads or trims versions meanwhile).
const ROUNDS: usize = 3;

/// Where and as what to publish.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's base URL (`http://localhost:8080`).
    pub server: Url,
    /// The app's name on the server: `{name}.{apps domain}`.
    pub name: String,
    /// An operator's token, for a server that asks one for new app names.
    pub token: Option<String>,
}

impl Target {
    /// The target for the app in `app` (or named `name`) on `server`.
    pub fn new(server: &str, name: Option<&str>, app: Option<&App>, token: Option<String>) -> Result<Target, Problem> {
        let mut url = Url::parse(server).map_err(|e| {
            Problem::new(format!("{server:?} is not a server URL: {e}")).help("give one like --server http://localhost:8080 or https://apps.example.com")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Problem::new(format!("{server:?} is not an http(s) URL")).help("give one like --server http://localhost:8080"));
        }
        url.set_path("/");
        url.set_query(None);
        let name = match (name, app) {
            (Some(n), _) => n.to_owned(),
            (None, Some(app)) => app.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            (None, None) => return Err(Problem::new("which app?").help("run this in an app's folder, or name it with --name")),
        };
        registry::check_name(&name).map_err(|why| {
            Problem::new(format!("{name:?} cannot be an app's name on a server: {why}"))
                .help("name it with --name, e.g. --name field-notes (it becomes the app's address: field-notes.<server's domain>)")
        })?;
        Ok(Target { server: url, name, token })
    }

    /// `host[:port]` as reqwest sends it in `Host`, which the signature covers.
    fn authority(&self) -> String {
        let host = self.server.host_str().unwrap_or_default();
        match self.server.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
    }

    fn app_path(&self, rest: &str) -> String {
        format!("/_registry/v1/apps/{}/{rest}", self.name)
    }
}

/// The folder keys live in.
pub fn key_dir() -> Result<PathBuf, Problem> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = var("STEAD_HOME") {
        return Ok(home.join("keys"));
    }
    if let Some(config) = var("XDG_CONFIG_HOME") {
        return Ok(config.join("stead/keys"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".config/stead/keys")),
        None => Err(Problem::new("cannot tell where to keep the app's key: neither STEAD_HOME nor HOME is set")
            .help("set STEAD_HOME to a private folder outside the app, e.g. export STEAD_HOME=~/.stead")),
    }
}

/// The app's publishing key: read from `{key dir}/{name}.key`, or made there (mode 0600)
/// when there is none. Returns the key and whether it was just made.
pub fn app_key(name: &str, app_dir: Option<&Path>) -> Result<(SigningKey, PathBuf, bool), Problem> {
    let dir = key_dir()?;
    let path = dir.join(format!("{name}.key"));
    if let Some(app_dir) = app_dir
        && let (Ok(a), Ok(d)) = (std::path::absolute(app_dir), std::path::absolute(&dir))
        && d.starts_with(&a)
    {
        return Err(Problem::new(format!("the key folder {} is inside the app's folder", dir.display()))
            .help("a publishing key must never be committed with the app: point STEAD_HOME outside it"));
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            check_private(&path)?;
            let bytes: [u8; 32] = hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
                Problem::new(format!("{} is not a Stead key (64 hex digits)", path.display()))
                    .help("restore it from your backup; without it this app cannot be published to servers that know it")
            })?;
            Ok((SigningKey::from_bytes(&bytes), path, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::getrandom(&mut secret).map_err(|e| Problem::new(format!("the OS gave no random bytes: {e}")))?;
            write_private(&dir, &path, &format!("{}\n", hex::encode(secret)))?;
            Ok((SigningKey::from_bytes(&secret), path, true))
        }
        Err(e) => Err(Problem::new(format!("cannot read {}: {e}", path.display())).help("check the file's permissions")),
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), Problem> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| Problem::new(format!("cannot read {}: {e}", path.display())))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Problem::new(format!("{} can be read by others (mode {:o})", path.display(), mode & 0o777))
            .help(format!("make it private: chmod 600 {}", path.display())));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), Problem> {
    Ok(())
}

fn write_private(dir: &Path, path: &Path, text: &str) -> Result<(), Problem> {
    use std::io::Write;
    let fail = |e: std::io::Error| {
        Problem::new(format!("cannot write the app's key {}: {e}", path.display())).help("check that the folder is writable, or set STEAD_HOME")
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(fail)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(fail)
}

/// A built bundle read from `dist`, every file checked against the manifest.
#[derive(Debug)]
pub struct Built {
    pub dir: PathBuf,
    pub text: String,
    pub manifest: BundleManifest,
    pub worker: api::FileRef,
}

impl Built {
    pub fn read(dist: &Path) -> Result<Built, Problem> {
        let rebuild = "run `stead build` first (publish builds nothing itself)";
        let mpath = dist.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(|e| Problem::new(format!("cannot read {}: {e}", mpath.display())).help(rebuild))?;
        let manifest = BundleManifest::parse(text.as_bytes()).map_err(|e| Problem::new(format!("{}: {e}", mpath.display())).help(rebuild))?;
        for f in &manifest.files {
            let (sha, size) = hash_file(&dist.join(&f.path)).map_err(|e| Problem::new(format!("cannot read {}: {e}", f.path)).help(rebuild))?;
            if sha != f.sha256 || size != f.size {
                return Err(Problem::new(format!("{} changed since the bundle manifest was written", f.path)).help(rebuild));
            }
        }
        let wpath = dist.join(WORKER_SCRIPT);
        let (sha256, size) = hash_file(&wpath).map_err(|e| Problem::new(format!("cannot read {}: {e}", wpath.display())).help(rebuild))?;
        Ok(Built { dir: dist.to_path_buf(), text, manifest, worker: api::FileRef { sha256, size } })
    }

    /// Every distinct content: the files' and the worker's.
    fn files(&self) -> Vec<api::FileRef> {
        let mut out: Vec<api::FileRef> = self.manifest.files.iter().map(|f| api::FileRef { sha256: f.sha256.clone(), size: f.size }).collect();
        out.push(self.worker.clone());
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        out.dedup_by(|a, b| a.sha256 == b.sha256);
        out
    }

    /// The path of a file with content `sha256`.
    fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        if self.worker.sha256 == sha256 {
            return Some(self.dir.join(WORKER_SCRIPT));
        }
        self.manifest.files.iter().find(|f| f.sha256 == sha256).map(|f| self.dir.join(&f.path))
    }
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let bytes = std::fs::read(path)?;
    Ok((hex::encode(Sha256::digest(&bytes)), bytes.len() as u64))
}

/// A signed-request client of one server for one app.
struct Client {
    http: reqwest::Client,
    target: Target,
    key: SigningKey,
}

/// A server's answer that is not a success, as a problem with a hint.
fn refused(what: &str, status: StatusCode, body: &[u8], target: &Target) -> Problem {
    let problem: Option<api::Problem> = serde_json::from_slice(body).ok();
    let text = problem.map(|p| p.error).unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let hint = match status {
        s if s.is_redirection() => "the server redirects: give --server the address it redirects to (https://…, its exact host)".to_owned(),
        StatusCode::UNAUTHORIZED if text.contains("time") || text.contains("clock") => {
            "check this machine's clock: signed requests must be within a minute of the server's".to_owned()
        }
        StatusCode::UNAUTHORIZED => {
            "the signature covers the Host this client sent: a proxy in front of the server must pass the Host on unchanged".to_owned()
        }
        StatusCode::FORBIDDEN if text.contains("token") => {
            "ask the server's operator for a publish token and pass it with --token-file (or STEAD_PUBLISH_TOKEN)".to_owned()
        }
        StatusCode::FORBIDDEN => format!("the name {:?} is someone else's on this server, or the key is not this app's: pick another --name", target.name),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::INSUFFICIENT_STORAGE => {
            "make the bundle smaller (a release build: stead build --release), or ask the operator for a larger quota".to_owned()
        }
        StatusCode::NOT_FOUND if what == "registry" => "this server has no app registry: start stead-server with --apps-domain".to_owned(),
        s if s.is_server_error() => "the server failed; its log says why. Try again later".to_owned(),
        _ => "run `stead versions` to see the app's state on the server".to_owned(),
    };
    Problem::new(format!("{what}: the server answered {status}: {text}")).help(hint)
}

fn unreachable(e: reqwest::Error, target: &Target) -> Problem {
    // reqwest's top-level message hides the cause (refused, DNS, certificate): show all.
    let mut why = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        why.push_str(&format!(": {s}"));
        source = s.source();
    }
    Problem::new(format!("cannot reach {}: {why}", target.server)).help("check the --server URL (or STEAD_SERVER) and that the server runs")
}

impl Client {
    fn new(target: Target, key: SigningKey) -> Result<Client, Problem> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            // A redirect (http to https, another host) would turn a signed POST into a GET
            // or carry the publish token elsewhere: say so instead of following it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Problem::new(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client { http, target, key })
    }

    fn url(&self, path: &str) -> Result<Url, Problem> {
        self.target.server.join(path).map_err(|e| Problem::new(format!("bad path {path}: {e}")))
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Vec<u8>), Problem> {
        let r = self.http.get(self.url(path)?).send().await.map_err(|e| unreachable(e, &self.target))?;
        let status = r.status();
        Ok((status, r.bytes().await.map_err(|e| unreachable(e, &self.target))?.to_vec()))
    }

    /// A signed request; `signed_sha` is what the signature says the body hashes to.
    async fn signed(&self, method: Method, path: &str, body: Vec<u8>, signed_sha: [u8; 32]) -> Result<(StatusCode, Vec<u8>), Problem> {
        let nonce = registry::nonce().map_err(|e| Problem::new(format!("the OS gave no random bytes: {e}")))?;
        let auth = registry::authorization(&self.key, SystemClock.now_ms(), &nonce, method.as_str(), &self.target.authority(), path, &signed_sha);
        let mut req = self.http.request(method, self.url(path)?).header(header::AUTHORIZATION, auth).body(body);
        if let Some(t) = &self.target.token {
            req = req.header(registry::TOKEN_HEADER, t.trim());
        }
        let r = req.send().await.map_err(|e| unreachable(e, &self.target))?;
        let status = r.status();
        Ok((status, r.bytes().await.map_err(|e| unreachable(e, &self.target))?.to_vec()))
    }

    async fn json<T: serde::Serialize>(&self, path: &str, value: &T) -> Result<(StatusCode, Vec<u8>), Problem> {
        let body = serde_json::to_vec(value).map_err(|e| Problem::new(format!("cannot encode the request: {e}")))?;
        let sha = Sha256::digest(&body).into();
        self.signed(Method::POST, path, body, sha).await
    }

    async fn info(&self) -> Result<api::ServerInfo, Problem> {
        let (status, body) = self.get("/_registry/v1/").await?;
        if !status.is_success() {
            return Err(refused("registry", status, &body, &self.target));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Problem::new(format!("the server's registry answer is not understood: {e}")).help("is --server a Stead server?"))
    }

    /// The app's versions; `None` when the server does not know the app.
    async fn versions(&self) -> Result<Option<api::Versions>, Problem> {
        let (status, body) = self.get(&self.target.app_path("versions")).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(refused("versions", status, &body, &self.target));
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| Problem::new(format!("the server's version list is not understood: {e}")))
    }

    async fn upload(&self, path: PathBuf, sha256: String) -> Result<u64, Problem> {
        let bytes = tokio::fs::read(&path).await.map_err(|e| Problem::new(format!("cannot read {}: {e}", path.display())))?;
        let n = bytes.len() as u64;
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        if hex::encode(sha) != sha256 {
            return Err(Problem::new(format!("{} changed while publishing", path.display())).help("run `stead build`, then publish again"));
        }
        let (status, body) = self.signed(Method::PUT, &self.target.app_path(&format!("files/{sha256}")), bytes, sha).await?;
        if !status.is_success() {
            return Err(refused(&format!("upload of {}", path.display()), status, &body, &self.target));
        }
        Ok(n)
    }
}

/// What a publication did.
#[derive(Debug)]
pub struct Published {
    pub url: String,
    pub version: String,
    pub app_id: String,
    pub uploaded_files: usize,
    pub uploaded_bytes: u64,
    pub key_path: PathBuf,
    pub key_created: bool,
    pub elapsed: Duration,
}

/// Publishes the bundle in `dist` as `target.name`.
pub async fn publish(target: Target, dist: &Path, app_dir: Option<&Path>) -> Result<Published, Problem> {
    let started = Instant::now();
    let built = Arc::new(Built::read(dist)?);
    let (key, key_path, key_created) = app_key(&target.name, app_dir)?;
    let client = Arc::new(Client::new(target.clone(), key.clone())?);
    client.info().await?;
    let previous = client.versions().await?.and_then(|v| v.current);
    let version = built.manifest.version.clone();
    let signature = key.sign(&registry::release_message(&target.name, &version, &built.worker.sha256, built.worker.size));
    let publication = api::PublishRequest {
        manifest: built.text.clone(),
        worker: built.worker.clone(),
        signature: hex::encode(signature.to_bytes()),
        previous: previous.clone(),
    };
    let files = built.files();
    let (mut uploaded_files, mut uploaded_bytes) = (0, 0);
    for round in 1..=ROUNDS {
        let (status, body) = client.json(&target.app_path("missing"), &api::MissingRequest { files: files.clone() }).await?;
        if !status.is_success() {
            return Err(refused("asking which files the server lacks", status, &body, &target));
        }
        let missing: api::MissingResponse = serde_json::from_slice(&body).map_err(|e| Problem::new(format!("the server's answer is not understood: {e}")))?;
        let total: u64 = missing.missing.iter().filter_map(|s| files.iter().find(|f| &f.sha256 == s)).map(|f| f.size).sum();
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template("uploading {bar:30} {bytes}/{total_bytes} {msg}") {
            bar.set_style(style);
        }
        bar.set_message(format!("{} files", missing.missing.len()));
        let mut jobs = Vec::new();
        for sha in missing.missing {
            let path = built.path_of(&sha).ok_or_else(|| Problem::new(format!("the server asked for {sha}, which this bundle does not have")))?;
            let c = client.clone();
            jobs.push(async move { c.upload(path, sha).await });
        }
        let mut uploads = futures::stream::iter(jobs).buffer_unordered(UPLOADS);
        while let Some(done) = uploads.next().await {
            let n = done.inspect_err(|_| bar.abandon())?;
            bar.inc(n);
            uploaded_files += 1;
            uploaded_bytes += n;
        }
        bar.finish_and_clear();
        let (status, body) = client.json(&target.app_path("versions"), &publication).await?;
        match status {
            StatusCode::CREATED => {
                let moved: api::Moved = serde_json::from_slice(&body).map_err(|e| Problem::new(format!("the server's answer is not understood: {e}")))?;
                return Ok(Published {
                    url: app_url(&target, &moved),
                    version,
                    app_id: moved.app_id,
                    uploaded_files,
                    uploaded_bytes,
                    key_path,
                    key_created,
                    elapsed: started.elapsed(),
                });
            }
            StatusCode::CONFLICT => {
                let p: api::Problem = serde_json::from_slice(&body).unwrap_or_default();
                let now = p.current.unwrap_or_else(|| "none".into());
                return Err(Problem::new(format!("{} was published meanwhile (current is now {}): nothing was replaced", target.name, short(&now)))
                    .help("see it with `stead versions`; run `stead publish` again to publish this build on top of it"));
            }
            // Files went missing meanwhile: ask again. Any other 422 is final.
            StatusCode::UNPROCESSABLE_ENTITY
                if round < ROUNDS && serde_json::from_slice::<api::Problem>(&body).is_ok_and(|p| !p.missing.is_empty()) =>
            {
                continue
            }
            _ => return Err(refused("publishing", status, &body, &target)),
        }
    }
    Err(Problem::new("the server kept asking for files after they were uploaded").help("try again; if it persists, the server's log says why"))
}

/// The app's address: the server's own answer, with the scheme and port this client
/// reached it by (a server behind a proxy cannot know them).
fn app_url(target: &Target, moved: &api::Moved) -> String {
    let domain = moved.url.split("://").nth(1).and_then(|rest| rest.split(['/', ':']).next()).unwrap_or_default().to_owned();
    let port = target.server.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{domain}{port}/", target.server.scheme())
}

/// The first 12 hex digits of a version, as versions are shown.
pub fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

/// The app's versions on the server, newest first.
pub async fn versions(target: Target) -> Result<api::Versions, Problem> {
    let client = Client::new(target.clone(), SigningKey::from_bytes(&[0; 32]))?;
    client.info().await?;
    client
        .versions()
        .await?
        .ok_or_else(|| Problem::new(format!("{} is not published on {}", target.name, target.server)).help("publish it first: stead publish"))
}

/// Makes an earlier version (given whole or by a prefix of 8 or more hex digits) current.
pub async fn rollback(target: Target, to: &str, app_dir: Option<&Path>) -> Result<api::Moved, Problem> {
    let listed = versions(target.clone()).await?;
    let matches: Vec<&api::VersionInfo> = listed.versions.iter().filter(|v| to.len() >= 8 && v.version.starts_with(to)).collect();
    let version = match matches.as_slice() {
        [one] => one.version.clone(),
        [] => {
            return Err(
                Problem::new(format!("{to:?} is not a kept version of {}", target.name)).help("`stead versions` lists them; give 8 or more digits of one")
            );
        }
        _ => return Err(Problem::new(format!("{to:?} names more than one version")).help("give more digits")),
    };
    let path = key_dir()?.join(format!("{}.key", target.name));
    if !path.is_file() {
        return Err(Problem::new(format!("no key for {} on this machine ({})", target.name, path.display()))
            .help("only the key that published an app can roll it back: restore the key file from your backup"));
    }
    let (key, _, _) = app_key(&target.name, app_dir)?;
    let client = Client::new(target.clone(), key)?;
    let body = api::RollbackRequest { to: version, previous: listed.current.clone() };
    let (status, body) = client.json(&target.app_path("rollback"), &body).await?;
    match status {
        StatusCode::CREATED => serde_json::from_slice(&body).map_err(|e| Problem::new(format!("the server's answer is not understood: {e}"))),
        StatusCode::CONFLICT => {
            Err(Problem::new(format!("{} was published meanwhile: nothing was rolled back", target.name))
                .help("look again with `stead versions`, then roll back"))
        }
        _ => Err(refused("rolling back", status, &body, &target)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::new("http://127.0.0.1:8080/some/path?q", Some("todo"), None, None).unwrap();
        assert_eq!((t.server.as_str(), t.authority().as_str()), ("http://127.0.0.1:8080/", "127.0.0.1:8080"));
        assert_eq!(Target::new("https://apps.example.com", Some("todo"), None, None).unwrap().authority(), "apps.example.com");
        for (server, name) in [("ftp://x", "todo"), ("not a url", "todo"), ("http://x", "Todo"), ("http://x", "www"), ("http://x", "a.b")] {
            let e = Target::new(server, Some(name), None, None).unwrap_err();
            assert!(e.help.is_some(), "{server} {name}: a hint");
        }
    }

    #[test]
    fn a_stale_dist_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("index.html"), "<h1>a</h1>").unwrap();
        std::fs::write(d.path().join(WORKER_SCRIPT), "sw").unwrap();
        crate::build::write_bundle_manifest(d.path()).unwrap();
        let built = Built::read(d.path()).unwrap();
        assert_eq!(built.files().len(), 2);
        std::fs::write(d.path().join("index.html"), "<h1>b</h1>").unwrap();
        let e = Built::read(d.path()).unwrap_err();
        assert!(e.message.contains("changed") && e.help.unwrap().contains("stead build"), "{}", e.message);
        std::fs::remove_file(d.path().join(MANIFEST_FILE)).unwrap();
        assert!(Built::read(d.path()).unwrap_err().help.unwrap().contains("stead build"));
    }
}
