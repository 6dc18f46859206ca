//! Ready-made pieces of an app's frame: the sync badge, the update banner, the install
//! button and the invite dialog. They carry `stead-*` classes and stable ids for styling
//! and tests; the texts are plain English sentences a user can act on.

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use yew::platform::spawn_local;
use yew::prelude::*;

use crate::data::{self, ApiError, Invite};
use crate::hooks::{SpaceState, use_space, use_stead, use_sync_status};
use crate::install::use_install_prompt;

/// The space's sync state and how many of this device's changes wait for the server, under
/// a [`crate::SteadProvider`]. `data-state` is the worker's state (`starting` until it
/// answered, which is as soon as the space is open).
#[function_component]
pub fn SyncBadge() -> Html {
    let stead = use_stead();
    let status = use_sync_status();
    let (state, label, title) = match (&status, stead.as_ref().map(|s| &s.space)) {
        (_, Some(SpaceState::Failed(e))) => ("error".to_owned(), "Not available".to_owned(), e.to_string()),
        (None, _) => ("starting".to_owned(), "Starting".to_owned(), String::new()),
        (Some(s), _) => {
            let label = match s.state.as_str() {
                "online" => "Synced",
                "syncing" => "Syncing",
                "offline" => "Offline",
                "error" => "Sync refused",
                other => other,
            };
            let label = if s.pending > 0 { format!("{label} · {} to send", s.pending) } else { label.to_owned() };
            let title = match (&s.last_error, s.state.as_str()) {
                (Some(e), "error") => e.clone(),
                (_, "offline") => "Changes are kept on this device and sent when the server is reachable".to_owned(),
                _ => String::new(),
            };
            (s.state.clone(), label, title)
        }
    };
    html! {
        <span id="sync-status" class={classes!("stead-sync", format!("stead-sync-{state}"))} data-state={state.clone()} role="status" title={title}>
            { label }
        </span>
    }
}

/// A banner offering to switch to a downloaded update; renders nothing otherwise.
#[function_component]
pub fn UpdateBanner() -> Html {
    let Some(_version) = crate::use_update_ready() else { return html! {} };
    let onclick = Callback::from(|_: MouseEvent| crate::activate_update());
    html! {
        <div class="stead-update" role="status">
            {"A new version is ready. "}
            <button id="stead-update" {onclick}>{"Reload"}</button>
        </div>
    }
}

#[derive(Properties, PartialEq)]
pub struct InstallButtonProps {
    #[prop_or(AttrValue::Static("Install"))]
    pub label: AttrValue,
}

/// Offers to install the app where the browser allows it; hidden until then, and once
/// installed.
#[function_component]
pub fn InstallButton(props: &InstallButtonProps) -> Html {
    let prompt = use_install_prompt();
    if !prompt.available {
        return html! {};
    }
    let onclick = prompt.install.reform(|_: MouseEvent| ());
    html! { <button id="install" class="stead-install" {onclick}>{ props.label.clone() }</button> }
}

#[derive(Properties, PartialEq)]
pub struct InviteDialogProps {
    /// What the invited device may do: `"owner"`, `"writer"` or `"reader"` (`None`:
    /// writer).
    #[prop_or_default]
    pub role: Option<AttrValue>,
    #[prop_or(AttrValue::Static("Invite a device"))]
    pub label: AttrValue,
}

/// What the dialog shows.
#[derive(Debug, Clone, PartialEq)]
enum Shown {
    Closed,
    Making,
    Made(Invite),
    Failed(ApiError),
}

