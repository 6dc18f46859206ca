//! Installing the app: Chromium's `beforeinstallprompt`, and the Web Install API
//! (`navigator.install()`) where the browser has it.
//!
//! Chromium offers installation once per page load, as soon as it finds the app
//! installable, which can be before the app's wasm has even started. A page keeps an
//! early offer with this line in `index.html`'s `<head>` (the template and the examples
//! have it), and [`use_install_prompt`] picks it up on mount:
//!
//! ```html
//! <script>addEventListener('beforeinstallprompt', (e) => { e.preventDefault(); self.steadInstallPrompt = e; });</script>
//! ```

use gloo_events::{EventListener, EventListenerOptions};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use yew::platform::spawn_local;
use yew::prelude::*;

/// Whether the app can be installed now, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallPrompt {
    /// The browser would install the app if asked: show an install button.
    pub available: bool,
    /// The app runs installed (in its own window), or was installed from this page.
    pub installed: bool,
    /// Shows the browser's install dialog.
    pub install: Callback<()>,
}

/// Follows the browser's offer to install the app. Chromium fires `beforeinstallprompt`
/// once it finds the app installable (manifest, icons, a worker); the event is kept and
/// replayed when the user asks, instead of the browser's own mini bar. A browser with
/// the Web Install API (`navigator.install`) can install at any time.
#[hook]
pub fn use_install_prompt() -> InstallPrompt {
    // The browser's deferred prompt event, kept until the user asks.
    let deferred = use_state(early_offer);
    let installed = use_state(standalone);
    let web_install = use_memo((), |_| has_web_install());
    {
        let (deferred, installed) = (deferred.clone(), installed.clone());
        use_effect_with((), move |_| {
            let late = deferred.clone();
            let window = web_sys::window();
            let listeners = window.map(|w| {
                let offered = {
                    let deferred = deferred.clone();
                    // Not passive: the default (the browser's own bar) is prevented.
                    EventListener::new_with_options(&w, "beforeinstallprompt", EventListenerOptions::enable_prevent_default(), move |e| {
                        e.prevent_default();
                        forget_early_offer();
                        deferred.set(Some(e.clone().into()));
                    })
                };
                let done = EventListener::new(&w, "appinstalled", move |_| {
                    forget_early_offer();
                    deferred.set(None);
                    installed.set(true);
                });
                (offered, done)
            });
            // An offer made between the first render (which read the early one) and this
            // effect went to the page's early listener, not to ours: take it from there.
            if late.is_none()
                && let Some(e) = early_offer()
            {
                late.set(Some(e));
            }
            move || drop(listeners)
        });
    }
    let install = {
        let (deferred, installed) = (deferred.clone(), installed.clone());
        let web_install = *web_install;
        Callback::from(move |()| {
            if let Some(event) = (*deferred).clone() {
                // An event prompts once; the browser fires a new one if the user declines.
                forget_early_offer();
                deferred.set(None);
                if let Ok(prompt) = js_sys::Reflect::get(&event, &"prompt".into()).and_then(|f| f.dyn_into::<js_sys::Function>()) {
                    let _ = prompt.call0(&event);
                }
            } else if web_install {
                let installed = installed.clone();
                spawn_local(async move {
                    if web_install_now().await {
                        installed.set(true);
                    }
                });
            }
        })
    };
    let available = !*installed && (deferred.is_some() || *web_install);
    InstallPrompt { available, installed: *installed, install }
}

/// Where the page's early listener keeps an offer made before the app ran.
const EARLY_OFFER: &str = "steadInstallPrompt";

fn early_offer() -> Option<JsValue> {
    let w = web_sys::window()?;
    js_sys::Reflect::get(&w, &EARLY_OFFER.into()).ok().filter(|v| v.is_object())
}

fn forget_early_offer() {
    if let Some(w) = web_sys::window() {
        let _ = js_sys::Reflect::delete_property(&w, &EARLY_OFFER.into());
    }
}

/// Whether this page runs as an installed app (its own window).
fn standalone() -> bool {
    let Some(w) = web_sys::window() else { return false };
    ["(display-mode: standalone)", "(display-mode: minimal-ui)", "(display-mode: window-controls-overlay)"]
        .iter()
        .any(|q| w.match_media(q).ok().flatten().is_some_and(|m| m.matches()))
}

fn has_web_install() -> bool {
    web_sys::window().is_some_and(|w| js_sys::Reflect::has(&w.navigator(), &"install".into()).unwrap_or(false))
}

/// `navigator.install()`: the current page's app, by its manifest `id`. Resolves when
/// the user accepted; rejects when they dismissed it.
async fn web_install_now() -> bool {
    let Some(w) = web_sys::window() else { return false };
    let navigator = w.navigator();
    let Ok(f) = js_sys::Reflect::get(&navigator, &"install".into()).and_then(|f| f.dyn_into::<js_sys::Function>()) else { return false };
    let Ok(promise) = f.call0(&navigator).and_then(|p| p.dyn_into::<js_sys::Promise>()) else { return false };
    JsFuture::from(promise).await.is_ok()
}
