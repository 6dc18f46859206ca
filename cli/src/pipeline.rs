//! `stead build`: the app (trunk), the worker, the web app manifest and icons, the bundle
//! manifest, with a progress line per step and a size table at the end.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use stead_manifest::validate::Severity;

use crate::{
    app::App,
    build::{self, BuildConfig, BuildError, Optimization, Output, Tools},
    diag::{Problem, tail},
    tools,
};

/// What `stead build` was asked for.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub release: bool,
    /// The output folder; `dist` in the app's folder by default.
    pub dist: Option<PathBuf>,
    /// Tool output straight to the terminal instead of progress lines.
    pub verbose: bool,
    /// A `stead dev` build with this build id: open pages reload when it changes
    /// (see `dev`).
    pub dev: Option<String>,
}

/// What a build made, for the summary and for `stead dev`.
#[derive(Debug, Clone)]
pub struct Built {
    pub dist: PathBuf,
    pub rows: Vec<SizeRow>,
    pub warnings: Vec<String>,
    pub worker: build::WorkerReport,
    pub elapsed: Duration,
}

/// One line of the size table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeRow {
    pub path: String,
    pub bytes: u64,
    pub gzip: u64,
}

/// A step shown as a spinner while it runs and as a line with its time when done.
struct Step {
    bar: ProgressBar,
    started: Instant,
    what: String,
}

impl Step {
    fn start(what: &str) -> Step {
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Step { bar, started: Instant::now(), what: what.to_owned() }
    }

    fn done(self, note: &str) {
        self.bar.finish_and_clear();
        let note = if note.is_empty() { String::new() } else { format!(" ({note})") };
        eprintln!("  ✓ {}{note} {:.1} s", self.what, self.started.elapsed().as_secs_f64());
    }

    fn failed(self) {
        self.bar.finish_and_clear();
        eprintln!("  ✗ {}", self.what);
    }
}

/// Runs `f` as a step; a failure ends the spinner before the error is shown.
fn step<T>(what: &str, f: impl FnOnce() -> Result<T, Problem>) -> Result<(T, Step), Problem> {
    let s = Step::start(what);
    match f() {
        Ok(v) => Ok((v, s)),
        Err(e) => {
            s.failed();
            Err(e)
        }
    }
}

/// A failed tool, with the end of what it printed.
fn tool_problem(e: BuildError) -> Problem {
    match e {
        BuildError::Tool { tool, status, log } if !log.is_empty() => {
            let mut p = Problem::new(format!("{tool} failed ({status})")).help("its output is above (the end of it; `stead build --verbose` shows all)");
            p.output = Some(tail(&log, 80));
            p
        }
        BuildError::Spawn { tool, source } => {
            Problem::new(format!("cannot run {tool}: {source}")).help("run `cargo xtask setup` in Stead's checkout to install the tools")
        }
        other => Problem::new(other.to_string()),
    }
}

/// Builds the app in `app.dir`.
pub fn build_app(app: &App, opts: &BuildOptions) -> Result<Built, Problem> {
    let started = Instant::now();
    // Refuse an app Chromium would not install before spending minutes building it.
    let errors = install_errors(app, &stead_manifest::validate::validate(&stead_manifest::web::WebManifest::from_config(&app.config)));
    if !errors.is_empty() {
        return Err(not_installable(app, errors));
    }
    let root = tools::stead_root().map_err(|e| {
        let hint = e.hint(Path::new("."));
        Problem::new(e.to_string()).help(hint)
    })?;
    let output = if opts.verbose { Output::Inherit } else { Output::Capture };
    let tools = tools::find_tools(&root, opts.release, output).map_err(|e| {
        let hint = e.hint(&root);
        Problem::new(e.to_string()).help(hint)
    })?;
    let dist = opts.dist.clone().unwrap_or_else(|| app.dir.join("dist"));
    let trunk_config = app.dir.join("Trunk.toml");
    if !trunk_config.is_file() {
        return Err(Problem::new(format!("{} is missing", trunk_config.display()))
            .help("copy Trunk.toml from a new app (`stead new`): it tells trunk to build offline with Stead's tool versions"));
    }
    let config = BuildConfig { workspace: root.clone(), trunk_config, dist: dist.clone(), release: opts.release };
    let mode = if opts.release { "release" } else { "debug" };
    eprintln!("Building {} ({mode}) into {}", app.config.name, dist.display());

    // trunk runs cargo offline: fetch what the lockfile names first (instant when cached).
    let ((), s) = step("crates", || fetch(&tools, &app.dir))?;
    s.done("");
    let ((), s) = step("app (trunk)", || build::build_app(&config, &tools).map_err(tool_problem))?;
    s.done(mode);
    let (worker, s) = step("service worker", || build::build_worker(&config, &tools).map_err(tool_problem))?;
    s.done(&match worker.optimization {
        Optimization::Ran(t) => format!("wasm-opt {:.1} s", t.as_secs_f64()),
        Optimization::Cached => "wasm-opt result reused".to_owned(),
        Optimization::Skipped => "not optimised: no wasm-opt".to_owned(),
    });

    let (written, s) = step("web app manifest and icons", || {
        stead_manifest::write_app_files(&app.config, &app.dir, &dist).map_err(|e| {
            let hint = e.hint();
            match e.field() {
                Some(field) => app.problem_at(field, e.to_string(), hint),
                None => Problem::new(e.to_string()).help(hint),
            }
        })
    })?;
    let errors = install_errors(app, &written.problems);
    if !errors.is_empty() {
        s.failed();
        return Err(not_installable(app, errors));
    }
    s.done(&format!("{} files", written.files.len()));
    let mut warnings: Vec<String> = written.icon_warnings.clone();
    warnings.extend(written.problems.iter().filter(|p| p.severity == Severity::Warning).map(|p| p.to_string()));

    let dev_file = dist.join(crate::dev::DEV_FILE);
    if let Some(id) = &opts.dev {
        let index = dist.join("index.html");
        let html = std::fs::read_to_string(&index).map_err(|e| Problem::new(format!("cannot read {}: {e}", index.display())))?;
        std::fs::write(&index, crate::dev::add_reload_script(&html, id)).map_err(|e| Problem::new(format!("cannot write {}: {e}", index.display())))?;
    }
    // The dev build id is written last and is no part of the bundle, so a page reloads only
    // once the whole build is in place, and always reads it from the server.
    let _ = std::fs::remove_file(&dev_file);
    let (bundle, s) = step("bundle manifest", || build::write_bundle_manifest(&dist).map_err(tool_problem))?;
    s.done(&format!("version {}", bundle.version.get(..12).unwrap_or_default()));
    if let Some(id) = &opts.dev {
        std::fs::write(&dev_file, format!("{{\"build\": {id:?}}}\n")).map_err(|e| Problem::new(format!("cannot write {}: {e}", dev_file.display())))?;
    }

    let rows = sizes(&dist).map_err(|e| Problem::new(format!("cannot read {}: {e}", dist.display())))?;
    Ok(Built { dist, rows, warnings, worker, elapsed: started.elapsed() })
}

