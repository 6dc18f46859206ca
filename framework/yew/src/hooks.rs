//! The app's data as Yew hooks. [`SteadProvider`] opens the app's space once and
//! follows the worker's `stead` channel once for the whole page; the hooks read what it
//! provides, so a page with ten queries still holds one channel.
//!
//! Writes go to the worker ([`use_mutation`]); the worker announces every change
//! (`changed`), and every [`use_query`] and [`use_record`] under the provider loads
//! again. A change made in another tab, or synced in from another device, shows the
//! same way.

use std::rc::Rc;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value as J, json};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{BroadcastChannel, MessageEvent};
use yew::platform::spawn_local;
use yew::prelude::*;

use crate::data::{self, ApiError, Filter, Record};

/// Where the app stands with its space.
#[derive(Debug, Clone, PartialEq)]
pub enum SpaceState {
    /// Waiting for the worker, joining through an invite link, or creating the space.
    Opening,
    /// The space's id.
    Ready(String),
    /// The worker could not open it (no service worker, a used invite...).
    Failed(ApiError),
}

/// The sync status of a space, as the worker reports it (`GET spaces/{space}/status` and
/// the channel's `sync` messages; see `sw/PAGE-API.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SyncStatus {
    #[serde(default)]
    pub space: String,
    /// `online` (connected, nothing to send), `syncing`, `offline` or `error` (the
    /// server refused this device).
    pub state: String,
    /// This device's changes the server has not acknowledged yet.
    #[serde(default)]
    pub pending: u64,
    /// When the server last acknowledged (Unix ms).
    #[serde(default)]
    pub last_synced: Option<f64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why the last entry from another member was refused.
    #[serde(default)]
    pub rejected: Option<String>,
}

/// What [`SteadProvider`] gives the components under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stead {
    pub space: SpaceState,
    /// Goes up with every change to the space, here, in another tab or synced in.
    pub changes: u64,
    /// `None` until the worker answered.
    pub sync: Option<SyncStatus>,
}

impl Stead {
    /// The space's id once it is open.
    pub fn space_id(&self) -> Option<&str> {
        match &self.space {
            SpaceState::Ready(s) => Some(s),
            _ => None,
        }
    }
}

enum Action {
    Opened(Result<String, ApiError>),
    Changed(String),
    Sync(SyncStatus),
}

/// The provider's reducer: [`Stead`] itself stays a plain value for the components.
#[derive(PartialEq)]
struct Shared(Stead);

impl Reducible for Shared {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        let mut next = self.0.clone();
        let current = &self.0;
        match action {
            Action::Opened(Ok(space)) => next.space = SpaceState::Ready(space),
            Action::Opened(Err(e)) => next.space = SpaceState::Failed(e),
            // Changes and statuses of another space (the app switched, or an older tab
            // opened another) are not ours.
            Action::Changed(space) if current.space_id() == Some(&space) => next.changes += 1,
            Action::Sync(status) if current.space_id() == Some(&status.space) || status.space.is_empty() => next.sync = Some(status),
            Action::Changed(_) | Action::Sync(_) => return self,
        }
        Shared(next).into()
    }
}

/// A message on the `stead` channel that the provider follows. The channel carries JS
/// objects (structured clones), read here without a round trip through JSON text.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Notice {
    Changed { space: String },
    Sync { status: SyncStatus },
    #[serde(other)]
    Other,
}

#[derive(Properties, PartialEq)]
pub struct SteadProviderProps {
    /// The app's schema (see `sw/PAGE-API.md`), declared to the worker each start.
    pub schema: J,
    #[prop_or_default]
    pub children: Html,
}

/// Opens the app's space (joining the one an invite link names, reopening the last one,
/// or creating one; see [`data::open_space`]) and gives the hooks below it the space, a
/// change counter and the sync status.
#[function_component]
pub fn SteadProvider(props: &SteadProviderProps) -> Html {
    let stead = use_reducer(|| Shared(Stead { space: SpaceState::Opening, changes: 0, sync: None }));
    {
        let dispatch = stead.dispatcher();
        let schema = props.schema.clone();
        use_effect_with((), move |_| {
            let opened = dispatch.clone();
            spawn_local(async move {
                let result = data::open_space(&schema).await;
                let space = result.as_ref().ok().cloned();
                opened.dispatch(Action::Opened(result));
                // Ask for the status now rather than waiting for the worker to announce
                // one: offline, that announcement comes only when a connection attempt
                // fails, seconds later.
                if let Some(space) = space
                    && let Ok(status) = data::call("GET", &format!("spaces/{space}/status"), None).await
                    && let Ok(mut status) = serde_json::from_value::<SyncStatus>(status)
                {
                    status.space = space;
                    opened.dispatch(Action::Sync(status));
                }
            });
            let channel = BroadcastChannel::new(crate::CHANNEL).ok();
            let listener = channel.as_ref().map(|c| {
                gloo_events::EventListener::new(c, "message", move |e| {
                    let Some(e) = e.dyn_ref::<MessageEvent>() else { return };
                    let message = e.data();
                    if !crate::for_this_app(&message) {
                        return;
                    }
                    match serde_wasm_bindgen::from_value::<Notice>(message) {
                        Ok(Notice::Changed { space }) => dispatch.dispatch(Action::Changed(space)),
                        Ok(Notice::Sync { status }) => dispatch.dispatch(Action::Sync(status)),
                        Ok(Notice::Other) | Err(_) => {}
                    }
                })
            });
            move || {
                drop(listener);
                if let Some(c) = channel {
                    c.close();
                }
            }
        });
    }
    html! {
        <ContextProvider<Stead> context={stead.0.clone()}>
            { props.children.clone() }
        </ContextProvider<Stead>>
    }
}

