//! The measuring program of `cargo xtask bench sw`: Stead's worker (OPFS) against a
//! Workbox 7 worker (Cache Storage) serving the same files, in the same Chromium.
//!
//! Two sites are built from the app: the Stead site (the app plus synthetic assets, with
//! the bundle manifest regenerated) and the Workbox site (the same files, `stead-sw.js`
//! replaced by the bundled Workbox worker, so the page registers it byte-identically).
//! Serving is measured on both sites side by side: each pair of fresh-profile browsers
//! (one per site, each with its own server on its own port, so its own origin) takes
//! every measurement in turn A,B, B,A, … so a busy moment of a shared machine hits both.
//! Precache runs one fresh browser at a time, sites in the order A,B,B,A,… Timings are
//! taken in the page (`performance.now()`, Navigation Timing); raw samples go to a CSV.
//!
//! Cold start against worker size: more pairs of small sites whose worker scripts (Stead's
//! and the Workbox bundle alike) end in an inert comment of 0 to 2 MiB. One browser per
//! system holds every size, each on its own origin; the first answered fetch after the
//! worker is stopped is timed, the sizes and the systems interleaved, and every sample is
//! checked to be cold. These samples go to `sw-cold-size.csv` beside the CSV.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stead_e2e::{Browser, Engine, Env, Server, copy_dir, manifest, wait_for};

/// Installs a hook in every page before its scripts run: when the app calls `register()`
/// and when a worker takes control, in the page's `performance.now()`.
const HOOK: &str = r#"(() => {
  const sw = navigator.serviceWorker;
  if (!sw) return;
  window.__bench = { register: null, controller: null, origin: performance.timeOrigin };
  const register = sw.register.bind(sw);
  sw.register = (...args) => {
    if (window.__bench.register === null) window.__bench.register = performance.now();
    return register(...args);
  };
  sw.addEventListener("controllerchange", () => {
    if (window.__bench.controller === null) window.__bench.controller = performance.now();
  });
  // The page's requests in flight: a worker stopped while one is pending is started again
  // to answer it, so a cold sample waits until there is none.
  window.__bench.pending = 0;
  const fetch = window.fetch.bind(window);
  window.fetch = (...args) => {
    window.__bench.pending++;
    return fetch(...args).finally(() => window.__bench.pending--);
  };
})();"#;

/// Synthetic assets next to the app: (class, count, size).
const ASSETS: [(&str, usize, usize); 4] = [("1k", 50, 1024), ("20k", 50, 20 * 1024), ("200k", 10, 200 * 1024), ("2m", 2, 2 << 20)];
/// Cold start against worker size: the site's 1 KB files (one per sample) and the page the
/// samples are taken in, which runs no script of its own.
const COLD_FILES: usize = 16;
const BLANK_PAGE: &str = "bench/blank.html";

/// The precache bundle: 250 files, 10 MiB in all.
const PRECACHE_FILES: usize = 250;
const PRECACHE_FILE_SIZE: usize = (10 << 20) / PRECACHE_FILES;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Site {
    Stead,
    Workbox,
}

impl Site {
    fn name(self) -> &'static str {
        match self {
            Site::Stead => "stead",
            Site::Workbox => "workbox",
        }
    }
}

struct Args {
    dist: PathBuf,
    server: PathBuf,
    workbox: PathBuf,
    workbox_version: String,
    out: PathBuf,
    chromium: PathBuf,
    chromedriver: PathBuf,
    quick: bool,
}

fn args() -> Result<Args> {
    let (mut get, quick) = stead_e2e::flags()?;
    let mut take = |k: &str| get.remove(k).with_context(|| format!("--{k} is required"));
    Ok(Args {
        dist: take("dist")?.into(),
        server: take("server")?.into(),
        workbox: take("workbox")?.into(),
        workbox_version: take("workbox-version")?,
        out: take("out")?.into(),
        chromium: take("chromium").unwrap_or_else(|_| "/usr/bin/chromium".into()).into(),
        chromedriver: take("chromedriver").unwrap_or_else(|_| "/usr/bin/chromedriver".into()).into(),
        quick,
    })
}

/// How many samples each block takes.
struct Plan {
    /// Pairs of fresh browsers (one per site, side by side).
    pairs: usize,
    precache_order: Vec<Site>,
    rounds: usize,
    cold: usize,
    reloads: usize,
    /// Cold start against worker size: bytes of padding at the end of the worker script.
    pads: Vec<usize>,
    /// Cold samples per (system, padding).
    pad_samples: usize,
}

/// One raw sample.
struct Sample {
    site: Site,
    block: usize,
    metric: String,
    i: usize,
    ms: f64,
}

