//! Stead's demo app: a todo list kept in the browser's local storage, served by Stead's
//! service worker so it installs, starts offline and updates when a new build is out.

use serde::{Deserialize, Serialize};
use stead_yew::UpdatePrompt;
use web_sys::HtmlInputElement;
use yew::prelude::*;

const STORAGE_KEY: &str = "stead-todo";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Todo {
    id: u64,
    text: String,
    done: bool,
}

fn load() -> Vec<Todo> {
    web_sys::window()
        .and_then(|w| w.local_storage().ok().flatten())
        .and_then(|s| s.get_item(STORAGE_KEY).ok().flatten())
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default()
}

fn save(todos: &[Todo]) {
    if let Some(storage) = web_sys::window().and_then(|w| w.local_storage().ok().flatten()) {
        let _ = storage.set_item(STORAGE_KEY, &serde_json::to_string(todos).unwrap_or_default());
    }
}

#[function_component]
fn App() -> Html {
    let todos = use_state(load);
    let input = use_node_ref();

    let update = {
        let todos = todos.clone();
        move |next: Vec<Todo>| {
            save(&next);
            todos.set(next);
        }
    };

    let onsubmit = {
        let (todos, input, update) = (todos.clone(), input.clone(), update.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let Some(field) = input.cast::<HtmlInputElement>() else { return };
            let text = field.value().trim().to_owned();
            if text.is_empty() {
                return;
            }
            let mut next = (*todos).clone();
            let id = next.iter().map(|t| t.id + 1).max().unwrap_or(1);
            next.push(Todo { id, text, done: false });
            field.set_value("");
            update(next);
        })
    };

    let items = todos.iter().map(|todo| {
        let toggle = {
            let (todos, update, id) = (todos.clone(), update.clone(), todo.id);
            Callback::from(move |_: Event| {
                let next = todos.iter().cloned().map(|mut t| {
                    if t.id == id {
                        t.done = !t.done;
                    }
                    t
                });
                update(next.collect());
            })
        };
        let remove = {
            let (todos, update, id) = (todos.clone(), update.clone(), todo.id);
            Callback::from(move |_: MouseEvent| update(todos.iter().filter(|t| t.id != id).cloned().collect()))
        };
        html! {
            <li key={todo.id} class={classes!("todo", todo.done.then_some("done"))}>
                <input type="checkbox" checked={todo.done} onchange={toggle} />
                <span>{ &todo.text }</span>
                <button class="remove" aria-label="Remove" onclick={remove}>{"×"}</button>
            </li>
        }
    });
    let left = todos.iter().filter(|t| !t.done).count();

    html! {
        <main>
            <UpdatePrompt />
            <h1>{"Todo"}</h1>
            <form {onsubmit}>
                <input id="new-todo" type="text" ref={input} placeholder="What needs doing?" autofocus=true />
                <button id="add" type="submit">{"Add"}</button>
            </form>
            <ul id="todos">{ for items }</ul>
            <p id="left">{ format!("{left} left") }</p>
            <footer>{"Works offline: served by Stead's service worker."}</footer>
        </main>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
