//! The native file store: round trips, segment roll-over, torn-tail recovery, corruption,
//! atomic snapshots, and a replica reopened from it.

#![cfg(not(target_arch = "wasm32"))]

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::log::Entry;
use stead_core::ops::{Op, Value};
use stead_core::store::Store;
use stead_core::testing::Space;
use stead_store::{FileStore, Options};

const NOW: u64 = 1_700_000_000_000;

fn entries(n: usize, seed: u64) -> (Space, Vec<Entry>) {
    let mut rng = SeededRandom::new(seed);
    let space = Space::new(1, &mut rng);
    let mut r = space.open(0);
    let out = (0..n)
        .map(|i| {
            let op = Op::Set {
                collection: "t".into(),
                record: RecordId([(i % 7) as u8; 16]),
                field: "n".into(),
                value: Value::Str("x".repeat(i % 50)),
            };
            r.commit(vec![op], NOW + i as u64, &mut rng).unwrap()
        })
        .collect();
    (space, out)
}

fn small_segments() -> Options {
    Options { segment_bytes: 2048, fsync: false, ..Options::default() }
}

fn segments(root: &Path) -> Vec<PathBuf> {
    let log = root.join("log");
    let dir = fs::read_dir(&log).unwrap().next().unwrap().unwrap().path();
    let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn entries_round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (_, all) = entries(60, 1);
    let replica = all[0].header.replica;
    let mut store = FileStore::open(dir.path(), small_segments()).unwrap();
    for e in &all {
        store.append(e).unwrap();
    }
    assert!(store.segment_count(replica) > 3, "segments roll over at the size bound");
    assert!(store.append(&all[3]).is_err(), "out-of-order appends are refused");
    let check = |store: &FileStore| {
        assert_eq!(store.heads().unwrap().get(&replica), Some(&60));
        assert_eq!(store.read(replica, 0, 1000).unwrap(), all);
        assert_eq!(store.read(replica, 17, 5).unwrap(), all[17..22].to_vec());
        assert_eq!(store.read(replica, 59, 5).unwrap(), all[59..].to_vec());
        assert!(store.read(replica, 60, 5).unwrap().is_empty());
    };
    check(&store);
    drop(store);
    let mut store = FileStore::open(dir.path(), small_segments()).unwrap();
    assert!(store.recovered().is_empty());
    check(&store);
    // Appending goes on after a reopen.
    let (_, more) = entries(61, 1);
    store.append(&more[60]).unwrap();
    assert_eq!(store.read(replica, 60, 1).unwrap(), vec![more[60].clone()]);
}

#[test]
fn reads_in_a_long_segment_start_at_the_nearest_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_, all) = entries(200, 4);
    let replica = all[0].header.replica;
    let options = Options { fsync: false, ..Options::default() };
    let mut store = FileStore::open(dir.path(), options.clone()).unwrap();
    for e in &all {
        store.append(e).unwrap();
    }
    assert_eq!(store.segment_count(replica), 1);
    let whole_size: usize = all.iter().map(|e| e.encoded_len()).sum();
    let stored = fs::metadata(&segments(dir.path())[0]).unwrap().len() as usize;
    assert!(stored < whole_size * 3 / 4, "compact records: {stored} bytes for {whole_size} of entries");
    for store in [store, FileStore::open(dir.path(), options).unwrap()] {
        for (from, n) in [(0, 200), (63, 3), (64, 1), (127, 2), (130, 5), (199, 9)] {
            let want = all[from..(from + n).min(200)].to_vec();
            assert_eq!(store.read(replica, from as u64, n).unwrap(), want, "from {from}");
        }
    }
}

