//! Two engines, one server: a space made in Firefox and joined from Chromium through its
//! invite link; what Firefox writes offline reaches Chromium once the server is back.
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

#[tokio::test]
async fn a_todo_written_offline_in_firefox_reaches_chromium_through_the_server() -> Result<()> {
    let env = Env::get()?;
    let mut server = Server::start(&env, &env.dist)?;

    let firefox = Browser::open(&env.with_engine(Engine::Firefox), &server.url).await?;
    firefox.wait_app().await?;
    let space_id = space(&firefox).await?;
    wait_online(&firefox, &space_id).await?;
    firefox.driver.find(By::Id("invite")).await?.click().await?;
    let link = wait_for("the invite link", Duration::from_secs(10), || async {
        match firefox.driver.find(By::Id("invite-link")).await {
            Ok(el) => Ok(el.prop("value").await?),
            Err(_) => Ok(None),
        }
    })
    .await?;

    let chromium = Browser::open(&env.with_engine(Engine::Chromium), &link).await?;
    chromium.wait_app().await?;
    assert_eq!(space(&chromium).await?, space_id, "Chromium joined the space Firefox made");
    wait_online(&chromium, &space_id).await?;

    // Firefox loses the server, reloads from its worker and writes.
    server.kill();
    firefox.refresh().await?;
    firefox.add_todo("written offline in Firefox").await?;
    let pending = sync_status(&firefox, &space_id).await?;
    assert!(pending["pending"].as_u64() >= Some(1), "the todo waits for the server: {pending}");

    let _server = server.restart(&env)?;
    wait_shown(&chromium, "written offline in Firefox", Duration::from_secs(60)).await?;
    wait_online(&firefox, &space_id).await?;
    firefox.quit().await?;
    chromium.quit().await
}
