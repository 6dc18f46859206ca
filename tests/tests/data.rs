//! The data engine end to end: two browser profiles are two devices of one space,
//! syncing through a real `stead-server` process, online and after offline edits.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stead_core::ids::RecordId;
use stead_core::ops::Value as V;
use stead_e2e::native::{self, NativeDevice};
use stead_e2e::throttle::Throttle;
use stead_e2e::{Browser, Env, Server, wait_for};
use thirtyfour::prelude::*;

/// Calls the worker's page API from the page; returns the JSON answer (problems too).
async fn api(b: &Browser, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let body = body.map_or("undefined".to_owned(), |b| format!("JSON.stringify({b})"));
    let v = b
        .js_async(&format!(
            "const r = await fetch('/_stead/v1/{path}', {{method: '{method}', body: {body}}});\
             return {{status: r.status, body: await r.json()}};"
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

/// A opens the app and creates a space; B joins it through A's invite link.
async fn pair(env: &Env, url: &str) -> Result<(Browser, Browser, String)> {
    let a = Browser::start(env).await?;
    a.driver.goto(url).await?;
    a.wait_app().await?;
    let space_a = space(&a).await?;
    wait_online(&a).await?;
    a.driver.find(By::Id("invite")).await?.click().await?;
    let link = wait_for("the invite link", Duration::from_secs(10), || async {
        match a.driver.find(By::Id("invite-link")).await {
            Ok(el) => Ok(el.prop("value").await?),
            Err(_) => Ok(None),
        }
    })
    .await?;
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
    let a = Browser::start(&env).await?;
    a.driver.goto(&server.url).await?;
    for t in ["one", "two", "three"] {
        a.add_todo(t).await?;
    }
    let space = space(&a).await?;
    wait_online(&a).await?;

    corrupt_log_tail(&a, &space).await?;
    // The next worker opens the store from disk: the last entry fails its checksum.
    a.stop_workers().await?;
    a.driver.refresh().await?;
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
    let a = Browser::start(&env).await?;
    a.driver.goto(&server.url).await?;
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
               fetch('/_stead/v1/spaces/{space}/collections/todos', {{method: 'POST',\
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
               const r = await fetch('/_stead/v1/{todos}', {{method: 'POST', body: JSON.stringify({{fields: {{text}}}})}});\
               if (r.status !== 201) return r.status;\
             }} return 201;"
        ))
        .await?;
    assert_eq!(written, json!(201), "every offline write is stored: {written}");
    let server = server.restart(&env)?;
    assert_eq!(entries_stored(&server).await?, 0, "the restarted server counts from zero");
    link.set_rate(400_000);
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
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::start(&env).await?;
    a.driver.goto(&server.url).await?;
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
             const r = await fetch('/_stead/v1/{todos}', {{method: 'POST', body: JSON.stringify({{fields: {{text: chunk}}}})}});\
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
    a.driver.refresh().await?;
    a.add_todo("after the disk had room again").await?;
    assert_eq!(shown(&a).await?, ["kept", "after the disk had room again"]);
    a.quit().await
}

#[tokio::test]
async fn a_space_kept_in_indexeddb_survives_a_worker_restart_and_syncs() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let a = Browser::start(&env).await?;
    a.driver.goto(&server.url).await?;
    a.wait_app().await?;
    space(&a).await?;
    let made = api(&a, "POST", "spaces", Some(json!({"storage": "indexeddb"}))).await?;
    assert_eq!(made["status"], 201, "{made}");
    let idb_space = made["body"]["space"].as_str().expect("a space").to_owned();
    let notes = format!("spaces/{idb_space}/collections/notes");
    for i in 0..5 {
        api(&a, "POST", &notes, Some(json!({"fields": {"n": i}}))).await?;
    }
    let opfs_has_it = a
        .js_async(&format!(
            "const root = await navigator.storage.getDirectory();\
             try {{ await (await (await root.getDirectoryHandle('stead-data')).getDirectoryHandle('spaces')).getDirectoryHandle('{idb_space}'); return true; }}\
             catch (e) {{ return false; }}"
        ))
        .await?;
    assert_eq!(opfs_has_it, json!(false), "the space's log is not in OPFS");
    a.stop_workers().await?;
    let records = api(&a, "GET", &notes, None).await?;
    let ns: Vec<i64> = records["body"]["records"].as_array().unwrap().iter().map(|r| r["fields"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 2, 3, 4]);
    wait_for("the IndexedDB space to be synced", Duration::from_secs(30), || async {
        let s = api(&a, "GET", &format!("spaces/{idb_space}/status"), None).await?;
        Ok((s["body"]["state"] == "online" && s["body"]["pending"] == 0).then_some(()))
    })
    .await?;
    a.quit().await
}

#[tokio::test]
async fn an_entry_dated_a_year_ahead_is_refused_without_freezing_sync() -> Result<()> {
    let env = Env::get()?;
    // A server that takes entries a year ahead, as an older one would.
    let server = Server::start_with(&env, &env.dist, 0, &["--max-clock-drift-ms", "315360000000"])?;
    let b = Browser::start(&env).await?;
    b.driver.goto(&server.url).await?;
    b.wait_app().await?;
    let space = space(&b).await?;
    wait_online(&b).await?;
    b.js(
        "window.rejections = []; window.steadEvents = new BroadcastChannel('stead');\
         window.steadEvents.onmessage = (e) => { if (e.data.type === 'rejected') window.rejections.push(e.data); };",
    )
    .await?;
    // Two native members, invited by the browser: one whose clock is a year ahead, and
    // one that writes normal records.
    let invite = async || -> Result<String> {
        let r = api(&b, "POST", &format!("spaces/{space}/invites"), None).await?;
        Ok(r["body"]["invite"].as_str().context("an invite code")?.to_owned())
    };
    let (ahead_code, writer_code) = (invite().await?, invite().await?);
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
    b.driver.refresh().await?;
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
    let r = api(b, "POST", &format!("spaces/{space}/invites"), None).await?;
    Ok(r["body"]["invite"].as_str().with_context(|| format!("an invite code: {r}"))?.to_owned())
}

#[tokio::test]
async fn two_devices_inviting_offline_settle_their_membership_logs_and_sync_on() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let (a, b, space) = pair(&env, &server.url).await?;
    let todos = format!("spaces/{space}/collections/todos");

    // Offline, each device invites one more: each appends an add to its own copy of the
    // membership log, and whichever publishes second gets a 409 from the server.
    let mut server = server;
    server.kill();
    let (code_a, code_b) = (invite_code(&a, &space).await?, invite_code(&b, &space).await?);
    let server = server.restart(&env)?;
    for dev in [&a, &b] {
        dev.js("navigator.serviceWorker.controller.postMessage({type: 'heartbeat'})").await?;
    }
    wait_online(&a).await?;
    wait_online(&b).await?;
    // Both invites hold: the server lists both new devices, with the space key.
    let c = NativeDevice::join(server.port, &code_a, 1).await?;
    let d = NativeDevice::join(server.port, &code_b, 2).await?;
    assert_eq!(c.replica.members().events().len(), 4, "genesis, B, and the two offline invites");
    assert_eq!(c.replica.members().events(), d.replica.members().events());
    api(&a, "POST", &todos, Some(json!({"fields": {"text": "from A after the merge"}}))).await?;
    api(&b, "POST", &todos, Some(json!({"fields": {"text": "from B after the merge"}}))).await?;
    wait_shown(&a, "from B after the merge", Duration::from_secs(10)).await?;
    wait_shown(&b, "from A after the merge", Duration::from_secs(10)).await?;

    // A invites while B is connected, so B's copy falls behind the server's; B's next
    // worker publishes its shorter copy first (a 409 too), and must still sync.
    invite_code(&a, &space).await?;
    b.stop_workers().await?;
    b.driver.refresh().await?;
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