/// The provider's state; `None` outside a [`SteadProvider`].
#[hook]
pub fn use_stead() -> Option<Stead> {
    use_context::<Stead>()
}

/// The id of the app's space once it is open.
#[hook]
pub fn use_space() -> Option<String> {
    use_context::<Stead>().and_then(|s| s.space_id().map(str::to_owned))
}

/// The space's sync status, known from the moment the space is open (the provider asks
/// the worker, then follows its announcements). `None` while starting, or outside a
/// [`SteadProvider`].
#[hook]
pub fn use_sync_status() -> Option<SyncStatus> {
    use_context::<Stead>().and_then(|s| s.sync)
}

/// Data loaded from the worker and kept up to date.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// `None` until the first answer.
    pub value: Option<T>,
    /// The last load's failure; `value` keeps what was loaded before.
    pub error: Option<ApiError>,
}

impl<T> Loaded<T> {
    /// Nothing is known yet: no answer and no error.
    pub fn loading(&self) -> bool {
        self.value.is_none() && self.error.is_none()
    }
}

/// Loads with `load` whenever `deps` change, keeping only the newest answer (an older
/// one that arrives late is dropped).
#[hook]
fn use_live<T, D, F, Fut>(deps: Option<D>, load: F) -> Loaded<T>
where
    T: Clone + PartialEq + 'static,
    D: PartialEq + Clone + 'static,
    F: Fn(D) -> Fut + 'static,
    Fut: Future<Output = Result<T, ApiError>> + 'static,
{
    let state = use_state(|| Loaded { value: None, error: None });
    let latest = use_mut_ref(|| 0u64);
    {
        let state = state.clone();
        use_effect_with(deps, move |deps| {
            if let Some(deps) = deps.clone() {
                let ticket = {
                    let mut l = latest.borrow_mut();
                    *l += 1;
                    *l
                };
                spawn_local(async move {
                    let result = load(deps).await;
                    if *latest.borrow() != ticket {
                        return;
                    }
                    match result {
                        Ok(v) => state.set(Loaded { value: Some(v), error: None }),
                        Err(e) => state.set(Loaded { value: state.value.clone(), error: Some(e) }),
                    }
                });
            }
        });
    }
    (*state).clone()
}

/// The records of `collection` that `filter` selects, their fields decoded into `T`,
/// loaded again after every change to the space. Empty outside a [`SteadProvider`].
///
/// ```ignore
/// #[derive(Clone, PartialEq, Deserialize)]
/// struct Todo { text: String, done: bool }
/// let todos = use_query::<Todo>("todos", Filter::All);
/// let open = use_query::<Todo>("todos", Filter::eq("done", false));
/// ```
#[hook]
pub fn use_query<T>(collection: &str, filter: Filter) -> Loaded<Vec<Record<T>>>
where
    T: DeserializeOwned + Clone + PartialEq + 'static,
{
    let stead = use_context::<Stead>();
    let deps = stead.as_ref().and_then(|s| Some((s.space_id()?.to_owned(), collection.to_owned(), filter, s.changes)));
    use_live(deps, |(space, collection, filter, _)| async move { data::list::<T>(&space, &collection, &filter).await })
}

/// One record, loaded again after every change to the space: `value` is `Some(None)`
/// when there is no record with this id (or it was deleted).
#[hook]
pub fn use_record<T>(collection: &str, id: &str) -> Loaded<Option<Record<T>>>
where
    T: DeserializeOwned + Clone + PartialEq + 'static,
{
    let stead = use_context::<Stead>();
    let deps = stead.as_ref().and_then(|s| Some((s.space_id()?.to_owned(), collection.to_owned(), id.to_owned(), s.changes)));
    use_live(deps, |(space, collection, id, _)| async move { data::get::<T>(&space, &collection, &id).await })
}

