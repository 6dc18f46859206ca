//! `cargo xtask setup`: install what the build and tests need, only when it is missing.
//!
//! Everything lands where a fresh machine can reach it without downloads outside the
//! package registries: rustup's wasm32 target, `cargo install` for wasm-bindgen-cli (the
//! lockfile's exact version), trunk and geckodriver, npm's `binaryen` for wasm-opt in
//! `.tools/`, Debian's Chromium and ChromeDriver, Debian's Firefox ESR, and Debian's
//! WebKitGTK WebDriver (`webkit2gtk-driver`, which brings MiniBrowser) with Xvfb.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util::{cmd, step};

pub const TRUNK_VERSION: &str = "0.22.1";
pub const BINARYEN_VERSION: &str = "132";

/// Where each tool was found or installed.
#[derive(Debug, Clone)]
pub struct Tools {
    pub trunk: PathBuf,
    pub wasm_bindgen: PathBuf,
    /// The folder holding binaryen's `wasm-opt`; put first on PATH for trunk.
    pub wasm_opt_dir: PathBuf,
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
    pub firefox: PathBuf,
    pub geckodriver: PathBuf,
    pub webkit_driver: PathBuf,
    pub minibrowser: PathBuf,
    pub xvfb: PathBuf,
}

impl Tools {
    pub fn wasm_opt(&self) -> PathBuf {
        self.wasm_opt_dir.join("wasm-opt")
    }

    /// PATH with binaryen's wasm-opt first, so trunk and the build never pick an older one.
    pub fn path_env(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.wasm_opt_dir.clone(), cargo_bin_dir()];
        dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        std::env::join_paths(dirs).expect("paths without separators")
    }
}

