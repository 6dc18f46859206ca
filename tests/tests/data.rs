//! The data engine end to end: two browser profiles are two devices of one space,
//! syncing through a real `stead-server` process, online and after offline edits.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stead_core::ids::RecordId;
use stead_core::ops::Value as V;
use stead_e2e::native::{self, NativeDevice};
use stead_e2e::throttle::Throttle;
use stead_e2e::{Browser, Capability, Engine, Env, Server, wait_for};
use thirtyfour::prelude::*;

/// The page API takes only JSON bodies that say so (`sw/PAGE-API.md`, Security).
const JSON_TYPE: &str = "{'content-type': 'application/json'}";

/// How long the page waits for the worker to answer one page-API request before it
/// gives up and reports what the worker and its registration were doing (under
/// WebDriver's 60 s script timeout, which would report nothing).
const API_PATIENCE_MS: u32 = 40_000;

/// Calls the worker's page API from the page; returns the JSON answer (problems too).
/// A request the worker does not answer in [`API_PATIENCE_MS`] fails with the worker's
/// state, and the space's sync status when the worker still answers that.
async fn api(b: &Browser, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let body = body.map_or("undefined".to_owned(), |b| format!("JSON.stringify({b})"));
    let v = b
        .js_async(&format!(
            "const call = (url, init, ms) => {{\
               const stop = new AbortController(); const timer = setTimeout(() => stop.abort(), ms);\
               return fetch(url, {{...init, signal: stop.signal}}).finally(() => clearTimeout(timer));\
             }};\
             try {{\
               const r = await call('/_stead/v1/{path}', {{method: '{method}', headers: {JSON_TYPE}, body: {body}}}, {API_PATIENCE_MS});\
               return {{status: r.status, body: await r.json()}};\
             }} catch (e) {{\
               if (e.name !== 'AbortError') throw e;\
               const reg = await navigator.serviceWorker.getRegistration();\
               const state = (w) => w ? w.state : null;\
               const worker = {{controller: state(navigator.serviceWorker.controller), active: state(reg && reg.active), waiting: state(reg && reg.waiting), installing: state(reg && reg.installing)}};\
               const m = '{path}'.match(/^spaces\\/([^/]+)\\//);\
               let status = 'not asked';\
               if (m) {{ try {{ status = await (await call('/_stead/v1/spaces/' + m[1] + '/status', {{}}, 10000)).json(); }} catch (e2) {{ status = String(e2); }} }}\
               return {{error: 'no answer in {API_PATIENCE_MS} ms; worker ' + JSON.stringify(worker) + '; space status ' + JSON.stringify(status)}};\
             }}"
        ))
        .await?;
    if let Some(e) = v.get("error") {
        bail!("{method} {path}: {e}");
    }
    Ok(v)
}

async fn space(b: &Browser) -> Result<String> {
    wait_for("the app to open its space", Duration::from_secs(30), || async {
        Ok(b.js("return localStorage.getItem('stead-space')").await?.as_str().map(str::to_owned))
    })
    .await
}

/// The texts of the todos the page shows.
async fn shown(b: &Browser) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in b.driver.find_all(By::Css("li.todo span")).await? {
        out.push(item.text().await?);
    }
    Ok(out)
}

async fn wait_shown(b: &Browser, text: &str, timeout: Duration) -> Result<()> {
    wait_for(&format!("{text:?} to show"), timeout, || async { Ok(shown(b).await?.iter().any(|t| t == text).then_some(())) }).await
}

async fn wait_online(b: &Browser) -> Result<()> {
    wait_for("sync to be online with nothing pending", Duration::from_secs(30), || async {
        let s = api(b, "GET", &format!("spaces/{}/status", space(b).await?), None).await?;
        Ok((s["body"]["state"] == "online" && s["body"]["pending"] == 0).then_some(()))
    })
    .await
}

/// A opens the app and creates a space; B joins it through A's invite link (the app's
/// invite button: B is a writer).
async fn pair(env: &Env, url: &str) -> Result<(Browser, Browser, String)> {
    pair_as(env, url, None).await
}

/// [`pair`], B joining as `role` when one is given (through a code from the page API).
async fn pair_as(env: &Env, url: &str, role: Option<&str>) -> Result<(Browser, Browser, String)> {
    let a = Browser::start(env).await?;
    a.driver.goto(url).await?;
    a.wait_app().await?;
    let space_a = space(&a).await?;
    wait_online(&a).await?;
    let link = match role {
        Some(role) => format!("{url}#join={}", invite_code_as(&a, &space_a, json!({"role": role})).await?),
        None => {
            let link = a.invite_link(Duration::from_secs(30)).await;
            match link {
                Ok(link) => link,
                Err(e) => {
                    let page = a.driver.find(By::Tag("body")).await?.text().await?;
                    let nav = a.js("const n = performance.getEntriesByType('navigation')[0]; return {type: n && n.type, url: location.href, ready: document.readyState, controlled: !!navigator.serviceWorker.controller, html: document.body.innerHTML.slice(0, 600)};").await?;
                    let worker = a.status().await.map(|s| json!({"active": s["active_version"], "pending": s["pending_version"], "started": s["worker_started"], "error": s["last_error"]})).unwrap_or_else(|e| json!(e.to_string()));
                    let page = format!("{page}\nnavigation: {nav}\nworker: {worker}");
                    let status = api(&a, "GET", &format!("spaces/{space_a}/status"), None).await?;
                    bail!("{e:#}\npage: {page}\nspace status: {status}");
                }
            }
        }
    };
    assert!(link.contains("#join="), "the invite travels in the fragment: {link}");

    let b = Browser::start(env).await?;
    // The first visit installs the worker; the join runs once it controls the page.
    b.driver.goto(&link).await?;
    b.wait_app().await?;
    let space_b = space(&b).await?;
    assert_eq!(space_b, space_a, "B joined A's space");
    let url = b.driver.current_url().await?;
    assert!(!url.as_str().contains("#join="), "the invite secret is removed from the address bar: {url}");
    wait_online(&b).await?;
    Ok((a, b, space_a))
}

#[tokio::test]
async fn an_edit_in_one_browser_appears_live_in_the_other_through_an_invite() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let (a, b, _) = pair(&env, &server.url).await?;

    // The space's secrets are sealed at rest under a key script cannot read.
    let at_rest = a
        .js_async(
            "const db = await new Promise((ok, err) => { const r = indexedDB.open('stead'); r.onsuccess = () => ok(r.result); r.onerror = err; });\
             const get = (store, f) => new Promise((ok) => { const r = db.transaction(store).objectStore(store)[f](); r.onsuccess = () => ok(r.result); });\
             const keys = await get('keys', 'getAll'); const spaces = await get('spaces', 'getAll');\
             const text = new TextDecoder().decode(spaces[0]);\
             const space = localStorage.getItem('stead-space');\
             return {key: keys[0] instanceof CryptoKey, extractable: keys[0].extractable, spaces: spaces.length, plain: text.includes(space) || text.includes('signing')};",
        )
        .await?;
    assert_eq!(at_rest, json!({"key": true, "extractable": false, "spaces": 1, "plain": false}), "{at_rest}");

    a.add_todo("written in A").await?;
    wait_shown(&b, "written in A", Duration::from_secs(5)).await?;
    b.add_todo("written in B").await?;
    wait_shown(&a, "written in A", Duration::from_secs(5)).await?;
    wait_shown(&a, "written in B", Duration::from_secs(5)).await?;
    a.quit().await?;
    b.quit().await
}