/// Every change to one record (oldest first), loaded again after every change to the
/// space.
#[hook]
pub fn use_history(collection: &str, id: &str) -> Loaded<Vec<data::Change>> {
    let stead = use_context::<Stead>();
    let deps = stead.as_ref().and_then(|s| Some((s.space_id()?.to_owned(), collection.to_owned(), id.to_owned(), s.changes)));
    use_live(deps, |(space, collection, id, _)| async move { data::history(&space, &collection, &id).await })
}

/// Writes to the app's space. Each call goes to the worker at once and returns; the
/// queries refresh from the change it announces, and a refusal (a value the schema does
/// not take, a full disk...) lands in [`Mutation::error`].
#[derive(Clone, PartialEq)]
pub struct Mutation {
    space: Option<String>,
    error: UseStateHandle<Option<ApiError>>,
}

impl std::fmt::Debug for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutation").field("space", &self.space).field("error", &*self.error).finish()
    }
}

/// A [`Mutation`] for the provider's space.
#[hook]
pub fn use_mutation() -> Mutation {
    let space = use_space();
    let error = use_state(|| None);
    Mutation { space, error }
}

impl Mutation {
    /// Whether the space is open, so writes can go.
    pub fn ready(&self) -> bool {
        self.space.is_some()
    }

    /// Why the last refused write was refused.
    pub fn error(&self) -> Option<ApiError> {
        (*self.error).clone()
    }

    pub fn clear_error(&self) {
        self.error.set(None);
    }

    /// Sends `method` to `path` under the space (`collections/todos/{id}`, `undo`...).
    pub fn send(&self, method: &'static str, path: String, body: Option<J>) {
        let Some(space) = self.space.clone() else { return };
        let error = self.error.clone();
        spawn_local(async move {
            if let Err(e) = data::call(method, &format!("spaces/{space}/{path}"), body.as_ref()).await {
                error.set(Some(e));
            }
        });
    }

    fn record(collection: &str, id: &str) -> String {
        format!("collections/{}/{id}", String::from(js_sys::encode_uri_component(collection)))
    }

    /// Creates a record with `fields`.
    pub fn create(&self, collection: &str, fields: impl Serialize) {
        let fields = serde_json::to_value(fields).unwrap_or(J::Null);
        self.send("POST", format!("collections/{}", String::from(js_sys::encode_uri_component(collection))), Some(json!({ "fields": fields })));
    }

    /// Creates a record with `fields`, then hands it to `done` (to select it, say).
    pub fn create_then(&self, collection: &str, fields: impl Serialize, done: impl FnOnce(Record<J>) + 'static) {
        let Some(space) = self.space.clone() else { return };
        let (error, collection) = (self.error.clone(), collection.to_owned());
        let fields = serde_json::to_value(fields).unwrap_or(J::Null);
        spawn_local(async move {
            match data::create(&space, &collection, &fields).await {
                Ok(r) => done(r),
                Err(e) => error.set(Some(e)),
            }
        });
    }

    /// Sets the given `fields` of a record; the others keep their values.
    pub fn update(&self, collection: &str, id: &str, fields: impl Serialize) {
        let fields = serde_json::to_value(fields).unwrap_or(J::Null);
        self.send("PATCH", Self::record(collection, id), Some(json!({ "fields": fields })));
    }

    pub fn delete(&self, collection: &str, id: &str) {
        self.send("DELETE", Self::record(collection, id), None);
    }

    /// Brings back a deleted record.
    pub fn restore(&self, collection: &str, id: &str) {
        self.send("POST", format!("{}/restore", Self::record(collection, id)), None);
    }

    /// Adds `delta` to a counter field (concurrent increments add up).
    pub fn increment(&self, collection: &str, id: &str, field: &str, delta: i64) {
        self.send("POST", format!("{}/counters/{field}", Self::record(collection, id)), Some(json!({ "delta": delta })));
    }

    /// Adds `value` to a set field.
    pub fn set_add(&self, collection: &str, id: &str, field: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(J::Null);
        self.send("POST", format!("{}/sets/{field}", Self::record(collection, id)), Some(json!({ "add": value })));
    }

    /// Takes `value` out of a set field (the adds this device has seen).
    pub fn set_remove(&self, collection: &str, id: &str, field: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(J::Null);
        self.send("POST", format!("{}/sets/{field}", Self::record(collection, id)), Some(json!({ "remove": value })));
    }

    /// Takes back this device's last `n` changes (with new changes, which sync).
    pub fn undo(&self, n: u32) {
        self.send("POST", "undo".into(), Some(json!({ "n": n })));
    }
}

