//! The todo example as a person sees it, through stead-yew's hooks and components: the
//! sync badge knows the state as soon as the page opens (offline too), the list follows
//! changes live, the invite dialog gives a link to copy and says what to do with it (and
//! tells a device that may not invite who can), the page says whether the browser keeps
//! the data and asks it to, and Chromium finds the demo installable and its install
//! button appears.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use stead_e2e::{Browser, Env, Server, wait_for};
use thirtyfour::prelude::*;

/// The sync badge's state and text.
async fn badge(b: &Browser) -> Result<(String, String)> {
    let el = b.driver.find(By::Id("sync-status")).await?;
    Ok((el.attr("data-state").await?.unwrap_or_default(), el.text().await?))
}

async fn wait_badge(b: &Browser, state: &str, text: &str, timeout: Duration) -> Result<std::time::Duration> {
    let started = std::time::Instant::now();
    wait_for(&format!("the badge to read {text:?} ({state})"), timeout, || async {
        Ok(match badge(b).await {
            Ok((s, t)) if s == state && t == text => Some(started.elapsed()),
            _ => None,
        })
    })
    .await
}

async fn shown(b: &Browser) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in b.driver.find_all(By::Css("li.todo span")).await? {
        out.push(item.text().await?);
    }
    Ok(out)
}

#[tokio::test]
async fn the_sync_badge_shows_offline_at_once_after_an_offline_reload_and_counts_what_waits() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let b = Browser::open(&env, &server.url).await?;
    b.add_todo("first").await?;
    wait_badge(&b, "online", "Synced", Duration::from_secs(30)).await?;

    let mut server = server;
    server.kill();
    // Let the worker's reconnection back off: a page that waited for its next announcement
    // would show "Starting" for seconds.
    tokio::time::sleep(Duration::from_secs(20)).await;
    b.refresh().await?;
    b.wait_app().await?;
    // The badge asks the worker on start: no waiting for a connection attempt to fail.
    let took = wait_badge(&b, "offline", "Offline", Duration::from_secs(30)).await?;
    eprintln!("the badge showed offline {took:?} after the reload");
    assert!(took < Duration::from_millis(1500), "the badge took {took:?} to show offline after the reload");

    // An edit made offline waits on this device, and the badge says so.
    b.add_todo("written offline").await?;
    wait_badge(&b, "offline", "Offline · 1 to send", Duration::from_secs(10)).await?;

    // The server returns: the change goes out and the badge follows the worker.
    let server = server.restart(&env)?;
    wait_badge(&b, "online", "Synced", Duration::from_secs(60)).await?;
    drop(server);
    b.quit().await
}

#[tokio::test]
async fn the_list_follows_every_change_made_in_another_tab() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let b = Browser::open(&env, &server.url).await?;
    b.add_todo("one").await?;
    let first = b.driver.window().await?;
    let second = b.driver.new_tab().await?;
    b.driver.switch_to_window(second.clone()).await?;
    b.driver.goto(&server.url).await?;
    b.wait_app().await?;
    // Several changes in a row, each seen by the other tab (not only the first).
    for text in ["two", "three", "four"] {
        b.driver.switch_to_window(first.clone()).await?;
        b.add_todo(text).await?;
        b.driver.switch_to_window(second.clone()).await?;
        wait_for(&format!("{text:?} in the other tab"), Duration::from_secs(10), || async {
            Ok(shown(&b).await?.iter().any(|t| t == text).then_some(()))
        })
        .await?;
    }
    assert_eq!(shown(&b).await?, ["one", "two", "three", "four"], "the other tab shows the list in creation order");
    // A tick in the second tab shows in the first.
    b.driver.find(By::Css("li.todo input[type=checkbox]")).await?.click().await?;
    b.driver.switch_to_window(first).await?;
    wait_for("the count to follow the tick", Duration::from_secs(10), || async {
        Ok((b.driver.find(By::Id("left")).await?.text().await? == "3 left").then_some(()))
    })
    .await?;
    b.quit().await
}