#[tokio::test]
async fn offline_edits_in_two_browsers_converge_after_the_server_returns() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let (a, b, space) = pair(&env, &server.url).await?;
    let todos = format!("spaces/{space}/collections/todos");

    // One record both know, then the network goes.
    let shared = api(&a, "POST", &todos, Some(json!({"fields": {"text": "shared"}}))).await?;
    let id = shared["body"]["id"].as_str().expect("an id").to_owned();
    wait_shown(&b, "shared", Duration::from_secs(5)).await?;
    let mut server = server;
    server.kill();

    // Both edit the same field, the same counter and set, and records of their own.
    let rec = format!("{todos}/{id}");
    for (dev, name) in [(&a, "A"), (&b, "B")] {
        let r = api(dev, "PATCH", &rec, Some(json!({"fields": {"text": format!("shared, edited by {name}")}}))).await?;
        assert_eq!(r["status"], 200, "an offline write is accepted: {r}");
        api(dev, "POST", &format!("{rec}/counters/votes"), Some(json!({"delta": if name == "A" { 2 } else { 5 }}))).await?;
        api(dev, "POST", &format!("{rec}/sets/tags"), Some(json!({"add": format!("tag-{name}")}))).await?;
        api(dev, "POST", &todos, Some(json!({"fields": {"text": format!("only in {name}")}}))).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A removes a tag B never saw removed... A adds and removes its own: the OR-set keeps B's.
    api(&a, "POST", &format!("{rec}/sets/tags"), Some(json!({"add": "gone"}))).await?;
    api(&a, "POST", &format!("{rec}/sets/tags"), Some(json!({"remove": "gone"}))).await?;
    let status = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(status["body"]["pending"].as_u64() > Some(0), "A has changes waiting: {status}");

    // A blob written offline: stored on A at once, readable by range.
    let marker = "stead-blob-canary-7f3a";
    let blob = a
        .js_async(&format!(
            "const text = '{marker} ' + 'x'.repeat(100000);\
             const r = await fetch('/_stead/v1/spaces/{space}/blobs', {{method: 'POST', headers: {{'content-type': 'text/plain'}}, body: text}});\
             const b = await r.json();\
             const part = await fetch('/_stead/v1/spaces/{space}/blobs/' + b.sha256 + '?mime=text/plain', {{headers: {{range: 'bytes=0-21'}}}});\
             return {{status: r.status, sha: b.sha256, size: b.size, range_status: part.status, range: await part.text(), content_range: part.headers.get('content-range')}};"
        ))
        .await?;
    assert_eq!(blob["status"], 201, "{blob}");
    assert_eq!(blob["range_status"], 206, "{blob}");
    assert_eq!(blob["range"], marker, "{blob}");
    assert_eq!(blob["content_range"], "bytes 0-21/100023", "{blob}");
    let sha = blob["sha"].as_str().expect("a blob address").to_owned();

    let server = server.restart(&env)?;
    let converged = wait_for("both devices to hold the same records", Duration::from_secs(60), || async {
        let ra = api(&a, "GET", &todos, None).await?["body"]["records"].clone();
        let rb = api(&b, "GET", &todos, None).await?["body"]["records"].clone();
        Ok((ra == rb && ra.as_array().is_some_and(|r| r.len() == 3)).then_some(ra))
    })
    .await?;
    let rec = converged.as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).expect("the shared record").clone();
    // Last writer wins on the field: B wrote after A.
    assert_eq!(rec["fields"]["text"], "shared, edited by B");
    assert_eq!(rec["fields"]["votes"], 7, "counter adds from both devices sum");
    let mut tags: Vec<String> = rec["fields"]["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    tags.sort();
    assert_eq!(tags, ["tag-A", "tag-B"], "set adds from both are kept, the removed one is gone");
    // And the pages show it live.
    for dev in [&a, &b] {
        wait_shown(dev, "only in A", Duration::from_secs(10)).await?;
        wait_shown(dev, "only in B", Duration::from_secs(10)).await?;
    }
    wait_online(&a).await?;

    // B never had the blob: it comes from the server, sealed, and opens on B.
    let fetched = b
        .js_async(&format!(
            "const r = await fetch('/_stead/v1/spaces/{space}/blobs/{sha}'); const t = await r.text();\
             return {{status: r.status, len: t.length, head: t.slice(0, 22)}};"
        ))
        .await?;
    assert_eq!(fetched, json!({"status": 200, "len": 100023, "head": marker}), "{fetched}");
    // The server holds only ciphertext: the marker is in none of its files.
    for file in walk(server.dir.path()) {
        let bytes = std::fs::read(&file)?;
        for plain in [marker, "only in A", "shared, edited by B"] {
            assert!(!bytes.windows(plain.len()).any(|w| w == plain.as_bytes()), "{plain:?} in the clear in {}", file.display());
        }
    }
    drop(server);
    a.quit().await?;
    b.quit().await
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// The acknowledged position the store of `space` holds, 0 when none is stored yet: in
/// OPFS, `acked` in its `meta.pack` (`"SMP1" ‖ u32 count ‖ (u32 key length ‖ key ‖ u32
/// value length ‖ value)* ‖ CRC`); in IndexedDB (an engine without OPFS), the `acked`
/// key of the space database's `meta` store (8 bytes, little-endian).
async fn stored_acked(b: &Browser, space: &str) -> Result<u64> {
    if b.engine.lacks(Capability::Opfs).is_some() {
        let r = b
            .js_async(&format!(
                "const db = await new Promise((ok, fail) => {{ const r = indexedDB.open('stead-space-{space}'); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }});                 const v = await new Promise((ok, fail) => {{ const r = db.transaction('meta').objectStore('meta').get('acked'); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }});                 db.close();                 if (v === undefined) return 0;                 const bytes = new Uint8Array(v); return Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));"
            ))
            .await?;
        return r.as_u64().with_context(|| format!("reading the stored acknowledged position: {r}"));
    }
    let r = b
        .js_async(&format!(
            "const root = await navigator.storage.getDirectory();\
             const spaces = await (await root.getDirectoryHandle('stead-data')).getDirectoryHandle('spaces');\
             const store = await (await spaces.getDirectoryHandle('{space}')).getDirectoryHandle('store');\
             let bytes; try {{ bytes = new Uint8Array(await (await (await store.getFileHandle('meta.pack')).getFile()).arrayBuffer()); }} catch (e) {{ return 0; }}\
             const v = new DataView(bytes.buffer); let pos = 8; const count = v.getUint32(4, true);\
             for (let i = 0; i < count; i++) {{\
               const kl = v.getUint32(pos, true); const key = new TextDecoder().decode(bytes.slice(pos + 4, pos + 4 + kl)); pos += 4 + kl;\
               const vl = v.getUint32(pos, true); pos += 4;\
               if (key === 'acked' && vl === 8) return Number(v.getBigUint64(pos, true));\
               pos += vl;\
             }}\
             return 0;"
        ))
        .await?;
    r.as_u64().with_context(|| format!("reading the stored acknowledged position: {r}"))
}

/// Flips a byte near the end of the newest log segment of `space`, from the page.
async fn corrupt_log_tail(b: &Browser, space: &str) -> Result<()> {
    let r = b
        .js_async(&format!(
            "const root = await navigator.storage.getDirectory();\
             const spaces = await (await root.getDirectoryHandle('stead-data')).getDirectoryHandle('spaces');\
             const log = await (await (await spaces.getDirectoryHandle('{space}')).getDirectoryHandle('store')).getDirectoryHandle('log');\
             const names = []; for await (const k of log.keys()) names.push(k); names.sort();\
             const h = await log.getFileHandle(names[names.length - 1]);\
             const bytes = new Uint8Array(await (await h.getFile()).arrayBuffer());\
             bytes[bytes.length - 5] ^= 0xff;\
             const w = await h.createWritable(); await w.write(bytes); await w.close();\
             return bytes.length;"
        ))
        .await?;
    if r.get("error").is_some() {
        bail!("corrupting the log: {r}");
    }
    Ok(())
}

#[tokio::test]
async fn a_corrupted_log_tail_is_cut_on_reopen_and_refilled_from_the_server() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    for t in ["one", "two", "three"] {
        a.add_todo(t).await?;
    }
    let space = space(&a).await?;
    wait_online(&a).await?;
    if a.lacks(Capability::Opfs, "corrupting the OPFS log's last segment") {
        return a.quit().await;
    }

    corrupt_log_tail(&a, &space).await?;
    // The next worker opens the store from disk: the last entry fails its checksum.
    a.stop_workers().await?;
    a.refresh().await?;
    let status = wait_for("the reopened store to report the cut", Duration::from_secs(30), || async {
        let s = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
        Ok(s["body"]["recovered"].as_str().map(str::to_owned))
    })
    .await?;
    assert!(status.contains("checksum mismatch"), "{status}");
    // The lost entry was acknowledged by the server, so it comes back.
    wait_shown(&a, "three", Duration::from_secs(20)).await?;
    assert_eq!(shown(&a).await?, ["one", "two", "three"]);
    wait_online(&a).await?;
    a.quit().await
}

