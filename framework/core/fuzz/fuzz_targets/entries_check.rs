//! Fuzzes the path a server and a replica really take with a received Entries frame:
//! decode the frame, check its entries together (`check_entries`, signatures batched per
//! signer), then chain each one (`verify_chain`). Nothing may panic; the batched check
//! must say of every entry exactly what `check_entry` alone says; and only the genuine
//! first entry may chain as new.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stead_core::env::SeededRandom;
use stead_core::log::{Entry, Limits, Verified, check_entries, check_entry, verify_chain};
use stead_core::ops::{Op, Value};
use stead_core::sync::Frame;
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
    // Seeds of the genuine entry: a frame holding it, so the fuzzer starts from a valid one.
    let Ok(Frame::Entries(entries)) = Frame::decode(data, &limits) else { return };
    let (space, members) = (f.space.space, &f.space.members);
    let batched = check_entries(&entries, space, members, &limits, &mut SeededRandom::new(data.len() as u64));
    assert_eq!(batched.len(), entries.len());
    for (entry, checked) in entries.iter().zip(&batched) {
        let alone = check_entry(entry, space, members, &limits);
        assert_eq!(checked.as_ref().map_err(|e| e.to_string()), alone.as_ref().map_err(|e| e.to_string()), "the batched check differs from the single one");
        let Ok(checked) = checked else { continue };
        if let Ok(Verified::New) = verify_chain(entry, checked, None, |_| Ok(Some(f.first.hash()))) {
            assert!(*entry == f.first, "only the genuine first entry chains as new");
        }
    }
});
