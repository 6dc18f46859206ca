//! Fuzzes what a server does with an untrusted entry: decode it, then verify it against a
//! fixed space's membership and an empty or one-entry chain. Nothing may panic, and only
//! the one genuine entry may verify as new.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stead_core::env::SeededRandom;
use stead_core::log::{ChainTip, Entry, Limits, Verified, verify_entry};
use stead_core::ops::{Op, Value};
use stead_core::testing::Space;

struct Fixture {
    space: Space,
    first: Entry,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = SeededRandom::new(1);
        let space = Space::new(2, &mut rng);
        let mut r = space.open(0);
        let op = Op::Set { collection: "t".into(), record: stead_core::ids::RecordId([1; 16]), field: "f".into(), value: Value::Int(1) };
        let first = r.commit(vec![op], 1_700_000_000_000, &mut rng).expect("a fixture commit");
        Fixture { space, first }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let limits = Limits::default();
    let Ok(entry) = Entry::decode(data, &limits) else { return };
    let tip = ChainTip { next_seq: 1, last_hash: f.first.hash(), last_hlc: f.first.header.hlc };
    for t in [None, Some(&tip)] {
        let result = verify_entry(&entry, f.space.space, &f.space.members, t, &limits, |_| Ok(Some(f.first.hash())));
        if let Ok((Verified::New, _)) = result {
            assert!(t.is_none() && entry == f.first, "only the genuine first entry verifies as new");
        }
    }
});
