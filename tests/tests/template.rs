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
    Env::browsers(dist, PathBuf::new())
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

    let errors = browser.installability_errors().await?;
    assert!(errors.is_empty(), "Chromium would not install the template: {errors:?}");
    let manifest = browser.cdp("Page.getAppManifest", json!({})).await?;
    assert!(manifest["url"].as_str().is_some_and(|u| u.ends_with("/manifest.webmanifest")), "{manifest}");
    assert_eq!(manifest["errors"], json!([]), "{manifest}");
    let parsed: Value = serde_json::from_str(manifest["data"].as_str().unwrap_or("{}"))?;
    assert_eq!(parsed["display"], "standalone");

    // Installable, so Chromium offers it: the install button shows.
    browser.wait_install_button().await?;

    browser.add_item("before").await?;

    // A second profile joins through the app's invite link and syncs both ways.
    let link = browser.invite_link(Duration::from_secs(15)).await?;
    let other = Browser::open(&env, &link).await?;
    other.wait_item("before").await.context("the joined profile never showed the first profile's item")?;
    other.add_item("from the other profile").await?;
    browser.wait_item("from the other profile").await.context("the first profile never showed the joined profile's item")?;
    browser.screenshot("template").await?;
    other.quit().await?;

    // Offline: the server gone, the worker stopped, the page reloaded.
    server.stop().await.map_err(|p| anyhow::anyhow!("{p}"))?;
    browser.stop_workers().await?;
    browser.refresh().await?;
    browser.wait_item("before").await.context("offline after a worker stop")?;
    browser.wait_item("from the other profile").await.context("offline after a worker stop")?;
    browser.quit().await
}

