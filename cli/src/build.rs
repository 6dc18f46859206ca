//! The build pipeline: app (trunk) + service worker (cargo, wasm-bindgen, wasm-opt) +
//! bundle manifest.
//!
//! The worker is two wasm modules. The serving module's wasm is base64-encoded into
//! `stead-sw.js` together with wasm-bindgen's glue and the shim: a worker that fetched
//! its `.wasm` at start-up could not start again offline once the browser stopped it;
//! scripts a worker imports (or is) are stored with the worker itself, so this single
//! script is all a cold start needs. The data engine (`stead-data.wasm`) is a file of
//! the app's bundle: the worker stores it with the app's other files at install and
//! compiles it on first data use; `stead-sw.js` carries its glue and names its SHA-256.
//!
//! wasm-opt is the slow step (~18 s for the worker on two cores), and its result depends
//! only on its input and flags: optimised modules are kept under
//! `target/stead-sw/opt-cache/`, keyed by the SHA-256 of wasm-bindgen's output, the flags
//! and wasm-opt's version, so a rebuild with an unchanged worker skips it.

use std::{
    ffi::OsString,
    fs,
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use stead_core::bundle::{self, BundleFile, BundleManifest, MANIFEST_FILE, WORKER_SCRIPT};

const SHIM: &str = include_str!("../../sw/js/shim.js");
const WORKER_CRATE: &str = "stead-sw";
const WORKER_WASM: &str = "stead_sw";
const DATA_CRATE: &str = "stead-sw-data";
const DATA_WASM: &str = "stead_sw_data";
/// The global the data module's glue defines (`wasm-bindgen --no-modules-global`).
const DATA_GLOBAL: &str = "stead_data";
/// The cargo profile for what ships to browsers (the workspace defines it: opt-level z).
pub const WASM_PROFILE: &str = "wasm-release";

/// Feature flags for wasm-opt: rustc emits these, and a stripped module no longer says so.
const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// Optimised worker modules kept, newest first; older ones are deleted (two per build:
/// the serving module and the data module).
const OPT_CACHE_KEEP: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run {tool}: {source}")]
    Spawn { tool: String, source: io::Error },
    /// `log` holds what the tool printed when its output was captured.
    #[error("{tool} failed ({status})")]
    Tool { tool: String, status: std::process::ExitStatus, log: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Bundle(#[from] bundle::BundleError),
    #[error("{0} has no index.html: is it an app's build folder?")]
    NoEntry(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}

/// Where the external tools are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub cargo: PathBuf,
    pub trunk: PathBuf,
    pub wasm_bindgen: PathBuf,
    /// binaryen's wasm-opt; without it the worker ships unoptimised.
    pub wasm_opt: Option<PathBuf>,
    /// PATH for the tools' children (trunk looks up wasm-opt and wasm-bindgen on it).
    pub path: Option<OsString>,
    pub output: Output,
}

/// Where the tools' own output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Straight to this process's stdout and stderr.
    Inherit,
    /// Kept, and handed back in [`BuildError::Tool`] if the tool fails (progress bars
    /// stay readable).
    Capture,
}

#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// The workspace holding the `stead-sw` crate.
    pub workspace: PathBuf,
    /// The app's `Trunk.toml`.
    pub trunk_config: PathBuf,
    pub dist: PathBuf,
    pub release: bool,
}

/// Sizes of what the build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub worker_wasm_raw: u64,
    pub worker_wasm_optimized: u64,
    pub worker_script: u64,
    pub worker_optimization: Optimization,
    pub manifest: BundleManifest,
}

/// Builds the app, its worker and its manifest into `config.dist`.
pub fn build(config: &BuildConfig, tools: &Tools) -> Result<BuildReport, BuildError> {
    build_app(config, tools)?;
    let worker = build_worker(config, tools)?;
    let manifest = write_bundle_manifest(&config.dist)?;
    Ok(BuildReport {
        worker_wasm_raw: worker.wasm_raw,
        worker_wasm_optimized: worker.wasm_optimized,
        worker_script: worker.script,
        worker_optimization: worker.optimization,
        manifest,
    })
}