pub fn run(root: &Path) -> Result<Tools> {
    step("setup");
    let mut report = Vec::new();

    let targets = cmd("rustup").args(["target", "list", "--installed"]).probe().unwrap_or_default();
    if targets.lines().any(|l| l.trim() == "wasm32-unknown-unknown") {
        report.push("found   wasm32-unknown-unknown target".to_owned());
    } else {
        cmd("rustup").args(["target", "add", "wasm32-unknown-unknown"]).run()?;
        report.push("install wasm32-unknown-unknown target".to_owned());
    }

    let wb_version = lockfile_version(root, "wasm-bindgen")?;
    let wasm_bindgen = cargo_tool("wasm-bindgen");
    let have = cmd(&wasm_bindgen).arg("--version").probe().unwrap_or_default();
    let runner_ok = cmd(cargo_tool("wasm-bindgen-test-runner")).arg("--version").probe().is_some();
    if have.trim() == format!("wasm-bindgen {wb_version}") && runner_ok {
        report.push(format!("found   wasm-bindgen-cli {wb_version}"));
    } else {
        // No --locked: a pinned dependency of the CLI is missing from the registry copy.
        cmd("cargo").args(["install", "wasm-bindgen-cli", "--version", &wb_version, "--force"]).run()?;
        report.push(format!("install wasm-bindgen-cli {wb_version}"));
    }

    let trunk = cargo_tool("trunk");
    let have = cmd(&trunk).arg("--version").probe().unwrap_or_default();
    if have.trim() == format!("trunk {TRUNK_VERSION}") {
        report.push(format!("found   trunk {TRUNK_VERSION}"));
    } else {
        // trunk declares a newer rustc than it needs; it builds and runs on ours.
        cmd("cargo")
            .args(["install", "trunk", "--version", TRUNK_VERSION, "--locked", "--ignore-rust-version", "--force"])
            .run()?;
        report.push(format!("install trunk {TRUNK_VERSION}"));
    }

    let tools_dir = root.join(".tools");
    let wasm_opt_dir = tools_dir.join("node_modules/.bin");
    let have = cmd(wasm_opt_dir.join("wasm-opt")).arg("--version").probe().unwrap_or_default();
    if have.contains(&format!("version {BINARYEN_VERSION}")) {
        report.push(format!("found   binaryen {BINARYEN_VERSION} (wasm-opt)"));
    } else {
        std::fs::create_dir_all(&tools_dir)?;
        npm_install(&tools_dir, &[&format!("binaryen@{BINARYEN_VERSION}")])?;
        report.push(format!("install binaryen {BINARYEN_VERSION} (wasm-opt) into .tools/"));
    }

    let chromium = PathBuf::from("/usr/bin/chromium");
    let chromedriver = PathBuf::from("/usr/bin/chromedriver");
    if chromium.exists() && chromedriver.exists() {
        report.push("found   chromium and chromedriver".to_owned());
    } else {
        if !is_root() {
            bail!("Chromium is missing: run `sudo apt-get install chromium chromium-driver`, then this again");
        }
        cmd("apt-get").arg("update").run()?;
        cmd("apt-get").args(["install", "-y", "chromium", "chromium-driver"]).env("DEBIAN_FRONTEND", "noninteractive").run()?;
        report.push("install chromium and chromedriver (apt)".to_owned());
    }

    let firefox = PathBuf::from("/usr/bin/firefox-esr");
    if firefox.exists() {
        report.push("found   firefox-esr".to_owned());
    } else {
        if !is_root() {
            bail!("Firefox is missing: run `sudo apt-get install firefox-esr`, then this again");
        }
        cmd("apt-get").arg("update").run()?;
        cmd("apt-get").args(["install", "-y", "firefox-esr"]).env("DEBIAN_FRONTEND", "noninteractive").run()?;
        report.push("install firefox-esr (apt)".to_owned());
    }

    // crates.io's geckodriver builds from source; npm's downloads a binary, which fails here.
    let geckodriver = cargo_tool("geckodriver");
    if cmd(&geckodriver).arg("--version").probe().is_some() {
        report.push("found   geckodriver".to_owned());
    } else {
        cmd("cargo").args(["install", "geckodriver", "--locked"]).run()?;
        report.push("install geckodriver (cargo)".to_owned());
    }

    // WebKitGTK has no headless mode: MiniBrowser draws on an Xvfb display.
    let webkit_driver = PathBuf::from("/usr/bin/WebKitWebDriver");
    let minibrowser = PathBuf::from("/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser");
    let xvfb = PathBuf::from("/usr/bin/Xvfb");
    if webkit_driver.exists() && minibrowser.exists() && xvfb.exists() {
        report.push("found   WebKitWebDriver, MiniBrowser and Xvfb".to_owned());
    } else {
        if !is_root() {
            bail!("WebKitGTK's WebDriver is missing: run `sudo apt-get install webkit2gtk-driver xvfb`, then this again");
        }
        cmd("apt-get").arg("update").run()?;
        cmd("apt-get").args(["install", "-y", "webkit2gtk-driver", "xvfb"]).env("DEBIAN_FRONTEND", "noninteractive").run()?;
        anyhow::ensure!(minibrowser.exists(), "webkit2gtk-driver installed, but MiniBrowser is not at {}", minibrowser.display());
        report.push("install webkit2gtk-driver and xvfb (apt)".to_owned());
    }

    for line in &report {
        eprintln!("  {line}");
    }
    Ok(Tools { trunk, wasm_bindgen, wasm_opt_dir, chromium, chromedriver, firefox, geckodriver, webkit_driver, minibrowser, xvfb })
}

/// Installs npm packages into `dir` (which gets a package.json if it has none).
pub fn npm_install(dir: &Path, packages: &[&str]) -> Result<()> {
    if !dir.join("package.json").exists() {
        std::fs::write(dir.join("package.json"), "{\"private\": true}\n")?;
    }
    cmd("npm")
        .args(["install", "--no-audit", "--no-fund", "--save-exact"])
        .args(packages)
        .dir(dir)
        .run()
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

fn cargo_tool(name: &str) -> PathBuf {
    cargo_bin_dir().join(name)
}

fn is_root() -> bool {
    cmd("id").arg("-u").probe().is_some_and(|s| s.trim() == "0")
}

/// The version of `package` in Cargo.lock.
pub fn lockfile_version(root: &Path, package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("cannot read Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"")
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_owned());
        }
    }
    bail!("{package} is not in Cargo.lock")
}
