//! Harness for Stead's end-to-end tests: a real server process, a real browser (Chromium
//! through ChromeDriver, WebDriver + CDP; Firefox through geckodriver; WebKitGTK's
//! MiniBrowser through WebKitWebDriver, on an Xvfb display of its own) and a counting,
//! cuttable proxy between them.
//!
//! `cargo xtask test` builds the todo example and the server and passes their paths in
//! `STEAD_E2E_DIST` and `STEAD_SERVER_BIN`; `STEAD_E2E_BROWSER` (`chromium`, the default,
//! `firefox` or `webkit`) chooses the engine. Every test starts its own processes on free loopback
//! ports with a fresh browser profile and stops them by their own PIDs. A step an engine
//! cannot do is named in the test's output ([`Browser::lacks`]) and only that is skipped.

pub mod native;
pub mod proxy;
pub mod throttle;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use thirtyfour::prelude::*;

/// A browser engine the tests drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Chromium,
    Firefox,
    WebKit,
}

/// Something a test does that not every engine lets WebDriver do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Chrome DevTools Protocol commands ([`Browser::cdp`]).
    Cdp,
    /// Lowering an origin's storage quota while the page runs.
    QuotaOverride,
    /// Stopping the service worker while its page stays open (elsewhere the page must go
    /// and come back, which needs the worker or the server to serve it).
    StopWorkerUnderOpenPage,
    /// OPFS, where the worker keeps the bundle and new spaces (elsewhere IndexedDB).
    Opfs,
    /// A script opening downloads (`Content-Disposition: attachment`) in frames and new
    /// windows while WebDriver waits for the script's result.
    OpenDownloadFromScript,
    /// Service worker static routes (`InstallEvent.addRoutes`), which the cold copy needs.
    StaticRoutes,
}

impl Engine {
    /// The engine `STEAD_E2E_BROWSER` names; Chromium when unset.
    pub fn from_env() -> Result<Engine> {
        match std::env::var("STEAD_E2E_BROWSER").as_deref() {
            Err(_) | Ok("" | "chromium") => Ok(Engine::Chromium),
            Ok("firefox") => Ok(Engine::Firefox),
            Ok("webkit") => Ok(Engine::WebKit),
            Ok(other) => bail!("STEAD_E2E_BROWSER={other:?}: expected chromium, firefox or webkit"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Chromium => "Chromium",
            Engine::Firefox => "Firefox",
            Engine::WebKit => "WebKit",
        }
    }

    /// Why this engine cannot do `cap` through WebDriver, if it cannot.
    pub fn lacks(self, cap: Capability) -> Option<&'static str> {
        match (self, cap) {
            (Engine::Chromium, _) => None,
            (Engine::Firefox, Capability::Cdp) => Some("geckodriver speaks no CDP (Firefox dropped CDP for WebDriver BiDi)"),
            (Engine::Firefox, Capability::QuotaOverride) => Some(
                "Firefox has no per-origin quota override (only the profile-wide `dom.quotaManager.temporaryStorage.fixedLimit`, read once at start-up)",
            ),
            (Engine::Firefox, Capability::StopWorkerUnderOpenPage | Capability::Opfs | Capability::OpenDownloadFromScript) => None,
            (Engine::Firefox | Engine::WebKit, Capability::StaticRoutes) => {
                Some("no service worker static routes (InstallEvent.addRoutes), so the worker answers every request itself")
            }
            (Engine::WebKit, Capability::OpenDownloadFromScript) => {
                Some("WebKitWebDriver loses the script's result (\"Could not parse script result\") once a frame or window of it starts a download")
            }
            (Engine::WebKit, Capability::Opfs) => Some(
                "WebKitGTK's automation session has no OPFS (getDirectory fails, even with the FileSystem features on), so the worker keeps the bundle and the spaces in IndexedDB",
            ),
            (Engine::WebKit, Capability::StopWorkerUnderOpenPage) => Some(
                "WebKit stops a service worker only once no page of its scope is open (about 10 s later), and WebKitWebDriver has no command for it",
            ),
            (Engine::WebKit, Capability::Cdp) => Some("WebKitWebDriver speaks only W3C WebDriver"),
            (Engine::WebKit, Capability::QuotaOverride) => {
                Some("WebKitGTK has no quota override WebDriver can reach (an automation session's storage is in memory)")
            }
        }
    }
}

