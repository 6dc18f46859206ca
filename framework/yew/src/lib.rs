//! Yew hooks and components for apps served by Stead's service worker.
//!
//! The page talks to the worker only through its public surface: `postMessage` to the
//! controller, `fetch('/_stead/v1/...')`, and the `stead` BroadcastChannel. Any JS page
//! could do the same.
//!
//! - [`register`] installs the worker and keeps it awake while the page is open;
//! - [`SteadProvider`] opens the app's space; under it, [`use_query`] and [`use_record`]
//!   read records into the app's own serde types and stay live, [`use_mutation`] writes,
//!   [`use_sync_status`] reports sync from the first render after the space opened;
//! - [`use_update_ready`] tells when a new version is downloaded and waiting, and
//!   [`activate_update`] switches to it and reloads this page;
//! - [`use_install_prompt`] offers installation (`beforeinstallprompt`, or the Web
//!   Install API), [`use_persist`] asks the browser to keep the app's storage;
//! - components: [`SyncBadge`], [`UpdateBanner`], [`InstallButton`], [`InviteDialog`];
//! - [`data`] is the layer below: calls to the worker's page API, and
//!   [`data::use_kept_data`] / [`data::erase_kept_data`] ask the user before the kill
//!   switch erases changes the server never received.
//!
//! ```ignore
//! #[function_component]
//! fn Todos() -> Html {
//!     let todos = use_query::<Todo>("todos", Filter::All);
//!     let write = use_mutation();
//!     // ... write.create("todos", Todo { text, done: false }) ...
//! }
//! html! { <SteadProvider schema={schema()}><SyncBadge /><Todos /></SteadProvider> }
//! ```
//!
//! Apps under different scopes of one origin share the `stead` channel; every message a
//! worker sends names its scope, and these hooks hear only their own app's.

mod components;
pub mod data;
mod hooks;
mod install;

pub use components::{InstallButton, InstallButtonProps, InviteDialog, InviteDialogProps, SyncBadge, UpdateBanner};
/// The update banner's former name.
pub use components::UpdateBanner as UpdatePrompt;
pub use data::{ApiError, BlobRef, Change, Filter, Record};
pub use hooks::{
    Loaded, Mutation, Persist, SpaceState, Stead, SteadProvider, SteadProviderProps, SyncStatus, use_history, use_mutation, use_persist, use_query, use_record,
    use_space, use_stead, use_sync_status,
};
pub use install::{InstallPrompt, use_install_prompt};

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

/// This page's registration scope, as [`register`] registers it (`./` of the page).
pub(crate) fn own_scope() -> Option<String> {
    let href = web_sys::window()?.location().href().ok()?;
    Some(web_sys::Url::new_with_base("./", &href).ok()?.href())
}

/// Whether a message on the channel comes from this page's app: workers name their
/// scope (older ones did not, and are taken as this app's).
pub(crate) fn for_this_app(data: &JsValue) -> bool {
    match js_sys::Reflect::get(data, &"scope".into()).ok().and_then(|s| s.as_string()) {
        Some(scope) => own_scope().is_none_or(|own| own == scope),
        None => true,
    }
}

/// Set in `localStorage` when the worker announced the kill switch.
const KILLED_KEY: &str = "stead-killed";

