//! The app maker's path, as a user runs it: `stead new` into a temporary folder outside
//! the workspace, `stead build` there, `stead serve` on the result. This keeps the
//! template from rotting. It needs the tools `cargo xtask setup` installs (trunk,
//! wasm-bindgen-cli, and for the cache check wasm-opt); `cargo xtask test` runs it with
//! them on PATH and the workspace's target folder shared.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Output, Stdio},
    time::Instant,
};

use stead_manifest::{validate, web::WebManifest};

fn stead(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_stead")).args(args).current_dir(dir).stdin(Stdio::null()).output().expect("stead runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked") && !text.contains("hit a bug"), "stead {args:?} panicked:\n{text}");
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("server listens");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request sent");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("response read");
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let status = String::from_utf8_lossy(&resp[9..12]).parse().expect("a status code");
    (status, resp[head_end + 4..].to_vec())
}

#[test]
fn new_build_serve() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = stead(tmp.path(), &["new", "field-notes"]);
    assert!(out.status.success(), "{}", text(&out));
    let new_time = started.elapsed();
    assert!(text(&out).contains("stead build"), "prints the next commands: {}", text(&out));
    let app = tmp.path().join("field-notes");
    for f in ["Cargo.toml", "Cargo.lock", "Stead.toml", "Trunk.toml", "index.html", "icon.svg", "schema.json", "src/main.rs"] {
        assert!(app.join(f).is_file(), "{f} written");
    }

    let started = Instant::now();
    let out = stead(&app, &["build"]);
    assert!(out.status.success(), "stead build failed:\n{}", text(&out));
    let build_time = started.elapsed();
    let report = text(&out);
    eprintln!("{report}\nstead new {new_time:?}, first stead build {build_time:?}");
    let dist = app.join("dist");
    for f in ["index.html", "stead-sw.js", "stead-bundle.json", "manifest.webmanifest", "stead-schema.json", "icons/icon-192.png", "icons/icon-512.png", "icons/maskable-512.png", "icons/apple-touch-icon.png", "icons/favicon.ico"] {
        assert!(dist.join(f).is_file(), "{f} built");
    }
    assert!(report.contains("total"), "a size table: {report}");
    let manifest: WebManifest = serde_json::from_slice(&std::fs::read(dist.join("manifest.webmanifest")).expect("manifest")).expect("manifest parses");
    assert_eq!(manifest.name.as_deref(), Some("Field Notes"));
    let errors: Vec<_> = validate::validate(&manifest).into_iter().filter(|p| p.severity == validate::Severity::Error).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let index = std::fs::read_to_string(dist.join("index.html")).expect("index.html");
    assert!(index.contains("rel=\"manifest\"") && index.contains("apple-touch-icon"), "{index}");
    let bundle = stead_core::bundle::BundleManifest::parse(&std::fs::read(dist.join("stead-bundle.json")).expect("bundle")).expect("bundle parses");
    for f in ["manifest.webmanifest", "icons/icon-512.png", "icons/favicon.ico"] {
        assert!(bundle.files.iter().any(|b| b.path == f), "{f} is in the bundle, so it works offline");
    }

    // Nothing changed: the worker's wasm-opt result is reused.
    if report.contains("wasm-opt ") && !report.contains("no wasm-opt") {
        let out = stead(&app, &["build"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("wasm-opt result reused"), "{}", text(&out));
    }

    let mut server = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args(["serve", "--port", "0"])
        .current_dir(&app)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stead serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut line).expect("a URL line");
    let addr = line.trim().trim_start_matches("http://").trim_end_matches('/').replace("localhost", "127.0.0.1");
    let (status, body) = get(&addr, "/");
    let (m_status, m_body) = get(&addr, "/manifest.webmanifest");
    let (h_status, _) = get(&addr, "/healthz");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("manifest.webmanifest"));
    assert_eq!(m_status, 200);
    assert!(String::from_utf8_lossy(&m_body).contains("\"Field Notes\""));
    assert_eq!(h_status, 200);
    assert!(app.join(".stead/stead.sqlite3").is_file(), "sync data goes to the app's .stead/");
}

#[test]
fn mistakes_are_explained_not_panicked_and_the_blank_template_builds() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = stead(tmp.path(), &["new", "Bad Name"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a valid app name") && text(&out).contains("lower-case"), "{}", text(&out));

    let out = stead(tmp.path(), &["build"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no Stead.toml") && text(&out).contains("stead new"), "{}", text(&out));

    assert!(stead(tmp.path(), &["new", "app", "--template", "blank"]).status.success());
    let app = tmp.path().join("app");
    let config = std::fs::read_to_string(app.join("Stead.toml")).expect("Stead.toml");
    std::fs::write(app.join("Stead.toml"), config.replace("theme_color", "theme_colour")).expect("written");
    let out = stead(&app, &["build"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("Stead.toml") && t.contains("`theme_colour`: unknown field") && t.contains("correct its spelling"), "{t}");

    std::fs::write(app.join("Stead.toml"), config.replace("display = \"standalone\"", "display = \"browser\"")).expect("written");
    let out = stead(&app, &["build"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("would not be installable") && t.contains("manifest `display`") && t.contains("standalone"), "{t}");
    assert!(!app.join("dist").exists(), "refused before building");

    let out = stead(&app, &["serve", "--port", "0"]);
    assert!(!out.status.success(), "nothing built yet");
    assert!(text(&out).contains("run `stead build`"), "{}", text(&out));

    // Put right, the blank template builds too.
    std::fs::write(app.join("Stead.toml"), &config).expect("written");
    let out = stead(&app, &["build"]);
    assert!(out.status.success(), "the blank template builds:\n{}", text(&out));
    assert!(app.join("dist/manifest.webmanifest").is_file());
}
