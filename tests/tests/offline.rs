//! The walking skeleton, end to end: the built todo example in real Chromium against a
//! real `stead-server` process. Install, offline reload, offline cold start, resumable
//! install, update, and a corrupt download.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use stead_e2e::{Browser, Capability, Env, Server, manifest, proxy::Proxy, rebuild_with_marker, wait_for};
use thirtyfour::prelude::*;

fn as_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Opens the app and waits until the worker controls the page with the build active.
async fn install(browser: &Browser, url: &str, version: &str) -> Result<Value> {
    browser.driver.goto(url).await?;
    browser.wait_app().await?;
    browser.wait_controlled().await?;
    wait_for("the build to be active", Duration::from_secs(30), || async {
        let s = browser.status().await?;
        Ok((as_str(&s, "active_version").as_deref() == Some(version)).then_some(s))
    })
    .await
}

#[tokio::test]
async fn a_first_visit_installs_every_file_and_the_worker_controls_the_page() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let browser = Browser::start(&env).await?;
    let m = manifest(&env.dist)?;
    let status = install(&browser, &server.url, &m.version).await?;

    let listed: Vec<(String, bool)> = status["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| (as_str(f, "path").unwrap_or_default(), f["stored"].as_bool().unwrap_or(false)))
        .collect();
    let expected: Vec<(String, bool)> = m.files.iter().map(|f| (f.path.clone(), true)).collect();
    assert_eq!(listed, expected, "status lists every bundle file as stored");
    assert_eq!(status["stored_bytes"].as_u64(), Some(m.total_size()));
    assert_eq!(status["last_error"], Value::Null);
    // The page's own files now come from the worker.
    let served_by = browser
        .js_async("const r = await fetch('/'); return r.headers.get('x-stead-version');")
        .await?;
    assert_eq!(served_by.as_str(), Some(m.version.as_str()));

    // Every file, asked for three times (the first answer comes from the store, later ones
    // from the worker's copy in memory): the bundle's bytes each time.
    let digests = browser
        .js_async(&format!(
            "const out = {{}};\
             for (let round = 0; round < 3; round++) {{\
               for (const path of {paths}) {{\
                 const body = await (await fetch('/' + path)).arrayBuffer();\
                 const hex = [...new Uint8Array(await crypto.subtle.digest('SHA-256', body))].map((b) => b.toString(16).padStart(2, '0')).join('');\
                 (out[path] ||= []).push(hex);\
               }}\
               await new Promise((r) => setTimeout(r, 200));\
             }}\
             return out;",
            paths = serde_json::json!(m.files.iter().map(|f| &f.path).collect::<Vec<_>>())
        ))
        .await?;
    for f in &m.files {
        assert_eq!(digests[&f.path], serde_json::json!([f.sha256, f.sha256, f.sha256]), "{}", f.path);
    }
    browser.quit().await
}

#[tokio::test]
async fn with_the_server_killed_a_reload_renders_and_the_ui_responds() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let browser = Browser::start(&env).await?;
    install(&browser, &server.url, &manifest(&env.dist)?.version).await?;

    server.kill();
    assert!(reqwest::get(&server.url).await.is_err(), "the server is really gone");
    browser.refresh().await?;
    browser.add_todo("buy milk offline").await?;
    let left = browser.driver.find(By::Id("left")).await?.text().await?;
    assert_eq!(left, "1 left");
    browser.quit().await
}

#[tokio::test]
async fn offline_the_stopped_worker_cold_starts_and_serves_the_app() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let browser = Browser::start(&env).await?;
    let before = install(&browser, &server.url, &manifest(&env.dist)?.version).await?;

    server.kill();
    browser.stop_workers().await?;
    browser.refresh().await?;
    browser.add_todo("written after a cold start").await?;
    let after = browser.status().await?;
    assert!(
        after["worker_started"].as_f64() > before["worker_started"].as_f64(),
        "a new worker instance answered: {} then {}",
        before["worker_started"],
        after["worker_started"]
    );
    browser.quit().await
}

/// Whether Chromium runs a service worker of the page's origin (CDP lists a running worker
/// as a target).
async fn worker_running(browser: &Browser) -> Result<bool> {
    let origin = browser.js("return location.origin + '/'").await?.as_str().context("the page's origin")?.to_owned();
    let v = browser.cdp("Target.getTargets", serde_json::json!({})).await?;
    let targets = v["targetInfos"].as_array().context("Target.getTargets gave no targetInfos")?;
    Ok(targets.iter().any(|t| t["type"] == "service_worker" && t["url"].as_str().is_some_and(|u| u.starts_with(&origin))))
}

async fn wait_worker_stopped(browser: &Browser) -> Result<()> {
    wait_for("the worker to stop", Duration::from_secs(10), || async { Ok((!worker_running(browser).await?).then_some(())) }).await
}

/// The page's update prompt, once it shows.
async fn update_prompt(browser: &Browser) -> Result<WebElement> {
    wait_for("the update prompt", Duration::from_secs(30), || async { Ok(browser.driver.find(By::Id("stead-update")).await.ok()) }).await
}

/// Waits until the page runs the build marked `marker` (`rebuild_with_marker`).
async fn wait_marker(browser: &Browser, marker: &str) -> Result<()> {
    wait_for("the new version to show", Duration::from_secs(30), || async {
        Ok((browser.marker().await?.as_deref() == Some(marker)).then_some(()))
    })
    .await
}

/// What the cold copy (`stead-cold`) holds: path → [etag, x-stead-version, body length].
async fn cold_copy(browser: &Browser) -> Result<Value> {
    browser
        .js_async(
            "const c = await caches.open('stead-cold'); const held = {};\
             for (const r of await c.keys()) {\
               const res = await c.match(r);\
               held[new URL(r.url).pathname] = [res.headers.get('etag'), res.headers.get('x-stead-version'), (await res.arrayBuffer()).byteLength];\
             }\
             return held;",
        )
        .await
}

/// Waits until the cold copy holds exactly `m`: each file, and the entry under the
/// scope's URL, with the worker's headers (the marker and the wake page besides).
async fn wait_cold_copy(browser: &Browser, m: &stead_core::bundle::BundleManifest) -> Result<()> {
    let line = |f: &stead_core::bundle::BundleFile| serde_json::json!([format!("\"{}\"", f.sha256), m.version, f.size]);
    let mut want: serde_json::Map<String, Value> = m.files.iter().map(|f| (format!("/{}", f.path), line(f))).collect();
    want.insert("/".into(), line(m.file(&m.entry).context("the entry is a bundle file")?));
    let last = std::cell::RefCell::new(Value::Null);
    let done = wait_for("the cold copy to hold the version", Duration::from_secs(30), || async {
        let mut held = cold_copy(browser).await?;
        let extra = held.as_object_mut().map(|h| [h.remove("/_stead/cold").is_some(), h.remove("/_stead/wake").is_some()]);
        let ok = held.as_object() == Some(&want) && extra == Some([true, true]);
        *last.borrow_mut() = held;
        Ok(ok.then_some(()))
    })
    .await;
    done.with_context(|| format!("the copy holds {}", last.borrow()))
}

