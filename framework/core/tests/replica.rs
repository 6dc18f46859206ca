//! Replica behaviour end to end: merge rules, CAS, schema checks, queries, history, undo,
//! snapshots and tamper detection, through data-driven `check` helpers.

use std::ops::Bound;

use stead_core::env::SeededRandom;
use stead_core::error::Error;
use stead_core::ids::RecordId;
use stead_core::log::{Entry, Limits};
use stead_core::ops::{Op, Value};
use stead_core::query::{Filter, Query};
use stead_core::replica::{Ingested, Replica, Snapshot};
use stead_core::schema::Schema;
use stead_core::state::Version;
use stead_core::store::{MemStore, Store};
use stead_core::testing::Space;

// The same tests run on wasm32 in headless Chromium (`cargo test -p stead-core --target
// wasm32-unknown-unknown`).
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const NOW: u64 = 1_700_000_000_000;

fn rec(n: u8) -> RecordId {
    RecordId([n; 16])
}

/// Parses one op line: `set r1 title "x"`, `set r1 n 5`, `del r1`, `restore r1`,
/// `add r1 likes 3`, `sadd r1 tags a`, `srem r1 tags a` (removes the tags the writer sees).
fn op(line: &str, replica: &Replica) -> Op {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let record = rec(parts[1].trim_start_matches('r').parse().unwrap());
    let c = "todo".to_owned();
    let value = |s: &str| {
        if let Some(q) = s.strip_prefix('"') {
            Value::Str(q.trim_end_matches('"').to_owned())
        } else if s == "true" || s == "false" {
            Value::Bool(s == "true")
        } else {
            Value::Int(s.parse().unwrap())
        }
    };
    match parts[0] {
        "set" => Op::Set { collection: c, record, field: parts[2].into(), value: value(parts[3]) },
        "del" => Op::Delete { collection: c, record },
        "restore" => Op::Restore { collection: c, record },
        "add" => Op::CounterAdd { collection: c, record, field: parts[2].into(), delta: parts[3].parse().unwrap() },
        "sadd" => Op::SetAdd { collection: c, record, field: parts[2].into(), elem: Value::Str(parts[3].into()) },
        "srem" => {
            let elem = Value::Str(parts[3].into());
            let tags = replica
                .state()
                .record("todo", record)
                .and_then(|r| r.field(parts[2]))
                .map(|s| s.set_tags(&elem))
                .unwrap_or_default();
            Op::SetRemove { collection: c, record, field: parts[2].into(), elem, tags }
        }
        other => panic!("unknown op {other}"),
    }
}

fn show(replica: &Replica) -> String {
    let mut out = Vec::new();
    if let Some(records) = replica.state().collections.get("todo") {
        for (id, r) in records {
            if r.is_deleted() {
                out.push(format!("r{} deleted", id.0[0]));
                continue;
            }
            for (name, slot) in &r.fields {
                let v = match slot.view() {
                    stead_core::state::FieldValue::Value(v) => v.to_string(),
                    stead_core::state::FieldValue::Counter(c) => c.to_string(),
                    stead_core::state::FieldValue::Set(s) => {
                        format!("{{{}}}", s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","))
                    }
                };
                out.push(format!("r{}.{name}={v}", id.0[0]));
            }
        }
    }
    out.join(" ")
}

