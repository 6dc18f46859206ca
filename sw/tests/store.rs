//! The worker's OPFS store, run inside a real service worker in Chromium
//! (`cargo test -p stead-sw --target wasm32-unknown-unknown`).

#![cfg(target_arch = "wasm32")]

use stead_core::bundle::{BundleFile, BundleManifest, sha256_hex};
use std::{collections::HashSet, rc::Rc};

use stead_sw::{
    SwError, opfs,
    pack::Pack,
    store::{BundleStore, Meta, Versions},
};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use js_sys::Uint8Array;
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

/// A downloaded body, as the worker holds it.
fn held(bytes: &[u8]) -> Uint8Array {
    Uint8Array::from(bytes)
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
    let packs: Vec<Pack> = store.put(&file, held(&body)).await.unwrap().into_iter().collect();
    let stored = store.stored(&packs).await.unwrap();
    assert_eq!(stored.get(&file.sha256), Some(&300_000));
    let f = store.file(&packs, &file.sha256).await.unwrap().unwrap();
    let stored = wasm_bindgen_futures::JsFuture::from(f.array_buffer()).await.unwrap();
    assert_eq!(js_sys::Uint8Array::new(&stored).to_vec(), body, "the stored bytes are the body");
    assert_eq!(store.stored(&packs).await.unwrap().len(), 1);
    assert!(store.stored(&[]).await.unwrap().is_empty(), "a pack holds nothing until the state lists it");
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
    let err = store.put(&file, held(b"<h1>hellO</h1>")).await.unwrap_err();
    assert!(matches!(err, SwError::Hash { ref path, .. } if path == "index.html"), "{err}");
    let err = store.put(&file, held(b"<h1>hello</h1>!")).await.unwrap_err();
    assert!(matches!(err, SwError::Size { expected: 14, actual: 15, .. }), "{err}");
    assert!(store.file(&[], &file.sha256).await.unwrap().is_none());
    assert!(store.stored(&[]).await.unwrap().is_empty());
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
        packs: Vec::new(),
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
    store.put(&file, held(b"a")).await.unwrap();
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
    // Read whole, as the worker reads a download.
    let response = Response::new_with_opt_readable_stream(Some(&stream)).unwrap();
    let downloaded = wasm_bindgen_futures::JsFuture::from(response.array_buffer().unwrap()).await.unwrap();
    assert_eq!(store.put(&file, Uint8Array::new(&downloaded)).await.unwrap(), None, "IndexedDB stores no packs");
    assert_eq!(store.stored(&[]).await.unwrap().get(&file.sha256), Some(&(body.len() as u64)));
    let blob = store.file(&[], &file.sha256).await.unwrap().unwrap();
    assert_eq!(bytes_of(&blob).await, body, "the stored bytes are the body, in order");
    assert_eq!(store.stored(&[]).await.unwrap().len(), 1);
    // Served as a worker serves it: a Response over the stored Blob.
    let served = Response::new_with_opt_blob(Some(&blob)).unwrap();
    let text = wasm_bindgen_futures::JsFuture::from(served.array_buffer().unwrap()).await.unwrap();
    assert_eq!(js_sys::Uint8Array::new(&text).length() as usize, body.len());
}

