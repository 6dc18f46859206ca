//! The notes example as a person uses it: a note written, a picture attached and shown
//! (from the worker, as a sealed blob), the note's history, an undo, a search by title
//! through the index, and all of it still there after an offline reload. Chromium finds
//! the app installable.
//!
//! `cargo xtask test` builds the example and passes its folder in `STEAD_E2E_NOTES_DIST`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use stead_e2e::{Browser, Env, Server, wait_for};
use thirtyfour::prelude::*;

/// A 1×1 PNG.
const PNG: [u8; 70] = [
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 31, 21, 196, 137, 0, 0, 0, 13, 73, 68, 65,
    84, 120, 218, 99, 100, 248, 207, 80, 15, 0, 3, 134, 1, 128, 90, 52, 125, 107, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

fn env() -> Result<Env> {
    let mut env = Env::get()?;
    env.dist = std::env::var_os("STEAD_E2E_NOTES_DIST")
        .map(PathBuf::from)
        .context("STEAD_E2E_NOTES_DIST is not set: run the end-to-end tests through `cargo xtask test`")?;
    Ok(env)
}

async fn titles(b: &Browser) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in b.driver.find_all(By::Css("#notes li.note button")).await? {
        out.push(item.text().await?);
    }
    Ok(out)
}

async fn wait_titles(b: &Browser, want: &[&str]) -> Result<()> {
    wait_for(&format!("the list to show {want:?}"), Duration::from_secs(10), || async { Ok((titles(b).await? == want).then_some(())) }).await
}

async fn body(b: &Browser) -> Result<String> {
    Ok(b.driver.find(By::Id("body")).await?.prop("value").await?.unwrap_or_default())
}

/// Replaces a field's text and leaves it, as a person does (the change is saved then).
async fn type_into(b: &Browser, id: &str, text: &str) -> Result<()> {
    let el = b.driver.find(By::Id(id)).await?;
    // Select all and type over it: WebDriver's clear() would fire a change of its own.
    el.click().await?;
    el.send_keys(Key::Control + "a").await?;
    el.send_keys(text).await?;
    el.send_keys(Key::Tab).await?;
    Ok(())
}

/// The pictures shown, by how many have loaded (decoded, not broken).
async fn pictures_loaded(b: &Browser) -> Result<u64> {
    Ok(b.js("return [...document.querySelectorAll('#images img')].filter(i => i.complete && i.naturalWidth > 0).length").await?.as_u64().unwrap_or(0))
}

async fn new_note(b: &Browser, title: &str) -> Result<()> {
    let button = wait_for("the space to open", Duration::from_secs(30), || async {
        let b = b.driver.find(By::Id("new-note")).await?;
        Ok(b.is_enabled().await?.then_some(b))
    })
    .await?;
    button.click().await?;
    wait_for("the new note's editor", Duration::from_secs(10), || async {
        let t = b.driver.find(By::Id("title")).await.ok();
        Ok(match t {
            Some(t) if t.prop("value").await?.as_deref() == Some("Untitled") => Some(()),
            _ => None,
        })
    })
    .await?;
    type_into(b, "title", title).await
}

#[tokio::test]
async fn a_note_with_a_picture_keeps_its_history_undoes_and_is_found_by_its_title_offline_too() -> Result<()> {
    let env = env()?;
    let mut server = Server::start(&env, &env.dist)?;
    let b = Browser::open(&env, &server.url).await?;
    b.wait_controlled().await?;
    // Installable: Chromium finds nothing in the way.
    wait_for("Chromium to find the notes app installable", Duration::from_secs(30), || async {
        let r = b.cdp("Page.getInstallabilityErrors", serde_json::json!({})).await?;
        Ok(r["installabilityErrors"].as_array().is_some_and(Vec::is_empty).then_some(()))
    })
    .await?;

    new_note(&b, "Groceries").await?;
    wait_titles(&b, &["Groceries"]).await?;
    type_into(&b, "body", "milk").await?;
    wait_for("the history to show the body's change", Duration::from_secs(10), || async {
        let h = b.driver.find(By::Id("history")).await?.text().await?;
        Ok((h.contains("changed the body") && h.contains("changed the title")).then_some(()))
    })
    .await?;
    let history = b.driver.find(By::Id("history")).await?.text().await?;
    assert!(history.trim_end().ends_with("created the note"), "the oldest line is the note's creation: {history}");
    type_into(&b, "body", "milk and eggs").await?;
    wait_for("the second body to be stored", Duration::from_secs(10), || async {
        Ok((b.driver.find(By::Id("history")).await?.find_all(By::Tag("li")).await?.len() >= 4).then_some(()))
    })
    .await?;

    // Undo takes back the last change: the body reads as before it.
    b.driver.find(By::Id("undo")).await?.click().await?;
    wait_for("the body to read \"milk\" again", Duration::from_secs(10), || async { Ok((body(&b).await? == "milk").then_some(())) }).await?;

    // A picture, stored as a blob in the worker, shows in the note.
    let dir = tempfile::tempdir()?;
    let png = dir.path().join("dot.png");
    std::fs::write(&png, PNG)?;
    b.driver.find(By::Id("attach")).await?.send_keys(png.display().to_string()).await?;
    wait_for("the picture to show", Duration::from_secs(15), || async { Ok((pictures_loaded(&b).await? == 1).then_some(())) }).await?;

    b.driver.set_window_rect(0, 0, 1000, 760).await?;
    b.screenshot("notes").await?;

    // Search goes through the index on titles, by prefix, ignoring case.
    new_note(&b, "Garden").await?;
    wait_titles(&b, &["Groceries", "Garden"]).await?;
    type_into(&b, "search", "gr").await?;
    wait_titles(&b, &["Groceries"]).await?;
    type_into(&b, "search", "GA").await?;
    wait_titles(&b, &["Garden"]).await?;
    type_into(&b, "search", "x").await?;
    wait_titles(&b, &[]).await?;

    // Offline, after a reload: the notes, the body and the picture are all there.
    server.kill();
    b.refresh().await?;
    wait_titles(&b, &["Groceries", "Garden"]).await?;
    b.driver.find(By::Css("#notes li.note button")).await?.click().await?;
    wait_for("the note to open offline", Duration::from_secs(10), || async { Ok((body(&b).await.unwrap_or_default() == "milk").then_some(())) }).await?;
    wait_for("the picture to show offline", Duration::from_secs(15), || async { Ok((pictures_loaded(&b).await? == 1).then_some(())) }).await?;
    b.quit().await
}