#[tokio::test]
async fn the_invite_dialog_gives_a_link_to_copy_and_says_what_to_do_with_it() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let b = Browser::open(&env, &server.url).await?;
    b.add_todo("shared").await?;
    let origin = server.url.trim_end_matches('/').to_owned();
    b.cdp("Browser.grantPermissions", json!({"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})).await?;

    let link = b.invite_link(Duration::from_secs(10)).await?;
    assert!(link.starts_with(&format!("{origin}/#join=")), "a link to this app with the code in its fragment: {link}");
    let dialog = b.driver.find(By::Id("invite-dialog")).await?.text().await?;
    for said in ["Open this link on your other device", "The first device to open it joins", "stops working", "expires on"] {
        assert!(dialog.contains(said), "the dialog says {said:?}: {dialog}");
    }

    b.driver.find(By::Id("invite-copy")).await?.click().await?;
    let copied = wait_for("the copy to be confirmed", Duration::from_secs(10), || async { Ok(b.driver.find(By::Id("invite-copied")).await.ok()) }).await?;
    assert!(copied.text().await?.starts_with("Copied"), "{}", copied.text().await?);
    let clip = b.js_async("return await navigator.clipboard.readText();").await?;
    assert_eq!(clip.as_str(), Some(link.as_str()), "the clipboard holds the link");

    b.driver.set_window_rect(0, 0, 800, 900).await?;
    b.screenshot("todo-invite").await?;

    // "Done" closes the dialog; the button stays.
    b.driver.find(By::Id("invite-close")).await?.click().await?;
    wait_for("the dialog to close", Duration::from_secs(5), || async { Ok(b.driver.find(By::Id("invite-dialog")).await.is_err().then_some(())) }).await?;
    assert!(b.driver.find(By::Id("invite")).await?.is_displayed().await?);

    // The link works once: a second device opening it joins the list.
    let other = Browser::open(&env, &link).await?;
    wait_for("the shared todo on the invited device", Duration::from_secs(30), || async {
        Ok(shown(&other).await?.iter().any(|t| t == "shared").then_some(()))
    })
    .await?;
    // The invited device is a writer: it cannot invite, and the dialog says who can.
    other.driver.find(By::Id("invite")).await?.click().await?;
    let refused = wait_for("the owner-only notice", Duration::from_secs(10), || async { Ok(other.driver.find(By::Id("invite-error")).await.ok()) }).await?;
    assert!(refused.text().await?.starts_with("Only an owner"), "{}", refused.text().await?);
    other.quit().await?;
    b.quit().await
}

#[tokio::test]
async fn the_page_says_whether_the_browser_keeps_the_data_and_asks_when_not() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let b = Browser::open(&env, &server.url).await?;
    b.add_todo("keep me").await?;
    let persisted = b.js_async("return await navigator.storage.persisted();").await?;
    if persisted == json!(true) {
        wait_for("the kept notice", Duration::from_secs(10), || async { Ok(b.driver.find(By::Id("persisted")).await.ok()) }).await?;
    } else {
        let ask = wait_for("the keep button", Duration::from_secs(10), || async { Ok(b.driver.find(By::Id("persist")).await.ok()) }).await?;
        ask.click().await?;
        // The browser decides; either way the page tells the person what happened.
        let answer = wait_for("the browser's answer", Duration::from_secs(10), || async {
            for id in ["persisted", "persist-refused"] {
                if let Ok(el) = b.driver.find(By::Id(id)).await {
                    return Ok(Some((id, el.text().await?)));
                }
            }
            Ok(None)
        })
        .await?;
        let granted = b.js_async("return await navigator.storage.persisted();").await?;
        assert_eq!(answer.0 == "persisted", granted == json!(true), "the page shows the browser's answer: {answer:?}, persisted() = {granted}");
    }
    b.quit().await
}

#[tokio::test]
async fn the_demo_is_installable_and_its_install_button_appears() -> Result<()> {
    let env = Env::get()?;
    let server = Server::start(&env, &env.dist)?;
    let b = Browser::open(&env, &server.url).await?;
    b.wait_app().await?;
    b.wait_controlled().await?;
    let errors = wait_for("Chromium's installability verdict", Duration::from_secs(30), || async {
        let r = b.cdp("Page.getInstallabilityErrors", json!({})).await?;
        let errors = r["installabilityErrors"].as_array().cloned().unwrap_or_default();
        Ok(errors.is_empty().then_some(errors))
    })
    .await;
    let errors = match errors {
        Ok(e) => e,
        Err(_) => b.cdp("Page.getInstallabilityErrors", json!({})).await?["installabilityErrors"].as_array().cloned().unwrap_or_default(),
    };
    assert!(errors.is_empty(), "Chromium would not install the demo: {errors:?}");
    let manifest = b.cdp("Page.getAppManifest", json!({})).await?;
    assert_eq!(manifest["errors"], json!([]), "{manifest}");
    let parsed: Value = serde_json::from_str(manifest["data"].as_str().unwrap_or("{}"))?;
    assert_eq!(parsed["name"], "Stead Todo");
    // Installable, so Chromium offers it: the button shows.
    b.wait_install_button().await?;
    b.quit().await
}