/// Runs a two-replica script. Lines: `A: <op>` / `B: <op>` commit at that replica (time
/// advancing by 1 ms per line, B's clock `skew` ms behind), `sync` exchanges every entry.
/// Both replicas must end equal; their shown state is compared with `expect`.
fn check(script: &str, expect: &str) {
    let mut rng = SeededRandom::new(1);
    let space = Space::new(2, &mut rng);
    let mut reps = [space.open(0), space.open(1)];
    let mut t = NOW;
    let mut synced = [0usize; 2];
    let mut logs: [Vec<Entry>; 2] = [vec![], vec![]];
    let sync = |reps: &mut [Replica; 2], logs: &[Vec<Entry>; 2], synced: &mut [usize; 2], t: u64| {
        for from in 0..2 {
            for e in &logs[from][synced[from]..] {
                reps[1 - from].ingest(e.clone(), t).unwrap();
            }
            synced[from] = logs[from].len();
        }
    };
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        t += 1;
        if line == "sync" {
            sync(&mut reps, &logs, &mut synced, t);
            continue;
        }
        let (who, rest) = line.split_once(": ").unwrap();
        let i = if who == "A" { 0 } else { 1 };
        let ops = rest.split(';').map(|o| op(o.trim(), &reps[i])).collect();
        let now = if i == 1 { t - 10 } else { t };
        logs[i].push(reps[i].commit(ops, now, &mut rng).unwrap());
    }
    sync(&mut reps, &logs, &mut synced, t + 1);
    assert_eq!(reps[0].state(), reps[1].state(), "replicas diverged");
    assert_eq!(show(&reps[0]), expect);
}

#[test]
fn last_writer_wins_by_clock_then_replica() {
    check("A: set r1 title \"a\"\nB: set r1 title \"b\"", "r1.title=\"a\"");
    check("A: set r1 title \"a\"\nsync\nB: set r1 title \"b\"", "r1.title=\"b\"");
    check("A: set r1 n 1; set r1 n 2", "r1.n=2");
}

#[test]
fn counters_add_up_across_replicas() {
    check("A: add r1 likes 3\nB: add r1 likes -1\nA: add r1 likes 10", "r1.likes=12");
}

#[test]
fn or_set_keeps_concurrent_adds_and_drops_observed_removes() {
    check("A: sadd r1 tags x\nsync\nB: srem r1 tags x\nA: sadd r1 tags x", "r1.tags={\"x\"}");
    check("A: sadd r1 tags x\nsync\nB: srem r1 tags x", "r1.tags={}");
    check("A: sadd r1 tags x; sadd r1 tags y\nsync\nA: srem r1 tags y", "r1.tags={\"x\"}");
}

#[test]
fn delete_and_restore_are_last_writer_wins() {
    check("A: set r1 n 1\nsync\nB: del r1", "r1 deleted");
    check("A: set r1 n 1\nB: del r1\nsync\nA: restore r1", "r1.n=1");
    check("A: set r1 n 1\nsync\nB: del r1\nA: set r1 n 2", "r1 deleted");
}

const SCHEMA: &str = r#"
    version = 1
    [collections.todo.fields]
    title = { type = "string", required = true }
    done = { type = "bool", default = false }
    rank = { type = "int" }
    [[collections.todo.indexes]]
    field = "done"
    [[collections.todo.indexes]]
    field = "rank"
"#;

fn set(r: u8, field: &str, value: Value) -> Op {
    Op::Set { collection: "todo".into(), record: rec(r), field: field.into(), value }
}

