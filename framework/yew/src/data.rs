//! The page's side of the data engine: calls to the worker's page API and hooks that
//! follow its change and sync events. Everything here goes through
//! `fetch('/_stead/v1/...')` and the `stead` BroadcastChannel.
//!
//! The page API answers JSON text, so records are decoded from it with `serde_json`
//! straight into the app's own types ([`Record`]); messages on the channel are JS
//! objects and are read with `serde-wasm-bindgen` (see [`crate::hooks`]).

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value as J, json};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{BroadcastChannel, MessageEvent, RequestInit, Response};
use yew::prelude::*;

/// Where the app keeps the space it last used.
const SPACE_KEY: &str = "stead-space";
/// The URL fragment an invite link carries: browsers never send it to a server.
pub const JOIN_FRAGMENT: &str = "#join=";

/// A failed call: the problem object's status, title and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub title: String,
    pub detail: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

fn js_error(e: JsValue) -> ApiError {
    let detail = e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_default();
    ApiError { status: 0, title: "browser error".into(), detail }
}

/// Resolves once the worker controls this page, so page API calls reach it.
pub async fn ready() -> Result<(), ApiError> {
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let container = window.navigator().service_worker();
    JsFuture::from(container.ready().map_err(js_error)?).await.map_err(js_error)?;
    while container.controller().is_none() {
        // The first install claims open pages on activation: wait for that.
        let changed = js_sys::Promise::new(&mut |resolve, _| {
            let once = web_sys::AddEventListenerOptions::new();
            once.set_once(true);
            let _ = container.add_event_listener_with_callback_and_add_event_listener_options("controllerchange", &resolve, &once);
        });
        JsFuture::from(changed).await.map_err(js_error)?;
    }
    Ok(())
}

/// Calls the page API: `path` is relative to `/_stead/v1/`.
pub async fn call(method: &str, path: &str, body: Option<&J>) -> Result<J, ApiError> {
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let init = RequestInit::new();
    init.set_method(method);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(&b.to_string()));
        let headers = web_sys::Headers::new().map_err(js_error)?;
        headers.set("content-type", "application/json").map_err(js_error)?;
        init.set_headers(&headers);
    }
    let url = format!("_stead/v1/{path}");
    let resp: Response = JsFuture::from(window.fetch_with_str_and_init(&url, &init)).await.map_err(js_error)?.unchecked_into();
    let text = JsFuture::from(resp.text().map_err(js_error)?).await.map_err(js_error)?.as_string().unwrap_or_default();
    let value: J = serde_json::from_str(&text).unwrap_or(J::String(text));
    if resp.ok() {
        return Ok(value);
    }
    Err(ApiError {
        status: resp.status(),
        title: value.get("title").and_then(J::as_str).unwrap_or("error").to_owned(),
        detail: value.get("detail").and_then(J::as_str).map(str::to_owned).unwrap_or_else(|| value.to_string()),
    })
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// The space this page works in: joins the one an invite link names, or reopens the
/// last one, or creates one with `schema`. The schema is (re)declared each time, so a
/// new version of the app can add fields.
pub async fn open_space(schema: &J) -> Result<String, ApiError> {
    ready().await?;
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let hash = window.location().hash().unwrap_or_default();
    let space = if let Some(code) = hash.strip_prefix(JOIN_FRAGMENT) {
        let joined = call("POST", "join", Some(&json!({ "invite": code }))).await?;
        // The invite code is a secret (whoever holds it may join, once): keep it out of
        // the address bar and history.
        if let Ok(h) = window.history() {
            let path = window.location().pathname().unwrap_or_else(|_| "/".into());
            let _ = h.replace_state_with_url(&JsValue::NULL, "", Some(&path));
        }
        joined["space"].as_str().unwrap_or_default().to_owned()
    } else {
        let listed = call("GET", "spaces", None).await?;
        let spaces: Vec<String> = listed["spaces"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect();
        let last = storage().and_then(|s| s.get_item(SPACE_KEY).ok().flatten());
        match last.filter(|l| spaces.contains(l)).or_else(|| spaces.first().cloned()) {
            Some(s) => s,
            None => call("POST", "spaces", Some(&json!({ "schema": schema }))).await?["space"].as_str().unwrap_or_default().to_owned(),
        }
    };
    if let Some(s) = storage() {
        let _ = s.set_item(SPACE_KEY, &space);
    }
    call("PUT", &format!("spaces/{space}/schema"), Some(schema)).await?;
    Ok(space)
}

/// A one-time invite link for another device: this page's address with the invite code
/// in its fragment. The device that opens it first joins as a writer, within 7 days
/// (the worker's defaults); see [`invite_link_as`].
pub async fn invite_link(space: &str) -> Result<String, ApiError> {
    invite_link_as(space, None).await
}

/// [`invite_link`] granting `role` (`"owner"`, `"writer"` or `"reader"`; `None`: the
/// worker's default, writer).
pub async fn invite_link_as(space: &str, role: Option<&str>) -> Result<String, ApiError> {
    Ok(invite(space, role).await?.link)
}

/// A one-time invite, as [`invite`] made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invite {
    /// This page's address with the code in its fragment ([`JOIN_FRAGMENT`]).
    pub link: String,
    /// What the device that joins may do: `owner`, `writer` or `reader`.
    pub role: String,
    /// When the server stops taking a join through it (Unix ms).
    pub expires: f64,
}

