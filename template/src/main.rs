//! Stead App: a list whose data lives in Stead's service worker (OPFS, an end-to-end
//! encrypted log synced with the server), so it starts offline, keeps every edit and
//! merges edits from other devices.

mod chrome;

use chrome::{InstallButton, SyncBadge};
use serde_json::{Value as J, json};
use stead_yew::{UpdatePrompt, data};
use web_sys::HtmlInputElement;
use yew::platform::spawn_local;
use yew::prelude::*;

/// The app's data, declared to the worker, which validates writes and keeps the index.
fn schema() -> J {
    serde_json::from_str(include_str!("../schema.json")).unwrap_or(J::Null)
}

#[derive(Debug, Clone, PartialEq)]
struct Item {
    id: String,
    text: String,
    done: bool,
}

async fn load(space: &str) -> Result<Vec<Item>, data::ApiError> {
    let page = data::call("GET", &format!("spaces/{space}/collections/items?limit=1000"), None).await?;
    Ok(page["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Item {
            id: r["id"].as_str().unwrap_or_default().to_owned(),
            text: r["fields"]["text"].as_str().unwrap_or_default().to_owned(),
            done: r["fields"]["done"].as_bool().unwrap_or(false),
        })
        .collect())
}

#[function_component]
fn App() -> Html {
    let space = use_state(|| None::<String>);
    let items = use_state(Vec::<Item>::new);
    let error = use_state(|| None::<String>);
    let input = use_node_ref();
    let changes = data::use_changes((*space).clone());

    {
        let (space, error) = (space.clone(), error.clone());
        use_effect_with((), move |_| {
            spawn_local(async move {
                match data::open_space(&schema()).await {
                    Ok(s) => space.set(Some(s)),
                    Err(e) => error.set(Some(e.to_string())),
                }
            });
        });
    }
    {
        // Load again whenever the data changes: here, in another tab, or through sync.
        let (items, error) = (items.clone(), error.clone());
        use_effect_with(((*space).clone(), changes), move |(space, _)| {
            if let Some(space) = space.clone() {
                spawn_local(async move {
                    match load(&space).await {
                        Ok(list) => items.set(list),
                        Err(e) => error.set(Some(e.to_string())),
                    }
                });
            }
        });
    }

    let run = {
        let error = error.clone();
        move |method: &'static str, path: String, body: Option<J>| {
            let error = error.clone();
            spawn_local(async move {
                if let Err(e) = data::call(method, &path, body.as_ref()).await {
                    error.set(Some(e.to_string()));
                }
            });
        }
    };
    let onsubmit = {
        let (space, input, run) = (space.clone(), input.clone(), run.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let (Some(space), Some(field)) = ((*space).clone(), input.cast::<HtmlInputElement>()) else { return };
            let text = field.value().trim().to_owned();
            if !text.is_empty() {
                field.set_value("");
                run("POST", format!("spaces/{space}/collections/items"), Some(json!({"fields": {"text": text}})));
            }
        })
    };

    let sp = (*space).clone().unwrap_or_default();
    let rows = items.iter().map(|item| {
        let path = format!("spaces/{sp}/collections/items/{}", item.id);
        let toggle = {
            let (run, path, done) = (run.clone(), path.clone(), item.done);
            Callback::from(move |_: Event| run("PATCH", path.clone(), Some(json!({"fields": {"done": !done}}))))
        };
        let remove = {
            let run = run.clone();
            Callback::from(move |_: MouseEvent| run("DELETE", path.clone(), None))
        };
        html! {
            <li key={item.id.clone()} class={classes!(item.done.then_some("done"))}>
                <input type="checkbox" checked={item.done} onchange={toggle} />
                <span>{ &item.text }</span>
                <button aria-label="Remove" onclick={remove}>{"×"}</button>
            </li>
        }
    });

    html! {
        <main>
            <UpdatePrompt />
            <header>
                <h1>{"Stead App"}</h1>
                <SyncBadge />
                <InstallButton />
            </header>
            <form {onsubmit}>
                <input id="new-item" type="text" ref={input} placeholder="Add an item" autofocus=true />
                <button id="add" type="submit" disabled={space.is_none()}>{"Add"}</button>
            </form>
            <ul id="items">{ for rows }</ul>
            if let Some(e) = &*error {
                <p id="error" role="alert">{ e }</p>
            }
            <footer>{"Works offline: your data lives on this device and syncs end-to-end encrypted."}</footer>
        </main>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