/// A batch download's files are views into one buffer: each is stored as its own bytes,
/// in a pack or in IndexedDB, never as the whole buffer.
#[wasm_bindgen_test]
async fn files_cut_from_one_batch_are_stored_as_their_own_bytes() {
    let parts: Vec<Vec<u8>> = vec![vec![1u8; 1000], vec![2u8; 30], vec![3u8; 5000]];
    let batch = js_sys::Uint8Array::from(&parts.concat()[..]);
    let files: Vec<BundleFile> = parts.iter().enumerate().map(|(i, p)| bundle_file(&format!("f{i}"), p)).collect();
    let (_, opfs_store) = fresh("t-batch").await;
    stead_store::idb::db::delete_database("t-idb-batch").await.unwrap();
    let idb_store = BundleStore::open_idb_named("t-idb-batch").await.unwrap();
    for store in [&opfs_store, &idb_store] {
        let writer = store.writer();
        let mut at = 0;
        for f in &files {
            let end = at + f.size as u32;
            assert_eq!(writer.put_bytes(f, batch.subarray(at, end)).await.unwrap(), None, "no pack is full yet");
            at = end;
        }
        let packs: Vec<Pack> = writer.finish().await.unwrap().into_iter().collect();
        for (f, p) in files.iter().zip(&parts) {
            assert_eq!(read_all(store, &packs, &f.sha256).await.as_ref(), Some(p), "{} in {}", f.path, store.place_name());
        }
        if let Some(pack) = packs.first() {
            assert_eq!(pack.size, 6030, "the pack holds the three files and nothing else");
        }
    }
    let db = stead_store::idb::db::open("t-idb-batch", &["files", "sizes", "docs"]).await.unwrap();
    for (f, p) in files.iter().zip(&parts) {
        let value = stead_store::idb::db::get(&db, "files", &f.sha256).await.unwrap().expect("stored");
        let chunk: js_sys::Uint8Array = js_sys::Array::from(&value).get(0).into();
        assert_eq!(chunk.buffer().byte_length() as usize, p.len(), "{} is stored with the batch's other bytes", f.path);
    }
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
    store.put(&a, held(b"a")).await.unwrap();
    let again = BundleStore::open_idb_named("t-idb-state").await.unwrap();
    assert_eq!(bytes_of(&again.file(&[], &a.sha256).await.unwrap().unwrap()).await, b"a");
    assert_eq!(again.gc(&HashSet::new(), false, &[], &[]).await.unwrap(), vec![a.sha256.clone()]);
    assert_eq!(again.gc(&HashSet::new(), false, &[], &[]).await.unwrap(), Vec::<String>::new(), "a second clean-up finds nothing");
    assert!(again.file(&[], &a.sha256).await.unwrap().is_none());
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
    let packs: Vec<Pack> = store.put(&a, held(b"kept")).await.unwrap().into_iter().collect();
    let again = stead_sw::store::Place::detect().await.open().await.unwrap();
    assert_eq!(again.stored(&packs).await.unwrap().get(&a.sha256), Some(&4));
}

// Packs: how the OPFS store keeps what an install downloads (`stead_sw::pack`).

async fn read_all(store: &BundleStore, packs: &[Pack], sha256: &str) -> Option<Vec<u8>> {
    Some(bytes_of(&store.file(packs, sha256).await.unwrap()?).await)
}

/// The store's folder of contents.
async fn files_dir(parent: &opfs::Dir) -> opfs::Dir {
    let stead = opfs::dir(parent, "stead", false).await.unwrap().unwrap();
    opfs::dir(&stead, "files", false).await.unwrap().unwrap()
}

async fn pack_names(parent: &opfs::Dir) -> Vec<String> {
    let mut names: Vec<String> = opfs::names(&files_dir(parent).await).await.unwrap().into_iter().filter(|n| n.ends_with(".pack")).collect();
    names.sort();
    names
}

/// Three bodies (1 KB, 200 KB, 0 B) stored through one writer and written as one pack.
async fn three_in_a_pack(store: &BundleStore) -> (Pack, Vec<(BundleFile, Vec<u8>)>) {
    let bodies: Vec<Vec<u8>> = vec![vec![1u8; 1_000], (0..200_000u32).map(|i| (i % 251) as u8).collect(), Vec::new()];
    let files: Vec<(BundleFile, Vec<u8>)> = bodies.into_iter().enumerate().map(|(i, b)| (bundle_file(&format!("f{i}"), &b), b)).collect();
    let writer = store.writer();
    for (f, b) in &files {
        assert_eq!(writer.put_bytes(f, held(b)).await.unwrap(), None, "not full: held back");
    }
    (writer.finish().await.unwrap().expect("a pack"), files)
}