/// While the worker is stopped, Chromium answers the app's files from the cold copy
/// (`sw/src/cold.rs`) without starting it: offline, in the version the worker switched
/// to last. A navigation to one of the app's own routes still reaches the worker.
#[tokio::test]
async fn offline_a_stopped_worker_s_files_come_from_its_cold_copy_without_starting_it() -> Result<()> {
    let env = Env::get()?;
    let dist = env.copy_dist()?;
    let mut server = Server::start(&env, dist.path())?;
    let browser = Browser::start(&env).await?;
    if browser.lacks(Capability::StaticRoutes, "the whole test") {
        return browser.quit().await;
    }
    let v1 = manifest(dist.path())?;
    install(&browser, &server.url, &v1.version).await?;

    // Once the version is active the worker writes the copy, with no page asking: every
    // file and the entry, each with the worker's own headers.
    wait_cold_copy(&browser, &v1).await?;

    // An update moves the copy: its entry and its changed file are the new version's.
    let v2 = rebuild_with_marker(dist.path(), "v2")?;
    browser.refresh().await?;
    let button = update_prompt(&browser).await?;
    button.click().await?;
    wait_marker(&browser, "v2").await?;

    // From a page that runs no script (the app's heartbeats would start the worker): an
    // icon, which the worker serves as a navigation.
    let icon = v2.files.iter().find(|f| f.path.starts_with("icons/")).expect("an icon");
    browser.driver.goto(&format!("{}{}", server.url, icon.path)).await?;
    browser.wait_controlled().await?;
    server.kill();
    browser.stop_workers().await?;
    wait_worker_stopped(&browser).await?;
    let got = browser
        .js_async(&format!(
            "const page = await fetch('/'); const icon = await fetch('/{}');\
             return {{version: page.headers.get('x-stead-version'), v2: (await page.text()).includes('stead-e2e'), icon: (await icon.arrayBuffer()).byteLength}};",
            icon.path
        ))
        .await?;
    assert_eq!(got["version"].as_str(), Some(v2.version.as_str()), "{got}");
    assert_eq!(got["v2"], true, "{got}");
    assert_eq!(got["icon"].as_u64(), Some(icon.size), "{got}");
    assert!(!worker_running(&browser).await?, "the cold copy answered: no worker started");

    // The app's own route is the worker's to answer (the copy has only the entry).
    browser.driver.goto(&format!("{}todos/active", server.url)).await?;
    browser.wait_app().await?;
    assert_eq!(browser.marker().await?.as_deref(), Some("v2"));
    assert!(worker_running(&browser).await?, "the worker answered the app's route");
    browser.quit().await
}

/// A stop in the middle of writing the copy (the wake page stands in for the entry, a file
/// is not in yet, the marker is stale) still loads the app offline from a stopped worker:
/// the wake page starts the worker and loads again, and the page's start finishes the copy.
#[tokio::test]
async fn offline_a_cold_copy_cut_short_still_loads_the_app_and_is_finished_by_it() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let browser = Browser::start(&env).await?;
    if browser.lacks(Capability::StaticRoutes, "the whole test") {
        return browser.quit().await;
    }
    let m = manifest(&env.dist)?;
    install(&browser, &server.url, &m.version).await?;
    wait_cold_copy(&browser, &m).await?;
    let icon = m.files.iter().find(|f| f.path.starts_with("icons/")).expect("an icon");
    browser
        .js_async(&format!(
            "const c = await caches.open('stead-cold');\
             await c.put('/', await c.match('/_stead/wake'));\
             await c.delete('/{}'); await c.delete('/_stead/cold'); return true;",
            icon.path
        ))
        .await?;

    // From a page that runs no script, then the scope's URL with the worker stopped. The
    // tab's sessionStorage holds something else under the wake page's key, which must not
    // stop the wake.
    browser.driver.goto(&format!("{}{}", server.url, icon.path)).await?;
    browser.wait_controlled().await?;
    browser.js("sessionStorage.setItem('stead-wake', '{not json'); return true;").await?;
    server.kill();
    browser.stop_workers().await?;
    wait_worker_stopped(&browser).await?;
    browser.driver.goto(&server.url).await?;
    browser.wait_app().await?;
    let tries = browser.js("return JSON.parse(sessionStorage.getItem('stead-wake') || '[]').length").await?;
    assert_eq!(tries.as_u64(), Some(1), "the wake page loaded once, then the app");
    wait_cold_copy(&browser, &m).await?;
    browser.quit().await
}

/// A navigation the cold copy answers never reaches the worker: the page's start is what
/// checks for a new version then.
#[tokio::test]
async fn a_page_loaded_from_the_cold_copy_still_finds_an_update() -> Result<()> {
    let env = Env::get()?;
    let dist = env.copy_dist()?;
    let server = Server::start(&env, dist.path())?;
    let browser = Browser::start(&env).await?;
    if browser.lacks(Capability::StaticRoutes, "the whole test") {
        return browser.quit().await;
    }
    let v1 = manifest(dist.path())?;
    install(&browser, &server.url, &v1.version).await?;
    wait_cold_copy(&browser, &v1).await?;
    let v2 = rebuild_with_marker(dist.path(), "v2")?;
    // Past the install's own check, from a page that sends no heartbeats.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let icon = v1.files.iter().find(|f| f.path.starts_with("icons/")).expect("an icon");
    browser.driver.goto(&format!("{}{}", server.url, icon.path)).await?;
    browser.wait_controlled().await?;
    browser.stop_workers().await?;
    wait_worker_stopped(&browser).await?;

    browser.driver.goto(&server.url).await?;
    let source = browser.js("return performance.getEntriesByType('navigation')[0].workerFinalSourceType;").await?;
    assert_eq!(source.as_str(), Some("cache"), "the cold copy answered the navigation");
    browser.wait_app().await?;
    assert_eq!(browser.marker().await?, None, "the copy served the installed version");
    update_prompt(&browser).await?;
    assert_eq!(as_str(&browser.status().await?, "pending_version"), Some(v2.version.clone()));
    browser.quit().await
}

