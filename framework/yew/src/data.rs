//! The page's side of the data engine: calls to the worker's page API and hooks that
//! follow its change and sync events. Everything here goes through
//! `fetch('/_stead/v1/...')` and the `stead` BroadcastChannel.

use serde_json::{Value as J, json};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{BroadcastChannel, MessageEvent, RequestInit, Response};
use yew::prelude::*;

/// Where the app keeps the space it last used.
const SPACE_KEY: &str = "stead-space";
/// The URL fragment an invite link carries: browsers never send it to a server.
pub const JOIN_FRAGMENT: &str = "#join=";

/// A failed call: the problem object's status, title and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub title: String,
    pub detail: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

fn js_error(e: JsValue) -> ApiError {
    let detail = e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_default();
    ApiError { status: 0, title: "browser error".into(), detail }
}

/// Resolves once the worker controls this page, so page API calls reach it.
pub async fn ready() -> Result<(), ApiError> {
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let container = window.navigator().service_worker();
    JsFuture::from(container.ready().map_err(js_error)?).await.map_err(js_error)?;
    while container.controller().is_none() {
        // The first install claims open pages on activation: wait for that.
        let changed = js_sys::Promise::new(&mut |resolve, _| {
            let once = web_sys::AddEventListenerOptions::new();
            once.set_once(true);
            let _ = container.add_event_listener_with_callback_and_add_event_listener_options("controllerchange", &resolve, &once);
        });
        JsFuture::from(changed).await.map_err(js_error)?;
    }
    Ok(())
}

/// Calls the page API: `path` is relative to `/_stead/v1/`.
pub async fn call(method: &str, path: &str, body: Option<&J>) -> Result<J, ApiError> {
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let init = RequestInit::new();
    init.set_method(method);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(&b.to_string()));
        let headers = web_sys::Headers::new().map_err(js_error)?;
        headers.set("content-type", "application/json").map_err(js_error)?;
        init.set_headers(&headers);
    }
    let url = format!("_stead/v1/{path}");
    let resp: Response = JsFuture::from(window.fetch_with_str_and_init(&url, &init)).await.map_err(js_error)?.unchecked_into();
    let text = JsFuture::from(resp.text().map_err(js_error)?).await.map_err(js_error)?.as_string().unwrap_or_default();
    let value: J = serde_json::from_str(&text).unwrap_or(J::String(text));
    if resp.ok() {
        return Ok(value);
    }
    Err(ApiError {
        status: resp.status(),
        title: value.get("title").and_then(J::as_str).unwrap_or("error").to_owned(),
        detail: value.get("detail").and_then(J::as_str).map(str::to_owned).unwrap_or_else(|| value.to_string()),
    })
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// The space this page works in: joins the one an invite link names, or reopens the
/// last one, or creates one with `schema`. The schema is (re)declared each time, so a
/// new version of the app can add fields.
pub async fn open_space(schema: &J) -> Result<String, ApiError> {
    ready().await?;
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let hash = window.location().hash().unwrap_or_default();
    let space = if let Some(code) = hash.strip_prefix(JOIN_FRAGMENT) {
        let joined = call("POST", "join", Some(&json!({ "invite": code }))).await?;
        // The invite code is a secret (whoever holds it may join, once): keep it out of
        // the address bar and history.
        if let Ok(h) = window.history() {
            let path = window.location().pathname().unwrap_or_else(|_| "/".into());
            let _ = h.replace_state_with_url(&JsValue::NULL, "", Some(&path));
        }
        joined["space"].as_str().unwrap_or_default().to_owned()
    } else {
        let listed = call("GET", "spaces", None).await?;
        let spaces: Vec<String> = listed["spaces"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect();
        let last = storage().and_then(|s| s.get_item(SPACE_KEY).ok().flatten());
        match last.filter(|l| spaces.contains(l)).or_else(|| spaces.first().cloned()) {
            Some(s) => s,
            None => call("POST", "spaces", Some(&json!({ "schema": schema }))).await?["space"].as_str().unwrap_or_default().to_owned(),
        }
    };
    if let Some(s) = storage() {
        let _ = s.set_item(SPACE_KEY, &space);
    }
    call("PUT", &format!("spaces/{space}/schema"), Some(schema)).await?;
    Ok(space)
}

/// A one-time invite link for another device: this page's address with the invite code
/// in its fragment. The device that opens it first joins as a writer, within 7 days
/// (the worker's defaults); see [`invite_link_as`].
pub async fn invite_link(space: &str) -> Result<String, ApiError> {
    invite_link_as(space, None).await
}

/// [`invite_link`] granting `role` (`"owner"`, `"writer"` or `"reader"`; `None`: the
/// worker's default, writer).
pub async fn invite_link_as(space: &str, role: Option<&str>) -> Result<String, ApiError> {
    let body = role.map(|r| json!({ "role": r }));
    let code = call("POST", &format!("spaces/{space}/invites"), body.as_ref()).await?;
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let loc = window.location();
    let base = format!("{}{}", loc.origin().map_err(js_error)?, loc.pathname().map_err(js_error)?);
    Ok(format!("{base}{JOIN_FRAGMENT}{}", code["invite"].as_str().unwrap_or_default()))
}

/// Listens on the `stead` channel while the component lives.
#[hook]
fn use_channel(on_message: impl Fn(J) + 'static) {
    let on_message = std::rc::Rc::new(on_message);
    use_effect_with((), move |_| {
        let channel = BroadcastChannel::new(crate::CHANNEL).ok();
        let handler = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            if !crate::for_this_app(&e.data()) {
                return;
            }
            if let Some(text) = js_sys::JSON::stringify(&e.data()).ok().and_then(|s| s.as_string())
                && let Ok(j) = serde_json::from_str::<J>(&text) {
                    on_message(j);
                }
        });
        if let Some(c) = &channel {
            c.set_onmessage(Some(handler.as_ref().unchecked_ref()));
        }
        move || {
            if let Some(c) = channel {
                c.set_onmessage(None);
                c.close();
            }
            drop(handler);
        }
    });
}

