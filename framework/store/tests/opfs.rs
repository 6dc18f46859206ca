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

/// 120 entries in 2 KB segments, a snapshot after the first 100, flushed.
async fn snapshotted(space: &Space, dir: &fs::Dir, rng: &mut SeededRandom) -> (OpfsStore, Replica, Vec<Entry>) {
    let (mut store, mut replica) = open(space, dir).await;
    for i in 0..120 {
        replica.commit(vec![op(i)], 1_000 + i as u64, rng).unwrap();
        if i == 99 {
            replica.save_snapshot().unwrap();
        }
        if i % 10 == 0 {
            store.flush().await.unwrap();
        }
    }
    store.flush().await.unwrap();
    let written = all(&store);
    (store, replica, written)
}

#[wasm_bindgen_test]
async fn a_reopen_after_a_snapshot_reads_the_tail_only_and_answers_the_same() {
    let mut rng = SeededRandom::new(4);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-tail").await;
    let (store, replica, written) = snapshotted(&space, &dir, &mut rng).await;
    let (mut again, replica2) = open(&space, &dir).await;
    assert!(again.segments_read() * 2 < again.segment_count() as usize, "read {} of {} segments", again.segments_read(), again.segment_count());
    assert_eq!(again.cache().heads().unwrap(), store.cache().heads().unwrap());
    assert_eq!(replica2.version_vector(), replica.version_vector());
    assert_eq!(replica2.state(), replica.state());
    assert!(again.recovered().is_none());
    // What opening left on disk is read when asked for, whole and in order.
    let me = replica.id();
    assert!(matches!(again.cache().read(me, 5, 3), Err(stead_core::Error::NotLoaded { seq: 5, .. })));
    let wanted = again.cache().take_wanted();
    again.load(&wanted).await.unwrap();
    assert_eq!(again.cache().read(me, 5, 3).unwrap(), written[5..8].to_vec());
    again.load_all().await.unwrap();
    assert_eq!(all(&again), written);
}

#[wasm_bindgen_test]
async fn appends_after_a_tail_open_survive_the_next_one() {
    let mut rng = SeededRandom::new(5);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-tail-append").await;
    let (_, _, mut written) = snapshotted(&space, &dir, &mut rng).await;
    let (mut again, mut replica2) = open(&space, &dir).await;
    for i in 0..80 {
        written.push(replica2.commit(vec![op(500 + i)], 9_000 + i as u64, &mut rng).unwrap());
    }
    again.flush().await.unwrap();
    let (mut third, replica3) = open(&space, &dir).await;
    assert_eq!(replica3.version_vector(), replica2.version_vector());
    assert_eq!(replica3.state(), replica2.state());
    third.load_all().await.unwrap();
    assert_eq!(all(&third), written);
}

#[wasm_bindgen_test]
async fn a_garbled_tail_is_still_cut_off_when_the_index_skips_old_segments() {
    let mut rng = SeededRandom::new(6);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-tail-torn").await;
    let (_, _, written) = snapshotted(&space, &dir, &mut rng).await;
    let log = fs::dir(&dir, "log", false).await.unwrap().unwrap();
    let mut names = fs::names(&log).await.unwrap();
    names.sort();
    let last = names.last().unwrap().clone();
    let mut bytes = fs::read_bytes(&log, &last).await.unwrap().unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    fs::write_bytes(&log, &last, &bytes).await.unwrap();

    let (mut again, replica2) = open(&space, &dir).await;
    assert_eq!(again.recovered().expect("the damage is reported").reason, "checksum mismatch");
    assert_eq!(replica2.version_vector().values().sum::<u64>(), written.len() as u64 - 1);
    again.load_all().await.unwrap();
    assert_eq!(all(&again), written[..written.len() - 1].to_vec(), "every entry before the damaged one is kept");
    let (third, _) = open(&space, &dir).await;
    assert!(third.recovered().is_none());
}

