//! `stead dev` in Chromium: an edit to a Yew component shows in the open page within
//! seconds, with no stale file served by the worker, and the app's data survives the
//! worker's re-install.
//!
//! `cargo xtask test` passes the `stead` binary in `STEAD_BIN`.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use stead_e2e::{Browser, Env, wait_for};
use thirtyfour::prelude::*;

/// Kills `stead dev` (and so its server) when the test ends, however it ends.
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn heading(browser: &Browser) -> Result<String> {
    Ok(browser.driver.find(By::Css("h1")).await?.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reloads_the_page_with_no_stale_file() -> Result<()> {
    let stead = std::env::var_os("STEAD_BIN").map(PathBuf::from).context("STEAD_BIN is not set: run the end-to-end tests through `cargo xtask test`")?;
    let env = Env::browsers(PathBuf::new(), PathBuf::new())?;
    let tmp = tempfile::tempdir()?;
    let app = tmp.path().join("dev-app");
    let made = Command::new(&stead).args(["new", "dev-app"]).current_dir(tmp.path()).output()?;
    anyhow::ensure!(made.status.success(), "stead new: {}", String::from_utf8_lossy(&made.stderr));

    let mut child = Command::new(&stead)
        .args(["dev", "--port", "0"])
        .current_dir(&app)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start stead dev")?;
    let stdout = child.stdout.take().context("piped")?;
    let dev = Dev(child);
    let mut url = String::new();
    BufReader::new(stdout).read_line(&mut url)?;
    let url = url.trim().to_owned();
    anyhow::ensure!(url.starts_with("http://"), "stead dev printed no URL: {url:?}");

    let browser = Browser::open(&env, &url).await?;
    browser.wait_controlled().await?;
    let input = wait_for("the app to render", Duration::from_secs(30), || async { Ok(browser.driver.find(By::Id("new-item")).await.ok()) }).await?;
    wait_for("the app's space to open", Duration::from_secs(30), || async {
        Ok(browser.driver.find(By::Id("add")).await?.is_enabled().await?.then_some(()))
    })
    .await?;
    input.send_keys("kept across rebuilds").await?;
    browser.driver.find(By::Id("add")).await?.click().await?;
    assert_eq!(heading(&browser).await?, "Dev App");

    let main = app.join("src/main.rs");
    let source = std::fs::read_to_string(&main)?;
    std::fs::write(&main, source.replace("<h1>{\"Dev App\"}</h1>", "<h1>{\"Edited\"}</h1>"))?;
    let edited = Instant::now();
    wait_for("the edit to show in the open page", Duration::from_secs(120), || async {
        Ok(heading(&browser).await.ok().filter(|h| h == "Edited").map(|_| ()))
    })
    .await?;
    eprintln!("the edit showed {:.1} s after the save", edited.elapsed().as_secs_f64());
    browser.wait_controlled().await?;
    wait_for("the data to be there after the worker's re-install", Duration::from_secs(30), || async {
        for item in browser.driver.find_all(By::Css("#items li span")).await? {
            if item.text().await? == "kept across rebuilds" {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await?;
    // The worker now serves the new build: a reload straight from it shows the edit.
    browser.refresh().await?;
    wait_for("the edit after a reload through the worker", Duration::from_secs(30), || async {
        Ok(heading(&browser).await.ok().filter(|h| h == "Edited").map(|_| ()))
    })
    .await?;
    browser.quit().await?;
    drop(dev);
    Ok(())
}