/// A number that goes up whenever the data of `space` changes, in this tab, another
/// tab, or through sync: use it as a dependency to query again.
#[hook]
pub fn use_changes(space: Option<String>) -> u64 {
    let counter = use_state(|| 0u64);
    {
        let counter = counter.clone();
        use_channel(move |j| {
            if j["type"] == "changed" && space.as_deref().is_none_or(|s| j["space"] == s) {
                counter.set(*counter + 1);
            }
        });
    }
    *counter
}

/// The sync status the worker last announced (`state`: online, syncing, offline or
/// error; `pending`; `last_synced`; `last_error`; `rejected`, why an entry from another
/// member was refused).
#[hook]
pub fn use_sync_status() -> Option<J> {
    let status = use_state(|| None);
    {
        let status = status.clone();
        use_channel(move |j| {
            if j["type"] == "sync" {
                status.set(Some(j["status"].clone()));
            }
        });
    }
    (*status).clone()
}

/// What the kill switch kept because the server lacks it, while it waits for the user's
/// consent: `[{"space", "pending", "blobs_pending"}]`, or `None` when nothing waits. The
/// app was withdrawn (the server answers `410` for its manifest, or a page posted
/// `kill`); everything else of it is gone, and these changes are lost for good once
/// erased. Ask the user, then call [`erase_kept_data`].
#[hook]
pub fn use_kept_data() -> Option<J> {
    let kept = use_state(|| None::<J>);
    {
        let kept = kept.clone();
        use_effect_with((), move |_| {
            // A page opened after the announcement learns of it from status.
            wasm_bindgen_futures::spawn_local(async move {
                if let Ok(status) = call("GET", "status", None).await
                    && status["consent_needed"] == true
                {
                    kept.set(Some(status["kept"].clone()));
                }
            });
        });
    }
    {
        let kept = kept.clone();
        use_channel(move |j| {
            if j["type"] == "killed" {
                let waiting = j["kept"].as_array().is_some_and(|k| !k.is_empty());
                kept.set(waiting.then(|| j["kept"].clone()));
            }
        });
    }
    (*kept).clone()
}

/// Erases what the kill switch kept ([`use_kept_data`]), changes the server never
/// received included. Call it only once the user agreed.
pub async fn erase_kept_data() -> Result<J, ApiError> {
    call("POST", "erase", Some(&json!({ "confirm": true }))).await
}