/// Paths handed over by `cargo xtask test`, and the engine to drive.
#[derive(Debug, Clone)]
pub struct Env {
    pub dist: PathBuf,
    pub server_bin: PathBuf,
    pub chromedriver: PathBuf,
    pub chromium: PathBuf,
    pub engine: Engine,
    pub geckodriver: PathBuf,
    pub firefox: PathBuf,
    pub webkit_driver: PathBuf,
    /// WebKitGTK's MiniBrowser, the browser WebKitWebDriver starts.
    pub minibrowser: PathBuf,
    pub xvfb: PathBuf,
    /// Chromium features to turn on (`--enable-features`), for APIs behind a flag.
    pub chromium_features: Vec<String>,
}

impl Env {
    pub fn get() -> Result<Env> {
        let var = |name: &str| {
            std::env::var_os(name).map(PathBuf::from).with_context(|| {
                format!("{name} is not set: run the end-to-end tests through `cargo xtask test`")
            })
        };
        Ok(Env { dist: var("STEAD_E2E_DIST")?, server_bin: var("STEAD_SERVER_BIN")?, ..Env::browsers(PathBuf::new(), PathBuf::new())? })
    }

    /// An environment for the app in `dist` served by `server_bin`, with the browsers the
    /// environment variables name (or their usual paths).
    pub fn browsers(dist: PathBuf, server_bin: PathBuf) -> Result<Env> {
        let path = |name: &str, default: &str| std::env::var_os(name).map(PathBuf::from).unwrap_or(default.into());
        Ok(Env {
            dist,
            server_bin,
            chromedriver: path("CHROMEDRIVER", "/usr/bin/chromedriver"),
            chromium: path("CHROMIUM", "/usr/bin/chromium"),
            engine: Engine::from_env()?,
            geckodriver: std::env::var_os("GECKODRIVER").map(PathBuf::from).unwrap_or_else(|| {
                std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cargo/bin/geckodriver")
            }),
            firefox: path("FIREFOX", "/usr/bin/firefox-esr"),
            webkit_driver: path("WEBKIT_WEBDRIVER", "/usr/bin/WebKitWebDriver"),
            minibrowser: path("MINIBROWSER", "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser"),
            xvfb: path("XVFB", "/usr/bin/Xvfb"),
            chromium_features: Vec::new(),
        })
    }

    /// The same environment driving `engine`.
    pub fn with_engine(&self, engine: Engine) -> Env {
        Env { engine, ..self.clone() }
    }

    /// Prints that a test does not run in this engine, and why, when it lacks `cap`: the
    /// caller then returns early. The note goes to stderr directly, past libtest's
    /// capture, so the run's log lists every skip.
    pub fn skips(&self, cap: Capability, what: &str) -> bool {
        skip_note(self.engine, cap, what)
    }

    /// A private copy of the built app that a test may change.
    pub fn copy_dist(&self) -> Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        copy_dir(&self.dist, dir.path())?;
        Ok(dir)
    }
}

pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Kills the child on drop, so a failing test leaves no process behind.
#[derive(Debug)]
pub struct Process(Option<Child>);

impl Process {
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `stead-server` process.
#[derive(Debug)]
pub struct Server {
    process: Process,
    /// Holds the server's database and log.
    pub dir: tempfile::TempDir,
    pub url: String,
    pub port: u16,
    /// The bundle folder it serves.
    bundle: std::path::PathBuf,
}

impl Server {
    pub fn start(env: &Env, dir: &Path) -> Result<Server> {
        Self::start_with(env, dir, 0, &[])
    }