#[tokio::test]
async fn two_tabs_writing_at_once_lose_nothing() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.add_todo("first").await?;
    let space = space(&a).await?;
    let first = a.driver.window().await?;
    let second = a.driver.new_window().await?;
    a.driver.switch_to_window(second.clone()).await?;
    a.driver.goto(&server.url).await?;
    a.wait_app().await?;
    let burst = |tab: &str| {
        format!(
            "window.burst = Promise.all(Array.from({{length: 25}}, (_, i) =>\
               fetch('/_stead/v1/spaces/{space}/collections/todos', {{method: 'POST', headers: {JSON_TYPE},\
                 body: JSON.stringify({{fields: {{text: '{tab} ' + i}}}})}}).then(r => r.status)));"
        )
    };
    // Start a burst in each tab without waiting, then collect both.
    a.js(&burst("second")).await?;
    a.driver.switch_to_window(first.clone()).await?;
    a.js(&burst("first")).await?;
    let mut statuses = a.js_async("return await window.burst;").await?.as_array().cloned().unwrap_or_default();
    a.driver.switch_to_window(second).await?;
    statuses.extend(a.js_async("return await window.burst;").await?.as_array().cloned().unwrap_or_default());
    assert_eq!(statuses.len(), 50);
    assert!(statuses.iter().all(|s| s == 201), "every write is accepted: {statuses:?}");

    let records = api(&a, "GET", &format!("spaces/{space}/collections/todos?limit=1000"), None).await?;
    assert_eq!(records["body"]["records"].as_array().map(Vec::len), Some(51));
    // The other tab shows them live.
    a.driver.switch_to_window(first).await?;
    wait_for("the first tab to show all 51", Duration::from_secs(10), || async { Ok((shown(&a).await?.len() == 51).then_some(())) }).await?;
    a.quit().await
}

/// `stead_entries_stored_total` from the server's `/metrics` (loopback may read it).
async fn entries_stored(server: &Server) -> Result<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", server.port)).await?.error_for_status()?.text().await?;
    let line = text.lines().find_map(|l| l.strip_prefix("stead_entries_stored_total ")).context("no stead_entries_stored_total in /metrics")?;
    Ok(line.trim().parse()?)
}

#[tokio::test]
async fn a_worker_stopped_in_the_middle_of_a_sync_resumes_and_converges() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    // Both browsers reach the server through a proxy that can slow A's uploads down, so
    // the sync below takes seconds and the worker can be stopped in the middle of it.
    let link = Throttle::start(server.port).await?;
    let (a, b, space) = pair(&env, &link.url).await?;
    let mut server = server;
    server.kill();
    let todos = format!("spaces/{space}/collections/todos");
    // 60 entries of ~45 KB (random, so nothing compresses them away): a frame carries at
    // most 1 MiB, so they go up in several frames, each committed on its own.
    let written = a
        .js_async(&format!(
            "for (let i = 0; i < 60; i++) {{\
               const bytes = crypto.getRandomValues(new Uint8Array(45000));\
               const text = 'offline ' + i + ' ' + btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(''));\
               const r = await fetch('/_stead/v1/{todos}', {{method: 'POST', headers: {JSON_TYPE}, body: JSON.stringify({{fields: {{text}}}})}});\
               if (r.status !== 201) return r.status;\
             }} return 201;"
        ))
        .await?;
    assert_eq!(written, json!(201), "every offline write is stored: {written}");
    let server = server.restart(&env)?;
    assert_eq!(entries_stored(&server).await?, 0, "the restarted server counts from zero");
    // WebKit stops a worker only 10 s after its page left (see `stop_workers`): slower
    // there, so the stop still lands in the middle (2.7 MB at 50 KB/s is about 54 s).
    link.set_rate(if a.engine == Engine::WebKit { 50_000 } else { 400_000 });
    // Nudge A's worker to reconnect, and stop it once the server has committed part of
    // what it sends.
    a.js("navigator.serviceWorker.controller.postMessage({type: 'heartbeat'})").await?;
    wait_for("the server to commit A's first entries", Duration::from_secs(30), || async {
        Ok((entries_stored(&server).await? > 0).then_some(()))
    })
    .await?;
    a.stop_workers().await?;
    let at_stop = entries_stored(&server).await?;
    assert!((1..60).contains(&at_stop), "the worker was stopped in the middle of the sync: the server held {at_stop} of 60");
    link.set_rate(0);
    // The next event wakes a new worker, which resumes from the version vectors.
    a.js("navigator.serviceWorker.controller && navigator.serviceWorker.controller.postMessage({type: 'heartbeat'})").await?;
    wait_for("B to receive all 60 of A's offline writes", Duration::from_secs(60), || async {
        let n = api(&b, "GET", &format!("{todos}?limit=1000"), None).await?["body"]["records"].as_array().map_or(0, Vec::len);
        Ok((n == 60).then_some(()))
    })
    .await?;
    wait_online(&a).await?;
    let total = entries_stored(&server).await?;
    assert!(total >= 60, "the server committed the rest after the stop: {total}");
    drop(server);
    a.quit().await?;
    b.quit().await
}

#[tokio::test]
async fn a_full_disk_refuses_the_write_clearly_and_keeps_what_was_stored() -> Result<()> {
    let env = Env::get()?;
    if env.skips(Capability::QuotaOverride, "the whole test (it fills the disk by lowering the origin's quota)") {
        return Ok(());
    }
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.add_todo("kept").await?;
    let space = space(&a).await?;
    let todos = format!("spaces/{space}/collections/todos");
    let status = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    let usage = status["body"]["storage"]["usage"].as_f64().expect("status carries storage.estimate()");

    // The origin's quota drops to just above what it uses: the next big write cannot fit.
    let origin = server.url.trim_end_matches('/').to_owned();
    a.cdp("Storage.overrideQuotaForOrigin", json!({"origin": origin, "quotaSize": usage + 4096.0})).await?;
    let big = a
        .js_async(&format!(
            "const chunk = Array.from({{length: 300000}}, () => (Math.random() * 36 | 0).toString(36)).join('');\
             const r = await fetch('/_stead/v1/{todos}', {{method: 'POST', headers: {JSON_TYPE}, body: JSON.stringify({{fields: {{text: chunk}}}})}});\
             return {{status: r.status, type: r.headers.get('content-type'), body: await r.json()}};"
        ))
        .await?;
    assert_eq!(big["status"], 507, "{big}");
    assert_eq!(big["type"], "application/problem+json");
    assert!(big["body"]["detail"].as_str().unwrap_or_default().contains("QuotaExceededError"), "{big}");
    let status = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(status["body"]["last_error"].as_str().unwrap_or_default().contains("write failed"), "{status}");

    // What was stored before is all there, in this worker and in the next one.
    a.cdp("Storage.overrideQuotaForOrigin", json!({"origin": origin})).await?;
    a.stop_workers().await?;
    a.refresh().await?;
    a.add_todo("after the disk had room again").await?;
    assert_eq!(shown(&a).await?, ["kept", "after the disk had room again"]);
    a.quit().await
}

