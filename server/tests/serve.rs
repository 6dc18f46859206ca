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
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let config = stead_server::Config { bundle_dir: dir.path().to_path_buf(), ..Default::default() };
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
