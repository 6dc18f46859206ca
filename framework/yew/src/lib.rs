//! Yew hooks and components for apps served by Stead's service worker.
//!
//! The page talks to the worker only through its public surface: `postMessage` to the
//! controller, `fetch('/_stead/v1/...')`, and the `stead` BroadcastChannel. Any JS page
//! could do the same.
//!
//! - [`register`] installs the worker and keeps it awake while the page is open;
//! - [`use_update_ready`] tells when a new version is downloaded and waiting;
//! - [`activate_update`] switches to it and reloads this page;
//! - [`UpdatePrompt`] is a ready-made banner for the two.

use std::cell::Cell;

use serde::Deserialize;
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{BroadcastChannel, MessageEvent, RegistrationOptions};
use yew::prelude::*;

/// The worker script a Stead build writes next to the app.
pub const WORKER_SCRIPT: &str = "stead-sw.js";
/// The channel the worker announces updates and errors on.
pub const CHANNEL: &str = "stead";
/// How often an open page pings the worker: the browser stops an idle worker after 30 s,
/// and the pings also drive periodic update checks.
const HEARTBEAT_MS: i32 = 20_000;

thread_local! {
    static ACTIVATING: Cell<bool> = const { Cell::new(false) };
}

/// Registers the worker for the app's folder and starts the heartbeat. Safe to call on
/// every start: the browser keeps one registration per scope.
pub fn register() {
    let Some(window) = web_sys::window() else { return };
    let container = window.navigator().service_worker();
    let opts = RegistrationOptions::new();
    opts.set_scope("./");
    let registering = container.register_with_options(&format!("./{WORKER_SCRIPT}"), &opts);
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = JsFuture::from(registering).await {
            web_sys::console::warn_2(&"stead: service worker registration failed".into(), &e);
        }
    });
    let beat = Closure::<dyn Fn()>::new(|| post_to_worker("heartbeat"));
    let _ = window.set_interval_with_callback_and_timeout_and_arguments_0(beat.as_ref().unchecked_ref(), HEARTBEAT_MS);
    beat.forget();
}

fn post_to_worker(kind: &str) {
    let Some(window) = web_sys::window() else { return };
    if let Some(worker) = window.navigator().service_worker().controller() {
        let msg = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&msg, &"type".into(), &kind.into());
        let _ = worker.post_message(&msg);
    }
}

/// Asks the worker to serve the downloaded version, then reloads this page when it has.
pub fn activate_update() {
    ACTIVATING.with(|a| a.set(true));
    post_to_worker("activate-update");
}

/// A message the worker sent on the `stead` channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum WorkerEvent {
    UpdateReady { version: String },
    Activated { version: String },
    Error { message: String },
    Killed,
}

/// The version of a downloaded update waiting to be activated, if any.
#[hook]
pub fn use_update_ready() -> Option<String> {
    let ready = use_state(|| None::<String>);
    {
        let ready = ready.clone();
        use_effect_with((), move |_| {
            // A page opened after the announcement learns of it from status.
            let from_status = ready.clone();
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(v) = pending_version().await {
                    from_status.set(Some(v));
                }
            });
            let channel = BroadcastChannel::new(CHANNEL).ok();
            let onmessage = Closure::<dyn Fn(MessageEvent)>::new(move |e: MessageEvent| {
                let Ok(json) = js_sys::JSON::stringify(&e.data()) else { return };
                let Ok(event) = serde_json::from_str::<WorkerEvent>(&String::from(json)) else { return };
                match event {
                    WorkerEvent::UpdateReady { version } => ready.set(Some(version)),
                    WorkerEvent::Activated { .. } if ACTIVATING.with(Cell::get) => {
                        if let Some(w) = web_sys::window() {
                            let _ = w.location().reload();
                        }
                    }
                    _ => {}
                }
            });
            if let Some(c) = &channel {
                c.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
            }
            move || {
                if let Some(c) = channel {
                    c.set_onmessage(None);
                    c.close();
                }
                drop(onmessage);
            }
        });
    }
    (*ready).clone()
}

async fn pending_version() -> Option<String> {
    let window = web_sys::window()?;
    window.navigator().service_worker().controller()?;
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str("./_stead/v1/status")).await.ok()?.dyn_into().ok()?;
    let json = JsFuture::from(resp.json().ok()?).await.ok()?;
    js_sys::Reflect::get(&json, &JsValue::from_str("pending_version")).ok()?.as_string()
}

/// A banner offering to switch to a downloaded update; renders nothing otherwise.
#[function_component]
pub fn UpdatePrompt() -> Html {
    let Some(_version) = use_update_ready() else { return html! {} };
    let onclick = Callback::from(|_: MouseEvent| activate_update());
    html! {
        <div class="stead-update" role="status">
            {"A new version is ready. "}
            <button id="stead-update" {onclick}>{"Reload"}</button>
        </div>
    }
}
