//! Answering fetches: the active version's files from OPFS, status, and the network for
//! everything else.

use std::rc::Rc;

use js_sys::Reflect;
use stead_core::bundle::{BundleFile, MANIFEST_FILE, WORKER_SCRIPT};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{JsFuture, future_to_promise};
use web_sys::{FetchEvent, Headers, Request, RequestMode, Response, ResponseInit};

use crate::worker::Worker;

pub const STATUS_PATH: &str = "_stead/v1/status";
/// `POST` with `{"confirm": true}`: erase what the kill switch kept.
pub const ERASE_PATH: &str = "_stead/v1/erase";

/// What the worker does with a request path (relative to the scope, query removed).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Not the worker's business: the browser handles it as if there were no worker.
    PassThrough,
    Status,
    /// A file of the bundle, or the entry document for navigations.
    Bundle,
}

pub fn route(rel: &str) -> Route {
    if rel == STATUS_PATH {
        Route::Status
    } else if rel == "sync" || rel.starts_with("_stead/") || rel == WORKER_SCRIPT || rel == MANIFEST_FILE {
        Route::PassThrough
    } else {
        Route::Bundle
    }
}

pub fn on_fetch(worker: &Rc<Worker>, event: FetchEvent) {
    crate::worker::mark("first_fetch");
    let request = event.request();
    let Some(rel) = relative_path(&worker.base, &request.url()) else { return };
    if rel == ERASE_PATH {
        let w = worker.clone();
        let _ = event.respond_with(&future_to_promise(async move {
            let (status, body) = erase(&w, &request).await;
            Ok(json_response_with(status, &body)?.into())
        }));
        return;
    }
    if worker.is_killed() {
        // Withdrawn: everything goes to the network but status (which tells what was
        // kept and waits for consent) and the erase call.
        if rel == STATUS_PATH {
            let w = worker.clone();
            let _ = event.respond_with(&future_to_promise(async move { Ok(json_response(&w.killed_status().await)?.into()) }));
        }
        return;
    }
    if is_data_route(&rel) {
        let w = worker.clone();
        let _ = event.respond_with(&future_to_promise(async move {
            // A worker that just started learns here whether it was killed before.
            let _ = w.load().await;
            if w.is_killed() {
                let scope: web_sys::ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
                return JsFuture::from(scope.fetch_with_request(&request)).await;
            }
            crate::data::Data::get().handle(request, rel).await
        }));
        return;
    }
    if request.method() != "GET" {
        return;
    }
    let route = route(&rel);
    if route == Route::PassThrough {
        return;
    }
    let navigate = request.mode() == RequestMode::Navigate;
    let client = if navigate {
        Reflect::get(&event, &"resultingClientId".into()).ok().and_then(|v| v.as_string())
    } else {
        event.client_id()
    };
    let w = worker.clone();
    let promise = future_to_promise(async move {
        match route {
            Route::Status => Ok(json_response(&w.status().await)?.into()),
            _ => respond(&w, &request, &rel, navigate, client.as_deref()).await,
        }
    });
    let _ = event.respond_with(&promise);
    if navigate {
        // Look for a new version while the page loads from the current one (not when
        // the browser knows it is offline), then drop contents only closed pages pinned.
        let w = worker.clone();
        let answered = promise.clone();
        let check = future_to_promise(async move {
            // The page first. The data engine wakes when the page runs (its `hello`, see
            // `Worker::on_message`), not here: compiling it and opening spaces while the
            // page still loads would hold up the page's own files.
            let _ = JsFuture::from(answered).await;
            if is_online() {
                let _ = w.update().await;
            }
            if w.has_stale_pins() {
                let _ = w.gc().await;
            }
            Ok(JsValue::UNDEFINED)
        });
        let _ = event.wait_until(&check);
    }
}

/// Whether the data engine answers this path (relative to the scope): the page API.
pub fn is_data_route(rel: &str) -> bool {
    rel.starts_with("_stead/v1/") && rel != STATUS_PATH
}

pub(crate) fn is_online() -> bool {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok();
    navigator
        .and_then(|n| Reflect::get(&n, &"onLine".into()).ok())
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}

/// The request URL as a path relative to the worker's scope, without query or fragment;
/// `None` when the URL is outside the scope.
pub fn relative_path(base: &str, url: &str) -> Option<String> {
    let rest = url.strip_prefix(base)?;
    // No `&rest[..end]`: any `str` slicing links its panic message, and with it Unicode's
    // printable tables (ARCHITECTURE.md, `sw`).
    let raw = rest.split(['?', '#']).next().unwrap_or_default();
    Some(js_sys::decode_uri_component(raw).ok().and_then(|s| s.as_string()).unwrap_or_else(|| raw.to_owned()))
}

