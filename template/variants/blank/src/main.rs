//! Stead App: a blank page with Stead's frame (update banner, sync badge, install button)
//! and a space of its own in the service worker, ready for data.

mod chrome;

use chrome::{InstallButton, SyncBadge};
use serde_json::Value as J;
use stead_yew::{UpdatePrompt, data};
use yew::platform::spawn_local;
use yew::prelude::*;

/// The app's data, declared to the worker (`schema.json`).
fn schema() -> J {
    serde_json::from_str(include_str!("../schema.json")).unwrap_or(J::Null)
}

#[function_component]
fn App() -> Html {
    let error = use_state(|| None::<String>);
    {
        // Opening the space starts sync; `data::call` reads and writes in it.
        let error = error.clone();
        use_effect_with((), move |_| {
            spawn_local(async move {
                if let Err(e) = data::open_space(&schema()).await {
                    error.set(Some(e.to_string()));
                }
            });
        });
    }
    html! {
        <main>
            <UpdatePrompt />
            <header>
                <h1>{"Stead App"}</h1>
                <SyncBadge />
                <InstallButton />
            </header>
            <p>{"Edit src/main.rs, then run `stead build` again."}</p>
            if let Some(e) = &*error {
                <p id="error" role="alert">{ e }</p>
            }
        </main>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
