//! Where `stead` finds Stead's checkout and the tools a build runs.
//!
//! An app outside Stead's repository depends on the checkout `stead` was built from: its
//! `Cargo.toml` points at `<checkout>/framework/yew`, and `stead build` builds the service
//! worker from `<checkout>/sw`. The checkout is the one recorded when `stead` was
//! compiled (`env!("CARGO_MANIFEST_DIR")/..`), or `STEAD_ROOT` when set.
//! The tools are the ones `cargo xtask setup` installs: trunk and wasm-bindgen-cli
//! (cargo's bin folder or PATH) and binaryen's wasm-opt (the checkout's `.tools/`, or PATH).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::build::{Output, Tools};

/// The trunk release Stead's builds are made with.
pub const TRUNK_VERSION: &str = "0.22.1";
/// The binaryen release whose wasm-opt reads what rustc and wasm-bindgen write.
pub const BINARYEN_VERSION: &str = "132";

/// A tool that is missing or of the wrong version, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0} is not a Stead checkout (no framework/yew or sw crate there)")]
    NoCheckout(PathBuf),
    #[error("{want} is not installed{}", found.as_ref().map(|f| format!(" (found: {f})")).unwrap_or_default())]
    Missing { want: String, found: Option<String> },
}

impl ToolError {
    pub fn hint(&self, root: &Path) -> String {
        match self {
            ToolError::NoCheckout(_) => {
                "set STEAD_ROOT to the folder of Stead's repository, or install `stead` again from it (`cargo install --path cli`)".into()
            }
            ToolError::Missing { .. } => format!("run `cargo xtask setup` in {} (it installs what is missing)", root.display()),
        }
    }
}

/// The Stead checkout apps build against.
pub fn stead_root() -> Result<PathBuf, ToolError> {
    let root = match std::env::var_os("STEAD_ROOT") {
        Some(r) => PathBuf::from(r),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    if root.join("framework/yew/Cargo.toml").is_file() && root.join("sw/Cargo.toml").is_file() {
        Ok(root)
    } else {
        Err(ToolError::NoCheckout(root))
    }
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

fn version_of(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The first of `candidates` whose `--version` contains `want`; else what was found.
fn find(candidates: &[PathBuf], want: &str) -> Result<PathBuf, ToolError> {
    let mut found = None;
    for c in candidates {
        if let Some(v) = version_of(c) {
            if v.contains(want) {
                return Ok(c.clone());
            }
            found.get_or_insert(format!("{v} at {}", c.display()));
        }
    }
    Err(ToolError::Missing { want: want.to_owned(), found })
}

/// The version of `package` in the checkout's `Cargo.lock`.
pub fn lockfile_version(root: &Path, package: &str) -> Option<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"") {
            return lines.next()?.strip_prefix("version = \"").map(|v| v.trim_end_matches('"').to_owned());
        }
    }
    None
}

/// Finds trunk, wasm-bindgen (the lockfile's version) and wasm-opt. wasm-opt is needed
/// for release builds only; without it a debug build ships the worker unoptimised.
pub fn find_tools(root: &Path, release: bool, output: Output) -> Result<Tools, ToolError> {
    let bin = cargo_bin_dir();
    let on_path = |name: &str| -> Vec<PathBuf> {
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect()).unwrap_or_default()
    };
    let trunk = find(&[vec![bin.join("trunk")], on_path("trunk")].concat(), &format!("trunk {TRUNK_VERSION}"))?;
    let wb_version = lockfile_version(root, "wasm-bindgen").unwrap_or_default();
    let wasm_bindgen = find(&[vec![bin.join("wasm-bindgen")], on_path("wasm-bindgen")].concat(), &format!("wasm-bindgen {wb_version}"))?;
    let binaryen = root.join(".tools/node_modules/.bin/wasm-opt");
    let wasm_opt = match find(&[vec![binaryen], on_path("wasm-opt")].concat(), &format!("wasm-opt version {BINARYEN_VERSION}")) {
        Ok(p) => Some(p),
        Err(e) if release => return Err(e),
        Err(_) => None,
    };
    // trunk looks wasm-bindgen and wasm-opt up on PATH: the right ones come first.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for tool in wasm_opt.iter().chain([&wasm_bindgen]) {
        if let Some(d) = tool.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.push(bin);
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let path: Option<OsString> = std::env::join_paths(dirs).ok();
    let cargo = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into());
    Ok(Tools { cargo, trunk, wasm_bindgen, wasm_opt, path, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lockfile_names_the_versions() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let v = lockfile_version(&root, "wasm-bindgen").unwrap();
        assert!(v.starts_with("0.2."), "{v}");
        assert_eq!(lockfile_version(&root, "no-such-crate"), None);
        assert!(stead_root().is_ok(), "stead is built inside a checkout");
    }

    #[test]
    fn a_missing_tool_says_what_was_found_and_what_to_run() {
        let e = find(&[PathBuf::from("/no/such/wasm-bindgen")], "wasm-bindgen 0.2.130").unwrap_err();
        assert_eq!(e.to_string(), "wasm-bindgen 0.2.130 is not installed");
        assert!(e.hint(Path::new("/opt/stead")).contains("cargo xtask setup"));
        let e = ToolError::NoCheckout(PathBuf::from("/nowhere"));
        assert!(e.hint(Path::new(".")).contains("STEAD_ROOT"));
    }
}