/// A button that makes a one-time invite link and shows it, with a copy button and what
/// to do with it. Only an owner of the space can invite.
#[function_component]
pub fn InviteDialog(props: &InviteDialogProps) -> Html {
    let space = use_space();
    let shown = use_state(|| Shown::Closed);
    let copied = use_state(|| None::<bool>);
    let open = {
        let (space, shown, copied, role) = (space.clone(), shown.clone(), copied.clone(), props.role.clone());
        Callback::from(move |_: MouseEvent| {
            let Some(space) = space.clone() else { return };
            let (shown, role) = (shown.clone(), role.clone());
            copied.set(None);
            shown.set(Shown::Making);
            spawn_local(async move {
                match data::invite(&space, role.as_deref()).await {
                    Ok(i) => shown.set(Shown::Made(i)),
                    Err(e) => shown.set(Shown::Failed(e)),
                }
            });
        })
    };
    let close = {
        let shown = shown.clone();
        Callback::from(move |_: MouseEvent| shown.set(Shown::Closed))
    };
    let button = html! {
        <button id="invite" class="stead-invite-open" onclick={open} disabled={space.is_none() || *shown == Shown::Making}>{ props.label.clone() }</button>
    };
    let body = match &*shown {
        Shown::Closed => return button,
        Shown::Making => html! { <p>{"Making a link…"}</p> },
        Shown::Failed(e) if e.status == 403 => html! {
            <p id="invite-error" role="alert">{"Only an owner of this list can invite a device. Ask one to send you a link."}</p>
        },
        Shown::Failed(e) => html! { <p id="invite-error" role="alert">{ format!("No link could be made: {}", e.detail) }</p> },
        Shown::Made(invite) => {
            let copy = {
                let (copied, link) = (copied.clone(), invite.link.clone());
                Callback::from(move |_: MouseEvent| {
                    let (copied, link) = (copied.clone(), link.clone());
                    spawn_local(async move {
                        let ok = copy_text(&link).await;
                        copied.set(Some(ok));
                        if ok {
                            // The confirmation fades after a moment; the link stays.
                            let copied = copied.clone();
                            gloo_timers::callback::Timeout::new(2_500, move || copied.set(None)).forget();
                        }
                    });
                })
            };
            let select = Callback::from(|e: FocusEvent| {
                if let Some(input) = e.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) {
                    input.select();
                }
            });
            let role = match invite.role.as_str() {
                "owner" => "an owner (who can also invite and remove devices)",
                "reader" => "a reader (who can see but not change anything)",
                _ => "a member who can see and change everything",
            };
            let expires = js_sys::Date::new(&invite.expires.into()).to_locale_date_string("default", &wasm_bindgen::JsValue::UNDEFINED);
            html! {
                <>
                    <p class="stead-invite-how">
                        { format!(
                            "Open this link on your other device, or send it to the person who should join (a message or an email to yourself works). \
                             The first device to open it joins as {role}, and the link stops working; unused, it expires on {}. \
                             Anyone holding the link can join, so send it only where you trust it.",
                            String::from(expires)
                        ) }
                    </p>
                    <div class="stead-invite-link">
                        <input id="invite-link" type="text" readonly=true value={invite.link.clone()} onfocus={select} aria-label="Invite link" />
                        <button id="invite-copy" onclick={copy}>{"Copy link"}</button>
                    </div>
                    if let Some(ok) = *copied {
                        <p id="invite-copied" role="status">
                            { if ok { "Copied. Paste it into a message to the other device." } else { "Your browser did not let the page copy: select the link and copy it." } }
                        </p>
                    }
                </>
            }
        }
    };
    html! {
        <>
            { button }
            <div id="invite-dialog" class="stead-invite" role="dialog" aria-labelledby="invite-title">
                <h2 id="invite-title">{ props.label.clone() }</h2>
                { body }
                <button id="invite-close" onclick={close}>{"Done"}</button>
            </div>
        </>
    }
}

/// Puts `text` on the clipboard; `false` where the browser refuses (no permission, an
/// insecure origin).
async fn copy_text(text: &str) -> bool {
    let Some(w) = web_sys::window() else { return false };
    let navigator = w.navigator();
    if !js_sys::Reflect::has(&navigator, &"clipboard".into()).unwrap_or(false) {
        return false;
    }
    JsFuture::from(navigator.clipboard().write_text(text)).await.is_ok()
}

#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::hooks::{Stead, SyncStatus};

    #[derive(Properties, PartialEq)]
    struct Props {
        stead: Stead,
    }

    #[function_component]
    fn Badge(props: &Props) -> Html {
        html! { <ContextProvider<Stead> context={props.stead.clone()}><SyncBadge /></ContextProvider<Stead>> }
    }

    /// Lets Yew's scheduler render.
    async fn settle() {
        let p = js_sys::Promise::new(&mut |resolve, _| {
            let _ = web_sys::window().expect("a page").set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 20);
        });
        let _ = JsFuture::from(p).await;
    }

    /// What the badge shows for `stead`: its `data-state` and its text.
    async fn badge(stead: Stead) -> (String, String) {
        let document = web_sys::window().and_then(|w| w.document()).expect("a document");
        let root = document.create_element("div").expect("a div");
        document.body().expect("a body").append_child(&root).expect("appended");
        let app = yew::Renderer::<Badge>::with_root_and_props(root.clone(), Props { stead }).render();
        settle().await;
        let el = root.query_selector("#sync-status").ok().flatten().expect("the badge");
        let shown = (el.get_attribute("data-state").unwrap_or_default(), el.text_content().unwrap_or_default().trim().to_owned());
        app.destroy();
        root.remove();
        shown
    }

    fn with(state: &str, pending: u64) -> Stead {
        let sync = SyncStatus { space: "s".into(), state: state.into(), pending, last_synced: None, last_error: None, rejected: None };
        Stead { space: SpaceState::Ready("s".into()), changes: 0, sync: Some(sync) }
    }

    #[test]
    async fn the_sync_badge_reads_as_a_sentence_for_each_state() {
        let starting = Stead { space: SpaceState::Opening, changes: 0, sync: None };
        assert_eq!(badge(starting).await, ("starting".into(), "Starting".into()));
        assert_eq!(badge(with("online", 0)).await, ("online".into(), "Synced".into()));
        assert_eq!(badge(with("syncing", 3)).await, ("syncing".into(), "Syncing · 3 to send".into()));
        assert_eq!(badge(with("offline", 1)).await, ("offline".into(), "Offline · 1 to send".into()));
        assert_eq!(badge(with("error", 0)).await, ("error".into(), "Sync refused".into()));
        let failed = Stead { space: SpaceState::Failed(ApiError { status: 0, title: "browser error".into(), detail: "no worker".into() }), changes: 0, sync: None };
        assert_eq!(badge(failed).await, ("error".into(), "Not available".into()));
    }
}