/// Script that makes `change` (using `tx`) in one read-write transaction over `stores` (a
/// JS name or array of names) of the worker's IndexedDB bundle store, and waits for it.
fn in_bundle_db(stores: &str, change: &str) -> String {
    format!(
        "await new Promise((ok, fail) => {{ \
           const open = indexedDB.open('stead-bundle'); \
           open.onerror = () => fail(open.error); \
           open.onsuccess = () => {{ \
             const tx = open.result.transaction({stores}, 'readwrite'); \
             {change} \
             tx.oncomplete = () => {{ open.result.close(); ok(); }}; \
             tx.onerror = () => fail(tx.error); \
           }}; \
         }});"
    )
}

/// Damages the worker's state document (its versions) from the page, where the worker
/// keeps it: `stead/state.bin` in OPFS, or the `state.bin` value in IndexedDB. Returns when
/// the write ended, by the browser's clock (ms since the epoch, as status's `worker_started`).
async fn damage_state(browser: &Browser, place: &str) -> Result<f64> {
    let v = browser
        .js_async(&(format!(
            "const bytes = new Uint8Array([115, 116, 101, 97, 100]); \
             if ({place:?} === 'opfs') {{ \
               const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('stead'); \
               const w = await (await dir.getFileHandle('state.bin')).createWritable(); \
               await w.write(bytes); await w.close(); \
             }} else {{ \
               {} \
             }}",
            in_bundle_db("'docs'", "tx.objectStore('docs').put(bytes, 'state.bin');")
        ) + " return Date.now();"))
        .await?;
    v.as_f64().with_context(|| format!("damaging the state: {v}"))
}

/// The example installed, with nothing to wake its worker but the test.
struct Quiet {
    server: Server,
    browser: Browser,
    manifest: stead_core::bundle::BundleManifest,
    /// Status right after the install.
    before: Value,
    /// Where the worker keeps the bundle (`opfs` or `indexeddb`).
    place: String,
}

/// Installs the example, then leaves the browser on a file of the bundle that is not a
/// page, its navigation's update check done. The app's page wakes the worker by itself
/// (its heartbeat, its data requests), and a worker woken between a stop and a change the
/// test makes to its store would read the store before the change; a file that runs no
/// script wakes nothing.
async fn installed_and_quiet(env: &Env) -> Result<Quiet> {
    let server = Server::start(env, &env.dist)?;
    let browser = Browser::start(env).await?;
    let m = manifest(&env.dist)?;
    let before = install(&browser, &server.url, &m.version).await?;
    let place = as_str(&before, "bundle_storage").context("status names the bundle's storage")?;
    let inert = inert_file(&m)?;
    browser.driver.goto(&format!("{}{}", server.url, inert.path)).await?;
    let checked = |s: &Value| s["last_update_check"].as_f64();
    wait_for("the navigation's update check", Duration::from_secs(30), || async {
        let s = browser.status().await?;
        Ok((checked(&s) > checked(&before) && s["last_check_result"] == "up-to-date").then_some(()))
    })
    .await?;
    Ok(Quiet { server, browser, manifest: m, before, place })
}

/// A damaged state document costs the worker its version, not its life: status says what
/// is wrong, the next update check downloads the manifest again (every file is still
/// stored under its hash) and saves a new one, and the app works offline after that.
#[tokio::test]
async fn a_damaged_state_document_is_rebuilt_by_the_next_update_check() -> Result<()> {
    let env = Env::get()?;
    let Quiet { mut server, browser, manifest: m, before, place } = installed_and_quiet(&env).await?;

    if browser.lacks(Capability::StopWorkerUnderOpenPage, "seeing the damage in status while offline") {
        // WebKit's stop reloads the page, so the server stays up and the check runs at once.
        damage_state(&browser, &place).await?;
    } else {
        server.kill();
        browser.stop_workers().await?;
        let damaged = damage_state(&browser, &place).await?;
        // A wake can cross the stop (one full run in about 25 saw a life that began 135 ms
        // after the check, before the write): such a life read the state before the damage,
        // so it is stopped again until the one answering began after the write.
        let mut s = browser.status().await?;
        for _ in 0..3 {
            if s["worker_started"].as_f64().is_none_or(|t| t >= damaged) {
                break;
            }
            eprintln!("the worker answering began before the damage ({} < {damaged}): stopping it again", s["worker_started"]);
            browser.stop_workers().await?;
            s = browser.status().await?;
        }
        assert!(s["worker_started"].as_f64() >= Some(damaged), "the worker answering began after the damage: {s}");
        assert_eq!(s["active_version"], Value::Null, "no version is read from a damaged state: {s}");
        let error = as_str(&s, "last_error").unwrap_or_default();
        assert!(error.contains("the stored state is damaged"), "{error}");
        server = server.restart(&env)?;
    }
    browser.stop_workers().await?;
    browser.driver.goto(&server.url).await?;
    let after = wait_for("the version to be active again", Duration::from_secs(30), || async {
        let s = browser.status().await?;
        Ok((as_str(&s, "active_version").as_deref() == Some(m.version.as_str()) && s["last_error"].is_null()).then_some(s))
    })
    .await?;
    assert!(after["worker_started"].as_f64() > before["worker_started"].as_f64(), "a new worker life read the state");

    server.kill();
    browser.stop_workers().await?;
    browser.refresh().await?;
    browser.add_todo("after the state was rebuilt").await?;
    browser.quit().await
}

/// Loses every stored content of the bundle from the page, where the worker keeps them:
/// the packs in OPFS are cut to nothing, or the contents in IndexedDB deleted.
async fn lose_contents(browser: &Browser, place: &str) -> Result<()> {
    browser
        .js_async(&format!(
            "if ({place:?} === 'opfs') {{ \
               const root = await navigator.storage.getDirectory(); \
               const files = await (await root.getDirectoryHandle('stead')).getDirectoryHandle('files'); \
               for await (const [name, handle] of files.entries()) {{ \
                 if (!name.endsWith('.pack')) continue; \
                 const w = await handle.createWritable(); await w.truncate(0); await w.close(); \
               }} \
             }} else {{ \
               {} \
             }}",
            in_bundle_db("['files', 'sizes']", "tx.objectStore('files').clear(); tx.objectStore('sizes').clear();")
        ))
        .await?;
    Ok(())
}

