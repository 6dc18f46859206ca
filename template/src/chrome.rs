//! The app's frame: a sync badge and an install button. (The update banner is
//! stead-yew's `UpdatePrompt`.)

use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use yew::prelude::*;

/// The worker's sync state and how many changes wait to be sent.
#[function_component]
pub fn SyncBadge() -> Html {
    let status = stead_yew::data::use_sync_status();
    let state = status.as_ref().and_then(|s| s["state"].as_str()).unwrap_or("starting").to_owned();
    let pending = status.as_ref().and_then(|s| s["pending"].as_u64()).unwrap_or(0);
    let text = if pending > 0 { format!("{state} · {pending} to send") } else { state.clone() };
    html! { <span id="sync-status" class="badge" data-state={state} role="status">{ text }</span> }
}

/// Offers to install the app where the browser allows it (`beforeinstallprompt`):
/// hidden until then, and once installed.
#[function_component]
pub fn InstallButton() -> Html {
    // The browser's deferred prompt event, kept until the user asks.
    let prompt = use_state(|| None::<JsValue>);
    {
        let prompt = prompt.clone();
        use_effect_with((), move |_| {
            let window = web_sys::window();
            let offered = {
                let prompt = prompt.clone();
                Closure::<dyn Fn(web_sys::Event)>::new(move |e: web_sys::Event| {
                    // Keep the browser's own mini bar away: the button asks instead.
                    e.prevent_default();
                    prompt.set(Some(e.into()));
                })
            };
            let installed = Closure::<dyn Fn(web_sys::Event)>::new(move |_: web_sys::Event| prompt.set(None));
            if let Some(w) = &window {
                let _ = w.add_event_listener_with_callback("beforeinstallprompt", offered.as_ref().unchecked_ref());
                let _ = w.add_event_listener_with_callback("appinstalled", installed.as_ref().unchecked_ref());
            }
            move || {
                if let Some(w) = &window {
                    let _ = w.remove_event_listener_with_callback("beforeinstallprompt", offered.as_ref().unchecked_ref());
                    let _ = w.remove_event_listener_with_callback("appinstalled", installed.as_ref().unchecked_ref());
                }
            }
        });
    }
    let Some(event) = (*prompt).clone() else { return html! {} };
    let onclick = Callback::from(move |_: MouseEvent| {
        // A prompt can be shown once; the browser offers a new event if the user declines.
        if let Ok(show) = js_sys::Reflect::get(&event, &"prompt".into()).and_then(|f| f.dyn_into::<js_sys::Function>()) {
            let _ = show.call0(&event);
        }
        prompt.set(None);
    });
    html! { <button id="install" {onclick}>{"Install"}</button> }
}