#[test]
fn appends_after_reopens_frame_the_segment_as_one_writer_would() {
    // Opening decodes only the newest segment's records from its last whole one on; the
    // appends after it must still put whole records where reads expect them.
    let (_, all) = entries(200, 5);
    let replica = all[0].header.replica;
    let options = Options { fsync: false, ..Options::default() };
    let (once, reopened) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut store = FileStore::open(once.path(), options.clone()).unwrap();
    for e in &all {
        store.append(e).unwrap();
    }
    drop(store);
    let mut from = 0;
    for upto in [1, 63, 64, 65, 150, 200] {
        let mut store = FileStore::open(reopened.path(), options.clone()).unwrap();
        assert!(store.recovered().is_empty(), "reopened at {from}: {:?}", store.recovered());
        assert_eq!(store.heads().unwrap().get(&replica).copied().unwrap_or(0), from as u64);
        for e in &all[from..upto] {
            store.append(e).unwrap();
        }
        from = upto;
    }
    assert_eq!(fs::read(&segments(reopened.path())[0]).unwrap(), fs::read(&segments(once.path())[0]).unwrap());
    let store = FileStore::open(reopened.path(), options).unwrap();
    assert_eq!(store.read(replica, 0, 1000).unwrap(), all);
}

#[test]
fn a_record_whose_checksum_holds_but_body_does_not_decode_fails_its_reads_only() {
    // A bad writer, not a crash: opening does not decode compact records before the newest
    // segment's last whole one, so it keeps the log whole; reads of that run refuse it.
    let dir = tempfile::tempdir().unwrap();
    let (_, all) = entries(100, 6);
    let replica = all[0].header.replica;
    let options = Options { fsync: false, ..Options::default() };
    let mut store = FileStore::open(dir.path(), options.clone()).unwrap();
    for e in &all {
        store.append(e).unwrap();
    }
    drop(store);
    let path = segments(dir.path()).remove(0);
    let mut bytes = fs::read(&path).unwrap();
    let skim = stead_store::segment::skim(&bytes).unwrap();
    let rec = skim.records[10];
    assert!(rec.compact);
    // `varint(len × 2 + 1) ‖ crc ‖ body`, the body opening with the run's slot: name a slot
    // the segment does not have, and sign the record's checksum over it.
    let head_len = (1..=5).find(|&n| bytes[rec.start + n - 1] & 0x80 == 0).unwrap();
    let body = rec.start + head_len + 4;
    assert_eq!(bytes[body], 0, "a one-replica segment's slot");
    bytes[body] = 5;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[rec.start..rec.start + head_len]);
    crc.update(&bytes[body..rec.end]);
    bytes[rec.start + head_len..body].copy_from_slice(&crc.finalize().to_le_bytes());
    fs::write(&path, bytes).unwrap();

    let mut store = FileStore::open(dir.path(), options).unwrap();
    assert!(store.recovered().is_empty(), "{:?}", store.recovered());
    assert_eq!(store.heads().unwrap()[&replica], 100, "nothing acknowledged is cut");
    let err = store.read(replica, 5, 10).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("predecessor"), "{err}");
    assert_eq!(store.read(replica, 0, 10).unwrap(), all[..10].to_vec());
    assert_eq!(store.read(replica, 64, 100).unwrap(), all[64..].to_vec());
    let (_, more) = entries(101, 6);
    store.append(&more[100]).unwrap();
}

/// Cuts or garbles the end of the newest segment, then reopens.
fn check_tail(damage: impl Fn(&Path), expect_kept: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (_, all) = entries(31, 2);
    let replica = all[0].header.replica;
    let mut store = FileStore::open(dir.path(), small_segments()).unwrap();
    for e in &all[..30] {
        store.append(e).unwrap();
    }
    drop(store);
    let last = segments(dir.path()).pop().unwrap();
    damage(&last);
    let mut store = FileStore::open(dir.path(), small_segments()).unwrap();
    assert_eq!(store.recovered().len(), 1, "the damage is reported");
    let head = store.heads().unwrap()[&replica];
    assert_eq!(head, expect_kept);
    assert_eq!(store.read(replica, 0, 100).unwrap(), all[..head as usize].to_vec());
    // The log goes on from the valid prefix.
    store.append(&all[head as usize]).unwrap();
    drop(store);
    let store = FileStore::open(dir.path(), small_segments()).unwrap();
    assert!(store.recovered().is_empty());
    assert_eq!(store.heads().unwrap()[&replica], head + 1);
}