#[tokio::test]
async fn a_space_kept_in_indexeddb_survives_a_worker_restart_and_syncs() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.wait_app().await?;
    space(&a).await?;
    let made = api(&a, "POST", "spaces", Some(json!({"storage": "indexeddb"}))).await?;
    assert_eq!(made["status"], 201, "{made}");
    let idb_space = made["body"]["space"].as_str().expect("a space").to_owned();
    let notes = format!("spaces/{idb_space}/collections/notes");
    for i in 0..5 {
        api(&a, "POST", &notes, Some(json!({"fields": {"n": i}}))).await?;
    }
    let opfs_has_it = if a.lacks(Capability::Opfs, "looking for the IndexedDB space in OPFS") {
        json!(false)
    } else {
        a.js_async(&format!(
            "const root = await navigator.storage.getDirectory();\
             try {{ await (await (await root.getDirectoryHandle('stead-data')).getDirectoryHandle('spaces')).getDirectoryHandle('{idb_space}'); return true; }}\
             catch (e) {{ return false; }}"
        ))
        .await?
    };
    assert_eq!(opfs_has_it, json!(false), "the space's log is not in OPFS");
    a.stop_workers().await?;
    let records = api(&a, "GET", &notes, None).await?;
    let ns: Vec<i64> = records["body"]["records"].as_array().unwrap().iter().map(|r| r["fields"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 2, 3, 4]);
    // The worker's status shows where the data engine's load in this life went.
    let profile = a.status().await?["start_profile"].clone();
    let steps: Vec<Option<f64>> = ["data_found", "data_read", "data_compiled", "data_started"].iter().map(|k| profile[*k].as_f64()).collect();
    assert!(steps.iter().all(Option::is_some) && steps.windows(2).all(|w| w[0] <= w[1]), "the data engine's load steps, in order: {profile}");
    wait_for("the IndexedDB space to be synced", Duration::from_secs(30), || async {
        let s = api(&a, "GET", &format!("spaces/{idb_space}/status"), None).await?;
        Ok((s["body"]["state"] == "online" && s["body"]["pending"] == 0).then_some(()))
    })
    .await?;
    a.quit().await
}

#[tokio::test]
async fn synced_writes_are_not_pending_again_after_the_worker_wakes_offline() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.wait_app().await?;
    let space = space(&a).await?;

    // The API says which version it speaks and lists its routes.
    let index = api(&a, "GET", "", None).await?;
    assert_eq!(index["status"], 200, "{index}");
    assert_eq!(index["body"]["version"], 1, "{index}");
    let routes: Vec<String> = index["body"]["routes"].as_array().expect("routes").iter().map(|r| format!("{} {}", r["method"].as_str().unwrap(), r["path"].as_str().unwrap())).collect();
    assert!(routes.contains(&"GET /_stead/v1/spaces/{space}/status".to_owned()), "{routes:?}");

    let todos = format!("spaces/{space}/collections/todos");
    for i in 0..3 {
        let made = api(&a, "POST", &todos, Some(json!({"fields": {"text": format!("synced {i}")}}))).await?;
        assert_eq!(made["status"], 201, "{made}");
    }
    wait_online(&a).await?;
    let s = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    let entries = s["body"]["entries"].as_u64().unwrap_or(0);
    assert!(entries >= 3 && s["body"]["replicas"] == 1, "{s}");
    // A browser stops a worker once it has been idle a while; Firefox's terminateWorker()
    // can land within the milliseconds between the server's ack (status says 0 pending at
    // once) and the flush that stores it. Wait for the store, as an idle stop would.
    wait_for("the acknowledged position to be stored", Duration::from_secs(10), || async {
        Ok((stored_acked(&a, &space).await? >= entries).then_some(()))
    })
    .await?;
    server.kill();
    a.stop_workers().await?;
    // The worker wakes with no server to ask: what it knew was acknowledged stays so.
    let s = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    assert_eq!(s["body"]["state"], "offline", "{s}");
    assert_eq!(s["body"]["pending"], 0, "synced writes counted as pending after an offline wake: {s}");
    let made = api(&a, "POST", &todos, Some(json!({"fields": {"text": "offline"}}))).await?;
    assert_eq!(made["status"], 201, "{made}");
    let s = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    assert_eq!(s["body"]["pending"], 1, "the write made offline is pending: {s}");

    let _server = server.restart(&env)?;
    wait_online(&a).await?;
    a.quit().await
}

/// Issue 15: a space past its snapshot wakes from the snapshot and the log's tail. What
/// the worker left on disk is still there when needed: entries written offline and folded
/// into a snapshot before the server saw them still go up, and a record's history and undo,
/// which read old entries, still answer.
#[tokio::test]
async fn a_space_past_its_snapshot_wakes_from_the_tail_and_still_sends_and_reads_old_entries() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.wait_app().await?;
    let space = space(&a).await?;
    let todos = format!("spaces/{space}/collections/todos");
    let made = api(&a, "POST", &todos, Some(json!({"fields": {"text": "first"}}))).await?;
    assert_eq!(made["status"], 201, "{made}");
    let id = made["body"]["id"].as_str().expect("an id").to_owned();
    let edited = api(&a, "PATCH", &format!("{todos}/{id}"), Some(json!({"fields": {"text": "second"}}))).await?;
    assert_eq!(edited["status"], 200, "{edited}");
    wait_online(&a).await?;

    // Offline, enough entries for a snapshot: it covers entries the server never acknowledged.
    server.kill();
    let records: Vec<Value> = (0..1_200).map(|i| json!({"fields": {"text": format!("offline {i}")}})).collect();
    let bulk = api(&a, "POST", &todos, Some(json!({"records": records, "entries": "each"}))).await?;
    assert_eq!(bulk["status"], 201, "{}", bulk.to_string().chars().take(300).collect::<String>());
    wait_for("the snapshot after the offline writes", Duration::from_secs(60), || async {
        let s = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
        Ok((s["body"]["snapshot_entries"].as_u64() >= Some(1_202)).then_some(()))
    })
    .await?;
    a.stop_workers().await?;

    // The woken worker opened from the tail: the old entries are read when asked for.
    let s = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    assert_eq!(s["body"]["pending"], 1_200, "{s}");
    let history = api(&a, "GET", &format!("{todos}/{id}/history"), None).await?;
    assert_eq!(history["status"], 200, "{history}");
    assert_eq!(history["body"]["history"].as_array().map(Vec::len), Some(2), "the create and the edit: {history}");
    let undone = api(&a, "POST", &format!("spaces/{space}/undo"), Some(json!({}))).await?;
    assert_eq!((undone["status"].clone(), undone["body"]["undone"].clone()), (json!(200), json!(true)), "{undone}");
    // Those reads and the undo's write are done: nothing holds the log any more.
    let s = api(&a, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(s["body"].get("store").is_some_and(Value::is_null), "{s}");

    // Back online, every unacknowledged entry reaches the server, from before the snapshot too.
    let _server = server.restart(&env)?;
    wait_online(&a).await?;
    a.quit().await
}

/// Stores `body` (JS expression) as a blob of the space with this content type; returns
/// its address.
async fn put_blob(b: &Browser, space: &str, mime: &str, body: &str) -> Result<String> {
    let r = b
        .js_async(&format!(
            "const r = await fetch('/_stead/v1/spaces/{space}/blobs', {{method: 'POST', headers: {{'content-type': '{mime}'}}, body: {body}}});\
             return await r.json();"
        ))
        .await
        .with_context(|| format!("storing a {mime} blob"))?;
    r["sha256"].as_str().map(str::to_owned).ok_or_else(|| anyhow::anyhow!("storing a {mime} blob: {r}"))
}

/// The status and the headers that decide how a browser treats a blob, fetched from the page.
async fn blob_headers(b: &Browser, url: &str) -> Result<Value> {
    b.js_async(&format!(
        "const r = await fetch('{url}'); const h = (n) => r.headers.get(n);\
         return {{status: r.status, type: h('content-type'), nosniff: h('x-content-type-options'),\
           csp: h('content-security-policy'), disposition: h('content-disposition')}};"
    ))
    .await
    .with_context(|| format!("fetching {url}"))
}