#[wasm_bindgen_test]
async fn a_closed_segment_cut_short_is_read_and_cut_as_before_the_index() {
    let mut rng = SeededRandom::new(7);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-tail-short").await;
    let (store, _, written) = snapshotted(&space, &dir, &mut rng).await;
    let log = fs::dir(&dir, "log", false).await.unwrap().unwrap();
    let mut names = fs::names(&log).await.unwrap();
    names.sort();
    // The second newest segment loses its last bytes: its length is not the index's.
    let victim = names[names.len() - 2].clone();
    let bytes = fs::read_bytes(&log, &victim).await.unwrap().unwrap();
    fs::write_bytes(&log, &victim, &bytes[..bytes.len() - 5]).await.unwrap();

    let (mut again, _) = open(&space, &dir).await;
    let rec = again.recovered().expect("the damage is reported").clone();
    assert_eq!((rec.segment, rec.dropped_segments), (victim, 1));
    again.load_all().await.unwrap();
    let kept = all(&again);
    assert!(kept.len() < written.len() && kept[..] == written[..kept.len()], "a prefix is kept");
    drop(store);
}

#[wasm_bindgen_test]
async fn a_store_without_the_index_opens_whole_once_and_writes_it() {
    let mut rng = SeededRandom::new(8);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-tail-old").await;
    let (_, replica, written) = snapshotted(&space, &dir, &mut rng).await;
    // A store an older version wrote has no segments.idx.
    assert!(fs::remove(&dir, "segments.idx", false).await.unwrap());
    let (again, replica2) = open(&space, &dir).await;
    assert_eq!(again.segments_read() as u32, again.segment_count(), "read whole");
    assert_eq!(all(&again), written);
    assert_eq!(replica2.state(), replica.state());
    assert!(fs::read_bytes(&dir, "segments.idx").await.unwrap().is_some(), "the index is built once");
    let (third, replica3) = open(&space, &dir).await;
    assert!(third.segments_read() * 2 < third.segment_count() as usize, "then only the tail is read");
    assert_eq!(replica3.state(), replica.state());
    // A damaged index is no worse than none.
    fs::write_bytes(&dir, "segments.idx", b"SIX1garbage").await.unwrap();
    let (mut fourth, replica4) = open(&space, &dir).await;
    assert_eq!(replica4.state(), replica.state());
    fourth.load_all().await.unwrap();
    assert_eq!(all(&fourth), written);
}

/// Waits `ms` without yielding: enough for a file rewritten after it to carry a later
/// `lastModified`.
fn spin(ms: f64) {
    let until = js_sys::Date::now() + ms;
    while js_sys::Date::now() < until {}
}

async fn modified(dir: &fs::Dir, name: &str) -> Option<f64> {
    fs::file(dir, name).await.unwrap().map(|f| f.last_modified())
}

