//! Fuzzes the path a server and a replica really take with a received Entries frame:
//! decode the frame, check its entries together (`check_entries`, signatures batched per
//! signer, a run's vouched for by its last), then chain each one (`verify_chain`).
//! Nothing may panic; the batched check must say of every entry exactly what
//! `check_entry` alone says (it may differ only on a bad signature inside a run the key's
//! holder signed, which takes the key); and only the genuine first entry may chain as new.
#![no_main]

#[path = "common/fixture.rs"]
mod fixture;

use fixture::fixture;
use libfuzzer_sys::fuzz_target;
use stead_core::env::SeededRandom;
use stead_core::log::{Limits, Verified, check_entries, check_entry, verify_chain};
use stead_core::sync::Frame;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let limits = Limits::default();
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
