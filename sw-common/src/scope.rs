//! Storage scoped by the worker's registration scope.
//!
//! OPFS, IndexedDB and BroadcastChannel names are shared by a whole origin, but an
//! origin can hold several apps under different scopes (`/one/`, `/two/`). Each worker
//! keeps its storage apart: under the root scope `/` the names are the ones Stead always
//! used (`stead/`, `stead-data/` in OPFS, the databases `stead` and `stead-space-<id>`),
//! so data stored before scoping stays where it is; under any other scope every OPFS
//! folder lives in `stead-scope@<key>/` and every IndexedDB database is named
//! `<name>@<key>`, where the key is the scope's path (`one`, `apps%2Ftodo`). Retiring one
//! app then erases only its own storage. Messages on the `stead` channel carry the
//! scope, so pages can tell their app's messages from another's. (The worker keeps
//! nothing in Cache Storage.) Without OPFS the bundle's IndexedDB database is scoped
//! the same way.

use wasm_bindgen::JsCast;

use crate::opfs::{self, Dir, FsError};

/// The OPFS folder holding a non-root scope's storage.
const SCOPE_DIR: &str = "stead-scope";

thread_local! {
    static SCOPE: (String, String) = {
        let global: web_sys::ServiceWorkerGlobalScope = js_sys::global().unchecked_into();
        let url = global.registration().scope();
        let key = key_for(&url);
        (url, key)
    };
}

/// The key of a registration scope URL: "" for the origin's root, else its path without
/// the outer slashes, escaped so it is one plain name (`/` and `%` percent-encoded).
pub fn key_for(scope_url: &str) -> String {
    // A scheme holds no ':', so the first one ends it. (A char search: a `"://"` pattern
    // links the two-way string searcher into the serving module for this one call.)
    let after_scheme = scope_url.split_once(':').and_then(|(_, rest)| rest.strip_prefix("//")).unwrap_or(scope_url);
    let path = after_scheme.split_once('/').map_or("", |(_, path)| path);
    let path = path.split(['?', '#']).next().unwrap_or_default().trim_matches('/');
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '/' => out.push_str("%2F"),
            '%' => out.push_str("%25"),
            '\\' => out.push_str("%5C"),
            c => out.push(c),
        }
    }
    out
}

/// The registration scope, as a URL ending in `/`.
pub fn url() -> String {
    SCOPE.with(|s| s.0.clone())
}

/// This worker's scope key ("" for the root scope).
pub fn key() -> String {
    SCOPE.with(|s| s.1.clone())
}

/// Puts this worker's IndexedDB databases under its scope. Called once at start, before
/// any database is opened.
pub fn init() {
    stead_store::idb::db::set_namespace(&key());
}

/// The OPFS folder this worker's storage lives in: the origin's root for the root scope,
/// `stead-scope@<key>/` under it for any other.
pub async fn opfs_root() -> Result<Dir, FsError> {
    let root = opfs::root().await?;
    let key = key();
    if key.is_empty() {
        return Ok(root);
    }
    Ok(opfs::dir(&root, &format!("{SCOPE_DIR}@{key}"), true).await?.expect("created"))
}

/// Removes this scope's own OPFS folder once nothing is left in it (a non-root scope).
pub async fn remove_opfs_root_if_empty() -> Result<(), FsError> {
    let key = key();
    if key.is_empty() {
        return Ok(());
    }
    // No OPFS at all (WebKit): nothing was kept there.
    let Ok(root) = opfs::root().await else { return Ok(()) };
    let name = format!("{SCOPE_DIR}@{key}");
    if let Some(dir) = opfs::dir(&root, &name, false).await?
        && opfs::names(&dir).await?.is_empty()
    {
        opfs::remove(&root, &name, true).await?;
    }
    Ok(())
}

/// Adds the scope to a message for the `stead` channel.
pub fn tag(mut message: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Object(m) = &mut message {
        m.insert("scope".into(), serde_json::Value::String(url()));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::key_for;
    use wasm_bindgen_test::wasm_bindgen_test;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_service_worker);

    #[wasm_bindgen_test]
    fn scope_keys() {
        assert_eq!(key_for("http://localhost:8080/"), "");
        assert_eq!(key_for("https://example.com"), "");
        assert_eq!(key_for("http://localhost:8080/one/"), "one");
        assert_eq!(key_for("http://localhost/apps/todo/"), "apps%2Ftodo");
        assert_eq!(key_for("http://localhost/a%2Fb/"), "a%252Fb");
        assert_ne!(key_for("http://localhost/a/b/"), key_for("http://localhost/a%2Fb/"));
        assert_eq!(key_for("http://localhost/app/?x=1#y"), "app");
        assert_eq!(key_for("http://localhost:8080"), "");
    }
}