    /// Starts on `port` (0 for any free one) with extra flags.
    pub fn start_with(env: &Env, dir: &Path, port: u16, flags: &[&str]) -> Result<Server> {
        Self::start_in(env, dir, tempfile::tempdir()?, port, flags)
    }

    /// Starts with its database and log in `own`.
    fn start_in(env: &Env, dir: &Path, own: tempfile::TempDir, port: u16, flags: &[&str]) -> Result<Server> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(own.path().join("server.log"))?;
        let mut child = Command::new(&env.server_bin)
            .args(["--dir".as_ref(), dir.as_os_str(), "--port".as_ref(), port.to_string().as_ref()])
            // Tests create spaces freely unless they ask for another policy.
            .args(if flags.contains(&"--spaces") { &[][..] } else { &["--spaces", "open"][..] })
            .args(flags)
            .arg("--database")
            .arg(own.path().join("stead.sqlite3"))
            .current_dir(own.path())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", env.server_bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let process = Process(Some(child));
        let addr = line.trim().strip_prefix("listening on http://").with_context(|| {
            let log = std::fs::read_to_string(own.path().join("server.log")).unwrap_or_default();
            format!("server did not start: {line:?}\n{log}")
        })?;
        let port: u16 = addr.rsplit(':').next().unwrap_or_default().parse()?;
        Ok(Server { process, dir: own, url: format!("http://localhost:{port}/"), port, bundle: dir.to_owned() })
    }

    /// Kills the server and starts it again on the same port with the same database.
    pub fn restart(self, env: &Env) -> Result<Server> {
        self.restart_with(env, &[])
    }

    /// Restarts it as [`Server::restart`] does, with extra flags.
    pub fn restart_with(self, env: &Env, flags: &[&str]) -> Result<Server> {
        let Server { mut process, dir, port, bundle, .. } = self;
        process.kill();
        Self::start_in(env, &bundle, dir, port, flags)
    }

    /// Kills the process (SIGKILL): the network is gone for the browser.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// A measuring program's command line: its `--name value` pairs and whether `--quick`
/// was given.
pub fn flags() -> Result<(std::collections::BTreeMap<String, String>, bool)> {
    let mut a = std::env::args().skip(1);
    let mut get = std::collections::BTreeMap::new();
    let mut quick = false;
    while let Some(k) = a.next() {
        if k == "--quick" {
            quick = true;
        } else if let Some(name) = k.strip_prefix("--") {
            get.insert(name.to_owned(), a.next().with_context(|| format!("{k} needs a value"))?);
        } else {
            bail!("unexpected argument {k:?}");
        }
    }
    Ok((get, quick))
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn skip_note(engine: Engine, cap: Capability, what: &str) -> bool {
    let Some(why) = engine.lacks(cap) else { return false };
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED in {}: {what}: {why}", engine.name());
    true
}

/// A browser with a fresh profile, driven through its own driver process (ChromeDriver,
/// geckodriver or WebKitWebDriver).
pub struct Browser {
    pub driver: WebDriver,
    pub engine: Engine,
    /// The driver's WebDriver URL, for the commands thirtyfour does not wrap.
    driver_url: String,
    _driver_process: Process,
    _profile: tempfile::TempDir,
    /// WebKit: the driver's process group (MiniBrowser and its web and network processes
    /// are in it) and the Xvfb display they draw on.
    webkit: Option<(i32, Process)>,
}

/// Firefox preferences for a test profile.
fn firefox_prefs() -> Value {
    serde_json::json!({
        // Service workers and OPFS are on by default in Firefox ESR 153; say so anyway, so a
        // profile default changing shows here rather than as a missing worker.
        "dom.serviceWorkers.enabled": true,
        "dom.fs.enabled": true,
        // No first-run pages, updates, telemetry or remote settings: nothing else on the network.
        "browser.shell.checkDefaultBrowser": false,
        "app.update.enabled": false,
        "datareporting.policy.dataSubmissionEnabled": false,
        "toolkit.telemetry.enabled": false,
        "network.captive-portal-service.enabled": false,
        "network.connectivity-service.enabled": false,
        // Tests kill the server and expect the page to stay up, not to see Firefox go offline.
        "network.manage-offline-status": false,
    })
}

/// Starts a WebDriver server (`command`, given `--port=port`) and waits until it answers;
/// returns its process and URL.
async fn start_driver(mut command: Command, port: u16, name: &str) -> Result<(Process, String)> {
    let child = command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {name} ({}; cargo xtask setup installs it)", command.get_program().to_string_lossy()))?;
    let process = Process(Some(child));
    let url = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{name} to listen"), Duration::from_secs(20), || async {
        Ok(reqwest::get(format!("{url}/status")).await.is_ok().then_some(()))
    })
    .await?;
    Ok((process, url))
}

