//! The server's HTTP behaviour, on a real socket: MIME types, cache headers, ETags,
//! navigation fallback and path safety.


use reqwest::{StatusCode, header};

struct Served {
    base: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(files: &[(&str, &[u8])]) -> Served {
    serve_as(files, false).await
}

async fn serve_as(files: &[(&str, &[u8])], retired: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let config = stead_server::Config { bundle_dir: dir.path().to_path_buf(), retired, ..Default::default() };
    tokio::spawn(stead_server::serve(listener, config, async {
        let _ = stopped.await;
    }));
    Served { base, _dir: dir, stop: Some(stop) }
}

async fn get(base: &str, path: &str, accept: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header(header::ACCEPT, accept)
        .send()
        .await
        .unwrap()
}

fn check(resp: &reqwest::Response, status: StatusCode, content_type: &str, cache: &str) {
    assert_eq!(resp.status(), status, "{}", resp.url());
    let h = |name| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert_eq!(h(header::CONTENT_TYPE), content_type, "{}", resp.url());
    assert_eq!(h(header::CACHE_CONTROL), cache, "{}", resp.url());
}

#[tokio::test]
async fn serves_bundle_files_with_worker_friendly_headers() {
    let s = serve(&[
        ("index.html", b"<h1>todo</h1>"),
        ("todo-0123456789abcdef.js", b"export {}"),
        ("todo-0123456789abcdef_bg.wasm", b"\0asm"),
        ("stead-sw.js", b"importScripts()"),
        ("stead-bundle.json", b"{}"),
        ("styles.css", b"h1{}"),
    ])
    .await;
    let b = &s.base;
    check(&get(b, "/", "text/html").await, StatusCode::OK, "text/html; charset=utf-8", "no-cache");
    check(&get(b, "/todo-0123456789abcdef.js", "*/*").await, StatusCode::OK,
        "text/javascript; charset=utf-8", "public, max-age=31536000, immutable");
    check(&get(b, "/todo-0123456789abcdef_bg.wasm", "*/*").await, StatusCode::OK,
        "application/wasm", "public, max-age=31536000, immutable");
    let sw = get(b, "/stead-sw.js", "*/*").await;
    check(&sw, StatusCode::OK, "text/javascript; charset=utf-8", "no-cache");
    assert_eq!(sw.headers()["service-worker-allowed"], "/");
    check(&get(b, "/stead-bundle.json", "*/*").await, StatusCode::OK, "application/json; charset=utf-8", "no-cache");
    check(&get(b, "/styles.css", "*/*").await, StatusCode::OK, "text/css; charset=utf-8", "no-cache");
    assert_eq!(get(b, "/healthz", "*/*").await.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn etag_revalidation_answers_not_modified() {
    let s = serve(&[("index.html", b"<h1>todo</h1>")]).await;
    let first = get(&s.base, "/index.html", "*/*").await;
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", stead_core::bundle::sha256_hex(b"<h1>todo</h1>")));
    let again = reqwest::Client::new()
        .get(format!("{}/index.html", s.base))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn navigations_fall_back_to_the_entry_but_assets_do_not() {
    let s = serve(&[("index.html", b"<h1>todo</h1>")]).await;
    let nav = get(&s.base, "/lists/42", "text/html,application/xhtml+xml").await;
    assert_eq!(nav.status(), StatusCode::OK);
    assert_eq!(nav.text().await.unwrap(), "<h1>todo</h1>");
    assert_eq!(get(&s.base, "/lists/42", "*/*").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&s.base, "/missing.js", "text/html").await.status(), StatusCode::NOT_FOUND);
}

/// The whole response of a raw request: status line and body.
async fn raw_get_all(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn paths_cannot_leave_the_bundle_folder() {
    let s = serve(&[("index.html", b"<h1>todo</h1>"), ("assets/app.js", b"export {}")]).await;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("stead-secret-test.txt");
    std::fs::write(&secret, "TOP-SECRET").unwrap();
    let abs = secret.display().to_string();
    let enc_abs = abs.replace('/', "%2F");
    let up = "stead-secret-test.txt";
    // Raw requests: an HTTP client would normalise the dots away before sending.
    let attacks = [
        format!("/{enc_abs}"),
        format!("/%2F{}", enc_abs.trim_start_matches("%2F")),
        "/%2Fetc%2Fpasswd".to_owned(),
        "/%2fproc%2fself%2fcmdline".to_owned(),
        format!("/{abs}").replacen('/', "//", 1),
        format!("/../{up}"),
        format!("/%2e%2e/{up}"),
        format!("/%2E%2E%2F{up}"),
        format!("/a/%2E%2E/%2e%2e/{up}"),
        format!("/assets%2F..%2F..%2F{up}"),
        format!("/..%5C{up}"),
        format!("/assets\\..\\..\\{up}"),
        format!("/%252e%252e/{up}"),
        format!("/%252e%252e%252f{up}"),
        "/index.html%00.js".to_owned(),
        "/assets/%00".to_owned(),
        "/./index.html".to_owned(),
    ];
    for path in &attacks {
        let response = raw_get_all(&s.base, path).await;
        assert!(!response.contains("TOP-SECRET") && !response.contains("root:"), "{path} leaked: {response}");
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {}", response.lines().next().unwrap_or_default());
    }
    // A symlink inside the bundle folder that points out of it is not followed.
    std::os::unix::fs::symlink(&secret, s._dir.path().join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), s._dir.path().join("out")).unwrap();
    for path in ["/leak.txt", "/out/stead-secret-test.txt"] {
        let response = raw_get_all(&s.base, path).await;
        assert!(!response.contains("TOP-SECRET"), "{path} leaked: {response}");
        assert!(response.starts_with("HTTP/1.1 404"), "{path}: {}", response.lines().next().unwrap_or_default());
    }
    // One that stays inside is followed, and ordinary paths still work.
    std::os::unix::fs::symlink(s._dir.path().join("assets/app.js"), s._dir.path().join("alias.js")).unwrap();
    for path in ["/alias.js", "/assets/app.js", "/assets/%61pp.js"] {
        assert!(raw_get_all(&s.base, path).await.starts_with("HTTP/1.1 200"), "{path}");
    }
}

/// A bundle folder's files with the manifest `stead build` would write for them.
fn with_manifest<'a>(files: &[(&'a str, &'a [u8])]) -> (Vec<(&'a str, Vec<u8>)>, stead_core::bundle::BundleManifest) {
    use stead_core::bundle::{BundleFile, BundleManifest, sha256_hex};
    let listed = files
        .iter()
        .map(|(path, bytes)| BundleFile {
            path: path.to_string(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            mime: stead_server::mime_for(path),
            immutable: false,
        })
        .collect();
    let manifest = BundleManifest::new("index.html", listed).unwrap();
    let mut out: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (*p, b.to_vec())).collect();
    out.push((stead_core::bundle::MANIFEST_FILE, manifest.to_json().into_bytes()));
    (out, manifest)
}

#[tokio::test]
async fn a_batch_answers_the_named_files_back_to_back() {
    use stead_core::bundle::{FILES_BATCH, batch_query};
    let files: [(&str, &[u8]); 4] = [("a.js", b"export {}"), ("b.css", b"p{}"), ("img.png", &[0u8, 1, 2, 3, 255]), ("index.html", b"<h1>todo</h1>")];
    let (on_disk, manifest) = with_manifest(&files);
    let borrowed: Vec<(&str, &[u8])> = on_disk.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    let s = serve(&borrowed).await;
    let url = |q: &str| format!("{}/{FILES_BATCH}?{q}", s.base);
    let client = reqwest::Client::new();

    let resp = client.get(url(&batch_query(&manifest.version, &[0, 2, 3]))).send().await.unwrap();
    check(&resp, StatusCode::OK, "application/octet-stream", "no-store");
    assert_eq!(resp.content_length(), Some(9 + 5 + 13));
    assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.as_ref(), [&b"export {}"[..], &[0, 1, 2, 3, 255], b"<h1>todo</h1>"].concat());

