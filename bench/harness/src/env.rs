//! The environment header every suite prints and writes: rustc, the build profile, the
//! CPU, and the version of every anchor that ran.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Environment {
    pub rustc: String,
    /// e.g. `release: opt-level 3, lto thin, codegen-units 16`.
    pub profile: String,
    pub cpu: String,
    pub cores: usize,
    /// The 1-minute load average when the suite started: other work on a shared machine.
    pub load: String,
    /// (anchor, version)
    pub anchors: Vec<(String, String)>,
}

impl Environment {
    /// Reads rustc, CPU and load from the machine and the profile from the workspace's
    /// Cargo.toml (with any `CARGO_PROFILE_RELEASE_*` override in the environment).
    pub fn detect(anchors: Vec<(String, String)>) -> Environment {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let rustc = Command::new(rustc)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default();
        let toml = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap_or_default();
        let profile = describe_profile(&toml, cfg!(debug_assertions), |k| std::env::var(k).ok());
        Environment { rustc, profile, cpu, cores, load, anchors }
    }

    /// The header lines, without a trailing newline.
    pub fn header(&self) -> String {
        let anchors: Vec<String> = self.anchors.iter().map(|(n, v)| format!("{n} {v}")).collect();
        format!(
            "  {}; {}\n  CPU: {} × {} (load {} at start)\n  anchors: {}",
            self.rustc,
            self.profile,
            self.cores,
            self.cpu,
            self.load,
            if anchors.is_empty() { "none".to_owned() } else { anchors.join(", ") }
        )
    }

    pub fn anchors_joined(&self) -> String {
        self.anchors.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join("; ")
    }
}

/// The folder of the workspace this crate was built in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The version of `package` in the workspace's Cargo.lock (the first, if several).
pub fn locked_version(package: &str) -> Option<String> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{package}\"") {
            return lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned);
        }
    }
    None
}

/// `release: opt-level 3, lto thin, codegen-units 16` from the `[profile.release]` table
/// of a Cargo.toml, cargo's defaults for what it leaves out, and `CARGO_PROFILE_RELEASE_*`
/// overrides (read through `var`).
pub fn describe_profile(cargo_toml: &str, debug_assertions: bool, var: impl Fn(&str) -> Option<String>) -> String {
    if debug_assertions {
        return "debug build (dev profile): not a measurement".into();
    }
    let mut in_release = false;
    let (mut opt, mut lto, mut cgu) = ("3".to_owned(), "false".to_owned(), "16".to_owned());
    for line in cargo_toml.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_release = line == "[profile.release]";
            continue;
        }
        if !in_release {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim() {
                "opt-level" => opt = v,
                "lto" => lto = v,
                "codegen-units" => cgu = v,
                _ => {}
            }
        }
    }
    if let Some(v) = var("CARGO_PROFILE_RELEASE_OPT_LEVEL") {
        opt = v;
    }
    if let Some(v) = var("CARGO_PROFILE_RELEASE_LTO") {
        lto = v;
    }
    if let Some(v) = var("CARGO_PROFILE_RELEASE_CODEGEN_UNITS") {
        cgu = v;
    }
    format!("release: opt-level {opt}, lto {lto}, codegen-units {cgu}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_from_the_release_table_with_defaults_and_overrides() {
        let toml = "[profile.release]\n# speed\nlto = \"thin\"\n\n[profile.wasm-release]\nopt-level = \"z\"\ncodegen-units = 1\n";
        let none = |_: &str| None;
        assert_eq!(describe_profile(toml, false, none), "release: opt-level 3, lto thin, codegen-units 16");
        let over = |k: &str| (k == "CARGO_PROFILE_RELEASE_CODEGEN_UNITS").then(|| "1".to_owned());
        assert_eq!(describe_profile(toml, false, over), "release: opt-level 3, lto thin, codegen-units 1");
        assert!(describe_profile(toml, true, none).starts_with("debug build"));
    }
}