/// Whether the browser keeps this app's storage under pressure, and a way to ask.
#[derive(Debug, Clone, PartialEq)]
pub struct Persist {
    /// `None` until the browser answered (or where it has no storage manager).
    pub persisted: Option<bool>,
    /// Asks the browser (`navigator.storage.persist()`); it may decide without asking
    /// the user (Chromium grants it to installed and often-used apps).
    pub request: Callback<()>,
}

/// `navigator.storage.persisted()` on mount, and [`Persist::request`] to ask for it.
/// Without it, the browser may evict the app's data when the disk runs low, changes not
/// yet synced included.
#[hook]
pub fn use_persist() -> Persist {
    let persisted = use_state(|| None::<bool>);
    {
        let persisted = persisted.clone();
        use_effect_with((), move |_| {
            spawn_local(async move {
                if let Some(p) = storage_call(|s| s.persisted()).await {
                    persisted.set(Some(p));
                }
            });
        });
    }
    let request = {
        let persisted = persisted.clone();
        Callback::from(move |()| {
            let persisted = persisted.clone();
            spawn_local(async move {
                if let Some(p) = storage_call(|s| s.persist()).await {
                    persisted.set(Some(p));
                }
            });
        })
    };
    Persist { persisted: *persisted, request }
}

async fn storage_call(f: impl FnOnce(&web_sys::StorageManager) -> Result<js_sys::Promise, wasm_bindgen::JsValue>) -> Option<bool> {
    let navigator = web_sys::window()?.navigator();
    // Not every browser context has one (an insecure origin has none).
    if !js_sys::Reflect::has(&navigator, &"storage".into()).unwrap_or(false) {
        return None;
    }
    JsFuture::from(f(&navigator.storage()).ok()?).await.ok()?.as_bool()
}

#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use wasm_bindgen::JsValue;
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn js(json: &str) -> JsValue {
        js_sys::JSON::parse(json).expect("test JSON")
    }

    fn stead(space: &str) -> Rc<Shared> {
        Rc::new(Shared(Stead { space: SpaceState::Ready(space.into()), changes: 0, sync: None }))
    }

    #[test]
    fn channel_messages_decode_from_the_objects_the_worker_posts() {
        // The shape of the worker's `sync` notice (sw/src/data/engine.rs `status_json`).
        let sync = js(r#"{"type": "sync", "scope": "http://localhost/", "status": {"space": "s1", "replica": "r", "state": "offline",
            "pending": 2, "entries": 7, "replicas": 1, "connects": 0, "last_synced": null, "last_error": "no server",
            "rejected": null, "members_dropped": null, "recovered": null, "snapshot_entries": 0}}"#);
        match serde_wasm_bindgen::from_value::<Notice>(sync) {
            Ok(Notice::Sync { status }) => {
                assert_eq!((status.space.as_str(), status.state.as_str(), status.pending), ("s1", "offline", 2));
                assert_eq!(status.last_error.as_deref(), Some("no server"));
                assert_eq!(status.last_synced, None);
            }
            _ => panic!("a sync notice"),
        }
        assert!(matches!(serde_wasm_bindgen::from_value::<Notice>(js(r#"{"type": "changed", "space": "s1", "scope": "x"}"#)), Ok(Notice::Changed { space }) if space == "s1"));
        assert!(matches!(serde_wasm_bindgen::from_value::<Notice>(js(r#"{"type": "update-ready", "version": "v2"}"#)), Ok(Notice::Other)));
        let synced = js(r#"{"type": "sync", "status": {"space": "s1", "state": "online", "pending": 0, "last_synced": 1796109200650}}"#);
        assert!(matches!(serde_wasm_bindgen::from_value::<Notice>(synced), Ok(Notice::Sync { status }) if status.last_synced == Some(1_796_109_200_650.0)));
    }

    #[test]
    fn the_provider_counts_changes_and_takes_statuses_of_its_own_space_only() {
        let s = stead("s1");
        let s = s.reduce(Action::Changed("s1".into()));
        let s = s.reduce(Action::Changed("s1".into()));
        let s = s.reduce(Action::Changed("other".into()));
        assert_eq!(s.0.changes, 2, "every change of its space counts, another space's does not");
        let status = |space: &str, state: &str| SyncStatus { space: space.into(), state: state.into(), pending: 0, last_synced: None, last_error: None, rejected: None };
        let s = s.reduce(Action::Sync(status("other", "error")));
        assert_eq!(s.0.sync, None);
        let s = s.reduce(Action::Sync(status("s1", "online")));
        assert_eq!(s.0.sync.as_ref().map(|s| s.state.as_str()), Some("online"));
        // Before the space is open, nothing counts.
        let opening = Rc::new(Shared(Stead { space: SpaceState::Opening, changes: 0, sync: None })).reduce(Action::Changed("s1".into()));
        assert_eq!(opening.0.changes, 0);
    }
}
