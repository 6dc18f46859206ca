//! `cargo xtask bench sw`: Stead's service worker against Workbox 7 on the same app.
//!
//! Installs the pinned Workbox packages and esbuild into `.tools/bench-sw/`, bundles
//! `bench/sw/workbox-sw.js` into one classic worker script, then runs the measuring
//! program (`tests/src/bin/bench-sw.rs`, which drives Chromium through the e2e harness).
//! It prints the Stead/Workbox table and writes raw samples to `target/bench/sw.csv` (cold
//! start against worker size to `sw-cold-size.csv`, Stead's cold start by step to
//! `sw-cold-profile.csv`); the
//! samples are then read back into the shared harness (medians, spreads, ratio ranges,
//! environment) and written as `sw.json` for the report. Both sites are served by a release
//! build of stead-server.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use stead_bench_harness::SuiteResult;

use crate::{
    bench_report,
    setup::{self, Tools},
    util::{cargo, cmd, step},
};

/// The anchor: exact versions, so every run measures the same Workbox.
const WORKBOX_VERSION: &str = "7.4.1";
const ESBUILD_VERSION: &str = "0.28.2";

pub fn run(root: &Path, tools: &Tools, dist: &Path, server: &Path, quick: bool) -> Result<SuiteResult> {
    let out_dir = target_dir(root).join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let workbox_script = bundle_workbox(root, &out_dir)?;

    step("bench sw: Stead's worker (OPFS) against Workbox (Cache Storage)");
    // Debug build: the program only drives the browser, every timed step runs in Chromium,
    // and the debug artifacts are shared with the e2e tests.
    let mut c = cargo(root)
        .args(["run", "--package", "stead-e2e", "--bin", "bench-sw", "--"])
        .arg("--dist")
        .arg(dist)
        .arg("--server")
        .arg(server)
        .arg("--workbox")
        .arg(&workbox_script)
        .args(["--workbox-version", WORKBOX_VERSION])
        .arg("--out")
        .arg(out_dir.join("sw.csv"))
        .arg("--chromium")
        .arg(&tools.chromium)
        .arg("--chromedriver")
        .arg(&tools.chromedriver);
    if quick {
        c = c.arg("--quick");
    }
    let started = std::time::Instant::now();
    c.run()?;
    let csv = std::fs::read_to_string(out_dir.join("sw.csv")).context("bench-sw wrote no sw.csv")?;
    let anchors = vec![("workbox".into(), WORKBOX_VERSION.into()), ("esbuild".into(), ESBUILD_VERSION.into())];
    let mut result = bench_report::sw_result(&csv, quick, bench_report::sw_env(anchors, &tools.chromium))?;
    let cold = std::fs::read_to_string(out_dir.join("sw-cold-size.csv")).context("bench-sw wrote no sw-cold-size.csv")?;
    bench_report::sw_cold_size(&cold, &mut result)?;
    let profile = std::fs::read_to_string(out_dir.join("sw-cold-profile.csv")).context("bench-sw wrote no sw-cold-profile.csv")?;
    let cold = "Stead's offline cold start by step, as its worker reports it (ms since the worker's time origin)";
    bench_report::sw_profile(&profile, cold, &mut result)?;
    let profile = std::fs::read_to_string(out_dir.join("sw-precache-profile.csv")).context("bench-sw wrote no sw-precache-profile.csv")?;
    let precache = "Stead's precache by step, as its worker reports it (ms after the page's register(); `worker_origin` is the worker's start)";
    bench_report::sw_profile(&profile, precache, &mut result)?;
    result.seconds = started.elapsed().as_secs_f64();
    result.finish(&out_dir)?;
    Ok(result)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// Installs Workbox and esbuild when missing and bundles the Workbox worker; returns the
/// bundled script.
fn bundle_workbox(root: &Path, out_dir: &Path) -> Result<PathBuf> {
    step(&format!("bench sw: Workbox {WORKBOX_VERSION} worker, bundled by esbuild {ESBUILD_VERSION}"));
    let dir = root.join(".tools/bench-sw");
    std::fs::create_dir_all(&dir)?;
    let installed = |pkg: &str, version: &str| {
        std::fs::read_to_string(dir.join("node_modules").join(pkg).join("package.json"))
            .is_ok_and(|s| s.contains(&format!("\"version\": \"{version}\"")))
    };
    let wanted = [
        ("workbox-precaching", WORKBOX_VERSION),
        ("workbox-routing", WORKBOX_VERSION),
        ("workbox-strategies", WORKBOX_VERSION),
        ("esbuild", ESBUILD_VERSION),
    ];
    if wanted.iter().all(|(p, v)| installed(p, v)) {
        eprintln!("  found   workbox {WORKBOX_VERSION} and esbuild {ESBUILD_VERSION} in .tools/bench-sw");
    } else {
        let specs: Vec<String> = wanted.iter().map(|(p, v)| format!("{p}@{v}")).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        setup::npm_install(&dir, &specs)?;
    }
    // esbuild resolves packages from the source's folder upwards: bundle a copy that sits
    // next to node_modules.
    let source = root.join("bench/sw/workbox-sw.js");
    let copy = dir.join("workbox-sw.js");
    std::fs::copy(&source, &copy).with_context(|| format!("cannot read {}", source.display()))?;
    let out = out_dir.join("workbox-sw.js");
    cmd(dir.join("node_modules/.bin/esbuild"))
        .arg("workbox-sw.js")
        .args(["--bundle", "--format=iife", "--minify", "--target=chrome120", "--log-level=warning"])
        .arg("--define:process.env.NODE_ENV=\"production\"")
        .arg(format!("--outfile={}", out.display()))
        .dir(&dir)
        .run()?;
    eprintln!("  workbox worker {} bytes", std::fs::metadata(&out)?.len());
    Ok(out)
}
