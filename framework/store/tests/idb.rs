//! The IndexedDB adapter in a real browser; `cargo xtask test` runs it in a service worker
//! and in a page, like the OPFS tests.
#![cfg(target_arch = "wasm32")]

use js_sys::Uint8Array;
use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::log::{Entry, Limits};
use stead_core::ops::Op;
use stead_core::replica::Replica;
use stead_core::store::Store;
use stead_core::testing::Space;
use stead_store::idb::{IdbStore, db, destroy};
use wasm_bindgen_test::wasm_bindgen_test;

fn op(i: i64) -> Op {
    Op::CounterAdd { collection: "c".into(), record: RecordId([1; 16]), field: "n".into(), delta: i }
}

async fn open(space: &Space, name: &str) -> (IdbStore, Replica) {
    let store = IdbStore::open(name, Limits::default()).await.unwrap();
    let replica = space.open_with(0, Box::new(store.cache()));
    (store, replica)
}

fn all(store: &IdbStore) -> Vec<Entry> {
    let cache = store.cache();
    let heads = cache.heads().unwrap();
    heads.keys().flat_map(|r| cache.read(*r, 0, usize::MAX).unwrap()).collect()
}

#[wasm_bindgen_test]
async fn entries_snapshots_and_meta_survive_a_reopen() {
    let name = "test-idb-reopen";
    destroy(name).await.unwrap();
    let mut rng = SeededRandom::new(1);
    let space = Space::new(1, &mut rng);
    let (mut store, mut replica) = open(&space, name).await;
    for i in 0..40 {
        replica.commit(vec![op(i)], 1_000 + i as u64, &mut rng).unwrap();
        if i % 9 == 0 {
            store.flush().await.unwrap();
        }
    }
    replica.save_snapshot().unwrap();
    store.cache().put_meta("schema", b"{}").unwrap();
    store.flush().await.unwrap();

    let (again, replica2) = open(&space, name).await;
    assert_eq!(all(&again), all(&store));
    assert_eq!(again.cache().meta("schema").unwrap().as_deref(), Some(&b"{}"[..]));
    assert_eq!(replica2.version_vector(), replica.version_vector());
    assert_eq!(replica2.state(), replica.state());
    assert!(again.recovered().is_none());
}

#[wasm_bindgen_test]
async fn a_garbled_record_ends_its_replica_log_there_and_the_prefix_is_kept() {
    let name = "test-idb-garbled";
    destroy(name).await.unwrap();
    let mut rng = SeededRandom::new(2);
    let space = Space::new(1, &mut rng);
    let (mut store, mut replica) = open(&space, name).await;
    for i in 0..6 {
        replica.commit(vec![op(i)], 1_000 + i as u64, &mut rng).unwrap();
    }
    store.flush().await.unwrap();
    let written = all(&store);
    // Garble the record of seq 4.
    let database = db::open(name, &["log", "snapshot", "meta"]).await.unwrap();
    let key = format!("{}:{:020}", hex::encode(written[4].header.replica.as_bytes()), 4);
    db::put(&database, "log", &key, &Uint8Array::from(&b"garbage"[..]).into()).await.unwrap();
    database.close();

    let (again, _) = open(&space, name).await;
    assert!(again.recovered().is_some_and(|r| r.contains(&key)), "{:?}", again.recovered());
    assert_eq!(all(&again), written[..4].to_vec());
}
