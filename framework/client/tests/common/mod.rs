//! A real `stead-server` process on a free port of 127.0.0.1, killed by its own PID.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The stead-server binary, found or built once per test binary.
fn server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let p = find_or_build()?;
    Ok(BUILT.get_or_init(|| p).clone())
}

/// The stead-server binary: `STEAD_SERVER_BIN`, or built into this test's target folder
/// (cargo builds only the library of a dev-dependency, not its binaries).
fn find_or_build() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("STEAD_SERVER_BIN") {
        return Ok(bin.into());
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(|d| d.parent()).context("test binary outside a target folder")?;
    let target = profile_dir.parent().context("no target folder")?;
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "--package", "stead-server", "--bin", "stead-server", "--target-dir"]).arg(target);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().context("running cargo build")?;
    anyhow::ensure!(status.success(), "building stead-server failed");
    Ok(profile_dir.join("stead-server"))
}

pub struct Server {
    pub base: String,
    pub port: u16,
    child: Child,
}

impl Server {
    /// A server on a free port with its database in `dir`.
    pub fn start(dir: &std::path::Path) -> anyhow::Result<Server> {
        Server::start_on(dir, 0)
    }

    /// A server on `port` (0: a free one). A port just released by a killed server may still
    /// be held for a moment: this retries for a few seconds.
    pub fn start_on(dir: &std::path::Path, port: u16) -> anyhow::Result<Server> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Server::try_start(dir, port) {
                Ok(s) => return Ok(s),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }

    fn try_start(dir: &std::path::Path, port: u16) -> anyhow::Result<Server> {
        let mut child = Command::new(server_bin()?)
            .arg("--dir")
            .arg(dir)
            .arg("--database")
            .arg(dir.join("db.sqlite3"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--spaces", "open"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting stead-server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("stead-server did not start: {line:?}");
        };
        let port = base.rsplit(':').next().unwrap_or("0").parse()?;
        Ok(Server { base: base.to_owned(), port, child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Child::kill signals this child's own PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