#[tokio::test]
async fn a_members_html_or_svg_blob_never_runs_as_the_app() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.wait_app().await?;
    let space = space(&a).await?;
    // What a hostile co-member could put in the space: documents whose scripts leave a
    // mark in the app's storage if they ever run as the app's origin.
    let html = put_blob(&a, &space, "text/html", "\"<script>localStorage.setItem('xss html ' + location.search, 1)</script>\"").await?;
    let svg = put_blob(
        &a,
        &space,
        "image/svg+xml",
        "\"<svg xmlns='http://www.w3.org/2000/svg'><script>localStorage.setItem('xss svg ' + location.search, 1)</script></svg>\"",
    )
    .await?;
    let png = put_blob(
        &a,
        &space,
        "image/png",
        "Uint8Array.from(atob('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='), (c) => c.charCodeAt(0))",
    )
    .await?;
    let url = |sha: &str, mime: &str| format!("/_stead/v1/spaces/{space}/blobs/{sha}?mime={mime}");

    // Opened in a frame and in a new window, as a link in the app would open them.
    if !a.lacks(Capability::OpenDownloadFromScript, "opening the blobs (downloads) in frames and windows; their headers are checked below") {
        let opened = a
            .js_async(&format!(
                "for (const u of ['{}', '{}', '{}']) {{\
                   const f = document.createElement('iframe'); f.src = u; document.body.append(f);\
                   window.open(u, '_blank');\
                 }}\
                 await new Promise((ok) => setTimeout(ok, 3000));\
                 return Object.keys(localStorage).filter((k) => k.startsWith('xss'));",
                url(&html, "text/html"),
                url(&svg, "image/svg%2Bxml"),
                url(&svg, "text/html"),
            ))
            .await
            .context("opening the blobs")?;
        assert_eq!(opened, json!([]), "a blob's script ran as the app");
    }

    // The headers that make it so, whatever type the URL asks for.
    let csp = "sandbox; default-src 'none'; style-src 'unsafe-inline'";
    for (sha, asked, served) in [
        (&html, "text/html", "text/html"),
        (&html, "TEXT/HTML;charset=utf-8", "text/html; charset=utf-8"),
        (&svg, "image/svg%2Bxml", "image/svg+xml"),
        (&html, "application/xhtml%2Bxml", "application/xhtml+xml"),
        (&html, "text/html%0D%0Ax-injected:%201", "application/octet-stream"),
        (&html, "", "application/octet-stream"),
    ] {
        let h = blob_headers(&a, &url(sha, asked)).await?;
        assert_eq!(
            h,
            json!({"status": 200, "type": served, "nosniff": "nosniff", "csp": csp, "disposition": "attachment"}),
            "?mime={asked}"
        );
    }
    let h = blob_headers(&a, &url(&png, "image/png")).await?;
    assert_eq!(h, json!({"status": 200, "type": "image/png", "nosniff": "nosniff", "csp": csp, "disposition": null}));

    // An allow-listed image still shows in the tab that opens it.
    a.driver.goto(&format!("{}{}", server.url.trim_end_matches('/'), url(&png, "image/png"))).await?;
    let shown = wait_for("the image to show", Duration::from_secs(30), || async {
        let v = a.js("const i = document.images[0]; return [document.contentType, i ? i.naturalWidth : 0];").await?;
        Ok((v[1] == 1).then_some(v))
    })
    .await?;
    assert_eq!(shown, json!(["image/png", 1]));
    a.quit().await
}

/// Serves `html` at every path of another origin (127.0.0.1, where the app is on
/// localhost): a hostile site the person happens to visit. Stops when the handle drops.
async fn hostile_site(html: String) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}/", listener.local_addr()?.port());
    let app = axum::Router::new().fallback(move || std::future::ready(axum::response::Html(html.clone())));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// The text of the page a tab shows once it has navigated to a URL starting with `prefix`.
async fn page_text_at(b: &Browser, prefix: &str) -> Result<String> {
    wait_for(&format!("the tab to show {prefix}"), Duration::from_secs(20), || async {
        if !b.driver.current_url().await?.as_str().starts_with(prefix) {
            return Ok(None);
        }
        let text = b.js("return document.body ? document.body.innerText : ''").await?;
        Ok(text.as_str().filter(|t| !t.is_empty()).map(str::to_owned))
    })
    .await
}

/// Whether a page showing a JSON problem shows this status and `detail` text. Chromium
/// shows the JSON as it came; Firefox's JSON viewer shows a table (`status\t403`): both
/// read the same without quotes, colons and white space.
fn is_problem(shown: &str, status: u16, detail: &str) -> bool {
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace() && *c != '"' && *c != ':').collect::<String>();
    let shown = squeeze(shown);
    shown.contains(&format!("status{status}")) && shown.contains(&squeeze(detail))
}

#[tokio::test]
async fn a_cross_site_form_cannot_write_and_the_page_api_takes_only_json() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.add_todo("mine").await?;
    let space = space(&a).await?;
    let todos = format!("{}_stead/v1/spaces/{space}/collections/todos", server.url);
    let texts = || async {
        let r = api(&a, "GET", &format!("spaces/{space}/collections/todos"), None).await?;
        let mut out: Vec<String> = r["body"]["records"].as_array().into_iter().flatten().filter_map(|r| r["fields"]["text"].as_str().map(str::to_owned)).collect();
        out.sort();
        anyhow::Ok(out)
    };

    // A site the person visits posts a form to the app: a `text/plain` body is the one
    // way a form can carry JSON (`name=value`, the `=` hidden in a string). The app's
    // worker gets it as a navigation of that tab.
    let (evil, _site) = hostile_site(format!(
        "<form method='POST' enctype='text/plain' action='{todos}'>\
           <input name='{{\"fields\": {{\"text\": \"forged' value='\"}}}}'></form>\
         <script>document.forms[0].submit()</script>"
    ))
    .await?;
    let home = a.driver.window().await?;
    let tab = a.driver.new_window().await?;
    a.driver.switch_to_window(tab).await?;
    a.driver.goto(&evil).await?;
    let answer = page_text_at(&a, &todos).await?;
    // Chromium shows the worker the form's `Origin`; Firefox does not on a navigation, so
    // there the navigation rule refuses it.
    // WebKit is held to either rule.
    let refused = match a.engine {
        Engine::Chromium => is_problem(&answer, 403, evil.trim_end_matches('/')),
        Engine::Firefox => is_problem(&answer, 403, "not navigations"),
        Engine::WebKit => is_problem(&answer, 403, evil.trim_end_matches('/')) || is_problem(&answer, 403, "not navigations"),
    };
    assert!(refused, "the forged write is refused: {answer}");
    // A plain navigation to a data route (a link, the address bar) is refused too.
    a.driver.goto(&format!("{}_stead/v1/spaces", server.url)).await?;
    let answer = page_text_at(&a, &format!("{}_stead/v1/spaces", server.url)).await?;
    if a.engine == Engine::WebKit && !is_problem(&answer, 403, "not navigations") {
        // WebKit sent this navigation past the worker, to the server, which has no page
        // API and answers with the app's page: no data either way.
        let controlled = a.js("return !!navigator.serviceWorker.controller").await?;
        assert_eq!(controlled, json!(false), "served by the worker, yet not refused: {answer}");
        assert!(!answer.contains("\"spaces\""), "a navigation is not a page API call: {answer}");
    } else {
        assert!(is_problem(&answer, 403, "not navigations"), "a navigation is not a page API call: {answer}");
    }
    a.driver.switch_to_window(home).await?;
    assert_eq!(texts().await?, ["mine"], "nothing was written");

    // From the app's own page, a body must be declared JSON.
    let plain = a
        .js_async(&format!(
            "const r = await fetch('{todos}', {{method: 'POST', body: JSON.stringify({{fields: {{text: 'as text/plain'}}}})}});\
             return {{status: r.status, type: r.headers.get('content-type'), body: await r.json()}};"
        ))
        .await?;
    assert_eq!(plain["status"], 415, "{plain}");
    assert_eq!(plain["type"], "application/problem+json", "{plain}");
    assert!(plain["body"]["detail"].as_str().unwrap_or_default().contains("application/json"), "{plain}");
    let json = api(&a, "POST", &format!("spaces/{space}/collections/todos"), Some(json!({"fields": {"text": "as json"}}))).await?;
    assert_eq!(json["status"], 201, "{json}");
    assert_eq!(texts().await?, ["as json", "mine"]);
    a.quit().await
}

