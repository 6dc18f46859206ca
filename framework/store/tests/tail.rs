//! A [`CachedStore`] holding only the log's tail (what the OPFS and IndexedDB adapters open
//! with): the replica opens from the snapshot and the tail alone, answers as one opened
//! over the whole log, and the old entries it lacks are asked for, loaded and sent.

use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::log::Entry;
use stead_core::ops::{Op, Value};
use stead_core::replica::{Replica, snapshot_vector};
use stead_core::store::{MemStore, Store};
use stead_core::sync::{Sync, SyncConfig};
use stead_core::testing::Space;
use stead_store::CachedStore;

fn set(record: u8, i: i64) -> Op {
    Op::Set { collection: "c".into(), record: RecordId([record; 16]), field: "n".into(), value: Value::Int(i) }
}

/// What an adapter opening `full` with its tail would hold: the snapshot, the metadata
/// and, per replica, the entries from the snapshot's vector on.
fn tail_of(full: &MemStore) -> CachedStore {
    let cache = CachedStore::default();
    let snapshot = full.snapshot().unwrap().expect("a snapshot");
    let covers = snapshot_vector(&snapshot).unwrap();
    for (r, &n) in &covers {
        cache.set_floor(*r, n);
    }
    for e in full.entries() {
        if e.header.seq >= covers.get(&e.header.replica).copied().unwrap_or(0) {
            cache.load_entry(e).unwrap();
        }
    }
    cache.load_snapshot(snapshot);
    for key in ["membership", "schema"] {
        if let Some(v) = full.meta(key).unwrap() {
            cache.load_meta(key, v);
        }
    }
    cache
}

/// The snapshot's chunks are meta keys: copy every meta key the replica wrote.
fn tail_with_chunks(full: &MemStore, keys: &[String]) -> CachedStore {
    let cache = tail_of(full);
    for k in keys {
        if let Some(v) = full.meta(k).unwrap() {
            cache.load_meta(k, v);
        }
    }
    cache
}

fn chunk_keys() -> Vec<String> {
    (0..2).flat_map(|p| (0..64).map(move |n| format!("snapshot-{p}-{n}"))).collect()
}

fn entries(store: &dyn Store) -> Vec<Entry> {
    let heads = store.heads().unwrap();
    heads.keys().flat_map(|r| store.read(*r, 0, usize::MAX).unwrap()).collect()
}

/// Device 0 writes `n` entries over a store in memory, device 1 a few, they sync, and
/// device 0 saves a snapshot and writes `after` more.
fn history(space: &Space, n: i64, after: i64, rng: &mut SeededRandom) -> (Replica, MemStore) {
    let mut a = space.open_with(0, Box::new(MemStore::new()));
    let mut b = space.open(1);
    for i in 0..n {
        a.commit(vec![set((i % 40) as u8, i)], 1_000 + i as u64, rng).unwrap();
    }
    for i in 0..5 {
        let e = b.commit(vec![set(200, i)], 1_000 + i as u64, rng).unwrap();
        a.ingest(e, 2_000).unwrap();
    }
    a.save_snapshot().unwrap();
    for i in 0..after {
        a.commit(vec![set(7, 1_000 + i)], 3_000 + i as u64, rng).unwrap();
    }
    // The store a's replica wrote: rebuild it from its own log, snapshot and meta.
    let mut full = MemStore::new();
    for e in entries(a.store()) {
        full.append(&e).unwrap();
    }
    full.put_snapshot(&a.store().snapshot().unwrap().unwrap()).unwrap();
    for k in chunk_keys().iter().chain(&["membership".to_owned()]) {
        if let Some(v) = a.store().meta(k).unwrap() {
            full.put_meta(k, &v).unwrap();
        }
    }
    (a, full)
}

#[test]
fn a_replica_opened_from_the_tail_answers_as_one_opened_from_the_whole_log() {
    let mut rng = SeededRandom::new(1);
    let space = Space::new(2, &mut rng);
    let (a, full) = history(&space, 300, 20, &mut rng);
    let cache = tail_with_chunks(&full, &chunk_keys());
    assert_eq!(cache.entry_count(), 20, "only the entries past the snapshot are in memory");
    let tail = space.open_with(0, Box::new(cache.clone()));
    let whole = space.open_with(0, Box::new(full.clone()));
    assert_eq!(tail.version_vector(), a.version_vector());
    assert_eq!(cache.heads().unwrap(), full.heads().unwrap(), "the heads are the whole log's");
    assert_eq!(tail.state(), whole.state());
    assert_eq!(tail.tips(), whole.tips());
    assert!(cache.take_wanted().is_empty(), "opening asked for nothing below the tail");
    assert!(!tail.take_incomplete());
}