#[wasm_bindgen_test]
async fn an_install_s_contents_go_into_one_pack_the_state_lists() {
    let (parent, store) = fresh("t-pack").await;
    let (pack, files) = three_in_a_pack(&store).await;
    assert_eq!(pack_names(&parent).await, [format!("{}.pack", pack.name)]);
    assert_eq!(pack.size, 201_000);
    let packs = vec![pack];
    for (f, body) in &files {
        assert_eq!(read_all(&store, &packs, &f.sha256).await.as_ref(), Some(body), "{}", f.path);
    }
    // Listed in the state, the pack is found by a worker's next life.
    store.save(&Versions { packs: packs.clone(), ..Versions::default() }).await.unwrap();
    let again = BundleStore::open_in(&parent).await.unwrap();
    let saved = again.versions().await.unwrap().packs;
    assert_eq!(saved, packs);
    let stored = again.stored(&saved).await.unwrap();
    assert_eq!(stored.len(), 3);
    for (f, body) in &files {
        assert_eq!(stored.get(&f.sha256), Some(&f.size));
        assert_eq!(read_all(&again, &saved, &f.sha256).await.as_ref(), Some(body), "{}", f.path);
    }
}

#[wasm_bindgen_test]
async fn a_full_pack_is_written_while_the_install_goes_on() {
    let (parent, store) = fresh("t-pack-full").await;
    let big: Vec<u8> = (0..stead_sw::pack::PACK_BYTES as u32 + 10).map(|i| (i % 253) as u8).collect();
    let small = b"after the full one".to_vec();
    let writer = store.writer();
    let (fb, fs) = (bundle_file("big", &big), bundle_file("small", &small));
    let full = writer.put_bytes(&fb, held(&big)).await.unwrap().expect("the full pack is written at once");
    assert_eq!(pack_names(&parent).await.len(), 1);
    assert_eq!(read_all(&store, std::slice::from_ref(&full), &fb.sha256).await, Some(big));
    assert_eq!(writer.put_bytes(&fs, held(&small)).await.unwrap(), None);
    let rest = writer.finish().await.unwrap().expect("the rest");
    assert_eq!(pack_names(&parent).await.len(), 2);
    assert_eq!(read_all(&store, &[full, rest], &fs.sha256).await, Some(small));
    assert_eq!(writer.finish().await.unwrap(), None, "nothing left to write");
}

#[wasm_bindgen_test]
async fn the_clean_up_drops_dead_packs_and_rewrites_mostly_dead_ones() {
    let (parent, store) = fresh("t-pack-gc").await;
    let (pack, files) = three_in_a_pack(&store).await;
    let packs = vec![pack.clone()];
    let all: HashSet<String> = files.iter().map(|(f, _)| f.sha256.clone()).collect();
    let nothing = store.compact(&all, &packs, false).await.unwrap();
    assert_eq!((nothing.added.len(), nothing.dropped.len(), nothing.changed.len()), (0, 0, 0), "all kept: nothing changes");

    assert!(store.compact(&HashSet::new(), &packs, true).await.unwrap().dropped.is_empty(), "nothing changes while an update runs");

    // The 1 KB file dead: the pack is mostly live, so it is listed again without it (its
    // bytes stay in the file, unlisted) and the file stays.
    let most: HashSet<String> = files[1..].iter().map(|(f, _)| f.sha256.clone()).collect();
    let t = store.compact(&most, &packs, false).await.unwrap();
    assert_eq!((t.dropped.as_slice(), t.changed.as_slice()), (std::slice::from_ref(&pack.name), std::slice::from_ref(&files[0].0.sha256)));
    assert_eq!(t.added.len(), 1);
    assert_eq!((t.added[0].name.as_str(), t.added[0].size, t.added[0].entries.len()), (pack.name.as_str(), pack.size, 2));
    store.gc(&most, false, &t.dropped, &t.added).await.unwrap();
    assert_eq!(pack_names(&parent).await, [format!("{}.pack", pack.name)]);
    assert_eq!(store.stored(&t.added).await.unwrap().into_keys().collect::<HashSet<_>>(), most);
    assert_eq!(read_all(&store, &t.added, &files[1].0.sha256).await.as_ref(), Some(&files[1].1));

    // Only the 1 KB file kept: the pack is mostly dead, so it is written again with it alone.
    let (small, small_body) = &files[0];
    let keep = HashSet::from([small.sha256.clone()]);
    let c = store.compact(&keep, &packs, false).await.unwrap();
    assert_eq!(c.dropped, std::slice::from_ref(&pack.name));
    assert_eq!(c.changed.len(), all.len());
    assert_eq!(c.changed.iter().cloned().collect::<HashSet<_>>(), all);
    assert_eq!(c.added.len(), 1);
    assert_eq!(c.added[0].size, 1_000);
    assert_eq!(read_all(&store, &c.added, &small.sha256).await.as_ref(), Some(small_body));
    assert!(store.file(&c.added, &files[1].0.sha256).await.unwrap().is_none());
    // The old pack goes once the state no longer lists it.
    store.gc(&keep, false, &c.dropped, &c.added).await.unwrap();
    assert_eq!(pack_names(&parent).await, [format!("{}.pack", c.added[0].name)]);

    // Nothing kept: the pack is dropped.
    let none = store.compact(&HashSet::new(), &c.added, false).await.unwrap();
    assert_eq!((none.added.len(), none.dropped.len(), none.changed.as_slice()), (0, 1, std::slice::from_ref(&small.sha256)));
    store.gc(&HashSet::new(), false, &none.dropped, &[]).await.unwrap();
    assert!(pack_names(&parent).await.is_empty());
}