impl Browser {
    /// A fresh browser of the engine `env` names.
    pub async fn start(env: &Env) -> Result<Browser> {
        match env.engine {
            Engine::Chromium => Self::start_chromium(env).await,
            Engine::Firefox => Self::start_firefox(env).await,
            Engine::WebKit => Self::start_webkit(env).await,
        }
    }

    /// MiniBrowser in its automation session (storage in memory, like private browsing),
    /// on an Xvfb display of its own; the Storage API is a runtime feature WebKitGTK
    /// leaves off, so it is turned on for `navigator.storage.estimate()`.
    async fn start_webkit(env: &Env) -> Result<Browser> {
        use std::os::unix::process::CommandExt;
        // `-displayfd 1`: Xvfb picks a free display and writes its number to stdout.
        let mut xvfb = Command::new(&env.xvfb)
            .args(["-displayfd", "1", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start Xvfb ({}; cargo xtask setup installs it)", env.xvfb.display()))?;
        let mut line = String::new();
        BufReader::new(xvfb.stdout.take().expect("piped")).read_line(&mut line)?;
        let xvfb = Process(Some(xvfb));
        let display = line.trim();
        anyhow::ensure!(!display.is_empty() && display.bytes().all(|b| b.is_ascii_digit()), "Xvfb gave no display number ({line:?})");
        let port = free_port()?;
        let mut command = Command::new(&env.webkit_driver);
        // Its own process group: MiniBrowser and its helpers are killed with it.
        command.env("DISPLAY", format!(":{display}")).process_group(0);
        let (driver_process, url) = start_driver(command, port, "WebKitWebDriver").await?;
        let group = driver_process.0.as_ref().map_or(0, |c| c.id() as i32);
        let mut caps = Capabilities::new();
        caps.set("browserName", "MiniBrowser")?;
        caps.set(
            "webkitgtk:browserOptions",
            serde_json::json!({
                "binary": env.minibrowser,
                "args": ["--automation", "--features=+StorageAPI,+StorageAPIEstimate"],
            }),
        )?;
        let driver = WebDriver::new(&url, caps).await.context("cannot open a WebKit session")?;
        Ok(Browser {
            driver,
            engine: Engine::WebKit,
            driver_url: url,
            _driver_process: driver_process,
            _profile: tempfile::tempdir()?,
            webkit: Some((group, xvfb)),
        })
    }

    async fn start_firefox(env: &Env) -> Result<Browser> {
        let port = free_port()?;
        let profile = tempfile::tempdir()?;
        let mut command = Command::new(&env.geckodriver);
        command
            // Its own BiDi port, so two browsers can run at once.
            .arg(format!("--websocket-port={}", free_port()?))
            // The profile is made inside this folder, whose path marks the Firefox processes.
            .arg("--profile-root")
            .arg(profile.path())
            // Chrome-context scripts (the worker stop) need it since Firefox 138.
            .arg("--allow-system-access");
        let (geckodriver, url) = start_driver(command, port, "geckodriver").await?;
        let mut caps = DesiredCapabilities::firefox();
        caps.set_firefox_binary(&env.firefox.to_string_lossy())?;
        caps.set_headless()?;
        caps.set_browser_option("prefs", firefox_prefs())?;
        let driver = WebDriver::new(&url, caps).await.context("cannot open a Firefox session")?;
        Ok(Browser { driver, engine: Engine::Firefox, driver_url: url, _driver_process: geckodriver, _profile: profile, webkit: None })
    }

    async fn start_chromium(env: &Env) -> Result<Browser> {
        let port = free_port()?;
        let (chromedriver, url) = start_driver(Command::new(&env.chromedriver), port, "chromedriver").await?;
        let profile = tempfile::tempdir()?;
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(&env.chromium.to_string_lossy())?;
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ] {
            caps.add_arg(arg)?;
        }
        caps.add_arg(&format!("--user-data-dir={}", profile.path().display()))?;
        if !env.chromium_features.is_empty() {
            caps.add_arg(&format!("--enable-features={}", env.chromium_features.join(",")))?;
        }
        let driver = WebDriver::new(&url, caps).await.context("cannot open a Chromium session")?;
        Ok(Browser { driver, engine: Engine::Chromium, driver_url: url, _driver_process: chromedriver, _profile: profile, webkit: None })
    }

    /// A new browser (its own profile) with `url` open.
    pub async fn open(env: &Env, url: &str) -> Result<Browser> {
        let b = Browser::start(env).await?;
        b.driver.goto(url).await?;
        Ok(b)
    }
}

/// Kills every process whose command line names `marker` (a browser's own profile folder):
/// killing the driver alone would leave the browser it started running.
fn kill_marked(marker: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium names it in `--user-data-dir=`, Firefox in `-profile <root>/rust_mozprofile…`.
        kill_marked(&self._profile.path().display().to_string());
        if let Some((group, _xvfb)) = &self.webkit
            && *group > 0
        {
            let _ = Command::new("kill").args(["-9", "--", &format!("-{group}")]).status();
        }
    }
}