/// Makes a one-time invite to `space` granting `role` (`None`: writer), valid for the
/// worker's default 7 days. Only an owner may invite.
pub async fn invite(space: &str, role: Option<&str>) -> Result<Invite, ApiError> {
    let body = role.map(|r| json!({ "role": r }));
    let made = call("POST", &format!("spaces/{space}/invites"), body.as_ref()).await?;
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let loc = window.location();
    let base = format!("{}{}", loc.origin().map_err(js_error)?, loc.pathname().map_err(js_error)?);
    Ok(Invite {
        link: format!("{base}{JOIN_FRAGMENT}{}", made["invite"].as_str().unwrap_or_default()),
        role: made["role"].as_str().unwrap_or("writer").to_owned(),
        expires: made["expires"].as_f64().unwrap_or_default(),
    })
}

/// A record as the page API returns it, its fields decoded into the app's type `T`
/// (`serde_json::Value` for no type). Counters are numbers, sets arrays, blob
/// references `{"sha256", "size", "mime"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    /// A UUID v7: ids sort in creation order.
    pub id: String,
    /// Changes with every write; pass it back for a compare-and-swap.
    pub version: String,
    pub fields: T,
}

/// Which records of a collection a query returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Filter {
    /// Every record, in id (creation) order.
    #[default]
    All,
    /// Records whose `field` equals `value`, through the schema's index on it.
    Eq { field: String, value: J },
    /// Records whose `field` lies in `from..to` (either end open), through its index.
    Range { field: String, from: Option<J>, to: Option<J> },
}

impl Filter {
    /// Records whose `field` equals `value` (the schema must index `field`).
    pub fn eq(field: &str, value: impl Serialize) -> Filter {
        Filter::Eq { field: field.to_owned(), value: serde_json::to_value(value).unwrap_or(J::Null) }
    }

    /// The query string for the page API, values as URL-encoded JSON.
    fn params(&self) -> String {
        let enc = |v: &J| String::from(js_sys::encode_uri_component(&v.to_string()));
        match self {
            Filter::All => String::new(),
            Filter::Eq { field, value } => format!("&field={}&eq={}", js_sys::encode_uri_component(field), enc(value)),
            Filter::Range { field, from, to } => {
                let mut q = format!("&field={}", js_sys::encode_uri_component(field));
                if let Some(f) = from {
                    q.push_str(&format!("&from={}", enc(f)));
                }
                if let Some(t) = to {
                    q.push_str(&format!("&to={}", enc(t)));
                }
                q
            }
        }
    }
}

/// How many records one page of a listing asks for.
const PAGE: u32 = 500;

fn decode<T: DeserializeOwned>(value: J) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError { status: 0, title: "unexpected record".into(), detail: e.to_string() })
}

fn collection_path(space: &str, collection: &str) -> String {
    format!("spaces/{space}/collections/{}", String::from(js_sys::encode_uri_component(collection)))
}

/// Every record of `collection` that `filter` selects, page after page.
pub async fn list<T: DeserializeOwned>(space: &str, collection: &str, filter: &Filter) -> Result<Vec<Record<T>>, ApiError> {
    let base = format!("{}?limit={PAGE}{}", collection_path(space, collection), filter.params());
    let mut out = Vec::new();
    let mut after: Option<J> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{base}&after={}", String::from(js_sys::encode_uri_component(&a.to_string()))),
            None => base.clone(),
        };
        let mut page = call("GET", &url, None).await?;
        let records: Vec<Record<T>> = decode(page["records"].take())?;
        let done = records.is_empty();
        out.extend(records);
        match page["next"].take() {
            J::Null => break,
            _ if done => break,
            next => after = Some(next),
        }
    }
    Ok(out)
}