/// Page script that opens the worker's IndexedDB `stead` and defines helpers on its
/// sealed space records: `get`/`put` of a store, the device key, and `seal`/`open` as the
/// worker does them (`ad` is the record's associated data, `null` for the old form).
const SEALED: &str = "const db = await new Promise((ok, err) => { const r = indexedDB.open('stead'); r.onsuccess = () => ok(r.result); r.onerror = err; });\
     const req = (r) => new Promise((ok, err) => { r.onsuccess = () => ok(r.result); r.onerror = () => err(r.error); });\
     const get = (store, k) => req(db.transaction(store).objectStore(store).get(k));\
     const put = (store, k, v) => req(db.transaction(store, 'readwrite').objectStore(store).put(v, k));\
     const key = await get('keys', 'device');\
     const ad = (space) => new Uint8Array([...new TextEncoder().encode('stead-space-record-v1\\0'), ...space.replace(/-/g, '').match(/../g).map((h) => parseInt(h, 16))]);\
     const params = (iv, ad) => ad ? {name: 'AES-GCM', iv, additionalData: ad} : {name: 'AES-GCM', iv};\
     const open = async (rec, ad) => new Uint8Array(await crypto.subtle.decrypt(params(rec.slice(0, 12), ad), key, rec.slice(12)));\
     const seal = async (plain, ad) => { const iv = crypto.getRandomValues(new Uint8Array(12)); return new Uint8Array([...iv, ...new Uint8Array(await crypto.subtle.encrypt(params(iv, ad), key, plain))]); };";

#[tokio::test]
async fn a_sealed_space_record_opens_only_in_its_own_slot() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.wait_app().await?;
    let x = space(&a).await?;
    let made = api(&a, "POST", "spaces", Some(json!({}))).await?;
    let y = made["body"]["space"].as_str().expect("a space").to_owned();
    let status = |space: &str| format!("spaces/{space}/status");
    let refused = async |space: &str, why: &str| -> Result<()> {
        a.stop_workers().await?;
        let s = api(&a, "GET", &status(space), None).await?;
        assert_eq!(s["status"], 500, "space {space} opened with another record: {s}");
        let detail = s["body"]["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("space {space}: its sealed record {why}")), "{s}");
        Ok(())
    };
    let swap = format!("{SEALED} const [rx, ry] = [await get('spaces', '{x}'), await get('spaces', '{y}')]; await put('spaces', '{x}', ry); await put('spaces', '{y}', rx); return 1;");

    // Records swapped between two spaces' slots: neither opens as the other.
    a.js_async(&swap).await?;
    refused(&x, "does not open").await?;
    refused(&y, "does not open").await?;
    a.js_async(&swap).await?;
    a.stop_workers().await?;
    for s in [&x, &y] {
        assert_eq!(api(&a, "GET", &status(s), None).await?["status"], 200, "space {s} after the swap back");
    }

    // A record sealed by the worker before the binding (no associated data) opens, and is
    // sealed again bound to its space.
    let unbind = |space: &str, into: &str| {
        format!("{SEALED} const plain = await open(await get('spaces', '{space}'), ad('{space}')); await put('spaces', '{into}', await seal(plain, null)); return 1;")
    };
    a.js_async(&unbind(&x, &x)).await?;
    a.stop_workers().await?;
    assert_eq!(api(&a, "GET", &status(&x), None).await?["status"], 200, "an old record opens");
    let bound = a
        .js_async(&format!("{SEALED} const rec = await get('spaces', '{x}'); await open(rec, ad('{x}')); return 'bound';"))
        .await?;
    assert_eq!(bound, json!("bound"), "the old record is sealed again, bound to its space");
    // An old-form record moved into another slot opens, but names its own space.
    a.js_async(&unbind(&y, &x)).await?;
    refused(&x, &format!("is space {y}'s")).await?;
    a.quit().await
}

#[tokio::test]
async fn an_owner_lists_and_removes_a_device_and_the_removed_one_stops_getting_edits() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let (a, b, space) = pair(&env, &server.url).await?;
    a.add_todo("before").await?;
    wait_shown(&b, "before", Duration::from_secs(5)).await?;

    let listed = api(&a, "GET", &format!("spaces/{space}/members"), None).await?;
    let members = listed["body"]["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 2, "A and B, which joined with its own keys: {listed}");
    let b_replica = api(&b, "GET", &format!("spaces/{space}/members"), None).await?["body"]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["me"] == true).cloned())
        .ok_or_else(|| anyhow::anyhow!("B does not know itself"))?["replica"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(members.iter().any(|m| m["replica"] == b_replica.as_str() && m["role"] == "writer" && m["active"] == true), "{listed}");

    let removed = api(&a, "DELETE", &format!("spaces/{space}/members/{b_replica}"), None).await?;
    assert_eq!(removed["status"], 200, "{removed}");
    let listed = api(&a, "GET", &format!("spaces/{space}/members"), None).await?;
    assert!(listed["body"]["members"].as_array().is_some_and(|m| m.iter().any(|m| m["replica"] == b_replica.as_str() && m["active"] == false)), "{listed}");
    a.add_todo("after the removal").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!shown(&b).await?.contains(&"after the removal".to_owned()), "the removed device still received an edit");
    a.quit().await?;
    b.quit().await
}

