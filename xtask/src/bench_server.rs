//! `cargo xtask bench server`: stead-server against the Yjs WebSocket server, same load.
//!
//! Installs the pinned Yjs server packages into `.tools/bench-server/` (skipped when
//! present), builds stead-server and the load generator (`bench/server`, bin
//! `bench-server`) in release mode, and runs it. It prints the Stead/Yjs table and writes
//! raw numbers to `target/bench/server.csv` (and `server.json` for the report).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use stead_bench_harness::SuiteResult;

use crate::{
    setup,
    util::{cargo, cmd, step},
};

/// The anchor (BENCH.md): exact versions, so every run measures the same server. 0.1.5 as
/// published does not install (its `@y/protocols` wants a pre-release `@y/y`).
const WEBSOCKET_SERVER_VERSION: &str = "0.1.1";
const YJS_VERSION: &str = "13.6.33";
const Y_PROTOCOLS_VERSION: &str = "1.0.7";

pub fn run(root: &Path, quick: bool, reps: Option<usize>, out_dir: &Path) -> Result<SuiteResult> {
    let tools = install_yjs(root)?;
    step("bench server: build stead-server and the load generator (release)");
    cargo(root).args(["build", "--release", "--package", "stead-server", "--package", "stead-bench-server"]).run()?;
    let release = target_dir(root).join("release");

    step("bench server: stead-server against @y/websocket-server");
    let mut c = cmd(release.join("bench-server"))
        .arg("run")
        .arg("--stead-server")
        .arg(release.join("stead-server"))
        .arg("--yjs-dir")
        .arg(&tools)
        .arg("--yjs-versions")
        .arg(format!("@y/websocket-server {WEBSOCKET_SERVER_VERSION}, yjs {YJS_VERSION}, y-protocols {Y_PROTOCOLS_VERSION}, node {}", node_version()))
        .arg("--out")
        .arg(out_dir);
    if quick {
        c = c.arg("--quick");
    }
    if let Some(n) = reps {
        c = c.args(["--reps", &n.to_string()]);
    }
    c.run()?;
    SuiteResult::load(&out_dir.join("server.json"))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn node_version() -> String {
    cmd("node").arg("--version").probe().map(|v| v.trim().to_owned()).unwrap_or_else(|| "unknown".into())
}

/// Installs the Yjs server when missing and puts the update generator beside it.
fn install_yjs(root: &Path) -> Result<PathBuf> {
    step(&format!("bench server: @y/websocket-server {WEBSOCKET_SERVER_VERSION}, yjs {YJS_VERSION}, y-protocols {Y_PROTOCOLS_VERSION}"));
    let dir = root.join(".tools/bench-server");
    std::fs::create_dir_all(&dir)?;
    let installed = |pkg: &str, version: &str| {
        std::fs::read_to_string(dir.join("node_modules").join(pkg).join("package.json"))
            .is_ok_and(|s| s.contains(&format!("\"version\": \"{version}\"")))
    };
    let wanted = [("@y/websocket-server", WEBSOCKET_SERVER_VERSION), ("yjs", YJS_VERSION), ("y-protocols", Y_PROTOCOLS_VERSION)];
    if wanted.iter().all(|(p, v)| installed(p, v)) {
        eprintln!("  found   the Yjs server packages in .tools/bench-server");
    } else {
        let specs: Vec<String> = wanted.iter().map(|(p, v)| format!("{p}@{v}")).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        setup::npm_install(&dir, &specs)?;
    }
    // Node resolves `yjs` from the script's folder upwards: the script sits next to node_modules.
    let source = root.join("bench/server/js/gen-updates.mjs");
    std::fs::copy(&source, dir.join("gen-updates.mjs")).with_context(|| format!("cannot read {}", source.display()))?;
    Ok(dir)
}
