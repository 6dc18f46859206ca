//! The app `stead new` makes, built by `stead build` and served by `stead serve`'s code,
//! in Chromium: it installs its worker, Chromium finds nothing stopping its installation
//! (CDP `Page.getInstallabilityErrors`, `Page.getAppManifest`), its install button
//! appears (`beforeinstallprompt`), a second browser profile joins through its invite
//! link and syncs both ways, and it works offline after a forced worker stop.
//!
//! `cargo xtask test` builds the app and passes its folder in `STEAD_E2E_TEMPLATE_DIST`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use stead_cli::serve::{self, ServeOptions};
use stead_e2e::{Browser, Env, wait_for};
use thirtyfour::prelude::*;

fn env() -> Result<Env> {
    let dist = std::env::var_os("STEAD_E2E_TEMPLATE_DIST")
        .map(PathBuf::from)
        .context("STEAD_E2E_TEMPLATE_DIST is not set: run the end-to-end tests through `cargo xtask test`")?;
    Ok(Env {
        dist,
        server_bin: PathBuf::new(),
        chromedriver: std::env::var_os("CHROMEDRIVER").map(PathBuf::from).unwrap_or("/usr/bin/chromedriver".into()),
        chromium: std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or("/usr/bin/chromium".into()),
    })
}

/// Waits for an element of the template's page.
async fn wait_element(browser: &Browser, id: &str) -> Result<WebElement> {
    wait_for(&format!("#{id} to render"), Duration::from_secs(30), || async { Ok(browser.driver.find(By::Id(id)).await.ok()) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_installs_and_works_offline() -> Result<()> {
    let env = env()?;
    let data = tempfile::tempdir()?;
    let opts = ServeOptions {
        dir: env.dist.clone(),
        host: "127.0.0.1".parse()?,
        port: 0,
        database: data.path().join("stead.sqlite3").display().to_string(),
        open_spaces: true,
    };
    let server = serve::start(&opts).await.map_err(|p| anyhow::anyhow!("{p}"))?;
    let url = server.url();
    let browser = Browser::open(&env, &url).await?;
    browser.wait_controlled().await?;
    wait_element(&browser, "sync-status").await?;

    // Chromium fetches the manifest and icons in its own time: ask until it has decided.
    let errors = wait_for("Chromium's installability verdict", Duration::from_secs(30), || async {
        let r = browser.cdp("Page.getInstallabilityErrors", json!({})).await?;
        let errors = r["installabilityErrors"].as_array().cloned().unwrap_or_default();
        // Until the page and worker are ready, Chromium may report transient states.
        let settled = errors.iter().all(|e| e["errorId"] != "no-manifest" && e["errorId"] != "not-offline-capable");
        Ok(settled.then_some(errors))
    })
    .await;
    let errors = match errors {
        Ok(e) => e,
        Err(_) => browser.cdp("Page.getInstallabilityErrors", json!({})).await?["installabilityErrors"].as_array().cloned().unwrap_or_default(),
    };
    assert!(errors.is_empty(), "Chromium would not install the template: {errors:?}");
    let manifest = browser.cdp("Page.getAppManifest", json!({})).await?;
    assert!(manifest["url"].as_str().is_some_and(|u| u.ends_with("/manifest.webmanifest")), "{manifest}");
    assert_eq!(manifest["errors"], json!([]), "{manifest}");
    let parsed: Value = serde_json::from_str(manifest["data"].as_str().unwrap_or("{}"))?;
    assert_eq!(parsed["display"], "standalone");

    // Installable, so Chromium offers it: the install button shows.
    wait_element(&browser, "install").await.context("no beforeinstallprompt: the install button stayed hidden")?;

    add_item(&browser, "before").await?;

    // A second profile joins through the app's invite link and syncs both ways.
    browser.driver.find(By::Id("invite")).await?.click().await?;
    let link: String = wait_for("the invite link", Duration::from_secs(15), || async {
        match browser.driver.find(By::Id("invite-link")).await {
            Ok(el) => Ok(el.prop("value").await?.filter(|v| !v.is_empty())),
            Err(_) => Ok(None),
        }
    })
    .await?;
    let other = Browser::open(&env, &link).await?;
    wait_shown(&other, "before").await.context("the joined profile never showed the first profile's item")?;
    add_item(&other, "from the other profile").await?;
    wait_shown(&browser, "from the other profile").await.context("the first profile never showed the joined profile's item")?;
    browser.screenshot("template").await?;
    other.quit().await?;

    // Offline: the server gone, the worker stopped, the page reloaded.
    server.stop().await.map_err(|p| anyhow::anyhow!("{p}"))?;
    browser.stop_workers().await?;
    browser.driver.refresh().await?;
    wait_shown(&browser, "before").await.context("offline after a worker stop")?;
    wait_shown(&browser, "from the other profile").await.context("offline after a worker stop")?;
    browser.quit().await
}

/// Types `text` into the new-item field and adds it.
async fn add_item(browser: &Browser, text: &str) -> Result<()> {
    let input = wait_element(browser, "new-item").await?;
    wait_for("the app's space to open", Duration::from_secs(30), || async {
        Ok(browser.driver.find(By::Id("add")).await?.is_enabled().await?.then_some(()))
    })
    .await?;
    input.send_keys(text).await?;
    browser.driver.find(By::Id("add")).await?.click().await?;
    Ok(())
}

/// Waits until the list shows an item with this text.
async fn wait_shown(browser: &Browser, text: &str) -> Result<()> {
    wait_for(&format!("{text:?} to show"), Duration::from_secs(30), || async {
        for item in browser.driver.find_all(By::Css("#items li span")).await? {
            if item.text().await? == text {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await
}
