//! Stead's demo app: a todo list whose data lives in Stead's service worker (OPFS, end-to-
//! end encrypted log, synced with the server), so it starts offline, keeps every edit,
//! merges edits from other devices, updates when a new build is out, and installs.
//!
//! Everything Stead-specific goes through stead-yew's hooks: [`SteadProvider`] opens the
//! space, `use_query` keeps the list live, `use_mutation` writes.

use serde::{Deserialize, Serialize};
use serde_json::Value as J;
use stead_yew::{Filter, InstallButton, InviteDialog, SteadProvider, SyncBadge, UpdateBanner, use_mutation, use_persist, use_query, use_stead};
use web_sys::HtmlInputElement;
use yew::prelude::*;

/// A todo's fields, as the schema declares them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Todo {
    text: String,
    #[serde(default)]
    done: bool,
}

/// The app's data, declared for the worker: it validates writes and indexes `done`.
fn schema() -> J {
    serde_json::from_str(include_str!("../schema.json")).unwrap_or(J::Null)
}

#[function_component]
fn Todos() -> Html {
    let todos = use_query::<Todo>("todos", Filter::All);
    let write = use_mutation();
    let stead = use_stead();
    let input = use_node_ref();

    let onsubmit = {
        let (write, input) = (write.clone(), input.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let Some(field) = input.cast::<HtmlInputElement>() else { return };
            let text = field.value().trim().to_owned();
            if text.is_empty() {
                return;
            }
            field.set_value("");
            write.create("todos", Todo { text, done: false });
        })
    };

    let list = todos.value.clone().unwrap_or_default();
    let items = list.iter().map(|todo| {
        let toggle = {
            let (write, id, done) = (write.clone(), todo.id.clone(), todo.fields.done);
            Callback::from(move |_: Event| write.update("todos", &id, serde_json::json!({ "done": !done })))
        };
        let remove = {
            let (write, id) = (write.clone(), todo.id.clone());
            Callback::from(move |_: MouseEvent| write.delete("todos", &id))
        };
        html! {
            <li key={todo.id.clone()} class={classes!("todo", todo.fields.done.then_some("done"))}>
                <input type="checkbox" checked={todo.fields.done} onchange={toggle} aria-label="Done" />
                <span>{ &todo.fields.text }</span>
                <button class="remove" aria-label="Remove" onclick={remove}>{"×"}</button>
            </li>
        }
    });
    let left = list.iter().filter(|t| !t.fields.done).count();
    let failed = stead.and_then(|s| match s.space {
        stead_yew::SpaceState::Failed(e) => Some(e),
        _ => None,
    });
    let error = failed.or_else(|| write.error()).or(todos.error.clone());

    html! {
        <>
            <form {onsubmit}>
                <input id="new-todo" type="text" ref={input} placeholder="What needs doing?" autofocus=true aria-label="New todo" />
                <button id="add" type="submit" disabled={!write.ready()}>{"Add"}</button>
            </form>
            <ul id="todos">{ for items }</ul>
            if todos.value.as_ref().is_some_and(Vec::is_empty) {
                <p id="empty" class="empty">{"Nothing to do. Add something above."}</p>
            }
            <p id="left">{ format!("{left} left") }</p>
            if let Some(e) = error {
                <p id="error" role="alert">{ e.to_string() }</p>
            }
            <section class="share">
                <InviteDialog />
            </section>
        </>
    }
}

/// Whether the browser keeps the list when the disk runs low, and a button to ask it.
#[function_component]
fn KeepData() -> Html {
    let persist = use_persist();
    let asked = use_state(|| false);
    let ask = {
        let (request, asked) = (persist.request.clone(), asked.clone());
        Callback::from(move |_: MouseEvent| {
            asked.set(true);
            request.emit(());
        })
    };
    match (persist.persisted, *asked) {
        (Some(true), _) => html! { <p id="persisted">{"Your browser keeps this list on this device even when space runs low."}</p> },
        (Some(false), false) => html! {
            <p>
                {"When space runs low, your browser may clear unsynced changes. "}
                <button id="persist" onclick={ask}>{"Keep my list on this device"}</button>
            </p>
        },
        (Some(false), true) => html! {
            <p id="persist-refused">{"Your browser did not agree this time. Installing the app, or using it often, usually makes it agree."}</p>
        },
        (None, _) => html! {},
    }
}

#[function_component]
fn App() -> Html {
    html! {
        <SteadProvider schema={schema()}>
            <main>
                <UpdateBanner />
                <header>
                    <h1>{"Todo"}</h1>
                    <SyncBadge />
                    <InstallButton />
                </header>
                <Todos />
                <KeepData />
                <footer>{"Works offline: your list lives on this device and syncs end-to-end encrypted."}</footer>
            </main>
        </SteadProvider>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