/// One record, or `None` when there is none with this id (or it was deleted).
pub async fn get<T: DeserializeOwned>(space: &str, collection: &str, id: &str) -> Result<Option<Record<T>>, ApiError> {
    match call("GET", &format!("{}/{id}", collection_path(space, collection)), None).await {
        Ok(r) => decode(r).map(Some),
        Err(e) if e.status == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates a record in `collection` with `fields`.
pub async fn create(space: &str, collection: &str, fields: &impl Serialize) -> Result<Record<J>, ApiError> {
    let fields = serde_json::to_value(fields).map_err(|e| ApiError { status: 0, title: "fields".into(), detail: e.to_string() })?;
    decode(call("POST", &collection_path(space, collection), Some(&json!({ "fields": fields }))).await?)
}

/// Changes the given `fields` of a record; the others keep their values.
pub async fn update(space: &str, collection: &str, id: &str, fields: &impl Serialize) -> Result<Record<J>, ApiError> {
    let fields = serde_json::to_value(fields).map_err(|e| ApiError { status: 0, title: "fields".into(), detail: e.to_string() })?;
    decode(call("PATCH", &format!("{}/{id}", collection_path(space, collection)), Some(&json!({ "fields": fields }))).await?)
}

/// Deletes a record (`restore` brings it back).
pub async fn delete(space: &str, collection: &str, id: &str) -> Result<(), ApiError> {
    call("DELETE", &format!("{}/{id}", collection_path(space, collection)), None).await.map(drop)
}

/// Listens on the `stead` channel while the component lives.
#[hook]
fn use_channel(on_message: impl Fn(J) + 'static) {
    let on_message = std::rc::Rc::new(on_message);
    use_effect_with((), move |_| {
        let channel = BroadcastChannel::new(crate::CHANNEL).ok();
        let handler = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            if !crate::for_this_app(&e.data()) {
                return;
            }
            if let Some(text) = js_sys::JSON::stringify(&e.data()).ok().and_then(|s| s.as_string())
                && let Ok(j) = serde_json::from_str::<J>(&text) {
                    on_message(j);
                }
        });
        if let Some(c) = &channel {
            c.set_onmessage(Some(handler.as_ref().unchecked_ref()));
        }
        move || {
            if let Some(c) = channel {
                c.set_onmessage(None);
                c.close();
            }
            drop(handler);
        }
    });
}

/// A number that goes up whenever the data of `space` changes, in this tab, another
/// tab, or through sync: use it as a dependency to query again. Under a
/// [`crate::SteadProvider`], [`crate::use_query`] does this for you.
#[hook]
pub fn use_changes(space: Option<String>) -> u64 {
    // A reducer, not a state: the listener lives as long as the component and must count
    // from the latest value, not from the one it was created with.
    let counter = use_reducer(Counter::default);
    {
        let counter = counter.dispatcher();
        use_channel(move |j| {
            if j["type"] == "changed" && space.as_deref().is_none_or(|s| j["space"] == s) {
                counter.dispatch(());
            }
        });
    }
    counter.0
}

#[derive(Default, PartialEq)]
struct Counter(u64);

impl Reducible for Counter {
    type Action = ();
    fn reduce(self: std::rc::Rc<Self>, (): ()) -> std::rc::Rc<Self> {
        Counter(self.0 + 1).into()
    }
}

/// What the kill switch kept because the server lacks it, while it waits for the user's
/// consent: `[{"space", "pending", "blobs_pending"}]`, or `None` when nothing waits. The
/// app was withdrawn (the server answers `410` for its manifest, or a page posted
/// `kill`); everything else of it is gone, and these changes are lost for good once
/// erased. Ask the user, then call [`erase_kept_data`].
#[hook]
pub fn use_kept_data() -> Option<J> {
    let kept = use_state(|| None::<J>);
    {
        let kept = kept.clone();
        use_effect_with((), move |_| {
            // A page opened after the announcement learns of it from status.
            wasm_bindgen_futures::spawn_local(async move {
                if let Ok(status) = call("GET", "status", None).await
                    && status["consent_needed"] == true
                {
                    kept.set(Some(status["kept"].clone()));
                }
            });
        });
    }
    {
        let kept = kept.clone();
        use_channel(move |j| {
            if j["type"] == "killed" {
                let waiting = j["kept"].as_array().is_some_and(|k| !k.is_empty());
                kept.set(waiting.then(|| j["kept"].clone()));
            }
        });
    }
    (*kept).clone()
}

/// Erases what the kill switch kept ([`use_kept_data`]), changes the server never
/// received included. Call it only once the user agreed.
pub async fn erase_kept_data() -> Result<J, ApiError> {
    call("POST", "erase", Some(&json!({ "confirm": true }))).await
}

/// A stored blob, as a `blob` field holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
    pub mime: String,
}

