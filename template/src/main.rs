//! Stead App: a list whose data lives in Stead's service worker (OPFS, an end-to-end
//! encrypted log synced with the server), so it starts offline, keeps every edit and
//! merges edits from other devices.
//!
//! `SteadProvider` opens the app's space; `use_query` keeps the list live (edits here, in
//! another tab, or synced in from another device), `use_mutation` writes, and
//! `InviteDialog` makes the link that adds another device (or person) to the list.

use serde::{Deserialize, Serialize};
use serde_json::{Value as J, json};
use stead_yew::{Filter, InstallButton, InviteDialog, SteadProvider, SyncBadge, UpdateBanner, use_mutation, use_query};
use web_sys::HtmlInputElement;
use yew::prelude::*;

/// The app's data, declared to the worker, which validates writes and keeps the index.
fn schema() -> J {
    serde_json::from_str(include_str!("../schema.json")).unwrap_or(J::Null)
}

/// An item's fields, as `schema.json` declares them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    text: String,
    #[serde(default)]
    done: bool,
}

#[function_component]
fn Items() -> Html {
    let items = use_query::<Item>("items", Filter::All);
    let write = use_mutation();
    let input = use_node_ref();

    let onsubmit = {
        let (write, input) = (write.clone(), input.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let Some(field) = input.cast::<HtmlInputElement>() else { return };
            let text = field.value().trim().to_owned();
            if !text.is_empty() {
                field.set_value("");
                write.create("items", Item { text, done: false });
            }
        })
    };

    let rows = items.value.iter().flatten().map(|item| {
        let toggle = {
            let (write, id, done) = (write.clone(), item.id.clone(), item.fields.done);
            Callback::from(move |_: Event| write.update("items", &id, json!({ "done": !done })))
        };
        let remove = {
            let (write, id) = (write.clone(), item.id.clone());
            Callback::from(move |_: MouseEvent| write.delete("items", &id))
        };
        html! {
            <li key={item.id.clone()} class={classes!(item.fields.done.then_some("done"))}>
                <input type="checkbox" checked={item.fields.done} onchange={toggle} aria-label="Done" />
                <span>{ &item.fields.text }</span>
                <button aria-label="Remove" onclick={remove}>{"×"}</button>
            </li>
        }
    });

    html! {
        <>
            <form {onsubmit}>
                <input id="new-item" type="text" ref={input} placeholder="Add an item" autofocus=true aria-label="New item" />
                <button id="add" type="submit" disabled={!write.ready()}>{"Add"}</button>
            </form>
            <ul id="items">{ for rows }</ul>
            if let Some(e) = write.error().or(items.error.clone()) {
                <p id="error" role="alert">{ e.to_string() }</p>
            }
        </>
    }
}

#[function_component]
fn App() -> Html {
    html! {
        <SteadProvider schema={schema()}>
            <main>
                <UpdateBanner />
                <header>
                    <h1>{"Stead App"}</h1>
                    <SyncBadge />
                    <InstallButton />
                </header>
                <Items />
                <InviteDialog label="Share with another device" />
                <footer>{"Works offline: your data lives on this device and syncs end-to-end encrypted."}</footer>
            </main>
        </SteadProvider>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
