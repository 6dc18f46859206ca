//! Entry verification in two halves: `check_entry` (stateless, any thread, ahead of time)
//! then `verify_chain` (against the tip) gives what `verify_entry` gives, typed errors
//! included, for good entries, forgeries, gaps, forks, duplicates and breaks in the chain;
//! and `check_entries` (signatures in batches, a run's vouched for by its last) gives what
//! `check_entry` gives each entry, but for a key holder's own bad signature inside a run.

use stead_core::env::SeededRandom;
use stead_core::ids::SpaceId;
use stead_core::ids::ReplicaId;
use stead_core::log::{check_entries, check_entry, verify_chain, verify_entry, ChainTip, Entry, Limits, Verified};
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

#[test]
fn checking_many_at_once_equals_checking_each() {
    let mut rng = SeededRandom::new(12);
    let space = Space::new(3, &mut rng);
    let mut devices: Vec<_> = (0..3).map(|i| space.open(i)).collect();
    let limits = Limits { max_payload: 400 };
    let mut good = Vec::new();
    for n in 0..60u64 {
        let d = (n % 3) as usize;
        let len = if n % 13 == 0 { 500 } else { 8 };
        let op = Op::Set { collection: "c".into(), record: stead_core::ids::RecordId([n as u8; 16]), field: "s".into(), value: Value::Str("x".repeat(len)) };
        good.push(devices[d].commit(vec![op], NOW + n, &mut rng).unwrap());
    }
    // Half the rounds shuffled (few runs), half in per-device runs of up to 7 entries,
    // where only each run's last signature is checked.
    let mut runs = Vec::new();
    for d in 0..3 {
        runs.extend(good.iter().filter(|e| e.header.replica == devices[d].id()).cloned());
    }
    for round in 0..16 {
        let in_runs = round % 2 == 1;
        // Spoil some: forged by another member, a flipped signature bit, another space, an
        // unknown replica; some payloads are above the limit already.
        let mut entries = if in_runs { runs.clone() } else { good.clone() };
        for e in entries.iter_mut() {
            let h = e.header.clone();
            match rng.below(14) {
                0 => *e = Entry::sign(h.space, h.replica, h.seq, h.hlc, h.prev, e.payload.clone(), &space.identities[(rng.below(3)) as usize].signing),
                1 => e.sig[rng.below(64) as usize] ^= 1 << rng.below(8),
                2 => *e = Entry::sign(SpaceId([9; 16]), h.replica, h.seq, h.hlc, h.prev, e.payload.clone(), &space.identities[0].signing),
                3 => *e = Entry::sign(h.space, ReplicaId([round as u8 + 1; 16]), h.seq, h.hlc, h.prev, e.payload.clone(), &space.identities[0].signing),
                // A header that misstates the payload's length, from a member or not.
                4 => e.header.payload_len += 1,
                5 => {
                    e.header.payload_len += 1;
                    e.header.replica = ReplicaId([200; 16]);
                }
                _ => {}
            }
        }
        let mut order: Vec<usize> = (0..entries.len()).collect();
        if in_runs {
            // Cut the runs at random places and swap neighbouring pieces.
            let mut at = 0;
            while at < order.len() {
                let len = 1 + rng.below(7) as usize;
                let end = (at + len).min(order.len());
                if rng.below(3) == 0 && end < order.len() {
                    order[at..=end].rotate_left(end - at);
                }
                at = end + 1;
            }
        } else {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let entries: Vec<Entry> = order.iter().map(|i| entries[*i].clone()).collect();
        let each: Vec<_> = entries.iter().map(|e| check_entry(e, space.space, &space.members, &limits)).collect();
        let mut z = SeededRandom::new(round);
        let many = check_entries(&entries, space.space, &space.members, &limits, &mut z);
        assert_eq!(many, each, "round {round}");
        assert!(each.iter().any(|c| c.is_ok()) && each.iter().any(|c| c.is_err()), "round {round} mixes good and bad");
    }
    assert!(check_entries(&[], space.space, &space.members, &limits, &mut SeededRandom::new(0)).is_empty());
}

/// The one case where `check_entries` and `check_entry` differ, and why it forges nothing:
/// a run's last signature vouches for the entries before it, which it covers through their
/// hashes, so a bad signature inside a run passes only when the key's holder signed the
/// entry after it.
#[test]
fn a_runs_last_signature_vouches_for_the_entries_it_chains_to() {
    let mut rng = SeededRandom::new(13);
    let space = Space::new(2, &mut rng);
    let mut a = space.open(0);
    let key = &space.identities[0].signing;
    let limits = Limits::default();
    let set = |n: u8| Op::Set { collection: "c".into(), record: stead_core::ids::RecordId([n; 16]), field: "n".into(), value: Value::Int(n.into()) };
    let run: Vec<Entry> = (0..6u8).map(|n| a.commit(vec![set(n)], NOW + u64::from(n), &mut rng).unwrap()).collect();
    let all = |entries: &[Entry]| check_entries(entries, space.space, &space.members, &limits, &mut SeededRandom::new(1));
    let each = |entries: &[Entry]| entries.iter().map(|e| check_entry(e, space.space, &space.members, &limits)).collect::<Vec<_>>();
    assert!(all(&run).iter().all(|c| c.is_ok()));
    assert_eq!(all(&run), each(&run));

    // Anyone but the holder: a replaced entry breaks the chain to it, so it ends a run and
    // its own signature is checked; what follows passes the check and fails the chain.
    let h = run[2].header.clone();
    let mut swapped = run.clone();
    swapped[2] = Entry::sign(h.space, h.replica, h.seq, h.hlc, h.prev, run[2].payload.clone(), &space.identities[1].signing);
    assert_eq!(all(&swapped), each(&swapped));
    assert!(all(&swapped)[2].is_err());
    let mut flipped = run.clone();
    flipped[2].sig[5] ^= 1;
    assert_eq!(all(&flipped), each(&flipped));
    assert!(all(&flipped)[2].is_err() && all(&flipped)[3].is_ok());
    let chained = verify_chain(&flipped[3], all(&flipped)[3].as_ref().unwrap(), Some(&ChainTip { next_seq: 3, last_hash: flipped[2].hash(), last_hlc: h.hlc }), |_| Ok(None));
    assert!(chained.is_err(), "the entry after a changed one does not chain to it");

    // The holder: entry 2 carries a bad signature and entry 3, signed by the same key,
    // chains to it. Checked with its successor it passes; on its own it does not.
    let mut own = run[..2].to_vec();
    let mut bad = run[2].clone();
    bad.sig[5] ^= 1;
    own.push(bad);
    for n in 3..6 {
        let (prev, e) = (own[n - 1].hash(), &run[n]);
        own.push(Entry::sign(e.header.space, e.header.replica, e.header.seq, e.header.hlc, prev, e.payload.clone(), key));
    }
    assert!(all(&own).iter().all(|c| c.is_ok()), "a run's last signature vouches for every entry it chains to");
    assert!(each(&own)[2].is_err());
    assert!(all(&own[..3])[2].is_err(), "ending its run, the entry's own signature is checked");
    // A bad last signature: every entry of the run is checked on its own.
    let mut last_bad = run.clone();
    last_bad[5].sig[1] ^= 1;
    assert_eq!(all(&last_bad), each(&last_bad));
    assert!(all(&last_bad)[5].is_err() && all(&last_bad)[..5].iter().all(|c| c.is_ok()));
}