impl BlobRef {
    /// Where the worker serves the blob's content (relative to the page, like every
    /// page API path): an `<img src>` shows an image from it, offline too.
    pub fn url(&self, space: &str) -> String {
        format!("_stead/v1/spaces/{space}/blobs/{}?mime={}", self.sha256, String::from(js_sys::encode_uri_component(&self.mime)))
    }
}

/// Stores `blob` (a `File` from an `<input type=file>` is one) in `space`: sealed, kept on
/// the device at once, uploaded now or on the next connection. Put the returned
/// reference in a `blob` field.
pub async fn upload_blob(space: &str, blob: &web_sys::Blob) -> Result<BlobRef, ApiError> {
    let window = web_sys::window().ok_or_else(|| js_error("no window".into()))?;
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_body(blob);
    let headers = web_sys::Headers::new().map_err(js_error)?;
    let mime = blob.type_();
    headers.set("content-type", if mime.is_empty() { "application/octet-stream" } else { &mime }).map_err(js_error)?;
    init.set_headers(&headers);
    let url = format!("_stead/v1/spaces/{space}/blobs");
    let resp: Response = JsFuture::from(window.fetch_with_str_and_init(&url, &init)).await.map_err(js_error)?.unchecked_into();
    let text = JsFuture::from(resp.text().map_err(js_error)?).await.map_err(js_error)?.as_string().unwrap_or_default();
    let value: J = serde_json::from_str(&text).unwrap_or(J::String(text));
    if !resp.ok() {
        return Err(ApiError {
            status: resp.status(),
            title: value.get("title").and_then(J::as_str).unwrap_or("error").to_owned(),
            detail: value.get("detail").and_then(J::as_str).map(str::to_owned).unwrap_or_else(|| value.to_string()),
        });
    }
    decode(value)
}

/// One change to a record, oldest first in [`history`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Change {
    /// `<ms>.<counter>…`: when the change was made (Unix ms first).
    pub stamp: String,
    /// The device that made it.
    pub replica: String,
    /// The operation, as the worker describes it (`Set { field: "title", … }`).
    pub op: String,
}

impl Change {
    /// When the change was made (Unix ms), read from its stamp.
    pub fn time_ms(&self) -> Option<f64> {
        self.stamp.split('.').next()?.parse().ok()
    }

    /// What the operation was: its kind (`Set`, `Delete`, `Restore`, `CounterAdd`,
    /// `SetAdd`, `SetRemove`) and the field it touched, if any.
    pub fn summary(&self) -> (&str, Option<&str>) {
        let kind = self.op.split([' ', '{']).next().unwrap_or_default();
        let field = self.op.split("field: \"").nth(1).and_then(|r| r.split('"').next());
        (kind, field)
    }
}

/// Every change to a record, from the device's log.
pub async fn history(space: &str, collection: &str, id: &str) -> Result<Vec<Change>, ApiError> {
    let mut r = call("GET", &format!("{}/{id}/history", collection_path(space, collection)), None).await?;
    decode(r["history"].take())
}

#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn filters_become_the_page_apis_query_parameters() {
        assert_eq!(Filter::All.params(), "");
        assert_eq!(Filter::eq("done", false).params(), "&field=done&eq=false");
        assert_eq!(Filter::eq("title_key", "a b").params(), "&field=title_key&eq=%22a%20b%22");
        let range = Filter::Range { field: "n".into(), from: Some(json!(1)), to: None };
        assert_eq!(range.params(), "&field=n&from=1");
    }

    #[test]
    fn a_records_fields_decode_into_the_apps_type() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Todo {
            text: String,
            done: bool,
        }
        let r: Record<Todo> = decode(json!({"id": "01", "version": "3", "fields": {"text": "milk", "done": true, "votes": 2}})).unwrap();
        assert_eq!(r.fields, Todo { text: "milk".into(), done: true });
        let bad = decode::<Record<Todo>>(json!({"id": "01", "version": "3", "fields": {"done": true}})).unwrap_err();
        assert_eq!(bad.title, "unexpected record");
    }

    #[test]
    fn a_change_says_what_it_did_and_when() {
        let c = Change {
            stamp: "1796109200650.0@01a2/3#0".into(),
            replica: "01a2".into(),
            op: r#"Set { collection: "notes", record: RecordId(01), field: "body", value: Str("milk") }"#.into(),
        };
        assert_eq!(c.summary(), ("Set", Some("body")));
        assert_eq!(c.time_ms(), Some(1_796_109_200_650.0));
        let d = Change { op: r#"Delete { collection: "notes", record: RecordId(01) }"#.into(), ..c };
        assert_eq!(d.summary(), ("Delete", None));
    }
}