    let head = client.head(url(&batch_query(&manifest.version, &[1]))).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], "3");

    // Another version than the folder's: the worker must not cut these bytes by its sizes.
    let other = "0".repeat(64);
    assert_eq!(client.get(url(&batch_query(&other, &[0]))).send().await.unwrap().status(), StatusCode::CONFLICT);
    let v = &manifest.version;
    for bad in [String::new(), format!("version={v}"), format!("version={v}&files=4"), format!("version={v}&files=1,1"), format!("version={v}&files=2,1"), format!("version={v}&files=0-3&files=0")] {
        let resp = client.get(url(&bad)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // A file changed on disk since the manifest was written: the body ends short rather
    // than carry bytes the manifest does not describe.
    std::fs::write(s._dir.path().join("b.css"), b"p{color:red}").unwrap();
    assert!(!completes(&client, &url(&batch_query(v, &[0, 1, 2]))).await, "a batch with a changed file must not complete");
    // Nor may a symlink lead the batch out of the folder.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a.js"), b"export {}").unwrap();
    std::fs::remove_file(s._dir.path().join("a.js")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("a.js"), s._dir.path().join("a.js")).unwrap();
    assert!(!completes(&client, &url(&batch_query(v, &[0]))).await, "a batch followed a symlink out of the bundle folder");
}

/// Whether a GET's whole body arrives. A batch that fails on its first file may be cut
/// before the head is flushed, and a cut body can poison a pooled connection, so either
/// step failing counts as "did not complete".
async fn completes(client: &reqwest::Client, url: &str) -> bool {
    match client.get(url).send().await {
        Ok(resp) => resp.bytes().await.is_ok(),
        Err(e) => {
            assert!(!e.is_connect() && !e.is_timeout(), "the server did not answer: {e}");
            false
        }
    }
}

#[tokio::test]
async fn batches_need_a_manifest_and_a_live_app() {
    use stead_core::bundle::{FILES_BATCH, batch_query};
    let (on_disk, manifest) = with_manifest(&[("index.html", b"<h1>todo</h1>")]);
    let borrowed: Vec<(&str, &[u8])> = on_disk.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    let path = format!("/{FILES_BATCH}?{}", batch_query(&manifest.version, &[0]));
    let retired = serve_as(&borrowed, true).await;
    assert_eq!(get(&retired.base, &path, "*/*").await.status(), StatusCode::GONE);
    let no_manifest = serve(&[("index.html", b"<h1>todo</h1>")]).await;
    assert_eq!(get(&no_manifest.base, &path, "*/*").await.status(), StatusCode::NOT_FOUND);
}