impl Browser {
    pub async fn quit(self) -> Result<()> {
        self.driver.clone().quit().await?;
        Ok(())
    }

    pub async fn js(&self, script: &str) -> Result<Value> {
        Ok(self.driver.execute(script, Vec::new()).await?.json().clone())
    }

    /// Runs an async function body (`return await ...`) in the page.
    pub async fn js_async(&self, body: &str) -> Result<Value> {
        let script = format!(
            "const done = arguments[arguments.length - 1];\
             (async () => {{ {body} }})().then(done, (e) => done({{ error: String(e) }}));"
        );
        Ok(self.driver.execute_async(script, Vec::new()).await?.json().clone())
    }

    /// Reloads the page as a user does. In Firefox, WebDriver's Refresh is a forced reload,
    /// which bypasses the service worker (the reloaded page is not controlled, so offline
    /// it fails), so there the page reloads itself and the harness waits for the new
    /// document.
    pub async fn refresh(&self) -> Result<()> {
        match self.engine {
            // WebKit's Refresh goes through the worker, as a user's reload does.
            Engine::Chromium | Engine::WebKit => {
                if let Err(e) = self.driver.refresh().await {
                    let seen = self.load_state().await;
                    return Err(anyhow::Error::new(e).context(format!("the reload did not finish; the page then: {seen}")));
                }
            }
            Engine::Firefox => {
                self.js("window.steadBeforeReload = true; setTimeout(() => location.reload(), 0);").await?;
                wait_for("the page to reload", Duration::from_secs(30), || async {
                    let v = self.js("return window.steadBeforeReload === undefined && document.readyState === 'complete'").await?;
                    Ok((v.as_bool() == Some(true)).then_some(()))
                })
                .await?;
            }
        }
        Ok(())
    }

