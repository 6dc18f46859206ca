//! Fuzzes what a server does with an untrusted entry: decode it, then verify it against a
//! fixed space's membership and an empty or one-entry chain. Nothing may panic, and only
//! the one genuine entry may verify as new.
#![no_main]

#[path = "common/fixture.rs"]
mod fixture;

use fixture::fixture;
use libfuzzer_sys::fuzz_target;
use stead_core::log::{ChainTip, Entry, Limits, Verified, verify_entry};

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