#[test]
fn update_if_refuses_a_stale_version() {
    let mut rng = SeededRandom::new(2);
    let space = Space::new(2, &mut rng);
    let (mut a, mut b) = (space.open(0), space.open(1));
    let e = a.commit(vec![set(1, "title", Value::Str("x".into()))], NOW, &mut rng).unwrap();
    b.ingest(e, NOW).unwrap();
    let seen = a.version("todo", rec(1));
    assert_eq!(b.version("todo", rec(1)), seen);
    let e = b.update_if("todo", rec(1), seen, vec![set(1, "title", Value::Str("y".into()))], NOW + 1, &mut rng).unwrap();
    a.ingest(e, NOW + 1).unwrap();
    let err = a
        .update_if("todo", rec(1), seen, vec![set(1, "title", Value::Str("z".into()))], NOW + 2, &mut rng)
        .unwrap_err();
    match err {
        Error::Conflict { current, expected, .. } => {
            assert_eq!(*expected, seen);
            assert_eq!(*current, b.version("todo", rec(1)));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    // A record that does not exist yet is at version none.
    assert!(a.update_if("todo", rec(2), Version(None), vec![set(2, "title", Value::Str("n".into()))], NOW + 3, &mut rng).is_ok());
}

#[test]
fn schema_validates_writes_and_indexes_answer_paged_queries() {
    let mut rng = SeededRandom::new(3);
    let space = Space::new(1, &mut rng);
    let mut a = space.open(0);
    a.set_schema(Schema::from_toml(SCHEMA).unwrap()).unwrap();
    let err = a.commit(vec![set(1, "done", Value::Bool(true))], NOW, &mut rng).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for todo.title: null (a new record must set this required field)"
    );
    let err = a.commit(vec![set(1, "rank", Value::Str("high".into()))], NOW, &mut rng).unwrap_err();
    assert_eq!(err.to_string(), "invalid value for todo.rank: \"high\" (expected int)");
    for i in 0..10u8 {
        let mut ops = vec![set(i, "title", Value::Str(format!("t{i}"))), set(i, "rank", Value::Int(i as i64 % 4))];
        if i % 3 == 0 {
            ops.push(set(i, "done", Value::Bool(true)));
        }
        a.commit(ops, NOW + i as u64, &mut rng).unwrap();
    }
    assert_eq!(a.value("todo", rec(1), "done"), Some(Value::Bool(false)), "default applies");
    let names = |ids: &[RecordId]| ids.iter().map(|r| r.0[0].to_string()).collect::<Vec<_>>().join(",");
    let q = |filter: Filter, limit: usize| Query { collection: "todo".into(), filter, limit, after: None };
    let page = a.query(&q(Filter::Eq { field: "done".into(), value: Value::Bool(true) }, 10)).unwrap();
    assert_eq!(names(&page.records), "0,3,6,9");
    // Range 1 ≤ rank < 3, two per page, in (rank, id) order.
    let mut query = q(Filter::Range { field: "rank".into(), from: Bound::Included(Value::Int(1)), to: Bound::Excluded(Value::Int(3)) }, 2);
    let mut pages = Vec::new();
    loop {
        let page = a.query(&query).unwrap();
        pages.push(names(&page.records));
        match page.next {
            Some(c) => query.after = Some(c),
            None => break,
        }
    }
    assert_eq!(pages.join(" | "), "1,5 | 9,2 | 6");
    // Indexes follow later writes and deletes.
    a.commit(vec![Op::Delete { collection: "todo".into(), record: rec(3) }, set(1, "done", Value::Bool(true))], NOW + 50, &mut rng).unwrap();
    let page = a.query(&q(Filter::Eq { field: "done".into(), value: Value::Bool(true) }, 10)).unwrap();
    assert_eq!(names(&page.records), "0,1,6,9");
    let all = a.query(&q(Filter::All, 100)).unwrap();
    assert_eq!(all.records.len(), 9);
    let err = a.query(&q(Filter::Eq { field: "title".into(), value: Value::Null }, 1)).unwrap_err();
    assert_eq!(err.to_string(), "schema error: no index on todo.title");
}

#[test]
fn history_lists_ops_and_undo_writes_inverse_ops() {
    let mut rng = SeededRandom::new(4);
    let space = Space::new(2, &mut rng);
    let (mut a, mut b) = (space.open(0), space.open(1));
    let c = |op: &str| -> Op {
        let p: Vec<&str> = op.split_whitespace().collect();
        match p[0] {
            "add" => Op::CounterAdd { collection: "todo".into(), record: rec(1), field: p[1].into(), delta: p[2].parse().unwrap() },
            _ => set(1, p[1], Value::Int(p[2].parse().unwrap())),
        }
    };
    for (i, line) in ["set n 1", "set n 2", "add likes 5", "set n 3"].iter().enumerate() {
        let e = a.commit(vec![c(line)], NOW + i as u64, &mut rng).unwrap();
        b.ingest(e, NOW + 10).unwrap();
    }
    let hist = a.history("todo", rec(1)).unwrap();
    assert_eq!(hist.len(), 4);
    assert!(hist.windows(2).all(|w| w[0].stamp < w[1].stamp));
    // Undo the last two local changes: n back to 2, likes back to 0.
    let e = a.undo(2, NOW + 20, &mut rng).unwrap().unwrap();
    b.ingest(e, NOW + 30).unwrap();
    for r in [&a, &b] {
        let rec1 = r.get("todo", rec(1)).unwrap();
        assert_eq!(rec1.field("n").unwrap().register(), Some(&Value::Int(2)));
        assert_eq!(rec1.field("likes").unwrap().counter_value(), 0);
    }
    // A value someone else overwrote since is left alone.
    let e = b.commit(vec![c("set n 9")], NOW + 40, &mut rng).unwrap();
    a.ingest(e, NOW + 40).unwrap();
    assert_eq!(a.undo(1, NOW + 50, &mut rng).unwrap(), None);
    assert_eq!(a.get("todo", rec(1)).unwrap().field("n").unwrap().register(), Some(&Value::Int(9)));
}

#[test]
fn reopening_from_snapshot_and_tail_gives_the_same_state() {
    let mut rng = SeededRandom::new(5);
    let space = Space::new(1, &mut rng);
    let mut a = space.open(0);
    for i in 0..20u8 {
        a.commit(vec![set(i % 5, "n", Value::Int(i as i64))], NOW + i as u64, &mut rng).unwrap();
        if i == 9 {
            a.save_snapshot().unwrap();
        }
    }
    let state = a.state().clone();
    let vv = a.version_vector();
    let reopened = space.open_with(0, a.into_store());
    assert_eq!(reopened.state(), &state);
    assert_eq!(reopened.version_vector(), vv);
    let bytes = reopened.snapshot().encode();
    assert_eq!(Snapshot::decode(&bytes).unwrap(), reopened.snapshot());
}

/// Opening reads only the snapshot's index; chunks decode on first use, and a chunk that
/// is lost or altered is rebuilt from the log (counters included, so never applied twice).
#[test]
fn snapshot_chunks_load_lazily_and_a_damaged_chunk_is_rebuilt_from_the_log() {
    for damage in ["none", "garbled", "missing"] {
        let mut rng = SeededRandom::new(8);
        let space = Space::new(1, &mut rng);
        let mut a = space.open(0);
        for i in 0..600u32 {
            let r = RecordId((i % 300).to_le_bytes().repeat(4).try_into().unwrap());
            let ops = vec![
                Op::Set { collection: "todo".into(), record: r, field: "n".into(), value: Value::Int(i as i64) },
                Op::CounterAdd { collection: "todo".into(), record: r, field: "c".into(), delta: 2 },
            ];
            a.commit(ops, NOW + i as u64, &mut rng).unwrap();
            if i == 550 {
                a.save_snapshot().unwrap();
            }
        }
        let state = a.state().clone();
        let mut store = a.into_store();
        match damage {
            "garbled" => store.put_meta("snapshot-1-1", b"not a chunk").unwrap(),
            "missing" => store.put_meta("snapshot-1-0", &[]).unwrap(),
            _ => {}
        }
        let reopened = space.open_with(0, store);
        let r = RecordId(7u32.to_le_bytes().repeat(4).try_into().unwrap());
        assert_eq!(reopened.value("todo", r, "n"), Some(Value::Int(307)), "{damage}");
        assert_eq!(reopened.state(), &state, "{damage}");
    }
}

/// Listing a collection in id order after opening from a snapshot decodes only the chunks
/// the page reaches, and pages through live records and waiting chunks as through the
/// whole state (deleted records skipped, the cursor resuming after the last one).
#[test]
fn listing_after_a_snapshot_pages_through_live_records_and_waiting_chunks_as_the_whole_state() {
    let mut rng = SeededRandom::new(9);
    let space = Space::new(1, &mut rng);
    let mut a = space.open(0);
    let id = |i: u32| RecordId(i.to_be_bytes().repeat(4).try_into().unwrap());
    for i in 0..1_000u32 {
        a.commit(vec![Op::Set { collection: "todo".into(), record: id(i), field: "n".into(), value: Value::Int(i as i64) }], NOW + i as u64, &mut rng).unwrap();
    }
    a.commit(vec![Op::Delete { collection: "todo".into(), record: id(3) }], NOW + 2_000, &mut rng).unwrap();
    a.save_snapshot().unwrap();
    let store = a.into_store();
    let mut reopened = space.open_with(0, store);
    // Writes after the open move their chunks (ids 0–255 and 512–767) into the live state.
    for i in [5u32, 600] {
        reopened.commit(vec![Op::Set { collection: "todo".into(), record: id(i), field: "n".into(), value: Value::Int(-1) }], NOW + 3_000 + i as u64, &mut rng).unwrap();
    }
    let whole: Vec<RecordId> = reopened.state().collections["todo"].iter().filter(|(_, r)| !r.is_deleted()).map(|(k, _)| *k).collect();
    let lazy = space.open_with(0, reopened.into_store());
    let first = lazy.list(&Query { collection: "todo".into(), filter: Filter::All, limit: 2, after: None });
    assert_eq!(first.records, vec![id(0), id(1)]);
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = lazy.list(&Query { collection: "todo".into(), filter: Filter::All, limit: 97, after: after.clone() });
        got.extend(&page.records);
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(got, whole);
    assert!(!got.contains(&id(3)));
}

#[test]
fn entries_from_outsiders_and_far_futures_are_refused() {
    let mut rng = SeededRandom::new(6);
    let space = Space::new(2, &mut rng);
    let other = Space::new(1, &mut rng);
    let mut a = space.open(0);
    let mut stranger = other.open(0);
    let e = stranger.commit(vec![set(1, "n", Value::Int(1))], NOW, &mut rng).unwrap();
    assert!(matches!(a.ingest(e, NOW), Err(Error::WrongSpace { .. })));
    let mut b = space.open(1);
    let e = b.commit(vec![set(1, "n", Value::Int(1))], NOW + 3_600_000, &mut rng).unwrap();
    assert!(matches!(a.ingest(e.clone(), NOW), Err(Error::ClockDrift { .. })));
    assert_eq!(a.ingest(e.clone(), NOW + 3_600_000), Ok(Ingested::Applied));
    assert_eq!(a.ingest(e, NOW), Ok(Ingested::Duplicate));
}

/// Flipping any single bit of an entry, received or stored, is detected.
#[test]
fn any_flipped_byte_is_detected() {
    let mut rng = SeededRandom::new(7);
    let space = Space::new(2, &mut rng);
    let mut a = space.open(0);
    let first = a.commit(vec![set(1, "title", Value::Str("one".into()))], NOW, &mut rng).unwrap();
    let second = a.commit(vec![set(1, "title", Value::Str("two".into()))], NOW + 1, &mut rng).unwrap();
    let bytes = second.encode();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = bytes.clone();
            t[i] ^= bit;
            // Received: either it does not decode, or verification refuses it.
            let mut b = space.open(1);
            b.ingest(first.clone(), NOW).unwrap();
            match Entry::decode(&t, &Limits::default()) {
                Err(_) => {}
                Ok(e) => assert!(b.ingest(e, NOW + 5).is_err(), "flip of byte {i} bit {bit:#x} was accepted"),
            }
            // Stored: a store holding the flipped entry does not open.
            let mut store = MemStore::new();
            store.append(&first).unwrap();
            if let Ok(e) = Entry::decode(&t, &Limits::default())
                && e.header.replica == first.header.replica && e.header.seq == 1 {
                    store.append(&e).unwrap();
                    let opened = stead_core::replica::Replica::open(
                        space.identities[1].clone(),
                        space.members.clone(),
                        Box::new(store),
                        space.config.clone(),
                    );
                    assert!(opened.is_err(), "stored flip of byte {i} bit {bit:#x} was accepted");
                }
        }
    }
}

