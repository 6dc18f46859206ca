//! The worker's OPFS store, run inside a real service worker in Chromium
//! (`cargo test -p stead-sw --target wasm32-unknown-unknown`).

#![cfg(target_arch = "wasm32")]

use stead_core::bundle::{BundleFile, BundleManifest, sha256_hex};
use std::rc::Rc;

use stead_sw::{
    SwError, opfs,
    store::{BundleStore, Meta, Versions},
};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::Response;

wasm_bindgen_test_configure!(run_in_service_worker);

fn bundle_file(path: &str, bytes: &[u8]) -> BundleFile {
    BundleFile {
        path: path.to_owned(),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        mime: "text/plain".to_owned(),
        immutable: false,
    }
}

fn response(bytes: &[u8]) -> Response {
    Response::new_with_opt_u8_array(Some(&mut bytes.to_vec())).unwrap()
}

/// A store in a folder of the test's own, so tests do not see each other's files.
async fn fresh(name: &str) -> (opfs::Dir, BundleStore) {
    let root = opfs::root().await.unwrap();
    opfs::remove(&root, name, true).await.unwrap();
    let parent = opfs::dir(&root, name, true).await.unwrap().unwrap();
    let store = BundleStore::open_in(&parent).await.unwrap();
    (parent, store)
}

#[wasm_bindgen_test]
async fn verified_content_is_stored_under_its_hash() {
    let (_, store) = fresh("t-verified").await;
    let body = vec![7u8; 300_000];
    let file = bundle_file("big.bin", &body);
    store.put(&file, &response(&body)).await.unwrap();
    let stored = store.stored().await.unwrap();
    assert_eq!(stored.get(&file.sha256), Some(&300_000));
    let f = store.file(&file.sha256).await.unwrap().unwrap();
    let stored = wasm_bindgen_futures::JsFuture::from(f.array_buffer()).await.unwrap();
    assert_eq!(js_sys::Uint8Array::new(&stored).to_vec(), body, "the stored bytes are the body");
    assert_eq!(store.file_names().await.unwrap(), vec![file.sha256.clone()]);
}

#[wasm_bindgen_test]
async fn corrupt_content_is_refused_and_leaves_nothing() {
    let (_, store) = fresh("t-corrupt").await;
    refuses_corrupt_content(&store).await;
}