/// 600 records in 3 snapshot chunks of each parity (two saves), flushed.
async fn chunked(space: &Space, dir: &fs::Dir, rng: &mut SeededRandom) -> (OpfsStore, Replica) {
    let (mut store, mut replica) = open(space, dir).await;
    for i in 0..600u32 {
        let mut id = [0; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        let op = Op::CounterAdd { collection: "c".into(), record: RecordId(id), field: "n".into(), delta: 1 };
        replica.commit(vec![op], 1_000 + u64::from(i), rng).unwrap();
        if i == 299 || i == 599 {
            replica.save_snapshot().unwrap();
        }
    }
    store.flush().await.unwrap();
    (store, replica)
}

#[wasm_bindgen_test]
async fn an_acknowledgement_rewrites_only_the_small_metadata_pack() {
    let mut rng = SeededRandom::new(9);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-packs").await;
    let (mut store, replica) = chunked(&space, &dir, &mut rng).await;
    let chunks = [modified(&dir, "chunks-0.pack").await, modified(&dir, "chunks-1.pack").await];
    assert!(chunks.iter().all(Option::is_some), "each parity has its pack");
    spin(30.0);
    // What the engine stores when the server acknowledges: one small key.
    store.cache().put_meta("acked", &42u64.to_le_bytes()).unwrap();
    assert_eq!(store.flush().await.unwrap(), 1);
    assert_eq!([modified(&dir, "chunks-0.pack").await, modified(&dir, "chunks-1.pack").await], chunks, "the chunks were not written again");
    let small = fs::size(&dir, "meta.pack").await.unwrap().unwrap();
    assert!(small < 512, "meta.pack holds the small keys only: {small} bytes");

    let (again, replica2) = open(&space, &dir).await;
    assert!(again.recovered().is_none());
    assert!(again.segments_read() * 2 < again.segment_count() as usize, "opened from the snapshot");
    assert_eq!(again.cache().meta("acked").unwrap().as_deref(), Some(&42u64.to_le_bytes()[..]));
    assert_eq!(replica2.state(), replica.state());
}

/// A `meta.pack` as versions before the chunk packs wrote it: every key in one file.
fn old_meta_pack(keys: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"SMP1".to_vec();
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for (k, v) in keys {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[wasm_bindgen_test]
async fn a_store_with_every_key_in_meta_pack_opens_from_its_snapshot_and_moves_the_chunks() {
    let mut rng = SeededRandom::new(10);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-packs-old").await;
    let (store, replica) = chunked(&space, &dir, &mut rng).await;
    let mut keys = vec![("schema".to_owned(), b"{}".to_vec())];
    for parity in 0..2 {
        for n in 0.. {
            let key = stead_core::replica::chunk_key(parity, n);
            match store.cache().meta(&key).unwrap() {
                Some(v) => keys.push((key, v)),
                None => break,
            }
        }
    }
    assert!(keys.len() > 4, "both saves made chunks: {}", keys.len());
    drop(store);
    fs::write_bytes(&dir, "meta.pack", &old_meta_pack(&keys)).await.unwrap();
    assert!(fs::remove(&dir, "chunks-0.pack", false).await.unwrap());
    assert!(fs::remove(&dir, "chunks-1.pack", false).await.unwrap());
    let old_size = fs::size(&dir, "meta.pack").await.unwrap().unwrap();

    let (mut again, replica2) = open(&space, &dir).await;
    assert!(again.recovered().is_none());
    assert!(again.segments_read() * 2 < again.segment_count() as usize, "opened from the snapshot");
    assert_eq!(replica2.state(), replica.state());
    // The next metadata write moves the chunks to their packs.
    again.cache().put_meta("acked", &7u64.to_le_bytes()).unwrap();
    again.flush().await.unwrap();
    assert!(fs::size(&dir, "meta.pack").await.unwrap().unwrap() * 10 < old_size, "meta.pack shrank from {old_size} bytes");
    for pack in ["chunks-0.pack", "chunks-1.pack"] {
        assert!(fs::size(&dir, pack).await.unwrap().is_some_and(|n| n > 1_000), "{pack} holds its parity's chunks again");
    }
    let (third, replica3) = open(&space, &dir).await;
    assert!(third.recovered().is_none());
    assert!(third.segments_read() * 2 < third.segment_count() as usize, "opened from the snapshot");
    assert_eq!(third.cache().meta("schema").unwrap().as_deref(), Some(&b"{}"[..]));
    assert_eq!(replica3.state(), replica.state());
}

#[wasm_bindgen_test]
async fn a_damaged_chunk_pack_is_reported_and_the_state_rebuilt_from_the_log() {
    let mut rng = SeededRandom::new(11);
    let space = Space::new(1, &mut rng);
    let dir = fresh("test-packs-torn").await;
    let (store, replica) = chunked(&space, &dir, &mut rng).await;
    drop(store);
    let mut bytes = fs::read_bytes(&dir, "chunks-0.pack").await.unwrap().unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write_bytes(&dir, "chunks-0.pack", &bytes).await.unwrap();
    let (again, replica2) = open(&space, &dir).await;
    assert_eq!(again.recovered().expect("the damage is reported").segment, "chunks-0.pack");
    assert_eq!(again.segments_read() as u32, again.segment_count(), "the log is read whole");
    assert_eq!(replica2.state(), replica.state());
}