/// Contents of the active version lost from the store (a pack cut short by a crash, say)
/// are downloaded again by the next update check, though the version is up to date, so
/// the app works offline again.
#[tokio::test]
async fn contents_lost_from_the_store_are_downloaded_again_by_the_next_update_check() -> Result<()> {
    let env = Env::get()?;
    let Quiet { mut server, browser, manifest: m, before, place } = installed_and_quiet(&env).await?;
    let all: BTreeSet<String> = m.hashes().into_iter().map(str::to_owned).collect();
    let stored = |s: &Value| -> BTreeSet<String> {
        s["stored"].as_array().into_iter().flatten().filter_map(|h| h.as_str().map(str::to_owned)).collect()
    };
    assert_eq!(stored(&before), all);
    lose_contents(&browser, &place).await?;
    if !browser.lacks(Capability::StopWorkerUnderOpenPage, "seeing the loss in status") {
        browser.stop_workers().await?;
        let s = browser.status().await?;
        assert!(stored(&s).is_empty(), "a new worker life finds the contents gone: {s}");
        assert_eq!(as_str(&s, "active_version"), Some(m.version.clone()), "the version itself is still known");
    }

    browser.driver.goto(&server.url).await?;
    wait_for("the lost contents to be stored again", Duration::from_secs(30), || async {
        let s = browser.status().await?;
        Ok((stored(&s) == all && s["last_check_result"] == "up-to-date" && s["last_error"].is_null()).then_some(()))
    })
    .await?;

    server.kill();
    browser.stop_workers().await?;
    browser.refresh().await?;
    browser.add_todo("after the contents came back").await?;
    browser.quit().await
}

#[tokio::test]
async fn an_interrupted_install_resumes_with_only_the_missing_files() -> Result<()> {
    interrupted_install(Batches::Refused).await
}

#[tokio::test]
async fn an_install_cut_mid_batch_resumes_with_only_the_missing_files() -> Result<()> {
    interrupted_install(Batches::Served).await
}

#[derive(PartialEq)]
enum Batches {
    /// The server answers `stead-files`.
    Served,
    /// A static host: `stead-files` is 404, so the worker downloads file by file.
    Refused,
}

/// An install whose downloads are cut after the first request (or two, file by file)
/// fails; the next attempt downloads exactly the files the first did not store.
async fn interrupted_install(batches: Batches) -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let proxy = Proxy::start(&server.url).await?;
    proxy.refuse_batches(batches == Batches::Refused);
    let m = manifest(&env.dist)?;
    let all: BTreeSet<String> = m.files.iter().map(|f| format!("/{}", f.path)).collect();
    assert!(all.len() >= 4, "the example has enough files to cut an install in two");
    let browser = Browser::start(&env).await?;

    let k = if batches == Batches::Served { 1 } else { 2 };
    proxy.cut_after(Some(k));
    browser.driver.goto(&proxy.url).await?;
    browser.wait_app().await?;
    let first = wait_for("the first install attempt to fail", Duration::from_secs(30), || async {
        let failed = browser
            .js_async(
                "const r = await navigator.serviceWorker.getRegistration();\
                 return !r || (!r.installing && !r.waiting && !r.active);",
            )
            .await?;
        // The browser may retry a cut request on its own, so count paths, not requests.
        let d = proxy.downloads();
        let tried: BTreeSet<&String> = d.iter().map(|(p, _)| p).collect();
        Ok((tried.len() == all.len() && failed.as_bool() == Some(true)).then_some(d))
    })
    .await?;
    proxy.take_downloads();
    let delivered: BTreeSet<String> = first.iter().filter(|(_, ok)| *ok).map(|(p, _)| p.clone()).collect();
    match batches {
        Batches::Refused => {
            assert_eq!(delivered.len(), k, "{first:?}");
            assert_eq!(proxy.batches_delivered(), 0);
        }
        // The example's small files share one batch; its two wasm modules go alone.
        Batches::Served => assert!(!delivered.is_empty() && delivered.len() < all.len(), "{first:?}"),
    }

    proxy.cut_after(None);
    browser.refresh().await?;
    browser.wait_controlled().await?;
    let status = browser.status().await?;
    assert_eq!(as_str(&status, "active_version"), Some(m.version.clone()));
    let second: BTreeSet<String> = proxy.take_downloads().into_iter().map(|(p, _)| p).collect();
    let missing: BTreeSet<String> = all.difference(&delivered).cloned().collect();
    assert_eq!(second, missing, "the second attempt fetched only what the first did not store");
    if batches == Batches::Served {
        assert!(proxy.batches_delivered() >= 1, "the small files came in a batch");
    }

    drop(proxy);
    server.kill();
    browser.stop_workers().await?;
    browser.refresh().await?;
    browser.add_todo("installed in two goes").await?;
    browser.quit().await
}

/// Changes `index.html` in a build folder and rewrites its manifest, as a rebuild would.
#[tokio::test]
async fn an_update_downloads_only_changed_files_and_switches_when_asked() -> Result<()> {
    let env = Env::get()?;
    let dist = env.copy_dist()?;
    let server = Server::start(&env, dist.path())?;
    let proxy = Proxy::start(&server.url).await?;
    let browser = Browser::start(&env).await?;
    let v1 = manifest(dist.path())?;
    install(&browser, &proxy.url, &v1.version).await?;
    proxy.take_downloads();

    let v2 = rebuild_with_marker(dist.path(), "v2")?;
    assert_ne!(v1.version, v2.version);
    browser.refresh().await?;
    let button = update_prompt(&browser).await?;
    assert_eq!(browser.marker().await?, None, "the page still runs the old version");
    let status = browser.status().await?;
    assert_eq!(as_str(&status, "pending_version"), Some(v2.version.clone()));
    assert_eq!(as_str(&status, "active_version"), Some(v1.version.clone()));

    button.click().await?;
    wait_marker(&browser, "v2").await?;
    let downloads: Vec<String> = proxy.take_downloads().into_iter().map(|(p, _)| p).collect();
    assert_eq!(downloads, ["/index.html"], "only the changed file was downloaded");

    let status = wait_for("old contents to be deleted", Duration::from_secs(20), || async {
        let s = browser.status().await?;
        let stored: BTreeSet<String> =
            s["stored"].as_array().into_iter().flatten().filter_map(|h| h.as_str().map(str::to_owned)).collect();
        Ok((stored == v2.hashes().into_iter().map(str::to_owned).collect()).then_some(s))
    })
    .await?;
    assert_eq!(as_str(&status, "active_version"), Some(v2.version.clone()));
    assert_eq!(status["pending_version"], Value::Null);
    let old_index = &v1.file("index.html").expect("index").sha256;
    assert!(!status["stored"].as_array().expect("stored").iter().any(|h| h.as_str() == Some(old_index)));
    browser.quit().await
}

