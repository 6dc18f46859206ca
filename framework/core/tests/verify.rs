//! Entry verification in two halves: `check_entry` (stateless, any thread, ahead of time)
//! then `verify_chain` (against the tip) gives what `verify_entry` gives, typed errors
//! included, for good entries, forgeries, gaps, forks, duplicates and breaks in the chain.

use stead_core::env::SeededRandom;
use stead_core::ids::SpaceId;
use stead_core::log::{check_entry, verify_chain, verify_entry, ChainTip, Entry, Limits, Verified};
use stead_core::ops::{Op, Value};
use stead_core::testing::Space;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const NOW: u64 = 1_700_000_000_000;

/// Verifies `entries` in order both ways against one chain and compares each outcome to
/// `expect` (`new`, `duplicate` or the error's message, `{r}` standing for the replica).
fn check(space: &Space, limits: &Limits, entries: &[Entry], expect: &[&str]) {
    let mut tip: Option<ChainTip> = None;
    let mut stored: Vec<[u8; 32]> = Vec::new();
    for (entry, expect) in entries.iter().zip(expect) {
        let known = |seq: u64| Ok(stored.get(seq as usize).copied());
        let whole = verify_entry(entry, space.space, &space.members, tip.as_ref(), limits, known);
        // Checked first, as a server does before its transaction, then chained.
        let checked = check_entry(entry, space.space, &space.members, limits);
        let split = checked.and_then(|c| {
            verify_chain(entry, &c, tip.as_ref(), |seq| Ok(stored.get(seq as usize).copied())).map(|v| (v, c.hash()))
        });
        assert_eq!(whole, split);
        let got = match &whole {
            Ok((Verified::New, _)) => "new".to_owned(),
            Ok((Verified::Duplicate, _)) => "duplicate".to_owned(),
            Err(e) => e.to_string(),
        };
        let expect = expect.replace("{r}", &entry.header.replica.to_string());
        assert_eq!(got, expect);
        if let Ok((Verified::New, hash)) = whole {
            let h = &entry.header;
            tip = Some(ChainTip { next_seq: h.seq + 1, last_hash: hash, last_hlc: h.hlc });
            stored.push(hash);
        }
    }
}

#[test]
fn checking_then_chaining_equals_verifying() {
    let mut rng = SeededRandom::new(11);
    let space = Space::new(2, &mut rng);
    let mut a = space.open(0);
    let set = |n: i64| Op::Set {
        collection: "c".into(),
        record: stead_core::ids::RecordId([n as u8; 16]),
        field: "n".into(),
        value: Value::Int(n),
    };
    let e0 = a.commit(vec![set(0)], NOW, &mut rng).unwrap();
    let e1 = a.commit(vec![set(1)], NOW + 1, &mut rng).unwrap();
    let e2 = a.commit(vec![set(2)], NOW + 2, &mut rng).unwrap();
    let key = &space.identities[0].signing;
    let h = e1.header.clone();
    let limits = Limits::default();

    check(&space, &limits, &[e0.clone(), e1.clone(), e2.clone()], &["new", "new", "new"]);
    check(&space, &limits, &[e0.clone(), e0.clone(), e1.clone(), e0.clone()], &["new", "duplicate", "new", "duplicate"]);
    check(&space, &limits, &[e0.clone(), e2.clone()], &["new", "gap in the log of {r}: expected seq 1, got 2"]);
    let bad_prev = Entry::sign(h.space, h.replica, 1, h.hlc, [7; 32], e1.payload.clone(), key);
    check(&space, &limits, &[e0.clone(), bad_prev], &["new", "entry {r}/1 does not chain to the previous entry"]);
    let fork = Entry::sign(h.space, h.replica, 0, h.hlc, [0; 32], e1.payload.clone(), key);
    check(&space, &limits, &[e0.clone(), e1.clone(), fork], &["new", "new", "fork in the log of {r} at seq 0: two different signed entries"]);
    let stale = Entry::sign(h.space, h.replica, 1, e0.header.hlc, e0.hash(), e1.payload.clone(), key);
    check(&space, &limits, &[e0.clone(), stale], &["new", "entry {r}/1 has a clock not after its predecessor's"]);
    // Checks that need no chain fail the same way wherever the chain stands.
    let forged = Entry::sign(h.space, h.replica, 0, h.hlc, [0; 32], e0.payload.clone(), &space.identities[1].signing);
    check(&space, &limits, &[forged], &["bad signature on entry {r}/0"]);
    let elsewhere = Entry::sign(SpaceId([9; 16]), h.replica, 0, h.hlc, [0; 32], e0.payload.clone(), key);
    check(&space, &limits, &[elsewhere], &[&format!("entry belongs to space {}, not {}", SpaceId([9; 16]), space.space)]);
    check(&space, &Limits { max_payload: 1 }, std::slice::from_ref(&e0), &[&format!("entry payload of {} bytes is too large (limit 1)", e0.payload.len())]);
}