    /// What a page that did not finish loading shows: its address, ready state, and each
    /// resource it got with when its answer ended (ms since the navigation), for a reload
    /// that timed out. Never fails: a page too stuck to answer says so.
    async fn load_state(&self) -> String {
        let probe = self.js(
            "const r = performance.getEntriesByType('resource').map((e) => `${e.name} ${Math.round(e.responseEnd)}`);\
             const n = performance.getEntriesByType('navigation')[0];\
             return { url: location.href, ready: document.readyState, controlled: !!navigator.serviceWorker.controller,\
                      response_end: n ? Math.round(n.responseEnd) : null, resources: r };",
        );
        match tokio::time::timeout(Duration::from_secs(10), probe).await {
            Ok(Ok(v)) => v.to_string(),
            Ok(Err(e)) => format!("(no answer: {e})"),
            Err(_) => "(no answer in 10 s)".to_owned(),
        }
    }

    /// Waits until a service worker controls the page.
    pub async fn wait_controlled(&self) -> Result<()> {
        wait_for("a service worker to control the page", Duration::from_secs(30), || async {
            Ok(self.js("return !!navigator.serviceWorker.controller").await?.as_bool().unwrap_or(false).then_some(()))
        })
        .await
    }

    /// The worker's `/_stead/v1/status`.
    pub async fn status(&self) -> Result<Value> {
        let v = self
            .js_async("const r = await fetch('/_stead/v1/status'); return await r.json();")
            .await?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            bail!("status failed: {e}");
        }
        Ok(v)
    }

    /// Waits for an app's install button, which shows once Chromium fires
    /// `beforeinstallprompt` (the page's first script keeps the event in
    /// `steadInstallPrompt`). Chromium decides when to fire it, and on a busy machine a
    /// first visit has gone 30 s without it while the page was installable. When the event
    /// never came, the page is loaded again (a user's next visit) and waited on once more;
    /// when it came and no button shows, the app is at fault and that is the error.
    pub async fn wait_install_button(&self) -> Result<WebElement> {
        let find = || async { Ok(self.driver.find(By::Id("install")).await.ok()) };
        let first = match wait_for("the install button", Duration::from_secs(30), find).await {
            Ok(button) => return Ok(button),
            Err(e) => e,
        };
        let offered = self.js("return self.steadInstallPrompt !== undefined").await?;
        if offered.as_bool() == Some(true) {
            return Err(first.context("Chromium fired beforeinstallprompt, yet the install button stayed hidden"));
        }
        self.refresh().await?;
        wait_for("the install button on the next visit", Duration::from_secs(30), find)
            .await
            .context("no beforeinstallprompt: the install button stayed hidden")
    }

    /// Waits until the todo app has rendered.
    pub async fn wait_app(&self) -> Result<WebElement> {
        wait_for("the todo app to render", Duration::from_secs(30), || async {
            Ok(self.driver.find(By::Id("new-todo")).await.ok())
        })
        .await
    }

    /// Adds a todo through the UI and waits for it to show.
    pub async fn add_todo(&self, text: &str) -> Result<()> {
        let input = self.wait_app().await?;
        // The button is enabled once the app has opened its space in the worker.
        let add = wait_for("the app's data to be ready", Duration::from_secs(30), || async {
            let add = self.driver.find(By::Id("add")).await?;
            Ok(add.is_enabled().await?.then_some(add))
        })
        .await?;
        input.send_keys(text).await?;
        add.click().await?;
        wait_for("the new todo to show", Duration::from_secs(10), || async {
            let items = self.driver.find_all(By::Css("li.todo span")).await?;
            for item in items {
                if item.text().await? == text {
                    return Ok(Some(()));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Clicks the app's "Invite a device" button once it is enabled (it is disabled until
    /// the page has its space, which can come after the worker reports the space online)
    /// and returns the link the dialog shows.
    pub async fn invite_link(&self, timeout: Duration) -> Result<String> {
        let button = wait_for("the invite button to be enabled", timeout, || async {
            let button = self.driver.find(By::Id("invite")).await?;
            Ok(button.is_enabled().await?.then_some(button))
        })
        .await?;
        button.click().await?;
        wait_for("the invite link", timeout, || async {
            match self.driver.find(By::Id("invite-link")).await {
                Ok(el) => Ok(el.prop("value").await?.filter(|v| !v.is_empty())),
                Err(_) => Ok(None),
            }
        })
        .await
    }

    /// Saves what the page shows as `<target>/screenshots/<name>.png` (for the README and
    /// for a person checking the examples) and returns the path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let dir = target.join("screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        self.driver.screenshot(&path).await?;
        Ok(path)
    }

    /// Sends a raw Chrome DevTools Protocol command. Fails in an engine without CDP: check
    /// [`Browser::lacks`] first.
    pub async fn cdp(&self, method: &str, params: Value) -> Result<Value> {
        if let Some(why) = self.engine.lacks(Capability::Cdp) {
            bail!("{method}: {why}");
        }
        Ok(self.driver.cdp().send_raw(method, params).await?)
    }

    /// Whether this browser cannot do `cap`; if so, prints what is skipped and why (past
    /// libtest's capture) so the test can leave out that step and run the rest.
    pub fn lacks(&self, cap: Capability, what: &str) -> bool {
        skip_note(self.engine, cap, what)
    }

    /// Stops every service worker, as the browser does to an idle one: CDP's
    /// `ServiceWorker.stopAllWorkers` in Chromium; in Firefox, `terminateWorker()` on each
    /// registration's workers through the service worker manager, from a chrome-context
    /// script (Marionette's `moz/context`), which is what about:debugging's stop does.
    /// WebKit has no such command: the page leaves (`about:blank`) until WebKit stops the
    /// worker for having no client (about 10 s), then comes back, so the worker has
    /// already woken when this returns; the worker's start time in status proves the stop.
    pub async fn stop_workers(&self) -> Result<()> {
        match self.engine {
            Engine::WebKit => {
                let url = self.driver.current_url().await?;
                let started = |s: Value| s["worker_started"].as_f64();
                let before = self.status().await.ok().and_then(started);
                for wait in [12, 16, 24] {
                    self.driver.goto("about:blank").await?;
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    self.driver.goto(url.as_str()).await?;
                    let Some(before) = before else { return Ok(()) };
                    let after = wait_for("the worker's status after the stop", Duration::from_secs(30), || async {
                        Ok(self.status().await.ok().and_then(started))
                    })
                    .await?;
                    if after != before {
                        return Ok(());
                    }
                }
                bail!("WebKit kept the service worker running with no page open for 24 s");
            }
            Engine::Chromium => {
                self.cdp("ServiceWorker.enable", serde_json::json!({})).await?;
                self.cdp("ServiceWorker.stopAllWorkers", serde_json::json!({})).await?;
            }
            Engine::Firefox => {
                let stopped = self
                    .chrome_js(
                        "const swm = Cc['@mozilla.org/serviceworkers/manager;1'].getService(Ci.nsIServiceWorkerManager);\
                         const regs = swm.getAllRegistrations(); let n = 0;\
                         for (let i = 0; i < regs.length; i++) {\
                           const r = regs.queryElementAt(i, Ci.nsIServiceWorkerRegistrationInfo);\
                           for (const w of [r.activeWorker, r.waitingWorker, r.installingWorker]) {\
                             if (w) { w.terminateWorker(); n++; }\
                           }\
                         }\
                         return n;",
                    )
                    .await?;
                anyhow::ensure!(stopped.as_u64().is_some(), "stopping the workers failed: {stopped}");
            }
        }
        Ok(())
    }

    /// Runs a script in Firefox's privileged chrome context, then returns to the page.
    async fn chrome_js(&self, script: &str) -> Result<Value> {
        self.moz_context("chrome").await?;
        let out = self.driver.execute(script, Vec::new()).await.map(|r| r.json().clone());
        self.moz_context("content").await?;
        Ok(out?)
    }

    async fn moz_context(&self, context: &str) -> Result<()> {
        let url = format!("{}/session/{}/moz/context", self.driver_url, self.driver.session_id());
        let r = reqwest::Client::new().post(url).json(&serde_json::json!({ "context": context })).send().await?;
        anyhow::ensure!(r.status().is_success(), "moz/context {context}: {}", r.text().await?);
        Ok(())
    }
}

/// Polls `probe` until it yields a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bundle manifest of a build folder.
pub fn manifest(dir: &Path) -> Result<stead_core::bundle::BundleManifest> {
    let bytes = std::fs::read(dir.join(stead_core::bundle::MANIFEST_FILE))?;
    Ok(stead_core::bundle::BundleManifest::parse(&bytes)?)
}

/// Puts `<meta name="stead-e2e" content="{marker}">` into a built app's `index.html` and
/// writes its bundle manifest again: a new version that differs in one file.
pub fn rebuild_with_marker(dir: &Path, marker: &str) -> Result<stead_core::bundle::BundleManifest> {
    let index = dir.join("index.html");
    let html = std::fs::read_to_string(&index)?;
    let html = html.replacen("<head>", &format!("<head><meta name=\"stead-e2e\" content=\"{marker}\">"), 1);
    std::fs::write(&index, html)?;
    Ok(stead_cli::build::write_bundle_manifest(dir)?)
}

impl Browser {
    /// The marker [`rebuild_with_marker`] put into the page this browser shows.
    pub async fn marker(&self) -> Result<Option<String>> {
        let v = self.js("const m = document.querySelector('meta[name=stead-e2e]'); return m && m.content;").await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Chromium's installability errors for the page, once it has decided (it fetches the
    /// manifest and icons in its own time).
    pub async fn installability_errors(&self) -> Result<Vec<Value>> {
        let settled = wait_for("Chromium's installability verdict", Duration::from_secs(30), || async {
            let r = self.cdp("Page.getInstallabilityErrors", serde_json::json!({})).await?;
            let errors = r["installabilityErrors"].as_array().cloned().unwrap_or_default();
            // Until the page and worker are ready, Chromium may report transient states.
            let settled = errors.iter().all(|e| e["errorId"] != "no-manifest" && e["errorId"] != "not-offline-capable");
            Ok(settled.then_some(errors))
        })
        .await;
        match settled {
            Ok(e) => Ok(e),
            Err(_) => Ok(self.cdp("Page.getInstallabilityErrors", serde_json::json!({})).await?["installabilityErrors"].as_array().cloned().unwrap_or_default()),
        }
    }

    /// Adds an item to the list of the app `stead new` makes.
    pub async fn add_item(&self, text: &str) -> Result<()> {
        let input = wait_for("the new-item field", Duration::from_secs(30), || async { Ok(self.driver.find(By::Id("new-item")).await.ok()) }).await?;
        wait_for("the app's space to open", Duration::from_secs(30), || async {
            Ok(self.driver.find(By::Id("add")).await?.is_enabled().await?.then_some(()))
        })
        .await?;
        input.send_keys(text).await?;
        self.driver.find(By::Id("add")).await?.click().await?;
        Ok(())
    }

    /// Waits until the list of the app `stead new` makes shows an item with this text.
    pub async fn wait_item(&self, text: &str) -> Result<()> {
        wait_for(&format!("{text:?} to show"), Duration::from_secs(30), || async {
            for item in self.driver.find_all(By::Css("#items li span")).await? {
                if item.text().await? == text {
                    return Ok(Some(()));
                }
            }
            Ok(None)
        })
        .await
    }
}