#[test]
fn typed_verification_errors() {
    let mut rng = SeededRandom::new(8);
    let space = Space::new(2, &mut rng);
    let mut a = space.open(0);
    let e0 = a.commit(vec![set(1, "n", Value::Int(0))], NOW, &mut rng).unwrap();
    let e1 = a.commit(vec![set(1, "n", Value::Int(1))], NOW + 1, &mut rng).unwrap();
    let e2 = a.commit(vec![set(1, "n", Value::Int(2))], NOW + 2, &mut rng).unwrap();
    let check = |entries: &[Entry], expect: &str| {
        let mut b = space.open(1);
        let mut got = String::from("ok");
        for e in entries {
            if let Err(err) = b.ingest(e.clone(), NOW + 10) {
                got = err.to_string();
                break;
            }
        }
        let expect = expect.replace("{r}", &e0.header.replica.to_string());
        assert_eq!(got, expect);
    };
    check(&[e0.clone(), e1.clone(), e2.clone()], "ok");
    check(&[e0.clone(), e2.clone()], "gap in the log of {r}: expected seq 1, got 2");
    // Re-signed with a different prev: the chain breaks.
    let key = &space.identities[0].signing;
    let h = e1.header.clone();
    let h = &h;
    let bad_prev = Entry::sign(h.space, h.replica, 1, h.hlc, [7; 32], e1.payload.clone(), key);
    check(&[e0.clone(), bad_prev], "entry {r}/1 does not chain to the previous entry");
    // A second, different signed entry at a seq already taken: a fork.
    let fork = Entry::sign(h.space, h.replica, 0, h.hlc, [0; 32], e1.payload.clone(), key);
    check(&[e0.clone(), e1.clone(), fork], "fork in the log of {r} at seq 0: two different signed entries");
    // Signed by someone else's key.
    let forged = Entry::sign(h.space, h.replica, 0, h.hlc, [0; 32], e0.payload.clone(), &space.identities[1].signing);
    check(&[forged], "bad signature on entry {r}/0");
    // Too large and unknown version are refused at decode.
    let mut bytes = e0.encode();
    assert_eq!(
        Entry::decode(&bytes, &Limits { max_payload: 10 }).unwrap_err().to_string(),
        format!("entry payload of {} bytes is too large (limit 10)", e0.payload.len())
    );
    bytes[0] = 2;
    assert_eq!(
        Entry::decode(&bytes, &Limits::default()).unwrap_err().to_string(),
        "unsupported entry version 2 (this build reads 1)"
    );
    // A replica removed at seq 0 cannot extend its log.
    let mut members = space.members.clone();
    members.remove(space.identities[1].replica, &space.identities[1].signing, h.replica, Some(0)).unwrap();
    let mut b = stead_core::replica::Replica::open(space.identities[1].clone(), members, Box::new(MemStore::new()), space.config.clone()).unwrap();
    b.ingest(e0, NOW).unwrap();
    assert_eq!(b.ingest(e1, NOW).unwrap_err().to_string(), format!("replica {} is not a member of the space at seq 1", h.replica));
}

#[test]
fn chunk_keys_name_their_parity_and_no_other_key_has_one() {
    use stead_core::replica::{chunk_key, chunk_parity};
    for parity in 0..2 {
        for n in [0, 7, 1_000] {
            assert_eq!(chunk_parity(&chunk_key(parity, n)), Some(parity as usize));
        }
    }
    for other in ["acked", "membership", "schema", "snapshot", "snapshot-2-0", "snapshot-0", "snapshots-0-1", "blob-pending"] {
        assert_eq!(chunk_parity(other), None, "{other}");
    }
}
