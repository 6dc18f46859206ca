//! Stead's demo app: a todo list whose data lives in Stead's service worker (OPFS, end-to-
//! end encrypted log, synced with the server), so it starts offline, keeps every edit,
//! merges edits from other devices, and updates when a new build is out.

use serde_json::{Value as J, json};
use stead_yew::UpdatePrompt;
use stead_yew::data::{self, ApiError};
use web_sys::HtmlInputElement;
use yew::platform::spawn_local;
use yew::prelude::*;

#[derive(Debug, Clone, PartialEq)]
struct Todo {
    id: String,
    text: String,
    done: bool,
}

/// The app's data, declared for the worker: it validates writes and indexes `done`.
fn schema() -> J {
    json!({
        "version": 1,
        "collections": {
            "todos": {
                "fields": {
                    "text": {"type": "string", "required": true},
                    "done": {"type": "bool", "default": false},
                    "votes": {"type": "counter"},
                    "tags": {"type": "set", "of": "string"}
                },
                "indexes": [{"field": "done"}]
            }
        }
    })
}

async fn load(space: &str) -> Result<Vec<Todo>, ApiError> {
    let page = data::call("GET", &format!("spaces/{space}/collections/todos?limit=1000"), None).await?;
    Ok(page["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Todo {
            id: r["id"].as_str().unwrap_or_default().to_owned(),
            text: r["fields"]["text"].as_str().unwrap_or_default().to_owned(),
            done: r["fields"]["done"].as_bool().unwrap_or(false),
        })
        .collect())
}

#[function_component]
fn App() -> Html {
    let space = use_state(|| None::<String>);
    let todos = use_state(Vec::<Todo>::new);
    let error = use_state(|| None::<String>);
    let invite = use_state(|| None::<String>);
    let input = use_node_ref();
    let changes = data::use_changes((*space).clone());
    let sync = data::use_sync_status();

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
        let (todos, error) = (todos.clone(), error.clone());
        use_effect_with(((*space).clone(), changes), move |(space, _)| {
            if let Some(space) = space.clone() {
                spawn_local(async move {
                    match load(&space).await {
                        Ok(t) => todos.set(t),
                        Err(e) => error.set(Some(e.to_string())),
                    }
                });
            }
        });
    }

    // Every write goes to the worker; the list refreshes from its change event.
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
            if text.is_empty() {
                return;
            }
            field.set_value("");
            run("POST", format!("spaces/{space}/collections/todos"), Some(json!({"fields": {"text": text, "done": false}})));
        })
    };

    let on_invite = {
        let (space, invite, error) = (space.clone(), invite.clone(), error.clone());
        Callback::from(move |_: MouseEvent| {
            let Some(space) = (*space).clone() else { return };
            let (invite, error) = (invite.clone(), error.clone());
            spawn_local(async move {
                match data::invite_link(&space).await {
                    Ok(link) => invite.set(Some(link)),
                    Err(e) => error.set(Some(e.to_string())),
                }
            });
        })
    };

    let sp = (*space).clone().unwrap_or_default();
    let items = todos.iter().map(|todo| {
        let toggle = {
            let (run, path, done) = (run.clone(), format!("spaces/{sp}/collections/todos/{}", todo.id), todo.done);
            Callback::from(move |_: Event| run("PATCH", path.clone(), Some(json!({"fields": {"done": !done}}))))
        };
        let remove = {
            let (run, path) = (run.clone(), format!("spaces/{sp}/collections/todos/{}", todo.id));
            Callback::from(move |_: MouseEvent| run("DELETE", path.clone(), None))
        };
        html! {
            <li key={todo.id.clone()} class={classes!("todo", todo.done.then_some("done"))}>
                <input type="checkbox" checked={todo.done} onchange={toggle} />
                <span>{ &todo.text }</span>
                <button class="remove" aria-label="Remove" onclick={remove}>{"×"}</button>
            </li>
        }
    });
    let left = todos.iter().filter(|t| !t.done).count();
    let sync_state = sync.as_ref().and_then(|s| s["state"].as_str().map(str::to_owned)).unwrap_or_else(|| "starting".into());
    let pending = sync.as_ref().and_then(|s| s["pending"].as_u64()).unwrap_or(0);

    html! {
        <main>
            <UpdatePrompt />
            <h1>{"Todo"}</h1>
            <form {onsubmit}>
                <input id="new-todo" type="text" ref={input} placeholder="What needs doing?" autofocus=true />
                <button id="add" type="submit" disabled={space.is_none()}>{"Add"}</button>
            </form>
            <ul id="todos">{ for items }</ul>
            <p id="left">{ format!("{left} left") }</p>
            if let Some(e) = &*error {
                <p id="error" role="alert">{ e }</p>
            }
            <p id="sync-status" data-state={sync_state.clone()}>{ format!("sync: {sync_state}, {pending} pending") }</p>
            <button id="invite" onclick={on_invite} disabled={space.is_none()}>{"Invite a device"}</button>
            if let Some(link) = &*invite {
                <input id="invite-link" type="text" readonly=true value={link.clone()} />
            }
            <footer>{"Works offline: your data lives in Stead's service worker and syncs end-to-end encrypted."}</footer>
        </main>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