#[test]
fn a_torn_tail_is_dropped_and_the_prefix_kept() {
    check_tail(
        |p| {
            let len = fs::metadata(p).unwrap().len();
            OpenOptions::new().write(true).open(p).unwrap().set_len(len - 5).unwrap();
        },
        29,
    );
    check_tail(
        |p| {
            // Only half a record header left.
            let mut f = OpenOptions::new().append(true).open(p).unwrap();
            std::io::Write::write_all(&mut f, &[1, 2, 3]).unwrap();
        },
        30,
    );
}

#[test]
fn a_garbled_last_record_is_dropped() {
    check_tail(
        |p| {
            let mut bytes = fs::read(p).unwrap();
            let n = bytes.len();
            bytes[n - 10] ^= 0xff;
            fs::write(p, bytes).unwrap();
        },
        29,
    );
}

#[test]
fn corruption_before_the_tail_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, all) = entries(30, 3);
    let mut store = FileStore::open(dir.path(), small_segments()).unwrap();
    for e in &all {
        store.append(e).unwrap();
    }
    drop(store);
    let first = segments(dir.path()).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    bytes[40] ^= 1;
    fs::write(&first, bytes).unwrap();
    let err = FileStore::open(dir.path(), small_segments()).unwrap_err();
    assert!(err.to_string().starts_with("corrupt log segment"), "{err}");
}

#[test]
fn snapshots_and_metadata_are_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileStore::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.snapshot().unwrap(), None);
    store.put_snapshot(b"one").unwrap();
    store.put_snapshot(b"two").unwrap();
    store.put_meta("membership", b"m").unwrap();
    assert!(store.put_meta("../x", b"m").is_err());
    // A temp file left by a crash mid-write is ignored.
    fs::write(dir.path().join("snapshot.tmp"), b"half").unwrap();
    let store = FileStore::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.snapshot().unwrap(), Some(b"two".to_vec()));
    assert_eq!(store.meta("membership").unwrap(), Some(b"m".to_vec()));
    assert_eq!(store.meta("schema").unwrap(), None);
}

#[test]
fn a_replica_reopens_from_snapshot_and_tail_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SeededRandom::new(4);
    let space = Space::new(2, &mut rng);
    let mut a = space.open_with(0, Box::new(FileStore::open(dir.path(), small_segments()).unwrap()));
    let mut b = space.open(1);
    for i in 0..40u64 {
        let op = Op::CounterAdd { collection: "t".into(), record: RecordId([1; 16]), field: "c".into(), delta: i as i64 };
        let e = b.commit(vec![op], NOW + i, &mut rng).unwrap();
        a.ingest(e, NOW + i).unwrap();
        let op = Op::Set { collection: "t".into(), record: RecordId([2; 16]), field: "n".into(), value: Value::Int(i as i64) };
        a.commit(vec![op], NOW + i, &mut rng).unwrap();
        if i == 20 {
            a.save_snapshot().unwrap();
        }
    }
    let state = a.state().clone();
    let vv = a.version_vector();
    drop(a);
    let a = space.open_with(0, Box::new(FileStore::open(dir.path(), small_segments()).unwrap()));
    assert_eq!(a.state(), &state);
    assert_eq!(a.version_vector(), vv);
}

#[test]
fn append_cost_does_not_grow_with_the_log() {
    // Structural check (timing is the benchmark's job): an append writes only the newest
    // segment, and every segment stays near the bound.
    let dir = tempfile::tempdir().unwrap();
    let (_, all) = entries(200, 5);
    let mut store = FileStore::open(dir.path(), small_segments()).unwrap();
    for e in &all {
        store.append(e).unwrap();
    }
    for seg in segments(dir.path()) {
        assert!(fs::metadata(&seg).unwrap().len() < 2048 + 1024, "{} grew past the bound", seg.display());
    }
}