#[tokio::test]
async fn a_corrupt_download_is_refused_and_the_current_version_keeps_working() -> Result<()> {
    let env = Env::get()?;
    let dist = env.copy_dist()?;
    let mut server = Server::start(&env, dist.path())?;
    let browser = Browser::start(&env).await?;
    let v1 = manifest(dist.path())?;
    install(&browser, &server.url, &v1.version).await?;

    // The manifest promises one index.html; the server serves other bytes. A second
    // changed file puts both into one batch download, which the server ends short at the
    // changed file: the worker then tries them one by one, and the error names the file.
    let css = v1.files.iter().find(|f| f.path.ends_with(".css")).expect("the example has a stylesheet");
    let mut styles = std::fs::read(dist.path().join(&css.path))?;
    styles.extend_from_slice(b"\n/* v2 */\n");
    std::fs::write(dist.path().join(&css.path), styles)?;
    rebuild_with_marker(dist.path(), "v2")?;
    std::fs::write(dist.path().join("index.html"), "<!doctype html><p>tampered</p>")?;
    browser.refresh().await?;
    let status = wait_for("the refusal to show in status", Duration::from_secs(30), || async {
        let s = browser.status().await?;
        Ok(s["last_error"].as_str().is_some().then_some(s))
    })
    .await?;
    let error = as_str(&status, "last_error").unwrap_or_default();
    assert!(error.contains("index.html: size mismatch") || error.contains("index.html: sha256 mismatch"), "{error}");
    assert_eq!(as_str(&status, "active_version"), Some(v1.version.clone()));
    assert_eq!(status["pending_version"], Value::Null);

    // The old version still serves, online and off.
    browser.refresh().await?;
    browser.add_todo("still on v1").await?;
    assert_eq!(browser.marker().await?, None);
    server.kill();
    browser.refresh().await?;
    browser.wait_app().await?;
    assert!(!browser.driver.source().await?.contains("tampered"));
    browser.quit().await
}

#[tokio::test]
async fn the_kill_switch_unregisters_the_worker_and_clears_its_storage() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let browser = Browser::start(&env).await?;
    install(&browser, &server.url, &manifest(&env.dist)?.version).await?;
    // The app has made its space: the bundle and the data are both stored (in OPFS where
    // the engine has it, else in IndexedDB).
    wait_for("the app's data to be stored", Duration::from_secs(30), || async {
        let s = Stored::of(&browser).await?;
        let both = if s.opfs { s.has("opfs:stead") && s.has("opfs:stead-data") } else { s.has("idb:stead-bundle") && s.has_prefix("idb:stead-space-") };
        Ok(both.then_some(()))
    })
    .await?;

    browser.js("navigator.serviceWorker.controller.postMessage({type: 'kill'})").await?;
    wait_for("the worker to unregister", Duration::from_secs(20), || async {
        let gone = browser.js_async("return !(await navigator.serviceWorker.getRegistration());").await?;
        Ok((gone.as_bool() == Some(true)).then_some(()))
    })
    .await?;
    assert_eq!(Stored::of(&browser).await?.names, Vec::<String>::new(), "the bundle, the keys and every store are gone");
    // The page keeps working from the network.
    browser.refresh().await?;
    browser.add_todo("after the kill switch").await?;
    browser.quit().await
}

/// The killed worker still controls its open pages until they navigate, and they keep
/// asking it things: status, their data, and the heartbeat every page sends. None of that
/// may open the data the kill erased, during the kill or after it.
#[tokio::test]
async fn pages_asking_a_killed_worker_for_status_do_not_bring_its_data_back() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let browser = Browser::start(&env).await?;
    install(&browser, &server.url, &manifest(&env.dist)?.version).await?;
    let space = app_space(&browser).await?;
    browser.add_todo("acknowledged before the kill").await?;
    // Ask for status, query the space and beat every 20 ms from before the kill until
    // well after it.
    browser
        .js(&format!(
            "window.asking = setInterval(() => {{\
               fetch('_stead/v1/status').catch(() => {{}});\
               fetch('_stead/v1/spaces/{space}/collections/todos').catch(() => {{}});\
               navigator.serviceWorker.controller?.postMessage({{type: 'heartbeat'}});\
             }}, 20);\
             navigator.serviceWorker.controller.postMessage({{type: 'kill'}});"
        ))
        .await?;
    wait_removed(&browser, "the worker to unregister while pages ask it for status").await?;
    // The worker outlives its registration while it controls this page: go on asking,
    // and look at the storage every 25 ms meanwhile, so that storage made and erased
    // again between two looks of a slower poll is seen too.
    let seen = Stored::seen_during(&browser, Duration::from_secs(3)).await?;
    browser.js("clearInterval(window.asking)").await?;
    assert_eq!(seen, Vec::<String>::new(), "storage came back after the kill; the worker says {}", left_behind(&browser).await?);
    assert_eq!(Stored::of(&browser).await?.names, Vec::<String>::new());
    browser.quit().await
}

#[tokio::test]
async fn an_app_retired_on_the_server_removes_itself_from_the_browser() -> Result<()> {
    let env = Env::get()?;
    let (browser, _servers) = installed_then_retired(&env).await?;
    browser.refresh().await?;
    wait_removed(&browser, "the worker to remove itself").await?;
    // A reload does not register again; the app itself still loads.
    reload_without_registering(&browser).await?;
    browser.wait_app().await?;
    wait_removed(&browser, "the app to stay removed after a reload").await?;
    browser.quit().await
}

/// The race behind the retired app's test: a page registers again just after the kill
/// switch removed the old registration (a reload landing at that moment does), so a new
/// worker installs while the old one still controls the page. Its install meets the same
/// 410 and must end, removing it too, instead of staying `installing`.
#[tokio::test]
async fn a_worker_registered_right_after_a_kill_removes_itself_too() -> Result<()> {
    let env = Env::get()?;
    let (browser, _servers) = installed_then_retired(&env).await?;
    browser.js("navigator.serviceWorker.controller.postMessage({type: 'kill'})").await?;
    wait_for("the killed worker to unregister", Duration::from_secs(20), || async {
        let gone = browser.js_async("return !(await navigator.serviceWorker.getRegistration());").await?;
        Ok((gone.as_bool() == Some(true)).then_some(()))
    })
    .await?;
    browser.js_async("await navigator.serviceWorker.register('./stead-sw.js', {scope: './'}); return true;").await?;
    wait_removed(&browser, "the second worker to remove itself").await?;
    browser.quit().await
}