#[tokio::test]
async fn an_entry_dated_a_year_ahead_is_refused_without_freezing_sync() -> Result<()> {
    let env = Env::get()?;
    // A server that takes entries a year ahead, as an older one would.
    let server = Server::start_with(&env, &env.dist, 0, &["--max-clock-drift-ms", "315360000000"])?;
    let b = Browser::open(&env, &server.url).await?;
    b.wait_app().await?;
    let space = space(&b).await?;
    wait_online(&b).await?;
    b.js(
        "window.rejections = []; window.steadEvents = new BroadcastChannel('stead');\
         window.steadEvents.onmessage = (e) => { if (e.data.type === 'rejected') window.rejections.push(e.data); };",
    )
    .await?;
    // Two native members, invited by the browser: one whose clock is a year ahead, and
    // one that writes normal records (an owner: it invites a device itself below).
    let ahead_code = invite_code(&b, &space).await?;
    let writer_code = invite_code_as(&b, &space, json!({"role": "owner"})).await?;
    let mut ahead = NativeDevice::join(server.port, &ahead_code, 1).await?;
    let mut writer = NativeDevice::join(server.port, &writer_code, 2).await?;
    let year = 365 * 24 * 3600 * 1000;
    ahead.set("todos", RecordId([9; 16]), "text", V::Str("from the future".into()), native::now_ms() + year)?;
    ahead.push().await?;
    let connects = |s: &Value| s["body"]["connects"].as_u64().unwrap_or(0);
    let status = wait_for("the browser to report the refused entry", Duration::from_secs(10), || async {
        let s = api(&b, "GET", &format!("spaces/{space}/status"), None).await?;
        Ok(s["body"]["rejected"].is_string().then_some(s))
    })
    .await?;
    assert!(status["body"]["rejected"].as_str().unwrap_or_default().contains("clock drift"), "{status}");
    let before = connects(&status);

    // The other member's records still arrive, live.
    for i in 0..5u8 {
        writer.set("todos", RecordId([i + 1; 16]), "text", V::Str(format!("now {i}")), native::now_ms())?;
    }
    writer.push().await?;
    wait_shown(&b, "now 4", Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = api(&b, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(connects(&status) <= before + 1, "the worker reconnected {} times: {status}", connects(&status) - before);
    let heard = b.js("return window.rejections").await?;
    assert!(heard.as_array().is_some_and(|h| !h.is_empty() && h[0]["reason"].as_str().unwrap_or_default().contains("clock drift")), "{heard}");
    assert!(!shown(&b).await?.iter().any(|t| t == "from the future"));

    // A member added since the worker took its membership log: its first entry is
    // refused as from an unknown replica, and one reconnect with a fresh log takes it in.
    let status = api(&b, "GET", &format!("spaces/{space}/status"), None).await?;
    let before = connects(&status);
    let mut newcomer = writer.invite(3).await?;
    newcomer.set("todos", RecordId([8; 16]), "text", V::Str("from a newcomer".into()), native::now_ms())?;
    newcomer.push().await?;
    wait_shown(&b, "from a newcomer", Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = api(&b, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(connects(&status) <= before + 1, "the worker reconnected {} times: {status}", connects(&status) - before);

    // A new worker meets the refused entry again on its first connection (before the
    // writer's, in the server's order), and still takes in what the writer adds.
    b.stop_workers().await?;
    b.refresh().await?;
    b.wait_app().await?;
    writer.set("todos", RecordId([7; 16]), "text", V::Str("after the restart".into()), native::now_ms())?;
    writer.push().await?;
    wait_shown(&b, "after the restart", Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = api(&b, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(connects(&status) <= 2, "the new worker reconnected {} times: {status}", connects(&status));
    assert!(status["body"]["rejected"].as_str().unwrap_or_default().contains("clock drift"), "{status}");
    assert!(!shown(&b).await?.iter().any(|t| t == "from the future"));
    b.quit().await
}

async fn invite_code(b: &Browser, space: &str) -> Result<String> {
    invite_code_as(b, space, json!({})).await
}

/// An invite code made with `terms` (`{"role"?, "expires_in_days"?}`).
async fn invite_code_as(b: &Browser, space: &str, terms: Value) -> Result<String> {
    let r = api(b, "POST", &format!("spaces/{space}/invites"), Some(terms)).await?;
    Ok(r["body"]["invite"].as_str().with_context(|| format!("an invite code: {r}"))?.to_owned())
}

#[tokio::test]
async fn two_devices_inviting_offline_settle_their_membership_logs_and_sync_on() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    // B joins as an owner: only owners invite.
    let (a, b, space) = pair_as(&env, &server.url, Some("owner")).await?;
    let todos = format!("spaces/{space}/collections/todos");

    // Offline, each device invites one more: each appends an invite to its own copy of
    // the membership log, and whichever publishes second gets a 409 from the server.
    let mut server = server;
    server.kill();
    let (code_a, code_b) = (invite_code(&a, &space).await?, invite_code(&b, &space).await?);
    let server = server.restart(&env)?;
    for dev in [&a, &b] {
        dev.js("navigator.serviceWorker.controller.postMessage({type: 'heartbeat'})").await?;
    }
    wait_online(&a).await?;
    wait_online(&b).await?;
    // Both invites hold: the server lists both, each joined with the space key.
    let c = NativeDevice::join(server.port, &code_a, 1).await?;
    let d = NativeDevice::join(server.port, &code_b, 2).await?;
    let (ce, de) = (c.replica.members().events(), d.replica.members().events());
    assert_eq!(ce.len(), 6, "genesis, B's invite and join, the two offline invites, C's join");
    assert_eq!((de.len(), &de[..6]), (7, ce), "D's join follows C's");
    api(&a, "POST", &todos, Some(json!({"fields": {"text": "from A after the merge"}}))).await?;
    api(&b, "POST", &todos, Some(json!({"fields": {"text": "from B after the merge"}}))).await?;
    wait_shown(&a, "from B after the merge", Duration::from_secs(10)).await?;
    wait_shown(&b, "from A after the merge", Duration::from_secs(10)).await?;

    // A invites while B is connected, so B's copy falls behind the server's; B's next
    // worker publishes its shorter copy first (a 409 too), and must still sync.
    invite_code(&a, &space).await?;
    b.stop_workers().await?;
    b.refresh().await?;
    b.wait_app().await?;
    api(&a, "POST", &todos, Some(json!({"fields": {"text": "from A after B's restart"}}))).await?;
    wait_shown(&b, "from A after B's restart", Duration::from_secs(10)).await?;
    wait_online(&b).await?;
    let status = api(&b, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(status["body"]["members_dropped"].is_null(), "{status}");
    drop(server);
    a.quit().await?;
    b.quit().await
}

/// This device's replica id in `space`, from the page API.
async fn my_replica(b: &Browser, space: &str) -> Result<String> {
    let listed = api(b, "GET", &format!("spaces/{space}/members"), None).await?;
    let me = listed["body"]["members"].as_array().and_then(|m| m.iter().find(|m| m["me"] == true).cloned());
    Ok(me.with_context(|| format!("the device does not know itself: {listed}"))?["replica"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn an_invite_code_adds_one_device_with_the_role_it_names_and_is_refused_after() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::open(&env, &server.url).await?;
    a.wait_app().await?;
    let space = space(&a).await?;
    wait_online(&a).await?;

    let made = api(&a, "POST", &format!("spaces/{space}/invites"), Some(json!({"role": "reader", "expires_in_days": 1}))).await?;
    assert_eq!(made["status"], 201, "{made}");
    assert_eq!((&made["body"]["role"], &made["body"]["published"]), (&json!("reader"), &json!(true)), "{made}");
    let day = 24 * 3600 * 1000;
    let expires = made["body"]["expires"].as_u64().unwrap_or_default();
    assert!(expires.abs_diff(native::now_ms() + day) < 60_000, "expires in a day: {made}");
    let code = made["body"]["invite"].as_str().context("a code")?.to_owned();
    let (code_space, secret) = code.split_once('.').context("<space>.<secret>")?;
    assert_eq!((code_space, secret.len()), (space.as_str(), 64), "the code names the space and a 32-byte secret, no device: {code}");
    let defaults = api(&a, "POST", &format!("spaces/{space}/invites"), None).await?;
    assert_eq!(defaults["body"]["role"], "writer", "an invite grants writing by default: {defaults}");
    let week = defaults["body"]["expires"].as_u64().unwrap_or_default();
    assert!(week.abs_diff(native::now_ms() + 7 * day) < 60_000, "for 7 days by default: {defaults}");
    let bad = api(&a, "POST", &format!("spaces/{space}/invites"), Some(json!({"role": "admin"}))).await?;
    assert_eq!(bad["status"], 400, "{bad}");

    // B opens the link: the worker makes B's own keys and joins as a reader.
    let b = Browser::start(&env).await?;
    b.driver.goto(&format!("{}#join={code}", server.url)).await?;
    b.wait_app().await?;
    assert_eq!(self::space(&b).await?, space, "B joined A's space");
    wait_online(&b).await?;
    let b_replica = my_replica(&b, &space).await?;
    b.quit().await?;

    // C, another browser profile, gets the same code: refused, clearly.
    let c = Browser::open(&env, &server.url).await?;
    c.wait_app().await?;
    // Once the app has its own space, the worker answers the page.
    self::space(&c).await?;
    let again = api(&c, "POST", "join", Some(json!({"invite": code}))).await?;
    assert_eq!(again["status"], 410, "{again}");
    assert!(again["body"]["detail"].as_str().unwrap_or_default().contains("used already, cancelled or has expired"), "{again}");
    let spaces = api(&c, "GET", "spaces", None).await?;
    assert!(!spaces["body"]["spaces"].as_array().is_some_and(|s| s.contains(&json!(space))), "C holds no copy of the space: {spaces}");
    // A code of the old kind (a device the inviter made) is refused as such.
    let old = format!("{space}.{}.{}.{}", b_replica, "11".repeat(32), "22".repeat(32));
    let old = api(&c, "POST", "join", Some(json!({"invite": old}))).await?;
    assert_eq!(old["status"], 400, "{old}");
    assert!(old["body"]["detail"].as_str().unwrap_or_default().contains("older kind"), "{old}");

    // A lists B with the role the code gave, and the code as used by B.
    let listed = api(&a, "GET", &format!("spaces/{space}/members"), None).await?;
    let members = listed["body"]["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 2, "A and B only: {listed}");
    assert!(members.iter().any(|m| m["replica"] == b_replica.as_str() && m["role"] == "reader" && m["active"] == true), "{listed}");
    let invites = api(&a, "GET", &format!("spaces/{space}/invites"), None).await?;
    let list = invites["body"]["invites"].as_array().cloned().unwrap_or_default();
    assert!(list.iter().any(|i| i["state"] == "used" && i["used_by"] == b_replica.as_str() && i["role"] == "reader"), "{invites}");

    // A cancels the other invite: its code no longer joins.
    let pending = list.iter().find(|i| i["state"] == "pending").context("the default invite is pending")?;
    let key = pending["key"].as_str().unwrap_or_default();
    let revoked = api(&a, "DELETE", &format!("spaces/{space}/invites/{key}"), None).await?;
    assert_eq!(revoked["status"], 200, "{revoked}");
    let cancelled = api(&c, "POST", "join", Some(json!({"invite": defaults["body"]["invite"]}))).await?;
    assert_eq!(cancelled["status"], 410, "a cancelled invite: {cancelled}");
    a.quit().await?;
    c.quit().await
}

#[tokio::test]
async fn a_removed_device_cannot_read_what_is_written_after_its_removal() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    // A (owner) and W (a browser member that stays), and two native devices joined with
    // codes: `gone`, which A removes, and `stay`, which stays.
    let (a, w, space) = pair(&env, &server.url).await?;
    let mut gone = NativeDevice::join(server.port, &invite_code(&a, &space).await?, 1).await?;
    let mut stay = NativeDevice::join(server.port, &invite_code(&a, &space).await?, 2).await?;
    let todos = format!("spaces/{space}/collections/todos");
    let before = api(&a, "POST", &todos, Some(json!({"fields": {"text": "before the removal"}}))).await?;
    let before: RecordId = before["body"]["id"].as_str().context("an id")?.parse().map_err(|_| anyhow::anyhow!("a record id"))?;
    wait_shown(&w, "before the removal", Duration::from_secs(10)).await?;
    gone.pull_until(|r| r.get("todos", before).is_some()).await?;

    let removed = api(&a, "DELETE", &format!("spaces/{space}/members/{}", gone.id), None).await?;
    assert_eq!(removed["status"], 200, "{removed}");
    let after = api(&a, "POST", &todos, Some(json!({"fields": {"text": "after the removal"}}))).await?;
    let after: RecordId = after["body"]["id"].as_str().context("an id")?.parse().map_err(|_| anyhow::anyhow!("a record id"))?;

    // W took its membership log before the rotation: the new entry names a key W does not
    // hold, and W reconnects once with a fresh log instead of skipping A's chain.
    wait_shown(&w, "after the removal", Duration::from_secs(15)).await?;
    let status = api(&w, "GET", &format!("spaces/{space}/status"), None).await?;
    assert!(status["body"]["rejected"].is_null(), "W skipped an entry: {status}");

    // The member that stays reads old and new entries.
    let text = |r: &stead_core::replica::Replica, id| r.value("todos", id, "text");
    stay.pull_until(|r| text(r, after).is_some()).await?;
    assert_eq!(text(&stay.replica, before), Some(V::Str("before the removal".into())));
    assert_eq!(text(&stay.replica, after), Some(V::Str("after the removal".into())));

    // The entry written after the removal, as the server relays it, does not open with
    // the removed device's keys, nor with what the newest membership log wraps to it.
    let a_id: stead_core::ids::ReplicaId = my_replica(&a, &space).await?.parse().map_err(|_| anyhow::anyhow!("a replica id"))?;
    let entries = stay.replica.entries_from(a_id, 0, 1000, 1 << 24)?;
    let [.., old, new] = entries.as_slice() else { bail!("A wrote {} entries", entries.len()) };
    let sid = stay.space;
    let open = |ring: &stead_core::crypto::Keyring, e: &stead_core::log::Entry| ring.open(sid, a_id, e.header.seq, &e.payload).is_ok();
    assert!(open(stay.replica.keys(), old) && open(stay.replica.keys(), new), "the member that stays opens both");
    assert!(open(gone.replica.keys(), old), "the removed device opens what was written before");
    assert!(!open(gone.replica.keys(), new), "the removed device opens what was written after its removal");
    let newest = stay.replica.members().keyring(&gone.agreement, gone.replica.keys());
    assert!(newest.current().is_none() && !open(&newest, new), "the newest log gives the removed device the new key");
    assert_ne!(old.payload[..8], new.payload[..8], "the entries name different keys");
    // And the removed device is refused the log, so it cannot even try.
    assert!(native::get_members(server.port, gone.space, gone.id, gone.replica.signing_key()).await.is_err());
    a.quit().await?;
    w.quit().await
}

#[tokio::test]
async fn a_server_that_takes_new_spaces_only_with_a_token() -> Result<()> {
    let env = Env::get()?;
    let tokens = tempfile::tempdir()?;
    let token = "e2e-creation-token-5a1f09c3";
    let file = tokens.path().join("tokens");
    std::fs::write(&file, format!("{token}\n"))?;
    let server = Server::start_with(&env, &env.dist, 0, &["--spaces", "token", "--creation-tokens-file", file.to_str().context("a path")?])?;
    let a = Browser::open(&env, &server.url).await?;
    a.wait_app().await?;
    // The app made its space without a token: it works on the device, and its status
    // says why it does not sync.
    let untokened = space(&a).await?;
    let status = wait_for("the space's status to show the refusal", Duration::from_secs(20), || async {
        let s = api(&a, "GET", &format!("spaces/{untokened}/status"), None).await?;
        Ok((s["body"]["state"] == "error").then_some(s))
    })
    .await?;
    let error = status["body"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("HTTP 403") && error.contains("Stead-Creation-Token") && error.contains("creation_token"), "{status}");

    // A wrong token is refused as such.
    let wrong = api(&a, "POST", "spaces", Some(json!({"creation_token": "not-the-token-0000000"}))).await?;
    let wrong = wrong["body"]["space"].as_str().context("a space")?.to_owned();
    let status = wait_for("the wrong token's refusal", Duration::from_secs(20), || async {
        let s = api(&a, "GET", &format!("spaces/{wrong}/status"), None).await?;
        Ok((s["body"]["state"] == "error").then_some(s))
    })
    .await?;
    assert!(status["body"]["last_error"].as_str().unwrap_or_default().contains("was not accepted"), "{status}");

    // With the token, the space reaches the server and syncs.
    let made = api(&a, "POST", "spaces", Some(json!({"creation_token": token}))).await?;
    assert_eq!(made["status"], 201, "{made}");
    let tokened = made["body"]["space"].as_str().context("a space")?.to_owned();
    api(&a, "POST", &format!("spaces/{tokened}/collections/notes"), Some(json!({"fields": {"text": "kept"}}))).await?;
    wait_for("the space with a token to sync", Duration::from_secs(20), || async {
        let s = api(&a, "GET", &format!("spaces/{tokened}/status"), None).await?;
        Ok((s["body"]["state"] == "online" && s["body"]["pending"] == 0).then_some(()))
    })
    .await?;
    a.quit().await
}
