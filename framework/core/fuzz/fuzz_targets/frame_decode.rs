//! Fuzzes the sync frame decoder: any bytes decode or fail cleanly, and what decodes
//! encodes back to the same bytes (every frame has one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stead_core::log::Limits;
use stead_core::sync::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data, &Limits::default()) {
        assert_eq!(frame.encode(), data, "a decoded frame re-encodes to its bytes");
    }
});