#[derive(Default)]
struct Samples {
    all: Vec<Sample>,
    /// Stead's `start_profile` (status) after each offline cold fetch: step → ms since
    /// the worker's time origin.
    profiles: Vec<Vec<(String, f64)>>,
    /// Stead's `start_profile` after each precache, each step in ms after `register()`.
    precache_profiles: Vec<Vec<(String, f64)>>,
}

impl Samples {
    fn push(&mut self, site: Site, block: usize, metric: &str, i: usize, ms: f64) {
        self.all.push(Sample { site, block, metric: metric.to_owned(), i, ms });
    }

    fn values(&self, site: Site, metric: &str) -> Vec<f64> {
        self.all.iter().filter(|s| s.site == site && s.metric == metric).map(|s| s.ms).collect()
    }
}

/// The `q` quantile (0..=1) by linear interpolation between the sorted samples.
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

/// "p25–p75" of the samples, to show how noisy a median is.
fn iqr(v: &[f64]) -> String {
    match (quantile(v, 0.25), quantile(v, 0.75)) {
        (Some(a), Some(b)) => format!("{a:.1}–{b:.1}"),
        _ => String::new(),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so every run serves the same files.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An inert tail of exactly `len` bytes for a worker script: a block comment of
/// pseudo-random base64 characters (the same for both systems), which the browser must
/// fetch, store, read and scan past but never runs.
fn padding(len: usize) -> String {
    if len == 0 {
        return String::new();
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let body: String = random_bytes(0x5eed, len.saturating_sub(6)).iter().map(|b| ALPHABET[(b & 63) as usize] as char).collect();
    format!("\n/*{body}*/\n")
}

/// The two sites built from the same files: `(stead, workbox)`. With `pad`, they are sites
/// for cold start against worker size: a page that runs no script ([`BLANK_PAGE`]) and
/// each worker script ending in `pad` bytes of [`padding`].
fn make_sites(args: &Args, root: &Path, name: &str, files: &[(String, usize)], pad: Option<usize>) -> Result<(PathBuf, PathBuf)> {
    let stead = root.join(format!("{name}-stead"));
    let workbox = root.join(format!("{name}-workbox"));
    copy_dir(&args.dist, &stead)?;
    for (i, (path, size)) in files.iter().enumerate() {
        let p = stead.join(path);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        std::fs::write(&p, random_bytes(i as u64 + 1 + name.len() as u64 * 1000, *size))?;
    }
    let tail = padding(pad.unwrap_or(0));
    if pad.is_some() {
        std::fs::write(stead.join(BLANK_PAGE), "<!doctype html><title>blank</title><p>cold start samples</p>\n")?;
        let script = stead.join(stead_core::bundle::WORKER_SCRIPT);
        let mut bytes = std::fs::read(&script)?;
        bytes.extend_from_slice(tail.as_bytes());
        std::fs::write(&script, bytes)?;
    }
    stead_cli::build::write_bundle_manifest(&stead)?;
    copy_dir(&stead, &workbox)?;
    let m = manifest(&stead)?;
    let list: Vec<Value> = m.files.iter().map(|f| json!({"url": f.path, "revision": f.sha256})).collect();
    let script = format!(
        "self.__WB_MANIFEST = {};\n{}{tail}",
        serde_json::to_string(&list)?,
        std::fs::read_to_string(&args.workbox).context("cannot read the bundled Workbox worker")?
    );
    std::fs::write(workbox.join(stead_core::bundle::WORKER_SCRIPT), script)?;
    Ok((stead, workbox))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let started = Instant::now();
    let env = Env {
        dist: args.dist.clone(),
        server_bin: args.server.clone(),
        chromedriver: args.chromedriver.clone(),
        chromium: args.chromium.clone(),
        // The benchmark compares workers in Chromium.
        ..Env::browsers(PathBuf::new(), PathBuf::new())?.with_engine(Engine::Chromium)
    };
    let plan = if args.quick {
        Plan { pairs: 1, precache_order: vec![Site::Stead, Site::Workbox], rounds: 8, cold: 5, reloads: 5, pads: vec![0, 1 << 20, 2 << 20], pad_samples: 3 }
    } else {
        use Site::*;
        Plan {
            pairs: 2,
            precache_order: vec![Stead, Workbox, Workbox, Stead, Stead, Workbox, Workbox, Stead],
            rounds: 20,
            cold: 10,
            reloads: 8,
            pads: vec![0, 256 << 10, 512 << 10, 1 << 20, 2 << 20],
            pad_samples: 8,
        }
    };

    let tmp = tempfile::tempdir()?;
    let mut assets = Vec::new();
    for (class, count, size) in ASSETS {
        for i in 0..count {
            assets.push((format!("bench/{class}-{i:03}.bin"), size));
        }
    }
    let (serve_stead, serve_workbox) = make_sites(&args, tmp.path(), "serve", &assets, None)?;
    let precache: Vec<(String, usize)> =
        (0..PRECACHE_FILES).map(|i| (format!("bench/p-{i:03}.bin"), PRECACHE_FILE_SIZE)).collect();
    let (pre_stead, pre_workbox) = make_sites(&args, tmp.path(), "precache", &precache, None)?;
    let serve_m = manifest(&serve_stead)?;
    let pre_m = manifest(&pre_stead)?;
    eprintln!(
        "serving sites: {} files, {} bytes; precache sites: {} files, {} bytes",
        serve_m.files.len(),
        serve_m.total_size(),
        pre_m.files.len(),
        pre_m.total_size()
    );

    let mut samples = Samples::default();
    let mut chromium_version = String::new();
    for pair in 0..plan.pairs {
        let t = Instant::now();
        let a = Browser::start(&env).await?;
        let b = match Browser::start(&env).await {
            Ok(b) => b,
            Err(e) => {
                a.quit().await?;
                return Err(e);
            }
        };
        // The first site alternates between pairs: A,B then B,A.
        let (first, second) = if pair % 2 == 0 { (Site::Stead, Site::Workbox) } else { (Site::Workbox, Site::Stead) };
        let dir = |site| if site == Site::Stead { &serve_stead } else { &serve_workbox };
        let result = serve_pair(&env, [(first, &a, dir(first)), (second, &b, dir(second))], pair, &plan, &mut samples).await;
        if chromium_version.is_empty() {
            chromium_version = match a.cdp("Browser.getVersion", json!({})).await {
                Ok(v) => v["product"].as_str().unwrap_or_default().to_owned(),
                Err(_) => a.js("return navigator.userAgent").await?.as_str().unwrap_or_default().to_owned(),
            };
        }
        a.quit().await?;
        b.quit().await?;
        result.with_context(|| format!("serving pair {pair}"))?;
        eprintln!("  serving pair {pair} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    for (block, &site) in plan.precache_order.iter().enumerate() {
        let dir = if site == Site::Stead { &pre_stead } else { &pre_workbox };
        let browser = Browser::start(&env).await?;
        let result = precache_block(&env, &browser, site, dir).await;
        browser.quit().await?;
        let (ms, profile) = result.with_context(|| format!("precache block {block} ({})", site.name()))?;
        eprintln!("  precache {block} {:8} {ms:.0} ms", site.name());
        samples.precache_profiles.extend(profile);
        samples.push(site, block, "precache_10mb", 0, ms);
    }

    let t = Instant::now();
    let cold = cold_size(&args, &env, &plan, tmp.path()).await.context("cold start against worker size")?;
    eprintln!("  cold start against worker size done in {:.1} s", t.elapsed().as_secs_f64());

    write_csv(&args.out, &samples)?;
    let cold_csv = args.out.with_file_name("sw-cold-size.csv");
    write_cold_csv(&cold_csv, &cold)?;
    write_profile_csv(&args.out.with_file_name("sw-cold-profile.csv"), &samples.profiles)?;
    write_profile_csv(&args.out.with_file_name("sw-precache-profile.csv"), &samples.precache_profiles)?;
    print_table(&samples, &chromium_version, &args.workbox_version, &serve_m, &pre_m);
    print_profile("Stead's offline cold start, by step (ms since the worker's time origin", &samples.profiles);
    print_profile("Stead's precache, by step (ms after register()", &samples.precache_profiles);
    print_cold_table(&cold, &plan);
    println!("cold start against worker size: {}", cold_csv.display());
    println!("raw samples: {}", args.out.display());
    println!("bench time: {:.0} s{}", started.elapsed().as_secs_f64(), if args.quick { " (--quick)" } else { "" });
    Ok(())
}

/// Goes to the site with the hook installed and waits for a worker to take control with
/// every file stored; returns register → controllerchange in ms.
async fn install(browser: &Browser, url: &str, site: Site, m: &stead_core::bundle::BundleManifest) -> Result<f64> {
    browser.cdp("Page.enable", json!({})).await?;
    browser.cdp("Page.addScriptToEvaluateOnNewDocument", json!({ "source": HOOK })).await?;
    browser.driver.goto(url).await?;
    let times = wait_for("a worker to take control", Duration::from_secs(180), || async {
        let v = browser.js("return window.__bench || null").await?;
        Ok(v.get("controller").and_then(Value::as_f64).map(|c| (v["register"].as_f64(), c)))
    })
    .await?;
    let (Some(register), controller) = times else { bail!("the page took control without calling register()") };
    match site {
        Site::Stead => {
            let s = browser.status().await?;
            if s["active_version"].as_str() != Some(m.version.as_str()) {
                bail!("Stead controls the page but its version is not active: {s}");
            }
        }
        Site::Workbox => {
            let n = browser
                .js_async(
                    "let n = 0; for (const k of await caches.keys()) { \
                     n += (await (await caches.open(k)).keys()).length; } return n;",
                )
                .await?;
            if n.as_u64().unwrap_or(0) < m.files.len() as u64 {
                bail!("Workbox controls the page with {n} of {} files cached", m.files.len());
            }
        }
    }
    Ok(controller - register)
}

/// register → controllerchange in ms, and for Stead its `start_profile` in ms after
/// `register()`.
async fn precache_block(env: &Env, browser: &Browser, site: Site, dir: &Path) -> Result<(f64, Option<Vec<(String, f64)>>)> {
    let server = Server::start(env, dir)?;
    let m = manifest(dir)?;
    let ms = install(browser, &server.url, site, &m).await?;
    let profile = match site {
        Site::Stead => Some(steps_after_register(browser).await?),
        Site::Workbox => None,
    };
    drop(server);
    Ok((ms, profile))
}

/// The worker's `start_profile` moved onto the page's clock: ms after `register()`. The
/// worker's time origin is taken as `worker_started` (its `Date.now()` when the wasm had
/// just been instantiated) less `wasm_instantiated`.
async fn steps_after_register(browser: &Browser) -> Result<Vec<(String, f64)>> {
    let page = browser.js("return window.__bench").await?;
    let status = browser.status().await?;
    let (Some(origin), Some(register)) = (page["origin"].as_f64(), page["register"].as_f64()) else {
        bail!("the page's hook has no time origin or register time: {page}")
    };
    let steps = status["start_profile"].as_object().context("status has no start_profile")?;
    let (Some(started), Some(instantiated)) = (status["worker_started"].as_f64(), steps.get("wasm_instantiated").and_then(Value::as_f64)) else {
        bail!("status has no worker_started or wasm_instantiated: {status}")
    };
    let worker_origin = started - instantiated;
    let mut out: Vec<(String, f64)> = vec![("worker_origin".into(), worker_origin - (origin + register))];
    out.extend(steps.iter().filter_map(|(k, v)| Some((k.clone(), worker_origin + v.as_f64()? - (origin + register)))));
    if let Some(controller) = page["controller"].as_f64() {
        out.push(("controllerchange".into(), controller - register));
    }
    Ok(out)
}

/// Fetches each URL in the page, one after another, and returns each time in ms.
async fn fetch_times(browser: &Browser, urls: &[(String, usize)]) -> Result<Vec<f64>> {
    let list = serde_json::to_string(urls)?;
    let v = browser
        .js_async(&format!(
            "const out = []; \
             for (const [url, size] of {list}) {{ \
               const t0 = performance.now(); \
               const r = await fetch(url); const b = await r.arrayBuffer(); \
               const t1 = performance.now(); \
               if (!r.ok || b.byteLength !== size) throw new Error(url + ': ' + r.status + ', ' + b.byteLength + ' bytes'); \
               out.push(t1 - t0); }} \
             return out;"
        ))
        .await?;
    if let Some(e) = v.get("error") {
        bail!("fetch in the page failed: {e}");
    }
    v.as_array()
        .context("fetch times")?
        .iter()
        .map(|x| x.as_f64().context("a time"))
        .collect()
}

/// The floor under the 2 MB offline fetch: the same page fetching 2 MiB from a `blob:` URL
/// of its own, which no worker sees, measured in each site's browser in the same rounds.
const FLOOR_METRIC: &str = "page_blob_url_2m";
const FLOOR_SIZE: usize = 2 << 20;

/// Times the page's `fetch` + `arrayBuffer()` of a `blob:` URL over `size` bytes it holds
/// (made on the first call, untimed): reading a body through the browser with no worker.
async fn blob_url_time(browser: &Browser, size: usize) -> Result<f64> {
    let v = browser
        .js_async(&format!(
            "if (!window.__benchBlob) {{ \
               const b = new Uint8Array({size}); \
               for (let i = 0; i < b.length; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536)); \
               window.__benchBlob = URL.createObjectURL(new Blob([b])); \
             }} \
             const t0 = performance.now(); \
             const r = await fetch(window.__benchBlob); const b = await r.arrayBuffer(); \
             const t1 = performance.now(); \
             if (b.byteLength !== {size}) throw new Error('blob: URL gave ' + b.byteLength + ' bytes'); \
             return t1 - t0;"
        ))
        .await?;
    v.as_f64().with_context(|| format!("the blob: URL fetch failed: {v}"))
}

/// One URL per class for round `round`, rotating through the class's files.
fn round_urls(round: usize) -> Vec<(String, usize)> {
    ASSETS.iter().map(|&(class, count, size)| (format!("bench/{class}-{:03}.bin", round % count), size)).collect()
}

/// A,B, B,A, A,B, …: which of the two sides goes first in step `i`.
fn abba(i: usize) -> [usize; 2] {
    if i.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

/// Both sites side by side, each in its own fresh browser with its own server; every
/// measurement alternates between them, so a busy moment of the machine hits both.
async fn serve_pair(
    env: &Env,
    sides: [(Site, &Browser, &PathBuf); 2],
    block: usize,
    plan: &Plan,
    samples: &mut Samples,
) -> Result<()> {
    let mut servers = Vec::new();
    for (site, browser, dir) in sides {
        let server = Server::start(env, dir)?;
        let ms = install(browser, &server.url, site, &manifest(dir)?).await?;
        samples.push(site, block, "install_serving_site", 0, ms);
        servers.push(server);
    }

    // Warm-up: every measured file, untimed, so the workers and their handles are warm.
    for (_, browser, _) in sides {
        for r in 0..50 {
            fetch_times(browser, &round_urls(r)).await?;
        }
    }
    for (phase, online) in [("warm", true), ("offline", false)] {
        if !online {
            for server in &mut servers {
                server.kill();
                if reqwest::get(&server.url).await.is_ok() {
                    bail!("the server still answers after being killed");
                }
            }
            // One untimed pass, so nothing of the online phase's state is measured.
            for (_, browser, _) in sides {
                fetch_times(browser, &round_urls(0)).await?;
            }
        }
        for r in 0..plan.rounds {
            for k in abba(r) {
                let (site, browser, _) = sides[k];
                let times = fetch_times(browser, &round_urls(r + block)).await?;
                for ((class, _, _), ms) in ASSETS.iter().zip(times) {
                    samples.push(site, block, &format!("fetch_{phase}_{class}"), r, ms);
                }
                if !online {
                    samples.push(site, block, FLOOR_METRIC, r, blob_url_time(browser, FLOOR_SIZE).await?);
                }
            }
        }
    }

    // Offline cold start: the worker stopped before each single 1 KB fetch. A HEAD
    // request, which neither worker answers (the browser then fails it: no network),
    // splits the cost: starting and evaluating the worker, then answering.
    for i in 0..plan.cold {
        for k in abba(i) {
            let (site, browser, _) = sides[k];
            let url = (format!("bench/1k-{:03}.bin", 10 + i), 1024);
            let t = proven_cold(browser, site, || fetch_times(browser, std::slice::from_ref(&url))).await?;
            samples.push(site, block, "cold_fetch_offline_1k", i, t[0]);
            if site == Site::Stead {
                // The same worker life, still running: how its start was spent.
                let profile = browser.status().await?["start_profile"].clone();
                let steps = profile.as_object().context("status has no start_profile")?;
                samples.profiles.push(steps.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect());
            }

            let v = proven_cold(browser, site, || {
                browser.js_async(
                    "const t0 = performance.now(); \
                     try { await fetch('bench/1k-000.bin', { method: 'HEAD' }); } catch (e) {} \
                     return performance.now() - t0;",
                )
            })
            .await?;
            samples.push(site, block, "cold_start_unanswered", i, v.as_f64().context("a time")?);
        }
    }

    // Offline reloads, warm worker and stopped worker: navigation start → DOMContentLoaded.
    for (metric, stop) in [("reload_offline_dcl", false), ("reload_offline_cold_dcl", true)] {
        for i in 0..plan.reloads {
            for k in abba(i) {
                let (site, browser, _) = sides[k];
                let dcl = if stop { proven_cold(browser, site, || reload(browser)).await? } else { reload(browser).await? };
                samples.push(site, block, metric, i, dcl);
            }
        }
    }
    Ok(())
}

/// Takes `measure` right after stopping the page's worker, and proves the sample cold: the
/// worker is listed as running (a CDP target) before the stop and not after it, and
/// Stead's worker reports a start time no earlier than the measurement's start. A sample
/// that is not cold is taken again, at most twice.
async fn proven_cold<T, F, Fut>(browser: &Browser, site: Site, mut measure: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let origin = browser.js("return location.origin + '/'").await?.as_str().context("the page's origin")?.to_owned();
    for _ in 0..3 {
        anyhow::ensure!(worker_running(browser, &origin).await?, "{origin}: the worker is not listed as running before the stop");
        wait_for("the page's requests to end before the stop", Duration::from_secs(30), || async {
            let pending = browser.js("return window.__bench ? window.__bench.pending : 0").await?;
            Ok((pending.as_u64() == Some(0)).then_some(()))
        })
        .await?;
        browser.js("performance.clearResourceTimings(); performance.setResourceTimingBufferSize(1000);").await?;
        browser.stop_workers().await?;
        let stopped = worker_stopped(browser, &origin).await?;
        if !stopped {
            // What the page asked for since the stop: a request to the worker starts it again.
            let asked = browser.js("return [location.pathname, Math.round(Date.now() - performance.timeOrigin), performance.getEntriesByType('resource').map(e => e.name.replace(location.origin, '') + ' @' + Math.round(e.startTime))]").await?;
            eprintln!("  {} {origin}: still running after the stop; the page asked for {asked}", site.name());
        }
        let at = browser.js("return Date.now()").await?.as_f64().context("the page's clock")?;
        let value = measure().await?;
        let cold = stopped
            && match site {
                Site::Stead => browser.status().await?["worker_started"].as_f64().is_some_and(|started| started >= at),
                // Workbox reports nothing; its worker was proven stopped before the sample.
                Site::Workbox => true,
            };
        if cold {
            return Ok(value);
        }
        eprintln!("  {} {origin}: a sample was not cold (stopped: {stopped}); taken again", site.name());
        // Running again for the next try's check: the page itself is the worker's to answer.
        browser.js_async("await fetch(location.href); return 1;").await?;
    }
    bail!("{} {origin}: no cold sample in 3 tries", site.name())
}

/// Reloads the page and returns navigation start → DOMContentLoaded in ms, once the app
/// has rendered.
async fn reload(browser: &Browser) -> Result<f64> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    browser.driver.refresh().await?;
    let dcl = wait_for("DOMContentLoaded after the reload", Duration::from_secs(30), || async {
        let v = browser
            .js("const n = performance.getEntriesByType('navigation')[0]; return n ? n.domContentLoadedEventEnd : 0;")
            .await?;
        Ok(v.as_f64().filter(|&x| x > 0.0))
    })
    .await?;
    browser.wait_app().await?;
    Ok(dcl)
}

/// One sample of cold start against worker size.
struct ColdSample {
    site: Site,
    pad: usize,
    /// The registered worker script's bytes, padding included.
    script: u64,
    i: usize,
    ms: f64,
}

/// Cold start against worker size. For every padding, a pair of small sites (the app,
/// [`COLD_FILES`] files of 1 KB, [`BLANK_PAGE`]); one fresh browser per system installs all
/// of its sizes, each from its own server (so its own origin); then the servers are killed,
/// as for the offline cold samples above. Sample i visits the paddings ascending (i even)
/// or descending (i odd), and the systems A,B or B,A in turn.
async fn cold_size(args: &Args, env: &Env, plan: &Plan, root: &Path) -> Result<Vec<ColdSample>> {
    const SITES: [Site; 2] = [Site::Stead, Site::Workbox];
    let files: Vec<(String, usize)> = (0..COLD_FILES).map(|i| (format!("bench/c-{i:03}.bin"), 1024)).collect();
    let mut dirs = Vec::new();
    for &pad in &plan.pads {
        let (stead, workbox) = make_sites(args, root, &format!("cold-{pad}"), &files, Some(pad))?;
        dirs.push([stead, workbox]);
    }
    let a = Browser::start(env).await?;
    let b = match Browser::start(env).await {
        Ok(b) => b,
        Err(e) => {
            a.quit().await?;
            return Err(e);
        }
    };
    let browsers = [&a, &b];
    let result = async {
        let mut servers = Vec::new();
        // origins[system][padding]: (the server's URL, the worker script's bytes)
        let mut origins: [Vec<(String, u64)>; 2] = [Vec::new(), Vec::new()];
        for (k, site) in SITES.into_iter().enumerate() {
            for (pad, pair) in plan.pads.iter().zip(&dirs) {
                let dir = &pair[k];
                let server = Server::start(env, dir)?;
                install(browsers[k], &server.url, site, &manifest(dir)?).await.with_context(|| format!("installing {} with +{pad} bytes", site.name()))?;
                origins[k].push((server.url.clone(), std::fs::metadata(dir.join(stead_core::bundle::WORKER_SCRIPT))?.len()));
                servers.push(server);
            }
        }
        for server in &mut servers {
            server.kill();
        }
        let mut out = Vec::new();
        let n = plan.pads.len();
        for i in 0..plan.pad_samples {
            let order: Vec<usize> = if i % 2 == 0 { (0..n).collect() } else { (0..n).rev().collect() };
            for (j, &p) in order.iter().enumerate() {
                for k in abba(i + j) {
                    let (url, script) = &origins[k][p];
                    let file = format!("bench/c-{:03}.bin", i % COLD_FILES);
                    let ms = cold_fetch(browsers[k], SITES[k], url, &file).await?;
                    out.push(ColdSample { site: SITES[k], pad: plan.pads[p], script: *script, i, ms });
                }
            }
        }
        anyhow::Ok(out)
    }
    .await;
    a.quit().await?;
    b.quit().await?;
    result
}

/// Whether the worker of `origin` is gone from the CDP targets within 2 s of a stop: the
/// browser drops the target once the worker thread ended, which on a busy machine can take
/// longer than the stop call itself.
async fn worker_stopped(browser: &Browser, origin: &str) -> Result<bool> {
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !worker_running(browser, origin).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a service worker of `origin` (`http://localhost:PORT/`) runs: the browser lists
/// a running worker as a CDP target and drops it once stopped.
async fn worker_running(browser: &Browser, origin: &str) -> Result<bool> {
    let v = browser.cdp("Target.getTargets", json!({})).await?;
    let targets = v["targetInfos"].as_array().context("Target.getTargets gave no targetInfos")?;
    Ok(targets.iter().any(|t| t["type"] == "service_worker" && t["url"].as_str().is_some_and(|u| u.starts_with(origin))))
}

/// The first answered fetch of `file` (1 KB) after the worker is stopped, in ms, from a
/// page of `origin` that runs no script of its own, proven cold ([`proven_cold`]).
async fn cold_fetch(browser: &Browser, site: Site, origin: &str, file: &str) -> Result<f64> {
    browser.driver.goto(&format!("{origin}{BLANK_PAGE}")).await?;
    browser.wait_controlled().await?;
    proven_cold(browser, site, || async {
        let v = browser
            .js_async(&format!(
                "const t0 = performance.now(); \
                 const r = await fetch('/{file}'); const b = await r.arrayBuffer(); \
                 const t1 = performance.now(); \
                 if (!r.ok || b.byteLength !== 1024) throw new Error('{file}: ' + r.status + ', ' + b.byteLength + ' bytes'); \
                 return t1 - t0;"
            ))
            .await?;
        if let Some(e) = v.get("error") {
            bail!("fetch in the page failed: {e}");
        }
        v.as_f64().context("a time")
    })
    .await
}

/// Stead's step profiles: `sample,step,ms`.
fn write_profile_csv(path: &Path, profiles: &[Vec<(String, f64)>]) -> Result<()> {
    let mut s = String::from("sample,step,ms\n");
    for (i, steps) in profiles.iter().enumerate() {
        for (step, ms) in steps {
            writeln!(s, "{i},{step},{ms:.4}")?;
        }
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

/// Each step of a profile, in the order of their medians: median and range over the samples.
fn print_profile(title: &str, profiles: &[Vec<(String, f64)>]) {
    println!("{title}, {} samples):", profiles.len());
    let mut steps: Vec<&str> = Vec::new();
    for p in profiles {
        for (step, _) in p {
            if !steps.contains(&step.as_str()) {
                steps.push(step);
            }
        }
    }
    let mut rows: Vec<(&str, f64, f64, f64, usize)> = steps
        .into_iter()
        .filter_map(|step| {
            let v: Vec<f64> = profiles.iter().filter_map(|p| p.iter().find(|(s, _)| s == step).map(|(_, ms)| *ms)).collect();
            Some((step, median(&v)?, quantile(&v, 0.0)?, quantile(&v, 1.0)?, v.len()))
        })
        .collect();
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (step, m, lo, hi, n) in rows {
        println!("  {step:<20} {m:>8.2}  ({lo:.2}–{hi:.2}, n {n})");
    }
    println!();
}

fn write_cold_csv(path: &Path, samples: &[ColdSample]) -> Result<()> {
    let mut s = String::from("site,pad_bytes,script_bytes,sample,ms\n");
    for x in samples {
        writeln!(s, "{},{},{},{},{:.4}", x.site.name(), x.pad, x.script, x.i, x.ms)?;
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

fn print_cold_table(samples: &[ColdSample], plan: &Plan) {
    println!("cold start against worker size: first answered 1 KB fetch after the worker is stopped (offline), ms;");
    println!("each worker script ends in an inert comment of +padding bytes; every sample proven cold");
    println!("{:>10} {:>5} {:>12} {:>10} {:>17} {:>12} {:>10} {:>17} {:>7}", "padding", "n", "stead bytes", "stead", "stead min–max", "wb bytes", "workbox", "workbox min–max", "ratio");
    for &pad in &plan.pads {
        let of = |site| -> (Vec<f64>, u64) {
            let v: Vec<&ColdSample> = samples.iter().filter(|s| s.site == site && s.pad == pad).collect();
            (v.iter().map(|s| s.ms).collect(), v.first().map_or(0, |s| s.script))
        };
        let ((a, ab), (b, bb)) = (of(Site::Stead), of(Site::Workbox));
        let (Some(ma), Some(mb)) = (median(&a), median(&b)) else { continue };
        let range = |v: &[f64]| format!("{:.1}–{:.1}", quantile(v, 0.0).unwrap_or(0.0), quantile(v, 1.0).unwrap_or(0.0));
        println!(
            "{:>10} {:>5} {ab:>12} {ma:>10.2} {:>17} {bb:>12} {mb:>10.2} {:>17} {:>6.2}×",
            format!("+{} KiB", pad >> 10),
            a.len().min(b.len()),
            range(&a),
            range(&b),
            ma / mb
        );
    }
    println!();
}

fn write_csv(path: &Path, samples: &Samples) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut s = String::from("site,block,metric,sample,ms\n");
    for x in &samples.all {
        writeln!(s, "{},{},{},{},{:.4}", x.site.name(), x.block, x.metric, x.i, x.ms)?;
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

fn print_table(
    samples: &Samples,
    chromium: &str,
    workbox: &str,
    serve: &stead_core::bundle::BundleManifest,
    pre: &stead_core::bundle::BundleManifest,
) {
    println!();
    println!("bench sw — Stead (OPFS) / Workbox {workbox} (Cache Storage); medians in ms");
    println!("browser: {chromium}");
    println!(
        "serving sites: {} files, {:.1} MB; precache sites: {} files, {:.1} MB",
        serve.files.len(),
        serve.total_size() as f64 / 1e6,
        pre.files.len(),
        pre.total_size() as f64 / 1e6
    );
    println!();
    println!(
        "{:<26} {:>5} {:>10} {:>10} {:>7}  {:<6} {:<7} {:>15} {:>15}",
        "metric", "n", "stead", "workbox", "ratio", "goal", "", "stead p25–p75", "workbox p25–p75"
    );
    let mut metrics: Vec<&str> = Vec::new();
    for s in &samples.all {
        if !metrics.contains(&s.metric.as_str()) {
            metrics.push(&s.metric);
        }
    }
    for metric in metrics {
        let a = samples.values(Site::Stead, metric);
        let b = samples.values(Site::Workbox, metric);
        let n = a.len().min(b.len());
        let (Some(ma), Some(mb)) = (median(&a), median(&b)) else { continue };
        // Judged as printed, to two decimals.
        let ratio = (ma / mb * 100.0).round() / 100.0;
        let goal = if metric.starts_with("fetch_offline") || metric == "reload_offline_dcl" {
            Some(0.8)
        } else if metric == "cold_fetch_offline_1k" || metric == "reload_offline_cold_dcl" {
            Some(1.0)
        } else if metric.starts_with("precache") {
            Some(0.5)
        } else {
            None
        };
        let (goal_s, verdict) = match goal {
            Some(g) => (format!("≤{g:.1}×"), if ratio <= g { "met" } else { "MISSED" }),
            None => ("—".to_owned(), ""),
        };
        println!(
            "{metric:<26} {n:>5} {ma:>10.3} {mb:>10.3} {ratio:>6.2}×  {goal_s:<6} {verdict:<7} {:>15} {:>15}",
            iqr(&a),
            iqr(&b)
        );
    }
    let floor = median(&samples.values(Site::Workbox, FLOOR_METRIC));
    let workbox_2m = median(&samples.values(Site::Workbox, "fetch_offline_2m"));
    let stead_floor = median(&samples.values(Site::Stead, FLOOR_METRIC));
    let stead_2m = median(&samples.values(Site::Stead, "fetch_offline_2m"));
    if let (Some(f), Some(w), Some(sf), Some(s2)) = (floor, workbox_2m, stead_floor, stead_2m) {
        println!(
            "floor at 2 MB: the page's own blob: URL (no worker) takes {:.2}× Workbox's offline 2 MB fetch in the same browser; Stead's takes {:.2}× that floor in its own",
            f / w,
            s2 / sf
        );
    }
    println!();
}