/// Registers the worker for the app's folder and starts the heartbeat. Safe to call on
/// every start: the browser keeps one registration per scope.
///
/// After the kill switch (the server answers `410 Gone` for the bundle manifest), the
/// page does not register again, and undoes a registration it revived, until the server
/// serves a manifest again. That holds for a page that never heard the worker's `killed`
/// message too (a tab closed, or reloaded, before it arrived): with no registration at all
/// the manifest's status is asked before registering.
pub fn register() {
    let Some(window) = web_sys::window() else { return };
    let storage = window.local_storage().ok().flatten();
    let was_killed = storage.as_ref().and_then(|s| s.get_item(KILLED_KEY).ok().flatten()).is_some();
    wasm_bindgen_futures::spawn_local(async move {
        // A first visit, or the first page after a kill: one HEAD request. A worker
        // registered for a withdrawn app would only install to fail on the same 410, and
        // WebKitGTK 2.50 sometimes never finishes the install of a worker registered just
        // after the previous one went, leaving it `installing` with its database.
        let check = was_killed || !has_registration().await;
        if check && manifest_gone().await {
            // Still withdrawn: undo any registration the scope still has (one made by a
            // page while the worker was being killed would otherwise be left).
            unregister_after_kill().await;
            return;
        }
        if let Some(s) = &storage {
            let _ = s.remove_item(KILLED_KEY);
        }
        let Some(window) = web_sys::window() else { return };
        let opts = RegistrationOptions::new();
        opts.set_scope("./");
        let registering = window.navigator().service_worker().register_with_options(&format!("./{WORKER_SCRIPT}"), &opts);
        if let Err(e) = JsFuture::from(registering).await {
            web_sys::console::warn_2(&"stead: service worker registration failed".into(), &e);
            return;
        }
        // A worker that was killed meanwhile answers this with `killed`.
        post_to_worker("hello");
    });
    if let Ok(channel) = BroadcastChannel::new(CHANNEL) {
        let on_killed = Closure::<dyn Fn(MessageEvent)>::new(|e: MessageEvent| {
            let data = e.data();
            let kind = js_sys::Reflect::get(&data, &"type".into()).ok().and_then(|t| t.as_string());
            // With data kept for the user's consent the worker stays registered, to answer
            // the erase call (see `data::use_kept_data`).
            let kept = js_sys::Reflect::get(&data, &"kept".into()).ok().and_then(|k| k.dyn_into::<js_sys::Array>().ok()).is_some_and(|k| k.length() > 0);
            if kind.as_deref() == Some("killed") && for_this_app(&data) && !kept {
                wasm_bindgen_futures::spawn_local(unregister_after_kill());
            }
        });
        channel.set_onmessage(Some(on_killed.as_ref().unchecked_ref()));
        on_killed.forget();
        std::mem::forget(channel);
    }
    let beat = Closure::<dyn Fn()>::new(|| post_to_worker("heartbeat"));
    let _ = window.set_interval_with_callback_and_timeout_and_arguments_0(beat.as_ref().unchecked_ref(), HEARTBEAT_MS);
    beat.forget();
}

/// Whether the server withdrew the app (its bundle manifest answers 410); a HEAD request,
/// past the HTTP cache. Offline, or on any other answer, it was not.
async fn manifest_gone() -> bool {
    let Some(window) = web_sys::window() else { return false };
    let init = web_sys::RequestInit::new();
    init.set_method("HEAD");
    let _ = js_sys::Reflect::set(&init, &"cache".into(), &"no-store".into());
    match JsFuture::from(window.fetch_with_str_and_init("./stead-bundle.json", &init)).await {
        Ok(r) => r.unchecked_into::<web_sys::Response>().status() == 410,
        Err(_) => false,
    }
}

/// Whether this page's scope has a service worker registration (any state).
async fn has_registration() -> bool {
    let Some(window) = web_sys::window() else { return false };
    JsFuture::from(window.navigator().service_worker().get_registration())
        .await
        .is_ok_and(|r| r.is_instance_of::<web_sys::ServiceWorkerRegistration>())
}

/// The worker wiped itself and unregistered; a registration this page made since would
/// revive it, so undo that too and remember not to register again.
async fn unregister_after_kill() {
    let Some(window) = web_sys::window() else { return };
    if let Ok(Some(s)) = window.local_storage() {
        let _ = s.set_item(KILLED_KEY, "1");
    }
    let container = window.navigator().service_worker();
    if let Ok(reg) = JsFuture::from(container.get_registration()).await
        && let Ok(reg) = reg.dyn_into::<web_sys::ServiceWorkerRegistration>()
            && let Ok(p) = reg.unregister() {
                let _ = JsFuture::from(p).await;
            }
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
                if !for_this_app(&e.data()) {
                    return;
                }
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


// One configuration for the whole test binary: the tests run in a Chromium page.
#[cfg(all(test, target_arch = "wasm32"))]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);