/// Runs a tool to completion; an unsuccessful exit is an error.
pub fn run(tools: &Tools, program: &Path, args: &[&std::ffi::OsStr], dir: &Path) -> Result<(), BuildError> {
    let tool = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned();
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    if let Some(path) = &tools.path {
        cmd.env("PATH", path);
    }
    let spawn_err = |source| BuildError::Spawn { tool: tool.clone(), source };
    let (status, log) = match tools.output {
        Output::Inherit => (cmd.status().map_err(spawn_err)?, String::new()),
        Output::Capture => {
            // The log is shown to someone fixing their app: the tools' own backtraces
            // (trunk prints one with every failed cargo run) would bury the compiler's.
            cmd.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0");
            let out = cmd.output().map_err(spawn_err)?;
            let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status, log)
        }
    };
    if !status.success() {
        return Err(BuildError::Tool { tool, status, log });
    }
    Ok(())
}

/// Runs trunk on the app.
pub fn build_app(config: &BuildConfig, tools: &Tools) -> Result<(), BuildError> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--config".as_ref(),
        config.trunk_config.as_os_str(),
        "build".as_ref(),
        "--dist".as_ref(),
        config.dist.as_os_str(),
    ];
    if config.release {
        args.extend(["--release", "--cargo-profile", WASM_PROFILE].map(std::ffi::OsStr::new));
    }
    let dir = config.trunk_config.parent().unwrap_or(Path::new("."));
    run(tools, &tools.trunk, &args, dir)
}

/// What became of the worker's wasm-opt step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimization {
    /// wasm-opt ran, this long.
    Ran(Duration),
    /// The same module was optimised before: the kept result was used.
    Cached,
    /// No wasm-opt: the worker ships as wasm-bindgen wrote it.
    Skipped,
}

/// The worker's sizes: raw wasm, optimised wasm, and the script carrying it, for the
/// serving module; the data module's sizes (raw and as `stead-data.wasm` ships).
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub wasm_raw: u64,
    pub wasm_optimized: u64,
    /// The serving module's wasm, gzip-compressed (what a start-up loads and compiles).
    pub wasm_gzip: u64,
    pub script: u64,
    /// `stead-sw.js`, gzip-compressed (what the browser downloads and stores).
    pub script_gzip: u64,
    pub data_wasm_raw: u64,
    pub data_wasm_optimized: u64,
    /// wasm-opt of the serving module (the data module's is cached the same way).
    pub optimization: Optimization,
}

/// Builds the worker's two modules to wasm and writes `stead-sw.js` and
/// `stead-data.wasm` into the dist folder.
pub fn build_worker(config: &BuildConfig, tools: &Tools) -> Result<WorkerReport, BuildError> {
    // Always release: the worker's size is its start-up time, and tests should run
    // what ships.
    run(
        tools,
        &tools.cargo,
        &["build", "--package", WORKER_CRATE, "--package", DATA_CRATE, "--lib", "--target", "wasm32-unknown-unknown", "--profile", WASM_PROFILE]
            .map(std::ffi::OsStr::new),
        &config.workspace,
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| config.workspace.join("target"));
    let out = target_dir.join("stead-sw");
    fs::create_dir_all(&out).map_err(io_err(&out))?;
    let serving = bindgen_and_optimise(config, tools, &target_dir, &out, WORKER_WASM, None)?;
    let data = bindgen_and_optimise(config, tools, &target_dir, &out, DATA_WASM, Some(DATA_GLOBAL))?;
    let script = worker_script(&serving.glue, &serving.wasm, &data.glue, &bundle::sha256_hex(&data.wasm));
    fs::create_dir_all(&config.dist).map_err(io_err(&config.dist))?;
    let script_path = config.dist.join(WORKER_SCRIPT);
    fs::write(&script_path, &script).map_err(io_err(&script_path))?;
    let data_path = config.dist.join(bundle::DATA_MODULE);
    fs::write(&data_path, &data.wasm).map_err(io_err(&data_path))?;
    Ok(WorkerReport {
        wasm_raw: serving.raw,
        wasm_optimized: serving.wasm.len() as u64,
        wasm_gzip: crate::pipeline::gzip_len(&serving.wasm),
        script: script.len() as u64,
        script_gzip: crate::pipeline::gzip_len(script.as_bytes()),
        data_wasm_raw: data.raw,
        data_wasm_optimized: data.wasm.len() as u64,
        optimization: serving.optimization,
    })
}