/// The installability errors among `problems`, each pointing at the `Stead.toml` field
/// the manifest field comes from.
fn install_errors(app: &App, problems: &[stead_manifest::validate::Problem]) -> Vec<Problem> {
    problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| {
            let key = p.field.split(['.', '[']).next().unwrap_or_default();
            let key = if key == "icons" { "icon" } else { key };
            app.problem_at(key, format!("manifest `{}`: {}", p.field, p.message), p.fix.clone())
        })
        .collect()
}

fn not_installable(app: &App, errors: Vec<Problem>) -> Problem {
    let n = errors.len();
    Problem::new(format!("{}: the app would not be installable ({n} problem{})", app.config_path().display(), if n == 1 { "" } else { "s" }))
        .help(format!("fix them in {}", app.config_path().display()))
        .related(errors)
}

fn fetch(tools: &Tools, dir: &Path) -> Result<(), Problem> {
    build::run(tools, &tools.cargo, &["fetch".as_ref()], dir).map_err(|e| {
        tool_problem(e).help("cargo could not fetch the app's crates: check the network, or that Cargo.toml's paths to Stead exist")
    })
}

/// Every file of the built folder with its size and gzip size, largest first.
pub fn sizes(dist: &Path) -> std::io::Result<Vec<SizeRow>> {
    let mut rows = Vec::new();
    walk(dist, dist, &mut rows)?;
    rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.path.cmp(&b.path)));
    Ok(rows)
}

fn walk(root: &Path, dir: &Path, rows: &mut Vec<SizeRow>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(root, &path, rows)?;
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        rows.push(SizeRow { path: rel, bytes: bytes.len() as u64, gzip: gzip_len(&bytes) });
    }
    Ok(())
}

/// The size of `bytes` gzip-compressed (default level).
pub fn gzip_len(bytes: &[u8]) -> u64 {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    if enc.write_all(bytes).is_err() {
        return 0;
    }
    enc.finish().map(|v| v.len() as u64).unwrap_or(0)
}

/// `1234567` → `1.2 MB`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} KB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// The size table: every file, then the total.
pub fn table(rows: &[SizeRow]) -> String {
    let width = rows.iter().map(|r| r.path.len()).max().unwrap_or(4).max(5);
    let mut out = format!("  {:<width$}  {:>9}  {:>9}\n", "file", "size", "gzip");
    for r in rows {
        out.push_str(&format!("  {:<width$}  {:>9}  {:>9}\n", r.path, human(r.bytes), human(r.gzip)));
    }
    let (b, g) = rows.iter().fold((0, 0), |(b, g), r| (b + r.bytes, g + r.gzip));
    out.push_str(&format!("  {:<width$}  {:>9}  {:>9}\n", "total", human(b), human(g)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_table() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("icons")).unwrap();
        std::fs::write(tmp.path().join("index.html"), "<h1>hi</h1>".repeat(100)).unwrap();
        std::fs::write(tmp.path().join("icons/a.png"), [7u8; 10]).unwrap();
        std::fs::write(tmp.path().join(".trunk-lock"), "").unwrap();
        let rows = sizes(tmp.path()).unwrap();
        let paths: Vec<_> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["index.html", "icons/a.png"]);
        assert!(rows[0].gzip < rows[0].bytes);
        let t = table(&rows);
        assert!(t.contains("index.html") && t.contains("1.1 KB") && t.lines().last().unwrap().contains("total"), "{t}");
        assert_eq!(human(999), "999 B");
        assert_eq!(human(2_500_000), "2.5 MB");
    }
}
