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

    let (mut again, replica2) = open(&space, name).await;
    // Opening read the log past the snapshot; the rest is read when asked for.
    again.load_all().await.unwrap();
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

#[wasm_bindgen_test]
async fn a_reopen_after_a_snapshot_reads_the_records_past_it_only() {
    let name = "test-idb-tail";
    destroy(name).await.unwrap();
    let mut rng = SeededRandom::new(3);
    let space = Space::new(2, &mut rng);
    let (mut store, mut replica) = open(&space, name).await;
    // Another device's entries, some before the snapshot and some after.
    let mut other = space.open(1);
    for i in 0..60 {
        replica.commit(vec![op(i)], 1_000 + i as u64, &mut rng).unwrap();
        if i % 20 == 0 {
            let e = other.commit(vec![op(100 + i)], 1_000 + i as u64, &mut rng).unwrap();
            replica.ingest(e, 5_000).unwrap();
        }
        if i == 49 {
            replica.save_snapshot().unwrap();
        }
    }
    store.flush().await.unwrap();
    let written = all(&store);

    let (mut again, replica2) = open(&space, name).await;
    assert_eq!(again.cache().entry_count(), 12, "the 10 entries past the snapshot and each replica's last covered one");
    assert_eq!(again.cache().heads().unwrap(), store.cache().heads().unwrap());
    assert_eq!(replica2.version_vector(), replica.version_vector());
    assert_eq!(replica2.state(), replica.state());
    let me = replica.id();
    assert!(matches!(again.cache().read(me, 3, 2), Err(stead_core::Error::NotLoaded { seq: 3, .. })));
    let wanted = again.cache().take_wanted();
    again.load(&wanted).await.unwrap();
    assert_eq!(again.cache().read(me, 3, 2).unwrap(), store.cache().read(me, 3, 2).unwrap());
    again.load_all().await.unwrap();
    let mut got = all(&again);
    let mut want = written;
    got.sort_by_key(|e| (e.header.replica, e.header.seq));
    want.sort_by_key(|e| (e.header.replica, e.header.seq));
    assert_eq!(got, want);
}

#[wasm_bindgen_test]
async fn a_garbled_record_past_the_snapshot_is_still_cut_and_one_before_it_refused_on_load() {
    let name = "test-idb-tail-garbled";
    destroy(name).await.unwrap();
    let mut rng = SeededRandom::new(4);
    let space = Space::new(1, &mut rng);
    let (mut store, mut replica) = open(&space, name).await;
    for i in 0..20 {
        replica.commit(vec![op(i)], 1_000 + i as u64, &mut rng).unwrap();
        if i == 9 {
            replica.save_snapshot().unwrap();
        }
    }
    store.flush().await.unwrap();
    let written = all(&store);
    let me = replica.id();
    let database = db::open(name, &["log", "snapshot", "meta"]).await.unwrap();
    let key = |seq: u64| format!("{}:{:020}", hex::encode(me.as_bytes()), seq);
    db::put(&database, "log", &key(15), &Uint8Array::from(&b"garbage"[..]).into()).await.unwrap();
    database.close();

    // Past the snapshot: found on open, and the log ends there as before.
    let (again, _) = open(&space, name).await;
    assert!(again.recovered().is_some_and(|r| r.contains(&key(15))), "{:?}", again.recovered());
    assert_eq!(again.cache().heads().unwrap().get(&me), Some(&15));
    assert_eq!(all(&again), written[..15].to_vec(), "the whole log was read, and it ends at the damage");
    again.close();
    // Before the snapshot, with the tail intact: opening does not read it, loading refuses it.
    let database = db::open(name, &["log", "snapshot", "meta"]).await.unwrap();
    db::put(&database, "log", &key(15), &Uint8Array::from(&written[15].encode()[..]).into()).await.unwrap();
    db::put(&database, "log", &key(2), &Uint8Array::from(&b"garbage"[..]).into()).await.unwrap();
    database.close();
    let (mut fourth, replica4) = open(&space, name).await;
    assert!(fourth.recovered().is_none());
    assert_eq!(replica4.version_vector(), replica.version_vector());
    let err = fourth.load_all().await.unwrap_err();
    assert!(err.to_string().contains(&key(2)), "{err}");
}