/// A body with a wrong byte or one byte too many is refused with the reason, and nothing
/// of it is kept.
async fn refuses_corrupt_content(store: &BundleStore) {
    let file = bundle_file("index.html", b"<h1>hello</h1>");
    let err = store.put(&file, &response(b"<h1>hellO</h1>")).await.unwrap_err();
    assert!(matches!(err, SwError::Hash { ref path, .. } if path == "index.html"), "{err}");
    let err = store.put(&file, &response(b"<h1>hello</h1>!")).await.unwrap_err();
    assert!(matches!(err, SwError::Size { expected: 14, actual: 15, .. }), "{err}");
    assert!(store.file_names().await.unwrap().is_empty());
    assert!(store.file(&file.sha256).await.unwrap().is_none());
    assert!(store.stored().await.unwrap().is_empty());
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn versions(body: &[u8]) -> Versions {
    let m = BundleManifest::new("index.html", vec![bundle_file("index.html", body)]).unwrap();
    Versions {
        active: Some(Rc::new(m)),
        pending: None,
        meta: Meta { last_update_check: Some(1_764_000_000_000.0), last_check_result: Some("up-to-date".into()), last_error: Some("boom".into()) },
    }
}

/// What every store promises about its state: it reads back after reopening, and each save
/// replaces all of it (a pending version activated is gone as pending).
async fn state_survives_reopening(store: &BundleStore, reopen: impl AsyncFn() -> BundleStore) {
    assert_eq!(store.versions().await.unwrap(), Versions::default(), "a new store holds no version");
    let one = versions(b"<h1>one</h1>");
    store.save(&one).await.unwrap();
    assert_eq!(reopen().await.versions().await.unwrap(), one);
    let two = Versions { pending: versions(b"<h1>two</h1>").active, ..one.clone() };
    store.save(&two).await.unwrap();
    assert_eq!(reopen().await.versions().await.unwrap(), two);
    let activated = Versions { active: two.pending.clone(), pending: None, ..two };
    store.save(&activated).await.unwrap();
    assert_eq!(reopen().await.versions().await.unwrap(), activated);
}

#[wasm_bindgen_test]
async fn the_state_survives_reopening_as_one_document() {
    let (parent, store) = fresh("t-state").await;
    state_survives_reopening(&store, async || BundleStore::open_in(&parent).await.unwrap()).await;
    let stead = opfs::dir(&parent, "stead", false).await.unwrap().unwrap();
    assert_eq!(sorted(opfs::names(&stead).await.unwrap()), ["files", "state.bin"]);
}

/// A damaged state reads as no version with the damage as the last error (the next
/// update check rebuilds it), and the next save replaces it.
#[wasm_bindgen_test]
async fn a_damaged_state_reads_as_no_version_with_the_damage_shown() {
    let (parent, store) = fresh("t-garbled").await;
    let good = versions(b"<h1>");
    store.save(&good).await.unwrap();
    let stead = opfs::dir(&parent, "stead", false).await.unwrap().unwrap();
    let bytes = opfs::read_bytes(&stead, "state.bin").await.unwrap().unwrap();
    opfs::write_bytes(&stead, "state.bin", &bytes[..bytes.len() - 9]).await.unwrap();
    let read = store.versions().await.unwrap();
    assert_eq!((read.active, read.pending), (None, None));
    let error = read.meta.last_error.unwrap_or_default();
    assert!(error.contains("the stored state is damaged"), "{error}");
    store.save(&good).await.unwrap();
    assert_eq!(store.versions().await.unwrap(), good);
}

/// What an older worker left (three JSON documents) is not read: the new worker has no
/// version until its install downloads the manifest again (the files are all stored).
#[wasm_bindgen_test]
async fn a_store_an_older_worker_wrote_holds_no_version_until_saved() {
    let (parent, _) = fresh("t-legacy").await;
    let old = versions(b"<h1>old</h1>");
    let stead = opfs::dir(&parent, "stead", false).await.unwrap().unwrap();
    opfs::write_bytes(&stead, "active.json", old.active.as_ref().unwrap().to_json().as_bytes()).await.unwrap();
    let again = BundleStore::open_in(&parent).await.unwrap();
    assert_eq!(again.versions().await.unwrap(), Versions::default());
    again.save(&old).await.unwrap();
    assert_eq!(BundleStore::open_in(&parent).await.unwrap().versions().await.unwrap(), old);
}

#[wasm_bindgen_test]
async fn wipe_removes_everything() {
    let (parent, store) = fresh("t-wipe").await;
    let file = bundle_file("a.txt", b"a");
    store.put(&file, &response(b"a")).await.unwrap();
    BundleStore::wipe(&parent).await.unwrap();
    assert!(opfs::dir(&parent, "stead", false).await.unwrap().is_none());
    assert!(opfs::names(&parent).await.unwrap().is_empty());
}

// The IndexedDB fallback: the same promises as the OPFS store, for engines whose worker
// cannot write OPFS files (WebKit).

async fn fresh_idb(name: &str) -> BundleStore {
    stead_store::idb::db::delete_database(name).await.unwrap();
    BundleStore::open_idb_named(name).await.unwrap()
}

async fn bytes_of(blob: &web_sys::Blob) -> Vec<u8> {
    let buf = wasm_bindgen_futures::JsFuture::from(blob.array_buffer()).await.unwrap();
    js_sys::Uint8Array::new(&buf).to_vec()
}

#[wasm_bindgen_test]
async fn indexeddb_stores_verified_content_streamed_in_chunks() {
    let store = fresh_idb("t-idb-verified").await;
    assert_eq!(store.place_name(), "indexeddb");
    // A body of several chunks: a stream of three parts.
    let parts: Vec<Vec<u8>> = vec![vec![1u8; 70_000], vec![2u8; 5], vec![3u8; 200_000]];
    let body: Vec<u8> = parts.concat();
    let file = bundle_file("big.bin", &body);
    let stream = web_sys::ReadableStream::new_with_underlying_source(&{
        let source = js_sys::Object::new();
        let chunks = js_sys::Array::new();
        for p in &parts {
            chunks.push(&js_sys::Uint8Array::from(&p[..]));
        }
        let start = wasm_bindgen::closure::Closure::once_into_js(move |controller: web_sys::ReadableStreamDefaultController| {
            for c in chunks.iter() {
                controller.enqueue_with_chunk(&c).unwrap();
            }
            controller.close().unwrap();
        });
        js_sys::Reflect::set(&source, &"start".into(), &start).unwrap();
        source
    })
    .unwrap();
    let response = Response::new_with_opt_readable_stream(Some(&stream)).unwrap();
    store.put(&file, &response).await.unwrap();
    assert_eq!(store.stored().await.unwrap().get(&file.sha256), Some(&(body.len() as u64)));
    let blob = store.file(&file.sha256).await.unwrap().unwrap();
    assert_eq!(bytes_of(&blob).await, body, "the stored bytes are the body, in order");
    assert_eq!(store.file_names().await.unwrap(), vec![file.sha256.clone()]);
    // Served as a worker serves it: a Response over the stored Blob.
    let served = Response::new_with_opt_blob(Some(&blob)).unwrap();
    let text = wasm_bindgen_futures::JsFuture::from(served.array_buffer().unwrap()).await.unwrap();
    assert_eq!(js_sys::Uint8Array::new(&text).length() as usize, body.len());
}

#[wasm_bindgen_test]
async fn indexeddb_refuses_corrupt_content_and_keeps_nothing() {
    refuses_corrupt_content(&fresh_idb("t-idb-corrupt").await).await;
}

#[wasm_bindgen_test]
async fn indexeddb_state_and_deletes_survive_reopening() {
    let store = fresh_idb("t-idb-state").await;
    state_survives_reopening(&store, async || BundleStore::open_idb_named("t-idb-state").await.unwrap()).await;
    let a = bundle_file("a.txt", b"a");
    store.put(&a, &response(b"a")).await.unwrap();
    let again = BundleStore::open_idb_named("t-idb-state").await.unwrap();
    assert_eq!(bytes_of(&again.file(&a.sha256).await.unwrap().unwrap()).await, b"a");
    assert!(again.delete(&a.sha256).await.unwrap());
    assert!(!again.delete(&a.sha256).await.unwrap(), "a second delete finds nothing");
    assert!(again.file(&a.sha256).await.unwrap().is_none());
}

#[wasm_bindgen_test]
async fn the_place_is_opfs_where_the_worker_can_write_it() {
    // Chromium and Firefox workers write OPFS files, so detection keeps OPFS there; the
    // WebKit e2e run shows the other branch.
    let place = stead_sw::store::Place::detect().await;
    assert_eq!(place.name(), "opfs");
    let store = place.open().await.unwrap();
    assert_eq!(store.place_name(), "opfs");
    // Detected again (a worker's next life), the store is found and holds what it held.
    let a = bundle_file("a.txt", b"kept");
    store.put(&a, &response(b"kept")).await.unwrap();
    let again = stead_sw::store::Place::detect().await.open().await.unwrap();
    assert_eq!(again.stored().await.unwrap().get(&a.sha256), Some(&4));
}