/// A page that never heard the worker's `killed` message (it was reloaded, or its tab
/// closed, before the message arrived: nothing in `localStorage`) must not register the
/// withdrawn app again: the reload finds no registration and asks the manifest first. A
/// worker registered there would only install to fail on the same 410, and in WebKitGTK
/// 2.50 about 1 such install in 5 never finished, left `installing` with its database.
#[tokio::test]
async fn a_reload_that_missed_the_kill_does_not_register_again() -> Result<()> {
    let env = Env::get()?;
    let (browser, _servers) = installed_then_retired(&env).await?;
    browser.refresh().await?;
    wait_removed(&browser, "the worker to remove itself").await?;
    browser.js("localStorage.removeItem('stead-killed')").await?;
    reload_without_registering(&browser).await?;
    browser.wait_app().await?;
    wait_removed(&browser, "nothing of the app to be left").await?;
    browser.quit().await
}

/// The kill switch meets a page's first data request halfway: the request loads the data
/// engine to create a space while the kill looks whether the device holds any data. The
/// kill must see what that request makes and erase it; a space created behind the kill
/// outlived the app (and made a worker registered next keep it, unable to read it).
#[tokio::test]
async fn a_kill_during_the_first_data_request_erases_what_it_made() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let browser = Browser::start(&env).await?;
    // Registered from a bundle file that is not a page, so no app code asks for data: the
    // engine is first loaded by the request below.
    let inert = inert_file(&manifest(&env.dist)?)?.path.clone();
    browser.driver.goto(&format!("{}{inert}", server.url)).await?;
    browser.js_async("await navigator.serviceWorker.register('/stead-sw.js', {scope: '/'}); await navigator.serviceWorker.ready; return true;").await?;
    browser.wait_controlled().await?;
    let status = browser.status().await?;
    assert_eq!(status["data_engine"], "not loaded", "{status}");
    let before = Stored::of(&browser).await?.names;
    assert!(!before.iter().any(|n| n == "idb:stead" || n == "opfs:stead-data"), "no data before the first data request: {before:?}");
    browser
        .js(
            "window.created = null;\
             fetch('/_stead/v1/spaces', {method: 'POST', headers: {'content-type': 'application/json'}, body: '{}'})\
               .then((r) => { window.created = r.status; }, (e) => { window.created = String(e); });\
             navigator.serviceWorker.controller.postMessage({type: 'kill'});",
        )
        .await?;
    wait_removed(&browser, "the kill to erase the space the request created").await?;
    // The request was answered: made before the erase, refused as gone, or (reaching the
    // worker after the kill) sent to the server.
    let created = wait_for("the request's answer", Duration::from_secs(30), || async {
        let v = browser.js("return window.created").await?;
        Ok((!v.is_null()).then_some(v))
    })
    .await?;
    assert!(created.is_u64(), "the space request failed: {created}");
    browser.quit().await
}

/// A file of the bundle that is not a page: it runs no script, so only a test wakes the
/// worker or asks it for data.
fn inert_file(m: &stead_core::bundle::BundleManifest) -> Result<&stead_core::bundle::BundleFile> {
    m.files
        .iter()
        .find(|f| [".png", ".svg", ".ico", ".webmanifest"].iter().any(|ext| f.path.ends_with(ext)))
        .context("the bundle has a file that is not a page")
}

/// A browser with the app installed, whose server then came back on the same port with
/// the app retired (its bundle manifest answers 410); both servers are kept.
async fn installed_then_retired(env: &Env) -> Result<(Browser, [Server; 2])> {
    let mut server = Server::start(env, &env.dist)?;
    let browser = Browser::start(env).await?;
    install(&browser, &server.url, &manifest(&env.dist)?.version).await?;
    server.kill();
    let retired = Server::start_with(env, &env.dist, server.port, &["--retire"])?;
    Ok((browser, [server, retired]))
}

/// Reloads the page and watches from it, every 5 ms, until it has recorded the kill (it
/// does when it sees the 410, where it would otherwise register): a registration made
/// meanwhile shows for at least the new worker's script fetch and start, tens of ms.
async fn reload_without_registering(browser: &Browser) -> Result<()> {
    browser.refresh().await?;
    let watched = browser
        .js_async(
            "let seen = false; const t0 = performance.now();\
             const look = async () => { const r = await navigator.serviceWorker.getRegistration(); if (r && !seen) {\
               const state = (w) => w && w.state;\
               seen = {after_ms: Math.round(performance.now() - t0), installing: state(r.installing), waiting: state(r.waiting), active: state(r.active),\
                       controlled: !!navigator.serviceWorker.controller, recorded: localStorage.getItem('stead-killed')}; } };\
             for (let i = 0; i < 2000 && localStorage.getItem('stead-killed') !== '1'; i++) {\
               await look(); await new Promise((f) => setTimeout(f, 5)); }\
             await look();\
             return {seen, recorded: localStorage.getItem('stead-killed')};",
        )
        .await?;
    anyhow::ensure!(watched["recorded"] == "1", "the reloaded page never learned of the kill: {watched}");
    anyhow::ensure!(watched["seen"] == false, "the page registered the withdrawn app again: {watched}");
    Ok(())
}

/// Waits up to 30 s until nothing of the app is left, and stays so for [`SETTLED`]: no
/// registration, and no storage (the page's own space, IndexedDB's `stead` keys,
/// included). A failure says what is left.
///
/// The hold is for a page that asked to register just before its worker killed itself
/// (it saw the registration, then registered after the kill removed it): the browser
/// queues that registration behind the unregistration, so for a moment nothing is left,
/// then a new worker installs, meets the 410 and removes itself too. A reload in that
/// moment would see the new registration and blame the reloaded page for it.
async fn wait_removed(browser: &Browser, what: &str) -> Result<()> {
    let removed = || async {
        let unregistered = browser.js_async("return !(await navigator.serviceWorker.getRegistration());").await?;
        Ok::<_, anyhow::Error>(Stored::of(browser).await?.names.is_empty() && unregistered.as_bool() == Some(true))
    };
    // When the app was first seen gone in the current run of looks.
    let since = std::cell::Cell::new(None::<Instant>);
    let settled = || async {
        if !removed().await? {
            if let Some(first) = since.take() {
                eprintln!("{what}: the app came back {:?} after it looked gone", first.elapsed());
            }
            return Ok(None);
        }
        let first = since.get().unwrap_or_else(Instant::now);
        since.set(Some(first));
        Ok((first.elapsed() >= SETTLED).then_some(()))
    };
    if let Err(e) = wait_for(what, Duration::from_secs(30), settled).await {
        anyhow::bail!("{e:#}; left behind: {}, stored: {:?}", left_behind(browser).await?, Stored::of(browser).await?.names);
    }
    Ok(())
}

