//! `stead dev`: build, serve, and rebuild on every change, reloading open pages.
//!
//! The worker serves an installed app from OPFS, which in development would mean a stale
//! page after each rebuild. A dev build therefore carries a small script with its build
//! id, and writes `stead-dev.json` (not part of the bundle, so always fetched from the
//! server) once everything else is in place. An open page polls that file; when the id
//! changes it unregisters the worker and reloads, so the reload comes from the server and
//! a fresh worker installs the new bundle. The data (spaces in OPFS and IndexedDB) is not
//! the worker's registration and stays.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use notify::{RecursiveMode, Watcher};

use crate::{
    app::App,
    diag::Problem,
    pipeline::{self, BuildOptions},
    serve::{self, ServeOptions},
};

/// The file an open page polls for the current dev build id.
pub const DEV_FILE: &str = "stead-dev.json";
/// Quiet time after a change before rebuilding: an editor's save is several events.
const SETTLE: Duration = Duration::from_millis(300);

/// The script a dev build adds to `index.html`.
pub fn reload_script(build: &str) -> String {
    format!(
        "<script>/* stead dev: reload on rebuild */(() => {{\n\
         const build = {build:?};\n\
         const poll = async () => {{\n\
           try {{\n\
             const r = await fetch('./{DEV_FILE}', {{ cache: 'no-store' }});\n\
             if (r.ok && (await r.json()).build !== build) {{\n\
               console.info('stead dev: new build, reinstalling the worker and reloading');\n\
               const reg = await navigator.serviceWorker.getRegistration();\n\
               if (reg) await reg.unregister();\n\
               location.reload();\n\
               return;\n\
             }}\n\
           }} catch (e) {{}}\n\
           setTimeout(poll, 1000);\n\
         }};\n\
         poll();\n\
         }})();</script>\n"
    )
}

/// Adds [`reload_script`] before `</body>` (or at the end).
pub fn add_reload_script(html: &str, build: &str) -> String {
    let script = reload_script(build);
    match html.rfind("</body>") {
        Some(at) => format!("{}{script}{}", &html[..at], &html[at..]),
        None => format!("{html}{script}"),
    }
}

/// A new build id.
pub fn build_id() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}", now.as_millis())
}

/// Whether a changed path is the app's source rather than build output or data.
pub fn is_source(app_dir: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(app_dir) else { return false };
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    match parts.next().as_deref() {
        None => false,
        Some("dist" | "target" | ".stead" | ".git" | "Cargo.lock") => false,
        Some(first) => !first.starts_with('.'),
    }
}

enum Event {
    Changed(PathBuf),
    Quit,
}

/// Builds, serves on `port`, and rebuilds on changes until Ctrl-C.
pub fn run(app: App, port: Option<u16>) -> Result<(), Problem> {
    let dist = app.dir.join("dist");
    let opts = |build: String| BuildOptions { release: false, dist: Some(dist.clone()), verbose: false, dev: Some(build) };
    let first = pipeline::build_app(&app, &opts(build_id()))?;
    eprintln!("  built in {:.1} s", first.elapsed.as_secs_f64());

    let runtime = tokio::runtime::Runtime::new().map_err(|e| Problem::new(format!("cannot start the async runtime: {e}")))?;
    let port = port.or_else(|| app.config.server.dev_port()).unwrap_or(8080);
    let database = app.dir.join(".stead/stead.sqlite3").display().to_string();
    let serve_opts = ServeOptions { dir: dist.clone(), host: [127, 0, 0, 1].into(), port, database, open_spaces: true };
    let server = runtime.block_on(serve::start(&serve_opts))?;
    println!("{}", server.url());
    eprintln!(
        "Serving {} with sync. Watching {} for changes; on each rebuild open pages \
         reinstall the worker and reload, so no stale file is served. Ctrl-C stops.",
        app.config.name,
        app.dir.display()
    );

    let (tx, rx) = mpsc::channel::<Event>();
    let quit = tx.clone();
    runtime.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = quit.send(Event::Quit);
    });
    let watch_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            for p in event.paths {
                let _ = watch_tx.send(Event::Changed(p));
            }
        }
    })
    .map_err(|e| Problem::new(format!("cannot watch for changes: {e}")))?;
    watcher
        .watch(&app.dir, RecursiveMode::Recursive)
        .map_err(|e| Problem::new(format!("cannot watch {}: {e}", app.dir.display())).help("check the folder's permissions, or the system's inotify limits"))?;

    let mut app = app;
    loop {
        let first = match rx.recv() {
            Ok(Event::Changed(p)) if is_source(&app.dir, &p) => p,
            Ok(Event::Changed(_)) => continue,
            Ok(Event::Quit) | Err(_) => break,
        };
        // Let a burst of events settle, then build once.
        let mut quit = false;
        while let Ok(e) = rx.recv_timeout(SETTLE) {
            if matches!(e, Event::Quit) {
                quit = true;
                break;
            }
        }
        if quit {
            break;
        }
        let shown = first.strip_prefix(&app.dir).unwrap_or(&first).display().to_string();
        eprintln!("\n{shown} changed: rebuilding");
        // Stead.toml may have changed too.
        match App::load(&app.dir) {
            Ok(reloaded) => app = reloaded,
            Err(p) => {
                p.report();
                continue;
            }
        }
        match pipeline::build_app(&app, &opts(build_id())) {
            Ok(b) => {
                for w in b.warnings.iter().filter(|w| !w.starts_with("screenshots")) {
                    eprintln!("  warning: {w}");
                }
                eprintln!("  rebuilt in {:.1} s: open pages reload", b.elapsed.as_secs_f64());
            }
            Err(p) => {
                p.report();
                eprintln!("(still serving the last good build; fix and save to try again)");
            }
        }
    }
    drop(watcher);
    eprintln!("stopping");
    runtime.block_on(server.stop())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_goes_before_the_body_end() {
        let html = add_reload_script("<html><body><p>x</p></body></html>", "42");
        assert!(html.contains("const build = \"42\";"));
        assert!(html.ends_with("</script>\n</body></html>"), "{html}");
        assert!(add_reload_script("<p>", "1").starts_with("<p><script>"));
    }

    #[test]
    fn sources_and_output() {
        let app = Path::new("/a");
        for (p, source) in [
            ("/a/src/main.rs", true),
            ("/a/Stead.toml", true),
            ("/a/styles.css", true),
            ("/a/dist/index.html", false),
            ("/a/target/debug/x", false),
            ("/a/.stead/stead.sqlite3", false),
            ("/a/Cargo.lock", false),
            ("/a/.main.rs.swp", false),
            ("/b/src/main.rs", false),
        ] {
            assert_eq!(is_source(app, Path::new(p)), source, "{p}");
        }
    }
}