#[test]
fn a_read_below_the_tail_is_refused_noted_and_answered_once_loaded() {
    let mut rng = SeededRandom::new(2);
    let space = Space::new(2, &mut rng);
    let (a, full) = history(&space, 50, 3, &mut rng);
    let cache = tail_with_chunks(&full, &chunk_keys());
    let tail = space.open_with(0, Box::new(cache.clone()));
    let me = a.id();
    let err = tail.entries_from(me, 10, 5, usize::MAX).unwrap_err();
    assert!(matches!(err, stead_core::Error::NotLoaded { seq: 10, .. }), "{err}");
    assert_eq!(cache.take_wanted().get(&me), Some(&10));
    let floor = cache.floors()[&me];
    cache.prepend(me, full.read(me, 10, (floor - 10) as usize).unwrap()).unwrap();
    assert_eq!(tail.entries_from(me, 10, 5, usize::MAX).unwrap(), full.read(me, 10, 5).unwrap());
    assert!(cache.prepend(me, full.read(me, 0, 3).unwrap()[1..].to_vec()).is_err(), "entries that do not end at the floor are refused");
}

/// The server lacks this device's entries from before the snapshot (never acknowledged,
/// or lost): the sync skips them without ending the connection, and sends them once the
/// adapter loaded what the store noted.
#[test]
fn own_entries_below_the_tail_are_sent_once_loaded() {
    let mut rng = SeededRandom::new(3);
    let space = Space::new(3, &mut rng);
    let (a, full) = history(&space, 40, 4, &mut rng);
    let cache = tail_with_chunks(&full, &chunk_keys());
    let mut tail = space.open_with(0, Box::new(cache.clone()));
    let mut server = space.open(2);
    let (mut sa, mut ss) = (Sync::new(SyncConfig::default(), &mut rng), Sync::new(SyncConfig::default(), &mut rng));
    let step = |tail: &mut Replica, server: &mut Replica, sa: &mut Sync, ss: &mut Sync| {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(f) = sa.generate(&*tail) {
                ss.receive(&f.encode(), server, 5_000).unwrap();
                moved = true;
            }
            while let Some(f) = ss.generate(&*server) {
                sa.receive(&f.encode(), tail, 5_000).unwrap();
                moved = true;
            }
            if !moved {
                break;
            }
        }
    };
    step(&mut tail, &mut server, &mut sa, &mut ss);
    assert!(!sa.is_closed() && !ss.is_closed(), "a read below the tail ends no connection");
    assert_eq!(server.version_vector().get(&a.id()), None, "nothing of a's chain went before its start was loaded");
    let wanted = cache.take_wanted();
    assert_eq!(wanted.get(&a.id()), Some(&0));
    for (r, from) in wanted {
        let floor = cache.floors()[&r];
        cache.prepend(r, full.read(r, from, (floor - from) as usize).unwrap()).unwrap();
    }
    step(&mut tail, &mut server, &mut sa, &mut ss);
    assert_eq!(server.version_vector(), a.version_vector(), "every entry reached the server");
    assert_eq!(server.state(), a.state());
}

/// A snapshot chunk that is lost is rebuilt from the log; over a tail-only store that
/// cannot be done, and the replica says so instead of answering from a partial rebuild.
#[test]
fn a_lost_chunk_over_a_tail_only_store_asks_for_the_whole_log() {
    let mut rng = SeededRandom::new(4);
    let space = Space::new(2, &mut rng);
    let (a, full) = history(&space, 30, 0, &mut rng);
    let cache = tail_of(&full);
    let tail = space.open_with(0, Box::new(cache.clone()));
    let _ = tail.state();
    assert!(tail.take_incomplete(), "the chunks are missing and the log below the tail is not loaded");
    for (r, _) in cache.floors() {
        let floor = cache.floors()[&r];
        cache.prepend(r, full.read(r, 0, floor as usize).unwrap()).unwrap();
    }
    let again = space.open_with(0, Box::new(cache));
    assert_eq!(again.state(), a.state());
    assert!(!again.take_incomplete());
}