#[wasm_bindgen_test]
async fn a_damaged_pack_holds_nothing_and_is_dropped() {
    let (parent, store) = fresh("t-pack-damaged").await;
    let (pack, files) = three_in_a_pack(&store).await;
    let packs = vec![pack.clone()];
    let dir = files_dir(&parent).await;
    let name = format!("{}.pack", pack.name);
    let bytes = opfs::read_bytes(&dir, &name).await.unwrap().unwrap();
    opfs::write_bytes(&dir, &name, &bytes[..bytes.len() - 1]).await.unwrap();
    // A new life (no `File` read yet): the pack cut short serves nothing and counts for nothing.
    let cut = BundleStore::open_in(&parent).await.unwrap();
    assert!(cut.file(&packs, &files[0].0.sha256).await.unwrap().is_none());
    assert!(cut.stored(&packs).await.unwrap().is_empty());
    let all: HashSet<String> = files.iter().map(|(f, _)| f.sha256.clone()).collect();
    let c = cut.compact(&all, &packs, false).await.unwrap();
    assert_eq!((c.added.len(), c.dropped.as_slice()), (0, std::slice::from_ref(&pack.name)));
    cut.gc(&all, false, &c.dropped, &[]).await.unwrap();
    assert!(pack_names(&parent).await.is_empty());
}

#[wasm_bindgen_test]
async fn a_pack_the_state_does_not_list_goes_once_it_is_old() {
    let (parent, store) = fresh("t-pack-unlisted").await;
    let dir = files_dir(&parent).await;
    let now = js_sys::Date::now() as u64;
    let fresh_name = format!("{now:x}-00000001.pack");
    let old_name = format!("{:x}-00000002.pack", now - 11 * 60 * 1000);
    for name in [&fresh_name, &old_name] {
        opfs::write_bytes(&dir, name, b"half a pack").await.unwrap();
    }
    store.gc(&HashSet::new(), false, &[], &[]).await.unwrap();
    assert_eq!(pack_names(&parent).await, [fresh_name], "another worker may still be writing the new one");
}

/// A store an older worker wrote keeps one file a content (`files/<sha256>`): those are
/// still served, counted and cleaned up.
#[wasm_bindgen_test]
async fn contents_stored_one_to_a_file_are_still_served_and_cleaned_up() {
    let (parent, store) = fresh("t-pack-legacy").await;
    let old = bundle_file("old.txt", b"from an older worker");
    let dir = files_dir(&parent).await;
    opfs::write_bytes(&dir, &old.sha256, b"from an older worker").await.unwrap();
    let part = bundle_file("x", b"x").sha256;
    opfs::write_bytes(&dir, &format!("{part}.part"), b"x").await.unwrap();
    assert_eq!(store.stored(&[]).await.unwrap().get(&old.sha256), Some(&old.size));
    assert_eq!(read_all(&store, &[], &old.sha256).await.as_deref(), Some(&b"from an older worker"[..]));
    assert_eq!(store.gc(&HashSet::from([old.sha256.clone()]), false, &[], &[]).await.unwrap(), [part]);
    assert_eq!(opfs::names(&dir).await.unwrap(), vec![old.sha256.clone()]);
    store.gc(&HashSet::new(), false, &[], &[]).await.unwrap();
    assert!(opfs::names(&dir).await.unwrap().is_empty());
}
