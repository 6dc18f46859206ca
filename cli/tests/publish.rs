//! `stead publish`, `stead versions` and `stead rollback` as a user runs them: the real
//! `stead` binary against a real stead-server (the library, on a free port of 127.0.0.1,
//! with its registry on and SQLite in a temp folder), each app then fetched at its own
//! origin `{app}.localhost`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use sha2::Digest;

/// A stead-server with a registry for `{app}.localhost`, stopped on drop.
struct Server {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("registry.sqlite3");
        let bundle = dir.path().join("bare");
        std::fs::create_dir_all(&bundle).expect("bare folder");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let backend = stead_server::storage::open(&db.display().to_string(), [7; 16]).expect("database");
                let service = stead_server::Service::new(backend.clone(), stead_server::Limits::default());
                let registry = stead_server::RegistryConfig { new_apps: stead_server::SpaceCreation::Open, ..stead_server::RegistryConfig::new("localhost") };
                let config = stead_server::Config {
                    bundle_dir: bundle,
                    sync: Some(service),
                    registry: Some(stead_server::Registry::new(backend, registry)),
                    ..Default::default()
                };
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
                tx.send(listener.local_addr().expect("address").to_string()).expect("address sent");
                stead_server::serve(listener, config, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serves");
            });
        });
        let addr = rx.recv().expect("the server started");
        Server { addr, stop: Some(stop), thread: Some(thread), _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GET `path` on `{app}.localhost`: status and body.
    fn get(&self, app: &str, path: &str) -> (u16, Vec<u8>) {
        let port = self.addr.rsplit(':').next().unwrap_or_default();
        let mut s = TcpStream::connect(&self.addr).expect("server listens");
        write!(s, "GET {path} HTTP/1.1\r\nHost: {app}.localhost:{port}\r\nConnection: close\r\n\r\n").expect("request sent");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("response read");
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        let status = String::from_utf8_lossy(&resp[9..12]).parse().expect("a status code");
        (status, resp[head_end + 4..].to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stead(dir: &Path, home: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(args)
        .current_dir(dir)
        .env("STEAD_HOME", home)
        .env_remove("STEAD_SERVER")
        .env_remove("STEAD_PUBLISH_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("stead runs");
    let text = text(&out);
    assert!(!text.contains("panicked") && !text.contains("hit a bug"), "stead {args:?} panicked:\n{text}");
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// An app folder with a built-looking `dist` (as `stead build` leaves it).
fn app(root: &Path, name: &str, index: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("dist/icons")).expect("app folder");
    std::fs::write(dir.join("Stead.toml"), "id = \"00000000-0000-7000-8000-000000000001\"\nname = \"A\"\nicon = \"icon.svg\"\n").expect("Stead.toml");
    std::fs::write(dir.join("dist/index.html"), index).expect("index");
    std::fs::write(dir.join("dist/app-0123456789abcdef.js"), format!("console.log({name:?})")).expect("js");
    std::fs::write(dir.join("dist/icons/icon-192.png"), [0x89, b'P', b'N', b'G']).expect("icon");
    std::fs::write(dir.join("dist/stead-sw.js"), "self.worker = 1").expect("worker");
    stead_cli::build::write_bundle_manifest(&dir.join("dist")).expect("manifest");
    dir
}

#[test]
fn publish_update_versions_rollback() {
    let server = Server::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = tmp.path().join("stead-home");
    let notes = app(tmp.path(), "field-notes", "<h1>notes v1</h1>");

    // First publish: a key is made outside the app, every file goes up, the URL is printed.
    let out = stead(&notes, &home, &["publish", "--server", &server.url()]);
    assert!(out.status.success(), "{}", text(&out));
    let port = server.addr.rsplit(':').next().unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("http://field-notes.localhost:{port}/"));
    let said = text(&out);
    assert!(said.contains("4 files uploaded") && said.contains("app id "), "{said}");
    assert!(!said.contains("uploading"), "no progress bar when stderr is not a terminal: {said}");
    let key = home.join("keys/field-notes.key");
    assert!(key.is_file(), "the key lives in STEAD_HOME");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    }
    assert!(!walk(&notes).iter().any(|p| p.ends_with(".key")), "no key in the app's folder");
    assert_eq!(server.get("field-notes", "/"), (200, b"<h1>notes v1</h1>".to_vec()));
    assert_eq!(server.get("field-notes", "/stead-sw.js"), (200, b"self.worker = 1".to_vec()));

    // A one-file change uploads that file alone.
    std::fs::write(notes.join("dist/index.html"), "<h1>notes v2</h1>").expect("edit");
    // Not rebuilt yet: refused with the fix.
    let out = stead(&notes, &home, &["publish", "--server", &server.url()]);
    assert!(!out.status.success() && text(&out).contains("stead build"), "{}", text(&out));
    stead_cli::build::write_bundle_manifest(&notes.join("dist")).expect("manifest");
    let out = stead(&notes, &home, &["publish", "--server", &server.url()]);
    assert!(out.status.success() && text(&out).contains("1 files uploaded"), "{}", text(&out));
    assert_eq!(server.get("field-notes", "/").1, b"<h1>notes v2</h1>");
    // Publishing the same build again uploads nothing.
    let out = stead(&notes, &home, &["publish", "--server", &server.url()]);
    assert!(out.status.success() && text(&out).contains("0 files uploaded"), "{}", text(&out));

    // Versions, newest first, the current marked; rollback by a prefix.
    let out = stead(&notes, &home, &["versions", "--server", &server.url()]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(lines[0].starts_with('*') && lines[1].starts_with(' '), "{listing}");
    let first = lines[1].split_whitespace().next().expect("a version");
    let out = stead(&notes, &home, &["rollback", first, "--server", &server.url()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.get("field-notes", "/").1, b"<h1>notes v1</h1>");
    let out = stead(&notes, &home, &["rollback", "ffffffff", "--server", &server.url()]);
    assert!(!out.status.success() && text(&out).contains("stead versions"), "{}", text(&out));

    // A second app, its own origin; the shared icon is not uploaded again.
    let todo = app(tmp.path(), "todo", "<h1>todo</h1>");
    let out = stead(&todo, &home, &["publish", "--server", &server.url()]);
    assert!(out.status.success() && text(&out).contains("2 files uploaded"), "index and script only: {}", text(&out));
    assert_eq!(server.get("todo", "/").1, b"<h1>todo</h1>");
    assert_eq!(server.get("field-notes", "/").1, b"<h1>notes v1</h1>");
    assert_eq!(server.get("nope", "/").0, 404);

    // Someone else's key cannot publish under a taken name.
    let other_home = tmp.path().join("other-home");
    let out = stead(&todo, &other_home, &["publish", "--server", &server.url(), "--name", "field-notes"]);
    assert!(!out.status.success() && text(&out).contains("someone else's"), "{}", text(&out));
    assert_eq!(server.get("field-notes", "/").1, b"<h1>notes v1</h1>");

    // Names that cannot be DNS labels, and servers that do not answer, are explained.
    let out = stead(&todo, &home, &["publish", "--server", &server.url(), "--name", "Not_A_Label"]);
    assert!(!out.status.success() && text(&out).contains("--name"), "{}", text(&out));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr");
    let out = stead(&todo, &home, &["publish", "--server", &format!("http://{dead}")]);
    assert!(!out.status.success() && text(&out).contains("cannot reach"), "{}", text(&out));

    // An interrupted publish resumes: what reached the server is not sent again. The
    // first run is played by hand: the same key announces the bundle and uploads one of
    // the two files the server lacks, then stops.
    let resume = app(tmp.path(), "resume", "<h1>resume</h1>");
    let secret = [5u8; 32];
    std::fs::write(home.join("keys/resume.key"), hex::encode(secret)).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.join("keys/resume.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let built = stead_cli::publish::Built::read(&resume.join("dist")).expect("built");
    let resume_key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let mut files: Vec<(String, Vec<u8>)> =
        built.manifest.files.iter().map(|f| (f.sha256.clone(), std::fs::read(resume.join("dist").join(&f.path)).expect("file"))).collect();
    files.push((built.worker.sha256.clone(), std::fs::read(resume.join("dist/stead-sw.js")).expect("worker")));
    let refs: Vec<stead_server::registry::api::FileRef> =
        files.iter().map(|(sha, b)| stead_server::registry::api::FileRef { sha256: sha.clone(), size: b.len() as u64 }).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
        let body = serde_json::to_vec(&stead_server::registry::api::MissingRequest { files: refs }).expect("json");
        let path = "/_registry/v1/apps/resume/missing";
        let auth = stead_server::registry::authorization(
            &resume_key,
            now(),
            &stead_server::registry::nonce().expect("random"),
            "POST",
            &server.addr,
            path,
            &sha2::Sha256::digest(&body).into(),
        );
        let r = http.post(format!("{}{path}", server.url())).header("authorization", auth).body(body).send().await.expect("missing");
        assert_eq!(r.status(), 200);
        let missing: stead_server::registry::api::MissingResponse = r.json().await.expect("json");
        assert_eq!(missing.missing.len(), 2, "the icon and the worker are stored already (field-notes has them)");
        for sha in missing.missing.iter().take(1) {
            let bytes = &files.iter().find(|f| &f.0 == sha).expect("one of ours").1;
            let path = format!("/_registry/v1/apps/resume/files/{sha}");
            let digest: [u8; 32] = hex::decode(sha).expect("hex").try_into().expect("32 bytes");
            let auth = stead_server::registry::authorization(
                &resume_key,
                now(),
                &stead_server::registry::nonce().expect("random"),
                "PUT",
                &server.addr,
                &path,
                &digest,
            );
            let r = http.put(format!("{}{path}", server.url())).header("authorization", auth).body(bytes.clone()).send().await.expect("put");
            assert_eq!(r.status(), 201);
        }
    });
    let out = stead(&resume, &home, &["publish", "--server", &server.url()]);
    assert!(out.status.success() && text(&out).contains("1 files uploaded"), "only the one that did not arrive: {}", text(&out));
    assert_eq!(server.get("resume", "/").1, b"<h1>resume</h1>");

    // A key file others can read is refused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = stead(&notes, &home, &["publish", "--server", &server.url()]);
        assert!(!out.status.success() && text(&out).contains("chmod 600"), "{}", text(&out));
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("readable").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
