//! The app registry through a real `stead-server` process: publishing, the missing-digest
//! negotiation, compare-and-swap races, rollback, signatures, limits, replay, the new-app
//! token policy, files shared and kept, and each app served at its own origin
//! (`{app}.localhost`) with its bytes checked. The same suite runs on SQLite and PostgreSQL.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;

use anyhow::{Context, ensure};
use common::{Db, Pg, Server, now, off_runtime};
use ed25519_dalek::{Signer, SigningKey};
use reqwest::{StatusCode, header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use stead_core::bundle::{BundleFile, BundleManifest, FILES_BATCH, batch_query, is_content_hashed, sha256_hex};
use stead_server::registry::{api, authorization, nonce, release_message};

const TOKEN: &str = "operator-token-0123456789";

/// A publisher of one app: its key and the server it talks to.
struct Publisher {
    http: reqwest::Client,
    base: String,
    host: String,
    key: SigningKey,
    name: String,
    token: Option<String>,
}

/// A bundle in memory: its manifest text and its files (the worker apart).
struct Bundle {
    manifest: BundleManifest,
    text: String,
    files: Vec<Vec<u8>>,
    worker: Vec<u8>,
}

fn bundle(files: &[(&str, &[u8])], worker: &[u8]) -> Bundle {
    let list = files
        .iter()
        .map(|(path, bytes)| BundleFile {
            path: (*path).to_owned(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            mime: stead_server::mime_for(path),
            immutable: is_content_hashed(path),
        })
        .collect();
    let manifest = BundleManifest::new("index.html", list).expect("a valid bundle");
    let text = manifest.to_json();
    Bundle { manifest, text, files: files.iter().map(|f| f.1.to_vec()).collect(), worker: worker.to_vec() }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

impl Publisher {
    fn new(server: &Server, name: &str, key: SigningKey) -> Publisher {
        let host = server.base.trim_start_matches("http://").to_owned();
        Publisher { http: reqwest::Client::new(), base: server.base.clone(), host, key, name: name.to_owned(), token: None }
    }

    /// A signed request; `body_sha` overrides the body's hash (uploads sign the digest).
    fn signed(&self, method: reqwest::Method, path: &str, body: Vec<u8>, body_sha: Option<[u8; 32]>) -> reqwest::RequestBuilder {
        let sha = body_sha.unwrap_or_else(|| Sha256::digest(&body).into());
        let auth = authorization(&self.key, now(), &nonce().expect("random bytes"), method.as_str(), &self.host, path, &sha);
        let mut r = self.http.request(method, format!("{}{path}", self.base)).header(header::AUTHORIZATION, auth).body(body);
        if let Some(t) = &self.token {
            r = r.header("stead-publish-token", t);
        }
        r
    }

    fn path(&self, rest: &str) -> String {
        format!("/_registry/v1/apps/{}/{rest}", self.name)
    }

    async fn missing(&self, b: &Bundle) -> anyhow::Result<(StatusCode, Value)> {
        let mut files: Vec<api::FileRef> = b.manifest.files.iter().map(|f| api::FileRef { sha256: f.sha256.clone(), size: f.size }).collect();
        files.push(api::FileRef { sha256: sha256_hex(&b.worker), size: b.worker.len() as u64 });
        let body = serde_json::to_vec(&api::MissingRequest { files })?;
        let r = self.signed(reqwest::Method::POST, &self.path("missing"), body, None).send().await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn put(&self, bytes: &[u8]) -> anyhow::Result<StatusCode> {
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        self.put_as(&hex::encode(sha), bytes.to_vec(), sha).await
    }

    async fn put_as(&self, sha: &str, body: Vec<u8>, signed: [u8; 32]) -> anyhow::Result<StatusCode> {
        Ok(self.signed(reqwest::Method::PUT, &self.path(&format!("files/{sha}")), body, Some(signed)).send().await?.status())
    }

    fn publication(&self, b: &Bundle, previous: Option<&str>, release_key: &SigningKey) -> Vec<u8> {
        let worker_sha = sha256_hex(&b.worker);
        let sig = release_key.sign(&release_message(&self.name, &b.manifest.version, &worker_sha, b.worker.len() as u64));
        let req = api::PublishRequest {
            manifest: b.text.clone(),
            worker: api::FileRef { sha256: worker_sha, size: b.worker.len() as u64 },
            signature: hex::encode(sig.to_bytes()),
            previous: previous.map(str::to_owned),
        };
        serde_json::to_vec(&req).expect("serializes")
    }

    async fn publish_only(&self, b: &Bundle, previous: Option<&str>) -> anyhow::Result<(StatusCode, Value)> {
        let body = self.publication(b, previous, &self.key);
        let r = self.signed(reqwest::Method::POST, &self.path("versions"), body, None).send().await?;
        Ok((r.status(), r.json().await?))
    }

    /// The whole flow: ask what is missing, upload it, publish. Returns the digests uploaded.
    async fn publish(&self, b: &Bundle, previous: Option<&str>) -> anyhow::Result<Vec<String>> {
        let (status, missing) = self.missing(b).await?;
        ensure!(status == StatusCode::OK, "missing: {status} {missing}");
        let missing: Vec<String> = serde_json::from_value(missing["missing"].clone())?;
        for sha in &missing {
            let bytes = b.files.iter().chain([&b.worker]).find(|f| sha256_hex(f) == *sha).context("asked for a file we do not have")?;
            let s = self.put(bytes).await?;
            ensure!(s == StatusCode::CREATED || s == StatusCode::OK, "upload {sha}: {s}");
        }
        let (status, body) = self.publish_only(b, previous).await?;
        ensure!(status == StatusCode::CREATED, "publish: {status} {body}");
        ensure!(body["current"] == b.manifest.version.as_str(), "{body}");
        Ok(missing)
    }

    async fn rollback(&self, to: &str, previous: Option<&str>) -> anyhow::Result<(StatusCode, Value)> {
        let body = serde_json::to_vec(&api::RollbackRequest { to: to.to_owned(), previous: previous.map(str::to_owned) })?;
        let r = self.signed(reqwest::Method::POST, &self.path("rollback"), body, None).send().await?;
        Ok((r.status(), r.json().await?))
    }

    async fn versions(&self) -> anyhow::Result<Value> {
        Ok(self.http.get(format!("{}{}", self.base, self.path("versions"))).send().await?.json().await?)
    }
}

/// A client that sends `{app}.localhost` to the server, as a browser would.
fn browser(server: &Server, apps: &[&str]) -> reqwest::Client {
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().expect("an address");
    let mut b = reqwest::Client::builder();
    for app in apps {
        b = b.resolve(&format!("{app}.localhost"), addr);
    }
    b.build().expect("a client")
}

async fn get(c: &reqwest::Client, server: &Server, app: &str, path: &str) -> anyhow::Result<(StatusCode, header::HeaderMap, Vec<u8>)> {
    let r = c.get(format!("http://{app}.localhost:{}{path}", server.port)).header(header::ACCEPT, "text/html").send().await?;
    Ok((r.status(), r.headers().clone(), r.bytes().await?.to_vec()))
}

/// A raw request with exactly these header lines; returns the status.
fn raw(server: &Server, head: &str) -> anyhow::Result<u16> {
    let mut s = std::net::TcpStream::connect(server.base.trim_start_matches("http://"))?;
    write!(s, "GET / HTTP/1.1\r\n{head}Connection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    Ok(String::from_utf8_lossy(resp.get(9..12).unwrap_or_default()).parse()?)
}

/// Runs SQL on the test's database (to look at or damage stored files).
fn sql(db: &Db, statement: &str, sha: &str) -> anyhow::Result<u64> {
    let sha = hex::decode(sha)?;
    off_runtime(|| match db {
        Db::Sqlite(p) => Ok(rusqlite::Connection::open(p)?.execute(&statement.replace("$1", "?1"), [&sha])? as u64),
        Db::Postgres(url) => Ok(postgres::Client::connect(url, postgres::NoTls)?.execute(statement, &[&sha])?),
    })
}

/// Overwrites a stored file's bytes, as a failing disk or a meddling hand would.
fn tamper(db: &Db, sha: &str, bytes: &[u8]) -> anyhow::Result<u64> {
    let sha = hex::decode(sha)?;
    off_runtime(|| match db {
        Db::Sqlite(p) => Ok(rusqlite::Connection::open(p)?.execute("UPDATE app_files SET bytes = ?2 WHERE sha = ?1", rusqlite::params![sha, bytes])? as u64),
        Db::Postgres(url) => Ok(postgres::Client::connect(url, postgres::NoTls)?.execute("UPDATE app_files SET bytes = $2 WHERE sha = $1", &[&sha, &bytes])?),
    })
}

fn stored(db: &Db, sha: &str) -> anyhow::Result<bool> {
    Ok(sql(db, "UPDATE app_files SET size = size WHERE sha = $1", sha)? == 1)
}

const JS: &[u8] = b"console.log('shared with notes')";

async fn suite(db: Db) -> anyhow::Result<()> {
    let server = Server::start(&db, &["--apps-domain", "localhost", "--new-apps", "open", "--max-app-versions", "3", "--max-app-file-bytes", "1000"])?;
    let todo = Publisher::new(&server, "todo", key(1));
    let web = browser(&server, &["todo", "notes", "nope", "www"]);

    // First publication: every file is missing, and each is uploaded once.
    let v1 = bundle(&[("index.html", b"<h1>todo v1</h1>"), ("todo-0123456789abcdef.js", JS), ("old.css", b"h1{color:red}")], b"worker v1");
    let uploaded = todo.publish(&v1, None).await?;
    ensure!(uploaded.len() == 4, "all 3 files and the worker: {uploaded:?}");

    // Served at its own origin with the bundle server's headers.
    let (s, h, body) = get(&web, &server, "todo", "/").await?;
    ensure!(s == StatusCode::OK && body == b"<h1>todo v1</h1>", "{s} {body:?}");
    ensure!(h[header::CACHE_CONTROL] == "no-cache" && h[header::ETAG] == format!("\"{}\"", sha256_hex(b"<h1>todo v1</h1>")));
    let (s, h, body) = get(&web, &server, "todo", "/todo-0123456789abcdef.js").await?;
    ensure!(s == StatusCode::OK && body == JS && h[header::CACHE_CONTROL] == "public, max-age=31536000, immutable");
    let (s, h, body) = get(&web, &server, "todo", "/stead-sw.js").await?;
    ensure!(s == StatusCode::OK && body == b"worker v1" && h[header::CACHE_CONTROL] == "no-cache" && h["service-worker-allowed"] == "/");
    let (s, _, body) = get(&web, &server, "todo", "/stead-bundle.json").await?;
    ensure!(s == StatusCode::OK && body == v1.text.as_bytes(), "the signed manifest as published");
    let (s, _, body) = get(&web, &server, "todo", "/lists/42").await?;
    ensure!(s == StatusCode::OK && body == b"<h1>todo v1</h1>", "a navigation gets the entry document");
    let r = web
        .get(format!("http://todo.localhost:{}/todo-0123456789abcdef.js", server.port))
        .header(header::IF_NONE_MATCH, format!("\"{}\"", sha256_hex(JS)))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::NOT_MODIFIED);
    ensure!(get(&web, &server, "todo", "/missing.js").await?.0 == StatusCode::NOT_FOUND);
    // A worker's install takes the files a batch at a time: back to back, in manifest
    // order (index.html, old.css, the script), for the version being served only.
    let (s, h, body) = get(&web, &server, "todo", &format!("/{FILES_BATCH}?{}", batch_query(&v1.manifest.version, &[0, 2]))).await?;
    ensure!(s == StatusCode::OK && h[header::CONTENT_TYPE] == "application/octet-stream", "{s}");
    ensure!(body == [&b"<h1>todo v1</h1>"[..], JS].concat(), "{:?}", String::from_utf8_lossy(&body));
    let (s, ..) = get(&web, &server, "todo", &format!("/{FILES_BATCH}?{}", batch_query(&"0".repeat(64), &[0]))).await?;
    ensure!(s == StatusCode::CONFLICT, "another version: {s}");
    let (s, ..) = get(&web, &server, "todo", &format!("/{FILES_BATCH}?version={}&files=0,0", v1.manifest.version)).await?;
    ensure!(s == StatusCode::BAD_REQUEST, "a file twice: {s}");
    // Sync and health answer on the app's origin too.
    ensure!(get(&web, &server, "todo", "/healthz").await?.2 == b"ok");
    let (s, _, body) = get(&web, &server, "todo", "/metrics").await?;
    ensure!(s == StatusCode::OK && String::from_utf8_lossy(&body).contains("stead_"), "the sync server's routes answer on the app's origin");
    let (s, _, _) = get(&web, &server, "todo", "/spaces/not-a-space/members").await?;
    ensure!(s == StatusCode::BAD_REQUEST, "{s}: membership, not an app file");
    // The bare host is the catalog, which lists the app.
    let catalog = reqwest::get(format!("{}/", server.base)).await?.text().await?;
    ensure!(catalog.contains("data-app=\"todo\""), "{catalog}");

    // The same files with another worker: refused, not reported as a publication that
    // serves nothing new.
    let other_worker = bundle(&[("index.html", b"<h1>todo v1</h1>"), ("todo-0123456789abcdef.js", JS), ("old.css", b"h1{color:red}")], b"worker v9");
    ensure!(todo.missing(&other_worker).await?.0 == StatusCode::OK);
    ensure!(todo.put(b"worker v9").await? == StatusCode::CREATED);
    let (s, body) = todo.publish_only(&other_worker, Some(&v1.manifest.version)).await?;
    ensure!(s == StatusCode::UNPROCESSABLE_ENTITY && body["error"].as_str().is_some_and(|e| e.contains("another worker")), "{s} {body}");
    ensure!(get(&web, &server, "todo", "/stead-sw.js").await?.2 == b"worker v1", "the stored worker stays");

    // A one-file update uploads that file alone.
    let v2 = bundle(&[("index.html", b"<h1>todo v2</h1>"), ("todo-0123456789abcdef.js", JS), ("old.css", b"h1{color:red}")], b"worker v1");
    let uploaded = todo.publish(&v2, Some(&v1.manifest.version)).await?;
    ensure!(uploaded == vec![sha256_hex(b"<h1>todo v2</h1>")], "{uploaded:?}");
    ensure!(get(&web, &server, "todo", "/").await?.2 == b"<h1>todo v2</h1>");

    // A second app shares the script: it is not uploaded again.
    let notes = Publisher::new(&server, "notes", key(2));
    let n1 = bundle(&[("index.html", b"<h1>notes</h1>"), ("notes-0123456789abcdef.js", JS)], b"worker v1");
    let uploaded = notes.publish(&n1, None).await?;
    ensure!(uploaded == vec![sha256_hex(b"<h1>notes</h1>")], "only the new index: {uploaded:?}");
    ensure!(get(&web, &server, "notes", "/").await?.2 == b"<h1>notes</h1>");
    ensure!(get(&web, &server, "todo", "/").await?.2 == b"<h1>todo v2</h1>", "each app at its own origin");

    // Two publishers race from v2: exactly one wins, the other is told the actual current.
    let a = bundle(&[("index.html", b"<h1>todo a</h1>"), ("todo-0123456789abcdef.js", JS)], b"worker v1");
    let b = bundle(&[("index.html", b"<h1>todo b</h1>"), ("todo-0123456789abcdef.js", JS)], b"worker v1");
    for x in [&a, &b] {
        todo.missing(x).await?;
        todo.put(&x.files[0]).await?;
    }
    let prev = v2.manifest.version.as_str();
    let (ra, rb) = tokio::join!(todo.publish_only(&a, Some(prev)), todo.publish_only(&b, Some(prev)));
    let (ra, rb) = (ra?, rb?);
    let statuses = [ra.0, rb.0];
    ensure!(statuses.contains(&StatusCode::CREATED) && statuses.contains(&StatusCode::CONFLICT), "{ra:?} {rb:?}");
    let (winner, loser, lost) = if ra.0 == StatusCode::CREATED { (&a, &b, &rb.1) } else { (&b, &a, &ra.1) };
    ensure!(lost["current"] == winner.manifest.version.as_str(), "the 409 names the actual current: {lost}");
    // The loser publishes again on top of the winner: no version is lost.
    let (s, body) = todo.publish_only(loser, Some(&winner.manifest.version)).await?;
    ensure!(s == StatusCode::CREATED, "{s} {body}");
    // Four versions, three kept: v1 is trimmed; its own file goes, its shared ones stay.
    ensure!(body["trimmed"] == serde_json::json!([v1.manifest.version]), "{body}");
    let listed = todo.versions().await?;
    let names: Vec<&str> = listed["versions"].as_array().context("versions")?.iter().filter_map(|v| v["version"].as_str()).collect();
    ensure!(names == [loser.manifest.version.as_str(), winner.manifest.version.as_str(), prev], "{listed}");
    ensure!(listed["current"] == loser.manifest.version.as_str());
    ensure!(stored(&db, &sha256_hex(b"h1{color:red}"))?, "old.css is still listed by v2");
    ensure!(!stored(&db, &sha256_hex(b"<h1>todo v1</h1>"))?, "v1's own index is gone with v1");
    ensure!(stored(&db, &sha256_hex(b"worker v1"))?);

    // Rollback to v2, by compare-and-swap too.
    let (s, body) = todo.rollback(prev, Some(&winner.manifest.version)).await?;
    ensure!(s == StatusCode::CONFLICT && body["current"] == loser.manifest.version.as_str(), "stale previous: {s} {body}");
    let (s, body) = todo.rollback(prev, Some(&loser.manifest.version)).await?;
    ensure!(s == StatusCode::CREATED, "{s} {body}");
    ensure!(get(&web, &server, "todo", "/").await?.2 == b"<h1>todo v2</h1>");
    let (s, _) = todo.rollback(&v1.manifest.version, Some(prev)).await?;
    ensure!(s == StatusCode::NOT_FOUND, "a trimmed version is gone");
    // Trimming todo's versions never takes a file notes lists.
    for (i, page) in [b"<h1>t5</h1>", b"<h1>t6</h1>", b"<h1>t7</h1>"].into_iter().enumerate() {
        let x = bundle(&[("index.html", page)], b"worker v1");
        let current = todo.versions().await?["current"].as_str().context("current")?.to_owned();
        todo.publish(&x, Some(&current)).await.with_context(|| format!("t{}", i + 5))?;
    }
    ensure!(!stored(&db, &sha256_hex(b"h1{color:red}"))?, "no kept version lists old.css");
    ensure!(stored(&db, &sha256_hex(JS))?, "notes still lists the shared script");
    ensure!(get(&web, &server, "notes", "/notes-0123456789abcdef.js").await?.2 == JS);

    // Another key cannot publish to todo, nor sign its release.
    let thief = Publisher::new(&server, "todo", key(9));
    let (s, body) = thief.publish_only(&v2, Some(prev)).await?;
    ensure!(s == StatusCode::FORBIDDEN, "{s} {body}");
    ensure!(thief.missing(&v2).await?.0 == StatusCode::FORBIDDEN);
    let body = todo.publication(&v2, Some(prev), &key(9));
    let r = todo.signed(reqwest::Method::POST, &todo.path("versions"), body, None).send().await?;
    ensure!(r.status() == StatusCode::FORBIDDEN, "a release signed by another key: {}", r.status());

    // Uploads: only announced digests, bodies that match them, within the size limit.
    let fresh = bundle(&[("index.html", b"<h1>fresh</h1>")], b"worker v1");
    ensure!(todo.put(b"never announced").await? == StatusCode::FORBIDDEN, "the server is no open file host");
    todo.missing(&fresh).await?;
    let sha: [u8; 32] = Sha256::digest(b"<h1>fresh</h1>").into();
    ensure!(todo.put_as(&hex::encode(sha), b"<h1>FRESH</h1>".to_vec(), sha).await? == StatusCode::BAD_REQUEST, "a body that does not match its digest");
    ensure!(!stored(&db, &hex::encode(sha))?);
    ensure!(todo.put_as(&hex::encode(sha), vec![b'x'; 2000], sha).await? == StatusCode::PAYLOAD_TOO_LARGE, "a body larger than announced");
    let big = vec![b'x'; 1001];
    let huge = bundle(&[("index.html", &big)], b"worker v1");
    ensure!(todo.missing(&huge).await?.0 == StatusCode::PAYLOAD_TOO_LARGE, "a file over --max-app-file-bytes");
    let (s, body) = todo.publish_only(&fresh, Some(todo.versions().await?["current"].as_str().context("current")?)).await?;
    ensure!(s == StatusCode::UNPROCESSABLE_ENTITY && body["missing"] == serde_json::json!([hex::encode(sha)]), "names what is missing: {s} {body}");

    // A signed request is taken once, and only near the server's time.
    let c = reqwest::Client::new();
    let body = serde_json::to_vec(&api::MissingRequest { files: vec![] })?;
    let req = todo.signed(reqwest::Method::POST, &todo.path("missing"), body, None).build()?;
    let replay = req.try_clone().context("clone")?;
    ensure!(c.execute(req).await?.status() == StatusCode::OK);
    let r = c.execute(replay).await?;
    ensure!(r.status() == StatusCode::UNAUTHORIZED && r.text().await?.contains("already used"), "a replayed request is refused");
    // A request signed for another server (one key publishes an app everywhere), replayed
    // here with its Host, is not taken.
    let mut elsewhere = Publisher::new(&server, "todo", key(1));
    elsewhere.host = "apps.example.com".into();
    let body = serde_json::to_vec(&api::MissingRequest { files: vec![] })?;
    let r = elsewhere.signed(reqwest::Method::POST, &elsewhere.path("missing"), body, None).header(header::HOST, "apps.example.com").send().await?;
    ensure!(r.status() == StatusCode::MISDIRECTED_REQUEST, "a request signed for another server: {}", r.status());
    let old = authorization(
        &todo.key,
        now() - 10 * 60 * 1000,
        &nonce().expect("random bytes"),
        "POST",
        &todo.host,
        &todo.path("missing"),
        &Sha256::digest(b"{\"files\":[]}").into(),
    );
    let r = c.post(format!("{}{}", todo.base, todo.path("missing"))).header(header::AUTHORIZATION, old).body("{\"files\":[]}").send().await?;
    ensure!(r.status() == StatusCode::UNAUTHORIZED, "a request from 10 minutes ago: {}", r.status());

    // A stored file that changed is refused, never served.
    let index = sha256_hex(b"<h1>notes</h1>");
    ensure!(tamper(&db, &index, b"<h1>tampered</h1>")? == 1);
    let (s, _, body) = get(&web, &server, "notes", "/").await?;
    let body = String::from_utf8_lossy(&body);
    ensure!(s == StatusCode::INTERNAL_SERVER_ERROR && body.contains("corrupt") && !body.contains("tampered"), "{s} {body}");
    // A fresh client: the cut batch may be cut before its head, and must not leave a
    // half-read connection in the pool the later requests share.
    let batch = browser(&server, &["notes"]).get(format!("http://notes.localhost:{}/{FILES_BATCH}?{}", server.port, batch_query(&n1.manifest.version, &[0, 1]))).send().await;
    ensure!(
        match batch {
            Ok(batch) => batch.bytes().await.is_err(),
            Err(e) => !e.is_connect() && !e.is_timeout(),
        },
        "a batch holding the damaged file ends short"
    );

    // Unknown apps and hostile Host headers.
    ensure!(get(&web, &server, "nope", "/").await?.0 == StatusCode::NOT_FOUND);
    ensure!(get(&web, &server, "www", "/").await?.0 == StatusCode::NOT_FOUND, "a reserved name is no app");
    let port = server.port;
    ensure!(raw(&server, &format!("Host: todo.localhost:{port}\r\n"))? == 200);
    ensure!(raw(&server, &format!("Host: a.b.localhost:{port}\r\n"))? == 404);
    ensure!(raw(&server, "Host: to_do.localhost\r\n")? == 400);
    ensure!(raw(&server, "Host: todo.localhost:http\r\n")? == 400);
    ensure!(raw(&server, "Host: todo.localhost\r\nHost: notes.localhost\r\n")? == 400);
    ensure!(raw(&server, "Host: t\u{e9}st.localhost\r\n")? == 400);
    ensure!(raw(&server, &format!("Host: localhost:{port}\r\n"))? == 200, "the bare domain serves the catalog");

    // The public list.
    let list: Vec<api::AppInfo> = reqwest::get(format!("{}/_registry/v1/apps", server.base)).await?.json().await?;
    let names: Vec<&str> = list.iter().map(|a| a.name.as_str()).collect();
    ensure!(names == ["notes", "todo"], "{names:?}");
    ensure!(list[1].app_id == hex::encode(key(1).verifying_key().to_bytes()) && list[1].url == format!("http://todo.localhost:{port}/"));
    Ok(())
}

/// `--new-apps token`: a new name needs an operator's token; an app's own key needs none.
async fn token_policy(db: Db) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# publish tokens\n{TOKEN}\n"))?;
    let server = Server::start(
        &db,
        &["--apps-domain", "localhost", "--new-apps", "token", "--publish-tokens-file", &tokens.display().to_string(), "--max-app-bytes", "64"],
    )?;
    let mut p = Publisher::new(&server, "field-notes", key(3));
    let v1 = bundle(&[("index.html", b"<h1>fn</h1>")], b"w");
    let (s, body) = p.missing(&v1).await?;
    ensure!(s == StatusCode::FORBIDDEN && body["error"].as_str().unwrap_or("").contains("token"), "{s} {body}");
    p.token = Some("not-the-operator-token".into());
    ensure!(p.missing(&v1).await?.0 == StatusCode::FORBIDDEN);
    p.token = Some(TOKEN.into());
    p.publish(&v1, None).await?;
    p.token = None;
    let v2 = bundle(&[("index.html", b"<h1>fn 2</h1>")], b"w");
    p.publish(&v2, Some(&v1.manifest.version)).await.context("the app's own key needs no token")?;
    // Announced uploads count against the app's quota too, so announcing is no way to
    // store without bound.
    let big = bundle(&[("index.html", &[b'a'; 40])], b"w");
    ensure!(p.missing(&big).await?.0 == StatusCode::OK);
    let other = bundle(&[("index.html", &[b'b'; 40])], b"w");
    let (s, body) = p.missing(&other).await?;
    ensure!(s == StatusCode::INSUFFICIENT_STORAGE, "{s} {body}");
    // A version that fits alone but not beside the kept ones: the oldest kept version
    // gives way (never the current), rather than every later publication being refused.
    ensure!(p.put(&[b'a'; 40]).await? == StatusCode::CREATED);
    let (s, body) = p.publish_only(&big, Some(&v2.manifest.version)).await?;
    ensure!(s == StatusCode::CREATED && body["trimmed"] == serde_json::json!([v1.manifest.version]), "{s} {body}");
    let kept: Vec<String> = p.versions().await?["versions"].as_array().context("versions")?.iter().filter_map(|v| v["version"].as_str().map(str::to_owned)).collect();
    ensure!(kept == [big.manifest.version.clone(), v2.manifest.version.clone()], "{kept:?}");
    let mut bad = Publisher::new(&server, "www", key(3));
    bad.token = Some(TOKEN.into());
    ensure!(bad.missing(&v1).await?.0 == StatusCode::BAD_REQUEST, "reserved names are refused");
    Ok(())
}

/// The catalog at the bare host: server-rendered, publishers' words escaped, and a Stead
/// bundle (with the operator's worker) whose version moves with every publication.
async fn catalog(db: Db) -> anyhow::Result<()> {
    let worker_file = tempfile::NamedTempFile::new()?;
    std::fs::write(worker_file.path(), b"the operator's stead-sw.js")?;
    let worker_arg = worker_file.path().display().to_string();
    let server = Server::start(&db, &["--apps-domain", "localhost", "--new-apps", "open", "--catalog-worker", &worker_arg])?;
    let http = reqwest::Client::new();
    let page = |http: &reqwest::Client| {
        let url = format!("{}/", server.base);
        let http = http.clone();
        async move { anyhow::Ok(http.get(url).send().await?.text().await?) }
    };
    ensure!(page(&http).await?.contains("No app is published here yet"));

    let manifest = |name: &str, description: &str| {
        serde_json::json!({"name": name, "description": description, "icons": [{"src": "icons/icon-192.png", "sizes": "192x192"}]}).to_string()
    };
    let notes_manifest = manifest("Notes <script>alert(1)</script>", "Write & keep");
    let notes = Publisher::new(&server, "notes", key(7));
    let v1 = bundle(&[("index.html", b"<h1>notes</h1>"), ("manifest.webmanifest", notes_manifest.as_bytes())], b"w");
    notes.publish(&v1, None).await?;
    let todo_manifest = manifest("Todo", "Lists");
    let todo = Publisher::new(&server, "todo", key(8));
    todo.publish(&bundle(&[("index.html", b"<h1>todo</h1>"), ("manifest.webmanifest", todo_manifest.as_bytes())], b"w"), None).await?;

    let html = page(&http).await?;
    ensure!(!html.contains("<script>alert"), "a publisher's name became markup: {html}");
    ensure!(html.contains("Notes &lt;script&gt;alert(1)&lt;/script&gt;") && html.contains("Write &amp; keep"), "{html}");
    let port = server.port;
    for app in ["notes", "todo"] {
        ensure!(html.contains(&format!("<a class=\"open\" href=\"http://{app}.localhost:{port}/\">")), "no Open link for {app}: {html}");
        ensure!(html.contains(&format!("href=\"http://{app}.localhost:{port}/?install\"")), "no Install link for {app}");
    }
    ensure!(html.contains(&format!("http://notes.localhost:{port}/icons/icon-192.png")), "the app's icon, on its own origin");
    ensure!(html.contains(&hex::encode(key(7).verifying_key().as_bytes())[..4]), "the publisher's fingerprint");
    ensure!(html.contains("<link rel=\"manifest\""), "the catalog is installable");

    // A Stead bundle: every file it lists is served with the hash it declares.
    let bundle_text = http.get(format!("{}/stead-bundle.json", server.base)).send().await?.bytes().await?;
    let listed = BundleManifest::parse(&bundle_text)?;
    for f in &listed.files {
        let bytes = http.get(format!("{}/{}", server.base, f.path)).send().await?.bytes().await?;
        ensure!(sha256_hex(&bytes) == f.sha256, "{} is not what the catalog's bundle says", f.path);
    }
    ensure!(listed.file("icons/icon-512.png").is_some() && listed.file("manifest.webmanifest").is_some());
    let worker = http.get(format!("{}/stead-sw.js", server.base)).send().await?;
    ensure!(worker.headers()["service-worker-allowed"] == "/" && worker.bytes().await? == b"the operator's stead-sw.js"[..]);

    // Publishing a new version changes the catalog's version: installed catalogs update.
    notes.publish(&bundle(&[("index.html", b"<h1>notes 2</h1>"), ("manifest.webmanifest", notes_manifest.as_bytes())], b"w"), Some(&v1.manifest.version)).await?;
    let after = BundleManifest::parse(&http.get(format!("{}/stead-bundle.json", server.base)).send().await?.bytes().await?)?;
    ensure!(after.version != listed.version, "the catalog did not change with a publication");

    ensure!(http.post(format!("{}/", server.base)).send().await?.status() == StatusCode::METHOD_NOT_ALLOWED);
    ensure!(http.get(format!("{}/nothing-here.js", server.base)).send().await?.status() == StatusCode::NOT_FOUND);
    let mut s = std::net::TcpStream::connect(server.base.trim_start_matches("http://"))?;
    write!(s, "GET /..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    ensure!(resp.starts_with(b"HTTP/1.1 400"), "a traversal: {}", String::from_utf8_lossy(&resp));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_registry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    suite(Db::Sqlite(dir.path().join("suite.sqlite3"))).await.context("suite")?;
    token_policy(Db::Sqlite(dir.path().join("token.sqlite3"))).await.context("token policy")?;
    catalog(Db::Sqlite(dir.path().join("catalog.sqlite3"))).await.context("catalog")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_registry() -> anyhow::Result<()> {
    let pg = Pg::start()?;
    suite(pg.database()?).await.context("suite")?;
    token_policy(pg.database()?).await.context("token policy")?;
    Ok(())
}