async fn respond(
    w: &Rc<Worker>,
    request: &Request,
    rel: &str,
    navigate: bool,
    client: Option<&str>,
) -> Result<JsValue, JsValue> {
    if w.load().await.is_ok() {
        let version = if navigate { w.pin_active(client.unwrap_or_default()) } else { w.version_for(client) };
        if let Some(version) = version {
            let file = match version.file(rel) {
                Some(f) if !rel.is_empty() => Some(f),
                _ if navigate || rel.is_empty() => version.file(&version.entry),
                _ => None,
            };
            if let Some(file) = file
                && let Ok(Some(blob)) = w.blob(&file.sha256).await {
                    let response = file_response(request, file, &blob, &version.version)?;
                    crate::worker::mark("first_answer");
                    return Ok(response.into());
                }
        }
    }
    // Not in the bundle (or not installed yet): the network, as if there were no worker.
    let scope: web_sys::ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
    JsFuture::from(scope.fetch_with_request(request)).await
}

fn file_response(request: &Request, file: &BundleFile, blob: &web_sys::Blob, version: &str) -> Result<Response, JsValue> {
    let not_modified = request.headers().get("if-none-match")?.is_some_and(|tag| tag == format!("\"{}\"", file.sha256));
    file_response_with(file, (!not_modified).then(|| hot(blob)).as_ref(), version)
}

/// The shim's copy in memory of a stored file it has served before (`__stead_hot`, which
/// makes one on a first call), else the stored Blob itself.
fn hot(blob: &web_sys::Blob) -> web_sys::Blob {
    Reflect::get(&js_sys::global(), &"__stead_hot".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .and_then(|f| f.call1(&JsValue::NULL, blob).ok())
        .map_or_else(|| blob.clone(), JsCast::unchecked_into)
}

/// A stored file's response as the worker serves it (for the cold copy, see [`crate::cold`]).
pub fn stored_response(file: &BundleFile, blob: &web_sys::Blob, version: &str) -> Result<Response, JsValue> {
    file_response_with(file, Some(blob), version)
}

/// `None` for the body: a 304 for a matching `if-none-match`.
fn file_response_with(file: &BundleFile, blob: Option<&web_sys::Blob>, version: &str) -> Result<Response, JsValue> {
    let etag = format!("\"{}\"", file.sha256);
    let headers = Headers::new()?;
    headers.set("content-type", &file.mime)?;
    headers.set("etag", &etag)?;
    headers.set(
        "cache-control",
        if file.immutable { "public, max-age=31536000, immutable" } else { "no-cache" },
    )?;
    headers.set("x-stead-version", version)?;
    // As the server sends it: no other site may frame the app (apps of one registry are
    // one site, and a framed app would open with its real data).
    headers.set("content-security-policy", crate::FRAME_POLICY)?;
    let init = ResponseInit::new();
    init.set_headers(&headers);
    let Some(blob) = blob else {
        init.set_status(304);
        return Response::new_with_opt_blob_and_init(None, &init);
    };
    headers.set("content-length", &file.size.to_string())?;
    Response::new_with_opt_blob_and_init(Some(blob), &init)
}

fn json_response(value: &JsValue) -> Result<Response, JsValue> {
    json_response_with(200, value)
}

fn json_response_with(status: u16, value: &JsValue) -> Result<Response, JsValue> {
    let headers = Headers::new()?;
    let problem = status >= 400;
    headers.set("content-type", if problem { "application/problem+json" } else { "application/json" })?;
    headers.set("cache-control", "no-store")?;
    let init = ResponseInit::new();
    init.set_status(status);
    init.set_headers(&headers);
    Response::new_with_opt_str_and_init(Some(&crate::js::stringify(value)), &init)
}

/// The erase call, only as a page's own JSON request: a navigation (a form another site
/// posts here) or any other body is refused.
async fn erase(w: &Rc<Worker>, request: &Request) -> (u16, JsValue) {
    let problem = |status: u16, title: &str, detail: &str| (status, crate::worker::problem(status, title, detail));
    if request.method() != "POST" {
        return problem(405, "method not allowed", "erase is a POST");
    }
    let json = request.headers().get("content-type").ok().flatten().is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"));
    if request.mode() == RequestMode::Navigate || !json {
        return problem(400, "bad request", "erase takes a JSON body (content-type: application/json) sent by a page with fetch");
    }
    let text = match request.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let confirmed = crate::js::parse(&text).ok().is_some_and(|b| crate::js::get_bool(&b, "confirm") == Some(true));
    w.erase_kept(confirmed).await
}

#[cfg(test)]
mod tests {
    use super::relative_path;
    use wasm_bindgen_test::wasm_bindgen_test;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_service_worker);

    #[wasm_bindgen_test]
    fn request_urls_become_paths_in_the_scope() {
        let base = "http://localhost:8080/app/";
        assert_eq!(relative_path(base, "http://localhost:8080/app/").as_deref(), Some(""));
        assert_eq!(relative_path(base, "http://localhost:8080/app/a%20b/%C3%BC.txt?v=1#top").as_deref(), Some("a b/ü.txt"));
        assert_eq!(relative_path(base, "http://localhost:8080/app/x.js#a?b").as_deref(), Some("x.js"));
        // A malformed escape is kept as it came, not refused.
        assert_eq!(relative_path(base, "http://localhost:8080/app/%E0%A4%A.js").as_deref(), Some("%E0%A4%A.js"));
        assert_eq!(relative_path(base, "http://localhost:8080/other/x.js"), None);
        assert_eq!(relative_path(base, "http://evil.test/app/x.js"), None);
    }
}