/// How long [`wait_removed`] wants the app gone before it believes it.
const SETTLED: Duration = Duration::from_millis(1500);

/// The page's registration and worker, for a failure message.
async fn left_behind(browser: &Browser) -> Result<serde_json::Value> {
    browser
        .js_async(
            "const r = await navigator.serviceWorker.getRegistration(); const state = (w) => w && w.state;\
             const worker = navigator.serviceWorker.controller; const base = worker ? worker.scriptURL : location.href;\
             let status = null; try { status = await (await fetch(new URL('_stead/v1/status', base))).text(); } catch (e) { status = String(e); }\
             return {registration: r ? r.scope : null, installing: state(r && r.installing), waiting: state(r && r.waiting), active: state(r && r.active),\
                     controlled: !!navigator.serviceWorker.controller, killed_key: localStorage.getItem('stead-killed'), status};",
        )
        .await
}

/// What the origin stores, seen from the page: OPFS's top-level names (`opfs:<name>`)
/// where the engine has OPFS, and IndexedDB's databases (`idb:<name>`), sorted.
struct Stored {
    opfs: bool,
    names: Vec<String>,
}

impl Stored {
    async fn of(b: &Browser) -> Result<Stored> {
        let v = b
            .js_async(
                "const names = []; const opfs = typeof navigator.storage?.getDirectory === 'function';\
                 if (opfs) { const root = await navigator.storage.getDirectory(); for await (const k of root.keys()) names.push('opfs:' + k); }\
                 for (const d of await indexedDB.databases()) names.push('idb:' + d.name);\
                 for (const c of await caches.keys()) names.push('cache:' + c);\
                 return {opfs, names: names.sort()};",
            )
            .await?;
        let names = v["names"].as_array().with_context(|| format!("listing storage: {v}"))?;
        Ok(Stored { opfs: v["opfs"] == true, names: names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect() })
    }

    /// Every name the origin stored at any of the looks taken every 25 ms for `period`.
    async fn seen_during(b: &Browser, period: Duration) -> Result<Vec<String>> {
        let v = b
            .js_async(&format!(
                "const seen = new Set(); const opfs = typeof navigator.storage?.getDirectory === 'function';\
                 const end = performance.now() + {ms};\
                 while (performance.now() < end) {{\
                   if (opfs) {{ const root = await navigator.storage.getDirectory(); for await (const k of root.keys()) seen.add('opfs:' + k); }}\
                   for (const d of await indexedDB.databases()) seen.add('idb:' + d.name);\
                   for (const c of await caches.keys()) seen.add('cache:' + c);\
                   await new Promise((r) => setTimeout(r, 25));\
                 }}\
                 return [...seen].sort();",
                ms = period.as_millis()
            ))
            .await?;
        let names = v.as_array().with_context(|| format!("listing storage: {v}"))?;
        Ok(names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
    }

    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.names.iter().any(|n| n.starts_with(prefix))
    }

    /// The names other than the spaces' IndexedDB databases.
    fn without_spaces(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).filter(|n| !n.starts_with("idb:stead-space-")).collect()
    }
}

/// Posts to `_stead/v1/{path}` (relative to the page) and returns `{status, body}`.
async fn post(b: &Browser, path: &str, content_type: &str, body: &str) -> Result<Value> {
    b.js_async(&format!(
        "const r = await fetch('_stead/v1/{path}', {{method: 'POST', headers: {{'content-type': '{content_type}'}}, body: '{body}'}});\
         return {{status: r.status, body: await r.json()}};"
    ))
    .await
}

/// Collects the `killed` messages of the `stead` channel in `window.killed`.
async fn listen_for_killed(b: &Browser) -> Result<()> {
    b.js("window.killed = []; window.steadChannel = new BroadcastChannel('stead');\
          window.steadChannel.onmessage = (e) => { if (e.data.type === 'killed') window.killed.push(e.data); };")
        .await?;
    Ok(())
}

/// Writes a todo while the server is down: the server never acknowledges it.
async fn write_unsent(b: &Browser, space: &str, text: &str) -> Result<()> {
    let r = b
        .js_async(&format!(
            "const r = await fetch('_stead/v1/spaces/{space}/collections/todos', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{fields: {{text: '{text}'}}}})}});\
             return r.status;"
        ))
        .await?;
    anyhow::ensure!(r == 201, "the offline write was refused: {r}");
    Ok(())
}

async fn app_space(b: &Browser) -> Result<String> {
    wait_for("the app to open its space", Duration::from_secs(30), || async {
        Ok(b.js("return localStorage.getItem('stead-space')").await?.as_str().map(str::to_owned))
    })
    .await
}

/// Kills the worker from the page with an unsent change, and waits for its answer.
async fn kill_with_unsent_change(b: &Browser, server: &mut Server, env: &Env) -> Result<(String, Value)> {
    install(b, &server.url, &manifest(&env.dist)?.version).await?;
    let space = app_space(b).await?;
    b.add_todo("sent").await?;
    server.kill();
    // The kill runs in a worker life that found the store on disk, as most do (the install's
    // own life knows no store folder before it makes one).
    if !b.lacks(Capability::StopWorkerUnderOpenPage, "killing a worker restarted since its install") {
        b.stop_workers().await?;
    }
    write_unsent(b, &space, "never sent").await?;
    listen_for_killed(b).await?;
    b.js("navigator.serviceWorker.controller.postMessage({type: 'kill'})").await?;
    let killed = wait_for("the kill switch to report what it kept", Duration::from_secs(20), || async {
        let k = b.js("return window.killed").await?;
        Ok(k.as_array().and_then(|a| a.first()).cloned())
    })
    .await?;
    Ok((space, killed))
}