/// One module through wasm-bindgen and (cached) wasm-opt.
struct Module {
    glue: String,
    wasm: Vec<u8>,
    raw: u64,
    optimization: Optimization,
}

fn bindgen_and_optimise(config: &BuildConfig, tools: &Tools, target_dir: &Path, out: &Path, name: &str, global: Option<&str>) -> Result<Module, BuildError> {
    let wasm = target_dir.join(format!("wasm32-unknown-unknown/{WASM_PROFILE}/{name}.wasm"));
    let mut args: Vec<&std::ffi::OsStr> = vec!["--target".as_ref(), "no-modules".as_ref(), "--no-typescript".as_ref()];
    if let Some(global) = global {
        args.extend(["--no-modules-global", global].map(std::ffi::OsStr::new));
    }
    args.extend(["--out-dir".as_ref(), out.as_os_str(), wasm.as_os_str()]);
    run(tools, &tools.wasm_bindgen, &args, &config.workspace)?;
    let bg = out.join(format!("{name}_bg.wasm"));
    let raw_bytes = fs::read(&bg).map_err(io_err(&bg))?;
    let raw = raw_bytes.len() as u64;
    let (wasm_bytes, optimization) = match &tools.wasm_opt {
        Some(wasm_opt) => {
            let cache = out.join("opt-cache");
            let key = opt_cache_key(&raw_bytes, &wasm_opt_version(tools, wasm_opt));
            let cached = cache.join(format!("{key}.wasm"));
            match fs::read(&cached) {
                Ok(bytes) => {
                    touch(&cached);
                    (bytes, Optimization::Cached)
                }
                Err(_) => {
                    let started = Instant::now();
                    let opt = out.join(format!("{name}_opt.wasm"));
                    let mut args: Vec<&std::ffi::OsStr> = vec!["-Oz".as_ref()];
                    args.extend(WASM_FEATURES.iter().map(std::ffi::OsStr::new));
                    args.extend([bg.as_os_str(), "-o".as_ref(), opt.as_os_str()]);
                    run(tools, wasm_opt, &args, &config.workspace)?;
                    let bytes = fs::read(&opt).map_err(io_err(&opt))?;
                    // The cache only saves time: failing to keep a copy fails nothing.
                    if fs::create_dir_all(&cache).is_ok() && fs::rename(&opt, &cached).is_ok() {
                        prune(&cache, OPT_CACHE_KEEP);
                    }
                    (bytes, Optimization::Ran(started.elapsed()))
                }
            }
        }
        None => (raw_bytes, Optimization::Skipped),
    };
    let glue_path = out.join(format!("{name}.js"));
    let glue = fs::read_to_string(&glue_path).map_err(io_err(&glue_path))?;
    Ok(Module { glue, wasm: wasm_bytes, raw, optimization })
}

/// The cache key of an optimised module: everything wasm-opt's output depends on.
pub fn opt_cache_key(raw_wasm: &[u8], wasm_opt_version: &str) -> String {
    let mut input = Vec::with_capacity(raw_wasm.len() + 256);
    input.extend_from_slice(wasm_opt_version.as_bytes());
    input.push(0);
    input.extend_from_slice(b"-Oz");
    for f in WASM_FEATURES {
        input.push(0);
        input.extend_from_slice(f.as_bytes());
    }
    input.push(0);
    input.extend_from_slice(raw_wasm);
    bundle::sha256_hex(&input)
}

/// `wasm-opt --version`, or its path when it will not say (a different binary at the same
/// path is then still a different key, as long as it moved).
fn wasm_opt_version(tools: &Tools, wasm_opt: &Path) -> String {
    let mut cmd = Command::new(wasm_opt);
    cmd.arg("--version").stdin(Stdio::null()).stderr(Stdio::null());
    if let Some(path) = &tools.path {
        cmd.env("PATH", path);
    }
    match cmd.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => wasm_opt.display().to_string(),
    }
}

