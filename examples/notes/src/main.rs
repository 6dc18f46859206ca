//! Stead's notes example: notes with pictures, each note's history and an undo, and a
//! search through the schema's index on titles. The data lives in Stead's service
//! worker (pictures as sealed blobs), so the app starts offline and syncs its notes and
//! pictures between devices, end-to-end encrypted.
//!
//! Run with: `stead build --app examples/notes && stead serve examples/notes/dist`.

use serde::{Deserialize, Serialize};
use serde_json::{Value as J, json};
use stead_yew::data::BlobRef;
use stead_yew::{
    Filter, InstallButton, InviteDialog, Record, SteadProvider, SyncBadge, UpdateBanner, use_history, use_mutation, use_query, use_record,
    use_space,
};
use wasm_bindgen::JsCast;
use web_sys::{HtmlInputElement, HtmlTextAreaElement};
use yew::platform::spawn_local;
use yew::prelude::*;

fn schema() -> J {
    serde_json::from_str(include_str!("../schema.json")).unwrap_or(J::Null)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    title: String,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Attachment {
    note: String,
    image: BlobRef,
    #[serde(default)]
    name: String,
}

/// The search key of a title: what the index on `title_key` orders by.
fn key(title: &str) -> String {
    title.trim().to_lowercase()
}

/// Titles starting with `query`, through the index: `query` ≤ key < `query` + U+10FFFF.
fn search(query: &str) -> Filter {
    let q = key(query);
    if q.is_empty() {
        return Filter::All;
    }
    Filter::Range { field: "title_key".into(), from: Some(json!(q)), to: Some(json!(format!("{q}\u{10ffff}"))) }
}

#[derive(Properties, PartialEq)]
struct ListProps {
    selected: Option<String>,
    on_select: Callback<String>,
}

#[function_component]
fn NoteList(props: &ListProps) -> Html {
    let query = use_state(String::new);
    let notes = use_query::<Note>("notes", search(&query));
    let write = use_mutation();
    let oninput = {
        let query = query.clone();
        Callback::from(move |e: InputEvent| {
            if let Some(input) = e.target().and_then(|t| t.dyn_into::<HtmlInputElement>().ok()) {
                query.set(input.value());
            }
        })
    };
    let new_note = {
        let (write, select) = (write.clone(), props.on_select.clone());
        Callback::from(move |_: MouseEvent| {
            let select = select.clone();
            write.create_then("notes", json!({"title": "Untitled", "title_key": key("Untitled"), "body": ""}), move |r| select.emit(r.id));
        })
    };
    let list = notes.value.clone().unwrap_or_default();
    let items = list.iter().map(|n: &Record<Note>| {
        let pick = {
            let (select, id) = (props.on_select.clone(), n.id.clone());
            Callback::from(move |_: MouseEvent| select.emit(id.clone()))
        };
        let selected = props.selected.as_deref() == Some(n.id.as_str());
        html! {
            <li key={n.id.clone()} class={classes!("note", selected.then_some("selected"))}>
                <button onclick={pick}>{ &n.fields.title }</button>
            </li>
        }
    });
    html! {
        <nav>
            <div class="row">
                <button id="new-note" onclick={new_note} disabled={!write.ready()}>{"New note"}</button>
            </div>
            <input id="search" type="search" placeholder="Search titles" value={(*query).clone()} {oninput} aria-label="Search titles" />
            <ul id="notes">{ for items }</ul>
            if notes.value.as_ref().is_some_and(Vec::is_empty) {
                <p class="empty">{ if query.is_empty() { "No notes yet." } else { "No title starts with that." } }</p>
            }
            <InviteDialog />
        </nav>
    }
}

#[derive(Properties, PartialEq)]
struct EditorProps {
    id: String,
}

#[function_component]
fn Editor(props: &EditorProps) -> Html {
    let note = use_record::<Note>("notes", &props.id);
    let pictures = use_query::<Attachment>("attachments", Filter::eq("note", &props.id));
    let history = use_history("notes", &props.id);
    let write = use_mutation();
    let space = use_space().unwrap_or_default();
    let uploading = use_state(|| false);

    let Some(Some(record)) = note.value.clone() else {
        return html! { <p class="empty">{ if note.loading() { "Opening…" } else { "This note was deleted." } }</p> };
    };
    let id = props.id.clone();
    let on_title = {
        let (write, id) = (write.clone(), id.clone());
        Callback::from(move |e: Event| {
            if let Some(input) = e.target().and_then(|t| t.dyn_into::<HtmlInputElement>().ok()) {
                let title = input.value();
                write.update("notes", &id, json!({"title": title, "title_key": key(&title)}));
            }
        })
    };
    let on_body = {
        let (write, id) = (write.clone(), id.clone());
        Callback::from(move |e: Event| {
            if let Some(area) = e.target().and_then(|t| t.dyn_into::<HtmlTextAreaElement>().ok()) {
                write.update("notes", &id, json!({"body": area.value()}));
            }
        })
    };
    let on_attach = {
        let (write, id, space, uploading) = (write.clone(), id.clone(), space.clone(), uploading.clone());
        Callback::from(move |e: Event| {
            let Some(input) = e.target().and_then(|t| t.dyn_into::<HtmlInputElement>().ok()) else { return };
            let Some(files) = input.files() else { return };
            let (write, id, space, uploading) = (write.clone(), id.clone(), space.clone(), uploading.clone());
            let files: Vec<web_sys::File> = (0..files.length()).filter_map(|i| files.get(i)).collect();
            input.set_value("");
            uploading.set(true);
            spawn_local(async move {
                for file in files {
                    match stead_yew::data::upload_blob(&space, &file).await {
                        Ok(image) => write.create("attachments", Attachment { note: id.clone(), image, name: file.name() }),
                        Err(e) => web_sys::console::warn_1(&e.to_string().into()),
                    }
                }
                uploading.set(false);
            });
        })
    };
    let undo = {
        let write = write.clone();
        Callback::from(move |_: MouseEvent| write.undo(1))
    };
    let delete = {
        let (write, id) = (write.clone(), id.clone());
        Callback::from(move |_: MouseEvent| write.delete("notes", &id))
    };
    let images = pictures.value.clone().unwrap_or_default().into_iter().map(|a| {
        html! { <img key={a.id.clone()} src={a.fields.image.url(&space)} alt={a.fields.name.clone()} /> }
    });
    let changes = history.value.clone().unwrap_or_default();
    let lines = describe(&changes).into_iter().rev().take(20).map(|(when, what)| html! { <li>{ format!("{when}: {what}") }</li> });
    html! {
        <section class="editor">
            <input id="title" type="text" value={record.fields.title.clone()} onchange={on_title} aria-label="Title" />
            <textarea id="body" value={record.fields.body.clone()} onchange={on_body} aria-label="Note" placeholder="Write here" />
            <div id="images" class="images">{ for images }</div>
            <div class="row">
                <label>{"Add pictures "}<input id="attach" type="file" accept="image/png,image/jpeg,image/gif,image/webp" multiple=true onchange={on_attach} /></label>
                if *uploading { <span>{"Storing…"}</span> }
            </div>
            <div class="row">
                <button id="undo" onclick={undo}>{"Undo my last change"}</button>
                <button id="delete" onclick={delete}>{"Delete note"}</button>
            </div>
            <h2 class="history-title">{"History"}</h2>
            <ul id="history" class="history">{ for lines }</ul>
        </section>
    }
}

/// The note's history as sentences, oldest first: one line per stored change (the
/// operations of one write share a stamp up to its `#`), the first one its creation.
fn describe(changes: &[stead_yew::Change]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
    for c in changes {
        let entry = c.stamp.split('#').next().unwrap_or_default().to_owned();
        let (kind, field) = c.summary();
        let what = match (kind, field) {
            // The search key follows the title: not worth a word of its own.
            ("Set", Some("title_key")) => None,
            ("Set", Some(field)) => Some(field.to_owned()),
            ("Delete", _) => Some("deleted".to_owned()),
            ("Restore", _) => Some("restored".to_owned()),
            (kind, _) => Some(kind.to_lowercase()),
        };
        if out.last().is_none_or(|(e, _, _)| *e != entry) {
            let when = c.time_ms().map(|ms| String::from(js_sys::Date::new(&ms.into()).to_locale_string("default", &wasm_bindgen::JsValue::UNDEFINED))).unwrap_or_default();
            out.push((entry, when, Vec::new()));
        }
        if let (Some(w), Some(last)) = (what, out.last_mut())
            && !last.2.contains(&w)
        {
            last.2.push(w);
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (_, when, what))| {
            let sentence = match what.as_slice() {
                _ if i == 0 => "created the note".to_owned(),
                [one] if one == "deleted" || one == "restored" => format!("{one} the note"),
                fields => format!("changed the {}", fields.join(" and ")),
            };
            (when, sentence)
        })
        .collect()
}

#[function_component]
fn Notes() -> Html {
    let selected = use_state(|| None::<String>);
    let write = use_mutation();
    let on_select = {
        let selected = selected.clone();
        Callback::from(move |id: String| selected.set(Some(id)))
    };
    html! {
        <>
            <div class="layout">
                <NoteList selected={(*selected).clone()} {on_select} />
                if let Some(id) = &*selected {
                    <Editor key={id.clone()} id={id.clone()} />
                } else {
                    <p class="empty">{"Pick a note, or make a new one."}</p>
                }
            </div>
            if let Some(e) = write.error() {
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
                    <h1>{"Notes"}</h1>
                    <SyncBadge />
                    <InstallButton />
                </header>
                <Notes />
                <footer>{"Works offline: notes and pictures live on this device and sync end-to-end encrypted."}</footer>
            </main>
        </SteadProvider>
    }
}

fn main() {
    stead_yew::register();
    yew::Renderer::<App>::new().render();
}