#[tokio::test]
async fn the_kill_switch_keeps_unsent_changes_until_the_user_agrees() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let b = Browser::start(&env).await?;
    let (space, killed) = kill_with_unsent_change(&b, &mut server, &env).await?;
    assert_eq!(killed["consent_needed"], true, "{killed}");
    assert_eq!(killed["kept"][0]["space"], space.as_str(), "{killed}");
    assert!(killed["kept"][0]["pending"].as_u64() >= Some(1), "{killed}");

    // The bundle is gone; the space, its keys and the worker stay to answer the erase call,
    // and so does the data engine's module (`stead/files/<sha256>`), which a restarted
    // worker needs to sync and erase what is kept.
    let kept = Stored::of(&b).await?;
    if kept.opfs {
        assert_eq!(kept.names, ["idb:stead", "opfs:stead", "opfs:stead-data", "opfs:stead-killed.json"]);
    } else {
        // The marker is in the bundle's database, whose files and versions are gone.
        assert_eq!(kept.without_spaces(), ["idb:stead", "idb:stead-bundle"]);
        assert!(kept.has(&format!("idb:stead-space-{space}")), "{:?}", kept.names);
    }
    let status = b.status().await?;
    assert_eq!((status["killed"].clone(), status["consent_needed"].clone()), (Value::Bool(true), Value::Bool(true)), "{status}");
    assert_eq!(status["kept"][0]["space"], space.as_str(), "{status}");
    // A restarted worker is still killed and still keeps it. (The app is withdrawn and the
    // server down, so a page that left could not come back.)
    if !b.lacks(Capability::StopWorkerUnderOpenPage, "restarting the killed worker") {
        b.stop_workers().await?;
        let status = b.status().await?;
        assert_eq!(status["consent_needed"], true, "{status}");
    }
    assert!(b.js_async("return !!(await navigator.serviceWorker.getRegistration());").await?.as_bool() == Some(true));

    // Only a page's own JSON request with the confirmation erases it.
    let no = post(&b, "erase", "application/json", "{}").await?;
    assert_eq!(no["status"], 400, "{no}");
    let form = post(&b, "erase", "application/x-www-form-urlencoded", "confirm=true").await?;
    assert_eq!(form["status"], 400, "{form}");
    assert_eq!(Stored::of(&b).await?.names, kept.names, "a refused erase erases nothing");
    let yes = post(&b, "erase", "application/json", "{\"confirm\": true}").await?;
    assert_eq!(yes["status"], 200, "{yes}");
    assert_eq!(yes["body"]["erased"], serde_json::json!([space]), "{yes}");
    wait_for("the worker to unregister", Duration::from_secs(20), || async {
        let gone = b.js_async("return !(await navigator.serviceWorker.getRegistration());").await?;
        Ok((gone.as_bool() == Some(true)).then_some(()))
    })
    .await?;
    assert_eq!(Stored::of(&b).await?.names, Vec::<String>::new());
    b.quit().await
}

#[tokio::test]
async fn kept_changes_that_reach_the_server_after_a_kill_are_erased_then() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let b = Browser::start(&env).await?;
    kill_with_unsent_change(&b, &mut server, &env).await?;
    // The server comes back, retired: the kept space still syncs, and once the server has
    // its change nothing needs consent any more.
    let server = server.restart_with(&env, &["--retire"])?;
    wait_for("the worker to send what it kept and remove itself", Duration::from_secs(60), || async {
        let gone = b.js_async("return !(await navigator.serviceWorker.getRegistration());").await?;
        Ok((gone.as_bool() == Some(true)).then_some(()))
    })
    .await?;
    assert_eq!(Stored::of(&b).await?.names, Vec::<String>::new());
    let last = b.js("return window.killed[window.killed.length - 1]").await?;
    assert_eq!(last["kept"], serde_json::json!([]), "{last}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", server.port)).await?.text().await?;
    assert!(metrics.lines().any(|l| l == "stead_entries_stored_total 1"), "the kept change reached the server:\n{metrics}");
    b.quit().await
}

#[tokio::test]
async fn two_apps_under_different_scopes_of_one_origin_keep_their_data_apart() -> Result<()> {
    let env = Env::get()?;
    // One origin, the same app under /one/ and /two/ (its code loads from /).
    let dist = env.copy_dist()?;
    for app in ["one", "two"] {
        stead_e2e::copy_dir(&env.dist, &dist.path().join(app))?;
    }
    let server = Server::start(&env, dist.path())?;
    let b = Browser::start(&env).await?;
    let spaces = "const r = await fetch('_stead/v1/spaces'); return (await r.json()).spaces;";
    let mut windows = Vec::new();
    let mut listed = Vec::new();
    for (i, app) in ["one", "two"].into_iter().enumerate() {
        if i > 0 {
            let w = b.driver.new_window().await?;
            b.driver.switch_to_window(w).await?;
        }
        windows.push(b.driver.window().await?);
        b.driver.goto(&format!("{}{app}/", server.url)).await?;
        b.wait_controlled().await?;
        b.add_todo(&format!("in {app}")).await?;
        listed.push(b.js_async(spaces).await?);
    }
    assert_eq!(listed[0].as_array().map(Vec::len), Some(1), "{listed:?}");
    assert_eq!(listed[1].as_array().map(Vec::len), Some(1), "each app sees only its own space: {listed:?}");
    assert_ne!(listed[0], listed[1]);
    let scope = "return (await navigator.serviceWorker.getRegistration()).scope;";
    assert_eq!(b.js_async(scope).await?, format!("{}two/", server.url));
    // Every name either app stored carries its scope, and both apps stored something.
    let before = Stored::of(&b).await?;
    let scoped = |n: &&String, key: &str| n.ends_with(&format!("@{key}"));
    assert!(before.names.iter().all(|n| scoped(&n, "one") || scoped(&n, "two")), "{:?}", before.names);
    let named = if before.opfs { ["opfs:stead-scope@one", "opfs:stead-scope@two"] } else { ["idb:stead-bundle@one", "idb:stead-bundle@two"] };
    for n in named.into_iter().chain(["idb:stead@one", "idb:stead@two"]) {
        assert!(before.has(n), "{n} in {:?}", before.names);
    }

    // Retiring app one (its data is all on the server) leaves app two alone, even with a
    // page of app two open to hear the `killed` message.
    b.driver.switch_to_window(windows[0].clone()).await?;
    b.js("navigator.serviceWorker.controller.postMessage({type: 'kill'})").await?;
    let registered = "return (await navigator.serviceWorker.getRegistrations()).map(r => r.scope).sort();";
    wait_for("app one to unregister", Duration::from_secs(30), || async {
        Ok((b.js_async(registered).await? == serde_json::json!([format!("{}two/", server.url)])).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.js_async(registered).await?, serde_json::json!([format!("{}two/", server.url)]));
    let two: Vec<&String> = before.names.iter().filter(|n| scoped(n, "two")).collect();
    let after = Stored::of(&b).await?;
    assert_eq!(after.names.iter().collect::<Vec<_>>(), two, "app one's storage went, app two's stayed");
    b.driver.switch_to_window(windows[1].clone()).await?;
    b.refresh().await?;
    b.wait_app().await?;
    wait_for("app two's todo to show", Duration::from_secs(20), || async {
        for item in b.driver.find_all(By::Css("li.todo span")).await? {
            if item.text().await? == "in two" {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await?;
    assert_eq!(b.js_async(spaces).await?, listed[1]);
    b.quit().await
}