/// Marks a cache entry as just used.
fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Keeps the `keep` most recently used entries of a cache folder.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = fs::remove_file(path);
    }
}

/// The worker's single script: the serving wasm as base64 and the data module's SHA-256,
/// both modules' wasm-bindgen glue, then the shim.
pub fn worker_script(glue: &str, wasm: &[u8], data_glue: &str, data_sha256: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(wasm);
    format!("self.__STEAD_SW_WASM = \"{b64}\";\nself.__STEAD_DATA_SHA256 = \"{data_sha256}\";\n{glue}\n{data_glue}\n{SHIM}")
}

/// Lists every file of a build folder into `stead-bundle.json` and returns the manifest.
/// The worker script, the manifest itself and dotfiles (trunk's `.trunk-lock`) are not
/// part of the bundle.
pub fn write_bundle_manifest(dist: &Path) -> Result<BundleManifest, BuildError> {
    let mut files = Vec::new();
    collect(dist, dist, &mut files)?;
    if !files.iter().any(|f| f.path == "index.html") {
        return Err(BuildError::NoEntry(dist.to_path_buf()));
    }
    let manifest = BundleManifest::new("index.html", files)?;
    let path = dist.join(MANIFEST_FILE);
    fs::write(&path, manifest.to_json()).map_err(io_err(&path))?;
    Ok(manifest)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<BundleFile>) -> Result<(), BuildError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(io_err(&path))?.is_dir() {
            collect(root, &path, out)?;
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        if rel == WORKER_SCRIPT || rel == MANIFEST_FILE {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        out.push(BundleFile {
            sha256: bundle::sha256_hex(&bytes),
            size: bytes.len() as u64,
            mime: stead_server::mime_for(&rel),
            immutable: bundle::is_content_hashed(&rel),
            path: rel,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lists_app_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("assets")).unwrap();
        for (p, c) in [
            ("index.html", "<h1>"),
            ("todo-0123456789abcdef.js", "js"),
            ("assets/logo.svg", "<svg/>"),
            (".trunk-lock", ""),
            (WORKER_SCRIPT, "sw"),
            (MANIFEST_FILE, "{}"),
        ] {
            fs::write(d.join(p), c).unwrap();
        }
        let m = write_bundle_manifest(d).unwrap();
        let paths: Vec<_> = m.files.iter().map(|f| (f.path.as_str(), f.mime.as_str(), f.immutable)).collect();
        assert_eq!(paths, [
            ("assets/logo.svg", "image/svg+xml", false),
            ("index.html", "text/html; charset=utf-8", false),
            ("todo-0123456789abcdef.js", "text/javascript; charset=utf-8", true),
        ]);
        let written = BundleManifest::parse(&fs::read(d.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(written, m);
    }

    #[test]
    fn a_folder_without_index_html_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("app.js"), "x").unwrap();
        let err = write_bundle_manifest(dir.path()).unwrap_err();
        assert!(err.to_string().ends_with("has no index.html: is it an app's build folder?"), "{err}");
    }

    #[test]
    fn the_opt_cache_key_follows_input_and_tool() {
        let a = opt_cache_key(b"\0asm\x01", "wasm-opt version 132");
        assert_eq!(a, opt_cache_key(b"\0asm\x01", "wasm-opt version 132"));
        assert_ne!(a, opt_cache_key(b"\0asm\x02", "wasm-opt version 132"));
        assert_ne!(a, opt_cache_key(b"\0asm\x01", "wasm-opt version 133"));
    }

    #[test]
    fn prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.path().join(name);
            fs::write(&p, "x").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            fs::File::options().append(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        prune(dir.path(), 2);
        let mut left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["b", "c"]);
    }

    #[test]
    fn worker_script_carries_the_wasm_before_the_shim() {
        let script = worker_script("let wasm_bindgen = {};", b"\0asm\x01", "let stead_data = {};", "ab12");
        assert!(script.starts_with("self.__STEAD_SW_WASM = \"AGFzbQE=\";\nself.__STEAD_DATA_SHA256 = \"ab12\";\nlet wasm_bindgen = {};\nlet stead_data"));
        assert!(script.ends_with(SHIM));
    }
}
