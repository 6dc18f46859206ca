//! The OPFS adapter in a real browser. `cargo xtask test` runs this file twice: in a
//! service worker (`WASM_BINDGEN_USE_SERVICE_WORKER=1`) and in a page
//! (`WASM_BINDGEN_USE_BROWSER=1`).
#![cfg(target_arch = "wasm32")]

use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::log::Entry;
use stead_core::ops::Op;
use stead_core::replica::Replica;
use stead_core::store::Store;
use stead_core::testing::Space;
use stead_store::opfs::{OpfsOptions, OpfsStore, fs};
use wasm_bindgen_test::wasm_bindgen_test;

async fn fresh(name: &str) -> fs::Dir {
    let root = fs::root().await.unwrap();
    fs::remove(&root, name, true).await.unwrap();
    fs::dir(&root, name, true).await.unwrap().unwrap()
}

fn small_segments() -> OpfsOptions {
    OpfsOptions { segment_bytes: 2_000, ..OpfsOptions::default() }
}

fn op(i: i64) -> Op {
    Op::CounterAdd { collection: "c".into(), record: RecordId([1; 16]), field: "n".into(), delta: i }
}

async fn open(space: &Space, dir: &fs::Dir) -> (OpfsStore, Replica) {
    let store = OpfsStore::open(dir.clone(), small_segments()).await.unwrap();
    let replica = space.open_with(0, Box::new(store.cache()));
    (store, replica)
}

fn all(store: &OpfsStore) -> Vec<Entry> {
    let cache = store.cache();
    let heads = cache.heads().unwrap();
    heads.keys().flat_map(|r| cache.read(*r, 0, usize::MAX).unwrap()).collect()
}

#[wasm_bindgen_test]
async fn entries_survive_a_reopen_across_many_segments() {
    let mut rng = SeededRandom::new(1);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-reopen").await;
    let (mut store, mut replica) = open(&space, &dir).await;
    for i in 0..60 {
        replica.commit(vec![op(i)], 1_000 + i as u64, &mut rng).unwrap();
        if i % 7 == 0 {
            store.flush().await.unwrap();
        }
    }
    store.flush().await.unwrap();
    let written = all(&store);
    assert!(store.segment_count() > 3, "60 entries in 2 KB segments make several segments");

    let (again, replica2) = open(&space, &dir).await;
    assert_eq!(all(&again), written);
    assert_eq!(replica2.version_vector(), replica.version_vector());
    assert!(again.recovered().is_none());
}

#[wasm_bindgen_test]
async fn a_garbled_tail_is_cut_off_and_the_prefix_kept() {
    let mut rng = SeededRandom::new(2);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-torn").await;
    let (mut store, mut replica) = open(&space, &dir).await;
    for i in 0..10 {
        replica.commit(vec![op(i)], 1_000 + i as u64, &mut rng).unwrap();
    }
    store.flush().await.unwrap();
    let written = all(&store);
    // Flip a byte near the end of the newest segment: its last record is damaged.
    let log = fs::dir(&dir, "log", false).await.unwrap().unwrap();
    let mut names = fs::names(&log).await.unwrap();
    names.sort();
    let last = names.last().unwrap().clone();
    let mut bytes = fs::read_bytes(&log, &last).await.unwrap().unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    fs::write_bytes(&log, &last, &bytes).await.unwrap();

    let (mut again, mut replica2) = open(&space, &dir).await;
    let rec = again.recovered().expect("the damage is reported").clone();
    assert_eq!(rec.reason, "checksum mismatch");
    assert_eq!(all(&again), written[..written.len() - 1].to_vec(), "every entry before the damaged one is kept");
    // The store goes on: the lost entry's seq is written again and survives a reopen.
    replica2.commit(vec![op(99)], 5_000, &mut rng).unwrap();
    again.flush().await.unwrap();
    let (third, _) = open(&space, &dir).await;
    assert_eq!(all(&third).len(), written.len());
    assert!(third.recovered().is_none());
}

#[wasm_bindgen_test]
async fn snapshots_switch_by_pointer_and_meta_is_kept() {
    let mut rng = SeededRandom::new(3);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-snap").await;
    let (mut store, mut replica) = open(&space, &dir).await;
    for i in 0..5 {
        replica.commit(vec![op(i)], 1_000 + i as u64, &mut rng).unwrap();
    }
    replica.save_snapshot().unwrap();
    replica.commit(vec![op(5)], 2_000, &mut rng).unwrap();
    replica.save_snapshot().unwrap();
    let mut cache = store.cache();
    cache.put_meta("schema", b"{}").unwrap();
    store.flush().await.unwrap();

    let files = fs::names(&dir).await.unwrap();
    assert_eq!(files.iter().filter(|n| n.starts_with("snap-")).count(), 1, "old snapshots are removed: {files:?}");
    let (again, replica2) = open(&space, &dir).await;
    assert_eq!(again.cache().snapshot().unwrap(), store.cache().snapshot().unwrap());
    assert_eq!(again.cache().meta("schema").unwrap().as_deref(), Some(&b"{}"[..]));
    assert_eq!(replica2.state(), replica.state());
}
