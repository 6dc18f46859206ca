//! Small helpers for running commands and printing steps.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Prints a step's heading with the minutes and seconds since the first step, so a run's
/// log shows where its time went (CI's clean clone builds and installs from cold).
pub fn step(what: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let secs = START.get_or_init(std::time::Instant::now).elapsed().as_secs();
    eprintln!("\n==> {what} [{}:{:02}]", secs / 60, secs % 60);
}

/// A command that echoes itself and fails with its exit status.
pub struct Cmd(Command);

pub fn cmd(program: impl AsRef<OsStr>) -> Cmd {
    Cmd(Command::new(program))
}

/// The cargo that runs xtask, so every step uses the same toolchain.
pub fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into())
}

pub fn cargo(root: &Path) -> Cmd {
    let mut c = cmd(cargo_program());
    c.0.current_dir(root);
    c
}

impl Cmd {
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0.args(args);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.arg(arg);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.0.env_remove(key);
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.0.current_dir(dir);
        self
    }

    fn describe(&self) -> String {
        let mut s = self.0.get_program().to_string_lossy().into_owned();
        for a in self.0.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Runs with inherited output; an unsuccessful exit is an error.
    pub fn run(mut self) -> Result<()> {
        let what = self.describe();
        eprintln!("$ {what}");
        let status = self.0.stdin(Stdio::null()).status().with_context(|| format!("cannot start `{what}`"))?;
        if !status.success() {
            bail!("`{what}` failed: {status}");
        }
        Ok(())
    }

    /// Runs quietly and returns stdout, or `None` when the program is missing or fails.
    pub fn probe(mut self) -> Option<String> {
        let out = self.0.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
