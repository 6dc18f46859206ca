//! Stead App: a blank page with Stead's frame (update banner, sync badge, install button)
//! and a space of its own in the service worker, ready for data.

use serde_json::Value as J;
use stead_yew::{InstallButton, SteadProvider, SyncBadge, UpdateBanner};
use yew::prelude::*;

/// The app's data, declared to the worker (`schema.json`).
fn schema() -> J {
    serde_json::from_str(include_str!("../schema.json")).unwrap_or(J::Null)
}

#[function_component]
fn App() -> Html {
    // The provider opens the app's space and starts sync; under it, `use_query`,
    // `use_record` and `use_mutation` read and write.
    html! {
        <SteadProvider schema={schema()}>
            <main>
                <UpdateBanner />
                <header>
                    <h1>{"Stead App"}</h1>
                    <SyncBadge />
                    <InstallButton />
                </header>
                <p>{"Edit src/main.rs, then run `stead build` again."}</p>
            </main>
        </SteadProvider>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
