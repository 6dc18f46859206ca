//! Two engines, one server: a space made in Firefox (or WebKit) and joined from Chromium
//! through its invite link; what the first writes offline reaches Chromium once the
//! server is back.
//! It drives both engines whichever `STEAD_E2E_BROWSER` names, so `cargo xtask test` runs
//! it once.

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;
use stead_e2e::{Browser, Engine, Env, Server, wait_for};
use thirtyfour::prelude::*;

async fn space(b: &Browser) -> Result<String> {
    wait_for("the app to open its space", Duration::from_secs(30), || async {
        Ok(b.js("return localStorage.getItem('stead-space')").await?.as_str().map(str::to_owned))
    })
    .await
}

/// The space's sync status from the worker's page API.
async fn sync_status(b: &Browser, space: &str) -> Result<Value> {
    let v = b
        .js_async(&format!("const r = await fetch('/_stead/v1/spaces/{space}/status'); return await r.json();"))
        .await?;
    if let Some(e) = v.get("error") {
        bail!("status: {e}");
    }
    Ok(v)
}

async fn wait_online(b: &Browser, space: &str) -> Result<()> {
    wait_for(&format!("{} to sync with nothing pending", b.engine.name()), Duration::from_secs(30), || async {
        let s = sync_status(b, space).await?;
        Ok((s["state"] == "online" && s["pending"] == 0).then_some(()))
    })
    .await
}

async fn wait_shown(b: &Browser, text: &str, timeout: Duration) -> Result<()> {
    wait_for(&format!("{text:?} to show in {}", b.engine.name()), timeout, || async {
        for item in b.driver.find_all(By::Css("li.todo span")).await? {
            if item.text().await? == text {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await
}

/// `writer` makes the space and invites `reader`; with the server gone, `writer` reloads
/// from its worker and writes a todo, which `reader` shows once the server is back.
async fn offline_write_reaches(env: &Env, writer_engine: Engine, reader_engine: Engine) -> Result<(Browser, Browser, String)> {
    let mut server = Server::start(env, &env.dist)?;

    let writer = Browser::open(&env.with_engine(writer_engine), &server.url).await?;
    writer.wait_app().await?;
    let space_id = space(&writer).await?;
    wait_online(&writer, &space_id).await?;
    let link = writer.invite_link(Duration::from_secs(30)).await?;

    let reader = Browser::open(&env.with_engine(reader_engine), &link).await?;
    reader.wait_app().await?;
    assert_eq!(space(&reader).await?, space_id, "{} joined the space {} made", reader_engine.name(), writer_engine.name());
    wait_online(&reader, &space_id).await?;

    // The writer loses the server, reloads from its worker and writes.
    server.kill();
    writer.refresh().await?;
    let text = format!("written offline in {}", writer_engine.name());
    writer.add_todo(&text).await?;
    let pending = sync_status(&writer, &space_id).await?;
    assert!(pending["pending"].as_u64() >= Some(1), "the todo waits for the server: {pending}");

    let _server = server.restart(env)?;
    wait_shown(&reader, &text, Duration::from_secs(60)).await?;
    wait_online(&writer, &space_id).await?;
    Ok((writer, reader, space_id))
}

#[tokio::test]
async fn a_todo_written_offline_in_firefox_reaches_chromium_through_the_server() -> Result<()> {
    let env = Env::get()?;
    let (firefox, chromium, _) = offline_write_reaches(&env, Engine::Firefox, Engine::Chromium).await?;
    firefox.quit().await?;
    chromium.quit().await
}

/// WebKit keeps the bundle and the space in IndexedDB (its automation session has no
/// OPFS), Chromium in OPFS: the same space, one server, either storage.
#[tokio::test]
async fn a_todo_written_offline_in_webkit_from_indexeddb_reaches_chromium_on_opfs() -> Result<()> {
    let env = Env::get()?;
    let (webkit, chromium, space_id) = offline_write_reaches(&env, Engine::WebKit, Engine::Chromium).await?;
    for (b, kind) in [(&webkit, "indexeddb"), (&chromium, "opfs")] {
        assert_eq!(sync_status(b, &space_id).await?["log_storage"], kind, "{}'s space log", b.engine.name());
        assert_eq!(b.status().await?["bundle_storage"], kind, "{}'s bundle", b.engine.name());
    }
    webkit.quit().await?;
    chromium.quit().await
}
